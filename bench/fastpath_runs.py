"""The fast-path benchmark run several times, as medians: `python3 -m bench.fastpath_runs
[--runs 3] [-k established]`.

One run of bench/test_fastpath.py on this shared VM is decided by the host's regime of the
moment (all 400 rounds of a case fast or all slow), so a target is shown by the median of
several runs, each a separate process. Writes bench/results/fastpath_runs.{json,md}; each
run's own table is bench/results/fastpath.md as the last run left it."""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load():
    with open(os.path.join(RESULTS, "fastpath.json")) as f:
        return json.load(f)


def one_run(select):
    cmd = [sys.executable, "-m", "pytest", "bench/test_fastpath.py", "--benchmark-only", "-q",
           "-p", "no:cacheprovider"] + (["-k", select] if select else [])
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit("bench.fastpath_runs: %s exited %d" % (" ".join(cmd), proc.returncode))
    return load()


def table(runs, starts, select):
    keys = []
    for row in runs[0]:
        k = (row["mode"], row["case"])
        if k not in keys:
            keys.append(k)

    def pps(run, k, impl):
        return next((r["pps"] for r in run if (r["mode"], r["case"], r["impl"]) == (k + (impl,))),
                    None)

    rows, out = [], []
    for k in keys:
        cy = [pps(r, k, "cy") for r in runs]
        py = [pps(r, k, "py") for r in runs]
        cym = statistics.median([x for x in cy if x]) if any(cy) else None
        pym = statistics.median([x for x in py if x]) if any(py) else None
        rows.append({"mode": k[0], "case": k[1], "cy_runs": cy, "py_runs": py,
                     "cy_median": cym, "py_median": pym})
        out.append("| %s | %s | %s | %s | %s | %s |" % (
            k[0], k[1], ", ".join("%.2f" % (x / 1e6) for x in cy if x),
            "%.2f" % (cym / 1e6) if cym else "-", "%.1f" % (pym / 1e3) if pym else "-",
            "%.0f×" % (cym / pym) if cym and pym else "-"))
    head = ["# fast path alone, one core, frames in memory: medians of %d runs" % len(runs), "",
            "%s, %s, python %s, %d CPUs. `python3 -m bench.fastpath_runs --runs %d%s`: each run "
            "a separate `python3 -m pytest bench/test_fastpath.py --benchmark-only%s`; pps = 256 "
            "frames / the median time of one burst in that run; the run's 1-min load at its "
            "start: %s." % (time.strftime("%Y-%m-%d %H:%M"), platform.machine(),
                            platform.python_version(), os.cpu_count(), len(runs),
                            " -k " + select if select else "", " -k " + select if select else "",
                            ", ".join("%.2f" % s for s in starts)), "",
            "| mode | case | compiled per run (Mpps) | compiled median (Mpps) | twin median (kpps) "
            "| compiled / twin |", "|---|---|---|---:|---:|---:|"]
    return rows, "\n".join(head + out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m bench.fastpath_runs", description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("-k", dest="select", default="established",
                    help="pytest -k selection ('' for every case)")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    runs, starts = [], []
    for i in range(args.runs):
        starts.append(os.getloadavg()[0])
        runs.append(one_run(args.select))
        print("run %d of %d done" % (i + 1, args.runs), flush=True)
    rows, md = table(runs, starts, args.select)
    with open(os.path.join(RESULTS, "fastpath_runs.json"), "w") as f:
        json.dump({"runs": runs, "load_at_start": starts, "select": args.select,
                   "medians": rows}, f, indent=1)
    with open(os.path.join(RESULTS, "fastpath_runs.md"), "w") as f:
        f.write(md)
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
