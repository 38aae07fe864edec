"""End to end, every threeway mode beside the anchors, in one lab and one run.

    python3 -m bench.e2e [--runs 3] [--quick] [--io tap|afpacket] [--only PATHS]
                         [--workloads NAMES] [--name twe2e] [--out bench/results]

```
                                  +-- direct:  b1's real address 198.19.0.11, routed by rt
 [c1 198.18.0.10] -- [rt] --------+-- kernel:  198.19.101.1, nft DNAT on rt (tools/anchors.py)
  wrk, iperf3, curl               +-- haproxy: 198.19.0.3 (mg0 in P-lb), mode tcp, nbthread 1
                                  +-- nat:     198.19.100.1 \
                                  +-- dsr:     198.19.100.2  } lbd, VIPs added with lbctl
                                  +-- splice:  198.19.100.3 /  (splice only if lbctl takes it)
                                  |    every balanced path above spreads over b1, b2, b3
                                  +-- remote:  r1's real address 198.19.200.11, routed by rt
                                  +-- tunnel:  198.19.100.7, lbd -> VXLAN -> r1, r2, r3 (behind
                                       rt, not on the LB's segment; they answer directly)
```

Workloads (durations fixed; --quick shortens them and makes one run):
  iperf-{up,down}-P{1,4}   iperf3 -P1/-P4, upload and download (-R)          Gbit/s
  wrk-keepalive            wrk -t1 -c16, GET of a 1 KiB object (/1k, else /id) req/s
  wrk-close                the same with "Connection: close" (one connection per request)
  blob-64MiB               curl GET of the 64 MiB /blob; sha256 checked once per path, Gbit/s

Per cell (path x workload) and run: the rate, the CPU seconds of lbd and haproxy
(/proc/<pid>/stat utime+stime), the whole machine's busy CPU (/proc/stat), and for threeway
the frames and bytes lbd's I/O moved (lbctl stats io deltas). Medians over the runs go to
bench/results/e2e.json (a list of rows), e2e.md (tables) and e2e-*.png.

Invariants: the runs of one workload interleave the paths (run 1 of every path, then run 2 ...)
so that a slow minute of the shared machine does not land on one path; the kernel anchor's
NAT table exists only while its own cells run (it would make rt track everything); every
command has a timeout and every load is bounded by a fixed duration or count; anchors are
undone in `finally` and the lab is downed on the way out. Benchmarks never assert a timing.
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections import namedtuple

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BACKENDS = ["198.19.0.11", "198.19.0.12", "198.19.0.13"]
REMOTE = ["198.19.200.11", "198.19.200.12", "198.19.200.13"]    # lab remote_backends=3
PATHS = ("direct", "kernel", "haproxy", "nat", "dsr", "splice", "remote", "tunnel", "hop")
THREEWAY = ("nat", "dsr", "splice", "tunnel", "hop")
ANCHORS = ("direct", "kernel", "haproxy", "remote")
VIPS = {"nat": "198.19.100.1", "dsr": "198.19.100.2", "splice": "198.19.100.3",
        "tunnel": "198.19.100.7", "hop": "198.19.100.9"}
BACKENDS_OF = {"tunnel": REMOTE}     # the others balance over BACKENDS
# scheduler for :80 and for iperf3's :5201 (control and data connection must meet one server)
SCHEDULERS = {"nat": ("rr", "sh"), "dsr": ("maglev", "sh"), "splice": ("rr", "sh"),
              "tunnel": ("maglev", "sh"), "hop": ("rr", "sh")}
# The ratio table: the modes on the LB's segment against the anchors there; tunnel, whose
# backends are elsewhere, against the direct path to one of them and beside dsr.
RATIOS = tuple("%s/%s" % (m, a) for a in ("haproxy", "kernel", "direct")
               for m in ("nat", "dsr", "splice")) + ("tunnel/remote", "tunnel/dsr",
                                                      "hop/direct", "hop/splice", "hop/dsr")
# One client namespace (and address) per path. With one client for all, wrk-close collapsed
# to a few hundred requests/s with 1 s SYN retransmissions on every path but haproxy: a
# backend keeps TIME_WAIT for client:port -> real:80 of one path (direct, say), the client
# reuses that port toward another destination (a VIP) that the NAT maps onto the same
# 4-tuple, and its TCP timestamps, offset per destination, fail PAWS on the backend.
# haproxy is immune (it connects from its own address and ports).
CLIENT_OF = {p: "c%d" % i for i, p in enumerate(PATHS, 1)}
HTTP_PORT, IPERF_PORT = 80, 5201
WRK_CONNS = 16
OBJ_1K = "/1k"

Workload = namedtuple("Workload", "name kind unit parallel reverse close")
WORKLOADS = (
    Workload("iperf-up-P1", "iperf", "Gbit/s", 1, False, False),
    Workload("iperf-up-P4", "iperf", "Gbit/s", 4, False, False),
    Workload("iperf-down-P1", "iperf", "Gbit/s", 1, True, False),
    Workload("iperf-down-P4", "iperf", "Gbit/s", 4, True, False),
    Workload("wrk-keepalive", "wrk", "req/s", 0, False, False),
    Workload("wrk-close", "wrk", "req/s", 0, False, True),
    Workload("blob-64MiB", "blob", "Gbit/s", 0, False, False),
)
WORKLOAD_BY_NAME = {w.name: w for w in WORKLOADS}

# seconds: iperf3 -t, iperf3 -O (omitted warm-up), wrk -d, blob GETs per run
Durations = namedtuple("Durations", "iperf iperf_omit wrk blob_gets")
FULL = Durations(4, 1, 5, 8)
QUICK = Durations(3, 0, 3, 1)
OVERHEAD_S = 0.4          # per measurement: process start, snapshots (for the estimate only)
BLOB_GBPS_GUESS = 2.0     # for the estimate only

ETHTOOL_FEATURES = (("rx-checksumming", "rx-csum"), ("tx-checksumming", "tx-csum"),
                    ("scatter-gather", "sg"), ("tcp-segmentation-offload", "tso"),
                    ("generic-segmentation-offload", "gso"),
                    ("generic-receive-offload", "gro"))


# --- pure parts (tests/unit/test_e2e_report.py) -----------------------------------------------

_WRK_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def parse_wrk(text):
    """wrk's summary -> {requests, seconds, rps, bytes, errors, non2xx}. wrk prints sizes in
    binary units ("4.70MB" = 4.70 * 2**20). Raises ValueError when the summary is missing."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),\s+([\d.]+)([KMGT]?B) read", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m or not rps:
        raise ValueError("no wrk summary in output: %r" % text[-300:])
    secs = float(m.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if e:
        errors = dict(zip(("connect", "read", "write", "timeout"), map(int, e.groups())))
    n = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"requests": int(m.group(1)), "seconds": secs, "rps": float(rps.group(1)),
            "bytes": int(float(m.group(4)) * _WRK_UNITS[m.group(5)]), "errors": errors,
            "non2xx": int(n.group(1)) if n else 0}


