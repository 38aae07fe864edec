"""lbd: the balancer daemon. `lbd -c config.toml [--pcap-in A --pcap-out B] [--log-level L]`.
`kill -HUP` reloads config.toml (see lb/running.py).

Live, two kinds of thread (lb/workers.py):

    data plane, one thread per worker ([io] workers, default 1), in Engine.serve without the
    GIL: poll(fd) -> bursts of { rx -> engine.process -> tx } until the fd is drained,
    each burst under the engine lock; back to Python only when a burst punted frames (a
    mode's punts -> its punt handler (modes/base.py), in that thread; ARP / traffic for the
    LB's own address -> the main thread) or a tick is due (every 100 ms: engine.expire, the
    modes' timers)
    main thread, one asyncio loop: control socket -> status here, everything else
    LBState.handle (engine writes under each engine's lock); ARP for wanted neighbors (1 s
    unresolved, 30 s refresh); state.gc every 5 s; health checks (asyncio tasks of
    lb/health.py: probes through the kernel's TCP stack, results into LBState, which swaps
    tables on a transition); `trace` answered from the engines (lb/trace.py); a `watch`
    stream (trace --follow, capture: lb/watch.py) drained from every engine each 100 ms

Composition: one Control (below: state, health checks, neighbours, the control socket, the
main thread's timers) is given one driver, which owns the engines (lb/datapath.py):
Workers (lb/workers.py) live, BurstLoop over a pcap. Neither inherits from the other, and
neither driver imports this module.

Invariants:
- Python runs per punted frame, per tick and for the control plane, never per frame or per
  wake-up of the data plane: a wake-up that only forwards (nat, dsr, established splice)
  costs a poll, the reads and the writes, and no Python.
- A table swap always falls between two bursts: the control side writes an engine only
  holding its lock, which serve() takes per burst and lets a waiting thread have first.
- Pcap mode runs BurstLoop.burst() (rx, process, tx, punts, in this thread) over a file, with
  pcap time as `now` (and the timers driven by it), writes what would have been sent to
  --pcap-out, prints the counters as one JSON object on stdout and exits 0. The engine and
  the punt handling are the live ones; only the loop around them differs.
- Health checks run only live (never in pcap mode, where every backend is up); they are
  stopped, and their policy routes removed, before lbd exits. Transitions go to the log
  (stderr): "VIP backend B: down: connect refused (2 failures) [probe]".
- [io] workers = N > 1 (live, tap only): N data-plane threads, one queue each of a
  multi-queue TAP, with an engine of their own and a steering program that keeps a flow on
  one worker (lb/workers.py, lb/steer.py).
- SIGHUP re-reads the config file (Config.path) and applies it as `lbctl reload` does, in
  the event loop like any control command: one atomic change, or nothing and an error in
  the log naming the field ("SIGHUP: reload of F refused, nothing changed: vip[1].port: ...").
- [metrics] listen (live only): GET /metrics served in the main loop (lb/metrics.py), read
  at scrape time; `status` shows the address (metrics.listen, or null).
- Exit codes: 0 clean stop (SIGTERM/SIGINT, end of pcap, or handed over to a new lbd), 2
  bad config or arguments (also a [health] interface lbd's namespace does not have), 1 any
  other startup failure (e.g. the interface cannot be opened; with --takeover: refused by
  the running lbd, or failed before the workers ran, the running lbd then serving on; or
  the metrics address cannot be bound).
- [bgp] (live only, lb/announce.py): ExaBGP runs as lbd's child (dies with it), announcing
  a /32 per VIP address with a backend that serves; every route is withdrawn before the
  data plane stops; `status` shows it (bgp, null without [bgp]).
- [cluster] (lb/cluster.py, live only): the VIP table comes from etcd. The agent's threads
  hand each document revision to the event loop (call_soon_threadsafe), where it is applied
  as a reload; local changes of the VIP table (and SIGHUP's reload) are refused naming
  `lbctl --cluster`; `status` and the `cluster` command show it; the lease is revoked on a
  clean stop.
- --takeover (lb/takeover.py): the running lbd's fds, engines, state, ARP table and splice
  connections come over; the running VIP table wins over the file's [[vip]] (a reload,
  SIGHUP or `lbctl reload`, applies the file afterwards).
"""
import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time

