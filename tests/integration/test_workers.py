"""Two data-plane workers ([io] workers = 2): a multi-queue TAP with offloads, each queue
owned by one lbd thread with its own flow table, and a steering program that puts both
directions of every flow on one queue.

   c1 --nat 198.19.100.1----\\                        queue 0 -> worker 0 (engine 0) \\
   c2 --dsr 198.19.100.2-----+-- rt -- brs -- lbtap                                   +-- b1 b2 b3
   c3 --splice 198.19.100.3-/   (IFF_MULTI_QUEUE,    queue 1 -> worker 1 (engine 1) /
   c4 --nat 198.19.100.4 (added while lbd runs)      steering: hash(client ip, port)

A flow that reached the wrong worker would show as a drop (drop_unknown_dest for a nat/splice
reply, drop_no_flow_non_syn for a client's ACK, splice_bad_cookie / drop_splice_state, a
"stray" frame in the splice manager): every one of them must stay 0, while each worker
carried frames and held flows. Each client has its own VIP (bench/e2e.py's PAWS note).
"""
import json
import os
import subprocess
import sys
import time

import pytest

from .test_nat import BACKENDS, lbctl

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODES = {"nat": ("198.19.100.1", "c1"), "dsr": ("198.19.100.2", "c2"),
         "splice": ("198.19.100.3", "c3")}
LATE_VIP, LATE_CLIENT = "198.19.100.4", "c4"
REQUESTS = 200
# counters that a flow meeting the wrong worker (or a worker with the wrong tables) bumps
WRONG_WORKER = ("drop_unknown_dest", "drop_no_flow_non_syn", "splice_bad_cookie",
                "drop_splice_state")


def add_vip(lab, vip, mode):
    lbctl(lab, "vip", "add", "%s:80" % vip, "--mode", mode)
    for b in BACKENDS:
        lbctl(lab, "backend", "add", "%s:80" % vip, b)


