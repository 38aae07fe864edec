"""splice's probe before a redirect (Stingray's layer-7 DSR: probe, verify, redirect).

A redirect rule's ProbeSpec says how to check the backend the scheduler chose before the LB
answers the client with a 302 to it: method (HEAD for HTTP, DESCRIBE for RTSP by default),
path (the request's own, or a fixed one), the statuses that count as correct, a timeout, how
many backends to try in turn, and an optional per-backend cache of results.

Probes leave from the LB's own kernel side, as lb/health.py's checks of non-VIP-path modes
do: a plain TCP socket of lbd's network namespace to the backend's real address, routed by
the main table (in the lab: out of mg0, 198.19.0.3), never the userspace data plane.

Why non-blocking sockets polled by the punt handler, and not asyncio tasks on lbd's main
loop: the handler runs in its worker's data-plane thread and holds the client connection
whose answer depends on the probe; owning the probe's socket there keeps the request, the
probe and the answer on one thread (no hand-off, no lock, no result queue to drain, nothing
to go wrong when the main loop is busy with the control socket or health checks), and the
worker wakes for it within WAKE_MS (SpliceManager.wake_ms) instead of the 100 ms tick. Every
socket call here is non-blocking (connect -> EINPROGRESS; send and recv on readiness only);
one poll() with timeout 0 over all probes in flight costs one system call per wake.

Invariants:
- Nothing here blocks: every socket is non-blocking and poll() is called with timeout 0.
- A Probe ends exactly once, in OK or FAILED with a reason, at the latest at its deadline
  (Prober.poll(now) ends the late ones: "timeout"); its socket is closed when it ends.
- Only the status line of the answer is read (at most STATUS_LIMIT bytes): the probe is
  lightweight; an answer that is not "HTTP/1.x NNN" or "RTSP/1.0 NNN" is a failure.
- Nothing raises on input from the network; ProbeSpec's checks (parse_probe) raise LBError
  naming the field, control side only.
"""
import errno
import select
import socket
import threading
from dataclasses import dataclass

from ..base import LBError
from .http import _TCHAR, _VCHAR, _bad

STATUS_LIMIT = 512              # bytes of the answer looked at for its status line
WAKE_MS = 2                     # how soon the worker polls again while probes are in flight
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 0.05, 30.0
MAX_TRIES = 16
MAX_CACHE_S = 3600.0
PROBE_KEYS = ("method", "path", "expect", "timeout", "tries", "cache")
RTSP_METHODS = ("OPTIONS", "DESCRIBE")


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    method: str = "HEAD"        # HTTP: a method token (HEAD, GET, OPTIONS); RTSP: OPTIONS | DESCRIBE
    path: str = ""              # "" = the request's own path and query; else a fixed /path
    expect: str = "2xx,3xx"     # statuses that count as correct: NNN, Nxx or NNN-NNN, by commas
    timeout: float = 1.0        # seconds per probe
    tries: int = 3              # backends tried in turn before the client gets a 503
    cache: float = 0.0          # seconds a result is reused for the same backend and path (0: off)

    def ok(self, status):
        return status_ok(self.expect, status)


def default_probe(kind):
    """The probe a redirect rule of this kind gets when it says only `probe = true`."""
    if kind == "rtsp":
        return ProbeSpec(method="DESCRIBE", expect="2xx")
    return ProbeSpec()


def parse_expect(text, fld="expect"):
    """[(lo, hi)] of "2xx,3xx" / "200" / "200-204"; LBError(fld)."""
    if not isinstance(text, str) or not text.strip():
        raise LBError(fld, "must be statuses like \"2xx,3xx\" or \"200,301-302\", got %r"
                      % (text,))
    out = []
    for item in text.split(","):
        it = item.strip().lower()
        lo = hi = None
        if len(it) == 3 and it[0] in "12345" and it[1:] == "xx":
            lo, hi = int(it[0]) * 100, int(it[0]) * 100 + 99
        elif "-" in it:
            a, _, b = it.partition("-")
            if _is_status(a) and _is_status(b) and int(a) <= int(b):
                lo, hi = int(a), int(b)
        elif _is_status(it):
            lo = hi = int(it)
        if lo is None:
            raise LBError(fld, "%r is not a status, a class like 2xx or a range like 200-299"
                          % (item.strip(),))
        out.append((lo, hi))
    return out


