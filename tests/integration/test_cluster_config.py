"""The VIP table in etcd (lb/cluster.py), on one live lab: etcd (tools/etcd.py) in P-lb on
the management address 198.19.0.3:2379, lbd with [cluster] name "lab" started before it.

   c1 198.18.0.10 -- rt -- brs: lbd (TAP; 198.19.0.2), b1 b2 b3
                           mg0 198.19.0.3 in P-lb: etcd (lbd's client too)

- a VIP and backends added with `lbctl --cluster` reach lbd (the revision it runs follows)
  and answer curl from c1; a local `lbctl vip add` is refused naming --cluster; lbd is a
  member (its lease key, with its data and mgmt addresses);
- two writers at once (threads, each its own read-modify-CAS loop) both land: every VIP of
  both is in the document and in lbd's table;
- a bad document (written straight into etcd) is refused, counted and shown; the old table
  keeps serving; the next good revision is applied;
- etcd killed: lbd keeps forwarding and says disconnected; a change written meanwhile (etcd
  up on another port, where lbd does not look) is applied once etcd is back where lbd looks
  (lbd reconnects and catches up by reading the key);
- measured: from a write (the txn) to lbd having applied it, median of 20.
"""
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import pytest

from lb import cluster
from lb.cli import request
from tools.etcd import Etcd, in_netns
from tools.lab import Lab, _wait, unique_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

NAME = "lab"
ETCD_ADDR = "198.19.0.3"
URL = "http://%s:2379" % ETCD_ADDR
VIP = "198.19.100.1"
B1, B2, B3 = "198.19.0.11", "198.19.0.12", "198.19.0.13"
CLUSTER_TOML = """
[cluster]
name = "%s"
etcd = "%s"
instance = "lb1"

[metrics]
listen = "%s:9100"
""" % (NAME, URL, ETCD_ADDR)


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    lab = Lab(unique_name(), backends=3, lbd_extra=CLUSTER_TOML)
    try:
        lab.up()
        # etcd comes up after lbd has been refused once: lbd must retry on its own
        _wait("lbd to try etcd", lambda: cstatus(lab)["errors"] > 0, 20.0)
        lab.etcd = Etcd(lab.ns("lb"), ETCD_ADDR, os.path.join(lab.state_dir, "etcd"))
        lab.etcd.start()
        yield lab
    finally:
        try:
            if getattr(lab, "etcd", None) is not None:
                lab.etcd.stop()
        finally:
            lab.down()


def clctl(lab, *args):
    """lbctl --cluster URL --name lab --json ARGS in P-lb: (returncode, JSON or None, stderr)."""
    p = lab.exec("lb", [sys.executable, "-m", "lb.cli", "--cluster", URL, "--name", NAME,
                        "--json", *args], check=False, timeout=60)
    try:
        out = json.loads(p.stdout) if p.stdout.strip() else None
    except ValueError:
        out = p.stdout
    return p.returncode, out, p.stderr


def lbd(lab, cmd, args=None):
    """lbd's reply ({"ok": ...}) to one control request."""
    return request(lab.topology["lb"]["control_socket"], cmd, args)


def cstatus(lab):
    r = lbd(lab, "cluster")
    assert r["ok"], r
    return r["result"]


def wait_revision(lab, rev, timeout=15.0):
    return _wait("lbd to run revision %d" % rev,
                 lambda: (lambda c: c if c["revision"] >= rev else None)(cstatus(lab)),
                 timeout, detail=lambda: "; cluster: %s" % cstatus(lab))


def etcd_call(lab, fn, *a, url=URL):
    """fn(Etcd client, *a) in P-lb's namespace."""
    return in_netns(lab.ns("lb"), lambda: fn(cluster.Etcd([url]), *a))


def curl_id(lab, vip, timeout=5):
    r = lab.exec("c1", ["curl", "-sf", "--max-time", str(timeout), "http://%s/id" % vip],
                 check=False, timeout=timeout + 5)
    return r.stdout.strip() if r.returncode == 0 else None


