"""The pure-Python twin of the compiled fast path: the same algorithm, routine for routine.

Its modules have the names of fastpath/_engine.pyx's includes and come in their order; each
defines the routines of its .pxi under the same names (without a leading underscore) in the
same order, module-level functions taking the engine as `self` where the compiled ones do,
so the two read side by side (tests/fastpath/test_twin_layout.py checks the pairing).

It is the reference the compiled engine is held against (tests/differential), and it runs the
whole balancer when THREEWAY_PUREPYTHON=1 (fastpath/__init__.py). It must give the same
verdicts, the same rewritten bytes, the same counters and the same flow table as the
compiled engine for every input, including the order in which flow slots are taken and
evicted, and raise the same exception types on bad control calls.

Invariants:
- Importing this package imports every module in the includes' order, so each mode's
  module has put its row in types.XMIT before a frame is processed.
- Nothing here imports socket; serve reads and writes the fds it is given (fastpath/io_py).
"""
from . import (inet, types, engine, flowtable, serve, icmp, frag, xmit_nat, xmit_dsr,  # noqa: F401
               splice, http, xmit_tunnel, xmit_hop, watch, snapshot, sync)
from .engine import Engine  # noqa: F401
from .inet import (csum_partial_replace4, csum_replace2, csum_replace4, flow_hash, ip_fragment,  # noqa: F401
                   mix64, seq_add, seq_after)
from .serve import verdict_of  # noqa: F401
