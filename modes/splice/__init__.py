"""splice: delayed binding with sequence-number splicing (F5's FastHTTP, done in the open).

Used when the backend must be chosen by content (HTTP method/path/Host, TLS SNI, a byte
prefix) while the backend still sees the client's own address, and when SYN floods must not
cost state. The package owns all of the mode:

  __init__.py   the door (modes/base.py): options, pools, rules, spec, punt handler
  vip.py        SpliceOptions of a VIP; SpliceVip, the view the punt handler reads
  rules.py      the content rules, their grammar and validation, RuleSet.decide
  http.py       the one HTTP/1.x request head parser (tests keep a regex oracle)
  tls.py        the TLS ClientHello reader (SNI)
  redirect.py   the 302 of a redirect rule (layer-7 DSR)
  manager.py    SpliceManager: the connections being set up (the punt handler)

The fast path's side is fastpath/splice.pxi (cookies, splicing) and fastpath/http.pxi (the
first segment decided there). The public names of rules, http, tls and redirect are
re-exported here, so `from modes import splice` reads like one library.

TOML of a splice VIP: [[vip.rule]] tables (kind, value, pool, action) and [vip.splice]
(limit, timeout); lbctl: `vip set --splice-limit N --splice-timeout S`, `rule add|del|list`,
`backend add --pool NAME`.
"""
import dataclasses

from ..base import LBError, Mode, SetArg, SpecPart
from .http import (DEFAULT_LIMIT, MAX_HEADERS, MAX_LIMIT, MAX_METHOD, MIN_LIMIT,  # noqa: F401
                   NEED_MORE, HttpRequest, Invalid, normalize_host, parse_http_request)
from .manager import SpliceManager
from .redirect import redirect_response  # noqa: F401
from .rules import (ACTIONS, HTTP_KINDS, KINDS, MAX_POOL_NAME, MAX_VALUE,  # noqa: F401
                    RULE_KEYS, Decision, Refuse, Rule, RuleSet, check_limit, check_pool_name,
                    escape_prefix, format_rule, parse_rule, rule_as_dict, unescape_prefix)
from .tls import MAX_RECORDS, ClientHello, parse_tls_client_hello  # noqa: F401
from .vip import (DEFAULT_TIMEOUT_S, SpliceOptions, SpliceVip, check_rule_supported,
                  check_timeout)


def _limit_text(text):
    """lbctl's --splice-limit word -> the checked limit."""
    return check_limit(int(text) if text.strip().isdigit() else text, "splice_limit")


def _seconds_text(text):
    """lbctl's --splice-timeout word -> the checked timeout."""
    try:
        value = float(text)
    except ValueError:
        raise LBError("splice_timeout", "not a number: %r" % (text,)) from None
    return check_timeout(value, "splice_timeout")


class Splice(Mode):
    name = "splice"
    default_scheduler = "rr"
    default_on_backend_down = "expire"
    reverse_path = True
    pools = True
    rules = True
    toml_keys = ("rule", "splice")
    rules_key = "rule"
    set_args = (SetArg("splice_limit", "request bytes read before deciding (%d..%d)"
                       % (MIN_LIMIT, MAX_LIMIT), _limit_text),
                SetArg("splice_timeout", "seconds to wait for them (0.05..60)", _seconds_text))

    def validate(self, vip_port, proto, backends):
        if proto not in ("tcp", 6):
            raise LBError("proto", "splice works on TCP only")

    # ---- options ---------------------------------------------------------------------------
    def default_options(self):
        return SpliceOptions()

    def parse_options(self, raw, path, backends):
        rraw = raw.get("rule", [])
        sraw = raw.get("splice", {})
        if not isinstance(sraw, dict):
            raise LBError(_join(path, "splice"), "must be a table")
        for k in sraw:
            if k not in ("limit", "timeout"):
                raise LBError(_join(path, "splice." + k), "unknown key (known: limit, timeout)")
        limit = check_limit(sraw.get("limit", DEFAULT_LIMIT), _join(path, "splice.limit"))
        timeout = check_timeout(sraw.get("timeout", DEFAULT_TIMEOUT_S),
                                _join(path, "splice.timeout"))
        if not isinstance(rraw, list):
            raise LBError(_join(path, "rule"), "must be an array of tables ([[vip.rule]])")
        pools = {b[3] for b in backends}
        rules = [parse_rule(x, "%s.rule[%d]" % (path, j), pools=pools, limit=limit)
                 for j, x in enumerate(rraw)]
        for j, x in enumerate(rules):
            check_rule_supported(x, "%s.rule[%d].redirect_probe" % (path, j))
        RuleSet(rules, limit=limit, field_prefix=_join(path, "rule"))    # order checks
        return SpliceOptions(tuple(rules), limit, timeout)

    def dump_options(self, options):
        out = {"splice": {"limit": options.limit, "timeout": options.timeout}}
        if options.rules:
            out["rule"] = [_rule_table(x) for x in options.rules]
        return out

    def set_options(self, options, args):
        limit = args.get("splice_limit")
        timeout = args.get("splice_timeout")
        limit = options.limit if limit is None else check_limit(limit, "splice_limit")
        timeout = options.timeout if timeout is None else check_timeout(timeout, "splice_timeout")
        if options.rules:
            RuleSet(options.rules, limit=limit)
        return dataclasses.replace(options, limit=limit, timeout=timeout)

    def check_leave(self, options, backends, fld):
        if options.rules or any(b[3] != "default" for b in backends):
            raise LBError(fld, "it has content rules or pools, which only splice can use: "
                          "delete them first")

    def check_pool(self, pool, fld):
        return check_pool_name(pool, fld)

    def check_pools(self, options, pools, fld):
        for i, rule in enumerate(options.rules):
            if rule.pool not in pools:
                raise LBError(fld, "rule %d (%s) sends to pool %r, which would have no "
                              "backend left: delete or change the rule first"
                              % (i, format_rule(rule), rule.pool))

    # ---- rules -----------------------------------------------------------------------------
    def rules_of(self, options):
        return options.rules

    def rule_add(self, options, spec, pools, index):
        rule = parse_rule(spec, "", pools=pools, limit=options.limit)
        check_rule_supported(rule, "redirect_probe")
        new = list(options.rules)
        new.insert(index, rule)
        RuleSet(new, limit=options.limit)      # e.g. a rule after a default: unreachable
        return dataclasses.replace(options, rules=tuple(new))

    def rule_del(self, options, index):
        new = list(options.rules)
        del new[index]
        return dataclasses.replace(options, rules=tuple(new))

    def rule_text(self, rule):
        return format_rule(rule)

    # ---- the fast path and the punt handler ------------------------------------------------
    def spec(self, vip, members, build):
        view = SpliceVip(vip, members, build)
        return SpecPart(l7=view.l7spec, view=view)

    def view(self, vip):
        o = vip.options
        return {"rules": [dict(rule_as_dict(x), index=i, text=format_rule(x))
                          for i, x in enumerate(o.rules)],
                "splice_limit": o.limit, "splice_timeout": o.timeout,
                "summary": "read up to %d bytes within %.2f s" % (o.limit, o.timeout)}

    def punt_handler(self, engine, ctx, mac):
        return SpliceManager(engine, ctx, mac)


def _rule_table(rule):
    """A [[vip.rule]] table that parse_rule reads back as `rule` (defaults left out)."""
    d = rule_as_dict(rule)
    if d["kind"] == "default":
        del d["value"]
    if not d["redirect_probe"]:
        del d["redirect_probe"]
    return d


def _join(path, key):
    return "%s.%s" % (path, key) if path else key


MODE = Splice()
