"""Engine.export_state / import_state (fastpath/snapfmt.py, snapshot.pxi and its twin), on
both twins: export -> import -> export gives the same bytes; frames of imported flows
(nat both ways, udp, dsr, tunnel, a splice flow with its request still to replay, a SYN
cookie handed out before the export) forward exactly as on the engine they came from; a
compiled snapshot imports into the twin and back; a malformed snapshot is refused with a
message saying what is wrong, and the engine is unchanged."""
import struct

import dpkt

import pytest

from fastpath import Batch, ServiceSpec, defs, snapfmt, twin
from tools import frames as F

from .fixtures import B1, CLIENT, GW, LB, REALS, VIP2, VIP3, VIP7, b2c, c2v, make_engine, \
    services
from .test_splice import NOW, SECRET, VIP, handshake, parse, syn_opts

M32 = 0xFFFFFFFF
B1_IP, B1_PORT = REALS[0][0], REALS[0][1]
REQ = b"GET /s HTTP/1.1\r\nHost: a\r\n\r\n"


def world(impl, capacity=1024):
    e = make_engine(impl.Engine, ServiceSpec, capacity=capacity)
    e.set_splice_secret(SECRET)
    e.set_services(services(ServiceSpec)
                   + [ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1])])
    return e


def run(e, frames, now=NOW):
    b = Batch(len(frames))
    b.load(frames)
    e.process(b, now)
    return b.results()


def traffic(e):
    """Flows of every mode on e; returns what the next frames are (a list)."""
    run(e, [c2v(sport=41001), b2c(sport=41001), c2v(sport=41001, flags=F.TH_ACK)])     # nat
    run(e, [F.udp(GW, LB, CLIENT, VIP2, 41002, 53, b"q")])                             # nat udp
    run(e, [c2v(vip=VIP3, sport=41003)])                                               # dsr
    run(e, [c2v(vip=VIP7, sport=41004)])                                               # tunnel
    # splice: accepted, bound with its request, our SYN out; the backend has not answered
    c_isn, out = handshake(e)
    cookie = parse(out).seq
    assert run(e, [F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1,
                         ack=(cookie + 1) & M32, win=300)])[0][1] == "splice_accepted"
    assert e.splice_bind(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80, 0, NOW, REQ)
    # a cookie handed out, its ACK not yet in
    c2_isn, out2 = handshake(e, sport=40010, c_isn=0x1000)
    cookie2 = parse(out2).seq
    data = b"x" * 100
    return [
        c2v(sport=41001, flags=F.TH_ACK | F.TH_PUSH, data=data),
        b2c(sport=41001, flags=F.TH_ACK, data=data),
        F.udp(GW, LB, CLIENT, VIP2, 41002, 53, b"q2"),
        F.udp(REALS[2][2], LB, REALS[2][0], CLIENT, 5353, 41002, b"a"),
        c2v(vip=VIP3, sport=41003, flags=F.TH_ACK),
        c2v(vip=VIP7, sport=41004, flags=F.TH_ACK, data=data),
        # the backend's SYN-ACK: answered with the replayed request
        F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_SYN | F.TH_ACK, seq=0x5000,
              ack=c_isn + 1, opts=syn_opts(ts=5000, ws=7)),
        F.tcp(GW, LB, CLIENT, VIP, 40010, 80, flags=F.TH_ACK, seq=c2_isn + 1,
              ack=(cookie2 + 1) & M32, win=300),
    ]


def test_export_import_export_is_identical(impl):
    a = world(impl)
    traffic(a)
    s1 = a.export_state()
    b = world(impl)
    assert b.import_state(s1) == a.flow_count() == 5
    assert b.export_state() == s1
    assert sorted(b.flows()) == sorted(a.flows())
    assert b.counters() == a.counters()
    assert [b.real_conns(i) for i in range(5)] == [a.real_conns(i) for i in range(5)]


