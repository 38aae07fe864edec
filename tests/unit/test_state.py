"""lb/state.py against the real fast-path engines: every test runs on both twins (ids `cy`,
the compiled engine, and `py`, the twin in fastpath/twin/).

Every command's happy path and error path; a failed command leaves vip.list and the engine
untouched; removed backends keep their real slot while flows use it.
"""
import ipaddress

import dpkt
import pytest

import fastpath
from fastpath import defs
from lb import config
from lb.errors import LBError
from lb.state import LBState

LB_IP, LB_MAC = "198.19.0.2", bytes.fromhex("025457000002")
GW_IP, GW_MAC = "198.19.0.1", bytes.fromhex("025457000001")
CLIENT_IP = "198.18.0.10"
VIP = "198.19.100.1"
B1, B2, B3 = "198.19.0.11", "198.19.0.12", "198.19.0.13"
MACS = {B1: bytes.fromhex("02545700000b"), B2: bytes.fromhex("02545700000c"),
        B3: bytes.fromhex("02545700000d")}
NOW = 1_000_000


def ip(s):
    return int(ipaddress.IPv4Address(s))


class SpyEngine:
    """Forwards to the real engine and records the calls that change it."""

    def __init__(self, engine):
        self._e = engine
        self.calls = []

    def __getattr__(self, name):
        attr = getattr(self._e, name)
        if name.startswith("set_"):
            def record(*a):
                self.calls.append((name,) + a)
                return attr(*a)
            return record
        return attr


def make_cfg(vips=None):
    return config.parse({"lb": {"address": LB_IP, "gateway": GW_IP},
                         "flows": {"capacity": 1024}, "vip": vips or []})


@pytest.fixture
def engine(impl):
    e = impl.Engine(1024)
    e.set_local(ip(LB_IP), LB_MAC)
    return SpyEngine(e)


@pytest.fixture
def st(engine):
    s = LBState(engine, make_cfg([
        {"address": VIP, "port": 80, "scheduler": "rr",
         "backend": [{"address": B1}, {"address": B2, "port": 8080, "weight": 2}]}]))
    s.clock = lambda: NOW + 2500
    for b, mac in MACS.items():
        s.learn_neighbor(ip(b), mac)
    s.learn_neighbor(ip(GW_IP), GW_MAC)
    engine.calls.clear()
    return s


def tcp_frame(sport, flags=dpkt.tcp.TH_SYN, dport=80, vip=VIP):
    t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=1000, off=5)
    p = dpkt.ip.IP(src=ipaddress.IPv4Address(CLIENT_IP).packed,
                   dst=ipaddress.IPv4Address(vip).packed, p=dpkt.ip.IP_PROTO_TCP, ttl=64, data=t)
    p.len = len(p)
    return bytes(dpkt.ethernet.Ethernet(dst=LB_MAC, src=bytes.fromhex("020000000001"),
                                        type=dpkt.ethernet.ETH_TYPE_IP, data=p))


def send(engine, *frames, now=NOW):
    b = fastpath.Batch(size=max(1, len(frames)))
    b.load(list(frames))
    engine.process(b, now)
    return b.results()


def forwarded_to(result):
    """(backend ip string, port, dst mac) of a nat_fwd frame."""
    verdict, reason, frame = result
    assert (verdict, reason) == (defs.V_TX, "nat_fwd"), (verdict, reason)
    eth = dpkt.ethernet.Ethernet(frame)
    return str(ipaddress.IPv4Address(eth.data.dst)), eth.data.data.dport, eth.dst


def listing(st):
    return st.handle("vip.list", {})


# --- construction and the daemon's queries ---------------------------------------------------

def test_config_applied(st):
    [v] = listing(st)
    assert v == {"vip": "198.19.100.1:80", "proto": "tcp", "mode": "nat", "scheduler": "rr",
                 "maglev_size": None, "on_backend_down": "expire", "health": None,
                 "backends": [{"backend": "198.19.0.11:80", "weight": 1, "pool": "default", "real": 0,
                               "health": None},
                              {"backend": "198.19.0.12:8080", "weight": 2, "pool": "default", "real": 1,
                               "health": None}]}
    assert st.vip_addresses() == {ip(VIP)}
    assert st.wanted_neighbors() == {ip(B1), ip(B2), ip(GW_IP)}


