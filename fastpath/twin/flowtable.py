"""flowtable: the flow entries and their two indexes, the service table, the schedulers'
per-packet side and TCP state tracking. Twin of fastpath/flowtable.pxi.

Invariants:
- Fixed capacity; two open-addressing indexes (forward: client -> VIP, reverse: backend ->
  client) of 2^k >= 2 * capacity slots, linear probing, backward-shift deletion. A slot
  holds (hash >> 32) << 32 | (entry + 1), 0 = empty.
- A flow is in the reverse index (F_REV) exactly when its mode has a reverse path (XMIT rev)
  and it has a backend; the backend side of a 4-tuple belongs to one flow at a time.
- Free entries are taken in the compiled one's order (0, 1, 2 ..., then last freed first). A
  full table evicts the least recently seen of EVICT_SAMPLE entries after a clock hand, an
  expired one first, and serves the new flow.
- Reals are referenced by index: Real.conns counts the flows bound to each.
- The service table is swapped whole by api_set_services; flows and reals survive a swap,
  and so do the VIPs' counters (Engine.vctr, by Service.slot; a flow keeps its VIP's slot in
  vslot). flow_account moves the flow's, its VIP slot's and its real's frame/byte counters.
"""
from .. import defs
from ..checks import (check_ip, check_pool, check_port, check_proto, check_real_idx,
                      check_specs, check_vip_slot)
from ..defs import C, TH_ACK, TH_FIN, TH_RST, TH_SYN
from .inet import flow_hash, mix64
from .types import XMIT, Service


def flow_find(self, tab, h, src, dst, sport, dport, proto, rev):
    mask = self.mask
    i = h & mask
    tag = h >> 32
    while True:
        v = tab[i]
        if v == 0:
            return -1
        if v >> 32 == tag:
            e = self.fl[(v & 0xFFFFFFFF) - 1]
            if rev:
                if (e.rip == src and e.cip == dst and e.rport == sport and e.cport == dport
                        and e.proto == proto):
                    return (v & 0xFFFFFFFF) - 1
            elif (e.cip == src and e.vip == dst and e.cport == sport and e.vport == dport
                    and e.proto == proto):
                return (v & 0xFFFFFFFF) - 1
        i = (i + 1) & mask


def flow_insert(self, tab, h, idx):
    i = h & self.mask
    while tab[i]:
        i = (i + 1) & self.mask
    tab[i] = ((h >> 32) << 32) | (idx + 1)


def flow_unlink(self, tab, h, idx, rev):
    mask = self.mask
    i = h & mask
    while (tab[i] & 0xFFFFFFFF) != idx + 1:
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        v = tab[j]
        if v == 0:
            break
        e = self.fl[(v & 0xFFFFFFFF) - 1]
        k = (e.hr if rev else e.hf) & mask
        # the entry at j may move to the hole at i unless its home k lies in (i, j]
        if (i <= j and (k <= i or k > j)) or (i > j and k <= i and k > j):
            tab[i] = v
            i = j
    tab[i] = 0


def flow_insert_rev(self, idx):
    """Enter flow idx in the reverse index. An older flow with the same backend-side key
    (client ip:port to backend ip:port, e.g. a closing flow of another VIP on the same
    backend) is over: the backend cannot have two connections on one 4-tuple. Callers first
    refuse a new flow whose key a live flow holds (flow_rev_clash), so only a flow that is
    over (TIME_WAIT, CLOSE, past its timeout) is replaced here."""
    e = self.fl[idx]
    old = flow_find(self, self.irev, e.hr, e.rip, e.cip, e.rport, e.cport, e.proto, True)
    if old >= 0:
        flow_delete(self, old)
        self.ctr[C["flow_rev_replaced"]] += 1
    flow_insert(self, self.irev, e.hr, idx)
    e.flags |= defs.F_REV


