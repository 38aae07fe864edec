"""nat through lbd with 1 and with 2 data-plane workers, side by side in one run.

    python3 -m bench.workers_lab [--runs 3] [--quick] [--out bench/results]

```
 lab A: [c1] -- rt -- lbtap (1 queue)  -- lbd workers=1 (one thread moves frames) -- b1 b2 b3
 lab B: [c1] -- rt -- lbtap (2 queues) -- lbd workers=2 (two threads, one engine each) -- b1 b2 b3
        both: TAP with vnet headers/offload, nat VIP 198.19.100.1 (:80 rr, :5201 sh)
```

Workloads (bench/e2e.py's, measured by its Bench): iperf3 -P4 upload and download (-R),
wrk -t1 -c16 keep-alive GETs of /1k, and the same with "Connection: close" (one connection
per request). Runs interleave the two labs (run 1 of A, run 1 of B, run 2 of A ...).

CPU, per run, over the measurement only (in % of one CPU):
  lbd        the lbd process (/proc/<pid>/stat), and per thread (/proc/<pid>/task: the main
             thread, lbd-w0, lbd-w1 ...)
  client     the load generator on c1 (wrk or the iperf3 client): the getrusage(CHILDREN)
             delta of this process around the measurement (the generator is our child, via
             `ip netns exec`, which execs it)
  nginx, iperf3-server   every process of that name in the lab's backend namespaces
             (/proc/<pid>/stat of the pids `ip netns pids` lists)
  machine    /proc/stat busy over all CPUs (includes softirqs, the router, the other lab's
             idle processes and anything else on this shared host)
Medians of the runs go to bench/results/workers.json and workers.md.

Invariants: two labs with unique names, both downed on the way out (also on failure); every
command has a timeout, every load a fixed duration; nothing asserts a timing.
"""
import os
import resource
import subprocess
import sys
import time

from bench.e2e import (WORKLOAD_BY_NAME, WRK_CONNS, Bench, Failed, _fmt, _pct, _read,
                       make_row, median, offloads, parse_pid_stat, pick_http_object,
                       write_report, lab_argparser, lab_meta, lab_runs, cpu_per_unit)
from tools.lab import Lab, LabError, unique_name

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
WORKER_COUNTS = (1, 2)
WORKLOADS = [WORKLOAD_BY_NAME[n] for n in ("iperf-up-P4", "iperf-down-P4", "wrk-keepalive",
                                           "wrk-close")]
SERVER_PROCS = ("nginx", "iperf3")
CPU_KEYS = ("lbd_pct", "client_pct", "nginx_pct", "iperf3_server_pct", "machine_busy_pct")


def _proc_cpu(pid):
    """utime + stime of pid in jiffies, or None when it is gone."""
    try:
        return parse_pid_stat(_read("/proc/%d/stat" % pid))
    except (OSError, IndexError, ValueError):
        return None


def _comm(path):
    try:
        return _read(path).strip()
    except OSError:
        return None


