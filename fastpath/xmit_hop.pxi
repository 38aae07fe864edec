# xmit_hop: the hop mode's routines (Resonate's "connection hopping"). Twin: twin/xmit_hop.py.
# modes/hop/ is the Python side (the punt handler is splice's, on hop's punt reason) and the
# backend's shim (modes/hop/hop_shim.c, an eBPF tc program).
#
# When it is used: a VIP whose backend is chosen by the request's content (splice's rules)
# AND whose responses are large: the LB reads the request as splice does, opens the
# backend's connection to the VIP at the backend's MAC (the backend holds the VIP, as for
# dsr), then hands the connection to the backend's shim, which translates it on the
# backend; the responses go straight to the client. The LB sees the client side only.
#
# Invariants:
# - Until the hand-off a hop flow is a splice flow (splice.pxi: cookies, binding, our SYN,
#   the backend's SYN-ACK, the replay), addressed to the VIP: its rip/rport are the VIP's,
#   so the backend's SYN-ACK (sent to us by its shim) finds it in the reverse index. Every
#   frame splice would punt is punted with punt_hop.
# - Our SYN carries the mark [253, 4, ExID]; the replay (ACK + request) the hand-off
#   [253, 14, ExID, delta, ts_off, ws_b, ws_lb] (defs.py; splice.pxi writes both, in
#   hop_mark and hop_handoff, where it builds those frames), so the shim learns the deltas
#   from the segment that gives the backend the request: no data of the backend's can leave
#   untranslated.
# - After the hand-off (the flow ESTABLISHED) the client's frames go to the backend's MAC
#   unchanged, as dsr's do (no TTL decrement, no checksum patch); the LB keeps the TCP state
#   from the client's side (its FIN/RST end the flow). A backend's frame of such a flow is a
#   repeated SYN-ACK (our replay was lost: answered again by splice_rev) or a RST (splice_rev
#   sends it on translated); anything else is drop_hop_rev.


cdef inline int hop_punt(int r) noexcept nogil:
    """splice's exit, with its punt turned into hop's (the hop handler takes it)."""
    return C_PUNT_HOP if r == C_PUNT_SPLICE else r


cdef int hop_new(Engine self, uint8_t *f, uint32_t n, Service *sv, Pkt *p,
                 int64_t now) noexcept nogil:
    """No flow yet: splice's cookie SYN-ACK, or the cookie ACK that creates the flow."""
    return hop_punt(splice_new(self, f, n, sv, p, now))


cdef int hop_fwd(Engine self, uint8_t *f, uint32_t n, Flow *e, Service *sv, uint8_t tflags,
                 int64_t now) noexcept nogil:
    """Client -> VIP: before the hand-off, splice's (the request decided, bound); after, to
    the backend's MAC unchanged (its shim translates ack, SACK and TSecr)."""
    cdef Real *r
    cdef int k
    if e.state == S_SPL_WAIT or e.state == S_SPL_CONNECTING:
        return hop_punt(splice_fwd(self, f, n, e, sv, tflags, now))
    r = &self.reals[e.real]
    k = xmit_out(self, f, n, e, r.mac if r.has_mac else NULL, False, True, tflags, now)
    if k != XMIT_CONT:
        return k
    if e.rp != NULL and tflags & TH_ACK and <int32_t>(rd32(f + 42) - e.l_isn - 1) > 0:
        free(e.rp)            # the client acks the backend's data: the hand-off took
        e.rp = NULL
    return C_HOP_FWD


cdef int hop_rev(Engine self, uint8_t *f, uint32_t n, Flow *e, Service *sv, uint8_t tflags,
                 int64_t now) noexcept nogil:
    """Backend -> client, as its shim sends it to us: the SYN-ACK (answered with the replay
    and the hand-off), a repeated one, a RST; nothing else should come."""
    if e.state == S_SPL_CONNECTING or e.state == S_SPL_WAIT or tflags & (TH_SYN | TH_RST):
        return hop_punt(splice_rev(self, f, n, e, sv, tflags, now))
    return C_DROP_HOP_REV


cdef int hop_icmp(Engine self, uint8_t *f, uint32_t n, Icmp *q, Flow *e, Service *sv,
                  int32_t real, bint fwd) noexcept nogil:
    """An ICMP error about a hop flow: splice's (from the client's side, to the backend's MAC
    with the quoted seq in the backend's space; its addresses are the VIP's already)."""
    return splice_icmp(self, f, n, q, e, sv, real, fwd)


# ---- the mode's row of XMIT (types.pxi) ---------------------------------------------------
XMIT[MODE_HOP].new_flow = hop_new
XMIT[MODE_HOP].fwd = hop_fwd
XMIT[MODE_HOP].rev = hop_rev
XMIT[MODE_HOP].icmp = hop_icmp
XMIT[MODE_HOP].l4_at_34 = 1
XMIT[MODE_HOP].fwd_lines = 2              # rp and l_isn are in line 1
