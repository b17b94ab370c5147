"""One fuzz process: Hypothesis draws mutations of seed `.bsi` files and checks each one.

    python fuzz/bsi_worker.py --seed-file a.bsi --seed-file b.bsi --cases 10000 \
        --seed 1 --workdir /tmp/w --json-out /tmp/w/result.json

Run it in a subprocess (fuzz/run_fuzz.py and tests/test_hardening_fuzz.py do): a segfault
or abort in compiled code then kills only this process, and the parent sees the signal in
the return code. Before each case the worker writes the case's description to
`--breadcrumb`, so the parent can name the case that killed it. A per-case watchdog
(SIGALRM left at its default action) kills the process if one case takes longer than
`--case-timeout` seconds: a hang inside C code is caught too (exit by signal 14).

The JSON result: cases run, outcome counts per mutation kind, the most frequent
BsiFormatError messages, the slowest case, peak resident memory (VmHWM) after warm-up
("baseline") and at the end, and on failure the falsifying case.
"""
from __future__ import annotations

import argparse
import collections
import faulthandler
import json
import os
import resource
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bsi_mutations as bm  # noqa: E402

ENTROPY_BYTES = 96          # decisions per case; a mutation uses at most ~40


def peak_rss_kb(pid="self") -> int:
    """Peak resident memory of this process's own address space, in KB.

    VmHWM, not ru_maxrss: on Linux a child's ru_maxrss starts at its parent's resident
    size at fork (the high-water mark survives exec), so a worker started from a pytest
    holding torch would report 250 MB before doing anything.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if pid == "self" else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed-file", action="append", required=True, help="a valid .bsi")
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0, help="Hypothesis seed (reproducible)")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--json-out", required=True)
    ap.add_argument("--breadcrumb", default=None)
    ap.add_argument("--case-timeout", type=float, default=20.0)
    ap.add_argument("--backends", default="auto",
                    help="'numpy', 'numpy,cython', or 'auto' (cython when it is built)")
    ap.add_argument("--include-known-gaps", action="store_true",
                    help="also draw metadata values of the open gaps (see is_known_gap)")
    ap.add_argument("--self-test", choices=["segv", "hang", "wrong-exception", "bloat"],
                    help="inject a fault at the 10th load, to prove the harness reports it")
    args = ap.parse_args(argv)

    faulthandler.enable()
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    os.makedirs(args.workdir, exist_ok=True)
    t_start = time.perf_counter()
    backends = ("numpy",)
    if args.backends == "auto":
        backends = ("numpy", "cython") if bm.cython_available() else ("numpy",)
    elif "cython" in args.backends.split(","):
        backends = ("numpy", "cython")
    seeds = [bm.load_seed(p) for p in args.seed_file]
    if args.self_test:
        _inject_fault(args.self_test)
    checker = bm.Checker(args.workdir, backends)
    for seed in seeds:              # warm-up: every code path once, before the baseline
        checker.predict(bsvit_int_load(seed, checker), seed)
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st
    baseline_kb = peak_rss_kb()

    crumb_fd = os.open(args.breadcrumb, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) \
        if args.breadcrumb else None
    counts: dict = collections.defaultdict(collections.Counter)
    messages: collections.Counter = collections.Counter()
    stats = {"cases": 0, "slowest_s": 0.0, "slowest": ""}
    failure: dict = {}

    @hypothesis_seed(args.seed)
    @settings(max_examples=args.cases, deadline=None, database=None, derandomize=False,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck),
              print_blob=False)
    @given(st.binary(min_size=ENTROPY_BYTES, max_size=ENTROPY_BYTES))
    def fuzz_case(entropy):
        chooser = bm.Chooser(entropy)
        seed, mutated, desc, may_differ = bm.mutate(chooser, seeds, args.include_known_gaps)
        if crumb_fd is not None:
            crumb = desc.encode("utf-8", "replace")[:4000]
            os.ftruncate(crumb_fd, 0)
            os.pwrite(crumb_fd, crumb, 0)
        # The watchdog: SIGALRM with no handler kills the process even while a C
        # extension holds the GIL; the parent reports signal 14 as a hang in this case.
        signal.setitimer(signal.ITIMER_REAL, args.case_timeout)
        t0 = time.perf_counter()
        try:
            outcome, detail = checker.check(seed, mutated, may_differ)
        except AssertionError as e:
            failure.update(case=desc, error=str(e))
            raise
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        elapsed = time.perf_counter() - t0
        stats["cases"] += 1
        if elapsed > stats["slowest_s"]:
            stats["slowest_s"], stats["slowest"] = elapsed, desc
        counts[desc.split(": ")[1]][outcome] += 1
        if outcome == bm.Outcome.REJECTED:
            messages[bm.message_class(detail)] += 1

    ok = True
    try:
        fuzz_case()
    except Exception as e:           # noqa: BLE001 -- reported, then exit status 1
        ok = False
        failure.setdefault("error", f"{type(e).__name__}: {e}")
    result = {
        "ok": ok,
        "cases": stats["cases"],
        "seed": args.seed,
        "backends": list(backends),
        "seed_files": {s.name: len(s.data) for s in seeds},
        "outcomes": {kind: dict(c) for kind, c in sorted(counts.items())},
        "totals": dict(sum(counts.values(), collections.Counter())),
        "top_messages": messages.most_common(25),
        "distinct_messages": len(messages),
        "slowest_case_s": round(stats["slowest_s"], 4),
        "slowest_case": stats["slowest"],
        "baseline_rss_kb": baseline_kb,
        "final_peak_rss_kb": peak_rss_kb(),
        "elapsed_s": round(time.perf_counter() - t_start, 2),
        "failure": failure or None,
    }
    with open(args.json_out, "w") as f:
        json.dump(result, f, indent=1)
    return 0 if ok else 1


def _inject_fault(kind: str) -> None:
    """Make the 10th `bsvit_int.load` crash, hang, raise the wrong type or bloat."""
    import bsvit_int
    real_load = bsvit_int.load
    calls = [0]

    def load(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 10:
            if kind == "segv":
                import ctypes
                ctypes.string_at(0)
            elif kind == "hang":
                time.sleep(3600)
            elif kind == "wrong-exception":
                raise KeyError("injected")
            else:
                load.ballast = bytearray(256 * 1024 * 1024)       # touched: resident
        return real_load(*args, **kwargs)

    bsvit_int.load = load


def bsvit_int_load(seed, checker):
    import bsvit_int
    return bsvit_int.load(checker.write(seed.data), backend="numpy")


if __name__ == "__main__":
    sys.exit(main())
