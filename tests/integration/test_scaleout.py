"""Scale-out end to end (issue 16): three lbd instances behind BGP ECMP, one VIP table in
etcd, flows synced between them; an instance killed with SIGKILL, then a fourth one joining
while a backend is removed. Real TCP: long paced downloads and continuous short
requests through a nat, a dsr, a splice and a tunnel VIP. The downloads are paced by their
reader (tools.traffic download), so each lasts a known time in every mode.

```
 c1 -- rt (BIRD: a /32 per VIP via lb1, lb2, lb3; L4 multipath hash; etcd on 198.19.0.1)
        |                                   \\-- brr: r1 r2   (tunnel VIP)
       brs -- lb1 lb2 lb3 (lb4 joins)  b1 b2 b3               (nat, dsr, splice VIPs)
```

How flows survive a move (lb/flowsync.py, docs/interfaces.md): every instance builds the
same Maglev tables from etcd's table, and every flow an instance carries (after 3 frames;
splice once spliced) is sent to the others, so the instance ECMP moves a flow to has it,
backend and sequence deltas included; a joining instance pulls a peer's whole table before
its routes are announced (with draining slots for the backends of its peers' flows that
its table lacks). The backends answer each nat and splice connection through the instance
that delivered it (marked by that LB's MAC), a dead instance's address being answered by
the first live member; a SYN cookie holds on every instance (the key is the cluster's).
A download is intact when it ran, unbroken and unstalled, until the test stopped it, and
its bytes are /blob's.

Nothing is asserted on time; the figures (flows per mode that survived, request failures
and the slowest request, write-to-apply on every instance) are printed.
"""
import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import pytest

from tools.lab import BLOB_PATH, BLOB_SIZE, Lab, _wait, lbd_request, unique_name

from .test_takeover import finish

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

LOCAL = ["198.19.0.11", "198.19.0.12", "198.19.0.13"]
REMOTE = ["198.19.200.11", "198.19.200.12"]
VIPS = {"nat": ("198.19.100.1", LOCAL[:2], "maglev"), "dsr": ("198.19.100.2", LOCAL[:2], "maglev"),
        "splice": ("198.19.100.3", LOCAL[:2], "rr"), "tunnel": ("198.19.100.7", REMOTE, "maglev")}
PER_MODE = 8                    # 32 downloads
RATE = 512 << 10                # bytes/s each download is read at (tools.traffic download): the
                                # 64 MiB /blob lasts 128 s, longer than any move here
STALL_S = 4.0                   # a download that gets no byte for this long fails
TAIL_S = 8.0                    # the downloads go on this long after a move, then are stopped
ROUTE_TIMEOUT = 30.0


_BLOB = []


def sha_of_prefix(n):
    """sha256 of the first n bytes of the lab's /blob (read once)."""
    if not _BLOB:
        with open(BLOB_PATH, "rb") as f:
            _BLOB.append(f.read())
    return hashlib.sha256(memoryview(_BLOB[0])[:n]).hexdigest()


def call(lab, k, cmd, args=None):
    r = lbd_request(lab.lb_info(k)["control_socket"], cmd, args, timeout=10)
    assert r.get("ok", True) and "result" in r, r
    return r["result"]


def running(lab):
    return [i["k"] for i in lab.topology["lbs"] if i.get("running")]


def cluster(lab, *args):
    r = lab.lbctl_cluster(*args, check=False)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def wait_routes(lab, hops):
    want = {vip for vip, _, _ in VIPS.values()}

    def ok():
        r = lab.routes()
        return all(len(r.get(v, [])) == hops for v in want) and r
    return _wait("%d next hops for every VIP" % hops, ok, ROUTE_TIMEOUT,
                 detail=lambda: " (routes %s)" % lab.routes())


def wait_revision(lab, rev):
    _wait("every instance on revision %d" % rev, lambda: all(
        call(lab, k, "cluster")["revision"] >= rev for k in running(lab)), 30.0)


def revision(lab):
    return call(lab, 1, "cluster")["store_revision"]


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    lab = Lab(unique_name(), backends=3, remote_backends=2, lbs=3, cluster=True)
    try:
        lab.up()
        for mode, (vip, backends, sched) in VIPS.items():
            cluster(lab, "vip", "add", vip + ":80", "--mode", mode, "--scheduler", sched)
            for b in backends:
                cluster(lab, "backend", "add", vip + ":80", b)
        wait_routes(lab, 3)
        yield lab
    finally:
        lab.down()


