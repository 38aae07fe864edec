"""lbctl trace / trace --follow / capture on the control side: the filter grammar
(lb/watch.py), the trace answer (lb/trace.py) over a real LBState and Engine with known
flows, and the control socket's streaming form (lb/control.py) driven by lbctl itself
(lb/tracecli.py) against a real ControlServer, WatchHub and EngineGroup. Engines on both
twins (ids cy, py)."""
import asyncio
import ipaddress
import os
import shutil
import tempfile
import threading
import time

import dpkt
import pytest
from click.testing import CliRunner

from fastpath import Batch, defs
from lb import cli, config, watch
from lb.control import ControlServer
from lb.errors import LBError
from lb.state import LBState
from lb.trace import render, trace
from lb.workers import EngineGroup, EngineLock
from tools import frames as F

LB_IP, LB_MAC = "198.19.0.2", F.mac("02:54:57:00:00:02")
GW_MAC = F.mac("02:54:57:00:00:01")
C1, C2 = "198.18.0.10", "198.18.0.11"
NAT, SPL = "198.19.100.1", "198.19.100.3"
B1, B2 = "198.19.0.11", "198.19.0.12"
MACS = {B1: F.mac("02:00:00:00:0b:01"), B2: F.mac("02:00:00:00:0b:02")}


def ip(s):
    return int(ipaddress.IPv4Address(s))


# ---- the filter grammar ---------------------------------------------------------------------
def test_filter_grammar():
    p = watch.parse_filter
    assert p("") == [] and p([]) == []
    assert p("host 198.18.0.10") == [(defs.W_HOST, ip(C1))]
    assert p("HOST 198.18.0.10 and Port 80") == [(defs.W_HOST, ip(C1)), (defs.W_PORT, 80)]
    assert p(["src", "host", C1, "and", "dst", "port", "8080", "and", "udp"]) == [
        (defs.W_SRC, ip(C1)), (defs.W_DPORT, 8080), (defs.W_PROTO, defs.PROTO_UDP)]
    assert p("dst host 198.19.0.11 and src port 1 and icmp and tcp") == [
        (defs.W_DST, ip(B1)), (defs.W_SPORT, 1), (defs.W_PROTO, 1), (defs.W_PROTO, 6)]
    text = "src host 198.18.0.10 and port 80 and tcp"
    assert watch.format_filter(p(text)) == text
    assert watch.endpoint_terms("198.18.0.10:4000", "198.19.100.1:80") == [
        (defs.W_HOST, ip(C1)), (defs.W_PORT, 4000), (defs.W_HOST, ip(NAT)), (defs.W_PORT, 80)]
    assert watch.endpoint_terms(C1, None) == [(defs.W_HOST, ip(C1))]


@pytest.mark.parametrize("text,field,words", [
    ("hots 198.18.0.10", "filter", "word 1 'hots'"),
    ("host", "filter", "'host' at the end"),
    ("host 198.18.0", "filter", "word 2 '198.18.0'"),
    ("port 65536", "filter", "word 2 '65536'"),
    ("port -1", "filter", "word 2 '-1'"),
    ("host 198.18.0.10 port 80", "filter", "word 3 'port'"),
    ("host 198.18.0.10 and", "filter", "follow 'and'"),
    ("src tcp", "filter", "word 2 'tcp'"),
    ("and host 198.18.0.10", "filter", "word 1 'and'"),
    (" and ".join(["tcp"] * 9), "filter", "at most 8"),
])
def test_bad_filters_name_the_argument(text, field, words):
    with pytest.raises(LBError) as ei:
        watch.parse_filter(text)
    assert ei.value.field == field and words in ei.value.message


@pytest.mark.parametrize("client,vip,field", [
    ("198.18.0", None, "client"), (None, "198.19.100.1", "vip"), (None, "x:80", "vip")])
def test_bad_endpoints_name_the_argument(client, vip, field):
    with pytest.raises(LBError) as ei:
        watch.endpoint_terms(client, vip)
    assert ei.value.field == field


