"""lbd's data-plane workers: `[io] workers = N` threads (default 1; N > 1: tap backend).

```
                 multi-queue TAP (lb/io.py TapIO, IFF_MULTI_QUEUE, one fd per queue)
   kernel --frame--> steering program (lb/steer.py): queue = hash(client ip, port) % N
                        |                         |     (N = 1: one fd, tap or afpacket,
                  [worker 0 thread]         [worker 1 thread]  ...      and no steering)
                   Engine 0 (flows)          Engine 1 (flows)    each: Engine.serve without
                   PuntTable 0 (modes)       PuntTable 1         the GIL (poll, bursts of rx
                   expire / mode timers      expire / mode timers    -> process -> tx); in
                        \\ ARP / ICMP punts (copies) /            Python only for a mode's
                         +--> main thread (asyncio,             punts and a tick (100 ms)
                              lb/daemon.py's Control): lb/neigh.py, LBState, control socket,
                              health checks, gc; answers go out on queue 0
   control: LBState -> EngineGroup -> every engine, each under its engine's lock
```

Invariants:
- A flow lives on one worker: the steering key is the client endpoint, the same in both
  directions of nat, dsr and splice. Each worker's engine holds only its own flows; the
  group's counters, flows and flow counts are sums/concatenations over the workers.
- Capacity: each engine gets ceil(flows.capacity / N) entries, so `flows.capacity` keeps
  meaning the whole balancer's table (and its memory). The hash spreads clients evenly; a
  worker that fills up evicts by the engine's own policy, as one engine would.
- Control changes land between bursts: a worker holds its engine's lock (Engine.acquire /
  release, taken by serve() in C) for one burst, its splice punts and its timer run;
  EngineGroup takes each engine's lock in turn for every write, and serve() lets such a
  waiting thread in before its next burst, so traffic cannot starve the control plane.
  Lock-free reads (real_conns, real_stats, vip_stats, counters, flow_count) read plain
  integers the other thread may be updating: a value a burst old at worst.
- Steering follows the services: EngineGroup.set_services attaches the program for the new
  set of VIP addresses before any engine sees the new table.
- LBState and lb/neigh.py are touched by the main thread only: workers hand ARP and
  local-address punts over with loop.call_soon_threadsafe and never wait for the main
  thread, so the main thread taking a worker's lock cannot deadlock. Each worker's mode punt
  handlers (its PuntTable) read the state through their PuntContext, as the single loop's do.
- One splice secret for all engines (a cookie one worker made is valid on every worker).
- Shutdown: stop flags, then join (serve returns at the next tick, within TICK_MS); the fds
  are closed by the IO backend afterwards. A takeover (lb/takeover.py) stops and joins the
  same way, and starts the workers again if the new lbd fails; each worker records when its
  loop started and ended (CLOCK_MONOTONIC ns: the takeover pause is measured from them). A worker whose poll() fails (its fd is gone)
  counts an error and ends.
- Scheduling (`[io] realtime`): each worker thread puts itself under SCHED_FIFO (RT_PRIORITY)
  as it starts, so a frame that wakes it is forwarded at once instead of waiting for the
  running task's time slice, as the kernel's own forwarding (softirq) does not wait; the
  main thread stays SCHED_OTHER. A worker sleeps in poll() whenever its queue is empty and
  nothing here spins, so it only takes the CPU its frames need. Absent: FIFO if the kernel
  allows it (a probe thread tries it before any worker starts), else a warning and the
  default policy; true: lbd does not start without it; false: the default policy. Each
  worker's view says which policy it runs under ("sched").
"""
import ctypes
import logging
import math
import os
import threading
import time

import fastpath

from .datapath import BATCH_SIZE, TICK_MS, PuntTable, housekeep, monotonic_ms, sum_counters
from .steer import Steering

log = logging.getLogger("lbd.workers")

JOIN_TIMEOUT_S = 5.0
PR_SET_NAME = 15
RT_PRIORITY = 1      # SCHED_FIFO priority of the workers: above every SCHED_OTHER task, below
                     # any real-time thread the operator has


def set_sched(realtime):
    """The calling thread under SCHED_FIFO (RT_PRIORITY) if realtime, else SCHED_OTHER.
    Returns the policy's name ("fifo" or "other"); OSError if the kernel refuses."""
    if realtime:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
        return "fifo"
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return "other"


