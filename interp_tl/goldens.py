"""Regression goldens: per-layer z-scores recorded for one model, compared two-sided.

A goldens file records the settings that produced it and the model's weights fingerprint
(:func:`interp_tl.models.weights_fingerprint`); :func:`check_model` refuses to compare a model
whose weights differ (e.g. GPT-2-shaped random weights against GPT-2 goldens).
Record with ``python experiments/record_goldens.py --model NAME``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from interp_tl.errors import ProvenanceMismatchError
from interp_tl.models import weights_fingerprint
from interp_tl.studies import AlignmentConfig, EmbeddingConfig, run_alignment, run_embedding

#: Per-layer alignment fields kept in goldens.
ALIGNMENT_KEYS = ("z_pre", "z_post_attn", "z_post_mlp", "z_attn_correction_alone", "z_mlp_correction_alone",
                  "matched_cos_post_mlp")
#: Scalar embedding fields kept in goldens.
EMBEDDING_KEYS = ("z_raw_embed_last_token", "z_raw_embed_mean_no_bos", "z_l0_output_last_token",
                  "z_embed_pos_last_token", "embedding_cohen_d_pc0")
#: The settings goldens are recorded with (no bootstrap: it does not enter the goldens).
SETTINGS = {"n_pairs": 200, "langs": ["zh", "en"], "seed": 42, "processing": "none"}


def compute(model) -> dict[str, Any]:
    """The golden numbers of ``model`` (loaded with processing ``none``) under :data:`SETTINGS`."""
    langs = tuple(SETTINGS["langs"])
    align = run_alignment(model, AlignmentConfig(n_pairs=SETTINGS["n_pairs"], langs=langs, seed=SETTINGS["seed"],
                                                 n_boot=0, head_shares=False))
    emb = run_embedding(model, EmbeddingConfig(n_pairs=SETTINGS["n_pairs"], langs=langs, seed=SETTINGS["seed"],
                                               n_boot=0))
    return {
        "alignment": {key: [row[key] for row in align.data["layer_results"]] for key in ALIGNMENT_KEYS},
        "embedding": {key: emb.data.get(key) for key in EMBEDDING_KEYS},
        "prepend_bos": align.provenance["prompts"]["prepend_bos"],
    }


def record(model, name: str, path: str | Path) -> dict[str, Any]:
    """Compute goldens and write them (JSON) with the model's name, fingerprint and the settings."""
    from interp_tl.files import atomic_write
    from interp_tl.models import versions
    from interp_tl.results import json_bytes

    goldens = {"model": name, "weights_fingerprint": weights_fingerprint(model), "settings": SETTINGS,
               "versions": versions(), **compute(model)}
    atomic_write(path, json_bytes(goldens))
    return goldens


def file_name(model_name: str) -> str:
    """The goldens file of a model: ``gpt2`` -> ``gpt2.json``, ``a/b`` -> ``a__b.json``."""
    return f"{model_name.replace('/', '__')}.json"


def load(path: str | Path) -> dict[str, Any]:
    """Read a goldens file."""
    return json.loads(Path(path).read_text("utf-8"))


def check_model(goldens: Mapping[str, Any], model) -> None:
    """Refuse goldens recorded on different weights.

    Raises:
        ProvenanceMismatchError: the model's weights fingerprint differs from the recorded one.
    """
    got = weights_fingerprint(model)
    if got != goldens["weights_fingerprint"]:
        raise ProvenanceMismatchError(
            f"goldens for {goldens['model']!r} were recorded on weights {goldens['weights_fingerprint']}, "
            f"this model's weights are {got}: not the same model, refusing to compare"
        )


def differences(goldens: Mapping[str, Any], current: Mapping[str, Any], atol: float, rtol: float) -> list[str]:
    """Every recorded number that ``current`` misses by more than ``atol + rtol·|golden|`` (either side)."""
    out = []
    for section in ("alignment", "embedding"):
        for key, want in goldens[section].items():
            got = current[section][key]
            pairs = zip(want, got) if isinstance(want, list) else [(want, got)]
            for i, (w, g) in enumerate(pairs):
                if (w is None) != (g is None) or (w is not None and abs(g - w) > atol + rtol * abs(w)):
                    out.append(f"{section}.{key}[{i}]: golden {w}, got {g}")
    return out
