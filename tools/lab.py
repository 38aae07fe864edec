"""lb-lab: threeway's network-namespace lab (up, down, show, exec), as a CLI and a Python API.

```
   client net 198.18.0.0/24 (bridge brc in P-sw)   server net 198.19.0.0/24 (bridge brs in P-sw)
 [c1 .10 eth0] --+                                +-- lbtap (tap: lbd's TAP, moved here) or
 [c2 .11 eth0] --+-- brc --[eth0 198.18.0.1]      |   lbdp -- dp0 in P-lb (afpacket, LB MAC, no IP)
                           [rt]                   +-- lbmg -- mg0 198.19.0.3 in P-lb (kernel: health checks)
                           [eth1 198.19.0.1]-- brs+-- b1 -- eth0 198.19.0.11 in P-b1  (lo: 198.19.100.0/24)
                  198.19.100.0/24 via 198.19.0.2  +-- b2 -- eth0 198.19.0.12 in P-b2
                           [eth2 198.19.200.1]    +-- b3 -- eth0 198.19.0.13 in P-b3
                                 |
   remote net 198.19.200.0/24 (bridge brr in P-sw; only with remote_backends >= 1)
                                 +-- r1 -- eth0 198.19.200.11 in P-r1  (lo: 198.19.100.0/24)
                                 +-- r2 -- eth0 198.19.200.12 in P-r2
```

With remote_backends >= 1 every backend (bN and rN) also has vxlan0 (VNI VXLAN_VNI, UDP port
VXLAN_PORT, MAC VXLAN_INNER_MAC, no remote: it only receives), the tunnel mode's way in.
P-lb's kernel then routes the remote net via rt on mg0 (health probes of rN, and the outer
packets of tunnel VIP-path probes).

Invariants:
- Every address comes from 198.18.0.0/15 and exists only inside namespaces this lab created.
  Nothing here touches the root namespace's interfaces, routes or sysctls: veths are created
  inside P-sw with their peer placed straight into the node's namespace.
- Namespaces are named P-sw, P-rt, P-lb, P-cN, P-bN (P = the lab name, [A-Za-z0-9_] only), so
  `down` of one lab matches exactly its own namespaces and two labs coexist.
- 198.19.0.2 (the LB's data-plane address) is on no kernel interface: lbd owns it and answers
  ARP itself with the lab's LB MAC, 02:74:77 + 3 bytes of sha1(P).
- A backend answers a connection the way it came: one the LB delivered to its real address
  (Ethernet source = LB MAC) goes back via 198.19.0.2 (fwmark 1 -> table 100); VIP traffic
  (dsr) and direct traffic go back via rt. Every VIP is local on the backends' lo.
- A remote backend (rN) is not on the LB's layer 2: it only gets VIP traffic in VXLAN, and
  answers everything via rt (its default route); it has no reply-via-LB rule.
- remote_backends = 0 builds the lab exactly as it was before remote backends existed (no
  route to the remote net in P-lb either).
- Every wait polls a condition with a deadline; there is no bare sleep.
- Processes are killed only by the pids found in the lab's own namespaces (`ip netns pids`).
- `down` works from the state file and from `ip netns list`, so it also cleans up a crashed
  or half-built lab; `down` of a lab that does not exist succeeds quietly.
"""
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from modes import tunnel as tunnel_mode
from modes.hop import shim as hop_shim

import click

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
STATE_ROOT = "/run/threeway"

CLIENT_NET = "198.18.0.0/24"
SERVER_NET = "198.19.0.0/24"
RT_CLIENT = "198.18.0.1"
RT_SERVER = "198.19.0.1"
LB_ADDRESS = "198.19.0.2"
LB_MGMT = "198.19.0.3"
VIP_RANGE = "198.19.100.0/24"
PORTS = {"http": 80, "echo": 9000, "iperf3": 5201}
RTSP_PORT = 554                 # Lab(rtsp=True): tools/rtsp_server.py on every backend
RTSP_PYTHON = "/usr/bin/python3"   # Debian's: python3-gi and gst-rtsp-server are importable there
MEDIA_OBJECTS = ("a.txt", "b.txt", "c.txt")   # nginx /media/<x>: "<x> <node>\n"


def rtsp_width(node):
    """The width of node bN's RTSP test stream (320 + 16 * N): ffprobe's answer names the node."""
    return 320 + 16 * int(node[1:])
REPLY_MARK = 1       # fwmark of connections the LB delivered to a backend's real address
REPLY_TABLE = 100    # their routing table: default via the LB
MAX_CLIENTS = 100    # c1 .10 .. c100 .109
MAX_BACKENDS = 100   # b1 .11 .. b100 .110
REMOTE_NET = "198.19.200.0/24"   # remote backends: routed from rt, not on the LB's L2
RT_REMOTE = "198.19.200.1"
MAX_REMOTE_BACKENDS = 100        # r1 .11 .. r100 .110

# The tunnel mode's VXLAN: what the LB's encapsulation and every backend's VXLAN device agree
# on. The inner frame's destination MAC is this fixed MAC (02: locally administered, then
# "twvxl"), which each backend's VXLAN device carries, so the backend takes the decapsulated
# frame as its own without the LB knowing any per-backend inner MAC.
# the tunnel mode's own constants (modes/tunnel.py, fastpath/defs.py): one home
VXLAN_VNI = tunnel_mode.DEFAULT_VNI
VXLAN_PORT = tunnel_mode.VXLAN_PORT      # IANA's VXLAN port (Linux's own default is 8472)
VXLAN_INNER_MAC = tunnel_mode.INNER_MAC_TEXT
VXLAN_DEV = "vxlan0"             # its name on the lab's backends

# The deterministic /blob: SHAKE-256 of a fixed seed (a standard, so the bytes never depend on
# a library version), generated once and reused while its sha256 matches.
BLOB_PATH = "/var/tmp/threeway-blob-64M"
BLOB_SIZE = 64 << 20
BLOB_SEED = b"threeway-blob-v1"
BLOB_SHA256 = "dfd47fa30b23ccb86f11aafa609f05c555e2a05782bc377103330f475888fa23"

NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,20}$")
NODE_RE = re.compile(r"^(sw|rt|lb|c[1-9][0-9]*|b[1-9][0-9]*|r[1-9][0-9]*)$")

LBD_READY_TIMEOUT = 20.0
SERVERS_READY_TIMEOUT = 15.0


class LabError(Exception):
    """Something the lab could not do; the message says what and, when it helps, why."""


def unique_name():
    """A short prefix no other lab is likely to use ("t" + 5 hex digits), for tests."""
    return "t" + secrets.token_hex(3)[:5]


