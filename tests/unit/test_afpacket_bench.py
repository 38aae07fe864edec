"""bench/afpacket_lab.py: the per-run figures and the report, without a lab."""
from bench import afpacket_lab as ab
from bench import e2e

META = {"date": "2026-11-22T00:00:00+00:00", "cpu_model": "Test CPU", "ncpu": 2,
        "kernel": "6.18", "impl": "cy", "runs": 2, "durations": e2e.FULL._asdict(),
        "argv": " --runs 2", "failed": {"afpacket": "GET /id answered ''"},
        "io_counters": {"afpacket+offload": {"rx_gso": 7, "rx_frames": 10}}}


def _run(gbps, served, lbd_s, rx_frames, rx_bytes):
    r = e2e.per_run_metrics("iperf", gbps, served, None, 2.0,
                            {"machine_busy_s": 3.0, "lbd_s": lbd_s, "haproxy_s": None},
                            {"rx_frames": rx_frames, "tx_frames": rx_frames,
                             "rx_bytes": rx_bytes, "tx_bytes": rx_bytes})
    r.update(ab.derived(r))
    return r


def test_derived_cpu_per_gb_and_bytes_per_frame():
    r = _run(10.0, 2e9, 1.0, 1000, 40_000_000)
    assert r["lbd_s_per_gb"] == 0.5
    assert r["rx_bytes_per_frame"] == 40_000
    failed = e2e.per_run_metrics("iperf", None, 0, None, 1.0,
                                 {"machine_busy_s": 1.0, "lbd_s": 0.5, "haproxy_s": None}, None)
    assert ab.derived(failed) == {"lbd_s_per_gb": None, "rx_bytes_per_frame": None}


def test_report_has_a_row_per_workload_and_configuration():
    w = ab.WORKLOADS[0]
    runs = [_run(10.0, 2e9, 1.0, 1000, 40_000_000), _run(12.0, 2e9, 2.0, 1000, 30_000_000)]
    row = e2e.make_row("afpacket+offload", w, runs, {})
    row["lbd_s_per_gb"] = e2e.median([r["lbd_s_per_gb"] for r in runs])
    row["rx_bytes_per_frame"] = e2e.median([r["rx_bytes_per_frame"] for r in runs])
    md = ab.render([row], META)
    assert ("| iperf-up-P4 | afpacket+offload | 11.0 (10.0, 12.0) | 75% | 0.75 | 150% | 1.00 "
            "| 35,000 |") in md.splitlines()
    assert "- afpacket+offload: rx_frames 10, rx_gso 7" in md
    assert "Not measured: afpacket: GET /id answered ''" in md
    assert "`python3 -m bench.afpacket_lab --runs 2`" in md
