"""The running configuration as a file (ipvsadm -S / -R): save it as TOML, tell two configs
apart, and say what a running lbd cannot change.

    lbctl save      -> LBState.running_config() -> dump() -> dumps(): TOML that `lbd -c` reads
    lbctl restore F, lbctl reload [--file F], SIGHUP
                    -> config.loads/load -> check_fixed(running, new) -> diff(running, new)
                    -> LBState.apply_config: one commit of the whole VIP table

Invariants:
- dump is the inverse of lb/config.py's parse: `config.parse(dump(cfg)) == cfg` for every
  Config that parse returns or LBState runs, path aside (tests/unit/test_running.py checks it
  over hypothesis-made configs of every mode, scheduler, option, health check and rule).
  Each mode writes its own keys (modes/base.py Mode.dump_options, the inverse of its
  parse_options); nothing here names a mode.
- Every key is written, defaults included, so a saved file means the same under tomorrow's
  defaults; left out are only the optional keys whose absence is itself a value: lb.mac,
  lb.gateway, metrics.listen (None: no endpoint), io.offload (None: on where the device takes it), io.rps, io.realtime, health.interface (None), vip.on_backend_down (None: the mode's
  default), a backend's pool "default" and name "" (its address), a VIP's [vip.health] when it is the default (no
  checks).
- FIXED are the fields a running lbd cannot change (its address, devices, flow table size,
  control socket...). check_fixed raises LBError naming the first one that differs from the
  running value (the [bgp] table counts as one field, "bgp"); nothing else in a file is
  refused for being different.
- diff(old, new) is JSON-able and says exactly what applying `new` over `old` changes; its
  "changes" is 0 iff applying changes nothing. The VIP table of `new` replaces the running
  one whole: a VIP that is running but not in the file (added with lbctl since) is removed.
"""
import tomli_w

import modes

from . import cluster_config, config
from .errors import LBError

# (section, key) of what cannot change while lbd runs: the engine, the devices, the socket
# and the health monitor are made with them at start
FIXED = (("lb", "address"), ("lb", "mac"), ("lb", "gateway"), ("lb", "control_socket"),
         ("io", "backend"), ("io", "interface"), ("io", "offload"), ("io", "workers"),
         ("io", "rps"), ("io", "realtime"), ("flows", "capacity"), ("health", "max_in_flight"),
         ("metrics", "listen"))


# --- save ------------------------------------------------------------------------------------

def dump(cfg):
    """The TOML document (a dict of plain values) of a Config."""
    lb = {"address": cfg.lb.address}
    if cfg.lb.mac is not None:
        lb["mac"] = cfg.lb.mac
    if cfg.lb.gateway is not None:
        lb["gateway"] = cfg.lb.gateway
    lb["control_socket"] = cfg.lb.control_socket
    io = {"backend": cfg.io.backend, "interface": cfg.io.interface}
    if cfg.io.offload is not None:
        io["offload"] = cfg.io.offload
    io["workers"] = cfg.io.workers
    if cfg.io.rps is not None:
        io["rps"] = cfg.io.rps
    if cfg.io.realtime is not None:
        io["realtime"] = cfg.io.realtime
    health = {}
    if cfg.health.interface is not None:
        health["interface"] = cfg.health.interface
    health["max_in_flight"] = cfg.health.max_in_flight
    out = {"lb": lb, "io": io,
           "flows": {"capacity": cfg.flows.capacity, "timeouts": dict(cfg.flows.timeouts)},
           "health": health}
    if cfg.metrics.listen is not None:
        out["metrics"] = {"listen": cfg.metrics.listen}
    if cfg.bgp is not None:
        out["bgp"] = cfg.bgp.dump()
    if cfg.cluster is not None:
        out["cluster"] = cluster_config.dump(cfg.cluster)
    if cfg.sync is not None:
        out["sync"] = cfg.sync.dump()
    if cfg.vips:
        out["vip"] = [dump_vip(v) for v in cfg.vips]
    return out


