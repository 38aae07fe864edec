"""Table-driven frame fixtures: input frames, expected output frames, verdicts, counters.

Each fixture runs on a fresh engine in WORLD (below), its frames in one batch, in order.
Expected TX frames are built independently by tools/frames.py with fully computed checksums,
so a passing fixture also proves the incremental checksum patch equals a full recompute.
The same table feeds bench/test_fastpath.py.

    clients 198.18.0.0/24 --- gateway (GW) --- LB 198.19.0.2 (LB) --- b1 .11, b2 .12, b3 .13
    VIPs: 198.19.100.1:80/tcp nat seq [b1:80]     198.19.100.1:8080/tcp nat maglev [b2:8081]
          198.19.100.2:53/udp nat seq [b3:5353]   198.19.100.3:80/tcp dsr maglev [b1:80]
          198.19.100.4:80/tcp nat (no backend)    198.19.100.5:80/tcp nat seq [b4, MAC unknown]
          198.19.100.7:80/tcp tunnel maglev [r1 198.19.200.11:80, off-link], VNI 4242, mtu 1500
"""
from dataclasses import dataclass, field

from fastpath import defs
from tools import frames as F

LB = F.mac("02:74:77:00:00:02")
GW = F.mac("02:74:77:00:00:01")
B1, B2, B3 = F.mac("02:00:00:00:0b:01"), F.mac("02:00:00:00:0b:02"), F.mac("02:00:00:00:0b:03")
OTHER = F.mac("02:99:99:99:99:99")
LB_IP = "198.19.0.2"
CLIENT = "198.18.0.10"
VIP1, VIP2, VIP3, VIP4, VIP5 = ("198.19.100.%d" % i for i in range(1, 6))
VIP7 = "198.19.100.7"
REALS = [("198.19.0.11", 80, B1), ("198.19.0.12", 8081, B2), ("198.19.0.13", 5353, B3),
         ("198.19.0.14", 80, None), ("198.19.200.11", 80, None)]


def services(ServiceSpec):
    from fastpath import TunnelSpec
    ip = F.ip2int
    return [
        ServiceSpec(ip(VIP1), 80, 6, defs.MODE_NAT, defs.SCHED_SEQ, [0], [1]),
        ServiceSpec(ip(VIP1), 8080, 6, defs.MODE_NAT, defs.SCHED_HASH5, [1], [1]),
        ServiceSpec(ip(VIP2), 53, 17, defs.MODE_NAT, defs.SCHED_SEQ, [2], [1]),
        ServiceSpec(ip(VIP3), 80, 6, defs.MODE_DSR, defs.SCHED_HASH5, [0], [1]),
        ServiceSpec(ip(VIP4), 80, 6, defs.MODE_NAT, defs.SCHED_SEQ, [], []),
        ServiceSpec(ip(VIP5), 80, 6, defs.MODE_NAT, defs.SCHED_SEQ, [3], [1]),
        ServiceSpec(ip(VIP7), 80, 6, defs.MODE_TUNNEL, defs.SCHED_HASH5, [4], [1], 0, None,
                    TunnelSpec(4242, 1500)),
    ]


def make_engine(Engine, ServiceSpec, capacity=1024, gateway=True, timeouts=None):
    e = Engine(capacity, timeouts)
    e.set_local(F.ip2int(LB_IP), LB)
    e.set_gateway(GW if gateway else None)
    for i, (ip, port, m) in enumerate(REALS):
        e.set_real(i, F.ip2int(ip), port, m)
    e.set_services(services(ServiceSpec))
    return e


# ---- frame shorthands ---------------------------------------------------------------------
def c2v(vip=VIP1, dport=80, flags=F.TH_SYN, sport=40000, data=b"", ttl=64, **kw):
    """client -> VIP, as the gateway delivers it to the LB."""
    return F.tcp(GW, LB, CLIENT, vip, sport, dport, flags=flags, data=data, ttl=ttl, **kw)


