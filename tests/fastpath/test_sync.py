"""Flow sync between engines (fastpath/sync.pxi and its twin), on both twins: a flow made by
real frames on engine A, exported, imported into engine B with the same services, makes B
give the same output bytes for that flow's next frames as A (nat both ways, dsr, tunnel,
splice after binding both ways with timestamps and SACK); the export policy (threshold,
state change, periodic refresh); refused records (unknown backend, VIP, mode, hop);
malformed records and headers are counted drops; the twins give the same bytes."""
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fastpath import Batch, ServiceSpec, defs, twin
from tools import frames as F

from .fixtures import (B1, CLIENT, GW, LB, REALS, VIP1, VIP2, VIP3, VIP7, b2c, c2v,
                       make_engine, services)
from .test_splice import NOW, SECRET, VIP, handshake, opt_ts, parse, syn_opts

try:
    from fastpath import _engine
except ImportError:                      # the impl fixture fails the cy tests then
    _engine = None

M32 = 0xFFFFFFFF
B1_IP, B1_PORT = REALS[0][0], REALS[0][1]
HDR, REC = defs.SYNC_HDR_LEN, defs.SYNC_REC_LEN
MAXR = (1400 - HDR) // REC


def world(impl, svcs=None):
    e = make_engine(impl.Engine, ServiceSpec)
    e.set_splice_secret(SECRET)
    splice = ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1])
    e.set_services((services(ServiceSpec) if svcs is None else svcs) + [splice])
    return e


def run(e, frames, now=NOW):
    b = Batch(len(frames))
    b.load(frames)
    e.process(b, now)
    return b.results()


def records(data):
    """A datagram's records as (cip, vip, cport, vport, proto, mode, state) tuples."""
    assert data[:2] == bytes([defs.SYNC_MAGIC, defs.SYNC_VERSION])
    n = struct.unpack_from("!H", data, 2)[0]
    assert len(data) == HDR + n * REC
    return [struct.unpack_from("!IIHHBBB", data, HDR + k * REC) for k in range(n)]


def same_output(a, b, frames, now=NOW + 10):
    """The frames through a and through b, one by one: the same verdicts, reasons, bytes."""
    for f in frames:
        ra, rb = run(a, [f], now), run(b, [f], now)
        assert ra == rb, (ra, rb)
        assert ra[0][0] == defs.V_TX, ra
    return True


def moved(impl, a, now=NOW):
    """A's due flows exported and imported into a fresh B; returns B."""
    data = a.sync_export(MAXR, now)
    assert data
    b = world(impl)
    n = len(records(data))
    assert b.sync_import(data, now) == (n, 0)
    c = b.counters()
    assert c["sync_imported"] == n and c["flow_created"] == 0 and b.flow_count() == n
    return b


def test_nat_flow_moves_and_translates_both_ways(impl):
    a = world(impl)
    run(a, [c2v(), b2c(), c2v(flags=F.TH_ACK)])
    b = moved(impl, a)
    (fa,), (fb,) = a.flows(), b.flows()
    assert fa[:8] == fb[:8]                      # key, real, mode, state
    assert b.real_conns(0) == 1
    d = b"x" * 50
    assert same_output(a, b, [c2v(flags=F.TH_ACK | F.TH_PUSH, data=d),
                              b2c(flags=F.TH_ACK, data=d),
                              c2v(flags=F.TH_FIN | F.TH_ACK), b2c(flags=F.TH_FIN | F.TH_ACK)])
    assert b.counters()["drop_no_flow_non_syn"] == 0
    assert a.flows()[0][7] == b.flows()[0][7] == defs.S_TIME_WAIT


def test_nat_udp_flow_moves(impl):
    a = world(impl)
    q = F.udp(GW, LB, CLIENT, VIP2, 41002, 53, b"q")
    run(a, [q, q, q])
    b = moved(impl, a)
    assert same_output(a, b, [q, F.udp(REALS[2][2], LB, REALS[2][0], CLIENT, 5353, 41002, b"a")])


