"""The lab itself (tools/lab.py), without the balancer unless a test says otherwise.

```
   P-c1                P-sw                 P-rt              P-sw                P-b1..b3
 [c1 eth0 198.18.0.10]--c1--(brc)--rtc--[eth0 198.18.0.1 | eth1 198.19.0.1]--rts--(brs)--b1--[eth0 198.19.0.11]
                                          route 198.19.100.0/24 via .0.2            |   lo: 198.19.100.0/24
                                                                                    +--b2, b3 (.12, .13)
                                                                  P-lb [mg0 198.19.0.3]--lbmg--+
                                                  data plane 198.19.0.2 (lbd): lbtap or lbdp--dp0 --+
```

Each test builds its own lab under a unique name (make_lab downs it, also on failure) and
bounds every wait. Payloads are random and compared byte for byte.
"""
import json
import os
import subprocess
import sys

import pytest

from tools.lab import Lab, LabError, lb_mac, unique_name, _netns_list

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB_CLI = [sys.executable, "-m", "tools.lab"]


def lab_namespaces(name):
    return [n for n in _netns_list() if n.startswith(name + "-")]


def curl_id(lab, node, ip):
    r = lab.exec(node, ["curl", "-sS", "-m", "5", "-D", "-", "http://%s/id" % ip])
    # text mode has turned the CRLFs into LFs
    head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in head.splitlines()[1:])}
    return body, headers


def test_http_direct_via_rt(make_lab):
    lab = make_lab(start_lbd=False)
    topo = lab.topology
    for b in topo["backends"]:
        body, headers = curl_id(lab, "c1", topo["nodes"][b]["address"])
        assert body == b + "\n"
        assert headers["x-backend"] == b


def test_blob_matches_topology(make_lab):
    lab = make_lab(start_lbd=False, backends=2)
    want = lab.topology["blob"]["sha256"]
    for b in ("b1", "b2"):
        r = lab.exec("c1", ["sh", "-c", "curl -sSf -m 20 http://%s/blob | sha256sum"
                            % lab.topology["nodes"][b]["address"]])
        assert r.stdout.split()[0] == want


ECHO_CLIENT = r"""
import socket, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
data = sys.stdin.buffer.read()
s = socket.create_connection((host, port), timeout=10)
def send():
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)      # half-close: the server must flush and close
t = threading.Thread(target=send); t.start()
got = bytearray()
while True:
    chunk = s.recv(1 << 16)
    if not chunk:
        break
    got += chunk
t.join()
sys.stdout.buffer.write(got)
"""

UDP_CLIENT = r"""
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
msg = os.urandom(1000)
s.sendto(msg, (sys.argv[1], int(sys.argv[2])))
assert s.recvfrom(2048)[0] == msg
"""


def test_echo_1mib_byte_for_byte(make_lab):
    lab = make_lab(start_lbd=False, backends=1)
    payload = os.urandom(1 << 20)
    r = lab.exec("c1", [sys.executable, "-c", ECHO_CLIENT, "198.19.0.11", "9000"],
                 input=payload, text=False, timeout=30)
    assert len(r.stdout) == len(payload)
    assert r.stdout == payload
    lab.exec("c1", [sys.executable, "-c", UDP_CLIENT, "198.19.0.11", "9000"], timeout=15)


def test_two_labs_at_once(make_lab):
    a = make_lab(start_lbd=False, backends=1)
    b = make_lab(start_lbd=False, backends=2, clients=2)
    assert a.name != b.name and lab_namespaces(a.name) and lab_namespaces(b.name)
    assert lb_mac(a.name) != lb_mac(b.name)
    for lab in (a, b):
        for c in lab.topology["clients"]:
            body, headers = curl_id(lab, c, "198.19.0.11")
            assert body == "b1\n" and headers["x-backend"] == "b1"
    a.down()
    assert not lab_namespaces(a.name)
    assert curl_id(b, "c2", "198.19.0.12")[0] == "b2\n"


