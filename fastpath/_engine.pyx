# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled fast path. Its twin, fastpath/engine_py.py, is the readable reference: every
routine here has the same name there and must give the same bytes, verdicts, counters and
flow-table contents (tests/differential holds them together).

Invariants:
- process() runs without the GIL and touches no Python object per frame: it reads and
  rewrites the Batch's numpy buffer in place and writes one verdict and one exit-counter id
  (Batch.reason) per frame. Every exit branch has a counter (fastpath/defs.py COUNTERS).
- Parsing uses explicit bounds: nothing is read beyond the frame's length. Byte order on the
  wire is big-endian; fields are host integers after parsing.
- Checksums are patched incrementally (RFC 1624); L4 checksums are never verified.
- The control side swaps the service table between bursts (set_services); flows and reals
  survive a swap. Reals are referenced by index from flows, so a real slot may be reused only
  once real_conns(idx) == 0 (lb/state.py keeps that rule).
- Flow table: fixed capacity, two open-addressing indexes (forward: client -> VIP, reverse:
  backend -> client) with linear probing and backward-shift deletion; a slot holds
  (hash >> 32) << 32 | (entry + 1), so most probes are settled without touching the entry.
  Full table: sampled LRU (EVICT_SAMPLE entries after a clock hand; an expired one first).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memcmp, memmove, memset
from libc.errno cimport errno, EINTR, EBADF, EIO
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK)

from . import defs
from .checks import check_ip, check_mac, check_port, check_real_idx, check_secret, check_specs

include "_defs.pxi"
include "_iocore.pxi"

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum:
        POLLIN
        POLLERR
        POLLHUP
        POLLNVAL

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from *:
    """
    static inline void tw_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }
    static inline void tw_atomic_add(int *p, int d) { __atomic_add_fetch(p, d, __ATOMIC_SEQ_CST); }
    static inline int tw_atomic_load(int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    """
    void tw_prefetch(const void *p) noexcept nogil
    void tw_atomic_add(int *p, int d) noexcept nogil
    int tw_atomic_load(int *p) noexcept nogil

cdef enum:
    SVC_SLOTS = 4096
    TH_FIN = 0x01
    TH_SYN = 0x02
    TH_RST = 0x04
    TH_PSH = 0x08
    TH_ACK = 0x10


cdef struct Flow:
    uint32_t cip
    uint32_t vip
    uint16_t cport
    uint16_t vport
    uint8_t proto
    uint8_t mode
    uint8_t state
    uint8_t flags
    uint32_t rip
    uint16_t rport
    uint8_t used
    uint8_t pad
    int32_t real
    int64_t last
    uint64_t hf
    uint64_t hr
    int64_t created
    uint64_t pkts_fwd
    uint64_t pkts_rev
    uint64_t bytes_fwd
    uint64_t bytes_rev
    # splice (see engine_py._Flow)
    uint32_t c_isn
    uint32_t l_isn
    uint32_t delta
    uint32_t ts_off
    uint32_t c_tsval
    uint32_t b_tsval
    uint16_t mss
    uint16_t c_win
    uint8_t ws_c
    uint8_t ws_b
    uint8_t ws_lb
    uint8_t sopt
    uint16_t rp_len     # splice: the request to replay (rp, malloc'd; NULL once acknowledged)
    uint8_t *rp

cdef struct WaitQ:      # splice: a flow Python may have to look at, for splice_waiting()
    uint32_t idx
    uint32_t c_isn
    int64_t created
    int64_t at          # when it was queued (its cookie ACK, or its binding here)

cdef struct Opts:
    int mss
    int ws
    int sackok
    int sack
    int ts

cdef struct Real:
    uint32_t ip
    uint16_t port
    uint8_t mac[6]
    uint8_t has_mac
    uint8_t down
    int64_t conns

cdef struct Service:
    uint32_t vip
    uint16_t port
    uint8_t proto
    uint8_t mode
    uint8_t sched
    uint8_t flags
    uint32_t off
    uint32_t n
    uint64_t cursor
    uint32_t l7_off     # splice content rules: self.l7r[l7_off:l7_off + l7_n]
    uint32_t l7_n
    uint32_t l7_limit
    uint32_t vni        # tunnel: VXLAN network identifier
    uint32_t mtu        # tunnel: IP MTU towards the backends

cdef struct L7Rule:
    uint32_t kind
    uint32_t pool       # index into Engine.pools
    uint32_t off        # argument: Engine.blob[off:off + len]
    uint32_t len

cdef struct HttpView:   # what the rules read of a request head
    const uint8_t *method
    int mlen
    const uint8_t *path
    int plen
    int hlen            # -1: no usable Host (None in modes/l7.py)
    uint8_t host[256]


# ---- hashing, checksums, serial numbers (each has a Python wrapper for the tests) ---------
cdef inline uint64_t _mix64(uint64_t x) noexcept nogil:
    x ^= x >> 33
    x *= 0xFF51AFD7ED558CCDULL
    x ^= x >> 33
    x *= 0xC4CEB9FE1A85EC53ULL
    x ^= x >> 33
    return x


cdef inline uint64_t _flow_hash(uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport,
                                uint8_t proto) noexcept nogil:
    return _mix64(_mix64((<uint64_t>src << 32) | dst)
                  ^ ((<uint64_t>sport << 24) | (<uint64_t>dport << 8) | proto))


cdef inline uint32_t _fold(uint32_t s) noexcept nogil:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


cdef inline uint16_t _csum_replace2(uint16_t hc, uint16_t old, uint16_t new) noexcept nogil:
    return <uint16_t>(~_fold((~(<uint32_t>hc) & 0xFFFF) + (~(<uint32_t>old) & 0xFFFF) + new) & 0xFFFF)


cdef inline uint16_t _csum_replace4(uint16_t hc, uint32_t old, uint32_t new) noexcept nogil:
    cdef uint32_t s = ((~(<uint32_t>hc) & 0xFFFF) + (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF)
                       + (new >> 16) + (new & 0xFFFF))
    return <uint16_t>(~_fold(s) & 0xFFFF)


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


cdef inline uint16_t _csum_partial_replace4(uint16_t ps, uint32_t old, uint32_t new) noexcept nogil:
    """A partial (offloaded) L4 checksum field holds the pseudo-header sum, not inverted:
    an address change adds new - old to it (RFC 1624 without the inversions)."""
    return <uint16_t>_fold(<uint32_t>ps + (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF)
                           + (new >> 16) + (new & 0xFFFF))


def csum_partial_replace4(uint16_t ps, uint32_t old, uint32_t new):
    return _csum_partial_replace4(ps, old, new)


def mix64(uint64_t x):
    return _mix64(x)


def flow_hash(uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport, uint8_t proto):
    return _flow_hash(src, dst, sport, dport, proto)


def csum_replace2(uint16_t hc, uint16_t old, uint16_t new):
    return _csum_replace2(hc, old, new)


def csum_replace4(uint16_t hc, uint32_t old, uint32_t new):
    return _csum_replace4(hc, old, new)


def seq_after(uint32_t a, uint32_t b):
    """TCP serial-number order (RFC 1982): a is after b, across the 2^32 wrap."""
    return <int32_t>(a - b) > 0


def seq_add(uint32_t a, int64_t delta):
    return <uint32_t>(a + <uint32_t>(delta & 0xFFFFFFFFULL))


cdef uint32_t _COOKIE_MSS[4]
_COOKIE_MSS[:] = [536, 1300, 1440, 1460]
assert list(defs.COOKIE_MSS) == [536, 1300, 1440, 1460]


cdef inline int _tcp_options(const uint8_t *f, int start, int end, Opts *o) noexcept nogil:
    """Offsets of the first MSS, WS, SACK-permitted, SACK and TS options in f[start:end];
    all -1 and a return of -1 when the options are malformed (as engine_py.tcp_options)."""
    cdef int i = start, kind, ln
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


cdef inline void _tcp_options_fast(const uint8_t *f, Opts *o) noexcept nogil:
    """_tcp_options of the frame's TCP header, with the layout of nearly every segment of an
    established Linux connection (NOP NOP TS, 32-byte header) recognised at once."""
    if (f[46] >> 4) == 8 and f[54] == 1 and f[55] == 1 and f[56] == 8 and f[57] == 10:
        o.mss = o.ws = o.sackok = o.sack = -1
        o.ts = 56
        return
    _tcp_options(f, 54, 34 + (f[46] >> 4) * 4, o)


cdef inline void _sack_ts(uint8_t *o, bint sack, uint32_t tsval, uint32_t tsecr) noexcept nogil:
    """12 option bytes of a SYN: SACK-permitted (or two NOPs) and a timestamp."""
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


cdef inline uint16_t _tcp_checksum(const uint8_t *f, int off, int length) noexcept nogil:
    """Full TCP checksum of f[off:off+length] with the IPv4 pseudo-header of the frame."""
    cdef uint32_t s = rd16(f + 26) + rd16(f + 28) + rd16(f + 30) + rd16(f + 32) + 6 + length
    cdef int k
    for k in range(off, off + length - 1, 2):
        if k != off + 16:
            s += rd16(f + k)
    if length & 1:
        s += <uint32_t>f[off + length - 1] << 8
    return <uint16_t>(~_fold(s) & 0xFFFF)


