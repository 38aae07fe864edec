"""fastpath/defs.py is the one table: counters (name, verdict, mode, when) and modes (name,
code). Its columns are promises the engines keep, checked here on both twins."""
import pathlib
import re
import struct

import pytest

from fastpath import Batch, ServiceSpec, defs
from tools import frames as F

from .fixtures import CLIENT, FIXTURES, GW, LB, make_engine

# The ABI: Batch.reason and counters() index this order (lbctl, metrics and tests read it).
ABI = ["rx_frames", "drop_runt", "drop_not_our_mac", "punt_arp", "drop_vlan", "drop_not_ipv4",
       "drop_ip_truncated", "drop_ip_version", "drop_ip_bad_hdr", "drop_ip_options",
       "drop_ip_bad_len", "drop_ip_csum", "drop_ip_fragment", "drop_ttl", "punt_local",
       "drop_l4_truncated", "drop_tcp_bad_doff", "drop_udp_bad_len", "drop_no_backend",
       "drop_no_flow_non_syn", "drop_no_neigh", "drop_unknown_dest", "drop_mode", "nat_fwd",
       "nat_rev", "dsr_fwd", "flow_created", "flow_reused", "flow_expired", "flow_evicted",
       "flow_recreated", "flow_expired_nodest", "splice_synack", "splice_bad_cookie",
       "drop_tcp_bad_options", "punt_splice", "splice_fwd", "splice_rev", "drop_splice_state",
       "splice_established", "flow_rev_replaced", "splice_accepted", "splice_replay",
       "splice_waitq_lost", "splice_decided", "tunnel_fwd", "tunnel_frag_needed",
       "drop_tunnel_too_big", "punt_tunnel_gso", "drop_tunnel_no_room", "tunnel_gso_fwd",
       "drop_icmp_not_error", "drop_icmp_bad", "drop_icmp_no_flow", "icmp_hashed", "nat_icmp_fwd",
       "nat_icmp_rev", "dsr_icmp_fwd", "splice_icmp_fwd", "splice_icmp_rev", "tunnel_icmp_fwd",
       "frag_first", "frag_evicted", "drop_frag_no_first", "nat_frag_fwd", "nat_frag_rev",
       "dsr_frag_fwd", "tunnel_frag_fwd", "punt_tunnel_frag", "splice_frag_needed",
       "splice_mss_lowered", "flow_recreated_rev", "punt_hop", "hop_fwd", "hop_handoff",
       "drop_hop_rev", "sync_exported", "sync_imported", "sync_updated", "sync_refused",
       "sync_malformed", "drop_rev_clash", "rev_clash_rescheduled"]
SPLICE_VIP = "198.19.100.6"


def test_counter_order_and_names_are_the_abi():
    assert defs.COUNTERS == ABI
    assert defs.C == {name: i for i, name in enumerate(ABI)}
    assert defs.N_COUNTERS == len(ABI)
    assert [c.name for c in defs.COUNTER_TABLE] == ABI


def test_counter_columns():
    for c in defs.COUNTER_TABLE:
        assert c.verdict in (defs.V_TX, defs.V_DROP, defs.V_PUNT, None), c.name
        assert c.mode is None or c.mode in defs.MODES, c.name
        assert c.when, c.name
    assert defs.VERDICTS == [defs.V_DROP if c.verdict is None else c.verdict
                             for c in defs.COUNTER_TABLE]


def test_modes_table():
    assert defs.MODES == {m.name: m.code for m in defs.MODE_TABLE}
    assert (defs.MODE_NAT, defs.MODE_DSR, defs.MODE_SPLICE, defs.MODE_TUNNEL,
            defs.MODE_HOP) == (1, 2, 3, 4, 5)
    codes = [m.code for m in defs.MODE_TABLE]
    assert len(set(codes)) == len(codes) and all(1 <= k <= 255 for k in codes)  # uint8, 0 = none


