"""ARP and ICMP for the balancer's own addresses: what Python does with punted frames.

The fast path punts ARP (punt_arp) and IPv4 addressed to the LB's own IP (punt_local). Those
are rare, so they are parsed here with struct, one frame at a time. Per punted frame exactly
one outcome counter is bumped:

    arp_requests_answered   ARP request for the LB address or a VIP: reply with the LB MAC
    arp_noted               other ARP from a wanted neighbor (its MAC is learned or
                            confirmed)
    icmp_echo_answered      ICMP echo request to the LB address: echo reply
    punt_dropped_<reason>   everything else (malformed, not for us, TCP/UDP to the LB...)

plus event counters: arp_learned (a wanted neighbor's MAC became known or changed) and
arp_requests_sent. Malformed input never raises.

Byte order: frames are network order on the wire; addresses cross the state API as host
ints (198.19.0.2 is 0xC6130002), MACs as 6-byte bytes.

Neighbor resolution: `due_requests(now_ms)` returns ARP requests for wanted neighbors
(state.wanted_neighbors()) — every RESOLVE_MS while unresolved, every REFRESH_MS once
resolved. Learning: any ARP request or reply whose sender IP is a wanted neighbor; the state
is told (state.learn_neighbor) when the MAC is new or changed, and again when an address
becomes wanted whose MAC we already know.
"""
import ipaddress
import logging
import struct

from fastpath.inet import checksum  # noqa: F401 (also used by the tests)

log = logging.getLogger("lb.neigh")

ETH_HDR = struct.Struct("!6s6sH")
ARP = struct.Struct("!HHBBH6s4s6s4s")   # htype ptype hlen plen op sha spa tha tpa
IPV4 = struct.Struct("!BBHHHBBH4s4s")    # vihl tos tot_len id frag ttl proto csum src dst
ICMP_HDR = struct.Struct("!BBH")
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ARP_REQUEST = 1
ARP_REPLY = 2
BROADCAST = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
ETH_MIN = 60          # minimum Ethernet frame without FCS: short frames are zero-padded
REPLY_TTL = 64
RESOLVE_MS = 1000
REFRESH_MS = 30000

OUTCOMES = ("arp_requests_answered", "arp_noted", "icmp_echo_answered")
DROP_REASONS = (
    "runt",              # shorter than an Ethernet header
    "ethertype",         # neither ARP nor IPv4 (the fast path should not punt these)
    "arp_truncated",     # shorter than an Ethernet/IPv4 ARP packet
    "arp_format",        # not Ethernet/IPv4 ARP (htype, ptype, hlen, plen) or bad opcode
    "arp_from_self",     # our own MAC as sender: an echo of our own request
    "arp_not_ours",      # request for an address that is neither the LB's nor a VIP's
    "arp_unwanted",      # reply from a host that is not a wanted neighbor
    "ip_truncated",      # shorter than an IPv4 header or its total length
    "ip_header",         # version not 4, IHL < 5
    "ip_csum",           # IPv4 header checksum wrong
    "ip_fragment",       # fragments are not reassembled
    "not_local",         # not addressed to the LB's own IP (e.g. a VIP with no service)
    "icmp_truncated",    # ICMP shorter than its header
    "icmp_csum",         # ICMP checksum wrong
    "icmp_type",         # ICMP other than echo request
    "tcp",               # TCP to the LB's own address: nothing listens there
    "udp",               # UDP to the LB's own address
    "proto",             # any other IP protocol
    "internal",          # a bug in this file (logged with its traceback)
)


def _ip_int(x):
    return int(ipaddress.IPv4Address(x))


def _mac_bytes(x):
    if isinstance(x, (bytes, bytearray)):
        if len(x) != 6:
            raise ValueError("MAC must be 6 bytes")
        return bytes(x)
    return bytes.fromhex(str(x).replace(":", "").replace("-", ""))


def _pad(frame):
    return frame + b"\x00" * (ETH_MIN - len(frame)) if len(frame) < ETH_MIN else frame


def arp_frame(op, src_mac, sha, spa, tha, tpa, dst_mac):
    """An Ethernet/IPv4 ARP frame (ips as host ints), padded to 60 bytes."""
    return _pad(ETH_HDR.pack(dst_mac, src_mac, ETH_P_ARP)
                + ARP.pack(1, ETH_P_IP, 6, 4, op, sha, struct.pack("!I", spa), tha,
                           struct.pack("!I", tpa)))


