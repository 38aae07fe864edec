"""Pure-Python twin of fastpath/_io.pyx: burst read/write on a frame file descriptor.

A TAP fd or a bound AF_PACKET socket: one read() is one frame, one write() is one frame.
rx_burst reads until EAGAIN or the batch is full; tx_burst writes every frame whose verdict is
V_TX and returns (sent, errors, bytes sent); writes the kernel refused (ENOBUFS, EAGAIN...)
are counted, not raised. rx_burst leaves in the batch what it read: rx_bytes (headers
included) and, when frames carry a virtio-net header (batch.hdr), rx_gso and rx_needs_csum
(frames with a GSO type, frames with a partial checksum).
"""
import os

import numpy as np

from . import defs


def rx_burst(fd, batch):
    n = nbytes = gso = csum = 0
    vnet = batch.hdr >= 2
    while n < batch.size:
        try:
            data = os.read(fd, batch.snap)
        except (BlockingIOError, InterruptedError):
            break
        if not data:
            break
        batch.buf[n, :len(data)] = np.frombuffer(data, np.uint8)
        batch.lens[n] = len(data)
        nbytes += len(data)
        if vnet and len(data) >= 2:
            gso += data[1] != 0                        # gso_type
            csum += data[0] & defs.VNET_F_NEEDS_CSUM   # flags
        n += 1
    batch.n = n
    batch.rx_bytes = nbytes
    batch.rx_gso = gso
    batch.rx_needs_csum = csum
    return n


def tx_burst(fd, batch):
    sent = errors = nbytes = 0
    for i in range(batch.n):
        if batch.verdict[i] != defs.V_TX:
            continue
        try:
            os.write(fd, batch.buf[i, :batch.lens[i]].tobytes())
            sent += 1
            nbytes += int(batch.lens[i])
        except OSError:
            errors += 1
    return sent, errors, nbytes
