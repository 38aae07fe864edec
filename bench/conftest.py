"""Benchmarks are not tests: they never assert a timing. They write what they measured to
bench/results/ (JSON for machines, a markdown table for the README)."""
import json
import os
import platform
import time

import pytest

RESULTS = os.path.join(os.path.dirname(__file__), "results")


class Recorder:
    def __init__(self):
        self.rows = []

    def add(self, **row):
        self.rows.append(row)


@pytest.fixture(scope="session")
def fastpath_results():
    rec = Recorder()
    yield rec
    if not rec.rows:
        return
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "fastpath.json"), "w") as f:
        json.dump(rec.rows, f, indent=1)
    by = {}
    for r in rec.rows:
        by.setdefault((r["mode"], r["case"]), {})[r["impl"]] = r["pps"]
    lines = ["# fast path alone, one core, frames in memory",
             "", "%s, %s, %s" % (time.strftime("%Y-%m-%d"), platform.processor() or platform.machine(),
                                 "python " + platform.python_version()), "",
             "| mode | case | compiled (pps) | twin (pps) | compiled / twin |",
             "|---|---|---:|---:|---:|"]
    for (mode, case), v in by.items():
        cy, py = v.get("cy"), v.get("py")
        ratio = "%.0f×" % (cy / py) if cy and py else "-"
        lines.append("| %s | %s | %s | %s | %s |" % (
            mode, case, "{:,.0f}".format(cy) if cy else "-", "{:,.0f}".format(py) if py else "-", ratio))
    with open(os.path.join(RESULTS, "fastpath.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
