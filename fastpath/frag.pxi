# frag: IPv4 fragments of balanced flows, followed, not reassembled (the nfqlb approach).
# Twin: twin/frag.py.
#
# When it is used: a datagram bigger than a link's MTU (UDP of 4000 bytes, DNS over UDP with
# EDNS, a tunnel inside UDP) arrives as fragments; only the first carries the ports, so only
# the first can be looked up and scheduled like any packet.
#
# Why follow rather than reassemble: the LB never needs the payload, and holding fragments
# costs memory per datagram and latency per packet; following costs one small entry per
# datagram. The receiver reassembles, as it would without us.
#
# Invariants:
# - The first fragment (offset 0, MF) goes through process_frame like any packet (its UDP
#   length may exceed the fragment: the rest follows). When it is sent (or punted, as a
#   tunnel frame to be cut into outer fragments is), its
#   (src, dst, IP id, proto) is noted in the fragment table with the flow and the direction.
# - A later fragment (offset > 0) is found by that key and sent by the mode's frag routine
#   (XMIT[mode].frag: the IP header's translation only, or the frame as is); the flow's time
#   and counters move, its TCP state does not (no TCP header here).
# - A later fragment with no entry (its first not seen yet, lost, timed out after
#   FRAG_TIMEOUT_MS, or overwritten) is dropped: drop_frag_no_first. Nothing is held back
#   to wait for a first fragment that comes late; the sender's datagram is lost, as on a
#   path that drops fragments, and is counted.
# - The table has FRAG_SLOTS entries, a key probes FRAG_PROBE of them; a new key takes a
#   free or timed-out one, else the oldest (frag_evicted). Bounded memory, no allocation.
# - A mode without a frag routine (splice: TCP, which does not fragment) drops fragments
#   as before: drop_ip_fragment.


cdef inline uint64_t frag_hash(uint32_t src, uint32_t dst, uint16_t ident,
                               uint8_t proto) noexcept nogil:
    return _mix64(((<uint64_t>src << 32) | dst) ^ ((<uint64_t>ident << 8) | proto))


cdef void frag_note(Engine self, uint32_t src, uint32_t dst, uint16_t ident, uint8_t proto,
                    int32_t idx, bint fwd, int64_t now) noexcept nogil:
    """A first fragment (src, dst, ident, proto as it came in) of flow idx was sent: note its
    key for the fragments that follow."""
    cdef uint64_t h = frag_hash(src, dst, ident, proto)
    cdef uint32_t k, j, best = <uint32_t>(h & (FRAG_SLOTS - 1))
    cdef Frag *g
    for k in range(FRAG_PROBE):
        j = <uint32_t>((h + k) & (FRAG_SLOTS - 1))
        g = &self.frags[j]
        if g.used and g.src == src and g.dst == dst and g.ident == ident and g.proto == proto:
            best = j                                  # the same datagram again
            break
        if not g.used or now - g.at > FRAG_TIMEOUT_MS:
            best = j
            break
        if g.at < self.frags[best].at:
            best = j
    else:
        self.ctr[C_FRAG_EVICTED] += 1
    g = &self.frags[best]
    g.used = 1
    g.src, g.dst, g.ident, g.proto = src, dst, ident, proto
    g.fwd = fwd
    g.idx = idx
    g.created = self.fl[idx].created
    g.at = now
    self.ctr[C_FRAG_FIRST] += 1


cdef Frag *frag_entry(Engine self, uint32_t src, uint32_t dst, uint16_t ident,
                     uint8_t proto) noexcept nogil:
    """The entry of this datagram whose flow is still the one noted, or NULL (no age check)."""
    cdef uint64_t h = frag_hash(src, dst, ident, proto)
    cdef uint32_t k
    cdef Frag *g
    cdef Flow *e
    for k in range(FRAG_PROBE):
        g = &self.frags[(h + k) & (FRAG_SLOTS - 1)]
        if g.used and g.src == src and g.dst == dst and g.ident == ident and g.proto == proto:
            e = &self.fl[g.idx]
            if not e.used or e.created != g.created:
                return NULL                           # the flow is gone
            return g
    return NULL


cdef int frag_later(Engine self, uint8_t *f, uint32_t n, int64_t now) noexcept nogil:
    """A later fragment: sent after its first, by the flow's mode, or dropped (counted)."""
    cdef Frag *g = frag_entry(self, rd32(f + 26), rd32(f + 30), rd16(f + 18), f[23])
    cdef Flow *e
    if g == NULL or now - g.at > FRAG_TIMEOUT_MS:
        return C_DROP_FRAG_NO_FIRST
    e = &self.fl[g.idx]
    if XMIT[e.mode].frag == NULL:
        return C_DROP_IP_FRAGMENT
    return XMIT[e.mode].frag(self, f, n, e, g.fwd, now)
