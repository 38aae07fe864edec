"""The anchors of the end-to-end benchmark (bench/e2e.py): the same traffic, balanced by
something other than threeway, in a lab that is already up. Only Lab.exec / Lab.popen are
used; the lab itself is not changed beyond what is listed here, and all of it is undone by
close() (also when a step fails half way).

```
 [c1] -- rt -------------------------------------------+-- b1 198.19.0.11
          |  kernel: nft DNAT of 198.19.101.1 (numgen     +-- b2 198.19.0.12
          |  inc for :80, jhash(saddr) for :5201);        +-- b3 198.19.0.13
          |  replies come back via rt (the backends'      |
          |  default route) and are un-NATed there        |
          +---- routed on the server net ----> [lb] mg0 198.19.0.3: haproxy, mode tcp,
                                                nbthread 1, connects from 198.19.0.3
```

Invariants:
- kernel: one nft table `twe2e_anchor` in P-rt, added by kernel_up() and deleted by
  kernel_down(). It is meant to exist only while the kernel cells run: a NAT table makes rt
  track every connection it forwards, which would tax the other paths too.
- haproxy: one process in P-lb, started here and stopped here by its pid (TERM, then KILL).
  Its config and log live in the lab's state dir. It listens on the kernel side of the LB
  namespace (mg0), which the clients reach through rt.
- P-lb has no route back to the client net (lbd never needs one); haproxy_up() adds
  198.18.0.0/24 via rt on mg0 when it is missing and haproxy_down() removes what it added.
- Every wait polls with a deadline; every command has a timeout.
"""
import os
import signal
import subprocess
import time

from tools.lab import CLIENT_NET, LB_MGMT, PORTS, RT_SERVER, LabError

KERNEL_VIP = "198.19.101.1"
HAPROXY_ADDR = LB_MGMT
NFT_TABLE = "twe2e_anchor"
HTTP, IPERF = PORTS["http"], PORTS["iperf3"]
CMD_TIMEOUT = 15
READY_TIMEOUT = 10.0

NFT_KERNEL = """\
table ip %(table)s {
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr %(vip)s tcp dport %(http)d dnat to numgen inc mod %(n)d map { %(map)s }
        # iperf3's control and data connections must meet the same server: hash the source
        ip daddr %(vip)s tcp dport %(iperf)d dnat to jhash ip saddr mod %(n)d map { %(map)s }
    }
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
    }
}
"""

HAPROXY_CFG = """\
# haproxy anchor of bench/e2e.py, written by tools/anchors.py
global
    nbthread 1
    maxconn 4000
    pidfile %(dir)s/haproxy.pid

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend http
    bind %(addr)s:%(http)d
    default_backend http
backend http
    balance roundrobin
%(http_servers)s

frontend iperf3
    bind %(addr)s:%(iperf)d
    default_backend iperf3
backend iperf3
    # iperf3's control and data connections must meet the same server
    balance source
%(iperf_servers)s
"""


def nft_kernel(backends, vip=KERNEL_VIP, table=NFT_TABLE):
    """The nft script of the kernel anchor for `backends` (real addresses)."""
    m = ", ".join("%d : %s" % (i, b) for i, b in enumerate(backends))
    return NFT_KERNEL % {"table": table, "vip": vip, "http": HTTP, "iperf": IPERF,
                         "n": len(backends), "map": m}


def haproxy_cfg(backends, state_dir, addr=HAPROXY_ADDR):
    """The haproxy config of the anchor (one thread, mode tcp)."""
    def servers(port):
        return "\n".join("    server b%d %s:%d" % (i, b, port)
                         for i, b in enumerate(backends, 1))
    return HAPROXY_CFG % {"dir": state_dir, "addr": addr, "http": HTTP, "iperf": IPERF,
                          "http_servers": servers(HTTP), "iperf_servers": servers(IPERF)}


def _listening(lab, node, addr, ports):
    out = lab.exec(node, ["ss", "-Hltn"], timeout=CMD_TIMEOUT, check=False).stdout
    have = set()
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 4:
            have.add(f[3])
    return all("%s:%d" % (addr, p) in have for p in ports)


