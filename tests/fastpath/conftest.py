"""Every fast-path test runs on both twins: ids `cy` (compiled) and `py` (the reference)."""
import pytest

from fastpath import engine_py

try:
    from fastpath import _engine
except ImportError:  # the impl fixture fails the test; test_impl.py says why
    _engine = None


@pytest.fixture(scope="session", params=["cy", "py"])
def impl(request):
    if request.param == "cy" and _engine is None:
        pytest.fail("the compiled fast path is not built (python3 setup.py build_ext --inplace)")
    return _engine if request.param == "cy" else engine_py
