"""lbd end to end: offline over a pcap (both twins), and a live smoke test on a TAP.

Pcap case, frames one second apart so that each is its own burst:

    t+0  ARP reply   backend 198.19.0.11 -> LB     (learnt: the backend's MAC)
    t+1  ARP request gateway 198.19.0.1 for the LB  -> ARP reply
    t+2  ARP request for the VIP                    -> ARP reply
    t+3  ICMP echo to the LB address                -> echo reply
    t+4  TCP SYN client -> VIP:80                   -> rewritten to backend:8080 (nat)
    t+5  truncated IPv4 and a runt                  -> counted drops

Live case:

    [twd-*-lb: lbd, TAP created here] --TAP moved--> [twd-*-peer: 198.19.0.50/24, ping]
"""
import importlib.util
import ipaddress
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid

import dpkt
import pytest

from lb import cli
from lb.neigh import checksum

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMPLS = [pytest.param("py", id="py"),
         pytest.param("cy", id="cy", marks=pytest.mark.skipif(
             importlib.util.find_spec("fastpath._engine") is None,
             reason="compiled fastpath not built"))]

LB_IP, LB_MAC = "198.19.0.2", bytes.fromhex("025457000002")
GW_IP, GW_MAC = "198.19.0.1", bytes.fromhex("02000000aa01")
B_IP, B_MAC = "198.19.0.11", bytes.fromhex("02000000bb11")
VIP = "198.19.100.1"
CLIENT = "198.18.0.10"


def ip4(s):
    return ipaddress.IPv4Address(s).packed


def env(impl):
    e = dict(os.environ, PYTHONPATH=REPO)
    e.pop("THREEWAY_PUREPYTHON", None)
    if impl == "py":
        e["THREEWAY_PUREPYTHON"] = "1"
    return e


def write_config(path, sock, extra=""):
    path.write_text(f"""
[io]
backend = "tap"
interface = "twtapnone"
{extra}
[lb]
address = "{LB_IP}"
mac = "{LB_MAC.hex(':')}"
gateway = "{GW_IP}"
control_socket = "{sock}"

[flows]
capacity = 4096

[[vip]]
address = "{VIP}"
port = 80
proto = "tcp"
mode = "nat"
scheduler = "maglev"
maglev_size = 251
  [[vip.backend]]
  address = "{B_IP}"
  port = 8080
""")


def eth(dst, src, etype, data):
    return bytes(dpkt.ethernet.Ethernet(dst=dst, src=src, type=etype, data=data))


def arp(op, sha, spa, tha, tpa, dst):
    return eth(dst, sha, 0x0806, dpkt.arp.ARP(op=op, sha=sha, spa=ip4(spa), tha=tha,
                                              tpa=ip4(tpa)))


def input_frames():
    echo = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=77, seq=1, data=b"p" * 32))
    syn = dpkt.tcp.TCP(sport=40000, dport=80, seq=1000, flags=dpkt.tcp.TH_SYN, win=65535)
    bad_ip = LB_MAC + GW_MAC + b"\x08\x00" + b"\x45\x00\x00"          # cut inside the header
    return [
        arp(2, B_MAC, B_IP, LB_MAC, LB_IP, LB_MAC),
        arp(1, GW_MAC, GW_IP, b"\x00" * 6, LB_IP, b"\xff" * 6),
        arp(1, GW_MAC, GW_IP, b"\x00" * 6, VIP, b"\xff" * 6),
        eth(LB_MAC, GW_MAC, 0x0800, dpkt.ip.IP(src=ip4(CLIENT), dst=ip4(LB_IP), p=1, ttl=63,
                                               data=echo)),
        eth(LB_MAC, GW_MAC, 0x0800, dpkt.ip.IP(src=ip4(CLIENT), dst=ip4(VIP), p=6, ttl=63,
                                               data=syn)),
        bad_ip,
        b"\x01\x02\x03",
    ]


