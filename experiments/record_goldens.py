"""Record regression goldens (per-layer alignment z, embedding z) for one model, as the tests compare them.

    python experiments/record_goldens.py --model interp-tl/polyglot-toy   # always possible, offline
    python experiments/record_goldens.py --model gpt2                     # needs GPT-2 small's real weights

writes ``tests/goldens/<name>.json`` with the default settings of :class:`interp_tl.goldens.GoldenSettings`
(what ``z_regression.check(..., fullpath=...)`` in tests/integration/test_alignment.py compares).
The same file is written by ``python -m pytest tests/integration/test_alignment.py -k goldens --regen-all``.
Goldens of hub models are refused when the weights look untrained (next-token loss on a fixed English
text above 6 nats/token; GPT-2 small gets ~3-4): a GPT-2-shaped random model must never become
GPT-2 goldens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from interp_tl import goldens
from interp_tl.errors import InterpTLError
from interp_tl.models import load_model


def golden_path(name: str) -> Path:
    return Path(__file__).resolve().parents[1] / "tests" / "goldens" / goldens.file_name(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, help="goldens file to write (default tests/goldens/<name>.json)")
    args = parser.parse_args()
    path = args.out or golden_path(args.model)
    try:
        model = load_model(args.model, processing="none")
        goldens.record(model, args.model, path)
    except InterpTLError as exc:
        print(f"record_goldens: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
