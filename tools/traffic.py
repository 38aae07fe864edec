"""Traffic helpers run inside lab namespaces (`lb-lab exec c1 -- python3 -m tools.traffic ...`).
Each prints one JSON object on stdout and exits 0 when it ran, whatever it measured (the
caller judges); every loop is bounded in count and time.

  http URL --count N [--keepalive] [--seconds T]   N GETs (or T s); X-Backend tally, errors
  download URL --bytes N --rate R [--stop-file F]   one GET of the first N bytes (a Range),
                                         read at R bytes/s with a small receive buffer, so the
                                         sender is held to it too, until N or F exists: bytes,
                                         their sha256, X-Backend, seconds (a paced long flow)
  echo HOST PORT --bytes N [--seed S]    N random bytes through an echo service; sha256 both ways
  echo-slow HOST PORT --seconds T        one connection, 1 KiB every 20 ms; all echoes checked
  udp HOST PORT --sockets N --count K    N sockets x K datagrams through a UDP echo, each socket
                                         asking "?id" first and last; answers, wrong sources,
                                         losses, backend spread
  malformed IFACE DST_MAC --count N      a burst of malformed IPv4 frames to DST_MAC (raw socket)
  synflood DST PORT --count N --seconds T   SYNs from spoofed sources (raw IP socket)
"""
import argparse
import hashlib
import http.client
import json
import os
import resource
import selectors
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


