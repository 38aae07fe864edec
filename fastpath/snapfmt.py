"""The engine snapshot's byte format (Engine.export_state / import_state), shared by both
twins: fastpath/snapshot.pxi and fastpath/twin/snapshot.py turn their tables into records
and back; this module assembles the records into one bytes object, takes one apart and
checks it. lbd --takeover (lb/takeover.py) carries one snapshot per engine to the new process.

    header  HEADER (below), native byte order ("=": no padding)
    flows   nused x (u32 entry index, flow_size bytes: the C struct Flow, rp pointer zeroed),
            in increasing entry order
    freel   nfree x u32: the free-entry stack, bottom first (the next flow takes the last)
    reals   max_reals x real_size bytes: the C struct Real of every slot
    frags   frag_slots x frag_size bytes: the C struct Frag of every slot
    waitq   n_wq x wq_size bytes: the C struct WaitQ, oldest first
    rp      n_rp x (u32 entry index, u32 length, that many bytes): splice requests to replay
    ctr     n_ctr x (u8 name length, name, u64 value): every counter, by name

Invariants:
- Records are the compiled engine's C structs as they are in memory (native byte order and
  alignment; a snapshot travels between two processes of one machine). The compiled side
  copies them with sizeof(), so fields appended to Real/Frag, or put in Flow's reserve,
  travel without a change here; the twin packs the same layout with struct (its record
  formats must follow such a field: tests/fastpath/test_snapshot.py compares the sizes and
  the offsets). Fields moved within a record make a new VERSION. A snapshot of another
  version, or whose record sizes, capacity, MAX_REALS or FRAG_SLOTS differ from the
  importing engine's, is refused (SnapshotError names what differs).
- parse() checks everything an import relies on before anything is changed: lengths,
  entry indexes in range and unique, the free stack exactly the unused entries, each flow's
  hashes equal to its keys' (the indexes are rebuilt from them), no two flows on one key,
  states and reals in range, Real.conns equal to the flows bound to each real, waitq and rp
  entries naming used flows. A malformed snapshot raises SnapshotError (a ValueError) and
  the engine stays as it was.
- Counters travel by name: a counter this build does not have is dropped, one the snapshot
  lacks starts at 0 (COUNTER_TABLE is append-only, so an upgrade only adds).
- Times are CLOCK_MONOTONIC milliseconds and mean the same in both processes.
"""
import struct
from collections import namedtuple

import numpy as np

MAGIC = b"TWSNAP\r\n"
VERSION = 2                 # 2: Flow reordered, 192 bytes (1: the 160-byte Flow)
HEADER = struct.Struct("=8sIIIIIIIIIIIIIIIQQH")
HEADER_FIELDS = ("magic version flow_size real_size frag_size wq_size cap nused nfree hand "
                 "sweep max_reals frag_slots n_wq n_rp n_ctr k0 k1 outer_id").split()
# the C struct Flow (types.pxi) up to created, one code per field in its order (native
# alignment pads after rp_len, as the C compiler does); sync_at and 40 bytes of reserve
# follow. Version 2 reordered the fields (the established path's in the first cache line):
# a version 1 snapshot is refused by its version before any record is read
FLOW_HEAD = struct.Struct("@IIHHBBBBIHHiBBHqQQQQQPIIIIIIHHBBBBHQq")
FLOW_HEAD_FIELDS = ("cip vip cport vport proto mode state flags rip rport vslot real used "
                    "sync_st pad last hf pkts_fwd bytes_fwd pkts_rev bytes_rev rp c_isn l_isn "
                    "delta ts_off c_tsval b_tsval mss c_win ws_c ws_b ws_lb sopt rp_len hr "
                    "created").split()
REAL_HEAD = struct.Struct("@IH6sBBBHq")     # ip port mac has_mac down nosack mss conns
WAITQ = struct.Struct("@IIqq")              # idx c_isn created at
U32 = struct.Struct("=I")
RP = struct.Struct("=II")
CTR = struct.Struct("=Q")
MAX_SERVICES = 1024                         # defs.MAX_SERVICES: Engine.vctr's slots
N_STATES = 16                               # Engine.tmo has one timeout per state code
PROTO_TCP = 6

Snapshot = namedtuple("Snapshot", HEADER_FIELDS[1:] + ["flows", "flow_idx", "freel", "reals",
                                                        "frags", "waitq", "rp", "counters"])


class SnapshotError(ValueError):
    """A snapshot this engine cannot import; the message says what is wrong."""


def pack(head, nused, flows, freel, reals, frags, waitq, rp, counters):
    """head: the HEADER fields but magic/version/n_* (dict); flows: the flows section
    (nused records of u32 index + Flow); freel bytes (u32s); reals, frags bytes; waitq
    [record bytes]; rp [(idx, bytes)]; counters {name: value}."""
    h = dict(head, magic=MAGIC, version=VERSION, nused=nused, nfree=len(freel) // 4,
             n_wq=len(waitq), n_rp=len(rp), n_ctr=len(counters))
    out = [HEADER.pack(*(h[k] for k in HEADER_FIELDS)), flows]
    out.append(freel)
    out.append(reals)
    out.append(frags)
    out += waitq
    for idx, data in rp:
        out.append(RP.pack(idx, len(data)))
        out.append(data)
    for name, value in counters.items():
        nb = name.encode()
        out.append(bytes([len(nb)]) + nb + CTR.pack(value))
    return b"".join(out)


