"""splice in the fast path, on both twins: the cookie SYN-ACK, the cookie check that creates
the flow, binding, the backend's SYN-ACK, and translation both ways (seq/ack across 2^32,
SACK blocks, timestamps, window scale, an odd-aligned option). Expected frames are built
independently with dpkt (full checksums), so a byte-equal frame also proves the patches."""
import struct

import dpkt

import pytest

from fastpath import Batch, ServiceSpec, defs
from tools import frames as F

from .fixtures import B1, CLIENT, GW, LB, REALS, make_engine

VIP = "198.19.100.6"
SECRET = bytes(range(16))
NOW = 5_000_000          # ms
B1_IP, B1_PORT = REALS[0][0], REALS[0][1]
M32 = 0xFFFFFFFF


def opt_ts(tsval, tsecr, lead=b"\x01\x01", tail=b""):
    return lead + b"\x08\x0a" + struct.pack("!II", tsval, tsecr) + tail


def syn_opts(ts=1000, ws=7, sack=True, mss=1460):
    o = struct.pack("!BBH", 2, 4, mss)
    if ts is not None:
        o += (b"\x04\x02" if sack else b"\x01\x01") + b"\x08\x0a" + struct.pack("!II", ts, 0)
    else:
        o += b"\x01\x01\x04\x02" if sack else b""
    if ws is not None:
        o += b"\x01\x03\x03" + bytes([ws])
    return o


def engine(impl):
    e = make_engine(impl.Engine, ServiceSpec)
    e.set_splice_secret(SECRET)
    e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1])])
    return e


def run(e, frame, now=NOW):
    b = Batch(1)
    b.load([frame])
    e.process(b, now)
    return b.results()[0]


def parse(frame):
    import dpkt
    return dpkt.ethernet.Ethernet(frame).data.data


def tcp_opts(t):
    import dpkt
    return dict(dpkt.tcp.parse_opts(t.opts))


def handshake(e, sport=40000, c_isn=0x7FFFFFF0, ts=True, ws=7):
    syn = F.tcp(GW, LB, CLIENT, VIP, sport, 80, flags=F.TH_SYN, seq=c_isn,
                opts=syn_opts(ts=1000 if ts else None, ws=ws))
    v, reason, out = run(e, syn)
    assert (v, reason) == (defs.V_TX, "splice_synack")
    return c_isn, out


def test_syn_gets_a_cookie_synack_and_no_state(impl):
    e = engine(impl)
    c_isn, out = handshake(e)
    assert F.checksums_ok(out) and e.flow_count() == 0
    assert out[0:6] == GW and out[6:12] == LB
    t = parse(out)
    assert (F.int2ip(int.from_bytes(out[26:30], "big")), t.sport, t.dport) == (VIP, 80, 40000)
    assert t.flags == F.TH_SYN | F.TH_ACK and t.ack == (c_isn + 1) & M32
    o = tcp_opts(t)
    assert struct.unpack("!H", o[2])[0] == defs.SPLICE_MSS and o[3] == bytes([defs.SPLICE_WSCALE])
    assert 4 in o
    tsval, tsecr = struct.unpack("!II", o[8])
    assert tsecr == 1000 and tsval & 0x3F == 7 | 0x10     # wscale 7 and SACK in our TSval
    assert e.counters()["splice_synack"] == 1


def test_synack_without_timestamps_offers_only_mss(impl):
    e = engine(impl)
    _, out = handshake(e, ts=False)
    assert set(tcp_opts(parse(out))) == {2}


def test_bad_and_stale_cookies_are_dropped(impl):
    e = engine(impl)
    c_isn, out = handshake(e)
    cookie = parse(out).seq
    ack = F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1, ack=cookie + 2)
    assert run(e, ack)[1] == "splice_bad_cookie"
    ok = F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1, ack=(cookie + 1) & M32)
    assert run(e, ok, now=NOW + 3 * 65536)[1] == "splice_bad_cookie"      # 3 ticks old
    assert run(e, ok, now=NOW + 65536)[1] == "splice_accepted"             # 1 tick old: fine
    assert e.flow_count() == 1


