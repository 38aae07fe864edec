"""sync: flow entries as records for the peer instances of a cluster, and back. Twin of
fastpath/sync.pxi, whose header gives the datagram and record layout and the invariants;
the same bytes, counters and flow table for every input.
"""
import struct

from .. import defs
from ..checks import check_sync_cursor, check_sync_max
from ..defs import C, F_FIN_C, F_FIN_S, F_INLINE, F_REV, F_RP_FIN, F_SEEN
from .flowtable import (flow_alloc, flow_find, flow_insert, flow_insert_rev, flow_rev_clash,
                        flow_unlink, service_find, splice_cap)
from .inet import flow_hash
from .types import XMIT

# the record, network order: key, mode, state, flags, backend, splice's fields, the backend's
# learnt MSS and no-SACK bit, 3 zero bytes, the key's hash (low 32 bits)
REC = struct.Struct("!IIHHBBBBIHHIIIIIIHBBBBHB3sI")
HDR = struct.Struct("!BBH")
SYNCABLE = (defs.MODE_NAT, defs.MODE_DSR, defs.MODE_TUNNEL)
FLAGS_OK = F_FIN_C | F_FIN_S | F_SEEN | F_INLINE | F_RP_FIN
ZERO3 = b"\0\0\0"


def sync_due(self, e, now, full):
    """Whether flow e goes into an export now (full: a dump, every flow that can travel)."""
    if not e.used or e.real < 0:
        return False
    if e.mode not in SYNCABLE:
        if e.mode != defs.MODE_SPLICE:
            return False
        if e.state in (defs.S_SPL_WAIT, defs.S_SPL_CONNECTING) or e.rp is not None:
            return False
    if full:
        return True
    if e.pkts_fwd + e.pkts_rev < self.sync_thr:
        return False
    if e.sync_st != e.state:
        return True
    return e.last > e.sync_at and now - e.sync_at >= self.sync_period


def sync_record(self, e):
    """Flow e as a record (SYNC_REC_LEN bytes)."""
    head = (e.cip, e.vip, e.cport, e.vport, e.proto, e.mode, e.state, e.flags & ~F_REV,
            e.rip, e.rport)
    if e.mode == defs.MODE_SPLICE:
        r = self.reals[e.real]
        return REC.pack(*head, e.mss, e.c_isn, e.l_isn, e.delta, e.ts_off, e.c_tsval,
                        e.b_tsval, e.c_win, e.ws_c, e.ws_b, e.ws_lb, e.sopt, r.mss,
                        1 if r.nosack else 0, ZERO3, e.hf & 0xFFFFFFFF)
    return REC.pack(*head, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, ZERO3,
                    e.hf & 0xFFFFFFFF)


def sync_scan(self, maxn, now, full, at):
    """Records of due flows from entry `at` on, at most maxn, at most once round the table
    (a dump: to its end). Returns (records, where the scan ended). A delta export marks
    what it sent (sync_st, sync_at)."""
    out = []
    j, seen = at, 0
    while len(out) < maxn and seen < self.cap:
        if full and j >= self.cap:
            break
        k = j % self.cap
        e = self.fl[k]
        if sync_due(self, e, now, full):
            out.append(sync_record(self, e))
            if not full:
                e.sync_st, e.sync_at = e.state, now
        j = j + 1 if full else (k + 1) % self.cap
        seen += 1
    self.ctr[C["sync_exported"]] += len(out)
    return out, j


def sync_check(r):
    """A record's checks (r: REC's fields): 0 well formed, 1 malformed, 2 a hop flow."""
    (cip, vip, cport, vport, proto, mode, state, flags, rip, rport, mss, c_isn, l_isn, delta,
     ts_off, c_tsval, b_tsval, c_win, ws_c, ws_b, ws_lb, sopt, rmss, rnosack, zero,
     check) = r
    if proto not in (defs.PROTO_TCP, defs.PROTO_UDP):
        return 1
    if mode not in SYNCABLE and mode != defs.MODE_SPLICE:
        return 2 if mode == defs.MODE_HOP else 1
    if flags & ~FLAGS_OK & 0xFF:
        return 1
    if rip == 0:
        return 1
    if check != flow_hash(cip, vip, cport, vport, proto) & 0xFFFFFFFF:
        return 1
    if zero != ZERO3:
        return 1
    if mode == defs.MODE_SPLICE:
        if proto != defs.PROTO_TCP or not defs.S_ESTABLISHED <= state <= defs.S_CLOSE:
            return 1
        if (ws_c > 14 and ws_c != 0xF) or ws_b > 14 or ws_lb > 14 or sopt > 3 or rnosack > 1:
            return 1
        return 0
    if any(r[10:24]):
        return 1
    if proto == defs.PROTO_UDP:
        return 0 if state == defs.S_UDP else 1
    return 0 if state <= defs.S_CLOSE else 1


