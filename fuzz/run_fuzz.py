"""Mutation fuzzing of the `.bsi` loader and engine, in subprocesses, for as long as you like.

    python fuzz/run_fuzz.py --cases 100000 --jobs 2 --seed 1 --out /tmp/bsi-fuzz

Builds the seed models (the bundled digits model converted, and two tiny random models:
one IF with windowed attention, one leaky with global attention and Bmax 15; needs the
`convert` extra for torch), then runs fuzz/bsi_worker.py in chunks of `--chunk` cases,
each chunk a fresh process with its own Hypothesis seed (seed, seed+1, ...), `--jobs` at a
time. A chunk fails if its process dies by a signal (segfault, abort), exceeds its time
limit (a hang), reports any outcome other than BsiFormatError or a valid load and
prediction, or its peak memory exceeds the baseline by more than the allowance. Prints a
JSON summary; exit status 0 only if every case passed. Reproduce a failing chunk with the
worker command line printed for it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "bsi_worker.py")
sys.path.insert(0, HERE)
from bsi_worker import peak_rss_kb  # noqa: E402  (VmHWM of a worker, as it measures itself)

# Peak memory allowed above the worker's own post-warm-up baseline: a fixed slack for
# Hypothesis's bookkeeping and allocator noise, plus a multiple of the largest seed file
# (a reader copying a file a few times is fine; one allocating what a header claims is not).
RSS_SLACK_KB = 96 * 1024
RSS_PER_FILE_BYTE = 32


def build_seeds(outdir: str) -> List[str]:
    """The seed models: digits.bsi, tiny.bsi, tiny_leaky_global.bsi (needs torch)."""
    import torch

    import bsvit_int
    from bsvit_int.converters import BSViT, BSViTConfig, convert

    os.makedirs(outdir, exist_ok=True)
    paths = []
    src = os.path.join(os.path.dirname(bsvit_int.__file__), "models", "digits.pt")
    paths.append(os.path.join(outdir, "digits.bsi"))
    convert(src, paths[-1], eval_data=None)
    tiny = {
        "tiny": BSViTConfig(img_size=(4, 6), in_chans=2, patch_size=2, embed_dim=8, depth=1,
                            num_heads=2, mlp_ratio=1.0, adjacency_window=3, burst_max=2,
                            timesteps=2, num_classes=3),
        "tiny_leaky_global": BSViTConfig(img_size=4, in_chans=3, patch_size=2, embed_dim=8,
                                         depth=2, num_heads=2, mlp_ratio=1.5,
                                         adjacency_window=None, burst_max=15, timesteps=3,
                                         num_classes=4, leak_shift=1, attn_threshold=2),
    }
    for i, (name, cfg) in enumerate(tiny.items()):
        torch.manual_seed(i)
        pt = os.path.join(outdir, f"{name}.pt")
        BSViT(cfg).eval().save(pt)
        paths.append(os.path.join(outdir, f"{name}.bsi"))
        convert(pt, paths[-1], eval_data=None)
    return paths


def worker_command(seed_files: List[str], cases: int, seed: int, workdir: str,
                   backends: str = "auto", include_known_gaps: bool = False,
                   case_timeout: float = 20.0, python: Optional[List[str]] = None
                   ) -> List[str]:
    cmd = (python or [sys.executable]) + [WORKER, "--cases", str(cases), "--seed", str(seed),
           "--workdir", workdir, "--json-out", os.path.join(workdir, "result.json"),
           "--breadcrumb", os.path.join(workdir, "breadcrumb.txt"),
           "--backends", backends, "--case-timeout", str(case_timeout)]
    for path in seed_files:
        cmd += ["--seed-file", path]
    if include_known_gaps:
        cmd.append("--include-known-gaps")
    return cmd


def run_worker(seed_files: List[str], cases: int, seed: int, workdir: str, timeout: float,
               backends: str = "auto", include_known_gaps: bool = False,
               extra_args: Optional[List[str]] = None,
               snapshot: Optional[Tuple[List[str], Dict[str, str]]] = None) -> Dict:
    """Run one worker process; returns its JSON result plus what the parent observed:
    returncode, peak_rss_kb (the child's VmHWM, polled while it runs so it is known even
    if the child dies; ru_maxrss_kb from wait4 is kept too, but on Linux it includes this
    parent's size at fork), timed_out, breadcrumb (the case running when it died) and the
    tail of stderr."""
    os.makedirs(workdir, exist_ok=True)
    python, env = snapshot if snapshot else (None, None)
    cmd = worker_command(seed_files, cases, seed, workdir, backends, include_known_gaps,
                         python=python)
    cmd += extra_args or []
    stderr_path = os.path.join(workdir, "stderr.txt")
    t0 = time.monotonic()
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                start_new_session=True)
        timed_out = False
        polled_kb = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            # The child's own high-water mark, read while it runs: still known if it dies.
            polled_kb = max(polled_kb, peak_rss_kb(proc.pid))
            if time.monotonic() - t0 > timeout:
                timed_out = True
                os.killpg(proc.pid, 9)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
    result: Dict = {}
    result_path = os.path.join(workdir, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            result = json.load(f)
    crumb_path = os.path.join(workdir, "breadcrumb.txt")
    crumb = open(crumb_path, encoding="utf-8", errors="replace").read() \
        if os.path.exists(crumb_path) else ""
    with open(stderr_path, "rb") as f:
        stderr_tail = f.read()[-4000:].decode("utf-8", "replace")
    peak_kb = max(polled_kb, result.get("final_peak_rss_kb") or 0)
    result.update(returncode=proc.returncode, peak_rss_kb=peak_kb,
                  ru_maxrss_kb=usage.ru_maxrss,
                  timed_out=timed_out, wall_s=round(time.monotonic() - t0, 2),
                  breadcrumb=crumb, stderr_tail=stderr_tail, command=" ".join(cmd))
    return result


def snapshot_runtime(outdir: str) -> Tuple[List[str], Dict[str, str]]:
    """(python command, environment) that run a private copy of the installed bsvit_int.

    A long run takes minutes; rebuilding the extension modules in place meanwhile (pip
    install -e ., build_ext --inplace) makes running workers die of SIGBUS or mismatched
    modules. Workers started with `python -S` and this PYTHONPATH import the copy instead
    (no site processing, so no editable-install finder), so one run measures one build.
    """
    import bsvit_int
    package = os.path.dirname(os.path.abspath(bsvit_int.__file__))
    target = os.path.join(outdir, "bsvit_int")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__"))
    site_dirs = [p for p in sys.path if p.rstrip(os.sep).endswith("site-packages")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([outdir] + site_dirs))
    return [sys.executable, "-S"], env


def problems(result: Dict, seed_files: List[str], cases: int) -> List[str]:
    """Everything wrong with one worker's run, as sentences (empty: it passed)."""
    out = []
    if result["timed_out"]:
        out.append(f"timed out (a hang?) while running: {result['breadcrumb']}")
    elif result["returncode"] == -14:
        out.append(f"one case exceeded the per-case time limit (a hang): "
                   f"{result['breadcrumb']}")
    elif result["returncode"] < 0:
        out.append(f"killed by signal {-result['returncode']} while running: "
                   f"{result['breadcrumb']}\n{result['stderr_tail']}")
    elif result["returncode"] != 0 or not result.get("ok"):
        out.append(f"failed (exit {result['returncode']}): {result.get('failure')}\n"
                   f"{result['stderr_tail']}")
    elif result.get("cases", 0) < cases:
        out.append(f"ran {result.get('cases')} cases, not {cases}")
    if result.get("baseline_rss_kb"):
        largest = max(os.path.getsize(p) for p in seed_files)
        allowed = result["baseline_rss_kb"] + RSS_SLACK_KB + RSS_PER_FILE_BYTE * largest // 1024
        if result["peak_rss_kb"] > allowed:
            out.append(f"peak memory {result['peak_rss_kb']} KB exceeds the baseline "
                       f"{result['baseline_rss_kb']} KB + allowance ({allowed} KB)")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=10_000, help="cases per worker process")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes at a time")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--seed-file", action="append", default=None,
                    help="use these .bsi files as seeds instead of building them")
    ap.add_argument("--backends", default="auto")
    ap.add_argument("--include-known-gaps", action="store_true")
    ap.add_argument("--chunk-timeout", type=float, default=900.0)
    ap.add_argument("--snapshot", action="store_true",
                    help="run a private copy of the installed bsvit_int (see snapshot_runtime)")
    args = ap.parse_args(argv)

    out = args.out or tempfile.mkdtemp(prefix="bsi-fuzz-")
    if args.seed_file:
        seeds = args.seed_file
    else:
        # In a child: converting loads the compiled kernels, and this long-lived driver
        # should not keep a .so mapped that a rebuild could replace under it.
        seed_dir = os.path.join(out, "seeds")
        code = (f"import sys; sys.path.insert(0, {HERE!r}); import run_fuzz; "
                f"print('\\n'.join(run_fuzz.build_seeds({seed_dir!r})))")
        seeds = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                               text=True).stdout.split()
    snapshot = snapshot_runtime(os.path.join(out, "runtime")) if args.snapshot else None
    chunks = []
    remaining, i = args.cases, 0
    while remaining > 0:
        n = min(args.chunk, remaining)
        chunks.append((i, n))
        remaining -= n
        i += 1
    t0 = time.monotonic()

    def one(chunk):
        index, n = chunk
        workdir = os.path.join(out, f"chunk{index:04d}")
        shutil.rmtree(workdir, ignore_errors=True)
        r = run_worker(seeds, n, args.seed + index, workdir, args.chunk_timeout,
                       args.backends, args.include_known_gaps, snapshot=snapshot)
        found = problems(r, seeds, n)
        status = "FAIL" if found else "ok"
        print(f"chunk {index}: {status} {r.get('cases')} cases in {r['wall_s']} s, peak "
              f"{r['peak_rss_kb'] // 1024} MB (baseline "
              f"{(r.get('baseline_rss_kb') or 0) // 1024} MB)", file=sys.stderr, flush=True)
        for p in found:
            print(f"  {p}\n  reproduce: {r['command']}", file=sys.stderr, flush=True)
        return r, found

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(one, chunks))
    totals: Dict[str, int] = {}
    for r, _ in results:
        for k, v in (r.get("totals") or {}).items():
            totals[k] = totals.get(k, 0) + v
    failures = [p for _, found in results for p in found]
    summary = {
        "cases": sum(r.get("cases") or 0 for r, _ in results),
        "chunks": len(results),
        "seed": args.seed,
        "seed_files": {os.path.basename(p): os.path.getsize(p) for p in seeds},
        "backends": results[0][0].get("backends") if results else None,
        "outcomes": totals,
        "crashes": sum(1 for r, _ in results if r["returncode"] < 0 and not r["timed_out"]
                       and r["returncode"] != -14),
        "hangs": sum(1 for r, _ in results if r["timed_out"] or r["returncode"] == -14),
        "failures": len(failures),
        "max_peak_rss_kb": max(r["peak_rss_kb"] for r, _ in results),
        "max_baseline_rss_kb": max(r.get("baseline_rss_kb") or 0 for r, _ in results),
        "slowest_case_s": max(r.get("slowest_case_s") or 0 for r, _ in results),
        "wall_s": round(time.monotonic() - t0, 1),
        "out": out,
    }
    print(json.dumps(summary, indent=1))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