def test_malformed_syn_options_are_dropped(impl):
    e = engine(impl)
    syn = F.tcp(GW, LB, CLIENT, VIP, 1, 80, flags=F.TH_SYN, opts=b"\x02\x00\x00\x00")
    assert run(e, syn)[1] == "drop_tcp_bad_options"


def test_a_spliced_connection_both_ways(impl):
    e = engine(impl)
    c_isn, out = handshake(e)
    cookie = parse(out).seq
    our_ts = struct.unpack("!II", tcp_opts(parse(out))[8])[0]
    req = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    ack = F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK | F.TH_PUSH, seq=c_isn + 1,
                ack=(cookie + 1) & M32, win=502, data=req, opts=opt_ts(1001, our_ts))
    assert run(e, ack)[:2] == (defs.V_PUNT, "punt_splice")
    fl = e.splice_flow(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)
    assert fl["state"] == defs.S_SPL_WAIT and fl["c_isn"] == c_isn and fl["l_isn"] == cookie
    assert (fl["mss"], fl["ws_c"], fl["ws_lb"], fl["sopt"]) == (1460, 7, 7, defs.SOPT_TS | defs.SOPT_SACK)
    assert fl["c_tsval"] == 1001 and fl["c_win"] == 502
    # binding makes our SYN to the backend as the client: its address, port, ISN, options
    syn = e.splice_bind(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80, 0, NOW, req)
    assert syn == F.tcp(LB, B1, CLIENT, B1_IP, 40000, B1_PORT, flags=F.TH_SYN, seq=c_isn, ident=0,
                        df=True, opts=syn_opts(ts=1001, ws=7))
    assert e.splice_syn(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80) == syn       # to resend it
    assert e.splice_bind(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80, 0, NOW) is None   # only once
    s_isn = 0xFFFFFFF0                                     # server sequence wraps 2^32
    synack = F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_SYN | F.TH_ACK, seq=s_isn,
                   ack=c_isn + 1, opts=syn_opts(ts=5000, ws=9)[:4] + opt_ts(5000, 1001, lead=b"\x04\x02") + b"\x01\x03\x03\x09")
    # the backend's SYN-ACK becomes our ACK as the client, carrying the request
    replay = F.tcp(LB, B1, CLIENT, B1_IP, 40000, B1_PORT, flags=F.TH_ACK | F.TH_PUSH,
                   seq=c_isn + 1, ack=(s_isn + 1) & M32, win=502, data=req, ident=0, df=True,
                   opts=opt_ts(1001, 5000))
    assert run(e, synack) == (defs.V_TX, "splice_replay", replay)
    assert e.splice_syn(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80) is None
    fl = e.splice_flow(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)
    assert fl["state"] == defs.S_ESTABLISHED and fl["s_isn"] == s_isn and fl["ws_b"] == 9
    delta = (cookie - s_isn) & M32
    ts_off = (NOW + 64 - 5000) & M32
    assert fl["b_tsval"] == 5000 and fl["ts_off"] == ts_off

    # backend -> client: seq + delta, TSval + offset, window 100 << 9 >> 7
    resp = b"HTTP/1.1 200 OK\r\n\r\nhello"
    data = F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_ACK | F.TH_PUSH,
                 seq=(s_isn + 1) & M32, ack=c_isn + 1 + len(req), win=100, data=resp,
                 opts=opt_ts(5001, 1001))
    want = F.tcp(LB, GW, VIP, CLIENT, 80, 40000, flags=F.TH_ACK | F.TH_PUSH,
                 seq=(s_isn + 1 + delta) & M32, ack=c_isn + 1 + len(req), win=400, data=resp,
                 opts=opt_ts((5001 + ts_off) & M32, 1001), ttl=63)
    v, reason, got = run(e, data)
    assert (v, reason) == (defs.V_TX, "splice_rev") and got == want and F.checksums_ok(got)

    # client -> backend: ack - delta, SACK edges - delta, TSecr - offset; odd-aligned TS
    sack = b"\x01\x01\x05\x0a" + struct.pack("!II", (cookie + 11) & M32, (cookie + 21) & M32)
    cack = F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1 + len(req),
                 ack=(cookie + 1 + len(resp)) & M32, win=600,
                 opts=opt_ts(1002, (5001 + ts_off) & M32, lead=b"\x01", tail=b"\x01") + sack)
    sack_b = b"\x01\x01\x05\x0a" + struct.pack("!II", (s_isn + 11) & M32, (s_isn + 21) & M32)
    want = F.tcp(LB, B1, CLIENT, B1_IP, 40000, B1_PORT, flags=F.TH_ACK, seq=c_isn + 1 + len(req),
                 ack=(s_isn + 1 + len(resp)) & M32, win=600,
                 opts=opt_ts(1002, 5001, lead=b"\x01", tail=b"\x01") + sack_b, ttl=63)
    v, reason, got = run(e, cack)
    assert (v, reason) == (defs.V_TX, "splice_fwd") and got == want and F.checksums_ok(got)

    # FIN both ways, then the flow is closing like any other
    fin = F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_FIN | F.TH_ACK,
                seq=(s_isn + 1 + len(resp)) & M32, ack=c_isn + 1 + len(req), opts=opt_ts(5002, 1002))
    assert run(e, fin)[1] == "splice_rev"
    cfin = F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_FIN | F.TH_ACK, seq=c_isn + 1 + len(req),
                 ack=(cookie + 2 + len(resp)) & M32, opts=opt_ts(1003, (5002 + ts_off) & M32))
    assert run(e, cfin)[1] == "splice_fwd"
    assert defs.STATE_NAMES[e.flows()[0][7]] == "TIME_WAIT"
    c = e.counters()
    assert c["splice_established"] == 1 and c["flow_created"] == 1


