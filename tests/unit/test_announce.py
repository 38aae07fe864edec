"""lb/announce.py: the [bgp] table and its errors, what is announced given VIPs and health,
the API lines of a change, and the real ExaBGP child: restarted when it dies, gone with lbd."""
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib

import pytest

from lb import announce, config, running
from lb.errors import LBError

BASE = """
[lb]
address = "198.19.0.2"
control_socket = "/run/threeway/x.sock"
"""
BGP = """
[bgp]
router = "198.19.0.1"
local = "198.19.0.3"
asn = 65001
router_asn = 65000
"""


def parse(extra=BGP):
    return config.loads(BASE + extra)


def test_no_bgp_table_is_none():
    assert parse("").bgp is None


def test_defaults_and_round_trip():
    cfg = parse()
    b = cfg.bgp
    assert (b.router, b.local, b.asn, b.router_asn, b.hold_time, b.next_hop, b.exabgp) == (
        "198.19.0.1", "198.19.0.3", 65001, 65000, 3, None, "exabgp")
    assert config.parse(running.dump(cfg)) == cfg
    cfg2 = parse(BGP + 'hold_time = 9\nnext_hop = "198.19.0.9"\nexabgp = "/usr/sbin/exabgp"\n')
    assert (cfg2.bgp.hold_time, cfg2.bgp.next_hop, cfg2.bgp.exabgp) == (
        9, "198.19.0.9", "/usr/sbin/exabgp")
    assert config.parse(running.dump(cfg2)) == cfg2
    # next_hop = the [lb] address is the default, written out
    assert parse(BGP + 'next_hop = "198.19.0.2"\n').bgp.next_hop is None


def _mut(key, value):
    def f(d):
        if value is None:
            del d["bgp"][key]
        else:
            d["bgp"][key] = value
    return f


@pytest.mark.parametrize("mutate,field,needle", [
    (_mut("router", None), "bgp.router", "missing"),
    (_mut("local", None), "bgp.local", "missing"),
    (_mut("asn", None), "bgp.asn", "missing"),
    (_mut("router_asn", None), "bgp.router_asn", "missing"),
    (_mut("router", "300.1.1.1"), "bgp.router", "IPv4"),
    (_mut("local", 5), "bgp.local", "IPv4"),
    (_mut("local", "198.19.0.1"), "bgp.local", "router's address"),
    (_mut("asn", 0), "bgp.asn", "1..4294967295"),
    (_mut("asn", True), "bgp.asn", "True"),
    (_mut("router_asn", 4294967296), "bgp.router_asn", "1..4294967295"),
    (_mut("hold_time", 2), "bgp.hold_time", "3..65535"),
    (_mut("hold_time", "3"), "bgp.hold_time", "3..65535"),
    (_mut("next_hop", "x"), "bgp.next_hop", "IPv4"),
    (_mut("exabgp", "exa bgp"), "bgp.exabgp", "without spaces"),
    (_mut("exabgp", ""), "bgp.exabgp", "program"),
    (_mut("holdtime", 3), "bgp.holdtime", "did you mean 'hold_time'"),
])
def test_errors_name_the_field(mutate, field, needle):
    d = tomllib.loads(BASE + BGP)
    mutate(d)
    with pytest.raises(LBError) as ei:
        config.parse(d)
    assert ei.value.field == field
    assert needle in ei.value.message, ei.value.message


def test_bgp_must_be_a_table():
    d = tomllib.loads(BASE)
    d["bgp"] = 5
    with pytest.raises(LBError) as ei:
        config.parse(d)
    assert ei.value.field == "bgp"


def test_reload_cannot_change_bgp():
    old = parse()
    running.check_fixed(old, parse())          # the same table passes
    with pytest.raises(LBError) as ei:
        running.check_fixed(old, parse(BGP + "hold_time = 5\n"))
    assert ei.value.field == "bgp"
    with pytest.raises(LBError) as ei:
        running.check_fixed(old, parse(""))
    assert ei.value.field == "bgp"


def vip(addr, port, *backends):
    return {"vip": "%s:%d" % (addr, port),
            "backends": [{"backend": "198.19.0.%d:80" % (11 + i), "weight": w, "up": up}
                         for i, (w, up) in enumerate(backends)]}


@pytest.mark.parametrize("vips,want", [
    ([], []),
    ([vip("198.19.100.1", 80, (1, None))], ["198.19.100.1"]),            # unchecked: up
    ([vip("198.19.100.1", 80, (1, True), (1, False))], ["198.19.100.1"]),
    ([vip("198.19.100.1", 80, (1, False), (1, False))], []),             # all down
    ([vip("198.19.100.1", 80, (0, True))], []),                          # only weight 0
    ([vip("198.19.100.1", 80)], []),                                     # no backend
    # one address, two ports: announced while either serves
    ([vip("198.19.100.1", 80, (1, False)), vip("198.19.100.1", 443, (1, True))],
     ["198.19.100.1"]),
    ([vip("198.19.100.10", 80, (1, True)), vip("198.19.100.9", 80, (1, True)),
      vip("198.19.100.2", 80, (1, False))], ["198.19.100.9", "198.19.100.10"]),
])
def test_wanted(vips, want):
    assert announce.wanted({"vips": vips, "draining": []}) == want