def parse_iperf3(text):
    """iperf3 -J output -> {gbps, bytes, seconds, retransmits}; ValueError on an error run."""
    try:
        d = json.loads(text)
    except ValueError:
        raise ValueError("iperf3 output is not JSON: %r" % text[-300:]) from None
    if d.get("error"):
        raise ValueError("iperf3: %s" % d["error"])
    try:
        r = d["end"]["sum_received"]
        sent = d["end"].get("sum_sent", {})
        return {"gbps": r["bits_per_second"] / 1e9, "bytes": int(r["bytes"]),
                "seconds": float(r["seconds"]), "retransmits": sent.get("retransmits")}
    except (KeyError, TypeError):
        raise ValueError("iperf3 JSON without end.sum_received") from None


def parse_curl(text):
    """The -w line '%{http_code} %{size_download} %{time_total}' -> {code, bytes, seconds}."""
    f = text.split()
    if len(f) < 3:
        raise ValueError("curl -w output: %r" % text[-200:])
    return {"code": int(f[0]), "bytes": int(float(f[1])), "seconds": float(f[2])}


def parse_proc_stat(text):
    """/proc/stat -> (busy, total, steal) jiffies over all CPUs. Idle and iowait count as
    idle; steal (time the hypervisor ran something else while this VM wanted to run) is
    neither busy nor idle here: it is what a shared host takes, shown on its own."""
    for line in text.splitlines():
        f = line.split()
        if f and f[0] == "cpu":
            v = [int(x) for x in f[1:9]]          # user nice system idle iowait irq softirq steal
            total = sum(v)
            return total - v[3] - v[4] - v[7], total, v[7]
    raise ValueError("no cpu line in /proc/stat")


def parse_pid_stat(text):
    """/proc/<pid>/stat -> utime + stime in jiffies (the comm field may hold spaces)."""
    rest = text.rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])          # fields 14 and 15; rest starts at field 3


def parse_ethtool_k(text):
    """ethtool -k output -> {short name: "on" | "off" | "off [fixed]" ...} for the features
    in ETHTOOL_FEATURES (top-level lines only)."""
    names = dict(ETHTOOL_FEATURES)
    out = {}
    for line in text.splitlines():
        if line.startswith(("\t", " ")) or ":" not in line:
            continue
        k, v = line.split(":", 1)
        if k.strip() in names:
            out[names[k.strip()]] = v.strip()
    return out


CLIENT_TCP = ("Tcp.ActiveOpens", "Tcp.AttemptFails", "Tcp.RetransSegs", "Tcp.OutRsts",
              "TcpExt.TCPSynRetrans", "TcpExt.TCPTimeouts")


def parse_snmp(text):
    """/proc/net/snmp and /proc/net/netstat (header line, value line per group) ->
    {"Group.Name": int}."""
    out = {}
    lines = text.splitlines()
    for head, vals in zip(lines, lines[1:]):
        h, v = head.split(), vals.split()
        if h and v and h[0] == v[0] and h[0].endswith(":") and not h[1].lstrip("-").isdigit():
            for k, x in zip(h[1:], v[1:]):
                try:
                    out[h[0][:-1] + "." + k] = int(x)
                except ValueError:
                    pass
    return out


def median(values):
    """Median of the numbers in values that are not None; None when there are none."""
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def per_run_metrics(kind, value, served_bytes, requests, wall, cpu, lb_io):
    """Derived figures of one run. cpu: {machine_busy_s, machine_steal_s, lbd_s, haproxy_s}
    (None allowed); lb_io: deltas {rx_frames, tx_frames, rx_bytes, tx_bytes} or None."""
    out = {"value": value, "wall_s": wall, "served_bytes": served_bytes, "requests": requests}
    for k in ("machine_busy_s", "machine_steal_s", "lbd_s", "haproxy_s"):
        s = cpu.get(k)
        out[k] = s
        out[k[:-2] + "_pct"] = 100.0 * s / wall if s is not None and wall > 0 else None
    m = cpu.get("machine_busy_s")
    if kind == "wrk":
        out["machine_us_per_req"] = (1e6 * m / requests if m is not None and requests
                                     else None)
    else:
        out["machine_s_per_gb"] = (m / (served_bytes / 1e9) if m is not None and served_bytes
                                   else None)
    if lb_io is not None and served_bytes:
        mb = served_bytes / 1e6
        frames = lb_io.get("rx_frames", 0) + lb_io.get("tx_frames", 0)
        out["lb_frames_per_mb"] = frames / mb
        if lb_io.get("rx_bytes") is not None and lb_io.get("tx_bytes") is not None:
            out["lb_bytes_per_mb"] = (lb_io["rx_bytes"] + lb_io["tx_bytes"]) / mb
        else:
            out["lb_bytes_per_mb"] = None
        out["lb_io"] = dict(lb_io)
    return out


MEDIAN_KEYS = ("machine_busy_pct", "machine_steal_pct", "lbd_pct", "haproxy_pct",
               "machine_us_per_req", "machine_s_per_gb", "lb_frames_per_mb", "lb_bytes_per_mb",
               "retrans")


def make_row(path, workload, runs, env, notes=()):
    """One result row: a path x workload cell with its runs and medians."""
    vals = [r.get("value") for r in runs]
    row = {"path": path, "workload": workload.name, "kind": workload.kind, "unit": workload.unit,
           "run_values": vals, "median": median(vals),
           "min": min([v for v in vals if v is not None], default=None),
           "max": max([v for v in vals if v is not None], default=None),
           "cpu": {k: median([r.get(k) for r in runs]) for k in MEDIAN_KEYS
                   if any(r.get(k) is not None for r in runs)},
           "runs": list(runs), "errors": [r["error"] for r in runs if r.get("error")],
           "notes": list(notes), "env": env}
    return row


