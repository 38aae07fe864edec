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


cdef int nat_fwd(Engine self, uint8_t *f, uint32_t n, Flow *e, Service *sv, uint8_t tflags,
                 int64_t now) noexcept nogil:
    cdef Real *r = &self.reals[e.real]
    cdef int k = xmit_out(self, f, n, e, r.mac if r.has_mac else NULL, True, True, tflags, now)
    if k != XMIT_CONT:
        return k
    rewrite(f, 30, 36, e.vip, e.vport, e.rip, e.rport, e.proto, self.partial)
    return C_NAT_FWD


cdef int nat_rev(Engine self, uint8_t *f, uint32_t n, Flow *e, Service *sv, uint8_t tflags,
                 int64_t now) noexcept nogil:
    cdef int k = xmit_out(self, f, n, e, self.gw_mac if self.has_gw else NULL, True, False,
                          tflags, now)
    if k != XMIT_CONT:
        return k
    rewrite(f, 26, 34, e.rip, e.rport, e.vip, e.vport, e.proto, self.partial)
    return C_NAT_REV


cdef int nat_icmp(Engine self, uint8_t *f, uint32_t n, Icmp *q, Flow *e, Service *sv,
                  int32_t real, bint fwd) noexcept nogil:
    """An ICMP error about a nat flow (icmp.pxi), translated as the flow's packets are: from
    the client side VIP -> the backend (e NULL: the one `real` the hash chose), from the
    server side the backend -> VIP, to the gateway."""
    cdef Real *r = &self.reals[real]
    if f[22] <= 1:
        return C_DROP_TTL
    if fwd:
        if not r.has_mac:
            return C_DROP_NO_NEIGH
        memcpy(f, r.mac, 6)
        memcpy(f + 6, self.local_mac, 6)
        icmp_translate(f, q, True, q.src, q.sport, r.ip if e == NULL else e.rip,
                       r.port if e == NULL else e.rport, 0, 0)
        self.newlen = n                 # checksums full: a vnet header is cleared
        return C_NAT_ICMP_FWD
    if not self.has_gw:
        return C_DROP_NO_NEIGH
    memcpy(f, self.gw_mac, 6)
    memcpy(f + 6, self.local_mac, 6)
    icmp_translate(f, q, False, e.rip, e.rport, e.vip, e.vport, 0, 0)
    self.newlen = n
    return C_NAT_ICMP_REV


cdef int nat_frag(Engine self, uint8_t *f, uint32_t n, Flow *e, bint fwd,
                  int64_t now) noexcept nogil:
    """A later fragment of a nat flow (frag.pxi): only its IP header is translated (the L4
    header and its checksum were in the first)."""
    cdef Real *r = &self.reals[e.real]
    if fwd and not r.has_mac or not fwd and not self.has_gw:
        return C_DROP_NO_NEIGH
    if f[22] <= 1:
        return C_DROP_TTL
    if fwd:
        memcpy(f, r.mac, 6)
    else:
        memcpy(f, self.gw_mac, 6)
    memcpy(f + 6, self.local_mac, 6)
    if fwd:
        ip_route(f, 30, e.vip, e.rip)
    else:
        ip_route(f, 26, e.rip, e.vip)
    flow_account(self, e, n, fwd, now)
    return C_NAT_FRAG_FWD if fwd else C_NAT_FRAG_REV


# ---- the mode's row of XMIT (types.pxi) ---------------------------------------------------
XMIT[MODE_NAT].new_flow = new_flow_default
XMIT[MODE_NAT].fwd = nat_fwd
XMIT[MODE_NAT].rev = nat_rev
XMIT[MODE_NAT].icmp = nat_icmp
XMIT[MODE_NAT].frag = nat_frag
XMIT[MODE_NAT].l4_at_34 = 1
XMIT[MODE_NAT].rev_rebuild = 1
XMIT[MODE_NAT].fwd_lines = 1
