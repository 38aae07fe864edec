"""The tunnel mode's fast path (fastpath/xmit_tunnel.pxi and its twin), frame by frame on both
twins: a client frame in, the VXLAN frame out, built independently here with dpkt; the too-big
answers; superframes punted, cut by the engine (tunnel_segment) for modes/tunnel.py's
Segmenter; the vnet header kept.

    client 198.18.0.10 --- GW --- LB 198.19.0.2 === VXLAN (UDP 4789, VNI 4242) ===> r1 198.19.200.11
    VIP 198.19.100.7:80/tcp tunnel maglev [r1:80], mtu 1500
"""
import struct

import dpkt
import pytest

from fastpath import Batch, ServiceSpec, TunnelSpec, defs
from modes import tunnel as tmode
from tools import frames as F

from .fixtures import CLIENT, GW, LB, LB_IP, make_engine

VIP = "198.19.100.7"
R1 = "198.19.200.11"
NOW = 1_000_000


def engine(impl, mtu=1500, gateway=True):
    e = make_engine(impl.Engine, ServiceSpec, gateway=gateway)
    e.set_real(9, F.ip2int(R1), 80, None)        # off-link: its MAC is never needed
    e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_TUNNEL, defs.SCHED_HASH5, [9],
                                [1], 0, None, TunnelSpec(4242, mtu))])
    return e


def c2v(data=b"", flags=F.TH_SYN, df=True, sport=40000):
    return F.tcp(GW, LB, CLIENT, VIP, sport, 80, flags=flags, data=data, df=df)


def run(e, frames, hdr=0, headers=None, snap=2048):
    b = Batch(len(frames), snap=snap, hdr=hdr)
    b.load(frames, headers)
    e.process(b, NOW)
    return b


def expected_vxlan(inner, vni=4242):
    """What the LB must send for `inner`: outer Ethernet to the gateway, IP LB -> r1, UDP to
    4789 (the source port is the flow's, checked apart), VXLAN with the VNI, and the client's
    frame with only its Ethernet addresses changed."""
    inner = bytes(inner)
    tot = struct.unpack("!H", inner[16:18])[0]
    body = tmode.VXLAN_INNER_MAC + LB + inner[12:14 + tot]
    vx = b"\x08\0\0\0" + struct.pack("!I", vni << 8)
    return body, vx


def test_a_client_frame_leaves_in_vxlan_to_the_backend(impl):
    e = engine(impl)
    syn = c2v()
    b = run(e, [syn])
    v, reason, out = b.results()[0]
    assert (v, reason) == (defs.V_TX, "tunnel_fwd")
    eth = dpkt.ethernet.Ethernet(out)
    assert (eth.dst, eth.src, eth.type) == (GW, LB, 0x0800)
    ip = eth.data
    assert (F.int2ip(int.from_bytes(ip.src, "big")), F.int2ip(int.from_bytes(ip.dst, "big"))) == (LB_IP, R1)
    assert ip.p == 17 and ip.ttl == 64 and not ip.df and ip.len == len(out) - 14
    assert F.checksums_ok(out)                                 # outer IP; UDP checksum 0
    udp = ip.data
    assert udp.dport == 4789 and udp.sum == 0 and udp.ulen == len(out) - 34
    assert 49152 <= udp.sport <= 65535
    body, vx = expected_vxlan(syn)
    assert out[42:50] == vx and out[50:] == body
    assert F.checksums_ok(out[50:])                            # the inner frame untouched
    c = e.counters()
    assert c["tunnel_fwd"] == 1 and c["flow_created"] == 1
    assert [f[6] for f in e.flows()] == [defs.MODE_TUNNEL]


def test_one_flow_one_outer_source_port_and_flows_spread(impl):
    e = engine(impl)
    ports = {}
    for sport in range(40000, 40064):
        b = run(e, [c2v(sport=sport), c2v(flags=F.TH_ACK, sport=sport)])
        got = {struct.unpack("!H", f[34:36])[0] for _, _, f in b.results()}
        assert len(got) == 1
        ports[sport] = got.pop()
    assert len(set(ports.values())) > 48                       # 64 flows, 16384 ports


