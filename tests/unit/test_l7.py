"""modes/splice (http.py, tls.py, rules.py, redirect.py): splice's content side. HTTP heads and real TLS ClientHellos (made by Python's
ssl module, no network) parsed whole, split at every byte and re-chunked into records; hostile
input never raises and answers are prefix-stable; rule order and matching; rule validation
names the field; the 302 for the redirect action."""
import ssl

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lb.errors import LBError
from modes import splice as l7
from modes.splice import (NEED_MORE, ClientHello, Decision, HttpRequest, Invalid, Refuse, Rule,
                      RuleSet)

from . import http_oracle

FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def is_answer(r, kind):
    """r is one of the parser's three legal answers."""
    return r is NEED_MORE or isinstance(r, (Invalid, kind))


def prefixes_stable(parse, data):
    """parse(data[:i]) for every i: NEED_MORE until the first answer, then that same answer."""
    first = None
    for i in range(len(data) + 1):
        r = parse(data[:i])
        if first is None:
            if r is not NEED_MORE:
                first = r
        elif isinstance(first, Invalid):
            assert isinstance(r, Invalid), (i, first, r)
        else:
            assert r == first, (i, first, r)
    return first


# --- HTTP ----------------------------------------------------------------------------------------

HTTP_OK = [
    # (id, request head, method, path, query, version, host, hostname)
    ("get11", b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
     "GET", "/index.html", "", "HTTP/1.1", "www.example.com", "www.example.com"),
    ("get10-nohost", b"GET / HTTP/1.0\r\n\r\n", "GET", "/", "", "HTTP/1.0", None, None),
    ("query", b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: a\r\n\r\n", "GET", "/a/b", "x=1&y=2",
     "HTTP/1.1", "a", "a"),
    ("host-port-case", b"POST /up HTTP/1.1\r\nHOST:  Example.COM.:8080 \r\nContent-Length: 3\r\n\r\n",
     "POST", "/up", "", "HTTP/1.1", "Example.COM.:8080", "example.com"),
    ("absolute", b"GET http://Foo.example:81/p?q HTTP/1.1\r\nHost: ignored\r\n\r\n",
     "GET", "/p", "q", "HTTP/1.1", "Foo.example:81", "foo.example"),
    ("absolute-nopath", b"GET https://user@h.example HTTP/1.1\r\n\r\n",
     "GET", "/", "", "HTTP/1.1", "h.example", "h.example"),
    ("absolute-query-only", b"GET HTTP://h?z HTTP/1.1\r\n\r\n", "GET", "/", "z", "HTTP/1.1",
     "h", "h"),
    ("bare-lf", b"GET /lf HTTP/1.1\nHost: lf.example\n\n", "GET", "/lf", "", "HTTP/1.1",
     "lf.example", "lf.example"),
    ("leading-crlf", b"\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n", "GET", "/x", "", "HTTP/1.1",
     "h", "h"),
    ("ipv6-host", b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n", "GET", "/", "",
     "HTTP/1.1", "[2001:db8::1]:8080", "[2001:db8::1]"),
    ("options-star", b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", "OPTIONS", "*", "", "HTTP/1.1",
     "h", "h"),
    ("connect", b"CONNECT db.example:5432 HTTP/1.1\r\n\r\n", "CONNECT", "", "", "HTTP/1.1",
     "db.example:5432", "db.example"),
    ("custom-method", b"PROPFIND /dav HTTP/1.1\r\nHost: h\r\nDepth: 1\r\n\r\n", "PROPFIND",
     "/dav", "", "HTTP/1.1", "h", "h"),
    ("fragment", b"GET /f#frag HTTP/1.1\r\n\r\n", "GET", "/f", "", "HTTP/1.1", None, None),
    ("bad-port-host", b"GET / HTTP/1.1\r\nHost: h:x\r\n\r\n", "GET", "/", "", "HTTP/1.1",
     "h:x", None),
    ("obs-text-value", b"GET / HTTP/1.1\r\nHost: h\r\nX-T: caf\xe9\tok\r\n\r\n", "GET", "/", "",
     "HTTP/1.1", "h", "h"),
]


@pytest.mark.parametrize("case", HTTP_OK, ids=[c[0] for c in HTTP_OK])
def test_http_complete(case):
    _id, head, method, path, query, version, host, hostname = case
    r = l7.parse_http_request(head + b"body bytes \x00\xff")
    assert isinstance(r, HttpRequest), r
    assert (r.method, r.path, r.query, r.version, r.host, r.hostname) == \
        (method, path, query, version, host, hostname)
    assert r.head_len == len(head)


@pytest.mark.parametrize("case", HTTP_OK, ids=[c[0] for c in HTTP_OK])
def test_http_split_at_every_byte(case):
    head = case[1]
    for i in range(len(head)):
        assert l7.parse_http_request(head[:i]) is NEED_MORE, (i, head[:i])
    assert isinstance(l7.parse_http_request(head), HttpRequest)
    assert isinstance(prefixes_stable(l7.parse_http_request, head + b"xyz"), HttpRequest)


def test_http_header_count_is_bounded():
    head = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * l7.MAX_HEADERS
    assert isinstance(l7.parse_http_request(head + b"\r\n"), HttpRequest)
    assert l7.parse_http_request(head + b"Z: 1\r\n\r\n") == Invalid("too many headers")
    assert l7.parse_http_request(head + b"Z: 1\r\n") is NEED_MORE


