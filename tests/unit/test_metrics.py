"""lb/metrics.py's collector over real engines (both twins) and lb/state.py, after frames went
through them; the text it makes parses with prometheus_client's own parser, and the per-VIP
and per-backend values are what was sent. And [metrics] in the config.

    client 198.18.0.10 -> LB 198.19.0.2: VIP 198.19.100.1:80 nat rr [b1 .11, b2 .12], tcp check
                                         VIP 198.19.100.3:80 dsr [b1]             (no check)
"""
import ipaddress
import threading
from types import SimpleNamespace

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fastpath import Batch, defs
from lb import config
from lb.errors import LBError
from lb.metrics import Collector, registry
from lb.state import LBState
from lb.workers import EngineGroup
from tools import frames as F

LB_IP, LB_MAC = "198.19.0.2", bytes.fromhex("025457000002")
GW_MAC = bytes.fromhex("025457000001")
CLIENT = "198.18.0.10"
NAT, DSR = "198.19.100.1", "198.19.100.3"
B1, B2 = "198.19.0.11", "198.19.0.12"
MACS = {B1: bytes.fromhex("02545700000b"), B2: bytes.fromhex("02545700000c")}
NOW = 1_000_000


def ip(s):
    return int(ipaddress.IPv4Address(s))


def make_cfg(extra=None):
    raw = {"lb": {"address": LB_IP, "gateway": "198.19.0.1"}, "flows": {"capacity": 1024},
           "vip": [{"address": NAT, "port": 80, "mode": "nat", "scheduler": "rr",
                    "health": {"check": "tcp", "fall": 1, "rise": 1},
                    "backend": [{"address": B1}, {"address": B2, "weight": 3}]},
                   {"address": DSR, "port": 80, "mode": "dsr",
                    "backend": [{"address": B1}]}]}
    raw.update(extra or {})
    return config.parse(raw)


def make_engine(impl):
    e = impl.Engine(1024)
    e.set_local(ip(LB_IP), LB_MAC)
    e.set_gateway(GW_MAC)
    return e


def setup(engine):
    st = LBState(engine, make_cfg())
    for b, m in MACS.items():
        st.learn_neighbor(ip(b), m)
    return st


def send(engine, frames):
    b = Batch(len(frames))
    b.load(frames)
    engine.process(b, NOW)
    return [r[1] for r in b.results()]


def c2v(vip, sport, flags, data=b""):
    return F.tcp(GW_MAC, LB_MAC, CLIENT, vip, sport, 80, flags=flags, data=data)


def b2c(backend, sport, flags, data=b""):
    return F.tcp(MACS[backend], LB_MAC, backend, CLIENT, 80, sport, flags=flags, data=data)


def scrape(collector):
    """{(name, ((label, value), ...)): value} of every sample, and the families by name."""
    text = generate_latest(registry(collector, process=False)).decode()
    fams = list(text_string_to_metric_families(text))
    names = [f.name for f in fams]
    assert len(names) == len(set(names)), "a family appears twice"
    samples = {}
    for f in fams:
        for s in f.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, key
            samples[key] = s.value
    return samples, {f.name: f for f in fams}


