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
  copies them with sizeof(), so fields appended to Flow/Real/Frag travel without a change
  here; the twin packs the same layout with struct (its record formats must follow an
  appended field: tests/fastpath/test_snapshot.py compares the sizes). A snapshot whose
  record sizes, capacity, MAX_REALS or FRAG_SLOTS differ from the importing engine's is
  refused (SnapshotError names what differs).
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
VERSION = 1
HEADER = struct.Struct("=8sIIIIIIIIIIIIIIIQQH")
HEADER_FIELDS = ("magic version flow_size real_size frag_size wq_size cap nused nfree hand "
                 "sweep max_reals frag_slots n_wq n_rp n_ctr k0 k1 outer_id").split()
# the leading fields of the C structs (types.pxi), which the checks read; fields are only
# ever appended, so these offsets hold whatever follows them
FLOW_HEAD = struct.Struct("@IIHHBBBBIHBBiqQQq")
FLOW_HEAD_FIELDS = ("cip vip cport vport proto mode state flags rip rport used pad real last "
                    "hf hr created").split()
REAL_HEAD = struct.Struct("@IH6sBBBHq")     # ip port mac has_mac down nosack mss conns
WAITQ = struct.Struct("@IIqq")              # idx c_isn created at
U32 = struct.Struct("=I")
RP = struct.Struct("=II")
CTR = struct.Struct("=Q")
N_STATES = 16                               # Engine.tmo has one timeout per state code
PROTO_TCP = 6

Snapshot = namedtuple("Snapshot", HEADER_FIELDS[1:] + ["flows", "freel", "reals", "frags",
                                                        "waitq", "rp", "counters"])


class SnapshotError(ValueError):
    """A snapshot this engine cannot import; the message says what is wrong."""


def pack(head, flows, freel, reals, frags, waitq, rp, counters):
    """head: the HEADER fields but magic/version/n_* (dict); flows [(idx, record bytes)];
    freel bytes (u32s); reals, frags bytes; waitq [record bytes]; rp [(idx, bytes)];
    counters {name: value}."""
    h = dict(head, magic=MAGIC, version=VERSION, nused=len(flows), nfree=len(freel) // 4,
             n_wq=len(waitq), n_rp=len(rp), n_ctr=len(counters))
    out = [HEADER.pack(*(h[k] for k in HEADER_FIELDS))]
    for idx, rec in flows:
        out.append(U32.pack(idx))
        out.append(rec)
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


def parse(data, expect, counter_names, flow_hash, rev_modes):
    """Take a snapshot apart and check it against the importing engine (expect: flow_size,
    real_size, frag_size, wq_size, cap, max_reals, frag_slots, wq_cap). rev_modes: the mode
    codes with a reverse path (a flow in the reverse index must be of one). Returns a
    Snapshot (flows: [(idx, record memoryview)], freel: uint32 array, reals/frags: memoryview,
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
    flows = []
    heads = {}
    last = -1
    for _ in range(h["nused"]):
        idx = U32.unpack_from(mv, off)[0]
        rec = mv[off + 4:off + 4 + fsz]
        off += 4 + fsz
        if idx >= cap or idx <= last:
            raise SnapshotError("flow entry %d: out of order or beyond the capacity" % idx)
        last = idx
        heads[idx] = dict(zip(FLOW_HEAD_FIELDS, FLOW_HEAD.unpack_from(rec, 0)))
        flows.append((idx, rec))
    freel = np.frombuffer(mv, np.uint32, h["nfree"], off)
    off += 4 * h["nfree"]
    # every entry exactly once: in use, or on the free stack
    seen = np.concatenate([freel, np.fromiter(heads, np.uint32, len(heads))])
    if len(seen) and (seen.max() >= cap or np.bincount(seen, minlength=cap).max() != 1):
        raise SnapshotError("the free list is not exactly the unused entries")
    reals = mv[off:off + h["max_reals"] * rsz]
    off += h["max_reals"] * rsz
    frags = mv[off:off + h["frag_slots"] * h["frag_size"]]
    off += h["frag_slots"] * h["frag_size"]
    conns = [0] * h["max_reals"]
    fwd_keys, rev_keys = set(), set()
    for idx, f in heads.items():
        what = "flow entry %d" % idx
        if f["used"] != 1:
            raise SnapshotError("%s: not marked used" % what)
        if f["state"] >= N_STATES:
            raise SnapshotError("%s: state %d" % (what, f["state"]))
        if not -1 <= f["real"] < h["max_reals"]:
            raise SnapshotError("%s: real %d" % (what, f["real"]))
        if f["real"] >= 0:
            conns[f["real"]] += 1
        key = (f["cip"], f["vip"], f["cport"], f["vport"], f["proto"])
        if f["hf"] != flow_hash(*key):
            raise SnapshotError("%s: its forward hash is not its key's" % what)
        if key in fwd_keys:
            raise SnapshotError("%s: a second flow on one forward key" % what)
        fwd_keys.add(key)
        if f["flags"] & 4:                           # defs.F_REV
            rkey = (f["rip"], f["cip"], f["rport"], f["cport"], f["proto"])
            if f["mode"] not in rev_modes or f["real"] < 0:
                raise SnapshotError("%s: in the reverse index without a reverse path" % what)
            if f["hr"] != flow_hash(*rkey):
                raise SnapshotError("%s: its reverse hash is not its key's" % what)
            if rkey in rev_keys:
                raise SnapshotError("%s: a second flow on one reverse key" % what)
            rev_keys.add(rkey)
    for i in range(h["max_reals"]):
        r = REAL_HEAD.unpack_from(reals, i * rsz)
        if r[7] != conns[i]:
            raise SnapshotError("real %d: conns %d, but %d flows are bound to it"
                                % (i, r[7], conns[i]))
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
        idx, n = RP.unpack_from(mv, off)
        off += RP.size
        f = heads.get(idx)
        if f is None or idx in rp:
            raise SnapshotError("splice request of entry %d: no such flow, or twice" % idx)
        rp_len = struct.unpack_from("@H", flows_rec(flows, idx), RP_LEN_OFF)[0]
        if n != rp_len or off + n > len(mv):
            raise SnapshotError("splice request of entry %d: %d bytes, its flow says %d"
                                % (idx, n, rp_len))
        rp[idx] = bytes(mv[off:off + n])
        off += n
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
    return Snapshot(*(h[k] for k in HEADER_FIELDS[1:]), flows=flows, freel=freel,
                    reals=reals, frags=frags, waitq=waitq, rp=rp, counters=counters)


# rp_len's offset in Flow: after the fields up to sopt (types.pxi); FLOW_HEAD ends at
# created (64 bit), then 4 x u64 counters, 6 x u32, 2 x u16, 4 x u8
RP_LEN_OFF = struct.calcsize("@IIHHBBBBIHBBiqQQqQQQQIIIIIIHHBBBB")


def flows_rec(flows, idx):
    """The record of entry idx in parse()'s sorted flow list."""
    lo, hi = 0, len(flows)
    while lo < hi:
        mid = (lo + hi) // 2
        if flows[mid][0] < idx:
            lo = mid + 1
        else:
            hi = mid
    return flows[lo][1]
