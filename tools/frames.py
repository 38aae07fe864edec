"""Frame builders and checkers for tests and benchmarks (dpkt builds, an independent sum checks).

Builders always produce correct checksums (dpkt fills a zero checksum field on serialisation);
`checksums_ok` verifies a frame with its own ones'-complement sum, independent of both dpkt
and the fast path, so that incremental updates are held against a full recompute.
"""
import ipaddress
import struct

import dpkt

from fastpath.defs import TH_ACK, TH_FIN, TH_PSH as TH_PUSH, TH_RST, TH_SYN  # noqa: F401 (F.TH_* in tests)


def ip2int(s):
    return int(ipaddress.IPv4Address(s))


def int2ip(i):
    return str(ipaddress.IPv4Address(i))


def mac(s):
    return bytes.fromhex(s.replace(":", ""))


def _ip(src, dst, proto, payload, ttl=64, ident=1, opts=b""):
    ip = dpkt.ip.IP(src=ipaddress.IPv4Address(src).packed, dst=ipaddress.IPv4Address(dst).packed,
                    p=proto, ttl=ttl, id=ident, data=payload)
    if opts:
        ip.opts = opts
        ip.hl = 5 + len(opts) // 4
    ip.len = ip.hl * 4 + len(bytes(payload))
    return ip


def eth(dst, src, payload, etype=0x0800):
    return bytes(dpkt.ethernet.Ethernet(dst=dst, src=src, type=etype, data=payload))


def tcp(smac, dmac, src, dst, sport, dport, flags=TH_ACK, seq=1000, ack=0, data=b"", ttl=64,
        win=65535, opts=b"", ident=1, df=False, ip_opts=b""):
    """opts: TCP options; ip_opts: IP options (a multiple of 4 bytes)."""
    t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, win=win, data=data)
    if opts:
        t.opts = opts
        t.off = 5 + len(opts) // 4
    ip = _ip(src, dst, 6, t, ttl=ttl, ident=ident, opts=ip_opts)
    if df:
        ip.df = 1
    return eth(dmac, smac, ip)


def udp(smac, dmac, src, dst, sport, dport, data=b"", ttl=64, zero_csum=False, ip_opts=b""):
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
    u.ulen = 8 + len(data)
    ip = _ip(src, dst, 17, u, ttl=ttl, opts=ip_opts)
    raw = bytearray(eth(dmac, smac, ip))
    if zero_csum:
        raw[34 + len(ip_opts) + 6:34 + len(ip_opts) + 8] = b"\0\0"
    return bytes(raw)


def icmp_echo(smac, dmac, src, dst, ident=7, seq=1, data=b"ping", ttl=64):
    ic = dpkt.icmp.ICMP(type=8, code=0, data=dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=data))
    return eth(dmac, smac, _ip(src, dst, 1, ic, ttl=ttl))


def icmp_error(smac, dmac, src, dst, about, type=3, code=4, mtu=0, quote=28, ttl=64):
    """An ICMP error from src to dst about the frame `about` (its IP packet quoted, the first
    `quote` bytes of it, as a router quotes), fragmentation needed by default (mtu in the
    second word). Full checksums."""
    body = struct.pack("!BBHHH", type, code, 0, 0, mtu) + bytes(about)[14:14 + quote]
    body = body[:2] + struct.pack("!H", ~inet_sum(body) & 0xFFFF) + body[4:]
    ip = _ip(src, dst, 1, b"", ttl=ttl)
    ip.data = body
    ip.len = 20 + len(body)
    return eth(dmac, smac, ip)


def fragments(frame, size):
    """The IPv4 packet of Ethernet `frame` cut into fragments of at most `size` payload bytes
    (rounded down to a multiple of 8), as a router or the sender's stack cuts it: same
    Ethernet header, same IP id, MF on all but the last, offsets in 8-byte units, each IP
    header checksum computed. The L4 header (and its checksum) is in the first only."""
    f = bytes(frame)
    ihl = (f[14] & 15) * 4
    tot = struct.unpack("!H", f[16:18])[0]
    body = f[14 + ihl:14 + tot]
    step = size // 8 * 8
    base = struct.unpack("!H", f[20:22])[0]
    out = []
    for off in range(0, len(body), step):
        chunk = body[off:off + step]
        flags = (base & 0x4000) | (0x2000 if off + step < len(body) else 0) | ((off // 8) & 0x1FFF)
        hdr = bytearray(f[14:14 + ihl])
        hdr[2:4] = struct.pack("!H", ihl + len(chunk))
        hdr[6:8] = struct.pack("!H", flags)
        hdr[10:12] = b"\0\0"
        hdr[10:12] = struct.pack("!H", ~inet_sum(bytes(hdr)) & 0xFFFF)
        out.append(f[:14] + bytes(hdr) + chunk)
    return out


def arp_request(smac, sip, tip):
    a = dpkt.arp.ARP(op=dpkt.arp.ARP_OP_REQUEST, sha=smac, spa=ipaddress.IPv4Address(sip).packed,
                     tha=b"\0" * 6, tpa=ipaddress.IPv4Address(tip).packed)
    return eth(b"\xff" * 6, smac, a, etype=0x0806)


def arp_reply(smac, sip, dmac, dip):
    a = dpkt.arp.ARP(op=dpkt.arp.ARP_OP_REPLY, sha=smac, spa=ipaddress.IPv4Address(sip).packed,
                     tha=dmac, tpa=ipaddress.IPv4Address(dip).packed)
    return eth(dmac, smac, a, etype=0x0806)


def inet_sum(data):
    """Ones'-complement sum of 16-bit big-endian words, folded (not inverted)."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), bytes(data)))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksums_ok(frame):
    """True when the IPv4 header checksum and the TCP/UDP checksum of `frame` are right.
    A UDP checksum of 0 means "none" and passes."""
    f = bytes(frame)
    ihl = (f[14] & 15) * 4
    if inet_sum(f[14:14 + ihl]) != 0xFFFF:
        return False
    tot = struct.unpack("!H", f[16:18])[0]
    proto = f[23]
    seg = f[14 + ihl:14 + tot]
    if proto == 17 and seg[6:8] == b"\0\0":
        return True
    if proto not in (6, 17):
        return True
    pseudo = f[26:34] + struct.pack("!BBH", 0, proto, len(seg))
    return inet_sum(pseudo + seg) == 0xFFFF
