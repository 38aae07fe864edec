"""The door: everything lb/ may know of a forwarding mode (IPVS's ip_vs_bind_xmit, as a class).

A mode is a module or package of modes/ that owns all of itself: its options and rules
(grammar, validation), what it adds to the fast path's service spec, its punt handler, its
counters and its docs. lb/ reaches a mode only through a `Mode` instance from modes.get() or
modes.REGISTRY, and never names one: where lb/ needs to know whether a VIP has pools, rules,
a reverse path or VIP-path health probes, it asks the mode's attributes below.

Invariants:
- modes/ imports nothing of lb/ (lb/ imports modes/); the one error type of the control side,
  LBError, lives here, and lb/errors.py re-exports it.
- A mode's `code` and its counters come from fastpath/defs.py, the one table: `counters` is
  exactly the rows of defs.COUNTER_TABLE whose mode column names this mode.
- Every method that takes user input raises LBError naming the field, and changes nothing
  when it raises: options are values (frozen dataclasses or tuples), made anew, never mutated.
- A mode's punt handler runs in the data-plane thread of the engine it was made for, once per
  punted frame of its reason and once per tick; it returns frames to send and never blocks.
"""
from dataclasses import dataclass
from typing import Optional

from fastpath import defs


class LBError(Exception):
    """A bad config value, command argument or request. Nothing was changed when it is raised."""

    def __init__(self, field, message):
        super().__init__("%s: %s" % (field, message))
        self.field = field
        self.message = message

    def as_dict(self):
        return {"field": self.field, "message": self.message}


@dataclass(frozen=True)
class SpecPart:
    """What a mode adds to one VIP's fastpath.ServiceSpec, and the view its punt handler reads.

    flags: defs.SVC_* bits of the mode (SVC_EXPIRE_NODEST is lb/'s, from on_backend_down);
    l7: a fastpath.L7Spec (splice's content rules for the fast path) or None;
    tunnel: a fastpath.TunnelSpec or None; view: any object, handed to the mode's punt
    handler by ctx.vip(ip, port) (None: the handler has nothing to look up for this VIP)."""
    flags: int = 0
    l7: Optional[object] = None
    tunnel: Optional[object] = None
    view: Optional[object] = None


@dataclass(frozen=True)
class SetArg:
    """A `vip.set` argument a mode owns: its name in the control protocol, the lbctl help,
    and parse(text) -> value for lbctl (the value is checked again by Mode.set_options)."""
    name: str
    help: str
    parse: object


def check_same_port(mode_name, vip_port, backends):
    """For modes that deliver the client's packet unchanged (dsr, tunnel): every backend
    listens on the VIP port, since nothing rewrites it; LBError("backend") otherwise."""
    for _ip, port, _weight in backends:
        if port != vip_port:
            raise LBError("backend", "%s cannot change the port: the backend receives the "
                          "client's packet unchanged, so it must listen on the VIP port %d, "
                          "not %d" % (mode_name, vip_port, port))