def _fmt(v, unit=None):
    if v is None:
        return "-"
    if unit == "req/s" or (unit is None and abs(v) >= 100):
        return "{:,.0f}".format(v)
    if abs(v) >= 10:
        return "%.1f" % v
    return "%.2f" % v


def _ratio(a, b):
    return "%.2f×" % (a / b) if a is not None and b else "-"


def paired_ratio(rm, ra):
    """Median over runs of (rm's run i / ra's run i), None when no run pair has both values.
    Run i of every path is measured within the same minute (the runs interleave the paths),
    so on a shared, noisy host a slow minute divides out of the pair instead of landing on
    one median only."""
    if not rm or not ra:
        return None
    rs = [a / b for a, b in zip(rm["run_values"], ra["run_values"])
          if a is not None and b]
    return statistics.median(rs) if rs else None


def _table(L, wls, heads, cell):
    """A markdown table: one row per workload, one column per head, cell(workload, head)."""
    L.append("| workload | " + " | ".join(heads) + " |")
    L.append("|---|" + "---:|" * len(heads))
    for w in wls:
        L.append("| %s | %s |" % (w.name, " | ".join(cell(w, h) for h in heads)))


def _grid(rows):
    g = {}
    for r in rows:
        g[(r["workload"], r["path"])] = r
    return g


def render_markdown(rows, meta):
    """The report as markdown: rates (medians), ratios, CPU, LB I/O per MB, settings, notes."""
    g = _grid(rows)
    paths = [p for p in PATHS if any(r["path"] == p for r in rows)]
    wls = [w for w in WORKLOADS if any(r["workload"] == w.name for r in rows)]
    tw = [p for p in paths if p in THREEWAY]
    L = []
    L.append("# threeway end to end: every mode beside the kernel and HAProxy")
    L.append("")
    L.append("%s; %s; %s CPUs; Linux %s; Python %s; fast path %s; lab io %s; %d run%s per "
             "cell, medians shown (every run in e2e.json); %s." % (
                 meta.get("date", "?"), meta.get("cpu_model", "?"), meta.get("ncpu", "?"),
                 meta.get("kernel", "?"), meta.get("python", "?"), meta.get("impl", "?"),
                 meta.get("io", "?"), meta.get("runs", 0), "" if meta.get("runs") == 1 else "s",
                 "quick (short durations)" if meta.get("quick") else "full durations"))
    d = meta.get("durations") or {}
    if d:
        L.append("")
        L.append("Durations: iperf3 -t %s (-O %s omitted), wrk -d %ss with %d connections, "
                 "%s GET%s of /blob per run. HTTP object for wrk: `%s` (%s)." % (
                     d.get("iperf"), d.get("iperf_omit"), d.get("wrk"), WRK_CONNS,
                     d.get("blob_gets"), "" if d.get("blob_gets") == 1 else "s",
                     meta.get("http_object", "?"), meta.get("http_object_note", "")))
    L.append("")
    L.append("## Rates (median)")
    L.append("")
    L.append("| workload | unit | " + " | ".join(paths) + " |")
    L.append("|---|---|" + "---:|" * len(paths))
    for w in wls:
        cells = []
        for p in paths:
            r = g.get((w.name, p))
            cells.append(_fmt(r["median"], w.unit) if r else "-")
        L.append("| %s | %s | %s |" % (w.name, w.unit, " | ".join(cells)))
    if tw and any(p in paths for p in ANCHORS):
        L.append("")
        L.append("## threeway relative to the anchors (ratio of medians, > 1 = threeway faster)")
        L.append("")
        cols = [c for c in RATIOS if all(p in paths for p in c.split("/"))]

        def by_median(w, col):
            rm, ra = (g.get((w.name, p)) for p in col.split("/"))
            return _ratio(rm and rm["median"], ra and ra["median"])

        def paired(w, col):
            pr = paired_ratio(*(g.get((w.name, p)) for p in col.split("/")))
            return "%.2f×" % pr if pr is not None else "-"

        _table(L, wls, cols, by_median)
        if meta.get("runs", 0) > 1:
            L.append("")
            L.append("## The same, paired by run (median over runs of threeway's run i / the "
                     "anchor's run i)")
            L.append("")
            L.append("Run i of every path falls in the same minute, so a disturbance of the "
                     "shared host that hits both sides of a pair divides out.")
            L.append("")
            _table(L, wls, cols, paired)
    L.append("")
    L.append("## CPU (median), percent of one CPU over the measurement")
    L.append("")
    L.append("Each cell: whole machine busy / the balancer's own process (lbd for nat, dsr, "
             "splice, tunnel; haproxy for haproxy; the kernel's NAT work shows only in the machine "
             "figure). The machine figure counts everything running in this VM: client, "
             "servers, softirqs, and any other work; not the host's steal (next table).")
    L.append("")

    def cpu(w, p):
        r = g.get((w.name, p))
        if not r:
            return "-"
        c = r["cpu"]
        proc = c.get("lbd_pct") if p in THREEWAY else (
            c.get("haproxy_pct") if p == "haproxy" else None)
        return "%s / %s" % (_pct(c.get("machine_busy_pct")), _pct(proc))

    _table(L, wls, paths, cpu)
    if any(r["cpu"].get("machine_steal_pct") is not None for r in rows):
        L.append("")
        L.append("## Host steal, percent of one CPU: median / worst run")
        L.append("")
        L.append("Time the hypervisor gave to other guests while this VM wanted to run "
                 "(/proc/stat steal; not in the busy figures above). A run with much of it "
                 "was measured on a slower machine than its neighbours.")
        L.append("")

        def steal(w, p):
            r = g.get((w.name, p))
            st = [x.get("machine_steal_pct") for x in r["runs"]] if r else []
            st = [x for x in st if x is not None]
            return "%s / %s" % (_pct(median(st)), _pct(max(st))) if st else "-"

        _table(L, wls, paths, steal)
    L.append("")
    L.append("## Machine CPU per unit served (median)")
    L.append("")
    L.append("CPU-seconds per GB for throughput workloads, CPU-µs per request for wrk; lower "
             "is better.")
    L.append("")
    L.append("| workload | unit | " + " | ".join(paths) + " |")
    L.append("|---|---|" + "---:|" * len(paths))
    for w in wls:
        key, unit = (("machine_us_per_req", "CPU-µs/req") if w.kind == "wrk"
                     else ("machine_s_per_gb", "CPU-s/GB"))
        cells = [_fmt(g[(w.name, p)]["cpu"].get(key)) if (w.name, p) in g else "-"
                 for p in paths]
        L.append("| %s | %s | %s |" % (w.name, unit, " | ".join(cells)))
    if any(r["cpu"].get("retrans") is not None for r in rows):
        L.append("")
        L.append("## TCP retransmissions per run (median)")
        L.append("")
        L.append("iperf3: its sender's count (the backend with -R); wrk and blob: the "
                 "client's Tcp.RetransSegs (SYN retransmissions show here).")
        L.append("")
        L.append("| workload | " + " | ".join(paths) + " |")
        L.append("|---|" + "---:|" * len(paths))
        for w in wls:
            cells = [_fmt(g[(w.name, p)]["cpu"].get("retrans"), "req/s")
                     if (w.name, p) in g else "-" for p in paths]
            L.append("| %s | %s |" % (w.name, " | ".join(cells)))
    if tw:
        L.append("")
        L.append("## What lbd's I/O moved per MB served (median)")
        L.append("")
        L.append("Frames (rx + tx) and bytes (rx + tx) through lbd's data-plane device per "
                 "10^6 bytes of payload delivered to the application (iperf3 bytes, wrk "
                 "bytes read, curl bytes).")
        L.append("")
        L.append("| workload | " + " | ".join("%s frames/MB | %s bytes/MB" % (m, m)
                                             for m in tw) + " |")
        L.append("|---|" + "---:|---:|" * len(tw))
        for w in wls:
            cells = []
            for m in tw:
                c = g[(w.name, m)]["cpu"] if (w.name, m) in g else {}
                cells += [_fmt(c.get("lb_frames_per_mb")), _fmt(c.get("lb_bytes_per_mb"))]
            L.append("| %s | %s |" % (w.name, " | ".join(cells)))
    off = meta.get("offloads") or {}
    if off:
        L.append("")
        L.append("## Offloads in force (ethtool -k, at the start of the run)")
        L.append("")
        L.append("RPS CPUs: the receive queues' rps_cpus mask (0 = off, the kernel's default). "
                 "lbd sets it on its own TAP (`[io] rps`), so that the kernel forwards the "
                 "frames lbd writes on the CPU their flow hashes to, not all inside lbd's "
                 "write(); no other interface is changed.")
        L.append("")
        L.append("| node | interface | role | " + " | ".join(s for _, s in ETHTOOL_FEATURES)
                 + " | RPS CPUs |")
        L.append("|---|---|---|" + "---|" * (len(ETHTOOL_FEATURES) + 1))
        for key, o in off.items():
            feats = o.get("features") or {}
            L.append("| %s | %s | %s | %s | %s |" % (o.get("node"), o.get("interface"),
                                                     o.get("role", ""),
                                                     " | ".join(feats.get(s, "?")
                                                                for _, s in ETHTOOL_FEATURES),
                                                     o.get("rps_cpus", "?")))
    L.append("")
    L.append("## Paths")
    L.append("")
    for line in meta.get("path_notes", []):
        L.append("- " + line)
    skipped = meta.get("skipped") or {}
    errs = [(r["path"], r["workload"], e) for r in rows for e in r.get("errors", [])]
    if skipped or errs or meta.get("notes"):
        L.append("")
        L.append("## Skipped, failed, noted")
        L.append("")
        for p, why in skipped.items():
            L.append("- skipped %s: %s" % (p, why))
        for p, w, e in errs:
            L.append("- %s %s: a run failed: %s" % (p, w, e))
        for n in meta.get("notes", []):
            L.append("- " + n)
    return "\n".join(L) + "\n"


