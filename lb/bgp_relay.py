"""ExaBGP's API process for lbd (lb/announce.py): `python3 bgp_relay.py SOCKET`.

ExaBGP runs this with its stdin and stdout as pipes; it connects to lbd's unix socket and
copies lines both ways: lbd's commands to stdout (ExaBGP reads them), ExaBGP's messages
(stdin) to lbd. Standard library only, run by path (not as lb.*), so it starts fast.

Invariants: it exits as soon as either side closes (lbd gone: ExaBGP sees its API process
exit; ExaBGP gone: stdin ends), and it never blocks one direction on the other.
"""
import os
import select
import socket
import sys


def main(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError as e:
        print("bgp_relay: cannot connect to %s: %s" % (path, e), file=sys.stderr)
        return 1
    inp, out = sys.stdin.fileno(), sys.stdout.fileno()
    while True:
        ready, _, _ = select.select([inp, s], [], [])
        if s in ready:
            data = s.recv(65536)
            if not data:
                return 0
            while data:
                data = data[os.write(out, data):]
        if inp in ready:
            data = os.read(inp, 65536)
            if not data:
                return 0
            s.sendall(data)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: bgp_relay.py SOCKET", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
