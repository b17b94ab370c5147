#!/usr/bin/env bash
# The aarch64 (Raspberry Pi 4) check in one command; docs/raspberry-pi.md explains it.
#
#   tools/aarch64/check.sh [--quick] [--json out.json] [--work DIR] [--cpu cortex-a76]
#
# Stages an aarch64 Python 3.11 + NumPy sysroot (cached in ~/.cache/bsvit-int/aarch64, or
# $BSVIT_AARCH64_CACHE), cross-builds the C runtime and the Cython kernels, and runs them
# under `qemu-aarch64 -cpu cortex-a72`: every result must equal the NumPy oracle exactly;
# prints instruction counts per inference and projected Raspberry Pi 4 latencies.
# Needs: gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user (apt), and this checkout
# installed with its convert and test extras. PYTHON picks the host interpreter (default:
# .venv/bin/python if it exists, else python3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python3
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; fi
fi
exec "$PYTHON" "$here/check.py" all "$@"