def c2b(real=0, flags=F.TH_SYN, sport=40000, data=b"", ttl=63, **kw):
    """what nat makes of c2v: client -> backend, LB -> backend MAC, TTL - 1."""
    ip, port, m = REALS[real]
    return F.tcp(LB, m, CLIENT, ip, sport, port, flags=flags, data=data, ttl=ttl, **kw)


def b2c(real=0, flags=F.TH_SYN | F.TH_ACK, sport=40000, data=b"", ttl=64, **kw):
    """backend -> client, routed to the LB (the backends' reply routing)."""
    ip, port, m = REALS[real]
    return F.tcp(m, LB, ip, CLIENT, port, sport, flags=flags, data=data, ttl=ttl, **kw)


def v2c(vip=VIP1, vport=80, flags=F.TH_SYN | F.TH_ACK, sport=40000, data=b"", ttl=63, **kw):
    """what nat makes of b2c: VIP -> client, LB -> gateway MAC, TTL - 1."""
    return F.tcp(LB, GW, vip, CLIENT, vport, sport, flags=flags, data=data, ttl=ttl, **kw)


def patch(frame, offset, data):
    f = bytearray(frame)
    f[offset:offset + len(data)] = data
    return bytes(f)


def fix_ip_csum(frame):
    f = bytearray(frame)
    ihl = (f[14] & 15) * 4
    f[24:26] = b"\0\0"
    f[24:26] = (~F.inet_sum(f[14:14 + ihl]) & 0xFFFF).to_bytes(2, "big")
    return bytes(f)


@dataclass
class Fixture:
    name: str
    frames: list
    expect: list            # per frame: (verdict, counter, expected frame or None = unchanged)
    counters: dict = field(default_factory=dict)   # extra counters that must hold afterwards
    flows: int = None       # expected flow_count afterwards
    states: list = None     # expected sorted flow states (defs.STATE_NAMES) afterwards
    world: dict = field(default_factory=dict)      # make_engine keyword overrides


TX, DROP, PUNT = defs.V_TX, defs.V_DROP, defs.V_PUNT
ipv6 = F.eth(LB, GW, b"\x60" + b"\0" * 39, etype=0x86DD)
vlan = F.eth(LB, GW, b"\0\x01\x08\x00" + c2v()[14:], etype=0x8100)
RR = b"\x07\x07\x04\0\0\0\0\x01"      # IP record route, one slot, and a NOP: 8 bytes of options

