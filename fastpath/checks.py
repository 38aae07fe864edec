"""Argument checks of the engines' control-side calls, shared by both twins (never per packet)."""
import itertools

from . import defs


def check_ip(ip):
    if not isinstance(ip, int) or not 0 <= ip <= 0xFFFFFFFF:
        raise ValueError("ip must be a host-order int 0..2^32-1, got %r" % (ip,))
    return ip


def check_port(port):
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError("port must be 0..65535, got %r" % (port,))
    return port


def check_proto(proto):
    """A flow's protocol: PROTO_TCP or PROTO_UDP."""
    if proto not in (defs.PROTO_TCP, defs.PROTO_UDP) or isinstance(proto, bool):
        raise ValueError("proto must be %d or %d, got %r" % (defs.PROTO_TCP, defs.PROTO_UDP,
                                                             proto))
    return proto


def check_mac(mac):
    if not isinstance(mac, (bytes, bytearray)) or len(mac) != 6:
        raise ValueError("mac must be 6 bytes, got %r" % (mac,))
    return bytes(mac)


def check_secret(secret):
    """16 bytes -> the two 64-bit keys of the SYN-cookie hash."""
    if not isinstance(secret, (bytes, bytearray)) or len(secret) != 16:
        raise ValueError("the splice secret must be 16 bytes")
    return int.from_bytes(secret[:8], "big"), int.from_bytes(secret[8:], "big")


def check_real_idx(idx):
    if not isinstance(idx, int) or not 0 <= idx < defs.MAX_REALS:
        raise ValueError("real index must be 0..%d, got %r" % (defs.MAX_REALS - 1, idx))


def check_vip_slot(slot):
    """A VIP counter slot (ServiceSpec.slot, Engine.vip_stats)."""
    if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < defs.MAX_SERVICES:
        raise ValueError("vip slot must be 0..%d, got %r" % (defs.MAX_SERVICES - 1, slot))


def check_pool(pool, npools):
    """A content-rule pool index of a service with npools pools, or -1 for its own table."""
    if isinstance(pool, bool) or not isinstance(pool, int) or not -1 <= pool < npools:
        raise ValueError("pool must be -1 (the service's table) or 0..%d, got %r"
                         % (npools - 1, pool))
    return pool


def check_specs(specs):
    """Validate a service list before anything is swapped in (shared by both twins)."""
    specs = list(specs)
    if len(specs) > defs.MAX_SERVICES:
        raise ValueError("at most %d services" % defs.MAX_SERVICES)
    seen = set()
    slots = set()
    for k, s in enumerate(specs):
        slot = getattr(s, "slot", None)
        slot = k if slot is None else slot         # None: its position in the list
        check_vip_slot(slot)
        if slot in slots:
            raise ValueError("duplicate vip slot %d" % slot)
        slots.add(slot)
        key = (check_ip(s.vip), check_port(s.port), s.proto)
        if s.proto not in (defs.PROTO_TCP, defs.PROTO_UDP):
            raise ValueError("service proto must be tcp or udp, got %r" % (s.proto,))
        if key in seen:
            raise ValueError("duplicate service %r" % (key,))
        seen.add(key)
        if s.mode not in defs.MODES.values():
            raise ValueError("unknown mode %r" % (s.mode,))
        if not isinstance(s.flags, int) or s.flags & ~defs.SVC_EXPIRE_NODEST or s.flags < 0:
            raise ValueError("unknown service flags %r" % (s.flags,))
        _check_table(s.sched, s.table, s.weights)
        if s.l7 is not None:
            _check_l7(s)
        tun = getattr(s, "tunnel", None)
        if (tun is not None) != (s.mode == defs.MODE_TUNNEL):
            raise ValueError("a tunnel service needs its TunnelSpec, and only it has one")
        if tun is not None:
            if not isinstance(tun.vni, int) or not 1 <= tun.vni < 1 << 24:
                raise ValueError("tunnel vni must be 1..%d, got %r" % ((1 << 24) - 1, tun.vni))
            if not isinstance(tun.mtu, int) or not 576 <= tun.mtu <= 9000:
                raise ValueError("tunnel mtu must be 576..9000, got %r" % (tun.mtu,))
    return specs


def _check_table(sched, table, weights):
    if sched not in (defs.SCHED_SEQ, defs.SCHED_HASH5, defs.SCHED_HASHSRC, defs.SCHED_LEASTCONN):
        raise ValueError("unknown scheduler kind %r" % (sched,))
    _check_reals(table)
    if sched == defs.SCHED_LEASTCONN:
        if len(weights) != len(table) or any(not isinstance(w, int) or w <= 0 for w in weights):
            raise ValueError("lc needs a positive weight per candidate")