class _SmallWindow(http.client.HTTPConnection):
    """An HTTP connection whose socket has a receive buffer of `rcvbuf` bytes set before the
    handshake (so the window it announces, and its scale, stay small)."""

    def __init__(self, host, port, rcvbuf, timeout):
        super().__init__(host, port, timeout=timeout)
        self.rcvbuf = rcvbuf

    def connect(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        s.settimeout(self.timeout)
        s.connect((self.host, self.port))
        self.sock = s


def cmd_download(a):
    """A long flow of a known pace: the body is read in ticks of TICK s, at most rate*TICK
    bytes a tick, through a receive buffer of about two ticks' worth, so the server can be
    ahead by that much only (curl's --limit-rate averages over seconds and lets a fast link
    burst through)."""
    tick = 0.05
    per_tick = max(1024, int(a.rate * tick))
    u = urllib.parse.urlsplit(a.url)
    h = hashlib.sha256()
    got, backend, status, error, client, stopped = 0, None, None, None, None, False
    t0 = time.monotonic()
    deadline = t0 + a.timeout
    conn = _SmallWindow(u.hostname, u.port or 80, max(4096, 2 * per_tick), a.stall)
    try:
        conn.request("GET", u.path or "/", headers={"Range": "bytes=0-%d" % (a.bytes - 1)})
        client = "%s:%d" % conn.sock.getsockname()
        r = conn.getresponse()
        status, backend = r.status, r.getheader("X-Backend")
        nxt = time.monotonic()
        while got < a.bytes:
            if a.stop_file and os.path.exists(a.stop_file):
                stopped = True
                break
            if time.monotonic() > deadline:
                error = "timed out after %d bytes" % got
                break
            chunk = r.read(min(per_tick, a.bytes - got))
            if not chunk:
                error = "the body ended after %d bytes" % got
                break
            h.update(chunk)
            got += len(chunk)
            nxt += tick
            wait = nxt - time.monotonic()
            if wait > 0:
                time.sleep(wait)         # the pace itself, bounded by the deadline above
    except (OSError, http.client.HTTPException) as e:
        error = repr(e)
    finally:
        conn.close()
    return {"bytes": got, "sha256": h.hexdigest(), "backend": backend, "status": status,
            "client": client, "error": error, "stopped": stopped,
            "seconds": round(time.monotonic() - t0, 3)}


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


UDP_ID_QUERY = b"?id"    # the lab echo answers it with the backend's name (tools/echo_server.py)


def _udp_payload(seed, sock_index, seq, size):
    """The datagram socket `sock_index` sends as its `seq`-th: its two indexes, then
    deterministic bytes, `size` in all (>= 8): no two datagrams of a run are alike."""
    head = struct.pack("!II", sock_index, seq)
    tail = hashlib.shake_256(b"threeway-udp-%d-%d-%d" % (seed, sock_index, seq)).digest(size - 8)
    return head + tail


def _udp_id(data):
    """The backend name in an answer to "?id" (b"b1\\n" -> "b1"), or None if it is none."""
    if data.endswith(b"\n") and 1 < len(data) <= 64:
        try:
            name = data[:-1].decode("ascii")
        except UnicodeDecodeError:
            return None
        return name if name.isprintable() else None
    return None


def cmd_udp(a):
    """N unconnected UDP sockets (so that an answer from any source is seen, and its source
    checked: a connected socket would drop a wrong-source answer unseen), K datagrams each,
    in rounds: the first and the last round ask "?id", the others carry one unique datagram
    per socket. A round sends what is unanswered, waits up to --wait s, and resends at most
    --retries times; what is still unanswered then is lost. The whole run stops at --timeout.

    An answer counts when it comes from HOST:PORT and equals what is awaited (the echo of the
    datagram, or a backend's name for "?id"). From another source: wrong_source, never an
    answer. An answer already had (a resend answered twice): duplicate. The echo of a
    datagram given up on: late (it was counted lost). From HOST:PORT but other bytes:
    mismatched. moved: sockets whose first and last "?id" named different
    backends (a UDP flow stays on its backend)."""
    if not (1 <= a.sockets <= 20000 and 0 <= a.count <= 1000 and 8 <= a.size <= 65507):
        raise SystemExit("udp: --sockets 1..20000, --count 0..1000, --size 8..65507")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < a.sockets + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.sockets + 64), hard))
    target = (socket.gethostbyname(a.host), a.port)
    t0 = time.monotonic()
    deadline = t0 + a.timeout
    st = {"answered": 0, "mismatched": 0, "wrong_source": 0, "duplicates": 0, "lost": 0,
          "late": 0, "retries": 0, "send_errors": 0}
    wrong_from, samples = {}, []
    ids = [[None, None] for _ in range(a.sockets)]   # the first and the last "?id" answer
    had = [set() for _ in range(a.sockets)]          # echoes already counted, per socket
    n_rounds = a.count + 2
    out_of_time = False

    def ours(i, data):
        """data is the echo of a datagram socket i sent."""
        if len(data) != a.size or data[:4] != struct.pack("!I", i):
            return False
        return data == _udp_payload(a.seed, i, struct.unpack_from("!I", data, 4)[0], a.size)

    def received(i, data, src, rnd, want):
        if src != target:
            st["wrong_source"] += 1
            k = "%s:%d" % src
            wrong_from[k] = wrong_from.get(k, 0) + 1
        elif i in want and want[i] != UDP_ID_QUERY and data == want[i]:
            del want[i]
            had[i].add(data)
            st["answered"] += 1
        elif i in want and want[i] == UDP_ID_QUERY and _udp_id(data):
            del want[i]
            ids[i][rnd != 0] = _udp_id(data)
        elif data in had[i] or (_udp_id(data) is not None and _udp_id(data) in ids[i]):
            st["duplicates"] += 1
        elif ours(i, data):
            st["late"] += 1      # the echo of a datagram given up on (lost), after all
        else:
            st["mismatched"] += 1
            if len(samples) < 5:
                samples.append("socket %d round %d: %r" % (i, rnd, data[:32]))

    sel = selectors.DefaultSelector()
    socks = []
    try:
        for i in range(a.sockets):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.setblocking(False)
            s.bind(("0.0.0.0", 0))
            sel.register(s, selectors.EVENT_READ, i)
        for rnd in range(n_rounds):
            is_id = rnd in (0, n_rounds - 1)
            want = {i: UDP_ID_QUERY if is_id else _udp_payload(a.seed, i, rnd - 1, a.size)
                    for i in range(a.sockets)}
            for attempt in range(a.retries + 1):
                if not want or out_of_time:
                    break
                if attempt:
                    st["retries"] += len(want)
                for i, msg in want.items():
                    try:
                        socks[i].sendto(msg, target)
                    except OSError:
                        st["send_errors"] += 1
                wait_end = min(time.monotonic() + a.wait, deadline)
                while want:
                    left = wait_end - time.monotonic()
                    if left <= 0:
                        out_of_time = time.monotonic() >= deadline
                        break
                    for key, _ in sel.select(left):
                        i = key.data
                        while True:
                            try:
                                data, src = socks[i].recvfrom(65535)
                            except (BlockingIOError, InterruptedError):
                                break
                            except OSError as e:       # the socket's own error, said in samples
                                if len(samples) < 5:
                                    samples.append("socket %d: %r" % (i, e))
                                break
                            received(i, data, src, rnd, want)
            if not is_id:
                st["lost"] += len(want)
    finally:
        sel.close()
        for s in socks:
            s.close()
    backends = {}
    for first, _ in ids:
        k = first if first is not None else "?"
        backends[k] = backends.get(k, 0) + 1
    return dict(st, sockets=a.sockets, datagrams=a.sockets * a.count, target="%s:%d" % target,
                backends=backends,
                id_lost=sum((f is None) + (last is None) for f, last in ids),
                moved=sum(1 for f, last in ids if None not in (f, last) and f != last),
                wrong_source_from=wrong_from, samples=samples, deadline=out_of_time,
                seconds=round(time.monotonic() - t0, 3))


