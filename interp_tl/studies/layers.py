"""Layer variation: how far consecutive layers' weights are apart once the real symmetries are removed.

Port of the research script ``layer_variation_gauge_aligned.py`` onto HookedTransformer weights,
with its Procrustes fixed (it returned the transpose of the maximizer) and its symmetries made
honest (see :mod:`interp_tl.gauge`). For each consecutive pair of layers in a block (default
the seed's 10..25 of 36 as a fraction of depth), every weight family is Frobenius-normalized and
compared as ``||unit(X_a) R - unit(X_b)||_F`` under several alignments:

* ``raw``: no alignment;
* ``tied``: the seed's one rotation per head (per K/V group) for Q, K, V and O;
* ``separate``: one orthogonal transform for the QK pair and another for the VO pair; for rotary
  models the QK transform is restricted to rotations commuting with rotary;
* MLP ``permutation`` (exact symmetry of elementwise MLPs, by linear assignment) and the seed's
  ``rotation`` (not a symmetry: labelled as an approximation);
* LayerNorm / RMSNorm weights directly (they need unfolded weights: the study refuses a model
  whose norms were folded, and records the processing).

Beside them, the invariant comparison: per-head ``W_QK = W_Q W_K^T`` and ``W_OV = W_V W_O``
(TransformerLens ``FactoredMatrix``, ``d_model x d_model``, invariant under the full GL(d_head)
gauge) as normalized Frobenius distances, with heads matched across the two layers by linear
assignment. And nulls: the same distances for non-adjacent layer pairs, and for the layer
against random matrices with the same shapes and singular values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from interp_tl.cache import check_layers
from interp_tl.errors import BadInputError
from interp_tl.figures import figure
from interp_tl.gauge import (
    AttentionWeights,
    MLPWeights,
    align_attention,
    attention_weights,
    match_neurons,
    mlp_weights,
    rotate_neurons,
    unit,
)
from interp_tl.results import StudyResult
from interp_tl.studies.base import Study, check_int, study_provenance

#: The seed's block: layers 10..25 (inclusive) of a 36-layer model.
SEED_BLOCK = (10, 25, 36)
ATTENTION = ("W_Q", "W_K", "W_V", "W_O")


@dataclass(frozen=True, kw_only=True)
class LayersConfig:
    """Settings of the layer-variation study.

    Attributes:
        layers: the block, e.g. 1-3 (consecutive pairs are compared); None: the research script's
            10..25 of 36 as a fraction of depth.
        null_random_seed: seed of the random same-spectrum matrices.
        invariants: also compare per-head W_QK / W_OV (FactoredMatrix) with matched heads.
        rotation_approx: also run the seed's d_mlp rotation alignment (an SVD of d_mlp x d_mlp per
            pair: 16 s per pair at GPT-2's d_mlp 3072 on 2 CPU cores).
    """

    layers: tuple[int, ...] | None = None
    null_random_seed: int = 0
    invariants: bool = True
    rotation_approx: bool = True

    def __post_init__(self) -> None:
        check_int(self.null_random_seed, "null_random_seed", 0)


def default_block(n_layers: int) -> list[int]:
    """The seed's 10..25 of 36 (inclusive) as a fraction of depth, at least two layers."""
    lo, hi, depth = SEED_BLOCK
    start = min(round(lo / depth * n_layers), max(n_layers - 2, 0))
    stop = min(max(round(hi / depth * n_layers), start + 1), n_layers - 1)
    return list(range(start, stop + 1))


def _rotary(model) -> tuple[int, bool] | None:
    cfg = model.cfg
    if cfg.positional_embedding_type != "rotary":
        return None
    return int(cfg.rotary_dim or cfg.d_head), bool(getattr(cfg, "rotary_adjacent_pairs", False))


