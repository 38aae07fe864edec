"""splice's content rules: the first request bytes -> a pool. Pure Python, no sockets.

splice answers the client's SYN itself, reads the first bytes of the stream (possibly several
segments, bounded by `limit` bytes and a timeout), and asks `RuleSet.decide(data)` where the
connection goes. This module parses those bytes (an HTTP/1.x request head or a TLS
ClientHello), matches them against the VIP's ordered rules, and validates rules for the
config file and lbctl. It runs once per new splice connection, never per packet.

Invariants:
- Nothing here raises on input from the network: a parser returns a result, NEED_MORE or
  Invalid(reason); decide() returns a Decision, NEED_MORE or Refuse(reason). Every read of
  the ClientHello goes through a bounds-checked cursor; the HTTP head is cut with find(), so
  the work is linear in min(len(data), limit), and the Python-level loops are bounded
  (MAX_HEADERS header lines, MAX_RECORDS records), since the caller calls again on every new
  segment. No regular expressions.
- Only the first `limit` bytes are looked at. A head or hello that is not complete within
  them is Invalid("too long"), so at len(data) >= limit nothing is NEED_MORE any more.
- Results are prefix-stable: once a parser (or decide) answers something other than
  NEED_MORE for data[:i], every longer data that starts with data[:i] gets the same answer (an
  Invalid stays Invalid, its reason may be worded differently). The caller may stop reading
  at the first answer.
- Only LBError (modes/base.py) is raised, and only by the control-side functions
  (parse_rule, RuleSet(...), check_limit): it names the field, e.g.
  `rule[2].kind: unknown kind 'hots' (method, path_prefix, host, sni, prefix, default)`.

Rule semantics (RuleSet.decide):
- Rules are evaluated in order; each says MATCH, NO, or PENDING (it needs more bytes). The
  first rule that is not NO decides: MATCH -> Decision, PENDING -> NEED_MORE (a later rule
  must not win while an earlier one may still match). All NO -> Refuse("no rule matched").
- method, path_prefix, host match only a complete, valid HTTP/1.x request head; sni only a
  complete, valid ClientHello that names a host; prefix matches the raw bytes; default
  matches whatever reaches it, at once (so it belongs last: rules after a forward default
  can never match and are refused at configuration).
- A redirect rule answers with an HTTP 302, so it matches only a valid HTTP request (whatever
  its kind); sni rules cannot redirect. A redirect rule carries its probe (probe.ProbeSpec,
  checked before the 302; None: no probe, the 302 at once).
- rtsp matches only a complete, valid RTSP/1.0 request head (rtsp.py) whose path starts with
  the value (`OPTIONS *` matches any value) and whose User-Agent contains `agent`
  (case-insensitive; "" = any). Its action defaults to redirect: the punt handler answers
  the session itself and decides again on its DESCRIBE (manager.py).
- decide_final(data) is for the timeout or a full buffer: a PENDING rule becomes NO.

Matching:
- method: exact and case-sensitive (RFC 9110 9.1), e.g. "GET".
- path_prefix (and rtsp's value): a plain prefix of the path as sent (before '?'), no
  percent-decoding or dot-segment removal: it routes, it is not an access control.
- host / sni: case-insensitive; the request's port and one trailing dot are ignored;
  "example.com" is exact, "*.example.com" matches one or more labels before ".example.com"
  (www.example.com, a.b.example.com) and not example.com itself (nginx's server_name rule).
  A host rule sees the absolute-form target's authority if there is one, else Host.
- prefix: raw bytes, written as text: a character below 0x80 stands for its byte, `\\xNN` is
  the byte 0xNN, `\\\\` a backslash, `\\r` `\\n` `\\t` `\\0` the usual ones. E.g. "GET " or
  "\\x16\\x03" (a TLS handshake record). In TOML use a literal string ('\\x16\\x03') or
  double the backslashes ("\\\\x16\\\\x03"). Characters >= 0x80 are refused (write the bytes).
"""
import difflib
from dataclasses import dataclass, field
from typing import Optional

from fastpath import defs as _fdefs

from ..base import LBError
from .http import DEFAULT_LIMIT, MAX_LIMIT, MAX_METHOD, MIN_LIMIT, NEED_MORE, HttpRequest, \
    _HOSTCHAR, _TCHAR, _VCHAR, _bad, normalize_host, parse_http_request
