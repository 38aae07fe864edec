"""Fast path alone, one core, frames in memory (pytest-benchmark), compiled and twin in one run.

    python3 -m pytest bench/test_fastpath.py --benchmark-only

Cases (frames of 64 bytes, bursts of 256):
- established: 100k flows in the table; each burst carries 256 packets of random flows (nat,
  dsr, and tunnel: each frame grows by the 50 bytes of VXLAN headers, in its 128-byte row).
- new_flow: every packet is a SYN of a flow not seen before (table large enough not to evict).
- splice: established both ways (seq/ack/TS/window translated), cookie SYN-ACKs, and a new
  connection's first segment decided by content rules (bound, rewritten into the backend SYN).
Timing covers engine.process() only; restoring the burst's bytes is done in untimed setup.
"""
import random

import numpy as np
import pytest

from fastpath import Batch, ServiceSpec, TunnelSpec, defs, twin
from fastpath import _engine
from tests.fastpath.fixtures import GW, LB, VIP1, VIP3, VIP7, make_engine
from tools import frames as F

BURST = 256
NFLOWS = 100_000
ROUNDS = {"cy": 400, "py": 12}
IMPLS = {"cy": _engine, "py": twin}


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
@pytest.mark.parametrize("mode,vip", [("nat", VIP1), ("dsr", VIP3), ("tunnel", VIP7)])
def test_established(benchmark, fastpath_results, impl, mode, vip):
    e = make_engine(IMPLS[impl].Engine, ServiceSpec, capacity=2 * NFLOWS)
    tunnel = TunnelSpec(4242, 1500) if mode == "tunnel" else None
    e.set_services([ServiceSpec(F.ip2int(vip), 80, 6, defs.MODES[mode], defs.SCHED_HASH5,
                                [0, 1], [1, 1], tunnel=tunnel)])
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


# ---- splice ------------------------------------------------------------------------------
SPLICE_VIP = "198.19.100.6"


def _splice_engine(impl, nflows):
    """An engine with nflows spliced flows, each set up through a real cookie handshake."""
    import struct
    mod = IMPLS[impl]
    e = make_engine(mod.Engine, ServiceSpec, capacity=2 * nflows)
    e.set_splice_secret(b"s" * 16)
    e.set_services([ServiceSpec(F.ip2int(SPLICE_VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1])])
    ts_syn = b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + struct.pack("!II", 1000, 0) + b"\x01\x03\x03\x07"
    b = Batch(BURST, snap=128)
    for base in range(0, nflows, BURST):
        ks = range(base, min(base + BURST, nflows))
        syns = []
        for k in ks:
            ip, port = client(k)
            syns.append(F.tcp(GW, LB, ip, SPLICE_VIP, port, 80, flags=F.TH_SYN, seq=k, opts=ts_syn))
        b.load(syns)
        e.process(b, 1000)
        acks = []
        for k, out in zip(ks, b.frames()):
            ip, port = client(k)
            cookie = struct.unpack("!I", out[38:42])[0]
            tsval = struct.unpack("!I", out[58:62])[0]
            acks.append(F.tcp(GW, LB, ip, SPLICE_VIP, port, 80, flags=F.TH_ACK, seq=k + 1,
                              ack=(cookie + 1) & 0xFFFFFFFF,
                              opts=b"\x01\x01\x08\x0a" + struct.pack("!II", 1001, tsval)))
        b.load(acks)
        e.process(b, 1000)
        synacks = []
        for k in ks:
            ip, port = client(k)
            e.splice_bind(F.ip2int(ip), port, F.ip2int(SPLICE_VIP), 80, 0, 1000)
            synacks.append(F.tcp(B1MAC, LB, "198.19.0.11", ip, 80, port, flags=F.TH_SYN | F.TH_ACK,
                                 seq=7 * k, ack=k + 1, opts=ts_syn[:4] + b"\x04\x02\x08\x0a"
                                 + struct.pack("!II", 5000, 1001) + b"\x01\x03\x03\x09"))
        b.load(synacks)
        e.process(b, 1000)
    assert e.counters()["splice_established"] == nflows
    return e


B1MAC = F.mac("02:00:00:00:0b:01")


