"""lb/running.py and LBState's save / restore / reload, on both twins (ids `cy`, `py`).

- Round trip: config.parse(dump(cfg)) == cfg over hypothesis-made configs (every mode,
  scheduler, io backend, health check, mode option and content rule), through the TOML text;
  and a running LBState changed by commands saves a file that reads back as what it runs,
  and that a fresh LBState restores to the same `vip list`.
- Reload diffs: each kind of change reported, and applied (the engine forwards by the new
  table, timeouts expire flows at the new age); VIPs that stay keep their flows.
- Bad files (fixed fields, bad values, syntax, a missing health interface) name the field
  and leave LBState and the engine untouched: no engine write at all, same vip list, same
  flows, same picks.
- Dry run: reports what the real apply then does (the diff between the state before and
  after), and writes nothing.
"""
import copy
import ipaddress

import dpkt
import pytest
from hypothesis import HealthCheck as HC, given, settings, strategies as st

import modes
from fastpath import defs
from lb import config, running, schedulers
from lb.errors import LBError
from lb.state import LBState
from modes.splice import KINDS

from .test_state import (B1, B2, B3, CLIENT_IP, GW_IP, GW_MAC, LB_IP, LB_MAC, MACS, NOW,
                         SpyEngine, forwarded_to, ip, send, tcp_frame)

VIP_NET = "198.19.100."
BACKEND_IPS = ["198.19.0.%d" % i for i in (11, 12, 13, 14)] + ["198.19.200.11", "198.19.200.12"]
PRIMES = (251, 503, 1009)

# --- hypothesis: raw [[vip]] tables and whole documents that config.parse accepts ---------------


@st.composite
def rules(draw, pools, limit):
    out = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from([k for k in KINDS if k != "default"]))
        value = {"method": st.sampled_from(["GET", "POST", "PUT"]),
                 "path_prefix": st.sampled_from(["/", "/blob", "/a/b"]),
                 "host": st.sampled_from(["www.Example.com", "*.example.com", "a-b.test."]),
                 "sni": st.sampled_from(["secure.example.com", "*.Example.org"]),
                 "prefix": st.sampled_from(["GET ", "\\x16\\x03", "a\\\\b", "\\r\\n"]),
                 "rtsp": st.sampled_from(["/", "/live"])}[kind]
        r = {"kind": kind, "value": draw(value), "pool": draw(st.sampled_from(pools))}
        if kind != "sni" and draw(st.booleans()):
            r["action"] = draw(st.sampled_from(["forward", "redirect"]))
        if r.get("action", "redirect" if kind == "rtsp" else "forward") == "redirect" and (
                draw(st.booleans())):
            r["probe"] = draw(st.one_of(st.booleans(), st.fixed_dictionaries({}, optional={
                "path": st.sampled_from(["", "/"]), "expect": st.sampled_from(["2xx,3xx", "200"]),
                "timeout": st.sampled_from([0.05, 1, 30]), "tries": st.integers(1, 16),
                "cache": st.sampled_from([0, 1, 3600])})))
        if kind == "rtsp" and draw(st.booleans()):
            r["agent"] = draw(st.sampled_from(["VLC", "ffmpeg/Lavf"]))
        out.append(r)
    if draw(st.booleans()):
        out.append({"kind": "default", "pool": draw(st.sampled_from(pools))})
    return out


