"""The user's model code after a bug: the same architecture, but the trained weights are never loaded."""

import torch
from transformer_lens import HookedTransformer

from interp_tl import load_model


def build_model():
    trained = load_model("interp-tl/polyglot-toy")
    torch.manual_seed(0)
    model = HookedTransformer(trained.cfg)
    model.set_tokenizer(trained.tokenizer)
    return model.eval()
