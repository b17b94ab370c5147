# cython: language_level=3
"""The nogil kernels of bsvit-int built with -march=x86-64-v3 (the same source as the
portable build in bsvit_int._kernels; see its docstring). bsvit_int._kernels uses this
build only on a CPU that supports x86-64-v3."""
cdef const char* VARIANT_NAME = b"x86-64-v3"

include "_core.pxi"