def _tail(d, n=10):
    try:
        with open(os.path.join(d, "haproxy.log"), errors="replace") as f:
            return "\n    ".join(f.read()[-4096:].splitlines()[-n:])
    except OSError:
        return "(no log)"


class Anchors:
    """Kernel DNAT on rt and HAProxy in P-lb for `lab`; a context manager that closes both."""

    def __init__(self, lab, backends):
        self.lab = lab
        self.backends = list(backends)
        self.haproxy = None            # Popen
        self.kernel_on = False
        self.added_route = False
        self.dir = os.path.join(lab.topology["state_dir"], "anchors")

    # -- kernel ---------------------------------------------------------------------------------

    def kernel_up(self):
        if self.kernel_on:
            return
        self.lab.exec("rt", ["nft", "-f", "-"], input=nft_kernel(self.backends),
                      timeout=CMD_TIMEOUT)
        self.kernel_on = True

    def kernel_down(self):
        if not self.kernel_on:
            return
        # check=False: the table may be gone already (a lab that went down under us)
        self.lab.exec("rt", ["nft", "delete", "table", "ip", NFT_TABLE], timeout=CMD_TIMEOUT,
                      check=False)
        self.kernel_on = False

    # -- haproxy --------------------------------------------------------------------------------

    def haproxy_config(self):
        """The haproxy.cfg text (a subclass may put its own frontends here)."""
        return haproxy_cfg(self.backends, self.dir)

    def haproxy_listens(self):
        """(address, ports) haproxy_up waits for."""
        return HAPROXY_ADDR, (HTTP, IPERF)

    def haproxy_up(self):
        if self.haproxy is not None:
            return self.haproxy.pid
        os.makedirs(self.dir, exist_ok=True)
        r = self.lab.exec("lb", ["ip", "route", "get", "198.18.0.10"], timeout=CMD_TIMEOUT,
                          check=False)
        if r.returncode != 0:
            self.lab.exec("lb", ["ip", "route", "add", CLIENT_NET, "via", RT_SERVER, "dev",
                                 "mg0"], timeout=CMD_TIMEOUT)
            self.added_route = True
        cfg = os.path.join(self.dir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(self.haproxy_config())
        check = self.lab.exec("lb", ["haproxy", "-c", "-q", "-f", cfg], timeout=CMD_TIMEOUT,
                              check=False)
        if check.returncode != 0:
            raise LabError("haproxy -c %s: %s" % (cfg, (check.stderr or check.stdout).strip()))
        log = open(os.path.join(self.dir, "haproxy.log"), "ab")
        # -db: foreground, no master: the pid we hold is the one process that does the work
        self.haproxy = self.lab.popen("lb", ["haproxy", "-db", "-f", cfg],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                      start_new_session=True)
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT
        addr, ports = self.haproxy_listens()
        while not _listening(self.lab, "lb", addr, ports):
            if self.haproxy.poll() is not None:
                raise LabError("haproxy exited with %s; %s/haproxy.log:\n    %s"
                               % (self.haproxy.returncode, self.dir, _tail(self.dir)))
            if time.monotonic() > deadline:
                raise LabError("haproxy not listening on %s after %.0fs"
                               % (addr, READY_TIMEOUT))
            time.sleep(0.05)   # poll interval, bounded by the deadline
        return self.haproxy.pid

    def haproxy_down(self):
        p, self.haproxy = self.haproxy, None
        if p is not None and p.poll() is None:
            for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 3.0)):
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.added_route:
            self.lab.exec("lb", ["ip", "route", "del", CLIENT_NET, "via", RT_SERVER, "dev",
                                 "mg0"], timeout=CMD_TIMEOUT, check=False)
            self.added_route = False

    # -- both -----------------------------------------------------------------------------------

    def close(self):
        """Undo everything; every step runs even when an earlier one fails."""
        errors = []
        for step in (self.kernel_down, self.haproxy_down):
            try:
                step()
            except (LabError, OSError, subprocess.SubprocessError) as e:
                errors.append(e)
        if errors:
            raise errors[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
