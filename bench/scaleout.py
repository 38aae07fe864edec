"""Aggregate throughput of 1, 2 and 3 lbd instances behind BGP ECMP, side by side in one run.

    python3 -m bench.scaleout [--runs 3] [--quick] [--out bench/results]

```
 c1 -- rt (BIRD: a /32 per VIP via every running instance; L4 multipath hash; etcd)
        |
       brs -- lb1 lb2 lb3 (1, 2 or 3 of them running)  b1 b2
```

One lab with three instances (`Lab(lbs=3, cluster=True)`: one VIP table in etcd, flow sync);
the instance count is changed between cells by stopping and starting lbds (a clean stop
withdraws its routes; the bench waits until the router has exactly that many next hops for
every VIP). A nat VIP (198.19.100.1: :80 rr, :5201 sh) and a dsr VIP (198.19.100.2: :80
maglev, :5201 sh) over b1 and b2, both made with `lbctl --cluster`. Workloads (bench/e2e.py's
Bench.measure): wrk -t1 -c16 keep-alive GETs of /1k, the same with "Connection: close" (one
connection per request: new connections spread over the instances by the router's hash),
and iperf3 -P4 downloads (-R). Runs interleave the counts (run 1 of 1, 2, 3 instances, then
run 2 ...), so a noisy minute of the shared host hits every count alike.

Per cell: the rate; the CPU of every running lbd (summed, and per instance) and of the whole
machine over the measurement; each instance's share of the flows it created (flow_created
deltas: how the router spread the connections). Medians over the runs go to
bench/results/scaleout.json and scaleout.md.

This VM has 2 CPUs for the client, the router, the backends and every lbd: a second or
third instance adds no CPU, so the figures show what spreading costs or saves on a fixed
machine (more processes, more wakeups, smaller batches), not the gain of adding machines.

Invariants: one lab with a unique name, downed on the way out (also on failure); every
command has a timeout, every load a fixed duration; nothing asserts a timing.
"""
import os
import sys
import time

from bench.e2e import (HTTP_PORT, IPERF_PORT, WORKLOAD_BY_NAME, WRK_CONNS, Bench, Failed,
                       _fmt, _pct, cpu_per_unit, lab_argparser, lab_meta, lab_runs, make_row,
                       median, parse_pid_stat, parse_proc_stat, _read, pick_http_object,
                       write_report)
from tools.lab import Lab, LabError, _wait, lbd_request, unique_name

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
COUNTS = (1, 2, 3)
BACKENDS = ["198.19.0.11", "198.19.0.12"]
VIPS = {"nat": ("198.19.100.1", ("rr", "sh")), "dsr": ("198.19.100.2", ("maglev", "sh"))}
WORKLOADS = [WORKLOAD_BY_NAME[n] for n in ("wrk-keepalive", "wrk-close", "iperf-down-P4")]
ROUTE_TIMEOUT = 60.0


def _jiffies(pid):
    try:
        return parse_pid_stat(_read("/proc/%d/stat" % pid))
    except (OSError, IndexError, ValueError):
        return None


def _busy():
    busy, _total, _steal = parse_proc_stat(_read("/proc/stat"))
    return busy


