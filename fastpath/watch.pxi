# watch: lbctl trace --follow and lbctl capture in the fast path. While a watch is set, the
# burst hands each frame to watch_frame instead of burst_frame (serve.pxi): the frame as
# received and the counters are kept aside, the frame is processed as ever, and when the
# filter matches the frame as received or as sent, one record goes into a bounded ring
# which the control side drains between bursts. Twin: twin/watch.py.
#
# Invariants:
# - No watch set: nothing here runs; the burst pays one predictable branch per frame.
# - A watched frame is processed exactly as an unwatched one (burst_frame): the watch only
#   reads the frame and the counters, before and after.
# - The ring never blocks and never grows: a matching frame that finds it full is counted
#   in wlost and not kept. The ring is written by the burst and drained by watch_drain, both
#   under the engine lock (serve takes it per burst; the control side takes it to drain).
# - A record's counters are those that moved during the frame (its exit counter, rx_frames,
#   flow-table events), at most WATCH_MAX_CTR of them, in counter order.


cdef bint watch_match(Engine self, const uint8_t *f, uint32_t n) noexcept nogil:
    """Whether every filter term holds for the IPv4 frame f[:n], or else (a VXLAN frame) for
    the frame inside it. Ports are read only from a TCP/UDP header that is there (not in a
    later fragment); a port term fails without one."""
    cdef uint32_t ihl, l4, k, val
    cdef uint32_t src, dst
    cdef uint16_t sport, dport
    cdef uint8_t proto
    cdef bint ports, ok
    cdef int depth
    for depth in range(2):
        if n < 34 or rd16(f + 12) != 0x0800 or f[14] >> 4 != 4:
            return False
        ihl = (f[14] & 15) * 4
        proto = f[23]
        src = rd32(f + 26)
        dst = rd32(f + 30)
        l4 = 14 + ihl
        ports = ((proto == PROTO_TCP or proto == PROTO_UDP) and ihl >= 20
                 and (rd16(f + 20) & 0x1FFF) == 0 and l4 + 4 <= n)
        sport = rd16(f + l4) if ports else 0
        dport = rd16(f + l4 + 2) if ports else 0
        ok = True
        for k in range(self.wnterm):
            val = self.wterm[k].value
            if self.wterm[k].kind == W_HOST:
                ok = src == val or dst == val
            elif self.wterm[k].kind == W_PORT:
                ok = ports and (sport == val or dport == val)
            elif self.wterm[k].kind == W_PROTO:
                ok = proto == val
            elif self.wterm[k].kind == W_SRC:
                ok = src == val
            elif self.wterm[k].kind == W_DST:
                ok = dst == val
            elif self.wterm[k].kind == W_SPORT:
                ok = ports and sport == val
            else:
                ok = ports and dport == val
            if not ok:
                break
        if ok:
            return True
        # a tunnel's frame as sent: the client's frame is inside (outer IP, UDP 8, VXLAN 8)
        if not (ports and proto == PROTO_UDP and dport == VXLAN_PORT and l4 + 16 <= n):
            return False
        f = f + l4 + 16
        n = n - l4 - 16
    return False


