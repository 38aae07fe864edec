"""ICMP errors about flows (fastpath/icmp.pxi and its twin), on both twins: found by the quote,
sent to the other end of the flow, translated (nat, splice) or forwarded (dsr, tunnel); no flow
and a consistent hash; every refusal counted. Expected frames are built independently with
dpkt (full checksums), so a byte-equal frame also proves the incremental patches.

    router 198.18.0.1 (client side, via GW)  --  LB  --  b1 .11 / b2 .12 / b3 .13
    router 198.19.0.1 (server side)
"""
import struct

import dpkt
import pytest

from fastpath import Batch, ServiceSpec, defs
from modes import tunnel as tmode
from tools import frames as F

from . import test_splice as S
from .fixtures import B1, B2, B3, CLIENT, GW, LB, LB_IP, REALS, VIP1, VIP2, VIP3, VIP7, make_engine

ROUTER = "198.18.0.1"             # on the client's path
SROUTER = "198.19.0.1"            # inside the server network
B1_IP, B2_IP, B3_IP = (r[0] for r in REALS[:3])
NOW = 1_000_000


def run(e, frames):
    b = Batch(len(frames), snap=2048)
    b.load(frames)
    e.process(b, NOW)
    return b.results()


def last(e, frames):
    return run(e, frames)[-1]


def tcp_out(src, dst, sport, dport, ttl=63, data=b"x" * 100, seq=5000, ack=77):
    """A TCP packet one side sent (the quote's source): LB -> GW, flags ACK|PSH, DF."""
    return F.tcp(LB, GW, src, dst, sport, dport, flags=F.TH_ACK | F.TH_PUSH, seq=seq, ack=ack,
                 data=data, ttl=ttl, df=True)


@pytest.mark.parametrize("quote", [28, 48, 120])
def test_nat_client_side_error_reaches_the_backend_translated(impl, quote):
    e = make_engine(impl.Engine, ServiceSpec)
    assert last(e, [F.tcp(GW, LB, CLIENT, VIP1, 40000, 80, flags=F.TH_SYN)])[1] == "nat_fwd"
    about = tcp_out(VIP1, CLIENT, 80, 40000)                  # what the client side saw
    err = F.icmp_error(GW, LB, ROUTER, VIP1, about, mtu=1400, quote=quote)
    v, reason, out = last(e, [err])
    want = F.icmp_error(LB, B1, ROUTER, B1_IP, tcp_out(B1_IP, CLIENT, 80, 40000), mtu=1400,
                        quote=quote, ttl=63)
    assert (v, reason) == (defs.V_TX, "nat_icmp_fwd")
    assert out == want and F.checksums_ok(out)
    c = e.counters()
    assert (c["nat_icmp_fwd"], c["flow_created"]) == (1, 1)


