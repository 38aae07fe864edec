"""tunnel end to end: the client's frames in VXLAN to backends behind a router, which answer
the client directly; and a live switch dsr -> tunnel -> nat on backends reachable both ways.

   c1 -- rt -+- brs: lbd (TAP) 198.19.0.2, b1 b2 (VIP on lo, vxlan0)
             |        lbd -> rt -> r*: Eth | IP 198.19.0.2 -> r | UDP 4789 | VXLAN 4242 | frame
             +- brr: r1 r2 r3 198.19.200.11-13 (VIP on lo, vxlan0 02:74:77:76:78:6c)
                      r* -> rt -> c1 directly: the response never crosses lbd
"""
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
    lab = Lab(unique_name(), backends=2, remote_backends=3)
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
