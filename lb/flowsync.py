"""Flow sync between lbd instances of a cluster (issue 16): each instance sends the flow
entries it creates or changes to every peer over UDP, and imports the peers' (IPVS-style
connection sync, active-active); a joining instance first pulls a full table from a peer
over TCP. The records and the export policy are the engines' (fastpath/sync.pxi).

```
   worker thread k (lb/workers.py Worker.timers, every tick, under engine k's lock)
      FlowSync.work(k, engine, now): inbox[k] -> engine.sync_import
                                     engine.sync_export -> outbox
                                     a dump job's next chunks -> that job's queue
   the sync thread (lbd-sync): UDP socket on [sync] listen (the mgmt address)
      datagram from a peer -> its records split by worker (the steering key: client ip and
                              port, lb/workers.py EngineGroup.worker_of) -> inbox[k]
      outbox -> every peer (sendto from the listen socket)
      TCP accept on the same address: "DUMP\\n" -> a dump job per worker; its datagrams
                              written as they come, then the end marker (a 0-record header)
   pull(): at start, before lbd says ready: TCP "DUMP\\n" to one peer after another until one
      answers; its datagrams go to the inboxes; import_pending() takes them in (bounded by
      [sync] pull_timeout, logged either way)
```

Config, `[sync]` (parse_config; lb/config.py has one hook):
    listen = "ADDR:PORT"       UDP (deltas) and TCP (full-table pull), the mgmt address
    peers = ["ADDR:PORT", ..]  static; set_peers() replaces them (etcd membership)
    threshold = 3              frames before a flow is sent (Engine.set_sync)
    period = 30.0              s: a live flow is sent again this often
    max_datagram = 1400        bytes of a UDP datagram (header + records): 68..65507
    pull_timeout = 5.0         s a joining instance waits for a peer's full table (0: no pull)

Invariants:
- The engines are touched only by their worker threads, under their locks (work(),
  import_pending() before the workers run); the sync thread and the dump connections only
  move bytes between sockets and queues.
- Datagrams from an address that is not a peer (ip and port) are counted (from_unknown) and
  dropped unread. A malformed datagram goes to worker 0's engine, which counts it.
- Every loop is bounded: a tick exports at most EXPORT_BUDGET datagrams per engine, a dump
  chunk at most DUMP_CHUNKS datagrams of DUMP_RECORDS records per engine per tick, an inbox
  at most INBOX_MAX datagrams (more are counted inbox_full and dropped); a pull and a dump
  connection end at their deadlines.
"""
import collections
import errno
import ipaddress
import logging
import os
import queue
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import fastpath
from fastpath import defs

from .errors import LBError

log = logging.getLogger("lbd.sync")

HDR = struct.Struct("!BBH")
BACKEND = struct.Struct("!IH")           # a record's rip, rport
END = HDR.pack(defs.SYNC_MAGIC, defs.SYNC_VERSION, 0)     # the end of a dump stream
EXPORT_BUDGET = 512          # datagrams per engine per tick
DUMP_RECORDS = 1024          # records per dump datagram (TCP: no 1400-byte limit)
DUMP_CHUNKS = 16             # dump datagrams per engine per tick
INBOX_MAX = 4096             # datagrams waiting for one worker
OUTBOX_MAX = 16384           # datagrams waiting for the sync thread (full: no export this
                             # tick, the flows stay due)
DUMP_TIMEOUT_S = 60.0        # a dump connection's whole life
REQUEST = b"DUMP\n"


@dataclass
class SyncConfig:
    listen: str                                   # "ADDR:PORT"
    peers: list = field(default_factory=list)     # ["ADDR:PORT"]
    threshold: int = defs.SYNC_THRESHOLD
    period: float = defs.SYNC_PERIOD_MS / 1000.0
    max_datagram: int = 1400
    pull_timeout: float = 5.0

    @property
    def endpoint(self):
        host, port = self.listen.split(":")
        return host, int(port)

    def dump(self):
        """The [sync] table as lb/running.py writes it (parse_config's inverse)."""
        return {"listen": self.listen, "peers": list(self.peers), "threshold": self.threshold,
                "period": self.period, "max_datagram": self.max_datagram,
                "pull_timeout": self.pull_timeout}


KEYS = ("listen", "peers", "threshold", "period", "max_datagram", "pull_timeout")


