"""Schedulers' control side: turn a service's backends into the table the fast path indexes.

IPVS does its expensive work in add_dest/del_dest so that schedule() is one lookup; so do we.
`build()` runs whenever a service's backends change, and the fast path only indexes the
result (see the SCHED_* kinds in fastpath/defs.py):

    rr      -> SCHED_SEQ       every backend once, walked by a cursor (weights ignored)
    wrr     -> SCHED_SEQ       nginx's smooth weighted round-robin sequence
    lc      -> SCHED_LEASTCONN candidates + parallel weights; the fast path takes min conns/weight
    sh      -> SCHED_HASHSRC   256 weighted buckets (IPVS sh), indexed by mix64(client ip)
    maglev  -> SCHED_HASH5     weighted Maglev lookup table of prime size (NSDI'16, IPVS mh)

Invariants:
- A backend is `(real_idx, key, weight)`; `key` is "ip:port", the same on every balancer and
  across restarts. Every table is built from the backends sorted by key, so the result does
  not depend on the order backends were added in, and two balancers build the same table.
- Backends of weight 0 are left out of every table (they keep their existing flows, which the
  fast path pins by real index). No backend of weight > 0 gives an empty table: new flows
  are dropped (drop_no_backend).
- Pure functions: no I/O, no state, no Python hash() (it is salted per process).
"""
import hashlib
from functools import reduce
from math import gcd

from fastpath import defs

from .errors import LBError

NAMES = ("rr", "wrr", "lc", "sh", "maglev")
KINDS = {"rr": defs.SCHED_SEQ, "wrr": defs.SCHED_SEQ, "lc": defs.SCHED_LEASTCONN,
         "sh": defs.SCHED_HASHSRC, "maglev": defs.SCHED_HASH5}

WRR_MAX_LEN = 65536
SH_BUCKETS = 256

MAGLEV_DEFAULT_SIZE = 65537
MAGLEV_MIN_SIZE = 251            # IPVS mh's smallest table
MAGLEV_MAX_SIZE = 1048573        # largest prime below 2**20; ~2 s to build in pure Python
MAGLEV_PER_BACKEND = 100         # M >= 100 N: Maglev's own advice for M >> N (share within ~1%)
MAGLEV_MIN_ROUNDS = 64           # weights are scaled so the population takes >= 64 rounds
_MAGLEV_PERSON = b"threeway-mglv1"   # blake2b personalisation; changing it moves every flow


def build(name, backends, size=None):
    """(sched_kind, table, weights) for fastpath.ServiceSpec.

    name: rr | wrr | lc | sh | maglev. backends: iterable of (real_idx, key, weight).
    size: the Maglev table size (a prime, default 65537); ignored by the other schedulers.
    Raises LBError("scheduler") for an unknown name, LBError("maglev_size") for a bad size.
    """
    if name not in KINDS:
        raise LBError("scheduler", "unknown scheduler %r (have: %s)" % (name, ", ".join(NAMES)))
    backends = list(backends)
    live = sorted((key, idx, w) for idx, key, w in backends if w > 0)
    keys = [k for k, _, _ in live]
    if len(set(keys)) != len(keys):
        raise LBError("backend", "duplicate backend key in %s" % keys)
    idxs = [i for _, i, _ in live]
    weights = [w for _, _, w in live]
    if name == "maglev":
        size = MAGLEV_DEFAULT_SIZE if size is None else size
        check_maglev_size(size, len(backends))
    kind = KINDS[name]
    if not live:
        return kind, [], []
    if name == "rr":
        return kind, idxs, [1] * len(idxs)
    if name == "wrr":
        return kind, [idxs[i] for i in wrr_sequence(weights)], weights
    if name == "lc":
        return kind, idxs, weights
    if name == "sh":
        return kind, [idxs[i] for i in sh_buckets(weights)], weights
    return kind, [idxs[i] for i in maglev_table(keys, weights, size)], weights


# --- wrr --------------------------------------------------------------------------------------

def smooth_sequence(weights, length):
    """nginx's smooth weighted round-robin (ngx_http_upstream_get_peer), `length` picks.

    Each pick adds every weight to its running score, takes the highest score (the first on a
    tie) and subtracts the total from it. Over sum(weights) picks each position i is taken
    exactly weights[i] times, spread out rather than in runs: weights 5,1,1 give a a b a c a a.
    """
    total = sum(weights)
    cur = [0] * len(weights)
    seq = []
    pos = range(len(weights))
    for _ in range(length):
        for i in pos:
            cur[i] += weights[i]
        best = max(pos, key=cur.__getitem__)
        cur[best] -= total
        seq.append(best)
    return seq


