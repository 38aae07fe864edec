"""Flow sync's cost: records per second through sync_export and sync_import (one core, the
engine in this process: compiled unless THREEWAY_PUREPYTHON=1), bytes per synced flow, and
the datagrams a peer gets for 10k new connections per second.

    python3 -m bench.flowsync [--flows 100000] [--runs 3] [--out bench/results]

- export: engine A holds --flows nat flows made by real frames (SYN, SYN-ACK, ACK each);
  the time of sync_export(21, now) calls until none is due (21 records: a 1400-byte
  datagram), then of sync_import of those datagrams into engine B with the same services
  (every record creates a flow there). Records/s = flows / time.
- idle lap: the export's cost per tick when nothing is due (a scan of the whole table).
- bytes per flow: a full datagram's UDP payload / its records, and with the IPv4, UDP and
  Ethernet headers (42 bytes) of the datagram.
- 10k connections/s: a simulated clock; every 10 ms 100 connections open (SYN, SYN-ACK,
  ACK, request, response) and each closes 50 ms later (FIN, FIN, ACK); the export runs every
  100 ms tick (lbd's); counted: the records and datagrams of 2 s, per second.
Writes bench/results/flowsync.json and flowsync.md. Nothing asserts a timing.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import fastpath
from fastpath import Batch, ServiceSpec, defs
from tests.fastpath.fixtures import GW, LB, REALS, VIP1, make_engine
from tools import frames as F

MAXR = (1400 - defs.SYNC_HDR_LEN) // defs.SYNC_REC_LEN
B1 = REALS[0][2]
B1_IP, B1_PORT = REALS[0][0], REALS[0][1]


def client(k):
    """The k-th client endpoint: addresses 198.18.x.y, ports 1024..65535."""
    return "198.18.%d.%d" % ((k // 60000) // 250, (k // 60000) % 250 + 1), 1024 + k % 60000


def conn_frames(k, close=False, data=False):
    ip, port = client(k)
    if close:
        return [F.tcp(GW, LB, ip, VIP1, port, 80, flags=F.TH_FIN | F.TH_ACK),
                F.tcp(B1, LB, B1_IP, ip, B1_PORT, port, flags=F.TH_FIN | F.TH_ACK),
                F.tcp(GW, LB, ip, VIP1, port, 80, flags=F.TH_ACK)]
    out = [F.tcp(GW, LB, ip, VIP1, port, 80, flags=F.TH_SYN),
           F.tcp(B1, LB, B1_IP, ip, B1_PORT, port, flags=F.TH_SYN | F.TH_ACK),
           F.tcp(GW, LB, ip, VIP1, port, 80, flags=F.TH_ACK)]
    if data:
        out += [F.tcp(GW, LB, ip, VIP1, port, 80, flags=F.TH_ACK | F.TH_PUSH, data=b"G" * 80),
                F.tcp(B1, LB, B1_IP, ip, B1_PORT, port, flags=F.TH_ACK | F.TH_PUSH,
                      data=b"R" * 200)]
    return out


def run(e, frames, now):
    for i in range(0, len(frames), 256):
        part = frames[i:i + 256]
        b = Batch(len(part))
        b.load(part)
        e.process(b, now)


def engine(cap):
    return make_engine(fastpath.Engine, ServiceSpec, capacity=cap)


def export_import(flows, frames):
    a, b = engine(flows + 1024), engine(flows + 1024)
    run(a, frames, 1000)
    assert a.flow_count() == flows
    t0 = time.perf_counter()
    grams = []
    while True:
        d = a.sync_export(MAXR, 2000)
        if not d:
            break
        grams.append(d)
    t1 = time.perf_counter()
    assert a.sync_export(MAXR, 2000) == b""
    idle = time.perf_counter() - t1        # one lap of a table with nothing due
    t1 = time.perf_counter()
    for d in grams:
        b.sync_import(d, 2000)
    t2 = time.perf_counter()
    assert b.counters()["sync_imported"] == flows, b.counters()["sync_imported"]
    return {"export_s": t1 - t0 - idle, "import_s": t2 - t1, "idle_lap_s": idle,
            "capacity": flows + 1024, "datagrams": len(grams),
            "bytes": sum(len(d) for d in grams)}


def rate_10k(seconds=2.0, per_10ms=100):
    """Simulated 10k connections/s: (records/s, datagrams/s, records per connection)."""
    e = engine(1 << 16)
    records = grams = 0
    k = 0
    opened = []                     # (close at ms, k)
    t = 0
    end = int(seconds * 1000)
    next_tick = 100
    while t < end:
        fr = []
        for _ in range(per_10ms):
            fr += conn_frames(k, data=True)
            opened.append((t + 50, k))
            k += 1
        while opened and opened[0][0] <= t:
            fr += conn_frames(opened.pop(0)[1], close=True)
        run(e, fr, 10_000 + t)
        t += 10
        if t >= next_tick:
            next_tick += 100
            while True:
                d = e.sync_export(MAXR, 10_000 + t)
                if not d:
                    break
                grams += 1
                records += len(d) // defs.SYNC_REC_LEN
    return records / seconds, grams / seconds, records / k, k / seconds


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args(argv)
    t = time.perf_counter()
    frames = [f for k in range(a.flows) for f in conn_frames(k)]
    print("frames of %d flows made in %.1f s" % (a.flows, time.perf_counter() - t),
          file=sys.stderr)
    runs = [export_import(a.flows, frames) for _ in range(a.runs)]
    exp = statistics.median(a.flows / r["export_s"] for r in runs)
    imp = statistics.median(a.flows / r["import_s"] for r in runs)
    both = statistics.median(a.flows / (r["export_s"] + r["import_s"]) for r in runs)
    r0 = runs[0]
    per_flow = r0["bytes"] / a.flows
    wire = (r0["bytes"] + 42 * r0["datagrams"]) / a.flows
    rec_s, gram_s, rec_conn, conn_s = rate_10k()
    res = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "impl": fastpath.IMPL, "python": platform.python_version(),
        "cpu": _cpu(), "flows": a.flows, "runs": runs,
        "export_records_per_s": round(exp), "import_records_per_s": round(imp),
        "export_import_records_per_s": round(both),
        "idle_lap_ms": round(statistics.median(r["idle_lap_s"] for r in runs) * 1000, 3),
        "records_per_datagram": MAXR,
        "datagram_bytes": defs.SYNC_HDR_LEN + MAXR * defs.SYNC_REC_LEN,
        "bytes_per_flow_payload": round(per_flow, 2), "bytes_per_flow_on_wire": round(wire, 2),
        "sim_connections_per_s": conn_s, "sim_records_per_s": round(rec_s),
        "sim_datagrams_per_s_per_peer": round(gram_s),
        "sim_records_per_connection": round(rec_conn, 3),
        "command": "python3 -m bench.flowsync --flows %d --runs %d" % (a.flows, a.runs),
    }
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "flowsync.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = [
        "# flow sync: export/import rate, bytes per flow, datagrams at 10k connections/s", "",
        "%s; %s; Python %s; fast path %s; one core (this process)." % (
            res["when"], res["cpu"], res["python"], res["impl"]), "",
        "`%s`" % res["command"], "",
        "| what | value |", "|---|---:|",
        "| sync_export, records/s (median of %d) | %s |" % (a.runs, f"{round(exp):,}"),
        "| sync_import, records/s (creates every flow) | %s |" % f"{round(imp):,}",
        "| export + import, records/s | %s |" % f"{round(both):,}",
        "| a tick's export with nothing due: one lap of %s entries, ms | %.3f |" % (
            f"{a.flows + 1024:,}", res["idle_lap_ms"]),
        "| records per 1400-byte datagram | %d (%d bytes of UDP payload) |" % (
            MAXR, res["datagram_bytes"]),
        "| bytes per synced flow, UDP payload | %.2f |" % per_flow,
        "| bytes per synced flow, with IPv4+UDP+Ethernet headers | %.2f |" % wire,
        "| simulated: connections/s (open, request, response, close 50 ms later) | %s |"
        % f"{round(conn_s):,}",
        "| simulated: records/s sent (each to every peer) | %s |" % f"{round(rec_s):,}",
        "| simulated: datagrams/s per peer | %s |" % f"{round(gram_s):,}",
        "| simulated: records per connection | %.2f |" % rec_conn, "",
        "Records per connection: one when it is established (after 3 frames), one when its "
        "state changes again before the next 100 ms export (the close), so 1-3 depending on "
        "where the ticks fall.", ""]
    with open(os.path.join(a.out, "flowsync.md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))


def _cpu():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
