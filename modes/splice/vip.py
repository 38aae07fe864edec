"""splice's options of one VIP, and the view of a VIP that its punt handler reads.

Invariants:
- SpliceOptions is a value: every change makes a new one (lb/ swaps a VIP's config whole), so
  a command that fails half-way has changed nothing.
- The rules a SpliceOptions holds passed RuleSet's checks with its limit (order, values).
- SpliceVip is built by the control side for each table swap and only read afterwards: the
  punt handler of every worker reads the same one.
"""
import hashlib
import struct
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


def _hrw(cip, ip, port):
    """Rendezvous weight of one backend for one client address (stable across workers and
    restarts: a keyed hash, not Python's hash())."""
    return hashlib.blake2b(struct.pack("!III", cip, ip, port), digest_size=8).digest()


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
        # the name a redirect's Location gives a backend (BackendConfig.name), else its address
        self.names = {idx: getattr(b, "name", "") or "" for (idx, _, _), b in
                      zip(members, vip.backends)}
        tables = {name: build(tuple(mem)) for name, mem in pools.items()}
        self.l7spec, self.pool_index = self._engine_rules(tables)
        # a redirect's candidates: the pool's members that take new flows (up, weight > 0)
        self.usable = {name: tuple(idx for idx, _, w in mem if w > 0) for name, mem in pools.items()}
        self.pool_sched = {name: t[0] for name, t in tables.items()}

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

    def candidates(self, pool, cip, engine, n):
        """The backends a redirect of client address cip tries, in order, at most n:
        [(real idx, ip, port, name)]. Source-address persistence (a redirected client fetches
        from the node directly, so only its address can keep it there): the first is the
        pool's consistent hash of cip when its scheduler is one (maglev: the engine's table,
        client port 0; sh), else the rendezvous-hash winner among the pool's usable members;
        the next ones follow in rendezvous order. The same client gets the same node while
        that node is up and passes its probe; a node going down moves only its own clients."""
        k = self.pool_index.get(pool)
        members = self.usable.get(pool, ())
        if k is None or not members:
            return []
        order = sorted(members, key=lambda r: _hrw(cip, *self.addr[r]), reverse=True)
        if self.pool_sched.get(pool) in (defs.SCHED_HASH5, defs.SCHED_HASHSRC):
            first = engine.pick(self.ip, self.port, k, cip, 0)
            if first in order:
                order.remove(first)
                order.insert(0, first)
        return [(r,) + self.addr[r] + (self.names.get(r, ""),) for r in order[:n]]
