# serve: the data path around the modes. process() and serve() (poll, rx burst, process,
# tx burst, under the engine lock), the burst loop, process_frame (parse -> service lookup
# -> flow lookup -> the mode's routine from XMIT), and xmit_out, the part every transmit
# routine shares. Twin: twin/serve.py.
#
# Invariants:
# - The burst runs without the GIL and touches no Python object per frame: it reads and
#   rewrites the batch's numpy buffer in place and writes one verdict and one exit-counter
#   id (Batch.reason) per frame. A frame leaves with exactly one exit counter bumped besides
#   rx_frames; flow-table events are counted on top.
# - Parsing uses explicit bounds: nothing is read beyond the frame's length, and what a
#   transmit routine reads (the Ethernet, IPv4 and L4 headers) has been checked here.
# - What a frame does is decided by process_frame alone; the burst's prefetches only hide
#   memory latency, so the twin (which has none) gives the same results. The flow hash the
#   burst computed ahead (Engine.hint_h) is the one process_frame would compute from the
#   same bytes, and so is the service it found (hint_sv: the table is swapped between bursts
#   only); process_frame takes them once and finds its own when hint_h is 0.
# - process_frame knows no mode: a miss calls XMIT[service's mode].new_flow, a hit
#   XMIT[flow's mode].fwd or .rev, and a NULL routine is drop_mode.


cdef uint8_t VMAP[N_COUNTERS]       # exit counter -> verdict: defs.VERDICTS, from COUNTER_TABLE
VMAP[:] = defs.VERDICTS


def verdict_of(int reason):
    """The verdict a frame gets whose exit counter is reason (defs.COUNTER_TABLE)."""
    if not 0 <= reason < N_COUNTERS:
        raise IndexError("no counter %d" % reason)
    return VMAP[reason]


cdef inline int64_t mono_ms() noexcept nogil:
    """time.monotonic() in integer ms (Python's clock on Linux is CLOCK_MONOTONIC too)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cdef inline void lock_take(Engine self) noexcept nogil:
    """The engine lock for serve's next burst, after any thread waiting in acquire()."""
    while tw_atomic_load(&self.want) > 0:
        sched_yield()
    PyThread_acquire_lock(self.lock, WAIT_LOCK)


cdef object api_process(Engine self, batch, int64_t now_ms):
    cdef uint8_t[:, ::1] buf = batch.buf
    cdef uint32_t[::1] lens = batch.lens
    cdef uint8_t[::1] verdict = batch.verdict
    cdef uint16_t[::1] reason = batch.reason
    cdef int n = batch.n
    if n < 0 or n > buf.shape[0] or n > lens.shape[0] or n > verdict.shape[0] or n > reason.shape[0]:
        raise ValueError("batch.n out of range")
    if n == 0:
        return 0
    cdef uint32_t stride = buf.shape[1]
    cdef uint32_t hdr = batch.hdr
    if stride < 128 + hdr:
        raise ValueError("batch snap must be >= 128 (splice builds SYN-ACKs in place)")
    cdef int i, punts = 0
    with nogil:
        burst(self, &buf[0, 0], stride, hdr, &lens[0], &verdict[0], &reason[0], n, now_ms)
        for i in range(n):
            punts += verdict[i] == V_PUNT
    return punts