def val(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def traffic(engine):
    """Two nat connections (rr: one per backend) with data both ways, one dsr connection."""
    nat_fwd = [c2v(NAT, 40000, F.TH_SYN), c2v(NAT, 40001, F.TH_SYN),
               c2v(NAT, 40000, F.TH_ACK, b"q" * 100)]
    nat_rev = [b2c(B1, 40000, F.TH_SYN | F.TH_ACK), b2c(B1, 40000, F.TH_ACK, b"r" * 900),
               b2c(B2, 40001, F.TH_SYN | F.TH_ACK)]
    dsr = [c2v(DSR, 41000, F.TH_SYN), c2v(DSR, 41000, F.TH_ACK, b"d" * 10)]
    out = send(engine, nat_fwd + nat_rev + dsr)
    assert out == ["nat_fwd"] * 3 + ["nat_rev"] * 3 + ["dsr_fwd"] * 2
    return nat_fwd, nat_rev, dsr


def test_per_vip_and_per_backend_values_are_what_was_sent(impl):
    e = make_engine(impl)
    st = setup(e)
    nat_fwd, nat_rev, dsr = traffic(e)
    c = Collector(st, [e], 1024, info=lambda: {"impl": impl.__name__, "io_backend": "none"})
    s, fams = scrape(c)
    nat = {"vip": NAT + ":80", "proto": "tcp", "mode": "nat"}
    d = {"vip": DSR + ":80", "proto": "tcp", "mode": "dsr"}
    fwd, rev = {"direction": "client_to_backend"}, {"direction": "backend_to_client"}
    assert val(s, "threeway_vip_connections_active", **nat) == 2
    assert val(s, "threeway_vip_connections_total", **nat) == 2
    assert val(s, "threeway_vip_packets_total", **nat, **fwd) == 3
    assert val(s, "threeway_vip_packets_total", **nat, **rev) == 3
    assert val(s, "threeway_vip_bytes_total", **nat, **fwd) == sum(map(len, nat_fwd))
    assert val(s, "threeway_vip_bytes_total", **nat, **rev) == sum(map(len, nat_rev))
    assert val(s, "threeway_vip_packets_total", **d, **fwd) == 2
    assert val(s, "threeway_vip_bytes_total", **d, **fwd) == sum(map(len, dsr))
    assert ("threeway_vip_packets_total", tuple(sorted(dict(d, **rev).items()))) not in s
    # b1 has nat's first connection and the dsr one; b2 nat's second
    b1, b2 = {"backend": B1 + ":80"}, {"backend": B2 + ":80"}
    assert val(s, "threeway_backend_connections_active", **b1) == 2
    assert val(s, "threeway_backend_connections_total", **b2) == 1
    assert val(s, "threeway_backend_packets_total", **b1, **fwd) == 2 + 2
    assert val(s, "threeway_backend_packets_total", **b1, **rev) == 2
    assert val(s, "threeway_backend_bytes_total", **b1, **fwd) == (
        len(nat_fwd[0]) + len(nat_fwd[2]) + sum(map(len, dsr)))
    assert val(s, "threeway_backend_bytes_total", **b2, **rev) == len(nat_rev[2])
    # weights per VIP x backend, health where checked
    assert val(s, "threeway_backend_weight", vip=NAT + ":80", proto="tcp", backend=B2 + ":80") == 3
    assert val(s, "threeway_backend_up", vip=NAT + ":80", proto="tcp", backend=B1 + ":80") == 1
    assert ("threeway_backend_up", (("backend", B1 + ":80"), ("proto", "tcp"),
                                    ("vip", DSR + ":80"))) not in s
    # every fast-path counter, with its description as help; flows and capacity; lbd info
    ctr = e.counters()
    for row in defs.COUNTER_TABLE:
        f = fams["threeway_" + row.name]
        assert f.type == "counter" and f.documentation.startswith(row.when)
        assert val(s, "threeway_%s_total" % row.name) == ctr[row.name]
    assert val(s, "threeway_rx_frames_total") == 8 and val(s, "threeway_nat_rev_total") == 3
    assert val(s, "threeway_flows") == 3 and val(s, "threeway_flows_capacity") == 1024
    assert val(s, "threeway_lbd_info", impl=impl.__name__, io_backend="none") == 1
    assert val(s, "threeway_uptime_seconds") >= 0


def test_health_gauge_follows_the_reports(impl):
    e = make_engine(impl)
    st = setup(e)
    c = Collector(st, [e], 1024)
    key = (ip(NAT), 80, "tcp")
    assert st.health_report((key, (ip(B2), 80)), False, "connect refused")["state"] == "down"
    s, _ = scrape(c)
    up = {"vip": NAT + ":80", "proto": "tcp"}
    assert val(s, "threeway_backend_up", backend=B2 + ":80", **up) == 0
    assert val(s, "threeway_backend_up", backend=B1 + ":80", **up) == 1
    assert st.health_report((key, (ip(B2), 80)), True, "connected")["state"] == "up"
    s, _ = scrape(c)
    assert val(s, "threeway_backend_up", backend=B2 + ":80", **up) == 1


def test_vip_counters_survive_commands_and_a_deleted_vip_readded(impl):
    e = make_engine(impl)
    st = setup(e)
    traffic(e)
    c = Collector(st, [e], 1024)
    nat = {"vip": NAT + ":80", "proto": "tcp", "mode": "nat"}
    before = val(scrape(c)[0], "threeway_vip_packets_total", direction="client_to_backend", **nat)
    st.handle("vip.add", {"vip": "198.19.100.9:80", "mode": "nat"})       # a swap
    st.handle("backend.weight", {"vip": NAT + ":80", "backend": B2, "weight": 5})
    s, _ = scrape(c)
    assert val(s, "threeway_vip_packets_total", direction="client_to_backend", **nat) == before
    assert val(s, "threeway_vip_packets_total", direction="client_to_backend",
               vip="198.19.100.9:80", proto="tcp", mode="nat") == 0
    # the dsr VIP goes while its flow lives: its slot is kept, so a VIP added now starts at 0
    st.handle("vip.del", {"vip": DSR + ":80"})
    st.handle("vip.add", {"vip": "198.19.100.10:80", "mode": "nat"})
    s, _ = scrape(c)
    assert val(s, "threeway_vip_connections_total", vip="198.19.100.10:80", proto="tcp",
               mode="nat") == 0
    st.handle("vip.add", {"vip": DSR + ":80", "mode": "dsr"})            # back: its counters
    s, _ = scrape(c)
    assert val(s, "threeway_vip_packets_total", direction="client_to_backend",
               vip=DSR + ":80", proto="tcp", mode="dsr") == 2


def test_several_workers_label_the_fast_path_and_sum_the_services(impl):
    engines = [make_engine(impl), make_engine(impl)]
    group = EngineGroup([SimpleNamespace(engine=x, lock=threading.Lock()) for x in engines])
    st = setup(group)
    send(engines[0], [c2v(NAT, 40000, F.TH_SYN)])
    send(engines[1], [c2v(NAT, 40001, F.TH_SYN), c2v(NAT, 40002, F.TH_SYN)])
    c = Collector(st, engines, 512)
    s, _ = scrape(c)
    assert val(s, "threeway_rx_frames_total", worker="0") == 1
    assert val(s, "threeway_rx_frames_total", worker="1") == 2
    assert val(s, "threeway_flows", worker="1") == 2
    assert val(s, "threeway_flows_capacity", worker="0") == 512
    assert val(s, "threeway_vip_packets_total", direction="client_to_backend",
               vip=NAT + ":80", proto="tcp", mode="nat") == 3
    assert ("threeway_rx_frames_total", ()) not in s


def test_daemon_counters_become_families():
    stats = {"io": {"rx_frames": 7, "tx_bytes": 100, "queues": {"q0": {"rx_frames": 3},
                                                               "q1": {"rx_frames": 4}}},
             "neigh": {"arp_learned": 2},
             "loop": {"punts": 1, "gc_freed": 0, "workers": {"w0": {"wakeups": 5, "errors": 0}}},
             "health": {"probes": 9, "probe_failures": 1, "transitions": 2, "tasks": 3,
                        "in_flight": 1},
             "splice": {"decided_forward": 4, "open": 1}}

    class NoState:
        def metrics_view(self):
            return {"vips": [], "draining": []}

    import fastpath
    c = Collector(NoState(), [fastpath.Engine(16)], 16, stats=lambda: stats)
    s, fams = scrape(c)
    assert val(s, "threeway_io_rx_frames_total") == 7
    assert val(s, "threeway_io_queue_rx_frames_total", queue="1") == 4
    assert val(s, "threeway_neigh_arp_learned_total") == 2
    assert val(s, "threeway_loop_wakeups_total") == 5
    assert val(s, "threeway_health_probes_total") == 9
    assert fams["threeway_health_tasks"].type == "gauge" and val(s, "threeway_health_tasks") == 3
    assert val(s, "threeway_splice_punt_decided_forward") == 4
    assert val(s, "threeway_splice_punt_open") == 1


@pytest.mark.parametrize("listen,needle", [
    ("198.19.0.3", "IP:PORT"), ("198.19.0.3:0", "1..65535"), ("198.19.0.3:70000", "1..65535"),
    ("host:9100", "not an IPv4 address"), (9100, "IP:PORT"), ("198.19.0.3:9x", "port")])
def test_bad_metrics_listen_names_the_field(listen, needle):
    with pytest.raises(LBError) as ei:
        make_cfg({"metrics": {"listen": listen}})
    assert ei.value.field == "metrics.listen" and needle in ei.value.message


def test_metrics_config():
    assert make_cfg().metrics.listen is None
    cfg = make_cfg({"metrics": {"listen": "198.19.0.3:9100"}})
    assert cfg.metrics.listen == "198.19.0.3:9100" and cfg.metrics.endpoint == ("198.19.0.3", 9100)
    assert make_cfg({"metrics": {}}).metrics.listen is None
    with pytest.raises(LBError) as ei:
        make_cfg({"metrics": {"port": 9100}})
    assert ei.value.field == "metrics.port"
    with pytest.raises(LBError) as ei:
        make_cfg({"metrics": "198.19.0.3:9100"})
    assert ei.value.field == "metrics"
