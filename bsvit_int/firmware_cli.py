"""bsvit-firmware: the command-line face of `bsvit_int.firmware.emit_firmware`.

Exit codes: 0 success; 1 the input was refused (missing or malformed model, a model the C
runtime cannot hold, a bad name) with one line on stderr; 2 usage errors (argparse).
"""
from __future__ import annotations

import argparse
import os
import sys

from .errors import BsiFormatError

DESCRIPTION = """\
Write C sources that run an integer BSViT (.bsi) on a microcontroller, bit for bit as the
NumPy engine: OUTDIR/NAME_model.h, OUTDIR/NAME_model.c and the portable C99 runtime
(OUTDIR/bsvit.h, OUTDIR/bsvit.c). The model is validated completely first; a refused model
writes nothing. Output is deterministic (same model, byte-identical files).

NAME_model.h   config #defines, op-set, the source's SHA-256 and CRC-32, and
               NAME_ARENA_BYTES: the scratch memory bsvit_infer needs, planned offline.
NAME_model.c   const weight arrays (they stay in flash: int8 weights packed 4 per word,
               int32 biases and thresholds) and `const bsvit_model NAME_model`.
bsvit.h/.c     the runtime: no malloc, no float, no libc but memset/memcpy.

Use it:
    #include "NAME_model.h"
    static uint32_t arena[(NAME_ARENA_BYTES + 3) / 4];
    int32_t logits[NAME_NUM_CLASSES];
    bsvit_status st = bsvit_infer(&NAME_model, image, logits, arena, sizeof arena);
image is uint8 [height][width][channels]; argmax(logits) is the class; st != BSVIT_OK
names the problem (bsvit_status_string). Build with any C99 compiler, e.g.
    arm-none-eabi-gcc -std=c99 -O2 -mcpu=cortex-m4 -mthumb -c bsvit.c NAME_model.c
(on a Cortex-M4/M7 the runtime uses the DSP extension's UXTAB16 when available).
See firmware/README.md for the Cortex-M4 board target and the footprint report.
"""


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    from . import firmware

    ap = argparse.ArgumentParser(prog="bsvit-firmware", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="integer model (.bsi) written by bsvit-convert")
    ap.add_argument("outdir", help="directory for the C sources (created if missing; "
                                   "files of the same names are replaced atomically)")
    ap.add_argument("--name", help="C prefix of the generated symbols and files "
                                   "(default: from the model's file name, e.g. digits)")
    ap.add_argument("--no-runtime", action="store_true",
                    help="write only NAME_model.h/.c, not bsvit.h/bsvit.c")
    ap.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = ap.parse_args(argv)
    if os.path.isdir(args.model):
        return _fail(ap.prog, f"{args.model}: is a directory, not a .bsi model")
    if os.path.exists(args.outdir) and not os.path.isdir(args.outdir):
        return _fail(ap.prog, f"{args.outdir}: exists and is not a directory")
    try:
        result = firmware.emit_firmware(args.model, args.outdir, name=args.name,
                                        copy_runtime=not args.no_runtime)
    except FileNotFoundError as e:
        return _fail(ap.prog, f"{e.filename or args.model}: no such file")
    except (BsiFormatError, firmware.FirmwareError) as e:
        return _fail(ap.prog, f"{args.model}: {e}")
    except OSError as e:
        return _fail(ap.prog, f"{e.filename or args.outdir}: {e.strerror or e}")
    if not args.quiet:
        name = result["name"]
        print(f"wrote {len(result['files'])} files to {args.outdir}: "
              + ", ".join(os.path.basename(f) for f in result["files"]))
        print(f"{name}_model: {result['const_bytes']} bytes of constants (flash), "
              f"arena {result['arena_bytes']} bytes ({name.upper()}_ARENA_BYTES)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
