"""Layer variation: how far consecutive layers' weights are apart once the real symmetries are removed.

Port of the research script ``layer_variation_gauge_aligned.py`` onto HookedTransformer weights,
with its Procrustes fixed (it returned the transpose of the maximizer) and its symmetries made
honest (see :mod:`interp_tl.gauge`, whose docstring derives which transforms are symmetries). For
each consecutive pair of layers in a block (default the seed's 10..25 of 36 as a fraction of
depth), every weight family is Frobenius-normalized and compared as
``||unit(X_a) R - unit(X_b)||_F`` under several alignments:

* ``raw``: no alignment, head index to head index;
* ``tied``: the research script's definition, computed as it did: per query head one orthogonal
  d_head transform for its Q, its group's K and V, and its O, heads index to index, unrestricted.
  An exact symmetry only with absolute positions, no grouped-query attention and no q/k norms;
  otherwise an approximation (``alignments.approximate`` says which);
* ``tied_exact`` (exact): heads matched, then one transform per K/V group for Q, K, V and O,
  restricted to the transforms commuting with rotary and q/k norms;
* ``separate`` (exact): heads matched (K/V groups moved with their query heads, query heads
  permuted inside a group), then one orthogonal QK transform per group commuting with rotary and
  the q/k norms, and an independent orthogonal VO transform;
* MLP ``permutation`` (exact: neurons matched by linear assignment) and the seed's
  ``rotation_approx`` (a d_mlp rotation: an approximation, not a symmetry);
* ``direct``: norm weights (``ln1_w``, ``ln2_w``, and Qwen3's ``q_norm_w``, ``k_norm_w``) compared
  directly, the seed's way. They need unfolded weights: with ``fold_ln`` they are absent and
  ``norm_weights`` says so. Their scale gauge (what ``fold_ln`` moves; a per-pair scale between
  q_norm and k_norm) is not removed, so ``direct`` can only overstate a distance.
* ``invariant``: per-head ``W_QK = W_Q W_K^T`` and ``W_OV = W_V W_O`` (``d_model x d_model``,
  invariant under every QK / VO transform) as normalized Frobenius distances, heads matched by
  linear assignment (``pairs[i].invariants``; ``W_QK/invariant`` is the matched mean).

Every exact alignment is checked in the tests by applying the found transform to the model and
comparing logits (:func:`align_pair` returns the transforms). Nulls: the same statistics for
non-adjacent pairs of the block (absent, with the reason, for a block of two layers), and for the
layer against random matrices with the same shapes and singular values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from interp_tl.errors import BadInputError
from interp_tl.figures import figure
from interp_tl.results import StudyResult
from interp_tl.studies.base import Study, check_int, study_provenance

if TYPE_CHECKING:
    from interp_tl.gauge import (
        AttentionAlignment,
        AttentionComparison,
        MLPWeights,
    )

#: The seed's block: layers 10..25 (inclusive) of a 36-layer model.
SEED_BLOCK = (10, 25, 36)
ATTENTION = ("W_Q", "W_K", "W_V", "W_O")
#: Attention alignments: the seed's ``tied`` and the two exact ones (heads matched).
ALIGNED = ("tied", "tied_exact", "separate")
#: Columns (``family/alignment``) ranked: exact symmetries, invariants, norms compared directly.
RANKED = ("/separate", "/permutation", "/invariant", "/direct")


@dataclass(frozen=True, kw_only=True)
class LayersConfig:
    """Settings of the layer-variation study.

    Attributes:
        layers: the block, consecutive layers in increasing order, e.g. 1-3 (its consecutive pairs are
            compared); None: the research script's 10..25 of 36 as a fraction of depth.
        null_random_seed: seed of the random same-spectrum matrices.
        invariants: also compare per-head W_QK / W_OV with matched heads (and their nulls).
        rotation_approx: also run the seed's d_mlp rotation alignment (computed thinly, in
            ``O(d_mlp (k d_model)^2)`` for k MLP matrices, not as an SVD of d_mlp x d_mlp).
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


def check_block(model, layers) -> list[int]:
    """The block as a list: layers in range, at least two, consecutive and increasing.

    Raises:
        BadInputError: (one line) a layer out of range, fewer than two layers, or layers that
            are not consecutive in increasing order (``1,1``, ``3,1,2``, ``0,3``).
    """
    from interp_tl.cache import check_layers

    block = check_layers(model, layers) if layers is not None else default_block(model.cfg.n_layers)
    if len(block) < 2:
        raise BadInputError(f"the block needs at least two layers, got {block}")
    if any(b != a + 1 for a, b in zip(block[:-1], block[1:])):
        raise BadInputError(f"the block must be consecutive layers in increasing order (e.g. 1-3), got {block}")
    return block