def lb_mac(name):
    """The LB's data-plane MAC of lab `name`: 02:74:77 + 3 bytes of sha1(name)."""
    h = hashlib.sha1(name.encode()).digest()
    return "02:74:77:%02x:%02x:%02x" % (h[0], h[1], h[2])


def _mac(name, node, ifname):
    # Deterministic MACs make captures of two runs comparable. 0x06: locally administered,
    # unicast, and never equal to an LB MAC (which starts with 0x02).
    h = hashlib.sha1(("%s/%s/%s" % (name, node, ifname)).encode()).digest()
    return "06:" + ":".join("%02x" % b for b in h[:5])


def client_ip(i):
    return str(ipaddress.IPv4Address("198.18.0.0") + 9 + i)


def backend_ip(i):
    return str(ipaddress.IPv4Address("198.19.0.0") + 10 + i)


def remote_ip(i):
    return str(ipaddress.IPv4Address("198.19.200.0") + 10 + i)


def vxlan_commands(local, dev=VXLAN_DEV):
    """`ip -batch` lines that give a backend whose underlay address is `local` the VXLAN
    device the tunnel mode sends to. No remote: it only receives; nolearning: the inner
    source MACs of the LB's frames never enter its FDB."""
    return ("link add name %s address %s type vxlan id %d dstport %d local %s nolearning\n"
            "link set %s up\n" % (dev, VXLAN_INNER_MAC, VXLAN_VNI, VXLAN_PORT, local, dev))


# --- small process helpers ------------------------------------------------------------------

def _run(argv, input=None, timeout=30, check=True):
    try:
        p = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LabError("timed out after %ss: %s" % (timeout, " ".join(argv)))
    except FileNotFoundError:
        raise LabError("command not found: %s" % argv[0])
    if check and p.returncode != 0:
        msg = (p.stderr or p.stdout).strip()
        if input:
            msg += "\n  input was:\n    " + "\n    ".join(input.strip().splitlines())
        raise LabError("failed (exit %d): %s\n  %s" % (p.returncode, " ".join(argv), msg))
    return p


def _wait(what, pred, timeout, detail=None):
    """Poll pred() until it returns something true, or raise LabError after `timeout` s."""
    deadline = time.monotonic() + timeout
    interval = 0.01
    while True:
        result = pred()
        if result:
            return result
        if time.monotonic() >= deadline:
            extra = detail() if detail else ""
            raise LabError("timed out after %.0fs waiting for %s%s" % (timeout, what, extra))
        time.sleep(interval)   # poll interval, bounded by the deadline above
        interval = min(interval * 2, 0.1)


def _tail(path, lines=20):
    try:
        with open(path, errors="replace") as f:
            text = f.read()[-8192:]
    except OSError:
        return "(no log at %s)" % path
    return "\n    ".join(text.splitlines()[-lines:]) or "(empty log %s)" % path


def _alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _netns_list():
    p = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def _netns_pids(ns):
    p = _run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in p.stdout.split() if x.isdigit()]


def ensure_blob(path=BLOB_PATH):
    """The deterministic 64 MiB blob at `path`: reused while its sha256 matches, else rebuilt
    (into a temporary file renamed into place, so labs coming up at once never see half a
    file). Returns its sha256."""
    stamp = path + ".sha256"
    try:
        st = os.stat(path)
        with open(stamp) as f:
            if f.read().split() == [BLOB_SHA256, str(st.st_size), str(st.st_mtime_ns)]:
                return BLOB_SHA256
    except OSError:
        pass
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        ok = h.hexdigest() == BLOB_SHA256
    except OSError:
        ok = False
    if not ok:
        data = hashlib.shake_256(BLOB_SEED).digest(BLOB_SIZE)
        if hashlib.sha256(data).hexdigest() != BLOB_SHA256:
            raise LabError("blob generator disagrees with BLOB_SHA256 (changed seed or size?)")
        tmp = "%s.%s.tmp" % (path, secrets.token_hex(4))
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    st = os.stat(path)
    tmp = "%s.%s.tmp" % (stamp, secrets.token_hex(4))
    with open(tmp, "w") as f:
        f.write("%s %d %d\n" % (BLOB_SHA256, st.st_size, st.st_mtime_ns))
    os.replace(tmp, stamp)
    return BLOB_SHA256


# --- the lab --------------------------------------------------------------------------------

