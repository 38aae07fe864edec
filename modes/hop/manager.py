"""hop's punt handler: splice's (modes/splice/manager.py), for hop flows.

Everything splice's handler does up to the backend's SYN-ACK holds for hop, with three
differences, each one method here:
- the frames are hop's (punt_hop) and so are the flows it waits on (splice_waiting's mode);
- the backend's side of a hop flow is the VIP (the backend holds it): our SYN, its resend,
  a TIME_WAIT's reset and the replay go to VIP:port at the backend's MAC, and the backend's
  frames come from VIP:port;
- every segment of a replay made here (a request longer than one segment) carries the
  hand-off option: the backend's shim stores the deltas from the first one it sees, and
  translates none of them (they are in the backend's space).
"""
import struct

from fastpath import defs

from ..splice.manager import SpliceManager

M32 = 0xFFFFFFFF


def handoff_option(fl):
    """The hand-off option of flow fl (engine.splice_flow's dict), as the fast path writes it
    (xmit_hop.pxi hop_handoff): two NOPs, [253, 14, ExID, delta, ts_off, ws_b, ws_lb]."""
    ts_off = fl["ts_off"] if fl["sopt"] & defs.SOPT_TS else 0
    return (bytes([1, 1, defs.HOP_OPT_KIND, defs.HOP_HANDOFF_LEN])
            + struct.pack("!HII", defs.HOP_EXID, (fl["l_isn"] - fl["s_isn"]) & M32, ts_off & M32)
            + bytes([fl["ws_b"], fl["ws_lb"]]))


class HopManager(SpliceManager):
    reasons = (defs.C["punt_hop"],)
    mode = defs.MODE_HOP

    def _backend_side(self, conn, ip, port):
        return conn.key[2], conn.key[3]

    def _backend_mac(self, key, fl):
        vip = self.ctx.vip(key[2], key[3])
        addr = vip.addr.get(fl["real"]) if vip is not None else None
        return self.ctx.mac_of(addr[0]) if addr else None

    def _replay_opts(self, fl):
        return self._client_opts(fl) + handoff_option(fl)
