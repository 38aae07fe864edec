"""splice's options of one VIP, and the view of a VIP that its punt handler reads.

Invariants:
- SpliceOptions is a value: every change makes a new one (lb/ swaps a VIP's config whole), so
  a command that fails half-way has changed nothing.
- The rules a SpliceOptions holds passed RuleSet's checks with its limit (order, values).
- SpliceVip is built by the control side for each table swap and only read afterwards: the
  punt handler of every worker reads the same one.
"""
from dataclasses import dataclass, field

import fastpath
from fastpath import defs

from ..base import LBError
from . import rules as r
from .http import DEFAULT_LIMIT

DEFAULT_TIMEOUT_S = 3.0          # seconds to wait for the request bytes that decide
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 0.05, 60.0


@dataclass(frozen=True)
class SpliceOptions:
    rules: tuple = field(default=())        # (rules.Rule, ...), first match wins
    limit: int = DEFAULT_LIMIT              # request bytes read to decide
    timeout: float = DEFAULT_TIMEOUT_S      # seconds to wait for them


def check_limit(v, fld="splice_limit"):
    return r.check_limit(v, fld)


def check_timeout(v, fld="splice_timeout"):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not MIN_TIMEOUT_S <= v <= MAX_TIMEOUT_S:
        raise LBError(fld, "must be a number of seconds %g..%g, got %r"
                      % (MIN_TIMEOUT_S, MAX_TIMEOUT_S, v))
    return float(v)


def check_rule_supported(rule, fld):
    """The HEAD probe before a redirect is not built yet: refuse it rather than ignore it."""
    if rule.redirect_probe:
        raise LBError(fld, "the HEAD probe before a redirect is not implemented; redirect "
                      "without it (the chosen backend is health-checked if the VIP has checks)")


class SpliceVip:
    """What the punt handler needs of one splice VIP: its rules, limit and timeout, and a
    backend choice per pool. A request that matches no rule goes to the pool named "default"
    when there is one. Every pool's scheduler table (built like any VIP's) goes down to the
    engine in the L7Spec, and a choice made here is the engine's pick in it: one scheduler,
    one rr cursor per pool, whether the fast path or Python decided the request."""

    def __init__(self, vip, members, build):
        opts = vip.options
        rules = list(opts.rules)
        pools = {}
        for (idx, key, weight), b in zip(members, vip.backends):
            pools.setdefault(b.pool, []).append((idx, key, weight))
        if "default" in pools and not any(x.kind == "default" for x in rules):
            rules.append(r.Rule("default", "", "default"))
        self.ruleset = r.RuleSet(rules, limit=opts.limit)
        self.limit = opts.limit
        self.timeout_ms = int(opts.timeout * 1000)
        self.ip, self.port = vip.ip, vip.port
        self.addr = {idx: (b.ip, b.port) for (idx, _, _), b in zip(members, vip.backends)}
        tables = {name: build(tuple(mem)) for name, mem in pools.items()}
        self.l7spec, self.pool_index = self._engine_rules(tables)

    def _engine_rules(self, tables):
        """The L7Spec for the engine, and the index of each pool in it. Its pools: those the
        rules name, in the order they name them (a named pool with no backend gets an empty
        table: the fast path then punts and Python refuses), then the others by name. Its
        rules: the VIP's, for the fast path to decide first segments itself, or none when a
        rule is Python's alone (then the punt handler decides every request)."""
        fast = self.ruleset.fast_rules()
        names = []
        for _, _, pool in fast or ():
            if pool not in names:
                names.append(pool)
        names += sorted(n for n in tables if n not in names)
        empty = (defs.SCHED_SEQ, (), ())
        pools = tuple(tuple(tables[n]) if n in tables else empty for n in names)
        rules = () if fast is None else tuple((k, a, names.index(p)) for k, a, p in fast)
        return fastpath.L7Spec(self.limit, rules, pools), {n: i for i, n in enumerate(names)}

    def choose(self, pool, cip, cport, engine):
        """(real idx, ip, port) of the backend of `pool` for the new flow cip:cport -> this
        VIP, as the engine picks it; None when the pool is unknown or empty."""
        k = self.pool_index.get(pool)
        if k is None:
            return None
        real = engine.pick(self.ip, self.port, k, cip, cport)
        return None if real < 0 else (real,) + self.addr[real]
