"""lbctl's trace and capture commands (registered on lb/cli.py's group):

    lbctl trace [--proto tcp|udp] SRC:PORT DST:PORT       what lbd does with this 5-tuple
    lbctl trace --follow [FILTER] [--client IP[:PORT]] [--vip IP:PORT] [--count N] [--seconds S]
                                                          each matching frame's verdict, live
    lbctl capture [--vip V] [--client C] [--filter FILTER] [--count N] [--seconds S]
                  [--snap BYTES] -w FILE                  a pcap of what lbd received and sent

FILTER is lb/watch.py's grammar (`host A and port 80`, `src host A`, `tcp`, ...). --follow and
capture run until Ctrl-C, --count N or --seconds S. `--count N` for capture is the number of
frames written to the file (received and sent count one each); for --follow, the number of
frames lbd received that are shown.

Invariants (as lb/cli.py's):
- Arguments are checked here (the filter with lb/watch.py's own parser) before anything is
  sent: `error: FIELD: message` on stderr, exit 2. The daemon's refusal: exit 1. Cannot
  connect: exit 3.
- Ctrl-C is a clean end: lbctl asks lbd to stop the stream, prints (or writes) what came,
  exits 0; lbd turns the watch off whenever the connection ends.
- The pcap is written by lbctl (where it runs) with dpkt's writer: Ethernet link type, the
  frames' own timestamps (ns), a frame cut to the snap length keeps its real length.
"""
import datetime
import json
import socket

import click
import dpkt

from . import config, trace as lbtrace, watch
from .cli import (EXIT_DAEMON, EXIT_UNREACHABLE, EXIT_USAGE, ControlUnavailable, _check, _fail,
                  _float_text, _int_text, _opts, _run, json_option, main)
from .errors import LBError

MAX_LINE = 64 << 20
STOP_WAIT_S = 3.0


def stream(path, cmd, args, on_item):
    """One streaming request (lb/control.py): on_item(result) for each line after the
    header; returns (header, final result). LBError for a refusal, ControlUnavailable when lbd
    cannot be reached. on_item returning True asks lbd to stop (the last line still comes);
    Ctrl-C does too."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        try:
            s.connect(path)
        except OSError as e:
            raise ControlUnavailable("cannot connect to %s: %s (is lbd running? --socket or "
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


def _read_reply(f, path):
    try:
        line = f.readline(MAX_LINE)
    except socket.timeout:
        raise ControlUnavailable("no reply from %s in time" % path) from None
    except OSError as e:
        raise ControlUnavailable("talking to %s: %s" % (path, e)) from None
    if not line:
        raise ControlUnavailable("%s closed the connection without a last line" % path)
    try:
        reply = json.loads(line)
    except ValueError as e:
        raise ControlUnavailable("bad reply from %s: %s" % (path, e)) from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ControlUnavailable("bad reply from %s: %r" % (path, line[:200]))
    if not reply["ok"]:
        err = reply.get("error") or {}
        raise LBError(err.get("field", "?"), err.get("message", "failed"))
    return reply


def _watch_args(ctx, words, client, vip, count, seconds):
    """The watch request's args, every one checked here first."""
    args = {}
    terms = _check(ctx, watch.parse_filter, list(words), "filter")
    if words:
        args["filter"] = " ".join(words)
    terms += _check(ctx, watch.endpoint_terms, client, vip)
    if client is not None:
        args["client"] = client
    if vip is not None:
        args["vip"] = vip
    if len(terms) > watch.defs.WATCH_MAX_TERMS:
        _fail(ctx, "filter", "at most %d terms, got %d" % (watch.defs.WATCH_MAX_TERMS,
                                                           len(terms)), EXIT_USAGE)
    if count is not None:
        args["count"] = _check(ctx, config.parse_int, _int_text(count), "count", 1,
                               watch.MAX_COUNT)
    if seconds is not None:
        args["seconds"] = _check(ctx, watch.parse_seconds, _float_text(seconds))
    return args


def _run_stream(ctx, args, on_item):
    o = _opts(ctx)
    try:
        return stream(o["socket"], "watch", args, on_item)
    except ControlUnavailable as e:
        if o.get("json"):
            click.echo(json.dumps({"ok": False, "error": {"field": "socket", "message": str(e)}}))
        click.echo("error: %s" % e, err=True)
        ctx.exit(EXIT_UNREACHABLE)
    except LBError as e:
        _fail(ctx, e.field, e.message, EXIT_DAEMON)


def event_line(ev):
    """One watch event as a line of text."""
    t = datetime.datetime.fromtimestamp(ev["ts"]).strftime("%H:%M:%S.%f")
    i = ev["in"]
    parts = [t]
    if "worker" in ev:
        parts.append("w%d" % ev["worker"])
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