def flow_rev_clash(self, rip, cip, rport, cport, proto, now):
    """The live flow holding this backend-side key, or -1 (flowtable.pxi says why)."""
    old = flow_find(self, self.irev, flow_hash(rip, cip, rport, cport, proto),
                    rip, cip, rport, cport, proto, True)
    if old < 0:
        return -1
    e = self.fl[old]
    if (e.state in (defs.S_TIME_WAIT, defs.S_CLOSE) or now - e.last > self.tmo[e.state]
            or now - e.last > defs.REV_CLASH_IDLE_MS):
        return -1
    return old


def flow_delete(self, idx):
    e = self.fl[idx]
    flow_unlink(self, self.ifwd, e.hf, idx, False)
    if e.flags & defs.F_REV:
        flow_unlink(self, self.irev, e.hr, idx, True)
    if e.real >= 0:
        self.reals[e.real].conns -= 1
    self.vctr[e.vslot].conns -= 1
    e.rp = None
    e.used = 0
    self.freel.append(idx)
    self.nused -= 1


def flow_alloc(self, now):
    if not self.freel:
        best = -1
        for k in range(defs.EVICT_SAMPLE):
            j = (self.hand + k) % self.cap
            e = self.fl[j]
            if now - e.last > self.tmo[e.state]:
                best = j
                break
            if best < 0 or e.last < self.fl[best].last:
                best = j
        self.hand = (self.hand + defs.EVICT_SAMPLE) % self.cap
        expired = now - self.fl[best].last > self.tmo[self.fl[best].state]
        flow_delete(self, best)
        self.ctr[C["flow_expired" if expired else "flow_evicted"]] += 1
    return self.freel.pop()


def flow_create(self, sv, h, src, sport, real, state, now):
    idx = flow_alloc(self, now)
    e = self.fl[idx]
    r = self.reals[real]
    e.cip, e.vip, e.rip = src, sv.vip, r.ip
    e.cport, e.vport, e.rport = sport, sv.port, r.port
    e.proto, e.mode, e.state, e.flags, e.real = sv.proto, sv.mode, state, 0, real
    e.used = 1
    e.hf = h
    e.hr = flow_hash(r.ip, src, r.port, sport, sv.proto)
    e.created = e.last = now
    e.pkts_fwd = e.pkts_rev = e.bytes_fwd = e.bytes_rev = 0
    e.sync_st, e.sync_at = defs.SYNC_NEVER, 0
    flow_insert(self, self.ifwd, h, idx)
    if XMIT[sv.mode].rev is not None:
        flow_insert_rev(self, idx)
    r.conns += 1
    r.flows += 1
    vip_flow_new(self, e, sv)
    self.nused += 1
    return idx


def vip_flow_new(self, e, sv):
    """A flow created on sv: it keeps sv's counter slot, which counts it."""
    v = self.vctr[sv.slot]
    e.vslot = sv.slot
    v.conns += 1
    v.flows += 1


