"""hop's backend shim (modes/hop/hop_shim.o, eBPF) held to its Python reference model
(modes/hop/shim_model.py) with BPF_PROG_TEST_RUN, the way tests/unit/test_steer.py holds the
steering program: one table of fixture frames, each run through the compiled ingress or
egress program and through the model; verdict, output frame (byte for byte, so the
checksums too), the map's entries and the counters must agree after every step, and each
step's expectation is asserted on the model's output too (so a model that did nothing would
fail). The object is loaded into a bpffs of the test's own (a tmp mount), never the host's.
"""
import os
import struct
import subprocess
import time

import pytest

from fastpath import defs
from fastpath.twin.inet import tcp_frame
from modes.hop import shim
from modes.hop.shim_model import (FL_FIN_IN, FL_FIN_OUT, SHIM_STATS, ST_ACTIVE, ST_PENDING,
                                  TC_ACT_OK, TC_ACT_SHOT, Flow, Key, ShimModel, pack_flow,
                                  pack_key, unpack_flow, unpack_key)

LB_MAC = bytes.fromhex("025457000002")
B_MAC = bytes.fromhex("02747700000b")
GW_MAC = bytes.fromhex("0274770000f1")
CIP, VIP, CPORT, VPORT = 0xC612000A, 0xC6136401, 40000, 80
KEY = Key(CIP, VIP, CPORT, VPORT)
EXID = defs.HOP_EXID.to_bytes(2, "big")
MARK = bytes([defs.HOP_OPT_KIND, defs.HOP_MARK_LEN]) + EXID
C_ISN, S_ISN = 0x11111111, 0xFFFFFFF0          # the backend's ISN: its seq wraps at once
DELTA = 0x00000123 - S_ISN & 0xFFFFFFFF           # l_isn - s_isn, with l_isn = 0x123
TS_OFF = 0x80000005
WS_B, WS_LB = 2, 7


def ts(tsval, tsecr):
    return b"\x01\x01\x08\x0a" + struct.pack("!II", tsval & 0xFFFFFFFF, tsecr & 0xFFFFFFFF)


def handoff(delta=DELTA, ts_off=TS_OFF, ws_b=WS_B, ws_lb=WS_LB, length=defs.HOP_HANDOFF_LEN):
    return (b"\x01\x01" + bytes([defs.HOP_OPT_KIND, length]) + EXID
            + struct.pack("!II", delta, ts_off) + bytes([ws_b, ws_lb]))


def c2b(seq, ack, flags, opt=b"", data=b"", sport=CPORT, smac=LB_MAC):
    """client -> VIP, as the LB delivers it to the backend"""
    return bytes(tcp_frame(B_MAC, smac, CIP, VIP, sport, VPORT, seq, ack, flags, 501, opt, data))


def b2c(seq, ack, flags, opt=b"", data=b"", win=1000, dport=CPORT):
    """VIP -> client, as the backend's stack sends it (to its gateway)"""
    return bytes(tcp_frame(GW_MAC, B_MAC, VIP, CIP, VPORT, dport, seq, ack, flags, win, opt,
                           data))


A, P, R, S, F = defs.TH_ACK, defs.TH_PSH, defs.TH_RST, defs.TH_SYN, defs.TH_FIN


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root (bpf(2), a bpffs mount)")
    if not os.path.exists(shim.OBJECT):
        pytest.fail("%s missing: the build (setup.py) makes it" % shim.OBJECT)
    root = str(tmp_path_factory.mktemp("hopbpf"))
    shim.mount_bpffs(root)
    try:
        subprocess.run(["bpftool", "prog", "loadall", shim.OBJECT, root + "/progs", "pinmaps",
                        root + "/maps"], check=True, capture_output=True, timeout=60)
        fds = {n: shim.obj_get(root + "/progs/" + n) for n in shim.PROGRAMS}
        fds["flows"] = shim.obj_get(root + "/maps/hop_flows")
        fds["stats"] = shim.obj_get(root + "/maps/hop_stats")
        yield fds
        for fd in fds.values():
            os.close(fd)
    finally:
        shim.umount_bpffs(root)


