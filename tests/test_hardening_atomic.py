"""Interrupted writers leave the previous output intact and no partial or temporary file.

The real console script (`bsvit-convert`, and `bsvit-firmware` when it is there) runs in a
child process with a hook (a sitecustomize on PYTHONPATH) that wraps
`bsvit_int.atomic.atomic_write`: inside the write callback of the chosen output, the child
writes half its bytes, flushes and fsyncs them, then

* `sigkill`: kills itself with SIGKILL (nothing can clean up after that), or
* `enospc`: raises OSError(ENOSPC), as a full disk does;

and `efbig` needs no hook: RLIMIT_FSIZE makes the kernel itself fail the write part way.
Afterwards every file in the output directory must be byte-identical either to what was
there before or to the complete new output, and no other file may exist.

`interrupted_run` and `assert_all_or_nothing` take any command and any set of outputs, so
the same check covers bsvit-firmware (several files per run: each one all-or-nothing).
"""
from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest

import bsvit_int
from bsvit_int import atomic
from bsvit_int.container import from_bytes, read_bsi, write_bsi
from bsvit_int.converters import BSViT, BSViTConfig, convert

HOOK = textwrap.dedent('''
    # Test hook: interrupt one bsvit_int.atomic.atomic_write in this process.
    import errno, os, signal
    import bsvit_int.atomic as _atomic

    _target = os.environ.get("BSVIT_TEST_INTERRUPT_SUFFIX")
    _at_call = int(os.environ.get("BSVIT_TEST_INTERRUPT_AT_CALL", "0"))
    _action = os.environ["BSVIT_TEST_INTERRUPT_ACTION"]
    if os.environ.get("BSVIT_TEST_NO_O_TMPFILE"):
        _atomic._USE_O_TMPFILE = False
    _real = _atomic.atomic_write
    _calls = [0]

    class _Interrupting:
        """Forwards to the real file; the first write stops half way."""
        def __init__(self, f):
            self._f = f
        def __getattr__(self, name):
            return getattr(self._f, name)
        def write(self, data):
            data = bytes(data)
            self._f.write(data[: len(data) // 2])
            self._f.flush()
            os.fsync(self._f.fileno())
            if _action == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def atomic_write(path, write):
        _calls[0] += 1
        hit = (_target and os.fspath(path).endswith(_target)) or _calls[0] == _at_call
        if not hit:
            return _real(path, write)
        return _real(path, lambda f: write(_Interrupting(f)))

    _atomic.atomic_write = atomic_write
''')