def bound(e, request=b"", fin=False, ts=True):
    c_isn, out = handshake(e, ts=ts)
    cookie = parse(out).seq
    assert run(e, F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1,
                        ack=(cookie + 1) & M32, win=300))[1] == "splice_accepted"
    assert e.splice_bind(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80, 0, NOW, request, fin)
    return c_isn


def spliced(impl):
    """A splice flow bound to b1 and established; returns (engine, c_isn, delta, s_isn)."""
    e = engine(impl)
    c_isn = bound(e)
    s_isn = 0xFFFFFF00                                   # delta crosses 2^32
    synack = F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_SYN | F.TH_ACK, seq=s_isn,
                   ack=c_isn + 1, opts=syn_opts(ts=5000, ws=7))
    run(e, synack, NOW)
    fl = e.splice_flow(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)
    assert fl["state"] == defs.S_ESTABLISHED
    return e, c_isn, (fl["l_isn"] - s_isn) & M32, s_isn


def test_ip_options_ride_through_a_spliced_connection(impl):
    """A client whose every segment carries IP options (record route): the cookie SYN-ACK is
    ours (no options), the client's segments go on to the backend with their options and the
    translated ack."""
    rr = b"\x07\x07\x04\0\0\0\0\x01"
    e = engine(impl)
    syn = F.tcp(GW, LB, CLIENT, VIP, 40001, 80, flags=F.TH_SYN, seq=5, opts=syn_opts(), ip_opts=rr)
    v, reason, out = run(e, syn)
    assert (v, reason) == (defs.V_TX, "splice_synack") and out[14] == 0x45 and F.checksums_ok(out)
    e, c_isn, delta, s_isn = spliced(impl)
    data = F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1,
                 ack=(s_isn + 1 + delta) & M32, data=b"more", ip_opts=rr)
    want = F.tcp(LB, B1, CLIENT, B1_IP, 40000, B1_PORT, flags=F.TH_ACK, seq=c_isn + 1,
                 ack=(s_isn + 1) & M32, data=b"more", ip_opts=rr, ttl=63)
    assert run(e, data) == (defs.V_TX, "splice_fwd", want)


