"""hop in the fast path, on both twins (ids cy / py): splice's client side on a hop VIP
(cookie, the request decided by the VIP's rules in the fast path, our SYN to the VIP at the
backend's MAC with the mark), the backend's SYN-ACK (sent to us by its shim, from the VIP)
answered with ACK + request carrying the hand-off option, then the client's frames
forwarded to the backend's MAC unchanged; what the backend sends after the hand-off must not
come through us (drop_hop_rev). Expected frames are built independently with dpkt (full
checksums). The other end of the hand-off, the shim, is tests/unit/test_hop_shim.py."""
import struct

import fastpath
from fastpath import ServiceSpec, defs
from tools import frames as F

from .fixtures import B1, CLIENT, GW, LB, make_engine
from .test_splice import M32, NOW, SECRET, opt_ts, parse, run, syn_opts, tcp_opts

VIP = "198.19.100.8"
EXID = defs.HOP_EXID.to_bytes(2, "big")
MARK = bytes([defs.HOP_OPT_KIND, defs.HOP_MARK_LEN]) + EXID


def engine(impl, rules=((defs.L7_PATH, b"/blob", 0),)):
    e = make_engine(impl.Engine, ServiceSpec)
    e.set_splice_secret(SECRET)
    pools = ((defs.SCHED_SEQ, (0,), (1,)),)
    e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_HOP, defs.SCHED_SEQ, [0], [1],
                                l7=fastpath.L7Spec(4096, tuple(rules), pools))])
    return e


def cookie_ack(e, req, sport=40000, c_isn=0x7FFFFFF0):
    syn = F.tcp(GW, LB, CLIENT, VIP, sport, 80, flags=F.TH_SYN, seq=c_isn, opts=syn_opts(ts=1000))
    v, reason, out = run(e, syn)
    assert (v, reason) == (defs.V_TX, "splice_synack")
    cookie = parse(out).seq
    our_ts = struct.unpack("!II", tcp_opts(parse(out))[8])[0]
    ack = F.tcp(GW, LB, CLIENT, VIP, sport, 80, flags=F.TH_ACK | F.TH_PUSH, seq=c_isn + 1,
                ack=(cookie + 1) & M32, win=502, data=req, opts=opt_ts(1001, our_ts))
    return c_isn, cookie, our_ts, run(e, ack)


