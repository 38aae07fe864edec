r"""splice against HAProxy with the same content rules, in one lab and one run.

    python3 -m bench.splice_lab [--runs 3] [--quick] [--no-tcp-inspect] [--workloads new-conns]

```
 [c1 198.18.0.10] -- rt --> splice 198.19.100.3:80 (lbd, TAP + vnet offload)  \   /blob -> big = b2 + b3
 [c2 198.18.0.11] -- rt --> haproxy-http 198.19.0.3:8080 (mg0 in P-lb)        } anything else
                       \--> haproxy-tcp  198.19.0.3:8081 (mode tcp, inspect)  /    -> default = b1
```

The same rules on every path: a request whose path starts with /blob goes to pool "big"
(b2 and b3, round robin), everything else to pool "default" (b1). threeway: a splice VIP with
a path_prefix rule (lbctl). HAProxy 1 thread: `mode http` (acl path_beg, use_backend), and
`mode tcp` with `tcp-request inspect-delay` + `tcp-request content accept if HTTP` and the
same acl. Before measuring, every path is checked: /id and /1k answered by b1, /blob by b2
and b3 (X-Backend header), one /blob's sha256.

Workloads (bench/e2e.py's, measured by its Bench): bulk = curl GETs of the 64 MiB /blob
(Gbit/s); keep-alive = `wrk -t1 -c16 -d5s /1k` (req/s); new connections = the same with
`Connection: close`. Runs interleave the paths. Per cell: CPU of lbd and haproxy (their
pids), the whole machine. Writes bench/results/splice_lab.json and splice_lab.md.

Invariants: one lab with a unique name, downed on exit (also on failure); haproxy is started
and stopped here by its pid (tools/anchors.py's Anchors.haproxy_down); every command has a
timeout, every load a fixed duration or count.
"""
import os
import subprocess
import sys
import time

from bench import e2e
from bench.e2e import (WORKLOAD_BY_NAME, WRK_CONNS, Bench, Failed, _fmt, _pct, _ratio,
                       make_row, offloads, write_report, lab_argparser, lab_runs, cpu_per_unit)
from tools.anchors import Anchors
from tools.lab import LB_MGMT, Lab, LabError, unique_name

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
VIP = "198.19.100.3"
PORT = 80
B1, B2, B3 = "198.19.0.11", "198.19.0.12", "198.19.0.13"
BACKENDS = [B1, B2, B3]
HA_HTTP_PORT, HA_TCP_PORT = 8080, 8081
PATHS = ("splice", "haproxy-http", "haproxy-tcp")
HOSTS = {"splice": VIP, "haproxy-http": "%s:%d" % (LB_MGMT, HA_HTTP_PORT),
         "haproxy-tcp": "%s:%d" % (LB_MGMT, HA_TCP_PORT)}
# splice's backend connections carry the client's address and port (see the PAWS note in
# bench/e2e.py): it gets a client of its own; haproxy connects from 198.19.0.3 itself.
CLIENT_OF = {"splice": "c1", "haproxy-http": "c2", "haproxy-tcp": "c2"}
WORKLOADS = [("bulk", WORKLOAD_BY_NAME["blob-64MiB"]),
             ("keep-alive", WORKLOAD_BY_NAME["wrk-keepalive"]),
             ("new conns", WORKLOAD_BY_NAME["wrk-close"])]
DEFAULT_POOL, BIG_POOL = {"b1"}, {"b2", "b3"}

LBCTL_SETUP = [
    ("vip", "add", "%s:%d" % (VIP, PORT), "--mode", "splice", "--scheduler", "rr"),
    ("backend", "add", "%s:%d" % (VIP, PORT), B1),
    ("backend", "add", "%s:%d" % (VIP, PORT), B2, "--pool", "big"),
    ("backend", "add", "%s:%d" % (VIP, PORT), B3, "--pool", "big"),
    ("rule", "add", "%s:%d" % (VIP, PORT), "--kind", "path_prefix", "--value", "/blob",
     "--pool", "big"),
]

