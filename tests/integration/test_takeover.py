"""A planned restart: `lbd --takeover` in the middle of long downloads and short requests
through nat, dsr, tunnel and splice VIPs. Nothing may be lost: every download intact, no
request failed, every flow carried over (none re-created), the VIPs configured with lbctl
still there; then ten takeovers in a row (the pause's median and worst are printed); and
takeovers that fail (a bad file, a refused one, a new lbd that dies mid-way) leave the old
lbd serving.

   c1 -- rt -- brs: lbd (TAP), b1 b2            (nat, dsr, splice VIPs)
          \\-- brr: r1 r2                        (tunnel VIP)

The VIPs are added with lbctl, not in the file: the running table must win. Downloads are
slowed at the backends (tc tbf, as in test_restart.py), so they are mid-transfer when the
takeover comes; the splice ones could not survive any restart that loses the sequence
deltas.
"""
import json
import os
import statistics
import subprocess
import sys
import time

import pytest

from lb import takeover
from lb.config import load as load_config
from tools.lab import Lab, TakeoverFailed, _alive, _wait, unique_name

from .test_nat import counters, lbctl

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

LOCAL = ["198.19.0.11", "198.19.0.12"]
REMOTE = ["198.19.200.11", "198.19.200.12"]
VIPS = {"nat": ("198.19.100.1", LOCAL, "maglev"), "dsr": ("198.19.100.2", LOCAL, "maglev"),
        "splice": ("198.19.100.3", LOCAL, "rr"), "tunnel": ("198.19.100.7", REMOTE, "maglev")}
PER_MODE = 2
# b1 and b2 each carry three downloads (nat, dsr, splice), r1 and r2 one each (tunnel): the
# rates give every download ~15 s of 64 MiB, so none is over before the last one has begun
# (on a loaded machine the curls and the flow listings take seconds)
RATE = {"b1": "100mbit", "b2": "100mbit", "r1": "35mbit", "r2": "35mbit"}


def SHAPE(node):
    return ["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", RATE[node], "burst",
            "64kb", "latency", "200ms"]
UNSHAPE = ["tc", "qdisc", "del", "dev", "eth0", "root"]
FWD = {"nat": "nat_rev", "dsr": "dsr_fwd", "splice": "splice_rev", "tunnel": "tunnel_fwd"}


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    lab = Lab(unique_name(), backends=2, remote_backends=2)
    try:
        lab.up()
        for mode, (vip, backends, sched) in VIPS.items():
            lbctl(lab, "vip", "add", vip + ":80", "--mode", mode, "--scheduler", sched)
            for b in backends:
                lbctl(lab, "backend", "add", vip + ":80", b)
        yield lab
    finally:
        lab.down()


def shaped(lab, on):
    for node in RATE:
        lab.exec(node, SHAPE(node) if on else UNSHAPE, check=on)


def downloads(lab, per_mode):
    return {(mode, k): lab.popen("c1", [
        "sh", "-c", "curl -sf --max-time 120 http://%s/blob | sha256sum" % vip],
        stdout=subprocess.PIPE, text=True)
        for mode, (vip, _, _) in VIPS.items() for k in range(per_mode)}


def requests(lab, stop_file, count=100000, seconds=120):
    """Short requests through every VIP, one client process each, until stop_file exists."""
    return {mode: lab.popen("c1", [sys.executable, "-m", "tools.traffic", "http",
                                   "http://%s/id" % vip, "--count", str(count), "--seconds",
                                   str(seconds), "--stop-file", stop_file, "--timeout", "150"],
                            stdout=subprocess.PIPE, text=True)
            for mode, (vip, _, _) in VIPS.items()}


def finish(procs, timeout=150):
    out = {}
    try:
        for key, p in procs.items():
            out[key] = p.communicate(timeout=timeout)[0]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def results(outs):
    return {k: json.loads(v.strip().splitlines()[-1]) for k, v in outs.items()}


