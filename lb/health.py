"""Active health checks of backends, per VIP and mode-aware; run by lbd in its asyncio loop.

What is checked. A VIP's `[vip.health]` (config.HealthCheck) probes each of its backends
every `interval` s, each probe bounded by `timeout` s: `tcp` (the connect completes) or `http`
(HTTP/1.1 GET `path` with Host and Connection: close; up iff the status line carries `expect`).
`fall` consecutive failures take an up backend down, `rise` consecutive successes bring a down
one back (BackendHealth, HAProxy's and keepalived's rule). A backend starts up when checks
begin, so enabling checks never empties a VIP. The state lives per (VIP, backend) in
lb/state.py, which leaves a down backend out of that VIP's new-flow table (like weight 0;
Maglev then moves only the flows that were on it), tells the engine (set_real_up) and sets
SVC_EXPIRE_NODEST on VIPs whose `on_backend_down` is expire.

How a probe travels. Probes use the kernel's TCP stack of lbd's own network namespace, never
the userspace data plane: lbd's data-plane address (198.19.0.2 in the lab) is on no kernel
interface; the kernel owns a management interface on the server net (`[health] interface`,
mg0 198.19.0.3 in the lab). Sockets are non-blocking and awaited with a deadline, at most
`[health] max_in_flight` at once, so the burst loop is never blocked.
- a mode without probe_via_vip (modes/base.py; nat, splice): connect to the backend's real
  address:port through the main routing table.
- probe_via_vip (dsr, tunnel): the backend answers for the VIP itself (on its loopback), so
  its real address proves nothing about the VIP. The probe is addressed to VIP:port and
  delivered the way the mode's data path delivers (the door's probe_vni): lbd gives each
  backend IP a fwmark M = MARK_BASE + n, sets it on the probe socket (SO_MARK) and installs,
  in its own namespace,
      ip rule add fwmark M lookup M pref RULE_PREF
  and in table M (table number = mark) one route per such VIP the backend serves:
  - dsr, on-link to the backend's MAC:
      ip route replace VIP/32 via <backend real ip> dev <interface> onlink table M
  - tunnel, in VXLAN with the VIP's VNI to the backend's address, routed:
      ip link add PROBE_VXLAN type vxlan external dstport VXLAN_PORT     (once)
      ip neigh replace VIP lladdr VXLAN_INNER_MAC dev PROBE_VXLAN nud permanent
      ip route replace VIP/32 encap ip id <vni> dst <backend real ip> dev PROBE_VXLAN table M
    The outer packet's route is looked up with the mark too and falls through table M (which
    holds only VIPs) to the main table: lbd's namespace needs a route to the backends'
    addresses (the lab routes 198.19.200.0/24 via rt on mg0).
  The backend receives a SYN for the VIP from the management address and answers it (on-link,
  or through its router), so the kernel socket completes only if the backend still holds the
  VIP (and, for tunnel, decapsulates its VNI). Unmarked traffic never sees table M. Without
  `[health] interface` such checks are refused at configuration. Replies come from the VIP,
  an address the main table has no route to: rp_filter must be 0 on the interface (lbd warns
  at start when it is not). One backend serves one VIP address along one path: should two
  VIPs on one address (other ports) want different paths to one backend, the first in order
  is installed and the conflict is counted as a route error.

A mode may add a check run before each probe (Mode.health_precheck): hop's asks whether the
backend has its shim (modes/hop/probe.py: a marked SYN on the health interface, whose
SYN-ACK only a shim sends back there); a backend that fails it is down with its reason.

Routes are installed with iproute2 (`ip -force -batch -`, run as an asyncio subprocess):
it is already required by the lab and the docs, adds no dependency, and the changes are rare
(a VIP, a backend or the interface changes), so a netlink library would buy nothing. A VIP-path probe
waits (within its timeout) until its route is in. On start, rules left in the
MARK_BASE range by a previous lbd that died are removed with their tables; on shutdown and
when a VIP, a backend or checks go away, its rules and routes are removed. One lbd per
network namespace owns the MARK_BASE range.

Invariants:
- Only the asyncio tasks made here probe; a probe result reaches LBState only while its
  (VIP, backend) is still checked with the same Target (a changed Target restarts the task).
- A transition is logged (down: warning, up: info) with its reason, e.g.
  "down: connect refused (2 failures)", "up: HTTP 200 (2 successes)"; `lbctl vip list` and
  `stats` show the state, since when, and that reason.
- Nothing here touches the fast path directly.
"""
import asyncio
import errno
import json
import logging
import random
import re
import socket
import time
from collections import namedtuple

