"""lb/workers.py: the EngineGroup fans LBState's control calls out to every worker's real
engine under that worker's lock, and sums what it reads back; a worker's burst path on a
real engine. (Threads, the TAP queues and steering together: tests/integration/
test_workers.py; the steering program: tests/unit/test_steer.py.)
"""
import ipaddress
import os
import queue
import socket
import subprocess
import sys
import threading

import dpkt
import pytest

import fastpath
from fastpath import defs
from lb.datapath import PuntTable, monotonic_ms
from lb.io import TapQueue
from lb.neigh import ARP_REQUEST, arp_frame
from lb.state import LBState
from lb.workers import EngineGroup, Worker, realtime_policy

from .test_state import (B1, B2, CLIENT_IP, GW_IP, GW_MAC, LB_IP, LB_MAC, MACS, NOW, VIP,
                         forwarded_to, ip, make_cfg, send, tcp_frame)


def worker(i):
    """A Worker that is not started, on a TapQueue with no fd: its lock, engine, batch."""
    return Worker(i, TapQueue(-1, 0, i), fastpath.Engine(512), lambda: NOW, 1024,
                  lambda frames: None)


@pytest.fixture
def group():
    ws = [worker(0), worker(1)]
    g = EngineGroup(ws)
    g.set_local(ip(LB_IP), LB_MAC)
    return g


@pytest.fixture
def st(group):
    s = LBState(group, make_cfg([
        {"address": VIP, "port": 80, "scheduler": "rr",
         "backend": [{"address": B1}, {"address": B2}]}]))
    s.clock = lambda: NOW + 2500
    for b, mac in MACS.items():
        s.learn_neighbor(ip(b), mac)
    s.learn_neighbor(ip(GW_IP), GW_MAC)
    return s


def test_every_engine_gets_the_services_reals_and_macs(st, group):
    for w in group.workers:
        dst, port, mac = forwarded_to(send(w.engine, tcp_frame(40000))[0])
        assert (dst, port) == (B1, 80) and mac == MACS[B1]     # rr: each engine starts at b1
    st.handle("vip.add", {"vip": "198.19.100.9:80"})
    st.handle("backend.add", {"vip": "198.19.100.9:80", "backend": B2})
    for w in group.workers:
        assert forwarded_to(send(w.engine, tcp_frame(40001, vip="198.19.100.9"))[0])[0] == B2


def test_reads_sum_and_concatenate_over_the_workers(st, group):
    e0, e1 = (w.engine for w in group.workers)
    send(e0, tcp_frame(1001), tcp_frame(1002))
    send(e1, tcp_frame(1003))
    assert group.flow_count() == 3 == e0.flow_count() + e1.flow_count()
    assert sorted(f[1] for f in group.flows()) == [1001, 1002, 1003]
    c = group.counters()
    assert c["nat_fwd"] == 3 and c["flow_created"] == 3 and c["rx_frames"] == 3
    assert set(c) == set(defs.COUNTERS)
    slot = {k: st.handle("vip.list", {})[0]["backends"][k]["real"] for k in (0, 1)}
    assert group.real_conns(slot[0]) + group.real_conns(slot[1]) == 3
    assert group.real_conns(slot[0]) == e0.real_conns(slot[0]) + e1.real_conns(slot[0])
    stats = st.handle("stats", {})
    assert stats["flow_count"] == 3 and stats["counters"]["nat_fwd"] == 3
    conns = st.handle("conns", {})
    assert conns["total"] == 3 and {c["client"] for c in conns["conns"]} == {
        "%s:%d" % (CLIENT_IP, p) for p in (1001, 1002, 1003)}


def test_expire_and_timeouts_reach_every_engine(st, group):
    group.set_timeouts({"tcp_syn": 1})
    for w in group.workers:
        send(w.engine, tcp_frame(2000 + w.index))
    assert group.flow_count() == 2
    assert group.expire(NOW + 5000, 1024) == 2 and group.flow_count() == 0


def test_one_splice_secret_for_all_engines(group):
    """A cookie SYN-ACK one engine makes is the one the other would make: same secret."""
    st = LBState(group, make_cfg([{"address": VIP, "port": 80, "mode": "splice",
                                   "backend": [{"address": B1}]}]))
    st.learn_neighbor(ip(GW_IP), GW_MAC)
    e0, e1 = (w.engine for w in group.workers)
    group.set_splice_secret(b"k" * 16)
    a, b = (send(e, tcp_frame(3000))[0] for e in (e0, e1))
    assert a[:2] == (defs.V_TX, "splice_synack") and a == b
    e1.set_splice_secret(b"x" * 16)          # the cookie does depend on the secret ...
    assert send(e1, tcp_frame(3000))[0] != a
    group.set_splice_secret(b"k" * 16)       # ... and the group sets it on every engine
    assert send(e1, tcp_frame(3000))[0] == a


def test_a_control_write_waits_for_the_burst_in_progress(st, group):
    """A worker holds its engine's lock for a burst: set_gateway must not touch its engine
    until the lock is released (and then it does)."""
    w1 = group.workers[1]
    done = threading.Event()
    w1.engine.acquire()
    try:
        t = threading.Thread(target=lambda: (group.set_gateway(None), done.set()))
        t.start()
        assert not done.wait(0.3)            # blocked on worker 1's lock ...
        # ... after worker 0 already has the change: its replies have no gateway now
        assert send(group.workers[0].engine, tcp_frame(4000))[0][:2] == \
            (defs.V_TX, "nat_fwd")
    finally:
        w1.engine.release()
    t.join(5)
    assert done.is_set()


