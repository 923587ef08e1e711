"""Embedding study: how much two languages' alignment is already in the embeddings, and what layer 0 adds.

Port of the research script ``embedding_alignment.py`` onto hook points: caches of the embeddings
(and layer 0's input and output) at the last real token and averaged over real tokens, analysed
by :func:`interp_tl.analyses.embedding.embedding_alignment`, plus the research script's token
diagnostics: cosines of the same token in both languages, BOS, mean letter-token and digit-token
embeddings, and the last tokens themselves.

Fixed defects of the research script: the mean "without BOS" drops position 0 only when a BOS
was prepended (the script dropped the first real token of Qwen prompts, which have none); the BOS
cosine is reported only when there is a BOS; position embeddings are not ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from interp_tl.figures import figure, title
from interp_tl.prompts import is_language_text
from interp_tl.results import StudyResult
from interp_tl.studies.base import NullSettings, PromptSettings, Study, check_int, study_provenance

if TYPE_CHECKING:
    from interp_tl.tokens import ParallelPrompts, Tokenized


@dataclass(frozen=True, kw_only=True)
class EmbeddingConfig(PromptSettings, NullSettings):
    """Settings of the embedding study.

    Attributes:
        n_perms: permutations of the Monte Carlo null (1000 as the research script).
        n_token_problems: problems used for the per-token diagnostics (50 as the research script).
        pca_components: PCs fitted on the unit last-token embeddings (10 as the research script).
        pca_k: PC counts for the PCA-k alignment z (2, 5, 10 as the research script).
    """

    n_perms: int = 1000
    n_token_problems: int = 50
    pca_components: int = 10
    pca_k: tuple[int, ...] = (2, 5, 10)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pca_k", tuple(self.pca_k))
        check_int(self.n_token_problems, "n_token_problems", 1)
        check_int(self.pca_components, "pca_components", 1)
        for k in self.pca_k:
            check_int(k, "pca_k", 1)
        super().__post_init__()


def prepare(model, config: EmbeddingConfig) -> ParallelPrompts:
    """The problem set in the config's two languages, tokenized for ``model``."""
    from interp_tl.tokens import parallel_prompts

    return parallel_prompts(model, config.n_pairs, config.seed, config.langs, config.prepend_bos)


def embed_hooks(model) -> list[str]:
    """``hook_embed``, and ``hook_pos_embed`` for models with an additive position embedding."""
    has_pos = "hook_pos_embed" in model.hook_dict and model.cfg.positional_embedding_type == "standard"
    return ["hook_embed"] + (["hook_pos_embed"] if has_pos else [])


def hooks(model, config: EmbeddingConfig) -> list[str]:
    """Every hook the study reads."""
    return embed_hooks(model) + ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"]


def extract_caches(model, config: EmbeddingConfig, prompts: ParallelPrompts, progress: bool = False) -> dict:
    """The study's caches: ``last``, ``mean`` and ``tokens``.

    ``last``: every hook at the last real token; ``mean``: the embeddings averaged over real tokens
    without BOS; ``tokens``: the embeddings at every position of the first ``n_token_problems`` problems.
    """
    from interp_tl.cache import extract

    a, b = prompts.langs
    n = prompts.n
    both = prompts.stacked()
    embeds = embed_hooks(model)
    m = min(config.n_token_problems, n)
    return {
        "last": extract(model, both, hooks(model, config), config.batch_size, "last", progress,
                        "embedding: extracting last-token activations"),
        "mean": extract(model, both, embeds, config.batch_size, "mean"),
        "tokens": extract(model, both.select(list(range(m)) + list(range(n, n + m))), embeds, config.batch_size,
                          "all"),
    }


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def _token_class_vectors(tokens: Tokenized, texts: list[str], embeds: list[np.ndarray], lang: str):
    letters, digits = [], []
    for ids_off, text, vectors in zip(tokens.offsets, texts, embeds):
        for j, (start, end) in enumerate(ids_off):
            span = text[start:end].strip()
            if not span or (tokens.prepend_bos and j == 0):
                continue
            if span.isdigit():
                digits.append(vectors[j])
            elif is_language_text(span, lang):
                letters.append(vectors[j])
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


