"""serve: the data path around the modes. process() and serve() (poll, rx burst, process,
tx burst, under the engine lock), the burst loop, process_frame (parse -> service lookup ->
flow lookup -> the mode's routine from XMIT), and xmit_out, the part every transmit routine
shares. Twin of fastpath/serve.pxi.

Invariants:
- A frame leaves with exactly one exit counter bumped (its Batch.reason) besides rx_frames;
  flow-table events are counted on top. Its verdict is the counter's verdict column.
- Parsing uses explicit bounds: nothing is read beyond the frame's length, and what a
  transmit routine reads (the Ethernet, IPv4 and L4 headers) has been checked here.
- process_frame knows no mode: a miss calls XMIT[service's mode].new_flow, a hit
  XMIT[flow's mode].fwd or .rev, and a None routine is drop_mode.
"""
import errno
import select
import time

import numpy as np

from .. import defs
from ..defs import C, TH_ACK, TH_SYN, XMIT_CONT
from ..io_py import rx_burst, tx_burst
from .flowtable import flow_account, flow_delete, flow_find, flow_from_backend, service_find, track
from .frag import frag_later, frag_note
from .icmp import icmp_in
from .inet import flow_hash, ip_header_ok, rd16, rd32, wr16
from .types import XMIT, Pkt
from .watch import watch_frame

BCAST = b"\xff" * 6


def verdict_of(reason):
    """The verdict a frame gets whose exit counter is reason (defs.COUNTER_TABLE)."""
    if not 0 <= reason < defs.N_COUNTERS:
        raise IndexError("no counter %d" % reason)
    return defs.VERDICTS[reason]


def mono_ms():
    """CLOCK_MONOTONIC in integer ms (time.monotonic() on Linux)."""
    return time.monotonic_ns() // 1000000


def lock_take(self):
    """The engine lock for serve's next burst, after any thread waiting in acquire()."""
    while self.want > 0:
        time.sleep(0)
    self.lock.acquire()


def api_process(self, batch, now_ms):
    if batch.n and batch.snap < 128 + batch.hdr:
        raise ValueError("batch snap must be >= 128 (splice builds SYN-ACKs in place)")
    burst(self, batch, now_ms)
    return int(np.count_nonzero(batch.verdict[:batch.n] == defs.V_PUNT))


def api_serve(self, fd, batch, deadline_ms):
    if batch.size < 1:
        raise ValueError("serve needs a batch of at least one frame")
    if batch.snap < 128 + batch.hdr:
        raise ValueError("batch snap must be >= 128 (splice builds SYN-ACKs in place)")
    st = dict.fromkeys(("wakeups", "bursts", "frames", "rx_bytes", "rx_gso",
                        "rx_needs_csum", "tx_frames", "tx_errors", "tx_bytes"), 0)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    punts = err = n = 0
    now = mono_ms()
    while not punts and not err:
        now = mono_ms()
        if now >= deadline_ms:
            break
        try:
            ready = poller.poll(min(deadline_ms - now, 1000000))
        except InterruptedError:
            continue
        except OSError as e:
            err = e.errno
            continue
        if not ready:
            continue
        ev = ready[0][1]
        if ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) and not ev & select.POLLIN:
            err = errno.EBADF if ev & select.POLLNVAL else errno.EIO
            continue
        st["wakeups"] += 1
        while True:
            lock_take(self)
            n = rx_burst(fd, batch)
            if n == 0:
                self.lock.release()
                break
            st["rx_bytes"] += batch.rx_bytes
            st["rx_gso"] += batch.rx_gso
            st["rx_needs_csum"] += batch.rx_needs_csum
            now = mono_ms()
            burst(self, batch, now)
            sent, errors, nbytes = tx_burst(fd, batch)
            st["tx_frames"] += sent
            st["tx_errors"] += errors
            st["tx_bytes"] += nbytes
            st["bursts"] += 1
            st["frames"] += n
            punts = int(np.count_nonzero(batch.verdict[:n] == defs.V_PUNT))
            if punts:
                break                 # returns holding the lock, the batch as it is
            self.lock.release()
            if n < batch.size or mono_ms() >= deadline_ms:
                break
    if not punts:
        lock_take(self)
    batch.n = n if punts else 0
    st.update(punts=punts, now=now, error=err)
    return st


def burst(self, batch, now):
    """Every frame of the batch through burst_frame, or watch_frame while a watch is set.
    (No prefetching: the compiled burst's prefetches decide nothing.)"""
    self.vnet_tnl = batch.hdr >= defs.VNET_TNL_HDR_LEN   # the long vnet header (with self.vnet set)
    for i in range(batch.n):
        # the watch costs this one branch per frame while none is set (watch.py)
        if self.watch_on:
            watch_frame(self, batch, i, now, burst_frame)
        else:
            burst_frame(self, batch, i, now)


