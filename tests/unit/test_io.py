"""lb/io.py: the three backends against real devices (in throwaway namespaces) and files.

    namespace A (twio-*)                     namespace B (twio-*-k)
    [AfPacketIO on vA] ==veth== [vB raw socket]
    [TapIO twtapN] ---- moved after open ---> [twtapN 198.19.255.1/24, kernel UDP socket]

The live parts run in child processes (`ip netns exec`); the test process never leaves its
own namespace. Names are unique per run and every namespace is deleted in `finally`.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid

import dpkt
import pytest

from lb.io import rps_mask_text

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMPLS = [pytest.param("py", id="py"),
         pytest.param("cy", id="cy", marks=pytest.mark.skipif(
             importlib.util.find_spec("fastpath._io") is None,
             reason="compiled fastpath not built"))]

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 for network namespaces")


def _env(impl):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("THREEWAY_PUREPYTHON", None)
    if impl == "py":
        env["THREEWAY_PUREPYTHON"] = "1"
    return env


def sh(*args):
    subprocess.run(args, check=True, timeout=10, capture_output=True)


def run_in_ns(ns, code, impl, timeout=20):
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], env=_env(impl),
                       cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, "child failed:\n" + p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture
def netns():
    """A factory of fresh namespaces (IPv6 off: no router solicitations in our captures)."""
    made = []
    tag = uuid.uuid4().hex[:8]

    def make():
        ns = "twio-%s-%d" % (tag, len(made))
        sh("ip", "netns", "add", ns)
        made.append(ns)
        for key in ("all", "default"):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % key)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns
    try:
        yield make
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], timeout=10, capture_output=True)


AFPACKET_CHILD = r"""
import json, os, select, socket
import fastpath
from fastpath import defs
from lb.io import AfPacketIO

ETYPE = 0x88b5                       # IEEE local experimental: nothing else uses it
A_MAC = bytes.fromhex("02000000000a"); B_MAC = bytes.fromhex("02000000000b")

def frame(dst, src, tag):
    return dst + src + ETYPE.to_bytes(2, "big") + tag.ljust(46, b".")

def wait(fd, ms=2000):
    p = select.poll(); p.register(fd, select.POLLIN)
    return bool(p.poll(ms))

def ours(frames):
    return [f for f in frames if f[12:14] == ETYPE.to_bytes(2, "big")]

io = AfPacketIO("vA")
peer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETYPE))
peer.bind(("vB", 0)); peer.settimeout(2)
res = {"info": io.info(), "impl": fastpath.IMPL}

# B -> A: read through rx_burst into a Batch
peer.send(frame(A_MAC, B_MAC, b"hello-from-B"))
batch = fastpath.Batch(32)
got = []
while wait(io.fd) and not ours(got):
    io.rx(batch); got += batch.frames()
    assert batch.rx_bytes == sum(len(f) for f in batch.frames())   # counted by rx_burst
res["rx"] = [f[14:26].decode() for f in ours(got)]
res["rx_bytes_read"] = sum(len(f) for f in got)

# A -> B: tx() sends only V_TX frames; send() sends Python-made frames
batch.load([frame(B_MAC, A_MAC, b"tx-1"), frame(B_MAC, A_MAC, b"dropped"),
            frame(B_MAC, A_MAC, b"tx-2")])
batch.verdict[:3] = [defs.V_TX, defs.V_DROP, defs.V_TX]
res["tx"] = list(io.tx(batch))
io.send([frame(B_MAC, A_MAC, b"sent-by-py")])
seen = []
try:
    while len(seen) < 3:
        seen.append(peer.recv(2048)[14:].rstrip(b".").decode())
except socket.timeout:
    pass
res["peer_got"] = seen

# PACKET_IGNORE_OUTGOING: none of what we sent comes back on our socket
wait(io.fd, 300)
back = []
while io.rx(batch):
    back += batch.frames()
