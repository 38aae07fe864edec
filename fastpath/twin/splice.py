"""splice: delayed binding. SYN cookies, the cookie ACK that creates the flow, binding by the
VIP's content rules, our SYN to the backend, the replay of the request, and the translation
both ways once the two connections are spliced. Twin of fastpath/splice.pxi (its header says
when the mode is used); modes/splice.py is the Python side.

Invariants:
- A SYN creates no state: the cookie (defs.py: Linux's layout) carries the client's MSS
  index, and with timestamps its window scale and SACK in our TSval. A flow exists only
  after a valid cookie ACK, in SPL_WAIT with no backend (real = -1, not in the reverse index)
  until it is bound here (splice_l7_bind) or by Python (api_splice_bind).
- Once spliced, the backend's sequence space is ours shifted by delta, its TSval by ts_off
  and its window rescaled from ws_b to ws_lb; every rewrite is patched into the checksum
  incrementally.
- A frame made in place (SYN-ACK, our SYN, the replay) sets newlen and never exceeds rowcap;
  a frame that would is punted instead.
- Python learns of a flow by a punt (F_SEEN) or from the wait queue, whose entries name a
  flow by (idx, c_isn, created), so a stale entry is skipped.
- A hop flow (xmit_hop.py) is a splice flow until its hand-off (splice_like): bound to the
  VIP's address and port, our SYN carrying hop_mark and the replay hop_handoff. Each mode's
  handler gets its own flows from splice_waiting().
"""
from .. import defs
from ..checks import check_ip, check_port, check_real_idx
from ..defs import C, TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN, XMIT_CONT
from .flowtable import (flow_account, flow_alloc, flow_delete, flow_find, flow_insert,
                        flow_insert_rev, flow_rev_clash, schedule, service_find, splice_cap,
                        vip_flow_new)
from .http import l7_match
from .icmp import icmp_frag_needed, icmp_translate
from .inet import (M32, flow_hash, mix64, patch16, patch32, rd16, rd32, rewrite, sack_ts,
                   tcp_frame, tcp_options, tcp_options_fast)
from .serve import xmit_out
from .types import XMIT, Xmit


# ---- cookies (net/ipv4/syncookies.c) ------------------------------------------------------
def cookie_h1(self, src, dst, sport, dport):
    return mix64(self.k0 ^ ((src << 32) | dst) ^ mix64(self.k1 ^ ((sport << 16) | dport))) & M32


def cookie_h2(self, src, dst, sport, dport, cnt):
    return mix64(self.k1 ^ ((src << 32) | dst)
                 ^ mix64(self.k0 ^ ((cnt << 32) | (sport << 16) | dport))) & 0xFFFFFF


def cookie_make(self, src, dst, sport, dport, c_isn, cnt, data):
    return (cookie_h1(self, src, dst, sport, dport) + c_isn + (cnt << 24)
            + ((cookie_h2(self, src, dst, sport, dport, cnt) + data) & 0xFFFFFF)) & M32


def cookie_check(self, src, dst, sport, dport, c_isn, cookie, now):
    """The MSS index the cookie carries, or -1 when it is not ours or too old."""
    c = (cookie - cookie_h1(self, src, dst, sport, dport) - c_isn) & M32
    cnt = c >> 24
    if (((now >> 16) & 0xFF) - cnt) & 0xFF > defs.COOKIE_MAX_AGE:
        return -1
    data = (c - cookie_h2(self, src, dst, sport, dport, cnt)) & 0xFFFFFF
    return data if data < len(defs.COOKIE_MSS) else -1