def parse_config(raw):
    """[sync] -> SyncConfig, or None without the table; LBError names the bad field. (Its
    own checks, in lb/config.py's manner: lb/config.py imports this module, not back.)"""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise LBError("sync", "must be a table, got %r" % (raw,))
    for k in raw:
        if k not in KEYS:
            raise LBError("sync." + k, "unknown key (known: %s)" % ", ".join(KEYS))
    if "listen" not in raw:
        raise LBError("sync.listen", "missing: the ADDR:PORT flow sync listens on")
    c = SyncConfig(listen="%s:%d" % _endpoint(raw["listen"], "sync.listen"))
    peers = raw.get("peers", [])
    if not isinstance(peers, list):
        raise LBError("sync.peers", "must be an array of \"ADDR:PORT\", got %r" % (peers,))
    for i, p in enumerate(peers):
        if not isinstance(p, str):
            raise LBError("sync.peers[%d]" % i, "must be \"ADDR:PORT\", got %r" % (p,))
        ep = "%s:%d" % _endpoint(p, "sync.peers[%d]" % i)
        if ep == c.listen:
            raise LBError("sync.peers[%d]" % i, "%s is this instance's own listen" % ep)
        if ep in c.peers:
            raise LBError("sync.peers[%d]" % i, "%s is listed twice" % ep)
        c.peers.append(ep)
    c.threshold = _number(raw.get("threshold", c.threshold), "sync.threshold", 1, 0xFFFFFFFF,
                          True)
    c.period = float(_number(raw.get("period", c.period), "sync.period", 0.1, 86400.0))
    c.max_datagram = _number(raw.get("max_datagram", c.max_datagram), "sync.max_datagram",
                             defs.SYNC_HDR_LEN + defs.SYNC_REC_LEN, 65507, True)
    c.pull_timeout = float(_number(raw.get("pull_timeout", c.pull_timeout),
                                   "sync.pull_timeout", 0.0, 600.0))
    return c


def _number(v, fld, lo, hi, integer=False):
    if (isinstance(v, bool) or not isinstance(v, int if integer else (int, float))
            or not lo <= v <= hi):
        raise LBError(fld, "must be %s %g..%g, got %r"
                      % ("an integer" if integer else "a number of seconds", lo, hi, v))
    return v


def _endpoint(p, fld="peer"):
    """"ADDR:PORT" or (addr, port) -> (dotted addr, port); LBError naming fld."""
    if isinstance(p, tuple) and len(p) == 2:
        p = "%s:%s" % p
    if not isinstance(p, str) or p.count(":") != 1:
        raise LBError(fld, "must be IP:PORT like 198.19.0.3:7900, got %r" % (p,))
    host, port = p.split(":")
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        raise LBError(fld, "not an IPv4 address: %r" % (host,)) from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise LBError(fld, "port must be a number 1..65535, got %r" % (port,))
    return str(ip), int(port)


def record_count(data):
    """The record count of a datagram whose header and length are right, else None (the
    engine checks each record and counts what it refuses)."""
    if len(data) < defs.SYNC_HDR_LEN:
        return None
    magic, version, count = HDR.unpack_from(data, 0)
    if (magic, version) != (defs.SYNC_MAGIC, defs.SYNC_VERSION) or \
            len(data) != defs.SYNC_HDR_LEN + count * defs.SYNC_REC_LEN:
        return None
    return count


def record_backends(data):
    """{(ip, port)} of the backends a well-formed datagram's records name (offset 16 rip,
    20 rport: fastpath/sync.pxi); an empty set for anything else."""
    count = record_count(data)
    if count is None:
        return set()
    return {BACKEND.unpack_from(data, defs.SYNC_HDR_LEN + i * defs.SYNC_REC_LEN + 16)
            for i in range(count)}


def worker_of(cip, cport, n):
    """The worker of a client endpoint (lb/workers.py EngineGroup.worker_of, lb/steer.py)."""
    return (fastpath.mix64(cip << 16 | cport) & 0xFFFF) % n


class DumpJob:
    """A full table for one connection: each worker's engine walked from entry 0, its
    datagrams queued for the connection's thread; None on the queue: that engine is done."""

    def __init__(self, n):
        self.cursor = [0] * n
        self.done = [False] * n
        self.q = queue.Queue()
        self.cancelled = False


