"""The TOML config of `lbd -c config.toml`, and the small validators the control commands share.

Schema: docs/interfaces.md. Invariants:
- Every error is an LBError whose field is the dotted path of the bad value, e.g.
  `vip[0].backend[1].weight: must be an integer 0..65535, got -1`; nothing half-parsed escapes.
- Unknown keys are errors (a typo must not pass silently), and so are wrong types: TOML
  booleans are not integers here, and strings are not numbers.
- The dataclasses keep addresses as canonical dotted strings (what the user wrote, normalised)
  with host-order int properties (`.ip`) for the fast path; MACs as "aa:bb:cc:dd:ee:ff" with
  a bytes property.
- The validators (`parse_ip`, `parse_port`, `parse_endpoint`, `parse_backend`, `check_weight`,
  `check_proto`, `check_scheduler`, `check_mode`, `parse_health_check`, ...) take the field
  name to blame, so lb/state.py and lb/cli.py report a bad command argument the same way as a
  bad config value.
- `loads(text)` / `load(path)` / `parse(dict)` read what lb/running.py `dump` writes back
  equal (`parse(dump(cfg)) == cfg`).
- Health checks (lb/health.py runs them): `[health]` holds what is global (the management
  interface of the VIP-path probes), `[vip.health]` the check of one VIP, and
  `vip.on_backend_down` what becomes of a down backend's flows (None: the mode's default,
  see `effective_on_backend_down`).
- `[metrics] listen = "IP:PORT"`: where lbd serves Prometheus /metrics (lb/metrics.py); no
  [metrics] section, or no listen, means no endpoint. Port 0 is refused (the address must
  be known to be scraped).
- `[bgp]` (parse_bgp; lb/announce.py runs it): the eBGP session through which lbd
  announces its VIPs; no [bgp] table means none (cfg.bgp is None).
"""
import difflib
import ipaddress
import tomllib
from dataclasses import dataclass, field
from typing import Optional

import modes
from fastpath import defs

from . import cluster_config, flowsync, schedulers   # [cluster] (lb/cluster.py), [sync]
from .errors import LBError

PROTOS = {"tcp": defs.PROTO_TCP, "udp": defs.PROTO_UDP}
PROTO_NAMES = {v: k for k, v in PROTOS.items()}
IO_BACKENDS = ("tap", "afpacket")
MAX_CAPACITY = 16 * 1024 * 1024
MAX_WEIGHT = 65535
MAX_TIMEOUT_S = 2_000_000         # the fast path keeps milliseconds in 32 bits
DEFAULT_CAPACITY = 262144
DEFAULT_SOCKET = "/run/threeway/lbd.sock"
DEFAULT_INTERFACE = "lbtap"

HEALTH_CHECKS = ("none", "tcp", "http")
ON_BACKEND_DOWN = ("keep", "expire")
HEALTH_MIN_S, HEALTH_MAX_S = 0.05, 3600.0
MAX_RISE_FALL = 100
MAX_IN_FLIGHT = 4096
DEFAULT_MAX_IN_FLIGHT = 64


# --- small validators, shared with lb/state.py and lb/cli.py ---------------------------------

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def parse_ip(value, fld):
    """Dotted IPv4 string -> host-order int."""
    if not isinstance(value, str):
        raise LBError(fld, "must be an IPv4 address string, got %r" % (value,))
    try:
        return int(ipaddress.IPv4Address(value))
    except ValueError:
        raise LBError(fld, "not an IPv4 address: %r" % (value,)) from None


def format_ip(ip):
    return str(ipaddress.IPv4Address(ip))


def format_endpoint(ip, port):
    return "%s:%d" % (format_ip(ip), port)


def parse_port(value, fld):
    """An int 1..65535."""
    if not _is_int(value) or not 1 <= value <= 65535:
        raise LBError(fld, "must be a port number 1..65535, got %r" % (value,))
    return value


def parse_endpoint(value, fld):
    """"A.B.C.D:PORT" -> (ip, port)."""
    if not isinstance(value, str) or value.count(":") != 1:
        raise LBError(fld, "must be IP:PORT like 198.19.100.1:80, got %r" % (value,))
    host, port = value.split(":")
    if not port.isdigit():
        raise LBError(fld, "port must be a number 1..65535, got %r" % (port,))
    return parse_ip(host, fld), parse_port(int(port), fld)