def test_http_headers_lowercased_and_joined():
    r = l7.parse_http_request(b"GET / HTTP/1.1\r\nX-Fwd: a\r\nx-fwd: b \r\nAccept:*/*\r\n\r\n")
    assert r.headers == {"x-fwd": "a, b", "accept": "*/*"}


HTTP_BAD = [
    ("tls", b"\x16\x03\x01\x02\x00\x01\x00", "bad method"),
    ("binary", b"\x00\x01\x02", "bad method"),
    ("lowercase-version", b"GET / http/1.1\r\n\r\n", "unsupported version"),
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "unsupported version"),
    ("http09", b"GET /\r\n\r\n", "bad request line"),
    ("two-spaces", b"GET  / HTTP/1.1\r\n\r\n", "bad request line"),
    ("trailing-space", b"GET / HTTP/1.1 \r\n\r\n", "bad request line"),
    ("leading-space", b" GET / HTTP/1.1\r\n\r\n", "bad request line"),
    ("target-ctl", b"GET /a\x01b HTTP/1.1\r\n\r\n", "bad target"),
    ("target-8bit", b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n", "bad target"),
    ("method-too-long", b"A" * 40 + b" / HTTP/1.1\r\n\r\n", "method too long"),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", "bad header name"),
    ("no-colon", b"GET / HTTP/1.1\r\nHost\r\n\r\n", "bad header line"),
    ("empty-name", b"GET / HTTP/1.1\r\n: x\r\n\r\n", "bad header line"),
    ("obs-fold", b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", "obsolete line folding"),
    ("cr-in-value", b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", "bad header value"),
    ("nul-in-value", b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", "bad header value"),
    ("duplicate-host", b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", "duplicate Host"),
    ("ftp-absolute", b"GET ftp://h/x HTTP/1.1\r\n\r\n", "bad target"),
    ("empty-authority", b"GET http:///x HTTP/1.1\r\n\r\n", "bad target"),
    ("star-not-options", b"GET * HTTP/1.1\r\n\r\n", "bad target"),
    ("lone-cr-start", b"\rGET / HTTP/1.1\r\n\r\n", "bad request line"),
]


@pytest.mark.parametrize("case", HTTP_BAD, ids=[c[0] for c in HTTP_BAD])
def test_http_garbage_is_invalid_and_stays_invalid(case):
    _id, data, reason = case
    assert l7.parse_http_request(data) == Invalid(reason)
    assert isinstance(prefixes_stable(l7.parse_http_request, data), Invalid)


def test_http_non_http_is_rejected_at_the_first_byte():
    for first in (b"\x16", b"\x80", b"\x00", b"{", b" "):
        assert isinstance(l7.parse_http_request(first), Invalid), first


def test_http_limit():
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 100 + b"\r\n\r\n"
    n = len(head)
    assert l7.parse_http_request(head, limit=n).head_len == n          # ends exactly at it
    assert l7.parse_http_request(head + b"tail", limit=n).head_len == n
    assert l7.parse_http_request(head, limit=n - 1) == Invalid("too long")
    assert l7.parse_http_request(head[:-1], limit=n) is NEED_MORE
    assert l7.parse_http_request(head[:-1], limit=n - 1) == Invalid("too long")
    assert l7.parse_http_request(b"\r\n" * 100, limit=64) == Invalid("too long")


# --- TLS -----------------------------------------------------------------------------------------

def real_hello(sni=None, alpn=None, max_version=None):
    """The first flight of a real TLS client (OpenSSL via the ssl module), no network."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    out = ssl.MemoryBIO()
    s = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        s.do_handshake()
    return out.read()


def records_of(data):
    """[(type, version bytes, payload)] of a byte string that is whole records."""
    out, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos + 3:pos + 5], "big")
        out.append((data[pos], data[pos + 1:pos + 3], data[pos + 5:pos + 5 + n]))
        pos += 5 + n
    return out


def rechunk(data, size):
    """The same handshake bytes carried in records of at most `size` bytes."""
    hs = b"".join(p for t, _v, p in records_of(data))
    return b"".join(b"\x16\x03\x01" + len(hs[i:i + size]).to_bytes(2, "big") + hs[i:i + size]
                    for i in range(0, len(hs), size))


TLS12 = ssl.TLSVersion.TLSv1_2
HELLOS = [
    # (id, sni, alpn, max_version, expected version)
    ("tls13-sni-alpn", "www.Example.com", ["h2", "http/1.1"], None, 0x0304),
    ("tls13-sni", "api.example.com", None, None, 0x0304),
    ("tls13-nosni", None, None, None, 0x0304),
    ("tls13-nosni-alpn", None, ["http/1.1"], None, 0x0304),
    ("tls12-sni-alpn", "a.b.example", ["h2"], TLS12, 0x0303),
    ("tls12-nosni", None, None, TLS12, 0x0303),
    ("long-sni", "x" * 63 + "." + "y" * 63 + ".example", ["h2", "http/1.1", "spdy/3"], None,
     0x0304),
]


@pytest.fixture(scope="module")
def hellos():
    return {c[0]: real_hello(c[1], c[2], c[3]) for c in HELLOS}


@pytest.mark.parametrize("case", HELLOS, ids=[c[0] for c in HELLOS])
def test_tls_real_hello(case, hellos):
    _id, sni, alpn, _mv, version = case
    data = hellos[_id]
    r = l7.parse_tls_client_hello(data)
    assert r == ClientHello(sni=sni, alpn=alpn or [], version=version, legacy_version=0x0303,
                            length=len(data))


@pytest.mark.parametrize("case", HELLOS, ids=[c[0] for c in HELLOS])
def test_tls_split_at_every_byte(case, hellos):
    data = hellos[case[0]]
    for i in range(len(data)):
        assert l7.parse_tls_client_hello(data[:i]) is NEED_MORE, i
    assert isinstance(prefixes_stable(l7.parse_tls_client_hello, data), ClientHello)


@pytest.mark.parametrize("size", [9, 10, 37, 100, 256, 511, 16384])
@pytest.mark.parametrize("case", [HELLOS[0], HELLOS[4], HELLOS[6]], ids=lambda c: c[0])
def test_tls_several_records(case, size, hellos):
    _id, sni, alpn, _mv, version = case
    data = rechunk(hellos[_id], size)
    if size < 256:
        assert len(records_of(data)) > 1
    r = l7.parse_tls_client_hello(data)
    assert (r.sni, r.alpn, r.version, r.length) == (sni, alpn or [], version, len(data))
    assert l7.parse_tls_client_hello(data[:-1]) is NEED_MORE
    if size in (9, 37, 511):   # every byte boundary too
        assert isinstance(prefixes_stable(l7.parse_tls_client_hello, data), ClientHello)


def test_tls_record_count_is_bounded(hellos):
    hs = b"".join(p for _t, _v, p in records_of(hellos["tls13-sni"]))
    size = -(-len(hs) // l7.MAX_RECORDS)                   # exactly MAX_RECORDS records
    assert len(records_of(rechunk(hellos["tls13-sni"], size))) == l7.MAX_RECORDS
    assert l7.parse_tls_client_hello(rechunk(hellos["tls13-sni"], size)).sni == "api.example.com"
    tiny = rechunk(hellos["tls13-sni"], 1)
    assert l7.parse_tls_client_hello(tiny) == Invalid("too many records")
    assert l7.parse_tls_client_hello(tiny[:6 * l7.MAX_RECORDS - 1]) is NEED_MORE
    assert l7.parse_tls_client_hello(tiny[:6 * l7.MAX_RECORDS]) == Invalid("too many records")
    assert isinstance(prefixes_stable(l7.parse_tls_client_hello, tiny[:800]), Invalid)


def test_tls_bytes_after_the_hello_are_ignored(hellos):
    data = hellos["tls13-sni"]
    early = b"\x17\x03\x03\x00\x05hello"               # 0-RTT application data behind it
    r = l7.parse_tls_client_hello(data + early)
    assert r.sni == "api.example.com" and r.length == len(data)
    # the hello ends inside a record that carries another handshake message after it
    hs = b"".join(p for _t, _v, p in records_of(data)) + b"\x0f\x00\x00\x00"
    rec = b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs
    assert l7.parse_tls_client_hello(rec).length == len(rec) - 4


def test_tls_limit(hellos):
    data = hellos["tls13-sni"]
    assert isinstance(l7.parse_tls_client_hello(data, limit=len(data)), ClientHello)
    assert l7.parse_tls_client_hello(data, limit=len(data) - 1) == Invalid("too long")
    # the handshake header alone says it cannot fit: refused before the bytes come
    assert l7.parse_tls_client_hello(data[:9], limit=len(data) - 1) == Invalid("too long")
    assert l7.parse_tls_client_hello(data[:9], limit=len(data)) is NEED_MORE


def ext(t, payload):
    return t.to_bytes(2, "big") + len(payload).to_bytes(2, "big") + payload


def sni_ext(*names, name_type=0):
    entries = b"".join(bytes([name_type]) + len(n).to_bytes(2, "big") + n for n in names)
    return ext(0, len(entries).to_bytes(2, "big") + entries)


def alpn_ext(*names):
    lst = b"".join(bytes([len(n)]) + n for n in names)
    return ext(16, len(lst).to_bytes(2, "big") + lst)


def versions_ext(*vs):
    lst = b"".join(v.to_bytes(2, "big") for v in vs)
    return ext(43, bytes([len(lst)]) + lst)


def hello(exts=b"", *, version=0x0303, sid=b"", suites=b"\x13\x01\x00\x2f", comp=b"\x00",
          no_ext_block=False, ext_len=None, trailing=b"", hs_type=1, record_version=b"\x03\x01"):
    body = (version.to_bytes(2, "big") + bytes(32) + bytes([len(sid)]) + sid
            + len(suites).to_bytes(2, "big") + suites + bytes([len(comp)]) + comp)
    if not no_ext_block:
        body += (len(exts) if ext_len is None else ext_len).to_bytes(2, "big") + exts
    body += trailing
    hs = bytes([hs_type]) + len(body).to_bytes(3, "big") + body
    return b"\x16" + record_version + len(hs).to_bytes(2, "big") + hs


def test_tls_built_hellos():
    r = l7.parse_tls_client_hello(hello(no_ext_block=True, version=0x0301))
    assert (r.sni, r.alpn, r.version) == (None, [], 0x0301)
    # GREASE versions are skipped; the highest real one wins
    r = l7.parse_tls_client_hello(hello(versions_ext(0x7A7A, 0x0304, 0x0303)
                                        + sni_ext(b"h.example") + alpn_ext(b"h2", b"\xff")))
    assert (r.sni, r.alpn, r.version) == ("h.example", ["h2", "\xff"], 0x0304)
    # an unknown name type next to host_name; unknown and GREASE extensions around it
    names = b"\x01\x00\x01z" + b"\x00\x00\x06b.test"
    r = l7.parse_tls_client_hello(hello(ext(0x0A0A, b"") + ext(0, b"\x00\x0d" + names)
                                        + ext(0xFAFA, b"\x00") + ext(0x1234, bytes(300))))
    assert r.sni == "b.test"
    r = l7.parse_tls_client_hello(hello(sid=bytes(32), record_version=b"\x03\x03"))
    assert r.version == 0x0303 and r.sni is None


TLS_BAD = [
    ("sslv2", b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10", "sslv2 hello"),
    ("http", b"GET / HTTP/1.1\r\n\r\n", "not a handshake record"),
    ("alert", b"\x15\x03\x01\x00\x02\x02\x28", "not a handshake record"),
    ("record-v2", b"\x16\x02\x00", "bad record version"),
    ("record-v3.9", b"\x16\x03\x09", "bad record version"),
    ("record-empty", b"\x16\x03\x01\x00\x00", "bad record length"),
    ("record-huge", b"\x16\x03\x01\x40\x01", "bad record length"),
    ("server-hello", hello(hs_type=2), "not a ClientHello"),
    ("client-v2", hello(version=0x0200), "bad client version"),
    ("sid-33", hello(sid=bytes(33)), "bad session id"),
    ("odd-suites", hello(suites=b"\x13\x01\x00"), "bad cipher suites"),
    ("no-suites", hello(suites=b""), "bad cipher suites"),
    ("no-compression", hello(comp=b""), "bad compression methods"),
    ("ext-len-short", hello(sni_ext(b"a.b"), ext_len=3), "bad extensions length"),
    ("ext-len-long", hello(sni_ext(b"a.b"), ext_len=200), "bad extensions length"),
    ("trailing", hello(no_ext_block=True, trailing=b"\x00"), "truncated extensions length"),
    ("ext-truncated", hello(b"\x00\x00\x00\x09\x00"), "truncated extension"),
    ("sni-dup", hello(sni_ext(b"a.b", b"c.d")), "duplicate host_name"),
    ("sni-ext-dup", hello(sni_ext(b"a.b") + sni_ext(b"a.b")), "duplicate extension 0"),
    ("sni-empty-ext", hello(ext(0, b"")), "truncated server_name list length"),
    ("sni-empty-list", hello(ext(0, b"\x00\x00")), "bad server_name"),
    ("sni-list-overrun", hello(ext(0, b"\x00\x09\x00\x00\x01a")), "truncated server_name list"),
    ("sni-name-overrun", hello(ext(0, b"\x00\x04\x00\x00\x09a")), "truncated server_name"),
    ("sni-list-short", hello(ext(0, b"\x00\x04\x00\x00\x01ab")), "bad server_name"),
    ("sni-empty-name", hello(sni_ext(b"")), "bad host_name"),
    ("sni-nul", hello(sni_ext(b"a\x00.b")), "bad host_name"),
    ("sni-8bit", hello(sni_ext("café.example".encode())), "bad host_name"),
    ("alpn-empty-name", hello(alpn_ext(b"h2", b"")), "bad alpn"),
    ("alpn-empty-list", hello(ext(16, b"\x00\x00")), "bad alpn"),
    ("alpn-overrun", hello(ext(16, b"\x00\x03\x05h2")), "truncated alpn name"),
    ("versions-odd", hello(ext(43, b"\x03\x03\x04\x03")), "bad supported_versions"),
    ("versions-len", hello(ext(43, b"\x04\x03\x04")), "bad supported_versions"),
]


@pytest.mark.parametrize("case", TLS_BAD, ids=[c[0] for c in TLS_BAD])
def test_tls_garbage_is_invalid_and_stays_invalid(case):
    _id, data, reason = case
    assert l7.parse_tls_client_hello(data) == Invalid(reason)
    assert isinstance(prefixes_stable(l7.parse_tls_client_hello, data), Invalid)


def test_tls_record_type_change_mid_hello(hellos):
    data = rechunk(hellos["tls13-sni"], 100)
    bad = data[:105] + b"\x17" + data[106:]             # second record is application data
    assert l7.parse_tls_client_hello(bad) == Invalid("not a handshake record")


# --- hostile input: never raises, always one of the three answers, prefix-stable ---------------

def mutate(data, ops):
    b = bytearray(data)
    for kind, pos, val in ops:
        if not b:
            break
        p = pos % len(b)
        if kind == 0:
            b[p] = val
        elif kind == 1:
            del b[p]
        elif kind == 2:
            b.insert(p, val)
        else:
            del b[p:]
    return bytes(b)


OPS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255)),
               min_size=1, max_size=6)
SEEDS = [c[1] for c in HTTP_OK] + [c[1] for c in HTTP_BAD]


@FAST
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data):
    for limit in (64, 4096):
        assert is_answer(l7.parse_http_request(data, limit), HttpRequest)
        assert is_answer(l7.parse_tls_client_hello(data, limit), ClientHello)
    # the same bytes behind a valid-looking start, to get deeper into each parser
    assert is_answer(l7.parse_http_request(b"GET / HTTP/1.1\r\n" + data), HttpRequest)
    assert is_answer(l7.parse_tls_client_hello(b"\x16\x03\x01" + data), ClientHello)
    assert is_answer(l7.parse_tls_client_hello(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc" + data),
                     ClientHello)


HTTP_PIECES = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"GET", b"OPTIONS", b" ", b"/",
                                         b"*", b"?", b"http://", b"HTTP/1.1", b"HTTP/1.", b"Host",
                                         b":", b"a", b"\x00", b"\t", b"\xe9"]),
                       max_size=30).map(b"".join)


@FAST
@given(HTTP_PIECES)
def test_http_from_pieces_is_prefix_stable(data):
    prefixes_stable(l7.parse_http_request, data)
    prefixes_stable(lambda d: l7.parse_http_request(d, limit=16), data)


@FAST
@given(st.sampled_from(SEEDS), OPS)
def test_mutated_http_never_raises_and_is_prefix_stable(seed, ops):
    data = mutate(seed, ops)
    prefixes_stable(l7.parse_http_request, data)
    prefixes_stable(lambda d: l7.parse_http_request(d, limit=64), data)


@FAST
@given(st.sampled_from([c[0] for c in HELLOS]), st.sampled_from([5, 9, 64, 300, 16384]), OPS)
def test_mutated_tls_never_raises_and_is_prefix_stable(hellos_cache, key, size, ops):
    data = mutate(rechunk(hellos_cache[key], size), ops)
    r = l7.parse_tls_client_hello(data)
    assert is_answer(r, ClientHello)
    # every boundary on the smaller ones, a sample of them on the rest
    step = 1 if len(data) < 700 else 13
    first = None
    for i in list(range(0, len(data), step)) + [len(data)]:
        ri = l7.parse_tls_client_hello(data[:i])
        if first is None:
            first = None if ri is NEED_MORE else ri
        elif isinstance(first, Invalid):
            assert isinstance(ri, Invalid)
        else:
            assert ri == first


@FAST
@given(st.sampled_from(TLS_BAD), OPS)
def test_mutated_built_hellos_never_raise(case, ops):
    assert is_answer(l7.parse_tls_client_hello(mutate(case[1], ops)), ClientHello)


@pytest.fixture(scope="module")
def hellos_cache():
    return {c[0]: real_hello(c[1], c[2], c[3]) for c in HELLOS}


# --- rules ---------------------------------------------------------------------------------------

def R(kind, value, pool, **kw):
    return Rule(kind, value, pool, **kw)


GET = b"GET /blob/x HTTP/1.1\r\nHost: www.Example.com:8080\r\n\r\n"


def pool_of(d):
    assert isinstance(d, Decision), d
    return d.pool


def test_first_match_wins_in_order():
    rs = RuleSet([R("path_prefix", "/blob", "big"), R("host", "www.example.com", "web"),
                  R("default", "", "rest")])
    d = rs.decide(GET)
    assert (d.action, d.pool, d.rule_index, d.reason) == ("forward", "big", 0, "path_prefix")
    assert d.http.path == "/blob/x" and d.tls is None
    rs = RuleSet([R("host", "www.example.com", "web"), R("path_prefix", "/blob", "big")])
    assert pool_of(rs.decide(GET)) == "web"


@pytest.mark.parametrize("value,host,match", [
    ("www.example.com", "www.example.com", True),
    ("www.example.com", "WWW.Example.COM", True),          # case-insensitive
    ("WWW.EXAMPLE.COM", "www.example.com", True),          # the rule is lowercased too
    ("www.example.com", "www.example.com:8080", True),     # port stripped
    ("www.example.com", "www.example.com.", True),         # trailing dot
    ("www.example.com", "example.com", False),
    ("www.example.com", "www.example.com.evil", False),
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "a.b.example.com", True),            # one or more labels
    ("*.example.com", "A.Example.Com:443", True),
    ("*.example.com", "example.com", False),               # not the bare domain
    ("*.example.com", "badexample.com", False),
    ("*.example.com", "example.com.evil", False),
    ("198.19.100.1", "198.19.100.1:80", True),
])
def test_host_matching(value, host, match):
    rs = RuleSet([R("host", value, "p")])
    d = rs.decide(b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n")
    assert isinstance(d, Decision) is match, d
    # the same names in SNI (the ssl module sends none for an IP address)
    if ":" not in host and not host[0].isdigit():
        rs = RuleSet([R("sni", value, "p")])
        d = rs.decide(real_hello(host))
        assert isinstance(d, Decision) is match, d


def test_host_rule_sees_absolute_form_authority():
    rs = RuleSet([R("host", "real.example", "p")])
    assert pool_of(rs.decide(b"GET http://real.example/ HTTP/1.1\r\nHost: other\r\n\r\n")) == "p"
    assert rs.decide(b"GET / HTTP/1.1\r\n\r\n") == Refuse("no rule matched")    # no Host


def test_method_is_case_sensitive():
    rs = RuleSet([R("method", "POST", "w"), R("default", "", "r")])
    assert pool_of(rs.decide(b"POST /x HTTP/1.1\r\n\r\n")) == "w"
    assert pool_of(rs.decide(b"post /x HTTP/1.1\r\n\r\n")) == "r"
    assert pool_of(rs.decide(b"GET /x HTTP/1.1\r\n\r\n")) == "r"


def test_http_rule_waits_for_the_whole_head():
    rs = RuleSet([R("method", "GET", "g"), R("default", "", "r")])
    assert rs.decide(b"GET / HTTP/1.1\r\nHost: a\r\n") is NEED_MORE
    assert pool_of(rs.decide(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")) == "g"
    assert pool_of(rs.decide(b"\x16\x03\x01")) == "r"                   # not HTTP: at once
    assert pool_of(rs.decide_final(b"GET / HTTP/1.1\r\nHost: a\r\n")) == "r"


def test_sni_rule_only_matches_a_client_hello(hellos_cache):
    h = hellos_cache["tls13-sni"]
    rs = RuleSet([R("sni", "api.example.com", "tls"), R("host", "api.example.com", "http")])
    d = rs.decide(h)
    assert (d.pool, d.tls.sni, d.http) == ("tls", "api.example.com", None)
    assert rs.decide(h[:100]) is NEED_MORE
    assert pool_of(rs.decide(b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n")) == "http"
    assert rs.decide(hellos_cache["tls13-nosni"]) == Refuse("no rule matched")
    assert rs.decide_final(h[:100]) == Refuse("no rule matched")


def test_prefix_rule():
    rs = RuleSet([R("prefix", r"\x16\x03", "tls"), R("prefix", "PRI * HTTP/2.0", "h2c"),
                  R("default", "", "r")])
    assert pool_of(rs.decide(b"\x16\x03\x01\x02")) == "tls"
    assert rs.decide(b"\x16") is NEED_MORE                   # still a prefix of "\x16\x03"
    assert pool_of(rs.decide(b"\x16\x04")) == "r"
    assert rs.decide(b"PRI * H") is NEED_MORE
    assert pool_of(rs.decide(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")) == "h2c"
    assert pool_of(rs.decide(b"PRIX")) == "r"
    assert pool_of(rs.decide_final(b"PRI * H")) == "r"
    assert rs.decide(b"") is NEED_MORE


def test_pending_earlier_rule_holds_a_later_match():
    # rule 1 would match already, but rule 0 may still match once the head is complete
    rs = RuleSet([R("host", "a.example", "a"), R("prefix", "GET ", "g")])
    part = b"GET / HTTP/1.1\r\nHost: a.exa"
    assert rs.decide(part) is NEED_MORE
    assert pool_of(rs.decide_final(part)) == "g"
    assert pool_of(rs.decide(part + b"mple\r\n\r\n")) == "a"
    assert pool_of(rs.decide(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")) == "g"
    # an earlier rule that already matched does not wait for a later pending one
    rs = RuleSet([R("prefix", "GET ", "g"), R("host", "a.example", "a")])
    assert pool_of(rs.decide(b"GET ")) == "g"


def test_default_and_refuse():
    assert pool_of(RuleSet([R("default", "", "all")]).decide(b"\x00")) == "all"
    assert pool_of(RuleSet([R("default", "", "all")]).decide(b"")) == "all"
    rs = RuleSet([R("path_prefix", "/a", "a")])
    assert rs.decide(b"GET /b HTTP/1.1\r\n\r\n") == Refuse("no rule matched")
    assert rs.decide(b"\x16\x03\x01") == Refuse("no rule matched")
    assert rs.decide_final(b"GET /a HTTP/1.1\r\n") == Refuse("no rule matched")
    assert RuleSet([]).decide(b"x") == Refuse("no rule matched")


def test_limit_reached_is_never_need_more():
    rs = RuleSet([R("host", "a.example", "a"), R("sni", "a.example", "t"),
                  R("prefix", "x" * 100, "x")], limit=128)
    big = b"GET / HTTP/1.1\r\nX: " + b"y" * 200
    assert rs.decide(big[:127]) is NEED_MORE
    assert rs.decide(big[:128]) == Refuse("no rule matched")
    assert rs.decide(big) == Refuse("no rule matched")
    assert pool_of(rs.decide(b"x" * 100)) == "x"


def test_redirect_only_answers_http():
    rs = RuleSet([R("default", "", "near", action="redirect", redirect_probe=True),
                  R("default", "", "fwd")])
    d = rs.decide(b"GET /p?q=1 HTTP/1.1\r\nHost: v\r\n\r\n")
    assert (d.action, d.pool, d.http.path, d.http.query) == ("redirect", "near", "/p", "q=1")
    assert rs.decide(b"GET /p HTTP/1.1\r\n") is NEED_MORE
    assert pool_of(rs.decide(b"\x16\x03\x01")) == "fwd"
    assert pool_of(rs.decide_final(b"GET /p HTTP/1.1\r\n")) == "fwd"


def test_ruleset_canonicalises_and_refuses_unreachable():
    rs = RuleSet([R("host", "WWW.Example.com.", "p"), R("prefix", "\\x41B", "q")])
    assert [r.value for r in rs.rules] == ["www.example.com", "AB"]
    with pytest.raises(LBError) as e:
        RuleSet([R("default", "", "a"), R("host", "x", "b")])
    assert e.value.field == "rule[1]" and "unreachable" in e.value.message
    with pytest.raises(LBError) as e:
        RuleSet([R("method", "GET", "a"), R("host", "bad host", "b")], field_prefix="vip[0].rule")
    assert e.value.field == "vip[0].rule[1].value"
    with pytest.raises(LBError) as e:
        RuleSet([R("prefix", "x" * 65, "a")], limit=64)
    assert e.value.field == "rule[0].value"
    with pytest.raises(LBError) as e:
        RuleSet([], limit=10)
    assert e.value.field == "limit"


RULES = st.lists(st.one_of(
    st.builds(R, st.just("method"), st.sampled_from(["GET", "POST", "PRI"]), st.just("m")),
    st.builds(R, st.just("path_prefix"), st.sampled_from(["/", "/a", "/blob"]), st.just("p")),
    st.builds(R, st.sampled_from(["host", "sni"]),
              st.sampled_from(["h", "*.example.com", "www.example.com"]), st.just("h")),
    st.builds(R, st.just("prefix"), st.sampled_from(["G", "GET /", r"\x16\x03\x01"]),
              st.just("x")),
    st.builds(R, st.just("default"), st.just(""), st.just("r"), action=st.just("redirect")),
), max_size=5)


@FAST
@given(RULES, st.sampled_from(SEEDS + [c[1] for c in TLS_BAD]), OPS)
def test_decide_never_raises_and_is_prefix_stable(rules, seed, ops):
    rs = RuleSet(rules, limit=256)
    data = mutate(seed, ops)
    first = None
    for i in range(len(data) + 1):
        d = rs.decide(data[:i])
        assert d is NEED_MORE or isinstance(d, (Decision, Refuse))
        f = rs.decide_final(data[:i])
        assert isinstance(f, (Decision, Refuse))
        if first is None:
            if d is not NEED_MORE:
                first = d
                assert f == d
        else:
            assert d == first
    if len(data) >= 256:
        assert first is not None


# --- validation for the control side ---------------------------------------------------------------

def test_parse_rule_good():
    assert l7.parse_rule({"kind": "path_prefix", "value": "/blob", "pool": "big"}) == \
        Rule("path_prefix", "/blob", "big")
    r = l7.parse_rule({"kind": "host", "value": "*.Example.COM", "pool": "web",
                       "action": "redirect", "redirect_probe": True}, "vip[0].rule[0]")
    assert r == Rule("host", "*.example.com", "web", "redirect", True)
    assert l7.parse_rule({"kind": "default", "pool": "a"}) == Rule("default", "", "a")
    assert l7.parse_rule({"kind": "default", "value": None, "pool": "a"}).value == ""
    assert l7.parse_rule({"kind": "prefix", "value": "\\x16\\x03\\\\ \\r\\n\\t\\0\"é"[:-1],
                          "pool": "a"}).value == '\\x16\\x03\\\\ \\x0d\\x0a\\x09\\x00\\x22'
    assert l7.parse_rule({"kind": "method", "value": "M-SEARCH", "pool": "a"}).value == "M-SEARCH"


@pytest.mark.parametrize("spec,fld,msg", [
    ({"kind": "hots", "value": "x", "pool": "p"}, "rule[2].kind",
     "unknown kind 'hots' (method, path_prefix, host, sni, prefix, default)"),
    ({"value": "x", "pool": "p"}, "rule[2].kind", "missing"),
    ({"kind": "host", "value": "x", "pool": "p", "pol": 1}, "rule[2].pol", "did you mean 'pool'"),
    ({"kind": "host", "pool": "p"}, "rule[2].value", "missing"),
    ({"kind": "host", "value": "", "pool": "p"}, "rule[2].value", "missing"),
    ({"kind": "host", "value": 5, "pool": "p"}, "rule[2].value", "must be a string"),
    ({"kind": "host", "value": "www.example.com:80", "pool": "p"}, "rule[2].value", "port"),
    ({"kind": "host", "value": "a..b", "pool": "p"}, "rule[2].value", "host name"),
    ({"kind": "host", "value": "a.*.b", "pool": "p"}, "rule[2].value", "host name"),
    ({"kind": "host", "value": "-a.b", "pool": "p"}, "rule[2].value", "host name"),
    ({"kind": "sni", "value": "caf\u00e9.example", "pool": "p"}, "rule[2].value", "host name"),
    ({"kind": "method", "value": "G ET", "pool": "p"}, "rule[2].value", "method"),
    ({"kind": "path_prefix", "value": "blob", "pool": "p"}, "rule[2].value", "start with /"),
    ({"kind": "path_prefix", "value": "/a b", "pool": "p"}, "rule[2].value", "start with /"),
    ({"kind": "path_prefix", "value": "/a?b", "pool": "p"}, "rule[2].value", "without '?'"),
    ({"kind": "prefix", "value": "\\x1", "pool": "p"}, "rule[2].value", "two hex digits"),
    ({"kind": "prefix", "value": "\\q", "pool": "p"}, "rule[2].value", "unknown escape"),
    ({"kind": "prefix", "value": "a\\", "pool": "p"}, "rule[2].value", "unknown escape"),
    ({"kind": "prefix", "value": "caf\u00e9", "pool": "p"}, "rule[2].value", "not ASCII"),
    ({"kind": "prefix", "value": "x" * 4097, "pool": "p"}, "rule[2].value", "longer than the limit"),
    ({"kind": "default", "value": "x", "pool": "p"}, "rule[2].value", "takes no value"),
    ({"kind": "host", "value": "a"}, "rule[2].pool", "missing"),
    ({"kind": "host", "value": "a", "pool": "a b"}, "rule[2].pool", "pool name"),
    ({"kind": "host", "value": "a", "pool": 3}, "rule[2].pool", "pool name"),
    ({"kind": "host", "value": "a", "pool": "p", "action": "drop"}, "rule[2].action",
     "forward or redirect"),
    ({"kind": "sni", "value": "a", "pool": "p", "action": "redirect"}, "rule[2].action", "302"),
    ({"kind": "host", "value": "a", "pool": "p", "redirect_probe": True}, "rule[2].redirect_probe",
     "only applies to action redirect"),
    ({"kind": "host", "value": "a", "pool": "p", "action": "redirect", "redirect_probe": 1},
     "rule[2].redirect_probe", "true or false"),
])
def test_parse_rule_errors_name_the_field(spec, fld, msg):
    with pytest.raises(LBError) as e:
        l7.parse_rule(spec, "rule[2]")
    assert e.value.field == fld
    assert msg in e.value.message
    if msg.startswith("unknown kind"):
        assert str(e.value) == "rule[2].kind: " + msg


def test_parse_rule_checks_the_pool_exists_when_asked():
    spec = {"kind": "default", "pool": "big"}
    assert l7.parse_rule(spec, "rule[0]", pools={"big", "web"}).pool == "big"
    with pytest.raises(LBError) as e:
        l7.parse_rule(spec, "rule[0]", pools={"web", "api"})
    assert (e.value.field, e.value.message) == ("rule[0].pool", "unknown pool 'big' (have: api, web)")
    with pytest.raises(LBError) as e:
        l7.parse_rule("kind=host", "rule[0]")
    assert e.value.field == "rule[0]"


def test_format_rule_and_dict_round_trip():
    rules = [Rule("path_prefix", "/blob", "big"), Rule("default", "", "web", "redirect", True),
             Rule("host", "*.example.com", "w", "redirect"), Rule("prefix", "\\x16\\x03", "t")]
    assert [l7.format_rule(r) for r in rules] == [
        'path_prefix "/blob" -> big', "default -> web (redirect, probe)",
        'host "*.example.com" -> w (redirect)', 'prefix "\\x16\\x03" -> t']
    for r in rules:
        assert l7.parse_rule(l7.rule_as_dict(r)) == r


@FAST
@given(st.binary(max_size=64))
def test_prefix_escape_round_trip(b):
    text = l7.escape_prefix(b)
    assert text.isascii() and '"' not in text
    assert l7.unescape_prefix(text) == b
    assert l7.parse_rule({"kind": "prefix", "value": text or "\\x00", "pool": "p"}).value == \
        (text or "\\x00")


@FAST
@given(st.text(max_size=40))
def test_parse_rule_never_raises_anything_but_lberror(text):
    for kind in l7.KINDS:
        try:
            l7.parse_rule({"kind": kind, "value": text, "pool": "p"})
        except LBError:
            pass


# --- redirect ------------------------------------------------------------------------------------

def test_redirect_response():
    raw = l7.redirect_response("198.19.0.11:8080", "/blob/x", "a=1")
    r = dpkt.http.Response(raw)
    assert (r.version, r.status, r.reason) == ("1.1", "302", "Found")
    assert r.headers == {"location": "http://198.19.0.11:8080/blob/x?a=1",
                         "content-length": "0", "connection": "close"}
    assert r.body == b"" and raw.endswith(b"\r\n\r\n")
    assert b"Location: http://h/\r\n" in l7.redirect_response("h", "")        # CONNECT
    assert b"Location: http://h/\r\n" in l7.redirect_response("h", "*")       # OPTIONS *


def test_redirect_response_cannot_inject_headers():
    raw = l7.redirect_response("h:1", "/a\r\nSet-Cookie: x", "q\r\n\x00 \u00e9\ud800")
    head = raw.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[1] == b"Location: http://h:1/a%0D%0ASet-Cookie:%20x?q%0D%0A%00%20%C3%A9%ED%A0%80"
    assert len(head) == 4


def test_redirect_from_a_decision():
    rs = RuleSet([R("path_prefix", "/", "near", action="redirect")])
    d = rs.decide(b"GET /dl/file.iso?v=2 HTTP/1.0\r\n\r\n")
    raw = l7.redirect_response("198.19.0.12:80", d.http.path, d.http.query)
    assert dpkt.http.Response(raw).headers["location"] == "http://198.19.0.12:80/dl/file.iso?v=2"


# --- cost: bounded work ----------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_work_is_bounded_when_bytes_trickle_in():
    """A hostile client sends its first 4 KiB one byte per segment: decide() runs on every
    prefix. Each call is one C-level scan plus loops bounded by MAX_HEADERS / MAX_RECORDS.
    No timing is asserted (a loaded host would fail it): the timeout only catches a hang;
    bench/ is where speed is shown."""
    rs = RuleSet([R("host", "a", "a"), R("sni", "a", "b"), R("prefix", "x" * 4000, "x"),
                  R("default", "", "c")])
    hs = b"\x01\x00\x0f\x00" + bytes(4096)                 # fits the limit, never completes
    worst = [b"GET / HTTP/1.1\r\n" + b"X:a\r\n" * 2000, rechunk(b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs, 9),
             b"GET /" + b"a" * 5000, b"\n" * 5000, b"x" * 5000]
    for data in worst:
        for i in range(0, 4097):
            d = rs.decide(data[:i])
        assert isinstance(d, Decision)


# --- the one-regex fast path of parse_http_request against the line-by-line parser ------------

_piece = st.sampled_from([b"GET", b"POST", b"OPTIONS", b"CONNECT", b"G\xc3T", b" ", b"  ", b"/",
                          b"/a?b#c", b"*", b"http://h/x", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0",
                          b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\n\n", b"Host:", b"host: a",
                          b"HOST: B.", b"X-A: v", b":", b"\t", b" x", b"\x00", b"\xa0", b"\xff",
                          b"a" * 40, b"Host: [::1]:80", b"Content-Length: 3"])


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.lists(_piece, max_size=24).map(b"".join), st.binary(max_size=200)),
       st.integers(64, 400))
def test_the_regex_oracle_agrees_with_the_line_parser(data, limit):
    assert http_oracle.parse_http_request_regex(data, limit) == l7.parse_http_request(data, limit)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"\r\n\nGET /x?y HTTP/1.0\n\n",
    b"GET / HTTP/1.1\r\nA: 1\r\na: 2\r\nHost:  b  \r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", b"GET http://h:8/p HTTP/1.1\r\nHost: z\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\n folded\r\n\r\n"])
def test_the_fast_path_on_known_heads(data):
    assert http_oracle.parse_http_request_regex(data) == l7.parse_http_request(data)