cdef void watch_frame(Engine self, uint8_t *rp, uint32_t stride, uint32_t hdr,
                      uint32_t *lens, uint8_t *verdict, uint16_t *reason,
                      int64_t now) noexcept nogil:
    """burst_frame with the watch around it (see the file header)."""
    cdef uint32_t row = lens[0] if lens[0] < stride else stride
    cdef uint32_t L = row - hdr if row > hdr else 0
    cdef uint32_t slot, cap, olen, ocap, k, ihl, l4
    cdef uint8_t *data
    cdef bint pre = watch_match(self, rp + hdr, L)
    cdef WatchRec *rec
    cdef timespec ts
    cdef uint32_t src, dst
    cdef uint16_t sport = 0, dport = 0
    cdef uint8_t proto
    cdef int32_t idx
    cdef uint64_t h
    cdef Flow *e
    cdef bint fwd = True
    slot = (self.wfirst + self.wcount) % self.wsize if self.wcount < self.wsize else self.wsize
    data = self.wbytes + <size_t>slot * 2 * self.wsnap
    cap = L if L < self.wsnap else self.wsnap
    memcpy(data, rp + hdr, cap)
    memcpy(self.wctr, self.ctr, N_COUNTERS * sizeof(uint64_t))
    burst_frame(self, rp, stride, hdr, lens, verdict, reason, now)
    olen = 0
    if verdict[0] == V_TX:
        row = lens[0] if lens[0] < stride else stride
        olen = row - hdr if row > hdr else 0
    if not pre and not (olen and watch_match(self, rp + hdr, olen)):
        return
    self.wseen += 1
    if slot == self.wsize:
        self.wlost += 1
        return
    ocap = olen if olen < self.wsnap else self.wsnap
    memcpy(data + self.wsnap, rp + hdr, ocap)
    rec = &self.wring[slot]
    clock_gettime(CLOCK_REALTIME, &ts)
    rec.ts_ns = <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
    rec.in_len, rec.in_cap, rec.out_len, rec.out_cap = L, cap, olen, ocap
    rec.reason, rec.verdict = reason[0], verdict[0]
    rec.nctr = 0
    for k in range(N_COUNTERS):
        if self.ctr[k] != self.wctr[k] and rec.nctr < WATCH_MAX_CTR:
            rec.ctr_idx[rec.nctr] = k
            rec.ctr_delta[rec.nctr] = <int64_t>(self.ctr[k] - self.wctr[k])
            rec.nctr += 1
    # its flow, by the key of the frame as received (the copy: the row is rewritten)
    rec.flow = -1
    if cap >= 34 and rd16(data + 12) == 0x0800 and (data[23] == PROTO_TCP
                                                     or data[23] == PROTO_UDP):
        ihl = (data[14] & 15) * 4
        l4 = 14 + ihl
        proto = data[23]
        src = rd32(data + 26)
        dst = rd32(data + 30)
        if ihl >= 20 and l4 + 4 <= cap:
            sport = rd16(data + l4)
            dport = rd16(data + l4 + 2)
            h = _flow_hash(src, dst, sport, dport, proto)
            idx = flow_find(self, self.ifwd, h, src, dst, sport, dport, proto, False)
            if idx < 0:
                idx = flow_find(self, self.irev, h, src, dst, sport, dport, proto, True)
                fwd = False
            if idx >= 0:
                e = &self.fl[idx]
                rec.flow, rec.real, rec.mode, rec.state, rec.fwd = idx, e.real, e.mode, e.state, fwd
                rec.cip, rec.vip, rec.rip = e.cip, e.vip, e.rip
                rec.cport, rec.vport, rec.rport, rec.proto = e.cport, e.vport, e.rport, e.proto
    self.wcount += 1


cdef object api_watch_set(Engine self, terms, snap, size):
    cdef uint32_t k
    if terms is None:
        self.watch_on = 0
        free(self.wring); free(self.wbytes); free(self.wctr)
        self.wring, self.wbytes, self.wctr = NULL, NULL, NULL
        self.wnterm = self.wsize = self.wfirst = self.wcount = self.wsnap = 0
        self.wseen = self.wlost = 0
        return
    terms = check_watch(terms, snap, size)
    cdef WatchRec *ring = <WatchRec *>calloc(size, sizeof(WatchRec))
    cdef uint8_t *data = <uint8_t *>malloc((<size_t>size + 1) * 2 * <size_t>snap)
    cdef uint64_t *ctr = <uint64_t *>malloc(N_COUNTERS * sizeof(uint64_t))
    if ring == NULL or data == NULL or ctr == NULL:
        free(ring); free(data); free(ctr)
        raise MemoryError()
    free(self.wring); free(self.wbytes); free(self.wctr)
    self.wring, self.wbytes, self.wctr = ring, data, ctr
    for k, (kind, value) in enumerate(terms):
        self.wterm[k].kind, self.wterm[k].value = kind, value
    self.wnterm = len(terms)
    self.wsize, self.wsnap = size, snap
    self.wfirst = self.wcount = 0
    self.wseen = self.wlost = 0
    self.watch_on = 1


cdef object api_watch_drain(Engine self, limit):
    cdef uint32_t m = self.wcount, k, j, slot
    cdef WatchRec *rec
    cdef uint8_t *data
    if limit is not None:
        if not isinstance(limit, int) or limit < 0:
            raise ValueError("limit must be an integer >= 0, got %r" % (limit,))
        m = min(m, limit)
    out = []
    for k in range(m):
        slot = self.wfirst
        rec = &self.wring[slot]
        data = self.wbytes + <size_t>slot * 2 * self.wsnap
        flow = None
        if rec.flow >= 0:
            flow = (rec.cip, rec.cport, rec.vip, rec.vport, rec.proto, rec.rip, rec.rport,
                    rec.real, rec.mode, rec.state, rec.fwd)
        out.append((rec.ts_ns, rec.verdict, rec.reason, rec.in_len,
                    (<char *>data)[:rec.in_cap], rec.out_len,
                    (<char *>data + self.wsnap)[:rec.out_cap],
                    tuple((defs.COUNTERS[rec.ctr_idx[j]], rec.ctr_delta[j])
                          for j in range(rec.nctr)), flow))
        self.wfirst = (self.wfirst + 1) % self.wsize
        self.wcount -= 1
    return out


cdef object api_watch_status(Engine self):
    return {"on": bool(self.watch_on),
            "terms": [(self.wterm[k].kind, self.wterm[k].value) for k in range(self.wnterm)],
            "snap": self.wsnap, "size": self.wsize, "pending": self.wcount,
            "seen": self.wseen, "lost": self.wlost}
