# engine: the Engine object, its state and its Python API (docs/interfaces.md). Twin:
# twin/engine.py, the same methods in the same order.
#
# Invariants:
# - A method that does more than set an attribute is one call of its concern's routine:
#   Engine.x(...) is api_x(self, ...) in flowtable.pxi, serve.pxi or splice.pxi.
# - All state is C memory owned by the object (malloc'd in __cinit__, freed in __dealloc__);
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
    cdef uint32_t newlen    # a frame made in place (splice, tunnel) sets its length here, else 0
    cdef uint32_t rowcap    # bytes a frame made in place may take (the batch's row)
    cdef bint partial       # the frame's L4 checksum is partial (vnet NEEDS_CSUM)
    cdef uint8_t *vnet      # the current frame's virtio-net header (NULL without one)
    cdef bint keep_vnet     # the routine kept a partial checksum: do not clear the header
    cdef bint vnet_tnl      # the header is the long one (VNET_TNL_HDR_LEN): UDP-tunnel GSO
    cdef uint16_t outer_id  # tunnel: the IP id of the latest outer packet to be fragmented
    cdef uint8_t opts[40]   # a frame's IP options while its routine runs (serve.pxi opts_aside)
    cdef Frag *frags        # FRAG_SLOTS datagrams whose first fragment was sent (frag.pxi)
    cdef WaitQ *waitq       # splice flows Python may have to look at (a ring of wq_size)
    cdef uint32_t wq_head, wq_tail, wq_size
    cdef list wq_other      # due entries of the other splice-like mode, (mode, entry), until
                            # that mode's handler asks (splice_waiting(now, mode))
    cdef PyThread_type_lock lock
    cdef int want           # threads waiting in acquire(): serve() lets them in first

    def __cinit__(self, capacity, timeouts=None):
        if not isinstance(capacity, int) or not 1 <= capacity <= (1 << 24):
            raise ValueError("capacity must be an integer 1..16777216, got %r" % (capacity,))
        cdef uint64_t size = 16
        while size < 2 * <uint64_t>capacity:
            size <<= 1
        self.cap = capacity
        self.mask = size - 1
        self.fl = <Flow *>calloc(capacity, sizeof(Flow))
        self.ifwd = <uint64_t *>calloc(size, sizeof(uint64_t))
        self.irev = <uint64_t *>calloc(size, sizeof(uint64_t))
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
        self.wq_head = self.wq_tail = 0
        self.wq_other = []
        self.lock = PyThread_allocate_lock()
        self.want = 0
        if not (self.lock and self.fl and self.ifwd and self.irev and self.freel and self.reals
                and self.svcs and self.svc_slot and self.ctr and self.waitq and self.frags):
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
        self.set_timeouts(timeouts or {})

    def __dealloc__(self):
        cdef uint32_t k
        if self.fl:
            for k in range(self.cap):
                free(self.fl[k].rp)
        free(self.waitq)
        free(self.frags)
        free(self.fl); free(self.ifwd); free(self.irev); free(self.freel); free(self.reals)
        free(self.svcs); free(self.svc_slot); free(self.ctr)
        free(self.tab); free(self.wts)
        free(self.l7r); free(self.pools); free(self.blob)
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
            r.mss, r.nosack = 0, 0        # another backend: what was learnt is not its
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
        frame), or None when there is no such flow or the backend's MAC is unknown.

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