from .probe import ProbeSpec, format_probe, parse_probe, probe_as_dict
from .rtsp import RtspRequest, parse_rtsp_request
from .tls import ClientHello, parse_tls_client_hello

MAX_VALUE = 1024                # rule values (a prefix is further bounded by the limit)
MAX_POOL_NAME = 32

KINDS = ("method", "path_prefix", "host", "sni", "prefix", "default", "rtsp")
HTTP_KINDS = ("method", "path_prefix", "host")
ACTIONS = ("forward", "redirect")
RULE_KEYS = ("kind", "value", "pool", "action", "agent", "probe")
MAX_AGENT = 128


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str                   # one of KINDS
    value: str                  # canonical text ("" for default); see the module docstring
    pool: str
    action: str = "forward"     # forward | redirect (an rtsp rule's default is redirect)
    probe: Optional[ProbeSpec] = None   # redirect only: checked before the 302 (None: no probe)
    agent: str = ""             # rtsp only: a User-Agent substring, lowercased ("" = any)


@dataclass(frozen=True, slots=True)
class Decision:
    action: str                 # forward | redirect
    pool: str
    rule_index: int
    reason: str                 # the matching rule's kind
    # What the bytes parsed as, if a rule needed to know (always set for a redirect). Not part
    # of equality: a prefix or default rule may decide before the request head is complete.
    http: Optional[HttpRequest] = field(default=None, compare=False)
    tls: Optional[ClientHello] = field(default=None, compare=False)
    rtsp: Optional[RtspRequest] = field(default=None, compare=False)
    rule: Optional[Rule] = field(default=None, compare=False)     # the rule that matched


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: str


# --- rules ---------------------------------------------------------------------------------------

_MATCH, _NO, _PENDING = 1, 0, 2


class RuleSet:
    """A VIP's ordered rules, compiled; decide() runs once per new splice connection.

    RuleSet(rules, limit) validates every rule (LBError naming `field_prefix[i].field`) and
    refuses rules placed after a forward default (they could never match)."""

    def __init__(self, rules, limit=DEFAULT_LIMIT, field_prefix="rule"):
        self.limit = check_limit(limit)
        canon = []
        for i, r in enumerate(rules):
            fld = "%s[%d]" % (field_prefix, i)
            if not isinstance(r, Rule):
                raise LBError(fld, "must be a Rule, got %r" % (r,))
            # the same checks as parse_rule, so a Rule built by hand gets them too; the rule
            # kept is the canonical one (host lowercased, prefix re-escaped)
            canon.append(parse_rule(rule_as_dict(r), fld, limit=self.limit))
        self.rules = tuple(canon)
        self._compiled = [_compile(r) for r in self.rules]
        for i, r in enumerate(self.rules):
            if r.kind == "default" and r.action == "forward" and i + 1 < len(self.rules):
                raise LBError("%s[%d]" % (field_prefix, i + 1),
                              "unreachable: %s[%d] is a default that matches everything "
                              "before it" % (field_prefix, i))
        self.needs_http = any(r.kind in HTTP_KINDS or (r.action == "redirect" and r.kind != "rtsp")
                              for r in self.rules)
        self.needs_tls = any(r.kind == "sni" for r in self.rules)
        self.needs_rtsp = any(r.kind == "rtsp" for r in self.rules)
        # the punt handler answers an RTSP session's requests itself up to its DESCRIBE
        self.rtsp_redirect = any(r.kind == "rtsp" and r.action == "redirect" for r in self.rules)

    def __len__(self):
        return len(self.rules)

    def fast_rules(self):
        """The rules as the fast path applies them itself (fastpath/defs.py L7_*):
        [(kind, arg bytes, pool name)] in order, or None when one of them is Python's alone
        (sni, or a redirect). Where the fast path decides, it decides as decide() would."""
        out = []
        for rule, _, arg in self._compiled:
            if rule.action != "forward":
                return None
            k = rule.kind
            if k == "default":
                out.append((_fdefs.L7_DEFAULT, b"", rule.pool))
            elif k == "prefix":
                out.append((_fdefs.L7_PREFIX, arg, rule.pool))
            elif k == "method":
                out.append((_fdefs.L7_METHOD, arg.encode("utf-8"), rule.pool))
            elif k == "path_prefix":
                out.append((_fdefs.L7_PATH, arg.encode("utf-8"), rule.pool))
            elif k == "host":
                exact, suffix = arg
                out.append((_fdefs.L7_HOST, exact.encode("utf-8"), rule.pool) if exact is not None
                           else (_fdefs.L7_HOST_SUFFIX, suffix.encode("utf-8"), rule.pool))
            else:
                return None
        return out

    def decide(self, data):
        """Decision | NEED_MORE | Refuse("no rule matched"). Never NEED_MORE once
        len(data) >= limit."""
        return self._decide(data, final=False)

    def decide_final(self, data):
        """As decide, for the timeout or a full buffer: a rule still waiting for bytes does
        not match. Decision | Refuse, never NEED_MORE."""
        return self._decide(data, final=True)

    def _decide(self, data, final):
        data = bytes(data[:self.limit])
        http = tls = rtsp = None
        if self.needs_http:
            http = parse_http_request(data, self.limit)
        if self.needs_tls:
            tls = parse_tls_client_hello(data, self.limit)
        if self.needs_rtsp:
            rtsp = parse_rtsp_request(data, self.limit)
        req = http if isinstance(http, HttpRequest) else None
        hello = tls if isinstance(tls, ClientHello) else None
        rreq = rtsp if isinstance(rtsp, RtspRequest) else None
        for i, (rule, test, arg) in enumerate(self._compiled):
            if rule.action == "redirect" and rule.kind != "rtsp" and req is None:
                v = _PENDING if http is NEED_MORE else _NO
            else:
                v = test(arg, data, http, tls, rtsp)
            if v == _PENDING:
                if final:
                    continue
                return NEED_MORE
            if v == _MATCH:
                return Decision(rule.action, rule.pool, i, rule.kind, req, hello, rreq, rule)
        return Refuse("no rule matched")


