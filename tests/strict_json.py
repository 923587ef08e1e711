"""Strict JSON for the tests: a bare NaN / Infinity token fails (Python's json accepts them by default)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from interp_tl.results import json_bytes


def _refuse(token: str) -> Any:
    raise ValueError(f"not strict JSON: bare {token} token")


def loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses NaN, Infinity and -Infinity."""
    return json.loads(text, parse_constant=_refuse)


def read(path: str | Path) -> Any:
    """A JSON file, parsed strictly."""
    return loads(Path(path).read_text("utf-8"))


def round_trip(obj: Any) -> Any:
    """What a result becomes on disk (interp_tl's writer), parsed strictly."""
    return loads(json_bytes(obj))
