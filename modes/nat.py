"""nat: DNAT with a connection table (IPVS's masquerading, ip_vs_nat_xmit).

Used when the client's address must reach the backend and the backend can route its replies
back through the balancer. Client -> VIP:vport becomes client -> backend:port; the reply
backend:port -> client becomes VIP:vport -> client. Both directions cross the balancer, so it
sees every byte, tracks TCP state in both directions and can count connections (lc).
The backend port may differ from the VIP port. Its fast-path routines: fastpath/xmit_nat.pxi.
"""
from .base import Mode


class Nat(Mode):
    name = "nat"
    default_scheduler = "maglev"
    default_on_backend_down = "expire"      # IPVS's expire_nodest_conn: the next packet lives
    reverse_path = True


MODE = Nat()