def test_dsr_and_tunnel_flows_keep_their_backend_when_the_peer_tables_differ(impl):
    a = world(impl)
    d = b"y" * 40
    for vip in (VIP3, VIP7):
        run(a, [c2v(vip=vip), c2v(vip=vip, flags=F.TH_ACK), c2v(vip=vip, flags=F.TH_ACK, data=d)])
    # B's dsr VIP has another backend now: without sync a moved flow would go there
    other = [s._replace(table=[1]) if s.mode == defs.MODE_DSR else s for s in services(ServiceSpec)]
    b = world(impl, other)
    data = a.sync_export(MAXR, NOW)
    assert sorted(r[5] for r in records(data)) == [defs.MODE_DSR, defs.MODE_TUNNEL]
    assert b.sync_import(data, NOW) == (2, 0)
    for vip in (VIP3, VIP7):
        assert same_output(a, b, [c2v(vip=vip, flags=F.TH_ACK | F.TH_PUSH, data=d)])
    c = b.counters()
    assert c["flow_created"] == 0 and c["flow_recreated"] == 0 and c["dsr_fwd"] == 1
    # the control: a flow B did not get goes to B's own backend
    fresh = world(impl, other)
    got = run(fresh, [c2v(vip=VIP3, flags=F.TH_ACK | F.TH_PUSH, data=d)])[0]
    assert got != run(a, [c2v(vip=VIP3, flags=F.TH_ACK | F.TH_PUSH, data=d)])[0]


def spliced(impl):
    """A spliced connection on a fresh engine, up to the backend's first data (which acks the
    request, so the engine holds nothing to replay). Returns (engine, frames to send next)."""
    e = world(impl)
    c_isn, out = handshake(e)
    cookie = parse(out).seq
    our_ts = struct.unpack("!II", dict(__import__("dpkt").tcp.parse_opts(parse(out).opts))[8])[0]
    req = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    ack = F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK | F.TH_PUSH, seq=c_isn + 1,
                ack=(cookie + 1) & M32, win=502, data=req, opts=opt_ts(1001, our_ts))
    assert run(e, [ack])[0][1] == "punt_splice"
    assert e.splice_bind(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80, 0, NOW, req)
    assert e.sync_export(MAXR, NOW) == b""       # not spliced yet: nothing to send
    s_isn = 0xFFFFFFF0
    synack = F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_SYN | F.TH_ACK, seq=s_isn,
                   ack=c_isn + 1, opts=syn_opts(ts=5000, ws=9)[:4]
                   + opt_ts(5000, 1001, lead=b"\x04\x02") + b"\x01\x03\x03\x09")
    assert run(e, [synack])[0][1] == "splice_replay"
    assert e.sync_export(MAXR, NOW) == b""       # the request is held for a replay still
    resp = b"HTTP/1.1 200 OK\r\n\r\nhello"
    data = F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_ACK | F.TH_PUSH,
                 seq=(s_isn + 1) & M32, ack=c_isn + 1 + len(req), win=100, data=resp,
                 opts=opt_ts(5001, 1001))
    assert run(e, [data])[0][1] == "splice_rev"
    fl = e.splice_flow(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)
    ts_off = fl["ts_off"]
    sack = b"\x01\x01\x05\x0a" + struct.pack("!II", (cookie + 11) & M32, (cookie + 21) & M32)
    nxt = [
        F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1 + len(req),
              ack=(cookie + 1 + len(resp)) & M32, win=600,
              opts=opt_ts(1002, (5001 + ts_off) & M32, lead=b"\x01", tail=b"\x01") + sack),
        F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_ACK | F.TH_PUSH,
              seq=(s_isn + 1 + len(resp)) & M32, ack=c_isn + 1 + len(req), win=77, data=resp,
              opts=opt_ts(5002, 1002)),
        F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_FIN | F.TH_ACK,
              seq=(s_isn + 1 + 2 * len(resp)) & M32, ack=c_isn + 1 + len(req),
              opts=opt_ts(5003, 1002)),
    ]
    return e, nxt