cdef object api_serve(Engine self, int fd, batch, int64_t deadline_ms):
    cdef uint8_t[:, ::1] buf = batch.buf
    cdef uint32_t[::1] lens = batch.lens
    cdef uint8_t[::1] verdict = batch.verdict
    cdef uint16_t[::1] reason = batch.reason
    cdef int size = min(batch.size, buf.shape[0], lens.shape[0], verdict.shape[0],
                        reason.shape[0])
    cdef uint32_t stride = buf.shape[1]
    cdef uint32_t hdr = batch.hdr
    if size < 1:
        raise ValueError("serve needs a batch of at least one frame")
    if stride < 128 + hdr:
        raise ValueError("batch snap must be >= 128 (splice builds SYN-ACKs in place)")
    cdef bint vnet = hdr >= 2
    cdef IoStats st
    cdef pollfd pfd
    cdef int64_t now = mono_ms()
    cdef int i, n = 0, r, punts = 0, err = 0
    cdef long long wakeups = 0, bursts = 0, frames = 0
    cdef uint8_t *base = &buf[0, 0]
    memset(&st, 0, sizeof(st))
    pfd.fd = fd
    pfd.events = POLLIN
    with nogil:
        while punts == 0 and err == 0:
            now = mono_ms()
            if now >= deadline_ms:
                break
            pfd.revents = 0
            r = poll(&pfd, 1, <int>(deadline_ms - now) if deadline_ms - now < 1000000 else 1000000)
            if r < 0:
                if errno != EINTR:
                    err = errno
                continue
            if r == 0:
                continue
            if pfd.revents & (POLLERR | POLLHUP | POLLNVAL) and not pfd.revents & POLLIN:
                err = EBADF if pfd.revents & POLLNVAL else EIO
                continue
            wakeups += 1
            while True:
                lock_take(self)
                n = io_rx(fd, base, stride, &lens[0], size, vnet, &st)
                if n == 0:
                    PyThread_release_lock(self.lock)
                    break
                now = mono_ms()
                burst(self, base, stride, hdr, &lens[0], &verdict[0], &reason[0], n, now)
                io_tx(fd, base, stride, &lens[0], &verdict[0], n, &st)
                bursts += 1
                frames += n
                for i in range(n):
                    punts += verdict[i] == V_PUNT
                if punts:
                    break                 # returns holding the lock, the batch as it is
                PyThread_release_lock(self.lock)
                if n < size or mono_ms() >= deadline_ms:
                    break                 # drained (epoll/poll says when more comes)
        if punts == 0:
            lock_take(self)
    batch.n = n if punts else 0
    return {"wakeups": wakeups, "bursts": bursts, "frames": frames,
            "rx_bytes": st.rx_bytes, "rx_gso": st.rx_gso, "rx_needs_csum": st.rx_csum,
            "tx_frames": st.tx_sent, "tx_errors": st.tx_errors, "tx_bytes": st.tx_bytes,
            "punts": punts, "now": now, "error": err}


cdef enum:
    PF_INDEX = 16       # the burst's prefetch distances, in frames ahead of the one processed:
    PF_FLOW = 8         # its index slot, then (the slot read) its flow entry's lines
    PF_RING = 32        # hs/rv: a ring of > PF_INDEX hashes (a power of two)


cdef void burst(Engine self, uint8_t *base, uint32_t stride, uint32_t hdr, uint32_t *lens,
                uint8_t *verdict, uint16_t *reason, int n, int64_t now) noexcept nogil:
    cdef int i, a, b, k
    cdef uint32_t L
    cdef uint8_t *p
    cdef uint64_t h, v, j
    cdef uint64_t *tab
    cdef Service *sv
    cdef Service *last_sv = NULL        # the service of the latest (dst, dport, proto) looked
    cdef uint64_t last_key = 1 << 63    # up, and that key (no key has bit 63: none yet)
    cdef uint64_t key
    cdef uint64_t hs[PF_RING]
    cdef Service *svs[PF_RING]
    self.vnet_tnl = hdr >= VNET_TNL_HDR_LEN     # the long vnet header (with self.vnet set)
    # Software-pipelined: while frame i is processed, the flow entry of frame i + PF_FLOW
    # and the index slot of frame i + PF_INDEX are on their way from memory (100k flows do
    # not fit in cache). Each frame's hash and service are found once, PF_INDEX frames
    # ahead, and handed to process_frame (hint_h, hint_sv). The prefetches only hide DRAM
    # latency: what a frame does is decided by process_frame() alone, exactly as in the twin.
    for i in range(-PF_INDEX, n):
        a = i + PF_INDEX
        if a < n:
            # a plain IPv4 TCP/UDP frame: its flow hash as process_frame computes it (0 for
            # any other frame, or with probability 2^-64), and its destination's service,
            # which says the index its lookup reads: the forward one, else (NULL) the reverse
            p = base + <size_t>a * stride + hdr
            L = lens[a] - hdr if lens[a] > hdr else 0
            h = 0
            sv = NULL
            if L >= 54 and L + hdr <= stride and p[12] == 8 and p[13] == 0 and p[14] == 0x45 and (
                    p[23] == PROTO_TCP or p[23] == PROTO_UDP):
                h = _flow_hash(rd32(p + 26), rd32(p + 30), rd16(p + 34), rd16(p + 36), p[23])
                # (a burst's frames go to a few services mostly: the one before, again)
                key = (<uint64_t>rd32(p + 30) << 24) | (<uint64_t>rd16(p + 36) << 8) | p[23]
                if key != last_key:
                    last_key = key
                    last_sv = service_find(self, rd32(p + 30), rd16(p + 36), p[23])
                sv = last_sv
                tw_prefetch(&(self.ifwd if sv != NULL else self.irev)[h & self.mask])
            hs[a & (PF_RING - 1)] = h
            svs[a & (PF_RING - 1)] = sv
        b = i + PF_FLOW
        if 0 <= b < n and hs[b & (PF_RING - 1)]:
            # its index slot read (prefetched PF_INDEX - PF_FLOW frames ago), and the lines
            # of the flow entry it names that the frame's routine reads prefetched for
            # writing: forward, the first Xmit.fwd_lines of them (line 0 alone for nat, dsr,
            # tunnel), by the service's mode; reverse, lines 0 and 1 (types.pxi Flow). A
            # probe past a foreign tag goes on a few slots, within the slot's line mostly
            h = hs[b & (PF_RING - 1)]
            sv = svs[b & (PF_RING - 1)]
            tab = self.ifwd if sv != NULL else self.irev
            j = h & self.mask
            for k in range(4):
                v = tab[j]
                if v == 0:
                    break
                if v >> 32 == h >> 32:
                    k = XMIT[sv.mode].fwd_lines if sv != NULL else 2
                    tw_prefetch_lines(&self.fl[(v & 0xFFFFFFFFULL) - 1], 64 * k if k else 64)
                    break
                j = (j + 1) & self.mask
        if i < 0:
            continue
        p = base + <size_t>i * stride
        self.hint_h = hs[i & (PF_RING - 1)]
        self.hint_sv = svs[i & (PF_RING - 1)]     # (read only with a hint_h)
        # the watch costs this one branch per frame while none is set (watch.pxi)
        if self.watch_on:
            watch_frame(self, p, stride, hdr, &lens[i], &verdict[i], &reason[i], now)
        else:
            burst_frame(self, p, stride, hdr, &lens[i], &verdict[i], &reason[i], now)
    self.hint_h = 0


