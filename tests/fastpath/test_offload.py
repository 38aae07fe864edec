"""Frames with a virtio-net header (TAP with IFF_VNET_HDR), on both twins. A frame flagged
NEEDS_CSUM carries a partial L4 checksum: the field holds the pseudo-header sum (not
inverted) and the kernel sums the L4 header and payload on the way out. After any rewrite,
completing the checksum as the kernel does must give the same bytes as a full recompute."""
import struct

import pytest

from fastpath import Batch, ServiceSpec, defs
from tools import frames as F

from .fixtures import B1, CLIENT, GW, LB, REALS, VIP1, VIP2, b2c, c2b, c2v, make_engine, v2c
from .test_splice import VIP as SVIP, engine as splice_engine, handshake, opt_ts, parse, tcp_opts

HDR = 10
NEEDS_CSUM = b"\x01" + b"\0" * 9


def to_partial(frame):
    """The frame as a sender with checksum offload hands it over: L4 field = pseudo sum."""
    f = bytearray(frame)
    ihl = (f[14] & 15) * 4
    tot = struct.unpack("!H", f[16:18])[0]
    co = 14 + ihl + (16 if f[23] == 6 else 6)
    pseudo = f[26:34] + struct.pack("!BBH", 0, f[23], tot - ihl)
    f[co:co + 2] = struct.pack("!H", F.inet_sum(pseudo))
    return bytes(f)


def complete(frame):
    """What the kernel does with a NEEDS_CSUM frame: sum from the L4 header, field included."""
    f = bytearray(frame)
    ihl = (f[14] & 15) * 4
    tot = struct.unpack("!H", f[16:18])[0]
    co = 14 + ihl + (16 if f[23] == 6 else 6)
    f[co:co + 2] = struct.pack("!H", ~F.inet_sum(f[14 + ihl:14 + tot]) & 0xFFFF)
    return bytes(f)


def run(e, frames, partial=True, now=5_000_000):
    b = Batch(len(frames), snap=4096, hdr=HDR)
    b.load(frames, [NEEDS_CSUM if partial else b"\0" * HDR] * len(frames))
    e.process(b, now)
    return [(v, r, f, b.header(i)) for i, (v, r, f) in enumerate(b.results())]


@pytest.mark.parametrize("direction", ["fwd", "rev"])
def test_nat_partial_checksum(impl, direction):
    e = make_engine(impl.Engine, ServiceSpec)
    pairs = [(c2v(data=b"x" * 1000), c2b(data=b"x" * 1000))] if direction == "fwd" else [
        (c2v(), c2b()), (b2c(flags=F.TH_ACK, data=b"y" * 999), v2c(flags=F.TH_ACK, data=b"y" * 999))]
    out = run(e, [to_partial(a) for a, _ in pairs])
    for (v, r, f, h), (_, want) in zip(out, pairs):
        assert v == defs.V_TX and h == NEEDS_CSUM
        assert complete(f) == want and F.checksums_ok(complete(f))


def test_udp_partial_checksum(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    frame = F.udp(GW, LB, CLIENT, VIP2, 5000, 53, b"query")
    want = F.udp(LB, REALS[2][2], CLIENT, "198.19.0.13", 5000, 5353, b"query", ttl=63)
    (v, r, f, h), = run(e, [to_partial(frame)])
    assert r == "nat_fwd" and complete(f) == want


def test_complete_checksums_stay_complete_with_a_vnet_header(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    (v, r, f, h), = run(e, [c2v()], partial=False)
    assert f == c2b() and h == b"\0" * HDR


def test_a_gso_superframe_is_rewritten_once(impl):
    """A 60 KB TCP superframe (GSO): headers rewritten, payload untouched, header kept."""
    e = make_engine(impl.Engine, ServiceSpec)
    gso = struct.pack("<BBHHHH", 1, 1, 54, 1448, 34, 16)     # NEEDS_CSUM, TCPV4, mss 1448
    big = to_partial(c2v(flags=F.TH_ACK, data=bytes(range(256)) * 234))
    run(e, [to_partial(c2v())])                                # the flow's SYN
    b = Batch(1, snap=65600, hdr=HDR)
    b.load([big], [gso])
    e.process(b, 5_000_000)
    (v, r, f), = b.results()
    assert r == "nat_fwd" and b.header(0) == gso and len(f) == len(big)
    assert complete(f) == c2b(flags=F.TH_ACK, data=bytes(range(256)) * 234)


def test_splice_partial_checksums(impl):
    e = splice_engine(impl)
    c_isn, out = handshake(e)
    cookie = parse(out).seq
    our_ts = struct.unpack("!II", tcp_opts(parse(out))[8])[0]
    # a partial SYN-ACK in, a complete one out with a zeroed vnet header
    syn = F.tcp(GW, LB, CLIENT, SVIP, 40001, 80, flags=F.TH_SYN, seq=9, opts=b"\x02\x04\x05\xb4")
    (v, r, f, h), = run(e, [to_partial(syn)])
    assert r == "splice_synack" and h == b"\0" * HDR and F.checksums_ok(f)
    run(e, [to_partial(F.tcp(GW, LB, CLIENT, SVIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1,
                             ack=(cookie + 1) & 0xFFFFFFFF, opts=opt_ts(1001, our_ts)))])
    e.splice_bind(F.ip2int(CLIENT), 40000, F.ip2int(SVIP), 80, 0, 5_000_000)
    s_isn = 1000
    run(e, [to_partial(F.tcp(B1, LB, REALS[0][0], CLIENT, 80, 40000, flags=F.TH_SYN | F.TH_ACK,
                             seq=s_isn, ack=c_isn + 1,
                             opts=b"\x02\x04\x05\xb4\x04\x02" + b"\x08\x0a" + struct.pack("!II", 5000, 1001)
                             + b"\x01\x03\x03\x07"))])
    fl = e.splice_flow(F.ip2int(CLIENT), 40000, F.ip2int(SVIP), 80)
    delta, ts_off = (cookie - s_isn) & 0xFFFFFFFF, fl["ts_off"]
    data = F.tcp(B1, LB, REALS[0][0], CLIENT, 80, 40000, flags=F.TH_ACK, seq=s_isn + 1,
                 ack=c_isn + 1, win=50, data=b"z" * 1200, opts=opt_ts(5001, 1001))
    want = F.tcp(LB, GW, SVIP, CLIENT, 80, 40000, flags=F.TH_ACK, seq=(s_isn + 1 + delta) & 0xFFFFFFFF,
                 ack=c_isn + 1, win=50, data=b"z" * 1200, opts=opt_ts((5001 + ts_off) & 0xFFFFFFFF, 1001),
                 ttl=63)
    (v, r, f, h), = run(e, [to_partial(data)])
    assert r == "splice_rev" and complete(f) == want
