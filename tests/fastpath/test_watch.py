"""The watch hook (fastpath/watch.pxi, twin/watch.py) and the keyed trace lookups
(Engine.flow_get, Engine.explain), on both twins: a watched flow's frames land in the ring
with the verdict, the counters they moved and the bytes process() sent; other frames never;
a full ring counts its losses; no watch records nothing."""
import time

import pytest

from fastpath import Batch, ServiceSpec, defs
from tests.fastpath.fixtures import (CLIENT, REALS, VIP1, VIP3, VIP7, b2c, c2b, c2v,
                                     make_engine, v2c)
from tools import frames as F

ip = F.ip2int
OTHER_CLIENT = "198.18.0.77"


def other(vip=VIP1, sport=40001, flags=F.TH_SYN):
    from tests.fastpath.fixtures import GW, LB
    return F.tcp(GW, LB, OTHER_CLIENT, vip, sport, 80, flags=flags)


def run(e, frames, now=1000, hdr=0):
    b = Batch(len(frames), snap=2048, hdr=hdr)
    b.load(frames)
    e.process(b, now)
    return b


@pytest.fixture
def eng(impl):
    return make_engine(impl.Engine, ServiceSpec)


def test_watched_flow_recorded_with_verdict_counters_and_sent_bytes(eng):
    eng.watch_set([(defs.W_HOST, ip(CLIENT))])
    t0 = time.time_ns()
    frames = [c2v(), other(), b2c(), c2v(flags=F.TH_ACK, data=b"GET /")]
    b = run(eng, frames)
    recs = eng.watch_drain()
    assert len(recs) == 3                       # the other client's SYN is not there
    syn, synack, data = recs
    ts, verdict, reason, in_len, in_b, out_len, out_b, ctrs, flow = syn
    assert t0 <= ts <= time.time_ns()
    assert verdict == defs.V_TX and defs.COUNTERS[reason] == "nat_fwd"
    assert in_b == frames[0] and in_len == len(frames[0])
    assert out_b == b.frame(0) == c2b() and out_len == len(out_b)
    assert dict(ctrs) == {"rx_frames": 1, "nat_fwd": 1, "flow_created": 1}
    assert flow == (ip(CLIENT), 40000, ip(VIP1), 80, 6, ip(REALS[0][0]), 80, 0,
                    defs.MODE_NAT, defs.S_SYN_SENT, 1)
    # the reply matches on the frame as received (the backend -> client) and as sent
    assert synack[4] == frames[2] and synack[6] == b.frame(2) == v2c()
    assert dict(synack[7]) == {"rx_frames": 1, "nat_rev": 1}
    assert synack[8][-1] == 0 and synack[8][9] == defs.S_SYN_RECV
    assert data[6] == b.frame(3)
    assert data[8][9] == defs.S_ESTABLISHED
    st = eng.watch_status()
    assert st["on"] and st["seen"] == 3 and st["lost"] == 0 and st["pending"] == 0


def test_a_drop_is_recorded_without_sent_bytes(eng):
    eng.watch_set([(defs.W_DPORT, 80), (defs.W_DST, ip("198.19.100.4"))])
    run(eng, [c2v(vip="198.19.100.4"), c2v()])
    (rec,) = eng.watch_drain()
    assert rec[1] == defs.V_DROP and defs.COUNTERS[rec[2]] == "drop_no_backend"
    assert rec[5] == 0 and rec[6] == b"" and rec[8] is None
    assert dict(rec[7]) == {"rx_frames": 1, "drop_no_backend": 1}


def test_filter_on_the_backend_matches_the_frame_as_sent(eng):
    # a backend's address is in the nat frame only once it is rewritten; the tunnel's frame
    # as sent carries the client's inside VXLAN, to the remote backend's address
    eng.watch_set([(defs.W_HOST, ip(REALS[0][0])), (defs.W_PORT, 80)])
    b = run(eng, [c2v(), c2v(vip=VIP7), other(vip=VIP3)])
    recs = eng.watch_drain()
    # nat: to b1 after the rewrite; dsr to b1 keeps the VIP in IP (MAC only): not matched
    assert [r[6] for r in recs] == [b.frame(0)]
    eng.watch_set([(defs.W_SRC, ip(CLIENT)), (defs.W_DPORT, 80), (defs.W_DST, ip(VIP7))])
    b = run(eng, [c2v(vip=VIP7, sport=41000)])
    (rec,) = eng.watch_drain()
    assert rec[6] == b.frame(0) and rec[8][8] == defs.MODE_TUNNEL
    eng.watch_set([(defs.W_DST, ip(REALS[4][0]))])     # the tunnel's outer destination
    b = run(eng, [c2v(vip=VIP7, sport=41001, flags=F.TH_ACK)])
    assert [r[6] for r in eng.watch_drain()] == [b.frame(0)]


def test_unwatched_frames_never_recorded(eng):
    eng.watch_set([(defs.W_HOST, ip("198.18.9.9"))])
    run(eng, [c2v(), other(), b2c(), F.arp_request(F.mac("02:00:00:00:00:99"), "198.19.0.1",
                                                  "198.19.0.2"), b"\x00" * 10])
    assert eng.watch_drain() == []
    assert eng.watch_status()["seen"] == 0