# ---- per packet ---------------------------------------------------------------------------
def splice_new(self, f, n, sv, p, now):
    """No flow yet: a SYN gets a cookie SYN-ACK (no state); an ACK with a valid cookie
    creates the flow in SPL_WAIT and goes up to Python."""
    tflags = p.tflags
    if p.proto != defs.PROTO_TCP:
        return C["drop_mode"]          # a UDP service in splice mode (the control side has none)
    if (tflags & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN:
        return splice_synack(self, f, sv, p.src, p.dst, p.sport, p.dport, now)
    if tflags & TH_RST or not tflags & TH_ACK:
        return C["splice_bad_cookie"]
    c_isn = (rd32(f, 38) - 1) & M32
    l_isn = (rd32(f, 42) - 1) & M32
    mssi = cookie_check(self, p.src, p.dst, p.sport, p.dport, c_isn, l_isn, now)
    if mssi < 0:
        return C["splice_bad_cookie"]
    doff = (f[46] >> 4) * 4
    opts = tcp_options(f, 54, 34 + doff)
    ts = opts.get(8) if opts is not None else None
    if ts is not None and f[ts + 1] != 10:
        ts = None
    idx = flow_alloc(self, now)
    e = self.fl[idx]
    e.cip, e.vip, e.rip, e.cport, e.vport, e.rport = p.src, p.dst, 0, p.sport, p.dport, 0
    e.proto, e.mode, e.state, e.flags, e.real, e.used = 6, sv.mode, defs.S_SPL_WAIT, 0, -1, 1
    e.hf, e.hr = p.h, 0
    e.created = e.last = now
    e.pkts_rev = e.bytes_rev = 0
    e.c_isn, e.l_isn, e.delta, e.ts_off = c_isn, l_isn, 0, 0
    e.mss = defs.COOKIE_MSS[mssi]
    if ts is not None:
        bits = rd32(f, ts + 6) & 0x3F          # what our SYN-ACK's TSval carried
        e.ws_c = bits & 0xF
        e.sopt = defs.SOPT_TS | (defs.SOPT_SACK if bits & 0x10 else 0)
        e.c_tsval = rd32(f, ts + 2)
    else:
        e.ws_c, e.sopt, e.c_tsval = 0xF, 0, 0
    e.ws_lb = defs.SPLICE_WSCALE if e.ws_c != 0xF else 0
    e.ws_b, e.b_tsval = 0, 0
    e.c_win = rd16(f, 48)
    e.pkts_fwd, e.bytes_fwd = 0, 0
    e.rp, e.rp_len = None, 0
    e.sync_st, e.sync_at = defs.SYNC_NEVER, 0
    flow_insert(self, self.ifwd, p.h, idx)
    vip_flow_new(self, e, sv)
    flow_account(self, e, n, True, now)      # (the cookie ACK: the flow's first frame)
    self.nused += 1
    self.ctr[C["flow_created"]] += 1
    if rd16(f, 16) > 20 + doff or tflags & TH_FIN:
        if sv.l7_rules:
            k = splice_l7_bind(self, f, e, sv, tflags, now)
            if k:
                return k
        e.flags = defs.F_SEEN
        return C["punt_splice"]          # the request (or a FIN) came with the ACK
    # nothing for Python yet: the request's first segment will be punted; a client that
    # stays silent is handed up by splice_waiting()
    waitq_push(self, idx, now)
    return C["splice_accepted"]


def splice_synack(self, f, sv, src, dst, sport, dport, now):
    """The cookie SYN-ACK: no state. It promises what every backend of the VIP has shown it
    can keep (sv.mss_cap, sv.nosack: learnt from their SYN-ACKs, splice_learn)."""
    doff = (f[46] >> 4) * 4
    opts = tcp_options(f, 54, 34 + doff)
    if opts is None:
        return C["drop_tcp_bad_options"]
    mss = rd16(f, opts[2] + 2) if 2 in opts and f[opts[2] + 1] == 4 else 536
    mssi = 0
    for k in range(len(defs.COOKIE_MSS) - 1, -1, -1):
        if mss >= defs.COOKIE_MSS[k]:
            mssi = k
            break
    c_isn = rd32(f, 38)
    cookie = cookie_make(self, src, dst, sport, dport, c_isn, (now >> 16) & 0xFF, mssi)
    o = bytearray([2, 4, sv.mss_cap >> 8, sv.mss_cap & 0xFF])
    if 8 in opts and f[opts[8] + 1] == 10:
        ws = min(f[opts[3] + 2], 14) if 3 in opts and f[opts[3] + 1] == 3 else 0xF
        sack = 4 in opts and f[opts[4] + 1] == 2 and not sv.nosack
        my_ts = ((now & ~0x3F) | ws | (0x10 if sack else 0)) & M32
        o += sack_ts(sack, my_ts, rd32(f, opts[8] + 2))
        if ws != 0xF:
            o += bytes([1, 3, 3, defs.SPLICE_WSCALE])
    out = tcp_frame(bytes(f[6:12]), self.local_mac, dst, src, dport, sport, cookie, c_isn + 1,
                    TH_SYN | TH_ACK, 0xFFFF, bytes(o))
    f[:len(out)] = out
    self.newlen = len(out)
    return C["splice_synack"]


def splice_fwd(self, f, n, e, sv, tflags, now):
    """Client -> backend: before binding, the request (the VIP's rules or Python decide);
    after, the frame sent on with the backend's view of ack, TSecr and SACK blocks."""
    opts = tcp_options_fast(f)
    if e.state == defs.S_SPL_WAIT or e.state == defs.S_SPL_CONNECTING:
        # no backend yet: the VIP's rules decide here, or Python buffers the request
        # (and answers RST/FIN)
        if 8 in opts and f[opts[8] + 1] == 10:
            e.c_tsval = rd32(f, opts[8] + 2)
        e.c_win = rd16(f, 48)
        flow_account(self, e, n, True, now)
        if e.state == defs.S_SPL_WAIT and sv.l7_rules and not e.flags & defs.F_SEEN:
            k = splice_l7_bind(self, f, e, sv, tflags, now)
            if k:
                return k
        e.flags |= defs.F_SEEN
        return C["punt_splice"]
    r = self.reals[e.real]
    if r.mss and rd16(f, 16) > r.mss + 40:
        # more than the backend keeps (splice.pxi says when): a superframe's segments are
        # cut smaller; a segment with DF is answered so the client's PMTU shrinks it
        if self.vnet is not None and self.vnet[1] != 0:
            gso = self.vnet[4] | (self.vnet[5] << 8)
            if gso + ((f[46] >> 4) * 4) > r.mss + 20:
                gso = r.mss + 20 - ((f[46] >> 4) * 4)
                self.vnet[4], self.vnet[5] = gso & 0xFF, (gso >> 8) & 0xFF
                self.keep_vnet = True
        elif f[20] & 0x40:
            if self.gw_mac is None:
                return C["drop_no_neigh"]
            icmp_frag_needed(self, f, r.mss + 40)
            return C["splice_frag_needed"]
    k = xmit_out(self, f, n, e, r.mac, True, True, tflags, now)
    if k != XMIT_CONT:
        return k
    p = self.partial
    rewrite(f, 30, 36, e.vip, e.vport, e.rip, e.rport, 6, p)
    if tflags & TH_ACK:
        patch32(f, 42, (rd32(f, 42) - e.delta) & M32, p)
    if e.sopt & defs.SOPT_TS and 8 in opts and f[opts[8] + 1] == 10:
        patch32(f, opts[8] + 6, (rd32(f, opts[8] + 6) - e.ts_off) & M32, p)
    if 5 in opts:
        o, ln = opts[5], f[opts[5] + 1]
        for k in range(o + 2, o + ln - 7, 8):
            patch32(f, k, (rd32(f, k) - e.delta) & M32, p)
            patch32(f, k + 4, (rd32(f, k + 4) - e.delta) & M32, p)
    return C["splice_fwd"]


def splice_learn(self, f, e, opts):
    """A backend's SYN-ACK to us: what it announced (MSS, 536 without the option; SACK),
    kept per backend, and the VIP's promise lowered to it (splice.pxi says more)."""
    r = self.reals[e.real]
    r.mss = rd16(f, opts[2] + 2) if 2 in opts and f[opts[2] + 1] == 4 else 536
    r.nosack = not (4 in opts and f[opts[4] + 1] == 2)
    sv = service_find(self, e.vip, e.vport, defs.PROTO_TCP)
    if sv is not None and splice_like(sv.mode):
        before = sv.mss_cap
        splice_cap(sv, r)
        if sv.mss_cap < before:
            self.ctr[C["splice_mss_lowered"]] += 1


def splice_rev(self, f, n, e, sv, tflags, now):
    """Backend -> client: while connecting, its SYN-ACK (recorded, then answered by the
    replay or punted); after, the frame sent on with the client's view of seq, TSval and
    window."""
    opts = tcp_options_fast(f)
    ts = opts[8] if 8 in opts and f[opts[8] + 1] == 10 else -1
    if e.state == defs.S_SPL_CONNECTING:
        if ((tflags & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK)
                and rd32(f, 42) == (e.c_isn + 1) & M32):
            splice_learn(self, f, e, opts)
            e.delta = (e.l_isn - rd32(f, 38)) & M32
            ws = f[opts[3] + 2] if 3 in opts and f[opts[3] + 1] == 3 else -1
            e.ws_b = min(ws, 14) if ws >= 0 and e.ws_c != 0xF else 0
            if e.sopt & defs.SOPT_TS and ts >= 0:
                e.b_tsval = rd32(f, ts + 2)
                # the client's view continues from our SYN-ACK's TSval (PAWS)
                e.ts_off = (now + 64 - e.b_tsval) & M32
            e.state = defs.S_ESTABLISHED
            flow_account(self, e, n, False, now)
            self.ctr[C["splice_established"]] += 1
            if e.flags & defs.F_INLINE:
                # (one segment within the client's MSS, as the client itself sent it)
                return splice_replay(self, f, e, rd32(f, 38))
            return C["punt_splice"]   # a request longer than one segment: Python replays it
        if tflags & TH_RST:
            return C["punt_splice"]
        if (tflags & (TH_SYN | TH_ACK)) == TH_ACK:
            return C["punt_splice"]   # a TIME_WAIT's answer to our SYN: Python resets it
        return C["drop_splice_state"]
    if e.state == defs.S_SPL_WAIT:
        return C["drop_splice_state"]
    if tflags & TH_SYN:
        # a retransmitted SYN-ACK: our ACK was lost; answer it (and replay) again
        if ts >= 0:
            e.b_tsval = rd32(f, ts + 2)
        e.last = now
        if (e.flags & defs.F_INLINE and tflags & TH_ACK and rd32(f, 42) == (e.c_isn + 1) & M32
                and rd32(f, 38) == (e.l_isn - e.delta) & M32):
            return splice_replay(self, f, e, rd32(f, 38))
        return C["punt_splice"]
    if e.rp is not None and tflags & TH_ACK and 0 < ((rd32(f, 42) - e.c_isn - 1) & M32) < 1 << 31:
        e.rp = None           # the backend has the request: no SYN-ACK will come again
    k = xmit_out(self, f, n, e, self.gw_mac, True, False, tflags, now)
    if k != XMIT_CONT:
        return k
    p = self.partial
    rewrite(f, 26, 34, e.rip, e.rport, e.vip, e.vport, 6, p)
    patch32(f, 38, (rd32(f, 38) + e.delta) & M32, p)
    if e.ws_b != e.ws_lb:
        w = rd16(f, 48)
        patch16(f, 48, min(0xFFFF, (w << e.ws_b) >> e.ws_lb), p)
    if ts >= 0 and e.sopt & defs.SOPT_TS:
        patch32(f, ts + 2, (rd32(f, ts + 2) + e.ts_off) & M32, p)
    return C["splice_rev"]


def splice_icmp(self, f, n, q, e, sv, real, fwd):
    """An ICMP error about a bound splice flow (icmp.py), translated as nat's are and, for
    TCP, its quoted seq and ack moved into the other connection's space: from the client
    side the quote is our segment to the client (seq in our space, - delta for the
    backend's), from the server side our segment to the backend (ack - delta: + delta for
    the client's). Linux drops an ICMP error whose seq is outside its window."""
    if e is None or e.real < 0 or e.state in (defs.S_SPL_WAIT, defs.S_SPL_CONNECTING):
        return C["drop_icmp_no_flow"]     # nothing sent on it yet that an error could be about
    if f[22] <= 1:
        return C["drop_ttl"]
    if fwd:
        r = self.reals[e.real]
        if r.mac is None:
            return C["drop_no_neigh"]
        f[0:6] = r.mac
        f[6:12] = self.local_mac
        icmp_translate(f, q, True, q.src, q.sport, e.rip, e.rport, (0 - e.delta) & M32, 0)
        self.newlen = n
        return C["splice_icmp_fwd"]
    if self.gw_mac is None:
        return C["drop_no_neigh"]
    f[0:6] = self.gw_mac
    f[6:12] = self.local_mac
    icmp_translate(f, q, False, e.rip, e.rport, e.vip, e.vport, 0, e.delta)
    self.newlen = n
    return C["splice_icmp_rev"]


# ---- binding a flow to a backend, our SYN, the replay ------------------------------------
def waitq_push(self, idx, now):
    if len(self.waitq) == self.wq_size:
        self.waitq.popleft()
        self.ctr[C["splice_waitq_lost"]] += 1
    e = self.fl[idx]
    self.waitq.append((idx, e.c_isn, e.created, now))


def splice_bind_clash(self, e, real, now):
    """Whether binding e to real would take a backend-side 4-tuple a live flow holds."""
    r = self.reals[real]
    if e.mode == defs.MODE_HOP:
        return flow_rev_clash(self, e.vip, e.cip, e.vport, e.cport, 6, now) >= 0
    return flow_rev_clash(self, r.ip, e.cip, r.port, e.cport, 6, now) >= 0


def splice_bind_real(self, e, real, now):
    r = self.reals[real]
    e.real, e.rip, e.rport = real, r.ip, r.port
    if e.mode == defs.MODE_HOP:
        # hop: the backend's socket is VIP:port <-> client:port (it holds the VIP, as for
        # dsr), so its SYN-ACK, which its shim sends us, comes from the VIP
        e.rip, e.rport = e.vip, e.vport
    e.hr = flow_hash(e.rip, e.cip, e.rport, e.cport, 6)
    flow_insert_rev(self, e.idx)
    r.conns += 1
    r.flows += 1
    e.state = defs.S_SPL_CONNECTING
    e.last = now


def splice_l7_bind(self, f, e, sv, tflags, now):
    """The request's first segment, in f: decide it by the VIP's rules, bind the flow, keep
    the segment to replay and turn f into our SYN to the backend. 0 when any of it cannot
    be done here (Python then gets the segment)."""
    doff = (f[46] >> 4) * 4
    dl = rd16(f, 16) - 20 - doff
    if (dl <= 0 or tflags & (TH_SYN | TH_RST | TH_FIN) or not tflags & TH_ACK
            or rd32(f, 38) != (e.c_isn + 1) & M32
            or dl + (12 if e.sopt & defs.SOPT_TS else 0) > e.mss):
        return 0
    d = bytes(f[34 + doff:34 + doff + dl])
    m = dl if dl < sv.l7_limit else sv.l7_limit
    pool = l7_match(self, d, m, sv)
    if pool is None:
        return 0
    real = schedule(self, pool, e.hf, e.cip)
    if real < 0 or self.reals[real].mac is None or splice_bind_clash(self, e, real, now):
        return 0                        # (Python decides, and says why)
    splice_bind_real(self, e, real, now)
    e.flags |= defs.F_INLINE
    e.rp, e.rp_len = d, dl
    waitq_push(self, e.idx, now)        # Python resends a lost SYN
    self.newlen = splice_syn_into(self, f, e)
    return C["splice_decided"]


def splice_syn_into(self, f, e):
    """Our SYN to the backend as the client, written at f: its address, port, ISN and SYN
    options as the cookie kept them (and hop's mark). Returns its length."""
    o = bytes([2, 4]) + e.mss.to_bytes(2, "big")
    if e.sopt & defs.SOPT_TS:
        o += sack_ts(e.sopt & defs.SOPT_SACK, e.c_tsval, 0)
    if e.ws_c != 0xF:
        o += bytes([1, 3, 3, e.ws_c])
    if e.mode == defs.MODE_HOP:
        o += hop_mark()
    out = tcp_frame(self.reals[e.real].mac, self.local_mac, e.cip, e.rip, e.cport, e.rport,
                    e.c_isn, 0, TH_SYN, 65535, o)
    f[:len(out)] = out
    return len(out)


def splice_replay(self, f, e, s_isn):
    """Turn the backend's SYN-ACK (in f) into our answer as the client: ACK, and the
    client's request when we still hold it (with the client's FIN if it sent one)."""
    r = self.reals[e.real]
    if r.mac is None:
        return C["drop_no_neigh"]
    opt = b""
    if e.sopt & defs.SOPT_TS:
        opt = sack_ts(False, e.c_tsval, e.b_tsval)
    if e.mode == defs.MODE_HOP:
        opt += hop_handoff(self, e)     # the shim takes the connection over
    fl = TH_ACK
    data = b""
    if e.rp is not None:
        fl |= TH_PSH | (TH_FIN if e.flags & defs.F_RP_FIN else 0)
        data = e.rp
    if 54 + len(opt) + len(data) > self.rowcap:
        return C["punt_splice"]
    out = tcp_frame(r.mac, self.local_mac, e.cip, e.rip, e.cport, e.rport, e.c_isn + 1,
                    s_isn + 1, fl, e.c_win, opt, data)
    f[:len(out)] = out
    self.newlen = len(out)
    return C["splice_replay"]


# hop's options in the frames above (a hop flow is a splice flow until its hand-off)
def hop_mark():
    """The mark of our SYN to the backend: [253, 4, ExID]."""
    return bytes([defs.HOP_OPT_KIND, defs.HOP_MARK_LEN]) + defs.HOP_EXID.to_bytes(2, "big")


def hop_handoff(self, e):
    """The hand-off of our replay: two NOPs, then [253, 14, ExID, delta, ts_off, ws_b, ws_lb]."""
    self.ctr[C["hop_handoff"]] += 1
    ts_off = e.ts_off if e.sopt & defs.SOPT_TS else 0
    return (bytes([1, 1, defs.HOP_OPT_KIND, defs.HOP_HANDOFF_LEN])
            + defs.HOP_EXID.to_bytes(2, "big") + (e.delta & 0xFFFFFFFF).to_bytes(4, "big")
            + (ts_off & 0xFFFFFFFF).to_bytes(4, "big") + bytes([e.ws_b, e.ws_lb]))


def splice_syn_frame(self, e):
    """splice_syn_into, as bytes (for Python)."""
    f = bytearray()
    L = splice_syn_into(self, f, e)
    return bytes(f[:L])


def splice_like(mode):
    """The modes whose client side is splice's (cookies, binding, replay): splice and hop."""
    return mode == defs.MODE_SPLICE or mode == defs.MODE_HOP


def splice_lookup(self, cip, cport, vip, vport):
    h = flow_hash(cip, vip, cport, vport, 6)
    idx = flow_find(self, self.ifwd, h, cip, vip, cport, vport, 6, False)
    if idx >= 0 and splice_like(self.fl[idx].mode):
        return idx
    return -1


# ---- the API's bodies (engine.py) ---------------------------------------------------------
def api_splice_flow(self, cip, cport, vip, vport):
    idx = splice_lookup(self, cip, cport, vip, vport)
    if idx < 0:
        return None
    e = self.fl[idx]
    return {"state": e.state, "real": e.real, "rip": e.rip, "rport": e.rport,
            "c_isn": e.c_isn, "l_isn": e.l_isn, "s_isn": (e.l_isn - e.delta) & M32,
            "mss": e.mss, "ws_c": e.ws_c, "ws_b": e.ws_b, "ws_lb": e.ws_lb,
            "sopt": e.sopt, "c_tsval": e.c_tsval, "c_win": e.c_win, "b_tsval": e.b_tsval,
            "ts_off": e.ts_off}


def api_splice_bind(self, cip, cport, vip, vport, real, now_ms, request, fin):
    check_real_idx(real)
    req = bytes(memoryview(request))
    idx = splice_lookup(self, cip, cport, vip, vport)
    if idx < 0 or self.fl[idx].state != defs.S_SPL_WAIT or self.reals[real].mac is None:
        return None
    e = self.fl[idx]
    if splice_bind_clash(self, e, real, now_ms):
        self.ctr[C["drop_rev_clash"]] += 1
        return False
    splice_bind_real(self, e, real, now_ms)
    e.flags |= defs.F_SEEN
    if len(req) + (12 if e.sopt & defs.SOPT_TS else 0) <= e.mss:
        e.flags |= defs.F_INLINE | (defs.F_RP_FIN if fin else 0)
        e.rp = req if req else None
        e.rp_len = len(req)
    return splice_syn_frame(self, e)


def api_splice_by_backend(self, cip, cport, rip, rport):
    c, r = check_ip(cip), check_ip(rip)
    cp, rp = check_port(cport), check_port(rport)
    idx = flow_find(self, self.irev, flow_hash(r, c, rp, cp, 6), r, c, rp, cp, 6, True)
    if idx < 0 or not splice_like(self.fl[idx].mode):
        return None
    e = self.fl[idx]
    return (e.cip, e.cport, e.vip, e.vport)


def api_splice_syn(self, cip, cport, vip, vport):
    idx = splice_lookup(self, cip, cport, vip, vport)
    if (idx < 0 or self.fl[idx].state != defs.S_SPL_CONNECTING
            or self.reals[self.fl[idx].real].mac is None):
        return None
    return splice_syn_frame(self, self.fl[idx])


def api_splice_waiting(self, now_ms, mode):
    out = [x for m, x in self.wq_other if m == mode]
    if out:
        self.wq_other = [(m, x) for m, x in self.wq_other if m != mode]
    q = self.waitq
    while q and now_ms - q[0][3] >= defs.SPLICE_WAIT_HANDOFF_MS:
        idx, c_isn, created, at = q.popleft()
        e = self.fl[idx]
        if (e.used and splice_like(e.mode) and e.c_isn == c_isn and e.created == created
                and e.state in (defs.S_SPL_WAIT, defs.S_SPL_CONNECTING)
                and not e.flags & defs.F_SEEN):
            e.flags |= defs.F_SEEN
            if e.mode == mode:
                out.append((e.cip, e.cport, e.vip, e.vport, at))
            else:       # the other mode's handler takes it on its own tick
                self.wq_other.append((e.mode, (e.cip, e.cport, e.vip, e.vport, at)))
    return out


def api_splice_drop(self, cip, cport, vip, vport):
    idx = splice_lookup(self, cip, cport, vip, vport)
    if idx < 0:
        return False
    flow_delete(self, idx)
    return True


# ---- the mode's row of XMIT (types.py) ----------------------------------------------------
XMIT[defs.MODE_SPLICE] = Xmit(splice_new, splice_fwd, splice_rev, splice_icmp, None, True)