cdef uint32_t _tcp_frame(uint8_t *f, const uint8_t *dmac, const uint8_t *smac, uint32_t src,
                         uint32_t dst, uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack,
                         uint8_t flags, uint16_t win, const uint8_t *opt, int ol,
                         const uint8_t *data, int dl) noexcept nogil:
    """Write an Ethernet/IPv4/TCP frame with complete checksums at f (ol a multiple of 4;
    TTL 64, DF, IP id 0); returns its length. As engine_py.tcp_frame."""
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
    wr16(f + 24, <uint16_t>(~_fold(s) & 0xFFFF))
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
    wr16(f + 50, _tcp_checksum(f, 34, tcp_len))
    return 34 + tcp_len


cdef inline bint _tchar(uint8_t c) noexcept nogil:
    """RFC 9110 token character (modes/l7.py _TCHAR)."""
    if (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122):
        return True
    return (c == 33 or c == 35 or c == 36 or c == 37 or c == 38 or c == 39 or c == 42 or c == 43
            or c == 45 or c == 46 or c == 94 or c == 95 or c == 96 or c == 124 or c == 126)


cdef inline int _eol(const uint8_t *d, int i, int m) noexcept nogil:
    """Index after a CRLF or LF at i, or -1."""
    if i < m and d[i] == 10:
        return i + 1
    if i + 1 < m and d[i] == 13 and d[i + 1] == 10:
        return i + 2
    return -1


cdef int _http_head(const uint8_t *d, int m, HttpView *v) noexcept nogil:
    """1 when d[:m] starts with a complete HTTP/1.0 or 1.1 request head that modes/l7.py
    parse_http_request accepts, with an origin-form target and a Host (if any) of plain
    ASCII; v then holds its method, path and normalized host. 0 otherwise (then the rules
    are Python's to apply)."""
    cdef int i = 0, s, ns, vs, ve, nh = 0, hv_s = -1, hv_e = -1, k, c
    while True:
        k = _eol(d, i, m)
        if k < 0:
            break
        i = k
    s = i
    while i < m and _tchar(d[i]) and i - s <= HTTP_MAX_METHOD:
        i += 1
    if i == s or i - s > HTTP_MAX_METHOD or i >= m or d[i] != 32:
        return 0
    v.method, v.mlen = d + s, i - s
    i += 1
    s = i
    while i < m and 0x21 <= d[i] <= 0x7E:
        i += 1
    if i == s or i >= m or d[i] != 32 or d[s] != 47:        # '/': origin-form only
        return 0
    v.path = d + s
    v.plen = 0
    while s + v.plen < i and d[s + v.plen] != 63 and d[s + v.plen] != 35:   # '?' '#'
        v.plen += 1
    i += 1
    if i + 8 > m or memcmp(d + i, b"HTTP/1.", 7) != 0 or (d[i + 7] != 48 and d[i + 7] != 49):
        return 0
    i = _eol(d, i + 8, m)
    if i < 0:
        return 0
    while True:
        k = _eol(d, i, m)
        if k >= 0:
            break                                              # the blank line
        ns = i
        while i < m and _tchar(d[i]):
            i += 1
        if i == ns or i >= m or d[i] != 58:                     # ':'
            return 0
        vs = i + 1
        i = vs
        while i < m and (d[i] == 9 or 0x20 <= d[i] <= 0x7E or d[i] >= 0x80):
            i += 1
        ve = i
        i = _eol(d, i, m)
        if i < 0:
            return 0
        nh += 1
        if nh > HTTP_MAX_HEADERS:
            return 0
        if (vs - 1 - ns == 4 and (d[ns] | 32) == 104 and (d[ns + 1] | 32) == 111
                and (d[ns + 2] | 32) == 115 and (d[ns + 3] | 32) == 116):      # "host"
            if hv_s >= 0:
                return 0                                       # duplicate Host: Invalid
            hv_s, hv_e = vs, ve
    v.hlen = -1
    if hv_s < 0:
        return 1
    while hv_s < hv_e and (d[hv_s] == 32 or d[hv_s] == 9):
        hv_s += 1
    while hv_e > hv_s and (d[hv_e - 1] == 32 or d[hv_e - 1] == 9):
        hv_e -= 1
    if hv_e - hv_s > HTTP_MAX_HOST:
        return 0
    for k in range(hv_s, hv_e):
        c = d[k]
        if c >= 0x80:
            return 0
        v.host[k - hv_s] = c + 32 if 65 <= c <= 90 else c
    k = hv_e - hv_s
    if k == 0:
        return 1
    if v.host[0] == 91:                                        # '[': IPv6 literal
        return 0
    s = 0
    while s < k and v.host[s] != 58:                           # ':'
        s += 1
    for c in range(s + 1, k):
        if not 48 <= v.host[c] <= 57:
            return 1                                           # a port that is not digits
    if s > 0 and v.host[s - 1] == 46:                          # a trailing dot
        s -= 1
    if s > 0:
        v.hlen = s
    return 1


cdef inline void _patch32(uint8_t *f, int o, uint32_t v, bint partial) noexcept nogil:
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


cdef inline void _patch16(uint8_t *f, int o, uint16_t v, bint partial) noexcept nogil:
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


cdef inline void _rewrite(uint8_t *f, int ip_off, int port_off, uint32_t old_ip,
                          uint16_t old_port, uint32_t new_ip, uint16_t new_port,
                          uint8_t proto, bint partial) noexcept nogil:
    """Replace one address and one port, decrement TTL, patch IPv4 and L4 checksums. A
    partial L4 checksum takes the address change only (the kernel sums the port later)."""
    cdef uint16_t ipc = rd16(f + 24)
    cdef uint16_t ttl_word = rd16(f + 22)
    f[22] -= 1
    ipc = _csum_replace2(ipc, ttl_word, rd16(f + 22))
    ipc = _csum_replace4(ipc, old_ip, new_ip)
    wr16(f + 24, ipc)
    wr32(f + ip_off, new_ip)
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


cdef inline void _track(Flow *e, uint8_t tflags, bint fwd) noexcept nogil:
    """IPVS-like TCP state from the flags seen in each direction."""
    if tflags & TH_RST:
        e.state = S_CLOSE
    elif tflags & TH_FIN:
        if e.state != S_CLOSE:
            e.flags |= F_FIN_C if fwd else F_FIN_S
            e.state = S_TIME_WAIT if (e.flags & (F_FIN_C | F_FIN_S)) == (F_FIN_C | F_FIN_S) else S_FIN_WAIT
    elif e.state == S_SYN_SENT:
        if not fwd and (tflags & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK):
            e.state = S_SYN_RECV
        elif fwd and (tflags & (TH_SYN | TH_ACK)) == TH_ACK:
            e.state = S_ESTABLISHED
    elif e.state == S_SYN_RECV:
        if fwd and tflags & TH_ACK:
            e.state = S_ESTABLISHED


