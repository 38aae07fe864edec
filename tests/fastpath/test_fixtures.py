"""The frame fixture table (tests/fastpath/fixtures.py) on both twins."""
import pytest

from fastpath import Batch, ServiceSpec, defs
from tools.frames import checksums_ok

from .fixtures import FIXTURES, make_engine

# a frame's exit counters have a verdict; events (flow_*, frag_first, icmp_hashed...) do not
EXIT_COUNTERS = [c.name for c in defs.COUNTER_TABLE if c.verdict is not None]


@pytest.mark.parametrize("fx", FIXTURES, ids=[f.name for f in FIXTURES])
def test_fixture(impl, fx):
    e = make_engine(impl.Engine, ServiceSpec, **fx.world)
    b = Batch(len(fx.frames))
    b.load(fx.frames)
    e.process(b, 1000)
    got = b.results()
    for i, ((verdict, counter, expected), (gv, gc, gf)) in enumerate(zip(fx.expect, got)):
        assert (gv, gc) == (verdict, counter), "frame %d" % i
        assert gf == (fx.frames[i] if expected is None else expected), "frame %d bytes" % i
        if verdict == defs.V_TX and gf[12:14] == b"\x08\x00":
            assert checksums_ok(gf), "frame %d checksums" % i
    c = e.counters()
    assert c["rx_frames"] == len(fx.frames)
    assert sum(c[k] for k in EXIT_COUNTERS) == len(fx.frames), "one exit counter per frame"
    for name, value in fx.counters.items():
        assert c[name] == value, name
    if fx.flows is not None:
        assert e.flow_count() == fx.flows
    if fx.states is not None:
        assert sorted(defs.STATE_NAMES[f[7]] for f in e.flows()) == sorted(fx.states)
