"""Forwarding modes. Each module exposes MODE, an instance of modes.base.Mode, bound once per VIP."""
from .base import Mode  # noqa: F401
from . import dsr, nat, splice

REGISTRY = {m.name: m for m in (nat.MODE, dsr.MODE, splice.MODE)}


def get(name):
    """The Mode called `name`; LBError(field 'mode') if there is none."""
    from lb.errors import LBError  # lb imports modes, not the other way round, except for the error type
    try:
        return REGISTRY[name]
    except KeyError:
        raise LBError("mode", "unknown mode %r (have: %s)" % (name, ", ".join(sorted(REGISTRY)))) from None
