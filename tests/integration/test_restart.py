"""An unplanned restart of lbd (SIGKILL, as a crash or the OOM killer would) in the middle of
long downloads, lbd started again with the same configuration file: which flows survive.

   c1 -- rt -- brs: lbd (TAP), b1 b2            (nat and dsr VIPs, maglev)
          \\-- brr: r1 r2                        (tunnel VIP, maglev)

lbd keeps no state on disk: the new one starts with an empty flow table. dsr and tunnel flows
survive because any client packet re-creates its flow on the backend the Maglev table gives
(the same table: the same backends in the same file). nat flows need more: in a download the
client only ACKs what it receives, and after the restart nothing reaches it, so the only
packets are the backend's retransmissions. lbd re-creates the flow from the backend's packet
(flow_recreated_rev: the VIP whose hash gives this backend for this client port). The downloads
are slowed at the backends, not by the client, so that after the kill the client stays
silent and the backend's packets are the only ones. splice
cannot re-create a flow from either side (the sequence delta lived only in the lost table):
README says so.

Beside the downloads, a stream of short requests (one connection each) runs through every
mode across the kill: a SYN lost while lbd is down is resent by the client's TCP after 1 s,
and a request half-way through survives like a download, so none may fail.
"""
import json
import os
import signal
import subprocess
import sys

import pytest

from tools.lab import _wait

from .test_nat import counters

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

LOCAL = ["198.19.0.11", "198.19.0.12"]
REMOTE = ["198.19.200.11", "198.19.200.12"]
VIPS = {"nat": ("198.19.100.1", LOCAL), "dsr": ("198.19.100.2", LOCAL),
        "tunnel": ("198.19.100.7", REMOTE)}
PER_MODE = 3                       # downloads per mode, all running across the restart
# the backends' egress shaped (tc tbf): 64 MiB take seconds, and the client, which reads at
# once, sends nothing once data stops reaching it (a client-side --limit-rate would make it
# send window updates, which re-create flows from its side)
SHAPE = ["tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "120mbit", "burst", "64kb",
         "latency", "200ms"]


def toml_vips():
    out = []
    for mode, (vip, backends) in VIPS.items():
        out += ["[[vip]]", 'address = "%s"' % vip, "port = 80", 'mode = "%s"' % mode,
                'scheduler = "maglev"']
        for b in backends:
            out += ["  [[vip.backend]]", '  address = "%s"' % b]
    return "\n".join(out) + "\n"


def test_kill_9_in_the_middle_of_downloads(make_lab):
    lab = make_lab(backends=2, remote_backends=2)
    with open(lab.topology["lb"]["config"], "a") as f:
        f.write(toml_vips())
    lab.restart_lbd()                          # load the VIPs from the file
    for node in ("b1", "b2", "r1", "r2"):
        lab.exec(node, SHAPE)
    sha = lab.topology["blob"]["sha256"]
    procs, shorts = {}, {}
    stop = os.path.join(lab.state_dir, "short-requests.stop")
    for mode, (vip, _) in VIPS.items():
        shorts[mode] = lab.popen("c1", [
            sys.executable, "-m", "tools.traffic", "http", "http://%s/id" % vip,
            "--count", "20000", "--seconds", "120", "--timeout", "150", "--stop-file", stop],
            stdout=subprocess.PIPE, text=True)
        for k in range(PER_MODE):
            procs[(mode, k)] = lab.popen("c1", [
                "sh", "-c", "curl -sf --max-time 60 http://%s/blob | sha256sum" % vip],
                stdout=subprocess.PIPE, text=True)
    try:
        # the downloads are under way: each mode has moved a few hundred frames
        _wait("downloads under way", lambda: all(
            counters(lab).get(k, 0) >= 300 for k in ("nat_rev", "dsr_fwd", "tunnel_fwd")), 20.0)
        pause = lab.restart_lbd(signal.SIGKILL)
        got = {key: p.communicate(timeout=90)[0].split()[0] for key, p in procs.items()}
        # the short requests go on after the restart: the new lbd makes their flows
        _wait("short requests through the new lbd",
              lambda: counters(lab).get("flow_created", 0) >= 30 * len(VIPS), 30.0)
        with open(stop, "w"):
            pass
        short = {m: json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1])
                 for m, p in shorts.items()}
    finally:
        for p in list(procs.values()) + list(shorts.values()):
            if p.poll() is None:
                p.kill()
    survived = {m: sum(got[(m, k)] == sha for k in range(PER_MODE)) for m in VIPS}
    c = counters(lab)
    print("survived of %d per mode: %s; lbd back in %.2f s; flows re-created from the client "
          "%d, from the backend %d" % (PER_MODE, survived, pause, c.get("flow_recreated", 0),
                                        c.get("flow_recreated_rev", 0)))
    print("short requests (1 connection each) across the kill: %s" % {
        m: "%d ok, %d failed, slowest %s s" % (r["requests"], r["n_errors"], r["slowest"][0][0])
        for m, r in short.items()})
    assert survived == dict.fromkeys(VIPS, PER_MODE), survived
    for m, r in short.items():
        assert r["n_errors"] == 0 and r["requests"] > 0, (m, r)
    assert c.get("flow_recreated_rev", 0) >= 1, c
