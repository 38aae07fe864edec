"""I/O backends of lbd: one batch RX/TX interface over a TAP device, an AF_PACKET socket or
a pair of pcap files.

Every backend has the same small surface. Live, a worker thread (lb/workers.py) hands .fd
to Engine.serve, which reads and writes it itself, and counts what it moved with .account;
offline, lb/daemon.py's burst() uses .rx and .tx:

    .fd                     pollable file descriptor, or None (pcap)
    .rx(batch) -> n         fill a fastpath.Batch with up to batch.size frames; sets batch.n
    .tx(batch) -> (sent, errors)   send every frame whose verdict is V_TX
    .account(result)        (live) count what Engine.serve moved on .fd
    .send(frames)           send frames Python built (ARP replies, ICMP echo replies)
    .info() -> dict         backend, interface, ifindex, ...
    .counters() -> dict     rx/tx frame counts and errors
    .close()

Invariants:
- Live backends read and write one frame per read()/write() (no packet-information header);
  the per-frame loop is fastpath's (Engine.serve, rx_burst/tx_burst), draining the fd until
  EAGAIN.
- Checksums and offload: with offload (TAP IFF_VNET_HDR + TUNSETOFFLOAD, AF_PACKET
  PACKET_VNET_HDR) every frame carries a virtio-net header (10 bytes; 24 on a TAP that takes
  the long one, for UDP-tunnel GSO), which tells a partial checksum (NEEDS_CSUM) and a GSO
  superframe apart; the engine keeps their semantics and the
  kernel segments and completes them on the way out. Without offload the TAP gets only
  complete checksums, and on AF_PACKET the lab turns the interface's offloads off (without
  the header a partial checksum cannot be told apart, and we do not guess).
- Several workers (TapIO queues > 1): one fd per TAP queue (TapQueue), each read and written
  by one worker thread only (lb/workers.py).
- Nothing here touches a frame's content; parsing is the fast path's job.
- A takeover (lb/takeover.py) hands the live fds to the next lbd (handover_fds,
  handover_info) which adopts them (adopt_backend): the device, its offloads, vnet header
  size, RPS and steering program are the kernel's and stay; closing the old process's fds
  afterwards removes nothing, since the new one holds the same open files.
"""
import errno
import fcntl
import logging
import os
import socket
import struct

import dpkt
import numpy as np

import fastpath
from fastpath import defs

log = logging.getLogger("lb.io")

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23      # linux/if_packet.h, Linux >= 4.20
SO_SNDBUFFORCE = 32              # asm-generic/socket.h; root may exceed net.core.*mem_max
SO_RCVBUFFORCE = 33
SOCKET_BUF = 8 << 20


VNET_HDR_LEN = defs.VNET_HDR_LEN     # struct virtio_net_hdr (no mergeable buffers)
SNAP = 2048               # a batch row: one <= 1514-byte frame ...
SNAP_OFFLOAD = 65536 + 64  # ... or, with vnet headers, a 64 KiB superframe and its header


def _send_frames(fd, frames, counters, hdr=0):
    """write() each frame; a full queue or a down link costs the frame, not the daemon.
    Frames made in Python carry complete checksums: their vnet header is all zero."""
    pre = b"\0" * hdr
    for f in frames:
        try:
            os.write(fd, pre + f if hdr else f)
            counters["send_frames"] += 1
        except OSError as exc:
            counters["send_errors"] += 1
            log.debug("send failed: %s", exc)


def _tx_rows(batch):
    return [batch.frame(i) for i in np.flatnonzero(batch.verdict[:batch.n] == defs.V_TX)]


def _new_counters():
    return {"rx_frames": 0, "rx_bytes": 0, "rx_bursts": 0, "tx_frames": 0, "tx_bytes": 0,
            "tx_errors": 0, "send_frames": 0, "send_errors": 0}


