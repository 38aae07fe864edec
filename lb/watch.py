"""Live frames of lbd: `lbctl trace --follow FILTER` and `lbctl capture`, over the engines'
watch hook (fastpath/watch.pxi) and the control socket's streaming form (lb/control.py).

Filter grammar (one small language for --follow, and what --client/--vip turn into):

    FILTER := TERM ("and" TERM)*          every term must hold (there is no "or")
    TERM   := [src|dst] host IPv4         an address (src/dst: on that side only)
            | [src|dst] port N            a TCP/UDP port, 0..65535
            | tcp | udp | icmp            the IP protocol
    e.g.  host 198.18.0.10 and port 80    src host 198.18.0.10 and dst port 8080

A frame matches when every term holds for it as lbd received it, or as lbd sent it (so
`host VIP` catches nat's replies too, whose source becomes the VIP), or for the client's
frame inside a tunnel's VXLAN. An empty filter matches every frame. At most
defs.WATCH_MAX_TERMS terms. Words are case-insensitive.

Invariants:
- One watch at a time per lbd (the engines have one filter): a second watch is refused with
  an error naming "watch", and the first goes on. A watch ends when its count or seconds are
  reached or its client goes away; the engines are then set back to no watch.
- The engines are drained in the main thread, every DRAIN_MS, each under its lock (between
  bursts); a record the ring had no room for is counted (lost) and reported, never waited for.
- Records are turned into events here, in the main thread; the fast path only copies bytes.
- Frames Python makes and sends itself (a mode's punt answers, e.g. splice's SYN to the
  backend after a decision in Python; ARP) reach note_sent, from whatever thread sent them:
  matched here with the same terms, kept in a bounded deque (appends are atomic), shown as
  "made by lbd". With no watch, note_sent returns at once.
"""
import collections
import ipaddress
import time

from fastpath import defs

from . import config
from .config import format_endpoint, format_ip
from .errors import LBError

DRAIN_MS = 100
FOLLOW_SNAP = 128
CAPTURE_SNAP = 2048
RING = 4096
MAX_SECONDS = 86400
MAX_COUNT = 10_000_000

PROTO_WORDS = {"tcp": defs.PROTO_TCP, "udp": defs.PROTO_UDP, "icmp": defs.PROTO_ICMP}
PROTO_NAMES = {v: k for k, v in PROTO_WORDS.items()}
MODE_NAMES = {code: name for name, code in defs.MODES.items()}
VERDICT_NAMES = {defs.V_TX: "tx", defs.V_DROP: "drop", defs.V_PUNT: "punt"}
_KIND = {("", "host"): defs.W_HOST, ("src", "host"): defs.W_SRC, ("dst", "host"): defs.W_DST,
         ("", "port"): defs.W_PORT, ("src", "port"): defs.W_SPORT, ("dst", "port"): defs.W_DPORT}
_KIND_TEXT = {v: ("%s %s" % k).strip() for k, v in _KIND.items()}
TCP_FLAG_LETTERS = ((0x01, "F"), (0x02, "S"), (0x04, "R"), (0x08, "P"), (0x10, "."),
                    (0x20, "U"), (0x40, "E"), (0x80, "C"))


# ---- the filter -----------------------------------------------------------------------------
def parse_filter(words, field="filter"):
    """FILTER (a string or a list of words) -> [(defs.W_* kind, value)]; LBError(field, ...)
    saying which word is wrong and what was expected."""
    if isinstance(words, str):
        words = words.split()
    if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
        raise LBError(field, "must be a string or a list of words")
    words = [w.lower() for w in words]
    terms = []
    i = 0

    def where(k):
        return "word %d" % (k + 1) if k < len(words) else "the end"

    while i < len(words):
        if terms:
            if words[i] != "and":
                raise LBError(field, "%s %r: expected 'and' between terms" % (where(i), words[i]))
            i += 1
            if i == len(words):
                raise LBError(field, "a term must follow 'and' at the end")
        w = words[i]
        if w in PROTO_WORDS:
            terms.append((defs.W_PROTO, PROTO_WORDS[w]))
            i += 1
            continue
        side = ""
        if w in ("src", "dst"):
            side, i = w, i + 1
            if i == len(words):
                raise LBError(field, "%r at the end: expected host or port after it" % w)
            w = words[i]
        if w not in ("host", "port"):
            raise LBError(field, "%s %r: expected host, port, src, dst, tcp, udp or icmp"
                          % (where(i), w))
        if i + 1 == len(words):
            raise LBError(field, "%r at the end: expected %s after it"
                          % (w, "an IPv4 address" if w == "host" else "a port 0..65535"))
        value = words[i + 1]
        if w == "host":
            try:
                v = int(ipaddress.IPv4Address(value))
            except ValueError:
                raise LBError(field, "%s %r: not an IPv4 address" % (where(i + 1), value)) \
                    from None
        else:
            if not value.isdigit() or int(value) > 0xFFFF:
                raise LBError(field, "%s %r: not a port 0..65535" % (where(i + 1), value))
            v = int(value)
        terms.append((_KIND[(side, w)], v))
        i += 2
    if len(terms) > defs.WATCH_MAX_TERMS:
        raise LBError(field, "at most %d terms, got %d" % (defs.WATCH_MAX_TERMS, len(terms)))
    return terms