class FlowSync:
    """The sync endpoint of one lbd (see the module docstring)."""

    def __init__(self, cfg, clock=None):
        self.cfg = cfg
        self.clock = clock
        self.local = _endpoint(cfg.listen, "sync.listen")
        self.peers = frozenset(_endpoint(p, "sync.peers") for p in cfg.peers)
        self.max_records = (cfg.max_datagram - defs.SYNC_HDR_LEN) // defs.SYNC_REC_LEN
        self.engines = []
        self.capacity = 0
        self.inbox = []
        self.outbox = collections.deque()
        self.jobs = []               # DumpJob of the connections being served
        self._jobs_lock = threading.Lock()
        self.udp = self.tcp = None
        self._wake_r = self._wake_w = None
        self.thread = None
        self.running = False
        self.last_pull = None
        self.stats = collections.Counter()
        self._stats_lock = threading.Lock()

    # --- set up ---------------------------------------------------------------------------
    def attach(self, engines, capacity):
        """The engines, one per worker (index = the worker's), of `capacity` entries each:
        their export policy is set here, their inboxes made."""
        self.engines = list(engines)
        self.capacity = capacity
        self.inbox = [collections.deque() for _ in self.engines]
        for e in self.engines:
            e.set_sync(self.cfg.threshold, max(1, int(self.cfg.period * 1000)))

    def set_peers(self, peers):
        """Replace the peers (["ADDR:PORT"] or [(addr, port)]); this instance's own listen
        is left out (a membership list holds every member). LBError for a bad one, and the
        peers stay as they were."""
        new = frozenset(_endpoint(p, "sync.peers") for p in peers) - {self.local}
        self.peers = new
        return sorted("%s:%d" % p for p in new)

    def start(self):
        """Bind the UDP and TCP sockets on the listen address and start the sync thread.
        OSError (address in use, not local) goes to the caller."""
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # SO_REUSEPORT: a takeover's new lbd binds while the old one still has them
            for s in (udp, tcp):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            udp.bind(self.local)
            udp.setblocking(False)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind(self.local)
            tcp.listen(16)
            tcp.setblocking(False)
        except OSError:
            udp.close()
            tcp.close()
            raise
        self.udp, self.tcp = udp, tcp
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.running = True
        self.thread = threading.Thread(target=self._run, name="lbd-sync", daemon=True)
        self.thread.start()

    def stop(self):
        self.running = False
        self._wake()
        if self.thread is not None:
            self.thread.join(5.0)
            self.thread = None
        with self._jobs_lock:
            for j in self.jobs:
                j.cancelled = True
        for s in (self.udp, self.tcp):
            if s is not None:
                s.close()
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self.udp = self.tcp = self._wake_r = self._wake_w = None

    # --- the worker side (under the engine's lock) ----------------------------------------
    def work(self, index, engine, now):
        """One tick of worker `index`: import what the peers sent, export what is due, and
        the next chunks of any dump."""
        self.work_inbox(index, engine, now)
        sent = 0
        for _ in range(EXPORT_BUDGET):
            if len(self.outbox) >= OUTBOX_MAX:
                self._count("outbox_full")
                break
            d = engine.sync_export(self.max_records, now)
            if not d:
                break
            self.outbox.append(d)
            sent += 1
        with self._jobs_lock:
            jobs = list(self.jobs)
        for j in jobs:
            if j.done[index] or j.cancelled:
                continue
            for _ in range(DUMP_CHUNKS):
                d, j.cursor[index] = engine.sync_dump(j.cursor[index], DUMP_RECORDS)
                if d:
                    j.q.put(d)
                if j.cursor[index] >= self.capacity:
                    j.done[index] = True
                    j.q.put(None)
                    break
        if sent:
            self._wake()

    def import_pending(self, now):
        """Every inbox into its engine, each under its lock: before the workers run (the
        full table a pull brought)."""
        for k, e in enumerate(self.engines):
            e.acquire()
            try:
                self.work_inbox(k, e, now)
            finally:
                e.release()

    def pending_backends(self):
        """{(ip, port)} of the backends the records waiting in the inboxes name (a pull's
        full table, before import_pending): the daemon gives those this instance has no slot
        for a draining one first (LBState.adopt_draining), so the flows of a backend the
        cluster removed while they run are taken, as every older instance still has them.
        Malformed datagrams are skipped here (the engine counts them)."""
        out = set()
        for box in self.inbox:
            for data in list(box):
                out |= record_backends(data)
        return out

    def work_inbox(self, index, engine, now):
        box = self.inbox[index]
        taken = refused = 0
        while box:
            t, r = engine.sync_import(box.popleft(), now)
            taken += t
            refused += r
        if taken or refused:
            self._count("imported", taken)
            self._count("not_taken", refused)

    def _count(self, what, n=1):
        """stats[what] += n from any thread (the workers, the sync and dump threads)."""
        with self._stats_lock:
            self.stats[what] += n

    # --- datagrams to the workers -----------------------------------------------------------
    def route(self, data):
        """A peer's datagram into the inboxes: its records split by the worker that owns
        each client endpoint (one worker: the datagram as it is)."""
        n = len(self.inbox)
        if n == 0:
            return
        if n == 1:
            self._put(0, data)
            return
        count = record_count(data)
        if count is None:
            self._put(0, data)                 # the engine counts it malformed
            return
        parts = [[] for _ in range(n)]
        for k in range(count):
            off = defs.SYNC_HDR_LEN + k * defs.SYNC_REC_LEN
            rec = data[off:off + defs.SYNC_REC_LEN]
            cip, = struct.unpack_from("!I", rec, 0)
            cport, = struct.unpack_from("!H", rec, 8)
            parts[worker_of(cip, cport, n)].append(rec)
        for w, recs in enumerate(parts):
            if recs:
                self._put(w, HDR.pack(defs.SYNC_MAGIC, defs.SYNC_VERSION, len(recs))
                          + b"".join(recs))

    def _put(self, index, data):
        if len(self.inbox[index]) >= INBOX_MAX:
            self._count("inbox_full")
            return
        self.inbox[index].append(data)

    # --- the sync thread ----------------------------------------------------------------------
    def _wake(self):
        if self._wake_w is not None:
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass

    def _run(self):
        while self.running:
            try:
                r, _, _ = select.select([self.udp, self.tcp, self._wake_r], [], [], 0.1)
            except (OSError, ValueError):
                break
            if self._wake_r in r:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            if self.udp in r:
                self._receive()
            if self.tcp in r:
                self._accept()
            self._send()

    def _receive(self):
        for _ in range(1024):
            try:
                data, src = self.udp.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._count("errors")
                return
            if src not in self.peers:
                self._count("from_unknown")
                continue
            self.stats["rx_datagrams"] += 1
            if len(data) >= defs.SYNC_HDR_LEN:
                self.stats["rx_records"] += HDR.unpack_from(data, 0)[2]
            self.route(data)

    def _send(self):
        peers = sorted(self.peers)
        while self.outbox:
            d = self.outbox.popleft()
            n = HDR.unpack_from(d, 0)[2]
            for p in peers:
                try:
                    self.udp.sendto(d, p)
                    self.stats["tx_datagrams"] += 1
                    self.stats["tx_records"] += n
                except OSError as e:
                    self._count("errors")
                    if e.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED,
                                       errno.EHOSTUNREACH, errno.ENETUNREACH):
                        log.warning("sync: send to %s:%d failed: %s", p[0], p[1], e)

    def _accept(self):
        try:
            conn, src = self.tcp.accept()
        except (BlockingIOError, OSError):
            return
        if src[0] not in {p[0] for p in self.peers}:
            self._count("from_unknown")
            conn.close()
            return
        threading.Thread(target=self._serve_dump, args=(conn, src), name="lbd-sync-dump",
                         daemon=True).start()

    def _serve_dump(self, conn, src):
        """One pull: read the request, then every engine's flows, then the end marker."""
        deadline = time.monotonic() + DUMP_TIMEOUT_S
        job = None
        try:
            conn.settimeout(5.0)
            req = b""
            while not req.endswith(b"\n") and len(req) < 64:
                chunk = conn.recv(64)
                if not chunk:
                    break
                req += chunk
            if req != REQUEST:
                self._count("bad_requests")
                return
            job = DumpJob(len(self.engines))
            with self._jobs_lock:
                self.jobs.append(job)
            left, flows = len(self.engines), 0
            while left and time.monotonic() < deadline:
                try:
                    d = job.q.get(timeout=0.5)
                except queue.Empty:
                    continue
                if d is None:
                    left -= 1
                    continue
                conn.sendall(d)
                flows += HDR.unpack_from(d, 0)[2]
            if left:
                log.warning("sync: dump for %s:%d cut at %.0f s", src[0], src[1],
                            DUMP_TIMEOUT_S)
                return
            conn.sendall(END)
            self._count("dumps_served")
            log.info("sync: full table (%d flows) sent to %s:%d", flows, src[0], src[1])
        except OSError as e:
            self._count("errors")
            log.warning("sync: dump for %s:%d failed: %s", src[0], src[1], e)
        finally:
            if job is not None:
                job.cancelled = True
                with self._jobs_lock:
                    self.jobs.remove(job)
            conn.close()

    # --- joining: a full table from a peer ------------------------------------------------------
    def pull(self, timeout=None):
        """Ask the peers, one after another, for their full table (TCP, from the listen
        address) until one gives it, within `timeout` s in all ([sync] pull_timeout). Its
        datagrams go to the inboxes (import_pending or the workers take them in). Returns
        last_pull: {peer, flows, datagrams, ms, error}."""
        timeout = self.cfg.pull_timeout if timeout is None else timeout
        t0 = time.monotonic()
        deadline = t0 + timeout
        out = {"peer": None, "flows": 0, "datagrams": 0, "ms": 0, "error": "no peer"}
        for peer in sorted(self.peers):
            left = deadline - time.monotonic()
            if left <= 0:
                out["error"] = "timed out"
                break
            try:
                got = self._pull_from(peer, deadline)
            except (OSError, ValueError) as e:
                out = dict(out, peer="%s:%d" % peer, error=str(e) or type(e).__name__)
                log.info("sync: no full table from %s:%d: %s", peer[0], peer[1], out["error"])
                continue
            out = {"peer": "%s:%d" % peer, "flows": got[0], "datagrams": got[1], "error": None}
            break
        out["ms"] = round((time.monotonic() - t0) * 1000, 1)
        self.last_pull = out
        self.stats["pulls"] += 1
        return out

    def _pull_from(self, peer, deadline):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.local[0], 0))
            s.settimeout(max(0.05, deadline - time.monotonic()))
            s.connect(peer)
            s.sendall(REQUEST)
            buf = bytearray()
            flows = datagrams = 0
            while True:
                if time.monotonic() > deadline:
                    raise ValueError("timed out after %d flows" % flows)
                s.settimeout(max(0.05, deadline - time.monotonic()))
                chunk = s.recv(1 << 16)
                if not chunk:
                    raise ValueError("the peer closed the stream before its end")
                buf += chunk
                while len(buf) >= defs.SYNC_HDR_LEN:
                    magic, version, n = HDR.unpack_from(buf, 0)
                    if (magic, version) != (defs.SYNC_MAGIC, defs.SYNC_VERSION):
                        raise ValueError("not a flow sync stream")
                    size = defs.SYNC_HDR_LEN + n * defs.SYNC_REC_LEN
                    if n == 0:
                        return flows, datagrams
                    if len(buf) < size:
                        break
                    self.route(bytes(buf[:size]))
                    del buf[:size]
                    flows += n
                    datagrams += 1
        finally:
            s.close()

    # --- views --------------------------------------------------------------------------------
    def view(self):
        """lbctl status's "sync" section."""
        return {"listen": self.cfg.listen, "peers": sorted("%s:%d" % p for p in self.peers),
                "threshold": self.cfg.threshold, "period_s": self.cfg.period,
                "max_records": self.max_records,
                "sent": {"records": self.stats["tx_records"],
                         "datagrams": self.stats["tx_datagrams"]},
                "received": {"records": self.stats["rx_records"],
                             "datagrams": self.stats["rx_datagrams"],
                             "imported": self.stats["imported"],
                             "not_taken": self.stats["not_taken"]},
                "errors": self.stats["errors"], "from_unknown": self.stats["from_unknown"],
                "inbox_full": self.stats["inbox_full"],
                "outbox_full": self.stats["outbox_full"],
                "bad_requests": self.stats["bad_requests"],
                "dumps_served": self.stats["dumps_served"], "last_pull": self.last_pull}


class Pump:
    """A worker stand-in for engines no Worker drives (tests, tools): a thread that every
    `tick_ms` takes each engine's lock and runs FlowSync.work on it."""

    def __init__(self, sync, tick_ms=50, clock=None):
        self.sync = sync
        self.tick_ms = tick_ms
        self.clock = clock or (lambda: time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1_000_000)
        self.running = False
        self.thread = None

    def start(self):
        self.running = True
        self.thread = threading.Thread(target=self._run, name="lbd-sync-pump", daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            now = self.clock()
            for k, e in enumerate(self.sync.engines):
                e.acquire()
                try:
                    self.sync.work(k, e, now)
                finally:
                    e.release()
            time.sleep(self.tick_ms / 1000.0)

    def stop(self):
        self.running = False
        if self.thread is not None:
            self.thread.join(5.0)
