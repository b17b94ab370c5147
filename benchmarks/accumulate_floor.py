"""What bounds the engine's innermost loop: accumulate_floor.c, built and run.

    python benchmarks/accumulate_floor.py

Extracts the C block of kernels/_simd.pxi (as tests/test_kernels.py does), compiles
benchmarks/accumulate_floor.c with `gcc -O2 -march=x86-64-v4` and runs it for the list
shapes of the benchmark model. Needs gcc and an AVX-512 (x86-64-v4) CPU. Prints ps per
row-element addition of the engine's loop and of two bounds: the same instructions without
loads, and int16 weights (fewer instructions, twice the bytes). The README of this
directory explains the reading.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join(os.path.dirname(HERE), "kernels")
SHAPES = [(256, 40), (256, 150), (1024, 40), (1024, 150)]


def c_block() -> str:
    text = open(os.path.join(KERNELS, "_simd.pxi")).read()
    head = 'cdef extern from *:\n    """\n'
    start = text.index(head) + len(head)
    body = text[start:text.index('    """', start)]
    return "\n".join(line[4:] if line.startswith("    ") else line for line in body.split("\n"))


def main() -> int:
    if not shutil.which("gcc"):
        print("needs gcc", file=sys.stderr)
        return 1
    sys.path.insert(0, os.path.dirname(HERE))
    try:
        from bsvit_int import _kernels
        if not _kernels.cpu_supports("x86-64-v4"):
            print("needs an x86-64-v4 (AVX-512) CPU", file=sys.stderr)
            return 1
    except ImportError:
        pass                                   # not built here: let the run decide
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "bsv_simd.h"), "w") as f:
            f.write(c_block())
        exe = os.path.join(tmp, "floor")
        subprocess.run(["gcc", "-O2", "-march=x86-64-v4", "-I", tmp, "-o", exe,
                        os.path.join(HERE, "accumulate_floor.c")], check=True)
        for cout, rows in SHAPES:
            subprocess.run([exe, str(cout), str(rows)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
