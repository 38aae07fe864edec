"""The balancer's service and backend tables, and the control commands that change them.

LBState holds the VIPs (each a config.VipConfig with its BackendConfigs) and the reals table,
and applies both to a fast-path Engine. Invariants:
- Atomic commands: a command validates everything, builds the complete new VIP table, its
  real slots and every ServiceSpec, and only then touches the engine (set_real for new slots,
  then one set_services with the full list). If anything raises before that, neither this
  object nor the engine has changed.
- Reals: one slot per (ip, port), shared by every VIP that uses that backend, idx <
  defs.MAX_REALS. A slot is reused for another real only when no VIP references it AND
  engine.real_conns(idx) == 0: after a backend is removed (or set to weight 0) its existing
  flows stay pinned to the slot and keep going; only new connections avoid it. A joining
  cluster instance makes such draining slots for the backends its peers' flows name and its
  table lacks (adopt_draining, before it imports them), so they keep going there too.
- MACs learnt by learn_neighbor are kept per IP and given to every slot of that IP, now and
  later. A slot with no MAC yet makes the fast path drop (drop_no_neigh) until it is learnt.
- Scheduler tables are cached per VIP and rebuilt only when that VIP's backends, weights,
  scheduler or table size change (a Maglev table costs ~50 ms to build).
- Mode changes (vip.set) affect new flows only: flows keep the mode pinned at creation.
- VIP counter slots (ServiceSpec.slot, engine.vip_stats; metrics): one per VIP key, kept for
  the VIP's life and while flows of a deleted VIP still point at it (a VIP added back in that
  time gets it again); a new VIP takes the lowest slot nobody holds.
- Health (lb/health.py probes, health_report() counts): one BackendHealth per (VIP, backend)
  of every VIP with checks, kept across commands while that pair exists. A down backend is
  left out of its VIP's new-flow table like weight 0. The engine's per-real down bit
  (set_real_up) is set iff every VIP referencing that real checks it and finds it down (an
  unchecked use counts as up: its flows must not be expired); a slot no VIP references keeps
  its bit until it is reused, when it starts up. SVC_EXPIRE_NODEST is set on every VIP whose
  effective on_backend_down is expire (config.effective_on_backend_down).
- Restore and reload (apply_config, lb/running.py): the file's VIP table replaces the running
  one in one _commit, so they are atomic as any command; VIPs that stay keep their slots,
  tables and flows. Fixed fields (running.FIXED) must equal the running ones. `timeouts`
  is what the engine runs (flows.timeouts, changed by a restore or reload).
- A planned restart (lb/takeover.py) starts the next lbd's LBState from handover(): the
  same VIPs, slots, MACs and health; the file's VIPs are not applied (the running table wins).
The daemon answers `status` itself and sets `extra_stats`, `extra_health`, `on_change` (called
after every change, so health checks follow) and `interface_check`; everything else lands
in handle().
"""
import copy
import logging
import time

import fastpath
from fastpath import checks, defs

import modes

from . import config, health, running, schedulers
from .config import BackendConfig, VipConfig, format_endpoint, format_ip
from .errors import LBError

MODE_NAMES = {code: name for name, code in defs.MODES.items()}
DEFAULT_CONNS_LIMIT = 100
MAX_CONNS_LIMIT = 1_000_000
HEALTH_ARGS = ("check", "path", "expect", "interval", "timeout", "rise", "fall")

log = logging.getLogger("lbd.state")


