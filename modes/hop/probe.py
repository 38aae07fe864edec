"""hop's health precheck: does the backend have the shim? (lb/health.py runs it before the
VIP-path probe of every hop backend; a backend without the shim is down.)

A backend without the shim answers a hop connection with a SYN-ACK straight to the client,
which never asked it for one: the connection never opens. An ordinary probe (a kernel
socket to the VIP) cannot tell: the backend answers it with or without a shim. This probe
uses what the shim does and a bare stack does not:

  SYN to VIP:port, hop's mark [253, 4, ExID], Ethernet from the health interface's MAC to
  the backend's MAC, IP source = the LB's data-plane address (on no kernel interface)
    shim     -> flow recorded PENDING with the frame's source MAC; its SYN-ACK goes to that
                MAC: back to the health interface, where this probe reads it   => up
    no shim  -> the SYN-ACK is routed to the LB's data-plane address: ARP, lbd's data plane,
                never the health interface                                      => down
  then a RST (seq ISN + 1) to the backend, which ends its half-open connection (the shim
  lets a RST pass and deletes its entry).

It needs an AF_PACKET socket on the health interface (lbd runs as root) and the backend's
MAC (the data plane's ARP table: the same Ethernet segment).

Invariants:
- One socket per probe, closed on every path; the probe is bounded by its timeout and never
  raises but for cancellation.
- Only a SYN-ACK from VIP:port to our address and port that acknowledges our ISN counts.
"""
import asyncio
import random
import socket
import struct

from fastpath import defs
from fastpath.twin.inet import tcp_frame

ETH_P_IP = 0x0800
SPORTS = (40000, 60999)          # our probe's source port, at random


def mark_option():
    """hop's mark in a SYN, as the fast path writes it: [253, 4, ExID] (4 bytes)."""
    return bytes([defs.HOP_OPT_KIND, defs.HOP_MARK_LEN]) + struct.pack("!H", defs.HOP_EXID)


def syn_frame(dmac, smac, src, vip, port, sport, isn):
    """Our marked SYN (MSS 1460 and the mark: 8 bytes of options)."""
    opts = struct.pack("!BBH", 2, 4, 1460) + mark_option()
    return tcp_frame(dmac, smac, src, vip, sport, port, isn, 0, defs.TH_SYN, 65535, opts)


def rst_frame(dmac, smac, src, vip, port, sport, isn):
    return tcp_frame(dmac, smac, src, vip, sport, port, isn + 1, 0, defs.TH_RST, 0)


def is_answer(frame, src, vip, port, sport, isn):
    """True when frame is the SYN-ACK of our SYN: IPv4/TCP from vip:port to src:sport,
    SYN and ACK set, ack = isn + 1. Anything shorter or else: False."""
    if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[14] >> 4 != 4:
        return False
    ihl = (frame[14] & 0x0F) * 4
    t = 14 + ihl
    if ihl < 20 or frame[23] != 6 or len(frame) < t + 20:
        return False
    s, d = struct.unpack_from("!II", frame, 26)
    sp, dp, _, ack = struct.unpack_from("!HHII", frame, t)
    flags = frame[t + 13]
    return ((s, d, sp, dp) == (vip, src, port, sport)
            and flags & (defs.TH_SYN | defs.TH_ACK) == defs.TH_SYN | defs.TH_ACK
            and ack == (isn + 1) & 0xFFFFFFFF)


async def shim_probe(iface, src, backend_mac, vip, port, timeout):
    """(ok, detail): whether the backend at backend_mac answers a marked SYN to vip:port
    through its shim (module docstring). src, vip: host-order ints; backend_mac: 6 bytes or
    None (not learnt yet)."""
    if backend_mac is None:
        return False, "hop shim check: backend MAC not learnt yet"
    loop = asyncio.get_running_loop()
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    except OSError as e:
        return False, "hop shim check: no packet socket (%s)" % e.strerror
    try:
        sock.setblocking(False)
        try:
            sock.bind((iface, ETH_P_IP))
        except OSError as e:
            return False, "hop shim check: %s: %s" % (iface, e.strerror)
        mine = sock.getsockname()[4][:6]
        sport = random.randint(*SPORTS)
        isn = random.getrandbits(32)
        try:
            await loop.sock_sendall(sock, bytes(syn_frame(backend_mac, mine, src, vip, port,
                                                          sport, isn)))
            async with asyncio.timeout(timeout):
                while True:
                    frame = await loop.sock_recv(sock, 2048)
                    if is_answer(frame, src, vip, port, sport, isn):
                        break
        except TimeoutError:
            return False, ("no hop shim: the SYN-ACK of a marked SYN did not come back "
                           "through it within %.1f s" % timeout)
        except OSError as e:
            return False, "hop shim check: %s" % e.strerror
        finally:
            try:
                sock.send(bytes(rst_frame(backend_mac, mine, src, vip, port, sport, isn)))
            except OSError:
                pass
        return True, "hop shim answers"
    finally:
        sock.close()