class Lab:
    """One lab. `up()` builds it (and tears down what it made if any step fails), `down()`
    removes it; as a context manager it is downed on exit, also on failure.

    Lab(name) with the default arguments also attaches to a lab that is already up (e.g. made
    by `lb-lab up`): `.topology` then comes from its state file.
    """

    def __init__(self, name="tw", backends=3, clients=1, io="tap", start_lbd=True, offload=True,
                 workers=1, remote_backends=0, client_hop_mtu=None, rtsp=False, lbd_extra="",
                 hop_shim=True):
        if not NAME_RE.match(name or ""):
            raise LabError("lab name %r: use 1-20 characters of [A-Za-z0-9_]" % (name,))
        if not 1 <= backends <= MAX_BACKENDS:
            raise LabError("backends: must be 1..%d, got %r" % (MAX_BACKENDS, backends))
        if not 1 <= clients <= MAX_CLIENTS:
            raise LabError("clients: must be 1..%d, got %r" % (MAX_CLIENTS, clients))
        if not 0 <= remote_backends <= MAX_REMOTE_BACKENDS:
            raise LabError("remote_backends: must be 0..%d, got %r"
                           % (MAX_REMOTE_BACKENDS, remote_backends))
        if io not in ("tap", "afpacket"):
            raise LabError("io: must be tap or afpacket, got %r" % (io,))
        if not (isinstance(workers, int) and 1 <= workers <= 16) or workers > 1 and io != "tap":
            raise LabError("workers: 1..16, more than 1 only with io tap; got %r" % (workers,))
        if client_hop_mtu is not None and not (isinstance(client_hop_mtu, int)
                                               and 576 <= client_hop_mtu < 1500):
            raise LabError("client_hop_mtu: 576..1499 or None, got %r" % (client_hop_mtu,))
        self.name = name
        # the client side of the path has a smaller hop (a VPN, a PPPoE line): rt's client
        # interface has this MTU, and the clients, which know it for what they send (their
        # route's mtu), still announce the MSS of their own 1500-byte link (advmss 1460), so
        # what comes from the servers must be shrunk by path MTU discovery: rt answers it with
        # ICMP fragmentation needed, addressed to the source it sees (a VIP)
        self.client_hop_mtu = client_hop_mtu
        self.n_backends = backends
        self.n_clients = clients
        self.n_remote = remote_backends
        self.io = io
        # vnet headers (tap, afpacket): GSO superframes through lbd. True is lbd's default
        # ([io] offload left out of its config); False writes offload = false (the slow path)
        self.offload = offload
        self.workers = workers          # lbd's [io] workers: data-plane threads (TAP queues)
        # an RTSP server (tools/rtsp_server.py, gst-rtsp-server) on every backend, port 554
        self.rtsp = bool(rtsp)
        self.start_lbd = start_lbd
        self.lbd_extra = lbd_extra      # TOML appended to lbd's config (e.g. a [metrics] table)
        # hop's backend shim (modes/hop/shim.py) on every b1..bN's eth0, pinned in a bpffs of
        # the lab's own (state_dir/bpf, unmounted by down); False: backends without it
        self.hop_shim = hop_shim
        self.state_dir = os.path.join(STATE_ROOT, "lab-" + name)
        self.state_file = os.path.join(self.state_dir, "state.json")
        self.bpf_dir = os.path.join(self.state_dir, "bpf")
        self._topology = None
        self._procs = []

    # -- naming and access --------------------------------------------------------------------

    def ns(self, node):
        """Namespace of `node` (sw, rt, lb, c1.., b1.., r1..)."""
        if not NODE_RE.match(node):
            raise LabError("unknown node %r (sw, rt, lb, c1.., b1.., r1..)" % (node,))
        return "%s-%s" % (self.name, node)

    def _own_namespaces(self):
        """Namespaces of this lab that exist now (matched exactly, never by bare prefix)."""
        pat = re.compile(r"^%s-(sw|rt|lb|c[1-9][0-9]*|b[1-9][0-9]*|r[1-9][0-9]*)$"
                         % re.escape(self.name))
        return [n for n in _netns_list() if pat.match(n)]

    def exists(self):
        return os.path.exists(self.state_dir) or bool(self._own_namespaces())

    @property
    def topology(self):
        if self._topology is None:
            try:
                with open(self.state_file) as f:
                    state = json.load(f)
            except (OSError, ValueError):
                raise LabError("lab %s is not up (no state in %s)" % (self.name, self.state_file))
            if state.get("status") != "up":
                raise LabError("lab %s is not up (status %s)" % (self.name, state.get("status")))
            self._topology = state["topology"]
        return self._topology

    def exec(self, node, argv, timeout=60, check=True, capture=True, text=True, **kw):
        """Run argv in node's namespace; returns CompletedProcess (CalledProcessError if check
        and it fails, TimeoutExpired after `timeout`). text=False for bytes in/out."""
        cmd = ["ip", "netns", "exec", self.ns(node)] + list(argv)
        return subprocess.run(cmd, timeout=timeout, check=check, capture_output=capture,
                              text=text, **kw)

    def popen(self, node, argv, **kw):
        """Start argv in node's namespace; returns the Popen (killed by down() at the latest)."""
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(node)] + list(argv), **kw)
        self._procs.append(p)
        return p

    def __enter__(self):
        self.up()
        return self

    def __exit__(self, *exc):
        self.down()
        return False

    # -- up -----------------------------------------------------------------------------------

    def up(self):
        """Build the lab; returns the topology dict. On any failure removes what it made."""
        if self.exists():
            raise LabError("lab %s already exists (state %s or namespaces %s-*); "
                           "run: lb-lab down --name %s" % (self.name, self.state_dir,
                                                          self.name, self.name))
        try:
            self._build()
        except BaseException as e:
            try:
                self.down()
            except Exception as e2:  # keep the first error; say that cleanup failed too
                raise LabError("up failed: %s\n(and cleanup failed: %s)" % (e, e2)) from e
            if isinstance(e, subprocess.CalledProcessError):
                raise LabError("up failed: %s: %s" % (e, e.stderr)) from e
            if isinstance(e, (LabError, OSError)):
                raise LabError("up of lab %s failed: %s" % (self.name, e)) from e
            raise
        return self._topology

    def _save(self, status, topology=None, extra=None):
        state = {"name": self.name, "status": status, "namespaces": self._namespaces(),
                 "topology": topology}
        state.update(extra or {})
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=2)
        os.replace(tmp, self.state_file)

    def _namespaces(self):
        return ([self.ns(n) for n in ("sw", "rt", "lb")]
                + [self.ns("c%d" % i) for i in range(1, self.n_clients + 1)]
                + [self.ns("b%d" % i) for i in range(1, self.n_backends + 1)]
                + [self.ns("r%d" % i) for i in range(1, self.n_remote + 1)])

    def _per_ns(self, steps):
        """Run {ns: [argv or (argv, input)]}: namespaces in parallel, steps in order."""
        def run_list(items):
            for item in items:
                argv, inp = item if isinstance(item, tuple) else (item, None)
                _run(argv, input=inp)
        with ThreadPoolExecutor(max_workers=min(16, len(steps) or 1)) as ex:
            for fut in [ex.submit(run_list, items) for items in steps.values()]:
                fut.result()

    def _build(self):
        t0 = time.monotonic()
        P = self.name
        os.makedirs(self.state_dir, mode=0o755)
        self._save("building")
        blob_sha = ensure_blob()
        mac = lambda node, ifname: _mac(P, node, ifname)  # noqa: E731
        lbmac = lb_mac(P)
        clients = ["c%d" % i for i in range(1, self.n_clients + 1)]
        backends = ["b%d" % i for i in range(1, self.n_backends + 1)]
        remotes = ["r%d" % i for i in range(1, self.n_remote + 1)]
        sw, rt, lb = self.ns("sw"), self.ns("rt"), self.ns("lb")

        # 1. namespaces, in one ip process (this only adds names under /run/netns)
        _run(["ip", "-batch", "-"],
             input="".join("netns add %s\n" % n for n in self._namespaces()))

        # 2. sysctls that must hold before any interface exists (IPv6 off: the bridges stay
        #    quiet, no link-local addresses, no ND/MLD chatter)
        sysctl = lambda ns, *kv, e=False: (["ip", "netns", "exec", ns, "sysctl", "-q"]  # noqa
                                           + (["-e"] if e else []) + ["-w"] + list(kv))
        no6 = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
        steps = {ns: [sysctl(ns, *no6)] for ns in self._namespaces()}
        # bridge-nf sysctls exist only with br_netfilter loaded; -e skips them when absent
        steps[sw] = [sysctl(sw, *no6, "net.bridge.bridge-nf-call-iptables=0",
                            "net.bridge.bridge-nf-call-ip6tables=0",
                            "net.bridge.bridge-nf-call-arptables=0", e=True)]
        steps[rt].append(sysctl(rt, "net.ipv4.ip_forward=1",
                                "net.ipv4.conf.all.rp_filter=0",
                                "net.ipv4.conf.default.rp_filter=0",
                                "net.ipv4.conf.all.send_redirects=0",
                                "net.ipv4.conf.default.send_redirects=0"))
        for c in clients:
            steps[self.ns(c)].append(sysctl(self.ns(c), "net.ipv4.ip_local_port_range=1024 65000",
                                            "net.ipv4.tcp_tw_reuse=1"))
        for b in backends:
            steps[self.ns(b)].append(sysctl(
                self.ns(b), "net.ipv4.tcp_fwmark_accept=1",
                "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.default.arp_ignore=1", "net.ipv4.conf.default.arp_announce=2",
                "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"))
        for r in remotes:
            # as a dsr backend, although nobody on its L2 asks for a VIP: the same host must
            # be able to serve a VIP both ways
            steps[self.ns(r)].append(sysctl(
                self.ns(r),
                "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.default.arp_ignore=1", "net.ipv4.conf.default.arp_announce=2",
                "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"))
        self._per_ns(steps)

        # 3. the switch: two bridges, and every veth made inside P-sw with its peer put
        #    straight into the node's namespace (never through the root namespace)
        cmds = []
        bridges = ("brc", "brs") + (("brr",) if remotes else ())
        ports = {br: [] for br in bridges}
        for br in bridges:
            cmds.append("link add name %s address %s type bridge stp_state 0 forward_delay 0 "
                        "mcast_snooping 0" % (br, mac("sw", br)))

        def veth(port, br, node, peer, peer_mac=None):
            cmds.append("link add name %s address %s type veth peer name %s address %s "
                        "netns %s" % (port, mac("sw", port), peer,
                                      peer_mac or mac(node, peer), self.ns(node)))
            cmds.append("link set %s master %s up" % (port, br))
            ports[br].append(port)
        for c in clients:
            veth(c, "brc", c, "eth0")
        veth("rtc", "brc", "rt", "eth0")
        veth("rts", "brs", "rt", "eth1")
        veth("lbmg", "brs", "lb", "mg0")
        if self.io == "afpacket":
            # dp0 carries the LB MAC, so the bridge's view and lbd's frames agree
            veth("lbdp", "brs", "lb", "dp0", peer_mac=lbmac)
        for b in backends:
            veth(b, "brs", b, "eth0")
        if remotes:
            veth("rtr", "brr", "rt", "eth2")
        for r in remotes:
            veth(r, "brr", r, "eth0")
        cmds += ["link set %s up" % br for br in bridges]
        _run(["ip", "-n", sw, "-batch", "-"], input="\n".join(cmds) + "\n")

        # 4. addresses, routes, per-interface sysctls, offloads, nftables
        steps = {}
        hop = self.client_hop_mtu
        for i, c in enumerate(clients, 1):
            steps[self.ns(c)] = [(["ip", "-n", self.ns(c), "-batch", "-"],
                                  "link set lo up\n"
                                  "addr add %s/24 dev eth0\n"
                                  "link set eth0 up\n"
                                  "route add default via %s%s\n"
                                  % (client_ip(i), RT_CLIENT,
                                     " mtu lock %d advmss 1460" % hop if hop else ""))]
        steps[rt] = [(["ip", "-n", rt, "-batch", "-"],
                      "link set lo up\n"
                      "addr add %s/24 dev eth0\naddr add %s/24 dev eth1\n"
                      "link set eth0 up\nlink set eth1 up\n"
                      "route add %s via %s\n" % (RT_CLIENT, RT_SERVER, VIP_RANGE, LB_ADDRESS)
                      + ("link set eth0 mtu %d\n" % hop if hop else ""))]
        if remotes:
            # eth2 inherits rp_filter 0 from default (step 2), so rt forwards between all three
            steps[rt].append((["ip", "-n", rt, "-batch", "-"],
                              "addr add %s/24 dev eth2\nlink set eth2 up\n" % RT_REMOTE))
        lb_cmds = "link set lo up\naddr add %s/24 dev mg0\nlink set mg0 up\n" % LB_MGMT
        if remotes:
            # the kernel of P-lb reaches the remote backends through rt: health probes of
            # their own addresses, and the outer packets of tunnel VIP-path probes
            lb_cmds += "route add %s via %s dev mg0\n" % (REMOTE_NET, RT_SERVER)
        if self.io == "afpacket":
            # no IP and ARP off: the kernel of P-lb never answers on the data plane
            lb_cmds += "link set dp0 arp off\nlink set dp0 up\n"
        steps[lb] = [(["ip", "-n", lb, "-batch", "-"], lb_cmds)]
        if self.io == "afpacket" and not self.offload:
            # offloads off on both ends: the raw socket sees <= 1514-byte frames with full
            # checksums; features a device cannot change are ignored (exit status too).
            # With offload, dp0 and lbdp keep the kernel's defaults (TSO/GSO/csum on, GRO
            # off): lbd reads vnet headers, GSO superframes arrive as their senders made them
            off = "rx off tx off tso off gso off gro off sg off"
            steps[lb].append(["sh", "-c", "ip netns exec %s ethtool -K dp0 %s || true"
                              % (lb, off)])
            steps[sw] = [["sh", "-c", "ip netns exec %s ethtool -K lbdp %s || true"
                          % (sw, off)]]
        for i, b in enumerate(backends, 1):
            ns, real = self.ns(b), backend_ip(i)
            nft = NFT_BACKEND % {"lbmac": lbmac, "real": real, "mark": REPLY_MARK}
            steps[ns] = [
                (["ip", "-n", ns, "-batch", "-"],
                 "link set lo up\n"
                 "addr add %s dev lo\n"
                 "addr add %s/24 dev eth0\n"
                 "link set eth0 up\n"
                 "route add default via %s\n"
                 "rule add fwmark %d table %d\n"
                 "route add default via %s dev eth0 table %d\n"
                 % (VIP_RANGE, real, RT_SERVER, REPLY_MARK, REPLY_TABLE, LB_ADDRESS,
                    REPLY_TABLE)),
                sysctl(ns, "net.ipv4.conf.eth0.arp_ignore=1", "net.ipv4.conf.eth0.arp_announce=2",
                       "net.ipv4.conf.eth0.rp_filter=0"),
                (["ip", "netns", "exec", ns, "nft", "-f", "-"], nft),
            ]
            if remotes:
                # the tunnel's way in too, so one VIP can have dsr and tunnel backends
                steps[ns] += [(["ip", "-n", ns, "-batch", "-"], vxlan_commands(real)),
                              sysctl(ns, "net.ipv4.conf.%s.rp_filter=0" % VXLAN_DEV)]
        for i, r in enumerate(remotes, 1):
            ns, real = self.ns(r), remote_ip(i)
            steps[ns] = [
                (["ip", "-n", ns, "-batch", "-"],
                 "link set lo up\n"
                 "addr add %s dev lo\n"
                 "addr add %s/24 dev eth0\n"
                 "link set eth0 up\n"
                 "route add default via %s\n" % (VIP_RANGE, real, RT_REMOTE)
                 + vxlan_commands(real)),
                # the decapsulated frame arrives on vxlan0 from a client that is routed via
                # eth0: rp_filter 1 would drop it
                sysctl(ns, "net.ipv4.conf.eth0.arp_ignore=1", "net.ipv4.conf.eth0.arp_announce=2",
                       "net.ipv4.conf.eth0.rp_filter=0", "net.ipv4.conf.lo.rp_filter=0",
                       "net.ipv4.conf.%s.rp_filter=0" % VXLAN_DEV),
            ]
        self._per_ns(steps)

        # 5. servers on every backend, then wait until each listens
        pids = {}
        for b in backends + remotes:
            pids[b] = self._start_servers(b)
        self._save("building", extra={"pids": pids})
        for b in backends + remotes:
            self._wait_servers(b)

        # 5b. hop's shim on every backend on the LB's layer 2
        shims = {}
        if self.hop_shim:
            hop_shim.mount_bpffs(self.bpf_dir)
            for b in backends:
                pins = os.path.join(self.bpf_dir, b)
                try:
                    hop_shim.install(self.ns(b), "eth0", pins)
                except hop_shim.ShimError as e:
                    raise LabError("hop shim on %s: %s" % (b, e)) from e
                shims[b] = {"interface": "eth0", "pins": pins,
                            "attached": hop_shim.installed(self.ns(b), "eth0")}

        # 6. lbd
        sock = os.path.join(self.state_dir, "lbd.sock")
        cfg = os.path.join(self.state_dir, "lbd.toml")
        log = os.path.join(self.state_dir, "lbd.log")
        dp_if = "lbtap" if self.io == "tap" else "dp0"
        with open(cfg, "w") as f:
            f.write(LBD_TOML % {"name": P, "io": self.io, "ifname": dp_if, "addr": LB_ADDRESS,
                                "offload": "" if self.offload else "offload = false\n",
                                "workers": self.workers,
                                "mac": lbmac, "gw": RT_SERVER, "sock": sock})
            if self.lbd_extra:
                f.write("\n" + self.lbd_extra.strip() + "\n")
        lbd_pid, lbd_status = None, None
        if self.start_lbd:
            lbd_pid, lbd_status = self._start_lbd(cfg, sock, log)
            pids["lb"] = {"lbd": lbd_pid}
            self._save("building", extra={"pids": pids})
            lio = (lbd_status or {}).get("io", {})
            if bool(lio.get("offload")) != bool(self.offload):
                # the veths were set up for the other path (afpacket: offloads off or on)
                raise LabError("lbd runs with offload %s (%s), the lab was built for %s"
                               % ("on" if lio.get("offload") else "off", lio.get("offload_why"),
                                  "on" if self.offload else "off"))
            if self.io == "tap":
                self._attach_tap()
                ports["brs"].append("lbtap")

        # 7. topology
        nodes = {}
        nodes["sw"] = {"ns": sw, "role": "switch",
                       "interfaces": [{"name": br, "kind": "bridge", "mac": mac("sw", br),
                                       "ports": ports[br]} for br in bridges]}
        nodes["rt"] = {"ns": rt, "role": "router",
                       "interfaces": [
                           {"name": "eth0", "address": RT_CLIENT, "prefix": 24,
                            "mac": mac("rt", "eth0"), "bridge": "brc", "switch_port": "rtc"},
                           {"name": "eth1", "address": RT_SERVER, "prefix": 24,
                            "mac": mac("rt", "eth1"), "bridge": "brs", "switch_port": "rts"}],
                       "routes": {VIP_RANGE: LB_ADDRESS}}
        if remotes:
            nodes["rt"]["interfaces"].append(
                {"name": "eth2", "address": RT_REMOTE, "prefix": 24, "mac": mac("rt", "eth2"),
                 "bridge": "brr", "switch_port": "rtr"})

        def vxlan(local):
            return {"device": VXLAN_DEV, "vni": VXLAN_VNI, "port": VXLAN_PORT,
                    "mac": VXLAN_INNER_MAC, "local": local}
        lb_ifs = [{"name": "mg0", "address": LB_MGMT, "prefix": 24, "mac": mac("lb", "mg0"),
                   "bridge": "brs", "switch_port": "lbmg", "kernel": True}]
        if self.io == "afpacket":
            lb_ifs.append({"name": "dp0", "address": None, "mac": lbmac, "bridge": "brs",
                           "switch_port": "lbdp", "kernel": False})
        nodes["lb"] = {"ns": lb, "role": "lb", "address": LB_ADDRESS, "mac": lbmac,
                       "interfaces": lb_ifs}
        for i, c in enumerate(clients, 1):
            nodes[c] = {"ns": self.ns(c), "role": "client", "address": client_ip(i),
                        "interface": "eth0", "mac": mac(c, "eth0"), "gateway": RT_CLIENT,
                        "interfaces": [{"name": "eth0", "address": client_ip(i), "prefix": 24,
                                        "mac": mac(c, "eth0"), "bridge": "brc",
                                        "switch_port": c}]}
        for i, b in enumerate(backends, 1):
            nodes[b] = {"ns": self.ns(b), "role": "backend", "address": backend_ip(i),
                        "interface": "eth0", "mac": mac(b, "eth0"), "gateway": RT_SERVER,
                        "reply_via_lb": {"fwmark": REPLY_MARK, "table": REPLY_TABLE},
                        "pids": pids[b],
                        "hop_shim": shims.get(b),
                        "interfaces": [{"name": "eth0", "address": backend_ip(i), "prefix": 24,
                                        "mac": mac(b, "eth0"), "bridge": "brs",
                                        "switch_port": b},
                                       {"name": "lo", "address": VIP_RANGE, "prefix": 24}]}
            if remotes:
                nodes[b]["vxlan"] = vxlan(backend_ip(i))
                nodes[b]["interfaces"].append({"name": VXLAN_DEV, "address": None,
                                               "mac": VXLAN_INNER_MAC})
        for i, r in enumerate(remotes, 1):
            nodes[r] = {"ns": self.ns(r), "role": "remote_backend", "address": remote_ip(i),
                        "interface": "eth0", "mac": mac(r, "eth0"), "gateway": RT_REMOTE,
                        "vxlan": vxlan(remote_ip(i)),
                        "pids": pids[r],
                        "interfaces": [{"name": "eth0", "address": remote_ip(i), "prefix": 24,
                                        "mac": mac(r, "eth0"), "bridge": "brr",
                                        "switch_port": r},
                                       {"name": "lo", "address": VIP_RANGE, "prefix": 24},
                                       {"name": VXLAN_DEV, "address": None,
                                        "mac": VXLAN_INNER_MAC}]}
        self._topology = {
            "name": P,
            "state_dir": self.state_dir,
            "io": self.io,
            "offload": self.offload,
            "workers": self.workers,
            "vip_range": VIP_RANGE,
            "control_socket": sock,
            "lb": {"ns": lb, "address": LB_ADDRESS, "mac": lbmac, "gateway": RT_SERVER,
                   "management": {"interface": "mg0", "address": LB_MGMT,
                                  "mac": mac("lb", "mg0")},
                   "interface": dp_if,
                   "interface_ns": sw if self.io == "tap" else lb,
                   "bridge": "brs",
                   "switch_port": "lbtap" if self.io == "tap" else "lbdp",
                   "data_plane_present": self.start_lbd or self.io == "afpacket",
                   "control_socket": sock, "config": cfg, "log": log,
                   "pid": lbd_pid, "running": bool(self.start_lbd),
                   "status": lbd_status},
            "blob": {"path": "/blob", "file": BLOB_PATH, "size": BLOB_SIZE, "sha256": blob_sha},
            "media": {"path": "/media/", "objects": list(MEDIA_OBJECTS),
                      "log": "<state dir>/<node>/media-access.log"},
            "rtsp": ({"port": RTSP_PORT, "path": "/test",
                      "widths": {b: rtsp_width(b) for b in backends}} if self.rtsp else None),
            "ports": dict(PORTS),
            "clients": clients,
            "backends": backends,
            "remote_backends": remotes,
            "remote_net": REMOTE_NET if remotes else None,
            "client_hop_mtu": self.client_hop_mtu,
            "vxlan": ({"device": VXLAN_DEV, "vni": VXLAN_VNI, "port": VXLAN_PORT,
                       "inner_mac": VXLAN_INNER_MAC} if remotes else None),
            "nodes": nodes,
            "namespaces": self._namespaces(),
            "up_seconds": round(time.monotonic() - t0, 3),
        }
        self._save("up", self._topology, extra={"pids": pids})
        return self._topology

    def _start_servers(self, b):
        d = os.path.join(self.state_dir, b)
        os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
        with open(os.path.join(HERE, "nginx.conf.tmpl")) as f:
            conf = f.read()
        for k, v in {"NODE": b, "DIR": d, "BLOB": BLOB_PATH}.items():
            conf = conf.replace("@%s@" % k, v)
        # /media/: small objects that say which node served them (layer-7 DSR tests), with an
        # access log of their own that shows who fetched them
        os.makedirs(os.path.join(d, "media"), exist_ok=True)
        for obj in MEDIA_OBJECTS:
            with open(os.path.join(d, "media", obj), "w") as f:
                f.write("%s %s\n" % (obj, b))
        conf_path = os.path.join(d, "nginx.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        out = {}
        for what, argv in (
                ("nginx", ["nginx", "-c", conf_path, "-p", d,
                           "-e", os.path.join(d, "nginx-error.log")]),
                ("echo", [sys.executable, "-m", "tools.echo_server", "--port", str(PORTS["echo"]),
                          "--name", b]),
                ("iperf3", ["iperf3", "-s", "-p", str(PORTS["iperf3"])])) + ((
                ("rtsp", [RTSP_PYTHON, os.path.join(HERE, "rtsp_server.py"), "--port",
                          str(RTSP_PORT), "--name", b, "--width", str(rtsp_width(b))]),)
                if self.rtsp else ()):
            logf = open(os.path.join(d, what + ".log"), "ab")
            p = self.popen(b, argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                           cwd=REPO, start_new_session=True)
            logf.close()
            out[what] = p.pid
        return out

    def _wait_servers(self, b):
        ns, d = self.ns(b), os.path.join(self.state_dir, b)
        want = {("tcp", PORTS["http"]), ("tcp", PORTS["echo"]), ("tcp", PORTS["iperf3"]),
                ("udp", PORTS["echo"])} | ({("tcp", RTSP_PORT)} if self.rtsp else set())
        mine = [p for p in self._procs if p.args[3] == ns]

        def ready():
            for p in mine:
                if p.poll() is not None:
                    what = "nginx" if "nginx" in p.args else ("iperf3" if "iperf3" in p.args
                                                              else "rtsp" if RTSP_PYTHON in p.args
                                                              else "echo")
                    raise LabError("%s on %s exited with %s; log:\n    %s"
                                   % (what, b, p.returncode,
                                      _tail(os.path.join(d, what + ".log"))
                                      + ("\n    " + _tail(os.path.join(d, "nginx-error.log"))
                                         if what == "nginx" else "")))
            out = _run(["ip", "netns", "exec", ns, "ss", "-Hltun"], check=False).stdout
            have = set()
            for line in out.splitlines():
                f = line.split()
                if len(f) >= 5:
                    have.add((f[0], int(f[4].rsplit(":", 1)[1])))
            return want <= have
        _wait("servers on %s (http :80, echo :9000 tcp+udp, iperf3 :5201)" % b, ready,
              SERVERS_READY_TIMEOUT)

    def _attach_tap(self):
        """A TAP cannot join a bridge in another namespace: move lbd's next to brs. lbd's fd
        keeps working after the move."""
        lb, sw = self.ns("lb"), self.ns("sw")
        _wait("lbd's TAP lbtap in %s" % lb,
              lambda: _run(["ip", "-n", lb, "link", "show", "lbtap"],
                           check=False).returncode == 0, 5.0)
        _run(["ip", "-n", lb, "link", "set", "lbtap", "netns", sw])
        _run(["ip", "-n", sw, "link", "set", "lbtap", "master", "brs", "up"])

    def restart_lbd(self, sig=signal.SIGTERM):
        """Stop lbd with `sig` (SIGKILL: a crash) and start it again with the same config
        file, as an operator would; its TAP goes with it and the new one is attached where
        the old one was. Returns the seconds from the signal to lbd answering status again.
        The topology's pid is updated."""
        t = self.topology
        pid, cfg = t["lb"]["pid"], t["lb"]["config"]
        t0 = time.monotonic()
        os.kill(pid, sig)
        _wait("lbd %d to exit" % pid, lambda: not _alive(pid) or self._reap(), 10.0)
        if self.io == "tap":
            _wait("the old TAP to go", lambda: _run(
                ["ip", "-n", self.ns("sw"), "link", "show", "lbtap"],
                check=False).returncode != 0, 5.0)
        new_pid, status = self._start_lbd(cfg, t["lb"]["control_socket"], t["lb"]["log"])
        if self.io == "tap":
            self._attach_tap()
        t["lb"]["pid"], t["lb"]["status"] = new_pid, status
        try:
            with open(self.state_file) as f:
                pids = json.load(f).get("pids", {})
        except (OSError, ValueError):
            pids = {}
        pids["lb"] = {"lbd": new_pid}
        self._save("up", t, extra={"pids": pids})
        return time.monotonic() - t0

    def takeover_lbd(self, config=None, env=None, timeout=60.0):
        """Start a new lbd with --takeover (config: another file, default the lab's; env:
        extra environment) beside the running one, wait until the old one has exited and
        the new one answers status, and record the new pid. Returns the new lbd's
        status["takeover"] (pause_ms: the data-plane pause it measured, flows, from_pid).
        If the new lbd exits instead (refused, or failed before it owned the data plane),
        raises TakeoverFailed with its exit code and log tail; the old one is left as it is."""
        t = self.topology
        old, cfg = t["lb"]["pid"], config or t["lb"]["config"]
        sock, log = t["lb"]["control_socket"], t["lb"]["log"]
        size = os.path.getsize(log) if os.path.exists(log) else 0
        oldp = next((q for q in self._procs if q.pid == old), None)
        logf = open(log, "ab")
        p = self.popen("lb", [sys.executable, "-m", "lb.daemon", "-c", cfg, "--takeover"],
                       stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd=REPO,
                       start_new_session=True, env=dict(os.environ, **(env or {})))
        logf.close()

        def done():
            if p.poll() is not None:
                with open(log, "rb") as f:
                    f.seek(size)
                    tail = f.read().decode(errors="replace")
                raise TakeoverFailed(p.returncode, tail)
            self._reap()
            if _alive(old):
                return None
            r = lbd_request(sock, "status", timeout=1.0, quiet=True)
            return r if r and r["result"]["pid"] == p.pid else None
        status = _wait("lbd %d to take over from %d" % (p.pid, old), done, timeout,
                       detail=lambda: "; %s:\n    %s" % (log, _tail(log)))["result"]
        t["lb"]["pid"], t["lb"]["status"] = p.pid, status
        try:
            with open(self.state_file) as f:
                pids = json.load(f).get("pids", {})
        except (OSError, ValueError):
            pids = {}
        pids["lb"] = {"lbd": p.pid}
        self._save("up", t, extra={"pids": pids})
        info = dict(status["takeover"])
        # gone from /proc's view (a zombie) is not yet reaped: wait for its status
        info["old_exit"] = oldp.wait(timeout=10) if oldp is not None else None
        return info

    def _start_lbd(self, cfg, sock, log):
        logf = open(log, "ab")
        p = self.popen("lb", [sys.executable, "-m", "lb.daemon", "-c", cfg],
                       stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd=REPO,
                       start_new_session=True)
        logf.close()

        def ready():
            if p.poll() is not None:
                raise LabError("lbd exited with %s before answering status; %s:\n    %s"
                               % (p.returncode, log, _tail(log)))
            return lbd_request(sock, "status", timeout=1.0, quiet=True)
        status = _wait("lbd to answer status on %s" % sock, ready, LBD_READY_TIMEOUT,
                       detail=lambda: "; %s:\n    %s" % (log, _tail(log)))
        return p.pid, status.get("result")

    # -- down ---------------------------------------------------------------------------------

    def down(self):
        """Remove everything the lab made: processes in its namespaces (TERM, then KILL), the
        namespaces, the state dir. Works from the state file and from `ip netns list`, so a
        crashed or half-built lab goes too; a lab that does not exist is a quiet no-op."""
        names = set(self._own_namespaces())
        try:
            with open(self.state_file) as f:
                listed = json.load(f).get("namespaces", [])
            existing = set(_netns_list())
            names |= {n for n in listed if n in existing}
        except (OSError, ValueError):
            pass
        names = sorted(names)
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 3.0),
                           (signal.SIGKILL, 3.0)):
            pids = [pid for ns in names for pid in _netns_pids(ns) if pid != os.getpid()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            self._reap()
            deadline = time.monotonic() + grace
            while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.02)   # poll interval, bounded by the deadline
        self._reap()
        if names:
            _run(["ip", "-force", "-batch", "-"],
                 input="".join("netns del %s\n" % n for n in names), check=False)
            left = set(names) & set(_netns_list())
            if left:
                raise LabError("could not delete namespaces: %s" % " ".join(sorted(left)))
        hop_shim.umount_bpffs(self.bpf_dir)     # every shim's pins with it
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self._topology = None

    def _reap(self):
        for p in self._procs:
            p.poll()
        self._procs = [p for p in self._procs if p.returncode is None]


