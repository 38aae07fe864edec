"""lb/schedulers.py: balance, disruption, weights and order independence of the tables."""
from collections import Counter

import numpy as np
import pytest

from fastpath import defs
from lb import schedulers
from lb.errors import LBError


def keys(n, base=0):
    return ["198.19.%d.%d:80" % (base, 10 + i) for i in range(n)]


def backends(ws, base=0):
    return [(i, k, w) for i, (k, w) in enumerate(zip(keys(len(ws), base), ws))]


def maglev_reference(keys, turns, size):
    """The population loop of the paper's Pseudocode 1, with IPVS mh turns, in 15 lines."""
    import hashlib
    perm = []
    for k in keys:
        h = hashlib.blake2b(k.encode(), digest_size=16, person=b"threeway-mglv1").digest()
        perm.append((int.from_bytes(h[:8], "big") % size,
                     int.from_bytes(h[8:], "big") % (size - 1) + 1))
    nxt, entry, n = [0] * len(keys), [-1] * size, 0
    while True:
        for i, (offset, skip) in enumerate(perm):
            for _ in range(turns[i]):
                c = (offset + nxt[i] * skip) % size
                while entry[c] >= 0:
                    nxt[i] += 1
                    c = (offset + nxt[i] * skip) % size
                entry[c] = i
                nxt[i] += 1
                n += 1
                if n == size:
                    return entry


# --- maglev -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 5, 7, 10])
def test_maglev_equal_weights_balance_within_one_entry(n):
    kind, table, weights = schedulers.build("maglev", backends([1] * n))
    assert kind == defs.SCHED_HASH5
    assert len(table) == 65537
    counts = Counter(table)
    assert set(counts) == set(range(n))
    assert max(counts.values()) - min(counts.values()) <= 1


@pytest.mark.parametrize("n,size", [(3, 251), (4, 65537), (7, 4093)])
def test_maglev_matches_reference(n, size):
    ks = sorted(keys(n, base=n))
    ws = [1, 2, 3, 1, 5, 1, 2][:n]
    assert schedulers.maglev_table(ks, ws, size) == \
        maglev_reference(ks, schedulers.maglev_turns(ws, size), size)


