"""UDP through nat, dsr and tunnel, end to end: the lab's UDP echo and a real DNS server.

   c1 198.18.0.10 -- rt -+- brs: lbd (TAP) 198.19.0.2
                         |        b1 b2 b3 198.19.0.11-13  (VIPs on lo): echo :9000, dnsmasq :53
                         +- brr: r1 r2 r3 198.19.200.11-13 (VIPs on lo, vxlan0): the same
   nat     c1 -> VIP -> lbd (DNAT) -> bN's address; bN -> lbd (un-DNAT) -> rt -> c1
   dsr     c1 -> VIP -> lbd (the backend's MAC) -> bN; bN answers from the VIP, via rt
   tunnel  c1 -> VIP -> lbd (VXLAN) -> rt -> rN; rN answers from the VIP, via rt

A dsr or tunnel backend receives datagrams addressed to the VIP it holds on lo; its server
must answer from that address (IP_PKTINFO, as DNS servers do), or the client, which sent to
the VIP, takes the answer for someone else's. tools.traffic udp uses unconnected sockets and
counts an answer only when it comes from VIP:port; dig uses connected sockets, so a
wrong-source answer never reaches it (it times out, exit 9).

One lab for the module; each test adds its own VIPs, on addresses no other test uses.
"""
import os
import shutil
import subprocess

import pytest

from .test_nat import counters, lbctl, traffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LOCAL = {"b1": "198.19.0.11", "b2": "198.19.0.12", "b3": "198.19.0.13"}
REMOTE = {"r1": "198.19.200.11", "r2": "198.19.200.12", "r3": "198.19.200.13"}
# mode -> (echo VIP, DNS VIP, its backends, the counter of its client -> backend direction)
MODES = {"nat": ("198.19.100.21", "198.19.100.31", LOCAL, "nat_fwd"),
         "dsr": ("198.19.100.22", "198.19.100.32", LOCAL, "dsr_fwd"),
         "tunnel": ("198.19.100.23", "198.19.100.33", REMOTE, "tunnel_fwd")}
SOCKETS, DATAGRAMS = 400, 5
DNS_NAME, DNS_ADDRESS = "www.lab.test", "198.18.5.5"   # the record data is lab data too
DNS_ID = "id.lab.test"                                 # TXT: the backend's name
DNS_QUERIES = 30
DNS_READY_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def lab():
    from tools.lab import Lab, unique_name
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    lab = Lab(unique_name(), backends=3, remote_backends=3)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def udp_vip(lab, vip, port, mode, backends):
    ep = "%s:%d" % (vip, port)
    lbctl(lab, "vip", "add", ep, "--mode", mode, "--proto", "udp")
    for address in backends.values():
        lbctl(lab, "backend", "add", ep, address, "--proto", "udp")


@pytest.mark.parametrize("mode", list(MODES))
def test_400_sockets_x_5_datagrams_answered_from_the_vip_and_spread(lab, mode):
    vip, _, backends, fwd = MODES[mode]
    udp_vip(lab, vip, 9000, mode, backends)
    before = counters(lab)
    r = traffic(lab, "c1", "udp", vip, "9000", "--sockets", str(SOCKETS), "--count",
                str(DATAGRAMS), "--size", "200", "--seed", str(len(mode)), "--timeout", "30",
                timeout=60)
    after = counters(lab)
    moved = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert r["answered"] == SOCKETS * DATAGRAMS, (r, moved)
    assert r["wrong_source"] == 0 and r["mismatched"] == 0 and r["lost"] == 0, r
    assert r["id_lost"] == 0 and r["moved"] == 0, r      # each flow stays on its backend
    # spread: every backend holds sockets, none fewer than half its share
    assert sorted(r["backends"]) == sorted(backends), r["backends"]
    assert min(r["backends"].values()) >= SOCKETS // len(backends) // 2, r["backends"]
    # the LB made one flow per socket and carried every datagram toward the backends;
    # it sees the answers in nat only
    sent = SOCKETS * (DATAGRAMS + 2) + r["retries"] - r["send_errors"]
    assert moved["flow_created"] == SOCKETS, moved
    assert moved[fwd] == sent, moved
    assert moved.get("nat_rev", 0) == (sent if mode == "nat" else 0), moved


# mode -> (VIP for the big datagrams, its counters: later fragments toward the backends, back)
FRAG_MODES = {"nat": ("198.19.100.24", "nat_frag_fwd", "nat_frag_rev"),
              "dsr": ("198.19.100.25", "dsr_frag_fwd", None),
              "tunnel": ("198.19.100.26", "tunnel_frag_fwd", None)}


