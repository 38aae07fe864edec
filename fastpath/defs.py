"""Constants shared by the compiled fast path, its pure-Python twin and the control plane.

This file is the single source of truth: setup.py generates fastpath/_defs.pxi from it, so
the C enums of the compiled module and the Python integers of the twin cannot drift.
Pure Python, no imports beyond the standard library.

Invariants: every other list of counters, verdicts or modes is derived from COUNTER_TABLE and
MODE_TABLE here (COUNTERS, C, N_COUNTERS, VERDICTS, counters_of, MODES); counter order is the
ABI between the twins and the control side, so rows are only ever appended.

Byte order: addresses and ports cross every API as host integers (198.19.0.2 is
0xC6130002); MACs cross as 6-byte ``bytes``.
"""
from collections import namedtuple

# --- verdicts written per frame into Batch.verdict -----------------------------------------
V_NONE = 0   # not processed (beyond Batch.n)
V_TX = 1     # rewritten in place; send it out of the data-plane interface
V_DROP = 2   # dropped; Batch.reason names the counter that was bumped
V_PUNT = 3   # handed up to Python (ARP, traffic for the LB's own address, splice set-up)

# --- forwarding modes (pinned per flow at creation) ----------------------------------------
# The code indexes the fast path's transmit table (XMIT[code], filled by xmit_<mode>.pxi and
# its twin); a code with no row there gets drop_mode.
Mode = namedtuple("Mode", "name code")
MODE_TABLE = (
    Mode("nat", 1),       # DNAT with a connection table; replies come back through it
    Mode("dsr", 2),       # the destination MAC only; the backend answers the client directly
    Mode("splice", 3),    # delayed binding: SYN cookies, content rules, seq/ack translated
    Mode("tunnel", 4),    # the client's frame in VXLAN to a backend across layer 3 (DSR)
    Mode("hop", 5),       # splice's client side, then the connection handed to the backend's
                          # shim (eBPF): it answers the client directly (connection hopping)
)
MODES = {m.name: m.code for m in MODE_TABLE}
MODE_NAT = MODES["nat"]
MODE_DSR = MODES["dsr"]
MODE_SPLICE = MODES["splice"]
MODE_TUNNEL = MODES["tunnel"]
MODE_HOP = MODES["hop"]

# tunnel (fastpath/xmit_tunnel.pxi, modes/tunnel.py): VXLAN (RFC 7348) to the backend
VXLAN_PORT = 4789                   # the outer UDP destination port
VXLAN_INNER_MAC = 0x02747776786C    # 02:74:77:76:78:6c, the inner frame's destination: the
                                    # MAC every backend's VXLAN device carries
VXLAN_OVERHEAD = 50                 # outer Ethernet is replaced: IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
VXLAN_SPORT_MIN = 49152             # outer UDP source ports: 49152 + flow hash % 16384

# A transmit routine's shared part (xmit_out) returns this when the frame goes on to the
# routine's own rewrite: it is no counter (counters are >= 0).
XMIT_CONT = -1

# --- TCP header flags (byte 13 of the TCP header), for both twins --------------------------
TH_FIN = 0x01
TH_SYN = 0x02
TH_RST = 0x04
TH_PSH = 0x08
TH_ACK = 0x10

# --- fast-path scheduler kinds: how the per-service table is indexed per new flow ----------
# The control side (lb/schedulers.py) turns rr/wrr/lc/sh/maglev into one of these.
SCHED_SEQ = 1       # table is a sequence of real indices, walked by a cursor (rr, wrr)
SCHED_HASH5 = 2     # table[flow_hash(5-tuple) % len] (maglev); consistent: can recreate flows
SCHED_HASHSRC = 3   # table[mix64(client ip) % len] (sh); consistent
SCHED_LEASTCONN = 4  # table = candidates, weights parallel: min conns/weight (lc)

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