def wrr_weights(weights, max_len=WRR_MAX_LEN):
    """Weights reduced by their gcd; scaled down proportionally if their sum exceeds max_len.

    Scaling keeps every weight >= 1, so the sequence stays within max_len and each backend's
    share is off by less than one slot in (max_len - n) from the exact ratio.
    """
    g = reduce(gcd, weights)
    ws = [w // g for w in weights]
    total = sum(ws)
    if total > max_len:
        room = max_len - len(ws)
        ws = [max(1, w * room // total) for w in ws]
        g = reduce(gcd, ws)
        ws = [w // g for w in ws]
    return ws


def wrr_sequence(weights, max_len=WRR_MAX_LEN):
    """Positions (into weights) in smooth weighted round-robin order.

    Length sum(w)/gcd(w), bounded by max_len (65536): weights whose reduced sum is larger are
    scaled down proportionally first (see wrr_weights), e.g. weights 65535 and 3 become
    65531 and 2 (ratio 32766:1 instead of 21845:1).
    """
    ws = wrr_weights(weights, max_len)
    return smooth_sequence(ws, sum(ws))


# --- sh ---------------------------------------------------------------------------------------

def apportion(weights, n):
    """Split n slots in proportion to weights (largest remainder), every weight >= 1 slot.

    Needs n >= len(weights)."""
    total = sum(weights)
    exact = [w * n / total for w in weights]
    counts = [max(1, int(e)) for e in exact]
    # hand out what is left (or take back what the minimum of 1 overspent) by remainder
    order = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    k = 0
    while sum(counts) < n:
        counts[order[k % len(order)]] += 1
        k += 1
    order.reverse()
    k = 0
    while sum(counts) > n:
        i = order[k % len(order)]
        if counts[i] > 1:
            counts[i] -= 1
        k += 1
    return counts


def sh_buckets(weights, buckets=SH_BUCKETS):
    """Positions for a source-hash bucket table (IPVS ip_vs_sh.c, 256 buckets).

    Unlike IPVS, which gives a backend `weight` consecutive buckets and lets a weight above
    256 starve the others, the buckets are apportioned by weight (every backend at least one)
    and interleaved smoothly. More than 256 backends: one bucket each.
    """
    n = max(buckets, len(weights))
    return smooth_sequence(apportion(weights, n), n)


# --- maglev -----------------------------------------------------------------------------------

def is_prime(n):
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def check_maglev_size(size, n_backends=0, field="maglev_size"):
    """LBError(field) unless size is a prime in 251..1048573 and >= 100 x n_backends.

    Prime: every skip in 1..M-1 is then coprime with M, so each backend's preference list is a
    full permutation of the table. M >= 100 N: Maglev's paper picks M >> N so that each
    backend's share of entries (and so of flows) is within about 1% of the ideal; with the
    default 65537 that is up to 655 backends per VIP.
    """
    if isinstance(size, bool) or not isinstance(size, int):
        raise LBError(field, "must be an integer, got %r" % (size,))
    if not MAGLEV_MIN_SIZE <= size <= MAGLEV_MAX_SIZE:
        raise LBError(field, "must be a prime in %d..%d, got %d"
                      % (MAGLEV_MIN_SIZE, MAGLEV_MAX_SIZE, size))
    if not is_prime(size):
        raise LBError(field, "must be a prime (e.g. 65537, 131071), got %d" % size)
    if size < MAGLEV_PER_BACKEND * n_backends:
        raise LBError(field, "%d is too small for %d backends: need a prime >= %d x backends"
                      % (size, n_backends, MAGLEV_PER_BACKEND))


def maglev_permutation(key, size):
    """(offset, skip) of a backend's preference list: offset + j*skip mod size, j = 0, 1, ...

    From blake2b of the key with a fixed personalisation: the same on every balancer, run and
    Python process (Python's hash() is salted per process and must not be used)."""
    h = hashlib.blake2b(key.encode(), digest_size=16, person=_MAGLEV_PERSON).digest()
    return int.from_bytes(h[:8], "big") % size, int.from_bytes(h[8:], "big") % (size - 1) + 1


def maglev_turns(weights, size):
    """Entries each backend takes per population round: weight / gcd, IPVS mh's `turns`.

    If the turns of one round add up to more than size / 64 they are scaled down
    proportionally (each at least 1), so the table fills in >= ~38 whole rounds and the last,
    partial round shifts a backend's share by at most 1/38 of it. IPVS instead shifts all
    weights right until the largest fits in 6 bits.
    """
    g = reduce(gcd, weights)
    turns = [w // g for w in weights]
    cap = max(len(turns), size // MAGLEV_MIN_ROUNDS)
    total = sum(turns)
    if total > cap:
        turns = [max(1, t * cap // total) for t in turns]
    return turns


def maglev_table(keys, weights, size=MAGLEV_DEFAULT_SIZE):
    """The Maglev lookup table: a list of `size` positions into keys/weights.

    Population as in the paper (Pseudocode 1) with IPVS mh's weights: the backends take turns
    in key order; in its turn a backend claims `turns` entries, each the next free entry of its
    own preference list. Equal weights: every backend ends with floor(M/N) or ceil(M/N)
    entries. `keys` must be sorted (build() does it) for the table to be order-independent.
    Needs at least one backend; all weights > 0.
    """
    turns = maglev_turns(weights, size)
    perms = [maglev_permutation(k, size) for k in keys]
    nxt = [off for off, _ in perms]
    skips = [skip for _, skip in perms]
    entry = [-1] * size
    n = 0
    rng = range(len(keys))
    while True:
        for i in rng:
            c = nxt[i]
            skip = skips[i]
            for _ in range(turns[i]):
                while entry[c] >= 0:
                    c += skip
                    if c >= size:
                        c -= size
                entry[c] = i
                n += 1
                if n == size:
                    return entry
            nxt[i] = c
