"""nat through lbd's three I/O configurations: TAP with vnet headers, AF_PACKET with vnet
headers (PACKET_VNET_HDR), AF_PACKET without (offloads off on the veth).

    python3 -m bench.afpacket_lab [--runs 3] [--quick] [--out bench/results]

```
 [c1 198.18.0.10] -- rt -- brs -+- lbtap (IFF_VNET_HDR)          -- lbd   lab "tap+offload"
                                +- lbdp == dp0 (PACKET_VNET_HDR) -- lbd   lab "afpacket+offload"
                                +- lbdp == dp0 (offloads off)    -- lbd   lab "afpacket"
   nat VIP 198.19.100.1 (:80 rr, :5201 sh) over b1, b2, b3 in each lab
```

One lab per configuration, all three up at once; workloads (bench/e2e.py's, measured by its
Bench.cell): iperf3 -P4 upload (Gbit/s) and GETs of the 64 MiB /blob (Gbit/s; sha256 checked
once per lab before measuring). The runs interleave the configurations (run 1 of each, then
run 2 ...), so that a slow minute of the shared machine does not land on one of them. Per
cell: the rate, lbd's CPU (its pid's utime+stime: % of the wall time and seconds per GB
moved), the machine's busy CPU, and what lbd read (frames per MB, bytes per frame read:
> 1514 means superframes). Medians over the runs go to bench/results/afpacket.json and
afpacket.md, with lbd's I/O counters at the end of each lab (rx_gso, rx_needs_csum).

Invariants: lab names are unique and every lab is downed on the way out, also on failure;
every load has a fixed duration or count and every command a timeout (Bench's own); no
timing is asserted anywhere.
"""
import contextlib
import os
import subprocess
import sys
import time

from bench.e2e import (WORKLOAD_BY_NAME, Bench, Failed, _fmt, _pct, make_row, median,
                       offloads, write_report, lab_argparser, lab_meta, lab_runs)
from tools.lab import Lab, LabError, unique_name

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CONFIGS = (("tap+offload", "tap", True), ("afpacket+offload", "afpacket", True),
           ("afpacket", "afpacket", False))
WORKLOADS = (WORKLOAD_BY_NAME["iperf-up-P4"], WORKLOAD_BY_NAME["blob-64MiB"])


class NatBench(Bench):
    """bench/e2e.py's Bench with one client: only the nat path is measured here."""

    def client(self, path):
        return "c1"


def derived(run):
    """lbd CPU seconds per GB served and bytes per frame lbd read, of one run (None if
    unknown)."""
    io = run.get("lb_io") or {}
    gb = (run.get("served_bytes") or 0) / 1e9
    lbd = run.get("lbd_s")
    return {"lbd_s_per_gb": lbd / gb if lbd is not None and gb else None,
            "rx_bytes_per_frame": (io["rx_bytes"] / io["rx_frames"]
                                   if io.get("rx_frames") and io.get("rx_bytes") is not None
                                   else None)}


