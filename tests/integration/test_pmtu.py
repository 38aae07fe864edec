"""Path MTU discovery through every mode, in the manner of the kernel's
conntrack_icmp_related.sh: a hop of MTU 1400 on the router's client side, the clients still
announcing MSS 1460. The backends' 1500-byte segments meet rt's 1400-byte interface, rt
answers each with ICMP fragmentation needed addressed to the source it saw (the VIP), which
reaches lbd; lbd must get it to the backend that sent the segment (translated for nat and
splice, to the MAC for dsr (and hop, its quoted seq moved back), in VXLAN for tunnel), or the download stalls forever (a PMTU
black hole). So: /blob through every mode completes with the right sha256, the mode's ICMP
counter moved, and the backend that served it has learnt the path MTU (`ip route get`).
The same lab carries a client whose segments all have IP options (record route) through
every mode: nat and splice find the TCP header after them and keep them, dsr and tunnel
leave the IP header alone.

   c1 (route mtu lock 1400, advmss 1460) -- rt [eth0 mtu 1400] -- brs: lbd, b1 b2
                                              rt -- brr: r1 r2 (tunnel)
"""
import re

import pytest

from .test_nat import counters, lbctl

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HOP = 1400
CLIENT = "198.18.0.10"
LOCAL = ["198.19.0.11", "198.19.0.12"]
REMOTE = ["198.19.200.11", "198.19.200.12"]
# mode -> (VIP, backends, the counter of ICMP errors forwarded to a backend, route mark)
MODES = {
    "nat": ("198.19.100.1", LOCAL, "nat_icmp_fwd", 1),        # replies marked: table via LB
    "dsr": ("198.19.100.2", LOCAL, "dsr_icmp_fwd", None),
    "splice": ("198.19.100.3", LOCAL, "splice_icmp_fwd", 1),
    "tunnel": ("198.19.100.7", REMOTE, "tunnel_icmp_fwd", None),
    # hop: the error quotes the backend's segment as its shim sent it (client's view): lbd
    # sends it to the backend's MAC with the quoted seq back in the backend's space
    "hop": ("198.19.100.9", LOCAL, "splice_icmp_fwd", None),
}


@pytest.fixture(scope="module")
def lab():
    import os
    from tools.lab import Lab, unique_name
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    lab = Lab(unique_name(), backends=2, remote_backends=2, client_hop_mtu=HOP)
    try:
        lab.up()
        for mode, (vip, backends, _, _) in MODES.items():
            ep = "%s:80" % vip
            lbctl(lab, "vip", "add", ep, "--mode", mode)
            for b in backends:
                lbctl(lab, "backend", "add", ep, b)
        yield lab
    finally:
        lab.down()


def node_of(lab, address):
    return next(n for n, v in lab.topology["nodes"].items() if v.get("address") == address)


def learnt_mtu(lab, node, mark):
    out = lab.exec(node, ["ip", "route", "get", CLIENT] + (["mark", str(mark)] if mark else [])
                   ).stdout
    m = re.search(r"\bmtu (\d+)", out)
    return int(m.group(1)) if m else None


def test_the_hop_is_there(lab):
    out = lab.exec("rt", ["ip", "-o", "link", "show", "eth0"]).stdout
    assert " mtu %d " % HOP in out
    assert lab.topology["client_hop_mtu"] == HOP


@pytest.mark.parametrize("mode", list(MODES))
def test_blob_through_a_1400_hop(lab, mode):
    vip, backends, counter, mark = MODES[mode]
    nodes = [node_of(lab, b) for b in backends]
    for n in nodes:
        lab.exec(n, ["ip", "route", "flush", "cache"])
    before = counters(lab)
    sha = lab.exec("c1", ["sh", "-c", "curl -sf --max-time 60 http://%s/blob | sha256sum" % vip],
                   timeout=90).stdout.split()[0]
    assert sha == lab.topology["blob"]["sha256"], mode
    after = counters(lab)
    assert after.get(counter, 0) - before.get(counter, 0) >= 1, (mode, after)
    assert after.get("drop_icmp_no_flow", 0) == before.get("drop_icmp_no_flow", 0), after
    assert after.get("drop_icmp_bad", 0) == before.get("drop_icmp_bad", 0), after
    learnt = {n: learnt_mtu(lab, n, mark) for n in nodes}
    assert HOP in learnt.values(), (mode, learnt)


CLIENT_WITH_OPTIONS = r"""
import socket, sys
s = socket.socket()
# record route with 4 slots, then a NOP: every segment of this socket carries 20 bytes of options
s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([7, 19, 4]) + bytes(16) + b"\x01")
s.settimeout(10)
s.connect((sys.argv[1], 80))
s.sendall(b"GET /id HTTP/1.0\r\nHost: x\r\n\r\n")
out = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    out += b
print(out.split(b"\r\n\r\n", 1)[1].decode().strip(), out.split(b" ")[1].decode())
"""


@pytest.mark.parametrize("mode", list(MODES))
def test_a_client_with_ip_options(lab, mode):
    import sys
    vip, backends, _, _ = MODES[mode]
    before = counters(lab)
    r = lab.exec("c1", [sys.executable, "-c", CLIENT_WITH_OPTIONS, vip], timeout=30)
    name, status = r.stdout.split()
    assert status == "200" and lab.topology["nodes"][name]["address"] in backends, (mode, r.stdout)
    after = counters(lab)
    assert after.get("drop_ip_options", 0) == before.get("drop_ip_options", 0), after