def probe_realtime():
    """None if a thread of this process may go under SCHED_FIFO, else the OSError's text (the
    probe is a short-lived thread of its own: nothing else's policy changes)."""
    out = []

    def probe():
        try:
            set_sched(True)
        except OSError as e:
            out.append(str(e))

    t = threading.Thread(target=probe, name="lbd-rtprobe", daemon=True)
    t.start()
    t.join(JOIN_TIMEOUT_S)
    return out[0] if out else None


def realtime_policy(want):
    """[io] realtime (None, True, False) -> whether the workers run under SCHED_FIFO.
    True that the kernel refuses raises OSError naming the key; None that it refuses warns."""
    if want is False:
        return False
    err = probe_realtime()
    if err is None:
        return True
    if want:
        raise OSError("io.realtime: the data-plane threads cannot run under SCHED_FIFO: %s"
                      % err)
    log.warning("data-plane threads stay under the default scheduler (SCHED_FIFO refused: "
                "%s); set io.realtime = false to silence this", err)
    return False


def _name_thread(name):
    """The OS thread name (ps -L, top -H): lbd-w0, lbd-w1 ..."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


class EngineGroup:
    """The fastpath.Engine control surface over the workers' engines (what LBState, the
    daemon and lbctl use). Writes go to every engine under its worker's lock; reads sum."""

    def __init__(self, workers, steering=None):
        self.workers = workers
        self.steering = steering
        self.steer_errors = 0

    def _each(self, fn):
        for w in self.workers:
            with w.lock:
                fn(w.engine)

    # --- writes -------------------------------------------------------------------------
    def set_local(self, ip, mac):
        self._each(lambda e: e.set_local(ip, mac))

    def set_gateway(self, mac):
        self._each(lambda e: e.set_gateway(mac))

    def set_real(self, idx, ip, port, mac):
        self._each(lambda e: e.set_real(idx, ip, port, mac))

    def set_real_up(self, idx, up):
        self._each(lambda e: e.set_real_up(idx, up))

    def set_splice_secret(self, secret):
        self._each(lambda e: e.set_splice_secret(secret))

    def set_timeouts(self, timeouts):
        self._each(lambda e: e.set_timeouts(timeouts))

    def set_services(self, specs):
        specs = list(specs)
        if self.steering is not None:
            vips = {s.vip for s in specs}
            if self.steering.vips is None:
                self.steering.update(vips)     # the first one: lbd does not start without it
            else:
                try:
                    self.steering.update(vips)
                except OSError as e:
                    # the tables change anyway (the command is committed); flows to a new
                    # VIP address may then meet two workers. Loud, and counted.
                    self.steer_errors += 1
                    log.error("steering program for %d VIP addresses not attached: %s",
                              len(vips), e)
        self._each(lambda e: e.set_services(specs))

    def expire(self, now_ms, budget):
        n = 0
        for w in self.workers:
            with w.lock:
                n += w.engine.expire(now_ms, budget)
        return n

    # --- reads --------------------------------------------------------------------------
    def real_conns(self, idx):
        return sum(w.engine.real_conns(idx) for w in self.workers)

    def real_stats(self, idx):
        return tuple(map(sum, zip(*(w.engine.real_stats(idx) for w in self.workers))))

    def vip_stats(self, slot):
        return tuple(map(sum, zip(*(w.engine.vip_stats(slot) for w in self.workers))))

    def counters(self):
        total = None
        for w in self.workers:
            c = w.engine.counters()
            if total is None:
                total = c
            else:
                for k, v in c.items():
                    total[k] += v
        return total

    def flow_count(self):
        return sum(w.engine.flow_count() for w in self.workers)

    def flows(self):
        out = []
        for w in self.workers:
            with w.lock:
                out += w.engine.flows()
        return out

    # --- trace and watch (lb/trace.py, lb/watch.py) --------------------------------------
    def worker_of(self, cip, cport):
        """The worker the steering program gives client cip:cport (lb/steer.py's key)."""
        return (fastpath.mix64(cip << 16 | cport) & 0xFFFF) % len(self.workers)

    def flow_get(self, src, sport, dst, dport, proto):
        """Engine.flow_get on each worker's engine (a flow is on one); "worker" added."""
        for w in self.workers:
            with w.lock:
                f = w.engine.flow_get(src, sport, dst, dport, proto)
            if f is not None:
                return dict(f, worker=w.index)
        return None

    def explain(self, cip, cport, vip, vport, proto):
        """Engine.explain on the engine of the worker the client is steered to (each has
        its own rr cursor and lc counts); "worker" added."""
        w = self.workers[self.worker_of(cip, cport)]
        with w.lock:
            x = w.engine.explain(cip, cport, vip, vport, proto)
        return None if x is None else dict(x, worker=w.index)

    def watch_set(self, terms, snap=2048, size=1024):
        self._each(lambda e: e.watch_set(terms, snap, size))

    def watch_drain_workers(self):
        """[(worker, record)] of every engine's watch ring, each engine's in its order."""
        out = []
        for w in self.workers:
            with w.lock:
                out += [(w.index, r) for r in w.engine.watch_drain()]
        return out

    def watch_status(self):
        views = [w.engine.watch_status() for w in self.workers]
        out = dict(views[0])
        out["on"] = all(v["on"] for v in views)      # (set on one engine after another)
        for k in ("pending", "seen", "lost"):
            out[k] = sum(v[k] for v in views)
        return out