import modes
from fastpath import defs

from . import config
from .errors import LBError

log = logging.getLogger("lbd.health")

MARK_BASE = 0x7477_0000        # "tw"; + a small id per backend IP; also the routing table number
PROBE_VXLAN = "twprobe0"       # the collect-metadata VXLAN device of tunnel VIP-path probes
PROBE_INNER_MAC = config.format_mac(defs.VXLAN_INNER_MAC.to_bytes(6, "big"))   # its neighbours
MAX_IDS = 0x1_0000
RULE_PREF = 10000              # before the main table (32766)
STATUS_LINE_LIMIT = 4096
IP_TIMEOUT_S = 10.0

# What a probe connects to. via: the backend IP a VIP-path probe is delivered to (None: the
# address is the backend's own). host_header: the Host of an http check (the VIP). vni: a
# VIP-path probe's VXLAN network identifier (None: on-link to the backend's MAC).
# pre: the mode's health_precheck (modes/base.py), run first (None: none).
Target = namedtuple("Target",
                    "check ip port path expect interval timeout via host_header vni pre",
                    defaults=(None, None))


def target_for(vip, backend):
    """The Target of one backend of one VIP (config.VipConfig, config.BackendConfig)."""
    hc = vip.health
    mode = modes.get(vip.mode)
    via_vip = mode.probe_via_vip
    ip, port = (vip.ip, vip.port) if via_vip else (backend.ip, backend.port)
    host = vip.address if vip.port == 80 else "%s:%d" % (vip.address, vip.port)
    return Target(hc.check, ip, port, hc.path, hc.expect, hc.interval, hc.timeout,
                  backend.ip if via_vip else None, host,
                  mode.probe_vni(vip.options) if via_vip else None,
                  mode.health_precheck if via_vip else None)


def describe(t, mark=None):
    """One line saying what a Target probes, e.g. "http GET 198.19.100.1:80/id via ..."."""
    what = "tcp connect" if t.check == "tcp" else "http GET"
    text = "%s %s:%d%s" % (what, config.format_ip(t.ip), t.port,
                           t.path if t.check == "http" else "")
    if t.via is not None:
        text += " via %s" % config.format_ip(t.via)
        if t.vni is not None:
            text += " in VXLAN %d" % t.vni
        if mark is not None:
            text += " (fwmark %#x)" % mark
    return text


# --- the rise/fall state machine --------------------------------------------------------------

class BackendHealth:
    """The health of one backend of one VIP: up until `fall` failures in a row, then down until
    `rise` successes in a row. `since` is wall-clock time (time.time()) of the last flip."""

    def __init__(self, rise, fall, now):
        self.rise, self.fall = rise, fall
        self.up = True
        self.successes = 0          # consecutive
        self.failures = 0           # consecutive
        self.since = now
        self.reason = "checks started"
        self.last = None            # the latest probe's detail
        self.probes = 0

    def record(self, ok, detail, now):
        """Count one probe result; True when the state flipped (self.reason then says why)."""
        self.probes += 1
        self.last = detail
        if ok:
            self.successes += 1
            self.failures = 0
            if not self.up and self.successes >= self.rise:
                return self._flip(True, "%s (%s)" % (detail, _count(self.successes, "success")),
                                  now)
        else:
            self.failures += 1
            self.successes = 0
            if self.up and self.failures >= self.fall:
                return self._flip(False, "%s (%s)" % (detail, _count(self.failures, "failure")),
                                  now)
        return False

    def _flip(self, up, reason, now):
        self.up, self.reason, self.since = up, reason, now
        return True

    @property
    def state(self):
        return "up" if self.up else "down"

    def view(self):
        return {"state": self.state, "since": round(self.since, 3), "reason": self.reason,
                "last_probe": self.last, "successes": self.successes,
                "failures": self.failures, "probes": self.probes}


