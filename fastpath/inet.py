"""RFC 1071 Internet checksum for frames made in Python (ARP/ICMP replies, splice's own
segments): control-side, a handful per connection, never per forwarded packet."""
import struct


def checksum(data):
    """The checksum to store for `data` (host int): ~(ones'-complement sum of 16-bit words)."""
    data = bytes(data)
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