# ---- trace over a real state and engine -----------------------------------------------------
def make_state(impl, engine=None):
    cfg = config.parse({"lb": {"address": LB_IP, "gateway": "198.19.0.1"},
                        "flows": {"capacity": 1024},
                        "vip": [{"address": NAT, "port": 80, "mode": "nat", "scheduler": "maglev",
                                 "maglev_size": 251,
                                 "backend": [{"address": B1}, {"address": B2, "weight": 3}]},
                                {"address": NAT, "port": 53, "proto": "udp", "scheduler": "rr",
                                 "backend": [{"address": B2, "port": 5353}]},
                                {"address": SPL, "port": 80, "mode": "splice",
                                 "backend": [{"address": B1}, {"address": B2, "pool": "big"}],
                                 "rule": [{"kind": "path_prefix", "value": "/blob",
                                           "pool": "big"}]}]})
    e = engine or impl.Engine(1024)
    e.set_local(ip(LB_IP), LB_MAC)
    e.set_splice_secret(b"k" * 16)
    st = LBState(e, cfg)
    for b, m in MACS.items():
        st.learn_neighbor(ip(b), m)
    st.learn_neighbor(ip("198.19.0.1"), GW_MAC)
    return st, e


def send(e, frames, now):
    b = Batch(len(frames), snap=2048)
    b.load(frames)
    e.process(b, now)
    return b


def syn(client, sport, vip=NAT, dport=80, flags=F.TH_SYN, data=b""):
    return F.tcp(GW_MAC, LB_MAC, client, vip, sport, dport, flags=flags, data=data)


def test_trace_a_nat_flow_both_ways_and_a_new_one(impl):
    st, e = make_state(impl)
    b = send(e, [syn(C1, 40000)], 10_000)
    backend = F.int2ip(int.from_bytes(b.frame(0)[30:34], "big"))
    mac_b = MACS[backend]
    reply = F.tcp(mac_b, LB_MAC, backend, C1, 80, 40000, flags=F.TH_SYN | F.TH_ACK)
    send(e, [reply, syn(C1, 40000, flags=F.TH_ACK, data=b"hello")], 10_500)
    r = trace(st, e, ip(LB_IP), {"src": C1 + ":40000", "dst": NAT + ":80"}, 12_000)
    assert r["direction"] == "client -> vip"
    assert r["vip"]["mode"] == "nat" and r["vip"]["scheduler"] == "maglev"
    f = r["flow"]
    assert f["backend"] == backend + ":80" and f["mode"] == "nat"
    assert f["state"] == "ESTABLISHED" and f["key"] == "fwd"
    assert (f["age_s"], f["idle_s"]) == (2.0, 1.5)
    assert (f["packets_fwd"], f["packets_rev"]) == (2, 1)
    assert f["bytes_fwd"] == len(syn(C1, 40000)) + len(syn(C1, 40000, flags=F.TH_ACK, data=b"hello"))
    assert f["flags"] == ["in reverse index"]
    # the new-flow answer is the maglev slot the fast path used: hash -> slot -> backend
    nf = r["new_flow"]
    assert nf["backend"] == backend + ":80" and nf["table_size"] == 251
    assert int(nf["hash"], 16) % 251 == nf["slot"]
    assert nf["weight"] == (1 if backend == B1 else 3) and nf["health"] == "unchecked"
    assert "on the flow: to %s:80" % backend in r["verdict"]
    assert backend in render(r)
    # the reverse: the backend's side of the same flow, by the reverse key
    rv = trace(st, e, ip(LB_IP), {"src": backend + ":80", "dst": C1 + ":40000"}, 12_000)
    assert rv["direction"] == "backend -> client" and rv["flow"]["key"] == "rev"
    assert rv["flow"]["client"] == C1 + ":40000" and rv["vip"] is None
    # another client's would-be flow: no entry, and a new one goes where explain says; the
    # SYN then lands there (explain moved nothing)
    r2 = trace(st, e, ip(LB_IP), {"src": C2 + ":41000", "dst": NAT + ":80"}, 12_000)
    assert r2["flow"] is None and "opens one to" in r2["verdict"]
    b = send(e, [syn(C2, 41000)], 12_100)
    assert F.int2ip(int.from_bytes(b.frame(0)[30:34], "big")) + ":80" == r2["new_flow"]["backend"]