def test_a_spliced_flow_moves_and_translates_both_ways_with_timestamps_and_sack(impl):
    a, nxt = spliced(impl)
    b = moved(impl, a)
    fa = a.splice_flow(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)
    fb = b.splice_flow(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)
    assert fa == fb
    assert same_output(a, b, nxt)
    assert [x[1] for x in run(b, nxt[:1])] == ["splice_fwd"]
    assert b.counters()["splice_fwd"] == 2 and b.counters()["splice_rev"] == 2


def test_the_threshold_keeps_a_syn_flood_out(impl):
    a = world(impl)
    run(a, [c2v(sport=p) for p in range(42000, 42050)])
    assert a.flow_count() == 50 and a.sync_export(MAXR, NOW) == b""
    run(a, [b2c(sport=42000), c2v(sport=42000, flags=F.TH_ACK)])
    assert [r[2] for r in records(a.sync_export(MAXR, NOW))] == [42000]
    assert a.sync_export(MAXR, NOW) == b""                   # sent once
    run(a, [c2v(sport=42000, flags=F.TH_FIN | F.TH_ACK)])       # a state change: again
    assert [r[6] for r in records(a.sync_export(MAXR, NOW))] == [defs.S_FIN_WAIT]
    assert a.counters()["sync_exported"] == 2
    a.set_sync(1, 1000)
    assert len(records(a.sync_export(100, NOW))) == 49       # the SYNs count now
    with pytest.raises(ValueError):
        a.set_sync(0, 1000)
    with pytest.raises(ValueError):
        a.sync_export(0, NOW)


def test_a_live_flow_is_refreshed_every_period_and_an_idle_one_is_not(impl):
    a = world(impl)
    a.set_sync(3, 1000)
    run(a, [c2v(), b2c(), c2v(flags=F.TH_ACK)])
    assert a.sync_export(MAXR, NOW)
    run(a, [c2v(flags=F.TH_ACK)], NOW + 500)
    assert a.sync_export(MAXR, NOW + 999) == b""
    assert len(records(a.sync_export(MAXR, NOW + 1000))) == 1
    assert a.sync_export(MAXR, NOW + 5000) == b""            # no frame since: not again
    run(a, [c2v(flags=F.TH_ACK)], NOW + 5001)
    assert len(records(a.sync_export(MAXR, NOW + 6000))) == 1


def test_an_imported_flow_is_not_sent_back_and_expires_from_its_import_time(impl):
    a = world(impl)
    run(a, [c2v(), b2c(), c2v(flags=F.TH_ACK)])
    data = a.sync_export(MAXR, NOW)
    b = world(impl)
    b.sync_import(data, NOW + 100)
    assert b.sync_export(MAXR, NOW + 100) == b""
    assert b.flows()[0][9] == NOW + 100                       # last: the import time
    tmo = defs.DEFAULT_TIMEOUTS["tcp_established"] * 1000
    assert b.expire(NOW + 100 + tmo, 1024) == 0
    assert b.expire(NOW + 101 + tmo, 1024) == 1


def test_max_records_splits_the_export_and_the_scan_goes_on_where_it_stopped(impl):
    a = world(impl)
    for p in range(43000, 43030):
        run(a, [c2v(sport=p), b2c(sport=p), c2v(sport=p, flags=F.TH_ACK)])
    got = []
    while True:
        d = a.sync_export(7, NOW)
        if not d:
            break
        assert len(records(d)) <= 7
        got += [r[2] for r in records(d)]
    assert sorted(got) == list(range(43000, 43030))


def test_a_dump_has_every_flow_and_marks_nothing(impl):
    a = world(impl)
    run(a, [c2v(sport=p) for p in range(44000, 44010)])          # SYNs only: below threshold
    out, cur = [], 0
    while cur < 1024:
        d, cur = a.sync_dump(cur, 4)
        out += records(d) if d else []
    assert sorted(r[2] for r in out) == list(range(44000, 44010))
    assert a.sync_export(MAXR, NOW) == b""
    with pytest.raises(ValueError):
        a.sync_dump(1025, 4)


