"""engine: the Engine object, its state and its Python API (docs/interfaces.md). Twin of
fastpath/engine.pxi: the same methods in the same order.

Invariants:
- A method that does more than set an attribute is one call of its concern's routine:
  Engine.x(...) is api_x(self, ...) in flowtable, serve or splice.
- Control calls check every argument before changing anything: a bad call raises and the
  engine stays as it was.
"""
import collections
import threading

from .. import defs
from ..checks import check_ip, check_mac, check_port, check_real_idx, check_secret, check_sync
from .flowtable import (api_expire, api_explain, api_flow_get, api_flows, api_pick,
                        api_real_stats, api_set_services, api_vip_stats)
from .serve import api_process, api_serve
from .snapshot import api_export_state, api_import_state
from .sync import api_sync_dump, api_sync_export, api_sync_import
from .splice import (api_splice_bind, api_splice_by_backend, api_splice_drop, api_splice_flow,
                     api_splice_syn, api_splice_waiting)
from .types import Flow, Frag, Real, VipCtr
from .watch import api_watch_drain, api_watch_set, api_watch_status
from .xmit_tunnel import api_tunnel_frag_mtu, api_tunnel_mss, api_tunnel_segment


class Engine:
    """See docs/interfaces.md; the same public API as the compiled Engine."""

    def __init__(self, capacity, timeouts=None):
        if not isinstance(capacity, int) or not 1 <= capacity <= (1 << 24):
            raise ValueError("capacity must be an integer 1..16777216, got %r" % (capacity,))
        size = 16
        while size < 2 * capacity:
            size <<= 1
        self.cap = capacity
        self.mask = size - 1
        self.fl = [Flow(i) for i in range(capacity)]
        self.ifwd = [0] * size
        self.irev = [0] * size
        self.freel = list(range(capacity - 1, -1, -1))    # pops 0, 1, 2 ...
        self.hand = 0
        self.sweep = 0
        self.nused = 0
        self.reals = [Real() for _ in range(defs.MAX_REALS)]
        self.services = {}          # (vip, port, proto) -> Service
        self.local_ip = 0
        self.local_mac = b"\0" * 6
        self.gw_mac = None
        self.k0 = self.k1 = 0
        self.ctr = [0] * defs.N_COUNTERS
        self.newlen = 0
        self.rowcap = 0
        self.partial = False
        self.vnet = None           # the current frame's vnet header (a copy), or None
        self.keep_vnet = False     # a routine kept a partial checksum: write vnet back
        self.vnet_tnl = False      # the header is the long one: UDP-tunnel GSO
        self.outer_id = 0          # tunnel: the IP id of the latest outer packet to be fragmented
        self.opts = b""            # a frame's IP options while its routine runs (serve.opts_aside)
        self.frags = [Frag() for _ in range(defs.FRAG_SLOTS)]   # frag.py
        self.vctr = [VipCtr() for _ in range(defs.MAX_SERVICES)]  # by Service.slot (flowtable.py)
        self.waitq = collections.deque()     # (idx, c_isn, created, at): see splice_waiting()
        self.wq_size = defs.SPLICE_WAITQ_MIN
        while self.wq_size < capacity:
            self.wq_size <<= 1
        self.wq_other = []         # due entries of the other splice-like mode: (mode, entry)
        self.lock = threading.Lock()
        self.want = 0
        # the watch (watch.py): off unless the control side set one
        self.watch_on = False
        self.wterm = []            # the filter: (kind, value) terms, all of which must hold
        self.wring = collections.deque()    # records, at most wsize
        self.wsize = self.wsnap = 0
        self.wseen = self.wlost = 0   # frames that matched; of them, lost to a full ring
        # flow sync (sync.py): the export policy and where the next export's scan starts
        self.sync_thr, self.sync_period, self.sync_hand = (defs.SYNC_THRESHOLD,
                                                           defs.SYNC_PERIOD_MS, 0)
        self.set_timeouts(timeouts or {})

    # ---- the engine lock (lb/workers.py) --------------------------------------------------
    def acquire(self):
        """Take the engine lock. serve() takes it for every burst and returns holding it; a
        thread that waits here gets it before serve's next burst."""
        self.want += 1
        self.lock.acquire()
        self.want -= 1

    def release(self):
        self.lock.release()

    # ---- control side ---------------------------------------------------------------------
    def set_timeouts(self, timeouts):
        t = dict(defs.DEFAULT_TIMEOUTS)
        for k, v in timeouts.items():
            if k not in t:
                raise ValueError("unknown timeout %r" % (k,))
            if not isinstance(v, (int, float)) or v <= 0:
                raise ValueError("timeout %s must be > 0, got %r" % (k, v))
            t[k] = v
        self.tmo = [int(t[k] * 1000) for k in defs.TIMEOUT_KEYS]

    def set_local(self, ip, mac):
        m = check_mac(mac)
        self.local_ip = check_ip(ip)
        self.local_mac = m

    def set_splice_secret(self, secret):
        """The SYN-cookie key (16 bytes, random per LB or shared by LBs that must accept
        each other's cookies)."""
        self.k0, self.k1 = check_secret(secret)

    def set_gateway(self, mac):
        self.gw_mac = None if mac is None else check_mac(mac)

    def set_real(self, idx, ip, port, mac):
        check_real_idx(idx)
        m = None if mac is None else check_mac(mac)
        ipv = check_ip(ip)
        portv = check_port(port)
        r = self.reals[idx]
        if (r.ip, r.port) != (ipv, portv):
            r.mss, r.nosack = 0, False    # another backend: what was learnt is not its,
            r.flows = r.pkts_fwd = r.pkts_rev = r.bytes_fwd = r.bytes_rev = 0   # nor counted
        r.ip, r.port, r.mac = ipv, portv, m

    def real_conns(self, idx):
        check_real_idx(idx)
        return self.reals[idx].conns

    def set_real_up(self, idx, up):
        """Health: a down real keeps its flows unless their service has SVC_EXPIRE_NODEST.
        (Leaving it out of new-flow tables is the control side's job.)"""
        check_real_idx(idx)
        self.reals[idx].down = not up

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
        return dict(zip(defs.COUNTERS, self.ctr))

    def flow_count(self):
        return self.nused

    def flows(self):
        return api_flows(self)

    def expire(self, now_ms, budget):
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
    def process(self, batch, now_ms):
        """Every frame of the batch: verdict, reason, rewritten in place. Returns how many
        frames were punted (V_PUNT), so the caller looks for them only when there are some."""
        return api_process(self, batch, now_ms)

    def serve(self, fd, batch, deadline_ms):
        """One data-plane thread's loop: poll(fd) for frames, then bursts of rx -> process ->
        tx until the fd is drained, each burst under the engine lock, and again, until a burst
        has punted frames (the batch then holds that burst) or the CLOCK_MONOTONIC millisecond
        deadline_ms has passed, or poll() fails. Returns holding the engine lock (the caller
        handles the punts and its timers, then calls release()), with what it did: {wakeups,
        bursts, frames, rx_bytes (headers included), rx_gso, rx_needs_csum, tx_frames,
        tx_errors, tx_bytes, punts (of the last burst), now (ms, the clock serve used), error
        (errno of a failed poll, or 0)}."""
        return api_serve(self, fd, batch, deadline_ms)

    # ---- tunnel (xmit_tunnel.py; modes/tunnel.py is the Python side) ----------------------
    def tunnel_mss(self, frame):
        """The payload bytes per segment that keep a TCP frame to a tunnel VIP within the
        VIP's MTU once encapsulated (modes/tunnel.py cuts superframes to it); 0 if the frame
        is not IPv4/TCP to a tunnel VIP."""
        return api_tunnel_mss(self, frame)

    def tunnel_segment(self, frame, batch, first=0):
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

    # ---- splice (splice.py; modes/splice/ is the Python side) -----------------------------
    def splice_flow(self, cip, cport, vip, vport):
        """The splice state Python needs to talk to the backend as the client, or None."""
        return api_splice_flow(self, cip, cport, vip, vport)

    def splice_bind(self, cip, cport, vip, vport, real, now_ms, request=b"", fin=False):
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

    def splice_waiting(self, now_ms, mode=defs.MODE_SPLICE):
        """Flows Python has not seen that may need it, SPLICE_WAIT_HANDOFF_MS or longer after
        they were queued: a client silent since its cookie ACK (SPL_WAIT), or a flow bound
        here whose backend has not answered yet (SPL_CONNECTING: our SYN may be lost).
        [(cip, cport, vip, vport, queued_ms)] of flows of `mode` (splice or hop: the punt
        handler's own); they count as seen from now on. Flows that moved on are skipped."""
        return api_splice_waiting(self, now_ms, mode)

    def splice_drop(self, cip, cport, vip, vport):
        """Forget a splice flow (refused, redirected, backend never answered)."""
        return api_splice_drop(self, cip, cport, vip, vport)

    # ---- trace and watch (flowtable.py, watch.py; lb/trace.py, lb/watch.py) -------------
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


    # ---- planned restart (snapshot.py; lb/takeover.py is the caller) ---------------------
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

    # ---- flow sync (sync.py; lb/flowsync.py is the caller) -------------------------------
    def set_sync(self, threshold, period_ms):
        """The export policy: a flow is sent once it has seen `threshold` frames, again when
        its state changes, and every period_ms while frames pass."""
        self.sync_thr, self.sync_period = check_sync(threshold, period_ms)

    def sync_export(self, max_records, now_ms):
        """As the compiled sync_export: a datagram of due flows, marked sent, or b""."""
        return api_sync_export(self, max_records, now_ms)

    def sync_dump(self, cursor, max_records):
        """As the compiled sync_dump: (datagram or b"", next cursor)."""
        return api_sync_dump(self, cursor, max_records)

    def sync_import(self, data, now_ms):
        """As the compiled sync_import: (taken, not taken)."""
        return api_sync_import(self, data, now_ms)