class Neigh:
    """Python's answer to punted frames for one balancer address/MAC and a LBState.

    state must offer vip_addresses() -> iterable of IPv4 (int or str), wanted_neighbors()
    -> iterable of IPv4 (or a dict keyed by them), learn_neighbor(ip_int, mac_bytes)."""

    def __init__(self, state, address, mac):
        self.state = state
        self.ip = _ip_int(address)
        self.ip_b = struct.pack("!I", self.ip)
        self.mac = _mac_bytes(mac)
        self.table = {}          # ip -> mac, every wanted neighbor we learned
        self._told = set()       # ips whose current table MAC the state has been given
        self._last_req = {}      # ip -> now_ms of the last request sent
        self._ip_id = 0
        # a cluster's dead members' data addresses this lbd answers ARP for (lb/daemon.py
        # adopt: the backends' replies to them reach us), and the announcements (gratuitous
        # ARP) due: ours at start (reclaiming it from an adopter), each adopted one once
        self.adopted = set()
        self._announce = [self.ip]
        self._c = {k: 0 for k in ("punted", "arp_learned", "arp_requests_sent",
                                  "arp_announced") + OUTCOMES}
        self._c.update({"punt_dropped_" + r: 0 for r in DROP_REASONS})

    # --- state access ------------------------------------------------------------------
    def _wanted(self):
        try:
            return {_ip_int(a) for a in self.state.wanted_neighbors()}
        except Exception:
            log.exception("wanted_neighbors() failed")
            return set()

    def _ours(self, ip):
        if ip == self.ip or ip in self.adopted:
            return True
        try:
            return ip in {_ip_int(a) for a in self.state.vip_addresses()}
        except Exception:
            log.exception("vip_addresses() failed")
            return False

    def _tell(self, ip, mac):
        try:
            self.state.learn_neighbor(ip, mac)
            self._told.add(ip)
        except Exception:
            log.exception("learn_neighbor(%s) failed", ipaddress.IPv4Address(ip))

    # --- punted frames -----------------------------------------------------------------
    def handle(self, frame):
        """Frames to send in answer to one punted frame (possibly none). Never raises."""
        self._c["punted"] += 1
        try:
            out, outcome = self._handle(bytes(frame))
        except Exception:   # a bug here must not take the daemon down; count it loudly
            log.exception("punted frame handling failed")
            out, outcome = [], "punt_dropped_internal"
        self._c[outcome] = self._c.get(outcome, 0) + 1
        return out

    def _handle(self, f):
        if len(f) < ETH_HDR.size:
            return [], "punt_dropped_runt"
        dst, src, etype = ETH_HDR.unpack_from(f)
        if etype == ETH_P_ARP:
            return self._arp(f, src)
        if etype == ETH_P_IP:
            return self._ipv4(f, src)
        return [], "punt_dropped_ethertype"

    def _arp(self, f, eth_src):
        if len(f) < ETH_HDR.size + ARP.size:
            return [], "punt_dropped_arp_truncated"
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = ARP.unpack_from(f, ETH_HDR.size)
        if htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4 or op not in (1, 2):
            return [], "punt_dropped_arp_format"
        if sha == self.mac:
            return [], "punt_dropped_arp_from_self"
        spa_i = struct.unpack("!I", spa)[0]
        tpa_i = struct.unpack("!I", tpa)[0]
        # Learn from requests and replies alike (a request carries the sender's binding too);
        # 0.0.0.0 senders are probes and broadcast/multicast MACs are never a host's.
        wanted = bool(spa_i) and not sha[0] & 1 and sha != ZERO_MAC and spa_i in self._wanted()
        if wanted and (self.table.get(spa_i) != sha or spa_i not in self._told):
            self.table[spa_i] = sha
            self._c["arp_learned"] += 1
            log.info("neighbor %s is at %s", ipaddress.IPv4Address(spa_i), sha.hex(":"))
            self._tell(spa_i, sha)
        if op == ARP_REQUEST and spa_i != tpa_i and self._ours(tpa_i):
            # spa == tpa is a gratuitous ARP / announcement: nothing to answer
            reply = arp_frame(ARP_REPLY, self.mac, self.mac, tpa_i, sha, spa_i, eth_src)
            return [reply], "arp_requests_answered"
        if wanted:
            return [], "arp_noted"
        if op == ARP_REQUEST:
            return [], "punt_dropped_arp_not_ours"
        return [], "punt_dropped_arp_unwanted"

    def _ipv4(self, f, eth_src):
        off = ETH_HDR.size
        if len(f) < off + IPV4.size:
            return [], "punt_dropped_ip_truncated"
        vihl, tos, tot_len, ident, frag, ttl, proto, csum, src, dst = IPV4.unpack_from(f, off)
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < 20:
            return [], "punt_dropped_ip_header"
        if tot_len < ihl or len(f) < off + tot_len:
            return [], "punt_dropped_ip_truncated"
        if checksum(f[off:off + ihl]) != 0:
            return [], "punt_dropped_ip_csum"
        if frag & 0x3FFF:          # MF or a fragment offset
            return [], "punt_dropped_ip_fragment"
        if dst != self.ip_b:
            return [], "punt_dropped_not_local"
        if proto == 6:
            return [], "punt_dropped_tcp"
        if proto == 17:
            return [], "punt_dropped_udp"
        if proto != 1:
            return [], "punt_dropped_proto"
        icmp = f[off + ihl:off + tot_len]      # without Ethernet padding
        if len(icmp) < 8:
            return [], "punt_dropped_icmp_truncated"
        if checksum(icmp) != 0:
            return [], "punt_dropped_icmp_csum"
        itype, code, _ = ICMP_HDR.unpack_from(icmp)
        if itype != 8 or code != 0:
            return [], "punt_dropped_icmp_type"
        body = bytes([0, 0, 0, 0]) + icmp[4:]           # type 0, code 0, id/seq/data kept
        body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        hdr = IPV4.pack(0x45, tos, 20 + len(body), self._ip_id, 0x4000, REPLY_TTL, 1, 0,
                        dst, src)
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        reply = ETH_HDR.pack(eth_src, self.mac, ETH_P_IP) + hdr + body
        return [_pad(reply)], "icmp_echo_answered"

    # --- a cluster member's address, while it is dead ------------------------------------
    def adopt(self, ips):
        """Answer ARP for exactly these other addresses (host ints) from now on; each newly
        adopted one is announced (gratuitous ARP) at the next due_requests."""
        ips = {_ip_int(a) for a in ips} - {self.ip}
        for ip in sorted(ips - self.adopted):
            log.warning("answering ARP for %s (a cluster member that is gone)",
                        ipaddress.IPv4Address(ip))
            self._announce.append(ip)
        for ip in sorted(self.adopted - ips):
            log.info("no longer answering ARP for %s (its member is back)",
                     ipaddress.IPv4Address(ip))
        self.adopted = ips

    # --- resolution --------------------------------------------------------------------
    def request(self, ip):
        """A broadcast ARP request for `ip` (host int or string) from the LB address."""
        ip = _ip_int(ip)
        return arp_frame(ARP_REQUEST, self.mac, self.mac, self.ip, ZERO_MAC, ip, BROADCAST)

    def due_requests(self, now_ms):
        """ARP requests due at now_ms: every RESOLVE_MS for an unresolved wanted neighbor,
        every REFRESH_MS for a resolved one. Also tells the state the MACs of addresses that
        became wanted again while we still knew them."""
        wanted = self._wanted()
        for ip in list(self._told):
            if ip not in wanted:
                self._told.discard(ip)       # state forgot it; tell again if it comes back
        for ip in list(self._last_req):
            if ip not in wanted:
                del self._last_req[ip]
        out = [arp_frame(ARP_REQUEST, self.mac, self.mac, ip, ZERO_MAC, ip, BROADCAST)
               for ip in self._announce if ip == self.ip or ip in self.adopted]
        n_announced = len(out)
        self._c["arp_announced"] += n_announced
        self._announce = []
        for ip in sorted(wanted):
            mac = self.table.get(ip)
            if mac is not None and ip not in self._told:
                self._tell(ip, mac)
            last = self._last_req.get(ip)
            period = REFRESH_MS if mac is not None else RESOLVE_MS
            if last is None or now_ms - last >= period:
                self._last_req[ip] = now_ms
                out.append(self.request(ip))
        self._c["arp_requests_sent"] += len(out) - n_announced
        return out

    def handover(self):
        """What the next lbd's Neigh continues from (take): the learnt table, what the state
        was told, when each was last asked, the IP id, the counters."""
        return {"table": dict(self.table), "told": set(self._told), "adopted": set(self.adopted),
                "last_req": dict(self._last_req), "ip_id": self._ip_id, "c": dict(self._c)}

    def take(self, d):
        self.table, self._told, self._last_req = d["table"], d["told"], d["last_req"]
        self._ip_id = d["ip_id"]
        self.adopted = set(d.get("adopted", ()))
        self._announce = []           # a takeover: the address never moved
        for k, v in d["c"].items():
            if k in self._c:
                self._c[k] = v

    def neighbors(self):
        """{dotted ip: "aa:bb:.."} of what was learned."""
        return {str(ipaddress.IPv4Address(ip)): mac.hex(":") for ip, mac in self.table.items()}

    def counters(self):
        return dict(self._c)