# the fast-path counter each kind must land in (a frame cut inside the IP header cannot be
# sent as such: Ethernet padding completes it, and it then fails the header checksum)
EXPECTED_DROPS = {"ip_bad_len": "drop_ip_bad_len", "icmp_options": "drop_ip_options",
                  "frag_no_first": "drop_frag_no_first", "ip_csum": "drop_ip_csum",
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
        # IP options are forwarded, but an ICMP message's own are not read
        "icmp_options": eth + ip_hdr(ihl=6, tot=44, proto=1, opts=b"\x01\x01\x01\x00") + tcp,
        "frag_no_first": eth + ip_hdr(off=0x0010) + tcp,     # a later fragment, no first
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
    d = sub.add_parser("download")
    d.add_argument("url")
    d.add_argument("--bytes", type=int, required=True, help="the first N bytes (a Range GET)")
    d.add_argument("--rate", type=float, required=True, help="bytes per second")
    d.add_argument("--timeout", type=float, default=120)
    d.add_argument("--stall", type=float, default=5, help="s without a byte: an error")
    d.add_argument("--stop-file", help="stop reading once this file exists (a planned end)")
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
    u = sub.add_parser("udp")
    u.add_argument("host")
    u.add_argument("port", type=int)
    u.add_argument("--sockets", type=int, default=400)
    u.add_argument("--count", type=int, default=5, help="datagrams per socket")
    u.add_argument("--size", type=int, default=64, help="bytes per datagram (>= 8)")
    u.add_argument("--seed", type=int, default=1)
    u.add_argument("--wait", type=float, default=1.0, help="seconds a round waits for answers")
    u.add_argument("--retries", type=int, default=2, help="resends of an unanswered datagram")
    u.add_argument("--timeout", type=float, default=60, help="the whole run at most")
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
    if a.cmd == "download" and not (a.bytes >= 1 and a.rate > 0):
        p.error("download: --bytes must be >= 1 and --rate > 0")
    fn = {"http": cmd_http, "download": cmd_download, "echo": cmd_echo, "echo-slow": cmd_echo_slow,
          "udp": cmd_udp, "malformed": cmd_malformed, "synflood": cmd_synflood}[a.cmd]
    print(json.dumps(fn(a)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