def test_retransmitted_backend_synack_is_answered_again_until_the_request_is_acked(impl):
    e = engine(impl)
    req = b"GET / HTTP/1.0\r\n\r\n"
    c_isn = bound(e, req, fin=True, ts=False)
    synack = F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_SYN | F.TH_ACK, seq=77,
                   ack=c_isn + 1)
    want = F.tcp(LB, B1, CLIENT, B1_IP, 40000, B1_PORT, flags=F.TH_ACK | F.TH_PUSH | F.TH_FIN,
                 seq=c_isn + 1, ack=78, win=300, data=req, ident=0, df=True)
    assert run(e, synack) == (defs.V_TX, "splice_replay", want)
    assert run(e, synack) == (defs.V_TX, "splice_replay", want)     # our answer was lost
    # a SYN-ACK that is not the backend's (another ISN) is not answered
    assert run(e, F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_SYN | F.TH_ACK,
                        seq=99, ack=c_isn + 1))[1] == "punt_splice"
    # once the backend acknowledged the request, a late SYN-ACK gets a bare ACK
    ack = F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_ACK, seq=78,
                ack=c_isn + 2 + len(req))
    assert run(e, ack)[1] == "splice_rev"
    bare = F.tcp(LB, B1, CLIENT, B1_IP, 40000, B1_PORT, flags=F.TH_ACK, seq=c_isn + 1, ack=78,
                 win=300, ident=0, df=True)
    assert run(e, synack) == (defs.V_TX, "splice_replay", bare)
    c = e.counters()
    assert c["splice_established"] == 1 and c["splice_replay"] == 3


def test_a_request_longer_than_a_segment_is_replayed_by_python(impl):
    e = engine(impl)
    c_isn = bound(e, b"x" * 1461)            # one byte more than the client's MSS
    synack = F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_SYN | F.TH_ACK, seq=77,
                   ack=c_isn + 1)
    assert run(e, synack)[1] == "punt_splice"
    assert run(e, synack)[1] == "punt_splice"
    assert e.counters()["splice_established"] == 1


def test_a_replay_that_does_not_fit_the_row_goes_up(impl):
    e = engine(impl)
    c_isn = bound(e, b"x" * 1400)
    b = Batch(1, snap=1024)
    b.load([F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_SYN | F.TH_ACK, seq=77,
                  ack=c_isn + 1)])
    e.process(b, NOW)
    assert b.results()[0][1] == "punt_splice"


def test_silent_clients_are_handed_up_once_after_a_while(impl):
    e = engine(impl)
    c_isn, out = handshake(e)
    cookie = parse(out).seq
    ack = F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1, ack=(cookie + 1) & M32)
    assert run(e, ack)[:2] == (defs.V_DROP, "splice_accepted")
    # a second client sends its request: it is punted, so never handed up as silent
    c2, out2 = handshake(e, sport=40001)
    run(e, F.tcp(GW, LB, CLIENT, VIP, 40001, 80, flags=F.TH_ACK, seq=c2 + 1,
                 ack=(parse(out2).seq + 1) & M32))
    assert run(e, F.tcp(GW, LB, CLIENT, VIP, 40001, 80, flags=F.TH_ACK, seq=c2 + 1,
                        ack=(parse(out2).seq + 1) & M32, data=b"GET"))[1] == "punt_splice"
    assert e.splice_waiting(NOW + defs.SPLICE_WAIT_HANDOFF_MS - 1) == []
    key = (F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)
    assert e.splice_waiting(NOW + defs.SPLICE_WAIT_HANDOFF_MS) == [key + (NOW,)]
    assert e.splice_waiting(NOW + 10 * defs.SPLICE_WAIT_HANDOFF_MS) == []


def test_the_wait_queue_drops_its_oldest_when_full(impl):
    size = defs.SPLICE_WAITQ_MIN
    e = make_engine(impl.Engine, ServiceSpec, capacity=size)
    e.set_splice_secret(SECRET)
    e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1])])
    # cookies are deterministic per 4-tuple and ISN: make them with the engine, then ACK them
    frames = []
    b = Batch(256)
    for k0 in range(0, size + 1, 256):
        syns = [F.tcp(GW, LB, CLIENT, VIP, 1024 + k, 80, flags=F.TH_SYN, seq=k)
                for k in range(k0, min(k0 + 256, size + 1))]
        b.load(syns)
        e.process(b, NOW)
        frames += [F.tcp(GW, LB, CLIENT, VIP, 1024 + k0 + i, 80, flags=F.TH_ACK, seq=k0 + i + 1,
                         ack=(parse(f).seq + 1) & M32) for i, f in enumerate(b.frames())]
    for k0 in range(0, len(frames), 256):
        b.load(frames[k0:k0 + 256])
        e.process(b, NOW)
    assert e.counters()["splice_waitq_lost"] == 1
    got = e.splice_waiting(NOW + defs.SPLICE_WAIT_HANDOFF_MS)
    # one flow more than the queue holds: the oldest entry (port 1024) was dropped (and the
    # table, as full, evicted that flow for the last one)
    assert len(got) == size and got[0][1] == 1025 and got[-1][1] == 1024 + size


