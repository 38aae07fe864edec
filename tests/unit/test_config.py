"""lb/config.py: the TOML schema, every error naming its field, and the shared validators."""
import copy

import pytest

from fastpath import defs
from lb import config
from lb.errors import LBError

GOOD = """
[io]
backend = "tap"
interface = "lbtap"

[lb]
address = "198.19.0.2"
mac = "02:54:57:00:00:02"
gateway = "198.19.0.1"
control_socket = "/run/threeway/lbd.sock"

[flows]
capacity = 262144
[flows.timeouts]
tcp_established = 900
udp = 30

[[vip]]
address = "198.19.100.1"
port = 80
proto = "tcp"
mode = "nat"
scheduler = "maglev"
maglev_size = 65537
  [[vip.backend]]
  address = "198.19.0.11"
  port = 80
  weight = 1
  [[vip.backend]]
  address = "198.19.0.12"
  weight = 0

[[vip]]
address = "198.19.100.1"
port = 53
proto = "udp"
scheduler = "wrr"
  [[vip.backend]]
  address = "198.19.0.13"
  port = 5353
  weight = 7
"""


def good_dict():
    import tomllib
    return tomllib.loads(GOOD)


def errors_of(mutate):
    d = good_dict()
    mutate(d)
    with pytest.raises(LBError) as ei:
        config.parse(d)
    return ei.value


def test_load_good_file(tmp_path):
    p = tmp_path / "lb.toml"
    p.write_text(GOOD)
    cfg = config.load(p)
    assert cfg.path == str(p)
    assert cfg.io == config.IOConfig("tap", "lbtap")
    assert cfg.lb.address == "198.19.0.2" and cfg.lb.ip == 0xC6130002
    assert cfg.lb.mac_bytes == bytes.fromhex("025457000002")
    assert cfg.lb.gateway_ip == 0xC6130001
    assert cfg.flows.capacity == 262144
    assert cfg.flows.timeouts == dict(defs.DEFAULT_TIMEOUTS, udp=30)
    v0, v1 = cfg.vips
    assert (v0.address, v0.port, v0.proto, v0.mode, v0.scheduler, v0.maglev_size) == \
        ("198.19.100.1", 80, "tcp", "nat", "maglev", 65537)
    assert [(b.address, b.port, b.weight) for b in v0.backends] == \
        [("198.19.0.11", 80, 1), ("198.19.0.12", 80, 0)]          # port defaults to VIP's
    assert v1.key == (0xC6136401, 53, defs.PROTO_UDP)
    assert v1.maglev_size is None and v1.backends[0].key == "198.19.0.13:5353"


def test_defaults_of_a_minimal_config():
    cfg = config.parse({"lb": {"address": "198.19.0.2"},
                        "vip": [{"address": "198.19.100.9", "port": 443}]})
    assert cfg.io.backend == "tap" and cfg.lb.mac is None and cfg.lb.gateway is None
    assert cfg.lb.control_socket == config.DEFAULT_SOCKET
    assert cfg.flows.capacity == config.DEFAULT_CAPACITY
    assert cfg.flows.timeouts == defs.DEFAULT_TIMEOUTS
    v = cfg.vips[0]
    assert (v.proto, v.mode, v.scheduler, v.maglev_size, v.backends) == \
        ("tcp", "nat", "maglev", 65537, [])


def test_syntax_error_names_file_and_line(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[lb]\naddress = "198.19.0.2"\nmac = \n')
    with pytest.raises(LBError) as ei:
        config.load(p)
    assert ei.value.field == str(p)
    assert "line 3" in ei.value.message


def test_missing_file(tmp_path):
    with pytest.raises(LBError) as ei:
        config.load(tmp_path / "nope.toml")
    assert ei.value.field.endswith("nope.toml") and "cannot read" in ei.value.message


def _set(path, value):
    def mutate(d):
        node = d
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return mutate


def _del(path):
    def mutate(d):
        node = d
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]
    return mutate


def _small_maglev(d):
    d["vip"][0]["maglev_size"] = 251            # room for 2 backends (>= 100 per backend)
    d["vip"][0]["backend"].append({"address": "198.19.0.14"})


