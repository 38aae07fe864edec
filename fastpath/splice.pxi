# splice: delayed binding. SYN cookies, the cookie ACK that creates the flow, binding by the
# VIP's content rules, our SYN to the backend, the replay of the request, and the
# translation both ways once the two connections are spliced. Twin: twin/splice.py.
# modes/splice.py is the Python side: what the fast path cannot decide is punted to it.
#
# When it is used: a VIP whose backend is chosen by the request's content, or that must
# stand a SYN flood; the LB answers the handshake itself and opens the backend's connection
# as the client.
#
# Invariants:
# - A SYN creates no state: the cookie (defs.py: Linux's layout) carries the client's MSS
#   index, and with timestamps its window scale and SACK in our TSval. A flow exists only
#   after a valid cookie ACK, in SPL_WAIT with no backend (real = -1, not in the reverse
#   index) until it is bound here (splice_l7_bind) or by Python (api_splice_bind).
# - Once spliced, the backend's sequence space is ours shifted by delta, its TSval by
#   ts_off and its window rescaled from ws_b to ws_lb; every rewrite is patched into the
#   checksum incrementally (patch32/patch16), as in the other modes.
# - A frame made in place (SYN-ACK, our SYN, the replay) sets Engine.newlen and never
#   exceeds Engine.rowcap; a frame that would is punted instead.
# - Python learns of a flow by a punt (F_SEEN) or from the wait queue; the queue's entries
#   name a flow by (idx, c_isn, created), so a stale entry is skipped.
# - A hop flow (xmit_hop.pxi) is a splice flow until its hand-off, with the mode of its
#   service pinned at the cookie ACK (splice_like): bound to the VIP's address and port (its
#   backend holds the VIP), our SYN carrying hop_mark and the replay hop_handoff. Each mode's
#   handler gets its own flows from splice_waiting().


cdef uint32_t COOKIE_MSS[4]         # the cookie's MSS index (2 bits) -> MSS
COOKIE_MSS[:] = defs.COOKIE_MSS


# ---- cookies (net/ipv4/syncookies.c) ------------------------------------------------------
cdef inline uint32_t cookie_h1(Engine self, uint32_t src, uint32_t dst, uint16_t sport,
                               uint16_t dport) noexcept nogil:
    return <uint32_t>(_mix64(self.k0 ^ ((<uint64_t>src << 32) | dst)
                             ^ _mix64(self.k1 ^ ((<uint64_t>sport << 16) | dport))) & 0xFFFFFFFFULL)


cdef inline uint32_t cookie_h2(Engine self, uint32_t src, uint32_t dst, uint16_t sport,
                               uint16_t dport, uint32_t cnt) noexcept nogil:
    return <uint32_t>(_mix64(self.k1 ^ ((<uint64_t>src << 32) | dst)
                             ^ _mix64(self.k0 ^ ((<uint64_t>cnt << 32) | (<uint64_t>sport << 16) | dport)))
                      & 0xFFFFFF)


cdef inline uint32_t cookie_make(Engine self, uint32_t src, uint32_t dst, uint16_t sport,
                                 uint16_t dport, uint32_t c_isn, uint32_t cnt,
                                 uint32_t data) noexcept nogil:
    return (cookie_h1(self, src, dst, sport, dport) + c_isn + (cnt << 24)
            + ((cookie_h2(self, src, dst, sport, dport, cnt) + data) & 0xFFFFFF))


cdef inline int cookie_check(Engine self, uint32_t src, uint32_t dst, uint16_t sport,
                             uint16_t dport, uint32_t c_isn, uint32_t cookie,
                             int64_t now) noexcept nogil:
    """The MSS index the cookie carries, or -1 when it is not ours or too old."""
    cdef uint32_t c = cookie - cookie_h1(self, src, dst, sport, dport) - c_isn
    cdef uint32_t cnt = c >> 24
    cdef uint32_t data
    if ((<uint32_t>(now >> 16) & 0xFF) - cnt) & 0xFF > COOKIE_MAX_AGE:
        return -1
    data = (c - cookie_h2(self, src, dst, sport, dport, cnt)) & 0xFFFFFF
    return data if data < 4 else -1


