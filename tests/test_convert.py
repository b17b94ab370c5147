"""bsvit-convert: bad checkpoints get errors that name the tensor or layer; good ones convert."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import bsvit_int
from bsvit_int.container import read_bsi, write_bsi
from bsvit_int.converters import BSViT, BSViTConfig, ConversionError, convert
from bsvit_int.errors import BsiFormatError

TINY = BSViTConfig(img_size=(4, 6), in_chans=2, patch_size=2, embed_dim=8, depth=1,
                   num_heads=2, mlp_ratio=1.0, adjacency_window=3, burst_max=2, timesteps=2,
                   num_classes=3)


def _save(model, path, **edit):
    """Save `model`, then apply edits to the checkpoint dict (for hand-made bad files)."""
    model.save(path)
    if edit:
        ckpt = torch.load(path, weights_only=True)
        for fn in edit.values():
            fn(ckpt)
        torch.save(ckpt, path)
    return path


@pytest.fixture
def tiny(tmp_path):
    torch.manual_seed(0)
    return BSViT(TINY).eval()


def test_converts_and_engine_loads(tiny, tmp_path):
    src = _save(tiny, tmp_path / "m.pt")
    report = convert(src, tmp_path / "m.bsi", eval_data=None)
    m = bsvit_int.load(tmp_path / "m.bsi")
    assert m.config == TINY
    assert set(report["layers"]) == {"embed", "blocks.0.attn.q", "blocks.0.attn.k",
                                     "blocks.0.attn.v", "blocks.0.attn", "blocks.0.attn.proj",
                                     "blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "head"}
    prov = m.metadata["provenance"]
    assert len(prov["source_sha256"]) == 64 and prov["converter"].startswith("bsvit-int")


def test_report_with_eval_data(tiny, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (7, 4, 6, 2), dtype=np.uint8)
    y = rng.integers(0, 3, 7)
    report = convert(_save(tiny, tmp_path / "m.pt"), tmp_path / "m.bsi",
                     report_path=tmp_path / "r.json", eval_data=(x, y))
    for key in ("float_accuracy", "int_accuracy", "top1_agreement", "spike_agreement"):
        assert key in report
    assert report["n_images"] == 7
    import json
    assert json.loads((tmp_path / "r.json").read_text())["n_images"] == 7


def _expect(tmp_path, model, match, **edit):
    src = _save(model, tmp_path / "bad.pt", **edit)
    dst = tmp_path / "out.bsi"
    with pytest.raises(ConversionError, match=match):
        convert(src, dst, eval_data=None)
    assert not dst.exists(), "a refused conversion must write nothing"


def test_missing_tensor(tiny, tmp_path):
    _expect(tmp_path, tiny, r"tensor 'blocks\.0\.mlp\.fc1\.linear\.weight' is missing",
            e=lambda c: c["state_dict"].pop("blocks.0.mlp.fc1.linear.weight"))


def test_misshaped_tensor(tiny, tmp_path):
    def edit(c):
        c["state_dict"]["blocks.0.attn.k.linear.weight"] = torch.zeros(8, 7)
    _expect(tmp_path, tiny, r"'blocks\.0\.attn\.k\.linear\.weight' has shape \[8, 7\], "
                            r"expected \[8, 8\]", e=edit)


def test_nan_weight_named(tiny, tmp_path):
    def edit(c):
        c["state_dict"]["head.weight"][0, 0] = float("nan")
    _expect(tmp_path, tiny, r"'head\.weight' has 1 NaN", e=edit)


def test_zero_variance_named(tiny, tmp_path):
    def edit(c):
        c["state_dict"]["embed.bn.running_var"][3] = 0.0
    _expect(tmp_path, tiny, r"'embed\.bn\.running_var' has a variance <= 0", e=edit)


def test_layernorm_refused_by_name(tiny, tmp_path):
    tiny.blocks[0].mlp.fc1.bn = torch.nn.LayerNorm(8)
    _expect(tmp_path, tiny, r"layer 'blocks\.0\.mlp\.fc1\.bn' \(LayerNorm\) is not supported")


@pytest.mark.parametrize("module, kind", [(torch.nn.GELU(), "GELU"),
                                          (torch.nn.Softmax(dim=-1), "Softmax")])
def test_float_ops_refused_by_name(tiny, tmp_path, module, kind):
    tiny.blocks[0].mlp.act = module
    _expect(tmp_path, tiny, rf"layer 'blocks\.0\.mlp\.act' \({kind}\) is not supported")


def test_layernorm_without_module_map(tiny, tmp_path):
    """A checkpoint without our module map still cannot sneak a LayerNorm through."""
    def edit(c):
        c.pop("modules")
        for k in ("running_mean", "running_var", "num_batches_tracked"):
            c["state_dict"].pop(f"blocks.0.attn.q.bn.{k}")
    _expect(tmp_path, tiny, r"layer 'blocks\.0\.attn\.q\.bn': BatchNorm running statistics",
            e=edit)


def test_class_token_refused(tiny, tmp_path):
    def edit(c):
        c["state_dict"]["cls_token"] = torch.zeros(1, 1, 8)
    _expect(tmp_path, tiny, r"'cls_token': a class token is not supported", e=edit)


def test_unknown_config_field(tiny, tmp_path):
    def edit(c):
        c["config"]["attention"] = "softmax"
    _expect(tmp_path, tiny, r"config: unknown config field\(s\): attention", e=edit)


def test_not_a_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConversionError, match="checkpoint is a list"):
        convert(tmp_path / "list.pt", tmp_path / "o.bsi")


def test_pickled_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"config": {}, "state_dict": {}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ConversionError, match="not a loadable weights-only checkpoint"):
        convert(tmp_path / "evil.pt", tmp_path / "o.bsi")
    assert not marker.exists()


def test_bound_refused_not_wrapped(tmp_path):
    """A head bias beyond int32 (no scale choice can help the head's one shared scale) is
    refused, named."""
    torch.manual_seed(0)
    m = BSViT(TINY).eval()
    with torch.no_grad():
        m.head.bias.fill_(1e12)
    _expect(tmp_path, m, r"layer 'head': bias .* exceeds int32")


@pytest.mark.parametrize("case", ["dead row", "huge batchnorm bias", "dead embedding row"])
def test_channel_beyond_int32_gets_a_coarser_scale_and_stays_exact(tmp_path, case):
    """A channel whose weights are tiny next to its bias (a dead row under a BatchNorm
    bias) would need a bias beyond int32 at the scale max|W|/127. Only that channel gets a
    coarser scale (the report lists it); the integer engine still equals the int64 model
    exactly, and the channel fires as in the float model."""
    from bsvit_int.converters.quantizer import integer_faithful
    torch.manual_seed(0)
    m = BSViT(TINY).eval()
    fc1 = m.blocks[0].mlp.fc1
    layer = "embed" if case == "dead embedding row" else "blocks.0.mlp.fc1"
    with torch.no_grad():
        if case == "dead row":
            fc1.linear.weight[1].fill_(1e-9)
            fc1.bn.bias[1] = 3.0
        elif case == "huge batchnorm bias":
            fc1.bn.bias[1] = 1e12
        else:                              # the embedding: bias per token and channel
            m.embed.proj.weight[1].fill_(1e-9)
            m.embed.bn.bias[1] = 3.0
    report = convert(_save(m, tmp_path / "m.pt"), tmp_path / "m.bsi", eval_data=None)
    assert report["layers"][layer]["coarse_channels"] == [1]
    for name, meta in report["layers"].items():
        if name != layer:
            assert "coarse_channels" not in meta, name
    from bsvit_int.converters.convert_model import format_report
    assert f"{layer}: 1 channel(s) with a coarser weight scale" in format_report(report)

    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (5, 4, 6, 2), dtype=np.uint8)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    rec_i, rec_f = {}, {}
    with torch.no_grad():
        logits_i = integer_faithful(m).integer_logits(x, rec_i).numpy()
        m(x.float(), rec_f)
    for backend in ("numpy", "cython"):
        rec_e = {}
        logits_e = bsvit_int.load(tmp_path / "m.bsi", backend=backend).predict(imgs, rec_e)
        assert np.array_equal(logits_e, logits_i), backend
        for name, spikes in rec_i.items():
            assert np.array_equal(rec_e[name], spikes.numpy()), (backend, name)
    ch = (slice(None), slice(None), slice(None), 1)
    assert np.array_equal(rec_i[layer][ch].numpy(), rec_f[layer][ch].numpy())
    assert rec_i[layer][ch].numpy().any()


def test_engine_rejects_edited_model(tiny, tmp_path):
    """A .bsi whose CRCs are valid but whose values break the contract is refused at load."""
    convert(_save(tiny, tmp_path / "m.pt"), tmp_path / "m.bsi", eval_data=None)
    f = read_bsi(tmp_path / "m.bsi", mmap=False)
    tensors = {k: np.array(v) for k, v in f.tensors.items()}
    tensors["blocks.0.attn.v.threshold"][2] = 0
    write_bsi(tmp_path / "t0.bsi", f.metadata, tensors)
    with pytest.raises(BsiFormatError, match=r"'blocks\.0\.attn\.v\.threshold': threshold 0"):
        bsvit_int.load(tmp_path / "t0.bsi")

    tensors = {k: np.array(v) for k, v in f.tensors.items()}
    tensors["blocks.0.mlp.fc1.bias"][:] = 2**31 - 1
    write_bsi(tmp_path / "big.bsi", f.metadata, tensors)
    with pytest.raises(BsiFormatError, match=r"layer 'blocks\.0\.mlp\.fc1': accumulator bound"):
        bsvit_int.load(tmp_path / "big.bsi")

    meta = dict(f.metadata, config=dict(f.metadata["config"], embed_dim=16))
    write_bsi(tmp_path / "cfg.bsi", meta, f.tensors)
    with pytest.raises(BsiFormatError, match=r"tensor 'embed\.weight' is int8\[8, 8\], the "
                                             r"config requires int8\[8, 16\]"):
        bsvit_int.load(tmp_path / "cfg.bsi")


def test_truncated_and_flipped_files(tiny, tmp_path):
    convert(_save(tiny, tmp_path / "m.pt"), tmp_path / "m.bsi", eval_data=None)
    raw = (tmp_path / "m.bsi").read_bytes()
    (tmp_path / "trunc.bsi").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BsiFormatError, match="file_size"):
        bsvit_int.load(tmp_path / "trunc.bsi")
    flipped = bytearray(raw)
    flipped[-5] ^= 0x10                    # inside the last tensor (head.bias)
    (tmp_path / "flip.bsi").write_bytes(bytes(flipped))
    with pytest.raises(BsiFormatError, match="head.bias"):
        bsvit_int.load(tmp_path / "flip.bsi")


def _cli(*args):
    return subprocess.run([sys.executable, "-c", "import sys; from bsvit_int.cli import "
                           "convert_main; sys.exit(convert_main())", *args],
                          capture_output=True, text=True)


def test_cli_errors_are_one_line(tiny, tmp_path):
    r = _cli(str(tmp_path / "missing.pt"), str(tmp_path / "o.bsi"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no such file" in r.stderr
    tiny.blocks[0].mlp.fc1.bn = torch.nn.LayerNorm(8)
    _save(tiny, tmp_path / "ln.pt")
    r = _cli(str(tmp_path / "ln.pt"), str(tmp_path / "o.bsi"))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "LayerNorm" in r.stderr
    r = _cli()
    assert r.returncode == 2


def test_cli_prints_report(tiny, tmp_path):
    _save(tiny, tmp_path / "m.pt")
    r = _cli(str(tmp_path / "m.pt"), str(tmp_path / "m.bsi"), "--eval", "none")
    assert r.returncode == 0, r.stderr
    assert "blocks.0.mlp.fc2" in r.stdout and "wrote" in r.stdout