class TakeoverFailed(LabError):
    """lbd --takeover exited (returncode) instead of taking over; log: what it wrote."""

    def __init__(self, returncode, log):
        super().__init__("lbd --takeover exited with %s:\n%s" % (returncode, log))
        self.returncode = returncode
        self.log = log


def lbd_request(sock_path, cmd, args=None, timeout=5.0, quiet=False):
    """One request on lbd's control socket; returns the reply dict. quiet: None on failure."""
    from lb.cli import ControlUnavailable, request
    try:
        reply = request(sock_path, cmd, args, timeout=timeout)
        if not reply.get("ok"):
            raise LabError("lbd %s: %s" % (cmd, reply.get("error")))
        return reply
    except (ControlUnavailable, LabError):
        if quiet:
            return None
        raise


NFT_BACKEND = """\
# lab backend: connections the LB delivered to our real address answer through the LB
table ip threeway {
    chain pre {
        type filter hook prerouting priority mangle; policy accept;
        ct state new ether saddr %(lbmac)s ip daddr %(real)s ct mark set %(mark)d meta mark set %(mark)d
        ct mark %(mark)d meta mark set %(mark)d
    }
    chain out {
        type route hook output priority mangle; policy accept;
        ct mark %(mark)d meta mark set %(mark)d
    }
}
"""

