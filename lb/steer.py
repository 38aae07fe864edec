"""Symmetric flow steering for a multi-queue TAP: one small eBPF program picks the queue (and
so the worker) of every frame the kernel hands to lbd.

tun runs the program attached with TUNSETSTEERINGEBPF on each frame it queues for userspace
and uses `(u16)ret % numqueues` as the queue. Both directions of a flow must land on one
worker (each worker has its own flow table), but nat and splice see different tuples for
the two directions (client -> VIP:port, then backend -> client). What they share is the
client endpoint, so the key is:

    IPv4 TCP/UDP, destination is a VIP address   -> (source ip, source port)     the client
    IPv4 TCP/UDP, any other destination          -> (destination ip, port)       the client
    anything else (ARP, IPv6, other protocols,   -> 0 (queue 0)
    a non-first fragment, IHL < 5, too short)

and the return value is the low 16 bits of fastpath.mix64(ip << 16 | port) (MurmurHash3's
fmix64, the fast path's own mixer: every output bit depends on every key bit, and tun
uses the low bits, `% numqueues`, where a plain multiplicative hash is weakest). A handful
of flows still splits unevenly by chance: 4 flows all land on one of 2 workers 1 time in 8.
`steer_value()` is the same function
in Python; tests/unit/test_steer.py holds the kernel's result against it with
BPF_PROG_TEST_RUN.

Invariants:
- The VIP addresses are immediates in the program: a new set of addresses needs a new
  program (Steering.update), attached before the engines learn the new services (the
  EngineGroup calls it ahead of set_services), so no packet of a new VIP is ever steered by
  the old rule while a worker could already be creating its flow.
- Loads are the legacy BPF_LD_ABS/BPF_LD_IND relative to the link-layer header
  (SKF_LL_OFF): tun runs the program with skb->data at the Ethernet header, BPF_PROG_TEST_RUN
  with it at the IP header; the MAC header is set in both. A load past the end of the frame
  ends the program with 0 (queue 0): truncated frames cannot fault.
- The IP header length is read from the frame (ports at 14 + IHL*4); lbd drops IP options
  anyway, but steering them consistently costs nothing.
- bpf(2) is reached through ctypes (x86_64 and aarch64 syscall numbers); errors raise OSError
  with the verifier's log when there is one.
"""
import ctypes
import fcntl
import os
import platform
import struct

import fastpath

# --- eBPF instruction encoding (linux/bpf.h, linux/bpf_common.h) -----------------------------
BPF_LD, BPF_ALU, BPF_JMP, BPF_JMP32, BPF_ALU64 = 0x00, 0x04, 0x05, 0x06, 0x07
BPF_W, BPF_H, BPF_B, BPF_DW = 0x00, 0x08, 0x10, 0x18
BPF_IMM, BPF_ABS, BPF_IND = 0x00, 0x20, 0x40
BPF_K, BPF_X = 0x00, 0x08
ADD, MUL, OR, AND, LSH, RSH, XOR, MOV = 0x00, 0x20, 0x40, 0x50, 0x60, 0x70, 0xA0, 0xB0
JA, JEQ, JSET, JNE, JLT, EXIT = 0x00, 0x10, 0x40, 0x50, 0xA0, 0x90
R0, R1, R2, R6, R7, R8, R9 = 0, 1, 2, 6, 7, 8, 9
SKF_LL_OFF = -0x200000

BPF_PROG_LOAD, BPF_PROG_TEST_RUN = 5, 10
BPF_PROG_TYPE_SOCKET_FILTER = 1
TUNSETSTEERINGEBPF = 0x800454E0        # _IOR('T', 224, int)
SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
MIX_CONSTANTS = (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53)   # fastpath.mix64's multipliers
ETH_P_IP = 0x0800
LOG_SIZE = 1 << 16


def _insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, dst | src << 4, off, imm)


def _s32(x):
    """An unsigned 32-bit value as the signed immediate that carries the same bits."""
    return x - (1 << 32) if x >= 1 << 31 else x


