"""Traffic helpers run inside lab namespaces (`lb-lab exec c1 -- python3 -m tools.traffic ...`).
Each prints one JSON object on stdout and exits 0 when it ran, whatever it measured (the
caller judges); every loop is bounded in count and time.

  http URL --count N [--keepalive] [--seconds T]   N GETs (or T s); X-Backend tally, errors
  echo HOST PORT --bytes N [--seed S]    N random bytes through an echo service; sha256 both ways
  echo-slow HOST PORT --seconds T        one connection, 1 KiB every 20 ms; all echoes checked
  malformed IFACE DST_MAC --count N      a burst of malformed IPv4 frames to DST_MAC (raw socket)
  synflood DST PORT --count N --seconds T   SYNs from spoofed sources (raw IP socket)
"""
import argparse
import hashlib
import http.client
import json
import os
import socket
import struct
import sys
import threading
import time
import urllib.parse

from tools.frames import inet_sum


def cmd_http(a):
    u = urllib.parse.urlsplit(a.url)
    backends, statuses, errors = {}, {}, []
    slow = []            # (seconds, started at +s): the slowest requests, for a stall's post-mortem
    conn = None
    deadline = time.monotonic() + a.timeout
    t0 = time.monotonic()
    stop = t0 + a.seconds if a.seconds else None
    for _ in range(a.count):
        if stop is not None and time.monotonic() >= stop:
            break        # --seconds: a planned end, not an error
        if a.stop_file and os.path.exists(a.stop_file):
            break
        if time.monotonic() > deadline:
            errors.append("deadline")
            break
        t_req = time.monotonic()
        try:
            if conn is None or not a.keepalive:
                if conn is not None:
                    conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=5)
            conn.request("GET", u.path or "/")
            r = conn.getresponse()
            body = r.read()
            b = r.getheader("X-Backend", "?")
            backends[b] = backends.get(b, 0) + 1
            statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
            if a.expect_bytes is not None and len(body) != a.expect_bytes:
                errors.append("short body %d" % len(body))
        except (OSError, http.client.HTTPException) as e:
            errors.append(repr(e))
            conn = None
        took = time.monotonic() - t_req
        if len(slow) < 5 or took > slow[-1][0]:
            slow = sorted(slow + [(round(took, 3), round(t_req - t0, 3))], reverse=True)[:5]
    if conn is not None:
        conn.close()
    return {"requests": sum(backends.values()), "backends": backends, "statuses": statuses,
            "errors": errors[:10], "n_errors": len(errors), "seconds": time.monotonic() - t0,
            "slowest": slow}


def _stream(seed, n):
    """n deterministic pseudo-random bytes (shake-256 of the seed)."""
    return hashlib.shake_256(("threeway-echo-%d" % seed).encode()).digest(n)


def cmd_echo(a):
    data = _stream(a.seed, a.bytes)
    s = socket.create_connection((a.host, a.port), timeout=10)
    s.settimeout(a.timeout)
    got = hashlib.sha256()
    received = [0]
    err = []

    def reader():
        try:
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                got.update(chunk)
                received[0] += len(chunk)
        except OSError as e:
            err.append(repr(e))

    t = threading.Thread(target=reader)
    t.start()
    t0 = time.monotonic()
    try:
        view = memoryview(data)
        for off in range(0, len(data), 1 << 16):
            s.sendall(view[off:off + (1 << 16)])
        s.shutdown(socket.SHUT_WR)
    except OSError as e:
        err.append(repr(e))
    t.join(a.timeout)
    s.close()
    secs = time.monotonic() - t0
    return {"sent": len(data), "received": received[0],
            "sha256_sent": hashlib.sha256(data).hexdigest(), "sha256_received": got.hexdigest(),
            "identical": received[0] == len(data) and got.digest() == hashlib.sha256(data).digest(),
            "seconds": secs, "errors": err}


def cmd_echo_slow(a):
    s = socket.create_connection((a.host, a.port), timeout=5)
    s.settimeout(5)
    local = "%s:%d" % s.getsockname()
    print(json.dumps({"started": local}), flush=True)
    n, bad, err = 0, 0, []
    end = time.monotonic() + a.seconds
    try:
        while time.monotonic() < end:
            msg = _stream(n, 1024)
            s.sendall(msg)
            buf = b""
            while len(buf) < len(msg):
                chunk = s.recv(len(msg) - len(buf))
                if not chunk:
                    raise ConnectionError("closed by peer")
                buf += chunk
            bad += buf != msg
            n += 1
            time.sleep(0.02)
    except OSError as e:
        err.append(repr(e))
    s.close()
    return {"local": local, "messages": n, "mismatched": bad, "errors": err}


# the fast-path counter each kind must land in (a frame cut inside the IP header cannot be
# sent as such: Ethernet padding completes it, and it then fails the header checksum)
EXPECTED_DROPS = {"ip_bad_len": "drop_ip_bad_len", "ip_options": "drop_ip_options",
                  "ip_fragment": "drop_ip_fragment", "ip_csum": "drop_ip_csum",
                  "tcp_bad_doff": "drop_tcp_bad_doff", "l4_truncated": "drop_l4_truncated"}