cdef inline void burst_frame(Engine self, uint8_t *rp, uint32_t stride, uint32_t hdr,
                             uint32_t *lens, uint8_t *verdict, uint16_t *reason,
                             int64_t now) noexcept nogil:
    """One row of the burst (rp: its vnet header, then the frame): process_frame, the
    length of a frame made in place, its exit counter, verdict and reason."""
    cdef uint32_t row = lens[0] if lens[0] < stride else stride
    cdef uint32_t L = row - hdr if row > hdr else 0
    cdef int r
    self.newlen = 0
    self.rowcap = stride - hdr
    self.partial = hdr > 0 and row >= hdr and (rp[0] & VNET_F_NEEDS_CSUM)
    self.vnet = rp if hdr >= 10 and row >= hdr else NULL
    self.keep_vnet = False
    r = process_frame(self, rp + hdr, L, now)
    if self.newlen and VMAP[r] != V_DROP:
        # a frame made in place (splice, tunnel; punt_tunnel_frag's is punted so)
        lens[0] = hdr + self.newlen
        if hdr and not self.keep_vnet:
            memset(rp, 0, hdr)            # complete checksums, no GSO
    self.ctr[C_RX_FRAMES] += 1
    self.ctr[r] += 1
    verdict[0] = VMAP[r]
    reason[0] = r


