"""lb/neigh.py: ARP and ICMP for the balancer's own addresses, table-driven.

Each case: a description, a punted input frame (built with dpkt), the check on the frames
Neigh answers with (parsed back with dpkt), and the outcome counter that must move by one.
"""
import ipaddress

import dpkt
import pytest

from lb.neigh import Neigh, checksum, RESOLVE_MS, REFRESH_MS

LB_IP = "198.19.0.2"
LB_MAC = bytes.fromhex("025457000002")
VIP = "198.19.100.1"
BACKEND = "198.19.0.11"
BACKEND_MAC = bytes.fromhex("02aa00000011")
CLIENT_MAC = bytes.fromhex("02cc00000001")
OTHER = "198.19.0.99"
BCAST = b"\xff" * 6


def ip4(s):
    return ipaddress.IPv4Address(s).packed


class FakeState:
    def __init__(self, wanted=(BACKEND,)):
        self.wanted = [int(ipaddress.IPv4Address(a)) for a in wanted]
        self.learned = []

    def vip_addresses(self):
        return [int(ipaddress.IPv4Address(VIP))]

    def wanted_neighbors(self):
        return list(self.wanted)

    def learn_neighbor(self, ip, mac):
        self.learned.append((ip, mac))


def arp(op, sha, spa, tpa, tha=b"\x00" * 6, eth_dst=BCAST):
    a = dpkt.arp.ARP(op=op, sha=sha, spa=ip4(spa), tha=tha, tpa=ip4(tpa))
    return bytes(dpkt.ethernet.Ethernet(dst=eth_dst, src=sha, type=dpkt.ethernet.ETH_TYPE_ARP,
                                        data=a))


def echo(dst=LB_IP, src="198.18.0.10", itype=8, payload=b"threeway-ping" * 3, bad_csum=False):
    ic = dpkt.icmp.ICMP(type=itype, code=0,
                        data=dpkt.icmp.ICMP.Echo(id=0x1234, seq=7, data=payload))
    ip = dpkt.ip.IP(src=ip4(src), dst=ip4(dst), p=dpkt.ip.IP_PROTO_ICMP, ttl=63, id=99, data=ic)
    raw = bytes(dpkt.ethernet.Ethernet(dst=LB_MAC, src=CLIENT_MAC, type=dpkt.ethernet.ETH_TYPE_IP,
                                       data=ip))
    if bad_csum:   # flip the ICMP checksum
        off = 14 + 20 + 2
        raw = raw[:off] + bytes([raw[off] ^ 0xFF]) + raw[off + 1:]
    return raw


def ipv4(proto, dst=LB_IP, l4=b"\x00" * 20):
    ip = dpkt.ip.IP(src=ip4("198.18.0.10"), dst=ip4(dst), p=proto, ttl=63, data=l4)
    return bytes(dpkt.ethernet.Ethernet(dst=LB_MAC, src=CLIENT_MAC, type=dpkt.ethernet.ETH_TYPE_IP,
                                        data=ip))


def check_arp_reply(target):
    def check(out):
        assert len(out) == 1
        assert len(out[0]) == 60          # padded to the Ethernet minimum
        eth = dpkt.ethernet.Ethernet(out[0])
        assert eth.dst == CLIENT_MAC and eth.src == LB_MAC
        assert eth.type == dpkt.ethernet.ETH_TYPE_ARP
        a = eth.data
        assert a.op == dpkt.arp.ARP_OP_REPLY
        assert a.sha == LB_MAC and a.spa == ip4(target)
        assert a.tha == CLIENT_MAC and a.tpa == ip4("198.19.0.50")
    return check


def check_echo_reply(out):
    assert len(out) == 1
    eth = dpkt.ethernet.Ethernet(out[0])
    assert eth.dst == CLIENT_MAC and eth.src == LB_MAC
    ip = eth.data
    assert isinstance(ip, dpkt.ip.IP)
    assert ip.src == ip4(LB_IP) and ip.dst == ip4("198.18.0.10")
    assert ip.p == dpkt.ip.IP_PROTO_ICMP
    raw_ip = out[0][14:14 + ip.len]
    assert checksum(raw_ip[:20]) == 0                  # header checksum verifies
    assert checksum(raw_ip[20:]) == 0                  # ICMP checksum verifies
    ic = ip.data
    assert ic.type == 0 and ic.code == 0
    assert ic.data.id == 0x1234 and ic.data.seq == 7 and ic.data.data == b"threeway-ping" * 3


def no_reply(out):
    assert out == []


def truncate(frame, n):
    return frame[:n]


