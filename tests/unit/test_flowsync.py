"""lb/flowsync.py without sockets: the [sync] table's parser (errors name the field),
set_peers, the routing of a peer's records to the worker that owns each client endpoint
(the steering key of lb/workers.py), and a joiner taking the flows of a removed backend."""
import ipaddress

import dpkt
import pytest

import fastpath
from fastpath import ServiceSpec
from lb import config
from lb.errors import LBError
from lb.flowsync import FlowSync, SyncConfig, parse_config, worker_of
from lb.state import LBState
from lb.workers import EngineGroup
from tests.fastpath.fixtures import b2c, c2v, make_engine
from tests.unit.test_state import B1, B3, LB_IP, LB_MAC, MACS, NOW, VIP, ip, make_cfg, send, \
    tcp_frame
from tools import frames as F

BASE = '[lb]\naddress = "198.19.0.2"\n'


def test_sync_table_parses_with_defaults_and_round_trips():
    cfg = config.loads(BASE + '[sync]\nlisten = "198.19.0.3:7900"\npeers = ["198.19.0.5:7900"]\n')
    s = cfg.sync
    assert (s.listen, s.peers, s.threshold, s.period, s.max_datagram) == \
        ("198.19.0.3:7900", ["198.19.0.5:7900"], 3, 30.0, 1400)
    assert parse_config(s.dump()) == s
    assert config.loads(BASE).sync is None


@pytest.mark.parametrize("body,field", [
    ('peers = []', "sync.listen"),
    ('listen = "198.19.0.3"', "sync.listen"),
    ('listen = "198.19.0.3:7900"\npeers = "198.19.0.5:7900"', "sync.peers"),
    ('listen = "198.19.0.3:7900"\npeers = ["x:1"]', "sync.peers[0]"),
    ('listen = "198.19.0.3:7900"\npeers = ["198.19.0.3:7900"]', "sync.peers[0]"),
    ('listen = "198.19.0.3:7900"\npeers = ["198.19.0.5:1", "198.19.0.5:1"]', "sync.peers[1]"),
    ('listen = "198.19.0.3:7900"\nthreshold = 0', "sync.threshold"),
    ('listen = "198.19.0.3:7900"\nperiod = "1"', "sync.period"),
    ('listen = "198.19.0.3:7900"\nmax_datagram = 67', "sync.max_datagram"),
    ('listen = "198.19.0.3:7900"\npull_timeout = -1', "sync.pull_timeout"),
    ('listen = "198.19.0.3:7900"\nlisten_to = 1', "sync.listen_to"),
])
def test_a_bad_sync_table_names_the_field(body, field):
    with pytest.raises(LBError) as e:
        config.loads(BASE + "[sync]\n" + body + "\n")
    assert e.value.field == field


def test_set_peers_leaves_out_this_instance_and_checks_each():
    s = FlowSync(SyncConfig(listen="198.19.0.3:7900"))
    assert s.set_peers(["198.19.0.3:7900", "198.19.0.5:7900", ("198.19.0.6", 7900)]) == \
        ["198.19.0.5:7900", "198.19.0.6:7900"]
    with pytest.raises(LBError):
        s.set_peers(["nope"])
    assert len(s.peers) == 2


def test_records_go_to_the_worker_that_owns_the_client():
    engines = [make_engine(fastpath.Engine, ServiceSpec) for _ in range(3)]
    a = make_engine(fastpath.Engine, ServiceSpec)
    ports = range(40000, 40060)
    from fastpath import Batch
    for p in ports:
        b = Batch(3)
        b.load([c2v(sport=p), b2c(sport=p), c2v(sport=p, flags=F.TH_ACK)])
        a.process(b, 1000)
    s = FlowSync(SyncConfig(listen="198.19.0.3:7900", max_datagram=1400))
    s.attach(engines, 1024)
    while True:
        d = a.sync_export(s.max_records, 1000)
        if not d:
            break
        s.route(d)
    for k, e in enumerate(engines):
        s.work_inbox(k, e, 1000)
    group = EngineGroup([type("W", (), {"engine": e, "index": i})() for i, e in enumerate(engines)])
    for k, e in enumerate(engines):
        for f in e.flows():
            assert worker_of(f[0], f[1], 3) == k == group.worker_of(f[0], f[1])
    assert sum(e.flow_count() for e in engines) == 60
    assert all(e.flow_count() for e in engines)
    s.route(b"\xf5\x01\x00\x05junk")               # malformed: worker 0 counts it
    s.work_inbox(0, engines[0], 1000)
    assert engines[0].counters()["sync_malformed"] == 1