def test_trace_rr_does_not_move_the_cursor(impl):
    st, e = make_state(impl)
    args = {"src": C1 + ":5000", "dst": NAT + ":53", "proto": "udp"}
    a = trace(st, e, ip(LB_IP), args, 1000)["new_flow"]
    assert a == trace(st, e, ip(LB_IP), args, 1000)["new_flow"]
    assert a["backend"] == B2 + ":5353" and "next in turn" in a["why"]


def test_trace_splice_is_decided_by_content(impl):
    st, e = make_state(impl)
    send(e, [syn(C1, 42000, vip=SPL)], 1000)        # a SYN-ACK cookie: no flow yet
    r = trace(st, e, ip(LB_IP), {"src": C1 + ":42000", "dst": SPL + ":80"}, 1000)
    assert r["vip"]["mode"] == "splice" and r["vip"]["rules"] == ["path_prefix /blob -> big"] \
        or "path_prefix" in r["vip"]["rules"][0]
    assert r["new_flow"]["decided_by"] == "content"
    assert "decided by content" in r["new_flow"]["why"] and "needs the request" in \
        r["new_flow"]["why"]
    assert r["flow"] is None


def test_trace_no_vip_and_the_balancer(impl):
    st, e = make_state(impl)
    r = trace(st, e, ip(LB_IP), {"src": C1 + ":1", "dst": "198.19.100.99:80"}, 0)
    assert r["direction"] == "none" and r["vip"] is None and "drop_unknown_dest" in r["verdict"]
    r = trace(st, e, ip(LB_IP), {"src": C1 + ":1", "dst": LB_IP + ":22"}, 0)
    assert "punt_local" in r["verdict"]
    # a backend's packet with no flow: the consistent-hash VIP that would rebuild it
    x = e.explain(ip(C2), 43000, ip(NAT), 80, 6)
    real_b = B1 if x["real"] == st.handle("vip.list", {})[0]["backends"][0]["real"] else B2
    r = trace(st, e, ip(LB_IP), {"src": real_b + ":80", "dst": C2 + ":43000"}, 0)
    assert r["direction"] == "backend -> client" and r["flow"] is None
    assert r["rebuild"][0]["vip"] == NAT + ":80/tcp" and "flow_recreated_rev" in r["verdict"]


@pytest.mark.parametrize("args,field", [
    ({"dst": NAT + ":80"}, "src"), ({"src": C1 + ":1"}, "dst"),
    ({"src": C1, "dst": NAT + ":80"}, "src"), ({"src": C1 + ":1", "dst": NAT + ":80",
                                               "proto": "sctp"}, "proto"),
    ({"src": C1 + ":1", "dst": NAT + ":80", "x": 1}, "x")])
def test_trace_bad_args(impl, args, field):
    st, e = make_state(impl)
    with pytest.raises(LBError) as ei:
        trace(st, e, ip(LB_IP), args, 0)
    assert ei.value.field == field


# ---- streaming: lbctl trace --follow and capture against a real ControlServer ------------------
class Worker:
    def __init__(self, index, engine):
        self.index, self.engine, self.lock = index, engine, EngineLock(engine)


class Daemon:
    """A ControlServer on its own asyncio loop thread, serving trace/watch over two real
    engines (an EngineGroup, as lbd's workers) and an LBState."""

    def __init__(self, impl):
        self.engines = [impl.Engine(512), impl.Engine(512)]
        self.group = EngineGroup([Worker(i, x) for i, x in enumerate(self.engines)])
        self.state, _ = make_state(impl, self.group)
        names = lambda: {b["real"]: b["backend"] for v in self.state.handle("vip.list", {})  # noqa
                         for b in v["backends"]}
        self.hub = watch.WatchHub(self.group, names)
        self.dir = tempfile.mkdtemp(prefix="lbtr-")
        self.path = os.path.join(self.dir, "s")
        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(self.path, self.handle, allowed_uids=(os.getuid(),),
                                    streams={"watch": self.hub.open})
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            ready.set()
            self.loop.run_forever()
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def handle(self, cmd, args):
        if cmd == "trace":
            return trace(self.state, self.group, ip(LB_IP), args, 0)
        return self.state.handle(cmd, args)

    def send(self, worker, frames, now=1000):
        with self.group.workers[worker].lock:
            return send(self.engines[worker], frames, now)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        shutil.rmtree(self.dir)