LBD_TOML = """\
# lbd config of lab %(name)s, written by tools/lab.py (VIPs are added with lbctl)
[io]
backend = "%(io)s"
interface = "%(ifname)s"
%(offload)sworkers = %(workers)d

[lb]
address = "%(addr)s"
mac = "%(mac)s"
gateway = "%(gw)s"
control_socket = "%(sock)s"

[flows]
capacity = 262144

[health]
interface = "mg0"
"""


# --- CLI ------------------------------------------------------------------------------------

NAME_OPT = click.option("--name", default="tw", show_default=True, help="lab prefix P")


@click.group(help="threeway's network-namespace lab.")
def cli():
    pass


@cli.command(help="Build the lab and print its topology as JSON.")
@NAME_OPT
@click.option("--backends", default=3, show_default=True, type=int)
@click.option("--clients", default=1, show_default=True, type=int)
@click.option("--remote-backends", default=0, show_default=True, type=int,
              help="backends r1.. on %s, routed from rt (not on the LB's L2), reached by the "
              "tunnel mode's VXLAN; with N >= 1 b1.. get the VXLAN device too" % REMOTE_NET)
@click.option("--io", type=click.Choice(["tap", "afpacket"]), default="tap", show_default=True)
@click.option("--no-lbd", is_flag=True, help="do not start lbd (test the rest of the lab)")
@click.option("--offload/--no-offload", default=True, show_default=True,
              help="vnet headers (tap: IFF_VNET_HDR, afpacket: PACKET_VNET_HDR and the veth's "
              "default offloads): GSO superframes through lbd. --no-offload: the slow path "
              "(offload = false in lbd's config; afpacket: the veth's offloads off)")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 16),
              help="lbd's data-plane threads (tap: one TAP queue each)")
