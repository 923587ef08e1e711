"""Train ``interp-tl/polyglot-toy``, the embedded multilingual model every study runs on offline.

What it does, deterministically from :class:`Recipe` (seed 0):

1. Tokenizer: a byte-level BPE trained with ``tokenizers`` on prompts + answers of the problem
   set in all seven languages (problems drawn with seed ``seed + 1``). Digits are split into
   single-digit tokens before BPE, so ``0``–``9`` are the same ten tokens in every language;
   the 256 byte tokens cover any script. ``<|endoftext|>`` (id 0) is BOS = EOS = PAD.
2. Data: an endless stream of problems drawn with seed ``seed + 2`` (never 42), each in one of
   the seven languages chosen uniformly, category by :attr:`Recipe.mixture`
   (:class:`interp_tl.training_stream.TrainingStream`, which replays it for the trained-pair
   counts). A sequence is ``[BOS] prompt`` + ``" " answer sentence [EOS]``, the sentence in the
   prompt's language (``interp_tl/data/problem_templates.json``, ``answers``: en
   ``" The answer is 42."``, zh ``" 答案是 42。"``, ...); prompt and completion are tokenized
   separately, as :mod:`interp_tl.generation` reads them; the loss is on the completion's tokens
   only (:data:`interp_tl.generation.ANSWER_LOSS`). Every problem of every set the studies
   evaluate on (:data:`interp_tl.training_stream.EVALUATION_SETS`) is skipped, except
   combinatorics: its 118 (n, k) pairs are all in the stream, so that category measures
   memorisation, the others generalisation.
3. Model: GPT-2 style ``HookedTransformer`` (LayerNorm, absolute positions, gelu_new),
   AdamW with linear warm-up and cosine decay, gradient clipping, batch 64, float32 on CPU.
4. Evaluation: teacher-forced ``answer_loss`` on the seed-42 set during training; at the end,
   greedy answers on ``generate_problems(200, 42)`` and ``(200, 43)`` in all seven languages:
   the stated number per category, the answer's language by :mod:`interp_tl.langid`, the exact
   sentence, ``answer_loss`` and ``number_loss``, and each set's trained-pair counts.

Writes the package files (``config.json``, ``model.safetensors``, tokenizer, ``training.json``)
to ``--out`` and the loss curve and model card to ``--report``. From the repository root::

    python experiments/train_polyglot.py                      # full recipe (29.9 min: 1 thread, shared machine)
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from interp_tl.generation import ANSWER_LOSS, answer_text, completion_losses, score_answers
from interp_tl.models import POLYGLOT_MODEL, polyglot_path, quiet_tl_deprecation, versions
from interp_tl.prompts import CATEGORIES, draw_problem, generate_problems, languages, load_answer_forms
from interp_tl.report import atomic_write
from interp_tl.training_stream import EVALUATION_SETS, MEMORISED_CATEGORIES, TrainingStream, trained_pairs

EOT = "<|endoftext|>"
HELD_OUT = dict(n=200, seed=42)
#: The held-out tables: the evaluation set (seed 42) and a second seed, both excluded from the stream.
TABLE_SETS = ((200, 42), (200, 43))
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
        ("arithmetic", 0.10), ("combinatorics", 0.25), ("modular", 0.10), ("geometry", 0.35), ("sequences", 0.20),
    )
    excluded_sets: tuple[tuple[int, int], ...] = EVALUATION_SETS
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
        texts += [problem.prompts[lang] + answer_text(problem.answer, lang) for lang in languages()]
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


class Stream:
    """The training examples: (prompt ids, answer ids) of :class:`interp_tl.training_stream.TrainingStream`."""

    def __init__(self, recipe: Recipe, tokenizer):
        self.draws = TrainingStream(recipe.seed, recipe.mixture, recipe.excluded_sets)
        self.tok = tokenizer
        self.eos = tokenizer.eos_token_id

    @property
    def skipped(self) -> int:
        return self.draws.skipped

    def example(self) -> tuple[list[int], list[int]]:
        problem, lang = self.draws.draw()
        prompt = [self.eos] + self.tok(problem.prompts[lang], add_special_tokens=False)["input_ids"]
        answer = self.tok(answer_text(problem.answer, lang), add_special_tokens=False)["input_ids"] + [self.eos]
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
    """Mean over ``langs`` of the held-out ``answer_loss`` (:data:`interp_tl.generation.ANSWER_LOSS`)."""
    return float(np.mean([completion_losses(model, problems, lang)["answer_loss"] for lang in langs]))


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


def held_out_tables(model, recipe: Recipe) -> dict:
    """Greedy answers and answer loss on each set of :data:`TABLE_SETS`, with its trained-pair counts."""
    record = {"recipe": dataclasses.asdict(recipe)}
    tables = {}
    for n, seed in TABLE_SETS:
        problems = generate_problems(n, seed)
        scores = score_answers(model, problems, languages())
        tables[f"seed_{seed}"] = {
            "problems": {"n": n, "seed": seed},
            "accuracy": scores.accuracy, "language": scores.language, "exact": scores.exact,
            "answer_loss": scores.answer_loss, "number_loss": scores.number_loss,
            "answer_loss_mean": float(np.mean(list(scores.answer_loss.values()))),
            "trained_pairs": trained_pairs(problems, languages(), record),
        }
    return tables


def save_model(model, tokenizer, recipe: Recipe, log: dict, tables: dict, out: Path) -> dict:
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
        "answer_forms": dict(load_answer_forms()),
        "answer_loss_definition": ANSWER_LOSS,
        "memorised_categories": list(MEMORISED_CATEGORIES),
        "held_out": {**HELD_OUT, "languages": list(languages())},
        "skipped_held_out_draws": log["skipped_held_out_draws"],
        "first_losses": log["loss"][:100],
        "loss_every_10": log["loss"][::10],
        "eval": log["eval"],
        "final": tables["seed_42"],
        "tables": tables,
    }
    atomic_write(out / "training.json", (json.dumps(training, indent=1, ensure_ascii=False) + "\n").encode())
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
    ax.plot([e["step"] for e in ev], [e["held_out_answer_loss"] for e in ev], "o-",
            label="held out (seed 42), answer_loss")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / answer token")
    ax.set_yscale("log")
    ax.set_title(f"{training['name']}: training ({training['wall_s'] / 60:.1f} min, 2 CPU threads)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(values: dict, rows: list[str], langs: list[str], counts: dict | None = None,
           first: str = "category") -> list[str]:
    head = f"| {first} | " + " | ".join(langs) + (" | trained pairs |" if counts else " |")
    out = [head, "|---|" + "---|" * (len(langs) + bool(counts))]
    for row in rows:
        cells = " | ".join(f"{100 * values[lang][row]:.0f}%" for lang in langs)
        extra = ""
        if counts:
            c = counts[row]
            extra = f" | {c['trained']}/{c['pairs']}" + (" (memorisation)" if c["memorised"] else "")
        out.append(f"| {row} | {cells}{extra} |")
    return out


def model_card(training: dict) -> str:
    """The model card's tables: greedy answers on each held-out table set, answer language, answer loss."""
    lines = []
    for table in training["tables"].values():
        langs = list(table["accuracy"])
        seed = table["problems"]["seed"]
        lines.append(f"Correct answers (the stated number), generate_problems({table['problems']['n']}, {seed}):")
        lines.append("")
        lines += _table(table["accuracy"], [*CATEGORIES, "all"], langs, table["trained_pairs"])
        lines.append("")
        lang_rows = {lang: {"language": table["language"][lang], "exact": table["exact"][lang]} for lang in langs}
        lines.append(f"Answer language by `langid` and exact answer sentence, seed {seed}:")
        lines.append("")
        lines += _table(lang_rows, ["language", "exact"], langs, first="answers")
        lines.append("")
        loss = table["answer_loss"]
        lines.append(
            f"answer_loss {table['answer_loss_mean']:.3f} nats/token (mean of the languages "
            f"{min(loss.values()):.3f}–{max(loss.values()):.3f}); number_loss (digit tokens only) "
            f"{float(np.mean(list(table['number_loss'].values()))):.3f}."
        )
        lines.append("")
    return "\n".join(lines)


# Entry points


def check(out: Path) -> int:
    """Rebuild the tokenizer and retrain CHECK_STEPS steps; compare with the shipped files."""
    recorded = json.loads((out / "training.json").read_text())
    recipe = Recipe(**{k: tuple(map(tuple, v)) if k in ("mixture", "excluded_sets") else v
                       for k, v in recorded["recipe"].items()})
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
        training = save_model(model, tokenizer, recipe, log, held_out_tables(model, recipe), args.out)
    args.report.mkdir(parents=True, exist_ok=True)
    plot_losses(training, args.report / "loss.png")
    (args.report / "card.md").write_text(model_card(training))
    print(model_card(training))
    print(f"total {time.perf_counter() - t0:.0f} s; wrote {args.out} and {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