res["read_back"] = len(ours(back))
res["counters"] = io.counters()
io.close()
print(json.dumps(res))
"""


@needs_root
@pytest.mark.parametrize("impl", IMPLS)
def test_afpacket_rx_tx_and_ignore_outgoing(netns, impl):
    ns = netns()
    sh("ip", "-n", ns, "link", "add", "vA", "address", "02:00:00:00:00:0a", "type", "veth",
       "peer", "name", "vB", "address", "02:00:00:00:00:0b")
    for dev in ("vA", "vB"):
        sh("ip", "-n", ns, "link", "set", dev, "up")
    res = run_in_ns(ns, AFPACKET_CHILD, impl)
    assert res["impl"] == impl
    assert res["info"]["backend"] == "afpacket" and res["info"]["interface"] == "vA"
    assert res["info"]["ifindex"] > 0 and res["info"]["mac"] == "02:00:00:00:00:0a"
    assert res["info"]["offload"] is False
    assert res["rx"] == ["hello-from-B"]
    assert res["tx"] == [2, 0]
    assert sorted(res["peer_got"]) == ["sent-by-py", "tx-1", "tx-2"]
    assert res["read_back"] == 0
    c = res["counters"]
    assert c["tx_frames"] == 2 and c["send_frames"] == 1 and c["tx_errors"] == 0
    assert c["rx_frames"] >= 1 and c["rx_bytes"] >= res["rx_bytes_read"]


OFFLOAD_CHILD = r"""
import json, select, socket, struct
import fastpath
from fastpath import defs
from fastpath.inet import checksum
from lb.io import AfPacketIO, SNAP_OFFLOAD, VNET_HDR_LEN

A_MAC, B_MAC = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")
SRC, DST = socket.inet_aton("198.19.255.1"), socket.inet_aton("198.19.255.2")
MSS, SEQ = 1448, 1000
PAYLOAD = bytes(i * 7 % 251 for i in range(4000))       # 3 segments: 1448 + 1448 + 1104

def tcp_frame(dst, src, payload, partial):
    # Ethernet + IPv4 + TCP (20 bytes); partial: the checksum field holds the pseudo-header
    # sum over the whole L4 length (what the kernel's GSO expects), else the full checksum
    l4len = 20 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4len, 1, 0x4000, 64, 6, 0, SRC, DST)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    tcp = struct.pack("!HHIIBBHHH", 40000, 9000, SEQ, 1, 5 << 4, 0x18, 65535, 0, 0)
    pseudo = SRC + DST + struct.pack("!BBH", 0, 6, l4len)
    c = (~checksum(pseudo) & 0xFFFF) if partial else checksum(pseudo + tcp + payload)
    return dst + src + b"\x08\x00" + ip + tcp[:16] + struct.pack("!H", c) + tcp[18:] + payload

def vnet(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0):
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)

GSO = vnet(1, 1, 54, MSS, 34, 16)          # NEEDS_CSUM, TCPV4

def fields(h):
    return dict(zip(("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset"),
                    struct.unpack("<BBHHHH", h)))

def wait(fd, ms=2000):
    p = select.poll(); p.register(fd, select.POLLIN)
    return bool(p.poll(ms))

io = AfPacketIO("vA", offload=True)
inject = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)      # sends only (protocol 0)
inject.setsockopt(263, 15, 1)                                      # PACKET_VNET_HDR
inject.bind(("vB", 0))
peer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
peer.setsockopt(263, 23, 1)                                        # PACKET_IGNORE_OUTGOING
peer.bind(("vB", 0)); peer.settimeout(2)
batch = io.new_batch(8)
res = {"info": io.info(), "impl": fastpath.IMPL, "hdr": batch.hdr, "snap": batch.snap,
       "snap_expected": SNAP_OFFLOAD}

# B -> A: a GSO superframe (vB keeps TSO, so it reaches vA whole), then a plain frame
sent_super = tcp_frame(A_MAC, B_MAC, PAYLOAD, partial=True)
sent_plain = tcp_frame(A_MAC, B_MAC, b"plain", partial=False)
inject.send(GSO + sent_super)
inject.send(vnet() + sent_plain)
rows = []
while len(rows) < 2 and wait(io.fd):
    n = io.rx(batch)
    rows += [(batch.header(i), batch.frame(i)) for i in range(n)]