def download_flows(lab, older_than=0.0):
    """{mode: {client endpoint}} of the flows that carry a download (> 100 frames from the
    client: its ACKs) and are older than `older_than` seconds."""
    out = {}
    for m, (vip, _, _) in VIPS.items():
        conns = lbctl(lab, "conns", "--vip", vip + ":80", "--limit", "100000")["conns"]
        out[m] = {c["client"] for c in conns
                  if c["packets_fwd"] > 100 and c["age_s"] > older_than}
    return out


def test_takeover_in_the_middle_of_downloads_and_requests(lab, tmp_path):
    sha = lab.topology["blob"]["sha256"]
    stop = str(tmp_path / "stop")
    old_pid = lab.topology["lb"]["pid"]
    shaped(lab, True)
    try:
        dl = downloads(lab, PER_MODE)
        rq = requests(lab, stop)
        try:
            # every download has its flow, well under way (the curls start at their own pace
            # on a loaded machine)
            seen = {}

            def under_way():
                seen["flows"] = download_flows(lab)
                return all(len(v) == PER_MODE for v in seen["flows"].values())
            _wait("downloads under way", under_way, 90.0, detail=lambda: (
                " (last seen %s; curl exits %s)" % (
                    seen.get("flows"), {k: p.poll() for k, p in dl.items()})))
            mine = download_flows(lab)
            before = counters(lab)
            t_take = time.monotonic()
            info = lab.takeover_lbd()
            took = time.monotonic() - t_take
            after_takeover = counters(lab)
            # the downloads' flows are in the new table with the age they had: made before
            # the new lbd existed
            done = {m: sum(dl[(m, k)].poll() is not None for k in range(PER_MODE))
                    for m in VIPS}        # a download over before the listing: its flow may be gone
            now = download_flows(lab, older_than=took)
            old_flows = {m: len(mine[m] & now[m]) + done[m] for m in VIPS}
            got = {k: v.split()[0] if v.split() else "" for k, v in finish(dl).items()}
        finally:
            open(stop, "w").close()
            req = results(finish(rq))
    finally:
        shaped(lab, False)
    c = counters(lab)
    intact = {m: sum(got[(m, k)] == sha for k in range(PER_MODE)) for m in VIPS}
    print("takeover from pid %d to %d: data-plane pause %.1f ms, %d flows handed over, steps "
          "%s; downloads intact per mode %s; requests %s" % (
              old_pid, lab.topology["lb"]["pid"], info["pause_ms"], info["flows"],
              info["steps"], intact,
              {m: (r["requests"], r["n_errors"])
               for m, r in req.items()}))
    assert info["old_exit"] == 0 and info["from_pid"] == old_pid
    assert not _alive(old_pid)
    assert intact == dict.fromkeys(VIPS, PER_MODE), intact
    assert {m: r["n_errors"] for m, r in req.items()} == dict.fromkeys(VIPS, 0), {
        m: (r["errors"], r["slowest"]) for m, r in req.items() if r["n_errors"]}
    # the flows came over: none was re-created from lost state, and the counters went on
    for k in ("flow_recreated", "flow_recreated_rev"):
        assert c.get(k, 0) == before.get(k, 0) == 0, (k, before.get(k), c.get(k))
    for k in ("flow_created",) + tuple(FWD.values()):
        assert after_takeover.get(k, 0) >= before[k], k
    assert info["flows"] >= len(VIPS) * PER_MODE
    # every download still running was found in the new table with its age (the ones over
    # by then are counted as found: their flows may have closed)
    assert {m: min(n, PER_MODE) for m, n in old_flows.items()} == dict.fromkeys(VIPS, PER_MODE), (
        old_flows, done)
    # the VIPs added with lbctl are the new lbd's
    assert sorted(v["vip"] for v in lbctl(lab, "vip", "list")) == sorted(
        vip + ":80" for vip, _, _ in VIPS.values())


