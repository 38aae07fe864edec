"""lbctl trace, trace --follow and capture against a live lbd, with real TCP: one lab for the
whole module (built once, downed at the end, also on failure).

   c1 198.18.0.10 --+-- rt -- brs -+- lbd  198.19.0.2   VIP 198.19.100.1:9000 nat maglev
   c2 198.18.0.11 --+              |                    VIP 198.19.100.1:80   nat rr
                                   |                    VIP 198.19.100.3:9000 splice
                                   +- b1 .11, b2 .12, b3 .13 (echo :9000, nginx :80)

- trace of a live nat / splice connection names the backend whose socket holds it;
- trace --follow on c1 while c2 also sends shows c1's frames only;
- capture --count N writes N frames that tcpdump reads, both directions.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from .test_nat import lbctl

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

VIP, SPLICE_VIP = "198.19.100.1", "198.19.100.3"
BACKENDS = {"198.19.0.11": "b1", "198.19.0.12": "b2", "198.19.0.13": "b3"}
C1, C2 = "198.18.0.10", "198.18.0.11"


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    from tools.lab import Lab, unique_name
    lab = Lab(unique_name(), clients=2)
    try:
        lab.up()
        lbctl(lab, "vip", "add", VIP + ":9000", "--mode", "nat", "--scheduler", "maglev")
        lbctl(lab, "vip", "add", VIP + ":80", "--mode", "nat", "--scheduler", "rr")
        lbctl(lab, "vip", "add", SPLICE_VIP + ":9000", "--mode", "splice")
        for b in BACKENDS:
            lbctl(lab, "backend", "add", VIP + ":9000", b)
            lbctl(lab, "backend", "add", VIP + ":80", b)
        for b in list(BACKENDS)[:2]:
            lbctl(lab, "backend", "add", SPLICE_VIP + ":9000", b)
        yield lab
    finally:
        lab.down()


def lbctl_cmd(lab, *args):
    return [sys.executable, "-m", "lb.cli", "--socket", lab.topology["control_socket"], *args]


def wait_until(cond, what, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)


def holder(lab, client_ep):
    """The backend whose port-9000 socket is connected to client_ep, or None."""
    for ip, name in BACKENDS.items():
        peers = lab.exec(name, ["ss", "-tnH", "state", "established", "( sport = :9000 )"]
                         ).stdout.split()
        if client_ep in peers:
            return ip
    return None


@pytest.mark.parametrize("vip,mode", [(VIP, "nat"), (SPLICE_VIP, "splice")])
def test_trace_of_a_live_flow_names_the_backend_that_answers(lab, vip, mode):
    p = lab.popen("c1", [sys.executable, "-m", "tools.traffic", "echo-slow", vip, "9000",
                         "--seconds", "10"], stdout=subprocess.PIPE, text=True)
    try:
        local = json.loads(p.stdout.readline())["started"]
        backend = wait_until(lambda: holder(lab, local), "a backend holding " + local)
        r = lbctl(lab, "trace", local, vip + ":9000")
        text = subprocess.run(lbctl_cmd(lab, "trace", local, vip + ":9000"),
                              capture_output=True, text=True, timeout=20).stdout
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert json.loads(out.strip().splitlines()[-1])["mismatched"] == 0
    f = r["flow"]
    assert r["direction"] == "client -> vip" and r["vip"]["mode"] == mode
    assert f["backend"] == backend + ":9000" and f["mode"] == mode
    assert f["state"] == "ESTABLISHED" and f["packets_fwd"] > 0 and f["packets_rev"] > 0
    if mode == "splice":
        assert "seq_delta" in f["translation"] and r["new_flow"]["decided_by"] == "content"
    else:
        assert r["new_flow"]["backend"] == backend + ":9000"     # maglev: the same slot
    assert "via %s:9000" % backend in text
    # the reverse: the backend's side of the same connection
    rv = lbctl(lab, "trace", backend + ":9000", local)
    assert rv["direction"] == "backend -> client" and rv["flow"]["client"] == local


def watch_on(lab):
    return lbctl(lab, "status")["watch"]["on"]


def wait_watch(lab, p):
    """Until lbd's watch is on; fails at once (with lbctl's stderr) if lbctl ended."""
    wait_until(lambda: p.poll() is not None or watch_on(lab), "the watch to start", 60)
    if p.poll() is not None:
        raise AssertionError("lbctl ended: %s" % (p.communicate()[1],))


def curls(lab, node, n):
    return lab.exec(node, ["sh", "-c", "for i in $(seq %d); do curl -sf --max-time 5 "
                           "http://%s/id; done" % (n, VIP)], timeout=60).stdout.split()


def test_follow_shows_the_watched_client_only(lab):
    p = subprocess.Popen(lbctl_cmd(lab, "--json", "trace", "--follow", "host", C1, "--count",
                                   "12"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        wait_watch(lab, p)
        assert len(curls(lab, "c2", 3)) == 3          # the other client, first
        assert len(curls(lab, "c1", 3)) == 3
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    evs = [json.loads(x) for x in out.splitlines()]
    final, evs = evs[-1], evs[:-1]
    assert final["done"] and final["frames"] == 12 and len(evs) == 12
    for ev in evs:
        ends = {ev["in"]["src"], ev["in"]["dst"]} | (
            {ev["out"]["src"], ev["out"]["dst"]} if "out" in ev else set())
        assert C1 in ends and C2 not in ends, ev
    dirs = {ev.get("dir") for ev in evs}
    assert dirs == {"client->backend", "backend->client"}
    first = evs[0]
    assert first["in"]["flags"] == "S" and first["verdict"] == "tx"
    assert first["counters"]["nat_fwd"] == 1 and first["counters"]["flow_created"] == 1
    assert first["flow"]["backend"].split(":")[0] in BACKENDS
    assert not watch_on(lab)


def test_capture_writes_a_pcap_tcpdump_reads(lab, tmp_path):
    path = str(tmp_path / "f.pcap")
    p = subprocess.Popen(lbctl_cmd(lab, "capture", "--client", C1, "--count", "20", "-w", path),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_watch(lab, p)
        assert len(curls(lab, "c1", 3)) == 3
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    r = subprocess.run(["tcpdump", "-nn", "-r", path], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 20
    to_vip = [ln for ln in lines if " > %s.80:" % VIP in ln and C1 in ln]
    to_backend = [ln for ln in lines if any(" > %s.80:" % b in ln for b in BACKENDS)]
    to_client = [ln for ln in lines if " > %s." % C1 in ln]
    assert to_vip and to_backend and to_client, lines       # received, sent, both directions
    assert all(C1 in ln for ln in lines)


def test_ctrl_c_ends_follow_cleanly_and_turns_the_watch_off(lab):
    import signal
    # Ctrl-C as a terminal gives it: SIGINT handled by default in lbctl, also when this
    # run inherited it ignored (a suite started in the background by a non-interactive
    # shell: lbctl would then, rightly, keep ignoring it, and the test wait for nothing)
    p = subprocess.Popen(lbctl_cmd(lab, "trace", "--follow", "--vip", VIP + ":80"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_watch(lab, p)
        assert len(curls(lab, "c1", 1)) == 1
        wait_until(lambda: lbctl(lab, "status")["watch"]["frames"] > 0, "frames shown")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert out.strip() and all(VIP in ln for ln in out.strip().splitlines())
    assert "frames in" in err
    assert not watch_on(lab)