res["rx"] = [{"header": fields(h), "len": len(f), "same": f == s}
             for (h, f), s in zip(rows, (sent_super, sent_plain))]

# A -> B: tx() of a superframe with its header (vA has TSO and tx csum off: the kernel
# segments and completes checksums in software), a DATA_VALID frame, a dropped one
batch.load([tcp_frame(B_MAC, A_MAC, PAYLOAD, partial=True),
            tcp_frame(B_MAC, A_MAC, b"valid", partial=False),
            tcp_frame(B_MAC, A_MAC, b"dropped", partial=False)],
           headers=[GSO, vnet(flags=2), vnet()])
batch.verdict[:3] = [defs.V_TX, defs.V_TX, defs.V_DROP]
res["tx"] = list(io.tx(batch))
io.send([tcp_frame(B_MAC, A_MAC, b"by-python", partial=False)])
segs = []
try:
    while len(segs) < 5:
        f = peer.recv(65536)
        if f[6:12] == A_MAC:
            segs.append(f)
except socket.timeout:
    pass
out = []
for f in segs:
    ip, l4 = f[14:34], f[34:]
    tot = struct.unpack("!H", ip[2:4])[0]
    l4 = f[34:14 + tot]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(l4))
    out.append({"seq": struct.unpack("!I", l4[4:8])[0], "payload": l4[20:].hex(),
                "ip_csum_ok": checksum(ip) == 0, "tcp_csum_ok": checksum(pseudo + l4) == 0})
res["peer_got"] = out
res["payload_hex"] = PAYLOAD.hex()

# PACKET_IGNORE_OUTGOING holds with vnet headers too
wait(io.fd, 300)
back = 0
while io.rx(batch):
    back += sum(1 for i in range(batch.n) if batch.frame(i)[6:12] == A_MAC)
res["read_back"] = back
res["counters"] = io.counters()
io.close()
print(json.dumps(res))
"""


@needs_root
@pytest.mark.skipif(shutil.which("ethtool") is None, reason="needs ethtool")
@pytest.mark.parametrize("impl", IMPLS)
def test_afpacket_vnet_headers_superframes_both_ways(netns, impl):
    ns = netns()
    sh("ip", "-n", ns, "link", "add", "vA", "address", "02:00:00:00:00:0a", "type", "veth",
       "peer", "name", "vB", "address", "02:00:00:00:00:0b")
    # vA transmits without TSO and checksum offload, so what lbd writes is segmented and
    # checksummed by the kernel before vB sees it; vB keeps its defaults (TSO on)
    sh("ip", "netns", "exec", ns, "ethtool", "-K", "vA", "tx", "off", "tso", "off")
    for dev in ("vA", "vB"):
        sh("ip", "-n", ns, "link", "set", dev, "up")
    res = run_in_ns(ns, OFFLOAD_CHILD, impl)
    assert res["impl"] == impl
    assert res["info"]["offload"] is True and res["hdr"] == 10
    assert res["snap"] == res["snap_expected"]
    # read: the superframe whole, with the header the engine expects (csum_start counts from
    # the Ethernet header; the checksum field holds the pseudo-header sum)
    sup, plain = res["rx"]
    assert sup["same"] and sup["len"] == 14 + 20 + 20 + 4000
    h = sup["header"]
    assert h["flags"] & 1 and h["gso_type"] == 1 and h["gso_size"] == 1448
    assert (h["csum_start"], h["csum_offset"]) == (34, 16)
    assert plain["same"] and plain["header"]["gso_type"] == 0
    assert not plain["header"]["flags"] & 1
    # write: the superframe left as three MSS segments with complete checksums, then the
    # DATA_VALID frame and the Python-made frame (zero header) unchanged
    assert res["tx"] == [2, 0]
    got = res["peer_got"]
    assert [g["seq"] for g in got] == [1000, 2448, 3896, 1000, 1000]
    assert "".join(g["payload"] for g in got[:3]) == res["payload_hex"]
    assert [bytes.fromhex(g["payload"]) for g in got[3:]] == [b"valid", b"by-python"]
    assert all(g["ip_csum_ok"] and g["tcp_csum_ok"] for g in got), got
    assert res["read_back"] == 0
    c = res["counters"]
    assert c["rx_frames"] == 2 and c["rx_gso"] == 1 and c["rx_needs_csum"] == 1
    assert c["tx_frames"] == 2 and c["send_frames"] == 1 and c["tx_errors"] == 0


def test_afpacket_unknown_interface():
    from lb.io import AfPacketIO
    with pytest.raises(OSError):
        AfPacketIO("tw-no-such-if")


TAP_CHILD = r"""
import json, os, select, subprocess, sys
import dpkt
import fastpath
from fastpath import defs
from lb.io import TapIO
from lb.neigh import checksum