# --- flow states (IPVS-like); index into the timeout array ---------------------------------
S_SYN_SENT = 0     # client SYN seen
S_SYN_RECV = 1     # backend SYN-ACK seen
S_ESTABLISHED = 2
S_FIN_WAIT = 3     # a FIN from one side
S_TIME_WAIT = 4    # FINs from both sides
S_CLOSE = 5        # RST seen
S_UDP = 6
S_SPL_WAIT = 7        # splice: cookie valid, reading the request (no backend yet)
S_SPL_CONNECTING = 8  # splice: SYN sent to the chosen backend, waiting for its SYN-ACK
STATE_NAMES = ["SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "TIME_WAIT", "CLOSE", "UDP",
               "SPL_WAIT", "SPL_CONNECTING"]
# config key (flows.timeouts.<key>) -> state, and defaults in seconds
TIMEOUT_KEYS = ["tcp_syn", "tcp_syn", "tcp_established", "tcp_fin_wait", "tcp_time_wait",
                "tcp_close", "udp", "splice_wait", "tcp_syn"]
DEFAULT_TIMEOUTS = {"tcp_syn": 60, "tcp_established": 900, "tcp_fin_wait": 120,
                    "tcp_time_wait": 60, "tcp_close": 10, "udp": 300, "splice_wait": 10}

# --- flow sync between instances (fastpath/sync.pxi, lb/flowsync.py) ------------------------
# A datagram is a 4-byte header (magic u8, version u8, record count u16) and that many fixed
# 64-byte records, network byte order (sync.pxi's header gives the record's layout).
SYNC_MAGIC = 0xF5
SYNC_VERSION = 1
SYNC_HDR_LEN = 4
SYNC_REC_LEN = 64
SYNC_MAX_RECORDS = 65535
SYNC_NEVER = 255             # Flow.sync_st of a flow not exported yet
SYNC_THRESHOLD = 3           # frames a flow must have seen before it is sent (no SYN floods)
SYNC_PERIOD_MS = 30000       # a live flow is sent again this often (a peer's copy stays alive)

# --- splice: SYN cookies in the manner of Linux (net/ipv4/syncookies.c) -----------------------
# ISN = h1(4-tuple) + client ISN + (count << 24) + ((h2(4-tuple, count) + mss index) mod 2^24),
# count = now_ms >> 16 (a 65.5 s tick; a cookie is good for COOKIE_MAX_AGE ticks). When the
# client sent timestamps, our TSval carries its window scale (bits 0-3, 0xf = none), SACK
# permitted (bit 4) and ECN (bit 5, never set: we do not negotiate ECN); without timestamps
# the SYN-ACK offers only MSS, as Linux does in cookie mode.
COOKIE_MSS = [536, 1300, 1440, 1460]
COOKIE_MAX_AGE = 2
SPLICE_MSS = 1460     # what the LB announces to clients (backends share its layer 2 and MTU)
SPLICE_WSCALE = 7     # the LB's window scale towards clients; backend windows are rescaled to it
SOPT_TS = 1           # splice flow options: timestamps negotiated
SOPT_SACK = 2         # SACK permitted

# hop (fastpath/xmit_hop.pxi, modes/hop/): the LB talks to the backend's shim
# (modes/hop/hop_shim.c, built with these values) in one TCP option, an RFC 6994
# experimental option (kind 253) with our 16-bit ExID:
#   our SYN to the backend:  [253, 4, ExID]                 the mark: this connection is hopped;
#                            the shim takes the LB's MAC from the frame's source
#   our ACK (+ request):     [253, 14, ExID, delta(4), ts_off(4), ws_b, ws_lb]   the hand-off:
#                            from now on the shim translates the connection itself
# The shim NOPs the option out (checksum fixed) before the backend's stack sees it.
HOP_OPT_KIND = 253
HOP_EXID = 0x7477
HOP_MARK_LEN = 4
HOP_HANDOFF_LEN = 14
HOP_SHIM_FLOWS = 65536     # the shim's LRU map of hopped connections, per backend
HOP_PENDING_S = 10         # a shim entry marked but not handed off is gone after this idle time
HOP_IDLE_S = 900           # a handed-off one (as tcp_established)
HOP_CLOSING_S = 60         # one that saw FINs both ways (as tcp_time_wait)