cdef inline int64_t mono_ms() noexcept nogil:
    """time.monotonic() in integer ms (Python's clock on Linux is CLOCK_MONOTONIC too)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cdef class Engine:
    """See docs/interfaces.md; same public API as engine_py.Engine."""
    cdef Flow *fl
    cdef uint64_t *ifwd
    cdef uint64_t *irev
    cdef uint32_t *freel
    cdef uint32_t nfree, cap, hand, sweep, nused
    cdef uint64_t mask
    cdef int64_t tmo[16]
    cdef Real *reals
    cdef Service *svcs
    cdef uint32_t nsvc
    cdef int32_t *svc_slot
    cdef int32_t *tab
    cdef int32_t *wts
    cdef uint32_t local_ip
    cdef uint8_t local_mac[6]
    cdef uint8_t gw_mac[6]
    cdef uint8_t has_gw
    cdef uint64_t *ctr
    cdef uint8_t *vmap
    cdef uint64_t k0, k1
    cdef uint32_t newlen
    cdef uint32_t rowcap
    cdef bint partial
    cdef uint8_t *vnet      # the current frame's virtio-net header (NULL without one)
    cdef bint keep_vnet     # the routine kept a partial checksum: do not clear the header
    cdef WaitQ *waitq
    cdef L7Rule *l7r
    cdef Service *pools
    cdef uint8_t *blob
    cdef uint32_t wq_head, wq_tail, wq_size
    cdef PyThread_type_lock lock
    cdef int want           # threads waiting in acquire(): serve() lets them in first

    def __cinit__(self, capacity, timeouts=None):
        if not isinstance(capacity, int) or not 1 <= capacity <= (1 << 24):
            raise ValueError("capacity must be an integer 1..16777216, got %r" % (capacity,))
        cdef uint64_t size = 16
        while size < 2 * <uint64_t>capacity:
            size <<= 1
        self.cap = capacity
        self.mask = size - 1
        self.fl = <Flow *>calloc(capacity, sizeof(Flow))
        self.ifwd = <uint64_t *>calloc(size, sizeof(uint64_t))
        self.irev = <uint64_t *>calloc(size, sizeof(uint64_t))
        self.freel = <uint32_t *>malloc(capacity * sizeof(uint32_t))
        self.reals = <Real *>calloc(MAX_REALS, sizeof(Real))
        self.svcs = <Service *>calloc(MAX_SERVICES, sizeof(Service))
        self.svc_slot = <int32_t *>malloc(SVC_SLOTS * sizeof(int32_t))
        self.ctr = <uint64_t *>calloc(N_COUNTERS, sizeof(uint64_t))
        self.vmap = <uint8_t *>calloc(N_COUNTERS, sizeof(uint8_t))
        self.wq_size = SPLICE_WAITQ_MIN
        while self.wq_size < <uint32_t>capacity:
            self.wq_size <<= 1
        self.waitq = <WaitQ *>malloc(self.wq_size * sizeof(WaitQ))
        self.wq_head = self.wq_tail = 0
        self.lock = PyThread_allocate_lock()
        self.want = 0
        if not (self.lock and self.fl and self.ifwd and self.irev and self.freel and self.reals and self.svcs
                and self.svc_slot and self.ctr and self.vmap and self.waitq):
            raise MemoryError()
        cdef uint32_t k
        for k in range(capacity):
            self.freel[k] = capacity - 1 - k     # pops 0, 1, 2 ... like the twin
        self.nfree = capacity
        for k in range(SVC_SLOTS):
            self.svc_slot[k] = -1
        for k in range(N_COUNTERS):
            self.vmap[k] = V_DROP
        self.vmap[C_NAT_FWD] = V_TX
        self.vmap[C_NAT_REV] = V_TX
        self.vmap[C_DSR_FWD] = V_TX
        self.vmap[C_SPLICE_SYNACK] = V_TX
        self.vmap[C_SPLICE_FWD] = V_TX
        self.vmap[C_SPLICE_REV] = V_TX
        self.vmap[C_SPLICE_REPLAY] = V_TX
        self.vmap[C_SPLICE_DECIDED] = V_TX
        self.vmap[C_TUNNEL_FWD] = V_TX
        self.vmap[C_TUNNEL_FRAG_NEEDED] = V_TX
        self.vmap[C_PUNT_TUNNEL_GSO] = V_PUNT
        self.vmap[C_PUNT_ARP] = V_PUNT
        self.vmap[C_PUNT_LOCAL] = V_PUNT
        self.vmap[C_PUNT_SPLICE] = V_PUNT
        self.tab = NULL
        self.wts = NULL
        self.l7r = NULL
        self.pools = NULL
        self.blob = NULL
        self.set_timeouts(timeouts or {})

    def __dealloc__(self):
        cdef uint32_t k
        if self.fl:
            for k in range(self.cap):
                free(self.fl[k].rp)
        free(self.waitq)
        free(self.fl); free(self.ifwd); free(self.irev); free(self.freel); free(self.reals)
        free(self.svcs); free(self.svc_slot); free(self.ctr); free(self.vmap)
        free(self.tab); free(self.wts)
        free(self.l7r); free(self.pools); free(self.blob)
        if self.lock:
            PyThread_free_lock(self.lock)

    # ---- the engine lock (lb/workers.py) --------------------------------------------------
    def acquire(self):
        """Take the engine lock, waiting without the GIL. serve() takes it for every burst and
        returns holding it; a thread that waits here gets it before serve's next burst."""
        with nogil:
            tw_atomic_add(&self.want, 1)
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
            tw_atomic_add(&self.want, -1)

    def release(self):
        PyThread_release_lock(self.lock)

    cdef inline void _take(self) noexcept nogil:
        while tw_atomic_load(&self.want) > 0:
            sched_yield()
        PyThread_acquire_lock(self.lock, WAIT_LOCK)

    # ---- control side -------------------------------------------------------------------
    def set_timeouts(self, timeouts):
        t = dict(defs.DEFAULT_TIMEOUTS)
        for k, v in timeouts.items():
            if k not in t:
                raise ValueError("unknown timeout %r" % (k,))
            if not isinstance(v, (int, float)) or v <= 0:
                raise ValueError("timeout %s must be > 0, got %r" % (k, v))
            t[k] = v
        for i, k in enumerate(defs.TIMEOUT_KEYS):
            self.tmo[i] = int(t[k] * 1000)

    def set_local(self, ip, mac):
        cdef bytes m = check_mac(mac)
        self.local_ip = check_ip(ip)
        memcpy(self.local_mac, <const char *>m, 6)

    def set_splice_secret(self, secret):
        """The SYN-cookie key (16 bytes, random per LB or shared by LBs that must accept
        each other's cookies)."""
        self.k0, self.k1 = check_secret(secret)

    def set_gateway(self, mac):
        cdef bytes m
        if mac is None:
            self.has_gw = 0
        else:
            m = check_mac(mac)
            memcpy(self.gw_mac, <const char *>m, 6)
            self.has_gw = 1

    def set_real(self, idx, ip, port, mac):
        check_real_idx(idx)
        cdef bytes m = None if mac is None else check_mac(mac)
        cdef uint32_t ipv = check_ip(ip)
        cdef uint16_t portv = check_port(port)
        cdef Real *r = &self.reals[<int>idx]
        r.ip = ipv
        r.port = portv
        if m is None:
            r.has_mac = 0
        else:
            memcpy(r.mac, <const char *>m, 6)
            r.has_mac = 1

    def real_conns(self, idx):
        check_real_idx(idx)
        return self.reals[<int>idx].conns

    def set_real_up(self, idx, up):
        """Health: a down real keeps its flows unless their service has SVC_EXPIRE_NODEST.
        (Leaving it out of new-flow tables is the control side's job.)"""
        check_real_idx(idx)
        self.reals[<int>idx].down = 0 if up else 1

    def set_services(self, specs):
        specs = check_specs(specs)
        l7s = [s.l7 for s in specs if s.l7 is not None]
        cdef uint32_t total = (sum(len(s.table) for s in specs)
                               + sum(len(p[1]) for l in l7s for p in l.pools))
        cdef uint32_t nrules = sum(len(l.rules) for l in l7s)
        cdef uint32_t npools = sum(len(l.pools) for l in l7s)
        cdef uint32_t nblob = sum(len(r[1]) for l in l7s for r in l.rules)
        cdef int32_t *tab = <int32_t *>malloc((total + 1) * sizeof(int32_t))
        cdef int32_t *wts = <int32_t *>malloc((total + 1) * sizeof(int32_t))
        cdef L7Rule *l7r = <L7Rule *>malloc((nrules + 1) * sizeof(L7Rule))
        cdef Service *pools = <Service *>calloc(npools + 1, sizeof(Service))
        cdef uint8_t *blob = <uint8_t *>malloc(nblob + 1)
        if tab == NULL or wts == NULL or l7r == NULL or pools == NULL or blob == NULL:
            free(tab); free(wts); free(l7r); free(pools); free(blob)
            raise MemoryError()
        cdef uint32_t roff = 0, poff = 0, boff = 0, p0
        cdef const uint8_t[::1] arg
        cdef uint32_t off = 0, k, j
        cdef uint64_t key
        cdef Service *sv
        for k in range(SVC_SLOTS):
            self.svc_slot[k] = -1
        for k, s in enumerate(specs):
            sv = &self.svcs[k]
            sv.vip, sv.port, sv.proto, sv.mode, sv.sched = s.vip, s.port, s.proto, s.mode, s.sched
            sv.off, sv.n, sv.cursor, sv.flags = off, len(s.table), 0, s.flags
            for j in range(sv.n):
                tab[off + j] = s.table[j]
                wts[off + j] = s.weights[j] if j < len(s.weights) else 1
            off += sv.n
            sv.l7_off, sv.l7_n, sv.l7_limit = roff, 0, 0
            sv.vni, sv.mtu = (s.tunnel.vni, s.tunnel.mtu) if s.tunnel is not None else (0, 0)
            if s.l7 is not None:
                p0 = poff
                for sched, table, weights in s.l7.pools:
                    pools[poff].sched, pools[poff].off, pools[poff].n = sched, off, len(table)
                    pools[poff].cursor = 0
                    for j in range(len(table)):
                        tab[off + j] = table[j]
                        wts[off + j] = weights[j] if j < len(weights) else 1
                    off += len(table)
                    poff += 1
                for kind, a, pool in s.l7.rules:
                    l7r[roff].kind, l7r[roff].pool = kind, p0 + pool
                    l7r[roff].off, l7r[roff].len = boff, len(a)
                    if len(a):
                        arg = a
                        memcpy(blob + boff, &arg[0], len(a))
                    boff += len(a)
                    roff += 1
                sv.l7_n, sv.l7_limit = len(s.l7.rules), s.l7.limit
            key = _mix64((<uint64_t>sv.vip << 24) | (<uint64_t>sv.port << 8) | sv.proto)
            j = key & (SVC_SLOTS - 1)
            while self.svc_slot[j] >= 0:
                j = (j + 1) & (SVC_SLOTS - 1)
            self.svc_slot[j] = k
        free(self.tab); free(self.wts); free(self.l7r); free(self.pools); free(self.blob)
        self.tab, self.wts, self.nsvc = tab, wts, len(specs)
        self.l7r, self.pools, self.blob = l7r, pools, blob

    def counters(self):
        return {name: self.ctr[i] for i, name in enumerate(defs.COUNTERS)}

    def flow_count(self):
        return self.nused

    def flows(self):
        out = []
        cdef uint32_t k
        cdef Flow *e
        for k in range(self.cap):
            e = &self.fl[k]
            if e.used:
                out.append((e.cip, e.cport, e.vip, e.vport, e.proto, e.real, e.mode, e.state,
                            e.created, e.last, e.pkts_fwd, e.pkts_rev, e.bytes_fwd, e.bytes_rev))
        return out

    def expire(self, int64_t now_ms, budget):
        cdef uint32_t freed = 0, j, k, b = min(budget, self.cap)
        cdef Flow *e
        for k in range(b):
            j = self.sweep
            self.sweep = (j + 1) % self.cap
            e = &self.fl[j]
            if e.used and now_ms - e.last > self.tmo[e.state]:
                self._delete(j)
                self.ctr[C_FLOW_EXPIRED] += 1
                freed += 1
        return freed

    # ---- flow table ---------------------------------------------------------------------
    cdef inline int32_t _find(self, uint64_t *tab, uint64_t h, uint32_t src, uint32_t dst,
                              uint16_t sport, uint16_t dport, uint8_t proto, bint rev) noexcept nogil:
        cdef uint64_t i = h & self.mask, v, tag = h >> 32
        cdef Flow *e
        while True:
            v = tab[i]
            if v == 0:
                return -1
            if v >> 32 == tag:
                e = &self.fl[(v & 0xFFFFFFFFULL) - 1]
                if rev:
                    if (e.rip == src and e.cip == dst and e.rport == sport and e.cport == dport
                            and e.proto == proto):
                        return (v & 0xFFFFFFFFULL) - 1
                elif (e.cip == src and e.vip == dst and e.cport == sport and e.vport == dport
                        and e.proto == proto):
                    return (v & 0xFFFFFFFFULL) - 1
            i = (i + 1) & self.mask

    cdef inline void _insert(self, uint64_t *tab, uint64_t h, uint32_t idx) noexcept nogil:
        cdef uint64_t i = h & self.mask
        while tab[i]:
            i = (i + 1) & self.mask
        tab[i] = ((h >> 32) << 32) | (idx + 1)

    cdef void _unlink(self, uint64_t *tab, uint64_t h, uint32_t idx, bint rev) noexcept nogil:
        cdef uint64_t mask = self.mask, i = h & mask, j, v, k
        cdef Flow *e
        while (tab[i] & 0xFFFFFFFFULL) != idx + 1:
            i = (i + 1) & mask
        j = i
        while True:
            j = (j + 1) & mask
            v = tab[j]
            if v == 0:
                break
            e = &self.fl[(v & 0xFFFFFFFFULL) - 1]
            k = (e.hr if rev else e.hf) & mask
            # the entry at j may move to the hole at i unless its home k lies in (i, j]
            if (i <= j and (k <= i or k > j)) or (i > j and k <= i and k > j):
                tab[i] = v
                i = j
        tab[i] = 0

    cdef void _insert_rev(self, uint32_t idx) noexcept nogil:
        """Enter flow idx in the reverse index. An older flow with the same backend-side key
        (client ip:port to backend ip:port, e.g. a closing flow of another VIP on the same
        backend) is over: the backend cannot have two connections on one 4-tuple."""
        cdef Flow *e = &self.fl[idx]
        cdef int32_t old = self._find(self.irev, e.hr, e.rip, e.cip, e.rport, e.cport, e.proto, True)
        if old >= 0:
            self._delete(old)
            self.ctr[C_FLOW_REV_REPLACED] += 1
        self._insert(self.irev, e.hr, idx)
        e.flags |= F_REV

    cdef void _delete(self, uint32_t idx) noexcept nogil:
        cdef Flow *e = &self.fl[idx]
        self._unlink(self.ifwd, e.hf, idx, False)
        if e.flags & F_REV:
            self._unlink(self.irev, e.hr, idx, True)
        if e.real >= 0:
            self.reals[e.real].conns -= 1
        if e.rp != NULL:
            free(e.rp)
            e.rp = NULL
        e.used = 0
        self.freel[self.nfree] = idx
        self.nfree += 1
        self.nused -= 1

    cdef uint32_t _alloc(self, int64_t now) noexcept nogil:
        cdef int64_t best = -1
        cdef uint32_t j, k
        cdef Flow *e
        cdef bint expired
        if self.nfree == 0:
            for k in range(EVICT_SAMPLE):
                j = (self.hand + k) % self.cap
                e = &self.fl[j]
                if now - e.last > self.tmo[e.state]:
                    best = j
                    break
                if best < 0 or e.last < self.fl[best].last:
                    best = j
            self.hand = (self.hand + EVICT_SAMPLE) % self.cap
            expired = now - self.fl[best].last > self.tmo[self.fl[best].state]
            self._delete(<uint32_t>best)
            self.ctr[C_FLOW_EXPIRED if expired else C_FLOW_EVICTED] += 1
        self.nfree -= 1
        return self.freel[self.nfree]

    cdef uint32_t _create(self, Service *sv, uint64_t h, uint32_t src, uint16_t sport,
                          int32_t real, uint8_t state, int64_t now) noexcept nogil:
        cdef uint32_t idx = self._alloc(now)
        cdef Flow *e = &self.fl[idx]
        cdef Real *r = &self.reals[real]
        e.cip, e.vip, e.rip = src, sv.vip, r.ip
        e.cport, e.vport, e.rport = sport, sv.port, r.port
        e.proto, e.mode, e.state, e.flags, e.real = sv.proto, sv.mode, state, 0, real
        e.used = 1
        e.hf = h
        e.hr = _flow_hash(r.ip, src, r.port, sport, sv.proto)
        e.created = now
        e.last = now
        e.pkts_fwd = e.pkts_rev = e.bytes_fwd = e.bytes_rev = 0
        self._insert(self.ifwd, h, idx)
        if sv.mode != MODE_DSR:
            self._insert_rev(idx)
        r.conns += 1
        self.nused += 1
        return idx

    cdef int32_t _schedule(self, Service *sv, uint64_t h, uint32_t src) noexcept nogil:
        cdef uint32_t n = sv.n, k, best
        cdef int32_t *t = self.tab + sv.off
        cdef int32_t *w = self.wts + sv.off
        if n == 0:
            return -1
        if sv.sched == SCHED_SEQ:
            k = sv.cursor % n
            sv.cursor += 1
            return t[k]
        if sv.sched == SCHED_HASH5:
            return t[h % n]
        if sv.sched == SCHED_HASHSRC:
            return t[_mix64(src) % n]
        best = 0
        for k in range(1, n):
            # conns[k] / w[k] < conns[best] / w[best], without division
            if self.reals[t[k]].conns * w[best] < self.reals[t[best]].conns * w[k]:
                best = k
        return t[best]

    cdef inline Service *_service(self, uint32_t vip, uint16_t port, uint8_t proto) noexcept nogil:
        cdef uint64_t j = _mix64((<uint64_t>vip << 24) | (<uint64_t>port << 8) | proto) & (SVC_SLOTS - 1)
        cdef int32_t s
        cdef Service *sv
        while True:
            s = self.svc_slot[j]
            if s < 0:
                return NULL
            sv = &self.svcs[s]
            if sv.vip == vip and sv.port == port and sv.proto == proto:
                return sv
            j = (j + 1) & (SVC_SLOTS - 1)

    # ---- per packet ---------------------------------------------------------------------
    def process(self, batch, int64_t now_ms):
        """Every frame of the batch: verdict, reason, rewritten in place. Returns how many
        frames were punted (V_PUNT), so the caller looks for them only when there are some."""
        cdef uint8_t[:, ::1] buf = batch.buf
        cdef uint32_t[::1] lens = batch.lens
        cdef uint8_t[::1] verdict = batch.verdict
        cdef uint16_t[::1] reason = batch.reason
        cdef int n = batch.n
        if n < 0 or n > buf.shape[0] or n > lens.shape[0] or n > verdict.shape[0] or n > reason.shape[0]:
            raise ValueError("batch.n out of range")
        if n == 0:
            return 0
        cdef uint32_t stride = buf.shape[1]
        cdef uint32_t hdr = batch.hdr
        if stride < 128 + hdr:
            raise ValueError("batch snap must be >= 128 (splice builds SYN-ACKs in place)")
        cdef int i, punts = 0
        with nogil:
            self._burst(&buf[0, 0], stride, hdr, &lens[0], &verdict[0], &reason[0], n, now_ms)
            for i in range(n):
                punts += verdict[i] == V_PUNT
        return punts

    def serve(self, int fd, batch, int64_t deadline_ms):
        """One data-plane thread's loop, without the GIL: poll(fd) for frames, then bursts of
        rx -> process -> tx until the fd is drained, each burst under the engine lock, and
        again, until a burst has punted frames (the batch then holds that burst) or the
        CLOCK_MONOTONIC millisecond deadline_ms has passed, or poll() fails.
        Returns holding the engine lock (the caller handles the punts and its timers, then
        calls release()), with what it did: {wakeups, bursts, frames, rx_bytes (headers
        included), rx_gso, rx_needs_csum, tx_frames, tx_errors, tx_bytes, punts (of the last
        burst), now (ms, the clock serve used), error (errno of a failed poll, or 0)}."""
        cdef uint8_t[:, ::1] buf = batch.buf
        cdef uint32_t[::1] lens = batch.lens
        cdef uint8_t[::1] verdict = batch.verdict
        cdef uint16_t[::1] reason = batch.reason
        cdef int size = min(batch.size, buf.shape[0], lens.shape[0], verdict.shape[0],
                            reason.shape[0])
        cdef uint32_t stride = buf.shape[1]
        cdef uint32_t hdr = batch.hdr
        if size < 1:
            raise ValueError("serve needs a batch of at least one frame")
        if stride < 128 + hdr:
            raise ValueError("batch snap must be >= 128 (splice builds SYN-ACKs in place)")
        cdef bint vnet = hdr >= 2
        cdef IoStats st
        cdef pollfd pfd
        cdef int64_t now = mono_ms()
        cdef int i, n = 0, r, punts = 0, err = 0
        cdef long long wakeups = 0, bursts = 0, frames = 0
        cdef uint8_t *base = &buf[0, 0]
        memset(&st, 0, sizeof(st))
        pfd.fd = fd
        pfd.events = POLLIN
        with nogil:
            while punts == 0 and err == 0:
                now = mono_ms()
                if now >= deadline_ms:
                    break
                pfd.revents = 0
                r = poll(&pfd, 1, <int>(deadline_ms - now) if deadline_ms - now < 1000000 else 1000000)
                if r < 0:
                    if errno != EINTR:
                        err = errno
                    continue
                if r == 0:
                    continue
                if pfd.revents & (POLLERR | POLLHUP | POLLNVAL) and not pfd.revents & POLLIN:
                    err = EBADF if pfd.revents & POLLNVAL else EIO
                    continue
                wakeups += 1
                while True:
                    self._take()
                    n = io_rx(fd, base, stride, &lens[0], size, vnet, &st)
                    if n == 0:
                        PyThread_release_lock(self.lock)
                        break
                    now = mono_ms()
                    self._burst(base, stride, hdr, &lens[0], &verdict[0], &reason[0], n, now)
                    io_tx(fd, base, stride, &lens[0], &verdict[0], n, &st)
                    bursts += 1
                    frames += n
                    for i in range(n):
                        punts += verdict[i] == V_PUNT
                    if punts:
                        break                 # returns holding the lock, the batch as it is
                    PyThread_release_lock(self.lock)
                    if n < size or mono_ms() >= deadline_ms:
                        break                 # drained (epoll/poll says when more comes)
            if punts == 0:
                self._take()
        batch.n = n if punts else 0
        return {"wakeups": wakeups, "bursts": bursts, "frames": frames,
                "rx_bytes": st.rx_bytes, "rx_gso": st.rx_gso, "rx_needs_csum": st.rx_csum,
                "tx_frames": st.tx_sent, "tx_errors": st.tx_errors, "tx_bytes": st.tx_bytes,
                "punts": punts, "now": now, "error": err}

    cdef void _burst(self, uint8_t *base, uint32_t stride, uint32_t hdr, uint32_t *lens,
                     uint8_t *verdict, uint16_t *reason, int n, int64_t now) noexcept nogil:
        cdef int i, j, m
        cdef uint32_t L, row
        cdef uint8_t *rp
        cdef int r
        cdef uint8_t *p
        cdef uint64_t h, v
        cdef uint64_t hs[64]
        # In chunks of 64: hash each plain IPv4 TCP/UDP frame and prefetch its index slots,
        # then read the slots and prefetch the flow entries they name, then process. The
        # prefetches only hide DRAM latency (100k flows do not fit in cache); what a frame
        # does is decided by _one() alone, exactly as in the twin.
        for j in range(0, n, 64):
            m = n - j if n - j < 64 else 64
            for i in range(m):
                p = base + <size_t>(j + i) * stride + hdr
                L = lens[j + i] - hdr if lens[j + i] > hdr else 0
                hs[i] = 0
                if L >= 54 and L + hdr <= stride and p[12] == 8 and p[13] == 0 and p[14] == 0x45 and (
                        p[23] == PROTO_TCP or p[23] == PROTO_UDP):
                    h = _flow_hash(rd32(p + 26), rd32(p + 30), rd16(p + 34), rd16(p + 36), p[23])
                    hs[i] = h         # 0 only with probability 2^-64: then no prefetch
                    tw_prefetch(&self.ifwd[h & self.mask])
                    tw_prefetch(&self.irev[h & self.mask])
            for i in range(m):
                h = hs[i]
                if h:
                    v = self.ifwd[h & self.mask]
                    if v == 0:
                        v = self.irev[h & self.mask]
                    if v:
                        tw_prefetch(&self.fl[(v & 0xFFFFFFFFULL) - 1])
            for i in range(m):
                row = lens[j + i] if lens[j + i] < stride else stride
                L = row - hdr if row > hdr else 0
                rp = base + <size_t>(j + i) * stride
                self.newlen = 0
                self.rowcap = stride - hdr
                self.partial = hdr > 0 and row >= hdr and (rp[0] & VNET_F_NEEDS_CSUM)
                self.vnet = rp if hdr >= 10 and row >= hdr else NULL
                self.keep_vnet = False
                r = self._one(rp + hdr, L, now)
                if self.newlen and self.vmap[r] == V_TX:
                    lens[j + i] = hdr + self.newlen   # a frame made in place (splice, tunnel)
                    if not self.keep_vnet:
                        memset(rp, 0, hdr)            # complete checksums, no GSO
                self.ctr[C_RX_FRAMES] += 1
                self.ctr[r] += 1
                verdict[j + i] = self.vmap[r]
                reason[j + i] = r

    cdef int _one(self, uint8_t *f, uint32_t n, int64_t now) noexcept nogil:
        cdef uint16_t et, tot, sport, dport, ulen
        cdef uint32_t ihl, l4len, doff, src, dst, s, k
        cdef uint8_t proto, tflags = 0, state
        cdef uint64_t h
        cdef int32_t idx, real
        cdef Service *sv
        cdef Flow *e
        if n < 14:
            return C_DROP_RUNT
        if memcmp(f, self.local_mac, 6) != 0 and not (
                f[0] == 0xFF and f[1] == 0xFF and f[2] == 0xFF and f[3] == 0xFF
                and f[4] == 0xFF and f[5] == 0xFF):
            return C_DROP_NOT_OUR_MAC
        et = rd16(f + 12)
        if et == 0x0806:
            return C_PUNT_ARP
        if et == 0x8100 or et == 0x88A8:
            return C_DROP_VLAN
        if et != 0x0800:
            return C_DROP_NOT_IPV4
        if n < 34:
            return C_DROP_IP_TRUNCATED
        if f[14] >> 4 != 4:
            return C_DROP_IP_VERSION
        ihl = (f[14] & 15) * 4
        if ihl < 20:
            return C_DROP_IP_BAD_HDR
        if ihl > 20:
            return C_DROP_IP_OPTIONS
        tot = rd16(f + 16)
        if tot < ihl or 14 + <uint32_t>tot > n:
            return C_DROP_IP_BAD_LEN
        s = 0
        for k in range(14, 34, 2):
            s += rd16(f + k)
        if _fold(s) != 0xFFFF:
            return C_DROP_IP_CSUM
        if rd16(f + 20) & 0x3FFF:
            return C_DROP_IP_FRAGMENT
        proto = f[23]
        src = rd32(f + 26)
        dst = rd32(f + 30)
        if dst == self.local_ip:
            return C_PUNT_LOCAL
        l4len = tot - 20
        if proto == PROTO_TCP:
            if l4len < 20:
                return C_DROP_L4_TRUNCATED
            doff = (f[46] >> 4) * 4
            if doff < 20 or doff > l4len:
                return C_DROP_TCP_BAD_DOFF
            tflags = f[47]
        elif proto == PROTO_UDP:
            if l4len < 8:
                return C_DROP_L4_TRUNCATED
            ulen = rd16(f + 38)
            if ulen < 8 or ulen > l4len:
                return C_DROP_UDP_BAD_LEN
        else:
            return C_DROP_UNKNOWN_DEST
        sport = rd16(f + 34)
        dport = rd16(f + 36)
        h = _flow_hash(src, dst, sport, dport, proto)
        sv = self._service(dst, dport, proto)
        if sv != NULL:
            idx = self._find(self.ifwd, h, src, dst, sport, dport, proto, False)
            if idx >= 0:
                e = &self.fl[idx]
                if now - e.last > self.tmo[e.state]:
                    self._delete(idx)
                    self.ctr[C_FLOW_EXPIRED] += 1
                    idx = -1
                elif ((tflags & (TH_SYN | TH_ACK)) == TH_SYN
                        and (e.state == S_FIN_WAIT or e.state == S_TIME_WAIT or e.state == S_CLOSE)):
                    # a new connection on a closing flow's ports (tcp_tw_reuse): schedule afresh
                    self._delete(idx)
                    self.ctr[C_FLOW_REUSED] += 1
                    idx = -1
                elif e.real >= 0 and self.reals[e.real].down and sv.flags & SVC_EXPIRE_NODEST:
                    # (an unbound splice flow has no real yet: real = -1)
                    self._delete(idx)
                    self.ctr[C_FLOW_EXPIRED_NODEST] += 1
                    idx = -1
            if idx < 0 and sv.mode == MODE_SPLICE:
                if proto != PROTO_TCP:
                    return C_DROP_MODE
                return self._splice_new(f, n, sv, h, src, dst, sport, dport, tflags, now)
            if idx < 0:
                if proto == PROTO_TCP:
                    if (tflags & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN:
                        state = S_SYN_SENT
                    elif ((sv.sched == SCHED_HASH5 or sv.sched == SCHED_HASHSRC)
                            and not tflags & TH_RST):
                        state = S_ESTABLISHED   # lost state: the hash gives the same backend
                    else:
                        return C_DROP_NO_FLOW_NON_SYN
                else:
                    state = S_UDP
                real = self._schedule(sv, h, src)
                if real < 0:
                    return C_DROP_NO_BACKEND
                idx = self._create(sv, h, src, sport, real, state, now)
                self.ctr[C_FLOW_CREATED] += 1
                if state == S_ESTABLISHED:
                    self.ctr[C_FLOW_RECREATED] += 1
            e = &self.fl[idx]
            if e.mode == MODE_NAT:
                return self._nat_fwd(f, n, e, tflags, now)
            if e.mode == MODE_DSR:
                return self._dsr_fwd(f, n, e, tflags, now)
            if e.mode == MODE_SPLICE:
                return self._splice_fwd(f, n, e, sv, tflags, now)
            if e.mode == MODE_TUNNEL:
                return tunnel_fwd(self, f, n, e, sv, tflags, now)
            return C_DROP_MODE
        idx = self._find(self.irev, h, src, dst, sport, dport, proto, True)
        if idx < 0:
            return C_DROP_UNKNOWN_DEST
        e = &self.fl[idx]
        if now - e.last > self.tmo[e.state]:
            self._delete(idx)
            self.ctr[C_FLOW_EXPIRED] += 1
            return C_DROP_UNKNOWN_DEST
        if e.mode == MODE_NAT:
            return self._nat_rev(f, n, e, tflags, now)
        if e.mode == MODE_SPLICE:
            return self._splice_rev(f, n, e, tflags, now)
        return C_DROP_MODE

    # ---- splice (see fastpath/defs.py for the cookie; modes/splice.py for the Python side) --
    cdef inline uint32_t _h1(self, uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport) noexcept nogil:
        return <uint32_t>(_mix64(self.k0 ^ ((<uint64_t>src << 32) | dst)
                                 ^ _mix64(self.k1 ^ ((<uint64_t>sport << 16) | dport))) & 0xFFFFFFFFULL)

    cdef inline uint32_t _h2(self, uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport,
                             uint32_t cnt) noexcept nogil:
        return <uint32_t>(_mix64(self.k1 ^ ((<uint64_t>src << 32) | dst)
                                 ^ _mix64(self.k0 ^ ((<uint64_t>cnt << 32) | (<uint64_t>sport << 16) | dport)))
                          & 0xFFFFFF)

    cdef int _splice_new(self, uint8_t *f, uint32_t n, Service *sv, uint64_t h, uint32_t src,
                         uint32_t dst, uint16_t sport, uint16_t dport, uint8_t tflags,
                         int64_t now) noexcept nogil:
        """No flow yet: a SYN gets a cookie SYN-ACK (no state); an ACK with a valid cookie
        creates the flow in SPL_WAIT and goes up to Python."""
        cdef uint32_t c_isn, l_isn, c, cnt, data, bits, idx
        cdef int k
        cdef Opts o
        cdef Flow *e
        if (tflags & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN:
            return self._splice_synack(f, src, dst, sport, dport, now)
        if tflags & TH_RST or not tflags & TH_ACK:
            return C_SPLICE_BAD_COOKIE
        c_isn = rd32(f + 38) - 1
        l_isn = rd32(f + 42) - 1
        c = l_isn - self._h1(src, dst, sport, dport) - c_isn
        cnt = c >> 24
        if ((<uint32_t>(now >> 16) & 0xFF) - cnt) & 0xFF > COOKIE_MAX_AGE:
            return C_SPLICE_BAD_COOKIE
        data = (c - self._h2(src, dst, sport, dport, cnt)) & 0xFFFFFF
        if data >= 4:
            return C_SPLICE_BAD_COOKIE
        _tcp_options(f, 54, 34 + (f[46] >> 4) * 4, &o)
        if o.ts >= 0 and f[o.ts + 1] != 10:
            o.ts = -1
        idx = self._alloc(now)
        e = &self.fl[idx]
        e.cip, e.vip, e.rip, e.cport, e.vport, e.rport = src, dst, 0, sport, dport, 0
        e.proto, e.mode, e.state, e.flags, e.real, e.used = 6, MODE_SPLICE, S_SPL_WAIT, 0, -1, 1
        e.hf, e.hr = h, 0
        e.created = now
        e.last = now
        e.pkts_rev = e.bytes_rev = 0
        e.c_isn, e.l_isn, e.delta, e.ts_off = c_isn, l_isn, 0, 0
        e.mss = _COOKIE_MSS[data]
        if o.ts >= 0:
            bits = rd32(f + o.ts + 6) & 0x3F          # what our SYN-ACK's TSval carried
            e.ws_c = bits & 0xF
            e.sopt = SOPT_TS | (SOPT_SACK if bits & 0x10 else 0)
            e.c_tsval = rd32(f + o.ts + 2)
        else:
            e.ws_c, e.sopt, e.c_tsval = 0xF, 0, 0
        e.ws_lb = SPLICE_WSCALE if e.ws_c != 0xF else 0
        e.ws_b, e.b_tsval = 0, 0
        e.c_win = rd16(f + 48)
        e.pkts_fwd, e.bytes_fwd = 1, n
        e.rp, e.rp_len = NULL, 0
        self._insert(self.ifwd, h, idx)
        self.nused += 1
        self.ctr[C_FLOW_CREATED] += 1
        if rd16(f + 16) > 20 + (f[46] >> 4) * 4 or tflags & TH_FIN:
            if sv.l7_n:
                k = self._l7_bind(f, e, sv, tflags, now)
                if k:
                    return k
            e.flags = F_SEEN
            return C_PUNT_SPLICE          # the request (or a FIN) came with the ACK
        # nothing for Python yet: the request's first segment will be punted; a client that
        # stays silent is handed up by splice_waiting()
        self._waitq_push(idx, now)
        return C_SPLICE_ACCEPTED

    cdef int _splice_synack(self, uint8_t *f, uint32_t src, uint32_t dst, uint16_t sport,
                            uint16_t dport, int64_t now) noexcept nogil:
        cdef Opts o
        cdef uint8_t opt[40]
        cdef uint8_t peer[6]
        cdef int ol = 0, k, mssi = 0
        cdef uint32_t mss = 536, ws = 0xF, c_isn, cookie, my_ts, cnt
        cdef bint sack
        if _tcp_options(f, 54, 34 + (f[46] >> 4) * 4, &o) < 0:
            return C_DROP_TCP_BAD_OPTIONS
        if o.mss >= 0 and f[o.mss + 1] == 4:
            mss = rd16(f + o.mss + 2)
        k = 3
        while k >= 0:
            if mss >= _COOKIE_MSS[k]:
                mssi = k
                break
            k -= 1
        c_isn = rd32(f + 38)
        cnt = <uint32_t>(now >> 16) & 0xFF
        cookie = (self._h1(src, dst, sport, dport) + c_isn + (cnt << 24)
                  + ((self._h2(src, dst, sport, dport, cnt) + mssi) & 0xFFFFFF))
        opt[0] = 2
        opt[1] = 4
        wr16(opt + 2, SPLICE_MSS)
        ol = 4
        if o.ts >= 0 and f[o.ts + 1] == 10:
            if o.ws >= 0 and f[o.ws + 1] == 3:
                ws = f[o.ws + 2] if f[o.ws + 2] < 14 else 14
            sack = o.sackok >= 0 and f[o.sackok + 1] == 2
            my_ts = <uint32_t>((now & ~(<int64_t>0x3F)) | ws | (0x10 if sack else 0))
            _sack_ts(opt + 4, sack, my_ts, rd32(f + o.ts + 2))
            ol = 16
            if ws != 0xF:
                opt[16] = 1
                opt[17] = 3
                opt[18] = 3
                opt[19] = SPLICE_WSCALE
                ol = 20
        memcpy(peer, f + 6, 6)                   # the SYN's source MAC: our next hop back
        self.newlen = _tcp_frame(f, peer, self.local_mac, dst, src, dport, sport, cookie,
                                 c_isn + 1, TH_SYN | TH_ACK, 0xFFFF, opt, ol, NULL, 0)
        return C_SPLICE_SYNACK

    cdef int _splice_fwd(self, uint8_t *f, uint32_t n, Flow *e, Service *sv, uint8_t tflags,
                         int64_t now) noexcept nogil:
        cdef Opts o
        cdef Real *r
        cdef int k, ln
        _tcp_options_fast(f, &o)
        if e.state == S_SPL_WAIT or e.state == S_SPL_CONNECTING:
            # no backend yet: the VIP's rules decide here, or Python buffers the request
            # (and answers RST/FIN)
            if o.ts >= 0 and f[o.ts + 1] == 10:
                e.c_tsval = rd32(f + o.ts + 2)
            e.c_win = rd16(f + 48)
            e.last = now
            e.pkts_fwd += 1
            e.bytes_fwd += n
            if e.state == S_SPL_WAIT and sv.l7_n and not e.flags & F_SEEN:
                k = self._l7_bind(f, e, sv, tflags, now)
                if k:
                    return k
            e.flags |= F_SEEN
            return C_PUNT_SPLICE
        r = &self.reals[e.real]
        if not r.has_mac:
            return C_DROP_NO_NEIGH
        if f[22] <= 1:
            return C_DROP_TTL
        _track(e, tflags, True)
        _rewrite(f, 30, 36, e.vip, e.vport, e.rip, e.rport, 6, self.partial)
        if tflags & TH_ACK:
            _patch32(f, 42, rd32(f + 42) - e.delta, self.partial)
        if e.sopt & SOPT_TS and o.ts >= 0 and f[o.ts + 1] == 10:
            _patch32(f, o.ts + 6, rd32(f + o.ts + 6) - e.ts_off, self.partial)
        if o.sack >= 0:
            ln = f[o.sack + 1]
            k = o.sack + 2
            while k < o.sack + ln - 7:
                _patch32(f, k, rd32(f + k) - e.delta, self.partial)
                _patch32(f, k + 4, rd32(f + k + 4) - e.delta, self.partial)
                k += 8
        memcpy(f, r.mac, 6)
        memcpy(f + 6, self.local_mac, 6)
        e.last = now
        e.pkts_fwd += 1
        e.bytes_fwd += n
        return C_SPLICE_FWD

    cdef int _splice_rev(self, uint8_t *f, uint32_t n, Flow *e, uint8_t tflags, int64_t now) noexcept nogil:
        cdef Opts o
        cdef int ts, ws
        cdef uint32_t w
        _tcp_options_fast(f, &o)
        ts = o.ts if o.ts >= 0 and f[o.ts + 1] == 10 else -1
        if e.state == S_SPL_CONNECTING:
            if (tflags & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK) and rd32(f + 42) == e.c_isn + 1:
                e.delta = e.l_isn - rd32(f + 38)
                ws = f[o.ws + 2] if o.ws >= 0 and f[o.ws + 1] == 3 else -1
                e.ws_b = (ws if ws < 14 else 14) if ws >= 0 and e.ws_c != 0xF else 0
                if e.sopt & SOPT_TS and ts >= 0:
                    e.b_tsval = rd32(f + ts + 2)
                    # the client's view continues from our SYN-ACK's TSval (PAWS)
                    e.ts_off = <uint32_t>(now + 64) - e.b_tsval
                e.state = S_ESTABLISHED
                e.last = now
                e.pkts_rev += 1
                e.bytes_rev += n
                self.ctr[C_SPLICE_ESTABLISHED] += 1
                if e.flags & F_INLINE:
                    # (one segment within the client's MSS, as the client itself sent it)
                    return self._splice_replay(f, e, rd32(f + 38))
                return C_PUNT_SPLICE      # a request longer than one segment: Python replays it
            if tflags & TH_RST:
                return C_PUNT_SPLICE
            return C_DROP_SPLICE_STATE
        if e.state == S_SPL_WAIT:
            return C_DROP_SPLICE_STATE
        if tflags & TH_SYN:
            # a retransmitted SYN-ACK: our ACK was lost; answer it (and replay) again
            if ts >= 0:
                e.b_tsval = rd32(f + ts + 2)
            e.last = now
            if (e.flags & F_INLINE and tflags & TH_ACK and rd32(f + 42) == e.c_isn + 1
                    and rd32(f + 38) == e.l_isn - e.delta):
                return self._splice_replay(f, e, rd32(f + 38))
            return C_PUNT_SPLICE
        if e.rp != NULL and tflags & TH_ACK and <int32_t>(rd32(f + 42) - e.c_isn - 1) > 0:
            free(e.rp)            # the backend has the request: no SYN-ACK will come again
            e.rp = NULL
        if not self.has_gw:
            return C_DROP_NO_NEIGH
        if f[22] <= 1:
            return C_DROP_TTL
        _track(e, tflags, False)
        _rewrite(f, 26, 34, e.rip, e.rport, e.vip, e.vport, 6, self.partial)
        _patch32(f, 38, rd32(f + 38) + e.delta, self.partial)
        if e.ws_b != e.ws_lb:
            w = (<uint32_t>rd16(f + 48) << e.ws_b) >> e.ws_lb
            _patch16(f, 48, w if w < 0xFFFF else 0xFFFF, self.partial)
        if ts >= 0 and e.sopt & SOPT_TS:
            _patch32(f, ts + 2, rd32(f + ts + 2) + e.ts_off, self.partial)
        memcpy(f, self.gw_mac, 6)
        memcpy(f + 6, self.local_mac, 6)
        e.last = now
        e.pkts_rev += 1
        e.bytes_rev += n
        return C_SPLICE_REV

    cdef void _waitq_push(self, uint32_t idx, int64_t now) noexcept nogil:
        if self.wq_tail - self.wq_head == self.wq_size:
            self.wq_head += 1
            self.ctr[C_SPLICE_WAITQ_LOST] += 1
        self.waitq[self.wq_tail & (self.wq_size - 1)] = WaitQ(idx, self.fl[idx].c_isn,
                                                            self.fl[idx].created, now)
        self.wq_tail += 1

    cdef void _bind(self, Flow *e, int32_t real, int64_t now) noexcept nogil:
        cdef Real *r = &self.reals[real]
        e.real, e.rip, e.rport = real, r.ip, r.port
        e.hr = _flow_hash(r.ip, e.cip, r.port, e.cport, 6)
        self._insert_rev(<uint32_t>(e - self.fl))
        r.conns += 1
        e.state = S_SPL_CONNECTING
        e.last = now

    cdef int _l7_bind(self, uint8_t *f, Flow *e, Service *sv, uint8_t tflags,
                      int64_t now) noexcept nogil:
        """The request's first segment, in f: decide it by the VIP's rules, bind the flow, keep
        the segment to replay and turn f into our SYN to the backend. 0 when any of it cannot
        be done here (Python then gets the segment)."""
        cdef uint32_t doff = (f[46] >> 4) * 4
        cdef int dl = <int>rd16(f + 16) - 20 - <int>doff
        cdef const uint8_t *d = f + 34 + doff
        cdef int pool, m
        cdef int32_t real
        cdef uint8_t *rp
        if (dl <= 0 or tflags & (TH_SYN | TH_RST | TH_FIN) or not tflags & TH_ACK
                or rd32(f + 38) != e.c_isn + 1
                or dl + (12 if e.sopt & SOPT_TS else 0) > e.mss):
            return 0
        m = dl if <uint32_t>dl < sv.l7_limit else <int>sv.l7_limit
        pool = self._l7_match(d, m, sv)
        if pool < 0:
            return 0
        real = self._schedule(&self.pools[pool], e.hf, e.cip)
        if real < 0 or not self.reals[real].has_mac:
            return 0
        rp = <uint8_t *>malloc(dl)
        if rp == NULL:
            return 0
        memcpy(rp, d, dl)
        self._bind(e, real, now)
        e.flags |= F_INLINE
        e.rp, e.rp_len = rp, dl
        self._waitq_push(<uint32_t>(e - self.fl), now)   # Python resends a lost SYN
        self.newlen = self._syn_into(f, e)
        return C_SPLICE_DECIDED

    cdef int _l7_match(self, const uint8_t *d, int m, Service *sv) noexcept nogil:
        """The pool of the first rule that matches d[:m] (modes/l7.py RuleSet.decide), or -1
        when none does or it is not certain yet (a prefix still arriving, a head incomplete
        or not plain)."""
        cdef HttpView hv
        cdef int http = -1
        cdef uint32_t k
        cdef L7Rule *r
        cdef const uint8_t *a
        for k in range(sv.l7_n):
            r = &self.l7r[sv.l7_off + k]
            a = self.blob + r.off
            if r.kind == L7_DEFAULT:
                return r.pool
            if r.kind == L7_PREFIX:
                if <uint32_t>m >= r.len:
                    if memcmp(d, a, r.len) == 0:
                        return r.pool
                elif memcmp(d, a, m) == 0:
                    return -1                     # may still match: Python waits for more
                continue
            if http < 0:
                http = _http_head(d, m, &hv)
            if http == 0:
                return -1
            if r.kind == L7_METHOD:
                if <uint32_t>hv.mlen == r.len and memcmp(hv.method, a, r.len) == 0:
                    return r.pool
            elif r.kind == L7_PATH:
                if <uint32_t>hv.plen >= r.len and memcmp(hv.path, a, r.len) == 0:
                    return r.pool
            elif r.kind == L7_HOST:
                if hv.hlen >= 0 and <uint32_t>hv.hlen == r.len and memcmp(hv.host, a, r.len) == 0:
                    return r.pool
            elif r.kind == L7_HOST_SUFFIX:
                if (hv.hlen > <int>r.len and hv.host[0] != 46   # '.'
                        and memcmp(hv.host + hv.hlen - r.len, a, r.len) == 0):
                    return r.pool
        return -1

    cdef uint32_t _syn_into(self, uint8_t *f, Flow *e) noexcept nogil:
        cdef uint8_t opt[20]
        cdef int ol = 4
        opt[0] = 2
        opt[1] = 4
        wr16(opt + 2, e.mss)
        if e.sopt & SOPT_TS:
            _sack_ts(opt + 4, e.sopt & SOPT_SACK, e.c_tsval, 0)
            ol = 16
        if e.ws_c != 0xF:
            opt[ol] = 1
            opt[ol + 1] = 3
            opt[ol + 2] = 3
            opt[ol + 3] = e.ws_c
            ol += 4
        return _tcp_frame(f, self.reals[e.real].mac, self.local_mac, e.cip, e.rip, e.cport,
                          e.rport, e.c_isn, 0, TH_SYN, 65535, opt, ol, NULL, 0)

    cdef int _splice_replay(self, uint8_t *f, Flow *e, uint32_t s_isn) noexcept nogil:
        """Turn the backend's SYN-ACK (in f) into our answer as the client: ACK, and the
        client's request when we still hold it (with the client's FIN if it sent one)."""
        cdef Real *r = &self.reals[e.real]
        cdef uint8_t opt[12]
        cdef int ol = 0
        cdef uint8_t fl = TH_ACK
        if not r.has_mac:
            return C_DROP_NO_NEIGH
        if e.sopt & SOPT_TS:
            opt[0] = 1
            opt[1] = 1
            opt[2] = 8
            opt[3] = 10
            wr32(opt + 4, e.c_tsval)
            wr32(opt + 8, e.b_tsval)
            ol = 12
        if e.rp != NULL:
            fl = fl | TH_PSH | (TH_FIN if e.flags & F_RP_FIN else 0)
        if 54 + ol + (e.rp_len if e.rp != NULL else 0) > self.rowcap:
            return C_PUNT_SPLICE
        self.newlen = _tcp_frame(f, r.mac, self.local_mac, e.cip, e.rip, e.cport, e.rport,
                                 e.c_isn + 1, s_isn + 1, fl, e.c_win, opt, ol,
                                 e.rp, e.rp_len if e.rp != NULL else 0)
        return C_SPLICE_REPLAY

    cdef bytes _splice_syn(self, Flow *e):
        """Our SYN to the backend as the client: its address, port, ISN and SYN options as
        the cookie kept them."""
        cdef uint8_t f[80]
        cdef uint32_t L = self._syn_into(f, e)
        return f[:L]

    cdef int32_t _splice_lookup(self, uint32_t cip, uint16_t cport, uint32_t vip, uint16_t vport):
        cdef uint64_t h = _flow_hash(cip, vip, cport, vport, 6)
        cdef int32_t idx = self._find(self.ifwd, h, cip, vip, cport, vport, 6, False)
        if idx >= 0 and self.fl[idx].mode == MODE_SPLICE:
            return idx
        return -1

    def splice_flow(self, cip, cport, vip, vport):
        """The splice state Python needs to talk to the backend as the client, or None."""
        cdef int32_t idx = self._splice_lookup(cip, cport, vip, vport)
        if idx < 0:
            return None
        cdef Flow *e = &self.fl[idx]
        return {"state": e.state, "real": e.real, "rip": e.rip, "rport": e.rport,
                "c_isn": e.c_isn, "l_isn": e.l_isn, "s_isn": <uint32_t>(e.l_isn - e.delta),
                "mss": e.mss, "ws_c": e.ws_c, "ws_b": e.ws_b, "ws_lb": e.ws_lb,
                "sopt": e.sopt, "c_tsval": e.c_tsval, "c_win": e.c_win, "b_tsval": e.b_tsval,
                "ts_off": e.ts_off}

    def splice_bind(self, cip, cport, vip, vport, real, int64_t now_ms, request=b"", fin=False):
        """Bind a flow in SPL_WAIT to a backend: it enters the reverse index (the backend's
        SYN-ACK will find it) and SPL_CONNECTING. Returns our SYN to the backend (a whole
        frame), or None when there is no such flow or the backend's MAC is unknown.

        request (and fin: the client's FIN follows it) is what to replay. When it fits in one
        segment the fast path keeps it and answers the backend's SYN-ACK itself (counter
        splice_replay); otherwise that SYN-ACK is punted and Python replays."""
        check_real_idx(real)
        cdef const uint8_t[::1] req = request
        cdef int32_t idx = self._splice_lookup(cip, cport, vip, vport)
        if idx < 0 or self.fl[idx].state != S_SPL_WAIT or not self.reals[<int>real].has_mac:
            return None
        cdef Flow *e = &self.fl[idx]
        self._bind(e, real, now_ms)
        e.flags |= F_SEEN
        if len(req) + (12 if e.sopt & SOPT_TS else 0) <= e.mss:
            e.flags |= F_INLINE | (F_RP_FIN if fin else 0)
            if len(req):
                e.rp = <uint8_t *>malloc(len(req))
                if e.rp == NULL:
                    raise MemoryError()
                memcpy(e.rp, &req[0], len(req))
            e.rp_len = len(req)
        return self._splice_syn(e)

    def splice_by_backend(self, cip, cport, rip, rport):
        """(cip, cport, vip, vport) of the splice flow bound to backend rip:rport for this
        client address and port, or None."""
        cdef uint32_t c = check_ip(cip), r = check_ip(rip)
        cdef uint16_t cp = check_port(cport), rp = check_port(rport)
        cdef int32_t idx = self._find(self.irev, _flow_hash(r, c, rp, cp, 6), r, c, rp, cp, 6, True)
        if idx < 0 or self.fl[idx].mode != MODE_SPLICE:
            return None
        cdef Flow *e = &self.fl[idx]
        return (e.cip, e.cport, e.vip, e.vport)

    def splice_syn(self, cip, cport, vip, vport):
        """Our SYN to the backend again (it was lost), or None when the flow is not waiting
        for the backend's SYN-ACK."""
        cdef int32_t idx = self._splice_lookup(cip, cport, vip, vport)
        if idx < 0 or self.fl[idx].state != S_SPL_CONNECTING or not self.reals[self.fl[idx].real].has_mac:
            return None
        return self._splice_syn(&self.fl[idx])

    def splice_waiting(self, int64_t now_ms):
        """Flows Python has not seen that may need it, SPLICE_WAIT_HANDOFF_MS or longer after
        they were queued: a client silent since its cookie ACK (SPL_WAIT), or a flow bound
        here whose backend has not answered yet (SPL_CONNECTING: our SYN may be lost).
        [(cip, cport, vip, vport, queued_ms)]; they count as seen from now on. Flows that
        moved on are skipped."""
        out = []
        cdef WaitQ *w
        cdef Flow *e
        while self.wq_head != self.wq_tail:
            w = &self.waitq[self.wq_head & (self.wq_size - 1)]
            if now_ms - w.at < SPLICE_WAIT_HANDOFF_MS:
                break
            self.wq_head += 1
            e = &self.fl[w.idx]
            if (e.used and e.mode == MODE_SPLICE and e.c_isn == w.c_isn and e.created == w.created
                    and (e.state == S_SPL_WAIT or e.state == S_SPL_CONNECTING)
                    and not e.flags & F_SEEN):
                e.flags |= F_SEEN
                out.append((e.cip, e.cport, e.vip, e.vport, w.at))
        return out

    def splice_drop(self, cip, cport, vip, vport):
        """Forget a splice flow (refused, redirected, backend never answered)."""
        cdef int32_t idx = self._splice_lookup(cip, cport, vip, vport)
        if idx < 0:
            return False
        self._delete(idx)
        return True

    # ---- transmit routines (one per mode; IPVS's *_xmit) ---------------------------------
    def tunnel_mss(self, frame):
        """The payload bytes per segment that keep a TCP frame to a tunnel VIP within the
        VIP's MTU once encapsulated (modes/tunnel.py cuts superframes to it); 0 if the frame
        is not IPv4/TCP to a tunnel VIP."""
        cdef const uint8_t[::1] b = frame
        cdef uint32_t ihl, doff
        cdef Service *sv
        if b.shape[0] < 54 or b[12] != 8 or b[13] != 0 or b[23] != PROTO_TCP:
            return 0
        ihl = (b[14] & 15) * 4
        if ihl < 20 or 14 + ihl + 20 > <uint32_t>b.shape[0]:
            return 0
        doff = (b[14 + ihl + 12] >> 4) * 4
        sv = self._service(rd32(&b[30]), rd16(&b[14 + ihl + 2]), PROTO_TCP)
        if sv == NULL or sv.mode != MODE_TUNNEL or sv.mtu < VXLAN_OVERHEAD + ihl + doff + 1:
            return 0
        return sv.mtu - VXLAN_OVERHEAD - ihl - doff

    cdef int _nat_fwd(self, uint8_t *f, uint32_t n, Flow *e, uint8_t tflags, int64_t now) noexcept nogil:
        cdef Real *r = &self.reals[e.real]
        if not r.has_mac:
            return C_DROP_NO_NEIGH
        if f[22] <= 1:
            return C_DROP_TTL
        if e.proto == PROTO_TCP:
            _track(e, tflags, True)
        _rewrite(f, 30, 36, e.vip, e.vport, e.rip, e.rport, e.proto, self.partial)
        memcpy(f, r.mac, 6)
        memcpy(f + 6, self.local_mac, 6)
        e.last = now
        e.pkts_fwd += 1
        e.bytes_fwd += n
        return C_NAT_FWD

    cdef int _nat_rev(self, uint8_t *f, uint32_t n, Flow *e, uint8_t tflags, int64_t now) noexcept nogil:
        if not self.has_gw:
            return C_DROP_NO_NEIGH
        if f[22] <= 1:
            return C_DROP_TTL
        if e.proto == PROTO_TCP:
            _track(e, tflags, False)
        _rewrite(f, 26, 34, e.rip, e.rport, e.vip, e.vport, e.proto, self.partial)
        memcpy(f, self.gw_mac, 6)
        memcpy(f + 6, self.local_mac, 6)
        e.last = now
        e.pkts_rev += 1
        e.bytes_rev += n
        return C_NAT_REV

    cdef int _dsr_fwd(self, uint8_t *f, uint32_t n, Flow *e, uint8_t tflags, int64_t now) noexcept nogil:
        cdef Real *r = &self.reals[e.real]
        if not r.has_mac:
            return C_DROP_NO_NEIGH
        if e.proto == PROTO_TCP:
            _track(e, tflags, True)
        memcpy(f, r.mac, 6)
        memcpy(f + 6, self.local_mac, 6)
        e.last = now
        e.pkts_fwd += 1
        e.bytes_fwd += n
        return C_DSR_FWD


include "xmit_tunnel.pxi"
