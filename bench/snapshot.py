"""How long a takeover's flow table takes to cross: `python3 -m bench.snapshot [--flows N]
[--runs 5]`. A compiled engine of flows.capacity N (lbd's default 262144) is filled with N
nat flows (SYNs of distinct clients through bench/test_fastpath's frames), then exported
(Engine.export_state, what the old lbd sends) and imported into a fresh engine of the same
capacity (what the new lbd does), `--runs` times. The first run is the one a takeover meets
(cold pages); writes bench/results/snapshot.json. Not a test: nothing is asserted."""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m bench.snapshot", description=__doc__)
    ap.add_argument("--flows", type=int, default=262144)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args(argv)
    if a.flows < 256 or not 1 <= a.runs <= 50:
        ap.error("--flows >= 256, --runs 1..50")
    from bench.test_fastpath import BURST, bursts, frame64
    from fastpath import Batch, ServiceSpec, _engine
    from tests.fastpath.fixtures import VIP1, make_engine
    from tools import frames as F
    e = make_engine(_engine.Engine, ServiceSpec, capacity=a.flows)
    b = Batch(BURST, snap=128)
    for i in range(0, a.flows, BURST):
        ks = range(i, min(i + BURST, a.flows))
        arr, lens = bursts([[frame64(k, VIP1, F.TH_SYN) for k in ks]])
        np.copyto(b.buf, arr[0])
        np.copyto(b.lens, lens[0])
        b.n = min(BURST, a.flows - i)
        e.process(b, 1000)
    exports, imports = [], []
    for _ in range(a.runs):
        t = time.perf_counter()
        data = e.export_state()
        exports.append(time.perf_counter() - t)
        e2 = make_engine(_engine.Engine, ServiceSpec, capacity=a.flows)
        t = time.perf_counter()
        e2.import_state(data)
        imports.append(time.perf_counter() - t)
        if e2.flow_count() != e.flow_count():
            raise SystemExit("bench.snapshot: %d flows exported, %d imported"
                             % (e.flow_count(), e2.flow_count()))
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "capacity": a.flows,
           "flows": e.flow_count(), "bytes": len(data),
           "export_ms": [round(1e3 * x, 1) for x in exports],
           "import_ms": [round(1e3 * x, 1) for x in imports]}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "snapshot.json"), "w") as f:
        json.dump(out, f, indent=1)
    print("%d flows, %.1f MB: export first %.0f ms, median %.0f; import first %.0f ms, median %.0f"
          % (out["flows"], len(data) / 1e6, out["export_ms"][0],
             statistics.median(out["export_ms"]), out["import_ms"][0],
             statistics.median(out["import_ms"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
