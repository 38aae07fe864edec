"""The lab's remote backends (tools/lab.py, --remote-backends) and the tunnel check of doctor.

```
   P-c1                 P-rt                               P-b1, P-b2 (brs)
 [c1 198.18.0.10]--brc--[eth0 .0.1 | eth1 198.19.0.1]--brs--[eth0 198.19.0.11/.12, vxlan0]
                         [eth2 198.19.200.1]         +--[P-lb mg0 198.19.0.3]  (sends the VXLAN)
                                |
                               brr--[r1 eth0 198.19.200.11, vxlan0]  lo: 198.19.100.0/24
                                 +--[r2 eth0 198.19.200.12, vxlan0]

   P-lb --VXLAN(198.19.0.2 -> 198.19.200.11, UDP 4789, VNI 4242)--> rt eth1 -> eth2 -> r1
   r1 vxlan0 decapsulates: SYN 198.18.0.10 -> VIP:80, for the inner MAC; r1's TCP answers
   SYN-ACK VIP -> 198.18.0.10 via its default route: r1 eth0 -> rt eth2 -> rt eth0 -> c1
```

One lab for the whole module (the `lab` fixture: unique name, downed also when a test
fails); tests that break a backend repair it in `finally` and show the repair worked. Every
wait and every capture is bounded.
"""
import json
import os
import select
import subprocess
import sys

import pytest

from tools.lab import (VIP_RANGE, VXLAN_DEV, VXLAN_INNER_MAC, VXLAN_PORT, VXLAN_VNI, Lab,
                       LabError, _netns_list, lb_mac, unique_name, vxlan_commands)

from .test_lab import ECHO_CLIENT, UDP_CLIENT, curl_id, lab_namespaces

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB_CLI = [sys.executable, "-m", "tools.lab"]
VIP = "198.19.100.1"
CLIENT = "198.18.0.10"     # c1: the SYN-ACK really reaches a client (which resets it)


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    lab = Lab(unique_name(), backends=2, remote_backends=2)
    lab.up()               # a failed up removes what it made
    try:
        yield lab
    finally:
        lab.down()


def doctor(lab, node, *args, mode="tunnel"):
    """`lb-lab doctor NODE --vip VIP ...` as a user runs it; (exit status, stdout)."""
    argv = LAB_CLI + ["doctor", "--name", lab.name, node, "--vip", VIP] + list(args)
    argv += ["--mode", mode] if mode else []
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert not r.stderr, r.stderr
    return r.returncode, r.stdout


def vxlan_link(lab, node):
    return json.loads(lab.exec(node, ["ip", "-d", "-j", "link", "show", VXLAN_DEV]).stdout)[0]


def restore_vxlan(lab, node):
    """Give `node` its VXLAN device back exactly as the lab makes it."""
    lab.exec(node, ["ip", "link", "del", VXLAN_DEV], check=False)
    lab.exec(node, ["ip", "-batch", "-"], input=vxlan_commands(lab.topology["nodes"][node]
                                                              ["address"]))
    lab.exec(node, ["sysctl", "-qw", "net.ipv4.conf.%s.rp_filter=0" % VXLAN_DEV])