def endpoint_terms(client=None, vip=None):
    """The terms of --client IP[:PORT] and --vip IP:PORT (either may be None)."""
    terms = []
    if client is not None:
        ip, port = config.parse_backend(client, "client")
        terms.append((defs.W_HOST, ip))
        if port is not None:
            terms.append((defs.W_PORT, port))
    if vip is not None:
        ip, port = config.parse_endpoint(vip, "vip")
        terms += [(defs.W_HOST, ip), (defs.W_PORT, port)]
    return terms


def format_filter(terms):
    """The filter's text in the grammar above ("" for every frame)."""
    out = []
    for kind, value in terms:
        if kind == defs.W_PROTO:
            out.append(PROTO_NAMES.get(value, "proto %d" % value))
        elif kind in (defs.W_HOST, defs.W_SRC, defs.W_DST):
            out.append("%s %s" % (_KIND_TEXT[kind], format_ip(value)))
        else:
            out.append("%s %d" % (_KIND_TEXT[kind], value))
    return " and ".join(out)


# ---- records -> events ----------------------------------------------------------------------
def tcp_flags_text(flags):
    """tcpdump's letters: S F R P . (ACK) U E C; "" for none."""
    return "".join(c for bit, c in TCP_FLAG_LETTERS if flags & bit)


def frame_summary(f):
    """{src, dst, proto, sport, dport, flags} of an Ethernet frame's IPv4 header (what there
    is of it), or {"ether": type} for anything else."""
    if len(f) < 14:
        return {"ether": None}
    et = int.from_bytes(f[12:14], "big")
    if et != 0x0800 or len(f) < 34:
        return {"ether": "0x%04x" % et}
    ihl = (f[14] & 15) * 4
    proto = f[23]
    out = {"src": format_ip(int.from_bytes(f[26:30], "big")),
           "dst": format_ip(int.from_bytes(f[30:34], "big")),
           "proto": PROTO_NAMES.get(proto, str(proto))}
    l4 = 14 + ihl
    later = int.from_bytes(f[20:22], "big") & 0x1FFF
    if proto in (defs.PROTO_TCP, defs.PROTO_UDP) and not later and len(f) >= l4 + 4:
        out["sport"] = int.from_bytes(f[l4:l4 + 2], "big")
        out["dport"] = int.from_bytes(f[l4 + 2:l4 + 4], "big")
        if proto == defs.PROTO_TCP and len(f) >= l4 + 14:
            out["flags"] = tcp_flags_text(f[l4 + 13])
    return out


def frame_matches(terms, f):
    """The fast path's watch_match in Python, for frames Python sent: every term holds for
    the frame, or for the frame inside its VXLAN."""
    for _depth in range(2):
        s = frame_summary(f)
        if "src" not in s:
            return False
        src, dst = ip_of(s["src"]), ip_of(s["dst"])
        proto = PROTO_WORDS.get(s["proto"], None)
        sport, dport = s.get("sport"), s.get("dport")
        ok = True
        for kind, val in terms:
            if kind == defs.W_HOST:
                ok = val in (src, dst)
            elif kind == defs.W_PORT:
                ok = val in (sport, dport)
            elif kind == defs.W_PROTO:
                ok = proto == val or (proto is None and s["proto"] == str(val))
            elif kind == defs.W_SRC:
                ok = src == val
            elif kind == defs.W_DST:
                ok = dst == val
            elif kind == defs.W_SPORT:
                ok = sport == val
            else:
                ok = dport == val
            if not ok:
                break
        if ok:
            return True
        if not (s["proto"] == "udp" and dport == defs.VXLAN_PORT):
            return False
        f = f[14 + (f[14] & 15) * 4 + 16:]
    return False


