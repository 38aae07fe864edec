"""What both data-plane drivers share, and the single-loop driver (pcap mode).

    lb/daemon.py  Control (state, health, neighbours, control socket, main-thread timers)
                     | is given to one driver:
        +------------+-------------+
   BurstLoop (here)           Workers (lb/workers.py)
   one engine, bursts          N threads in Engine.serve, one engine and one PuntTable
   in the caller's thread      each; an EngineGroup fans control writes out

Invariants:
- A driver owns the engines; Control owns everything else. Control reaches the engines only
  through driver.engine (an Engine, or lb/workers.py's EngineGroup with the same control
  methods), and a driver reaches Control only through the methods it is given: it is composed,
  not inherited, and no module here imports lb/daemon.py.
- Punted frames go to the mode whose punt reason they carry (PuntTable, built from
  modes.REGISTRY through the door, one per engine); every other punt (ARP, traffic for the
  LB's own address) goes to Control's neighbour logic. lb/ names no mode here.
- Timers: a driver calls its engines' expire and its PuntTables' tick every TICK_MS, and
  Control.timers (ARP requests, gc) from the main thread. A handler with work in flight of
  its own (splice's probes on non-blocking sockets) says by when it wants poll(now) called
  (wake_ms); the driver then returns from its wait by that time and calls it, and also after
  every burst with punts. Handlers without poll/wake_ms are left out of this.
- A takeover (lb/takeover.py) carries each PuntTable's handlers' state to the next lbd's
  table of the same worker (handover/take, for the handlers that have them).
"""
import time

import numpy as np

import modes
from fastpath import defs

BATCH_SIZE = 256
TICK_MS = 100
GC_MS = 5000


def monotonic_ms():
    """CLOCK_MONOTONIC in integer ms: the clock Engine.serve reads in C."""
    return time.monotonic_ns() // 1000000


def housekeep(engine, punts, send, budget, now):
    """One tick's work on one engine, for both drivers: expire up to `budget` idle flows and
    run the mode handlers' ticks (their frames go out with send). Returns the flows freed."""
    expired = engine.expire(now, budget)
    out = punts.tick(now)
    if out:
        send(out)
    return expired


class PuntTable:
    """One engine's mode punt handlers (modes/base.py Mode.punt_handler), by punt reason."""

    def __init__(self, engine, state, mac):
        self.handlers = {}           # mode name -> handler
        self.by_reason = {}          # defs.C index of the punt counter -> handler
        self.pollers = []            # handlers with poll(now) and wake_ms()
        for m in modes.REGISTRY.values():
            h = m.punt_handler(engine, state.punt_context(m), mac)
            if h is not None:
                self.handlers[m.name] = h
                for r in h.reasons:
                    self.by_reason[r] = h
                if hasattr(h, "poll") and hasattr(h, "wake_ms"):
                    self.pollers.append(h)

    def dispatch(self, batch, n, now, send, other):
        """The burst's punted frames (there are some: process() said so): each to its mode's
        handler, whose answers go out with send(frames); the rest to other(frame). Returns
        how many there were."""
        punted = np.flatnonzero(batch.verdict[:n] == defs.V_PUNT)
        for i in punted:
            h = self.by_reason.get(int(batch.reason[i]))
            if h is not None:
                out = h.handle(batch.frame(i), now, int(batch.reason[i]))
                if out:
                    send(out)
            else:
                other(batch.frame(i))
        return len(punted)

    def handover(self):
        """{mode name: state} of the handlers that hand state to the next lbd (a handler's
        optional handover()/take(state) pair, modes/base.py)."""
        return {name: h.handover() for name, h in self.handlers.items()
                if hasattr(h, "handover")}

    def take(self, states):
        for name, st in states.items():
            h = self.handlers.get(name)
            if h is not None and hasattr(h, "take"):
                h.take(st)

    def tick(self, now):
        out = []
        for h in self.handlers.values():
            out += h.tick(now)
        return out

    def poll(self, now):
        """The handlers' own work in flight (never blocks): frames to send."""
        out = []
        for h in self.pollers:
            out += h.poll(now)
        return out

    def wake_ms(self):
        """The earliest time (ms) a handler wants poll() called, or None."""
        w = [t for t in (h.wake_ms() for h in self.pollers) if t is not None]
        return min(w) if w else None

    def counters(self):
        return {name: h.counters() for name, h in self.handlers.items()}


def sum_counters(tables):
    """The PuntTables' counters added up per mode (workers: one table each)."""
    total = {}
    for t in tables:
        for name, c in t.counters().items():
            acc = total.setdefault(name, {})
            for k, v in c.items():
                acc[k] = acc.get(k, 0) + v
    return total


class BurstLoop:
    """The single-loop driver: one engine, burst() run by the caller (pcap mode: over a file,
    with pcap time as `now`). The engine and the punt handling are the live ones; only the
    loop around them differs."""

    def __init__(self, cfg, io, clock):
        import fastpath
        self.io = io
        self.clock = clock
        self.engine = fastpath.Engine(cfg.flows.capacity, cfg.flows.timeouts)
        self.batch = io.new_batch(BATCH_SIZE)
        self.expire_budget = max(1024, cfg.flows.capacity // 50)
        self.control = None
        self.punts = None
        self._next_tick = None
        self.loop_stats = {"bursts": 0, "frames": 0, "punts": 0, "ticks": 0, "expired": 0}

    def attach(self, control):
        self.control = control
        self.punts = PuntTable(self.engine, control.state, control.mac)

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
            self.loop_stats["punts"] += self.punts.dispatch(b, n, now, self.io.send,
                                                            self.control.to_neigh)
        out = self.punts.poll(now)
        if out:
            self.io.send(out)
        self.loop_stats["bursts"] += 1
        self.loop_stats["frames"] += n
        return n

    def timers(self, now):
        """Run what is due at `now` (ms): cheap when nothing is (called per burst)."""
        if self._next_tick is not None and now < self._next_tick:
            return
        self._next_tick = now + TICK_MS
        self.loop_stats["ticks"] += 1
        self.loop_stats["expired"] += housekeep(self.engine, self.punts, self.io.send,
                                                self.expire_budget, now)
        self.control.timers(now)

    def stats(self):
        # the modes' punt handler counters under their mode names ("splice": {...})
        return {"loop": dict(self.loop_stats), **self.punts.counters()}

    def status(self):
        return {}
