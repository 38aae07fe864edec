"""The hop shim's loader: hop_shim.o (built by setup.py) onto a backend's interface.

    install(ns, iface, pin_dir)   on a backend: tc clsact on iface in namespace ns; both
                                  programs of the object loaded once (bpftool prog loadall),
                                  so they share one hop_flows map, pinned under pin_dir, and
                                  attached by `tc filter ... bpf object-pinned ... da`
    load(pin_dir)                 the programs and maps pinned, attached nowhere yet
    attach(ns, iface, pin_dir, facing)   attach what pin_dir holds to iface. facing "host":
                                  iface is the server's own (frames to the server come in by
                                  its ingress hook); "port": iface is a switch's or gateway's
                                  port facing the server (frames to the server leave by its
                                  egress hook), so the hooks swap. One load attached to the
                                  ports of many servers serves them all with one map: the
                                  egress-gateway variant, with no agent on the servers
    installed(ns, iface, facing)  which of hop_ingress / hop_egress are attached there
    stats(pin_dir)                the shim's counters (SHIM_STATS), summed over CPUs
    flows(pin_dir)                its map: [(key, value)] as shim_model.unpack_* reads them
    detach(ns, iface)             the clsact qdisc (and so the programs) off iface
    remove(ns, iface, pin_dir)    detach and unpin

Invariants:
- pin_dir lies in a bpffs of the caller's own (mount_bpffs: a fresh instance, not the host's
  /sys/fs/bpf, which every namespace of the host shares): one lab's pins cannot meet
  another's, and unmounting it (lab down) frees every pin at once.
- A step that fails raises ShimError with the command and its stderr; nothing is retried.
"""
import ctypes
import json
import os
import struct
import subprocess

from .shim_model import SHIM_STATS, unpack_flow, unpack_key

OBJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hop_shim.o")
PROGRAMS = ("hop_ingress", "hop_egress")
# the tc hook each program of PROGRAMS takes, by where the interface is: hop_ingress must see
# what goes to the server, hop_egress what the server sends
HOOKS = {"host": ("ingress", "egress"), "port": ("egress", "ingress")}


class ShimError(Exception):
    pass


def _run(argv, timeout=30, check=True):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ShimError("%s: %s" % (" ".join(argv), e)) from e
    if check and p.returncode != 0:
        raise ShimError("%s: exit %d: %s" % (" ".join(argv), p.returncode, p.stderr.strip()))
    return p


def _in_ns(ns, argv):
    return ["ip", "netns", "exec", ns] + argv if ns else argv


def is_bpffs(path):
    """True when path is the root of a mounted bpffs."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                if fields[4] == os.path.realpath(path) and fields[sep + 1] == "bpf":
                    return True
    except (OSError, ValueError, IndexError):
        pass
    return False


def mount_bpffs(path):
    """A bpffs instance of our own at path (made if missing); a no-op when it is mounted."""
    os.makedirs(path, exist_ok=True)
    if not is_bpffs(path):
        _run(["mount", "-t", "bpf", "bpf", path])


def umount_bpffs(path):
    if is_bpffs(path):
        _run(["umount", path], check=False)
    try:
        os.rmdir(path)
    except OSError:
        pass


def install(ns, iface, pin_dir):
    """The shim on iface in namespace ns, its programs and maps pinned in pin_dir (inside a
    bpffs: mount_bpffs on a parent). Replaces a shim already there."""
    remove(ns, iface, pin_dir)
    load(pin_dir)
    attach(ns, iface, pin_dir, "host")


def load(pin_dir):
    """hop_shim.o's programs and maps pinned under pin_dir (inside a bpffs), attached
    nowhere; ShimError if they are pinned there already."""
    if not os.path.exists(OBJECT):
        raise ShimError("%s is missing: build it (python3 setup.py build_ext --inplace)" % OBJECT)
    os.makedirs(pin_dir, exist_ok=True)
    _run(["bpftool", "prog", "loadall", OBJECT, os.path.join(pin_dir, "progs"),
          "pinmaps", os.path.join(pin_dir, "maps")])


def _hooks(facing):
    try:
        return HOOKS[facing]
    except KeyError:
        raise ShimError("facing %r: one of %s" % (facing, ", ".join(HOOKS))) from None


def attach(ns, iface, pin_dir, facing="host"):
    """The programs pinned in pin_dir (load) on iface in namespace ns, on the hooks `facing`
    gives (HOOKS); replaces what tc had there at our preference."""
    hooks = _hooks(facing)
    _run(_in_ns(ns, ["tc", "qdisc", "replace", "dev", iface, "clsact"]))
    for prog, hook in zip(PROGRAMS, hooks):
        _run(_in_ns(ns, ["tc", "filter", "replace", "dev", iface, hook, "pref", "49", "bpf",
                         "object-pinned", os.path.join(pin_dir, "progs", prog), "da"]))


def installed(ns, iface, facing="host"):
    """{"hop_ingress": bool, "hop_egress": bool}: whether tc has each on its hook on iface."""
    out = {}
    for prog, hook in zip(PROGRAMS, _hooks(facing)):
        p = _run(_in_ns(ns, ["tc", "filter", "show", "dev", iface, hook]), check=False)
        out[prog] = p.returncode == 0 and prog in p.stdout
    return out


def detach(ns, iface):
    """The clsact qdisc off iface, and with it whatever tc programs were attached there."""
    _run(_in_ns(ns, ["tc", "qdisc", "del", "dev", iface, "clsact"]), check=False)


def remove(ns, iface, pin_dir):
    """Detach the shim from iface (the clsact qdisc goes) and unpin its objects."""
    detach(ns, iface)
    for sub in ("progs", "maps"):
        d = os.path.join(pin_dir, sub)
        if os.path.isdir(d):
            for name in os.listdir(d):
                os.unlink(os.path.join(d, name))
            os.rmdir(d)
    if os.path.isdir(pin_dir):
        os.rmdir(pin_dir)


def _dump(path):
    return json.loads(_run(["bpftool", "-j", "map", "dump", "pinned", path]).stdout or "[]")


def _bytes(hexes):
    return bytes(int(x, 16) for x in hexes)


def stats(pin_dir):
    """The shim's counters, {name: count} in SHIM_STATS order, summed over CPUs."""
    total = dict.fromkeys(SHIM_STATS, 0)
    for row in _dump(os.path.join(pin_dir, "maps", "hop_stats")):
        slot = int.from_bytes(_bytes(row["key"]), "little")
        if slot < len(SHIM_STATS):
            total[SHIM_STATS[slot]] = sum(int.from_bytes(_bytes(v["value"]), "little")
                                          for v in row["values"])
    return total