def test_imported_flows_forward_exactly_as_before(impl):
    a = world(impl)
    nxt = traffic(a)
    b = world(impl)
    b.import_state(a.export_state())
    later = NOW + 500
    ra = [run(a, [f], later)[0] for f in nxt]
    rb = [run(b, [f], later)[0] for f in nxt]
    assert rb == ra
    reasons = [r[1] for r in rb]
    assert reasons == ["nat_fwd", "nat_rev", "nat_fwd", "nat_rev", "dsr_fwd", "tunnel_fwd",
                       "splice_replay", "splice_accepted"], reasons
    assert REQ in rb[6][2]                   # the request travelled with its flow
    assert b.counters() == a.counters() and sorted(b.flows()) == sorted(a.flows())
    assert b.counters()["flow_created"] == a.counters()["flow_created"] == 6
    assert b.splice_waiting(later + 10_000) == a.splice_waiting(later + 10_000)


def test_a_compiled_snapshot_imports_into_the_twin_and_back():
    from fastpath import _engine
    a = world(_engine)
    nxt = traffic(a)
    s = a.export_state()
    p = world(twin)
    p.import_state(s)
    assert p.export_state() == s
    c = world(_engine)
    c.import_state(p.export_state())
    assert c.export_state() == s
    assert [run(p, [f], NOW + 1)[0] for f in nxt] == [run(c, [f], NOW + 1)[0] for f in nxt]


def test_the_twin_packs_the_compiled_structs():
    """twin/snapshot.py's record formats follow types.pxi: same sizes as the compiled
    engine's (a field appended to a struct there must be appended here) and every slot of
    the twin's Flow."""
    from fastpath import _engine
    h = dict(zip(snapfmt.HEADER_FIELDS,
                 snapfmt.HEADER.unpack_from(_engine.Engine(4).export_state())))
    assert (h["flow_size"], h["real_size"], h["frag_size"], h["wq_size"]) == (
        twin.snapshot.FLOW.size, twin.snapshot.REAL.size, twin.snapshot.FRAG.size,
        twin.snapshot.WAITQ.size)
    assert set(twin.snapshot.FLOW_NAMES) - {"pad"} == set(twin.types.Flow.__slots__) - {"idx"}
    assert set(twin.snapshot.REAL_NAMES) - {"has_mac"} == set(twin.types.Real.__slots__)
    assert set(twin.snapshot.FRAG_NAMES) == set(twin.types.Frag.__slots__)


def _offsets(fields):
    """{name: offset} of a list of (name, struct code) in native alignment."""
    out, fmt = {}, "@"
    for name, code in fields:
        size = struct.calcsize(code)
        at = struct.calcsize(fmt) if code.endswith("x") else (
            struct.calcsize(fmt + code) - size)
        if name is not None:
            out[name] = at
        fmt += code
    return out


# what the established forward path of nat, dsr and tunnel reads or writes of a flow:
# flow_find's key, process_frame's expiry/reuse/down checks, the routines (rip, rport, hf),
# track, flow_account
FWD_HOT = ("cip vip cport vport proto mode state flags rip rport real last hf pkts_fwd "
           "bytes_fwd vslot").split()


def test_the_flow_record_keeps_the_forward_path_in_one_cache_line():
    """types.pxi's Flow as the compiled engine, snapfmt and the twin see it: 192 bytes (three
    64-byte lines); snapfmt.FLOW_HEAD is the twin's FLOW up to created, field for field at
    the same offsets; every field the established forward path of nat, dsr and tunnel reads
    is in line 0 (the burst prefetches that line alone for them), and the reverse path's
    counters and splice's translation in line 1."""
    from fastpath import _engine
    h = dict(zip(snapfmt.HEADER_FIELDS,
                 snapfmt.HEADER.unpack_from(_engine.Engine(4).export_state())))
    assert h["flow_size"] == twin.snapshot.FLOW.size == 192
    tw = _offsets(twin.snapshot.FLOW_FIELDS)
    head = _offsets(zip(snapfmt.FLOW_HEAD_FIELDS, snapfmt.FLOW_HEAD.format.lstrip("@")))
    assert head == {k: tw[k] for k in snapfmt.FLOW_HEAD_FIELDS}
    assert list(tw)[:len(head)] == snapfmt.FLOW_HEAD_FIELDS
    sizes = dict((n, struct.calcsize(c)) for n, c in twin.snapshot.FLOW_FIELDS if n)
    assert [f for f in FWD_HOT if tw[f] + sizes[f] > 64] == []
    line1 = "pkts_rev bytes_rev rp c_isn l_isn delta ts_off c_tsval b_tsval mss c_win ws_c ws_b"
    assert [f for f in (line1 + " ws_lb sopt rp_len").split()
            if not 64 <= tw[f] < tw[f] + sizes[f] <= 128] == []
    assert snapfmt.VSLOT_OFF == tw["vslot"]


