"""Fast path alone, one core, frames in memory (pytest-benchmark), compiled and twin in one run.

    python3 -m pytest bench/test_fastpath.py --benchmark-only

Cases (frames of 64 bytes, bursts of 256):
- established: 100k flows in the table; each burst carries 256 packets of random flows.
- new_flow: every packet is a SYN of a flow not seen before (table large enough not to evict).
Timing covers engine.process() only; restoring the burst's bytes is done in untimed setup.
"""
import random

import numpy as np
import pytest

from fastpath import Batch, ServiceSpec, defs, engine_py
from fastpath import _engine
from tests.fastpath.fixtures import GW, LB, VIP1, VIP3, make_engine
from tools import frames as F

BURST = 256
NFLOWS = 100_000
ROUNDS = {"cy": 400, "py": 12}
IMPLS = {"cy": _engine, "py": engine_py}


def client(k):
    """client address and port of flow k (distinct 5-tuples)."""
    return "198.18.%d.%d" % (k // 50000 % 256, 10 + k // 1000 % 50), 1024 + k % 1000 * 64 + k // 50000


def frame64(k, vip, flags):
    ip, port = client(k)
    f = F.tcp(GW, LB, ip, vip, port, 80, flags=flags, data=b"\0" * 10)
    assert len(f) == 64
    return f


def bursts(frames_list):
    arr = np.zeros((len(frames_list), BURST, 128), np.uint8)
    lens = np.zeros((len(frames_list), BURST), np.uint32)
    for b, frames in enumerate(frames_list):
        for i, f in enumerate(frames):
            arr[b, i, :len(f)] = np.frombuffer(f, np.uint8)
            lens[b, i] = len(f)
    return arr, lens


def runner(engine, arr, lens, now):
    batch = Batch(BURST, snap=128)
    batch.n = BURST
    state = {"k": 0}

    def setup():
        k = state["k"] % len(arr)
        state["k"] += 1
        np.copyto(batch.buf, arr[k])
        np.copyto(batch.lens, lens[k])
        return (batch, now), {}

    return setup, batch


@pytest.mark.parametrize("impl", ["cy", "py"])
@pytest.mark.parametrize("mode,vip", [("nat", VIP1), ("dsr", VIP3)])
def test_established(benchmark, fastpath_results, impl, mode, vip):
    e = make_engine(IMPLS[impl].Engine, ServiceSpec, capacity=2 * NFLOWS)
    e.set_services([ServiceSpec(F.ip2int(vip), 80, 6, defs.MODES[mode], defs.SCHED_HASH5,
                                [0, 1], [1, 1])])
    syns = [frame64(k, vip, F.TH_SYN) for k in range(NFLOWS)]
    arr, lens = bursts([syns[i:i + BURST] for i in range(0, NFLOWS, BURST)][:-1])
    b = Batch(BURST, snap=128)
    for k in range(len(arr)):           # open the flows (untimed)
        b.buf[:] = arr[k]
        b.lens[:] = lens[k]
        b.n = BURST
        _engine_process(e, b)
    assert e.flow_count() >= NFLOWS - BURST
    rng = random.Random(1)
    picks = [[frame64(rng.randrange(len(arr) * BURST), vip, F.TH_ACK) for _ in range(BURST)]
             for _ in range(64)]
    arr2, lens2 = bursts(picks)
    setup, batch = runner(e, arr2, lens2, 2000)
    benchmark.pedantic(e.process, setup=setup, rounds=ROUNDS[impl], iterations=1)
    assert set(batch.reason[:BURST]) == {defs.C[mode + "_fwd"]}
    pps = BURST / benchmark.stats.stats.median
    benchmark.extra_info["pps"] = pps
    fastpath_results.add(mode=mode, case="established", impl=impl, pps=pps)


def _engine_process(e, b):
    e.process(b, 1000)


@pytest.mark.parametrize("impl", ["cy", "py"])
def test_new_flow(benchmark, fastpath_results, impl):
    rounds = ROUNDS[impl]
    e = make_engine(IMPLS[impl].Engine, ServiceSpec, capacity=1 << 20)
    e.set_services([ServiceSpec(F.ip2int(VIP1), 80, 6, defs.MODE_NAT, defs.SCHED_HASH5,
                                [0, 1], [1, 1])])
    n = min(rounds + 1, 400) * BURST
    syns = [frame64(k, VIP1, F.TH_SYN) for k in range(n)]
    arr, lens = bursts([syns[i:i + BURST] for i in range(0, n, BURST)])
    setup, batch = runner(e, arr, lens, 1000)
    benchmark.pedantic(e.process, setup=setup, rounds=min(rounds, len(arr)), iterations=1)
    assert e.counters()["flow_created"] == min(rounds, len(arr)) * BURST
    pps = BURST / benchmark.stats.stats.median
    benchmark.extra_info["pps"] = pps
    fastpath_results.add(mode="nat", case="new_flow", impl=impl, pps=pps)
