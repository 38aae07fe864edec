"""splice's redirect action: the HTTP 302 that sends a client to the chosen backend (L7 DSR).

Invariants: the answer is built from validated parts only (a backend address we chose, the
request's path and query as the HTTP parser accepted them); nothing from the request is
echoed unescaped into a header.
"""
from .http import _VCHAR, _bad


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
