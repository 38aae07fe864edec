"""The hop shim's cost per packet on a backend, measured by the kernel itself.

    python3 -m bench.hop_shim [--repeat 200000] [--out bench/results]

BPF_PROG_TEST_RUN with `repeat` runs each program on one frame and reports the mean time per
run. The frames are those of an ACTIVE hopped connection (tests/unit/test_hop_shim.py
builds the same kinds): egress, the backend's data segment (1448 bytes of payload; test_run
takes no frame beyond a page, and a 64 KiB TSO superframe, which tc egress sees as one skb,
costs the same run: the program reads and writes its headers only); ingress, the
client's ACK with timestamps, and with two SACK blocks; plus a segment of no hopped
connection (the lookup that misses, what every other packet of the backend pays). From ns per
packet: CPU-seconds per GB served, egress (data) + ingress (one ACK per two segments, as
delayed ACKs do). Writes hop_shim.json and prints a table. A benchmark: it asserts nothing.
The object is loaded into a bpffs of its own (a tmp mount), as the tests do.
"""
import argparse
import json
import os
import struct
import subprocess
import tempfile
import time

from fastpath import defs
from fastpath.twin.inet import tcp_frame
from modes.hop import shim
from modes.hop.shim_model import ST_ACTIVE, Flow, Key, pack_flow, pack_key

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
LB_MAC, B_MAC, GW_MAC = (bytes.fromhex(x) for x in ("025457000002", "02747700000b",
                                                     "0274770000f1"))
CIP, VIP, CPORT = 0xC612000A, 0xC6136401, 40000


def frames():
    ts = b"\x01\x01\x08\x0a" + struct.pack("!II", 5000, 700)
    sack = b"\x01\x01\x05\x12" + struct.pack("!IIII", 1, 2, 3, 4)
    out = lambda payload: bytes(tcp_frame(GW_MAC, B_MAC, VIP, CIP, 80, CPORT, 10, 20,  # noqa
                                          defs.TH_ACK, 1000, ts, b"x" * payload))
    inn = lambda opts, sport=CPORT: bytes(tcp_frame(B_MAC, LB_MAC, CIP, VIP, sport, 80, 20, 10,  # noqa
                                                    defs.TH_ACK, 500, opts))
    return [("egress data 1448 B", "hop_egress", out(1448), 1448),
            ("ingress ACK + TS", "hop_ingress", inn(ts), 0),
            ("ingress ACK + TS + 2 SACK", "hop_ingress", inn(ts + sack), 0),
            ("ingress, no hopped flow", "hop_ingress", inn(ts, sport=CPORT + 1), 0)]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench.hop_shim")
    ap.add_argument("--repeat", type=int, default=200000)
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args(argv)
    root = tempfile.mkdtemp(prefix="hopbench")
    shim.mount_bpffs(root)
    rows = []
    try:
        subprocess.run(["bpftool", "prog", "loadall", shim.OBJECT, root + "/progs", "pinmaps",
                        root + "/maps"], check=True, capture_output=True, timeout=60)
        fds = {n: shim.obj_get(root + "/progs/" + n) for n in shim.PROGRAMS}
        flows = shim.obj_get(root + "/maps/hop_flows")
        shim.map_update(flows, pack_key(Key(CIP, VIP, CPORT, 80)),
                        pack_flow(Flow(time.monotonic_ns(), 0x1000, 77, LB_MAC, ST_ACTIVE, 0, 7, 7)))
        for name, prog, frame, payload in frames():
            _, _, ns = shim.test_run(fds[prog], frame, repeat=a.repeat, timed=True)
            rows.append({"case": name, "program": prog, "frame_bytes": len(frame),
                         "payload": payload, "ns_per_packet": ns, "repeat": a.repeat})
        for fd in list(fds.values()) + [flows]:
            os.close(fd)
    finally:
        shim.umount_bpffs(root)
    by = {r["case"]: r["ns_per_packet"] for r in rows}
    for seg, what in ((1448, "1448-byte segments"), (65160, "64 KiB TSO superframes")):
        # per GB served: one egress run per skb (the program reads and writes the headers
        # only, so a superframe costs what a segment does), one ACK in per 2 * 1448 bytes
        ns_gb = (1e9 / seg) * by["egress data 1448 B"] + (1e9 / 2896) * by["ingress ACK + TS"]
        rows.append({"case": "CPU-s per GB served, egress as %s" % what,
                     "cpu_s_per_gb": round(ns_gb / 1e9, 4)})
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "hop_shim.json"), "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}, f, indent=2)
    for r in rows:
        if "ns_per_packet" in r:
            print("%-28s %-12s %6d B  %5d ns/packet" % (r["case"], r["program"],
                                                       r["frame_bytes"], r["ns_per_packet"]))
        else:
            print("%-50s %.4f" % (r["case"], r["cpu_s_per_gb"]))


if __name__ == "__main__":
    main()
