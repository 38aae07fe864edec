# xmit_tunnel: the tunnel mode's per-packet routines (IPVS's ip_vs_tunnel_xmit, in VXLAN).
# Twin: twin/xmit_tunnel.py.
#
# When it is used: backends across layer 3 (behind a router) that hold the VIP on lo and
# answer the client directly; the LB sees the client side only, as with dsr, but needs no
# shared segment. modes/tunnel.py is the Python side (options, GSO superframes).
#
# Invariants:
# - One frame in, one frame out, rewritten in place: the row grows by VXLAN_OVERHEAD bytes (a
#   frame whose row has no room is dropped, counted); the inner frame keeps its IP header,
#   L4 header and payload byte for byte, only its Ethernet addresses change.
# - A partial inner checksum (vnet NEEDS_CSUM) stays partial: its csum_start moves by the
#   bytes put in front of it, and the vnet header is kept (keep_vnet), so the kernel completes
#   it on the way out; everything the LB writes (outer IP) carries a full checksum; the outer
#   UDP checksum is 0 (RFC 7348, IPv4).
# - A TCP superframe (vnet GSO) leaves whole when the header is the long one (vnet_tnl: a TAP
#   with TUNSETVNETHDRSZ 24): encapsulated like any frame, its header says UDP-tunnel GSO
#   (gso_type | UDP_TUNNEL_IPV4, the outer UDP and inner IP offsets, hdr_len up to the inner
#   TCP header) and its gso_size is lowered to what fits sv.mtu once encapsulated, so the
#   kernel cuts it into segments that fit (tunnel_gso_fwd). It must carry NEEDS_CSUM, and
#   its outer IP length must fit 16 bits.
# - Any other superframe is punted (punt_tunnel_gso). Its handler (modes/tunnel.py) has
#   tunnel_segment cut it here, in C, into rows of a batch that fit the MTU once
#   encapsulated (as the kernel's GSO would: IP id counted up, seq moved, FIN/PSH on the
#   last, CWR on the first only, full checksums), then processes them.
# - Too big for sv.mtu once encapsulated: DF -> ICMP fragmentation needed to the client
#   (tunnel_frag_needed, made in place, to the gateway); no DF (a fragment, a datagram whose
#   sender allows fragmenting) -> encapsulated in place and punted (punt_tunnel_frag), and
#   modes/tunnel.py cuts the outer packet into IP fragments (ip_fragment) as a router would;
#   with a partial inner checksum it cannot be cut: drop_tunnel_too_big.
# - No reverse path: a tunnel flow is never in the reverse index.

cdef uint8_t TUNNEL_INNER_MAC[6]       # defs.VXLAN_INNER_MAC as bytes, filled once below


cdef void tunnel_inner_mac() noexcept nogil:
    # in C, not through a Python int: the 48-bit enum constant must not pass as a C int
    cdef uint64_t mac = VXLAN_INNER_MAC
    cdef int k
    for k in range(6):
        TUNNEL_INNER_MAC[k] = (mac >> (40 - 8 * k)) & 0xFF


cdef inline bint tunnel_gso_whole(Engine self, uint8_t *f, uint32_t tot,
                                  Service *sv) noexcept nogil:
    """May this superframe leave whole, in UDP-tunnel GSO? (The kernel's own checks: a TCP
    type, a partial checksum; ours: the outer length fits, a segment fits sv.mtu.)"""
    return (self.vnet_tnl and (self.vnet[1] & ~VNET_GSO_ECN) == VNET_GSO_TCPV4 and f[14] == 0x45
            and self.vnet[0] & VNET_F_NEEDS_CSUM and f[23] == PROTO_TCP
            and 36 + 14 + tot <= 0xFFFF and 14 + tot + VXLAN_OVERHEAD <= self.rowcap
            and sv.mtu > <uint32_t>(VXLAN_OVERHEAD + 20 + (f[46] >> 4) * 4))


