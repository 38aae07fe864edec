"""lbd's /metrics end to end: scraped from inside the lab while real traffic goes through a nat
VIP and a dsr VIP; the per-VIP and per-backend numbers are what the client sent and got.

   c1 198.18.0.10 -- rt -- brs -+- lbd data plane 198.19.0.2 (TAP)
     nft counters on c1:        +- lb's kernel: mg0 198.19.0.3: health probes, and lbd's
     what it sent to / got      |     [metrics] listen = "198.19.0.3:9100" (scraped from lb)
     from each VIP              +- b1 198.19.0.11  nginx :80   <- nat VIP 198.19.100.1:80 (tcp check)
                                +- b2 198.19.0.12  nginx :80   <- dsr VIP 198.19.100.2:80

lbd counts Ethernet frames, the client's nftables IP packets: bytes differ by 14 a frame.
nat: lbd sees both directions; dsr only the client's (the backend answers directly). Every
figure is a delta around the traffic, so ARP and warm-up packets do not count. One lab for
the module; it is downed also when a test fails.
"""
import json
import os
import re
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lb.cli import request
from tools.lab import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

METRICS = "198.19.0.3:9100"
NAT_VIP, DSR_VIP = "198.19.100.1", "198.19.100.2"
B1, B2 = "198.19.0.11", "198.19.0.12"
REQUESTS = 20
NFT = """table inet twm {
  chain out {
    type filter hook output priority 0; policy accept;
    ip daddr %(nat)s tcp dport 80 counter
    ip daddr %(dsr)s tcp dport 80 counter
  }
  chain in {
    type filter hook input priority 0; policy accept;
    ip saddr %(nat)s tcp sport 80 counter
  }
}
"""
FETCH = r"""
import sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen("http://%s" % sys.argv[1], timeout=10)
    sys.stdout.write("%d\n" % r.status + r.read().decode())
except urllib.error.HTTPError as e:
    sys.stdout.write("%d\n" % e.code)
"""


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    from tools.lab import Lab, unique_name
    lab = Lab(unique_name(), backends=2, lbd_extra='[metrics]\nlisten = "%s"\n' % METRICS)
    try:
        lab.up()
        call(lab, "vip.add", {"vip": NAT_VIP + ":80", "mode": "nat", "scheduler": "rr"})
        call(lab, "backend.add", {"vip": NAT_VIP + ":80", "backend": B1})
        call(lab, "vip.health", {"vip": NAT_VIP + ":80", "check": "tcp", "interval": 0.2,
                                 "timeout": 0.5, "rise": 2, "fall": 2})
        call(lab, "vip.add", {"vip": DSR_VIP + ":80", "mode": "dsr"})
        call(lab, "backend.add", {"vip": DSR_VIP + ":80", "backend": B2})
        lab.exec("c1", ["nft", "-f", "-"], input=NFT % {"nat": NAT_VIP, "dsr": DSR_VIP})
        yield lab
    finally:
        lab.down()


def call(lab, cmd, args=None):
    reply = request(lab.topology["control_socket"], cmd, args or {})
    assert reply["ok"], reply
    return reply["result"]


def fetch(lab, path="/metrics"):
    r = lab.exec("lb", [sys.executable, "-c", FETCH, METRICS + path], timeout=30)
    code, _, body = r.stdout.partition("\n")
    return int(code), body


def scrape(lab):
    code, text = fetch(lab)
    assert code == 200
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def nft_counters(lab):
    """[(packets, bytes)] of c1's rules in order: to nat VIP, to dsr VIP, from nat VIP."""
    text = lab.exec("c1", ["nft", "list", "table", "inet", "twm"]).stdout
    return [(int(p), int(b)) for p, b in re.findall(r"counter packets (\d+) bytes (\d+)", text)]


def curl(lab, vip, n):
    out = lab.exec("c1", ["sh", "-c", "for i in $(seq %d); do curl -sf --max-time 5 "
                          "http://%s/id; done" % (n, vip)], timeout=120).stdout.split()
    assert len(out) == n, out


def wait_for(what, pred, timeout):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out after %ss waiting for %s" % (timeout, what)
        time.sleep(0.05)      # poll interval, bounded by the deadline


def snapshot(lab):
    """(metrics, nft counters) read while c1 sent nothing: nft the same before and after the
    scrape (the last FIN/ACKs of the connections curl closed may still be on their way)."""
    def stable():
        before = nft_counters(lab)
        m = scrape(lab)
        return (m, before) if nft_counters(lab) == before else None
    return wait_for("c1 to go quiet", stable, 10)