def _mutate(s, off, fmt, value):
    b = bytearray(s)
    struct.pack_into(fmt, b, off, value)
    return bytes(b)


def _hdr_off(name):
    fmt = snapfmt.HEADER.format.lstrip("=")
    codes = []
    i = 0
    while i < len(fmt):
        j = i
        while fmt[j].isdigit():
            j += 1
        codes.append(fmt[i:j + 1])
        i = j + 1
    k = snapfmt.HEADER_FIELDS.index(name)
    return struct.calcsize("=" + "".join(codes[:k])), "=" + codes[k]


def _flow_off(s, field):
    """Offset in s of `field` of the first flow record (FLOW_HEAD is one code per field)."""
    codes = snapfmt.FLOW_HEAD.format.lstrip("@").replace("6s", "")
    k = snapfmt.FLOW_HEAD_FIELDS.index(field)
    # (the field's own alignment counts: calcsize of the prefix alone has no tail padding)
    return snapfmt.HEADER.size + 4 + struct.calcsize("@" + codes[:k + 1]) - struct.calcsize(
        codes[k])


def malformed(s):
    def hdr(name, value):
        off, fmt = _hdr_off(name)
        return _mutate(s, off, fmt, value)

    def flow(field, fmt, value):
        return _mutate(s, _flow_off(s, field), fmt, value)

    return [
        ("truncated", s[:-3], "truncated in the counters"),
        ("header only", s[:snapfmt.HEADER.size - 1], "shorter than the header"),
        ("not bytes", 12345, "is bytes"),
        ("magic", hdr("magic", b"NOTASNAP"), "not an engine snapshot"),
        ("version", hdr("version", 99), "format version 99"),
        # the 160-byte Flow of version 1 (fields in another order) is never read as this one
        ("version 1", hdr("version", 1), "format version 1, this engine reads 2"),
        ("record size", hdr("flow_size", 200), "flow_size"),
        ("capacity", hdr("cap", 2048), "cap"),
        ("trailing", s + b"\0", "after the end"),
        ("tables cut", s[:snapfmt.HEADER.size + 100], "truncated"),
        ("state", flow("state", "@B", 99), "state 99"),
        ("real", flow("real", "@i", 9999), "real 9999"),
        ("hash", flow("hf", "@Q", 12345), "forward hash"),
        ("client moved", flow("cport", "@H", 1), "forward hash"),
        ("unused", flow("used", "@B", 0), "not marked used"),
        ("entry", _mutate(s, snapfmt.HEADER.size, "=I", 5000), "beyond the capacity"),
        ("hand", hdr("hand", 5000), "hand/sweep"),
        ("nused", hdr("nused", 6), "nused"),
        ("two on one key", _same_key(s), "two flows on one forward key"),
        ("vslot", _mutate(s, snapfmt.HEADER.size + 4 + snapfmt.VSLOT_OFF, "@H", 5000),
         "vslot 5000"),
    ]


def _same_key(s):
    """The second flow record given the first one's key and hashes (bytes 0..48 of Flow:
    the tuple, state, backend, time and forward hash; and the reverse hash)."""
    fsz = snapfmt.HEADER.unpack_from(s)[2]
    r1 = snapfmt.HEADER.size + 4
    r2 = r1 + 4 + fsz
    hr = _flow_off(s, "hr") - r1
    b = bytearray(s)
    b[r2:r2 + 48] = s[r1:r1 + 48]
    b[r2 + hr:r2 + hr + 8] = s[r1 + hr:r1 + hr + 8]
    return bytes(b)