def console_script(name: str) -> List[str]:
    """The installed console script if there is one, else the same entry point via -c."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    module, func = {"bsvit-convert": ("bsvit_int.cli", "convert_main"),
                    "bsvit-firmware": ("bsvit_int.firmware_cli", "main")}[name]
    return [sys.executable, "-c",
            f"import sys; from {module} import {func}; sys.exit({func}())"]


def interrupt_env(hook_dir: Path, action: str, *, suffix: Optional[str] = None,
                  at_call: int = 0, no_o_tmpfile: bool = False) -> Dict[str, str]:
    """The environment that makes a child interrupt one atomic write (see HOOK)."""
    env = dict(os.environ)
    if action in ("sigkill", "enospc"):
        hook_dir.mkdir(exist_ok=True)
        (hook_dir / "sitecustomize.py").write_text(HOOK)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(hook_dir)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.update(BSVIT_TEST_INTERRUPT_ACTION=action, BSVIT_TEST_INTERRUPT_SUFFIX=suffix or "",
                   BSVIT_TEST_INTERRUPT_AT_CALL=str(at_call))
        if no_o_tmpfile:
            env["BSVIT_TEST_NO_O_TMPFILE"] = "1"
    return env


def file_size_limit(limit: Optional[int]):
    """A preexec_fn making the kernel fail writes past `limit` bytes (EFBIG), or None."""
    if limit is None:
        return None

    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def interrupted_run(argv: List[str], hook_dir: Path, action: str, *,
                    suffix: Optional[str] = None, at_call: int = 0,
                    no_o_tmpfile: bool = False, fsize_limit: Optional[int] = None,
                    timeout: float = 180) -> subprocess.CompletedProcess:
    """Run argv with one atomic write interrupted (by output suffix or call number).

    action: "sigkill" or "enospc" (through the hook), or "efbig" (give fsize_limit).
    """
    env = interrupt_env(hook_dir, action, suffix=suffix, at_call=at_call,
                        no_o_tmpfile=no_o_tmpfile)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=file_size_limit(fsize_limit))


def snapshot(directory: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def assert_all_or_nothing(directory: Path, before: Dict[str, bytes],
                          complete: Dict[str, bytes], *, allow_stray_tmp: bool = False,
                          same: Callable[[str, bytes, bytes], bool] = lambda n, a, b: a == b):
    """Every file is its old bytes or the complete new output; nothing else is there.

    `same(name, data, reference)` says whether data is the complete new output (bytes
    equality by default; bsvit-convert stamps the time into provenance, so it compares
    models instead).
    """
    after = snapshot(directory)
    stray = [n for n in after if n not in before and n not in complete]
    if allow_stray_tmp:
        stray = [n for n in stray if not (n.startswith(".") and n.endswith(".tmp"))]
    assert stray == [], f"unexpected files: {stray}"
    for name, data in after.items():
        if name in before or name in complete:
            assert data == before.get(name) or (
                name in complete and same(name, data, complete[name])), \
                f"{name} is neither the previous output nor the complete new one"
    return after


def same_conversion(name: str, data: bytes, reference: bytes) -> bool:
    """Two bsvit-convert outputs of one checkpoint: equal but for the creation time."""
    if name.endswith(".json"):
        return json.loads(data) == json.loads(reference)
    a, b = from_bytes(data), from_bytes(reference)
    for meta in (a.metadata, b.metadata):
        meta["provenance"].pop("created")
    return a == b


TINY = BSViTConfig(img_size=(4, 6), in_chans=2, patch_size=2, embed_dim=8, depth=1,
                   num_heads=2, mlp_ratio=1.0, adjacency_window=3, burst_max=2, timesteps=2,
                   num_classes=3)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two different checkpoints: 'old' made the existing outputs, 'new' is converted."""
    d = tmp_path_factory.mktemp("ckpt")
    for seed, name in ((0, "old"), (1, "new")):
        torch_seed(seed)
        BSViT(TINY).eval().save(d / f"{name}.pt")
    return d / "old.pt", d / "new.pt"


def torch_seed(seed):
    import torch
    torch.manual_seed(seed)


def _same_model(a: Path, b: Path) -> bool:
    fa, fb = read_bsi(a), read_bsi(b)
    return list(fa.tensors) == list(fb.tensors) and all(
        np.array_equal(fa.tensors[k], fb.tensors[k]) for k in fa.tensors) and \
        fa.metadata["config"] == fb.metadata["config"]


SCENARIOS = {
    # name: (action, output interrupted)
    "sigkill_during_bsi": ("sigkill", ".bsi"),
    "sigkill_during_report": ("sigkill", ".json"),
    "enospc_during_bsi": ("enospc", ".bsi"),
    "enospc_during_report": ("enospc", ".json"),
}


