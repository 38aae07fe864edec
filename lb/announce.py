"""BGP announcement of lbd's VIPs through ExaBGP (the `[bgp]` table; issue 16's routing part).

```
 lbd (asyncio loop, every TICK_S) --unix socket--> relay (lb/bgp_relay.py) --stdout--> ExaBGP
     wanted(state.metrics_view())  <--JSON lines---   (ExaBGP's API process)  <--stdin---  |
                                                                                eBGP to [bgp] router
```

With `[bgp]`, lbd runs ExaBGP as its child. ExaBGP starts the relay as its API process; the
relay connects to a unix socket this module listens on (in a private directory beside the
control socket) and copies lines both ways: our text commands ("announce route V/32
next-hop N", "withdraw route V/32 next-hop N") to ExaBGP, ExaBGP's JSON neighbour state
changes to us.

Invariants:
- What is announced is `wanted(view)`: one /32 per VIP address that has at least one
  backend that serves (weight > 0, and its health check up or unchecked), next hop
  `[bgp] next_hop` (default: `[lb] address`, the data-plane address). Several VIPs on one
  address (other ports or protos) share one route, kept while any of them serves.
- `announced` is exactly what the running ExaBGP has been told and holds in its RIB (it is
  emptied when ExaBGP exits; a relay that ExaBGP respawns is sent the difference, so a
  route that stopped being wanted meanwhile is withdrawn too). `commands(old, new, hop)` is
  the one place that turns a change into API lines, withdrawals first.
- ExaBGP is started with PR_SET_PDEATHSIG = SIGKILL from the main thread (the thread that
  forks is the one whose death counts), so an lbd killed with SIGKILL takes ExaBGP, and
  with it the TCP session, along: the router withdraws at once (the hold time is the
  backstop, for a dead host or link).
- ExaBGP exiting on its own is logged, counted (bgp.exits) and visible in `status` (bgp);
  it is started again after a backoff (1 s, doubling to 30 s; back to 1 s after it ran for
  30 s). lbd keeps forwarding meanwhile.
- A clean stop (close): every route is withdrawn, then ExaBGP gets SIGTERM (it closes the
  session with a Cease NOTIFICATION), SIGKILL after 2 s; the private directory is removed.
- No `[bgp]` table: none of this runs (cfg.bgp is None; status shows bgp: null).
- lbd --takeover: the old lbd's ExaBGP dies with it (PDEATHSIG), so the new lbd starts its
  own once the old one has exited; the router has no route from this instance from the old
  session's close to the new session's first UPDATE (status bgp.started_s, the lab
  measures it). Other instances' routes carry the VIP meanwhile.
"""
import asyncio
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time


log = logging.getLogger("lbd.bgp")

TICK_S = 0.1                 # how often the wanted set is compared with the announced one
BACKOFF_MIN_S, BACKOFF_MAX_S, STABLE_S = 1.0, 30.0, 30.0
STOP_GRACE_S = 2.0
RELAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bgp_relay.py")
PR_SET_PDEATHSIG = 1


# [bgp] (BgpConfig, parse_bgp) is parsed in lb/config.py


# --- what to announce -------------------------------------------------------------------------

def serves(backend):
    """A backend of state.metrics_view() that takes new connections: weight > 0 and not
    down (unchecked, up None, counts as up)."""
    return backend["weight"] > 0 and backend["up"] is not False


def wanted(view):
    """The VIP addresses to announce, sorted: those with a VIP that has a backend that serves
    (view: LBState.metrics_view())."""
    out = set()
    for v in view["vips"]:
        if any(serves(b) for b in v["backends"]):
            out.add(v["vip"].rsplit(":", 1)[0])
    return sorted(out, key=lambda a: tuple(int(x) for x in a.split(".")))


def commands(old, new, next_hop):
    """ExaBGP API lines that take the announced set `old` to `new`: withdrawals first."""
    old, new = set(old), set(new)
    key = lambda a: tuple(int(x) for x in a.split("."))  # noqa: E731
    return (["withdraw route %s/32 next-hop %s" % (a, next_hop) for a in sorted(old - new, key=key)]
            + ["announce route %s/32 next-hop %s" % (a, next_hop)
               for a in sorted(new - old, key=key)])