def test_remote_backends_have_a_net_of_their_own(lab):
    topo = lab.topology
    assert topo["backends"] == ["b1", "b2"] and topo["remote_backends"] == ["r1", "r2"]
    assert topo["vxlan"] == {"device": VXLAN_DEV, "vni": VXLAN_VNI, "port": VXLAN_PORT,
                             "inner_mac": VXLAN_INNER_MAC}
    for i, r in enumerate(("r1", "r2"), 1):
        n = topo["nodes"][r]
        addr = "198.19.200.%d" % (10 + i)
        assert (n["role"], n["address"], n["gateway"]) == ("remote_backend", addr, "198.19.200.1")
        assert n["vxlan"] == {"device": VXLAN_DEV, "vni": VXLAN_VNI, "port": VXLAN_PORT,
                              "mac": VXLAN_INNER_MAC, "local": addr}
        assert n["ns"] in _netns_list()
        # on brr, not on the LB's segment brs
        port = json.loads(lab.exec("sw", ["ip", "-j", "link", "show", r]).stdout)[0]
        assert port["master"] == "brr"
        eth0 = json.loads(lab.exec(r, ["ip", "-j", "addr", "show", "eth0"]).stdout)[0]
        assert eth0["address"] == n["mac"]
        assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"]] == [(addr, 24)]
        lo = json.loads(lab.exec(r, ["ip", "-j", "-4", "addr", "show", "lo"]).stdout)[0]
        assert "198.19.100.0" in [a["local"] for a in lo["addr_info"]]
        routes = json.loads(lab.exec(r, ["ip", "-j", "route", "show", "default"]).stdout)
        assert [(x["gateway"], x["dev"]) for x in routes] == [("198.19.200.1", "eth0")]
        sysctls = lab.exec(r, ["sysctl", "-n"] + ["net.ipv4.conf.%s.%s" % kv for kv in (
            ("all", "rp_filter"), ("default", "rp_filter"), ("eth0", "rp_filter"),
            ("lo", "rp_filter"), (VXLAN_DEV, "rp_filter"), ("all", "arp_ignore"),
            ("eth0", "arp_ignore"), ("all", "arp_announce"), ("eth0", "arp_announce"))]).stdout
        assert sysctls.split() == ["0"] * 5 + ["1", "1", "2", "2"]
    rt = json.loads(lab.exec("rt", ["ip", "-j", "-4", "addr", "show", "eth2"]).stdout)[0]
    assert [a["local"] for a in rt["addr_info"]] == ["198.19.200.1"]
    assert [i["name"] for i in topo["nodes"]["rt"]["interfaces"]] == ["eth0", "eth1", "eth2"]


def test_remote_backends_serve_what_b_serves(lab):
    """nginx (/id with X-Backend, /blob), echo TCP+UDP, iperf3, reached from c1 via rt."""
    for r in ("r1", "r2"):
        body, headers = curl_id(lab, "c1", lab.topology["nodes"][r]["address"])
        assert body == r + "\n" and headers["x-backend"] == r
    r1 = lab.topology["nodes"]["r1"]["address"]
    sha = lab.exec("c1", ["sh", "-c", "curl -sSf -m 20 http://%s/blob | sha256sum" % r1],
                   timeout=30).stdout.split()[0]
    assert sha == lab.topology["blob"]["sha256"]
    payload = os.urandom(256 << 10)
    got = lab.exec("c1", [sys.executable, "-c", ECHO_CLIENT, r1, "9000"], input=payload,
                   text=False, timeout=30).stdout
    assert got == payload
    lab.exec("c1", [sys.executable, "-c", UDP_CLIENT, r1, "9000"], timeout=15)
    assert lab.exec("c1", ["iperf3", "-c", r1, "-n", "1M"], timeout=20).returncode == 0


@pytest.mark.parametrize("node", ["r1", "r2", "b1", "b2"])
def test_every_backend_has_the_vxlan_device(lab, node):
    link = vxlan_link(lab, node)
    info = link["linkinfo"]["info_data"]
    assert (info["id"], info["port"], info["learning"]) == (VXLAN_VNI, VXLAN_PORT, False)
    assert info["local"] == lab.topology["nodes"][node]["address"]
    assert link["address"] == VXLAN_INNER_MAC and "UP" in link["flags"]
    assert lab.exec(node, ["sysctl", "-n", "net.ipv4.conf.%s.rp_filter" % VXLAN_DEV]
                    ).stdout.strip() == "0"
    assert lab.topology["nodes"][node]["vxlan"]["device"] == VXLAN_DEV


