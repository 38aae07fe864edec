# sync: flow entries as records for the peer instances of a cluster, and back (IPVS-style
# connection sync; lb/flowsync.py carries the datagrams). Twin: twin/sync.py, the same bytes.
#
# A datagram is a header and `count` records, network byte order, no padding:
#
#     header  u8 magic (SYNC_MAGIC), u8 version (SYNC_VERSION), u16 count
#     record  (SYNC_REC_LEN = 64 bytes)
#       0 u32 cip     4 u32 vip     8 u16 cport   10 u16 vport  12 u8 proto   13 u8 mode
#      14 u8 state   15 u8 flags (F_FIN_C F_FIN_S F_SEEN F_INLINE F_RP_FIN; never F_REV)
#      16 u32 rip    20 u16 rport
#      splice only (0 in the other modes): 22 u16 mss  24 u32 c_isn  28 u32 l_isn
#      32 u32 delta  36 u32 ts_off  40 u32 c_tsval  44 u32 b_tsval  48 u16 c_win  50 u8 ws_c
#      51 u8 ws_b  52 u8 ws_lb  53 u8 sopt  54 u16 the backend's learnt MSS (Real.mss, 0: none)
#      56 u8 bit 0: the backend offered no SACK (Real.nosack)  57..59 zero
#      60 u32 the low 32 bits of flow_hash(cip, vip, cport, vport, proto)
#
# Invariants:
# - Export (sync_export): a flow of nat, dsr, tunnel or splice with a backend (a splice flow
#   once spliced and its request no longer held for a replay; hop flows are never sent) is
#   due once it has seen sync_thr frames here (a SYN flood sends nothing), and then again
#   whenever its state is not the one last sent (Flow.sync_st), and every sync_period ms
#   while frames pass here. The scan goes round the table from a hand, so successive calls
#   share the work and every entry is looked at once a lap.
# - Import (sync_import) checks every record before it takes it: a record failing a check
#   is counted sync_malformed; a valid one this engine cannot take (no such service, its
#   mode differs, no real with that address and port, a hop flow, a backend-side 4-tuple a
#   live flow here holds: flow_rev_clash) sync_refused; the rest
#   create a flow (sync_imported, never flow_created) or update the one on that key
#   (sync_updated). Its last and sync_at are the import time, sync_st its state: it is not
#   sent back, and the normal timeouts expire it. Its frame counters start at 0 here.
# - Everything a mode's per-frame routines read of a flow travels: the key, backend, state
#   and flags (nat, dsr; tunnel's outer source port is the flow hash's), and splice's
#   translation (delta, ts_off, window scales, options, ISNs, latest TSvals and window),
#   with the backend's learnt MSS/SACK for a real that has not learnt its own.


cdef inline bint sync_due(Engine self, Flow *e, int64_t now, bint full) noexcept nogil:
    """Whether flow e goes into an export now (full: a dump, every flow that can travel)."""
    if not e.used or e.real < 0:
        return False
    if e.mode != MODE_NAT and e.mode != MODE_DSR and e.mode != MODE_TUNNEL:
        if e.mode != MODE_SPLICE:
            return False
        if e.state == S_SPL_WAIT or e.state == S_SPL_CONNECTING or e.rp != NULL:
            return False
    if full:
        return True
    if e.pkts_fwd + e.pkts_rev < self.sync_thr:
        return False
    if e.sync_st != e.state:
        return True
    return e.last > e.sync_at and now - e.sync_at >= self.sync_period