@pytest.fixture
def lbd(impl):
    d = Daemon(impl)
    yield d
    d.close()


def lbctl(d, *args):
    return CliRunner().invoke(cli.main, ["--socket", d.path, *args], catch_exceptions=False)


def in_background(fn):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn()), daemon=True)
    t.start()
    return t, out


def watching(d):
    """The watch is set on every engine and its session is the hub's."""
    return d.hub.current is not None and d.group.watch_status()["on"]


def wait_for(cond, timeout=10):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_follow_shows_only_the_watched_client_then_ends(lbd):
    t, out = in_background(lambda: lbctl(lbd, "trace", "--follow", "host", C1, "--count", "2"))
    wait_for(lambda: watching(lbd))
    lbd.send(0, [syn(C2, 40001), syn(C1, 40000)])
    lbd.send(1, [syn(C2, 40002), syn(C1, 40003)], now=1001)
    t.join(10)
    r = out["r"]
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2
    assert all(C1 in ln and C2 not in ln for ln in lines)
    assert "w0 client->backend 198.18.0.10:40000 > 198.19.100.1:80 tcp [S]" in lines[0]
    assert "forwarded to 198.19.0.1" in lines[0] and "nat_fwd, flow_created" in lines[0]
    assert lines[1].split()[1] == "w1"
    assert "2 frames" in r.stderr
    assert not lbd.group.watch_status()["on"]          # the watch ended with the stream


def test_follow_json_and_one_watch_at_a_time(lbd):
    t, out = in_background(lambda: lbctl(lbd, "--json", "trace", "--follow", "--client", C1,
                                         "--vip", NAT + ":80", "--seconds", "1.5"))
    wait_for(lambda: watching(lbd))
    second = lbctl(lbd, "trace", "--follow", "tcp")
    assert second.exit_code == 1 and "error: watch: a watch is running" in second.stderr
    lbd.send(0, [syn(C1, 40000), syn(C1, 40000, vip=NAT, dport=81)])
    t.join(10)
    r = out["r"]
    assert r.exit_code == 0
    import json
    evs = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(evs) == 2 and evs[-1]["done"] and evs[-1]["frames"] == 1
    ev = evs[0]
    assert ev["verdict"] == "tx" and ev["reason"] == "nat_fwd" and ev["dir"] == "client->backend"
    assert ev["counters"] == {"rx_frames": 1, "nat_fwd": 1, "flow_created": 1}
    assert ev["flow"]["client"] == C1 + ":40000" and ev["out"]["dst"] in (B1, B2)


def test_capture_writes_a_pcap_of_both_directions(lbd, tmp_path):
    path = str(tmp_path / "f.pcap")
    t, out = in_background(lambda: lbctl(lbd, "capture", "--client", C1, "--count", "3",
                                         "-w", path))
    wait_for(lambda: watching(lbd))
    b = lbd.send(0, [syn(C1, 40000), syn(C2, 40009)])
    sent = b.frame(0)
    backend = F.int2ip(int.from_bytes(sent[30:34], "big"))
    reply = F.tcp(MACS[backend], LB_MAC, backend, C1, 80, 40000, flags=F.TH_SYN | F.TH_ACK)
    b2 = lbd.send(0, [reply])
    t.join(10)
    r = out["r"]
    assert r.exit_code == 0, r.output
    with open(path, "rb") as f:
        pkts = list(dpkt.pcap.Reader(f))
    assert [bytes(p) for _, p in pkts] == [syn(C1, 40000), sent, reply]
    assert pkts[0][0] <= pkts[2][0] and abs(float(pkts[0][0]) - time.time()) < 60
    assert b2.frame(0) not in [bytes(p) for _, p in pkts]    # the 4th frame: count was 3
    assert "3 frames (2 received, 1 sent" in r.stderr


def test_bad_follow_and_capture_args_exit_2(lbd, tmp_path):
    for argv, field in ((["trace", "--follow", "hots", C1], "filter"),
                        (["trace", "--follow", "--count", "0"], "count"),
                        (["trace", "--follow", "--seconds", "x"], "seconds"),
                        (["trace", "--follow", "--client", "1.2.3"], "client"),
                        (["trace", C1 + ":1"], "tuple"),
                        (["trace", C1 + ":1", NAT + ":80", "--count", "1"], "count"),
                        (["capture", "--vip", NAT, "-w", str(tmp_path / "x")], "vip"),
                        (["capture", "--snap", "10", "-w", str(tmp_path / "x")], "snap")):
        r = lbctl(lbd, *argv)
        assert r.exit_code == 2 and ("error: %s:" % field) in r.stderr, (argv, r.output)
    assert not lbd.group.watch_status()["on"]