cdef inline void tunnel_gso_header(Engine self, uint8_t *f, Service *sv) noexcept nogil:
    """The long vnet header of a superframe encapsulated by tunnel_fwd (csum_start moved
    already): UDP-tunnel GSO, segments no bigger than sv.mtu allows."""
    cdef uint8_t *v = self.vnet
    cdef uint32_t doff = (f[VXLAN_OVERHEAD + 46] >> 4) * 4
    cdef uint32_t mss = sv.mtu - VXLAN_OVERHEAD - 20 - doff
    cdef uint32_t gso = v[4] | (<uint32_t>v[5] << 8)
    cdef uint32_t hl = 14 + VXLAN_OVERHEAD + 20 + doff
    if gso == 0 or gso > mss:
        gso = mss
    v[1] |= VNET_GSO_UDP_TUNNEL_IPV4
    v[2] = hl & 0xFF
    v[3] = hl >> 8
    v[4] = gso & 0xFF
    v[5] = gso >> 8
    v[20] = 34                          # outer_th_offset: the outer UDP header
    v[21] = 0
    v[22] = 14 + VXLAN_OVERHEAD         # inner_nh_offset: the inner IP header
    v[23] = 0


cdef inline void tunnel_encap(Engine self, uint8_t *f, uint32_t tot, uint32_t rip, uint64_t hf,
                              uint32_t vni, bint big) noexcept nogil:
    """The addressed inner frame f[:14 + tot] moved behind outer Ethernet (to the gateway),
    IP (us -> rip), UDP (source port from the flow hash hf) and VXLAN (vni) headers. big: the
    packet will be cut into fragments, so its IP id is the engine's next (outer_id), which
    tells its fragments from another packet's at the backend."""
    cdef uint64_t h = hf ^ (hf >> 32)
    tw_move_up(f, VXLAN_OVERHEAD, 14 + tot)    # (14 + tot >= 34: process_frame checked)
    memcpy(f, self.gw_mac, 6)
    memcpy(f + 6, self.local_mac, 6)
    if big:
        self.outer_id += 1
    outer_ip(self, f, 36 + 14 + tot, PROTO_UDP, rip, self.outer_id if big else 0)
    wr16(f + 34, VXLAN_SPORT_MIN + <uint16_t>(h & 0x3FFF))
    wr16(f + 36, VXLAN_PORT)
    wr16(f + 38, 16 + 14 + tot)
    wr16(f + 40, 0)
    wr32(f + 42, 0x08000000)            # flags: the VNI is valid
    wr32(f + 46, vni << 8)


cdef inline int tunnel_as_is(Engine self, uint8_t *f, uint32_t tot, uint32_t rip, uint64_t hf,
                             uint32_t vni, bint big) noexcept nogil:
    """A frame whose flow's TCP state need not see it (an ICMP error, a later fragment) in
    VXLAN to rip, its own Ethernet addressed to the VXLAN device: 0, or the counter of why
    not (the row has no room)."""
    if 14 + tot + VXLAN_OVERHEAD > self.rowcap:
        return C_DROP_TUNNEL_NO_ROOM
    memcpy(f, TUNNEL_INNER_MAC, 6)
    memcpy(f + 6, self.local_mac, 6)
    tunnel_encap(self, f, tot, rip, hf, vni, big)
    self.newlen = 14 + tot + VXLAN_OVERHEAD
    return 0


cdef int tunnel_fwd(Engine self, uint8_t *f, uint32_t n, Flow *e, Service *sv, uint8_t tflags,
                    int64_t now) noexcept nogil:
    cdef uint32_t tot = rd16(f + 16)
    cdef uint16_t cs
    cdef int k
    cdef bint whole = False, big = False
    if not self.has_gw:
        return C_DROP_NO_NEIGH
    if self.vnet != NULL and self.vnet[1] != 0:
        if not tunnel_gso_whole(self, f, tot, sv):
            return C_PUNT_TUNNEL_GSO
        whole = True
    elif tot + VXLAN_OVERHEAD > sv.mtu:
        if f[20] & 0x40:
            return tunnel_frag_needed(self, f, sv)
        if self.partial:
            return C_DROP_TUNNEL_TOO_BIG  # (outer fragments cannot carry a partial checksum)
        big = True                        # encapsulated, then cut by modes/tunnel.py
    if 14 + tot + VXLAN_OVERHEAD > self.rowcap:
        return C_DROP_TUNNEL_NO_ROOM
    k = xmit_out(self, f, n, e, TUNNEL_INNER_MAC, False, True, tflags, now)
    if k != XMIT_CONT:
        return k
    tunnel_encap(self, f, tot, e.rip, e.hf, sv.vni, big)
    if self.vnet != NULL and self.vnet[0] & VNET_F_NEEDS_CSUM:
        cs = self.vnet[6] | (<uint16_t>self.vnet[7] << 8)     # little-endian csum_start
        cs += VXLAN_OVERHEAD
        self.vnet[6] = cs & 0xFF
        self.vnet[7] = cs >> 8
        self.keep_vnet = True
    self.newlen = 14 + tot + VXLAN_OVERHEAD
    if whole:
        tunnel_gso_header(self, f, sv)
        return C_TUNNEL_GSO_FWD
    if big:
        return C_PUNT_TUNNEL_FRAG
    return C_TUNNEL_FWD