def _norm_weights(model, layer: int) -> dict[str, np.ndarray]:
    block = model.blocks[layer]
    out = {}
    for name in ("ln1", "ln2"):
        w = getattr(getattr(block, name, None), "w", None)
        if w is not None:
            out[f"{name}_w"] = w.detach().double().cpu().numpy()
    return out


def _raw_attention(wa: AttentionWeights, wb: AttentionWeights) -> dict[str, np.ndarray]:
    g = wa.group
    out = {}
    for key, name in zip("qkvo", ATTENTION):
        a, b = getattr(wa, name), getattr(wb, name)
        per = np.array([np.linalg.norm(unit(x) - unit(y)) for x, y in zip(a, b)])
        out[key] = np.repeat(per, g) if key in "kv" else per
    return out


def pair_distances(model, la: int, lb: int, target: dict | None = None, rotation_approx: bool = True) -> dict[str, Any]:
    """Every family's distance between layers ``la`` and ``lb`` under every alignment.

    ``target`` replaces layer ``lb``'s weights (``{"attn": AttentionWeights, "mlp": MLPWeights,
    "norms": {...}}``), used for the random-spectrum null. Per-head values are kept in ``heads``.
    """
    wa, wb = attention_weights(model, la), (target or {}).get("attn") or attention_weights(model, lb)
    ma, mb = mlp_weights(model, la), (target or {}).get("mlp") or mlp_weights(model, lb)
    rotary = _rotary(model)
    heads = {"raw": _raw_attention(wa, wb), "tied": align_attention(wa, wb, "tied", rotary),
             "separate": align_attention(wa, wb, "separate", rotary)}
    out: dict[str, Any] = {"pair": [la, lb], "attention": {}, "heads": {}}
    for mode, res in heads.items():
        out["attention"][mode] = {name: float(np.mean(res[key])) for key, name in zip("qkvo", ATTENTION)}
        out["heads"][mode] = {name: [float(x) for x in res[key]] for key, name in zip("qkvo", ATTENTION)}
    fa, fb = ma.families(), mb.families()
    out["mlp"] = {"raw": {k: float(np.linalg.norm(fa[k] - fb[k])) for k in fa},
                  "permutation": {k: v for k, v in match_neurons(ma, mb).items() if k != "perm"}}
    if rotation_approx:
        out["mlp"]["rotation_approx"] = {k: v for k, v in rotate_neurons(ma, mb).items() if k != "S"}
    na, nb = _norm_weights(model, la), (target or {}).get("norms") or _norm_weights(model, lb)
    out["norms"] = {k: float(np.linalg.norm(unit(na[k]) - unit(nb[k]))) for k in na if k in nb}
    return out


def head_invariants(model, la: int, lb: int) -> dict[str, Any]:
    """Per-head W_QK and W_OV distances between two layers, heads matched by linear assignment.

    ``d(h, h') = ||X_h / |X_h| - Y_h' / |Y_h'| ||_F`` computed from the FactoredMatrix factors
    (never the d_model x d_model products). Returns the distance matrices, the matching and the
    mean distance matched and index-to-index.
    """
    out = {}
    for name, fm in (("W_QK", model.QK), ("W_OV", model.OV)):
        a1, b1 = fm.A[la].detach().double().cpu().numpy(), fm.B[la].detach().double().cpu().numpy()
        a2, b2 = fm.A[lb].detach().double().cpu().numpy(), fm.B[lb].detach().double().cpu().numpy()
        # <A1 B1, A2 B2>_F = tr((A1^T A2)(B2 B1^T)), per head pair
        inner = np.einsum("idk,jdl,jlm,ikm->ij", a1, a2, b2, b1, optimize=True)
        n1 = np.sqrt(np.einsum("idk,idl,ilm,ikm->i", a1, a1, b1, b1, optimize=True))
        n2 = np.sqrt(np.einsum("jdk,jdl,jlm,jkm->j", a2, a2, b2, b2, optimize=True))
        cos = inner / np.outer(n1, n2)
        dist = np.sqrt(np.clip(2 - 2 * cos, 0, None))
        rows, cols = linear_sum_assignment(dist)
        out[name] = {"distance": dist.round(6).tolist(), "match": cols.tolist(),
                     "matched_mean": float(dist[rows, cols].mean()), "same_index_mean": float(np.diag(dist).mean())}
    return out


