"""Train ``interp-tl/polyglot-toy``, the embedded multilingual model every study runs on offline.

What it does, deterministically from :class:`Recipe` (seed 0):

1. Tokenizer: a byte-level BPE trained with ``tokenizers`` on prompts + answers of the problem
   set in all seven languages (problems drawn with seed ``seed + 1``). Digits are split into
   single-digit tokens before BPE, so ``0``–``9`` are the same ten tokens in every language;
   the 256 byte tokens cover any script. ``<|endoftext|>`` (id 0) is BOS = EOS = PAD.
2. Data: an endless stream of problems drawn with seed ``seed + 2`` (never 42), each in one of
   the seven languages chosen uniformly, category by :attr:`Recipe.mixture`. A sequence is
   ``[BOS] prompt`` + ``" " answer [EOS]`` (prompt and answer tokenized separately, as
   :mod:`interp_tl.generation` reads them); the loss is on the answer tokens only. Problems of
   the held-out set (``seed=42, n=200``) are skipped, except combinatorics: its ~130 (n, k)
   pairs are all in the stream, so that category measures memorisation, the others
   generalisation.
3. Model: GPT-2 style ``HookedTransformer`` (LayerNorm, absolute positions, gelu_new),
   AdamW with linear warm-up and cosine decay, gradient clipping, batch 64, float32 on CPU.
4. Evaluation on the held-out set in all seven languages: teacher-forced answer loss during
   training; greedy exact match per category and language at the end, against a
   question-blind baseline (the smoothed distribution of answers in the training stream).

Writes the package files (``config.json``, ``model.safetensors``, tokenizer, ``training.json``)
to ``--out`` and the loss curve and model card to ``--report``. From the repository root::

    python experiments/train_polyglot.py                      # full recipe (about 20 min on 2 cores)
    python experiments/train_polyglot.py --check              # short retrain vs the shipped losses

``--check`` rebuilds the tokenizer (must equal the shipped one), retrains the first
``CHECK_STEPS`` steps and compares their losses with those recorded in the shipped
``training.json`` (two-sided tolerance); exit 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from interp_tl.generation import answer_text, answer_token_losses, score_answers
from interp_tl.models import POLYGLOT_MODEL, polyglot_path, quiet_tl_deprecation, versions
from interp_tl.prompts import CATEGORIES, draw_problem, generate_problems, languages
from interp_tl.report import atomic_write

EOT = "<|endoftext|>"
HELD_OUT = dict(n=200, seed=42)
CHECK_STEPS = 20
CHECK_RTOL, CHECK_ATOL = 1e-4, 1e-5


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the shipped model (the defaults are the shipped recipe)."""

    seed: int = 0
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 128
    vocab_size: int = 1024
    tokenizer_problems: int = 20_000
    steps: int = 6_000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 300
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mixture: tuple[tuple[str, float], ...] = (
        ("arithmetic", 0.15), ("combinatorics", 0.40), ("modular", 0.10), ("geometry", 0.20), ("sequences", 0.15),
    )
    eval_every: int = 500


# Tokenizer


