# xmit_dsr: the dsr mode's per-packet routine (IPVS's ip_vs_dr_xmit). Twin: twin/xmit_dsr.py.
#
# When it is used: backends on the LB's layer 2 that hold the VIP on lo and answer the client
# directly; the most throughput for large responses. The LB sees the client side only.
#
# Invariants:
# - The frame is sent to the backend's MAC with nothing else changed (no TTL decrement, no
#   checksum patch); the backend needs its MAC resolved.
# - No reverse path: a dsr flow is never in the reverse index.


cdef int dsr_fwd(Engine self, uint8_t *f, uint32_t n, Flow *e, Service *sv, uint8_t tflags,
                 int64_t now) noexcept nogil:
    cdef Real *r = &self.reals[e.real]
    cdef int k = xmit_out(self, f, n, e, r.mac if r.has_mac else NULL, False, True, tflags, now)
    if k != XMIT_CONT:
        return k
    return C_DSR_FWD


cdef int dsr_icmp(Engine self, uint8_t *f, uint32_t n, Icmp *q, Flow *e, Service *sv,
                  int32_t real, bint fwd) noexcept nogil:
    """An ICMP error from the client side about a dsr flow (icmp.pxi): to the backend's MAC,
    untouched, as the flow's frames go (the backend holds the VIP it is addressed to)."""
    cdef Real *r = &self.reals[real]
    if not r.has_mac:
        return C_DROP_NO_NEIGH
    memcpy(f, r.mac, 6)
    memcpy(f + 6, self.local_mac, 6)
    return C_DSR_ICMP_FWD


cdef int dsr_frag(Engine self, uint8_t *f, uint32_t n, Flow *e, bint fwd,
                  int64_t now) noexcept nogil:
    """A later fragment of a dsr flow (frag.pxi): to the backend's MAC, as the first went."""
    cdef Real *r = &self.reals[e.real]
    if not r.has_mac:
        return C_DROP_NO_NEIGH
    memcpy(f, r.mac, 6)
    memcpy(f + 6, self.local_mac, 6)
    flow_account(self, e, n, True, now)
    return C_DSR_FRAG_FWD


# ---- the mode's row of XMIT (types.pxi) ---------------------------------------------------
XMIT[MODE_DSR].new_flow = new_flow_default
XMIT[MODE_DSR].fwd = dsr_fwd
XMIT[MODE_DSR].rev = NULL
XMIT[MODE_DSR].icmp = dsr_icmp
XMIT[MODE_DSR].frag = dsr_frag
XMIT[MODE_DSR].fwd_lines = 1
