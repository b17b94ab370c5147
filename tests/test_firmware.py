"""bsvit-firmware on the host: the emitter, the CLI, and the C runtime compiled with gcc and
compared with the NumPy oracle exactly (every held-out digit; Hypothesis-drawn models, each
compiled; spikes of every layer, then logits), under ASan + UBSan as well.

Compiles are the cost here: the runtime is compiled once per flag set and each model adds
one small translation unit; the property tests pin their example counts.
"""
from __future__ import annotations

import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import bsvit_int
from bsvit_int import firmware
from bsvit_int.config import BSViTConfig
from bsvit_int.firmware import FirmwareError, emit_firmware, plan_arena
from bsvit_int.firmware_cli import main as cli_main
from strategies import case_params, configs
from test_firmware_support import (CC, RUNTIME, SANITIZE, STATUS_EXIT_BASE, STRICT,
                                   HostBuild, assert_same_as_oracle, digits_bsi,
                                   integer_model_images, parse_output, random_integer_model,
                                   require_tools, run, run_harness, write_integer_model)

SMALL = BSViTConfig(img_size=(6, 4), in_chans=2, patch_size=2, embed_dim=6, depth=1,
                    num_heads=2, mlp_ratio=1.5, adjacency_window=3, burst_max=3,
                    timesteps=3, num_classes=3, leak_shift=1)
# Each example compiles a model: slow by Hypothesis' standards, and the fixtures it uses
# (the compiled runtime, a temporary-directory factory) are shared across examples on purpose.
SLOW_FIXTURES = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
STATUS = {"BSVIT_OK": 0, "BSVIT_E_NULL_ARGUMENT": 1, "BSVIT_E_BAD_MODEL": 2,
          "BSVIT_E_ARENA_TOO_SMALL": 3, "BSVIT_E_ARENA_MISALIGNED": 4}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    require_tools(CC)
    return HostBuild(tmp_path_factory.mktemp("host"), flags=("-O2",))