def _check_reals(table):
    """check_real_idx of every row, in C-level loops (a Maglev table has 65537 rows, and every
    command checks every VIP's table); a bad row is then found, and named, row by row."""
    table = list(table)
    if not table:
        return
    if all(map(isinstance, table, itertools.repeat(int))) and \
            0 <= min(table) and max(table) < defs.MAX_REALS:
        return
    for r in table:
        check_real_idx(r)


def _check_l7(s):
    l7 = s.l7
    if s.mode not in (defs.MODE_SPLICE, defs.MODE_HOP):
        raise ValueError("content rules need a splice or hop service")
    if not isinstance(l7.limit, int) or not 1 <= l7.limit <= 65536:
        raise ValueError("l7 limit must be 1..65536, got %r" % (l7.limit,))
    if len(l7.rules) > defs.L7_MAX_RULES or len(l7.pools) > defs.L7_MAX_POOLS:
        raise ValueError("at most %d rules and %d pools" % (defs.L7_MAX_RULES, defs.L7_MAX_POOLS))
    for kind, arg, pool in l7.rules:
        if kind not in defs.L7_KINDS:
            raise ValueError("unknown l7 rule kind %r" % (kind,))
        if not isinstance(arg, bytes) or len(arg) > defs.L7_MAX_ARG:
            raise ValueError("l7 rule argument must be bytes of at most %d" % defs.L7_MAX_ARG)
        if not isinstance(pool, int) or not 0 <= pool < len(l7.pools):
            raise ValueError("l7 rule pool %r out of range" % (pool,))
    for sched, table, weights in l7.pools:
        _check_table(sched, table, weights)


_W_LIMITS = {defs.W_HOST: 0xFFFFFFFF, defs.W_SRC: 0xFFFFFFFF, defs.W_DST: 0xFFFFFFFF,
             defs.W_PORT: 0xFFFF, defs.W_SPORT: 0xFFFF, defs.W_DPORT: 0xFFFF, defs.W_PROTO: 0xFF}


def check_watch(terms, snap, size):
    """A watch filter (Engine.watch_set): a list of (W_* kind, value), its snap length and
    ring size. Returns the terms as a list of int pairs."""
    if isinstance(snap, bool) or not isinstance(snap, int) or not (
            defs.WATCH_SNAP_MIN <= snap <= defs.WATCH_SNAP_MAX):
        raise ValueError("snap must be %d..%d, got %r" % (defs.WATCH_SNAP_MIN,
                                                          defs.WATCH_SNAP_MAX, snap))
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= defs.WATCH_RING_MAX:
        raise ValueError("size must be 1..%d, got %r" % (defs.WATCH_RING_MAX, size))
    terms = list(terms)
    if len(terms) > defs.WATCH_MAX_TERMS:
        raise ValueError("at most %d watch terms, got %d" % (defs.WATCH_MAX_TERMS, len(terms)))
    out = []
    for t in terms:
        if not isinstance(t, (tuple, list)) or len(t) != 2:
            raise ValueError("a watch term is (kind, value), got %r" % (t,))
        kind, value = t
        if kind not in _W_LIMITS or isinstance(kind, bool):
            raise ValueError("unknown watch term kind %r" % (kind,))
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _W_LIMITS[kind]:
            raise ValueError("watch term %d: value must be 0..%d, got %r"
                             % (kind, _W_LIMITS[kind], value))
        out.append((kind, value))
    return out


def check_sync_max(n):
    """Records in one sync datagram: 1..SYNC_MAX_RECORDS."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= defs.SYNC_MAX_RECORDS:
        raise ValueError("max_records must be 1..%d, got %r" % (defs.SYNC_MAX_RECORDS, n))
    return n


def check_sync_cursor(cursor, cap):
    """Where a sync dump goes on: an entry index 0..capacity."""
    if not isinstance(cursor, int) or isinstance(cursor, bool) or not 0 <= cursor <= cap:
        raise ValueError("cursor must be 0..%d, got %r" % (cap, cursor))
    return cursor


def check_sync(threshold, period_ms):
    """The export policy: frames before a flow is sent (1..2^32-1), refresh period in ms."""
    if (not isinstance(threshold, int) or isinstance(threshold, bool)
            or not 1 <= threshold <= 0xFFFFFFFF):
        raise ValueError("sync threshold must be 1..4294967295, got %r" % (threshold,))
    if (not isinstance(period_ms, int) or isinstance(period_ms, bool)
            or not 1 <= period_ms <= (1 << 62)):
        raise ValueError("sync period must be a positive number of ms, got %r" % (period_ms,))
    return threshold, period_ms