class _Asm:
    """Instructions with symbolic jump targets, resolved by assemble(). An entry is either
    raw bytes (8, or 16 for the two-slot LD_IMM64) or a jump waiting for its label."""

    def __init__(self):
        self.code = []
        self.labels = {}

    def emit(self, raw):
        self.code.append(raw)

    def jump(self, code, dst, label, imm=0):
        self.code.append((code, dst, label, imm))

    def label(self, name):
        self.labels[name] = len(self.code)

    def assemble(self):
        slot = [0]                                # slot index of every entry, then the end
        for c in self.code:
            slot.append(slot[-1] + (len(c) // 8 if isinstance(c, bytes) else 1))
        out = []
        for i, c in enumerate(self.code):
            if isinstance(c, tuple):
                code, dst, label, imm = c
                off = slot[self.labels[label]] - slot[i] - 1
                out.append(_insn(code, dst, 0, off, imm))
            else:
                out.append(c)
        return b"".join(out)


def program(vips):
    """The steering program (bytes of struct bpf_insn) for a set of VIP addresses (host ints)."""
    a = _Asm()

    def ld_abs(size, off):
        a.emit(_insn(BPF_LD | BPF_ABS | size, imm=SKF_LL_OFF + off))

    a.emit(_insn(BPF_ALU64 | MOV | BPF_X, R6, R1))               # r6 = ctx (LD_ABS needs it)
    ld_abs(BPF_H, 12)                                            # ethertype
    a.jump(BPF_JMP | JNE | BPF_K, R0, "zero", ETH_P_IP)
    ld_abs(BPF_B, 23)                                            # IP protocol
    a.jump(BPF_JMP | JEQ | BPF_K, R0, "l4", 6)
    a.jump(BPF_JMP | JNE | BPF_K, R0, "zero", 17)
    a.label("l4")
    ld_abs(BPF_H, 20)                                            # flags + fragment offset
    a.jump(BPF_JMP | JSET | BPF_K, R0, "zero", 0x1FFF)           # not the first fragment
    ld_abs(BPF_B, 14)                                            # version + IHL
    a.emit(_insn(BPF_ALU64 | MOV | BPF_X, R7, R0))
    a.emit(_insn(BPF_ALU64 | AND | BPF_K, R0, imm=0xF0))
    a.jump(BPF_JMP | JNE | BPF_K, R0, "zero", 0x40)              # version 4 only
    a.emit(_insn(BPF_ALU64 | AND | BPF_K, R7, imm=0x0F))
    a.emit(_insn(BPF_ALU64 | LSH | BPF_K, R7, imm=2))            # r7 = IHL in bytes
    a.jump(BPF_JMP | JLT | BPF_K, R7, "zero", 20)
    ld_abs(BPF_W, 30)                                            # destination address
    a.emit(_insn(BPF_ALU64 | MOV | BPF_X, R8, R0))
    for vip in sorted(set(vips)):
        # JMP32: compare the low 32 bits; a 64-bit JEQ would sign-extend the immediate
        a.jump(BPF_JMP32 | JEQ | BPF_K, R8, "to_vip", _s32(vip))
    # not to a VIP: the client is the destination (a reply, or anything else)
    a.emit(_insn(BPF_LD | BPF_IND | BPF_H, src=R7, imm=SKF_LL_OFF + 14 + 2))
    a.emit(_insn(BPF_ALU64 | MOV | BPF_X, R9, R0))
    if vips:    # with no VIP the block would be unreachable, which the verifier refuses
        a.jump(BPF_JMP | JA, 0, "hash")
        a.label("to_vip")                                        # the client is the source
        ld_abs(BPF_W, 26)
        a.emit(_insn(BPF_ALU64 | MOV | BPF_X, R8, R0))
        a.emit(_insn(BPF_LD | BPF_IND | BPF_H, src=R7, imm=SKF_LL_OFF + 14))
        a.emit(_insn(BPF_ALU64 | MOV | BPF_X, R9, R0))
    a.label("hash")
    a.emit(_insn(BPF_ALU64 | LSH | BPF_K, R8, imm=16))
    a.emit(_insn(BPF_ALU64 | OR | BPF_X, R8, R9))                # key = ip << 16 | port
    a.emit(_insn(BPF_ALU64 | MOV | BPF_X, R0, R8))
    for c in MIX_CONSTANTS:                                      # fastpath.mix64 (fmix64)
        a.emit(_insn(BPF_ALU64 | MOV | BPF_X, R1, R0))
        a.emit(_insn(BPF_ALU64 | RSH | BPF_K, R1, imm=33))
        a.emit(_insn(BPF_ALU64 | XOR | BPF_X, R0, R1))           # x ^= x >> 33
        a.emit(_insn(BPF_LD | BPF_DW | BPF_IMM, R2, imm=_s32(c & 0xFFFFFFFF))
               + _insn(0, imm=_s32(c >> 32)))
        a.emit(_insn(BPF_ALU64 | MUL | BPF_X, R0, R2))           # x *= c
    a.emit(_insn(BPF_ALU64 | MOV | BPF_X, R1, R0))
    a.emit(_insn(BPF_ALU64 | RSH | BPF_K, R1, imm=33))
    a.emit(_insn(BPF_ALU64 | XOR | BPF_X, R0, R1))
    a.emit(_insn(BPF_ALU64 | AND | BPF_K, R0, imm=0xFFFF))       # tun keeps 16 bits
    a.emit(_insn(BPF_JMP | EXIT))
    a.label("zero")
    a.emit(_insn(BPF_ALU64 | MOV | BPF_K, R0, imm=0))
    a.emit(_insn(BPF_JMP | EXIT))
    return a.assemble()


def steer_value(frame, vips):
    """What the program returns for `frame` (bytes, from the Ethernet header): the Python
    twin the tests hold the kernel against."""
    f = bytes(frame)
    if len(f) < 14 or f[12:14] != b"\x08\x00":
        return 0
    if len(f) < 24 or f[23] not in (6, 17):
        return 0
    if len(f) < 22 or struct.unpack_from("!H", f, 20)[0] & 0x1FFF:
        return 0
    if f[14] >> 4 != 4 or (f[14] & 15) < 5:
        return 0
    ihl = (f[14] & 15) * 4
    if len(f) < 34:
        return 0
    src, dst = struct.unpack_from("!II", f, 26)
    if dst in vips:
        if len(f) < 14 + ihl + 2:
            return 0
        ip, port = src, struct.unpack_from("!H", f, 14 + ihl)[0]
    else:
        if len(f) < 14 + ihl + 4:
            return 0
        ip, port = dst, struct.unpack_from("!H", f, 14 + ihl + 2)[0]
    return fastpath.mix64(ip << 16 | port) & 0xFFFF


# --- bpf(2) ----------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd, attr):
    if SYS_BPF is None:
        raise OSError("bpf(2): unknown syscall number on %s" % platform.machine())
    buf = ctypes.create_string_buffer(bytes(attr), 128)
    r = _libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_int(cmd), buf, ctypes.c_uint(128))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, "bpf(%d): %s" % (cmd, os.strerror(e)))
    return r, buf