def downloads(lab, stop_file):
    """The downloads: /blob through every VIP, PER_MODE each, read at RATE bytes/s until
    stop_file exists (so they last as long as the test needs, in every mode)."""
    return {(mode, k): lab.popen("c1", [
        sys.executable, "-m", "tools.traffic", "download", "http://%s/blob" % vip,
        "--bytes", str(BLOB_SIZE), "--rate", str(RATE), "--stall", str(STALL_S),
        "--stop-file", stop_file, "--timeout", "300"],
        stdout=subprocess.PIPE, text=True) for mode, (vip, _, _) in VIPS.items()
        for k in range(PER_MODE)}


def requests(lab, stop_file):
    return {mode: lab.popen("c1", [sys.executable, "-m", "tools.traffic", "http",
                                   "http://%s/id" % vip, "--count", "100000", "--seconds", "150",
                                   "--stop-file", stop_file, "--timeout", "150"],
                            stdout=subprocess.PIPE, text=True)
            for mode, (vip, _, _) in VIPS.items()}


def carried(lab, k):
    """{mode: {client endpoint}} of the download flows instance k forwards itself (> 50 frames
    from the client through it: flows synced from a peer start at 0)."""
    return {m: {c for c, n in pk.items() if n > 50} for m, pk in packets(lab, k).items()}


def packets(lab, k):
    """{mode: {client endpoint: client frames forwarded}} of instance k's flows of the VIPs
    (one listing of its whole table: a listing walks every flow, ~10^4 of them here)."""
    mode_of = {vip + ":80": m for m, (vip, _, _) in VIPS.items()}
    out = {m: {} for m in VIPS}
    for c in call(lab, k, "conns", {"limit": 1000000})["conns"]:
        m = mode_of.get(c["vip"])
        if m is not None:
            out[m][c["client"]] = c["packets_fwd"]
    return out


def counters(lab, k):
    return call(lab, k, "stats", {"all": True})["counters"]


def _last_json(out):
    lines = (out or "").strip().splitlines()
    try:
        return json.loads(lines[-1]) if lines else {}
    except ValueError:
        return {"error": "no JSON: %r" % out[-200:]}


def run_move(lab, tmp_path, move):
    """Downloads and requests through every VIP; once every download is under way, move()
    (which returns a dict of what it did); TAIL_S more of the downloads, then they are
    stopped. A download is intact when it ran until it was stopped, without a stall or an
    error, and its bytes are /blob's. One that was over by itself before the stop fails the
    test: it would say nothing about the move."""
    stop, dstop = str(tmp_path / "stop"), str(tmp_path / "stop-downloads")
    at_start = {k: counters(lab, k) for k in running(lab)}
    dl = downloads(lab, dstop)
    rq = requests(lab, stop)
    try:
        seen = {}

        def under_way():
            seen.clear()
            for k in running(lab):
                for m, cl in carried(lab, k).items():
                    seen.setdefault(m, set()).update(cl)
            return all(len(seen.get(m, ())) >= PER_MODE for m in VIPS)
        _wait("every download under way", under_way, 60.0,
              detail=lambda: " (seen %s)" % {m: len(v) for m, v in seen.items()})
        carriers = {k: set().union(*carried(lab, k).values()) for k in running(lab)}
        before = {k: counters(lab, k) for k in running(lab)}
        what = move(seen)
        what["counters_before"] = before
        what["carriers"] = carriers
        time.sleep(TAIL_S)          # the downloads go on through the new paths (not a wait)
        open(dstop, "w").close()
        res = {k: _last_json(v) for k, v in finish(dl).items()}
    finally:
        open(stop, "w").close()
        open(dstop, "w").close()
        req = {m: json.loads(v.strip().splitlines()[-1]) for m, v in finish(rq).items()}
    after = {k: counters(lab, k) for k in running(lab)}
    # a clash between flows on two instances is seen only when one's record reaches the
    # other, which refuses it (sync_refused): a refusal too, as much as drop_rev_clash
    what["rev_clash"] = sum(c.get(n, 0) - at_start.get(k, {}).get(n, 0)
                            for k, c in after.items()
                            for n in ("drop_rev_clash", "sync_refused"))
    over = [key for key, r in res.items() if not r.get("stopped") and r.get("error") is None]
    assert not over, "downloads %s were over before the stop: give them more bytes" % over
    ok = {key: bool(r.get("stopped") and r.get("error") is None and r.get("sha256") ==
                    sha_of_prefix(r.get("bytes", 0))) for key, r in res.items()}
    intact = {m: sum(ok[(m, i)] for i in range(PER_MODE)) for m in VIPS}
    what["by_backend"] = {key: (r.get("backend"), ok[key]) for key, r in res.items()}
    what["failed"] = {key: r for key, r in res.items() if not ok[key]}
    what["mib"] = sorted(round(r.get("bytes", 0) / 2 ** 20, 1) for r in res.values())
    return what, intact, req


