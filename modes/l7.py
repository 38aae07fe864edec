"""splice's content side: the first request bytes -> a pool. Pure Python, no sockets.

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
- Only LBError (lb/errors.py) is raised, and only by the control-side functions
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
  its kind); sni rules cannot redirect.
- decide_final(data) is for the timeout or a full buffer: a PENDING rule becomes NO.

Matching:
- method: exact and case-sensitive (RFC 9110 9.1), e.g. "GET".
- path_prefix: a plain prefix of the path as sent (before '?'), no percent-decoding or
  dot-segment removal: it routes, it is not an access control.
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
import re
from dataclasses import dataclass, field
from typing import Optional

from fastpath import defs as _fdefs
from lb.errors import LBError

DEFAULT_LIMIT = 4096
MIN_LIMIT = 64
MAX_LIMIT = 65536
MAX_METHOD = 32                 # longer "methods" are junk; reject early
MAX_HEADERS = 100               # header lines per request (HAProxy's default is 101)
MAX_RECORDS = 64                # TLS records per ClientHello (real clients: 1, DPI evasion: a few)
MAX_VALUE = 1024                # rule values (a prefix is further bounded by the limit)
MAX_POOL_NAME = 64

KINDS = ("method", "path_prefix", "host", "sni", "prefix", "default")
HTTP_KINDS = ("method", "path_prefix", "host")
ACTIONS = ("forward", "redirect")
RULE_KEYS = ("kind", "value", "pool", "action", "redirect_probe")


# --- results ----------------------------------------------------------------------------------

class _NeedMore:
    """The answer 'not enough bytes yet'. One instance: NEED_MORE (compare with `is`)."""
    __slots__ = ()

    def __repr__(self):
        return "NEED_MORE"

    def __reduce__(self):
        return "NEED_MORE"


NEED_MORE = _NeedMore()


@dataclass(frozen=True, slots=True)
class Invalid:
    """The bytes are not what the parser looks for, and more bytes will not change that."""
    reason: str


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str                 # as sent, e.g. "GET"
    target: str                 # the request-target as sent
    path: str                   # "/a/b" (absolute-form: its path; "*" for OPTIONS *; "" for CONNECT)
    query: str                  # after the first '?', without it; "" if none
    version: str                # "HTTP/1.0" | "HTTP/1.1"
    host: Optional[str]         # authority of an absolute-form target, else Host, as sent
    hostname: Optional[str]     # host lowercased, port and trailing dot removed; None if absent/bad
    headers: dict               # lowercased name -> value (repeated headers joined with ", ")
    head_len: int               # bytes up to and including the blank line's LF


@dataclass(frozen=True, slots=True)
class ClientHello:
    sni: Optional[str]          # the host_name of server_name, as sent (ASCII); None if absent
    alpn: list                  # protocol names (latin-1 decoded), in the client's order
    version: int                # highest of supported_versions (GREASE skipped), else legacy_version
    legacy_version: int = 0x0303
    length: int = 0             # bytes of data consumed, record headers included


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str                   # one of KINDS
    value: str                  # canonical text ("" for default); see the module docstring
    pool: str
    action: str = "forward"     # forward | redirect
    redirect_probe: bool = False  # only with redirect; carried for the splice module


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


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: str


# --- byte classes (bytes.translate(None, allowed) leaves only the bytes not allowed) ----------

def _chars(s):
    return bytes(sorted(set(s.encode("latin-1") if isinstance(s, str) else s)))


_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_TCHAR = _chars(_ALNUM + "!#$%&'*+-.^_`|~")                       # RFC 9110 5.6.2 token
_VCHAR = _chars(range(0x21, 0x7F))                                # visible ASCII
_FIELD_VCHAR = _chars(list(range(0x21, 0x7F)) + list(range(0x80, 0x100)) + [0x20, 0x09])
_HOSTCHAR = _chars(_ALNUM + "-._")                                # DNS names as sent in SNI
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")


def _bad(b, allowed):
    return bool(b.translate(None, allowed))


# --- HTTP/1.x request head ---------------------------------------------------------------------

_TOKEN_RE = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# A complete, well-formed head in one C-level match: what almost every request is. It accepts
# exactly the heads the line-by-line parser below accepts (tests/unit/test_l7.py holds them
# together); anything else -- incomplete, odd, or bad -- goes the long way for its verdict.
_HEAD_RE = re.compile(
    rb"(?:\r?\n)*(" + _TOKEN_RE + rb"{1,%d}) ([\x21-\x7e]+) (HTTP/1\.[01])\r?\n"
    rb"((?:" % MAX_METHOD + _TOKEN_RE + rb"+:[\t\x20-\x7e\x80-\xff]*\r?\n)*)\r?\n")
_FIELD_RE = re.compile(rb"(" + _TOKEN_RE + rb"+):([\t\x20-\x7e\x80-\xff]*)\r?\n")


def parse_http_request(data, limit=DEFAULT_LIMIT):
    """An HTTP/1.0 or 1.1 request head -> HttpRequest | NEED_MORE | Invalid(reason).
    (_parse_http_request_lines has the rules; this first tries them all in one regex.)"""
    data = bytes(data)
    m = _HEAD_RE.match(data, 0, min(len(data), limit))
    if m is None:
        return _parse_http_request_lines(data, limit)
    block = m.group(4)
    fields = _FIELD_RE.findall(block)
    if len(fields) > MAX_HEADERS:
        return Invalid("too many headers")
    headers = {}
    for name, value in fields:
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        if key in headers:
            if key == "host":
                return Invalid("duplicate Host")
            headers[key] = headers[key] + ", " + text
        else:
            headers[key] = text
    return _request(m.group(1).decode("ascii"), m.group(2).decode("ascii"),
                    m.group(3).decode("ascii"), headers, m.end())


def _parse_http_request_lines(data, limit=DEFAULT_LIMIT):
    """An HTTP/1.0 or 1.1 request head -> HttpRequest | NEED_MORE | Invalid(reason).

    Lines end with CRLF or a bare LF (RFC 9112 2.2); empty lines before the request line are
    skipped. Strict where smuggling lives: one SP between the three request-line parts, no
    whitespace before a header's colon, no obs-fold, no CR or other control byte inside a line,
    one Host at most, at most MAX_HEADERS header lines. The request line is checked as far as
    it has arrived, so non-HTTP bytes (a ClientHello, binary junk) are Invalid at once; header
    lines are parsed only once the blank line is in, so a head that trickles in one byte per
    segment costs one C-level scan per call. Only the first `limit` bytes count: no blank line
    in them -> Invalid("too long").
    """
    data = bytes(data)
    n = min(len(data), limit)
    # RFC 9112 2.2: ignore empty lines before the request line (C-level: a client may send
    # thousands, one per segment)
    pos = n - len(data[:n].lstrip(b"\r\n"))
    if pos:
        lead = data[:pos]
        cr_last = pos == n and lead.endswith(b"\r")    # its LF may be the next byte
        if cr_last:
            lead = lead[:-1]
        if b"\r" in lead.replace(b"\r\n", b""):
            return Invalid("bad request line")          # a CR that is not before an LF
        if cr_last:
            return _incomplete(data, limit)
    eol = data.find(b"\n", pos, n)
    if eol < 0:
        reason = _request_line_prefix(data[pos:n])
        return Invalid(reason) if reason else _incomplete(data, limit)
    parsed = _request_line(_chomp(data[pos:eol]))
    if isinstance(parsed, Invalid):
        return parsed
    # the blank line: LF, optional CR, LF (the request line is not empty, so the first LF
    # of either pattern is at eol or later)
    a = data.find(b"\n\r\n", eol, n)
    b = data.find(b"\n\n", eol, n)
    if a < 0 and b < 0:
        return _incomplete(data, limit)
    head_len = b + 2 if a < 0 or 0 <= b < a else a + 3
    lines = data[eol + 1:head_len].split(b"\n")[:-2]     # drop the blank line and after it
    if len(lines) > MAX_HEADERS:
        return Invalid("too many headers")
    headers = {}
    for line in lines:
        reason = _header_line(_chomp(line), headers)
        if reason:
            return Invalid(reason)
    method, target, version = parsed
    return _request(method, target, version, headers, head_len)


def _incomplete(data, limit):
    return Invalid("too long") if len(data) >= limit else NEED_MORE


def _chomp(line):
    return line[:-1] if line.endswith(b"\r") else line


def _request_line(line):
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return Invalid("bad request line")
    method, target, version = parts
    if _bad(method, _TCHAR):
        return Invalid("bad method")
    if len(method) > MAX_METHOD:
        return Invalid("method too long")
    if _bad(target, _VCHAR):
        return Invalid("bad target")
    if version not in _VERSIONS:
        return Invalid("unsupported version")
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")


def _request_line_prefix(p):
    """None if p can still grow into a valid request line, else the reason it cannot.
    Never stricter than _request_line (results must stay prefix-stable)."""
    cr = p.endswith(b"\r")
    if cr:
        p = p[:-1]
    parts = p.split(b" ", 2)
    method = parts[0]
    if _bad(method, _TCHAR):
        return "bad method"
    if len(method) > MAX_METHOD:
        return "method too long"
    if len(parts) == 1:
        return "bad request line" if cr else None
    if not method:
        return "bad request line"
    target = parts[1]
    if _bad(target, _VCHAR):
        return "bad target"
    if len(parts) == 2:
        return "bad request line" if cr else None
    if not target:
        return "bad request line"
    version = parts[2]
    if cr:
        return None if version in _VERSIONS else "unsupported version"
    if _VERSIONS[0].startswith(version) or _VERSIONS[1].startswith(version):
        return None
    return "bad request line" if b" " in version else "unsupported version"


def _header_line(line, headers):
    """Add one complete header line to headers; the reason if it is bad, else None."""
    if line[0] in b" \t":
        return "obsolete line folding"
    colon = line.find(b":")
    if colon <= 0:
        return "bad header line"
    name = line[:colon]
    if _bad(name, _TCHAR):
        return "bad header name"
    value = line[colon + 1:]
    if _bad(value, _FIELD_VCHAR):
        return "bad header value"
    key = name.decode("ascii").lower()
    text = value.strip(b" \t").decode("latin-1")
    if key in headers:
        if key == "host":
            return "duplicate Host"
        headers[key] = headers[key] + ", " + text
    else:
        headers[key] = text
    return None


def _request(method, target, version, headers, head_len):
    query = ""
    host = headers.get("host")
    if target.startswith("/"):
        path = target
    elif target == "*" and method == "OPTIONS":
        path = "*"
    elif method == "CONNECT":
        host, path = target, ""
    else:
        low = target[:8].lower()
        if low.startswith("http://"):
            rest = target[7:]
        elif low.startswith("https://"):
            rest = target[8:]
        else:
            return Invalid("bad target")
        end = len(rest)
        for c in "/?#":
            i = rest.find(c)
            if 0 <= i < end:
                end = i
        authority = rest[:end].rpartition("@")[2]
        if not authority:
            return Invalid("bad target")
        # RFC 9112 3.2.2: with an absolute-form target the Host header is ignored
        host, path = authority, rest[end:]
        if not path.startswith("/"):
            path = "/" + path
    path = path.partition("#")[0]
    if "?" in path:
        path, _, query = path.partition("?")
    return HttpRequest(method=method, target=target, path=path, query=query, version=version,
                       host=host, hostname=normalize_host(host), headers=headers,
                       head_len=head_len)


def normalize_host(host):
    """"Example.COM.:8080" -> "example.com"; "[::1]:80" -> "[::1]"; None if absent or bad."""
    if host is None:
        return None
    h = host.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        if end < 0:
            return None
        name, rest = h[:end + 1], h[end + 1:]
        if rest and not (rest[0] == ":" and (len(rest) == 1 or rest[1:].isdigit())):
            return None
        return name
    name, colon, port = h.partition(":")
    if colon and port and not (port.isascii() and port.isdigit()):
        return None
    if name.endswith("."):
        name = name[:-1]
    return name or None


# --- TLS ClientHello ---------------------------------------------------------------------------

class _Bad(Exception):
    """Internal: a ClientHello field is out of bounds or malformed. Never leaves this module."""


class _Cursor:
    """Bounds-checked big-endian reader over buf[pos:end]."""
    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf, pos=0, end=None):
        self.buf, self.pos = buf, pos
        self.end = len(buf) if end is None else end

    def left(self):
        return self.end - self.pos

    def take(self, k, what):
        if k < 0 or self.pos + k > self.end:
            raise _Bad("truncated " + what)
        b = self.buf[self.pos:self.pos + k]
        self.pos += k
        return b

    def u8(self, what):
        return self.take(1, what)[0]

    def u16(self, what):
        return int.from_bytes(self.take(2, what), "big")

    def u24(self, what):
        return int.from_bytes(self.take(3, what), "big")

    def sub(self, k, what):
        """A cursor over the next k bytes; this one moves past them."""
        start = self.pos
        self.take(k, what)
        return _Cursor(self.buf, start, start + k)


_MAX_RECORD = 1 << 14           # TLSPlaintext.length (RFC 8446 5.1)
_EXT_SNI, _EXT_ALPN, _EXT_VERSIONS = 0, 16, 43


def _grease(v):
    # RFC 8701: 0x0A0A, 0x1A1A, ... 0xFAFA
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


def parse_tls_client_hello(data, limit=DEFAULT_LIMIT):
    """TLS records carrying a ClientHello -> ClientHello | NEED_MORE | Invalid(reason).

    The handshake message may be spread over several records (type 22, version 3.x, length
    1..2^14) and several segments; bytes after the ClientHello (0-RTT data) are ignored.
    Records are checked as their bytes arrive, so anything else (HTTP, an SSLv2-style hello,
    an alert) is Invalid at the first byte that shows it. Only the first `limit` bytes count,
    and at most MAX_RECORDS records (legal TLS, but only evasion tools split a hello finer, and
    each record is a turn of a Python loop on every call).
    """
    data = bytes(data)
    n = min(len(data), limit)
    if n == 0:
        return NEED_MORE
    if data[0] & 0x80:
        return Invalid("sslv2 hello")
    hs = bytearray()
    need = None             # the handshake message's total length, once its header is in
    pos = records = 0
    while True:
        records += 1
        if records > MAX_RECORDS:
            return Invalid("too many records")
        head = data[pos:min(pos + 5, n)]
        if head and head[0] != 22:
            return Invalid("not a handshake record")
        if len(head) >= 2 and head[1] != 3:
            return Invalid("bad record version")
        if len(head) >= 3 and head[2] > 4:
            return Invalid("bad record version")
        if len(head) < 5:
            return _incomplete(data, limit)
        rlen = int.from_bytes(head[3:5], "big")
        if rlen == 0 or rlen > _MAX_RECORD:
            return Invalid("bad record length")
        got = data[pos + 5:min(pos + 5 + rlen, n)]
        hs += got
        if need is None and hs:
            if hs[0] != 1:
                return Invalid("not a ClientHello")
            if len(hs) >= 4:
                need = 4 + int.from_bytes(hs[1:4], "big")
                # the fewest bytes that could carry it: full records plus their headers
                if need + 5 * -(-need // _MAX_RECORD) > limit:
                    return Invalid("too long")
        if need is not None and len(hs) >= need:
            used = pos + 5 + len(got) - (len(hs) - need)
            try:
                return _client_hello(bytes(hs[4:need]), used)
            except _Bad as e:
                return Invalid(str(e))
        if len(got) < rlen:
            return _incomplete(data, limit)
        pos += 5 + rlen


def _client_hello(body, used):
    c = _Cursor(body)
    legacy = c.u16("version")
    if legacy >> 8 != 3:
        raise _Bad("bad client version")
    c.take(32, "random")
    sid = c.u8("session id length")
    if sid > 32:
        raise _Bad("bad session id")
    c.take(sid, "session id")
    cs = c.u16("cipher suites length")
    if cs < 2 or cs & 1:
        raise _Bad("bad cipher suites")
    c.take(cs, "cipher suites")
    comp = c.u8("compression methods length")
    if comp < 1:
        raise _Bad("bad compression methods")
    c.take(comp, "compression methods")
    sni, alpn, versions = None, [], None
    if c.left():
        ext_len = c.u16("extensions length")
        if ext_len != c.left():
            raise _Bad("bad extensions length")
        seen = set()
        while c.left():
            etype = c.u16("extension type")
            e = c.sub(c.u16("extension length"), "extension")
            if etype in (_EXT_SNI, _EXT_ALPN, _EXT_VERSIONS):
                if etype in seen:
                    raise _Bad("duplicate extension %d" % etype)
                seen.add(etype)
            if etype == _EXT_SNI:
                sni = _server_name(e)
            elif etype == _EXT_ALPN:
                alpn = _alpn(e)
            elif etype == _EXT_VERSIONS:
                versions = _supported_versions(e)
    real = [v for v in versions or () if not _grease(v)]
    return ClientHello(sni=sni, alpn=alpn, version=max(real) if real else legacy,
                       legacy_version=legacy, length=used)


def _server_name(e):
    lst = e.sub(e.u16("server_name list length"), "server_name list")
    if e.left() or not lst.left():
        raise _Bad("bad server_name")
    sni = None
    while lst.left():
        ntype = lst.u8("server_name type")
        name = lst.take(lst.u16("server_name length"), "server_name")
        if ntype == 0:
            if sni is not None:
                raise _Bad("duplicate host_name")
            if not name or _bad(name, _HOSTCHAR):
                raise _Bad("bad host_name")
            sni = name.decode("ascii")
    return sni


def _alpn(e):
    lst = e.sub(e.u16("alpn list length"), "alpn list")
    if e.left() or not lst.left():
        raise _Bad("bad alpn")
    out = []
    while lst.left():
        k = lst.u8("alpn name length")
        if k == 0:
            raise _Bad("bad alpn")
        out.append(lst.take(k, "alpn name").decode("latin-1"))
    return out


def _supported_versions(e):
    k = e.u8("supported_versions length")
    if k < 2 or k & 1 or k != e.left():
        raise _Bad("bad supported_versions")
    return [e.u16("version") for _ in range(k // 2)]


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
        self.needs_http = any(r.kind in HTTP_KINDS or r.action == "redirect" for r in self.rules)
        self.needs_tls = any(r.kind == "sni" for r in self.rules)

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
        http = tls = None
        if self.needs_http:
            http = parse_http_request(data, self.limit)
        if self.needs_tls:
            tls = parse_tls_client_hello(data, self.limit)
        req = http if isinstance(http, HttpRequest) else None
        hello = tls if isinstance(tls, ClientHello) else None
        for i, (rule, test, arg) in enumerate(self._compiled):
            if rule.action == "redirect" and req is None:
                v = _PENDING if http is NEED_MORE else _NO
            else:
                v = test(arg, data, http, tls)
            if v == _PENDING:
                if final:
                    continue
                return NEED_MORE
            if v == _MATCH:
                return Decision(rule.action, rule.pool, i, rule.kind, req, hello)
        return Refuse("no rule matched")


def _state(parsed):
    return _PENDING if parsed is NEED_MORE else _NO


def _t_method(arg, data, http, tls):
    if isinstance(http, HttpRequest):
        return _MATCH if http.method == arg else _NO
    return _state(http)


def _t_path(arg, data, http, tls):
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


def _t_host(arg, data, http, tls):
    if isinstance(http, HttpRequest):
        return _MATCH if _name_matches(arg, http.hostname) else _NO
    return _state(http)


def _t_sni(arg, data, http, tls):
    if isinstance(tls, ClientHello):
        return _MATCH if _name_matches(arg, normalize_host(tls.sni)) else _NO
    return _state(tls)


def _t_prefix(arg, data, http, tls):
    if data.startswith(arg):
        return _MATCH
    return _PENDING if arg.startswith(data) else _NO


def _t_default(arg, data, http, tls):
    return _MATCH


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
    action (forward | redirect, default forward), redirect_probe (bool, redirect only).
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
    if (not isinstance(pool, str) or not 1 <= len(pool) <= MAX_POOL_NAME
            or _bad(pool.encode("latin-1", "replace"), _HOSTCHAR) or not pool.isascii()):
        raise LBError(f("pool"), "must be a pool name of 1..%d letters, digits, '-', '_', '.', "
                      "got %r" % (MAX_POOL_NAME, pool))
    if pools is not None and pool not in pools:
        raise LBError(f("pool"), "unknown pool %r (have: %s)"
                      % (pool, ", ".join(sorted(pools)) or "none"))
    action = spec.get("action", "forward")
    if action not in ACTIONS:
        raise LBError(f("action"), "must be forward or redirect, got %r" % (action,))
    if action == "redirect" and kind == "sni":
        raise LBError(f("action"), "redirect answers an HTTP request with a 302; an sni rule "
                      "matches TLS, which cannot be redirected")
    probe = spec.get("redirect_probe", False)
    if not isinstance(probe, bool):
        raise LBError(f("redirect_probe"), "must be true or false, got %r" % (probe,))
    if probe and action != "redirect":
        raise LBError(f("redirect_probe"), "only applies to action redirect")
    return Rule(kind=kind, value=value, pool=pool, action=action, redirect_probe=probe)


_EXAMPLES = {"method": "an HTTP method like GET", "path_prefix": "a path prefix like /blob",
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
    if kind == "path_prefix":
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
    return {"kind": rule.kind, "value": rule.value, "pool": rule.pool, "action": rule.action,
            "redirect_probe": rule.redirect_probe}


def format_rule(rule):
    """One line for lbctl: `path_prefix "/blob" -> big`, `default -> web (redirect, probe)`."""
    s = rule.kind if rule.kind == "default" else '%s "%s"' % (rule.kind, rule.value)
    s += " -> " + rule.pool
    if rule.action == "redirect":
        s += " (redirect, probe)" if rule.redirect_probe else " (redirect)"
    return s


# --- the redirect action ---------------------------------------------------------------------------

def _safe(text):
    """Percent-encode every byte outside visible ASCII: no header injection, whatever comes in."""
    b = text.encode("utf-8", "surrogatepass")
    if not _bad(b, _VCHAR):
        return b
    return b"".join(bytes((c,)) if 0x21 <= c < 0x7F else b"%%%02X" % c for c in b)


def redirect_response(host_port, path, query=""):
    """A complete HTTP/1.1 302 to http://host_port/path[?query], Content-Length 0,
    Connection: close. A path that does not start with / (CONNECT, OPTIONS *) becomes /."""
    if not path.startswith("/"):
        path = "/"
    location = b"http://" + _safe(host_port) + _safe(path)
    if query:
        location += b"?" + _safe(query)
    return (b"HTTP/1.1 302 Found\r\nLocation: " + location +
            b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
