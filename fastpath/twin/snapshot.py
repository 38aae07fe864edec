"""snapshot: the engine's tables as bytes and back, for a planned restart. Twin of
fastpath/snapshot.pxi (whose header says what travels), in the same byte format
(fastpath/snapfmt.py): the compiled engine's C structs, which this twin packs with struct.

Invariants:
- FLOW, REAL, FRAG and WAITQ below are the C structs of types.pxi, field for field in their
  order, with native alignment; a field added there is added here, and FLOW's fields up to
  created are snapfmt.FLOW_HEAD's (tests/fastpath/test_snapshot.py checks the sizes against
  the compiled engine's, FLOW against FLOW_HEAD and the names against types.Flow's slots).
- A field a flow's mode never set (the compiled one keeps the slot's previous bytes there)
  is packed as 0.
"""
import collections
import struct

from .. import defs, snapfmt
from .flowtable import flow_insert, splice_cap
from .types import XMIT


# (name, struct code) in the C order; each struct ends on its largest member's alignment, so
# no tail padding is needed (test_snapshot checks the sizes)
FLOW_FIELDS = [
    # line 0
    ("cip", "I"), ("vip", "I"), ("cport", "H"), ("vport", "H"), ("proto", "B"), ("mode", "B"),
    ("state", "B"), ("flags", "B"), ("rip", "I"), ("rport", "H"), ("vslot", "H"),
    ("real", "i"), ("used", "B"), ("sync_st", "B"), ("pad", "H"), ("last", "q"), ("hf", "Q"),
    ("pkts_fwd", "Q"), ("bytes_fwd", "Q"),
    # line 1
    ("pkts_rev", "Q"), ("bytes_rev", "Q"), ("rp", "P"),
    ("c_isn", "I"), ("l_isn", "I"), ("delta", "I"), ("ts_off", "I"), ("c_tsval", "I"),
    ("b_tsval", "I"), ("mss", "H"), ("c_win", "H"), ("ws_c", "B"), ("ws_b", "B"),
    ("ws_lb", "B"), ("sopt", "B"), ("rp_len", "H"), (None, "6x"),   # None: the C padding
    # line 2
    ("hr", "Q"), ("created", "q"), ("sync_at", "q"), (None, "40x")]   # and Flow.resv
REAL_FIELDS = [("ip", "I"), ("port", "H"), ("mac", "6s"), ("has_mac", "B"), ("down", "B"),
               ("nosack", "B"), ("mss", "H"), ("conns", "q"),
               ("flows", "Q"), ("pkts_fwd", "Q"), ("pkts_rev", "Q"), ("bytes_fwd", "Q"),
               ("bytes_rev", "Q")]
FRAG_FIELDS = [("src", "I"), ("dst", "I"), ("ident", "H"), ("proto", "B"), ("fwd", "B"),
               ("used", "B"), ("idx", "I"), ("created", "q"), ("at", "q")]
WAITQ_FIELDS = [("idx", "I"), ("c_isn", "I"), ("created", "q"), ("at", "q")]
FLOW, REAL, FRAG, WAITQ = (struct.Struct("@" + "".join(c for _, c in f))
                           for f in (FLOW_FIELDS, REAL_FIELDS, FRAG_FIELDS, WAITQ_FIELDS))
FLOW_NAMES, REAL_NAMES, FRAG_NAMES = ([n for n, _ in f if n is not None]
                                      for f in (FLOW_FIELDS, REAL_FIELDS, FRAG_FIELDS))
REAL_METRICS = ("flows", "pkts_fwd", "pkts_rev", "bytes_fwd", "bytes_rev")


def services_recap(self):
    """The services' splice caps (mss_cap, nosack) from the reals as they are now, as
    set_services derives them: a takeover sets the services before the reals arrive."""
    for sv in self.services.values():
        sv.mss_cap, sv.nosack = defs.SPLICE_MSS, False
        for t in sv.table + [t for p in sv.pools for t in p.table]:
            if 0 <= t < defs.MAX_REALS:
                splice_cap(sv, self.reals[t])