def test_an_update_moves_the_flow_to_the_backend_the_peer_chose(impl):
    a = world(impl)
    run(a, [c2v(), b2c(), c2v(flags=F.TH_ACK)])
    # B has the flow already, on another backend (its table pointed elsewhere)
    svcs = [s._replace(table=[3]) if (s.vip, s.port) == (F.ip2int(VIP1), 80) else s
            for s in services(ServiceSpec)]
    b = world(impl, svcs)
    b.set_real(3, F.ip2int("198.19.0.14"), 80, F.mac("02:00:00:00:0b:04"))
    run(b, [c2v()])
    assert b.real_conns(3) == 1
    assert b.sync_import(a.sync_export(MAXR, NOW), NOW) == (1, 0)
    assert b.counters()["sync_updated"] == 1 and b.flow_count() == 1
    assert (b.real_conns(0), b.real_conns(3)) == (1, 0)
    assert same_output(a, b, [c2v(flags=F.TH_ACK, data=b"z"), b2c(flags=F.TH_ACK, data=b"z")])


def test_records_this_engine_cannot_take_are_refused(impl):
    a = world(impl)
    run(a, [c2v(), b2c(), c2v(flags=F.TH_ACK)])
    data = a.sync_export(MAXR, NOW)
    b = world(impl)
    b.set_real(0, F.ip2int("198.19.0.99"), 80, B1)             # no such backend here
    assert b.sync_import(data, NOW) == (0, 1)
    assert b.counters()["sync_refused"] == 1 and b.flow_count() == 0
    c = world(impl, [s for s in services(ServiceSpec) if s.vip != F.ip2int(VIP1)])
    assert c.sync_import(data, NOW) == (0, 1)                  # no such VIP
    d = world(impl, [s._replace(mode=defs.MODE_DSR) if s.vip == F.ip2int(VIP1) else s
                     for s in services(ServiceSpec)])
    assert d.sync_import(data, NOW) == (0, 1)                  # the VIP has another mode
    hop = bytearray(data)
    hop[HDR + 13] = defs.MODE_HOP
    assert b.sync_import(bytes(hop), NOW) == (0, 1)
    assert b.counters()["sync_refused"] == 2 and b.counters()["sync_malformed"] == 0


def valid(impl):
    a = world(impl)
    run(a, [c2v(), b2c(), c2v(flags=F.TH_ACK)])
    return a.sync_export(MAXR, NOW)


@pytest.mark.parametrize("bad", [b"", b"\xf5\x01", b"\xf5\x01\x00\x02" + b"\0" * REC,
                                 b"\xf4\x01\x00\x00", b"\xf5\x02\x00\x00"])
def test_a_bad_header_is_one_counted_drop(impl, bad):
    b = world(impl)
    assert b.sync_import(bad, NOW) == (0, 0)
    assert b.counters()["sync_malformed"] == (0 if bad == b"\xf5\x01\x00\x00" else 1)
    with pytest.raises(ValueError):
        b.sync_import("not bytes", NOW)


@pytest.mark.parametrize("off,value", [(12, b"\x01"), (13, b"\x09"), (14, b"\x06"),
                                       (15, b"\x04"), (16, b"\0\0\0\0"), (22, b"\x01"),
                                       (57, b"\x01"), (60, b"\0"), (3, b"\0")])
def test_a_record_failing_a_check_is_a_counted_drop(impl, off, value):
    """protocol, mode, state, F_REV, no backend address, splice bytes in nat, the zero
    bytes, the key's hash; (3: a count that does not match the length: the header)."""
    data = bytearray(valid(impl))
    assert data[HDR + off:HDR + off + len(value)] != value
    data[HDR + off:HDR + off + len(value)] = value
    if off == 3:
        data[2:4] = b"\0\x02"
    b = world(impl)
    assert b.sync_import(bytes(data), NOW) == ((0, 0) if off == 3 else (0, 1))
    assert b.counters()["sync_malformed"] == 1 and b.flow_count() == 0


def twins():
    if _engine is None:
        pytest.fail("the compiled fast path is not built")
    return world(_engine), world(twin)