def parse_backend(value, fld):
    """"IP" or "IP:PORT" -> (ip, port or None)."""
    if not isinstance(value, str) or value.count(":") > 1:
        raise LBError(fld, "must be IP or IP:PORT like 198.19.0.11:80, got %r" % (value,))
    if ":" in value:
        return parse_endpoint(value, fld)
    return parse_ip(value, fld), None


def parse_mac(value, fld):
    """"aa:bb:cc:dd:ee:ff" -> 6 bytes."""
    parts = value.split(":") if isinstance(value, str) else []
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise LBError(fld, "must be a MAC like 02:54:57:00:00:02, got %r" % (value,))
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise LBError(fld, "must be a MAC like 02:54:57:00:00:02, got %r" % (value,)) from None


def format_mac(mac):
    return ":".join("%02x" % b for b in mac)


def parse_int(value, fld, lo, hi, what="an integer"):
    """An int in lo..hi (not a bool, not a string: lb/cli.py converts its text first)."""
    if not _is_int(value) or not lo <= value <= hi:
        raise LBError(fld, "must be %s %d..%d, got %r" % (what, lo, hi, value))
    return value


def check_weight(value, fld="weight"):
    return parse_int(value, fld, 0, MAX_WEIGHT)


def check_proto(value, fld="proto"):
    """"tcp" | "udp" -> the name (use PROTOS[name] for the number)."""
    if value not in PROTOS:
        raise LBError(fld, "must be tcp or udp, got %r" % (value,))
    return value


def check_scheduler(value, fld="scheduler"):
    if value not in schedulers.NAMES:
        raise LBError(fld, "unknown scheduler %r (have: %s)"
                      % (value, ", ".join(schedulers.NAMES)))
    return value


def check_mode(value, fld="mode"):
    """The modes.Mode called value; LBError(fld) if there is none."""
    if not isinstance(value, str):
        raise LBError(fld, "must be a mode name, got %r" % (value,))
    return modes.get(value, fld)


def parse_seconds(value, fld, lo=HEALTH_MIN_S, hi=HEALTH_MAX_S):
    """A number of seconds (int or float, not a bool or a string) in lo..hi, as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise LBError(fld, "must be a number of seconds %g..%g, got %r" % (lo, hi, value))
    return float(value)


def check_interface_name(value, fld):
    # IFNAMSIZ is 16 with the terminating NUL
    if not isinstance(value, str) or not 1 <= len(value) <= 15 or "/" in value \
            or any(c.isspace() for c in value):
        raise LBError(fld, "must be an interface name of 1..15 characters, got %r" % (value,))
    return value


def check_on_backend_down(value, fld="on_backend_down"):
    if value not in ON_BACKEND_DOWN:
        raise LBError(fld, "must be keep or expire, got %r" % (value,))
    return value


def effective_on_backend_down(vip):
    """What a VIP does with flows of a down backend: its own setting, else the mode's default
    (Mode.default_on_backend_down: keep where the LB cannot tell a live connection from a dead
    one, expire -- IPVS's expire_nodest_conn -- where the next packet should find a live
    backend)."""
    if vip.on_backend_down is not None:
        return vip.on_backend_down
    return modes.get(vip.mode).default_on_backend_down


def parse_health_check(raw, path="", base=None):
    """A HealthCheck from a [vip.health] table (or the args of vip.health): the keys given
    replace those of `base` (default: no checks). Fields are blamed as `path.key` (bare `key`
    when path is ""). path and expect only apply to check = "http"."""
    check_keys(raw, ["check", "path", "expect", "interval", "timeout", "rise", "fall"], path)
    hc = HealthCheck() if base is None else HealthCheck(**vars(base))
    f = lambda k: _join(path, k)   # noqa: E731
    if "check" in raw:
        if raw["check"] not in HEALTH_CHECKS:
            raise LBError(f("check"), "must be one of %s, got %r"
                          % (", ".join(HEALTH_CHECKS), raw["check"]))
        hc.check = raw["check"]
    for k in ("path", "expect"):
        if k in raw and hc.check != "http":
            raise LBError(f(k), "only applies to check = \"http\" (this one is %r)" % hc.check)
    if "path" in raw:
        p = raw["path"]
        if (not isinstance(p, str) or not p.startswith("/") or len(p) > 1024
                or any(ord(c) <= 32 or ord(c) >= 127 for c in p)):
            raise LBError(f("path"), "must be an absolute URL path like /health (printable "
                          "ASCII, no spaces, at most 1024 characters), got %r" % (p,))
        hc.path = p
    if "expect" in raw:
        hc.expect = parse_int(raw["expect"], f("expect"), 100, 599, "an HTTP status")
    for k in ("interval", "timeout"):
        if k in raw:
            setattr(hc, k, parse_seconds(raw[k], f(k)))
    for k in ("rise", "fall"):
        if k in raw:
            setattr(hc, k, parse_int(raw[k], f(k), 1, MAX_RISE_FALL, "a count"))
    if hc.check != "http":
        # path and expect mean nothing then; kept at their defaults so that a VIP's check is
        # one value whatever it was before (a saved config reads back equal, lb/running.py)
        hc.path, hc.expect = HealthCheck.path, HealthCheck.expect
    return hc


def check_health_for_vip(hc, mode, proto, interface, fld="check"):
    """The checks a VIP's health settings must pass with its mode and protocol."""
    if hc.check == "none":
        return
    if proto != "tcp":
        raise LBError(fld, "%s checks open a TCP connection; a %s VIP cannot have them (use "
                      "check = \"none\")" % (hc.check, proto))
    if modes.get(mode).probe_via_vip and interface is None:
        raise LBError(fld, "a %s VIP is probed along the VIP path (addressed to the VIP, "
                      "delivered as the mode delivers), which needs the management interface: "
                      "set [health] interface (e.g. \"mg0\"), or `lbctl health interface`"
                      % mode)