def burst_frame(self, batch, i, now):
    """Row i of the batch through process_frame, as a bytearray copy written back when it is
    sent; its exit counter, verdict and reason."""
    hdr = batch.hdr
    row = min(int(batch.lens[i]), batch.snap)
    n = max(0, row - hdr)
    f = bytearray(batch.buf[i, hdr:hdr + n].tobytes())
    self.newlen = 0
    self.rowcap = batch.snap - hdr
    self.partial = bool(hdr) and row >= hdr and bool(batch.buf[i, 0] & defs.VNET_F_NEEDS_CSUM)
    self.vnet = bytearray(batch.buf[i, :hdr].tobytes()) if hdr >= 10 and row >= hdr else None
    self.keep_vnet = False
    reason = process_frame(self, f, n, now)
    self.ctr[C["rx_frames"]] += 1
    self.ctr[reason] += 1
    v = verdict_of(reason)
    batch.verdict[i] = v
    batch.reason[i] = reason
    if v == defs.V_TX or v == defs.V_PUNT and self.newlen:
        if self.newlen:      # a frame made in place (splice, tunnel; punt_tunnel_frag's)
            n = self.newlen
            batch.lens[i] = hdr + n
            if self.keep_vnet:
                batch.buf[i, :hdr] = np.frombuffer(bytes(self.vnet), np.uint8)
            else:
                batch.buf[i, :hdr] = 0     # complete checksums, no GSO
        elif self.keep_vnet:     # rewritten in place, its header changed (splice's GSO size)
            batch.buf[i, :hdr] = np.frombuffer(bytes(self.vnet), np.uint8)
        batch.buf[i, hdr:hdr + n] = np.frombuffer(bytes(f[:n]), np.uint8)


def process_frame(self, f, n, now):
    """One frame f[:n]: its exit counter, the frame rewritten in place when it is sent."""
    if n < 14:
        return C["drop_runt"]
    dmac = bytes(f[0:6])
    if dmac != self.local_mac and dmac != BCAST:
        return C["drop_not_our_mac"]
    et = rd16(f, 12)
    if et == 0x0806:
        return C["punt_arp"]
    if et == 0x8100 or et == 0x88A8:
        return C["drop_vlan"]
    if et != 0x0800:
        return C["drop_not_ipv4"]
    if n < 34:
        return C["drop_ip_truncated"]
    if f[14] >> 4 != 4:
        return C["drop_ip_version"]
    ihl = (f[14] & 15) * 4
    if ihl < 20:
        return C["drop_ip_bad_hdr"]
    tot = rd16(f, 16)
    if tot < ihl or 14 + tot > n:
        return C["drop_ip_bad_len"]
    if not ip_header_ok(f, 14, ihl):
        return C["drop_ip_csum"]
    fo = rd16(f, 20) & 0x3FFF           # MF and the fragment offset (frag.py)
    ident = rd16(f, 18)
    proto = f[23]
    src = rd32(f, 26)
    dst = rd32(f, 30)
    if dst == self.local_ip:
        return C["drop_ip_fragment"] if fo else C["punt_local"]
    if fo & 0x1FFF:
        return frag_later(self, f, n, now)
    first = fo != 0
    l4 = 14 + ihl                       # IP options (ihl > 20) are forwarded, see opts_aside
    l4len = tot - ihl
    tflags = 0
    if proto == defs.PROTO_TCP:
        if l4len < 20:
            return C["drop_l4_truncated"]
        doff = (f[l4 + 12] >> 4) * 4
        if doff < 20 or doff > l4len:
            return C["drop_tcp_bad_doff"]
        tflags = f[l4 + 13]
    elif proto == defs.PROTO_UDP:
        if l4len < 8:
            return C["drop_l4_truncated"]
        ulen = rd16(f, l4 + 4)
        if ulen < 8 or (ulen > l4len and not first):   # (a first fragment: the rest follows)
            return C["drop_udp_bad_len"]
    elif proto == defs.PROTO_ICMP and not first:
        if ihl > 20:
            return C["drop_ip_options"]  # (an ICMP error's own header with options: not read)
        return icmp_in(self, f, n, tot, now)
    else:
        return C["drop_unknown_dest"]
    sport = rd16(f, l4)
    dport = rd16(f, l4 + 2)
    h = flow_hash(src, dst, sport, dport, proto)
    sv = service_find(self, dst, dport, proto)
    if sv is not None:
        idx = flow_find(self, self.ifwd, h, src, dst, sport, dport, proto, False)
        if idx >= 0:
            e = self.fl[idx]
            if now - e.last > self.tmo[e.state]:
                flow_delete(self, idx)
                self.ctr[C["flow_expired"]] += 1
                idx = -1
            elif ((tflags & (TH_SYN | TH_ACK)) == TH_SYN
                    and e.state in (defs.S_FIN_WAIT, defs.S_TIME_WAIT, defs.S_CLOSE)):
                # a new connection on a closing flow's ports (tcp_tw_reuse): schedule afresh
                flow_delete(self, idx)
                self.ctr[C["flow_reused"]] += 1
                idx = -1
            elif e.real >= 0 and self.reals[e.real].down and sv.flags & defs.SVC_EXPIRE_NODEST:
                # (an unbound splice flow has no real yet: real = -1)
                flow_delete(self, idx)
                self.ctr[C["flow_expired_nodest"]] += 1
                idx = -1
        if idx < 0:
            if XMIT[sv.mode].new_flow is None:
                return C["drop_mode"]
            if first and XMIT[sv.mode].frag is None:
                return C["drop_ip_fragment"]
            p = Pkt(src, dst, sport, dport, proto, tflags, h)
            if ihl > 20 and XMIT[sv.mode].l4_at_34:
                opts_aside(self, f, ihl)
                r = XMIT[sv.mode].new_flow(self, f, n + 20 - ihl, sv, p, now)
                opts_back(self, f, ihl)
            else:
                r = XMIT[sv.mode].new_flow(self, f, n, sv, p, now)
            if first and defs.VERDICTS[r] != defs.V_DROP:
                idx = flow_find(self, self.ifwd, h, src, dst, sport, dport, proto, False)
                if idx >= 0:
                    frag_note(self, src, dst, ident, proto, idx, True, now)
            return r
        e = self.fl[idx]
        if XMIT[e.mode].fwd is None:
            return C["drop_mode"]
        if first and XMIT[e.mode].frag is None:
            return C["drop_ip_fragment"]
        r = xmit_call(self, XMIT[e.mode].fwd, f, n, ihl, e, sv, tflags, now)
        if first and defs.VERDICTS[r] != defs.V_DROP:
            frag_note(self, src, dst, ident, proto, idx, True, now)
        return r
    idx = flow_find(self, self.irev, h, src, dst, sport, dport, proto, True)
    if idx < 0:
        idx = flow_from_backend(self, src, dst, sport, dport, proto, tflags, now)
        if idx < 0:
            return C["drop_unknown_dest"]
    e = self.fl[idx]
    if now - e.last > self.tmo[e.state]:
        flow_delete(self, idx)
        self.ctr[C["flow_expired"]] += 1
        return C["drop_unknown_dest"]
    if XMIT[e.mode].rev is None:
        return C["drop_mode"]
    if first and XMIT[e.mode].frag is None:
        return C["drop_ip_fragment"]
    r = xmit_call(self, XMIT[e.mode].rev, f, n, ihl, e, None, tflags, now)
    if first and defs.VERDICTS[r] != defs.V_DROP:
        frag_note(self, src, dst, ident, proto, idx, False, now)
    return r