def test_trace_command_over_the_socket(lbd):
    lbd.send(1, [syn(C1, 40000)])
    r = lbctl(lbd, "trace", C1 + ":40000", NAT + ":80")
    assert r.exit_code == 0
    assert "flow on worker 1: 198.18.0.10:40000 -> 198.19.100.1:80 via 198.19.0.1" in r.stdout
    assert "state SYN_SENT" in r.stdout and "=> on the flow" in r.stdout


def test_client_going_away_ends_the_watch(lbd):
    import socket as so
    s = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    s.connect(lbd.path)
    s.sendall(b'{"cmd": "watch", "args": {"filter": "tcp"}}\n')
    f = s.makefile("rb")
    assert b'"more": true' in f.readline()
    wait_for(lambda: watching(lbd))
    f.close()
    s.close()
    wait_for(lambda: not lbd.group.watch_status()["on"])
    # and the one-line protocol is unchanged on the same server
    r = lbctl(lbd, "vip", "list")
    assert r.exit_code == 0 and NAT in r.stdout


def test_frames_python_sent_are_shown_and_captured(lbd, tmp_path):
    made = F.tcp(LB_MAC, MACS[B1], C1, B1, 40000, 80, flags=F.TH_SYN)
    other = F.tcp(LB_MAC, MACS[B1], C2, B1, 40001, 80, flags=F.TH_SYN)
    lbd.hub.note_sent([made], 0)                    # no watch: nothing kept
    t, out = in_background(lambda: lbctl(lbd, "trace", "--follow", "host", C1, "--count", "1"))
    wait_for(lambda: watching(lbd))
    lbd.hub.note_sent([other, made], 1)
    t.join(10)
    r = out["r"]
    assert r.exit_code == 0, r.output
    (line,) = r.stdout.strip().splitlines()
    assert "w1 lbd-made 198.18.0.10:40000 > 198.19.0.11:80 tcp [S]" in line
    path = str(tmp_path / "m.pcap")
    t, out = in_background(lambda: lbctl(lbd, "capture", "--client", C1, "--count", "1",
                                         "-w", path))
    wait_for(lambda: watching(lbd))
    lbd.hub.note_sent([made], None)
    t.join(10)
    assert out["r"].exit_code == 0, out["r"].output
    with open(path, "rb") as f:
        assert [bytes(p) for _, p in dpkt.pcap.Reader(f)] == [made]


FRAMES = [syn(C1, 40000), syn(C2, 5, vip=SPL, dport=8080),
          F.udp(GW_MAC, LB_MAC, C1, NAT, 5353, 53, data=b"q"),
          F.icmp_echo(GW_MAC, LB_MAC, C1, LB_IP),
          F.udp(LB_MAC, GW_MAC, LB_IP, "198.19.200.11", 50000, defs.VXLAN_PORT,
                data=b"\x08\0\0\0\0\x10\x92\0" + syn(C2, 7)),
          F.arp_request(GW_MAC, "198.19.0.1", LB_IP)]
TERMS = ["", "host 198.18.0.10", "host 198.18.0.11 and port 7", "src host 198.18.0.10 and udp",
         "dst port 80", "icmp", "sport 5353", "dst host 198.19.0.2 and tcp",
         "port 4789 and dst host 198.19.200.11"]


@pytest.mark.parametrize("text", TERMS)
def test_python_matcher_agrees_with_the_engine(impl, text):
    terms = watch.parse_filter(text.replace("sport", "src port"))
    e = impl.Engine(64)
    e.set_local(ip(LB_IP), LB_MAC)
    e.watch_set(terms)
    send(e, FRAMES, 0)            # no services: nothing is sent, a record is a match on input
    recorded = [bytes(r[4]) for r in e.watch_drain()]
    assert recorded == [f for f in FRAMES if watch.frame_matches(terms, f)]