def metric(lab, name):
    """The value of an unlabelled family on lbd's /metrics (scraped from P-lb)."""
    text = lab.exec("lb", ["curl", "-sf", "--max-time", "5",
                           "http://%s:9100/metrics" % ETCD_ADDR], timeout=10).stdout
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("%s not in /metrics" % name)


def test_a_vip_added_with_lbctl_cluster_reaches_lbd_and_answers(lab):
    _wait("lbd connected to etcd", lambda: cstatus(lab)["connected"], 20.0,
          detail=lambda: "; cluster: %s" % cstatus(lab))
    c = cstatus(lab)
    # lbd started before etcd: it was refused first, retried, and says so
    assert c["last_error"] and c["reconnects"] >= 1, json.dumps(c)
    rc, out, err = clctl(lab, "vip", "add", "%s:80" % VIP, "--mode", "nat")
    assert rc == 0, err
    rc, out, err = clctl(lab, "backend", "add", "%s:80" % VIP, B1)
    assert rc == 0, err
    rc, out, err = clctl(lab, "backend", "add", "%s:80" % VIP, B2)
    assert rc == 0, err
    assert out["written"]
    wait_revision(lab, out["revision"])
    vips = lbd(lab, "vip.list")["result"]
    assert [(v["vip"], sorted(b["backend"] for b in v["backends"])) for v in vips] == \
        [("%s:80" % VIP, ["%s:80" % B1, "%s:80" % B2])]
    ids = [_wait("curl %s from c1" % VIP, lambda: curl_id(lab, VIP), 15.0) for _ in range(6)]
    assert set(ids) <= {"b1", "b2"} and ids, ids
    # bad input through --cluster: refused naming the field, nothing written
    before = clctl(lab, "show")[1]["revision"]
    rc, out, err = clctl(lab, "backend", "weight", "%s:80" % VIP, B1, "70000")
    assert rc == 2 and "weight" in err
    rc, out, err = clctl(lab, "backend", "del", "%s:80" % VIP, B3)
    assert rc == 1 and out["error"]["field"] == "backend", (out, err)
    assert clctl(lab, "show")[1]["revision"] == before
    # one source of truth: a local change is refused and says where to make it
    r = lbd(lab, "vip.add", {"vip": "198.19.100.9:80"})
    assert not r["ok"] and "--cluster" in r["error"]["message"], r
    # membership: lbd's lease key, with its addresses
    c = cstatus(lab)
    assert c["lease"]["ok"] and c["members"]["lb1"]["data"] == "198.19.0.2"
    assert c["members"]["lb1"]["mgmt"] == ETCD_ADDR
    shown = clctl(lab, "show")[1]
    assert shown["members"]["lb1"]["instance"] == "lb1"
    st = lbd(lab, "status")["result"]["cluster"]
    assert st["revision"] == c["revision"] and st["connected"]
    assert metric(lab, "threeway_cluster_members") == 1
    # what a person reads: lbctl cluster on the instance, lbctl --cluster show
    p = subprocess.run([sys.executable, "-m", "lb.cli", "--socket",
                        lab.topology["lb"]["control_socket"], "cluster"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert "connected since" in p.stdout and "running revision %d " % c["revision"] in p.stdout
    assert "member lb1: data 198.19.0.2 mgmt %s" % ETCD_ADDR in p.stdout, p.stdout
    print(p.stdout)
    p = subprocess.run([sys.executable, "-m", "lb.cli", "--socket",
                        lab.topology["lb"]["control_socket"], "vip", "list"],
                       capture_output=True, text=True, timeout=30)
    assert p.stdout.startswith("# cluster lab: revision %d of /threeway/lab/config, etcd "
                               "connected\n" % c["revision"]), p.stdout
    p = lab.exec("lb", [sys.executable, "-m", "lb.cli", "--cluster", URL, "show"], timeout=30)
    assert p.stdout.startswith("# cluster lab, /threeway/lab/config, revision %d" % c["revision"])
    assert 'address = "%s"' % B2 in p.stdout
    assert metric(lab, "threeway_cluster_revision") == c["revision"]


def test_two_concurrent_writers_both_land(lab):
    vips = {0: ["198.19.100.%d" % (10 + i) for i in range(5)],
            1: ["198.19.100.%d" % (20 + i) for i in range(5)]}
    tries = {0: 0, 1: 0}
    errors = []
    start = threading.Barrier(2)

    def writer(k):
        try:
            start.wait(10)
            for v in vips[k]:
                r = etcd_call(lab, lambda e, v=v: cluster.run_command(
                    None, NAME, "vip.add", {"vip": v + ":80", "scheduler": "rr"}, etcd=e))
                tries[k] += r["tries"]
        except Exception as e:       # reported below
            errors.append(e)
    ts = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors, errors
    shown = clctl(lab, "show")[1]
    ed = cluster.Editor(shown["document"])
    have = {v["vip"] for v in ed.handle("vip.list", {})}
    want = {v + ":80" for v in vips[0] + vips[1]}
    assert want <= have, want - have
    print("two writers, 5 VIPs each: %d and %d attempts (%d conflicts re-run)"
          % (tries[0], tries[1], tries[0] + tries[1] - 10))
    wait_revision(lab, shown["revision"])
    running = {v["vip"] for v in lbd(lab, "vip.list")["result"]}
    assert want <= running
    # leave only the first VIP (later tests count on it)
    for v in vips[0] + vips[1]:
        rc, out, err = clctl(lab, "vip", "del", v + ":80")
        assert rc == 0, err
    wait_revision(lab, out["revision"])


def test_a_bad_document_is_refused_and_the_old_table_serves(lab):
    key = cluster.config_key(NAME)
    text, good_rev, _ = etcd_call(lab, lambda e: e.get(key))
    wait_revision(lab, good_rev)
    refused = cstatus(lab)["refused"]
    bad = text.decode().replace("weight = 1", "weight = -1", 1)
    assert bad != text.decode()
    ok, bad_rev = etcd_call(lab, lambda e: e.cas_put(key, bad, good_rev))
    assert ok
    c = _wait("lbd to refuse revision %d" % bad_rev,
              lambda: (lambda c: c if c["refused"] > refused else None)(cstatus(lab)), 15.0)
    assert c["revision"] == good_rev
    assert c["last_refused"]["revision"] == bad_rev
    assert c["last_refused"]["field"] == "vip[0].backend[0].weight", c["last_refused"]
    assert curl_id(lab, VIP) in ("b1", "b2")
    log = open(lab.topology["lb"]["log"], errors="replace").read()
    assert "revision %d refused" % bad_rev in log
    # TOML that does not parse, and a key that is not [[vip]]: refused the same way
    for doc, fld in (("[[vip]\n", key), ("[lb]\naddress = \"198.19.0.9\"\n", "lb")):
        _, cur, _ = etcd_call(lab, lambda e: e.get(key))
        n = cstatus(lab)["refused"]
        ok, rev = etcd_call(lab, lambda e: e.cas_put(key, doc, cur))
        c = _wait("lbd to refuse revision %d" % rev,
                  lambda: (lambda c: c if c["refused"] > n else None)(cstatus(lab)), 15.0)
        assert c["last_refused"]["field"].startswith(fld.split(".")[0]), c["last_refused"]
        assert c["revision"] == good_rev
    # the good table again: a new revision, applied
    _, cur, _ = etcd_call(lab, lambda e: e.get(key))
    ok, rev = etcd_call(lab, lambda e: e.cas_put(key, text, cur))
    assert ok
    wait_revision(lab, rev)
    assert curl_id(lab, VIP) in ("b1", "b2")


def test_etcd_killed_lbd_forwards_then_catches_up(lab):
    lab.etcd.kill()
    c = _wait("lbd to see etcd gone", lambda: (lambda c: c if not c["connected"] else None)(
        cstatus(lab)), 20.0)
    assert c["last_error"], c
    running_rev = c["revision"]
    ids = [curl_id(lab, VIP) for _ in range(4)]
    assert all(i in ("b1", "b2") for i in ids), ids
    st = lbd(lab, "status")["result"]["cluster"]
    assert st["connected"] is False and st["revision"] == running_rev
    # /metrics says so too
    assert metric(lab, "threeway_cluster_connected") == 0
    assert metric(lab, "threeway_cluster_revision") == running_rev
    # the same etcd (data dir) on another port, where lbd does not look: a change is written
    # that lbd cannot see; then etcd back where lbd looks: lbd must catch up by reading
    aside = Etcd(lab.ns("lb"), ETCD_ADDR, lab.etcd.state_dir, port=2479)
    aside.start()
    try:
        out = etcd_call(lab, lambda e: cluster.run_command(
            None, NAME, "backend.add", {"vip": VIP + ":80", "backend": B3}, etcd=e),
            url=aside.url)
        assert out["written"]
        assert not cstatus(lab)["connected"]
    finally:
        aside.stop()
    lab.etcd.start()
    wait_revision(lab, out["revision"], timeout=30.0)
    assert cstatus(lab)["connected"]
    assert metric(lab, "threeway_cluster_connected") == 1
    _wait("b3 to answer", lambda: "b3" in {curl_id(lab, VIP) for _ in range(6)}, 30.0)


def _measure(lab, vip, backend, n=20):
    """n writes of backend's weight (2, 3, 2, ...): [(txn answer -> lbd applied ms, write ms,
    lbd's own apply ms)]. The first can be below 0: lbd may be done before the answer to
    the txn is back in this thread."""
    out = []
    for i in range(n):
        w = 2 + (i % 2)           # 1 before: every write changes the table
        t0 = time.time()
        r = etcd_call(lab, lambda e: cluster.run_command(
            None, NAME, "backend.weight", {"vip": vip + ":80", "backend": backend, "weight": w},
            etcd=e))
        t1 = time.time()
        assert r["written"]
        c = wait_revision(lab, r["revision"])
        at = dict((rev, t) for rev, t in c["history"])[r["revision"]]
        out.append(((at - t1) * 1000.0, (t1 - t0) * 1000.0, c["apply_ms"]))
    return out


def test_time_from_write_to_apply(lab):
    """Measured, not asserted: a Maglev VIP (65537 rows rebuilt per weight change, the cost
    of any table change in LBState) and an rr one (the etcd path alone)."""
    rc, out, err = clctl(lab, "vip", "add", "198.19.100.2:80", "--scheduler", "rr")
    assert rc == 0, err
    rc, out, err = clctl(lab, "backend", "add", "198.19.100.2:80", B2)
    assert rc == 0, err
    wait_revision(lab, out["revision"])
    for what, vip, b in (("maglev/65537", VIP, B1), ("rr", "198.19.100.2", B2)):
        lat = _measure(lab, vip, b)
        seen = sorted(x for x, _, _ in lat)
        whole = sorted(x + y for x, y, _ in lat)
        print("%s VIP (n=%d): from the start of the write to lbd's apply done ms: median %.1f, "
              "max %.1f; the write (read + command + CAS txn) ms median %.1f; from the txn's "
              "answer to the apply done ms median %.1f (min %.1f, max %.1f); lbd's apply "
              "(merge, validate, commit) ms median %.1f"
              % (what, len(lat), statistics.median(whole), whole[-1],
                 statistics.median(y for _, y, _ in lat), statistics.median(seen), seen[0],
                 seen[-1], statistics.median(z for _, _, z in lat)))