def test_counters_of():
    assert defs.counters_of("nat") == ["nat_fwd", "nat_rev", "nat_icmp_fwd", "nat_icmp_rev",
                                       "nat_frag_fwd", "nat_frag_rev"]
    assert defs.counters_of("dsr") == ["dsr_fwd", "dsr_icmp_fwd", "dsr_frag_fwd"]
    assert defs.counters_of("splice") == [c.name for c in defs.COUNTER_TABLE if c.mode == "splice"]
    for m in defs.MODES:
        assert any(defs.COUNTER_TABLE[defs.C[n]].verdict == defs.V_TX for n in defs.counters_of(m))
    assert defs.counters_of("tunnel")[0] == "tunnel_fwd"
    assert defs.counters_of("hop") == ["punt_hop", "hop_fwd", "hop_handoff", "drop_hop_rev"]
    with pytest.raises(ValueError):
        defs.counters_of("gre")


def test_verdict_of_is_the_verdict_column(impl):
    for i, c in enumerate(defs.COUNTER_TABLE):
        if c.verdict is not None:
            assert impl.verdict_of(i) == c.verdict, c.name


def _splice_exits(impl):
    """A cookie SYN-ACK, a bad cookie, a valid cookie ACK without data, then the request."""
    e = make_engine(impl.Engine, ServiceSpec)
    e.set_splice_secret(bytes(range(16)))
    e.set_services([ServiceSpec(F.ip2int(SPLICE_VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ,
                                [0], [1])])
    b = Batch(1)

    def run(frame):
        b.load([frame])
        e.process(b, 5_000_000)
        return int(b.reason[0]), int(b.verdict[0]), b.frame(0)

    out = [run(F.tcp(GW, LB, CLIENT, SPLICE_VIP, 40000, 80, flags=F.TH_SYN, seq=100))]
    cookie = struct.unpack("!I", out[0][2][38:42])[0]
    out.append(run(F.tcp(GW, LB, CLIENT, SPLICE_VIP, 40000, 80, seq=101, ack=cookie)))
    out.append(run(F.tcp(GW, LB, CLIENT, SPLICE_VIP, 40000, 80, seq=101, ack=cookie + 1)))
    out.append(run(F.tcp(GW, LB, CLIENT, SPLICE_VIP, 40000, 80, flags=F.TH_ACK | F.TH_PUSH,
                         seq=101, ack=cookie + 1, data=b"GET / HTTP/1.1\r\n\r\n")))
    assert [defs.COUNTERS[r] for r, _, _ in out] == [
        "splice_synack", "splice_bad_cookie", "splice_accepted", "punt_splice"]
    return [(r, v) for r, v, _ in out]


def test_frames_get_the_verdict_column_of_their_exit(impl):
    seen = []
    for fx in FIXTURES:
        e = make_engine(impl.Engine, ServiceSpec, **fx.world)
        b = Batch(len(fx.frames))
        b.load(fx.frames)
        e.process(b, 1000)
        seen += [(int(b.reason[i]), int(b.verdict[i])) for i in range(b.n)]
    seen += _splice_exits(impl)
    for reason, verdict in seen:
        assert verdict == defs.COUNTER_TABLE[reason].verdict, defs.COUNTERS[reason]
    assert {v for _, v in seen} == {defs.V_TX, defs.V_DROP, defs.V_PUNT}


def test_tcp_flags_have_one_home_in_fastpath():
    root = pathlib.Path(defs.__file__).parent
    assign = re.compile(r"^\s*(TH_[A-Z]+(\s*,\s*TH_[A-Z]+)*)\s*=", re.M)
    for p in sorted(root.rglob("*")):
        if p.suffix in (".py", ".pyx", ".pxi") and p.name not in ("defs.py", "_defs.pxi"):
            assert not assign.search(p.read_text()), "%s defines TCP flags (defs.py has them)" % p
    assert (defs.TH_FIN, defs.TH_SYN, defs.TH_RST, defs.TH_PSH, defs.TH_ACK) == (1, 2, 4, 8, 16)