@pytest.mark.parametrize("mode", list(FRAG_MODES))
def test_datagrams_of_4000_and_30000_bytes_come_back_identical(lab, mode):
    """IPv4 fragments both ways: the client's stack cuts each datagram into fragments, lbd
    schedules the first and sends the rest after it (fastpath/frag.pxi); tunnel also cuts
    its too-big VXLAN packets into outer fragments (punt_tunnel_frag). The answers, cut by
    the backend's stack, come back through lbd for nat (translated), directly otherwise."""
    vip, later, back = FRAG_MODES[mode]
    backends = MODES[mode][2]
    udp_vip(lab, vip, 9000, mode, backends)
    for size in (4000, 30000):
        before = counters(lab)
        r = traffic(lab, "c1", "udp", vip, "9000", "--sockets", "12", "--count", "3",
                    "--size", str(size), "--seed", str(size), "--timeout", "30", timeout=60)
        after = counters(lab)
        moved = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        assert r["answered"] == 36 and r["mismatched"] == 0 and r["wrong_source"] == 0, (
            size, r, moved)
        # later fragments: sent by the mode, or (tunnel, too big in VXLAN) punted to be cut
        sent_later = moved[later] + moved.get("punt_tunnel_frag", 0)
        assert moved["frag_first"] >= 36 and sent_later >= 36 * (size // 1480), (size, moved)
        assert moved.get("drop_frag_no_first", 0) == 0, (size, moved)
        if back:
            assert moved[back] >= 36 * (size // 1480), (size, moved)
        if mode == "tunnel":
            assert moved["punt_tunnel_frag"] > 0, moved


def dnsmasq_conf(d, node, listen):
    """dnsmasq in its default mode: the wildcard socket, each answer sent from the query's
    destination (IP_PKTINFO); listen-address restricts what it answers to our addresses."""
    return "\n".join(["port=53", "no-resolv", "no-hosts", "no-poll", "log-facility=-",
                      "pid-file=%s" % os.path.join(d, "dnsmasq.pid"),
                      "local=/lab.test/",
                      "host-record=%s,%s" % (DNS_NAME, DNS_ADDRESS),
                      "txt-record=%s,%s" % (DNS_ID, node)]
                     + ["listen-address=%s" % a for a in listen]) + "\n"


@pytest.fixture(scope="module")
def dns(lab):
    """dnsmasq on every backend, answering for the DNS VIPs and its own address (nat);
    stopped by PID, waited for, also when a test fails."""
    from tools.lab import LabError, _wait
    missing = [c for c in ("dnsmasq", "dig") if shutil.which(c) is None]
    if missing:
        pytest.fail("not installed: %s (tools/run.sh install gets dnsmasq-base and "
                    "bind9-dnsutils)" % " ".join(missing))
    vips = [dns_vip for _, dns_vip, _, _ in MODES.values()]
    procs = {}
    try:
        for node, address in {**LOCAL, **REMOTE}.items():
            d = os.path.join(lab.state_dir, node)
            conf = os.path.join(d, "dnsmasq.conf")
            with open(conf, "w") as f:
                f.write(dnsmasq_conf(d, node, vips + [address]))
            with open(os.path.join(d, "dnsmasq.log"), "ab") as log:
                procs[node] = lab.popen(node, ["dnsmasq", "--keep-in-foreground",
                                               "--conf-file=" + conf],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log)

        def listening(node):
            if procs[node].poll() is not None:
                raise LabError("dnsmasq on %s exited with %s; see %s" % (
                    node, procs[node].returncode,
                    os.path.join(lab.state_dir, node, "dnsmasq.log")))
            return "0.0.0.0:53 " in lab.exec(node, ["ss", "-Hlun"]).stdout
        for node in procs:
            _wait("dnsmasq on %s listening on udp :53" % node, lambda: listening(node),
                  DNS_READY_TIMEOUT)
        yield procs
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


@pytest.mark.parametrize("mode", list(MODES))
def test_dnsmasq_behind_a_udp_vip_answers_dig(lab, dns, mode):
    _, vip, backends, fwd = MODES[mode]
    udp_vip(lab, vip, 53, mode, backends)
    dig = ["dig", "@" + vip, "+time=2", "+tries=3", "+short"]
    r = lab.exec("c1", dig + [DNS_NAME, "A"], timeout=30, check=False)
    assert r.returncode == 0 and r.stdout.split() == [DNS_ADDRESS], (r.returncode, r.stdout,
                                                                     r.stderr)
    # one dig, DNS_QUERIES queries, each from a socket of its own (a new source port): the
    # TXT answers name the backends that held them
    batch = os.path.join(lab.state_dir, "dig-%s.batch" % mode)
    with open(batch, "w") as f:
        f.write("".join("%s TXT\n" % DNS_ID for _ in range(DNS_QUERIES)))
    r = lab.exec("c1", dig + ["-f", batch], timeout=60, check=False)
    names = [line.strip('"') for line in r.stdout.split()]
    assert r.returncode == 0 and len(names) == DNS_QUERIES, (r.returncode, r.stdout, r.stderr)
    assert sorted(set(names)) == sorted(backends), names
    assert counters(lab)[fwd] > 0
