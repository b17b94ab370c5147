"""bsvit-run, bsvit-info, bsvit-profile and their Python calls, used as a new user would."""
import json
import subprocess
import sys

import numpy as np
import pytest

import bsvit_int
from bsvit_int import api, images, spec
from bsvit_int.cli import BUNDLED
from bsvit_int.converters import convert
from bsvit_int.datasets import digits
from bsvit_int.profile import dense_macs, profile


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("tools")
    convert(f"{BUNDLED}/digits.pt", out / "digits.bsi", eval_data=None)
    return str(out / "digits.bsi")


@pytest.fixture(scope="module")
def test_images():
    return digits()["test"]


def cli(command, *args):
    code = f"import sys; from bsvit_int.cli import {command}; sys.exit({command}(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)],
                          capture_output=True, text=True)


def write_pgm(path, img):
    path.write_bytes(b"P5\n# test\n%d %d\n255\n" % (img.shape[1], img.shape[0]) + img.tobytes())


def test_run_classifies_pgm_npy_and_directories(model_path, test_images, tmp_path):
    x, y = test_images
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        write_pgm(d / f"{i}.pgm", x[i, :, :, 0])
    np.save(d / "batch.npy", x[3:6])
    r = cli("run_main", model_path, d, "--json", "-k", "3")
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert [res["input"] for res in results] == [str(d / "0.pgm"), str(d / "1.pgm"),
                                                 str(d / "2.pgm")] + \
        [f"{d / 'batch.npy'}[{i}]" for i in range(3)]
    want = bsvit_int.load(model_path).predict(np.concatenate([x[:3], x[3:6]]))
    for res, row in zip(results, want):
        assert res["logits"] == row.tolist()
        assert res["top"][0]["class"] == int(np.argmax(row)) and len(res["top"]) == 3


@pytest.mark.parametrize("case, needle", [
    ("missing model", "no such file"),
    ("checkpoint as model", "this is a PyTorch checkpoint"),
    ("missing image", "no such file or directory"),
    ("wrong size", "use --resize"),
    ("non-image in directory", "not an image"),
    ("float npy", "must be uint8"),
    ("truncated pgm", "truncated PNM data"),
])
def test_run_errors_are_one_clear_line(model_path, tmp_path, case, needle):
    model, inputs = model_path, []
    good = tmp_path / "good.pgm"
    write_pgm(good, np.zeros((8, 8), np.uint8))
    if case == "missing model":
        model, inputs = tmp_path / "nope.bsi", [good]
    elif case == "checkpoint as model":
        model, inputs = f"{BUNDLED}/digits.pt", [good]
    elif case == "missing image":
        inputs = [tmp_path / "nope.png"]
    elif case == "wrong size":
        write_pgm(tmp_path / "big.pgm", np.zeros((9, 9), np.uint8))
        inputs = [tmp_path / "big.pgm"]
    elif case == "non-image in directory":
        d = tmp_path / "d"
        d.mkdir()
        write_pgm(d / "a.pgm", np.zeros((8, 8), np.uint8))
        (d / "notes.txt").write_text("hello")
        inputs = [d]
    elif case == "float npy":
        np.save(tmp_path / "f.npy", np.zeros((8, 8), np.float32))
        inputs = [tmp_path / "f.npy"]
    elif case == "truncated pgm":
        (tmp_path / "t.pgm").write_bytes(b"P5\n8 8\n255\n" + bytes(10))
        inputs = [tmp_path / "t.pgm"]
    r = cli("run_main", model, *inputs)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("bsvit-run: error: ") and needle in r.stderr


