"""Planned restart and upgrade: `lbd -c cfg --takeover` takes over from the running lbd (found
by cfg's control socket path) without losing a flow; the old process then exits 0.

```
 new lbd (N)                                   old lbd (O), serving
  make its engines, listen on a private socket P
  -- control socket: {"cmd": "takeover", "args": {path: P, versions, record sizes,
                      workers, capacity, io}} -->  check (else LBError, nothing stopped)
  <-- on P: one JSON line + SCM_RIGHTS fds ------  [control listening socket, data-plane fds]
  <-- on P: u64 length + pickle ----------------  phase 1, still forwarding: VIP table, real
                                                   slots, scheduler tables, MACs, health,
                                                   ARP table, steering VIPs, io info
  build its control side (services, tables)
  -- on P: "ready" ----------------------------->  stop its workers (within a tick)
  <-- on P: u64 length + pickle ----------------  phase 2: every engine's export_state(),
                                                   every worker's mode handler state
  import, start its workers (the pause ends)
  -- on P: "ok {json}" ------------------------->  reply ok to the takeover request, exit 0
  serve the control socket on the received fd     without tearing down (no unlink of the
                                                   socket, no route removal); its fds close,
                                                   the kernel objects stay (N holds them)
```

Why two phases: while O's main thread is in this handler, nothing else of its control side
runs (commands, health results, ARP learning are all main-thread work), so what phase 1 sent
cannot change before phase 2; only the workers' tables (engines, splice connections) can,
and they go once the workers have stopped. N builds its services and scheduler tables while
O still forwards, so the pause is only stop -> export -> transfer -> import -> start.

Invariants:
- O changes nothing before its checks pass (versions, snapshot record sizes, io.workers,
  flow capacity per worker, io backend/interface/offload): a refused takeover leaves it
  serving as before, and the new process exits 1 with O's message.
- Until O stops its workers a failure costs nothing (O just refuses). From then until N
  says "ok", O holds everything: if N fails
  (closes P, says anything else, or is silent for HANDOVER_TIMEOUT_S), O restarts its
  workers on the same fds and engines (nothing was changed by the export) and answers the
  request with an error; frames meanwhile waited in the kernel queues.
- One takeover at a time: a second request while one runs, or after one succeeded, is
  refused.
- The running VIP table wins: N serves O's VIPs, backends, weights, rules and health checks
  (including what lbctl changed), with the same real slots (flows name reals by index);
  N's file gives everything else (timeouts, health limits, log level). Its [[vip]] entries
  are not applied (logged); the file can be applied later by a reload.
- The data-plane pause is O's last worker stopping to N's first worker starting, both on
  CLOCK_MONOTONIC (one clock for both processes): N logs it and shows it in `status`
  (takeover.pause_ms).
- The snapshot is pickle over a 0600 socket in the control socket's 0700 directory, and its
  sender is checked (SO_PEERCRED uid 0) as on the control socket: only root reaches it.
"""
import json
import logging
import os
import pickle
import select
import socket
import struct
import time

import fastpath
from fastpath import snapfmt

from .control import _UCRED
from .errors import LBError

log = logging.getLogger("lbd.takeover")

VERSION = 1                     # this protocol and the pickled state's layout
HANDOVER_TIMEOUT_S = 30.0       # O waits this long for N's "ok" (N imports every flow first)
CONNECT_TIMEOUT_S = 5.0
MAX_FDS = 64
LEN = struct.Struct("=Q")
ABORT_ENV = "THREEWAY_TAKEOVER_ABORT"   # tests: N exits 1 right after receiving the snapshot


def now_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def record_sizes():
    """This build's snapshot record sizes (they must match between O and N)."""
    h = dict(zip(snapfmt.HEADER_FIELDS, snapfmt.HEADER.unpack_from(fastpath.Engine(1).export_state())))
    return {k: h[k] for k in ("flow_size", "real_size", "frag_size", "wq_size")}


def request_args(cfg, path):
    """What N asks with: enough for O to refuse before it stops anything."""
    return {"path": path, "pid": os.getpid(), "version": VERSION, "snapshot": snapfmt.VERSION,
            "records": record_sizes(), "workers": cfg.io.workers,
            "capacity": cfg.flows.capacity, "backend": cfg.io.backend,
            "interface": cfg.io.interface, "offload": cfg.io.offload}