def _state(parsed):
    return _PENDING if parsed is NEED_MORE else _NO


def _t_method(arg, data, http, tls, rtsp=None):
    if isinstance(http, HttpRequest):
        return _MATCH if http.method == arg else _NO
    return _state(http)


def _t_path(arg, data, http, tls, rtsp=None):
    if isinstance(http, HttpRequest):
        return _MATCH if http.path.startswith(arg) else _NO
    return _state(http)


def _name_matches(arg, name):
    exact, suffix = arg
    if name is None:
        return False
    if exact is not None:
        return name == exact
    return len(name) > len(suffix) and name.endswith(suffix) and name[0] != "."


def _t_host(arg, data, http, tls, rtsp=None):
    if isinstance(http, HttpRequest):
        return _MATCH if _name_matches(arg, http.hostname) else _NO
    return _state(http)


def _t_sni(arg, data, http, tls, rtsp=None):
    if isinstance(tls, ClientHello):
        return _MATCH if _name_matches(arg, normalize_host(tls.sni)) else _NO
    return _state(tls)


def _t_prefix(arg, data, http, tls, rtsp=None):
    if data.startswith(arg):
        return _MATCH
    return _PENDING if arg.startswith(data) else _NO


def _t_default(arg, data, http, tls, rtsp=None):
    return _MATCH


def _t_rtsp(arg, data, http, tls, rtsp=None):
    prefix, agent = arg
    if isinstance(rtsp, RtspRequest):
        # OPTIONS * is about the server, not a stream: any path prefix takes it
        path_ok = rtsp.path == "*" or rtsp.path.startswith(prefix)
        return _MATCH if path_ok and agent in rtsp.agent.lower() else _NO
    return _state(rtsp)


def _compile(rule):
    k, v = rule.kind, rule.value
    if k == "method":
        return rule, _t_method, v
    if k == "path_prefix":
        return rule, _t_path, v
    if k in ("host", "sni"):
        arg = (None, v[1:]) if v.startswith("*.") else (v, None)
        return rule, (_t_host if k == "host" else _t_sni), arg
    if k == "prefix":
        return rule, _t_prefix, unescape_prefix(v, "value")
    if k == "rtsp":
        return rule, _t_rtsp, (v, rule.agent)
    return rule, _t_default, None


# --- validation for the control side -----------------------------------------------------------

def check_limit(value, fld="limit"):
    if not isinstance(value, int) or isinstance(value, bool) or not MIN_LIMIT <= value <= MAX_LIMIT:
        raise LBError(fld, "must be a number of bytes %d..%d, got %r"
                      % (MIN_LIMIT, MAX_LIMIT, value))
    return value


