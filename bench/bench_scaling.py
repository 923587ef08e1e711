"""Benchmark: extraction throughput in one process against two ``torchrun`` processes (timing only).

    HF_HOME=/work/hfgpt2 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python bench/bench_scaling.py --json auto

What runs, per model (the embedded default ``interp-tl/polyglot-toy``, and ``gpt2`` when ``HF_HOME``
holds the offline GPT-2 of ``shared/tools/make_offline_gpt2.py``: real config and tokenizer, RANDOM
weights) and per layout, each a fresh process group timed around the alignment study's extraction
alone (``STUDY.extract`` on ``--pairs`` zh/en pairs: both languages, every hook of the default
flags, the last real token), after a warm-up extraction of 20 pairs:

- ``1 process x 2 threads``: plain ``python``, ``torch.set_num_threads(2)``;
- ``1 process x 1 thread``: the per-process share of the next layout;
- ``torchrun 2 processes x 1 thread``: ``torchrun --standalone --nproc-per-node 2`` (gloo), each
  rank running its shard of the length-sorted batches, then the ``all_reduce`` that gives every
  rank the whole cache (included in the time).

Also, per model, the host memory that loading takes (a fresh process: its ``VmHWM`` after the
imports and after ``load_model``, against the bytes of the weights): what sizes a rank's host
memory for a big model.

Each layout runs ``--reps`` times in alternation; the minimum is kept. Prompts per second =
2 x pairs / seconds. Run it on a quiet machine (two torch processes at once on 2 cores slow each
other): the load average before every run goes into the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {
    "1 process x 2 threads": (1, 2),
    "1 process x 1 thread": (1, 1),
    "torchrun 2 processes x 1 thread": (2, 1),
}


def worker(model_name: str, n_pairs: int, threads: int) -> None:
    """One rank: load, warm up, time the extraction between barriers; rank 0 prints one JSON line."""
    import torch

    torch.set_num_threads(threads)
    from interp_tl import distributed
    from interp_tl.models import load_model
    from interp_tl.studies.alignment import STUDY, AlignmentConfig

    ctx, device = distributed.setup("cpu")
    model = load_model(model_name, device=device)
    warm = AlignmentConfig(n_pairs=20)
    STUDY.extract(model, warm, STUDY.prepare(model, warm))
    config = AlignmentConfig(n_pairs=n_pairs)
    prompts = STUDY.prepare(model, config)
    if ctx is not None:
        torch.distributed.barrier()
    t0 = time.perf_counter()
    STUDY.extract(model, config, prompts)
    if ctx is not None:
        torch.distributed.barrier()
    seconds = time.perf_counter() - t0
    if ctx is None or ctx.is_main:
        print(json.dumps({"seconds": seconds, "prompts": 2 * n_pairs}))
    distributed.teardown()


def load_memory(model_name: str) -> None:
    """Print the high-water marks of this fresh process after the imports and after loading the model."""
    import torch  # noqa: F401
    import transformer_lens  # noqa: F401
    from bench_speed import rss_mb  # the benchmark beside this one (bench/ is this script's folder)

    from interp_tl.models import load_model

    imports = rss_mb("VmHWM")
    model = load_model(model_name)
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    peak = rss_mb("VmHWM")
    print(json.dumps({"imports_mb": imports, "peak_mb": peak, "weights_mb": weights,
                      "load_over_weights": (peak - imports) / weights}))


def run_layout(model_name: str, n_pairs: int, processes: int, threads: int) -> dict:
    """One fresh run of a layout; its seconds, prompts per second and the load average before it."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    args = ["--worker", model_name, str(n_pairs), str(threads)]
    if processes == 1:
        cmd = [sys.executable, __file__, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               __file__, *args]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "prompts_per_s": result["prompts"] / result["seconds"], "loadavg_before": load}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=200, help="zh/en pairs extracted (2 x pairs prompts)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=["interp-tl/polyglot-toy", "gpt2"])
    ap.add_argument("--json", default=None, metavar="PATH", help="write the results ('auto': bench/results/)")
    ap.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--load-memory", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.load_memory:
        load_memory(args.load_memory)
        return 0
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
        return 0
    import torch

    doc = {"benchmark": "scaling", "started": datetime.datetime.now().isoformat(timespec="seconds"),
           "command": "python bench/bench_scaling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "pairs": args.pairs, "reps": args.reps, "loadavg_start": list(os.getloadavg()),
           "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
           "models": {}}
    for name in args.models:
        runs: dict[str, list[dict]] = {layout: [] for layout in LAYOUTS}
        for _ in range(args.reps):
            for layout, (processes, threads) in LAYOUTS.items():
                runs[layout].append(run_layout(name, args.pairs, processes, threads))
        best = {layout: min(r, key=lambda x: x["seconds"]) for layout, r in runs.items()}
        memory = subprocess.run([sys.executable, __file__, "--load-memory", name], capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
        doc["models"][name] = {"runs": runs, "best": best,
                               "load_memory": json.loads(memory.stdout.strip().splitlines()[-1])}
        for layout, b in best.items():
            print(f"{name:24} {layout:34} {b['seconds']:7.2f} s  {b['prompts_per_s']:7.1f} prompts/s")
        print(f"{name:24} loading: {doc['models'][name]['load_memory']}")
    doc["loadavg_end"] = list(os.getloadavg())
    if args.json:
        path = Path(args.json) if args.json != "auto" else ROOT / "bench" / "results" / (
            f"scaling_{datetime.date.today().isoformat()}.json")
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
