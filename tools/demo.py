"""The main job: bring the lab up, push real traffic through every mode, print what happened,
take the lab down. `tools/run.sh demo [--io tap|afpacket] [--no-offload] [--name P]` (installs
and builds first); `python3 -m tools.demo` when already built. lbd runs with vnet headers
(GSO superframes through lbd, lbd's default on either backend) unless --no-offload.

Per mode, one VIP (198.19.100.<n>) with three backends on ports 80, 9000 and 5201 (b1..b3 on
the LB's segment; for tunnel r1..r3, behind the router, reached in VXLAN; hop's answers go
from b1..b3 to the client directly, through the lab's backend shim):
  http      300 GETs of /id, one connection each    -> which backends answered
  keepalive 300 GETs of /id on one connection
  blob      GET /blob (64 MiB) with curl            -> sha256 against the backends' file
  echo      16 MiB of random bytes through :9000    -> identical?
  iperf3    2 s through :5201                       -> Gbit/s
"""
import argparse
import json
import subprocess
import sys
import time

import modes
from tools.lab import Lab, LabError

BACKENDS = ["198.19.0.11", "198.19.0.12", "198.19.0.13"]
REMOTE = ["198.19.200.11", "198.19.200.12", "198.19.200.13"]    # lab remote_backends=3
# mode -> (VIP, scheduler for the TCP services, scheduler for iperf3, backends). iperf3's
# control and data connections must reach the same server, hence source hashing there.
PLAN = {"nat": ("198.19.100.1", "rr", "sh", BACKENDS),
        "dsr": ("198.19.100.2", "maglev", "sh", BACKENDS),
        "splice": ("198.19.100.3", "rr", "sh", BACKENDS),
        "tunnel": ("198.19.100.7", "maglev", "sh", REMOTE),
        "hop": ("198.19.100.9", "rr", "sh", BACKENDS)}
# Each mode gets its own client: a client that reaches one backend through two VIPs on the
# same source port meets the backend's TIME_WAIT with timestamps of another VIP (its TS
# offsets are per destination), and the backend's PAWS check refuses the SYN.
CLIENT = {"nat": "c1", "dsr": "c2", "splice": "c3", "tunnel": "c4", "hop": "c5"}


