"""The pure parts of bench/e2e.py: parsing wrk / iperf3 / curl / /proc / ethtool output,
medians, per-run metrics, the row shape, the markdown report. No lab, no timing asserted."""
import json

import pytest

from bench import e2e

WRK_OUT = """\
Running 5s test @ http://198.19.100.1/1k
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   251.53us  253.29us   4.76ms   91.37%
    Req/Sec    19.54k     1.21k   21.47k    80.00%
  38886 requests in 2.00s, 5.93MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  19436.38
Transfer/sec:      2.97MB
"""

WRK_CLEAN = """\
Running 2s test @ http://198.19.0.11/id
  1 threads and 16 connections
  30812 requests in 2.00s, 4.70MB read
Requests/sec:  15395.30
Transfer/sec:      2.35MB
"""


def test_parse_wrk_counts_errors_and_binary_units():
    m = e2e.parse_wrk(WRK_OUT)
    assert m["requests"] == 38886 and m["seconds"] == 2.0
    assert m["rps"] == pytest.approx(19436.38)
    assert m["bytes"] == int(5.93 * (1 << 20))
    assert m["errors"] == {"connect": 0, "read": 3, "write": 0, "timeout": 2}
    assert m["non2xx"] == 7


def test_parse_wrk_clean_run_has_zero_errors():
    m = e2e.parse_wrk(WRK_CLEAN)
    assert m["non2xx"] == 0 and not any(m["errors"].values())
    assert m["bytes"] == int(4.70 * (1 << 20))


@pytest.mark.parametrize("text", ["", "unable to connect to 198.19.0.3:80 Connection refused"])
def test_parse_wrk_without_summary_raises(text):
    with pytest.raises(ValueError):
        e2e.parse_wrk(text)


def iperf_json(bps=1.5e9, nbytes=375000000, error=None):
    d = {"start": {}, "intervals": [],
         "end": {"sum_sent": {"bytes": nbytes, "bits_per_second": bps, "retransmits": 4,
                              "seconds": 2.0},
                 "sum_received": {"bytes": nbytes, "bits_per_second": bps, "seconds": 2.0}}}
    if error:
        d = {"start": {}, "intervals": [], "end": {}, "error": error}
    return json.dumps(d)


def test_parse_iperf3():
    m = e2e.parse_iperf3(iperf_json())
    assert m == {"gbps": 1.5, "bytes": 375000000, "seconds": 2.0, "retransmits": 4}


@pytest.mark.parametrize("text,match", [
    (iperf_json(error="the server is busy running a test. try again later"), "busy"),
    ("not json", "not JSON"),
    (json.dumps({"end": {}}), "sum_received"),
])
def test_parse_iperf3_errors(text, match):
    with pytest.raises(ValueError, match=match):
        e2e.parse_iperf3(text)


def test_parse_curl():
    assert e2e.parse_curl("200 67108864 0.512345") == {"code": 200, "bytes": 67108864,
                                                       "seconds": 0.512345}
    with pytest.raises(ValueError):
        e2e.parse_curl("000")


def test_parse_proc_stat_counts_idle_and_iowait_as_idle_and_steal_apart():
    text = ("cpu  100 5 50 1000 20 3 7 40 0 0\n"
            "cpu0 50 2 25 500 10 1 3 20 0 0\n")
    busy, total, steal = e2e.parse_proc_stat(text)
    assert total == 100 + 5 + 50 + 1000 + 20 + 3 + 7 + 40
    assert busy == 100 + 5 + 50 + 3 + 7 and steal == 40


def test_steal_is_a_run_metric_and_a_table():
    w = e2e.WORKLOAD_BY_NAME["iperf-down-P1"]
    runs = []
    for v, st in ((20.0, 0.1), (10.0, 0.9), (21.0, 0.2)):
        runs.append(e2e.per_run_metrics("iperf", v, 10**9, None, 2.0,
                                        {"machine_busy_s": 3.0, "machine_steal_s": st,
                                         "lbd_s": None, "haproxy_s": None}, None))
    assert [r["machine_steal_pct"] for r in runs] == pytest.approx([5.0, 45.0, 10.0])
    row = e2e.make_row("direct", w, runs, ENV)
    assert row["cpu"]["machine_steal_pct"] == pytest.approx(10.0)
    md = e2e.render_markdown([row], dict(META, skipped={}))
    assert "| iperf-down-P1 | 10% / 45% |" in md


def test_parse_pid_stat_survives_spaces_in_comm():
    fields = ["S"] + ["0"] * 10 + ["123", "45"] + ["0"] * 30
    text = "4242 (python3 -m lb) " + " ".join(fields)
    assert e2e.parse_pid_stat(text) == 168


def test_parse_ethtool_top_level_only():
    text = ("Features for eth0:\nrx-checksumming: on\ntx-checksumming: off\n"
            "\ttx-checksum-ipv4: off [fixed]\nscatter-gather: on\n"
            "tcp-segmentation-offload: off\n\ttx-tcp-segmentation: off [requested on]\n"
            "generic-segmentation-offload: on\ngeneric-receive-offload: off [fixed]\n")
    assert e2e.parse_ethtool_k(text) == {"rx-csum": "on", "tx-csum": "off", "sg": "on",
                                         "tso": "off", "gso": "on", "gro": "off [fixed]"}


