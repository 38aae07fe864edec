"""inet: bytes on the wire. Reads and writes, the flow hash, RFC 1624 checksum patches,
serial numbers, TCP options, and the one TCP frame builder. Twin of fastpath/inet.pxi.

Invariants:
- Wire order is big-endian; rd*/wr* convert to and from host integers. No routine here reads
  past the offsets its caller has checked against the frame's length.
- Checksums are patched incrementally and give what a full recompute gives (tested against
  one); a partial (offloaded) L4 checksum holds the pseudo-header sum and takes address
  changes only. L4 checksums are never verified.
- Nothing here knows a flow, an engine or a mode.
"""
import numpy as np

from .. import defs

MASK64 = (1 << 64) - 1
M32 = 0xFFFFFFFF


def rd16(f, o):
    return (f[o] << 8) | f[o + 1]


def rd32(f, o):
    return (f[o] << 24) | (f[o + 1] << 16) | (f[o + 2] << 8) | f[o + 3]


def wr16(f, o, v):
    f[o] = (v >> 8) & 0xFF
    f[o + 1] = v & 0xFF


def wr32(f, o, v):
    f[o:o + 4] = v.to_bytes(4, "big")


# ---- hashing ------------------------------------------------------------------------------
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


# ---- checksums (RFC 1071 sums, RFC 1624 patches) ------------------------------------------
def fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def csum_replace2(hc, old, new):
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for one 16-bit word."""
    return ~fold((~hc & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF


def csum_replace4(hc, old, new):
    s = (~hc & 0xFFFF) + (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF) + (new >> 16) + (new & 0xFFFF)
    return ~fold(s) & 0xFFFF


def csum_partial_replace4(ps, old, new):
    """A partial (offloaded) L4 checksum field holds the pseudo-header sum, not inverted:
    an address change adds new - old to it (RFC 1624 without the inversions)."""
    return fold(ps + (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF) + (new >> 16) + (new & 0xFFFF))


def ip_header_ok(f, off, ihl):
    """The IPv4 header f[off:off + ihl] sums to 0xFFFF: its checksum is right."""
    s = 0
    for k in range(off, off + ihl, 2):
        s += (f[k] << 8) | f[k + 1]
    return fold(s) == 0xFFFF


# ---- serial numbers (RFC 1982) ------------------------------------------------------------
def seq_after(a, b):
    """TCP serial-number order (RFC 1982): a is after b, across the 2^32 wrap."""
    d = (a - b) & 0xFFFFFFFF
    return d != 0 and d < 0x80000000


def seq_add(a, delta):
    return (a + delta) & 0xFFFFFFFF


# ---- TCP options --------------------------------------------------------------------------
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


def tcp_options_fast(f):
    """tcp_options of the frame's TCP header, {} when malformed. (The compiled one recognises
    the common NOP NOP TS layout at once; the answer is the same.)"""
    return tcp_options(f, 54, 34 + (f[46] >> 4) * 4) or {}


def sack_ts(sack, tsval, tsecr):
    """12 option bytes: SACK-permitted (or two NOPs) and a timestamp."""
    return ((b"\x04\x02" if sack else b"\x01\x01") + b"\x08\x0a"
            + (tsval & M32).to_bytes(4, "big") + (tsecr & M32).to_bytes(4, "big"))


# ---- the one TCP frame builder ------------------------------------------------------------
def tcp_checksum(f, off, length):
    """Full TCP checksum of f[off:off+length] with the IPv4 pseudo-header of the frame."""
    s = rd16(f, 26) + rd16(f, 28) + rd16(f, 30) + rd16(f, 32) + 6 + length
    for k in range(off, off + length - 1, 2):
        if k != off + 16:
            s += rd16(f, k)
    if length & 1:
        s += f[off + length - 1] << 8
    return ~fold(s) & 0xFFFF


def tcp_frame(dmac, smac, src, dst, sport, dport, seq, ack, flags, win, opt=b"", data=b""):
    """An Ethernet/IPv4/TCP frame with complete checksums (opt a multiple of 4 bytes; TTL 64,
    DF, IP id 0), as a bytearray."""
    tcp_len = 20 + len(opt) + len(data)
    f = bytearray(dmac + smac + b"\x08\x00\x45\x00" + (20 + tcp_len).to_bytes(2, "big")
                  + b"\x00\x00\x40\x00\x40\x06\x00\x00" + src.to_bytes(4, "big") + dst.to_bytes(4, "big")
                  + sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + (seq & M32).to_bytes(4, "big")
                  + (ack & M32).to_bytes(4, "big") + bytes([(20 + len(opt)) // 4 << 4, flags])
                  + win.to_bytes(2, "big") + b"\x00\x00\x00\x00" + opt + data)
    wr16(f, 24, ~fold(sum(rd16(f, k) for k in range(14, 34, 2))) & 0xFFFF)
    wr16(f, 50, tcp_checksum(f, 34, tcp_len))
    return f


# ---- patching a frame in place ------------------------------------------------------------
def patch32(f, o, v, partial=False):
    """Write a 32-bit field at frame offset o and patch the TCP checksum, word-aligned or not.
    A partial checksum is not touched: the kernel sums the header later."""
    if partial:
        wr32(f, o, v)
        return
    if (o - 34) & 1 == 0:
        wr16(f, 50, csum_replace4(rd16(f, 50), rd32(f, o), v))
        wr32(f, o, v)
        return
    old = [rd16(f, k) for k in range(o - 1, o + 5, 2)]
    wr32(f, o, v)
    c = rd16(f, 50)
    for j, k in enumerate(range(o - 1, o + 5, 2)):
        c = csum_replace2(c, old[j], rd16(f, k))
    wr16(f, 50, c)


def patch16(f, o, v, partial=False):
    if partial:
        wr16(f, o, v)
        return
    if (o - 34) & 1 == 0:
        wr16(f, 50, csum_replace2(rd16(f, 50), rd16(f, o), v))
        wr16(f, o, v)
        return
    old = [rd16(f, o - 1), rd16(f, o + 1)]
    wr16(f, o, v)
    c = csum_replace2(rd16(f, 50), old[0], rd16(f, o - 1))
    wr16(f, 50, csum_replace2(c, old[1], rd16(f, o + 1)))


def ip_route(f, ip_off, old_ip, new_ip):
    """A routed hop in place: TTL - 1 and the address at ip_off old_ip -> new_ip (the same
    address: only the TTL), the header checksum patched for both."""
    ttl_word = rd16(f, 22)
    f[22] -= 1
    ipc = csum_replace2(rd16(f, 24), ttl_word, rd16(f, 22))
    wr16(f, 24, csum_replace4(ipc, old_ip, new_ip))
    wr32(f, ip_off, new_ip)


def rewrite(f, ip_off, port_off, old_ip, old_port, new_ip, new_port, proto, partial=False):
    """Replace one address (at ip_off) and one port (at port_off), decrement TTL, and patch
    the IPv4 and L4 checksums incrementally. A partial L4 checksum (offloaded: it holds the
    pseudo-header sum) takes the address change only; the port is summed by the kernel."""
    ip_route(f, ip_off, old_ip, new_ip)
    wr16(f, port_off, new_port)
    co = 50 if proto == defs.PROTO_TCP else 40
    l4c = rd16(f, co)
    if partial:
        wr16(f, co, csum_partial_replace4(l4c, old_ip, new_ip))
        return
    if proto == defs.PROTO_UDP and l4c == 0:
        return  # no UDP checksum: stays absent
    l4c = csum_replace4(l4c, old_ip, new_ip)
    l4c = csum_replace2(l4c, old_port, new_port)
    if proto == defs.PROTO_UDP and l4c == 0:
        l4c = 0xFFFF
    wr16(f, co, l4c)


# ---- cutting a packet into IP fragments ----------------------------------------------------
def ip_fragment(frame, mtu, batch):
    """The IPv4 packet of Ethernet frame `frame` cut into fragments of at most mtu IP bytes,
    one per row of batch; inet.pxi's ip_fragment says the rules."""
    if not isinstance(mtu, int) or isinstance(mtu, bool):
        raise TypeError("mtu must be an integer")
    if mtu < 0 or mtu > 0xFFFFFFFF:
        raise OverflowError("mtu out of range")
    if mtu < 28 or mtu > 65535:
        raise ValueError("mtu must be 28..65535, got %d" % mtu)
    b = bytes(frame)
    hdr = batch.hdr
    batch.n = 0
    if len(b) < 34 or b[12:14] != b"\x08\x00" or b[14] != 0x45:
        return 0
    tot = rd16(b, 16)
    fo = rd16(b, 20)
    if tot < 20 or 14 + tot > len(b) or tot <= mtu or fo & 0x4000:
        return 0
    step = (mtu - 20) & ~7
    plen = tot - 20
    k = (plen + step - 1) // step
    if k > batch.buf.shape[0] or hdr + 34 + step > batch.buf.shape[1]:
        raise ValueError("the batch (%d rows of %d bytes) cannot hold %d fragments of %d bytes"
                         % (batch.buf.shape[0], batch.buf.shape[1], k, 34 + step))
    for j in range(k):
        off = j * step
        c = min(step, plen - off)
        r = bytearray(b[:34] + b[34 + off:34 + off + c])
        wr16(r, 16, 20 + c)
        wr16(r, 20, (fo & 0x8000) | (0x2000 if j + 1 < k else fo & 0x2000)
             | (((fo & 0x1FFF) + off // 8) & 0x1FFF))
        wr16(r, 24, 0)
        wr16(r, 24, ~fold(sum(rd16(r, i) for i in range(14, 34, 2))) & 0xFFFF)
        batch.buf[j, :hdr] = 0
        batch.buf[j, hdr:hdr + len(r)] = np.frombuffer(bytes(r), np.uint8)
        batch.lens[j] = hdr + len(r)
    batch.n = k
    return k