def test_down_after_crash():
    name = unique_name()
    lab = Lab(name, backends=1, start_lbd=False)
    try:
        lab.up()
        # "crash": processes killed and the state file gone
        for ns in lab_namespaces(name):
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                      text=True).stdout.split():
                os.kill(int(pid), 9)
        os.unlink(lab.state_file)
    finally:
        Lab(name).down()   # a fresh object: only the namespaces are left to go by
    assert not lab_namespaces(name)
    assert not os.path.exists(lab.state_dir)
    Lab(name).down()       # a lab that does not exist: quiet success


def test_down_of_half_built_lab():
    name = unique_name()
    lab = Lab(name, start_lbd=False)
    subprocess.run(["ip", "netns", "add", name + "-b2"], check=True)
    with pytest.raises(LabError, match="already exists"):
        lab.up()
    Lab(name).down()
    assert not lab_namespaces(name)


def test_failed_up_cleans_up(monkeypatch):
    import tools.lab
    monkeypatch.setattr(tools.lab, "NFT_BACKEND", "table ip broken {\n")
    name = unique_name()
    with pytest.raises(LabError, match="nft"):
        Lab(name, backends=1, start_lbd=False).up()
    assert not lab_namespaces(name)
    assert not os.path.exists(Lab(name).state_dir)


def test_names_do_not_collide_by_prefix(make_lab):
    """down of lab X must not touch lab X_2's namespaces (exact match, not a bare prefix)."""
    a = make_lab(start_lbd=False, backends=1)
    b = make_lab(name=a.name + "_2", start_lbd=False, backends=1)
    a.down()
    assert lab_namespaces(b.name) and curl_id(b, "c1", "198.19.0.11")[0] == "b1\n"


def test_cli_up_show_exec_down():
    name = unique_name()
    env = dict(os.environ, PYTHONPATH=REPO)
    run = lambda *args, **kw: subprocess.run(LAB_CLI + list(args), cwd=REPO, env=env,  # noqa
                                             capture_output=True, text=True, timeout=60, **kw)
    try:
        up = run("up", "--name", name, "--backends", "1", "--no-lbd")
        assert up.returncode == 0, up.stderr
        topo = json.loads(up.stdout)
        shown = run("show", "--name", name, "--json")
        assert json.loads(shown.stdout) == topo
        assert run("exec", "--name", name, "c1", "--", "sh", "-c", "exit 7").returncode == 7
        r = run("exec", "--name", name, "b1", "--", "ip", "-br", "addr", "show", "eth0")
        assert r.returncode == 0 and "198.19.0.11/24" in r.stdout
        again = run("up", "--name", name, "--no-lbd")
        assert again.returncode != 0 and "already exists" in again.stderr
    finally:
        assert run("down", "--name", name).returncode == 0
    assert not lab_namespaces(name)
    quiet = run("down", "--name", name)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


