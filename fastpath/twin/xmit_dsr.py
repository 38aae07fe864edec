"""xmit_dsr: the dsr mode's per-packet routine (IPVS's ip_vs_dr_xmit). Twin of
fastpath/xmit_dsr.pxi.

When it is used: backends on the LB's layer 2 that hold the VIP on lo and answer the client
directly; the most throughput for large responses. The LB sees the client side only.

Invariants:
- The frame is sent to the backend's MAC with nothing else changed (no TTL decrement, no
  checksum patch); the backend needs its MAC resolved.
- No reverse path: a dsr flow is never in the reverse index.
"""
from .. import defs
from ..defs import C, XMIT_CONT
from .flowtable import flow_account, new_flow_default
from .serve import xmit_out
from .types import XMIT, Xmit


def dsr_fwd(self, f, n, e, sv, tflags, now):
    r = self.reals[e.real]
    k = xmit_out(self, f, n, e, r.mac, False, True, tflags, now)
    if k != XMIT_CONT:
        return k
    return C["dsr_fwd"]


def dsr_icmp(self, f, n, q, e, sv, real, fwd):
    """An ICMP error from the client side about a dsr flow (icmp.py): to the backend's MAC,
    untouched, as the flow's frames go (the backend holds the VIP it is addressed to)."""
    r = self.reals[real]
    if r.mac is None:
        return C["drop_no_neigh"]
    f[0:6] = r.mac
    f[6:12] = self.local_mac
    return C["dsr_icmp_fwd"]


def dsr_frag(self, f, n, e, fwd, now):
    """A later fragment of a dsr flow (frag.py): to the backend's MAC, as the first went."""
    r = self.reals[e.real]
    if r.mac is None:
        return C["drop_no_neigh"]
    f[0:6] = r.mac
    f[6:12] = self.local_mac
    flow_account(self, e, n, True, now)
    return C["dsr_frag_fwd"]


# ---- the mode's row of XMIT (types.py) ----------------------------------------------------
XMIT[defs.MODE_DSR] = Xmit(new_flow_default, dsr_fwd, None, dsr_icmp, dsr_frag)