class WorkersBench(Bench):
    """bench/e2e.py's Bench on the nat path of one lab, with the load generators' CPU."""

    def __init__(self, lab, dur, http_object):
        super().__init__(lab, None, dur, http_object)
        self.lbd_pid = lab.topology["lb"]["pid"]
        self._gen = None

    def client(self, path):
        return "c1"

    def server_pids(self):
        """{pid: comm} of the nginx and iperf3 processes in the lab's backend namespaces."""
        out = {}
        for b in self.lab.topology["backends"]:
            r = subprocess.run(["ip", "netns", "pids", self.lab.ns(b)], capture_output=True,
                               text=True, timeout=10)
            for pid in (int(x) for x in r.stdout.split() if x.isdigit()):
                comm = _comm("/proc/%d/comm" % pid)
                if comm in SERVER_PROCS:
                    out[pid] = comm
        return out

    def lbd_threads(self):
        """{thread name: jiffies} of lbd's threads (the main thread is "main")."""
        out = {}
        base = "/proc/%d/task" % self.lbd_pid
        try:
            tids = os.listdir(base)
        except OSError:
            return out
        for tid in tids:
            comm = _comm("%s/%s/comm" % (base, tid))
            j = _proc_cpu_path("%s/%s/stat" % (base, tid))
            if comm is None or j is None:
                continue
            name = comm if comm.startswith("lbd-w") else (
                "main" if tid == str(self.lbd_pid) else "other")
            out[name] = out.get(name, 0) + j
        return out

    def measure(self, path, w):
        servers = self.server_pids()
        s0 = {pid: _proc_cpu(pid) for pid in servers}
        t0 = self.lbd_threads()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        w0 = time.monotonic()
        try:
            return super().measure(path, w)
        finally:
            wall = time.monotonic() - w0
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            s1 = {pid: _proc_cpu(pid) for pid in servers}
            t1 = self.lbd_threads()
            tck = os.sysconf("SC_CLK_TCK")
            per = dict.fromkeys(SERVER_PROCS, 0.0)
            for pid, comm in servers.items():
                if s0[pid] is not None and s1[pid] is not None:
                    per[comm] += (s1[pid] - s0[pid]) / tck
            client_s = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            threads = {k: (t1[k] - t0.get(k, 0)) / tck for k in t1}
            self._gen = {"wall_s": wall, "client_s": client_s, "nginx_s": per["nginx"],
                         "iperf3_server_s": per["iperf3"], "lbd_threads_s": threads}

    def worker_frames(self):
        """Frames each lbd worker has moved so far ([] with one worker)."""
        st = self.lbctl("stats")
        return [v["frames"] for _, v in sorted(st["loop"].get("workers", {}).items())]

    def cell(self, path, w):
        self._gen = None
        f0 = self.worker_frames()
        run = super().cell(path, w)
        f1 = self.worker_frames()
        run["worker_frames"] = [b - a for a, b in zip(f0, f1)]
        g = self._gen or {}
        wall = g.get("wall_s") or 0
        for k in ("client", "nginx", "iperf3_server"):
            s = g.get(k + "_s")
            run[k + "_s"] = s
            run[k + "_pct"] = 100.0 * s / wall if s is not None and wall > 0 else None
        run["lbd_threads_pct"] = {k: 100.0 * v / wall for k, v in
                                  (g.get("lbd_threads_s") or {}).items()} if wall > 0 else {}
        return run


def _proc_cpu_path(path):
    try:
        return parse_pid_stat(_read(path))
    except (OSError, IndexError, ValueError):
        return None


