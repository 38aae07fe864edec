"""Forwarding modes: one module or package each, behind the door of modes/base.py.

REGISTRY maps a mode's name to its Mode, in the order of fastpath/defs.py's mode table; it is
the only list of modes lb/ sees. Adding a mode: its module here, its rows in defs.py, its
xmit include and twin in fastpath/ (DESIGN.md, "The house").
"""
from . import dsr, hop, nat, splice, tunnel
from .base import LBError, Mode  # noqa: F401

REGISTRY = {m.name: m for m in (nat.MODE, dsr.MODE, splice.MODE, tunnel.MODE, hop.MODE)}
DEFAULT = nat.MODE.name        # a VIP that names no mode


def get(name, fld="mode"):
    """The Mode called `name`; LBError(fld) if there is none."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise LBError(fld, "unknown mode %r (have: %s)" % (name, ", ".join(REGISTRY))) from None
