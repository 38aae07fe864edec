"""The lab backends' echo service: TCP and UDP on one port, bytes in -> the same bytes out.

Invariants:
- TCP: every byte received is written back in order; nothing is added or dropped.
- Half-close: when the client shuts down its write side (FIN), the server flushes what it
  still owes and then closes (its own FIN), so `send all; shutdown(SHUT_WR); read to EOF`
  returns exactly what was sent.
- Back-pressure: a client that sends without reading stops being read (the server pauses
  reading while its write buffer is above the high-water mark), memory stays bounded.
- UDP: each datagram is sent back to its source unchanged.

Run: python3 -m tools.echo_server [--host 0.0.0.0] [--port 9000]; SIGTERM/SIGINT stop it.
"""
import argparse
import asyncio
import signal
import socket


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


class EchoUDP(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def serve(host, port):
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    server = await loop.create_server(EchoTCP, host, port, reuse_address=True, backlog=4096)
    udp, _ = await loop.create_datagram_endpoint(EchoUDP, local_addr=(host, port))
    try:
        await stop
    finally:
        udp.close()
        server.close()


def main(argv=None):
    p = argparse.ArgumentParser(description="TCP+UDP echo server (lab backends)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=9000)
    a = p.parse_args(argv)
    asyncio.run(serve(a.host, a.port))


if __name__ == "__main__":
    main()