class Pair:
    """The compiled shim and the model side by side, from an empty map."""

    def __init__(self, fds):
        self.fds = fds
        for k in shim.map_keys(fds["flows"], 12):
            shim.map_delete(fds["flows"], k)
        self.base = self.kernel_stats()
        self.model = ShimModel()
        with open("/sys/devices/system/cpu/possible") as f:
            self.ncpu = _ncpu(f.read())

    def kernel_stats(self):
        out = {}
        ncpu = _ncpu(open("/sys/devices/system/cpu/possible").read())
        for i, name in enumerate(SHIM_STATS):
            raw = shim.map_lookup(self.fds["stats"], struct.pack("<I", i), 8 * ncpu)
            out[name] = sum(struct.unpack("<%dQ" % ncpu, raw))
        return out

    def kernel_flows(self):
        out = {}
        for k in shim.map_keys(self.fds["flows"], 12):
            v = shim.map_lookup(self.fds["flows"], k, 32)
            if v is not None:
                out[unpack_key(k)] = unpack_flow(v)._replace(last_ns=0)
        return out

    def run(self, hook, frame):
        prog = self.fds["hop_ingress" if hook == "in" else "hop_egress"]
        now = time.monotonic_ns()
        verdict, out = shim.test_run(prog, frame)
        mv, mout = (self.model.ingress if hook == "in" else self.model.egress)(frame, now)
        assert verdict == mv, (hook, verdict, mv)
        assert out == mout, "%s: kernel %s\n model %s" % (hook, out.hex(), mout.hex())
        assert self.kernel_flows() == {k: v._replace(last_ns=0)
                                       for k, v in self.model.flows.items()}
        ks = self.kernel_stats()
        assert {k: ks[k] - self.base[k] for k in ks} == self.model.stats
        return verdict, out

    def put(self, key, flow):
        shim.map_update(self.fds["flows"], pack_key(key), pack_flow(flow))
        self.model.flows[key] = flow


def _ncpu(text):
    n = 0
    for part in text.strip().split(","):
        a, _, b = part.partition("-")
        n += int(b or a) - int(a) + 1
    return n


def tcp(frame):
    """(seq, ack, flags, win, options, payload) of a frame of ours (IHL 5)"""
    doff = (frame[46] >> 4) * 4
    seq, ack = struct.unpack("!II", frame[38:46])
    return seq, ack, frame[47], struct.unpack("!H", frame[48:50])[0], frame[54:34 + doff], \
        frame[34 + doff:]


def csum_ok(frame):
    tot = struct.unpack("!H", frame[16:18])[0]
    seg = frame[34:14 + tot]
    data = frame[26:34] + struct.pack("!BBH", 0, 6, len(seg)) + seg
    data += b"\0" * (len(data) % 2)
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


def test_life_of_a_hopped_connection(programs):
    p = Pair(programs)
    syn_opts = b"\x02\x04\x05\xb4" + b"\x04\x02\x08\x0a" + struct.pack("!II", 777, 0) \
        + b"\x01\x03\x03\x07" + MARK
    v, out = p.run("in", c2b(C_ISN, 0, S, syn_opts))
    assert v == TC_ACT_OK and tcp(out)[4] == syn_opts[:-4] + b"\x01" * 4 and csum_ok(out)
    assert p.model.flows[KEY].state == ST_PENDING and p.model.flows[KEY].lb_mac == LB_MAC

    # the SYN-ACK goes to the LB, untouched but for its destination MAC
    synack = b2c(S_ISN, C_ISN + 1, S | A, b"\x02\x04\x05\xb4\x01\x01\x08\x0a"
                 + struct.pack("!II", 5000, 777) + b"\x01\x03\x03\x02")
    v, out = p.run("out", synack)
    assert out == LB_MAC + synack[6:]

    # a client segment before the hand-off cannot be translated: dropped
    v, _ = p.run("in", c2b(C_ISN + 1, 0x124, A, ts(778, 5000 + TS_OFF)))
    assert v == TC_ACT_SHOT

    # the hand-off: stored, NOPed, the segment itself not translated (it is in the
    # backend's space already)
    req = b"GET /blob HTTP/1.1\r\nHost: x\r\n\r\n"
    hand = c2b(C_ISN + 1, S_ISN + 1, A | P, ts(778, 5000) + handoff(), req)
    v, out = p.run("in", hand)
    assert tcp(out)[:2] == (C_ISN + 1, S_ISN + 1) and tcp(out)[4] == ts(778, 5000) + b"\x01" * 16
    assert tcp(out)[5] == req and csum_ok(out)
    assert p.model.flows[KEY][1:] == (DELTA, TS_OFF, LB_MAC, ST_ACTIVE, 0, WS_B, WS_LB)

    # the backend's data: seq + delta across the 2^32 wrap, TSval + ts_off, window
    # rescaled from ws_b to ws_lb, left to the kernel's routing (gateway MAC kept)
    v, out = p.run("out", b2c(S_ISN + 1, C_ISN + 1 + len(req), A, ts(5001, 778), b"x" * 1000,
                              win=4096))
    seq, ack, _, win, opts, _ = tcp(out)
    assert out[:6] == GW_MAC and seq == (S_ISN + 1 + DELTA) & 0xFFFFFFFF == 0x124
    assert opts == ts(5001 + TS_OFF, 778) and win == (4096 << WS_B) >> WS_LB and csum_ok(out)

    # the client's ACK with SACK blocks: ack, both blocks and TSecr back in the backend's space
    sack = b"\x01\x01\x05\x12" + struct.pack("!IIII", 0x200, 0x300, 0x400, 0x500)
    v, out = p.run("in", c2b(C_ISN + 1 + len(req), 0x124 + 1000, A,
                             ts(779, 5001 + TS_OFF) + sack))
    seq, ack, _, _, opts, _ = tcp(out)
    assert ack == (0x124 + 1000 - DELTA) & 0xFFFFFFFF == (S_ISN + 1001) & 0xFFFFFFFF
    assert opts[16:] == struct.pack("!IIII", *((x - DELTA) & 0xFFFFFFFF
                                               for x in (0x200, 0x300, 0x400, 0x500)))
    assert opts[:12] == ts(779, 5001) and csum_ok(out)

    # an odd layout: timestamps after one NOP (its fields off the 16-bit grid)
    odd = b"\x01\x08\x0a" + struct.pack("!II", 780, 5002 + TS_OFF) + b"\x01\x01\x01"
    v, out = p.run("in", c2b(C_ISN + 1 + len(req), 0x124 + 1000, A, odd))
    assert tcp(out)[4][1:11] == b"\x08\x0a" + struct.pack("!II", 780, 5002) and csum_ok(out)

    # FINs both ways, then the client's RST: gone
    p.run("out", b2c(S_ISN + 1001, C_ISN + 1 + len(req), F | A, ts(5003, 780)))
    p.run("in", c2b(C_ISN + 1 + len(req), 0x124 + 1001, F | A, ts(781, 5003 + TS_OFF)))
    assert p.model.flows[KEY].flags == FL_FIN_IN | FL_FIN_OUT
    p.run("in", c2b(C_ISN + 2 + len(req), 0, R))
    assert KEY not in p.model.flows and p.model.stats["rst"] == 1
    # and now nothing of it is touched
    frame = b2c(S_ISN + 1002, C_ISN + 1, A)
    assert p.run("out", frame)[1] == frame


