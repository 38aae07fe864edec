"""splice content rules decided in the fast path, on both twins: the request's first segment,
when its head is complete and plain, is matched against the VIP's rules, the flow is bound
to a backend of the chosen pool, and the segment itself becomes our SYN to that backend; the
backend's SYN-ACK then becomes ACK + the request. Everything the fast path cannot be sure of
goes up to Python unchanged (punt_splice). tests/differential/test_splice_rules_twins.py
holds the decisions against modes/splice/rules.py."""
import struct

import pytest

from fastpath import Batch, L7Spec, ServiceSpec, defs
from tools import frames as F

from .fixtures import B1, B2, CLIENT, GW, LB, REALS, make_engine

VIP = "198.19.100.6"
NOW = 5_000_000
M32 = 0xFFFFFFFF
B1_IP, B1_PORT = REALS[0][0], REALS[0][1]
B2_IP, B2_PORT = REALS[1][0], REALS[1][1]
SEQ = (defs.SCHED_SEQ, (0,), (1,))
BLOB = (defs.SCHED_SEQ, (1,), (1,))
RULES = ((defs.L7_PATH, b"/blob", 1), (defs.L7_HOST_SUFFIX, b".img.test", 1),
         (defs.L7_DEFAULT, b"", 0))


def engine(impl, rules=RULES, pools=(SEQ, BLOB), limit=4096):
    e = make_engine(impl.Engine, ServiceSpec)
    e.set_splice_secret(bytes(16))
    e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1],
                                0, L7Spec(limit, rules, pools))])
    return e


def run(e, frame, now=NOW, snap=2048):
    b = Batch(1, snap=snap)
    b.load([frame])
    e.process(b, now)
    return b.results()[0]


def accepted(e, sport=40000, c_isn=1000, ts=True):
    opts = struct.pack("!BBH", 2, 4, 1460)
    if ts:
        opts += b"\x04\x02\x08\x0a" + struct.pack("!II", 777, 0) + b"\x01\x03\x03\x07"
    out = run(e, F.tcp(GW, LB, CLIENT, VIP, sport, 80, flags=F.TH_SYN, seq=c_isn, opts=opts))[2]
    cookie = struct.unpack("!I", out[38:42])[0]
    ack_opts = b""
    if ts:
        our_ts = struct.unpack("!I", out[-12:-8])[0] if out[-4:-2] == b"\x01\x03" else 0
        ack_opts = b"\x01\x01\x08\x0a" + struct.pack("!II", 778, our_ts)
    assert run(e, F.tcp(GW, LB, CLIENT, VIP, sport, 80, seq=c_isn + 1, ack=(cookie + 1) & M32,
                        opts=ack_opts))[1] == "splice_accepted"
    return cookie, ack_opts


def request(e, data, sport=40000, flags=F.TH_ACK | F.TH_PUSH, seq_off=0, **kw):
    cookie, opts = accepted(e, sport, **kw)
    return run(e, F.tcp(GW, LB, CLIENT, VIP, sport, 80, flags=flags, seq=1001 + seq_off,
                        ack=(cookie + 1) & M32, data=data, win=800, opts=opts))


@pytest.mark.parametrize("data,real", [
    (b"GET /blob/7 HTTP/1.1\r\nHost: a\r\n\r\n", 1),
    (b"GET /x HTTP/1.1\r\nHost: A.IMG.TEST.:80\r\n\r\n", 1),
    (b"GET /x HTTP/1.1\r\nHost: img.test\r\n\r\n", 0),       # not strictly below .img.test
    (b"GET /blob?x HTTP/1.0\n\n", 1),
    (b"\r\nPOST /other HTTP/1.1\r\nX: y\r\n\r\nbody", 0),
    (b"not http at all", 0),                                   # the default needs no head
])
def test_the_first_segment_is_decided_and_becomes_our_syn(impl, data, real):
    e = engine(impl, rules=RULES if real or b"HTTP" in data else ((defs.L7_DEFAULT, b"", 0),))
    v, reason, out = request(e, data)
    ip, port, mac = REALS[real]
    want = F.tcp(LB, mac, CLIENT, ip, 40000, port, flags=F.TH_SYN, seq=1000, ident=0, df=True,
                 opts=struct.pack("!BBH", 2, 4, 1460) + b"\x04\x02\x08\x0a"
                 + struct.pack("!II", 778, 0) + b"\x01\x03\x03\x07")
    assert (v, reason, out) == (defs.V_TX, "splice_decided", want)
    fl = e.splice_flow(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)
    assert fl["state"] == defs.S_SPL_CONNECTING and fl["real"] == real
    # the backend's SYN-ACK: ACK + the request, as the client
    synack = F.tcp(mac, LB, ip, CLIENT, port, 40000, flags=F.TH_SYN | F.TH_ACK, seq=50,
                   ack=1001, opts=b"\x01\x01\x08\x0a" + struct.pack("!II", 9000, 778))
    replay = F.tcp(LB, mac, CLIENT, ip, 40000, port, flags=F.TH_ACK | F.TH_PUSH, seq=1001,
                   ack=51, win=800, data=data, ident=0, df=True,
                   opts=b"\x01\x01\x08\x0a" + struct.pack("!II", 778, 9000))
    assert run(e, synack) == (defs.V_TX, "splice_replay", replay)
    assert e.counters()["splice_decided"] == 1 and e.real_conns(real) == 1


