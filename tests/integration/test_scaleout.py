"""Scale-out end to end (issue 16): three lbd instances behind BGP ECMP, one VIP table in
etcd, flows synced between them; an instance killed with SIGKILL, then a fourth one joining
while a backend is removed. Real TCP: long rate-limited downloads and continuous short
requests through a nat, a dsr, a splice and a tunnel VIP.

```
 c1 -- rt (BIRD: a /32 per VIP via lb1, lb2, lb3; L4 multipath hash; etcd on 198.19.0.1)
        |                                   \\-- brr: r1 r2   (tunnel VIP)
       brs -- lb1 lb2 lb3 (lb4 joins)  b1 b2 b3               (nat, dsr, splice VIPs)
```

How flows survive a move (lb/flowsync.py, docs/interfaces.md): every instance builds the
same Maglev tables from etcd's table, and every flow an instance carries (after 3 frames;
splice once spliced) is sent to the others, so the instance ECMP moves a flow to has it,
backend and sequence deltas included; a joining instance pulls a peer's whole table before
its routes are announced. The backends answer nat and splice connections over a multipath
route across all instances (a dead one is skipped once its neighbour entry fails).

Nothing is asserted on time; the figures (flows per mode that survived, request failures
and the slowest request, write-to-apply on every instance) are printed.
"""
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

import pytest

from tools.lab import BLOB_PATH, Lab, _wait, lbd_request, unique_name

from .test_takeover import finish

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

LOCAL = ["198.19.0.11", "198.19.0.12", "198.19.0.13"]
REMOTE = ["198.19.200.11", "198.19.200.12"]
VIPS = {"nat": ("198.19.100.1", LOCAL[:2], "maglev"), "dsr": ("198.19.100.2", LOCAL[:2], "maglev"),
        "splice": ("198.19.100.3", LOCAL[:2], "rr"), "tunnel": ("198.19.100.7", REMOTE, "maglev")}
PER_MODE = 8                    # 32 downloads
PART = 20 << 20                 # bytes of /blob each download asks for (a range)
RATE = "1M"                     # curl --limit-rate: ~20 s each, so they are mid-way at a move
ROUTE_TIMEOUT = 30.0


def sha_of_part():
    h = hashlib.sha256()
    with open(BLOB_PATH, "rb") as f:
        h.update(f.read(PART))
    return h.hexdigest()


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


def downloads(lab, hdr_dir):
    """The downloads; each one's response head goes to hdr_dir/MODE-K (its X-Backend)."""
    return {(mode, k): lab.popen("c1", [
        "sh", "-c", "curl -sf --max-time 120 --limit-rate %s -r 0-%d -D %s/%s-%d http://%s/blob "
        "| sha256sum" % (RATE, PART - 1, hdr_dir, mode, k, vip)], stdout=subprocess.PIPE,
        text=True) for mode, (vip, _, _) in VIPS.items() for k in range(PER_MODE)}


