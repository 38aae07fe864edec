"""save / restore / reload of the running configuration, on one live lab for the module.

   c1 198.18.0.10 -- rt -+- brs: lbd (TAP; 198.19.0.2), b1 b2 b3   (nat, dsr, splice VIPs)
                         \\- brr: r1 r2                            (tunnel VIP, VXLAN)

- configured with lbctl (every mode, schedulers, weights, pools, content rules, a health
  check, tunnel and splice options), `lbctl save` -> the lab's config file -> lbd restarted
  with it: `vip list` and `rule list` equal, and every VIP answers;
- SIGHUP with a changed file while a long download runs through a nat VIP that stays: the
  download arrives intact, new connections follow the new table (the download's backend is
  out of it), a VIP that only lbctl had added is gone and the file's new one answers;
- a bad file on SIGHUP changes nothing and lbd's log names the field; `lbctl reload
  --dry-run` prints the difference and changes nothing; `lbctl restore` of a file whose
  fixed field differs fails naming it.
"""
import json
import os
import signal
import subprocess
import sys

import pytest

from tools.lab import Lab, _wait, unique_name

from .test_nat import Download

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

NAT, DSR, SPL, TUN = "198.19.100.1", "198.19.100.2", "198.19.100.5", "198.19.100.7"
B1, B2, B3 = "198.19.0.11", "198.19.0.12", "198.19.0.13"
R1, R2 = "198.19.200.11", "198.19.200.12"


def run_lbctl(lab, *args):
    return subprocess.run([sys.executable, "-m", "lb.cli", "--socket",
                           lab.topology["control_socket"], *args],
                          capture_output=True, text=True, timeout=30)