cdef int process_frame(Engine self, uint8_t *f, uint32_t n, int64_t now) noexcept nogil:
    """One frame f[:n]: its exit counter, the frame rewritten in place when it is sent."""
    cdef uint16_t et, tot, sport, dport, ulen
    cdef uint32_t ihl, l4, l4len, doff, src, dst
    cdef uint8_t proto, tflags = 0
    cdef uint16_t fo, ident
    cdef bint first = False
    cdef int r
    cdef uint64_t h
    cdef int32_t idx
    cdef Service *sv
    cdef Flow *e
    cdef Pkt p
    h = self.hint_h
    sv = self.hint_sv
    self.hint_h = 0                     # (taken once: a nested call computes its own)
    if n < 14:
        return C_DROP_RUNT
    if memcmp(f, self.local_mac, 6) != 0 and not (
            f[0] == 0xFF and f[1] == 0xFF and f[2] == 0xFF and f[3] == 0xFF
            and f[4] == 0xFF and f[5] == 0xFF):
        return C_DROP_NOT_OUR_MAC
    et = rd16(f + 12)
    if et == 0x0806:
        return C_PUNT_ARP
    if et == 0x8100 or et == 0x88A8:
        return C_DROP_VLAN
    if et != 0x0800:
        return C_DROP_NOT_IPV4
    if n < 34:
        return C_DROP_IP_TRUNCATED
    if f[14] >> 4 != 4:
        return C_DROP_IP_VERSION
    ihl = (f[14] & 15) * 4
    if ihl < 20:
        return C_DROP_IP_BAD_HDR
    tot = rd16(f + 16)
    if tot < ihl or 14 + <uint32_t>tot > n:
        return C_DROP_IP_BAD_LEN
    if not ip_header_ok(f, 14, ihl):
        return C_DROP_IP_CSUM
    fo = rd16(f + 20) & 0x3FFF          # MF and the fragment offset (frag.pxi)
    ident = rd16(f + 18)
    proto = f[23]
    src = rd32(f + 26)
    dst = rd32(f + 30)
    if dst == self.local_ip:
        return C_DROP_IP_FRAGMENT if fo else C_PUNT_LOCAL
    if fo & 0x1FFF:
        return frag_later(self, f, n, now)
    first = fo != 0
    l4 = 14 + ihl                       # IP options (ihl > 20) are forwarded, see opts_aside
    l4len = tot - ihl
    if proto == PROTO_TCP:
        if l4len < 20:
            return C_DROP_L4_TRUNCATED
        doff = (f[l4 + 12] >> 4) * 4
        if doff < 20 or doff > l4len:
            return C_DROP_TCP_BAD_DOFF
        tflags = f[l4 + 13]
    elif proto == PROTO_UDP:
        if l4len < 8:
            return C_DROP_L4_TRUNCATED
        ulen = rd16(f + l4 + 4)
        if ulen < 8 or (ulen > l4len and not first):   # (a first fragment: the rest follows)
            return C_DROP_UDP_BAD_LEN
    elif proto == PROTO_ICMP and not first:
        if ihl > 20:
            return C_DROP_IP_OPTIONS    # (an ICMP error's own header with options: not read)
        return icmp_in(self, f, n, tot, now)
    else:
        return C_DROP_UNKNOWN_DEST
    sport = rd16(f + l4)
    dport = rd16(f + l4 + 2)
    if h == 0:                          # (the burst's hints are of this frame's very bytes)
        h = _flow_hash(src, dst, sport, dport, proto)
        sv = service_find(self, dst, dport, proto)
    if sv != NULL:
        idx = flow_find(self, self.ifwd, h, src, dst, sport, dport, proto, False)
        if idx >= 0:
            e = &self.fl[idx]
            if now - e.last > self.tmo[e.state]:
                flow_delete(self, idx)
                self.ctr[C_FLOW_EXPIRED] += 1
                idx = -1
            elif ((tflags & (TH_SYN | TH_ACK)) == TH_SYN
                    and (e.state == S_FIN_WAIT or e.state == S_TIME_WAIT or e.state == S_CLOSE)):
                # a new connection on a closing flow's ports (tcp_tw_reuse): schedule afresh
                flow_delete(self, idx)
                self.ctr[C_FLOW_REUSED] += 1
                idx = -1
            elif e.real >= 0 and self.reals[e.real].down and sv.flags & SVC_EXPIRE_NODEST:
                # (an unbound splice flow has no real yet: real = -1)
                flow_delete(self, idx)
                self.ctr[C_FLOW_EXPIRED_NODEST] += 1
                idx = -1
        if idx < 0:
            if XMIT[sv.mode].new_flow == NULL:
                return C_DROP_MODE
            if first and XMIT[sv.mode].frag == NULL:
                return C_DROP_IP_FRAGMENT
            p.src, p.dst, p.sport, p.dport, p.proto, p.tflags, p.h = (src, dst, sport, dport,
                                                                      proto, tflags, h)
            if ihl > 20 and XMIT[sv.mode].l4_at_34:
                r = XMIT[sv.mode].new_flow(self, opts_aside(self, f, ihl), n + 20 - ihl, sv, &p,
                                           now)
                opts_back(self, f, ihl)
            else:
                r = XMIT[sv.mode].new_flow(self, f, n, sv, &p, now)
            if first and VMAP[r] != V_DROP:
                idx = flow_find(self, self.ifwd, h, src, dst, sport, dport, proto, False)
                if idx >= 0:
                    frag_note(self, src, dst, ident, proto, idx, True, now)
            return r
        e = &self.fl[idx]
        if XMIT[e.mode].fwd == NULL:
            return C_DROP_MODE
        if first and XMIT[e.mode].frag == NULL:
            return C_DROP_IP_FRAGMENT
        r = xmit_call(self, XMIT[e.mode].fwd, f, n, ihl, e, sv, tflags, now)
        if first and VMAP[r] != V_DROP:
            frag_note(self, src, dst, ident, proto, idx, True, now)
        return r
    idx = flow_find(self, self.irev, h, src, dst, sport, dport, proto, True)
    if idx < 0:
        idx = flow_from_backend(self, src, dst, sport, dport, proto, tflags, now)
        if idx < 0:
            return C_DROP_UNKNOWN_DEST
    e = &self.fl[idx]
    if now - e.last > self.tmo[e.state]:
        flow_delete(self, idx)
        self.ctr[C_FLOW_EXPIRED] += 1
        return C_DROP_UNKNOWN_DEST
    if XMIT[e.mode].rev == NULL:
        return C_DROP_MODE
    if first and XMIT[e.mode].frag == NULL:
        return C_DROP_IP_FRAGMENT
    r = xmit_call(self, XMIT[e.mode].rev, f, n, ihl, e, NULL, tflags, now)
    if first and VMAP[r] != V_DROP:
        frag_note(self, src, dst, ident, proto, idx, False, now)
    return r


