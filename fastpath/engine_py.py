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
import numpy as np

from . import defs
from .checks import (check_ip as _check_ip, check_mac as _check_mac, check_port as _check_port,
                     check_real_idx as _check_real_idx, check_specs as _check_specs)
from .defs import C

MASK64 = (1 << 64) - 1
_TX_REASONS = {C["nat_fwd"], C["nat_rev"], C["dsr_fwd"]}
_PUNT_REASONS = {C["punt_arp"], C["punt_local"]}
BCAST = b"\xff" * 6

TH_FIN, TH_SYN, TH_RST, TH_ACK = 0x01, 0x02, 0x04, 0x10


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
                 "pkts_fwd", "pkts_rev", "bytes_fwd", "bytes_rev")

    def __init__(self):
        self.used = 0


class _Real:
    __slots__ = ("ip", "port", "mac", "conns", "down")

    def __init__(self):
        self.ip, self.port, self.mac, self.conns, self.down = 0, 0, None, 0, False


class _Service:
    __slots__ = ("vip", "port", "proto", "mode", "sched", "table", "weights", "cursor", "flags")


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
        self.flows_ = [_Flow() for _ in range(capacity)]
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
        if e.mode != defs.MODE_DSR:
            self._unlink(self.irev, e.hr, idx, True)
        self.reals[e.real].conns -= 1
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
            self._insert(self.irev, e.hr, idx)
        r.conns += 1
        self.nused += 1
        return idx

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
        ctr = self.ctr
        for i in range(batch.n):
            n = min(int(batch.lens[i]), batch.snap)
            f = bytearray(batch.buf[i, :n].tobytes())
            reason = self._one(f, n, now_ms)
            ctr[C["rx_frames"]] += 1
            ctr[reason] += 1
            v = verdict_of(reason)
            batch.verdict[i] = v
            batch.reason[i] = reason
            if v == defs.V_TX:
                batch.buf[i, :n] = np.frombuffer(bytes(f), np.uint8)

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
                elif self.reals[e.real].down and sv.flags & defs.SVC_EXPIRE_NODEST:
                    self._delete(idx)
                    self.ctr[C["flow_expired_nodest"]] += 1
                    idx = -1
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
        return C["drop_mode"]

    # ---- transmit routines (one per mode; IPVS's *_xmit) ---------------------------------
    def _nat_fwd(self, f, n, e, tflags, now):
        r = self.reals[e.real]
        if r.mac is None:
            return C["drop_no_neigh"]
        if f[22] <= 1:
            return C["drop_ttl"]
        if e.proto == defs.PROTO_TCP:
            _track(e, tflags, True)
        _rewrite(f, 30, 36, e.vip, e.vport, e.rip, e.rport, e.proto)
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
        _rewrite(f, 26, 34, e.rip, e.rport, e.vip, e.vport, e.proto)
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


def _rewrite(f, ip_off, port_off, old_ip, old_port, new_ip, new_port, proto):
    """Replace one address (at ip_off) and one port (at port_off), decrement TTL, and patch
    the IPv4 and L4 checksums incrementally."""
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
