"""dsr: direct server return by MAC rewrite (IPVS's direct routing, ip_vs_dr_xmit).

Used for large responses: the balancer only sees the client -> server direction (mostly
ACKs) and the backend answers the client straight through the router. A client frame for
the VIP leaves with only its Ethernet addresses changed (destination: the chosen backend's
MAC; source: the LB's); IP and TCP headers are untouched, so:
- the backend must hold the VIP on its loopback, must not answer ARP for it
  (arp_ignore=1, arp_announce=2) and must accept packets to it (rp_filter 0 or 2);
- the backend port must be the VIP port (nothing rewrites it): refused at configuration;
- the backend must be on the LB's layer-2 segment.
The default scheduler is maglev: a restarted LB, or another LB instance, sends an existing
flow to the same backend without any state (and a flow that lost its entry is re-created on
its next packet by the same hash). Its fast-path routine: fastpath/xmit_dsr.pxi.
"""
from .base import Mode, check_same_port


class Dsr(Mode):
    name = "dsr"
    default_scheduler = "maglev"
    # keep: the LB cannot tell a live connection from a dead one, and a backend that still
    # holds it may finish it
    default_on_backend_down = "keep"
    probe_via_vip = True        # the backend answers for the VIP: its real address proves nothing
    reverse_path = False

    def validate(self, vip_port, proto, backends):
        check_same_port(self.name, vip_port, backends)


MODE = Dsr()
