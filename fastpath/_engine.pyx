# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled fast path: a list of includes, one per concern. Its twin, fastpath/twin/, has
modules of the same names in the same order, routine for routine (tests/fastpath/
test_twin_layout.py checks the pairing); every routine there must give the same bytes,
verdicts, counters and flow-table contents as here (tests/differential holds them together).

Invariants:
- process() and serve() run without the GIL and touch no Python object per frame: they read
  and rewrite the Batch's numpy buffer in place and write one verdict and one exit-counter id
  (Batch.reason) per frame. Every exit branch has a counter (fastpath/defs.py COUNTER_TABLE).
- Parsing uses explicit bounds: nothing is read beyond the frame's length. Byte order on the
  wire is big-endian; fields are host integers after parsing.
- Checksums are patched incrementally (RFC 1624); L4 checksums are never verified.
- The control side swaps the service table between bursts (set_services); flows and reals
  survive a swap. Reals are referenced by index from flows, so a real slot may be reused only
  once real_conns(idx) == 0 (lb/state.py keeps that rule).
- Per-packet routines are module-level C functions taking the Engine as a borrowed pointer
  (no reference counting); a Python-visible method is a thin call of one of them.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memcmp, memmove, memset
from libc.errno cimport errno, EINTR, EBADF, EIO
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_REALTIME
from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK)

from . import defs, snapfmt
from .checks import (check_ip, check_mac, check_pool, check_port, check_real_idx, check_secret,
                     check_proto, check_specs, check_sync, check_sync_cursor, check_sync_max,
                     check_vip_slot, check_watch)

include "_defs.pxi"
include "_iocore.pxi"

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum:
        POLLIN
        POLLERR
        POLLHUP
        POLLNVAL

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from *:
    """
    static inline void tw_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }
    /* every cache line of p[:n], for writing */
    static inline void tw_prefetch_lines(const void *p, size_t n) {
        const char *a = (const char *)((size_t)p & ~(size_t)63), *end = (const char *)p + n;
        for (; a < end; a += 64) __builtin_prefetch(a, 1, 3);
    }
    /* p[:n] moved up by d bytes (16 <= d, 16 <= n), as memmove(p + d, p, n) does: for a
       short frame, 16-byte pieces from the end down (none overlaps its own copy, and the
       lowest is read before anything is written over it), inline instead of a libc call */
    static inline void tw_move_up(unsigned char *p, size_t d, size_t n) {
        if (n > 256) { memmove(p + d, p, n); return; }
        size_t k = n;
        char t[16];
        while (k > 16) {
            k -= 16;
            memcpy(t, p + k, 16);
            memcpy(p + d + k, t, 16);
        }
        memcpy(t, p, 16);
        memcpy(p + d, t, 16);
    }
    static inline void tw_atomic_add(int *p, int d) { __atomic_add_fetch(p, d, __ATOMIC_SEQ_CST); }
    static inline int tw_atomic_load(int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    #include <sys/mman.h>
    #define TW_HUGE ((size_t)2 << 20)
    /* Zeroed memory of n bytes for a big table, 64-byte aligned (a cache line: a Flow's
       lines are its own): from n = 2 MB on, in whole 2 MB pages where the kernel has them
       (madvise MADV_HUGEPAGE: one TLB entry per 2 MB instead of 512), else in small ones;
       below that, from malloc's aligned_alloc. NULL when there is no memory. Freed by
       tw_huge_free with the same n. */
    static void *tw_huge_calloc(size_t n) {
        if (n < TW_HUGE) {
            size_t sz = (n + 63) & ~(size_t)63;
            void *q = aligned_alloc(64, sz ? sz : 64);
            if (q) memset(q, 0, sz ? sz : 64);
            return q;
        }
        size_t sz = (n + TW_HUGE - 1) & ~(TW_HUGE - 1);
        char *raw = (char *)mmap(NULL, sz + TW_HUGE, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED) return NULL;
        char *p = (char *)(((size_t)raw + TW_HUGE - 1) & ~(TW_HUGE - 1));
        if (p > raw) munmap(raw, p - raw);
        if (p + sz < raw + sz + TW_HUGE) munmap(p + sz, raw + sz + TW_HUGE - (p + sz));
        madvise(p, sz, MADV_HUGEPAGE);
        return p;
    }
    static void tw_huge_free(void *p, size_t n) {
        if (n < TW_HUGE) free(p);
        else if (p) munmap(p, (n + TW_HUGE - 1) & ~(TW_HUGE - 1));
    }
    """
    void tw_prefetch(const void *p) noexcept nogil
    void tw_prefetch_lines(const void *p, size_t n) noexcept nogil
    void tw_move_up(uint8_t *p, size_t d, size_t n) noexcept nogil
    void tw_atomic_add(int *p, int d) noexcept nogil
    int tw_atomic_load(int *p) noexcept nogil
    void *tw_huge_calloc(size_t n) noexcept nogil
    void tw_huge_free(void *p, size_t n) noexcept nogil

include "inet.pxi"          # bounds-checked reads, hashes, checksums, TCP options, frame builder
include "types.pxi"         # Flow, Real, Service and the other structs
include "engine.pxi"        # the Engine object and its Python API
include "flowtable.pxi"     # flow entries, their indexes, services, scheduling, TCP state
include "serve.pxi"         # process/serve, the burst, process_frame
include "icmp.pxi"          # ICMP errors about a flow: found by the quote, to the mode's routine
include "frag.pxi"          # fragments: the first scheduled, the rest follow it by IP id
include "xmit_nat.pxi"      # nat's routines
include "xmit_dsr.pxi"      # dsr's routine
include "splice.pxi"        # splice's cookies, binding, replay, translation, and its API
include "http.pxi"          # the HTTP head reader and the content-rule matcher
include "xmit_tunnel.pxi"   # tunnel's routines: the client's frame in VXLAN, ICMP frag needed
include "xmit_hop.pxi"      # hop's routines: splice's client side, then dsr's forwarding
include "watch.pxi"         # the watch: matching frames recorded into a ring (trace, capture)
include "snapshot.pxi"      # the tables as bytes and back, for a planned restart (--takeover)
include "sync.pxi"          # flows as records for the peer instances (lb/flowsync.py), and back
