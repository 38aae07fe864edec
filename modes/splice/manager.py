"""splice's punt handler: the connections being set up (F5's FastHTTP, done in the open).

Used when the backend must be chosen by content (HTTP method/path/Host, TLS SNI, a byte
prefix) while the backend still sees the client's own address, and when SYN floods must
not cost state. The life of a connection:

  client SYN        -> fast path: cookie SYN-ACK, no state (fastpath/defs.py: the cookie)
  client ACK        -> fast path: cookie valid -> flow SPL_WAIT, nothing handed up; a client
                       silent for SPLICE_WAIT_HANDOFF_MS comes here by engine.splice_waiting()
  request bytes     -> here: reassembled in sequence order, never acknowledged by us (the
                       client keeps them until the real server ACKs them), decided by the
                       VIP's rules (modes/splice/rules.py) once enough is there, at the size limit
                       or at the timeout
  decision forward  -> engine.splice_bind(real, request) makes our SYN to the backend as the
                       client (client address, port, ISN and SYN options as the cookie kept
                       them); we send it
  backend SYN-ACK   -> fast path records the deltas and answers it itself: ACK + the request
                       (one segment); a longer request is punted here and replayed by us. From
                       now on the fast path translates both ways
  decision redirect -> layer-7 DSR (large objects go direct): the rule's probe (probe.py)
                       checks the backend the persistence hash chose (vip.py candidates),
                       from the LB's own kernel side, while the client's request stays
                       unacknowledged; passed -> we answer the HTTP request ourselves with a
                       302 to that backend (its name or address), then FIN; failed -> the
                       next candidate, at most probe.tries, then a 503. Never a 302 to a
                       backend whose probe failed
  rtsp redirect     -> we answer the session's requests ourselves (OPTIONS: 200 with the
                       nodes' methods; others before DESCRIBE as redirect.rtsp_answer says)
                       and the DESCRIBE, after the probe, with a 302 to rtsp://node/path
  refused           -> RST to the client (counted)

Losses are covered without timers of our own where TCP already has them: a lost replay is
resent by the client itself (we never acknowledged its bytes); a lost ACK of the backend's
SYN-ACK makes the backend resend it, which the fast path (or, for a long request, we) answer
again. A lost SYN to the backend is resent here after 1 s; a backend still silent 2 s later
gets the client a RST (backend_timeout). A flow the fast path bound itself is adopted here
(_adopt) when its backend has not answered after SPLICE_WAIT_HANDOFF_MS, or when a frame of
it comes up anyway.

hop's handler (modes/hop/manager.py) is this class for hop flows: its methods
_backend_side, _backend_mac and _replay_opts are where the two differ.

Python runs here once per new connection (the request's first segment, and one SYN made by
the engine), never per packet of a spliced connection.

A planned restart (lbd --takeover) carries every connection being set up to the next lbd's
manager on the same worker (handover/take: request bytes, decision, backend, SYN timers, a
redirect sent, the retire queue), taken while the workers are stopped, so none is lost.
"""
import collections
import logging
import struct
import time

from fastpath import defs
from fastpath.defs import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN
from fastpath.twin.inet import tcp_frame as _tcp_frame

from . import rules
from .probe import OK, Prober, WAKE_MS, http_probe_request, rtsp_probe_request
from .redirect import (redirect_response, rtsp_answer, rtsp_redirect, rtsp_response,
                       target_host, unavailable_response)
from .rtsp import NEED_MORE as RTSP_NEED_MORE, RtspRequest, parse_rtsp_request

log = logging.getLogger("splice")

M32 = 0xFFFFFFFF
SYN_RETRIES_MS = (1000, 2000)      # resend the SYN to the backend after these waits
TW_RESETS = 3                      # a backend's TIME_WAIT answered with RST + SYN at most so often
ENGINE_DECIDED = "decided by the fast path's rules"   # Conn.decided of an adopted flow
REPLAY_KEEP_MS = 5000              # keep the request to replay on a repeated SYN-ACK
# a decided connection whose backend's MAC is not yet known (a fresh lbd, a backend just
# added) waits this long for ARP (lb/neigh.py asks every RESOLVE_MS) before it is refused
NEIGH_WAIT_MS = 3000
RTSP_MAX_ANSWERS = 16              # requests of one RTSP session we answer before DESCRIBE
PROBE_CACHE_MAX = 4096             # entries of the per-backend probe cache (per handler)


