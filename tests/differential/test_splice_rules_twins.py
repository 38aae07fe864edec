"""The fast path's content decisions against modes/splice/rules.py, the reference, and the twins against
each other: random rule sets (as RuleSet.fast_rules() hands them down) and random first
segments. Whenever the fast path decides, RuleSet.decide() on the same bytes decides the same
pool; on plain, complete heads it must decide whenever the reference does (so a fast path
that sends everything up fails here too); and both twins give the same bytes and counters."""
import struct

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fastpath import Batch, L7Spec, ServiceSpec, _engine, defs, twin
from lb.errors import LBError
from modes import splice as l7
from tools import frames as F

from tests.fastpath.fixtures import CLIENT, GW, LB, REALS, make_engine

VIP = "198.19.100.6"
M32 = 0xFFFFFFFF
NOW = 3_000_000
POOLS = ("p0", "p1", "p2")

words = st.sampled_from(["GET", "POST", "HEAD", "get", "a", "img", "x-y", ""])
paths = st.sampled_from(["/", "/blob", "/blob/", "/a", "/a?b", "/%41", "/blob#f", "/b"])
hosts = st.sampled_from(["a.test", "A.TEST", "a.test.", "b.a.test", "a.test:80", "a.test:x",
                         "", " a.test ", ".a.test", "[::1]", "a.test:", "\xe4.test", "xn--a"])
rule = st.one_of(
    st.builds(lambda v, p: l7.Rule("method", v, p), st.sampled_from(["GET", "POST", "HEAD"]),
              st.sampled_from(POOLS)),
    st.builds(lambda v, p: l7.Rule("path_prefix", v, p), st.sampled_from(["/", "/blob", "/a"]),
              st.sampled_from(POOLS)),
    st.builds(lambda v, p: l7.Rule("host", v, p),
              st.sampled_from(["a.test", "*.a.test", "b.a.test", "*.test"]), st.sampled_from(POOLS)),
    st.builds(lambda v, p: l7.Rule("prefix", v, p), st.sampled_from(["GET ", "POS", "\\x16\\x03"]),
              st.sampled_from(POOLS)),
    st.builds(lambda p: l7.Rule("default", "", p), st.sampled_from(POOLS)))


def head(method, path, version, host, extra, ending):
    lines = ["%s %s %s" % (method, path, version)]
    if host is not None:
        lines.append("Host: %s" % host)
    lines += extra
    return ending.join(lines).encode("latin-1") + ending.encode() * 2


nice = st.builds(head, st.sampled_from(["GET", "POST", "HEAD", "PUT"]), paths,
                 st.sampled_from(["HTTP/1.1", "HTTP/1.0"]), st.one_of(st.none(), hosts),
                 st.lists(st.sampled_from(["X-A: 1", "Accept: */*", "x:", "Cookie: a=b; c"]),
                          max_size=3), st.sampled_from(["\r\n", "\n"]))
odd = st.one_of(
    st.binary(max_size=120),
    st.lists(st.sampled_from([b"GET", b" ", b"/blob", b"HTTP/1.1", b"\r\n", b"\n", b"Host: a.test",
                              b"host:b", b"\x16\x03", b"http://h/", b"\t", b"\x00"]),
             max_size=14).map(b"".join),
    nice.map(lambda b: b[:-1]), nice.map(lambda b: b + b"Host: z\r\n\r\n"))


def ruleset(rules):
    try:
        return l7.RuleSet(rules, limit=512)
    except LBError:
        return None


def spec(rs):
    fast = rs.fast_rules()
    names = sorted({p for _, _, p in fast})
    # pool pN holds backend N alone, so the backend chosen names the pool
    pools = tuple((defs.SCHED_SEQ, (POOLS.index(n),), (1,)) for n in names)
    return L7Spec(512, tuple((k, a, names.index(p)) for k, a, p in fast), pools)


def first_segment(mod, l7spec, data):
    e = make_engine(mod.Engine, ServiceSpec)
    e.set_splice_secret(bytes(range(16)))
    e.set_services([ServiceSpec(F.ip2int(VIP), 80, 6, defs.MODE_SPLICE, defs.SCHED_SEQ, [0], [1],
                                0, l7spec)])
    out = []
    for frame in [F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_SYN, seq=99,
                        opts=struct.pack("!BBH", 2, 4, 1460))]:
        b = Batch(1)
        b.load([frame])
        e.process(b, NOW)
        out.append(b.results()[0])
    cookie = struct.unpack("!I", out[0][2][38:42])[0]
    for frame in [F.tcp(GW, LB, CLIENT, VIP, 40000, 80, seq=100, ack=(cookie + 1) & M32),
                  F.tcp(GW, LB, CLIENT, VIP, 40000, 80, flags=F.TH_ACK | F.TH_PUSH, seq=100,
                        ack=(cookie + 1) & M32, data=data)]:
        b = Batch(1)
        b.load([frame])
        e.process(b, NOW)
        out.append(b.results()[0])
    fl = e.splice_flow(F.ip2int(CLIENT), 40000, F.ip2int(VIP), 80)
    return out, e.counters(), fl


def check(rules, data, plain):
    rs = ruleset(rules)
    assume(rs is not None and rs.fast_rules() is not None)
    sp = spec(rs)
    got = [first_segment(mod, sp, data) for mod in (_engine, twin)]
    assert got[0] == got[1]
    (_, reason, _), fl = got[0][0][-1], got[0][2]
    ref = rs.decide(data)
    if reason == "splice_decided":
        assert isinstance(ref, l7.Decision) and ref.action == "forward"
        assert POOLS[fl["real"]] == ref.pool
    else:
        assert reason == "punt_splice"
        if plain:
            # a plain, complete head: the fast path decides whenever the reference does
            assert not isinstance(ref, l7.Decision), (data, ref)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(rule, min_size=1, max_size=4), nice)
def test_plain_heads_decided_like_the_reference(rules, data):
    plain = all(ord(c) < 128 for c in data.decode("latin-1")) and b"[" not in data
    check(rules, data, plain)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(rule, min_size=1, max_size=4), odd)
def test_odd_bytes_never_decided_unlike_the_reference(rules, data):
    check(rules, data, False)
