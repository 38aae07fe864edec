"""A flow sync peer of a lab's lbd (tests/integration/test_flowsync_lbd.py runs it in the
lab's lb namespace): `python3 -m tests.integration.flowsync_peer LISTEN LBD_SYNC VIP:PORT
BACKEND:PORT CLIENT N`. A real engine with the lbd's nat VIP (rr, one backend) behind
a real lb/flowsync.py endpoint. It waits (bounded) until lbd's deltas have brought N flows,
then makes one flow of its own (CLIENT:5555, by frames) that its export sends to lbd, prints
one JSON line, serves on (a restarted lbd pulls its full table) until a line on stdin or 60 s,
and prints the dumps it served."""
import json
import select
import sys
import time

import fastpath
from fastpath import Batch, ServiceSpec, defs
from lb.flowsync import FlowSync, Pump, SyncConfig
from tools import frames as F


def now_ms():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1_000_000


def main(listen, lbd, vip, backend, client, n):
    vip_ip, vip_port = vip.split(":")
    b_ip, b_port = backend.split(":")
    e = fastpath.Engine(4096)
    lbmac, gw, bmac = (F.mac("02:00:00:00:00:0%d" % i) for i in (3, 1, 2))
    e.set_local(F.ip2int("198.19.0.2"), lbmac)
    e.set_gateway(gw)
    e.set_real(7, F.ip2int(b_ip), int(b_port), bmac)      # another slot than lbd's: by address
    e.set_services([ServiceSpec(F.ip2int(vip_ip), int(vip_port), 6, defs.MODE_NAT,
                                defs.SCHED_SEQ, [7], [1])])
    s = FlowSync(SyncConfig(listen=listen, peers=[lbd], threshold=1, period=1.0))
    s.attach([e], 4096)
    s.start()
    p = Pump(s, tick_ms=50, clock=now_ms)
    p.start()
    print("ready", flush=True)
    out = {}
    try:
        end = time.monotonic() + 20
        while e.counters()["sync_imported"] < int(n) and time.monotonic() < end:
            time.sleep(0.05)
        out["imported_from_lbd"] = e.counters()["sync_imported"]
        out["flows"] = sorted("%s:%d" % (F.int2ip(f[0]), f[1]) for f in e.flows())
        frames = [F.tcp(gw, lbmac, client, vip_ip, 5555, int(vip_port), flags=F.TH_SYN),
                  F.tcp(bmac, lbmac, b_ip, client, int(b_port), 5555,
                        flags=F.TH_SYN | F.TH_ACK),
                  F.tcp(gw, lbmac, client, vip_ip, 5555, int(vip_port), flags=F.TH_ACK)]
        e.acquire()
        try:
            b = Batch(3)
            b.load(frames)
            e.process(b, now_ms())
        finally:
            e.release()
        end = time.monotonic() + 5
        while s.stats["tx_records"] < 1 and time.monotonic() < end:
            time.sleep(0.05)
        out["sent_to_lbd"] = s.stats["tx_records"]
        out["view"] = s.view()
        print(json.dumps(out), flush=True)
        # serve on (a restarted lbd pulls this table) until told to stop, 60 s at most
        r, _, _ = select.select([sys.stdin], [], [], 60.0)
        if r:
            sys.stdin.readline()
        print(json.dumps({"dumps_served": s.stats["dumps_served"]}), flush=True)
    finally:
        p.stop()
        s.stop()


if __name__ == "__main__":
    main(*sys.argv[1:7])