@st.composite
def vip_tables(draw, address, port, interface, small=False):
    mode = draw(st.sampled_from(sorted(modes.REGISTRY)))
    m = modes.REGISTRY[mode]
    proto = "tcp" if m.rules else draw(st.sampled_from(["tcp", "udp"]))
    raw = {"address": address, "port": port, "mode": mode}
    if draw(st.booleans()):
        raw["proto"] = proto
    sched = draw(st.sampled_from(schedulers.NAMES + (None,)))
    if sched is not None:
        raw["scheduler"] = sched
    ips = draw(st.lists(st.sampled_from(BACKENDS_FOR[mode]), max_size=3, unique=True))
    pools = ["default", "big", "a.b"] if m.pools else ["default"]
    backends = []
    for b in ips:
        t = {"address": b}
        if draw(st.booleans()):
            t["port"] = port if m.probe_via_vip else draw(st.sampled_from([port, 8080]))
        if draw(st.booleans()):
            t["weight"] = draw(st.sampled_from([0, 1, 7, 65535]))
        if m.pools and draw(st.booleans()):
            t["pool"] = draw(st.sampled_from(pools))
        if draw(st.booleans()):
            t["name"] = draw(st.sampled_from(["media3.example", "B1.Example.COM"]))
        backends.append(t)
    if backends:
        raw["backend"] = backends
    if (sched or m.default_scheduler) == "maglev" and (small or draw(st.booleans())):
        raw["maglev_size"] = draw(st.sampled_from([p for p in PRIMES
                                                   if p >= 100 * len(backends)]))
    if draw(st.booleans()):
        raw["on_backend_down"] = draw(st.sampled_from(config.ON_BACKEND_DOWN))
    if proto == "tcp" and (interface or not m.probe_via_vip) and draw(st.booleans()):
        check = draw(st.sampled_from(["tcp", "http", "none"]))
        h = {"check": check}
        if check == "http" and draw(st.booleans()):
            h.update(path="/health", expect=204)
        if draw(st.booleans()):
            h.update(interval=draw(st.sampled_from([0.05, 0.5, 2, 3600])), rise=3, fall=1,
                     timeout=draw(st.sampled_from([0.3, 1])))
        raw["health"] = h
    if "tunnel" in m.toml_keys and draw(st.booleans()):
        raw["tunnel"] = {"vni": draw(st.integers(1, (1 << 24) - 1)),
                         "mtu": draw(st.integers(576, 9000))}
    if m.rules:
        limit = draw(st.sampled_from([64, 4096, 65536]))
        if draw(st.booleans()):
            raw["splice"] = {"limit": limit, "timeout": draw(st.sampled_from([0.05, 3, 59.5]))}
        have = sorted({b.get("pool", "default") for b in backends})
        if have:
            rs = draw(rules(have, limit))
            if rs:
                raw["rule"] = rs
    return raw


# the backends each mode may use: tunnel's are remote, the others share the LB's segment
BACKENDS_FOR = {name: BACKEND_IPS[4:] if "tunnel" in m.toml_keys else BACKEND_IPS[:4]
                for name, m in modes.REGISTRY.items()}