def flows(pin_dir):
    """[(key, flow)] of the shim's map (shim_model's Key and Flow)."""
    return [(unpack_key(_bytes(r["key"])), unpack_flow(_bytes(r["value"])))
            for r in _dump(os.path.join(pin_dir, "maps", "hop_flows"))]


# --- bpf(2), for the tests (BPF_PROG_TEST_RUN) and for reading a pinned map in place ---------
_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)
BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY = 1, 2, 3, 4
BPF_PROG_TEST_RUN, BPF_OBJ_GET = 10, 7
_libc = None


def bpf(cmd, attr):
    """bpf(2) with attr (bytes, up to 128); returns (result, the attr buffer after the call)."""
    global _libc
    if _SYS_BPF is None:
        raise OSError("bpf(2): unknown syscall number on %s" % os.uname().machine)
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    buf = ctypes.create_string_buffer(bytes(attr), 128)
    r = _libc.syscall(ctypes.c_long(_SYS_BPF), ctypes.c_int(cmd), buf, ctypes.c_uint(128))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, "bpf(%d): %s" % (cmd, os.strerror(e)))
    return r, buf.raw


def obj_get(path):
    """An fd of the program or map pinned at path (the caller closes it)."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    fd, _ = bpf(BPF_OBJ_GET, struct.pack("<QII", ctypes.addressof(p), 0, 0))
    return fd


def test_run(prog_fd, frame, repeat=1, timed=False):
    """BPF_PROG_TEST_RUN of a tc program on one Ethernet frame: (return value, frame out), and
    with timed the kernel's mean ns per run over `repeat` runs (the frame is the same input
    each time; the map state the runs leave is the last one's)."""
    din = ctypes.create_string_buffer(bytes(frame), len(frame))
    dout = ctypes.create_string_buffer(len(frame) + 256)
    attr = struct.pack("<IIIIQQII", prog_fd, 0, len(frame), len(dout), ctypes.addressof(din),
                       ctypes.addressof(dout), repeat, 0)
    _, raw = bpf(BPF_PROG_TEST_RUN, attr)
    retval, _, size_out = struct.unpack_from("<III", raw, 4)
    duration = struct.unpack_from("<I", raw, 36)[0]
    out = (retval, dout.raw[:size_out])
    return out + (duration,) if timed else out


def map_lookup(map_fd, key, value_size):
    k = ctypes.create_string_buffer(bytes(key), len(key))
    v = ctypes.create_string_buffer(value_size)
    try:
        bpf(BPF_MAP_LOOKUP_ELEM, struct.pack("<IIQQQ", map_fd, 0, ctypes.addressof(k),
                                             ctypes.addressof(v), 0))
    except OSError as e:
        if e.errno == 2:
            return None
        raise
    return v.raw


def map_update(map_fd, key, value):
    k = ctypes.create_string_buffer(bytes(key), len(key))
    v = ctypes.create_string_buffer(bytes(value), len(value))
    bpf(BPF_MAP_UPDATE_ELEM, struct.pack("<IIQQQ", map_fd, 0, ctypes.addressof(k),
                                         ctypes.addressof(v), 0))


def map_keys(map_fd, key_size):
    out = []
    prev = None
    while True:
        nk = ctypes.create_string_buffer(key_size)
        pk = ctypes.create_string_buffer(prev, key_size) if prev is not None else None
        try:
            bpf(BPF_MAP_GET_NEXT_KEY, struct.pack("<IIQQ", map_fd, 0,
                                                  ctypes.addressof(pk) if pk else 0,
                                                  ctypes.addressof(nk)))
        except OSError as e:
            if e.errno == 2:
                return out
            raise
        prev = nk.raw
        out.append(prev)


def map_delete(map_fd, key):
    k = ctypes.create_string_buffer(bytes(key), len(key))
    try:
        bpf(BPF_MAP_DELETE_ELEM, struct.pack("<IIQ", map_fd, 0, ctypes.addressof(k)))
    except OSError as e:
        if e.errno != 2:
            raise
