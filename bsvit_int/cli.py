"""Command-line entry points. Each is a thin layer over one library call.

Exit codes: 0 success; 1 the input was refused (bad checkpoint, bad model file, a bound
that does not hold) with one line on stderr; 2 usage errors (argparse).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from .errors import BsiFormatError, ConversionError

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
                    help="evaluation data: 'auto' (default: the checkpoint's data set, if "
                         "known), 'digits', or 'none'")
    ap.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = ap.parse_args(argv)
    conv = _import_converters(ap.prog)
    eval_data = None if args.eval == "none" else args.eval
    try:
        report = conv.convert(args.checkpoint, args.output, report_path=args.report,
                              eval_data=eval_data, progress=_Progress("evaluating"))
    except FileNotFoundError as e:
        return _fail(ap.prog, f"{e.filename or args.checkpoint}: no such file")
    except (ConversionError, BsiFormatError, ValueError) as e:
        return _fail(ap.prog, str(e))
    if not args.quiet:
        from .converters.convert_model import format_report
        print(format_report(report))
    return 0


def demo_main(argv=None) -> int:
    """The main job on the bundled digits model: convert, run the engine, compare."""
    ap = argparse.ArgumentParser(
        prog="bsvit-demo",
        description="Convert the bundled digits BSViT to an integer model and run the "
                    "NumPy integer engine on the 360 held-out digits, printing float "
                    "accuracy, integer accuracy and agreement.")
    ap.add_argument("--out", default="out", help="directory for digits.bsi and the report "
                                                 "(default: ./out)")
    args = ap.parse_args(argv)
    conv = _import_converters(ap.prog)
    from .converters.convert_model import format_report
    os.makedirs(args.out, exist_ok=True)
    src = os.path.join(BUNDLED, "digits.pt")
    dst = os.path.join(args.out, "digits.bsi")
    try:
        report = conv.convert(src, dst, report_path=os.path.join(args.out, "digits-report.json"),
                              eval_data="digits", progress=_Progress("evaluating"))
    except (ConversionError, BsiFormatError, ValueError, OSError) as e:
        return _fail(ap.prog, str(e))
    print(format_report(report))
    print()
    print(f"float accuracy {report['float_accuracy'] * 100:.2f} %, integer accuracy "
          f"{report['int_accuracy'] * 100:.2f} %, agreement "
          f"{report['top1_agreement'] * 100:.2f} % on {report['n_images']} held-out digits")
    return 0


if __name__ == "__main__":
    sys.exit(convert_main())