NS2, TAP = sys.argv[1], sys.argv[2]
PEER_MAC = bytes.fromhex("02000000ee01")
io = TapIO(TAP)
info = io.info()
# the lab's move: the device goes to another namespace; our fd keeps working
for cmd in (["ip", "link", "set", "dev", TAP, "netns", NS2],
            ["ip", "-n", NS2, "addr", "add", "198.19.255.1/24", "dev", TAP],
            ["ip", "-n", NS2, "link", "set", TAP, "up"]):
    subprocess.run(cmd, check=True, timeout=10)
info["rps_after_move"] = subprocess.run(
    ["ip", "netns", "exec", NS2, "cat", "/sys/class/net/%s/queues/rx-0/rps_cpus" % TAP],
    capture_output=True, text=True, timeout=10).stdout.strip()
kernel = subprocess.Popen(
    ["ip", "netns", "exec", NS2, sys.executable, "-c",
     "import socket, sys\n"
     "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('198.19.255.1', 9999))\n"
     "s.settimeout(5)\n"
     "s.sendto(b'q' * 100, ('198.19.255.2', 7))\n"
     "data, addr = s.recvfrom(2048)\n"
     "print(data.decode(), addr[0], addr[1])\n"],
    stdout=subprocess.PIPE, text=True)

def wait(ms=3000):
    p = select.poll(); p.register(io.fd, select.POLLIN)
    return bool(p.poll(ms))

batch = fastpath.Batch(32)
res = {"info": info}
udp_seen = None
while udp_seen is None and wait():
    io.rx(batch)
    for f in batch.frames():
        eth = dpkt.ethernet.Ethernet(f)
        if isinstance(eth.data, dpkt.arp.ARP) and eth.data.op == 1:
            a = eth.data
            rep = dpkt.arp.ARP(op=2, sha=PEER_MAC, spa=a.tpa, tha=a.sha, tpa=a.spa)
            io.send([bytes(dpkt.ethernet.Ethernet(dst=eth.src, src=PEER_MAC, type=0x0806,
                                                  data=rep))])
            res["arp_seen"] = True
        elif isinstance(eth.data, dpkt.ip.IP) and isinstance(eth.data.data, dpkt.udp.UDP):
            udp_seen = f
ip = dpkt.ethernet.Ethernet(udp_seen).data
res["len"] = len(udp_seen)
udp = udp_seen[34:34 + ip.data.ulen]
pseudo = ip.src + ip.dst + bytes([0, 17]) + len(udp).to_bytes(2, "big")
res["udp_csum_ok"] = ip.data.sum != 0 and checksum(pseudo + udp) == 0
# answer through tx(): a UDP datagram from .2:7 back to the kernel's socket
eth = dpkt.ethernet.Ethernet(udp_seen)
reply_ip = dpkt.ip.IP(src=ip.dst, dst=ip.src, p=17, ttl=64,
                      data=dpkt.udp.UDP(sport=7, dport=9999, ulen=8 + 6, data=b"answer"))
