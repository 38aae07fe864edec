"""splice's RTSP/1.0 (RFC 2326) request head parser: client bytes -> RtspRequest. Pure Python.

An `rtsp` rule (rules.py) looks at the first RTSP request of a connection; with action
redirect the punt handler (manager.py) then answers the session's requests itself, up to the
DESCRIBE, which it answers with a 302 to the chosen node (responses: redirect.py).

Invariants (the same as http.py's):
- Nothing here raises on input from the network: parse_rtsp_request returns an RtspRequest,
  NEED_MORE or Invalid(reason). The head is cut with find(), the header loop is bounded
  (http.MAX_HEADERS), no regular expressions.
- Only the first `limit` bytes are looked at; a head not complete within them is
  Invalid("too long").
- Results are prefix-stable: the request line is checked as far as it has arrived
  (_line_prefix is never stricter than the full check), header lines once the blank line is
  in, so an answer other than NEED_MORE never changes with more bytes.
"""
from dataclasses import dataclass

from .http import (DEFAULT_LIMIT, MAX_METHOD, NEED_MORE, Invalid, _TCHAR, _VCHAR, _bad,
                   _chomp, header_block)

VERSION = b"RTSP/1.0"
MAX_BODY = 4096                 # a request body we skip (SET_PARAMETER, ANNOUNCE) at most


@dataclass(frozen=True, slots=True)
class RtspRequest:
    method: str                 # as sent, e.g. "DESCRIBE"
    url: str                    # the request-URI as sent ("*" or rtsp://host[:port]/path)
    path: str                   # "/test" ("*" for OPTIONS *); "/" when the URL has none
    query: str                  # after '?', without it
    headers: dict               # lowercased name -> value
    cseq: str                   # the CSeq header as sent ("" if absent)
    agent: str                  # the User-Agent header ("" if absent)
    head_len: int               # bytes up to and including the blank line's LF
    body_len: int               # Content-Length (0..MAX_BODY)

    @property
    def length(self):
        """Bytes of the whole request (head and body)."""
        return self.head_len + self.body_len


def parse_rtsp_request(data, limit=DEFAULT_LIMIT):
    """An RTSP/1.0 request head -> RtspRequest | NEED_MORE | Invalid(reason). Lines end with
    CRLF or LF; one SP between the three request-line parts; the URL is `*` or
    rtsp://authority[/path][?query] (rtsps and rtspu are not served here)."""
    data = bytes(data)
    n = min(len(data), limit)
    eol = data.find(b"\n", 0, n)
    if eol < 0:
        reason = _line_prefix(data[:n])
        if reason:
            return Invalid(reason)
        return Invalid("too long") if len(data) >= limit else NEED_MORE
    parts = _chomp(data[:eol]).split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return Invalid("bad request line")
    method, url, version = parts
    if _bad(method, _TCHAR) or len(method) > MAX_METHOD:
        return Invalid("bad method")
    if _bad(url, _VCHAR):
        return Invalid("bad url")
    if version != VERSION:
        return Invalid("unsupported version")
    path, query = _split_url(url.decode("ascii"))
    if path is None:
        return Invalid("bad url")
    block = header_block(data, eol, n)
    if block is None:
        return Invalid("too long") if len(data) >= limit else NEED_MORE
    if isinstance(block, Invalid):
        return block
    head_len, headers = block
    clen = headers.get("content-length", "0")
    if not clen.isascii() or not clen.isdigit() or int(clen) > MAX_BODY:
        return Invalid("bad content-length")
    return RtspRequest(method=method.decode("ascii"), url=url.decode("ascii"), path=path,
                       query=query, headers=headers, cseq=headers.get("cseq", ""),
                       agent=headers.get("user-agent", ""), head_len=head_len,
                       body_len=int(clen))


def _split_url(url):
    """(path, query) of `*` or rtsp://authority/path?query; (None, None) if it is neither."""
    if url == "*":
        return "*", ""
    if url[:7].lower() != "rtsp://":
        return None, None
    rest = url[7:]
    end = len(rest)
    for c in "/?#":
        i = rest.find(c)
        if 0 <= i < end:
            end = i
    if end == 0:
        return None, None
    path = rest[end:].partition("#")[0]
    path, _, query = path.partition("?")
    return (path if path.startswith("/") else "/" + path), query


def _line_prefix(p):
    """None if p can still grow into a valid RTSP request line, else why it cannot."""
    if p.endswith(b"\r"):
        p = p[:-1]
    parts = p.split(b" ", 2)
    if _bad(parts[0], _TCHAR) or len(parts[0]) > MAX_METHOD:
        return "bad method"
    if len(parts) > 1 and (not parts[0] or _bad(parts[1], _VCHAR)):
        return "bad request line" if not parts[0] else "bad url"
    if len(parts) > 2:
        if not parts[1]:
            return "bad request line"
        if not VERSION.startswith(parts[2]):
            return "unsupported version"
    return None


def looks_like_rtsp(data):
    """True when the bytes so far can be, or are, an RTSP request line (cheap; for the
    handler's choice between its RTSP answers and the HTTP path)."""
    eol = data.find(b"\n")
    line = data if eol < 0 else _chomp(data[:eol])
    sp = line.rfind(b" ")
    if eol < 0:
        return _line_prefix(line) is None
    return sp > 0 and line[sp + 1:] == VERSION