@pytest.mark.parametrize("n", [3, 5, 10, 20])
def test_maglev_disruption_on_removal_close_to_1_over_n(n):
    # Measured (10 key sets x every removal): entries that move are at most 1.002/N (N=3),
    # 1.016/N (5), 1.064/N (10), 1.122/N (20) of the table, of which all but 0.002/N,
    # 0.016/N, 0.064/N, 0.121/N were the removed backend's own. Asserted: <= 1.2/N moved,
    # <= 0.2/N of the table moved from a backend that stayed.
    ks = sorted(keys(n, base=40))
    full = np.array(schedulers.maglev_table(ks, [1] * n))      # positions into ks
    for r in sorted({0, n // 2, n - 1}):
        rest = ks[:r] + ks[r + 1:]
        after = np.array(schedulers.maglev_table(rest, [1] * (n - 1)))
        after += after >= r                                     # back to positions into ks
        assert not (after == r).any()
        changed = full != after
        moved = changed.mean()
        needless = (changed & (full != r)).mean()
        assert moved <= 1.2 / n, (r, moved * n)
        assert needless <= 0.2 / n, (r, needless * n)


def test_maglev_weighted_proportions():
    ws = [1, 2, 3, 4, 10]
    _, table, weights = schedulers.build("maglev", backends(ws))
    assert weights == ws
    counts = Counter(table)
    for i, w in enumerate(ws):
        share = counts[i] / len(table)
        assert share == pytest.approx(w / sum(ws), rel=0.02)


def test_maglev_turns_scaled_when_a_round_is_too_long():
    ts = schedulers.maglev_turns([65535, 1, 7], 65537)
    assert sum(ts) <= 65537 // schedulers.MAGLEV_MIN_ROUNDS + 3
    assert all(t >= 1 for t in ts)
    assert schedulers.maglev_turns([10, 20, 30], 65537) == [1, 2, 3]


def test_maglev_independent_of_backend_order():
    bs = backends([1, 3, 2, 1, 5])
    a = schedulers.build("maglev", bs, 4093)
    b = schedulers.build("maglev", list(reversed(bs)), 4093)
    assert a == b


def test_maglev_stable_hash_not_python_hash():
    # a fixed key has a fixed place in any process (PYTHONHASHSEED does not matter)
    assert schedulers.maglev_permutation("198.19.0.11:80", 65537) == \
        schedulers.maglev_permutation("198.19.0.11:80", 65537)
    t = schedulers.maglev_table(["198.19.0.11:80", "198.19.0.12:80"], [1, 1], 251)
    assert t == maglev_reference(["198.19.0.11:80", "198.19.0.12:80"], [1, 1], 251)


def test_maglev_build_30_backends_full_table_even_shares():
    """30 backends in the default 65537 slots: every slot filled, shares within Maglev's
    stated imbalance (the build's speed is a benchmark matter, not asserted here)."""
    bs = backends([1] * 30)
    kind, table, _ = schedulers.build("maglev", bs)
    assert len(table) == schedulers.MAGLEV_DEFAULT_SIZE and min(table) >= 0
    shares = Counter(table)
    assert len(shares) == 30
    assert max(shares.values()) / min(shares.values()) < 1.05


@pytest.mark.parametrize("size,n,needle", [
    (65536, 1, "prime"), (65539, 1, None), (250, 1, "251"), (251, 3, "too small"),
    (2, 0, "251"), (True, 0, "integer"), ("65537", 0, "integer"), (1048583, 0, "1048573"),
])
def test_maglev_size_checks(size, n, needle):
    if needle is None:
        schedulers.check_maglev_size(size, n)
        return
    with pytest.raises(LBError) as ei:
        schedulers.build("maglev", backends([1] * n), size)
    assert ei.value.field == "maglev_size"
    assert needle in ei.value.message


# --- rr / wrr ---------------------------------------------------------------------------------

def test_rr_each_backend_once_weights_ignored():
    kind, table, weights = schedulers.build("rr", [(7, "b:1", 5), (3, "a:1", 1), (9, "c:1", 2)])
    assert kind == defs.SCHED_SEQ
    assert table == [3, 7, 9]           # sorted by key
    assert weights == [1, 1, 1]


def test_wrr_smooth_sequence_is_nginx():
    # nginx's documented example: weights 5, 1, 1 -> a a b a c a a
    assert schedulers.smooth_sequence([5, 1, 1], 7) == [0, 0, 1, 0, 2, 0, 0]


def test_wrr_proportions_and_interleaving():
    ws = [6, 3, 3, 12]
    kind, table, weights = schedulers.build("wrr", backends(ws))
    assert kind == defs.SCHED_SEQ
    assert len(table) == sum(ws) // 3          # reduced by gcd
    assert Counter(table) == {0: 2, 1: 1, 2: 1, 3: 4}
    # smooth: weight 4 of 8 never runs more than twice in a row (cyclically), and the
    # others are never adjacent to themselves; plain wrr would give 3 3 3 3 0 0 1 2
    assert max_run(table, 3) <= 2
    assert all(max_run(table, i) == 1 for i in (0, 1, 2))


def max_run(seq, x):
    best = run = 0
    for v in seq + seq:
        run = run + 1 if v == x else 0
        best = max(best, run)
    return min(best, len(seq))


def test_wrr_bounded_length():
    ws = [65535, 65534, 3]
    seq = schedulers.wrr_sequence(ws)
    assert len(seq) <= schedulers.WRR_MAX_LEN
    c = Counter(seq)
    assert c[0] / c[1] == pytest.approx(65535 / 65534, rel=1e-3)
    assert c[2] >= 1


# --- lc, sh -----------------------------------------------------------------------------------

def test_lc_candidates_and_weights():
    kind, table, weights = schedulers.build("lc", [(5, "b:1", 2), (4, "a:1", 0), (6, "c:1", 7)])
    assert kind == defs.SCHED_LEASTCONN
    assert (table, weights) == ([5, 6], [2, 7])


def test_sh_weighted_buckets():
    kind, table, weights = schedulers.build("sh", backends([1, 3, 4]))
    assert kind == defs.SCHED_HASHSRC
    assert len(table) == 256
    assert Counter(table) == {0: 32, 1: 96, 2: 128}


def test_sh_heavy_weight_does_not_starve_others():
    _, table, _ = schedulers.build("sh", backends([1000, 1, 1]))
    c = Counter(table)
    assert len(table) == 256 and c[1] >= 1 and c[2] >= 1


# --- common rules -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", schedulers.NAMES)
def test_weight_zero_left_out(name):
    _, table, weights = schedulers.build(name, [(0, "a:1", 1), (1, "b:1", 0), (2, "c:1", 2)])
    assert 1 not in table
    assert set(table) == {0, 2}


@pytest.mark.parametrize("name", schedulers.NAMES)
@pytest.mark.parametrize("bs", [[], [(0, "a:1", 0), (1, "b:1", 0)]])
def test_empty_table_without_live_backend(name, bs):
    kind, table, weights = schedulers.build(name, bs)
    assert kind == schedulers.KINDS[name]
    assert table == [] and weights == []


def test_unknown_scheduler():
    with pytest.raises(LBError) as ei:
        schedulers.build("random", [])
    assert ei.value.field == "scheduler"
