"""Greedy answers and answer loss on the parallel problem set: what a model has learned.

The format is the one the embedded model was trained on: ``[BOS] prompt`` then ``" " answer
[EOS]``, the prompt and the answer tokenized separately (so the prompt's tokens are exactly the
ones every study reads). Generation is batched and left-padded with an attention mask
(:func:`interp_tl.batching.batches`), and stops at EOS or after ``max_new_tokens``. It keeps a
key-value cache (TransformerLens' ``TransformerLensKeyValueCache``): the prompt is run once and
every step after runs one token, rows leaving the batch as they reach EOS; ``use_cache=False``
re-runs the whole sequence at every step, the reference the cached path is tested against
token for token.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import einops
import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from transformer_lens import TransformerLensKeyValueCache
from transformer_lens.components import Unembed
from transformer_lens.utilities import apply_softcap
from transformer_lens.utilities.lm_utils import lm_cross_entropy_loss

from interp_tl.batching import Batch, batches
from interp_tl.cache import fused_gelu
from interp_tl.errors import BadInputError
from interp_tl.langid import LABELS, identify_language
from interp_tl.prompts import CATEGORIES, Problem, answer_sentence
from interp_tl.tokens import Tokenized, check_lengths, tokenize


def answer_text(answer: int, lang: str) -> str:
    """The completion a model should produce after a prompt in ``lang``: a space and the answer sentence.

    E.g. ``" The answer is 42."`` in en, ``" 答案是 42。"`` in zh (the sentences:
    :func:`interp_tl.prompts.load_answer_forms`); EOS follows it.
    """
    return " " + answer_sentence(answer, lang)


def extract_answer(text: str) -> int | None:
    """The answer a completion states: its first integer (``"La respuesta es 42."`` -> 42), None without one."""
    found = re.search(r"-?\d+", text)
    return int(found.group()) if found else None


#: ``prompt_hooks(batch) -> [(hook name, hook function), ...]``: forward hooks for one batch's prompt.
PromptHooks = Callable[[Batch], Sequence[tuple[str, Callable]]]


def greedy_completions(
    model, tokens: Tokenized, max_new_tokens: int = 8, batch_size: int = 64, use_cache: bool = True,
    prompt_hooks: PromptHooks | None = None,
) -> list[list[int]]:
    """Greedy continuation of every prompt, cut at the first EOS (which is not included).

    Args:
        model: a HookedTransformer with a tokenizer that has an EOS token.
        tokens: prompts from :func:`interp_tl.tokens.tokenize`.
        max_new_tokens: most tokens generated per prompt.
        batch_size: prompts per forward pass.
        use_cache: keep every layer's keys and values (TransformerLens'
            ``TransformerLensKeyValueCache``) and run one new token per step; False re-runs the
            whole sequence at every step (the reference: the same tokens, tested).
        prompt_hooks: for each batch, forward hooks that act on its prompt (e.g. an activation
            patch at the last prompt position): ``prompt_hooks(batch)`` is called once per batch
            and its hooks run, with the cache, in the one forward pass that sees the prompt;
            without it, in every step's pass, where the prompt's columns are the same. A hook
            that edits column ``batch.tokens.shape[1] - 1`` (every row's last real token under
            left padding) therefore edits it once per sequence either way (tested: the cached and
            uncached tokens are equal).

    Returns:
        per prompt, in input order, the generated token ids.

    Pitfall: forward hooks the caller has attached (``model.hooks(...)``) see, with the cache,
    only the new position at each step after the first; a hook that reads or edits the prompt's
    other positions acts on those once, when the prompt is run.
    """
    eos = model.tokenizer.eos_token_id
    if eos is None:
        raise BadInputError("the tokenizer has no EOS token: cannot tell where an answer ends")
    if max_new_tokens < 1:
        raise BadInputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    longest = int(tokens.lengths.max()) + max_new_tokens
    if longest > model.cfg.n_ctx:
        raise BadInputError(
            f"prompt plus {max_new_tokens} new tokens is {longest} tokens, over the context of {model.cfg.n_ctx}"
        )
    check_lengths(model, tokens)
    generate = _greedy_cached if use_cache else _greedy_uncached
    out: list[list[int]] = [[] for _ in tokens.ids]
    with copy_free_attention(model) if use_cache else nullcontext(), torch.inference_mode(), fused_gelu(model):
        for batch in batches(model, tokens, batch_size):
            hooks = list(prompt_hooks(batch)) if prompt_hooks is not None else []
            for row, ids in zip(batch.rows, generate(model, batch, max_new_tokens, eos, hooks)):
                out[row] = ids[: ids.index(eos)] if eos in ids else ids
    return out


def _hooked(model, hooks: Sequence[tuple]):
    """``model.hooks(hooks)`` (removed on exit, the caller's own hooks left alone); nothing when there are none."""
    return model.hooks(fwd_hooks=list(hooks)) if hooks else nullcontext()


def _greedy_uncached(model, batch: Batch, max_new_tokens: int, eos: int, hooks: Sequence[tuple] = ()
                     ) -> list[list[int]]:
    """The reference: every step runs the prompt and all generated tokens again (``hooks`` in every pass)."""
    toks, mask = batch.tokens, batch.attention_mask
    new = torch.empty((len(batch.rows), 0), dtype=torch.long, device=toks.device)
    done = torch.zeros(len(batch.rows), dtype=torch.bool, device=toks.device)
    for _ in range(max_new_tokens):
        with _hooked(model, hooks):
            logits = model(torch.cat([toks, new], 1), attention_mask=torch.cat([mask, torch.ones_like(new)], 1))
        nxt = logits[:, -1].argmax(-1)
        new = torch.cat([new, nxt[:, None]], 1)
        done |= nxt == eos
        if bool(done.all()):
            break
    return new.tolist()


def _laid_out(param: torch.Tensor, pattern: str, shape: str, axes: tuple[int, ...], **sizes: int) -> torch.Tensor:
    """``param``'s values as a strided view of a contiguous buffer in the layout ``pattern`` gives."""
    buffer = einops.rearrange(param.data, pattern).contiguous()
    return buffer.view(*(sizes[axis] for axis in shape.split())).permute(*axes)


@contextmanager
def copy_free_attention(model) -> Iterator[int]:
    """Within the block, attention weights are stored in the layout the forward pass puts them in.

    TransformerLens 3.9 rearranges ``W_Q``, ``W_K``, ``W_V`` to ``[(head d_head), d_model]`` and
    ``W_O`` to ``[d_model, (head d_head)]`` on every forward call, a copy of each (at GPT-2 small
    a fifth of a one-token decoding step). Here each of those Parameters (``_W_K``, ``_W_V`` under
    grouped-query attention) holds, for the duration, a strided view of a buffer already in that
    layout: the same values, the same matrix products bit for bit, and the rearrangement becomes
    a view. The original storage is put back on exit, also when the body raises. Models whose
    attention reads the weights otherwise (split QKV input, ``attn_in``, per-head results,
    4-bit) are left alone. Yields the number of weights laid out.

    Pitfall: a weight edited in place inside the block is edited in the buffer and lost on exit.
    """
    cfg = model.cfg
    skip = cfg.use_split_qkv_input or cfg.use_attn_in or cfg.use_attn_result or getattr(cfg, "load_in_4bit", False)
    swapped: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        for block in [] if skip else model.blocks:
            params = dict(block.attn.named_parameters(recurse=False))
            for name in ("W_Q", "W_K", "W_V", "_W_K", "_W_V"):
                if name in params and params[name].dim() == 3:
                    h, dm, dh = params[name].shape
                    view = _laid_out(params[name], "h m d -> (h d) m", "h d m", (0, 2, 1), h=h, d=dh, m=dm)
                    swapped.append((params[name], params[name].data))
                    params[name].data = view
            if "W_O" in params and params["W_O"].dim() == 3:
                h, dh, dm = params["W_O"].shape
                view = _laid_out(params["W_O"], "h d m -> m (h d)", "m h d", (1, 2, 0), h=h, d=dh, m=dm)
                swapped.append((params["W_O"], params["W_O"].data))
                params["W_O"].data = view
        yield len(swapped)
    finally:
        for param, data in swapped:
            param.data = data


class _LastLogits:
    """What ``HookedTransformer.forward`` does after the last block, for the positions given.

    ``ln_final`` (when the model has one), the unembed with its two hook points, and the logit
    soft cap: the operations of TransformerLens 3.9's forward pass (the cached path's tokens are
    tested against the uncached path, which calls the model itself), except that the unembed's
    transposed weight is made contiguous once per generation instead of on every call
    (``Unembed.forward`` copies ``W_U`` there, 154 MB at GPT-2's vocabulary). A subclass of
    ``Unembed`` is called as it is.
    """

    def __init__(self, model):
        self.model = model
        unembed = model.unembed
        self.weight = unembed.W_U.T.contiguous() if type(unembed) is Unembed else None

    def __call__(self, resid: torch.Tensor) -> torch.Tensor:
        model = self.model
        if model.cfg.normalization_type is not None:
            resid = model.ln_final(resid)
        if self.weight is None:
            logits = model.unembed(resid)
        else:
            unembed = model.unembed
            logits = unembed.hook_out(F.linear(unembed.hook_in(resid), self.weight, unembed.b_U))
        return apply_softcap(logits, model.cfg.output_logits_soft_cap)


def _keep_rows(cache: TransformerLensKeyValueCache, keep: torch.Tensor) -> None:
    """Drop the finished rows (``keep`` False) from every layer's keys, values and the cache's mask."""
    for entry in cache.entries:
        entry.past_keys = entry.past_keys[keep]
        entry.past_values = entry.past_values[keep]
    cache.previous_attention_mask = cache.previous_attention_mask[keep]


def _greedy_cached(model, batch: Batch, max_new_tokens: int, eos: int, hooks: Sequence[tuple] = ()
                   ) -> list[list[int]]:
    """The prompt once, then one token per step against the cached keys and values; finished rows leave.

    The left-padded prompt goes in with its attention mask, which the cache keeps and extends
    with a 1 per generated token (passed explicitly: TransformerLens would otherwise rebuild a
    mask from pad ids, and GPT-2's EOS is its pad). Absolute and rotary positions come from that
    mask (``cumsum - 1``), so a generated token sits at the position it has in the uncached run.
    ``hooks`` run in the prompt's pass only.
    """
    n_layers = model.cfg.n_layers
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(batch.rows))
    logits_of = _LastLogits(model)
    with _hooked(model, hooks):  # the prompt's pass, its final norm and unembedding included
        resid = model(batch.tokens, attention_mask=batch.attention_mask, past_kv_cache=cache, stop_at_layer=n_layers)
        nxt = logits_of(resid[:, -1:])[:, 0].argmax(-1)
    alive = list(range(len(batch.rows)))
    out: list[list[int]] = [[] for _ in alive]
    for step in range(max_new_tokens):
        if step:
            nxt = logits_of(resid[:, -1:])[:, 0].argmax(-1)
        ids = nxt.tolist()
        for row, token in zip(alive, ids):
            out[row].append(token)
        if step == max_new_tokens - 1:
            break
        going = nxt != eos
        if not bool(going.all()):
            if not bool(going.any()):
                break
            alive = [row for row, token in zip(alive, ids) if token != eos]
            nxt = nxt[going]
            _keep_rows(cache, going)
        new = nxt[:, None]
        resid = model(new, attention_mask=torch.ones_like(new), past_kv_cache=cache, stop_at_layer=n_layers)
    return out