def test_traffic_flows_to_the_learnt_macs(st, engine):
    r = send(engine, tcp_frame(40000), tcp_frame(40001))
    assert forwarded_to(r[0]) == (B1, 80, MACS[B1])
    assert forwarded_to(r[1]) == (B2, 8080, MACS[B2])


def test_mac_unknown_until_learnt_then_given_to_new_slots(engine):
    s = LBState(engine, make_cfg([{"address": VIP, "port": 80, "scheduler": "rr",
                                   "backend": [{"address": B1}]}]))
    assert send(engine, tcp_frame(40000))[0][1] == "drop_no_neigh"
    s.learn_neighbor(ip(B1), MACS[B1])
    assert ("set_real", 0, ip(B1), 80, MACS[B1]) in engine.calls
    assert forwarded_to(send(engine, tcp_frame(40001))[0])[2] == MACS[B1]
    # a new slot for the same IP (another port) starts with the MAC already known
    s.handle("backend.add", {"vip": VIP + ":80", "backend": B1 + ":81"})
    assert ("set_real", 1, ip(B1), 81, MACS[B1]) in engine.calls


def test_gateway_mac_learnt(st, engine):
    st.learn_neighbor(ip(GW_IP), b"\x02" * 6)
    assert engine.calls == [("set_gateway", b"\x02" * 6)]


def test_bad_config_raises_lberror(engine):
    cfg = make_cfg([{"address": VIP, "port": 80}])
    cfg.vips[0].scheduler = "nope"         # built by hand, past config.parse
    with pytest.raises(LBError) as ei:
        LBState(engine, cfg)
    assert ei.value.field == "scheduler"
    assert engine.calls == []


# --- commands: happy paths ---------------------------------------------------------------------

def test_vip_add_defaults(st, engine):
    v = st.handle("vip.add", {"vip": "198.19.100.2:443"})
    assert v == {"vip": "198.19.100.2:443", "proto": "tcp", "mode": "nat",
                 "scheduler": "maglev", "maglev_size": 65537, "on_backend_down": "expire",
                 "health": None, "backends": []}
    assert [c[0] for c in engine.calls] == ["set_services"]
    specs = engine.calls[0][1]
    assert len(specs) == 2
    new = [s for s in specs if s.port == 443][0]
    assert (new.vip, new.proto, new.mode, new.sched, new.table) == \
        (ip("198.19.100.2"), defs.PROTO_TCP, defs.MODE_NAT, defs.SCHED_HASH5, [])
    assert st.vip_addresses() == {ip(VIP), ip("198.19.100.2")}


def test_vip_add_udp_with_options_then_traffic(st, engine):
    v = st.handle("vip.add", {"vip": VIP + ":53", "proto": "udp", "mode": "nat",
                              "scheduler": "maglev", "maglev_size": 4093})
    assert (v["proto"], v["maglev_size"]) == ("udp", 4093)
    v = st.handle("backend.add", {"vip": VIP + ":53", "proto": "udp", "backend": B3 + ":5353",
                                  "weight": 3})
    assert v["backends"] == [{"backend": "198.19.0.13:5353", "weight": 3, "pool": "default", "real": 2,
                              "health": None}]
    spec = [s for s in engine.calls[-1][1] if s.proto == defs.PROTO_UDP][0]
    assert len(spec.table) == 4093 and set(spec.table) == {2}


def test_vip_set_changes_mode_of_new_flows_and_scheduler(st, engine):
    v = st.handle("vip.set", {"vip": VIP + ":80", "scheduler": "maglev", "maglev_size": 251})
    assert (v["scheduler"], v["maglev_size"], len(v["backends"])) == ("maglev", 251, 2)
    v = st.handle("vip.set", {"vip": VIP + ":80", "scheduler": "lc"})
    assert (v["scheduler"], v["maglev_size"]) == ("lc", None)
    spec = engine.calls[-1][1][0]
    assert (spec.sched, spec.table, spec.weights) == (defs.SCHED_LEASTCONN, [0, 1], [1, 2])


def test_vip_del(st, engine):
    send(engine, tcp_frame(40000))
    v = st.handle("vip.del", {"vip": VIP + ":80"})
    assert v["vip"] == "198.19.100.1:80"
    assert listing(st) == [] and st.vip_addresses() == set()
    assert engine.calls[-1] == ("set_services", [])
    # the flow on B1 keeps its slot: B1 is still wanted (its MAC), B2 is gone after gc
    assert st.gc() == 1
    assert st.wanted_neighbors() == {ip(B1), ip(GW_IP)}