# splice: content rules the fast path decides itself (ServiceSpec.l7, an L7Spec). A VIP whose
# rules are all of these kinds, all forwarding, gets them; the first data segment of a
# connection is then decided, bound and answered with our SYN to the backend in the fast
# path when its head is complete and well-formed (modes/l7.py has the reference semantics,
# tests/differential holds the three together). Anything else -- an incomplete or odd head,
# no rule matching, an empty pool, a request longer than a segment -- goes up to Python.
L7_DEFAULT = 1        # arg b""
L7_PREFIX = 2         # arg: the raw bytes the payload starts with
L7_METHOD = 3         # arg: the method, exactly
L7_PATH = 4           # arg: a prefix of the path (the target before ? or #; origin-form only)
L7_HOST = 5           # arg: the normalized Host, exactly (lowercase, no port, no trailing dot)
L7_HOST_SUFFIX = 6    # arg: ".example.com": a Host strictly below it
L7_KINDS = (L7_DEFAULT, L7_PREFIX, L7_METHOD, L7_PATH, L7_HOST, L7_HOST_SUFFIX)
L7_MAX_RULES = 64
L7_MAX_POOLS = 64
L7_MAX_ARG = 4096
HTTP_MAX_METHOD = 32  # as modes/l7.py MAX_METHOD
HTTP_MAX_HEADERS = 100  # as modes/l7.py MAX_HEADERS
HTTP_MAX_HOST = 255

# virtio_net_hdr.flags (linux/virtio_net.h), byte 0 of a frame's vnet header: the L4 checksum
# is partial (only the pseudo-header sum; the kernel completes it on the way out)
VNET_HDR_LEN = 10                   # struct virtio_net_hdr (no mergeable buffers)
VNET_F_NEEDS_CSUM = 1
# The TAP's longer header (struct virtio_net_hdr_v1_hash_tunnel; the 6.18 kernel here parses
# it), set with TUNSETVNETHDRSZ: the same first 10 bytes, then num_buffers, the hash fields
# (unused) and at byte 20 outer_th_offset, at 22 inner_nh_offset (little-endian). With it a
# write() may carry a TCP superframe inside a UDP tunnel (gso_type | VNET_GSO_UDP_TUNNEL_IPV4),
# which the kernel segments, outer and inner headers and all: tunnel's superframes leave whole.
VNET_TNL_HDR_LEN = 24
VNET_GSO_TCPV4 = 1                  # virtio_net_hdr.gso_type, byte 1
VNET_GSO_ECN = 0x80
VNET_GSO_UDP_TUNNEL_IPV4 = 0x20

# ServiceSpec.flags
SVC_EXPIRE_NODEST = 1   # a flow whose backend is down is expired on its next packet, which is
                        # then scheduled afresh (IPVS expire_nodest_conn); else kept until idle

# flow flags
F_FIN_C = 1   # FIN seen from the client
F_FIN_S = 2   # FIN seen from the server
F_REV = 4     # the flow is in the reverse index (nat; splice once bound to a backend)
F_SEEN = 8    # splice: Python has seen this flow (a frame of it was punted, or it was waiting)
F_INLINE = 16  # splice: the fast path answers the backend's SYN-ACK itself (ACK + the request)
F_RP_FIN = 32  # splice: the replayed request ends with the client's FIN

# splice: a flow whose client has sent nothing for this long is handed to Python by
# Engine.splice_waiting() (a server-speaks-first protocol, or an idle client: the VIP's
# timeout decides it). The queue of such candidates holds the flow capacity rounded up to a
# power of two, at least SPLICE_WAITQ_MIN (entries of flows that moved on wait there too);
# when it is full the oldest is dropped (counter splice_waitq_lost)
SPLICE_WAIT_HANDOFF_MS = 100
SPLICE_WAITQ_MIN = 4096

