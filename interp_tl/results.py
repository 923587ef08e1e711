"""A study's result and its provenance as plain data: no torch, no model, no files.

:class:`StudyResult` is what every study returns and every writer (JSON, figures, the index,
goldens) reads; :func:`provenance` is the one place that lays out what produced a result; and
:func:`json_bytes` is the one strict JSON encoder (NaN and infinities become ``null``, never
bare ``NaN`` tokens). Importing this module loads neither torch nor TransformerLens, so code that
only reads results (the report, a notebook comparing two runs) stays light.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class StudyResult:
    """A study's numbers and what produced them.

    Attributes:
        study: the study's name (``alignment``, ``embedding``, ...), also its output file stem.
        data: JSON-ready results; top-level keys follow the research scripts' JSON where one
            existed, so old and new files can be diffed.
        provenance: model, weight processing, prompts (set, seed, n, languages, BOS), layers,
            settings and library versions (see :func:`provenance`).
    """

    study: str
    data: Mapping[str, Any]
    provenance: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: ``{"study": ..., **data, "provenance": ...}``."""
        return {"study": self.study, **self.data, "provenance": dict(self.provenance)}


def provenance(
    study: str,
    model: Mapping[str, Any],
    config: Mapping[str, Any],
    versions: Mapping[str, str],
    prompts: Mapping[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """The provenance block of a study's JSON, the same shape for every study.

    Args:
        study: the study's name.
        model: :func:`interp_tl.models.model_provenance` of the model the study ran on.
        config: the study's config as a dict (``dataclasses.asdict``).
        versions: :func:`interp_tl.models.versions`.
        prompts: what regenerates the prompts (problem-set id, languages, BOS); None for studies
            that read weights only.
        **settings: anything else that decides the numbers (layers, hooks, the edit, the loss).

    Returns:
        ``{"study", "model", "prompts"?, "config", **settings, "versions"}``.
    """
    out: dict[str, Any] = {"study": study, "model": dict(model)}
    if prompts is not None:
        out["prompts"] = dict(prompts)
    out["config"] = dict(config)
    out.update(settings)
    out["versions"] = dict(versions)
    return out


def finite_or_none(value: float) -> float | None:
    """A float for JSON: NaN and infinities become None (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays and tuples turned into JSON types, NaN/inf into None."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    return obj


def json_bytes(obj: Any) -> bytes:
    """Strict JSON (NaN/inf become null, numpy scalars and arrays become plain numbers), UTF-8."""
    return (json.dumps(jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