reply_ip.len = 20 + 8 + 6
reply = bytes(dpkt.ethernet.Ethernet(dst=eth.src, src=PEER_MAC, type=0x0800, data=reply_ip))
batch.load([reply]); batch.verdict[0] = defs.V_TX
res["tx"] = list(io.tx(batch))
out, _ = kernel.communicate(timeout=10)
res["kernel_got"] = out.strip()
res["counters"] = io.counters()
io.close()
print(json.dumps(res))
"""


@needs_root
@pytest.mark.parametrize("impl", IMPLS)
def test_tap_survives_namespace_move(netns, impl):
    ns1, ns2 = netns(), netns()
    tap = "twtap" + uuid.uuid4().hex[:6]
    p = subprocess.run(["ip", "netns", "exec", ns1, sys.executable, "-c", TAP_CHILD, ns2, tap],
                       env=_env(impl), cwd=REPO, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["info"]["backend"] == "tap" and res["info"]["interface"] == tap
    assert res["info"]["ifindex"] > 0 and res["info"]["mtu"] == 1500
    assert res["arp_seen"]
    assert res["len"] == 14 + 20 + 8 + 100
    assert res["udp_csum_ok"], "the kernel handed us a frame with a partial checksum"
    assert res["tx"] == [1, 0]
    assert res["kernel_got"] == "answer 198.19.255.2 7"
    assert res["counters"]["send_frames"] >= 1
    # RPS on by default (io.rps absent): set at creation, kept by the move
    ncpu = os.cpu_count()
    if ncpu >= 2:
        assert res["info"]["rps_cpus"] == rps_mask_text(ncpu)
        assert int(res["info"]["rps_after_move"].replace(",", ""), 16) == (1 << ncpu) - 1
    else:
        assert res["info"]["rps_cpus"] is None


RPS_CHILD = r"""
import json, sys
from lb.io import TapIO
io = TapIO(sys.argv[1], rps=sys.argv[2] == "on", queues=int(sys.argv[3]))
path = "/sys/class/net/%s/queues/rx-%d/rps_cpus"
print(json.dumps({"info": io.info(),
                  "masks": [open(path % (sys.argv[1], q)).read().strip()
                            for q in range(int(sys.argv[3]))]}))
io.close()
"""


@needs_root
@pytest.mark.parametrize("rps,queues", [("on", 2), ("off", 1)])
def test_tap_rps_on_every_queue_or_off(netns, rps, queues):
    """io.rps = true sets the mask of every CPU on each receive queue; false leaves the
    kernel's default (0)."""
    ns = netns()
    tap = "twtap" + uuid.uuid4().hex[:6]
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", RPS_CHILD, tap, rps,
                        str(queues)], env=_env("py"), cwd=REPO, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    want = rps_mask_text(os.cpu_count()) if rps == "on" else None
    assert res["info"]["rps_cpus"] == want and res["info"]["queues"] == queues
    for m in res["masks"]:
        assert int(m.replace(",", ""), 16) == (int(want.replace(",", ""), 16) if want else 0)


OPEN_CHILD = r"""
import json, sys
from lb.io import open_backend
tap = sys.argv[1]
res = {}
for backend, name in (("afpacket", "vA"), ("tap", tap)):
    for off in (None, True, False):
        io = open_backend(backend, name, off)
        i = io.info()
        res["%s/%s" % (backend, off)] = [i["offload"], i["vnet_hdr"], i["offload_why"]]
        io.close()
try:
    open_backend("afpacket", "tw-no-such-if")
except OSError as e:
    res["missing"] = type(e).__name__
print(json.dumps(res))
"""