@pytest.fixture(scope="module")
def convert_runs(checkpoints, tmp_path_factory):
    """Every scenario's bsvit-convert, started together (each child imports torch)."""
    old_src, new_src = checkpoints
    root = tmp_path_factory.mktemp("interrupted")
    reference = root / "reference"
    reference.mkdir()
    convert(new_src, reference / "out.bsi", report_path=reference / "out.json", eval_data=None)
    procs = {}
    for name, (action, suffix) in SCENARIOS.items():
        out = root / name
        out.mkdir()
        convert(old_src, out / "out.bsi", report_path=out / "out.json", eval_data=None)
        argv = console_script("bsvit-convert") + [str(new_src), str(out / "out.bsi"),
                                                  "--report", str(out / "out.json"),
                                                  "--eval", "none", "--quiet"]
        env = interrupt_env(root / f"hook-{name}", action, suffix=suffix)
        procs[name] = (out, snapshot(out), subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    runs = {}
    for name, (out, before, proc) in procs.items():
        _, stderr = proc.communicate(timeout=300)
        runs[name] = (out, before, proc.returncode, stderr)
    return snapshot(reference), runs


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_interrupted_convert_is_all_or_nothing(convert_runs, scenario):
    complete, runs = convert_runs
    out, before, returncode, stderr = runs[scenario]
    action, suffix = SCENARIOS[scenario]
    if action == "sigkill":
        assert returncode == -signal.SIGKILL, stderr
    else:
        assert returncode == 1, stderr           # an error exit, not a crash or a hang
        assert "No space left on device" in stderr
    after = assert_all_or_nothing(out, before, complete, same=same_conversion)
    assert after["out.json"] == before["out.json"], "the report must be the previous one"
    if suffix == ".json":
        # The model is written (atomically) before the report: it is the complete new one.
        assert after["out.bsi"] != before["out.bsi"]
        assert same_conversion("out.bsi", after["out.bsi"], complete["out.bsi"])
        bsvit_int.load(out / "out.bsi")
    else:
        assert after["out.bsi"] == before["out.bsi"], "the model must be the previous one"


def test_disk_full_is_one_line_on_stderr(convert_runs):
    _, runs = convert_runs
    stderr = runs["enospc_during_bsi"][3]
    assert "Traceback" not in stderr and stderr.count("\n") == 1


WRITER = """
import sys
import numpy as np
from bsvit_int.container import write_bsi
write_bsi(sys.argv[1], {"version": "new"}, {"w": np.arange(100000, dtype=np.int32)})
"""


def test_kernel_write_failure_efbig_is_all_or_nothing(tmp_path):
    """No hook: RLIMIT_FSIZE makes the kernel fail the write part way (EFBIG), a disk
    quota in miniature. The previous model survives and no temporary file remains."""
    out = tmp_path / "out"
    out.mkdir()
    write_bsi(out / "m.bsi", {"version": "old"}, {"w": np.arange(4, dtype=np.int8)})
    before = snapshot(out)
    r = interrupted_run([sys.executable, "-c", WRITER, str(out / "m.bsi")], tmp_path / "h",
                        "efbig", fsize_limit=64 * 1024)
    assert r.returncode == 1 and "File too large" in r.stderr
    assert snapshot(out) == before


def test_portable_path_keeps_the_destination_but_may_leave_a_temporary(tmp_path):
    """Without O_TMPFILE (other OSes, some file systems) a SIGKILL mid-write cannot remove
    the named temporary file: the destination is still intact; one '.m.bsi.*.tmp' may
    remain. This is why Linux writes into an unnamed file."""
    out = tmp_path / "out"
    out.mkdir()
    write_bsi(out / "m.bsi", {"version": "old"}, {"w": np.arange(4, dtype=np.int8)})
    before = snapshot(out)
    for no_o_tmpfile in (False, True):
        r = interrupted_run([sys.executable, "-c", WRITER, str(out / "m.bsi")],
                            tmp_path / "h", "sigkill", suffix=".bsi", no_o_tmpfile=no_o_tmpfile)
        assert r.returncode == -signal.SIGKILL, r.stderr
        after = assert_all_or_nothing(out, before, {}, allow_stray_tmp=True)
        stray = [n for n in after if n not in before]
        if not no_o_tmpfile and atomic._USE_O_TMPFILE:
            assert stray == []
        else:
            assert len(stray) == 1 and stray[0].startswith(".m.bsi.") and \
                stray[0].endswith(".tmp")


def test_interrupted_firmware_is_all_or_nothing(tmp_path, checkpoints):
    """The same check pointed at bsvit-firmware (several files per run)."""
    _, new_src = checkpoints
    convert(new_src, tmp_path / "m.bsi", eval_data=None)
    reference = tmp_path / "reference"
    r = subprocess.run(console_script("bsvit-firmware") + [str(tmp_path / "m.bsi"),
                                                           str(reference), "--quiet"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    complete = snapshot(reference)
    assert len(complete) >= 2
    for call in (1, len(complete)):            # the first file, and the last
        for action in ("sigkill", "enospc"):
            out = tmp_path / f"out-{action}-{call}"
            out.mkdir()
            for name in complete:
                (out / name).write_bytes(b"previous " + name.encode())
            before = snapshot(out)
            argv = console_script("bsvit-firmware") + [str(tmp_path / "m.bsi"), str(out),
                                                       "--quiet"]
            r = interrupted_run(argv, tmp_path / "hook", action, at_call=call)
            assert r.returncode == (-signal.SIGKILL if action == "sigkill" else 1), r.stderr
            after = assert_all_or_nothing(out, before, complete)
            # The files written before the interrupted one are new; the rest are old.
            assert sum(after[n] == complete[n] for n in after) == call - 1


# --------------------------------------------------------------------------- atomic.py itself


NO_O_TMPFILE = pytest.mark.skipif(not atomic._USE_O_TMPFILE and not os.environ.get("CI"),
                                  reason="no O_TMPFILE on this platform (CI runs on Linux, "
                                         "where these tests must run)")


@pytest.mark.parametrize("unnamed", [pytest.param(True, marks=NO_O_TMPFILE), False],
                         ids=["o_tmpfile", "mkstemp"])
def test_atomic_write_in_process(tmp_path, monkeypatch, unnamed):
    monkeypatch.setattr(atomic, "_USE_O_TMPFILE", unnamed)
    dst = tmp_path / "out.bin"
    seen = []

    def write(f):
        seen.append(sorted(os.listdir(tmp_path)))
        f.write(b"new data")

    old_umask = os.umask(0o077)
    try:
        atomic.atomic_write(dst, write)
    finally:
        os.umask(old_umask)
    assert dst.read_bytes() == b"new data" and (dst.stat().st_mode & 0o777) == 0o644
    # O_TMPFILE: nothing has a name while the data is written (so nothing can be left).
    assert (seen[0] == []) if unnamed else (len(seen[0]) == 1 and seen[0][0].endswith(".tmp"))
    os.chmod(dst, 0o600)

    def fail(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic.atomic_write(dst, fail)
    assert dst.read_bytes() == b"new data" and sorted(os.listdir(tmp_path)) == ["out.bin"]
    atomic.atomic_write_bytes(dst, b"third")
    assert dst.read_bytes() == b"third" and (dst.stat().st_mode & 0o777) == 0o600


@NO_O_TMPFILE
def test_atomic_write_when_linking_the_unnamed_file_is_refused(tmp_path, monkeypatch):
    """A file system that makes O_TMPFILE files but will not link them: copy, then rename."""

    def no_link(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    atomic.atomic_write_bytes(tmp_path / "x.bin", b"copied" * 1000)
    assert (tmp_path / "x.bin").read_bytes() == b"copied" * 1000
    assert os.listdir(tmp_path) == ["x.bin"]


def test_atomic_write_errors_name_the_destination(tmp_path):
    with pytest.raises(FileNotFoundError) as excinfo:
        atomic.atomic_write_bytes(tmp_path / "missing-dir" / "x.bin", b"x")
    assert "missing-dir" in str(excinfo.value)
    if os.geteuid() != 0:                 # root writes into read-only directories anyway
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(PermissionError, match="x.bin"):
                atomic.atomic_write_bytes(ro / "x.bin", b"x")
        finally:
            ro.chmod(0o700)


def test_atomic_write_checkpoint_and_report_writers_use_it(tmp_path, monkeypatch):
    """Models, reports and checkpoints all go through atomic_write (one routine)."""
    calls = []
    real = atomic.atomic_write

    def spy(path, write):
        calls.append(os.path.basename(os.fspath(path)))
        return real(path, write)

    monkeypatch.setattr(atomic, "atomic_write", spy)
    from bsvit_int.converters import checkpoint, convert_model
    monkeypatch.setattr(checkpoint, "atomic_write", spy)
    torch_seed(0)
    BSViT(TINY).eval().save(tmp_path / "m.pt")
    convert_model.convert(tmp_path / "m.pt", tmp_path / "m.bsi",
                          report_path=tmp_path / "r.json", eval_data=None)
    assert calls == ["m.pt", "m.bsi", "r.json"]