CASES = [
    ("arp request for the LB address", arp(1, CLIENT_MAC, "198.19.0.50", LB_IP),
     check_arp_reply(LB_IP), "arp_requests_answered"),
    ("arp request for a VIP", arp(1, CLIENT_MAC, "198.19.0.50", VIP),
     check_arp_reply(VIP), "arp_requests_answered"),
    ("arp request for another host", arp(1, CLIENT_MAC, "198.19.0.50", OTHER),
     no_reply, "punt_dropped_arp_not_ours"),
    ("gratuitous arp for our address is not answered", arp(1, CLIENT_MAC, LB_IP, LB_IP),
     no_reply, "punt_dropped_arp_not_ours"),
    ("arp reply from a host we do not want", arp(2, CLIENT_MAC, OTHER, LB_IP, LB_MAC, LB_MAC),
     no_reply, "punt_dropped_arp_unwanted"),
    ("our own request echoed back", arp(1, LB_MAC, LB_IP, BACKEND),
     no_reply, "punt_dropped_arp_from_self"),
    ("icmp echo to the LB address", echo(), check_echo_reply, "icmp_echo_answered"),
    ("icmp echo, odd payload length", echo(payload=b"x" * 5),
     lambda out: checksum(out[0][34:34 + 13]) == 0 or pytest.fail("icmp csum"),
     "icmp_echo_answered"),
    ("icmp echo to a VIP is not ours", echo(dst=VIP), no_reply, "punt_dropped_not_local"),
    ("icmp echo reply to us", echo(itype=0), no_reply, "punt_dropped_icmp_type"),
    ("icmp echo with a bad checksum", echo(bad_csum=True), no_reply, "punt_dropped_icmp_csum"),
    ("tcp to the LB address", ipv4(6), no_reply, "punt_dropped_tcp"),
    ("udp to the LB address", ipv4(17, l4=b"\x00" * 8), no_reply, "punt_dropped_udp"),
    ("gre to the LB address", ipv4(47), no_reply, "punt_dropped_proto"),
    ("empty frame", b"", no_reply, "punt_dropped_runt"),
    ("13 bytes", b"\xff" * 13, no_reply, "punt_dropped_runt"),
    ("ipv6 ethertype", LB_MAC + CLIENT_MAC + b"\x86\xdd" + b"\x60" + b"\x00" * 39,
     no_reply, "punt_dropped_ethertype"),
    ("arp cut after the opcode", truncate(arp(1, CLIENT_MAC, "198.19.0.50", LB_IP), 22),
     no_reply, "punt_dropped_arp_truncated"),
    ("arp with hlen 8", arp(1, CLIENT_MAC, "198.19.0.50", LB_IP)[:18] + b"\x08"
     + arp(1, CLIENT_MAC, "198.19.0.50", LB_IP)[19:], no_reply, "punt_dropped_arp_format"),
    ("arp opcode 3", arp(3, CLIENT_MAC, "198.19.0.50", LB_IP), no_reply,
     "punt_dropped_arp_format"),
    ("ip cut inside the header", truncate(echo(), 30), no_reply, "punt_dropped_ip_truncated"),
    ("ip total length beyond the frame", truncate(echo(), 50), no_reply,
     "punt_dropped_ip_truncated"),
    ("ip version 6 in an ipv4 ethertype", echo()[:14] + b"\x65" + echo()[15:], no_reply,
     "punt_dropped_ip_header"),
    ("ip header checksum wrong", echo()[:24] + b"\x00\x00" + echo()[26:], no_reply,
     "punt_dropped_ip_csum"),
    ("garbage", bytes(range(256)) * 2, no_reply, "punt_dropped_ethertype"),
]


@pytest.mark.parametrize("desc,frame,check,counter", CASES, ids=[c[0] for c in CASES])
def test_punted_frame(desc, frame, check, counter):
    n = Neigh(FakeState(), LB_IP, LB_MAC)
    before = n.counters()
    out = n.handle(frame)
    check(out)
    after = n.counters()
    changed = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert changed == {"punted": 1, counter: 1}, desc


def test_fragmented_echo_is_dropped():
    ic = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=b"x" * 16))
    ip = dpkt.ip.IP(src=ip4("198.18.0.10"), dst=ip4(LB_IP), p=1, mf=1, data=ic)
    f = bytes(dpkt.ethernet.Ethernet(dst=LB_MAC, src=CLIENT_MAC, type=0x0800, data=ip))
    assert checksum(f[14:34]) == 0      # a valid header: only the MF bit is wrong for us
    n = Neigh(FakeState(), LB_IP, LB_MAC)
    assert n.handle(f) == []
    assert n.counters()["punt_dropped_ip_fragment"] == 1


