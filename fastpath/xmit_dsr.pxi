# xmit_dsr: the dsr mode's per-packet routine (IPVS's ip_vs_dr_xmit). Twin: twin/xmit_dsr.py.
#
# When it is used: backends on the LB's layer 2 that hold the VIP on lo and answer the client
# directly; the most throughput for large responses. The LB sees the client side only.
#
# Invariants:
# - The frame is sent to the backend's MAC with nothing else changed (no TTL decrement, no
#   checksum patch); the backend needs its MAC resolved.
# - No reverse path: a dsr flow is never in the reverse index.


cdef int dsr_fwd(Engine self, uint8_t *f, uint32_t n, Flow *e, uint8_t tflags, int64_t now) noexcept nogil:
    cdef Real *r = &self.reals[e.real]
    if not r.has_mac:
        return C_DROP_NO_NEIGH
    if e.proto == PROTO_TCP:
        track(e, tflags, True)
    memcpy(f, r.mac, 6)
    memcpy(f + 6, self.local_mac, 6)
    e.last = now
    e.pkts_fwd += 1
    e.bytes_fwd += n
    return C_DSR_FWD
