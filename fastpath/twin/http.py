"""http: the HTTP/1.x request-head reader and the content-rule matcher of splice VIPs. Twin
of fastpath/http.pxi; modes/l7.py has the reference semantics (parse_http_request,
RuleSet.decide); tests/differential holds the three together.

Invariants:
- Reads only d[:m] (the request bytes the VIP's limit lets the rules see); no regular
  expressions.
- Says "no" rather than guess: a head that is incomplete, not plain ASCII where it matters,
  or that modes/l7.py would treat differently gives None, and Python decides.
"""
from .. import defs

_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def tchar(c):
    """RFC 9110 token character (modes/l7.py _TCHAR)."""
    return c in _TCHAR


def eol(d, i, m):
    """Index after a CRLF or LF at i, or -1."""
    if i < m and d[i] == 10:
        return i + 1
    if i + 1 < m and d[i] == 13 and d[i + 1] == 10:
        return i + 2
    return -1


def http_head(d, m):
    """(method, path, host or None) when d[:m] starts with a complete HTTP/1.0 or 1.1 request
    head that modes/l7.py parse_http_request accepts, with an origin-form target and a Host
    (if any) of plain ASCII; else None (then the rules are Python's to apply)."""
    i = 0
    while True:
        k = eol(d, i, m)
        if k < 0:
            break
        i = k
    s = i
    while i < m and tchar(d[i]) and i - s <= defs.HTTP_MAX_METHOD:
        i += 1
    if i == s or i - s > defs.HTTP_MAX_METHOD or i >= m or d[i] != 32:
        return None
    method = d[s:i]
    i += 1
    s = i
    while i < m and 0x21 <= d[i] <= 0x7E:
        i += 1
    if i == s or i >= m or d[i] != 32 or d[s] != 47:
        return None
    path = d[s:i]
    for c in (b"?", b"#"):
        path = path.split(c, 1)[0]
    i += 1
    if i + 8 > m or d[i:i + 7] != b"HTTP/1." or d[i + 7] not in (48, 49):
        return None
    i = eol(d, i + 8, m)
    if i < 0:
        return None
    nh, host = 0, None
    while eol(d, i, m) < 0:
        ns = i
        while i < m and tchar(d[i]):
            i += 1
        if i == ns or i >= m or d[i] != 58:
            return None
        vs = i = i + 1
        while i < m and (d[i] == 9 or 0x20 <= d[i] <= 0x7E or d[i] >= 0x80):
            i += 1
        ve = i
        i = eol(d, i, m)
        if i < 0:
            return None
        nh += 1
        if nh > defs.HTTP_MAX_HEADERS:
            return None
        if d[ns:vs - 1].lower() == b"host":
            if host is not None:
                return None
            host = d[vs:ve]
    if host is None:
        return method, path, None
    host = host.strip(b" \t")
    if len(host) > defs.HTTP_MAX_HOST or any(c >= 0x80 for c in host):
        return None
    host = host.lower()
    if not host:
        return method, path, None
    if host[0] == 91:
        return None
    name, colon, port = host.partition(b":")
    if colon and port and not port.isdigit():
        return method, path, None
    if name.endswith(b"."):
        name = name[:-1]
    return method, path, name or None


def l7_match(self, d, m, sv):
    """The pool of the first rule of sv that matches d[:m] (modes/l7.py RuleSet.decide), or
    None when none does or it is not certain yet (a prefix still arriving, a head incomplete
    or not plain). (self: as the compiled one, which reads the rules from the engine.)"""
    d = d[:m]
    http = False
    for kind, a, pool in sv.l7_rules:
        if kind == defs.L7_DEFAULT:
            return pool
        if kind == defs.L7_PREFIX:
            if len(d) >= len(a):
                if d.startswith(a):
                    return pool
            elif a.startswith(d):
                return None
            continue
        if http is False:
            http = http_head(d, len(d))
        if http is None:
            return None
        method, path, host = http
        if kind == defs.L7_METHOD:
            if method == a:
                return pool
        elif kind == defs.L7_PATH:
            if path.startswith(a):
                return pool
        elif kind == defs.L7_HOST:
            if host is not None and host == a:
                return pool
        elif kind == defs.L7_HOST_SUFFIX:
            if host is not None and len(host) > len(a) and host.endswith(a) and host[0] != 46:
                return pool
    return None