import fastpath

from . import cluster
from . import config as lbconfig
from . import takeover
from .announce import Announcer
from .control import ControlServer
from .datapath import GC_MS, TICK_MS, BurstLoop, monotonic_ms
from .errors import LBError
from .flowsync import FlowSync
from .health import HealthMonitor, check_interface
from .io import PcapIO, adopt_backend, open_backend
from .metrics import Collector, MetricsServer, registry
from .neigh import Neigh
from .state import LBState
from .takeover import Giver
from .trace import trace
from .watch import WatchHub
from .workers import Workers, new_engines

log = logging.getLogger("lbd")

TAP_MAC_PREFIX = b"\x02\x54\x57"   # locally administered; + the low 3 bytes of the LB address


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


class Control:
    """The control side of lbd, whatever the driver: the state over driver.engine, health
    checks, neighbours (ARP, ICMP for our address), the commands of the control socket, and
    the main thread's timers. The driver is given this object (driver.attach)."""

    def __init__(self, cfg, io, driver, clock=monotonic_ms, handed=None):
        self.cfg = cfg
        self.io = io
        self.driver = driver
        self.clock = clock
        self.started = time.monotonic()
        self.mac = cfg.lb.mac_bytes or default_mac(cfg, io)
        self.engine = driver.engine
        self.engine.set_local(cfg.lb.ip, self.mac)
        # handed: a takeover's phase 1 (lb/takeover.py): the running lbd's control side
        self.handed = handed
        self.state = LBState(self.engine, cfg, handed=handed and handed["state"])
        self.state.clock = clock
        self.state.extra_stats = self.extra_stats
        self.health = HealthMonitor(self.state, cfg.health.max_in_flight)
        self.state.extra_health = self.health.view
        self.state.on_change = self.health.sync
        self.state.interface_check = check_interface
        self.neigh = Neigh(self.state, cfg.lb.ip, self.mac)
        if handed is None:
            # the SYN-cookie key is random per start (cookies outlive no restart; a takeover
            # hands the key over with the engines, so cookies in flight stay valid); in a
            # cluster the agent replaces it with the cluster's once it reaches etcd
            # (lb/cluster.py splice_secret)
            self.engine.set_splice_secret(os.urandom(16))
        else:
            self.neigh.take(handed["neigh"])
        self.giver = Giver(self)
        self.control_server = None      # set by run_live
        self.stop_live = None           # set by run_live: ends it
        self.takeover_info = None       # after a takeover: what the status shows
        self.announcer = None           # [bgp]: lb/announce.py, started by run_live
        self.members_seen = {}          # [cluster]: instance -> data address, ever seen
        # [cluster] (lb/cluster.py): the VIP table comes from etcd; started by run_live
        self.cluster = cluster.Runtime(self.state, cfg) if cfg.cluster is not None else None
        self._next_gc = None
        self._last_error_log = 0.0
        self.loop_stats = {"gc_freed": 0, "errors": 0}
        # lbctl trace --follow / capture: the one watch over driver.engine (lb/watch.py)
        self.watch = WatchHub(self.engine, self._real_names)
        # [sync]: flow sync with the peer instances (lb/flowsync.py), live (workers) only;
        # its sockets open in run_live, its work runs in the workers' ticks
        self.sync = (FlowSync(cfg.sync) if cfg.sync is not None and hasattr(driver, "workers")
                     else None)
        driver.attach(self)

    def handed_over(self):
        """The takeover succeeded (lb/takeover.py): run_live ends, without tearing down."""
        if self.stop_live is not None:
            asyncio.get_running_loop().call_soon(self.stop_live)

    # --- what the drivers call --------------------------------------------------------------
    def to_neigh(self, frame):
        """A punted frame that is no mode's (ARP, ICMP to our address): answered here."""
        try:
            out = self.neigh.handle(frame)
            if out:
                self.io.send(out)
                self.watch.note_sent(out, None)
        except Exception:
            self._error("punted frame failed")

    def timers(self, now):
        """ARP requests that are due, and gc every GC_MS."""
        reqs = self.neigh.due_requests(now)
        if reqs:
            self.io.send(reqs)
            self.watch.note_sent(reqs, None)
        if self._next_gc is None or now >= self._next_gc:
            self._next_gc = now + GC_MS
            self.loop_stats["gc_freed"] += self.state.gc() or 0

    def _tick(self, loop):
        try:
            self.driver.timers(self.clock())
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
        if cmd == "trace":
            return trace(self.state, self.engine, self.cfg.lb.ip, args, self.clock())
        if cmd == "takeover":
            return self.giver.serve(args)
        if cmd == "cluster":
            return self.cluster.view() if self.cluster is not None else None
        if self.cluster is not None:
            self.cluster.check_local(cmd)
        return self.state.handle(cmd, args)

    def streams(self):
        """The control socket's streaming commands (lb/control.py): cmd -> open(args)."""
        return {"watch": self.watch.open}

    def _real_names(self):
        """{real slot: "ip:port"} of the VIPs' backends (watch events name the backend)."""
        return {b["real"]: b["backend"] for v in self.state.handle("vip.list", {})
                for b in v["backends"] if b["real"] is not None}

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
            "watch": self.watch.view(),
            "metrics": {"listen": self.cfg.metrics.listen},
            "sync": self.sync.view() if self.sync is not None else None,
            **self.driver.status(),
            "takeover": self.takeover_info,
            "bgp": self.announcer.view() if self.announcer is not None else None,
            "cluster": self.cluster.view() if self.cluster is not None else None,
        }

    def reload_on_signal(self):
        """SIGHUP: re-read the config file and apply the difference (LBState.apply_config),
        as `lbctl reload` does; the outcome goes to the log, a refusal naming the field."""
        path = self.cfg.path
        try:
            if self.cluster is not None:
                self.cluster.check_local("config.reload")
            r = self.state.handle("config.reload", {})
        except LBError as e:
            log.error("SIGHUP: reload of %s refused, nothing changed: %s", path, e)
            return
        except Exception:
            log.exception("SIGHUP: reload of %s failed", path)
            return
        log.info("SIGHUP: reloaded %s: %s", path, r["summary"])

    def metrics_collector(self):
        """lb/metrics.py's collector over this daemon: every worker's engine, the state, the
        IO backend's settings and the daemon's counters."""
        workers = getattr(self.driver, "workers", None)
        engines = [w.engine for w in workers] if workers else [self.engine]
        capacity = getattr(self.driver, "capacity_per_worker", self.cfg.flows.capacity)
        io = self.io.info()

        def info():
            return {"impl": fastpath.IMPL, "io_backend": io.get("backend", ""),
                    "interface": io.get("interface") or "",
                    "offload": str(bool(io.get("offload", False))).lower(),
                    "vnet_hdr": io.get("vnet_hdr", 0), "workers": len(engines)}
        return Collector(self.state, engines, capacity, info, self.extra_stats, self.started)

    def extra_stats(self):
        h = self.health.view()
        out = {"io": self.io.counters(), "neigh": self.neigh.counters(), **self.driver.stats()}
        loop = out["loop"]
        loop["gc_freed"] = self.loop_stats["gc_freed"]
        loop["errors"] = loop.get("errors", 0) + self.loop_stats["errors"]
        out["health"] = {k: h[k] for k in ("tasks", "probes", "probe_failures", "transitions",
                                           "in_flight")}
        if self.cluster is not None:
            out["cluster"] = self.cluster.view()
        return out

    def all_counters(self):
        return {"impl": fastpath.IMPL, "engine": self.engine.counters(),
                "flows": self.engine.flow_count(), **self.extra_stats()}


