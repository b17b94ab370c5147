"""The source distribution carries what the compiled extension is built from."""
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tracked():
    r = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail("git ls-files failed: the packaging test needs the git checkout")
    return r.stdout.split()


def test_sdist_holds_every_kernel_source(tmp_path):
    files = _tracked()
    src = tmp_path / "src"
    for f in files:                    # a clean copy: no build products of this checkout
        os.makedirs(src / os.path.dirname(f), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), src / f)
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
                       cwd=src, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (tarball,) = list((tmp_path / "dist").iterdir())
    with tarfile.open(tarball) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    needed = [f for f in files if f.startswith("kernels/")] + ["setup.py", "pyproject.toml"]
    assert len(needed) > 8
    missing = [f for f in needed if f not in names]
    assert not missing, f"the sdist lacks {missing}"
