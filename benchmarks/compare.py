"""Single-image latency of bsvit-int against PyTorch and ONNX Runtime, in one run.

    python benchmarks/compare.py [--json out.json] [--runs 30] [--model-dir DIR]

The model is the benchmark BSViT of issue 3 (benchmarks/make_model.py: 32×32×3, patch 4,
D 256, depth 4, 8 heads, MLP ×4, window 3, Bmax 4, T 4, BatchNorm calibrated to a 15 %
firing rate); it is built on first use under DIR (default benchmarks/out, git-ignored).
Contenders, each on batch 1:

  torch_ms        the float BSViT (bench.pt) in PyTorch eager, torch.set_num_threads(1)
  onnxruntime_ms  the same float model exported to ONNX (opset 17), ONNX Runtime CPU,
                  intra- and inter-op threads 1
  numpy_ms        the NumPy integer oracle (bsvit_int backend="numpy"; fewer runs)
  cython_ms       the compiled integer engine, 1 thread
  cython_mt_ms    the compiled integer engine, all cores of this process

Timing: `--runs` rounds (default 30); each round runs every contender once on the next of
8 images, in a rotated order, so that load from other processes falls on all of them
alike. Reported: the median wall-clock time per image (and the minimum, and the median
CPU time of the calling thread). The integer engines' logits are checked against each
other, and the float peers against each other.

Work counts (from the engine's recorded spikes on the same images): `firing_rate` is the
fraction of neuron-steps (every neuron layer, channel, token and step) with a non-zero
spike; `sops_per_image` are the synaptic operations of the weighted spike layers (q, k, v,
proj, fc1, fc2): Σ input count × fan-out, the usual count for burst inputs; the engine
performs them as `row_adds_per_image` row additions (one per set bit of a count, and for
the layers that read the residual stream, of the change since the previous step when that
is cheaper). Attention adds and the embedding's multiplications are reported apart.

Roofline: the innermost accumulate loop alone (bsvit_int._kernels.bench_accumulate_rows:
the same function the engine calls), on the model's own weight matrices with 15 % of the
inputs active, weighted by each layer shape's share of the SOPs. roofline_efficiency =
roofline ns/SOP ÷ engine ns/SOP (the issue's definition); row_add_efficiency does the same
per row addition performed.

Peak memory: `bsvit-run` (the CLI) on one image in a child process, its peak RSS
(getrusage), against the .bsi file size.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import make_model  # noqa: E402


def _median_ms(xs):
    return float(np.median(xs) * 1e3)


def ensure_model(model_dir: str):
    pt, bsi = os.path.join(model_dir, "bench.pt"), os.path.join(model_dir, "bench.bsi")
    if not (os.path.exists(pt) and os.path.exists(bsi)):
        print(f"building the benchmark model under {model_dir} (a few minutes, once)",
              file=sys.stderr)
        make_model.build(model_dir)
    return pt, bsi


# -- work counts -------------------------------------------------------------------------

def _row_adds(a: np.ndarray) -> np.ndarray:
    """Σ over the last axis of popcount(count): the row additions of plane lists."""
    a = np.abs(a.astype(np.int64))
    return sum(((a >> b) & 1) for b in range(9)).sum(-1)


def _stream_row_adds(x: np.ndarray, margin: int = 16) -> int:
    """Row additions the engine performs for a stream input x [T, N, C]: at t >= 1 the
    temporal delta when it is cheaper by more than `margin` (the engine's rule)."""
    full = _row_adds(x)                                          # [T, N]
    cost = full.copy()
    if x.shape[0] > 1:
        d = x[1:].astype(np.int64) - x[:-1]
        delta = _row_adds(np.maximum(d, 0)) + _row_adds(np.maximum(-d, 0))
        cost[1:] = np.where(delta + margin < full[1:], delta, full[1:])
    return int(cost.sum())


def work_counts(cfg, record: dict) -> dict:
    """Firing rate, SOPs and row additions per image from one image's recorded spikes."""
    nz = total = 0
    for s in record.values():
        nz += int(np.count_nonzero(s))
        total += s.size
    d, dm, heads = cfg.embed_dim, cfg.mlp_hidden, cfg.num_heads
    x = record["embed"][0].astype(np.int64)                       # [T, N, D] stream
    sops = rows = rows_no_delta = 0
    att_score = att_signed = 0
    from bsvit_int import spec
    nbrs = spec.grid_neighbours(cfg)
    for l in range(cfg.depth):
        p = f"blocks.{l}."
        q = record[p + "attn.q"][0].astype(np.int64)
        k = record[p + "attn.k"][0].astype(np.int64)
        v = record[p + "attn.v"][0].astype(np.int64)
        for t in range(cfg.timesteps):
            for i in range(cfg.num_tokens):
                for j in nbrs[i]:
                    prod = (q[t, i] * k[t, j]).reshape(heads, -1)
                    att_score += int(prod.sum())
                    s_nonzero = prod.sum(1) != 0
                    att_signed += int((v[t, j].reshape(heads, -1)[s_nonzero] != 0).sum())
        a = record[p + "attn"][0]
        x1 = x + record[p + "attn.proj"][0]
        h = record[p + "mlp.fc1"][0]
        # (input, fan-out, is it the residual stream: temporal delta applies)
        for inp, fanout, stream in ((x, 3 * d, True), (a, d, False), (x1, dm, True),
                                    (h, d, False)):
            sops += int(inp.astype(np.int64).sum()) * fanout
            rows_no_delta += int(_row_adds(inp).sum()) * fanout
            rows += (_stream_row_adds(inp) if stream else int(_row_adds(inp).sum())) * fanout
        x = x1 + record[p + "mlp.fc2"][0]
    return {"firing_rate": nz / total, "sops": sops, "row_adds": rows,
            "row_adds_without_delta": rows_no_delta,
            "attention_score_adds": att_score, "attention_signed_adds": att_signed,
            "embed_macs": cfg.num_tokens * cfg.patch_dim * d, "neuron_steps": total}


# -- roofline ------------------------------------------------------------------------------

def roofline(kernels, tensors, cfg, rate=0.15, seed=0, repeats=None) -> dict:
    """ns per add of accumulate_rows_i16 alone on the model's weight shapes, SOP-weighted."""
    rng = np.random.default_rng(seed)
    shapes = {"attn.q/k/v/proj (256->256)": ("blocks.0.attn.q.weight", 4),
              "mlp.fc1 (256->1024)": ("blocks.0.mlp.fc1.weight", 4),
              "mlp.fc2 (1024->256)": ("blocks.0.mlp.fc2.weight", 1)}
    out = {}
    total_t = total_w = 0.0
    for label, (name, weight_share) in shapes.items():
        w = np.ascontiguousarray(tensors[name])
        cin = w.shape[0]
        rmax = np.abs(w.astype(np.int64)).max(1)
        lists, lengths = [], []
        for _ in range(256):
            rows = np.flatnonzero(rng.random(cin) < rate).astype(np.int32)
            rows = rows[np.cumsum(rmax[rows]) <= 32767]
            lists.append(np.pad(rows, (0, cin - len(rows))))
            lengths.append(len(rows))
        lists, lengths = np.array(lists, np.int32), np.array(lengths, np.int32)
        adds_per_pass = int(lengths.sum()) * w.shape[1]
        reps = repeats or max(1, int(2e8 // max(adds_per_pass, 1)))
        best = None
        for _ in range(12):
            sec, adds = kernels.bench_accumulate_rows(w, lists, lengths, reps)
            ns = sec * 1e9 / adds
            best = ns if best is None else min(best, ns)
        out[label] = best
        # weight each shape by its share of the model's adds (q,k,v,proj: 4 of the 6
        # D-wide layers, fc1 and fc2 carry the MLP's four-fold width)
        share = weight_share * w.shape[0] * w.shape[1]
        total_t += best * share
        total_w += share
    out["weighted_ns_per_add"] = total_t / total_w
    return out


# -- peers ---------------------------------------------------------------------------------

def torch_runner(pt: str):
    import torch
    from bsvit_int.converters import BSViT
    torch.set_num_threads(1)
    model = BSViT.load(pt).eval()

    def run(img):
        with torch.inference_mode():
            x = torch.from_numpy(img).permute(0, 3, 1, 2).float()
            return model(x).numpy()
    return run, model


def onnx_runner(model, example: np.ndarray, tmp: str):
    import onnxruntime as ort
    import torch
    path = os.path.join(tmp, "bench.onnx")
    x = torch.from_numpy(example).permute(0, 3, 1, 2).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["logits"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def run(img):
        x = np.ascontiguousarray(img.transpose(0, 3, 1, 2).astype(np.float32))
        return sess.run(None, {"images": x})[0]
    return run, ort.__version__


def timed_rounds(contenders: dict, images, runs: int, warmup: int = 3) -> dict:
    """{name: (wall seconds list, thread-cpu seconds list)}, rounds in rotated order."""
    names = list(contenders)
    for name in names:
        for k in range(warmup):
            contenders[name](images[k % len(images)])
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(runs):
        img = images[r % len(images)]
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            c0 = time.thread_time()
            t0 = time.perf_counter()
            contenders[name](img)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.thread_time() - c0)
    return {n: (wall[n], cpu[n]) for n in names}


def peak_memory_cli(bsi: str, image: np.ndarray, tmp: str) -> dict:
    """Peak RSS of `bsvit-run bench.bsi image.npy` in a child process.

    Read from the child's own /proc/self/status (VmHWM, Linux) just before it exits:
    getrusage's ru_maxrss would also count the parent's pages that the child had between
    fork and exec.
    """
    path = os.path.join(tmp, "image.npy")
    np.save(path, image)
    code = ("import sys\n"
            "from bsvit_int.cli import run_main\n"
            "rc = run_main(sys.argv[1:])\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print('PEAK', int(hwm.split()[1]), file=sys.stderr)\n"
            "sys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code, bsi, path], capture_output=True,
                       text=True, timeout=600)
    peak = [int(l.split()[1]) for l in r.stderr.splitlines() if l.startswith("PEAK ")]
    peak_mb = peak[0] / 1024.0 if peak else float("nan")
    file_mb = os.path.getsize(bsi) / 2**20
    return {"cli_exit": r.returncode, "cli_output": r.stdout.strip()[:200],
            "cli_peak_rss_mb": peak_mb, "bsi_mb": file_mb,
            "cli_peak_minus_file_mb": peak_mb - file_mb}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    ap.add_argument("--runs", type=int, default=30, help="timed rounds (default 30)")
    ap.add_argument("--numpy-runs", type=int, default=5,
                    help="runs of the slow NumPy oracle (default 5)")
    ap.add_argument("--model-dir", default=os.path.join(HERE, "out"))
    ap.add_argument("--threads", type=int, default=0,
                    help="threads of cython_mt (default 0: every core of this process)")
    args = ap.parse_args(argv)

    # The peak-memory child runs first, while this process has not loaded anything large.
    pt, bsi = ensure_model(args.model_dir)
    import bsvit_int
    from bsvit_int import engine_cython          # first: it sets libgomp's spin policy
    _kernels = engine_cython.require_kernels()

    images = [make_model.bench_images(1, offset=300 + k) for k in range(8)]
    with tempfile.TemporaryDirectory() as tmp:
        mem = peak_memory_cli(bsi, images[0], tmp)

        eng1 = bsvit_int.load(bsi, backend="cython", threads=1)
        mt = engine_cython.resolve_threads(args.threads)
        engmt = bsvit_int.load(bsi, backend="cython", threads=mt)
        ref = bsvit_int.load(bsi, backend="numpy")
        torch_run, torch_model = torch_runner(pt)
        ort_run, ort_version = onnx_runner(torch_model, images[0], tmp)

        # Agreement checks before timing.
        for img in images[:2]:
            want = ref.predict(img)
            assert np.array_equal(eng1.predict(img), want), "cython != numpy oracle"
            assert np.array_equal(engmt.predict(img), want), "cython (mt) != numpy oracle"
            ft, fo = torch_run(img), ort_run(img)
            assert np.allclose(ft, fo, rtol=1e-4, atol=1e-4), "onnxruntime != torch"

        timings = timed_rounds({"torch": torch_run, "onnxruntime": ort_run,
                                "cython": eng1.predict, "cython_mt": engmt.predict},
                               images, args.runs)
        timings.update(timed_rounds({"numpy": ref.predict}, images, args.numpy_runs,
                                    warmup=1))

    # Work counts on the timed images.
    counts = []
    for img in images:
        rec = {}
        eng1.predict(img, rec)
        counts.append(work_counts(eng1.config, rec))
    avg = {k: float(np.mean([c[k] for c in counts])) for k in counts[0]}

    roof = roofline(_kernels, eng1.tensors, eng1.config)
    ms = {n: _median_ms(w) for n, (w, _) in timings.items()}
    engine_ns_per_sop = ms["cython"] * 1e6 / avg["sops"]
    engine_ns_per_row_add = ms["cython"] * 1e6 / avg["row_adds"]
    result = {
        "torch_ms": ms["torch"],
        "onnxruntime_ms": ms["onnxruntime"],
        "numpy_ms": ms["numpy"],
        "cython_ms": ms["cython"],
        "cython_mt_ms": ms["cython_mt"],
        "speedup_vs_torch": ms["torch"] / ms["cython"],
        "speedup_vs_onnxruntime": ms["onnxruntime"] / ms["cython"],
        "sops_per_image": avg["sops"],
        "firing_rate": avg["firing_rate"],
        "roofline_efficiency": roof["weighted_ns_per_add"] / engine_ns_per_sop,
        # details
        "row_add_efficiency": roof["weighted_ns_per_add"] / engine_ns_per_row_add,
        "roofline_ns_per_add": roof["weighted_ns_per_add"],
        "roofline_by_shape_ns_per_add": {k: v for k, v in roof.items()
                                         if k != "weighted_ns_per_add"},
        "engine_ns_per_sop": engine_ns_per_sop,
        "row_adds_per_image": avg["row_adds"],
        "row_adds_without_delta_per_image": avg["row_adds_without_delta"],
        "attention_score_adds_per_image": avg["attention_score_adds"],
        "attention_signed_adds_per_image": avg["attention_signed_adds"],
        "embed_macs_per_image": avg["embed_macs"],
        "min_ms": {n: float(min(w) * 1e3) for n, (w, _) in timings.items()},
        "cpu_median_ms": {n: _median_ms(c) for n, (_, c) in timings.items()},
        "runs": {n: len(w) for n, (w, _) in timings.items()},
        "cython_mt_threads": mt,
        "kernels_variant": eng1._runner.variant,
        "kernels_info": _kernels.variant_info(eng1._runner.variant),
        **mem,
        "model": {"bsi": bsi, "config": eng1.config.to_dict()},
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "torch": __import__("torch").__version__, "onnxruntime": ort_version},
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(),
                    "loadavg_at_end": list(os.getloadavg())},
    }
    _print(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, sort_keys=True)
            f.write("\n")
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _print(r: dict) -> None:
    print(f"benchmark BSViT 32x32x3 D=256 depth 4 T=4, batch 1 ({r['machine']['cpu']}, "
          f"kernels {r['kernels_variant']})")
    print(f"firing rate {r['firing_rate']:.3f}; {r['sops_per_image'] / 1e6:.1f} M SOPs, "
          f"{r['row_adds_per_image'] / 1e6:.1f} M row adds, "
          f"{r['embed_macs_per_image'] / 1e6:.2f} M embedding MACs per image")
    print(f"{'':16} {'median ms':>10} {'min ms':>9} {'cpu ms':>9} {'runs':>5}")
    for name, key in (("torch eager", "torch"), ("onnxruntime", "onnxruntime"),
                      ("numpy oracle", "numpy"), ("cython 1 thread", "cython"),
                      (f"cython {r['cython_mt_threads']} threads", "cython_mt")):
        print(f"{name:16} {r[key + '_ms'] if key + '_ms' in r else 0:10.2f} "
              f"{r['min_ms'][key]:9.2f} {r['cpu_median_ms'][key]:9.2f} {r['runs'][key]:5d}")
    print(f"speedup vs torch {r['speedup_vs_torch']:.2f}x, vs onnxruntime "
          f"{r['speedup_vs_onnxruntime']:.2f}x")
    print(f"roofline {r['roofline_ns_per_add'] * 1e3:.2f} ps/add; engine "
          f"{r['engine_ns_per_sop'] * 1e3:.2f} ps/SOP; efficiency {r['roofline_efficiency']:.2f} "
          f"(per row add performed: {r['row_add_efficiency']:.2f})")
    print(f"CLI peak RSS {r['cli_peak_rss_mb']:.1f} MB for a {r['bsi_mb']:.1f} MB model "
          f"(+{r['cli_peak_minus_file_mb']:.1f} MB)")


if __name__ == "__main__":
    raise SystemExit(main())
