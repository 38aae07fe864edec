"""Compiled == twin on random and malformed frames and control calls: verdicts, rewritten
bytes, counters, flow tables and errors alike. Nothing here swallows an exception: a call
that raises on one twin must raise the same type on the other."""
from hypothesis import HealthCheck, given, settings, strategies as st

from fastpath import Batch, ServiceSpec, TunnelSpec, defs, twin
from tests.fastpath.fixtures import (B1, B2, B3, LB, VIP1, VIP2, VIP3, VIP7, b2c, c2v,
                                     make_engine)
from tools import frames as F

try:
    from fastpath import _engine
except ImportError:
    _engine = None

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

PORTS = (40000, 40001, 40002)
GWMAC = F.mac("02:74:77:00:00:01")
TEMPLATES = [t for p in PORTS for t in (
    c2v(sport=p), c2v(sport=p, flags=F.TH_ACK, data=b"GET / HTTP/1.1\r\n\r\n"),
    c2v(sport=p, dport=8080), c2v(sport=p, dport=8080, flags=F.TH_ACK), c2v(sport=p, vip=VIP3),
    c2v(sport=p, flags=F.TH_FIN | F.TH_ACK), c2v(sport=p, flags=F.TH_RST),
    c2v(sport=p, vip="198.19.100.4"), c2v(sport=p, vip="198.19.100.5"),
    c2v(sport=p, vip=VIP7), c2v(sport=p, vip=VIP7, flags=F.TH_ACK, data=b"x" * 1420),
    c2v(sport=p, vip=VIP7, flags=F.TH_ACK, data=b"x" * 1460, df=True),
    b2c(sport=p), b2c(sport=p, flags=F.TH_ACK, data=b"ok"), b2c(sport=p, flags=F.TH_FIN | F.TH_ACK),
    b2c(real=1, sport=p, flags=F.TH_ACK),
    F.udp(GWMAC, LB, "198.18.0.10", VIP2, p, 53, b"q"),
    F.udp(B3, LB, "198.19.0.13", "198.18.0.10", 5353, p, b"a"))] + [
    # ICMP errors about flows (both sides, every mode, short and long quotes)
    F.icmp_error(GWMAC, LB, "198.18.0.1", vip, F.tcp(LB, GWMAC, vip, "198.18.0.10", vport, p,
                                                     data=b"d" * 60, ttl=63), quote=q)
    for p in PORTS for q in (28, 48) for vip, vport in (
        (VIP1, 80), (VIP1, 8080), (VIP3, 80), (VIP7, 80), ("198.19.100.6", 80))] + [
    F.icmp_error(B1, LB, "198.19.0.11", "198.18.0.10",
                 F.tcp(LB, B1, "198.18.0.10", "198.19.0.11", p, 80, data=b"d" * 60), quote=48)
    for p in PORTS] + [
    F.icmp_error(GWMAC, LB, "198.18.0.1", VIP2, F.udp(LB, GWMAC, VIP2, "198.18.0.10", 53, p,
                                                      b"a"), type=11, code=0) for p in PORTS] + [
    # IP options (record route + NOP, or NOPs): nat both ways, dsr, tunnel
    f for p in PORTS for o in (b"\x07\x07\x04\0\0\0\0\x01", b"\x01" * 4) for f in (
        c2v(sport=p, ip_opts=o), c2v(sport=p, flags=F.TH_ACK, data=b"x" * 30, ip_opts=o),
        b2c(sport=p, ip_opts=o), c2v(sport=p, vip=VIP3, ip_opts=o), c2v(sport=p, vip=VIP7, ip_opts=o),
        c2v(sport=p, vip=VIP7, flags=F.TH_ACK, data=b"x" * 1460, df=True, ip_opts=o))] + [
    # fragments: firsts and later ones, both ways (nat), dsr, tunnel; any order in a list
    fr for p in PORTS[:2] for fr in
    F.fragments(F.udp(GWMAC, LB, "198.18.0.10", VIP2, p, 53, bytes(range(256)) * 9), 800)
    + F.fragments(F.udp(B3, LB, "198.19.0.13", "198.18.0.10", 5353, p, b"r" * 2000), 1000)
    + F.fragments(F.udp(GWMAC, LB, "198.18.0.10", VIP7, p, 80, b"t" * 2000), 900)
    + F.fragments(F.tcp(GWMAC, LB, "198.18.0.10", VIP3, p, 80, data=b"s" * 2500), 1480)] + [
    c2v(ttl=1), c2v(ttl=2),
    F.arp_request(B1, "198.19.0.11", "198.19.0.2"), F.icmp_echo(B2, LB, "198.19.0.12", "198.19.0.2"),
    F.eth(LB, GWMAC, b"\0\x01\x08\x00" + c2v()[14:], etype=0x8100),
]


