"""The main job on a model, end to end: what `bsvit-demo` runs on the bundled digits model.

    convert → integer vs float accuracy on held-out data → profile → firmware sources →
    (where a C compiler exists) the C runtime built for this machine and run on held-out
    images, its logits compared with the engine's → a summary table.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import Callable, Optional

import numpy as np

import bsvit_int
from bsvit_int import datasets, firmware
from bsvit_int.api import profile

from .convert_model import convert, write_json_atomic

HOST_IMAGES = 20


def host_c_check(bsi_path: str, fw: dict, images: np.ndarray, cc: str) -> dict:
    """Build the firmware for this machine (`cc -std=c99 -O2`) and compare its logits."""
    harness = firmware.runtime_dir().parent / "host" / "harness.c"
    if not harness.exists():
        return {"skipped": "the host harness (firmware/host/harness.c) is in the source "
                           "tree only; run from a checkout"}
    outdir = os.path.dirname(fw["files"][0])
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "harness")
        cmd = [cc, "-std=c99", "-O2", "-I", str(firmware.runtime_dir()), "-I", outdir,
               f"-DBSVIT_MODEL={fw['name']}_model", str(harness),
               os.path.join(outdir, f"{fw['name']}_model.c"),
               str(firmware.runtime_dir() / "bsvit.c"), "-o", exe]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            return {"error": f"{cc} failed: {(r.stderr or r.stdout).strip()[:300]}"}
        img_path = os.path.join(tmp, "images.bin")
        with open(img_path, "wb") as f:
            f.write(np.ascontiguousarray(images).tobytes())
        r = subprocess.run([exe, img_path], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            return {"error": f"host firmware exited {r.returncode}: {r.stderr.strip()[:300]}"}
    rows = [line.split()[2:] for line in r.stdout.splitlines() if line.startswith("L ")]
    got = np.array(rows, dtype=np.int64)
    want = bsvit_int.load(bsi_path).predict(images).astype(np.int64)
    mismatches = int(np.sum(np.any(got != want, axis=1))) if got.shape == want.shape \
        else len(images)
    return {"compiler": cc, "images": int(len(images)), "mismatches": mismatches}


def main_job(checkpoint: str, out: str, dataset: str = "digits",
             progress: Optional[Callable[[int, int], None]] = None,
             log: Callable[[str], None] = print) -> dict:
    """Run every step on `checkpoint`, writing into directory `out`; returns the summary."""
    os.makedirs(out, exist_ok=True)
    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    bsi = os.path.join(out, f"{stem}.bsi")
    summary = {"checkpoint": checkpoint, "out": out, "steps": {}}
    x_test, _ = datasets.load(dataset)["test"]

    t0 = time.perf_counter()
    log(f"[1/4] converting {checkpoint} and evaluating on the {dataset} held-out split")
    report = convert(checkpoint, bsi, report_path=os.path.join(out, f"{stem}-report.json"),
                     eval_data=dataset, progress=progress)
    summary["steps"]["convert"] = {k: report[k] for k in (
        "float_accuracy", "int_accuracy", "top1_agreement", "n_images", "bsi_bytes",
        "checkpoint_bytes")}
    summary["steps"]["convert"]["seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log("[2/4] profiling the integer engine")
    plot = os.path.join(out, f"{stem}-profile.png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        plot = None
    prof = profile(bsi, x_test, plot=plot)
    write_json_atomic(os.path.join(out, f"{stem}-profile.json"), prof)
    summary["steps"]["profile"] = {
        "firing_rate": prof["firing_rate"], "energy_uj_per_image": prof["energy_uj_per_image"],
        "energy_ratio_ann_over_snn": prof["energy_ratio_ann_over_snn"],
        "acs_per_image": prof["acs_per_image"], "macs_per_image": prof["macs_per_image"],
        "latency_ms_per_image": prof["latency_ms_per_image"], "plot": plot,
        "seconds": time.perf_counter() - t0}

    t0 = time.perf_counter()
    log("[3/4] writing firmware sources")
    fw = firmware.emit_firmware(bsi, os.path.join(out, "firmware"))
    summary["steps"]["firmware"] = {"dir": os.path.join(out, "firmware"),
                                    "arena_bytes": fw["arena_bytes"],
                                    "const_bytes": fw["const_bytes"],
                                    "seconds": time.perf_counter() - t0}

    t0 = time.perf_counter()
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc:
        log(f"[4/4] building the firmware for this machine with {cc} and comparing logits "
            f"on {HOST_IMAGES} held-out images")
        host = host_c_check(bsi, fw, x_test[:HOST_IMAGES], cc)
    else:
        log("[4/4] no C compiler found: host firmware check skipped")
        host = {"skipped": "no C compiler (set CC)"}
    host["seconds"] = time.perf_counter() - t0
    summary["steps"]["host_c"] = host
    write_json_atomic(os.path.join(out, f"{stem}-summary.json"), summary)
    return summary


def format_summary(s: dict) -> str:
    c, p, f, h = (s["steps"][k] for k in ("convert", "profile", "firmware", "host_c"))
    if "mismatches" in h:
        host = f"{h['mismatches']} mismatches on {h['images']} images ({h['compiler']})"
    else:
        host = h.get("error") or f"skipped: {h.get('skipped')}"
    rows = [
        ("float accuracy", f"{c['float_accuracy'] * 100:.2f} % on {c['n_images']} "
                           "held-out images"),
        ("integer accuracy", f"{c['int_accuracy'] * 100:.2f} %"),
        ("top-1 agreement", f"{c['top1_agreement'] * 100:.2f} %"),
        ("model file", f"{c['bsi_bytes']:,} bytes ({c['bsi_bytes'] / c['checkpoint_bytes']:.2f}"
                       " × the checkpoint)"),
        ("firing rate", f"{p['firing_rate'] * 100:.1f} %"),
        ("energy per image", f"{p['energy_uj_per_image']:.3f} µJ ({p['acs_per_image']:,} ACs, "
                             f"{p['macs_per_image']:,} MACs; "
                             f"{p['energy_ratio_ann_over_snn']:.2f}× below a dense ANN)"),
        ("engine latency", f"{p['latency_ms_per_image']:.2f} ms per image"),
        ("firmware", f"{f['dir']}: arena {f['arena_bytes']:,} B, constants "
                     f"{f['const_bytes']:,} B"),
        ("host C vs engine", host),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