class ScaleBench(Bench):
    """bench/e2e.py's Bench against the VIPs of a cluster lab, with its instances counted."""

    def __init__(self, lab, dur, http_object):
        self.lab = lab
        self.anchors = None
        self.dur = dur
        self.http_object = http_object
        self.sock = None
        self.pids = {}

    def client(self, path):
        return "c1"

    def host(self, path):
        return VIPS[path][0]

    def running(self):
        return [i["k"] for i in self.lab.topology["lbs"] if i.get("running")]

    def call(self, k, cmd, args=None):
        r = lbd_request(self.lab.lb_info(k)["control_socket"], cmd, args, timeout=10)
        return r["result"]

    def set_count(self, n):
        """Exactly lb1..lbn running, and the router's routes say so for every VIP."""
        for k in range(len(self.lab.topology["lbs"]), n, -1):
            if self.lab.lb_info(k).get("running"):
                self.lab.stop_lbd(k)
        for k in range(1, n + 1):
            if not self.lab.lb_info(k).get("running"):
                self.lab.start_lbd(k)
        want = {v for v, _ in VIPS.values()}

        def ok():
            r = self.lab.routes()
            return all(len(r.get(v, [])) == n for v in want)
        _wait("%d next hops for every VIP" % n, ok, ROUTE_TIMEOUT,
              detail=lambda: " (routes %s)" % self.lab.routes())

    def created(self):
        return {k: self.call(k, "stats", {"all": True})["counters"].get("flow_created", 0)
                for k in self.running()}

    def cell(self, path, w):
        ks = self.running()
        pids = {k: self.lab.lb_info(k)["pid"] for k in ks}
        f0 = self.created()
        j0 = {k: _jiffies(p) for k, p in pids.items()}
        b0 = _busy()
        m, err, wall = self.timed(path, w)
        b1 = _busy()
        j1 = {k: _jiffies(p) for k, p in pids.items()}
        f1 = self.created()
        tck = os.sysconf("SC_CLK_TCK")
        per = {k: (100.0 * (j1[k] - j0[k]) / tck / wall if j0[k] is not None and
                   j1[k] is not None and wall > 0 else None) for k in ks}
        run = {"value": m["value"], "wall_s": wall, "served_bytes": m["served_bytes"],
               "requests": m["requests"], "instances": len(ks),
               "lbd_pct_each": per,
               "lbd_pct": sum(v for v in per.values() if v is not None),
               "machine_busy_pct": 100.0 * (b1 - b0) / tck / wall if wall > 0 else None,
               "lbd_s": sum(((j1[k] - j0[k]) / tck) for k in ks
                            if j0[k] is not None and j1[k] is not None),
               "created": {k: f1.get(k, 0) - f0.get(k, 0) for k in ks}}
        if err or m.get("error"):
            run["error"] = err or m["error"]
        return run


def share(created):
    total = sum(created.values())
    return " : ".join("%d" % round(100.0 * created[k] / total) for k in sorted(created)) \
        if total else "-"


def render(rows, meta):
    g = {(r["path"], r["workload"], r["instances"]): r for r in rows}
    L = ["# Aggregate throughput of 1, 2 and 3 lbd instances behind ECMP (one run)", "",
         "%s; %s; %s CPUs; Linux %s; Python %s; fast path %s; %d run%s per cell, medians "
         "shown (every run in scaleout.json)%s." % (
             meta["date"], meta["cpu_model"], meta["ncpu"], meta["kernel"], meta["python"],
             meta.get("impl", "?"), meta["runs"], "" if meta["runs"] == 1 else "s",
             "; QUICK (short durations)" if meta["quick"] else ""), "",
         "`python3 -m bench.scaleout%s`" % meta["argv"], "",
         "This VM has 2 CPUs for everything: the client (wrk, iperf3), the router, the two "
         "backends and every lbd. More instances add processes, not CPUs: read the ratios as "
         "the cost (or saving) of spreading one load over more instances on a fixed machine, "
         "not as the gain of adding machines.", "",
         "## Rates (median; N/1 = the rate with N instances over the rate with one)", "",
         "| VIP | workload | unit | 1 | 2 | 3 | 2/1 | 3/1 |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for path in VIPS:
        for w in WORKLOADS:
            r = [g.get((path, w.name, n)) for n in COUNTS]
            m = [x and x["median"] for x in r]
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                path, w.name, w.unit, *(_fmt(v, w.unit) for v in m),
                *("%.2f×" % (v / m[0]) if v and m[0] else "-" for v in m[1:])))
    L += ["", "## CPU and spread (median)", "",
          "lbd = the sum of every running instance's process CPU, then each one's (% of one "
          "CPU over the measurement); machine = the whole host busy; spread = each instance's "
          "share of the flows created in the cell (flow_created), in %, per run.", "",
          "| VIP | workload | instances | lbd (sum) | lbd each | machine | lbd per unit | "
          "spread per run |", "|---|---|---:|---:|---|---:|---:|---|"]
    for path in VIPS:
        for w in WORKLOADS:
            for n in COUNTS:
                r = g.get((path, w.name, n))
                if not r:
                    continue
                each = r["lbd_each"]
                unit = " µs/req" if w.kind == "wrk" else " s/GB"
                L.append("| %s | %s | %d | %s | %s | %s | %s | %s |" % (
                    path, w.name, n, _pct(r["lbd_sum"]),
                    " / ".join("lb%s %s" % (k, _pct(v)) for k, v in sorted(each.items())),
                    _pct(r["machine"]), _fmt(r["lbd_per_unit"]) + unit,
                    "; ".join(share(x["created"]) for x in r["runs"])))
    L += ["", "## Notes", ""] + ["- " + x for x in meta["notes"]]
    errs = [(r["path"], r["workload"], r["instances"], e) for r in rows
            for e in r.get("errors", [])]
    if errs:
        L += ["", "## Failed runs", ""] + ["- %s %s instances=%d: %s" % e for e in errs]
    return "\n".join(L) + "\n"


