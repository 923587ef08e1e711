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
    patterns = {}
    for name, cache in caches.items():
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][prompt, head].detach().float().cpu().numpy()
        if masks is not None and name in masks:
            real = np.flatnonzero(np.asarray(masks[name])[prompt])
            pattern = pattern[np.ix_(real, real)]
        patterns[name] = (pattern, labels.get(name) if labels else None)
    return plot_patterns(patterns, f"L{layer}H{head}")


def drawable(labels: Sequence[str]) -> list[str]:
    r"""Tick labels the figure's font can draw: a character it has no glyph for is shown as its escape (``\u662f``).

    Machines without a CJK font would otherwise draw empty boxes (and warn once per glyph).
    """
    from matplotlib import font_manager

    font = font_manager.get_font(font_manager.findfont(font_manager.FontProperties()))
    glyphs = font.get_charmap()
    return ["".join(c if ord(c) in glyphs or c.isspace() else c.encode("unicode_escape").decode("ascii") for c in label)
            for label in labels]


def plot_patterns(patterns: Mapping[str, tuple[Any, Sequence[str] | None]], head: str):
    """Attention patterns side by side: ``{name: ([query, key] weights, token strings or None)}``.

    Returns:
        A matplotlib ``Figure`` (query rows, key columns; darker = more attention); tokens label the
        axes when there is one per position.
    """
    fig = figure((5 * len(patterns), 4.6))
    axes = np.atleast_1d(fig.subplots(1, len(patterns)))
    for ax, (name, (pattern, ticks)) in zip(axes, patterns.items()):
        pattern = np.asarray(pattern, dtype=float)
        image = ax.imshow(pattern, cmap="Blues", vmin=0, vmax=1)
        if ticks is not None and len(ticks) == pattern.shape[0]:
            ticks = drawable(ticks)
            ax.set_xticks(range(len(ticks)), ticks, rotation=90, fontsize=6)
            ax.set_yticks(range(len(ticks)), ticks, fontsize=6)
        ax.set(xlabel="key", ylabel="query", title=f"{name}: {head}")
        fig.colorbar(image, ax=ax, fraction=0.046, label="attention")
    return fig