def parse_rule(spec, field_prefix="rule", pools=None, limit=DEFAULT_LIMIT):
    """A Rule from a dict (a [[vip.rule]] table, or lbctl's arguments); LBError names the field.

    spec keys: kind, value (absent or "" for default; None counts as absent), pool,
    action (forward | redirect; default forward, for rtsp redirect), probe (redirect only:
    true, false or a table, probe.PROBE_KEYS; absent = true), agent (rtsp only: a
    User-Agent substring, matched case-insensitively).
    pools: the pool names that exist, if the caller wants the name checked against them.
    The value is returned in canonical form (host/sni lowercased, prefix re-escaped)."""
    def f(name):
        return "%s.%s" % (field_prefix, name) if field_prefix else name

    if not isinstance(spec, dict):
        raise LBError(field_prefix or "rule", "must be a table, got %r" % (spec,))
    for k in spec:
        if k not in RULE_KEYS:
            near = difflib.get_close_matches(str(k), RULE_KEYS, 1)
            hint = " (did you mean %r?)" % near[0] if near else " (known: %s)" % ", ".join(RULE_KEYS)
            raise LBError(f(k), "unknown key" + hint)
    kind = spec.get("kind")
    if kind is None:
        raise LBError(f("kind"), "missing (%s)" % ", ".join(KINDS))
    if kind not in KINDS:
        raise LBError(f("kind"), "unknown kind %r (%s)" % (kind, ", ".join(KINDS)))
    value = _check_value(kind, spec.get("value"), f("value"), limit)
    pool = spec.get("pool")
    if pool is None:
        raise LBError(f("pool"), "missing (the name of the pool this rule sends to)")
    check_pool_name(pool, f("pool"))
    if pools is not None and pool not in pools:
        raise LBError(f("pool"), "unknown pool %r (have: %s)"
                      % (pool, ", ".join(sorted(pools)) or "none"))
    action = spec.get("action", "redirect" if kind == "rtsp" else "forward")
    if action not in ACTIONS:
        raise LBError(f("action"), "must be forward or redirect, got %r" % (action,))
    if action == "redirect" and kind == "sni":
        raise LBError(f("action"), "redirect answers an HTTP request with a 302; an sni rule "
                      "matches TLS, which cannot be redirected")
    raw_probe = spec.get("probe")
    if raw_probe is not None and action != "redirect":
        raise LBError(f("probe"), "only applies to action redirect")
    probe = parse_probe(True if raw_probe is None else raw_probe, kind, f("probe")) \
        if action == "redirect" else None
    agent = spec.get("agent", "")
    if agent is None:
        agent = ""
    if agent and kind != "rtsp":
        raise LBError(f("agent"), "only applies to kind rtsp (a User-Agent substring)")
    if (not isinstance(agent, str) or len(agent) > MAX_AGENT or not agent.isascii()
            or _bad(agent.encode(), _VCHAR + b" ")):
        raise LBError(f("agent"), "must be a User-Agent substring of at most %d visible "
                      "ASCII characters, got %r" % (MAX_AGENT, agent))
    return Rule(kind=kind, value=value, pool=pool, action=action, probe=probe,
                agent=agent.lower())


def check_pool_name(pool, fld="pool"):
    """A pool name (of a backend or a rule): 1..MAX_POOL_NAME ASCII letters, digits, '-', '_',
    '.'; LBError(fld)."""
    if (not isinstance(pool, str) or not 1 <= len(pool) <= MAX_POOL_NAME or not pool.isascii()
            or _bad(pool.encode("ascii"), _HOSTCHAR)):
        raise LBError(fld, "a pool name is 1-%d letters, digits, '-', '_' or '.', got %r"
                      % (MAX_POOL_NAME, pool))
    return pool


_EXAMPLES = {"method": "an HTTP method like GET", "path_prefix": "a path prefix like /blob",
             "rtsp": "a stream path prefix like /live (/ for every stream)",
             "host": "a host name like www.example.com or *.example.com",
             "sni": "a server name like www.example.com or *.example.com",
             "prefix": r"a byte prefix like 'GET ' or '\x16\x03'"}


