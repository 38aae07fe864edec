"""Two code bases side by side from bench/e2e.py's outputs: the ratios the issues ask for,
before (A) and after (B), from e2e runs of each worktree taken one after the other.

    python3 -m bench.e2e_ab --a main=DIR[,DIR...] --b dsrpath=DIR[,DIR...] \\
        [--ratios hop/direct,hop/splice,dsr/direct,tunnel/remote] --out bench/results/e2e_dsrpath

Each DIR holds an e2e.json (bench/e2e.py --out DIR). The runs of one side are pooled over
its DIRs: per path and workload the median of every run's value; per ratio the ratio of
those medians and the median of the runs paired by index (run i of the threeway path over
run i of the anchor, in the same e2e invocation: the same minute of the shared host). Writes
OUT.json (every row of every DIR, tagged with its side and DIR) and OUT.md. A benchmark
report: it asserts nothing.
"""
import argparse
import json
import os
import statistics

DEFAULT_RATIOS = ("hop/direct", "hop/splice", "dsr/direct", "tunnel/remote")


def load(spec):
    """"name=DIR,DIR" -> (name, [(dir, rows)])."""
    name, dirs = spec.split("=", 1)
    out = []
    for d in dirs.split(","):
        with open(os.path.join(d, "e2e.json")) as f:
            out.append((d, json.load(f)))
    return name, out


def runs_of(side, path, workload):
    """[(dir index, run index, run dict)] of one cell over a side's dirs."""
    out = []
    for k, (_d, rows) in enumerate(side):
        for r in rows:
            if r["path"] == path and r["workload"] == workload:
                out += [(k, i, x) for i, x in enumerate(r["runs"]) if x.get("value") is not None]
    return out


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def cell(side, path, workload, key="value"):
    return med([x.get(key) for _k, _i, x in runs_of(side, path, workload)])


def paired(side, num, den, workload):
    a = {(k, i): x["value"] for k, i, x in runs_of(side, num, workload)}
    b = {(k, i): x["value"] for k, i, x in runs_of(side, den, workload)}
    return med([a[j] / b[j] for j in a if j in b and b[j]])


def fmt(v, pct=False):
    if v is None:
        return "-"
    if pct:
        return "%.0f%%" % v
    return "%.3g" % v if abs(v) < 1000 else "{:,.0f}".format(v)


def render(a, b, ratios):
    (na, sa), (nb, sb) = a, b
    wls, paths = [], []
    for _d, rows in sa + sb:
        for r in rows:
            if r["workload"] not in wls:
                wls.append(r["workload"])
            if r["path"] not in paths:
                paths.append(r["path"])
    unit = {r["workload"]: r["unit"] for _d, rows in sa + sb for r in rows}
    L = ["## Rates, median of every run (%s: %d e2e invocation(s), %s: %d)" % (
        na, len(sa), nb, len(sb)), "",
         "| workload | unit | " + " | ".join("%s %s" % (p, s) for p in paths for s in (na, nb))
         + " |", "|---|---|" + "---:|" * (2 * len(paths))]
    for w in wls:
        L.append("| %s | %s | " % (w, unit[w]) + " | ".join(
            fmt(cell(s, p, w)) for p in paths for s in (sa, sb)) + " |")
    L += ["", "## Ratios: ratio of medians / median of the runs paired in one invocation", "",
          "| workload | " + " | ".join("%s %s" % (r, s) for r in ratios for s in (na, nb)) + " |",
          "|---|" + "---:|" * (2 * len(ratios))]
    for w in wls:
        cells = []
        for r in ratios:
            num, den = r.split("/")
            for s in (sa, sb):
                m1, m2 = cell(s, num, w), cell(s, den, w)
                rm = m1 / m2 if m1 is not None and m2 else None
                cells.append("%s / %s" % (fmt(rm), fmt(paired(s, num, den, w))))
        L.append("| %s | " % w + " | ".join(cells) + " |")
    L += ["", "## CPU: machine busy / lbd, percent of one CPU (median of runs)", "",
          "| workload | " + " | ".join("%s %s" % (p, s) for p in paths for s in (na, nb)) + " |",
          "|---|" + "---:|" * (2 * len(paths))]
    for w in wls:
        L.append("| %s | " % w + " | ".join(
            "%s / %s" % (fmt(cell(s, p, w, "machine_busy_pct"), True),
                         fmt(cell(s, p, w, "lbd_pct"), True) if p not in (
                             "direct", "remote", "kernel") else "-")
            for p in paths for s in (sa, sb)) + " |")
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench.e2e_ab", description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="name=DIR[,DIR...] (before)")
    ap.add_argument("--b", required=True, help="name=DIR[,DIR...] (after)")
    ap.add_argument("--ratios", default=",".join(DEFAULT_RATIOS))
    ap.add_argument("--title", default="bench/e2e.py, two code bases side by side")
    ap.add_argument("--out", required=True, help="OUT: writes OUT.json and OUT.md")
    ap.add_argument("--preamble", help="a markdown file put under the title")
    a = ap.parse_args(argv)
    A, B = load(a.a), load(a.b)
    ratios = tuple(r for r in a.ratios.split(",") if r)
    md = "# %s\n\n" % a.title
    if a.preamble:
        with open(a.preamble) as f:
            md += f.read().rstrip() + "\n\n"
    md += render(A, B, ratios)
    rows = [dict(r, side=name, dir=d) for name, side in (A, B) for d, rs in side for r in rs]
    with open(a.out + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    with open(a.out + ".md", "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
