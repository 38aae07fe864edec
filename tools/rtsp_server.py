"""A lab backend's RTSP server (RFC 2326): gst-rtsp-server through python3-gi, a small test
stream. Run by Debian's /usr/bin/python3 (python3-gi and gir1.2-gst-rtsp-server-1.0 are
Debian's, importable only there), in a backend's namespace, by tools/lab.py.

    /usr/bin/python3 tools/rtsp_server.py --port 554 --name b2 --width 352

Mount /test: a live videotestsrc, JPEG over RTP (payload 26), WIDTHx240 at 5 fps. The width
differs per node (lab.py gives 320 + 16 * i), so a client's ffprobe says which node's stream
description it got. Every request is logged on stdout as one JSON line: {"node", "client"
(its ip), "method", "uri"}, so a test can tell who asked what. Stdlib + gi only.
"""
import argparse
import json
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=554)
    ap.add_argument("--name", default="node")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--address", default="0.0.0.0")
    a = ap.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(a.address)
    server.set_service(str(a.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch("( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=%d,"
                       "height=240,framerate=5/1 ! jpegenc quality=50 ! rtpjpegpay name=pay0 "
                       "pt=26 )" % a.width)
    # each client its own pipeline: a probe that hangs up after its DESCRIBE must not
    # unprepare the media of the client that follows it
    factory.set_shared(False)
    server.get_mount_points().add_factory("/test", factory)

    def log_request(client, ctx, method):
        conn = client.get_connection()
        peer = conn.get_ip() if conn is not None else "?"
        uri = ctx.uri.get_request_uri() if ctx.uri is not None else ""
        print(json.dumps({"node": a.name, "client": peer, "method": method, "uri": uri}),
              flush=True)

    def on_client(srv, client):
        for sig, method in (("options-request", "OPTIONS"), ("describe-request", "DESCRIBE"),
                            ("setup-request", "SETUP"), ("play-request", "PLAY"),
                            ("teardown-request", "TEARDOWN")):
            client.connect(sig, lambda c, ctx, m=method: log_request(c, ctx, m))

    server.connect("client-connected", on_client)
    if server.attach(None) == 0:
        print("cannot listen on %s:%d" % (a.address, a.port), file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    print(json.dumps({"node": a.name, "listening": a.port}), flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
