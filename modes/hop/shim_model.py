"""The hop shim's reference model: what hop_shim.c does to a frame, in Python.

tests/unit/test_hop_shim.py runs the compiled programs (BPF_PROG_TEST_RUN) and this model on
the same fixture frames and holds them equal: verdict, output frame byte for byte (the model
recomputes the TCP checksum whole, the program patches it by difference), counters, and the
map's entries. hop_shim.c's header says what the shim does; this file says it again in
code, in the same order.

Invariants:
- Frames are bytes; the model never changes its input. ingress()/egress() return (verdict,
  frame out) with verdict TC_ACT_OK or TC_ACT_SHOT, as the programs do.
- Key and Flow have the C structs' layout (pack_*/unpack_*): key fields in network order,
  flow fields in host (little-endian) order.
- SHIM_STATS is the order of hop_stats' slots (hop_shim.c's enum).
"""
import struct
from collections import namedtuple

from fastpath.defs import (HOP_CLOSING_S, HOP_EXID, HOP_HANDOFF_LEN, HOP_IDLE_S, HOP_MARK_LEN,
                           HOP_OPT_KIND, HOP_PENDING_S)

TC_ACT_OK, TC_ACT_SHOT = 0, 2
ST_PENDING, ST_ACTIVE = 1, 2
FL_FIN_IN, FL_FIN_OUT = 1, 2
M32 = 0xFFFFFFFF
SHIM_STATS = ("in_marked", "in_handoff", "in_translated", "in_drop_pending", "in_syn_cleared",
              "out_to_lb", "out_translated", "expired", "rst", "bad_option")

Key = namedtuple("Key", "cip vip cport vport")          # host-order ints
Flow = namedtuple("Flow", "last_ns delta ts_off lb_mac state flags ws_b ws_lb")


def pack_key(k):
    return struct.pack("!IIHH", k.cip, k.vip, k.cport, k.vport)


def unpack_key(b):
    return Key(*struct.unpack("!IIHH", b[:12]))


def pack_flow(f):
    return struct.pack("<QII6sBBBB6x", f.last_ns, f.delta, f.ts_off, f.lb_mac, f.state,
                       f.flags, f.ws_b, f.ws_lb)


def unpack_flow(b):
    return Flow(*struct.unpack("<QII6sBBBB6x", b[:32]))


def _csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


class _Seg:
    """A parsed IPv4/TCP frame: where the TCP header is and the option offsets (in the TCP
    header), as hop_shim.c's parse() finds them."""

    def __init__(self, frame):
        self.f = bytearray(frame)
        self.ok = False
        f = self.f
        if len(f) < 34 or f[12:14] != b"\x08\x00":
            return
        if f[14] >> 4 != 4 or f[23] != 6 or (f[20] & 0x3F) or f[21]:
            return
        ihl = (f[14] & 15) * 4
        if ihl < 20 or len(f) < 14 + ihl + 20:
            return
        self.l4 = 14 + ihl
        self.hl = (f[self.l4 + 12] >> 4) * 4
        if self.hl < 20 or self.hl > 60 or len(f) < self.l4 + self.hl:
            return
        self.saddr, self.daddr = struct.unpack("!II", f[26:34])
        self.sport, self.dport = struct.unpack("!HH", f[self.l4:self.l4 + 4])
        self.flags = f[self.l4 + 13]
        self.ts = self.sack = self.hop = -1
        self.sack_len = self.hop_len = 0
        h = f[self.l4:self.l4 + self.hl]
        i = 20
        for _ in range(40):
            if i >= self.hl or h[i] == 0:
                break
            if h[i] == 1:
                i += 1
                continue
            if i + 1 >= self.hl:
                break
            kind, ln = h[i], h[i + 1]
            if ln < 2 or i + ln > self.hl:
                break
            if kind == 8 and ln == 10 and self.ts < 0:
                self.ts = i
            elif kind == 5 and self.sack < 0:
                self.sack, self.sack_len = i, ln
            elif (kind == HOP_OPT_KIND and ln >= 4 and self.hop < 0
                  and h[i + 2:i + 4] == HOP_EXID.to_bytes(2, "big")):
                self.hop, self.hop_len = i, ln
            i += ln
        self.ok = True

    def rd32(self, off):
        return struct.unpack("!I", self.f[self.l4 + off:self.l4 + off + 4])[0]

    def wr32(self, off, v):
        self.f[self.l4 + off:self.l4 + off + 4] = struct.pack("!I", v & M32)

    def nop_option(self):
        a = self.l4 + self.hop
        self.f[a:a + self.hop_len] = b"\x01" * self.hop_len

    def out(self):
        """The frame with its TCP checksum recomputed whole (over the IP payload)."""
        f = self.f
        tot = struct.unpack("!H", f[16:18])[0]
        seg = f[self.l4:14 + tot]
        seg[16:18] = b"\0\0"
        pseudo = f[26:34] + struct.pack("!BBH", 0, 6, len(seg))
        c = 0xFFFF - _csum(bytes(pseudo) + bytes(seg))
        f[self.l4 + 16:self.l4 + 18] = struct.pack("!H", c)
        return bytes(f)