def assert_requests(req, what):
    """No short request failed, but for those a rev clash explains: the client's kernel gave
    a new connection the port of a live download to another VIP on the same backend, which
    the backend cannot take (one 4-tuple). The balancer refuses it (drop_rev_clash, after
    trying another backend for nat) rather than cut the download; each refusal is counted on
    the instance, and every failure must have one. When the two flows are on two instances,
    neither sees the clash at its SYN: the first record of one that reaches the other is
    refused there (sync_refused), and if its instance dies, that connection goes with it."""
    failed = sum(r["n_errors"] for r in req.values())
    print("short requests failed %d; rev-clash refusals on the instances (drop_rev_clash, "
          "sync_refused) %d" % (
        failed, what["rev_clash"]))
    assert failed <= what["rev_clash"], {m: r["errors"] for m, r in req.items() if r["n_errors"]}


def post_mortem(lab, what):
    """Printed: every running instance's non-zero drop and refusal counters, and for each
    failed download the instances that carried it before the move and its entry on each."""
    for k in running(lab):
        c = counters(lab, k)
        print("lb%d drops and refusals: %s" % (k, {x: n for x, n in sorted(c.items()) if n and (
            "drop" in x or "bad" in x or "refus" in x or "rst" in x or "no_" in x)}))
    if not what["failed"]:
        return
    for k in running(lab):
        try:
            with open(lab.lb_info(k)["log"], errors="replace") as f:
                lines = [x.rstrip() for x in f if "WARNING" in x or "ERROR" in x]
        except OSError as e:
            lines = [str(e)]
        print("lb%d log, warnings and errors (last 15 of %d): %s" % (k, len(lines), lines[-15:]))
    for k in running(lab):
        c, b = counters(lab, k), what["counters_before"].get(k, {})
        print("lb%d counters moved since before the move: %s" % (k, {
            x: n - b.get(x, 0) for x, n in sorted(c.items()) if n != b.get(x, 0)}))
    rows = {k: call(lab, k, "conns", {"limit": 1000000})["conns"] for k in running(lab)}
    for key, r in what["failed"].items():
        print("failed download %s: %s; carried by %s before the move; entries now %s" % (
            key, r, [k for k, cl in what["carriers"].items() if r.get("client") in cl],
            {k: [x for x in rs if x["client"] == r.get("client")] for k, rs in rows.items()}))


def test_an_instance_killed_with_sigkill_loses_no_flow(lab, tmp_path):
    def kill(seen):
        # the instance carrying the most download flows
        load = {k: sum(len(v) for v in carried(lab, k).values()) for k in running(lab)}
        victim = max(load, key=load.get)
        on_it = {m: len(v) for m, v in carried(lab, victim).items()}
        before = {k: counters(lab, k) for k in running(lab) if k != victim}
        took = lab.kill_lbd(victim)
        t0 = time.monotonic()
        wait_routes(lab, 2)
        return {"victim": victim, "on_it": on_it, "load": load, "before": before,
                "exit_s": took, "route_gone_s": time.monotonic() - t0}
    what, intact, req = run_move(lab, tmp_path, kill)
    post_mortem(lab, what)
    after = {k: counters(lab, k) for k in running(lab)}
    print("SIGKILL of lb%d (download flows it carried per mode %s; per instance %s): route "
          "gone %.2f s after its exit; downloads intact per mode %s of %d; short requests %s" % (
              what["victim"], what["on_it"], what["load"], what["route_gone_s"], intact,
              PER_MODE, {m: (r["requests"], r["n_errors"], (r["slowest"] or [[0]])[0][0])
                         for m, r in req.items()}))
    lab.start_lbd(what["victim"])
    wait_routes(lab, 3)
    assert sum(what["on_it"].values()) > 0, what     # the kill moved something
    assert intact == dict.fromkeys(VIPS, PER_MODE), (intact, what["failed"])
    assert_requests(req, what)
    # the moved flows came from sync: every survivor imported the victim's; a flow too young
    # to have been synced (under 3 frames, or in the last sync tick) is re-created from its
    # next frame, which only dsr and tunnel can do (Maglev gives the same backend): counted
    recreated = {k: c.get("flow_recreated", 0) - what["before"][k].get("flow_recreated", 0)
                 for k, c in after.items() if k in what["before"]}
    print("survivors' sync_imported %s, flows re-created from a non-SYN after the kill %s" % (
        {k: c.get("sync_imported", 0) for k, c in after.items()}, recreated))
    for k in recreated:
        assert after[k].get("sync_imported", 0) > 0, k


