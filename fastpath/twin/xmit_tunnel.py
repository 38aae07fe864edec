"""xmit_tunnel: the tunnel mode's per-packet routines (IPVS's ip_vs_tunnel_xmit, in VXLAN).
Twin of fastpath/xmit_tunnel.pxi, whose header states the invariants.

When it is used: backends across layer 3 (behind a router) that hold the VIP on lo and answer
the client directly; the LB sees the client side only, as with dsr, but needs no shared
segment. modes/tunnel.py is the Python side (options, GSO superframes).

f is the frame as a bytearray the routine may grow (the engine's rowcap bounds it, as the
batch row bounds the compiled one); the vnet header is the engine's vnet (a bytearray copy of
the row's header, or None), written back by the burst when keep_vnet is set.
"""
import numpy as np

from .. import defs
from ..defs import C, XMIT_CONT
from .flowtable import flow_account, new_flow_default, service_find
from .frag import frag_entry
from .icmp import icmp_frag_needed, outer_ip
from .inet import fold, rd16, rd32, tcp_checksum, wr16, wr32
from .serve import xmit_out
from .types import XMIT, Xmit

OVERHEAD = defs.VXLAN_OVERHEAD


def tunnel_inner_mac():
    return defs.VXLAN_INNER_MAC.to_bytes(6, "big")


TUNNEL_INNER_MAC = tunnel_inner_mac()


def tunnel_gso_whole(self, f, tot, sv):
    """May this superframe leave whole, in UDP-tunnel GSO? (The kernel's own checks: a TCP
    type, a partial checksum; ours: the outer length fits, a segment fits sv.mtu.)"""
    v = self.vnet
    return bool(self.vnet_tnl and (v[1] & ~defs.VNET_GSO_ECN & 0xFF) == defs.VNET_GSO_TCPV4
                and f[14] == 0x45
                and v[0] & defs.VNET_F_NEEDS_CSUM and f[23] == defs.PROTO_TCP
                and 36 + 14 + tot <= 0xFFFF and 14 + tot + OVERHEAD <= self.rowcap
                and sv.mtu > OVERHEAD + 20 + (f[46] >> 4) * 4)


def tunnel_gso_header(self, f, sv):
    """The long vnet header of a superframe encapsulated by tunnel_fwd (csum_start moved
    already): UDP-tunnel GSO, segments no bigger than sv.mtu allows."""
    v = self.vnet
    doff = (f[OVERHEAD + 46] >> 4) * 4
    mss = sv.mtu - OVERHEAD - 20 - doff
    gso = v[4] | (v[5] << 8)
    hl = 14 + OVERHEAD + 20 + doff
    if gso == 0 or gso > mss:
        gso = mss
    v[1] |= defs.VNET_GSO_UDP_TUNNEL_IPV4
    v[2], v[3] = hl & 0xFF, hl >> 8
    v[4], v[5] = gso & 0xFF, gso >> 8
    v[20], v[21] = 34, 0                    # outer_th_offset: the outer UDP header
    v[22], v[23] = 14 + OVERHEAD, 0         # inner_nh_offset: the inner IP header


def tunnel_encap(self, f, tot, rip, hf, vni, big):
    """The addressed inner frame f[:14 + tot] moved behind outer Ethernet (to the gateway),
    IP (us -> rip), UDP (source port from the flow hash hf) and VXLAN (vni) headers. big: the
    packet will be cut into fragments, so its IP id is the engine's next (outer_id)."""
    h = hf ^ (hf >> 32)
    f[:] = bytes(OVERHEAD) + bytes(f[:14 + tot])
    f[0:6] = self.gw_mac
    f[6:12] = self.local_mac
    if big:
        self.outer_id = (self.outer_id + 1) & 0xFFFF
    outer_ip(self, f, 36 + 14 + tot, defs.PROTO_UDP, rip, self.outer_id if big else 0)
    wr16(f, 34, defs.VXLAN_SPORT_MIN + (h & 0x3FFF))
    wr16(f, 36, defs.VXLAN_PORT)
    wr16(f, 38, 16 + 14 + tot)
    wr16(f, 40, 0)
    wr32(f, 42, 0x08000000)             # flags: the VNI is valid
    wr32(f, 46, (vni << 8) & 0xFFFFFFFF)


