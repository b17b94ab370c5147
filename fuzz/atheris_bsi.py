"""Coverage-guided fuzzing of the `.bsi` loader and engine with atheris (libFuzzer).

    pip install -e '.[fuzz]'          # atheris
    python fuzz/atheris_bsi.py --seed-file digits.bsi --seed-file tiny.bsi \
        --mode structured -- -atheris_runs=200000 -max_total_time=3600 corpus/

Modes (the property is the same as the Hypothesis run's: fuzz/bsi_mutations.py Checker):

* structured (default): the fuzzer's input is the decision bytes of one mutation of a seed
  (the same mutation space as fuzz/bsi_worker.py), so coverage feedback steers which
  field, tensor or metadata value gets rewritten, and CRCs are resealed where it says so.
* resealed: the input is a whole file whose CRCs are recomputed before loading, so the
  fuzzer's byte edits reach the structural and semantic checks behind the checksums.
  Seed the corpus directory with real .bsi files.
* raw: the input is the file as is (the checksums stop almost everything: a CRC test).

bsvit_int is instrumented for coverage; a finding is any exception other than
BsiFormatError from load, any exception from predict on a model that loaded, a mismatch
between backends, or a crash or timeout of the process (libFuzzer reports those itself,
-timeout=N seconds per input). Seeds can be built with `python fuzz/run_fuzz.py --cases 0
--out DIR` (they land in DIR/seeds).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

with atheris.instrument_imports(include=["bsvit_int"]):
    import bsvit_int  # noqa: F401  (instrumented for coverage)
    import bsvit_int.container  # noqa: F401
    import bsvit_int.engine  # noqa: F401

import bsi_mutations as bm  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed-file", action="append", required=True)
    ap.add_argument("--mode", choices=["structured", "resealed", "raw"], default="structured")
    ap.add_argument("--backends", default="auto")
    ap.add_argument("--include-known-gaps", action="store_true")
    args, libfuzzer_args = ap.parse_known_args()
    if libfuzzer_args[:1] == ["--"]:
        libfuzzer_args = libfuzzer_args[1:]

    seeds = [bm.load_seed(p) for p in args.seed_file]
    backends = ("numpy", "cython") if (args.backends == "auto" and bm.cython_available()) \
        or "cython" in args.backends.split(",") else ("numpy",)
    checker = bm.Checker(tempfile.mkdtemp(prefix="bsi-atheris-"), backends)

    def one_input(data: bytes) -> None:
        if args.mode == "structured":
            seed, mutated, _desc, may_differ = bm.mutate(bm.Chooser(data), seeds,
                                                          args.include_known_gaps)
        else:
            seed, may_differ = seeds[0], True
            mutated = bytes(bm.reseal(bytearray(data))) if args.mode == "resealed" else data
        checker.check(seed, mutated, may_differ)

    atheris.Setup([sys.argv[0]] + libfuzzer_args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