def check_maglev_size(value, n_backends=0, fld="maglev_size"):
    """A prime table size (see schedulers.check_maglev_size)."""
    schedulers.check_maglev_size(value, n_backends, fld)
    return value


def validate_with_mode(mode, vip_port, proto, backends, prefix=""):
    """mode.validate(...) with the mode's field names put under `prefix` (e.g. "vip[0].")."""
    try:
        mode.validate(vip_port, proto, backends)
    except LBError as e:
        raise LBError(prefix + e.field, e.message) from None


def check_keys(table, known, path):
    """LBError for the first key of table not in known (with a close match if there is one)."""
    if not isinstance(table, dict):
        raise LBError(path or "config", "must be a table, got %r" % (table,))
    for k in table:
        if k not in known:
            near = difflib.get_close_matches(k, known, 1)
            hint = " (did you mean %r?)" % near[0] if near else " (known: %s)" % ", ".join(known)
            raise LBError(_join(path, k), "unknown key" + hint)


def _join(path, key):
    return "%s.%s" % (path, key) if path else key


# --- the config ---------------------------------------------------------------------------------

@dataclass
class IOConfig:
    backend: str = "tap"                   # tap | afpacket
    interface: str = DEFAULT_INTERFACE     # tap: device to create; afpacket: interface to bind
    offload: Optional[bool] = None         # vnet headers, GSO superframes, partial checksums;
                                           # None: on where the device takes them (lb/io.py)
    workers: int = 1                       # data-plane threads; > 1: one TAP queue each (tap only)
    rps: Optional[bool] = None             # tap: RPS on lbd's TAP (None: if it can be set)
    realtime: Optional[bool] = None        # data-plane threads under SCHED_FIFO (lb/workers.py;
                                           # None: if the process may, else a warning)


@dataclass
class LBConfig:
    address: str                           # the balancer's own data-plane address
    mac: Optional[str] = None              # None: the daemon uses the interface's MAC
    gateway: Optional[str] = None          # next hop for nat replies to clients
    control_socket: str = DEFAULT_SOCKET

    @property
    def ip(self):
        return int(ipaddress.IPv4Address(self.address))

    @property
    def mac_bytes(self):
        return None if self.mac is None else parse_mac(self.mac, "lb.mac")

    @property
    def gateway_ip(self):
        return None if self.gateway is None else int(ipaddress.IPv4Address(self.gateway))