def build_tokenizer(recipe: Recipe, folder: Path):
    """Train the BPE on rendered problems + answers (seed ``recipe.seed + 1``), save it in ``folder``, load it.

    TransformerLens reloads a tokenizer from its ``name_or_path``, so ``folder`` must outlive
    every model built with the returned tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    rng = random.Random(recipe.seed + 1)
    texts = []
    for i in range(recipe.tokenizer_problems):
        problem = draw_problem(rng, CATEGORIES[i % len(CATEGORIES)])
        texts += [problem.prompts[lang] + answer_text(problem.answer) for lang in languages()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size, min_frequency=2, special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT,
                                   model_max_length=recipe.n_ctx)
    save_tokenizer(fast, folder)
    return AutoTokenizer.from_pretrained(str(folder))


def save_tokenizer(tokenizer, out: Path) -> None:
    tokenizer.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"  # loadable by transformers 4.x and 5.x
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# Data


def held_out_keys() -> set[tuple[str, tuple[tuple[str, int], ...]]]:
    """The held-out problems the stream skips (all but combinatorics)."""
    return {
        (p.template, tuple(sorted(p.numbers.items())))
        for p in generate_problems(**HELD_OUT)
        if p.category != "combinatorics"
    }


class Stream:
    """The training examples: (prompt ids, answer ids) drawn deterministically from ``seed + 2``."""

    def __init__(self, recipe: Recipe, tokenizer):
        self.rng = random.Random(recipe.seed + 2)
        self.cats = [c for c, _ in recipe.mixture]
        self.weights = [w for _, w in recipe.mixture]
        self.langs = languages()
        self.tok = tokenizer
        self.eos = tokenizer.eos_token_id
        self.skip = held_out_keys()
        self.skipped = 0

    def example(self) -> tuple[list[int], list[int]]:
        while True:
            category = self.rng.choices(self.cats, self.weights)[0]
            lang = self.langs[self.rng.randrange(len(self.langs))]
            problem = draw_problem(self.rng, category, [lang])
            if (problem.template, tuple(sorted(problem.numbers.items()))) not in self.skip:
                break
            self.skipped += 1
        prompt = [self.eos] + self.tok(problem.prompts[lang], add_special_tokens=False)["input_ids"]
        answer = self.tok(answer_text(problem.answer), add_special_tokens=False)["input_ids"] + [self.eos]
        return prompt, answer

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded inputs, targets and the answer-token mask of ``size`` examples."""
        rows = [self.example() for _ in range(size)]
        width = max(len(p) + len(a) for p, a in rows) - 1
        x = torch.full((size, width), self.eos, dtype=torch.long)
        y = torch.full((size, width), self.eos, dtype=torch.long)
        mask = torch.zeros((size, width), dtype=torch.bool)
        for i, (p, a) in enumerate(rows):
            seq = torch.tensor(p + a)
            x[i, : len(seq) - 1] = seq[:-1]
            y[i, : len(seq) - 1] = seq[1:]
            mask[i, len(p) - 1 : len(seq) - 1] = True
        return x, y, mask


def question_blind_loss(recipe: Recipe, tokenizer, n_samples: int = 200_000, alpha: float = 0.5) -> float:
    """Nats per answer token (digits + EOS) of the best model that never looks at the question.

    The answer strings of ``n_samples`` stream draws (seed ``seed + 3``) define a prefix tree; a
    held-out answer is scored token by token with add-``alpha`` smoothing over the 11 symbols
    (10 digits, EOS), averaged over the held-out set in all seven languages.
    """
    rng = random.Random(recipe.seed + 3)
    cats, weights = [c for c, _ in recipe.mixture], [w for _, w in recipe.mixture]
    counts: Counter[str] = Counter()
    for _ in range(n_samples):
        answer = str(draw_problem(rng, rng.choices(cats, weights)[0], ["en"]).answer) + "$"
        for j in range(len(answer) + 1):
            counts[answer[:j]] += 1
    total, n = 0.0, 0
    for problem in generate_problems(**HELD_OUT):
        answer = str(problem.answer) + "$"
        for j in range(len(answer)):
            total -= math.log((counts[answer[: j + 1]] + alpha) / (counts[answer[:j]] + 11 * alpha))
            n += 1
    return total / n


# Model and training


def model_config(recipe: Recipe, d_vocab: int) -> dict:
    """The HookedTransformerConfig fields of the shipped model (config.json)."""
    return dict(
        model_name=POLYGLOT_MODEL, n_layers=recipe.n_layers, d_model=recipe.d_model, n_heads=recipe.n_heads,
        d_head=recipe.d_model // recipe.n_heads, d_mlp=recipe.d_mlp, d_vocab=d_vocab, n_ctx=recipe.n_ctx,
        act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard",
        default_prepend_bos=True, tokenizer_prepends_bos=False,
    )


