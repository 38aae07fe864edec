"""What this kernel's TAP accepts: vnet header sizes and offload flags, including UDP-tunnel
GSO (what the tunnel mode would need to write a superframe in VXLAN once).

    ip netns add P && ip netns exec P python3 -m tools.tap_probe; ip netns del P

Run it in a namespace of your own: it creates a TAP device there and closes it at once.
Prints one line per probe; changes nothing that outlives it.
"""
import fcntl
import os
import struct

TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ = 0x400454CA, 0x400454D0, 0x400454D8
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4 = 0x01, 0x02
TUN_F_UDP_TUNNEL_GSO, TUN_F_UDP_TUNNEL_GSO_CSUM = 0x080, 0x100     # linux/if_tun.h (newer)


def main():
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"twtapprobe",
                                               IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        for size in (24, 12, 10):
            try:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", size))
                print("vnet header size %d: accepted" % size)
                break
            except OSError as e:
                print("vnet header size %d: %s" % (size, e))
        base = TUN_F_CSUM | TUN_F_TSO4
        for name, flags in (("csum+tso4", base), ("+udp_tunnel_gso", base | TUN_F_UDP_TUNNEL_GSO),
                            ("+udp_tunnel_gso_csum", base | TUN_F_UDP_TUNNEL_GSO
                             | TUN_F_UDP_TUNNEL_GSO_CSUM)):
            try:
                fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
                print("offload %s (%#x): accepted" % (name, flags))
            except OSError as e:
                print("offload %s (%#x): %s" % (name, flags, e))
    finally:
        os.close(fd)


if __name__ == "__main__":
    main()
