# cython: language_level=3
"""Compiled kernels of bsvit-int (Cython). Directives are set in setup.py.

Each kernel is a thin `def` that validates its arguments once, then a `nogil` loop; each
names its NumPy oracle in bsvit_int.bitset, against which the tests compare it exactly.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport uint8_t, uint64_t

cnp.import_array()


def pack_bits_u64(const uint8_t[:, ::1] spikes not None):
    """Pack binary spikes [R, D] (0/1) into bitsets [R, ceil(D/64)] uint64, bit d%64 of word d//64.

    Oracle: bsvit_int.bitset.pack_bits_u64. Any non-zero input byte counts as a spike.
    """
    cdef Py_ssize_t rows = spikes.shape[0], d = spikes.shape[1]
    cdef Py_ssize_t words = (d + 63) // 64
    out = np.zeros((rows, words), dtype=np.uint64)
    cdef uint64_t[:, ::1] o = out
    cdef Py_ssize_t r, j
    with nogil:
        for r in range(rows):
            for j in range(d):
                if spikes[r, j] != 0:
                    o[r, j >> 6] |= (<uint64_t>1) << (j & 63)
    return out


def unpack_bits_u64(const uint64_t[:, ::1] words not None, Py_ssize_t d):
    """Inverse of pack_bits_u64: bitsets [R, W] -> uint8 [R, d] of 0/1.

    Oracle: bsvit_int.bitset.unpack_bits_u64.
    """
    if d < 0 or (d + 63) // 64 != words.shape[1]:
        raise ValueError(f"d={d} does not match {words.shape[1]} words per row")
    cdef Py_ssize_t rows = words.shape[0], r, j
    out = np.zeros((rows, d), dtype=np.uint8)
    cdef uint8_t[:, ::1] o = out
    with nogil:
        for r in range(rows):
            for j in range(d):
                o[r, j] = <uint8_t>((words[r, j >> 6] >> (j & 63)) & 1)
    return out
