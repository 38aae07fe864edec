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
- lbs = 1 without bgp builds the lab exactly as before there were several instances. With
  BGP (lbs >= 2, or bgp=True): instance K has namespace P-lb (K = 1) / P-lbK, data address
  lb_address(K), mgmt lb_mgmt(K), MAC lb_mac_k(P, K), and a [bgp] table in its config; rt
  has BIRD 2 (its pid in the state file, killed by `down` like every process of the lab's
  namespaces, ExaBGP too) and no static VIP route; the backends' reply path (nft MAC set,
  table 100 multipath) covers every instance, add_lb() included.
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
NODE_PAT = r"(sw|rt|lb|lb[2-9]|lb[1-9][0-9]+|c[1-9][0-9]*|b[1-9][0-9]*|r[1-9][0-9]*)"
NODE_RE = re.compile("^%s$" % NODE_PAT)

# Several LB instances (Lab(lbs=N), issue 16): lb1 is the single instance of old (node "lb",
# 198.19.0.2, mgmt 198.19.0.3, lb_mac); lbK (K >= 2) is node "lbK" with data 198.19.0.(200+K),
# mgmt 198.19.0.(220+K) and lb_mac_k. With BGP (lbs >= 2, or bgp=True), BIRD 2 in rt peers
# with every instance's ExaBGP (lb/announce.py) and merges their /32s into one multipath route.
MAX_LBS = 20
RT_ASN, LB_ASN = 65000, 65001
BGP_HOLD_TIME = 3

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


def lb_mac_k(name, k):
    """The data-plane MAC of instance lbK of lab `name`: lb_mac for K = 1, else 02:74:77 + 3
    bytes of sha1("name/lbK") (locally administered, never equal to another instance's)."""
    if k == 1:
        return lb_mac(name)
    h = hashlib.sha1(("%s/lb%d" % (name, k)).encode()).digest()
    return "02:74:77:%02x:%02x:%02x" % (h[0], h[1], h[2])


def lb_node(k):
    """The node name of instance K: "lb" for 1 (as before there were several), else "lbK"."""
    return "lb" if k == 1 else "lb%d" % k


def lb_address(k):
    return LB_ADDRESS if k == 1 else "198.19.0.%d" % (200 + k)


def lb_mgmt(k):
    return LB_MGMT if k == 1 else "198.19.0.%d" % (220 + k)