# Injects a TCP SYN into a backend straight from its switch port (in P-sw) and reports the
# destination MAC of the backend's SYN-ACK and of its first data segment (the echo of "hello").
# It answers ARP for 198.19.0.2 with the LB MAC, standing in for lbd.
REPLY_PROBE = r"""
import json, os, socket, sys, time
import dpkt
port_if, lbmac, bmac, src_mac, cip, dst, dport = sys.argv[1:8]
mac = lambda s: bytes.fromhex(s.replace(":", ""))
fmt = lambda b: ":".join("%02x" % x for x in b)
ip4 = socket.inet_aton
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((port_if, 0))
s.settimeout(0.1)
sport = 20000 + int.from_bytes(os.urandom(2), "big") % 20000

def send_tcp(flags, seq, ack, data=b""):
    t = dpkt.tcp.TCP(sport=sport, dport=int(dport), flags=flags, seq=seq, ack=ack,
                     win=65535, data=data)
    p = dpkt.ip.IP(src=ip4(cip), dst=ip4(dst), p=6, ttl=64, data=t)
    p.len = len(p)
    s.send(bytes(dpkt.ethernet.Ethernet(src=mac(src_mac), dst=mac(bmac), data=p)))

def wait(pred, what):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            frame, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        eth = dpkt.ethernet.Ethernet(frame)
        a = eth.data
        if isinstance(a, dpkt.arp.ARP) and a.op == 1 and a.tpa == ip4("198.19.0.2"):
            rep = dpkt.arp.ARP(op=2, sha=mac(lbmac), spa=a.tpa, tha=a.sha, tpa=a.spa)
            s.send(bytes(dpkt.ethernet.Ethernet(src=mac(lbmac), dst=a.sha, type=0x0806, data=rep)))
            continue
        if isinstance(eth.data, dpkt.ip.IP) and isinstance(eth.data.data, dpkt.tcp.TCP):
            t = eth.data.data
            if t.sport == int(dport) and t.dport == sport and pred(t):
                return eth, t
    raise SystemExit("no %s within 5 s" % what)

send_tcp(dpkt.tcp.TH_SYN, 1000, 0)
eth, t = wait(lambda t: t.flags & dpkt.tcp.TH_SYN and t.flags & dpkt.tcp.TH_ACK, "SYN-ACK")
out = {"synack_dst": fmt(eth.dst)}
send_tcp(dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, 1001, t.seq + 1, b"hello")
eth, t = wait(lambda t: len(t.data) > 0, "echoed data")
out["data_dst"], out["data"] = fmt(eth.dst), t.data.decode()
send_tcp(dpkt.tcp.TH_RST, 1006, 0)
print(json.dumps(out))
"""


def test_backend_answers_the_way_it_came(make_lab):
    """LB MAC -> real address: the reply goes to 198.19.0.2 (LB MAC). A VIP (dsr) or another
    source MAC: the reply goes to rt. The client address does not exist, so nothing answers
    the stray segments."""
    lab = make_lab(start_lbd=False, backends=1)
    topo = lab.topology
    lbmac, b1 = topo["lb"]["mac"], topo["nodes"]["b1"]
    rt_mac = topo["nodes"]["rt"]["interfaces"][1]["mac"]
    cases = [(lbmac, b1["address"], lbmac),              # nat / splice: back through the LB
             ("06:00:00:00:00:99", b1["address"], rt_mac),  # someone else: main table
             (lbmac, "198.19.100.7", rt_mac)]             # dsr: VIP on lo, back via rt
    for src_mac, dst, want in cases:
        r = lab.exec("sw", [sys.executable, "-c", REPLY_PROBE, "b1", lbmac, b1["mac"], src_mac,
                            "198.18.0.99", dst, "9000"], timeout=20, check=False)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        assert got == {"synack_dst": want, "data_dst": want, "data": "hello"}, (src_mac, dst)


def lbd_available():
    return os.path.exists(os.path.join(REPO, "lb", "daemon.py"))


@pytest.mark.skipif(not lbd_available(), reason="lb/daemon.py not written yet")
@pytest.mark.parametrize("io", ["tap", "afpacket"])
def test_lbd_comes_up(make_lab, io):
    from tools.lab import lbd_request
    lab = make_lab(io=io, backends=1)
    topo = lab.topology
    lb = topo["lb"]
    st = lbd_request(lb["control_socket"], "status")
    assert st["ok"]
    # the lab leaves [io] offload out: lbd's default is the fast path, and it says why
    assert st["result"]["io"]["offload"] is True
    assert st["result"]["io"]["offload_why"].startswith("default")
    dev = lab.exec("sw" if io == "tap" else "lb", ["ip", "-j", "link", "show", lb["interface"]])
    link = json.loads(dev.stdout)[0]
    assert "UP" in link["flags"]
    if io == "tap":
        assert link["master"] == "brs"
    else:
        assert link["address"] == lb["mac"]
        sw = json.loads(lab.exec("sw", ["ip", "-j", "link", "show", "lbdp"]).stdout)[0]
        assert sw["master"] == "brs"