def state(e):
    out, cur = [], 0
    while cur < 1024:
        d, cur = e.sync_dump(cur, MAXR)
        out.append(d)
    return (sorted(e.flows()), b"".join(out), [e.real_conns(i) for i in range(5)],
            {k: v for k, v in e.counters().items() if k.startswith("sync")})


random_recs = st.builds(
    lambda key, mode, state_, flags, real, spl, tail: (key, mode, state_, flags, real, spl, tail),
    st.tuples(st.sampled_from([CLIENT, "198.18.0.11"]),
              st.sampled_from([VIP1, VIP2, VIP3, VIP7, VIP]), st.integers(40000, 40003),
              st.sampled_from([80, 53, 8080]), st.sampled_from([6, 17])),
    st.sampled_from([1, 2, 3, 4, 5, 0, 9]), st.integers(0, 8),
    st.sampled_from([0, 1, 2, 3, 8, 16, 4]), st.integers(0, 5),
    st.binary(min_size=35, max_size=35), st.booleans())
# (vip, port, proto, mode, real) of world()'s services: records this engine takes
SERVICES = [(VIP1, 80, 6, defs.MODE_NAT, 0), (VIP1, 8080, 6, defs.MODE_NAT, 1),
            (VIP2, 53, 17, defs.MODE_NAT, 2), (VIP3, 80, 6, defs.MODE_DSR, 0),
            (VIP7, 80, 6, defs.MODE_TUNNEL, 4), (VIP, 80, 6, defs.MODE_SPLICE, 0)]
u32 = st.integers(0, M32)
splice_fields = st.builds(
    lambda *v: struct.pack("!HIIIIIIHBBBBHB", *v),
    st.sampled_from([536, 1300, 1460]), u32, u32, u32, u32, u32, u32, st.integers(0, 0xFFFF),
    st.sampled_from([0, 7, 14, 0xF]), st.integers(0, 14), st.sampled_from([0, 7]),
    st.integers(0, 3), st.sampled_from([0, 1200, 1460]), st.integers(0, 1))


@st.composite
def valid_recs(draw):
    vip, port, proto, mode, real = draw(st.sampled_from(SERVICES))
    if proto == 17:
        state_ = defs.S_UDP
    elif mode == defs.MODE_SPLICE:
        state_ = draw(st.integers(defs.S_ESTABLISHED, defs.S_CLOSE))
    else:
        state_ = draw(st.integers(0, defs.S_CLOSE))
    flags = draw(st.sampled_from([0, defs.F_FIN_C, defs.F_FIN_S, defs.F_SEEN | defs.F_INLINE]))
    key = (draw(st.sampled_from([CLIENT, "198.18.0.11"])), vip,
           draw(st.integers(40000, 40003)), port, proto)
    spl = draw(splice_fields) if mode == defs.MODE_SPLICE else b"\0" * 35
    return (key, mode, state_, flags, real, spl, True)


recs = st.one_of(valid_recs(), random_recs)


def client_frame(r):
    """A frame from the record's client on its key (what the imported flow forwards)."""
    cip, vip, cport, vport, proto = r[0]
    if proto == 17:
        return F.udp(GW, LB, cip, vip, cport, vport, b"u")
    return F.tcp(GW, LB, cip, vip, cport, vport, flags=F.TH_ACK | F.TH_PUSH, data=b"t",
                 seq=0x1000, ack=0x2000, opts=opt_ts(7, 9))


