"""tunnel: direct server return across layer 3, the client's frame carried in VXLAN.

Used when the backends are not on the LB's layer-2 segment (another subnet, another site)
but should still answer the client directly, as dsr backends do (the seed's "TCP
tunnelling"; IPVS's ip_vs_tunnel_xmit, with VXLAN since this kernel has no IPIP or GRE).
Each client frame for the VIP leaves inside

    Ethernet (LB -> gateway) | IPv4 LB -> backend | UDP sport(flow hash) -> 4789 | VXLAN VNI
      | the client's frame: Ethernet rewritten to LB -> VXLAN_INNER_MAC, IP and TCP untouched

routed through the LB's gateway like any IP packet. The backend decapsulates with a kernel
VXLAN device (VNI, dstport 4789, MAC VXLAN_INNER_MAC), holds the VIP on lo, and answers the
client through its own router (`lb-lab doctor NODE --mode tunnel` checks it all). So:
- the backend port must be the VIP port (nothing rewrites it): refused at configuration;
- the outer UDP source port comes from the flow's hash, so ECMP and RSS spread flows;
- the outer UDP checksum is 0 (RFC 7348 for IPv4); a partial inner checksum stays partial
  (its offset moves with the headers, the kernel completes it on the way out);
- a frame whose encapsulation would exceed the path MTU (`mtu`, the IP MTU towards the
  backends) is answered as a router answers it: DF set -> ICMP fragmentation needed with
  the MTU left after the 50 bytes of VXLAN, so the client's PMTU discovery shrinks its
  segments; DF clear -> dropped and counted (fragments: a later issue);
- a GSO superframe (a TAP with vnet offload hands the LB up to 64 KiB) leaves whole where the
  TAP takes the long vnet header (the 6.18 kernel here does; lb/io.py): the fast path
  encapsulates it like any frame and marks it UDP-tunnel GSO with a segment size that fits
  `mtu`, and the kernel cuts it (counter tunnel_gso_fwd). Where it cannot (a plain 10-byte
  header, a frame too big to grow by 50 bytes within 64 KiB), the fast path punts it and
  this module's handler has the engine cut it (in C) into segments that fit, then processes
  them, which encapsulates them (counted: tunnel.superframes, tunnel.segmented); Python's
  cost is per superframe. Either way no segment exceeds `mtu` and no ICMP is sent for a
  superframe: the client's MSS is the client's, the backend sees smaller segments. The
  client side of a download is ACKs, never cut.
Maglev by default: a restarted or second LB sends a flow to the same backend. Health probes
go along the VIP path: lbd's kernel sends them in VXLAN with the VIP's VNI to the backend's
address (lb/health.py), so a backend whose VXLAN device or VIP is gone is taken down.
"""
import dataclasses

import numpy as np

import fastpath
from fastpath import Batch, defs

from .base import LBError, Mode, SetArg, SpecPart, check_same_port

DEFAULT_VNI = 4242              # one VNI for the LB's tunnels, unless a VIP says otherwise
DEFAULT_MTU = 1500              # the IP MTU of the path from the LB to the backends
MIN_MTU = 576
MAX_VNI = (1 << 24) - 1
VXLAN_PORT = defs.VXLAN_PORT
VXLAN_INNER_MAC = defs.VXLAN_INNER_MAC.to_bytes(6, "big")
INNER_MAC_TEXT = ":".join("%02x" % b for b in VXLAN_INNER_MAC)


@dataclasses.dataclass(frozen=True)
class TunnelOptions:
    vni: int = DEFAULT_VNI
    mtu: int = DEFAULT_MTU


def check_vni(v, fld="tunnel_vni"):
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_VNI:
        raise LBError(fld, "must be a VXLAN network identifier 1..%d, got %r" % (MAX_VNI, v))
    return v


def check_mtu(v, fld="tunnel_mtu"):
    if isinstance(v, bool) or not isinstance(v, int) or not MIN_MTU <= v <= 9000:
        raise LBError(fld, "must be an IP MTU %d..9000 (bytes), got %r" % (MIN_MTU, v))
    return v


def _int_word(fld, check):
    def parse(text):
        try:
            return check(int(text), fld)
        except ValueError:
            raise LBError(fld, "not a number: %r" % (text,)) from None
    return parse


