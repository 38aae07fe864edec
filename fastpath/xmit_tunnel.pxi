# tunnel: the client's frame in VXLAN to the backend (modes/tunnel.py says when it is used).
#
# Invariants:
# - One frame in, one frame out, rewritten in place: the row grows by VXLAN_OVERHEAD bytes (a
#   frame whose row has no room is dropped, counted); the inner frame keeps its IP header,
#   L4 header and payload byte for byte, only its Ethernet addresses change.
# - A partial inner checksum (vnet NEEDS_CSUM) stays partial: its csum_start moves by the
#   bytes put in front of it, and the vnet header is kept (keep_vnet), so the kernel completes
#   it on the way out; everything the LB writes (outer IP) carries a full checksum; the outer
#   UDP checksum is 0 (RFC 7348, IPv4).
# - A GSO superframe is punted (punt_tunnel_gso): it cannot leave as one frame here.
# - Too big for sv.mtu once encapsulated: DF -> ICMP fragmentation needed to the client
#   (tunnel_frag_needed, made in place, to the gateway), no DF -> drop_tunnel_too_big.
# The twin: fastpath/twin/xmit_tunnel.py, routine for routine.

cdef uint8_t TUNNEL_INNER_MAC[6]       # defs.VXLAN_INNER_MAC as bytes, filled once below


cdef void _fill_inner_mac() noexcept nogil:
    # in C, not through a Python int: the 48-bit enum constant must not pass as a C int
    cdef uint64_t mac = VXLAN_INNER_MAC
    cdef int k
    for k in range(6):
        TUNNEL_INNER_MAC[k] = (mac >> (40 - 8 * k)) & 0xFF


_fill_inner_mac()

cdef int tunnel_fwd(Engine self, uint8_t *f, uint32_t n, Flow *e, Service *sv, uint8_t tflags,
                    int64_t now) noexcept nogil:
    cdef uint32_t tot = rd16(f + 16)
    cdef uint32_t s = 0, k
    cdef uint16_t cs
    cdef uint64_t h
    if not self.has_gw:
        return C_DROP_NO_NEIGH
    if self.vnet != NULL and self.vnet[1] != 0:
        return C_PUNT_TUNNEL_GSO
    if tot + VXLAN_OVERHEAD > sv.mtu:
        if f[20] & 0x40:
            return tunnel_frag_needed(self, f, sv)
        return C_DROP_TUNNEL_TOO_BIG
    if 14 + tot + VXLAN_OVERHEAD > self.rowcap:
        return C_DROP_TUNNEL_NO_ROOM
    if e.proto == PROTO_TCP:
        _track(e, tflags, True)
    memmove(f + VXLAN_OVERHEAD, f, 14 + tot)
    memcpy(f + VXLAN_OVERHEAD, TUNNEL_INNER_MAC, 6)
    memcpy(f + VXLAN_OVERHEAD + 6, self.local_mac, 6)
    memcpy(f, self.gw_mac, 6)
    memcpy(f + 6, self.local_mac, 6)
    f[12] = 0x08
    f[13] = 0
    f[14] = 0x45
    f[15] = 0
    wr16(f + 16, 36 + 14 + tot)
    wr32(f + 18, 0)                     # id 0, no DF: the LB keeps within sv.mtu itself
    f[22] = 64
    f[23] = PROTO_UDP
    wr16(f + 24, 0)
    wr32(f + 26, self.local_ip)
    wr32(f + 30, e.rip)
    for k in range(14, 34, 2):
        s += rd16(f + k)
    wr16(f + 24, ~_fold(s) & 0xFFFF)
    h = e.hf ^ (e.hf >> 32)
    wr16(f + 34, VXLAN_SPORT_MIN + <uint16_t>(h & 0x3FFF))
    wr16(f + 36, VXLAN_PORT)
    wr16(f + 38, 16 + 14 + tot)
    wr16(f + 40, 0)
    wr32(f + 42, 0x08000000)            # flags: the VNI is valid
    wr32(f + 46, sv.vni << 8)
    if self.vnet != NULL and self.vnet[0] & VNET_F_NEEDS_CSUM:
        cs = self.vnet[6] | (<uint16_t>self.vnet[7] << 8)     # little-endian csum_start
        cs += VXLAN_OVERHEAD
        self.vnet[6] = cs & 0xFF
        self.vnet[7] = cs >> 8
        self.keep_vnet = True
    self.newlen = 14 + tot + VXLAN_OVERHEAD
    e.last = now
    e.pkts_fwd += 1
    e.bytes_fwd += n
    return C_TUNNEL_FWD


cdef int tunnel_frag_needed(Engine self, uint8_t *f, Service *sv) noexcept nogil:
    """ICMP destination unreachable, fragmentation needed (RFC 792/1191), to the client, made
    in place: the original IP header and 8 bytes after it, the MTU left after VXLAN."""
    cdef uint32_t client = rd32(f + 26)
    cdef uint32_t s = 0, k
    if not self.has_gw:
        return C_DROP_NO_NEIGH
    memmove(f + 42, f + 14, 28)
    memcpy(f, self.gw_mac, 6)
    memcpy(f + 6, self.local_mac, 6)
    f[14] = 0x45
    f[15] = 0
    wr16(f + 16, 56)
    wr32(f + 18, 0)
    f[22] = 64
    f[23] = PROTO_ICMP
    wr16(f + 24, 0)
    wr32(f + 26, self.local_ip)
    wr32(f + 30, client)
    for k in range(14, 34, 2):
        s += rd16(f + k)
    wr16(f + 24, ~_fold(s) & 0xFFFF)
    f[34] = 3
    f[35] = 4
    wr16(f + 36, 0)
    wr16(f + 38, 0)
    wr16(f + 40, sv.mtu - VXLAN_OVERHEAD)
    s = 0
    for k in range(34, 70, 2):
        s += rd16(f + k)
    wr16(f + 36, ~_fold(s) & 0xFFFF)
    self.newlen = 70
    return C_TUNNEL_FRAG_NEEDED