def fix_ip_csum(f):
    if len(f) >= 34 and f[12:14] == b"\x08\x00" and (f[14] & 15) >= 5 and len(f) >= 14 + (f[14] & 15) * 4:
        ihl = (f[14] & 15) * 4
        f[24:26] = b"\0\0"
        f[24:26] = (~F.inet_sum(bytes(f[14:14 + ihl])) & 0xFFFF).to_bytes(2, "big")


@st.composite
def mutated(draw):
    f = bytearray(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        kind = draw(st.integers(0, 3))
        if kind == 0 and f:
            f[draw(st.integers(0, len(f) - 1))] = draw(st.integers(0, 255))
        elif kind == 1 and len(f) > 14:
            f[draw(st.integers(14, max(14, min(len(f) - 1, 60))))] = draw(st.integers(0, 255))
        elif kind == 2:
            del f[draw(st.integers(0, len(f))):]
        else:
            f += draw(st.binary(max_size=40))
    if draw(st.booleans()):
        fix_ip_csum(f)   # get past the header checksum to reach the deeper branches
    return bytes(f)


random_frames = st.one_of(
    mutated(), mutated(), mutated(),
    st.binary(max_size=120),
    st.binary(min_size=20, max_size=120).map(lambda b: LB + b[6:12] + b"\x08\x00" + b[14:]),
)

frame_lists = st.lists(st.tuples(random_frames, st.integers(0, 3000)), min_size=1, max_size=40)


def outcome(fn):
    try:
        return ("ok", fn())
    except Exception as exc:  # compared, not swallowed: both twins must fail alike
        return ("raise", type(exc).__name__)


def run_both(frames_and_gaps, capacity):
    results = []
    for mod in (_engine, twin):
        e = make_engine(mod.Engine, ServiceSpec, capacity=capacity, timeouts={"tcp_syn": 2, "udp": 2})
        now, out = 0, []
        for i in range(0, len(frames_and_gaps), 7):      # uneven bursts
            chunk = frames_and_gaps[i:i + 7]
            now += chunk[0][1]
            b = Batch(len(chunk))
            b.load([f for f, _ in chunk])
            out.append(outcome(lambda: (e.process(b, now), b.results())[1]))
            out.append(e.expire(now, 3))
        results.append((out, e.counters(), sorted(e.flows()), e.flow_count(),
                        [e.real_conns(i) for i in range(4)],
                        [e.real_stats(i) for i in range(5)], [e.vip_stats(s) for s in range(7)]))
    return results


def test_compiled_engine_is_present():
    assert _engine is not None, "compiled fast path missing: the differential tests compare nothing"


@SETTINGS
@given(frame_lists)
def test_frames_same_on_both_twins(frames_and_gaps):
    cy, py = run_both(frames_and_gaps, capacity=1024)
    assert cy == py


@SETTINGS
@given(frame_lists)
def test_frames_same_on_both_twins_tiny_table(frames_and_gaps):
    cy, py = run_both(frames_and_gaps, capacity=4)   # eviction on almost every new flow
    assert cy == py


specs = st.lists(st.builds(
    ServiceSpec,
    vip=st.one_of(st.integers(0, 2**32 - 1), st.just(F.ip2int(VIP1)), st.integers(-1, 0)),
    port=st.one_of(st.integers(0, 65535), st.just(80), st.just(70000)),
    proto=st.sampled_from([6, 17, 1]),
    mode=st.sampled_from([defs.MODE_NAT, defs.MODE_DSR, defs.MODE_TUNNEL, 0, 9]),
    sched=st.sampled_from([defs.SCHED_SEQ, defs.SCHED_HASH5, defs.SCHED_HASHSRC,
                           defs.SCHED_LEASTCONN, 0]),
    table=st.lists(st.integers(-1, 5), max_size=5),
    weights=st.lists(st.integers(-1, 3), max_size=5),
    flags=st.sampled_from([0, defs.SVC_EXPIRE_NODEST, 2]),
    l7=st.none(),
    tunnel=st.one_of(st.none(), st.builds(TunnelSpec, st.sampled_from([0, 1, 4242, 1 << 24]),
                                          st.sampled_from([100, 576, 1500, 9001]))),
    slot=st.one_of(st.none(), st.integers(-1, 3), st.just(1024))),
    max_size=4)


@SETTINGS
@given(specs, st.lists(mutated(), min_size=1, max_size=10),
       st.lists(st.tuples(st.one_of(st.just(F.ip2int(VIP1)), st.integers(-1, 2**32)),
                          st.sampled_from([80, 0, 70000]), st.integers(-3, 2),
                          st.integers(0, 2**32 - 1), st.integers(0, 65535)), max_size=6))
def test_control_calls_and_errors_same_on_both_twins(service_list, frames, picks):
    results = []
    for mod in (_engine, twin):
        e = make_engine(mod.Engine, ServiceSpec)
        e.set_real_up(1, False)
        r = [outcome(lambda: e.set_services(service_list))]
        b = Batch(len(frames))
        b.load(frames)
        r.append(outcome(lambda: (e.process(b, 5), b.results())[1]))
        r.append((e.counters(), sorted(e.flows()), [e.real_stats(i) for i in range(6)],
                  [e.vip_stats(s) for s in range(7)]))
        r += [outcome(lambda: e.pick(*p)) for p in picks]     # the same cursors moved alike
        results.append(r)
    assert results[0] == results[1]


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 65535),
       st.integers(0, 65535), st.integers(0, 255))
