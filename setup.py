"""Build script.

Metadata lives in pyproject.toml. This file exists for the optional C++ extension
``fastspec._C`` (sources in csrc/): it is built here only when FASTSPEC_BUILD_EXT=1, so a
plain ``pip install`` never needs a compiler. Without it, the front end compiles the same
sources on first CPU use into ~/.cache/fastspec (fastspec/frontend/cpp.py, about 2 s).

The extension uses only the CPython C API (no torch headers), so it is a plain setuptools
Extension. ``-march=native`` targets the building machine (AVX-512 where present); set
FASTSPEC_ARCH_FLAGS (e.g. "-mavx2 -mfma", or "" for the compiler's default) for a binary that
must run on other CPUs.
"""

import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPyWithCsrc(build_py):
    """Also ship csrc/ inside the package (``fastspec/_csrc``): an installed (non-editable) copy
    then still finds the sources to compile ``fastspec._C`` on first use."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "fastspec", "_csrc")
        os.makedirs(target, exist_ok=True)
        for name in sorted(os.listdir("csrc")):
            if name.endswith((".cpp", ".h")):
                self.copy_file(os.path.join("csrc", name), os.path.join(target, name))


def _packages():
    # kernels/ is mapped to fastspec.kernels by package-dir in pyproject.toml; listing it
    # explicitly lets editable installs map it too (their finder only knows listed roots)
    return find_packages(include=["fastspec", "fastspec.*"]) + ["fastspec.kernels"]


def _ext_modules():
    if os.environ.get("FASTSPEC_BUILD_EXT") != "1":
        return []
    from setuptools import Extension

    sources = sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".cpp"))
    if not sources:
        raise RuntimeError("FASTSPEC_BUILD_EXT=1 but csrc/ holds no .cpp sources")
    arch = os.environ.get("FASTSPEC_ARCH_FLAGS", "-march=native").split()
    # the same flags as the first-use build in fastspec/frontend/cpp.py
    flags = ["-O3", *arch, "-fopenmp", "-std=gnu++17", "-ffp-contract=fast", "-fvisibility=hidden"]
    ext = Extension(
        "fastspec._C",
        sources,
        depends=[os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".h")],
        extra_compile_args=flags,
        extra_link_args=["-fopenmp"],
        language="c++",
    )
    return [ext]


setup(packages=_packages(), ext_modules=_ext_modules(), cmdclass={"build_py": BuildPyWithCsrc})
