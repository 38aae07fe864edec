"""IPv4 fragments through the fast path (fastpath/frag.pxi and its twin), on both twins: the
first fragment scheduled like any packet, the later ones following it by (src, dst, IP id,
proto) and translated (nat: the IP header only) or forwarded (dsr, tunnel), both ways for nat;
what has no first, timed out, or belongs to a mode that forwards no fragments, counted.
Expected frames are the translated datagram cut the same way, built with tools/frames.py."""
import pytest

from fastpath import Batch, ServiceSpec, TunnelSpec, defs
from modes import tunnel as tmode
from tools import frames as F

from .fixtures import B1, B3, CLIENT, GW, LB, REALS, VIP2, VIP3, make_engine

B1_IP, B3_IP = REALS[0][0], REALS[2][0]
VIP7 = "198.19.100.7"
NOW = 1_000_000


def run(e, frames, now=NOW, snap=2048):
    b = Batch(len(frames), snap=snap)
    b.load(frames)
    e.process(b, now)
    return b.results()


def datagram(size=4000):
    return bytes((i * 13 + 7) & 0xFF for i in range(size))


def test_nat_fragments_both_ways(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    data = datagram()
    q = F.udp(GW, LB, CLIENT, VIP2, 5000, 53, data)
    got = run(e, F.fragments(q, 1480))
    want = F.fragments(F.udp(LB, B3, CLIENT, B3_IP, 5000, 5353, data, ttl=63), 1480)
    assert [(v, r) for v, r, _ in got] == [(defs.V_TX, "nat_fwd")] + [
        (defs.V_TX, "nat_frag_fwd")] * 2
    assert [f for _, _, f in got] == want
    # the backend's answer, fragmented by its stack, back to the client from the VIP
    a = F.udp(B3, LB, B3_IP, CLIENT, 5353, 5000, data[::-1])
    got = run(e, F.fragments(a, 1000))
    want = F.fragments(F.udp(LB, GW, VIP2, CLIENT, 53, 5000, data[::-1], ttl=63), 1000)
    assert [r for _, r, _ in got] == ["nat_rev"] + ["nat_frag_rev"] * 4
    assert [f for _, _, f in got] == want
    c = e.counters()
    assert (c["frag_first"], c["flow_created"], c["drop_frag_no_first"]) == (2, 1, 0)
    (fl,) = e.flows()
    assert fl[-4:] == (3, 5, sum(len(f) for f in F.fragments(q, 1480)),
                       sum(len(f) for f in F.fragments(a, 1000)))


def test_later_fragments_out_of_order_follow_the_first(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    frs = F.fragments(F.udp(GW, LB, CLIENT, VIP2, 5000, 53, datagram(6000)), 1480)
    got = run(e, [frs[0], frs[3], frs[1], frs[2], frs[4]])
    assert [r for _, r, _ in got] == ["nat_fwd"] + ["nat_frag_fwd"] * 4


def test_dsr_fragments_go_to_the_backends_mac_untouched(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    e.set_services([ServiceSpec(F.ip2int(VIP3), 53, 17, defs.MODE_DSR, defs.SCHED_HASH5, [0], [1])])
    frs = F.fragments(F.udp(GW, LB, CLIENT, VIP3, 5000, 53, datagram()), 1480)
    got = run(e, frs)
    assert [r for _, r, _ in got] == ["dsr_fwd", "dsr_frag_fwd", "dsr_frag_fwd"]
    assert [f for _, _, f in got] == [B1 + LB + f[12:] for f in frs]


@pytest.mark.parametrize("size", [1000, 1480])
def test_tunnel_fragments_in_vxlan(impl, size):
    """Fragments that fit once encapsulated go out (the first as tunnel_fwd); those that do
    not are encapsulated and punted to be cut into outer fragments (punt_tunnel_frag)."""
    e = make_engine(impl.Engine, ServiceSpec)
    e.set_services([ServiceSpec(F.ip2int(VIP7), 53, 17, defs.MODE_TUNNEL, defs.SCHED_HASH5, [4], [1],
                                0, None, TunnelSpec(4242, 1500))])
    frs = F.fragments(F.udp(GW, LB, CLIENT, VIP7, 5000, 53, datagram()), size)
    got = run(e, frs)
    fits = [len(fr) - 14 + 50 <= 1500 for fr in frs]
    assert [r for _, r, _ in got] == [
        ("tunnel_fwd" if k == 0 else "tunnel_frag_fwd") if fit else "punt_tunnel_frag"
        for k, fit in enumerate(fits)]
    for (v, r, out), fr in zip(got, frs):
        assert out[50:] == tmode.VXLAN_INNER_MAC + LB + fr[12:] and F.checksums_ok(out)
    sports = {out[34:36] for _, _, out in got}
    assert len(sports) == 1                       # one flow, one outer source port
    ids = [int.from_bytes(out[18:20], "big") for v, _, out in got if v == defs.V_PUNT]
    assert len(set(ids)) == len(ids) and 0 not in ids     # to be fragmented: an IP id each
    assert all(out[18:20] == b"\0\0" for v, _, out in got if v == defs.V_TX)
    if ids:
        # modes/tunnel.py cuts each into outer fragments the backend reassembles
        seg = tmode.Segmenter(e)
        punted = [out for v, _, out in got if v == defs.V_PUNT]
        for out in punted:
            assert e.tunnel_frag_mtu(out) == 1500
            b = seg.handle(out, NOW, defs.C["punt_tunnel_frag"])
            pieces = [b.frame(i) for i in range(b.n)]
            assert all(len(p) - 14 <= 1500 and F.inet_sum(p[14:34]) == 0xFFFF for p in pieces)
            assert reassemble(pieces) == out
        assert seg.counters()["fragmented"] == len(punted)


def reassemble(pieces):
    """The IP packet the fragments came from (in order, no overlap), as an Ethernet frame."""
    body = b"".join(p[34:14 + int.from_bytes(p[16:18], "big")] for p in pieces)
    first = bytearray(pieces[0][:34])
    first[16:18] = (20 + len(body)).to_bytes(2, "big")
    first[20:22] = b"\0\0"
    first[24:26] = b"\0\0"
    first[24:26] = (~F.inet_sum(bytes(first[14:34])) & 0xFFFF).to_bytes(2, "big")
    return bytes(first) + body


@pytest.mark.parametrize("size,mtu", [(3000, 1500), (1600, 576), (60000, 1500), (9000, 9000)])
def test_ip_fragment_cuts_as_a_router_does(impl, size, mtu):
    pkt = F.udp(GW, LB, CLIENT, VIP2, 1, 2, datagram(size))
    b = Batch(64, snap=9100, hdr=10)
    n = impl.ip_fragment(pkt, mtu, b)
    if 20 + 8 + size <= mtu:
        assert n == 0 and b.n == 0
        return
    pieces = [b.frame(i) for i in range(n)]
    assert n == b.n == -(-(8 + size) // ((mtu - 20) // 8 * 8))
    assert all(len(p) - 14 <= mtu and F.inet_sum(p[14:34]) == 0xFFFF for p in pieces)
    assert all(b.header(i) == bytes(10) for i in range(n))
    mf = [bool(p[20] & 0x20) for p in pieces]
    assert mf == [True] * (n - 1) + [False]
    assert reassemble(pieces) == pkt


@pytest.mark.parametrize("frame", [
    b"", b"\0" * 60, F.udp(GW, LB, CLIENT, VIP2, 1, 2, b"x" * 3000)[:100],
    F.tcp(GW, LB, CLIENT, VIP2, 1, 2, data=b"x" * 3000, df=True)])
def test_ip_fragment_leaves_what_it_may_not_cut(impl, frame):
    b = Batch(8, snap=2048)
    assert impl.ip_fragment(frame, 1500, b) == 0 and b.n == 0


@pytest.mark.parametrize("mtu,batch", [(27, Batch(8)), (65536, Batch(8)), (1500, Batch(1)),
                                       (1500, Batch(8, snap=600))])
def test_ip_fragment_refuses_bad_arguments(impl, mtu, batch):
    with pytest.raises(ValueError):
        impl.ip_fragment(F.udp(GW, LB, CLIENT, VIP2, 1, 2, b"x" * 3000), mtu, batch)


def test_a_later_fragment_after_the_timeout_has_no_first(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    frs = F.fragments(F.udp(GW, LB, CLIENT, VIP2, 5000, 53, datagram()), 1480)
    run(e, frs[:1])
    assert run(e, frs[1:2], NOW + defs.FRAG_TIMEOUT_MS)[0][1] == "nat_frag_fwd"
    assert run(e, frs[2:], NOW + defs.FRAG_TIMEOUT_MS + 1)[0][1] == "drop_frag_no_first"


def test_a_later_fragment_whose_flow_is_gone_has_no_first(impl):
    e = make_engine(impl.Engine, ServiceSpec, timeouts={"udp": 1})
    frs = F.fragments(F.udp(GW, LB, CLIENT, VIP2, 5000, 53, datagram()), 1480)
    run(e, frs[:1])
    assert e.expire(NOW + 2000, 100) == 1
    assert run(e, frs[1:2], NOW + 2000)[0][1] == "drop_frag_no_first"


def test_splice_forwards_no_fragments(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    e.set_splice_secret(bytes(16))
    e.set_services([ServiceSpec(F.ip2int("198.19.100.6"), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ,
                                [0], [1])])
    syn = F.tcp(GW, LB, CLIENT, "198.19.100.6", 40000, 80, flags=F.TH_SYN, data=b"x" * 2000)
    frs = F.fragments(syn, 1480)
    assert [r for _, r, _ in run(e, frs)] == ["drop_ip_fragment", "drop_frag_no_first"]


def test_the_table_is_bounded_and_evicts_the_oldest(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    n = defs.FRAG_SLOTS + 200
    firsts = [F.fragments(F.udp(GW, LB, CLIENT, VIP2, 1000 + k % 50000, 53, datagram(1600)),
                          1480)[0] for k in range(n)]
    for k, f in enumerate(firsts):            # distinct IP ids: one datagram each
        f = bytearray(f)
        f[18:20] = (k & 0xFFFF).to_bytes(2, "big")
        f[24:26] = b"\0\0"
        f[24:26] = (~F.inet_sum(bytes(f[14:34])) & 0xFFFF).to_bytes(2, "big")
        firsts[k] = bytes(f)
    for i in range(0, n, 256):
        run(e, firsts[i:i + 256], NOW + i)
    c = e.counters()
    assert c["frag_first"] == n and c["frag_evicted"] > 0
