# types: the C structs every concern shares. Twin: twin/types.py (its Flow, Real, Service;
# the twin keeps a WaitQ entry as a tuple, Opts as a dict, a rule as a tuple, a request view
# as (method, path, host)).
#
# Invariants:
# - Plain C data: no Python object is reachable from any of these, so the per-packet code
#   that reads and writes them runs without the GIL.
# - Addresses and ports are host integers; times are CLOCK_MONOTONIC milliseconds.
# - A Flow is zeroed once (tw_huge_calloc) and reused in place: whoever takes a slot
#   (flow_create, splice_new) sets every field the flow's mode reads. Flow is 192 bytes and
#   Engine.fl 64-byte aligned: an entry's three cache lines are its own, and line 0 holds all
#   the established forward path of nat, dsr and tunnel reads (tests/fastpath/test_snapshot.py
#   checks the offsets through the snapshot record, which is this struct).
# - XMIT has a row per mode code (a uint8, so every code indexes it); a row a mode did not
#   fill is NULL, and a NULL routine means drop_mode.

cdef class Engine       # engine.pxi; the routines' types below take it as a borrowed pointer


cdef struct Flow:
    # 192 bytes, three cache lines; Engine.fl is 64-byte aligned, so line k of an entry is
    # bytes 64k..64k+63 of it. The established path reads only line 0 where it can: the burst
    # prefetches line 0, and line 1 only for a reverse frame or a mode whose forward routine
    # reads it (Xmit.fwd_lines). The order is also the snapshot record (snapfmt.py FLOW_HEAD,
    # twin/snapshot.py FLOW_FIELDS): a change here is a new snapfmt.VERSION.
    #
    # line 0: the forward key, the backend, state, time, and the forward counters: all that
    # the forward path of nat, dsr and tunnel reads or writes (lookup, expiry and reuse
    # checks, xmit, track, flow_account); also the reverse lookup's key
    uint32_t cip        # client address: the forward key is (cip, vip, cport, vport, proto)
    uint32_t vip        # the virtual address it connected to
    uint16_t cport      # client port
    uint16_t vport      # virtual port
    uint8_t proto       # PROTO_TCP or PROTO_UDP
    uint8_t mode        # MODE_*, pinned at creation: a VIP's new mode applies to new flows only
    uint8_t state       # S_*: TCP state as tracked (IPVS-like), S_UDP, or splice's S_SPL_*
    uint8_t flags       # F_*: FINs seen, in the reverse index, splice's seen/inline/replay-FIN
    uint32_t rip        # backend address: the reverse key is (rip, cip, rport, cport, proto)
                        # (0 while a splice flow is not bound; hop: the VIP, which its backend
                        # holds, as rport is the VIP port)
    uint16_t rport      # backend port
    uint16_t vslot      # its VIP's counter slot (Service.slot at creation): Engine.vctr
    int32_t real        # index into Engine.reals; -1 while a splice flow is not bound
    uint8_t used        # 1 while the slot holds a flow, 0 on the free list
    uint8_t sync_st     # flow sync (sync.pxi): the state last exported (SYNC_NEVER: not yet;
                        # an import sets it)
    uint16_t pad        # unused (always 0)
    int64_t last        # ms of the latest frame either way: timeouts and eviction read it
    uint64_t hf         # flow_hash of the forward key: where it sits in Engine.ifwd (and
                        # tunnel's outer UDP source port)
    uint64_t pkts_fwd   # frames client -> backend
    uint64_t bytes_fwd  # their lengths (Ethernet frames, no vnet header)
    # line 1: the reverse counters, splice's translation (and hop's check of the hand-off);
    # splice: two TCP connections joined; the client's is ours (the cookie), the backend's
    # was opened by us as the client
    uint64_t pkts_rev   # frames backend -> client
    uint64_t bytes_rev
    uint8_t *rp         # the request to replay (malloc'd; NULL once the backend acked it)
    uint32_t c_isn      # the client's ISN (our SYN to the backend reuses it)
    uint32_t l_isn      # our ISN towards the client: the cookie
    uint32_t delta      # l_isn - the backend's ISN: added to its seq, taken off the client's acks
    uint32_t ts_off     # added to the backend's TSval (the client's view continues from ours)
    uint32_t c_tsval    # the client's latest TSval
    uint32_t b_tsval    # the backend's latest TSval
    uint16_t mss        # the client's MSS, as the cookie kept it (COOKIE_MSS)
    uint16_t c_win      # the client's latest window field, unscaled (our replay announces it)
    uint8_t ws_c        # the client's window scale, as the cookie kept it; 0xF: none
    uint8_t ws_b        # the backend's window scale from its SYN-ACK; 0 when ws_c is none
    uint8_t ws_lb       # ours towards the client: SPLICE_WSCALE, or 0 when ws_c is none
    uint8_t sopt        # SOPT_*: timestamps and SACK, as negotiated with the client
    uint16_t rp_len     # length of rp (then 6 bytes of alignment padding)
    # line 2: what only creating, deleting, expiring and syncing a flow read
    uint64_t hr         # flow_hash of the reverse key: where it sits in Engine.irev (F_REV)
    int64_t created     # ms at creation (with c_isn, tells a WaitQ entry its flow is the same)
    int64_t sync_at     # flow sync: ms of the latest export, or of the import that made or
                        # updated the flow
    uint8_t resv[40]    # unused (always 0): room for fields to come, and the size a multiple
                        # of 64


