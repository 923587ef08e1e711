"""Shared pieces of the studies' figures: a Figure that needs no pyplot, titles, layer x head heatmaps.

Figures are built with matplotlib's object-oriented API (``matplotlib.figure.Figure``), so making one
never switches a user's backend or registers it with pyplot; a notebook shows it with
``display(fig)`` or as a cell's value, and :func:`png_bytes` renders it for files.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from interp_tl.results import StudyResult


def figure(size: tuple[float | int, float | int]):
    """A new constrained-layout ``Figure`` of ``size`` inches, not registered with pyplot."""
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout="constrained")


def png_bytes(fig: Any, dpi: int = 120) -> bytes:
    """The figure rendered as PNG bytes (Agg canvas; the global backend is untouched)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def title(result: StudyResult) -> str:
    """``model (processing), languages, n=...`` for a study run on the parallel prompts."""
    data = result.data
    langs = "/".join(data.get("languages", []))
    model = result.provenance["model"]
    return f"{model['name']} ({model['processing']}), {langs}, n={result.provenance['prompts']['n']}"


def model_title(result: StudyResult) -> str:
    """``model (processing)``."""
    model = result.provenance["model"]
    return f"{model['name']} ({model['processing']})"


def layer_head_heatmap(fig: Any, ax: Any, grid: np.ndarray, title: str, signed: bool = False,
                       limits: tuple[float | None, float | None] = (None, None), label: str = "") -> None:
    """A layer x head heatmap with a labelled colorbar; ``signed`` centres a red-blue scale on 0.

    Ticks stay readable at GPT-2 scale and beyond: every head and layer up to 16, every fourth above.
    """
    if signed:
        bound = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        limits, cmap = (-bound, bound), "RdBu_r"
    else:
        cmap = "viridis"
    image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=limits[0], vmax=limits[1])
    ax.set(xlabel="head", ylabel="layer", title=title)
    ax.set_xticks(range(0, grid.shape[1], 1 if grid.shape[1] <= 16 else 4))
    ax.set_yticks(range(0, grid.shape[0], 1 if grid.shape[0] <= 16 else 4))
    fig.colorbar(image, ax=ax, fraction=0.05, label=label)


def nan_array(values: Any) -> np.ndarray:
    """A float array with None as NaN (JSON null back to a plottable number)."""
    return np.array([[np.nan if v is None else v for v in row] if isinstance(row, (list, tuple))
                     else (np.nan if row is None else row) for row in values], dtype=float)


def plot_head(
    caches: Mapping[str, Any], layer: int, head: int, prompt: int = 0,
    masks: Mapping[str, Any] | None = None, labels: Mapping[str, Sequence[str]] | None = None,
):
    """One head's attention pattern on one prompt of each cache, side by side (e.g. zh and en).

    Args:
        caches: ``{name: ActivationCache}`` holding ``blocks.{layer}.attn.hook_pattern`` with every
            position (``model.run_with_cache(tokens)`` or ``run_with_cache(..., names_filter=...)``).
        layer: the head's layer.
        head: the head.
        prompt: which prompt (batch row) of each cache.
        masks: ``{name: [batch, pos] attention mask}`` to show only real tokens (default all).
        labels: ``{name: token strings of that prompt's real positions}`` for the axes (e.g.
            ``model.to_str_tokens(text)``); default position numbers.

    Returns:
        A matplotlib ``Figure`` (query rows, key columns; darker = more attention).
    """
    fig = figure((5 * len(caches), 4.6))
    axes = np.atleast_1d(fig.subplots(1, len(caches)))
    for ax, (name, cache) in zip(axes, caches.items()):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][prompt, head].detach().float().cpu().numpy()
        if masks is not None and name in masks:
            real = np.flatnonzero(np.asarray(masks[name])[prompt])
            pattern = pattern[np.ix_(real, real)]
        image = ax.imshow(pattern, cmap="Blues", vmin=0, vmax=1)
        ticks = labels.get(name) if labels else None
        if ticks is not None and len(ticks) == pattern.shape[0]:
            ax.set_xticks(range(len(ticks)), ticks, rotation=90, fontsize=6)
            ax.set_yticks(range(len(ticks)), ticks, fontsize=6)
        ax.set(xlabel="key", ylabel="query", title=f"{name}: L{layer}H{head}")
        fig.colorbar(image, ax=ax, fraction=0.046, label="attention")
    return fig
