"""Layer-7 DSR (modes/splice: probe.py, rtsp.py, redirect.py, manager.py, vip.py): probe,
verify, redirect, for HTTP and RTSP.

- the Probe state machine driven by hand, event by event, and Prober on real non-blocking
  sockets against throwaway servers on 127.0.0.1 in this process (ok, bad status, refused,
  silent -> timeout, junk);
- the answers the LB makes (302, 503, RTSP OPTIONS/302/455...) and the RTSP parser;
- SpliceManager over a real engine (both twins) with a probe that really runs: 302 after a
  passed probe, the next backend after a failed one, 503 when all fail, the cache, the RTSP
  session (OPTIONS answered, DESCRIBE redirected);
- SpliceVip.candidates: source-address persistence (the same node for the same client).
"""
import socket
import struct
import threading
import time

import pytest

from fastpath import Batch, ServiceSpec, defs
from modes import splice as l7
from modes.splice import SpliceManager, probe as P, redirect as RD, rtsp as RT
from tools import frames as F

from tests.fastpath.fixtures import B1, CLIENT, GW, LB, make_engine

VIP = "198.19.100.6"
NOW = 5_000_000
M32 = 0xFFFFFFFF
LOCAL = "127.0.0.1"


# --- servers on 127.0.0.1 ------------------------------------------------------------------------

