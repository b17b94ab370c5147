"""Real image data that ships inside packages (no download), with fixed, documented splits.

digits: scikit-learn's `load_digits()`, 1,797 real 8×8 handwritten digits with pixel values
0..16, scaled to uint8 0..255 by round(v * 255 / 16) so the engine sees ordinary 8-bit
pixels. Split: `train_test_split(test_size=360, stratify=y, random_state=0)` → 1,437
training and 360 held-out test images; 10 % of the training images (stratified,
random_state=1) are the validation split used to choose a checkpoint. The test split is
never used for any choice.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

Split = Tuple[np.ndarray, np.ndarray]       # images uint8 [B, H, W, C], labels int64 [B]
DATASETS = ("digits",)


def _require_sklearn():
    try:
        import sklearn  # noqa: F401
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImportError("the digits data set needs scikit-learn: "
                          "pip install 'bsvit-int[convert]'") from None
    return train_test_split


def digits() -> Dict[str, Split]:
    """{'train', 'val', 'test'} splits of scikit-learn's digits as uint8 [B, 8, 8, 1]."""
    split = _require_sklearn()
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = d.target.astype(np.int64)
    x_trval, x_test, y_trval, y_test = split(x, y, test_size=360, stratify=y, random_state=0)
    x_train, x_val, y_train, y_val = split(x_trval, y_trval, test_size=0.1, stratify=y_trval,
                                           random_state=1)
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test),
            "train_full": (x_trval, y_trval)}


def load(name: str) -> Dict[str, Split]:
    if name == "digits":
        return digits()
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