cdef void sync_record(Engine self, uint8_t *r, Flow *e) noexcept nogil:
    """Flow e as a record at r (SYNC_REC_LEN bytes)."""
    cdef Real *rl = &self.reals[e.real]
    memset(r, 0, SYNC_REC_LEN)
    wr32(r, e.cip)
    wr32(r + 4, e.vip)
    wr16(r + 8, e.cport)
    wr16(r + 10, e.vport)
    r[12], r[13], r[14] = e.proto, e.mode, e.state
    r[15] = e.flags & ~F_REV
    wr32(r + 16, e.rip)
    wr16(r + 20, e.rport)
    if e.mode == MODE_SPLICE:
        wr16(r + 22, e.mss)
        wr32(r + 24, e.c_isn)
        wr32(r + 28, e.l_isn)
        wr32(r + 32, e.delta)
        wr32(r + 36, e.ts_off)
        wr32(r + 40, e.c_tsval)
        wr32(r + 44, e.b_tsval)
        wr16(r + 48, e.c_win)
        r[50], r[51], r[52], r[53] = e.ws_c, e.ws_b, e.ws_lb, e.sopt
        wr16(r + 54, rl.mss)
        r[56] = 1 if rl.nosack else 0
    wr32(r + 60, <uint32_t>(e.hf & 0xFFFFFFFFULL))


cdef uint32_t sync_scan(Engine self, uint8_t *out, uint32_t maxn, int64_t now,
                        bint full, uint32_t *at) noexcept nogil:
    """Records of due flows into out (after its header) from entry *at on, at most maxn,
    going at most once round the table (a dump: to the end of it); *at ends after the last
    entry looked at. A delta export marks what it sent (sync_st, sync_at)."""
    cdef uint32_t n = 0, k, j = at[0], seen = 0
    cdef Flow *e
    while n < maxn and seen < self.cap:
        if full and j >= self.cap:
            break
        k = j % self.cap
        e = &self.fl[k]
        if sync_due(self, e, now, full):
            sync_record(self, out + SYNC_HDR_LEN + n * SYNC_REC_LEN, e)
            if not full:
                e.sync_st, e.sync_at = e.state, now
            n += 1
        j = j + 1 if full else (k + 1) % self.cap
        seen += 1
    at[0] = j
    self.ctr[C_SYNC_EXPORTED] += n
    return n


cdef int sync_check(const uint8_t *r) noexcept nogil:
    """A record's checks: 0 when it is well formed, 1 malformed, 2 a hop flow (refused)."""
    cdef uint8_t proto = r[12], mode = r[13], state = r[14], k
    if proto != PROTO_TCP and proto != PROTO_UDP:
        return 1
    if mode != MODE_NAT and mode != MODE_DSR and mode != MODE_TUNNEL and mode != MODE_SPLICE:
        return 2 if mode == MODE_HOP else 1
    if r[15] & ~(F_FIN_C | F_FIN_S | F_SEEN | F_INLINE | F_RP_FIN):
        return 1
    if rd32(r + 16) == 0:
        return 1
    if rd32(r + 60) != <uint32_t>(_flow_hash(rd32(r), rd32(r + 4), rd16(r + 8), rd16(r + 10),
                                             proto) & 0xFFFFFFFFULL):
        return 1
    if r[57] or r[58] or r[59]:
        return 1
    if mode == MODE_SPLICE:
        if proto != PROTO_TCP or state < S_ESTABLISHED or state > S_CLOSE:
            return 1
        if (r[50] > 14 and r[50] != 0xF) or r[51] > 14 or r[52] > 14 or r[53] > 3 or r[56] > 1:
            return 1
        return 0
    for k in range(22, 57):
        if r[k]:
            return 1
    if proto == PROTO_UDP:
        return 0 if state == S_UDP else 1
    return 0 if state <= S_CLOSE else 1