class Server:
    """Answers every connection with `reply` once it has read a request head (or stays
    silent: reply None). Records the heads. Lives until close(); accept is bounded by a
    timeout so the thread always ends."""

    def __init__(self, reply):
        self.reply = reply
        self.heads = []
        self.sock = socket.socket()
        self.sock.bind((LOCAL, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.running = True
        self.held = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            c.settimeout(2)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = c.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            self.heads.append(data)
            if self.reply is None:
                self.held.append(c)            # silent: keep it open
                continue
            try:
                c.sendall(self.reply)
            except OSError:
                pass
            c.close()

    def close(self):
        self.running = False
        self.thread.join(5)
        self.sock.close()
        for c in self.held:
            c.close()


@pytest.fixture
def servers():
    made = []

    def make(reply):
        s = Server(reply)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def refused_port():
    s = socket.socket()
    s.bind((LOCAL, 0))
    port = s.getsockname()[1]
    s.close()                                   # nothing listens there now
    return port


def run_prober(pr, deadline_s=5.0):
    """Poll until every probe ended (bounded); [(token, Probe)]."""
    out = []
    end = time.monotonic() + deadline_s
    while len(pr) and time.monotonic() < end:
        out += pr.poll(int(time.monotonic() * 1000))
        time.sleep(0.002)
    assert not len(pr), "probes still in flight"
    return out


OK200 = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BAD503 = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
RTSP200 = (b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nPublic: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n"
           b"Content-Type: application/sdp\r\nContent-Length: 0\r\n\r\n")


# --- the state machine, by hand ------------------------------------------------------------------

def test_probe_state_machine_by_events():
    spec = P.ProbeSpec()
    p = P.Probe(("198.19.0.11", 80), b"HEAD / HTTP/1.1\r\n\r\n", spec, 1000)
    assert (p.state, p.deadline) == (P.CONNECTING, 2000)
    p.read(b"HTTP/1.1 200 OK\r\n")            # not reading yet: ignored
    assert p.state == P.CONNECTING
    p.connected()
    p.wrote(5)
    assert p.state == P.SENDING
    p.wrote(100)
    assert p.state == P.READING
    p.read(b"HTTP/1.1 3")
    assert not p.done
    p.read(b"02 Found\r\nLocation: /x\r\n")
    assert (p.state, p.status, p.detail) == (P.OK, 302, "HTTP 302")
    p.error("late")                             # a probe ends once
    assert p.state == P.OK


@pytest.mark.parametrize("events,state,detail", [
    ([("read", b"HTTP/1.1 404 Not Found\r\n")], P.FAILED, "HTTP 404 not in 2xx,3xx"),
    ([("read", b"")], P.FAILED, "closed before a status line"),
    ([("read", b"HTTP/1.1 2"), ("read", b"")], P.FAILED, "closed inside the status line"),
    ([("read", b"SSH-2.0-OpenSSH\r\n")], P.FAILED, "not a status line"),
    ([("read", b"x" * 600)], P.FAILED, "no status line"),
    ([("expire", 1999)], P.READING, ""),
    ([("expire", 2000)], P.FAILED, "timeout after 1 s (reading)"),
    ([("read", b"RTSP/1.0 200 OK\r\nPublic: OPTIONS, DESCRIBE\r\n")], P.OK, "RTSP 200"),
])
def test_probe_endings(events, state, detail):
    p = P.Probe(("198.19.0.11", 80), b"x", P.ProbeSpec(), 1000)
    p.connected()
    p.wrote(1)
    for what, arg in events:
        getattr(p, what)(arg)
    assert p.state == state and p.detail.startswith(detail), p.detail


def test_expect_and_status_lines():
    assert P.parse_expect("2xx, 301-302,404") == [(200, 299), (301, 302), (404, 404)]
    assert P.canonical_expect("2XX,200-299,304") == "2xx,2xx,304"
    assert P.status_ok("2xx,3xx", 399) and not P.status_ok("2xx,3xx", 400)
    assert P.parse_status(b"HTTP/1.0 204 No Content\r\n") == (204, b"")
    assert P.parse_status(b"HTTP/1.1 20") is None
    assert isinstance(P.parse_status(b"HTTP/1.1 2000 x\r\n"), str)
    assert isinstance(P.parse_status(b"HTTP/2 200\r\n"), str)


# --- Prober on real sockets ----------------------------------------------------------------------

def test_prober_results_against_real_servers(servers):
    ok, bad, junk, silent = servers(OK200), servers(BAD503), servers(b"hello\r\n"), servers(None)
    pr = P.Prober()
    spec = P.ProbeSpec(timeout=0.3)
    now = int(time.monotonic() * 1000)
    for name, port in (("ok", ok.port), ("bad", bad.port), ("junk", junk.port),
                       ("silent", silent.port), ("refused", refused_port())):
        pr.start(name, (LOCAL, port), P.http_probe_request("HEAD", "h", "/media/a?x=1"), spec, now)
    t0 = time.monotonic()
    got = {tok: p for tok, p in run_prober(pr)}
    assert time.monotonic() - t0 < 3                  # bounded by the 0.3 s timeout (+ slack)
    assert (got["ok"].state, got["ok"].detail) == (P.OK, "HTTP 200")
    assert got["bad"].detail == "HTTP 503 not in 2xx,3xx"
    assert got["junk"].detail.startswith("not a status line")
    assert got["silent"].detail == "timeout after 0.3 s (reading)"
    assert got["refused"].detail == "connect refused"
    assert all(p.sock is None and p.ended is not None for p in got.values())
    head = ok.heads[0]
    assert head.startswith(b"HEAD /media/a?x=1 HTTP/1.1\r\nHost: h\r\n") and b"Connection: close" in head


def test_prober_rtsp_describe_keeps_the_public_header(servers):
    s = servers(RTSP200)
    pr = P.Prober()
    spec = P.default_probe("rtsp")
    pr.start(1, (LOCAL, s.port), P.rtsp_probe_request("DESCRIBE", "rtsp://%s:%d/test" % (LOCAL, s.port)),
             spec, int(time.monotonic() * 1000))
    (tok, p), = run_prober(pr)
    assert p.state == P.OK and p.public == "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN"
    assert s.heads[0].startswith(b"DESCRIBE rtsp://127.0.0.1:%d/test RTSP/1.0\r\nCSeq: 1\r\n" % s.port)


# --- answers and the RTSP parser -----------------------------------------------------------------

def test_answers():
    assert RD.target_host("198.19.0.12", 80, 80) == "198.19.0.12"
    assert RD.target_host("198.19.0.12", 8080, 80, "media3.example") == "media3.example:8080"
    r = RD.unavailable_response("no backend passed its probe")
    assert r.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"Connection: close" in r
    assert r.endswith(b"\r\n\r\nno backend passed its probe\n")
    st, a = RD.rtsp_answer("OPTIONS", "7", "OPTIONS, DESCRIBE")
    assert (st, a) == (200, b"RTSP/1.0 200 OK\r\nCSeq: 7\r\nServer: threeway\r\n"
                            b"Public: OPTIONS, DESCRIBE\r\n\r\n")
    assert RD.rtsp_answer("SETUP", "2")[0] == 455 and RD.rtsp_answer("PLAY", "3")[0] == 455
    assert RD.rtsp_answer("ANNOUNCE", "2")[0] == 405 and RD.rtsp_answer("FOO", "2")[0] == 501
    # a CSeq that is not digits is not echoed (no header injection)
    assert b"CSeq" not in RD.rtsp_answer("OPTIONS", "1\r\nX: y")[1]
    r = RD.rtsp_redirect("198.19.0.12", "/test", "a=1", "2")
    assert r.startswith(b"RTSP/1.0 302 Moved Temporarily\r\nCSeq: 2\r\n")
    assert b"\r\nLocation: rtsp://198.19.0.12/test?a=1\r\n" in r
    assert b"%0D%0A" in RD.rtsp_redirect("h", "/a\r\nX: y", "", "2")


def test_rtsp_parser():
    r = RT.parse_rtsp_request(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n")
    assert (r.method, r.path, r.cseq, r.agent, r.length) == ("OPTIONS", "*", "1", "", 31)
    r = RT.parse_rtsp_request(b"SET_PARAMETER rtsp://v:554/live/x?y=1 RTSP/1.0\r\nCSeq: 9\r\n"
                              b"Content-Length: 4\r\nUser-Agent: Lavf/60\r\n\r\nab")
    assert (r.path, r.query, r.body_len, r.agent) == ("/live/x", "y=1", 4, "Lavf/60")
    assert RT.parse_rtsp_request(b"DESCRIBE rtsp://v RTSP/1.0\r\n\r\n").path == "/"
    assert RT.parse_rtsp_request(b"DESCRIBE rtsp://v/a RTSP/1.0\r\nCSeq") is RT.NEED_MORE
    for bad, why in ((b"GET / HTTP/1.1\r\n\r\n", "unsupported version"),
                     (b"GET / HTTP/1.1", "unsupported version"),
                     (b"\x16\x03\x01", "bad method"),
                     (b"DESCRIBE http://v/a RTSP/1.0\r\n\r\n", "bad url"),
                     (b"DESCRIBE rtsp:///a RTSP/1.0\r\n\r\n", "bad url"),
                     (b"OPTIONS * RTSP/1.0\r\nContent-Length: x\r\n\r\n", "bad content-length"),
                     (b"OPTIONS * RTSP/1.0\r\nCSeq : 1\r\n\r\n", "bad header name")):
        assert RT.parse_rtsp_request(bad) == l7.Invalid(why), bad
    # prefix-stable: once not NEED_MORE, every longer input answers the same
    full = b"DESCRIBE rtsp://198.19.100.3/test RTSP/1.0\r\nCSeq: 2\r\nAccept: application/sdp\r\n\r\n"
    for junk in (full, b"DESCRIBE rtsp://v/a HTTP/1.0\r\n\r\n", b"DE\x00SCRIBE"):
        first = None
        for i in range(len(junk) + 1):
            r = RT.parse_rtsp_request(junk[:i])
            if first is None and r is not RT.NEED_MORE:
                first = r
            elif first is not None:
                assert type(r) is type(first)


# --- SpliceManager with real probes -------------------------------------------------------------

class Vip:
    """What SpliceManager reads of a splice VIP (modes/splice/vip.py's SpliceVip); the
    candidates are servers on 127.0.0.1, in order."""

    def __init__(self, rules, cands):
        self.ruleset = l7.RuleSet(rules)
        self.limit = 4096
        self.timeout_ms = 3000
        self.cands = cands

    def candidates(self, pool, cip, engine, n):
        return self.cands[:n]

    def choose(self, pool, cip, cport, engine):
        return None


class Ctx:
    def __init__(self, vip):
        self._vip = vip

    def vip(self, ip, port):
        return self._vip if (ip, port) in ((F.ip2int(VIP), 80), (F.ip2int(VIP), 554)) else None

    def mac_of(self, ip):
        return B1

    def gateway_mac(self):
        return GW


def cand(port, name=""):
    return (0, F.ip2int(LOCAL), port, name)


def setup(impl, rules, cands, vport=80):
    e = make_engine(impl.Engine, ServiceSpec)
    e.set_splice_secret(bytes(16))
    e.set_services([ServiceSpec(F.ip2int(VIP), vport, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1])])
    board = P.ProbeBoard()
    return e, SpliceManager(e, Ctx(Vip(rules, cands)), LB, board), board


def run(e, sm, frame, now=NOW):
    b = Batch(1)
    b.load([frame])
    e.process(b, now)
    v, reason, out = b.results()[0]
    return sm.handle(out, now) if v == defs.V_PUNT else []


def connect(e, sm, vport=80, sport=40000, c_isn=1000):
    syn = F.tcp(GW, LB, CLIENT, VIP, sport, vport, flags=F.TH_SYN, seq=c_isn,
                opts=struct.pack("!BBH", 2, 4, 1460))
    b = Batch(1)
    b.load([syn])
    e.process(b, NOW)
    cookie = struct.unpack("!I", b.results()[0][2][38:42])[0]
    assert run(e, sm, F.tcp(GW, LB, CLIENT, VIP, sport, vport, seq=c_isn + 1,
                            ack=(cookie + 1) & M32)) == []
    return cookie


def send(e, sm, cookie, data, off=0, vport=80, sport=40000, c_isn=1000):
    return run(e, sm, F.tcp(GW, LB, CLIENT, VIP, sport, vport, flags=F.TH_ACK | F.TH_PUSH,
                            seq=c_isn + 1 + off, ack=(cookie + 1) & M32, data=data))


def wait_answer(sm, deadline_s=5.0):
    """Poll the manager as the worker does, until it answers (bounded)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        out = sm.poll(NOW + 1)
        if out:
            return out
        assert sm.wake_ms() is not None, "no probe in flight and no answer"
        time.sleep(0.002)
    raise AssertionError("no answer within %g s" % deadline_s)


def payload(frame):
    return frame[54 + (len(frame) > 54 and ((frame[46] >> 4) * 4 - 20)):]


def body(frame):
    doff = (frame[46] >> 4) * 4
    return frame[34 + doff:]


REQ = b"GET /media/a.txt?v=2 HTTP/1.1\r\nHost: v\r\n\r\n"
REDIRECT = l7.Rule("path_prefix", "/media/", "m", "redirect", P.ProbeSpec(timeout=0.5))


def test_redirect_after_a_passed_probe_keeps_path_and_query(impl, servers):
    s = servers(OK200)
    e, sm, board = setup(impl, [REDIRECT], [cand(s.port, "media3.example")])
    cookie = connect(e, sm)
    assert send(e, sm, cookie, REQ) == []          # held: the probe runs, nothing answered
    assert sm.wake_ms() is not None
    assert send(e, sm, cookie, REQ) == []          # the client resends meanwhile: still held
    out = wait_answer(sm)
    assert len(out) == 1 and F.checksums_ok(out[0]) and out[0][0:6] == GW
    f = out[0]
    assert f[47] == F.TH_ACK | F.TH_PUSH | F.TH_FIN
    assert struct.unpack("!I", f[42:46])[0] == 1001 + len(REQ)     # acks the request
    assert body(f).startswith(b"HTTP/1.1 302 Found\r\nLocation: http://media3.example:%d"
                              b"/media/a.txt?v=2\r\n" % s.port)
    assert s.heads[0].startswith(b"HEAD /media/a.txt?v=2 HTTP/1.1\r\nHost: media3.example:%d\r\n"
                                 % s.port)
    c = sm.counters()
    assert (c["probe_sent"], c["probe_ok"], c["redirect_sent"], c["redirect_503"]) == (1, 1, 1, 0)
    (r,) = board.view(F.ip2int(VIP), 80)
    assert (r["backend"], r["last"], r["ok"], r["detail"]) == ("%s:%d" % (LOCAL, s.port), "ok", 1,
                                                               "HTTP 200")


def test_a_failed_probe_tries_the_next_backend_never_redirects_to_it(impl, servers):
    bad, good = servers(BAD503), servers(OK200)
    dead = refused_port()
    e, sm, board = setup(impl, [REDIRECT], [cand(dead), cand(bad.port), cand(good.port)])
    cookie = connect(e, sm)
    send(e, sm, cookie, REQ)
    out = wait_answer(sm)
    assert b"Location: http://127.0.0.1:%d/media/a.txt?v=2" % good.port in body(out[0])
    c = sm.counters()
    assert (c["probe_sent"], c["probe_failed"], c["probe_next"], c["probe_ok"]) == (3, 2, 2, 1)
    last = {r["backend"]: r["last"] for r in board.view(F.ip2int(VIP), 80)}
    assert last == {"127.0.0.1:%d" % dead: "failed", "127.0.0.1:%d" % bad.port: "failed",
                    "127.0.0.1:%d" % good.port: "ok"}


def test_every_backend_failing_gets_the_client_a_503(impl, servers):
    bad = servers(BAD503)
    rule = l7.Rule("path_prefix", "/media/", "m", "redirect", P.ProbeSpec(timeout=0.5, tries=2))
    e, sm, _ = setup(impl, [rule], [cand(refused_port()), cand(bad.port), cand(servers(OK200).port)])
    cookie = connect(e, sm)
    send(e, sm, cookie, REQ)
    out = wait_answer(sm)
    assert body(out[0]).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert out[0][47] & F.TH_FIN
    c = sm.counters()
    assert (c["probe_sent"], c["redirect_503"], c["redirect_sent"]) == (2, 1, 0)   # tries = 2


def test_the_probe_cache_answers_the_next_request_without_a_probe(impl, servers):
    s = servers(OK200)
    rule = l7.Rule("path_prefix", "/media/", "m", "redirect", P.ProbeSpec(timeout=0.5, cache=5.0))
    e, sm, _ = setup(impl, [rule], [cand(s.port)])
    c1 = connect(e, sm, sport=40001)
    send(e, sm, c1, REQ, sport=40001)
    wait_answer(sm)
    c2 = connect(e, sm, sport=40002, c_isn=5000)
    out = send(e, sm, c2, REQ, sport=40002, c_isn=5000)   # answered at once, from the cache
    assert len(out) == 1 and b"302 Found" in body(out[0])
    c = sm.counters()
    assert (c["probe_sent"], c["probe_cached"], c["redirect_sent"]) == (1, 1, 2)
    assert len(s.heads) == 1


def test_redirect_without_probe_answers_at_once(impl):
    rule = l7.Rule("path_prefix", "/media/", "m", "redirect", None)
    e, sm, _ = setup(impl, [rule], [cand(refused_port())])
    cookie = connect(e, sm)
    out = send(e, sm, cookie, REQ)
    assert len(out) == 1 and b"302 Found" in body(out[0])
    assert sm.counters()["redirect_unprobed"] == 1 and sm.counters()["probe_sent"] == 0


def test_rtsp_options_answered_describe_redirected_after_the_probe(impl, servers):
    node = servers(RTSP200)
    rule = l7.Rule("rtsp", "/", "m", "redirect", P.ProbeSpec("DESCRIBE", expect="2xx", timeout=0.5))
    e, sm, _ = setup(impl, [rule], [cand(node.port)], vport=554)
    cookie = connect(e, sm, vport=554)
    opt = b"OPTIONS rtsp://198.19.100.6:554/test RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: Lavf\r\n\r\n"
    out = send(e, sm, cookie, opt, vport=554)
    assert len(out) == 1 and out[0][47] == F.TH_ACK | F.TH_PUSH       # the session stays open
    a1 = body(out[0])
    assert a1.startswith(b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n") and b"Public: OPTIONS, DESCRIBE" in a1
    assert struct.unpack("!I", out[0][42:46])[0] == 1001 + len(opt)
    setup_req = b"SETUP rtsp://198.19.100.6:554/test/stream=0 RTSP/1.0\r\nCSeq: 2\r\n\r\n"
    out = send(e, sm, cookie, setup_req, off=len(opt), vport=554)
    assert body(out[0]).startswith(b"RTSP/1.0 455 Method Not Valid in This State\r\nCSeq: 2\r\n")
    seq2 = struct.unpack("!I", out[0][38:42])[0]
    desc = b"DESCRIBE rtsp://198.19.100.6:554/test RTSP/1.0\r\nCSeq: 3\r\nAccept: application/sdp\r\n\r\n"
    assert send(e, sm, cookie, desc, off=len(opt) + len(setup_req), vport=554) == []
    out = wait_answer(sm)
    f = out[0]
    assert body(f).startswith(b"RTSP/1.0 302 Moved Temporarily\r\nCSeq: 3\r\n")
    assert b"\r\nLocation: rtsp://127.0.0.1:%d/test\r\n" % node.port in body(f)
    # our bytes follow on in sequence; the 302 acknowledges all three requests
    assert struct.unpack("!I", f[38:42])[0] == seq2 + len(body(out[0])) - len(body(f)) + \
        len(RD.rtsp_answer("SETUP", "2")[1])
    assert struct.unpack("!I", f[42:46])[0] == 1001 + len(opt) + len(setup_req) + len(desc)
    assert node.heads[0].startswith(b"DESCRIBE rtsp://127.0.0.1:%d/test RTSP/1.0\r\n" % node.port)
    c = sm.counters()
    assert (c["rtsp_options"], c["rtsp_answered"], c["rtsp_describe_redirected"]) == (1, 1, 1)


def test_rtsp_describe_of_a_stream_no_rule_takes_is_404(impl):
    rule = l7.Rule("rtsp", "/live", "m", "redirect", P.ProbeSpec("DESCRIBE", expect="2xx"))
    e, sm, _ = setup(impl, [rule, l7.Rule("rtsp", "/", "m", "forward")], [cand(refused_port())],
                     vport=554)
    cookie = connect(e, sm, vport=554)
    opt = b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n"
    assert b"200 OK" in body(send(e, sm, cookie, opt, vport=554)[0])
    out = send(e, sm, cookie, b"DESCRIBE rtsp://v/other RTSP/1.0\r\nCSeq: 2\r\n\r\n",
               off=len(opt), vport=554)
    assert body(out[0]).startswith(b"RTSP/1.0 404 Not Found\r\nCSeq: 2\r\n")
    assert sm.counters()["rtsp_not_found"] == 1


# --- persistence by client address ----------------------------------------------------------------

def test_candidates_keep_a_client_on_its_node_while_it_is_up():
    from types import SimpleNamespace as NS
    from lb import schedulers

    def view(sched, up):
        backs = [NS(ip=F.ip2int("198.19.0.%d" % i), port=80, pool="m", name="", key=str(i))
                 for i in (11, 12, 13, 14)]
        members = [(i, b.key, 1 if i in up else 0) for i, b in enumerate(backs)]
        vip = NS(options=l7.SpliceOptions(rules=(REDIRECT,)), backends=backs,
                 ip=F.ip2int(VIP), port=80)
        sv = l7.SpliceVip(vip, members, lambda mem: schedulers.build(sched, mem, 65537))
        e = make_engine(__import__("fastpath").Engine, ServiceSpec)
        e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ,
                                    [0], [1], 0, sv.l7spec)])
        return sv, e

    clients = [F.ip2int("198.18.%d.%d" % (i // 200, i % 200 + 10)) for i in range(300)]
    for sched in ("rr", "maglev"):
        sv, e = view(sched, {0, 1, 2, 3})
        first = {c: sv.candidates("m", c, e, 3)[0][0] for c in clients}
        again = {c: sv.candidates("m", c, e, 3)[0][0] for c in clients}
        assert first == again and len(set(first.values())) == 4        # stable, spread
        assert all(len({x[0] for x in sv.candidates("m", c, e, 4)}) == 4 for c in clients[:20])
        sv2, e2 = view(sched, {0, 2, 3})                                # node 1 goes down
        moved = {c for c in clients if sv2.candidates("m", c, e2, 1)[0][0] != first[c]}
        its = {c for c in clients if first[c] == 1}
        assert its <= moved and its, sched
        # rendezvous: only its clients move; Maglev: nearly only (its table is rebuilt)
        assert len(moved - its) <= (0 if sched == "rr" else len(clients) // 20), sched
