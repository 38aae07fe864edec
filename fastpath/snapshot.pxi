# snapshot: the engine's tables as bytes and back, for a planned restart (lbd --takeover,
# lb/takeover.py). Twin: twin/snapshot.py. The byte format and its checks are shared by both
# (fastpath/snapfmt.py, whose header describes it).
#
# Invariants:
# - What travels: every used flow entry (its index kept, every field as in memory, a splice
#   request to replay as its bytes), the free-entry stack, the eviction hand and expiry sweep,
#   every real slot (MAC, health bit, learnt MSS/SACK, conns), the fragment table, the splice
#   wait queue, the SYN-cookie key, tunnel's outer IP id, the counters. What does not: the
#   services (the control side sets them: set_services), the local address, the gateway
#   MAC, the timeouts, the rr cursors of SCHED_SEQ tables (they restart at 0).
# - Records are copied with sizeof(): a field appended to Flow, Real, Frag or WaitQ travels.
# - import_state checks the whole snapshot (snapfmt.parse) and allocates every request
#   buffer before it changes anything: a refused snapshot leaves the engine as it was. The
#   indexes are rebuilt from the flows' hashes, and the services' splice caps from the
#   imported reals (services_recap).


cdef void services_recap(Engine self) noexcept nogil:
    """The services' splice caps (mss_cap, nosack) from the reals as they are now, as
    set_services derives them: a takeover sets the services before the reals arrive."""
    cdef uint32_t k, j, p, end
    cdef Service *sv
    for k in range(self.nsvc):
        sv = &self.svcs[k]
        end = sv.off + sv.n
        for p in range(sv.pool_off, sv.pool_off + sv.pool_n):
            if self.pools[p].off + self.pools[p].n > end:
                end = self.pools[p].off + self.pools[p].n
        sv.mss_cap, sv.nosack = SPLICE_MSS, 0
        for j in range(sv.off, end):
            if self.tab[j] >= 0 and self.tab[j] < MAX_REALS:
                splice_cap(sv, &self.reals[self.tab[j]])


cdef void vip_conns_recount(Engine self) noexcept nogil:
    """The VIP counter slots' conns from the imported flows (each flow names its slot); the
    slots' totals are not in a snapshot and start again at 0 (the reals' travel)."""
    cdef uint32_t k
    for k in range(MAX_SERVICES):
        self.vctr[k].conns = 0
    for k in range(self.cap):
        if self.fl[k].used:
            self.vctr[self.fl[k].vslot].conns += 1


cdef object api_export_state(Engine self):
    cdef uint32_t k, j, n = 0
    cdef Flow *e
    cdef uint32_t step = 4 + sizeof(Flow)
    cdef size_t rp_off = <size_t>(<char *>&self.fl[0].rp - <char *>&self.fl[0])
    flows = bytearray(self.nused * step)
    cdef uint8_t[::1] buf = flows
    rp = []
    for k in range(self.cap):
        e = &self.fl[k]
        if e.used:
            memcpy(&buf[n * step], &k, 4)
            memcpy(&buf[n * step + 4], e, sizeof(Flow))
            memset(&buf[n * step + 4 + rp_off], 0, sizeof(uint8_t *))     # the pointer: 0
            n += 1
            if e.rp != NULL:
                rp.append((k, (<char *>e.rp)[:e.rp_len]))
    waitq = []
    j = self.wq_head
    while j != self.wq_tail:
        waitq.append((<char *>&self.waitq[j & (self.wq_size - 1)])[:sizeof(WaitQ)])
        j += 1
    head = {"flow_size": sizeof(Flow), "real_size": sizeof(Real), "frag_size": sizeof(Frag),
            "wq_size": sizeof(WaitQ), "cap": self.cap, "hand": self.hand, "sweep": self.sweep,
            "max_reals": MAX_REALS, "frag_slots": FRAG_SLOTS, "k0": self.k0, "k1": self.k1,
            "outer_id": self.outer_id}
    return snapfmt.pack(head, n, flows, (<char *>self.freel)[:self.nfree * sizeof(uint32_t)],
                        (<char *>self.reals)[:MAX_REALS * sizeof(Real)],
                        (<char *>self.frags)[:FRAG_SLOTS * sizeof(Frag)], waitq, rp,
                        self.counters())


cdef object api_import_state(Engine self, data):
    expect = {"flow_size": sizeof(Flow), "real_size": sizeof(Real), "frag_size": sizeof(Frag),
              "wq_size": sizeof(WaitQ), "cap": self.cap, "max_reals": MAX_REALS,
              "frag_slots": FRAG_SLOTS, "wq_cap": self.wq_size}
    rev_modes = {m for m in range(256) if XMIT[m].rev != NULL}
    s = snapfmt.parse(data, expect, defs.COUNTERS, rev_modes)
    cdef const uint8_t[::1] rec
    cdef uint32_t k, j, idx, n
    cdef Flow *e
    cdef uint8_t **bufs = <uint8_t **>calloc(len(s.rp) + 1, sizeof(uint8_t *))
    if bufs == NULL:
        raise MemoryError()
    rp_items = sorted(s.rp.items())
    for k, (idx, req) in enumerate(rp_items):
        bufs[k] = <uint8_t *>malloc(len(req) + 1)
        if bufs[k] == NULL:
            for j in range(k):
                free(bufs[j])
            free(bufs)
            raise MemoryError()
        if len(req):
            rec = req
            memcpy(bufs[k], &rec[0], len(req))
    # from here on nothing fails: the engine takes the snapshot's tables
    if self.nused:
        # (a fresh engine's table and indexes are zero: its pages stay untouched; the other
        # fields of an unused entry are never read)
        for k in range(self.cap):
            free(self.fl[k].rp)
            self.fl[k].rp = NULL
            self.fl[k].used = 0
        memset(self.ifwd, 0, (self.mask + 1) * sizeof(uint64_t))
        memset(self.irev, 0, (self.mask + 1) * sizeof(uint64_t))
    cdef const uint8_t[::1] raw = s.flows
    cdef uint32_t step = 4 + sizeof(Flow)
    for k in range(len(s.flow_idx)):
        memcpy(&idx, &raw[k * step], 4)
        e = &self.fl[idx]
        memcpy(e, &raw[k * step + 4], sizeof(Flow))
        e.rp = NULL
        flow_insert(self, self.ifwd, e.hf, idx)
        if e.flags & F_REV:
            flow_insert(self, self.irev, e.hr, idx)
    for k, (idx, req) in enumerate(rp_items):
        self.fl[idx].rp = bufs[k]
    free(bufs)
    cdef const uint32_t[::1] fr = s.freel
    self.nfree = len(s.freel)
    if self.nfree:
        memcpy(self.freel, &fr[0], self.nfree * sizeof(uint32_t))
    self.nused = len(s.flow_idx)
    self.hand, self.sweep = s.hand, s.sweep
    rec = s.reals
    memcpy(self.reals, &rec[0], MAX_REALS * sizeof(Real))
    rec = s.frags
    memcpy(self.frags, &rec[0], FRAG_SLOTS * sizeof(Frag))
    self.wq_head = self.wq_tail = 0
    for w in s.waitq:
        self.waitq[self.wq_tail & (self.wq_size - 1)] = WaitQ(w[0], w[1], w[2], w[3])
        self.wq_tail += 1
    for k, name in enumerate(defs.COUNTERS):
        self.ctr[k] = s.counters.get(name, 0)
    self.k0, self.k1 = s.k0, s.k1
    self.outer_id = s.outer_id
    vip_conns_recount(self)
    services_recap(self)
    return len(s.flow_idx)