def test_ring_overflow_counted_and_never_blocks(eng):
    eng.watch_set([(defs.W_HOST, ip(CLIENT))], snap=64, size=2)
    frames = [c2v(sport=40000 + k) for k in range(5)]
    b = run(eng, frames)
    assert list(b.verdict[:5]) == [defs.V_TX] * 5       # every frame processed all the same
    st = eng.watch_status()
    assert st["seen"] == 5 and st["lost"] == 3 and st["pending"] == 2
    recs = eng.watch_drain(limit=1)
    assert len(recs) == 1 and recs[0][4] == frames[0][:64] and recs[0][3] == len(frames[0])
    recs = eng.watch_drain()
    assert len(recs) == 1 and recs[0][4] == frames[1][:64]
    run(eng, [c2v(sport=40010)])                        # room again
    assert len(eng.watch_drain()) == 1 and eng.watch_status()["lost"] == 3


def test_watch_off_records_nothing_and_frames_are_the_same(impl):
    watched = make_engine(impl.Engine, ServiceSpec)
    plain = make_engine(impl.Engine, ServiceSpec)
    watched.watch_set([])                               # every frame
    frames = [c2v(), other(), b2c(), c2v(vip=VIP7), c2v(vip=VIP3, sport=40005)]
    bw, bp = run(watched, frames), run(plain, frames)
    assert bw.results() == bp.results()
    assert watched.counters() == plain.counters()
    assert len(watched.watch_drain()) == len(frames)
    watched.watch_set(None)
    run(watched, [c2v(sport=40100)])
    assert watched.watch_drain() == []
    assert watched.watch_status() == {"on": False, "terms": [], "snap": 0, "size": 0,
                                      "pending": 0, "seen": 0, "lost": 0}


def test_vnet_header_not_in_the_record(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    e.watch_set([(defs.W_PROTO, 6)])
    b = run(e, [c2v()], hdr=10)
    (rec,) = e.watch_drain()
    assert rec[4] == c2v() and rec[6] == b.frame(0) == c2b()


@pytest.mark.parametrize("terms,snap,size", [
    ([(99, 1)], 2048, 16), ([(defs.W_PORT, 70000)], 2048, 16), ([(defs.W_HOST,)], 2048, 16),
    ([], 10, 16), ([], 2048, 0), ([(defs.W_PORT, 1)] * 9, 2048, 16), ([(True, 1)], 2048, 16)])
def test_bad_watch_raises_and_changes_nothing(eng, terms, snap, size):
    eng.watch_set([(defs.W_HOST, ip(CLIENT))])
    with pytest.raises(ValueError):
        eng.watch_set(terms, snap, size)
    run(eng, [c2v()])
    assert len(eng.watch_drain()) == 1


def test_flow_get_both_keys_and_explain(eng):
    run(eng, [c2v(), b2c(), c2v(flags=F.TH_ACK, data=b"x" * 10)], now=5000)
    fwd = eng.flow_get(ip(CLIENT), 40000, ip(VIP1), 80, 6)
    assert fwd["key"] == "fwd" and fwd["real"] == 0 and fwd["mode"] == defs.MODE_NAT
    assert fwd["state"] == defs.S_ESTABLISHED and fwd["created"] == 5000
    assert (fwd["pkts_fwd"], fwd["pkts_rev"]) == (2, 1)
    assert fwd["bytes_fwd"] == len(c2v()) + len(c2v(flags=F.TH_ACK, data=b"x" * 10))
    assert "xlate" not in fwd
    rev = eng.flow_get(ip(REALS[0][0]), 80, ip(CLIENT), 40000, 6)
    assert rev["key"] == "rev" and rev["index"] == fwd["index"]
    assert eng.flow_get(ip(CLIENT), 40001, ip(VIP1), 80, 6) is None
    assert eng.flow_get(ip(CLIENT), 40000, ip(VIP1), 80, 17) is None
    # explain does not move the rr cursor: pick after it gives what explain said
    x = eng.explain(ip(CLIENT), 40002, ip(VIP1), 80, 6)
    assert x["sched"] == defs.SCHED_SEQ and x["table_size"] == 1 and x["real"] == 0
    assert eng.explain(ip(CLIENT), 40002, ip(VIP1), 80, 6) == x
    h = eng.explain(ip(CLIENT), 40002, ip(VIP1), 8080, 6)
    assert h["sched"] == defs.SCHED_HASH5 and h["hash"] == F_hash(CLIENT, 40002, VIP1, 8080)
    assert h["slot"] == h["hash"] % 1 and h["real"] == 1
    assert eng.explain(ip(CLIENT), 1, ip("198.19.100.99"), 80, 6) is None
    with pytest.raises(ValueError):
        eng.flow_get(ip(CLIENT), 40000, ip(VIP1), 80, 1)
    with pytest.raises(ValueError):
        eng.explain(-1, 40000, ip(VIP1), 80, 6)


def F_hash(cip, cport, vip, vport):
    import fastpath
    return fastpath.flow_hash(ip(cip), ip(vip), cport, vport, 6)