def _sequence_losses(
    model, prompts: Tokenized, answers: Sequence[str], batch_size: int
) -> tuple[list[np.ndarray], list[int]]:
    """Next-token losses of ``prompt + answer + EOS`` sequences, one forward pass per batch.

    Returns, per sequence, the loss (nats) at every real position after the first, and the
    number of answer tokens (EOS included) at its end.
    """
    tok = model.tokenizer
    eos = tok.eos_token_id
    targets = [tok(a, add_special_tokens=False)["input_ids"] + [eos] for a in answers]
    full = Tokenized([p + t for p, t in zip(prompts.ids, targets)], prompts.prepend_bos, prompts.bos_id, None)
    check_lengths(model, full)
    losses: list[np.ndarray] = [np.empty(0)] * len(answers)
    with torch.inference_mode(), fused_gelu(model):
        for batch in batches(model, full, batch_size):
            logits = model(batch.tokens, attention_mask=batch.attention_mask)
            if logits.dtype in (torch.float16, torch.bfloat16):  # log-softmax over the vocabulary in float32
                logits = logits.float()
            nll = lm_cross_entropy_loss(logits, batch.tokens, batch.attention_mask, per_token=True)
            for j, row in enumerate(batch.rows):
                losses[row] = nll[j, 1 - len(full.ids[row]):].double().cpu().numpy()
    return losses, [len(t) for t in targets]


