"""The house (DESIGN.md): the promises about who imports whom and who knows what, checked on
the source itself rather than trusted to review.

- modes/ imports nothing of lb/; imports point one way (tools/, bench/, tests/ -> lb/ ->
  modes/ -> fastpath/) and there is no import cycle among the project's modules;
- lb/ names no mode: no string constant outside docstrings is a mode's name, and no
  comparison is made with `.mode` on one side and a string on the other;
- every mode in the registry answers the door's questions with the types they promise.
"""
import ast
import os

import pytest

import modes
from fastpath import defs
from fastpath.twin import types as twin_types
from modes.base import Mode

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("fastpath", "modes", "lb", "tools", "bench")
LAYER = {"fastpath": 0, "modes": 1, "lb": 2, "tools": 3, "bench": 3}


def _sources(pkg):
    for root, _, files in os.walk(os.path.join(REPO, pkg)):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(root, f)
                mod = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                if mod.endswith(".__init__"):
                    mod = mod[:-len(".__init__")]
                yield mod, path


def _imports(mod, path):
    """The project modules `mod` imports (absolute and relative, at any depth)."""
    tree = ast.parse(open(path).read(), path)
    is_pkg = path.endswith("__init__.py")
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[:len(base) - node.level + 1]
                prefix = ".".join(parent + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [prefix] + ["%s.%s" % (prefix, a.name) for a in node.names]
        else:
            continue
        for n in names:
            if n.split(".")[0] in PACKAGES:
                out.add(n)
    return out


def _graph():
    mods = {m: p for pkg in PACKAGES for m, p in _sources(pkg)}
    g = {}
    for m, p in mods.items():
        deps = set()
        for n in _imports(m, p):
            while n and n not in mods:       # "pkg.mod.name" -> "pkg.mod"
                n = n.rpartition(".")[0]
            if n and n != m:
                deps.add(n)
        g[m] = deps
    return g


def test_imports_point_one_way():
    for m, deps in _graph().items():
        for d in deps:
            src, dst = m.split(".")[0], d.split(".")[0]
            assert LAYER[dst] <= LAYER[src], "%s imports %s" % (m, d)


def test_no_import_cycle():
    g = _graph()
    state = {}

    def visit(m, stack):
        state[m] = 1
        for d in sorted(g[m]):
            # a package importing its own submodules (modes -> modes.nat) is how a package
            # is built, not a cycle between concerns
            if d.startswith(m + "."):
                continue
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, d]))
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [])


def _docstring_nodes(tree):
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def test_lb_names_no_mode():
    names = set(modes.REGISTRY)
    for mod, path in _sources("lb"):
        tree = ast.parse(open(path).read(), path)
        docs = _docstring_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docs:
                assert node.value not in names, "%s:%d names mode %r" % (
                    path, node.lineno, node.value)
            if isinstance(node, ast.Compare):
                sides = [node.left] + node.comparators
                has_mode = any(isinstance(s, ast.Attribute) and s.attr == "mode" for s in sides)
                has_str = any(isinstance(s, ast.Constant) and isinstance(s.value, str)
                              for s in sides)
                assert not (has_mode and has_str), "%s:%d compares a mode with a string" % (
                    path, node.lineno)


def test_the_registry_is_the_modes_table():
    assert sorted(modes.REGISTRY) == sorted(m.name for m in defs.MODE_TABLE)


@pytest.mark.parametrize("name", list(modes.REGISTRY))
def test_every_mode_answers_the_door(name):
    m = modes.REGISTRY[name]
    assert isinstance(m, Mode) and m.name == name
    assert defs.MODES[name] == m.code
    assert m.default_on_backend_down in ("keep", "expire")
    for attr in ("probe_via_vip", "reverse_path", "pools", "rules"):
        assert isinstance(getattr(m, attr), bool), attr
    assert list(m.counters) == defs.counters_of(name) and m.counters
    # what lb/ is told of the reverse path is what the fast path's table has (the twin's
    # XMIT, filled from the same file pairs as the compiled one)
    assert m.reverse_path == (twin_types.XMIT[m.code].rev is not None)
    for a in m.set_args:
        assert a.name.isidentifier() and callable(a.parse)
    assert modes.get(name) is m