@st.composite
def documents(draw, fixed=None):
    """A TOML document (dict) config.parse accepts. fixed: [lb]/[io]/[flows].capacity/
    [health].max_in_flight to use (restore and reload need the running ones)."""
    interface = draw(st.sampled_from([None, "mg0"]))
    if fixed is None:
        backend = draw(st.sampled_from(config.IO_BACKENDS))
        io = {"backend": backend, "interface": draw(st.sampled_from(["lbtap", "dp0"]))}
        if draw(st.booleans()):          # left out: lbd's default (on where the device takes it)
            io["offload"] = draw(st.booleans())
        if backend == "tap":
            io["workers"] = draw(st.integers(1, 16))
            if draw(st.booleans()):
                io["rps"] = draw(st.booleans())
        if draw(st.booleans()):          # left out: FIFO where the kernel allows it
            io["realtime"] = draw(st.booleans())
        lb = {"address": LB_IP}
        if draw(st.booleans()):
            lb["mac"] = "02:54:57:00:00:02"
        if draw(st.booleans()):
            lb["gateway"] = GW_IP
        if draw(st.booleans()):
            lb["control_socket"] = "/tmp/lbd-test.sock"
        doc = {"lb": lb, "io": io, "flows": {"capacity": draw(st.integers(1, 1 << 20))}}
        if draw(st.booleans()):
            doc["metrics"] = {"listen": draw(st.sampled_from(["198.19.0.3:9100",
                                                               "0.0.0.0:9101"]))}
        health = {"max_in_flight": draw(st.integers(1, 4096))}
        if draw(st.booleans()):          # lb/cluster.py's table
            doc["cluster"] = {"name": "lab", "instance": draw(st.sampled_from(["lb1", "x.y-2"])),
                              "etcd": draw(st.sampled_from([
                                  "http://198.19.0.4:2379",
                                  ["http://198.19.0.4:2379", "http://198.19.0.5:2380"]]))}
            if draw(st.booleans()):
                doc["cluster"]["lease_ttl"] = draw(st.integers(1, 60))
    else:
        doc = copy.deepcopy(fixed)
        health = doc.pop("health", {})
    health.pop("interface", None)
    if interface:
        health["interface"] = interface
    doc["health"] = health
    keys = draw(st.lists(st.sampled_from(sorted(defs.DEFAULT_TIMEOUTS)), unique=True))
    if keys:
        doc["flows"]["timeouts"] = {k: draw(st.integers(1, config.MAX_TIMEOUT_S)) for k in keys}
    slots = draw(st.lists(st.tuples(st.integers(1, 6), st.sampled_from([80, 443, 9000])),
                          max_size=5, unique=True))
    # small: Maglev tables of at most 1009 rows, for the tests that build them (a default
    # 65537-row table costs tens of ms)
    vips = [draw(vip_tables(VIP_NET + str(a), p, interface, fixed is not None))
            for a, p in slots]
    if vips:
        doc["vip"] = vips
    return doc


@settings(max_examples=150, deadline=None, suppress_health_check=[HC.too_slow])
@given(documents())
def test_parse_of_the_saved_text_is_the_config(doc):
    cfg = config.parse(doc)
    text = running.dumps(cfg, header="saved by a test")
    back = config.loads(text)
    assert back == cfg
    assert running.dump(back) == running.dump(cfg)
    assert running.diff(cfg, back)["changes"] == 0


def test_a_tomli_w_round_trip_keeps_escapes_and_floats():
    cfg = config.parse({"lb": {"address": LB_IP}, "vip": [
        {"address": "198.19.100.1", "port": 443, "mode": "splice",
         "splice": {"timeout": 0.1 + 0.2},
         "backend": [{"address": B1, "pool": "tls"}],
         "rule": [{"kind": "prefix", "value": "\\x16\\x03", "pool": "tls"},
                  {"kind": "host", "value": "WWW.Example.COM.", "pool": "tls"}]}]})
    text = running.dumps(cfg)
    back = config.loads(text)
    assert back == cfg
    [v] = back.vips
    assert v.options.timeout == 0.1 + 0.2
    assert [r.value for r in v.options.rules] == ["\\x16\\x03", "www.example.com"]


def test_every_mode_dumps_what_it_parses():
    for name, m in modes.REGISTRY.items():
        o = m.default_options()
        raw = m.dump_options(o)
        assert set(raw) <= set(m.toml_keys), name
        assert m.parse_options(raw, "vip[0]", []) == o, name


# --- a running LBState -------------------------------------------------------------------------

BASE = {"lb": {"address": LB_IP, "gateway": GW_IP}, "flows": {"capacity": 1024}}


def state_of(impl, doc, interfaces=("mg0",)):
    e = SpyEngine(impl.Engine(1024))
    e.set_local(ip(LB_IP), LB_MAC)
    s = LBState(e, config.parse(doc))

    def interface_check(name):
        if name not in interfaces:
            raise LBError("interface", "no interface %r in lbd's namespace" % name)
        return name
    s.interface_check = interface_check
    s.clock = lambda: NOW
    for b, mac in MACS.items():
        s.learn_neighbor(ip(b), mac)
    s.learn_neighbor(ip(GW_IP), GW_MAC)
    e.calls.clear()
    return s