cdef inline uint8_t *opts_aside(Engine self, uint8_t *f, uint32_t ihl) noexcept nogil:
    """IP options set aside for a mode whose routines read the L4 header at offset 34
    (Xmit.l4_at_34: nat, splice): the options kept in self.opts, the Ethernet and fixed IP
    headers moved up against the L4 header, IHL 5 and the total length without the options.
    The header checksum is left as it is: the routines patch it by deltas, and opts_back
    restores what was taken out before anyone reads it. Returns where the frame now starts."""
    cdef uint32_t k = ihl - 20
    memcpy(self.opts, f + 34, k)
    memmove(f + k, f, 34)
    f[k + 14] = 0x45
    wr16(f + k + 16, rd16(f + k + 16) - k)
    self.rowcap -= k
    return f + k


cdef inline void opts_back(Engine self, uint8_t *f, uint32_t ihl) noexcept nogil:
    """After the routine: a frame it made in place (newlen; ours, without the client's options)
    moved back to the row's start; else the headers moved back and the options put back."""
    cdef uint32_t k = ihl - 20
    self.rowcap += k
    if self.newlen:
        memmove(f, f + k, self.newlen)
        return
    memmove(f, f + k, 34)
    memcpy(f + 34, self.opts, k)
    f[14] = 0x40 | (ihl >> 2)
    wr16(f + 16, rd16(f + 16) + k)


cdef inline int xmit_call(Engine self, xmit_fn fn, uint8_t *f, uint32_t n, uint32_t ihl, Flow *e,
                          Service *sv, uint8_t tflags, int64_t now) noexcept nogil:
    """A flow's forward or reverse routine on the frame, its IP options set aside around it
    where the mode reads the L4 header at 34 (Xmit.l4_at_34)."""
    cdef int r
    if ihl > 20 and XMIT[e.mode].l4_at_34:
        r = fn(self, opts_aside(self, f, ihl), n + 20 - ihl, e, sv, tflags, now)
        opts_back(self, f, ihl)
        return r
    return fn(self, f, n, e, sv, tflags, now)


cdef inline int xmit_out(Engine self, uint8_t *f, uint32_t n, Flow *e, const uint8_t *dmac,
                         bint routed, bint fwd, uint8_t tflags, int64_t now) noexcept nogil:
    """The part every transmit routine shares (IPVS's ip_vs_send_or_cont). A frame whose next
    hop's MAC (dmac) is unknown, or that a routed path (one that decrements the TTL) would
    take to TTL 0, is dropped untouched: its counter is returned. Else the TCP state moves,
    the frame is addressed from us to dmac, the flow's time and counters in this direction
    move, and XMIT_CONT is returned: the routine then rewrites L3/L4 and returns its own."""
    if dmac == NULL:
        return C_DROP_NO_NEIGH
    if routed and f[22] <= 1:
        return C_DROP_TTL
    if e.proto == PROTO_TCP:
        track(e, tflags, fwd)
    memcpy(f, dmac, 6)
    memcpy(f + 6, self.local_mac, 6)
    flow_account(self, e, n, fwd, now)
    return XMIT_CONT
