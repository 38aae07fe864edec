"""lb/flowsync.py between real endpoints: three FlowSync objects, each with a real engine,
on addresses of a network namespace this test makes (198.18.251.0/29 on its loopback), over
real UDP and TCP (tests/integration/flowsync_pair.py runs inside it). A's flows reach B as
synced entries (no flow_created) and B translates their next frames as A does; a datagram
from an address that is no peer is counted and not imported; a joining C pulls A's full
table over TCP."""
import json
import os
import pathlib
import subprocess
import sys
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
A, B, C, OUTSIDER = ("198.18.251.%d" % i for i in range(1, 5))


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace)")
    name = "twfs-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        for ip in (A, B, C, OUTSIDER):
            subprocess.run(["ip", "-n", name, "addr", "add", ip + "/32", "dev", "lo"],
                           check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=30)


def test_flows_move_between_real_sync_endpoints(netns):
    p = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m",
                        "tests.integration.flowsync_pair", A, B, C, OUTSIDER],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    print("B had all %d flows %.1f ms after A made them; pull: %s"
          % (out["b_flows"], out["sync_ms"], out["pull"]))
    assert out["a_flows"] == 200 and out["b_got_all"] and out["b_flows"] == 200
    c = out["b_counters"]
    assert c["sync_imported"] == 200 and c["flow_created"] == 0 and c["sync_malformed"] == 0
    assert out["same_output"] == out["sample"] == 20
    assert out["unknown_counted"] and out["unknown_imported"] == 0
    assert out["b_view"]["from_unknown"] == 1
    assert out["a_view"]["sent"]["records"] >= 200
    assert out["b_view"]["received"]["records"] >= 200
    assert out["b_view"]["received"]["imported"] == 200
    assert out["pull"]["error"] is None and out["pull"]["flows"] == 200
    assert out["c_flows"] == 200 and out["c_imported"] == 200
    assert out["a_view"]["dumps_served"] == 1