class EngineLock:
    """`with lock:` around Engine.acquire()/release(): the lock serve() takes per burst."""

    def __init__(self, engine):
        self.engine = engine

    def __enter__(self):
        self.engine.acquire()
        return self

    def __exit__(self, *exc):
        self.engine.release()


class Worker:
    """One data-plane thread: one TAP queue, one engine, its modes' punt handlers, its timers."""

    def __init__(self, index, io, engine, clock, expire_budget, punt_sink, realtime=False):
        self.index = index
        self.io = io                       # lb/io.py TapQueue
        self.engine = engine
        self.clock = clock
        self.expire_budget = expire_budget
        self.punt_sink = punt_sink         # callable(list of frame bytes), thread-safe
        self.realtime = realtime           # SCHED_FIFO for the thread (see the docstring)
        self.sched = None                  # the policy the thread runs under, once it runs
        self.punts = None                  # PuntTable, set once the state exists
        self.sent_tap = None               # callable(frames, worker): frames Python made and
                                           # sent here (lb/watch.py shows them), set by attach
        self.lock = EngineLock(engine)
        self.batch = io.new_batch(BATCH_SIZE)
        self.running = False
        self.thread = None
        self.started_ns = self.ended_ns = None   # CLOCK_MONOTONIC of its loop's first/last burst
        self._next_tick = None
        self.sync = None                   # lb/flowsync.py FlowSync, when [sync] is set
        self._last_error_log = 0.0
        self.stats = {"wakeups": 0, "bursts": 0, "frames": 0, "punts": 0, "punts_up": 0,
                      "ticks": 0, "expired": 0, "errors": 0}

    # --- the thread ---------------------------------------------------------------------
    def start(self):
        self.running = True
        self.thread = threading.Thread(target=self.run, name="lbd-w%d" % self.index,
                                       daemon=True)
        self.thread.start()

    def stop(self):
        self.running = False

    def join(self, timeout=JOIN_TIMEOUT_S):
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                log.error("worker %d did not stop within %.0f s", self.index, timeout)

    def run(self):
        _name_thread("lbd-w%d" % self.index)
        try:
            self.sched = set_sched(self.realtime)
        except OSError as e:               # (the probe said yes: counted, and it runs on)
            self.sched = "other"
            self._error("worker %d: scheduling policy not set (%s)" % (self.index, e))
        eng = self.engine
        self.started_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        try:
            self._loop(eng)
        finally:
            self.ended_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def _loop(self, eng):
        while self.running:
            if self._next_tick is None:
                self._next_tick = self.clock()
            # frames move in there, without the GIL, until a burst punts or a tick is due
            # (or a mode handler's poll: splice's probes in flight); it returns holding the
            # engine lock
            deadline = self._next_tick
            wake = self.punts.wake_ms() if self.punts is not None else None
            if wake is not None and wake < deadline:
                deadline = wake
            try:
                r = eng.serve(self.io.fd, self.batch, deadline)
            except Exception:              # refused before it took the lock: would repeat
                self._error("worker %d: serve refused, stopping" % self.index)
                break
            up = []
            try:
                self.io.account(r)
                for k in ("wakeups", "bursts", "frames"):
                    self.stats[k] += r[k]
                now = r["now"]
                if r["punts"]:
                    self.stats["punts"] += self.punts.dispatch(self.batch, self.batch.n, now,
                                                               self.send, up.append)
                if self.punts.pollers:
                    out = self.punts.poll(now)
                    if out:
                        self.send(out)
                self.timers(now)
            except Exception:
                self._error("worker %d: burst failed" % self.index)
            finally:
                eng.release()
            if up:
                self.stats["punts_up"] += len(up)
                try:
                    self.punt_sink(up)
                except RuntimeError:       # the loop is closing: nobody to answer ARP
                    pass
            if r["error"]:                 # the fd is gone: this worker is over (view: alive)
                self.stats["errors"] += 1
                log.error("worker %d: poll failed (%s), stopping", self.index,
                          os.strerror(r["error"]))
                break

    # --- under the engine lock ------------------------------------------------------------
    def timers(self, now):
        if self._next_tick is not None and now < self._next_tick:
            return
        self._next_tick = now + TICK_MS
        self.stats["ticks"] += 1
        self.stats["expired"] += housekeep(self.engine, self.punts, self.send,
                                           self.expire_budget, now)
        if self.sync is not None:          # flow sync: the peers' records in, ours out
            self.sync.work(self.index, self.engine, now)

    def send(self, frames):
        """Frames Python made (a mode's punt answers and timers) out of this queue."""
        self.io.send(frames)
        if self.sent_tap is not None:
            self.sent_tap(frames, self.index)

    def _error(self, what):
        self.stats["errors"] += 1
        t = time.monotonic()
        if t - self._last_error_log >= 1.0:
            self._last_error_log = t
            log.exception("%s (%d errors so far)", what, self.stats["errors"])

    def view(self):
        return dict(self.stats, worker=self.index, flows=self.engine.flow_count(),
                    alive=self.thread is not None and self.thread.is_alive(),
                    sched=self.sched, io=self.io.counters())


