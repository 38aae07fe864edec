"""lbd's Prometheus endpoint: `[metrics] listen = "IP:PORT"` -> `GET /metrics` (text format).

Invariants:
- The data plane pays nothing per packet for metrics beyond the fast path's own counters
  (its exit counters, and the per-flow, per-real and per-VIP-slot frame/byte counters that
  flow_account moves): everything here is read at scrape time by Collector.collect().
- A scrape runs in lbd's main thread (an asyncio handler in its loop), the one thread that
  reads LBState; engine counters are read lock-free (lb/workers.py: a burst old at worst).
- Names: `threeway_` prefix, snake_case, counters end in `_total`, base units (bytes,
  seconds). Every fast-path counter of defs.COUNTER_TABLE is `threeway_<name>_total` with
  its description as help. Families of something each worker has (fast-path counters,
  flows, the loop) carry `worker="0"...` iff there is more than one worker; per-VIP and
  per-backend families are sums over the workers (sum by (worker) is the query's job).
- Per VIP (labels vip="A:P", proto, mode): connections now and created, frames and bytes by
  direction (client_to_backend always; backend_to_client where the mode has a reverse path,
  or once it counted any). Per backend (label backend="IP:PORT", one real slot, shared by
  every VIP that uses that backend): the same from the real's counters. Per VIP x backend:
  weight, and up (1/0) where the VIP has a health check. A mode's punt-handler numbers are
  `threeway_<mode>_punt_<name>`, untyped (they mix counters and gauges).
- A request that is not `GET /metrics` gets 404/405/400; a slow or oversized request is cut
  off (REQUEST_TIMEOUT_S, MAX_REQUEST): the endpoint never blocks the loop.
"""
import asyncio
import logging
import time

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    InfoMetricFamily, UnknownMetricFamily)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

import modes
from fastpath import defs

from . import cluster

log = logging.getLogger("lbd.metrics")

REQUEST_TIMEOUT_S = 5.0
MAX_REQUEST = 8192
FWD, REV = "client_to_backend", "backend_to_client"
STAT_FIELDS = ("conns", "flows", "pkts_fwd", "pkts_rev", "bytes_fwd", "bytes_rev")
HEALTH_COUNTERS = ("probes", "probe_failures", "transitions")
HEALTH_GAUGES = ("tasks", "in_flight")
# the loop's per-worker numbers (lb/workers.py Worker.stats); all count up
LOOP_COUNTERS = ("wakeups", "bursts", "frames", "punts", "punts_up", "ticks", "expired",
                 "errors")