# Sends VXLAN frames out of an interface, as the LB's tunnel mode would: each spec is
# {outer src/dst, VNI, UDP port, inner dst MAC, TCP sport}; the inner packet is a SYN from the
# client to VIP:dport. Checksums: dpkt fills zero fields on serialisation.
VXLAN_SEND = r"""
import json, os, socket, struct, sys
import dpkt
a = json.loads(sys.argv[1])
mac = lambda s: bytes.fromhex(s.replace(":", ""))
ip4 = socket.inet_aton
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((a["ifname"], 0))
for f in a["frames"]:
    syn = dpkt.tcp.TCP(sport=f["sport"], dport=a["dport"], flags=dpkt.tcp.TH_SYN,
                       seq=f["seq"], win=65535, opts=b"\x02\x04\x05\xb4")   # MSS 1460
    syn.off = 6
    inner_ip = dpkt.ip.IP(src=ip4(a["client"]), dst=ip4(a["vip"]), p=6, ttl=64, data=syn)
    inner_ip.len = len(inner_ip)
    inner = dpkt.ethernet.Ethernet(src=mac(a["inner_src_mac"]), dst=mac(f["inner_dst_mac"]),
                                   data=inner_ip)
    vxlan = struct.pack("!B3xI", 0x08, f["vni"] << 8)       # flags: I (VNI valid)
    udp = dpkt.udp.UDP(sport=49152 + f["sport"] % 16384, dport=f["port"],
                       data=vxlan + bytes(inner))
    udp.ulen = len(udp)
    outer = dpkt.ip.IP(src=ip4(a["outer_src"]), dst=ip4(a["outer_dst"]), p=17, ttl=64,
                       data=udp)
    outer.len = len(outer)
    s.send(bytes(dpkt.ethernet.Ethernet(src=mac(a["src_mac"]), dst=mac(a["dst_mac"]),
                                        data=outer)))
"""

# Captures on every interface of the namespace it runs in (AF_PACKET, ETH_P_ALL) for at most
# a["timeout"] s: TCP segments from VIP:dport to the client on the given ports, and VXLAN
# datagrams to a["outer_dst"]. Prints "ready" once the socket is bound, then one JSON line.
# Stops a["grace"] s after the segment for a["want_sport"] left on a["out_if"], so that the
# segments it must NOT see (the other ports) have had as long as the wanted one to show up.
CAPTURE = r"""
import json, socket, sys, time
import dpkt
a = json.loads(sys.argv[1])
fmt = lambda b: ":".join("%02x" % x for x in b)
ip4 = socket.inet_aton
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.settimeout(0.05)
print("ready", flush=True)
seen, vxlan, t_end = [], [], time.monotonic() + a["timeout"]
while time.monotonic() < t_end:
    try:
        frame, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    eth = dpkt.ethernet.Ethernet(frame)
    ip = eth.data
    if not isinstance(ip, dpkt.ip.IP):
        continue
    where = {"if": addr[0], "pkttype": addr[2], "src_mac": fmt(eth.src),
             "dst_mac": fmt(eth.dst), "ttl": ip.ttl}
    t = ip.data
    if (isinstance(t, dpkt.udp.UDP) and t.dport == a["port"]
            and ip.dst == ip4(a["outer_dst"])):
        vxlan.append(where)
        continue
    if not (isinstance(t, dpkt.tcp.TCP) and ip.src == ip4(a["vip"])
            and ip.dst == ip4(a["client"]) and t.sport == a["dport"]
            and t.dport in a["sports"]):
        continue
    seen.append(dict(where, sport=t.sport, dport=t.dport, flags=t.flags, ack=t.ack))
    if (t.dport == a["want_sport"] and addr[0] == a["out_if"]
            and addr[2] == socket.PACKET_OUTGOING):
        t_end = min(t_end, time.monotonic() + a["grace"])
print(json.dumps({"segments": seen, "vxlan": vxlan}))
"""


