# inet: bytes on the wire. Bounds-checked reads and writes, the flow hash, RFC 1624 checksum
# patches, serial numbers, TCP options, and the one TCP frame builder. Twin: twin/inet.py.
#
# Invariants:
# - Wire order is big-endian; rd*/wr* convert to and from host integers. No routine here
#   reads past the offsets its caller has checked against the frame's length.
# - Checksums are patched incrementally and give what a full recompute gives (tested against
#   one); a partial (offloaded) L4 checksum holds the pseudo-header sum and takes address
#   changes only. L4 checksums are never verified.
# - Nothing here knows a flow, an engine or a mode. A def wrapper (for the tests) follows the
#   routine it wraps and has its name without the underscore.


cdef inline uint16_t rd16(const uint8_t *p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t rd32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void wr16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF


cdef inline void wr32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


# ---- hashing ------------------------------------------------------------------------------
cdef inline uint64_t _mix64(uint64_t x) noexcept nogil:
    x ^= x >> 33
    x *= 0xFF51AFD7ED558CCDULL
    x ^= x >> 33
    x *= 0xC4CEB9FE1A85EC53ULL
    x ^= x >> 33
    return x


def mix64(uint64_t x):
    return _mix64(x)


cdef inline uint64_t _flow_hash(uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport,
                                uint8_t proto) noexcept nogil:
    return _mix64(_mix64((<uint64_t>src << 32) | dst)
                  ^ ((<uint64_t>sport << 24) | (<uint64_t>dport << 8) | proto))


def flow_hash(uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport, uint8_t proto):
    return _flow_hash(src, dst, sport, dport, proto)


# ---- checksums (RFC 1071 sums, RFC 1624 patches) ------------------------------------------
cdef inline uint32_t fold(uint32_t s) noexcept nogil:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


cdef inline uint16_t _csum_replace2(uint16_t hc, uint16_t old, uint16_t new) noexcept nogil:
    return <uint16_t>(~fold((~(<uint32_t>hc) & 0xFFFF) + (~(<uint32_t>old) & 0xFFFF) + new) & 0xFFFF)


def csum_replace2(uint16_t hc, uint16_t old, uint16_t new):
    return _csum_replace2(hc, old, new)


cdef inline uint16_t _csum_replace4(uint16_t hc, uint32_t old, uint32_t new) noexcept nogil:
    cdef uint32_t s = ((~(<uint32_t>hc) & 0xFFFF) + (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF)
                       + (new >> 16) + (new & 0xFFFF))
    return <uint16_t>(~fold(s) & 0xFFFF)


def csum_replace4(uint16_t hc, uint32_t old, uint32_t new):
    return _csum_replace4(hc, old, new)


cdef inline uint16_t _csum_partial_replace4(uint16_t ps, uint32_t old, uint32_t new) noexcept nogil:
    """A partial (offloaded) L4 checksum field holds the pseudo-header sum, not inverted:
    an address change adds new - old to it (RFC 1624 without the inversions)."""
    return <uint16_t>fold(<uint32_t>ps + (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF)
                          + (new >> 16) + (new & 0xFFFF))


def csum_partial_replace4(uint16_t ps, uint32_t old, uint32_t new):
    return _csum_partial_replace4(ps, old, new)


cdef inline bint ip_header_ok(const uint8_t *f, int off, int ihl) noexcept nogil:
    """The IPv4 header f[off:off + ihl] sums to 0xFFFF: its checksum is right."""
    cdef uint32_t s = 0
    cdef int k
    for k in range(off, off + ihl, 2):
        s += rd16(f + k)
    return fold(s) == 0xFFFF


# ---- serial numbers (RFC 1982) ------------------------------------------------------------
def seq_after(uint32_t a, uint32_t b):
    """TCP serial-number order (RFC 1982): a is after b, across the 2^32 wrap."""
    return <int32_t>(a - b) > 0


def seq_add(uint32_t a, int64_t delta):
    return <uint32_t>(a + <uint32_t>(delta & 0xFFFFFFFFULL))


# ---- TCP options --------------------------------------------------------------------------
cdef inline int tcp_options(const uint8_t *f, int start, int end, Opts *o) noexcept nogil:
    """Offsets of the first MSS, WS, SACK-permitted, SACK and TS options in f[start:end];
    all -1 and a return of -1 when the options are malformed (a length below 2 or running
    past the header)."""
    cdef int i = start, kind
    o.mss = o.ws = o.sackok = o.sack = o.ts = -1
    while i < end:
        kind = f[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end or f[i + 1] < 2 or i + f[i + 1] > end:
            o.mss = o.ws = o.sackok = o.sack = o.ts = -1
            return -1
        if kind == 2 and o.mss < 0:
            o.mss = i
        elif kind == 3 and o.ws < 0:
            o.ws = i
        elif kind == 4 and o.sackok < 0:
            o.sackok = i
        elif kind == 5 and o.sack < 0:
            o.sack = i
        elif kind == 8 and o.ts < 0:
            o.ts = i
        i += f[i + 1]
    return 0


cdef inline void tcp_options_fast(const uint8_t *f, Opts *o) noexcept nogil:
    """tcp_options of the frame's TCP header, with the layout of nearly every segment of an
    established Linux connection (NOP NOP TS, 32-byte header) recognised at once."""
    if (f[46] >> 4) == 8 and f[54] == 1 and f[55] == 1 and f[56] == 8 and f[57] == 10:
        o.mss = o.ws = o.sackok = o.sack = -1
        o.ts = 56
        return
    tcp_options(f, 54, 34 + (f[46] >> 4) * 4, o)


cdef inline void sack_ts(uint8_t *o, bint sack, uint32_t tsval, uint32_t tsecr) noexcept nogil:
    """12 option bytes: SACK-permitted (or two NOPs) and a timestamp."""
    if sack:
        o[0] = 4
        o[1] = 2
    else:
        o[0] = 1
        o[1] = 1
    o[2] = 8
    o[3] = 10
    wr32(o + 4, tsval)
    wr32(o + 8, tsecr)


# ---- the one TCP frame builder ------------------------------------------------------------
cdef inline uint16_t tcp_checksum(const uint8_t *f, int off, int length) noexcept nogil:
    """Full TCP checksum of f[off:off+length] with the IPv4 pseudo-header of the frame."""
    cdef uint32_t s = rd16(f + 26) + rd16(f + 28) + rd16(f + 30) + rd16(f + 32) + 6 + length
    cdef int k
    for k in range(off, off + length - 1, 2):
        if k != off + 16:
            s += rd16(f + k)
    if length & 1:
        s += <uint32_t>f[off + length - 1] << 8
    return <uint16_t>(~fold(s) & 0xFFFF)


cdef uint32_t tcp_frame(uint8_t *f, const uint8_t *dmac, const uint8_t *smac, uint32_t src,
                        uint32_t dst, uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack,
                        uint8_t flags, uint16_t win, const uint8_t *opt, int ol,
                        const uint8_t *data, int dl) noexcept nogil:
    """Write an Ethernet/IPv4/TCP frame with complete checksums at f (ol a multiple of 4;
    TTL 64, DF, IP id 0); returns its length. data may lie inside f (it is moved)."""
    cdef uint32_t s = 0
    cdef int k
    cdef int tcp_len = 20 + ol + dl
    memcpy(f, dmac, 6)
    memcpy(f + 6, smac, 6)
    f[12] = 8
    f[13] = 0
    f[14] = 0x45
    f[15] = 0
    wr16(f + 16, 20 + tcp_len)
    wr16(f + 18, 0)
    wr16(f + 20, 0x4000)
    f[22] = 64
    f[23] = 6
    wr16(f + 24, 0)
    wr32(f + 26, src)
    wr32(f + 30, dst)
    for k in range(14, 34, 2):
        s += rd16(f + k)
    wr16(f + 24, <uint16_t>(~fold(s) & 0xFFFF))
    wr16(f + 34, sport)
    wr16(f + 36, dport)
    wr32(f + 38, seq)
    wr32(f + 42, ack)
    f[46] = ((20 + ol) // 4) << 4
    f[47] = flags
    wr16(f + 48, win)
    wr16(f + 50, 0)
    wr16(f + 52, 0)
    if ol:
        memcpy(f + 54, opt, ol)
    if dl:
        memmove(f + 54 + ol, data, dl)
    wr16(f + 50, tcp_checksum(f, 34, tcp_len))
    return 34 + tcp_len


# ---- patching a frame in place ------------------------------------------------------------
cdef inline void patch32(uint8_t *f, int o, uint32_t v, bint partial) noexcept nogil:
    """Write a 32-bit field at frame offset o and patch the TCP checksum, word-aligned or not.
    A partial checksum is not touched: the kernel sums the header later."""
    cdef uint16_t old[3]
    cdef uint16_t c
    cdef int j
    if partial:
        wr32(f + o, v)
        return
    if ((o - 34) & 1) == 0:
        wr16(f + 50, _csum_replace4(rd16(f + 50), rd32(f + o), v))
        wr32(f + o, v)
        return
    for j in range(3):
        old[j] = rd16(f + o - 1 + 2 * j)
    wr32(f + o, v)
    c = rd16(f + 50)
    for j in range(3):
        c = _csum_replace2(c, old[j], rd16(f + o - 1 + 2 * j))
    wr16(f + 50, c)


cdef inline void patch16(uint8_t *f, int o, uint16_t v, bint partial) noexcept nogil:
    cdef uint16_t a, b, c
    if partial:
        wr16(f + o, v)
        return
    if ((o - 34) & 1) == 0:
        wr16(f + 50, _csum_replace2(rd16(f + 50), rd16(f + o), v))
        wr16(f + o, v)
        return
    a = rd16(f + o - 1)
    b = rd16(f + o + 1)
    wr16(f + o, v)
    c = _csum_replace2(rd16(f + 50), a, rd16(f + o - 1))
    wr16(f + 50, _csum_replace2(c, b, rd16(f + o + 1)))


cdef inline void ip_route(uint8_t *f, int ip_off, uint32_t old_ip, uint32_t new_ip) noexcept nogil:
    """A routed hop in place: TTL - 1 and the address at ip_off old_ip -> new_ip (the same
    address: only the TTL), the header checksum patched for both."""
    cdef uint16_t ttl_word = rd16(f + 22)
    cdef uint16_t ipc
    f[22] -= 1
    ipc = _csum_replace2(rd16(f + 24), ttl_word, rd16(f + 22))
    wr16(f + 24, _csum_replace4(ipc, old_ip, new_ip))
    wr32(f + ip_off, new_ip)


cdef inline void rewrite(uint8_t *f, int ip_off, int port_off, uint32_t old_ip,
                         uint16_t old_port, uint32_t new_ip, uint16_t new_port,
                         uint8_t proto, bint partial) noexcept nogil:
    """Replace one address and one port, decrement TTL, patch IPv4 and L4 checksums. A
    partial L4 checksum takes the address change only (the kernel sums the port later)."""
    ip_route(f, ip_off, old_ip, new_ip)
    wr16(f + port_off, new_port)
    cdef int co = 50 if proto == PROTO_TCP else 40
    cdef uint16_t l4c = rd16(f + co)
    if partial:
        wr16(f + co, _csum_partial_replace4(l4c, old_ip, new_ip))
        return
    if proto == PROTO_UDP and l4c == 0:
        return  # no UDP checksum: stays absent
    l4c = _csum_replace4(l4c, old_ip, new_ip)
    l4c = _csum_replace2(l4c, old_port, new_port)
    if proto == PROTO_UDP and l4c == 0:
        l4c = 0xFFFF
    wr16(f + co, l4c)


# ---- cutting a packet into IP fragments ----------------------------------------------------
def ip_fragment(frame, uint32_t mtu, batch):
    """The IPv4 packet of Ethernet frame `frame` cut into fragments of at most mtu IP bytes,
    one per row of batch (its vnet header zeroed), as a router cuts a packet without DF
    (RFC 791): the same Ethernet and IP header but for the total length, MF (set on all but
    the last, which keeps the packet's own), the offset (the packet's plus the fragment's)
    and the checksum; each fragment's data a multiple of 8 bytes but the last's. Returns the
    number of rows (batch.n); 0 (batch.n 0) when the frame is not an IPv4 packet without
    options or DF longer than mtu. ValueError: mtu outside 28..65535, too few or too short
    rows."""
    cdef const uint8_t[::1] b = frame
    cdef uint8_t[:, ::1] buf = batch.buf
    cdef uint32_t[::1] lens = batch.lens
    cdef uint32_t hdr = batch.hdr, L = b.shape[0], tot, step, plen, off, c, k, j, fo, s, i
    cdef uint8_t *r
    if mtu < 28 or mtu > 65535:
        raise ValueError("mtu must be 28..65535, got %d" % mtu)
    batch.n = 0
    if L < 34 or b[12] != 8 or b[13] != 0 or b[14] != 0x45:
        return 0
    tot = rd16(&b[16])
    fo = rd16(&b[20])
    if tot < 20 or 14 + tot > L or tot <= mtu or fo & 0x4000:
        return 0
    step = (mtu - 20) & ~7u
    plen = tot - 20
    k = (plen + step - 1) // step
    if k > <uint32_t>buf.shape[0] or hdr + 34 + step > <uint32_t>buf.shape[1]:
        raise ValueError("the batch (%d rows of %d bytes) cannot hold %d fragments of %d bytes"
                         % (buf.shape[0], buf.shape[1], k, 34 + step))
    with nogil:
        for j in range(k):
            off = j * step
            c = plen - off if plen - off < step else step
            r = &buf[j, 0]
            memset(r, 0, hdr)                     # a zero vnet header: no GSO, checksums full
            r += hdr
            memcpy(r, &b[0], 34)
            memcpy(r + 34, &b[34 + off], c)
            wr16(r + 16, 20 + c)
            wr16(r + 20, (fo & 0x8000) | (0x2000 if j + 1 < k else fo & 0x2000)
                 | (((fo & 0x1FFF) + off // 8) & 0x1FFF))
            wr16(r + 24, 0)
            s = 0
            for i in range(14, 34, 2):
                s += rd16(r + i)
            wr16(r + 24, ~fold(s) & 0xFFFF)
            lens[j] = hdr + 34 + c
    batch.n = k
    return k
