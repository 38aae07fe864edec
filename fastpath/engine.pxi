# engine: the Engine object, its state and its Python API (docs/interfaces.md). Twin:
# twin/engine.py, the same methods in the same order.
#
# Invariants:
# - A method that does more than set an attribute is one call of its concern's routine:
#   Engine.x(...) is api_x(self, ...) in flowtable.pxi, serve.pxi or splice.pxi.
# - All state is C memory owned by the object (allocated in __cinit__, freed in __dealloc__;
#   the flow entries and both indexes in 2 MB pages where the kernel has them, tw_huge_calloc,
#   which aligns every table to a cache line);
#   the per-packet routines take the Engine as a borrowed pointer and touch no Python object.
# - Control calls check every argument before changing anything: a bad call raises and the
#   engine stays as it was.


cdef class Engine:
    """See docs/interfaces.md; the same public API as fastpath.twin.engine.Engine."""
    # the flow table (flowtable.pxi)
    cdef Flow *fl           # cap entries
    cdef uint64_t *ifwd     # forward index (client -> VIP key): (hash >> 32) << 32 | entry + 1
    cdef uint64_t *irev     # reverse index (backend -> client key), the same slots
    cdef uint32_t *freel    # free entries, a stack of nfree
    cdef uint32_t nfree, cap, hand, sweep, nused   # hand: eviction's clock; sweep: expire()'s
    cdef uint64_t mask      # index slots - 1 (a power of two >= 2 * cap)
    cdef int64_t tmo[16]    # ms of idle time after which a flow in state S_* is over
    # what the control side set
    cdef Real *reals        # MAX_REALS backends, by the control side's index
    cdef Service *svcs      # nsvc services, found by vip/port/proto through svc_slot
    cdef uint32_t nsvc
    cdef int32_t *svc_slot  # SVC_SLOTS open-addressing slots: index into svcs, or -1
    cdef int32_t *tab       # every service's and pool's scheduler table, end to end
    cdef int32_t *wts       # their weights, parallel to tab
    cdef L7Rule *l7r        # splice content rules, per service a run of them
    cdef Service *pools     # the rules' pools (sched, off, n, cursor only)
    cdef uint8_t *blob      # the rules' arguments, end to end
    cdef uint32_t local_ip
    cdef uint8_t local_mac[6]
    cdef uint8_t gw_mac[6]  # the next hop towards clients, when has_gw
    cdef uint8_t has_gw
    cdef uint64_t k0, k1    # the SYN-cookie key
    # per burst and per frame (serve.pxi)
    cdef uint64_t *ctr      # N_COUNTERS counters, by defs.C index
    cdef uint64_t hint_h    # the current frame's flow hash as the burst computed it (0: none)
    cdef Service *hint_sv   # and the service of its destination (NULL: none); only with hint_h
    cdef uint32_t newlen    # a frame made in place (splice, tunnel) sets its length here, else 0
    cdef uint32_t rowcap    # bytes a frame made in place may take (the batch's row)
    cdef bint partial       # the frame's L4 checksum is partial (vnet NEEDS_CSUM)
    cdef uint8_t *vnet      # the current frame's virtio-net header (NULL without one)
    cdef bint keep_vnet     # the routine kept a partial checksum: do not clear the header
    cdef bint vnet_tnl      # the header is the long one (VNET_TNL_HDR_LEN): UDP-tunnel GSO
    cdef uint16_t outer_id  # tunnel: the IP id of the latest outer packet to be fragmented
    cdef uint8_t opts[40]   # a frame's IP options while its routine runs (serve.pxi opts_aside)
    cdef Frag *frags        # FRAG_SLOTS datagrams whose first fragment was sent (frag.pxi)
    cdef VipCtr *vctr       # MAX_SERVICES VIPs' counters, by Service.slot (flowtable.pxi)
    cdef WaitQ *waitq       # splice flows Python may have to look at (a ring of wq_size)
    cdef uint32_t wq_head, wq_tail, wq_size
    cdef list wq_other      # due entries of the other splice-like mode, (mode, entry), until
                            # that mode's handler asks (splice_waiting(now, mode))
    cdef PyThread_type_lock lock
    cdef int want           # threads waiting in acquire(): serve() lets them in first
    # the watch (watch.pxi): off (watch_on 0, nothing allocated) unless the control side set
    # one; then each frame goes through watch_frame, and matching ones are recorded
    cdef bint watch_on
    cdef WatchTerm wterm[8] # the filter: wnterm terms, all of which must hold
    cdef uint32_t wnterm
    cdef WatchRec *wring    # wsize records, a ring: wcount of them from wfirst on
    cdef uint8_t *wbytes    # (wsize + 1) * 2 * wsnap bytes: each record's frames; the last
                            # slot is scratch for a frame that finds the ring full
    cdef uint64_t *wctr     # the counters before the frame (to tell what it moved)
    cdef uint32_t wsize, wfirst, wcount, wsnap
    cdef uint64_t wseen, wlost  # frames that matched; of them, lost to a full ring
    # flow sync (sync.pxi): the export policy and where the next export's scan starts
    cdef uint32_t sync_thr      # frames a flow must have seen before it is sent
    cdef int64_t sync_period    # ms after which a flow with frames since is sent again
    cdef uint32_t sync_hand

    def __cinit__(self, capacity, timeouts=None):
        if not isinstance(capacity, int) or not 1 <= capacity <= (1 << 24):
            raise ValueError("capacity must be an integer 1..16777216, got %r" % (capacity,))
        cdef uint64_t size = 16
        while size < 2 * <uint64_t>capacity:
            size <<= 1
        self.cap = capacity
        self.mask = size - 1
        self.fl = <Flow *>tw_huge_calloc(capacity * sizeof(Flow))
        self.ifwd = <uint64_t *>tw_huge_calloc(size * sizeof(uint64_t))
        self.irev = <uint64_t *>tw_huge_calloc(size * sizeof(uint64_t))
        self.freel = <uint32_t *>malloc(capacity * sizeof(uint32_t))
        self.reals = <Real *>calloc(MAX_REALS, sizeof(Real))
        self.svcs = <Service *>calloc(MAX_SERVICES, sizeof(Service))
        self.svc_slot = <int32_t *>malloc(SVC_SLOTS * sizeof(int32_t))
        self.ctr = <uint64_t *>calloc(N_COUNTERS, sizeof(uint64_t))
        self.wq_size = SPLICE_WAITQ_MIN
        while self.wq_size < <uint32_t>capacity:
            self.wq_size <<= 1
        self.waitq = <WaitQ *>malloc(self.wq_size * sizeof(WaitQ))
        self.frags = <Frag *>calloc(FRAG_SLOTS, sizeof(Frag))
        self.vctr = <VipCtr *>calloc(MAX_SERVICES, sizeof(VipCtr))
        self.wq_head = self.wq_tail = 0
        self.wq_other = []
        self.lock = PyThread_allocate_lock()
        self.want = 0
        if not (self.lock and self.fl and self.ifwd and self.irev and self.freel and self.reals
                and self.svcs and self.svc_slot and self.ctr and self.waitq and self.frags and self.vctr):
            raise MemoryError()
        cdef uint32_t k
        for k in range(capacity):
            self.freel[k] = capacity - 1 - k     # pops 0, 1, 2 ... like the twin
        self.nfree = capacity
        for k in range(SVC_SLOTS):
            self.svc_slot[k] = -1
        self.tab = NULL
        self.wts = NULL
        self.l7r = NULL
        self.pools = NULL
        self.blob = NULL
        self.watch_on = 0
        self.wring = NULL
        self.wbytes = NULL
        self.wctr = NULL
        self.wnterm = self.wsize = self.wfirst = self.wcount = self.wsnap = 0
        self.wseen = self.wlost = 0
        self.sync_thr, self.sync_period, self.sync_hand = SYNC_THRESHOLD, SYNC_PERIOD_MS, 0
        self.set_timeouts(timeouts or {})

    def __dealloc__(self):
        cdef uint32_t k
        if self.fl:
            for k in range(self.cap):
                free(self.fl[k].rp)
        free(self.waitq)
        free(self.frags)
        free(self.vctr)
        tw_huge_free(self.fl, self.cap * sizeof(Flow))
        tw_huge_free(self.ifwd, (self.mask + 1) * sizeof(uint64_t))
        tw_huge_free(self.irev, (self.mask + 1) * sizeof(uint64_t))
        free(self.freel); free(self.reals)
        free(self.svcs); free(self.svc_slot); free(self.ctr)
        free(self.tab); free(self.wts)
        free(self.l7r); free(self.pools); free(self.blob)
        free(self.wring); free(self.wbytes); free(self.wctr)
        if self.lock:
            PyThread_free_lock(self.lock)

    # ---- the engine lock (lb/workers.py) --------------------------------------------------
    def acquire(self):
        """Take the engine lock, waiting without the GIL. serve() takes it for every burst and
        returns holding it; a thread that waits here gets it before serve's next burst."""
        with nogil:
            tw_atomic_add(&self.want, 1)
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
            tw_atomic_add(&self.want, -1)

    def release(self):
        PyThread_release_lock(self.lock)

    # ---- control side ---------------------------------------------------------------------
    def set_timeouts(self, timeouts):
        t = dict(defs.DEFAULT_TIMEOUTS)
        for k, v in timeouts.items():
            if k not in t:
                raise ValueError("unknown timeout %r" % (k,))
            if not isinstance(v, (int, float)) or v <= 0:
                raise ValueError("timeout %s must be > 0, got %r" % (k, v))
            t[k] = v
        for i, k in enumerate(defs.TIMEOUT_KEYS):
            self.tmo[i] = int(t[k] * 1000)

    def set_local(self, ip, mac):
        cdef bytes m = check_mac(mac)
        self.local_ip = check_ip(ip)
        memcpy(self.local_mac, <const char *>m, 6)

    def set_splice_secret(self, secret):
        """The SYN-cookie key (16 bytes, random per LB or shared by LBs that must accept
        each other's cookies)."""
        self.k0, self.k1 = check_secret(secret)

    def set_gateway(self, mac):
        cdef bytes m
        if mac is None:
            self.has_gw = 0
        else:
            m = check_mac(mac)
            memcpy(self.gw_mac, <const char *>m, 6)
            self.has_gw = 1

    def set_real(self, idx, ip, port, mac):
        check_real_idx(idx)
        cdef bytes m = None if mac is None else check_mac(mac)
        cdef uint32_t ipv = check_ip(ip)
        cdef uint16_t portv = check_port(port)
        cdef Real *r = &self.reals[<int>idx]
        if r.ip != ipv or r.port != portv:
            r.mss, r.nosack = 0, 0        # another backend: what was learnt is not its,
            r.flows = r.pkts_fwd = r.pkts_rev = r.bytes_fwd = r.bytes_rev = 0   # nor counted
        r.ip = ipv
        r.port = portv
        if m is None:
            r.has_mac = 0
        else:
            memcpy(r.mac, <const char *>m, 6)
            r.has_mac = 1

    def real_conns(self, idx):
        check_real_idx(idx)
        return self.reals[<int>idx].conns

    def set_real_up(self, idx, up):
        """Health: a down real keeps its flows unless their service has SVC_EXPIRE_NODEST.
        (Leaving it out of new-flow tables is the control side's job.)"""
        check_real_idx(idx)
        self.reals[<int>idx].down = 0 if up else 1

    def set_services(self, specs):
        api_set_services(self, specs)

    def pick(self, vip, vport, pool, cip, cport):
        """The real a new TCP flow cip:cport -> vip:vport goes to, picked as the fast path
        picks (the same tables, the same rr cursors): from the service's own table (pool -1)
        or from its content-rule pool `pool` (an index into its L7Spec.pools). -1 when there
        is no such service or the table is empty; ValueError for a bad argument. The splice
        punt handler decides in Python and asks here (modes/splice/vip.py)."""
        return api_pick(self, vip, vport, pool, cip, cport)

    def counters(self):
        return {name: self.ctr[i] for i, name in enumerate(defs.COUNTERS)}

    def flow_count(self):
        return self.nused

    def flows(self):
        return api_flows(self)

    def expire(self, int64_t now_ms, budget):
        return api_expire(self, now_ms, budget)

    def real_stats(self, idx):
        """Metrics of real idx: (conns, flows, pkts_fwd, pkts_rev, bytes_fwd, bytes_rev):
        flows bound now, flows ever bound, frames and bytes sent on its flows (fwd: client
        -> backend). Zeroed when set_real gives the slot another ip:port."""
        return api_real_stats(self, idx)

    def vip_stats(self, slot):
        """Metrics of VIP counter slot `slot` (ServiceSpec.slot): (conns, flows, pkts_fwd,
        pkts_rev, bytes_fwd, bytes_rev), as real_stats. They survive set_services; a service
        of another vip/port/proto taking the slot zeroes all but conns."""
        return api_vip_stats(self, slot)

    # ---- per packet -----------------------------------------------------------------------
    def process(self, batch, int64_t now_ms):
        """Every frame of the batch: verdict, reason, rewritten in place. Returns how many
        frames were punted (V_PUNT), so the caller looks for them only when there are some."""
        return api_process(self, batch, now_ms)

    def serve(self, int fd, batch, int64_t deadline_ms):
        """One data-plane thread's loop, without the GIL: poll(fd) for frames, then bursts of
        rx -> process -> tx until the fd is drained, each burst under the engine lock, and
        again, until a burst has punted frames (the batch then holds that burst) or the
        CLOCK_MONOTONIC millisecond deadline_ms has passed, or poll() fails.
        Returns holding the engine lock (the caller handles the punts and its timers, then
        calls release()), with what it did: {wakeups, bursts, frames, rx_bytes (headers
        included), rx_gso, rx_needs_csum, tx_frames, tx_errors, tx_bytes, punts (of the last
        burst), now (ms, the clock serve used), error (errno of a failed poll, or 0)}."""
        return api_serve(self, fd, batch, deadline_ms)

    # ---- tunnel (xmit_tunnel.pxi; modes/tunnel.py is the Python side) --------------------
    def tunnel_mss(self, frame):
        """The payload bytes per segment that keep a TCP frame to a tunnel VIP within the
        VIP's MTU once encapsulated (modes/tunnel.py cuts superframes to it); 0 if the frame
        is not IPv4/TCP to a tunnel VIP."""
        return api_tunnel_mss(self, frame)

    def tunnel_segment(self, frame, batch, int first=0):
        """Cut a TCP superframe to a tunnel VIP (as punted: Ethernet onward) into segments of
        tunnel_mss(frame) payload bytes each, the kernel's GSO way (IP id counted up, FIN/PSH
        on the last, CWR on the first only, full checksums), into the rows of batch (behind a
        zeroed vnet header when batch.hdr) from segment `first` on; batch.n is set to the
        segments written. Returns (written,
        total segments), or (0, 0) when the frame is not one it can cut. Process the batch
        next: its frames are then encapsulated."""
        return api_tunnel_segment(self, frame, batch, first)

    def tunnel_frag_mtu(self, frame):
        """The path MTU of the tunnel VIP an encapsulated frame (punt_tunnel_frag's) belongs
        to, found by its inner headers (a later fragment by the fragment table), or 0."""
        return api_tunnel_frag_mtu(self, frame)

    # ---- splice (splice.pxi; modes/splice/ is the Python side) --------------------------
    def splice_flow(self, cip, cport, vip, vport):
        """The splice state Python needs to talk to the backend as the client, or None."""
        return api_splice_flow(self, cip, cport, vip, vport)

    def splice_bind(self, cip, cport, vip, vport, real, int64_t now_ms, request=b"", fin=False):
        """Bind a flow in SPL_WAIT to a backend: it enters the reverse index (the backend's
        SYN-ACK will find it) and SPL_CONNECTING. Returns our SYN to the backend (a whole
        frame), None when there is no such flow or the backend's MAC is unknown, or False
        when a live flow holds the backend-side 4-tuple (the same client port to another
        VIP on this backend: drop_rev_clash; the flow stays in SPL_WAIT).

        request (and fin: the client's FIN follows it) is what to replay. When it fits in one
        segment the fast path keeps it and answers the backend's SYN-ACK itself (counter
        splice_replay); otherwise that SYN-ACK is punted and Python replays."""
        return api_splice_bind(self, cip, cport, vip, vport, real, now_ms, request, fin)

    def splice_by_backend(self, cip, cport, rip, rport):
        """(cip, cport, vip, vport) of the splice flow bound to backend rip:rport for this
        client address and port, or None."""
        return api_splice_by_backend(self, cip, cport, rip, rport)

    def splice_syn(self, cip, cport, vip, vport):
        """Our SYN to the backend again (it was lost), or None when the flow is not waiting
        for the backend's SYN-ACK."""
        return api_splice_syn(self, cip, cport, vip, vport)

    def splice_waiting(self, int64_t now_ms, mode=MODE_SPLICE):
        """Flows Python has not seen that may need it, SPLICE_WAIT_HANDOFF_MS or longer after
        they were queued: a client silent since its cookie ACK (SPL_WAIT), or a flow bound
        here whose backend has not answered yet (SPL_CONNECTING: our SYN may be lost).
        [(cip, cport, vip, vport, queued_ms)] of flows of `mode` (splice or hop: the punt
        handler's own); they count as seen from now on. Flows that moved on are skipped."""
        return api_splice_waiting(self, now_ms, mode)

    def splice_drop(self, cip, cport, vip, vport):
        """Forget a splice flow (refused, redirected, backend never answered)."""
        return api_splice_drop(self, cip, cport, vip, vport)

    # ---- trace and watch (flowtable.pxi, watch.pxi; lb/trace.py, lb/watch.py) -----------
    def flow_get(self, src, sport, dst, dport, proto):
        """The flow a frame src:sport -> dst:dport/proto belongs to, found by a keyed lookup:
        the forward index (client -> VIP), else the reverse one (backend -> client). A dict
        of the entry (docs/interfaces.md), or None."""
        return api_flow_get(self, src, sport, dst, dport, proto)

    def explain(self, cip, cport, vip, vport, proto):
        """Where a new flow cip:cport -> vip:vport/proto would go, without moving anything
        (an rr cursor stays): {sched, table_size, hash, slot, real, l7_rules}, or None when
        there is no such service."""
        return api_explain(self, cip, cport, vip, vport, proto)

    def watch_set(self, terms, snap=2048, size=1024):
        """Watch frames matching terms (a list of (defs.W_* kind, value), all must hold;
        [] matches every frame): each is recorded, up to snap bytes of it as received and as
        sent, with its verdict, the counters it moved and its flow, into a ring of `size`
        records (full: the frame is counted lost, never waited for). None: watch off (one
        branch per frame). Resets the ring and its counts."""
        api_watch_set(self, terms, snap, size)

    def watch_drain(self, limit=None):
        """The records in the ring, oldest first, removed from it: [(ts_ns, verdict, reason,
        in_len, in_bytes, out_len, out_bytes, ((counter name, delta), ...), flow)], flow None
        or (cip, cport, vip, vport, proto, rip, rport, real, mode, state, fwd)."""
        return api_watch_drain(self, limit)

    def watch_status(self):
        """{on, terms, snap, size, pending, seen, lost}."""
        return api_watch_status(self)


    # ---- planned restart (snapshot.pxi; lb/takeover.py is the caller) --------------------
    def export_state(self):
        """The engine's flows, reals, fragment table, splice wait queue, SYN-cookie key and
        counters as bytes (fastpath/snapfmt.py): call it holding the engine lock, with no
        burst running. The services, local address, gateway and timeouts are not in it."""
        return api_export_state(self)

    def import_state(self, data):
        """Replace this engine's tables by an export_state() snapshot (of the same capacity,
        either twin); returns the flows imported. A snapshot it cannot take raises
        snapfmt.SnapshotError (a ValueError) naming what is wrong, and nothing changes."""
        return api_import_state(self, data)

    # ---- flow sync (sync.pxi; lb/flowsync.py is the caller) ------------------------------
    def set_sync(self, threshold, period_ms):
        """The export policy: a flow is sent once it has seen `threshold` frames, again when
        its state changes, and every period_ms while frames pass."""
        self.sync_thr, self.sync_period = check_sync(threshold, period_ms)

    def sync_export(self, max_records, int64_t now_ms):
        """A datagram (sync.pxi's format) of at most max_records flows due to be sent to
        the peers (new, changed, or due for a refresh), marked sent; b"" when none is due.
        Call it until it returns b"": each call goes on round the table where the last
        stopped. Hold the engine lock."""
        return api_sync_export(self, max_records, now_ms)

    def sync_dump(self, cursor, max_records):
        """Every flow that can travel, for a joining peer: (datagram or b"", next cursor)
        from entry `cursor` on; the dump is over when the cursor is the capacity. Marks
        nothing. Hold the engine lock."""
        return api_sync_dump(self, cursor, max_records)

    def sync_import(self, data, int64_t now_ms):
        """A peer's datagram: each record creates or updates its flow here. Returns (taken,
        not taken); the counters sync_imported/updated/refused/malformed say which. A
        malformed record or header is a counted drop, never an exception (bytes needed)."""
        return api_sync_import(self, data, now_ms)