CLUSTER_FIRST_DOC_S = 10.0     # a joining instance waits this long for etcd's VIP table


def _adopt(d, members):
    """A dead member's data address is answered (ARP) by the first live member by instance
    name, so the backends' replies to it (their per-instance reply route: the lab marks a
    connection by the LB MAC that delivered it) reach an instance that has its flows."""
    live = {m["instance"]: m.get("data") for m in members.values() if isinstance(m, dict)
            and m.get("instance")}
    d.members_seen.update({i: a for i, a in live.items() if a})
    me = d.cluster.ccfg.instance
    if not live or min(live) != me:
        d.neigh.adopt(())
        return
    d.neigh.adopt(a for i, a in d.members_seen.items() if i not in live and i != me)


def _sync_peers(d, members):
    """Flow sync's peers from the cluster's member list (each member's [sync] listen)."""
    peers = [m["sync"] for m in members.values() if isinstance(m, dict) and m.get("sync")]
    try:
        d.sync.set_peers(peers)
    except LBError as e:
        log.warning("cluster members: a sync address is bad (%s); peers unchanged", e)


async def _first_document(d, loop, timeout):
    """Until the cluster's first document is applied and the member list read (bounded: an
    empty cluster has no document)."""
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        agent = d.cluster.agent
        if agent is not None and agent.connected:
            # connected: the first read (document and members) is done, and the document
            # is handed to this loop before that: one turn of the loop applies it
            await asyncio.sleep(0.05)
            return d.cluster.revision > 0
        await asyncio.sleep(0.05)
    log.warning("cluster: etcd not reached within %.0f s; starting without its VIP table",
                timeout)
    return False