def test_too_big_with_df_is_answered_like_a_router(impl):
    e = engine(impl, mtu=1500)
    big = c2v(data=b"x" * (1500 - 40 - 49), flags=F.TH_ACK)    # 1 byte too many for 1500
    b = run(e, [c2v(), big])
    v, reason, out = b.results()[1]
    assert (v, reason) == (defs.V_TX, "tunnel_frag_needed")
    assert len(out) == 70 and out[:12] == GW + LB
    ip = dpkt.ethernet.Ethernet(out).data
    assert F.int2ip(int.from_bytes(ip.dst, "big")) == CLIENT and ip.p == 1
    assert F.inet_sum(out[14:34]) == 0xFFFF and F.inet_sum(out[34:70]) == 0xFFFF
    assert (out[34], out[35], struct.unpack("!H", out[40:42])[0]) == (3, 4, 1450)
    assert out[42:70] == big[14:42]                            # the client's header + 8 bytes
    fits = c2v(data=b"x" * (1500 - 40 - 50), flags=F.TH_ACK)
    assert run(e, [fits]).results()[0][1] == "tunnel_fwd"


def test_too_big_without_df_is_encapsulated_and_punted_to_be_fragmented(impl):
    e = engine(impl, mtu=1000)
    syn = c2v(data=b"y" * 1000, flags=F.TH_ACK, df=False)
    b = run(e, [syn])
    v, reason, out = b.results()[0]
    assert (v, reason) == (defs.V_PUNT, "punt_tunnel_frag")
    body, vx = expected_vxlan(syn)
    assert out[50:] == body and out[18:20] != b"\0\0" and F.checksums_ok(out)
    seg = tmode.Segmenter(e)
    sent = seg.handle(out, NOW, defs.C["punt_tunnel_frag"])
    assert sent.n == 2 and all(len(f) - 14 <= 1000 for f in sent.frames())
    assert seg.counters()["fragments"] == 2


def test_too_big_without_df_with_a_partial_checksum_is_dropped(impl):
    e = engine(impl, mtu=1000)
    b = run(e, [c2v(data=b"y" * 1000, flags=F.TH_ACK, df=False)], hdr=10,
            headers=[vnet(defs.VNET_F_NEEDS_CSUM, 0, 0, 0, 34, 16)])
    assert b.results()[0][:2] == (defs.V_DROP, "drop_tunnel_too_big")


def test_no_gateway_yet_is_a_neighbour_drop(impl):
    e = engine(impl, gateway=False)
    assert run(e, [c2v()]).results()[0][:2] == (defs.V_DROP, "drop_no_neigh")


def vnet(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0):
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def test_a_partial_checksum_stays_partial_with_its_offset_moved(impl):
    e = engine(impl)
    syn = bytearray(c2v())
    syn[50:52] = b"\x12\x34"                 # a partial sum the LB must not touch
    b = run(e, [bytes(syn)], hdr=10, headers=[vnet(defs.VNET_F_NEEDS_CSUM, 0, 0, 0, 34, 16)])
    v, reason, out = b.results()[0]
    assert (v, reason) == (defs.V_TX, "tunnel_fwd")
    assert b.header(0) == vnet(defs.VNET_F_NEEDS_CSUM, 0, 0, 0, 84, 16)
    assert out[50 + 50:52 + 50] == b"\x12\x34"


