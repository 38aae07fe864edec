"""A second HTTP/1.x request head parser, kept only as a test oracle for modes/splice/http.py.

It reads a complete, well-formed head in one regular expression (the shape of almost every
request) and hands anything else to the real parser. tests/unit/test_l7.py checks that the two
agree on random and known heads: what the regex accepts, the line-by-line rules accept alike.
"""
import re

from modes.splice.http import DEFAULT_LIMIT, MAX_HEADERS, MAX_METHOD, Invalid, _request
from modes.splice.http import parse_http_request as _parse_http_request_lines


_TOKEN_RE = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# A complete, well-formed head in one C-level match: what almost every request is. It accepts
# exactly the heads the line-by-line parser below accepts (tests/unit/test_l7.py holds them
# together); anything else -- incomplete, odd, or bad -- goes the long way for its verdict.
_HEAD_RE = re.compile(
    rb"(?:\r?\n)*(" + _TOKEN_RE + rb"{1,%d}) ([\x21-\x7e]+) (HTTP/1\.[01])\r?\n"
    rb"((?:" % MAX_METHOD + _TOKEN_RE + rb"+:[\t\x20-\x7e\x80-\xff]*\r?\n)*)\r?\n")
_FIELD_RE = re.compile(rb"(" + _TOKEN_RE + rb"+):([\t\x20-\x7e\x80-\xff]*)\r?\n")


def parse_http_request_regex(data, limit=DEFAULT_LIMIT):
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

