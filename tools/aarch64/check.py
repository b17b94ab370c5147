#!/usr/bin/env python3
"""bsvit-int on the Raspberry Pi's architecture (aarch64), proven under emulation.

    tools/aarch64/check.sh [--quick] [--json out.json]      # everything, in order
    python tools/aarch64/check.py STEP [options]            # one step

Steps (each verifies what it builds; `all` runs them in this order):

  stage     an aarch64 sysroot in a cache directory: Python 3.11 and the libraries it needs
            from Debian 12's arm64 packages (the Python of Raspberry Pi OS bookworm),
            libpython3.11-dev's headers, and wheels from PyPI for manylinux aarch64
            (numpy, pytest, hypothesis; tools/aarch64/requirements.txt). Idempotent: a
            stamp records what was staged, and a re-run with the same inputs does nothing.
  firmware  the C99 runtime (firmware/runtime) and the host harness cross-compiled with
            aarch64-linux-gnu-gcc -std=c99 -O2 (warning-free under the strict flags of
            tests/test_firmware_support.py), run under qemu-aarch64 -cpu cortex-a72 on the
            digits model's held-out images and on random integer models: logits (and, in
            a -DBSVIT_TRACE build, every layer's spikes) equal the NumPy oracle exactly;
            the object code holds no floating-point arithmetic instruction.
  count     instructions per inference on aarch64, counted exactly by the QEMU plugin
            firmware/tools/insn_count.c: the C runtime (digits, mnist5k and benchmark
            models, whichever exist) and, when the kernels are built, the Python engine
            (backend "cython") on the same models; projected Raspberry Pi 4 latency.
  engine    the staged aarch64 Python imports bsvit_int from a copy of this checkout, and
            its NumPy oracle's logits equal the x86 oracle's on the digits model.
  kernels   bsvit_int._kernels cross-built for aarch64 (Cython on the host, then the
            staged Python's own compile and link flags with aarch64-linux-gnu-gcc, the
            staged Python headers and the aarch64 NumPy's headers), into a build directory
            outside the source tree.
  parity    the engine parity tests under qemu-aarch64 -cpu cortex-a72
            (tools/aarch64/emulated_parity.py, run by the staged pytest): aarch64 Cython
            engine == oracle, exactly, on the digits model, converted random BSViTs and
            Hypothesis-drawn integer models; logits and every layer's spikes.

The cache lives in $BSVIT_AARCH64_CACHE, else $BSVIT_CACHE/aarch64, else
~/.cache/bsvit-int/aarch64. Host needs: Debian 12 (bookworm) with gcc-aarch64-linux-gnu,
libc6-dev-arm64-cross, qemu-user, gcc, apt-get, dpkg (.ci/run installs them), network
access to deb.debian.org and PyPI for the first `stage`, and this checkout installed with
its `convert` and `test` extras (torch converts the bundled models on the host).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RUNTIME = REPO / "firmware" / "runtime"
HARNESS = REPO / "firmware" / "host" / "harness.c"
MARKED = HERE / "marked_infer.c"
EMULATED_PARITY = HERE / "emulated_parity.py"
EMULATED_COST = HERE / "emulated_cost.py"
REQUIREMENTS = HERE / "requirements.txt"

CPU = "cortex-a72"                   # Raspberry Pi 4 (BCM2711); qemu rejects A76-only insns
CPUS = {"cortex-a72": "Raspberry Pi 4", "cortex-a76": "Raspberry Pi 5"}    # --cpu choices
CROSS_CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"
SUITE = "bookworm"                   # Debian 12 = Raspberry Pi OS bookworm: Python 3.11.2
MIRRORS = (("http://deb.debian.org/debian", SUITE), ("http://deb.debian.org/debian",
           f"{SUITE}-updates"), ("http://deb.debian.org/debian-security", f"{SUITE}-security"))
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Python 3.11 and what it loads (the closure of python3.11's dependencies that matter for
# running it, without perl, dpkg and friends), the OpenMP and C++ runtimes the kernels and
# NumPy need, and libpython3.11-dev for the headers the extension is compiled against.
DEBS = ("python3.11-minimal", "libpython3.11-minimal", "python3.11", "libpython3.11-stdlib",
        "libpython3.11-dev", "media-types", "libc6", "libgcc-s1", "libstdc++6", "libgomp1",
        "zlib1g", "libexpat1", "libffi8", "libbz2-1.0", "liblzma5", "libcrypt1", "libssl3",
        "libuuid1", "libsqlite3-0", "libncursesw6", "libtinfo6", "libreadline8")
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64",
             "manylinux2014_aarch64")
STAGE_FORMAT = 1
# Strict flags of the host firmware tests (tests/test_firmware_support.py STRICT).
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Wconversion", "-Werror", "-pedantic"]
# Floating-point arithmetic and conversions in A64 disassembly (fmov alone only moves bits
# between register files, which integer NEON code may do).
FP_INSN = re.compile(r"\t(fadd|fsub|fmul|fnmul|fdiv|fmadd|fmsub|fnmadd|fnmsub|fneg|fabs|"
                     r"fsqrt|fcvt\w*|scvtf|ucvtf|fcmp\w*|fccmp\w*|fmax\w*|fmin\w*|frint\w*|"
                     r"fcsel|fmla|fmls|faddp|fabd|frecp\w*|frsqrt\w*)\b")

# Projection of a Raspberry Pi 4 from instruction counts (docs/raspberry-pi.md explains the
# choice): Cortex-A72 at 1.5 GHz (Pi 4B; 1.8 GHz on later boards and the Pi 400),
# 1.0 instructions per cycle as the central (conservative) assumption, 0.7 .. 2.0 the range.
PI4_GHZ = 1.5
PI4_GHZ_LATER = 1.8
IPC = 1.0
IPC_RANGE = (0.7, 2.0)


class CheckError(RuntimeError):
    """A step failed; the message says which and carries the tool's output."""


def log(msg: str) -> None:
    print(msg, flush=True)