@pytest.mark.parametrize("impl", ["cy", "py"])
@pytest.mark.parametrize("direction", ["fwd", "rev"])
def test_splice_established(benchmark, fastpath_results, impl, direction):
    import struct
    n = NFLOWS if impl == "cy" else NFLOWS // 10
    e = _splice_engine(impl, n)
    rng = random.Random(2)
    picks = []
    for _ in range(64):
        burst = []
        for _ in range(BURST):
            k = rng.randrange(n)
            ip, port = client(k)
            ts = b"\x01\x01\x08\x0a" + struct.pack("!II", 1002, 5001)
            if direction == "fwd":   # client ACKs: ack and TSecr translated
                burst.append(F.tcp(GW, LB, ip, SPLICE_VIP, port, 80, flags=F.TH_ACK, seq=k + 1,
                                   ack=12345, opts=ts))
            else:                    # server data: seq, TSval and window translated
                burst.append(F.tcp(B1MAC, LB, "198.19.0.11", ip, 80, port, flags=F.TH_ACK,
                                   seq=7 * k + 1, ack=k + 1, win=300, opts=ts))
        picks.append(burst)
    arr, lens = bursts(picks)
    setup, batch = runner(e, arr, lens, 2000)
    benchmark.pedantic(e.process, setup=setup, rounds=ROUNDS[impl], iterations=1)
    assert set(batch.reason[:BURST]) == {defs.C["splice_" + direction]}
    pps = BURST / benchmark.stats.stats.median
    fastpath_results.add(mode="splice", case="established " + direction, impl=impl, pps=pps)


@pytest.mark.parametrize("impl", ["cy", "py"])
def test_splice_handshake(benchmark, fastpath_results, impl):
    """Cookie SYN-ACKs made in place: the SYN-flood path (no state is created)."""
    import struct
    e = make_engine(IMPLS[impl].Engine, ServiceSpec)
    e.set_splice_secret(b"s" * 16)
    e.set_services([ServiceSpec(F.ip2int(SPLICE_VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1])])
    ts_syn = b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + struct.pack("!II", 1000, 0) + b"\x01\x03\x03\x07"
    picks = [[F.tcp(GW, LB, client(b * BURST + i)[0], SPLICE_VIP, client(b * BURST + i)[1], 80,
                    flags=F.TH_SYN, seq=i, opts=ts_syn) for i in range(BURST)] for b in range(16)]
    arr, lens = bursts(picks)
    setup, batch = runner(e, arr, lens, 2000)
    benchmark.pedantic(e.process, setup=setup, rounds=ROUNDS[impl], iterations=1)
    assert set(batch.reason[:BURST]) == {defs.C["splice_synack"]} and e.flow_count() == 0
    pps = BURST / benchmark.stats.stats.median
    fastpath_results.add(mode="splice", case="cookie SYN-ACK", impl=impl, pps=pps)


@pytest.mark.parametrize("impl", ["cy", "py"])
def test_splice_decide(benchmark, fastpath_results, impl):
    """A new connection's first segment decided by content rules in the fast path: matched
    (a path_prefix rule, then the default), scheduled in its pool, bound, kept for the
    replay and rewritten in place into our SYN to the backend. Each round is a burst of 256
    fresh connections (their handshakes are made untimed)."""
    import struct
    from fastpath import L7Spec
    nb = 48 if impl == "cy" else 4
    n = nb * BURST
    e = make_engine(IMPLS[impl].Engine, ServiceSpec, capacity=2 * n)
    e.set_splice_secret(b"s" * 16)
    seq = defs.SCHED_SEQ
    e.set_services([ServiceSpec(F.ip2int(SPLICE_VIP), 80, 6, defs.MODE_SPLICE, seq, [0], [1], 0,
                                L7Spec(4096, ((defs.L7_PATH, b"/blob", 1), (defs.L7_DEFAULT, b"", 0)),
                                       ((seq, (0,), (1,)), (seq, (1, 2), (1, 1)))))])
    reqs = (b"GET /blob HTTP/1.1\r\nHost: a\r\n\r\n", b"GET /id HTTP/1.1\r\nHost: a\r\n\r\n")
    b = Batch(BURST, snap=128)
    picks = []
    for base in range(0, n, BURST):
        ks = range(base, base + BURST)
        b.load([F.tcp(GW, LB, client(k)[0], SPLICE_VIP, client(k)[1], 80, flags=F.TH_SYN, seq=k)
                for k in ks])
        e.process(b, 1000)
        cookies = [struct.unpack("!I", f[38:42])[0] for f in b.frames()]
        b.load([F.tcp(GW, LB, client(k)[0], SPLICE_VIP, client(k)[1], 80, seq=k + 1,
                      ack=(c + 1) & 0xFFFFFFFF) for k, c in zip(ks, cookies)])
        e.process(b, 1000)
        picks.append([F.tcp(GW, LB, client(k)[0], SPLICE_VIP, client(k)[1], 80,
                            flags=F.TH_ACK | F.TH_PUSH, seq=k + 1, ack=(c + 1) & 0xFFFFFFFF,
                            data=reqs[k % 2]) for k, c in zip(ks, cookies)])
    arr, lens = bursts(picks)
    setup, batch = runner(e, arr, lens, 1001)
    benchmark.pedantic(e.process, setup=setup, rounds=nb, iterations=1)
    assert e.counters()["splice_decided"] == n
    pps = BURST / benchmark.stats.stats.median
    fastpath_results.add(mode="splice", case="first segment decided", impl=impl, pps=pps)