def test_backend_add_del_weight(st, engine):
    v = st.handle("backend.add", {"vip": VIP + ":80", "proto": "tcp", "backend": B3})
    assert v["backends"][-1] == {"backend": "198.19.0.13:80", "weight": 1, "pool": "default", "real": 2,
                                 "health": None}
    assert engine.calls[0] == ("set_real", 2, ip(B3), 80, MACS[B3])
    assert engine.calls[1][0] == "set_services"
    assert engine.calls[1][1][0].table == [0, 1, 2]

    v = st.handle("backend.weight", {"vip": VIP + ":80", "backend": B2 + ":8080", "weight": 0})
    assert [b["weight"] for b in v["backends"]] == [1, 0, 1]
    assert engine.calls[-1][1][0].table == [0, 2]

    v = st.handle("backend.del", {"vip": VIP + ":80", "backend": B1})
    assert [b["backend"] for b in v["backends"]] == ["198.19.0.12:8080", "198.19.0.13:80"]
    assert engine.calls[-1][1][0].table == [2]
    assert st.wanted_neighbors() == {ip(B1), ip(B2), ip(B3), ip(GW_IP)}   # B1 not gc'd yet
    assert st.gc() == 1
    assert ip(B1) not in st.wanted_neighbors()


def test_weight_zero_keeps_existing_flow_on_its_backend(st, engine):
    assert forwarded_to(send(engine, tcp_frame(40000))[0])[0] == B1
    st.handle("backend.weight", {"vip": VIP + ":80", "backend": B1, "weight": 0})
    r = send(engine, tcp_frame(40000, dpkt.tcp.TH_ACK), tcp_frame(40001), tcp_frame(40002))
    assert [forwarded_to(x)[0] for x in r] == [B1, B2, B2]


def test_conns(st, engine):
    send(engine, tcp_frame(40000), now=NOW)
    send(engine, tcp_frame(40000, dpkt.tcp.TH_ACK), now=NOW + 1000)
    send(engine, tcp_frame(40001), now=NOW + 2000)
    r = st.handle("conns", {})
    assert (r["total"], r["shown"]) == (2, 2)
    c = [x for x in r["conns"] if x["client"] == "198.18.0.10:40000"][0]
    assert c.pop("state") in defs.STATE_NAMES       # the engine's TCP tracking decides
    assert c == {"client": "198.18.0.10:40000", "vip": "198.19.100.1:80", "proto": "tcp",
                 "backend": "198.19.0.11:80", "mode": "nat",
                 "age_s": 2.5, "idle_s": 1.5, "packets_fwd": 2, "packets_rev": 0,
                 "bytes_fwd": 2 * 54, "bytes_rev": 0}
    c = [x for x in r["conns"] if x["client"] == "198.18.0.10:40001"][0]
    assert (c["state"], c["backend"], c["age_s"]) == ("SYN_SENT", "198.19.0.12:8080", 0.5)
    assert st.handle("conns", {"limit": 1})["shown"] == 1
    assert st.handle("conns", {"vip": VIP + ":80"})["total"] == 2
    assert st.handle("conns", {"vip": VIP + ":81"})["total"] == 0
    assert st.handle("conns", {"proto": "udp"})["total"] == 0


def test_stats(st, engine):
    send(engine, tcp_frame(40000), tcp_frame(40001, vip="198.19.100.77"))
    st.extra_stats = lambda: {"io": {"rx_bursts": 3}}
    r = st.handle("stats", {})
    assert r["counters"] == {"rx_frames": 2, "nat_fwd": 1, "flow_created": 1,
                             "drop_unknown_dest": 1}
    assert r["flow_count"] == 1
    assert r["vips"] == [{"vip": "198.19.100.1:80", "proto": "tcp", "mode": "nat",
                          "scheduler": "rr", "on_backend_down": "expire", "health": None,
                          "backends": [{"backend": "198.19.0.11:80", "weight": 1, "conns": 1,
                                        "health": None},
                                       {"backend": "198.19.0.12:8080", "weight": 2,
                                        "conns": 0, "health": None}]}]
    assert r["modes"] == {"nat": {"nat_fwd": 1, "nat_rev": 0, "nat_icmp_fwd": 0, "nat_icmp_rev": 0,
                                  "nat_frag_fwd": 0, "nat_frag_rev": 0}}
    assert r["io"] == {"rx_bursts": 3}
    assert r["draining"] == []
    full = st.handle("stats", {"all": True})
    assert set(full["counters"]) == set(defs.COUNTERS)
    st.handle("backend.del", {"vip": VIP + ":80", "backend": B1})
    assert st.handle("stats", {})["draining"] == [{"backend": "198.19.0.11:80", "conns": 1}]