def parse(data, expect, counter_names, rev_modes):
    """Take a snapshot apart and check it against the importing engine (expect: flow_size,
    real_size, frag_size, wq_size, cap, max_reals, frag_slots, wq_cap). rev_modes: the mode
    codes with a reverse path (a flow in the reverse index must be of one). Returns a
    Snapshot (flows: the flows section, flow_idx: its entry indexes (uint32 array), freel:
    uint32 array, reals/frags: memoryview,
    waitq: [(idx, c_isn, created, at)], rp: {idx: bytes}, counters: {known name: value}) or
    raises SnapshotError."""
    try:
        mv = memoryview(data).cast("B")
    except TypeError:
        raise SnapshotError("a snapshot is bytes, got %s" % type(data).__name__) from None
    if len(mv) < HEADER.size:
        raise SnapshotError("%d bytes: shorter than the header (%d)" % (len(mv), HEADER.size))
    h = dict(zip(HEADER_FIELDS, HEADER.unpack_from(mv, 0)))
    if h["magic"] != MAGIC:
        raise SnapshotError("not an engine snapshot (magic %r)" % (h["magic"],))
    if h["version"] != VERSION:
        raise SnapshotError("snapshot format version %d, this engine reads %d"
                            % (h["version"], VERSION))
    for k in ("flow_size", "real_size", "frag_size", "wq_size", "cap", "max_reals",
              "frag_slots"):
        if h[k] != expect[k]:
            raise SnapshotError("%s: the snapshot has %d, this engine %d" % (k, h[k], expect[k]))
    cap = h["cap"]
    if h["nused"] + h["nfree"] != cap:
        raise SnapshotError("nused %d + nfree %d is not the capacity %d"
                            % (h["nused"], h["nfree"], cap))
    if h["hand"] >= cap or h["sweep"] >= cap:
        raise SnapshotError("hand/sweep beyond the capacity")
    if h["n_wq"] > expect["wq_cap"]:
        raise SnapshotError("%d waitq entries, the ring holds %d" % (h["n_wq"], expect["wq_cap"]))
    fsz, rsz = h["flow_size"], h["real_size"]
    need = (HEADER.size + h["nused"] * (4 + fsz) + h["nfree"] * 4 + h["max_reals"] * rsz
            + h["frag_slots"] * h["frag_size"] + h["n_wq"] * h["wq_size"])
    if len(mv) < need:
        raise SnapshotError("truncated: %d bytes, the tables alone take %d" % (len(mv), need))
    off = HEADER.size
    n = h["nused"]
    fl = np.frombuffer(mv, flow_dtype(fsz), n, off)
    flows_raw = mv[off:off + n * (4 + fsz)]
    off += n * (4 + fsz)
    freel = np.frombuffer(mv, np.uint32, h["nfree"], off)
    off += 4 * h["nfree"]
    reals = mv[off:off + h["max_reals"] * rsz]
    off += h["max_reals"] * rsz
    frags = mv[off:off + h["frag_slots"] * h["frag_size"]]
    off += h["frag_slots"] * h["frag_size"]
    idx = fl["idx"]

    def first(bad, what):
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise SnapshotError("flow entry %d: %s" % (idx[k], what(k)))

    if n:
        first(np.concatenate([[False], np.diff(idx.astype(np.int64)) <= 0]) | (idx >= cap),
              lambda k: "out of order or beyond the capacity")
    # every entry exactly once: in use, or on the free stack
    seen = np.concatenate([freel, idx])
    if len(seen) and (seen.max() >= cap or np.bincount(seen, minlength=cap).max() != 1):
        raise SnapshotError("the free list is not exactly the unused entries")
    first(fl["used"] != 1, lambda k: "not marked used")
    first(fl["state"] >= N_STATES, lambda k: "state %d" % fl["state"][k])
    first(fl["vslot"] >= MAX_SERVICES, lambda k: "vslot %d" % fl["vslot"][k])
    first((fl["real"] < -1) | (fl["real"] >= h["max_reals"]), lambda k: "real %d" % fl["real"][k])
    first(fl["hf"] != hash_of(fl["cip"], fl["vip"], fl["cport"], fl["vport"], fl["proto"]),
          lambda k: "its forward hash is not its key's")
    rev = (fl["flags"] & 4) != 0                     # defs.F_REV
    first(rev & (~np.isin(fl["mode"], sorted(rev_modes)) | (fl["real"] < 0)),
          lambda k: "in the reverse index without a reverse path")
    first(rev & (fl["hr"] != hash_of(fl["rip"], fl["cip"], fl["rport"], fl["cport"],
                                     fl["proto"])),
          lambda k: "its reverse hash is not its key's")
    _unique_keys(fl, np.ones(n, bool), ("cip", "vip", "cport", "vport", "proto"), "forward")
    _unique_keys(fl, rev, ("rip", "cip", "rport", "cport", "proto"), "reverse")
    bound = fl["real"][fl["real"] >= 0]
    conns = np.bincount(bound, minlength=h["max_reals"]) if len(bound) else \
        np.zeros(h["max_reals"], np.int64)
    have = np.frombuffer(reals, real_dtype(rsz), h["max_reals"])["conns"]
    if (have != conns).any():
        i = int(np.flatnonzero(have != conns)[0])
        raise SnapshotError("real %d: conns %d, but %d flows are bound to it"
                            % (i, have[i], conns[i]))
    waitq = []
    for _ in range(h["n_wq"]):
        w = WAITQ.unpack_from(mv, off)
        off += h["wq_size"]
        if w[0] >= cap:
            raise SnapshotError("waitq entry for flow %d: beyond the capacity" % w[0])
        waitq.append(w)
    rp = {}
    for _ in range(h["n_rp"]):
        if off + RP.size > len(mv):
            raise SnapshotError("truncated in the splice requests")
        ridx, ln = RP.unpack_from(mv, off)
        off += RP.size
        k = int(np.searchsorted(fl["idx"], ridx))
        if k >= len(fl) or fl["idx"][k] != ridx or ridx in rp:
            raise SnapshotError("splice request of entry %d: no such flow, or twice" % ridx)
        if ln != fl["rp_len"][k] or off + ln > len(mv):
            raise SnapshotError("splice request of entry %d: %d bytes, its flow says %d"
                                % (ridx, ln, fl["rp_len"][k]))
        rp[ridx] = bytes(mv[off:off + ln])
        off += ln
    known = set(counter_names)
    counters = {}
    for _ in range(h["n_ctr"]):
        if off >= len(mv) or off + 1 + mv[off] + CTR.size > len(mv):
            raise SnapshotError("truncated in the counters")
        n = mv[off]
        try:
            name = bytes(mv[off + 1:off + 1 + n]).decode()
        except UnicodeDecodeError:
            raise SnapshotError("a counter name is not UTF-8") from None
        value = CTR.unpack_from(mv, off + 1 + n)[0]
        off += 1 + n + CTR.size
        if name in known:
            counters[name] = value
    if off != len(mv):
        raise SnapshotError("%d bytes after the end" % (len(mv) - off))
    return Snapshot(*(h[k] for k in HEADER_FIELDS[1:]), flows=flows_raw, flow_idx=idx,
                    freel=freel, reals=reals, frags=frags, waitq=waitq, rp=rp,
                    counters=counters)