def ip_of(text):
    return int(ipaddress.IPv4Address(text))


def made_event(ts_ns, frame, length, worker, with_bytes=False):
    """A frame Python made and sent (note_sent; frame: its first snap bytes) as an event."""
    ev = {"ts": ts_ns / 1e9, "made": True, "out": dict(frame_summary(frame), len=length),
          "verdict": "made", "reason": "sent by lbd", "counters": {}}
    if worker is not None:
        ev["worker"] = worker
    if with_bytes:
        ev["in_bytes"] = ""
        ev["out_bytes"] = bytes(frame).hex()
    return ev


def record_event(rec, worker, backend_name, with_bytes=False):
    """One engine record (Engine.watch_drain) as the event streamed to lbctl. backend_name:
    real idx -> "ip:port" (or None)."""
    ts_ns, verdict, reason, in_len, in_b, out_len, out_b, ctrs, flow = rec
    ev = {"ts": ts_ns / 1e9, "in": dict(frame_summary(in_b), len=in_len),
          "verdict": VERDICT_NAMES.get(verdict, str(verdict)),
          "reason": defs.COUNTERS[reason], "counters": dict(ctrs)}
    if worker is not None:
        ev["worker"] = worker
    if out_len:
        ev["out"] = dict(frame_summary(out_b), len=out_len)
    if flow is not None:
        cip, cport, vip, vport, proto, rip, rport, real, mode, state, fwd = flow
        ev["flow"] = {"client": format_endpoint(cip, cport), "vip": format_endpoint(vip, vport),
                      "backend": (backend_name(real) or format_endpoint(rip, rport))
                      if real >= 0 else None,
                      "mode": MODE_NAMES.get(mode, str(mode)),
                      "state": defs.STATE_NAMES[state] if state < len(defs.STATE_NAMES)
                      else str(state)}
        ev["dir"] = "client->backend" if fwd else "backend->client"
    if with_bytes:
        ev["in_bytes"] = bytes(in_b).hex()
        ev["out_bytes"] = bytes(out_b).hex() if out_len else ""
    return ev


