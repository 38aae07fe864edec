"""Health checks (lb/health.py and their side in lb/state.py, lb/config.py, lb/cli.py).

- the rise/fall state machine, table-driven; HTTP status-line parsing
- probes against throwaway asyncio servers on 127.0.0.1 in this process (tcp, http, refused,
  wrong status, garbage, silence)
- config and lbctl errors name their field
- LBState on both engines (ids `cy`, `py`): a down backend leaves the new-flow table and the
  engine knows (set_real_up), flows follow the VIP's on_backend_down, it comes back, Maglev
  moves only what it must
- the policy routes of VIP-path probes (the `ip` commands, with a fake runner) and the
  monitor's asyncio tasks (with a fake probe): results reach the state, at most N in flight
"""
import asyncio
import ipaddress
import json
import socket
import time

import dpkt
import pytest
from click.testing import CliRunner

from fastpath import defs, twin
from lb import cli, config, health
from lb.errors import LBError
from lb.health import BackendHealth, HealthMonitor, PolicyRoutes, Target
from lb.state import LBState

from .test_state import B1, B2, B3, LB_IP, LB_MAC, MACS, VIP, SpyEngine, ip, send, tcp_frame


# --- the rise/fall state machine -----------------------------------------------------------------

# (rise, fall, results: "+" success / "-" failure, the state after each, transitions' reasons)
RISE_FALL = [
    (2, 2, "+++", "uuu", []),
    (2, 2, "--", "ud", ["connect refused (2 failures)"]),
    (2, 2, "-+--", "uuud", ["connect refused (2 failures)"]),
    (2, 2, "--+-++", "uddddu", ["connect refused (2 failures)", "HTTP 200 (2 successes)"]),
    (1, 1, "-+-+", "dudu", ["connect refused (1 failure)", "HTTP 200 (1 success)",
                            "connect refused (1 failure)", "HTTP 200 (1 success)"]),
    (3, 3, "---+++", "uudddu", ["connect refused (3 failures)", "HTTP 200 (3 successes)"]),
    (2, 3, "----++", "uudddu", ["connect refused (3 failures)", "HTTP 200 (2 successes)"]),
    (2, 2, "--+-+-++", "uddddddu", ["connect refused (2 failures)",
                                     "HTTP 200 (2 successes)"]),
]


@pytest.mark.parametrize("rise,fall,results,states,reasons", RISE_FALL,
                         ids=["r%df%d:%s" % (r, f, x) for r, f, x, _, _ in RISE_FALL])
def test_rise_fall(rise, fall, results, states, reasons):
    h = BackendHealth(rise, fall, now=100.0)
    assert (h.state, h.reason) == ("up", "checks started")
    got_states, got_reasons = "", []
    for i, r in enumerate(results):
        ok = r == "+"
        flipped = h.record(ok, "HTTP 200" if ok else "connect refused", now=101.0 + i)
        got_states += h.state[0]
        if flipped:
            got_reasons.append(h.reason)
            assert h.since == 101.0 + i
    assert got_states == states
    assert got_reasons == reasons
    assert h.probes == len(results) and h.last in ("HTTP 200", "connect refused")


def test_health_text():
    h = BackendHealth(2, 2, now=time.mktime((2026, 1, 1, 12, 1, 3, 0, 0, -1)))
    h.record(False, "connect refused", h.since)
    h.record(False, "connect refused", h.since)
    assert health.health_text(h.view()) == "down since 12:01:03: connect refused (2 failures)"
    h.record(False, "connect timeout after 1s", h.since)
    assert health.health_text(h.view()).endswith("; last probe: connect timeout after 1s")


# --- HTTP status lines ---------------------------------------------------------------------------

@pytest.mark.parametrize("line,status", [
    (b"HTTP/1.1 200 OK\r\n", 200),
    (b"HTTP/1.0 404 Not Found\r\n", 404),
    (b"HTTP/1.1 503 Service Unavailable\n", 503),
    (b"HTTP/1.1 204\r\n", 204),                 # no reason phrase, no SP
    (b"HTTP/1.1 204 \r\n", 204),                # empty reason phrase
    (b"HTTP/1.1 200 OK", 200),                  # no line end
    (b"HTTP/1.1 418 I'm a teapot\r\n", 418),
    (b"HTTP/1.1 200 \xc3\xa7a va\r\n", 200),    # obs-text in the reason
])
def test_parse_status_line(line, status):
    assert health.parse_status_line(line) == status


@pytest.mark.parametrize("line", [
    b"", b"\r\n", b"HTTP/1.1\r\n", b"HTTP/1.1 20 OK\r\n", b"HTTP/1.1 2000 OK\r\n",
    b"HTTP/1.1 600 Nope\r\n", b"HTTP/1.1 099 x\r\n", b"http/1.1 200 OK\r\n",
    b"ICY 200 OK\r\n", b"HTTP/2 200\r\n", b"HTTP/1.1  200 OK\r\n", b"HTTP/1.1 200 OK\r\nX",
    b"HTTP/1.1 200 O\x00K\r\n", b"SSH-2.0-OpenSSH_9.2\r\n",
])
def test_parse_status_line_rejects(line):
    with pytest.raises(ValueError):
        health.parse_status_line(line)


# --- probes against throwaway local servers ------------------------------------------------------

