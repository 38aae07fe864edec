"""The lab's UDP echo (tools/echo_server.py) without a lab: where its answers come from, read
from an IP_PKTINFO message, and what it answers. Whether a dsr or tunnel backend really
answers from the VIP is tests/integration/test_udp.py's (it needs a VIP on lo); here the
server runs in this process on 127.0.0.1, and only 127.0.0.1 is used.
"""
import asyncio
import socket

import pytest

from tools.echo_server import IN_PKTINFO, IP_PKTINFO, EchoUDP, local_address


def test_ip_pktinfo_is_linux_s():
    assert IP_PKTINFO == 8 and IN_PKTINFO.size == 12


def test_the_answer_comes_from_ipi_spec_dst():
    vip, iface_addr = socket.inet_aton("198.19.100.7"), socket.inet_aton("198.19.0.11")
    anc = [(socket.SOL_SOCKET, 99, b"xx"),
           (socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO.pack(3, vip, iface_addr))]
    assert local_address(anc) == vip
    assert local_address([]) is None
    assert local_address([(socket.IPPROTO_IP, IP_PKTINFO, b"\0" * 8)]) is None   # too short


@pytest.mark.parametrize("name, sent, answer", [
    ("b1", b"?id", b"b1\n"),
    ("b1", b"?id\n", b"?id\n"),          # only exactly "?id" asks
    ("b1", b"hello", b"hello"),
    (None, b"?id", b"?id"),              # no name: echoed like any datagram
])
def test_what_it_answers(name, sent, answer):
    async def run():
        loop = asyncio.get_running_loop()
        server = EchoUDP(loop, "127.0.0.1", 0, name)
        port = server.sock.getsockname()[1]
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        try:
            client.sendto(sent, ("127.0.0.1", port))
            data, src = await asyncio.wait_for(loop.sock_recvfrom(client, 65535), 5)
        finally:
            client.close()
            server.close()
        return data, src, port
    data, src, port = asyncio.run(run())
    assert data == answer and src == ("127.0.0.1", port)