#: The one answer loss (JSON key ``answer_loss``), in words: the model card, the surgery and Jacobian studies use it.
ANSWER_LOSS = ("answer_loss: mean teacher-forced nats per token over the completion after the prompt, i.e. the "
               "tokens of ' ' + answer sentence (the opening space included) and EOS: exactly the tokens the "
               "embedded model's training loss counts")

#: The second quantity (JSON key ``number_loss``): the answer's number alone.
NUMBER_LOSS = "number_loss: the same mean over the completion's digit tokens only (the number of the answer sentence)"

#: The third (JSON key ``sequence_loss``): prompt tokens included.
SEQUENCE_LOSS = "sequence_loss: mean nats per token over every next token of prompt + completion (after BOS)"


def completion_losses(
    model, problems: Sequence[Problem], lang: str, batch_size: int = 32, prepend_bos: bool | None = None
) -> dict[str, float]:
    """``answer_loss``, ``number_loss`` and ``sequence_loss`` (see :data:`ANSWER_LOSS`) of ``problems`` in ``lang``.

    The one function behind every reported answer loss (model card, surgery, training evaluation).
    A digit token is one whose decoded text is all digits; ``number_loss`` is NaN when the
    tokenizer has none in the completions.
    """
    tok = model.tokenizer
    prompts = tokenize(model, [p.prompts[lang] for p in problems], prepend_bos)
    answers = [answer_text(p.answer, lang) for p in problems]
    losses, lengths = _sequence_losses(model, prompts, answers, batch_size)
    completion = [x[-k:] for x, k in zip(losses, lengths)]
    digit = [np.array([tok.decode([i]).isdigit() for i in tok(a, add_special_tokens=False)["input_ids"]] + [False])
             for a in answers]
    numbers = np.concatenate([x[m] for x, m in zip(completion, digit)])
    return {"answer_loss": float(np.mean(np.concatenate(completion))),
            "number_loss": float(np.mean(numbers)) if numbers.size else float("nan"),
            "sequence_loss": float(np.mean(np.concatenate(losses)))}