def run(cmd: Sequence, timeout: float = 1800, **kw) -> subprocess.CompletedProcess:
    cmd = [str(c) for c in cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode != 0:
        raise CheckError(f"{shlex.join(cmd)} failed ({r.returncode}):\n"
                         f"{r.stdout[-4000:]}{r.stderr[-4000:]}")
    return r


def missing_tools(tools=(CROSS_CC, QEMU, "gcc", "apt-get", "dpkg", "dpkg-query")) -> List[str]:
    missing = [t for t in tools if shutil.which(t) is None]
    if shutil.which(CROSS_CC) and not Path("/usr/aarch64-linux-gnu/include/stdio.h").is_file():
        missing.append("libc6-dev-arm64-cross")
    return missing


INSTALL_HINT = ("apt-get install -y --no-install-recommends gcc gcc-aarch64-linux-gnu "
                "libc6-dev-arm64-cross qemu-user")


def require_tools() -> None:
    missing = missing_tools()
    if missing:
        raise CheckError(f"missing {', '.join(missing)}: {INSTALL_HINT}")


def require_host_python() -> None:
    """The host side converts models (torch) and prepares data (scikit-learn)."""
    missing = [m for m in ("bsvit_int", "torch", "sklearn", "Cython", "pytest")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise CheckError(f"{sys.executable} lacks {', '.join(missing)}: run this with the "
                         "Python where this checkout is installed (pip install -e "
                         "'.[convert,test]'), e.g. PYTHON=.venv/bin/python")


def cache_root() -> Path:
    env = os.environ.get("BSVIT_AARCH64_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("BSVIT_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "bsvit-int") / "aarch64"


# =========================================================================== 1. the sysroot

class Sysroot:
    """A staged aarch64 root: `root` (dpkg -x of the .debs), `site` (the wheels)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.root = self.path / "root"
        self.site = self.path / "site"
        self.python = self.root / "usr" / "bin" / "python3.11"
        self.stamp = self.path / "stamp.json"

    @property
    def include(self) -> List[Path]:
        """Python's headers (Debian's pyconfig.h includes <aarch64-linux-gnu/...>)."""
        return [self.root / "usr" / "include" / "python3.11", self.root / "usr" / "include"]

    @property
    def numpy_include(self) -> Path:
        return self.site / "numpy" / "_core" / "include"

    def sysconfig(self) -> Dict[str, object]:
        path = self.root / "usr" / "lib" / "python3.11" / "_sysconfigdata__aarch64-linux-gnu.py"
        return runpy.run_path(str(path))["build_time_vars"]

    def info(self) -> dict:
        return json.loads(self.stamp.read_text())

    def env(self, pythonpath: Sequence[Path] = ()) -> Dict[str, str]:
        """A clean guest environment (nothing of the host venv leaks in)."""
        env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
               "LANG": "C.UTF-8", "PYTHONNOUSERSITE": "1", "PYTHONHASHSEED": "0",
               "PYTHONPATH": os.pathsep.join(str(p) for p in [*pythonpath, self.site]),
               "PYTHONPYCACHEPREFIX": str(self.path / "pycache"),
               # NumPy's OpenBLAS would start a thread pool whose idle spinning makes
               # instruction counts vary run to run; the engine uses no BLAS.
               "OPENBLAS_NUM_THREADS": "1"}
        for k in ("CI", "BSVIT_HYPOTHESIS_PROFILE"):
            if k in os.environ:
                env[k] = os.environ[k]
        return env

    def qemu(self, plugin: Optional[str] = None) -> List[str]:
        cmd = [QEMU, "-cpu", CPU, "-L", str(self.root)]
        if plugin:
            cmd += ["-plugin", plugin]
        return cmd

    def run_python(self, args: Sequence, pythonpath: Sequence[Path] = (), cwd=None,
                   env_extra: Optional[dict] = None, plugin: Optional[str] = None,
                   timeout: float = 7200, check: bool = True) -> subprocess.CompletedProcess:
        env = self.env(pythonpath)
        env.update(env_extra or {})
        cmd = self.qemu(plugin) + [str(self.python), *map(str, args)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                           env=env)
        if check and r.returncode != 0:
            raise CheckError(f"{shlex.join(cmd)} failed ({r.returncode}):\n"
                             f"{r.stdout[-6000:]}{r.stderr[-6000:]}")
        return r


def stage_spec() -> dict:
    return {"format": STAGE_FORMAT, "suite": SUITE, "debs": list(DEBS),
            "platforms": list(PLATFORMS),
            "requirements": [l.strip() for l in REQUIREMENTS.read_text().splitlines()
                             if l.strip() and not l.startswith("#")]}


def _apt(work: Path) -> List[str]:
    """apt-get with a private configuration for Debian's arm64 archive: its own lists,
    archives and (empty) status; the system's apt configuration is not touched."""
    for d in ("lists/partial", "archives/partial"):
        (work / d).mkdir(parents=True, exist_ok=True)
    (work / "sources.list").write_text("".join(
        f"deb [arch=arm64 signed-by={KEYRING}] {url} {suite} main\n" for url, suite in MIRRORS))
    return ["apt-get", "-q", "-o", f"Dir::Etc::SourceList={work / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/dev/null", "-o", f"Dir::State::Lists={work / 'lists'}",
            "-o", f"Dir::Cache::Archives={work / 'archives'}", "-o", "Dir::State::Status=/dev/null",
            "-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64",
            "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root"]


def stage(path: Optional[Path] = None, refresh: bool = False) -> Sysroot:
    """The staged sysroot for the current spec; built once, then reused."""
    spec = stage_spec()
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    base = Path(path) if path else cache_root()
    sysroot = Sysroot(base / f"sysroot-{key}")
    if not refresh and sysroot.stamp.is_file() and sysroot.python.is_file() \
            and sysroot.info().get("spec") == spec:
        return sysroot
    for tool in ("apt-get", "dpkg", QEMU):
        if shutil.which(tool) is None:
            raise CheckError(f"missing {tool}: {INSTALL_HINT}")
    base.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f"sysroot-{key}.tmp-", dir=base))
    try:
        new = Sysroot(tmp)
        apt = _apt(tmp / "apt")
        run(apt + ["update"], timeout=900)
        debs = tmp / "debs"
        debs.mkdir()
        run(apt + ["download", *[f"{d}:arm64" if d != "media-types" else d for d in DEBS]],
            cwd=debs, timeout=900)
        files = sorted(debs.glob("*.deb"))
        for deb in files:
            run(["dpkg", "-x", deb, new.root])
        wheels = tmp / "wheels"
        plat = [a for p in PLATFORMS for a in ("--platform", p)]
        target = ["--only-binary=:all:", *plat, "--python-version", "3.11",
                  "--implementation", "cp", "--abi", "cp311"]
        run([sys.executable, "-m", "pip", "download", "-q", "-d", wheels, *target,
             "-r", REQUIREMENTS], timeout=900)
        run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links",
             wheels, "--no-deps", "--no-compile", *target, "--target", new.site,
             *sorted(wheels.glob("*.whl"))], timeout=900)
        shutil.rmtree(tmp / "apt", ignore_errors=True)
        shutil.rmtree(debs, ignore_errors=True)
        shutil.rmtree(wheels, ignore_errors=True)
        r = new.run_python(["-c", "import sys, platform, numpy, pytest, hypothesis; "
                            "print(platform.machine(), sys.version.split()[0], "
                            "numpy.__version__, pytest.__version__, hypothesis.__version__)"],
                           timeout=900)
        machine, py, npv, ptv, hyv = r.stdout.split()
        if machine != "aarch64":
            raise CheckError(f"the staged Python reports machine {machine!r}")
        new.stamp.write_text(json.dumps({
            "spec": spec, "debs": [f.name for f in files], "python": py, "numpy": npv,
            "pytest": ptv, "hypothesis": hyv, "staged_seconds": round(time.time() - t0, 1),
        }, indent=2) + "\n")
        if sysroot.path.exists():                # a refresh, or another process won
            if refresh or not sysroot.stamp.is_file():
                shutil.rmtree(sysroot.path)
        if not sysroot.path.exists():
            os.rename(tmp, sysroot.path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in base.iterdir():                     # sysroots of earlier specs
        if re.fullmatch(r"sysroot-[0-9a-f]{12}", old.name) and old != sysroot.path:
            shutil.rmtree(old, ignore_errors=True)
    return sysroot


# =========================================================================== models, data

def _module(name: str, path: Path):
    spec_ = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    return module


def footprint_tool():
    return _module("bsvit_footprint", REPO / "firmware" / "tools" / "footprint.py")


def firmware_support():
    """tests/test_firmware_support.py (harness output parsing, random integer models)."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import test_firmware_support
    return test_firmware_support


def digits_model(work: Path) -> Path:
    dst = work / "digits.bsi"
    if not dst.is_file():
        from bsvit_int.cli import BUNDLED
        from bsvit_int.converters import convert
        convert(Path(BUNDLED) / "digits.pt", dst, eval_data=None)
    return dst


def digits_images(n: Optional[int] = None) -> np.ndarray:
    from bsvit_int import datasets
    x = datasets.digits()["test"][0]
    return x if n is None else x[:n]


def mnist_model(work: Path) -> Optional[Path]:
    """The MNIST model (bsvit_int/models/mnist5k.pt) converted, or None if it is absent."""
    from bsvit_int.cli import BUNDLED
    src = Path(BUNDLED) / "mnist5k.pt"
    if not src.is_file():
        return None
    dst = work / "mnist5k.bsi"
    if not dst.is_file():
        from bsvit_int.converters import convert
        convert(src, dst, eval_data=None)
    return dst


def mnist_images(n: int) -> np.ndarray:
    from bsvit_int import datasets
    return datasets.mnist5k()["test"][0][:n]


def bench_model() -> Optional[Path]:
    """The benchmark model: $BSVIT_BENCH_BSI, else benchmarks/out/bench.bsi if built."""
    env = os.environ.get("BSVIT_BENCH_BSI")
    path = Path(env) if env else REPO / "benchmarks" / "out" / "bench.bsi"
    return path if path.is_file() else None


def bench_images(n: int) -> np.ndarray:
    """benchmarks/make_model.py's images (sklearn digits upscaled to 32x32x3, tinted)."""
    return _module("bsvit_bench_make_model", REPO / "benchmarks" / "make_model.py"
                   ).bench_images(n)


def models_for_counting(work: Path, images: int) -> List[tuple]:
    """(name, .bsi, images) for every model that exists here."""
    out = [("digits", digits_model(work), digits_images(images))]
    m = mnist_model(work)
    if m is not None:
        try:
            out.append(("mnist5k", m, mnist_images(images)))
        except ImportError as e:
            log(f"  mnist5k: model present but its images are not ({e}); skipped")
    b = bench_model()
    if b is not None:
        out.append(("bench", b, bench_images(images)))
    return out


def oracle_logits(bsi: Path, images: np.ndarray, record: Optional[dict] = None) -> np.ndarray:
    import bsvit_int
    model = bsvit_int.load(bsi, backend="numpy")
    return model.predict(images, record=record).astype(np.int64)


# =========================================================================== 2. C runtime

class CrossBuild:
    """The runtime compiled once for aarch64 (per flag set); each model adds its .c."""

    def __init__(self, work: Path, flags=("-O2",), trace: bool = False):
        self.dir = Path(work)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.flags = STRICT + list(flags) + (["-DBSVIT_TRACE"] if trace else [])
        self.runtime_o = self.dir / "bsvit.o"
        run([CROSS_CC, *self.flags, "-I", RUNTIME, "-c", RUNTIME / "bsvit.c",
             "-o", self.runtime_o])
        self.marked_o = self.dir / "marked_infer.o"
        run([CROSS_CC, *self.flags, "-I", RUNTIME, "-c", MARKED, "-o", self.marked_o])

    def link(self, model_dir: Path, name: str, marked: bool = False) -> Path:
        """A static aarch64 harness for the model (marked: bsvit_infer between markers)."""
        exe = Path(model_dir) / (f"harness-{name}" + ("-marked" if marked else ""))
        model_o = Path(model_dir) / f"{name}_model.o"
        run([CROSS_CC, *self.flags, "-I", RUNTIME, "-c", Path(model_dir) / f"{name}_model.c",
             "-o", model_o])
        harness_o = exe.with_suffix(".o")
        run([CROSS_CC, *self.flags, "-I", RUNTIME, "-I", model_dir,
             f"-DBSVIT_MODEL={name}_model", *(["-Dbsvit_infer=bsvit_infer_marked"]
                                             if marked else []),
             "-c", HARNESS, "-o", harness_o])
        run([CROSS_CC, "-static", harness_o, model_o, self.runtime_o,
             *([self.marked_o] if marked else []), "-o", exe])
        return exe


def run_harness(exe: Path, images: np.ndarray, plugin: Optional[str] = None,
                timeout: float = 3600) -> subprocess.CompletedProcess:
    path = exe.parent / "images.bin"
    path.write_bytes(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    cmd = [QEMU, "-cpu", CPU] + (["-plugin", plugin] if plugin else []) + [exe, path]
    return run(cmd, timeout=timeout)


def fp_instructions(obj: Path) -> List[str]:
    text = run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", obj]).stdout
    return sorted({m.group(1) for m in FP_INSN.finditer(text)})


def firmware(work: Path, images: Optional[int] = None, random_models: int = 6) -> dict:
    """The C runtime for aarch64 == the oracle (digits: logits of every image, spikes of
    every layer on a subset; random integer models: spikes and logits)."""
    require_tools()
    from bsvit_int.config import BSViTConfig
    from bsvit_int.firmware import emit_firmware
    fs = firmware_support()
    work = Path(work) / "firmware"
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.time()
    plain = CrossBuild(work / "o2")
    trace = CrossBuild(work / "o2-trace", trace=True)
    fp = fp_instructions(plain.runtime_o)
    if fp:
        raise CheckError(f"bsvit.o for aarch64 contains floating-point instructions: {fp}")
    result = {"compiler": run([CROSS_CC, "--version"]).stdout.splitlines()[0],
              "flags": " ".join(plain.flags), "cpu": CPU, "fp_instructions": fp, "models": []}

    def check(name, bsi, imgs, build, spikes):
        emitted = emit_firmware(bsi, work / name, name=name)
        exe = build.link(work / name, name)
        t = time.time()
        out = run_harness(exe, imgs).stdout
        seconds = time.time() - t
        cfg = BSViTConfig.from_dict(emitted["config"])
        got, got_spikes = fs.parse_output(out, cfg, len(imgs))
        record: dict = {}
        want = oracle_logits(bsi, imgs, record)
        mismatches = int(np.sum(np.any(got != want, axis=1))) if got.shape == want.shape \
            else len(imgs)
        fs.assert_same_as_oracle(cfg, record, want, got, got_spikes if spikes else None)
        entry = {"model": name, "images": int(len(imgs)), "mismatches": mismatches,
                 "spikes_compared": spikes, "qemu_seconds": round(seconds, 2)}
        result["models"].append(entry)
        log(f"  {name}: {len(imgs)} images, {mismatches} mismatches"
            f"{' (logits and every layer spikes)' if spikes else ''}, {seconds:.1f} s in qemu")

    digits = digits_model(work)
    heldout = digits_images(images)
    check("digits", digits, heldout, plain, False)
    check("digits_trace", digits, heldout[::18], trace, True)
    for seed, cfg in enumerate(random_integer_configs()[:random_models]):
        weight_max, theta_scale = ((2, 0.02), (20, 0.3), (127, 1.0))[seed % 3]
        tensors, shifts = fs.random_integer_model(cfg, seed, weight_max, theta_scale)
        bsi = fs.write_integer_model(work / f"rand{seed}.bsi", cfg, tensors, shifts)
        rng = np.random.default_rng(seed)
        imgs = rng.integers(0, 256, (3, cfg.height, cfg.width, cfg.in_chans), dtype=np.uint8)
        check(f"rand{seed}", bsi, imgs, trace, True)
    result["seconds"] = round(time.time() - t0, 1)
    return result


def random_integer_configs():
    """Fixed configurations for the C runtime's random-model check: every window kind,
    leak, burst sizes 1..15, odd widths, a layer with more than 257 active rows."""
    from bsvit_int.config import BSViTConfig
    return [
        BSViTConfig(img_size=(6, 4), in_chans=2, patch_size=2, embed_dim=6, depth=1,
                    num_heads=2, mlp_ratio=1.5, adjacency_window=3, burst_max=3,
                    timesteps=3, num_classes=3, leak_shift=1),
        BSViTConfig(img_size=(8, 12), in_chans=3, patch_size=4, embed_dim=20, depth=2,
                    num_heads=4, mlp_ratio=2.0, adjacency_window=None, burst_max=15,
                    timesteps=2, num_classes=5, leak_shift=None),
        BSViTConfig(img_size=(9, 9), in_chans=1, patch_size=3, embed_dim=9, depth=3,
                    num_heads=3, mlp_ratio=0.5, adjacency_window=1, burst_max=1,
                    timesteps=5, num_classes=4, leak_shift=3),
        BSViTConfig(img_size=(12, 12), in_chans=2, patch_size=12, embed_dim=264, depth=1,
                    num_heads=2, mlp_ratio=0.5, adjacency_window=None, burst_max=1,
                    timesteps=2, num_classes=3),
        BSViTConfig(img_size=(10, 10), in_chans=1, patch_size=2, embed_dim=72, depth=2,
                    num_heads=4, mlp_ratio=1.5, adjacency_window=5, burst_max=8,
                    timesteps=3, num_classes=6, leak_shift=0),
        BSViTConfig(img_size=(4, 8), in_chans=3, patch_size=2, embed_dim=130, depth=1,
                    num_heads=2, mlp_ratio=1.0, adjacency_window=3, burst_max=4,
                    timesteps=4, num_classes=10, leak_shift=2),
    ]


# =========================================================================== 3. counting

def plugin_path() -> Path:
    """firmware/tools/insn_count.c built against the installed QEMU's qemu-plugin.h,
    fetched from Debian's source package once (footprint.py's routine; never vendored).
    qemu-user and qemu-system-arm come from the same source package."""
    fp = footprint_tool()
    version = run(["dpkg-query", "-W", "-f=${source:Version}", "qemu-user"]).stdout.strip()
    fp.qemu_source_version = lambda: version
    try:
        return fp.build_plugin()
    except fp.ToolError as e:
        raise CheckError(str(e)) from None


def symbol(exe: Path, name: str) -> int:
    for line in run(["aarch64-linux-gnu-nm", "--defined-only", exe]).stdout.splitlines():
        p = line.split()
        if len(p) == 3 and p[2] == name:
            return int(p[0], 16)
    raise CheckError(f"{exe}: no symbol {name}")


def projection(instructions: float) -> dict:
    """Projected Raspberry Pi 4 milliseconds: instructions / (IPC * clock)."""
    ms = lambda ipc, ghz: instructions / (ipc * ghz * 1e6)
    return {"ms_1.5GHz": ms(IPC, PI4_GHZ), "ms_1.8GHz": ms(IPC, PI4_GHZ_LATER),
            "ms_1.5GHz_range": [ms(IPC_RANGE[1], PI4_GHZ), ms(IPC_RANGE[0], PI4_GHZ)]}


def count_c(work: Path, plugin: Path, models: List[tuple]) -> List[dict]:
    """Instructions per bsvit_infer on aarch64 (static harness, -O2, cortex-a72)."""
    from bsvit_int.firmware import emit_firmware
    work = Path(work) / "count-c"
    shutil.rmtree(work, ignore_errors=True)
    build = CrossBuild(work / "o2")
    out = []
    for name, bsi, imgs in models:
        emit_firmware(bsi, work / name, name=name)
        exe = build.link(work / name, name, marked=True)
        runs = []
        for k in range(2):                   # twice: the counts must repeat exactly
            counts = work / f"{name}-counts-{k}.txt"
            arg = (f"{plugin},begin={symbol(exe, 'bsvit_mark_begin'):#x},"
                   f"end={symbol(exe, 'bsvit_mark_end'):#x},out={counts}")
            t = time.time()
            text = run_harness(exe, imgs, plugin=arg).stdout
            seconds = time.time() - t
            got = np.array([[int(v) for v in l.split()[2:]] for l in text.splitlines()
                            if l.startswith("L ")], dtype=np.int64)
            windows = [int(l.split()[2]) for l in counts.read_text().splitlines()
                       if l.startswith("window ")]
            runs.append((got, windows, seconds))
        want = oracle_logits(bsi, imgs)
        got, windows, seconds = runs[0]
        mismatches = int(np.sum(np.any(got != want, axis=1))) if got.shape == want.shape \
            else len(imgs)
        if len(windows) != len(imgs):
            raise CheckError(f"{name}: {len(windows)} counting windows for {len(imgs)} images")
        entry = {"model": name, "engine": "C runtime (-O2, static)", "images": len(imgs),
                 "mismatches": mismatches, "repeatable": runs[0][1] == runs[1][1],
                 "instructions_mean": float(np.mean(windows)),
                 "instructions_min": int(min(windows)), "instructions_max": int(max(windows)),
                 "qemu_seconds": round(seconds, 2)}
        entry.update(projection(entry["instructions_mean"]))
        out.append(entry)
        log(_count_line(entry))
        if mismatches or not entry["repeatable"]:
            raise CheckError(f"{name}: {mismatches} mismatches, repeatable="
                             f"{entry['repeatable']}")
    return out


def _count_line(e: dict) -> str:
    lo, hi = e["ms_1.5GHz_range"]
    return (f"  {e['model']:8s} {e['engine']}: {e['instructions_mean'] / 1e6:8.2f} M "
            f"instructions/inference (min {e['instructions_min'] / 1e6:.2f}, max "
            f"{e['instructions_max'] / 1e6:.2f}; {e['images']} images, {e['mismatches']} "
            f"mismatches, repeatable {e['repeatable']}) -> Pi 4 {e['ms_1.5GHz']:.2f} ms at "
            f"1.5 GHz, IPC {IPC} ({lo:.2f}..{hi:.2f}); {e['ms_1.8GHz']:.2f} ms at 1.8 GHz")


def count_engine(sysroot: Sysroot, work: Path, plugin: Path, pkg: Path,
                 models: List[tuple], calls: int = 4) -> List[dict]:
    """Instructions per predict() call of the Python engine (backend "cython", 1 thread,
    one image per call) on aarch64: the whole process is counted with `calls` calls and
    with none (tools/aarch64/emulated_cost.py), each twice, and the difference is divided
    by `calls`, so start-up, imports and model loading cancel out. The Python overheads of
    a call (validation, array handling) are included, as on a Pi. Whole-process totals
    repeat exactly (the guest runs with OPENBLAS_NUM_THREADS=1), which is checked."""
    work = Path(work) / "count-engine"
    work.mkdir(parents=True, exist_ok=True)
    out = []
    for name, bsi, imgs in models:
        imgs = np.ascontiguousarray(imgs[:calls])
        np.save(work / f"{name}-images.npy", imgs)
        totals: Dict[int, List[int]] = {}
        t = time.time()
        # Uncounted first run: it writes the .pyc files of this staging copy (under
        # PYTHONPYCACHEPREFIX), which the counted runs then only read.
        sysroot.run_python([EMULATED_COST, bsi, work / f"{name}-images.npy", 0],
                           pythonpath=[pkg], cwd=work)
        for n in (0, 0, calls, calls):
            counts = work / f"{name}-{n}.txt"
            sysroot.run_python([EMULATED_COST, bsi, work / f"{name}-images.npy", n],
                               pythonpath=[pkg], cwd=work, plugin=f"{plugin},out={counts}")
            total = int(counts.read_text().split("total")[1].split()[0])
            totals.setdefault(n, []).append(total)
            if n:
                got = np.load(work / f"{name}-images-logits-{n}.npy").astype(np.int64)
                if not np.array_equal(got, oracle_logits(bsi, imgs)):
                    raise CheckError(f"{name}: the aarch64 engine's logits differ from the "
                                     f"oracle under counting")
        repeatable = len(set(totals[0])) == 1 and len(set(totals[calls])) == 1
        per = (totals[calls][0] - totals[0][0]) / calls
        entry = {"model": name, "engine": "Python engine (cython, 1 thread, batch 1)",
                 "images": calls, "mismatches": 0, "repeatable": repeatable,
                 "instructions_mean": per, "instructions_min": int(per),
                 "instructions_max": int(per), "process_totals": totals,
                 "qemu_seconds": round(time.time() - t, 1)}
        entry.update(projection(per))
        out.append(entry)
        log(_count_line(entry).replace(f"(min {per / 1e6:.2f}, max {per / 1e6:.2f}; ", "(")
            + " (per call, by difference of whole-process counts)")
        if not repeatable:
            raise CheckError(f"{name}: whole-process instruction counts differ run to run: "
                             f"{totals}")
    return out


# =========================================================================== 4. the engine

def staging_package(work: Path, extension: Optional[Path] = None) -> Path:
    """A copy of this checkout's bsvit_int package (Python sources only: the x86 builds of
    the kernels stay behind), plus the aarch64 kernels if given; returns the directory to
    put on the guest's PYTHONPATH."""
    pkg = Path(work) / "pkg"
    shutil.rmtree(pkg, ignore_errors=True)
    shutil.copytree(REPO / "bsvit_int", pkg / "bsvit_int",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.pt", "*.pyc"))
    if extension is not None:
        for so in Path(extension).glob("*.so"):
            shutil.copy2(so, pkg / "bsvit_int" / so.name)
    return pkg


def engine_oracle(sysroot: Sysroot, work: Path, images: Optional[int] = None) -> dict:
    """The staged Python runs bsvit_int's NumPy oracle on the digits model; its logits
    must equal the x86 oracle's exactly."""
    work = Path(work) / "engine"
    work.mkdir(parents=True, exist_ok=True)
    bsi = digits_model(Path(work).parent)
    x = digits_images(images)
    np.save(work / "images.npy", x)
    np.save(work / "want.npy", oracle_logits(bsi, x))
    pkg = staging_package(work)
    code = ("import sys, time, platform, numpy as np, bsvit_int\n"
            "assert platform.machine() == 'aarch64'\n"
            "assert 'torch' not in sys.modules\n"
            "x = np.load(sys.argv[1]); want = np.load(sys.argv[2])\n"
            "t = time.time(); got = bsvit_int.load(sys.argv[3], backend='numpy').predict(x)\n"
            "print(platform.machine(), bsvit_int.__file__, int(np.sum(np.any(got != want, "
            "axis=1))), round(time.time() - t, 2))\n")
    t0 = time.time()
    r = sysroot.run_python(["-c", code, work / "images.npy", work / "want.npy", bsi],
                           pythonpath=[pkg], cwd=work)
    machine, where, mismatches, seconds = r.stdout.split()
    result = {"machine": machine, "imported_from": where, "images": int(len(x)),
              "mismatches": int(mismatches), "predict_seconds": float(seconds),
              "seconds": round(time.time() - t0, 1)}
    log(f"  aarch64 NumPy oracle, digits: {len(x)} images, {mismatches} mismatches with the "
        f"x86 oracle (predict {seconds} s under qemu, {result['seconds']} s in all)")
    if int(mismatches):
        raise CheckError(f"the aarch64 oracle differs from the x86 oracle on {mismatches} "
                         "images")
    return result


# =========================================================================== 5. the kernels

def setup_extensions():
    """setup.py's extensions and Cython directives as they would be for an aarch64 Linux
    build (setup.py runs with setuptools.setup and cythonize captured; nothing is built)."""
    import platform
    import setuptools
    import Cython.Build
    captured: dict = {}

    def fake_cythonize(module_list, compiler_directives=None, **kw):
        captured.update(extensions=list(module_list), directives=dict(compiler_directives or {}),
                        options=kw)
        return module_list

    saved = (Cython.Build.cythonize, setuptools.setup, platform.machine, os.getcwd(),
             list(sys.argv))
    Cython.Build.cythonize = fake_cythonize
    setuptools.setup = lambda **kw: captured.update(setup=kw)
    platform.machine = lambda: "aarch64"
    try:
        os.chdir(REPO)
        sys.argv = ["setup.py", "build_ext"]
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    finally:
        (Cython.Build.cythonize, setuptools.setup, platform.machine) = saved[:3]
        os.chdir(saved[3])
        sys.argv = saved[4]
    if "extensions" not in captured:
        raise CheckError("setup.py did not call cythonize")
    return captured


def kernels_present() -> bool:
    return (REPO / "kernels" / "_kernels.pyx").is_file() and \
        (REPO / "bsvit_int" / "engine_cython.py").is_file()


def build_kernels(sysroot: Sysroot, work: Optional[Path] = None) -> Path:
    """Cross-build setup.py's extensions for aarch64 into a build directory; returns the
    directory holding the .so files. Cached by the hash of the inputs."""
    require_tools()
    import Cython
    from Cython.Build import cythonize
    captured = setup_extensions()
    cfg = sysroot.sysconfig()
    suffix = cfg["EXT_SUFFIX"]
    host_np = __import__("numpy").get_include()
    sources = sorted(p for p in (REPO / "kernels").iterdir()
                     if p.suffix in (".pyx", ".pxi", ".pxd", ".h"))
    h = hashlib.sha256()
    for p in sources + [REPO / "setup.py", HERE / "check.py"]:
        h.update(p.name.encode() + p.read_bytes())
    h.update(Cython.__version__.encode() + json.dumps(sysroot.info()["debs"]).encode()
             + run([CROSS_CC, "--version"]).stdout.encode())
    base = Path(work) if work else sysroot.path.parent
    out = base / f"kernels-{h.hexdigest()[:12]}"
    if (out / "ok").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    src = out / "src" / "kernels"
    src.mkdir(parents=True)
    for p in sources:
        shutil.copy2(p, src / p.name)
    from setuptools import Extension
    built = []
    for ext in captured["extensions"]:
        pyx = [src / Path(s).name for s in ext.sources]
        copy = Extension(ext.name, [str(p) for p in pyx])
        opts = {k: v for k, v in captured["options"].items()
                if k in ("compile_time_env", "include_path", "language")}
        cythonize([copy], compiler_directives=captured["directives"], quiet=True, **opts)
        c_files = [p.with_suffix(".c") for p in pyx]
        includes = [sysroot.numpy_include if os.path.samefile(d, host_np)
                    else Path(REPO / d if not os.path.isabs(d) else d)
                    for d in ext.include_dirs] + sysroot.include
        defines = [f"-D{n}" if v is None else f"-D{n}={v}" for n, v in ext.define_macros]
        cflags = shlex.split(cfg["CFLAGS"]) + shlex.split(cfg["CCSHARED"])
        objs = []
        for c in c_files:
            o = c.with_suffix(".o")
            run([CROSS_CC, *cflags, *defines, *[f"-I{d}" for d in includes],
                 *ext.extra_compile_args, "-c", c, "-o", o], timeout=3600)
            objs.append(o)
        so = out / (ext.name.split(".")[-1] + suffix)
        ldshared = shlex.split(cfg["LDSHARED"])
        ldshared[0] = CROSS_CC
        run([*ldshared, *objs, *ext.extra_link_args, "-o", so], timeout=600)
        built.append(so.name)
    (out / "ok").write_text("\n".join(built) + "\n")
    done = sorted((p for p in base.glob("kernels-*") if (p / "ok").is_file()),
                  key=lambda p: (p / "ok").stat().st_mtime)
    for old in done[:-3]:                          # keep the three newest builds
        shutil.rmtree(old, ignore_errors=True)
    return out


# A64 instructions a Cortex-A72 (ARMv8.0-A + CRC) lacks: dot products (Pi 5's A76),
# LSE atomics, RCpc loads, SVE. libgcc's outline-atomic helpers (__aarch64_ldadd4_*, ...)
# hold LSE forms behind a run-time HWCAP check, so they are reported apart.
BEYOND_A72 = re.compile(r"^(sdot|udot|usdot|sudot|ldapr\w*|cas\w*|swp\w*|ld(add|clr|eor|set|"
                        r"smax|smin|umax|umin)\w*|st(add|clr|eor|set)\w*|whilelo|ptrue)$")


def machine_code_report(so: Path) -> dict:
    """What the aarch64 kernels contain: NEON popcount (cnt), NEON widening adds (row
    accumulation), and any instruction a Cortex-A72 lacks outside libgcc's guarded
    outline-atomic helpers (qemu -cpu cortex-a72 would also stop on one that runs)."""
    text = run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", so]).stdout
    func, counts, beyond, guarded = "", {}, set(), set()
    for line in text.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            func = m.group(1)
            continue
        p = line.split("\t")
        if len(p) < 2 or not p[0].strip().endswith(":") or not p[1].split():
            continue
        mnem = p[1].split()[0]
        counts[mnem] = counts.get(mnem, 0) + 1
        if BEYOND_A72.match(mnem):
            (guarded if func.startswith("__aarch64_") else beyond).add(f"{mnem} in {func}")
    neon_adds = sum(counts.get(m, 0) for m in ("saddw", "saddw2", "saddl", "saddl2", "sxtl",
                                                "sxtl2", "addv", "uaddlv"))
    return {"cnt": counts.get("cnt", 0), "neon_widening_adds": neon_adds,
            "beyond_cortex_a72": sorted(beyond),
            "guarded_outline_atomics": len(guarded)}


def parity(sysroot: Sysroot, work: Path, ext_dir: Path, quick: bool,
           examples: Optional[int] = None, digits_images_n: Optional[int] = None) -> dict:
    """The emulated parity tests (tools/aarch64/emulated_parity.py) on a corpus the host
    prepares: the digits model with its held-out images, converted random BSViTs, and the
    x86 oracle's logits and spikes for them."""
    work = Path(work) / "parity"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.time()
    corpus = make_corpus(work / "corpus", quick=quick, digits_images_n=digits_images_n)
    pkg = staging_package(work, ext_dir)
    tests = work / "tests"                     # what runs under qemu, copied together
    tests.mkdir()
    for src in (EMULATED_PARITY, REPO / "tests" / "test_firmware_support.py",
                REPO / "tests" / "conftest.py", REPO / "tests" / "test_kernels.py"):
        shutil.copy2(src, tests / src.name)
    examples = examples if examples is not None else (8 if quick else 40)
    env = {"BSVIT_A64_CORPUS": str(corpus), "BSVIT_A64_EXAMPLES": str(examples),
           "BSVIT_A64_REQUIRE_KERNELS": "1",
           "BSVIT_KERNEL_EXAMPLES": str(10 if quick else 60)}
    junit = work / "junit.xml"
    t1 = time.time()
    # test_kernels.py's C self-tests build with host compilers (they run on the host
    # suite); everything else in it runs here, against the aarch64 build.
    r = sysroot.run_python(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
                            "--hypothesis-show-statistics", "-k", "not selftest",
                            "-o", "markers=aarch64: (registered by pyproject.toml)",
                            f"--junitxml={junit}", tests / EMULATED_PARITY.name,
                            tests / "test_kernels.py"], pythonpath=[pkg],
                           cwd=work, env_extra=env, check=False)
    seconds = time.time() - t1
    (work / "pytest.log").write_text(r.stdout + r.stderr)
    summary = [l for l in r.stdout.splitlines() if l.strip()][-1:] or ["(no output)"]
    tests = _junit_counts(junit)
    result = {"returncode": r.returncode, "summary": summary[0], "tests": tests,
              "pytest_seconds": round(seconds, 1), "corpus_seconds": round(t1 - t0, 1),
              "examples": examples, "quick": quick}
    log(f"  emulated pytest: {summary[0]} ({seconds:.0f} s under qemu; corpus "
        f"{t1 - t0:.0f} s on the host)")
    ours = tests.get(EMULATED_PARITY.stem, {})
    if r.returncode != 0 or not ours.get("tests") or ours.get("skipped"):
        raise CheckError(f"emulated parity tests failed:\n{r.stdout[-8000:]}{r.stderr[-3000:]}")
    return result


def _junit_counts(path: Path) -> dict:
    """{module: {"tests", "failures", "errors", "skipped"}} from pytest's JUnit XML."""
    import xml.etree.ElementTree as ET
    out: Dict[str, Dict[str, int]] = {}
    if not path.is_file():
        return out
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        c = out.setdefault(module, {"tests": 0, "failures": 0, "errors": 0, "skipped": 0})
        c["tests"] += 1
        for kind, key in (("failure", "failures"), ("error", "errors"),
                          ("skipped", "skipped")):
            c[key] += len(case.findall(kind))
    return out


# Converted random BSViTs for the parity corpus: (config kwargs, torch seed, gain, edge,
# image kind, batch). Wide and odd widths (vector blocks and tails, head dims straddling
# 64-bit words), every window kind, leak, Bmax 1..15, depth 0..3.
CONVERTED = [
    (dict(img_size=(12, 16), in_chans=3, patch_size=4, embed_dim=96, depth=2, num_heads=3,
          mlp_ratio=1.5, adjacency_window=None, burst_max=8, timesteps=3, num_classes=5,
          leak_shift=1), 1, 1.0, "none", "uniform", 3),
    (dict(img_size=(10, 10), in_chans=1, patch_size=2, embed_dim=72, depth=3, num_heads=4,
          mlp_ratio=2.0, adjacency_window=5, burst_max=15, timesteps=4, num_classes=10,
          leak_shift=None), 2, 2.0, "none", "extremes", 2),
    (dict(img_size=(4, 8), in_chans=2, patch_size=2, embed_dim=130, depth=1, num_heads=2,
          mlp_ratio=0.5, adjacency_window=3, burst_max=4, timesteps=2, num_classes=3,
          leak_shift=3), 3, 1.0, "zero_row", "uniform", 3),
    (dict(img_size=(3, 3), in_chans=1, patch_size=1, embed_dim=5, depth=1, num_heads=1,
          mlp_ratio=1.0, adjacency_window=1, burst_max=1, timesteps=6, num_classes=2,
          leak_shift=0), 4, 0.5, "none", "constant", 2),
    (dict(img_size=(8, 8), in_chans=3, patch_size=2, embed_dim=64, depth=0, num_heads=4,
          mlp_ratio=2.0, adjacency_window=3, burst_max=2, timesteps=3, num_classes=4,
          leak_shift=None), 5, 1.0, "zero_head", "uniform", 2),
    (dict(img_size=(16, 16), in_chans=3, patch_size=4, embed_dim=200, depth=2, num_heads=8,
          mlp_ratio=1.5, adjacency_window=3, burst_max=4, timesteps=4, num_classes=10,
          leak_shift=None), 6, 1.0, "none", "uniform", 2),
]


def make_corpus(dst: Path, quick: bool, digits_images_n: Optional[int] = None) -> Path:
    """Models, images and the x86 oracle's logits and spikes, for emulated_parity.py."""
    import torch
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from strategies import CaseParams
    from bsvit_int.container import write_bsi
    from bsvit_int.converters import BSViTConfig, quantize
    dst.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    entries = []

    def add(name, bsi, images, spike_images):
        record: dict = {}
        logits = oracle_logits(bsi, images)
        oracle_logits(bsi, images[:spike_images], record)
        np.save(dst / f"{name}-images.npy", images)
        np.save(dst / f"{name}-logits.npy", logits)
        np.savez(dst / f"{name}-spikes.npz", **record)
        entries.append({"name": name, "bsi": str(bsi), "images": f"{name}-images.npy",
                        "logits": f"{name}-logits.npy", "spikes": f"{name}-spikes.npz",
                        "spike_images": int(spike_images)})

    n = digits_images_n if digits_images_n is not None else (60 if quick else 360)
    add("digits", digits_model(dst), digits_images(n), 12 if quick else 60)
    for i, (kw, seed, gain, edge, kind, batch) in enumerate(CONVERTED[:3] if quick
                                                            else CONVERTED):
        params = CaseParams(config=BSViTConfig(**kw), torch_seed=seed, gain=gain, edge=edge,
                            image_seed=seed, batch=batch, image_kind=kind)
        model, imgs = params.build()
        q = quantize(model)
        bsi = dst / f"converted{i}.bsi"
        write_bsi(bsi, {"format": "bsvit-int", "opset": 1, "config": q.config.to_dict(),
                        "layers": q.layers, "logit_scale": q.logit_scale}, q.tensors)
        add(f"converted{i}", bsi, imgs, batch)
    (dst / "manifest.json").write_text(json.dumps({"models": entries}, indent=2) + "\n")
    return dst


# =========================================================================== x86 reference

def _host_mhz() -> Optional[float]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    m = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", text, re.M)
    return float(m.group(1)) if m else None


def _x86_instructions(host, model_dir: Path, name: str, imgs: np.ndarray,
                      plugin: Path) -> dict:
    """x86-64 instructions per bsvit_infer of the same C (gcc -O2, static, markers),
    counted with the same plugin under qemu-x86_64: with the measured time, the IPC this
    code reaches on the host."""
    flags = host.flags
    exe = model_dir / f"x86-{name}-marked"
    objs = []
    for src, extra in ((MARKED, []), (model_dir / f"{name}_model.c", []),
                       (HARNESS, [f"-DBSVIT_MODEL={name}_model",
                                  "-Dbsvit_infer=bsvit_infer_marked"])):
        o = model_dir / f"x86-{Path(src).stem}.o"
        run(["gcc", *flags, "-I", RUNTIME, "-I", model_dir, *extra, "-c", src, "-o", o])
        objs.append(o)
    run(["gcc", "-static", *objs, host.runtime_o, "-o", exe])
    syms = {}
    for line in run(["nm", "--defined-only", exe]).stdout.splitlines():
        p = line.split()
        if len(p) == 3:
            syms[p[2]] = int(p[0], 16)
    counts = model_dir / f"x86-{name}-counts.txt"
    (model_dir / "x86-images.bin").write_bytes(np.ascontiguousarray(imgs).tobytes())
    run(["qemu-x86_64", "-plugin", f"{plugin},begin={syms['bsvit_mark_begin']:#x},"
         f"end={syms['bsvit_mark_end']:#x},out={counts}", exe, model_dir / "x86-images.bin"])
    windows = [int(l.split()[2]) for l in counts.read_text().splitlines()
               if l.startswith("window ")]
    return {"x86_instructions": float(np.mean(windows))}


def x86_reference(work: Path, models: List[tuple], repeats: int = 3,
                  plugin: Optional[Path] = None) -> List[dict]:
    """Measured on this machine, one core, wall time per inference (best of `repeats`):
    the C runtime (gcc -O2, x86-64 baseline; (time of N images - time of 1) / (N - 1), so
    process start-up cancels) and the Python engine (cython, 1 thread, one image per call)
    in the build this CPU picks and in the portable "baseline" build."""
    from bsvit_int import engine_cython
    import bsvit_int
    from bsvit_int.firmware import emit_firmware
    fs = firmware_support()
    work = Path(work) / "x86"
    shutil.rmtree(work, ignore_errors=True)
    host = fs.HostBuild(work / "o2", flags=("-O2",))
    out = []

    def best_of(fn) -> float:
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        return best

    for name, bsi, imgs in models:
        emit_firmware(bsi, work / name, name=name)
        exe = host.link(work / name, name)
        n = len(imgs)
        full = best_of(lambda: fs.run_harness(exe, imgs))
        one = best_of(lambda: fs.run_harness(exe, imgs[:1]))
        entry = {"model": name, "images": n, "c_ms": 1e3 * (full - one) / max(n - 1, 1)}
        if plugin is not None and shutil.which("qemu-x86_64"):
            entry.update(_x86_instructions(host, work / name, name, imgs[:3], plugin))
            mhz = _host_mhz()
            if mhz:
                entry["x86_mhz"] = mhz
                entry["x86_ipc"] = entry["x86_instructions"] / (entry["c_ms"] * 1e3 * mhz)
        try:
            for key, variant in (("engine", None), ("engine_baseline", "baseline")):
                model = bsvit_int.load(bsi, backend="cython", threads=1)
                if variant:                    # the same Model, with the portable build
                    model._runner = engine_cython.CythonRunner(
                        model.config, model.tensors, model._shifts, threads=1,
                        variant=variant)
                model.predict(imgs[:1])

                def calls():
                    for i in range(n):
                        model.predict(imgs[i:i + 1])
                entry[f"{key}_ms"] = 1e3 * best_of(calls) / n
                entry[f"{key}_variant"] = model._runner.variant
        except ImportError:
            pass
        out.append(entry)
        log(f"  {name:8s} x86 (this machine, one core, wall time): C runtime "
            f"{entry['c_ms']:.3f} ms"
            + (f" ({entry['x86_instructions'] / 1e6:.2f} M x86 instructions: IPC "
               f"{entry['x86_ipc']:.2f} at {entry['x86_mhz']:.0f} MHz)" if "x86_ipc" in entry
               else "")
            + (f"; Python engine {entry['engine_ms']:.3f} ms ({entry['engine_variant']}), "
               f"{entry['engine_baseline_ms']:.3f} ms (baseline)" if "engine_ms" in entry
               else "") + " per inference")
    return out


# =========================================================================== driver

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("all", "stage", "firmware", "count", "engine",
                                     "kernels", "parity"))
    ap.add_argument("--quick", action="store_true",
                    help="the reduced subset the test suite runs (60 digits, 3 converted "
                         "models, 8 Hypothesis examples, 2 random C models)")
    ap.add_argument("--work", type=Path, help="work directory (default: a temporary one)")
    ap.add_argument("--images", type=int, default=None,
                    help="images per model for counting (default 20; 5 with --quick)")
    ap.add_argument("--examples", type=int, default=None,
                    help="Hypothesis examples in the emulated parity run (default 40; 8 "
                         "with --quick)")
    ap.add_argument("--refresh", action="store_true", help="restage the sysroot")
    ap.add_argument("--no-kernels", action="store_true",
                    help="skip the kernels build and the parity run")
    ap.add_argument("--json", type=Path, help="write the results as JSON")
    ap.add_argument("--cpu", choices=sorted(CPUS), default="cortex-a72",
                    help="the core qemu-aarch64 emulates: cortex-a72 (Raspberry Pi 4, the "
                         "default) or cortex-a76 (Raspberry Pi 5). The binaries are the "
                         "same (built for the A72); `count` projects a Pi 4 and runs with "
                         "cortex-a72 only")
    args = ap.parse_args(argv)
    global CPU
    CPU = args.cpu
    if CPU != "cortex-a72" and args.step == "count":
        ap.error("count projects a Raspberry Pi 4: run it with --cpu cortex-a72")
    work = args.work or Path(tempfile.mkdtemp(prefix="bsvit-aarch64-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"cpu": CPU, "assumptions": {"clock_GHz": [PI4_GHZ, PI4_GHZ_LATER],
                                                 "ipc": IPC, "ipc_range": IPC_RANGE}}
    steps = ("stage", "firmware", "count", "engine", "kernels", "parity") \
        if args.step == "all" else (args.step,)
    if CPU != "cortex-a72":            # the Pi 4 projection does not describe another core
        steps = tuple(st for st in steps if st != "count")
    t_all = time.time()
    try:
        require_tools()
        require_host_python()
        sysroot = None
        ext = None
        for step in steps:
            t = time.time()
            log(f"== {step}")
            if step == "stage" or sysroot is None:
                sysroot = stage(refresh=args.refresh and step == "stage")
                info = sysroot.info()
                results["stage"] = {"path": str(sysroot.path), **{k: info[k] for k in (
                    "python", "numpy", "pytest", "hypothesis")}}
                if step == "stage":
                    log(f"  {sysroot.path}: Python {info['python']}, NumPy {info['numpy']}, "
                        f"pytest {info['pytest']}, Hypothesis {info['hypothesis']} "
                        f"({len(info['debs'])} arm64 packages)")
            if step == "firmware":
                results["firmware"] = firmware(work, None if not args.quick else 120,
                                               random_models=2 if args.quick else 6)
            elif step == "count":
                n = args.images or (5 if args.quick else 20)
                models = models_for_counting(work, n)
                plugin = plugin_path()
                results["count"] = count_c(work, plugin, models)
                if not args.no_kernels and kernels_present():
                    ext = ext or build_kernels(sysroot)
                    pkg = staging_package(work / "count-pkg", ext)
                    results["count"] += count_engine(sysroot, work, plugin, pkg, models)
                results["x86"] = x86_reference(work, models, plugin=plugin)
            elif step == "engine":
                results["engine"] = engine_oracle(sysroot, work,
                                                  60 if args.quick else None)
            elif step == "kernels":
                if args.no_kernels:
                    continue
                if not kernels_present():
                    raise CheckError("the Cython kernels (kernels/_kernels.pyx, "
                                     "bsvit_int/engine_cython.py) are not in this checkout")
                ext = build_kernels(sysroot)
                sos = sorted(ext.glob("*.so"))
                results["kernels"] = {"dir": str(ext), "files": [p.name for p in sos],
                                      "machine_code": {p.name: machine_code_report(p)
                                                       for p in sos}}
                log(f"  {', '.join(p.name for p in sos)} in {ext}")
                for p in sos:
                    report = results["kernels"]["machine_code"][p.name]
                    log(f"    {p.name}: {report}")
                    if report["beyond_cortex_a72"]:
                        raise CheckError(f"{p.name} holds instructions a Cortex-A72 lacks: "
                                         f"{report['beyond_cortex_a72']}")
            elif step == "parity":
                if args.no_kernels:
                    continue
                ext = ext or build_kernels(sysroot)
                results["parity"] = parity(sysroot, work, ext, args.quick, args.examples)
            results.setdefault("seconds", {})[step] = round(time.time() - t, 1)
            log(f"   ({time.time() - t:.1f} s)")
    except (CheckError, subprocess.TimeoutExpired) as e:
        log(f"aarch64 check FAILED: {e}")
        results["error"] = str(e)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        return 1
    results["seconds"]["total"] = round(time.time() - t_all, 1)
    log(f"aarch64 check passed in {time.time() - t_all:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