@click.option("--hop-shim/--no-hop-shim", default=True, show_default=True,
              help="hop's backend shim (eBPF, tc) on every b1..bN")
@click.option("--client-hop-mtu", type=click.IntRange(576, 1499), default=None,
              help="a smaller hop on the client side (rt's client interface): the servers' "
              "segments need path MTU discovery through the LB")
@click.option("--rtsp", is_flag=True, help="an RTSP server (gst-rtsp-server, rtsp://bN:554/test) "
              "on every backend")
def up(name, backends, clients, remote_backends, io, no_lbd, offload, workers, hop_shim,
       client_hop_mtu, rtsp):
    if workers > 1 and io != "tap":
        raise click.UsageError("--workers > 1 needs --io tap")
    try:
        topo = Lab(name, backends=backends, clients=clients, io=io, start_lbd=not no_lbd,
                   offload=offload, workers=workers, remote_backends=remote_backends,
                   client_hop_mtu=client_hop_mtu, rtsp=rtsp, hop_shim=hop_shim).up()
    except LabError as e:
        raise click.ClickException(str(e))
    click.echo(json.dumps(topo, indent=2))


@cli.command(help="Remove the lab (also a crashed one); quiet if there is none.")
@NAME_OPT
def down(name):
    try:
        Lab(name).down()
    except LabError as e:
        raise click.ClickException(str(e))