def render(rows, meta):
    """The report as markdown: one row per workload x configuration."""
    L = ["# nat through TAP and AF_PACKET, with and without vnet headers", "",
         "%s; %s; %s CPUs; Linux %s; fast path %s; %d run%s per cell, medians (every run in "
         "afpacket.json); iperf3 -t %s -O %s, %s GET%s of /blob per run. "
         "`python3 -m bench.afpacket_lab%s`" % (
             meta.get("date", "?"), meta.get("cpu_model", "?"), meta.get("ncpu", "?"),
             meta.get("kernel", "?"), meta.get("impl", "?"), meta.get("runs", 0),
             "" if meta.get("runs") == 1 else "s", meta["durations"]["iperf"],
             meta["durations"]["iperf_omit"], meta["durations"]["blob_gets"],
             "" if meta["durations"]["blob_gets"] == 1 else "s", meta.get("argv", "")), "",
         "| workload | lbd I/O | Gbit/s median (runs) | lbd CPU | lbd CPU s/GB | machine busy "
         "| lbd frames in+out per MB | bytes per frame read |",
         "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        runs = ", ".join(_fmt(v) for v in r["run_values"])
        L.append("| %s | %s | %s (%s) | %s | %s | %s | %s | %s |" % (
            r["workload"], r["path"], _fmt(r["median"]), runs, _pct(r["cpu"].get("lbd_pct")),
            _fmt(r["lbd_s_per_gb"]), _pct(r["cpu"].get("machine_busy_pct")),
            _fmt(r["cpu"].get("lb_frames_per_mb")), _fmt(r["rx_bytes_per_frame"])))
    if meta.get("io_counters"):
        L += ["", "lbd's I/O counters at the end of each lab (all runs and checks):", ""]
        for cfg, c in meta["io_counters"].items():
            L.append("- %s: %s" % (cfg, ", ".join("%s %s" % kv for kv in sorted(c.items()))))
    if meta.get("failed"):
        L += ["", "Not measured: " + "; ".join("%s: %s" % kv for kv in meta["failed"].items())]
    L += ["", "The host is shared (2 CPUs for client, router, balancer and three backends): "
          "compare configurations within one run, not across runs. lbd CPU is its process's "
          "user+system time (/proc/<pid>/stat). With tick accounting (no "
          "CONFIG_IRQ_TIME_ACCOUNTING) that includes the softirq work its write()s trigger "
          "on the way out (veth, bridge, the receiver's stack), so it is more than lbd's "
          "own processing."]
    return "\n".join(L) + "\n"


def main(argv=None):
    a = lab_argparser("bench.afpacket_lab", __doc__.split("\n")[0], RESULTS).parse_args(argv)
    runs, dur = lab_runs(a)
    t_start = time.monotonic()
    meta = lab_meta(a, runs, dur, argv, failed={}, io_counters={}, offloads={},
                    io_info={})
    rows = []
    try:
        with contextlib.ExitStack() as stack:
            benches = {}
            for cfg, io, offload in CONFIGS:
                lab = Lab(unique_name(), backends=3, clients=1, io=io, offload=offload)
                stack.callback(lab.down)
                lab.up()
                topo = lab.topology
                meta["impl"] = (topo["lb"].get("status") or {}).get("impl", "?")
                meta["io_info"][cfg] = (topo["lb"].get("status") or {}).get("io")
                meta["offloads"][cfg] = {k: v["features"] for k, v in offloads(lab).items()
                                         if k in ("sw/lbtap", "lb/dp0", "sw/lbdp")}
                b = NatBench(lab, None, dur, "/id")
                try:
                    b.add_vips("nat")
                    b.check("nat", True, topo["blob"]["sha256"])
                except (Failed, subprocess.SubprocessError, OSError) as e:
                    meta["failed"][cfg] = str(e).strip().splitlines()[0][:300]
                    print("  %-17s SKIPPED: %s" % (cfg, meta["failed"][cfg]), flush=True)
                    continue
                benches[cfg] = b
                print("  %-17s lab %s up, nat ready, /blob sha256 ok" % (cfg, lab.name),
                      flush=True)
            results = {}
            total, k = len(benches) * len(WORKLOADS) * runs, 0
            for w in WORKLOADS:
                for run in range(1, runs + 1):
                    for cfg, b in benches.items():
                        k += 1
                        r = b.cell("nat", w)
                        r.update(derived(r))
                        results.setdefault((cfg, w.name), []).append(r)
                        shown = ("FAILED: %s" % r["error"][:120] if r["value"] is None else
                                 "%s %s  (lbd %s, machine %s, %s bytes/frame read)" % (
                                     _fmt(r["value"]), w.unit, _pct(r.get("lbd_pct")),
                                     _pct(r.get("machine_busy_pct")),
                                     _fmt(r.get("rx_bytes_per_frame"))))
                        print("[%d/%d] %-17s %-12s run %d/%d ... %s" % (
                            k, total, cfg, w.name, run, runs, shown), flush=True)
            env = {"date": meta["date"], "quick": a.quick, "cpu_model": meta["cpu_model"],
                   "ncpu": meta["ncpu"]}
            for w in WORKLOADS:
                for cfg, b in benches.items():
                    rs = results[(cfg, w.name)]
                    row = make_row(cfg, w, rs, env)
                    row["lbd_s_per_gb"] = median([r.get("lbd_s_per_gb") for r in rs])
                    row["rx_bytes_per_frame"] = median([r.get("rx_bytes_per_frame") for r in rs])
                    rows.append(row)
            for cfg, b in benches.items():
                meta["io_counters"][cfg] = b.lbctl("stats")["io"]
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    except (LabError, Failed) as e:
        print("afpacket_lab failed: %s" % e, file=sys.stderr)
        return 1
    return write_report(a.out, "afpacket", meta, rows, render(rows, meta), t_start)


if __name__ == "__main__":
    sys.exit(main())
