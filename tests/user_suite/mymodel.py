"""The user's own model code: builds the HookedTransformer their research is about.

Here it is the embedded interp-tl/polyglot-toy as interp_tl loads it; ``variants/`` holds the
versions of this file the tests swap in (a perturbed weight, a checkpoint that was not loaded).
"""

from interp_tl import load_model


def build_model():
    return load_model("interp-tl/polyglot-toy")
