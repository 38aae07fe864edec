"""The fast path's metrics counters on both twins: per real (Engine.real_stats) and per VIP
counter slot (Engine.vip_stats, ServiceSpec.slot), moved by flow_account for every frame sent
on a flow and by flow creation/deletion; they survive service swaps, and a slot or a real
given to another service or backend starts from 0 (lb/metrics.py reads them)."""
import pytest

from fastpath import Batch, ServiceSpec, defs
from tools import frames as F

from .fixtures import B1, CLIENT, GW, LB, REALS, VIP1, VIP3, VIP5, VIP7, b2c, c2v, make_engine, services
from .test_splice import M32, NOW, VIP, engine as splice_engine, handshake, parse, run as run1

# fixtures.services order: VIP1:80 nat [real 0], VIP1:8080 nat [1], VIP2:53 udp [2],
# VIP3:80 dsr [0], VIP4:80 (none), VIP5:80 [3, MAC unknown], VIP7:80 tunnel [4]; the
# slots default to the position in the list
S_NAT, S_DSR, S_VIP5, S_TUN = 0, 3, 5, 6


def run(e, frames, now=1000):
    b = Batch(max(1, len(frames)))
    b.load(frames)
    e.process(b, now)
    return b.results()


def stats(conns=0, flows=0, pf=0, pr=0, bf=0, br=0):
    return (conns, flows, pf, pr, bf, br)