cdef int sync_take(Engine self, const uint8_t *r, int32_t real, Service *sv,
                   int64_t now) noexcept nogil:
    """A checked record with its service and this engine's real: create the flow, or update
    the one on its key. Returns the counter it moved."""
    cdef uint32_t cip = rd32(r), vip = rd32(r + 4)
    cdef uint16_t cport = rd16(r + 8), vport = rd16(r + 10)
    cdef uint8_t proto = r[12], mode = r[13]
    cdef uint64_t h = _flow_hash(cip, vip, cport, vport, proto)
    cdef int32_t idx = flow_find(self, self.ifwd, h, cip, vip, cport, vport, proto, False)
    cdef Flow *e
    cdef Real *rl = &self.reals[real]
    cdef int ctr = C_SYNC_UPDATED
    if XMIT[mode].rev != NULL and (idx < 0 or self.fl[idx].real != real):
        # a live flow here on the backend-side key this record would enter: it stays
        if flow_rev_clash(self, rl.ip, cip, rl.port, cport, proto, now) >= 0:
            return C_SYNC_REFUSED
    if idx >= 0:
        e = &self.fl[idx]
        if e.mode != mode:
            return C_SYNC_REFUSED
        if e.real != real:
            if e.flags & F_REV:
                flow_unlink(self, self.irev, e.hr, idx, True)
                e.flags &= ~F_REV
            if e.real >= 0:
                self.reals[e.real].conns -= 1
            rl.conns += 1
            e.real = real
            e.rip, e.rport = rl.ip, rl.port
            e.hr = _flow_hash(rl.ip, cip, rl.port, cport, proto)
            if XMIT[mode].rev != NULL:
                flow_insert_rev(self, idx)
        if e.rp != NULL:
            free(e.rp)
            e.rp = NULL
        e.rp_len = 0
    else:
        idx = flow_alloc(self, now)
        e = &self.fl[idx]
        e.cip, e.vip, e.cport, e.vport, e.proto, e.mode = cip, vip, cport, vport, proto, mode
        e.rip, e.rport, e.real, e.used, e.flags = rl.ip, rl.port, real, 1, 0
        e.hf = h
        e.hr = _flow_hash(rl.ip, cip, rl.port, cport, proto)
        e.created = now
        e.pkts_fwd = e.pkts_rev = e.bytes_fwd = e.bytes_rev = 0
        e.rp, e.rp_len = NULL, 0
        flow_insert(self, self.ifwd, h, idx)
        if XMIT[mode].rev != NULL:
            flow_insert_rev(self, idx)
        rl.conns += 1
        e.vslot = sv.slot
        self.vctr[sv.slot].conns += 1
        self.nused += 1
        ctr = C_SYNC_IMPORTED
    e.state = r[14]
    e.flags = (e.flags & F_REV) | r[15]
    e.last = now
    e.sync_st, e.sync_at = e.state, now
    if mode == MODE_SPLICE:
        e.mss = rd16(r + 22)
        e.c_isn, e.l_isn = rd32(r + 24), rd32(r + 28)
        e.delta, e.ts_off = rd32(r + 32), rd32(r + 36)
        e.c_tsval, e.b_tsval = rd32(r + 40), rd32(r + 44)
        e.c_win = rd16(r + 48)
        e.ws_c, e.ws_b, e.ws_lb, e.sopt = r[50], r[51], r[52], r[53]
        if rl.mss == 0 and rd16(r + 54) != 0:
            rl.mss, rl.nosack = rd16(r + 54), r[56]     # what the peer learnt of it
            splice_cap(sv, rl)
    return ctr


cdef int32_t sync_real(int32_t *rix, uint32_t ip, uint16_t port) noexcept nogil:
    """The lowest real slot with this address and port in rix (sync_reals), or -1."""
    cdef uint64_t key = (<uint64_t>ip << 16) | port
    cdef uint32_t j = <uint32_t>(_mix64(key) & (2 * MAX_REALS - 1))
    while rix[j] >= 0:
        if rix[2 * MAX_REALS + j] == <int32_t>(key >> 16) and rix[4 * MAX_REALS + j] == port:
            return rix[j]
        j = (j + 1) & (2 * MAX_REALS - 1)
    return -1