@dataclass(frozen=True)
class AnswerScores:
    """Greedy answers and teacher-forced answer loss per category and language.

    Attributes:
        accuracy: ``{lang: {category: fraction correct}}`` plus ``"all"`` per language; correct:
            the completion's first integer (:func:`extract_answer`) is the answer.
        language: ``{lang: fraction of completions identified as lang}`` (:func:`interp_tl.langid.identify_language`).
        exact: ``{lang: fraction of completions equal to the answer sentence}``.
        answer_loss: ``{lang: answer_loss}`` (:data:`ANSWER_LOSS`).
        number_loss: ``{lang: number_loss}`` (:data:`NUMBER_LOSS`).
        completions: ``{lang: [decoded completion, ...]}`` in problem order.
        n: problems per language.
    """

    accuracy: Mapping[str, Mapping[str, float]]
    language: Mapping[str, float]
    exact: Mapping[str, float]
    answer_loss: Mapping[str, float]
    number_loss: Mapping[str, float]
    completions: Mapping[str, list[str]]
    n: int


def answer_token_losses(
    model, prompts: Tokenized, answers: Sequence[str], batch_size: int = 64
) -> list[Float[np.ndarray, " answer_tokens"]]:
    """Teacher-forced next-token loss (nats) of each completion's tokens and EOS after its prompt."""
    losses, lengths = _sequence_losses(model, prompts, answers, batch_size)
    return [x[-k:] for x, k in zip(losses, lengths)]