def record_of(r):
    (cip, vip, cport, vport, proto), mode, state_, flags, real, spl, good_hash = r
    ip, port = (REALS[real][0], REALS[real][1]) if real < 5 else ("198.19.0.99", 80)
    h = twin.flow_hash(F.ip2int(cip), F.ip2int(vip), cport, vport, proto) & M32
    body = struct.pack("!IIHHBBBBIH", F.ip2int(cip), F.ip2int(vip), cport, vport, proto, mode,
                       state_, flags, F.ip2int(ip), port)
    body += spl if mode == defs.MODE_SPLICE else b"\0" * 35
    rec = body + b"\0\0\0" + struct.pack("!I", h if good_hash else h ^ 1)
    assert len(rec) == REC
    return rec


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(recs, max_size=12), st.binary(max_size=80), st.integers(0, 100))
def test_the_twins_take_the_same_records_and_give_the_same_bytes(rs, junk, cut):
    """Random records (valid and not) and damaged datagrams: the same verdicts, flows,
    counters and dump bytes from both twins; nothing raises."""
    cy, py = twins()
    data = bytes([defs.SYNC_MAGIC, defs.SYNC_VERSION]) + struct.pack("!H", len(rs)) \
        + b"".join(record_of(r) for r in rs)
    for d in (data, data[:len(data) * cut // 100], junk, data + junk[:1]):
        before = cy.counters()
        got = cy.sync_import(d, NOW)
        assert got == py.sync_import(d, NOW)
        c = {k: cy.counters()[k] - before[k] for k in before if k.startswith("sync")}
        if d is data:              # every record counted once: taken, refused or malformed
            assert sum(got) == len(rs) == (c["sync_imported"] + c["sync_updated"]
                                           + c["sync_refused"] + c["sync_malformed"])
            assert got[0] == c["sync_imported"] + c["sync_updated"]
        elif got == (0, 0) and len(d) != HDR:
            assert c["sync_malformed"] == 1                  # a bad header: one drop
    assert state(cy) == state(py)
    # frames through the imported flows: the same verdicts and bytes; then the same export
    frames = [client_frame(r) for r in rs] * 3
    assert run(cy, frames, NOW + 1) == run(py, frames, NOW + 1)
    assert cy.sync_export(MAXR, NOW + 2) == py.sync_export(MAXR, NOW + 2)
    assert state(cy) == state(py)


def test_the_twins_export_the_same_bytes_for_every_mode():
    cy, py = twins()
    for e in (cy, py):
        run(e, [c2v(), b2c(), c2v(flags=F.TH_ACK)])
        run(e, [F.udp(GW, LB, CLIENT, VIP2, 41002, 53, b"q")] * 3)
        for vip in (VIP3, VIP7):
            run(e, [c2v(vip=vip, sport=41003)] * 3)
    assert cy.sync_export(MAXR, NOW) == py.sync_export(MAXR, NOW)
    (a, _), (b, _) = spliced(_engine), spliced(twin)
    da, db = a.sync_export(MAXR, NOW), b.sync_export(MAXR, NOW)
    assert da == db and len(records(da)) == 1
    # compiled -> twin and back
    assert world(twin).sync_import(da, NOW) == world(_engine).sync_import(db, NOW) == (1, 0)


def test_a_record_onto_a_backend_side_key_a_live_flow_holds_is_refused(impl):
    """B has a live nat flow of VIP1 from the client's port 40000 on b1; A's record of a
    VIP2 flow from the same port on b1 (the same 4-tuple on the backend) is refused, and B's
    flow keeps its replies. Once B's flow is over (both FINs), the record is taken."""
    svcs = [ServiceSpec(F.ip2int(v), 80, 6, defs.MODE_NAT, defs.SCHED_SEQ, [0], [1])
            for v in (VIP1, VIP2)]
    a, b = world(impl, svcs), world(impl, svcs)
    run(a, [c2v(vip=VIP2, sport=40000), b2c(sport=40000), c2v(vip=VIP2, sport=40000,
                                                             flags=F.TH_ACK)])
    data = a.sync_export(MAXR, NOW)
    run(b, [c2v(vip=VIP1, sport=40000), b2c(sport=40000)])
    assert b.sync_import(data, NOW) == (0, 1)
    out = run(b, [b2c(sport=40000, flags=F.TH_ACK, data=b"x")])
    assert out[0][1] == "nat_rev" and F.int2ip(int.from_bytes(out[0][2][26:30], "big")) == VIP1
    run(b, [c2v(vip=VIP1, sport=40000, flags=F.TH_FIN | F.TH_ACK),
            b2c(sport=40000, flags=F.TH_FIN | F.TH_ACK)])
    assert b.sync_import(data, NOW) == (1, 0)
    assert b.counters()["sync_refused"] == 1