def render(rows, meta):
    g = {(r["workload"], r["workers"]): r for r in rows}
    L = ["# nat with 1 vs 2 data-plane workers (one run, two labs side by side)", "",
         "%s; %s; %s CPUs; Linux %s; Python %s; fast path %s; lab io %s; %d run%s per cell, "
         "medians shown (every run in workers.json)%s." % (
             meta["date"], meta["cpu_model"], meta["ncpu"], meta["kernel"], meta["python"],
             meta.get("impl", "?"), meta["io"], meta["runs"], "" if meta["runs"] == 1 else "s",
             "; QUICK (short durations)" if meta["quick"] else ""), "",
         "`python3 -m bench.workers_lab%s`" % meta["argv"], "",
         "## Rates (median; ratio > 1 = two workers faster)", "",
         "| workload | unit | workers=1 | workers=2 | 2/1 | runs (1) | runs (2) |",
         "|---|---|---:|---:|---:|---|---|"]
    for w in WORKLOADS:
        a, b = g.get((w.name, 1)), g.get((w.name, 2))
        if not a and not b:
            continue
        ma, mb = a and a["median"], b and b["median"]
        L.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            w.name, w.unit, _fmt(ma, w.unit), _fmt(mb, w.unit),
            "%.2f×" % (mb / ma) if ma and mb else "-",
            ", ".join(_fmt(v, w.unit) for v in a["run_values"]) if a else "-",
            ", ".join(_fmt(v, w.unit) for v in b["run_values"]) if b else "-"))
    L += ["", "## CPU (median, % of one CPU over the measurement)", "",
          "lbd = the whole lbd process (its threads: main / lbd-w0 / lbd-w1 below); client = "
          "the load generator on c1 (wrk or the iperf3 client); nginx and iperf3-server = all "
          "such processes on b1..b3; machine = the whole 2-CPU host busy (softirqs, router, "
          "everything).", "",
          "| workload | workers | lbd | lbd threads | client | nginx | iperf3 server | machine |",
          "|---|---:|---:|---|---:|---:|---:|---:|"]
    for w in WORKLOADS:
        for n in WORKER_COUNTS:
            r = g.get((w.name, n))
            if not r:
                continue
            c = r["cpu_all"]
            th = r.get("threads") or {}
            L.append("| %s | %d | %s | %s | %s | %s | %s | %s |" % (
                w.name, n, _pct(c.get("lbd_pct")),
                " / ".join("%s %s" % (k, _pct(v)) for k, v in sorted(th.items())
                           if k != "other" or (v or 0) >= 0.5) or "-",
                _pct(c.get("client_pct")), _pct(c.get("nginx_pct")),
                _pct(c.get("iperf3_server_pct")), _pct(c.get("machine_busy_pct"))))
    splits = []
    for w in WORKLOADS:
        r = g.get((w.name, 2))
        if r:
            splits.append("%s: %s" % (w.name, ", ".join(
                "%d:%d" % tuple(round(100.0 * x / max(1, sum(f))) for x in f)
                if len(f) == 2 else "-" for f in (x.get("worker_frames") or [] for x in r["runs"]))))
    if splits:
        L += ["", "Share of frames per worker (w0:w1, %%, per run) with workers=2: %s. Steering "
              "is per flow (client ip and port): iperf3 -P4 has 4 bulk flows, which all land "
              "on one of the 2 workers 1 time in 8 (then the other worker idles); wrk's 16 "
              "connections, and new connections, split closer to even." % "; ".join(splits)]
    L += ["", "## Per unit (median)", "",
          "lbd CPU per request (µs) for wrk, per GB for iperf3; machine likewise.", "",
          "| workload | workers | lbd per unit | machine per unit |", "|---|---:|---:|---:|"]
    for w in WORKLOADS:
        for n in WORKER_COUNTS:
            r = g.get((w.name, n))
            if not r:
                continue
            unit = " µs/req" if w.kind == "wrk" else " s/GB"
            key = "machine_us_per_req" if w.kind == "wrk" else "machine_s_per_gb"
            L.append("| %s | %d | %s | %s |" % (w.name, n, _fmt(r["lbd_per_unit"]) + unit,
                                               _fmt(r["cpu"].get(key)) + unit))
    L += ["", "## Notes", ""] + ["- " + x for x in meta["notes"]]
    errs = [(r["workload"], r["workers"], e) for r in rows for e in r.get("errors", [])]
    if errs:
        L += ["", "## Failed runs", ""] + ["- %s workers=%d: %s" % e for e in errs]
    return "\n".join(L) + "\n"


def lbd_per_unit(kind, runs):
    return cpu_per_unit("lbd_s", kind, runs)


