"""The twin pairs up with the compiled fast path, file for file and routine for routine:
_engine.pyx's includes are the twin package's modules in the same order, and each .pxi
defines the same routines, in the same order, as its twin module (a def wrapper right after
the cdef routine it wraps counts once; a leading underscore does not count). A routine takes
the engine first in both or in neither. Each mode's row of the dispatch table is filled in
one file pair, and the per-frame routine names no mode."""
import ast
import pathlib
import re

import pytest

from fastpath import defs

ROOT = pathlib.Path(defs.__file__).parent
TWIN = ROOT / "twin"
ROUTINE = re.compile(r"^(?:cdef\s+(?:inline\s+)?[\w\s*]*?\b|def\s+)(\w+)\s*\((\s*Engine\s+self\b)?",
                     re.M)
METHOD = re.compile(r"^    def\s+(\w+)\s*\(", re.M)


def includes():
    text = (ROOT / "_engine.pyx").read_text()
    # _defs.pxi (generated from defs.py) and _iocore.pxi (shared with _io.pyx, whose twin is
    # io_py.py) are not concerns of the engine
    return [n for n in re.findall(r'^include "(\w+)\.pxi"', text, re.M) if not n.startswith("_")]


def twin_modules():
    tree = ast.parse((TWIN / "__init__.py").read_text())
    first = next(n for n in tree.body if isinstance(n, ast.ImportFrom) and n.level == 1
                 and n.module is None)
    return [a.name for a in first.names]


def normalized(routines):
    """[(name, takes the engine)] without leading underscores, a wrapper folded into the
    routine it follows; dunder methods as the twin spells them (__cinit__ is __init__; the
    twin has no C memory to free in __dealloc__)."""
    out = []
    for name, eng in routines:
        if name == "__dealloc__":
            continue
        name = "__init__" if name == "__cinit__" else name
        if not name.startswith("__"):
            name = name.lstrip("_")
        if out and out[-1][0] == name:
            continue
        out.append((name, eng))
    return out


def pxi_routines(name):
    return normalized((m.group(1), bool(m.group(2)))
                      for m in ROUTINE.finditer((ROOT / (name + ".pxi")).read_text()))


def pxi_methods(name):
    """The def methods of the Engine class, if the file has it."""
    text = (ROOT / (name + ".pxi")).read_text()
    body = re.search(r"^cdef class Engine:\n(.*?)(?=^\S|\Z)", text, re.M | re.S)
    return normalized((m, False) for m in METHOD.findall(body.group(1) if body else ""))


def twin_tree(name):
    return ast.parse((TWIN / (name + ".py")).read_text())


def twin_routines(name):
    return normalized((n.name, bool(n.args.args) and n.args.args[0].arg == "self")
                      for n in twin_tree(name).body if isinstance(n, ast.FunctionDef))


def twin_methods(name):
    return normalized((m.name, False) for c in twin_tree(name).body
                      if isinstance(c, ast.ClassDef) and c.name == "Engine" for m in c.body
                      if isinstance(m, ast.FunctionDef))


def test_includes_are_the_twin_modules_in_order():
    assert includes() == twin_modules()
    assert includes()[:3] == ["inet", "types", "engine"]
    for name in includes():
        assert (ROOT / (name + ".pxi")).exists() and (TWIN / (name + ".py")).exists(), name


@pytest.mark.parametrize("name", includes())
def test_same_routines_in_the_same_order(name):
    assert pxi_routines(name) == twin_routines(name)
    assert pxi_methods(name) == twin_methods(name)


def test_the_engine_api_is_its_methods():
    methods = [m for m, _ in pxi_methods("engine")]
    assert methods[0] == "__init__" and "process" in methods and "serve" in methods
    assert pxi_routines("engine") == []


@pytest.mark.parametrize("mode", [m.name for m in defs.MODE_TABLE])
def test_each_mode_fills_its_row_in_one_file_pair(mode):
    c = re.compile(r"^XMIT\[MODE_%s\]\.fwd\s*=" % mode.upper(), re.M)
    py = re.compile(r"^XMIT\[defs\.MODE_%s\]\s*=" % mode.upper(), re.M)
    cy = [n for n in includes() if c.search((ROOT / (n + ".pxi")).read_text())]
    tw = [n for n in includes() if py.search((TWIN / (n + ".py")).read_text())]
    assert len(cy) == 1 and cy == tw, (cy, tw)


@pytest.mark.parametrize("path", [ROOT / "serve.pxi", TWIN / "serve.py"], ids=["cy", "py"])
def test_the_per_frame_routine_names_no_mode(path):
    assert "MODE_" not in path.read_text()
