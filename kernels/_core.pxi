# The per-instruction-set part of the kernels: every nogil kernel, and a table of pointers
# to them that the API module (bsvit_int._kernels) fetches from a capsule. The same source
# is compiled once per variant (kernels/_kernels.pyx explains the dispatch); the structs in
# _network.pxi have the same layout in every build (plain integers and pointers).

include "_simd.pxi"
include "_ops.pxi"
include "_network.pxi"

from cpython.pycapsule cimport PyCapsule_New

cdef struct CoreTable:
    const char* variant
    const char* simd
    const char* popcount
    uint64_t (*test_mask64)(const uint8_t*, uint8_t) noexcept nogil
    uint64_t (*test_mask64_scalar)(const uint8_t*, uint8_t) noexcept nogil
    uint64_t (*eq_mask64)(const uint8_t*, uint8_t) noexcept nogil
    uint64_t (*eq_mask64_scalar)(const uint8_t*, uint8_t) noexcept nogil
    int (*popcount64)(uint64_t) noexcept nogil
    int (*popcount64_scalar)(uint64_t) noexcept nogil
    void (*pack_test_u64)(const uint8_t*, Py_ssize_t, uint8_t, uint64_t*) noexcept nogil
    void (*pack_eq_u64)(const uint8_t*, Py_ssize_t, uint8_t, uint64_t*) noexcept nogil
    void (*plane_lists)(const uint8_t*, Py_ssize_t, int, int32_t*, Py_ssize_t,
                        Py_ssize_t*) noexcept nogil
    void (*accumulate_planes)(int32_t*, const int8_t*, Py_ssize_t, const uint8_t*,
                              const int32_t*, Py_ssize_t, const Py_ssize_t*, int) noexcept nogil
    void (*accumulate_planes_scalar)(int32_t*, const int8_t*, Py_ssize_t, const uint8_t*,
                                     const int32_t*, Py_ssize_t, const Py_ssize_t*,
                                     int) noexcept nogil
    void (*accumulate_rows_i16)(int32_t*, const int8_t*, Py_ssize_t, const int32_t*,
                                Py_ssize_t, int) noexcept nogil
    void (*accumulate_rows_i16_scalar)(int32_t*, const int8_t*, Py_ssize_t, const int32_t*,
                                       Py_ssize_t, int) noexcept nogil
    void (*accumulate_macs)(int32_t*, const int8_t*, Py_ssize_t, const uint8_t*,
                            Py_ssize_t) noexcept nogil
    void (*shift_add_bias)(int32_t*, int, const int32_t*, Py_ssize_t) noexcept nogil
    void (*neuron_step)(int32_t*, const int32_t*, int, const int32_t*, const int32_t*, int,
                        int, int, uint8_t*, Py_ssize_t) noexcept nogil
    int32_t (*head_score)(const uint64_t*, const uint64_t*, Py_ssize_t, Py_ssize_t,
                          const HeadWords*) noexcept nogil
    void (*signed_add)(int32_t*, int32_t, const uint64_t*, const uint64_t*,
                       const HeadWords*) noexcept nogil
    void (*dbssa_token)(int32_t*, Py_ssize_t, const uint64_t*, const uint64_t*,
                        const uint64_t*, const uint64_t*, Py_ssize_t, Py_ssize_t,
                        const int32_t*, Py_ssize_t, const HeadWords*, Py_ssize_t) noexcept nogil
    void (*run_image)(const Net*, Shared*, Scratch*, int, int) noexcept nogil
    void (*delta_parts)(uint8_t*, uint8_t*, const uint8_t*, const uint8_t*,
                        Py_ssize_t) noexcept nogil
    void (*accumulate_delta)(int32_t*, const int8_t*, Py_ssize_t, const uint8_t*,
                             const int32_t*, Py_ssize_t, const Py_ssize_t*, int) noexcept nogil
    void (*accumulate_planes3)(int32_t*, int32_t*, int32_t*, const int8_t*, const int8_t*,
                               const int8_t*, const uint8_t*, const uint8_t*, const uint8_t*,
                               Py_ssize_t, const int32_t*, Py_ssize_t, const Py_ssize_t*, int,
                               int, int) noexcept nogil


cdef CoreTable _table
_table.variant = VARIANT_NAME
_table.simd = bsv_simd_name
_table.popcount = bsv_popcount_name
_table.test_mask64 = bsv_test_mask64
_table.test_mask64_scalar = bsv_test_mask64_scalar
_table.eq_mask64 = bsv_eq_mask64
_table.eq_mask64_scalar = bsv_eq_mask64_scalar
_table.popcount64 = bsv_popcount64
_table.popcount64_scalar = bsv_popcount64_scalar
_table.pack_test_u64 = pack_test_u64
_table.pack_eq_u64 = pack_eq_u64
_table.plane_lists = plane_lists
_table.accumulate_planes = accumulate_planes
_table.accumulate_planes_scalar = accumulate_planes_scalar
_table.accumulate_rows_i16 = accumulate_rows_i16
_table.accumulate_rows_i16_scalar = accumulate_rows_i16_scalar
_table.accumulate_macs = accumulate_macs
_table.shift_add_bias = shift_add_bias
_table.neuron_step = neuron_step
_table.head_score = head_score
_table.signed_add = signed_add
_table.dbssa_token = dbssa_token
_table.run_image = run_image
_table.delta_parts = delta_parts
_table.accumulate_delta = accumulate_delta
_table.accumulate_planes3 = accumulate_planes3

VARIANT = (<bytes>VARIANT_NAME).decode()
CAPSULE_NAME = "bsvit_int.CoreTable"


def core_capsule():
    """The table of this build's kernels, for bsvit_int._kernels (not a public API)."""
    return PyCapsule_New(<void*>&_table, b"bsvit_int.CoreTable", NULL)


def build_info():
    """dict: this build's variant, SIMD path of the byte masks, popcount, column block."""
    return {"variant": VARIANT, "simd": (<bytes>bsv_simd_name).decode(),
            "popcount": (<bytes>bsv_popcount_name).decode(), "cols": COLS}
