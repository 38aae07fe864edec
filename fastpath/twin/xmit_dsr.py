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
from .flowtable import new_flow_default
from .serve import xmit_out
from .types import XMIT, Xmit


def dsr_fwd(self, f, n, e, sv, tflags, now):
    r = self.reals[e.real]
    k = xmit_out(self, f, n, e, r.mac, False, True, tflags, now)
    if k != XMIT_CONT:
        return k
    return C["dsr_fwd"]


# ---- the mode's row of XMIT (types.py) ----------------------------------------------------
XMIT[defs.MODE_DSR] = Xmit(new_flow_default, dsr_fwd, None)