class Tunnel(Mode):
    name = "tunnel"
    default_scheduler = "maglev"
    default_on_backend_down = "keep"     # as dsr: the LB cannot tell a live flow from a dead one
    # along the VIP path: the probe to VIP:port goes in VXLAN (this VIP's VNI) to the
    # backend's address, as the data path's frames do, so it proves the VXLAN device, the
    # VIP on lo and the server together (lb/health.py, probe_vni below)
    probe_via_vip = True
    reverse_path = False
    toml_keys = ("tunnel",)
    set_args = (SetArg("tunnel_vni", "VXLAN network identifier (1..%d)" % MAX_VNI,
                       _int_word("tunnel_vni", check_vni)),
                SetArg("tunnel_mtu", "IP MTU towards the backends (%d..9000)" % MIN_MTU,
                       _int_word("tunnel_mtu", check_mtu)))

    def validate(self, vip_port, proto, backends):
        check_same_port(self.name, vip_port, backends)

    def default_options(self):
        return TunnelOptions()

    def parse_options(self, raw, path, backends):
        t = raw.get("tunnel", {})
        where = path + ".tunnel" if path else "tunnel"
        if not isinstance(t, dict):
            raise LBError(where, "must be a table ([vip.tunnel])")
        for k in t:
            if k not in ("vni", "mtu"):
                raise LBError(where + "." + k, "unknown key (known: vni, mtu)")
        return TunnelOptions(check_vni(t.get("vni", DEFAULT_VNI), where + ".vni"),
                             check_mtu(t.get("mtu", DEFAULT_MTU), where + ".mtu"))

    def dump_options(self, options):
        return {"tunnel": {"vni": options.vni, "mtu": options.mtu}}

    def set_options(self, options, args):
        vni, mtu = args.get("tunnel_vni"), args.get("tunnel_mtu")
        return TunnelOptions(options.vni if vni is None else check_vni(vni),
                             options.mtu if mtu is None else check_mtu(mtu))

    def spec(self, vip, members, build):
        import fastpath
        o = vip.options
        return SpecPart(tunnel=fastpath.TunnelSpec(o.vni, o.mtu))

    def view(self, vip):
        o = vip.options
        return {"tunnel": {"vni": o.vni, "mtu": o.mtu, "port": VXLAN_PORT,
                           "inner_mac": INNER_MAC_TEXT},
                "summary": "VXLAN VNI %d to UDP %d, path MTU %d" % (o.vni, VXLAN_PORT, o.mtu)}

    def probe_vni(self, options):
        return options.vni

    def punt_handler(self, engine, ctx, mac):
        return Segmenter(engine)


MODE = Tunnel()


class Segmenter:
    """The tunnel's punt handler: a TCP superframe (GSO) for a tunnel VIP, cut by the engine
    (Engine.tunnel_segment, in C) into segments that fit the path MTU after encapsulation,
    each with full checksums, into a batch that the engine then processes, which
    encapsulates them. What it returns is that batch (its V_TX rows are sent in one
    tx_burst; it is valid until the next handle()), so Python's part is per superframe, not
    per segment. Anything that is not a TCP superframe the engine can cut is dropped and
    counted (bad_frame).

    Its second punt, punt_tunnel_frag: a frame without DF that the fast path encapsulated
    though it exceeds the path MTU (a fragment, or a datagram its sender lets be fragmented),
    with an outer IP id of its own. It is cut into outer IP fragments (fastpath.ip_fragment,
    in C) of at most the VIP's mtu, as a router would; the backend's kernel reassembles the
    outer packet before VXLAN sees it (counted: fragmented, fragments)."""
    reasons = (defs.C["punt_tunnel_gso"], defs.C["punt_tunnel_frag"])
    ROWS = 160                  # 64 KiB at the smallest MSS (MTU 576): one batch

    def __init__(self, engine):
        self.engine = engine
        self.batches = {}       # snap -> Batch, made once
        self.c = {"superframes": 0, "segmented": 0, "bad_frame": 0, "not_sent": 0,
                  "fragmented": 0, "fragments": 0}

    def counters(self):
        return dict(self.c)

    def tick(self, now):
        return []

    def _batch(self, mss):
        # superframes come only with vnet headers: the batch has the device's, zeroed
        hdr = defs.VNET_HDR_LEN
        snap = -(-(hdr + 14 + 20 + 60 + mss + defs.VXLAN_OVERHEAD) // 2048) * 2048
        b = self.batches.get(snap)
        if b is None:
            b = self.batches[snap] = Batch(self.ROWS, snap=snap, hdr=hdr)
        return b

    def _run(self, b, n, now):
        self.engine.process(b, now)
        sent = int(np.count_nonzero(b.verdict[:n] == defs.V_TX))
        self.c["segmented"] += sent
        self.c["not_sent"] += n - sent

    def _fragment(self, frame):
        mtu = self.engine.tunnel_frag_mtu(frame)
        b = self._batch(mtu) if mtu else None
        n = fastpath.ip_fragment(frame, mtu, b) if b is not None else 0
        if n == 0:
            self.c["bad_frame"] += 1
            return []
        b.verdict[:n] = defs.V_TX
        self.c["fragmented"] += 1
        self.c["fragments"] += n
        return b

    def handle(self, frame, now, reason=defs.C["punt_tunnel_gso"]):
        if reason == defs.C["punt_tunnel_frag"]:
            return self._fragment(frame)
        mss = self.engine.tunnel_mss(frame)
        b = self._batch(mss) if mss else None
        n, total = self.engine.tunnel_segment(frame, b, 0) if b is not None else (0, 0)
        if total == 0:
            self.c["bad_frame"] += 1
            return []
        self.c["superframes"] += 1
        self._run(b, n, now)
        if n == total:
            return b
        out = [b.frame(i) for i in range(n) if b.verdict[i] == defs.V_TX]
        while n < total:                 # more segments than rows (a bigger frame than GSO's)
            k, _ = self.engine.tunnel_segment(frame, b, n)
            self._run(b, k, now)
            out += [b.frame(i) for i in range(k) if b.verdict[i] == defs.V_TX]
            n += k
        return out