def attention_structure(model, block: list[int]) -> dict[str, Any]:
    """What the attention alignments had to respect: heads, K/V groups, rotary, q/k norms."""
    from interp_tl.gauge import qk_constraint

    cfg = model.cfg
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
    constraints = {str(layer): qk_constraint(model, layer).summary() for layer in block}
    first = constraints[str(block[0])]
    return {
        "n_heads": int(cfg.n_heads), "n_kv_heads": n_kv, "d_head": int(cfg.d_head),
        "positional_embedding_type": cfg.positional_embedding_type,
        "rotary_dim": first["rotary_dim"], "rotary_pairing": first["rotary_pairing"],
        "qk_norm": ("per-head RMSNorm, one weight of length d_head shared by all heads (attn.q_norm.w, "
                    "attn.k_norm.w)") if first["qk_norm"] else None,
        "head_matching": ("K/V groups by linear assignment of the aligned fit; query heads inside a group by "
                          "alternating assignment and Procrustes from the invariant matching"
                          if n_kv < cfg.n_heads else "heads by linear assignment of the aligned fit (exact)"),
        "qk_transforms_per_layer": constraints,
    }


def _norm_weights(model, layer: int) -> dict[str, np.ndarray]:
    block = model.blocks[layer]
    modules = {"ln1": getattr(block, "ln1", None), "ln2": getattr(block, "ln2", None),
               "q_norm": getattr(block.attn, "q_norm", None), "k_norm": getattr(block.attn, "k_norm", None)}
    out = {}
    for name, module in modules.items():
        w = getattr(module, "w", None)
        if w is not None:
            out[f"{name}_w"] = w.detach().double().cpu().numpy()
    return out


@dataclass(frozen=True, eq=False)
class PairAlignment:
    """The transforms aligning layer a to layer b (to apply them, see :mod:`interp_tl.gauge`).

    Attributes:
        comparison: the normalized weights and their cross-products.
        attention: ``{"tied", "tied_exact", "separate": AttentionAlignment}``.
        neurons: :func:`~interp_tl.gauge.match_neurons`' result (``perm`` and residuals).
        mlp: the two layers' MLP weights.
    """

    comparison: AttentionComparison
    attention: dict[str, AttentionAlignment]
    neurons: dict[str, Any]
    mlp: tuple[MLPWeights, MLPWeights]


def align_pair(model, la: int, lb: int, target: dict | None = None) -> PairAlignment:
    """Align layer ``la`` to layer ``lb`` (or to ``target``'s weights) under every alignment.

    The QK transforms are restricted by layer ``la``'s rotary and q/k norms, so that applying
    an exact alignment to layer ``la`` leaves the model's function unchanged.
    """
    from interp_tl.gauge import AttentionComparison, attention_weights, match_neurons, mlp_weights, qk_constraint

    wa, wb = attention_weights(model, la), (target or {}).get("attn") or attention_weights(model, lb)
    ma, mb = mlp_weights(model, la), (target or {}).get("mlp") or mlp_weights(model, lb)
    comparison = AttentionComparison(wa, wb)
    qk = qk_constraint(model, la)
    attention = {mode: comparison.align(mode, qk) for mode in ALIGNED}
    return PairAlignment(comparison, attention, match_neurons(ma, mb), (ma, mb))


def pair_distances(model, la: int, lb: int, target: dict | None = None, rotation_approx: bool = True,
                   invariants: bool = True) -> dict[str, Any]:
    """Every family's distance between layers ``la`` and ``lb`` under every alignment.

    ``target`` replaces layer ``lb``'s weights (``{"attn": AttentionWeights, "mlp": MLPWeights,
    "norms": {...}}``), used for the random-spectrum null. Per-head values are kept in ``heads``
    (indexed by layer ``lb``'s heads) and the head matching in ``head_match``.
    """
    from interp_tl.gauge import rotate_neurons, unit

    aligned = align_pair(model, la, lb, target)
    heads = {"raw": aligned.comparison.raw(), **{m: a.residuals for m, a in aligned.attention.items()}}
    out: dict[str, Any] = {"pair": [la, lb], "attention": {}, "heads": {}}
    for mode, res in heads.items():
        out["attention"][mode] = {name: float(np.mean(res[key])) for key, name in zip("qkvo", ATTENTION)}
        out["heads"][mode] = {name: [float(x) for x in res[key]] for key, name in zip("qkvo", ATTENTION)}
    out["head_match"] = {m: {"query_heads": aligned.attention[m].perm_q.tolist(),
                             "kv_groups": aligned.attention[m].perm_kv.tolist()} for m in ("tied_exact", "separate")}
    ma, mb = aligned.mlp
    fa, fb = ma.families(), mb.families()
    out["mlp"] = {"raw": {k: float(np.linalg.norm(fa[k] - fb[k])) for k in fa},
                  "permutation": {k: v for k, v in aligned.neurons.items() if k != "perm"}}
    if rotation_approx:
        out["mlp"]["rotation_approx"] = rotate_neurons(ma, mb)
    na, nb = _norm_weights(model, la), (target or {}).get("norms") or _norm_weights(model, lb)
    out["norms"] = {k: float(np.linalg.norm(unit(na[k]) - unit(nb[k]))) for k in na if k in nb}
    if invariants:
        out["invariants"] = aligned.comparison.invariants()
    return out