def test_per_vip_and_per_backend_match_what_the_client_sent(lab):
    curl(lab, NAT_VIP, 2)          # warm-up: neighbours resolved, lbd's ARP done
    curl(lab, DSR_VIP, 2)
    s0, c0 = snapshot(lab)
    curl(lab, NAT_VIP, REQUESTS)
    curl(lab, DSR_VIP, REQUESTS)
    s1, c1 = snapshot(lab)
    (nat_out, dsr_out, nat_in) = [(p1 - p0, b1 - b0) for (p0, b0), (p1, b1) in zip(c0, c1)]

    def delta(name, **labels):
        return get(s1, name, **labels) - (get(s0, name, **labels) or 0)

    nat = {"vip": NAT_VIP + ":80", "proto": "tcp", "mode": "nat"}
    dsr = {"vip": DSR_VIP + ":80", "proto": "tcp", "mode": "dsr"}
    fwd, rev = {"direction": "client_to_backend"}, {"direction": "backend_to_client"}
    got = {"nat fwd": (delta("threeway_vip_packets_total", **nat, **fwd),
                       delta("threeway_vip_bytes_total", **nat, **fwd)),
           "nat rev": (delta("threeway_vip_packets_total", **nat, **rev),
                       delta("threeway_vip_bytes_total", **nat, **rev)),
           "dsr fwd": (delta("threeway_vip_packets_total", **dsr, **fwd),
                       delta("threeway_vip_bytes_total", **dsr, **fwd))}
    sent = {"nat fwd": (nat_out[0], nat_out[1] + 14 * nat_out[0]),
            "nat rev": (nat_in[0], nat_in[1] + 14 * nat_in[0]),
            "dsr fwd": (dsr_out[0], dsr_out[1] + 14 * dsr_out[0])}
    print("lbd's metrics (frames, bytes):", got, "\nthe client's nftables:", sent)
    assert got == sent
    assert nat_out[0] >= 5 * REQUESTS and dsr_out[0] >= 5 * REQUESTS   # real traffic went
    # dsr: lbd never sees the backend's side
    assert get(s1, "threeway_vip_packets_total", **dsr, **rev) is None
    assert delta("threeway_vip_connections_total", **nat) == REQUESTS
    assert delta("threeway_vip_connections_total", **dsr) == REQUESTS
    # one backend per VIP: each backend's counters are its VIP's
    for b, vip in ((B1, nat), (B2, dsr)):
        be = {"backend": b + ":80"}
        assert delta("threeway_backend_connections_total", **be) == REQUESTS
        assert delta("threeway_backend_packets_total", **be, **fwd) == got[vip["mode"] + " fwd"][0]
        assert delta("threeway_backend_bytes_total", **be, **fwd) == got[vip["mode"] + " fwd"][1]
    assert delta("threeway_backend_packets_total", backend=B1 + ":80", **rev) == got["nat rev"][0]
    assert delta("threeway_backend_packets_total", backend=B2 + ":80", **rev) == 0
    # the fast path's own counters as families
    assert delta("threeway_nat_rev_total") == got["nat rev"][0]
    assert get(s1, "threeway_flows_capacity") == 262144
    st = call(lab, "status")
    io = st["io"]                 # lbd's default: vnet offload on, the TAP's long header
    assert io["offload"] is True
    assert get(s1, "threeway_lbd_info", impl="cy", io_backend="tap", interface="lbtap",
               offload="true", vnet_hdr=str(io["vnet_hdr"]), workers="1") == 1
    assert st["metrics"] == {"listen": METRICS}
    r = subprocess.run([sys.executable, "-m", "lb.cli", "--socket",
                        lab.topology["control_socket"], "status"],
                       capture_output=True, text=True, timeout=20, cwd=REPO)
    assert re.search(r"^metrics\.listen:\s+%s$" % re.escape(METRICS), r.stdout, re.M), r.stdout


def test_health_gauge_flips_when_a_backend_stops(lab):
    up = {"vip": NAT_VIP + ":80", "proto": "tcp", "backend": B1 + ":80"}
    wait_for("b1 up", lambda: get(scrape(lab), "threeway_backend_up", **up) == 1, 10)
    d = os.path.join(lab.topology["state_dir"], "b1")
    lab.exec("b1", ["sh", "-c", "kill $(cat %s/nginx.pid)" % d])
    wait_for("b1 down in /metrics", lambda: get(scrape(lab), "threeway_backend_up", **up) == 0,
             15)
    lab.popen("b1", ["nginx", "-c", os.path.join(d, "nginx.conf"), "-p", d,
                     "-e", os.path.join(d, "nginx-error.log")],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for("b1 up again in /metrics",
             lambda: get(scrape(lab), "threeway_backend_up", **up) == 1, 15)


def test_other_paths_are_refused(lab):
    assert fetch(lab, "/")[0] == 404
    assert fetch(lab, "/metrics?x=1")[0] == 200


def test_a_metrics_address_in_use_stops_lbd_with_exit_1(lab):
    """A second lbd in the lb namespace, its own TAP and socket, the first one's port."""
    d = lab.topology["state_dir"]
    with open(lab.topology["lb"]["config"]) as f:
        text = f.read()
    text = text.replace('interface = "lbtap"', 'interface = "lbtap9"').replace(
        "lbd.sock", "lbd9.sock")
    cfg = os.path.join(d, "lbd9.toml")
    with open(cfg, "w") as f:
        f.write(text)
    r = lab.exec("lb", [sys.executable, "-m", "lb.daemon", "-c", cfg], check=False, timeout=60,
                 cwd=REPO)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "metrics.listen %s: cannot listen" % METRICS in r.stderr, r.stderr
    assert fetch(lab)[0] == 200          # the first lbd still serves