def lbctl(lab, *args):
    r = run_lbctl(lab, "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout) if r.stdout.strip() else None


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    lab = Lab(unique_name(), backends=3, remote_backends=2)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def comparable(vips):
    """vip list without what a restart renumbers or re-times (real slots, health since)."""
    for v in vips:
        for b in v["backends"]:
            b.pop("real", None)
            if b.get("health"):
                b["health"] = {"state": b["health"]["state"]}
    return vips


def curl_ids(lab, vip, n, path="/id"):
    out = lab.exec("c1", ["sh", "-c", "for i in $(seq %d); do curl -sf --max-time 5 "
                          "http://%s%s; echo; done" % (n, vip, path)], timeout=60).stdout
    return out.split()


def log_text(lab):
    with open(lab.topology["lb"]["log"], errors="replace") as f:
        return f.read()


def sighup_and_wait(lab, needle):
    """SIGHUP to lbd; wait until its log has one more line containing needle."""
    seen = log_text(lab).count(needle)
    os.kill(lab.topology["lb"]["pid"], signal.SIGHUP)
    _wait("lbd's log to say %r" % needle, lambda: log_text(lab).count(needle) > seen, 10.0)
    return [ln for ln in log_text(lab).splitlines() if needle in ln][-1]


def test_save_restart_with_the_file_is_the_same_table(lab):
    lbctl(lab, "vip", "add", NAT + ":80", "--scheduler", "wrr")
    lbctl(lab, "backend", "add", NAT + ":80", B1, "--weight", "3")
    lbctl(lab, "backend", "add", NAT + ":80", B2)
    lbctl(lab, "vip", "health", NAT + ":80", "--check", "http", "--path", "/id", "--rise", "1")
    lbctl(lab, "vip", "add", DSR + ":80", "--mode", "dsr", "--maglev-size", "251")
    lbctl(lab, "backend", "add", DSR + ":80", B2)
    lbctl(lab, "backend", "add", DSR + ":80", B3)
    lbctl(lab, "vip", "set", DSR + ":80", "--on-backend-down", "expire")
    lbctl(lab, "vip", "add", SPL + ":80", "--mode", "splice")
    lbctl(lab, "backend", "add", SPL + ":80", B1)
    lbctl(lab, "backend", "add", SPL + ":80", B3, "--pool", "big")
    lbctl(lab, "rule", "add", SPL + ":80", "--kind", "path_prefix", "--value", "/blob",
          "--pool", "big")
    lbctl(lab, "rule", "add", SPL + ":80", "--kind", "host", "--value", "Big.Example.com",
          "--pool", "big", "--index", "0")
    lbctl(lab, "vip", "set", SPL + ":80", "--splice-limit", "2048", "--splice-timeout", "1.5")
    lbctl(lab, "vip", "add", TUN + ":80", "--mode", "tunnel")
    lbctl(lab, "backend", "add", TUN + ":80", R1)
    lbctl(lab, "backend", "add", TUN + ":80", R2)
    lbctl(lab, "vip", "set", TUN + ":80", "--tunnel-mtu", "1450")
    before = comparable(lbctl(lab, "vip", "list"))
    rules_before = lbctl(lab, "rule", "list", SPL + ":80")["rules"]

    cfg = lab.topology["lb"]["config"]
    r = run_lbctl(lab, "save", "-o", cfg)
    assert r.returncode == 0, r.stderr
    text = open(cfg).read()
    print(text)
    assert 'value = "big.example.com"' in text and "mtu = 1450" in text
    pause = lab.restart_lbd()
    print("lbd restarted with the saved file in %.2f s" % pause)
    assert comparable(lbctl(lab, "vip", "list")) == before
    assert lbctl(lab, "rule", "list", SPL + ":80")["rules"] == rules_before
    assert run_lbctl(lab, "save").stdout.split("\n", 1)[1] == text.split("\n", 1)[1]

    ids = curl_ids(lab, NAT, 8)
    assert len(ids) == 8 and set(ids) == {"b1", "b2"}          # wrr 3:1
    ids = curl_ids(lab, DSR, 4)
    assert len(ids) == 4 and set(ids) <= {"b2", "b3"}
    assert curl_ids(lab, SPL, 3) == ["b1"] * 3                 # no rule matches /id
    ids = curl_ids(lab, TUN, 4)
    assert len(ids) == 4 and set(ids) <= {"r1", "r2"}


def test_sighup_applies_a_changed_file_and_a_download_keeps_going(lab):
    """The nat VIP goes over to b3 alone while a download from b1 runs through it."""
    cfg = lab.topology["lb"]["config"]
    lbctl(lab, "vip", "add", "198.19.100.9:80")            # only lbctl knows it
    lbctl(lab, "backend", "add", "198.19.100.9:80", B1)
    lbctl(lab, "vip", "add", NAT + ":8080")                 # a nat VIP with b1 only, for
    lbctl(lab, "backend", "add", NAT + ":8080", B1 + ":80")  # the download
    lbctl(lab, "vip", "set", NAT + ":8080", "--scheduler", "rr")
    r = run_lbctl(lab, "save", "-o", cfg)
    assert r.returncode == 0, r.stderr
    text = open(cfg).read()
    # the file: 8080's backend b1 replaced by b3, the lbctl-only VIP left out, a VIP added
    start = text.index('[[vip]]\naddress = "%s"\nport = 8080' % NAT)
    block = text[start:]
    nxt = block.find("[[vip]]", 1)
    block = block if nxt < 0 else block[:nxt]
    assert B1 in block
    text2 = text.replace(block, block.replace('"%s"' % B1, '"%s"' % B3))
    start = text2.index('[[vip]]\naddress = "198.19.100.9"')
    rest = text2[start:]
    nxt = rest.find("[[vip]]", 1)
    drop = rest if nxt < 0 else rest[:nxt]
    text2 = text2.replace(drop, "")
    text2 += ('\n[[vip]]\naddress = "198.19.100.4"\nport = 80\nmode = "nat"\n'
              'scheduler = "rr"\n[[vip.backend]]\naddress = "%s"\n' % B2)

    p = Download(lab, "http://%s:8080/blob" % NAT, 4 << 20)     # 16 s
    try:
        _wait("the download through %s:8080 under way" % NAT, lambda: any(
            c["vip"] == NAT + ":8080" and c["bytes_rev"] > (1 << 20)
            for c in lbctl(lab, "conns", "--vip", NAT + ":8080")["conns"]), 20.0)
        with open(cfg, "w") as f:
            f.write(text2)
        dry = run_lbctl(lab, "reload", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        print(dry.stdout)
        assert "dry run: nothing applied" in dry.stdout
        assert "- vip 198.19.100.9:80/tcp" in dry.stdout and "+ vip 198.19.100.4:80/tcp" in dry.stdout
        assert "+ backend %s:80" % B3 in dry.stdout and "- backend %s:80" % B1 in dry.stdout
        assert [v["vip"] for v in lbctl(lab, "vip", "list")].count("198.19.100.9:80") == 1
        line = sighup_and_wait(lab, "SIGHUP: reloaded")
        print(line)
        assert "+198.19.100.4:80/tcp" in line and "-198.19.100.9:80/tcp" in line
        # new connections follow the new table while the download goes on
        assert curl_ids(lab, NAT + ":8080", 4) == ["b3"] * 4
        assert curl_ids(lab, "198.19.100.4", 2) == ["b2"] * 2
        assert "198.19.100.9:80" not in [v["vip"] for v in lbctl(lab, "vip", "list")]
        assert p.running(), "the download ended before the reload was checked"
        p.result(timeout=120)
    finally:
        p.kill()
    # the running table is the file now
    assert lbctl(lab, "reload", "--dry-run")["diff"]["changes"] == 0
    assert lbctl(lab, "restore", cfg, "--dry-run")["diff"]["changes"] == 0


def test_a_bad_file_on_sighup_changes_nothing(lab):
    cfg = lab.topology["lb"]["config"]
    good = open(cfg).read()
    before = comparable(lbctl(lab, "vip", "list"))
    bad = good.replace('address = "%s", port = 80, weight = 1' % B2,
                       'address = "%s", port = 80, weight = -1' % B2, 1)
    assert bad != good
    try:
        with open(cfg, "w") as f:
            f.write(bad)
        line = sighup_and_wait(lab, "SIGHUP: reload of")
        print(line)
        assert "refused, nothing changed" in line and ".weight: must be an integer" in line
        assert "vip[" in line and "].backend[" in line
        assert comparable(lbctl(lab, "vip", "list")) == before
        r = run_lbctl(lab, "reload")
        assert r.returncode == 1 and ".weight: must be an integer" in r.stderr, r.stderr
        assert lab.exec("c1", ["curl", "-sf", "--max-time", "5",
                               "http://198.19.100.4/id"]).stdout.strip() == "b2"
    finally:
        with open(cfg, "w") as f:
            f.write(good)
    # a fixed field that differs: refused by lbd, naming it
    other = os.path.join(os.path.dirname(cfg), "other.toml")
    with open(other, "w") as f:
        f.write(good.replace("capacity = 262144", "capacity = 1024"))
    r = run_lbctl(lab, "restore", other)
    assert r.returncode == 1 and "flows.capacity: cannot change while lbd runs" in r.stderr
    assert comparable(lbctl(lab, "vip", "list")) == before