def test_backend_reset_while_connecting_goes_up_and_drop_forgets(impl):
    e = engine(impl)
    c_isn, out = handshake(e)
    cookie = parse(out).seq
    run(e, F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1, ack=(cookie + 1) & M32))
    assert run(e, F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_RST))[1] == "drop_unknown_dest"
    e.splice_bind(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80, 0, NOW)
    assert e.real_conns(0) == 1
    assert run(e, F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_RST | F.TH_ACK,
                        ack=c_isn + 1))[1] == "punt_splice"
    assert e.splice_drop(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)
    assert e.flow_count() == 0 and e.real_conns(0) == 0
    assert not e.splice_drop(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)


def test_syn_flood_creates_no_state(impl):
    e = engine(impl)
    b = Batch(256)
    b.load([F.tcp(GW, LB, "198.18.%d.%d" % (k // 250, k % 250 + 1), VIP, 1024 + k, 80,
                  flags=F.TH_SYN, seq=k, opts=syn_opts()) for k in range(256)])
    e.process(b, NOW)
    assert set(b.verdict[:256]) == {defs.V_TX} and e.flow_count() == 0
    assert all(F.checksums_ok(f) for f in b.frames())


@pytest.mark.parametrize("bad", [b"", b"\x05"])
def test_splice_calls_validate(impl, bad):
    e = engine(impl)
    with pytest.raises(ValueError):
        e.set_splice_secret(bad)
    with pytest.raises(ValueError):
        e.splice_bind(1, 2, 3, 4, defs.MAX_REALS, NOW)


def test_an_unbound_splice_flow_is_not_expired_for_a_down_backend(impl):
    """Until bound, a splice flow has no backend (real = -1): the expire-nodest policy must
    not look one up (the compiled engine once read before its reals array here)."""
    e = engine(impl)
    e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1],
                                defs.SVC_EXPIRE_NODEST)])
    e.set_real_up(defs.MAX_REALS - 1, False)      # what the twin's reals[-1] would be
    c_isn, out = handshake(e)
    ack = F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1,
                ack=(parse(out).seq + 1) & M32)
    assert run(e, ack)[1] == "splice_accepted"
    assert run(e, F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1,
                        ack=(parse(out).seq + 1) & M32, data=b"GET"))[1] == "punt_splice"
    c = e.counters()
    assert c["flow_expired_nodest"] == 0 and c["flow_created"] == 1


def test_the_cookie_promises_what_the_backends_have_shown_they_keep(impl):
    """nmsynproxy's way: a backend's SYN-ACK with MSS 1360 and no SACK lowers what the VIP's
    next cookie SYN-ACKs announce; it stays so when the services are set again, and goes
    when the slot gets another backend."""
    e = engine(impl)
    c_isn = bound(e)
    synack = F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_SYN | F.TH_ACK, seq=7,
                   ack=c_isn + 1, opts=syn_opts(ts=5000, ws=7, sack=False, mss=1360))
    run(e, synack)
    assert e.counters()["splice_mss_lowered"] == 1

    def promised():
        v, reason, out = run(e, F.tcp(GW, LB, CLIENT, VIP, 41000, 80, flags=F.TH_SYN,
                                      opts=syn_opts()))
        assert (v, reason) == (defs.V_TX, "splice_synack")
        o = tcp_opts(parse(out))
        return struct.unpack("!H", o[2])[0], 4 in o
    assert promised() == (1360, False)
    e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1])])
    assert promised() == (1360, False)
    e.set_real(0, F.ip2int("198.19.0.21"), 80, B1)
    e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1])])
    assert promised() == (defs.SPLICE_MSS, True)