def tunnel_as_is(self, f, tot, rip, hf, vni, big):
    """A frame whose flow's TCP state need not see it (an ICMP error, a later fragment) in
    VXLAN to rip, its own Ethernet addressed to the VXLAN device: 0, or the counter of why
    not (the row has no room)."""
    if 14 + tot + OVERHEAD > self.rowcap:
        return C["drop_tunnel_no_room"]
    f[0:6] = TUNNEL_INNER_MAC
    f[6:12] = self.local_mac
    tunnel_encap(self, f, tot, rip, hf, vni, big)
    self.newlen = 14 + tot + OVERHEAD
    return 0


def tunnel_fwd(self, f, n, e, sv, tflags, now):
    tot = rd16(f, 16)
    whole = big = False
    if self.gw_mac is None:
        return C["drop_no_neigh"]
    vnet = self.vnet
    if vnet is not None and vnet[1] != 0:
        if not tunnel_gso_whole(self, f, tot, sv):
            return C["punt_tunnel_gso"]
        whole = True
    elif tot + OVERHEAD > sv.mtu:
        if f[20] & 0x40:
            return tunnel_frag_needed(self, f, sv)
        if self.partial:
            return C["drop_tunnel_too_big"]  # (outer fragments cannot carry a partial checksum)
        big = True                        # encapsulated, then cut by modes/tunnel.py
    if 14 + tot + OVERHEAD > self.rowcap:
        return C["drop_tunnel_no_room"]
    k = xmit_out(self, f, n, e, TUNNEL_INNER_MAC, False, True, tflags, now)
    if k != XMIT_CONT:
        return k
    tunnel_encap(self, f, tot, e.rip, e.hf, sv.vni, big)
    if vnet is not None and vnet[0] & defs.VNET_F_NEEDS_CSUM:
        cs = (vnet[6] | (vnet[7] << 8)) + OVERHEAD
        vnet[6], vnet[7] = cs & 0xFF, (cs >> 8) & 0xFF
        self.keep_vnet = True
    self.newlen = 14 + tot + OVERHEAD
    if whole:
        tunnel_gso_header(self, f, sv)
        return C["tunnel_gso_fwd"]
    if big:
        return C["punt_tunnel_frag"]
    return C["tunnel_fwd"]


def tunnel_frag_needed(self, f, sv):
    """Too big for the path once encapsulated, DF set: ICMP fragmentation needed to the
    client, with the MTU left after VXLAN (icmp.py's icmp_frag_needed)."""
    if self.gw_mac is None:
        return C["drop_no_neigh"]
    icmp_frag_needed(self, f, sv.mtu - OVERHEAD)
    return C["tunnel_frag_needed"]


def tunnel_icmp(self, f, n, q, e, sv, real, fwd):
    """An ICMP error from the client side about a tunnel flow (icmp.py): in VXLAN to the
    backend, untouched inside, as the flow's frames go (e None: the `real` the hash chose)."""
    tot = q.end - 14
    if self.gw_mac is None:
        return C["drop_no_neigh"]
    if tot + OVERHEAD > sv.mtu:
        return C["drop_tunnel_too_big"]   # (no error is answered with an error)
    return (tunnel_as_is(self, f, tot, self.reals[real].ip if e is None else e.rip, q.h,
                         sv.vni, False) or C["tunnel_icmp_fwd"])


def tunnel_frag(self, f, n, e, fwd, now):
    """A later fragment of a tunnel flow (frag.py): in VXLAN to the backend, as the first
    went; one that does not fit sv.mtu once encapsulated is encapsulated and punted, to be cut
    into outer fragments (punt_tunnel_frag)."""
    tot = rd16(f, 16)
    sv = service_find(self, e.vip, e.vport, e.proto)
    if self.gw_mac is None:
        return C["drop_no_neigh"]
    if sv is None or sv.mode != defs.MODE_TUNNEL:
        return C["drop_mode"]             # the VIP changed mode or went: sv.vni is unknown
    big = tot + OVERHEAD > sv.mtu
    k = tunnel_as_is(self, f, tot, e.rip, e.hf, sv.vni, big)
    if k:
        return k
    flow_account(self, e, n, True, now)
    return C["punt_tunnel_frag"] if big else C["tunnel_frag_fwd"]


