"""xmit_nat: the nat mode's per-packet routines (IPVS's ip_vs_nat_xmit). Twin of
fastpath/xmit_nat.pxi.

When it is used: a VIP whose backends answer through the LB (their default route or a route
for the clients points at it). The client's address is kept; the LB rewrites the destination
on the way in and the source on the way back, so it sees both directions.

Invariants:
- Forward: client -> VIP becomes client -> backend (address, port, TTL - 1, checksums
  patched), sent to the backend's MAC. Reverse: backend -> client becomes VIP -> client, sent
  to the gateway's MAC. Both need the next hop's MAC and a TTL above 1.
- TCP flows are tracked both ways; UDP flows stay S_UDP.
"""
from .. import defs
from ..defs import C, XMIT_CONT
from .flowtable import flow_account, new_flow_default
from .icmp import icmp_translate
from .inet import ip_route, rewrite
from .serve import xmit_out
from .types import XMIT, Xmit


def nat_fwd(self, f, n, e, sv, tflags, now):
    r = self.reals[e.real]
    k = xmit_out(self, f, n, e, r.mac, True, True, tflags, now)
    if k != XMIT_CONT:
        return k
    rewrite(f, 30, 36, e.vip, e.vport, e.rip, e.rport, e.proto, self.partial)
    return C["nat_fwd"]


def nat_rev(self, f, n, e, sv, tflags, now):
    k = xmit_out(self, f, n, e, self.gw_mac, True, False, tflags, now)
    if k != XMIT_CONT:
        return k
    rewrite(f, 26, 34, e.rip, e.rport, e.vip, e.vport, e.proto, self.partial)
    return C["nat_rev"]


def nat_icmp(self, f, n, q, e, sv, real, fwd):
    """An ICMP error about a nat flow (icmp.py), translated as the flow's packets are: from
    the client side VIP -> the backend (e None: the one `real` the hash chose), from the
    server side the backend -> VIP, to the gateway."""
    r = self.reals[real]
    if f[22] <= 1:
        return C["drop_ttl"]
    if fwd:
        if r.mac is None:
            return C["drop_no_neigh"]
        f[0:6] = r.mac
        f[6:12] = self.local_mac
        icmp_translate(f, q, True, q.src, q.sport, r.ip if e is None else e.rip,
                       r.port if e is None else e.rport, 0, 0)
        self.newlen = n                 # checksums full: a vnet header is cleared
        return C["nat_icmp_fwd"]
    if self.gw_mac is None:
        return C["drop_no_neigh"]
    f[0:6] = self.gw_mac
    f[6:12] = self.local_mac
    icmp_translate(f, q, False, e.rip, e.rport, e.vip, e.vport, 0, 0)
    self.newlen = n
    return C["nat_icmp_rev"]


def nat_frag(self, f, n, e, fwd, now):
    """A later fragment of a nat flow (frag.py): only its IP header is translated (the L4
    header and its checksum were in the first)."""
    r = self.reals[e.real]
    if fwd and r.mac is None or not fwd and self.gw_mac is None:
        return C["drop_no_neigh"]
    if f[22] <= 1:
        return C["drop_ttl"]
    f[0:6] = r.mac if fwd else self.gw_mac
    f[6:12] = self.local_mac
    if fwd:
        ip_route(f, 30, e.vip, e.rip)
    else:
        ip_route(f, 26, e.rip, e.vip)
    flow_account(self, e, n, fwd, now)
    return C["nat_frag_fwd"] if fwd else C["nat_frag_rev"]


# ---- the mode's row of XMIT (types.py) ----------------------------------------------------
XMIT[defs.MODE_NAT] = Xmit(new_flow_default, nat_fwd, nat_rev, nat_icmp, nat_frag, True, True)