class _LiveIO:
    backend = ""

    def __init__(self):
        self._c = _new_counters()
        self.fd = None
        self.name = ""
        self.ifindex = 0
        self.hdr = 0                 # vnet header bytes in front of each frame
        self.offload_why = None      # why offload is on or off (open_backend)

    def new_batch(self, size):
        """A Batch that fits this backend's frames."""
        return fastpath.Batch(size, SNAP_OFFLOAD if self.hdr else SNAP, self.hdr)

    def rx(self, batch):
        n = fastpath.rx_burst(self.fd, batch)
        if n:
            self._count_rx(n, 1, batch.rx_bytes, batch.rx_gso, batch.rx_needs_csum)
        return n

    def tx(self, batch):
        sent, errors, nbytes = fastpath.tx_burst(self.fd, batch)
        self._count_tx(sent, errors, nbytes)
        return sent, errors

    def account(self, r):
        """Count what Engine.serve moved on this fd (its result: lb/workers.py)."""
        if r["frames"]:
            self._count_rx(r["frames"], r["bursts"], r["rx_bytes"], r["rx_gso"],
                           r["rx_needs_csum"])
        self._count_tx(r["tx_frames"], r["tx_errors"], r["tx_bytes"])

    def _count_rx(self, frames, bursts, nbytes, gso, csum):
        self._c["rx_frames"] += frames
        self._c["rx_bytes"] += nbytes - frames * self.hdr
        self._c["rx_bursts"] += bursts

    def _count_tx(self, sent, errors, nbytes):
        self._c["tx_frames"] += sent
        self._c["tx_bytes"] += nbytes
        self._c["tx_errors"] += errors

    def send(self, frames):
        """Frames made in Python: a list of frames, or a Batch whose V_TX rows go out (in one
        tx_burst when its header length is this device's)."""
        if isinstance(frames, fastpath.Batch):
            if frames.hdr == self.hdr:
                self.tx(frames)
                return
            frames = _tx_rows(frames)
        _send_frames(self.fd, frames, self._c, self.hdr)

    def info(self):
        return {"backend": self.backend, "interface": self.name, "ifindex": self.ifindex,
                "offload_why": self.offload_why}

    def counters(self):
        return dict(self._c)