async def run_live(d, taken=None):
    """Serve until SIGTERM/SIGINT (d: a Control over Workers); closes the IO and removes the
    control socket. taken (lb/takeover.py): the engines hold a running lbd's snapshot; serve
    its control socket, start the workers, tell it. After this lbd handed over, it ends
    without removing the socket or the health routes (the next lbd has them)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, d.reload_on_signal)   # in the loop: between bursts
    d.stop_live = stop.set
    server = ControlServer(d.cfg.lb.control_socket, d.handle, streams=d.streams())
    d.control_server = server
    if taken is not None:
        await server.start(sock=socket.socket(fileno=taken.listen_fd))
    else:
        await server.start()
    metrics = None
    msock = None
    if taken is not None and taken.metrics_fd is not None:
        # the old lbd's /metrics socket: served on if this config listens there, else closed
        msock = socket.socket(fileno=taken.metrics_fd)
        if (d.cfg.metrics.listen is None
                or msock.getsockname()[:2] != tuple(d.cfg.metrics.endpoint)):
            msock.close()
            msock = None
    if d.cfg.metrics.listen is not None:
        host, port = d.cfg.metrics.endpoint
        metrics = MetricsServer(host, port, registry(d.metrics_collector()))
        d.metrics_server = metrics
        try:
            await metrics.start(msock)
        except OSError as e:
            print("lbd: metrics.listen %s: cannot listen: %s" % (d.cfg.metrics.listen,
                                                              e.strerror or e), file=sys.stderr)
            await server.close(unlink=taken is None)
            return 1
        log.info("metrics on http://%s/metrics", d.cfg.metrics.listen)
    if d.sync is not None:
        try:
            d.sync.start()
        except OSError as e:
            print("lbd: sync.listen %s: cannot listen: %s" % (d.cfg.sync.listen,
                                                           e.strerror or e), file=sys.stderr)
            await server.close(unlink=taken is None)
            if metrics is not None:
                await metrics.close()
            return 1
        if d.cluster is not None:
            # the peers are the cluster's members (set_peers leaves ourselves out), and the
            # VIP table comes first: a pulled flow of a VIP this lbd lacks would be refused
            d.cluster.subscribe(lambda members: _sync_peers(d, members))
            d.cluster.start(loop)
            if taken is None:      # a takeover has the running table (and no pause to add)
                await _first_document(d, loop, CLUSTER_FIRST_DOC_S)
            _sync_peers(d, d.cluster.members())
        if taken is None and d.sync.peers and d.cfg.sync.pull_timeout > 0:
            # joining: a peer's full table first (bounded), then the workers and "ready"
            r = await loop.run_in_executor(None, d.sync.pull)
            drained = d.state.adopt_draining(d.sync.pending_backends())
            if drained:
                log.info("sync: %d draining backend(s) of the peers' flows, not in the table",
                         drained)
            d.sync.import_pending(d.clock())
            if r["error"] is None:
                log.info("sync: full table of %d flows from %s in %.0f ms", r["flows"],
                         r["peer"], r["ms"])
            else:
                log.warning("sync: no full table (%s), starting without one", r["error"])
    try:
        d.driver.start(loop)
        if taken is not None:
            d.takeover_info = took_over(d, taken)
        d._tick(loop)                 # first ARP requests go out now
        d.health.start()
        if d.cfg.bgp is not None:
            # after the takeover's confirm: the old lbd's ExaBGP goes with it (PDEATHSIG)
            d.announcer = Announcer(d.cfg.bgp, d.cfg.lb.address, d.state.metrics_view,
                                    os.path.dirname(os.path.abspath(d.cfg.lb.control_socket)))
            await d.announcer.start()
        if d.cluster is not None:
            d.cluster.subscribe(lambda members: _adopt(d, members))
            _adopt(d, d.cluster.members())
        if d.cluster is not None and d.cluster.agent is None:      # not started for [sync]
            d.cluster.start(loop)
        log.info("ready")
        await stop.wait()
        log.info("handed over, exiting" if d.giver.done else "stopping")
    finally:
        if d.announcer is not None:
            await d.announcer.close()       # routes withdrawn before the data plane stops
        if d.cluster is not None:
            d.cluster.stop()
        d.driver.stop(loop)
        if d.sync is not None:
            d.sync.stop()
        await server.close(unlink=not d.giver.done)
        if metrics is not None:
            await metrics.close()
        await d.health.close(keep_routes=d.giver.done)
    return 0


def took_over(d, taken):
    """The workers run: measure the pause, tell the old lbd (it exits), and log it."""
    first = min(w.started_ns or time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                for w in d.driver.workers)
    info = {"from_pid": taken.snap["from_pid"],
            "pause_ms": round((first - taken.stopped_ns) / 1e6, 3),
            "flows": d.engine.flow_count(), "vips": len(d.state._vips),
            "steps": getattr(taken, "steps", {})}
    reply = taken.confirm(info)
    info["old_reply"] = bool(reply and reply.get("ok"))
    log.info("took over from pid %d: %d flows, %d VIPs (the running table), data-plane pause "
             "%.3f ms", info["from_pid"], info["flows"], info["vips"], info["pause_ms"])
    if d.cfg.vips:
        log.info("the %d [[vip]] of %s are not applied: the running VIP table won",
                 len(d.cfg.vips), d.cfg.path)
    return info


def run_pcap(d):
    """Drive BurstLoop.burst() over the input pcap; the counters as JSON on stdout."""
    io = d.io
    while d.driver.burst() or not io.eof:
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
    p.add_argument("--takeover", action="store_true",
                   help="take over from the lbd running on the config's control socket "
                        "(its fds, flows and VIP table), which then exits 0")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    a = p.parse_args(argv)
    if bool(a.pcap_in) != bool(a.pcap_out):
        p.error("--pcap-in and --pcap-out go together")
    if a.takeover and a.pcap_in:
        p.error("--takeover is for a live lbd, not with --pcap-in")
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
    if a.takeover:
        return main_takeover(cfg)
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
                clock = lambda: io.burst_ms   # noqa: E731
                d = Control(cfg, io, BurstLoop(cfg, io, clock), clock)
            else:
                d = Control(cfg, io, Workers(cfg, io))
        except LBError as e:
            print("lbd: config: %s" % e, file=sys.stderr)
            return 2
        except OSError as e:      # e.g. workers: the steering program cannot be attached
            print("lbd: cannot start: %s" % e, file=sys.stderr)
            return 1
        info = io.info()
        log.info("threeway lbd: impl=%s io=%s interface=%s ifindex=%s offload=%s (%s) "
                 "address=%s mac=%s vips=%d workers=%d", fastpath.IMPL, info["backend"],
                 info.get("interface"), info.get("ifindex"),
                 "on" if info.get("offload") else "off", info.get("offload_why") or "pcap",
                 cfg.lb.address, d.mac.hex(":"), len(cfg.vips),
                 len(getattr(d.driver, "workers", ())) or 1)
        if pcap:
            return run_pcap(d)
        try:
            return asyncio.run(run_live(d))
        except OSError as e:     # control socket cannot be created
            print("lbd: %s" % e, file=sys.stderr)
            return 1
    finally:
        io.close()


def main_takeover(cfg):
    """lbd --takeover: everything from the running lbd (lb/takeover.py), then serve. Exit 1
    with the reason if it refuses or anything fails before the workers run (it then serves
    on)."""
    steps = {}
    t0 = time.monotonic()
    # what does not need the old lbd is made before asking: the pause is shorter
    engines = new_engines(cfg, cfg.io.workers if cfg.io.backend == "tap" else 1)
    steps["engines_ms"] = round((time.monotonic() - t0) * 1e3, 3)
    try:
        taken = takeover.take(cfg)
    except (LBError, OSError) as e:
        print("lbd: takeover: %s" % e, file=sys.stderr)
        return 1
    io = None
    try:
        pre = taken.snap
        io = adopt_backend(taken.io_fds, pre["io"])
        driver = Workers(cfg, io, engines=engines)
        if driver.steering is not None and pre["steering_vips"] is not None:
            # the attached program is the old lbd's, for these VIPs: it stays
            driver.steering.vips = frozenset(pre["steering_vips"])
        t1 = time.monotonic()
        d = Control(cfg, io, driver, handed=pre)
        steps["state_ms"] = round((time.monotonic() - t1) * 1e3, 3)
        tables = taken.ready()              # the old lbd stops its workers and sends
        t2 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        steps["received_ms"] = round((t2 - tables["stopped_ns"]) / 1e6, 3)
        if os.environ.get(takeover.ABORT_ENV) == "1":
            raise LBError("takeover", "aborted on purpose (%s=1)" % takeover.ABORT_ENV)
        if len(tables["engines"]) != len(driver.workers):
            raise LBError("io.workers", "%d engines handed over for %d workers"
                          % (len(tables["engines"]), len(driver.workers)))
        for w, blob, modes_state in zip(driver.workers, tables["engines"], tables["modes"]):
            w.engine.import_state(blob)
            w.punts.take(modes_state)
        steps["import_ms"] = round((time.clock_gettime_ns(time.CLOCK_MONOTONIC) - t2) / 1e6, 3)
        taken.stopped_ns = tables["stopped_ns"]
        taken.steps = steps
    except Exception as e:
        msg = str(e) if isinstance(e, LBError) else "%s: %s" % (type(e).__name__, e)
        if not isinstance(e, LBError):
            log.exception("takeover failed")
        if io is not None:
            io.close()
            taken.io_fds = []
            taken.fds = taken.fds[:1]
        taken.fail(msg)
        print("lbd: takeover: %s (the running lbd serves on)" % msg, file=sys.stderr)
        return 1
    info = io.info()
    log.info("threeway lbd: impl=%s io=%s interface=%s ifindex=%s address=%s mac=%s "
             "vips=%d workers=%d (takeover)", fastpath.IMPL, info["backend"],
             info.get("interface"), info.get("ifindex"), cfg.lb.address, d.mac.hex(":"),
             len(d.state._vips), len(driver.workers))
    try:
        return asyncio.run(run_live(d, taken))
    finally:
        io.close()


if __name__ == "__main__":
    sys.exit(main())