def vip_conns_recount(self):
    """The VIP counter slots' conns from the imported flows (each flow names its slot); the
    slots' totals are not in a snapshot and start again at 0 (the reals' travel)."""
    for c in self.vctr:
        c.conns = 0
    for e in self.fl:
        if e.used:
            self.vctr[e.vslot].conns += 1


def api_export_state(self):
    flows = []
    rp = []
    rp_at, pad_at = FLOW_NAMES.index("rp"), FLOW_NAMES.index("pad")
    for e in self.fl:
        if e.used:
            vals = [getattr(e, n, 0) for n in FLOW_NAMES]
            vals[rp_at] = vals[pad_at] = 0
            flows.append(struct.pack("=I", e.idx) + FLOW.pack(*vals))
            if e.rp is not None:
                rp.append((e.idx, bytes(e.rp)))
    head = {"flow_size": FLOW.size, "real_size": REAL.size, "frag_size": FRAG.size,
            "wq_size": WAITQ.size, "cap": self.cap, "hand": self.hand, "sweep": self.sweep,
            "max_reals": defs.MAX_REALS, "frag_slots": defs.FRAG_SLOTS, "k0": self.k0,
            "k1": self.k1, "outer_id": self.outer_id}
    return snapfmt.pack(head, len(flows), b"".join(flows), struct.pack("=%dI" % len(self.freel), *self.freel),
                        b"".join(REAL.pack(r.ip, r.port, r.mac or b"\0" * 6,
                                           1 if r.mac is not None else 0, 1 if r.down else 0,
                                           1 if r.nosack else 0, r.mss, r.conns,
                                           *(getattr(r, n) for n in REAL_METRICS))
                                 for r in self.reals),
                        b"".join(FRAG.pack(*(getattr(g, n) for n in FRAG_NAMES))
                                 for g in self.frags),
                        [WAITQ.pack(*w) for w in self.waitq], rp, self.counters())


def api_import_state(self, data):
    expect = {"flow_size": FLOW.size, "real_size": REAL.size, "frag_size": FRAG.size,
              "wq_size": WAITQ.size, "cap": self.cap, "max_reals": defs.MAX_REALS,
              "frag_slots": defs.FRAG_SLOTS, "wq_cap": self.wq_size}
    rev_modes = {m for m in range(256) if XMIT[m].rev is not None}
    s = snapfmt.parse(data, expect, defs.COUNTERS, rev_modes)
    # from here on nothing fails: the engine takes the snapshot's tables
    for e in self.fl:
        e.used = 0
        e.rp = None
    self.ifwd = [0] * (self.mask + 1)
    self.irev = [0] * (self.mask + 1)
    step = 4 + FLOW.size
    for k, idx in enumerate(s.flow_idx.tolist()):
        e = self.fl[idx]
        for n, v in zip(FLOW_NAMES, FLOW.unpack_from(s.flows, k * step + 4)):
            if n != "pad":                 # the compiled struct's filler: no slot here
                setattr(e, n, v)
        e.rp = s.rp.get(idx)
        flow_insert(self, self.ifwd, e.hf, idx)
        if e.flags & defs.F_REV:
            flow_insert(self, self.irev, e.hr, idx)
    self.freel = s.freel.tolist()
    self.nused = len(s.flow_idx)
    self.hand, self.sweep = s.hand, s.sweep
    for i, r in enumerate(self.reals):
        v = dict(zip(REAL_NAMES, REAL.unpack_from(s.reals, i * REAL.size)))
        r.ip, r.port, r.conns, r.mss = v["ip"], v["port"], v["conns"], v["mss"]
        r.mac = bytes(v["mac"]) if v["has_mac"] else None
        r.down, r.nosack = bool(v["down"]), bool(v["nosack"])
        for n in REAL_METRICS:
            setattr(r, n, v[n])
    for i, g in enumerate(self.frags):
        for n, v in zip(FRAG_NAMES, FRAG.unpack_from(s.frags, i * FRAG.size)):
            setattr(g, n, v)
    self.waitq = collections.deque(tuple(w) for w in s.waitq)
    vip_conns_recount(self)
    self.ctr = [s.counters.get(name, 0) for name in defs.COUNTERS]
    self.k0, self.k1 = s.k0, s.k1
    self.outer_id = s.outer_id
    services_recap(self)
    return len(s.flow_idx)
