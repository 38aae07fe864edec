"""Fixtures shared by every test directory. Keep this generic and small."""
import os

import pytest

from fastpath import twin

try:
    from fastpath import _engine
except ImportError:  # the impl fixture fails the test; tests/fastpath/test_impl.py says why
    _engine = None


@pytest.fixture(scope="session", params=["cy", "py"])
def impl(request):
    """The fast-path module to test: ids `cy` (compiled) and `py` (the reference twin)."""
    if request.param == "cy" and _engine is None:
        pytest.fail("the compiled fast path is not built (python3 setup.py build_ext --inplace)")
    return _engine if request.param == "cy" else twin


@pytest.fixture
def make_lab():
    """Factory of network-namespace labs: make_lab(**Lab kwargs) -> a Lab that is up, with a
    unique name unless name= is given. Every lab made is downed when the test ends, also
    when it fails. Skips when not root."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    from tools.lab import Lab, unique_name

    labs = []

    def make(**kw):
        lab = Lab(kw.pop("name", None) or unique_name(), **kw)
        labs.append(lab)
        lab.up()
        return lab

    yield make
    errors = []
    for lab in reversed(labs):
        try:
            lab.down()
        except Exception as e:  # down every lab, then report
            errors.append(e)
    if errors:
        raise errors[0]
