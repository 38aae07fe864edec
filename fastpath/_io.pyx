# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Burst read/write on a frame file descriptor (a TAP fd or a bound AF_PACKET socket), compiled.
Twin: fastpath/io_py.py. One read() is one frame, one write() is one frame; the loops
(fastpath/_iocore.pxi, shared with Engine.serve) run without the GIL. rx_burst reads until
EAGAIN or the batch is full; tx_burst writes every frame whose verdict is V_TX and returns
(sent, errors, bytes sent): writes the kernel refused are counted, not raised. rx_burst
leaves in the batch what it read: rx_bytes (headers included) and, when frames carry a
virtio-net header (batch.hdr), rx_gso and rx_needs_csum (frames with a GSO type, frames
with a partial checksum).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t

include "_defs.pxi"
include "_iocore.pxi"


def rx_burst(int fd, batch):
    cdef uint8_t[:, ::1] buf = batch.buf
    cdef uint32_t[::1] lens = batch.lens
    cdef int size = min(batch.size, buf.shape[0], lens.shape[0])
    cdef IoStats st
    cdef int n
    cdef bint vnet = batch.hdr >= 2
    st.rx_bytes = st.rx_gso = st.rx_csum = 0
    with nogil:
        n = io_rx(fd, &buf[0, 0], buf.shape[1], &lens[0], size, vnet, &st)
    batch.n = n
    batch.rx_bytes = st.rx_bytes
    batch.rx_gso = st.rx_gso
    batch.rx_needs_csum = st.rx_csum
    return n


def tx_burst(int fd, batch):
    cdef uint8_t[:, ::1] buf = batch.buf
    cdef uint32_t[::1] lens = batch.lens
    cdef uint8_t[::1] verdict = batch.verdict
    cdef int n = batch.n
    cdef IoStats st
    if n < 0 or n > buf.shape[0] or n > lens.shape[0] or n > verdict.shape[0]:
        raise ValueError("batch.n out of range")
    st.tx_sent = st.tx_errors = st.tx_bytes = 0
    if n:
        with nogil:
            io_tx(fd, &buf[0, 0], buf.shape[1], &lens[0], &verdict[0], n, &st)
    return st.tx_sent, st.tx_errors, st.tx_bytes
