"""threeway fast path: parsing, flow table, schedulers' per-packet side, transmit routines.

The compiled module (fastpath/_engine.pyx, fastpath/_io.pyx) is the one used. Its pure-Python
twin (the package twin/, and io_py.py) is chosen only by THREEWAY_PUREPYTHON=1; if the compiled module
cannot be imported without that variable, the import fails loudly (no silent fallback).

This package imports nothing from lb/, modes/ or tools/, and never touches sockets: it reads
and writes file descriptors it is given.
"""
import os
from collections import namedtuple

import numpy as np

from . import defs

if os.environ.get("THREEWAY_PUREPYTHON") == "1":
    from .twin import Engine, flow_hash, ip_fragment, mix64  # noqa: F401
    from .io_py import rx_burst, tx_burst  # noqa: F401
    IMPL = "py"
else:
    try:
        from ._engine import Engine, flow_hash, ip_fragment, mix64  # noqa: F401
        from ._io import rx_burst, tx_burst  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the build is broken
        raise ImportError(
            "threeway: the compiled fast path is not built (%s). Run `python3 setup.py "
            "build_ext --inplace`, or set THREEWAY_PUREPYTHON=1 to run the slow twin "
            "on purpose." % exc) from exc
    IMPL = "cy"

# slot: the VIP's counter slot (Engine.vip_stats), kept by the control side across swaps
# (lb/state.py); None: the spec's position in the list
ServiceSpec = namedtuple("ServiceSpec",
                         "vip port proto mode sched table weights flags l7 tunnel slot",
                         defaults=(0, None, None, None))
# splice content rules for the fast path (fastpath/defs.py L7_*): limit (bytes that count),
# rules: ((kind, arg bytes, pool index), ...) in order, pools: ((sched, table, weights), ...)
L7Spec = namedtuple("L7Spec", "limit rules pools")
# tunnel (fastpath/xmit_tunnel.pxi): the VXLAN network identifier, and the IP MTU of the path
# to the backends (a frame that would exceed it once encapsulated is answered as a router does)
TunnelSpec = namedtuple("TunnelSpec", "vni mtu")


class Batch:
    """A burst of frames in one contiguous numpy buffer, shared by RX, process() and TX.

    hdr: bytes of virtio-net header in front of every frame (0, or 10 for a TAP opened with
    IFF_VNET_HDR). A row is what one read() returned: [header][frame]; lens counts both.
    Byte 0 of the header holds its flags: bit 0 (NEEDS_CSUM) says the frame's L4 checksum is
    partial (only the pseudo-header sum; the kernel completes it on the way out)."""

    def __init__(self, size=256, snap=2048, hdr=0):
        self.size = size
        self.snap = snap
        self.hdr = hdr
        self.buf = np.zeros((size, snap), np.uint8)
        self.lens = np.zeros(size, np.uint32)
        self.verdict = np.zeros(size, np.uint8)
        self.reason = np.zeros(size, np.uint16)
        self.n = 0
        # what rx_burst read into it last time: bytes (headers included), and frames with a
        # GSO type and with a partial checksum (when they carry a vnet header)
        self.rx_bytes = self.rx_gso = self.rx_needs_csum = 0

    def load(self, frames, headers=None):
        """Copy frames (bytes-like) into the batch, after a header each (headers[i], or zeros)
        when hdr > 0; a row longer than snap raises ValueError."""
        if len(frames) > self.size:
            raise ValueError("%d frames do not fit a batch of %d" % (len(frames), self.size))
        for i, f in enumerate(frames):
            row = (bytes(headers[i]) if headers else b"\0" * self.hdr) + bytes(f) if self.hdr else bytes(f)
            if len(row) > self.snap:
                raise ValueError("frame %d is %d bytes, snap is %d" % (i, len(row), self.snap))
            self.buf[i, :len(row)] = np.frombuffer(row, np.uint8)
            self.lens[i] = len(row)
        self.n = len(frames)
        self.verdict[:] = defs.V_NONE
        self.reason[:] = 0

    def frame(self, i):
        return self.buf[i, self.hdr:self.lens[i]].tobytes()

    def header(self, i):
        return self.buf[i, :self.hdr].tobytes()

    def frames(self):
        return [self.frame(i) for i in range(self.n)]

    def results(self):
        """[(verdict, counter name, frame bytes)] for the frames in use: what tests compare."""
        return [(int(self.verdict[i]), defs.COUNTERS[self.reason[i]], self.frame(i))
                for i in range(self.n)]
