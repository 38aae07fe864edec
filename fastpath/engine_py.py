"""The pure-Python twin of fastpath/_engine.pyx: the same algorithm, line for line.

It is the reference the compiled engine is held against (tests/differential), and it runs the
whole balancer when THREEWAY_PUREPYTHON=1. It must give the same verdicts, the same rewritten
bytes, the same counters and the same flow table as the compiled engine for every input,
including the order in which flow slots are taken and evicted.

Invariants (shared with the compiled engine):
- A frame leaves process() with exactly one exit counter bumped (its Batch.reason) besides
  rx_frames; flow-table events (flow_*) are counted on top.
- Checksums are patched incrementally (RFC 1624); L4 checksums are never verified, so a bad
  one stays bad, and a UDP checksum of 0 (none) stays 0.
- Flow table: `capacity` entries, two open-addressing indexes (forward key: client, VIP;
  reverse key: backend, client) of 2^k >= 2*capacity slots with linear probing and
  backward-shift deletion. Slot value: (hash >> 32) << 32 | (entry + 1); 0 = empty.
- Full table: the least recently seen of EVICT_SAMPLE entries after a rotating clock hand is
  evicted (an expired one first); the new flow is always served.
"""
import collections
import errno
import select
import threading
import time

import numpy as np

from . import defs
from .checks import (check_ip as _check_ip, check_mac as _check_mac, check_port as _check_port,
                     check_real_idx as _check_real_idx, check_secret as _check_secret,
                     check_specs as _check_specs)
from .defs import C
from .io_py import rx_burst, tx_burst
from .twin import xmit_tunnel

MASK64 = (1 << 64) - 1
_TX_REASONS = {C["nat_fwd"], C["nat_rev"], C["dsr_fwd"], C["splice_synack"], C["splice_fwd"],
               C["splice_rev"], C["splice_replay"],
               C["splice_decided"], C["tunnel_fwd"], C["tunnel_frag_needed"]}
_PUNT_REASONS = {C["punt_arp"], C["punt_local"], C["punt_splice"], C["punt_tunnel_gso"]}
M32 = 0xFFFFFFFF
BCAST = b"\xff" * 6

TH_FIN, TH_SYN, TH_RST, TH_PSH, TH_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def mix64(x):
    """murmur3's fmix64 finaliser."""
    x &= MASK64
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & MASK64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & MASK64
    x ^= x >> 33
    return x


def flow_hash(src, dst, sport, dport, proto):
    """Deterministic 64-bit hash of a packet's 5-tuple (no per-process seed: another LB
    instance computes the same value, which Maglev relies on)."""
    return mix64(mix64((src << 32) | dst) ^ ((sport << 24) | (dport << 8) | proto))


def seq_after(a, b):
    """TCP serial-number order (RFC 1982): a is after b, across the 2^32 wrap."""
    d = (a - b) & 0xFFFFFFFF
    return d != 0 and d < 0x80000000


def seq_add(a, delta):
    return (a + delta) & 0xFFFFFFFF


def verdict_of(reason):
    if reason in _TX_REASONS:
        return defs.V_TX
    if reason in _PUNT_REASONS:
        return defs.V_PUNT
    return defs.V_DROP