def wait_neighbors(lab, timeout=10.0):
    """Until lbd has resolved every backend (ARP goes through the main thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(BACKENDS) <= set(lbctl(lab, "status")["neighbors"]):
            return
        time.sleep(0.1)      # poll interval, bounded by the deadline
    pytest.fail("lbd did not resolve the backends: %s" % lbctl(lab, "status")["neighbors"])


def http_loads(lab, targets):
    """REQUESTS GETs of /id, one new connection each, from every (client, vip) at once."""
    procs = [(vip, lab.popen(client, [sys.executable, "-m", "tools.traffic", "http",
                                      "http://%s/id" % vip, "--count", str(REQUESTS),
                                      "--timeout", "120"],
                             stdout=subprocess.PIPE, text=True))
             for client, vip in targets]
    out = {}
    try:
        for vip, p in procs:
            text, _ = p.communicate(timeout=150)
            out[vip] = json.loads(text.strip().splitlines()[-1])
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
    return out


def blob_sha(lab, client, vip):
    return lab.exec(client, ["sh", "-c", "curl -sf --max-time 60 http://%s/blob | sha256sum"
                             % vip], timeout=90).stdout.split()[0]


def check_no_wrong_worker(stats):
    c = stats["counters"]
    assert {k: c.get(k, 0) for k in WRONG_WORKER} == dict.fromkeys(WRONG_WORKER, 0), c
    assert stats["splice"]["stray"] == 0, stats["splice"]
    assert stats["loop"]["errors"] == 0


def test_nat_dsr_splice_on_two_workers(make_lab):
    lab = make_lab(offload=True, workers=2, clients=3)
    status = lbctl(lab, "status")
    assert status["workers"] == 2 and status["io"]["queues"] == 2 and status["io"]["offload"]
    for mode, (vip, _) in MODES.items():
        add_vip(lab, vip, mode)
    wait_neighbors(lab)
    results = http_loads(lab, [(client, vip) for vip, client in MODES.values()])
    for mode, (vip, _) in MODES.items():
        r = results[vip]
        assert r["requests"] == REQUESTS and r["n_errors"] == 0, (mode, r)
        assert sorted(r["backends"]) == ["b1", "b2", "b3"], (mode, r)
    for mode, (vip, client) in MODES.items():
        assert blob_sha(lab, client, vip) == lab.topology["blob"]["sha256"], mode
    stats = lbctl(lab, "stats")
    workers = list(stats["loop"]["workers"].values())
    assert len(workers) == 2
    for w in workers:          # both carried traffic and hold flows of their own
        assert w["alive"] and w["errors"] == 0, w
        assert w["frames"] > 100 and w["flows"] > 0 and w["io"]["tx_frames"] > 0, w
    assert sum(w["frames"] for w in workers) == stats["counters"]["rx_frames"]
    c = stats["counters"]
    assert c["nat_fwd"] > 0 and c["nat_rev"] > 0 and c["dsr_fwd"] > 0
    assert c["splice_fwd"] > 0 and c["splice_rev"] > 0
    # decided in the fast path (plain heads) or by Python
    assert stats["splice"]["decided_forward"] + c.get("splice_decided", 0) >= REQUESTS + 1
    check_no_wrong_worker(stats)
    assert stats["steering"]["vip_addresses"] == 3 and stats["steering"]["errors"] == 0
    # [io] realtime absent, lbd run as root: both data-plane threads under SCHED_FIFO, the
    # main thread (control socket, health, ARP) under the default policy
    assert status["realtime"] is True and [w["sched"] for w in workers] == ["fifo", "fifo"]
    policies = lbd_thread_policies(lab.topology["lb"]["pid"])
    assert policies.pop("lbd-w0") == policies.pop("lbd-w1") == os.SCHED_FIFO, policies
    assert set(policies.values()) == {os.SCHED_OTHER}, policies


def lbd_thread_policies(pid):
    """{thread name: scheduling policy} of lbd's threads (/proc/PID/task/*/stat field 41)."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
            st = f.read()
        name = st[st.index("(") + 1:st.rindex(")")]
        out[name if name not in out else "%s/%s" % (name, tid)] = int(
            st.rsplit(")", 1)[1].split()[38])
    return out


def test_vip_added_at_run_time_is_steered_on_two_workers(make_lab):
    lab = make_lab(offload=True, workers=2, clients=4)
    add_vip(lab, MODES["nat"][0], "nat")
    wait_neighbors(lab)
    before = lbctl(lab, "stats")["steering"]
    add_vip(lab, LATE_VIP, "nat")
    after = lbctl(lab, "stats")["steering"]
    # a new program for the new address set (backend changes of a VIP reload nothing)
    assert after["programs_attached"] == before["programs_attached"] + 1
    assert after["vip_addresses"] == 2 and after["errors"] == 0
    w0 = [w["frames"] for w in lbctl(lab, "stats")["loop"]["workers"].values()]
    r = http_loads(lab, [(LATE_CLIENT, LATE_VIP)])[LATE_VIP]
    assert r["requests"] == REQUESTS and r["n_errors"] == 0, r
    assert sorted(r["backends"]) == ["b1", "b2", "b3"], r
    assert blob_sha(lab, LATE_CLIENT, LATE_VIP) == lab.topology["blob"]["sha256"]
    stats = lbctl(lab, "stats")
    w1 = [w["frames"] for w in stats["loop"]["workers"].values()]
    assert all(b - a > 100 for a, b in zip(w0, w1)), (w0, w1)   # the new VIP used both
    check_no_wrong_worker(stats)
    # and deleting a VIP steps the program back
    lbctl(lab, "vip", "del", "%s:80" % LATE_VIP)
    s = lbctl(lab, "stats")["steering"]
    assert s["vip_addresses"] == 1 and s["programs_attached"] == after["programs_attached"] + 1