class Mode:
    """The interface. A subclass sets the attributes and overrides what it needs."""
    name = ""                   # as written in TOML and lbctl
    default_scheduler = "maglev"
    default_on_backend_down = "expire"   # keep | expire: what becomes of a down backend's flows
    probe_via_vip = False       # health probes addressed to the VIP and delivered to the backend
                                # the way this mode delivers (the backend answers for the VIP)
    reverse_path = True         # replies come back through the LB (it sees both directions)
    pools = False               # backends may belong to named pools (rules pick one)
    rules = False               # the VIP has content rules (lbctl rule add|del|list)
    toml_keys = ()              # the [[vip]] keys this mode owns, besides the common ones
    rules_key = None            # which of them holds the content rules (an array of tables)
    set_args = ()               # SetArg of the vip.set arguments it owns

    @property
    def code(self):
        return defs.MODES[self.name]

    @property
    def counters(self):
        """The fast-path counters that belong to this mode: the mode column of defs.COUNTER_TABLE
        (shared ones, such as drop_ttl, belong to none and are in the engine's own table)."""
        return tuple(defs.counters_of(self.name))

    def __repr__(self):
        return "<mode %s>" % self.name

    # ---- options ---------------------------------------------------------------------------
    def parse_options(self, raw, path, backends):
        """This mode's options from a [[vip]] table (only its toml_keys are looked at);
        LBError naming `path.key`. backends: [(ip, port, weight, pool)]."""
        return None

    def dump_options(self, options):
        """The inverse of parse_options: this mode's toml_keys of a [[vip]] table, as plain
        TOML values, such that parse_options(dump_options(o), ...) == o (lbctl save). Every
        key is written, defaults too, so a saved file does not depend on today's defaults."""
        if options is not None:
            raise TypeError("%s keeps no options, got %r" % (self.name, options))
        return {}

    def default_options(self):
        """The options of a VIP that enters this mode by vip.add or vip.set."""
        return None

    def set_options(self, options, args):
        """vip.set: the options with the arguments of set_args that are present in args
        (absent or None: unchanged); LBError naming the argument."""
        return options

    def carries_options_from(self, other):
        """A VIP switching from mode `other` to this one keeps its options (rules, pools,
        limits) when both modes hold the same kind of options (splice and hop do); then
        other.check_leave is not asked. Otherwise the VIP starts from default_options()."""
        mine, theirs = self.default_options(), other.default_options()
        return mine is not None and type(mine) is type(theirs)

    def check_leave(self, options, backends, fld):
        """Raise LBError(fld) if a VIP with these options and backends cannot switch to
        another mode (e.g. it has content rules only this mode understands)."""

    def validate(self, vip_port, proto, backends):
        """Raise LBError if this VIP cannot run in this mode. backends: [(ip, port, weight)]."""

    def check_pools(self, options, pools, fld):
        """Raise LBError(fld) if these options need a pool that is not in `pools` (the pool
        names the VIP's backends have): what parse_options refuses in a file, a command must
        not make (lbctl save would write a file lbd -c refuses)."""

    def check_pool(self, pool, fld):
        """A backend's pool name; LBError(fld) for a mode without pools unless it is "default"."""
        if pool != "default":
            raise LBError(fld, "only a mode with pools groups backends (%s has none)" % self.name)
        return pool

    # ---- rules (modes with rules = True) ---------------------------------------------------
    def rules_of(self, options):
        """The VIP's rules, in order (what rule.del's index counts)."""
        return ()

    def rule_add(self, options, spec, pools, index):
        raise LBError("vip", "a %s VIP has no content rules" % self.name)

    def rule_del(self, options, index):
        raise LBError("vip", "a %s VIP has no content rules" % self.name)

    def rule_text(self, rule):
        """One line for a human (lbctl rule list, reload --dry-run)."""
        return str(rule)

    # ---- the fast path ---------------------------------------------------------------------
    def spec(self, vip, members, build):
        """SpecPart for one VIP. vip: lb's VipConfig (address, port, proto, scheduler,
        maglev_size, backends with .pool, options); members: ((real idx, "ip:port", weight
        or 0 if down), ...) in backend order; build(members, size) -> (kind, table, weights),
        the VIP's scheduler table builder."""
        return SpecPart()

    def view(self, vip):
        """Extra keys of this mode in `vip list` / `rule list` (JSON-able)."""
        return {}

    # An async check run before each health probe of each backend of a VIP of this mode, or
    # None: fn(iface, lb_ip, backend_mac, vip_ip, port, timeout) -> (ok, detail); not ok:
    # the probe fails with that detail (hop: does the backend have the shim?)
    health_precheck = None

    def probe_vni(self, options):
        """How a VIP-path probe (probe_via_vip) is carried to a backend: None, on-link to the
        backend's MAC (dsr); or a VXLAN network identifier: in VXLAN to the backend's address,
        routed (tunnel). lb/health.py installs the route that does it."""
        return None

    def punt_handler(self, engine, ctx, mac):
        """The object that handles this mode's punted frames on one engine, or None.
        It has: reasons (the defs.C indexes of the punt counters it takes), handle(frame, now,
        reason) ->
        [frames], tick(now) -> [frames], counters() -> dict; and, if it keeps state a planned
        restart must carry (lbd --takeover), handover() -> a picklable object and take(that
        object), which the next lbd's handler on the same worker is given before its first
        frame. ctx: vip(ip, port) -> this mode's SpecPart.view of that VIP or None,
        mac_of(ip), gateway_mac()."""
        return None

    def stats(self, counters):
        return {name: counters.get(name, 0) for name in self.counters}