def test_sync_is_saved_and_cannot_change_on_reload():
    from lb import running
    text = BASE + '[sync]\nlisten = "198.19.0.3:7900"\npeers = ["198.19.0.5:7900"]\n'
    cfg = config.loads(text)
    assert config.parse(running.dump(cfg)) == cfg
    running.check_fixed(cfg, config.loads(text))
    for other in (BASE, text.replace("7900\"]", "7901\"]")):
        with pytest.raises(LBError) as e:
            running.check_fixed(cfg, config.loads(other))
        assert e.value.field == "sync"


def test_a_joiner_takes_the_flows_of_a_backend_removed_while_they_run(impl):
    """The cluster removed b3 while flows to it run: the peer still has them on its draining
    slot (lb/state.py), so the joiner, whose table never had b3, makes a draining slot for it
    from the pulled records (pending_backends, adopt_draining) and takes them: their frames
    go to b3, and the slot is released once they are gone. Without it they are refused."""
    def state(backends):
        e = impl.Engine(1024)
        e.set_local(ip(LB_IP), LB_MAC)
        s = LBState(e, make_cfg([{"address": VIP, "port": 80, "scheduler": "rr",
                                  "backend": [{"address": b} for b in backends]}]))
        s.clock = lambda: NOW
        for b, mac in MACS.items():
            s.learn_neighbor(ip(b), mac)
        return s, e

    peer, pe = state([B1, B3])
    for p in range(40000, 40004):                   # rr: B1, B3, B1, B3
        send(pe, tcp_frame(p), tcp_frame(p, dpkt.tcp.TH_ACK), tcp_frame(p, dpkt.tcp.TH_ACK))
    peer.handle("backend.del", {"vip": VIP + ":80", "backend": B3})   # draining on the peer
    datagrams = []
    while True:
        d = pe.sync_export(64, NOW)
        if not d:
            break
        datagrams.append(d)
    assert datagrams

    def joiner(adopt):
        st, e = state([B1])
        s = FlowSync(SyncConfig(listen="198.19.0.3:7900"))
        s.attach([e], 1024)
        for d in datagrams:
            s.route(d)
        assert s.pending_backends() == {(ip(B1), 80), (ip(B3), 80)}
        made = st.adopt_draining(s.pending_backends()) if adopt else 0
        s.work_inbox(0, e, NOW)
        return st, e, s, made

    _, e, s, made = joiner(adopt=False)
    assert (made, e.flow_count(), s.stats["not_taken"]) == (0, 2, 2)

    st, e, s, made = joiner(adopt=True)
    assert (made, e.flow_count(), s.stats["not_taken"]) == (1, 4, 0)
    assert [d["backend"] for d in st.metrics_view()["draining"]] == [B3 + ":80"]
    assert st.adopt_draining({(ip(B3), 80), (ip(B1), 80)}) == 0     # has both now
    for p, b in ((40000, B1), (40001, B3), (40002, B1), (40003, B3)):
        (verdict, reason, frame), = send(e, tcp_frame(p, dpkt.tcp.TH_ACK))
        eth = dpkt.ethernet.Ethernet(frame)
        assert (reason, str(ipaddress.IPv4Address(eth.data.dst)), eth.dst) == \
            ("nat_fwd", b, MACS[b]), p
    # new connections never go to the draining backend; once its flows are gone, gc frees it
    for p in range(41000, 41004):
        (verdict, reason, frame), = send(e, tcp_frame(p))
        assert str(ipaddress.IPv4Address(dpkt.ethernet.Ethernet(frame).data.dst)) == B1
    assert e.expire(NOW + 10_000_000, 4096) == 8
    assert st.gc() == 1 and st.metrics_view()["draining"] == []
