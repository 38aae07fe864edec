"""lbd: the balancer daemon. `lbd -c config.toml [--pcap-in A --pcap-out B] [--log-level L]`.

Live, two kinds of thread (lb/workers.py):

    data plane, one thread per worker ([io] workers, default 1), in Engine.serve without the
    GIL: poll(fd) -> bursts of { rx -> engine.process -> tx } until the fd is drained,
    each burst under the engine lock; back to Python only when a burst punted frames (splice
    set-up -> modes/splice.py, in that thread; ARP / traffic for the LB's own address -> the
    main thread) or a tick is due (every 100 ms: engine.expire, splice timers)
    main thread, one asyncio loop: control socket -> status here, everything else
    LBState.handle (engine writes under each engine's lock); ARP for wanted neighbors (1 s
    unresolved, 30 s refresh); state.gc every 5 s; health checks (asyncio tasks of
    lb/health.py: probes through the kernel's TCP stack, results into LBState, which swaps
    tables on a transition)

Invariants:
- Python runs per punted frame, per tick and for the control plane, never per frame or per
  wake-up of the data plane: a wake-up that only forwards (nat, dsr, established splice)
  costs a poll, the reads and the writes, and no Python.
- A table swap always falls between two bursts: the control side writes an engine only
  holding its lock, which serve() takes per burst and lets a waiting thread have first.
- Pcap mode runs Daemon.burst() (rx, process, tx, punts, in this thread) over a file, with
  pcap time as `now` (and the timers driven by it), writes what would have been sent to
  --pcap-out, prints the counters as one JSON object on stdout and exits 0. The engine and
  the punt handling are the live ones; only the loop around them differs.
- Health checks run only live (never in pcap mode, where every backend is up); they are
  stopped, and their policy routes removed, before lbd exits. Transitions go to the log
  (stderr): "VIP backend B: down: connect refused (2 failures) [probe]".
- [io] workers = N > 1 (live, tap only): N data-plane threads, one queue each of a
  multi-queue TAP, with an engine of their own and a steering program that keeps a flow on
  one worker (lb/workers.py, lb/steer.py).
- Exit codes: 0 clean stop (SIGTERM/SIGINT, end of pcap), 2 bad config or arguments (also a
  [health] interface lbd's namespace does not have), 1 any other startup failure (e.g. the
  interface cannot be opened).
"""
import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time

import numpy as np

import fastpath
from fastpath import defs

from . import config as lbconfig
from .control import ControlServer
from .errors import LBError
from .health import HealthMonitor, check_interface
from .io import PcapIO, open_backend
from .neigh import Neigh
from modes.splice import SpliceManager
from .state import LBState

log = logging.getLogger("lbd")

BATCH_SIZE = 256
TICK_MS = 100
GC_MS = 5000
TAP_MAC_PREFIX = b"\x02\x54\x57"   # locally administered; + the low 3 bytes of the LB address


def monotonic_ms():
    """CLOCK_MONOTONIC in integer ms: the clock Engine.serve reads in C."""
    return time.monotonic_ns() // 1000000


def default_mac(cfg, io):
    """The LB's MAC when the config names none.

    afpacket: the interface's own MAC (the kernel's neighbors already know it).
    tap: never the TAP netdev's MAC -- that one belongs to the kernel side of the device (a
    bridge treats it as its own address and would not forward to us); a locally
    administered MAC derived from the LB address instead, stable across restarts."""
    mac = getattr(io, "mac", None)
    if mac:
        return bytes(mac)
    return TAP_MAC_PREFIX + cfg.lb.ip.to_bytes(4, "big")[1:]


def handle_punts(batch, n, splice, now, send, other):
    """The burst's punted frames (there are some: process() said so): splice frames to the
    SpliceManager, whose answers go out with send(frames); every other one to other(frame).
    Returns how many there were."""
    punted = np.flatnonzero(batch.verdict[:n] == defs.V_PUNT)
    code = defs.C["punt_splice"]
    for i in punted:
        if batch.reason[i] == code:
            out = splice.handle(batch.frame(i), now)
            if out:
                send(out)
        else:
            other(batch.frame(i))
    return len(punted)