def capture_while(lab, node, spec, action):
    """Run CAPTURE in `node` around action(); returns its JSON. The capture process is ours:
    it is killed by its own handle if anything goes wrong."""
    p = lab.popen(node, [sys.executable, "-c", CAPTURE, json.dumps(spec)],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([p.stdout], [], [], 10)
        assert ready and p.stdout.readline().strip() == "ready", p.stderr.read()
        action()
        out, err = p.communicate(timeout=spec["timeout"] + 10)
        assert p.returncode == 0, err
        return json.loads(out)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=5)


def test_a_vxlan_frame_reaches_r1s_tcp_stack_and_r1_answers_via_its_default_route(lab):
    """From P-lb, a VXLAN frame as the tunnel mode sends it (outer 198.19.0.2 -> r1, UDP 4789,
    VNI 4242, inner MAC) carries a SYN client -> VIP:80; r1 answers SYN-ACK VIP -> client,
    and it goes r1 -> rt eth2 -> rt eth0 (r1's default route), not back into a tunnel.
    Two controls sent first, a wrong VNI and a wrong inner MAC, get no answer."""
    topo = lab.topology
    rt_ifs = {i["name"]: i for i in topo["nodes"]["rt"]["interfaces"]}
    r1 = topo["nodes"]["r1"]
    sport = 20000 + int.from_bytes(os.urandom(2), "big") % 20000
    good, bad_vni, bad_mac = sport, sport + 1, sport + 2
    frame = dict(vni=VXLAN_VNI, port=VXLAN_PORT, inner_dst_mac=VXLAN_INNER_MAC,
                 seq=int.from_bytes(os.urandom(4), "big") >> 1)
    send = {"ifname": "mg0", "src_mac": topo["lb"]["management"]["mac"],
            "dst_mac": rt_ifs["eth1"]["mac"],      # the LB's gateway: rt routes the outer packet
            "outer_src": topo["lb"]["address"], "outer_dst": r1["address"],
            "inner_src_mac": lb_mac(lab.name), "client": CLIENT, "vip": VIP, "dport": 80,
            "frames": [dict(frame, sport=bad_vni, vni=VXLAN_VNI + 1),
                       dict(frame, sport=bad_mac, inner_dst_mac="02:00:00:00:00:01"),
                       dict(frame, sport=good)]}
    spec = {"vip": VIP, "client": CLIENT, "dport": 80, "sports": [good, bad_vni, bad_mac],
            "want_sport": good, "out_if": "eth0", "port": VXLAN_PORT,
            "outer_dst": r1["address"], "timeout": 5, "grace": 0.5}
    got = capture_while(lab, "rt", spec, lambda: lab.exec(
        "lb", [sys.executable, "-c", VXLAN_SEND, json.dumps(send)], timeout=15))

    # the three VXLAN frames were routed by rt: in on eth1, out on eth2
    assert [v["if"] for v in got["vxlan"]].count("eth1") == 3, got
    assert [v["if"] for v in got["vxlan"]].count("eth2") == 3, got
    segs = got["segments"]
    assert all(s["dport"] == good for s in segs), "a control was answered: %s" % segs
    synacks = [s for s in segs if s["flags"] & 0x12 == 0x12 and s["ack"] == frame["seq"] + 1]
    by_if = {s["if"]: s for s in synacks}
    assert set(by_if) >= {"eth2", "eth0"}, segs
    # r1 sent it to its gateway (rt eth2's MAC) from its own eth0, TTL 64; rt forwarded it
    # out of its client-side eth0, TTL 63
    assert (by_if["eth2"]["src_mac"], by_if["eth2"]["dst_mac"], by_if["eth2"]["ttl"]) == (
        r1["mac"], rt_ifs["eth2"]["mac"], 64)
    assert (by_if["eth0"]["src_mac"], by_if["eth0"]["dst_mac"], by_if["eth0"]["ttl"]) == (
        rt_ifs["eth0"]["mac"], topo["nodes"]["c1"]["mac"], 63)


TUNNEL_CHECKS = ["vxlan_device", "vxlan_up", "vxlan_mac", "rp_filter", "vip_local", "listening"]


