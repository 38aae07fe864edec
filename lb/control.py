"""The control socket server of lbd: a Unix stream socket speaking one JSON object per line.

Request  {"cmd": "vip.add", "args": {...}}
Reply    {"ok": true, "result": ...}  or  {"ok": false, "error": {"field": ..., "message": ...}}

Streaming commands (`watch`: lbctl trace --follow, lbctl capture) answer one request with
many lines: each {"ok": true, "more": true, "result": ...} (the first is the stream's header),
and a last {"ok": true, "more": false, "result": {...}} when the stream ends by itself; or a
single error line when the request is refused. The client ends a stream early by sending any
byte (then the last line comes) or by closing the connection. A reply without "more" is a
whole reply: the one-line protocol is unchanged for every other command.

Invariants:
- Only root may talk to it: the socket file is 0600 in a 0700 directory, and the peer's uid
  (SO_PEERCRED) is checked on every connection.
- The handler runs in the daemon's event loop, i.e. between two bursts: whatever tables it
  swaps take effect for the next burst, never in the middle of one.
- A bad request is answered with an error and the connection stays usable; an LBError names
  its field; any other exception is logged with its traceback and answered with the field
  "internal". Nothing a client sends can stop the daemon.
- A stream is polled in the event loop (session.poll() every session.interval s), so it
  never blocks the loop; its session is closed however the stream ends (count, client gone,
  error), before the last line is written, and the connection is closed after it.
"""
import asyncio
import json
import logging
import os
import socket
import stat
import struct

from .errors import LBError

log = logging.getLogger("lb.control")

MAX_LINE = 1 << 20
_UCRED = struct.Struct("3i")   # pid, uid, gid


def error_reply(field, message):
    return {"ok": False, "error": {"field": field, "message": message}}


def dispatch(handler, line):
    """The reply (a dict) to one request line; handler(cmd, args) -> result, may raise."""
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        return error_reply("request", "not valid JSON: %s" % exc)
    if not isinstance(req, dict):
        return error_reply("request", "must be a JSON object")
    cmd = req.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        return error_reply("cmd", "missing or not a string")
    args = req.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return error_reply("args", "must be a JSON object")
    try:
        result = handler(cmd, args)
    except LBError as exc:
        return {"ok": False, "error": exc.as_dict()}
    except Exception as exc:
        log.exception("command %r failed", cmd)
        return error_reply("internal", "%s: %s" % (type(exc).__name__, exc))
    return {"ok": True, "result": result}


def _encode(reply):
    try:
        return (json.dumps(reply, default=_json_default) + "\n").encode()
    except (TypeError, ValueError) as exc:   # a handler returned something JSON cannot hold
        log.error("reply not serialisable: %s", exc)
        return (json.dumps(error_reply("internal", "reply not serialisable: %s" % exc))
                + "\n").encode()


def _json_default(o):
    if isinstance(o, (bytes, bytearray)):
        return bytes(o).hex(":")
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if hasattr(o, "item"):          # numpy scalars
        return o.item()
    raise TypeError("%s is not JSON serialisable" % type(o).__name__)


class ControlServer:
    """ControlServer(path, handler); `await start()`, `await close()` (removes the socket,
    unless unlink=False: a takeover hands the listening socket on, lb/takeover.py)."""

    def __init__(self, path, handler, allowed_uids=(0,), streams=None):
        self.path = path
        self.handler = handler
        # cmd -> open(args) -> a session: header(), poll() -> (items, final or None),
        # interval (s), final(), close()
        self.streams = dict(streams or {})
        self.allowed_uids = set(allowed_uids)
        self._server = None
        self.connections = 0
        self.refused = 0
        self.requests = 0

    async def start(self, sock=None):
        """Listen on self.path; or, given sock (a listening socket handed over by the lbd
        that ran before, lb/takeover.py), serve that one: the path is already its."""
        if sock is not None:
            self._server = await asyncio.start_unix_server(self._client, sock=sock,
                                                           limit=MAX_LINE)
            log.info("control socket %s (handed over)", self.path)
            return
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, mode=0o700, exist_ok=True)
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError("%s exists and is not a socket" % self.path)
            if _socket_alive(self.path):
                raise OSError("%s: another lbd is listening there" % self.path)
            os.unlink(self.path)          # stale socket of a daemon that died
        old = os.umask(0o177)             # no window where the socket is wider than 0600
        try:
            self._server = await asyncio.start_unix_server(self._client, path=self.path,
                                                           limit=MAX_LINE)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        log.info("control socket %s", self.path)

    def listen_fd(self):
        """The listening socket's fd (to hand over to the next lbd)."""
        return self._server.sockets[0].fileno()

    async def close(self, unlink=True):
        """Stop serving; unlink=False (after a takeover) leaves the path to the next lbd,
        which serves the same socket."""
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                pass
            self._server = None
        if not unlink:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def _client(self, reader, writer):
        self.connections += 1
        sock = writer.get_extra_info("socket")
        try:
            pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          _UCRED.size))
            if uid not in self.allowed_uids:
                self.refused += 1
                log.warning("refused control connection from pid %d uid %d", pid, uid)
                writer.write(_encode(error_reply("auth", "only root may use the control socket")))
                await writer.drain()
                return
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    writer.write(_encode(error_reply("request", "line longer than %d bytes"
                                                     % MAX_LINE)))
                    await writer.drain()
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                self.requests += 1
                stream = self._stream_of(line)
                if stream is not None:
                    await self._stream(stream, line, reader, writer)
                    return
                writer.write(_encode(dispatch(self.handler, line)))
                await writer.drain()
        except (ConnectionError, BrokenPipeError):
            pass
        except asyncio.CancelledError:
            # the daemon is exiting (e.g. handed over) with this connection open: end quietly
            # (3.11's stream callback logs a cancelled client task as an error)
            pass
        except Exception:
            log.exception("control connection failed")
        finally:
            writer.close()


    def _stream_of(self, line):
        """The stream opener of a request line's cmd, or None (then dispatch answers it)."""
        if not self.streams:
            return None
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(req, dict):
            return None
        cmd = req.get("cmd")
        return self.streams.get(cmd) if isinstance(cmd, str) else None

    async def _stream(self, opener, line, reader, writer):
        session = None

        def open_session(cmd, args):
            nonlocal session
            session = opener(args)
            return session.header()

        first = dispatch(open_session, line)
        if session is None:
            writer.write(_encode(first))
            await writer.drain()
            return
        try:
            first["more"] = True
            writer.write(_encode(first))
            await writer.drain()
            while True:
                try:
                    items, final = session.poll()
                except Exception as exc:
                    log.exception("stream failed")
                    writer.write(_encode(error_reply("internal", "%s: %s"
                                                     % (type(exc).__name__, exc))))
                    break
                for item in items:
                    writer.write(_encode({"ok": True, "more": True, "result": item}))
                if final is not None:
                    session.close()             # off before the client reads the last line
                    writer.write(_encode({"ok": True, "more": False, "result": final}))
                    break
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(1), session.interval)
                except asyncio.TimeoutError:
                    continue
                if not data:
                    break                           # the client went away
                # the client asks to stop: what is recorded, then the last line
                items, _ = session.poll()
                for item in items:
                    writer.write(_encode({"ok": True, "more": True, "result": item}))
                final = session.final()
                session.close()
                writer.write(_encode({"ok": True, "more": False, "result": final}))
                break
            await writer.drain()
        finally:
            session.close()


def _socket_alive(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()