def _count(n, word):
    return "%d %s" % (n, word + ("es" if word.endswith("s") else "s") if n != 1 else word)


def health_text(view):
    """ "down since 12:01:03: connect refused (2 failures)" from BackendHealth.view(), and the
    latest probe when it says something else ("...; last probe: HTTP 200")."""
    text = "%s since %s: %s" % (view["state"], time.strftime("%H:%M:%S",
                                                             time.localtime(view["since"])),
                                view["reason"])
    last = view.get("last_probe")
    if last and not view["reason"].startswith(last + " ("):
        text += "; last probe: %s" % last
    return text


# --- probes -----------------------------------------------------------------------------------

_STATUS_RE = re.compile(rb"HTTP/[0-9]\.[0-9] ([1-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?"
                        rb"\r?\n?")


def parse_status_line(line):
    """The status code of an HTTP/1.x status line (bytes, with or without CRLF); ValueError if
    it is not one. RFC 9112: HTTP-version SP 3DIGIT SP [reason]; a missing reason is accepted
    with or without its SP, since servers differ."""
    m = _STATUS_RE.fullmatch(line)
    if m is None:
        raise ValueError("not an HTTP status line: %r" % (bytes(line[:60]),))
    return int(m.group(1))


def http_request(t):
    return ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: threeway-health\r\n"
            "Connection: close\r\n\r\n" % (t.path, t.host_header)).encode()


_ERRNO_TEXT = {errno.ECONNREFUSED: "connect refused", errno.EHOSTUNREACH: "no route to host",
               errno.ENETUNREACH: "network unreachable", errno.ECONNRESET: "connection reset",
               errno.ETIMEDOUT: "connect timed out"}


def _oserror_text(e, during=""):
    text = _ERRNO_TEXT.get(e.errno) or (e.strerror or str(e)).lower()
    return text + during