def test_nat_udp_quote_carries_its_checksum_patched(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    assert last(e, [F.udp(GW, LB, CLIENT, VIP2, 5000, 53, b"q")])[1] == "nat_fwd"
    about = F.udp(LB, GW, VIP2, CLIENT, 53, 5000, b"answer", ttl=63)
    v, reason, out = last(e, [F.icmp_error(GW, LB, ROUTER, VIP2, about, type=11, code=0)])
    want = F.icmp_error(LB, B3, ROUTER, B3_IP, F.udp(LB, GW, B3_IP, CLIENT, 5353, 5000, b"answer",
                                                      ttl=63), type=11, code=0, ttl=63)
    assert (v, reason, out) == (defs.V_TX, "nat_icmp_fwd", want)


@pytest.mark.parametrize("outer_src,new_src", [(B1_IP, VIP1), (SROUTER, SROUTER)])
def test_nat_server_side_error_reaches_the_client_with_the_vip(impl, outer_src, new_src):
    """Port unreachable from the backend itself (its address becomes the VIP's), or frag
    needed from a router inside the server network (its own address stays)."""
    e = make_engine(impl.Engine, ServiceSpec)
    run(e, [F.tcp(GW, LB, CLIENT, VIP1, 40000, 80, flags=F.TH_SYN)])
    about = F.tcp(LB, B1, CLIENT, B1_IP, 40000, 80, flags=F.TH_ACK, seq=9, data=b"y" * 40, ttl=63)
    err = F.icmp_error(B1, LB, outer_src, CLIENT, about, quote=48)
    v, reason, out = last(e, [err])
    want = F.icmp_error(LB, GW, new_src, CLIENT, F.tcp(LB, B1, CLIENT, VIP1, 40000, 80,
                                                       flags=F.TH_ACK, seq=9, data=b"y" * 40,
                                                       ttl=63), quote=48, ttl=63)
    assert (v, reason, out) == (defs.V_TX, "nat_icmp_rev", want)


def test_dsr_error_goes_to_the_backend_untouched(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    assert last(e, [F.tcp(GW, LB, CLIENT, VIP3, 40000, 80, flags=F.TH_SYN)])[1] == "dsr_fwd"
    err = F.icmp_error(GW, LB, ROUTER, VIP3, tcp_out(VIP3, CLIENT, 80, 40000, ttl=64))
    v, reason, out = last(e, [err])
    assert (v, reason) == (defs.V_TX, "dsr_icmp_fwd")
    assert out == B1 + LB + err[12:]
    assert e.counters()["icmp_hashed"] == 0


@pytest.mark.parametrize("vip,port,backend,counter", [
    (VIP3, 80, (B1, None), "dsr_icmp_fwd"),            # dsr, maglev
    (VIP1, 8080, (B2, (B2_IP, 8081)), "nat_icmp_fwd"),   # nat, maglev: translated to b2:8081
])
def test_no_flow_and_a_consistent_hash_picks_the_backend_the_flow_had(impl, vip, port, backend,
                                                                     counter):
    e = make_engine(impl.Engine, ServiceSpec)
    err = F.icmp_error(GW, LB, ROUTER, vip, tcp_out(vip, CLIENT, port, 40000), quote=48)
    v, reason, out = last(e, [err])
    assert (v, reason) == (defs.V_TX, counter) and out[:6] == backend[0]
    if backend[1]:
        ip, p = backend[1]
        assert out == F.icmp_error(LB, B2, ROUTER, ip, tcp_out(ip, CLIENT, p, 40000), quote=48,
                                   ttl=63)
    c = e.counters()
    assert (c["icmp_hashed"], c["flow_created"], e.flow_count()) == (1, 0, 0)
    # and it is the backend a flow from that client port gets
    syn = F.tcp(GW, LB, CLIENT, vip, 40000, port, flags=F.TH_SYN)
    assert last(e, [syn])[2][:6] == backend[0]


def test_tunnel_error_goes_in_vxlan_to_the_backend(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    assert last(e, [F.tcp(GW, LB, CLIENT, VIP7, 40000, 80, flags=F.TH_SYN)])[1] == "tunnel_fwd"
    err = F.icmp_error(GW, LB, ROUTER, VIP7, tcp_out(VIP7, CLIENT, 80, 40000, ttl=64))
    v, reason, out = last(e, [err])
    assert (v, reason) == (defs.V_TX, "tunnel_icmp_fwd")
    assert out[:12] == GW + LB and out[50:] == tmode.VXLAN_INNER_MAC + LB + err[12:]
    ip = dpkt.ethernet.Ethernet(out).data
    assert (F.int2ip(int.from_bytes(ip.src, "big")), F.int2ip(int.from_bytes(ip.dst, "big"))) == (
        LB_IP, "198.19.200.11")
    assert ip.data.dport == 4789 and F.checksums_ok(out)
    # the flow's frames and its error take the same outer source port (the same ECMP path)
    data = last(e, [F.tcp(GW, LB, CLIENT, VIP7, 40000, 80, flags=F.TH_ACK)])[2]
    assert data[34:36] == out[34:36]


@pytest.mark.parametrize("why,frame,counter", [
    ("echo to a VIP", F.icmp_echo(GW, LB, CLIENT, VIP1), "drop_icmp_not_error"),
    ("quote shorter than the ports", F.icmp_error(GW, LB, ROUTER, VIP1, tcp_out(VIP1, CLIENT, 80, 1),
                                                  quote=22), "drop_icmp_bad"),
    ("quote of an ICMP packet", F.icmp_error(GW, LB, ROUTER, VIP1, F.icmp_echo(LB, GW, VIP1, CLIENT)),
     "drop_icmp_bad"),
    ("no flow, round robin", F.icmp_error(GW, LB, ROUTER, VIP1, tcp_out(VIP1, CLIENT, 80, 1)),
     "drop_icmp_no_flow"),
    ("no flow either side", F.icmp_error(B1, LB, B1_IP, CLIENT, tcp_out(CLIENT, B1_IP, 1, 80)),
     "drop_icmp_no_flow"),
    ("ICMP header only", F.eth(LB, GW, F._ip(ROUTER, VIP1, 1, b"\x03\x04\xfc\xfb\0\0\0\0")),
     "drop_icmp_bad"),
    ("shorter than an ICMP header", F.eth(LB, GW, F._ip(ROUTER, VIP1, 1, b"\x03\x04\0\0")),
     "drop_l4_truncated"),
])
def test_what_is_not_forwarded_is_counted(impl, why, frame, counter):
    e = make_engine(impl.Engine, ServiceSpec)
    v, reason, out = last(e, [frame])
    assert (v, reason) == (defs.V_DROP, counter), why
    assert e.counters()[counter] == 1


def test_a_wrong_icmp_checksum_is_not_laundered(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    run(e, [F.tcp(GW, LB, CLIENT, VIP1, 40000, 80, flags=F.TH_SYN)])
    err = bytearray(F.icmp_error(GW, LB, ROUTER, VIP1, tcp_out(VIP1, CLIENT, 80, 40000)))
    err[-1] ^= 0x40
    assert last(e, [bytes(err)])[:2] == (defs.V_DROP, "drop_icmp_bad")


def test_ttl_one_is_not_routed(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    run(e, [F.tcp(GW, LB, CLIENT, VIP1, 40000, 80, flags=F.TH_SYN)])
    err = F.icmp_error(GW, LB, ROUTER, VIP1, tcp_out(VIP1, CLIENT, 80, 40000), ttl=1)
    assert last(e, [err])[:2] == (defs.V_DROP, "drop_ttl")


def test_an_error_changes_no_flow(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    run(e, [F.tcp(GW, LB, CLIENT, VIP1, 40000, 80, flags=F.TH_SYN)])
    before = e.flows()
    assert last(e, [F.icmp_error(GW, LB, ROUTER, VIP1, tcp_out(VIP1, CLIENT, 80, 40000))])[1] == (
        "nat_icmp_fwd")
    assert e.flows() == before


def test_splice_client_side_error_moves_the_quoted_seq_into_the_backends_space(impl):
    e, c_isn, delta, s_isn = S.spliced(impl)
    seq_b = (s_isn + 1) & S.M32
    about = tcp_out(S.VIP, CLIENT, 80, 40000, seq=(seq_b + delta) & S.M32, ack=c_isn + 1)
    v, reason, out = S.run(e, F.icmp_error(GW, LB, ROUTER, S.VIP, about, quote=48), S.NOW)
    want = F.icmp_error(LB, B1, ROUTER, B1_IP, tcp_out(B1_IP, CLIENT, 80, 40000, seq=seq_b,
                                                       ack=c_isn + 1), quote=48, ttl=63)
    assert (v, reason, out) == (defs.V_TX, "splice_icmp_fwd", want)


@pytest.mark.parametrize("quote", [28, 48])
def test_splice_server_side_error_moves_the_quoted_ack_into_the_clients_space(impl, quote):
    e, c_isn, delta, s_isn = S.spliced(impl)
    ack_b = (s_isn + 1) & S.M32
    about = F.tcp(LB, B1, CLIENT, B1_IP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1, ack=ack_b,
                  data=b"z" * 30, ttl=63)
    v, reason, out = S.run(e, F.icmp_error(B1, LB, SROUTER, CLIENT, about, quote=quote), S.NOW)
    want = F.icmp_error(LB, GW, SROUTER, CLIENT, F.tcp(LB, B1, CLIENT, S.VIP, 40000, 80,
                                                       flags=F.TH_ACK, seq=c_isn + 1,
                                                       ack=(ack_b + delta) & S.M32,
                                                       data=b"z" * 30, ttl=63), quote=quote, ttl=63)
    assert (v, reason, out) == (defs.V_TX, "splice_icmp_rev", want)


def test_splice_error_before_binding_is_no_flow(impl):
    e = S.engine(impl)
    c_isn, out = S.handshake(e)
    cookie = S.parse(out).seq
    S.run(e, F.tcp(GW, LB, CLIENT, S.VIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1,
                   ack=(cookie + 1) & S.M32))
    err = F.icmp_error(GW, LB, ROUTER, S.VIP, tcp_out(S.VIP, CLIENT, 80, 40000))
    assert S.run(e, err)[:2] == (defs.V_DROP, "drop_icmp_no_flow")


def test_with_a_vnet_header_the_translated_error_has_full_checksums(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    run(e, [F.tcp(GW, LB, CLIENT, VIP1, 40000, 80, flags=F.TH_SYN)])
    err = F.icmp_error(GW, LB, ROUTER, VIP1, tcp_out(VIP1, CLIENT, 80, 40000))
    b = Batch(1, snap=2048, hdr=10)
    b.load([err], [struct.pack("<BBHHHH", 1, 0, 0, 0, 34, 2)])   # a stray NEEDS_CSUM
    e.process(b, NOW)
    assert b.results()[0][1] == "nat_icmp_fwd" and b.header(0) == bytes(10)