def _per_prompt(cache, tokens: Tokenized, hooks: list[str]) -> list[np.ndarray]:
    """Each prompt's ``[len, d]`` vectors of the hooks summed (float32, as the model adds them)."""
    total = sum(cache[h] for h in hooks)
    return [total[i, total.shape[1] - length:].numpy() for i, length in enumerate(tokens.lengths)]


def _token_blocks(prompts: ParallelPrompts, cache, has_pos: bool) -> dict[str, Any]:
    a, b = prompts.langs
    n = prompts.n
    m = cache["hook_embed"].shape[0] // 2
    tokens = prompts.stacked().select(list(range(m)) + list(range(n, n + m)))
    out = {}
    for name, hook_list in (("embed", ["hook_embed"]), ("embed_pos", ["hook_embed", "hook_pos_embed"])):
        if name == "embed_pos" and not has_pos:
            continue
        rows = _per_prompt(cache, tokens, hook_list)
        out[name] = token_diagnostics(prompts, {a: rows[:m], b: rows[m:]})
    return out


def _last_tokens(prompts: ParallelPrompts, count: int = 10) -> list[list[str]]:
    rows = []
    for i in range(min(count, prompts.n)):
        row = []
        for lang in prompts.langs:
            start, end = prompts.tokens[lang].offsets[i][-1]
            row.append(prompts.problems[i].prompts[lang][start:end])
        rows.append(row)
    return rows


def analyse(model, config: EmbeddingConfig, prompts: ParallelPrompts, caches: dict, progress: bool = False
            ) -> StudyResult:
    """The study's statistics from its caches (:func:`extract_caches`)."""
    from interp_tl import stats
    from interp_tl.analyses import embedding as emb
    from interp_tl.cache import split_languages

    a, b = prompts.langs
    last, mean = split_languages(caches["last"], prompts.langs), split_languages(caches["mean"], prompts.langs)
    out = emb.embedding_alignment(last[a], last[b], mean[a], mean[b], n_perms=config.n_perms,
                                  perm_seed=config.perm_seed, n_boot=config.n_boot,
                                  pca_components=config.pca_components, pca_k=config.pca_k)
    seed_keys = [k for k in out if k not in ("has_pos_embed", "l0_output_last_token",
                                             "embed_pos_equals_resid_pre_max_abs_error", "variants", "pc0_projections")]
    data = {k: out[k] for k in seed_keys}
    data.update({
        "languages": list(prompts.langs),
        "z_statistics": dict(stats.Z_STATISTICS),
        "has_pos_embed": out["has_pos_embed"],
        "l0_output_last_token": out["l0_output_last_token"],
        "embed_pos_equals_resid_pre_max_abs_error": out["embed_pos_equals_resid_pre_max_abs_error"],
        "variants": out["variants"],
        "token_diagnostics": _token_blocks(prompts, caches["tokens"], out["has_pos_embed"]),
        "last_tokens": _last_tokens(prompts),
        "pc0_projections": out["pc0_projections"],
    })
    prov = study_provenance(model, "embedding", config, prompts.identity(), layers=[0], hooks=hooks(model, config))
    return StudyResult("embedding", data, prov)