def dump_vip(v):
    """One [[vip]] table: the common keys, the mode's own (Mode.dump_options), the backends."""
    d = {"address": v.address, "port": v.port, "proto": v.proto, "mode": v.mode,
         "scheduler": v.scheduler}
    if v.maglev_size is not None:
        d["maglev_size"] = v.maglev_size
    if v.on_backend_down is not None:
        d["on_backend_down"] = v.on_backend_down
    hc = dump_health(v.health)
    if hc:
        d["health"] = hc
    d.update(modes.get(v.mode).dump_options(v.options))
    if v.backends:
        d["backend"] = [dump_backend(b) for b in v.backends]
    return d


def dump_health(hc):
    """[vip.health] of a HealthCheck; {} for the default (no checks)."""
    if hc == config.HealthCheck():
        return {}
    d = {"check": hc.check}
    if hc.check == "http":
        d.update(path=hc.path, expect=hc.expect)
    d.update(interval=hc.interval, timeout=hc.timeout, rise=hc.rise, fall=hc.fall)
    return d


def dump_backend(b):
    d = {"address": b.address, "port": b.port, "weight": b.weight}
    if b.pool != "default":
        d["pool"] = b.pool
    if b.name:
        d["name"] = b.name
    return d


def dumps(cfg, header=None):
    """TOML text of a Config (tomli-w), after `header` lines as comments."""
    text = tomli_w.dumps(dump(cfg))
    if header:
        text = "".join("# %s\n" % line for line in header.splitlines()) + "\n" + text
    return text


# --- restore / reload --------------------------------------------------------------------------

def check_fixed(running, new):
    """LBError naming the first FIXED field in which `new` differs from `running`; [cluster]
    (lb/cluster.py) is fixed whole, as [sync] is."""
    if running.cluster != new.cluster:
        raise LBError("cluster", "cannot change while lbd runs (running: %s, file: %s); "
                      "restart lbd with it" % (_show(running.cluster and running.cluster.name),
                                               _show(new.cluster and new.cluster.name)))
    if running.sync != new.sync:        # [sync]: the sockets and peers are made at start
        raise LBError("sync", "cannot change while lbd runs (running: %s, file: %s)"
                      % (_show(running.sync and running.sync.dump()),
                         _show(new.sync and new.sync.dump())))
    for section, key in FIXED:
        a = getattr(getattr(running, section), key)
        b = getattr(getattr(new, section), key)
        if a != b:
            raise LBError("%s.%s" % (section, key),
                          "cannot change while lbd runs (running: %s, file: %s); put the "
                          "running value in the file, or restart lbd with it"
                          % (_show(a), _show(b)))
    if running.bgp != new.bgp:      # lb/announce.py: the session is set up at start only
        raise LBError("bgp", "cannot change while lbd runs (running: %s, file: %s); restart "
                      "lbd with it" % (_show(running.bgp and running.bgp.dump()),
                                       _show(new.bgp and new.bgp.dump())))


def _show(v):
    return "not set" if v is None else repr(v)


def vip_name(v):
    return "%s:%d/%s" % (v.address, v.port, v.proto)