def test_resize_policy_nearest_and_luma():
    img = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    out = images.fit(img, (2, 2, 1), True, "x")
    # output (y, x) takes source (floor((2y+1)*4/4), ...) = rows/cols 1 and 3
    assert out[..., 0].tolist() == [[5, 7], [13, 15]]
    rgb = np.array([[[255, 0, 0], [0, 255, 0]]], dtype=np.uint8)
    grey = images.fit(rgb, (1, 2, 1), True, "x")
    assert grey[..., 0].tolist() == [[(299 * 255 + 500) // 1000, (587 * 255 + 500) // 1000]]
    with pytest.raises(images.ImageError, match="use --resize"):
        images.fit(img, (2, 2, 1), False, "x")


def test_pgm_ascii_and_maxval(tmp_path):
    p = tmp_path / "a.pgm"
    p.write_bytes(b"P2\n# c\n2 1\n15\n0 15\n")
    assert images.read_image(str(p))[..., 0].tolist() == [[0, 255]]


def test_info_reports_provenance_and_checksums(model_path):
    r = cli("info_main", model_path, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["config"]["embed_dim"] == 64
    assert rep["provenance"]["source"] == "digits.pt"
    assert len(rep["provenance"]["source_sha256"]) == 64
    names = [t["name"] for t in rep["tensors"]]
    assert names == list(spec.tensor_table(bsvit_int.load(model_path).config))
    assert all(len(t["crc32"]) == 8 for t in rep["tensors"])
    text = cli("info_main", model_path)
    assert text.returncode == 0 and "blocks.1.mlp.fc2.weight" in text.stdout


def test_profile_cli_json(model_path, test_images, tmp_path):
    np.save(tmp_path / "x.npy", test_images[0][:20])
    r = cli("profile_main", model_path, tmp_path / "x.npy", "--json", "--repeats", "1")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["images"] == 20
    assert 0 < rep["firing_rate"] < 1
    assert rep["energy_uj_per_image"] == pytest.approx(
        (rep["acs_per_image"] * 0.9 + rep["macs_per_image"] * 4.6) / 1e6)


def _brute_force_acs(model, x):
    """ACs per image by explicit loops over the spec (independent of bsvit_int.profile)."""
    cfg = model.config
    rec = {}
    model.predict(x, record=rec)
    b = len(x)
    nb = spec.grid_neighbours(cfg)
    acs = {}
    stream = rec["embed"].astype(np.int64)

    def linear(name, inp, cout):
        total = 0
        for bi in range(b):
            for t in range(cfg.timesteps):
                for n in range(cfg.num_tokens):
                    for j in range(inp.shape[3]):
                        total += abs(int(inp[bi, t, n, j])) * cout
        acs[name] = total // b

    for l in range(cfg.depth):
        p = f"blocks.{l}."
        for nm in ("attn.q", "attn.k", "attn.v"):
            linear(p + nm, stream, cfg.embed_dim)
        q, v = rec[p + "attn.q"], rec[p + "attn.v"]
        total = 0
        for bi in range(b):
            for t in range(cfg.timesteps):
                for i in range(cfg.num_tokens):
                    for j in nb[i]:
                        for e in range(cfg.embed_dim):
                            total += int(q[bi, t, i, e] != 0) + int(v[bi, t, j, e] != 0)
        acs[p + "attn"] = total // b
        linear(p + "attn.proj", rec[p + "attn"], cfg.embed_dim)
        stream = stream + rec[p + "attn.proj"]
        linear(p + "mlp.fc1", stream, cfg.mlp_hidden)
        linear(p + "mlp.fc2", rec[p + "mlp.fc1"], cfg.embed_dim)
        stream = stream + rec[p + "mlp.fc2"]
    return acs


def test_profile_counts_match_brute_force(model_path, test_images):
    model = bsvit_int.load(model_path)
    x = test_images[0][:2]
    rep = profile(model, x)
    want = _brute_force_acs(model, x)
    for name, acs in want.items():
        assert rep["layers"][name]["acs"] == acs, name
    cfg = model.config
    assert rep["layers"]["embed"]["macs"] == cfg.num_tokens * cfg.patch_dim * cfg.embed_dim
    assert rep["dense_ann_macs"] == dense_macs(cfg) > 0
    hist = rep["layers"]["blocks.0.attn.v"]["histogram"]
    assert set(hist) <= {"-1", "0", "1"}
    assert sum(hist.values()) == 2 * cfg.timesteps * cfg.num_tokens * cfg.embed_dim


def test_profile_plot_written(model_path, test_images, tmp_path):
    rep = api.profile(model_path, test_images[0][:4], plot=str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rep["images"] == 4


def test_api_run_matches_predict(model_path, test_images):
    x = test_images[0][:4]
    res = api.run(model_path, x, top_k=2)
    logits = bsvit_int.load(model_path).predict(x)
    assert [r["logits"] for r in res] == logits.tolist()
