"""Run by tests/test_models.py in a fresh process with HF_HOME set to an offline GPT-2-shaped cache.

Checks that ``load_model("gpt2", processing="none")`` + batched extraction reproduces the raw
Hugging Face GPT-2 hidden states (per prompt, no padding) that the research scripts read, and that
``processing="default"`` gives the same states mean-centred. Random weights: shapes and code path
only, never GPT-2's numbers. Prints ``OK <max error>`` or raises.
"""

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from interp_tl.cache import extract, layer_hook_names
from interp_tl.models import load_model, model_provenance
from interp_tl.prompts import generate_problems
from interp_tl.tokens import tokenize

texts = [p.prompts[lang] for p in generate_problems(10) for lang in ("zh", "en", "ar")]
hf = AutoModelForCausalLM.from_pretrained("gpt2", dtype=torch.float32).eval()
worst = 0.0
for processing in ("none", "default"):
    model = load_model("gpt2", processing=processing)
    assert model_provenance(model)["processing"] == processing
    tokens = tokenize(model, texts, prepend_bos=False)
    got = extract(model, tokens, layer_hook_names(model, ["hook_resid_pre"]), batch_size=7)
    for i, ids in enumerate(tokens.ids):
        with torch.no_grad():
            states = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
        for layer in range(model.cfg.n_layers):
            want = states[layer][0, -1].numpy()
            if processing == "default":
                want = want - want.mean()
            err = float(np.abs(got[f"blocks.{layer}.hook_resid_pre"][i, 0].numpy() - want).max() / np.abs(want).max())
            worst = max(worst, err)
assert worst < 1e-4, worst
print(f"OK {worst:.2e}")
