"""Per-layer activity, operation counts and energy estimates of an integer BSViT.

`profile(model, images)` runs the model once, records every layer's spikes and counts the
operations the integer contract executes on them (docs/integer-spec.md):

* ACs (accumulates): synaptic additions. An input with spike count c adds its weight row
  c times (one AC per row element per spike: the usual SOP convention, so a burst of 3
  costs what 3 binary spikes cost). In attention, each active Q bit adds one K value
  (scores), and each non-zero V adds or subtracts one score (output).
* MACs: true multiplications: the patch embedding on raw pixels (computed once per
  image) and the head on summed spike counts.
* Neuron updates (charge + compare per neuron and step) are reported apart and, as in the
  literature's convention, not charged in the energy figure.

Energy = E_MAC · MACs + E_AC · ACs with 45 nm figures (Horowitz 2014: E_AC = 0.9 pJ,
E_MAC = 4.6 pJ) unless given. The dense-ANN equivalent is the same architecture as a
non-spiking network run once (T = 1), every synapse a MAC. Weight bytes read counts each
active input's int8 row once per step (memory traffic, which SOP counts ignore).
"""
from __future__ import annotations

import time
from typing import Dict, Optional

import numpy as np

from . import spec

E_AC_PJ = 0.9
E_MAC_PJ = 4.6


def _attention_counts(q: np.ndarray, v: np.ndarray, cfg) -> int:
    """ACs of windowed scores and signed accumulation of one block, summed over B and T.

    Scores: each active Q bit of token i adds K[j, e] once per window neighbour j.
    Output: each non-zero V[j, e] adds or subtracts S[i, j] once per token i whose window
    holds j.
    """
    neighbours = spec.grid_neighbours(cfg)
    q_bits = np.count_nonzero(q, axis=(0, 1, 3))                # [N] over B, T, channels
    v_nz = np.count_nonzero(v, axis=(0, 1, 3))                  # [N]
    return int(sum(int(q_bits[i]) * len(js) + int(v_nz[js].sum())
                   for i, js in enumerate(neighbours)))


