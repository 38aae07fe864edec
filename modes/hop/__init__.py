"""hop: content routing AND direct server return on one TCP connection (Resonate's
"connection hopping", done in the open).

Used when the backend must be chosen by the request's content (splice's rules: HTTP method,
path, Host, TLS SNI, a byte prefix) and the responses are large: the LB carries only the
client's side. The life of a connection:

  client SYN, ACK, request -> as splice (cookie SYN-ACK, the request read and decided by the
                              VIP's rules, in the fast path or by the punt handler)
  our SYN to the backend   -> to the VIP at the backend's MAC (the backend holds the VIP on
                              lo, as for dsr), as the client (its address, port, ISN and
                              options), with hop's mark (fastpath/defs.py HOP_*): the
                              backend's shim records the flow and the LB's MAC
  the backend's SYN-ACK    -> its shim sends it to the LB's MAC; the LB computes the deltas
                              (sequence, timestamp, window scale) and replays ACK + request
                              with them in the hand-off option
  from then on             -> the shim translates the connection on the backend (seq, TSval,
                              window out; ack, SACK, TSecr in); the backend answers the client
                              straight through its gateway; the LB forwards the client's
                              frames to the backend's MAC unchanged (fastpath/xmit_hop.pxi)

What a backend needs: the VIP on lo with arp_ignore=1/arp_announce=2 (as dsr), the service on
the VIP port, the shim on its interface (modes/hop/shim.py installs it: `tc` clsact, the
programs of hop_shim.o pinned in a bpffs of the lab's own), and the LB on its layer 2.

The egress-gateway variant: the same object, loaded once, attached to the ports of a switch
or gateway that face the servers (shim.attach(..., "port"): the hooks swap, since what goes
to a server leaves such a port), one map for every server behind it, nothing on the servers.
It needs no second implementation: the shim must see our SYN, our hand-off and the server's
answers, and a port facing the server sees all of them, as the server's own interface does.
`lb-lab up --egress-gateway` puts it on the lab switch's ports b1..bN.

The package:
  __init__.py    the door (modes/base.py): splice's options, pools and rules, hop's handler
  manager.py     HopManager: splice's punt handler, on hop's punt reason, addressing the VIP
  shim.py        the shim's loader (bpftool + tc) and its counters
  shim_model.py  the shim's Python reference model (tests hold hop_shim.o to it)
  probe.py       the health precheck: a marked SYN whose SYN-ACK only a shim sends back
  hop_shim.c     the shim (eBPF, tc direct action), built by setup.py
"""
from .. import splice
from ..base import LBError, check_same_port
from .manager import HopManager
from .probe import shim_probe


class Hop(splice.Splice):
    """splice's door (options, pools, rules, the fast path's L7Spec), with hop's own name,
    handler and delivery: the backend's socket is the VIP's, so its port is the VIP port and
    health probes travel the VIP path, as dsr's."""
    name = "hop"
    default_scheduler = "rr"
    default_on_backend_down = "keep"   # the backend's shim may finish what it holds
    probe_via_vip = True
    # the backend's SYN-ACK (and a RST before the hand-off) comes back through the LB, sent
    # by its shim; after the hand-off nothing does
    reverse_path = True
    # a backend without the shim answers the VIP-path probe but no hop connection: each
    # probe first checks the shim (modes/hop/probe.py)
    health_precheck = staticmethod(shim_probe)
    # set_args: splice's (--splice-limit, --splice-timeout), shared; options: splice's too,
    # so a VIP switched between splice and hop keeps its rules and pools
    # (Mode.carries_options_from)

    def validate(self, vip_port, proto, backends):
        if proto not in ("tcp", 6):
            raise LBError("proto", "hop works on TCP only")
        check_same_port(self.name, vip_port, backends)

    def check_leave(self, options, backends, fld):
        if options.rules or any(b[3] != "default" for b in backends):
            raise LBError(fld, "it has content rules or pools, which only splice and hop can "
                          "use: delete them first")

    def punt_handler(self, engine, ctx, mac):
        return HopManager(engine, ctx, mac)


MODE = Hop()
