"""The floor of a userspace direct-return hop on this host: lbd's dsr beside the least any
program can do on a TAP, and beside the direct path.

    python3 -m bench.tap_floor [--runs 3] [--seconds 8] [--quick]

Why: a dsr (or tunnel, or hopped) download sends its data straight from the backend to the
client, but the client's ACKs cross the LB. Is lbd's ACK path what limits such a download,
or the hop itself? A lab of its own (one backend b1, TAP with vnet offload); four paths,
each measured from c1 (the backend sends), one after the other in every run:

  direct      c1 -> rt -> b1, no LB
  dsr         VIP 198.19.100.2 (:5201 and :80) through lbd (mode dsr, one backend)
  floor       VIP 198.19.100.9 through bench/floor/tapfwd.c on a second TAP on the same
              bridge: read a frame, rewrite its MACs, write it back (no table, no checks);
              it sleeps in poll() when its queue is empty, as lbd does; RPS on its TAP as
              lbd sets it on its own
  floor-spin  the same, never sleeping (one CPU spent polling)
  kernel      VIP 198.19.100.10 through the same rewrite done in the kernel instead: a veth
              on the bridge whose far end has a tc ingress program (bench/floor/kfwd.c,
              clang -target bpf) that rewrites both MACs and redirects the frame back out:
              what an in-kernel data path (XDP, tc) on the LB's own interface would cost,
              no process woken at all

Workloads: iperf3 -R -P1 and -P4 for --seconds, and 8 GETs of the lab's 64 MiB /blob with
curl (Gbit/s = their bytes over the sum of their time_total, as bench.e2e's blob-64MiB).
Per cell: Gbit/s, the machine's busy CPU-seconds per GB received (from /proc/stat), the
client's ACKs per GB (b1's eth0 rx packets), and the forwarder's wake-ups. Medians over the
runs, and each path's ratio to direct paired within a run. Writes
bench/results/tap_floor.{json,md}. Not a test: nothing is asserted.
"""
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

from bench.e2e import FULL, lab_argparser, lab_meta, lab_runs, median, parse_curl, write_report

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor", "tapfwd.c")
VIP = "198.19.100.2"
FLOOR_VIP = "198.19.100.9"
FLOOR_NEXT_HOP = "198.19.0.9"        # rt's next hop for FLOOR_VIP: the forwarder's MAC
FLOOR_MAC = "02:74:77:00:00:09"
FLOOR_TAP = "fwtap"
KERNEL_VIP = "198.19.100.10"
KERNEL_NEXT_HOP = "198.19.0.10"
KERNEL_MAC = "02:74:77:00:00:0a"
KERNEL_VETH = ("fwk0", "fwk1")       # fwk0 on the bridge; fwk1 turns the frames around
PATHS = ("direct", "dsr", "floor", "floor-spin", "kernel")
DEST = {"direct": "198.19.0.11", "dsr": VIP, "floor": FLOOR_VIP, "floor-spin": FLOOR_VIP,
        "kernel": KERNEL_VIP}
PARALLEL = (1, 4)
WORKLOADS = tuple("iperf-P%d" % n for n in PARALLEL) + ("blob",)
BLOB_GETS = 8           # GETs of the lab's 64 MiB /blob per cell, as bench.e2e's blob-64MiB


KERNEL_SOURCE = os.path.join(os.path.dirname(SOURCE), "kfwd.c")


def build(out_dir):
    exe = os.path.join(out_dir, "tapfwd")
    subprocess.run(["cc", "-O2", "-Wall", "-o", exe, SOURCE], check=True)
    return exe


def build_kernel(out_dir, backend_mac):
    """kfwd.o for KERNEL_VIP and this backend's MAC."""
    def mac(m):
        return ",".join("0x" + x for x in m.split(":"))
    obj = os.path.join(out_dir, "kfwd.o")
    vip = struct.unpack("=I", socket.inet_aton(KERNEL_VIP))[0]     # as the program reads it
    subprocess.run(["clang", "-O2", "-Wall", "-Werror", "-target", "bpf",
                    "-I/usr/include/%s-linux-gnu" % os.uname().machine, "-DVIP=%du" % vip,
                    "-DBACKEND_MAC=" + mac(backend_mac), "-DFWD_MAC=" + mac(KERNEL_MAC),
                    "-c", KERNEL_SOURCE, "-o", obj], check=True)
    return obj