@pytest.fixture(scope="module")
def host_trace(tmp_path_factory):
    require_tools(CC)
    return HostBuild(tmp_path_factory.mktemp("host-trace"), flags=("-O1",), trace=True)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return digits_bsi(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def heldout():
    from bsvit_int.converters import data
    return data.digits()["test"][0]


def small_model(tmp_path, cfg=SMALL, seed=0, **kw) -> Path:
    tensors, shifts = random_integer_model(cfg, seed, **kw)
    return write_integer_model(tmp_path / "small.bsi", cfg, tensors, shifts)


def oracle(bsi, images):
    record = {}
    logits = bsvit_int.load(bsi).predict(images, record=record)
    return logits, record


def check_model(build: HostBuild, bsi: Path, images: np.ndarray, outdir: Path,
                name: str = "m") -> None:
    """Emit, compile, run; compare spikes (if traced) and logits with the oracle."""
    emit_firmware(bsi, outdir, name=name)
    exe = build.link(outdir, name)
    r = run_harness(exe, images, "--guard")
    assert r.returncode == 0, r.stderr
    cfg = bsvit_int.load(bsi).config
    got_logits, got_spikes = parse_output(r.stdout, cfg, len(images))
    want_logits, record = oracle(bsi, images)
    traced = "-DBSVIT_TRACE" in build.flags
    assert_same_as_oracle(cfg, record, want_logits, got_logits, got_spikes if traced else None)


# --------------------------------------------------------------------------- the emitter

def test_emit_is_deterministic_and_self_contained(tmp_path):
    bsi = small_model(tmp_path)
    a = emit_firmware(bsi, tmp_path / "a", name="tiny")
    b = emit_firmware(bsi, tmp_path / "b", name="tiny")
    names = sorted(Path(f).name for f in a["files"])
    assert names == ["bsvit.c", "bsvit.h", "tiny_model.c", "tiny_model.h"]
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n
    assert (tmp_path / "a" / "bsvit.c").read_bytes() == (RUNTIME / "bsvit.c").read_bytes()
    h = (tmp_path / "a" / "tiny_model.h").read_text()
    raw = bsi.read_bytes()
    assert f"#define TINY_ARENA_BYTES {a['arena_bytes']}u" in h
    assert f"#define TINY_MODEL_SOURCE_CRC32 0x{zlib.crc32(raw):08x}u" in h
    assert "#define TINY_MODEL_OPSET 1" in h and "#define TINY_NUM_CLASSES 3" in h
    assert "extern const bsvit_model tiny_model;" in h
    c = (tmp_path / "a" / "tiny_model.c").read_text()
    assert "static const uint32_t tiny_embed_weight[" in c and "BSVIT_ALIGNED(16)" in c
    assert "float" not in c and "double" not in c


def test_packed_weights_are_biased_bytes_four_per_word():
    w = np.array([[-127, -1, 0, 1, 127], [5, -5, 6, -6, 7]], dtype=np.int8)
    p = firmware.pack_weight(w)
    assert p.shape == (2, 2) and p.dtype == np.uint32
    assert int(p[0, 0]) == 1 | 127 << 8 | 128 << 16 | 129 << 24
    assert int(p[0, 1]) == 255 | 128 << 8 | 128 << 16 | 128 << 24      # padding = weight 0


@given(cfg=configs())
@settings(max_examples=60, deadline=None)
def test_arena_plan_never_overlaps_live_regions(cfg):
    plan, arena = plan_arena(cfg)
    sizes, lives = firmware.region_sizes(cfg), firmware.region_lifetimes(cfg)
    assert list(plan) == list(firmware.REGIONS)
    for name, (offset, size) in plan.items():
        assert size == sizes[name] and offset % 4 == 0 and offset + size <= arena
    names = [n for n in plan if plan[n][1]]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if lives[a] & lives[b]:
                (oa, sa), (ob, sb) = plan[a], plan[b]
                assert oa + sa <= ob or ob + sb <= oa, (a, plan[a], b, plan[b])
    # sharing pays: never more than every region side by side
    assert arena <= sum(firmware._align(s) for s in sizes.values())


def test_names_are_checked_c_identifiers():
    assert firmware.default_name("models/8x8-digits.bsi") == "m_8x8_digits"
    assert firmware.default_name("int.bsi") == "m_int"
    assert firmware.default_name("digits.bsi") == "digits"
    for bad in ("int", "9lives", "a-b", "bsvit", "bsvit_x", "", "x" * 41):
        with pytest.raises(FirmwareError):
            firmware.check_name(bad)


def test_sizes_beyond_the_c_types_are_refused():
    # BSViTConfig itself caps image sides at 4096; a patch of 64×64×64 values still
    # exceeds the runtime's uint16 fields.
    cfg = BSViTConfig(img_size=(64, 64), in_chans=64, patch_size=64, embed_dim=4, depth=0,
                      num_heads=1, num_classes=2)
    with pytest.raises(FirmwareError, match="patch_dim is 262144"):
        firmware._check_sizes(cfg, 1024)


# --------------------------------------------------------------------------- the CLI

def test_cli_help_explains_outputs_and_use(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for needle in ("NAME_ARENA_BYTES", "bsvit_infer", "--name", "no malloc", "argmax"):
        assert needle in out, needle


def test_cli_writes_and_reports(tmp_path, capsys):
    bsi = small_model(tmp_path)
    assert cli_main([str(bsi), str(tmp_path / "out"), "--name", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "tiny_model.h" in out and "arena" in out
    assert (tmp_path / "out" / "tiny_model.c").is_file()


@pytest.mark.parametrize("case", ["missing", "corrupt", "directory", "bad-name", "not-bsi"])
def test_cli_refuses_with_one_line_and_writes_nothing(tmp_path, capsys, case):
    bsi = small_model(tmp_path)
    out = tmp_path / "out"
    args = [str(bsi), str(out)]
    if case == "missing":
        args[0] = str(tmp_path / "nope.bsi")
    elif case == "corrupt":
        data = bytearray(bsi.read_bytes())
        data[-1] ^= 0xFF                            # last tensor's bytes: CRC mismatch
        bsi.write_bytes(bytes(data))
    elif case == "directory":
        args[0] = str(tmp_path)
    elif case == "bad-name":
        args += ["--name", "3d-model"]
    elif case == "not-bsi":
        bsi.write_bytes(b"not a model at all, just text")
    assert cli_main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("bsvit-firmware: error: ") and "\n" not in err, err
    assert not out.exists() or not any(out.iterdir())


def test_console_script_runs(tmp_path):
    bsi = small_model(tmp_path)
    r = subprocess.run([sys.executable, "-m", "bsvit_int.firmware_cli", str(bsi),
                        str(tmp_path / "o"), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "", r.stderr
    code = ("import sys, bsvit_int.firmware, bsvit_int.firmware_cli; "
            "assert 'torch' not in sys.modules, 'the emitter imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- C == oracle

def test_runtime_compiles_cleanly_at_every_optimisation_level(tmp_path):
    require_tools(CC)
    for opt in ("-O0", "-O1", "-O2", "-O3", "-Os"):
        run([CC, *STRICT, opt, "-Wshadow", "-Wmissing-prototypes", "-Wstrict-prototypes",
             "-c", RUNTIME / "bsvit.c", "-o", tmp_path / "bsvit.o"])


def test_runtime_calls_nothing_but_memset_and_memcpy(tmp_path):
    require_tools(CC, "nm")
    obj = tmp_path / "bsvit.o"
    run([CC, *STRICT, "-O2", "-fno-stack-protector", "-c", RUNTIME / "bsvit.c", "-o", obj])
    undefined = set(run(["nm", "-u", obj]).stdout.split()) - {"U"}
    assert undefined <= {"memset", "memcpy"}, undefined


def test_status_strings_come_from_one_list(tmp_path):
    require_tools(CC)
    src = tmp_path / "status.c"
    src.write_text('#include <stdio.h>\n#include "bsvit.h"\nint main(void) {\n'
                   "    int s;\n    for (s = 0; s <= BSVIT_STATUS_COUNT; s++)\n"
                   '        printf("%d %s\\n", s, bsvit_status_string((bsvit_status)s));\n'
                   "#define P(name, text) printf(\"%s %d\\n\", #name, (int)name);\n"
                   "    BSVIT_STATUS_LIST(P)\n    return 0;\n}\n")
    exe = tmp_path / "status"
    run([CC, *STRICT, "-I", RUNTIME, src, RUNTIME / "bsvit.c", "-o", exe])
    lines = run([exe]).stdout.splitlines()
    n = len(STATUS)
    texts = [line.split(" ", 1)[1] for line in lines[:n + 1]]
    assert texts[-1] == "unknown status" and len(set(texts[:n])) == n
    assert texts[0] == "ok" and "arena" in texts[STATUS["BSVIT_E_ARENA_TOO_SMALL"]]
    assert dict((l.split()[0], int(l.split()[1])) for l in lines[n + 1:]) == STATUS


def test_every_held_out_digit_is_exact(host, digits, heldout, tmp_path):
    check_model(host, digits, heldout, tmp_path / "fw", name="digits")


def test_digits_spikes_of_every_layer_are_exact(host_trace, digits, heldout, tmp_path):
    check_model(host_trace, digits, heldout[::18], tmp_path / "fw", name="digits")


def test_a_converted_model_at_the_int32_edge_is_exact(host_trace, tmp_path):
    """A dead fc1 row under a large BatchNorm bias: the converter gives that channel a
    coarser scale and its layer a bound a few units below 2**31 - 1; the C runtime still
    equals the oracle in every layer's spikes."""
    import torch
    from bsvit_int.converters import BSViT, BSViTConfig, convert
    cfg = BSViTConfig(img_size=(4, 6), in_chans=2, patch_size=2, embed_dim=8, depth=1,
                      num_heads=2, mlp_ratio=1.0, adjacency_window=3, burst_max=2,
                      timesteps=2, num_classes=3)
    torch.manual_seed(0)
    m = BSViT(cfg).eval()
    with torch.no_grad():
        m.blocks[0].mlp.fc1.linear.weight[1].fill_(1e-9)
        m.blocks[0].mlp.fc1.bn.bias[1] = 3.0
    m.save(tmp_path / "m.pt")
    report = convert(tmp_path / "m.pt", tmp_path / "m.bsi", eval_data=None)
    fc1 = report["layers"]["blocks.0.mlp.fc1"]
    assert fc1["coarse_channels"] == [1] and fc1["bound"] > 2**31 - 2**20
    images = np.random.default_rng(2).integers(0, 256, (6, 4, 6, 2), dtype=np.uint8)
    check_model(host_trace, tmp_path / "m.bsi", images, tmp_path / "fw")


@st.composite
def integer_cases(draw):
    cfg = draw(configs())
    weight_max = draw(st.sampled_from([2, 20, 127]))
    theta_scale = draw(st.sampled_from([0.02, 0.3, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["uniform", "extremes", "constant"]))
    batch = draw(st.integers(1, 3))
    return cfg, weight_max, theta_scale, seed, kind, batch


@given(case=integer_cases())
@settings(max_examples=25, deadline=None, suppress_health_check=SLOW_FIXTURES)
def test_random_integer_models_are_exact(host_trace, tmp_path_factory, case):
    """Integer models drawn directly, with small weights and thresholds: spikes at the
    boundaries (v == theta, v == -theta, Bmax clamping, negative leak floors) are common."""
    cfg, weight_max, theta_scale, seed, kind, batch = case
    try:
        tensors, shifts = random_integer_model(cfg, seed, weight_max, theta_scale)
    except ValueError:                       # a bound failed: not a valid model
        assume(False)
    tmp = tmp_path_factory.mktemp("int")
    bsi = write_integer_model(tmp / "m.bsi", cfg, tensors, shifts)
    check_model(host_trace, bsi, integer_model_images(cfg, batch, seed, kind), tmp / "fw")


@given(params=case_params())
@settings(max_examples=6, deadline=None, suppress_health_check=SLOW_FIXTURES)
def test_random_converted_models_are_exact(host_trace, tmp_path_factory, params):
    """Models the converter makes from random float BSViTs (tests/strategies.py)."""
    from bsvit_int.container import write_bsi
    from bsvit_int.converters import quantize
    model, imgs = params.build()
    q = quantize(model)
    tmp = tmp_path_factory.mktemp("conv")
    bsi = tmp / "m.bsi"
    write_bsi(bsi, {"format": "bsvit-int", "opset": 1, "config": q.config.to_dict(),
                    "layers": q.layers, "logit_scale": q.logit_scale}, q.tensors)
    check_model(host_trace, bsi, imgs, tmp / "fw")


# --------------------------------------------------------------------------- failure modes

def _emit_and_edit(tmp_path, edit=None):
    bsi = small_model(tmp_path)
    emit_firmware(bsi, tmp_path / "fw", name="tiny")
    c = tmp_path / "fw" / "tiny_model.c"
    if edit:
        c.write_text(edit(c.read_text()))
    return bsi


@pytest.mark.parametrize("edit", [
    lambda s: s.replace(".magic = BSVIT_MODEL_MAGIC", ".magic = 0x12345678u"),
    lambda s: s.replace(".opset = BSVIT_OPSET", ".opset = 2u"),
    lambda s: re.sub(r"\.stream = \{ (\d+)u, (\d+)u \}", r".stream = { \1u, 1u }", s),
    lambda s: re.sub(r"(tiny_embed_threshold\[\d+\] BSVIT_ALIGNED\(16\) = \{\n    )\d+",
                     r"\g<1>0", s),
    lambda s: s.replace(".burst_max = 3", ".burst_max = 200"),
], ids=["magic", "opset", "plan-region", "threshold-0", "burst-max"])
def test_inconsistent_model_is_refused_with_a_status(host, tmp_path, edit):
    _emit_and_edit(tmp_path, edit)
    exe = host.link(tmp_path / "fw", "tiny")
    r = run_harness(exe, np.zeros((1, 6, 4, 2), np.uint8), "--guard")
    assert r.returncode == STATUS_EXIT_BASE + STATUS["BSVIT_E_BAD_MODEL"], r.stderr
    assert "failed validation" in r.stderr


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory):
    require_tools(CC)
    return HostBuild(tmp_path_factory.mktemp("asan"), flags=("-O1", *SANITIZE), trace=True)


def test_sanitizers_digits(sanitized, digits, heldout, tmp_path):
    """ASan + UBSan: the arena is malloc'd with exactly NAME_ARENA_BYTES, so any access
    past it, any signed overflow or bad shift in the runtime aborts the run."""
    check_model(sanitized, digits, heldout[:40], tmp_path / "fw", name="digits")


@pytest.mark.parametrize("seed, leak, window, depth", [(1, 2, None, 2), (2, None, 1, 1),
                                                       (3, 0, 5, 2)])
def test_sanitizers_random_models(sanitized, tmp_path, seed, leak, window, depth):
    cfg = BSViTConfig(img_size=(6, 9), in_chans=3, patch_size=3, embed_dim=10, depth=depth,
                      num_heads=2, mlp_ratio=2.0, adjacency_window=window,
                      burst_max=15 // (2 * depth + 1), timesteps=5, num_classes=4,
                      leak_shift=leak)
    bsi = small_model(tmp_path, cfg, seed, weight_max=40, theta_scale=0.2)
    check_model(sanitized, bsi, integer_model_images(cfg, 3, seed, "uniform"),
                tmp_path / "fw")


@pytest.mark.parametrize("missing", [1, 4, 64])
def test_arena_too_small_is_a_status_and_writes_nothing(sanitized, tmp_path, missing):
    bsi = _emit_and_edit(tmp_path)
    need = plan_arena(bsvit_int.load(bsi).config)[1]
    exe = sanitized.link(tmp_path / "fw", "tiny")
    images = np.zeros((1, 6, 4, 2), np.uint8)
    # exact-size allocation (ASan reports any access beyond it) ...
    r = run_harness(exe, images, "--arena-bytes", need - missing)
    assert r.returncode == STATUS_EXIT_BASE + STATUS["BSVIT_E_ARENA_TOO_SMALL"], r.stderr
    assert "arena is smaller" in r.stderr
    # ... and between guard zones: neither the guards nor the arena itself were touched
    r = run_harness(exe, images, "--arena-bytes", need - missing, "--guard")
    assert r.returncode == STATUS_EXIT_BASE + STATUS["BSVIT_E_ARENA_TOO_SMALL"], r.stderr
    r = run_harness(exe, images, "--arena-bytes", need, "--guard")
    assert r.returncode == 0, r.stderr


def test_misaligned_arena_is_a_status(sanitized, tmp_path):
    _emit_and_edit(tmp_path)
    exe = sanitized.link(tmp_path / "fw", "tiny")
    r = run_harness(exe, np.zeros((1, 6, 4, 2), np.uint8), "--offset", 2, "--guard")
    assert r.returncode == STATUS_EXIT_BASE + STATUS["BSVIT_E_ARENA_MISALIGNED"], r.stderr


def test_repeated_rows_beyond_the_input_count(host_trace, tmp_path):
    """Regression (found by the property test): an input count of 4 on a 2-input layer adds
    4 rows, more than there are inputs; the row list must have room for them."""
    cfg = BSViTConfig(img_size=(1, 1), in_chans=1, patch_size=1, embed_dim=2, depth=1,
                      num_heads=1, mlp_ratio=0.5, adjacency_window=1, burst_max=4,
                      timesteps=1, num_classes=2)
    bsi = small_model(tmp_path, cfg, 0, weight_max=2, theta_scale=0.02)
    images = np.random.default_rng(0).integers(0, 256, (1, 1, 1, 1), dtype=np.uint8)
    check_model(host_trace, bsi, images, tmp_path / "fw")


def test_wide_layers_flush_their_lanes(sanitized, tmp_path):
    """More than 257 active rows in one sum: 288 pixel inputs (bit-planes) and 264 binary
    stream inputs (repeated rows) overflow a 16-bit lane unless it is flushed."""
    cfg = BSViTConfig(img_size=(12, 12), in_chans=2, patch_size=12, embed_dim=264, depth=1,
                      num_heads=2, mlp_ratio=0.5, adjacency_window=None, burst_max=1,
                      timesteps=2, num_classes=3)
    tensors, shifts = random_integer_model(cfg, 5, weight_max=127, theta_scale=0.05)
    tensors["embed.weight"] = np.full(tensors["embed.weight"].shape, 127, np.int8)
    tensors["embed.threshold"][:] = 1                 # every channel fires: 264 active rows
    tensors["embed.bias"][:] = 0
    bsi = write_integer_model(tmp_path / "wide.bsi", cfg, tensors, shifts)
    images = np.full((2, 12, 12, 2), 255, np.uint8)
    images[1, ::2] = 254
    check_model(sanitized, bsi, images, tmp_path / "fw")
    rec = {}
    bsvit_int.load(bsi).predict(images, record=rec)
    assert (rec["embed"] == 1).all()                  # the flush paths really ran