@pytest.mark.parametrize("mutate,field,needle", [
    (_set(["vip", 0, "backend", 1, "weight"], -1), "vip[0].backend[1].weight",
     "must be an integer 0..65535, got -1"),
    (_set(["vip", 0, "backend", 1, "weight"], 65536), "vip[0].backend[1].weight", "0..65535"),
    (_set(["vip", 0, "backend", 1, "weight"], True), "vip[0].backend[1].weight", "True"),
    (_set(["vip", 0, "backend", 1, "weight"], "2"), "vip[0].backend[1].weight", "'2'"),
    (_set(["vip", 0, "backend", 0, "address"], "198.19.0.300"), "vip[0].backend[0].address",
     "not an IPv4"),
    (_set(["vip", 0, "backend", 0, "port"], 0), "vip[0].backend[0].port", "1..65535"),
    (_set(["vip", 0, "backend", 0, "wieght"], 1), "vip[0].backend[0].wieght",
     "did you mean 'weight'"),
    (_del(["vip", 0, "backend", 0, "address"]), "vip[0].backend[0].address", "missing"),
    (_set(["vip", 0, "backend", 1, "address"], "198.19.0.11"), "vip[0].backend[1]",
     "duplicate of vip[0].backend[0]"),
    (_set(["vip", 1, "port"], 70000), "vip[1].port", "1..65535"),
    (_set(["vip", 1, "port"], 80), None, None),        # udp/80 next to tcp/80 is fine
    (_set(["vip", 1, "proto"], "sctp"), "vip[1].proto", "tcp or udp"),
    (_set(["vip", 1, "mode"], "warp"), "vip[1].mode", "unknown mode 'warp'"),
    (_set(["vip", 1, "scheduler"], "random"), "vip[1].scheduler", "unknown scheduler"),
    (_set(["vip", 1, "maglev_size"], 65537), "vip[1].maglev_size", "only applies"),
    (_set(["vip", 0, "maglev_size"], 65536), "vip[0].maglev_size", "prime"),
    (_small_maglev, "vip[0].maglev_size", "too small for 3 backends"),
    (_set(["vip", 0, "adress"], "1.2.3.4"), "vip[0].adress", "did you mean 'address'"),
    (_del(["vip", 0, "port"]), "vip[0].port", "missing"),
    (_set(["vip", 0, "address"], "198.19.0.2"), "vip[0].address", "balancer's own"),
    (_set(["vip", 0, "backend"], {"address": "1.2.3.4"}), "vip[0].backend", "array"),
    (_set(["vip"], {"address": "1.2.3.4"}), "vip", "array"),
    (_set(["lb", "address"], "::1"), "lb.address", "not an IPv4"),
    (_del(["lb", "address"]), "lb.address", "missing"),
    (_del(["lb"]), "lb", "missing"),
    (_set(["lb", "mac"], "02:54:57:00:00"), "lb.mac", "MAC"),
    (_set(["lb", "mac"], "02:54:57:00:00:zz"), "lb.mac", "MAC"),
    (_set(["lb", "gateway"], 42), "lb.gateway", "IPv4"),
    (_set(["lb", "gatway"], "198.19.0.1"), "lb.gatway", "did you mean 'gateway'"),
    (_set(["io", "backend"], "pcap"), "io.backend", "tap, afpacket"),
    (_set(["io", "interface"], "x" * 16), "io.interface", "1..15"),
    (_set(["io", "offload"], "yes"), "io.offload", "must be true or false"),
    (_set(["io", "offload"], 1), "io.offload", "got 1"),
    (_set(["flows", "capacity"], 0), "flows.capacity", "1..16777216"),
    (_set(["flows", "capacity"], 16 * 1024 * 1024 + 1), "flows.capacity", "1..16777216"),
    (_set(["flows", "capacity"], 2.5), "flows.capacity", "2.5"),
    (_set(["flows", "timeouts", "tcp_estab"], 5), "flows.timeouts.tcp_estab",
     "did you mean 'tcp_established'"),
    (_set(["flows", "timeouts", "udp"], 0), "flows.timeouts.udp", "seconds"),
    (_set(["flows", "timeouts"], 5), "flows.timeouts", "must be a table"),
    (_set(["extra"], {}), "extra", "unknown key"),
])
def test_errors_name_the_field(mutate, field, needle):
    if field is None:
        d = good_dict()
        mutate(d)
        config.parse(d)
        return
    e = errors_of(mutate)
    assert e.field == field
    assert needle in e.message, e.message
    assert str(e).startswith(field + ": ")


@pytest.mark.parametrize("backend", ["tap", "afpacket"])
@pytest.mark.parametrize("offload", [True, False])
def test_offload_on_either_backend(backend, offload):
    d = good_dict()
    d["io"].update(backend=backend, interface="dp0", offload=offload)
    assert config.parse(d).io == config.IOConfig(backend, "dp0", offload)


def test_offload_left_out_is_the_default():
    """None: lb/io.py open_backend turns vnet headers on where the device takes them."""
    d = good_dict()
    d["io"].pop("offload", None)
    assert config.parse(d).io.offload is None


def test_duplicate_vip():
    def mutate(d):
        d["vip"].append(copy.deepcopy(d["vip"][0]))
    e = errors_of(mutate)
    assert e.field == "vip[2]" and "duplicate of vip[0]" in e.message