def l4_csum_ok(ip_bytes):
    ihl = (ip_bytes[0] & 15) * 4
    seg = ip_bytes[ihl:struct.unpack("!H", ip_bytes[2:4])[0]]
    pseudo = ip_bytes[12:20] + bytes([0, ip_bytes[9]]) + struct.pack("!H", len(seg))
    if ip_bytes[9] == 1:     # ICMP: no pseudo-header
        pseudo = b""
    return checksum(ip_bytes[:ihl]) == 0 and checksum(pseudo + seg) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_pcap_mode(tmp_path, impl):
    cfg = tmp_path / "lbd.toml"
    write_config(cfg, tmp_path / "ctl" / "lbd.sock")
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    t0 = 1700000000.0
    with open(src, "wb") as f:
        w = dpkt.pcap.Writer(f)
        for k, fr in enumerate(input_frames()):
            w.writepkt(fr, ts=t0 + min(k, 5))                    # the two bad ones together
    p = subprocess.run([sys.executable, "-m", "lb.daemon", "-c", str(cfg), "--pcap-in", str(src),
                        "--pcap-out", str(dst)], env=env(impl), cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["impl"] == impl
    assert "impl=%s io=pcap" % impl in p.stderr
    with open(dst, "rb") as f:
        out = [(ts, dpkt.ethernet.Ethernet(buf), buf) for ts, buf in dpkt.pcap.Reader(f)]

    arp_out = [(ts, e.data) for ts, e, _ in out if e.type == 0x0806]
    replies = [(ts, a) for ts, a in arp_out if a.op == 2]
    assert [(a.spa, a.tpa, a.tha, a.sha) for _, a in replies] == [
        (ip4(LB_IP), ip4(GW_IP), GW_MAC, LB_MAC), (ip4(VIP), ip4(GW_IP), GW_MAC, LB_MAC)]
    assert [ts - t0 for ts, _ in replies] == [1, 2]
    requests = [(ts, a) for ts, a in arp_out if a.op == 1]
    # at t+0 both neighbors are asked; the gateway again at t+1 (still unresolved then)
    assert {(ts - t0, a.tpa) for ts, a in requests} >= {(0, ip4(GW_IP)), (0, ip4(B_IP)),
                                                         (1, ip4(GW_IP))}
    assert all(a.spa == ip4(LB_IP) and a.sha == LB_MAC for _, a in requests)

    ipf = [(e, raw) for _, e, raw in out if e.type == 0x0800]
    echo = [(e, raw) for e, raw in ipf if e.data.p == 1]
    assert len(echo) == 1
    e, raw = echo[0]
    assert e.dst == GW_MAC and e.src == LB_MAC
    assert e.data.src == ip4(LB_IP) and e.data.dst == ip4(CLIENT)
    assert e.data.data.type == 0 and e.data.data.data.id == 77
    assert l4_csum_ok(raw[14:])

    syn = [(e, raw) for e, raw in ipf if e.data.p == 6]
    assert len(syn) == 1
    e, raw = syn[0]
    assert e.dst == B_MAC and e.src == LB_MAC
    assert e.data.src == ip4(CLIENT) and e.data.dst == ip4(B_IP)
    assert e.data.data.sport == 40000 and e.data.data.dport == 8080
    assert e.data.ttl == 62
    assert l4_csum_ok(raw[14:])

    eng, neigh, io = res["engine"], res["neigh"], res["io"]
    assert eng["rx_frames"] == 7 and eng["punt_arp"] == 3 and eng["punt_local"] == 1
    assert eng["nat_fwd"] == 1 and eng["flow_created"] == 1 and res["flows"] == 1
    assert eng["drop_ip_truncated"] == 1 and eng["drop_runt"] == 1
    assert neigh["arp_learned"] == 2 and neigh["arp_requests_answered"] == 2
    assert neigh["arp_noted"] == 1 and neigh["icmp_echo_answered"] == 1
    assert neigh["punted"] == 4
    assert io["rx_frames"] == 7 and io["tx_frames"] == 1 and io["rx_bursts"] == 6
    assert io["send_frames"] == len(out) - 1
    assert res["loop"]["punts"] == 4 and res["loop"]["bursts"] == 6


def test_bad_config_names_the_field(tmp_path):
    cfg = tmp_path / "bad.toml"
    write_config(cfg, tmp_path / "s.sock")
    cfg.write_text(cfg.read_text().replace("port = 8080", "port = 8080\n  weight = -1"))
    p = subprocess.run([sys.executable, "-m", "lb.daemon", "-c", str(cfg), "--pcap-in", "x",
                        "--pcap-out", str(tmp_path / "o")], env=env("py"), cwd=REPO,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert "vip[0].backend[0].weight" in p.stderr


# ---------------------------------------------------------------------------------------------
needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 for network namespaces")

PING = r"""
import os, socket, struct, sys, time
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s & 0xffff) + (s >> 16)
    return ~(s + (s >> 16)) & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); s.settimeout(1)
ok = 0
for seq in range(1, 4):
    body = struct.pack("!BBHHH", 8, 0, 0, 4242, seq) + b"threeway" * 4
    body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    s.sendto(body, (sys.argv[1], 0))
    deadline = time.time() + 2
    while time.time() < deadline:
        try:
            data, addr = s.recvfrom(2048)
        except socket.timeout:
            continue
        ihl = (data[0] & 15) * 4
        t, c, _, ident, sq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if t == 0 and ident == 4242 and sq == seq and csum(data[ihl:]) == 0:
            ok += 1
            break
print(ok)
"""


def request(path, cmd, args=None, timeout=5):
    return cli.request(str(path), cmd, args, timeout=timeout)


@needs_root
@pytest.mark.parametrize("impl", IMPLS)
def test_live_tap_smoke(tmp_path, impl):
    tag = uuid.uuid4().hex[:6]
    ns_lb, ns_peer, tap = "twd-%s-lb" % tag, "twd-%s-peer" % tag, "twtap%s" % tag
    sock = tmp_path / "run" / "lbd.sock"
    cfg = tmp_path / "lbd.toml"
    write_config(cfg, sock)
    cfg.write_text(cfg.read_text().replace("twtapnone", tap))
    proc = None
    try:
        for ns in (ns_lb, ns_peer):
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                            "net.ipv6.conf.all.disable_ipv6=1"], check=True, timeout=10)
        proc = subprocess.Popen(["ip", "netns", "exec", ns_lb, sys.executable, "-m", "lb.daemon",
                                 "-c", str(cfg), "--log-level", "debug"], env=env(impl),
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        st = None
        deadline = time.time() + 20
        while time.time() < deadline and proc.poll() is None:
            try:
                st = request(sock, "status")
                break
            except (cli.ControlUnavailable, OSError, ValueError):
                time.sleep(0.05)
        assert st is not None, "lbd did not answer: %s" % (proc.communicate(timeout=5),)
        assert st["ok"]
        r = st["result"]
        assert r["pid"] == proc.pid and r["impl"] == impl
        assert r["io"]["backend"] == "tap" and r["io"]["interface"] == tap
        assert r["io"]["ifindex"] > 0
        assert r["lb"] == {"address": LB_IP, "mac": LB_MAC.hex(":")}
        assert oct(os.stat(sock).st_mode & 0o777) == "0o600"

        for cmd in (["ip", "-n", ns_lb, "link", "set", tap, "netns", ns_peer],
                    ["ip", "-n", ns_peer, "addr", "add", "198.19.0.50/24", "dev", tap],
                    ["ip", "-n", ns_peer, "link", "set", tap, "up"],
                    ["ip", "-n", ns_peer, "link", "set", "lo", "up"]):
            subprocess.run(cmd, check=True, timeout=10)
        p = subprocess.run(["ip", "netns", "exec", ns_peer, sys.executable, "-c", PING, LB_IP],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == "3"
        neigh = subprocess.run(["ip", "-n", ns_peer, "neigh", "show", LB_IP], capture_output=True,
                               text=True, timeout=10).stdout
        assert LB_MAC.hex(":") in neigh

        stats = request(sock, "stats")
        assert stats["ok"]
        assert stats["result"]["neigh"]["icmp_echo_answered"] == 3
        assert stats["result"]["neigh"]["arp_requests_answered"] >= 1
        assert stats["result"]["loop"]["punts"] >= 4
        assert request(sock, "no.such")["error"]["field"] == "cmd"

        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert not sock.exists()
        assert "impl=%s io=tap interface=%s" % (impl, tap) in err
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for ns in (ns_lb, ns_peer):
            subprocess.run(["ip", "netns", "del", ns], timeout=10, capture_output=True)


# --- the control server in-process (lb/control.py) --------------------------------------------
def _serve_and_talk(tmp_path, handler, lines, **kw):
    import asyncio
    from lb.control import ControlServer
    path = tmp_path / "ctl" / "lbd.sock"

    async def main():
        srv = ControlServer(str(path), handler, **kw)
        await srv.start()
        mode = os.stat(path).st_mode & 0o777, os.stat(path.parent).st_mode & 0o777
        try:
            r, w = await asyncio.open_unix_connection(str(path))
            replies = []
            for line in lines:
                w.write(line)
                await w.drain()
                got = await asyncio.wait_for(r.readline(), 5)
                if not got:
                    break
                replies.append(json.loads(got))
            w.close()
        finally:
            await srv.close()
        return replies, mode, path.exists()
    return asyncio.run(main())


def test_control_replies_and_errors(tmp_path):
    from lb.errors import LBError

    def handler(cmd, args):
        if cmd == "echo":
            return args
        if cmd == "bad":
            raise LBError("weight", "must be 0..65535")
        if cmd == "bug":
            raise RuntimeError("boom")
        if cmd == "bytes":
            return {"mac": b"\x02\x00\x00\x00\x00\x01"}
        raise LBError("cmd", "unknown command %r" % cmd)

    lines = [b'{"cmd": "echo", "args": {"a": 1}}\n', b"not json\n", b"[1, 2]\n",
             b'{"args": {}}\n', b'{"cmd": "echo", "args": 5}\n', b'{"cmd": "bad"}\n',
             b'{"cmd": "bug"}\n', b'{"cmd": "nope"}\n', b'{"cmd": "bytes"}\n',
             b'{"cmd": "echo"}\n']
    replies, (sock_mode, dir_mode), exists = _serve_and_talk(tmp_path, handler, lines)
    assert replies[0] == {"ok": True, "result": {"a": 1}}
    assert [r["error"]["field"] for r in replies[1:8]] == [
        "request", "request", "cmd", "args", "weight", "internal", "cmd"]
    assert "boom" in replies[6]["error"]["message"]
    assert replies[8] == {"ok": True, "result": {"mac": "02:00:00:00:00:01"}}
    assert replies[9] == {"ok": True, "result": {}}          # the connection survived it all
    assert sock_mode == 0o600 and dir_mode == 0o700
    assert not exists                                        # removed on close


def test_control_refuses_other_uids(tmp_path):
    # we are root here: allow only another uid to see the SO_PEERCRED check refuse us
    replies, _, _ = _serve_and_talk(tmp_path, lambda c, a: "x", [b'{"cmd": "status"}\n'],
                                    allowed_uids=(12345,))
    assert replies == [{"ok": False, "error": {"field": "auth",
                                               "message": "only root may use the control socket"}}]


def test_control_replaces_a_stale_socket(tmp_path):
    path = tmp_path / "ctl" / "lbd.sock"
    path.parent.mkdir()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()                                   # a socket file nobody listens on
    replies, _, _ = _serve_and_talk(tmp_path, lambda c, a: "ok", [b'{"cmd": "x"}\n'])
    assert replies == [{"ok": True, "result": "ok"}]