cdef void sync_reals(Engine self, int32_t *rix) noexcept nogil:
    """An index of the real slots by address and port (slot, ip, port arrays of
    2 * MAX_REALS open-addressing entries), the lowest slot first."""
    cdef uint32_t k, j
    cdef uint64_t key
    for k in range(2 * MAX_REALS):
        rix[k] = -1
    for k in range(MAX_REALS):
        if self.reals[k].ip == 0 and self.reals[k].port == 0:
            continue
        if sync_real(rix, self.reals[k].ip, self.reals[k].port) >= 0:
            continue
        key = (<uint64_t>self.reals[k].ip << 16) | self.reals[k].port
        j = <uint32_t>(_mix64(key) & (2 * MAX_REALS - 1))
        while rix[j] >= 0:
            j = (j + 1) & (2 * MAX_REALS - 1)
        rix[j] = k
        rix[2 * MAX_REALS + j] = <int32_t>self.reals[k].ip
        rix[4 * MAX_REALS + j] = self.reals[k].port


# ---- the API's bodies (engine.pxi) --------------------------------------------------------
cdef object sync_pack(Engine self, uint32_t maxn, int64_t now, bint full, uint32_t *at):
    """A datagram of at most maxn records from sync_scan, or b"" when none was due."""
    cdef uint32_t n
    out = bytearray(SYNC_HDR_LEN + maxn * SYNC_REC_LEN)
    cdef uint8_t[::1] buf = out
    n = sync_scan(self, &buf[0], maxn, now, full, at)
    if n == 0:
        return b""
    buf[0], buf[1] = SYNC_MAGIC, SYNC_VERSION
    wr16(&buf[2], <uint16_t>n)
    return bytes(out[:SYNC_HDR_LEN + n * SYNC_REC_LEN])


cdef object api_sync_export(Engine self, max_records, int64_t now_ms):
    cdef uint32_t maxn = check_sync_max(max_records)
    cdef uint32_t at = self.sync_hand
    data = sync_pack(self, maxn, now_ms, False, &at)
    self.sync_hand = at
    return data


cdef object api_sync_dump(Engine self, cursor, max_records):
    cdef uint32_t maxn = check_sync_max(max_records)
    cdef uint32_t at = check_sync_cursor(cursor, self.cap)
    data = sync_pack(self, maxn, 0, True, &at)
    return data, at


cdef object api_sync_import(Engine self, data, int64_t now_ms):
    cdef const uint8_t[::1] buf
    try:
        buf = memoryview(data).cast("B")
    except (TypeError, ValueError):
        raise ValueError("sync data must be bytes, got %s" % type(data).__name__) from None
    cdef uint32_t n, k, taken = 0, refused = 0
    cdef const uint8_t *r
    cdef int c
    cdef int32_t real
    cdef Service *sv
    if (buf.shape[0] < SYNC_HDR_LEN or buf[0] != SYNC_MAGIC or buf[1] != SYNC_VERSION
            or buf.shape[0] != SYNC_HDR_LEN + rd16(&buf[2]) * SYNC_REC_LEN):
        self.ctr[C_SYNC_MALFORMED] += 1
        return 0, 0
    n = rd16(&buf[2])
    if n == 0:
        return 0, 0
    cdef int32_t *rix = <int32_t *>malloc(6 * MAX_REALS * sizeof(int32_t))
    if rix == NULL:
        raise MemoryError()
    sync_reals(self, rix)
    for k in range(n):
        r = &buf[SYNC_HDR_LEN + k * SYNC_REC_LEN]
        c = sync_check(r)
        if c == 1:
            self.ctr[C_SYNC_MALFORMED] += 1
            refused += 1
            continue
        sv = service_find(self, rd32(r + 4), rd16(r + 10), r[12])
        real = sync_real(rix, rd32(r + 16), rd16(r + 20)) if c == 0 else -1
        if c == 2 or sv == NULL or sv.mode != r[13] or real < 0:
            self.ctr[C_SYNC_REFUSED] += 1
            refused += 1
            continue
        c = sync_take(self, r, real, sv, now_ms)
        self.ctr[c] += 1
        if c == C_SYNC_REFUSED:
            refused += 1
        else:
            taken += 1
    free(rix)
    return taken, refused
