"""icmp: ICMP errors about a flow, to the other end of that flow. Twin of fastpath/icmp.pxi,
whose header states when it is used and the invariants.

The parsed quote is an Icmp (types.py); f is the frame as a bytearray.
"""
from .. import defs
from ..defs import C
from .flowtable import flow_find, schedule, service_find
from .inet import csum_replace2, csum_replace4, flow_hash, fold, ip_route, rd16, rd32, wr16, wr32
from .types import XMIT, Icmp

M32 = 0xFFFFFFFF


def outer_ip(self, f, tot, proto, dst, ident):
    """An IPv4 header at f[14:34] from us to dst, tot bytes in all, IP id ident, full
    checksum, no DF."""
    f[12:14] = b"\x08\x00"
    f[14:16] = b"\x45\x00"
    wr16(f, 16, tot)
    wr16(f, 18, ident)                  # 0 but for a packet to be fragmented (punt_tunnel_frag)
    wr16(f, 20, 0)                      # no DF
    f[22] = 64
    f[23] = proto
    wr16(f, 24, 0)
    wr32(f, 26, self.local_ip)
    wr32(f, 30, dst)
    wr16(f, 24, ~fold(sum(rd16(f, k) for k in range(14, 34, 2))) & 0xFFFF)


def icmp_frag_needed(self, f, mtu):
    """ICMP destination unreachable, fragmentation needed (RFC 792/1191) from us to the
    frame's source, made in place and addressed to the gateway (the caller checked it): the
    frame's IP header (options too) and the 8 bytes after it, next-hop MTU mtu."""
    client = rd32(f, 26)
    q = (f[14] & 15) * 4 + 8
    f[42:42 + q] = f[14:14 + q]
    f[0:6] = self.gw_mac
    f[6:12] = self.local_mac
    outer_ip(self, f, 28 + q, defs.PROTO_ICMP, client, 0)
    f[34:36] = b"\x03\x04"
    wr16(f, 36, 0)
    wr16(f, 38, 0)
    wr16(f, 40, mtu)
    wr16(f, 36, ~fold(sum(rd16(f, k) for k in range(34, 42 + q, 2))) & 0xFFFF)
    self.newlen = 42 + q


def icmp_is_error(t):
    return t in (3, 11, 12)


def icmp_sum(f, end):
    """The folded sum of the ICMP message f[34:end] (0xFFFF: its checksum is right)."""
    s = sum(rd16(f, k) for k in range(34, end - 1, 2))
    if (end - 34) & 1:
        s += f[end - 1] << 8
    return fold(s)


def icmp_in(self, f, n, tot, now):
    """An ICMP message through the LB (not for the LB itself): its exit counter."""
    if tot < 28:
        return C["drop_l4_truncated"]
    if not icmp_is_error(f[34]):
        return C["drop_icmp_not_error"]
    end = 14 + tot
    if tot < 28 + 20 or f[42] >> 4 != 4:
        return C["drop_icmp_bad"]
    qihl = (f[42] & 15) * 4
    l4 = 42 + qihl
    if qihl < 20 or l4 + 8 > end:
        return C["drop_icmp_bad"]
    proto = f[42 + 9]
    if proto not in (defs.PROTO_TCP, defs.PROTO_UDP):
        return C["drop_icmp_bad"]
    if icmp_sum(f, end) != 0xFFFF:
        return C["drop_icmp_bad"]
    src, dst = rd32(f, 42 + 12), rd32(f, 42 + 16)
    sport, dport = rd16(f, l4), rd16(f, l4 + 2)
    h = flow_hash(dst, src, dport, sport, proto)
    q = Icmp(end, 42, l4, src, dst, sport, dport, proto, h)
    # client side: the quote is VIP -> client, the flow's forward key is client -> VIP
    sv = service_find(self, src, sport, proto)
    if sv is not None:
        idx = flow_find(self, self.ifwd, h, dst, src, dport, sport, proto, False)
        if idx >= 0:
            e = self.fl[idx]
            if XMIT[e.mode].icmp is None:
                return C["drop_mode"]
            return XMIT[e.mode].icmp(self, f, n, q, e, sv, e.real, True)
        if sv.sched not in (defs.SCHED_HASH5, defs.SCHED_HASHSRC):
            return C["drop_icmp_no_flow"]
        real = schedule(self, sv, h, dst)
        if real < 0:
            return C["drop_no_backend"]
        if XMIT[sv.mode].icmp is None:
            return C["drop_mode"]
        k = XMIT[sv.mode].icmp(self, f, n, q, None, sv, real, True)
        if defs.VERDICTS[k] == defs.V_TX:
            self.ctr[C["icmp_hashed"]] += 1
        return k
    # server side: the quote is client -> backend, the flow's reverse key is backend -> client
    idx = flow_find(self, self.irev, h, dst, src, dport, sport, proto, True)
    if idx < 0:
        return C["drop_icmp_no_flow"]
    e = self.fl[idx]
    if XMIT[e.mode].icmp is None:
        return C["drop_mode"]
    return XMIT[e.mode].icmp(self, f, n, q, e, None, e.real, False)


def icmp_translate(f, q, fwd, old_ip, old_port, new_ip, new_port, dseq, dack):
    """Rewrite a routed ICMP error in place (the caller addressed its Ethernet header): TTL -
    1; the outer destination (fwd) or source (not fwd) old_ip -> new_ip where it is old_ip;
    the quoted source (fwd) or destination address and port old -> new; the quoted seq +=
    dseq and ack += dack (TCP; 0: unchanged); the checksums as icmp.pxi's header says."""
    outer = 30 if fwd else 26
    cur = rd32(f, outer)
    qa = q.ip + (12 if fwd else 16)
    qp = q.l4 + (0 if fwd else 2)
    co = q.l4 + (16 if q.proto == defs.PROTO_TCP else 6)
    has_l4c = co + 2 <= q.end
    l4c = rd16(f, co) if has_l4c else 0
    ip_route(f, outer, cur, new_ip if cur == old_ip else cur)
    wr16(f, q.ip + 10, csum_replace4(rd16(f, q.ip + 10), old_ip, new_ip))
    wr32(f, qa, new_ip)
    wr16(f, qp, new_port)
    if has_l4c and not (q.proto == defs.PROTO_UDP and l4c == 0):
        l4c = csum_replace4(l4c, old_ip, new_ip)
        l4c = csum_replace2(l4c, old_port, new_port)
    if q.proto == defs.PROTO_TCP:
        if dseq:
            v = rd32(f, q.l4 + 4)
            wr32(f, q.l4 + 4, (v + dseq) & M32)
            if has_l4c:
                l4c = csum_replace4(l4c, v, (v + dseq) & M32)
        if dack and q.l4 + 12 <= q.end:
            v = rd32(f, q.l4 + 8)
            wr32(f, q.l4 + 8, (v + dack) & M32)
            if has_l4c:
                l4c = csum_replace4(l4c, v, (v + dack) & M32)
    if has_l4c:
        if q.proto == defs.PROTO_UDP and l4c == 0 and rd16(f, co) != 0:
            l4c = 0xFFFF
        wr16(f, co, l4c)
    wr16(f, 36, 0)
    wr16(f, 36, ~icmp_sum(f, q.end) & 0xFFFF)
