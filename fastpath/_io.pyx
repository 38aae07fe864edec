# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Burst read/write on a frame file descriptor (a TAP fd or a bound AF_PACKET socket), compiled.
Twin: fastpath/io_py.py. One read() is one frame, one write() is one frame; the loops run
without the GIL. rx_burst reads until EAGAIN or the batch is full; tx_burst writes every
frame whose verdict is V_TX and returns (sent, errors, bytes sent): writes the kernel refused
are counted, not raised. rx_burst leaves in the batch what it read: rx_bytes (headers
included) and, when frames carry a virtio-net header (batch.hdr), rx_gso and rx_needs_csum
(frames with a GSO type, frames with a partial checksum).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from posix.unistd cimport read, write

include "_defs.pxi"


def rx_burst(int fd, batch):
    cdef uint8_t[:, ::1] buf = batch.buf
    cdef uint32_t[::1] lens = batch.lens
    cdef int size = min(batch.size, buf.shape[0])
    cdef size_t snap = buf.shape[1]
    cdef int n = 0
    cdef ssize_t r
    cdef long long nbytes = 0
    cdef int gso = 0, csum = 0
    cdef bint vnet = batch.hdr >= 2
    with nogil:
        while n < size:
            r = read(fd, &buf[n, 0], snap)
            if r <= 0:
                break       # EAGAIN (non-blocking fd drained), EOF or error: end of burst
            lens[n] = <uint32_t>r
            nbytes += r
            if vnet and r >= 2:
                gso += buf[n, 1] != 0                  # gso_type
                csum += buf[n, 0] & VNET_F_NEEDS_CSUM  # flags
            n += 1
    batch.n = n
    batch.rx_bytes = nbytes
    batch.rx_gso = gso
    batch.rx_needs_csum = csum
    return n


def tx_burst(int fd, batch):
    cdef uint8_t[:, ::1] buf = batch.buf
    cdef uint32_t[::1] lens = batch.lens
    cdef uint8_t[::1] verdict = batch.verdict
    cdef int n = batch.n
    cdef int i, sent = 0, errors = 0
    cdef long long nbytes = 0
    if n < 0 or n > buf.shape[0]:
        raise ValueError("batch.n out of range")
    with nogil:
        for i in range(n):
            if verdict[i] != V_TX:
                continue
            if write(fd, &buf[i, 0], lens[i]) == <ssize_t>lens[i]:
                sent += 1
                nbytes += lens[i]
            else:
                errors += 1
    return sent, errors, nbytes