def _check_value(kind, value, fld, limit):
    if kind == "default":
        if value not in (None, ""):
            raise LBError(fld, "a default rule takes no value, got %r" % (value,))
        return ""
    if value is None or value == "":
        raise LBError(fld, "missing (%s)" % _EXAMPLES[kind])
    if not isinstance(value, str):
        raise LBError(fld, "must be a string (%s), got %r" % (_EXAMPLES[kind], value))
    if len(value) > MAX_VALUE and kind != "prefix":
        raise LBError(fld, "too long (at most %d characters)" % MAX_VALUE)
    raw = value.encode("latin-1", "replace")
    if kind == "method":
        if not value.isascii() or _bad(raw, _TCHAR) or len(value) > MAX_METHOD:
            raise LBError(fld, "must be an HTTP method token like GET (case-sensitive), got %r"
                          % (value,))
        return value
    if kind in ("path_prefix", "rtsp"):
        if not value.isascii() or _bad(raw, _VCHAR) or not value.startswith("/"):
            raise LBError(fld, "must start with / and hold visible ASCII only (percent-encode "
                          "the rest, as clients send it), got %r" % (value,))
        if "?" in value or "#" in value:
            raise LBError(fld, "matches the path only, without '?' or '#', got %r" % (value,))
        return value
    if kind in ("host", "sni"):
        return _check_name(value, fld, kind)
    b = unescape_prefix(value, fld)
    if len(b) > limit:
        raise LBError(fld, "%d bytes is longer than the limit of %d bytes that splice reads"
                      % (len(b), limit))
    return escape_prefix(b)


def _check_name(value, fld, kind):
    v = value.lower()
    if v.endswith("."):
        v = v[:-1]
    name = v[2:] if v.startswith("*.") else v
    labels = name.split(".")
    ok = (v.isascii() and 0 < len(name) <= 253 and all(labels)
          and all(len(x) <= 63 and not _bad(x.encode(), _HOSTCHAR)
                  and x[0] != "-" and x[-1] != "-" for x in labels))
    if not ok:
        hint = " (the port is not part of it: any port matches)" if ":" in v else ""
        raise LBError(fld, "must be a host name like www.example.com or *.example.com%s, "
                      "got %r" % (hint, value))
    return v


_ESCAPES = {"\\": 0x5C, "r": 0x0D, "n": 0x0A, "t": 0x09, "0": 0x00}
_HEX = "0123456789abcdefABCDEF"


def unescape_prefix(text, fld="value"):
    """The bytes a prefix rule's text stands for (see the module docstring); LBError(fld)."""
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            nxt = text[i + 1:i + 2]
            if nxt == "x":
                hx = text[i + 2:i + 4]
                if len(hx) != 2 or hx[0] not in _HEX or hx[1] not in _HEX:
                    raise LBError(fld, "\\x needs two hex digits, at offset %d of %r" % (i, text))
                out.append(int(hx, 16))
                i += 4
                continue
            if nxt in _ESCAPES and nxt:
                out.append(_ESCAPES[nxt])
                i += 2
                continue
            raise LBError(fld, "unknown escape %r at offset %d (have \\xNN \\\\ \\r \\n \\t \\0)"
                          % ("\\" + nxt, i))
        if ord(ch) >= 0x80:
            raise LBError(fld, "character %r at offset %d is not ASCII: write its bytes as \\xNN"
                          % (ch, i))
        out.append(ord(ch))
        i += 1
    return bytes(out)


def escape_prefix(b):
    """The canonical text of a byte prefix: printable ASCII as is (except \\ and "), the rest
    as \\xNN. unescape_prefix(escape_prefix(b)) == b."""
    out = []
    for c in b:
        if c == 0x5C:
            out.append("\\\\")
        elif 0x20 <= c < 0x7F and c != 0x22:
            out.append(chr(c))
        else:
            out.append("\\x%02x" % c)
    return "".join(out)


def rule_as_dict(rule):
    """The dict form (lbctl --json, the control socket); parse_rule(rule_as_dict(r)) == r."""
    d = {"kind": rule.kind, "value": rule.value, "pool": rule.pool, "action": rule.action}
    if rule.action == "redirect":
        d["probe"] = False if rule.probe is None else probe_as_dict(rule.probe)
    if rule.kind == "rtsp":
        d["agent"] = rule.agent
    return d


def format_rule(rule):
    """One line for lbctl: `path_prefix "/blob" -> big`,
    `default -> web (redirect, probe HEAD <request path> 2xx,3xx 1s x3)`,
    `rtsp "/" agent "vlc" -> media (redirect, no probe)`."""
    s = rule.kind if rule.kind == "default" else '%s "%s"' % (rule.kind, rule.value)
    if rule.agent:
        s += ' agent "%s"' % rule.agent
    s += " -> " + rule.pool
    if rule.action == "redirect":
        s += " (redirect, %s)" % (format_probe(rule.probe) if rule.probe else "no probe")
    return s
