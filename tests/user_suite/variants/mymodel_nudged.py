"""The user's model code after a change that moves one weight by 1e-6: other fingerprint, same z."""

import torch

from interp_tl import load_model


def build_model():
    model = load_model("interp-tl/polyglot-toy")
    with torch.no_grad():
        model.blocks[2].mlp.W_out[0, 0] += 1e-6
    return model