def main(argv=None):
    a = lab_argparser("bench.scaleout", __doc__.split("\n")[0], RESULTS).parse_args(argv)
    runs, dur = lab_runs(a)
    t_start = time.monotonic()
    meta = lab_meta(a, runs, dur, argv)
    lab = Lab(unique_name(), backends=len(BACKENDS), lbs=max(COUNTS), cluster=True)
    print("scaleout: instances %s x %d VIPs x %d workloads x %d run(s); lab %s" % (
        "/".join(map(str, COUNTS)), len(VIPS), len(WORKLOADS), runs, lab.name), flush=True)
    rows = []
    try:
        with lab:
            meta["impl"] = (lab.topology["lb"].get("status") or {}).get("impl", "?")
            for mode, (vip, scheds) in VIPS.items():
                for port, sched in zip((HTTP_PORT, IPERF_PORT), scheds):
                    ep = "%s:%d" % (vip, port)
                    lab.lbctl_cluster("vip", "add", ep, "--mode", mode, "--scheduler", sched)
                    for b in BACKENDS:
                        lab.lbctl_cluster("backend", "add", ep, b)
            b = ScaleBench(lab, dur, None)
            b.set_count(max(COUNTS))
            b.http_object, note = pick_http_object(lab)
            meta["http_object"] = b.http_object
            for mode in VIPS:
                b.check(mode, False, None)
            results = {}
            total, i = len(WORKLOADS) * len(VIPS) * runs * len(COUNTS), 0
            for w in WORKLOADS:
                for run in range(1, runs + 1):
                    for n in COUNTS:
                        b.set_count(n)
                        for mode in VIPS:
                            i += 1
                            r = b.cell(mode, w)
                            results.setdefault((mode, w.name, n), []).append(r)
                            shown = ("FAILED: %s" % r["error"][:120] if r.get("error")
                                     else "%s %s  (lbd %s, machine %s, spread %s)" % (
                                         _fmt(r["value"], w.unit), w.unit, _pct(r["lbd_pct"]),
                                         _pct(r["machine_busy_pct"]), share(r["created"])))
                            print("[%d/%d] %s x%d %-14s run %d/%d ... %s" % (
                                i, total, mode, n, w.name, run, runs, shown), flush=True)
            env = {"date": meta["date"], "quick": a.quick, "cpu_model": meta["cpu_model"],
                   "ncpu": meta["ncpu"], "http_object": meta["http_object"]}
            for mode in VIPS:
                for w in WORKLOADS:
                    for n in COUNTS:
                        rs = results[(mode, w.name, n)]
                        row = make_row(mode, w, rs, env)
                        row["instances"] = n
                        row["lbd_sum"] = median([r.get("lbd_pct") for r in rs])
                        row["lbd_each"] = {k: median([r["lbd_pct_each"].get(k) for r in rs])
                                           for k in sorted(rs[0]["lbd_pct_each"])}
                        row["machine"] = median([r.get("machine_busy_pct") for r in rs])
                        row["lbd_per_unit"] = cpu_per_unit("lbd_s", w.kind, rs)
                        rows.append(row)
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    except (LabError, Failed) as e:
        print("scaleout failed: %s" % e, file=sys.stderr)
        return 1
    meta["notes"] = [
        "One lab, three instances (lb1..lb3, each its own lbd with one data-plane worker, "
        "TAP with vnet offload), BGP to BIRD on rt with an L4 multipath hash; the count is "
        "changed by a clean stop (routes withdrawn) or a start of lb2/lb3, then the bench "
        "waits for exactly that many next hops.",
        "wrk: `wrk -t1 -c%d -d%ds`, object `%s`; iperf3 `-P4 -R -t %d -O %d` (bench/e2e.py's "
        "Bench.measure), from c1 to each VIP. With 16 connections (or 4 iperf3 flows) the "
        "router's hash does not split them evenly: the spread column shows how it fell." % (
            WRK_CONNS, dur.wrk, meta.get("http_object"), dur.iperf, dur.iperf_omit),
        "dsr downloads pass only the clients' ACKs through lbd; nat carries both directions.",
    ]
    return write_report(a.out, "scaleout", meta, rows, render(rows, meta), t_start)


if __name__ == "__main__":
    sys.exit(main())