def test_commands_withdraw_first_and_only_the_change():
    hop = "198.19.0.2"
    assert announce.commands([], [], hop) == []
    assert announce.commands(["198.19.100.1"], ["198.19.100.1"], hop) == []
    assert announce.commands(["198.19.100.1", "198.19.100.3"], ["198.19.100.3", "198.19.100.2"],
                             hop) == [
        "withdraw route 198.19.100.1/32 next-hop 198.19.0.2",
        "announce route 198.19.100.2/32 next-hop 198.19.0.2"]


def test_exabgp_config_has_the_session():
    text = announce.exabgp_config(parse().bgp, ["/x/python3", "/x/relay.py", "/x/s"])
    for needle in ("run /x/python3 /x/relay.py /x/s;", "neighbor 198.19.0.1 {",
                   "local-address 198.19.0.3;", "local-as 65001;", "peer-as 65000;",
                   "hold-time 3;", "neighbor-changes;"):
        assert needle in text


# --- the real ExaBGP, without a router (the session never comes up) --------------------------

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_exabgp = pytest.mark.skipif(shutil.which("exabgp") is None,
                                  reason="exabgp not installed (tools/run.sh installs it)")


def _poll(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = pred()
        if r:
            return r
        time.sleep(0.05)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


@needs_exabgp
def test_exabgp_gets_the_routes_and_is_restarted_when_it_dies(tmp_path):
    # a router address nobody has: ExaBGP keeps trying, the routes sit in its RIB
    cfg = config.loads(BASE + BGP.replace("198.19.0.1", "127.0.0.2")
                       .replace("198.19.0.3", "127.0.0.3")).bgp
    view = {"vips": [vip("198.19.100.1", 80, (1, True)), vip("198.19.100.2", 80, (1, False))],
            "draining": []}

    async def main():
        a = announce.Announcer(cfg, "198.19.0.2", lambda: view, str(tmp_path))
        await a.start()
        try:
            async def until(pred, timeout, what):
                deadline = time.monotonic() + timeout
                while not pred():
                    if time.monotonic() > deadline:
                        raise AssertionError("timed out after %ss waiting for %s: %s"
                                             % (timeout, what, a.view()))
                    await asyncio.sleep(0.05)
            await until(lambda: a.counters["relay_connects"] == 1, 15, "the relay")
            await until(lambda: a.announced == {"198.19.100.1"}, 5, "the announce")
            # the relay dies, ExaBGP lives and respawns it: the new relay gets only the
            # difference (ExaBGP's RIB still has the route)
            with open("/proc/%d/task/%d/children" % (a.proc.pid, a.proc.pid)) as f:
                relay = int(f.read().split()[0])
            os.kill(relay, signal.SIGKILL)
            await until(lambda: a.counters["relay_connects"] == 2, 15, "a respawned relay")
            assert a.announced == {"198.19.100.1"} and a.counters["exits"] == 0
            assert a.counters["announces"] == 1
            first = a.proc.pid
            os.kill(first, signal.SIGKILL)
            await until(lambda: a.counters["exits"] == 1, 5, "the exit to be seen")
            v = a.view()
            assert v["announced"] == [] and "signal 9" in v["last_exit"]
            await until(lambda: a.counters["relay_connects"] == 3, 15 + announce.BACKOFF_MIN_S,
                        "the restart")
            assert a.proc.pid != first and a.counters["starts"] == 2
            await until(lambda: a.announced == {"198.19.100.1"}, 5, "the announce again")
            # the VIP's last backend goes down: withdrawn
            view["vips"][0]["backends"][0]["up"] = False
            await until(lambda: a.announced == set(), 5, "the withdraw")
            assert a.counters["withdraws"] >= 1
        finally:
            proc = a.proc
            await a.close()
        assert proc.poll() is not None
        assert not os.path.exists(a.dir)
    asyncio.run(main())


SPAWNER = textwrap.dedent("""
    import sys
    from lb import announce
    p = announce.spawn_child(["sleep", "60"])
    print(p.pid, flush=True)
    sys.stdin.read()
""")


def _dead(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def test_spawn_child_dies_with_its_parent():
    # nothing but the parent's death can end this sleep before 60 s: its stdin, stdout and
    # signals are its own, so only PR_SET_PDEATHSIG can
    p = subprocess.Popen([sys.executable, "-c", SPAWNER], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        child = int(p.stdout.readline())
        assert not _dead(child)
        p.kill()
        p.wait(10)
        _poll(lambda: _dead(child), 10, "sleep %d to die with its parent" % child)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


CHILD = textwrap.dedent("""
    import asyncio, sys
    from lb import announce, config
    cfg = config.loads(sys.argv[1]).bgp
    async def main():
        a = announce.Announcer(cfg, "198.19.0.2", lambda: {"vips": [], "draining": []},
                               sys.argv[2])
        await a.start()
        print(a.proc.pid, flush=True)
        await asyncio.sleep(60)
    asyncio.run(main())
""")


@needs_exabgp
def test_exabgp_dies_with_a_killed_lbd(tmp_path):
    text = BASE + BGP.replace("198.19.0.1", "127.0.0.2").replace("198.19.0.3", "127.0.0.3")
    p = subprocess.Popen([sys.executable, "-c", CHILD, text, str(tmp_path)],
                         stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = p.stdout.readline()
        exa = int(line)
        assert os.path.exists("/proc/%d" % exa)
        p.kill()
        p.wait(10)
        _poll(lambda: _dead(exa), 10, "exabgp %d to die with its parent" % exa)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