@dataclass
class FlowsConfig:
    capacity: int = DEFAULT_CAPACITY
    timeouts: dict = field(default_factory=lambda: dict(defs.DEFAULT_TIMEOUTS))  # all keys


@dataclass
class BackendConfig:
    address: str
    port: int
    weight: int = 1
    pool: str = "default"          # the named pool it belongs to (modes with pools)
    name: str = ""                 # the host name a mode's answers give it (splice redirect's
                                   # Location), "" = its address

    @property
    def ip(self):
        return int(ipaddress.IPv4Address(self.address))

    @property
    def key(self):
        return "%s:%d" % (self.address, self.port)


@dataclass
class HealthCheck:
    """One VIP's active check of each of its backends (lb/health.py)."""
    check: str = "none"                    # none | tcp | http
    path: str = "/"                        # http: GET path
    expect: int = 200                      # http: the status that means up
    interval: float = 1.0                  # s between the starts of two probes of a backend
    timeout: float = 1.0                   # s for one probe (connect, request, status line)
    rise: int = 2                          # consecutive successes that bring a down one up
    fall: int = 2                          # consecutive failures that take an up one down

    def view(self):
        if self.check == "none":
            return None
        d = {"check": self.check, "interval": self.interval, "timeout": self.timeout,
             "rise": self.rise, "fall": self.fall}
        if self.check == "http":
            d.update(path=self.path, expect=self.expect)
        return d


@dataclass
class HealthConfig:
    """[health]: what the checks of every VIP share."""
    interface: Optional[str] = None        # lbd's management interface (VIP-path probes)
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT   # probes running at once


@dataclass
class MetricsConfig:
    """[metrics]: the Prometheus endpoint (lb/metrics.py)."""
    listen: Optional[str] = None           # "IP:PORT" of /metrics; None: no endpoint

    @property
    def endpoint(self):
        """(dotted ip, port) or None."""
        if self.listen is None:
            return None
        host, port = self.listen.split(":")
        return host, int(port)


@dataclass
class VipConfig:
    address: str
    port: int
    proto: str = "tcp"
    mode: str = modes.DEFAULT
    scheduler: str = "maglev"
    maglev_size: Optional[int] = None      # set (default 65537) iff scheduler == "maglev"
    backends: list = field(default_factory=list)   # [BackendConfig]
    health: HealthCheck = field(default_factory=HealthCheck)
    on_backend_down: Optional[str] = None  # keep | expire | None: the mode's default
    options: Optional[object] = None       # the mode's own (Mode.parse_options), a value

    @property
    def ip(self):
        return int(ipaddress.IPv4Address(self.address))

    @property
    def key(self):
        return (self.ip, self.port, PROTOS[self.proto])


