"""One loaded model, many threads: every result equals the sequential one (issue 6).

bsvit_int.engine documents a Model as immutable after loading and safe to share between
threads. 8 threads x 100 inferences on the bundled digits model, started together on a
barrier, each walking the held-out images in its own order with batches of 1 and 2, some
recording spikes; every logit row must equal the sequential run's, and the model must be
unchanged afterwards. The NumPy oracle always; the compiled backend too when it is built.
"""
from __future__ import annotations

import copy
import os
import threading

import numpy as np
import pytest

import bsvit_int
from bsvit_int import datasets

THREADS = 8
INFERENCES = 100
IMAGES = 16


@pytest.fixture(scope="module")
def digits_bsi(tmp_path_factory):
    from bsvit_int.converters import convert
    path = tmp_path_factory.mktemp("digits") / "digits.bsi"
    src = os.path.join(os.path.dirname(bsvit_int.__file__), "models", "digits.pt")
    convert(src, path, eval_data=None)
    return path


@pytest.fixture(scope="module")
def images():
    return datasets.load("digits")["test"][0][:IMAGES]


def _hammer(model, images, sequential, sequential_record):
    """Run THREADS x INFERENCES predictions at once; returns a list of mismatches."""
    barrier = threading.Barrier(THREADS)
    problems = []
    errors = []

    def worker(k):
        try:
            barrier.wait()
            for j in range(INFERENCES):
                i = (k * 5 + j * (2 * k + 1)) % IMAGES
                if j % 10 == 3:              # a batch of two: batch-independent results
                    i2 = (i + k + 1) % IMAGES
                    got = model.predict(images[[i, i2]])
                    want = np.stack([sequential[i], sequential[i2]])
                elif j % 25 == 7:            # recording spikes from several threads at once
                    rec = {}
                    got = model.predict(images[i], record=rec)[0]
                    want = sequential[i]
                    for name, spikes in sequential_record[i].items():
                        if not np.array_equal(rec[name][0], spikes):
                            problems.append((k, j, i, f"record[{name!r}] differs"))
                else:
                    got = model.predict(images[i])[0]
                    want = sequential[i]
                if not np.array_equal(got, want):
                    problems.append((k, j, i, f"{got.tolist()} != {want.tolist()}"))
        except BaseException as e:           # noqa: BLE001 -- reported by the test
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert errors == []
    return problems


def _check_backend(model, images):
    before_meta = copy.deepcopy(model.metadata)
    before = {k: v.copy() for k, v in model.tensors.items()}
    sequential, sequential_record = [], []
    for i in range(IMAGES):
        rec = {}
        sequential.append(model.predict(images[i], record=rec)[0])
        sequential_record.append({k: v[0] for k, v in rec.items()})
    assert _hammer(model, images, sequential, sequential_record) == []
    assert model.metadata == before_meta
    assert all(np.array_equal(model.tensors[k], v) for k, v in before.items())
    return np.stack(sequential)


def test_numpy_backend_from_eight_threads(digits_bsi, images):
    model = bsvit_int.load(digits_bsi, backend="numpy")
    sequential = _check_backend(model, images)
    assert np.array_equal(sequential, model.predict(images))     # batch == one by one


@pytest.mark.parametrize("threads", [1, 2])
def test_cython_backend_from_eight_threads(digits_bsi, images, threads):
    try:
        model = bsvit_int.load(digits_bsi, backend="cython", threads=threads)
    except (ImportError, ValueError, TypeError) as e:
        pytest.skip(f"compiled backend not available: {e}")
    sequential = _check_backend(model, images)
    oracle = bsvit_int.load(digits_bsi, backend="numpy")
    assert np.array_equal(sequential, oracle.predict(images))