class TapIO(_LiveIO):
    """A TAP device created (and owned) by this process: IFF_TAP | IFF_NO_PI, MTU 1500.

    The device disappears when the fd is closed. The lab may move it into another namespace
    after creation; the fd keeps working, so the name and ifindex recorded at creation are
    never looked up again.

    offload=True opens it with IFF_VNET_HDR and TUNSETOFFLOAD (checksum, TSO4, TSO6): every
    read() then starts with a virtio-net header (.hdr bytes: 24 where the kernel takes the
    long header, see _long_header, else 10) and may carry a GSO superframe of up
    to 64 KiB whose L4 checksum is partial (header flag NEEDS_CSUM); writes carry the header
    back, so the kernel segments and completes checksums on the way out. The fast path
    rewrites headers once per superframe (fastpath.Batch.hdr tells it where frames start).

    queues=N > 1 (lb/workers.py): the device is made with IFF_MULTI_QUEUE and opened N times
    (same name, same flags, so every queue has the same vnet-header setting); `.queues` holds
    one TapQueue per fd, each with its own counters, for the worker that owns it. Which queue
    a frame goes to is the steering program's choice (lb/steer.py), attached through `.fd`
    (queue 0's). The device goes when the last queue is closed. With queues=1 `.queues` is
    [self] and nothing else differs."""
    backend = "tap"
    TUNSETOFFLOAD = 0x400454D0
    TUNSETVNETHDRSZ = 0x400454D8
    TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
    IFF_MULTI_QUEUE = 0x0100          # linux/if_tun.h (pytun may not export it)

    def __init__(self, name, mtu=1500, offload=False, queues=1, rps=None):
        super().__init__()
        import pytun  # only the tap backend needs it
        flags = pytun.IFF_TAP | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if offload else 0)
        if queues > 1:
            flags |= self.IFF_MULTI_QUEUE
        self._dev = pytun.TunTapDevice(name=name, flags=flags)
        self._more = []               # the devices of queues 1.. (multi-queue only)
        try:
            for _ in range(queues - 1):
                self._more.append(pytun.TunTapDevice(name=self._dev.name, flags=flags))
            if offload:
                for dev in [self._dev] + self._more:
                    fcntl.ioctl(dev.fileno(), self.TUNSETOFFLOAD,
                                self.TUN_F_CSUM | self.TUN_F_TSO4 | self.TUN_F_TSO6)
                self.hdr = self._long_header()
            self._dev.mtu = mtu
            self._dev.up()
            self.name = self._dev.name
            self.ifindex = socket.if_nametoindex(self.name)
            self.mtu = mtu
            self.fd = self._dev.fileno()
            os.set_blocking(self.fd, False)
            self.rps_cpus = self._set_rps(rps)
            self.queues = [self]
            if queues > 1:
                self.queues = [TapQueue(dev.fileno(), self.hdr, i)
                               for i, dev in enumerate([self._dev] + self._more)]
                for q in self.queues[1:]:
                    os.set_blocking(q.fd, False)
        except Exception:
            for dev in [self._dev] + self._more:
                dev.close()
            raise

    @classmethod
    def adopt(cls, fds, info):
        """The TAP of the lbd that ran before (lb/takeover.py): its queue fds, as received,
        and its handover_info(). Nothing is set on the device (offloads, header size, MTU,
        RPS and the steering program stay as they are)."""
        self = cls.__new__(cls)
        _LiveIO.__init__(self)
        self._dev, self._more = None, []
        self._adopted = list(fds)
        self.name, self.ifindex, self.mtu = info["interface"], info["ifindex"], info["mtu"]
        self.hdr, self.rps_cpus = info["hdr"], info["rps_cpus"]
        self.offload_why = "%s (handed over)" % info.get("offload_why")
        self.fd = fds[0]
        for fd in fds:
            os.set_blocking(fd, False)
        self.queues = [self]
        if len(fds) > 1:
            self.queues = [TapQueue(fd, self.hdr, i) for i, fd in enumerate(fds)]
        return self

    def handover_fds(self):
        """Every queue's fd, queue 0 first (the next lbd's adopt() takes them in order)."""
        return [q.fd for q in self.queues]

    def handover_info(self):
        return {"backend": self.backend, "interface": self.name, "ifindex": self.ifindex,
                "mtu": self.mtu, "hdr": self.hdr, "rps_cpus": self.rps_cpus,
                "offload_why": getattr(self, "offload_why", None)}

    def _long_header(self):
        """The vnet header's size: the long one (defs.VNET_TNL_HDR_LEN) where the kernel
        takes it, so a write() may carry a superframe inside VXLAN (UDP-tunnel GSO; the
        6.18 kernel here does, and checks those headers on every write: a bad one is
        EINVAL), else the plain 10 bytes. Reads are unchanged but for the longer header: without
        TUN_F_UDP_TUNNEL_GSO in TUNSETOFFLOAD the kernel never hands us a tunnel superframe.
        The size is the device's, shared by every queue."""
        try:
            fcntl.ioctl(self._dev.fileno(), self.TUNSETVNETHDRSZ,
                        struct.pack("i", defs.VNET_TNL_HDR_LEN))
        except OSError as e:
            log.info("TAP vnet header stays %d bytes (%s): tunnel superframes are cut by lbd",
                     VNET_HDR_LEN, e)
            return VNET_HDR_LEN
        return defs.VNET_TNL_HDR_LEN

    def _set_rps(self, rps):
        """RPS on the TAP's receive queues (the frames lbd writes): the kernel hands each
        written frame's forwarding (bridge, veth, the router or the backend's TCP) to the CPU
        its flow hash picks, instead of doing all of it inside lbd's write(). rps None: try,
        and log why not; True: required (OSError if it cannot be set); False: leave it off.
        Returns the mask set, or None."""
        n = os.cpu_count() or 1
        if rps is False or (rps is None and n < 2):
            return None
        mask = rps_mask_text(n)
        try:
            qdir = "/sys/class/net/%s/queues" % self.name
            paths = [os.path.join(qdir, q, "rps_cpus") for q in sorted(os.listdir(qdir))
                     if q.startswith("rx-")]
            if not paths:
                raise OSError("no receive queues under %s" % qdir)
            for path in paths:
                with open(path, "w") as f:
                    f.write(mask)
        except OSError as e:
            if rps:
                raise OSError("io.rps: cannot set RPS on %s: %s" % (self.name, e)) from e
            log.warning("RPS not set on %s (%s): lbd's writes are forwarded on its own CPU",
                        self.name, e)
            return None
        return mask

    def info(self):
        d = super().info()
        d["mtu"] = self.mtu
        d["offload"] = bool(self.hdr)
        d["vnet_hdr"] = self.hdr
        d["queues"] = len(self.queues)
        d["rps_cpus"] = self.rps_cpus
        return d

    def counters(self):
        """With several queues: the sum over the queues and this object's own sends (frames
        the main thread writes, e.g. ARP), plus `queues`: {"q0": counters of queue 0, ...}."""
        if len(self.queues) == 1:
            return dict(self._c)
        per = [q.counters() for q in self.queues]
        total = dict(self._c)
        for c in per:
            for k, v in c.items():
                total[k] += v
        total["queues"] = {"q%d" % i: c for i, c in enumerate(per)}
        return total

    def close(self):
        """Close every queue. The device goes with the last fd of it in any process: after
        a takeover the next lbd holds its own, so closing here removes nothing."""
        if getattr(self, "_adopted", None):
            for fd in self._adopted:
                os.close(fd)
            self._adopted = []
            self.fd = None
            for q in self.queues:
                q.fd = None
        if self._dev is not None:
            for dev in self._more:
                dev.close()
            self._more = []
            self._dev.close()
            self._dev = None
            self.fd = None
            for q in self.queues:
                q.fd = None