@main.command("trace")
@click.argument("words", nargs=-1, metavar="SRC:PORT DST:PORT | FILTER")
@click.option("--proto", default="tcp", show_default=True, help="tcp or udp (a 5-tuple).")
@click.option("--follow", is_flag=True, help="Show matching frames live (FILTER).")
@click.option("--client", help="--follow: frames of this client IP[:PORT].")
@click.option("--vip", help="--follow: frames of this VIP:PORT.")
@click.option("--count", help="--follow: stop after N frames.")
@click.option("--seconds", help="--follow: stop after S seconds.")
@json_option
@click.pass_context
def trace_cmd(ctx, words, proto, follow, client, vip, count, seconds):
    """What lbd does with a 5-tuple; with --follow, each matching frame's verdict, live.

    A 5-tuple is SRC:PORT DST:PORT: a client and a VIP, or a backend and a client (the
    reverse direction). FILTER: `host A and port 80`, `src host A`, `dst port 8080`, `tcp`
    (terms joined by `and`; all must hold)."""
    if not follow:
        for name, val in (("client", client), ("vip", vip), ("count", count),
                          ("seconds", seconds)):
            if val is not None:
                _fail(ctx, name, "only with --follow", EXIT_USAGE)
        if len(words) != 2:
            _fail(ctx, "tuple", "give SRC:PORT DST:PORT (e.g. 198.18.0.10:40000 "
                  "198.19.100.1:80), or --follow FILTER", EXIT_USAGE)
        _check(ctx, config.parse_endpoint, words[0], "src")
        _check(ctx, config.parse_endpoint, words[1], "dst")
        _check(ctx, config.check_proto, proto)
        _run(ctx, "trace", {"src": words[0], "dst": words[1], "proto": proto},
             lambda r: click.echo(lbtrace.render(r)))
        return
    args = _watch_args(ctx, words, client, vip, count, seconds)
    as_json = _opts(ctx).get("json")

    def on_item(ev):
        click.echo(json.dumps(ev) if as_json else event_line(ev))

    header, final = _run_stream(ctx, args, on_item)
    if final is not None:
        if as_json:
            click.echo(json.dumps(final))
        else:
            click.echo("%d frames in %.3f s (%s); lost to a full ring: %d" % (
                final["frames"], final["seconds"], header["result"]["watch"], final["lost"]),
                err=True)


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


@main.command("capture")
@click.option("-w", "--write", "path", required=True, help="The pcap file to write.")
@click.option("--vip", help="Frames of this VIP:PORT.")
@click.option("--client", help="Frames of this client IP[:PORT].")
@click.option("--filter", "filter_", help="A FILTER (as trace --follow), in one argument.")
@click.option("--count", help="Stop after N frames written.")
@click.option("--seconds", help="Stop after S seconds.")
@click.option("--snap", default=str(watch.CAPTURE_SNAP), show_default=True,
              help="Bytes kept of each frame.")
@json_option
@click.pass_context
def capture_cmd(ctx, path, vip, client, filter_, count, seconds, snap):
    """Write a pcap of the frames lbd received and sent that match (both directions, the
    frames lbd made in place, e.g. splice's SYN-ACK cookies, too)."""
    words = filter_.split() if filter_ else []
    args = _watch_args(ctx, words, client, vip, count, seconds)
    args["bytes"] = True
    args["snap"] = _check(ctx, config.parse_int, _int_text(snap), "snap",
                          watch.defs.WATCH_SNAP_MIN, watch.defs.WATCH_SNAP_MAX)
    limit = args.get("count")
    try:
        fobj = open(path, "wb")
    except OSError as e:
        _fail(ctx, "write", "%s: %s" % (path, e.strerror or e), EXIT_USAGE)
    counts = {"in": 0, "out": 0}
    with fobj:
        pcap = PcapFile(fobj, args["snap"])

        def on_item(ev):
            ts = int(round(ev["ts"] * 1e9))
            for key, data, length in (("in", ev["in_bytes"], ev["in"]["len"]),
                                      ("out", ev.get("out_bytes"), ev.get("out", {}).get("len"))):
                if limit is not None and pcap.frames >= limit:
                    return True
                if data:
                    pcap.write(bytes.fromhex(data), ts, length)
                    counts[key] += 1
            fobj.flush()
            return limit is not None and pcap.frames >= limit

        header, final = _run_stream(ctx, args, on_item)
    result = {"file": path, "frames": pcap.frames, "received": counts["in"],
              "sent": counts["out"], "lost": (final or {}).get("lost"),
              "watch": header["result"]["watch"]}
    if _opts(ctx).get("json"):
        click.echo(json.dumps(result))
    else:
        click.echo("%s: %d frames (%d received, %d sent; %s); lost to a full ring: %s" % (
            path, pcap.frames, counts["in"], counts["out"], result["watch"], result["lost"]),
            err=True)
