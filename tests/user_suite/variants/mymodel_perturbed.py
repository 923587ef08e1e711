"""The user's model code after a change that moves one weight matrix (layer 2's MLP output) by 20%."""

import torch

from interp_tl import load_model


def build_model():
    model = load_model("interp-tl/polyglot-toy")
    with torch.no_grad():
        w = model.blocks[2].mlp.W_out
        w.add_(0.2 * w.std() * torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))
    return model
