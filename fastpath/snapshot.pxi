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
#   indexes are rebuilt from the flows' hashes.


cdef object api_export_state(Engine self):
    cdef Flow tmp
    cdef uint32_t k, j
    cdef Flow *e
    flows = []
    rp = []
    for k in range(self.cap):
        e = &self.fl[k]
        if e.used:
            memcpy(&tmp, e, sizeof(Flow))
            tmp.rp = NULL
            flows.append((k, (<char *>&tmp)[:sizeof(Flow)]))
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
    return snapfmt.pack(head, flows, (<char *>self.freel)[:self.nfree * sizeof(uint32_t)],
                        (<char *>self.reals)[:MAX_REALS * sizeof(Real)],
                        (<char *>self.frags)[:FRAG_SLOTS * sizeof(Frag)], waitq, rp,
                        self.counters())


cdef object api_import_state(Engine self, data):
    expect = {"flow_size": sizeof(Flow), "real_size": sizeof(Real), "frag_size": sizeof(Frag),
              "wq_size": sizeof(WaitQ), "cap": self.cap, "max_reals": MAX_REALS,
              "frag_slots": FRAG_SLOTS, "wq_cap": self.wq_size}
    rev_modes = {m for m in range(256) if XMIT[m].rev != NULL}
    s = snapfmt.parse(data, expect, defs.COUNTERS, flow_hash, rev_modes)
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
    for k in range(self.cap):        # (the other fields of an unused entry are never read)
        free(self.fl[k].rp)
        self.fl[k].rp = NULL
        self.fl[k].used = 0
    memset(self.ifwd, 0, (self.mask + 1) * sizeof(uint64_t))
    memset(self.irev, 0, (self.mask + 1) * sizeof(uint64_t))
    for idx, r in s.flows:
        rec = r
        e = &self.fl[idx]
        memcpy(e, &rec[0], sizeof(Flow))
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
    self.nused = len(s.flows)
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
    return len(s.flows)
