"""A hop VIP in lb/state.py, on both twins: added with pools and rules as splice has them,
switched to splice and back keeping them (Mode.carries_options_from), splice's set
arguments shared, hop's own checks (TCP only, the VIP's port), and a failed switch that
changes nothing."""
import pytest

from fastpath import defs
from lb.errors import LBError
from lb.state import LBState

from .test_state import B1, B2, MACS, VIP, SpyEngine, ip, make_cfg

EP = VIP + ":80"


@pytest.fixture
def st(impl):
    e = impl.Engine(1024)
    e.set_local(ip("198.19.0.2"), bytes.fromhex("025457000002"))
    s = LBState(SpyEngine(e), make_cfg())
    for b, mac in MACS.items():
        s.learn_neighbor(ip(b), mac)
    s.handle("vip.add", {"vip": EP, "mode": "hop"})
    s.handle("backend.add", {"vip": EP, "backend": B1, "pool": "small"})
    s.handle("backend.add", {"vip": EP, "backend": B2, "pool": "big"})
    s.handle("rule.add", {"vip": EP, "kind": "path_prefix", "value": "/blob", "pool": "big",
                          "action": "forward"})
    return s


def spec(st):
    return [s for s in st.engine.calls[-1][1] if s.port == 80][0]


def test_a_hop_vip_goes_down_with_its_rules(st):
    s = spec(st)
    assert s.mode == defs.MODE_HOP and s.l7 is not None and len(s.l7.pools) == 2
    assert [r[0] for r in s.l7.rules] == [defs.L7_PATH]


def test_switching_between_splice_and_hop_keeps_rules_and_pools(st):
    v = st.handle("vip.set", {"vip": EP, "mode": "splice"})
    assert v["mode"] == "splice" and len(v["rules"]) == 1
    assert spec(st).mode == defs.MODE_SPLICE and spec(st).l7.rules == spec(st).l7.rules
    v = st.handle("vip.set", {"vip": EP, "mode": "hop", "splice_limit": 2048})
    assert v["mode"] == "hop" and len(v["rules"]) == 1 and v["splice_limit"] == 2048
    assert spec(st).mode == defs.MODE_HOP
    # leaving for a mode without rules is refused, and changes nothing
    before = st.handle("vip.list", {})
    with pytest.raises(LBError) as ei:
        st.handle("vip.set", {"vip": EP, "mode": "dsr"})
    assert ei.value.field == "mode" and "splice and hop" in ei.value.message
    assert st.handle("vip.list", {}) == before


def test_hop_checks_the_port_and_the_protocol(st):
    with pytest.raises(LBError) as ei:
        st.handle("backend.add", {"vip": EP, "backend": "198.19.0.13:8080", "pool": "big"})
    assert ei.value.field == "backend" and "port" in ei.value.message
    with pytest.raises(LBError) as ei:
        st.handle("vip.add", {"vip": VIP + ":53", "proto": "udp", "mode": "hop"})
    assert ei.value.field == "proto"
    with pytest.raises(LBError) as ei:
        st.handle("vip.set", {"vip": EP, "splice_limit": 10})
    assert ei.value.field == "splice_limit"


def test_a_hop_vip_in_toml_takes_splices_keys():
    from lb import config
    cfg = config.parse({"lb": {"address": "198.19.0.2", "gateway": "198.19.0.1"}, "vip": [
        {"address": VIP, "port": 80, "mode": "hop",
         "backend": [{"address": B1, "pool": "small"}, {"address": B2, "pool": "big"}],
         "rule": [{"kind": "path_prefix", "value": "/blob", "pool": "big"}],
         "splice": {"limit": 2048}}]})
    v = cfg.vips[0]
    assert v.mode == "hop" and len(v.options.rules) == 1 and v.options.limit == 2048
    with pytest.raises(LBError) as ei:
        config.parse({"lb": {"address": "198.19.0.2", "gateway": "198.19.0.1"}, "vip": [
            {"address": VIP, "port": 80, "mode": "dsr", "backend": [{"address": B1}],
             "rule": [{"kind": "default", "pool": "default"}]}]})
    assert ei.value.field == "vip[0].rule" and "splice and hop" in ei.value.message