def random_spectrum_like(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random matrix with the shape and singular values of ``x`` (Haar singular vectors)."""
    s = np.linalg.svd(x, compute_uv=False)
    u = np.linalg.qr(rng.normal(size=(x.shape[0], len(s))))[0]
    v = np.linalg.qr(rng.normal(size=(x.shape[1], len(s))))[0]
    return (u * s) @ v.T


def _random_target(model, layer: int, rng: np.random.Generator) -> dict[str, Any]:
    w, m = attention_weights(model, layer), mlp_weights(model, layer)

    def per(stack):
        return np.stack([random_spectrum_like(x, rng) for x in stack])

    attn = AttentionWeights(per(w.W_Q), per(w.W_K), per(w.W_V), per(w.W_O))
    mlp = MLPWeights(random_spectrum_like(m.W_in, rng), random_spectrum_like(m.W_out, rng),
                     None if m.W_gate is None else random_spectrum_like(m.W_gate, rng))
    norms = {k: rng.permutation(v) for k, v in _norm_weights(model, layer).items()}
    return {"attn": attn, "mlp": mlp, "norms": norms}


def _flat(entry: dict[str, Any]) -> dict[str, float]:
    """``family/alignment -> distance`` for one pair (the heatmap's columns)."""
    flat = {}
    for mode, fams in entry["attention"].items():
        flat.update({f"{fam}/{mode}": v for fam, v in fams.items()})
    for mode, fams in entry["mlp"].items():
        flat.update({f"{fam}/{mode}": v for fam, v in fams.items()})
    flat.update({f"{fam}/direct": v for fam, v in entry["norms"].items()})
    return flat


def _summary(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = rows[0].keys()
    return {k: {"mean": float(np.mean([r[k] for r in rows])), "min": float(np.min([r[k] for r in rows])),
                "max": float(np.max([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))}
            for k in keys}


def run_layers(model, config: LayersConfig = LayersConfig(), progress: bool = False) -> StudyResult:
    """Run the layer-variation study on a HookedTransformer's weights (no prompts).

    Returns:
        A :class:`StudyResult` with ``pairs`` (per consecutive pair: every family under every
        alignment, per-head values, and the W_QK / W_OV invariants), ``family_stats`` (mean /
        min / max / std over pairs), ``ranking`` (families by mean distance under the true
        symmetries), ``nulls`` (non-adjacent pairs; random same-spectrum targets) and notes on
        what each alignment aligns over.

    Raises:
        BadInputError: fewer than two layers.

    Pitfall: with ``fold_ln`` the norm weights are folded into the next layer's weights; they are
    then absent (``norm_weights`` says so) and the attention / MLP weights include them.
    """
    folded = model.cfg.normalization_type in ("LNPre", "RMSPre")
    block = check_layers(model, config.layers) if config.layers is not None else default_block(model.cfg.n_layers)
    if len(block) < 2:
        raise BadInputError(f"the block needs at least two layers, got {block}")
    pairs = list(zip(block[:-1], block[1:]))
    entries = []
    for la, lb in pairs:
        entry = pair_distances(model, la, lb, rotation_approx=config.rotation_approx)
        if config.invariants:
            entry["invariants"] = head_invariants(model, la, lb)
        entries.append(entry)
    flats = [_flat(e) for e in entries]
    stats = _summary(flats)
    far = [(a, b) for i, a in enumerate(block) for b in block[i + 2:]]
    far_flats = [_flat(pair_distances(model, a, b, rotation_approx=config.rotation_approx)) for a, b in far]
    rng = np.random.default_rng(config.null_random_seed)
    random_flats = [_flat(pair_distances(model, la, lb, _random_target(model, lb, rng), config.rotation_approx))
                    for la, lb in pairs]
    true = [k for k in stats if k.endswith(("/separate", "/permutation", "/direct"))]
    data = {
        "block": block,
        "pairs": entries,
        "family_stats": stats,
        "ranking": sorted(true, key=lambda k: stats[k]["mean"]),
        "nulls": {"non_adjacent": {"pairs": [list(p) for p in far], "family_stats": _summary(far_flats) if far_flats
                                   else None},
                  "random_same_spectrum": {"family_stats": _summary(random_flats), "seed": config.null_random_seed}},
        "norm_weights": ("folded into the following weights (fold_ln): not compared; load with processing none"
                         if folded else "compared directly (unprocessed)"),
        "alignments": {
            "raw": "no alignment",
            "tied": "the research script: one orthogonal d_head transform per head (per K/V group) for Q, K, V, O",
            "separate": "one orthogonal transform for the QK pair, another for the VO pair"
                        + (" (QK restricted to rotations commuting with rotary)" if _rotary(model) else ""),
            "permutation": "MLP neurons matched by linear assignment (exact symmetry)",
            "rotation_approx": "the research script's d_mlp rotation: NOT a symmetry, an approximation",
            "direct": "norm weights compared directly (no gauge freedom)",
            "invariants": "per-head W_QK, W_OV (FactoredMatrix): invariant under GL(d_head); heads matched",
        },
    }
    return StudyResult("layers", data, study_provenance(model, "layers", config, layers=block))


def plot(result: StudyResult):
    """Distances per layer pair and family (heatmap), and per family the mean adjacent distance against the nulls."""
    data = result.data
    columns = list(data["family_stats"])
    grid = np.array([[_flat(e)[c] for c in columns] for e in data["pairs"]])
    labels = [f"{a}-{b}" for a, b in (e["pair"] for e in data["pairs"])]
    true = data["ranking"]
    fig = figure((14, 5))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    image = left.imshow(grid, aspect="auto", cmap="viridis")
    left.set_xticks(range(len(columns)), columns, rotation=90, fontsize=6)
    left.set_yticks(range(len(labels)), labels, fontsize=7)
    left.set(ylabel="layer pair", title="||unit(X_a) R - unit(X_b)||_F")
    fig.colorbar(image, ax=left, fraction=0.03)
    y = np.arange(len(true))
    right.barh(y, [data["family_stats"][c]["mean"] for c in true], height=0.35, label="adjacent pairs")
    far = data["nulls"]["non_adjacent"]["family_stats"]
    if far:
        right.plot([far[c]["mean"] for c in true], y, "k|", ms=10, label="non-adjacent pairs")
    rnd = data["nulls"]["random_same_spectrum"]["family_stats"]
    right.plot([rnd[c]["mean"] for c in true], y, "rx", label="random, same spectrum")
    right.set_yticks(y, true, fontsize=7)
    right.set(xlabel="mean distance", title="under the true symmetries, with nulls")
    right.legend(fontsize=7)
    model = result.provenance["model"]
    fig.suptitle(f"{model['name']} ({model['processing']}), block {data['block']}", fontsize=9)
    return fig


def headline(result: StudyResult) -> str:
    """The closest and farthest weight families under the true symmetries."""
    data = result.data
    family = data["family_stats"]
    low, high = data["ranking"][0], data["ranking"][-1]
    return f"block {data['block']}: closest {low} {family[low]['mean']:.3f}, farthest {high} {family[high]['mean']:.3f}"


STUDY = Study(
    name="layers", summary="gauge-aligned weight distances between consecutive layers, with nulls",
    config=LayersConfig, run=run_layers, plot=plot, headline=headline, docs="docs/studies/layers.md",
)