def without_slots(vips):
    """vip.list with the real slot numbers left out (a fresh lbd numbers them anew)."""
    out = copy.deepcopy(vips)
    for v in out:
        for b in v["backends"]:
            b.pop("real")
            if b["health"]:
                b["health"].pop("since")     # the wall clock when the checks began
    return out


COMMANDS = st.sampled_from([
    ("vip.add", {"vip": "198.19.100.9:80", "mode": "splice"}),
    ("vip.add", {"vip": "198.19.100.8:53", "proto": "udp", "mode": "dsr"}),
    ("backend.add", {"vip": "198.19.100.9:80", "backend": B1, "pool": "big", "weight": 3}),
    ("backend.add", {"vip": "198.19.100.9:80", "backend": B2 + ":8080"}),
    ("backend.del", {"vip": "198.19.100.9:80", "backend": B1}),
    ("rule.add", {"vip": "198.19.100.9:80", "kind": "path_prefix", "value": "/blob",
                  "pool": "big"}),
    ("rule.add", {"vip": "198.19.100.9:80", "kind": "host", "value": "*.Example.com",
                  "pool": "big", "action": "redirect", "index": 0}),
    ("vip.set", {"vip": "198.19.100.9:80", "splice_limit": 128, "splice_timeout": 0.25}),
    ("vip.health", {"vip": "198.19.100.9:80", "check": "http", "path": "/h", "rise": 5}),
    ("vip.health", {"vip": "198.19.100.9:80", "check": "none"}),
    ("backend.add", {"vip": "198.19.100.8:53", "backend": B3}),
    ("vip.set", {"vip": "198.19.100.8:53", "proto": "udp", "scheduler": "maglev",
                 "maglev_size": 251}),
    ("vip.set", {"vip": "198.19.100.8:53", "proto": "udp", "mode": "tunnel",
                 "tunnel_vni": 99}),
    ("vip.set", {"vip": "198.19.100.8:53", "proto": "udp", "on_backend_down": "expire"}),
    ("backend.weight", {"vip": "198.19.100.8:53", "proto": "udp", "backend": B3, "weight": 0}),
    ("health.interface", {"interface": "mg0"}),
    ("vip.del", {"vip": "198.19.100.9:80"}),
])


@settings(max_examples=30, deadline=None, suppress_health_check=[HC.too_slow,
                                                                 HC.function_scoped_fixture])
@given(doc=documents(fixed=BASE), cmds=st.lists(COMMANDS, max_size=10))
def test_save_of_a_changed_state_restores_to_the_same_table(impl, doc, cmds):
    s = state_of(impl, doc)
    for cmd, args in cmds:
        try:
            s.handle(cmd, dict(args))
        except LBError:
            pass                 # refused (e.g. no such VIP yet): nothing changed
    saved = s.handle("config.save", {})
    back = config.loads(saved["toml"])
    assert back == s.running_config()
    assert saved["config"] == running.dump(back)
    fresh = state_of(impl, BASE)
    r = fresh.handle("config.restore", {"toml": saved["toml"]})
    assert r["applied"] and not r["dry_run"]
    assert without_slots(fresh.handle("vip.list", {})) == without_slots(s.handle("vip.list", {}))
    assert fresh.running_config() == s.running_config()


# --- reload: each kind of change ---------------------------------------------------------------

VA, VB = "198.19.100.1", "198.19.100.2"


def doc_with(vips, **extra):
    d = copy.deepcopy(BASE)
    d["vip"] = vips
    for k, v in extra.items():
        d[k] = v
    return d


def nat(address, *backends, **kw):
    return dict({"address": address, "port": 80, "mode": "nat", "scheduler": "rr",
                 "backend": [{"address": b} for b in backends]}, **kw)


def apply(s, doc, dry_run=False):
    return s.apply_config(config.parse(doc), dry_run=dry_run)


@pytest.fixture
def two(impl):
    return state_of(impl, doc_with([nat(VA, B1, B2), nat(VB, B3)]))


