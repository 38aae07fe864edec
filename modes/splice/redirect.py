"""splice's own answers for layer-7 DSR: the HTTP 302 and 503, and the RTSP answers.

A redirect rule sends the client to the chosen backend: the LB answers the HTTP request
itself with a 302 (after the backend passed its probe, probe.py) and the client fetches the
object from the backend directly. For RTSP the LB answers the session's requests before
DESCRIBE itself (rtsp_answer) and the DESCRIBE with `302 Moved Temporarily` to
rtsp://<node>[:port]/path.

HTTP answers carry `Connection: close` and the LB closes after them: the next request of a
redirected client goes to the node (the Location), and one connection that is neither
spliced nor closed would tie a flow entry to a client that has moved on; HTTP/1.1 clients
open a new connection for the next object at the VIP anyway once told to close.

Invariants: an answer is built from validated parts only (a backend address or configured
name we chose, the request's path and query as the parser accepted them, a CSeq of visible
ASCII); nothing from the request is echoed unescaped into a header.
"""
from .http import _VCHAR, _bad

# What a node of ours serves (gst-rtsp-server's methods); the LB's own OPTIONS answer uses
# the Public header the nodes' probes returned, this list until one has
RTSP_PUBLIC = "OPTIONS, DESCRIBE, SETUP, TEARDOWN, PLAY, PAUSE, GET_PARAMETER, SET_PARAMETER"
RTSP_SERVER = "threeway"
# RFC 2326 11: answers to the methods of a session before its DESCRIBE
RTSP_STATUS = {200: "OK", 302: "Moved Temporarily", 400: "Bad Request", 404: "Not Found",
               405: "Method Not Allowed", 454: "Session Not Found",
               455: "Method Not Valid in This State", 501: "Not Implemented",
               503: "Service Unavailable"}
RTSP_SESSION_METHODS = ("SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER", "SET_PARAMETER",
                        "RECORD")


def _safe(text):
    """Percent-encode every byte outside visible ASCII: no header injection, whatever comes in."""
    b = text.encode("utf-8", "surrogatepass")
    if not _bad(b, _VCHAR):
        return b
    return b"".join(bytes((c,)) if 0x21 <= c < 0x7F else b"%%%02X" % c for c in b)


def target_host(ip_text, port, default_port, name=""):
    """The authority of a Location: the backend's configured name or address, with its port
    when it is not the scheme's default."""
    host = name or ip_text
    return host if port == default_port else "%s:%d" % (host, port)


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


def unavailable_response(reason="no backend passed its probe"):
    """HTTP/1.1 503: every backend tried failed its probe (or none was usable)."""
    body = _safe(reason).replace(b"%20", b" ") + b"\n"
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nRetry-After: 1\r\n"
            b"Connection: close\r\n\r\n" + body)


def _cseq(cseq):
    # CSeq is echoed: digits only (RFC 2326 12.17), anything else is left out
    return cseq if cseq.isascii() and cseq.isdigit() and len(cseq) <= 10 else ""


def rtsp_response(status, cseq, headers=()):
    """`RTSP/1.0 <status> <reason>` with CSeq (if the request had a valid one), Server and
    the given (name, value) headers, no body."""
    out = [b"RTSP/1.0 %d %s" % (status, RTSP_STATUS.get(status, "Error").encode())]
    c = _cseq(cseq)
    if c:
        out.append(b"CSeq: " + c.encode())
    out.append(b"Server: " + RTSP_SERVER.encode())
    for k, v in headers:
        out.append(k.encode() + b": " + _safe(v).replace(b"%20", b" "))
    return b"\r\n".join(out) + b"\r\n\r\n"


def rtsp_redirect(host_port, path, query, cseq):
    """The DESCRIBE's 302 to rtsp://host_port/path[?query]."""
    if not path.startswith("/"):
        path = "/"
    loc = "rtsp://" + host_port + path + ("?" + query if query else "")
    return rtsp_response(302, cseq, (("Location", loc), ("Content-Length", "0")))


def rtsp_answer(method, cseq, public=None):
    """(status, bytes) of the LB's own answer to a request of an RTSP session before its
    DESCRIBE: OPTIONS 200 with the nodes' methods; the methods of a session (SETUP, PLAY...)
    455 (there is no session here yet); ANNOUNCE 405 (nothing is recorded through the VIP);
    anything else 501."""
    if method == "OPTIONS":
        return 200, rtsp_response(200, cseq, (("Public", public or RTSP_PUBLIC),))
    if method in RTSP_SESSION_METHODS:
        return 455, rtsp_response(455, cseq, (("Allow", "OPTIONS, DESCRIBE"),))
    if method == "ANNOUNCE":
        return 405, rtsp_response(405, cseq, (("Allow", "OPTIONS, DESCRIBE"),))
    return 501, rtsp_response(501, cseq)