# --- commands: errors name the field and change nothing ----------------------------------------

ERRORS = [
    ("vip.add", {}, "vip", "missing"),
    ("vip.add", {"vip": "198.19.100.1"}, "vip", "IP:PORT"),
    ("vip.add", {"vip": "198.19.100.1:0"}, "vip", "1..65535"),
    ("vip.add", {"vip": VIP + ":80"}, "vip", "exists"),
    ("vip.add", {"vip": LB_IP + ":80"}, "vip", "own address"),
    ("vip.add", {"vip": VIP + ":81", "proto": "icmp"}, "proto", "tcp or udp"),
    ("vip.add", {"vip": VIP + ":81", "mode": "tunnel9"}, "mode", "unknown mode"),
    ("vip.add", {"vip": VIP + ":81", "scheduler": "fifo"}, "scheduler", "unknown scheduler"),
    ("vip.add", {"vip": VIP + ":81", "maglev_size": 1000}, "maglev_size", "prime"),
    ("vip.add", {"vip": VIP + ":81", "scheduler": "rr", "maglev_size": 251}, "maglev_size",
     "only applies"),
    ("vip.add", {"vip": VIP + ":81", "colour": "red"}, "colour", "unknown argument"),
    ("vip.set", {"vip": VIP + ":81"}, "vip", "no VIP"),
    ("vip.set", {"vip": VIP + ":80", "scheduler": "maglev", "maglev_size": 199}, "maglev_size",
     "251"),
    ("vip.del", {"vip": VIP + ":80", "proto": "udp"}, "vip", "no VIP"),
    ("vip.del", {"vip": "nonsense"}, "vip", "IP:PORT"),
    ("backend.add", {"vip": VIP + ":80"}, "backend", "missing"),
    ("backend.add", {"vip": VIP + ":80", "backend": B1}, "backend", "already"),
    ("backend.add", {"vip": VIP + ":80", "backend": "198.19.0:80"}, "backend", "IPv4"),
    ("backend.add", {"vip": VIP + ":80", "backend": B3, "weight": -1}, "weight", "0..65535"),
    ("backend.add", {"vip": VIP + ":80", "backend": B3, "weight": "1"}, "weight", "0..65535"),
    ("backend.add", {"vip": VIP + ":99", "backend": B3}, "vip", "no VIP"),
    ("backend.del", {"vip": VIP + ":80", "backend": B2}, "backend", "not a backend"),
    ("backend.weight", {"vip": VIP + ":80", "backend": B1}, "weight", "missing"),
    ("backend.weight", {"vip": VIP + ":80", "backend": B1, "weight": 70000}, "weight",
     "0..65535"),
    ("backend.weight", {"vip": VIP + ":80", "backend": B3, "weight": 1}, "backend",
     "not a backend"),
    ("conns", {"vip": "x"}, "vip", "IP:PORT"),
    ("conns", {"limit": 0}, "limit", "1..1000000"),
    ("stats", {"all": "yes"}, "all", "true or false"),
    ("vip.list", {"verbose": True}, "verbose", "unknown argument"),
    ("vip.flush", {}, "cmd", "unknown command"),
    ("status", {}, "cmd", "unknown command"),     # the daemon answers status itself
]


@pytest.mark.parametrize("cmd,args,field,needle", ERRORS,
                         ids=["%s-%s" % (e[0], e[2]) for e in ERRORS])
def test_errors_name_field_and_change_nothing(st, engine, cmd, args, field, needle):
    before = listing(st)
    wanted = st.wanted_neighbors()
    with pytest.raises(LBError) as ei:
        st.handle(cmd, args)
    assert ei.value.field == field
    assert needle in ei.value.message, ei.value.message
    assert listing(st) == before
    assert st.wanted_neighbors() == wanted
    assert engine.calls == []


