r"""Layer-7 DSR (splice redirect rules) beside splice and HAProxy's `redir`, in one lab and run.

    python3 -m bench.l7dsr_lab [--runs 3] [--seconds 5] [--conns 16]

```
 [c1 198.18.0.10] -- rt --> 198.19.100.3:80  splice, /media/ redirect, probe (no cache)   \
                       \--> 198.19.100.4:80  splice, /media/ redirect, probe cache 1 s     } pool media
                       \--> 198.19.100.5:80  splice, /media/ redirect, --no-probe          }  = b2, b3
                       \--> 198.19.100.6:80  splice, /media/ forward (the object spliced)  }
                       \--> 198.19.0.3:8080  haproxy mode http, `server ... redir` (mg0)   /
```

Requests/s: `wrk -t1 -cN -dS -H 'Connection: close' http://HOST/media/a.txt`: a new connection
per request, as a redirected client makes; wrk does not follow the 302, so a redirect path's
figure is the rate of 302s the balancer answers (with a HEAD probe to the node per request
without cache), splice's the rate of 13-byte objects fetched through it. HAProxy: one
thread, `balance source`, each server with `redir http://<node>` (a 302 without a probe:
HAProxy's redir does not check the server).

Bytes the LB carried per 64 MiB object (/media/blob, the lab's 64 MiB blob): `curl -L` of it
through the VIP, and the bytes that crossed lbd's TAP (lbtap in the switch namespace, rx + tx,
from /sys/class/net) during the fetch, for the redirect (probe) VIP and for the splice VIP. The
probe itself leaves from lbd's kernel side (mg0), not the TAP: its bytes are not in this count
(a HEAD and its answer, a few hundred bytes).

Writes bench/results/l7dsr_lab.json and l7dsr_lab.md. Invariants: one lab with a unique name,
downed on exit (also on failure); haproxy started and stopped by its pid (tools/anchors.py);
every command has a timeout, every load a fixed duration.
"""
import argparse
import datetime
import json
import os
import statistics
import sys

from bench.e2e import parse_wrk
from tools.anchors import Anchors
from tools.lab import LB_MGMT, Lab, unique_name

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
B1, B2, B3 = "198.19.0.11", "198.19.0.12", "198.19.0.13"
HA_PORT = 8080
VIPS = {"redirect+probe": "198.19.100.3", "redirect+probe+cache": "198.19.100.4",
        "redirect, no probe": "198.19.100.5", "splice (forward)": "198.19.100.6"}
RULE_ARGS = {"redirect+probe": ("--action", "redirect"),
             "redirect+probe+cache": ("--action", "redirect", "--probe-cache", "1"),
             "redirect, no probe": ("--action", "redirect", "--no-probe"),
             "splice (forward)": ("--action", "forward")}
PATHS = list(VIPS) + ["haproxy redir"]

HAPROXY_CFG = """\
# haproxy of bench/l7dsr_lab.py: HAProxy's redirect to the server (no probe)
global
    nbthread 1
    maxconn 4000
    pidfile %(dir)s/haproxy.pid

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend fe
    bind %(addr)s:%(port)d
    default_backend media
backend media
    balance source
    server b2 %(b2)s:80 redir http://%(b2)s
    server b3 %(b3)s:80 redir http://%(b3)s
"""


class RedirAnchors(Anchors):
    def haproxy_config(self):
        return HAPROXY_CFG % {"dir": self.dir, "addr": LB_MGMT, "port": HA_PORT, "b2": B2,
                              "b3": B3}

    def haproxy_listens(self):
        return LB_MGMT, (HA_PORT,)