@needs_root
def test_open_backend_offload_is_the_default(netns):
    """[io] offload left out: vnet headers on, on both backends, and the reason says it was
    the default; true/false are taken as written. A missing interface is an error, not a
    reason to try without offload."""
    ns = netns()
    sh("ip", "-n", ns, "link", "add", "vA", "type", "veth", "peer", "name", "vB")
    tap = "twtap" + uuid.uuid4().hex[:6]
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", OPEN_CHILD, tap],
                       env=_env("py"), cwd=REPO, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    for backend in ("afpacket", "tap"):
        on, hdr, why = res["%s/None" % backend]
        assert on is True and hdr >= 10 and why.startswith("default")
        assert res["%s/True" % backend][:2] == [True, hdr]
        assert res["%s/True" % backend][2] == "io.offload = true"
        assert res["%s/False" % backend] == [False, 0, "io.offload = false"]
    assert res["missing"] in ("OSError", "FileNotFoundError")


def test_rps_mask_text():
    assert rps_mask_text(1) == "00000001"
    assert rps_mask_text(2) == "00000003"
    assert rps_mask_text(32) == "ffffffff"
    assert rps_mask_text(40) == "000000ff,ffffffff"


def _pcap(path, frames):
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f)
        for ts, frame in frames:
            w.writepkt(frame, ts=ts)


def _frame(tag, size=60):
    return (b"\x02" * 6 + b"\x04" * 6 + b"\x88\xb5" + tag).ljust(size, b".")


@pytest.mark.parametrize("impl", IMPLS)
def test_pcap_bursts_and_round_trip(tmp_path, impl, monkeypatch):
    code = r"""
import json, sys
import fastpath
from fastpath import defs
from lb.io import PcapIO
io = PcapIO(sys.argv[1], sys.argv[2])
b = fastpath.Batch(4, snap=2048)
bursts = []
while True:
    n = io.rx(b)
    if n == 0:
        break
    bursts.append([io.burst_ms, [f[14:20].decode() for f in b.frames()]])
    b.verdict[:n] = defs.V_DROP
    b.verdict[0] = defs.V_TX
    io.tx(b)
io.send([b"\x02" * 6 + b"\x04" * 6 + b"\x88\xb5" + b"python".ljust(46, b".")])
print(json.dumps({"bursts": bursts, "eof": io.eof, "counters": io.counters(), "info": io.info()}))
io.close()
"""
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    frames = [(1000.0, _frame(b"f0")), (1000.0002, _frame(b"f1")),     # one burst (< 1 ms)
              (1001.0, _frame(b"f2")),                                   # next burst
              (1001.0001, _frame(b"big", 3000)),                         # > snap: skipped
              (1002.0, _frame(b"f3")), (1002.0, _frame(b"f4")), (1002.0, _frame(b"f5")),
              (1002.0, _frame(b"f6")), (1002.0, _frame(b"f7"))]          # batch of 4 + 1
    _pcap(src, frames)
    p = subprocess.run([sys.executable, "-c", code, str(src), str(dst)], env=_env(impl), cwd=REPO,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["bursts"] == [[1000000, ["f0....", "f1...."]], [1001000, ["f2...."]],
                             [1002000, ["f3....", "f4....", "f5....", "f6...."]],
                             [1002000, ["f7...."]]]
    assert res["eof"]
    c = res["counters"]
    assert c["rx_frames"] == 8 and c["rx_oversize"] == 1 and c["rx_bursts"] == 4
    assert c["tx_frames"] == 4 and c["send_frames"] == 1
    assert res["info"]["backend"] == "pcap"
    with open(dst, "rb") as f:
        out = [(ts, buf) for ts, buf in dpkt.pcap.Reader(f)]
    assert [buf[14:20] for _, buf in out] == [b"f0....", b"f2....", b"f3....", b"f7....",
                                             b"python"]
    assert [round(ts, 3) for ts, _ in out] == [1000.0, 1001.0, 1002.0, 1002.0, 1002.0]
    assert out[0][1] == _frame(b"f0")     # bytes unchanged


def test_pcap_rejects_non_ethernet(tmp_path):
    from lb.io import PcapIO
    src = tmp_path / "raw.pcap"
    with open(src, "wb") as f:
        dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_RAW).writepkt(b"\x45" + b"\x00" * 19, ts=1)
    with pytest.raises(ValueError, match="not Ethernet"):
        PcapIO(str(src), str(tmp_path / "out.pcap"))