HAPROXY_CFG = """\
# haproxy of bench/splice_lab.py: the splice VIP's content rules, twice
global
    nbthread 1
    maxconn 4000
    pidfile %(dir)s/haproxy.pid

defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s

# --- mode http (option http-keep-alive and http-reuse safe are the defaults) ---
frontend fe_http
    mode http
    bind %(addr)s:%(http)d
    acl blob path_beg /blob
    use_backend big_http if blob
    default_backend dflt_http
backend dflt_http
    mode http
    balance roundrobin
    server b1 %(b1)s:80
backend big_http
    mode http
    balance roundrobin
    server b2 %(b2)s:80
    server b3 %(b3)s:80

# --- mode tcp: wait for an HTTP request, route on its path, then forward bytes ---
frontend fe_tcp
    mode tcp
    bind %(addr)s:%(tcp)d
    tcp-request inspect-delay 5s
    tcp-request content accept if HTTP
    acl blob path_beg /blob
    use_backend big_tcp if blob
    default_backend dflt_tcp
backend dflt_tcp
    mode tcp
    balance roundrobin
    server b1 %(b1)s:80
backend big_tcp
    mode tcp
    balance roundrobin
    server b2 %(b2)s:80
    server b3 %(b3)s:80
"""


def haproxy_cfg(state_dir):
    return HAPROXY_CFG % {"dir": state_dir, "addr": LB_MGMT, "http": HA_HTTP_PORT,
                          "tcp": HA_TCP_PORT, "b1": B1, "b2": B2, "b3": B3}


class RuleAnchors(Anchors):
    """tools/anchors.py's HAProxy anchor with this bench's config (two frontends); stopping
    (haproxy_down, close) is the anchor's own."""

    def haproxy_config(self):
        return haproxy_cfg(self.dir)

    def haproxy_listens(self):
        return LB_MGMT, (HA_HTTP_PORT, HA_TCP_PORT)


class SpliceBench(Bench):
    """bench/e2e.py's Bench (measure, cell, check) with this bench's paths."""

    def client(self, path):
        return CLIENT_OF[path]

    def host(self, path):
        return HOSTS[path]

    def routing(self, path):
        """Which backend answered /id, /1k (x3 each) and /blob (x4, first KiB): raises Failed
        unless the first went to pool default and /blob to pool big (both members)."""
        h = self.host(path)
        seen = {}
        for obj, n in (("/id", 3), ("/1k", 3), ("/blob", 4)):
            got = []
            for _ in range(n):
                r = self.lab.exec(self.client(path), [
                    "curl", "-s", "-o", "/dev/null", "-D", "-", "--max-time", "5",
                    "-r", "0-1023", "http://%s%s" % (h, obj)], timeout=15, check=False)
                b = [line.split(":", 1)[1].strip() for line in r.stdout.splitlines()
                     if line.lower().startswith("x-backend:")]
                got.append(b[0] if b else "none")
            seen[obj] = got
        if not set(seen["/id"]) | set(seen["/1k"]) <= DEFAULT_POOL:
            raise Failed("%s: /id, /1k answered by %s, want pool default %s" % (
                path, seen["/id"] + seen["/1k"], sorted(DEFAULT_POOL)))
        if set(seen["/blob"]) != BIG_POOL:
            raise Failed("%s: /blob answered by %s, want pool big %s" % (
                path, seen["/blob"], sorted(BIG_POOL)))
        return seen


def balancer_per_unit(path, kind, runs):
    """Median CPU of the balancer's own process per unit: µs per request (wrk) or s per GB."""
    return cpu_per_unit("lbd_s" if path == "splice" else "haproxy_s", kind, runs)


