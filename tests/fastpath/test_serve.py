"""Engine.serve, on both twins: the data-plane loop of a worker thread (lb/workers.py).

The fd is one end of a Unix datagram socketpair (one frame per read and per write, like a
TAP queue); the test holds the other end. serve polls, moves bursts of rx -> process -> tx,
and returns holding the engine lock when a burst punted frames or the deadline passed.
"""
import socket
import threading
import time

import pytest

from fastpath import Batch, ServiceSpec, defs
from tools import frames as F

from .fixtures import GW, LB_IP, c2b, c2v, make_engine

DEADLINE_MS = 150
ARP_REQ = F.arp_request(GW, "198.19.0.1", LB_IP)


def mono_ms():
    return time.monotonic_ns() // 1000000


@pytest.fixture
def pair():
    mine, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    mine.setblocking(False)
    peer.settimeout(5)
    yield mine, peer
    mine.close()
    peer.close()


def take_in_thread(e):
    """A thread that takes the engine lock and releases it: (thread, event set once it had
    the lock)."""
    got = threading.Event()

    def take():
        e.acquire()
        got.set()
        e.release()
    t = threading.Thread(target=take, daemon=True)
    t.start()
    return t, got


def lock_is_held(e):
    """(True when another thread cannot take the engine lock within 0.2 s, that thread, its
    event)."""
    t, got = take_in_thread(e)
    return not got.wait(0.2), t, got


def test_forwards_then_returns_at_the_deadline_holding_the_lock(impl, pair):
    mine, peer = pair
    e = make_engine(impl.Engine, ServiceSpec)
    b = Batch(8, 2048)
    peer.send(c2v(sport=40001))
    peer.send(c2v(sport=40002))
    t0 = mono_ms()
    r = e.serve(mine.fileno(), b, t0 + DEADLINE_MS)
    assert mono_ms() >= t0 + DEADLINE_MS and r["now"] >= t0 + DEADLINE_MS
    held, t, got = lock_is_held(e)
    assert held
    e.release()
    assert got.wait(5)
    t.join(5)
    assert [peer.recv(4096) for _ in range(2)] == [c2b(sport=40001), c2b(sport=40002)]
    assert r["frames"] == 2 and r["tx_frames"] == 2 and r["punts"] == 0 and r["error"] == 0
    assert r["wakeups"] >= 1 and r["bursts"] >= 1 and r["tx_errors"] == 0
    assert r["rx_bytes"] == r["tx_bytes"] == 2 * len(c2v())
    assert b.n == 0                              # nothing left for the caller
    assert e.counters()["nat_fwd"] == 2


def test_returns_with_the_punted_burst(impl, pair):
    """A burst with a punt ends serve at once: the batch holds that burst (the forwarded frame
    already went out), the punted frame's verdict is V_PUNT."""
    mine, peer = pair
    e = make_engine(impl.Engine, ServiceSpec)
    b = Batch(8, 2048)
    peer.send(c2v(sport=40003))
    peer.send(ARP_REQ)
    # both frames are queued before serve reads: one burst
    t0 = mono_ms()
    r = e.serve(mine.fileno(), b, t0 + 5000)
    try:
        assert mono_ms() - t0 < 2000
        assert r["punts"] == 1 and r["frames"] == 2 and r["bursts"] == 1 and r["error"] == 0
        assert b.n == 2
        assert [int(v) for v in b.verdict[:2]] == [defs.V_TX, defs.V_PUNT]
        assert b.frame(1) == ARP_REQ
        assert defs.COUNTERS[b.reason[1]] == "punt_arp"
        assert peer.recv(4096) == c2b(sport=40003)
    finally:
        e.release()


def test_a_waiting_thread_gets_the_lock_while_frames_keep_coming(impl, pair):
    """serve lets a thread waiting in acquire() in before its next burst, so control writes
    are not starved by traffic."""
    mine, peer = pair
    e = make_engine(impl.Engine, ServiceSpec)
    b = Batch(4, 2048)
    stop = threading.Event()
    sent = [0]

    def flood():
        peer.setblocking(False)
        end = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < end and sent[0] < 2_000_000:
            try:
                peer.send(c2v(sport=41000 + sent[0] % 1000))
                sent[0] += 1
            except BlockingIOError:
                try:
                    while True:
                        peer.recv(4096)       # drain what serve forwarded
                except BlockingIOError:
                    pass
    box = {}
    server = threading.Thread(target=lambda: box.update(r=e.serve(mine.fileno(), b,
                                                                  mono_ms() + 3000)))
    f = threading.Thread(target=flood)
    f.start()
    server.start()
    try:
        while e.counters()["nat_fwd"] < 50 and server.is_alive():
            time.sleep(0.01)
        _, got = take_in_thread(e)
        assert got.wait(2.5)
        assert server.is_alive()                 # got in before serve's deadline
    finally:
        stop.set()
        f.join(15)
        server.join(10)
        if "r" in box:
            e.release()
    assert box["r"]["error"] == 0 and box["r"]["frames"] >= 50


def test_a_closed_fd_is_an_error_not_a_spin(impl):
    a, c = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    fd = a.fileno()
    a.close()
    c.close()
    e = make_engine(impl.Engine, ServiceSpec)
    t0 = mono_ms()
    r = e.serve(fd, Batch(4, 2048), t0 + 5000)
    e.release()
    assert r["error"] == 9 and mono_ms() - t0 < 2000     # EBADF (POLLNVAL)
    assert r["frames"] == 0


@pytest.mark.parametrize("bad", [Batch(0, 2048), Batch(4, 64)])
def test_a_batch_serve_cannot_use_is_refused_without_taking_the_lock(impl, pair, bad):
    mine, _ = pair
    e = make_engine(impl.Engine, ServiceSpec)
    with pytest.raises(ValueError):
        e.serve(mine.fileno(), bad, mono_ms() + 100)
    held, t, got = lock_is_held(e)
    assert not held
    t.join(5)


def test_vnet_header_frames_are_counted(impl, pair):
    """With batch.hdr = 10, rx_gso and rx_needs_csum count the headers serve read."""
    mine, peer = pair
    e = make_engine(impl.Engine, ServiceSpec)
    b = Batch(8, 2048, hdr=10)
    hdr = bytes([defs.VNET_F_NEEDS_CSUM, 0]) + b"\0" * 8
    peer.send(hdr + c2v(sport=40010))
    peer.send(b"\0" * 10 + F.tcp(F.mac("02:00:00:00:00:99"), F.mac("02:00:00:00:00:98"),
                                 "198.18.0.10", "198.18.0.11", 1, 2))
    r = e.serve(mine.fileno(), b, mono_ms() + 100)
    e.release()
    assert r["frames"] == 2 and r["rx_needs_csum"] == 1 and r["rx_gso"] == 0
    assert r["tx_frames"] == 1