class TapQueue(_LiveIO):
    """One queue of a multi-queue TapIO: the same batch interface on its own fd, with its own
    counters (one thread uses it). The TapIO owns and closes the fd."""
    backend = "tap"

    def __init__(self, fd, hdr, index):
        super().__init__()
        self.fd = fd
        self.hdr = hdr
        self.index = index

    def info(self):
        return {"backend": "tap", "queue": self.index}


class AfPacketIO(_LiveIO):
    """A raw AF_PACKET socket bound to one existing interface (all ethertypes).

    PACKET_IGNORE_OUTGOING keeps the frames we transmit from being read back. The socket is
    opened with protocol 0 and then bound with ETH_P_ALL, so it never queues frames of other
    interfaces in the window between socket() and bind().

    offload=True sets PACKET_VNET_HDR before bind: every read() then starts with the 10-byte
    virtio-net header (the TAP's layout, so fast path and engine are unchanged) and may carry
    a GSO superframe of up to 64 KiB; every write() takes one back, and the kernel segments
    GSO frames and completes partial checksums on the way out. Seen on Linux 6.18 veths:
    superframes (from a TSO sender, or made by GRO when it is on) and every frame of a local
    TCP sender come with flags NEEDS_CSUM, gso_type TCPV4, csum_start 34 (counted from the
    Ethernet header, as the engine assumes), csum_offset 16 and the pseudo-header sum in the
    checksum field; other frames with flags 0 or DATA_VALID (complete checksum, checked by
    the kernel; ignored on send) and gso_type NONE. Headers go back out as read. rx_gso and
    rx_needs_csum count the frames read with gso_type != NONE and with NEEDS_CSUM. A frame
    longer than the batch row is cut by read() (no MSG_TRUNC through read); the engine then
    drops it as drop_ip_bad_len. Without offload the interface's offloads must be off (the
    lab does it): a GSO frame read without its header is cut at 2048 bytes.

    PACKET_QDISC_BYPASS is not set: on the lab's veth (qdisc noqueue) it changed neither nat
    iperf3 -P4 nor lbd's CPU beyond the noise, with offload or without."""
    backend = "afpacket"
    PACKET_VNET_HDR = 15             # linux/if_packet.h

    def __init__(self, ifname, bufsize=SOCKET_BUF, offload=False):
        super().__init__()
        self.name = ifname
        self.ifindex = socket.if_nametoindex(ifname)   # OSError if there is no such interface
        self._c.update(rx_gso=0, rx_needs_csum=0)
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            if offload:
                s.setsockopt(SOL_PACKET, self.PACKET_VNET_HDR, 1)
            for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF),
                                 (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
                try:
                    s.setsockopt(socket.SOL_SOCKET, force, bufsize)
                except PermissionError:   # not root: the sysctl maximum applies
                    s.setsockopt(socket.SOL_SOCKET, plain, bufsize)
            s.bind((ifname, ETH_P_ALL))
            s.setblocking(False)
        except Exception:
            s.close()
            raise
        self._sock = s
        self.fd = s.fileno()
        self.mac = s.getsockname()[4]
        self.hdr = VNET_HDR_LEN if offload else 0

    @classmethod
    def adopt(cls, fds, info):
        """The AF_PACKET socket of the lbd that ran before (lb/takeover.py), as received."""
        self = cls.__new__(cls)
        _LiveIO.__init__(self)
        self._c.update(rx_gso=0, rx_needs_csum=0)
        (fd,) = fds
        self._sock = socket.socket(fileno=fd)
        self._sock.setblocking(False)
        self.fd = fd
        self.name, self.ifindex, self.hdr = info["interface"], info["ifindex"], info["hdr"]
        self.offload_why = "%s (handed over)" % info.get("offload_why")
        self.mac = self._sock.getsockname()[4]
        return self

    def handover_fds(self):
        return [self.fd]

    def handover_info(self):
        return {"backend": self.backend, "interface": self.name, "ifindex": self.ifindex,
                "hdr": self.hdr, "offload_why": getattr(self, "offload_why", None)}

    def _count_rx(self, frames, bursts, nbytes, gso, csum):
        super()._count_rx(frames, bursts, nbytes, gso, csum)
        if self.hdr:
            self._c["rx_gso"] += gso            # counted by rx_burst / Engine.serve
            self._c["rx_needs_csum"] += csum

    def info(self):
        d = super().info()
        d["mac"] = ":".join("%02x" % b for b in self.mac)
        d["offload"] = bool(self.hdr)
        d["vnet_hdr"] = self.hdr
        return d

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.fd = None


class PcapIO:
    """Offline: frames come from a pcap file, transmitted and Python-made frames go to another.

    A burst holds consecutive frames whose timestamps lie within `window_ms` of the burst's
    first frame (at most batch.size): frames captured together are processed together, and
    a frame captured later (e.g. an ARP reply, then a SYN a second later) sees what Python did
    with the earlier burst, as it would live. `burst_ms` is the pcap time of the burst's last
    frame in integer milliseconds: the daemon uses it as `now`. Frames written out carry it.
    Frames longer than the batch's snap are counted (rx_oversize) and skipped. `eof` becomes
    True when the input is exhausted."""
    backend = "pcap"
    fd = None
    hdr = 0

    def new_batch(self, size):
        return fastpath.Batch(size, SNAP)

    def __init__(self, in_path, out_path, window_ms=1.0):
        self.in_path = in_path
        self.out_path = out_path
        self.window = window_ms / 1000.0
        self._in = open(in_path, "rb")
        try:
            try:
                self._reader = dpkt.pcap.Reader(self._in)
            except ValueError:
                self._in.seek(0)
                self._reader = dpkt.pcapng.Reader(self._in)
            if self._reader.datalink() != dpkt.pcap.DLT_EN10MB:
                raise ValueError("%s: link type %d is not Ethernet"
                                 % (in_path, self._reader.datalink()))
            self._it = iter(self._reader)
            self._out = open(out_path, "wb")
        except Exception:
            self._in.close()
            raise
        self._writer = dpkt.pcap.Writer(self._out, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
        self._ahead = None
        self._ts = 0.0
        self.burst_ms = 0
        self.eof = False
        self._c = _new_counters()
        self._c["rx_oversize"] = 0

    def _next(self):
        if self._ahead is not None:
            item, self._ahead = self._ahead, None
            return item
        try:
            return next(self._it)
        except StopIteration:
            self.eof = True
            return None

    def rx(self, batch):
        n = 0
        first = None
        while n < batch.size:
            item = self._next()
            if item is None:
                break
            ts, frame = item
            if first is None:
                first = ts
            elif ts - first > self.window:
                self._ahead = item
                break
            self._ts = ts
            if len(frame) > batch.snap:
                self._c["rx_oversize"] += 1
                continue
            batch.buf[n, :len(frame)] = np.frombuffer(frame, np.uint8)
            batch.lens[n] = len(frame)
            n += 1
        batch.n = n
        batch.verdict[:n] = defs.V_NONE
        batch.reason[:n] = 0
        self.burst_ms = int(round(self._ts * 1000))
        if n:
            self._c["rx_frames"] += n
            self._c["rx_bursts"] += 1
        return n

    def tx(self, batch):
        sent = 0
        for i in np.flatnonzero(batch.verdict[:batch.n] == defs.V_TX):
            self._writer.writepkt(batch.frame(i), ts=self._ts)
            sent += 1
        self._c["tx_frames"] += sent
        return sent, 0

    def send(self, frames):
        if isinstance(frames, fastpath.Batch):
            frames = _tx_rows(frames)
        for f in frames:
            self._writer.writepkt(bytes(f), ts=self._ts)
            self._c["send_frames"] += 1

    def info(self):
        return {"backend": "pcap", "interface": None, "ifindex": 0,
                "pcap_in": self.in_path, "pcap_out": self.out_path}

    def counters(self):
        return dict(self._c)

    def close(self):
        if self._out is not None:
            self._writer.close()      # closes the underlying file too
            self._out = None
            self._in.close()


def rps_mask_text(ncpus):
    """rps_cpus text for CPUs 0..ncpus-1: hex in comma-separated 32-bit groups."""
    mask = (1 << ncpus) - 1
    groups = []
    while True:
        groups.append("%08x" % (mask & 0xFFFFFFFF))
        mask >>= 32
        if not mask:
            return ",".join(reversed(groups))


def adopt_backend(fds, info):
    """The live backend a takeover handed over (lb/takeover.py): fds and handover_info()."""
    if info["backend"] == "tap":
        return TapIO.adopt(fds, info)
    if info["backend"] == "afpacket":
        return AfPacketIO.adopt(fds, info)
    raise ValueError("unknown io backend %r" % (info["backend"],))


def open_backend(backend, interface, offload=None, queues=1, rps=None):
    """The live backend named in the config: 'tap' creates `interface` (with `queues` queues,
    and RPS as TapIO says), 'afpacket' binds it.

    offload None (the default, `[io] offload` absent): vnet headers where the device takes
    them -- the fast path, GSO superframes whole through lbd -- and without them, with the
    reason, where it does not. True: required (OSError if refused); False: off. The backend's
    `offload_why` says which of these happened, for `lbctl status` and lbd's first log line."""
    if backend not in ("tap", "afpacket"):
        raise ValueError("unknown io backend %r" % (backend,))

    def make(off):
        if backend == "tap":
            return TapIO(interface, offload=off, queues=queues, rps=rps)
        return AfPacketIO(interface, offload=off)
    if offload is not None:
        io = make(offload)
        io.offload_why = "io.offload = %s" % ("true" if offload else "false")
        return io
    try:
        io = make(True)
    except OSError as e:
        if isinstance(e, (FileNotFoundError, PermissionError)) or e.errno in (
                errno.ENODEV, errno.EPERM, errno.EACCES, errno.EBUSY):
            raise                     # no such interface / not root: not about offload
        io = make(False)
        io.offload_why = "default, but the %s backend refused vnet headers: %s" % (backend, e)
        log.warning("offload off: %s", io.offload_why)
        return io
    io.offload_why = "default (the %s backend takes vnet headers)" % backend
    return io