def test_nat_counts_both_ways_per_vip_and_per_real(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    fwd = [c2v(), c2v(flags=F.TH_ACK, data=b"x" * 100), c2v(flags=F.TH_ACK | F.TH_FIN)]
    rev = [b2c(), b2c(flags=F.TH_ACK, data=b"y" * 700)]
    out = run(e, [fwd[0], rev[0], fwd[1], rev[1], fwd[2]])
    assert [r[1] for r in out] == ["nat_fwd", "nat_rev", "nat_fwd", "nat_rev", "nat_fwd"]
    want = stats(1, 1, 3, 2, sum(map(len, fwd)), sum(map(len, rev)))
    assert e.vip_stats(S_NAT) == want
    assert e.real_stats(0) == want
    # the same as the flow's own counters
    (fl,) = e.flows()
    assert fl[10:14] == want[2:]
    assert e.vip_stats(1) == stats() and e.real_stats(1) == stats()


def test_dsr_and_tunnel_count_client_to_backend_only(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    d = [c2v(vip=VIP3), c2v(vip=VIP3, flags=F.TH_ACK, data=b"z" * 50)]
    t = [c2v(vip=VIP7, sport=41000), c2v(vip=VIP7, sport=41000, flags=F.TH_ACK)]
    out = run(e, d + t)
    assert [r[1] for r in out] == ["dsr_fwd", "dsr_fwd", "tunnel_fwd", "tunnel_fwd"]
    assert e.vip_stats(S_DSR) == stats(1, 1, 2, 0, sum(map(len, d)), 0)
    assert e.vip_stats(S_TUN) == stats(1, 1, 2, 0, sum(map(len, t)), 0)
    assert e.real_stats(4) == e.vip_stats(S_TUN)


def test_a_real_shared_by_two_vips_adds_both(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    a, b = c2v(), c2v(vip=VIP3, sport=40001)
    run(e, [a, b])
    assert e.vip_stats(S_NAT) == stats(1, 1, 1, 0, len(a), 0)
    assert e.vip_stats(S_DSR) == stats(1, 1, 1, 0, len(b), 0)
    assert e.real_stats(0) == stats(2, 2, 2, 0, len(a) + len(b), 0)


def test_a_dropped_frame_counts_no_traffic(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    assert run(e, [c2v(vip=VIP5)])[0][1] == "drop_no_neigh"    # a flow, but nothing sent
    assert e.vip_stats(S_VIP5) == stats(1, 1) and e.real_stats(3) == stats(1, 1)
    assert run(e, [c2v(vip=VIP1, data=b"a", flags=F.TH_ACK, sport=3)])[0][1] == "drop_no_flow_non_syn"
    assert e.vip_stats(S_NAT) == stats()


def test_expiry_ends_conns_and_keeps_the_totals(impl):
    e = make_engine(impl.Engine, ServiceSpec, timeouts={"tcp_syn": 1})
    f = c2v()
    run(e, [f])
    assert e.expire(10_000, 100) == 1
    assert e.vip_stats(S_NAT) == stats(0, 1, 1, 0, len(f), 0)
    assert e.real_stats(0) == stats(0, 1, 1, 0, len(f), 0)


def test_slots_survive_swaps_and_another_service_on_a_slot_starts_from_0(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    f = c2v()
    run(e, [f])
    sp = services(ServiceSpec)
    slotted = [s._replace(slot=10 + k) for k, s in enumerate(sp)]
    e.set_services(slotted)          # VIP1:80 now on slot 10: a new service there
    assert e.vip_stats(10) == stats()
    assert e.vip_stats(S_NAT) == stats(1, 1, 1, 0, len(f), 0)   # its old flow points here
    run(e, [c2v(sport=40001)])
    assert e.vip_stats(10) == stats(1, 1, 1, 0, len(f), 0)
    e.set_services(list(reversed(slotted)))       # order does not matter, slots do
    run(e, [c2v(sport=40002)])
    assert e.vip_stats(10) == stats(2, 2, 2, 0, 2 * len(f), 0)
    # another service takes slot 10: its counters from 0, but conns stays (flows point here)
    other = [s._replace(slot=11 + k) for k, s in enumerate(sp)]
    other[3] = other[3]._replace(slot=10)
    e.set_services(other)
    assert e.vip_stats(10) == stats(2, 0)


def test_a_real_given_another_backend_starts_from_0(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    run(e, [c2v()])
    ip, port, mac = REALS[0]
    e.set_real(0, F.ip2int(ip), port, None)     # same backend, MAC forgotten: kept
    assert e.real_stats(0)[1:3] == (1, 1)
    e.set_real(0, F.ip2int("198.19.0.99"), port, mac)
    assert e.real_stats(0) == stats(1)           # conns is the flows still bound to it


def test_splice_counts_on_the_vip_before_binding_and_on_the_real_after(impl):
    e = splice_engine(impl)
    c_isn, out = handshake(e)
    cookie = parse(out).seq
    ack = F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1,
                ack=(cookie + 1) & M32, win=300)
    assert run1(e, ack)[1] == "splice_accepted"
    assert e.vip_stats(0) == stats(1, 1, 1, 0, len(ack), 0)
    assert e.real_stats(0) == stats()
    assert e.splice_bind(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80, 0, NOW)
    b_ip, b_port = REALS[0][0], REALS[0][1]
    synack = F.tcp(B1, LB, b_ip, CLIENT, b_port, 40000, flags=F.TH_SYN | F.TH_ACK, seq=7,
                   ack=c_isn + 1)
    run1(e, synack)
    data = F.tcp(B1, LB, b_ip, CLIENT, b_port, 40000, flags=F.TH_ACK, seq=8, ack=c_isn + 1,
                 data=b"r" * 300)
    assert run1(e, data)[1] == "splice_rev"
    assert e.real_stats(0) == stats(1, 1, 0, 2, 0, len(synack) + len(data))
    assert e.vip_stats(0) == stats(1, 1, 1, 2, len(ack), len(synack) + len(data))
    (fl,) = e.flows()
    assert fl[10:14] == e.vip_stats(0)[2:]


@pytest.mark.parametrize("slot", [-1, defs.MAX_SERVICES, True, "1"])
def test_a_bad_slot_is_refused_and_changes_nothing(impl, slot):
    e = make_engine(impl.Engine, ServiceSpec)
    run(e, [c2v()])
    sp = services(ServiceSpec)
    sp[1] = sp[1]._replace(slot=slot)
    with pytest.raises(ValueError):
        e.set_services(sp)
    with pytest.raises(ValueError):
        e.vip_stats(slot)
    assert run(e, [c2v(flags=F.TH_ACK)])[0][1] == "nat_fwd"
    assert e.vip_stats(0)[2] == 2


def test_duplicate_slots_are_refused(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    sp = services(ServiceSpec)
    sp[0], sp[1] = sp[0]._replace(slot=5), sp[1]._replace(slot=5)
    with pytest.raises(ValueError, match="duplicate vip slot"):
        e.set_services(sp)
    with pytest.raises(ValueError):
        e.real_stats(defs.MAX_REALS)
