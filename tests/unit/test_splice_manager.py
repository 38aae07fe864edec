"""modes/splice/manager.py's SpliceManager over a real engine (both twins), frame by frame: what
Python does for a new connection now that the engine makes the SYN and answers the backend's
SYN-ACK itself, a client that stays silent, a request longer than a segment, and a backend
that never answers. The lab tests (tests/integration/test_splice.py) do the same with real
TCP stacks; these pin the division of labour between the engine and Python."""
import struct

from fastpath import Batch, ServiceSpec, defs
from modes import splice as l7
from modes.splice import SpliceManager
from modes.splice import manager as sm_mod
from tools import frames as F

from tests.fastpath.fixtures import B1, CLIENT, GW, LB, REALS, make_engine


VIP = "198.19.100.6"
NOW = 5_000_000
M32 = 0xFFFFFFFF
B1_IP, B1_PORT = REALS[0][0], REALS[0][1]
REQ = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


class Vip:
    def __init__(self, rules, timeout_ms=1000, limit=4096):
        self.ruleset = l7.RuleSet(rules, limit=limit)
        self.limit = limit
        self.timeout_ms = timeout_ms

    def choose(self, pool, h, cip, engine):
        return (0, F.ip2int(B1_IP), B1_PORT)


class Ctx:
    """The daemon side SpliceManager talks to (lb/state.py's PuntContext in lbd)."""

    def __init__(self, vip):
        self._vip = vip

    def vip(self, ip, port):
        return self._vip if (ip, port) == (F.ip2int(VIP), 80) else None

    def mac_of(self, ip):
        return B1 if ip == F.ip2int(B1_IP) else None

    def gateway_mac(self):
        return GW


def setup(impl, rules=(l7.Rule("default", "", "default"),), timeout_ms=1000):
    e = make_engine(impl.Engine, ServiceSpec)
    e.set_splice_secret(bytes(16))
    e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1])])
    return e, SpliceManager(e, Ctx(Vip(list(rules), timeout_ms)), LB)


def run(e, sm, frame, now=NOW):
    """One frame through the engine; punted frames through the manager. (verdict, reason,
    frame out, frames Python made)."""
    b = Batch(1)
    b.load([frame])
    e.process(b, now)
    v, reason, out = b.results()[0]
    made = sm.handle(out, now) if v == defs.V_PUNT else []
    return v, reason, out, made


def connect(e, sm, sport=40000, c_isn=1000):
    syn = F.tcp(GW, LB, CLIENT, VIP, sport, 80, flags=F.TH_SYN, seq=c_isn,
                opts=struct.pack("!BBH", 2, 4, 1460))
    cookie = struct.unpack("!I", run(e, sm, syn)[2][38:42])[0]
    v, reason, _, made = run(e, sm, F.tcp(GW, LB, CLIENT, VIP, sport, 80, seq=c_isn + 1,
                                          ack=(cookie + 1) & M32))
    assert (reason, made) == ("splice_accepted", [])       # Python sees no bare ACK
    return cookie


def test_a_new_connection_costs_python_one_frame_in_and_one_out(impl):
    e, sm = setup(impl)
    cookie = connect(e, sm)
    v, reason, _, made = run(e, sm, F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK | F.TH_PUSH,
                                          seq=1001, ack=(cookie + 1) & M32, win=700, data=REQ))
    assert reason == "punt_splice" and len(made) == 1
    syn = made[0]
    assert syn[0:6] == B1 and F.checksums_ok(syn)
    assert (syn[47], struct.unpack("!I", syn[38:42])[0]) == (F.TH_SYN, 1000)
    # the backend's SYN-ACK never reaches Python: the engine answers with ACK + request
    v, reason, out, made = run(e, sm, F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000,
                                            flags=F.TH_SYN | F.TH_ACK, seq=9, ack=1001))
    assert (v, reason, made) == (defs.V_TX, "splice_replay", [])
    assert out.endswith(REQ) and out[47] == F.TH_ACK | F.TH_PUSH and F.checksums_ok(out)
    assert sm.counters()["setting_up"] == 1
    sm.tick(NOW + 100)                 # the next tick lets go of it: the fast path has it all
    c = sm.counters()
    assert (c["open"], c["setting_up"], c["spliced_inline"], c["replayed"]) == (0, 0, 1, 0)