@pytest.mark.parametrize("data", [
    b"GET /blob HTTP/1.1\r\nHost: a\r\n",                      # the head is not complete
    b"GET http://h/blob HTTP/1.1\r\n\r\n",                     # absolute-form: Python's
    b"GET /blob HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",       # duplicate Host: invalid
    b"GET /blob HTTP/1.1\r\n folded\r\n\r\n",                  # obs-fold: invalid
    b"GET /blob HTTP/1.1\r\nHost: \xe4.test\r\n\r\n",          # a Host beyond ASCII
    b"GET /blob HTTP/1.1\r\nHost: [::1]\r\n\r\n",              # an IPv6 literal
    b"GET /blob HTTP/2.0\r\n\r\n",
])
def test_a_head_the_fast_path_cannot_be_sure_of_goes_up(impl, data):
    e = engine(impl)
    v, reason, out = request(e, data)
    assert (v, reason) == (defs.V_PUNT, "punt_splice")
    assert e.splice_flow(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)["state"] == defs.S_SPL_WAIT


def test_what_else_goes_up(impl):
    req = b"GET /blob HTTP/1.1\r\n\r\n"
    e = engine(impl)
    assert request(e, req, flags=F.TH_ACK | F.TH_FIN)[1] == "punt_splice"           # with FIN
    assert request(e, req, sport=40001, seq_off=5)[1] == "punt_splice"              # not first
    assert request(e, b"x" * 1461, sport=40002, ts=False)[1] == "punt_splice"       # > MSS
    # no rule matches: Python refuses it
    e = engine(impl, rules=((defs.L7_METHOD, b"POST", 0),))
    assert request(e, req)[1] == "punt_splice"
    # a pool with no backend; a backend whose MAC is unknown
    e = engine(impl, pools=(SEQ, (defs.SCHED_SEQ, (), ())))
    assert request(e, req)[1] == "punt_splice"
    e = engine(impl)
    e.set_real(1, F.ip2int(B2_IP), B2_PORT, None)
    assert request(e, req)[1] == "punt_splice"
    # a prefix rule still waiting for its bytes
    e = engine(impl, rules=((defs.L7_PREFIX, b"\x16\x03\x01\x02", 1), (defs.L7_DEFAULT, b"", 0)))
    assert request(e, b"\x16\x03")[1] == "punt_splice"
    assert request(e, b"\x16\x03\x01\x02\x00", sport=40001)[1] == "splice_decided"
    assert e.counters()["splice_decided"] == 1


def test_once_python_has_seen_a_flow_the_fast_path_leaves_its_decision_alone(impl):
    e = engine(impl)
    v, reason, _ = request(e, b"GET /bl")
    assert reason == "punt_splice"
    cookie_ack = e.splice_flow(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)
    assert cookie_ack["state"] == defs.S_SPL_WAIT
    # the client resends the whole head from the start: still Python's
    v, reason, _ = run(e, F.tcp(GW, LB, CLIENT, VIP, 40000, 80, seq=1001,
                                ack=(cookie_ack["l_isn"] + 1) & M32, data=b"GET /blob HTTP/1.0\r\n\r\n"))
    assert reason == "punt_splice"