# ---- the old process's side ----------------------------------------------------------------
class Giver:
    """O's side: Control.handle("takeover") lands in serve()."""

    def __init__(self, control):
        self.control = control
        self.busy = False
        self.done = False

    def check(self, args):
        c = self.control
        cfg = c.cfg
        if self.done:
            raise LBError("takeover", "this lbd has handed over already and is exiting")
        if self.busy:
            raise LBError("takeover", "another takeover is in progress")
        if not hasattr(c.driver, "workers"):
            raise LBError("takeover", "only a live lbd can hand over")
        if args.get("version") != VERSION or args.get("snapshot") != snapfmt.VERSION:
            raise LBError("version", "incompatible takeover: this lbd speaks protocol %d with "
                          "snapshot format %d, the new one %r with %r"
                          % (VERSION, snapfmt.VERSION, args.get("version"), args.get("snapshot")))
        mine = record_sizes()
        if args.get("records") != mine:
            raise LBError("records", "incompatible snapshot format: records here %s, in the new "
                          "lbd %s (a fast-path struct changed: restart instead)"
                          % (mine, args.get("records")))
        n = len(c.driver.workers)
        if args.get("workers") != n:
            raise LBError("io.workers", "the new config has %r workers, this lbd runs %d: a "
                          "takeover keeps the queues and their flows (restart to change it)"
                          % (args.get("workers"), n))
        if args.get("capacity") != cfg.flows.capacity:
            raise LBError("flows.capacity", "the new config has %r, this lbd %d: a takeover "
                          "keeps the flow table as it is" % (args.get("capacity"),
                                                             cfg.flows.capacity))
        for k, have in (("backend", cfg.io.backend), ("interface", cfg.io.interface),
                        ("offload", cfg.io.offload)):
            if args.get(k) != have:
                raise LBError("io.%s" % k, "the new config has %r, this lbd %r"
                              % (args.get(k), have))
        if not isinstance(args.get("path"), str):
            raise LBError("path", "missing")

    def serve(self, args):
        """Hand everything to the lbd listening on args["path"]; returns when it runs (then
        this process exits 0) or raises LBError (after resuming, if it had stopped)."""
        self.check(args)
        self.busy = True
        c = self.control
        loop = c.driver._loop
        s = None
        try:
            # phase 1, still forwarding: the fds and the state only this (main) thread
            # changes; the new lbd builds its control side from them
            s = self.connect(args["path"])
            fds, meta, pre = self.prepare()
            socket.send_fds(s, [(json.dumps(meta) + "\n").encode()], fds)
            _send_blob(s, pre)
            s.settimeout(HANDOVER_TIMEOUT_S)
            line = _readline(s)
            if line != b"ready\n":
                raise LBError("takeover", "the new lbd is not ready: %s" % _said(line))
        except Exception as e:
            if s is not None:
                s.close()
            self.busy = False
            raise self._failed(args, e, False) from None
        # phase 2: stop forwarding, the tables the workers change, and the new one starts
        t0 = now_ns()
        c.driver.stop(loop)
        # the pause starts with the last burst of the last worker to stop
        stopped = max((w.ended_ns for w in c.driver.workers if w.ended_ns), default=None) \
            or now_ns()
        try:
            blob = self.tables(stopped)
            t_snap = now_ns()
            _send_blob(s, blob)
            line = _readline(s)
            if not line.startswith(b"ok "):
                raise LBError("takeover", "the new lbd did not take over: %s" % _said(line))
            reply = json.loads(line[3:])
        except Exception as e:
            c.driver.start(loop)
            self.busy = False
            raise self._failed(args, e, True) from None
        finally:
            s.close()
        self.done = True
        self.busy = False
        log.info("handed over to pid %s: %d flows, tables %d bytes in %.1f ms; the new one "
                 "reports a pause of %s ms; exiting", args.get("pid"), meta["flows"], len(blob),
                 (t_snap - stopped) / 1e6, reply.get("pause_ms"))
        c.handed_over()
        return {"handed_over": True, "pid": os.getpid(), "to_pid": args.get("pid"),
                "flows": reply.get("flows"), "bytes": len(pre) + len(blob),
                "stop_ms": round((stopped - t0) / 1e6, 3), **reply}

    def _failed(self, args, e, resumed):
        what = "serving on" if not resumed else "its workers started again, serving on"
        log.error("takeover by pid %s failed, %s: %s", args.get("pid"), what, e)
        if isinstance(e, LBError):
            return LBError(e.field, "%s; this lbd (pid %d) serves on" % (e.message, os.getpid()))
        return LBError("takeover", "the new lbd failed (%s: %s); this lbd (pid %d) serves on"
                       % (type(e).__name__, e, os.getpid()))

    def connect(self, path):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(CONNECT_TIMEOUT_S)
            s.connect(path)
            _, uid, _ = _UCRED.unpack(s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                   _UCRED.size))
            if uid != 0:
                raise LBError("path", "the takeover socket's owner is uid %d, not root" % uid)
        except Exception:
            s.close()
            raise
        return s

    def prepare(self):
        """Phase 1: what only the main thread changes (it is busy here, so nothing does)."""
        c = self.control
        d = c.driver
        pre = {"version": VERSION, "state": c.state.handover(), "neigh": c.neigh.handover(),
               "steering_vips": None if d.steering is None else sorted(d.steering.vips or ()),
               "io": c.io.handover_info(), "from_pid": os.getpid()}
        fds = [c.control_server.listen_fd()] + c.io.handover_fds()
        meta = {"version": VERSION, "fds": len(fds),
                "flows": sum(w.engine.flow_count() for w in d.workers)}
        m = getattr(c, "metrics_server", None)
        if m is not None and m.server is not None:
            # the /metrics listening socket goes last: the new lbd serves it (a bind of the
            # same address would fail while this one holds it)
            fds.append(m.listen_fd())
            meta.update(fds=len(fds), metrics=True)
        return fds, meta, pickle.dumps(pre, protocol=pickle.HIGHEST_PROTOCOL)

    def tables(self, stopped):
        """Phase 2, the workers stopped: every engine and every worker's mode handlers."""
        d = self.control.driver
        engines = []
        for w in d.workers:
            with w.lock:
                engines.append(w.engine.export_state())
        return pickle.dumps({"engines": engines, "modes": [w.punts.handover() for w in d.workers],
                             "stopped_ns": stopped}, protocol=pickle.HIGHEST_PROTOCOL)