def _is_status(s):
    return len(s) == 3 and s.isascii() and s.isdigit() and 100 <= int(s) <= 599


def canonical_expect(text, fld="expect"):
    return ",".join("%dxx" % (lo // 100) if hi - lo == 99 and lo % 100 == 0
                    else ("%d" % lo if lo == hi else "%d-%d" % (lo, hi))
                    for lo, hi in parse_expect(text, fld))


def status_ok(expect, status):
    return any(lo <= status <= hi for lo, hi in parse_expect(expect))


def parse_probe(raw, kind, fld="probe"):
    """A rule's `probe` value -> ProbeSpec | None. true: the kind's defaults; false: no probe
    (the redirect answers at once, as before probes existed); a table: the defaults with the
    keys it gives (PROBE_KEYS). LBError naming fld.key."""
    if raw is True:
        return default_probe(kind)
    if raw is False or raw is None:
        return None
    if isinstance(raw, ProbeSpec):
        raw = probe_as_dict(raw)
    if not isinstance(raw, dict):
        raise LBError(fld, "must be true, false or a table (%s), got %r"
                      % (", ".join(PROBE_KEYS), raw))
    for k in raw:
        if k not in PROBE_KEYS:
            raise LBError("%s.%s" % (fld, k), "unknown key (known: %s)" % ", ".join(PROBE_KEYS))
    d = default_probe(kind)
    method = raw.get("method", d.method)
    if kind == "rtsp":
        if method not in RTSP_METHODS:
            raise LBError(fld + ".method", "an RTSP probe is OPTIONS or DESCRIBE, got %r"
                          % (method,))
    elif (not isinstance(method, str) or not method or not method.isascii()
          or _bad(method.encode(), _TCHAR) or len(method) > 32):
        raise LBError(fld + ".method", "must be an HTTP method like HEAD or GET, got %r"
                      % (method,))
    path = raw.get("path", d.path)
    if not isinstance(path, str) or (path and (not path.isascii() or not path.startswith("/")
                                               or _bad(path.encode(), _VCHAR))):
        raise LBError(fld + ".path", "must be \"\" (the request's own path) or a path like "
                      "/ in visible ASCII, got %r" % (path,))
    expect = canonical_expect(raw.get("expect", d.expect), fld + ".expect")
    timeout = raw.get("timeout", d.timeout)
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not MIN_TIMEOUT_S <= timeout <= MAX_TIMEOUT_S):
        raise LBError(fld + ".timeout", "must be a number of seconds %g..%g, got %r"
                      % (MIN_TIMEOUT_S, MAX_TIMEOUT_S, timeout))
    tries = raw.get("tries", d.tries)
    if isinstance(tries, bool) or not isinstance(tries, int) or not 1 <= tries <= MAX_TRIES:
        raise LBError(fld + ".tries", "must be a number of backends 1..%d, got %r"
                      % (MAX_TRIES, tries))
    cache = raw.get("cache", d.cache)
    if (isinstance(cache, bool) or not isinstance(cache, (int, float))
            or not 0 <= cache <= MAX_CACHE_S):
        raise LBError(fld + ".cache", "must be seconds 0..%g (0: no cache), got %r"
                      % (MAX_CACHE_S, cache))
    return ProbeSpec(method, path, expect, float(timeout), tries, float(cache))


def probe_as_dict(p):
    """The TOML/JSON form; parse_probe(probe_as_dict(p), kind) == p."""
    return {"method": p.method, "path": p.path, "expect": p.expect, "timeout": p.timeout,
            "tries": p.tries, "cache": p.cache}


def format_probe(p):
    """`probe HEAD <request path> 2xx,3xx 1s x3` for lbctl's rule list."""
    s = "probe %s %s %s %gs x%d" % (p.method, p.path or "<request path>", p.expect,
                                     p.timeout, p.tries)
    return s + (" cache %gs" % p.cache if p.cache else "")


# --- the requests a probe sends --------------------------------------------------------------

