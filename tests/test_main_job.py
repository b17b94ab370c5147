"""The README's first command: the main job on the bundled model, end to end."""
import json
import subprocess
import sys

from bsvit_int.cli import BUNDLED


def test_demo_runs_every_step_and_agrees(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", "import sys; from bsvit_int.cli import demo_main; "
                        "sys.exit(demo_main(sys.argv[1:]))", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    for line in ("float accuracy", "integer accuracy", "top-1 agreement", "energy per image",
                 "host C vs engine  0 mismatches on 20 images"):
        assert line in r.stdout, line
    summary = json.loads((out / "digits-summary.json").read_text())
    assert summary["checkpoint"].endswith("digits.pt") and BUNDLED in summary["checkpoint"]
    steps = summary["steps"]
    assert steps["convert"]["top1_agreement"] >= 0.99
    assert steps["host_c"]["mismatches"] == 0
    for name in ("digits.bsi", "digits-report.json", "digits-profile.json",
                 "digits-profile.png", "firmware/digits_model.h", "firmware/digits_model.c",
                 "firmware/bsvit.c", "firmware/bsvit.h"):
        assert (out / name).is_file(), name
