"""watch: lbctl trace --follow and lbctl capture in the fast path. Twin of
fastpath/watch.pxi (whose header states the invariants: no watch, one branch per frame; a
watched frame is processed as any other; the ring is bounded, a frame that finds it full is
counted lost; a record names the counters the frame moved, at most WATCH_MAX_CTR).

The engine's watch state: watch_on, wterm [(kind, value)], wring (a deque of records, at
most wsize), wsnap, wseen, wlost.
"""
import collections
import time

from .. import defs
from ..checks import check_watch
from .flowtable import flow_find
from .inet import flow_hash, rd16, rd32


def watch_match(self, f, n):
    """Whether every filter term holds for the IPv4 frame f[:n], or else (a VXLAN frame)
    for the frame inside it."""
    for _depth in range(2):
        if n < 34 or rd16(f, 12) != 0x0800 or f[14] >> 4 != 4:
            return False
        ihl = (f[14] & 15) * 4
        proto = f[23]
        src = rd32(f, 26)
        dst = rd32(f, 30)
        l4 = 14 + ihl
        ports = (proto in (defs.PROTO_TCP, defs.PROTO_UDP) and ihl >= 20
                 and rd16(f, 20) & 0x1FFF == 0 and l4 + 4 <= n)
        sport = rd16(f, l4) if ports else 0
        dport = rd16(f, l4 + 2) if ports else 0
        ok = True
        for kind, val in self.wterm:
            if kind == defs.W_HOST:
                ok = src == val or dst == val
            elif kind == defs.W_PORT:
                ok = ports and (sport == val or dport == val)
            elif kind == defs.W_PROTO:
                ok = proto == val
            elif kind == defs.W_SRC:
                ok = src == val
            elif kind == defs.W_DST:
                ok = dst == val
            elif kind == defs.W_SPORT:
                ok = ports and sport == val
            else:
                ok = ports and dport == val
            if not ok:
                break
        if ok:
            return True
        # a tunnel's frame as sent: the client's frame is inside (outer IP, UDP 8, VXLAN 8)
        if not (ports and proto == defs.PROTO_UDP and dport == defs.VXLAN_PORT
                and l4 + 16 <= n):
            return False
        f = f[l4 + 16:]
        n -= l4 + 16
    return False


def watch_frame(self, batch, i, now, burst_frame):
    """burst_frame with the watch around it (see watch.pxi). The twin is handed serve's
    burst_frame (serve imports this module, so this one cannot import serve)."""
    hdr = batch.hdr
    row = min(int(batch.lens[i]), batch.snap)
    n = max(0, row - hdr)
    data = batch.buf[i, hdr:hdr + n].tobytes()
    pre = watch_match(self, data, n)
    before = list(self.ctr)
    burst_frame(self, batch, i, now)
    olen = 0
    out = b""
    if batch.verdict[i] == defs.V_TX:
        row = min(int(batch.lens[i]), batch.snap)
        olen = max(0, row - hdr)
        out = batch.buf[i, hdr:hdr + olen].tobytes()
    if not pre and not (olen and watch_match(self, out, olen)):
        return
    self.wseen += 1
    if len(self.wring) >= self.wsize:
        self.wlost += 1
        return
    moved = tuple((defs.COUNTERS[k], self.ctr[k] - before[k]) for k in range(defs.N_COUNTERS)
                  if self.ctr[k] != before[k])[:defs.WATCH_MAX_CTR]
    flow = None
    cap = min(n, self.wsnap)
    if cap >= 34 and rd16(data, 12) == 0x0800 and data[23] in (defs.PROTO_TCP, defs.PROTO_UDP):
        ihl = (data[14] & 15) * 4
        l4 = 14 + ihl
        proto, src, dst = data[23], rd32(data, 26), rd32(data, 30)
        if ihl >= 20 and l4 + 4 <= cap:
            sport, dport = rd16(data, l4), rd16(data, l4 + 2)
            h = flow_hash(src, dst, sport, dport, proto)
            fwd = True
            idx = flow_find(self, self.ifwd, h, src, dst, sport, dport, proto, False)
            if idx < 0:
                idx = flow_find(self, self.irev, h, src, dst, sport, dport, proto, True)
                fwd = False
            if idx >= 0:
                e = self.fl[idx]
                flow = (e.cip, e.cport, e.vip, e.vport, e.proto, e.rip, e.rport, e.real,
                        e.mode, e.state, int(fwd))
    self.wring.append((time.time_ns(), int(batch.verdict[i]), int(batch.reason[i]), n,
                       data[:cap], olen, out[:self.wsnap], moved, flow))


def api_watch_set(self, terms, snap, size):
    if terms is None:
        self.watch_on = False
        self.wterm, self.wring, self.wsize, self.wsnap = [], collections.deque(), 0, 0
        self.wseen = self.wlost = 0
        return
    terms = check_watch(terms, snap, size)
    self.wterm = terms
    self.wring = collections.deque()
    self.wsize, self.wsnap = size, snap
    self.wseen = self.wlost = 0
    self.watch_on = True


def api_watch_drain(self, limit):
    m = len(self.wring)
    if limit is not None:
        if not isinstance(limit, int) or limit < 0:
            raise ValueError("limit must be an integer >= 0, got %r" % (limit,))
        m = min(m, limit)
    return [self.wring.popleft() for _ in range(m)]


def api_watch_status(self):
    return {"on": bool(self.watch_on), "terms": list(self.wterm), "snap": self.wsnap,
            "size": self.wsize, "pending": len(self.wring), "seen": self.wseen,
            "lost": self.wlost}
