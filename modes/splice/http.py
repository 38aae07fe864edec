"""splice's HTTP/1.x request head parser: the first request bytes -> HttpRequest. Pure Python.

Run once per new splice connection that the fast path did not decide itself (never per
packet). fastpath/http.pxi is the fast path's own reader of the plain heads it decides; this
module has the full rules, and tests/differential holds the two together.

Invariants:
- Nothing here raises on input from the network: parse_http_request returns an HttpRequest,
  NEED_MORE or Invalid(reason). The head is cut with find(), so the work is linear in
  min(len(data), limit), and the Python-level loops are bounded (MAX_HEADERS header lines),
  since the caller calls again on every new segment. No regular expressions.
- Only the first `limit` bytes are looked at. A head not complete within them is
  Invalid("too long"), so at len(data) >= limit nothing is NEED_MORE any more.
- Results are prefix-stable: once the parser answers something other than NEED_MORE for
  data[:i], every longer data that starts with data[:i] gets the same answer (an Invalid
  stays Invalid, its reason may be worded differently).
"""
from dataclasses import dataclass
from typing import Optional

DEFAULT_LIMIT = 4096
MIN_LIMIT = 64
MAX_LIMIT = 65536
MAX_METHOD = 32                 # longer "methods" are junk; reject early
MAX_HEADERS = 100               # header lines per request (HAProxy's default is 101)

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

def parse_http_request(data, limit=DEFAULT_LIMIT):
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
    block = header_block(data, eol, n)
    if block is None:
        return _incomplete(data, limit)
    if isinstance(block, Invalid):
        return block
    head_len, headers = block
    method, target, version = parsed
    return _request(method, target, version, headers, head_len)


def header_block(data, eol, n):
    """The header lines after a request line that ends at eol, up to the blank line within
    data[:n]: (head_len, {lowercase name: value}), Invalid(reason), or None when the blank
    line is not there yet. HTTP/1.1 and RTSP/1.0 (modes/splice/rtsp.py) share it."""
    # the blank line: LF, optional CR, LF (the request line is not empty, so the first LF
    # of either pattern is at eol or later)
    a = data.find(b"\n\r\n", eol, n)
    b = data.find(b"\n\n", eol, n)
    if a < 0 and b < 0:
        return None
    head_len = b + 2 if a < 0 or 0 <= b < a else a + 3
    lines = data[eol + 1:head_len].split(b"\n")[:-2]     # drop the blank line and after it
    if len(lines) > MAX_HEADERS:
        return Invalid("too many headers")
    headers = {}
    for line in lines:
        reason = _header_line(_chomp(line), headers)
        if reason:
            return Invalid(reason)
    return head_len, headers


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


