"""splice's control side: pools and rules in LBState and the TOML config, with real twin
engines; errors name their field and change nothing."""
import pytest

from lb import config
from lb.errors import LBError
from lb.state import LBState

from .test_state import B1, B2, B3, GW_IP, LB_IP, ip

SV = "198.19.100.3:80"

@pytest.fixture
def st(impl):
    e = impl.Engine(1024)
    s = LBState(e, config.parse({"lb": {"address": LB_IP, "gateway": GW_IP}}))
    s.handle("vip.add", {"vip": SV, "mode": "splice"})
    s.handle("backend.add", {"vip": SV, "backend": B1})
    s.handle("backend.add", {"vip": SV, "backend": B2, "pool": "big"})
    s.handle("backend.add", {"vip": SV, "backend": B3, "pool": "big"})
    return s


def fails(st, cmd, args, field):
    before = st.handle("vip.list", {})
    with pytest.raises(LBError) as e:
        st.handle(cmd, args)
    assert e.value.field == field, e.value
    assert st.handle("vip.list", {}) == before


def test_rules_and_pools_decide_and_choose(st):
    v = st.handle("rule.add", {"vip": SV, "kind": "path_prefix", "value": "/blob", "pool": "big"})
    assert [r["text"] for r in v["rules"]] == ['path_prefix "/blob" -> big']
    sv = st.mode_vip("splice", ip("198.19.100.3"), 80)
    d = sv.ruleset.decide(b"GET /blob HTTP/1.1\r\nHost: x\r\n\r\n")
    assert d.pool == "big"
    assert sv.ruleset.decide(b"GET /id HTTP/1.1\r\nHost: x\r\n\r\n").pool == "default"
    picks = {sv.choose("big", ip("198.18.0.10"), 40000, st.engine)[1] for _ in range(4)}
    assert picks == {ip(B2), ip(B3)}                       # rr over the pool
    assert sv.choose("default", ip("198.18.0.10"), 40000, st.engine)[1:] == (ip(B1), 80)
    assert sv.choose("nope", ip("198.18.0.10"), 40000, st.engine) is None


def test_without_a_default_pool_unmatched_requests_are_refused(st):
    st.handle("backend.del", {"vip": SV, "backend": B1})
    st.handle("rule.add", {"vip": SV, "kind": "host", "value": "big.example", "pool": "big"})
    sv = st.mode_vip("splice", ip("198.19.100.3"), 80)
    from modes import splice as l7
    assert isinstance(sv.ruleset.decide(b"GET / HTTP/1.1\r\nHost: other\r\n\r\n"), l7.Refuse)


def test_rule_errors_name_the_field(st):
    fails(st, "rule.add", {"vip": SV, "kind": "hots", "value": "x", "pool": "big"}, "kind")
    fails(st, "rule.add", {"vip": SV, "kind": "host", "value": "x", "pool": "nopool"}, "pool")
    fails(st, "rule.add", {"vip": SV, "kind": "path_prefix", "value": "/x", "pool": "big",
                           "action": "redirect", "probe": {"tries": 99}}, "probe.tries")
    st.handle("rule.add", {"vip": SV, "kind": "default", "pool": "big"})
    fails(st, "rule.add", {"vip": SV, "kind": "method", "value": "GET", "pool": "big"}, "rule[1]")
    fails(st, "rule.del", {"vip": SV, "index": 5}, "index")
    st.handle("vip.add", {"vip": "198.19.100.1:80", "mode": "nat"})
    fails(st, "rule.add", {"vip": "198.19.100.1:80", "kind": "default", "pool": "x"}, "vip")
    fails(st, "backend.add", {"vip": "198.19.100.1:80", "backend": B1, "pool": "big"}, "pool")
    fails(st, "vip.set", {"vip": SV, "mode": "nat"}, "mode")
    fails(st, "vip.set", {"vip": SV, "splice_limit": 10}, "splice_limit")


def test_toml_rules_and_pools():
    cfg = config.parse({"lb": {"address": LB_IP, "gateway": GW_IP}, "vip": [{
        "address": "198.19.100.3", "port": 80, "mode": "splice",
        "splice": {"limit": 8192, "timeout": 1.5},
        "backend": [{"address": B1}, {"address": B2, "pool": "big"}],
        "rule": [{"kind": "path_prefix", "value": "/blob", "pool": "big", "action": "redirect"}]}]})
    v = cfg.vips[0]
    assert (v.options.limit, v.options.timeout, v.options.rules[0].action) == (8192, 1.5, "redirect")
    for bad, field in (({"rule": [{"kind": "default", "pool": "nope"}]}, "vip[0].rule[0].pool"),
                       ({"splice": {"limit": 1}}, "vip[0].splice.limit"),
                       ({"mode": "nat", "rule": [{"kind": "default", "pool": "default"}]},
                        "vip[0].rule")):
        raw = {"address": "198.19.100.3", "port": 80, "mode": "splice", "backend": [{"address": B1}]}
        raw.update(bad)
        with pytest.raises(LBError) as e:
            config.parse({"lb": {"address": LB_IP}, "vip": [raw]})
        assert e.value.field == field, e.value


def test_plain_rules_go_down_to_the_fast_path_and_sni_keeps_them_up(st):
    from fastpath import defs
    st.handle("rule.add", {"vip": SV, "kind": "path_prefix", "value": "/blob", "pool": "big"})
    sp = st.mode_vip("splice", ip("198.19.100.3"), 80).l7spec
    assert sp.limit == st.mode_vip("splice", ip("198.19.100.3"), 80).limit
    # the rule, then the default pool's implicit rule; pools in the order rules name them
    assert sp.rules == ((defs.L7_PATH, b"/blob", 0), (defs.L7_DEFAULT, b"", 1))
    (k0, t0, _), (k1, t1, _) = sp.pools
    assert sorted(t0) == sorted(st._slots[(ip(b), 80)] for b in (B2, B3))
    assert list(t1) == [st._slots[(ip(B1), 80)]]
    st.handle("rule.add", {"vip": SV, "kind": "sni", "value": "a.example", "pool": "big",
                           "index": 0})
    # a rule only Python can read (SNI): no rule goes down, the pools still do (the engine
    # picks the backend of every Python decision: one scheduler, one rr cursor)
    sp = st.mode_vip("splice", ip("198.19.100.3"), 80).l7spec
    assert sp.rules == () and [sorted(t) for _, t, _ in sp.pools] == [
        sorted(st._slots[(ip(b), 80)] for b in (B2, B3)), [st._slots[(ip(B1), 80)]]]
