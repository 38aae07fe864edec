"""Build threeway: the Cython extensions of fastpath/ and the commands lbd, lbctl, lb-lab.

A failed build fails loudly: there is no fallback to the pure-Python twin here (that twin is
chosen only by THREEWAY_PUREPYTHON=1 at run time).
"""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def generate_pxi():
    """fastpath/_defs.pxi from fastpath/defs.py, so both twins share one set of constants."""
    ns = {}
    with open(os.path.join(HERE, "fastpath", "defs.py")) as f:
        exec(compile(f.read(), "fastpath/defs.py", "exec"), ns)
    text = ns["pxi_text"]()
    path = os.path.join(HERE, "fastpath", "_defs.pxi")
    old = open(path).read() if os.path.exists(path) else None
    if old != text:
        with open(path, "w") as f:
            f.write(text)


def build_bpf():
    """modes/hop/hop_shim.o from hop_shim.c with clang -target bpf, its constants from
    fastpath/defs.py. A missing clang or a compile error stops the build here."""
    import subprocess
    ns = {}
    with open(os.path.join(HERE, "fastpath", "defs.py")) as f:
        exec(compile(f.read(), "fastpath/defs.py", "exec"), ns)
    src = os.path.join(HERE, "modes", "hop", "hop_shim.c")
    out = os.path.join(HERE, "modes", "hop", "hop_shim.o")
    defines = ["-D%s=%d" % (k, ns[k]) for k in ("HOP_OPT_KIND", "HOP_EXID", "HOP_MARK_LEN",
                                                "HOP_HANDOFF_LEN", "HOP_SHIM_FLOWS",
                                                "HOP_PENDING_S", "HOP_IDLE_S", "HOP_CLOSING_S")]
    machine = os.uname().machine
    cmd = (["clang", "-O2", "-g", "-Wall", "-Werror", "-target", "bpf",
            "-I/usr/include/%s-linux-gnu" % machine] + defines + ["-c", src, "-o", out])
    try:
        subprocess.run(cmd, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit("building the hop shim failed (%s): %s" % (e, " ".join(cmd)))


generate_pxi()
build_bpf()

ext_args = dict(include_dirs=[numpy.get_include()],
                extra_compile_args=["-O3", "-fno-strict-aliasing"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
extensions = [
    Extension("fastpath._engine", ["fastpath/_engine.pyx"], **ext_args),
    Extension("fastpath._io", ["fastpath/_io.pyx"], **ext_args),
]

setup(
    name="threeway",
    version="0.1.0",
    description="userspace L4 load balancer: nat, splice, dsr and tunnel",
    packages=["fastpath", "fastpath.twin", "lb", "modes", "modes.splice", "modes.hop", "tools"],
    package_data={"fastpath": ["*.pyx", "*.pxi", "*.pxd"], "modes.hop": ["*.c", "*.o"]},
    ext_modules=cythonize(extensions, language_level=3,
                          compiler_directives={"boundscheck": False, "wraparound": False,
                                               "cdivision": True, "initializedcheck": False}),
    python_requires=">=3.11",
    install_requires=["numpy", "python-pytun", "dpkt", "click"],
    entry_points={"console_scripts": [
        "lbd = lb.daemon:main",
        "lbctl = lb.cli:main",
        "lb-lab = tools.lab:main",
    ]},
)