def sync_take(self, r, real, sv, now):
    """A checked record with its service and this engine's real: create the flow, or update
    the one on its key. Returns the counter it moved."""
    cip, vip, cport, vport, proto, mode = r[:6]
    h = flow_hash(cip, vip, cport, vport, proto)
    idx = flow_find(self, self.ifwd, h, cip, vip, cport, vport, proto, False)
    rl = self.reals[real]
    ctr = C["sync_updated"]
    if XMIT[mode].rev is not None and (idx < 0 or self.fl[idx].real != real):
        # a live flow here on the backend-side key this record would enter: it stays
        if flow_rev_clash(self, rl.ip, cip, rl.port, cport, proto, now) >= 0:
            return C["sync_refused"]
    if idx >= 0:
        e = self.fl[idx]
        if e.mode != mode:
            return C["sync_refused"]
        if e.real != real:
            if e.flags & F_REV:
                flow_unlink(self, self.irev, e.hr, idx, True)
                e.flags &= ~F_REV
            if e.real >= 0:
                self.reals[e.real].conns -= 1
            rl.conns += 1
            e.real = real
            e.rip, e.rport = rl.ip, rl.port
            e.hr = flow_hash(rl.ip, cip, rl.port, cport, proto)
            if XMIT[mode].rev is not None:
                flow_insert_rev(self, idx)
        e.rp, e.rp_len = None, 0
    else:
        idx = flow_alloc(self, now)
        e = self.fl[idx]
        e.cip, e.vip, e.cport, e.vport, e.proto, e.mode = cip, vip, cport, vport, proto, mode
        e.rip, e.rport, e.real, e.used, e.flags = rl.ip, rl.port, real, 1, 0
        e.hf = h
        e.hr = flow_hash(rl.ip, cip, rl.port, cport, proto)
        e.created = now
        e.pkts_fwd = e.pkts_rev = e.bytes_fwd = e.bytes_rev = 0
        e.rp, e.rp_len = None, 0
        flow_insert(self, self.ifwd, h, idx)
        if XMIT[mode].rev is not None:
            flow_insert_rev(self, idx)
        rl.conns += 1
        e.vslot = sv.slot
        self.vctr[sv.slot].conns += 1
        self.nused += 1
        ctr = C["sync_imported"]
    e.state = r[6]
    e.flags = (e.flags & F_REV) | r[7]
    e.last = now
    e.sync_st, e.sync_at = e.state, now
    if mode == defs.MODE_SPLICE:
        (e.mss, e.c_isn, e.l_isn, e.delta, e.ts_off, e.c_tsval, e.b_tsval, e.c_win, e.ws_c,
         e.ws_b, e.ws_lb, e.sopt) = r[10:22]
        if rl.mss == 0 and r[22] != 0:
            rl.mss, rl.nosack = r[22], bool(r[23])     # what the peer learnt of it
            splice_cap(sv, rl)
    return ctr


def sync_real(rix, ip, port):
    """The lowest real slot with this address and port in rix (sync_reals), or -1."""
    return rix.get((ip, port), -1)


def sync_reals(self):
    """An index of the real slots by (address, port), the lowest slot first."""
    rix = {}
    for k, r in enumerate(self.reals):
        if (r.ip or r.port) and (r.ip, r.port) not in rix:
            rix[(r.ip, r.port)] = k
    return rix


# ---- the API's bodies (engine.py) ---------------------------------------------------------
def sync_pack(self, maxn, now, full, at):
    """(a datagram of at most maxn records from sync_scan, or b"" when none was due, where
    the scan ended)."""
    recs, at = sync_scan(self, maxn, now, full, at)
    if not recs:
        return b"", at
    return HDR.pack(defs.SYNC_MAGIC, defs.SYNC_VERSION, len(recs)) + b"".join(recs), at


def api_sync_export(self, max_records, now_ms):
    maxn = check_sync_max(max_records)
    data, self.sync_hand = sync_pack(self, maxn, now_ms, False, self.sync_hand)
    return data


def api_sync_dump(self, cursor, max_records):
    maxn = check_sync_max(max_records)
    at = check_sync_cursor(cursor, self.cap)
    return sync_pack(self, maxn, 0, True, at)


def api_sync_import(self, data, now_ms):
    try:
        buf = memoryview(data).cast("B")
    except (TypeError, ValueError):
        raise ValueError("sync data must be bytes, got %s" % type(data).__name__) from None
    if len(buf) < defs.SYNC_HDR_LEN:
        self.ctr[C["sync_malformed"]] += 1
        return 0, 0
    magic, version, n = HDR.unpack_from(buf, 0)
    if (magic != defs.SYNC_MAGIC or version != defs.SYNC_VERSION
            or len(buf) != defs.SYNC_HDR_LEN + n * defs.SYNC_REC_LEN):
        self.ctr[C["sync_malformed"]] += 1
        return 0, 0
    if n == 0:
        return 0, 0
    rix = sync_reals(self)
    taken = refused = 0
    for k in range(n):
        r = REC.unpack_from(buf, defs.SYNC_HDR_LEN + k * defs.SYNC_REC_LEN)
        c = sync_check(r)
        if c == 1:
            self.ctr[C["sync_malformed"]] += 1
            refused += 1
            continue
        sv = service_find(self, r[1], r[3], r[4])
        real = sync_real(rix, r[8], r[9]) if c == 0 else -1
        if c == 2 or sv is None or sv.mode != r[5] or real < 0:
            self.ctr[C["sync_refused"]] += 1
            refused += 1
            continue
        c = sync_take(self, r, real, sv, now_ms)
        self.ctr[c] += 1
        if c == C["sync_refused"]:
            refused += 1
        else:
            taken += 1
    return taken, refused