def http_probe_request(method, host, path):
    """`HEAD /path HTTP/1.1` with Host (the backend, as the client will name it after the
    302) and Connection: close; path and host are validated parts (see redirect._safe)."""
    return ("%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: threeway-probe\r\nAccept: */*\r\n"
            "Connection: close\r\n\r\n" % (method, path, host)).encode("ascii")


def rtsp_probe_request(method, url):
    """`DESCRIBE rtsp://node/path RTSP/1.0` (or OPTIONS) with CSeq 1."""
    extra = "Accept: application/sdp\r\n" if method == "DESCRIBE" else ""
    return ("%s %s RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: threeway-probe\r\n%s\r\n"
            % (method, url, extra)).encode("ascii")


def parse_status(data):
    """(status, headers_text) of "HTTP/1.x NNN ..." or "RTSP/1.0 NNN ..." at the start of
    data, None when the line is not complete yet, or an error string."""
    eol = data.find(b"\n")
    if eol < 0:
        return "no status line" if len(data) >= STATUS_LIMIT else None
    parts = data[:eol].rstrip(b"\r").split(b" ", 2)
    if (len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0", b"RTSP/1.0")
            or len(parts[1]) != 3 or not parts[1].isdigit()):
        return "not a status line: %r" % (data[:min(eol, 60)],)
    return int(parts[1]), data[eol + 1:]


# --- the state machine, one per probe ---------------------------------------------------------

CONNECTING, SENDING, READING, OK, FAILED = "connecting", "sending", "reading", "ok", "failed"


class Probe:
    """One probe of one backend: CONNECTING -> SENDING -> READING -> OK | FAILED.

    The transitions are the events the socket gives (connected, wrote n bytes, read bytes,
    error, deadline), so the machine is driven the same way by Prober and by a test. status
    and detail say how it ended ("HTTP 200", "HTTP 503 not in 2xx,3xx", "connect refused",
    "timeout")."""
    __slots__ = ("addr", "request", "spec", "deadline", "state", "sent", "got", "status",
                 "detail", "public", "sock", "started", "ended")

    def __init__(self, addr, request, spec, now):
        self.addr = addr                # (ip text, port)
        self.request = request          # bytes to send
        self.spec = spec                # ProbeSpec
        self.started = now
        self.deadline = now + int(spec.timeout * 1000)
        self.state = CONNECTING
        self.sent = 0
        self.got = b""
        self.status = None
        self.detail = ""
        self.public = None              # an RTSP answer's Public header (the node's methods)
        self.sock = None
        self.ended = None               # ms it ended (set by expire/poll's clock)

    @property
    def done(self):
        return self.state in (OK, FAILED)

    def connected(self):
        if self.state == CONNECTING:
            self.state = SENDING

    def wrote(self, n):
        if self.state == SENDING:
            self.sent += n
            if self.sent >= len(self.request):
                self.state = READING

    def read(self, data):
        """Bytes of the answer; b"" = the peer closed."""
        if self.state != READING:
            return
        if not data:
            self._end(FAILED, "closed before a status line" if not self.got else
                      "closed inside the status line")
            return
        self.got += data[:STATUS_LIMIT - len(self.got)]
        r = parse_status(self.got)
        if r is None:
            return
        if isinstance(r, str):
            self._end(FAILED, r)
            return
        self.status, rest = r
        proto = "RTSP" if self.got.startswith(b"RTSP/") else "HTTP"
        if self.spec.ok(self.status):
            self.public = _header(rest, b"public")
            self._end(OK, "%s %d" % (proto, self.status))
        else:
            self._end(FAILED, "%s %d not in %s" % (proto, self.status, self.spec.expect))

    def error(self, text):
        if not self.done:
            self._end(FAILED, text)

    def expire(self, now):
        if not self.done and now >= self.deadline:
            self._end(FAILED, "timeout after %g s (%s)" % (self.spec.timeout, self.state))
        if self.done and self.ended is None:
            self.ended = now

    def _end(self, state, detail):
        self.state = state
        self.detail = detail


def _header(head, name):
    """The value of one header in the bytes after a status line, if they hold it."""
    for line in head.split(b"\n"):
        k, colon, v = line.partition(b":")
        if colon and k.strip().lower() == name:
            return v.strip().decode("latin-1")
    return None