@dataclass
class Config:
    lb: LBConfig
    io: IOConfig = field(default_factory=IOConfig)
    flows: FlowsConfig = field(default_factory=FlowsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    vips: list = field(default_factory=list)       # [VipConfig]
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    bgp: Optional[object] = None                   # BgpConfig of [bgp], or None
    sync: Optional[object] = None                  # [sync]: lb/flowsync.py SyncConfig
    path: Optional[str] = None                     # the file it came from, if any
    cluster: Optional[object] = None               # [cluster]: lb/cluster_config.py


def load(path):
    """Read and parse a TOML config file; LBError names the file (and line) or the field."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise LBError(str(path), "cannot read config: %s" % (e.strerror or e)) from None
    try:
        text = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LBError(str(path), "not UTF-8 text: %s" % e) from None
    cfg = loads(text, str(path))
    cfg.path = str(path)
    return cfg


def loads(text, source="config"):
    """parse() of a TOML document given as text; LBError names `source` (and the line) for a
    syntax error, else the field."""
    if not isinstance(text, str):
        raise LBError(source, "must be TOML text, got %r" % (type(text).__name__,))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message ends with "(at line L, column C)"
        raise LBError(source, "TOML syntax error: %s" % e) from None
    return parse(data)


def parse(data):
    """A Config from the dict of a parsed TOML document; LBError names the bad field."""
    check_keys(data, ["io", "lb", "flows", "health", "vip", "metrics", "bgp", "cluster",
                      "sync"], "")
    io = _parse_io(data.get("io", {}))
    if "lb" not in data:
        raise LBError("lb", "missing section [lb] (the balancer's address)")
    lb = _parse_lb(data["lb"])
    flows = _parse_flows(data.get("flows", {}))
    health = _parse_health(data.get("health", {}))
    vips_raw = data.get("vip", [])
    if not isinstance(vips_raw, list):
        raise LBError("vip", "must be an array of tables ([[vip]])")
    vips, seen = [], {}
    for i, raw in enumerate(vips_raw):
        path = "vip[%d]" % i
        v = parse_vip(raw, path)
        if v.key in seen:
            raise LBError(path, "duplicate of %s (%s:%d/%s)"
                          % (seen[v.key], v.address, v.port, v.proto))
        if v.address == lb.address:
            raise LBError(path + ".address", "%s is the balancer's own address" % v.address)
        check_health_for_vip(v.health, v.mode, v.proto, health.interface,
                             path + ".health.check")
        seen[v.key] = path
        vips.append(v)
    metrics = _parse_metrics(data.get("metrics", {}))
    return Config(lb=lb, io=io, flows=flows, health=health, vips=vips, metrics=metrics,
                  bgp=parse_bgp(data.get("bgp"), lb.address),
                  cluster=cluster_config.parse(data.get("cluster")),
                  sync=flowsync.parse_config(data.get("sync")))


DEFAULT_HOLD_TIME = 3
DEFAULT_EXABGP = "exabgp"


# --- [bgp] (lb/announce.py runs the session) ------------------------------------------------------------------------------------

@dataclass
class BgpConfig:
    """[bgp]: the eBGP session to the router and what to announce."""
    router: str                      # the router's address (the BGP neighbour)
    local: str                       # our session address (the management address)
    asn: int                         # our AS
    router_asn: int                  # the router's AS
    hold_time: int = DEFAULT_HOLD_TIME
    next_hop: Optional[str] = None   # None: [lb] address
    exabgp: str = DEFAULT_EXABGP     # the ExaBGP program

    def dump(self):
        d = {"router": self.router, "local": self.local, "asn": self.asn,
             "router_asn": self.router_asn, "hold_time": self.hold_time}
        if self.next_hop is not None:
            d["next_hop"] = self.next_hop
        if self.exabgp != DEFAULT_EXABGP:
            d["exabgp"] = self.exabgp
        return d


def parse_bgp(raw, lb_address):
    """The BgpConfig of a [bgp] table (None when there is none); LBError names the field."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise LBError("bgp", "must be a table ([bgp])")
    check_keys(raw, ["router", "local", "asn", "router_asn", "hold_time", "next_hop",
                            "exabgp"], "bgp")
    for key in ("router", "local", "asn", "router_asn"):
        if key not in raw:
            raise LBError("bgp." + key, "missing (router, local, asn and router_asn are needed)")
    addr = {}
    for key in ("router", "local", "next_hop"):
        if key in raw:
            addr[key] = format_ip(parse_ip(raw[key], "bgp." + key))
    asn = parse_int(raw["asn"], "bgp.asn", 1, 4294967295)
    router_asn = parse_int(raw["router_asn"], "bgp.router_asn", 1, 4294967295)
    hold = raw.get("hold_time", DEFAULT_HOLD_TIME)
    if not (_is_int(hold) and 3 <= hold <= 65535):
        raise LBError("bgp.hold_time", "must be an integer 3..65535 (seconds), got %r" % (hold,))
    if addr["router"] == addr["local"]:
        raise LBError("bgp.local", "is the router's address (%s)" % addr["router"])
    if addr.get("next_hop") == lb_address:
        addr["next_hop"] = None        # the default, written out
    exabgp = raw.get("exabgp", DEFAULT_EXABGP)
    if not isinstance(exabgp, str) or not exabgp or any(c.isspace() for c in exabgp):
        raise LBError("bgp.exabgp", "must be a program name or path without spaces, got %r"
                      % (exabgp,))
    return BgpConfig(router=addr["router"], local=addr["local"], asn=asn,
                     router_asn=router_asn, hold_time=hold, next_hop=addr.get("next_hop"),
                     exabgp=exabgp)




def _parse_io(raw):
    check_keys(raw, ["backend", "interface", "offload", "workers", "rps", "realtime"], "io")
    io = IOConfig()
    if "backend" in raw:
        if raw["backend"] not in IO_BACKENDS:
            raise LBError("io.backend", "must be one of %s, got %r"
                          % (", ".join(IO_BACKENDS), raw["backend"]))
        io.backend = raw["backend"]
    if "interface" in raw:
        io.interface = check_interface_name(raw["interface"], "io.interface")
    if "offload" in raw:
        # both backends read vnet headers: tap with IFF_VNET_HDR, afpacket PACKET_VNET_HDR
        if not isinstance(raw["offload"], bool):
            raise LBError("io.offload", "must be true or false (virtio-net headers and GSO "
                          "superframes on the %s backend), got %r" % (io.backend, raw["offload"]))
        io.offload = raw["offload"]
    if "workers" in raw:
        io.workers = parse_int(raw["workers"], "io.workers", 1, 16)   # threads = TAP queues
        if io.workers > 1 and io.backend != "tap":
            raise LBError("io.workers", "%d workers need the tap backend (a multi-queue TAP "
                          "steers each flow to one worker); %s has one queue: use workers = 1"
                          % (io.workers, io.backend))
    if "rps" in raw:
        if not isinstance(raw["rps"], bool):
            raise LBError("io.rps", "must be true or false (receive packet steering on lbd's "
                          "TAP), got %r" % (raw["rps"],))
        if raw["rps"] and io.backend != "tap":
            raise LBError("io.rps", "is for the tap backend (lbd's own device); with %s, set "
                          "RPS on the interface's peer yourself" % io.backend)
        io.rps = raw["rps"]
    if "realtime" in raw:
        if not isinstance(raw["realtime"], bool):
            raise LBError("io.realtime", "must be true or false (the data-plane threads under "
                          "SCHED_FIFO), got %r" % (raw["realtime"],))
        io.realtime = raw["realtime"]
    return io


def _parse_health(raw):
    check_keys(raw, ["interface", "max_in_flight"], "health")
    h = HealthConfig()
    if "interface" in raw:
        h.interface = check_interface_name(raw["interface"], "health.interface")
    if "max_in_flight" in raw:
        h.max_in_flight = parse_int(raw["max_in_flight"], "health.max_in_flight", 1,
                                    MAX_IN_FLIGHT)
    return h


def _parse_metrics(raw):
    check_keys(raw, ["listen"], "metrics")
    m = MetricsConfig()
    if "listen" in raw:
        ip, port = parse_endpoint(raw["listen"], "metrics.listen")
        m.listen = format_endpoint(ip, port)
    return m


def _parse_lb(raw):
    check_keys(raw, ["address", "mac", "gateway", "control_socket"], "lb")
    if "address" not in raw:
        raise LBError("lb.address", "missing (the balancer's data-plane IPv4 address)")
    lb = LBConfig(address=format_ip(parse_ip(raw["address"], "lb.address")))
    if "mac" in raw:
        lb.mac = format_mac(parse_mac(raw["mac"], "lb.mac"))
    if "gateway" in raw:
        lb.gateway = format_ip(parse_ip(raw["gateway"], "lb.gateway"))
    if "control_socket" in raw:
        s = raw["control_socket"]
        if not isinstance(s, str) or not s:
            raise LBError("lb.control_socket", "must be a path, got %r" % (s,))
        lb.control_socket = s
    return lb


def _parse_flows(raw):
    check_keys(raw, ["capacity", "timeouts"], "flows")
    fl = FlowsConfig()
    if "capacity" in raw:
        fl.capacity = parse_int(raw["capacity"], "flows.capacity", 1, MAX_CAPACITY)
    t = raw.get("timeouts", {})
    check_keys(t, list(defs.DEFAULT_TIMEOUTS), "flows.timeouts")
    for k, v in t.items():
        fl.timeouts[k] = parse_int(v, "flows.timeouts." + k, 1, MAX_TIMEOUT_S,
                                   "a number of seconds")
    return fl


def parse_vip(raw, path="vip"):
    """A VipConfig from one [[vip]] table; fields blamed under `path`."""
    owned = {}                      # [[vip]] key -> the modes that take it (one may be several's)
    for m in modes.REGISTRY.values():
        for k in m.toml_keys:
            owned.setdefault(k, []).append(m)
    check_keys(raw, ["address", "port", "proto", "mode", "scheduler", "maglev_size",
                     "on_backend_down", "health", "backend", *owned], path)
    for k in ("address", "port"):
        if k not in raw:
            raise LBError(_join(path, k), "missing")
    address = format_ip(parse_ip(raw["address"], _join(path, "address")))
    port = parse_port(raw["port"], _join(path, "port"))
    proto = check_proto(raw.get("proto", "tcp"), _join(path, "proto"))
    mode = check_mode(raw.get("mode", modes.DEFAULT), _join(path, "mode"))
    sched = check_scheduler(raw.get("scheduler", mode.default_scheduler),
                            _join(path, "scheduler"))
    braw = raw.get("backend", [])
    if not isinstance(braw, list):
        raise LBError(_join(path, "backend"), "must be an array of tables ([[vip.backend]])")
    backends, seen = [], {}
    for j, b in enumerate(braw):
        bpath = "%s.backend[%d]" % (path, j)
        be = parse_backend_table(b, port, bpath, mode)
        if be.key in seen:
            raise LBError(bpath, "duplicate of %s (%s)" % (seen[be.key], be.key))
        seen[be.key] = bpath
        backends.append(be)
    size = None
    if "maglev_size" in raw:
        if sched != "maglev":
            raise LBError(_join(path, "maglev_size"),
                          "only applies to scheduler maglev (this VIP uses %s)" % sched)
        size = raw["maglev_size"]
    if sched == "maglev":
        size = schedulers.MAGLEV_DEFAULT_SIZE if size is None else size
        check_maglev_size(size, len(backends), _join(path, "maglev_size"))
    validate_with_mode(mode, port, proto, [(b.ip, b.port, b.weight) for b in backends],
                       path + ".")
    obd = None
    if "on_backend_down" in raw:
        obd = check_on_backend_down(raw["on_backend_down"], _join(path, "on_backend_down"))
    hc = parse_health_check(raw.get("health", {}), _join(path, "health"))
    for k, ms in owned.items():
        if k in raw and mode not in ms:
            raise LBError(_join(path, k), "belongs to mode %s (this VIP is %s)"
                          % (" and ".join(m.name for m in ms), mode.name))
    options = mode.parse_options(raw, path, mode_backends(backends))
    return VipConfig(address=address, port=port, proto=proto, mode=mode.name,
                     scheduler=sched, maglev_size=size, backends=backends, health=hc,
                     on_backend_down=obd, options=options)


def mode_backends(backends):
    """[(ip, port, weight, pool)] of BackendConfigs: what a mode's options see of them."""
    return [(b.ip, b.port, b.weight, b.pool) for b in backends]


def parse_backend_table(raw, vip_port, path, mode):
    check_keys(raw, ["address", "port", "weight", "pool", "name"], path)
    if "address" not in raw:
        raise LBError(_join(path, "address"), "missing")
    address = format_ip(parse_ip(raw["address"], _join(path, "address")))
    port = parse_port(raw["port"], _join(path, "port")) if "port" in raw else vip_port
    weight = check_weight(raw.get("weight", 1), _join(path, "weight"))
    pool = mode.check_pool(raw.get("pool", "default"), _join(path, "pool"))
    name = check_backend_name(raw.get("name", ""), _join(path, "name"))
    return BackendConfig(address=address, port=port, weight=weight, pool=pool, name=name)


def check_backend_name(value, fld="name"):
    """A backend's host name ("" = none): DNS labels of letters, digits and '-', dot-separated,
    at most 253 characters. LBError(fld)."""
    if value == "":
        return ""
    ok = isinstance(value, str) and value.isascii() and 0 < len(value) <= 253
    if ok:
        labels = value.rstrip(".").split(".")
        ok = all(0 < len(x) <= 63 and x[0] != "-" and x[-1] != "-"
                 and all(c.isalnum() or c == "-" for c in x) for x in labels)
    if not ok:
        raise LBError(fld, "must be a host name like media3.example, got %r" % (value,))
    return value.lower()