def exabgp_config(cfg, relay_argv):
    """ExaBGP's configuration: one neighbour (the router), our relay as its API process,
    neighbour state changes sent to it (JSON)."""
    return """\
process lbd {
    run %(run)s;
    encoder json;
}

neighbor %(router)s {
    router-id %(local)s;
    local-address %(local)s;
    local-as %(asn)d;
    peer-as %(router_asn)d;
    hold-time %(hold)d;
    api {
        processes [ lbd ];
        neighbor-changes;
    }
}
""" % {"run": " ".join(relay_argv), "router": cfg.router, "local": cfg.local, "asn": cfg.asn,
       "router_asn": cfg.router_asn, "hold": cfg.hold_time}


def exabgp_env(base=None):
    """ExaBGP's settings (its environment): stay root and in the foreground, log warnings to
    stderr (lbd's log), never listen (we connect out), no acknowledgements on the API."""
    env = dict(base if base is not None else os.environ)
    env.update({"exabgp.daemon.user": "root", "exabgp.daemon.daemonize": "false",
                "exabgp.daemon.drop": "false",
                "exabgp.log.destination": "stderr", "exabgp.log.level": "WARNING",
                "exabgp.tcp.bind": "", "exabgp.api.ack": "false",
                # no CLI pipes (lbd talks to ExaBGP through its API process only): without
                # this it logs a page about missing fifos at every start
                "exabgp.api.cli": "false"})
    return env


def _pdeathsig():
    # runs in the child between fork and exec: dies with SIGKILL when lbd's main thread does
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(127)
    if os.getppid() == 1:        # the parent is already gone
        os._exit(0)


def spawn_child(argv, **kw):
    """subprocess.Popen(argv) of a child that dies with SIGKILL when the calling thread does
    (PR_SET_PDEATHSIG): call it from the main thread."""
    return subprocess.Popen(argv, preexec_fn=_pdeathsig, **kw)


# --- the announcer ----------------------------------------------------------------------------