# ---- one watch ------------------------------------------------------------------------------
class WatchHub:
    """The one watch of an lbd: open() starts it on every engine (driver.engine: an Engine or
    lb/workers.py's EngineGroup), Session.poll() drains it, Session.close() ends it."""

    def __init__(self, engine, backend_names, clock=time.monotonic):
        self.engine = engine
        self.backend_names = backend_names     # () -> {real idx: "ip:port"}
        self.clock = clock
        self.current = None
        self.refused = 0
        self.made = collections.deque(maxlen=RING)   # (ts_ns, frame, len, worker): note_sent
        self.made_lost = 0

    def open(self, args):
        """A Session for args {filter?: str|[words], client?, vip?, count?, seconds?,
        bytes?: bool (capture), snap?}; LBError naming the bad argument, or "watch" when one
        is running already."""
        known = ("filter", "client", "vip", "count", "seconds", "bytes", "snap")
        for k in args:
            if k not in known:
                raise LBError(k, "unknown argument (watch takes: %s)" % ", ".join(known))
        terms = []
        if args.get("filter") not in (None, "", []):
            terms = parse_filter(args["filter"])
        terms += endpoint_terms(args.get("client"), args.get("vip"))
        if len(terms) > defs.WATCH_MAX_TERMS:
            raise LBError("filter", "at most %d terms, got %d"
                          % (defs.WATCH_MAX_TERMS, len(terms)))
        count = args.get("count")
        if count is not None:
            count = config.parse_int(count, "count", 1, MAX_COUNT)
        seconds = args.get("seconds")
        if seconds is not None:
            seconds = parse_seconds(seconds)
        with_bytes = args.get("bytes", False)
        if not isinstance(with_bytes, bool):
            raise LBError("bytes", "must be true or false, got %r" % (with_bytes,))
        snap = config.parse_int(args.get("snap", CAPTURE_SNAP if with_bytes else FOLLOW_SNAP),
                                "snap", defs.WATCH_SNAP_MIN, defs.WATCH_SNAP_MAX)
        if self.current is not None:
            self.refused += 1
            raise LBError("watch", "a watch is running already (%s); one at a time"
                          % (format_filter(self.current.terms) or "every frame"))
        self.made.clear()
        self.made_lost = 0
        # the session first: frames Python sends meanwhile are matched against it
        self.current = Session(self, terms, count, seconds, with_bytes, snap)
        try:
            self.engine.watch_set(terms, snap, RING)
        except BaseException:
            self.current = None
            self.engine.watch_set(None)
            raise
        return self.current

    def view(self):
        """What `status` shows: {on, filter, frames, lost, refused}."""
        cur = self.current
        return {"on": cur is not None,
                "filter": (format_filter(cur.terms) or "every frame") if cur else None,
                "frames": cur.sent if cur else 0, "lost": cur.lost if cur else 0,
                "refused": self.refused}

    def note_sent(self, frames, worker):
        """Frames Python sent (any thread): kept when a watch is on and they match."""
        cur = self.current
        if cur is None:
            return
        now = time.time_ns()
        for f in frames:
            f = bytes(f)
            if frame_matches(cur.terms, f):
                if len(self.made) == self.made.maxlen:
                    self.made_lost += 1
                self.made.append((now, f[:cur.snap], len(f), worker))

    def made_drain(self):
        out = []
        while self.made:
            out.append(self.made.popleft())
        return out

    def engine_drain(self):
        """[(worker or None, record)] from every engine, oldest first per engine."""
        drain = getattr(self.engine, "watch_drain_workers", None)
        if drain is not None:
            return drain()
        return [(None, r) for r in self.engine.watch_drain()]

    def engine_lost(self):
        return self.engine.watch_status()["lost"]

    def _closed(self, session):
        if self.current is session:
            self.current = None
            self.engine.watch_set(None)


def parse_seconds(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= MAX_SECONDS:
        raise LBError("seconds", "must be a number of seconds in (0, %d], got %r"
                      % (MAX_SECONDS, v))
    return float(v)


class Session:
    """One running watch (WatchHub.open): poll() -> (events, final or None)."""

    def __init__(self, hub, terms, count, seconds, with_bytes, snap):
        self.hub = hub
        self.terms = terms
        self.snap = snap
        self.count = count
        self.with_bytes = with_bytes
        self.started = hub.clock()
        self.deadline = None if seconds is None else self.started + seconds
        self.sent = 0
        self.lost = 0
        self.interval = DRAIN_MS / 1000.0
        self.closed = False

    def header(self):
        return {"watch": format_filter(self.terms) or "every frame", "count": self.count,
                "seconds": None if self.deadline is None else self.deadline - self.started}

    def poll(self):
        """The events recorded since the last poll (at most what count still allows), and the
        final line once the watch is over (count reached, seconds passed), else None."""
        events = []
        recs = [(rec[0], worker, rec, None) for worker, rec in self.hub.engine_drain()]
        recs += [(m[0], m[3], None, m) for m in self.hub.made_drain()]
        recs.sort(key=lambda r: r[0])                   # workers and Python's, by time
        names = self.hub.backend_names() if recs else {}
        for ts, worker, rec, made in recs:
            if self.count is not None and self.sent >= self.count:
                break
            if rec is not None:
                events.append(record_event(rec, worker, names.get, self.with_bytes))
            else:
                events.append(made_event(ts, made[1], made[2], worker, self.with_bytes))
            self.sent += 1
        self.lost = self.hub.engine_lost() + self.hub.made_lost
        over = ((self.count is not None and self.sent >= self.count)
                or (self.deadline is not None and self.hub.clock() >= self.deadline))
        return events, (self.final() if over else None)

    def final(self):
        return {"done": True, "frames": self.sent, "lost": self.lost,
                "seconds": round(self.hub.clock() - self.started, 3)}

    def close(self):
        if not self.closed:
            self.closed = True
            self.hub._closed(self)
