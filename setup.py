"""Build the compiled kernels (Cython) into bsvit_int._kernels.

Set BSVIT_DEBUG=1 at build time to turn bounds checking and wraparound checks back on
(the test suite's debug build); release builds turn them off once, here.
"""
import os
import platform
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("BSVIT_DEBUG", "") not in ("", "0")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
}


def _kernels_extension(name, pyx, march=None):
    """One build of the kernels; the x86 variants differ in -march (kernels/_kernels.pyx
    explains the runtime dispatch between them), and x86-64-v4 is built with -O3 (measured
    1.2 % less engine time than -O2 on the benchmark model, interleaved A/B; the other
    builds are not measured that way and keep -O2)."""
    opt = "-O3" if march == "x86-64-v4" else "-O2"
    args = [opt, "-fvect-cost-model=cheap", "-fopenmp"] + (["-UNDEBUG"] if DEBUG else [])
    return Extension(
        name,
        [pyx],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=args + ([f"-march={march}"] if march else []),
        extra_link_args=["-fopenmp"],
    )


extensions = [_kernels_extension("bsvit_int._kernels", "kernels/_kernels.pyx")]
if platform.machine().lower() in ("x86_64", "amd64") and sys.platform.startswith("linux"):
    extensions += [_kernels_extension(f"bsvit_int._core_x86_64_v{v}",
                                      f"kernels/_core_x86_64_v{v}.pyx", f"x86-64-v{v}")
                   for v in (2, 3, 4)]

setup(ext_modules=cythonize(extensions, compiler_directives=directives))