class ShimModel:
    """The shim of one backend: its map (flows: Key -> Flow) and its counters (stats)."""

    def __init__(self):
        self.flows = {}
        self.stats = dict.fromkeys(SHIM_STATS, 0)

    def _timeout_ns(self, fl):
        if fl.state == ST_PENDING:
            return HOP_PENDING_S * 10 ** 9
        if fl.flags & (FL_FIN_IN | FL_FIN_OUT) == FL_FIN_IN | FL_FIN_OUT:
            return HOP_CLOSING_S * 10 ** 9
        return HOP_IDLE_S * 10 ** 9

    def _find(self, k, now):
        fl = self.flows.get(k)
        if fl is None:
            return None
        if now - fl.last_ns > self._timeout_ns(fl):
            del self.flows[k]
            self.stats["expired"] += 1
            return None
        return fl

    def ingress(self, frame, now_ns):
        s = _Seg(frame)
        if not s.ok:
            return TC_ACT_OK, bytes(frame)
        k = Key(s.saddr, s.daddr, s.sport, s.dport)
        if s.flags & 0x12 == 0x02:
            if s.hop >= 0 and s.hop_len == HOP_MARK_LEN:
                self.flows[k] = Flow(now_ns, 0, 0, bytes(frame[6:12]), ST_PENDING, 0, 0, 0)
                s.nop_option()
                self.stats["in_marked"] += 1
                return TC_ACT_OK, s.out()
            if s.hop >= 0:
                self.stats["bad_option"] += 1
            if self.flows.pop(k, None) is not None:
                self.stats["in_syn_cleared"] += 1
            return TC_ACT_OK, bytes(frame)
        fl = self._find(k, now_ns)
        if fl is None:
            return TC_ACT_OK, bytes(frame)
        fl = fl._replace(last_ns=now_ns)
        self.flows[k] = fl
        if s.hop >= 0 and s.hop_len == HOP_HANDOFF_LEN:
            o = s.hop
            self.flows[k] = fl._replace(delta=s.rd32(o + 4), ts_off=s.rd32(o + 8),
                                        ws_b=s.f[s.l4 + o + 12], ws_lb=s.f[s.l4 + o + 13],
                                        state=ST_ACTIVE)
            s.nop_option()
            self.stats["in_handoff"] += 1
            return TC_ACT_OK, s.out()
        if s.hop >= 0:
            self.stats["bad_option"] += 1
        if fl.state != ST_ACTIVE:
            if s.flags & 0x04:
                del self.flows[k]
                self.stats["rst"] += 1
                return TC_ACT_OK, bytes(frame)
            self.stats["in_drop_pending"] += 1
            return TC_ACT_SHOT, bytes(frame)
        if s.flags & 0x10:
            s.wr32(8, s.rd32(8) - fl.delta)
        if s.ts >= 0:
            s.wr32(s.ts + 6, s.rd32(s.ts + 6) - fl.ts_off)
        if s.sack >= 0:
            for i in range(4):
                b = s.sack + 2 + i * 8
                if b + 8 > s.sack + s.sack_len:
                    break
                s.wr32(b, s.rd32(b) - fl.delta)
                s.wr32(b + 4, s.rd32(b + 4) - fl.delta)
        if s.flags & 0x04:
            del self.flows[k]
            self.stats["rst"] += 1
        elif s.flags & 0x01:
            self.flows[k] = fl._replace(flags=fl.flags | FL_FIN_IN)
        self.stats["in_translated"] += 1
        return TC_ACT_OK, s.out()

    def egress(self, frame, now_ns):
        s = _Seg(frame)
        if not s.ok:
            return TC_ACT_OK, bytes(frame)
        k = Key(s.daddr, s.saddr, s.dport, s.sport)
        fl = self._find(k, now_ns)
        if fl is None:
            return TC_ACT_OK, bytes(frame)
        fl = fl._replace(last_ns=now_ns)
        self.flows[k] = fl
        if fl.state != ST_ACTIVE:
            self.stats["out_to_lb"] += 1
            return TC_ACT_OK, fl.lb_mac + bytes(frame[6:])
        s.wr32(4, s.rd32(4) + fl.delta)
        if s.ts >= 0:
            s.wr32(s.ts + 2, s.rd32(s.ts + 2) + fl.ts_off)
        if fl.ws_b != fl.ws_lb and not s.flags & 0x02:
            w = struct.unpack("!H", s.f[s.l4 + 14:s.l4 + 16])[0]
            w = min(0xFFFF, (w << (fl.ws_b & 15)) >> (fl.ws_lb & 15))
            s.f[s.l4 + 14:s.l4 + 16] = struct.pack("!H", w)
        if s.flags & 0x04:
            del self.flows[k]
            self.stats["rst"] += 1
        elif s.flags & 0x01:
            self.flows[k] = fl._replace(flags=fl.flags | FL_FIN_OUT)
        self.stats["out_translated"] += 1
        return TC_ACT_OK, s.out()