def _pct(v):
    return "-" if v is None else "%.0f%%" % v


def estimate_seconds(n_paths, workloads, runs, dur):
    """Rough wall time of the measurements (for the line printed at the start)."""
    per = {"iperf": dur.iperf + dur.iperf_omit + 0.7, "wrk": dur.wrk + 0.3,
           "blob": dur.blob_gets * (0.3 + 64 * 8 * 1.048576 / 1000 / BLOB_GBPS_GUESS)}
    return sum((per[w.kind] + OVERHEAD_S) * runs * n_paths for w in workloads)


# --- measuring ---------------------------------------------------------------------------------

class Failed(Exception):
    """One measurement failed; the message says how (recorded, the run goes on)."""


def _read(path):
    with open(path) as f:
        return f.read()


def cpu_snapshot(pids):
    busy, _total, steal = parse_proc_stat(_read("/proc/stat"))
    procs = {}
    for name, pid in pids.items():
        try:
            procs[name] = parse_pid_stat(_read("/proc/%d/stat" % pid)) if pid else None
        except (OSError, IndexError, ValueError):
            procs[name] = None
    return busy, procs, steal


def cpu_delta(a, b):
    tck = os.sysconf("SC_CLK_TCK")
    out = {"machine_busy_s": (b[0] - a[0]) / tck, "machine_steal_s": (b[2] - a[2]) / tck}
    for name in ("lbd", "haproxy"):
        x, y = a[1].get(name), b[1].get(name)
        out[name + "_s"] = (y - x) / tck if x is not None and y is not None else None
    return out


