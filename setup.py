"""Builds the optional CPU extension ``regionc._C`` from ``csrc/``.

Everything else lives in pyproject.toml. The extension is optional: when torch's
C++ toolchain is missing or the build fails, regionc installs without it and the
CPU ops use their torch references (regionc says so once at import).
Install with ``pip install --no-build-isolation -e .`` so the build sees the torch
that is already installed instead of pulling another one into an isolated env.
"""

import glob
import os
import sys

from setuptools import setup


def cpu_extension():
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "csrc", "*.cpp")))
    if not sources or os.environ.get("REGIONC_NO_EXTENSION") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("regionc: torch not importable at build time; skipping regionc._C", file=sys.stderr)
        return [], {}
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    ext = CppExtension(
        "regionc._C",
        sources,
        extra_compile_args=["-O3", *(["-march=native"] if os.environ.get("REGIONC_NATIVE") == "1" else []), *openmp],
        extra_link_args=openmp,
    )

    class OptionalBuild(BuildExtension):
        def build_extension(self, extension):
            try:
                super().build_extension(extension)
            except Exception as exc:  # the package must still install without it
                print(f"regionc: building {extension.name} failed ({exc}); using torch references", file=sys.stderr)

    return [ext], {"build_ext": OptionalBuild.with_options(use_ninja=False)}


ext_modules, cmdclass = cpu_extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