class Collector:
    """The prometheus_client collector over lbd's state, read at scrape time.

    state: lb/state.py LBState (metrics_view); engines: the fast-path engines, one per
    worker, in worker order; capacity: flow entries per engine; info: () -> {label: value}
    for threeway_lbd_info; stats: () -> the daemon's extra_stats() ({io, neigh, loop,
    health, ...}); started: time.monotonic() at start (uptime)."""

    def __init__(self, state, engines, capacity, info=dict, stats=dict, started=None):
        self.state = state
        self.engines = list(engines)
        self.capacity = capacity
        self.info = info
        self.stats = stats
        self.started = time.monotonic() if started is None else started

    def describe(self):
        return []           # families depend on the config: no registration-time check

    def collect(self):
        yield from self._lbd()
        yield from self._fastpath()
        yield from self._services()
        yield from self._daemon(self.stats() or {})

    # --- lbd itself -------------------------------------------------------------------------
    def _lbd(self):
        i = InfoMetricFamily("threeway_lbd", "lbd: fast-path implementation (cy compiled, py "
                             "twin), IO backend and its settings")
        i.add_metric([], {k: str(v) for k, v in self.info().items()})
        yield i
        yield GaugeMetricFamily("threeway_uptime_seconds", "seconds since lbd started",
                                value=time.monotonic() - self.started)

    # --- the fast path, per worker ---------------------------------------------------------
    def _wlabels(self):
        """([label names], [[values] per engine]): worker="k" only with several workers."""
        if len(self.engines) > 1:
            return ["worker"], [[str(k)] for k in range(len(self.engines))]
        return [], [[]]

    def _fastpath(self):
        names, values = self._wlabels()
        ctrs = [e.counters() for e in self.engines]
        for c in defs.COUNTER_TABLE:
            help_ = c.when + (" (mode %s)" % c.mode if c.mode else "")
            fam = CounterMetricFamily("threeway_" + c.name, help_, labels=names)
            for lv, ctr in zip(values, ctrs):
                fam.add_metric(lv, ctr[c.name])
            yield fam
        flows = GaugeMetricFamily("threeway_flows", "flow table entries in use", labels=names)
        cap = GaugeMetricFamily("threeway_flows_capacity", "flow table entries",
                                labels=names)
        for lv, e in zip(values, self.engines):
            flows.add_metric(lv, e.flow_count())
            cap.add_metric(lv, self.capacity)
        yield flows
        yield cap

    def _sum(self, what, idx):
        """engine.real_stats / vip_stats summed over the engines, as a dict of STAT_FIELDS."""
        tot = [0] * len(STAT_FIELDS)
        for e in self.engines:
            for k, v in enumerate(getattr(e, what)(idx)):
                tot[k] += v
        return dict(zip(STAT_FIELDS, tot))

    # --- VIPs and backends -------------------------------------------------------------------
    def _services(self):
        view = self.state.metrics_view()
        vl = ["vip", "proto", "mode"]
        v_conns = GaugeMetricFamily("threeway_vip_connections_active",
                                    "flows of the VIP now in the flow table", labels=vl)
        v_new = CounterMetricFamily("threeway_vip_connections",
                                    "flows created on the VIP", labels=vl)
        v_pkts = CounterMetricFamily("threeway_vip_packets", "frames the VIP's flows carried "
                                     "through lbd, by direction", labels=vl + ["direction"])
        v_bytes = CounterMetricFamily("threeway_vip_bytes", "bytes (Ethernet frames) the "
                                      "VIP's flows carried through lbd, by direction",
                                      labels=vl + ["direction"])
        bl = ["vip", "proto", "backend"]
        b_weight = GaugeMetricFamily("threeway_backend_weight", "the backend's weight in the "
                                     "VIP (0: no new flows)", labels=bl)
        b_up = GaugeMetricFamily("threeway_backend_up", "health check of the backend for the "
                                 "VIP: 1 up, 0 down (VIPs with a check only)", labels=bl)
        reals = {}          # real idx -> backend "IP:PORT", every VIP's and the draining ones
        for v in view["vips"]:
            s = self._sum("vip_stats", v["slot"])
            lv = [v["vip"], v["proto"], v["mode"]]
            v_conns.add_metric(lv, s["conns"])
            v_new.add_metric(lv, s["flows"])
            rev = modes.get(v["mode"]).reverse_path or s["pkts_rev"] > 0
            v_pkts.add_metric(lv + [FWD], s["pkts_fwd"])
            v_bytes.add_metric(lv + [FWD], s["bytes_fwd"])
            if rev:
                v_pkts.add_metric(lv + [REV], s["pkts_rev"])
                v_bytes.add_metric(lv + [REV], s["bytes_rev"])
            for b in v["backends"]:
                reals[b["real"]] = b["backend"]
                bv = [v["vip"], v["proto"], b["backend"]]
                b_weight.add_metric(bv, b["weight"])
                if b["up"] is not None:
                    b_up.add_metric(bv, 1 if b["up"] else 0)
        for d in view["draining"]:
            reals[d["real"]] = d["backend"]
        yield from (v_conns, v_new, v_pkts, v_bytes, b_weight, b_up)
        r_conns = GaugeMetricFamily("threeway_backend_connections_active",
                                    "flows bound to the backend now (all its VIPs)",
                                    labels=["backend"])
        r_new = CounterMetricFamily("threeway_backend_connections",
                                    "flows bound to the backend (all its VIPs)",
                                    labels=["backend"])
        r_pkts = CounterMetricFamily("threeway_backend_packets", "frames of the flows bound "
                                     "to the backend, by direction", labels=["backend",
                                                                             "direction"])
        r_bytes = CounterMetricFamily("threeway_backend_bytes", "bytes (Ethernet frames) of "
                                      "the flows bound to the backend, by direction",
                                      labels=["backend", "direction"])
        for idx, name in sorted(reals.items(), key=lambda kv: kv[1]):
            s = self._sum("real_stats", idx)
            r_conns.add_metric([name], s["conns"])
            r_new.add_metric([name], s["flows"])
            r_pkts.add_metric([name, FWD], s["pkts_fwd"])
            r_pkts.add_metric([name, REV], s["pkts_rev"])
            r_bytes.add_metric([name, FWD], s["bytes_fwd"])
            r_bytes.add_metric([name, REV], s["bytes_rev"])
        yield from (r_conns, r_new, r_pkts, r_bytes)

    # --- the daemon around the fast path ---------------------------------------------------
    def _daemon(self, st):
        io = st.get("io") or {}
        queues = io.get("queues")
        per = [([str(k)], c) for k, c in enumerate(queues.values())] if queues else []
        for name in sorted(k for k, v in io.items() if isinstance(v, int)):
            fam = CounterMetricFamily("threeway_io_" + name, "IO backend (lb/io.py): %s%s"
                                      % (name.replace("_", " "),
                                         ", all queues" if per else ""))
            fam.add_metric([], io[name])
            yield fam
            if per:
                q = CounterMetricFamily("threeway_io_queue_" + name, "IO backend, per TAP "
                                        "queue: %s" % name.replace("_", " "), labels=["queue"])
                for lv, c in per:
                    q.add_metric(lv, c.get(name, 0))
                yield q
        for name, n in sorted((st.get("neigh") or {}).items()):
            yield CounterMetricFamily("threeway_neigh_" + name, "ARP/ICMP for lbd's own "
                                      "addresses (lb/neigh.py): %s" % name.replace("_", " "),
                                      value=n)
        loop = st.get("loop") or {}
        workers = loop.get("workers") or {}
        names, values = self._wlabels()
        views = [workers.get("w%d" % k, {}) for k in range(len(self.engines))]
        for name in LOOP_COUNTERS:
            if not any(name in v for v in views):
                continue
            fam = CounterMetricFamily("threeway_loop_" + name, "data-plane loop "
                                      "(lb/workers.py): %s" % name.replace("_", " "),
                                      labels=names)
            for lv, v in zip(values, views):
                fam.add_metric(lv, v.get(name, 0))
            yield fam
        for name, help_ in (("gc_freed", "real slots released by gc"),
                            ("punts", "ARP/ICMP punts the workers handed to the main thread")):
            if name in loop:
                yield CounterMetricFamily("threeway_control_" + name, help_, value=loop[name])
        for mode in sorted(modes.REGISTRY):
            # a mode's punt handler (modes/base.py): its own numbers, counters and gauges
            # mixed (splice's `open`), so untyped
            for name, n in sorted((st.get(mode) or {}).items()):
                if isinstance(n, int):
                    yield UnknownMetricFamily("threeway_%s_punt_%s" % (mode, name),
                                              "%s's punt handler (modes/): %s"
                                              % (mode, name.replace("_", " ")), value=n)
        yield from cluster.metric_families(st.get("cluster"))     # [cluster] (lb/cluster.py)
        h = st.get("health") or {}
        for name in HEALTH_COUNTERS:
            if name in h:
                yield CounterMetricFamily("threeway_health_" + name, "health checks "
                                          "(lb/health.py): %s" % name.replace("_", " "),
                                          value=h[name])
        for name in HEALTH_GAUGES:
            if name in h:
                yield GaugeMetricFamily("threeway_health_" + name, "health checks "
                                        "(lb/health.py): %s now" % name.replace("_", " "),
                                        value=h[name])