def test_a_fourth_instance_joins_while_a_backend_is_removed(lab, tmp_path):
    # b3 joins the nat and dsr VIPs now, and leaves them during the join below
    for mode in ("nat", "dsr"):
        cluster(lab, "backend", "add", VIPS[mode][0] + ":80", LOCAL[2])
    wait_revision(lab, revision(lab))

    def join(seen):
        # b3 leaves (two writes to etcd) while lb4 comes up and joins
        errors = []

        def remove_b3():
            try:
                for mode in ("nat", "dsr"):
                    cluster(lab, "backend", "del", VIPS[mode][0] + ":80", LOCAL[2])
            except Exception as e:      # the test thread asserts it
                errors.append(e)
        writer = threading.Thread(target=remove_b3)
        t0 = time.monotonic()
        writer.start()
        try:
            info = lab.add_lb()
            wait_routes(lab, 4)
            joined = time.monotonic() - t0
        finally:
            writer.join(120)
        assert not writer.is_alive() and not errors, errors
        st = call(lab, info["k"], "status")
        # the download flows ECMP moved to it: those whose client frames it forwards, i.e.
        # whose packet count grows on it over a few seconds (they are mid-way; a synced or
        # pulled flow arrives with its counts at 0, so a count alone says nothing)
        first = packets(lab, info["k"])
        time.sleep(5)               # the window the growth is measured over, not a readiness wait
        last = packets(lab, info["k"])
        most = {m: sorted(c for c, n in last[m].items()
                          if c in seen[m] and n - first[m].get(c, 0) >= 5) for m in VIPS}
        c4 = counters(lab, info["k"])
        return {"k": info["k"], "joined_s": joined, "carried": most,
                "new_counters": {x: c4.get(x, 0) for x in (
                    "flow_created", "sync_imported", "nat_fwd", "dsr_fwd", "splice_fwd",
                    "tunnel_fwd")},
                "pulled": (st.get("sync") or {}).get("last_pull")}
    what, intact, req = run_move(lab, tmp_path, join)
    post_mortem(lab, what)
    k, carried_new = what["k"], what["carried"]
    print("lb%d joined (in the route %.2f s after add_lb began; pulled %s) while b3 left the "
          "nat and dsr VIPs: it carries %s (counters %s); downloads intact per mode %s of %d; short "
          "requests %s" % (k, what["joined_s"], what["pulled"], carried_new,
                           what["new_counters"], intact, PER_MODE,
                           {m: (r["requests"], r["n_errors"], (r["slowest"] or [[0]])[0][0])
                            for m, r in req.items()}))
    assert what["pulled"] and what["pulled"].get("error") is None, what["pulled"]
    # how many downloads ECMP moved onto the joiner is printed, not asserted: hash-threshold
    # over 4 paths instead of 3 should move ~1/4 of the 32; runs of this test alone moved
    # 6 to 16, one run of the module (after the kill test, in the same lab) moved none:
    # not explained yet
    # every download is intact: those of the backends that stay, and those b3 served as it
    # left (its flows drain on every instance: the joiner takes them with a draining slot)
    on_b3 = {key: ok for key, (b, ok) in what["by_backend"].items() if b == "b3"}
    print("downloads b3 served as it left: %d, intact %d; moved onto lb%d per mode %s" % (
        len(on_b3), sum(on_b3.values()), k, {m: len(v) for m, v in carried_new.items()}))
    assert intact == dict.fromkeys(VIPS, PER_MODE), (intact, what["failed"])
    assert_requests(req, what)


def test_a_change_through_lbctl_cluster_reaches_every_instance(lab):
    # one SYN-cookie key for the cluster: every instance took it from etcd
    assert {k: call(lab, k, "cluster")["splice_secret"] for k in running(lab)} == \
        dict.fromkeys(running(lab), "cluster")
    vip = VIPS["nat"][0] + ":80"
    times = []
    for i in range(20):
        # the document revision every instance runs (etcd's store revision also counts the
        # members' keys); each write changes the weight, so each is a new revision
        rev0 = max(call(lab, k, "cluster")["revision"] for k in running(lab))
        t0 = time.monotonic()
        cluster(lab, "backend", "weight", vip, LOCAL[0], str(2 + i % 3))
        _wait("every instance past revision %d" % rev0, lambda: all(
            call(lab, k, "cluster")["revision"] > rev0 for k in running(lab)), 30.0,
            detail=lambda: " (%s)" % {k: {x: call(lab, k, "cluster").get(x) for x in (
                "revision", "store_revision", "seen_revision", "connected", "last_refused")}
                for k in running(lab)})
        times.append(time.monotonic() - t0)
    weights = {k: [b["weight"] for v in call(lab, k, "vip.list") if v["vip"] == vip
                   for b in v["backends"] if b["backend"].startswith(LOCAL[0])]
               for k in running(lab)}
    print("lbctl --cluster write -> the last of %d instances applied it: median %.0f ms, worst "
          "%.0f ms (20 writes)" % (len(running(lab)), statistics.median(times) * 1000,
                                   max(times) * 1000))
    assert all(w == [2 + 19 % 3] for w in weights.values()), weights
