"""lbd with [sync], end to end in a lab: a real flow sync peer (tests/integration/
flowsync_peer.py: a real engine behind lb/flowsync.py) on 198.19.0.4 in the lab's lb
namespace, lbd's sync on its mgmt address 198.19.0.3. Connections a client makes through
lbd's nat VIP reach the peer as synced flows; a flow the peer makes reaches lbd as a synced
flow (in `conns`, counted sync_imported, not flow_created); `status` has the sync section;
a restarted lbd pulls the peer's full table over TCP before it is ready.
(The N-instance lab with BGP/ECMP is helper A's; its test is the lead's.)"""
import json
import os
import subprocess
import sys

import pytest

from lb.cli import request
from tools.lab import REPO

from .test_health import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

VIP, B1 = "198.19.100.1", "198.19.0.11"
LBD_SYNC, PEER = "198.19.0.3:7900", "198.19.0.4:7900"
# the VIP in the file: a restarted lbd has it before it pulls the peer's table
SYNC = """[sync]
listen = "%s"
peers = ["%s"]
threshold = 2
pull_timeout = 3.0

[[vip]]
address = "198.19.100.1"
port = 80
mode = "nat"
scheduler = "rr"
[[vip.backend]]
address = "198.19.0.11"
""" % (LBD_SYNC, PEER)
N = 5
CLIENT2 = "198.18.0.99"


def call(lab, cmd, args=None):
    reply = request(lab.topology["control_socket"], cmd, args or {})
    assert reply["ok"], reply
    return reply["result"]



@pytest.mark.parametrize("workers", [1, 2])
def test_lbd_syncs_flows_with_a_real_peer(make_lab, workers):
    lab = make_lab(backends=1, workers=workers, lbd_extra=SYNC)
    st = wait_for("lbd's pull at start", lambda: call(lab, "status")["sync"]["last_pull"] and
                  call(lab, "status")["sync"], 30)
    assert st["listen"] == LBD_SYNC and st["peers"] == [PEER]
    assert st["last_pull"]["error"] is not None          # nobody to pull from at start
    lab.exec("lb", ["ip", "addr", "add", PEER.split(":")[0] + "/32", "dev", "lo"])
    peer = lab.popen("lb", [sys.executable, "-m", "tests.integration.flowsync_peer", PEER,
                            LBD_SYNC, VIP + ":80", B1 + ":80", CLIENT2, str(N)],
                     cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                     env=dict(os.environ, PYTHONPATH=REPO))
    try:
        assert peer.stdout.readline().strip() == "ready"
        out = lab.exec("c1", ["sh", "-c", "for i in $(seq %d); do curl -sf --max-time 5 "
                              "http://%s/; done >/dev/null && echo ok" % (N, VIP)], timeout=120)
        assert out.stdout.strip() == "ok"

        def peer_flow():
            conns = call(lab, "conns", {"vip": VIP + ":80"})
            return [c for c in conns["conns"] if c["client"] == CLIENT2 + ":5555"]
        got = wait_for("the peer's flow in lbd", peer_flow, 30)
        assert got[0]["backend"] == B1 + ":80"
        line = peer.stdout.readline()
        check_lbd(lab, json.loads(line))
        # a restarted lbd (its flows gone) pulls the peer's full table before it is ready
        lab.restart_lbd()
        st = wait_for("the pull of the restarted lbd",
                      lambda: call(lab, "status")["sync"]["last_pull"], 30)
        print("restarted lbd's pull:", st)
        assert st["error"] is None and st["peer"] == PEER and st["flows"] >= N + 1
        assert peer_flow()
        ctr = call(lab, "stats", {"all": True})["counters"]
        assert ctr["sync_imported"] >= N + 1 and ctr["flow_created"] == 0
        peer.stdin.write("quit\n")
        peer.stdin.flush()
        assert json.loads(peer.stdout.readline())["dumps_served"] == 1
        peer.wait(timeout=30)
    finally:
        if peer.poll() is None:
            peer.kill()


def check_lbd(lab, res):
    print("peer:", res["imported_from_lbd"], "flows from lbd;", "lbd sync:",
          call(lab, "status")["sync"])
    assert res["imported_from_lbd"] >= N and res["sent_to_lbd"] >= 1
    ctr = call(lab, "stats", {"all": True})["counters"]
    assert ctr["sync_imported"] >= 1 and ctr["flow_created"] == N
    assert ctr["sync_exported"] >= N and ctr["sync_malformed"] == 0
    st = call(lab, "status")["sync"]
    assert st["sent"]["records"] >= N and st["received"]["imported"] >= 1
    assert st["from_unknown"] == 0
