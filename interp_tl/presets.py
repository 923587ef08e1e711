"""The names a user picks a model by, and the weight-processing presets (no torch: the CLI reads them first)."""

from __future__ import annotations

TOY_MODEL = "interp-tl/toy-random"
POLYGLOT_MODEL = "interp-tl/polyglot-toy"
DEFAULT_MODEL = POLYGLOT_MODEL

#: Weight-processing presets: the flags passed to TransformerLens.
PROCESSING: dict[str, dict[str, bool]] = {
    "none": dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False),
    "fold_ln": dict(fold_ln=True, center_writing_weights=False, center_unembed=False, fold_value_biases=False),
    "default": dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True),
}

#: The model dtypes interp_tl runs (statistics are always computed in float32/float64).
DTYPE_NAMES: tuple[str, ...] = ("float32", "float64", "float16", "bfloat16")