cdef int tunnel_frag_needed(Engine self, uint8_t *f, Service *sv) noexcept nogil:
    """Too big for the path once encapsulated, DF set: ICMP fragmentation needed to the
    client, with the MTU left after VXLAN (icmp.pxi's icmp_frag_needed)."""
    if not self.has_gw:
        return C_DROP_NO_NEIGH
    icmp_frag_needed(self, f, sv.mtu - VXLAN_OVERHEAD)
    return C_TUNNEL_FRAG_NEEDED


cdef int tunnel_icmp(Engine self, uint8_t *f, uint32_t n, Icmp *q, Flow *e, Service *sv,
                     int32_t real, bint fwd) noexcept nogil:
    """An ICMP error from the client side about a tunnel flow (icmp.pxi): in VXLAN to the
    backend, untouched inside, as the flow's frames go (e NULL: the `real` the hash chose)."""
    cdef uint32_t tot = q.end - 14
    if not self.has_gw:
        return C_DROP_NO_NEIGH
    if tot + VXLAN_OVERHEAD > sv.mtu:
        return C_DROP_TUNNEL_TOO_BIG      # (no error is answered with an error)
    return (tunnel_as_is(self, f, tot, self.reals[real].ip if e == NULL else e.rip, q.h,
                         sv.vni, False) or C_TUNNEL_ICMP_FWD)


cdef int tunnel_frag(Engine self, uint8_t *f, uint32_t n, Flow *e, bint fwd,
                     int64_t now) noexcept nogil:
    """A later fragment of a tunnel flow (frag.pxi): in VXLAN to the backend, as the first
    went; one that does not fit sv.mtu once encapsulated is encapsulated and punted, to be cut
    into outer fragments (punt_tunnel_frag)."""
    cdef uint32_t tot = rd16(f + 16)
    cdef Service *sv = service_find(self, e.vip, e.vport, e.proto)
    cdef bint big
    cdef int k
    if not self.has_gw:
        return C_DROP_NO_NEIGH
    if sv == NULL or sv.mode != MODE_TUNNEL:
        return C_DROP_MODE                # the VIP changed mode or went: sv.vni is unknown
    big = tot + VXLAN_OVERHEAD > sv.mtu
    k = tunnel_as_is(self, f, tot, e.rip, e.hf, sv.vni, big)
    if k:
        return k
    flow_account(self, e, n, True, now)
    return C_PUNT_TUNNEL_FRAG if big else C_TUNNEL_FRAG_FWD


# ---- the API's body (engine.pxi) ----------------------------------------------------------
cdef object api_tunnel_mss(Engine self, frame):
    cdef const uint8_t[::1] b = frame
    cdef uint32_t ihl, doff
    cdef Service *sv
    if b.shape[0] < 54 or b[12] != 8 or b[13] != 0 or b[23] != PROTO_TCP:
        return 0
    ihl = (b[14] & 15) * 4
    if ihl < 20 or 14 + ihl + 20 > <uint32_t>b.shape[0]:
        return 0
    doff = (b[14 + ihl + 12] >> 4) * 4
    sv = service_find(self, rd32(&b[30]), rd16(&b[14 + ihl + 2]), PROTO_TCP)
    if sv == NULL or sv.mode != MODE_TUNNEL or sv.mtu < VXLAN_OVERHEAD + ihl + doff + 1:
        return 0
    return sv.mtu - VXLAN_OVERHEAD - ihl - doff