def test_a_request_longer_than_a_segment_is_replayed_by_python(impl):
    e, sm = setup(impl, rules=[l7.Rule("host", "a", "p1")])
    cookie = connect(e, sm)
    # the Host rule needs the whole head, which comes in two segments
    head1 = b"GET / HTTP/1.1\r\nX-Pad: " + b"p" * 1000
    head2 = b"\r\nHost: a\r\n" + b"X-More: " + b"q" * 600 + b"\r\n\r\n"
    big = head1 + head2
    assert run(e, sm, F.tcp(GW, LB, CLIENT, VIP, 40000, 80, seq=1001, ack=(cookie + 1) & M32,
                            data=head1))[3] == []
    made = run(e, sm, F.tcp(GW, LB, CLIENT, VIP, 40000, 80, seq=1001 + len(head1),
                            ack=(cookie + 1) & M32, data=head2))[3]
    assert len(made) == 1 and made[0][47] == F.TH_SYN       # decided: the SYN
    v, reason, _, made = run(e, sm, F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000,
                                          flags=F.TH_SYN | F.TH_ACK, seq=9, ack=1001))
    assert reason == "punt_splice"
    # the ACK, then what Python had at the decision, in segments
    assert [f[47] & 0x1F for f in made][0] == F.TH_ACK and len(made) >= 3
    payload = b"".join(f[54:] for f in made[1:])
    assert payload == big and all(F.checksums_ok(f) for f in made)
    assert sm.counters()["replayed"] == 1


def test_a_silent_client_is_decided_at_the_vips_timeout(impl):
    e, sm = setup(impl, timeout_ms=300)
    connect(e, sm)
    assert sm.tick(NOW + 50) == [] and sm.counters()["open"] == 0
    assert sm.tick(NOW + 150) == []                        # handed up, not yet timed out
    assert sm.counters()["silent"] == 1 and sm.counters()["setting_up"] == 1
    out = sm.tick(NOW + 300)                               # the default pool takes it
    assert len(out) == 1 and out[0][47] == F.TH_SYN
    assert sm.counters()["decided_at_timeout"] == 1


def test_a_silent_client_without_a_default_pool_is_reset(impl):
    e, sm = setup(impl, rules=[l7.Rule("path_prefix", "/a", "p1")], timeout_ms=200)
    connect(e, sm)
    sm.tick(NOW + 100)
    out = sm.tick(NOW + 200)
    assert len(out) == 1 and out[0][47] & F.TH_RST and out[0][0:6] == GW
    assert e.flow_count() == 0 and sm.counters()["refused"] == 1


def test_a_backend_that_never_answers_gets_the_syn_again_then_the_client_a_reset(impl):
    e, sm = setup(impl)
    cookie = connect(e, sm)
    syn = run(e, sm, F.tcp(GW, LB, CLIENT, VIP, 40000, 80, seq=1001, ack=(cookie + 1) & M32,
                           data=REQ))[3][0]
    assert sm.tick(NOW + 999) == []
    assert sm.tick(NOW + 1000) == [syn]                    # SYN_RETRIES_MS: 1 s, then 2 s more
    assert sm.tick(NOW + 2999) == []
    out = sm.tick(NOW + 3000)
    assert len(out) == 1 and out[0][47] & F.TH_RST
    assert sm.counters()["backend_timeout"] == 1 and e.flow_count() == 0


def no_mac_yet(e, sm):
    """Backend 0's MAC not yet learnt, by the daemon side nor by the engine (a fresh lbd)."""
    known = {}
    sm.ctx.mac_of = lambda ip: known.get(ip)
    e.set_real(0, F.ip2int(B1_IP), B1_PORT, None)

    def learn():
        known[F.ip2int(B1_IP)] = B1
        e.set_real(0, F.ip2int(B1_IP), B1_PORT, B1)
    return learn


