"""lbd's user and system CPU during one iperf3 upload through a tunnel VIP and a dsr VIP.

    python3 -m bench.upload_cpu [--seconds 4]

A lab of its own (one local backend b1, one remote r1, TAP with vnet offload); per mode one
VIP :5201 with one backend; iperf3 -t SECONDS from c1; /proc/<lbd>/stat utime and stime
before and after. Prints one line per mode and writes bench/results/upload_cpu.json. It
tells where lbd spends an upload: in Python (user) or in the kernel (system: write()s to
the TAP and what the kernel does inside them). Not a test: nothing is asserted.
"""
import argparse
import json
import os
import subprocess
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PLAN = (("tunnel", "198.19.100.7", "198.19.200.11"), ("dsr", "198.19.100.2", "198.19.0.11"))


def cpu_ticks(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return int(f[11]), int(f[12])


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench.upload_cpu", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=4, choices=range(1, 31), metavar="1..30")
    a = ap.parse_args(argv)
    from tools.lab import Lab, unique_name
    lab = Lab(unique_name(), backends=1, remote_backends=1, offload=True)
    rows = []
    try:
        lab.up()
        pid = lab.topology["lb"]["pid"]
        hz = os.sysconf("SC_CLK_TCK")
        for mode, vip, backend in PLAN:
            for argv_ in (["vip", "add", vip + ":5201", "--mode", mode, "--scheduler", "sh"],
                          ["backend", "add", vip + ":5201", backend]):
                subprocess.run([sys.executable, "-m", "lb.cli", "--socket",
                                lab.topology["control_socket"], *argv_], check=True,
                               capture_output=True, timeout=30)
            u0, s0 = cpu_ticks(pid)
            t0 = time.monotonic()
            r = lab.exec("c1", ["iperf3", "-c", vip, "-t", str(a.seconds), "-J"],
                         timeout=a.seconds + 30, check=False)
            u1, s1 = cpu_ticks(pid)
            dt = time.monotonic() - t0
            gbps = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
            row = {"mode": mode, "gbps": gbps, "lbd_user_pct": 100 * (u1 - u0) / hz / dt,
                   "lbd_system_pct": 100 * (s1 - s0) / hz / dt}
            rows.append(row)
            print("%-6s upload %.2f Gbit/s; lbd user %.0f%%, system %.0f%% of a CPU"
                  % (mode, gbps, row["lbd_user_pct"], row["lbd_system_pct"]), flush=True)
    finally:
        lab.down()
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "upload_cpu.json"), "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": a.seconds,
                   "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