def test_a_superframe_is_punted_and_cut_to_fit(impl):
    e = engine(impl)
    run(e, [c2v()])
    payload = bytes(range(256)) * 40                           # 10240 bytes
    sf = c2v(data=payload, flags=F.TH_ACK | F.TH_PUSH)
    b = run(e, [sf], hdr=10, headers=[vnet(0, 1, 54, 1448)], snap=12000)
    v, reason, frame = b.results()[0]
    assert (v, reason) == (defs.V_PUNT, "punt_tunnel_gso")
    seg = tmode.Segmenter(e)
    sent = seg.handle(frame, NOW)                               # a Batch: one tx_burst
    out = [f for v, _, f in sent.results() if v == defs.V_TX]
    assert seg.counters()["superframes"] == 1 and len(out) == -(-len(payload) // 1410)
    assert all(sent.header(i) == bytes(10) for i in range(sent.n))
    got = b""
    for k, f in enumerate(out):
        assert len(f) - 14 <= 1500 and F.checksums_ok(f) and F.checksums_ok(f[50:])
        inner = dpkt.ethernet.Ethernet(f[50:]).data
        assert inner.data.seq == 1000 + len(got)
        assert bool(inner.data.flags & F.TH_PUSH) == (k == len(out) - 1)
        got += bytes(inner.data.data)
    assert got == payload
    assert e.counters()["tunnel_fwd"] == 1 + len(out)


def long_vnet(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0,
              outer_th=0, inner_nh=0):
    """struct virtio_net_hdr_v1_hash_tunnel (24 bytes): the plain header, num_buffers, the
    hash fields, then outer_th_offset and inner_nh_offset."""
    return (vnet(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) + bytes(10)
            + struct.pack("<HH", outer_th, inner_nh))


def superframe(e, payload=bytes(range(256)) * 40):
    run(e, [c2v()])
    return c2v(data=payload, flags=F.TH_ACK | F.TH_PUSH), payload


@pytest.mark.parametrize("gso_type", [defs.VNET_GSO_TCPV4, defs.VNET_GSO_TCPV4 | defs.VNET_GSO_ECN])
@pytest.mark.parametrize("gso_size,mtu,out_size", [(1448, 1500, 1410), (1000, 1500, 1000),
                                                   (1448, 1000, 910), (0, 1500, 1410)])
def test_with_the_long_header_a_superframe_leaves_whole_in_udp_tunnel_gso(impl, gso_type, gso_size,
                                                                          mtu, out_size):
    e = engine(impl, mtu=mtu)
    sf, payload = superframe(e)
    h = long_vnet(defs.VNET_F_NEEDS_CSUM, gso_type, 54, gso_size, 34, 16)
    b = run(e, [sf], hdr=defs.VNET_TNL_HDR_LEN, headers=[h], snap=12000)
    v, reason, out = b.results()[0]
    assert (v, reason) == (defs.V_TX, "tunnel_gso_fwd")
    body, vx = expected_vxlan(sf)
    assert len(out) == 14 + 50 + len(sf) - 14 and out[50:] == body and out[42:50] == vx
    ip = dpkt.ethernet.Ethernet(out).data
    assert (ip.len, ip.p, F.int2ip(int.from_bytes(ip.dst, "big")), ip.data.dport,
            ip.data.ulen, ip.data.sum) == (len(out) - 14, 17, R1, 4789, len(out) - 34, 0)
    assert F.checksums_ok(out)                          # the outer IP header: full
    assert b.header(0) == long_vnet(defs.VNET_F_NEEDS_CSUM,
                                    gso_type | defs.VNET_GSO_UDP_TUNNEL_IPV4,
                                    14 + 50 + 20 + 20, out_size, 84, 16, 34, 64)
    assert 50 + 20 + 20 + out_size <= mtu               # each segment the kernel cuts fits
    c = e.counters()
    assert (c["tunnel_gso_fwd"], c["punt_tunnel_gso"]) == (1, 0)


@pytest.mark.parametrize("why,hdr,header,mtu", [
    ("the plain header", 10, vnet(defs.VNET_F_NEEDS_CSUM, 1, 54, 1448, 34, 16), 1500),
    ("no partial checksum", 24, long_vnet(0, 1, 54, 1448), 1500),
    ("not TCP GSO", 24, long_vnet(defs.VNET_F_NEEDS_CSUM, defs.VNET_GSO_TCPV4 | 4, 54, 1448, 34,
                                  16), 1500),
])
def test_what_cannot_leave_whole_is_punted_to_the_segmenter(impl, why, hdr, header, mtu):
    e = engine(impl, mtu=mtu)
    sf, _ = superframe(e)
    b = run(e, [sf], hdr=hdr, headers=[header], snap=12000)
    v, reason, out = b.results()[0]
    assert (v, reason, out) == (defs.V_PUNT, "punt_tunnel_gso", sf), why


def test_a_superframe_that_would_outgrow_64KiB_is_punted(impl):
    e = engine(impl)
    sf, _ = superframe(e, payload=b"y" * (65535 - 40 - 36 - 14 + 1))  # outer length 65536
    h = long_vnet(defs.VNET_F_NEEDS_CSUM, 1, 54, 1448, 34, 16)
    b = run(e, [sf], hdr=24, headers=[h], snap=65536 + 64)
    assert b.results()[0][:2] == (defs.V_PUNT, "punt_tunnel_gso")
    sf, _ = superframe(e, payload=b"y" * (65535 - 40 - 36 - 14))
    b = run(e, [sf], hdr=24, headers=[h], snap=65536 + 64)
    assert b.results()[0][:2] == (defs.V_TX, "tunnel_gso_fwd")
    assert len(b.frames()[0]) - 14 == 65535


def test_tunnel_segment_cuts_as_gso_does_and_continues_in_the_next_batch(impl):
    e = engine(impl, mtu=1000)                                  # mss 1000 - 50 - 40 = 910
    payload = bytes(range(251)) * 10                            # 2510 bytes: 910 910 690
    sf = bytearray(c2v(data=payload, flags=F.TH_ACK | F.TH_PUSH | F.TH_FIN | 0x80))
    sf[16:18] = b"\0\0"                      # a superframe's total length may be 0
    b = Batch(2, snap=2048)
    assert e.tunnel_segment(bytes(sf), b) == (2, 3) and b.n == 2
    segs = b.frames()
    assert e.tunnel_segment(bytes(sf), b, 2) == (1, 3) and b.n == 1
    segs += b.frames()
    assert e.tunnel_segment(bytes(sf), b, 3) == (0, 3)
    ident = struct.unpack("!H", sf[18:20])[0]
    got = b""
    for k, f in enumerate(segs):
        assert F.checksums_ok(f), k
        ip = dpkt.ethernet.Ethernet(f).data
        t = ip.data
        assert (ip.len, ip.id, ip.df, ip.offset) == (40 + len(t.data), (ident + k) & 0xFFFF, 1, 0)
        assert t.seq == 1000 + len(got) and len(t.data) == (910 if k < 2 else 690)
        assert bool(t.flags & F.TH_FIN) == bool(t.flags & F.TH_PUSH) == (k == 2), k
        assert bool(t.flags & 0x80) == (k == 0), k                # CWR on the first only
        assert f[:14] == bytes(sf[:14])
        got += bytes(t.data)
    assert got == payload
    # processed, each leaves in VXLAN within the MTU
    b = Batch(3, snap=2048)
    b.load(segs)
    e.process(b, NOW)
    assert [r[1] for r in b.results()] == ["tunnel_fwd"] * 3
    assert all(len(f) - 14 <= 1000 for f in b.frames())


@pytest.mark.parametrize("frame", [b"", b"\0" * 60, F.udp(GW, LB, CLIENT, VIP, 1, 80, b"x"),
                                   F.tcp(GW, LB, CLIENT, "198.19.100.1", 1, 80, data=b"x" * 3000)])
def test_tunnel_segment_leaves_what_it_cannot_cut(impl, frame):
    b = Batch(4, snap=2048)
    assert engine(impl).tunnel_segment(frame, b) == (0, 0)


@pytest.mark.parametrize("batch,first,exc", [
    (Batch(4, snap=1500, hdr=10), 0, ValueError), (Batch(4, snap=2048), -1, ValueError),
    (Batch(4, snap=512), 0, ValueError), (Batch(4, snap=2048), "0", TypeError)])
def test_tunnel_segment_refuses_bad_arguments(impl, batch, first, exc):
    with pytest.raises(exc):
        engine(impl).tunnel_segment(c2v(data=b"x" * 3000, flags=F.TH_ACK), batch, first)


def test_a_superframe_longer_than_the_segmenters_batch_goes_out_whole(impl):
    e = engine(impl)
    run(e, [c2v()])
    payload = bytes(range(256)) * 40
    sf = c2v(data=payload, flags=F.TH_ACK | F.TH_PUSH)
    seg = tmode.Segmenter(e)
    seg.ROWS = 3                                                # 8 segments, 3 per batch
    out = seg.handle(sf, NOW)
    assert isinstance(out, list) and len(out) == 8
    assert b"".join(bytes(dpkt.ethernet.Ethernet(f[50:]).data.data.data) for f in out) == payload
    assert seg.counters() == {"superframes": 1, "segmented": 8, "bad_frame": 0, "not_sent": 0,
                              "fragmented": 0, "fragments": 0}


def test_tunnel_mss_says_what_fits(impl):
    e = engine(impl, mtu=1400)
    assert e.tunnel_mss(c2v()) == 1400 - 50 - 40
    assert e.tunnel_mss(F.tcp(GW, LB, CLIENT, "198.19.100.1", 1, 80)) == 0   # a nat VIP
    assert e.tunnel_mss(b"\0" * 20) == 0


@pytest.mark.parametrize("bad", [b"", b"\0" * 60, F.udp(GW, LB, CLIENT, VIP, 1, 80, b"x")])
def test_the_segmenter_refuses_what_it_cannot_cut(impl, bad):
    seg = tmode.Segmenter(engine(impl))
    assert seg.handle(bad, NOW) == [] and seg.counters()["bad_frame"] == 1