@pytest.mark.parametrize("node", ["r1", "r2", "b1"])
def test_doctor_tunnel_passes(lab, node):
    rc, out = doctor(lab, node, "--port", "80", "--json")
    res = json.loads(out)
    assert rc == 0 and res["ok"], out
    assert [c["check"] for c in res["checks"]] == TUNNEL_CHECKS
    assert (res["device"], res["vni"], res["port"], res["inner_mac"]) == (
        VXLAN_DEV, VXLAN_VNI, VXLAN_PORT, VXLAN_INNER_MAC)
    rc, text = doctor(lab, node, "--port", "80")
    assert rc == 0 and text.splitlines()[-1] == "tunnel backend: ready", text


# (what is broken on r2, how, the checks that must fail, what their message must say)
BREAKAGES = [
    ("no device", [["ip", "link", "del", VXLAN_DEV]],
     {"vxlan_device": ["no VXLAN device with VNI %d" % VXLAN_VNI, "dstport %d" % VXLAN_PORT]}),
    ("Linux's default port", [["ip", "link", "del", VXLAN_DEV],
                              ["ip", "link", "add", VXLAN_DEV, "address", VXLAN_INNER_MAC,
                               "type", "vxlan", "id", str(VXLAN_VNI), "nolearning"],
                              ["ip", "link", "set", VXLAN_DEV, "up"]],
     {"vxlan_device": ["port 8472, not %d" % VXLAN_PORT, "Linux's default"]}),
    ("another VNI", [["ip", "link", "del", VXLAN_DEV],
                     ["ip", "link", "add", VXLAN_DEV, "address", VXLAN_INNER_MAC, "type",
                      "vxlan", "id", "7", "dstport", str(VXLAN_PORT)],
                     ["ip", "link", "set", VXLAN_DEV, "up"]],
     {"vxlan_device": ["no VXLAN device with VNI %d" % VXLAN_VNI, "found vxlan0 (VNI 7"]}),
    ("down", [["ip", "link", "set", VXLAN_DEV, "down"]],
     {"vxlan_up": ["ip link set %s up" % VXLAN_DEV]}),
    ("another MAC", [["ip", "link", "set", VXLAN_DEV, "address", "02:00:00:00:00:01"]],
     {"vxlan_mac": ["02:00:00:00:00:01", "ip link set %s address %s"
                    % (VXLAN_DEV, VXLAN_INNER_MAC)]}),
    ("strict rp_filter", [["sysctl", "-qw", "net.ipv4.conf.%s.rp_filter=1" % VXLAN_DEV]],
     {"rp_filter": ["%s=1" % VXLAN_DEV, "net.ipv4.conf.%s.rp_filter=0" % VXLAN_DEV]}),
]