FIXTURES = [
    Fixture("nat: client SYN opens a flow and is rewritten to the backend",
            [c2v()], [(TX, "nat_fwd", c2b())], {"flow_created": 1}, flows=1, states=["SYN_SENT"]),
    Fixture("nat: handshake both ways, reply rewritten to the VIP",
            [c2v(), b2c(), c2v(flags=F.TH_ACK)],
            [(TX, "nat_fwd", c2b()), (TX, "nat_rev", v2c()), (TX, "nat_fwd", c2b(flags=F.TH_ACK))],
            flows=1, states=["ESTABLISHED"]),
    Fixture("nat: payload and port translation (VIP:8080 -> b2:8081)",
            [c2v(dport=8080, data=b"GET / HTTP/1.1\r\n\r\n"),
             b2c(real=1, flags=F.TH_ACK, data=b"HTTP/1.1 200 OK\r\n\r\n")],
            [(TX, "nat_fwd", c2b(real=1, data=b"GET / HTTP/1.1\r\n\r\n")),
             (TX, "nat_rev", v2c(vport=8080, flags=F.TH_ACK, data=b"HTTP/1.1 200 OK\r\n\r\n"))]),
    Fixture("nat: UDP both ways",
            [F.udp(GW, LB, CLIENT, VIP2, 5000, 53, b"query"),
             F.udp(B3, LB, "198.19.0.13", CLIENT, 5353, 5000, b"answer")],
            [(TX, "nat_fwd", F.udp(LB, B3, CLIENT, "198.19.0.13", 5000, 5353, b"query", ttl=63)),
             (TX, "nat_rev", F.udp(LB, GW, VIP2, CLIENT, 53, 5000, b"answer", ttl=63))],
            flows=1, states=["UDP"]),
    Fixture("nat: a UDP checksum of zero (none) stays zero",
            [F.udp(GW, LB, CLIENT, VIP2, 5000, 53, b"q", zero_csum=True)],
            [(TX, "nat_fwd", F.udp(LB, B3, CLIENT, "198.19.0.13", 5000, 5353, b"q", ttl=63,
                                   zero_csum=True))]),
    Fixture("nat: FIN both ways -> TIME_WAIT; a new SYN on the same ports re-schedules",
            [c2v(), b2c(), c2v(flags=F.TH_ACK), c2v(flags=F.TH_FIN | F.TH_ACK),
             b2c(flags=F.TH_FIN | F.TH_ACK), c2v()],
            [(TX, "nat_fwd", c2b()), (TX, "nat_rev", v2c()), (TX, "nat_fwd", c2b(flags=F.TH_ACK)),
             (TX, "nat_fwd", c2b(flags=F.TH_FIN | F.TH_ACK)),
             (TX, "nat_rev", v2c(flags=F.TH_FIN | F.TH_ACK)), (TX, "nat_fwd", c2b())],
            {"flow_reused": 1, "flow_created": 2}, flows=1, states=["SYN_SENT"]),
    Fixture("nat: RST closes the flow",
            [c2v(), b2c(flags=F.TH_RST | F.TH_ACK)],
            [(TX, "nat_fwd", c2b()), (TX, "nat_rev", v2c(flags=F.TH_RST | F.TH_ACK))],
            states=["CLOSE"]),
    Fixture("nat: non-SYN without a flow on a sequence scheduler is dropped",
            [c2v(flags=F.TH_ACK)], [(DROP, "drop_no_flow_non_syn", None)], flows=0),
    Fixture("nat: non-SYN without a flow on maglev is re-created on the same backend",
            [c2v(dport=8080, flags=F.TH_ACK)], [(TX, "nat_fwd", c2b(real=1, flags=F.TH_ACK))],
            {"flow_recreated": 1}, flows=1, states=["ESTABLISHED"]),
    Fixture("dsr: only the MACs change",
            [c2v(vip=VIP3), c2v(vip=VIP3, flags=F.TH_ACK, data=b"abc")],
            [(TX, "dsr_fwd", F.tcp(LB, B1, CLIENT, VIP3, 40000, 80, flags=F.TH_SYN)),
             (TX, "dsr_fwd", F.tcp(LB, B1, CLIENT, VIP3, 40000, 80, flags=F.TH_ACK, data=b"abc"))],
            flows=1, states=["ESTABLISHED"]),
    Fixture("service without backends", [c2v(vip=VIP4)], [(DROP, "drop_no_backend", None)], flows=0),
    Fixture("backend MAC not resolved", [c2v(vip=VIP5)], [(DROP, "drop_no_neigh", None)], flows=1),
    Fixture("gateway MAC not resolved", [c2v(), b2c()],
            [(TX, "nat_fwd", c2b()), (DROP, "drop_no_neigh", None)], world={"gateway": False}),
    Fixture("TTL 1 is not routed", [c2v(ttl=1)], [(DROP, "drop_ttl", None)]),
    Fixture("reply with no flow", [b2c()], [(DROP, "drop_unknown_dest", None)]),
    Fixture("IPv4 to nobody", [F.tcp(GW, LB, CLIENT, "198.19.0.99", 1, 2)],
            [(DROP, "drop_unknown_dest", None)]),
    Fixture("ICMP echo to a VIP", [F.icmp_echo(GW, LB, CLIENT, VIP1)],
            [(DROP, "drop_icmp_not_error", None)]),
    Fixture("ARP is punted", [F.arp_request(GW, "198.19.0.1", LB_IP)], [(PUNT, "punt_arp", None)]),
    Fixture("ICMP echo to the LB is punted", [F.icmp_echo(GW, LB, CLIENT, LB_IP)],
            [(PUNT, "punt_local", None)]),
    Fixture("frame for another MAC", [F.tcp(GW, OTHER, CLIENT, VIP1, 1, 80)],
            [(DROP, "drop_not_our_mac", None)]),
    Fixture("multicast MAC", [F.tcp(GW, F.mac("01:00:5e:00:00:01"), CLIENT, VIP1, 1, 80)],
            [(DROP, "drop_not_our_mac", None)]),
    Fixture("runt", [LB + GW], [(DROP, "drop_runt", None)]),
    Fixture("IPv6", [ipv6], [(DROP, "drop_not_ipv4", None)]),
    Fixture("VLAN tagged", [vlan], [(DROP, "drop_vlan", None)]),
    Fixture("truncated IPv4 header", [c2v()[:30]], [(DROP, "drop_ip_truncated", None)]),
    Fixture("IP version 6 in an IPv4 frame", [patch(c2v(), 14, b"\x65")],
            [(DROP, "drop_ip_version", None)]),
    Fixture("IHL below 5", [patch(c2v(), 14, b"\x44")], [(DROP, "drop_ip_bad_hdr", None)]),
    Fixture("nat: IP options are forwarded, the L4 header found after them",
            [c2v(ip_opts=RR), b2c(ip_opts=RR), c2v(flags=F.TH_ACK, data=b"hi", ip_opts=RR)],
            [(TX, "nat_fwd", c2b(ip_opts=RR)), (TX, "nat_rev", v2c(ip_opts=RR)),
             (TX, "nat_fwd", c2b(flags=F.TH_ACK, data=b"hi", ip_opts=RR))]),
    Fixture("dsr: IP options are left alone", [c2v(vip=VIP3, ip_opts=RR)],
            [(TX, "dsr_fwd", F.tcp(LB, B1, CLIENT, VIP3, 40000, 80, flags=F.TH_SYN, ip_opts=RR))]),
    Fixture("an ICMP message with IP options is not read",
            [F.eth(LB, GW, F._ip(CLIENT, VIP1, 1, b"\x03\x04" + b"\0" * 30, opts=RR))],
            [(DROP, "drop_ip_options", None)]),
    Fixture("total length beyond the frame", [fix_ip_csum(patch(c2v(), 16, b"\x05\xdc"))],
            [(DROP, "drop_ip_bad_len", None)]),
    Fixture("total length below the header", [fix_ip_csum(patch(c2v(), 16, b"\x00\x10"))],
            [(DROP, "drop_ip_bad_len", None)]),
    Fixture("bad IP header checksum", [patch(c2v(), 24, b"\x12\x34")], [(DROP, "drop_ip_csum", None)]),
    Fixture("a first fragment (MF) is scheduled like any packet",
            [fix_ip_csum(patch(c2v(), 20, b"\x20\x00"))],
            [(TX, "nat_fwd", fix_ip_csum(patch(c2b(), 20, b"\x20\x00")))]),
    Fixture("a later fragment (offset) before its first",
            [fix_ip_csum(patch(c2v(), 20, b"\x00\x10"))], [(DROP, "drop_frag_no_first", None)]),
    Fixture("a fragment for the LB itself", [fix_ip_csum(patch(F.icmp_echo(GW, LB, CLIENT, LB_IP),
                                                               20, b"\x20\x00"))],
            [(DROP, "drop_ip_fragment", None)]),
    Fixture("TCP header cut short", [fix_ip_csum(patch(c2v()[:34 + 12], 16, b"\x00\x20"))],
            [(DROP, "drop_l4_truncated", None)]),
    Fixture("TCP data offset beyond the segment", [patch(c2v(), 46, b"\xf0")],
            [(DROP, "drop_tcp_bad_doff", None)]),
    Fixture("TCP data offset below 5", [patch(c2v(), 46, b"\x40")], [(DROP, "drop_tcp_bad_doff", None)]),
    Fixture("UDP length beyond the datagram",
            [patch(F.udp(GW, LB, CLIENT, VIP2, 5000, 53, b"q"), 38, b"\x00\x40")],
            [(DROP, "drop_udp_bad_len", None)]),
    Fixture("padded runt frame (Ethernet minimum) is forwarded with its padding",
            [c2v() + b"\0" * 6], [(TX, "nat_fwd", c2b() + b"\0" * 6)]),
]