def test_hashes_same_on_both_twins(a, b, p, q, proto):
    assert _engine.flow_hash(a, b, p, q, proto) == twin.flow_hash(a, b, p, q, proto)
    assert _engine.mix64(a << 31) == twin.mix64(a << 31)


@SETTINGS
@given(st.lists(st.tuples(random_frames, st.booleans(), st.binary(min_size=9, max_size=9)),
                min_size=1, max_size=30))
def test_frames_same_on_both_twins_with_vnet_headers(items):
    """Rows with a virtio-net header; NEEDS_CSUM set at random (partial checksum rules)."""
    results = []
    for mod in (_engine, twin):
        e = make_engine(mod.Engine, ServiceSpec, capacity=64)
        b = Batch(len(items), snap=2048, hdr=10)
        b.load([f for f, _, _ in items], [bytes([1 if p else 0]) + rest for _, p, rest in items])
        r = outcome(lambda: (e.process(b, 7), b.results(), [b.header(i) for i in range(b.n)]))
        results.append((r, e.counters(), sorted(e.flows())))
    assert results[0] == results[1]


long_headers = st.tuples(
    st.sampled_from([0, defs.VNET_F_NEEDS_CSUM]),
    st.sampled_from([0, defs.VNET_GSO_TCPV4, defs.VNET_GSO_TCPV4 | defs.VNET_GSO_ECN, 4, 5,
                     defs.VNET_GSO_TCPV4 | defs.VNET_GSO_UDP_TUNNEL_IPV4]),
    st.integers(0, 65535), st.sampled_from([0, 536, 1448, 9000, 65535]), st.integers(0, 200),
    st.integers(0, 30), st.binary(min_size=14, max_size=14),
).map(lambda t: bytes([t[0], t[1]]) + b"".join(v.to_bytes(2, "little") for v in t[2:6]) + t[6])
superframes = st.builds(lambda n, fl: c2v(vip=VIP7, flags=fl, data=bytes(n)),
                        st.integers(1400, 9000), st.sampled_from([F.TH_ACK, F.TH_ACK | F.TH_PUSH]))