def test_a_connection_waits_for_its_backends_mac_and_goes_on_when_it_is_learnt(impl):
    e, sm = setup(impl)
    learn = no_mac_yet(e, sm)
    cookie = connect(e, sm)
    req = F.tcp(GW, LB, CLIENT, VIP, 40000, 80, seq=1001, ack=(cookie + 1) & M32, data=REQ)
    assert run(e, sm, req)[3] == []                        # decided, held: no RST
    assert run(e, sm, req, NOW + 200)[3] == []             # the client's resend is held too
    assert sm.tick(NOW + 500) == [] and sm.counters()["neigh_wait"] == 1
    learn()
    out = sm.tick(NOW + 1000)                              # ARP answered: our SYN goes
    assert len(out) == 1 and out[0][47] == F.TH_SYN and out[0][0:6] == B1
    c = sm.counters()
    assert (c["refused"], c["no_neigh"], c["decided_forward"]) == (0, 0, 1)
    # and from there as always: the SYN-ACK is answered with ACK + the request
    v, reason, out, _ = run(e, sm, F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000,
                                         flags=F.TH_SYN | F.TH_ACK, seq=9, ack=1001), NOW + 1001)
    assert reason == "splice_replay" and out.endswith(REQ)


def test_a_backend_mac_never_learnt_resets_the_client_after_the_wait(impl):
    e, sm = setup(impl)
    no_mac_yet(e, sm)
    cookie = connect(e, sm)
    assert run(e, sm, F.tcp(GW, LB, CLIENT, VIP, 40000, 80, seq=1001, ack=(cookie + 1) & M32,
                            data=REQ))[3] == []
    assert sm.tick(NOW + sm_mod.NEIGH_WAIT_MS - 1) == []
    out = sm.tick(NOW + sm_mod.NEIGH_WAIT_MS)
    assert len(out) == 1 and out[0][47] & F.TH_RST and out[0][0:6] == GW
    c = sm.counters()
    assert (c["refused"], c["no_neigh"], c["neigh_wait"]) == (1, 1, 1) and e.flow_count() == 0


def test_a_backend_side_key_held_by_a_live_flow_resets_the_client_at_once(impl):
    """A nat VIP on the same backend has a live flow from the client's port: the backend
    could not take our SYN (one 4-tuple), so the splice connection is refused at once
    (rev_clash, with the reason) and the nat flow keeps going."""
    e, sm = setup(impl)
    nat_vip = "198.19.100.1"
    e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1]),
                    ServiceSpec(F.ip2int(nat_vip), 80, 6, defs.MODE_NAT, defs.SCHED_SEQ, [0], [1])])
    assert run(e, sm, F.tcp(GW, LB, CLIENT, nat_vip, 40000, 80, flags=F.TH_SYN))[1] == "nat_fwd"
    cookie = connect(e, sm)
    v, reason, out, made = run(e, sm, F.tcp(GW, LB, CLIENT, VIP, 40000, 80, seq=1001,
                                            ack=(cookie + 1) & M32, data=REQ))
    assert len(made) == 1 and made[0][47] & F.TH_RST and made[0][0:6] == GW
    c = sm.counters()
    assert (c["refused"], c["rev_clash"], c["neigh_wait"]) == (1, 1, 0)
    assert e.counters()["drop_rev_clash"] == 1 and e.flow_count() == 1      # the nat flow


def setup_fast(impl):
    """A VIP whose rules the fast path applies itself (default pool = backend 0)."""
    from fastpath import L7Spec
    e = make_engine(impl.Engine, ServiceSpec)
    e.set_splice_secret(bytes(16))
    e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1],
                                0, L7Spec(4096, ((defs.L7_DEFAULT, b"", 0),),
                                          ((defs.SCHED_SEQ, (0,), (1,)),)))])
    return e, SpliceManager(e, Ctx(Vip([l7.Rule("default", "", "default")])), LB)


def test_a_connection_decided_in_the_fast_path_costs_python_nothing(impl):
    e, sm = setup_fast(impl)
    cookie = connect(e, sm)
    v, reason, out, made = run(e, sm, F.tcp(GW, LB, CLIENT, VIP, 40000, 80, seq=1001,
                                            ack=(cookie + 1) & M32, data=REQ))
    assert (v, reason, made) == (defs.V_TX, "splice_decided", []) and out[47] == F.TH_SYN
    v, reason, out, made = run(e, sm, F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000,
                                            flags=F.TH_SYN | F.TH_ACK, seq=9, ack=1001))
    assert (reason, made) == ("splice_replay", []) and out.endswith(REQ)
    assert sm.tick(NOW + 100) == [] and sm.counters()["open"] == 0
    assert sm.counters()["conns"] == sm.counters()["adopted"] == 0


