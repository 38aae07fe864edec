"""lb/steer.py: the steering program, run by the kernel itself.

- BPF_PROG_TEST_RUN (bpf cmd 10) on frames built with dpkt: the kernel's return value must
  equal steer_value() (the Python twin), be the same for a request to a VIP and its reply,
  spread client ports over the queues, and be 0 for ARP, IPv6, ICMP, later fragments and
  truncated frames.
- A real multi-queue TAP (lb/io.py TapIO, queues=2) in a throwaway namespace: frames sent
  into the device from the kernel side (an AF_PACKET socket on it) come out of the queue
  the program picks, and both directions of a flow out of the same one.
"""
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import uuid

import dpkt
import pytest

from lb import steer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VIP = 0xC6136401            # 198.19.100.1
VIP2 = 0xC6136402           # 198.19.100.2
LOW_VIP = 0x0A000001        # 10.0.0.1: below 2^31, the other sign of the JMP32 immediate
CLIENT = 0xC612000A         # 198.18.0.10
BACKEND = 0xC613000B        # 198.19.0.11


def _bpf_unavailable():
    try:
        os.close(steer.load(steer.program(set())))
    except OSError as e:
        return "bpf(2) cannot load a socket filter here: %s" % e
    return None


WHY = _bpf_unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=WHY or "")


def ip_b(x):
    return struct.pack("!I", x)


def frame(src, dst, sport, dport, proto=6, opts=b"", frag=0, payload=b""):
    """Ethernet/IPv4/TCP or UDP; frag: the IPv4 flags + fragment offset field (raw)."""
    l4 = (dpkt.tcp.TCP(sport=sport, dport=dport, flags=dpkt.tcp.TH_SYN, data=payload)
          if proto == 6 else dpkt.udp.UDP(sport=sport, dport=dport, data=payload))
    ip = dpkt.ip.IP(src=ip_b(src), dst=ip_b(dst), p=proto, data=l4, opts=opts)
    if opts:
        ip.hl = 5 + len(opts) // 4
    f = bytearray(bytes(dpkt.ethernet.Ethernet(src=b"\x06" * 6, dst=b"\x02" * 6, type=0x0800,
                                               data=ip)))
    f[20:22] = struct.pack("!H", frag)       # (the header checksum is not looked at)
    return bytes(f)


@pytest.fixture(scope="module")
def prog():
    """A loaded program for {VIP, VIP2, LOW_VIP}; closed after the module."""
    fd = steer.load(steer.program({VIP, VIP2, LOW_VIP}))
    yield fd
    os.close(fd)


VIPS = {VIP, VIP2, LOW_VIP}


def run(fd, f):
    got = steer.test_run(fd, f)
    assert got == steer.steer_value(f, VIPS), f.hex()
    return got


@pytest.mark.parametrize("vip", [VIP, VIP2, LOW_VIP])
@pytest.mark.parametrize("proto", [6, 17])
def test_request_and_reply_meet_on_one_value(prog, vip, proto):
    for cport in (1024, 33333, 40000, 65535):
        to_vip = frame(CLIENT, vip, cport, 80, proto)           # client -> VIP:80
        nat_reply = frame(BACKEND, CLIENT, 80, cport, proto)    # backend real -> client
        dsr_or_splice = frame(vip, CLIENT, 80, cport, proto)    # VIP -> client (LB-made)
        v = run(prog, to_vip)
        assert v == run(prog, nat_reply) == run(prog, dsr_or_splice)
        assert 0 <= v < 1 << 16          # tun keeps the low 16 bits: nothing is lost


def test_client_ports_spread_over_queues(prog):
    vals = [run(prog, frame(CLIENT, VIP, p, 80)) for p in range(20000, 20512)]
    for n in (2, 3, 4):
        per = [sum(1 for v in vals if v % n == q) for q in range(n)]
        assert min(per) > len(vals) / n * 0.7, (n, per)
    clients = [run(prog, frame(0xC6120000 + i, VIP, 5000, 80)) for i in range(256)]
    assert len({v % 2 for v in clients}) == 2


