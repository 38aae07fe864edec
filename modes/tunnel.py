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
- a GSO superframe (a TAP with vnet offload hands the LB up to 64 KiB) cannot be encapsulated
  whole: the kernel's TAP offers no UDP-tunnel segmentation here, so the fast path punts it
  and this module's handler cuts it into segments that fit and sends each through the
  engine again, which encapsulates them (counted: tunnel.segmented). Uploads through a
  tunnel VIP pay Python for that; the client side of a download is ACKs, which never are.
Maglev by default: a restarted or second LB sends a flow to the same backend. Health probes
go along the VIP path: lbd's kernel sends them in VXLAN with the VIP's VNI to the backend's
address (lb/health.py), so a backend whose VXLAN device or VIP is gone is taken down.
"""
import dataclasses
import struct

from fastpath import Batch, defs
from fastpath.inet import checksum

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
    """The tunnel's punt handler: a TCP superframe (GSO) for a tunnel VIP, cut into segments
    that fit the path MTU after encapsulation, each with full checksums, and sent through the
    engine again, which encapsulates them. Anything that is not a TCP superframe it can cut
    is dropped and counted (bad_frame)."""
    reason = defs.C["punt_tunnel_gso"]

    def __init__(self, engine):
        self.engine = engine
        self.c = {"superframes": 0, "segmented": 0, "bad_frame": 0, "not_sent": 0}

    def counters(self):
        return dict(self.c)

    def tick(self, now):
        return []

    def handle(self, frame, now):
        segs = segment_tcp(frame, self.engine.tunnel_mss(frame))
        if segs is None:
            self.c["bad_frame"] += 1
            return []
        self.c["superframes"] += 1
        out = []
        for i in range(0, len(segs), 256):
            part = segs[i:i + 256]
            b = Batch(len(part), snap=max(len(s) for s in part) + 128)
            b.load(part)
            self.engine.process(b, now)
            for v, _reason, f in b.results():
                if v == defs.V_TX:
                    out.append(f)
                else:
                    self.c["not_sent"] += 1
        self.c["segmented"] += len(out)
        return out


def segment_tcp(frame, mss):
    """An Ethernet/IPv4/TCP frame -> [frames] of at most `mss` payload bytes each, with the
    IP id counted up, FIN/PSH on the last, CWR on the first only, and full IP and TCP
    checksums (RFC 1122 segmentation as the kernel's GSO does it). None if it is not one."""
    if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6 or mss < 1:
        return None
    ihl = (frame[14] & 15) * 4
    tot = struct.unpack("!H", frame[16:18])[0]
    t = 14 + ihl
    if ihl < 20 or t + 20 > len(frame):
        return None
    doff = (frame[t + 12] >> 4) * 4
    # a superframe's IP total length may be 0 or wrong (the kernel does not keep it): the
    # frame's own length is what counts
    end = len(frame)
    if tot and 14 + tot <= end and 14 + tot >= t + doff:
        end = 14 + tot
    if doff < 20 or t + doff > end:
        return None
    head_ip = bytearray(frame[14:t])
    head_tcp = bytearray(frame[t:t + doff])
    payload = frame[t + doff:end]
    ident = struct.unpack("!H", frame[18:20])[0]
    seq = struct.unpack("!I", frame[t + 4:t + 8])[0]
    flags = frame[t + 13]
    src, dst = frame[26:30], frame[30:34]
    out = []
    n = max(1, -(-len(payload) // mss))
    for k in range(n):
        chunk = payload[k * mss:(k + 1) * mss]
        ip = bytearray(head_ip)
        struct.pack_into("!HH", ip, 2, ihl + doff + len(chunk), (ident + k) & 0xFFFF)
        ip[10:12] = b"\0\0"
        struct.pack_into("!H", ip, 10, checksum(ip))
        tcp = bytearray(head_tcp)
        struct.pack_into("!I", tcp, 4, (seq + k * mss) & 0xFFFFFFFF)
        f = flags
        if k != n - 1:
            f &= ~0x09                  # FIN and PSH only on the last segment
        if k:
            f &= ~0x80                  # CWR only on the first
        tcp[13] = f
        tcp[16:18] = b"\0\0"
        pseudo = src + dst + struct.pack("!BBH", 0, 6, doff + len(chunk))
        struct.pack_into("!H", tcp, 16, checksum(pseudo + bytes(tcp) + chunk))
        out.append(frame[:14] + bytes(ip) + bytes(tcp) + chunk)
    return out