cdef object api_tunnel_segment(Engine self, frame, batch, int first):
    cdef const uint8_t[::1] b = frame
    cdef uint8_t[:, ::1] buf = batch.buf
    cdef uint32_t[::1] lens = batch.lens
    cdef uint32_t mss = api_tunnel_mss(self, frame)
    cdef uint32_t L = b.shape[0], tot, doff, end, plen, total, hl, k, j, c, ident, seq, s, i
    cdef uint32_t stride = buf.shape[1]
    cdef uint32_t hdr = batch.hdr
    cdef uint8_t flags
    cdef uint8_t *r
    if first < 0:
        raise ValueError("first must be >= 0, got %d" % first)
    if mss == 0 or (b[14] & 15) != 5:
        return (0, 0)
    tot = rd16(&b[16])
    doff = (b[46] >> 4) * 4
    # a superframe's IP total length may be 0 or wrong (the kernel does not keep it): the
    # frame's own length is what counts
    end = L
    if tot and 14 + tot <= L and 14 + tot >= 34 + doff:
        end = 14 + tot
    if doff < 20 or 34 + doff > end:
        return (0, 0)
    hl = 34 + doff
    plen = end - hl
    total = (plen + mss - 1) // mss if plen else 1
    if stride < hdr + hl + (mss if plen > mss else plen) + VXLAN_OVERHEAD:
        raise ValueError("batch snap %d is too small for segments of %d bytes"
                         % (stride, hl + mss + VXLAN_OVERHEAD))
    ident = rd16(&b[18])
    seq = rd32(&b[38])
    flags = b[47]
    j = 0
    with nogil:
        k = first
        while k < total and j < <uint32_t>buf.shape[0]:
            c = plen - k * mss if plen - k * mss < mss else mss
            r = &buf[j, 0]
            memset(r, 0, hdr)                     # a zero vnet header: no GSO, checksums full
            r += hdr
            memcpy(r, &b[0], hl)
            memcpy(r + hl, &b[hl + k * mss], c)
            wr16(r + 16, 20 + doff + c)
            wr16(r + 18, (ident + k) & 0xFFFF)
            wr16(r + 24, 0)
            s = 0
            for i in range(14, 34, 2):
                s += rd16(r + i)
            wr16(r + 24, ~fold(s) & 0xFFFF)
            wr32(r + 38, seq + k * mss)
            r[47] = flags
            if k != total - 1:
                r[47] &= ~(TH_FIN | TH_PSH)       # FIN and PSH only on the last segment
            if k:
                r[47] &= ~0x80                    # CWR only on the first
            wr16(r + 50, tcp_checksum(r, 34, doff + c))
            lens[j] = hdr + hl + c
            j += 1
            k += 1
    batch.n = j
    return (j, total)


cdef object api_tunnel_frag_mtu(Engine self, frame):
    cdef const uint8_t[::1] b = frame
    cdef const uint8_t *f
    cdef Service *sv
    cdef Frag *g
    cdef Flow *e
    if (b.shape[0] < VXLAN_OVERHEAD + 34 + 4 or b[12] != 8 or b[13] != 0 or b[23] != PROTO_UDP
            or rd16(&b[36]) != VXLAN_PORT or b[VXLAN_OVERHEAD + 14] != 0x45):
        return 0
    f = &b[VXLAN_OVERHEAD]
    if rd16(f + 20) & 0x1FFF == 0:
        sv = service_find(self, rd32(f + 30), rd16(f + 36), f[23])
    else:
        g = frag_entry(self, rd32(f + 26), rd32(f + 30), rd16(f + 18), f[23])
        if g == NULL:
            return 0
        e = &self.fl[g.idx]
        sv = service_find(self, e.vip, e.vport, e.proto)
    if sv == NULL or sv.mode != MODE_TUNNEL:
        return 0
    return sv.mtu


# ---- the mode's row of XMIT (types.pxi) ---------------------------------------------------
tunnel_inner_mac()
XMIT[MODE_TUNNEL].new_flow = new_flow_default
XMIT[MODE_TUNNEL].fwd = tunnel_fwd
XMIT[MODE_TUNNEL].rev = NULL
XMIT[MODE_TUNNEL].icmp = tunnel_icmp
XMIT[MODE_TUNNEL].frag = tunnel_frag
XMIT[MODE_TUNNEL].fwd_lines = 1
