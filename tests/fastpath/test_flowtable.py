"""Flow table and per-packet scheduling on both twins: capacity and eviction, timeouts,
deletion under churn, the scheduler kinds, and that a service swap keeps live flows."""
import random

import pytest

from fastpath import Batch, ServiceSpec, defs
from tools import frames as F

from .fixtures import B1, B2, B3, CLIENT, LB, VIP1, c2v, make_engine

NAT80 = (F.ip2int(VIP1), 80, 6)


def run(e, frames, now=1000):
    b = Batch(max(1, len(frames)))
    b.load(frames)
    e.process(b, now)
    return b.results()


def nat_service(sched, table, weights=None):
    return ServiceSpec(*NAT80, defs.MODE_NAT, sched, table, weights or [1] * len(table))


def three_reals(e):
    for i, m in enumerate((B1, B2, B3)):
        e.set_real(i, F.ip2int("198.19.0.%d" % (11 + i)), 80, m)


def test_full_table_evicts_least_recently_seen_and_serves_the_new_flow(impl):
    e = make_engine(impl.Engine, ServiceSpec, capacity=8)
    for k in range(8):  # flow k last seen at time 1000 + k
        assert run(e, [c2v(sport=1000 + k)], now=1000 + k)[0][1] == "nat_fwd"
    assert e.flow_count() == 8
    assert run(e, [c2v(sport=2000)], now=2000)[0][1] == "nat_fwd"
    c = e.counters()
    assert c["flow_evicted"] == 1 and e.flow_count() == 8
    ports = sorted(f[1] for f in e.flows())
    assert 1000 not in ports and 2000 in ports  # the oldest of the sample went


def test_expired_entry_is_preferred_victim(impl):
    e = make_engine(impl.Engine, ServiceSpec, capacity=4, timeouts={"tcp_syn": 1})
    run(e, [c2v(sport=1), c2v(sport=2)], now=1000)
    run(e, [c2v(sport=3), c2v(sport=4)], now=5000)
    run(e, [c2v(sport=5)], now=5500)   # sport 1 and 2 expired at 2000
    assert e.counters()["flow_expired"] == 1 and e.counters()["flow_evicted"] == 0


def test_timeouts_per_state_and_sweep(impl):
    e = make_engine(impl.Engine, ServiceSpec, timeouts={"tcp_syn": 2, "tcp_established": 10})
    run(e, [c2v(sport=1)], now=0)                     # SYN_SENT, 2 s
    run(e, [c2v(sport=2)], now=0)
    run(e, [c2v(sport=2, flags=F.TH_ACK)], now=0)      # ESTABLISHED, 10 s
    assert e.expire(1500, 1024) == 0
    assert e.expire(2500, 1024) == 1 and e.flow_count() == 1
    assert e.expire(10001, 1024) == 1 and e.flow_count() == 0
    assert e.counters()["flow_expired"] == 2


def test_lazy_expiry_on_lookup(impl):
    e = make_engine(impl.Engine, ServiceSpec, timeouts={"tcp_syn": 1})
    run(e, [c2v()], now=0)
    assert run(e, [c2v()], now=5000)[0][1] == "nat_fwd"
    assert e.counters()["flow_expired"] == 1 and e.counters()["flow_created"] == 2


def test_churn_keeps_every_live_flow_reachable_both_ways(impl):
    """Random opens, RSTs and expiry on a small table: every flow the engine lists must still
    be found by its forward and its reverse key (backward-shift deletion keeps probe chains)."""
    rng = random.Random(7)
    e = make_engine(impl.Engine, ServiceSpec, capacity=64, timeouts={"tcp_close": 1})
    now = 0
    for step in range(3000):
        now += rng.randint(0, 30)
        port = rng.randint(1, 120)
        op = rng.random()
        if op < 0.6:
            run(e, [c2v(sport=port)], now)
        elif op < 0.9:
            run(e, [c2v(sport=port, flags=F.TH_RST | F.TH_ACK)], now)
        else:
            e.expire(now, 16)
    assert 0 < e.flow_count() <= 64
    for f in e.flows():
        if f[7] == defs.S_CLOSE:
            continue
        sport = f[1]
        assert run(e, [c2v(sport=sport, flags=F.TH_ACK)], now)[0][1] == "nat_fwd"
        rip, rport, m = "198.19.0.11", 80, B1
        rev = F.tcp(m, LB, rip, CLIENT, rport, sport, flags=F.TH_ACK)
        assert run(e, [rev], now)[0][1] == "nat_rev"
    c = e.counters()
    assert c["flow_created"] - c["flow_expired"] - c["flow_evicted"] - c["flow_reused"] == e.flow_count()


