# flowtable: the flow entries and their two indexes, the service table, the schedulers'
# per-packet side and TCP state tracking. Twin: twin/flowtable.py.
#
# Invariants:
# - Fixed capacity; two open-addressing indexes (forward: client -> VIP, reverse: backend ->
#   client) of 2^k >= 2 * capacity slots, linear probing, backward-shift deletion. A slot
#   holds (hash >> 32) << 32 | (entry + 1), 0 = empty, so most probes are settled without
#   touching the entry.
# - A flow is in the reverse index (F_REV) exactly when its mode has a reverse path (XMIT
#   rev) and it has a backend; the backend side of a 4-tuple belongs to one flow at a time.
# - Free entries are taken in the twin's order (0, 1, 2 ..., then last freed first). A full
#   table evicts the least recently seen of EVICT_SAMPLE entries after a clock hand, an
#   expired one first, and serves the new flow.
# - Reals are referenced by index: Real.conns counts the flows bound to each, and the control
#   side reuses a real's slot only at 0 (lb/state.py).
# - The service table is swapped whole by api_set_services between bursts; flows and reals
#   survive a swap, and so do the VIPs' counters (Engine.vctr, by Service.slot: a flow keeps
#   the slot of its VIP in vslot). Per frame sent on a flow, flow_account moves its flow's,
#   its VIP slot's and its real's frame and byte counters (metrics: lb/metrics.py).


cdef inline int32_t flow_find(Engine self, uint64_t *tab, uint64_t h, uint32_t src,
                              uint32_t dst, uint16_t sport, uint16_t dport, uint8_t proto,
                              bint rev) noexcept nogil:
    cdef uint64_t i = h & self.mask, v, tag = h >> 32
    cdef Flow *e
    while True:
        v = tab[i]
        if v == 0:
            return -1
        if v >> 32 == tag:
            e = &self.fl[(v & 0xFFFFFFFFULL) - 1]
            if rev:
                if (e.rip == src and e.cip == dst and e.rport == sport and e.cport == dport
                        and e.proto == proto):
                    return (v & 0xFFFFFFFFULL) - 1
            elif (e.cip == src and e.vip == dst and e.cport == sport and e.vport == dport
                    and e.proto == proto):
                return (v & 0xFFFFFFFFULL) - 1
        i = (i + 1) & self.mask


cdef inline void flow_insert(Engine self, uint64_t *tab, uint64_t h, uint32_t idx) noexcept nogil:
    cdef uint64_t i = h & self.mask
    while tab[i]:
        i = (i + 1) & self.mask
    tab[i] = ((h >> 32) << 32) | (idx + 1)


cdef void flow_unlink(Engine self, uint64_t *tab, uint64_t h, uint32_t idx, bint rev) noexcept nogil:
    cdef uint64_t mask = self.mask, i = h & mask, j, v, k
    cdef Flow *e
    while (tab[i] & 0xFFFFFFFFULL) != idx + 1:
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        v = tab[j]
        if v == 0:
            break
        e = &self.fl[(v & 0xFFFFFFFFULL) - 1]
        k = (e.hr if rev else e.hf) & mask
        # the entry at j may move to the hole at i unless its home k lies in (i, j]
        if (i <= j and (k <= i or k > j)) or (i > j and k <= i and k > j):
            tab[i] = v
            i = j
    tab[i] = 0


cdef void flow_insert_rev(Engine self, uint32_t idx) noexcept nogil:
    """Enter flow idx in the reverse index. An older flow with the same backend-side key
    (client ip:port to backend ip:port, e.g. a closing flow of another VIP on the same
    backend) is over: the backend cannot have two connections on one 4-tuple. Callers first
    refuse a new flow whose key a live flow holds (flow_rev_clash), so only a flow that is
    over (TIME_WAIT, CLOSE, past its timeout) is replaced here."""
    cdef Flow *e = &self.fl[idx]
    cdef int32_t old = flow_find(self, self.irev, e.hr, e.rip, e.cip, e.rport, e.cport, e.proto,
                                 True)
    if old >= 0:
        flow_delete(self, old)
        self.ctr[C_FLOW_REV_REPLACED] += 1
    flow_insert(self, self.irev, e.hr, idx)
    e.flags |= F_REV