# ---- frames made here (rare: a few per connection) -----------------------------------------
def tcp_frame(dmac, smac, src, dst, sport, dport, seq, ack, flags, win=65535, opts=b"", data=b""):
    """An Ethernet/IPv4/TCP frame with full checksums (TTL 64, DF, IP id 0); addresses are
    host-order ints; opts are padded with zero bytes (end of options) to a multiple of 4. It
    is the fast path's one builder in its Python form (twin/inet.py, of inet.pxi)."""
    return bytes(_tcp_frame(dmac, smac, src, dst, sport, dport, seq, ack, flags, win,
                            opts + b"\0" * (-len(opts) % 4), data))


def parse_tcp(frame):
    """(src, dst, sport, dport, seq, ack, flags, payload) of a punted IPv4/TCP frame, or None
    (the fast path bounds-checked it already; this is a second, cheap look)."""
    if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return None
    ihl = (frame[14] & 15) * 4
    tot = struct.unpack("!H", frame[16:18])[0]
    t = 14 + ihl
    if tot < ihl + 20 or 14 + tot > len(frame):
        return None
    doff = (frame[t + 12] >> 4) * 4
    if doff < 20 or ihl + doff > tot:
        return None
    src, dst = struct.unpack("!II", frame[26:34])
    sport, dport, seq, ack = struct.unpack("!HHII", frame[t:t + 12])
    return src, dst, sport, dport, seq, ack, frame[t + 13], bytes(frame[t + doff:14 + tot])


class Conn:
    """Python-side state of one splice connection until it is spliced (then the fast path
    has it all) or refused."""
    __slots__ = ("key", "c_isn", "segs", "data", "started", "decided", "real", "backend",
                 "syn_at", "syn_tries", "established_at", "redirect", "fin", "tw_resets",
                 "probing", "cands", "target", "rtsp", "sent", "consumed", "last_answer",
                 "answers", "final_ack", "neigh_wait")

    def __init__(self, key, c_isn, now):
        self.key = key                 # (cip, cport, vip, vport)
        self.c_isn = c_isn             # which connection on these ports (ports are reused)
        self.segs = {}                 # offset from client ISN+1 -> bytes (out of order)
        self.data = b""                # in-order request bytes
        self.started = now
        self.decided = None
        self.real = None
        self.backend = None            # (ip, port, mac)
        self.syn_at = 0
        self.syn_tries = 0
        self.tw_resets = 0
        self.established_at = None
        self.redirect = None           # our last answer (302/503) before FIN, to resend
        self.fin = False
        self.probing = None            # token of the probe in flight, while the client waits
        self.cands = []                # redirect: the backends still to try, in order
        self.target = None             # redirect: (scheme, path, query, cseq, spec)
        self.rtsp = False              # an RTSP session we answer ourselves until DESCRIBE
        self.sent = 0                  # bytes we sent the client before the last answer
        self.consumed = 0              # client bytes our answers acknowledge
        self.last_answer = None        # (seq offset, bytes) of the last RTSP answer, to resend
        self.answers = 0               # RTSP requests answered before DESCRIBE
        self.final_ack = None          # the ack our final answer carries (client bytes)
        self.neigh_wait = None         # ms since when it waits for its backend's MAC