def test_worker_thread_forwards_and_hands_arp_up(st, group):
    """A started Worker on a real engine and a real datagram fd (a Unix socketpair: one frame
    per read and write, like a TAP queue): the nat frame is forwarded out of the same fd by
    Engine.serve, the ARP request is handed up for the main thread, nothing goes to splice;
    the worker stops within a tick."""
    mine, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    handed = queue.Queue()
    w = Worker(0, TapQueue(mine.fileno(), 0, 0), group.workers[0].engine, monotonic_ms,
               1024, handed.put)
    try:
        mine.setblocking(False)
        peer.settimeout(5)
        w.punts = PuntTable(w.engine, st, LB_MAC)
        w.start()
        arp = arp_frame(ARP_REQUEST, MACS[B1], MACS[B1], ip(B1), b"\0" * 6, ip(LB_IP),
                        b"\xff" * 6)
        peer.send(tcp_frame(5000))
        out = dpkt.ethernet.Ethernet(peer.recv(4096))
        assert str(ipaddress.IPv4Address(out.data.dst)) == B1 and out.dst == MACS[B1]
        peer.send(arp)
        assert handed.get(timeout=5) == [arp]
    finally:
        w.stop()
        w.join()
        mine.close()
        peer.close()
    assert not w.thread.is_alive()
    assert w.stats["frames"] == 2 and w.stats["punts"] == 1 and w.stats["punts_up"] == 1
    assert w.stats["bursts"] == 2 and w.stats["wakeups"] == 2 and w.stats["ticks"] >= 1
    assert w.stats["errors"] == 0
    assert w.io.counters()["tx_frames"] == 1 and w.io.counters()["rx_frames"] == 2
    assert w.engine.counters()["nat_fwd"] == 1
    assert w.punts.counters()["splice"]["conns"] == 0


def test_worker_stops_when_its_fd_goes(st, group):
    """poll() on a closed fd: the worker counts an error and ends instead of spinning."""
    mine, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    fd = os.dup(mine.fileno())
    w = Worker(0, TapQueue(fd, 0, 0), group.workers[0].engine, monotonic_ms, 1024,
               lambda frames: None)
    w.punts = PuntTable(w.engine, st, LB_MAC)
    try:
        os.close(fd)                # gone before the thread polls it: POLLNVAL
        w.start()
        w.join()
        assert not w.thread.is_alive()
        assert w.stats["errors"] == 1
    finally:
        w.stop()
        mine.close()
        peer.close()


# --- [io] realtime: the workers' scheduling policy ---------------------------------------------

def thread_policy(tid):
    """The scheduling policy of thread tid of this process (/proc .../stat field 41)."""
    with open("/proc/%d/task/%d/stat" % (os.getpid(), tid)) as f:
        return int(f.read().rsplit(")", 1)[1].split()[38])


@pytest.mark.parametrize("realtime", [True, False])
def test_worker_thread_runs_under_the_policy_it_is_given(st, group, realtime):
    """A started Worker puts its own thread under SCHED_FIFO (or leaves the default), says so
    in its view, forwards as before, and the calling thread keeps its own policy."""
    if realtime and realtime_policy(None) is False:
        pytest.skip("this process may not use SCHED_FIFO")
    before = os.sched_getscheduler(0)
    mine, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    w = Worker(0, TapQueue(mine.fileno(), 0, 0), group.workers[0].engine, monotonic_ms,
               1024, lambda frames: None, realtime=realtime)
    try:
        mine.setblocking(False)
        peer.settimeout(5)
        w.punts = PuntTable(w.engine, st, LB_MAC)
        w.start()
        peer.send(tcp_frame(5001))
        out = dpkt.ethernet.Ethernet(peer.recv(4096))      # forwarded: the thread is running
        assert str(ipaddress.IPv4Address(out.data.dst)) == B1
        assert thread_policy(w.thread.native_id) == (os.SCHED_FIFO if realtime
                                                     else os.SCHED_OTHER)
        assert w.view()["sched"] == ("fifo" if realtime else "other")
    finally:
        w.stop()
        w.join()
        mine.close()
        peer.close()
    assert w.stats["errors"] == 0
    assert os.sched_getscheduler(0) == before


def test_realtime_false_is_the_default_policy_without_asking():
    assert realtime_policy(False) is False


REFUSED = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
from lb.workers import realtime_policy
print("auto", realtime_policy(None))
try:
    realtime_policy(True)
    print("required: started")
except OSError as e:
    print("required:", e)
"""


def test_a_refused_realtime_warns_when_absent_and_stops_lbd_when_required():
    """A process without CAP_SYS_NICE and with RLIMIT_RTPRIO 0 (setpriv drops the capability
    for real): absent -> the default policy and a warning; true -> OSError naming the key
    (lbd: "cannot start"). Where this process may use FIFO, absent -> FIFO."""
    if realtime_policy(None) is False:
        pytest.skip("SCHED_FIFO is refused here already")
    r = subprocess.run(["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice",
                        "prlimit", "--rtprio=0", sys.executable, "-c", REFUSED],
                       capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__)))))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "auto False" in lines
    assert any("SCHED_FIFO refused" in x and "io.realtime = false" in x for x in lines)
    assert any(x.startswith("required: io.realtime:") and "SCHED_FIFO" in x for x in lines)
    assert realtime_policy(None) is True