@SETTINGS
@given(st.lists(st.tuples(st.one_of(random_frames, superframes), long_headers), min_size=1,
                max_size=20))
def test_frames_same_on_both_twins_with_long_vnet_headers(items):
    """Rows with the TAP's long (UDP-tunnel GSO) header: tunnel superframes leave whole or
    are punted alike, their headers rewritten alike."""
    results = []
    for mod in (_engine, twin):
        e = make_engine(mod.Engine, ServiceSpec, capacity=64)
        warm = Batch(1)
        warm.load([c2v(vip=VIP7)])          # the flow exists: superframes meet it established
        e.process(warm, 6)
        b = Batch(len(items), snap=9200, hdr=defs.VNET_TNL_HDR_LEN)
        b.load([f for f, _ in items], [h for _, h in items])
        r = outcome(lambda: (e.process(b, 7), b.results(), [b.header(i) for i in range(b.n)]))
        results.append((r, e.counters(), sorted(e.flows())))
    assert results[0] == results[1]
    assert results[0][1]["rx_frames"] == len(items) + 1


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.integers(0, 5000), st.integers(0, 255), st.booleans(), st.sampled_from([576, 1000, 1500]),
       st.integers(1, 8), st.integers(0, 4), st.integers(0, 3),
       st.lists(st.tuples(st.integers(0, 5100), st.integers(0, 255)), max_size=3))
def test_tunnel_segment_same_on_both_twins(plen, flags, zero_len, mtu, rows, first, doff_words,
                                           pokes):
    """Superframes to the tunnel VIP cut alike: the same segments, counts and errors, also
    for wrong total lengths and data offsets (bytes poked at random offsets)."""
    payload = bytes((i * 7) & 0xFF for i in range(plen))
    f = bytearray(c2v(vip=VIP7, flags=flags, data=payload,
                      opts=b"\x01" * (4 * doff_words)))
    if zero_len:
        f[16:18] = b"\0\0"
    for off, val in pokes:
        if off < len(f):
            f[off] = val
    results = []
    for mod in (_engine, twin):
        e = make_engine(mod.Engine, ServiceSpec)
        e.set_services([ServiceSpec(F.ip2int(VIP7), 80, 6, defs.MODE_TUNNEL, defs.SCHED_HASH5,
                                    [4], [1], 0, None, TunnelSpec(4242, mtu))])
        b = Batch(rows, snap=1664)
        r = outcome(lambda: e.tunnel_segment(bytes(f), b, first))
        results.append((r, b.frames() if r[0] == "ok" else None))
    assert results[0] == results[1]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(random_frames, st.builds(lambda n, df: F.udp(GWMAC, LB, "198.18.0.10", VIP2, 1, 53,
                                                                bytes(n)) if not df else
                                          F.tcp(GWMAC, LB, "198.18.0.10", VIP2, 1, 53,
                                                data=bytes(n), df=True),
                                          st.integers(0, 9000), st.booleans())),
       st.integers(0, 10000), st.integers(1, 40), st.sampled_from([64, 600, 1600, 9100]),
       st.lists(st.tuples(st.integers(14, 40), st.integers(0, 255)), max_size=2))
def test_ip_fragment_same_on_both_twins(frame, mtu, rows, snap, pokes):
    """Packets cut into fragments alike (random, malformed, DF, odd MTUs): the same rows,
    counts and errors."""
    f = bytearray(frame)
    for off, val in pokes:
        if off < len(f):
            f[off] = val
    results = []
    for mod in (_engine, twin):
        b = Batch(rows, snap=snap, hdr=10)
        r = outcome(lambda: mod.ip_fragment(bytes(f), mtu, b))
        results.append((r, b.n, [b.frame(i) for i in range(b.n)],
                        [b.header(i) for i in range(b.n)]))
    assert results[0] == results[1]