def _oserror(e, during):
    names = {errno.ECONNREFUSED: "refused", errno.ETIMEDOUT: "timed out",
             errno.EHOSTUNREACH: "host unreachable", errno.ENETUNREACH: "network unreachable",
             errno.ECONNRESET: "reset"}
    return "%s %s" % (during, names.get(e, errno.errorcode.get(e, str(e)).lower()))


class Prober:
    """The probes in flight of one punt handler, on non-blocking kernel sockets.

    start(token, addr, request, spec, now) opens one; poll(now) moves every one as far as
    its socket allows without waiting and returns [(token, Probe)] of those that ended (a
    Probe ends once). The caller matches tokens to its connections."""

    def __init__(self):
        self.poller = select.poll()
        self.by_fd = {}                 # fd -> (token, Probe)
        self.ended = []                 # ended before poll (e.g. connect failed at once)

    def __len__(self):
        return len(self.by_fd) + len(self.ended)

    def next_deadline(self):
        return min((p.deadline for _, p in self.by_fd.values()), default=None)

    def start(self, token, addr, request, spec, now):
        p = Probe(addr, request, spec, now)
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as e:
            p.error(_oserror(e.errno, "socket"))
            self.ended.append((token, p))
            return p
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        p.sock = s
        e = s.connect_ex(addr)
        if e not in (0, errno.EINPROGRESS):
            p.error(_oserror(e, "connect"))
            s.close()
            self.ended.append((token, p))
            return p
        if e == 0:
            p.connected()
        self.by_fd[s.fileno()] = (token, p)
        self.poller.register(s, select.POLLOUT | select.POLLIN)
        return p

    def poll(self, now):
        out, self.ended = self.ended, []
        for _, p in out:
            p.expire(now)
        if not self.by_fd:
            return out
        for fd, ev in self.poller.poll(0):
            ent = self.by_fd.get(fd)
            if ent is not None:
                self._step(ent[1], ev)
        for fd, (token, p) in list(self.by_fd.items()):
            p.expire(now)
            if p.done:
                self.poller.unregister(fd)
                del self.by_fd[fd]
                p.sock.close()
                p.sock = None
                out.append((token, p))
        return out

    def _step(self, p, ev):
        s = p.sock
        if p.state == CONNECTING:
            e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if e:
                p.error(_oserror(e, "connect"))
                return
            if not ev & (select.POLLOUT | select.POLLIN):
                if ev & (select.POLLERR | select.POLLHUP):
                    p.error("connect failed")
                return
            p.connected()
        if p.state == SENDING:
            try:
                p.wrote(s.send(p.request[p.sent:]))
            except BlockingIOError:
                return
            except OSError as e:
                p.error(_oserror(e.errno, "send"))
                return
            if p.state == READING:
                self.poller.modify(s, select.POLLIN)
        if p.state == READING and ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
            try:
                p.read(s.recv(STATUS_LIMIT))
            except BlockingIOError:
                return
            except OSError as e:
                p.error(_oserror(e.errno, "recv"))

    def close(self):
        for fd, (_, p) in self.by_fd.items():
            p.sock.close()
        self.by_fd.clear()


class ProbeBoard:
    """The last probe result per (VIP, backend), written by every worker's punt handler and
    read by the control side for `lbctl vip list` (Splice.view). A lock guards the dict: the
    writers are data-plane threads, the reader the main thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_vip = {}               # (vip ip, port) -> {"ip:port": result dict}

    def record(self, vip, vport, backend, probe, wall):
        with self._lock:
            per = self._by_vip.setdefault((vip, vport), {})
            r = per.get(backend)
            if r is None:
                r = per[backend] = {"backend": backend, "ok": 0, "failed": 0}
            r["ok" if probe.state == OK else "failed"] += 1
            r.update(last="ok" if probe.state == OK else "failed", detail=probe.detail,
                     at=round(wall, 3), ms=max(0, probe_ms(probe)))

    def view(self, vip, vport, keep=None):
        """[result dict] of this VIP, sorted by backend; keep: the backends still in it."""
        with self._lock:
            per = self._by_vip.get((vip, vport), {})
            if keep is not None:
                for k in [k for k in per if k not in keep]:
                    del per[k]
            return [dict(per[k]) for k in sorted(per)]


def probe_ms(probe):
    return probe.ended - probe.started if probe.ended is not None else 0