@pytest.mark.parametrize("what,breaks,fails", BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_doctor_tunnel_names_what_is_wrong(lab, what, breaks, fails):
    try:
        for argv in breaks:
            lab.exec("r2", argv)
        rc, out = doctor(lab, "r2", "--port", "80", "--json")
        res = json.loads(out)
        assert rc == 1 and not res["ok"], out
        failed = {c["check"]: c["detail"] for c in res["checks"] if not c["ok"]}
        assert sorted(failed) == sorted(fails), failed
        for check, words in fails.items():
            for w in words:
                assert w in failed[check], (check, w, failed[check])
        rc, text = doctor(lab, "r2", "--port", "80")
        assert rc == 1 and text.splitlines()[-1] == "tunnel backend: NOT ready", text
        assert all(("FAIL %-22s" % c) in text for c in fails), text
    finally:
        restore_vxlan(lab, "r2")
    assert doctor(lab, "r2", "--port", "80")[0] == 0


def test_doctor_tunnel_finds_no_listener(lab):
    rc, out = doctor(lab, "r1", "--port", "81", "--json")
    failed = [c for c in json.loads(out)["checks"] if not c["ok"]]
    assert rc == 1 and [c["check"] for c in failed] == ["listening"], out
    assert "TCP :81 listeners: none" in failed[0]["detail"]


# doctor's dsr output on b1 and r1 before the tunnel check existed (and b1 had no VXLAN
# device), byte for byte
DSR_READY = """\
ok   vip_local              VIP 198.19.100.1 on lo (198.19.100.0/24)
ok   arp_ignore.all         arp_ignore=1 (need >= 1: answer ARP only for addresses on the asked interface)
ok   arp_ignore.eth0        arp_ignore=1 (need >= 1: answer ARP only for addresses on the asked interface)
ok   arp_announce           arp_announce=2 (need 2: never use the VIP as ARP source)
ok   rp_filter              rp_filter all=0 eth0=0, effective 0 (need 0 or 2)
ok   listening              TCP :80 listeners: 0.0.0.0
dsr backend: ready
"""  # noqa: E501


@pytest.mark.parametrize("node", ["b1", "r1"])
def test_doctor_dsr_output_is_unchanged(lab, node):
    assert doctor(lab, node, "--port", "80", mode=None) == (0, DSR_READY)
    assert doctor(lab, node, "--port", "80", mode="dsr") == (0, DSR_READY)
    rc, out = doctor(lab, node, "--port", "80", "--json", mode=None)
    res = json.loads(out)
    assert rc == 0 and sorted(res) == ["checks", "iface", "ok"] and res["iface"] == "eth0"


def test_cli_shows_and_execs_remote_backends(lab):
    run = lambda *args: subprocess.run(LAB_CLI + list(args), cwd=REPO, capture_output=True,  # noqa
                                       text=True, timeout=30)
    shown = run("show", "--name", lab.name, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout) == lab.topology
    r = run("exec", "--name", lab.name, "r1", "--", "ip", "-br", "addr", "show", "eth0")
    assert r.returncode == 0 and "198.19.200.11/24" in r.stdout, r.stderr
    assert run("exec", "--name", lab.name, "r2", "--", "sh", "-c", "exit 5").returncode == 5
    text = run("show", "--name", lab.name).stdout
    assert any(line.split()[:4] == ["r1", lab.ns("r1"), "eth0", "198.19.200.11"]
               for line in text.splitlines()), text


def test_lbd_runs_the_code_of_this_tree(lab):
    """The lab starts `python -m lb.daemon` from the tree it was started from, not an
    installed lbd, so a lab always runs the code under test."""
    pid = lab.topology["lb"]["pid"]
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        argv = f.read().split(b"\0")
    assert argv[:3] == [sys.executable.encode(), b"-m", b"lb.daemon"], argv
    assert os.readlink("/proc/%d/cwd" % pid) == REPO
    with open("/proc/%d/maps" % pid) as f:
        engines = {line.split()[-1] for line in f if "/fastpath/_engine" in line}
    assert engines and all(e.startswith(REPO + "/fastpath/") for e in engines), engines


def test_no_remote_backends_is_the_lab_as_before(make_lab):
    with pytest.raises(LabError, match="remote_backends"):
        Lab(unique_name(), remote_backends=-1)
    lab = make_lab(start_lbd=False, backends=1)
    topo = lab.topology
    assert topo["remote_backends"] == [] and topo["vxlan"] is None
    assert sorted(lab_namespaces(lab.name)) == sorted(
        lab.ns(n) for n in ("sw", "rt", "lb", "c1", "b1"))
    assert [i["name"] for i in topo["nodes"]["sw"]["interfaces"]] == ["brc", "brs"]
    assert [i["name"] for i in topo["nodes"]["rt"]["interfaces"]] == ["eth0", "eth1"]
    assert "vxlan" not in topo["nodes"]["b1"]
    for node in ("rt", "b1"):
        assert json.loads(lab.exec(node, ["ip", "-j", "link", "show", "type", "vxlan"]).stdout
                          or "[]") == []
    assert lab.exec("rt", ["ip", "link", "show", "eth2"], check=False).returncode != 0
    assert VIP_RANGE in lab.exec("b1", ["ip", "-4", "addr", "show", "lo"]).stdout
