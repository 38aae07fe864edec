"""Run inside a network namespace (tests/integration/test_flowsync.py starts it with
`ip netns exec NS python3 -m tests.integration.flowsync_pair A B C OUTSIDER`): real
lb/flowsync.py endpoints on addresses of that namespace, each with a real engine, over real
UDP and TCP. Prints one JSON object of what it saw; never asserts (the test does)."""
import json
import socket
import sys
import time

import fastpath
from fastpath import Batch, ServiceSpec, defs
from lb.flowsync import FlowSync, Pump, SyncConfig
from tests.fastpath.fixtures import b2c, c2v, make_engine
from tools import frames as F

PORT = 7900
N = 200
CAP = 4096


def run(e, frames, now):
    e.acquire()
    try:
        b = Batch(len(frames))
        b.load(frames)
        e.process(b, now)
        return b.results()
    finally:
        e.release()


def wait(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def now_ms():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1_000_000


def endpoint(addr, peers):
    e = make_engine(fastpath.Engine, ServiceSpec, capacity=CAP)
    s = FlowSync(SyncConfig(listen="%s:%d" % (addr, PORT),
                            peers=["%s:%d" % (p, PORT) for p in peers], period=1.0))
    s.attach([e], CAP)
    s.start()
    p = Pump(s, tick_ms=50, clock=now_ms)
    p.start()
    return e, s, p


def main(a_ip, b_ip, c_ip, outsider_ip):
    out = {"impl": fastpath.IMPL}
    ea, sa, pa = endpoint(a_ip, [b_ip, c_ip])       # C joins later: a member already
    eb, sb, pb = endpoint(b_ip, [a_ip])
    try:
        t0 = now_ms()
        for k in range(N):
            sp = 40000 + k
            run(ea, [c2v(sport=sp), b2c(sport=sp), c2v(sport=sp, flags=F.TH_ACK)], t0)
        out["a_flows"] = ea.flow_count()
        t = time.monotonic()
        out["b_got_all"] = wait(lambda: eb.flow_count() >= N, 10.0)
        out["sync_ms"] = round((time.monotonic() - t) * 1000, 1)
        out["b_flows"] = eb.flow_count()
        out["b_counters"] = {k: v for k, v in eb.counters().items()
                             if k.startswith("sync") or k == "flow_created"}
        # the next frames of those flows through B: as through A
        now = now_ms()
        same = 0
        for k in range(0, N, 10):
            sp = 40000 + k
            fr = [c2v(sport=sp, flags=F.TH_ACK | F.TH_PUSH, data=b"q%d" % k),
                  b2c(sport=sp, flags=F.TH_ACK, data=b"r%d" % k)]
            ra, rb = run(ea, fr, now), run(eb, fr, now)
            same += ra == rb and all(r[0] == defs.V_TX for r in ra)
        out["same_output"] = same
        out["sample"] = len(range(0, N, 10))
        # a datagram from an address that is no peer: counted, dropped
        before = eb.counters()["sync_imported"] + eb.counters()["sync_updated"]
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((outsider_ip, PORT))
        ea.acquire()
        try:
            d, _ = ea.sync_dump(0, 8)
        finally:
            ea.release()
        s.sendto(d, (b_ip, PORT))
        s.close()
        out["unknown_counted"] = wait(lambda: sb.stats["from_unknown"] >= 1, 5.0)
        out["unknown_imported"] = (eb.counters()["sync_imported"]
                                   + eb.counters()["sync_updated"] - before)
        # a joining instance pulls the full table from a peer, over TCP

        ec = make_engine(fastpath.Engine, ServiceSpec, capacity=CAP)
        sc = FlowSync(SyncConfig(listen="%s:%d" % (c_ip, PORT),
                                 peers=["%s:%d" % (a_ip, PORT)]))
        sc.attach([ec], CAP)
        sc.start()
        try:
            out["pull"] = sc.pull(10.0)
            sc.import_pending(now_ms())
            out["c_flows"] = ec.flow_count()
            out["c_imported"] = ec.counters()["sync_imported"]
        finally:
            sc.stop()
        out["a_view"] = sa.view()
        out["b_view"] = sb.view()
        out["c_view"] = sc.view()
    finally:
        for p in (pa, pb):
            p.stop()
        for s in (sa, sb):
            s.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:5])