class Daemon:
    """The engine, the state, the neighbor logic and one IO backend, driven burst by burst
    (pcap mode); lb/workers.py's WorkerDaemon, its subclass, runs them live."""

    def __init__(self, cfg, io, clock=monotonic_ms):
        self._control_side(cfg, io, clock, fastpath.Engine(cfg.flows.capacity,
                                                           cfg.flows.timeouts))
        self.splice = SpliceManager(self.engine, self.state, self.mac)
        self.batch = io.new_batch(BATCH_SIZE)
        self.expire_budget = max(1024, cfg.flows.capacity // 50)
        self._next_tick = None
        self._next_gc = None
        self._last_error_log = 0.0
        self.loop_stats = {"bursts": 0, "frames": 0, "punts": 0, "ticks": 0,
                           "expired": 0, "gc_freed": 0, "errors": 0}

    def _control_side(self, cfg, io, clock, engine):
        """What every daemon has: the engine (or lb/workers.py's EngineGroup, which has the
        same control methods), the state, health checks, neighbors, the splice secret."""
        self.cfg = cfg
        self.io = io
        self.clock = clock
        self.started = time.monotonic()
        self.mac = cfg.lb.mac_bytes or default_mac(cfg, io)
        self.engine = engine
        self.engine.set_local(cfg.lb.ip, self.mac)
        self.state = LBState(self.engine, cfg)
        self.state.clock = clock
        self.state.extra_stats = self.extra_stats
        self.health = HealthMonitor(self.state, cfg.health.max_in_flight)
        self.state.extra_health = self.health.view
        self.state.on_change = self.health.sync
        self.state.interface_check = check_interface
        self.neigh = Neigh(self.state, cfg.lb.ip, self.mac)
        # splice: the SYN-cookie key is random per start (cookies outlive no restart), and
        # the connections being set up are handled by modes/splice.py
        self.engine.set_splice_secret(os.urandom(16))

    # --- the per-burst path ---------------------------------------------------------------
    def burst(self):
        """One burst: rx, process, tx, punts. Returns the number of frames received."""
        b = self.batch
        n = self.io.rx(b)
        if n == 0:
            return 0
        now = self.clock()
        self.timers(now)
        npunt = self.engine.process(b, now)
        self.io.tx(b)
        if npunt:
            self.loop_stats["punts"] += handle_punts(b, n, self.splice, now, self.io.send,
                                                     self._to_neigh)
        self.loop_stats["bursts"] += 1
        self.loop_stats["frames"] += n
        return n

    def _to_neigh(self, frame):
        out = self.neigh.handle(frame)
        if out:
            self.io.send(out)

    # --- timers -----------------------------------------------------------------------------
    def timers(self, now):
        """Run what is due at `now` (ms). Cheap when nothing is: called per burst and per tick."""
        if self._next_tick is not None and now < self._next_tick:
            return
        self._next_tick = now + TICK_MS
        self.loop_stats["ticks"] += 1
        self.loop_stats["expired"] += self.engine.expire(now, self.expire_budget)
        reqs = self.neigh.due_requests(now) + self.splice.tick(now)
        if reqs:
            self.io.send(reqs)
        if self._next_gc is None or now >= self._next_gc:
            self._next_gc = now + GC_MS
            self.loop_stats["gc_freed"] += self.state.gc() or 0

    def _tick(self, loop):
        try:
            self.timers(self.clock())
        except Exception:
            self._error("timers failed")
        loop.call_later(TICK_MS / 1000.0, self._tick, loop)

    def _error(self, what):
        self.loop_stats["errors"] += 1
        t = time.monotonic()
        if t - self._last_error_log >= 1.0:      # a persistent fault must not flood the log
            self._last_error_log = t
            log.exception("%s (%d errors so far)", what, self.loop_stats["errors"])

    # --- control ----------------------------------------------------------------------------
    def handle(self, cmd, args):
        if cmd == "status":
            return self.status()
        return self.state.handle(cmd, args)

    def status(self):
        return {
            "pid": os.getpid(),
            "impl": fastpath.IMPL,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "io": self.io.info(),
            "lb": {"address": self.cfg.lb.address, "mac": self.mac.hex(":")},
            "flows": self.engine.flow_count(),
            "neighbors": self.neigh.neighbors(),
            "health": {"interface": self.state.health_interface,
                       "checked": len(self.state.health_targets())},
        }

    def extra_stats(self):
        h = self.health.view()
        return {"io": self.io.counters(), "neigh": self.neigh.counters(),
                "splice": self.splice.counters(),
                "loop": dict(self.loop_stats),
                "health": {k: h[k] for k in ("tasks", "probes", "probe_failures",
                                             "transitions", "in_flight")}}

    def all_counters(self):
        return {"impl": fastpath.IMPL, "engine": self.engine.counters(),
                "flows": self.engine.flow_count(), **self.extra_stats()}


async def run_live(d):
    """Serve until SIGTERM/SIGINT; closes the IO and removes the control socket."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = ControlServer(d.cfg.lb.control_socket, d.handle)
    await server.start()
    try:
        d.start(loop)
        d._tick(loop)                 # first ARP requests go out now
        d.health.start()
        log.info("ready")
        await stop.wait()
        log.info("stopping")
    finally:
        d.stop(loop)
        await server.close()
        await d.health.close()
    return 0


def run_pcap(d):
    """Drive the same burst() over the input pcap; the counters as JSON on stdout."""
    io = d.io
    while d.burst() or not io.eof:
        pass
    io.close()
    json.dump(d.all_counters(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def parse_args(argv):
    p = argparse.ArgumentParser(prog="lbd", description="threeway load balancer daemon")
    p.add_argument("-c", "--config", required=True, help="TOML config file")
    p.add_argument("--pcap-in", help="read frames from this pcap instead of the interface")
    p.add_argument("--pcap-out", help="write transmitted frames to this pcap (with --pcap-in)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    a = p.parse_args(argv)
    if bool(a.pcap_in) != bool(a.pcap_out):
        p.error("--pcap-in and --pcap-out go together")
    return a


def main(argv=None):
    a = parse_args(argv)
    logging.basicConfig(level=getattr(logging, a.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s lbd[%(process)d] %(levelname)s %(name)s: %(message)s")
    try:
        cfg = lbconfig.load(a.config)
    except LBError as e:
        print("lbd: config: %s" % e, file=sys.stderr)
        return 2
    pcap = bool(a.pcap_in)
    if cfg.health.interface is not None and not pcap:
        try:
            check_interface(cfg.health.interface)
        except LBError as e:
            print("lbd: config: %s" % e, file=sys.stderr)
            return 2
    try:
        io = PcapIO(a.pcap_in, a.pcap_out) if pcap else open_backend(cfg.io.backend,
                                                                      cfg.io.interface,
                                                                      cfg.io.offload,
                                                                      cfg.io.workers,
                                                                      cfg.io.rps)
    except (OSError, ValueError) as e:
        where = "pcap" if pcap else "io.interface %r (%s)" % (cfg.io.interface, cfg.io.backend)
        print("lbd: cannot open %s: %s" % (where, e), file=sys.stderr)
        return 1
    try:
        try:
            if pcap:
                # a pcap is one stream of frames: one loop, whatever io.workers says
                d = Daemon(cfg, io, clock=lambda: io.burst_ms)
            else:
                from .workers import WorkerDaemon
                d = WorkerDaemon(cfg, io)
        except LBError as e:
            print("lbd: config: %s" % e, file=sys.stderr)
            return 2
        except OSError as e:      # e.g. workers: the steering program cannot be attached
            print("lbd: cannot start: %s" % e, file=sys.stderr)
            return 1
        info = io.info()
        log.info("threeway lbd: impl=%s io=%s interface=%s ifindex=%s address=%s mac=%s "
                 "vips=%d workers=%d", fastpath.IMPL, info["backend"], info.get("interface"),
                 info.get("ifindex"), cfg.lb.address, d.mac.hex(":"), len(cfg.vips),
                 len(getattr(d, "workers", ())) or 1)
        if pcap:
            return run_pcap(d)
        try:
            return asyncio.run(run_live(d))
        except OSError as e:     # control socket cannot be created
            print("lbd: %s" % e, file=sys.stderr)
            return 1
    finally:
        io.close()


if __name__ == "__main__":
    sys.exit(main())