# IPv4 fragments (fastpath/frag.pxi): the first is scheduled like any packet, the later ones
# follow it by (src, dst, IP id, proto) in a table of FRAG_SLOTS entries (a key probes
# FRAG_PROBE of them) for FRAG_TIMEOUT_MS after the first passed
FRAG_SLOTS = 4096
FRAG_PROBE = 4
FRAG_TIMEOUT_MS = 5000

# Eviction when the table is full: the least recently seen of EVICT_SAMPLE entries after a
# rotating clock hand is evicted (an expired one first) and the new flow is served.
EVICT_SAMPLE = 8
# a flow idle this long no longer holds its backend-side 4-tuple against a new flow of another
# VIP (flowtable.pxi flow_rev_clash): its state may be stale (a lost FIN, a synced copy whose
# end never came), and a live synced flow is refreshed every sync period (30 s by default)
REV_CLASH_IDLE_MS = 60000
# a new nat flow whose chosen backend has its 4-tuple held is scheduled again this many times
# (rr: the next in turn; a flow hash: a rehash) before it is refused
REV_CLASH_TRIES = 4
MAX_REALS = 4096
MAX_SERVICES = 1024

# --- the watch (fastpath/watch.pxi; lbctl trace --follow and capture, lb/watch.py) ---------
# A filter is up to WATCH_MAX_TERMS terms (kind, value), all of which must hold for one view
# of a frame: as received, as sent, or the inner frame of a VXLAN one as sent. An empty
# filter matches every frame.
W_HOST = 1          # value: an IPv4 address, the source or the destination
W_PORT = 2          # value: a TCP/UDP port, the source or the destination
W_PROTO = 3         # value: PROTO_TCP, PROTO_UDP or PROTO_ICMP
W_SRC = 4           # value: the source address
W_DST = 5           # value: the destination address
W_SPORT = 6         # value: the source port
W_DPORT = 7         # value: the destination port
W_KINDS = (W_HOST, W_PORT, W_PROTO, W_SRC, W_DST, W_SPORT, W_DPORT)
WATCH_MAX_TERMS = 8
WATCH_MAX_CTR = 8           # counters one record can name (a frame moves 2 to 4)
WATCH_SNAP_MIN = 64
WATCH_SNAP_MAX = 65535      # bytes kept of each frame, in and out (a GSO superframe is cut)
WATCH_RING_MAX = 65536      # records one engine keeps until the control side drains them

