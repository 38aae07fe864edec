"""dsr against the direct path and nat, in one lab and one run (issue 3's benchmark).

    python3 -m bench.dsr_lab [--runs 3] [--io tap|afpacket]

For each path (direct: client -> backend's real address via the router; dsr and nat through
lbd, one backend behind the VIP so every run measures the same server) and each workload
(64 MiB GET /blob with curl; iperf3 -R, server -> client, 3 s), medians of --runs runs of:
throughput, and what lbd handled per MB delivered (frames and bytes in and out, from
`lbctl stats` deltas). For dsr the frames lbd sees are the client's ACKs (plus the request):
"data segments per LB frame" says how many 1448-byte segments of response one forwarded ACK
stands for. Writes bench/results/dsr_lab.json and bench/results/dsr_lab.md.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from tools.lab import Lab, unique_name

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
B1 = "198.19.0.11"
VIPS = {"dsr": "198.19.100.2", "nat": "198.19.100.1"}
MSS = 1448


def lbctl(lab, *args):
    r = subprocess.run([sys.executable, "-m", "lb.cli", "--socket", lab.topology["control_socket"],
                        "--json", *args], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(r.stdout)


def io(lab):
    return lbctl(lab, "stats")["io"]


def blob(lab, host):
    t0 = time.monotonic()
    r = lab.exec("c1", ["curl", "-sf", "--max-time", "60", "-o", "/dev/null", "-w",
                        "%{size_download}", "http://%s/blob" % host], timeout=90)
    secs = time.monotonic() - t0
    return int(r.stdout), secs


def iperf_reverse(lab, host, seconds=3):
    r = lab.exec("c1", ["iperf3", "-c", host, "-R", "-t", str(seconds), "-J"], timeout=seconds + 30,
                 check=False)
    d = json.loads(r.stdout)
    if "error" in d:
        raise RuntimeError("iperf3 %s: %s" % (host, d["error"]))
    return d["end"]["sum_received"]["bytes"], d["end"]["sum_received"]["seconds"]


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench.dsr_lab")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--io", choices=["tap", "afpacket"], default="tap")
    p.add_argument("--no-offload", action="store_true", help="the slow path: no vnet headers")
    a = p.parse_args(argv)
    offload = not a.no_offload
    rows = []
    with Lab(unique_name(), io=a.io, offload=offload) as lab:     # up on entry, down on exit
        for mode, vip in VIPS.items():
            for port, sched in ((80, "maglev"), (5201, "sh")):
                lbctl(lab, "vip", "add", "%s:%d" % (vip, port), "--mode", mode, "--scheduler", sched)
                lbctl(lab, "backend", "add", "%s:%d" % (vip, port), B1)
        plan = [(path, wl) for wl in ("blob", "iperf3 -R") for path in ("direct", "dsr", "nat")]
        total = len(plan) * a.runs
        k = 0
        for path, wl in plan:
            host = B1 if path == "direct" else VIPS[path]
            vals, per_mb = [], []
            for run in range(a.runs):
                k += 1
                before = io(lab)
                nbytes, secs = blob(lab, host) if wl == "blob" else iperf_reverse(lab, host)
                after = io(lab)
                gbps = nbytes * 8 / secs / 1e9
                vals.append(gbps)
                mb = nbytes / 1e6
                d = {key: after[key] - before[key] for key in ("rx_frames", "rx_bytes", "tx_frames", "tx_bytes")}
                per_mb.append({key: v / mb for key, v in d.items()})
                print("[%d/%d] %-6s %-10s run %d/%d  %.2f Gbit/s  lb rx %.1f frames/MB"
                      % (k, total, path, wl, run + 1, a.runs, gbps, d["rx_frames"] / mb), flush=True)
            med = {key: statistics.median(x[key] for x in per_mb) for key in per_mb[0]}
            rows.append({"path": path, "workload": wl, "gbps_runs": vals,
                         "gbps": statistics.median(vals), "lb_per_mb": med,
                         "segments_per_lb_frame": (1e6 / MSS / med["rx_frames"])
                         if path == "dsr" and med["rx_frames"] else None})
    os.makedirs(RESULTS, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": "%s, %d cores" % (platform.machine(), os.cpu_count()),
            "io": a.io + (" + vnet offload" if offload else ""), "runs": a.runs}
    with open(os.path.join(RESULTS, "dsr_lab.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    direct = {r["workload"]: r["gbps"] for r in rows if r["path"] == "direct"}
    lines = ["# dsr vs the direct path and nat (one backend, one lab, one run)", "",
             "%s, %s, lbd I/O %s, medians of %d runs. `python3 -m bench.dsr_lab`" % (
                 meta["date"], meta["machine"], meta["io"], a.runs), "",
             "| workload | path | Gbit/s (runs) | × direct | LB frames in/out per MB | LB bytes in/out per MB | response segments per LB frame |",
             "|---|---|---|---:|---|---|---:|"]
    for r in rows:
        m = r["lb_per_mb"]
        lines.append("| %s | %s | %.2f (%s) | %.2f | %.1f / %.1f | %.0f / %.0f | %s |" % (
            r["workload"], r["path"], r["gbps"], ", ".join("%.2f" % v for v in r["gbps_runs"]),
            r["gbps"] / direct[r["workload"]], m["rx_frames"], m["tx_frames"], m["rx_bytes"],
            m["tx_bytes"], "%.1f" % r["segments_per_lb_frame"] if r["segments_per_lb_frame"] else "-"))
    with open(os.path.join(RESULTS, "dsr_lab.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