class Bench:
    def __init__(self, lab, anchors, dur, http_object):
        self.lab = lab
        self.anchors = anchors
        self.dur = dur
        self.http_object = http_object
        self.sock = lab.topology["control_socket"]
        self.pids = {"lbd": lab.topology["lb"]["pid"], "haproxy": None}

    # endpoints
    def client(self, path):
        """Each path has its own client namespace: see CLIENT_OF."""
        return CLIENT_OF[path]

    def host(self, path):
        from tools.anchors import HAPROXY_ADDR, KERNEL_VIP
        return {"direct": BACKENDS[0], "kernel": KERNEL_VIP, "haproxy": HAPROXY_ADDR,
                "remote": REMOTE[0]}.get(path) or VIPS[path]

    # threeway control
    def lbctl(self, *args):
        r = subprocess.run([sys.executable, "-m", "lb.cli", "--socket", self.sock, "--json",
                            *args], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise Failed("lbctl %s: %s" % (" ".join(args), (r.stderr or r.stdout).strip()))
        return json.loads(r.stdout) if r.stdout.strip() else None

    def client_tcp(self, path):
        """c1's TCP counters (retransmissions tell a lossy path from a slow one)."""
        r = self.lab.exec(self.client(path), ["cat", "/proc/net/snmp", "/proc/net/netstat"],
                          timeout=10,
                          check=False)
        return parse_snmp(r.stdout)

    def lb_stats(self):
        """lbd's I/O counters and its non-zero fast-path counters, now."""
        from lb.cli import call
        st = call(self.sock, "stats", {}, timeout=10)
        io = st.get("io", {})
        return ({k: io.get(k) for k in ("rx_frames", "tx_frames", "rx_bytes", "tx_bytes")},
                dict(st.get("counters", {})))

    def add_vips(self, mode):
        vip = VIPS[mode]
        for port, sched in zip((HTTP_PORT, IPERF_PORT), SCHEDULERS[mode]):
            self.lbctl("vip", "add", "%s:%d" % (vip, port), "--mode", mode, "--scheduler", sched)
            for b in BACKENDS_OF.get(mode, BACKENDS):
                self.lbctl("backend", "add", "%s:%d" % (vip, port), b)

    # checks before measuring
    def check(self, path, want_blob, blob_sha):
        """Raise Failed unless three GETs of /id answer 200 through `path` (and, when the blob
        workload runs, one /blob arrives with the right sha256)."""
        h = self.host(path)
        r = self.lab.exec(self.client(path), ["sh", "-c", "for i in 1 2 3; do curl -s --max-time 3 -o "
                                 "/dev/null -w '%%{http_code} ' http://%s/id; done" % h],
                          timeout=20, check=False)
        if r.stdout.split() != ["200"] * 3:
            raise Failed("GET /id through %s (%s) answered %r" % (path, h, r.stdout.strip()))
        if want_blob:
            r = self.lab.exec(self.client(path), ["sh", "-c", "curl -sf --max-time 60 http://%s/blob | "
                                     "sha256sum" % h], timeout=90, check=False)
            sha = (r.stdout.split() or [""])[0]
            if sha != blob_sha:
                raise Failed("/blob through %s: sha256 %s, expected %s" % (path, sha[:16],
                                                                          blob_sha[:16]))

    # one measurement
    def measure(self, path, w):
        h = self.host(path)
        if w.kind == "iperf":
            argv = ["iperf3", "-c", h, "-p", str(IPERF_PORT), "-t", str(self.dur.iperf),
                    "-P", str(w.parallel), "-J", "--connect-timeout", "3000"]
            if self.dur.iperf_omit:
                argv += ["-O", str(self.dur.iperf_omit)]
            if w.reverse:
                argv.append("-R")
            last = None
            for _attempt in range(3):     # the server may still be finishing the last test
                r = self.lab.exec(self.client(path), argv, timeout=self.dur.iperf + self.dur.iperf_omit + 20,
                                  check=False)
                try:
                    m = parse_iperf3(r.stdout)
                    return {"value": m["gbps"], "served_bytes": m["bytes"], "requests": None,
                            "retransmits": m["retransmits"]}
                except ValueError as e:
                    last = str(e)
                    if "busy" not in last:
                        break
                    time.sleep(1.0)   # bounded: three attempts
            raise Failed(last)
        if w.kind == "wrk":
            argv = ["wrk", "-t1", "-c%d" % WRK_CONNS, "-d%ds" % self.dur.wrk, "--timeout", "5s"]
            if w.close:
                argv += ["-H", "Connection: close"]
            argv.append("http://%s%s" % (h, self.http_object))
            r = self.lab.exec(self.client(path), argv, timeout=self.dur.wrk + 20, check=False)
            try:
                m = parse_wrk(r.stdout)
            except ValueError as e:
                raise Failed("%s %s" % (e, r.stderr.strip()[-200:]))
            out = {"value": m["rps"], "served_bytes": m["bytes"], "requests": m["requests"],
                   "wrk_errors": m["errors"], "non2xx": m["non2xx"]}
            if m["non2xx"] or m["requests"] == 0:
                out["error"] = "%d non-2xx of %d requests" % (m["non2xx"], m["requests"])
            return out
        # blob
        total_b, total_s = 0, 0.0
        for _ in range(self.dur.blob_gets):
            r = self.lab.exec(self.client(path), ["curl", "-s", "-o", "/dev/null", "--max-time", "60", "-w",
                                     "%{http_code} %{size_download} %{time_total}",
                                     "http://%s/blob" % h], timeout=90, check=False)
            try:
                m = parse_curl(r.stdout)
            except ValueError as e:
                raise Failed(str(e))
            if m["code"] != 200 or m["bytes"] != 64 << 20:
                raise Failed("GET /blob: status %d, %d bytes" % (m["code"], m["bytes"]))
            total_b += m["bytes"]
            total_s += m["seconds"]
        return {"value": total_b * 8 / 1e9 / total_s, "served_bytes": total_b, "requests": None}

    def timed(self, path, w):
        """(measure()'s result, its error or None, wall seconds); a failed measurement gives
        value None."""
        t0 = time.monotonic()
        err = None
        try:
            m = self.measure(path, w)
        except Failed as e:
            m, err = {"value": None, "served_bytes": 0, "requests": None}, str(e)
        except subprocess.TimeoutExpired as e:
            m, err = {"value": None, "served_bytes": 0, "requests": None}, "timed out: %s" % e
        return m, err, time.monotonic() - t0

    def cell(self, path, w):
        """One run of one cell: the measurement inside CPU and lbd-I/O snapshots."""
        tw = path in THREEWAY
        io0, k0 = self.lb_stats() if tw else (None, None)
        t0c = self.client_tcp(path)
        c0 = cpu_snapshot(self.pids)
        m, err, wall = self.timed(path, w)
        c1 = cpu_snapshot(self.pids)
        lb_io = None
        t1c = self.client_tcp(path)
        lb_counters = None
        if tw:
            io1, k1 = self.lb_stats()
            lb_io = {k: (io1[k] - io0[k] if io1.get(k) is not None and io0.get(k) is not None
                         else None) for k in io1}
            lb_counters = {k: v - k0.get(k, 0) for k, v in k1.items() if v != k0.get(k, 0)}
        run = per_run_metrics(w.kind, m["value"], m["served_bytes"], m["requests"], wall,
                              cpu_delta(c0, c1), lb_io)
        for k in ("retransmits", "wrk_errors", "non2xx"):
            if k in m:
                run[k] = m[k]
        run["client_tcp"] = {k: t1c[k] - t0c[k] for k in CLIENT_TCP if k in t0c and k in t1c}
        # the sender's count: iperf3 reports its sender (the server with -R); else the client
        run["retrans"] = (m.get("retransmits") if w.kind == "iperf"
                          else run["client_tcp"].get("Tcp.RetransSegs"))
        if lb_counters is not None:
            run["lb_counters"] = lb_counters     # fast-path counter deltas: drops show here
        if err or m.get("error"):
            run["error"] = err or m["error"]
        return run


# --- environment -------------------------------------------------------------------------------

def offloads(lab):
    io = lab.topology["io"]
    ifs = [("c1", "eth0", "client (c2.. alike)"), ("rt", "eth0", "router, client side"),
           ("rt", "eth1", "router, server side"), ("b1", "eth0", "backend (b2, b3 alike)"),
           ("lb", "mg0", "LB kernel side (haproxy)")]
    if io == "tap":
        ifs.append(("sw", "lbtap", "lbd's TAP (vnet header, GSO)" if lab.topology.get("offload")
                    else "lbd's TAP (no vnet header)"))
    else:
        ifs += [("lb", "dp0", "lbd's AF_PACKET veth"), ("sw", "lbdp", "its bridge peer")]
    out = {}
    for node, ifname, role in ifs:
        r = lab.exec(node, ["ethtool", "-k", ifname], timeout=10, check=False)
        rps = lab.exec(node, ["sh", "-c", "cat /sys/class/net/%s/queues/rx-*/rps_cpus" % ifname],
                       timeout=10, check=False)
        out["%s/%s" % (node, ifname)] = {"node": node, "interface": ifname, "role": role,
                                         "features": parse_ethtool_k(r.stdout),
                                         "rps_cpus": parse_rps(rps.stdout)}
    return out


def parse_rps(text):
    """The receive queues' rps_cpus masks as one string ("0" = RPS off; several queues that
    differ: joined with '/'), or "?" when unreadable."""
    masks = []
    for line in text.split():
        m = line.replace(",", "").lstrip("0") or "0"
        if m not in masks:
            masks.append(m)
    return "/".join(masks) or "?"


def machine():
    model = "?"
    try:
        for line in _read("/proc/cpuinfo").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": model, "ncpu": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "arch": platform.machine()}


def pick_http_object(lab):
    r = lab.exec("c1", ["curl", "-s", "-o", "/dev/null", "--max-time", "3", "-w",
                        "%{http_code} %{size_download}", "http://%s%s" % (BACKENDS[0], OBJ_1K)],
                 timeout=10, check=False)
    if r.stdout.split() == ["200", "1024"]:
        return OBJ_1K, "1024-byte body"
    return "/id", ("/1k is not served by the lab's nginx yet, so wrk GETs /id, a 3-byte body "
                   "(\"bN\\n\"): request rates are for a tiny object, not 1 KiB")


# --- plots -------------------------------------------------------------------------------------

def plot(rows, out_dir, meta):
    """Grouped bars (paths side by side) per workload: throughput, request rate, and machine
    CPU per unit served. Returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = _grid(rows)
    paths = [p for p in PATHS if any(r["path"] == p for r in rows)]
    colors = dict(zip(PATHS, ("#7f7f7f", "#2ca02c", "#1f77b4", "#d62728", "#ff7f0e",
                              "#9467bd", "#bcbd22", "#17becf", "#e377c2")))
    sub = "%s, io %s, %s CPUs, median of %d run(s), bars: min-max" % (
        meta.get("date", ""), meta.get("io", ""), meta.get("ncpu", ""), meta.get("runs", 0))
    written = []

    def bars(ax, wls, key, ylabel):
        n = len(paths)
        width = 0.8 / max(n, 1)
        for i, p in enumerate(paths):
            xs, ys, lo, hi = [], [], [], []
            for j, w in enumerate(wls):
                r = g.get((w.name, p))
                v = None
                if r:
                    v = r["median"] if key == "median" else r["cpu"].get(key)
                if v is None:
                    continue
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(v)
                if key == "median" and r["min"] is not None:
                    lo.append(v - r["min"])
                    hi.append(r["max"] - v)
                else:
                    lo.append(0)
                    hi.append(0)
            if xs:
                b = ax.bar(xs, ys, width, label=p, color=colors[p], yerr=[lo, hi], capsize=2)
                ax.bar_label(b, labels=[_fmt(y) for y in ys], fontsize=6, rotation=90,
                             padding=2)
        ax.set_xticks(range(len(wls)))
        ax.set_xticklabels([w.name for w in wls], rotation=15)
        ax.set_ylabel(ylabel)
        ax.margins(y=0.12)                     # room for the labels above the bars
        ax.grid(axis="y", alpha=0.3)

    thr = [w for w in WORKLOADS if w.kind != "wrk" and any((w.name, p) in g for p in paths)]
    req = [w for w in WORKLOADS if w.kind == "wrk" and any((w.name, p) in g for p in paths)]
    if thr:
        fig, ax = plt.subplots(figsize=(10, 5))
        bars(ax, thr, "median", "Gbit/s")
        ax.set_title("threeway e2e: throughput per path\n" + sub, fontsize=10)
        ax.legend(ncol=len(paths), fontsize=8)
        fig.tight_layout()
        f = os.path.join(out_dir, "e2e-throughput.png")
        fig.savefig(f, dpi=100)
        plt.close(fig)
        written.append(f)
    if req:
        fig, ax = plt.subplots(figsize=(7, 5))
        bars(ax, req, "median", "requests/s (%s)" % meta.get("http_object", ""))
        ax.set_title("threeway e2e: HTTP request rate per path\n" + sub, fontsize=10)
        ax.legend(ncol=3, fontsize=8)
        fig.tight_layout()
        f = os.path.join(out_dir, "e2e-requests.png")
        fig.savefig(f, dpi=100)
        plt.close(fig)
        written.append(f)
    if thr or req:
        fig, axes = plt.subplots(1, 2, figsize=(13, 5),
                                 gridspec_kw={"width_ratios": [max(len(thr), 1),
                                                               max(len(req), 1)]})
        if thr:
            bars(axes[0], thr, "machine_s_per_gb", "machine CPU-s per GB")
        if req:
            bars(axes[1], req, "machine_us_per_req", "machine CPU-µs per request")
        axes[0].legend(ncol=3, fontsize=8)
        fig.suptitle("threeway e2e: whole-machine CPU per unit served (lower is better)\n"
                     + sub, fontsize=10)
        fig.tight_layout()
        f = os.path.join(out_dir, "e2e-cpu.png")
        fig.savefig(f, dpi=100)
        plt.close(fig)
        written.append(f)
    return written


# --- main --------------------------------------------------------------------------------------

def parse_list(text, allowed, what):
    if not text:
        return list(allowed)
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise SystemExit("%s: unknown %s (have: %s)" % (what, ", ".join(bad), ", ".join(allowed)))
    return [x for x in allowed if x in items]


def path_notes(io, http_object):
    return [
        "direct: the client GETs b1's real address 198.19.0.11, routed by rt (one backend, "
        "one nginx worker; the balanced paths spread over three).",
        "kernel: nftables DNAT on rt of 198.19.101.1 (`numgen inc mod 3` for :80, `jhash ip "
        "saddr mod 3` for iperf3's :5201); replies return through rt and are un-NATed there. "
        "The NAT table exists only while the kernel cells run.",
        "haproxy: HAProxy %s, `mode tcp`, `nbthread 1`, listening on 198.19.0.3 (mg0, the LB "
        "namespace's kernel side, reached from the client through rt), `balance roundrobin` "
        "for :80 and `balance source` for :5201; it connects to the backends from 198.19.0.3."
        % _haproxy_version(),
        "nat / dsr / splice / tunnel: lbd (io %s; with a TAP, vnet headers and TSO/checksum "
        "offload unless --no-offload) with VIPs 198.19.100.1 / .2 / .3 / .7 added by lbctl; "
        "schedulers :80 nat rr, dsr maglev, splice rr, tunnel maglev; :5201 sh everywhere "
        "(iperf3's two connections must meet one server)." % io,
        "remote / tunnel: r1..r3 (198.19.200.11-13) sit behind rt's third interface, not on "
        "the LB's segment; remote GETs r1's real address (one backend); tunnel carries the "
        "client's frames in VXLAN (VNI 4242, path MTU 1500) from lbd through rt to r1..r3, "
        "which answer the client directly through rt.",
        "clients: each path has its own client namespace and address (%s), so that no "
        "backend TIME_WAIT left by one path meets another path's SYN on the same 4-tuple "
        "(with one shared client, wrk-close collapsed on every NAT path: PAWS on the "
        "backends, 1 s SYN retransmissions)." % ", ".join(
            "%s %s" % (p, CLIENT_OF[p]) for p in PATHS),
        "wrk: `wrk -t1 -c%d`, GET `%s`; wrk-close adds `-H \"Connection: close\"`; iperf3 "
        "sum_received; blob: curl's size_download / time_total of 64 MiB GETs." % (
            WRK_CONNS, http_object),
    ]


def _haproxy_version():
    try:
        r = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, timeout=10)
        m = re.search(r"version (\S+)", r.stdout)
        return m.group(1) if m else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"




def cpu_per_unit(key, kind, runs):
    """Median CPU-seconds in runs[i][key] per unit served: µs per request (wrk) or s per GB."""
    vals = []
    for r in runs:
        s = r.get(key)
        if s is None or r.get("value") is None:
            continue
        if kind == "wrk" and r.get("requests"):
            vals.append(1e6 * s / r["requests"])
        elif kind != "wrk" and r.get("served_bytes"):
            vals.append(s / (r["served_bytes"] / 1e9))
    return median(vals)


def lab_argparser(prog, description, results):
    """The options every lab report shares: --runs, --quick, --out."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--runs", type=int, default=None, help="runs per cell (default 3; 1 quick)")
    ap.add_argument("--quick", action="store_true", help="1 run, short durations")
    ap.add_argument("--out", default=results, help="results directory")
    return ap