def engine_capacity(cfg, n):
    """Flow entries of each of n workers' engines."""
    return max(1, math.ceil(cfg.flows.capacity / n))


def new_engines(cfg, n):
    cap = engine_capacity(cfg, n)
    return [fastpath.Engine(cap, cfg.flows.timeouts) for _ in range(n)]


class Workers:
    """The threaded driver (see the module docstring): one Worker per queue of the IO
    backend. lb/daemon.py's Control is given it and runs everything but the frames in the
    main thread: control socket, health, ARP/ICMP punts (handed over by _punt_sink), gc."""

    def __init__(self, cfg, io, clock=monotonic_ms, engines=None):
        self.io = io
        queues = getattr(io, "queues", [io])
        n = len(queues)
        cap = engine_capacity(cfg, n)
        if engines is None:       # (a takeover makes them before it asks: new_engines)
            engines = new_engines(cfg, n)
        self.realtime = realtime_policy(cfg.io.realtime)    # OSError if required and refused
        self.workers = [Worker(i, q, engines[i], clock, max(1024, cap // 50), self._punt_sink,
                               self.realtime)
                        for i, q in enumerate(queues)]
        # one queue needs no steering: every frame is the one worker's
        self.steering = Steering(io.fd) if n > 1 else None
        self.engine = EngineGroup(self.workers, self.steering)
        self.capacity_per_worker = cap
        self.control = None
        self._loop = None
        self.stats_main = {"punts": 0}

    def attach(self, control):
        self.control = control
        for w in self.workers:
            w.punts = PuntTable(w.engine, control.state, control.mac)
            w.sent_tap = control.watch.note_sent
        sync = getattr(control, "sync", None)
        if sync is not None:
            sync.attach([w.engine for w in self.workers], self.capacity_per_worker)
            for w in self.workers:
                w.sync = sync

    # --- frames from the workers ---------------------------------------------------------
    def _punt_sink(self, frames):
        """Called by a worker thread: hand ARP/ICMP punts to the main thread."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._punts, frames)

    def _punts(self, frames):
        self.stats_main["punts"] += len(frames)
        for f in frames:
            self.control.to_neigh(f)

    def start(self, loop):
        self._loop = loop
        for w in self.workers:
            w.start()

    def stop(self, loop):
        for w in self.workers:
            w.stop()
        for w in self.workers:
            w.join()
        self._loop = None

    def timers(self, now):
        """The main thread's timers: the workers expire flows and run their modes' timers."""
        self.control.timers(now)

    # --- views ---------------------------------------------------------------------------
    def status(self):
        return {"workers": len(self.workers), "realtime": self.realtime}

    def stats(self):
        views = [w.view() for w in self.workers]
        loop = dict(self.stats_main)
        for k in ("wakeups", "bursts", "frames", "expired", "errors"):
            loop[k] = sum(v[k] for v in views)
        loop["workers"] = {"w%d" % v["worker"]: v for v in views}
        out = {"loop": loop, **sum_counters(w.punts for w in self.workers)}
        if self.steering is not None:
            out["steering"] = dict(self.steering.counters(), errors=self.engine.steer_errors)
        return out