@cli.command(help="Start a new lbd with --takeover beside the running one (a planned "
             "restart: fds, flows and VIP table handed over); print its takeover status "
             "(pause_ms ...) as JSON.")
@NAME_OPT
@click.option("--config", help="the new lbd's config file (default: the lab's)")
def takeover(name, config):
    try:
        info = Lab(name).takeover_lbd(config=config)
    except LabError as e:
        raise click.ClickException(str(e))
    click.echo(json.dumps(info, indent=2))


@cli.command(help="Show the topology of a running lab.")
@NAME_OPT
@click.option("--json", "as_json", is_flag=True)
def show(name, as_json):
    try:
        topo = Lab(name).topology
    except LabError as e:
        raise click.ClickException(str(e))
    if as_json:
        click.echo(json.dumps(topo, indent=2))
        return
    lb = topo["lb"]
    click.echo("lab %s  io=%s  vips %s  state %s" % (topo["name"], topo["io"], topo["vip_range"],
                                                   topo["state_dir"]))
    click.echo("  lb   %-14s %s  data plane %s in %s  mgmt %s  control %s  pid %s"
               % (lb["address"], lb["mac"], lb["interface"], lb["interface_ns"],
                  lb["management"]["address"], lb["control_socket"], lb["pid"]))
    for node, n in topo["nodes"].items():
        for i in n["interfaces"]:
            click.echo("  %-4s %-14s %-5s %-18s %s" % (node, n["ns"], i["name"],
                                                     i.get("address") or "-", i.get("mac", "-")))
    for b in topo.get("backends", []):
        sh = topo["nodes"][b].get("hop_shim")
        click.echo("  %-4s hop shim %s" % (b, "-" if not sh else "%s on %s, pins %s" % (
            "+".join(k for k, v in sh["attached"].items() if v) or "nothing attached",
            sh["interface"], sh["pins"])))
    click.echo("  /blob sha256 %s" % topo["blob"]["sha256"])