def test_args_must_be_an_object(st):
    with pytest.raises(LBError) as ei:
        st.handle("vip.list", [1])
    assert ei.value.field == "args"


def test_maglev_backend_limit_names_backend(engine):
    s = LBState(engine, make_cfg([{"address": VIP, "port": 80, "maglev_size": 251,
                                   "backend": [{"address": B1}, {"address": B2}]}]))
    engine.calls.clear()
    with pytest.raises(LBError) as ei:
        s.handle("backend.add", {"vip": VIP + ":80", "backend": B3})
    assert ei.value.field == "backend" and "maglev_size" in ei.value.message
    assert engine.calls == []


def test_failure_while_building_tables_changes_nothing(st, engine, monkeypatch):
    from lb import schedulers

    def boom(*a):
        raise LBError("scheduler", "injected")
    monkeypatch.setattr(schedulers, "build", boom)
    before = listing(st)
    with pytest.raises(LBError):
        st.handle("backend.add", {"vip": VIP + ":80", "backend": B3})   # a new slot, too
    assert listing(st) == before and engine.calls == []
    monkeypatch.undo()
    v = st.handle("backend.add", {"vip": VIP + ":80", "backend": B3})
    assert v["backends"][-1]["real"] == 2          # the slot it would have taken


# --- real slots --------------------------------------------------------------------------------

def test_removed_backend_keeps_slot_while_it_has_flows(st, engine, monkeypatch):
    assert forwarded_to(send(engine, tcp_frame(40000))[0])[0] == B1      # a flow on slot 0
    st.handle("backend.del", {"vip": VIP + ":80", "backend": B1})
    assert engine.real_conns(0) == 1
    assert st.gc() == 0
    # a new backend must not take slot 0 while the flow lives
    v = st.handle("backend.add", {"vip": VIP + ":80", "backend": B3})
    assert v["backends"][-1]["real"] == 2
    # the old flow still reaches B1, through slot 0
    assert forwarded_to(send(engine, tcp_frame(40000, dpkt.tcp.TH_ACK))[0])[0] == B1
    # with every slot taken, a fourth real cannot have slot 0 either
    monkeypatch.setattr(defs, "MAX_REALS", 3)
    engine.calls.clear()
    with pytest.raises(LBError) as ei:
        st.handle("backend.add", {"vip": VIP + ":80", "backend": "198.19.0.14"})
    assert ei.value.field == "backend" and "real slots" in ei.value.message
    assert engine.calls == []
    # once the flow is gone (expired), slot 0 is taken back
    assert engine.expire(NOW + 10_000_000, 2048) == 1
    assert engine.real_conns(0) == 0
    v = st.handle("backend.add", {"vip": VIP + ":80", "backend": "198.19.0.14"})
    assert v["backends"][-1] == {"backend": "198.19.0.14:80", "weight": 1, "pool": "default", "real": 0,
                                 "health": None}


def test_gc_frees_slots_for_reuse(st, engine):
    st.handle("backend.del", {"vip": VIP + ":80", "backend": B2 + ":8080"})
    assert st.gc() == 1
    v = st.handle("backend.add", {"vip": VIP + ":80", "backend": B3})
    assert v["backends"][-1]["real"] == 1
    assert ("set_real", 1, ip(B3), 80, MACS[B3]) in engine.calls


def test_readding_a_draining_backend_keeps_its_slot(st, engine):
    send(engine, tcp_frame(40000))
    st.handle("backend.del", {"vip": VIP + ":80", "backend": B1})
    v = st.handle("backend.add", {"vip": VIP + ":80", "backend": B1})
    assert v["backends"][-1]["real"] == 0
    assert not [c for c in engine.calls if c[0] == "set_real"]


def test_same_real_in_two_vips_shares_a_slot(st):
    st.handle("vip.add", {"vip": VIP + ":8080", "scheduler": "wrr"})
    v = st.handle("backend.add", {"vip": VIP + ":8080", "backend": B1 + ":80"})
    assert v["backends"][0]["real"] == 0
    st.handle("backend.del", {"vip": VIP + ":80", "backend": B1})
    assert st.gc() == 0              # still used by :8080