def test_other_frames_pass_untouched(programs):
    p = Pair(programs)
    plain_syn = c2b(1, 0, S, b"\x02\x04\x05\xb4")
    assert p.run("in", plain_syn) == (TC_ACT_OK, plain_syn)
    udp = bytearray(b2c(1, 1, A))
    udp[23] = 17
    assert p.run("out", bytes(udp))[1] == bytes(udp)
    frag = bytearray(c2b(1, 1, A))
    frag[20] = 0x20                   # MF: not a whole segment
    assert p.run("in", bytes(frag))[1] == bytes(frag)
    arp = B_MAC + LB_MAC + b"\x08\x06" + bytes(28)
    assert p.run("in", arp)[1] == arp
    assert p.model.flows == {}


def test_syn_without_mark_clears_an_entry_and_bad_options_count(programs):
    p = Pair(programs)
    p.run("in", c2b(C_ISN, 0, S, MARK))
    assert KEY in p.model.flows
    # a hand-off-length option on a SYN is no mark
    p.run("in", c2b(C_ISN, 0, S, handoff()))
    assert KEY not in p.model.flows and p.model.stats["in_syn_cleared"] == 1
    assert p.model.stats["bad_option"] == 1
    p.run("in", c2b(C_ISN, 0, S, MARK))
    # a mark-length option where a hand-off belongs: ignored, the segment dropped (pending)
    v, _ = p.run("in", c2b(C_ISN + 1, 5, A, MARK))
    assert v == TC_ACT_SHOT and p.model.stats["bad_option"] == 2
    # a RST while pending passes and ends the entry
    p.run("in", c2b(C_ISN + 1, 0, R))
    assert KEY not in p.model.flows


def test_pending_rst_from_backend_goes_to_the_lb(programs):
    p = Pair(programs)
    p.run("in", c2b(C_ISN, 0, S, MARK))
    rst = b2c(0, C_ISN + 1, R | A)
    assert p.run("out", rst)[1] == LB_MAC + rst[6:]


