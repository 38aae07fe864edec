"""The one error type of the control side: it names the field that is wrong.

It lives at the modes' door (modes/base.py), since modes validate their own options and
modes/ imports nothing of lb/; this module is its name on lb/'s side."""
from modes.base import LBError  # noqa: F401