def lab_runs(a):
    """(runs, durations) from lab_argparser's options; SystemExit on a bad --runs."""
    runs = a.runs if a.runs is not None else (1 if a.quick else 3)
    if not 1 <= runs <= 20:
        raise SystemExit("--runs: 1..20")
    return runs, (QUICK if a.quick else FULL)


def lab_meta(a, runs, dur, argv, **extra):
    """The meta every lab report starts from: date, runs, quick, durations, the command's
    arguments (argv, or sys.argv's), the machine, and `extra`."""
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "runs": runs, "quick": a.quick, "durations": dur._asdict(),
            "argv": "".join(" " + x for x in (argv if argv is not None else sys.argv[1:])),
            **extra, **machine()}


def write_report(out, stem, meta, rows, md, t_start):
    """The labs' reports (splice_lab, afpacket_lab, workers_lab): <stem>.json holds meta and
    every row, <stem>.md the rendered tables, which are printed too. 0 if there were rows."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, stem + ".json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(os.path.join(out, stem + ".md"), "w") as f:
        f.write(md)
    print()
    print(md)
    print("wrote %s/%s.json, %s.md in %.0f s" % (out, stem, stem, time.monotonic() - t_start))
    return 0 if rows else 1


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench.e2e", description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=None, help="runs per cell (default 3; 1 quick)")
    ap.add_argument("--quick", action="store_true", help="1 run, short durations (~2-3 min)")
    ap.add_argument("--io", choices=["tap", "afpacket"], default="tap")
    ap.add_argument("--no-offload", action="store_true",
                    help="the slow path, no vnet headers: one <= 1514-byte frame per read()")
    ap.add_argument("--only", help="comma-separated paths: " + ",".join(PATHS))
    ap.add_argument("--workloads", help="comma-separated: " + ",".join(WORKLOAD_BY_NAME))
    ap.add_argument("--name", default="twe2e", help="lab name")
    ap.add_argument("--out", default=RESULTS, help="results directory")
    a = ap.parse_args(argv)
    runs = a.runs if a.runs is not None else (1 if a.quick else 3)
    if runs < 1 or runs > 20:
        raise SystemExit("--runs: 1..20")
    dur = QUICK if a.quick else FULL
    paths = parse_list(a.only, PATHS, "--only")
    wls = [WORKLOAD_BY_NAME[n] for n in parse_list(a.workloads, list(WORKLOAD_BY_NAME),
                                                   "--workloads")]

    from tools.anchors import Anchors
    from tools.lab import Lab, LabError

    t_start = time.monotonic()
    offload = not a.no_offload
    meta = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "io": a.io + (" + vnet offload" if offload else ""), "runs": runs, "quick": a.quick,
            "durations": dur._asdict(),
            **machine()}
    skipped, notes = {}, []
    est = estimate_seconds(len(paths), wls, runs, dur)
    print("e2e: %d paths x %d workloads x %d run(s) = %d measurements; about %.0f min "
          "(plus ~%d s of lab and checks)" % (len(paths), len(wls), runs,
                                              len(paths) * len(wls) * runs, est / 60 + 0.5,
                                              10 + 4 * len(paths)), flush=True)
    lab = Lab(a.name, backends=3, clients=len(PATHS), io=a.io, offload=offload,
              remote_backends=len(REMOTE))
    lab.down()            # one left by a crashed run of the same name
    rows = []
    try:
        with lab:
            topo = lab.topology
            meta["impl"] = (topo["lb"].get("status") or {}).get("impl", "?")
            meta["lbd_pid"] = topo["lb"]["pid"]
            meta["offloads"] = offloads(lab)
            http_object, note = pick_http_object(lab)
            meta["http_object"], meta["http_object_note"] = http_object, note
            if http_object != OBJ_1K:
                notes.append(note)
            print("lab %s up (io %s, lbd pid %s, fast path %s); wrk object %s"
                  % (a.name, a.io, meta["lbd_pid"], meta["impl"], http_object), flush=True)
            with Anchors(lab, BACKENDS) as anchors:
                bench = Bench(lab, anchors, dur, http_object)
                want_blob = any(w.kind == "blob" for w in wls)
                live = []
                for p in paths:
                    try:
                        if p in THREEWAY:
                            bench.add_vips(p)      # Failed if lbctl does not take the mode
                        elif p == "haproxy":
                            bench.pids["haproxy"] = anchors.haproxy_up()
                        elif p == "kernel":
                            anchors.kernel_up()
                        try:
                            bench.check(p, want_blob, topo["blob"]["sha256"])
                        finally:
                            anchors.kernel_down()
                        live.append(p)
                        print("  %-8s ready at %s" % (p, bench.host(p)), flush=True)
                    except (Failed, LabError, subprocess.SubprocessError, OSError) as e:
                        skipped[p] = str(e).strip().splitlines()[0][:300]
                        print("  %-8s SKIPPED: %s" % (p, skipped[p]), flush=True)
                meta["blob_sha256_checked"] = want_blob
                meta["path_notes"] = path_notes(a.io, http_object)
                total = len(live) * len(wls) * runs
                print("measuring %d cells x %d run(s), about %.0f min" % (
                    len(live) * len(wls), runs,
                    estimate_seconds(len(live), wls, runs, dur) / 60 + 0.5), flush=True)
                k = 0
                results = {}
                for w in wls:
                    for run in range(1, runs + 1):
                        for p in live:
                            k += 1
                            if p == "kernel":
                                anchors.kernel_up()
                            try:
                                r = bench.cell(p, w)
                            finally:
                                if p == "kernel":
                                    anchors.kernel_down()
                            results.setdefault((p, w.name), []).append(r)
                            extra = "  (machine %s, %s %s)" % (
                                _pct(r.get("machine_busy_pct")),
                                "haproxy" if p == "haproxy" else "lbd",
                                _pct(r.get("haproxy_pct") if p == "haproxy" else r.get("lbd_pct")))
                            if (r.get("machine_steal_pct") or 0) >= 1:
                                extra += "  host steal %s" % _pct(r["machine_steal_pct"])
                            shown = ("FAILED: %s" % r["error"][:120] if r["value"] is None
                                     else "%s %s" % (_fmt(r["value"], w.unit), w.unit))
                            ct = r.get("client_tcp", {})
                            if ct.get("Tcp.RetransSegs"):
                                extra += "  client retrans %d (syn %d)" % (
                                    ct["Tcp.RetransSegs"], ct.get("TcpExt.TCPSynRetrans", 0))
                            print("[%d/%d] %s %s run %d/%d ... %s%s" % (
                                k, total, p, w.name, run, runs, shown,
                                "" if r["value"] is None else extra), flush=True)
                env = {"date": meta["date"], "io": meta["io"], "quick": a.quick,
                       "cpu_model": meta["cpu_model"], "ncpu": meta["ncpu"],
                       "http_object": http_object,
                       "offloads": {k2: v["features"] for k2, v in meta["offloads"].items()}}
                for w in wls:
                    for p in live:
                        rows.append(make_row(p, w, results[(p, w.name)], env))
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    except LabError as e:
        print("e2e failed: %s" % e, file=sys.stderr)
        return 1
    meta["skipped"] = skipped
    meta["notes"] = notes + [
        "The host is shared (2 CPUs for client, router, balancer and three backends, and "
        "whatever else runs there): compare paths within one run, not across runs."]
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "e2e.json"), "w") as f:
        json.dump(rows, f, indent=1)
    md = render_markdown(rows, meta)
    pngs = plot(rows, a.out, meta) if rows else []
    md += "\n" + "\n".join("![%s](%s)" % (os.path.basename(p), os.path.basename(p))
                           for p in pngs) + "\n"
    with open(os.path.join(a.out, "e2e.md"), "w") as f:
        f.write(md)
    print()
    print(md)
    print("wrote %s/e2e.json, e2e.md, %s in %.0f s" % (
        a.out, ", ".join(os.path.basename(p) for p in pngs), time.monotonic() - t_start))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
