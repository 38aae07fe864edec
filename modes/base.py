"""The small interface every forwarding mode implements (IPVS's ip_vs_bind_xmit, as a class).

A mode is bound once per VIP. The fast path dispatches on `code` (a small integer pinned in
each flow); this side validates a VIP's settings, says which scheduler it defaults to, turns a
VIP into the fast path's ServiceSpec flags, handles frames the fast path punts for the mode,
and reports mode-specific stats from the fast-path counters.
"""


class Mode:
    name = ""
    code = 0
    default_scheduler = "maglev"
    counters = ()          # fast-path counters that belong to this mode

    def validate(self, vip_port, proto, backends):
        """Raise lb.errors.LBError if this VIP cannot run in this mode.

        backends: list of (ip:int, port:int, weight:int)."""

    def service_flags(self, vip):
        """Extra defs flags for the ServiceSpec (none so far)."""
        return 0

    def handle_punt(self, frame):
        """Frames the fast path handed up for this mode; returns frames to send (none for nat)."""
        return []

    def stats(self, counters):
        return {name: counters.get(name, 0) for name in self.counters}
