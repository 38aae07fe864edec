"""nat end to end: real Linux TCP stacks on both sides of lbd, in a lab with a unique name.

   c1 198.18.0.10 -- rt -- brs -+- lbd (TAP or AF_PACKET; 198.19.0.2; VIP 198.19.100.1)
                                +- b1 198.19.0.11  nginx :80 (/id, /blob), echo :9000, iperf3 :5201
                                +- b2 198.19.0.12
                                +- b3 198.19.0.13
   client -> VIP -> lbd (DNAT) -> backend real address; the reply -> lbd (un-DNAT) -> rt -> client

Every test builds its own lab (about a second) and downs it, also when it fails.
"""
import json
import subprocess
import sys
import time

import pytest

from tools.traffic import EXPECTED_DROPS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

VIP = "198.19.100.1"
BACKENDS = ["198.19.0.11", "198.19.0.12", "198.19.0.13"]


def lbctl(lab, *args):
    """The real CLI against the lab's lbd; returns the parsed --json result."""
    r = subprocess.run([sys.executable, "-m", "lb.cli", "--socket", lab.topology["control_socket"],
                        "--json", *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout) if r.stdout.strip() else None


def nat_vip(lab, port, scheduler="rr", backends=BACKENDS):
    lbctl(lab, "vip", "add", "%s:%d" % (VIP, port), "--mode", "nat", "--scheduler", scheduler)
    for b in backends:
        lbctl(lab, "backend", "add", "%s:%d" % (VIP, port), b)


def traffic(lab, node, *args, timeout=120):
    r = lab.exec(node, [sys.executable, "-m", "tools.traffic", *args], timeout=timeout)
    return json.loads(r.stdout.strip().splitlines()[-1])


def counters(lab):
    return lbctl(lab, "stats", "--all")["counters"]


class Download:
    """One long GET of the lab's whole /blob from c1, paced by tools.traffic download at
    `rate` bytes/s, so it lasts size/rate seconds whatever the link's speed (curl's
    --limit-rate averages over seconds and lets a fast link burst through, so a "long"
    download could end before what it was meant to span). Started after `delay` seconds;
    ends early once `stop_file` exists. result() waits and checks it arrived whole."""

    def __init__(self, lab, url, rate, delay=0, stop_file=None, timeout=150):
        self.lab = lab
        argv = [sys.executable, "-m", "tools.traffic", "download", url,
                "--bytes", str(lab.topology["blob"]["size"]), "--rate", str(int(rate)),
                "--stall", "15", "--timeout", str(timeout)]
        if stop_file:
            argv += ["--stop-file", str(stop_file)]
        if delay:
            argv = ["sh", "-c", 'sleep "$0"; exec "$@"', str(delay)] + argv
        self.proc = lab.popen("c1", argv, stdout=subprocess.PIPE, text=True)

    def running(self):
        return self.proc.poll() is None

    def result(self, timeout=180):
        """tools.traffic's answer; AssertionError unless every byte came and matches."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        finally:
            self.kill()
        r = json.loads(out.strip().splitlines()[-1])
        blob = self.lab.topology["blob"]
        assert r["error"] is None and r["bytes"] == blob["size"], r
        assert r["sha256"] == blob["sha256"], r
        return r

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


# tap with lbd's default (vnet offload on); afpacket on the slow path on purpose (no vnet
# header, the veth's offloads off): tests/integration/test_offload.py has afpacket with them
@pytest.mark.parametrize("io,offload", [("tap", True), ("afpacket", False)],
                         ids=["tap", "afpacket-no-offload"])
def test_curl_reaches_every_backend_and_blob_is_intact(make_lab, io, offload):
    lab = make_lab(io=io, offload=offload)
    assert lab.topology["lb"]["status"]["io"]["offload"] is offload
    nat_vip(lab, 80)
    out = lab.exec("c1", ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9; do curl -sf --max-time 5 "
                          "http://%s/id; done" % VIP]).stdout.split()
    assert sorted(set(out)) == ["b1", "b2", "b3"] and len(out) == 9
    sha = lab.exec("c1", ["sh", "-c", "curl -sf --max-time 60 http://%s/blob | sha256sum" % VIP],
                   timeout=90).stdout.split()[0]
    assert sha == lab.topology["blob"]["sha256"]
    c = counters(lab)
    assert c["nat_fwd"] > 0 and c["nat_rev"] > 0


def test_backend_sees_the_client_address(make_lab):
    lab = make_lab()
    nat_vip(lab, 9000, backends=BACKENDS[:1])
    p = lab.popen("c1", [sys.executable, "-m", "tools.traffic", "echo-slow", VIP, "9000",
                         "--seconds", "3"], stdout=subprocess.PIPE, text=True)
    try:
        local = json.loads(p.stdout.readline())["started"]          # client ip:port
        assert local.startswith("198.18.0.10:")
        deadline, peers = time.monotonic() + 5, []
        while local not in peers and time.monotonic() < deadline:
            peers = lab.exec("b1", ["ss", "-tnH", "state", "established", "( sport = :9000 )"]
                             ).stdout.split()
        assert local in peers, peers     # b1's socket is connected to the client itself
        out, _ = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    r = json.loads(out.strip().splitlines()[-1])
    assert r["messages"] > 10 and r["mismatched"] == 0 and not r["errors"], r


def test_echo_32MiB_identical(make_lab):
    lab = make_lab()
    nat_vip(lab, 9000)
    r = traffic(lab, "c1", "echo", VIP, "9000", "--bytes", str(32 << 20), "--seed", "7")
    assert r["identical"], r
    assert r["sha256_sent"] == r["sha256_received"]


def test_iperf3_completes(make_lab):
    lab = make_lab()
    # iperf3 opens a control and a data connection that must meet the same server:
    # source hashing keeps a client on one backend
    nat_vip(lab, 5201, scheduler="sh")
    r = lab.exec("c1", ["iperf3", "-c", VIP, "-t", "2", "-J"], timeout=30, check=False)
    d = json.loads(r.stdout)
    assert "error" not in d, d.get("error")
    assert d["end"]["sum_received"]["bytes"] > 0


def test_lbctl_changes_affect_new_connections_and_existing_ones_finish(make_lab):
    lab = make_lab()
    nat_vip(lab, 80)
    # a long download, paced so that it spans the changes below (64 MiB at 4 MiB/s: 16 s)
    p = Download(lab, "http://%s/blob" % VIP, 4 << 20)
    try:
        deadline = time.monotonic() + 10
        long_backend = None
        while long_backend is None and time.monotonic() < deadline:
            flows = [c for c in lbctl(lab, "conns")["conns"] if c["state"] == "ESTABLISHED"]
            if flows:
                long_backend = flows[0]["backend"].split(":")[0]
        assert long_backend, "the download never showed up in conns"
        others = [b for b in BACKENDS if b != long_backend]
        lbctl(lab, "backend", "weight", "%s:80" % VIP, long_backend, "0")
        lbctl(lab, "backend", "del", "%s:80" % VIP, others[0])
        r = traffic(lab, "c1", "http", "http://%s/id" % VIP, "--count", "20")
        name = {b: "b%d" % (i + 1) for i, b in enumerate(BACKENDS)}
        assert r["n_errors"] == 0 and r["backends"] == {name[others[1]]: 20}, r
        stats = lbctl(lab, "stats")
        assert p.running(), "the download should still be running"
        p.result(timeout=60)
    finally:
        p.kill()
    assert stats is not None


def test_malformed_burst_is_counted_and_dropped_while_traffic_goes_on(make_lab):
    lab = make_lab()
    nat_vip(lab, 80)
    before = counters(lab)
    load = lab.popen("c1", [sys.executable, "-m", "tools.traffic", "http",
                            "http://%s/id" % VIP, "--count", "400"], stdout=subprocess.PIPE, text=True)
    try:
        sent = traffic(lab, "b3", "malformed", "eth0", lab.topology["lb"]["mac"], "--count", "600")
        out, _ = load.communicate(timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
    r = json.loads(out.strip().splitlines()[-1])
    assert r["requests"] == 400 and r["n_errors"] == 0, r
    after = counters(lab)
    for kind, n in sent["sent"].items():
        name = EXPECTED_DROPS[kind]
        assert after[name] - before.get(name, 0) == n, (kind, name)
    assert lbctl(lab, "status")["pid"] == lab.topology["lb"]["pid"]   # still the same lbd
