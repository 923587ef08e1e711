"""interp_tl: cross-lingual interpretability studies on TransformerLens ``HookedTransformer`` models.

Data flows one way: a model (:func:`load_model`) and the parallel problem set
(:func:`generate_problems`, :func:`parallel_prompts`) -> an ``ActivationCache`` with one position
per prompt (your own ``model.run_with_cache`` reduced by :func:`last_token`, or :func:`extract`) ->
the analyses (:func:`layer_alignment`, :func:`writer_shares`, :func:`embedding_alignment`,
:func:`language_subspace`, :func:`attention_jacobian`, :func:`lens_logits`,
:func:`patched_completions`) over :mod:`interp_tl.stats` -> the studies
(:data:`STUDIES`, ``run_alignment`` ...) -> files (:mod:`interp_tl.report`) and the CLI.

Names are imported on first use, so ``import interp_tl`` (and the CLI's argument checks) do not
load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # models
    "load_model": "interp_tl.models", "model_provenance": "interp_tl.models",
    "DEFAULT_MODEL": "interp_tl.models",
    # prompts and batching
    "generate_problems": "interp_tl.prompts", "languages": "interp_tl.prompts",
    "parallel_prompts": "interp_tl.tokens", "tokenize": "interp_tl.tokens", "ParallelPrompts": "interp_tl.tokens",
    # caches
    "extract": "interp_tl.cache", "last_token": "interp_tl.cache", "token_mask": "interp_tl.cache",
    "token_mean": "interp_tl.cache",
    "split_languages": "interp_tl.cache", "save_caches": "interp_tl.cache", "load_caches": "interp_tl.cache",
    # analyses
    "layer_alignment": "interp_tl.analyses.alignment", "writer_shares": "interp_tl.analyses.shares",
    "embedding_alignment": "interp_tl.analyses.embedding", "language_subspace": "interp_tl.analyses.subspace",
    "attention_jacobian": "interp_tl.analyses.jacobian", "names_filter": "interp_tl.analyses",
    "lens_logits": "interp_tl.analyses.lens", "patched_completions": "interp_tl.analyses.lens",
    "patched_last_logits": "interp_tl.analyses.lens",
    # studies and results
    "STUDIES": "interp_tl.studies", "StudyResult": "interp_tl.results",
    "AlignmentConfig": "interp_tl.studies", "EmbeddingConfig": "interp_tl.studies", "HeadsConfig": "interp_tl.studies",
    "JacobianConfig": "interp_tl.studies", "LayersConfig": "interp_tl.studies", "SurgeryConfig": "interp_tl.studies",
    "LensConfig": "interp_tl.studies",
    "run_alignment": "interp_tl.studies", "run_embedding": "interp_tl.studies", "run_heads": "interp_tl.studies",
    "run_jacobian": "interp_tl.studies", "run_layers": "interp_tl.studies", "run_surgery": "interp_tl.studies",
    "run_lens": "interp_tl.studies",
    "head_report": "interp_tl.studies", "plot_head": "interp_tl.figures",
    # errors
    "InterpTLError": "interp_tl.errors", "BadInputError": "interp_tl.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'interp_tl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