def new_model(recipe: Recipe, tokenizer):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(recipe.seed)
    cfg = HookedTransformerConfig(**model_config(recipe, len(tokenizer)), dtype=torch.float32, device="cpu")
    with quiet_tl_deprecation():
        return HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="left")


def lr_at(recipe: Recipe, step: int) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def held_out_answer_loss(model, problems, langs) -> float:
    """Mean teacher-forced loss per answer token (digits + EOS) over the held-out set, all languages."""
    from interp_tl.tokens import tokenize

    answers = [answer_text(p.answer) for p in problems]
    losses = []
    for lang in langs:
        per = answer_token_losses(model, tokenize(model, [p.prompts[lang] for p in problems]), answers)
        losses += [x[1:] for x in per]
    return float(np.mean(np.concatenate(losses)))


def train(recipe: Recipe, tokenizer, stop_after: int | None = None, progress: bool = True, evaluate: bool = True):
    """Train from scratch; return the model and the log (per-step loss, evaluations, wall time)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(recipe, tokenizer, stop_after, progress, evaluate)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _train(recipe: Recipe, tokenizer, stop_after: int | None, progress: bool, evaluate: bool):
    model = new_model(recipe, tokenizer)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.98))
    stream = Stream(recipe, tokenizer)
    held_out = generate_problems(**HELD_OUT)
    steps = recipe.steps if stop_after is None else min(stop_after, recipe.steps)
    log = {"loss": [], "eval": []}
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="train polyglot-toy", disable=not progress, unit="step")
    for step in bar:
        x, y, mask = stream.batch(recipe.batch_size)
        for group in opt.param_groups:
            group["lr"] = lr_at(recipe, step)
        model.train()
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits[mask], y[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        log["loss"].append(loss.item())
        if evaluate and ((step + 1) % recipe.eval_every == 0 or step + 1 == steps):
            model.eval()
            held = held_out_answer_loss(model, held_out, languages())
            log["eval"].append({"step": step + 1, "held_out_answer_loss": held,
                                "wall_s": time.perf_counter() - start})
            bar.set_postfix(loss=f"{loss.item():.3f}", held_out=f"{held:.3f}")
    model.eval()
    log["wall_s"] = time.perf_counter() - start
    log["skipped_held_out_draws"] = stream.skipped
    return model, log


# Outputs


def save_model(model, tokenizer, recipe: Recipe, log: dict, scores, baseline: float, out: Path) -> dict:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # every file complete before any is replaced
        tmp = Path(tmp)
        save_tokenizer(tokenizer, tmp)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"name": POLYGLOT_MODEL})
        (tmp / "config.json").write_text(json.dumps(model_config(recipe, len(tokenizer)), indent=2) + "\n")
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "model.safetensors",
                     "config.json"):
            if (tmp / name).exists():
                os.chmod(tmp / name, 0o644)
                os.replace(tmp / name, out / name)
    training = {
        "name": POLYGLOT_MODEL,
        "recipe": dataclasses.asdict(recipe),
        "command": "python experiments/train_polyglot.py",
        "wall_s": log["wall_s"],
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "held_out": {**HELD_OUT, "languages": list(languages())},
        "skipped_held_out_draws": log["skipped_held_out_draws"],
        "first_losses": log["loss"][:100],
        "loss_every_10": log["loss"][::10],
        "eval": log["eval"],
        "final": {
            "accuracy": scores.accuracy, "answer_loss": scores.answer_loss,
            "answer_loss_mean": float(np.mean(list(scores.answer_loss.values()))),
            "question_blind_loss": baseline,
        },
    }
    atomic_write(out / "training.json", (json.dumps(training, indent=1) + "\n").encode())
    return training


def smooth(values: list[float], window: int = 50) -> np.ndarray:
    v = np.asarray(values)
    kernel = np.ones(min(window, len(v))) / min(window, len(v))
    return np.convolve(v, kernel, mode="valid")


def plot_losses(training: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    every = np.asarray(training["loss_every_10"])
    ax.plot(np.arange(len(every)) * 10 + 1, every, lw=0.5, alpha=0.4, label="train (answer tokens, every 10th step)")
    ax.plot(np.arange(len(smooth(every, 20))) * 10 + 100, smooth(every, 20), lw=1.2, label="train, smoothed")
    ev = training["eval"]
    ax.plot([e["step"] for e in ev], [e["held_out_answer_loss"] for e in ev], "o-", label="held out (digits + EOS)")
    ax.axhline(training["final"]["question_blind_loss"], color="k", ls="--", lw=1, label="question-blind baseline")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / answer token")
    ax.set_yscale("log")
    ax.set_title(f"{training['name']}: training ({training['wall_s'] / 60:.1f} min, 2 CPU threads)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def model_card(training: dict) -> str:
    """The model card's accuracy table (docs/polyglot-toy-v1.md): held-out greedy exact match per category, language."""
    acc = training["final"]["accuracy"]
    langs = list(acc)
    rows = ["| category | " + " | ".join(langs) + " |", "|---|" + "---|" * len(langs)]
    for cat in [*CATEGORIES, "all"]:
        rows.append(f"| {cat} | " + " | ".join(f"{100 * acc[lang][cat]:.0f}%" for lang in langs) + " |")
    loss = training["final"]
    rows.append("")
    rows.append(
        f"Held-out answer loss {loss['answer_loss_mean']:.3f} nats/token (digits + EOS, mean of the "
        f"languages {min(loss['answer_loss'].values()):.3f}–{max(loss['answer_loss'].values()):.3f}); "
        f"a question-blind model: {loss['question_blind_loss']:.3f}."
    )
    return "\n".join(rows) + "\n"


