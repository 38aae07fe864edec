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
    backend choice per pool (the pool's scheduler table, built like any VIP's). A request
    that matches no rule goes to the pool named "default" when there is one."""

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
        self.addr = {idx: (b.ip, b.port) for (idx, _, _), b in zip(members, vip.backends)}
        self.tables = {name: build(tuple(mem)) for name, mem in pools.items()}
        self.cursor = {name: 0 for name in pools}
        self.l7spec = self._fast_path_rules()

    def _fast_path_rules(self):
        """The rules and pools for the fast path to decide first segments itself, or None
        when a rule is Python's alone (then every decision is made by the punt handler)."""
        rules = self.ruleset.fast_rules()
        if rules is None:
            return None
        names = []
        for _, _, pool in rules:
            if pool not in names:
                names.append(pool)
        empty = (defs.SCHED_SEQ, (), ())        # a pool with no backend: Python refuses
        pools = tuple(tuple(self.tables[n]) if n in self.tables else empty for n in names)
        return fastpath.L7Spec(self.limit, tuple((k, a, names.index(p)) for k, a, p in rules),
                               pools)

    def choose(self, pool, h, cip, engine):
        """(real idx, ip, port) of a backend of `pool` for a new flow, or None."""
        t = self.tables.get(pool)
        if t is None or not t[1]:
            return None
        kind, table, weights = t
        if kind == defs.SCHED_SEQ:
            real = table[self.cursor[pool] % len(table)]
            self.cursor[pool] += 1
        elif kind == defs.SCHED_HASH5:
            real = table[h % len(table)]
        elif kind == defs.SCHED_HASHSRC:
            real = table[fastpath.mix64(cip) % len(table)]
        else:
            best = 0
            for k in range(1, len(table)):
                if (engine.real_conns(table[k]) * weights[best]
                        < engine.real_conns(table[best]) * weights[k]):
                    best = k
            real = table[best]
        return (real,) + self.addr[real]