def load(insns, name=b"tw_steer"):
    """Load a socket-filter program; returns its fd (the caller closes it)."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(LOG_SIZE)
    attr = struct.pack("<IIQQIIQII16s", BPF_PROG_TYPE_SOCKET_FILTER, len(insns) // 8,
                       ctypes.addressof(code), ctypes.addressof(lic), 1, LOG_SIZE,
                       ctypes.addressof(log), 0, 0, name[:15])
    try:
        fd, _ = _bpf(BPF_PROG_LOAD, attr)
    except OSError as e:
        text = log.value.decode(errors="replace").strip()
        raise OSError(e.errno, "loading the steering program: %s%s" % (
            e.strerror, ("\n" + text[-2000:]) if text else "")) from None
    return fd


def test_run(prog_fd, frame):
    """BPF_PROG_TEST_RUN of a loaded program on one frame (>= 14 bytes): its return value."""
    data = ctypes.create_string_buffer(bytes(frame), len(frame))
    attr = struct.pack("<IIIIQQII", prog_fd, 0, len(frame), 0, ctypes.addressof(data), 0, 1, 0)
    _, buf = _bpf(BPF_PROG_TEST_RUN, attr)
    return struct.unpack_from("<I", buf.raw, 4)[0]


def attach(tun_fd, prog_fd):
    """Make prog_fd the steering program of the TAP behind tun_fd (any of its queues)."""
    fcntl.ioctl(tun_fd, TUNSETSTEERINGEBPF, struct.pack("i", prog_fd))


class Steering:
    """The steering program of one multi-queue TAP, kept in step with the VIP addresses."""

    def __init__(self, tun_fd):
        self.fd = tun_fd
        self.vips = None
        self.c = {"programs_attached": 0, "vip_addresses": 0, "instructions": 0}

    def update(self, vips):
        """Attach a program for this set of VIP addresses (host ints) unless the attached one
        has exactly this set. OSError if the kernel refuses; the old program then stays."""
        vips = frozenset(vips)
        if vips == self.vips:
            return False
        insns = program(vips)
        fd = load(insns)
        try:
            attach(self.fd, fd)
        finally:
            os.close(fd)            # the TAP holds its own reference
        self.vips = vips
        self.c["programs_attached"] += 1
        self.c["vip_addresses"] = len(vips)
        self.c["instructions"] = len(insns) // 8
        return True

    def counters(self):
        return dict(self.c)