def proc_stat_busy():
    """(busy, total) jiffies of the whole machine now."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)


def eth0_rx_packets(lab, node):
    out = json.loads(lab.exec(node, ["ip", "-s", "-j", "link", "show", "eth0"]).stdout)
    return out[0]["stats64"]["rx"]["packets"]


class Floor:
    """tapfwd on FLOOR_TAP in the lab's switch namespace (rt routes FLOOR_VIP to it)."""

    def __init__(self, lab, exe, backend_mac, spin):
        self.lab, self.exe, self.backend_mac, self.spin = lab, exe, backend_mac, spin
        self.proc = None

    def __enter__(self):
        argv = [self.exe, FLOOR_TAP, FLOOR_MAC, self.backend_mac, FLOOR_VIP]
        self.proc = self.lab.popen("sw", argv + (["spin"] if self.spin else []),
                                   stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("bench.tap_floor: tapfwd did not start (exit %s)" % self.proc.poll())
        rps = self.lab.exec("sw", ["cat", "/sys/class/net/lbtap/queues/rx-0/rps_cpus"]).stdout
        self.lab.exec("sw", ["sh", "-c", "echo %s > /sys/class/net/%s/queues/rx-0/rps_cpus"
                             % (rps.strip(), FLOOR_TAP)])
        self.lab.exec("sw", ["ip", "link", "set", FLOOR_TAP, "master", "brs", "up"])
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        self.stats = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        return False


def kernel_forwarder(lab, obj):
    """The kernel path: fwk0 in the bridge, fwk1 its peer with kfwd.o on tc ingress, which
    rewrites a frame to KERNEL_VIP (dst MAC the backend's, src KERNEL_MAC) and sends it back
    out of fwk1."""
    a, b = KERNEL_VETH
    lab.exec("sw", ["ip", "link", "add", a, "type", "veth", "peer", "name", b])
    lab.exec("sw", ["ip", "link", "set", a, "master", "brs", "up"])
    lab.exec("sw", ["ip", "link", "set", b, "up"])
    lab.exec("sw", ["tc", "qdisc", "add", "dev", b, "clsact"])
    lab.exec("sw", ["tc", "filter", "add", "dev", b, "ingress", "bpf", "direct-action",
                    "obj", obj, "sec", "tc"])


def route_via(lab, vip, next_hop, mac):
    """rt sends vip to a next hop on the server segment whose MAC is a forwarder's."""
    lab.exec("rt", ["ip", "neigh", "replace", next_hop, "lladdr", mac, "dev", "eth1", "nud",
                    "permanent"])
    lab.exec("rt", ["ip", "route", "replace", vip + "/32", "via", next_hop])


def blob_gets(lab, dst, gets):
    """(bytes, seconds) of `gets` curl GETs of /blob: the bytes and the sum of time_total, as
    bench.e2e's blob-64MiB; (None, error) on a short or failed GET."""
    total_b, total_s = 0, 0.0
    for _ in range(gets):
        r = lab.exec("c1", ["curl", "-s", "-o", "/dev/null", "--max-time", "60", "-w",
                            "%{http_code} %{size_download} %{time_total}",
                            "http://%s/blob" % dst], timeout=90, check=False)
        try:
            m = parse_curl(r.stdout)
        except ValueError as e:
            return None, str(e)
        if m["code"] != 200 or m["bytes"] != lab.topology["blob"]["size"]:
            return None, "GET /blob: status %d, %d bytes" % (m["code"], m["bytes"])
        total_b += m["bytes"]
        total_s += m["seconds"]
    return total_b, total_s


def measure(lab, dst, workload, seconds):
    acks0, (b0, t0) = eth0_rx_packets(lab, "b1"), proc_stat_busy()
    wall0 = time.monotonic()
    if workload == "blob":
        got, secs = blob_gets(lab, dst, BLOB_GETS)
        if got is None:
            return {"error": secs}
        end = {"bytes": got, "bits_per_second": 8 * got / secs}
    else:
        r = lab.exec("c1", ["iperf3", "-c", dst, "-R", "-P", workload.split("-P")[1], "-t",
                            str(seconds), "-J"], timeout=seconds + 30, check=False)
        try:
            end = json.loads(r.stdout)["end"]["sum_received"]
        except (ValueError, KeyError):
            return {"error": (r.stdout or r.stderr)[-300:]}
    b1, t1 = proc_stat_busy()
    wall = time.monotonic() - wall0
    acks = eth0_rx_packets(lab, "b1") - acks0
    gb = end["bytes"] / 1e9
    hz = os.sysconf("SC_CLK_TCK")
    return {"gbps": end["bits_per_second"] / 1e9, "gb": gb, "wall_s": wall,
            "busy_cpu_s_per_gb": (b1 - b0) / hz / gb,
            "machine_busy_pct": 100.0 * os.cpu_count() * (b1 - b0) / max(t1 - t0, 1),
            "acks_per_gb": acks / gb}


def render(rows, meta):
    L = ["# The floor of a userspace direct-return hop: lbd's dsr beside a bare TAP forwarder", "",
         "%s, %s, %s CPUs, Linux %s; `python3 -m bench.tap_floor%s`; iperf3 -R -t %d, blob "
         "8 GETs; %d runs, "
         "medians; ratio = the median of each run's path/direct." % (
             meta["date"], meta["cpu_model"], meta["ncpu"], meta["kernel"],
             meta["argv"], meta["seconds"], meta["runs"]), "",
         "| path | workload | Gbit/s | / direct | machine busy | CPU-s per GB | ACKs per GB "
         "| forwarder wake-ups/s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        L.append("| %s | %s | %.2f | %s | %.0f%% | %.3f | %s | %s |" % (
            r["path"], r["workload"], r["gbps"], "%.2f" % r["ratio"] if r["ratio"] else "-",
            r["machine_busy_pct"], r["busy_cpu_s_per_gb"], "{:,.0f}".format(r["acks_per_gb"]),
            "{:,.0f}".format(r["wakeups_per_s"]) if r.get("wakeups_per_s") is not None else "-"))
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = lab_argparser("bench.tap_floor", __doc__.split("\n")[0], RESULTS)
    ap.add_argument("--seconds", type=int, default=8, choices=range(2, 61), metavar="2..60")
    a = ap.parse_args(argv)
    runs, _ = lab_runs(a)
    seconds = 3 if a.quick else a.seconds
    from tools.lab import Lab, unique_name
    t_start = time.monotonic()
    cells = {}                      # (path, workload) -> [per-run dict]
    with tempfile.TemporaryDirectory(prefix="tap-floor-") as tmp:
        exe = build(tmp)
        lab = Lab(unique_name(), backends=1, offload=True)
        try:
            lab.up()
            sock = lab.topology["control_socket"]
            for argv_ in (["vip", "add", VIP + ":5201", "--mode", "dsr", "--scheduler", "sh"],
                          ["backend", "add", VIP + ":5201", "198.19.0.11"],
                          ["vip", "add", VIP + ":80", "--mode", "dsr", "--scheduler", "sh"],
                          ["backend", "add", VIP + ":80", "198.19.0.11"]):
                subprocess.run([sys.executable, "-m", "lb.cli", "--socket", sock, *argv_],
                               check=True, capture_output=True, timeout=30)
            backend_mac = lab.exec("b1", ["cat", "/sys/class/net/eth0/address"]).stdout.strip()
            kernel_forwarder(lab, build_kernel(tmp, backend_mac))
            route_via(lab, KERNEL_VIP, KERNEL_NEXT_HOP, KERNEL_MAC)
            route_via(lab, FLOOR_VIP, FLOOR_NEXT_HOP, FLOOR_MAC)
            for run in range(runs):
                for wl in WORKLOADS:
                    for path in PATHS:
                        if path.startswith("floor"):
                            with Floor(lab, exe, backend_mac, spin=path == "floor-spin") as fl:
                                m = measure(lab, DEST[path], wl, seconds)
                            if not path.endswith("spin") and fl.stats.get("wakeups"):
                                m["wakeups_per_s"] = fl.stats["wakeups"] / m["wall_s"]
                        else:
                            m = measure(lab, DEST[path], wl, seconds)
                        cells.setdefault((path, wl), []).append(m)
                        print("run %d %-10s %-8s %s" % (run + 1, path, wl, json.dumps(
                            {k: round(v, 3) if isinstance(v, float) else v
                             for k, v in m.items()})), flush=True)
        finally:
            lab.down()
    rows = []
    for wl in WORKLOADS:
        for path in PATHS:
            ok = [m for m in cells[(path, wl)] if "error" not in m]
            if not ok:
                continue
            direct = cells[("direct", wl)]
            ratios = [m["gbps"] / d["gbps"] for m, d in zip(cells[(path, wl)], direct)
                      if "error" not in m and "error" not in d and path != "direct"]
            row = {"path": path, "workload": wl, "runs": cells[(path, wl)],
                   "ratio": median(ratios) if ratios else None}
            for k in ("gbps", "busy_cpu_s_per_gb", "machine_busy_pct", "acks_per_gb",
                      "wakeups_per_s"):
                vals = [m[k] for m in ok if k in m]
                row[k] = median(vals) if vals else None
            rows.append(row)
    meta = lab_meta(a, runs, FULL, argv, seconds=seconds)
    return write_report(a.out, "tap_floor", meta, rows, render(rows, meta), t_start)


if __name__ == "__main__":
    sys.exit(main())
