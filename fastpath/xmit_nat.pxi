# xmit_nat: the nat mode's per-packet routines (IPVS's ip_vs_nat_xmit). Twin: twin/xmit_nat.py.
#
# When it is used: a VIP whose backends answer through the LB (their default route or a
# route for the clients points at it). The client's address is kept; the LB rewrites the
# destination on the way in and the source on the way back, so it sees both directions.
#
# Invariants:
# - Forward: client -> VIP becomes client -> backend (address, port, TTL - 1, checksums
#   patched), sent to the backend's MAC. Reverse: backend -> client becomes VIP -> client,
#   sent to the gateway's MAC. Both need the next hop's MAC and a TTL above 1.
# - TCP flows are tracked both ways; UDP flows stay S_UDP.


cdef int nat_fwd(Engine self, uint8_t *f, uint32_t n, Flow *e, uint8_t tflags, int64_t now) noexcept nogil:
    cdef Real *r = &self.reals[e.real]
    if not r.has_mac:
        return C_DROP_NO_NEIGH
    if f[22] <= 1:
        return C_DROP_TTL
    if e.proto == PROTO_TCP:
        track(e, tflags, True)
    rewrite(f, 30, 36, e.vip, e.vport, e.rip, e.rport, e.proto, self.partial)
    memcpy(f, r.mac, 6)
    memcpy(f + 6, self.local_mac, 6)
    e.last = now
    e.pkts_fwd += 1
    e.bytes_fwd += n
    return C_NAT_FWD


cdef int nat_rev(Engine self, uint8_t *f, uint32_t n, Flow *e, uint8_t tflags, int64_t now) noexcept nogil:
    if not self.has_gw:
        return C_DROP_NO_NEIGH
    if f[22] <= 1:
        return C_DROP_TTL
    if e.proto == PROTO_TCP:
        track(e, tflags, False)
    rewrite(f, 26, 34, e.rip, e.rport, e.vip, e.vport, e.proto, self.partial)
    memcpy(f, self.gw_mac, 6)
    memcpy(f + 6, self.local_mac, 6)
    e.last = now
    e.pkts_rev += 1
    e.bytes_rev += n
    return C_NAT_REV
