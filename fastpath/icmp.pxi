# icmp: ICMP errors about a flow, to the other end of that flow (RFC 792, RFC 1122 3.2.2;
# as IPVS's ip_vs_in_icmp / ip_vs_out_icmp and conntrack's ICMP "related" NAT do).
# Twin: twin/icmp.py.
#
# When it is used: a router on the path answers a packet of a balanced flow with
# destination unreachable (fragmentation needed: path MTU discovery), time exceeded or
# parameter problem, addressed to that packet's source. From the client side that source is
# a VIP: the error comes to the LB and must reach the backend that sent the packet, or the
# backend never learns the path MTU (a PMTU black hole). From the server side (nat, splice:
# the backends route the clients through the LB) it is about a packet the LB sent to a
# backend, and must reach the client with the VIP in it.
#
# Invariants:
# - Only the three error types are forwarded; anything else not for the LB (echo to a VIP)
#   is drop_icmp_not_error. An error whose quote is too short for the ports, quotes
#   neither TCP nor UDP, or whose ICMP checksum is wrong is drop_icmp_bad: nothing is
#   forwarded that we could not check.
# - The flow is found by the quote, which is the flow's packet as the router saw it:
#   quoted source VIP:port (a service) -> the forward key reversed (client side, icmp_fwd);
#   else the reverse key reversed (server side). No flow on the client side: the VIP's
#   scheduler, if it is a consistent hash (maglev, sh, hash), picks the backend the flow
#   had (icmp_hashed: a restarted LB still routes it), else drop_icmp_no_flow.
# - The mode's icmp routine (XMIT[mode].icmp) sends it; NULL: drop_mode. An ICMP error
#   never creates, refreshes or moves the state of a flow.
# - Translation (nat, splice) rewrites the outer address that is the VIP or the backend,
#   the quoted address and port, and for splice the quoted seq and ack into the other
#   side's space; the outer IP and quoted IP checksums are patched, the quoted L4 checksum
#   is patched when the quote holds it (a router quotes at least 8 bytes: UDP's is always
#   there, TCP's only in a longer quote) and left alone when not, and the ICMP checksum is
#   summed afresh over the message.


cdef inline void outer_ip(Engine self, uint8_t *f, uint32_t tot, uint8_t proto,
                          uint32_t dst, uint16_t ident) noexcept nogil:
    """An IPv4 header at f + 14 from us to dst, tot bytes in all, IP id ident, full checksum,
    no DF (the checksum summed from the values written, not read back: the same sum, fewer
    loads)."""
    cdef uint32_t s = (0x4500 + tot + ident + (64 << 8 | proto) + (self.local_ip >> 16)
                       + (self.local_ip & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF))
    f[12] = 0x08
    f[13] = 0
    f[14] = 0x45
    f[15] = 0
    wr16(f + 16, tot)
    wr16(f + 18, ident)                 # 0 but for a packet to be fragmented (punt_tunnel_frag)
    wr16(f + 20, 0)                     # no DF
    f[22] = 64
    f[23] = proto
    wr16(f + 24, 0)
    wr32(f + 26, self.local_ip)
    wr32(f + 30, dst)
    wr16(f + 24, ~fold(s) & 0xFFFF)


cdef void icmp_frag_needed(Engine self, uint8_t *f, uint32_t mtu) noexcept nogil:
    """ICMP destination unreachable, fragmentation needed (RFC 792/1191) from us to the
    frame's source, made in place and addressed to the gateway (the caller checked has_gw):
    the frame's IP header (options too) and the 8 bytes after it, next-hop MTU mtu."""
    cdef uint32_t client = rd32(f + 26)
    cdef uint32_t q = (f[14] & 15) * 4 + 8
    cdef uint32_t s = 0, k
    memmove(f + 42, f + 14, q)
    memcpy(f, self.gw_mac, 6)
    memcpy(f + 6, self.local_mac, 6)
    outer_ip(self, f, 28 + q, PROTO_ICMP, client, 0)
    f[34] = 3
    f[35] = 4
    wr16(f + 36, 0)
    wr16(f + 38, 0)
    wr16(f + 40, mtu)
    for k in range(34, 42 + q, 2):
        s += rd16(f + k)
    wr16(f + 36, ~fold(s) & 0xFFFF)
    self.newlen = 42 + q


cdef inline bint icmp_is_error(uint8_t t) noexcept nogil:
    return t == 3 or t == 11 or t == 12


cdef inline uint32_t icmp_sum(const uint8_t *f, uint32_t end) noexcept nogil:
    """The folded sum of the ICMP message f[34:end] (0xFFFF: its checksum is right)."""
    cdef uint32_t s = 0, k
    for k in range(34, end - 1, 2):
        s += rd16(f + k)
    if (end - 34) & 1:
        s += <uint32_t>f[end - 1] << 8
    return fold(s)