def test_median_ignores_failed_runs():
    assert e2e.median([3.0, None, 1.0, 2.0]) == 2.0
    assert e2e.median([1, 2, 3, 4]) == 2.5
    assert e2e.median([None, None]) is None
    assert e2e.median([]) is None


def test_per_run_metrics_throughput_and_lb_io():
    r = e2e.per_run_metrics("iperf", 2.0, 500_000_000, None, 2.0,
                            {"machine_busy_s": 3.0, "lbd_s": 1.9, "haproxy_s": None},
                            {"rx_frames": 600, "tx_frames": 400, "rx_bytes": 6000,
                             "tx_bytes": 4000})
    assert r["machine_busy_pct"] == pytest.approx(150.0)
    assert r["lbd_pct"] == pytest.approx(95.0)
    assert r["haproxy_pct"] is None
    assert r["machine_s_per_gb"] == pytest.approx(6.0)
    assert r["lb_frames_per_mb"] == pytest.approx(2.0)
    assert r["lb_bytes_per_mb"] == pytest.approx(20.0)
    assert "machine_us_per_req" not in r


def test_per_run_metrics_requests_and_missing_byte_counters():
    r = e2e.per_run_metrics("wrk", 1000.0, 1_000_000, 2000, 2.0,
                            {"machine_busy_s": 0.5, "lbd_s": 0.1, "haproxy_s": 0.0},
                            {"rx_frames": 10, "tx_frames": 10, "rx_bytes": None,
                             "tx_bytes": None})
    assert r["machine_us_per_req"] == pytest.approx(250.0)
    assert r["lb_frames_per_mb"] == pytest.approx(20.0)
    assert r["lb_bytes_per_mb"] is None


def test_per_run_metrics_of_a_failed_run():
    r = e2e.per_run_metrics("blob", None, 0, None, 1.0, {"machine_busy_s": 0.2}, None)
    assert r["value"] is None and r["machine_s_per_gb"] is None and "lb_frames_per_mb" not in r


def _runs(vals, kind="iperf"):
    out = []
    for v in vals:
        r = e2e.per_run_metrics(kind, v, 10**9 if v else 0, 100 if kind == "wrk" else None, 1.0,
                                {"machine_busy_s": 1.0, "lbd_s": 0.5, "haproxy_s": 0.0}, None)
        if v is None:
            r["error"] = "timed out"
        out.append(r)
    return out


ENV = {"date": "2026-11-21", "io": "tap"}


def test_row_shape_and_medians():
    w = e2e.WORKLOAD_BY_NAME["iperf-up-P1"]
    row = e2e.make_row("nat", w, _runs([1.0, 3.0, None, 2.0]), ENV)
    for k in ("path", "workload", "run_values", "median", "unit", "cpu", "runs", "errors",
              "env", "min", "max", "kind", "notes"):
        assert k in row
    assert row["path"] == "nat" and row["workload"] == "iperf-up-P1"
    assert row["unit"] == "Gbit/s" and row["kind"] == "iperf"
    assert row["run_values"] == [1.0, 3.0, None, 2.0]
    assert row["median"] == 2.0 and row["min"] == 1.0 and row["max"] == 3.0
    assert row["errors"] == ["timed out"]
    assert row["cpu"]["machine_busy_pct"] == pytest.approx(100.0)
    assert row["cpu"]["lbd_pct"] == pytest.approx(50.0)
    json.dumps(row)      # a row is plain JSON


def _rows():
    rows = []
    vals = {"direct": 30.0, "kernel": 20.0, "haproxy": 10.0, "nat": 2.0, "dsr": 25.0}
    for w in e2e.WORKLOADS:
        for p, v in vals.items():
            scale = 10000 if w.kind == "wrk" else 1
            rows.append(e2e.make_row(p, w, _runs([v * scale] * 3, w.kind), ENV))
    return rows


META = {"date": "2026-11-21T00:00:00+00:00", "cpu_model": "Test CPU", "ncpu": 2,
        "kernel": "6.1", "python": "3.11.7", "impl": "cy", "io": "tap", "runs": 3,
        "quick": False, "durations": e2e.FULL._asdict(), "http_object": "/1k",
        "http_object_note": "1024-byte body",
        "offloads": {"c1/eth0": {"node": "c1", "interface": "eth0", "role": "client",
                                 "features": {"tso": "on", "gro": "off"}, "rps_cpus": "0"},
                     "sw/lbtap": {"node": "sw", "interface": "lbtap", "role": "lbd's TAP",
                                  "features": {"tso": "on"}, "rps_cpus": "3"}},
        "skipped": {"splice": "lbctl: unknown mode 'splice'"}, "notes": ["shared host"],
        "path_notes": ["direct: b1"]}