def registry(collector, process=True):
    """A registry with the collector (and the process's CPU, memory, fds: process_*)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    if process:
        ProcessCollector(registry=reg)
    return reg


class MetricsServer:
    """`GET /metrics` on (host, port), served in the running asyncio loop."""

    def __init__(self, host, port, reg):
        self.host, self.port, self.reg = host, port, reg
        self.server = None
        self.scrapes = 0

    async def start(self, sock=None):
        """Listen; OSError (e.g. address in use, or not an address of this host) propagates.
        sock: a listening socket to serve instead (handed over by the lbd we took over from)."""
        if sock is not None:
            self.server = await asyncio.start_server(self._client, sock=sock)
        else:
            self.server = await asyncio.start_server(self._client, self.host, self.port)

    def listen_fd(self):
        """The listening socket's fd (handed over to the next lbd by lb/takeover.py)."""
        return self.server.sockets[0].fileno()

    async def close(self):
        """Stop serving. After a takeover the socket is the next lbd's too: closing our fd
        leaves its copy listening."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _client(self, reader, writer):
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            except asyncio.LimitOverrunError:
                return await self._reply(writer, 431, b"request too large\n")
            except (asyncio.IncompleteReadError, asyncio.TimeoutError):
                return
            if len(head) > MAX_REQUEST:
                return await self._reply(writer, 431, b"request too large\n")
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
                return await self._reply(writer, 400, b"bad request\n")
            method, target = parts[0], parts[1].split(b"?", 1)[0]
            if target != b"/metrics":
                return await self._reply(writer, 404, b"only /metrics here\n")
            if method not in (b"GET", b"HEAD"):
                return await self._reply(writer, 405, b"GET /metrics\n")
            try:
                body = generate_latest(self.reg)
            except Exception:
                log.exception("metrics: collecting failed")
                return await self._reply(writer, 500, b"collecting failed (see lbd's log)\n")
            self.scrapes += 1
            await self._reply(writer, 200, body, CONTENT_TYPE_LATEST, method == b"HEAD")
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _reply(writer, code, body, ctype="text/plain; charset=utf-8", head=False):
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large", 500: "Internal Server Error"}[code]
        writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n" % (code, reason.encode(), ctype.encode(),
                                                     len(body)))
        if not head:
            writer.write(body)
        await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S)
