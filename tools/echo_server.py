"""The lab backends' echo service: TCP and UDP on one port, bytes in -> the same bytes out.

Invariants:
- TCP: every byte received is written back in order; nothing is added or dropped.
- Half-close: when the client shuts down its write side (FIN), the server flushes what it
  still owes and then closes (its own FIN), so `send all; shutdown(SHUT_WR); read to EOF`
  returns exactly what was sent.
- Back-pressure: a client that sends without reading stops being read (the server pauses
  reading while its write buffer is above the high-water mark), memory stays bounded.
- UDP: each datagram is sent back to its source unchanged, from the address it was sent to
  (IP_PKTINFO, as a DNS server does): a dsr or tunnel backend, which holds the VIP on lo,
  answers from the VIP, and a client that sent to the VIP accepts the answer; a nat backend
  answers from its real address, as before. Routing stays the kernel's: the reply's
  interface index is 0, only its source address is set.
- UDP "?id" (exactly those 3 bytes), when --name is given, is answered with the name and a
  newline (b"b1\n"), as the lab's nginx answers GET /id: a UDP client learns which backend
  holds its flow. Any other datagram, "?id" too without --name, is echoed.

Run: python3 -m tools.echo_server [--host 0.0.0.0] [--port 9000] [--name b1];
SIGTERM/SIGINT stop it.
"""
import argparse
import asyncio
import signal
import socket
import struct
import sys


class EchoTCP(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        # False: asyncio closes the transport once the write buffer is flushed (our FIN
        # follows the last echoed byte).
        return False

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()


ID_QUERY = b"?id"
IN_PKTINFO = struct.Struct("=i4s4s")   # struct in_pktinfo: ipi_ifindex, ipi_spec_dst, ipi_addr
# Linux's IP_PKTINFO (<linux/in.h>); Python's socket module names it only from 3.12 on
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
UDP_MAX = 65535
UDP_BURST = 256      # datagrams per wake-up at most, so TCP connections get their turn


def local_address(ancdata):
    """The address (4 bytes) to answer a datagram from, out of its IP_PKTINFO control
    message, or None when there is none. ipi_spec_dst: for a unicast datagram the kernel puts
    there the destination of the IP header (a VIP on lo too); for a broadcast one, the
    receiving interface's address, which is what an answer must come from."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO \
                and len(data) >= IN_PKTINFO.size:
            return IN_PKTINFO.unpack_from(data)[1]
    return None


class EchoUDP:
    """UDP echo on a plain non-blocking socket read by the event loop: asyncio's datagram
    transport has neither recvmsg nor sendmsg, and the ancillary data is the point."""

    def __init__(self, loop, host, port, name=None):
        self.loop = loop
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        self.sock.bind((host, port))
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self.readable)

    def answer(self, data):
        return (self.name.encode() + b"\n") if self.name and data == ID_QUERY else data

    def readable(self):
        for _ in range(UDP_BURST):
            try:
                data, anc, _flags, addr = self.sock.recvmsg(UDP_MAX,
                                                            socket.CMSG_SPACE(IN_PKTINFO.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # not an ICMP error about an earlier answer: an unconnected socket without
                # IP_RECVERR is never told of those; something else, said in the log
                print("echo: udp recvmsg: %r" % (e,), file=sys.stderr, flush=True)
                return
            src = local_address(anc)
            cmsg = ([(socket.IPPROTO_IP, IP_PKTINFO,
                      IN_PKTINFO.pack(0, src, b"\0\0\0\0"))] if src else [])
            try:
                self.sock.sendmsg([self.answer(data)], cmsg, 0, addr)
            except OSError:
                pass     # a full send buffer or an unroutable client: the client sees a loss

    def close(self):
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


async def serve(host, port, name=None):
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    server = await loop.create_server(EchoTCP, host, port, reuse_address=True, backlog=4096)
    udp = EchoUDP(loop, host, port, name)
    try:
        await stop
    finally:
        udp.close()
        server.close()


def main(argv=None):
    p = argparse.ArgumentParser(description="TCP+UDP echo server (lab backends)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--name", help='answer the UDP datagram "?id" with this name (the lab: the '
                   "node's name)")
    a = p.parse_args(argv)
    asyncio.run(serve(a.host, a.port, a.name))


if __name__ == "__main__":
    main()