def diff(old, new):
    """What applying Config `new` over the running Config `old` changes (JSON-able):

    {"vips": {"added": [{vip, mode, scheduler, backends}], "removed": [{vip, mode,
      backends}], "changed": [{vip, fields: {name: [old, new]}, backends: {added: [{backend,
      weight, pool}], removed: [backend], reweighted: [{backend, old, new}], renamed: [{backend, old, new}], repooled:
      [{backend, old, new}]}, rules: {old: [text], new: [text]} (only when they differ)}]},
     "timeouts": {name: [old, new]}, "health": {"interface": [old, new]} (when it differs),
     "changes": N}

    Field names are the [[vip]] keys as saved (health.check, tunnel.vni, ...; None: not
    set). A VIP is identified by address:port/proto; its backends by ip:port."""
    olds = {v.key: v for v in old.vips}
    news = {v.key: v for v in new.vips}
    added = [{"vip": vip_name(v), "mode": v.mode, "scheduler": v.scheduler,
              "backends": len(v.backends)} for k, v in news.items() if k not in olds]
    removed = [{"vip": vip_name(v), "mode": v.mode, "backends": len(v.backends)}
               for k, v in olds.items() if k not in news]
    changed = []
    for k, v in news.items():
        if k in olds:
            c = _vip_diff(olds[k], v)
            if c is not None:
                changed.append(c)
    timeouts = {k: [old.flows.timeouts.get(k), t] for k, t in new.flows.timeouts.items()
                if old.flows.timeouts.get(k) != t}
    out = {"vips": {"added": added, "removed": removed, "changed": changed},
           "timeouts": timeouts, "health": {}}
    if old.health.interface != new.health.interface:
        out["health"]["interface"] = [old.health.interface, new.health.interface]
    n = len(added) + len(removed) + len(timeouts) + len(out["health"])
    for c in changed:
        b = c["backends"]
        n += len(c["fields"]) + sum(len(x) for x in b.values()) + (1 if "rules" in c else 0)
    out["changes"] = n
    return out


def _vip_diff(a, b):
    ta, tb = _vip_fields(a), _vip_fields(b)
    fields = {k: [ta.get(k), tb.get(k)] for k in sorted(set(ta) | set(tb))
              if ta.get(k) != tb.get(k)}
    ba = {x.key: x for x in a.backends}
    bb = {x.key: x for x in b.backends}
    backends = {
        "added": [{"backend": k, "weight": x.weight, "pool": x.pool}
                  for k, x in bb.items() if k not in ba],
        "removed": [k for k in ba if k not in bb],
        "reweighted": [{"backend": k, "old": ba[k].weight, "new": x.weight}
                       for k, x in bb.items() if k in ba and ba[k].weight != x.weight],
        "repooled": [{"backend": k, "old": ba[k].pool, "new": x.pool}
                     for k, x in bb.items() if k in ba and ba[k].pool != x.pool],
        "renamed": [{"backend": k, "old": ba[k].name, "new": x.name}
                    for k, x in bb.items() if k in ba and ba[k].name != x.name],
    }
    common_a = [k for k in ba if k in bb]
    common_b = [k for k in bb if k in ba]
    if common_a != common_b:
        # the order of the backends that stay moved (it shapes rr's and Maglev's tables)
        fields["backend_order"] = [common_a, common_b]
    ra, rb = _rule_texts(a), _rule_texts(b)
    if not fields and not any(backends.values()) and ra == rb:
        return None
    c = {"vip": vip_name(b), "fields": fields, "backends": backends}
    if ra != rb:
        c["rules"] = {"old": ra, "new": rb}
    return c


def _vip_fields(v):
    """The saved [[vip]] keys of v as flat dotted names, without its backends and rules."""
    mode = modes.get(v.mode)
    d = dump_vip(v)
    d.pop("backend", None)
    if mode.rules_key:
        d.pop(mode.rules_key, None)
    return dict(_flatten(d))


def _flatten(d, prefix=""):
    for k, x in d.items():
        name = "%s.%s" % (prefix, k) if prefix else k
        if isinstance(x, dict):
            yield from _flatten(x, name)
        else:
            yield name, x


def _rule_texts(v):
    mode = modes.get(v.mode)
    return [mode.rule_text(r) for r in mode.rules_of(v.options)]


def summary(d):
    """One line of a diff for the log: "2 changes: +198.19.100.3:80/tcp, ~198.19.100.1:80/tcp"."""
    if not d["changes"]:
        return "no changes"
    parts = (["+" + x["vip"] for x in d["vips"]["added"]]
             + ["-" + x["vip"] for x in d["vips"]["removed"]]
             + ["~" + x["vip"] for x in d["vips"]["changed"]]
             + ["timeouts." + k for k in d["timeouts"]]
             + ["health." + k for k in d["health"]])
    return "%d change%s: %s" % (d["changes"], "" if d["changes"] == 1 else "s", ", ".join(parts))