def test_idle_entries_expire(programs):
    p = Pair(programs)
    p.put(KEY, Flow(1, DELTA, 0, LB_MAC, ST_ACTIVE, 0, 0, 0))      # idle since boot
    other = Key(CIP, VIP, CPORT + 1, VPORT)
    p.put(other, Flow(time.monotonic_ns(), DELTA, 0, LB_MAC, ST_ACTIVE, 0, 0, 0))
    frame = c2b(5, 0x500, A)
    assert p.run("in", frame)[1] == frame            # expired: not translated
    assert KEY not in p.model.flows and p.model.stats["expired"] == 1
    _, out = p.run("in", c2b(5, 0x500, A, sport=CPORT + 1))
    assert tcp(out)[1] == (0x500 - DELTA) & 0xFFFFFFFF
    # stamped by another CPU just after this one read its clock: not idle, not expired
    ahead = Key(CIP, VIP, CPORT + 2, VPORT)
    p.put(ahead, Flow(time.monotonic_ns() + 10 ** 9, DELTA, 0, LB_MAC, ST_ACTIVE, 0, 0, 0))
    _, out = p.run("in", c2b(5, 0x500, A, sport=CPORT + 2))
    assert tcp(out)[1] == (0x500 - DELTA) & 0xFFFFFFFF and p.model.stats["expired"] == 1


def test_the_health_probes_syn_makes_the_shim_send_its_syn_ack_back_to_the_prober(programs):
    """modes/hop/probe.py: its marked SYN (from the health interface's MAC, source the LB's
    data address) is taken by the shim, whose SYN-ACK goes back to that MAC, which the probe
    recognises; its RST clears the entry. The compiled shim and the model agree on each."""
    from modes.hop import probe
    p = Pair(programs)
    mg_mac, lb_ip, sport, isn = bytes.fromhex("06aabbccddee"), 0xC6130002, 45000, 0xFFFFFFFF
    syn = bytes(probe.syn_frame(B_MAC, mg_mac, lb_ip, VIP, VPORT, sport, isn))
    assert csum_ok(syn)
    v, out = p.run("in", syn)
    key = Key(lb_ip, VIP, sport, VPORT)
    assert v == TC_ACT_OK and p.model.flows[key].state == ST_PENDING
    assert p.model.flows[key].lb_mac == mg_mac
    # the backend's stack routes its SYN-ACK to the LB's data address (ARP: the LB's MAC);
    # the shim sends it to the prober instead
    synack = bytes(tcp_frame(LB_MAC, B_MAC, VIP, lb_ip, VPORT, sport, S_ISN, isn + 1, S | A,
                             1000, b"\x02\x04\x05\xb4"))
    v, out = p.run("out", synack)
    assert out[0:6] == mg_mac and probe.is_answer(out, lb_ip, VIP, VPORT, sport, isn)
    # what a bare stack sends (no shim) is the same SYN-ACK to the LB's MAC: the probe never
    # reads it on the health interface; and nothing else passes for the answer
    assert not probe.is_answer(synack[:50], lb_ip, VIP, VPORT, sport, isn)
    assert not probe.is_answer(out, lb_ip, VIP, VPORT, sport + 1, isn)
    assert not probe.is_answer(out, lb_ip, VIP, VPORT, sport, isn + 1)
    v, _ = p.run("in", bytes(probe.rst_frame(B_MAC, mg_mac, lb_ip, VIP, VPORT, sport, isn)))
    assert v == TC_ACT_OK and key not in p.model.flows


# ---- where the shim goes: a server's own interface, or a gateway port facing it --------------

def test_a_gateway_port_swaps_the_hooks():
    # hop_ingress sees what goes to the server: on the server, by its ingress hook; on the
    # switch port facing it, what leaves by that port's egress hook
    assert dict(zip(shim.PROGRAMS, shim.HOOKS["host"])) == {"hop_ingress": "ingress",
                                                             "hop_egress": "egress"}
    assert dict(zip(shim.PROGRAMS, shim.HOOKS["port"])) == {"hop_ingress": "egress",
                                                             "hop_egress": "ingress"}


def test_an_unknown_facing_is_refused_before_anything_is_run():
    with pytest.raises(shim.ShimError, match="facing 'sideways'"):
        shim.attach(None, "no-such-if", "/nonexistent", "sideways")
    with pytest.raises(shim.ShimError, match="facing"):
        shim.installed(None, "no-such-if", "up")


@pytest.mark.parametrize("argv", [["--shim-port", "sw-only"], ["--shim-port", ":b1"],
                                  ["--shim-port", "ns:"],
                                  ["--mode", "dsr", "--shim-port", "ns:b1"]])
def test_doctor_refuses_a_bad_shim_port(argv, capsys):
    from tools import doctor
    if "--mode" not in argv:
        argv = ["--mode", "hop"] + argv
    with pytest.raises(SystemExit) as e:
        doctor.main(["--vip", "198.19.100.9"] + argv)
    assert e.value.code == 2 and "--shim-port NS:IFACE" in capsys.readouterr().err