cdef int icmp_in(Engine self, uint8_t *f, uint32_t n, uint32_t tot, int64_t now) noexcept nogil:
    """An ICMP message through the LB (not for the LB itself): its exit counter."""
    cdef Icmp q
    cdef uint32_t qihl, k
    cdef Service *sv
    cdef int32_t idx, real
    cdef Flow *e
    if tot < 28:
        return C_DROP_L4_TRUNCATED
    if not icmp_is_error(f[34]):
        return C_DROP_ICMP_NOT_ERROR
    q.end = 14 + tot
    q.ip = 42
    if tot < 28 + 20 or f[42] >> 4 != 4:
        return C_DROP_ICMP_BAD
    qihl = (f[42] & 15) * 4
    q.l4 = 42 + qihl
    if qihl < 20 or q.l4 + 8 > q.end:
        return C_DROP_ICMP_BAD
    q.proto = f[42 + 9]
    if q.proto != PROTO_TCP and q.proto != PROTO_UDP:
        return C_DROP_ICMP_BAD
    if icmp_sum(f, q.end) != 0xFFFF:
        return C_DROP_ICMP_BAD
    q.src = rd32(f + 42 + 12)
    q.dst = rd32(f + 42 + 16)
    q.sport = rd16(f + q.l4)
    q.dport = rd16(f + q.l4 + 2)
    # client side: the quote is VIP -> client, the flow's forward key is client -> VIP
    sv = service_find(self, q.src, q.sport, q.proto)
    if sv != NULL:
        q.h = _flow_hash(q.dst, q.src, q.dport, q.sport, q.proto)
        idx = flow_find(self, self.ifwd, q.h, q.dst, q.src, q.dport, q.sport, q.proto, False)
        if idx >= 0:
            e = &self.fl[idx]
            if XMIT[e.mode].icmp == NULL:
                return C_DROP_MODE
            return XMIT[e.mode].icmp(self, f, n, &q, e, sv, e.real, True)
        if sv.sched != SCHED_HASH5 and sv.sched != SCHED_HASHSRC:
            return C_DROP_ICMP_NO_FLOW
        real = schedule(self, sv, q.h, q.dst)
        if real < 0:
            return C_DROP_NO_BACKEND
        if XMIT[sv.mode].icmp == NULL:
            return C_DROP_MODE
        k = XMIT[sv.mode].icmp(self, f, n, &q, NULL, sv, real, True)
        if VMAP[k] == V_TX:
            self.ctr[C_ICMP_HASHED] += 1
        return k
    # server side: the quote is client -> backend, the flow's reverse key is backend -> client
    q.h = _flow_hash(q.dst, q.src, q.dport, q.sport, q.proto)
    idx = flow_find(self, self.irev, q.h, q.dst, q.src, q.dport, q.sport, q.proto, True)
    if idx < 0:
        return C_DROP_ICMP_NO_FLOW
    e = &self.fl[idx]
    if XMIT[e.mode].icmp == NULL:
        return C_DROP_MODE
    return XMIT[e.mode].icmp(self, f, n, &q, e, NULL, e.real, False)


cdef void icmp_translate(uint8_t *f, Icmp *q, bint fwd, uint32_t old_ip, uint16_t old_port,
                         uint32_t new_ip, uint16_t new_port, uint32_t dseq,
                         uint32_t dack) noexcept nogil:
    """Rewrite a routed ICMP error in place (the caller addressed its Ethernet header): TTL - 1;
    the outer destination (fwd) or source (not fwd) old_ip -> new_ip where it is old_ip; the
    quoted source (fwd) or destination address and port old -> new; the quoted seq += dseq
    and ack += dack (TCP; 0: unchanged); the checksums as the module header says."""
    cdef uint32_t outer = 30 if fwd else 26
    cdef uint32_t cur = rd32(f + outer)
    cdef uint32_t qa = q.ip + (12 if fwd else 16)
    cdef uint32_t qp = q.l4 + (0 if fwd else 2)
    cdef uint32_t co = q.l4 + (16 if q.proto == PROTO_TCP else 6)
    cdef bint has_l4c = co + 2 <= q.end
    cdef uint16_t l4c = rd16(f + co) if has_l4c else 0
    cdef uint32_t v
    ip_route(f, outer, cur, new_ip if cur == old_ip else cur)
    # the quoted IP header and its checksum
    wr16(f + q.ip + 10, _csum_replace4(rd16(f + q.ip + 10), old_ip, new_ip))
    wr32(f + qa, new_ip)
    wr16(f + qp, new_port)
    if has_l4c and not (q.proto == PROTO_UDP and l4c == 0):
        l4c = _csum_replace4(l4c, old_ip, new_ip)
        l4c = _csum_replace2(l4c, old_port, new_port)
    if q.proto == PROTO_TCP:
        if dseq:
            v = rd32(f + q.l4 + 4)
            wr32(f + q.l4 + 4, v + dseq)
            if has_l4c:
                l4c = _csum_replace4(l4c, v, v + dseq)
        if dack and q.l4 + 12 <= q.end:
            v = rd32(f + q.l4 + 8)
            wr32(f + q.l4 + 8, v + dack)
            if has_l4c:
                l4c = _csum_replace4(l4c, v, v + dack)
    if has_l4c:
        if q.proto == PROTO_UDP and l4c == 0 and rd16(f + co) != 0:
            l4c = 0xFFFF
        wr16(f + co, l4c)
    # the ICMP checksum, afresh over the whole message
    wr16(f + 36, 0)
    wr16(f + 36, ~icmp_sum(f, q.end) & 0xFFFF)