def lbctl(lab, *args):
    r = subprocess.run([sys.executable, "-m", "lb.cli", "--socket", lab.topology["control_socket"],
                        "--json", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("lbctl %s: %s" % (" ".join(args), r.stderr.strip()))
    return json.loads(r.stdout) if r.stdout.strip() else None


def traffic(lab, node, *args, timeout=120):
    r = lab.exec(node, [sys.executable, "-m", "tools.traffic", *args], timeout=timeout, check=False)
    lines = r.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {"error": r.stderr.strip()[-300:]}


def configure(lab, mode, vip, sched, iperf_sched, backends):
    for port, s in ((80, sched), (9000, sched), (5201, iperf_sched)):
        lbctl(lab, "vip", "add", "%s:%d" % (vip, port), "--mode", mode, "--scheduler", s)
        for b in backends:
            lbctl(lab, "backend", "add", "%s:%d" % (vip, port), b)


def run_mode(lab, mode, vip):
    rows = []
    c = CLIENT[mode]

    def fmt_backends(d):
        return " ".join("%s:%d" % kv for kv in sorted(d.items()))

    r = traffic(lab, c, "http", "http://%s/id" % vip, "--count", "300")
    rows.append((mode, "http 1 conn/req", "ok" if r.get("n_errors") == 0 else "FAIL %s" % r.get("errors"),
                 "%d req" % r.get("requests", 0), fmt_backends(r.get("backends", {})),
                 "%.0f req/s" % (r.get("requests", 0) / max(r.get("seconds", 1), 1e-9))))
    r = traffic(lab, c, "http", "http://%s/id" % vip, "--count", "300", "--keepalive")
    rows.append((mode, "http keep-alive", "ok" if r.get("n_errors") == 0 else "FAIL %s" % r.get("errors"),
                 "%d req" % r.get("requests", 0), fmt_backends(r.get("backends", {})),
                 "%.0f req/s" % (r.get("requests", 0) / max(r.get("seconds", 1), 1e-9))))
    t0 = time.monotonic()
    out = lab.exec(c, ["sh", "-c", "curl -sf --max-time 60 -D /dev/stderr http://%s/blob | sha256sum" % vip],
                   timeout=90, check=False)
    secs = time.monotonic() - t0
    sha = out.stdout.split()[0] if out.stdout.split() else ""
    who = [l.split(":", 1)[1].strip() for l in out.stderr.splitlines() if l.lower().startswith("x-backend")]
    ok = sha == lab.topology["blob"]["sha256"]
    rows.append((mode, "GET /blob 64 MiB", "sha256 ok" if ok else "FAIL sha256 %s" % sha[:16],
                 "64 MiB", " ".join(who), "%.2f Gbit/s" % (64 * 8 * 1.048576 / 1000 / secs)))
    r = traffic(lab, c, "echo", vip, "9000", "--bytes", str(16 << 20))
    rows.append((mode, "echo 16 MiB", "identical" if r.get("identical") else "FAIL %s" % r,
                 "%d B" % r.get("received", 0), "", "%.2f Gbit/s" % (
                     r.get("received", 0) * 8 / 1e9 / max(r.get("seconds", 1), 1e-9))))
    ip = lab.exec(c, ["iperf3", "-c", vip, "-t", "2", "-J"], timeout=30, check=False)
    try:
        d = json.loads(ip.stdout)
        gbps = d["end"]["sum_received"]["bits_per_second"] / 1e9
        rows.append((mode, "iperf3 2 s", "ok", "%d B" % d["end"]["sum_received"]["bytes"], "",
                     "%.2f Gbit/s" % gbps))
    except (ValueError, KeyError):
        rows.append((mode, "iperf3 2 s", "FAIL %s" % ip.stdout[-200:], "", "", ""))
    return rows


def table(rows, header):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join("%-*s" % (w, h) for w, h in zip(widths, header))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join("%-*s" % (w, x) for w, x in zip(widths, r)))


def main(argv=None):
    p = argparse.ArgumentParser(prog="demo")
    p.add_argument("--io", choices=["tap", "afpacket"], default="tap")
    p.add_argument("--no-offload", action="store_true",
                   help="the slow path: no vnet headers (one <= 1514-byte frame per read())")
    p.add_argument("--name", default="twdemo")
    a = p.parse_args(argv)
    offload = not a.no_offload          # lbd's default: vnet headers, either backend
    lab = Lab(a.name, backends=3, clients=len(CLIENT), io=a.io, offload=offload,
              remote_backends=len(REMOTE))
    print("== lab up (%s, io=%s%s)" % (a.name, a.io, ", vnet offload" if offload else ""),
          flush=True)
    lab.down()    # a lab of that name left by a crashed run
    failed = False
    try:
        topo = lab.up()
        print("   lb %s %s on %s (in %s), backends %s; remote backends %s" % (
            topo["lb"]["address"], topo["lb"]["mac"], topo["lb"]["interface"],
            topo["lb"]["interface_ns"], ", ".join(BACKENDS), ", ".join(REMOTE)), flush=True)
        rows = []
        for mode in [m for m in PLAN if m in modes.REGISTRY]:
            vip, sched, iperf_sched, backends = PLAN[mode]
            print("== %s: VIP %s (%s)" % (mode, vip, sched), flush=True)
            configure(lab, mode, vip, sched, iperf_sched, backends)
            rows += run_mode(lab, mode, vip)
        print()
        table(rows, ("mode", "test", "result", "moved", "backends that answered", "rate"))
        failed = any(r[2].startswith("FAIL") for r in rows)
        stats = lbctl(lab, "stats")
        print("\nlbd counters (non-zero):")
        for k, v in sorted(stats["counters"].items()):
            print("  %-24s %d" % (k, v))
        print("  %-24s %d" % ("flows now", stats["flow_count"]))
        io = stats.get("io", {})
        print("  io: %s" % ", ".join("%s=%s" % kv for kv in sorted(io.items())))
    except (LabError, RuntimeError, subprocess.SubprocessError, OSError) as e:
        print("demo failed: %s" % e, file=sys.stderr)
        failed = True
    finally:
        print("\n== lab down", flush=True)
        lab.down()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