VSLOT_OFF = struct.calcsize("@" + FLOW_HEAD.format.lstrip("@")[:FLOW_HEAD_FIELDS.index("vslot")])
M64 = (1 << 64) - 1


def _offsets(st):
    """The offset of each field of a native struct.Struct of single codes (and 6s)."""
    out, pos = [], 0
    for code in st.format.lstrip("@").replace("6s", "s"):
        size = 6 if code == "s" else struct.calcsize(code)
        if code != "s":
            pos += -pos % size
        out.append(pos)
        pos += size
    return out


_NP = {"I": np.uint32, "H": np.uint16, "B": np.uint8, "i": np.int32, "q": np.int64,
       "Q": np.uint64, "P": np.uint64, "s": "S6"}


def flow_dtype(fsz):
    """A numpy record of the flows section: u32 entry index, then the Flow's head fields."""
    codes = FLOW_HEAD.format.lstrip("@")
    offs = _offsets(FLOW_HEAD)
    return np.dtype({"names": ["idx"] + FLOW_HEAD_FIELDS,
                     "formats": [np.uint32] + [_NP[c] for c in codes],
                     "offsets": [0] + [4 + o for o in offs],
                     "itemsize": 4 + fsz})


def real_dtype(rsz):
    return np.dtype({"names": ["conns"], "formats": [np.int64],
                     "offsets": [_offsets(REAL_HEAD)[-1]], "itemsize": rsz})


def _mix(x):
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def hash_of(src, dst, sport, dport, proto):
    """flow_hash (inet.pxi) over arrays."""
    u = np.uint64
    with np.errstate(over="ignore"):
        return _mix(_mix((src.astype(u) << u(32)) | dst.astype(u))
                    ^ ((sport.astype(u) << u(24)) | (dport.astype(u) << u(8)) | proto.astype(u)))


def _unique_keys(fl, sel, fields, what):
    """No two selected flows on one key (the index would find only one of them). The hashes
    are their keys' (checked before), so only flows that share a hash can share a key."""
    hk = "hf" if what == "forward" else "hr"
    h = fl[hk][sel]
    if len(h) < 2:
        return
    hs = np.sort(h)
    twice = hs[1:][hs[1:] == hs[:-1]]
    if not len(twice):
        return
    sub = fl[sel][np.isin(h, twice)]
    keys = [tuple(int(r[f]) for f in fields) for r in sub]
    if len(set(keys)) != len(keys):
        raise SnapshotError("two flows on one %s key" % what)