def csum_fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def csum_replace2(hc, old, new):
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for one 16-bit word."""
    return ~csum_fold((~hc & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF


def csum_replace4(hc, old, new):
    s = (~hc & 0xFFFF) + (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF) + (new >> 16) + (new & 0xFFFF)
    return ~csum_fold(s) & 0xFFFF


def csum_partial_replace4(ps, old, new):
    """A partial (offloaded) L4 checksum field holds the pseudo-header sum, not inverted:
    an address change adds new - old to it (RFC 1624 without the inversions)."""
    return csum_fold(ps + (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF) + (new >> 16) + (new & 0xFFFF))


def ip_header_ok(f, off, ihl):
    s = 0
    for k in range(off, off + ihl, 2):
        s += (f[k] << 8) | f[k + 1]
    return csum_fold(s) == 0xFFFF


def _u16(f, o):
    return (f[o] << 8) | f[o + 1]


def _u32(f, o):
    return (f[o] << 24) | (f[o + 1] << 16) | (f[o + 2] << 8) | f[o + 3]


def _put16(f, o, v):
    f[o] = (v >> 8) & 0xFF
    f[o + 1] = v & 0xFF


def _put32(f, o, v):
    f[o:o + 4] = v.to_bytes(4, "big")


class _Flow:
    __slots__ = ("cip", "vip", "rip", "cport", "vport", "rport", "proto", "mode", "state",
                 "flags", "real", "used", "hf", "hr", "created", "last",
                 "pkts_fwd", "pkts_rev", "bytes_fwd", "bytes_rev",
                 # splice: ISNs (client, ours = the cookie), server seq delta, TS offset,
                 # MSS from the cookie, window scales (client, backend, ours), options,
                 # the client's latest TSval and window, the backend's latest TSval
                 "c_isn", "l_isn", "delta", "ts_off", "mss", "ws_c", "ws_b", "ws_lb", "sopt",
                 "c_tsval", "c_win", "b_tsval",
                 # the request to replay (None once the backend acknowledged it)
                 "rp", "rp_len",
                 "idx")          # its own index in the table

    def __init__(self, idx=0):
        self.idx = idx
        self.used = 0
        self.rp = None
        self.rp_len = 0


class _Real:
    __slots__ = ("ip", "port", "mac", "conns", "down")

    def __init__(self):
        self.ip, self.port, self.mac, self.conns, self.down = 0, 0, None, 0, False


class _Service:
    __slots__ = ("vip", "port", "proto", "mode", "sched", "table", "weights", "cursor", "flags",
                 "l7_rules", "l7_limit",      # rules: [(kind, arg, pool _Service)]
                 "vni", "mtu")                # tunnel


def _mono_ms():
    """CLOCK_MONOTONIC in integer ms (time.monotonic() on Linux)."""
    return time.monotonic_ns() // 1000000


class Engine:
    """See docs/interfaces.md. Same public API as the compiled engine."""

    def __init__(self, capacity, timeouts=None):
        if not isinstance(capacity, int) or not 1 <= capacity <= (1 << 24):
            raise ValueError("capacity must be an integer 1..16777216, got %r" % (capacity,))
        self.cap = capacity
        size = 16
        while size < 2 * capacity:
            size <<= 1
        self.mask = size - 1
        self.ifwd = [0] * size
        self.irev = [0] * size
        self.flows_ = [_Flow(i) for i in range(capacity)]
        self.free = list(range(capacity - 1, -1, -1))
        self.hand = 0
        self.sweep = 0
        self.nused = 0
        self.set_timeouts(timeouts or {})
        self.reals = [_Real() for _ in range(defs.MAX_REALS)]
        self.services = {}
        self.local_ip = 0
        self.local_mac = b"\0" * 6
        self.gw_mac = None
        self.ctr = [0] * defs.N_COUNTERS
        self.k0 = self.k1 = 0
        self._newlen = 0
        self._rowcap = 0
        self._partial = False
        self._vnet = None          # the current frame's vnet header (a copy), or None
        self._keep_vnet = False    # a routine kept a partial checksum: write _vnet back
        self.waitq = collections.deque()     # (idx, c_isn, created): see splice_waiting()
        self.wq_size = defs.SPLICE_WAITQ_MIN
        while self.wq_size < capacity:
            self.wq_size <<= 1
        self._lock = threading.Lock()
        self._want = 0

    # ---- the engine lock (lb/workers.py) --------------------------------------------------
    def acquire(self):
        """Take the engine lock. serve() takes it for every burst and returns holding it; a
        thread that waits here gets it before serve's next burst."""
        self._want += 1
        self._lock.acquire()
        self._want -= 1

    def release(self):
        self._lock.release()

    def _take(self):
        while self._want > 0:
            time.sleep(0)
        self._lock.acquire()

    def serve(self, fd, batch, deadline_ms):
        """One data-plane thread's loop: poll(fd) for frames, then bursts of rx -> process ->
        tx until the fd is drained, each burst under the engine lock, and again, until a burst
        has punted frames (the batch then holds that burst) or the CLOCK_MONOTONIC millisecond
        deadline_ms has passed, or poll() fails. Returns holding the engine lock (the caller
        handles the punts and its timers, then calls release()), with what it did: {wakeups,
        bursts, frames, rx_bytes (headers included), rx_gso, rx_needs_csum, tx_frames,
        tx_errors, tx_bytes, punts (of the last burst), now (ms, the clock serve used), error
        (errno of a failed poll, or 0)}."""
        if batch.size < 1:
            raise ValueError("serve needs a batch of at least one frame")
        if batch.snap < 128 + batch.hdr:
            raise ValueError("batch snap must be >= 128 (splice builds SYN-ACKs in place)")
        st = dict.fromkeys(("wakeups", "bursts", "frames", "rx_bytes", "rx_gso",
                            "rx_needs_csum", "tx_frames", "tx_errors", "tx_bytes"), 0)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        punts = err = n = 0
        now = _mono_ms()
        while not punts and not err:
            now = _mono_ms()
            if now >= deadline_ms:
                break
            try:
                ready = poller.poll(min(deadline_ms - now, 1000000))
            except InterruptedError:
                continue
            except OSError as e:
                err = e.errno
                continue
            if not ready:
                continue
            ev = ready[0][1]
            if ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) and not ev & select.POLLIN:
                err = errno.EBADF if ev & select.POLLNVAL else errno.EIO
                continue
            st["wakeups"] += 1
            while True:
                self._take()
                n = rx_burst(fd, batch)
                if n == 0:
                    self._lock.release()
                    break
                st["rx_bytes"] += batch.rx_bytes
                st["rx_gso"] += batch.rx_gso
                st["rx_needs_csum"] += batch.rx_needs_csum
                now = _mono_ms()
                punts = self.process(batch, now)
                sent, errors, nbytes = tx_burst(fd, batch)
                st["tx_frames"] += sent
                st["tx_errors"] += errors
                st["tx_bytes"] += nbytes
                st["bursts"] += 1
                st["frames"] += n
                if punts:
                    break                 # returns holding the lock, the batch as it is
                self._lock.release()
                if n < batch.size or _mono_ms() >= deadline_ms:
                    break
        if not punts:
            self._take()
        batch.n = n if punts else 0
        st.update(punts=punts, now=now, error=err)
        return st

    # ---- control side -------------------------------------------------------------------
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
        self.local_ip = _check_ip(ip)
        self.local_mac = _check_mac(mac)

    def set_splice_secret(self, secret):
        """The SYN-cookie key (16 bytes, random per LB or shared by LBs that must accept
        each other's cookies)."""
        self.k0, self.k1 = _check_secret(secret)

    def set_gateway(self, mac):
        self.gw_mac = None if mac is None else _check_mac(mac)

    def set_real(self, idx, ip, port, mac):
        _check_real_idx(idx)
        r = self.reals[idx]
        r.ip, r.port = _check_ip(ip), _check_port(port)
        r.mac = None if mac is None else _check_mac(mac)

    def real_conns(self, idx):
        _check_real_idx(idx)
        return self.reals[idx].conns

    def set_real_up(self, idx, up):
        """Health: a down real keeps its flows unless their service has SVC_EXPIRE_NODEST.
        (Leaving it out of new-flow tables is the control side's job.)"""
        _check_real_idx(idx)
        self.reals[idx].down = not up

    def set_services(self, specs):
        new = {}
        for s in _check_specs(specs):
            sv = _Service()
            sv.vip, sv.port, sv.proto, sv.mode, sv.sched = s.vip, s.port, s.proto, s.mode, s.sched
            sv.table, sv.weights, sv.cursor = list(s.table), list(s.weights), 0
            sv.flags = s.flags
            sv.l7_rules, sv.l7_limit = [], 0
            sv.vni, sv.mtu = (s.tunnel.vni, s.tunnel.mtu) if s.tunnel is not None else (0, 0)
            if s.l7 is not None:
                pools = []
                for sched, table, weights in s.l7.pools:
                    p = _Service()
                    p.sched, p.table, p.weights, p.cursor = sched, list(table), list(weights), 0
                    pools.append(p)
                sv.l7_rules = [(kind, bytes(arg), pools[pool]) for kind, arg, pool in s.l7.rules]
                sv.l7_limit = s.l7.limit
            new[(s.vip, s.port, s.proto)] = sv
        self.services = new

    def counters(self):
        return dict(zip(defs.COUNTERS, self.ctr))

    def flow_count(self):
        return self.nused

    def flows(self):
        return [(e.cip, e.cport, e.vip, e.vport, e.proto, e.real, e.mode, e.state, e.created,
                 e.last, e.pkts_fwd, e.pkts_rev, e.bytes_fwd, e.bytes_rev)
                for e in self.flows_ if e.used]

    def expire(self, now_ms, budget):
        freed = 0
        for _ in range(min(budget, self.cap)):
            j = self.sweep
            self.sweep = (j + 1) % self.cap
            e = self.flows_[j]
            if e.used and now_ms - e.last > self.tmo[e.state]:
                self._delete(j)
                self.ctr[C["flow_expired"]] += 1
                freed += 1
        return freed

    # ---- flow table ---------------------------------------------------------------------
    def _find(self, tab, h, src, dst, sport, dport, proto, rev):
        mask = self.mask
        i = h & mask
        tag = h >> 32
        while True:
            v = tab[i]
            if v == 0:
                return -1
            if v >> 32 == tag:
                e = self.flows_[(v & 0xFFFFFFFF) - 1]
                if rev:
                    if (e.rip == src and e.cip == dst and e.rport == sport and e.cport == dport
                            and e.proto == proto):
                        return (v & 0xFFFFFFFF) - 1
                elif (e.cip == src and e.vip == dst and e.cport == sport and e.vport == dport
                        and e.proto == proto):
                    return (v & 0xFFFFFFFF) - 1
            i = (i + 1) & mask

    def _insert(self, tab, h, idx):
        i = h & self.mask
        while tab[i]:
            i = (i + 1) & self.mask
        tab[i] = ((h >> 32) << 32) | (idx + 1)

    def _unlink(self, tab, h, idx, rev):
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
            e = self.flows_[(v & 0xFFFFFFFF) - 1]
            k = (e.hr if rev else e.hf) & mask
            # the entry at j may move to the hole at i unless its home k lies in (i, j]
            if (i <= j and (k <= i or k > j)) or (i > j and k <= i and k > j):
                tab[i] = v
                i = j
        tab[i] = 0

    def _delete(self, idx):
        e = self.flows_[idx]
        self._unlink(self.ifwd, e.hf, idx, False)
        if e.flags & defs.F_REV:
            self._unlink(self.irev, e.hr, idx, True)
        if e.real >= 0:
            self.reals[e.real].conns -= 1
        e.rp = None
        e.used = 0
        self.free.append(idx)
        self.nused -= 1

    def _alloc(self, now):
        if not self.free:
            best = -1
            for k in range(defs.EVICT_SAMPLE):
                j = (self.hand + k) % self.cap
                e = self.flows_[j]
                if now - e.last > self.tmo[e.state]:
                    best = j
                    break
                if best < 0 or e.last < self.flows_[best].last:
                    best = j
            self.hand = (self.hand + defs.EVICT_SAMPLE) % self.cap
            expired = now - self.flows_[best].last > self.tmo[self.flows_[best].state]
            self._delete(best)
            self.ctr[C["flow_expired" if expired else "flow_evicted"]] += 1
        return self.free.pop()

    def _create(self, sv, h, src, sport, real, state, now):
        idx = self._alloc(now)
        e = self.flows_[idx]
        r = self.reals[real]
        e.cip, e.vip, e.rip = src, sv.vip, r.ip
        e.cport, e.vport, e.rport = sport, sv.port, r.port
        e.proto, e.mode, e.state, e.flags, e.real = sv.proto, sv.mode, state, 0, real
        e.used = 1
        e.hf = h
        e.hr = flow_hash(r.ip, src, r.port, sport, sv.proto)
        e.created = e.last = now
        e.pkts_fwd = e.pkts_rev = e.bytes_fwd = e.bytes_rev = 0
        self._insert(self.ifwd, h, idx)
        if sv.mode != defs.MODE_DSR:
            self._insert_rev(idx)
        r.conns += 1
        self.nused += 1
        return idx

    def _insert_rev(self, idx):
        """Enter flow idx in the reverse index. An older flow with the same backend-side key
        (client ip:port to backend ip:port, e.g. a closing flow of another VIP on the same
        backend) is over: the backend cannot have two connections on one 4-tuple."""
        e = self.flows_[idx]
        old = self._find(self.irev, e.hr, e.rip, e.cip, e.rport, e.cport, e.proto, True)
        if old >= 0:
            self._delete(old)
            self.ctr[C["flow_rev_replaced"]] += 1
        self._insert(self.irev, e.hr, idx)
        e.flags |= defs.F_REV

    def _schedule(self, sv, h, src):
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

    # ---- per packet ---------------------------------------------------------------------
    def process(self, batch, now_ms):
        """Every frame of the batch: verdict, reason, rewritten in place. Returns how many
        frames were punted (V_PUNT), so the caller looks for them only when there are some."""
        hdr = batch.hdr
        if batch.n and batch.snap < 128 + hdr:
            raise ValueError("batch snap must be >= 128 (splice builds SYN-ACKs in place)")
        ctr = self.ctr
        punts = 0
        for i in range(batch.n):
            row = min(int(batch.lens[i]), batch.snap)
            n = max(0, row - hdr)
            f = bytearray(batch.buf[i, hdr:hdr + n].tobytes())
            self._newlen = 0
            self._rowcap = batch.snap - hdr
            self._partial = bool(hdr) and row >= hdr and bool(batch.buf[i, 0] & defs.VNET_F_NEEDS_CSUM)
            self._vnet = bytearray(batch.buf[i, :hdr].tobytes()) if hdr >= 10 and row >= hdr else None
            self._keep_vnet = False
            reason = self._one(f, n, now_ms)
            ctr[C["rx_frames"]] += 1
            ctr[reason] += 1
            v = verdict_of(reason)
            batch.verdict[i] = v
            punts += v == defs.V_PUNT
            batch.reason[i] = reason
            if v == defs.V_TX:
                if self._newlen:      # a frame made in place (splice, tunnel) may change size
                    n = self._newlen
                    batch.lens[i] = hdr + n
                    if self._keep_vnet:
                        batch.buf[i, :hdr] = np.frombuffer(bytes(self._vnet), np.uint8)
                    else:
                        batch.buf[i, :hdr] = 0     # complete checksums, no GSO
                batch.buf[i, hdr:hdr + n] = np.frombuffer(bytes(f[:n]), np.uint8)
        return punts

    def _one(self, f, n, now):
        if n < 14:
            return C["drop_runt"]
        dmac = bytes(f[0:6])
        if dmac != self.local_mac and dmac != BCAST:
            return C["drop_not_our_mac"]
        et = _u16(f, 12)
        if et == 0x0806:
            return C["punt_arp"]
        if et == 0x8100 or et == 0x88A8:
            return C["drop_vlan"]
        if et != 0x0800:
            return C["drop_not_ipv4"]
        if n < 34:
            return C["drop_ip_truncated"]
        if f[14] >> 4 != 4:
            return C["drop_ip_version"]
        ihl = (f[14] & 15) * 4
        if ihl < 20:
            return C["drop_ip_bad_hdr"]
        if ihl > 20:
            return C["drop_ip_options"]
        tot = _u16(f, 16)
        if tot < ihl or 14 + tot > n:
            return C["drop_ip_bad_len"]
        if not ip_header_ok(f, 14, 20):
            return C["drop_ip_csum"]
        if _u16(f, 20) & 0x3FFF:
            return C["drop_ip_fragment"]
        proto = f[23]
        src = _u32(f, 26)
        dst = _u32(f, 30)
        if dst == self.local_ip:
            return C["punt_local"]
        l4len = tot - 20
        tflags = 0
        if proto == defs.PROTO_TCP:
            if l4len < 20:
                return C["drop_l4_truncated"]
            doff = (f[46] >> 4) * 4
            if doff < 20 or doff > l4len:
                return C["drop_tcp_bad_doff"]
            tflags = f[47]
        elif proto == defs.PROTO_UDP:
            if l4len < 8:
                return C["drop_l4_truncated"]
            ulen = _u16(f, 38)
            if ulen < 8 or ulen > l4len:
                return C["drop_udp_bad_len"]
        else:
            return C["drop_unknown_dest"]
        sport = _u16(f, 34)
        dport = _u16(f, 36)
        h = flow_hash(src, dst, sport, dport, proto)
        sv = self.services.get((dst, dport, proto))
        if sv is not None:
            idx = self._find(self.ifwd, h, src, dst, sport, dport, proto, False)
            if idx >= 0:
                e = self.flows_[idx]
                if now - e.last > self.tmo[e.state]:
                    self._delete(idx)
                    self.ctr[C["flow_expired"]] += 1
                    idx = -1
                elif ((tflags & (TH_SYN | TH_ACK)) == TH_SYN
                        and e.state in (defs.S_FIN_WAIT, defs.S_TIME_WAIT, defs.S_CLOSE)):
                    # a new connection on a closing flow's ports (tcp_tw_reuse): schedule afresh
                    self._delete(idx)
                    self.ctr[C["flow_reused"]] += 1
                    idx = -1
                elif e.real >= 0 and self.reals[e.real].down and sv.flags & defs.SVC_EXPIRE_NODEST:
                    # (an unbound splice flow has no real yet: real = -1)
                    self._delete(idx)
                    self.ctr[C["flow_expired_nodest"]] += 1
                    idx = -1
            if idx < 0 and sv.mode == defs.MODE_SPLICE:
                if proto != defs.PROTO_TCP:
                    return C["drop_mode"]
                return self._splice_new(f, n, sv, h, src, dst, sport, dport, tflags, now)
            if idx < 0:
                if proto == defs.PROTO_TCP:
                    if (tflags & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN:
                        state = defs.S_SYN_SENT
                    elif (sv.sched in (defs.SCHED_HASH5, defs.SCHED_HASHSRC)
                            and not tflags & TH_RST):
                        state = defs.S_ESTABLISHED   # lost state: the hash gives the same backend
                    else:
                        return C["drop_no_flow_non_syn"]
                else:
                    state = defs.S_UDP
                real = self._schedule(sv, h, src)
                if real < 0:
                    return C["drop_no_backend"]
                idx = self._create(sv, h, src, sport, real, state, now)
                self.ctr[C["flow_created"]] += 1
                if state == defs.S_ESTABLISHED:
                    self.ctr[C["flow_recreated"]] += 1
            e = self.flows_[idx]
            if e.mode == defs.MODE_NAT:
                return self._nat_fwd(f, n, e, tflags, now)
            if e.mode == defs.MODE_DSR:
                return self._dsr_fwd(f, n, e, tflags, now)
            if e.mode == defs.MODE_SPLICE:
                return self._splice_fwd(f, n, e, sv, tflags, now)
            if e.mode == defs.MODE_TUNNEL:
                return xmit_tunnel.tunnel_fwd(self, f, n, e, sv, tflags, now)
            return C["drop_mode"]
        idx = self._find(self.irev, h, src, dst, sport, dport, proto, True)
        if idx < 0:
            return C["drop_unknown_dest"]
        e = self.flows_[idx]
        if now - e.last > self.tmo[e.state]:
            self._delete(idx)
            self.ctr[C["flow_expired"]] += 1
            return C["drop_unknown_dest"]
        if e.mode == defs.MODE_NAT:
            return self._nat_rev(f, n, e, tflags, now)
        if e.mode == defs.MODE_SPLICE:
            return self._splice_rev(f, n, e, tflags, now)
        return C["drop_mode"]

    # ---- transmit routines (one per mode; IPVS's *_xmit) ---------------------------------
    # the per-flow TCP tracker, for the routines of fastpath/twin/ (which cannot import this
    # module: it imports them)
    _track = staticmethod(lambda e, tflags, fwd: _track(e, tflags, fwd))

    def tunnel_mss(self, frame):
        """As the compiled Engine.tunnel_mss: payload bytes per segment for a tunnel VIP."""
        b = bytes(frame)
        if len(b) < 54 or b[12:14] != b"\x08\x00" or b[23] != defs.PROTO_TCP:
            return 0
        ihl = (b[14] & 15) * 4
        if ihl < 20 or 14 + ihl + 20 > len(b):
            return 0
        doff = (b[14 + ihl + 12] >> 4) * 4
        sv = self.services.get((_u32(b, 30), _u16(b, 14 + ihl + 2), defs.PROTO_TCP))
        if sv is None or sv.mode != defs.MODE_TUNNEL or sv.mtu < defs.VXLAN_OVERHEAD + ihl + doff + 1:
            return 0
        return sv.mtu - defs.VXLAN_OVERHEAD - ihl - doff

    def _nat_fwd(self, f, n, e, tflags, now):
        r = self.reals[e.real]
        if r.mac is None:
            return C["drop_no_neigh"]
        if f[22] <= 1:
            return C["drop_ttl"]
        if e.proto == defs.PROTO_TCP:
            _track(e, tflags, True)
        _rewrite(f, 30, 36, e.vip, e.vport, e.rip, e.rport, e.proto, self._partial)
        f[0:6] = r.mac
        f[6:12] = self.local_mac
        e.last = now
        e.pkts_fwd += 1
        e.bytes_fwd += n
        return C["nat_fwd"]

    def _nat_rev(self, f, n, e, tflags, now):
        if self.gw_mac is None:
            return C["drop_no_neigh"]
        if f[22] <= 1:
            return C["drop_ttl"]
        if e.proto == defs.PROTO_TCP:
            _track(e, tflags, False)
        _rewrite(f, 26, 34, e.rip, e.rport, e.vip, e.vport, e.proto, self._partial)
        f[0:6] = self.gw_mac
        f[6:12] = self.local_mac
        e.last = now
        e.pkts_rev += 1
        e.bytes_rev += n
        return C["nat_rev"]

    def _dsr_fwd(self, f, n, e, tflags, now):
        r = self.reals[e.real]
        if r.mac is None:
            return C["drop_no_neigh"]
        if e.proto == defs.PROTO_TCP:
            _track(e, tflags, True)
        f[0:6] = r.mac
        f[6:12] = self.local_mac
        e.last = now
        e.pkts_fwd += 1
        e.bytes_fwd += n
        return C["dsr_fwd"]

    # ---- splice (see fastpath/defs.py for the cookie; modes/splice.py for the Python side) --
    def _h1(self, src, dst, sport, dport):
        return mix64(self.k0 ^ ((src << 32) | dst) ^ mix64(self.k1 ^ ((sport << 16) | dport))) & M32

    def _h2(self, src, dst, sport, dport, cnt):
        return mix64(self.k1 ^ ((src << 32) | dst)
                     ^ mix64(self.k0 ^ ((cnt << 32) | (sport << 16) | dport))) & 0xFFFFFF

    def _cookie(self, src, dst, sport, dport, c_isn, cnt, data):
        return (self._h1(src, dst, sport, dport) + c_isn + (cnt << 24)
                + ((self._h2(src, dst, sport, dport, cnt) + data) & 0xFFFFFF)) & M32

    def _cookie_check(self, src, dst, sport, dport, c_isn, cookie, now):
        """The MSS index the cookie carries, or -1 when it is not ours or too old."""
        c = (cookie - self._h1(src, dst, sport, dport) - c_isn) & M32
        cnt = c >> 24
        if (((now >> 16) & 0xFF) - cnt) & 0xFF > defs.COOKIE_MAX_AGE:
            return -1
        data = (c - self._h2(src, dst, sport, dport, cnt)) & 0xFFFFFF
        return data if data < len(defs.COOKIE_MSS) else -1

    def _splice_new(self, f, n, sv, h, src, dst, sport, dport, tflags, now):
        """No flow yet: a SYN gets a cookie SYN-ACK (no state); an ACK with a valid cookie
        creates the flow in SPL_WAIT and goes up to Python."""
        if (tflags & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN:
            return self._splice_synack(f, src, dst, sport, dport, now)
        if tflags & TH_RST or not tflags & TH_ACK:
            return C["splice_bad_cookie"]
        c_isn = (_u32(f, 38) - 1) & M32
        l_isn = (_u32(f, 42) - 1) & M32
        mssi = self._cookie_check(src, dst, sport, dport, c_isn, l_isn, now)
        if mssi < 0:
            return C["splice_bad_cookie"]
        doff = (f[46] >> 4) * 4
        opts = tcp_options(f, 54, 34 + doff)
        ts = opts.get(8) if opts is not None else None
        if ts is not None and f[ts + 1] != 10:
            ts = None
        idx = self._alloc(now)
        e = self.flows_[idx]
        e.cip, e.vip, e.rip, e.cport, e.vport, e.rport = src, dst, 0, sport, dport, 0
        e.proto, e.mode, e.state, e.flags, e.real, e.used = 6, defs.MODE_SPLICE, defs.S_SPL_WAIT, 0, -1, 1
        e.hf, e.hr = h, 0
        e.created = e.last = now
        e.pkts_fwd = e.pkts_rev = e.bytes_fwd = e.bytes_rev = 0
        e.c_isn, e.l_isn, e.delta, e.ts_off = c_isn, l_isn, 0, 0
        e.mss = defs.COOKIE_MSS[mssi]
        if ts is not None:
            bits = _u32(f, ts + 6) & 0x3F          # what our SYN-ACK's TSval carried
            e.ws_c = bits & 0xF
            e.sopt = defs.SOPT_TS | (defs.SOPT_SACK if bits & 0x10 else 0)
            e.c_tsval = _u32(f, ts + 2)
        else:
            e.ws_c, e.sopt, e.c_tsval = 0xF, 0, 0
        e.ws_lb = defs.SPLICE_WSCALE if e.ws_c != 0xF else 0
        e.ws_b, e.b_tsval = 0, 0
        e.c_win = _u16(f, 48)
        e.pkts_fwd, e.bytes_fwd = 1, n
        e.rp, e.rp_len = None, 0
        self._insert(self.ifwd, h, idx)
        self.nused += 1
        self.ctr[C["flow_created"]] += 1
        if _u16(f, 16) > 20 + doff or tflags & TH_FIN:
            if sv.l7_rules:
                k = self._l7_bind(f, e, sv, tflags, now)
                if k:
                    return k
            e.flags = defs.F_SEEN
            return C["punt_splice"]          # the request (or a FIN) came with the ACK
        # nothing for Python yet: the request's first segment will be punted; a client that
        # stays silent is handed up by splice_waiting()
        self._waitq_push(idx, now)
        return C["splice_accepted"]

    def _splice_synack(self, f, src, dst, sport, dport, now):
        doff = (f[46] >> 4) * 4
        opts = tcp_options(f, 54, 34 + doff)
        if opts is None:
            return C["drop_tcp_bad_options"]
        mss = _u16(f, opts[2] + 2) if 2 in opts and f[opts[2] + 1] == 4 else 536
        mssi = 0
        for k in range(len(defs.COOKIE_MSS) - 1, -1, -1):
            if mss >= defs.COOKIE_MSS[k]:
                mssi = k
                break
        c_isn = _u32(f, 38)
        cookie = self._cookie(src, dst, sport, dport, c_isn, (now >> 16) & 0xFF, mssi)
        o = bytearray([2, 4, defs.SPLICE_MSS >> 8, defs.SPLICE_MSS & 0xFF])
        if 8 in opts and f[opts[8] + 1] == 10:
            ws = min(f[opts[3] + 2], 14) if 3 in opts and f[opts[3] + 1] == 3 else 0xF
            sack = 4 in opts and f[opts[4] + 1] == 2
            my_ts = ((now & ~0x3F) | ws | (0x10 if sack else 0)) & M32
            o += bytes([4, 2]) if sack else bytes([1, 1])
            o += bytes([8, 10]) + my_ts.to_bytes(4, "big") + bytes(f[opts[8] + 2:opts[8] + 6])
            if ws != 0xF:
                o += bytes([1, 3, 3, defs.SPLICE_WSCALE])
        out = tcp_frame(bytes(f[6:12]), self.local_mac, dst, src, dport, sport, cookie, c_isn + 1,
                        TH_SYN | TH_ACK, 0xFFFF, bytes(o))
        f[:len(out)] = out
        self._newlen = len(out)
        return C["splice_synack"]

    def _splice_fwd(self, f, n, e, sv, tflags, now):
        doff = (f[46] >> 4) * 4
        opts = tcp_options(f, 54, 34 + doff) or {}
        if e.state == defs.S_SPL_WAIT or e.state == defs.S_SPL_CONNECTING:
            # no backend yet: the VIP's rules decide here, or Python buffers the request
            # (and answers RST/FIN)
            if 8 in opts and f[opts[8] + 1] == 10:
                e.c_tsval = _u32(f, opts[8] + 2)
            e.c_win = _u16(f, 48)
            e.last = now
            e.pkts_fwd += 1
            e.bytes_fwd += n
            if e.state == defs.S_SPL_WAIT and sv.l7_rules and not e.flags & defs.F_SEEN:
                k = self._l7_bind(f, e, sv, tflags, now)
                if k:
                    return k
            e.flags |= defs.F_SEEN
            return C["punt_splice"]
        r = self.reals[e.real]
        if r.mac is None:
            return C["drop_no_neigh"]
        if f[22] <= 1:
            return C["drop_ttl"]
        _track(e, tflags, True)
        p = self._partial
        _rewrite(f, 30, 36, e.vip, e.vport, e.rip, e.rport, 6, p)
        if tflags & TH_ACK:
            _patch32(f, 42, (_u32(f, 42) - e.delta) & M32, p)
        if e.sopt & defs.SOPT_TS and 8 in opts and f[opts[8] + 1] == 10:
            _patch32(f, opts[8] + 6, (_u32(f, opts[8] + 6) - e.ts_off) & M32, p)
        if 5 in opts:
            o, ln = opts[5], f[opts[5] + 1]
            for k in range(o + 2, o + ln - 7, 8):
                _patch32(f, k, (_u32(f, k) - e.delta) & M32, p)
                _patch32(f, k + 4, (_u32(f, k + 4) - e.delta) & M32, p)
        f[0:6] = r.mac
        f[6:12] = self.local_mac
        e.last = now
        e.pkts_fwd += 1
        e.bytes_fwd += n
        return C["splice_fwd"]

    def _splice_rev(self, f, n, e, tflags, now):
        doff = (f[46] >> 4) * 4
        opts = tcp_options(f, 54, 34 + doff) or {}
        ts = opts[8] if 8 in opts and f[opts[8] + 1] == 10 else -1
        if e.state == defs.S_SPL_CONNECTING:
            if ((tflags & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK)
                    and _u32(f, 42) == (e.c_isn + 1) & M32):
                e.delta = (e.l_isn - _u32(f, 38)) & M32
                ws = f[opts[3] + 2] if 3 in opts and f[opts[3] + 1] == 3 else -1
                e.ws_b = min(ws, 14) if ws >= 0 and e.ws_c != 0xF else 0
                if e.sopt & defs.SOPT_TS and ts >= 0:
                    e.b_tsval = _u32(f, ts + 2)
                    # the client's view continues from our SYN-ACK's TSval (PAWS)
                    e.ts_off = (now + 64 - e.b_tsval) & M32
                e.state = defs.S_ESTABLISHED
                e.last = now
                e.pkts_rev += 1
                e.bytes_rev += n
                self.ctr[C["splice_established"]] += 1
                if e.flags & defs.F_INLINE:
                    # (one segment within the client's MSS, as the client itself sent it)
                    return self._splice_replay(f, e, _u32(f, 38))
                return C["punt_splice"]   # a request longer than one segment: Python replays it
            if tflags & TH_RST:
                return C["punt_splice"]
            return C["drop_splice_state"]
        if e.state == defs.S_SPL_WAIT:
            return C["drop_splice_state"]
        if tflags & TH_SYN:
            # a retransmitted SYN-ACK: our ACK was lost; answer it (and replay) again
            if ts >= 0:
                e.b_tsval = _u32(f, ts + 2)
            e.last = now
            if (e.flags & defs.F_INLINE and tflags & TH_ACK and _u32(f, 42) == (e.c_isn + 1) & M32
                    and _u32(f, 38) == (e.l_isn - e.delta) & M32):
                return self._splice_replay(f, e, _u32(f, 38))
            return C["punt_splice"]
        if e.rp is not None and tflags & TH_ACK and 0 < ((_u32(f, 42) - e.c_isn - 1) & M32) < 1 << 31:
            e.rp = None           # the backend has the request: no SYN-ACK will come again
        if self.gw_mac is None:
            return C["drop_no_neigh"]
        if f[22] <= 1:
            return C["drop_ttl"]
        _track(e, tflags, False)
        p = self._partial
        _rewrite(f, 26, 34, e.rip, e.rport, e.vip, e.vport, 6, p)
        _patch32(f, 38, (_u32(f, 38) + e.delta) & M32, p)
        if e.ws_b != e.ws_lb:
            w = _u16(f, 48)
            _patch16(f, 48, min(0xFFFF, (w << e.ws_b) >> e.ws_lb), p)
        if ts >= 0 and e.sopt & defs.SOPT_TS:
            _patch32(f, ts + 2, (_u32(f, ts + 2) + e.ts_off) & M32, p)
        f[0:6] = self.gw_mac
        f[6:12] = self.local_mac
        e.last = now
        e.pkts_rev += 1
        e.bytes_rev += n
        return C["splice_rev"]

    def _waitq_push(self, idx, now):
        if len(self.waitq) == self.wq_size:
            self.waitq.popleft()
            self.ctr[C["splice_waitq_lost"]] += 1
        e = self.flows_[idx]
        self.waitq.append((idx, e.c_isn, e.created, now))

    def _bind(self, e, real, now):
        r = self.reals[real]
        e.real, e.rip, e.rport = real, r.ip, r.port
        e.hr = flow_hash(r.ip, e.cip, r.port, e.cport, 6)
        self._insert_rev(e.idx)
        r.conns += 1
        e.state = defs.S_SPL_CONNECTING
        e.last = now

    def _l7_bind(self, f, e, sv, tflags, now):
        """The request's first segment, in f: decide it by the VIP's rules, bind the flow, keep
        the segment to replay and turn f into our SYN to the backend. 0 when any of it cannot
        be done here (Python then gets the segment)."""
        doff = (f[46] >> 4) * 4
        dl = _u16(f, 16) - 20 - doff
        if (dl <= 0 or tflags & (TH_SYN | TH_RST | TH_FIN) or not tflags & TH_ACK
                or _u32(f, 38) != (e.c_isn + 1) & M32
                or dl + (12 if e.sopt & defs.SOPT_TS else 0) > e.mss):
            return 0
        d = bytes(f[34 + doff:34 + doff + dl])
        pool = _l7_match(d[:sv.l7_limit], sv.l7_rules)
        if pool is None:
            return 0
        real = self._schedule(pool, e.hf, e.cip)
        if real < 0 or self.reals[real].mac is None:
            return 0
        self._bind(e, real, now)
        e.flags |= defs.F_INLINE
        e.rp, e.rp_len = d, dl
        self._waitq_push(e.idx, now)        # Python resends a lost SYN
        syn = self._splice_syn(e)
        f[:len(syn)] = syn
        self._newlen = len(syn)
        return C["splice_decided"]

    def _splice_replay(self, f, e, s_isn):
        """Turn the backend's SYN-ACK (in f) into our answer as the client: ACK, and the
        client's request when we still hold it (with the client's FIN if it sent one)."""
        r = self.reals[e.real]
        if r.mac is None:
            return C["drop_no_neigh"]
        opt = b""
        if e.sopt & defs.SOPT_TS:
            opt = b"\x01\x01\x08\x0a" + e.c_tsval.to_bytes(4, "big") + e.b_tsval.to_bytes(4, "big")
        fl = TH_ACK
        data = b""
        if e.rp is not None:
            fl |= TH_PSH | (TH_FIN if e.flags & defs.F_RP_FIN else 0)
            data = e.rp
        if 54 + len(opt) + len(data) > self._rowcap:
            return C["punt_splice"]
        out = tcp_frame(r.mac, self.local_mac, e.cip, e.rip, e.cport, e.rport, e.c_isn + 1,
                        s_isn + 1, fl, e.c_win, opt, data)
        f[:len(out)] = out
        self._newlen = len(out)
        return C["splice_replay"]

    def _splice_syn(self, e):
        """Our SYN to the backend as the client: its address, port, ISN and SYN options as
        the cookie kept them."""
        o = bytes([2, 4]) + e.mss.to_bytes(2, "big")
        if e.sopt & defs.SOPT_TS:
            o += bytes([4, 2]) if e.sopt & defs.SOPT_SACK else bytes([1, 1])
            o += bytes([8, 10]) + e.c_tsval.to_bytes(4, "big") + bytes(4)
        if e.ws_c != 0xF:
            o += bytes([1, 3, 3, e.ws_c])
        return bytes(tcp_frame(self.reals[e.real].mac, self.local_mac, e.cip, e.rip, e.cport,
                               e.rport, e.c_isn, 0, TH_SYN, 65535, o))

    def _splice_lookup(self, cip, cport, vip, vport):
        h = flow_hash(cip, vip, cport, vport, 6)
        idx = self._find(self.ifwd, h, cip, vip, cport, vport, 6, False)
        if idx >= 0 and self.flows_[idx].mode == defs.MODE_SPLICE:
            return idx
        return -1

    def splice_flow(self, cip, cport, vip, vport):
        """The splice state Python needs to talk to the backend as the client, or None."""
        idx = self._splice_lookup(cip, cport, vip, vport)
        if idx < 0:
            return None
        e = self.flows_[idx]
        return {"state": e.state, "real": e.real, "rip": e.rip, "rport": e.rport,
                "c_isn": e.c_isn, "l_isn": e.l_isn, "s_isn": (e.l_isn - e.delta) & M32,
                "mss": e.mss, "ws_c": e.ws_c, "ws_b": e.ws_b, "ws_lb": e.ws_lb,
                "sopt": e.sopt, "c_tsval": e.c_tsval, "c_win": e.c_win, "b_tsval": e.b_tsval,
                "ts_off": e.ts_off}

    def splice_bind(self, cip, cport, vip, vport, real, now_ms, request=b"", fin=False):
        """Bind a flow in SPL_WAIT to a backend: it enters the reverse index (the backend's
        SYN-ACK will find it) and SPL_CONNECTING. Returns our SYN to the backend (a whole
        frame), or None when there is no such flow or the backend's MAC is unknown.

        request (and fin: the client's FIN follows it) is what to replay. When it fits in one
        segment the fast path keeps it and answers the backend's SYN-ACK itself (counter
        splice_replay); otherwise that SYN-ACK is punted and Python replays."""
        _check_real_idx(real)
        req = bytes(memoryview(request))
        idx = self._splice_lookup(cip, cport, vip, vport)
        if idx < 0 or self.flows_[idx].state != defs.S_SPL_WAIT or self.reals[real].mac is None:
            return None
        e = self.flows_[idx]
        self._bind(e, real, now_ms)
        e.flags |= defs.F_SEEN
        if len(req) + (12 if e.sopt & defs.SOPT_TS else 0) <= e.mss:
            e.flags |= defs.F_INLINE | (defs.F_RP_FIN if fin else 0)
            e.rp = req if req else None
            e.rp_len = len(req)
        return self._splice_syn(e)

    def splice_by_backend(self, cip, cport, rip, rport):
        """(cip, cport, vip, vport) of the splice flow bound to backend rip:rport for this
        client address and port, or None."""
        c, r = _check_ip(cip), _check_ip(rip)
        cp, rp = _check_port(cport), _check_port(rport)
        idx = self._find(self.irev, flow_hash(r, c, rp, cp, 6), r, c, rp, cp, 6, True)
        if idx < 0 or self.flows_[idx].mode != defs.MODE_SPLICE:
            return None
        e = self.flows_[idx]
        return (e.cip, e.cport, e.vip, e.vport)

    def splice_syn(self, cip, cport, vip, vport):
        """Our SYN to the backend again (it was lost), or None when the flow is not waiting
        for the backend's SYN-ACK."""
        idx = self._splice_lookup(cip, cport, vip, vport)
        if (idx < 0 or self.flows_[idx].state != defs.S_SPL_CONNECTING
                or self.reals[self.flows_[idx].real].mac is None):
            return None
        return self._splice_syn(self.flows_[idx])

    def splice_waiting(self, now_ms):
        """Flows Python has not seen that may need it, SPLICE_WAIT_HANDOFF_MS or longer after
        they were queued: a client silent since its cookie ACK (SPL_WAIT), or a flow bound
        here whose backend has not answered yet (SPL_CONNECTING: our SYN may be lost).
        [(cip, cport, vip, vport, queued_ms)]; they count as seen from now on. Flows that
        moved on are skipped."""
        out = []
        q = self.waitq
        while q and now_ms - q[0][3] >= defs.SPLICE_WAIT_HANDOFF_MS:
            idx, c_isn, created, at = q.popleft()
            e = self.flows_[idx]
            if (e.used and e.mode == defs.MODE_SPLICE and e.c_isn == c_isn and e.created == created
                    and e.state in (defs.S_SPL_WAIT, defs.S_SPL_CONNECTING)
                    and not e.flags & defs.F_SEEN):
                e.flags |= defs.F_SEEN
                out.append((e.cip, e.cport, e.vip, e.vport, at))
        return out

    def splice_drop(self, cip, cport, vip, vport):
        """Forget a splice flow (refused, redirected, backend never answered)."""
        idx = self._splice_lookup(cip, cport, vip, vport)
        if idx < 0:
            return False
        self._delete(idx)
        return True


def tcp_options(f, start, end):
    """{kind: offset} of the TCP options in f[start:end] (first of each kind), or None when
    they are malformed (a length below 2 or running past the header)."""
    out = {}
    i = start
    while i < end:
        kind = f[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end or f[i + 1] < 2 or i + f[i + 1] > end:
            return None
        out.setdefault(kind, i)
        i += f[i + 1]
    return out


_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _eol(d, i, m):
    """Index after a CRLF or LF at i, or -1."""
    if i < m and d[i] == 10:
        return i + 1
    if i + 1 < m and d[i] == 13 and d[i + 1] == 10:
        return i + 2
    return -1


def _http_head(d, m):
    """(method, path, host or None) when d[:m] starts with a complete HTTP/1.0 or 1.1 request
    head that modes/l7.py parse_http_request accepts, with an origin-form target and a Host
    (if any) of plain ASCII; else None (then the rules are Python's to apply)."""
    i = 0
    while True:
        k = _eol(d, i, m)
        if k < 0:
            break
        i = k
    s = i
    while i < m and d[i] in _TCHAR and i - s <= defs.HTTP_MAX_METHOD:
        i += 1
    if i == s or i - s > defs.HTTP_MAX_METHOD or i >= m or d[i] != 32:
        return None
    method = d[s:i]
    i += 1
    s = i
    while i < m and 0x21 <= d[i] <= 0x7E:
        i += 1
    if i == s or i >= m or d[i] != 32 or d[s] != 47:
        return None
    path = d[s:i]
    for c in (b"?", b"#"):
        path = path.split(c, 1)[0]
    i += 1
    if i + 8 > m or d[i:i + 7] != b"HTTP/1." or d[i + 7] not in (48, 49):
        return None
    i = _eol(d, i + 8, m)
    if i < 0:
        return None
    nh, host = 0, None
    while _eol(d, i, m) < 0:
        ns = i
        while i < m and d[i] in _TCHAR:
            i += 1
        if i == ns or i >= m or d[i] != 58:
            return None
        vs = i = i + 1
        while i < m and (d[i] == 9 or 0x20 <= d[i] <= 0x7E or d[i] >= 0x80):
            i += 1
        ve = i
        i = _eol(d, i, m)
        if i < 0:
            return None
        nh += 1
        if nh > defs.HTTP_MAX_HEADERS:
            return None
        if d[ns:vs - 1].lower() == b"host":
            if host is not None:
                return None
            host = d[vs:ve]
    if host is None:
        return method, path, None
    host = host.strip(b" \t")
    if len(host) > defs.HTTP_MAX_HOST or any(c >= 0x80 for c in host):
        return None
    host = host.lower()
    if not host:
        return method, path, None
    if host[0] == 91:
        return None
    name, colon, port = host.partition(b":")
    if colon and port and not port.isdigit():
        return method, path, None
    if name.endswith(b"."):
        name = name[:-1]
    return method, path, name or None


def _l7_match(d, rules):
    """The pool of the first rule that matches d (modes/l7.py RuleSet.decide), or None when
    none does or it is not certain yet."""
    http = False
    for kind, a, pool in rules:
        if kind == defs.L7_DEFAULT:
            return pool
        if kind == defs.L7_PREFIX:
            if len(d) >= len(a):
                if d.startswith(a):
                    return pool
            elif a.startswith(d):
                return None
            continue
        if http is False:
            http = _http_head(d, len(d))
        if http is None:
            return None
        method, path, host = http
        if kind == defs.L7_METHOD:
            if method == a:
                return pool
        elif kind == defs.L7_PATH:
            if path.startswith(a):
                return pool
        elif kind == defs.L7_HOST:
            if host is not None and host == a:
                return pool
        elif kind == defs.L7_HOST_SUFFIX:
            if host is not None and len(host) > len(a) and host.endswith(a) and host[0] != 46:
                return pool
    return None


def tcp_frame(dmac, smac, src, dst, sport, dport, seq, ack, flags, win, opt=b"", data=b""):
    """An Ethernet/IPv4/TCP frame with complete checksums (opt a multiple of 4 bytes; TTL 64,
    DF, IP id 0), as a bytearray."""
    tcp_len = 20 + len(opt) + len(data)
    f = bytearray(dmac + smac + b"\x08\x00\x45\x00" + (20 + tcp_len).to_bytes(2, "big")
                  + b"\x00\x00\x40\x00\x40\x06\x00\x00" + src.to_bytes(4, "big") + dst.to_bytes(4, "big")
                  + sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + (seq & M32).to_bytes(4, "big")
                  + (ack & M32).to_bytes(4, "big") + bytes([(20 + len(opt)) // 4 << 4, flags])
                  + win.to_bytes(2, "big") + b"\x00\x00\x00\x00" + opt + data)
    _put16(f, 24, ~csum_fold(sum(_u16(f, k) for k in range(14, 34, 2))) & 0xFFFF)
    _put16(f, 50, tcp_checksum(f, 34, tcp_len))
    return f


def tcp_checksum(f, off, length):
    """Full TCP checksum of f[off:off+length] with the IPv4 pseudo-header of the frame."""
    s = _u16(f, 26) + _u16(f, 28) + _u16(f, 30) + _u16(f, 32) + 6 + length
    for k in range(off, off + length - 1, 2):
        if k != off + 16:
            s += _u16(f, k)
    if length & 1:
        s += f[off + length - 1] << 8
    return ~csum_fold(s) & 0xFFFF


def _patch32(f, o, v, partial=False):
    """Write a 32-bit field at frame offset o and patch the TCP checksum, word-aligned or not.
    A partial checksum is not touched: the kernel sums the header later."""
    if partial:
        _put32(f, o, v)
        return
    if (o - 34) & 1 == 0:
        _put16(f, 50, csum_replace4(_u16(f, 50), _u32(f, o), v))
        _put32(f, o, v)
        return
    old = [_u16(f, k) for k in range(o - 1, o + 5, 2)]
    _put32(f, o, v)
    c = _u16(f, 50)
    for j, k in enumerate(range(o - 1, o + 5, 2)):
        c = csum_replace2(c, old[j], _u16(f, k))
    _put16(f, 50, c)


def _patch16(f, o, v, partial=False):
    if partial:
        _put16(f, o, v)
        return
    if (o - 34) & 1 == 0:
        _put16(f, 50, csum_replace2(_u16(f, 50), _u16(f, o), v))
        _put16(f, o, v)
        return
    old = [_u16(f, o - 1), _u16(f, o + 1)]
    _put16(f, o, v)
    c = csum_replace2(_u16(f, 50), old[0], _u16(f, o - 1))
    _put16(f, 50, csum_replace2(c, old[1], _u16(f, o + 1)))


def _rewrite(f, ip_off, port_off, old_ip, old_port, new_ip, new_port, proto, partial=False):
    """Replace one address (at ip_off) and one port (at port_off), decrement TTL, and patch
    the IPv4 and L4 checksums incrementally. A partial L4 checksum (offloaded: it holds the
    pseudo-header sum) takes the address change only; the port is summed by the kernel."""
    ipc = _u16(f, 24)
    ttl_word = _u16(f, 22)
    f[22] -= 1
    ipc = csum_replace2(ipc, ttl_word, _u16(f, 22))
    ipc = csum_replace4(ipc, old_ip, new_ip)
    _put16(f, 24, ipc)
    _put32(f, ip_off, new_ip)
    _put16(f, port_off, new_port)
    co = 50 if proto == defs.PROTO_TCP else 40
    l4c = _u16(f, co)
    if partial:
        _put16(f, co, csum_partial_replace4(l4c, old_ip, new_ip))
        return
    if proto == defs.PROTO_UDP and l4c == 0:
        return  # no UDP checksum: stays absent
    l4c = csum_replace4(l4c, old_ip, new_ip)
    l4c = csum_replace2(l4c, old_port, new_port)
    if proto == defs.PROTO_UDP and l4c == 0:
        l4c = 0xFFFF
    _put16(f, co, l4c)


def _track(e, tflags, fwd):
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
