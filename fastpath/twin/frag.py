"""frag: IPv4 fragments of balanced flows, followed, not reassembled. Twin of
fastpath/frag.pxi, whose header says when it is used, why follow, and the invariants.
"""
from .. import defs
from ..defs import C
from .inet import mix64, rd16, rd32
from .types import XMIT

SLOTS = defs.FRAG_SLOTS


def frag_hash(src, dst, ident, proto):
    return mix64(((src << 32) | dst) ^ ((ident << 8) | proto))


def frag_note(self, src, dst, ident, proto, idx, fwd, now):
    """A first fragment (src, dst, ident, proto as it came in) of flow idx was sent: note its
    key for the fragments that follow."""
    h = frag_hash(src, dst, ident, proto)
    best = h & (SLOTS - 1)
    for k in range(defs.FRAG_PROBE):
        j = (h + k) & (SLOTS - 1)
        g = self.frags[j]
        if g.used and (g.src, g.dst, g.ident, g.proto) == (src, dst, ident, proto):
            best = j                                  # the same datagram again
            break
        if not g.used or now - g.at > defs.FRAG_TIMEOUT_MS:
            best = j
            break
        if g.at < self.frags[best].at:
            best = j
    else:
        self.ctr[C["frag_evicted"]] += 1
    g = self.frags[best]
    g.used = 1
    g.src, g.dst, g.ident, g.proto = src, dst, ident, proto
    g.fwd = 1 if fwd else 0
    g.idx = idx
    g.created = self.fl[idx].created
    g.at = now
    self.ctr[C["frag_first"]] += 1


def frag_entry(self, src, dst, ident, proto):
    """The entry of this datagram whose flow is still the one noted, or None (no age check)."""
    h = frag_hash(src, dst, ident, proto)
    for k in range(defs.FRAG_PROBE):
        g = self.frags[(h + k) & (SLOTS - 1)]
        if g.used and (g.src, g.dst, g.ident, g.proto) == (src, dst, ident, proto):
            e = self.fl[g.idx]
            if not e.used or e.created != g.created:
                return None                           # the flow is gone
            return g
    return None


def frag_later(self, f, n, now):
    """A later fragment: sent after its first, by the flow's mode, or dropped (counted)."""
    g = frag_entry(self, rd32(f, 26), rd32(f, 30), rd16(f, 18), f[23])
    if g is None or now - g.at > defs.FRAG_TIMEOUT_MS:
        return C["drop_frag_no_first"]
    e = self.fl[g.idx]
    if XMIT[e.mode].frag is None:
        return C["drop_ip_fragment"]
    return XMIT[e.mode].frag(self, f, n, e, bool(g.fwd), now)