def render(rows, meta):
    paths = [p for p in PATHS if any(r["path"] == p for r in rows)]
    g = {(r["label"], r["path"]): r for r in rows}
    anchors = [p for p in paths if p != "splice"]
    L = ["# splice vs HAProxy with the same content rules (one lab, one run)", "",
         "%s; %s; %s CPUs; Linux %s; HAProxy %s; lab io %s; fast path %s; %d run%s per "
         "cell, medians shown (every run in splice_lab.json)%s." % (
             meta["date"], meta["cpu_model"], meta["ncpu"], meta["kernel"],
             meta["haproxy_version"], meta["io"], meta["impl"], meta["runs"],
             "" if meta["runs"] == 1 else "s", "; QUICK (short durations)" if meta["quick"]
             else ""), "",
         "`python3 -m bench.splice_lab%s`" % meta["argv"], "",
         "Rules on every path: path starts with `/blob` -> pool big (b2, b3, round robin); "
         "anything else -> pool default (b1). Checked before measuring on every path "
         "(X-Backend of /id, /1k, /blob): %s." % "; ".join(
             "%s ok" % p for p in meta["routing"]), "",
         "## Rates (median; ratio > 1 = splice faster)", "",
         "| workload | unit | " + " | ".join(paths) + " | " +
         " | ".join("splice/%s" % a for a in anchors) + " |",
         "|---|---|" + "---:|" * (len(paths) + len(anchors))]
    for label, w in WORKLOADS:
        if not any((label, p) in g for p in paths):
            continue
        cells = [_fmt(g[(label, p)]["median"], w.unit) if (label, p) in g else "-"
                 for p in paths]
        rs = g.get((label, "splice"))
        ratios = [_ratio(rs and rs["median"], g.get((label, a)) and g[(label, a)]["median"])
                  for a in anchors]
        L.append("| %s | %s | %s | %s |" % (label, w.unit, " | ".join(cells),
                                             " | ".join(ratios)))
    L += ["", "Runs: " + "; ".join(
        "%s %s: %s" % (r["label"], r["path"], ", ".join(_fmt(v, r["unit"]) for v in
                                                      r["run_values"])) for r in rows)]
    L += ["", "## CPU (median)", "",
          "Per cell: the balancer's own process (lbd for splice, haproxy otherwise) in % of "
          "one CPU over the measurement, then its CPU per unit served (µs per request, or "
          "CPU-s per GB), then the whole machine busy % (client, router, backends, softirqs: "
          "everything on this 2-CPU host).", "",
          "| workload | " + " | ".join("%s proc %% | per unit | machine %%" % p for p in paths)
          + " |", "|---|" + "---:|---:|---:|" * len(paths)]
    for label, w in WORKLOADS:
        if not any((label, p) in g for p in paths):
            continue
        cells = []
        for p in paths:
            r = g.get((label, p))
            if not r:
                cells += ["-", "-", "-"]
                continue
            c = r["cpu"]
            proc = c.get("lbd_pct") if p == "splice" else c.get("haproxy_pct")
            cells += [_pct(proc), _fmt(r["balancer_per_unit"]) +
                      (" µs/req" if w.kind == "wrk" else " s/GB"),
                      _pct(c.get("machine_busy_pct"))]
        L.append("| %s | %s |" % (label, " | ".join(cells)))
    L += ["", "## Commands", "",
          "- threeway (lbd in P-lb, TAP with vnet headers/offload, `lbctl = python3 -m lb.cli "
          "--socket <control socket> --json`):", "", "```"]
    L += ["lbctl " + " ".join(c) for c in LBCTL_SETUP]
    L += ["```", "",
          "- clients: splice from c1 (198.18.0.10), both HAProxy paths from c2 (198.18.0.11): "
          "splice's backend connections carry the client's address and port, so a client of "
          "its own keeps backend TIME_WAIT of one path away from another (bench/e2e.py, PAWS).",
          "- bulk: `curl -s -o /dev/null -w '%%{http_code} %%{size_download} "
          "%%{time_total}' http://HOST/blob`, %d GET%s per run, Gbit/s = bytes / time_total; "
          "sha256 of one full /blob checked per path before measuring." % (
              meta["durations"]["blob_gets"], "" if meta["durations"]["blob_gets"] == 1
              else "s"),
          "- keep-alive: `wrk -t1 -c%d -d%ds --timeout 5s http://HOST/1k` (1 KiB body, pool "
          "default = b1)." % (WRK_CONNS, meta["durations"]["wrk"]),
          "- new conns: the same with `-H \"Connection: close\"` (one TCP connection per "
          "request).",
          "- HOST: " + ", ".join("%s `%s`" % (p, HOSTS[p]) for p in paths) + ".",
          "- Runs interleave the paths (run 1 of each path, then run 2 ...).",
          "", "## HAProxy config (one process, `haproxy -db -f`, in P-lb, listening on mg0)",
          "", "```", meta["haproxy_cfg"].rstrip(), "```"]
    if meta.get("haproxy_check"):
        L += ["", "`haproxy -c` said: `%s`" % meta["haproxy_check"].replace("\n", " / ")]
    errs = [(r["label"], r["path"], e) for r in rows for e in r.get("errors", [])]
    if errs or meta.get("skipped"):
        L += ["", "## Skipped, failed", ""]
        L += ["- skipped %s: %s" % kv for kv in meta.get("skipped", {}).items()]
        L += ["- %s %s: %s" % e for e in errs]
    L += ["", "The host is shared and small (2 CPUs for clients, router, balancer and three "
          "backends): compare the paths within this run, not with other runs."]
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = lab_argparser("bench.splice_lab", __doc__.split("\n")[0], RESULTS)
    ap.add_argument("--no-tcp-inspect", action="store_true",
                    help="leave out HAProxy's mode tcp + inspect-delay variant")
    ap.add_argument("--workloads", default=None,
                    help="comma-separated subset of: %s" % ", ".join(
                        l.replace(" ", "-") for l, _ in WORKLOADS))
    a = ap.parse_args(argv)
    workloads = WORKLOADS
    if a.workloads:
        want = [x.strip().replace("-", " ") for x in a.workloads.split(",") if x.strip()]
        known = [l for l, _ in WORKLOADS]
        bad = [x for x in want if x not in known]
        if bad or not want:
            raise SystemExit("--workloads: unknown %s (known: %s)" % (
                ", ".join(bad) or "(none given)", ", ".join(k.replace(" ", "-") for k in known)))
        workloads = [(l, w) for l, w in WORKLOADS if l in want]
    runs, dur = lab_runs(a)
    paths = [p for p in PATHS if not (a.no_tcp_inspect and p == "haproxy-tcp")]
    t_start = time.monotonic()
    meta = e2e.lab_meta(a, runs, dur, argv, io="tap + vnet offload",
                        haproxy_version=e2e._haproxy_version())
    name = unique_name()
    rows, skipped = [], {}
    print("splice_lab: %d paths x %d workloads x %d run(s); lab %s" % (
        len(paths), len(workloads), runs, name), flush=True)
    try:
        with Lab(name, backends=3, clients=2, io="tap", offload=True) as lab:
            topo = lab.topology
            meta["impl"] = (topo["lb"].get("status") or {}).get("impl", "?")
            meta["offloads"] = {k: v["features"] for k, v in offloads(lab).items()}
            with RuleAnchors(lab, BACKENDS) as anchors:
                bench = SpliceBench(lab, anchors, dur, "/1k")
                for cmd in LBCTL_SETUP:
                    bench.lbctl(*cmd)
                bench.pids["haproxy"] = anchors.haproxy_up()
                meta["haproxy_cfg"] = haproxy_cfg(anchors.dir)
                meta["haproxy_check"] = "haproxy -c: valid"    # haproxy_up refuses otherwise
                meta["routing"] = {}
                live = []
                for p in paths:
                    try:
                        bench.check(p, True, topo["blob"]["sha256"])
                        meta["routing"][p] = bench.routing(p)
                        live.append(p)
                        print("  %-12s ready at %-20s routing %s" % (
                            p, HOSTS[p], meta["routing"][p]), flush=True)
                    except (Failed, subprocess.SubprocessError, OSError) as e:
                        skipped[p] = str(e).strip().splitlines()[0][:300]
                        print("  %-12s SKIPPED: %s" % (p, skipped[p]), flush=True)
                results = {}
                total, k = len(live) * len(workloads) * runs, 0
                for label, w in workloads:
                    for run in range(1, runs + 1):
                        for p in live:
                            k += 1
                            r = bench.cell(p, w)
                            results.setdefault((p, label), []).append(r)
                            proc = r.get("lbd_pct") if p == "splice" else r.get("haproxy_pct")
                            shown = ("FAILED: %s" % r["error"][:120] if r["value"] is None
                                     else "%s %s  (%s %s, machine %s)" % (
                                         _fmt(r["value"], w.unit), w.unit,
                                         "lbd" if p == "splice" else "haproxy", _pct(proc),
                                         _pct(r.get("machine_busy_pct"))))
                            if r["value"] is not None and r.get("error"):
                                shown += "  ERROR: %s" % r["error"][:120]
                            print("[%d/%d] %-12s %-10s run %d/%d ... %s" % (
                                k, total, p, label, run, runs, shown), flush=True)
                env = {"date": meta["date"], "io": meta["io"], "quick": a.quick,
                       "cpu_model": meta["cpu_model"], "ncpu": meta["ncpu"],
                       "http_object": "/1k"}
                for label, w in workloads:
                    for p in live:
                        row = make_row(p, w, results[(p, label)], env)
                        row["label"] = label
                        row["balancer_per_unit"] = balancer_per_unit(p, w.kind,
                                                                     results[(p, label)])
                        rows.append(row)
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    except (LabError, Failed) as e:
        print("splice_lab failed: %s" % e, file=sys.stderr)
        return 1
    meta["skipped"] = skipped
    return write_report(a.out, "splice_lab", meta, rows, render(rows, meta), t_start)


if __name__ == "__main__":
    sys.exit(main())