cdef int32_t flow_rev_clash(Engine self, uint32_t rip, uint32_t cip, uint16_t rport,
                            uint16_t cport, uint8_t proto, int64_t now) noexcept nogil:
    """The live flow holding this backend-side key, or -1. The same client port to two VIPs
    on one backend (a client's kernel picks ports per destination) is one 4-tuple on the
    backend: the established connection keeps it, and the new one is refused
    (drop_rev_clash), as the backend itself would refuse its SYN. Live: not TIME_WAIT or
    CLOSE (FIN_WAIT is: a half-closed download), and a frame or a sync record within
    REV_CLASH_IDLE_MS and its state's timeout."""
    cdef int32_t old = flow_find(self, self.irev, _flow_hash(rip, cip, rport, cport, proto),
                                 rip, cip, rport, cport, proto, True)
    cdef Flow *e
    if old < 0:
        return -1
    e = &self.fl[old]
    if (e.state == S_TIME_WAIT or e.state == S_CLOSE or now - e.last > self.tmo[e.state]
            or now - e.last > REV_CLASH_IDLE_MS):
        return -1
    return old


cdef void flow_delete(Engine self, uint32_t idx) noexcept nogil:
    cdef Flow *e = &self.fl[idx]
    flow_unlink(self, self.ifwd, e.hf, idx, False)
    if e.flags & F_REV:
        flow_unlink(self, self.irev, e.hr, idx, True)
    if e.real >= 0:
        self.reals[e.real].conns -= 1
    self.vctr[e.vslot].conns -= 1
    if e.rp != NULL:
        free(e.rp)
        e.rp = NULL
    e.used = 0
    self.freel[self.nfree] = idx
    self.nfree += 1
    self.nused -= 1


cdef uint32_t flow_alloc(Engine self, int64_t now) noexcept nogil:
    cdef int64_t best = -1
    cdef uint32_t j, k
    cdef Flow *e
    cdef bint expired
    if self.nfree == 0:
        for k in range(EVICT_SAMPLE):
            j = (self.hand + k) % self.cap
            e = &self.fl[j]
            if now - e.last > self.tmo[e.state]:
                best = j
                break
            if best < 0 or e.last < self.fl[best].last:
                best = j
        self.hand = (self.hand + EVICT_SAMPLE) % self.cap
        expired = now - self.fl[best].last > self.tmo[self.fl[best].state]
        flow_delete(self, <uint32_t>best)
        self.ctr[C_FLOW_EXPIRED if expired else C_FLOW_EVICTED] += 1
    self.nfree -= 1
    return self.freel[self.nfree]


cdef uint32_t flow_create(Engine self, Service *sv, uint64_t h, uint32_t src, uint16_t sport,
                          int32_t real, uint8_t state, int64_t now) noexcept nogil:
    cdef uint32_t idx = flow_alloc(self, now)
    cdef Flow *e = &self.fl[idx]
    cdef Real *r = &self.reals[real]
    e.cip, e.vip, e.rip = src, sv.vip, r.ip
    e.cport, e.vport, e.rport = sport, sv.port, r.port
    e.proto, e.mode, e.state, e.flags, e.real = sv.proto, sv.mode, state, 0, real
    e.used = 1
    e.hf = h
    e.hr = _flow_hash(r.ip, src, r.port, sport, sv.proto)
    e.created = now
    e.last = now
    e.pkts_fwd = e.pkts_rev = e.bytes_fwd = e.bytes_rev = 0
    e.sync_st, e.sync_at = SYNC_NEVER, 0
    flow_insert(self, self.ifwd, h, idx)
    if XMIT[sv.mode].rev != NULL:
        flow_insert_rev(self, idx)
    r.conns += 1
    r.flows += 1
    vip_flow_new(self, e, sv)
    self.nused += 1
    return idx


cdef inline void vip_flow_new(Engine self, Flow *e, Service *sv) noexcept nogil:
    """A flow created on sv: it keeps sv's counter slot, which counts it."""
    cdef VipCtr *v = &self.vctr[sv.slot]
    e.vslot = sv.slot
    v.conns += 1
    v.flows += 1