def test_mode_validate_errors_are_prefixed(monkeypatch):
    import modes

    class Picky(modes.Mode):
        name, code = "nat", defs.MODE_NAT

        def validate(self, vip_port, proto, backends):
            if any(port != vip_port for _, port, _ in backends):
                raise LBError("backend", "this mode keeps the VIP port")

    monkeypatch.setitem(modes.REGISTRY, "nat", Picky())
    e = errors_of(_set(["vip", 1, "mode"], "nat"))
    assert e.field == "vip[1].backend" and "keeps the VIP port" in e.message


@pytest.mark.parametrize("fn,args,result", [
    (config.parse_endpoint, ("198.19.100.1:80", "vip"), (0xC6136401, 80)),
    (config.parse_backend, ("198.19.0.11", "backend"), (0xC613000B, None)),
    (config.parse_backend, ("198.19.0.11:8080", "backend"), (0xC613000B, 8080)),
    (config.parse_mac, ("02:54:57:00:00:0A", "mac"), bytes.fromhex("02545700000a")),
    (config.check_weight, (0,), 0),
    (config.check_proto, ("udp",), "udp"),
    (config.check_scheduler, ("lc",), "lc"),
])
def test_validators_accept(fn, args, result):
    assert fn(*args) == result


@pytest.mark.parametrize("fn,args,field", [
    (config.parse_endpoint, ("198.19.100.1", "vip"), "vip"),
    (config.parse_endpoint, ("198.19.100.1:http", "vip"), "vip"),
    (config.parse_endpoint, ("198.19.100.1:0", "vip"), "vip"),
    (config.parse_endpoint, ("1.2.3:80", "vip"), "vip"),
    (config.parse_endpoint, (None, "vip"), "vip"),
    (config.parse_backend, ("198.19.0.11:80:1", "backend"), "backend"),
    (config.parse_backend, ("host.example", "backend"), "backend"),
    (config.check_weight, ("x",), "weight"),
    (config.check_proto, ("TCP",), "proto"),
    (config.check_scheduler, ("dh",), "scheduler"),
    (config.check_mode, ("bogus",), "mode"),
    (config.check_mode, (3,), "mode"),
])
def test_validators_reject_naming_field(fn, args, field):
    with pytest.raises(LBError) as ei:
        fn(*args)
    assert ei.value.field == field


# --- [io] workers --------------------------------------------------------------------------

def test_io_workers_default_and_values():
    assert config.parse(good_dict()).io.workers == 1
    for n in (1, 2, 16):
        d = good_dict()
        d["io"]["workers"] = n
        assert config.parse(d).io.workers == n


@pytest.mark.parametrize("value,needle", [
    (0, "1..16, got 0"), (17, "1..16, got 17"), (-1, "got -1"), (True, "True"),
    ("2", "'2'"), (2.0, "2.0"),
])
def test_io_workers_bad_values_name_the_field(value, needle):
    e = errors_of(_set(["io", "workers"], value))
    assert e.field == "io.workers" and needle in e.message, e.message


def _afpacket_with(key, value):
    """A mutation: the afpacket backend with [io] key = value."""
    def mutate(d):
        d["io"]["backend"] = "afpacket"
        d["io"][key] = value
    return mutate


def test_io_workers_need_the_tap_backend():
    e = errors_of(_afpacket_with("workers", 2))
    assert e.field == "io.workers" and "tap backend" in e.message and "afpacket" in e.message
    d = good_dict()
    _afpacket_with("workers", 1)(d)
    assert config.parse(d).io.workers == 1          # one worker: any backend


# --- [io] rps -------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["rps", "realtime"])
def test_io_auto_keys_default_to_none_and_take_booleans(key):
    """[io] rps and realtime: absent is "if possible" (None); true and false are kept."""
    assert getattr(config.parse(good_dict()).io, key) is None
    for v in (True, False):
        d = good_dict()
        d["io"][key] = v
        assert getattr(config.parse(d).io, key) is v


@pytest.mark.parametrize("value", ["on", 1, 0, "3"])
def test_io_rps_bad_values_name_the_field(value):
    e = errors_of(_set(["io", "rps"], value))
    assert e.field == "io.rps" and "true or false" in e.message and repr(value) in e.message


def test_io_rps_is_for_the_tap_backend():
    e = errors_of(_afpacket_with("rps", True))
    assert e.field == "io.rps" and "tap backend" in e.message and "afpacket" in e.message
    d = good_dict()
    _afpacket_with("rps", False)(d)
    assert config.parse(d).io.rps is False           # off: nothing to refuse


# --- [io] realtime --------------------------------------------------------------------------

def test_io_realtime_is_for_any_backend():
    for v in (True, False):
        d = good_dict()
        _afpacket_with("realtime", v)(d)             # the threads' policy, not the device's
        assert config.parse(d).io.realtime is v


@pytest.mark.parametrize("value", ["fifo", 1, 0, 99])
def test_io_realtime_bad_values_name_the_field(value):
    e = errors_of(_set(["io", "realtime"], value))
    assert e.field == "io.realtime" and "true or false" in e.message and repr(value) in e.message