class SpliceManager:
    """Handles the frames the fast path punts for splice flows, and its timers.

    ctx is the daemon side (modes/base.py, Mode.punt_handler):
      ctx.vip(vip, port) -> the VIP's SpliceVip (modes/splice/vip.py) or None
      ctx.mac_of(ip) -> bytes | None; ctx.gateway_mac() -> bytes | None
    """
    reasons = (defs.C["punt_splice"],)
    mode = defs.MODE_SPLICE            # whose flows engine.splice_waiting() gives us

    def __init__(self, engine, ctx, local_mac, board=None):
        self.engine = engine
        self.board = board             # probe.ProbeBoard: results for `lbctl vip list`
        self.prober = Prober()
        self.probe_cache = {}          # (ip, port, method, path) -> (until ms, ok, detail)
        self.probe_gen = 0
        self.public = {}               # (vip, port) -> the Public header the nodes answered
        self.ctx = ctx
        self.mac = local_mac
        self.conns = {}                # key -> Conn: all we know of
        self.pending = set()           # keys being set up: the only ones the timer visits
        self.retire = collections.deque()   # (when, key, c_isn) of spliced ones, in time order
        self.by_backend = {}           # (cip, cport, rip, rport) -> key, once bound
        self.now = 0
        self.c = {k: 0 for k in ("conns", "decided_forward", "decided_redirect", "refused",
                                 "decided_at_limit", "decided_at_timeout", "syn_sent",
                                 "syn_retransmitted", "replayed", "replay_repeated",
                                 "backend_timeout", "backend_reset", "client_reset",
                                 "no_backend", "no_neigh", "neigh_wait", "rev_clash",
                                 "bad_frame",
                                 "stray", "silent",
                                 "spliced_inline", "adopted", "late", "time_wait_reset",
                                 # layer-7 DSR (probe, verify, redirect), HTTP and RTSP
                                 "probe_sent", "probe_ok", "probe_failed", "probe_cached",
                                 "probe_next", "redirect_sent", "redirect_unprobed",
                                 "redirect_503", "redirect_resent", "rtsp_options",
                                 "rtsp_answered", "rtsp_describe_redirected",
                                 "rtsp_not_found", "rtsp_bad_request")}

    def counters(self):
        return dict(self.c, open=len(self.conns), setting_up=len(self.pending),
                    probes_in_flight=len(self.prober))

    # ---- planned restart (lbd --takeover): every connection being set up travels --------
    def handover(self):
        """Picklable: every Conn (request bytes, decision, backend, SYN timers, redirect),
        the pending set, the retire queue, the backend index, the counters."""
        conns = {k: {a: getattr(c, a) for a in Conn.__slots__} for k, c in self.conns.items()}
        return {"conns": conns, "pending": set(self.pending), "retire": list(self.retire),
                "by_backend": dict(self.by_backend), "c": dict(self.c), "now": self.now}

    def take(self, d):
        self.conns = {}
        for k, attrs in d["conns"].items():
            c = Conn(k, attrs["c_isn"], attrs["started"])
            for a, v in attrs.items():
                setattr(c, a, v)
            self.conns[k] = c
        self.pending = set(d["pending"])
        self.retire = collections.deque(d["retire"])
        self.by_backend = dict(d["by_backend"])
        for k, v in d["c"].items():
            if k in self.c:
                self.c[k] = v
        self.now = d["now"]

    # ---- frames up from the fast path ------------------------------------------------------
    def handle(self, frame, now, reason=None):
        self.now = now
        p = parse_tcp(frame)
        if p is None:
            self.c["bad_frame"] += 1
            return []
        src, dst, sport, dport, seq, ack, flags, payload = p
        if self.ctx.vip(dst, dport) is not None:
            return self._from_client((src, sport, dst, dport), seq, flags, payload, now)
        return self._from_backend(dst, dport, src, sport, flags, now, ack)

    def _adopt(self, key, fl, at):
        """A flow the fast path decided and bound itself (its rules matched the request's
        first segment there): from now on our timers watch its backend's answer."""
        conn = self.conns[key] = Conn(key, fl["c_isn"], at)
        conn.decided = ENGINE_DECIDED
        conn.real = fl["real"]
        conn.backend = (fl["rip"], fl["rport"], self._backend_mac(key, fl))
        conn.syn_at, conn.syn_tries = at, 1
        self.by_backend[(key[0], key[1], fl["rip"], fl["rport"])] = key
        self.pending.add(key)
        self.c["adopted"] += 1
        return conn

    def _from_client(self, key, seq, flags, payload, now):
        fl = self.engine.splice_flow(*key)
        if fl is None:
            self.c["stray"] += 1
            return []
        conn = self.conns.get(key)
        if conn is not None and conn.c_isn != fl["c_isn"]:
            # an earlier connection on the same ports, kept for replays: it is over
            self._forget(key, drop=False)
            conn = None
        if conn is None and fl["state"] == defs.S_SPL_CONNECTING:
            conn = self._adopt(key, fl, now)    # e.g. the client resends its request
        elif conn is None and fl["state"] != defs.S_SPL_WAIT:
            # bound by the fast path, and spliced since this frame was punted (the backend's
            # SYN-ACK came in the same burst): the fast path has it; the client resends
            self.c["late"] += 1
            return []
        if conn is None:
            conn = self.conns[key] = Conn(key, fl["c_isn"], now)
            self.pending.add(key)
            self.c["conns"] += 1
        if flags & TH_RST:
            self.c["client_reset"] += 1
            self._forget(key)
            return []
        off = (seq - fl["c_isn"] - 1) & M32
        if payload and off < 1 << 20:
            conn.segs.setdefault(off, payload)
            self._reassemble(conn)
        if flags & TH_FIN:
            conn.fin = True
        if conn.redirect is not None:
            return self._redirect_more(conn, fl, flags, payload)
        if conn.probing is not None:
            return []                  # held: the probe decides (the client resends meanwhile)
        if conn.rtsp:
            return self._rtsp_more(conn, fl, now, payload)
        if conn.decided is None:
            return self._decide(conn, fl, now, final=conn.fin)
        return []

    def _reassemble(self, conn):
        while True:
            nxt = len(conn.data)
            # a segment may start before the end of what we have (a retransmission that
            # overlaps): take what is new in it
            hit = [o for o in conn.segs if o <= nxt < o + len(conn.segs[o])]
            if not hit:
                break
            o = hit[0]
            conn.data += conn.segs.pop(o)[nxt - o:]
        for o in [o for o in conn.segs if o + len(conn.segs[o]) <= len(conn.data)]:
            del conn.segs[o]

    def _decide(self, conn, fl, now, final=False):
        vip = self.ctx.vip(conn.key[2], conn.key[3])
        if vip is None:
            return self._refuse(conn, fl, "VIP gone")
        data = conn.data[:vip.limit]
        if len(conn.data) >= vip.limit and not final:
            final = True
            self.c["decided_at_limit"] += 1
        d = vip.ruleset.decide_final(data) if final else vip.ruleset.decide(data)
        if d is rules.NEED_MORE:
            return []
        if isinstance(d, rules.Refuse):
            return self._refuse(conn, fl, d.reason)
        conn.decided = d
        cip, cport, vip_ip, vport = conn.key
        if d.action == "redirect":
            self.c["decided_redirect"] += 1
            if d.reason == "rtsp":
                conn.rtsp = True
                return self._rtsp_more(conn, fl, now, conn.data)
            req = d.http
            return self._start_redirect(conn, fl, vip, d, ("http", req.path, req.query or "", "",
                                                           d.rule.probe if d.rule else None), now)
        choice = vip.choose(d.pool, cip, cport, self.engine)
        if choice is None:
            self.c["no_backend"] += 1
            return self._refuse(conn, fl, "pool %s has no usable backend" % d.pool)
        conn.real, ip, port = choice
        conn.backend = (ip, port, None)
        return self._bind(conn, fl, now)

    def _bind(self, conn, fl, now):
        """Our SYN to the decided backend (conn.real, conn.backend's ip:port), once its MAC is
        known to us and to the engine: until then, within NEIGH_WAIT_MS, the connection waits
        (the tick tries again; the client's resends are held), then it is refused."""
        cip, cport, vip_ip, vport = conn.key
        real, (ip, port, _) = conn.real, conn.backend
        mac = self.ctx.mac_of(ip)
        syn = None
        if mac is not None:
            # the engine makes the SYN and keeps a one-segment request: it answers the
            # backend's SYN-ACK itself (ACK + the request), so we only see that SYN-ACK for
            # longer requests. None: the flow is gone, or the engine has no MAC yet
            syn = self.engine.splice_bind(cip, cport, vip_ip, vport, real, now, conn.data,
                                          conn.fin)
        if syn is False:
            # the same client port to another VIP on this backend, live: the backend could
            # not take our SYN (its 4-tuple is that connection's), and that one stays
            self.c["rev_clash"] += 1
            return self._refuse(conn, fl, "backend %s:%d has a live connection from this "
                                "client port (another VIP's)" % (_ipstr(ip), port))
        if syn is None:
            if self.engine.splice_flow(*conn.key) is None:
                return self._refuse(conn, fl, "flow gone")
            if conn.neigh_wait is None:
                conn.neigh_wait = now
                self.c["neigh_wait"] += 1
            if now - conn.neigh_wait < NEIGH_WAIT_MS:
                return []
            self.c["no_neigh"] += 1
            return self._refuse(conn, fl, "backend %s MAC not resolved in %d ms"
                                % (_ipstr(ip), NEIGH_WAIT_MS))
        conn.neigh_wait = None
        ip, port = self._backend_side(conn, ip, port)
        conn.backend = (ip, port, mac)
        self.c["decided_forward"] += 1
        self.by_backend[(cip, cport, ip, port)] = conn.key
        conn.syn_at, conn.syn_tries = now, 1
        self.c["syn_sent"] += 1
        return [syn]

    # ---- where the backend's side is (hop's handler, modes/hop/manager.py, has its own) ----
    def _backend_side(self, conn, ip, port):
        """The address and port our connection to the chosen backend ip:port goes to."""
        return ip, port

    def _backend_mac(self, key, fl):
        """The MAC of the backend flow fl (engine.splice_flow) is bound to."""
        return self.ctx.mac_of(fl["rip"])

    def _replay_opts(self, fl):
        """The TCP options of each segment of a replay made here."""
        return self._client_opts(fl)

    def _client_opts(self, fl):
        if fl["sopt"] & defs.SOPT_TS:
            return b"\x01\x01\x08\x0a" + struct.pack("!II", fl["c_tsval"], fl["b_tsval"])
        return b""

    def _from_backend(self, cip, cport, rip, rport, flags, now, ack=0):
        key = self.by_backend.get((cip, cport, rip, rport))
        if key is None:
            key = self.engine.splice_by_backend(cip, cport, rip, rport)
            fl = self.engine.splice_flow(*key) if key is not None else None
            if fl is not None and fl["state"] == defs.S_SPL_CONNECTING and key not in self.conns:
                self._adopt(key, fl, now)       # bound in the fast path; RST from the backend
        if key is None or key not in self.conns:
            self.c["stray"] += 1
            return []
        conn = self.conns[key]
        fl = self.engine.splice_flow(*key)
        if fl is None or fl["c_isn"] != conn.c_isn:
            self._forget(key, drop=False)
            self.c["stray"] += 1
            return []
        if flags & TH_RST:
            self.c["backend_reset"] += 1
            out = [self._rst_client(conn, fl)]
            self._forget(key)
            return out
        if fl["state"] == defs.S_SPL_CONNECTING:     # not our SYN-ACK (the fast path checks)
            if flags & (TH_SYN | TH_ACK) == TH_ACK and conn.backend is not None:
                return self._time_wait(conn, ack)
            return []
        # the backend's SYN-ACK: ACK it as the client and replay the request
        if conn.established_at is None:
            conn.established_at = now
            # spliced: the fast path has it now; keep the request a while for a repeated
            # SYN-ACK, out of the timer's way
            self.pending.discard(key)
            self.retire.append((now + REPLAY_KEEP_MS, key, conn.c_isn))
            self.c["replayed"] += 1
        else:
            self.c["replay_repeated"] += 1
        ip, port, mac = conn.backend
        opts = self._replay_opts(fl)
        seq = fl["c_isn"] + 1
        ack = fl["s_isn"] + 1
        out = [tcp_frame(mac, self.mac, cip, ip, cport, port, seq, ack, TH_ACK, win=fl["c_win"],
                         opts=opts)]
        mss = max(64, min(fl["mss"], 1460) - len(opts))
        data = conn.data
        for i in range(0, len(data), mss):
            chunk = data[i:i + mss]
            last = i + mss >= len(data)
            out.append(tcp_frame(mac, self.mac, cip, ip, cport, port, seq + i, ack,
                                 TH_ACK | (TH_PSH if last else 0) | (TH_FIN if last and conn.fin else 0),
                                 win=fl["c_win"], opts=opts, data=chunk))
        return out

    # ---- answers of our own ----------------------------------------------------------------
    def _time_wait(self, conn, ack):
        """The backend answered our SYN with a bare ACK: it still holds TIME_WAIT for these
        ports (the client reached it on the same 4-tuple before, e.g. through a nat VIP, and
        PAWS or the sequence check refused our SYN). Do what the client's own stack does in
        SYN-SENT (RFC 793): a RST at the ACK's sequence, which ends the TIME_WAIT, then the SYN
        again, now rather than after a retransmission timeout. At most TW_RESETS times."""
        if conn.tw_resets >= TW_RESETS:
            return []
        conn.tw_resets += 1
        self.c["time_wait_reset"] += 1
        cip, cport, _, _ = conn.key
        ip, port, mac = conn.backend
        if mac is None:
            return []
        return [tcp_frame(mac, self.mac, cip, ip, cport, port, ack, 0, TH_RST, win=0),
                self.engine.splice_syn(*conn.key)]

    def _rst_client(self, conn, fl):
        cip, cport, vip, vport = conn.key
        gw = self.ctx.gateway_mac()
        if gw is None:
            return b""
        return tcp_frame(gw, self.mac, vip, cip, vport, cport, fl["l_isn"] + 1,
                         fl["c_isn"] + 1 + len(conn.data), TH_RST | TH_ACK, win=0)

    def _refuse(self, conn, fl, reason):
        self.c["refused"] += 1
        log.debug("splice %s refused: %s", _name(conn.key), reason)
        out = [self._rst_client(conn, fl)]
        self._forget(conn.key)
        return [f for f in out if f]

    # ---- layer-7 DSR: probe, verify, redirect ---------------------------------------------
    def _start_redirect(self, conn, fl, vip, d, target, now):
        """The redirect of one request: its candidates (persistence by client address), then
        the first probe; target = (scheme, path, query, cseq, ProbeSpec | None)."""
        spec = target[4]
        conn.target = target
        conn.cands = vip.candidates(d.pool, conn.key[0], self.engine, spec.tries if spec else 1)
        if not conn.cands:
            self.c["no_backend"] += 1
            return self._unavailable(conn, fl, "pool %s has no usable backend" % d.pool)
        if spec is None:
            self.c["redirect_unprobed"] += 1
            return self._redirect_to(conn, fl, conn.cands[0])
        return self._probe_next(conn, fl, now)

    def _probe_next(self, conn, fl, now):
        """Probe the next candidate (or take its cached result); [] while a probe runs."""
        scheme, path, query, cseq, spec = conn.target
        while conn.cands:
            real, ip, port, name = cand = conn.cands[0]
            ppath = spec.path or (path if path.startswith("/") else "/") + ("?" + query if query else "")
            ckey = (ip, port, spec.method, ppath)
            hit = self.probe_cache.get(ckey) if spec.cache else None
            if hit is not None and hit[0] > now:
                self.c["probe_cached"] += 1
                if hit[1]:
                    return self._redirect_to(conn, fl, cand)
                conn.cands.pop(0)
                if conn.cands:
                    self.c["probe_next"] += 1
                continue
            host = target_host(_ipstr(ip), port, 554 if scheme == "rtsp" else 80, name)
            if scheme == "rtsp":
                req = rtsp_probe_request(spec.method, "rtsp://%s:%d%s" % (_ipstr(ip), port, ppath))
            else:
                req = http_probe_request(spec.method, host, ppath)
            self.probe_gen += 1
            conn.probing = (conn.key, conn.c_isn, self.probe_gen, ckey)
            self.c["probe_sent"] += 1
            self.prober.start(conn.probing, (_ipstr(ip), port), req, spec, now)
            return self.poll(now)
        return self._unavailable(conn, fl, "no backend passed its probe")

    def poll(self, now):
        """Probes that ended since the last call: redirect, try the next backend, or 503.
        Called by the worker at least every WAKE_MS while probes are in flight (wake_ms),
        after a burst's punts and on the tick. Never blocks."""
        if not len(self.prober):
            return []
        self.now = now
        out = []
        for token, p in self.prober.poll(now):
            key, c_isn, _, ckey = token
            vip = self.ctx.vip(key[2], key[3])
            ok = p.state == OK
            self.c["probe_ok" if ok else "probe_failed"] += 1
            if self.board is not None:
                self.board.record(key[2], key[3], "%s:%d" % p.addr, p, time.time())
            spec = p.spec
            if spec.cache:
                if len(self.probe_cache) >= PROBE_CACHE_MAX:
                    self.probe_cache = {k: v for k, v in self.probe_cache.items() if v[0] > now}
                    if len(self.probe_cache) >= PROBE_CACHE_MAX:
                        self.probe_cache.clear()
                self.probe_cache[ckey] = (now + int(spec.cache * 1000), ok, p.detail)
            if ok and p.public:
                self.public[(key[2], key[3])] = p.public
            conn = self.conns.get(key)
            if conn is None or conn.c_isn != c_isn or conn.probing != token:
                continue                   # the client went away meanwhile
            conn.probing = None
            fl = self.engine.splice_flow(*key)
            if fl is None or fl["c_isn"] != c_isn or vip is None:
                self._forget(key, drop=fl is not None)
                continue
            if ok:
                out += self._redirect_to(conn, fl, conn.cands[0])
                continue
            log.debug("splice %s: probe of %s failed: %s", _name(key), "%s:%d" % p.addr, p.detail)
            conn.cands.pop(0)
            if conn.cands:
                self.c["probe_next"] += 1
            out += self._probe_next(conn, fl, now)
        return [f for f in out if f]

    def wake_ms(self):
        """When this handler wants poll() called at the latest (ms), or None: soon while
        probes are in flight, so a probe's answer becomes the client's 302 without waiting
        for the 100 ms tick."""
        if not len(self.prober):
            return None
        return self.now + WAKE_MS

    def _redirect_to(self, conn, fl, cand):
        real, ip, port, name = cand
        scheme, path, query, cseq, spec = conn.target
        conn.real = real
        conn.backend = (ip, port, None)
        self.c["redirect_sent"] += 1
        if scheme == "rtsp":
            self.c["rtsp_describe_redirected"] += 1
            host = target_host(_ipstr(ip), port, 554, name)
            return self._final(conn, fl, rtsp_redirect(host, path, query, cseq))
        host = target_host(_ipstr(ip), port, 80, name)
        return self._final(conn, fl, redirect_response(host, path, query))

    def _unavailable(self, conn, fl, reason):
        self.c["redirect_503"] += 1
        log.debug("splice %s: 503: %s", _name(conn.key), reason)
        if conn.target is not None and conn.target[0] == "rtsp":
            return self._final(conn, fl, rtsp_response(503, conn.target[3]))
        return self._final(conn, fl, unavailable_response(reason))

    def _final(self, conn, fl, answer):
        """Our last answer on this connection, then FIN (redirect.py says why we close)."""
        conn.redirect = answer
        if conn.final_ack is None:
            conn.final_ack = len(conn.data) if not conn.rtsp else conn.consumed
        return self._send_redirect(conn, fl)

    def _send_redirect(self, conn, fl):
        gw = self.ctx.gateway_mac()
        if gw is None:
            return []
        cip, cport, vip, vport = conn.key
        return [tcp_frame(gw, self.mac, vip, cip, vport, cport, fl["l_isn"] + 1 + conn.sent,
                          fl["c_isn"] + 1 + conn.final_ack, TH_ACK | TH_PSH | TH_FIN,
                          win=65535, opts=self._our_ts(fl), data=conn.redirect)]

    def _answer(self, conn, fl, answer):
        """One RTSP answer that keeps the connection open: acknowledges the requests
        consumed so far."""
        gw = self.ctx.gateway_mac()
        conn.last_answer = (conn.sent, conn.consumed, answer)
        off = conn.sent
        conn.sent += len(answer)
        if gw is None:
            return []
        cip, cport, vip, vport = conn.key
        return [tcp_frame(gw, self.mac, vip, cip, vport, cport, fl["l_isn"] + 1 + off,
                          fl["c_isn"] + 1 + conn.consumed, TH_ACK | TH_PSH, win=65535,
                          opts=self._our_ts(fl), data=answer)]

    def _rtsp_more(self, conn, fl, now, payload):
        """The requests of an RTSP session we answer ourselves, in order, until its
        DESCRIBE (redirected after the probe) or a request we cannot serve (answered, then
        closed)."""
        vip = self.ctx.vip(conn.key[2], conn.key[3])
        if vip is None:
            return self._refuse(conn, fl, "VIP gone")
        out = []
        progressed = False
        while conn.consumed < len(conn.data) and conn.redirect is None and conn.probing is None:
            rest = conn.data[conn.consumed:]
            req = parse_rtsp_request(rest, vip.limit)
            if req is RTSP_NEED_MORE or (isinstance(req, RtspRequest) and len(rest) < req.length):
                if len(conn.data) - conn.consumed >= vip.limit:
                    req = None
                else:
                    break
            if not isinstance(req, RtspRequest):
                self.c["rtsp_bad_request"] += 1
                conn.consumed = len(conn.data)
                return out + self._final(conn, fl, rtsp_response(400, ""))
            progressed = True
            start = conn.consumed
            conn.consumed += req.length
            if req.method == "DESCRIBE":
                d = vip.ruleset.decide_final(conn.data[start:conn.consumed])
                if not (isinstance(d, rules.Decision) and d.reason == "rtsp"
                        and d.action == "redirect"):
                    self.c["rtsp_not_found"] += 1
                    return out + self._final(conn, fl, rtsp_response(404, req.cseq))
                conn.decided = d
                return out + self._start_redirect(
                    conn, fl, vip, d, ("rtsp", req.path, req.query, req.cseq, d.rule.probe), now)
            conn.answers += 1
            if conn.answers > RTSP_MAX_ANSWERS:
                return out + self._final(conn, fl, rtsp_response(455, req.cseq))
            status, answer = rtsp_answer(req.method, req.cseq,
                                         self.public.get((conn.key[2], conn.key[3])))
            self.c["rtsp_options" if req.method == "OPTIONS" else "rtsp_answered"] += 1
            out += self._answer(conn, fl, answer)
        if not progressed and payload and conn.last_answer is not None \
                and conn.consumed >= len(conn.data):
            # a request we answered, sent again: our answer was lost
            off, ack, answer = conn.last_answer
            gw = self.ctx.gateway_mac()
            if gw is not None:
                cip, cport, vip_ip, vport = conn.key
                out.append(tcp_frame(gw, self.mac, vip_ip, cip, vport, cport,
                                     fl["l_isn"] + 1 + off, fl["c_isn"] + 1 + ack,
                                     TH_ACK | TH_PSH, win=65535, opts=self._our_ts(fl),
                                     data=answer))
        if conn.fin and conn.redirect is None and conn.probing is None:
            self._forget(conn.key)      # the client gave up before its DESCRIBE
        return out

    def _our_ts(self, fl):
        # our own segments on a cookie connection: keep the client's PAWS happy with a TSval
        # at or above the SYN-ACK's (the engine's ms clock, like the cookie's)
        if fl["sopt"] & defs.SOPT_TS:
            return b"\x01\x01\x08\x0a" + struct.pack("!II", (self.now + 64) & M32, fl["c_tsval"])
        return b""

    def _redirect_more(self, conn, fl, flags, payload):
        if flags & TH_FIN or flags & TH_RST:
            # the client closes after our 302+FIN: ACK its FIN and forget the flow
            gw = self.ctx.gateway_mac()
            cip, cport, vip, vport = conn.key
            out = []
            if gw is not None and flags & TH_FIN:
                out.append(tcp_frame(gw, self.mac, vip, cip, vport, cport,
                                     fl["l_isn"] + 2 + conn.sent + len(conn.redirect),
                                     fl["c_isn"] + 2 + len(conn.data), TH_ACK, opts=self._our_ts(fl)))
            self._forget(conn.key)
            return out
        if payload:       # the request again: our answer was lost
            self.c["redirect_resent"] += 1
            return self._send_redirect(conn, fl)
        return []

    # ---- timers ----------------------------------------------------------------------------
    def tick(self, now):
        """Timers of the connections being set up (a few), then retire spliced ones whose
        replay window is over (in time order: no scan of everything we keep)."""
        self.now = now
        out = self.poll(now)
        for cip, cport, vip, vport, at in self.engine.splice_waiting(now, self.mode):
            key = (cip, cport, vip, vport)
            fl = self.engine.splice_flow(*key)
            if fl is None or key in self.conns:
                continue
            if fl["state"] == defs.S_SPL_CONNECTING:
                # bound in the fast path, and its backend has not answered yet
                self._adopt(key, fl, at)
                continue
            # a client silent since its handshake: the VIP's timeout decides it (a protocol
            # where the server speaks first goes to the default pool with nothing to replay)
            self.conns[key] = Conn(key, fl["c_isn"], at)
            self.pending.add(key)
            self.c["conns"] += 1
            self.c["silent"] += 1
        while self.retire and self.retire[0][0] <= now:
            _, key, c_isn = self.retire.popleft()
            conn = self.conns.get(key)
            if conn is not None and conn.c_isn == c_isn:
                self._forget(key, drop=False)
        for key in list(self.pending):
            conn = self.conns.get(key)
            if conn is None:
                self.pending.discard(key)
                continue
            fl = self.engine.splice_flow(*key)
            if fl is None or fl["c_isn"] != conn.c_isn:
                self._forget(key, drop=False)
                continue
            vip = self.ctx.vip(key[2], key[3])
            if conn.probing is not None:
                continue                   # the prober ends it by its deadline (poll)
            if conn.rtsp and conn.redirect is None:
                continue                   # our RTSP session: the engine's splice_wait ends it
            if conn.decided is None:
                if vip is None or now - conn.started >= vip.timeout_ms:
                    self.c["decided_at_timeout"] += 1
                    out += self._decide(conn, fl, now, final=True)
            elif conn.neigh_wait is not None:
                out += self._bind(conn, fl, now)
            elif fl["state"] == defs.S_SPL_CONNECTING:
                waited = now - conn.syn_at
                if conn.syn_tries <= len(SYN_RETRIES_MS) and waited >= SYN_RETRIES_MS[conn.syn_tries - 1]:
                    if conn.syn_tries == len(SYN_RETRIES_MS):
                        self.c["backend_timeout"] += 1
                        out.append(self._rst_client(conn, fl))
                        self._forget(key)
                        continue
                    conn.syn_tries += 1
                    conn.syn_at = now
                    self.c["syn_retransmitted"] += 1
                    out.append(self.engine.splice_syn(*key))
            elif conn.redirect is not None:
                if now - conn.started > REPLAY_KEEP_MS:
                    self._forget(key)
            elif conn.established_at is None:
                # spliced, and the fast path replayed the request: nothing left for us
                self.c["spliced_inline"] += 1
                self._forget(key, drop=False)
        return [f for f in out if f]

    def _forget(self, key, drop=True):
        self.pending.discard(key)
        conn = self.conns.pop(key, None)
        if conn is not None and conn.backend is not None:
            self.by_backend.pop((key[0], key[1], conn.backend[0], conn.backend[1]), None)
        if drop:
            self.engine.splice_drop(*key)


def _ipstr(ip):
    return "%d.%d.%d.%d" % (ip >> 24, ip >> 16 & 255, ip >> 8 & 255, ip & 255)


def _name(key):
    return "%s:%d->%s:%d" % (_ipstr(key[0]), key[1], _ipstr(key[2]), key[3])
