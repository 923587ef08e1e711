"""Which heads carry the cross-lingual alignment: an additive per-writer split, ablations, one head at a time.

**Additive split.** At layer L the last-token residual ``x = blocks.L.hook_resid_post`` is a sum of
writers: ``hook_embed``, ``hook_pos_embed`` (absolute positions), every head of every layer up
to L (``hook_z[h] @ W_O[h]``), every ``b_O`` and every ``hook_mlp_out`` (checked: the parts add
back to the residual). The alignment gap the studies use, on unit-scaled residuals
``u_i = x_i / |x_i|`` (language a) and ``v_j`` (language b), is

    T = mean_i u_i·v_i − mean_ij u_i·v_j    (matched minus the exact permutation-null mean),

bilinear in (u, v). Splitting u and v over their writers (each part scaled by the whole
residual's norm) and sharing each cross term half-half between its two writers gives
``share(c) = ½ [T(u^c, v) + T(u, v^c)]``, which sums to T exactly (tested). The seeds' Δz per
sublayer does not add up; these shares do.

**Uncertainty.** Each share's permutation band: the same share under random pairings
(``n_perms``, seed 42), its 2.5–97.5% interval and the share's z against it.

**Causal check.** Ablating a head (``zero`` or ``mean``: its ``hook_z`` replaced by zeros or by
its mean over all real positions of the prompts) and reporting the change of the alignment z
at every layer from the head's on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from interp_tl import stats
from interp_tl.activations import _left_pad, extract, length_sorted_batches
from interp_tl.errors import BadInputError, LayerRangeError
from interp_tl.studies.common import ParallelPrompts, StudyResult, parallel_prompts, run_provenance

Ablation = Literal["zero", "mean"]


@dataclass(frozen=True)
class HeadsConfig:
    """Settings of the per-head study.

    Attributes:
        n_pairs: problems per language.
        langs: the two languages.
        seed: problem-set seed.
        layer: residual layer whose alignment is split (None: the last layer).
        n_perms: random pairings for each share's permutation band.
        top: heads checked by ablation (largest shares).
        ablation: ``zero`` or ``mean``.
        batch_size: prompts per forward pass.
        prepend_bos: put BOS before each prompt (None: the model's default).
    """

    n_pairs: int = 200
    langs: tuple[str, str] = ("zh", "en")
    seed: int = 42
    layer: int | None = None
    n_perms: int = 200
    top: int = 3
    ablation: Ablation = "mean"
    batch_size: int = 32
    prepend_bos: bool | None = None


def _layer(model, layer: int | None) -> int:
    n = model.cfg.n_layers
    layer = n - 1 if layer is None else int(layer)
    if not 0 <= layer < n:
        raise LayerRangeError(f"layer {layer} is out of range: the model has layers 0..{n - 1}")
    return layer


def writer_parts(model, tokens, layer: int, batch_size: int = 32) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Last-token writers of ``blocks.{layer}.hook_resid_post``: names, ``[n_writers, n, d_model]``, residual."""
    layers = range(layer + 1)
    hooks = ["hook_embed", f"blocks.{layer}.hook_resid_post"]
    has_pos = model.cfg.positional_embedding_type == "standard"
    if has_pos:
        hooks.append("hook_pos_embed")
    hooks += [f"blocks.{i}.attn.hook_z" for i in layers] + [f"blocks.{i}.hook_mlp_out" for i in layers]
    acts = extract(model, tokens, hooks, batch_size)
    names, parts = ["embed"], [acts["hook_embed"]]
    if has_pos:
        names.append("pos_embed")
        parts.append(acts["hook_pos_embed"])
    for i in layers:
        w_o = model.blocks[i].attn.W_O.detach().float().cpu().numpy()  # [n_heads, d_head, d_model]
        per_head = np.einsum("nhk,hkd->hnd", acts[f"blocks.{i}.attn.hook_z"], w_o)
        names += [f"L{i}.H{h}" for h in range(model.cfg.n_heads)]
        parts += list(per_head)
        names.append(f"L{i}.b_O")
        parts.append(np.broadcast_to(model.blocks[i].attn.b_O.detach().float().cpu().numpy(), per_head.shape[1:]))
        names.append(f"L{i}.mlp")
        parts.append(acts[f"blocks.{i}.hook_mlp_out"])
    return names, np.stack(parts).astype(np.float64), acts[f"blocks.{layer}.hook_resid_post"].astype(np.float64)


def alignment_shares(
    parts_a: np.ndarray, parts_b: np.ndarray, n_perms: int = 200, seed: int = 42
) -> dict[str, Any]:
    """Split ``T = mean_i u_i·v_i − mean_ij u_i·v_j`` over writers; permutation band per share.

    Args:
        parts_a: ``[n_writers, n, d]`` writers of language a's residuals (they sum to the residual).
        parts_b: the same for language b.
        n_perms: random pairings for the bands.
        seed: ``RandomState`` seed of the pairings.

    Returns:
        ``total`` (T), ``shares`` ``[n_writers]`` (sum to T), ``band`` ``[n_writers, 2]`` and
        ``z`` ``[n_writers]`` against the shares under random pairings.
    """
    xa, xb = parts_a.sum(0), parts_b.sum(0)
    na, nb = np.linalg.norm(xa, axis=1), np.linalg.norm(xb, axis=1)
    if (na == 0).any() or (nb == 0).any():
        raise BadInputError("a residual has zero norm: cannot normalize")
    u, v = xa / na[:, None], xb / nb[:, None]
    uc, vc = parts_a / na[None, :, None], parts_b / nb[None, :, None]
    g1 = np.einsum("cnd,md->cnm", uc, v)   # u^c_i · v_j
    g2 = np.einsum("nd,cmd->cnm", u, vc)   # u_i · v^c_j
    g = 0.5 * (g1 + g2)
    n = g.shape[1]
    null_mean = g.mean((1, 2))
    shares = np.einsum("cii->c", g) / n - null_mean
    perms = stats.seed_permutations(n, n_perms, seed)
    scrambled = g[:, np.arange(n)[None, :], perms].mean(-1) - null_mean[:, None]  # [c, n_perms]
    sd = scrambled.std(1, ddof=1)
    return {"total": float(np.trace(u @ v.T) / n - (u @ v.T).mean()), "shares": shares,
            "band": np.percentile(scrambled, [2.5, 97.5], axis=1).T,
            "z": np.where(sd > 0, (shares - scrambled.mean(1)) / np.where(sd > 0, sd, 1), np.nan)}


def split_alignment(model, prompts: ParallelPrompts, layer: int, n_perms: int = 200, perm_seed: int = 42,
                    batch_size: int = 32) -> tuple[list[str], dict[str, Any], float]:
    """Writers of the first two languages' residuals at ``layer`` and their split of the gap.

    Returns the writer names, :func:`alignment_shares`, and the largest
    ``|sum of writers - resid_post|`` (the additivity check).
    """
    a, b = prompts.langs[:2]
    names, parts_a, resid_a = writer_parts(model, prompts.tokens[a], layer, batch_size)
    _, parts_b, resid_b = writer_parts(model, prompts.tokens[b], layer, batch_size)
    sum_error = float(max(np.abs(parts_a.sum(0) - resid_a).max(), np.abs(parts_b.sum(0) - resid_b).max()))
    return names, alignment_shares(parts_a, parts_b, n_perms, perm_seed), sum_error


def head_of(name: str) -> tuple[int, int] | None:
    """``(layer, head)`` of a writer named ``L{layer}.H{head}``, None for other writers."""
    if not name.startswith("L") or ".H" not in name:
        return None
    layer, head = name[1:].split(".H")
    return int(layer), int(head)


def share_grid(names: list[str], shares: np.ndarray, layer: int, n_heads: int) -> np.ndarray:
    """The head writers' shares as ``[layer + 1, n_heads]`` (NaN where a head has no share)."""
    grid = np.full((layer + 1, n_heads), np.nan)
    for name, share in zip(names, shares):
        at = head_of(name)
        if at is not None:
            grid[at] = share
    return grid


def _ablation_hook(kind: Ablation, head: int, mean: np.ndarray | None):
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = 0 if kind == "zero" else torch.as_tensor(mean, dtype=z.dtype, device=z.device)
        return z

    return hook


def head_mean_z(model, prompts: ParallelPrompts, layer: int, head: int, batch_size: int) -> np.ndarray:
    """Mean ``hook_z`` of one head over every real position of the prompts in all their languages."""
    name = f"blocks.{layer}.attn.hook_z"
    rows = []
    for lang in prompts.langs:
        per = extract(model, prompts.tokens[lang], [name], batch_size, reduce="all")[name]
        rows += [x[:, head] for x in per]
    return np.concatenate(rows).mean(0)


def ablation_effect(model, prompts: ParallelPrompts, layer: int, head: int, kind: Ablation = "mean",
                    batch_size: int = 32, n_perms: int = 200) -> dict[str, Any]:
    """Alignment z (resid_post, last token) at layers ``layer..`` with and without the head ablated."""
    if kind not in ("zero", "mean"):
        raise BadInputError(f"unknown ablation {kind!r}: zero or mean")
    if not 0 <= head < model.cfg.n_heads:
        raise BadInputError(f"head {head} is out of range: the model has heads 0..{model.cfg.n_heads - 1}")
    mean = head_mean_z(model, prompts, layer, head, batch_size) if kind == "mean" else None
    names = [f"blocks.{i}.hook_resid_post" for i in range(layer, model.cfg.n_layers)]
    hooks = [(f"blocks.{layer}.attn.hook_z", _ablation_hook(kind, head, mean))]
    a, b = prompts.langs[:2]
    out = {}
    for label, extra in (("intact", ()), ("ablated", hooks)):
        acts = {lang: extract(model, prompts.tokens[lang], names, batch_size, fwd_hooks=extra) for lang in (a, b)}
        out[label] = [float(stats.matched_vs_scrambled_z(acts[a][n], acts[b][n], n_perms=n_perms).z) for n in names]
    return {"layers": list(range(layer, model.cfg.n_layers)), "ablation": kind, **out,
            "delta_z": [x - y for x, y in zip(out["ablated"], out["intact"])]}


def run_heads(model, config: HeadsConfig = HeadsConfig(), progress: bool = False,
              keep_activations: bool = False) -> StudyResult:
    """Per-writer shares of the alignment at one layer, with bands, and ablations of the top heads."""
    layer = _layer(model, config.layer)
    prompts = parallel_prompts(model, config.n_pairs, config.seed, config.langs, config.prepend_bos)
    a, b = prompts.langs
    names, split, sum_error = split_alignment(model, prompts, layer, config.n_perms, batch_size=config.batch_size)
    grid = share_grid(names, split["shares"], layer, model.cfg.n_heads)
    heads = [i for i, n in enumerate(names) if head_of(n) is not None]
    top = sorted(heads, key=lambda i: -split["shares"][i])[: config.top]
    ablations = {}
    for i in top:
        ablations[names[i]] = ablation_effect(model, prompts, *head_of(names[i]), config.ablation, config.batch_size,
                                              config.n_perms)
    data = {
        "layer": layer, "languages": [a, b], "total": split["total"],
        "writers": [{"name": n, "share": float(s), "band": [float(x) for x in band], "z": float(z)}
                    for n, s, band, z in zip(names, split["shares"], split["band"], split["z"])],
        "head_shares": grid.tolist(),
        "shares_sum_error": float(abs(split["shares"].sum() - split["total"])),
        "writers_sum_max_abs_error": sum_error,
        "ablations": ablations,
    }
    provenance = run_provenance(model, prompts, config=asdict(config),
                                layer=layer)
    return StudyResult("heads", data, provenance, {})


def _split_name(name: str) -> tuple[int, int]:
    try:
        layer, head = name.upper().lstrip("L").split(".H" if ".H" in name.upper() else ".")
        return int(layer), int(head)
    except ValueError:
        raise BadInputError(f"a head is written L.H, e.g. 2.3, got {name!r}") from None


def head_report(model, head: str, config: HeadsConfig = HeadsConfig()) -> dict[str, Any]:
    """Everything about one head (``"L.H"``): share, ablation, attention statistics, Jacobian, neighbours.

    Attention statistics on the parallel prompts (both languages, last token's query row):
    entropy, mass on the first position, and where the last token looks by token class (BOS,
    digits, letters, other). The Jacobian numbers come from :mod:`interp_tl.studies.jacobian`
    (20 problems in the two languages), the neighbours from the per-head W_QK / W_OV distances to
    heads of the adjacent layers (:func:`interp_tl.studies.layers.head_invariants`).
    """
    from interp_tl.studies.jacobian import JacobianConfig, head_jacobian, run_jacobian
    from interp_tl.studies.layers import head_invariants

    layer, h = _split_name(head)
    if not 0 <= layer < model.cfg.n_layers:
        raise LayerRangeError(f"layer {layer} is out of range: the model has layers 0..{model.cfg.n_layers - 1}")
    if not 0 <= h < model.cfg.n_heads:
        raise BadInputError(f"head {h} is out of range: the model has heads 0..{model.cfg.n_heads - 1}")
    top_layer = _layer(model, config.layer)
    prompts = parallel_prompts(model, config.n_pairs, config.seed, config.langs, config.prepend_bos)
    a, b = prompts.langs
    names, split, _ = split_alignment(model, prompts, top_layer, config.n_perms, batch_size=config.batch_size)
    name = f"L{layer}.H{h}"
    share = None
    if name in names:
        i = names.index(name)
        share = {"layer_of_residual": top_layer, "share": float(split["shares"][i]), "total": split["total"],
                 "band": [float(x) for x in split["band"][i]], "z": float(split["z"][i])}
    report = {"head": name, "share": share,
              "ablation": ablation_effect(model, prompts, layer, h, config.ablation, config.batch_size,
                                          config.n_perms),
              "attention": attention_stats(model, prompts, layer, h, config.batch_size)}
    jac = run_jacobian(model, JacobianConfig(n_problems=20, seed=config.seed, jacobian_langs=(a, b),
                                             weight_gradients=False, prepend_bos=config.prepend_bos))
    report["jacobian"] = head_jacobian(jac, layer, h)
    report["neighbours"] = {}
    for other in (layer - 1, layer + 1):
        if 0 <= other < model.cfg.n_layers:
            inv = head_invariants(model, layer, other)
            report["neighbours"][f"L{other}"] = {
                k: {"closest_head": int(np.argmin(inv[k]["distance"][h])),
                    "distance": float(min(inv[k]["distance"][h]))}
                for k in ("W_QK", "W_OV")}
    return report


def _token_class(model, token_id: int, bos: int | None) -> str:
    if bos is not None and token_id == bos:
        return "bos"
    text = model.tokenizer.decode([token_id])
    if any(c.isdigit() for c in text):
        return "digits"
    if any(c.isalpha() for c in text):
        return "letters"
    return "other"


def attention_stats(model, prompts: ParallelPrompts, layer: int, head: int, batch_size: int = 32) -> dict[str, Any]:
    """The head's last-token attention on the prompts: entropy, first-position mass, mass per token class."""
    name = f"blocks.{layer}.attn.hook_pattern"
    out = {}
    for lang in prompts.langs:
        tokens = prompts.tokens[lang]
        rows = []

        def keep_last(pattern, hook, rows=rows):
            rows.append(pattern[:, head, -1].detach().double().cpu().numpy())

        order = []
        with torch.inference_mode():
            for batch in length_sorted_batches(tokens.lengths, batch_size):
                toks, mask = _left_pad([tokens.ids[i] for i in batch], tokens.bos_id or 0, model.cfg.device)
                model.run_with_hooks(toks, attention_mask=mask, return_type=None, stop_at_layer=layer + 1,
                                     fwd_hooks=[(name, keep_last)])
                order += list(batch)
        classes: dict[str, list[float]] = {"bos": [], "digits": [], "letters": [], "other": []}
        entropy, first = [], []
        flat = [row for block in rows for row in block]
        for i, row in zip(order, flat):
            ids = tokens.ids[i]
            att = row[-len(ids):]
            entropy.append(float(-(att * np.log(np.clip(att, 1e-30, None))).sum()))
            first.append(float(att[0]))
            mass: dict[str, float] = {k: 0.0 for k in classes}
            for t, p in zip(ids, att):
                mass[_token_class(model, t, tokens.bos_id)] += float(p)
            for k in classes:
                classes[k].append(mass[k])
        out[lang] = {"entropy": float(np.mean(entropy)), "first_position_mass": float(np.mean(first)),
                     "mass_by_token_class": {k: float(np.mean(v)) for k, v in classes.items()}}
    return out
