# cython: language_level=3
"""Compiled kernels of bsvit-int (Cython): the portable build of the addition-only engine.

What is here (each `def` names its NumPy oracle; tests/test_kernels.py compares exactly):
  bitsets      pack_bits_u64 / unpack_bits_u64, pack_planes_u64 (burst counts as
               bit-planes), pack_signed_u64 (signed spikes as two bitsets)
  accumulate   accumulate_u8 (uint8 counts, shift-and-add over the count's bits),
               accumulate_bits_u64 (binary spikes from bitsets), current_u8 (spec op 1),
               current_pixels_u8 (the patch embedding, the one layer with MACs)
  neurons      neuron_steps (burst / binary / signed, floor leak shift, soft reset)
  DBSSA        dbssa_scores (popcount of Q & K bit-planes over the window),
               signed_accumulate_u64 (V as two bitsets: adds and subtracts),
               dbssa_u64 (both, fused, as the engine runs them)
  Network      the whole model, OpenMP over tokens (bsvit_int.engine_cython)

Directives (bounds checks, wraparound) are set once in setup.py; BSVIT_DEBUG=1 at build
time turns the checks back on.

Portability and the popcount / SIMD decision
--------------------------------------------
The nogil kernels (_core.pxi) are compiled several times, and this module (the API and
the portable build in one) calls the best build the running CPU supports through a table
of function pointers: runtime dispatch by module, decided once per process with the
compiler's CPU detection (default_variant(); $BSVIT_ISA overrides it; every wrapper and
Network take `variant=` to force one, which is how the tests cover all of them):

  baseline   this module: the compiler's default target (x86-64 baseline: SSE2, and
             popcount is libgcc's software routine; aarch64: NEON, popcount is `cnt`)
  x86-64-v2  bsvit_int._core_x86_64_v2, -march=x86-64-v2 (SSE4.2, the popcnt instruction)
  x86-64-v3  bsvit_int._core_x86_64_v3, -march=x86-64-v3 (AVX2)
  x86-64-v4  bsvit_int._core_x86_64_v4, -march=x86-64-v4 (AVX-512)

The x86 variants are built only on x86-64 hosts; they hold no Python API, which keeps
their build short. Nothing is compiled with -march=native, so a wheel built on one machine
runs on any machine of its architecture; the variant is chosen where it runs.

Where the code is C and where it is Cython: the few loops whose speed decides the engine
are C inside _simd.pxi (intrinsics per instruction set, or plain C the compiler vectorises
with `restrict`): the row accumulation (two int8 rows per widening pair-add into int16
partials held in registers), the byte masks, bit-list compaction, the neuron step and the
AVX-512 DBSSA. Measured reasons: GCC's auto-vectoriser kept the accumulator block in
registers only for some targets (AVX2 and SSE2 spilled it, 2-3x slower), never found the
pair-add form, and at -O3 unrolled-and-jammed the row loop into scalar code (see
../shared/TOOLCHAINS.md). Everything else (the engine's structure, bounds, validation) is
Cython. Every SIMD path has a scalar twin compiled into every build; the tests compare
them on the machine at hand, and kernels/selftest/simd_selftest.c checks the C block on
each -march and on aarch64 (NEON) under qemu-aarch64. All of it is integer arithmetic
whose results do not depend on the order of the additions (the converter's bounds hold
for every partial sum), so every path is bit-exact with the NumPy oracle.
"""
cdef const char* VARIANT_NAME = b"baseline"

include "_core.pxi"
include "_api.pxi"
include "_engine_api.pxi"
