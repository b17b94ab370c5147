"""The C runtime passes cppcheck (warnings, style, performance, portability) with no finding."""
import subprocess

from test_firmware_support import REPO, require_tools

SOURCES = ["firmware/runtime/bsvit.c", "firmware/host/harness.c",
           "firmware/boards/mps2-an386/main.c", "firmware/boards/mps2-an386/startup.c"]


def test_cppcheck_clean():
    require_tools("cppcheck")
    r = subprocess.run(["cppcheck", "--enable=warning,style,performance,portability",
                        "--std=c99", "--error-exitcode=1", "-q", "-I", "firmware/runtime",
                        *SOURCES], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout


def test_header_and_source_of_different_models_do_not_compile(tmp_path):
    """bsvit-firmware writes the .h and the .c one after the other; a run interrupted
    between them must not build into a model with one model's sizes and another's weights."""
    require_tools("gcc")
    import shutil

    from bsvit_int.config import BSViTConfig
    from bsvit_int.firmware import emit_firmware
    from test_firmware_support import RUNTIME, random_integer_model, write_integer_model

    cfg = BSViTConfig(img_size=(4, 4), in_chans=1, patch_size=2, embed_dim=4, depth=1,
                      num_heads=1, num_classes=2)
    for seed in (0, 1):
        tensors, shifts = random_integer_model(cfg, seed)
        write_integer_model(tmp_path / f"m{seed}.bsi", cfg, tensors, shifts)
        emit_firmware(tmp_path / f"m{seed}.bsi", tmp_path / f"out{seed}", name="m")

    def compile_model(d):
        return subprocess.run(["gcc", "-std=c99", "-c", "-I", str(RUNTIME), "-I", str(d),
                               str(d / "m_model.c"), "-o", str(d / "m.o")],
                              capture_output=True, text=True)

    assert compile_model(tmp_path / "out0").returncode == 0
    shutil.copy(tmp_path / "out1" / "m_model.h", tmp_path / "out0" / "m_model.h")
    r = compile_model(tmp_path / "out0")
    assert r.returncode != 0 and "come from different models" in r.stderr