def test_a_flow_bound_here_is_handed_to_python_when_its_backend_is_slow(impl):
    e = engine(impl)
    assert request(e, b"GET / HTTP/1.0\r\n\r\n")[1] == "splice_decided"
    key = (F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)
    assert e.splice_waiting(NOW + defs.SPLICE_WAIT_HANDOFF_MS - 1) == []
    # (the cookie ACK's own entry is skipped: the flow moved on; the binding's is returned)
    assert e.splice_waiting(NOW + defs.SPLICE_WAIT_HANDOFF_MS) == [key + (NOW,)]
    assert e.splice_by_backend(F.ip2int(CLIENT), 40000, F.ip2int(B1_IP), B1_PORT) == key
    assert e.splice_by_backend(F.ip2int(CLIENT), 40001, F.ip2int(B1_IP), B1_PORT) is None
    syn = e.splice_syn(*key)
    assert syn[47] == F.TH_SYN and syn[0:6] == B1


def test_the_fast_path_schedules_within_the_pool(impl):
    e = engine(impl, rules=((defs.L7_DEFAULT, b"", 0),),
               pools=((defs.SCHED_SEQ, (0, 1, 2), (1, 1, 1)),))
    got = [request(e, b"GET / HTTP/1.0\r\n\r\n", sport=41000 + k)[2][0:6] for k in range(6)]
    assert got == [REALS[k % 3][2] for k in range(6)]


@pytest.mark.parametrize("bad", [
    L7Spec(0, (), ()), L7Spec(4096, ((99, b"", 0),), (SEQ,)), L7Spec(4096, ((1, b"", 1),), (SEQ,)),
    L7Spec(4096, ((1, "text", 0),), (SEQ,)), L7Spec(4096, ((1, b"", 0),), ((77, (0,), (1,)),)),
])
def test_bad_rule_tables_are_refused_and_change_nothing(impl, bad):
    e = engine(impl)
    with pytest.raises(ValueError):
        e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ,
                                    [0], [1], 0, bad)])
    assert request(e, b"GET /blob HTTP/1.0\r\n\r\n")[1] == "splice_decided"
    with pytest.raises(ValueError):       # content rules on a nat service
        e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_NAT, defs.SCHED_SEQ,
                                    [0], [1], 0, L7Spec(4096, (), ()))])


# ---- the engine's pick: the one scheduler Python asks ----------------------------------
RR2 = (defs.SCHED_SEQ, (0, 1), (1, 1))


def test_pick_shares_the_pools_rr_cursor_with_the_fast_paths_decisions(impl):
    e = engine(impl, rules=((defs.L7_DEFAULT, b"", 0),), pools=(RR2,))
    vip, c = F.ip2int(VIP), F.ip2int(CLIENT)
    assert e.pick(vip, 80, 0, c, 50000) == 0
    # the fast path decides the next request in the same pool: its rr takes the next real
    request(e, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", sport=40001)
    fl = e.splice_flow(c, 40001, vip, 80)
    assert fl["real"] == 1
    assert [e.pick(vip, 80, 0, c, 50001 + k) for k in range(3)] == [0, 1, 0]
    assert e.pick(vip, 80, -1, c, 50000) == 0            # the service's own table


def test_pick_hash_pools_follow_the_flow_and_empty_or_unknown_give_minus_one(impl):
    h5 = (defs.SCHED_HASH5, (0, 1, 0, 1, 1, 0, 1, 0), (1,) * 8)
    e = engine(impl, rules=((defs.L7_DEFAULT, b"", 0),), pools=(h5, (defs.SCHED_SEQ, (), ())))
    vip, c = F.ip2int(VIP), F.ip2int(CLIENT)
    got = [e.pick(vip, 80, 0, c, 40000 + k) for k in range(16)]
    assert got == [e.pick(vip, 80, 0, c, 40000 + k) for k in range(16)]  # no cursor: the hash
    assert got == [h5[1][impl.flow_hash(c, vip, 40000 + k, 80, 6) % 8] for k in range(16)]
    assert e.pick(vip, 80, 1, c, 40000) == -1                          # an empty pool
    assert e.pick(F.ip2int("198.19.100.99"), 80, 0, c, 40000) == -1    # no such service


@pytest.mark.parametrize("args", [
    (0, 80, 2, 0, 1), (0, 80, -2, 0, 1), (0, 80, True, 0, 1), (0, 80, "0", 0, 1),
    (-1, 80, 0, 0, 1), (0, 70000, 0, 0, 1), (0, 80, 0, 1 << 32, 1), (0, 80, 0, 0, -1)])
def test_pick_refuses_bad_arguments(impl, args):
    e = engine(impl)
    vip = F.ip2int(VIP) if args[0] == 0 else args[0]
    with pytest.raises(ValueError):
        e.pick(vip, *args[1:])