def profile(model, images: np.ndarray, *, e_ac_pj: float = E_AC_PJ,
            e_mac_pj: float = E_MAC_PJ, repeats: int = 1) -> dict:
    """Profile `model` (a bsvit_int.Model) on uint8 images [B, H, W, C]; per-image figures."""
    if not (e_ac_pj > 0 and e_mac_pj > 0):
        raise ValueError("energy per operation must be > 0 pJ")
    images = model._images(images)
    b = images.shape[0]
    if b == 0:
        raise ValueError("profile needs at least one image")
    cfg = model.config
    rec: Dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    model.predict(images, record=rec)
    latency = [time.perf_counter() - t0]
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        model.predict(images)
        latency.append(time.perf_counter() - t0)

    n, t, d = cfg.num_tokens, cfg.timesteps, cfg.embed_dim
    kinds = {layer.name: layer for layer in spec.layers(cfg)}
    layers: Dict[str, dict] = {}

    def add(name: str, acs: int = 0, macs: int = 0, weight_bytes: int = 0) -> None:
        s = rec[name]
        layer = kinds[name]
        vals, counts = np.unique(s, return_counts=True)
        layers[name] = {
            "kind": "binary" if layer.kind == "burst" and layer.spike_max == 1 else layer.kind,
            "firing_rate": float(np.count_nonzero(s) / s.size),
            "spikes_per_image": float(np.abs(s.astype(np.int64)).sum() / b),
            "histogram": {str(int(v)): int(c) for v, c in zip(vals, counts)},
            "neuron_updates": int(s[0].size),                   # per image: T * N * C
            "acs": acs, "macs": macs, "weight_bytes_read": weight_bytes,
            "energy_pj": acs * e_ac_pj + macs * e_mac_pj,
        }

    def linear(name: str, x: np.ndarray) -> None:
        """x: spike counts [B, T, N, in] entering layer `name`."""
        cout = kinds[name].cout
        acs = int(np.abs(x.astype(np.int64)).sum()) * cout // b
        add(name, acs=acs, weight_bytes=int(np.count_nonzero(x)) * cout // b)

    add("embed", macs=n * cfg.patch_dim * d, weight_bytes=cfg.patch_dim * d)
    stream = rec["embed"].astype(np.int64)                      # residual stream counts
    for l in range(cfg.depth):
        p = f"blocks.{l}."
        for name in ("attn.q", "attn.k", "attn.v"):
            linear(p + name, stream)
        add(p + "attn", acs=_attention_counts(rec[p + "attn.q"], rec[p + "attn.v"], cfg) // b)
        linear(p + "attn.proj", rec[p + "attn"])
        stream = stream + rec[p + "attn.proj"]
        linear(p + "mlp.fc1", stream)
        linear(p + "mlp.fc2", rec[p + "mlp.fc1"])
        stream = stream + rec[p + "mlp.fc2"]
    head_macs = d * cfg.num_classes
    layers["head"] = {"kind": "linear", "acs": n * t * d, "macs": head_macs,
                      "weight_bytes_read": head_macs, "neuron_updates": 0,
                      "energy_pj": n * t * d * e_ac_pj + head_macs * e_mac_pj}

    total_acs = sum(v["acs"] for v in layers.values())
    total_macs = sum(v["macs"] for v in layers.values())
    energy = total_acs * e_ac_pj + total_macs * e_mac_pj
    dense = dense_macs(cfg)
    spiking = [v for k, v in layers.items() if k != "head"]
    return {
        "images": int(b),
        "firing_rate": float(sum(v["firing_rate"] * v["neuron_updates"] for v in spiking)
                             / sum(v["neuron_updates"] for v in spiking)),
        "acs_per_image": int(total_acs),
        "macs_per_image": int(total_macs),
        "neuron_updates_per_image": int(sum(v["neuron_updates"] for v in spiking)),
        "weight_bytes_read_per_image": int(sum(v["weight_bytes_read"] for v in layers.values())),
        "energy_uj_per_image": energy / 1e6,
        "dense_ann_macs": int(dense),
        "dense_ann_energy_uj": dense * e_mac_pj / 1e6,
        "energy_ratio_ann_over_snn": (dense * e_mac_pj) / energy if energy else float("inf"),
        "e_ac_pj": e_ac_pj,
        "e_mac_pj": e_mac_pj,
        "latency_ms_per_image": 1e3 * float(np.median(latency)) / b,
        "backend": model.backend,
        "layers": layers,
    }


def dense_macs(cfg) -> int:
    """MACs of the same architecture as a dense ANN run once (T = 1)."""
    n, d, dm = cfg.num_tokens, cfg.embed_dim, cfg.mlp_hidden
    window = sum(len(js) for js in spec.grid_neighbours(cfg))      # Σ_i |window(i)|
    per_block = 4 * n * d * d + 2 * n * d * dm + 2 * window * d     # qkv+proj, mlp, QK and SV
    return n * cfg.patch_dim * d + cfg.depth * per_block + d * cfg.num_classes


def plot(report: dict, path: str, title: Optional[str] = None) -> None:
    """Bar charts of firing rate and energy per layer (needs matplotlib: the plot extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'bsvit-int[plot]'") from None
    names = [k for k in report["layers"] if k != "head"]
    rates = [report["layers"][k]["firing_rate"] * 100 for k in names]
    energy = [report["layers"][k]["energy_pj"] / 1e6 for k in names]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(6, 0.45 * len(names)), 6.5), sharex=True)
    a1.bar(range(len(names)), rates, color="#3b7dd8")
    a1.set_ylabel("firing rate (%)")
    a1.axhline(report["firing_rate"] * 100, color="k", lw=0.8, ls="--",
               label=f"mean {report['firing_rate'] * 100:.1f} %")
    a1.legend(loc="upper right")
    a2.bar(range(len(names)), energy, color="#d8703b")
    a2.set_ylabel("energy per image (µJ)")
    a2.set_xticks(range(len(names)))
    a2.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    fig.suptitle(title or f"{report['energy_uj_per_image']:.3f} µJ per image, "
                          f"{report['energy_ratio_ann_over_snn']:.1f}× below a dense ANN "
                          f"({report['images']} images)")
    fig.tight_layout()
    from .atomic import atomic_write
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