def lbctl(lab, *args):
    """lbctl through its module, as the tests do (tests/integration/test_nat.py)."""
    import subprocess
    sock = lab.topology["control_socket"]
    r = subprocess.run([sys.executable, "-m", "lb.cli", "--socket", sock, "--json"] + list(args),
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("lbctl %s: %s" % (" ".join(args), r.stderr or r.stdout))
    return json.loads(r.stdout) if r.stdout.strip() else None


def setup(lab):
    for name, vip in VIPS.items():
        ep = vip + ":80"
        lbctl(lab, "vip", "add", ep, "--mode", "splice")
        for b in (B2, B3):
            lbctl(lab, "backend", "add", ep, b, "--pool", "media")
        lbctl(lab, "rule", "add", ep, "--kind", "path_prefix", "--value", "/media/", "--pool",
              "media", *RULE_ARGS[name])


def host_of(path):
    return "%s:%d" % (LB_MGMT, HA_PORT) if path == "haproxy redir" else VIPS[path]


def check(lab, path):
    """The path answers as it should before it is measured: 302 to b2/b3, or 200 (splice)."""
    r = lab.exec("c1", ["curl", "-s", "-o", "/dev/null", "--max-time", "10", "-w",
                        "%{http_code} %{redirect_url}", "http://%s/media/a.txt" % host_of(path)],
                 timeout=30, check=False).stdout.split()
    want = "200" if path == "splice (forward)" else "302"
    if not r or r[0] != want or (want == "302" and not
                                 r[1].startswith(("http://%s/" % B2, "http://%s/" % B3))):
        raise RuntimeError("%s: answered %r, want %s" % (path, r, want))
    return " ".join(r)


def wrk(lab, path, seconds, conns):
    out = lab.exec("c1", ["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--timeout", "5s",
                          "-H", "Connection: close", "http://%s/media/a.txt" % host_of(path)],
                   timeout=seconds + 60).stdout
    return parse_wrk(out)


def tap_bytes(lab):
    out = lab.exec("sw", ["cat", "/sys/class/net/lbtap/statistics/rx_bytes",
                          "/sys/class/net/lbtap/statistics/tx_bytes"], timeout=10).stdout.split()
    return int(out[0]) + int(out[1])


def lb_bytes_per_blob(lab, path):
    before = tap_bytes(lab)
    r = lab.exec("c1", ["curl", "-sfL", "--max-time", "120", "-o", "/dev/null", "-w",
                        "%{size_download} %{num_redirects}",
                        "http://%s/media/blob" % host_of(path)], timeout=180).stdout.split()
    after = tap_bytes(lab)
    return {"downloaded": int(r[0]), "redirects": int(r[1]), "lb_bytes": after - before}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--conns", type=int, default=16)
    a = ap.parse_args(argv)
    lab = Lab(unique_name())
    rows = {p: [] for p in PATHS}
    blob = {}
    meta = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "runs": a.runs,
            "seconds": a.seconds, "conns": a.conns, "cpus": os.cpu_count()}
    try:
        lab.up()
        meta["impl"] = "py" if os.environ.get("THREEWAY_PUREPYTHON") == "1" else "cy"
        setup(lab)
        anchors = RedirAnchors(lab, [B2, B3])
        try:
            anchors.haproxy_up()
            meta["checks"] = {p: check(lab, p) for p in PATHS}
            for run in range(a.runs):
                for p in PATHS:
                    r = wrk(lab, p, a.seconds, a.conns)
                    rows[p].append(r)
                    print("run %d %-22s %8.0f req/s  errors %s  non-2xx/3xx %d"
                          % (run + 1, p, r["rps"], r["errors"], r["non2xx"]), flush=True)
        finally:
            anchors.close()
        for p in ("redirect+probe", "splice (forward)"):
            blob[p] = lb_bytes_per_blob(lab, p)
            print("blob via %-18s %s" % (p, blob[p]), flush=True)
        meta["splice_counters"] = lbctl(lab, "stats")["splice"]
    finally:
        lab.down()
    result = {"meta": meta, "wrk": rows, "blob": blob,
              "median_rps": {p: statistics.median(r["rps"] for r in rows[p]) for p in PATHS}}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "l7dsr_lab.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(RESULTS, "l7dsr_lab.md"), "w") as f:
        f.write(render(result))
    print(render(result))


def render(res):
    m = res["meta"]
    L = ["# Layer-7 DSR beside splice and HAProxy redir (bench/l7dsr_lab.py)", "",
         "%s; %d CPUs; fast path %s; %d run(s) of `wrk -t1 -c%d -d%ds -H 'Connection: close' "
         "http://HOST/media/a.txt` per path, interleaved; one lab." % (
             m["date"], m["cpus"], m["impl"], m["runs"], m["conns"], m["seconds"]), "",
         "| path | req/s (median) | runs | socket errors (sum) | non-2xx/3xx (sum) |",
         "|---|---:|---|---:|---:|"]
    for p, rs in res["wrk"].items():
        errs = sum(sum(r["errors"].values()) for r in rs)
        L.append("| %s | %.0f | %s | %d | %d |" % (p, res["median_rps"][p],
                                                 ", ".join("%.0f" % r["rps"] for r in rs), errs,
                                                 sum(r["non2xx"] for r in rs)))
    L += ["", "Bytes that crossed lbd's TAP (rx + tx) while `curl -L` fetched the 64 MiB "
          "/media/blob through the VIP (the probe goes out of mg0, not counted here):", "", "| VIP | downloaded | redirects | LB bytes | "
          "LB bytes / object |", "|---|---:|---:|---:|---:|"]
    for p, b in res["blob"].items():
        L.append("| %s | %d | %d | %d | %.4f |" % (p, b["downloaded"], b["redirects"],
                                                 b["lb_bytes"], b["lb_bytes"] / b["downloaded"]))
    c = m.get("splice_counters", {})
    L += ["", "splice counters at the end: " + ", ".join(
        "%s %d" % (k, c[k]) for k in ("probe_sent", "probe_ok", "probe_failed", "probe_cached",
                                      "redirect_sent", "redirect_unprobed", "redirect_503")
        if k in c), ""]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