@pytest.mark.parametrize("step", [1, 2, 4, 8, 16])
def test_ports_in_steps_spread_too(prog, step):
    """Linux gives connect() ports in steps (even ports, a per-destination offset moving by
    2 or more): runs of such ports must still use every queue."""
    for start in (32768, 40000, 50001):
        ports = [start + step * i for i in range(256)]
        vals = [run(prog, frame(CLIENT, VIP, p, 5201)) for p in ports]
        for n in (2, 4):
            per = [sum(1 for v in vals if v % n == q) for q in range(n)]
            assert min(per) >= len(vals) / n * 0.5, (step, start, n, per)   # > 4 sigma
        for i in range(0, 256, 16):     # every run of 16 connections uses both of 2 queues
            assert len({v % 2 for v in vals[i:i + 16]}) == 2, (step, start, i)


def test_not_ipv4_tcp_udp_goes_to_queue_0(prog):
    arp = bytes(dpkt.ethernet.Ethernet(src=b"\x06" * 6, dst=b"\xff" * 6, type=0x0806,
                                       data=dpkt.arp.ARP(op=1, spa=ip_b(BACKEND),
                                                         tpa=ip_b(0xC6130002))))
    ip6 = bytes(dpkt.ethernet.Ethernet(src=b"\x06" * 6, dst=b"\x02" * 6, type=0x86DD,
                                       data=b"\x60" + b"\0" * 60))
    icmp = bytes(dpkt.ethernet.Ethernet(
        src=b"\x06" * 6, dst=b"\x02" * 6, type=0x0800,
        data=dpkt.ip.IP(src=ip_b(CLIENT), dst=ip_b(VIP), p=1,
                        data=dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=1)))))
    later_fragment = frame(CLIENT, VIP, 4000, 80, frag=185)     # offset 185*8: no ports here
    vlan = bytes(dpkt.ethernet.Ethernet(src=b"\x06" * 6, dst=b"\x02" * 6, type=0x8100,
                                        data=b"\0\x01\x08\x00" + b"\0" * 60))
    for f in (arp, ip6, icmp, later_fragment, vlan):
        assert run(prog, f) == 0
    # the first fragment (MF, offset 0) has its ports: steered like the flow
    first = frame(CLIENT, VIP, 4000, 80, frag=0x2000)           # MF
    assert run(prog, first) == run(prog, frame(CLIENT, VIP, 4000, 80)) != 0


def test_ip_header_length_is_read_from_the_frame(prog):
    opts = b"\x01\x01\x01\x00"                     # NOP NOP NOP EOL: IHL 6
    with_opts = frame(CLIENT, VIP, 4321, 80, opts=opts)
    assert with_opts[14] == 0x46
    assert run(prog, with_opts) == run(prog, frame(CLIENT, VIP, 4321, 80))
    bad = bytearray(frame(CLIENT, VIP, 4321, 80))
    bad[14] = 0x44                                 # IHL 4: not a valid header
    assert run(prog, bytes(bad)) == 0
    bad[14] = 0x65                                 # version 6 in an IPv4 ethertype
    assert run(prog, bytes(bad)) == 0


def test_truncated_frames_end_in_queue_0_without_harm(prog):
    f = frame(CLIENT, VIP, 4321, 80)
    r = frame(BACKEND, CLIENT, 80, 4321)
    # BPF_PROG_TEST_RUN wants at least an IPv4 header after Ethernet (34 bytes)
    for n in range(34, 54):
        run(prog, f[:n])
        run(prog, r[:n])
    assert run(prog, f[:34]) == 0 and run(prog, r[:37]) == 0
    assert run(prog, f[:36]) == run(prog, f) != 0  # the client port is all a VIP frame needs


def test_random_frames_kernel_equals_twin(prog):
    rnd = random.Random(1234)
    base = [frame(CLIENT, VIP, 4321, 80), frame(BACKEND, CLIENT, 80, 4321, 17),
            frame(CLIENT, LOW_VIP, 1, 2, opts=b"\x01" * 8)]
    for _ in range(600):
        f = bytearray(rnd.choice(base))
        for _ in range(rnd.randint(1, 4)):
            f[rnd.randrange(12, len(f))] = rnd.randrange(256)
        if rnd.random() < 0.5:
            f[12:14] = b"\x08\x00"
        f = bytes(f[:rnd.randint(34, len(f))])
        run(prog, f)


