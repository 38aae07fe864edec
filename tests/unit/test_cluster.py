"""lb/cluster.py: [cluster] parsing, the document <-> LBState, the daemon's apply path, and
against a real etcd (tools/etcd.py, in a namespace of the test's own): CAS conflicts, the
retry of lbctl --cluster, the agent's ordered delivery and its membership lease."""
import os
import secrets
import tempfile
import threading
import time

import pytest
from hypothesis import HealthCheck as HC, given, settings

import fastpath
from lb import cluster, config, running
from lb.errors import LBError
from lb.state import LBState
from tools.etcd import Etcd, TestNamespace, in_netns

from .test_running import documents

BASE = """
[lb]
address = "198.19.0.2"
[cluster]
name = "lab"
etcd = "http://198.18.250.9:2379"
instance = "lb1"
"""

DOC = """
[[vip]]
address = "198.19.100.1"
port = 80
mode = "nat"
scheduler = "rr"
[[vip.backend]]
address = "198.19.0.11"
[[vip.backend]]
address = "198.19.0.12"
weight = 3
"""


def test_cluster_table_parses_and_dumps_back():
    cfg = config.loads(BASE)
    assert cfg.cluster == cluster.ClusterConfig("lab", ("http://198.18.250.9:2379",), "lb1")
    assert config.parse(running.dump(cfg)) == cfg
    two = config.loads(BASE.replace('etcd = "http://198.18.250.9:2379"',
                                    'etcd = ["http://198.18.250.9", "http://198.18.250.10:2379"]\n'
                                    'mgmt = "198.19.0.3"\nlease_ttl = 5'))
    assert two.cluster.etcd == ("http://198.18.250.9:2379", "http://198.18.250.10:2379")
    assert two.cluster.mgmt == "198.19.0.3" and two.cluster.lease_ttl == 5
    assert config.parse(running.dump(two)) == two
    assert config.loads('[lb]\naddress = "198.19.0.2"\n').cluster is None


@pytest.mark.parametrize("line, fld", [
    ('name = "a b"', "cluster.name"),
    ('etcd = "https://198.18.250.9:2379"', "cluster.etcd"),
    ('etcd = []', "cluster.etcd"),
    ('instance = 3', "cluster.instance"),
    ('lease_ttl = 0', "cluster.lease_ttl"),
    ('mgmt = "x"', "cluster.mgmt"),
    ('colour = "red"', "cluster"),
])
def test_bad_cluster_table_names_the_field(line, fld):
    key = line.split(" ")[0]
    lines = [x for x in BASE.splitlines() if not x.startswith(key + " ")] + [line]
    with pytest.raises(LBError) as e:
        config.loads("\n".join(lines))
    assert e.value.field.startswith(fld), e.value


def test_cluster_cannot_change_on_reload():
    a = config.loads(BASE)
    b = config.loads(BASE.replace('name = "lab"', 'name = "other"'))
    with pytest.raises(LBError) as e:
        running.check_fixed(a, b)
    assert e.value.field == "cluster"


def test_document_round_trips_through_the_editor():
    ed = cluster.Editor(DOC)
    text = ed.text()
    assert cluster.Editor(text).text() == text
    cfg = cluster.merge(config.loads(BASE), text, "rev 1")
    assert [v.key for v in cfg.vips] == [v.key for v in config.loads(BASE + DOC).vips]
    assert cfg.vips == config.loads(BASE + DOC).vips
    assert cfg.cluster == config.loads(BASE).cluster
    assert cluster.dump_document([]) == "" and cluster.Editor("").text() == ""


FIXED = {"lb": {"address": "198.19.0.2"}, "io": {"backend": "tap", "interface": "lbtap"},
         "flows": {"capacity": 4096}, "health": {"max_in_flight": 64}}


@settings(max_examples=60, deadline=None, suppress_health_check=[HC.too_slow])
@given(documents(fixed=FIXED))
def test_any_vip_table_survives_the_document(doc):
    """dump_document -> merge gives the same VIPs; an Editor (LBState) reads and writes the
    same text (small Maglev tables: documents(fixed=...))."""
    cfg = config.parse(doc)
    text = cluster.dump_document(cfg.vips)
    base = config.parse({k: v for k, v in doc.items() if k != "vip"})
    assert cluster.merge(base, text, "t").vips == cfg.vips
    assert cluster.Editor(text).text() == text


