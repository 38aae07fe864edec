"""hop's egress-gateway variant end to end: the same shim, loaded once, on the switch's ports
that face b1..b3 (`lb-lab up --egress-gateway`), one map for all three; the backends run no
program of ours.

   c1 -- rt -- brs -+- lbd (hop)
                    +- [shim] b1 (pool small)     the switch port bN: hop_ingress on its
                    +- [shim] b2, b3 (pool big)   egress hook (what goes to the server),
                                                  hop_egress on its ingress hook (what the
                                                  server sends): modes/hop/shim.py HOOKS
"""
import os

import pytest

from modes.hop import shim
from tools.lab import Lab, unique_name

from .test_hop import B1, B2, B3, VIP, by_path, doctor, health_follows_the_shim, hop_vip
from .test_nat import counters, lbctl, traffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BACKENDS = ("b1", "b2", "b3")


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    lab = Lab(unique_name(), backends=3, egress_gateway=True)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def gateway_stats(lab):
    return shim.stats(lab.topology["egress_gateway"]["pins"])


def test_the_shim_is_on_the_gateway_ports_and_not_on_the_backends(lab):
    gw = lab.topology["egress_gateway"]
    assert gw["ports"] == list(BACKENDS)
    for b in BACKENDS:
        sh = lab.topology["nodes"][b]["hop_shim"]
        assert sh["at"] == "gateway" and sh["ns"] == lab.ns("sw") and sh["interface"] == b
        assert sh["attached"] == {"hop_ingress": True, "hop_egress": True}
        assert shim.installed(lab.ns("sw"), b, "port") == sh["attached"]
        # nothing of ours on the server: its own interface has no tc program either way
        assert shim.installed(lab.ns(b), "eth0") == {"hop_ingress": False, "hop_egress": False}
        out = lab.exec(b, ["tc", "filter", "show", "dev", "eth0", "ingress"]).stdout
        assert out.strip() == "", out
    rc, checks = doctor(lab, "b2")
    assert rc == 0 and checks["hop_shim"] and checks["arp_announce"], checks


def test_rules_route_by_path_and_the_lb_carries_only_the_client_side(lab):
    ep = VIP + ":80"
    hop_vip(lab, 80, {"small": [B1], "big": [B2, B3]},
            [("path_prefix", "/blob", "big"), ("path_prefix", "/id", "small")])
    try:
        s0, c0 = gateway_stats(lab), counters(lab)
        by_path(lab, "hop via the gateway")
        s, c = gateway_stats(lab), counters(lab)
        d = {k: s[k] - s0[k] for k in s}
        # one map for the three servers: every connection's hand-off landed in it
        assert d["in_marked"] == d["in_handoff"] == 42, d
        assert d["out_translated"] > 0 and d["in_translated"] > 0 and d["bad_option"] == 0, d
        assert c["hop_handoff"] - c0["hop_handoff"] >= 42
        assert c["splice_rev"] == c0["splice_rev"] and c["drop_hop_rev"] == c0["drop_hop_rev"]
    finally:
        lbctl(lab, "vip", "del", ep)


def test_echo_of_32_mib_is_identical_both_ways(lab):
    ep = VIP + ":9000"
    hop_vip(lab, 9000, {"default": [B3]})
    try:
        r = traffic(lab, "c1", "echo", VIP, "9000", "--bytes", str(32 << 20), "--seed", "16",
                    "--timeout", "120", timeout=200)
        assert r["identical"], r
    finally:
        lbctl(lab, "vip", "del", ep)


def test_a_port_without_the_shim_fails_doctor_and_the_health_check(lab):
    ep = VIP + ":80"
    hop_vip(lab, 80, {"default": [B1, B2]})
    pins = lab.topology["egress_gateway"]["pins"]

    def doctor_fails():
        rc, checks = doctor(lab, "b2")
        assert rc == 1 and not checks["hop_shim"] and checks["listening"], checks
    try:
        # b2's port loses the shim; b1's keeps it
        health_follows_the_shim(lab, ep, lambda: shim.detach(lab.ns("sw"), "b2"),
                                lambda: shim.attach(lab.ns("sw"), "b2", pins, "port"),
                                doctor_fails)
        assert doctor(lab, "b2")[0] == 0
    finally:
        lbctl(lab, "vip", "del", ep)
