"""dsr end to end, and live mode switching under load.

   c1 -- rt -- brs -+- lbd: client -> VIP frames get the backend's MAC, nothing else changes
                    +- b1/b2/b3: VIP on lo (arp_ignore=1, arp_announce=2); they answer the
                                 client straight through rt, never through lbd
"""
import json
import subprocess
import sys
import time

import pytest

from .test_nat import BACKENDS, Download, counters, lbctl, traffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

VIP = "198.19.100.2"


def dsr_vip(lab, port, scheduler="maglev", mode="dsr"):
    lbctl(lab, "vip", "add", "%s:%d" % (VIP, port), "--mode", mode, "--scheduler", scheduler)
    for b in BACKENDS:
        lbctl(lab, "backend", "add", "%s:%d" % (VIP, port), b)


def io_counters(lab):
    return lbctl(lab, "stats")["io"]


def test_dsr_reaches_every_backend_and_the_lb_never_sees_responses(make_lab):
    lab = make_lab()
    dsr_vip(lab, 80)
    r = traffic(lab, "c1", "http", "http://%s/id" % VIP, "--count", "60")
    assert r["n_errors"] == 0 and sorted(r["backends"]) == ["b1", "b2", "b3"], r
    before = io_counters(lab)
    sha = lab.exec("c1", ["sh", "-c", "curl -sf --max-time 60 http://%s/blob | sha256sum" % VIP],
                   timeout=90).stdout.split()[0]
    assert sha == lab.topology["blob"]["sha256"]
    after = io_counters(lab)
    c = counters(lab)
    assert c["dsr_fwd"] > 0 and c["nat_rev"] == 0
    # the LB carried only the client -> server side (the request and the ACKs), a small
    # fraction of the 64 MiB that went back to the client directly
    assert after["rx_bytes"] - before["rx_bytes"] < (64 << 20) // 10


def test_dsr_echo_32MiB_identical(make_lab):
    lab = make_lab()
    dsr_vip(lab, 9000)
    r = traffic(lab, "c1", "echo", VIP, "9000", "--bytes", str(32 << 20), "--seed", "3")
    assert r["identical"], r


def test_dsr_refuses_a_port_change_and_keeps_the_running_state(make_lab):
    lab = make_lab()
    dsr_vip(lab, 80)
    before = lbctl(lab, "vip", "list")
    p = subprocess.run([sys.executable, "-m", "lb.cli", "--socket", lab.topology["control_socket"],
                        "backend", "add", "%s:80" % VIP, "198.19.0.11:8080"],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 1 and "backend" in p.stderr and "port" in p.stderr, p.stderr
    assert lbctl(lab, "vip", "list") == before


def test_doctor_finds_a_backend_without_the_vip(make_lab):
    lab = make_lab()
    doctor = [sys.executable, "-m", "tools.lab", "doctor", "--name", lab.name]
    ok = subprocess.run(doctor + ["b1", "--vip", VIP, "--port", "80", "--json"],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"], ok.stdout + ok.stderr
    lab.exec("b1", ["ip", "addr", "del", "198.19.100.0/24", "dev", "lo"])
    bad = subprocess.run(doctor + ["b1", "--vip", VIP, "--port", "80", "--json"],
                         capture_output=True, text=True, timeout=30)
    res = json.loads(bad.stdout)
    assert bad.returncode == 1 and not res["ok"]
    assert [c["check"] for c in res["checks"] if not c["ok"]] == ["vip_local"]


def test_mode_switches_under_load_break_no_flow(make_lab, tmp_path):
    """Short requests, one after another, and a few long downloads while the VIP flips
    between nat and dsr 24 times: zero failed requests, every download intact. Each flow
    keeps the mode it began in; new flows take the current one.
    The requests last exactly as long as the switching (a stop file ends them), and the
    floor is per switch: a shared host that stalls for seconds (seen here: the direct path at
    1/50 of its speed for half a minute) slows both sides alike instead of starving the
    requests of time. A request that stalls (a lost SYN costs 1 s) is in r["slowest"]."""
    lab = make_lab()
    dsr_vip(lab, 80, mode="nat")
    stop = tmp_path / "stop"
    short = lab.popen("c1", [sys.executable, "-m", "tools.traffic", "http", "http://%s/id" % VIP,
                             "--count", "1000000", "--seconds", "60", "--timeout", "70",
                             "--stop-file", str(stop)],
                      stdout=subprocess.PIPE, text=True)
    # 64 MiB at 8, 10 and 12 MiB/s: 8, 6.4 and 5.3 s, over the 6 s of switches
    longs = [Download(lab, "http://%s/blob" % VIP, rate << 20, delay=delay)
             for delay, rate in ((0, 8), (0.5, 10), (1.5, 12))]
    try:
        modes = []
        t0 = time.monotonic()
        for i in range(24):
            mode = "dsr" if i % 2 == 0 else "nat"
            lbctl(lab, "vip", "mode", "%s:80" % VIP, mode)
            modes.append(mode)
            while time.monotonic() < t0 + 0.25 * (i + 1):   # a switch every 250 ms at most
                time.sleep(0.01)
        stop.touch()
        out, _ = short.communicate(timeout=60)
        for p in longs:
            p.result(timeout=90)
    finally:
        stop.touch()
        if short.poll() is None:
            short.kill()
        for p in longs:
            p.kill()
    r = json.loads(out.strip().splitlines()[-1])
    c = counters(lab)
    # on failure: the client's slowest requests (seconds, when) and lbd's counters say where
    assert r["n_errors"] == 0 and r["requests"] >= 10 * len(modes), (r, c)
    assert c["nat_fwd"] > 0 and c["dsr_fwd"] > 0 and c["nat_rev"] > 0
    assert len(modes) == 24
