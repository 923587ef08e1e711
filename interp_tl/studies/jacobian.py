"""Attention-Jacobian study: how much of each head's softmax backward is diagonal, lateral or straight-through.

Port of the research script ``softmax_jacobian_lateral.py`` onto hook points (it monkey-patched
the attention forward): the problem set (``[BOS] prompt`` + ``" " answer sentence`` + EOS, in every
language, prompt and completion tokenized separately as the embedded model was trained) or a text
file, run forward and backward in batches; :func:`interp_tl.analyses.jacobian.jacobian_statistics`
computes the statistics from each layer's ``hook_pattern`` and its gradient.

The loss differentiated (``loss_tokens``): ``"answer"`` counts only the completion's tokens (the
answer sentence, its opening space and EOS: :data:`interp_tl.generation.ANSWER_LOSS`), ``"all"``
every next token of the sequence (prompt included). The default ``"auto"`` is ``"answer"`` on
``interp-tl/polyglot-toy``, whose training loss counts only those tokens (its prompt tokens were
never a training target), and ``"all"`` on any other model or a text file; the choice is recorded
in the provenance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from interp_tl.errors import BadInputError
from interp_tl.figures import figure, layer_head_heatmap, model_title
from interp_tl.prompts import generate_problems, problem_set_id
from interp_tl.results import StudyResult
from interp_tl.studies.base import Study, all_languages, check_int, check_langs, study_provenance

if TYPE_CHECKING:
    from interp_tl.tokens import Tokenized

#: What each ``loss_tokens`` choice differentiates, in words (recorded in the provenance).
LOSSES = {
    "all": "per sequence mean next-token cross-entropy over every real token, summed over sequences",
    "answer": ("per sequence mean next-token cross-entropy over the completion's tokens only (' ' + answer "
               "sentence and EOS, the answer_loss tokens), summed over sequences"),
}


@dataclass(frozen=True, kw_only=True)
class JacobianConfig:
    """Settings of the attention-Jacobian study.

    Attributes:
        n_problems: problems of the parallel set (each in every language of langs).
        seed: problem-set seed.
        langs: languages of the problem set (default all seven).
        text_file: a UTF-8 file; each non-empty line is a sequence (instead of the problem set).
        batch_size: sequences per forward and backward pass.
        prepend_bos: put BOS before each sequence (None: the model's default).
        weight_gradients: also compare the W_Q/W_K gradient under the surrogates with the true one.
        loss_tokens: tokens the differentiated loss counts: answer (the completion after the prompt), all
            (every next token), or auto (answer on interp-tl/polyglot-toy, trained on those; all otherwise).
    """

    n_problems: int = 20
    seed: int = 42
    langs: tuple[str, ...] = all_languages()
    text_file: str | None = None
    batch_size: int = 16
    prepend_bos: bool | None = None
    weight_gradients: bool = True
    loss_tokens: str = "auto"

    def __post_init__(self) -> None:
        if self.loss_tokens not in ("auto", *LOSSES):
            raise BadInputError(f"loss_tokens must be auto, answer or all, got {self.loss_tokens!r}")
        if self.loss_tokens == "answer" and self.text_file is not None:
            raise BadInputError("loss_tokens=answer needs the problem set: a text file has no answers")
        object.__setattr__(self, "langs", tuple(self.langs))
        if check_int(self.n_problems, "n_problems", 5) % 5:
            raise BadInputError(f"n_problems must be a positive multiple of 5, got {self.n_problems}")
        check_int(self.seed, "seed", 0)
        check_int(self.batch_size, "batch_size", 1)
        check_langs(self.langs, None)


def loss_tokens(model, config: JacobianConfig) -> str:
    """The loss's tokens for ``model``: ``config.loss_tokens``, with ``auto`` resolved."""
    from interp_tl.models import POLYGLOT_MODEL

    if config.loss_tokens != "auto":
        return config.loss_tokens
    trained_on_answers = getattr(model.cfg, "model_name", None) == POLYGLOT_MODEL
    return "answer" if trained_on_answers and config.text_file is None else "all"


def sequences(model, config: JacobianConfig) -> tuple[Tokenized, list[int] | None, dict[str, Any]]:
    """The sequences (BOS handled explicitly), each one's completion length (None for a text file), their source."""
    from interp_tl.generation import answer_text
    from interp_tl.tokens import Tokenized, tokenize

    if config.text_file is not None:
        try:
            lines = [x for x in Path(config.text_file).read_text("utf-8").splitlines() if x.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInputError(f"cannot read text file {config.text_file}: {exc.__class__.__name__}") from None
        if not lines:
            raise BadInputError(f"text file {config.text_file} has no non-empty line")
        tokens = tokenize(model, lines, config.prepend_bos)
        return tokens, None, {"text_file": str(config.text_file), "n_sequences": len(lines),
                              "prepend_bos": tokens.prepend_bos}
    problems = generate_problems(config.n_problems, config.seed, config.langs)
    pairs = [(p.prompts[lang], answer_text(p.answer, lang)) for p in problems for lang in config.langs]
    prompts = tokenize(model, [prompt for prompt, _ in pairs], config.prepend_bos)
    tok = model.tokenizer
    completions = [tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for _, answer in pairs]
    tokens = Tokenized([p + c for p, c in zip(prompts.ids, completions)], prompts.prepend_bos, prompts.bos_id, None)
    source = {**problem_set_id(config.n_problems, config.seed), "languages": list(config.langs),
              "format": "[BOS] prompt + ' ' + answer sentence + EOS (prompt and completion tokenized separately)",
              "prepend_bos": tokens.prepend_bos}
    return tokens, [len(c) for c in completions], source


def run_jacobian(model, config: JacobianConfig = JacobianConfig(), progress: bool = False) -> StudyResult:
    """Run the attention-Jacobian study on a HookedTransformer (gradients only; weights unchanged).

    Returns:
        A :class:`StudyResult` with ``layers`` ``[n_layers][n_heads]`` tables (``r_diag``,
        ``cos_diag``, ``cos_ste``, ``mean_max_attention``, ``row_entropy``), ``strata`` (entropy,
        sink mass, query position: pooled cosines per layer and bin) and ``weight_gradient_cos``
        (per layer, cosine of the W_Q/W_K gradient under ``diag`` / ``ste`` to the true one).

    Raises:
        BadInputError: empty text, a sequence longer than the context or shorter than two
            tokens, a model without ``hook_pattern`` or with attention sinks.
    """
    from interp_tl.analyses.jacobian import TABLES, check_softmax_attention, jacobian_statistics
    from interp_tl.generation import ANSWER_LOSS, next_token_loss
    from interp_tl.training_stream import model_trained_pairs

    check_softmax_attention(model)
    counted = loss_tokens(model, config)
    tokens, lengths, source = sequences(model, config)
    tables = jacobian_statistics(model, tokens, batch_size=config.batch_size,
                                 weight_gradients=config.weight_gradients, progress=progress,
                                 answer_lengths=lengths if counted == "answer" else None)
    data: dict[str, Any] = {"layers": {k: tables[k] for k in TABLES}, "strata": tables["strata"],
                            "n_sequences": len(tokens), "loss_tokens": counted}
    if config.text_file is None:
        problems = generate_problems(config.n_problems, config.seed, config.langs)
        losses = next_token_loss(model, problems, config.langs, config.batch_size, config.prepend_bos)
        data["answer_loss"] = {lang: v["answer_loss"] for lang, v in losses.items()}
        data["answer_loss_definition"] = ANSWER_LOSS
        data["trained_pairs"] = model_trained_pairs(model, problems, config.langs)
    if config.weight_gradients:
        data["weight_gradient_cos"] = tables["weight_gradient_cos"]
    data["summary"] = {k: float(np.nanmean(np.array(tables[k], dtype=float))) for k in ("r_diag", "cos_diag",
                                                                                       "cos_ste")}
    prov = study_provenance(model, "jacobian", config, sequences=source, loss=LOSSES[counted], loss_tokens=counted)
    return StudyResult("jacobian", data, prov)


def head_jacobian(result: StudyResult, layer: int, head: int) -> dict[str, Any]:
    """One head's numbers from a jacobian result: the research script's statistics for ``layer.head``."""
    tables = result.data["layers"]
    return {k: tables[k][layer][head] for k in tables}


def plot(result: StudyResult):
    """Layer x head heatmaps of cos_diag, cos_ste and r_diag, and the W_Q/W_K gradient cosines."""
    data = result.data
    tables = data["layers"]
    fig = figure((16, 4))
    axes = fig.subplots(1, 4)
    labels = {"cos_diag": "cosine to the full backward", "cos_ste": "cosine to the full backward",
              "r_diag": "‖diagonal‖² / ‖full‖²"}
    for ax, key, limits in zip(axes[:3], ("cos_diag", "cos_ste", "r_diag"), ((-1, 1), (-1, 1), (0, None))):
        layer_head_heatmap(fig, ax, np.array(tables[key], dtype=float), key, limits=limits, label=labels[key])
    ax = axes[3]
    for kind, values in data.get("weight_gradient_cos", {}).items():
        ax.plot(range(len(values)), [np.nan if v is None else v for v in values], marker="o", label=kind)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="layer", ylabel="cosine to the true gradient", title="W_Q/W_K gradient", ylim=(-1, 1.05))
    ax.legend(fontsize=7)
    fig.suptitle(f"{model_title(result)}, {data['n_sequences']} sequences", fontsize=9)
    return fig


def headline(result: StudyResult) -> str:
    """How close the diagonal and straight-through surrogates come to the full softmax backward, on average."""
    s = result.data["summary"]
    return (f"averaged over heads, the diagonal-only softmax backward has cosine {s['cos_diag']:.2f} to the full "
            f"one and {s['r_diag']:.2f} of its squared norm; straight-through has cosine {s['cos_ste']:.2f}")


def table(result: StudyResult) -> tuple[list[str], list[list[Any]]]:
    """Per layer, the mean over heads of ``r_diag``, ``cos_diag`` and ``cos_ste``."""
    layers = result.data["layers"]
    keys = ["r_diag", "cos_diag", "cos_ste"]

    def mean(values) -> float | None:
        real = [v for v in values if v is not None]
        return float(np.mean(real)) if real else None

    return ["layer", *keys], [[i, *(mean(layers[k][i]) for k in keys)] for i in range(len(layers["r_diag"]))]


STUDY = Study(
    name="jacobian", summary="softmax backward per head: diagonal vs lateral vs straight-through",
    config=JacobianConfig, run=run_jacobian, plot=plot, headline=headline, docs="docs/studies/jacobian.md", table=table,
    count=lambda config: 0 if config.text_file else config.n_problems * len(config.langs),
)
