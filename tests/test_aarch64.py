"""The engine on the Raspberry Pi's architecture (aarch64), under emulation (marker aarch64).

A reduced but real subset of `tools/aarch64/check.sh` (docs/raspberry-pi.md), run under
`qemu-aarch64 -cpu cortex-a72` (a Raspberry Pi 4's core; QEMU refuses instructions it lacks;
the C runtime also on `cortex-a76`, a Pi 5's core):

* the C99 runtime and host harness cross-compiled with aarch64-linux-gnu-gcc -std=c99 -O2
  (strict warnings as errors): 120 held-out digits exact, every layer's spikes exact on a
  subset, two random integer models exact; no floating-point instruction in the runtime
  (with a positive control for that check);
* exact, repeatable instruction counts per inference (QEMU plugin);
* an aarch64 Python 3.11 from Debian's arm64 packages with an aarch64 NumPy (staged once in
  ~/.cache/bsvit-int/aarch64) imports bsvit_int from this checkout; its NumPy oracle equals
  the x86 oracle on 60 digits;
* bsvit_int._kernels cross-built for aarch64 (portable build: NEON, `cnt` popcount, nothing
  a Cortex-A72 lacks) and the emulated parity tests: Cython engine == oracle exactly on 60
  digits, 3 converted random BSViTs and 8 Hypothesis-drawn integer models (logits and
  every layer's spikes, 1 and 2 threads), plus tests/test_kernels.py at 10 examples.

The full run (all 360 digits, 6 converted models, 40 + 60 examples, counts for every model)
is `tools/aarch64/check.sh`. Without the toolchain (gcc-aarch64-linux-gnu,
libc6-dev-arm64-cross, qemu-user) or the network for the first staging these tests skip,
and fail when CI is set.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.aarch64


def _skip_or_fail(msg: str):
    if os.environ.get("CI"):
        pytest.fail(msg + " (CI is set: the aarch64 toolchain must be there)")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def a64():
    """tools/aarch64/check.py as a module, with its tools present."""
    path = REPO / "tools" / "aarch64" / "check.py"
    spec = importlib.util.spec_from_file_location("bsvit_aarch64_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = module.missing_tools()
    if missing:
        _skip_or_fail(f"missing {', '.join(missing)}: {module.INSTALL_HINT}")
    return module


@pytest.fixture(scope="module")
def sysroot(a64):
    try:
        return a64.stage()
    except (a64.CheckError, subprocess.TimeoutExpired) as e:
        _skip_or_fail(f"staging the aarch64 sysroot failed: {e}")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("aarch64")


def test_c_runtime_on_cortex_a72_equals_the_oracle(a64, work):
    r = a64.firmware(work, images=120, random_models=2)
    assert r["fp_instructions"] == []
    assert [m["model"] for m in r["models"]] == ["digits", "digits_trace", "rand0", "rand1"]
    assert all(m["mismatches"] == 0 for m in r["models"]), r["models"]
    assert r["models"][0]["images"] == 120 and r["models"][1]["spikes_compared"]


def test_c_runtime_on_cortex_a76_equals_the_oracle(a64, tmp_path, monkeypatch):
    """The same binaries on a Raspberry Pi 5's core (check.py --cpu cortex-a76)."""
    monkeypatch.setattr(a64, "CPU", "cortex-a76")
    r = a64.firmware(tmp_path, images=20, random_models=1)
    assert r["cpu"] == "cortex-a76"
    assert all(m["mismatches"] == 0 for m in r["models"]), r["models"]
    with pytest.raises(SystemExit) as e:          # the Pi 4 projection refuses another core
        a64.main(["count", "--cpu", "cortex-a76"])
    assert e.value.code == 2


def test_the_float_check_finds_float_arithmetic(a64, tmp_path):
    """Positive control of the no-float check the runtime passes above."""
    src = tmp_path / "f.c"
    src.write_text("int scaled(int x) { return (int)((float)x / 3.5f); }\n")
    obj = tmp_path / "f.o"
    a64.run([a64.CROSS_CC, "-O2", "-c", src, "-o", obj])
    found = a64.fp_instructions(obj)
    assert "fdiv" in found and "scvtf" in found, found


def test_instruction_counts_are_exact_and_repeatable(a64, work):
    try:
        plugin = a64.plugin_path()
    except a64.CheckError as e:
        _skip_or_fail(f"the QEMU counting plugin could not be built: {e}")
    digits = a64.digits_model(work)
    models = [("digits", digits, a64.digits_images(3))]
    (entry,) = a64.count_c(work, plugin, models)
    assert entry["mismatches"] == 0 and entry["repeatable"], entry
    # The bundled digits model costs about 7 M A64 instructions per image (-O2).
    assert 2e6 < entry["instructions_mean"] < 2e7, entry
    assert entry["ms_1.5GHz"] == pytest.approx(entry["instructions_mean"] / 1.5e6)


def test_numpy_oracle_on_aarch64_python_equals_x86(a64, sysroot, work):
    info = sysroot.info()
    assert info["python"].startswith("3.11.") and info["numpy"]
    r = a64.engine_oracle(sysroot, work, images=60)
    assert r["machine"] == "aarch64" and r["mismatches"] == 0 and r["images"] == 60
    assert r["imported_from"].endswith("bsvit_int/__init__.py")


def test_cython_engine_on_cortex_a72_equals_the_oracle(a64, sysroot, work):
    if not a64.kernels_present():
        _skip_or_fail("the Cython kernels are not in this checkout")
    ext = a64.build_kernels(sysroot)
    sos = sorted(ext.glob("*.so"))
    assert [p.name for p in sos] == ["_kernels.cpython-311-aarch64-linux-gnu.so"]
    assert not any(p.is_relative_to(REPO) for p in sos)          # never into the source tree
    report = a64.machine_code_report(sos[0])
    assert report["beyond_cortex_a72"] == [], report
    assert report["cnt"] > 0 and report["neon_widening_adds"] > 0, report
    r = a64.parity(sysroot, work, ext, quick=True)
    assert r["returncode"] == 0, r
    ours, kernel_tests = r["tests"]["emulated_parity"], r["tests"]["test_kernels"]
    assert ours["tests"] >= 10 and ours["failures"] == ours["errors"] == ours["skipped"] == 0
    assert kernel_tests["tests"] >= 10 and kernel_tests["failures"] == 0
    assert kernel_tests["errors"] == 0 and kernel_tests["skipped"] < kernel_tests["tests"]