# Entry points


def check(out: Path) -> int:
    """Rebuild the tokenizer and retrain CHECK_STEPS steps; compare with the shipped files."""
    recorded = json.loads((out / "training.json").read_text())
    recipe = Recipe(**{k: tuple(map(tuple, v)) if k == "mixture" else v for k, v in recorded["recipe"].items()})
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = build_tokenizer(recipe, Path(folder))
        if (Path(folder) / "tokenizer.json").read_bytes() != (out / "tokenizer.json").read_bytes():
            print("tokenizer differs from the shipped one")
            return 1
        _, log = train(recipe, tokenizer, stop_after=CHECK_STEPS, progress=False, evaluate=False)
    ref = np.asarray(recorded["first_losses"][:CHECK_STEPS])
    got = np.asarray(log["loss"])
    bad = np.abs(got - ref) > CHECK_ATOL + CHECK_RTOL * np.abs(ref)
    for step, (a, b) in enumerate(zip(got, ref)):
        print(f"step {step + 1:3d}  retrain {a:.6f}  shipped {b:.6f}{'  MISMATCH' if bad[step] else ''}")
    print(f"{'OK' if not bad.any() else 'FAILED'}: {CHECK_STEPS} steps, max |diff| {np.abs(got - ref).max():.2e}")
    return int(bad.any())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(str(polyglot_path())), help="package folder of the model")
    parser.add_argument("--report", type=Path, default=Path("experiments/results/polyglot_toy"),
                        help="folder for loss.png and card.md")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's steps (not the shipped model)")
    parser.add_argument("--check", action="store_true", help="short retrain against the shipped training.json")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.out)
    recipe = Recipe() if args.steps is None else dataclasses.replace(Recipe(), steps=args.steps)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = build_tokenizer(recipe, Path(folder))
        print(f"tokenizer: {len(tokenizer)} tokens ({time.perf_counter() - t0:.1f} s)")
        model, log = train(recipe, tokenizer)
        scores = score_answers(model, generate_problems(**HELD_OUT), languages())
        baseline = question_blind_loss(recipe, tokenizer)
        training = save_model(model, tokenizer, recipe, log, scores, baseline, args.out)
    args.report.mkdir(parents=True, exist_ok=True)
    plot_losses(training, args.report / "loss.png")
    (args.report / "card.md").write_text(model_card(training))
    print(model_card(training))
    print(f"total {time.perf_counter() - t0:.0f} s; wrote {args.out} and {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