def test_markdown_table_has_workloads_as_rows_and_paths_as_columns():
    md = e2e.render_markdown(_rows(), META)
    lines = md.splitlines()
    head = [l for l in lines if l.startswith("| workload | unit | direct")][0]
    assert head == "| workload | unit | direct | kernel | haproxy | nat | dsr |"
    row = [l for l in lines if l.startswith("| iperf-up-P1 | Gbit/s |")][0]
    assert row == "| iperf-up-P1 | Gbit/s | 30.0 | 20.0 | 10.0 | 2.00 | 25.0 |"
    assert "| wrk-keepalive | req/s | 300,000 | 200,000 | 100,000 | 20,000 | 250,000 |" in lines
    # ratios threeway / anchors
    assert ("| workload | nat/haproxy | dsr/haproxy | nat/kernel | dsr/kernel | nat/direct "
            "| dsr/direct |") in lines
    assert "| iperf-up-P1 | 0.20× | 2.50× | 0.10× | 1.25× | 0.07× | 0.83× |" in lines
    # settings, skipped, notes
    assert "Test CPU" in md and "lab io tap" in md
    assert "| c1 | eth0 | client |" in md
    off = [l for l in lines if l.startswith("| sw | lbtap |")][0]
    assert off.endswith("| 3 |")         # RPS CPUs, the last column
    assert "skipped splice: lbctl: unknown mode 'splice'" in md
    assert "shared host" in md
    assert "splice" not in head       # a skipped path gets no column


def test_paired_ratio_is_the_median_of_per_run_ratios():
    w = e2e.WORKLOAD_BY_NAME["iperf-down-P1"]
    direct = e2e.make_row("direct", w, _runs([20.0, 10.0, 22.0, None], "iperf"), ENV)
    dsr = e2e.make_row("dsr", w, _runs([19.0, 9.0, 20.0, None], "iperf"), ENV)
    # ratio of medians: 19/20 = 0.95; per run: 0.95, 0.90, 0.909 (run 4 failed on both)
    assert e2e.paired_ratio(dsr, direct) == pytest.approx(20.0 / 22.0)
    assert e2e.paired_ratio(dsr, None) is None
    failed = e2e.make_row("direct", w, _runs([None, None, None, None], "iperf"), ENV)
    assert e2e.paired_ratio(dsr, failed) is None
    md = e2e.render_markdown([direct, dsr], dict(META, skipped={}, runs=4))
    assert "| iperf-down-P1 | 0.95× |" in md          # ratio of medians
    assert "| iperf-down-P1 | 0.91× |" in md          # paired
    one = e2e.render_markdown([direct, dsr], dict(META, skipped={}, runs=1))
    assert "paired by run" not in one


def test_markdown_with_only_anchors_has_no_ratio_table():
    rows = [r for r in _rows() if r["path"] in e2e.ANCHORS]
    md = e2e.render_markdown(rows, dict(META, skipped={}))
    assert "relative to the anchors" not in md
    assert "lbd's I/O" not in md


def test_failed_cell_shows_a_dash():
    w = e2e.WORKLOAD_BY_NAME["blob-64MiB"]
    md = e2e.render_markdown([e2e.make_row("nat", w, _runs([None], "blob"), ENV)],
                             dict(META, skipped={}))
    assert "| blob-64MiB | Gbit/s | - |" in md
    assert "nat blob-64MiB: a run failed: timed out" in md


def test_parse_rps():
    assert e2e.parse_rps("00000003\n00000003\n") == "3"
    assert e2e.parse_rps("0\n") == "0"
    assert e2e.parse_rps("00000000,00000001\n00000002\n") == "1/2"
    assert e2e.parse_rps("") == "?"


def test_parse_list():
    assert e2e.parse_list(None, e2e.PATHS, "--only") == list(e2e.PATHS)
    assert e2e.parse_list("nat,direct", e2e.PATHS, "--only") == ["direct", "nat"]
    with pytest.raises(SystemExit):
        e2e.parse_list("nat,bogus", e2e.PATHS, "--only")


def test_estimate_grows_with_runs_and_paths():
    one = e2e.estimate_seconds(1, e2e.WORKLOADS, 1, e2e.QUICK)
    assert one > 0
    assert e2e.estimate_seconds(2, e2e.WORKLOADS, 3, e2e.QUICK) == pytest.approx(6 * one)


def test_parse_snmp_pairs_header_and_value_lines():
    text = ("Ip: Forwarding DefaultTTL\nIp: 1 64\n"
            "Tcp: RtoAlgorithm ActiveOpens RetransSegs\nTcp: 1 12 3\n"
            "TcpExt: SyncookiesSent TCPSynRetrans\nTcpExt: 0 2\n")
    m = e2e.parse_snmp(text)
    assert m["Tcp.ActiveOpens"] == 12 and m["Tcp.RetransSegs"] == 3
    assert m["TcpExt.TCPSynRetrans"] == 2 and m["Ip.DefaultTTL"] == 64