def test_ten_takeovers_in_a_row(lab, tmp_path):
    stop = str(tmp_path / "stop")
    rq = requests(lab, stop)
    pauses = []
    try:
        for _ in range(10):
            pid = lab.topology["lb"]["pid"]
            info = lab.takeover_lbd()
            assert info["old_exit"] == 0 and info["from_pid"] == pid
            pauses.append(info["pause_ms"])
    finally:
        open(stop, "w").close()
        req = results(finish(rq))
    print("ten takeovers under light traffic: pause median %.1f ms, worst %.1f ms (all: %s); "
          "requests %s" % (statistics.median(pauses), max(pauses), pauses,
                           {m: r["n_errors"] for m, r in req.items()}))
    assert {m: r["n_errors"] for m, r in req.items()} == dict.fromkeys(VIPS, 0), {
        m: (r["errors"], r["slowest"]) for m, r in req.items() if r["n_errors"]}


def test_a_failed_takeover_leaves_the_old_lbd_serving(lab, tmp_path):
    pid = lab.topology["lb"]["pid"]
    sock = lab.topology["control_socket"]
    cfg = open(lab.topology["lb"]["config"]).read()
    # a bad file: the new lbd stops before it asks (exit 2)
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.replace("capacity = 262144", "capacity = -1"))
    with pytest.raises(TakeoverFailed) as ei:
        lab.takeover_lbd(config=str(bad))
    assert ei.value.returncode == 2 and "flows.capacity" in ei.value.log
    # a file the running lbd cannot hand over to: refused before anything stops (exit 1)
    other = tmp_path / "other.toml"
    other.write_text(cfg.replace("capacity = 262144", "capacity = 131072"))
    with pytest.raises(TakeoverFailed) as ei:
        lab.takeover_lbd(config=str(other))
    assert ei.value.returncode == 1 and "refused by the running lbd" in ei.value.log
    assert "flows.capacity" in ei.value.log
    # takeover requests of another protocol or snapshot format: refused, naming the field
    from lb.cli import request
    args = takeover.request_args(load_config(lab.topology["lb"]["config"]), "/nonexistent")
    for field, bad in (("version", {"version": 99}), ("records", {"records": {"flow_size": 1}}),
                       ("io.workers", {"workers": 2})):
        r = request(sock, "takeover", dict(args, **bad), timeout=10)
        assert not r["ok"] and r["error"]["field"] == field, r
    # a compatible request from nobody (its socket does not exist): phase 1 fails, nothing
    # was stopped
    r = request(sock, "takeover", args, timeout=10)
    assert not r["ok"] and "serves on" in r["error"]["message"], r
    assert lbctl(lab, "stats")["loop"]["workers"]["w0"]["alive"]
    # a new lbd that dies after the old one stopped its workers and sent everything: the
    # old one starts them again, and a download running meanwhile finishes intact
    sha = lab.topology["blob"]["sha256"]
    shaped(lab, True)
    try:
        dl = downloads(lab, 1)
        _wait("downloads under way", lambda: all(
            counters(lab).get(k, 0) >= 300 for k in FWD.values()), 30.0)
        with pytest.raises(TakeoverFailed) as ei:
            lab.takeover_lbd(env={"THREEWAY_TAKEOVER_ABORT": "1"})
        assert ei.value.returncode == 1 and "serves on" in ei.value.log
        got = {k: v.split()[0] if v.split() else "" for k, v in finish(dl).items()}
    finally:
        shaped(lab, False)
    assert got == dict.fromkeys(got, sha), got
    status = lbctl(lab, "status")
    assert status["pid"] == pid and _alive(pid) and lab.topology["lb"]["pid"] == pid
    assert lbctl(lab, "stats")["loop"]["workers"]["w0"]["alive"]
    log = open(lab.topology["lb"]["log"]).read()
    assert "failed, its workers started again, serving on" in log
    # and it still hands over when asked properly
    info = lab.takeover_lbd()
    assert info["from_pid"] == pid and info["old_exit"] == 0
    assert lbctl(lab, "status")["pid"] == lab.topology["lb"]["pid"] != pid
    assert os.path.exists(sock)


