"""Build script.

Metadata lives in pyproject.toml. This file exists for the optional C++ extension
``fastspec._C`` (sources in csrc/): it is built here only when FASTSPEC_BUILD_EXT=1, so a
plain ``pip install`` never needs a compiler.
"""

import os

from setuptools import find_packages, setup


def _packages():
    # kernels/ is mapped to fastspec.kernels by package-dir in pyproject.toml; listing it
    # explicitly lets editable installs map it too (their finder only knows listed roots)
    return find_packages(include=["fastspec", "fastspec.*"]) + ["fastspec.kernels"]


def _ext_modules():
    if os.environ.get("FASTSPEC_BUILD_EXT") != "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    sources = sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".cpp"))
    if not sources:
        raise RuntimeError("FASTSPEC_BUILD_EXT=1 but csrc/ holds no .cpp sources")
    ext = CppExtension(
        "fastspec._C",
        sources,
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _ext_modules()
setup(packages=_packages(), ext_modules=ext_modules, cmdclass=cmdclass)