def _live_ns(name, node):
    """The namespace of NODE in lab NAME, which must exist (a CLI error otherwise)."""
    try:
        ns = Lab(name).ns(node)
    except LabError as e:
        raise click.ClickException(str(e))
    if ns not in _netns_list():
        raise click.ClickException("no namespace %s (is lab %s up?)" % (ns, name))
    return ns


@cli.command("exec", help="Run CMD in NODE's namespace (sw, rt, lb, c1.., b1.., r1..); exits with "
             "CMD's status.", context_settings={"ignore_unknown_options": True,
                                                "allow_interspersed_args": False})
@NAME_OPT
@click.argument("node")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name, node, cmd):
    if cmd and cmd[0] == "--":   # click keeps "--" once options are no longer parsed
        cmd = cmd[1:]
    if not cmd:
        raise click.UsageError("missing CMD")
    ns = _live_ns(name, node)
    sys.stdout.flush()
    os.execvp("ip", ["ip", "netns", "exec", ns] + list(cmd))


@cli.command("doctor", help="Check backend NODE for dsr duty (VIP on lo, arp_ignore/arp_announce, "
             "rp_filter, a listener) or, with --mode tunnel, for tunnel duty (a VXLAN device "
             "with the lab's VNI, port and inner MAC, up; rp_filter; VIP on lo; a listener), "
             "or with --mode hop, for hop duty (dsr's, and hop's shim on eth0 both ways): "
             "tools/doctor.py run inside NODE's namespace.")
@NAME_OPT
@click.argument("node")
@click.option("--vip", required=True, help="the VIP address")
@click.option("--port", type=int, help="the VIP port (checks a listener)")
@click.option("--mode", type=click.Choice(["dsr", "tunnel", "hop"]), default="dsr",
              show_default=True)
@click.option("--json", "as_json", is_flag=True)
def doctor(name, node, vip, port, mode, as_json):
    ns = _live_ns(name, node)
    argv = [sys.executable, "-m", "tools.doctor", "--vip", vip]
    argv += ["--port", str(port)] if port else []
    argv += ["--mode", mode] if mode != "dsr" else []
    argv += ["--json"] if as_json else []
    sys.stdout.flush()
    os.chdir(REPO)
    os.execvp("ip", ["ip", "netns", "exec", ns] + argv)


def main():
    cli(prog_name="lb-lab")


if __name__ == "__main__":
    main()