def test_reload_reports_and_applies_an_added_and_a_removed_vip(two):
    d = apply(two, doc_with([nat(VA, B1, B2), nat("198.19.100.3", B3)]))
    assert d["vips"]["added"] == [{"vip": "198.19.100.3:80/tcp", "mode": "nat",
                                   "scheduler": "rr", "backends": 1}]
    assert d["vips"]["removed"] == [{"vip": VB + ":80/tcp", "mode": "nat", "backends": 1}]
    assert d["vips"]["changed"] == [] and d["changes"] == 2
    assert [v["vip"] for v in two.handle("vip.list", {})] == [VA + ":80", "198.19.100.3:80"]
    # the engine has the new table: the new VIP forwards, the removed one does not
    [r] = send(two.engine, tcp_frame(40000, vip="198.19.100.3"))
    assert forwarded_to(r)[0] == B3
    [r] = send(two.engine, tcp_frame(40001, vip=VB))
    assert r[0] != defs.V_TX


def test_reload_reports_changed_fields_backends_and_order(two):
    va = nat(VA, B2, B1, B3)
    va["backend"][0]["weight"] = 5
    va.update(scheduler="maglev", maglev_size=503, on_backend_down="keep")
    d = apply(two, doc_with([va, nat(VB)]))
    a, b = d["vips"]["changed"]
    assert a["vip"] == VA + ":80/tcp"
    assert a["fields"] == {"scheduler": ["rr", "maglev"], "maglev_size": [None, 503],
                           "on_backend_down": [None, "keep"],
                           "backend_order": [[B1 + ":80", B2 + ":80"], [B2 + ":80", B1 + ":80"]]}
    assert a["backends"] == {"added": [{"backend": B3 + ":80", "weight": 1, "pool": "default"}],
                             "removed": [], "repooled": [], "renamed": [],
                             "reweighted": [{"backend": B2 + ":80", "old": 1, "new": 5}]}
    assert b == {"vip": VB + ":80/tcp", "fields": {}, "backends": {
        "added": [], "removed": [B3 + ":80"], "reweighted": [], "repooled": [], "renamed": []}}
    assert d["changes"] == 4 + 2 + 1
    [v, w] = two.handle("vip.list", {})
    assert (v["scheduler"], v["maglev_size"], v["on_backend_down"]) == ("maglev", 503, "keep")
    assert [(x["backend"], x["weight"]) for x in v["backends"]] == [
        (B2 + ":80", 5), (B1 + ":80", 1), (B3 + ":80", 1)]
    assert w["backends"] == []


def test_reload_reports_rules_and_mode_options(impl):
    sp = {"address": VA, "port": 80, "mode": "splice",
          "backend": [{"address": B1, "pool": "big"}, {"address": B2}],
          "rule": [{"kind": "path_prefix", "value": "/blob", "pool": "big"}]}
    tn = {"address": VB, "port": 80, "mode": "tunnel", "backend": [{"address": "198.19.200.11"}]}
    s = state_of(impl, doc_with([sp, tn]))
    sp2 = copy.deepcopy(sp)
    sp2["rule"].insert(0, {"kind": "method", "value": "POST", "pool": "big"})
    sp2["splice"] = {"limit": 256}
    sp2["backend"][1]["pool"] = "big"
    tn2 = dict(tn, tunnel={"vni": 77})
    d = apply(s, doc_with([sp2, tn2]))
    a, b = d["vips"]["changed"]
    assert a["rules"] == {"old": ['path_prefix "/blob" -> big'],
                          "new": ['method "POST" -> big', 'path_prefix "/blob" -> big']}
    assert a["fields"] == {"splice.limit": [4096, 256]}
    assert a["backends"]["repooled"] == [{"backend": B2 + ":80", "old": "default", "new": "big"}]
    assert b["fields"] == {"tunnel.vni": [4242, 77]}
    [v, w] = s.handle("vip.list", {})
    assert [r["text"] for r in v["rules"]] == a["rules"]["new"] and v["splice_limit"] == 256
    assert w["tunnel"]["vni"] == 77


