"""types: the records every concern shares. Twin of fastpath/types.pxi, whose structs comment
each field; the twin keeps a WaitQ entry as a tuple (idx, c_isn, created, at), Opts as the
dict tcp_options returns, an L7 rule as (kind, arg, pool Service) and a request view as
(method, path, host).

Invariants:
- A Flow is made once per table slot and reused in place: whoever takes a slot
  (flow_create, splice_new) sets every field the flow's mode reads. Where the compiled one
  has a flag and a buffer (has_mac/mac, has_gw/gw_mac, rp/rp_len), the twin has None or bytes.
- XMIT has a row per mode code 0..255; a row no mode filled has None routines, and a None
  routine means drop_mode. (The compiled row also has fwd_lines, a prefetch hint of the
  burst's: the twin prefetches nothing.)
"""
from collections import namedtuple


class Flow:
    # in the order of the compiled struct (types.pxi: line 0, line 1, line 2)
    __slots__ = ("cip", "vip", "cport", "vport", "proto", "mode", "state", "flags",
                 "rip", "rport", "vslot", "real", "used", "sync_st", "last", "hf",
                 "pkts_fwd", "bytes_fwd",
                 "pkts_rev", "bytes_rev", "rp",
                 "c_isn", "l_isn", "delta", "ts_off", "c_tsval", "b_tsval", "mss", "c_win",
                 "ws_c", "ws_b", "ws_lb", "sopt", "rp_len",
                 "hr", "created", "sync_at",
                 "idx")          # its own index in the table (the compiled one subtracts)

    def __init__(self, idx=0):
        self.idx = idx
        self.used = 0
        self.rp = None
        self.rp_len = 0
        self.vslot = 0
        self.sync_st, self.sync_at = 0, 0


class Real:
    __slots__ = ("ip", "port", "mac", "conns", "down", "mss", "nosack",
                 "flows", "pkts_fwd", "pkts_rev", "bytes_fwd", "bytes_rev")    # metrics

    def __init__(self):
        self.ip, self.port, self.mac, self.conns, self.down = 0, 0, None, 0, False
        self.mss, self.nosack = 0, False     # splice: learnt from its latest SYN-ACK
        self.flows = self.pkts_fwd = self.pkts_rev = self.bytes_fwd = self.bytes_rev = 0


class Service:
    __slots__ = ("vip", "port", "proto", "mode", "sched", "table", "weights", "cursor", "flags",
                 "l7_rules", "l7_limit",      # rules: [(kind, arg, pool Service)]
                 "pools",                     # splice content-rule pools [Service]
                 "vni", "mtu",                # tunnel
                 "mss_cap", "nosack",         # splice: what its cookie SYN-ACK announces
                 "slot")                      # its counters: Engine.vctr[slot]


class VipCtr:
    """A VIP's counters, Engine.vctr[slot] (types.pxi says what each field is)."""
    __slots__ = ("key", "conns", "flows", "pkts_fwd", "pkts_rev", "bytes_fwd", "bytes_rev")

    def __init__(self):
        self.key = None             # (vip, port, proto) of the service that last had it
        self.conns = 0
        self.flows = self.pkts_fwd = self.pkts_rev = self.bytes_fwd = self.bytes_rev = 0


# what process_frame parsed of a frame, for a new-flow routine (h: flow_hash, the forward key)
Pkt = namedtuple("Pkt", "src dst sport dport proto tflags h")

# an ICMP error's quote, as icmp_in parsed it (icmp.py; types.pxi says what each field is)
Icmp = namedtuple("Icmp", "end ip l4 src dst sport dport proto h")

class Frag:
    """A datagram whose first fragment was sent (frag.py; types.pxi says what each field is)."""
    __slots__ = ("src", "dst", "ident", "proto", "fwd", "used", "idx", "created", "at")

    def __init__(self):
        self.src = self.dst = self.ident = self.proto = self.idx = self.created = self.at = 0
        self.fwd = self.used = 0


# One mode's per-packet routines, bound by the flow's mode code (types.pxi says what each
# role does): new_flow(eng, f, n, sv, pkt, now), fwd(eng, f, n, e, sv, tflags, now),
# rev(eng, f, n, e, None, tflags, now) or None for no reverse path, icmp(eng, f, n, q, e,
# sv, real, fwd) or None, frag(eng, f, n, e, fwd, now) or None; l4_at_34: the routines read
# the L4 header at offset 34, so IP options are set aside around them (serve.py opts_aside);
# rev_rebuild: a backend's packet can rebuild a lost flow (flowtable.py flow_from_backend).
# Each returns the frame's exit counter.
Xmit = namedtuple("Xmit", "new_flow fwd rev icmp frag l4_at_34 rev_rebuild",
                  defaults=(False, False))
XMIT = [Xmit(None, None, None, None, None)] * 256    # filled by xmit_*.py and splice.py