async def probe(t, mark=0):
    """One probe of Target t within t.timeout: (ok, detail). Never raises but for
    cancellation. mark: the SO_MARK of the socket (VIP-path probes)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    writer = None
    stage = "connect"
    try:
        if mark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        async with asyncio.timeout(t.timeout):
            try:
                await loop.sock_connect(sock, (config.format_ip(t.ip), t.port))
            except OSError as e:
                return False, _oserror_text(e)
            if t.check == "tcp":
                return True, "TCP connect ok"
            stage = "reply"
            reader, writer = await asyncio.open_connection(sock=sock, limit=STATUS_LINE_LIMIT)
            writer.write(http_request(t))
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:
                return False, ("closed before the status line" if e.partial
                               else "closed without a reply")
            except asyncio.LimitOverrunError:
                return False, "status line longer than %d bytes" % STATUS_LINE_LIMIT
            except OSError as e:
                return False, _oserror_text(e, " before the status line")
            try:
                status = parse_status_line(line)
            except ValueError:
                return False, "bad status line %r" % (line[:40].decode("latin-1").rstrip(),)
            if status != t.expect:
                return False, "HTTP %d (expected %d)" % (status, t.expect)
            return True, "HTTP %d" % status
    except TimeoutError:
        if stage == "connect":
            return False, "connect timeout after %gs" % t.timeout
        return False, "no status line after %gs" % t.timeout
    except OSError as e:
        return False, _oserror_text(e)
    finally:
        if writer is not None:
            writer.close()
        else:
            sock.close()


# --- policy routing of VIP-path probes ----------------------------------------------------------

async def run_ip(args, input=None, timeout=IP_TIMEOUT_S):
    """Run `ip ARGS` (stdin: input) as a subprocess; (returncode, stdout, stderr)."""
    p = await asyncio.create_subprocess_exec(
        "ip", *args, stdin=asyncio.subprocess.PIPE if input is not None else None,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(
            p.communicate(input.encode() if input is not None else None), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        p.kill()
        await p.wait()
        raise
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


class PolicyRoutes:
    """The fwmark rules and per-backend tables of VIP-path probes (see the module docstring).

    want() says what must exist (sync, any time); a single worker task applies the difference
    to the kernel; ready() waits until a (backend, VIP) route is in."""

    def __init__(self, runner=run_ip):
        self.runner = runner
        self._want = {}            # backend ip -> {vip ip: vni or None}
        self._interface = None
        self._ids = {}             # backend ip -> id (mark = table = MARK_BASE + id)
        self._installed = {}       # backend ip -> (interface, {vip ip: vni or None})
        self._vxlan = False        # PROBE_VXLAN is ours and up
        self._neigh = frozenset()  # VIPs with a permanent neighbour on PROBE_VXLAN
        self._changed = None       # asyncio.Event, replaced after every apply
        self._task = None
        self._dirty = False
        self._swept = False
        self.errors = 0
        self.last_error = None

    def mark(self, bip):
        return MARK_BASE + self._ids[bip]

    def want(self, interface, wanted):
        """wanted: {backend ip: iterable of (VIP ip, vni or None)}; interface: the dev of the
        on-link routes. One path per (backend, VIP ip): a second one is a counted error."""
        new = {}
        for b in sorted(wanted):
            paths = {}
            for v, vni in sorted(wanted[b], key=lambda p: (p[0], -1 if p[1] is None else p[1])):
                if v in paths and paths[v] != vni:
                    self._error("backend %s serves VIP %s along two paths (%s and %s): probes "
                                "use the first" % (config.format_ip(b), config.format_ip(v),
                                                   _path_text(paths[v]), _path_text(vni)))
                    continue
                paths[v] = vni
            if paths:
                new[b] = paths
        self._want = new
        self._interface = interface
        used = set(self._ids.values())
        for b in sorted(self._want):
            if b not in self._ids:
                n = next(i for i in range(MAX_IDS) if i not in used)
                self._ids[b] = n
                used.add(n)
        if self._want or self._installed or self._vxlan:
            self.kick()

    def installed(self, bip, vip, vni=None):
        got = self._installed.get(bip)
        return (got is not None and got[0] == self._interface and vip in got[1]
                and got[1][vip] == vni)

    async def ready(self, bip, vip, vni=None):
        while not self.installed(bip, vip, vni):
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    def view(self):
        return {"rules": [{"backend": config.format_ip(b), "fwmark": "%#x" % self.mark(b),
                           "table": self.mark(b), "interface": ifc,
                           "vips": sorted(config.format_ip(v) for v in paths),
                           "vxlan": {config.format_ip(v): vni
                                     for v, vni in sorted(paths.items()) if vni is not None}}
                          for b, (ifc, paths) in sorted(self._installed.items())],
                "vxlan_device": PROBE_VXLAN if self._vxlan else None,
                "errors": self.errors, "last_error": self.last_error}

    def kick(self):
        """Apply what is wanted (and, the first time, sweep stale rules) in the background."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._work())
        else:
            self._dirty = True

    async def _work(self):
        try:
            if not self._swept:
                self._swept = True
                await self.sweep()
            while True:
                self._dirty = False
                await self._apply(dict(self._want), self._interface)
                if not self._dirty:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as e:       # keep lbd alive; the probes then fail and say so
            self._error("policy routes: %s: %s" % (type(e).__name__, e))
            log.exception("policy routes failed")

    def _error(self, text):
        self.errors += 1
        self.last_error = text
        log.warning("%s", text)

    async def _batch(self, lines):
        if not lines:
            return True
        rc, _out, err = await self.runner(["-force", "-batch", "-"], "\n".join(lines) + "\n")
        if rc != 0:
            self._error("ip -batch failed (exit %d): %s | commands: %s"
                        % (rc, " ".join(err.split())[:300], "; ".join(lines)[:300]))
        return rc == 0

    @staticmethod
    def _route(vip, vni, bip, interface, table):
        if vni is None:
            return ("route replace %s/32 via %s dev %s onlink table %d"
                    % (config.format_ip(vip), config.format_ip(bip), interface, table))
        return ("route replace %s/32 encap ip id %d dst %s dev %s table %d"
                % (config.format_ip(vip), vni, config.format_ip(bip), PROBE_VXLAN, table))

    async def _apply(self, want, interface):
        neigh = frozenset(v for paths in want.values() for v, vni in paths.items()
                          if vni is not None)
        lines, new = [], dict(self._installed)
        if neigh and not self._vxlan:
            # the encap routes below need the device: first, in its own batch
            self._vxlan = await self._batch([
                "link add %s type vxlan external dstport %d" % (PROBE_VXLAN, defs.VXLAN_PORT),
                "link set %s up" % PROBE_VXLAN])
            self._neigh = frozenset()
        for b, (ifc, paths) in self._installed.items():
            if b not in want or ifc != interface:
                m = self.mark(b)
                lines += ["route del %s/32 table %d" % (config.format_ip(v), m) for v in paths]
                lines.append("rule del fwmark %#x lookup %d pref %d" % (m, m, RULE_PREF))
                del new[b]
        for b, paths in want.items():
            m = self.mark(b)
            cur = new.get(b)
            if cur is None:
                lines.append("rule add fwmark %#x lookup %d pref %d" % (m, m, RULE_PREF))
            have = {} if cur is None else cur[1]
            lines += [self._route(v, vni, b, interface, m) for v, vni in sorted(paths.items())
                      if have.get(v, False) != vni]
            lines += ["route del %s/32 table %d" % (config.format_ip(v), m)
                      for v in sorted(set(have) - set(paths))]
            new[b] = (interface, dict(paths))
        if self._vxlan:
            lines += ["neigh replace %s lladdr %s dev %s nud permanent"
                      % (config.format_ip(v), PROBE_INNER_MAC, PROBE_VXLAN)
                      for v in sorted(neigh - self._neigh)]
            lines += ["neigh del %s dev %s" % (config.format_ip(v), PROBE_VXLAN)
                      for v in sorted(self._neigh - neigh)]
            self._neigh = neigh
        await self._batch(lines)
        if self._vxlan and not neigh:
            await self._batch(["link del %s" % PROBE_VXLAN])    # its neighbours go with it
            self._vxlan, self._neigh = False, frozenset()
        self._installed = new
        for b in list(self._ids):
            if b not in new and b not in self._want:
                del self._ids[b]
        ev, self._changed = self._changed, None
        if ev is not None:
            ev.set()

    async def sweep(self):
        """Remove every rule in the MARK_BASE range (left by an lbd that died), its table, and
        the probe VXLAN device."""
        rc, out, err = await self.runner(["-j", "rule", "show"])
        if rc != 0:
            self._error("ip rule show failed: %s" % err.strip())
            return 0
        stale = set()
        for r in json.loads(out or "[]"):
            try:
                m = int(r.get("fwmark", "0"), 0)
            except ValueError:
                continue
            if m & 0xFFFF_0000 == MARK_BASE:
                stale.add((m, r.get("priority"), r.get("table")))
        lines = ["rule del fwmark %#x pref %s lookup %s" % s for s in sorted(stale)]
        await self._batch(lines)
        for m in sorted({m for m, _, _ in stale}):
            await self.runner(["route", "flush", "table", str(m)])
        rc, _out, _err = await self.runner(["link", "show", "dev", PROBE_VXLAN])
        if rc == 0:
            await self.runner(["link", "del", "dev", PROBE_VXLAN])
            log.info("removed the stale probe device %s", PROBE_VXLAN)
        if stale:
            log.info("removed %d stale health-check rules", len(stale))
        return len(stale)

    async def close(self):
        """Remove everything installed (on shutdown)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._want = {}
        await self._apply({}, self._interface)


def _path_text(vni):
    return "on-link" if vni is None else "VXLAN %d" % vni


# --- the monitor --------------------------------------------------------------------------------

def check_interface(name):
    """LBError unless `name` is an interface of lbd's network namespace."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        raise LBError("health.interface", "no interface %r in lbd's network namespace" % name) \
            from None
    return name