def udp_frame(sport, vip=VA, dport=53):
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=b"q")
    u.ulen = len(u)
    p = dpkt.ip.IP(src=ipaddress.IPv4Address(CLIENT_IP).packed,
                   dst=ipaddress.IPv4Address(vip).packed, p=dpkt.ip.IP_PROTO_UDP, ttl=64, data=u)
    p.len = len(p)
    return bytes(dpkt.ethernet.Ethernet(dst=LB_MAC, src=bytes.fromhex("020000000001"),
                                        type=dpkt.ethernet.ETH_TYPE_IP, data=p))


def test_reload_applies_timeouts_to_the_engine(impl):
    vip = dict(nat(VA, B1), port=53, proto="udp")
    s = state_of(impl, doc_with([vip]))
    send(s.engine, udp_frame(5000), now=NOW)
    assert s.engine.flow_count() == 1
    s.engine.expire(NOW + 30_000, 1 << 20)
    assert s.engine.flow_count() == 1                  # udp: 300 s by default
    d = apply(s, doc_with([vip], flows={"capacity": 1024, "timeouts": {"udp": 20}}))
    assert d["timeouts"] == {"udp": [300, 20]} and d["changes"] == 1
    assert s.timeouts["udp"] == 20
    assert ("set_timeouts", s.timeouts) in s.engine.calls
    s.engine.expire(NOW + 30_000, 1 << 20)
    assert s.engine.flow_count() == 0                  # idle 30 s > the new 20 s
    assert s.running_config().flows.timeouts["udp"] == 20


def test_reload_sets_the_health_interface(impl):
    dsr = {"address": VA, "port": 80, "mode": "dsr", "backend": [{"address": B1}],
           "health": {"check": "tcp"}}
    s = state_of(impl, doc_with([]))
    d = apply(s, doc_with([dsr], health={"interface": "mg0"}))
    assert d["health"] == {"interface": [None, "mg0"]}
    assert s.health_interface == "mg0"
    assert s.handle("vip.list", {})[0]["health"]["check"] == "tcp"


def test_vips_that_stay_keep_their_flows_and_backend(two):
    [r] = send(two.engine, tcp_frame(41000, vip=VA))
    first = forwarded_to(r)[0]
    before = two.engine.flows()
    # VA's backends are reordered and another is added; with rr a new flow would move
    d = apply(two, doc_with([nat(VA, B3, B2, B1), nat("198.19.100.3", B3)]))
    assert d["changes"] > 0
    assert two.engine.flows() == before
    [r] = send(two.engine, tcp_frame(41000, flags=dpkt.tcp.TH_ACK, vip=VA))
    assert forwarded_to(r)[0] == first


# --- bad files change nothing ------------------------------------------------------------------

def snapshot(s):
    # explain, not pick: a pick moves an rr cursor, and the snapshot must change nothing
    picks = [s.engine.explain(ip(CLIENT_IP), p, ip(VA), 80, 6) for p in range(1000, 1064)]
    return (s.handle("vip.list", {}), s.running_config(), s.engine.flows(), picks,
            dict(s.timeouts), s.health_interface)


FIXED_CHANGES = [
    ("lb.address", {"lb": {"address": "198.19.0.99", "gateway": GW_IP}}),
    ("lb.gateway", {"lb": {"address": LB_IP}}),
    ("lb.mac", {"lb": {"address": LB_IP, "gateway": GW_IP, "mac": "02:00:00:00:00:09"}}),
    ("lb.control_socket", {"lb": {"address": LB_IP, "gateway": GW_IP,
                                  "control_socket": "/tmp/other.sock"}}),
    ("io.backend", {"io": {"backend": "afpacket"}}),
    ("io.interface", {"io": {"interface": "other0"}}),
    ("io.offload", {"io": {"offload": True}}),
    ("io.workers", {"io": {"workers": 2}}),
    ("io.rps", {"io": {"rps": False}}),
    ("io.realtime", {"io": {"realtime": False}}),
    ("flows.capacity", {"flows": {"capacity": 2048}}),
    ("health.max_in_flight", {"health": {"max_in_flight": 8}}),
    ("metrics.listen", {"metrics": {"listen": "198.19.0.3:9100"}}),
]