def malformed_frames(dst_mac, src_mac, dst_ip):
    """One of each kind the fast path must count and drop. (A runt cannot be sent: the kernel
    refuses frames shorter than an Ethernet header; the unit fixtures cover it.)"""
    def ip_hdr(ihl=5, tot=40, off=0, proto=6, opts=b"", csum=True):
        h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot, 1, off, 64, proto, 0,
                                  socket.inet_aton("198.18.0.10"), socket.inet_aton(dst_ip)) + opts)
        if csum:
            h[10:12] = struct.pack("!H", ~inet_sum(h) & 0xFFFF)
        return bytes(h)

    eth = dst_mac + src_mac + b"\x08\x00"
    tcp = struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, 0x50, 0x02, 65535, 0, 0)
    return {
        "ip_bad_len": eth + ip_hdr(tot=1400) + tcp,
        "ip_options": eth + ip_hdr(ihl=6, tot=44, opts=b"\x01\x01\x01\x00") + tcp,
        "ip_fragment": eth + ip_hdr(off=0x2000) + tcp,
        "ip_csum": eth + ip_hdr(csum=False) + tcp,
        "tcp_bad_doff": eth + ip_hdr() + tcp[:12] + b"\xf0" + tcp[13:],
        "l4_truncated": eth + ip_hdr(tot=30) + tcp[:10],
    }


def cmd_malformed(a):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((a.iface, 0))
    src_mac = bytes.fromhex(open("/sys/class/net/%s/address" % a.iface).read().strip().replace(":", ""))
    kinds = malformed_frames(bytes.fromhex(a.dst_mac.replace(":", "")), src_mac, a.dst_ip)
    sent = {k: 0 for k in kinds}
    deadline = time.monotonic() + a.timeout
    for i in range(a.count):
        if time.monotonic() > deadline:
            break
        k = list(kinds)[i % len(kinds)]
        frame = kinds[k]
        if len(frame) < 60:
            frame += b"\0" * (60 - len(frame))   # Ethernet padding; lengths inside stay wrong
        s.send(frame)
        sent[k] += 1
    s.close()
    return {"sent": sent, "total": sum(sent.values())}


def cmd_synflood(a):
    """SYNs from spoofed sources (random addresses in --net) to DST:PORT, paced, bounded in
    count and time; raw IP socket, so the kernel routes them like any packet of this host."""
    import ipaddress
    import random
    net = ipaddress.IPv4Network(a.net)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    dst = socket.inet_aton(a.dst)
    rng = random.Random(a.seed)
    sent = 0
    t0 = time.monotonic()
    deadline = t0 + a.seconds
    while sent < a.count and time.monotonic() < deadline:
        src = socket.inet_aton(str(net[rng.randrange(2, net.num_addresses - 1)]))
        sport = rng.randrange(1024, 65535)
        tcp = struct.pack("!HHIIBBHHH", sport, a.port, rng.getrandbits(32), 0, 0x50, 0x02, 65535, 0, 0)
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", ~inet_sum(pseudo + tcp) & 0xFFFF) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, rng.getrandbits(16), 0, 64, 6, 0, src, dst)
        s.sendto(ip + tcp, (a.dst, 0))
        sent += 1
        if a.rate and sent % 100 == 0:          # pace: --rate SYNs per second
            ahead = sent / a.rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    s.close()
    return {"sent": sent, "seconds": time.monotonic() - t0}


def main(argv=None):
    p = argparse.ArgumentParser(prog="traffic")
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("http")
    h.add_argument("url")
    h.add_argument("--count", type=int, default=10)
    h.add_argument("--keepalive", action="store_true")
    h.add_argument("--expect-bytes", type=int)
    h.add_argument("--seconds", type=float, help="stop after this long (--count stays the cap)")
    h.add_argument("--stop-file", help="stop once this file exists (a planned end, like "
                   "--seconds: the caller decides when its side of a test is over)")
    h.add_argument("--timeout", type=float, default=60)
    e = sub.add_parser("echo")
    e.add_argument("host")
    e.add_argument("port", type=int)
    e.add_argument("--bytes", type=int, default=1 << 20)
    e.add_argument("--seed", type=int, default=1)
    e.add_argument("--timeout", type=float, default=60)
    es = sub.add_parser("echo-slow")
    es.add_argument("host")
    es.add_argument("port", type=int)
    es.add_argument("--seconds", type=float, default=5)
    m = sub.add_parser("malformed")
    m.add_argument("iface")
    m.add_argument("dst_mac")
    m.add_argument("--dst-ip", default="198.19.100.1")
    m.add_argument("--count", type=int, default=800)
    m.add_argument("--timeout", type=float, default=10)
    sf = sub.add_parser("synflood")
    sf.add_argument("dst")
    sf.add_argument("port", type=int)
    sf.add_argument("--net", default="198.18.0.0/16", help="spoofed sources come from here")
    sf.add_argument("--count", type=int, default=20000)
    sf.add_argument("--seconds", type=float, default=10)
    sf.add_argument("--rate", type=float, default=0, help="SYNs per second (0: as fast as it goes)")
    sf.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    fn = {"http": cmd_http, "echo": cmd_echo, "echo-slow": cmd_echo_slow,
          "malformed": cmd_malformed, "synflood": cmd_synflood}[a.cmd]
    print(json.dumps(fn(a)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
