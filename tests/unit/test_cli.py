"""lbctl (lb/cli.py) with click's CliRunner, against a tiny in-test control socket server
that answers with a real LBState on the fast-path twin engine."""
import ipaddress
import json
import os
import shutil
import socket
import tempfile
import threading

import dpkt
import pytest
from click.testing import CliRunner

import fastpath
from lb import cli, config
from lb.errors import LBError
from lb.state import LBState

LB_MAC = bytes.fromhex("025457000002")
VIP = "198.19.100.1:80"


class Server:
    """One JSON line in, one out, per request; the handler is LBState.handle plus status."""

    def __init__(self, handler):
        self.handler = handler
        self.requests = []
        self.dir = tempfile.mkdtemp(prefix="lbctl-")       # short: AF_UNIX paths are <108
        self.path = os.path.join(self.dir, "lbd.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.sock.settimeout(0.05)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            conn.settimeout(5)
            with conn, conn.makefile("rwb") as f:
                for line in f:
                    req = json.loads(line)
                    self.requests.append(req)
                    try:
                        reply = {"ok": True, "result": self.handler(req["cmd"], req["args"])}
                    except LBError as e:
                        reply = {"ok": False, "error": e.as_dict()}
                    f.write((json.dumps(reply) + "\n").encode())
                    f.flush()

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        shutil.rmtree(self.dir)


@pytest.fixture
def lbd():
    cfg = config.parse({"lb": {"address": "198.19.0.2", "gateway": "198.19.0.1"},
                        "flows": {"capacity": 256},
                        "vip": [{"address": "198.19.100.1", "port": 80, "scheduler": "rr",
                                 "backend": [{"address": "198.19.0.11"}]}]})
    engine = fastpath.Engine(256)
    engine.set_local(int(ipaddress.IPv4Address("198.19.0.2")), LB_MAC)
    st = LBState(engine, cfg)
    st.learn_neighbor(int(ipaddress.IPv4Address("198.19.0.11")), b"\x02" * 6)

    def handler(cmd, args):
        if cmd == "status":
            return {"pid": 4242, "io": {"backend": "tap", "interface": "lbtap", "ifindex": 7}}
        return st.handle(cmd, args)
    srv = Server(handler)
    srv.state, srv.engine = st, engine
    yield srv
    srv.close()


def run(srv, *args, env=None):
    argv = ["--socket", srv.path, *args] if srv is not None else list(args)
    return CliRunner().invoke(cli.main, argv, env=env, catch_exceptions=False)


def syn(sport):
    t = dpkt.tcp.TCP(sport=sport, dport=80, flags=dpkt.tcp.TH_SYN, off=5)
    p = dpkt.ip.IP(src=bytes([198, 18, 0, 10]), dst=bytes([198, 19, 100, 1]),
                   p=dpkt.ip.IP_PROTO_TCP, data=t)
    p.len = len(p)
    return bytes(dpkt.ethernet.Ethernet(dst=LB_MAC, src=b"\x02\0\0\0\0\x01",
                                        type=dpkt.ethernet.ETH_TYPE_IP, data=p))


# --- local validation: exit 2, field named, nothing sent ---------------------------------------

BAD = [
    (["vip", "add", "198.19.100.1"], "vip"),
    (["vip", "add", "198.19.100.1:99999"], "vip"),
    (["vip", "add", "198.19.100.300:80"], "vip"),
    (["vip", "add", VIP, "--proto", "sctp"], "proto"),
    (["vip", "add", VIP, "--mode", "warp"], "mode"),
    (["vip", "add", VIP, "--scheduler", "fifo"], "scheduler"),
    (["vip", "add", VIP, "--maglev-size", "65536"], "maglev_size"),
    (["vip", "add", VIP, "--maglev-size", "big"], "maglev_size"),
    (["vip", "add", VIP, "--scheduler", "rr", "--maglev-size", "251"], "maglev_size"),
    (["vip", "set", VIP, "--mode", "warp"], "mode"),
    (["vip", "del", "nope"], "vip"),
    (["backend", "add", VIP, "198.19.0.12:0"], "backend"),
    (["backend", "add", VIP, "198.19.0.12", "--weight", "-1"], "weight"),
    (["backend", "add", VIP, "198.19.0.12", "--weight", "x"], "weight"),
    (["backend", "weight", VIP, "198.19.0.11", "65536"], "weight"),
    (["backend", "del", "198.19.100.1:", "198.19.0.11"], "vip"),
    (["conns", "--vip", "198.19.100.1"], "vip"),
    (["conns", "--limit", "0"], "limit"),
    (["backend", "add", VIP, "198.19.0.12", "--name", "bad name"], "name"),
    (["rule", "add", VIP, "--kind", "default", "--pool", "p", "--action", "redirect",
      "--no-probe", "--probe-tries", "2"], "probe"),
]


@pytest.mark.parametrize("argv,field", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_exit_2_naming_field_without_sending(lbd, argv, field):
    r = run(lbd, *argv)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: %s: " % field), r.stderr
    assert lbd.requests == []


def test_bad_arguments_json_error_on_stdout(lbd):
    r = run(lbd, "--json", "backend", "add", VIP, "198.19.0.12", "--weight", "-1")
    assert r.exit_code == 2
    assert json.loads(r.stdout)["error"]["field"] == "weight"
    assert lbd.requests == []


# --- happy paths -------------------------------------------------------------------------------

def test_vip_list_human(lbd):
    r = run(lbd, "vip", "list")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["VIP", "MODE", "SCHEDULER", "BACKEND", "WEIGHT"]
    assert lines[1].split() == ["198.19.100.1:80/tcp", "nat", "rr", "198.19.0.11:80", "1"]
    # then whether it is in cluster mode (no: the test's lbd knows no such command, no line)
    assert lbd.requests == [{"cmd": "vip.list", "args": {}}, {"cmd": "cluster", "args": {}}]


@pytest.mark.parametrize("where", ["group", "subcommand"])
def test_vip_list_json_everywhere(lbd, where):
    argv = ["--json", "vip", "list"] if where == "group" else ["vip", "list", "--json"]
    r = run(lbd, *argv)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == lbd.state.handle("vip.list", {})


def test_full_session_human(lbd):
    r = run(lbd, "vip", "add", "198.19.100.2:443", "--scheduler", "maglev",
            "--maglev-size", "4093")
    assert r.exit_code == 0, r.output
    assert "198.19.100.2:443/tcp" in r.stdout and "maglev/4093" in r.stdout
    assert lbd.requests[-1] == {"cmd": "vip.add", "args": {
        "vip": "198.19.100.2:443", "proto": "tcp", "mode": "nat", "scheduler": "maglev",
        "maglev_size": 4093}}

    r = run(lbd, "backend", "add", "198.19.100.2:443", "198.19.0.12:8443", "--weight", "3")
    assert r.exit_code == 0, r.output
    assert "198.19.0.12:8443" in r.stdout
    assert lbd.requests[-1]["args"]["weight"] == 3

    r = run(lbd, "backend", "weight", "198.19.100.2:443", "198.19.0.12:8443", "0")
    assert r.exit_code == 0 and lbd.requests[-1]["args"]["weight"] == 0

    r = run(lbd, "vip", "set", "198.19.100.2:443", "--scheduler", "lc")
    assert r.exit_code == 0 and " lc " in r.stdout

    r = run(lbd, "backend", "del", "198.19.100.2:443", "198.19.0.12:8443")
    assert r.exit_code == 0, r.output

    r = run(lbd, "vip", "del", "198.19.100.2:443")
    assert r.exit_code == 0 and r.stdout.strip() == "deleted 198.19.100.2:443/tcp"
    assert [v["vip"] for v in lbd.state.handle("vip.list", {})] == [VIP]


def test_udp_vip(lbd):
    r = run(lbd, "vip", "add", "198.19.100.1:53", "--proto", "udp", "--scheduler", "sh")
    assert r.exit_code == 0, r.output
    r = run(lbd, "backend", "add", "198.19.100.1:53", "198.19.0.13", "--proto", "udp")
    assert r.exit_code == 0, r.output
    assert "198.19.0.13:53" in r.stdout


def test_conns_and_stats(lbd):
    b = fastpath.Batch(4)
    b.load([syn(40000), syn(40001)])
    lbd.engine.process(b, lbd.state.clock())

    r = run(lbd, "conns")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split()[:6] == ["CLIENT", "VIP", "BACKEND", "PROTO", "MODE", "STATE"]
    assert lines[1].split()[:6] == ["198.18.0.10:40000", VIP, "198.19.0.11:80", "tcp", "nat",
                                    "SYN_SENT"]
    assert lines[-1] == "2 of 2 connections"

    r = run(lbd, "conns", "--vip", VIP, "--limit", "1", "--json")
    assert r.exit_code == 0
    out = json.loads(r.stdout)
    assert (out["total"], out["shown"]) == (2, 1)
    assert lbd.requests[-1]["args"] == {"vip": VIP, "limit": 1}

    r = run(lbd, "stats")
    assert r.exit_code == 0, r.output
    assert "flows: 2" in r.stdout
    counters = r.stdout.split("COUNTER")[1].split("\n\n")[0]
    assert "nat_fwd" in counters and "drop_ttl" not in counters      # zeros dropped
    assert "modes.nat.nat_fwd:" in r.stdout
    r = run(lbd, "stats", "--all", "--json")
    out = json.loads(r.stdout)
    assert out["counters"]["drop_ttl"] == 0 and out["counters"]["nat_fwd"] == 2
    assert out["vips"][0]["backends"][0]["conns"] == 2


def test_status(lbd):
    r = run(lbd, "status")
    assert r.exit_code == 0
    assert "io.interface:" in r.stdout and "pid:" in r.stdout
    r = run(lbd, "status", "--json")
    assert json.loads(r.stdout)["io"]["ifindex"] == 7


def test_socket_from_environment(lbd):
    r = run(None, "vip", "list", "--json", env={"THREEWAY_SOCKET": lbd.path})
    assert r.exit_code == 0, r.output
    assert lbd.requests


# --- failures ----------------------------------------------------------------------------------

def test_daemon_error_exit_1(lbd):
    before = lbd.state.handle("vip.list", {})
    r = run(lbd, "backend", "del", VIP, "198.19.0.99")
    assert r.exit_code == 1
    assert r.stderr.startswith("error: backend: 198.19.0.99:80 is not a backend")
    r = run(lbd, "vip", "add", VIP, "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["error"]["field"] == "vip"
    assert lbd.state.handle("vip.list", {}) == before


def test_cannot_connect_exit_3(tmp_path):
    r = CliRunner().invoke(cli.main, ["--socket", str(tmp_path / "none.sock"), "vip", "list"])
    assert r.exit_code == 3
    assert "cannot connect to" in r.stderr and "none.sock" in r.stderr


def test_request_function(lbd):
    reply = cli.request(lbd.path, "vip.list", {})
    assert reply["ok"] and reply["result"][0]["vip"] == VIP
    reply = cli.request(lbd.path, "vip.del", {"vip": "198.19.100.9:1"})
    assert reply == {"ok": False, "error": {"field": "vip",
                                            "message": "no VIP 198.19.100.9:1/tcp"}}
    with pytest.raises(LBError) as ei:
        cli.call(lbd.path, "vip.del", {"vip": "198.19.100.9:1"})
    assert ei.value.field == "vip"


def test_request_times_out_on_a_silent_server():
    d = tempfile.mkdtemp(prefix="lbctl-")
    path = os.path.join(d, "s")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
        s.listen(1)             # accepts (in the backlog) but never answers
        with pytest.raises(cli.ControlUnavailable, match="no reply"):
            cli.request(path, "status", {}, timeout=0.2)
    finally:
        s.close()
        shutil.rmtree(d)


# --- save, restore, reload -------------------------------------------------------------------

def test_save_prints_toml_that_reads_back_as_the_running_config(lbd, tmp_path):
    assert run(lbd, "backend", "add", VIP, "198.19.0.12:8080", "--weight", "4").exit_code == 0
    r = run(lbd, "save")
    assert r.exit_code == 0 and r.output.startswith("# lbctl save, ")
    assert config.loads(r.output) == lbd.state.running_config()
    out = tmp_path / "saved.toml"
    assert run(lbd, "save", "-o", str(out)).exit_code == 0
    assert config.load(str(out)).vips == lbd.state.running_config().vips
    r = run(lbd, "save", "--json")
    assert json.loads(r.output)["config"]["vip"][0]["backend"][1] == {
        "address": "198.19.0.12", "port": 8080, "weight": 4}


def test_restore_and_reload_print_the_difference(lbd, tmp_path):
    saved = run(lbd, "save").output
    f = tmp_path / "new.toml"
    f.write_text(saved.replace('scheduler = "rr"', 'scheduler = "lc"')
                 + '\n[[vip]]\naddress = "198.19.100.2"\nport = 80\n')
    r = run(lbd, "restore", str(f), "--dry-run")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        "%s: 2 changes: +198.19.100.2:80/tcp, ~198.19.100.1:80/tcp (dry run: nothing applied)"
        % f,
        "  + vip 198.19.100.2:80/tcp: nat, maglev, 0 backends",
        "  ~ vip 198.19.100.1:80/tcp",
        '      scheduler: "rr" -> "lc"']
    assert [v["scheduler"] for v in lbd.state.handle("vip.list", {})] == ["rr"]
    r = run(lbd, "--json", "reload", "--file", str(f))
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["applied"] and d["source"] == str(f) and d["diff"]["changes"] == 2
    assert [v["scheduler"] for v in lbd.state.handle("vip.list", {})] == ["lc", "maglev"]
    # a VIP the file does not have is said to go
    f.write_text(saved)
    r = run(lbd, "reload", "--file", str(f), "--dry-run")
    assert "  - vip 198.19.100.2:80/tcp: nat, 0 backends (not in the file: removed)" in r.output


def test_restore_of_a_bad_file_is_a_usage_error_naming_the_field(lbd, tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text(run(lbd, "save").output.replace("weight = 1", "weight = 70000"))
    n = len(lbd.requests)
    for argv in (["restore", str(f)], ["reload", "--file", str(f)]):
        r = run(lbd, *argv)
        assert r.exit_code == 2
        assert "error: vip[0].backend[0].weight: must be an integer 0..65535" in r.stderr
    assert len(lbd.requests) == n                      # refused before anything was sent
    f.write_text(run(lbd, "save").output.replace("capacity = 256", "capacity = 512"))
    r = run(lbd, "restore", str(f))
    assert r.exit_code == 1 and "error: flows.capacity: cannot change while lbd runs" in r.stderr


def test_layer7_dsr_rule_and_backend_name(lbd):
    """rule add --probe-* and backend add --name reach lbd as the mode's TOML-shaped values,
    and come back in rule list / vip list."""
    sv = "198.19.100.3:80"
    assert run(lbd, "vip", "add", sv, "--mode", "splice").exit_code == 0
    r = run(lbd, "backend", "add", sv, "198.19.0.12", "--pool", "media", "--name", "Media2.Example")
    assert r.exit_code == 0, r.output
    r = run(lbd, "rule", "add", sv, "--kind", "path_prefix", "--value", "/media/", "--pool",
            "media", "--action", "redirect", "--probe-method", "GET", "--probe-path", "/",
            "--probe-expect", "200", "--probe-timeout", "0.5", "--probe-tries", "2",
            "--probe-cache", "1")
    assert r.exit_code == 0, r.output
    assert lbd.requests[-1]["args"]["probe"] == {"method": "GET", "path": "/", "expect": "200",
                                                 "timeout": 0.5, "tries": 2, "cache": 1.0}
    assert 'path_prefix "/media/" -> media (redirect, probe GET / 200 0.5s x2 cache 1s)' in r.stdout
    r = run(lbd, "rule", "add", sv, "--kind", "rtsp", "--value", "/", "--agent", "VLC",
            "--pool", "media", "--no-probe")
    assert r.exit_code == 0, r.output
    assert 'rtsp "/" agent "vlc" -> media (redirect, no probe)' in r.stdout
    r = run(lbd, "rule", "add", sv, "--kind", "default", "--pool", "media", "--action",
            "redirect", "--probe-tries", "x")
    assert r.exit_code == 1 and "probe.tries" in r.output
    v = [x for x in lbd.state.handle("vip.list", {}) if x["vip"] == sv][0]
    assert v["backends"][0]["name"] == "media2.example" and v["probes"] == []
