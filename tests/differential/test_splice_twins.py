"""Compiled == twin through whole splice connections: a real cookie handshake (the cookie is
read back from the SYN-ACK), binding, the backend's SYN-ACK, then random segments both ways
with random option layouts (TS, SACK, NOPs, odd alignment, malformed), flags, windows and
sequence numbers near 2^32. Verdicts, bytes, counters and flow state must agree throughout."""
import struct

from hypothesis import HealthCheck, given, settings, strategies as st

from fastpath import Batch, ServiceSpec, defs, twin
from tests.fastpath.fixtures import B1, CLIENT, GW, LB, REALS, make_engine
from tools import frames as F

from fastpath import _engine

VIP = "198.19.100.6"
B1_IP, B1_PORT = REALS[0][0], REALS[0][1]
M32 = 0xFFFFFFFF

opt_piece = st.one_of(
    st.just(b"\x01"),
    st.tuples(st.integers(0, M32), st.integers(0, M32)).map(lambda t: b"\x08\x0a" + struct.pack("!II", *t)),
    st.lists(st.tuples(st.integers(0, M32), st.integers(0, M32)), min_size=1, max_size=3).map(
        lambda bl: bytes([5, 2 + 8 * len(bl)]) + b"".join(struct.pack("!II", *x) for x in bl)),
    st.just(b"\x04\x02"), st.just(b"\x02\x04\x05\xb4"), st.just(b"\x03\x03\x07"),
    st.binary(min_size=1, max_size=4),           # junk, sometimes malformed
)


def options(pieces):
    o = b"".join(pieces)[:40]
    return o + b"\0" * (-len(o) % 4)


ip_options = st.sampled_from([b"", b"", b"\x07\x07\x04\0\0\0\0\x01", b"\x01" * 4])
segment = st.tuples(st.booleans(), st.sampled_from([F.TH_ACK, F.TH_ACK | F.TH_PUSH, F.TH_FIN | F.TH_ACK,
                                                    F.TH_RST, F.TH_SYN | F.TH_ACK, F.TH_ACK | F.TH_SYN]),
                    st.integers(0, M32), st.integers(0, M32), st.integers(0, 65535),
                    st.lists(opt_piece, max_size=5), st.binary(max_size=30), ip_options)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(c_isn=st.integers(0, M32), s_isn=st.integers(0, M32), syn_opt=st.lists(opt_piece, max_size=5),
       ack_opt=st.lists(opt_piece, max_size=4), bsyn_opt=st.lists(opt_piece, max_size=5),
       segs=st.lists(segment, max_size=12), bind=st.booleans(), dt=st.integers(0, 300_000),
       first=st.sampled_from([b"", b"GET / HTTP/1.0\r\n\r\n"]), req=st.binary(max_size=1600),
       fin=st.booleans(), synacks=st.integers(1, 3),
       icmps=st.lists(st.tuples(st.booleans(), st.integers(0, M32), st.integers(0, M32),
                                st.sampled_from([28, 40, 48])), max_size=3))
def test_splice_connections_same_on_both_twins(c_isn, s_isn, syn_opt, ack_opt, bsyn_opt, segs, bind,
                                               dt, first, req, fin, synacks, icmps):
    outs = []
    for mod in (_engine, twin):
        e = make_engine(mod.Engine, ServiceSpec)
        e.set_splice_secret(b"k" * 16)
        e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1])])
        now = 1_000_000
        log = []

        def run(frame):
            b = Batch(1)
            b.load([frame])
            e.process(b, now)
            log.append(b.results()[0])
            return b.results()[0]

        v, _, out = run(F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_SYN, seq=c_isn,
                              opts=options(syn_opt)))
        cookie = struct.unpack("!I", out[38:42])[0] if v == defs.V_TX else 0
        now += dt
        run(F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK, seq=(c_isn + 1) & M32,
                  ack=(cookie + 1) & M32, data=first, opts=options(ack_opt)))
        log.append(e.splice_waiting(now + defs.SPLICE_WAIT_HANDOFF_MS))
        if bind:
            log.append(e.splice_bind(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80, 0, now, req, fin))
            log.append(e.splice_syn(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80))
            for _ in range(synacks):      # the backend resends it when our answer is lost
                run(F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=F.TH_SYN | F.TH_ACK,
                          seq=s_isn, ack=(c_isn + 1) & M32, opts=options(bsyn_opt)))
        for from_client, flags, seq, ack, win, opt, data, ipo in segs:
            now += 7
            if from_client:
                run(F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=flags, seq=seq, ack=ack, win=win,
                          opts=options(opt), data=data, ip_opts=ipo))
            else:
                run(F.tcp(B1, LB, B1_IP, CLIENT, B1_PORT, 40000, flags=flags, seq=seq, ack=ack,
                          win=win, opts=options(opt), data=data, ip_opts=ipo))
        for client_side, seq, ack, quote in icmps:     # ICMP errors about the flow's packets
            if client_side:
                about = F.tcp(LB, GW, VIP, CLIENT, 80, 40000, seq=seq, ack=ack, data=b"r" * 20)
                run(F.icmp_error(GW, LB, "198.18.0.1", VIP, about, quote=quote))
            else:
                about = F.tcp(LB, B1, CLIENT, B1_IP, 40000, B1_PORT, seq=seq, ack=ack, data=b"q")
                run(F.icmp_error(B1, LB, "198.19.0.1", CLIENT, about, quote=quote))
        outs.append((log, e.counters(), sorted(e.flows()),
                     e.splice_flow(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80),
                     e.real_stats(0), e.vip_stats(0)))
    assert outs[0] == outs[1]