class LBState:
    """See the module docstring; commands in docs/interfaces.md."""

    def __init__(self, engine, cfg, handed=None):
        self.engine = engine
        self.cfg = cfg
        self.extra_stats = dict                     # set by the daemon: () -> dict
        self.extra_health = dict                    # set by the daemon: () -> dict
        self.on_change = lambda: None               # set by the daemon: health checks follow
        self.interface_check = lambda name: name    # set by the daemon: LBError if absent
        self.clock = lambda: int(time.monotonic() * 1000)   # ms, the engine's now_ms clock
        self.wall = time.time                       # s, for "down since 12:01:03"
        self.health_interface = cfg.health.interface
        self.timeouts = dict(cfg.flows.timeouts)    # what the engine runs (set_timeouts)
        self._health = {}      # (vip key, (ip, port)) -> health.BackendHealth
        self._slot_down = set()    # real idx the engine has down
        self._vips = {}        # (ip, port, proto name) -> VipConfig, in creation order
        self._slots = {}       # (ip, port) -> real idx: referenced by a VIP, or draining
        self._free = []        # slots released by gc()
        self._next = 0         # slots from here on were never used
        self._vslots = {}      # vip key -> VIP counter slot: live VIPs, or draining ones
        self._tables = {}      # vip key -> (signature, (kind, table, weights))
        self._macs = {}        # ip -> mac bytes, from learn_neighbor
        self._views = {}       # (vip ip, port, mode name) -> the mode's view (SpecPart.view)
        self._local_ip = cfg.lb.ip
        self._gw_ip = cfg.lb.gateway_ip
        if handed is not None:
            self._take(handed)
            return
        new = {}
        for i, v in enumerate(cfg.vips):
            key = _vip_key(v)
            if key in new:
                raise LBError("vip[%d]" % i, "duplicate VIP %s" % _vip_name(v))
            new[key] = copy.deepcopy(v)
        self._commit(new)

    # ---- planned restart (lb/takeover.py) -----------------------------------------------
    HANDED = ("_vips", "_slots", "_free", "_next", "_tables", "_macs", "_health",
              "_slot_down", "health_interface")

    def handover(self):
        """What the next lbd's LBState starts from (LBState(engine, cfg, handed=this)): the
        running VIP table, the real slots as they are (flows name them by index), the cached
        scheduler tables, learnt MACs, health states. Picklable."""
        return {k: getattr(self, k) for k in self.HANDED}

    def _take(self, handed):
        """Start from a running lbd's handover(); the engine holds that lbd's reals already
        (Engine.import_state), so no slot is set again: one commit makes the services."""
        for k in self.HANDED:
            setattr(self, k, handed[k])
        gw = self.gateway_mac()
        if gw is not None:
            self.engine.set_gateway(gw)
        self._commit(self._vips)

    # ---- what the daemon asks -----------------------------------------------------------
    def vip_addresses(self):
        """VIP IPs (host ints): the daemon answers ARP for them."""
        return {k[0] for k in self._vips}

    def wanted_neighbors(self):
        """IPs whose MAC the fast path needs: every real with a slot (draining ones too, their
        flows still go out) and the gateway."""
        ips = {ip for ip, _ in self._slots}
        if self._gw_ip is not None:
            ips.add(self._gw_ip)
        return ips

    def learn_neighbor(self, ip, mac):
        """A MAC for ip (ARP): given to every real slot of that ip, and to the gateway."""
        mac = bytes(mac)
        self._macs[ip] = mac
        for (rip, port), idx in self._slots.items():
            if rip == ip:
                self.engine.set_real(idx, rip, port, mac)
        if ip == self._gw_ip:
            self.engine.set_gateway(mac)

    def mode_vip(self, mode, ip, port):
        """The view of VIP ip:port that `mode` made for its punt handler (Mode.spec), or None
        when that VIP is not in that mode (or the mode keeps no view)."""
        return self._views.get((ip, port, mode))

    def punt_context(self, mode):
        """What mode.punt_handler is given: vip(ip, port), mac_of(ip), gateway_mac()."""
        return PuntContext(self, mode.name)

    def mac_of(self, ip):
        return self._macs.get(ip)

    @property
    def local_ip(self):
        """The data-plane address (host-order int)."""
        return self._local_ip

    def gateway_mac(self):
        return self._macs.get(self._gw_ip) if self._gw_ip is not None else None

    def adopt_draining(self, backends):
        """Real slots for backends no VIP here names and no slot holds (`backends`: {(ip,
        port)}): a joining instance's peers may carry flows of a backend the cluster removed
        while they run, which keep going on the peers' draining slots (module docstring); a
        slot here lets the pulled flows be taken (lb/flowsync.py pending_backends). Only free
        or never-used slots are taken, never one reclaimed; gc() releases the ones no flow
        uses. Call it with the flows' import right after, before gc() runs. Returns how many
        it made."""
        made = 0
        for ip, port in sorted(backends):
            if (ip, port) in self._slots or not ip:
                continue
            if self._free:
                idx = self._free.pop()
            elif self._next < defs.MAX_REALS:
                idx, self._next = self._next, self._next + 1
            else:
                break
            self._slots[(ip, port)] = idx
            self.engine.set_real(idx, ip, port, self._macs.get(ip))
            if idx in self._slot_down:               # a reused slot starts up
                self._slot_down.discard(idx)
                self.engine.set_real_up(idx, True)
            made += 1
        return made

    def gc(self):
        """Release slots no VIP references and no flow uses any more; returns how many."""
        used = self._referenced(self._vips)
        freed = 0
        for key, idx in list(self._slots.items()):
            if key not in used and self.engine.real_conns(idx) == 0:
                del self._slots[key]
                self._free.append(idx)
                freed += 1
        self._vslots = self._vip_slots(self._vips)
        return freed

    def handle(self, cmd, args):
        """Run one control command; a JSON-able result, or LBError naming the bad field."""
        fn = self._COMMANDS.get(cmd)
        if fn is None:
            raise LBError("cmd", "unknown command %r (have: %s)"
                          % (cmd, ", ".join(sorted(self._COMMANDS))))
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise LBError("args", "must be an object")
        return fn(self, args)

    # ---- commands -----------------------------------------------------------------------
    def _cmd_vip_add(self, args):
        _known(args, "vip", "proto", "mode", "scheduler", "maglev_size", "on_backend_down")
        ip, port = config.parse_endpoint(_need(args, "vip"), "vip")
        proto = config.check_proto(_opt(args, "proto", "tcp"))
        key = (ip, port, proto)
        if key in self._vips:
            raise LBError("vip", "%s/%s exists already (vip.del it first, or vip.set)"
                          % (format_endpoint(ip, port), proto))
        if ip == self._local_ip:
            raise LBError("vip", "%s is the balancer's own address" % format_ip(ip))
        mode = config.check_mode(_opt(args, "mode", modes.DEFAULT))
        sched = config.check_scheduler(_opt(args, "scheduler", mode.default_scheduler))
        size = self._size_arg(args, sched, None, 0)
        config.validate_with_mode(mode, port, proto, [])
        v = VipConfig(address=format_ip(ip), port=port, proto=proto, mode=mode.name,
                      scheduler=sched, maglev_size=size, backends=[],
                      on_backend_down=_obd_arg(args, None), options=mode.default_options())
        new = dict(self._vips)
        new[key] = v
        self._commit(new)
        return self._vip_view(v)

    def _cmd_vip_set(self, args):
        """Change a VIP's mode, scheduler, Maglev size or on_backend_down ("default": the
        mode's); its backends stay. New flows only."""
        owned = {}                  # argument -> the modes that take it
        for m in modes.REGISTRY.values():
            for a in m.set_args:
                owned.setdefault(a.name, []).append(m)
        _known(args, "vip", "proto", "mode", "scheduler", "maglev_size", "on_backend_down",
               *owned)
        key, old = self._find_vip(args)
        mode = config.check_mode(_opt(args, "mode", old.mode))
        old_mode = config.check_mode(old.mode)
        carry = mode is not old_mode and mode.carries_options_from(old_mode)
        if mode is not old_mode and not carry:
            try:
                old_mode.check_leave(old.options, config.mode_backends(old.backends), "mode")
            except LBError as e:
                raise LBError(e.field, "%s: %s" % (_vip_name(old), e.message)) from None
        for name, ms in owned.items():
            if args.get(name) is not None and mode not in ms:
                raise LBError(name, "only applies to %s VIPs" % " and ".join(m.name for m in ms))
        options = old.options if mode is old_mode or carry else mode.default_options()
        options = mode.set_options(options, args)
        sched = config.check_scheduler(_opt(args, "scheduler", old.scheduler))
        keep = old.maglev_size if sched == "maglev" and "maglev_size" not in args else None
        size = self._size_arg(args, sched, keep, len(old.backends))
        config.validate_with_mode(mode, old.port, old.proto, _mode_backends(old.backends))
        config.check_health_for_vip(old.health, mode.name, old.proto, self.health_interface,
                                    "mode")
        v = copy.deepcopy(old)
        v.mode, v.scheduler, v.maglev_size = mode.name, sched, size
        v.options = options
        v.on_backend_down = _obd_arg(args, old.on_backend_down)
        return self._replace(key, v)

    def _cmd_vip_health(self, args):
        """Set a VIP's health check; the arguments given replace the VIP's current ones."""
        _known(args, "vip", "proto", *HEALTH_ARGS)
        key, old = self._find_vip(args)
        given = {k: args[k] for k in HEALTH_ARGS if args.get(k) is not None}
        hc = config.parse_health_check(given, "", old.health)
        config.check_health_for_vip(hc, old.mode, old.proto, self.health_interface)
        v = copy.deepcopy(old)
        v.health = hc
        return self._replace(key, v)

    def _cmd_health_interface(self, args):
        """Set (or clear, with null) the management interface of VIP-path probes."""
        _known(args, "interface")
        name = args.get("interface")
        if name is not None:
            self.interface_check(config.check_interface_name(name, "interface"))
        else:
            for v in self._vips.values():
                try:
                    config.check_health_for_vip(v.health, v.mode, v.proto, None)
                except LBError as e:
                    raise LBError("interface", "%s needs it: %s" % (_vip_name(v), e.message)) \
                        from None
        self.health_interface = name
        self._notify()
        return self._health_view()

    def _cmd_health_show(self, args):
        _known(args)
        return self._health_view()

    def _cmd_vip_del(self, args):
        _known(args, "vip", "proto")
        key, old = self._find_vip(args)
        new = dict(self._vips)
        del new[key]
        self._commit(new)
        return self._vip_view(old)

    def _cmd_vip_list(self, args):
        _known(args)
        return [self._vip_view(v) for v in self._vips.values()]

    def _cmd_backend_add(self, args):
        _known(args, "vip", "proto", "backend", "weight", "pool", "name")
        key, old = self._find_vip(args)
        bkey = self._backend_arg(args, old)
        weight = config.check_weight(_opt(args, "weight", 1))
        pool = config.check_mode(old.mode).check_pool(_opt(args, "pool", "default"), "pool")
        name = config.check_backend_name(_opt(args, "name", ""), "name")
        if _find_backend(old, bkey) is not None:
            raise LBError("backend", "%s is already a backend of %s"
                          % (format_endpoint(*bkey), _vip_name(old)))
        v = copy.deepcopy(old)
        v.backends.append(BackendConfig(address=format_ip(bkey[0]), port=bkey[1], weight=weight,
                                        pool=pool, name=name))
        self._check_backends(v)
        return self._replace(key, v)

    def _cmd_backend_del(self, args):
        _known(args, "vip", "proto", "backend")
        key, old = self._find_vip(args)
        bkey = self._backend_arg(args, old)
        j = self._existing_backend(old, bkey)
        v = copy.deepcopy(old)
        del v.backends[j]
        self._check_backends(v)
        return self._replace(key, v)

    def _cmd_backend_weight(self, args):
        _known(args, "vip", "proto", "backend", "weight")
        key, old = self._find_vip(args)
        bkey = self._backend_arg(args, old)
        weight = config.check_weight(_need(args, "weight"))
        j = self._existing_backend(old, bkey)
        v = copy.deepcopy(old)
        v.backends[j].weight = weight
        self._check_backends(v)
        return self._replace(key, v)

    def _rules_vip_arg(self, args):
        key, old = self._find_vip(args)
        mode = config.check_mode(old.mode)
        if not mode.rules:
            raise LBError("vip", "%s is %s, a mode without content rules"
                          % (_vip_name(old), old.mode))
        return key, old, mode

    def _cmd_rule_add(self, args):
        """Insert a content rule (at `index`, default the end) into a VIP whose mode has rules;
        the arguments other than vip, proto and index are the rule's (the mode names them)."""
        key, old, mode = self._rules_vip_arg(args)
        spec = {k: v for k, v in args.items() if k not in ("vip", "proto", "index") and v is not None}
        n = len(mode.rules_of(old.options))
        index = config.parse_int(_opt(args, "index", n), "index", 0, n)
        v = copy.deepcopy(old)
        v.options = mode.rule_add(old.options, spec, {b.pool for b in old.backends}, index)
        return self._replace(key, v)

    def _cmd_rule_del(self, args):
        _known(args, "vip", "proto", "index")
        key, old, mode = self._rules_vip_arg(args)
        n = len(mode.rules_of(old.options))
        if not n:
            raise LBError("index", "%s has no rules" % _vip_name(old))
        index = config.parse_int(_need(args, "index"), "index", 0, n - 1)
        v = copy.deepcopy(old)
        v.options = mode.rule_del(old.options, index)
        return self._replace(key, v)

    def _cmd_rule_list(self, args):
        _known(args, "vip", "proto")
        _, old, _ = self._rules_vip_arg(args)
        return self._vip_view(old)

    def _cmd_conns(self, args):
        _known(args, "vip", "proto", "limit")
        want = None
        if _opt(args, "vip", None) is not None:
            want = config.parse_endpoint(args["vip"], "vip")
        proto = None
        if _opt(args, "proto", None) is not None:
            proto = config.PROTOS[config.check_proto(args["proto"])]
        limit = config.parse_int(_opt(args, "limit", DEFAULT_CONNS_LIMIT), "limit", 1,
                                 MAX_CONNS_LIMIT)
        reals = {idx: key for key, idx in self._slots.items()}
        now = self.clock()
        out, total = [], 0
        for (cip, cport, vip, vport, pr, real, mode, state, created, last,
             pf, prv, bf, br) in self.engine.flows():
            if want is not None and (vip, vport) != want or proto is not None and pr != proto:
                continue
            total += 1
            if len(out) >= limit:
                continue
            rip, rport = reals.get(real, (None, None))
            out.append({
                "client": format_endpoint(cip, cport),
                "vip": format_endpoint(vip, vport),
                "proto": config.PROTO_NAMES.get(pr, str(pr)),
                "backend": format_endpoint(rip, rport) if rip is not None
                else ("-" if real < 0 else "real#%d" % real),
                "mode": MODE_NAMES.get(mode, str(mode)),
                "state": defs.STATE_NAMES[state] if 0 <= state < len(defs.STATE_NAMES)
                else str(state),
                "age_s": round(max(0, now - created) / 1000, 3),
                "idle_s": round(max(0, now - last) / 1000, 3),
                # fwd: client -> backend, rev: backend -> client (0 without a reverse path)
                "packets_fwd": pf, "packets_rev": prv, "bytes_fwd": bf, "bytes_rev": br,
            })
        return {"total": total, "shown": len(out), "conns": out}

    def _cmd_stats(self, args):
        _known(args, "all")
        show_all = _opt(args, "all", False)
        if not isinstance(show_all, bool):
            raise LBError("all", "must be true or false, got %r" % (show_all,))
        ctr = self.engine.counters()
        vips = []
        for v in self._vips.values():
            bs = []
            for b in v.backends:
                idx = self._slots[(b.ip, b.port)]
                bs.append({"backend": b.key, "weight": b.weight,
                           "conns": self.engine.real_conns(idx),
                           "health": self._backend_health(v, b)})
            vips.append({"vip": "%s:%d" % (v.address, v.port), "proto": v.proto,
                         "mode": v.mode, "scheduler": v.scheduler,
                         "on_backend_down": config.effective_on_backend_down(v),
                         "health": v.health.view(), "backends": bs})
        used = self._referenced(self._vips)
        draining = [{"backend": format_endpoint(*k), "conns": self.engine.real_conns(i)}
                    for k, i in self._slots.items() if k not in used]
        mode_names = sorted({v.mode for v in self._vips.values()})
        result = {
            "counters": ctr if show_all else {k: n for k, n in ctr.items() if n},
            "flow_count": self.engine.flow_count(),
            "vips": vips,
            "draining": [d for d in draining if d["conns"]],
            "modes": {m: config.check_mode(m).stats(ctr) for m in mode_names},
        }
        result.update(self.extra_stats() or {})
        return result

    # ---- the running configuration as a file (lb/running.py) --------------------------------
    def running_config(self):
        """The Config lbd runs now: the start file's fixed parts, the current timeouts, health
        interface and VIP table (lbctl's changes included). running.dump() of it is `save`."""
        c = self.cfg
        return config.Config(
            lb=copy.deepcopy(c.lb), io=copy.deepcopy(c.io),
            flows=config.FlowsConfig(c.flows.capacity, dict(self.timeouts)),
            health=config.HealthConfig(self.health_interface, c.health.max_in_flight),
            vips=[copy.deepcopy(v) for v in self._vips.values()], path=c.path,
            cluster=c.cluster, sync=copy.deepcopy(getattr(c, "sync", None)))

    def apply_config(self, new, dry_run=False):
        """Make Config `new` the running one (restore, reload): its VIP table replaces the
        running one in one commit (VIPs not in it are removed), its timeouts and health
        interface are applied; the fixed fields must equal the running ones. Returns
        running.diff(before, new); with dry_run only that, and nothing is touched. LBError
        naming the field, and nothing changed, if anything is refused."""
        before = self.running_config()
        running.check_fixed(before, new)
        d = running.diff(before, new)
        iface = new.health.interface
        if iface is not None and iface != self.health_interface:
            self.interface_check(iface)
        if dry_run:
            return d
        new_vips = {}
        for i, v in enumerate(new.vips):
            key = _vip_key(v)
            if key in new_vips:        # config.parse refuses it already; a Config made by hand
                raise LBError("vip[%d]" % i, "duplicate VIP %s" % _vip_name(v))
            new_vips[key] = copy.deepcopy(v)
        old_iface = self.health_interface
        self.health_interface = iface           # before the commit: health.sync reads it
        try:
            self._commit(new_vips)
        except BaseException:
            self.health_interface = old_iface
            raise
        if new.flows.timeouts != self.timeouts:
            # config.parse checked them (whole seconds, 1..MAX_TIMEOUT_S): cannot fail here.
            # Flows already in the table get the new timeout from their next packet on.
            self.engine.set_timeouts(new.flows.timeouts)
            self.timeouts = dict(new.flows.timeouts)
        return d

    def _cmd_config_save(self, args):
        _known(args)
        cfg = self.running_config()
        return {"config": running.dump(cfg), "toml": running.dumps(cfg)}

    def _cmd_config_restore(self, args):
        """Apply a saved config given as TOML text (lbctl restore reads the file)."""
        _known(args, "toml", "source", "dry_run")
        source = _opt(args, "source", "toml")
        if not isinstance(source, str):
            raise LBError("source", "must be a string, got %r" % (source,))
        dry = _flag(args, "dry_run")
        new = config.loads(_need(args, "toml"), source)
        return self._applied(source, new, dry)

    def _cmd_config_reload(self, args):
        """Re-read lbd's own config file (Config.path), or `file`, and apply it."""
        _known(args, "file", "dry_run")
        dry = _flag(args, "dry_run")
        path = _opt(args, "file", self.cfg.path)
        if not isinstance(path, str) or not path:
            raise LBError("file", "lbd runs no config file; give one" if path is None
                          else "must be a path, got %r" % (path,))
        return self._applied(path, config.load(path), dry)

    def _applied(self, source, new, dry):
        d = self.apply_config(new, dry_run=dry)
        return {"source": source, "dry_run": dry, "applied": not dry, "diff": d,
                "summary": running.summary(d)}

    _COMMANDS = {
        "config.save": _cmd_config_save, "config.restore": _cmd_config_restore,
        "config.reload": _cmd_config_reload,
        "vip.add": _cmd_vip_add, "vip.set": _cmd_vip_set, "vip.del": _cmd_vip_del,
        "vip.list": _cmd_vip_list, "vip.health": _cmd_vip_health,
        "backend.add": _cmd_backend_add,
        "backend.del": _cmd_backend_del, "backend.weight": _cmd_backend_weight,
        "conns": _cmd_conns, "stats": _cmd_stats,
        "health.interface": _cmd_health_interface, "health.show": _cmd_health_show,
        "rule.add": _cmd_rule_add, "rule.del": _cmd_rule_del, "rule.list": _cmd_rule_list,
    }

    # ---- health ---------------------------------------------------------------------------
    def health_targets(self):
        """{(vip key, (ip, port)): health.Target} of every backend of every checked VIP."""
        return {(key, (b.ip, b.port)): health.target_for(v, b)
                for key, v in self._vips.items() if v.health.check != "none"
                for b in v.backends}

    def health_report(self, member, ok, detail):
        """One probe result of member (vip key, (ip, port)). On a transition the VIP's tables
        are rebuilt and a dict {vip, backend, state, reason} is returned; else None. Results
        of a member that is no longer checked are ignored."""
        h = self._health.get(member)
        if h is None or not h.record(ok, detail, self.wall()):
            return None
        v = self._vips[member[0]]
        try:
            self._commit(self._vips)
        except LBError as e:      # nothing changed; say so rather than lose the result
            log.error("%s: applying a health transition failed: %s", _vip_name(v), e)
        return {"vip": _vip_name(v), "backend": format_endpoint(*member[1]),
                "state": h.state, "reason": h.reason}

    def _backend_health(self, v, b):
        h = self._health.get((_vip_key(v), (b.ip, b.port)))
        return None if h is None else h.view()

    def _health_view(self):
        out = []
        targets = self.health_targets()
        for member, t in targets.items():
            v = self._vips[member[0]]
            h = self._health.get(member)
            out.append({"vip": _vip_name(v), "backend": format_endpoint(*member[1]),
                        "probe": health.describe(t), "via_vip": t.via is not None,
                        **(h.view() if h else {})})
        return {"interface": self.health_interface, "backends": out,
                **(self.extra_health() or {})}

    def _new_health(self, new_vips):
        """The BackendHealth of every checked (VIP, backend) of new_vips: the current ones kept
        (with the VIP's rise/fall), new ones up."""
        out = {}
        now = self.wall()
        for key, v in new_vips.items():
            if v.health.check == "none":
                continue
            for b in v.backends:
                m = (key, (b.ip, b.port))
                h = self._health.get(m) or health.BackendHealth(v.health.rise, v.health.fall, now)
                h.rise, h.fall = v.health.rise, v.health.fall
                out[m] = h
        return out

    def _notify(self):
        try:
            self.on_change()
        except Exception:       # the change is made; the health checks catch up on the next
            log.exception("on_change failed")

    # ---- helpers ------------------------------------------------------------------------
    def _find_vip(self, args):
        ip, port = config.parse_endpoint(_need(args, "vip"), "vip")
        proto = config.check_proto(_opt(args, "proto", "tcp"))
        key = (ip, port, proto)
        if key not in self._vips:
            raise LBError("vip", "no VIP %s/%s" % (format_endpoint(ip, port), proto))
        return key, self._vips[key]

    def _backend_arg(self, args, vip):
        ip, port = config.parse_backend(_need(args, "backend"), "backend")
        return ip, vip.port if port is None else port

    def _existing_backend(self, vip, bkey):
        j = _find_backend(vip, bkey)
        if j is None:
            raise LBError("backend", "%s is not a backend of %s"
                          % (format_endpoint(*bkey), _vip_name(vip)))
        return j

    def _size_arg(self, args, sched, keep, n_backends):
        size = _opt(args, "maglev_size", None)
        if size is not None and sched != "maglev":
            raise LBError("maglev_size", "only applies to scheduler maglev, not %s" % sched)
        if sched != "maglev":
            return None
        if size is None:
            size = keep if keep is not None else schedulers.MAGLEV_DEFAULT_SIZE
        return config.check_maglev_size(size, n_backends)

    def _check_backends(self, v):
        """The checks a VIP's new backend list must pass (mode, Maglev size)."""
        if v.scheduler == "maglev":
            try:
                config.check_maglev_size(v.maglev_size, len(v.backends))
            except LBError as e:
                raise LBError("backend", "%s (maglev_size %d; vip.set a larger one)"
                              % (e.message, v.maglev_size)) from None
        mode = config.check_mode(v.mode)
        config.validate_with_mode(mode, v.port, v.proto, _mode_backends(v.backends))
        mode.check_pools(v.options, {b.pool for b in v.backends}, "backend")

    def _replace(self, key, v):
        new = dict(self._vips)
        new[key] = v
        self._commit(new)
        return self._vip_view(v)

    @staticmethod
    def _referenced(vips):
        return {(b.ip, b.port) for v in vips.values() for b in v.backends}

    def _commit(self, new_vips):
        """Make new_vips current: slots, tables, engine. Nothing changes if it raises."""
        slots = dict(self._slots)
        free = sorted(self._free, reverse=True)
        nxt = self._next
        used = self._referenced(new_vips)
        added = []
        for v in new_vips.values():
            for b in v.backends:
                bkey = (b.ip, b.port)
                if bkey in slots:
                    continue
                if free:
                    idx = free.pop()
                elif nxt < defs.MAX_REALS:
                    idx, nxt = nxt, nxt + 1
                else:
                    idx = self._reclaim(slots, used)
                slots[bkey] = idx
                added.append((idx, bkey))
        new_health = self._new_health(new_vips)
        down = {m for m, h in new_health.items() if not h.up}
        tables = {}
        specs = []
        views = {}
        uses = {}          # real idx -> [down?] of every VIP that references it
        for key, v in new_vips.items():
            for b in v.backends:
                m = (key, (b.ip, b.port))
                uses.setdefault(slots[(b.ip, b.port)], []).append(m in down)
            members = tuple((slots[(b.ip, b.port)], b.key,
                             0 if (key, (b.ip, b.port)) in down else b.weight)
                            for b in v.backends)
            sig = (v.scheduler, v.maglev_size, members)
            cached = self._tables.get(key)
            if cached is not None and cached[0] == sig:
                built = cached[1]
            else:
                built = schedulers.build(v.scheduler, members, v.maglev_size)
            tables[key] = (sig, built)
            kind, table, weights = built
            mode = config.check_mode(v.mode)
            part = mode.spec(v, members, _pool_builder(v))
            flags = part.flags
            if config.effective_on_backend_down(v) == "expire":
                flags |= defs.SVC_EXPIRE_NODEST
            if part.view is not None:
                views[(v.ip, v.port, mode.name)] = part.view
            specs.append(fastpath.ServiceSpec(v.ip, v.port, config.PROTOS[v.proto], mode.code,
                                              kind, table, weights, flags, part.l7,
                                              part.tunnel))
        if len(specs) > defs.MAX_SERVICES:
            raise LBError("vip", "at most %d VIPs" % defs.MAX_SERVICES)
        vslots = self._vip_slots(new_vips)
        specs = [s._replace(slot=vslots[key]) for s, key in zip(specs, new_vips)]
        try:
            checks.check_specs(specs)
        except ValueError as e:    # a bug here rather than a user error, but change nothing
            raise LBError("internal", "service table rejected: %s" % e) from None
        slot_down = set(self._slot_down) - {idx for idx, _ in added}
        for idx, flags in uses.items():
            if all(flags):
                slot_down.add(idx)
            else:
                slot_down.discard(idx)
        # From here on nothing is expected to fail: the engine sees the new tables.
        for idx, (ip, port) in added:
            self.engine.set_real(idx, ip, port, self._macs.get(ip))
            if idx in self._slot_down and idx not in slot_down:
                self.engine.set_real_up(idx, True)     # a reused slot starts up
        for idx in sorted(slot_down - self._slot_down):
            self.engine.set_real_up(idx, False)
        for idx in sorted((self._slot_down - slot_down) - {i for i, _ in added}):
            self.engine.set_real_up(idx, True)
        self.engine.set_services(specs)
        self._vips, self._slots, self._next = new_vips, slots, nxt
        self._vslots = vslots
        self._free = free
        self._tables = tables
        self._views = views
        self._health, self._slot_down = new_health, slot_down
        self._notify()

    def _vip_slots(self, vips):
        """{vip key: counter slot} for vips: kept ones, new ones the lowest free, and those
        of VIPs gone whose flows still point at their slot."""
        out = {k: s for k, s in self._vslots.items()
               if k in vips or self.engine.vip_stats(s)[0] > 0}
        taken = set(out.values())
        free = (s for s in range(defs.MAX_SERVICES) if s not in taken)
        for key in vips:
            if key not in out:
                s = next(free, None)
                if s is None:
                    raise LBError("vip", "all %d VIP counter slots are in use (deleted VIPs "
                                  "keep theirs while they have connections)" % defs.MAX_SERVICES)
                out[key] = s
        return out

    def metrics_view(self):
        """What lb/metrics.py reads besides the engines: per VIP {key, vip, proto, mode,
        slot, backends: [{backend, weight, real, up}]} (up: True/False from its health check,
        None when unchecked), and the real slots of backends no VIP references (draining):
        [{backend, real}]."""
        vips = []
        for key, v in self._vips.items():
            bs = []
            for b in v.backends:
                h = self._health.get((key, (b.ip, b.port)))
                bs.append({"backend": format_endpoint(b.ip, b.port), "weight": b.weight,
                           "real": self._slots[(b.ip, b.port)],
                           "up": None if h is None else h.up})
            vips.append({"key": key, "vip": "%s:%d" % (v.address, v.port), "proto": v.proto,
                         "mode": v.mode, "slot": self._vslots[key], "backends": bs})
        used = self._referenced(self._vips)
        draining = [{"backend": format_endpoint(*k), "real": i}
                    for k, i in self._slots.items() if k not in used]
        return {"vips": vips, "draining": draining}

    def _reclaim(self, slots, used):
        """A slot of `slots` nobody references and no flow uses (removed from slots)."""
        for bkey, idx in list(slots.items()):
            if bkey not in used and self.engine.real_conns(idx) == 0:
                del slots[bkey]
                return idx
        raise LBError("backend", "all %d real slots are in use (removed backends keep "
                      "theirs while they have connections)" % defs.MAX_REALS)

    def _vip_view(self, v):
        return {
            "vip": "%s:%d" % (v.address, v.port), "proto": v.proto, "mode": v.mode,
            "scheduler": v.scheduler, "maglev_size": v.maglev_size,
            "on_backend_down": config.effective_on_backend_down(v),
            "health": v.health.view(),
            "backends": [{"backend": b.key, "weight": b.weight, "pool": b.pool,
                          **({"name": b.name} if b.name else {}),
                          "real": self._slots.get((b.ip, b.port)),
                          "health": self._backend_health(v, b)} for b in v.backends],
            **config.check_mode(v.mode).view(v),
        }