def test_a_malformed_snapshot_is_refused_and_changes_nothing(impl):
    a = world(impl)
    traffic(a)
    s = a.export_state()
    b = world(impl)
    traffic(b)
    run(b, [c2v(sport=42000)])            # b differs from a
    before = b.export_state()
    for name, bad, words in malformed(s):
        with pytest.raises(ValueError) as ei:
            b.import_state(bad)
        assert words in str(ei.value), (name, str(ei.value))
        assert b.export_state() == before, name
    # the conns of a real that do not match its flows; a free list that lies
    conns_off = (snapfmt.HEADER.size + 5 * (4 + snapfmt.HEADER.unpack_from(s)[2])
                 + (1024 - 5) * 4 + snapfmt.REAL_HEAD.size - 8)
    with pytest.raises(snapfmt.SnapshotError, match="conns"):
        b.import_state(_mutate(s, conns_off, "@q", 7))
    free_off = snapfmt.HEADER.size + 5 * (4 + snapfmt.HEADER.unpack_from(s)[2])
    with pytest.raises(snapfmt.SnapshotError, match="free list"):
        b.import_state(_mutate(s, free_off, "=I", 0))
    assert b.export_state() == before
    # an engine of another capacity refuses it, naming the capacity
    with pytest.raises(snapfmt.SnapshotError, match="cap: the snapshot has 1024, this engine 512"):
        world(impl, capacity=512).import_state(s)


def test_the_services_learn_the_imported_reals(impl):
    """A splice VIP's cookie SYN-ACK promises no more MSS than its backends announced
    (learnt from their SYN-ACKs into the reals). The importing engine's services were set
    before the reals came: import_state derives the caps again, so both answer alike."""
    a = world(impl)
    traffic(a)
    c_isn = 0x7FFFFFF0
    synack = F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_SYN | F.TH_ACK, seq=0x5000,
                   ack=c_isn + 1, opts=syn_opts(ts=5000, ws=7, mss=1200))
    assert run(a, [synack])[0][1] == "splice_replay"
    b = world(impl)
    b.import_state(a.export_state())
    _, out_a = handshake(a, sport=40020)
    _, out_b = handshake(b, sport=40020)
    assert out_b == out_a
    assert struct.unpack("!H", dict(dpkt.tcp.parse_opts(parse(out_b).opts))[2])[0] == 1200


def test_the_vector_hash_is_the_engines(impl):
    """snapfmt checks every flow's hashes with numpy: the same function as flow_hash."""
    import random
    import numpy as np
    rnd = random.Random(7)
    keys = [(rnd.getrandbits(32), rnd.getrandbits(32), rnd.getrandbits(16), rnd.getrandbits(16),
             rnd.choice((6, 17))) for _ in range(200)] + [(0, 0, 0, 0, 0), (M32, M32, 65535, 65535, 255)]
    cols = [np.array(c, dtype=t) for c, t in zip(zip(*keys), (np.uint32, np.uint32, np.uint16,
                                                             np.uint16, np.uint8))]
    assert snapfmt.hash_of(*cols).tolist() == [impl.flow_hash(*k) for k in keys]


def test_vip_counter_slots_recount_their_flows_after_an_import(impl):
    """Engine.vctr is not in a snapshot: a slot's conns come back from the imported flows
    (each names its slot), its totals start again; the reals' metrics travel whole."""
    a = world(impl)
    traffic(a)
    b = world(impl)
    b.import_state(a.export_state())
    for slot in range(16):
        assert b.vip_stats(slot)[0] == a.vip_stats(slot)[0]
        assert b.vip_stats(slot)[1:] == (0, 0, 0, 0, 0)
    for idx in range(4):
        assert b.real_stats(idx) == a.real_stats(idx)
    assert sum(b.vip_stats(k)[0] for k in range(16)) == b.flow_count() > 0
