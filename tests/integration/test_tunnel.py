"""tunnel end to end: the client's frames in VXLAN to backends behind a router, which answer
the client directly; and a live switch dsr -> tunnel -> nat on backends reachable both ways.

   c1 -- rt -+- brs: lbd (TAP) 198.19.0.2, b1 b2 (VIP on lo, vxlan0)
             |        lbd -> rt -> r*: Eth | IP 198.19.0.2 -> r | UDP 4789 | VXLAN 4242 | frame
             +- brr: r1 r2 r3 198.19.200.11-13 (VIP on lo, vxlan0 02:74:77:76:78:6c)
                      r* -> rt -> c1 directly: the response never crosses lbd
"""
import json
import re

import pytest

from .test_nat import counters, lbctl, traffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

VIP = "198.19.100.7"
REMOTE = ["198.19.200.11", "198.19.200.12", "198.19.200.13"]
LOCAL = ["198.19.0.11", "198.19.0.12"]


@pytest.fixture(scope="module")
def lab():
    from tools.lab import Lab, unique_name
    import os
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    # the slow path on purpose (no vnet headers): full-size frames reach lbd one by one and
    # must get the client's PMTU down (frag needed); tests/integration/test_offload.py runs
    # tunnel with lbd's default, where superframes are re-cut to fit (tunnel_gso_fwd)
    lab = Lab(unique_name(), backends=2, remote_backends=3, offload=False)
    try:
        lab.up()
        for port in (80, 9000):
            ep = "%s:%d" % (VIP, port)
            lbctl(lab, "vip", "add", ep, "--mode", "tunnel")
            for r in REMOTE:
                lbctl(lab, "backend", "add", ep, r)
        yield lab
    finally:
        lab.down()


def test_requests_spread_over_the_remote_backends(lab):
    r = traffic(lab, "c1", "http", "http://%s/id" % VIP, "--count", "90")
    assert r["n_errors"] == 0 and sorted(r["backends"]) == ["r1", "r2", "r3"], r
    c = counters(lab)
    assert c["tunnel_fwd"] > 0 and c.get("drop_no_neigh", 0) == 0, c


def test_blob_intact_and_the_lb_carries_a_small_part_of_it(lab):
    before = lbctl(lab, "stats")["io"]
    sha = lab.exec("c1", ["sh", "-c", "curl -sf --max-time 90 http://%s/blob | sha256sum" % VIP],
                   timeout=120).stdout.split()[0]
    assert sha == lab.topology["blob"]["sha256"]
    after = lbctl(lab, "stats")["io"]
    assert after["rx_bytes"] - before["rx_bytes"] < (64 << 20) // 10


def test_echo_32MiB_identical_through_the_tunnel(lab):
    """32 MiB from the client: full-size segments do not fit after 50 bytes of VXLAN, so the
    LB answers them with ICMP fragmentation needed and the client's PMTU shrinks."""
    r = traffic(lab, "c1", "echo", VIP, "9000", "--bytes", str(32 << 20), "--seed", "5")
    assert r["identical"], r
    assert counters(lab)["tunnel_frag_needed"] >= 1


def test_iperf3_both_ways_through_the_tunnel(lab):
    """iperf3's control and data connections meet one server (source hashing), upload and
    download (-R: the backend sends, directly to the client)."""
    ep = "%s:5201" % VIP
    lbctl(lab, "vip", "add", ep, "--mode", "tunnel", "--scheduler", "sh")
    for r in REMOTE:
        lbctl(lab, "backend", "add", ep, r)
    for extra in ([], ["-R"]):
        r = lab.exec("c1", ["iperf3", "-c", VIP, "-t", "2", "-J", *extra], timeout=30,
                     check=False)
        d = json.loads(r.stdout)
        assert "error" not in d, (extra, d.get("error"))
        assert d["end"]["sum_received"]["bytes"] > 0, extra


def test_a_live_switch_dsr_tunnel_nat_on_backends_reachable_both_ways(lab):
    ep = "%s:8080" % "198.19.100.8"
    lbctl(lab, "vip", "add", ep.replace("8080", "80"), "--mode", "dsr")
    ep = "198.19.100.8:80"
    for b in LOCAL:
        lbctl(lab, "backend", "add", ep, b)
    seen = {}
    for mode in ("dsr", "tunnel", "nat", "tunnel"):
        lbctl(lab, "vip", "set", ep, "--mode", mode)
        before = counters(lab)
        r = traffic(lab, "c1", "http", "http://198.19.100.8/id", "--count", "20")
        assert r["n_errors"] == 0 and set(r["backends"]) <= {"b1", "b2"}, (mode, r)
        after = counters(lab)
        key = {"dsr": "dsr_fwd", "tunnel": "tunnel_fwd", "nat": "nat_fwd"}[mode]
        seen[mode] = after.get(key, 0) - before.get(key, 0)
    assert all(v > 0 for v in seen.values()), seen


def test_checks_go_in_vxlan_and_catch_a_backend_whose_vxlan_device_is_down(lab):
    """A tunnel VIP is probed along its path: lb's kernel sends the probe to VIP:80 in VXLAN
    (the VIP's VNI) to the backend's address, through rt. A backend that still answers on its
    own address but no longer decapsulates is taken down, then back up."""
    from .test_health import (FALL, INTERVAL, MARGIN, RISE, TIMEOUT, backends_health, wait_for,
                              wait_state)
    vip = VIP + ":80"
    lbctl(lab, "vip", "health", vip, "--check", "http", "--path", "/id", "--interval",
          str(INTERVAL), "--timeout", str(TIMEOUT), "--rise", str(RISE), "--fall", str(FALL))
    wait_for("first probes of %s" % vip, lambda: all(
        h["state"] == "up" and h["successes"] >= 2 for h in backends_health(lab, vip).values()),
        10)
    routes = lab.exec("lb", ["ip", "route", "show", "table", "all"]).stdout
    for r in REMOTE:
        assert re.search(r"^%s\s+encap ip id 4242 .*dst %s .*dev twprobe0 table \d+" % (
            re.escape(VIP), re.escape(r)), routes, re.M), routes

    r2 = REMOTE[1]
    lab.exec("r2", ["ip", "link", "set", "vxlan0", "down"])
    try:
        # a check of the backend's own address would pass: it still answers, from lb too
        assert lab.exec("lb", ["curl", "-sf", "--max-time", "2", "http://%s/id" % r2]
                        ).stdout.strip() == "r2"
        bound = INTERVAL + FALL * max(INTERVAL, TIMEOUT)
        h = wait_state(lab, vip, r2, "down", bound + MARGIN)
        assert h["reason"] == "connect timeout after 0.5s (2 failures)", h
        assert all(backends_health(lab, vip)[r]["state"] == "up" for r in (REMOTE[0], REMOTE[2]))
        t = traffic(lab, "c1", "http", "http://%s/id" % VIP, "--count", "60")
        assert t["n_errors"] == 0 and sorted(t["backends"]) == ["r1", "r3"], t
    finally:
        lab.exec("r2", ["ip", "link", "set", "vxlan0", "up"])
    h = wait_state(lab, vip, r2, "up", RISE * INTERVAL + TIMEOUT + MARGIN)
    assert h["reason"] == "HTTP 200 (2 successes)", h

    # checks off: the rules, the routes and the probe device go with them
    lbctl(lab, "vip", "health", vip, "--check", "none")
    wait_for("probe device removed", lambda: "twprobe0" not in lab.exec(
        "lb", ["ip", "link", "show"]).stdout, 5)
    assert "fwmark 0x7477" not in lab.exec("lb", ["ip", "rule", "show"]).stdout