cdef struct WaitQ:      # splice: a flow Python may have to look at, for splice_waiting()
    uint32_t idx        # the flow's entry
    uint32_t c_isn      # and its c_isn and created: the entry is stale when they changed
    int64_t created
    int64_t at          # when it was queued (its cookie ACK, or its binding here)


cdef struct Opts:       # offsets in the frame of the first TCP option of each kind, or -1
    int mss
    int ws
    int sackok
    int sack
    int ts


cdef struct Real:       # a backend, Engine.reals[idx]; idx is the control side's (lb/state.py)
    uint32_t ip
    uint16_t port
    uint8_t mac[6]      # its MAC (the next hop), when has_mac
    uint8_t has_mac     # 0 until the control side resolved it: drop_no_neigh
    uint8_t down        # health: flows of SVC_EXPIRE_NODEST services are expired
    uint8_t nosack      # splice: its latest SYN-ACK offered no SACK
    uint16_t mss        # splice: the MSS of its latest SYN-ACK (0: none seen yet)
    int64_t conns       # flows bound to it: lc reads it; the slot is reused only at 0
    # metrics (appended; zeroed by set_real when the slot gets another ip:port). Frames and
    # bytes as flow_account counts them for the flows bound here (fwd: client -> backend)
    uint64_t flows      # flows ever bound to it
    uint64_t pkts_fwd
    uint64_t pkts_rev
    uint64_t bytes_fwd
    uint64_t bytes_rev


cdef struct Service:    # a VIP:port/proto, or a content rule's pool (sched, off, n, cursor)
    uint32_t vip
    uint16_t port
    uint8_t proto
    uint8_t mode        # MODE_* for its new flows
    uint8_t sched       # SCHED_*: how its table is indexed per new flow
    uint8_t flags       # SVC_*
    uint32_t off        # its table: Engine.tab[off:off + n], weights Engine.wts[off:off + n]
    uint32_t n
    uint64_t cursor     # SCHED_SEQ: the next position in the table
    uint32_t l7_off     # splice content rules: Engine.l7r[l7_off:l7_off + l7_n]
    uint32_t l7_n
    uint32_t l7_limit   # request bytes the rules may read
    uint32_t pool_off   # splice content-rule pools: Engine.pools[pool_off:pool_off + pool_n]
    uint32_t pool_n
    uint32_t vni        # tunnel: VXLAN network identifier
    uint32_t mtu        # tunnel: IP MTU towards the backends
    uint16_t mss_cap    # splice: what its cookie SYN-ACK announces: SPLICE_MSS, or less when
    uint8_t nosack      # a backend of its tables announced less; no SACK when one had none
    uint16_t slot       # its counters: Engine.vctr[slot] (ServiceSpec.slot, stable per VIP)


cdef struct VipCtr:     # a VIP's counters, Engine.vctr[slot]: they outlive service swaps
    uint32_t vip        # the service that last had the slot: another one zeroes the counters
    uint16_t port       # (but not conns, which counts the flows still pointing here)
    uint8_t proto
    uint8_t used        # 1 once a service had the slot
    int64_t conns       # flows now pointing at the slot
    uint64_t flows      # flows ever created on it
    uint64_t pkts_fwd   # frames client -> backend, as flow_account counts them
    uint64_t pkts_rev   # frames backend -> client (modes with a reverse path)
    uint64_t bytes_fwd
    uint64_t bytes_rev


cdef struct L7Rule:
    uint32_t kind       # L7_*
    uint32_t pool       # index into Engine.pools
    uint32_t off        # argument: Engine.blob[off:off + len]
    uint32_t len


cdef struct HttpView:   # what the rules read of a request head
    const uint8_t *method
    int mlen
    const uint8_t *path
    int plen            # the path before any ? or #
    int hlen            # -1: no usable Host (None in modes/l7.py)
    uint8_t host[256]   # normalized: lowercase, no port, no trailing dot


cdef struct Pkt:        # what process_frame parsed of a frame, for a new-flow routine
    uint32_t src
    uint32_t dst
    uint16_t sport
    uint16_t dport
    uint8_t proto
    uint8_t tflags      # TCP flags; 0 for UDP
    uint64_t h          # flow_hash of (src, dst, sport, dport, proto): the forward key