def _said(line):
    return line.decode(errors="replace").strip() or "it closed the socket"


def _send_blob(s, data):
    s.sendall(LEN.pack(len(data)) + data)


def _recv_blob(conn):
    head = _recv_exact(conn, LEN.size)
    return _recv_exact(conn, LEN.unpack(head)[0])


def _recv_exact(conn, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = conn.recv_into(view[got:])
        if not k:
            raise LBError("takeover", "the running lbd closed the socket mid-way")
        got += k
    return buf


def _readline(s, limit=1 << 16):
    buf = b""
    while not buf.endswith(b"\n") and len(buf) < limit:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


# ---- the new process's side ----------------------------------------------------------------
class Taken:
    """What N received: fds[0] the control listening socket, then the data plane, then (when
    the old lbd served /metrics) the metrics listening socket."""

    def __init__(self, fds, snap, conn, ctrl, metrics=False):
        self.fds = fds
        self.snap = snap
        self.conn = conn          # the P connection: "ok ..." goes back on it
        self.ctrl = ctrl          # the control connection our request is pending on
        self.listen_fd = fds[0]
        self.metrics_fd = fds[-1] if metrics else None
        self.io_fds = fds[1:-1] if metrics else fds[1:]

    def ready(self):
        """Phase 2: say we are ready; the running lbd stops its workers and sends its tables
        ({engines, modes, stopped_ns})."""
        self.conn.sendall(b"ready\n")
        return pickle.loads(_recv_blob(self.conn))

    def confirm(self, info):
        """Tell O we run; then read O's answer to the takeover request (O exits after)."""
        self.conn.sendall(b"ok " + json.dumps(info).encode() + b"\n")
        self.conn.close()
        self.ctrl.settimeout(HANDOVER_TIMEOUT_S)
        try:
            line = _readline(self.ctrl)
        except OSError:
            line = b""
        finally:
            self.ctrl.close()
        return json.loads(line) if line.strip() else None

    def fail(self, message):
        try:
            self.conn.sendall(b"error " + message.encode() + b"\n")
        except OSError:
            pass
        self.conn.close()
        self.ctrl.close()
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass


def take(cfg):
    """N: ask the running lbd for everything. Returns a Taken, or raises LBError (refused,
    no lbd there, protocol error) with the reason."""
    path = "%s.takeover-%d" % (cfg.lb.control_socket, os.getpid())
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        lst.bind(path)
    finally:
        os.umask(old)
    lst.listen(1)
    ctrl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ctrl.settimeout(CONNECT_TIMEOUT_S)
        try:
            ctrl.connect(cfg.lb.control_socket)
        except OSError as e:
            raise LBError("lb.control_socket", "no lbd to take over at %s (%s)"
                          % (cfg.lb.control_socket, e.strerror or e)) from None
        ctrl.sendall((json.dumps({"cmd": "takeover", "args": request_args(cfg, path)})
                      + "\n").encode())
        deadline = time.monotonic() + HANDOVER_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LBError("takeover", "the running lbd neither refused nor connected "
                              "within %.0f s" % HANDOVER_TIMEOUT_S)
            r, _, _ = select.select([ctrl, lst], [], [], left)
            if ctrl in r:
                line = _readline(ctrl)
                try:
                    rep = json.loads(line)
                except ValueError:
                    rep = {}
                err = rep.get("error") or {"field": "takeover",
                                           "message": "the running lbd closed the connection"}
                raise LBError(err.get("field", "takeover"),
                              "refused by the running lbd: %s" % err.get("message"))
            if lst in r:
                break
        conn, _ = lst.accept()
        _, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  _UCRED.size))
        if uid != 0:
            conn.close()
            raise LBError("takeover", "a process of uid %d connected, not root" % uid)
        conn.settimeout(HANDOVER_TIMEOUT_S)
        msg, fds, _flags, _addr = socket.recv_fds(conn, 65536, MAX_FDS)
        try:
            meta = json.loads(msg)
            if meta.get("version") != VERSION or meta.get("fds") != len(fds):
                raise LBError("takeover", "protocol error: %r with %d fds" % (meta, len(fds)))
            snap = pickle.loads(_recv_blob(conn))
        except Exception:
            for fd in fds:
                os.close(fd)
            conn.close()
            raise
        return Taken(fds, snap, conn, ctrl, bool(meta.get("metrics")))
    except BaseException:
        ctrl.close()
        raise
    finally:
        lst.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