def test_seq_scheduler_rotates(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    three_reals(e)
    e.set_services([nat_service(defs.SCHED_SEQ, [0, 1, 2])])
    run(e, [c2v(sport=p) for p in range(1, 7)])
    assert [f[5] for f in sorted(e.flows(), key=lambda f: f[1])] == [0, 1, 2, 0, 1, 2]


def test_leastconn_picks_fewest_per_weight(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    three_reals(e)
    e.set_services([nat_service(defs.SCHED_LEASTCONN, [0, 1, 2], [1, 2, 1])])
    run(e, [c2v(sport=p) for p in range(1, 9)])
    assert [e.real_conns(i) for i in range(3)] == [2, 4, 2]


def test_source_hash_is_sticky_per_client(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    three_reals(e)
    e.set_services([ServiceSpec(*NAT80, defs.MODE_NAT, defs.SCHED_HASHSRC, [0, 1, 2], [1, 1, 1])])
    run(e, [c2v(sport=p) for p in range(1, 20)])
    assert len({f[5] for f in e.flows()}) == 1
    assert e.flows()[0][5] == [0, 1, 2][impl.mix64(F.ip2int(CLIENT)) % 3]


def test_hash5_picks_table_entry_by_flow_hash(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    three_reals(e)
    e.set_services([nat_service(defs.SCHED_HASH5, [0, 1, 2])])
    run(e, [c2v(sport=p) for p in range(1, 50)])
    for f in e.flows():
        h = impl.flow_hash(F.ip2int(CLIENT), F.ip2int(VIP1), f[1], 80, 6)
        assert f[5] == h % 3


def test_service_swap_keeps_live_flows_on_their_backend(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    three_reals(e)
    e.set_services([nat_service(defs.SCHED_SEQ, [0])])
    run(e, [c2v(sport=1)])
    e.set_services([nat_service(defs.SCHED_SEQ, [1])])       # backend 0 removed
    out = run(e, [c2v(sport=1, flags=F.TH_ACK), c2v(sport=2)])
    assert out[0][2][0:6] == B1 and out[1][2][0:6] == B2
    assert e.real_conns(0) == 1 and e.real_conns(1) == 1


def test_bad_control_calls_raise_and_change_nothing(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    before = run(e, [c2v(sport=9)])
    for bad in ([ServiceSpec(1, 80, 6, 99, defs.SCHED_SEQ, [0], [1])],
                [ServiceSpec(1, 80, 6, defs.MODE_NAT, defs.SCHED_SEQ, [defs.MAX_REALS], [1])],
                [ServiceSpec(1, 80, 1, defs.MODE_NAT, defs.SCHED_SEQ, [0], [1])],
                [ServiceSpec(1, 80, 6, defs.MODE_NAT, defs.SCHED_LEASTCONN, [0], [0])],
                [ServiceSpec(1, 80, 6, defs.MODE_NAT, defs.SCHED_SEQ, [0], [1])] * 2):
        with pytest.raises(ValueError):
            e.set_services(bad)
    with pytest.raises(ValueError):
        e.set_real(defs.MAX_REALS, 1, 1, None)
    with pytest.raises(ValueError):
        e.set_local(1, b"\0" * 5)
    with pytest.raises(ValueError):
        impl.Engine(0)
    assert run(e, [c2v(sport=9, flags=F.TH_ACK)])[0][1] == before[0][1] == "nat_fwd"


@pytest.mark.parametrize("expire", [False, True])
def test_flows_of_a_down_backend_kept_or_expired_by_service_policy(impl, expire):
    e = make_engine(impl.Engine, ServiceSpec)
    three_reals(e)
    flags = defs.SVC_EXPIRE_NODEST if expire else 0
    e.set_services([ServiceSpec(*NAT80, defs.MODE_NAT, defs.SCHED_HASH5, [0], [1], flags)])
    run(e, [c2v(sport=1), c2v(sport=1, flags=F.TH_ACK)])
    e.set_real_up(0, False)
    # the control side takes the down backend out of the new-flow table
    e.set_services([ServiceSpec(*NAT80, defs.MODE_NAT, defs.SCHED_HASH5, [1], [1], flags)])
    out = run(e, [c2v(sport=1, flags=F.TH_ACK)])
    if expire:   # expired, then re-created on the consistent hash's new choice
        assert out[0][2][0:6] == B2
        assert e.counters()["flow_expired_nodest"] == 1 and e.real_conns(0) == 0
    else:        # kept until idle on its backend
        assert out[0][2][0:6] == B1
        assert e.counters()["flow_expired_nodest"] == 0 and e.real_conns(0) == 1
    e.set_real_up(0, True)
    assert run(e, [c2v(sport=1, flags=F.TH_ACK)])[0][1] == "nat_fwd"


def test_a_live_flow_keeps_its_backend_side_key_against_a_new_flow_of_another_vip(impl):
    """Two VIPs on one backend, one client port (a client's kernel picks ports per
    destination): the backend sees one 4-tuple. While the older flow lives (also half-closed:
    one FIN), a new flow on it is refused (drop_rev_clash) and the older one keeps its
    replies; once it is over (both FINs), or idle REV_CLASH_IDLE_MS, the newer one takes the
    key (flow_rev_replaced) and the replies go back as the newer VIP."""
    from .fixtures import VIP4, b2c
    e = make_engine(impl.Engine, ServiceSpec)
    e.set_services([nat_service(defs.SCHED_SEQ, [0]),
                    ServiceSpec(F.ip2int(VIP4), 80, 6, defs.MODE_NAT, defs.SCHED_SEQ, [0], [1])])

    def src_of(out):
        return F.int2ip(int.from_bytes(out[0][2][26:30], "big"))
    run(e, [c2v(sport=5), b2c(sport=5), c2v(sport=5, flags=F.TH_FIN | F.TH_ACK)])  # VIP1
    assert run(e, [c2v(vip=VIP4, sport=5)])[0][1] == "drop_rev_clash"       # half-closed: live
    out = run(e, [b2c(sport=5, flags=F.TH_ACK, data=b"more")])
    assert out[0][1] == "nat_rev" and src_of(out) == VIP1
    assert e.flow_count() == 1 and e.counters()["flow_rev_replaced"] == 0
    run(e, [b2c(sport=5, flags=F.TH_FIN | F.TH_ACK)])                        # both FINs: over
    assert run(e, [c2v(vip=VIP4, sport=5)])[0][1] == "nat_fwd"
    out = run(e, [b2c(sport=5)])
    assert out[0][1] == "nat_rev" and src_of(out) == VIP4
    c = e.counters()
    assert (c["flow_rev_replaced"], c["drop_rev_clash"], e.flow_count(), e.real_conns(0)) == \
        (1, 1, 1, 1)
    # an established flow idle for REV_CLASH_IDLE_MS no longer holds the key
    run(e, [c2v(sport=6), b2c(sport=6)], now=2000)
    assert run(e, [c2v(vip=VIP4, sport=6)], now=2000 + defs.REV_CLASH_IDLE_MS)[0][1] == \
        "drop_rev_clash"
    assert run(e, [c2v(vip=VIP4, sport=6)], now=2001 + defs.REV_CLASH_IDLE_MS)[0][1] == \
        "nat_fwd"
    assert e.counters()["flow_rev_replaced"] == 2


def test_a_new_nat_flow_whose_backend_side_key_is_held_goes_to_another_backend(impl):
    """VIP1 holds client ports 7..26 on b1 (live flows); VIP4 has b1 (3 of 4 table rows)
    and b2: a new VIP4 flow from one of those ports never goes to b1. It is scheduled again
    (a rehash for a flow hash, the next in turn for rr: rev_clash_rescheduled) onto b2, or
    refused (drop_rev_clash) when every try gave b1; sh gives the same backend every time,
    so there it is refused."""
    from .fixtures import REALS, VIP4
    ports = range(7, 27)
    for sched in (defs.SCHED_HASH5, defs.SCHED_SEQ, defs.SCHED_HASHSRC):
        e = make_engine(impl.Engine, ServiceSpec)
        e.set_services([nat_service(defs.SCHED_SEQ, [0]),
                        ServiceSpec(F.ip2int(VIP4), 80, 6, defs.MODE_NAT, sched, [0, 0, 0, 1],
                                    [1] * 4)])
        run(e, [c2v(sport=p) for p in ports])                       # VIP1 -> b1, live
        outs = [run(e, [c2v(vip=VIP4, sport=p)])[0] for p in ports]
        sent = [F.int2ip(int.from_bytes(o[2][30:34], "big")) for o in outs if o[1] == "nat_fwd"]
        c = e.counters()
        assert set(sent) <= {REALS[1][0]}, (sched, sent)
        assert len(sent) + c["drop_rev_clash"] == len(ports), sched
        if sched == defs.SCHED_HASHSRC:
            assert c["rev_clash_rescheduled"] == 0 and c["drop_rev_clash"] in (0, len(ports))
        else:
            assert c["rev_clash_rescheduled"] >= len(ports) // 2, (sched, c)


def test_process_returns_how_many_frames_it_punted(impl):
    """lbd looks for punted frames only when process() says there are some."""
    from .fixtures import GW
    e = make_engine(impl.Engine, ServiceSpec)
    b = Batch(4)
    arp = F.eth(F.mac("ff:ff:ff:ff:ff:ff"), GW, b"\0" * 28, etype=0x0806)
    b.load([c2v(), arp, c2v(sport=40001), arp])
    assert e.process(b, 1000) == 2
    b.load([c2v(sport=40002)])
    assert e.process(b, 1000) == 0
    b.n = 0
    assert e.process(b, 1000) == 0


def test_a_backends_packet_rebuilds_a_lost_nat_flow_on_a_consistent_hash_vip(impl):
    """After an LB restart a download's only packets come from the backend: on VIP1:8080
    (nat, maglev -> b2:8081) the flow is re-created from b2's packet and the packet goes on
    as the VIP's; a SYN-ACK or a reset opens nothing, nor does a round-robin VIP (VIP1:80)."""
    from .fixtures import REALS, v2c
    e = make_engine(impl.Engine, ServiceSpec)
    ip, port, mac = REALS[1]
    data = F.tcp(mac, LB, ip, CLIENT, port, 40000, flags=F.TH_ACK, data=b"blob")
    b = Batch(1)
    b.load([data])
    e.process(b, 1000)
    v, reason, out = b.results()[0]
    assert (v, reason) == (defs.V_TX, "nat_rev")
    assert out == v2c(vport=8080, flags=F.TH_ACK, data=b"blob")
    c = e.counters()
    assert (c["flow_recreated_rev"], c["flow_created"], e.flow_count()) == (1, 1, 1)
    assert defs.STATE_NAMES[e.flows()[0][7]] == "ESTABLISHED"
    for flags in (F.TH_SYN | F.TH_ACK, F.TH_RST):
        b.load([F.tcp(mac, LB, ip, CLIENT, port, 40001, flags=flags)])
        e.process(b, 1000)
        assert b.results()[0][1] == "drop_unknown_dest"
    ip0, port0, mac0 = REALS[0]                   # b1:80 is behind VIP1:80, round robin
    b.load([F.tcp(mac0, LB, ip0, CLIENT, port0, 40002, flags=F.TH_ACK, data=b"x")])
    e.process(b, 1000)
    assert b.results()[0][1] == "drop_unknown_dest" and e.flow_count() == 1
