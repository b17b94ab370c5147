"""The firmware on a Cortex-M4: firmware/boards/mps2-an386 built with arm-none-eabi-gcc
(-mfloat-abi=soft) and run under qemu-system-arm -M mps2-an386 -cpu cortex-m4.

Marked `mcu`. Without the cross toolchain or QEMU these tests skip locally and FAIL under
CI (the CI installs them: .ci/run). On the M4 the runtime adds weight rows with the DSP
extension's UXTAB16, so these runs check a code path the host tests do not.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import bsvit_int
from bsvit_int.config import BSViTConfig
from bsvit_int.firmware import emit_firmware
from test_firmware_support import (RUNTIME, STRICT, digits_bsi, load_footprint_tool,
                                   random_integer_model, require_tools, run,
                                   write_integer_model)

pytestmark = pytest.mark.mcu

tool = load_footprint_tool()
STM32F401_FLASH = 192 * 1024          # model + runtime, leaving room for an application
STM32F401_RAM = 48 * 1024             # data + bss + arena + stack
N_DIGITS = 60


@pytest.fixture(scope="module", autouse=True)
def toolchain():
    require_tools(*tool.TOOLS)


def board_run(bsi, name, images, work, **kw):
    """Emit, write golden vectors, build, run: (completed process, oracle logits, elf)."""
    model_dir = work / name
    emit_firmware(bsi, model_dir, name=name)
    want = tool.write_vectors(model_dir, name, bsi, images)
    elf = tool.build_board(model_dir, name, work / f"build-{name}", **kw)
    return tool.run_qemu(elf, timeout=300), want, elf


@pytest.fixture(scope="module")
def digits_board(tmp_path_factory):
    from bsvit_int.converters import data
    work = tmp_path_factory.mktemp("m4-digits")
    bsi = digits_bsi(work)
    images = data.digits()["test"][0][:N_DIGITS]
    r, want, elf = board_run(bsi, "digits", images, work)
    return r, want, elf, work


def test_digits_on_cortex_m4_equal_the_oracle(digits_board):
    r, want, _, _ = digits_board
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    got = tool.parse_logits(out)
    assert got.shape == (N_DIGITS, want.shape[1]), out[-3000:]
    bad = np.argwhere(got != want)
    assert bad.size == 0, f"first mismatch at [image, class] {tuple(bad[0])}"
    assert f"mismatches 0 of {N_DIGITS}" in out


def test_soft_float_image_links_no_float_helper(digits_board, tmp_path):
    _, _, elf, _ = digits_board
    assert tool.float_helpers(elf) == []
    # the check is not vacuous: a soft-float division links __aeabi_fdiv
    src = tmp_path / "f.c"
    src.write_text("volatile float a = 1.0f, b = 3.0f;\nint main(void) { return (int)(a / b); }\n")
    elf_f = tmp_path / "f.elf"
    run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft",
         "--specs=nosys.specs", src, "-o", elf_f])
    assert "__aeabi_fdiv" in tool.float_helpers(elf_f)


def test_digits_fits_an_stm32f401(digits_board):
    r, _, _, work = digits_board
    used = int(re.search(r"stack_used (\d+)", r.stdout + r.stderr).group(1))
    f = tool.footprint(work / "build-digits", "digits", used)
    assert f["flash_runtime"] + f["flash_model"] <= STM32F401_FLASH, f
    assert f["ram_total"] <= STM32F401_RAM, f
    assert 0 < f["ram_stack_used"] <= f["ram_stack_reserved"], f


@pytest.mark.parametrize("cfg, seed", [
    (BSViTConfig(img_size=(6, 10), in_chans=3, patch_size=2, embed_dim=22, depth=2,
                 num_heads=2, mlp_ratio=1.5, adjacency_window=None, burst_max=3,
                 timesteps=5, num_classes=7, leak_shift=1), 11),
    (BSViTConfig(img_size=(8, 8), in_chans=1, patch_size=2, embed_dim=36, depth=1,
                 num_heads=4, mlp_ratio=2.0, adjacency_window=3, burst_max=7,
                 timesteps=3, num_classes=5, leak_shift=None), 12),
    (BSViTConfig(img_size=(12, 12), in_chans=2, patch_size=12, embed_dim=264, depth=1,
                 num_heads=2, mlp_ratio=0.5, adjacency_window=None, burst_max=1,
                 timesteps=2, num_classes=3, leak_shift=0), 13),
], ids=["leaky-global-odd-widths", "IF-window3-bmax7", "wide-lane-flushes"])
def test_random_models_on_cortex_m4_equal_the_oracle(tmp_path, cfg, seed):
    tensors, shifts = random_integer_model(cfg, seed, weight_max=60, theta_scale=0.1)
    bsi = write_integer_model(tmp_path / "m.bsi", cfg, tensors, shifts)
    images = np.random.default_rng(seed).integers(0, 256, (6, cfg.height, cfg.width,
                                                           cfg.in_chans), dtype=np.uint8)
    rec = {}
    bsvit_int.load(bsi).predict(images, record=rec)
    assert any(v.any() for k, v in rec.items() if k.startswith("blocks.")), "silent model"
    r, want, elf = board_run(bsi, "rnd", images, tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    got = tool.parse_logits(out)
    assert got.shape == want.shape and (got == want).all(), (got, want)
    assert tool.float_helpers(elf) == []


@pytest.mark.parametrize("cpu", ["cortex-m0plus", "cortex-m3", "cortex-m4", "cortex-m7",
                                 "cortex-m33"])
def test_runtime_compiles_cleanly_for_cortex_m(tmp_path, cpu):
    for opt in ("-O2", "-Os"):
        run(["arm-none-eabi-gcc", f"-mcpu={cpu}", "-mthumb", "-mfloat-abi=soft", *STRICT, opt,
             "-c", RUNTIME / "bsvit.c", "-o", tmp_path / "bsvit.o"])
    undefined = set(run(["arm-none-eabi-nm", "-u", tmp_path / "bsvit.o"]).stdout.split())
    assert undefined - {"U"} <= {"memset", "memcpy"}, undefined


def test_a_fault_or_timeout_cannot_pass_silently(tmp_path):
    """The board's exit status carries the result: a model with a corrupted plan makes
    bsvit_infer fail and the image exit with 2, not 0."""
    cfg = BSViTConfig(img_size=(4, 4), in_chans=1, patch_size=2, embed_dim=4, depth=1,
                      num_heads=1, timesteps=2, num_classes=2)
    tensors, shifts = random_integer_model(cfg, 3)
    bsi = write_integer_model(tmp_path / "m.bsi", cfg, tensors, shifts)
    model_dir = tmp_path / "bad"
    emit_firmware(bsi, model_dir, name="bad")
    c = model_dir / "bad_model.c"
    c.write_text(c.read_text().replace(".opset = BSVIT_OPSET", ".opset = 9u"))
    tool.write_vectors(model_dir, "bad", bsi, np.zeros((1, 4, 4, 1), np.uint8))
    elf = tool.build_board(model_dir, "bad", tmp_path / "build")
    r = tool.run_qemu(elf, timeout=120)
    assert r.returncode == 2 and "failed validation" in r.stderr, r.stderr