def test_editor_runs_the_daemons_command_code():
    ed = cluster.Editor(DOC)
    ed.handle("backend.add", {"vip": "198.19.100.1:80", "backend": "198.19.0.13", "weight": 2})
    assert "198.19.0.13" in ed.text()
    before = ed.text()
    for cmd, args, fld in (
            ("backend.add", {"vip": "198.19.100.1:80", "backend": "198.19.0.13"}, "backend"),
            ("backend.weight", {"vip": "198.19.100.1:80", "backend": "198.19.0.11",
                                "weight": 70000}, "weight"),
            ("vip.add", {"vip": "198.19.100.1:80"}, "vip"),
            ("stats", {}, "cmd")):
        with pytest.raises(LBError) as e:
            ed.handle(cmd, args)
        assert e.value.field == fld, e.value
    assert ed.text() == before


@pytest.mark.parametrize("doc, fld", [
    ("[[vip]\n", "rev 7"),                               # not TOML
    ('[lb]\naddress = "198.19.0.9"\n', "lb"),             # not a document key
    (DOC.replace("weight = 3", "weight = -3"), "vip[0].backend[1].weight"),
    (DOC.replace('address = "198.19.100.1"', 'address = "198.19.0.2"'), "vip[0].address"),
])
def test_bad_document_is_refused_naming_the_field(doc, fld):
    with pytest.raises(LBError) as e:
        cluster.merge(config.loads(BASE), doc, "rev 7")
    assert e.value.field == fld, e.value


def _state():
    cfg = config.loads(BASE)
    return LBState(fastpath.Engine(1024), cfg)


def test_runtime_applies_in_order_and_keeps_the_last_good():
    st = _state()
    rt = cluster.Runtime(st, st.cfg)
    rt.apply(DOC.encode(), 5)
    assert rt.revision == 5 and [v["vip"] for v in st.handle("vip.list", {})] == \
        ["198.19.100.1:80"]
    good = running.dumps(st.running_config())
    rt.apply(DOC.replace("weight = 3", "weight = -1").encode(), 6)
    assert rt.revision == 5 and rt.refused == 1
    assert rt.last_refused["revision"] == 6
    assert rt.last_refused["field"] == "vip[0].backend[1].weight"
    assert running.dumps(st.running_config()) == good
    rt.apply(None, 7)                                    # the key deleted
    assert rt.revision == 5 and rt.refused == 2
    rt.apply(b"", 4)                                     # older: skipped
    assert rt.revision == 5 and st.handle("vip.list", {})
    rt.apply(b"", 8)                                     # empty: no VIPs
    assert rt.revision == 8 and st.handle("vip.list", {}) == []
    with pytest.raises(LBError) as e:
        rt.check_local("backend.add")
    assert "--cluster" in e.value.message
    rt.check_local("health.interface")                   # local: allowed


# --- against a real etcd ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def etcd():
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace)")
    ns = "tw_etcd_%s" % secrets.token_hex(3)
    addr = "198.18.250.%d" % (10 + secrets.randbelow(200))
    with TestNamespace(ns, addr):
        e = Etcd(ns, addr, tempfile.mkdtemp(prefix="tw-etcd-"))
        e.start()
        try:
            yield e
        finally:
            e.stop()


def _in(etcd, fn):
    return in_netns(etcd.ns, lambda: fn(cluster.Etcd([etcd.url])))


def test_cas_conflict_against_real_etcd(etcd):
    key = cluster.config_key("cas")
    ok, r1 = _in(etcd, lambda e: e.cas_put(key, "a", 0))
    assert ok
    ok, _ = _in(etcd, lambda e: e.cas_put(key, "b", 0))        # exists: 0 is stale
    assert not ok
    ok, r2 = _in(etcd, lambda e: e.cas_put(key, "c", r1))
    assert ok and r2 > r1
    ok, _ = _in(etcd, lambda e: e.cas_put(key, "d", r1))       # stale again
    assert not ok
    assert _in(etcd, lambda e: e.get(key))[:2] == (b"c", r2)