def random_spectrum_like(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random matrix with the shape and singular values of ``x`` (Haar singular vectors)."""
    s = np.linalg.svd(x, compute_uv=False)
    u = np.linalg.qr(rng.normal(size=(x.shape[0], len(s))))[0]
    v = np.linalg.qr(rng.normal(size=(x.shape[1], len(s))))[0]
    return (u * s) @ v.T


def _random_target(model, layer: int, rng: np.random.Generator) -> dict[str, Any]:
    from interp_tl.gauge import AttentionWeights, MLPWeights, attention_weights, mlp_weights
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
    flat.update({f"{fam}/invariant": v["matched_mean"] for fam, v in entry.get("invariants", {}).items()})
    return flat


def _summary(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = rows[0].keys()
    return {k: {"mean": float(np.mean([r[k] for r in rows])), "min": float(np.min([r[k] for r in rows])),
                "max": float(np.max([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))}
            for k in keys}


def _alignments(model) -> dict[str, Any]:
    """What each alignment aligns over, and which are exact symmetries on this model."""
    cfg = model.cfg
    seed_exact = (cfg.positional_embedding_type != "rotary" and not getattr(cfg, "use_qk_norm", False)
                  and (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads) == cfg.n_heads)
    return {
        "raw": "no alignment, head index to head index",
        "tied": "the research script: per query head one orthogonal d_head transform for its Q, its group's K "
                "and V, and its O; heads index to index; unrestricted",
        "tied_exact": "heads matched, then one transform per K/V group for Q, K, V and O, restricted to those "
                      "commuting with rotary and q/k norms",
        "separate": "heads matched, then per K/V group one orthogonal QK transform commuting with rotary and q/k "
                    "norms and an independent orthogonal VO transform",
        "permutation": "MLP neurons matched by linear assignment",
        "rotation_approx": "the research script's d_mlp rotation (not a symmetry)",
        "direct": "norm weights compared directly (the seed's way); their scale gauge is not removed",
        "invariant": "per-head W_QK, W_OV (invariant under every QK / VO transform); heads matched; matched mean",
        "exact": (["tied"] if seed_exact else []) + ["tied_exact", "separate", "permutation", "invariant"],
        "approximate": ([] if seed_exact else ["tied"]) + ["rotation_approx"],
    }


def _nulls(model, block, pairs, config: LayersConfig, bar) -> dict[str, Any]:
    def dist(a, b, target=None):
        bar.update()
        return _flat(pair_distances(model, a, b, target, config.rotation_approx, config.invariants))

    far = [(a, b) for i, a in enumerate(block) for b in block[i + 2:]]
    far_flats = [dist(a, b) for a, b in far]
    rng = np.random.default_rng(config.null_random_seed)
    random_flats = [dist(la, lb, _random_target(model, lb, rng)) for la, lb in pairs]
    return {
        "non_adjacent": {"pairs": [list(p) for p in far], "n_pairs": len(far),
                         "family_stats": _summary(far_flats) if far_flats else None,
                         "absent": None if far else "a block of two layers has no non-adjacent pair (needs three)"},
        "random_same_spectrum": {"family_stats": _summary(random_flats), "n_pairs": len(pairs),
                                 "seed": config.null_random_seed},
    }


def run_layers(model, config: LayersConfig = LayersConfig(), progress: bool = False) -> StudyResult:
    """Run the layer-variation study on a HookedTransformer's weights (no prompts).

    Returns:
        A :class:`StudyResult` with ``pairs`` (per consecutive pair: every family under every
        alignment, per-head values, the head matching, and the W_QK / W_OV invariants),
        ``family_stats`` (mean / min / max / std over pairs), ``ranking`` (exact symmetries,
        invariants and norms by mean distance), ``nulls`` (non-adjacent pairs; random
        same-spectrum targets), ``attention_structure`` and ``alignments`` (what each aligns
        over; which are exact on this model).

    Raises:
        BadInputError: a block that is out of range, shorter than two layers or not consecutive.

    Pitfall: with ``fold_ln`` the norm weights are folded into the next layer's weights; they are
    then absent (``norm_weights`` says so) and the attention / MLP weights include them.
    """
    from tqdm.auto import tqdm

    folded = model.cfg.normalization_type in ("LNPre", "RMSPre")
    block = check_block(model, config.layers)
    pairs = list(zip(block[:-1], block[1:]))
    n_far = sum(len(block[i + 2:]) for i in range(len(block)))
    bar = tqdm(total=2 * len(pairs) + n_far, desc="layers: comparing layer pairs and their nulls", unit="pair",
               disable=not progress, leave=False)
    entries = []
    for la, lb in pairs:
        entries.append(pair_distances(model, la, lb, rotation_approx=config.rotation_approx,
                                      invariants=config.invariants))
        bar.update()
    stats = _summary([_flat(e) for e in entries])
    structure = attention_structure(model, block)
    data = {
        "block": block,
        "pairs": entries,
        "family_stats": stats,
        "ranking": sorted((k for k in stats if k.endswith(RANKED)), key=lambda k: stats[k]["mean"]),
        "nulls": _nulls(model, block, pairs, config, bar),
        "norm_weights": ("folded into the following weights (fold_ln): not compared; load with processing none"
                         if folded else "compared directly (unprocessed)"),
        "attention_structure": structure,
        "alignments": _alignments(model),
    }
    bar.close()
    return StudyResult("layers", data, study_provenance(model, "layers", config, layers=block, attention=structure))


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
    fig.colorbar(image, ax=left, fraction=0.03, label="distance (0 = same up to the alignment)")
    y = np.arange(len(true))
    right.barh(y, [data["family_stats"][c]["mean"] for c in true], height=0.35, label="adjacent pairs")
    far = data["nulls"]["non_adjacent"]["family_stats"]
    if far:
        right.plot([far[c]["mean"] for c in true], y, "k|", ms=10, label="non-adjacent pairs")
    rnd = data["nulls"]["random_same_spectrum"]["family_stats"]
    right.plot([rnd[c]["mean"] for c in true], y, "rx", label="random, same spectrum")
    right.set_yticks(y, true, fontsize=7)
    right.set(xlabel="mean distance", title="mean distance against the nulls")
    right.legend(fontsize=7)
    model = result.provenance["model"]
    fig.suptitle(f"{model['name']} ({model['processing']}), block {data['block']}", fontsize=9)
    return fig


def headline(result: StudyResult) -> str:
    """Whether adjacent layers are closer than the nulls, family by family, and by how much at most."""
    data = result.data
    family = data["family_stats"]
    nulls = [n["family_stats"] for n in data["nulls"].values() if n.get("family_stats")]
    block = f"{data['block'][0]}-{data['block'][-1]}"
    gaps = {k: 1 - family[k]["mean"] / min(null[k]["mean"] for null in nulls) for k in data["ranking"]
            if all(null[k]["mean"] > 0 for null in nulls)}
    closer = [k for k, gap in gaps.items() if gap > 0]
    if not closer:
        return f"layers {block}: adjacent layers are no closer than the nulls in any of {len(gaps)} weight families"
    top = max(closer, key=gaps.get)
    return (f"layers {block}: adjacent layers are closer than both nulls in {len(closer)} of {len(gaps)} weight "
            f"families, by at most {100 * gaps[top]:.1f}% ({top}: {family[top]['mean']:.3f} against "
            f"{min(null[top]['mean'] for null in nulls):.3f})")


def table(result: StudyResult) -> tuple[list[str], list[list[Any]]]:
    """Mean distance per ranked weight family: adjacent pairs, then each null (None where absent)."""
    data = result.data
    nulls = list(data["nulls"])
    rows = []
    for key in data["ranking"]:
        row = [key, data["family_stats"][key]["mean"]]
        for name in nulls:
            stats = data["nulls"][name].get("family_stats") or {}
            row.append(stats[key]["mean"] if key in stats else None)
        rows.append(row)
    return ["family", "adjacent", *nulls], rows


STUDY = Study(
    name="layers", summary="gauge-aligned weight distances between consecutive layers, with nulls",
    config=LayersConfig, run=run_layers, plot=plot, headline=headline, docs="docs/studies/layers.md", table=table,
    check=lambda model, config: check_block(model, config.layers), count=lambda config: 0,
)