def test_learn_from_reply_and_request():
    st = FakeState()
    n = Neigh(st, LB_IP, LB_MAC)
    b = int(ipaddress.IPv4Address(BACKEND))
    n.handle(arp(2, BACKEND_MAC, BACKEND, LB_IP, LB_MAC, LB_MAC))
    assert st.learned == [(b, BACKEND_MAC)]
    assert n.counters()["arp_learned"] == 1 and n.counters()["arp_noted"] == 1
    # the same binding again: nothing new for the state
    n.handle(arp(2, BACKEND_MAC, BACKEND, LB_IP, LB_MAC, LB_MAC))
    assert len(st.learned) == 1
    # a request from the backend for our address: answered, and a changed MAC is learned
    new_mac = bytes.fromhex("02aa000000ff")
    out = n.handle(arp(1, new_mac, BACKEND, LB_IP))
    assert len(out) == 1 and dpkt.ethernet.Ethernet(out[0]).dst == new_mac
    assert st.learned[-1] == (b, new_mac)
    assert n.counters()["arp_learned"] == 2
    assert n.neighbors() == {BACKEND: new_mac.hex(":")}


def test_no_learning_from_probes_or_multicast():
    st = FakeState(wanted=(BACKEND, "0.0.0.0"))
    n = Neigh(st, LB_IP, LB_MAC)
    n.handle(arp(1, BACKEND_MAC, "0.0.0.0", LB_IP))                 # ARP probe
    n.handle(arp(2, bytes.fromhex("01005e000001"), BACKEND, LB_IP, LB_MAC, LB_MAC))
    assert st.learned == []


def test_arp_requests_schedule():
    st = FakeState(wanted=(BACKEND, "198.19.0.1"))
    n = Neigh(st, LB_IP, LB_MAC)
    out = n.due_requests(0)
    # first our own address announced (gratuitous ARP: a restarted cluster member reclaims
    # it from the member that answered for it), then the two requests
    ann, out = out[0], out[1:]
    a = dpkt.ethernet.Ethernet(ann).data
    assert (a.op, a.spa, a.tpa) == (dpkt.arp.ARP_OP_REQUEST, ip4(LB_IP), ip4(LB_IP))
    assert len(out) == 2
    for f in out:
        eth = dpkt.ethernet.Ethernet(f)
        assert eth.dst == BCAST and eth.src == LB_MAC
        a = eth.data
        assert a.op == dpkt.arp.ARP_OP_REQUEST and a.sha == LB_MAC and a.spa == ip4(LB_IP)
        assert a.tha == b"\x00" * 6
    assert {dpkt.ethernet.Ethernet(f).data.tpa for f in out} == {ip4(BACKEND), ip4("198.19.0.1")}
    assert n.due_requests(RESOLVE_MS - 1) == []
    n.handle(arp(2, BACKEND_MAC, BACKEND, LB_IP, LB_MAC, LB_MAC))
    out = n.due_requests(RESOLVE_MS)       # only the unresolved gateway is asked again
    assert [dpkt.ethernet.Ethernet(f).data.tpa for f in out] == [ip4("198.19.0.1")]
    out = n.due_requests(REFRESH_MS)       # backend refreshed after 30 s
    assert ip4(BACKEND) in [dpkt.ethernet.Ethernet(f).data.tpa for f in out]
    assert n.counters()["arp_requests_sent"] == 2 + 1 + len(out)
    assert n.counters()["arp_announced"] == 1


def test_known_mac_is_given_again_when_the_address_is_wanted_again():
    st = FakeState()
    n = Neigh(st, LB_IP, LB_MAC)
    n.handle(arp(2, BACKEND_MAC, BACKEND, LB_IP, LB_MAC, LB_MAC))
    saved = st.wanted
    st.wanted = []
    n.due_requests(0)
    st.wanted = saved
    n.due_requests(1)
    assert st.learned == [(int(ipaddress.IPv4Address(BACKEND)), BACKEND_MAC)] * 2


def test_state_errors_do_not_escape():
    class Broken(FakeState):
        def vip_addresses(self):
            raise RuntimeError("boom")

        def learn_neighbor(self, ip, mac):
            raise RuntimeError("boom")

    n = Neigh(Broken(), LB_IP, LB_MAC)
    assert n.handle(arp(2, BACKEND_MAC, BACKEND, LB_IP, LB_MAC, LB_MAC)) == []
    assert len(n.handle(arp(1, CLIENT_MAC, "198.19.0.50", LB_IP))) == 1   # LB address still answered


def test_a_dead_members_address_is_answered_while_adopted_and_announced_once():
    st = FakeState()
    n = Neigh(st, LB_IP, LB_MAC)
    n.due_requests(0)
    other = "198.19.0.202"
    req = arp(1, BACKEND_MAC, BACKEND, other, b"\x00" * 6, BCAST)
    assert n.handle(req) == []                        # not ours
    n.adopt([other])
    [ann] = n.due_requests(1)
    a = dpkt.ethernet.Ethernet(ann).data
    assert (a.spa, a.tpa, a.sha) == (ip4(other), ip4(other), LB_MAC)
    [reply] = n.handle(req)
    assert dpkt.ethernet.Ethernet(reply).data.spa == ip4(other)
    assert n.due_requests(2) == []                    # announced once
    n.adopt([])                                        # its member is back
    assert n.handle(req) == []
