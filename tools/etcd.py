"""A real etcd for the lab and the tests: started inside a network namespace on a
198.18.0.0/15 address, its data under a state dir, stopped by its pid.

    e = Etcd(ns="t1234-lb", address="198.19.0.3", state_dir="/run/threeway/lab-t1234/etcd")
    e.start()            # waits (polling GET /version, with a deadline) until it answers
    e.url                # "http://198.19.0.3:2379" (what [cluster] etcd and lbctl --cluster take)
    e.kill()             # SIGKILL (a crash); e.start() again keeps the data dir: same revisions
    e.stop()             # SIGTERM, then SIGKILL after a grace time

    TestNamespace(name, address)   # a namespace with only lo (address on it), for unit tests
    in_netns(ns, fn, *a)           # fn(*a) in a thread that joined ns's network namespace:
                                   # the sockets it opens (an etcd3gw client's) live there

The server is Debian's etcd-server (3.4; tools/run.sh installs it with etcd-client). Its
HTTP/JSON gateway serves /v3/ (3.4 keeps /v3beta/ as an alias, dropped in 3.5; /v3alpha/ is
gone): lb/cluster.py's client asks for /v3/ explicitly, no discovery round trip.

The Python client is etcd3gw (requirements.txt): it talks to that gateway over plain HTTP/JSON
(requests), so it needs no grpc wheels to build, it is maintained by OpenStack (oslo, tooz use
it), and it has what lbd needs: range reads with revisions, txn (the compare-and-swap of
lbctl --cluster), leases (membership) and watch (lb/cluster.py drives the watch stream itself
so that a dead server is noticed).

Invariants:
- etcd runs only in the namespace given, bound only to `address` (client and peer port), a
  single-member cluster named by `name`; nothing listens in the root namespace.
- Every wait polls with a deadline; the process is signalled only by the pid this object
  started, and reaped.
"""
import ctypes
import os
import signal
import subprocess
import threading
import time
import urllib.request

CLONE_NEWNET = 0x40000000
ETCD = "etcd"
READY_TIMEOUT = 20.0

_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns, fn, *args, **kw):
    """fn(*args, **kw) run in a new thread that first joins network namespace `ns`
    (/run/netns/NS); returns its result or raises its exception. Only that thread moves."""
    out = {}

    def run():
        try:
            fd = os.open("/run/netns/%s" % ns, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, "setns(%s): %s" % (ns, os.strerror(e)))
            finally:
                os.close(fd)
            out["r"] = fn(*args, **kw)
        except BaseException as e:      # handed to the caller's thread
            out["e"] = e
    t = threading.Thread(target=run, name="netns-%s" % ns, daemon=True)
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out.get("r")


def _get(url, timeout):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


class Etcd:
    """One single-member etcd in namespace `ns` (None: the caller's namespace)."""

    def __init__(self, ns, address, state_dir, port=2379, peer_port=2380, name="etcd"):
        self.ns = ns
        self.address = address
        self.port = port
        self.peer_port = peer_port
        self.name = name
        self.state_dir = state_dir
        self.data_dir = os.path.join(state_dir, "data")
        self.log_path = os.path.join(state_dir, "etcd.log")
        self.proc = None

    @property
    def url(self):
        return "http://%s:%d" % (self.address, self.port)

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def argv(self):
        peer = "http://%s:%d" % (self.address, self.peer_port)
        return [ETCD, "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", "%s=%s" % (self.name, peer),
                "--initial-cluster-state", "new", "--log-level", "warn",
                "--logger", "zap"]

    def start(self, timeout=READY_TIMEOUT):
        """Start etcd and wait until GET /version answers; returns its version dict."""
        if self.running():
            raise RuntimeError("etcd %d is running already" % self.proc.pid)
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        argv = self.argv()
        if self.ns is not None:
            argv = ["ip", "netns", "exec", self.ns] + argv   # ip execs etcd: same pid
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True)
        return self.wait_ready(timeout)

    def version(self, timeout=1.0):
        """GET /version from inside the namespace: {"etcdserver": "3.4.23", ...}."""
        import json
        fn = lambda: _get(self.url + "/version", timeout)   # noqa: E731
        status, body = in_netns(self.ns, fn) if self.ns is not None else fn()
        return json.loads(body)

    def wait_ready(self, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("etcd exited with %s before answering; %s:\n%s"
                                   % (self.proc.returncode, self.log_path, self.tail()))
            try:
                return self.version()
            except OSError as e:
                last = e
            time.sleep(0.05)          # poll interval, bounded by the deadline
        raise RuntimeError("etcd did not answer on %s within %g s (%s); %s:\n%s"
                           % (self.url, timeout, last, self.log_path, self.tail()))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL, grace=10.0):
        """Signal etcd (by its pid) and wait until it has exited."""
        if not self.running():
            return
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5.0)

    def stop(self):
        self.kill(signal.SIGTERM)

    def tail(self, n=15):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


class TestNamespace:
    """A network namespace of its own (lo up, `address`/32 on lo) for tests that need a real
    etcd and nothing else; a context manager that deletes it (and kills what runs in it,
    by pid) on exit."""

    __test__ = False        # not a pytest class

    def __init__(self, name, address):
        self.name = name
        self.address = address

    def __enter__(self):
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        try:
            for argv in (["link", "set", "lo", "up"],
                         ["addr", "add", self.address + "/32", "dev", "lo"]):
                subprocess.run(["ip", "-n", self.name] + argv, check=True, capture_output=True)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        p = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        for pid in (int(x) for x in p.stdout.split()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