# --- counters: one per exit branch of the fast path, plus flow-table events ----------------
# verdict: what a frame whose exit this counter is gets (V_TX, V_DROP, V_PUNT); None for an
# event, counted on top of a frame's exit (and for rx_frames). mode: the mode whose routines
# bump it (a name in MODES), None when shared. when: when it should move.
# Order is the ABI between the twins (index = position): append, never reorder or rename.
Counter = namedtuple("Counter", "name verdict mode when")
COUNTER_TABLE = (
    Counter("rx_frames", None, None,
            "every frame handed to process()"),
    Counter("drop_runt", V_DROP, None,
            "shorter than an Ethernet header"),
    Counter("drop_not_our_mac", V_DROP, None,
            "unicast to another MAC, or multicast (flooded frames)"),
    Counter("punt_arp", V_PUNT, None,
            "ARP: Python answers for the LB address and VIPs, learns MACs"),
    Counter("drop_vlan", V_DROP, None,
            "802.1Q tagged: not supported"),
    Counter("drop_not_ipv4", V_DROP, None,
            "IPv6 and other ethertypes"),
    Counter("drop_ip_truncated", V_DROP, None,
            "frame shorter than an IPv4 header"),
    Counter("drop_ip_version", V_DROP, None,
            "version field is not 4"),
    Counter("drop_ip_bad_hdr", V_DROP, None,
            "IHL < 5"),
    Counter("drop_ip_options", V_DROP, None,
            "IHL > 5: IP options are not forwarded"),
    Counter("drop_ip_bad_len", V_DROP, None,
            "total length < header length or beyond the frame"),
    Counter("drop_ip_csum", V_DROP, None,
            "IPv4 header checksum wrong"),
    Counter("drop_ip_fragment", V_DROP, None,
            "a fragment for the LB itself, or for a flow whose mode forwards none (splice)"),
    Counter("drop_ttl", V_DROP, None,
            "TTL would reach 0 on a routed path (nat, splice)"),
    Counter("punt_local", V_PUNT, None,
            "addressed to the LB's own IP (ICMP echo etc.)"),
    Counter("drop_l4_truncated", V_DROP, None,
            "TCP/UDP header does not fit in the IP payload"),
    Counter("drop_tcp_bad_doff", V_DROP, None,
            "TCP data offset < 5 or beyond the IP payload"),
    Counter("drop_udp_bad_len", V_DROP, None,
            "UDP length field disagrees with the IP payload"),
    Counter("drop_no_backend", V_DROP, None,
            "service has no usable backend"),
    Counter("drop_no_flow_non_syn", V_DROP, None,
            "non-SYN TCP to a VIP with no flow, scheduler not consistent"),
    Counter("drop_no_neigh", V_DROP, None,
            "MAC of the backend or gateway not resolved yet"),
    Counter("drop_unknown_dest", V_DROP, None,
            "IPv4 not for a VIP, not for us, not a reply of a known flow"),
    Counter("drop_mode", V_DROP, None,
            "service mode has no transmit routine in this build"),
    Counter("nat_fwd", V_TX, "nat",
            "client -> VIP rewritten to client -> backend"),
    Counter("nat_rev", V_TX, "nat",
            "backend -> client rewritten to VIP -> client"),
    Counter("dsr_fwd", V_TX, "dsr",
            "client -> VIP sent to the backend's MAC unchanged"),
    Counter("flow_created", None, None,
            "new flow entry"),
    Counter("flow_reused", None, None,
            "SYN on a closing flow re-scheduled it (port reuse)"),
    Counter("flow_expired", None, None,
            "entry freed by timeout (lazily or by expire())"),
    Counter("flow_evicted", None, None,
            "table full, sampled-LRU victim freed"),
    Counter("flow_recreated", None, None,
            "non-SYN with no flow re-created by a consistent hash"),
    Counter("flow_expired_nodest", None, None,
            "flow to a down backend expired (SVC_EXPIRE_NODEST)"),
    Counter("splice_synack", V_TX, "splice",
            "SYN to a splice VIP answered with a cookie SYN-ACK (no state)"),
    Counter("splice_bad_cookie", V_DROP, "splice",
            "non-SYN to a splice VIP with no flow and no valid cookie"),
    Counter("drop_tcp_bad_options", V_DROP, "splice",
            "SYN options malformed (length 0/1 or past the header)"),
    Counter("punt_splice", V_PUNT, "splice",
            "frame for Python: request bytes, backend SYN-ACK, RST"),
    Counter("splice_fwd", V_TX, "splice",
            "client -> backend, ack/SACK/TSecr translated"),
    Counter("splice_rev", V_TX, "splice",
            "backend -> client, seq/TSval/window translated"),
    Counter("drop_splice_state", V_DROP, "splice",
            "frame that fits no state (e.g. backend data before bind)"),
    Counter("splice_established", None, "splice",
            "backend SYN-ACK recorded, the two halves are spliced"),
    Counter("flow_rev_replaced", None, None,
            "a new flow took the backend-side key of an older one (the backend cannot have two "
            "connections on one 4-tuple)"),
    Counter("splice_accepted", V_DROP, "splice",
            "valid cookie ACK without data: the flow exists, nothing to do"),
    Counter("splice_replay", V_TX, "splice",
            "backend SYN-ACK answered in place: ACK + the client's request"),
    Counter("splice_waitq_lost", None, "splice",
            "the wait queue was full; a silent client is left to the splice_wait timeout instead "
            "of the VIP's decision timeout"),
    Counter("splice_decided", V_TX, "splice",
            "the request's first segment decided by the VIP's rules in the fast path: bound, and "
            "rewritten into our SYN to the backend"),
    Counter("tunnel_fwd", V_TX, "tunnel",
            "client -> VIP frame encapsulated in VXLAN to the backend"),
    Counter("tunnel_frag_needed", V_TX, "tunnel",
            "DF frame too big for the path MTU once encapsulated: answered with ICMP "
            "fragmentation needed (MTU - 50), as a router does"),
    Counter("drop_tunnel_too_big", V_DROP, "tunnel",
            "the same without DF: not fragmented here, dropped"),
    Counter("punt_tunnel_gso", V_PUNT, "tunnel",
            "a GSO superframe for a tunnel VIP that cannot leave whole (no UDP-tunnel GSO on "
            "the device, or too big once encapsulated): modes/tunnel.py segments it"),
    Counter("drop_tunnel_no_room", V_DROP, "tunnel",
            "the frame's row has no room for the 50 bytes of VXLAN headers"),
    Counter("tunnel_gso_fwd", V_TX, "tunnel",
            "a TCP superframe encapsulated whole (the TAP's UDP-tunnel GSO): the kernel cuts "
            "it into segments that fit the path MTU"),
    # ICMP errors about flows (fastpath/icmp.pxi): each outcome its row
    Counter("drop_icmp_not_error", V_DROP, None,
            "ICMP through the LB that is not an error (echo to a VIP, ...): not forwarded"),
    Counter("drop_icmp_bad", V_DROP, None,
            "ICMP error whose quote is too short for the ports or not TCP/UDP, or whose "
            "checksum is wrong"),
    Counter("drop_icmp_no_flow", V_DROP, None,
            "ICMP error about no flow of ours (client side: and the VIP's scheduler is not a "
            "consistent hash; splice: the flow not bound yet)"),
    Counter("icmp_hashed", None, None,
            "ICMP error about no flow, sent to the backend the VIP's consistent hash gives "
            "(an LB that restarted still routes it)"),
    Counter("nat_icmp_fwd", V_TX, "nat",
            "ICMP error from the client side, to the flow's backend: VIP -> backend in the "
            "outer and the quoted headers"),
    Counter("nat_icmp_rev", V_TX, "nat",
            "ICMP error from the server side, to the client: backend -> VIP"),
    Counter("dsr_icmp_fwd", V_TX, "dsr",
            "ICMP error from the client side, to the flow's backend's MAC"),
    Counter("splice_icmp_fwd", V_TX, "splice",
            "ICMP error from the client side, to the flow's backend: addresses and the quoted "
            "seq in the backend's space"),
    Counter("splice_icmp_rev", V_TX, "splice",
            "ICMP error from the server side, to the client: addresses and the quoted ack in "
            "the client's space"),
    Counter("tunnel_icmp_fwd", V_TX, "tunnel",
            "ICMP error from the client side, in VXLAN to the flow's backend"),
    # IPv4 fragments (fastpath/frag.pxi)
    Counter("frag_first", None, None,
            "a first fragment sent: the datagram's later fragments will follow it"),
    Counter("frag_evicted", None, None,
            "the fragment table had no free slot for a new datagram: its oldest entry went"),
    Counter("drop_frag_no_first", V_DROP, None,
            "a later fragment whose first was not sent (not seen yet, lost, timed out)"),
    Counter("nat_frag_fwd", V_TX, "nat",
            "a later fragment client -> backend: the destination address translated"),
    Counter("nat_frag_rev", V_TX, "nat",
            "a later fragment backend -> client: the source address translated"),
    Counter("dsr_frag_fwd", V_TX, "dsr", "a later fragment to the flow's backend's MAC"),
    Counter("tunnel_frag_fwd", V_TX, "tunnel",
            "a later fragment in VXLAN to the flow's backend"),
    Counter("punt_tunnel_frag", V_PUNT, "tunnel",
            "a frame without DF too big for the path MTU once encapsulated: encapsulated here; "
            "modes/tunnel.py cuts the outer packet into IP fragments, as a router would"),
    Counter("splice_frag_needed", V_TX, "splice",
            "a client segment (DF) bigger than its backend announced: ICMP fragmentation "
            "needed to the client, with the backend's MSS + 40 as the MTU"),
    Counter("splice_mss_lowered", None, "splice",
            "a backend's SYN-ACK announced less than its VIP's cookie SYN-ACKs did: they now "
            "announce that"),
    Counter("flow_recreated_rev", None, None,
            "a backend's packet with no flow, on a consistent-hash VIP whose mode can rebuild "
            "it (nat): the flow re-created, as the client's would be (after an LB restart, "
            "a download's only packets come from the backend)"),
    # hop (fastpath/xmit_hop.pxi): splice's client side, whose counters a hop flow moves
    # too, then the connection handed to the backend's shim
    Counter("punt_hop", V_PUNT, "hop",
            "frame of a hop flow for Python (modes/hop): request bytes, backend SYN-ACK, RST"),
    Counter("hop_fwd", V_TX, "hop",
            "client -> VIP after the hand-off: to the backend's MAC unchanged (as dsr; the "
            "backend's shim translates)"),
    Counter("hop_handoff", None, "hop",
            "the ACK (+ request) to the backend carried the hand-off option: its shim takes "
            "the connection over"),
    Counter("drop_hop_rev", V_DROP, "hop",
            "a backend's segment of a handed-off hop flow reached the LB (its shim lost the "
            "flow, or it has none): not forwarded"),
    # flow sync (fastpath/sync.pxi): records exported to and imported from peer instances
    Counter("sync_exported", None, None,
            "a flow's record went into a sync datagram for the peers (new, changed or "
            "refreshed)"),
    Counter("sync_imported", None, None,
            "a peer's record created a flow here (a synced flow: flow_created does not move)"),
    Counter("sync_updated", None, None,
            "a peer's record updated a flow this engine had (state, backend, translation)"),
    Counter("sync_refused", None, None,
            "a peer's valid record this engine cannot take: no such VIP, another mode, a "
            "backend it does not have, a hop flow, or a backend-side 4-tuple a live flow "
            "here holds (flow_rev_clash)"),
    Counter("sync_malformed", None, None,
            "a sync record (or a datagram header) that fails the checks: lengths, magic, "
            "version, mode, state, flags, ranges, hash of its key; dropped"),
    # appended after the sync counters (the ABI is append-only)
    Counter("drop_rev_clash", V_DROP, None,
            "a new flow (nat, splice, hop) whose backend-side 4-tuple (client ip:port to the "
            "backend) a live flow of another VIP holds: refused, the live one kept (the "
            "backend could not take both)"),
    Counter("rev_clash_rescheduled", None, None,
            "a new nat flow whose first choice of backend had its 4-tuple held by a live "
            "flow went to another backend of its VIP (rr: the next; maglev, hash: a rehash)"),
)
COUNTERS = [c.name for c in COUNTER_TABLE]
C = {name: i for i, name in enumerate(COUNTERS)}
N_COUNTERS = len(COUNTERS)
# the verdict of each exit counter, by index (the engines' verdict map); an event is never a
# frame's exit, so its V_DROP is never read
VERDICTS = [V_DROP if c.verdict is None else c.verdict for c in COUNTER_TABLE]


def counters_of(mode_name):
    """The names of the counters that belong to mode mode_name, in table order."""
    if mode_name not in MODES:
        raise ValueError("unknown mode %r" % (mode_name,))
    return [c.name for c in COUNTER_TABLE if c.mode == mode_name]


def pxi_text():
    """The Cython include generated by setup.py (never edited by hand)."""
    lines = ["# generated by setup.py from fastpath/defs.py -- do not edit", "cdef enum:"]
    for name, value in sorted(globals().items()):
        if name.isupper() and isinstance(value, int) and not isinstance(value, bool):
            lines.append(f"    {name} = {value}")
    for i, name in enumerate(COUNTERS):
        lines.append(f"    C_{name.upper()} = {i}")
    return "\n".join(lines) + "\n"