def test_many_vips_and_none_load():
    many = {0xC6136400 + i for i in range(1, 250)} | {0x0A000000 + i for i in range(250)}
    for vips in (set(), {VIP}, many):
        fd = steer.load(steer.program(vips))
        try:
            f = frame(CLIENT, VIP, 999, 80)
            assert steer.test_run(fd, f) == steer.steer_value(f, vips)
        finally:
            os.close(fd)
    # with no VIP, every frame is keyed on its destination
    fd = steer.load(steer.program(set()))
    try:
        assert (steer.test_run(fd, frame(BACKEND, CLIENT, 80, 999))
                == steer.test_run(fd, frame(0xC6130001, CLIENT, 1, 999)))
    finally:
        os.close(fd)


# --- on a real multi-queue TAP --------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 for a network namespace")

MQ_CHILD = r"""
import json, select, socket, struct, sys
import dpkt
import fastpath
from lb.io import TapIO
from lb import steer

TAP, VIP, CLIENT, BACKEND = sys.argv[1], 0xC6136401, 0xC612000A, 0xC613000B
io = TapIO(TAP, queues=2)
s = steer.Steering(io.fd)
first = s.update({VIP})
again = s.update({VIP})
inject = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
inject.bind((TAP, 0))

def frame(src, dst, sport, dport):
    ip = dpkt.ip.IP(src=struct.pack("!I", src), dst=struct.pack("!I", dst), p=6,
                    data=dpkt.tcp.TCP(sport=sport, dport=dport, flags=2))
    return bytes(dpkt.ethernet.Ethernet(src=b"\x06" * 6, dst=b"\x02" * 6, type=0x0800, data=ip))

sent = {}
for port in range(30000, 30040):
    for f in (frame(CLIENT, VIP, port, 80), frame(BACKEND, CLIENT, 80, port)):
        sent[f] = steer.steer_value(f, {VIP})
        inject.send(f)
arp = bytes(dpkt.ethernet.Ethernet(src=b"\x06" * 6, dst=b"\xff" * 6, type=0x0806,
                                   data=dpkt.arp.ARP(op=1)))
inject.send(arp)
sent[arp] = 0
got = {}
batch = fastpath.Batch(64)
p = select.poll()
for q in io.queues:
    p.register(q.fd, select.POLLIN)
while len(got) < len(sent) and p.poll(2000):
    for q in io.queues:
        while q.rx(batch):
            for f in batch.frames():
                if f in sent:
                    got[f] = q.index
res = {"first": first, "again": again, "info": io.info(),
       "n_sent": len(sent), "n_got": len(got),
       "wrong": [f.hex() for f, q in got.items() if q != sent[f] % 2],
       "per_queue": [sum(1 for q in got.values() if q == i) for i in range(2)],
       "pairs_split": sum(1 for port in range(30000, 30040)
                          if got.get(frame(CLIENT, VIP, port, 80))
                          != got.get(frame(BACKEND, CLIENT, 80, port))),
       "arp_queue": got.get(arp), "counters": io.counters(), "steering": s.counters()}
io.close()
print(json.dumps(res))
"""


@needs_root
def test_multiqueue_tap_delivers_each_flow_on_its_steered_queue():
    ns = "twst-%s" % uuid.uuid4().hex[:8]
    tap = "twmq" + uuid.uuid4().hex[:6]
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        for key in ("all", "default"):
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                            "net.ipv6.conf.%s.disable_ipv6=1" % key], check=True, timeout=10)
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", MQ_CHILD, tap],
                           cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                           capture_output=True, text=True, timeout=30)
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=10, capture_output=True)
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["first"] is True and r["again"] is False      # same VIP set: not reloaded
    assert r["info"]["queues"] == 2
    assert r["n_got"] == r["n_sent"], r
    assert r["wrong"] == [] and r["pairs_split"] == 0
    assert min(r["per_queue"]) > 0, r["per_queue"]          # both queues carried flows
    assert r["arp_queue"] == 0
    per_queue_rx = [r["counters"]["queues"]["q%d" % i]["rx_frames"] for i in range(2)]
    assert all(n >= want for n, want in zip(per_queue_rx, r["per_queue"])), per_queue_rx
    assert r["steering"]["programs_attached"] == 1 and r["steering"]["vip_addresses"] == 1