def test_a_hopped_connection_seen_from_the_lb(impl):
    e = engine(impl)
    req = b"GET /blob HTTP/1.1\r\nHost: a\r\n\r\n"
    c_isn, cookie, our_ts, (v, reason, syn) = cookie_ack(e, req)
    # decided here by the rule; our SYN goes to the VIP (not b1's address) at b1's MAC, as
    # the client, with the mark after the client's SYN options
    assert (v, reason) == (defs.V_TX, "splice_decided")
    want = F.tcp(LB, B1, CLIENT, VIP, 40000, 80, flags=F.TH_SYN, seq=c_isn, ident=0, df=True,
                 opts=syn_opts(ts=1001, ws=7) + MARK)
    assert syn == want and F.checksums_ok(syn)
    # b1's SYN-ACK comes from the VIP (its shim sent it to our MAC): ACK + request, with the
    # deltas in the hand-off option
    s_isn = 0xFFFFFFF0
    synack = F.tcp(B1, LB, VIP, CLIENT, 80, 40000, flags=F.TH_SYN | F.TH_ACK, seq=s_isn,
                   ack=c_isn + 1, opts=syn_opts(ts=5000, ws=9)[:4]
                   + opt_ts(5000, 1001, lead=b"\x04\x02") + b"\x01\x03\x03\x09")
    delta = (cookie - s_isn) & M32
    ts_off = (NOW + 64 - 5000) & M32
    hand = (b"\x01\x01" + bytes([defs.HOP_OPT_KIND, defs.HOP_HANDOFF_LEN]) + EXID
            + struct.pack("!II", delta, ts_off) + bytes([9, 7]))
    replay = F.tcp(LB, B1, CLIENT, VIP, 40000, 80, flags=F.TH_ACK | F.TH_PUSH, seq=c_isn + 1,
                   ack=(s_isn + 1) & M32, win=502, data=req, ident=0, df=True,
                   opts=opt_ts(1001, 5000) + hand)
    assert run(e, synack) == (defs.V_TX, "splice_replay", replay)
    fl = e.splice_flow(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)
    assert fl["state"] == defs.S_ESTABLISHED and (fl["rip"], fl["rport"]) == (F.ip2int(VIP), 80)
    # the replay lost: b1 (its shim still pending) sends the SYN-ACK again; answered again
    assert run(e, synack) == (defs.V_TX, "splice_replay", replay)

    # after the hand-off: the client's frames go to b1's MAC with nothing else changed
    cack = F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1 + len(req),
                 ack=(cookie + 1001) & M32, win=600,
                 opts=opt_ts(1002, (5001 + ts_off) & M32))
    v, reason, got = run(e, cack)
    assert (v, reason) == (defs.V_TX, "hop_fwd") and got == B1 + LB + cack[12:]
    # b1's data leaves through its own gateway; one that reaches us is not forwarded
    data = F.tcp(B1, LB, VIP, CLIENT, 80, 40000, flags=F.TH_ACK, seq=(cookie + 1) & M32,
                 ack=c_isn + 1 + len(req), data=b"x" * 100, opts=opt_ts(5001 + ts_off, 1002))
    assert run(e, data)[:2] == (defs.V_DROP, "drop_hop_rev")
    # the client's FIN ends the flow as the LB tracks it
    cfin = F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_FIN | F.TH_ACK,
                 seq=c_isn + 1 + len(req), ack=(cookie + 1001) & M32)
    assert run(e, cfin)[1] == "hop_fwd"
    assert defs.STATE_NAMES[e.flows()[0][7]] == "FIN_WAIT" and e.flows()[0][6] == defs.MODE_HOP
    c = e.counters()
    assert (c["hop_handoff"], c["hop_fwd"], c["drop_hop_rev"], c["splice_replay"]) == (2, 2, 1, 2)
    assert c["splice_rev"] == 0 and c["splice_fwd"] == 0


def test_undecided_requests_and_the_backends_reset_go_to_the_hop_handler(impl):
    e = engine(impl)
    req = b"GET /other HTTP/1.1\r\nHost: a\r\n\r\n"      # no rule for it: Python decides
    c_isn, cookie, _, (v, reason, _) = cookie_ack(e, req)
    assert (v, reason) == (defs.V_PUNT, "punt_hop")
    key = (F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)
    syn = e.splice_bind(*key, 0, NOW, req)
    assert syn[26:34] == F.ip2int(CLIENT).to_bytes(4, "big") + F.ip2int(VIP).to_bytes(4, "big")
    assert syn[54 + 20:54 + 24] == MARK
    assert e.splice_by_backend(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80) == key
    rst = F.tcp(B1, LB, VIP, CLIENT, 80, 40000, flags=F.TH_RST | F.TH_ACK, seq=0, ack=c_isn + 1)
    assert run(e, rst)[:2] == (defs.V_PUNT, "punt_hop")
    assert e.counters()["punt_splice"] == 0


def test_waiting_flows_go_to_their_own_modes_handler(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    e.set_splice_secret(SECRET)
    e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_HOP, defs.SCHED_SEQ, [0], [1]),
                    ServiceSpec(F.ip2int(VIP), 81, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1])])
    for port in (80, 81):
        syn = F.tcp(GW, LB, CLIENT, VIP, 40000, port, flags=F.TH_SYN, seq=7, opts=syn_opts())
        cookie = parse(run(e, syn)[2]).seq
        ack = F.tcp(GW, LB, CLIENT, VIP, 40000, port, flags=F.TH_ACK, seq=8, ack=(cookie + 1) & M32)
        assert run(e, ack)[1] == "splice_accepted"
    later = NOW + defs.SPLICE_WAIT_HANDOFF_MS
    assert [w[3] for w in e.splice_waiting(later, defs.MODE_SPLICE)] == [81]
    assert [w[3] for w in e.splice_waiting(later, defs.MODE_HOP)] == [80]
    assert e.splice_waiting(later, defs.MODE_HOP) == [] == e.splice_waiting(later)