@pytest.mark.parametrize("kind", ["tap-2-workers", "afpacket"])
def test_takeover_with_other_data_planes(make_lab, kind):
    """Two workers (a multi-queue TAP: every queue fd travels, the steering program stays
    attached) and AF_PACKET (the bound socket travels): nat and splice downloads across a
    takeover, intact, and the flows on the same workers."""
    lab = make_lab(backends=2, workers=2) if kind == "tap-2-workers" else \
        make_lab(backends=2, io="afpacket")
    for mode in ("nat", "splice"):
        vip, backends, sched = VIPS[mode]
        lbctl(lab, "vip", "add", vip + ":80", "--mode", mode, "--scheduler", sched)
        for b in backends:
            lbctl(lab, "backend", "add", vip + ":80", b)
    for node in ("b1", "b2"):
        lab.exec(node, SHAPE(node))
    sha = lab.topology["blob"]["sha256"]
    dl = {(mode, k): lab.popen("c1", [
        "sh", "-c", "curl -sf --max-time 120 http://%s/blob | sha256sum" % VIPS[mode][0]],
        stdout=subprocess.PIPE, text=True) for mode in ("nat", "splice") for k in range(3)}
    try:
        _wait("downloads under way", lambda: all(
            counters(lab).get(k, 0) >= 500 for k in ("nat_rev", "splice_rev")), 30.0)
        before = lbctl(lab, "stats")
        info = lab.takeover_lbd()
        after = lbctl(lab, "stats")
        got = {k: v.split()[0] if v.split() else "" for k, v in finish(dl).items()}
    finally:
        for p in dl.values():
            if p.poll() is None:
                p.kill()
    print("%s: takeover pause %.1f ms, %d flows, steps %s" % (kind, info["pause_ms"],
                                                               info["flows"], info["steps"]))
    assert got == dict.fromkeys(got, sha), got
    assert info["old_exit"] == 0
    c = counters(lab)
    assert c.get("flow_recreated", 0) == c.get("flow_recreated_rev", 0) == 0
    if kind == "tap-2-workers":
        w0, w1 = (before["loop"]["workers"][w]["flows"] for w in ("w0", "w1"))
        v0, v1 = (after["loop"]["workers"][w]["flows"] for w in ("w0", "w1"))
        assert (v0, v1) == (w0, w1) and w0 + w1 >= 6
        assert after["steering"]["programs_attached"] == 0    # the old one's stays


def test_the_metrics_socket_is_handed_over(make_lab):
    """[metrics] listen: the old lbd's /metrics listening socket travels like the control
    socket (the new lbd could not bind the address while the old one holds it), and the
    backends' metrics go on from where they were (the reals travel whole)."""
    from .test_metrics import METRICS, get, scrape
    lab = make_lab(backends=1, lbd_extra='[metrics]\nlisten = "%s"\n' % METRICS)
    vip = VIPS["nat"][0]
    lbctl(lab, "vip", "add", vip + ":80", "--mode", "nat", "--scheduler", "maglev")
    lbctl(lab, "backend", "add", vip + ":80", LOCAL[0])
    n = 5
    out = lab.exec("c1", ["sh", "-c", "for i in $(seq %d); do curl -sf --max-time 5 "
                          "http://%s/id; done" % (n, vip)]).stdout.split()
    assert out == ["b1"] * n
    be = {"backend": LOCAL[0] + ":80"}
    before = get(scrape(lab), "threeway_backend_connections_total", **be)
    assert before == n
    old = lab.topology["lb"]["pid"]
    info = lab.takeover_lbd()
    assert info["old_exit"] == 0 and lab.topology["lb"]["pid"] != old
    after = scrape(lab)                   # served by the new lbd, on the handed-over socket
    assert get(after, "threeway_backend_connections_total", **be) == before
    st = lbctl(lab, "status")
    assert st["pid"] != old and st["metrics"] == {"listen": METRICS} and st["takeover"]
    with open(lab.topology["lb"]["log"]) as f:
        assert "cannot listen" not in f.read()
