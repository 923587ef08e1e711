"""Analyses: functions of ActivationCaches (one position per prompt) and of patterns with their gradients.

Each analysis reads hook points by their TransformerLens names from caches a user already holds
(``model.run_with_cache`` reduced with :func:`interp_tl.cache.last_token`) or that
:func:`interp_tl.cache.extract` produced; the statistics underneath are :mod:`interp_tl.stats`.
The studies are thin layers over these functions.
"""

from __future__ import annotations

#: Hook-name endings the analyses read (residual stages, writers, embeddings, attention patterns).
_READ = ("hook_embed", "hook_pos_embed", "hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
         "attn.hook_z", "attn.hook_result", "attn.hook_pattern")


def names_filter(name: str) -> bool:
    """``run_with_cache(tokens, names_filter=names_filter)``: cache only the hooks the analyses read.

    On GPT-2 small this keeps 6 of the 24 activations per layer (no MLP neurons, no q/k/v), so a
    full-position cache of a few hundred prompts fits in memory.
    """
    return name.endswith(_READ)