def run_embedding(model, config: EmbeddingConfig = EmbeddingConfig(), progress: bool = False) -> StudyResult:
    """Run the embedding study on a HookedTransformer.

    Returns:
        A :class:`StudyResult` whose ``data`` has the research script's keys
        (``z_raw_embed_last_token``, ``z_raw_embed_mean_no_bos``, ``z_l0_output_last_token``,
        ``delta_l0_minus_embed``, ``embedding_pca_varexp``, ``embedding_cohen_d_pc0``; Monte
        Carlo z), their exact-null twins (``z_exact_...``, ``delta_exact_...``) and, in
        ``variants``, the full statistics of ``embed`` and (GPT-2 style models) ``embed_pos`` =
        embed + pos_embed. The research script's ``z_l0_cached`` (a re-read of another script's
        file) is not reproduced.

    Pitfall: with a byte-level or BPE tokenizer the last token is usually the final punctuation,
    shared by all prompts of a template, so the raw-embedding last-token z measures template
    (category) agreement, not meaning.
    """
    prompts = prepare(model, config)
    return analyse(model, config, prompts, extract_caches(model, config, prompts, progress), progress)


def plot(result: StudyResult):
    """Exact-null z of embedding variants vs layer 0 (left), PCA scree (middle), PC0 by language (right)."""
    data = result.data
    bars = [("embed\nlast", data["z_exact_raw_embed_last_token"]),
            ("embed\nmean", data["z_exact_raw_embed_mean_no_bos"])]
    if data.get("has_pos_embed"):
        bars += [("embed+pos\nlast", data["z_exact_embed_pos_last_token"]),
                 ("embed+pos\nmean", data["z_exact_embed_pos_mean_no_bos"])]
    bars.append(("L0 out\nlast", data["z_exact_l0_output_last_token"]))
    langs = data.get("languages", ["a", "b"])
    fig = figure((13, 4))
    ax_z, ax_pca, ax_pc0 = fig.subplots(1, 3)
    ax_z.bar(range(len(bars)), [np.nan if v is None else v for _, v in bars], color="tab:blue")
    ax_z.set_xticks(range(len(bars)), [b for b, _ in bars], fontsize=7)
    ax_z.axhline(0, color="grey", lw=0.5)
    ax_z.set(ylabel="matched-vs-scrambled z (exact null)", title="embedding vs layer 0")
    varexp = data["embedding_pca_varexp"]
    ax_pca.bar(range(len(varexp)), varexp)
    ax_pca.set_xticks(range(len(varexp)))
    ax_pca.set(xlabel="PC", ylabel="variance explained", title="PCA of unit last-token embeddings")
    pc0 = data["pc0_projections"]["embed"]
    ax_pc0.hist(pc0[0], bins=30, alpha=0.6, label=langs[0])
    ax_pc0.hist(pc0[1], bins=30, alpha=0.6, label=langs[1])
    d = data["embedding_cohen_d_pc0"]
    ax_pc0.set(xlabel="PC0", title=f"PC0 by language (Cohen's d {d:.2f})" if d is not None else "PC0")
    ax_pc0.legend()
    fig.suptitle(title(result), fontsize=9)
    return fig


def headline(result: StudyResult) -> str:
    """How aligned the raw embeddings already are, and layer 0's output, in exact-null z."""
    data = result.data

    def z(value) -> str:
        return "undefined (no spread)" if value is None else f"{value:.1f}"

    return (f"last-token embeddings align with exact-null z {z(data['z_exact_raw_embed_last_token'])}; "
            f"after layer 0 {z(data['z_exact_l0_output_last_token'])}")


def table(result: StudyResult) -> tuple[list[str], list[list[Any]]]:
    """Each read-out's exact-null z beside the research script's Monte Carlo z."""
    data = result.data
    names = ["raw_embed_last_token", "raw_embed_mean_no_bos", "l0_output_last_token", "embed_pos_last_token",
             "embed_pos_mean_no_bos"]
    return (["statistic", "z_exact", "z"],
            [[name, data[f"z_exact_{name}"], data[f"z_{name}"]] for name in names if f"z_{name}" in data])


STUDY = Study(
    name="embedding", summary="alignment already in the embeddings vs after layer 0",
    config=EmbeddingConfig, run=run_embedding, plot=plot, headline=headline, hooks=hooks, prepare=prepare,
    extract=extract_caches, analyse=analyse, docs="docs/studies/embedding.md", table=table,
)
