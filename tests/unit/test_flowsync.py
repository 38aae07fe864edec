"""lb/flowsync.py without sockets: the [sync] table's parser (errors name the field),
set_peers, and the routing of a peer's records to the worker that owns each client
endpoint (the steering key of lb/workers.py)."""
import pytest

import fastpath
from fastpath import ServiceSpec
from lb import config
from lb.errors import LBError
from lb.flowsync import FlowSync, SyncConfig, parse_config, worker_of
from lb.workers import EngineGroup
from tests.fastpath.fixtures import b2c, c2v, make_engine
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