def opts_aside(self, f, ihl):
    """IP options set aside for a mode whose routines read the L4 header at offset 34 (see
    serve.pxi): the options kept in self.opts and cut out of f, IHL 5, the total length
    without them; the header checksum left as it is."""
    k = ihl - 20
    self.opts = bytes(f[34:34 + k])
    del f[34:34 + k]
    f[14] = 0x45
    wr16(f, 16, rd16(f, 16) - k)
    self.rowcap -= k


def opts_back(self, f, ihl):
    """After the routine: a frame it made in place (newlen) stays as it is (ours, without the
    client's options); else the options put back, IHL and the total length restored."""
    k = ihl - 20
    self.rowcap += k
    if self.newlen:
        return
    f[34:34] = self.opts
    f[14] = 0x40 | (ihl >> 2)
    wr16(f, 16, rd16(f, 16) + k)


def xmit_call(self, fn, f, n, ihl, e, sv, tflags, now):
    """A flow's forward or reverse routine on the frame, its IP options set aside around it
    where the mode reads the L4 header at 34 (Xmit.l4_at_34)."""
    if ihl > 20 and XMIT[e.mode].l4_at_34:
        opts_aside(self, f, ihl)
        r = fn(self, f, n + 20 - ihl, e, sv, tflags, now)
        opts_back(self, f, ihl)
        return r
    return fn(self, f, n, e, sv, tflags, now)


def xmit_out(self, f, n, e, dmac, routed, fwd, tflags, now):
    """The part every transmit routine shares (IPVS's ip_vs_send_or_cont). A frame whose next
    hop's MAC (dmac) is unknown (None), or that a routed path (one that decrements the TTL)
    would take to TTL 0, is dropped untouched: its counter is returned. Else the TCP state
    moves, the frame is addressed from us to dmac, the flow's time and counters in this
    direction move, and XMIT_CONT is returned: the routine then rewrites L3/L4."""
    if dmac is None:
        return C["drop_no_neigh"]
    if routed and f[22] <= 1:
        return C["drop_ttl"]
    if e.proto == defs.PROTO_TCP:
        track(e, tflags, fwd)
    f[0:6] = dmac
    f[6:12] = self.local_mac
    flow_account(self, e, n, fwd, now)
    return XMIT_CONT