def test_a_client_segment_bigger_than_the_backend_keeps_gets_frag_needed(impl):
    """Promised 1460 before the backend was known, it announced 1360: a full-size segment with
    DF is answered with ICMP fragmentation needed (MTU 1400), one that fits goes on, and a
    superframe's segment size is cut to fit."""
    e = engine(impl)
    c_isn = bound(e)
    run(e, F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_SYN | F.TH_ACK, seq=7,
                 ack=c_isn + 1, opts=syn_opts(ts=5000, ws=7, mss=1360)))
    fl = e.splice_flow(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)
    big = F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1,
                ack=(fl["l_isn"] + 1) & M32, data=b"u" * 1448, opts=opt_ts(1002, 5), df=True)
    v, reason, out = run(e, big)
    assert (v, reason) == (defs.V_TX, "splice_frag_needed")
    icmp = dpkt.ethernet.Ethernet(out).data
    assert (out[:6], icmp.p, icmp.data.type, icmp.data.code) == (GW, 1, 3, 4)
    assert struct.unpack("!H", out[40:42])[0] == 1400 and out[42:42 + 28] == big[14:42]
    assert F.checksums_ok(out) and F.inet_sum(out[34:]) == 0xFFFF
    fits = F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1,
                 ack=(fl["l_isn"] + 1) & M32, data=b"u" * 1348, opts=opt_ts(1002, 5), df=True)
    assert run(e, fits)[1] == "splice_fwd"
    b = Batch(1, snap=12000, hdr=10)
    sf = F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK, seq=c_isn + 1,
               ack=(fl["l_isn"] + 1) & M32, data=b"u" * 5792, opts=opt_ts(1002, 5), df=True)
    b.load([sf], [struct.pack("<BBHHHH", 1, 1, 66, 1448, 34, 16)])
    e.process(b, NOW)
    assert b.results()[0][1] == "splice_fwd"
    assert struct.unpack("<H", b.header(0)[4:6])[0] == 1360 + 20 - 32    # segments fit b1


def test_a_bind_onto_a_backend_side_key_a_live_flow_holds_is_refused(impl):
    """A nat VIP and the splice VIP on one backend, one client port: the nat flow lives on
    the backend's 4-tuple, so binding the splice flow there answers False (drop_rev_clash),
    leaves it waiting (SPL_WAIT) and keeps the nat flow's replies; once that flow is over
    (both FINs), the same bind goes through."""
    from .fixtures import VIP1, b2c, c2v
    e = engine(impl)
    e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1]),
                    ServiceSpec(F.ip2int(VIP1), 80, 6, defs.MODE_NAT, defs.SCHED_SEQ, [0], [1])])
    assert run(e, c2v(sport=40000))[1] == "nat_fwd"
    assert run(e, b2c(sport=40000))[1] == "nat_rev"
    c_isn, out = handshake(e)
    cookie = parse(out).seq
    our_ts = struct.unpack("!II", tcp_opts(parse(out))[8])[0]
    req = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    ack = F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK | F.TH_PUSH, seq=c_isn + 1,
                ack=(cookie + 1) & M32, data=req, opts=opt_ts(1001, our_ts))
    assert run(e, ack)[:2] == (defs.V_PUNT, "punt_splice")     # not bound in the fast path
    key = (F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)
    assert e.splice_bind(*key, 0, NOW, req) is False
    assert e.splice_flow(*key)["state"] == defs.S_SPL_WAIT
    assert e.counters()["drop_rev_clash"] == 1
    back = run(e, b2c(sport=40000, flags=F.TH_ACK, data=b"x"))
    assert back[1] == "nat_rev" and parse(back[2]).sport == 80
    run(e, c2v(sport=40000, flags=F.TH_FIN | F.TH_ACK))
    run(e, b2c(sport=40000, flags=F.TH_FIN | F.TH_ACK))
    assert e.splice_bind(*key, 0, NOW, req) not in (None, False)
