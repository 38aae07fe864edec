"""xmit_hop: the hop mode's routines (Resonate's "connection hopping"). Twin of
fastpath/xmit_hop.pxi (its header says when the mode is used and what holds); modes/hop/ is
the Python side and the backend's shim.

Invariants:
- Until the hand-off a hop flow is a splice flow (splice.py), addressed to the VIP; every
  frame splice would punt is punted with punt_hop.
- After it, the client's frames go to the backend's MAC unchanged, as dsr's do; a backend's
  frame is a repeated SYN-ACK or a RST (splice_rev), else drop_hop_rev.
"""
from .. import defs
from ..defs import C, TH_ACK, TH_RST, TH_SYN, XMIT_CONT
from .splice import splice_fwd, splice_icmp, splice_new, splice_rev
from .inet import rd32
from .serve import xmit_out
from .types import XMIT, Xmit


def hop_punt(r):
    """splice's exit, with its punt turned into hop's (the hop handler takes it)."""
    return C["punt_hop"] if r == C["punt_splice"] else r


def hop_new(self, f, n, sv, p, now):
    return hop_punt(splice_new(self, f, n, sv, p, now))


def hop_fwd(self, f, n, e, sv, tflags, now):
    if e.state in (defs.S_SPL_WAIT, defs.S_SPL_CONNECTING):
        return hop_punt(splice_fwd(self, f, n, e, sv, tflags, now))
    r = self.reals[e.real]
    k = xmit_out(self, f, n, e, r.mac, False, True, tflags, now)
    if k != XMIT_CONT:
        return k
    if (e.rp is not None and tflags & TH_ACK
            and 0 < ((rd32(f, 42) - e.l_isn - 1) & 0xFFFFFFFF) < 1 << 31):
        e.rp = None           # the client acks the backend's data: the hand-off took
    return C["hop_fwd"]


def hop_rev(self, f, n, e, sv, tflags, now):
    if e.state in (defs.S_SPL_CONNECTING, defs.S_SPL_WAIT) or tflags & (TH_SYN | TH_RST):
        return hop_punt(splice_rev(self, f, n, e, sv, tflags, now))
    return C["drop_hop_rev"]


def hop_icmp(self, f, n, q, e, sv, real, fwd):
    return splice_icmp(self, f, n, q, e, sv, real, fwd)


# ---- the mode's row of XMIT (types.py) ----------------------------------------------------
XMIT[defs.MODE_HOP] = Xmit(hop_new, hop_fwd, hop_rev, hop_icmp, None, True)
