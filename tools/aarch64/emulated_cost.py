"""Instructions per predict() call of the Python engine on aarch64, by difference.

    qemu-aarch64 -plugin libinsn_count.so,out=F python3.11 emulated_cost.py MODEL.bsi IMAGES.npy N

Loads the model (backend "cython", 1 thread), makes one warm-up call, then N calls of one
image each, and saves their logits to IMAGES.npy's folder (LOGITS-N.npy; N = 0 saves an
empty array). tools/aarch64/check.py counts the whole process for N = 0 and N = calls;
start-up, imports, loading and the warm-up cancel in the difference. Run by the staged
aarch64 Python only.
"""
import sys
from pathlib import Path

import numpy as np

import bsvit_int

bsi, images, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
x = np.load(images)
model = bsvit_int.load(bsi, backend="cython", threads=1)
model.predict(x[:1])
out = np.zeros((n, model.config.num_classes), dtype=np.int32)
for i in range(n):
    out[i] = model.predict(x[i:i + 1])[0]
np.save(images.with_name(f"{images.stem}-logits-{n}.npy"), out)