class PuntContext:
    """A mode's punt handler's view of the state (modes/base.py, Mode.punt_handler): the VIPs
    of that mode, and the neighbours. Read-only; its handler may run in a worker thread."""

    def __init__(self, state, mode_name):
        self._state, self._mode = state, mode_name

    def vip(self, ip, port):
        return self._state.mode_vip(self._mode, ip, port)

    def mac_of(self, ip):
        return self._state.mac_of(ip)

    def gateway_mac(self):
        return self._state.gateway_mac()


def _pool_builder(v):
    """The scheduler table builder a mode gets for sub-tables of a VIP's members (a mode's
    pools): the VIP's scheduler; Maglev at least the default size."""
    size = None
    if v.scheduler == "maglev":
        size = max(v.maglev_size or 0, schedulers.MAGLEV_DEFAULT_SIZE)
    return lambda members: schedulers.build(v.scheduler, members, size)


def _vip_key(v):
    return (v.ip, v.port, v.proto)


def _vip_name(v):
    return "%s:%d/%s" % (v.address, v.port, v.proto)


def _find_backend(v, bkey):
    for j, b in enumerate(v.backends):
        if (b.ip, b.port) == bkey:
            return j
    return None


def _obd_arg(args, current):
    """on_backend_down of vip.add/vip.set: keep | expire | default (None: the mode's)."""
    value = args.get("on_backend_down")
    if value is None:
        return current
    if value == "default":
        return None
    if value not in config.ON_BACKEND_DOWN:
        raise LBError("on_backend_down", "must be keep, expire or default, got %r" % (value,))
    return value


def _mode_backends(backends):
    return [(b.ip, b.port, b.weight) for b in backends]


def _known(args, *names):
    for k in args:
        if k not in names:
            raise LBError(k, "unknown argument (this command takes: %s)"
                          % (", ".join(names) or "none"))


def _need(args, name):
    if args.get(name) is None:
        raise LBError(name, "missing")
    return args[name]


def _flag(args, name):
    v = _opt(args, name, False)
    if not isinstance(v, bool):
        raise LBError(name, "must be true or false, got %r" % (v,))
    return v


def _opt(args, name, default):
    v = args.get(name)
    return default if v is None else v