# ---- the API's body (engine.py) -----------------------------------------------------------
def api_tunnel_mss(self, frame):
    b = bytes(frame)
    if len(b) < 54 or b[12:14] != b"\x08\x00" or b[23] != defs.PROTO_TCP:
        return 0
    ihl = (b[14] & 15) * 4
    if ihl < 20 or 14 + ihl + 20 > len(b):
        return 0
    doff = (b[14 + ihl + 12] >> 4) * 4
    sv = service_find(self, rd32(b, 30), rd16(b, 14 + ihl + 2), defs.PROTO_TCP)
    if sv is None or sv.mode != defs.MODE_TUNNEL or sv.mtu < OVERHEAD + ihl + doff + 1:
        return 0
    return sv.mtu - OVERHEAD - ihl - doff


def api_tunnel_segment(self, frame, batch, first):
    hdr = batch.hdr
    if not isinstance(first, int):
        raise TypeError("first must be an int, got %r" % (first,))
    if first < 0:
        raise ValueError("first must be >= 0, got %d" % first)
    b = bytes(frame)
    mss = api_tunnel_mss(self, b)
    if mss == 0 or (b[14] & 15) != 5:
        return (0, 0)
    L = len(b)
    tot = rd16(b, 16)
    doff = (b[46] >> 4) * 4
    end = L
    if tot and 14 + tot <= L and 14 + tot >= 34 + doff:
        end = 14 + tot
    if doff < 20 or 34 + doff > end:
        return (0, 0)
    hl = 34 + doff
    plen = end - hl
    total = -(-plen // mss) if plen else 1
    if batch.snap < hdr + hl + min(mss, plen) + OVERHEAD:
        raise ValueError("batch snap %d is too small for segments of %d bytes"
                         % (batch.snap, hl + mss + OVERHEAD))
    ident, seq, flags = rd16(b, 18), rd32(b, 38), b[47]
    j = 0
    for k in range(first, total):
        if j >= batch.size:
            break
        c = min(plen - k * mss, mss)
        r = bytearray(b[:hl] + b[hl + k * mss:hl + k * mss + c])
        wr16(r, 16, 20 + doff + c)
        wr16(r, 18, (ident + k) & 0xFFFF)
        wr16(r, 24, 0)
        wr16(r, 24, ~fold(sum(rd16(r, i) for i in range(14, 34, 2))) & 0xFFFF)
        wr32(r, 38, (seq + k * mss) & 0xFFFFFFFF)
        r[47] = flags
        if k != total - 1:
            r[47] &= ~(defs.TH_FIN | defs.TH_PSH) & 0xFF      # FIN and PSH only on the last
        if k:
            r[47] &= ~0x80 & 0xFF                             # CWR only on the first
        wr16(r, 50, tcp_checksum(r, 34, doff + c))
        batch.buf[j, :hdr] = 0                  # a zero vnet header: no GSO, checksums full
        batch.buf[j, hdr:hdr + len(r)] = np.frombuffer(bytes(r), np.uint8)
        batch.lens[j] = hdr + len(r)
        j += 1
    batch.n = j
    return (j, total)


def api_tunnel_frag_mtu(self, frame):
    b = bytes(frame)
    if (len(b) < OVERHEAD + 34 + 4 or b[12:14] != b"\x08\x00" or b[23] != defs.PROTO_UDP
            or rd16(b, 36) != defs.VXLAN_PORT or b[OVERHEAD + 14] != 0x45):
        return 0
    f = b[OVERHEAD:]
    if rd16(f, 20) & 0x1FFF == 0:
        sv = service_find(self, rd32(f, 30), rd16(f, 36), f[23])
    else:
        g = frag_entry(self, rd32(f, 26), rd32(f, 30), rd16(f, 18), f[23])
        if g is None:
            return 0
        e = self.fl[g.idx]
        sv = service_find(self, e.vip, e.vport, e.proto)
    if sv is None or sv.mode != defs.MODE_TUNNEL:
        return 0
    return sv.mtu


# ---- the mode's row of XMIT (types.py) ----------------------------------------------------
XMIT[defs.MODE_TUNNEL] = Xmit(new_flow_default, tunnel_fwd, None, tunnel_icmp, tunnel_frag)