def test_every_instance_gets_one_splice_secret_from_real_etcd(etcd):
    """The first to ask makes it, two more asking at once read the same one, another cluster
    has its own, and a stored key that is not 16 bytes of hex is an error."""
    got = [_in(etcd, lambda e: cluster.splice_secret(None, "sec", etcd=e))]
    out = []
    ts = [threading.Thread(target=lambda: out.append(_in(
        etcd, lambda e: cluster.splice_secret(None, "sec", etcd=e)))) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    got += out
    assert len(got) == 3 and len(set(got)) == 1 and len(got[0]) == cluster.SECRET_LEN
    assert _in(etcd, lambda e: cluster.splice_secret(None, "other", etcd=e)) != got[0]
    _in(etcd, lambda e: e.put(cluster.cluster_config.secret_key("bad"), "zz"))
    with pytest.raises(cluster.EtcdError):
        _in(etcd, lambda e: cluster.splice_secret(None, "bad", etcd=e))


class RacingEtcd(cluster.Etcd):
    """A real client that lets a second real writer in between its first read and write
    (the race of two lbctl --cluster at once, made to happen every time)."""

    def __init__(self, urls, other):
        super().__init__(urls)
        self.other = other
        self.reads = 0

    def get(self, key):
        r = super().get(key)
        self.reads += 1
        if self.reads == 1:
            self.other()
        return r


def test_run_command_rereads_and_reapplies_on_conflict(etcd):
    name = "race"

    def run(e):
        cluster.run_command(None, name, "vip.add", {"vip": "198.19.100.1:80"}, etcd=e)
        other = lambda: cluster.run_command(None, name, "vip.add", {"vip": "198.19.100.2:80"},
                                            etcd=cluster.Etcd([etcd.url]))   # noqa: E731
        racing = RacingEtcd([etcd.url], other)
        r = cluster.run_command(None, name, "backend.add",
                                {"vip": "198.19.100.1:80", "backend": "198.19.0.11"},
                                etcd=racing)
        assert r["tries"] == 2 and r["written"]
        text, _, _ = e.get(cluster.config_key(name))
        vips = cluster.Editor(text).handle("vip.list", {})
        assert [v["vip"] for v in vips] == ["198.19.100.1:80", "198.19.100.2:80"]
        assert [b["backend"] for b in vips[0]["backends"]] == ["198.19.0.11:80"]
        # --expect-revision: the same race fails instead, nothing written
        _, rev, _ = e.get(cluster.config_key(name))
        other2 = lambda: cluster.run_command(None, name, "vip.add", {"vip": "198.19.100.3:80"},
                                             etcd=cluster.Etcd([etcd.url]))   # noqa: E731
        with pytest.raises(cluster.ConflictError):
            cluster.run_command(None, name, "backend.add",
                                {"vip": "198.19.100.1:80", "backend": "198.19.0.12"},
                                expect_revision=rev, etcd=RacingEtcd([etcd.url], other2))
        text, _, _ = e.get(cluster.config_key(name))
        assert "198.19.0.12" not in text.decode() and "198.19.100.3" in text.decode()
        # a refused command writes nothing
        _, rev, _ = e.get(cluster.config_key(name))
        with pytest.raises(LBError) as x:
            cluster.run_command(None, name, "backend.weight",
                                {"vip": "198.19.100.1:80", "backend": "198.19.0.11",
                                 "weight": -1}, etcd=e)
        assert x.value.field == "weight"
        assert e.get(cluster.config_key(name))[1] == rev
    in_netns(etcd.ns, lambda: run(cluster.Etcd([etcd.url])))


def _until(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)        # poll interval, bounded by the deadline
    raise AssertionError("condition not met within %g s" % timeout)


def test_agent_delivers_revisions_in_order_and_keeps_membership(etcd):
    name = "agent"
    ccfg = cluster.ClusterConfig(name, (etcd.url,), "lb7", lease_ttl=2)
    got, members = [], []
    lock = threading.Lock()

    def deliver(fn, *a):
        with lock:
            fn(*a)
    agent = cluster.Agent(ccfg, lambda v, mod, at: got.append((v, mod)),
                          lambda: {"instance": "lb7", "data": "198.19.0.7", "sync": None},
                          deliver)
    agent.subscribe(lambda m: members.append(sorted(m)))
    in_netns(etcd.ns, agent.start)          # its threads live in the namespace
    try:
        _until(lambda: agent.connected and "lb7" in agent.members())
        assert agent.members()["lb7"]["data"] == "198.19.0.7"
        assert agent.members()["lb7"]["mgmt"] == etcd.address
        key = cluster.config_key(name)
        revs = []
        for i in range(5):
            _, cur, _ = _in(etcd, lambda e: e.get(key))
            ok, r = _in(etcd, lambda e: e.cas_put(key, "# %d\n" % i, cur))
            assert ok
            revs.append(r)
        _until(lambda: got and got[-1][1] == revs[-1])
        assert [m for _, m in got] == revs
        assert [v for v, _ in got] == [("# %d\n" % i).encode() for i in range(5)]
        # a second member's lease key comes and, revoked, goes
        lease = _in(etcd, lambda e: e.grant(5))
        _in(etcd, lambda e: e.put(cluster.members_prefix(name) + "lb8", '{"data": "x"}', lease))
        _until(lambda: "lb8" in agent.members())
        _in(etcd, lambda e: e.revoke(lease))
        _until(lambda: "lb8" not in agent.members())
        assert ["lb7", "lb8"] in members and members[-1] == ["lb7"]
    finally:
        agent.stop()
    left = _in(etcd, lambda e: e.get_prefix(cluster.members_prefix(name)))[0]
    assert left == []                       # stop revoked the lease


def test_agent_hands_the_clusters_splice_secret_over_before_it_says_connected(etcd):
    """Two agents of one cluster: each delivers the same key to its on_secret once, and
    before `connected` (a joining lbd starts its workers after that)."""
    keys = []
    agents = []
    for inst in ("lb1", "lb2"):
        ccfg = cluster.ClusterConfig("sec2", (etcd.url,), inst, lease_ttl=2)
        got = []
        a = cluster.Agent(ccfg, lambda v, mod, at: None,
                          lambda inst=inst: {"instance": inst, "data": "198.19.0.7", "sync": None},
                          lambda fn, *x: fn(*x))
        a.on_secret = lambda k, got=got, a=a: got.append((k, a.connected))
        agents.append(a)
        keys.append(got)
        in_netns(etcd.ns, a.start)
    try:
        _until(lambda: all(a.connected for a in agents))
        assert [len(g) for g in keys] == [1, 1]
        assert keys[0][0][0] == keys[1][0][0] and len(keys[0][0][0]) == cluster.SECRET_LEN
        assert not keys[0][0][1] and not keys[1][0][1]      # before connected
        assert all(a.on_secret is None and a.secret_error is None for a in agents)
    finally:
        for a in agents:
            a.stop()


def test_agent_survives_etcd_restart_and_catches_up(etcd):
    name = "restart"
    ccfg = cluster.ClusterConfig(name, (etcd.url,), "lb1", lease_ttl=2)
    got = []
    agent = cluster.Agent(ccfg, lambda v, mod, at: got.append((v, mod)), dict,
                          lambda fn, *a: fn(*a))
    in_netns(etcd.ns, agent.start)
    try:
        _until(lambda: agent.connected)
        etcd.kill()
        _until(lambda: not agent.connected)
        assert agent.last_error
        etcd.start()
        key = cluster.config_key(name)
        ok, r = _in(etcd, lambda e: e.cas_put(key, "# back\n", 0))
        assert ok
        _until(lambda: got and got[-1] == (b"# back\n", r), 20.0)
        _until(lambda: agent.connected and "lb1" in agent.members(), 20.0)
    finally:
        agent.stop()


def test_agent_notices_a_silent_etcd(etcd):
    """etcd stopped (SIGSTOP: no FIN, no RST, the watch stream just goes quiet): the lease
    keep-alive times out and cuts the watch, the agent says disconnected; SIGCONT: back."""
    import signal
    ccfg = cluster.ClusterConfig("silent", (etcd.url,), "lb1", lease_ttl=2)
    agent = cluster.Agent(ccfg, lambda v, mod, at: None, dict, lambda fn, *a: fn(*a))
    in_netns(etcd.ns, agent.start)
    try:
        _until(lambda: agent.connected and agent.lease_ok)
        os.kill(etcd.pid, signal.SIGSTOP)
        try:
            _until(lambda: not agent.connected, 15.0)
            assert not agent.lease_ok and agent.last_error
        finally:
            os.kill(etcd.pid, signal.SIGCONT)
        _until(lambda: agent.connected and agent.lease_ok, 20.0)
    finally:
        agent.stop()


def test_runtime_in_an_event_loop_applies_and_tells_subscribers(etcd):
    """The daemon's wiring: Runtime.start(loop) -> documents applied to a real LBState in the
    loop, member changes to a subscriber given before start."""
    import asyncio
    cfg = config.loads(BASE.replace("http://198.18.250.9:2379", etcd.url)
                       .replace('name = "lab"', 'name = "rt"'))
    st = LBState(fastpath.Engine(1024), cfg)
    rt = cluster.Runtime(st, cfg)
    seen = []
    rt.subscribe(lambda m: seen.append(sorted(m)))
    key = cluster.config_key("rt")
    ok, rev = _in(etcd, lambda e: e.cas_put(key, DOC, 0))
    assert ok
    loop = asyncio.new_event_loop()

    async def until(pred, timeout=15.0):
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, "not within %g s: %s" % (timeout, rt.view())
            await asyncio.sleep(0.02)
    try:
        in_netns(etcd.ns, rt.start, loop)
        loop.run_until_complete(until(lambda: rt.revision == rev and ["lb1"] in seen))
        assert [v["vip"] for v in st.handle("vip.list", {})] == ["198.19.100.1:80"]
        assert rt.members()["lb1"]["data"] == "198.19.0.2"
        assert rt.view()["connected"] and rt.view()["revision"] == rev
    finally:
        rt.stop()
        loop.close()