def score_answers(
    model, problems: Sequence[Problem], langs: Sequence[str], batch_size: int = 64, prepend_bos: bool | None = None
) -> AnswerScores:
    """Greedy answers (number, language, exact sentence) and answer loss of ``model`` on ``problems`` per language."""
    accuracy, language, exact, loss, number, completions = {}, {}, {}, {}, {}, {}
    cats = np.array([p.category for p in problems])
    for lang in langs:
        answers = [answer_text(p.answer, lang) for p in problems]
        longest = max(len(model.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
        tokens = tokenize(model, [p.prompts[lang] for p in problems], prepend_bos)
        ids = greedy_completions(model, tokens, max_new_tokens=longest + 2, batch_size=batch_size)
        texts = [model.tokenizer.decode(x) for x in ids]
        correct = np.array([extract_answer(t) == p.answer for t, p in zip(texts, problems)])
        accuracy[lang] = {c: float(correct[cats == c].mean()) for c in CATEGORIES if (cats == c).any()}
        accuracy[lang]["all"] = float(correct.mean())
        language[lang] = float(np.mean([identify_language(t) == lang for t in texts]))
        exact[lang] = float(np.mean([t == a for t, a in zip(texts, answers)]))
        losses = completion_losses(model, problems, lang, batch_size, prepend_bos)
        loss[lang], number[lang] = losses["answer_loss"], losses["number_loss"]
        completions[lang] = texts
    return AnswerScores(accuracy, language, exact, loss, number, completions, len(problems))


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def numbers_in(text: str) -> list[str]:
    r"""The numbers in a generated text (``-?\d+(?:\.\d+)?``).

    The research script reads ``-?\d+\.?\d*``, which takes a sentence's full stop into the number
    (``"The answer is 42."`` gives ``"42."``, not the answer); here a decimal point belongs to a
    number only when digits follow it.
    """
    return _NUMBER.findall(text)


def first_answer_word(text: str, answer: int) -> int:
    """Index of the first whitespace-separated word holding the answer (the seed's FAT), -1 if none."""
    target = str(answer)
    for i, word in enumerate(text.split()):
        if target in numbers_in(word):
            return i
    return -1


def first_answer_token(pieces: Sequence[str], answer: int) -> int:
    """Index of the first generated token after which the decoded text holds the answer, -1 if never."""
    target, text = str(answer), ""
    for i, piece in enumerate(pieces):
        text += piece
        if target in numbers_in(text):
            return i
    return -1


def _language_summary(langs_out: list[str], prompt_lang: str) -> dict[str, Any]:
    counts = Counter(langs_out)
    with_letters = [x for x in langs_out if x != "none"]
    preserved = sum(x == prompt_lang for x in with_letters) / len(with_letters) if with_letters else None
    counts_ordered = {k: counts[k] for k in LABELS if counts[k]}
    return {"counts": counts_ordered, "preserved": preserved, "with_letters": len(with_letters),
            "in_language": counts[prompt_lang] / len(langs_out) if langs_out else None}


def context_budget(model, tokens: Tokenized, max_new_tokens: int, where: str = "") -> int:
    """``max_new_tokens``, cut to what the context leaves after the longest of ``tokens``.

    ``where`` names the prompts in the error (e.g. ``" in zh"``).

    Raises:
        BadInputError: the longest prompt leaves no room to generate.
    """
    longest = int(tokens.lengths.max())
    budget = min(max_new_tokens, model.cfg.n_ctx - longest)
    if budget < 1:
        raise BadInputError(f"a prompt of {longest} tokens{where} leaves no room to generate in a context of "
                            f"{model.cfg.n_ctx}")
    return budget


def evaluate_generation(
    model, problems: Sequence[Problem], langs: Sequence[str], max_new_tokens: int = 128, batch_size: int = 32,
    prepend_bos: bool | None = None, label: str = "",
) -> dict[str, dict[str, Any]]:
    """Greedy generation on ``problems`` in each language, scored as the kernel-surgery script does.

    Per language: ``correct``, ``total``, ``accuracy`` (the answer is among the generated
    numbers), ``mean_fat`` (mean index of the first whitespace word holding the answer, over
    answered problems; the seed's FAT), ``mean_fat_tokens`` (the same in generated tokens),
    ``outputs`` (prompt, answer, correct, fat, gen, language) and ``lang_preservation`` (output
    languages by :func:`interp_tl.langid.identify_language`; ``preserved`` is the fraction of
    outputs with letters that are in the prompt's language, None when no output has letters;
    ``in_language`` the fraction of all outputs identified as the prompt's language, an output
    without letters counting as not). ``correct_mask`` and ``language_mask`` (per problem: correct;
    identified as the prompt's language; for paired tests) are kept beside them.

    Pitfall: ``max_new_tokens`` is cut to what the context leaves after the longest prompt.
    """
    out = {}
    tok = model.tokenizer
    for lang in langs:
        tokens = tokenize(model, [p.prompts[lang] for p in problems], prepend_bos)
        budget = context_budget(model, tokens, max_new_tokens, f" in {lang}")
        ids = greedy_completions(model, tokens, max_new_tokens=budget, batch_size=batch_size)
        rows, fats, fat_tokens, langs_out, mask = [], [], [], [], []
        for problem, gen_ids in zip(problems, ids):
            gen = tok.decode(gen_ids, skip_special_tokens=True)
            ok = str(problem.answer) in numbers_in(gen)
            fat = first_answer_word(gen, problem.answer)
            pieces = [tok.decode([i], skip_special_tokens=True) for i in gen_ids]
            fat_tok = first_answer_token(pieces, problem.answer)
            out_lang = identify_language(gen)
            mask.append(ok)
            langs_out.append(out_lang)
            if ok:
                fats.append(fat)
                fat_tokens.append(fat_tok)
            rows.append({"prompt": problem.prompts[lang][:80], "answer": problem.answer, "category": problem.category,
                         "correct": ok, "fat": fat, "fat_tokens": fat_tok, "gen": gen[:200], "language": out_lang})
        valid = [f for f in fats if f >= 0]
        out[lang] = {
            "lang": lang, "label": label, "correct": int(sum(mask)), "total": len(problems),
            "accuracy": sum(mask) / len(problems),
            "mean_fat": float(np.mean(valid)) if valid else -1.0,
            "mean_fat_tokens": float(np.mean(fat_tokens)) if fat_tokens else -1.0,
            "max_new_tokens": budget,
            "outputs": rows,
            "lang_preservation": _language_summary(langs_out, lang),
            "correct_mask": mask,
            "language_mask": [x == lang for x in langs_out],
        }
    return out


def next_token_loss(
    model, problems: Sequence[Problem], langs: Sequence[str], batch_size: int = 32, prepend_bos: bool | None = None
) -> dict[str, dict[str, float]]:
    """:func:`completion_losses` per language: ``{lang: {"answer_loss", "number_loss", "sequence_loss"}}``."""
    return {lang: completion_losses(model, problems, lang, batch_size, prepend_bos) for lang in langs}