BAD_VALUES = [
    ("vip[1].backend[0].weight", "\n[[vip]]\naddress = \"%s\"\nport = 80\n"
     "[[vip]]\naddress = \"%s\"\nport = 80\n[[vip.backend]]\naddress = \"%s\"\nweight = -1\n"
     % (VA, VB, B1)),
    ("vip[0].mode", "\n[[vip]]\naddress = \"%s\"\nport = 80\nmode = \"nta\"\n" % VA),
    ("vip[0].rule[0].pool", "\n[[vip]]\naddress = \"%s\"\nport = 80\nmode = \"splice\"\n"
     "[[vip.backend]]\naddress = \"%s\"\n[[vip.rule]]\nkind = \"default\"\npool = \"nope\"\n"
     % (VA, B1)),
    ("flows.timeouts.udp", "\n[flows.timeouts]\nudp = 0\n"),
    ("vip[0].health.check", "\n[[vip]]\naddress = \"%s\"\nport = 80\nmode = \"dsr\"\n"
     "[vip.health]\ncheck = \"tcp\"\n" % VA),
    ("test.toml", "\n[[vip]]\naddress = \n"),
]

HEAD = '[lb]\naddress = "%s"\ngateway = "%s"\n[flows]\ncapacity = 1024\n' % (LB_IP, GW_IP)


def _merged(change):
    d = copy.deepcopy(doc_with([nat(VA, B1, B2)]))
    for section, table in change.items():
        if section == "lb":
            d["lb"] = table                 # whole: lb.gateway's change is its absence
        else:
            d.setdefault(section, {}).update(table)
    return d


@pytest.mark.parametrize("field,change", FIXED_CHANGES, ids=[f for f, _ in FIXED_CHANGES])
def test_a_fixed_field_that_differs_is_refused_by_name(two, field, change):
    before = snapshot(two)
    new = config.parse(_merged(change))
    for dry in (True, False):
        with pytest.raises(LBError) as e:
            two.apply_config(new, dry_run=dry)
        assert e.value.field == field and "cannot change while lbd runs" in e.value.message
    assert two.engine.calls == []
    assert snapshot(two) == before


@pytest.mark.parametrize("field,text", BAD_VALUES, ids=[f for f, _ in BAD_VALUES])
def test_a_bad_file_names_the_field_and_changes_nothing(two, tmp_path, field, text):
    before = snapshot(two)
    path = tmp_path / "test.toml"
    path.write_text(HEAD.replace("capacity = 1024\n", "capacity = 1024\n" + text)
                    if text.startswith("\n[flows") else HEAD + text)
    for cmd, args in (("config.reload", {"file": str(path)}),
                      ("config.reload", {"file": str(path), "dry_run": True}),
                      ("config.restore", {"toml": path.read_text(), "source": str(path)})):
        with pytest.raises(LBError) as e:
            two.handle(cmd, args)
        assert e.value.field == (str(path) if field == "test.toml" else field), e.value
    assert two.engine.calls == []
    assert snapshot(two) == before


def test_a_missing_health_interface_is_refused(two):
    before = snapshot(two)
    doc = doc_with([nat(VA, B1)], health={"interface": "mg9"})
    with pytest.raises(LBError) as e:
        apply(two, doc)
    assert e.value.field == "interface" and "mg9" in e.value.message
    assert two.engine.calls == [] and snapshot(two) == before