LOCAL = ip("127.0.0.1")


def target(check, port, timeout=0.5, path="/health", expect=200):
    return Target(check, LOCAL, port, path, expect, 0.1, timeout, None, "198.19.100.1")


def free_port():
    """A port nothing listens on (bound, then closed: connecting is refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def serve(reply, seen=None):
    """A server on 127.0.0.1 that reads the request head, stores it in seen, then writes
    `reply` (None: stays silent) and closes."""
    async def handle(reader, writer):
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            if seen is not None:
                seen.append(head)
            if reply is None:
                await asyncio.sleep(5)
            else:
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


def run_probe(check, reply=b"", timeout=0.5, listen=True, **kw):
    seen = []

    async def main():
        if not listen:
            return await health.probe(target(check, free_port(), timeout, **kw))
        srv = await serve(reply, seen)
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            return await health.probe(target(check, port, timeout, **kw))
    t0 = time.monotonic()
    result = asyncio.run(main())
    return result, seen, time.monotonic() - t0


def test_tcp_probe_ok_and_refused():
    (ok, detail), _, _ = run_probe("tcp")
    assert (ok, detail) == (True, "TCP connect ok")
    (ok, detail), _, _ = run_probe("tcp", listen=False)
    assert (ok, detail) == (False, "connect refused")


def test_http_probe_sends_get_with_host_and_close():
    (ok, detail), seen, _ = run_probe("http", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert (ok, detail) == (True, "HTTP 200")
    lines = seen[0].decode().split("\r\n")
    assert lines[0] == "GET /health HTTP/1.1"
    assert "Host: 198.19.100.1" in lines and "Connection: close" in lines


@pytest.mark.parametrize("reply,expect,result", [
    (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", 200, (False, "HTTP 503 (expected 200)")),
    (b"HTTP/1.1 204 No Content\r\n\r\n", 204, (True, "HTTP 204")),
    (b"HTTP/1.0 301 Moved\r\nLocation: /x\r\n\r\n", 200, (False, "HTTP 301 (expected 200)")),
    (b"SSH-2.0-OpenSSH_9.2\r\n", 200, (False, "bad status line 'SSH-2.0-OpenSSH_9.2'")),
    (b"", 200, (False, "closed without a reply")),
    (b"HTTP/1.1 200", 200, (False, "closed before the status line")),
    (b"X" * 5000 + b"\r\n", 200, (False, "status line longer than 4096 bytes")),
])
def test_http_probe_results(reply, expect, result):
    got, _, _ = run_probe("http", reply, expect=expect)
    assert got == result


def test_http_probe_refused():
    got, _, _ = run_probe("http", listen=False)
    assert got == (False, "connect refused")


def test_http_probe_silent_server_times_out_within_the_timeout():
    (ok, detail), _, secs = run_probe("http", None, timeout=0.3)
    assert (ok, detail) == (False, "no status line after 0.3s")
    assert 0.25 < secs < 1.5


# --- config --------------------------------------------------------------------------------------

def base_cfg(health_section=None, vip=None):
    d = {"lb": {"address": LB_IP},
         "vip": [dict({"address": VIP, "port": 80, "backend": [{"address": B1}]}, **(vip or {}))]}
    if health_section is not None:
        d["health"] = health_section
    return d


def test_config_health_parsed():
    cfg = config.parse(base_cfg({"interface": "mg0", "max_in_flight": 8}, {
        "mode": "dsr", "on_backend_down": "expire",
        "health": {"check": "http", "path": "/id", "expect": 204, "interval": 0.2,
                   "timeout": 1, "rise": 3, "fall": 4}}))
    assert cfg.health == config.HealthConfig(interface="mg0", max_in_flight=8)
    v = cfg.vips[0]
    assert v.health == config.HealthCheck("http", "/id", 204, 0.2, 1.0, 3, 4)
    assert v.on_backend_down == "expire" and config.effective_on_backend_down(v) == "expire"


def test_config_health_defaults():
    cfg = config.parse(base_cfg())
    v = cfg.vips[0]
    assert cfg.health == config.HealthConfig(None, 64)
    assert v.health.check == "none" and v.health.view() is None
    assert v.on_backend_down is None and config.effective_on_backend_down(v) == "expire"
    v.mode = "dsr"
    assert config.effective_on_backend_down(v) == "keep"


CONFIG_ERRORS = [
    (None, {"health": {"check": "icmp"}}, "vip[0].health.check", "none, tcp, http"),
    (None, {"health": {"check": "tcp", "path": "/"}}, "vip[0].health.path", "only applies"),
    (None, {"health": {"check": "tcp", "expect": 200}}, "vip[0].health.expect",
     "only applies"),
    (None, {"health": {"check": "http", "path": "id"}}, "vip[0].health.path", "absolute"),
    (None, {"health": {"check": "http", "path": "/a b"}}, "vip[0].health.path", "absolute"),
    (None, {"health": {"check": "http", "expect": 99}}, "vip[0].health.expect", "100..599"),
    (None, {"health": {"check": "http", "expect": "200"}}, "vip[0].health.expect", "'200'"),
    (None, {"health": {"check": "tcp", "interval": 0}}, "vip[0].health.interval", "seconds"),
    (None, {"health": {"check": "tcp", "interval": "1s"}}, "vip[0].health.interval",
     "seconds"),
    (None, {"health": {"check": "tcp", "timeout": True}}, "vip[0].health.timeout", "True"),
    (None, {"health": {"check": "tcp", "rise": 0}}, "vip[0].health.rise", "1..100"),
    (None, {"health": {"check": "tcp", "fall": 101}}, "vip[0].health.fall", "1..100"),
    (None, {"health": {"check": "tcp", "intervall": 1}}, "vip[0].health.intervall",
     "did you mean 'interval'"),
    (None, {"health": "tcp"}, "vip[0].health", "must be a table"),
    (None, {"on_backend_down": "drop"}, "vip[0].on_backend_down", "keep or expire"),
    (None, {"proto": "udp", "health": {"check": "tcp"}}, "vip[0].health.check", "udp VIP"),
    (None, {"mode": "dsr", "health": {"check": "tcp"}}, "vip[0].health.check",
     "[health] interface"),
    ({"interface": "a/b"}, {}, "health.interface", "interface name"),
    ({"interface": ""}, {}, "health.interface", "interface name"),
    ({"max_in_flight": 0}, {}, "health.max_in_flight", "1..4096"),
    ({"interfce": "mg0"}, {}, "health.interfce", "did you mean 'interface'"),
]


@pytest.mark.parametrize("section,vip,field,needle", CONFIG_ERRORS,
                         ids=["%s-%s" % (e[2], i) for i, e in enumerate(CONFIG_ERRORS)])
def test_config_errors_name_the_field(section, vip, field, needle):
    with pytest.raises(LBError) as ei:
        config.parse(base_cfg(section, vip))
    assert ei.value.field == field
    assert needle in ei.value.message, ei.value.message


def test_dsr_check_accepted_with_interface():
    cfg = config.parse(base_cfg({"interface": "mg0"}, {"mode": "dsr",
                                                       "health": {"check": "tcp"}}))
    assert cfg.vips[0].health.check == "tcp"


# --- lbctl ---------------------------------------------------------------------------------------

class Recorder:
    """A control socket that records requests and answers from an LBState on the twin."""

    def __init__(self, st):
        from tests.unit.test_cli import Server
        self.st = st
        self.srv = Server(self._handle)

    def _handle(self, cmd, args):
        return self.st.handle(cmd, args)


@pytest.fixture
def ctl():
    e = twin.Engine(256)
    e.set_local(ip(LB_IP), LB_MAC)
    st = LBState(e, config.parse(base_cfg(None, {"scheduler": "rr"})))
    r = Recorder(st)
    yield r.srv, st
    r.srv.close()


def lbctl(srv, *args):
    return CliRunner().invoke(cli.main, ["--socket", srv.path, *args], catch_exceptions=False)


CLI_BAD = [
    (["vip", "health", VIP + ":80"], "check"),
    (["vip", "health", VIP + ":80", "--check", "icmp"], "check"),
    (["vip", "health", VIP + ":80", "--check", "tcp", "--path", "/x"], "path"),
    (["vip", "health", VIP + ":80", "--check", "http", "--path", "x"], "path"),
    (["vip", "health", VIP + ":80", "--check", "http", "--expect", "2xx"], "expect"),
    (["vip", "health", VIP + ":80", "--check", "tcp", "--interval", "fast"], "interval"),
    (["vip", "health", VIP + ":80", "--check", "tcp", "--timeout", "0"], "timeout"),
    (["vip", "health", VIP + ":80", "--check", "tcp", "--rise", "0"], "rise"),
    (["vip", "health", VIP + ":80", "--check", "tcp", "--fall", "1.5"], "fall"),
    (["vip", "health", VIP, "--check", "tcp"], "vip"),
    (["vip", "set", VIP + ":80", "--on-backend-down", "drop"], "on_backend_down"),
    (["vip", "add", VIP + ":81", "--on-backend-down", "default"], "on_backend_down"),
    (["health", "interface"], "interface"),
    (["health", "interface", "mg0", "--none"], "interface"),
    (["health", "interface", "x" * 16], "interface"),
]


@pytest.mark.parametrize("argv,field", CLI_BAD, ids=[" ".join(a) for a, _ in CLI_BAD])
def test_cli_errors_exit_2_naming_field_without_sending(ctl, argv, field):
    srv, _ = ctl
    r = lbctl(srv, *argv)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: %s: " % field), r.stderr
    assert srv.requests == []


def test_cli_health_session(ctl):
    srv, st = ctl
    r = lbctl(srv, "vip", "health", VIP + ":80", "--check", "http", "--path", "/id",
              "--interval", "0.2", "--timeout", "0.5", "--rise", "3", "--fall", "2")
    assert r.exit_code == 0, r.output
    assert srv.requests[-1] == {"cmd": "vip.health", "args": {
        "vip": VIP + ":80", "proto": "tcp", "check": "http", "path": "/id", "interval": 0.2,
        "timeout": 0.5, "rise": 3, "fall": 2}}
    assert r.stdout.splitlines()[0].split()[-1] == "HEALTH"
    assert "up since" in r.stdout and "checks started" in r.stdout
    assert "http GET /id expect 200 every 0.2s, timeout 0.5s, rise 3, fall 2" in r.stdout
    assert "flows of a down backend: expire" in r.stdout

    r = lbctl(srv, "vip", "set", VIP + ":80", "--on-backend-down", "keep", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["on_backend_down"] == "keep"

    st.health_report(((ip(VIP), 80, "tcp"), (ip(B1), 80)), False, "connect refused")
    st.health_report(((ip(VIP), 80, "tcp"), (ip(B1), 80)), False, "connect refused")
    r = lbctl(srv, "stats")
    assert r.exit_code == 0, r.output
    row = [x for x in r.stdout.splitlines() if "198.19.0.11:80" in x][0]
    assert "down since" in row and "connect refused (2 failures)" in row

    r = lbctl(srv, "health", "show")
    assert r.exit_code == 0, r.output
    assert "interface: none" in r.stdout and "http GET 198.19.0.11:80/id" in r.stdout

    r = lbctl(srv, "health", "interface", "lo", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["interface"] == "lo"
    r = lbctl(srv, "health", "interface", "--none", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["interface"] is None

    r = lbctl(srv, "vip", "health", VIP + ":80", "--check", "none")
    assert r.exit_code == 0, r.output
    assert "HEALTH" not in r.stdout            # no column when nothing is checked


def test_cli_daemon_refuses_dsr_check_without_interface(ctl):
    srv, st = ctl
    assert lbctl(srv, "vip", "set", VIP + ":80", "--mode", "dsr").exit_code == 0
    r = lbctl(srv, "vip", "health", VIP + ":80", "--check", "tcp")
    assert r.exit_code == 1
    assert r.stderr.startswith("error: check: a dsr VIP is probed along the VIP path")


# --- LBState -------------------------------------------------------------------------------------

@pytest.fixture
def engine(impl):
    e = impl.Engine(4096)
    e.set_local(ip(LB_IP), LB_MAC)
    return SpyEngine(e)


KEY = (ip(VIP), 80, "tcp")


def member(b, port=80, key=KEY):
    return (key, (ip(b), port))


def make_state(engine, vips, section=None):
    s = LBState(engine, config.parse({"lb": {"address": LB_IP}, "vip": vips,
                                      **({"health": section} if section else {})}))
    s.wall = lambda: 1000.0
    for b, mac in MACS.items():
        s.learn_neighbor(ip(b), mac)
    engine.calls.clear()
    return s


def checked_vip(**kw):
    d = {"address": VIP, "port": 80, "backend": [{"address": b} for b in (B1, B2, B3)],
         "health": {"check": "http", "path": "/id"}}
    d.update(kw)
    return d


def fail(st, b, n=2, port=80, key=KEY):
    out = None
    for _ in range(n):
        out = st.health_report(member(b, port, key), False, "connect refused") or out
    return out


def succeed(st, b, n=2):
    out = None
    for _ in range(n):
        out = st.health_report(member(b), True, "HTTP 200") or out
    return out


def dst_ip(result):
    verdict, reason, frame = result
    assert verdict == defs.V_TX, reason
    eth = dpkt.ethernet.Ethernet(frame)
    if reason == "dsr_fwd":
        return {v: k for k, v in MACS.items()}[eth.dst]
    return str(ipaddress.IPv4Address(eth.data.dst))


def spec_of(engine, vip=VIP, port=80):
    specs = [c for c in engine.calls if c[0] == "set_services"][-1][1]
    return [s for s in specs if s.vip == ip(vip) and s.port == port][0]


def test_down_backend_leaves_the_table_and_comes_back(engine):
    st = make_state(engine, [checked_vip(scheduler="rr")])
    assert st.health_targets()[member(B2)] == Target("http", ip(B2), 80, "/id", 200, 1.0, 1.0,
                                                     None, VIP)
    before = {dst_ip(r) for r in send(engine, *[tcp_frame(40000 + i) for i in range(6)])}
    assert before == {B1, B2, B3}
    assert fail(st, B2, 1) is None                 # fall 2: one failure is not enough
    assert engine.calls == []
    tr = fail(st, B2, 1)
    assert tr == {"vip": "198.19.100.1:80/tcp", "backend": "198.19.0.12:80", "state": "down",
                  "reason": "connect refused (2 failures)"}
    assert ("set_real_up", 1, False) in engine.calls
    assert spec_of(engine).table == [0, 2]
    after = {dst_ip(r) for r in send(engine, *[tcp_frame(41000 + i) for i in range(6)])}
    assert after == {B1, B3}
    b2 = listing_backend(st, B2)
    assert b2["health"]["state"] == "down" and b2["weight"] == 1       # its weight is kept
    assert b2["health"]["reason"] == "connect refused (2 failures)"
    engine.calls.clear()
    tr = succeed(st, B2)
    assert tr["state"] == "up" and tr["reason"] == "HTTP 200 (2 successes)"
    assert ("set_real_up", 1, True) in engine.calls
    assert spec_of(engine).table == [0, 1, 2]


def listing_backend(st, b, port=80):
    for v in st.handle("vip.list", {}):
        for x in v["backends"]:
            if x["backend"] == "%s:%d" % (b, port):
                return x


def test_maglev_moves_only_the_down_backends_share(engine):
    st = make_state(engine, [checked_vip()])
    st.handle("vip.set", {"vip": VIP + ":80", "maglev_size": 65537})   # the default, cached
    full = list(spec_of(engine).table)
    fail(st, B2)
    down = list(spec_of(engine).table)
    assert 1 not in down and len(down) == len(full)
    survivors = [i for i, r in enumerate(full) if r != 1]
    kept = sum(1 for i in survivors if down[i] == full[i])
    assert kept / len(survivors) > 0.99, kept / len(survivors)
    succeed(st, B2)
    assert list(spec_of(engine).table) == full          # back: exactly the same table


def test_expire_policy_reschedules_flows_of_a_down_backend(engine):
    st = make_state(engine, [checked_vip(scheduler="rr")])
    assert spec_of_now(engine, st).flags & defs.SVC_EXPIRE_NODEST      # nat: expire by default
    assert dst_ip(send(engine, tcp_frame(40000))[0]) == B1
    assert dst_ip(send(engine, tcp_frame(40001))[0]) == B2
    fail(st, B2)
    r = send(engine, tcp_frame(40001, dpkt.tcp.TH_ACK))
    # rr cannot re-create a flow from a non-SYN: the expired flow's packet is dropped, and
    # the client's retransmission or new connection is scheduled afresh
    assert r[0][1] == "drop_no_flow_non_syn"
    assert engine.counters()["flow_expired_nodest"] == 1


def test_expire_policy_with_maglev_recreates_on_a_live_backend(engine):
    st = make_state(engine, [checked_vip()])
    sports = [p for p in range(40000, 40100)
              if dst_ip(send(engine, tcp_frame(p))[0]) == B2][:3]
    assert sports
    fail(st, B2)
    r = send(engine, *[tcp_frame(p, dpkt.tcp.TH_ACK) for p in sports])
    assert {dst_ip(x) for x in r} <= {B1, B3}
    assert engine.counters()["flow_expired_nodest"] == len(sports)


def test_keep_policy_keeps_flows_of_a_down_backend(engine):
    st = make_state(engine, [checked_vip(scheduler="rr", on_backend_down="keep")])
    assert not spec_of_now(engine, st).flags & defs.SVC_EXPIRE_NODEST
    assert dst_ip(send(engine, tcp_frame(40001))[0]) == B1
    assert dst_ip(send(engine, tcp_frame(40002))[0]) == B2
    fail(st, B2)
    assert dst_ip(send(engine, tcp_frame(40002, dpkt.tcp.TH_ACK))[0]) == B2
    assert engine.counters()["flow_expired_nodest"] == 0
    assert {dst_ip(send(engine, tcp_frame(p))[0]) for p in range(41000, 41006)} == {B1, B3}


def spec_of_now(engine, st):
    st.handle("vip.set", {"vip": VIP + ":80"})       # no change: re-applies the same specs
    return spec_of(engine)


@pytest.mark.parametrize("mode,policy,expire", [
    ("nat", None, True), ("dsr", None, False), ("nat", "keep", False), ("dsr", "expire", True),
])
def test_policy_flag_reaches_the_service_spec(engine, mode, policy, expire):
    vip = {"address": VIP, "port": 80, "mode": mode, "backend": [{"address": B1}]}
    if policy:
        vip["on_backend_down"] = policy
    st = make_state(engine, [vip])
    spec = spec_of_now(engine, st)
    assert bool(spec.flags & defs.SVC_EXPIRE_NODEST) == expire
    assert st.handle("vip.list", {})[0]["on_backend_down"] == ("expire" if expire else "keep")


def test_vip_set_policy_and_back_to_default(engine):
    st = make_state(engine, [checked_vip()])
    v = st.handle("vip.set", {"vip": VIP + ":80", "on_backend_down": "keep"})
    assert v["on_backend_down"] == "keep"
    assert not spec_of(engine).flags & defs.SVC_EXPIRE_NODEST
    v = st.handle("vip.set", {"vip": VIP + ":80", "on_backend_down": "default"})
    assert v["on_backend_down"] == "expire"
    assert spec_of(engine).flags & defs.SVC_EXPIRE_NODEST
    v = st.handle("vip.add", {"vip": VIP + ":81", "mode": "dsr", "on_backend_down": "expire"})
    assert v["on_backend_down"] == "expire"


def test_a_shared_real_is_down_in_the_engine_only_when_every_vip_finds_it_down(engine):
    other = (ip(VIP), 8080, "tcp")
    st = make_state(engine, [checked_vip(), {"address": VIP, "port": 8080,
                                             "backend": [{"address": B2, "port": 80}]}])
    fail(st, B2)
    assert not [c for c in engine.calls if c[0] == "set_real_up"]     # :8080 does not check
    assert spec_of(engine, port=8080).table and set(spec_of(engine, port=8080).table) == {1}
    st.handle("vip.health", {"vip": VIP + ":8080", "check": "tcp"})
    fail(st, B2, key=other)
    assert ("set_real_up", 1, False) in engine.calls
    engine.calls.clear()
    st.handle("vip.health", {"vip": VIP + ":8080", "check": "none"})
    assert ("set_real_up", 1, True) in engine.calls
    assert listing_backend(st, B2)["health"]["state"] == "down"   # :80 still finds it down


def test_removing_a_down_backend_or_the_checks_brings_it_back(engine):
    st = make_state(engine, [checked_vip()])
    fail(st, B3)
    st.handle("backend.del", {"vip": VIP + ":80", "backend": B3})
    assert member(B3) not in st.health_targets()
    v = st.handle("backend.add", {"vip": VIP + ":80", "backend": B3})
    assert v["backends"][-1]["health"]["state"] == "up"           # a new backend starts up
    fail(st, B3)
    engine.calls.clear()
    v = st.handle("vip.health", {"vip": VIP + ":80", "check": "none"})
    assert ("set_real_up", 2, True) in engine.calls
    assert v["health"] is None and all(b["health"] is None for b in v["backends"])
    assert st.health_targets() == {}


def test_changing_the_check_keeps_the_state_and_takes_new_rise_fall(engine):
    st = make_state(engine, [checked_vip()])
    fail(st, B1)
    v = st.handle("vip.health", {"vip": VIP + ":80", "interval": 0.5, "rise": 1})
    assert v["health"] == {"check": "http", "path": "/id", "expect": 200, "interval": 0.5,
                           "timeout": 1.0, "rise": 1, "fall": 2}
    assert listing_backend(st, B1)["health"]["state"] == "down"
    assert st.health_report(member(B1), True, "HTTP 200")["state"] == "up"


def test_results_of_unchecked_members_are_ignored(engine):
    st = make_state(engine, [checked_vip()])
    assert st.health_report(member("198.19.0.99"), False, "x") is None
    assert st.health_report(((ip(VIP), 81, "tcp"), (ip(B1), 80)), False, "x") is None


def test_dsr_targets_go_along_the_vip_path(engine):
    st = make_state(engine, [checked_vip(mode="dsr", port=80, health={"check": "tcp"})],
                    {"interface": "mg0"})
    t = st.health_targets()[member(B2)]
    assert (t.ip, t.port, t.via) == (ip(VIP), 80, ip(B2))
    assert health.describe(t, 0x74770001) == \
        "tcp connect 198.19.100.1:80 via 198.19.0.12 (fwmark 0x74770001)"
    assert st.handle("health.show", {})["backends"][1]["via_vip"] is True


def test_tunnel_targets_go_along_the_vip_path_in_the_vips_vni(engine):
    st = make_state(engine, [checked_vip(mode="tunnel", port=80, health={"check": "tcp"},
                                         tunnel={"vni": 77})], {"interface": "mg0"})
    t = st.health_targets()[member(B2)]
    assert (t.ip, t.port, t.via, t.vni) == (ip(VIP), 80, ip(B2), 77)
    assert health.describe(t, 0x74770001) == \
        "tcp connect 198.19.100.1:80 via 198.19.0.12 in VXLAN 77 (fwmark 0x74770001)"
    # a new VNI is a new Target: the probe task restarts on the new path
    st.handle("vip.set", {"vip": VIP + ":80", "tunnel_vni": 78})
    assert st.health_targets()[member(B2)].vni == 78


STATE_ERRORS = [
    ("vip.health", {"vip": VIP + ":80", "check": "ping"}, "check", "none, tcp, http"),
    ("vip.health", {"vip": VIP + ":80", "check": "tcp", "path": "/x"}, "path", "only applies"),
    ("vip.health", {"vip": VIP + ":80", "interval": 0.001}, "interval", "seconds"),
    ("vip.health", {"vip": VIP + ":80", "rise": -1}, "rise", "1..100"),
    ("vip.health", {"vip": VIP + ":80", "colour": 1}, "colour", "unknown argument"),
    ("vip.health", {"vip": VIP + ":99", "check": "tcp"}, "vip", "no VIP"),
    ("vip.set", {"vip": VIP + ":80", "on_backend_down": "drop"}, "on_backend_down",
     "keep, expire or default"),
    ("vip.set", {"vip": VIP + ":80", "mode": "dsr"}, "mode", "[health] interface"),
    ("health.interface", {"interface": "a b"}, "interface", "interface name"),
    ("health.interface", {"interface": "mg0", "x": 1}, "x", "unknown argument"),
]


@pytest.mark.parametrize("cmd,args,field,needle", STATE_ERRORS,
                         ids=["%s-%s" % (e[0], e[2]) for e in STATE_ERRORS])
def test_state_errors_name_the_field_and_change_nothing(engine, cmd, args, field, needle):
    st = make_state(engine, [checked_vip()])
    before = st.handle("vip.list", {}), st.health_interface
    with pytest.raises(LBError) as ei:
        st.handle(cmd, args)
    assert ei.value.field == field
    assert needle in ei.value.message, ei.value.message
    assert (st.handle("vip.list", {}), st.health_interface) == before
    assert engine.calls == []


def test_interface_cannot_be_cleared_under_a_dsr_check(engine):
    st = make_state(engine, [checked_vip(mode="dsr", health={"check": "tcp"})],
                    {"interface": "mg0"})
    with pytest.raises(LBError) as ei:
        st.handle("health.interface", {"interface": None})
    assert ei.value.field == "interface" and "198.19.100.1:80/tcp needs it" in ei.value.message
    assert st.health_interface == "mg0"


def test_interface_is_checked_by_the_daemons_hook(engine):
    st = make_state(engine, [checked_vip()])
    st.interface_check = health.check_interface
    with pytest.raises(LBError) as ei:
        st.handle("health.interface", {"interface": "nosuch0"})
    assert ei.value.field == "health.interface" and "no interface" in ei.value.message
    assert st.handle("health.interface", {"interface": "lo"})["interface"] == "lo"


# --- policy routes (fake `ip`) -------------------------------------------------------------------

class FakeIp:
    def __init__(self, rules="[]", rc=0):
        self.calls = []
        self.rules = rules
        self.rc = rc

    async def __call__(self, args, input=None):
        self.calls.append((tuple(args), input))
        if args[:3] == ["-j", "rule", "show"]:
            return 0, self.rules, ""
        if args[:2] == ["link", "show"]:      # no stale probe device
            return 1, "", "Device \"%s\" does not exist." % args[-1]
        return self.rc, "", "RTNETLINK answers: File exists" if self.rc else ""

    def batches(self):
        return [inp.splitlines() for args, inp in self.calls if args[-1] == "-"]


async def settle(routes):
    for _ in range(100):
        if routes._task is None or routes._task.done():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("routes worker did not finish")


def test_policy_routes_apply_differences_and_clean_up():
    fake = FakeIp(rules=json.dumps([
        {"priority": 0, "src": "all", "table": "local"},
        {"priority": 10000, "src": "all", "fwmark": "0x74770007", "table": "1953955847"},
        {"priority": 500, "src": "all", "fwmark": "0x1", "table": "100"}]))

    async def main():
        r = PolicyRoutes(runner=fake)
        r.want("mg0", {ip(B1): {(ip(VIP), None)},
                       ip(B2): {(ip(VIP), None), (ip("198.19.100.2"), None)}})
        m1, m2 = r.mark(ip(B1)), r.mark(ip(B2))
        assert (m1, m2) == (0x74770000, 0x74770001)
        await asyncio.wait_for(r.ready(ip(B2), ip("198.19.100.2")), 1)
        await settle(r)
        stale, first = fake.batches()[0], fake.batches()[1]
        assert stale == ["rule del fwmark 0x74770007 pref 10000 lookup 1953955847"]
        assert ("route", "flush", "table", "1953955847") in [a for a, _ in fake.calls]
        assert first == [
            "rule add fwmark 0x74770000 lookup 1953955840 pref 10000",
            "route replace 198.19.100.1/32 via 198.19.0.11 dev mg0 onlink table 1953955840",
            "rule add fwmark 0x74770001 lookup 1953955841 pref 10000",
            "route replace 198.19.100.1/32 via 198.19.0.12 dev mg0 onlink table 1953955841",
            "route replace 198.19.100.2/32 via 198.19.0.12 dev mg0 onlink table 1953955841"]
        # B1 goes away, B2 loses one VIP
        r.want("mg0", {ip(B2): {(ip(VIP), None)}})
        await settle(r)
        assert fake.batches()[-1] == [
            "route del 198.19.100.1/32 table 1953955840",
            "rule del fwmark 0x74770000 lookup 1953955840 pref 10000",
            "route del 198.19.100.2/32 table 1953955841"]
        assert not r.installed(ip(B1), ip(VIP)) and r.installed(ip(B2), ip(VIP))
        # a new backend takes the free id again
        r.want("mg0", {ip(B2): {(ip(VIP), None)}, ip(B3): {(ip(VIP), None)}})
        await settle(r)
        assert r.mark(ip(B3)) == 0x74770000
        # another interface: everything is re-made on it
        r.want("eth9", {ip(B2): {(ip(VIP), None)}})
        assert not r.installed(ip(B2), ip(VIP))
        await settle(r)
        assert fake.batches()[-1][-2:] == [
            "rule add fwmark 0x74770001 lookup 1953955841 pref 10000",
            "route replace 198.19.100.1/32 via 198.19.0.12 dev eth9 onlink table 1953955841"]
        await r.close()
        assert fake.batches()[-1] == [
            "route del 198.19.100.1/32 table 1953955841",
            "rule del fwmark 0x74770001 lookup 1953955841 pref 10000"]
        assert r.view()["rules"] == []
    asyncio.run(main())


def test_policy_routes_in_vxlan_make_the_device_neighbours_and_encap_routes():
    fake = FakeIp()
    vip2 = ip("198.19.100.2")

    async def main():
        r = PolicyRoutes(runner=fake)
        r.want("mg0", {ip(B1): {(ip(VIP), 4242), (vip2, None)}, ip(B2): {(ip(VIP), 4242)}})
        await asyncio.wait_for(r.ready(ip(B2), ip(VIP), 4242), 1)
        await settle(r)
        assert not r.installed(ip(B2), ip(VIP), None)      # the path is part of the route
        dev, routes = fake.batches()[-2:]
        assert dev == ["link add twprobe0 type vxlan external dstport 4789",
                       "link set twprobe0 up"]
        assert routes == [
            "rule add fwmark 0x74770000 lookup 1953955840 pref 10000",
            "route replace 198.19.100.1/32 encap ip id 4242 dst 198.19.0.11 dev twprobe0 "
            "table 1953955840",
            "route replace 198.19.100.2/32 via 198.19.0.11 dev mg0 onlink table 1953955840",
            "rule add fwmark 0x74770001 lookup 1953955841 pref 10000",
            "route replace 198.19.100.1/32 encap ip id 4242 dst 198.19.0.12 dev twprobe0 "
            "table 1953955841",
            "neigh replace 198.19.100.1 lladdr 02:74:77:76:78:6c dev twprobe0 nud permanent"]
        assert r.view()["vxlan_device"] == "twprobe0"
        assert r.view()["rules"][0]["vxlan"] == {"198.19.100.1": 4242}
        # the VIP's VNI changes on B2 only: its route is replaced, nothing else moves
        r.want("mg0", {ip(B1): {(ip(VIP), 4242), (vip2, None)}, ip(B2): {(ip(VIP), 5)}})
        await settle(r)
        assert fake.batches()[-1] == [
            "route replace 198.19.100.1/32 encap ip id 5 dst 198.19.0.12 dev twprobe0 "
            "table 1953955841"]
        # the same VIP address along two paths to one backend: the first is kept, counted
        r.want("mg0", {ip(B1): {(ip(VIP), None), (ip(VIP), 4242)}})
        assert r.errors == 1 and "two paths (on-link and VXLAN 4242)" in r.last_error
        await settle(r)
        assert r.installed(ip(B1), ip(VIP), None) and not r.installed(ip(B2), ip(VIP), 5)
        routes, gone = fake.batches()[-2:]
        assert "neigh del 198.19.100.1 dev twprobe0" in routes
        assert gone == ["link del twprobe0"]        # no VXLAN path left: the device goes
        assert r.view()["vxlan_device"] is None
        await r.close()
        assert r.view()["rules"] == []
    asyncio.run(main())


def test_a_stale_probe_device_is_removed_at_start():
    class StaleDev(FakeIp):
        async def __call__(self, args, input=None):
            if args[:2] == ["link", "show"]:
                self.calls.append((tuple(args), input))
                return 0, "5: twprobe0: <BROADCAST,MULTICAST,UP>", ""
            return await super().__call__(args, input)
    fake = StaleDev()

    async def main():
        r = PolicyRoutes(runner=fake)
        r.want("mg0", {ip(B1): {(ip(VIP), 4242)}})
        await settle(r)
    asyncio.run(main())
    calls = [a for a, _ in fake.calls]
    assert calls.index(("link", "del", "dev", "twprobe0")) < calls.index(("-force", "-batch", "-"))


def test_policy_route_errors_are_counted_not_raised():
    fake = FakeIp(rc=2)

    async def main():
        r = PolicyRoutes(runner=fake)
        r.want("mg0", {ip(B1): {(ip(VIP), None)}})
        await settle(r)
        assert r.errors == 1 and "File exists" in r.last_error
    asyncio.run(main())


# --- the monitor: asyncio tasks, a fake probe ----------------------------------------------------

async def until(pred, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %ss" % timeout)
        await asyncio.sleep(0.005)


def test_monitor_runs_checks_and_the_state_follows(engine):
    st = make_state(engine, [checked_vip(mode="dsr", health={"check": "tcp", "interval": 0.05,
                                                             "timeout": 0.5})],
                    {"interface": "mg0"})
    st.wall = time.time
    probed = []
    dead = {ip(B2)}

    async def fake_probe(t, mark):
        probed.append((t.via, mark))
        await asyncio.sleep(0.001)
        return (False, "connect timeout after 0.5s") if t.via in dead else (True, "TCP ok")

    fake = FakeIp()

    async def main():
        mon = HealthMonitor(st, routes=PolicyRoutes(runner=fake), probe_fn=fake_probe)
        st.on_change = mon.sync
        mon.start()
        await until(lambda: listing_backend(st, B2)["health"]["state"] == "down")
        assert {m for via, m in probed if via == ip(B2)} == {mon.routes.mark(ip(B2))}
        assert all(m for _, m in probed)            # VIP-path probes always carry their mark
        assert listing_backend(st, B1)["health"]["state"] == "up"
        assert 1 not in spec_of(engine).table
        dead.clear()
        await until(lambda: listing_backend(st, B2)["health"]["state"] == "up")
        # checks off: tasks stop, routes go
        st.handle("vip.health", {"vip": VIP + ":80", "check": "none"})
        await settle(mon.routes)
        assert mon.view()["tasks"] == 0 and mon.routes.view()["rules"] == []
        n = len(probed)
        await asyncio.sleep(0.1)
        assert len(probed) == n
        await mon.close()
        assert mon.counters["transitions"] == 2
    asyncio.run(main())


def test_monitor_keeps_at_most_max_in_flight(engine):
    vips = [checked_vip(port=p, health={"check": "tcp", "interval": 0.05})
            for p in range(80, 84)]
    st = make_state(engine, vips)
    running, peak, done = [0], [0], [0]

    async def slow_probe(t, mark):
        assert mark == 0 and t.via is None          # nat: the real address, no mark
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await asyncio.sleep(0.02)
        running[0] -= 1
        done[0] += 1
        return True, "TCP ok"

    async def main():
        mon = HealthMonitor(st, max_in_flight=3, routes=PolicyRoutes(runner=FakeIp()),
                            probe_fn=slow_probe)
        mon.start()
        assert mon.view()["tasks"] == 12
        await until(lambda: done[0] >= 36)
        await mon.close()
    asyncio.run(main())
    assert peak[0] == 3
