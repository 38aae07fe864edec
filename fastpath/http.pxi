# http: the HTTP/1.x request-head reader and the content-rule matcher of splice VIPs.
# Twin: twin/http.py. modes/l7.py has the reference semantics (parse_http_request,
# RuleSet.decide); tests/differential holds the three together.
#
# Invariants:
# - Reads only d[:m] (the request bytes the VIP's limit lets the rules see); no regular
#   expressions, no allocation.
# - Says "no" rather than guess: a head that is incomplete, not plain ASCII where it matters,
#   or that modes/l7.py would treat differently gives 0 / -1, and Python decides.


cdef inline bint tchar(uint8_t c) noexcept nogil:
    """RFC 9110 token character (modes/l7.py _TCHAR)."""
    if (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122):
        return True
    return (c == 33 or c == 35 or c == 36 or c == 37 or c == 38 or c == 39 or c == 42 or c == 43
            or c == 45 or c == 46 or c == 94 or c == 95 or c == 96 or c == 124 or c == 126)


cdef inline int eol(const uint8_t *d, int i, int m) noexcept nogil:
    """Index after a CRLF or LF at i, or -1."""
    if i < m and d[i] == 10:
        return i + 1
    if i + 1 < m and d[i] == 13 and d[i + 1] == 10:
        return i + 2
    return -1


cdef int http_head(const uint8_t *d, int m, HttpView *v) noexcept nogil:
    """1 when d[:m] starts with a complete HTTP/1.0 or 1.1 request head that modes/l7.py
    parse_http_request accepts, with an origin-form target and a Host (if any) of plain
    ASCII; v then holds its method, path and normalized host. 0 otherwise (then the rules
    are Python's to apply)."""
    cdef int i = 0, s, ns, vs, ve, nh = 0, hv_s = -1, hv_e = -1, k, c
    while True:
        k = eol(d, i, m)
        if k < 0:
            break
        i = k
    s = i
    while i < m and tchar(d[i]) and i - s <= HTTP_MAX_METHOD:
        i += 1
    if i == s or i - s > HTTP_MAX_METHOD or i >= m or d[i] != 32:
        return 0
    v.method, v.mlen = d + s, i - s
    i += 1
    s = i
    while i < m and 0x21 <= d[i] <= 0x7E:
        i += 1
    if i == s or i >= m or d[i] != 32 or d[s] != 47:        # '/': origin-form only
        return 0
    v.path = d + s
    v.plen = 0
    while s + v.plen < i and d[s + v.plen] != 63 and d[s + v.plen] != 35:   # '?' '#'
        v.plen += 1
    i += 1
    if i + 8 > m or memcmp(d + i, b"HTTP/1.", 7) != 0 or (d[i + 7] != 48 and d[i + 7] != 49):
        return 0
    i = eol(d, i + 8, m)
    if i < 0:
        return 0
    while True:
        k = eol(d, i, m)
        if k >= 0:
            break                                              # the blank line
        ns = i
        while i < m and tchar(d[i]):
            i += 1
        if i == ns or i >= m or d[i] != 58:                     # ':'
            return 0
        vs = i + 1
        i = vs
        while i < m and (d[i] == 9 or 0x20 <= d[i] <= 0x7E or d[i] >= 0x80):
            i += 1
        ve = i
        i = eol(d, i, m)
        if i < 0:
            return 0
        nh += 1
        if nh > HTTP_MAX_HEADERS:
            return 0
        if (vs - 1 - ns == 4 and (d[ns] | 32) == 104 and (d[ns + 1] | 32) == 111
                and (d[ns + 2] | 32) == 115 and (d[ns + 3] | 32) == 116):      # "host"
            if hv_s >= 0:
                return 0                                       # duplicate Host: Invalid
            hv_s, hv_e = vs, ve
    v.hlen = -1
    if hv_s < 0:
        return 1
    while hv_s < hv_e and (d[hv_s] == 32 or d[hv_s] == 9):
        hv_s += 1
    while hv_e > hv_s and (d[hv_e - 1] == 32 or d[hv_e - 1] == 9):
        hv_e -= 1
    if hv_e - hv_s > HTTP_MAX_HOST:
        return 0
    for k in range(hv_s, hv_e):
        c = d[k]
        if c >= 0x80:
            return 0
        v.host[k - hv_s] = c + 32 if 65 <= c <= 90 else c
    k = hv_e - hv_s
    if k == 0:
        return 1
    if v.host[0] == 91:                                        # '[': IPv6 literal
        return 0
    s = 0
    while s < k and v.host[s] != 58:                           # ':'
        s += 1
    for c in range(s + 1, k):
        if not 48 <= v.host[c] <= 57:
            return 1                                           # a port that is not digits
    if s > 0 and v.host[s - 1] == 46:                          # a trailing dot
        s -= 1
    if s > 0:
        v.hlen = s
    return 1


cdef int l7_match(Engine self, const uint8_t *d, int m, Service *sv) noexcept nogil:
    """The pool of the first rule that matches d[:m] (modes/l7.py RuleSet.decide), or -1
    when none does or it is not certain yet (a prefix still arriving, a head incomplete
    or not plain)."""
    cdef HttpView hv
    cdef int http = -1
    cdef uint32_t k
    cdef L7Rule *r
    cdef const uint8_t *a
    for k in range(sv.l7_n):
        r = &self.l7r[sv.l7_off + k]
        a = self.blob + r.off
        if r.kind == L7_DEFAULT:
            return r.pool
        if r.kind == L7_PREFIX:
            if <uint32_t>m >= r.len:
                if memcmp(d, a, r.len) == 0:
                    return r.pool
            elif memcmp(d, a, m) == 0:
                return -1                     # may still match: Python waits for more
            continue
        if http < 0:
            http = http_head(d, m, &hv)
        if http == 0:
            return -1
        if r.kind == L7_METHOD:
            if <uint32_t>hv.mlen == r.len and memcmp(hv.method, a, r.len) == 0:
                return r.pool
        elif r.kind == L7_PATH:
            if <uint32_t>hv.plen >= r.len and memcmp(hv.path, a, r.len) == 0:
                return r.pool
        elif r.kind == L7_HOST:
            if hv.hlen >= 0 and <uint32_t>hv.hlen == r.len and memcmp(hv.host, a, r.len) == 0:
                return r.pool
        elif r.kind == L7_HOST_SUFFIX:
            if (hv.hlen > <int>r.len and hv.host[0] != 46   # '.'
                    and memcmp(hv.host + hv.hlen - r.len, a, r.len) == 0):
                return r.pool
    return -1
