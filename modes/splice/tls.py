"""splice's TLS ClientHello reader: the first bytes of a TLS connection -> ClientHello (SNI).

Run once per new splice connection whose VIP has an sni rule (never per packet).

Invariants:
- Nothing here raises on input from the network: parse_tls_client_hello returns a
  ClientHello, NEED_MORE or Invalid(reason); every read goes through a bounds-checked
  cursor, at most MAX_RECORDS records are walked, and only the first `limit` bytes count.
- Results are prefix-stable, as the HTTP parser's (modes/splice/http.py).
"""
from dataclasses import dataclass
from typing import Optional

from .http import _HOSTCHAR, DEFAULT_LIMIT, NEED_MORE, Invalid, _bad, _incomplete

MAX_RECORDS = 64                # TLS records per ClientHello (real clients: 1, DPI evasion: a few)


@dataclass(frozen=True, slots=True)
class ClientHello:
    sni: Optional[str]          # the host_name of server_name, as sent (ASCII); None if absent
    alpn: list                  # protocol names (latin-1 decoded), in the client's order
    version: int                # highest of supported_versions (GREASE skipped), else legacy_version
    legacy_version: int = 0x0303
    length: int = 0             # bytes of data consumed, record headers included


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
