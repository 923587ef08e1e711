"""Record regression goldens (per-layer alignment z, embedding z) for one model.

    python experiments/record_goldens.py --model interp-tl/toy-random   # always possible, offline
    python experiments/record_goldens.py --model gpt2                   # needs GPT-2 small's real weights

writes ``tests/goldens/<name>.json``. Goldens of hub models are refused when the weights look
untrained (next-token loss on a fixed English text above 6 nats/token; GPT-2 small gets ~3-4):
a GPT-2-shaped random model must never become GPT-2 goldens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from interp_tl import goldens
from interp_tl.errors import InterpTLError
from interp_tl.models import load_model

TEXT = ("The quick brown fox jumps over the lazy dog. In the beginning of the year, the city council "
        "met to discuss the budget for schools, roads and public parks.")
MAX_TRAINED_LOSS = 6.0


def lm_loss(model) -> float:
    """Mean next-token loss (nats) of the model on :data:`TEXT`."""
    with torch.inference_mode():
        return float(model(TEXT, return_type="loss"))


def golden_path(name: str) -> Path:
    return Path(__file__).resolve().parents[1] / "tests" / "goldens" / goldens.file_name(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    try:
        model = load_model(args.model, processing="none")
        if not args.model.startswith("interp-tl/"):
            loss = lm_loss(model)
            if loss > MAX_TRAINED_LOSS:
                print(f"refusing: {args.model} has loss {loss:.2f} nats/token on English text (untrained weights?)",
                      file=sys.stderr)
                return 2
        path = golden_path(args.model)
        goldens.record(model, args.model, path)
    except InterpTLError as exc:
        print(f"record_goldens: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
