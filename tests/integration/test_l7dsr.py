"""Layer-7 DSR end to end (splice redirect rules: probe, verify, redirect), HTTP and RTSP.

   c1 -- rt -- brs -+- lbd (data plane 198.19.0.2; probes leave from mg0 198.19.0.3)
                    +- b1 nginx (pool default: small objects, spliced through lbd)
                    +- b2, b3 nginx /media/ (pool media: redirected), RTSP :554 (gst-rtsp-server)

   c1: GET http://VIP/media/a.txt -> lbd holds the request, HEADs /media/a.txt on the node the
   client's address hashes to (from 198.19.0.3), answers 302 http://<node>/media/a.txt; c1
   fetches it from the node directly (the node's access log shows 198.18.0.10).
   c1: ffprobe rtsp://VIP/test -> lbd answers OPTIONS, probes the node with DESCRIBE, answers
   the DESCRIBE with 302 rtsp://<node>/test; ffprobe plays the node's stream (its width names
   the node: tools/lab.py rtsp_width).
"""
import os
import re
import signal
import time

import pytest

from tools.lab import rtsp_width

from .test_nat import counters, lbctl, traffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

VIP = "198.19.100.3"
B1, B2, B3 = "198.19.0.11", "198.19.0.12", "198.19.0.13"
NODE = {B1: "b1", B2: "b2", B3: "b3"}
CLIENT = "198.18.0.10"
PROBER = "198.19.0.3"


def media_vip(lab, probe_args=()):
    ep = VIP + ":80"
    lbctl(lab, "vip", "add", ep, "--mode", "splice")
    lbctl(lab, "backend", "add", ep, B1)
    for b in (B2, B3):
        lbctl(lab, "backend", "add", ep, b, "--pool", "media")
    lbctl(lab, "rule", "add", ep, "--kind", "path_prefix", "--value", "/media/", "--pool",
          "media", "--action", "redirect", *probe_args)


def redirect_of(lab, path):
    """(status, redirect url) of one request through the VIP, without following."""
    out = lab.exec("c1", ["curl", "-s", "-o", "/dev/null", "--max-time", "10", "-w",
                          "%{http_code} %{redirect_url}", "http://%s%s" % (VIP, path)],
                   check=False, timeout=30).stdout.split()
    return out[0], (out[1] if len(out) > 1 else "")


def media_log(lab, node):
    path = os.path.join(lab.state_dir, node, "media-access.log")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


def stop_nginx(lab, node, ip):
    os.kill(lab.topology["nodes"][node]["pids"]["nginx"], signal.SIGTERM)
    deadline = time.monotonic() + 10
    while ":80 " in lab.exec(node, ["ss", "-ltnH", "sport = :80"]).stdout + " ":
        assert time.monotonic() < deadline, "nginx on %s still listens" % node
        time.sleep(0.05)


def test_http_redirect_after_probe_persistence_failover_and_503(make_lab):
    lab = make_lab()
    media_vip(lab)
    # 302 to an up node of the pool, path and query kept
    status, url = redirect_of(lab, "/media/a.txt?v=1")
    m = re.match(r"http://(198\.19\.0\.1[23])/media/a\.txt\?v=1$", url)
    assert status == "302" and m, (status, url)
    first = m.group(1)
    # curl -L: the node's own object, fetched from the node by the client itself
    body = lab.exec("c1", ["curl", "-sfL", "--max-time", "10", "http://%s/media/b.txt" % VIP]).stdout
    assert body == "b.txt %s\n" % NODE[first]
    log = media_log(lab, NODE[first])
    assert [CLIENT, "GET", "/media/b.txt", "200"] in log
    assert [PROBER, "HEAD", "/media/b.txt", "200"] in log            # the probe, from mg0
    assert not any(line[0] == CLIENT for line in media_log(lab, NODE[B2 if first == B3 else B3]))
    # persistence: this client keeps its node
    for _ in range(10):
        assert redirect_of(lab, "/media/c.txt") == ("302", "http://%s/media/c.txt" % first)
    # small objects on the same VIP are spliced: the LB carries their bytes
    before = counters(lab)
    r = traffic(lab, "c1", "http", "http://%s/id" % VIP, "--count", "20")
    after = counters(lab)
    assert r["n_errors"] == 0 and r["backends"] == {"b1": 20}, r
    assert after["splice_established"] - before.get("splice_established", 0) >= 20
    assert after["splice_rev"] > before.get("splice_rev", 0)
    c = lbctl(lab, "stats")["splice"]
    assert c["probe_ok"] >= 12 and c["redirect_sent"] >= 12 and c["probe_failed"] == 0
    # the client's node stops serving (no health check): never a 302 to it again
    other = B2 if first == B3 else B3
    stop_nginx(lab, NODE[first], first)
    for _ in range(10):
        assert redirect_of(lab, "/media/a.txt") == ("302", "http://%s/media/a.txt" % other)
    c = lbctl(lab, "stats")["splice"]
    assert c["probe_failed"] >= 10 and c["probe_next"] >= 10
    probes = {p["backend"]: p for p in lbctl(lab, "vip", "list")[0]["probes"]}
    assert probes[first + ":80"]["last"] == "failed"
    assert "refused" in probes[first + ":80"]["detail"]
    assert probes[other + ":80"]["last"] == "ok"
    # both down: 503, never a redirect
    stop_nginx(lab, NODE[other], other)
    assert redirect_of(lab, "/media/a.txt") == ("503", "")
    assert lbctl(lab, "stats")["splice"]["redirect_503"] == 1


