# The burst read/write loops, shared by fastpath/_io.pyx (rx_burst, tx_burst) and
# fastpath/_engine.pyx (Engine.serve). Included, not imported: both run without the GIL.
# One read() is one frame (a TAP fd or a bound AF_PACKET socket), one write() is one frame.
from posix.unistd cimport read, write

cdef struct IoStats:
    long long rx_bytes     # bytes read, vnet headers included
    long long rx_gso       # frames read with a GSO type (vnet header byte 1)
    long long rx_csum      # frames read with NEEDS_CSUM (vnet header byte 0)
    long long tx_sent
    long long tx_errors    # writes the kernel refused (ENOBUFS, EAGAIN...): counted, not raised
    long long tx_bytes


cdef inline int io_rx(int fd, uint8_t *base, size_t stride, uint32_t *lens, int size,
                      bint vnet, IoStats *st) noexcept nogil:
    """Read frames into rows base[0..size) until EAGAIN (the fd is drained), EOF, an error
    or a full batch. Returns how many were read."""
    cdef int n = 0
    cdef ssize_t r
    cdef uint8_t *row
    while n < size:
        row = base + <size_t>n * stride
        r = read(fd, row, stride)
        if r <= 0:
            break
        lens[n] = <uint32_t>r
        st.rx_bytes += r
        if vnet and r >= 2:
            st.rx_gso += row[1] != 0                  # gso_type
            st.rx_csum += row[0] & VNET_F_NEEDS_CSUM  # flags
        n += 1
    return n


cdef inline void io_tx(int fd, uint8_t *base, size_t stride, uint32_t *lens,
                       uint8_t *verdict, int n, IoStats *st) noexcept nogil:
    """Write every frame of rows base[0..n) whose verdict is V_TX."""
    cdef int i
    for i in range(n):
        if verdict[i] != V_TX:
            continue
        if write(fd, base + <size_t>i * stride, lens[i]) == <ssize_t>lens[i]:
            st.tx_sent += 1
            st.tx_bytes += lens[i]
        else:
            st.tx_errors += 1
