"""Fixtures shared by every test directory. Keep this generic and small."""
import os

import pytest


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
