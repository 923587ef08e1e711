"""What the default goldens settings cost and resolve (the numbers in docs/regression.md).

    OMP_NUM_THREADS=1 python experiments/goldens_resolution.py --model interp-tl/polyglot-toy
    HF_HOME=<cache> HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python experiments/goldens_resolution.py --model gpt2

Prints the time of each part of a check (load, header, untrained check, statistics), the pinned
``z_exact_post_mlp`` / ``z_post_mlp`` at 25, 50, 100 and 200 pairs, the permutation noise of the
Monte Carlo ``z_post_mlp`` (20 permutation seeds, default settings) against the default tolerance,
and the largest change of any pinned statistic from numerical causes: other batches (other left
padding), the other thread count, a float64 model.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from interp_tl import goldens
from interp_tl.analyses import alignment as align
from interp_tl.cache import extract, split_languages
from interp_tl.models import load_model
from interp_tl.tokens import parallel_prompts


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def largest_change(recorded, now) -> str:
    rows = [r for r in goldens.compare(recorded, now) if r.difference is not None]
    return (f"max |dz| {max(abs(r.difference) for r in rows):.2e}, "
            f"max |dz|/tolerance {max(abs(r.difference) / r.tolerance for r in rows):.4f}")


def permutation_noise(model, settings: goldens.GoldenSettings) -> np.ndarray:
    """Monte Carlo z_post_mlp per layer for permutation seeds 0..19, ``[20, n_layers]``."""
    prompts = parallel_prompts(model, settings.n_pairs, settings.seed, settings.langs)
    layers = list(range(model.cfg.n_layers))
    cache = split_languages(extract(model, prompts.stacked(), align.hook_names(layers), goldens.BATCH_SIZE, "last"),
                            prompts.langs)
    a, b = prompts.langs
    return np.array([[r["z_post_mlp"] for r in align.layer_alignment(
        cache[a], cache[b], layers=layers, n_perms=settings.n_perms, perm_seed=seed, n_boot=0).layer_results]
        for seed in range(20)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="interp-tl/polyglot-toy")
    name = parser.parse_args().model
    model, t_load = timed(load_model, name)
    _, t_head = timed(goldens.header, model, name, "none")
    _, t_loss = timed(goldens.lm_loss, model)
    base, t_stats = timed(goldens.compute, model, goldens.GoldenSettings().resolved(model))
    print(f"{name}, {torch.get_num_threads()} thread(s): load {t_load:.2f} s, fingerprint + sample {t_head:.2f} s, "
          f"untrained check {t_loss:.2f} s, statistics {t_stats:.2f} s")
    for n in (25, 50, 100, 200):
        doc, t = timed(goldens.compute, model, goldens.GoldenSettings(n_pairs=n))
        print(f"n_pairs {n} ({t:.1f} s): z_exact_post_mlp {np.round(doc['alignment']['z_exact_post_mlp'], 2).tolist()}"
              f", z_post_mlp {np.round(doc['alignment']['z_post_mlp'], 2).tolist()}")
    zs = permutation_noise(model, goldens.GoldenSettings())
    exact = np.array(base["alignment"]["z_exact_post_mlp"])
    print(f"Monte Carlo z_post_mlp over 20 permutation seeds: sd {np.round(zs.std(0, ddof=1), 3).tolist()}, "
          f"sd/|mean| {np.round(zs.std(0, ddof=1) / np.abs(zs.mean(0)), 4).tolist()}")
    print(f"default tolerance at z_exact_post_mlp: "
          f"{np.round(goldens.DEFAULT_ATOL + goldens.DEFAULT_RTOL * np.abs(exact), 4).tolist()}")
    batch = goldens.BATCH_SIZE
    goldens.BATCH_SIZE = 7
    print(f"batches of 7 instead of {batch}: {largest_change(base, goldens.compute(model))}")
    goldens.BATCH_SIZE = batch
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if threads == 1 else 1)
    print(f"{torch.get_num_threads()} thread(s) instead of {threads}: {largest_change(base, goldens.compute(model))}")
    torch.set_num_threads(threads)
    print(f"float64 model: {largest_change(base, goldens.compute(load_model(name, dtype='float64')))}")


if __name__ == "__main__":
    main()