def test_python_adopts_a_fast_path_flow_whose_backend_is_slow_and_resends_the_syn(impl):
    e, sm = setup_fast(impl)
    cookie = connect(e, sm)
    syn = run(e, sm, F.tcp(GW, LB, CLIENT, VIP, 40000, 80, seq=1001, ack=(cookie + 1) & M32,
                           data=REQ))[2]
    assert sm.tick(NOW + 100) == [] and sm.counters()["adopted"] == 1
    assert sm.tick(NOW + 1000) == [syn]
    # the client resends its request meanwhile: nothing to do, it is decided
    assert run(e, sm, F.tcp(GW, LB, CLIENT, VIP, 40000, 80, seq=1001, ack=(cookie + 1) & M32,
                            data=REQ), now=NOW + 1100)[3] == []
    assert sm.counters()["refused"] == 0


def test_a_backend_reset_of_a_fast_path_flow_resets_the_client(impl):
    e, sm = setup_fast(impl)
    cookie = connect(e, sm)
    run(e, sm, F.tcp(GW, LB, CLIENT, VIP, 40000, 80, seq=1001, ack=(cookie + 1) & M32, data=REQ))
    v, reason, _, made = run(e, sm, F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000,
                                          flags=F.TH_RST | F.TH_ACK, ack=1001))
    assert reason == "punt_splice" and len(made) == 1
    assert made[0][47] & F.TH_RST and made[0][0:6] == GW
    assert sm.counters()["backend_reset"] == 1 and e.flow_count() == 0


def test_a_backends_time_wait_is_reset_and_the_syn_sent_again(impl):
    """The backend answers our SYN with a bare ACK (it holds TIME_WAIT for the 4-tuple and
    refused the SYN): a RST at that ACK's sequence, then the SYN again, at once; 3 times at
    most."""
    e, sm = setup_fast(impl)
    cookie = connect(e, sm)
    syn = run(e, sm, F.tcp(GW, LB, CLIENT, VIP, 40000, 80, seq=1001, ack=(cookie + 1) & M32,
                           data=REQ))[2]
    tw_ack = F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_ACK, seq=777, ack=0xABCDEF01)
    for k in range(3):
        v, reason, _, made = run(e, sm, tw_ack)
        assert (v, reason) == (defs.V_PUNT, "punt_splice")
        rst = F.tcp(LB, B1, CLIENT, B1_IP, 40000, B1_PORT, flags=F.TH_RST, seq=0xABCDEF01, ack=0,
                    win=0, ident=0, df=True)
        assert made == [rst, syn], k
    assert run(e, sm, tw_ack)[3] == []
    assert sm.counters()["time_wait_reset"] == 3
    # the backend's SYN-ACK after all: spliced as usual
    v, reason, out, made = run(e, sm, F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000,
                                            flags=F.TH_SYN | F.TH_ACK, seq=9, ack=1001))
    assert reason == "splice_replay" and out.endswith(REQ)


def test_a_frame_punted_while_connecting_and_handled_after_the_splice_is_left_alone(impl):
    """One burst: the client's second segment (punted: the flow is CONNECTING), then the
    backend's SYN-ACK (the flow is spliced). Python handles the punted frame after the whole
    burst, when the flow is already ESTABLISHED: it must not decide it again (and reset the
    client, as it once did under loss in the lab)."""
    e, sm = setup_fast(impl)
    cookie = connect(e, sm)
    assert run(e, sm, F.tcp(GW, LB, CLIENT, VIP, 40000, 80, seq=1001, ack=(cookie + 1) & M32,
                            data=REQ))[1] == "splice_decided"
    b = Batch(2)
    b.load([F.tcp(GW, LB, CLIENT, VIP, 40000, 80, seq=1001 + len(REQ), ack=(cookie + 1) & M32,
                  data=b"more"),
            F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_SYN | F.TH_ACK, seq=9,
                  ack=1001)])
    e.process(b, NOW)
    (v0, r0, punted), (v1, r1, _) = b.results()
    assert (r0, r1) == ("punt_splice", "splice_replay")
    assert sm.handle(punted, NOW) == []
    assert e.splice_flow(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)["state"] == defs.S_ESTABLISHED
    assert sm.counters()["late"] == 1 and sm.counters()["refused"] == 0