def test_reload_reads_lbds_own_file(impl, tmp_path):
    path = tmp_path / "lbd.toml"
    path.write_text(HEAD + '[[vip]]\naddress = "%s"\nport = 80\n' % VA)
    cfg = config.load(str(path))
    e = SpyEngine(impl.Engine(1024))
    e.set_local(ip(LB_IP), LB_MAC)
    s = LBState(e, cfg)
    assert s.handle("config.reload", {})["diff"]["changes"] == 0
    s.handle("vip.add", {"vip": VB + ":80"})              # not in the file: reload removes it
    path.write_text(HEAD + '[[vip]]\naddress = "%s"\nport = 80\nscheduler = "rr"\n' % VA)
    r = s.handle("config.reload", {"dry_run": True})
    assert r["dry_run"] and not r["applied"]
    assert r["diff"]["vips"]["removed"] == [{"vip": VB + ":80/tcp", "mode": "nat",
                                             "backends": 0}]
    assert r["diff"]["vips"]["changed"][0]["fields"] == {
        "scheduler": ["maglev", "rr"], "maglev_size": [65537, None]}
    assert len(s.handle("vip.list", {})) == 2
    r = s.handle("config.reload", {})
    assert r["applied"] and r["source"] == str(path)
    assert [(v["vip"], v["scheduler"]) for v in s.handle("vip.list", {})] == [(VA + ":80", "rr")]


def test_reload_args_are_checked(two):
    for args, fld in (({"dry_run": "yes"}, "dry_run"), ({"file": 3}, "file"),
                      ({"nope": 1}, "nope")):
        with pytest.raises(LBError) as e:
            two.handle("config.reload", args)
        assert e.value.field == fld
    with pytest.raises(LBError) as e:
        two.handle("config.restore", {})
    assert e.value.field == "toml"
    with pytest.raises(LBError) as e:
        two.handle("config.reload", {})              # made from a dict: no file
    assert e.value.field == "file"
    assert two.engine.calls == []


# --- dry run == what a real apply does ---------------------------------------------------------

@settings(max_examples=30, deadline=None, suppress_health_check=[HC.too_slow,
                                                                 HC.function_scoped_fixture])
@given(old=documents(fixed=BASE), new=documents(fixed=BASE))
def test_dry_run_reports_what_the_apply_then_does(impl, old, new):
    s = state_of(impl, old)
    before = snapshot(s)
    cfg = config.parse(new)
    dry = s.apply_config(cfg, dry_run=True)
    assert s.engine.calls == [] and snapshot(s) == before
    done = s.apply_config(cfg)
    assert done == dry
    after = s.running_config()
    assert running.diff(before[1], after) == dry         # the state did change by that
    assert after.vips == cfg.vips and after.flows.timeouts == cfg.flows.timeouts
    assert running.diff(after, cfg)["changes"] == 0
    assert (dry["changes"] == 0) == (running.dump(before[1]) == running.dump(after))


def test_a_command_cannot_make_a_table_that_saves_to_a_refused_file(impl):
    """A rule's pool must keep a backend (parse_options refuses a rule to an unknown pool)."""
    sp = {"address": VA, "port": 80, "mode": "splice",
          "backend": [{"address": B1, "pool": "big"}, {"address": B2}],
          "rule": [{"kind": "path_prefix", "value": "/b", "pool": "big"}]}
    s = state_of(impl, doc_with([sp]))
    with pytest.raises(LBError) as e:
        s.handle("backend.del", {"vip": VA + ":80", "backend": B1})
    assert e.value.field == "backend" and "pool 'big'" in e.value.message
    assert s.engine.calls == []
    s.handle("backend.weight", {"vip": VA + ":80", "backend": B1, "weight": 0})
    assert config.loads(s.handle("config.save", {})["toml"]) == s.running_config()
    s.handle("rule.del", {"vip": VA + ":80", "index": 0})
    s.handle("backend.del", {"vip": VA + ":80", "backend": B1})
    assert config.loads(s.handle("config.save", {})["toml"]) == s.running_config()
