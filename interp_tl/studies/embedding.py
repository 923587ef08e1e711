"""Embedding study: how much zh/en alignment is already in the embeddings, and what layer 0 adds.

Port of the research script ``embedding_alignment.py`` onto hook points. It compares the
matched-vs-scrambled z of

* the token embedding ``hook_embed`` (last real token, and the mean over real tokens without
  BOS),
* for models with an additive position embedding (GPT-2), also ``hook_embed + hook_pos_embed``,
  which is what block 0 reads (``blocks.0.hook_resid_pre``; the identity is checked and
  reported), and
* the output of layer 0, ``blocks.0.hook_resid_post`` (last token),

and adds the seed's diagnostics: cosines of the same token in both languages, BOS, mean
letter-token and digit-token embeddings, the last tokens, PCA of the unit last-token embeddings
(variance explained, Cohen's d of the languages on PC0, z inside the top-k PCs).

Fixed seed defects: the mean "without BOS" drops position 0 only when a BOS was prepended (the
seed dropped the first real token of Qwen prompts, which have none); the BOS cosine is reported
only when there is a BOS; position embeddings are not ignored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
from sklearn.decomposition import PCA

from interp_tl import stats
from interp_tl.activations import Tokenized, extract
from interp_tl.prompts import is_language_text
from interp_tl.studies.common import ParallelPrompts, StudyResult, parallel_prompts, run_provenance


@dataclass(frozen=True)
class EmbeddingConfig:
    """Settings of the embedding study (the CLI's flags map onto these one to one).

    Attributes:
        n_pairs: problems per language (multiple of 5).
        langs: the two languages compared.
        seed: problem-set seed.
        n_perms: permutations of the Monte Carlo null (1000 as the seed).
        perm_seed: RandomState seed of the permutations.
        batch_size: prompts per forward pass.
        prepend_bos: put BOS before each prompt (None: the model's default).
        n_token_problems: problems used for the per-token diagnostics (50 as the seed).
        pca_components: PCs fitted on the unit last-token embeddings (10 as the seed).
        pca_k: PC counts for the PCA-k alignment z (2, 5, 10 as the seed).
        n_boot: bootstrap resamples over pairs for the CIs (0: none).
    """

    n_pairs: int = 200
    langs: tuple[str, str] = ("zh", "en")
    seed: int = 42
    n_perms: int = 1000
    perm_seed: int = 42
    batch_size: int = 32
    prepend_bos: bool | None = None
    n_token_problems: int = 50
    pca_components: int = 10
    pca_k: tuple[int, ...] = (2, 5, 10)
    n_boot: int = 200


def _z(x: np.ndarray, y: np.ndarray, config: EmbeddingConfig) -> dict[str, Any]:
    return stats.alignment_summary(x, y, config.n_perms, config.perm_seed, config.n_boot)


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def pca_block(a: np.ndarray, b: np.ndarray, config: EmbeddingConfig) -> dict[str, Any]:
    """PCA of the unit rows of ``a`` and ``b`` together: variance explained, Cohen's d on PC0, PCA-k z."""
    ua, ub = stats.unit_rows(a), stats.unit_rows(b)
    n_comp = min(config.pca_components, 2 * len(ua), ua.shape[1])
    pca = PCA(n_components=n_comp, svd_solver="full").fit(np.vstack([ua, ub]))
    pa, pb = pca.transform(ua), pca.transform(ub)
    pca_z = {}
    for k in config.pca_k:
        if k <= n_comp:
            pca_z[str(k)] = stats.matched_vs_scrambled_z(pa[:, :k], pb[:, :k], config.n_perms, config.perm_seed).z
    return {
        "varexp": [float(x) for x in pca.explained_variance_ratio_],
        "cohen_d_pc0": stats.cohens_d(pa[:, 0], pb[:, 0]),
        "pca_k_z": pca_z,
        "pc0_a": pa[:, 0], "pc0_b": pb[:, 0],
    }


def _token_class_vectors(tokens: Tokenized, texts: list[str], embeds: list[np.ndarray], lang: str):
    letters, digits = [], []
    for ids_off, text, emb in zip(tokens.offsets, texts, embeds):
        for j, (start, end) in enumerate(ids_off):
            span = text[start:end].strip()
            if not span or (tokens.prepend_bos and j == 0):
                continue
            if span.isdigit():
                digits.append(emb[j])
            elif is_language_text(span, lang):
                letters.append(emb[j])
    return letters, digits


def token_diagnostics(prompts: ParallelPrompts, embeds: Mapping[str, list[np.ndarray]]) -> dict[str, Any]:
    """Shared-token cosines, BOS cosine and letter/digit mean-embedding cosines on the first problems.

    ``embeds[lang]`` holds, per problem, the ``[len, d_model]`` vectors of every real position.
    Letter tokens are those whose text has a letter of the language's script (CJK for zh, Latin
    for en, ...); digit tokens are all digits.
    """
    a, b = prompts.langs
    m = len(embeds[a])
    ta, tb = prompts.tokens[a].select(range(m)), prompts.tokens[b].select(range(m))
    bos = ta.bos_id if ta.prepend_bos else None
    shared = []
    for i in range(m):
        ids_a, ids_b = np.array(ta.ids[i]), np.array(tb.ids[i])
        for j, k in zip(*np.nonzero(ids_a[:, None] == ids_b[None, :])):
            if ids_a[j] != bos:
                shared.append(_cos(embeds[a][i][j], embeds[b][i][k]))
    la, da = _token_class_vectors(ta, prompts.texts(a)[:m], embeds[a], a)
    lb, db = _token_class_vectors(tb, prompts.texts(b)[:m], embeds[b], b)
    return {
        "n_problems": m,
        "shared_token_count": len(shared),
        "shared_token_mean_cos": float(np.mean(shared)) if shared else None,
        "bos_cos": _cos(embeds[a][0][0], embeds[b][0][0]) if bos is not None else None,
        "letter_token_mean_cos": _cos(np.mean(la, 0), np.mean(lb, 0)) if la and lb else None,
        "letter_token_counts": [len(la), len(lb)],
        "digit_token_mean_cos": _cos(np.mean(da, 0), np.mean(db, 0)) if da and db else None,
        "digit_token_counts": [len(da), len(db)],
    }


def _last_tokens(prompts: ParallelPrompts, count: int = 10) -> list[list[str]]:
    rows = []
    for i in range(min(count, prompts.n)):
        row = []
        for lang in prompts.langs:
            start, end = prompts.tokens[lang].offsets[i][-1]
            row.append(prompts.problems[i].prompts[lang][start:end])
        rows.append(row)
    return rows


def _extract(model, prompts: ParallelPrompts, config: EmbeddingConfig, progress: bool):
    a, b = prompts.langs
    n = prompts.n
    both = prompts.tokens[a] + prompts.tokens[b]
    has_pos = "hook_pos_embed" in model.hook_dict and model.cfg.positional_embedding_type == "standard"
    embed_hooks = ["hook_embed"] + (["hook_pos_embed"] if has_pos else [])
    last = extract(model, both, embed_hooks + ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"],
                   config.batch_size, "last", progress, "embedding")
    mean = extract(model, both, embed_hooks, config.batch_size, "mean", False)
    m = min(config.n_token_problems, n)
    rows = list(range(m)) + list(range(n, n + m))
    every = extract(model, both.select(rows), embed_hooks, config.batch_size, "all", False)
    split = {}
    for key, out in (("last", last), ("mean", mean)):
        for hook, arr in out.items():
            split[(key, hook)] = (arr[:n], arr[n:])
    tokens_all = {}
    for hook, arrs in every.items():
        tokens_all[hook] = (arrs[:m], arrs[m:])
    return has_pos, split, tokens_all


def _variant(split, reduce: str, with_pos: bool) -> tuple[np.ndarray, np.ndarray]:
    a, b = split[(reduce, "hook_embed")]
    if with_pos:
        pa, pb = split[(reduce, "hook_pos_embed")]
        a, b = a + pa, b + pb
    return a.astype(np.float64), b.astype(np.float64)


def run_embedding(model, config: EmbeddingConfig = EmbeddingConfig(), progress: bool = False,
                  keep_activations: bool = False) -> StudyResult:
    """Run the embedding study on a HookedTransformer.

    Returns:
        A :class:`StudyResult` whose ``data`` has the seed's keys (``z_raw_embed_last_token``,
        ``z_raw_embed_mean_no_bos``, ``z_l0_output_last_token``, ``delta_l0_minus_embed``,
        ``embedding_pca_varexp``, ``embedding_cohen_d_pc0``) and, in ``variants``, the full
        statistics of ``embed`` and (GPT-2 style models) ``embed_pos`` = embed + pos_embed.
        The seed's ``z_l0_cached`` (a re-read of another script's file) is not reproduced.

    Pitfall: with a byte-level or BPE tokenizer the last token is usually the final punctuation,
    shared by all prompts of a template, so the raw-embedding last-token z measures template
    (category) agreement, not meaning.
    """
    prompts = parallel_prompts(model, config.n_pairs, config.seed, config.langs, config.prepend_bos)
    has_pos, split, tokens_all = _extract(model, prompts, config, progress)
    l0 = [x.astype(np.float64) for x in split[("last", "blocks.0.hook_resid_post")]]
    variants: dict[str, Any] = {}
    for name, with_pos in (("embed", False), ("embed_pos", True)):
        if with_pos and not has_pos:
            continue
        last, mean = _variant(split, "last", with_pos), _variant(split, "mean", with_pos)
        pca = pca_block(*last, config)
        variants[name] = {
            "hooks": ["hook_embed", "hook_pos_embed"] if with_pos else ["hook_embed"],
            "last_token": _z(*last, config), "mean_no_bos": _z(*mean, config),
            "norm_last_token": float(np.linalg.norm(last[0], axis=1).mean()),
            "pca": {k: v for k, v in pca.items() if not k.startswith("pc0_")},
            "_pc0": (pca["pc0_a"], pca["pc0_b"]),
        }
    l0_stats = _z(*l0, config)
    embeds = {lang: tokens_all["hook_embed"][i] for i, lang in enumerate(prompts.langs)}
    diag = {"embed": token_diagnostics(prompts, embeds)}
    if has_pos:
        pos = {lang: [e + p for e, p in zip(tokens_all["hook_embed"][i], tokens_all["hook_pos_embed"][i])]
               for i, lang in enumerate(prompts.langs)}
        diag["embed_pos"] = token_diagnostics(prompts, pos)
    data = _seed_fields(variants, l0_stats, l0)
    data.update({
        "languages": list(prompts.langs),
        "has_pos_embed": has_pos,
        "l0_output_last_token": l0_stats,
        "embed_pos_equals_resid_pre_max_abs_error": _pos_identity(split, has_pos),
        "variants": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in variants.items()},
        "token_diagnostics": diag,
        "last_tokens": _last_tokens(prompts),
        "pc0_projections": {k: [v["_pc0"][0].tolist(), v["_pc0"][1].tolist()] for k, v in variants.items()},
    })
    provenance = run_provenance(model, prompts, study="embedding", layers=[0], config=asdict(config),
                                hooks=["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre",
                                       "blocks.0.hook_resid_post"])
    arrays = _arrays(prompts, split) if keep_activations else {}
    return StudyResult("embedding", data, provenance, arrays)


def _seed_fields(variants: Mapping[str, Any], l0_stats: Mapping[str, Any], l0) -> dict[str, Any]:
    raw = variants["embed"]
    z_embed, z_l0 = raw["last_token"]["z"], l0_stats["z"]
    out = {
        "z_raw_embed_last_token": z_embed,
        "z_raw_embed_mean_no_bos": raw["mean_no_bos"]["z"],
        "z_l0_output_last_token": z_l0,
        "delta_l0_minus_embed": None if z_embed is None or z_l0 is None else z_l0 - z_embed,
        "embedding_pca_varexp": raw["pca"]["varexp"],
        "embedding_cohen_d_pc0": raw["pca"]["cohen_d_pc0"],
        "embedding_pca_k_z": raw["pca"]["pca_k_z"],
        "norm_embed_last_token": raw["norm_last_token"],
        "norm_l0_output_last_token": float(np.linalg.norm(l0[0], axis=1).mean()),
    }
    out["norm_ratio_l0_over_embed"] = out["norm_l0_output_last_token"] / out["norm_embed_last_token"]
    if "embed_pos" in variants:
        pos = variants["embed_pos"]
        out["z_embed_pos_last_token"] = pos["last_token"]["z"]
        out["z_embed_pos_mean_no_bos"] = pos["mean_no_bos"]["z"]
        z_pos = pos["last_token"]["z"]
        out["delta_l0_minus_embed_pos"] = None if z_pos is None or z_l0 is None else z_l0 - z_pos
    return out


def _pos_identity(split, has_pos: bool) -> float:
    target = split[("last", "blocks.0.hook_resid_pre")]
    got = _variant(split, "last", has_pos)
    return float(max(np.abs(g - t).max() for g, t in zip(got, target)))


def _arrays(prompts: ParallelPrompts, split) -> dict[str, np.ndarray]:
    out = {}
    names = {"hook_embed": "embed", "hook_pos_embed": "pos_embed", "blocks.0.hook_resid_pre": "l0_input",
             "blocks.0.hook_resid_post": "l0_output"}
    for (reduce, hook), pair in split.items():
        for lang, arr in zip(prompts.langs, pair):
            out[f"{lang}_{names[hook]}_{reduce}"] = arr
    return out
