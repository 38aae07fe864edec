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
  decision redirect -> we answer the HTTP request ourselves with a 302 to the chosen
                       backend's own address (layer-7 DSR: large objects go direct), then FIN
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
"""
import collections
import logging
import struct

from fastpath import defs
from fastpath.defs import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN
from fastpath.twin.inet import tcp_frame as _tcp_frame

from . import http, rules
from .redirect import redirect_response

log = logging.getLogger("splice")

M32 = 0xFFFFFFFF
SYN_RETRIES_MS = (1000, 2000)      # resend the SYN to the backend after these waits
TW_RESETS = 3                      # a backend's TIME_WAIT answered with RST + SYN at most so often
ENGINE_DECIDED = "decided by the fast path's rules"   # Conn.decided of an adopted flow
REPLAY_KEEP_MS = 5000              # keep the request to replay on a repeated SYN-ACK


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
                 "syn_at", "syn_tries", "established_at", "redirect", "fin", "tw_resets")

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
        self.redirect = None           # the 302 we sent, to resend on a retransmitted request
        self.fin = False


class SpliceManager:
    """Handles the frames the fast path punts for splice flows, and its timers.

    ctx is the daemon side (modes/base.py, Mode.punt_handler):
      ctx.vip(vip, port) -> the VIP's SpliceVip (modes/splice/vip.py) or None
      ctx.mac_of(ip) -> bytes | None; ctx.gateway_mac() -> bytes | None
    """
    reasons = (defs.C["punt_splice"],)
    mode = defs.MODE_SPLICE            # whose flows engine.splice_waiting() gives us

    def __init__(self, engine, ctx, local_mac):
        self.engine = engine
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
                                 "no_backend", "no_neigh", "bad_frame", "stray", "silent",
                                 "spliced_inline", "adopted", "late", "time_wait_reset")}

    def counters(self):
        return dict(self.c, open=len(self.conns), setting_up=len(self.pending))

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
        choice = vip.choose(d.pool, cip, cport, self.engine)
        if choice is None:
            self.c["no_backend"] += 1
            return self._refuse(conn, fl, "pool %s has no usable backend" % d.pool)
        real, ip, port = choice
        mac = self.ctx.mac_of(ip)
        if mac is None:
            self.c["no_neigh"] += 1
            return self._refuse(conn, fl, "backend %s MAC not resolved" % ip)
        conn.real, conn.backend = real, (ip, port, mac)
        if d.action == "redirect":
            self.c["decided_redirect"] += 1
            return self._redirect(conn, fl, vip)
        ip, port = self._backend_side(conn, ip, port)
        conn.backend = (ip, port, mac)
        # the engine makes the SYN and keeps a one-segment request: it answers the backend's
        # SYN-ACK itself (ACK + the request), so we only see that SYN-ACK for longer requests
        syn = self.engine.splice_bind(cip, cport, vip_ip, vport, real, now, conn.data, conn.fin)
        if syn is None:
            return self._refuse(conn, fl, "flow gone or backend MAC unknown")
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

    def _redirect(self, conn, fl, vip):
        req = http.parse_http_request(conn.data, vip.limit)
        if not isinstance(req, http.HttpRequest):
            return self._refuse(conn, fl, "redirect needs an HTTP request")
        ip, port, _ = conn.backend
        host = _ipstr(ip) if port == 80 else "%s:%d" % (_ipstr(ip), port)
        conn.redirect = redirect_response(host, req.path, req.query or "")
        return self._send_redirect(conn, fl)

    def _send_redirect(self, conn, fl):
        gw = self.ctx.gateway_mac()
        if gw is None:
            return []
        cip, cport, vip, vport = conn.key
        return [tcp_frame(gw, self.mac, vip, cip, vport, cport, fl["l_isn"] + 1,
                          fl["c_isn"] + 1 + len(conn.data), TH_ACK | TH_PSH | TH_FIN,
                          win=65535, opts=self._our_ts(fl), data=conn.redirect)]

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
                                     fl["l_isn"] + 2 + len(conn.redirect),
                                     fl["c_isn"] + 2 + len(conn.data), TH_ACK, opts=self._our_ts(fl)))
            self._forget(conn.key)
            return out
        if payload:       # the request again: our answer was lost
            return self._send_redirect(conn, fl)
        return []

    # ---- timers ----------------------------------------------------------------------------
    def tick(self, now):
        """Timers of the connections being set up (a few), then retire spliced ones whose
        replay window is over (in time order: no scan of everything we keep)."""
        self.now = now
        out = []
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
            if conn.decided is None:
                if vip is None or now - conn.started >= vip.timeout_ms:
                    self.c["decided_at_timeout"] += 1
                    out += self._decide(conn, fl, now, final=True)
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
