"""The compiled module is the one loaded unless THREEWAY_PUREPYTHON=1 asks for the twin."""
import os

import fastpath


def test_compiled_module_is_loaded():
    if os.environ.get("THREEWAY_PUREPYTHON") == "1":
        assert fastpath.IMPL == "py"
        from fastpath import twin
        assert fastpath.Engine is twin.Engine
    else:
        from fastpath import _engine, _io
        assert fastpath.IMPL == "cy"
        assert fastpath.Engine is _engine.Engine
        assert fastpath.rx_burst is _io.rx_burst
        assert _engine.__file__.endswith(".so")


def test_twin_is_importable_alongside():
    from fastpath import io_py, twin
    assert twin.Engine is not None and io_py.rx_burst is not None
