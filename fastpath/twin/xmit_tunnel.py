"""tunnel: the client's frame in VXLAN to the backend -- the twin of fastpath/xmit_tunnel.pxi,
routine for routine (its header states the invariants; modes/tunnel.py says when it is used).

The engine is the twin's Engine (fastpath/engine_py.py); f is the frame as a bytearray that
the routine may grow (the engine's _rowcap bounds it, as the batch row bounds the compiled
one); the vnet header is the engine's _vnet (a bytearray of the row's header, or None).
"""
from fastpath import defs
from fastpath.inet import checksum

C = defs.C
OVERHEAD = defs.VXLAN_OVERHEAD
INNER_MAC = defs.VXLAN_INNER_MAC.to_bytes(6, "big")


def tunnel_fwd(self, f, n, e, sv, tflags, now):
    tot = (f[16] << 8) | f[17]
    if self.gw_mac is None:
        return C["drop_no_neigh"]
    vnet = self._vnet
    if vnet is not None and vnet[1] != 0:
        return C["punt_tunnel_gso"]
    if tot + OVERHEAD > sv.mtu:
        if f[20] & 0x40:
            return tunnel_frag_needed(self, f, sv)
        return C["drop_tunnel_too_big"]
    if 14 + tot + OVERHEAD > self._rowcap:
        return C["drop_tunnel_no_room"]
    if e.proto == defs.PROTO_TCP:
        self._track(e, tflags, True)        # engine_py's _track (it imports this module)
    inner = INNER_MAC + bytes(self.local_mac) + bytes(f[12:14 + tot])
    ip = bytearray(20)
    ip[0] = 0x45
    ip[2:4] = (36 + 14 + tot).to_bytes(2, "big")
    ip[8] = 64
    ip[9] = defs.PROTO_UDP
    ip[12:16] = self.local_ip.to_bytes(4, "big")
    ip[16:20] = e.rip.to_bytes(4, "big")
    ip[10:12] = checksum(ip).to_bytes(2, "big")
    h = e.hf ^ (e.hf >> 32)
    udp = ((defs.VXLAN_SPORT_MIN + (h & 0x3FFF)).to_bytes(2, "big") + defs.VXLAN_PORT.to_bytes(2, "big")
           + (16 + 14 + tot).to_bytes(2, "big") + b"\0\0")
    vx = b"\x08\0\0\0" + ((sv.vni << 8) & 0xFFFFFFFF).to_bytes(4, "big")
    f[:] = bytes(self.gw_mac) + bytes(self.local_mac) + b"\x08\x00" + bytes(ip) + udp + vx + inner
    if vnet is not None and vnet[0] & defs.VNET_F_NEEDS_CSUM:
        cs = (vnet[6] | (vnet[7] << 8)) + OVERHEAD
        vnet[6], vnet[7] = cs & 0xFF, (cs >> 8) & 0xFF
        self._keep_vnet = True
    self._newlen = 14 + tot + OVERHEAD
    e.last = now
    e.pkts_fwd += 1
    e.bytes_fwd += n
    return C["tunnel_fwd"]


def tunnel_frag_needed(self, f, sv):
    client = bytes(f[26:30])
    if self.gw_mac is None:
        return C["drop_no_neigh"]
    quoted = bytes(f[14:42])
    ip = bytearray(20)
    ip[0] = 0x45
    ip[2:4] = (56).to_bytes(2, "big")
    ip[8] = 64
    ip[9] = defs.PROTO_ICMP
    ip[12:16] = self.local_ip.to_bytes(4, "big")
    ip[16:20] = client
    ip[10:12] = checksum(ip).to_bytes(2, "big")
    icmp = bytearray(b"\x03\x04\0\0\0\0" + (sv.mtu - OVERHEAD).to_bytes(2, "big") + quoted)
    icmp[2:4] = checksum(icmp).to_bytes(2, "big")
    out = bytes(self.gw_mac) + bytes(self.local_mac) + b"\x08\x00" + bytes(ip) + bytes(icmp)
    f[:len(out)] = out
    self._newlen = 70
    return C["tunnel_frag_needed"]