def _lb_suffix(k):
    # interface and file names of instance K: lbtap, lbmg, lbd.toml for 1; lbtap2, lbd2.toml..
    return "" if k == 1 else str(k)


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
                 hop_shim=True, lbs=1, bgp=None, cluster=False, egress_gateway=False):
        if not NAME_RE.match(name or ""):
            raise LabError("lab name %r: use 1-20 characters of [A-Za-z0-9_]" % (name,))
        if not 1 <= backends <= MAX_BACKENDS:
            raise LabError("backends: must be 1..%d, got %r" % (MAX_BACKENDS, backends))
        if not 1 <= clients <= MAX_CLIENTS:
            raise LabError("clients: must be 1..%d, got %r" % (MAX_CLIENTS, clients))
        if not 0 <= remote_backends <= MAX_REMOTE_BACKENDS:
            raise LabError("remote_backends: must be 0..%d, got %r"
                           % (MAX_REMOTE_BACKENDS, remote_backends))
        if not (isinstance(lbs, int) and 1 <= lbs <= MAX_LBS):
            raise LabError("lbs: must be 1..%d, got %r" % (MAX_LBS, lbs))
        if bgp is None:
            bgp = lbs > 1
        if lbs > 1 and not bgp:
            raise LabError("lbs: %d instances need bgp (the router spreads the VIPs by ECMP)"
                           % lbs)
        if io not in ("tap", "afpacket"):
            raise LabError("io: must be tap or afpacket, got %r" % (io,))
        if not (isinstance(workers, int) and 1 <= workers <= 16) or workers > 1 and io != "tap":
            raise LabError("workers: 1..16, more than 1 only with io tap; got %r" % (workers,))
        if client_hop_mtu is not None and not (isinstance(client_hop_mtu, int)
                                               and 576 <= client_hop_mtu < 1500):
            raise LabError("client_hop_mtu: 576..1499 or None, got %r" % (client_hop_mtu,))
        self.name = name
        self.n_lbs = lbs
        # BGP: BIRD 2 in rt, ExaBGP in every lbd ([bgp]), the VIP /32s as ECMP routes; off:
        # the static route VIP_RANGE via LB_ADDRESS (the lab exactly as before)
        self.bgp = bool(bgp)
        # one configuration in etcd (issue 16): etcd in rt on its server address, every lbd
        # with [cluster] (its VIP table from there) and [sync] (flow sync with the members,
        # on its mgmt address, port SYNC_PORT)
        self.cluster = bool(cluster)
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
        self.run_lbd = start_lbd      # Lab(start_lbd=False): no lbd (the method start_lbd(k) starts one)
        self.lbd_extra = lbd_extra      # TOML appended to lbd's config (e.g. a [metrics] table)
        # hop's backend shim (modes/hop/shim.py) on every b1..bN's eth0, pinned in a bpffs of
        # the lab's own (state_dir/bpf, unmounted by down); False: backends without it
        self.hop_shim = hop_shim
        # hop's egress-gateway variant: the same shim once, on the switch's ports that face
        # b1..bN (hooks swapped, one map for all), and nothing on the backends themselves
        self.egress_gateway = bool(egress_gateway)
        if self.egress_gateway and not hop_shim:
            raise LabError("egress_gateway: it is where the hop shim goes; not with hop_shim off")
        self.state_dir = os.path.join(STATE_ROOT, "lab-" + name)
        self.state_file = os.path.join(self.state_dir, "state.json")
        self.bpf_dir = os.path.join(self.state_dir, "bpf")
        self._topology = None
        self._procs = []

    # -- naming and access --------------------------------------------------------------------

    def ns(self, node):
        """Namespace of `node` (sw, rt, lb, lb2.., c1.., b1.., r1..)."""
        if not NODE_RE.match(node):
            raise LabError("unknown node %r (sw, rt, lb, lb2.., c1.., b1.., r1..)" % (node,))
        return "%s-%s" % (self.name, node)

    def _own_namespaces(self):
        """Namespaces of this lab that exist now (matched exactly, never by bare prefix)."""
        pat = re.compile(r"^%s-%s$" % (re.escape(self.name), NODE_PAT))
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
                + [self.ns(lb_node(k)) for k in range(2, self.n_lbs + 1)]
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
        if self.bgp:
            # ECMP over the instances by the L4 hash (a flow stays on one instance)
            steps[rt].append(sysctl(rt, "net.ipv4.fib_multipath_hash_policy=1"))
        for c in clients:
            steps[self.ns(c)].append(sysctl(self.ns(c), "net.ipv4.ip_local_port_range=1024 65000",
                                            "net.ipv4.tcp_tw_reuse=1"))
        for b in backends:
            steps[self.ns(b)].append(sysctl(
                self.ns(b), "net.ipv4.tcp_fwmark_accept=1",
                "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.default.arp_ignore=1", "net.ipv4.conf.default.arp_announce=2",
                "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"))
            if self.bgp:
                # the reply path over all instances: skip an instance whose neighbour entry
                # failed (use_neigh), found within ~2 s by short neighbour timers
                steps[self.ns(b)].append(sysctl(self.ns(b), *BACKEND_MULTI_SYSCTLS))
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
        for k in range(1, self.n_lbs + 1):
            veth("lbmg" + _lb_suffix(k), "brs", lb_node(k), "mg0")
            if self.io == "afpacket":
                # dp0 carries the LB MAC, so the bridge's view and lbd's frames agree
                veth("lbdp" + _lb_suffix(k), "brs", lb_node(k), "dp0",
                     peer_mac=lb_mac_k(P, k))
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
                      "link set eth0 up\nlink set eth1 up\n" % (RT_CLIENT, RT_SERVER)
                      # with BGP the VIP routes come from BIRD
                      + ("" if self.bgp else "route add %s via %s\n" % (VIP_RANGE, LB_ADDRESS))
                      + ("link set eth0 mtu %d\n" % hop if hop else ""))]
        if remotes:
            # eth2 inherits rp_filter 0 from default (step 2), so rt forwards between all three
            steps[rt].append((["ip", "-n", rt, "-batch", "-"],
                              "addr add %s/24 dev eth2\nlink set eth2 up\n" % RT_REMOTE))
        for k in range(1, self.n_lbs + 1):
            for ns, items in self._lb_net_steps(k).items():
                steps.setdefault(ns, []).extend(items)
        lbks = list(range(1, self.n_lbs + 1))
        for i, b in enumerate(backends, 1):
            ns, real = self.ns(b), backend_ip(i)
            steps[ns] = [
                (["ip", "-n", ns, "-batch", "-"],
                 "link set lo up\n"
                 "addr add %s dev lo\n"
                 "addr add %s/24 dev eth0\n"
                 "link set eth0 up\n"
                 "route add default via %s\n"
                 "rule add fwmark %d table %d\n"
                 % (VIP_RANGE, real, RT_SERVER, REPLY_MARK, REPLY_TABLE)
                 + self._reply_route(lbks)),
                sysctl(ns, "net.ipv4.conf.eth0.arp_ignore=1", "net.ipv4.conf.eth0.arp_announce=2",
                       "net.ipv4.conf.eth0.rp_filter=0",
                       *(BACKEND_NEIGH_SYSCTLS if self.bgp else ())),
                (["ip", "netns", "exec", ns, "nft", "-f", "-"], self._reply_nft(real, lbks)),
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
        if self.egress_gateway:
            hop_shim.mount_bpffs(self.bpf_dir)
            pins = os.path.join(self.bpf_dir, "gateway")
            try:
                hop_shim.load(pins)
                for b in backends:          # the switch port of bN is named bN
                    hop_shim.attach(self.ns("sw"), b, pins, "port")
            except hop_shim.ShimError as e:
                raise LabError("hop shim on the gateway: %s" % e) from e
            for b in backends:
                shims[b] = {"at": "gateway", "ns": self.ns("sw"), "interface": b, "pins": pins,
                            "attached": hop_shim.installed(self.ns("sw"), b, "port")}
        elif self.hop_shim:
            hop_shim.mount_bpffs(self.bpf_dir)
            for b in backends:
                pins = os.path.join(self.bpf_dir, b)
                try:
                    hop_shim.install(self.ns(b), "eth0", pins)
                except hop_shim.ShimError as e:
                    raise LabError("hop shim on %s: %s" % (b, e)) from e
                shims[b] = {"at": "backend", "ns": self.ns(b), "interface": "eth0",
                            "pins": pins, "attached": hop_shim.installed(self.ns(b), "eth0")}

        # 6. BIRD in rt (BGP), before the instances, whose ExaBGP connect to it
        bgp_info = None
        if self.bgp:
            bgp_info = self._start_bird(lbks)
            pids["rt"] = {"bird": bgp_info["pid"]}
            self._save("building", extra={"pids": pids})

        # 6a. etcd in rt, before the instances, which take their VIP table from it
        etcd_info = None
        if self.cluster:
            etcd_info = self._start_etcd()
            pids.setdefault("rt", {})["etcd"] = etcd_info["pid"]
            self._save("building", extra={"pids": pids})

        # 6b. lbd, one per instance
        lb_infos = []
        for k in lbks:
            info = self._lb_info(k)
            self._write_lbd_config(k, info)
            if self.run_lbd:
                info["pid"], info["status"] = self._start_lbd(info["config"],
                                                               info["control_socket"],
                                                               info["log"], node=info["node"])
                info["running"] = True
                pids[info["node"]] = {"lbd": info["pid"]}
                self._save("building", extra={"pids": pids})
                lio = (info["status"] or {}).get("io", {})
                if bool(lio.get("offload")) != bool(self.offload):
                    # the veths were set up for the other path (afpacket: offloads off or on)
                    raise LabError("lbd runs with offload %s (%s), the lab was built for %s"
                                   % ("on" if lio.get("offload") else "off",
                                      lio.get("offload_why"), "on" if self.offload else "off"))
                if self.io == "tap":
                    self._attach_tap(k)
                    ports["brs"].append(info["switch_port"])
            lb_infos.append(info)
        lb1 = lb_infos[0]
        sock, cfg, log, dp_if = lb1["control_socket"], lb1["config"], lb1["log"], lb1["interface"]
        lbd_pid, lbd_status = lb1["pid"], lb1["status"]

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
                       "routes": {} if self.bgp else {VIP_RANGE: LB_ADDRESS},
                       "bgp": bgp_info, "etcd": etcd_info}
        if remotes:
            nodes["rt"]["interfaces"].append(
                {"name": "eth2", "address": RT_REMOTE, "prefix": 24, "mac": mac("rt", "eth2"),
                 "bridge": "brr", "switch_port": "rtr"})

        def vxlan(local):
            return {"device": VXLAN_DEV, "vni": VXLAN_VNI, "port": VXLAN_PORT,
                    "mac": VXLAN_INNER_MAC, "local": local}
        for info in lb_infos:
            nodes[info["node"]] = self._lb_node_view(info)
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
                   "data_plane_present": self.run_lbd or self.io == "afpacket",
                   "control_socket": sock, "config": cfg, "log": log,
                   "pid": lbd_pid, "running": bool(self.run_lbd),
                   "status": lbd_status},
            # every instance (lb1 is "lb" above too); bgp: BIRD in rt, or None (static route)
            "lbs": lb_infos,
            "bgp": bgp_info,
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
            "egress_gateway": ({"ns": self.ns("sw"), "ports": list(backends),
                                "pins": os.path.join(self.bpf_dir, "gateway")}
                               if self.egress_gateway else None),
            "vxlan": ({"device": VXLAN_DEV, "vni": VXLAN_VNI, "port": VXLAN_PORT,
                       "inner_mac": VXLAN_INNER_MAC} if remotes else None),
            "nodes": nodes,
            "namespaces": self._namespaces(),
            "up_seconds": round(time.monotonic() - t0, 3),
        }
        self._save("up", self._topology, extra={"pids": pids})
        return self._topology

    # -- LB instances -------------------------------------------------------------------------

    def _lb_net_steps(self, k):
        """{ns: steps} that give instance K's namespace its management interface (and dp0)."""
        ns, sw, suf = self.ns(lb_node(k)), self.ns("sw"), _lb_suffix(k)
        cmds = "link set lo up\naddr add %s/24 dev mg0\nlink set mg0 up\n" % lb_mgmt(k)
        if self.n_remote:
            # the kernel of P-lb reaches the remote backends through rt: health probes of
            # their own addresses, and the outer packets of tunnel VIP-path probes
            cmds += "route add %s via %s dev mg0\n" % (REMOTE_NET, RT_SERVER)
        if self.io == "afpacket":
            # no IP and ARP off: the kernel of P-lb never answers on the data plane
            cmds += "link set dp0 arp off\nlink set dp0 up\n"
        steps = {ns: [(["ip", "-n", ns, "-batch", "-"], cmds)]}
        if self.io == "afpacket" and not self.offload:
            # offloads off on both ends: the raw socket sees <= 1514-byte frames with full
            # checksums; features a device cannot change are ignored (exit status too).
            # With offload, dp0 and lbdp keep the kernel's defaults (TSO/GSO/csum on, GRO
            # off): lbd reads vnet headers, GSO superframes arrive as their senders made them
            off = "rx off tx off tso off gso off gro off sg off"
            steps[ns].append(["sh", "-c", "ip netns exec %s ethtool -K dp0 %s || true"
                              % (ns, off)])
            steps[sw] = [["sh", "-c", "ip netns exec %s ethtool -K lbdp%s %s || true"
                          % (sw, suf, off)]]
        return steps

    def _reply_route(self, lbks, verb="add"):
        """The `ip -batch` lines of a backend's reply routes: table REPLY_TABLE default via
        the LB; with several instances one table per instance K (fwmark K, table
        REPLY_TABLE + K - 1: K = 1 is the single LB's), default via K's data address. A
        connection is marked with the instance that delivered its first frame (_reply_nft),
        so its replies go back to that instance, which has its flow from the first frame on
        (a peer learns it only by flow sync, after a few frames); when K dies, a live member
        answers ARP for K's address (lb/daemon.py _adopt) and has K's flows by sync."""
        if len(lbks) == 1 and not self.bgp:
            return "route %s default via %s dev eth0 table %d\n" % (verb, LB_ADDRESS, REPLY_TABLE)
        out = ""
        for k in lbks:
            if k > 1:
                out += "rule add fwmark %d table %d\n" % (k, REPLY_TABLE + k - 1)
            out += "route %s default via %s dev eth0 table %d\n" % (
                verb, lb_address(k), REPLY_TABLE + k - 1)
        return out

    def _reply_nft(self, real, lbks):
        """A backend's nftables: connections an instance delivered (Ethernet source = any LB
        MAC) to its real address are marked, and answered through table REPLY_TABLE."""
        if len(lbks) == 1 and not self.bgp:
            text = NFT_BACKEND % {"lbmac": lb_mac(self.name), "real": real, "mark": REPLY_MARK}
        else:
            text = NFT_BACKEND_LBS % {"lbs": ", ".join(
                "%s : %d" % (lb_mac_k(self.name, k), k) for k in lbks), "real": real}
        if self.bgp:       # replaced whole (add_lb): the table goes first if it is there
            text = "table ip threeway\ndelete table ip threeway\n" + text
        return text

    def _lb_info(self, k):
        """What the topology says of instance K (lbs[K-1]); pid/status/running filled later."""
        node, suf = lb_node(k), _lb_suffix(k)
        tap = self.io == "tap"
        return {"k": k, "node": node, "ns": self.ns(node), "address": lb_address(k),
                "mac": lb_mac_k(self.name, k), "mgmt": lb_mgmt(k),
                "mgmt_mac": _mac(self.name, node, "mg0"),
                "interface": ("lbtap" + suf) if tap else "dp0",
                "interface_ns": self.ns("sw") if tap else self.ns(node),
                "switch_port": ("lbtap" + suf) if tap else ("lbdp" + suf),
                "mgmt_switch_port": "lbmg" + suf,
                "config": os.path.join(self.state_dir, "lbd%s.toml" % suf),
                "log": os.path.join(self.state_dir, "lbd%s.log" % suf),
                "control_socket": os.path.join(self.state_dir, "lbd%s.sock" % suf),
                "asn": LB_ASN if self.bgp else None,
                "pid": None, "running": False, "status": None}

    def _write_lbd_config(self, k, info):
        with open(info["config"], "w") as f:
            f.write(LBD_TOML % {"name": self.name, "io": self.io, "ifname": info["interface"],
                                "addr": info["address"],
                                "offload": "" if self.offload else "offload = false\n",
                                "workers": self.workers,
                                "mac": info["mac"], "gw": RT_SERVER,
                                "sock": info["control_socket"]})
            if self.bgp:
                f.write(LBD_BGP_TOML % {"router": RT_SERVER, "local": info["mgmt"],
                                        "asn": LB_ASN, "router_asn": RT_ASN,
                                        "hold": BGP_HOLD_TIME})
            if self.cluster:
                f.write(LBD_CLUSTER_TOML % {"name": self.name, "etcd": self.etcd_url(),
                                            "instance": info["node"] if k > 1 else "lb1",
                                            "mgmt": info["mgmt"], "port": SYNC_PORT})
            if self.lbd_extra:
                f.write("\n" + self.lbd_extra.strip() + "\n")

    # -- etcd (rt) ----------------------------------------------------------------------------

    def etcd_url(self):
        return "http://%s:%d" % (RT_SERVER, ETCD_PORT)

    def _start_etcd(self):
        from tools.etcd import Etcd
        e = Etcd(ns=self.ns("rt"), address=RT_SERVER, port=ETCD_PORT,
                 state_dir=os.path.join(self.state_dir, "etcd"), name=self.name)
        e.start()
        self._etcd = e
        return {"url": e.url, "pid": e.pid, "name": self.name, "data": e.state_dir}

    def lbctl_cluster(self, *args, timeout=60, check=True):
        """`lbctl --cluster URL --name P ARGS` run in lb1's namespace (which reaches etcd);
        returns the CompletedProcess (text)."""
        return self.exec("lb", [sys.executable, "-m", "lb.cli", "--cluster", self.etcd_url(),
                                "--name", self.name] + list(args), timeout=timeout,
                         check=check, cwd=REPO)

    def _lb_node_view(self, info):
        ifs = [{"name": "mg0", "address": info["mgmt"], "prefix": 24, "mac": info["mgmt_mac"],
                "bridge": "brs", "switch_port": info["mgmt_switch_port"], "kernel": True}]
        if self.io == "afpacket":
            ifs.append({"name": "dp0", "address": None, "mac": info["mac"], "bridge": "brs",
                        "switch_port": info["switch_port"], "kernel": False})
        return {"ns": info["ns"], "role": "lb", "address": info["address"], "mac": info["mac"],
                "interfaces": ifs}

    # -- BIRD (rt) ----------------------------------------------------------------------------

    def _bird_paths(self):
        d = self.state_dir
        return {"config": os.path.join(d, "bird.conf"), "socket": os.path.join(d, "bird.ctl"),
                "log": os.path.join(d, "bird.log"), "pidfile": os.path.join(d, "bird.pid")}

    def _write_bird_config(self, lbks):
        paths = self._bird_paths()
        text = BIRD_CONF % {"log": paths["log"], "id": RT_SERVER, "vips": VIP_RANGE,
                            "local": RT_SERVER, "asn": RT_ASN, "hold": BGP_HOLD_TIME}
        for k in lbks:
            text += "protocol bgp lb%d from lbs { neighbor %s as %d; }\n" % (
                k, lb_mgmt(k), LB_ASN)
        tmp = paths["config"] + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, paths["config"])
        return paths

    def _start_bird(self, lbks):
        """BIRD 2 in rt (foreground, so its pid is ours), peering with every instance."""
        paths = self._write_bird_config(lbks)
        _run(["ip", "netns", "exec", self.ns("rt"), "bird", "-p", "-c", paths["config"]])
        logf = open(paths["log"] + ".out", "ab")
        p = self.popen("rt", ["bird", "-f", "-c", paths["config"], "-s", paths["socket"],
                              "-P", paths["pidfile"]],
                       stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                       start_new_session=True)
        logf.close()

        def ready():
            if p.poll() is not None:
                raise LabError("bird exited with %s; %s" % (p.returncode,
                                                            _tail(paths["log"] + ".out")))
            return self.birdc(["show", "status"], check=False).returncode == 0
        _wait("BIRD to answer on %s" % paths["socket"], ready, 10.0)
        return dict(paths, pid=p.pid, asn=RT_ASN, hold_time=BGP_HOLD_TIME,
                    multipath_hash_policy=1)

    def birdc(self, argv, check=True):
        """birdc (BIRD's CLI) on rt's BIRD; returns the CompletedProcess."""
        return _run(["ip", "netns", "exec", self.ns("rt"), "birdc", "-s",
                     self._bird_paths()["socket"]] + list(argv), check=check, timeout=10)

    def bgp_protocols(self):
        """{"lbK": {"state": "up"/"start"/..., "info": "Established"/...}} from birdc."""
        out = {}
        for line in self.birdc(["show", "protocols"]).stdout.splitlines():
            f = line.split()
            if len(f) >= 4 and f[1] == "BGP" and re.match(r"^lb[0-9]+$", f[0]):
                out[f[0]] = {"state": f[3], "info": " ".join(f[5:]) if len(f) > 5 else ""}
        return out

    def routes(self):
        """The router's view: {vip address: [next hops, sorted]} of its /32 VIP routes
        (`ip -j route` in rt: BIRD's multipath routes, or none without BGP)."""
        r = _run(["ip", "-n", self.ns("rt"), "-j", "route", "show"])
        net = ipaddress.ip_network(VIP_RANGE)
        out = {}
        for e in json.loads(r.stdout or "[]"):
            dst = e.get("dst", "")
            if "/" in dst or dst == "default":
                continue
            try:
                if ipaddress.ip_address(dst) not in net:
                    continue
            except ValueError:
                continue
            hops = [h["gateway"] for h in e.get("nexthops", []) if "gateway" in h]
            if "gateway" in e:
                hops.append(e["gateway"])
            out[dst] = sorted(hops, key=lambda a: ipaddress.ip_address(a))
        return out

    # -- one instance at a time ---------------------------------------------------------------

    def lb_info(self, k):
        """Instance K's entry of the topology (lbs[K-1])."""
        lbs = self.topology.get("lbs") or []
        if not (isinstance(k, int) and 1 <= k <= len(lbs)):
            raise LabError("no instance lb%s (the lab has %d)" % (k, len(lbs)))
        return lbs[k - 1]

    def _record_lb(self, k, pid, status, running):
        t = self.topology
        info = self.lb_info(k)
        info["pid"], info["status"], info["running"] = pid, status, running
        if k == 1:
            t["lb"]["pid"], t["lb"]["status"], t["lb"]["running"] = pid, status, running
        try:
            with open(self.state_file) as f:
                pids = json.load(f).get("pids", {})
        except (OSError, ValueError):
            pids = {}
        if pid is None:
            pids.pop(info["node"], None)
        else:
            pids[info["node"]] = {"lbd": pid}
        self._save("up", t, extra={"pids": pids})

    def kill_lbd(self, k, sig=signal.SIGKILL):
        """Stop instance K with `sig` (SIGKILL: a crash; SIGTERM: a clean stop) and wait until
        it and its TAP are gone. Returns the seconds from the signal to that."""
        info = self.lb_info(k)
        pid = info["pid"]
        if not info.get("running") or pid is None:
            raise LabError("lb%d is not running" % k)
        t0 = time.monotonic()
        os.kill(pid, sig)
        _wait("lbd %d (lb%d) to exit" % (pid, k), lambda: not _alive(pid) or self._reap(), 10.0)
        self._reap()
        if self.io == "tap":
            _wait("lb%d's TAP to go" % k, lambda: _run(
                ["ip", "-n", self.ns("sw"), "link", "show", info["interface"]],
                check=False).returncode != 0, 5.0)
        self._record_lb(k, None, None, False)
        return time.monotonic() - t0

    def stop_lbd(self, k):
        """A clean stop of instance K (SIGTERM: it withdraws its routes first)."""
        return self.kill_lbd(k, signal.SIGTERM)

    def start_lbd(self, k):
        """Start instance K again with its config (after kill_lbd/stop_lbd). Returns its
        status."""
        info = self.lb_info(k)
        if info.get("running"):
            raise LabError("lb%d is running (pid %s)" % (k, info["pid"]))
        pid, status = self._start_lbd(info["config"], info["control_socket"], info["log"],
                                      node=info["node"])
        if self.io == "tap":
            self._attach_tap(k)
        self._record_lb(k, pid, status, True)
        return status

    def add_lb(self):
        """A new instance lb(N+1) on a running BGP lab: its namespace and management
        interface, a BGP neighbour on rt (BIRD reconfigured), the backends' reply path over
        it too, then its lbd (which announces once it has VIPs: add them to it). Returns
        its topology entry."""
        t = self.topology
        if not t.get("bgp"):
            raise LabError("add_lb: the lab runs without BGP (Lab(lbs=N >= 2) or bgp=True)")
        lbs = t["lbs"]
        k = len(lbs) + 1
        if k > MAX_LBS:
            raise LabError("add_lb: the lab has %d instances already (at most %d)"
                           % (len(lbs), MAX_LBS))
        self.n_lbs, self.bgp, self.io = k, True, t["io"]
        self.cluster = bool(t["nodes"]["rt"].get("etcd"))
        self.offload, self.workers = t["offload"], t["workers"]
        self.n_remote = len(t.get("remote_backends") or [])
        node, ns, sw = lb_node(k), self.ns(lb_node(k)), self.ns("sw")
        info = self._lb_info(k)
        _run(["ip", "netns", "add", ns])
        t["namespaces"].append(ns)
        lbs.append(info)
        self._save("up", t)
        _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
              "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])
        cmds = ["link add name lbmg%d address %s type veth peer name mg0 address %s netns %s"
                % (k, _mac(self.name, "sw", "lbmg%d" % k), info["mgmt_mac"], ns),
                "link set lbmg%d master brs up" % k]
        if self.io == "afpacket":
            cmds += ["link add name lbdp%d address %s type veth peer name dp0 address %s "
                     "netns %s" % (k, _mac(self.name, "sw", "lbdp%d" % k), info["mac"], ns),
                     "link set lbdp%d master brs up" % k]
        _run(["ip", "-n", sw, "-batch", "-"], input="\n".join(cmds) + "\n")
        for items in self._lb_net_steps(k).values():
            for item in items:
                argv, inp = item if isinstance(item, tuple) else (item, None)
                _run(argv, input=inp)
        lbks = list(range(1, k + 1))
        steps = {}
        for i, b in enumerate(t["backends"], 1):
            bns = self.ns(b)
            steps[bns] = [(["ip", "-n", bns, "-batch", "-"], self._reply_route([k], "replace")),
                          (["ip", "netns", "exec", bns, "nft", "-f", "-"],
                           self._reply_nft(backend_ip(i), lbks))]
        self._per_ns(steps)
        self._write_bird_config(lbks)
        self.birdc(["configure"])
        nodes = t["nodes"]
        nodes[node] = self._lb_node_view(info)
        self._write_lbd_config(k, info)
        self._save("up", t)
        self.start_lbd(k)
        return self.lb_info(k)

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

    def _attach_tap(self, k=1):
        """A TAP cannot join a bridge in another namespace: move lbd's next to brs. lbd's fd
        keeps working after the move. (Instance K's TAP is lbtapK.)"""
        lb, sw, tap = self.ns(lb_node(k)), self.ns("sw"), "lbtap" + _lb_suffix(k)
        _wait("lbd's TAP %s in %s" % (tap, lb),
              lambda: _run(["ip", "-n", lb, "link", "show", tap],
                           check=False).returncode == 0, 5.0)
        _run(["ip", "-n", lb, "link", "set", tap, "netns", sw])
        _run(["ip", "-n", sw, "link", "set", tap, "master", "brs", "up"])

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
        if t.get("lbs"):
            t["lbs"][0].update(pid=new_pid, status=status, running=True)
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
        if t.get("lbs"):
            t["lbs"][0].update(pid=p.pid, status=status, running=True)
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

    def _start_lbd(self, cfg, sock, log, node="lb"):
        logf = open(log, "ab")
        p = self.popen(node, [sys.executable, "-m", "lb.daemon", "-c", cfg],
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

NFT_BACKEND_LBS = """\
# lab backend with several LB instances: a connection the instance K delivered to our real
# address (Ethernet source = K's MAC) gets mark K, and answers through K's table
table ip threeway {
    map lbs {
        type ether_addr : mark
        elements = { %(lbs)s }
    }
    chain pre {
        type filter hook prerouting priority mangle; policy accept;
        ct state new ip daddr %(real)s ct mark set ether saddr map @lbs
        ct mark != 0 meta mark set ct mark
    }
    chain out {
        type route hook output priority mangle; policy accept;
        ct mark != 0 meta mark set ct mark
    }
}
"""

# a backend with several LB instances: multipath over them, skipping a dead one (its neighbour
# entry FAILED) within ~2 s: reachable 1 s (0.5-1.5), 1 s delay, 2 probes 250 ms apart
BACKEND_MULTI_SYSCTLS = ("net.ipv4.fib_multipath_use_neigh=1",
                         "net.ipv4.fib_multipath_hash_policy=1")
BACKEND_NEIGH_SYSCTLS = ("net.ipv4.neigh.eth0.base_reachable_time_ms=1000",
                         "net.ipv4.neigh.eth0.delay_first_probe_time=1",
                         "net.ipv4.neigh.eth0.retrans_time_ms=250",
                         "net.ipv4.neigh.eth0.ucast_solicit=2",
                         "net.ipv4.neigh.eth0.mcast_solicit=2")

# BIRD 2 in rt: eBGP with every instance (passive: their ExaBGP connect), VIP /32s only, merged
# into one multipath kernel route per VIP. error wait 1-2 s: a session that closed (an lbd
# that died) may come back at once.
BIRD_CONF = """\
log "%(log)s" all;
router id %(id)s;

protocol device { scan time 10; }

protocol kernel {
    ipv4 { import none; export filter { if source = RTS_BGP then accept; reject; }; };
    merge paths on limit 32;
}

filter vips {
    if net ~ [ %(vips)s{32,32} ] then accept;
    reject;
}

template bgp lbs {
    local %(local)s as %(asn)d;
    passive on;
    hold time %(hold)d;
    error wait time 1, 2;
    ipv4 { import filter vips; export none; };
}

"""

ETCD_PORT = 2379
SYNC_PORT = 7900
LBD_CLUSTER_TOML = """
[cluster]
name = "%(name)s"
etcd = "%(etcd)s"
instance = "%(instance)s"
mgmt = "%(mgmt)s"

[sync]
listen = "%(mgmt)s:%(port)d"
"""

LBD_BGP_TOML = """
[bgp]
router = "%(router)s"
local = "%(local)s"
asn = %(asn)d
router_asn = %(router_asn)d
hold_time = %(hold)d
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
@click.option("--egress-gateway", is_flag=True,
              help="hop's shim not on the backends but once on the switch, on its ports that "
              "face b1..bN (one map for all): the servers run no agent")
@click.option("--client-hop-mtu", type=click.IntRange(576, 1499), default=None,
              help="a smaller hop on the client side (rt's client interface): the servers' "
              "segments need path MTU discovery through the LB")
@click.option("--rtsp", is_flag=True, help="an RTSP server (gst-rtsp-server, rtsp://bN:554/test) "
              "on every backend")
@click.option("--lbs", default=1, show_default=True, type=click.IntRange(1, MAX_LBS),
              help="LB instances lb1..lbN, each its own lbd, address and MAC; N >= 2: BGP "
              "(BIRD in rt, ExaBGP in each lbd), the VIPs spread over them by ECMP")
@click.option("--bgp/--no-bgp", default=None,
              help="BGP even with --lbs 1 (default: on iff --lbs >= 2)")
@click.option("--cluster", is_flag=True,
              help="etcd in rt; every lbd takes its VIP table from it ([cluster]) and syncs "
              "its flows with the others ([sync]); change it with lb-lab's lbctl --cluster")
def up(name, backends, clients, remote_backends, io, no_lbd, offload, workers, hop_shim,
       egress_gateway, client_hop_mtu, rtsp, lbs, bgp, cluster):
    if workers > 1 and io != "tap":
        raise click.UsageError("--workers > 1 needs --io tap")
    try:
        topo = Lab(name, backends=backends, clients=clients, io=io, start_lbd=not no_lbd,
                   offload=offload, workers=workers, remote_backends=remote_backends,
                   client_hop_mtu=client_hop_mtu, rtsp=rtsp, hop_shim=hop_shim, lbs=lbs,
                   bgp=bgp, cluster=cluster, egress_gateway=egress_gateway).up()
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


@cli.command("add-lb", help="Add an LB instance lb(N+1) to a running BGP lab (it announces "
             "the VIPs it is given); print its topology entry as JSON.")
@NAME_OPT
def add_lb(name):
    try:
        info = Lab(name).add_lb()
    except LabError as e:
        raise click.ClickException(str(e))
    click.echo(json.dumps(info, indent=2))


@cli.command(help="The router's VIP routes ({vip: [next hops]}) and BIRD's BGP sessions.")
@NAME_OPT
def routes(name):
    lab = Lab(name)
    try:
        out = {"routes": lab.routes(),
               "bgp": lab.bgp_protocols() if lab.topology.get("bgp") else None}
    except LabError as e:
        raise click.ClickException(str(e))
    click.echo(json.dumps(out, indent=2))


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
    for i in (topo.get("lbs") or [])[1:]:
        click.echo("  %-4s %-14s %s  data plane %s in %s  mgmt %s  control %s  pid %s"
                   % (i["node"], i["address"], i["mac"], i["interface"], i["interface_ns"],
                      i["mgmt"], i["control_socket"], i["pid"]))
    if topo.get("bgp"):
        click.echo("  rt   BIRD pid %s AS %s, control %s" % (
            topo["bgp"]["pid"], topo["bgp"]["asn"], topo["bgp"]["socket"]))
    for node, n in topo["nodes"].items():
        for i in n["interfaces"]:
            click.echo("  %-4s %-14s %-5s %-18s %s" % (node, n["ns"], i["name"],
                                                     i.get("address") or "-", i.get("mac", "-")))
    for b in topo.get("backends", []):
        sh = topo["nodes"][b].get("hop_shim")
        click.echo("  %-4s hop shim %s" % (b, "-" if not sh else "%s on %s%s, pins %s" % (
            "+".join(k for k, v in sh["attached"].items() if v) or "nothing attached",
            sh["interface"], " of the gateway (%s)" % sh["ns"] if sh.get("at") == "gateway"
            else "", sh["pins"])))
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
             "or with --mode hop, for hop duty (dsr's, and hop's shim on eth0 both ways, or "
             "on NODE's switch port in an --egress-gateway lab): "
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
    if mode == "hop":       # a backend behind the egress gateway: its shim is on the switch
        try:
            sh = (Lab(name).topology["nodes"].get(node) or {}).get("hop_shim") or {}
        except LabError:
            sh = {}
        if sh.get("at") == "gateway":
            argv += ["--shim-port", "%s:%s" % (sh["ns"], sh["interface"])]
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
