"""Build the compiled kernels (Cython) into bsvit_int._kernels.

Set BSVIT_DEBUG=1 at build time to turn bounds checking and wraparound checks back on
(the test suite's debug build); release builds turn them off once, here.
"""
import os

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

extensions = [
    Extension(
        "bsvit_int._kernels",
        ["kernels/_kernels.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O2"] + (["-UNDEBUG"] if DEBUG else []),
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives))