def main(argv=None):
    a = lab_argparser("bench.workers_lab", __doc__.split("\n")[0], RESULTS).parse_args(argv)
    runs, dur = lab_runs(a)
    t_start = time.monotonic()
    meta = lab_meta(a, runs, dur, argv, io="tap + vnet offload")
    labs = {n: Lab(unique_name(), backends=3, clients=1, io="tap", offload=True, workers=n)
            for n in WORKER_COUNTS}
    print("workers_lab: workers %s x %d workloads x %d run(s); labs %s" % (
        "/".join(map(str, WORKER_COUNTS)), len(WORKLOADS), runs,
        ", ".join("%s (workers=%d)" % (lab.name, n) for n, lab in labs.items())), flush=True)
    rows = []
    try:
        with labs[1], labs[2]:
            benches = {}
            for n, lab in labs.items():
                topo = lab.topology
                meta["impl"] = (topo["lb"].get("status") or {}).get("impl", "?")
                http_object, note = pick_http_object(lab)
                b = WorkersBench(lab, dur, http_object)
                b.add_vips("nat")
                b.check("nat", True, topo["blob"]["sha256"])
                st = b.lbctl("status")
                if st.get("workers", 1) != n:
                    raise Failed("lab %s: lbd says workers=%s, want %d" % (
                        lab.name, st.get("workers", 1), n))
                benches[n] = b
                meta["http_object"] = http_object
                print("  workers=%d: lab %s ready (lbd pid %s, %s, /blob sha256 ok)" % (
                    n, lab.name, topo["lb"]["pid"], http_object), flush=True)
            meta["offloads"] = {k: v["features"] for k, v in offloads(labs[2]).items()}
            results = {}
            total, k = len(WORKLOADS) * runs * len(WORKER_COUNTS), 0
            for w in WORKLOADS:
                for run in range(1, runs + 1):
                    for n in WORKER_COUNTS:
                        k += 1
                        r = benches[n].cell("nat", w)
                        results.setdefault((w.name, n), []).append(r)
                        shown = ("FAILED: %s" % r["error"][:120] if r["value"] is None
                                 else "%s %s  (lbd %s, client %s, nginx %s, iperf3-s %s, "
                                 "machine %s)" % (_fmt(r["value"], w.unit), w.unit,
                                                  _pct(r.get("lbd_pct")),
                                                  _pct(r.get("client_pct")),
                                                  _pct(r.get("nginx_pct")),
                                                  _pct(r.get("iperf3_server_pct")),
                                                  _pct(r.get("machine_busy_pct"))))
                        print("[%d/%d] workers=%d %-14s run %d/%d ... %s" % (
                            k, total, n, w.name, run, runs, shown), flush=True)
            env = {"date": meta["date"], "io": meta["io"], "quick": a.quick,
                   "cpu_model": meta["cpu_model"], "ncpu": meta["ncpu"],
                   "http_object": meta["http_object"]}
            for w in WORKLOADS:
                for n in WORKER_COUNTS:
                    rs = results[(w.name, n)]
                    row = make_row("nat", w, rs, env)
                    row["workers"] = n
                    row["lab"] = labs[n].name
                    row["cpu_all"] = {key: median([r.get(key) for r in rs]) for key in CPU_KEYS}
                    names = sorted({t for r in rs for t in r.get("lbd_threads_pct", {})})
                    row["threads"] = {t: median([r.get("lbd_threads_pct", {}).get(t)
                                                 for r in rs]) for t in names}
                    row["lbd_per_unit"] = lbd_per_unit(w.kind, rs)
                    rows.append(row)
            final = {n: benches[n].lbctl("stats") for n in WORKER_COUNTS}
            meta["lbd_counters_at_end"] = {n: {k: v for k, v in s["counters"].items()
                                               if k.startswith("drop_")}
                                           for n, s in final.items()}
            meta["workers_frames_at_end"] = [w["frames"] for w in
                                             final[2]["loop"].get("workers", {}).values()]
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    except (LabError, Failed) as e:
        print("workers_lab failed: %s" % e, file=sys.stderr)
        return 1
    meta["notes"] = [
        "Both labs run at once on the same 2 CPUs (the idle one costs little); runs "
        "interleave, so a noisy minute of this shared host (other engineers' labs and "
        "benchmarks run here too) hits both sides alike.",
        "wrk: `wrk -t1 -c%d -d%ds`, object `%s`; iperf3 `-P4 -t %d -O %d` (bench/e2e.py's "
        "Bench.measure), to the nat VIP 198.19.100.1 (:80 rr, :5201 sh) from c1." % (
            WRK_CONNS, dur.wrk, meta.get("http_object"), dur.iperf, dur.iperf_omit),
        "The load generators share the 2 CPUs with lbd: whatever CPU they take is not "
        "available to lbd's second worker. Read the client / nginx / iperf3 columns "
        "before reading the ratio.",
        "Drop counters of lbd at the end: workers=1 %s; workers=2 %s; frames per worker "
        "(workers=2) %s." % (
            {k: v for k, v in meta["lbd_counters_at_end"][1].items() if v} or "none",
            {k: v for k, v in meta["lbd_counters_at_end"][2].items() if v} or "none",
            meta["workers_frames_at_end"]),
    ]
    return write_report(a.out, "workers", meta, rows, render(rows, meta), t_start)


if __name__ == "__main__":
    sys.exit(main())