cdef int new_flow_default(Engine self, uint8_t *f, uint32_t n, Service *sv, Pkt *p,
                          int64_t now) noexcept nogil:
    """The new-flow routine of modes that schedule on the first frame (nat, dsr): choose the
    backend, create the flow and send the frame on it with the mode's forward routine. A TCP
    segment other than a SYN opens a flow only where the scheduler is a consistent hash: it
    gives the backend the lost flow had."""
    cdef uint8_t state
    cdef int32_t real
    cdef uint32_t idx
    if p.proto == PROTO_TCP:
        if (p.tflags & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN:
            state = S_SYN_SENT
        elif (sv.sched == SCHED_HASH5 or sv.sched == SCHED_HASHSRC) and not p.tflags & TH_RST:
            state = S_ESTABLISHED   # lost state: the hash gives the same backend
        else:
            return C_DROP_NO_FLOW_NON_SYN
    else:
        state = S_UDP
    real = schedule(self, sv, p.h, p.src)
    if real < 0:
        return C_DROP_NO_BACKEND
    if XMIT[sv.mode].rev != NULL and flow_rev_clash(
            self, self.reals[real].ip, p.src, self.reals[real].port, p.sport, sv.proto,
            now) >= 0:
        real = reschedule_clash(self, sv, p, now)
        if real < 0:
            return C_DROP_REV_CLASH
    idx = flow_create(self, sv, p.h, p.src, p.sport, real, state, now)
    self.ctr[C_FLOW_CREATED] += 1
    if state == S_ESTABLISHED:
        self.ctr[C_FLOW_RECREATED] += 1
    if XMIT[sv.mode].fwd == NULL:
        return C_DROP_MODE
    return XMIT[sv.mode].fwd(self, f, n, &self.fl[idx], sv, p.tflags, now)


cdef int32_t reschedule_clash(Engine self, Service *sv, Pkt *p, int64_t now) noexcept nogil:
    """Another backend of sv for a new flow whose first choice has its 4-tuple held (a live
    flow of another VIP, flow_rev_clash): up to REV_CLASH_TRIES more picks (rr: the next in
    turn; a flow hash: rehashed; sh and lc choose the same again, so they give up), or -1.
    A synced flow keeps the backend it got; one re-created from a non-SYN gets the first
    choice, as any flow the hash did not place."""
    cdef uint32_t k
    cdef int32_t real
    cdef uint64_t h = p.h
    if sv.sched != SCHED_SEQ and sv.sched != SCHED_HASH5:
        return -1
    for k in range(REV_CLASH_TRIES):
        h = _mix64(h + 1)
        real = schedule(self, sv, h, p.src)
        if real >= 0 and flow_rev_clash(self, self.reals[real].ip, p.src,
                                        self.reals[real].port, p.sport, sv.proto, now) < 0:
            self.ctr[C_REV_CLASH_RESCHEDULED] += 1
            return real
    return -1


cdef int32_t flow_from_backend(Engine self, uint32_t rip, uint32_t cip, uint16_t rport,
                               uint16_t cport, uint8_t proto, uint8_t tflags,
                               int64_t now) noexcept nogil:
    """A backend's packet with no flow (lost: an LB restart, an eviction). In a download
    only the backend sends, so waiting for the client's next packet would wait forever: find
    the VIP whose consistent hash (maglev, sh, hash) gives this backend for this client port,
    in a mode that can rebuild the flow from it (Xmit.rev_rebuild: nat), and re-create the
    flow there (flow_recreated_rev). Returns the flow, or -1. One pass over the services."""
    cdef uint32_t k
    cdef uint64_t hf
    cdef int32_t real
    cdef uint32_t idx
    cdef Service *sv
    cdef Real *r
    if proto == PROTO_TCP and tflags & (TH_SYN | TH_RST):
        return -1                       # (a SYN-ACK or a reset opens nothing)
    for k in range(self.nsvc):
        sv = &self.svcs[k]
        if (sv.proto != proto or not XMIT[sv.mode].rev_rebuild
                or (sv.sched != SCHED_HASH5 and sv.sched != SCHED_HASHSRC)):
            continue
        hf = _flow_hash(cip, sv.vip, cport, sv.port, proto)
        real = schedule(self, sv, hf, cip)
        if real < 0:
            continue
        r = &self.reals[real]
        if r.ip != rip or r.port != rport:
            continue
        idx = flow_create(self, sv, hf, cip, cport, real,
                          S_ESTABLISHED if proto == PROTO_TCP else S_UDP, now)
        self.ctr[C_FLOW_CREATED] += 1
        self.ctr[C_FLOW_RECREATED_REV] += 1
        return idx
    return -1


cdef int32_t schedule(Engine self, Service *sv, uint64_t h, uint32_t src) noexcept nogil:
    """The real a new flow of sv goes to (-1: none): one lookup in the table the control
    side built (lb/schedulers.py), or for lc the fewest conns per weight among candidates."""
    cdef uint32_t n = sv.n, k, best
    cdef int32_t *t = self.tab + sv.off
    cdef int32_t *w = self.wts + sv.off
    if n == 0:
        return -1
    if sv.sched == SCHED_SEQ:
        k = sv.cursor % n
        sv.cursor += 1
        return t[k]
    if sv.sched == SCHED_HASH5:
        return t[h % n]
    if sv.sched == SCHED_HASHSRC:
        return t[_mix64(src) % n]
    best = 0
    for k in range(1, n):
        # conns[k] / w[k] < conns[best] / w[best], without division
        if self.reals[t[k]].conns * w[best] < self.reals[t[best]].conns * w[k]:
            best = k
    return t[best]


cdef inline Service *service_find(Engine self, uint32_t vip, uint16_t port,
                                  uint8_t proto) noexcept nogil:
    cdef uint64_t j = _mix64((<uint64_t>vip << 24) | (<uint64_t>port << 8) | proto) & (SVC_SLOTS - 1)
    cdef int32_t s
    cdef Service *sv
    while True:
        s = self.svc_slot[j]
        if s < 0:
            return NULL
        sv = &self.svcs[s]
        if sv.vip == vip and sv.port == port and sv.proto == proto:
            return sv
        j = (j + 1) & (SVC_SLOTS - 1)


cdef inline void flow_account(Engine self, Flow *e, uint32_t n, bint fwd,
                              int64_t now) noexcept nogil:
    """A frame of e sent on (n bytes, fwd: client -> backend): the flow's time and counters,
    its VIP slot's and its real's (none while a splice flow is unbound). The real's line is
    the one the forward routine read its MAC from; the VIP slots are a few hot lines."""
    cdef VipCtr *v = &self.vctr[e.vslot]
    cdef Real *r
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
        r = &self.reals[e.real]
        if fwd:
            r.pkts_fwd += 1
            r.bytes_fwd += n
        else:
            r.pkts_rev += 1
            r.bytes_rev += n


cdef inline void splice_cap(Service *sv, Real *r) noexcept nogil:
    """What a splice service may promise in its cookie SYN-ACK, given one of its backends:
    no more MSS than it announced, no SACK if it had none (learnt in splice.pxi)."""
    if r.mss and r.mss < sv.mss_cap:
        sv.mss_cap = r.mss
    if r.nosack:
        sv.nosack = 1


cdef inline void track(Flow *e, uint8_t tflags, bint fwd) noexcept nogil:
    """IPVS-like TCP state from the flags seen in each direction."""
    if tflags & TH_RST:
        e.state = S_CLOSE
    elif tflags & TH_FIN:
        if e.state != S_CLOSE:
            e.flags |= F_FIN_C if fwd else F_FIN_S
            e.state = S_TIME_WAIT if (e.flags & (F_FIN_C | F_FIN_S)) == (F_FIN_C | F_FIN_S) else S_FIN_WAIT
    elif e.state == S_SYN_SENT:
        if not fwd and (tflags & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK):
            e.state = S_SYN_RECV
        elif fwd and (tflags & (TH_SYN | TH_ACK)) == TH_ACK:
            e.state = S_ESTABLISHED
    elif e.state == S_SYN_RECV:
        if fwd and tflags & TH_ACK:
            e.state = S_ESTABLISHED


# ---- the API's bodies (engine.pxi) --------------------------------------------------------
cdef object api_set_services(Engine self, specs):
    specs = check_specs(specs)
    l7s = [s.l7 for s in specs if s.l7 is not None]
    cdef uint32_t total = (sum(len(s.table) for s in specs)
                           + sum(len(p[1]) for l in l7s for p in l.pools))
    cdef uint32_t nrules = sum(len(l.rules) for l in l7s)
    cdef uint32_t npools = sum(len(l.pools) for l in l7s)
    cdef uint32_t nblob = sum(len(r[1]) for l in l7s for r in l.rules)
    cdef int32_t *tab = <int32_t *>malloc((total + 1) * sizeof(int32_t))
    cdef int32_t *wts = <int32_t *>malloc((total + 1) * sizeof(int32_t))
    cdef L7Rule *l7r = <L7Rule *>malloc((nrules + 1) * sizeof(L7Rule))
    cdef Service *pools = <Service *>calloc(npools + 1, sizeof(Service))
    cdef uint8_t *blob = <uint8_t *>malloc(nblob + 1)
    if tab == NULL or wts == NULL or l7r == NULL or pools == NULL or blob == NULL:
        free(tab); free(wts); free(l7r); free(pools); free(blob)
        raise MemoryError()
    cdef uint32_t roff = 0, poff = 0, boff = 0, p0
    cdef const uint8_t[::1] arg
    cdef uint32_t off = 0, k, j
    cdef uint64_t key
    cdef Service *sv
    cdef VipCtr *vc
    for k in range(SVC_SLOTS):
        self.svc_slot[k] = -1
    for k, s in enumerate(specs):
        sv = &self.svcs[k]
        sv.vip, sv.port, sv.proto, sv.mode, sv.sched = s.vip, s.port, s.proto, s.mode, s.sched
        sv.off, sv.n, sv.cursor, sv.flags = off, len(s.table), 0, s.flags
        sv.slot = k if getattr(s, "slot", None) is None else s.slot
        vc = &self.vctr[sv.slot]
        if not vc.used or vc.vip != sv.vip or vc.port != sv.port or vc.proto != sv.proto:
            vc.vip, vc.port, vc.proto, vc.used = sv.vip, sv.port, sv.proto, 1
            vc.flows = vc.pkts_fwd = vc.pkts_rev = vc.bytes_fwd = vc.bytes_rev = 0
        for j in range(sv.n):
            tab[off + j] = s.table[j]
            wts[off + j] = s.weights[j] if j < len(s.weights) else 1
        off += sv.n
        sv.l7_off, sv.l7_n, sv.l7_limit = roff, 0, 0
        sv.pool_off, sv.pool_n = poff, 0
        sv.vni, sv.mtu = (s.tunnel.vni, s.tunnel.mtu) if s.tunnel is not None else (0, 0)
        if s.l7 is not None:
            p0 = poff
            for sched, table, weights in s.l7.pools:
                pools[poff].sched, pools[poff].off, pools[poff].n = sched, off, len(table)
                pools[poff].cursor = 0
                for j in range(len(table)):
                    tab[off + j] = table[j]
                    wts[off + j] = weights[j] if j < len(weights) else 1
                off += len(table)
                poff += 1
            for kind, a, pool in s.l7.rules:
                l7r[roff].kind, l7r[roff].pool = kind, p0 + pool
                l7r[roff].off, l7r[roff].len = boff, len(a)
                if len(a):
                    arg = a
                    memcpy(blob + boff, &arg[0], len(a))
                boff += len(a)
                roff += 1
            sv.l7_n, sv.l7_limit = len(s.l7.rules), s.l7.limit
            sv.pool_n = len(s.l7.pools)
        sv.mss_cap, sv.nosack = SPLICE_MSS, 0
        for j in range(sv.off, off):          # its table and its pools' (splice.pxi learns)
            if tab[j] >= 0 and tab[j] < MAX_REALS:
                splice_cap(sv, &self.reals[tab[j]])
        key = _mix64((<uint64_t>sv.vip << 24) | (<uint64_t>sv.port << 8) | sv.proto)
        j = key & (SVC_SLOTS - 1)
        while self.svc_slot[j] >= 0:
            j = (j + 1) & (SVC_SLOTS - 1)
        self.svc_slot[j] = k
    free(self.tab); free(self.wts); free(self.l7r); free(self.pools); free(self.blob)
    self.tab, self.wts, self.nsvc = tab, wts, len(specs)
    self.l7r, self.pools, self.blob = l7r, pools, blob


cdef object api_pick(Engine self, vip, vport, pool, cip, cport):
    cdef uint32_t v = check_ip(vip), c = check_ip(cip)
    cdef uint16_t vp = check_port(vport), cp = check_port(cport)
    cdef Service *sv = service_find(self, v, vp, PROTO_TCP)
    cdef int p
    if sv == NULL:
        check_pool(pool, 0x7FFFFFFF)
        return -1
    p = check_pool(pool, sv.pool_n)
    return schedule(self, sv if p < 0 else &self.pools[sv.pool_off + p],
                    _flow_hash(c, v, cp, vp, PROTO_TCP), c)


cdef object api_flows(Engine self):
    out = []
    cdef uint32_t k
    cdef Flow *e
    for k in range(self.cap):
        e = &self.fl[k]
        if e.used:
            out.append((e.cip, e.cport, e.vip, e.vport, e.proto, e.real, e.mode, e.state,
                        e.created, e.last, e.pkts_fwd, e.pkts_rev, e.bytes_fwd, e.bytes_rev))
    return out


cdef object api_expire(Engine self, int64_t now_ms, budget):
    cdef uint32_t freed = 0, j, k, b = min(budget, self.cap)
    cdef Flow *e
    for k in range(b):
        j = self.sweep
        self.sweep = (j + 1) % self.cap
        e = &self.fl[j]
        if e.used and now_ms - e.last > self.tmo[e.state]:
            flow_delete(self, j)
            self.ctr[C_FLOW_EXPIRED] += 1
            freed += 1
    return freed


cdef object flow_view(Engine self, int32_t idx, str key):
    """A flow entry as the dict flow_get returns; the splice fields only for a splice flow
    (other modes leave them as a slot's previous flow had them)."""
    cdef Flow *e = &self.fl[idx]
    d = {"index": idx, "key": key, "cip": e.cip, "cport": e.cport, "vip": e.vip,
         "vport": e.vport, "proto": e.proto, "rip": e.rip, "rport": e.rport, "real": e.real,
         "mode": e.mode, "state": e.state, "flags": e.flags, "created": e.created,
         "last": e.last, "pkts_fwd": e.pkts_fwd, "pkts_rev": e.pkts_rev,
         "bytes_fwd": e.bytes_fwd, "bytes_rev": e.bytes_rev}
    if e.mode == MODE_SPLICE:
        d["xlate"] = {"c_isn": e.c_isn, "l_isn": e.l_isn, "delta": e.delta,
                       "ts_off": e.ts_off, "mss": e.mss, "ws_c": e.ws_c, "ws_b": e.ws_b,
                       "ws_lb": e.ws_lb, "sopt": e.sopt, "replay_len": e.rp_len}
    return d


cdef object api_flow_get(Engine self, src, sport, dst, dport, proto):
    cdef uint32_t s = check_ip(src), d = check_ip(dst)
    cdef uint16_t sp = check_port(sport), dp = check_port(dport)
    cdef uint8_t pr = check_proto(proto)
    cdef uint64_t h = _flow_hash(s, d, sp, dp, pr)
    cdef int32_t idx = flow_find(self, self.ifwd, h, s, d, sp, dp, pr, False)
    if idx >= 0:
        return flow_view(self, idx, "fwd")
    idx = flow_find(self, self.irev, h, s, d, sp, dp, pr, True)
    if idx >= 0:
        return flow_view(self, idx, "rev")
    return None


cdef object api_explain(Engine self, cip, cport, vip, vport, proto):
    cdef uint32_t c = check_ip(cip), v = check_ip(vip)
    cdef uint16_t cp = check_port(cport), vp = check_port(vport)
    cdef uint8_t pr = check_proto(proto)
    cdef Service *sv = service_find(self, v, vp, pr)
    if sv == NULL:
        return None
    cdef uint64_t h = _flow_hash(c, v, cp, vp, pr)
    cdef uint32_t n = sv.n, k = 0, j
    cdef int32_t *t = self.tab + sv.off
    cdef int32_t *w = self.wts + sv.off
    cdef uint64_t key = 0
    # as schedule() picks, without moving sv.cursor
    if n:
        if sv.sched == SCHED_SEQ:
            key = sv.cursor
            k = sv.cursor % n
        elif sv.sched == SCHED_HASH5:
            key = h
            k = h % n
        elif sv.sched == SCHED_HASHSRC:
            key = _mix64(c)
            k = key % n
        else:
            for j in range(1, n):
                if self.reals[t[j]].conns * w[k] < self.reals[t[k]].conns * w[j]:
                    k = j
    return {"sched": sv.sched, "mode": sv.mode, "table_size": n, "hash": key,
            "slot": k if n else -1, "real": t[k] if n else -1, "l7_rules": sv.l7_n,
            "flags": sv.flags}


cdef object api_real_stats(Engine self, idx):
    check_real_idx(idx)
    cdef Real *r = &self.reals[<int>idx]
    return (r.conns, r.flows, r.pkts_fwd, r.pkts_rev, r.bytes_fwd, r.bytes_rev)


cdef object api_vip_stats(Engine self, slot):
    check_vip_slot(slot)
    cdef VipCtr *v = &self.vctr[<int>slot]
    return (v.conns, v.flows, v.pkts_fwd, v.pkts_rev, v.bytes_fwd, v.bytes_rev)