def test_probe_settings_name_and_cache(make_lab):
    lab = make_lab(backends=2)
    ep = VIP + ":80"
    lbctl(lab, "vip", "add", ep, "--mode", "splice")
    lbctl(lab, "backend", "add", ep, B2, "--pool", "media", "--name", "media2.example")
    lbctl(lab, "rule", "add", ep, "--kind", "path_prefix", "--value", "/media/", "--pool",
          "media", "--action", "redirect", "--probe-method", "GET", "--probe-path", "/id",
          "--probe-cache", "30")
    for _ in range(5):
        assert redirect_of(lab, "/media/a.txt") == ("302", "http://media2.example/media/a.txt")
    c = lbctl(lab, "stats")["splice"]
    assert (c["probe_sent"], c["probe_cached"], c["redirect_sent"]) == (1, 4, 5)
    # the probe asked for /id, not the request's path; curl follows the name to the node
    assert not any(line[0] == PROBER for line in media_log(lab, "b2"))
    out = lab.exec("c1", ["curl", "-sfL", "--max-time", "10", "--resolve",
                          "media2.example:80:%s" % B2, "http://%s/media/b.txt" % VIP]).stdout
    assert out == "b.txt b2\n"
    rules = lbctl(lab, "rule", "list", ep)["rules"]
    assert rules[0]["probe"] == {"method": "GET", "path": "/id", "expect": "2xx,3xx",
                                 "timeout": 1.0, "tries": 3, "cache": 30.0}


def ffprobe(lab, url, agent=None):
    """(width of the stream, the URL ffprobe was redirected to) of one real RTSP client run."""
    argv = ["timeout", "40", "ffprobe", "-v", "info", "-rtsp_transport", "tcp",
            "-show_entries", "stream=width"]
    if agent:
        argv += ["-user_agent", agent]
    r = lab.exec("c1", argv + [url], check=False, timeout=60)
    text = r.stdout + r.stderr
    width = re.search(r"^width=(\d+)$", r.stdout, re.M)
    moved = re.search(r"Redirecting to (rtsp://\S+)", text)
    assert r.returncode == 0 and width, text[-1500:]
    return int(width.group(1)), (moved.group(1) if moved else None)


def test_rtsp_describe_redirected_after_probe_and_played_from_the_node(make_lab):
    lab = make_lab(rtsp=True)
    ep = VIP + ":554"
    lbctl(lab, "vip", "add", ep, "--mode", "splice")
    lbctl(lab, "backend", "add", ep, B1, "--pool", "vlc")
    for b in (B2, B3):
        lbctl(lab, "backend", "add", ep, b, "--pool", "media")
    lbctl(lab, "rule", "add", ep, "--kind", "rtsp", "--value", "/", "--agent", "VLC",
          "--pool", "vlc")
    lbctl(lab, "rule", "add", ep, "--kind", "rtsp", "--value", "/test", "--pool", "media")
    width, moved = ffprobe(lab, "rtsp://%s/test" % VIP)
    m = re.match(r"rtsp://(198\.19\.0\.1[23])/test$", moved or "")
    assert m, moved
    node = NODE[m.group(1)]
    assert width == rtsp_width(node)                   # the description came from that node
    with open(os.path.join(lab.state_dir, node, "rtsp.log")) as f:
        log = f.read()
    assert '"client": "%s", "method": "DESCRIBE"' % PROBER in log      # the probe
    assert '"client": "%s", "method": "PLAY"' % CLIENT in log          # the client, direct
    # the pool by User-Agent: VLC's goes to b1
    width, moved = ffprobe(lab, "rtsp://%s/test" % VIP, agent="VLC/3.0.18 LibVLC/3.0.18")
    assert (width, moved) == (rtsp_width("b1"), "rtsp://%s/test" % B1)
    c = lbctl(lab, "stats")["splice"]
    assert c["rtsp_options"] >= 2 and c["rtsp_describe_redirected"] == 2
    assert c["probe_ok"] == 2 and c["redirect_503"] == 0
