"""The client side of lbctl's streaming commands (lb/cli.py's `trace --follow` and
`capture`): the streaming protocol of lb/control.py, an event as a line of text, and the
pcap writer.

Invariants:
- Ctrl-C while streaming is a clean end: lbd is asked to stop the stream (one byte), the
  rest comes and stream() returns; lbd turns the watch off whenever the connection ends.
- The pcap is written where lbctl runs, with dpkt's writer: Ethernet link type, the frames'
  own timestamps (ns), a frame cut to the snap length keeps its real length.
- Knows no click: lb/cli.py does the arguments and exit codes.
"""
import datetime
import json
import socket

import dpkt

from .errors import LBError

MAX_LINE = 64 << 20
STOP_WAIT_S = 3.0


class StreamUnavailable(Exception):
    """lbd cannot be reached, or the stream broke off without its last line."""


def stream(path, cmd, args, on_item):
    """One streaming request (lb/control.py): on_item(result) for each line after the
    header; returns (header, final result). LBError for a refusal, StreamUnavailable when lbd
    cannot be reached. on_item returning True asks lbd to stop (the last line still comes);
    Ctrl-C does too."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        try:
            s.connect(path)
        except OSError as e:
            raise StreamUnavailable("cannot connect to %s: %s (is lbd running? --socket or "
                                     "$THREEWAY_SOCKET)" % (path, e.strerror or e)) from None
        s.sendall((json.dumps({"cmd": cmd, "args": args}) + "\n").encode())
        f = s.makefile("rb")
        header = _read_reply(f, path)
        s.settimeout(None)
        stopping = False
        while True:
            try:
                reply = _read_reply(f, path)
                if reply.get("more"):
                    if on_item(reply.get("result")) and not stopping:
                        stopping = _ask_stop(s)
                    continue
                return header, reply.get("result")
            except KeyboardInterrupt:
                if stopping:
                    return header, None
                stopping = _ask_stop(s)
    finally:
        s.close()


def _ask_stop(s):
    try:
        s.settimeout(STOP_WAIT_S)
        s.sendall(b"\n")
    except OSError:
        pass
    return True


def decode_reply(line, path, unavailable):
    """One reply line of the control socket as a dict with "ok"; else `unavailable` (an
    exception class) saying what came instead. lb/cli.py's request uses it too."""
    try:
        reply = json.loads(line)
    except ValueError as e:
        raise unavailable("bad reply from %s: %s" % (path, e)) from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise unavailable("bad reply from %s: %r" % (path, line[:200]))
    return reply


def _read_reply(f, path):
    try:
        line = f.readline(MAX_LINE)
    except socket.timeout:
        raise StreamUnavailable("no reply from %s in time" % path) from None
    except OSError as e:
        raise StreamUnavailable("talking to %s: %s" % (path, e)) from None
    if not line:
        raise StreamUnavailable("%s closed the connection without a last line" % path)
    reply = decode_reply(line, path, StreamUnavailable)
    if not reply["ok"]:
        err = reply.get("error") or {}
        raise LBError(err.get("field", "?"), err.get("message", "failed"))
    return reply


def event_line(ev):
    """One watch event as a line of text."""
    t = datetime.datetime.fromtimestamp(ev["ts"]).strftime("%H:%M:%S.%f")
    parts = [t]
    if "worker" in ev:
        parts.append("w%d" % ev["worker"])
    if ev.get("made"):
        return " ".join(parts + ["lbd-made", _frame_text(ev["out"]), "=> sent by lbd"])
    i = ev["in"]
    parts.append(ev.get("dir", "-"))
    parts.append(_frame_text(i))
    v = ev["verdict"]
    f = ev.get("flow")
    if v == "tx":
        if f is not None:
            verdict = "forwarded to %s (%s)" % (f["backend"] or "-", f["mode"]) \
                if ev.get("dir") == "client->backend" else "to client %s (%s)" % (
                    f["client"], f["mode"])
        else:
            verdict = "sent (%s)" % ev["reason"]
        if "out" in ev:
            verdict += " as " + _frame_text(ev["out"])
    elif v == "drop":
        verdict = "dropped: %s" % ev["reason"]
    else:
        verdict = "punted: %s" % ev["reason"]
    if f is not None:
        verdict += " state %s" % f["state"]
    moved = ["%s%s" % (k, "" if n == 1 else "+%d" % n) for k, n in ev["counters"].items()
             if k != "rx_frames"]
    parts.append("=> " + verdict)
    parts.append("[%s]" % ", ".join(moved))
    return " ".join(parts)


def _frame_text(i):
    if "src" not in i:
        return "ether %s len %d" % (i.get("ether"), i["len"])
    if "sport" in i:
        s = "%s:%d > %s:%d %s" % (i["src"], i["sport"], i["dst"], i["dport"], i["proto"])
    else:
        s = "%s > %s %s" % (i["src"], i["dst"], i["proto"])
    if i.get("flags") is not None:
        s += " [%s]" % i["flags"]
    return s + " len %d" % i["len"]


class PcapFile:
    """dpkt's pcap writer (nanosecond timestamps, Ethernet) for frames cut to a snap length:
    each record keeps the frame's real length."""

    def __init__(self, fileobj, snap):
        self.w = dpkt.pcap.Writer(fileobj, snaplen=snap, linktype=dpkt.pcap.DLT_EN10MB,
                                  nano=True)
        self.f = fileobj
        self.frames = 0

    def write(self, frame, ts_ns, length):
        if length == len(frame):
            self.w.writepkt_time(frame, ts_ns / 1e9)
        else:
            # writepkt_time would record the cut length as the real one; dpkt's own
            # per-record header packer with both lengths instead
            sec, nsec = divmod(int(ts_ns), 1_000_000_000)
            self.f.write(self.w._pack_hdr(sec, nsec, len(frame), length) + frame)
        self.frames += 1