def backend_of(hdr_dir, mode, k):
    try:
        with open(os.path.join(hdr_dir, "%s-%d" % (mode, k))) as f:
            for line in f:
                if line.lower().startswith("x-backend:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def requests(lab, stop_file):
    return {mode: lab.popen("c1", [sys.executable, "-m", "tools.traffic", "http",
                                   "http://%s/id" % vip, "--count", "100000", "--seconds", "150",
                                   "--stop-file", stop_file, "--timeout", "150"],
                            stdout=subprocess.PIPE, text=True)
            for mode, (vip, _, _) in VIPS.items()}


def carried(lab, k):
    """{mode: {client endpoint}} of the download flows instance k forwards itself (> 50 frames
    from the client through it: flows synced from a peer start at 0)."""
    out = {}
    for m, (vip, _, _) in VIPS.items():
        cs = call(lab, k, "conns", {"vip": vip + ":80", "limit": 100000})["conns"]
        out[m] = {c["client"] for c in cs if c["packets_fwd"] > 50}
    return out


def counters(lab, k):
    return call(lab, k, "stats", {"all": True})["counters"]


def run_move(lab, tmp_path, move, sha):
    """Downloads and requests through every VIP; once every download is under way, move()
    (which returns a dict of what it did); then the results per mode."""
    stop = str(tmp_path / "stop")
    dl = downloads(lab, str(tmp_path))
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
        what = move(seen)
        got = {k: (v.split() or [""])[0] for k, v in finish(dl).items()}
    finally:
        open(stop, "w").close()
        req = {m: json.loads(v.strip().splitlines()[-1]) for m, v in finish(rq).items()}
    intact = {m: sum(got[(m, i)] == sha for i in range(PER_MODE)) for m in VIPS}
    what["by_backend"] = {(m, i): (backend_of(str(tmp_path), m, i), got[(m, i)] == sha)
                          for m in VIPS for i in range(PER_MODE)}
    return what, intact, req


def test_an_instance_killed_with_sigkill_loses_no_flow(lab, tmp_path):
    sha = sha_of_part()

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
    what, intact, req = run_move(lab, tmp_path, kill, sha)
    after = {k: counters(lab, k) for k in running(lab)}
    print("SIGKILL of lb%d (download flows it carried per mode %s; per instance %s): route "
          "gone %.2f s after its exit; downloads intact per mode %s of %d; short requests %s" % (
              what["victim"], what["on_it"], what["load"], what["route_gone_s"], intact,
              PER_MODE, {m: (r["requests"], r["n_errors"], (r["slowest"] or [[0]])[0][0])
                         for m, r in req.items()}))
    lab.start_lbd(what["victim"])
    wait_routes(lab, 3)
    assert sum(what["on_it"].values()) > 0, what     # the kill moved something
    assert intact == dict.fromkeys(VIPS, PER_MODE), intact
    assert {m: r["n_errors"] for m, r in req.items()} == dict.fromkeys(VIPS, 0), {
        m: r["errors"] for m, r in req.items() if r["n_errors"]}
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
    sha = sha_of_part()
    # b3 joins the nat and dsr VIPs now, and leaves them during the join below
    for mode in ("nat", "dsr"):
        cluster(lab, "backend", "add", VIPS[mode][0] + ":80", LOCAL[2])
    wait_revision(lab, revision(lab))

    def join(seen):
        cluster(lab, "backend", "del", VIPS["nat"][0] + ":80", LOCAL[2])
        cluster(lab, "backend", "del", VIPS["dsr"][0] + ":80", LOCAL[2])
        t0 = time.monotonic()
        info = lab.add_lb()
        wait_routes(lab, 4)
        joined = time.monotonic() - t0
        st = call(lab, info["k"], "status")
        # the download flows ECMP moved to it (polled a few seconds: they are mid-way)
        most = {}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            now = {m: len(v) for m, v in carried(lab, info["k"]).items()}
            if sum(now.values()) >= sum(most.values()):
                most = now
            time.sleep(0.2)         # poll interval, bounded by the deadline
        c4 = counters(lab, info["k"])
        return {"k": info["k"], "joined_s": joined, "carried": most,
                "new_counters": {x: c4.get(x, 0) for x in (
                    "flow_created", "sync_imported", "nat_fwd", "dsr_fwd", "splice_fwd",
                    "tunnel_fwd")},
                "pulled": (st.get("sync") or {}).get("last_pull")}
    what, intact, req = run_move(lab, tmp_path, join, sha)
    k, carried_new = what["k"], what["carried"]
    print("lb%d joined (in the route %.2f s after add_lb began; pulled %s) while b3 left the "
          "nat and dsr VIPs: it carries %s (counters %s); downloads intact per mode %s of %d; short "
          "requests %s" % (k, what["joined_s"], what["pulled"], carried_new,
                           what["new_counters"], intact, PER_MODE,
                           {m: (r["requests"], r["n_errors"], (r["slowest"] or [[0]])[0][0])
                            for m, r in req.items()}))
    assert what["pulled"] and what["pulled"].get("error") is None, what["pulled"]
    # the promise: every download from a backend that stays is intact; those b3 served as it
    # left (removed, not failed) are printed, not promised here
    on_b3 = {k: ok for k, (b, ok) in what["by_backend"].items() if b == "b3"}
    print("downloads b3 served as it left: %d, intact %d" % (len(on_b3), sum(on_b3.values())))
    kept = {k: ok for k, (b, ok) in what["by_backend"].items() if b != "b3"}
    assert all(kept.values()), {k: what["by_backend"][k] for k, ok in kept.items() if not ok}
    assert {m: r["n_errors"] for m, r in req.items()} == dict.fromkeys(VIPS, 0), {
        m: r["errors"] for m, r in req.items() if r["n_errors"]}


def test_a_change_through_lbctl_cluster_reaches_every_instance(lab):
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