def new_flow_default(self, f, n, sv, p, now):
    """The new-flow routine of modes that schedule on the first frame (nat, dsr): choose the
    backend, create the flow and send the frame on it with the mode's forward routine. A TCP
    segment other than a SYN opens a flow only where the scheduler is a consistent hash: it
    gives the backend the lost flow had."""
    if p.proto == defs.PROTO_TCP:
        if (p.tflags & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN:
            state = defs.S_SYN_SENT
        elif sv.sched in (defs.SCHED_HASH5, defs.SCHED_HASHSRC) and not p.tflags & TH_RST:
            state = defs.S_ESTABLISHED   # lost state: the hash gives the same backend
        else:
            return C["drop_no_flow_non_syn"]
    else:
        state = defs.S_UDP
    real = schedule(self, sv, p.h, p.src)
    if real < 0:
        return C["drop_no_backend"]
    if XMIT[sv.mode].rev is not None and flow_rev_clash(
            self, self.reals[real].ip, p.src, self.reals[real].port, p.sport, sv.proto,
            now) >= 0:
        real = reschedule_clash(self, sv, p, now)
        if real < 0:
            return C["drop_rev_clash"]
    idx = flow_create(self, sv, p.h, p.src, p.sport, real, state, now)
    self.ctr[C["flow_created"]] += 1
    if state == defs.S_ESTABLISHED:
        self.ctr[C["flow_recreated"]] += 1
    if XMIT[sv.mode].fwd is None:
        return C["drop_mode"]
    return XMIT[sv.mode].fwd(self, f, n, self.fl[idx], sv, p.tflags, now)


def reschedule_clash(self, sv, p, now):
    """Another backend of sv for a new flow whose first choice has its 4-tuple held, or -1
    (flowtable.pxi says how)."""
    if sv.sched not in (defs.SCHED_SEQ, defs.SCHED_HASH5):
        return -1
    h = p.h
    for _ in range(defs.REV_CLASH_TRIES):
        h = mix64((h + 1) & 0xFFFFFFFFFFFFFFFF)
        real = schedule(self, sv, h, p.src)
        if real >= 0 and flow_rev_clash(self, self.reals[real].ip, p.src,
                                        self.reals[real].port, p.sport, sv.proto, now) < 0:
            self.ctr[C["rev_clash_rescheduled"]] += 1
            return real
    return -1


def flow_from_backend(self, rip, cip, rport, cport, proto, tflags, now):
    """A backend's packet with no flow: re-created on the consistent-hash VIP that gives this
    backend for this client port, in a mode that can rebuild it (flowtable.pxi says why)."""
    if proto == defs.PROTO_TCP and tflags & (TH_SYN | TH_RST):
        return -1
    for sv in self.services.values():
        if (sv.proto != proto or not XMIT[sv.mode].rev_rebuild
                or sv.sched not in (defs.SCHED_HASH5, defs.SCHED_HASHSRC)):
            continue
        hf = flow_hash(cip, sv.vip, cport, sv.port, proto)
        real = schedule(self, sv, hf, cip)
        if real < 0:
            continue
        r = self.reals[real]
        if (r.ip, r.port) != (rip, rport):
            continue
        idx = flow_create(self, sv, hf, cip, cport, real,
                          defs.S_ESTABLISHED if proto == defs.PROTO_TCP else defs.S_UDP, now)
        self.ctr[C["flow_created"]] += 1
        self.ctr[C["flow_recreated_rev"]] += 1
        return idx
    return -1


def schedule(self, sv, h, src):
    """The real a new flow of sv goes to (-1: none): one lookup in the table the control
    side built (lb/schedulers.py), or for lc the fewest conns per weight among candidates."""
    n = len(sv.table)
    if n == 0:
        return -1
    if sv.sched == defs.SCHED_SEQ:
        r = sv.table[sv.cursor % n]
        sv.cursor += 1
        return r
    if sv.sched == defs.SCHED_HASH5:
        return sv.table[h % n]
    if sv.sched == defs.SCHED_HASHSRC:
        return sv.table[mix64(src) % n]
    best = 0
    for k in range(1, n):
        # conns[k] / w[k] < conns[best] / w[best], without division
        if (self.reals[sv.table[k]].conns * sv.weights[best]
                < self.reals[sv.table[best]].conns * sv.weights[k]):
            best = k
    return sv.table[best]


def service_find(self, vip, port, proto):
    return self.services.get((vip, port, proto))


def flow_account(self, e, n, fwd, now):
    """A frame of e sent on (n bytes, fwd: client -> backend): the flow's time and counters,
    its VIP slot's and its real's (none while a splice flow is unbound)."""
    v = self.vctr[e.vslot]
    e.last = now
    if fwd:
        e.pkts_fwd += 1
        e.bytes_fwd += n
        v.pkts_fwd += 1
        v.bytes_fwd += n
    else:
        e.pkts_rev += 1
        e.bytes_rev += n
        v.pkts_rev += 1
        v.bytes_rev += n
    if e.real >= 0:
        r = self.reals[e.real]
        if fwd:
            r.pkts_fwd += 1
            r.bytes_fwd += n
        else:
            r.pkts_rev += 1
            r.bytes_rev += n


def splice_cap(sv, r):
    """What a splice service may promise in its cookie SYN-ACK, given one of its backends:
    no more MSS than it announced, no SACK if it had none (learnt in splice.py)."""
    if r.mss and r.mss < sv.mss_cap:
        sv.mss_cap = r.mss
    if r.nosack:
        sv.nosack = True


def track(e, tflags, fwd):
    """IPVS-like TCP state from the flags seen in each direction."""
    if tflags & TH_RST:
        e.state = defs.S_CLOSE
    elif tflags & TH_FIN:
        if e.state != defs.S_CLOSE:
            e.flags |= defs.F_FIN_C if fwd else defs.F_FIN_S
            both = defs.F_FIN_C | defs.F_FIN_S
            e.state = defs.S_TIME_WAIT if (e.flags & both) == both else defs.S_FIN_WAIT
    elif e.state == defs.S_SYN_SENT:
        if not fwd and (tflags & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK):
            e.state = defs.S_SYN_RECV
        elif fwd and (tflags & (TH_SYN | TH_ACK)) == TH_ACK:
            e.state = defs.S_ESTABLISHED
    elif e.state == defs.S_SYN_RECV:
        if fwd and tflags & TH_ACK:
            e.state = defs.S_ESTABLISHED


# ---- the API's bodies (engine.py) ---------------------------------------------------------
def api_set_services(self, specs):
    new = {}
    for k, s in enumerate(check_specs(specs)):
        sv = Service()
        sv.vip, sv.port, sv.proto, sv.mode, sv.sched = s.vip, s.port, s.proto, s.mode, s.sched
        sv.slot = k if getattr(s, "slot", None) is None else s.slot
        vc = self.vctr[sv.slot]
        if vc.key != (sv.vip, sv.port, sv.proto):
            vc.key = (sv.vip, sv.port, sv.proto)
            vc.flows = vc.pkts_fwd = vc.pkts_rev = vc.bytes_fwd = vc.bytes_rev = 0
        sv.table, sv.weights, sv.cursor = list(s.table), list(s.weights), 0
        sv.flags = s.flags
        sv.l7_rules, sv.l7_limit, sv.pools = [], 0, []
        sv.vni, sv.mtu = (s.tunnel.vni, s.tunnel.mtu) if s.tunnel is not None else (0, 0)
        if s.l7 is not None:
            pools = []
            for sched, table, weights in s.l7.pools:
                p = Service()
                p.sched, p.table, p.weights, p.cursor = sched, list(table), list(weights), 0
                pools.append(p)
            sv.l7_rules = [(kind, bytes(arg), pools[pool]) for kind, arg, pool in s.l7.rules]
            sv.l7_limit, sv.pools = s.l7.limit, pools
        sv.mss_cap, sv.nosack = defs.SPLICE_MSS, False
        for t in sv.table + [t for p in sv.pools for t in p.table]:   # (splice.py learns)
            if 0 <= t < defs.MAX_REALS:
                splice_cap(sv, self.reals[t])
        new[(s.vip, s.port, s.proto)] = sv
    self.services = new


def api_pick(self, vip, vport, pool, cip, cport):
    v, c = check_ip(vip), check_ip(cip)
    vp, cp = check_port(vport), check_port(cport)
    sv = service_find(self, v, vp, defs.PROTO_TCP)
    if sv is None:
        check_pool(pool, 0x7FFFFFFF)
        return -1
    p = check_pool(pool, len(sv.pools))
    return schedule(self, sv if p < 0 else sv.pools[p], flow_hash(c, v, cp, vp, defs.PROTO_TCP), c)


def api_flows(self):
    return [(e.cip, e.cport, e.vip, e.vport, e.proto, e.real, e.mode, e.state, e.created,
             e.last, e.pkts_fwd, e.pkts_rev, e.bytes_fwd, e.bytes_rev)
            for e in self.fl if e.used]


def api_expire(self, now_ms, budget):
    freed = 0
    for _ in range(min(budget, self.cap)):
        j = self.sweep
        self.sweep = (j + 1) % self.cap
        e = self.fl[j]
        if e.used and now_ms - e.last > self.tmo[e.state]:
            flow_delete(self, j)
            self.ctr[C["flow_expired"]] += 1
            freed += 1
    return freed


def flow_view(self, idx, key):
    """A flow entry as the dict flow_get returns; the splice fields only for a splice flow."""
    e = self.fl[idx]
    d = {"index": idx, "key": key, "cip": e.cip, "cport": e.cport, "vip": e.vip,
         "vport": e.vport, "proto": e.proto, "rip": e.rip, "rport": e.rport, "real": e.real,
         "mode": e.mode, "state": e.state, "flags": e.flags, "created": e.created,
         "last": e.last, "pkts_fwd": e.pkts_fwd, "pkts_rev": e.pkts_rev,
         "bytes_fwd": e.bytes_fwd, "bytes_rev": e.bytes_rev}
    if e.mode == defs.MODE_SPLICE:
        d["xlate"] = {"c_isn": e.c_isn, "l_isn": e.l_isn, "delta": e.delta,
                       "ts_off": e.ts_off, "mss": e.mss, "ws_c": e.ws_c, "ws_b": e.ws_b,
                       "ws_lb": e.ws_lb, "sopt": e.sopt, "replay_len": e.rp_len}
    return d


def api_flow_get(self, src, sport, dst, dport, proto):
    s, d = check_ip(src), check_ip(dst)
    sp, dp = check_port(sport), check_port(dport)
    pr = check_proto(proto)
    h = flow_hash(s, d, sp, dp, pr)
    idx = flow_find(self, self.ifwd, h, s, d, sp, dp, pr, False)
    if idx >= 0:
        return flow_view(self, idx, "fwd")
    idx = flow_find(self, self.irev, h, s, d, sp, dp, pr, True)
    if idx >= 0:
        return flow_view(self, idx, "rev")
    return None


def api_explain(self, cip, cport, vip, vport, proto):
    c, v = check_ip(cip), check_ip(vip)
    cp, vp = check_port(cport), check_port(vport)
    pr = check_proto(proto)
    sv = service_find(self, v, vp, pr)
    if sv is None:
        return None
    h = flow_hash(c, v, cp, vp, pr)
    n = len(sv.table)
    key = k = 0
    # as schedule() picks, without moving sv.cursor
    if n:
        if sv.sched == defs.SCHED_SEQ:
            key, k = sv.cursor, sv.cursor % n
        elif sv.sched == defs.SCHED_HASH5:
            key, k = h, h % n
        elif sv.sched == defs.SCHED_HASHSRC:
            key = mix64(c)
            k = key % n
        else:
            for j in range(1, n):
                if (self.reals[sv.table[j]].conns * sv.weights[k]
                        < self.reals[sv.table[k]].conns * sv.weights[j]):
                    k = j
    return {"sched": sv.sched, "mode": sv.mode, "table_size": n, "hash": key,
            "slot": k if n else -1, "real": sv.table[k] if n else -1,
            "l7_rules": len(sv.l7_rules), "flags": sv.flags}


def api_real_stats(self, idx):
    check_real_idx(idx)
    r = self.reals[idx]
    return (r.conns, r.flows, r.pkts_fwd, r.pkts_rev, r.bytes_fwd, r.bytes_rev)


def api_vip_stats(self, slot):
    check_vip_slot(slot)
    v = self.vctr[slot]
    return (v.conns, v.flows, v.pkts_fwd, v.pkts_rev, v.bytes_fwd, v.bytes_rev)
