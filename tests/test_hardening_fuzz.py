"""Mutation fuzzing of real model files through `bsvit_int.load` and `predict` (issue 6).

The fuzz loop (fuzz/bsi_worker.py: Hypothesis over fuzz/bsi_mutations.py) runs in a child
process with a hard time limit and a per-case watchdog, so a segfault or abort in any
compiled code, or a hang, fails this test instead of killing or stalling pytest. Seeds:
the bundled digits model converted, and two tiny random models (windowed IF; leaky with
global attention and Bmax 15). Nothing but BsiFormatError or a valid load (followed by a
prediction with int32 logits, equal across backends) is accepted, and the child's peak
memory must stay within its own post-warm-up baseline plus a fixed allowance and a multiple
of the largest seed file. (Peak = the child's VmHWM: its ru_maxrss would start at this
pytest process's resident size, which a Linux child inherits at fork.)

CI runs FUZZ_CASES cases with a fixed seed (BSVIT_FUZZ_SEED overrides it); the longer run
is `python fuzz/run_fuzz.py --cases 100000` (docs/hardening.md).
"""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ_CASES = 10_000
FUZZ_TIMEOUT_S = 300          # hard limit for the whole child; ~35 s on 2 busy cores


def _run_fuzz_module():
    spec = importlib.util.spec_from_file_location("run_fuzz",
                                                  os.path.join(ROOT, "fuzz", "run_fuzz.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_fuzz = _run_fuzz_module()


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory):
    return run_fuzz.build_seeds(str(tmp_path_factory.mktemp("fuzz-seeds")))


def test_fuzz_mutated_models_load_or_raise_bsi_format_error(seed_files, tmp_path):
    seed = int(os.environ.get("BSVIT_FUZZ_SEED", "0"))
    result = run_fuzz.run_worker(seed_files, FUZZ_CASES, seed, str(tmp_path / "work"),
                                 timeout=FUZZ_TIMEOUT_S)
    summary = {k: result.get(k) for k in ("cases", "totals", "distinct_messages",
                                          "slowest_case_s", "baseline_rss_kb",
                                          "peak_rss_kb", "ru_maxrss_kb", "wall_s",
                                          "backends")}
    print("fuzz:", json.dumps(summary))
    assert run_fuzz.problems(result, seed_files, FUZZ_CASES) == []
    assert result["cases"] == FUZZ_CASES
    totals = result["totals"]
    # The mix reaches every layer of validation, and the engine behind it: most cases are
    # refused, some load the seed's own model (padding), hundreds load a changed model
    # that then runs.
    assert totals["rejected"] > FUZZ_CASES // 2
    assert totals["predicted"] > FUZZ_CASES // 50
    assert result["distinct_messages"] >= 60
    for kind in ("flip", "flip+reseal", "truncate", "extend", "splice", "header", "entry",
                 "metadata", "tensors"):
        assert sum(result["outcomes"][kind].values()) > FUZZ_CASES // 50, kind


@pytest.mark.parametrize("fault, expect", [
    ("segv", "killed by signal 11"),
    ("hang", "exceeded the per-case time limit"),
    ("wrong-exception", "load raised KeyError, not BsiFormatError"),
    ("bloat", "peak memory"),
])
def test_the_harness_reports_crashes_hangs_wrong_errors_and_bloat(seed_files, tmp_path,
                                                                   fault, expect):
    """A fault injected at the 10th load must be reported, naming the case it hit."""
    tiny = [p for p in seed_files if os.path.basename(p) == "tiny.bsi"]
    workdir = str(tmp_path / "work")
    cmd_result = run_fuzz.run_worker(tiny, 30, 0, workdir, timeout=120,
                                     extra_args=["--self-test", fault, "--case-timeout", "1"])
    found = run_fuzz.problems(cmd_result, tiny, 30)
    assert len(found) == 1 and expect in found[0], found
    if fault in ("segv", "hang"):
        assert cmd_result["breadcrumb"].startswith("tiny.bsi: ")     # the case that died