class Announcer:
    """ExaBGP as lbd's child, kept in step with wanted(view_fn()) in the asyncio loop."""

    def __init__(self, cfg, lb_address, view_fn, sock_dir):
        self.cfg = cfg
        self.next_hop = cfg.next_hop or lb_address
        self.view_fn = view_fn
        self.sock_dir = sock_dir
        self.dir = None
        self.proc = None
        self.announced = set()
        self.wanted = []
        self.session = "idle"          # ExaBGP's last neighbour state: up, down, connected
        self.session_since = None
        self.last_reason = None
        self.counters = {"starts": 0, "exits": 0, "announces": 0, "withdraws": 0,
                         "session_up": 0, "session_down": 0, "relay_connects": 0,
                         "errors": 0}
        self.last_exit = None
        self._writer = None
        self._server = None
        self._task = None
        self._started_at = None
        self._backoff = BACKOFF_MIN_S
        self._restart_at = None
        self._closing = False

    # -- life --------------------------------------------------------------------------------
    async def start(self):
        """The relay's socket, then ExaBGP, then the loop that keeps the routes in step."""
        self.dir = tempfile.mkdtemp(prefix="bgp-%d-" % os.getpid(), dir=self.sock_dir)
        path = os.path.join(self.dir, "relay.sock")
        self._server = await asyncio.start_unix_server(self._relay_connected, path=path)
        relay_argv = [sys.executable, RELAY, path]
        conf = os.path.join(self.dir, "exabgp.conf")
        with open(conf, "w") as f:
            f.write(exabgp_config(self.cfg, relay_argv))
        self._conf = conf
        self._spawn()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _spawn(self):
        self._started_at = time.monotonic()
        self.session, self.session_since = "idle", time.time()
        try:
            self.proc = spawn_child([self.cfg.exabgp, self._conf], env=exabgp_env(),
                                    stdin=subprocess.DEVNULL, cwd=self.dir)
        except OSError as e:
            self.proc = None
            self.counters["errors"] += 1
            self.last_exit = "cannot start %s: %s" % (self.cfg.exabgp, e.strerror or e)
            log.error("bgp: %s", self.last_exit)
            self._schedule_restart()
            return
        self.counters["starts"] += 1
        log.info("bgp: exabgp started (pid %d), neighbour %s AS %d, hold time %d s",
                 self.proc.pid, self.cfg.router, self.cfg.router_asn, self.cfg.hold_time)

    def _schedule_restart(self):
        now = time.monotonic()
        if self._started_at is not None and now - self._started_at >= STABLE_S:
            self._backoff = BACKOFF_MIN_S
        self._restart_at = now + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)

    async def _run(self):
        while not self._closing:
            try:
                self._step()
            except Exception:
                self.counters["errors"] += 1
                log.exception("bgp: step failed")
            await asyncio.sleep(TICK_S)

    def _step(self):
        if self.proc is not None and self.proc.poll() is not None:
            rc = self.proc.returncode
            self.proc = None
            self.counters["exits"] += 1
            self.last_exit = "exabgp exited with %s" % (
                "signal %d" % -rc if rc < 0 else "status %d" % rc)
            self._lost("exabgp exited")
            self.announced = set()      # its RIB went with it
            log.error("bgp: %s; restarting in %.0f s", self.last_exit, self._backoff)
            self._schedule_restart()
        if self.proc is None and self._restart_at is not None \
                and time.monotonic() >= self._restart_at:
            self._restart_at = None
            self._spawn()
        self.wanted = wanted(self.view_fn())
        self._sync()

    def _lost(self, why):
        """ExaBGP or its relay went. `announced` stays: while ExaBGP lives its RIB keeps
        the routes, and the next relay (ExaBGP respawns it) is sent only the difference;
        ExaBGP's exit empties it (_step)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.session == "up":
            self.counters["session_down"] += 1
        self.session, self.session_since, self.last_reason = "down", time.time(), why

    def _sync(self):
        if self._writer is None:
            return
        lines = commands(self.announced, self.wanted, self.next_hop)
        if not lines:
            return
        self._writer.write("".join(line + "\n" for line in lines).encode())
        for line in lines:
            what, addr = line.split()[0], line.split()[2].split("/")[0]
            if what == "announce":
                self.counters["announces"] += 1
                self.announced.add(addr)
                log.info("bgp: announce %s/32 next hop %s", addr, self.next_hop)
            else:
                self.counters["withdraws"] += 1
                self.announced.discard(addr)
                log.info("bgp: withdraw %s/32", addr)

    async def _relay_connected(self, reader, writer):
        if self._writer is not None:          # one relay at a time: the newest wins
            self._writer.close()
        self._writer = writer
        self.counters["relay_connects"] += 1
        self._sync()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                self._message(line)
        except (ConnectionError, OSError):
            pass
        finally:
            if self._writer is writer:
                self._lost("relay closed")

    def _message(self, line):
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if not isinstance(msg, dict) or msg.get("type") != "state":
            return
        state = (msg.get("neighbor") or {}).get("state")
        if state not in ("up", "down", "connected"):
            return
        if state == "up" and self.session != "up":
            self.counters["session_up"] += 1
            log.info("bgp: session to %s up", self.cfg.router)
        elif state != "up" and self.session == "up":
            self.counters["session_down"] += 1
            log.warning("bgp: session to %s %s (%s)", self.cfg.router, state,
                        (msg.get("neighbor") or {}).get("reason", ""))
        self.session, self.session_since = state, time.time()
        self.last_reason = (msg.get("neighbor") or {}).get("reason")

    async def close(self):
        """Withdraw everything, stop ExaBGP (TERM, KILL after STOP_GRACE_S), clean up."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None and self.announced:
            lines = commands(self.announced, [], self.next_hop)
            try:
                self._writer.write("".join(line + "\n" for line in lines).encode())
                await asyncio.wait_for(self._writer.drain(), 1.0)
            except (ConnectionError, OSError, asyncio.TimeoutError):
                pass
            self.counters["withdraws"] += len(lines)
            self.announced = set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            deadline = time.monotonic() + STOP_GRACE_S
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._server is not None:
            self._server.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        log.info("bgp: stopped, routes withdrawn")

    def view(self):
        """status "bgp": the session, what is announced and wanted, the counters."""
        return {"router": self.cfg.router, "local": self.cfg.local, "asn": self.cfg.asn,
                "router_asn": self.cfg.router_asn, "hold_time": self.cfg.hold_time,
                "next_hop": self.next_hop, "session": self.session,
                "session_since": self.session_since, "reason": self.last_reason,
                "exabgp_pid": self.proc.pid if self.proc is not None else None,
                "announced": sorted(self.announced,
                                    key=lambda a: tuple(int(x) for x in a.split("."))),
                "wanted": list(self.wanted), "last_exit": self.last_exit,
                "restart_in_s": (round(max(0.0, self._restart_at - time.monotonic()), 3)
                                 if self._restart_at is not None else None),
                **self.counters}