def rp_filter(name):
    """The effective rp_filter of interface `name` (max of all and the interface), or None."""
    vals = []
    for where in ("all", name):
        try:
            with open("/proc/sys/net/ipv4/conf/%s/rp_filter" % where) as f:
                vals.append(int(f.read()))
        except (OSError, ValueError):
            return None
    return max(vals)


class HealthMonitor:
    """Runs the probes LBState asks for (state.health_targets()) as asyncio tasks and reports
    each result back (state.health_report). `start()` inside the running loop, `sync()` after
    every change of the state (LBState.on_change), `await close()` on shutdown."""

    def __init__(self, state, max_in_flight=config.DEFAULT_MAX_IN_FLIGHT, routes=None,
                 probe_fn=None):
        self.state = state
        self.routes = routes if routes is not None else PolicyRoutes()
        self.max_in_flight = max_in_flight
        self.probe_fn = probe_fn or probe
        self._sem = None
        self._tasks = {}           # member -> (Target, task)
        self._started = False
        self._warned_rp = set()
        self.counters = {"probes": 0, "probe_failures": 0, "transitions": 0, "in_flight": 0}

    def start(self):
        self._sem = asyncio.Semaphore(self.max_in_flight)
        self._started = True
        self.routes.kick()          # sweeps rules an lbd that died left behind
        self.sync()

    def sync(self):
        """Start, restart or stop probe tasks and policy routes to match the state's targets."""
        if not self._started:
            return
        targets = self.state.health_targets()
        for m, (t, task) in list(self._tasks.items()):
            if targets.get(m) != t:
                task.cancel()
                del self._tasks[m]
        for m, t in targets.items():
            if m not in self._tasks:
                self._tasks[m] = (t, asyncio.ensure_future(self._run(m, t)))
        wanted = {}
        for t in targets.values():
            if t.via is not None:
                wanted.setdefault(t.via, set()).add((t.ip, t.vni))
        iface = self.state.health_interface
        if wanted and iface not in self._warned_rp:
            self._warned_rp.add(iface)
            rp = rp_filter(iface)
            if rp:
                log.warning("rp_filter is %d on %s: replies of VIP-path probes come from the "
                            "VIP, which the main table has no route to, and will be dropped; "
                            "set net.ipv4.conf.{all,%s}.rp_filter=0 in lbd's namespace",
                            rp, iface, iface)
        self.routes.want(iface, wanted)

    async def _run(self, member, t):
        loop = asyncio.get_running_loop()
        await asyncio.sleep(random.uniform(0, min(t.interval, 1.0)))   # spread the first probes
        while True:
            start = loop.time()
            ok, detail = await self._probe_once(t)
            self.counters["probes"] += 1
            if not ok:
                self.counters["probe_failures"] += 1
            tr = self.state.health_report(member, ok, detail)
            if tr is not None:
                self.counters["transitions"] += 1
                (log.info if tr["state"] == "up" else log.warning)(
                    "%s backend %s: %s: %s [%s]", tr["vip"], tr["backend"], tr["state"],
                    tr["reason"], describe(t, self.routes.mark(t.via) if t.via else None))
            await asyncio.sleep(max(0.0, start + t.interval - loop.time()))

    async def _probe_once(self, t):
        async with self._sem:
            self.counters["in_flight"] += 1
            try:
                mark = 0
                if t.via is not None:
                    try:
                        async with asyncio.timeout(t.timeout):
                            await self.routes.ready(t.via, t.ip, t.vni)
                    except TimeoutError:
                        err = self.routes.last_error
                        return False, "VIP-path route not installed" + (": %s" % err if err
                                                                          else " yet")
                    mark = self.routes.mark(t.via)
                if t.pre is not None:
                    ok, detail = await t.pre(self.state.health_interface, self.state.local_ip,
                                             self.state.mac_of(t.via), t.ip, t.port,
                                             t.timeout)
                    if not ok:
                        return False, detail
                return await self.probe_fn(t, mark)
            finally:
                self.counters["in_flight"] -= 1

    def view(self):
        return {"max_in_flight": self.max_in_flight, "tasks": len(self._tasks),
                **self.counters, "routes": self.routes.view()}

    async def close(self, keep_routes=False):
        """Stop the probes and remove the policy routes; keep_routes=True (after a takeover:
        the next lbd uses the same marks and tables) leaves them to it."""
        self._started = False
        tasks = [task for _, task in self._tasks.values()]
        self._tasks = {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if keep_routes:
            return
        try:
            await self.routes.close()
        except Exception:
            log.exception("removing health-check routes failed")