cdef struct Icmp:       # an ICMP error's quote, as icmp_in parsed it (icmp.pxi)
    uint32_t end        # frame offset where the ICMP message ends (14 + the outer length)
    uint32_t ip         # frame offset of the quoted IP header
    uint32_t l4         # frame offset of the quoted TCP/UDP header (at least 8 bytes of it)
    uint32_t src        # the quoted packet's addresses, ports and protocol
    uint32_t dst
    uint16_t sport
    uint16_t dport
    uint8_t proto
    uint64_t h          # flow_hash of the flow's forward key (client side) or reverse key


cdef struct Frag:       # a datagram whose first fragment was sent (frag.pxi)
    uint32_t src        # its key as it came in: addresses, IP id, protocol
    uint32_t dst
    uint16_t ident
    uint8_t proto
    uint8_t fwd         # 1: client -> backend, 0: backend -> client
    uint8_t used
    uint32_t idx        # the flow, and its created (the slot may have been reused since)
    int64_t created
    int64_t at          # ms when the first fragment passed


# One mode's per-packet routines, one signature per role, bound by the flow's mode code as
# IPVS binds packet_xmit once per connection. new_flow: a frame to one of the mode's VIPs
# with no flow (make one and send the frame on it, or answer it); fwd: client -> VIP on the
# flow; rev: backend -> client on it, NULL when the mode has no reverse path (the flow then
# stays out of the reverse index); icmp: an ICMP error about one of the mode's flows (fwd:
# from the client side, to the backend `real`, the flow e NULL when none was found and a
# consistent hash chose; not fwd: from the server side, to the client), NULL when the mode
# forwards none; frag: a later fragment of one of the mode's flows (fwd: client -> backend),
# NULL when the mode forwards no fragments. Each returns the frame's exit counter; sv is NULL
# on rev and icmp not fwd.
ctypedef int (*new_flow_fn)(Engine, uint8_t *, uint32_t, Service *, Pkt *, int64_t) noexcept nogil
ctypedef int (*xmit_fn)(Engine, uint8_t *, uint32_t, Flow *, Service *, uint8_t,
                        int64_t) noexcept nogil
ctypedef int (*icmp_fn)(Engine, uint8_t *, uint32_t, Icmp *, Flow *, Service *, int32_t,
                        bint) noexcept nogil
ctypedef int (*frag_fn)(Engine, uint8_t *, uint32_t, Flow *, bint, int64_t) noexcept nogil

cdef struct Xmit:
    new_flow_fn new_flow
    xmit_fn fwd
    xmit_fn rev
    icmp_fn icmp
    frag_fn frag
    uint8_t l4_at_34    # the routines read the L4 header at frame offset 34: a frame's IP
                        # options are set aside around them (serve.pxi opts_aside)
    uint8_t rev_rebuild # a backend's packet can rebuild a lost flow (flowtable.pxi
                        # flow_from_backend): the flow is nothing but the tuple and the backend
    uint8_t fwd_lines   # cache lines of a Flow (from line 0) fwd reads on an established flow:
                        # what the burst prefetches (0 counts as 1; a reverse frame gets 2).
                        # A hint only, so the twin, which prefetches nothing, has no such field

cdef Xmit XMIT[256]     # by mode code; filled by the xmit_*.pxi and splice.pxi that define them


cdef enum:
    SVC_SLOTS = 4096    # the service table's open-addressing slots (>= 2 * MAX_SERVICES)


cdef struct WatchTerm:  # one term of the watch filter (defs.W_*): all must hold for one view
    uint32_t kind       # W_*
    uint32_t value      # an address, a port or a protocol, host order


cdef struct WatchRec:   # one watched frame (watch.pxi); its bytes are Engine.wbytes[slot]
    int64_t ts_ns       # CLOCK_REALTIME ns when it was processed (the pcap's timestamp)
    uint32_t in_len     # length as received (Ethernet frame, no vnet header)
    uint32_t in_cap     # bytes of it kept (<= Engine.wsnap), at wbytes[slot * 2 * wsnap]
    uint32_t out_len    # length as sent (0: not sent: dropped or punted)
    uint32_t out_cap    # bytes of it kept, after the in bytes
    uint16_t reason     # its exit counter
    uint8_t verdict     # V_*
    uint8_t nctr        # counters moved, in ctr_idx/ctr_delta (at most WATCH_MAX_CTR)
    uint16_t ctr_idx[8]
    int64_t ctr_delta[8]
    int32_t flow        # the flow entry the frame belongs to after processing, or -1; then:
    int32_t real        # its backend's index (-1: none yet)
    uint32_t cip        # its key: client, VIP, backend
    uint32_t vip
    uint32_t rip
    uint16_t cport
    uint16_t vport
    uint16_t rport
    uint8_t proto
    uint8_t mode        # MODE_*
    uint8_t state       # S_*
    uint8_t fwd         # 1: the frame went client -> backend, 0: backend -> client