# ---- per packet ---------------------------------------------------------------------------
cdef int splice_new(Engine self, uint8_t *f, uint32_t n, Service *sv, Pkt *p,
                    int64_t now) noexcept nogil:
    """No flow yet: a SYN gets a cookie SYN-ACK (no state); an ACK with a valid cookie
    creates the flow in SPL_WAIT and goes up to Python."""
    cdef uint32_t c_isn, l_isn, bits, idx
    cdef int k, mssi
    cdef uint8_t tflags = p.tflags
    cdef Opts o
    cdef Flow *e
    if p.proto != PROTO_TCP:
        return C_DROP_MODE          # a UDP service in splice mode (the control side has none)
    if (tflags & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN:
        return splice_synack(self, f, sv, p.src, p.dst, p.sport, p.dport, now)
    if tflags & TH_RST or not tflags & TH_ACK:
        return C_SPLICE_BAD_COOKIE
    c_isn = rd32(f + 38) - 1
    l_isn = rd32(f + 42) - 1
    mssi = cookie_check(self, p.src, p.dst, p.sport, p.dport, c_isn, l_isn, now)
    if mssi < 0:
        return C_SPLICE_BAD_COOKIE
    tcp_options(f, 54, 34 + (f[46] >> 4) * 4, &o)
    if o.ts >= 0 and f[o.ts + 1] != 10:
        o.ts = -1
    idx = flow_alloc(self, now)
    e = &self.fl[idx]
    e.cip, e.vip, e.rip, e.cport, e.vport, e.rport = p.src, p.dst, 0, p.sport, p.dport, 0
    e.proto, e.mode, e.state, e.flags, e.real, e.used = 6, sv.mode, S_SPL_WAIT, 0, -1, 1
    e.hf, e.hr = p.h, 0
    e.created = now
    e.last = now
    e.pkts_rev = e.bytes_rev = 0
    e.c_isn, e.l_isn, e.delta, e.ts_off = c_isn, l_isn, 0, 0
    e.mss = COOKIE_MSS[mssi]
    if o.ts >= 0:
        bits = rd32(f + o.ts + 6) & 0x3F          # what our SYN-ACK's TSval carried
        e.ws_c = bits & 0xF
        e.sopt = SOPT_TS | (SOPT_SACK if bits & 0x10 else 0)
        e.c_tsval = rd32(f + o.ts + 2)
    else:
        e.ws_c, e.sopt, e.c_tsval = 0xF, 0, 0
    e.ws_lb = SPLICE_WSCALE if e.ws_c != 0xF else 0
    e.ws_b, e.b_tsval = 0, 0
    e.c_win = rd16(f + 48)
    e.pkts_fwd, e.bytes_fwd = 0, 0
    e.rp, e.rp_len = NULL, 0
    e.sync_st, e.sync_at = SYNC_NEVER, 0
    flow_insert(self, self.ifwd, p.h, idx)
    vip_flow_new(self, e, sv)
    flow_account(self, e, n, True, now)      # (the cookie ACK: the flow's first frame)
    self.nused += 1
    self.ctr[C_FLOW_CREATED] += 1
    if rd16(f + 16) > 20 + (f[46] >> 4) * 4 or tflags & TH_FIN:
        if sv.l7_n:
            k = splice_l7_bind(self, f, e, sv, tflags, now)
            if k:
                return k
        e.flags = F_SEEN
        return C_PUNT_SPLICE          # the request (or a FIN) came with the ACK
    # nothing for Python yet: the request's first segment will be punted; a client that
    # stays silent is handed up by splice_waiting()
    waitq_push(self, idx, now)
    return C_SPLICE_ACCEPTED


cdef int splice_synack(Engine self, uint8_t *f, Service *sv, uint32_t src, uint32_t dst,
                       uint16_t sport, uint16_t dport, int64_t now) noexcept nogil:
    """The cookie SYN-ACK: no state. It promises what every backend of the VIP has shown it
    can keep (sv.mss_cap, sv.nosack: learnt from their SYN-ACKs, splice_learn)."""
    cdef Opts o
    cdef uint8_t opt[40]
    cdef uint8_t peer[6]
    cdef int ol = 0, k, mssi = 0
    cdef uint32_t mss = 536, ws = 0xF, c_isn, cookie, my_ts
    cdef bint sack
    if tcp_options(f, 54, 34 + (f[46] >> 4) * 4, &o) < 0:
        return C_DROP_TCP_BAD_OPTIONS
    if o.mss >= 0 and f[o.mss + 1] == 4:
        mss = rd16(f + o.mss + 2)
    k = 3
    while k >= 0:
        if mss >= COOKIE_MSS[k]:
            mssi = k
            break
        k -= 1
    c_isn = rd32(f + 38)
    cookie = cookie_make(self, src, dst, sport, dport, c_isn, <uint32_t>(now >> 16) & 0xFF, mssi)
    opt[0] = 2
    opt[1] = 4
    wr16(opt + 2, sv.mss_cap)
    ol = 4
    if o.ts >= 0 and f[o.ts + 1] == 10:
        if o.ws >= 0 and f[o.ws + 1] == 3:
            ws = f[o.ws + 2] if f[o.ws + 2] < 14 else 14
        sack = o.sackok >= 0 and f[o.sackok + 1] == 2 and not sv.nosack
        my_ts = <uint32_t>((now & ~(<int64_t>0x3F)) | ws | (0x10 if sack else 0))
        sack_ts(opt + 4, sack, my_ts, rd32(f + o.ts + 2))
        ol = 16
        if ws != 0xF:
            opt[16] = 1
            opt[17] = 3
            opt[18] = 3
            opt[19] = SPLICE_WSCALE
            ol = 20
    memcpy(peer, f + 6, 6)                   # the SYN's source MAC: our next hop back
    self.newlen = tcp_frame(f, peer, self.local_mac, dst, src, dport, sport, cookie,
                            c_isn + 1, TH_SYN | TH_ACK, 0xFFFF, opt, ol, NULL, 0)
    return C_SPLICE_SYNACK


cdef int splice_fwd(Engine self, uint8_t *f, uint32_t n, Flow *e, Service *sv, uint8_t tflags,
                    int64_t now) noexcept nogil:
    """Client -> backend: before binding, the request (the VIP's rules or Python decide);
    after, the frame sent on with the backend's view of ack, TSecr and SACK blocks."""
    cdef Opts o
    cdef Real *r
    cdef int k, ln
    cdef uint32_t gso
    tcp_options_fast(f, &o)
    if e.state == S_SPL_WAIT or e.state == S_SPL_CONNECTING:
        # no backend yet: the VIP's rules decide here, or Python buffers the request
        # (and answers RST/FIN)
        if o.ts >= 0 and f[o.ts + 1] == 10:
            e.c_tsval = rd32(f + o.ts + 2)
        e.c_win = rd16(f + 48)
        flow_account(self, e, n, True, now)
        if e.state == S_SPL_WAIT and sv.l7_n and not e.flags & F_SEEN:
            k = splice_l7_bind(self, f, e, sv, tflags, now)
            if k:
                return k
        e.flags |= F_SEEN
        return C_PUNT_SPLICE
    r = &self.reals[e.real]
    if r.mss and rd16(f + 16) > r.mss + 40:
        # more than the backend keeps: promised before it was known (a cookie SYN-ACK
        # before splice_learn had seen it). A superframe's segments are cut smaller; a
        # segment with DF is answered so the client's PMTU discovery shrinks it
        if self.vnet != NULL and self.vnet[1] != 0:
            gso = self.vnet[4] | (<uint32_t>self.vnet[5] << 8)
            if gso + ((f[46] >> 4) * 4) > r.mss + 20:
                gso = r.mss + 20 - ((f[46] >> 4) * 4)
                self.vnet[4] = gso & 0xFF
                self.vnet[5] = gso >> 8
                self.keep_vnet = True
        elif f[20] & 0x40:
            if not self.has_gw:
                return C_DROP_NO_NEIGH
            icmp_frag_needed(self, f, r.mss + 40)
            return C_SPLICE_FRAG_NEEDED
    k = xmit_out(self, f, n, e, r.mac if r.has_mac else NULL, True, True, tflags, now)
    if k != XMIT_CONT:
        return k
    rewrite(f, 30, 36, e.vip, e.vport, e.rip, e.rport, 6, self.partial)
    if tflags & TH_ACK:
        patch32(f, 42, rd32(f + 42) - e.delta, self.partial)
    if e.sopt & SOPT_TS and o.ts >= 0 and f[o.ts + 1] == 10:
        patch32(f, o.ts + 6, rd32(f + o.ts + 6) - e.ts_off, self.partial)
    if o.sack >= 0:
        ln = f[o.sack + 1]
        k = o.sack + 2
        while k < o.sack + ln - 7:
            patch32(f, k, rd32(f + k) - e.delta, self.partial)
            patch32(f, k + 4, rd32(f + k + 4) - e.delta, self.partial)
            k += 8
    return C_SPLICE_FWD


cdef void splice_learn(Engine self, uint8_t *f, Flow *e, Opts *o) noexcept nogil:
    """A backend's SYN-ACK to us: what it announced (MSS, 536 without the option; SACK),
    kept per backend (address and port: the Real), and the VIP's promise lowered to it (the
    nmsynproxy way: the next cookie SYN-ACKs announce no more than the backends keep)."""
    cdef Real *r = &self.reals[e.real]
    cdef Service *sv
    cdef uint16_t before
    r.mss = rd16(f + o.mss + 2) if o.mss >= 0 and f[o.mss + 1] == 4 else 536
    r.nosack = not (o.sackok >= 0 and f[o.sackok + 1] == 2)
    sv = service_find(self, e.vip, e.vport, PROTO_TCP)
    if sv != NULL and splice_like(sv.mode):
        before = sv.mss_cap
        splice_cap(sv, r)
        if sv.mss_cap < before:
            self.ctr[C_SPLICE_MSS_LOWERED] += 1


cdef int splice_rev(Engine self, uint8_t *f, uint32_t n, Flow *e, Service *sv, uint8_t tflags,
                    int64_t now) noexcept nogil:
    """Backend -> client: while connecting, its SYN-ACK (recorded, then answered by the
    replay or punted); after, the frame sent on with the client's view of seq, TSval and
    window."""
    cdef Opts o
    cdef int ts, ws, k
    cdef uint32_t w
    tcp_options_fast(f, &o)
    ts = o.ts if o.ts >= 0 and f[o.ts + 1] == 10 else -1
    if e.state == S_SPL_CONNECTING:
        if (tflags & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK) and rd32(f + 42) == e.c_isn + 1:
            splice_learn(self, f, e, &o)
            e.delta = e.l_isn - rd32(f + 38)
            ws = f[o.ws + 2] if o.ws >= 0 and f[o.ws + 1] == 3 else -1
            e.ws_b = (ws if ws < 14 else 14) if ws >= 0 and e.ws_c != 0xF else 0
            if e.sopt & SOPT_TS and ts >= 0:
                e.b_tsval = rd32(f + ts + 2)
                # the client's view continues from our SYN-ACK's TSval (PAWS)
                e.ts_off = <uint32_t>(now + 64) - e.b_tsval
            e.state = S_ESTABLISHED
            flow_account(self, e, n, False, now)
            self.ctr[C_SPLICE_ESTABLISHED] += 1
            if e.flags & F_INLINE:
                # (one segment within the client's MSS, as the client itself sent it)
                return splice_replay(self, f, e, rd32(f + 38))
            return C_PUNT_SPLICE      # a request longer than one segment: Python replays it
        if tflags & TH_RST:
            return C_PUNT_SPLICE
        if (tflags & (TH_SYN | TH_ACK)) == TH_ACK:
            return C_PUNT_SPLICE      # a TIME_WAIT's answer to our SYN: Python resets it
        return C_DROP_SPLICE_STATE
    if e.state == S_SPL_WAIT:
        return C_DROP_SPLICE_STATE
    if tflags & TH_SYN:
        # a retransmitted SYN-ACK: our ACK was lost; answer it (and replay) again
        if ts >= 0:
            e.b_tsval = rd32(f + ts + 2)
        e.last = now
        if (e.flags & F_INLINE and tflags & TH_ACK and rd32(f + 42) == e.c_isn + 1
                and rd32(f + 38) == e.l_isn - e.delta):
            return splice_replay(self, f, e, rd32(f + 38))
        return C_PUNT_SPLICE
    if e.rp != NULL and tflags & TH_ACK and <int32_t>(rd32(f + 42) - e.c_isn - 1) > 0:
        free(e.rp)            # the backend has the request: no SYN-ACK will come again
        e.rp = NULL
    k = xmit_out(self, f, n, e, self.gw_mac if self.has_gw else NULL, True, False, tflags, now)
    if k != XMIT_CONT:
        return k
    rewrite(f, 26, 34, e.rip, e.rport, e.vip, e.vport, 6, self.partial)
    patch32(f, 38, rd32(f + 38) + e.delta, self.partial)
    if e.ws_b != e.ws_lb:
        w = (<uint32_t>rd16(f + 48) << e.ws_b) >> e.ws_lb
        patch16(f, 48, w if w < 0xFFFF else 0xFFFF, self.partial)
    if ts >= 0 and e.sopt & SOPT_TS:
        patch32(f, ts + 2, rd32(f + ts + 2) + e.ts_off, self.partial)
    return C_SPLICE_REV


cdef int splice_icmp(Engine self, uint8_t *f, uint32_t n, Icmp *q, Flow *e, Service *sv,
                     int32_t real, bint fwd) noexcept nogil:
    """An ICMP error about a bound splice flow (icmp.pxi), translated as nat's are and, for
    TCP, its quoted seq and ack moved into the other connection's space: from the client
    side the quote is our segment to the client (seq in our space, - delta for the
    backend's), from the server side our segment to the backend (ack - delta: + delta for
    the client's). Linux drops an ICMP error whose seq is outside its window."""
    cdef Real *r
    if e == NULL or e.real < 0 or e.state == S_SPL_WAIT or e.state == S_SPL_CONNECTING:
        return C_DROP_ICMP_NO_FLOW        # nothing sent on it yet that an error could be about
    if f[22] <= 1:
        return C_DROP_TTL
    if fwd:
        r = &self.reals[e.real]
        if not r.has_mac:
            return C_DROP_NO_NEIGH
        memcpy(f, r.mac, 6)
        memcpy(f + 6, self.local_mac, 6)
        icmp_translate(f, q, True, q.src, q.sport, e.rip, e.rport, <uint32_t>(0 - e.delta), 0)
        self.newlen = n
        return C_SPLICE_ICMP_FWD
    if not self.has_gw:
        return C_DROP_NO_NEIGH
    memcpy(f, self.gw_mac, 6)
    memcpy(f + 6, self.local_mac, 6)
    icmp_translate(f, q, False, e.rip, e.rport, e.vip, e.vport, 0, e.delta)
    self.newlen = n
    return C_SPLICE_ICMP_REV


# ---- binding a flow to a backend, our SYN, the replay ------------------------------------
cdef void waitq_push(Engine self, uint32_t idx, int64_t now) noexcept nogil:
    if self.wq_tail - self.wq_head == self.wq_size:
        self.wq_head += 1
        self.ctr[C_SPLICE_WAITQ_LOST] += 1
    self.waitq[self.wq_tail & (self.wq_size - 1)] = WaitQ(idx, self.fl[idx].c_isn,
                                                        self.fl[idx].created, now)
    self.wq_tail += 1


cdef bint splice_bind_clash(Engine self, Flow *e, int32_t real, int64_t now) noexcept nogil:
    """Whether binding e to real would take a backend-side 4-tuple a live flow holds (the
    key splice_bind_real enters; flow_rev_clash)."""
    cdef Real *r = &self.reals[real]
    if e.mode == MODE_HOP:
        return flow_rev_clash(self, e.vip, e.cip, e.vport, e.cport, 6, now) >= 0
    return flow_rev_clash(self, r.ip, e.cip, r.port, e.cport, 6, now) >= 0


cdef void splice_bind_real(Engine self, Flow *e, int32_t real, int64_t now) noexcept nogil:
    cdef Real *r = &self.reals[real]
    e.real, e.rip, e.rport = real, r.ip, r.port
    if e.mode == MODE_HOP:
        # hop: the backend's socket is VIP:port <-> client:port (it holds the VIP, as for
        # dsr), so its SYN-ACK, which its shim sends us, comes from the VIP
        e.rip, e.rport = e.vip, e.vport
    e.hr = _flow_hash(e.rip, e.cip, e.rport, e.cport, 6)
    flow_insert_rev(self, <uint32_t>(e - self.fl))
    r.conns += 1
    r.flows += 1
    e.state = S_SPL_CONNECTING
    e.last = now


cdef int splice_l7_bind(Engine self, uint8_t *f, Flow *e, Service *sv, uint8_t tflags,
                        int64_t now) noexcept nogil:
    """The request's first segment, in f: decide it by the VIP's rules, bind the flow, keep
    the segment to replay and turn f into our SYN to the backend. 0 when any of it cannot
    be done here (Python then gets the segment)."""
    cdef uint32_t doff = (f[46] >> 4) * 4
    cdef int dl = <int>rd16(f + 16) - 20 - <int>doff
    cdef const uint8_t *d = f + 34 + doff
    cdef int pool, m
    cdef int32_t real
    cdef uint8_t *rp
    if (dl <= 0 or tflags & (TH_SYN | TH_RST | TH_FIN) or not tflags & TH_ACK
            or rd32(f + 38) != e.c_isn + 1
            or dl + (12 if e.sopt & SOPT_TS else 0) > e.mss):
        return 0
    m = dl if <uint32_t>dl < sv.l7_limit else <int>sv.l7_limit
    pool = l7_match(self, d, m, sv)
    if pool < 0:
        return 0
    real = schedule(self, &self.pools[pool], e.hf, e.cip)
    if real < 0 or not self.reals[real].has_mac or splice_bind_clash(self, e, real, now):
        return 0                        # (Python decides, and says why)
    rp = <uint8_t *>malloc(dl)
    if rp == NULL:
        return 0
    memcpy(rp, d, dl)
    splice_bind_real(self, e, real, now)
    e.flags |= F_INLINE
    e.rp, e.rp_len = rp, dl
    waitq_push(self, <uint32_t>(e - self.fl), now)   # Python resends a lost SYN
    self.newlen = splice_syn_into(self, f, e)
    return C_SPLICE_DECIDED


cdef uint32_t splice_syn_into(Engine self, uint8_t *f, Flow *e) noexcept nogil:
    """Our SYN to the backend as the client, written at f: its address, port, ISN and SYN
    options as the cookie kept them (and hop's mark). Returns its length."""
    cdef uint8_t opt[24]
    cdef int ol = 4
    opt[0] = 2
    opt[1] = 4
    wr16(opt + 2, e.mss)
    if e.sopt & SOPT_TS:
        sack_ts(opt + 4, e.sopt & SOPT_SACK, e.c_tsval, 0)
        ol = 16
    if e.ws_c != 0xF:
        opt[ol] = 1
        opt[ol + 1] = 3
        opt[ol + 2] = 3
        opt[ol + 3] = e.ws_c
        ol += 4
    if e.mode == MODE_HOP:
        ol += hop_mark(opt + ol)
    return tcp_frame(f, self.reals[e.real].mac, self.local_mac, e.cip, e.rip, e.cport,
                     e.rport, e.c_isn, 0, TH_SYN, 65535, opt, ol, NULL, 0)


cdef int splice_replay(Engine self, uint8_t *f, Flow *e, uint32_t s_isn) noexcept nogil:
    """Turn the backend's SYN-ACK (in f) into our answer as the client: ACK, and the
    client's request when we still hold it (with the client's FIN if it sent one)."""
    cdef Real *r = &self.reals[e.real]
    cdef uint8_t opt[28]
    cdef int ol = 0
    cdef uint8_t fl = TH_ACK
    if not r.has_mac:
        return C_DROP_NO_NEIGH
    if e.sopt & SOPT_TS:
        sack_ts(opt, False, e.c_tsval, e.b_tsval)
        ol = 12
    if e.mode == MODE_HOP:
        ol += hop_handoff(self, opt + ol, e)     # the shim takes the connection over
    if e.rp != NULL:
        fl = fl | TH_PSH | (TH_FIN if e.flags & F_RP_FIN else 0)
    if 54 + ol + (e.rp_len if e.rp != NULL else 0) > self.rowcap:
        return C_PUNT_SPLICE
    self.newlen = tcp_frame(f, r.mac, self.local_mac, e.cip, e.rip, e.cport, e.rport,
                            e.c_isn + 1, s_isn + 1, fl, e.c_win, opt, ol,
                            e.rp, e.rp_len if e.rp != NULL else 0)
    return C_SPLICE_REPLAY


# hop's options in the frames above (a hop flow is a splice flow until its hand-off)
cdef int hop_mark(uint8_t *o) noexcept nogil:
    """The mark of our SYN to the backend, at o: [253, 4, ExID]. Returns its length."""
    o[0] = HOP_OPT_KIND
    o[1] = HOP_MARK_LEN
    wr16(o + 2, HOP_EXID)
    return 4


cdef int hop_handoff(Engine self, uint8_t *o, Flow *e) noexcept nogil:
    """The hand-off of our replay, at o: two NOPs (the option 4-aligned), then [253, 14,
    ExID, delta, ts_off, ws_b, ws_lb]. Returns its length (16)."""
    o[0] = 1
    o[1] = 1
    o[2] = HOP_OPT_KIND
    o[3] = HOP_HANDOFF_LEN
    wr16(o + 4, HOP_EXID)
    wr32(o + 6, e.delta)
    wr32(o + 10, e.ts_off if e.sopt & SOPT_TS else 0)
    o[14] = e.ws_b
    o[15] = e.ws_lb
    self.ctr[C_HOP_HANDOFF] += 1
    return 16


cdef bytes splice_syn_frame(Engine self, Flow *e):
    """splice_syn_into, as bytes (for Python)."""
    cdef uint8_t f[80]
    cdef uint32_t L = splice_syn_into(self, f, e)
    return f[:L]


cdef inline bint splice_like(uint8_t mode) noexcept nogil:
    """The modes whose client side is splice's (cookies, binding, replay): splice and hop."""
    return mode == MODE_SPLICE or mode == MODE_HOP


cdef int32_t splice_lookup(Engine self, uint32_t cip, uint16_t cport, uint32_t vip,
                           uint16_t vport):
    cdef uint64_t h = _flow_hash(cip, vip, cport, vport, 6)
    cdef int32_t idx = flow_find(self, self.ifwd, h, cip, vip, cport, vport, 6, False)
    if idx >= 0 and splice_like(self.fl[idx].mode):
        return idx
    return -1


# ---- the API's bodies (engine.pxi) --------------------------------------------------------
cdef object api_splice_flow(Engine self, cip, cport, vip, vport):
    cdef int32_t idx = splice_lookup(self, cip, cport, vip, vport)
    if idx < 0:
        return None
    cdef Flow *e = &self.fl[idx]
    return {"state": e.state, "real": e.real, "rip": e.rip, "rport": e.rport,
            "c_isn": e.c_isn, "l_isn": e.l_isn, "s_isn": <uint32_t>(e.l_isn - e.delta),
            "mss": e.mss, "ws_c": e.ws_c, "ws_b": e.ws_b, "ws_lb": e.ws_lb,
            "sopt": e.sopt, "c_tsval": e.c_tsval, "c_win": e.c_win, "b_tsval": e.b_tsval,
            "ts_off": e.ts_off}


cdef object api_splice_bind(Engine self, cip, cport, vip, vport, real, int64_t now_ms,
                            request, fin):
    check_real_idx(real)
    cdef const uint8_t[::1] req = request
    cdef int32_t idx = splice_lookup(self, cip, cport, vip, vport)
    if idx < 0 or self.fl[idx].state != S_SPL_WAIT or not self.reals[<int>real].has_mac:
        return None
    cdef Flow *e = &self.fl[idx]
    if splice_bind_clash(self, e, real, now_ms):
        self.ctr[C_DROP_REV_CLASH] += 1
        return False
    splice_bind_real(self, e, real, now_ms)
    e.flags |= F_SEEN
    if len(req) + (12 if e.sopt & SOPT_TS else 0) <= e.mss:
        e.flags |= F_INLINE | (F_RP_FIN if fin else 0)
        if len(req):
            e.rp = <uint8_t *>malloc(len(req))
            if e.rp == NULL:
                raise MemoryError()
            memcpy(e.rp, &req[0], len(req))
        e.rp_len = len(req)
    return splice_syn_frame(self, e)


cdef object api_splice_by_backend(Engine self, cip, cport, rip, rport):
    cdef uint32_t c = check_ip(cip), r = check_ip(rip)
    cdef uint16_t cp = check_port(cport), rp = check_port(rport)
    cdef int32_t idx = flow_find(self, self.irev, _flow_hash(r, c, rp, cp, 6), r, c, rp, cp, 6,
                                 True)
    if idx < 0 or not splice_like(self.fl[idx].mode):
        return None
    cdef Flow *e = &self.fl[idx]
    return (e.cip, e.cport, e.vip, e.vport)


cdef object api_splice_syn(Engine self, cip, cport, vip, vport):
    cdef int32_t idx = splice_lookup(self, cip, cport, vip, vport)
    if (idx < 0 or self.fl[idx].state != S_SPL_CONNECTING
            or not self.reals[self.fl[idx].real].has_mac):
        return None
    return splice_syn_frame(self, &self.fl[idx])


cdef object api_splice_waiting(Engine self, int64_t now_ms, mode):
    out = [x for m, x in self.wq_other if m == mode]
    if out:
        self.wq_other = [(m, x) for m, x in self.wq_other if m != mode]
    cdef WaitQ *w
    cdef Flow *e
    while self.wq_head != self.wq_tail:
        w = &self.waitq[self.wq_head & (self.wq_size - 1)]
        if now_ms - w.at < SPLICE_WAIT_HANDOFF_MS:
            break
        self.wq_head += 1
        e = &self.fl[w.idx]
        if (e.used and splice_like(e.mode) and e.c_isn == w.c_isn and e.created == w.created
                and (e.state == S_SPL_WAIT or e.state == S_SPL_CONNECTING)
                and not e.flags & F_SEEN):
            e.flags |= F_SEEN
            if e.mode == mode:
                out.append((e.cip, e.cport, e.vip, e.vport, w.at))
            else:       # the other mode's handler takes it on its own tick
                self.wq_other.append((e.mode, (e.cip, e.cport, e.vip, e.vport, w.at)))
    return out


cdef object api_splice_drop(Engine self, cip, cport, vip, vport):
    cdef int32_t idx = splice_lookup(self, cip, cport, vip, vport)
    if idx < 0:
        return False
    flow_delete(self, idx)
    return True


# ---- the mode's row of XMIT (types.pxi) ---------------------------------------------------
XMIT[MODE_SPLICE].new_flow = splice_new
XMIT[MODE_SPLICE].fwd = splice_fwd
XMIT[MODE_SPLICE].rev = splice_rev
XMIT[MODE_SPLICE].icmp = splice_icmp
XMIT[MODE_SPLICE].l4_at_34 = 1
XMIT[MODE_SPLICE].fwd_lines = 2          # the translation is in line 1
