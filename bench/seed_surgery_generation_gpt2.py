"""Baseline for bench/bench_speed.py: the generation loop of the seeds' expAG_kernel_surgery.py on HF GPT-2.

NOT interp_tl code: it reproduces how ``shared/seeds/expAG_kernel_surgery.py``'s
``run_generation_test`` generated, so the benchmark can time "the seed's way" against
:func:`interp_tl.generation.evaluate_generation` in the same process. Per language, per
problem: tokenize the prompt alone (GPT-2's tokenizer adds no BOS), ``model.generate(**inputs,
max_new_tokens=128, do_sample=False, temperature=1.0)`` under ``torch.no_grad()`` (Hugging Face's
key-value cache, one prompt at a time), decode the new tokens. The seed ran Qwen2.5-3B on CUDA
in float16; here HF GPT-2 in float32 on CPU, with ``pad_token_id`` set to EOS (GPT-2 has no pad
token; generate would warn and set it so itself). Scoring (numbers, first-answer position) is
left out: it is the same Python in both ways and costs microseconds.
"""

from __future__ import annotations

import torch


def load(model_name: str = "gpt2"):
    """The seed's model and tokenizer: ``AutoModelForCausalLM`` in float32, eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_name)
    model = AutoModelForCausalLM.from_pretrained(model_name, dtype=torch.float32).eval()
    return model, tokenizer


def generate_one_at_a_time(model, tokenizer, prompts, max_new_tokens=128):
    """The seed's loop: one ``generate`` call per prompt; the new token ids of each prompt."""
    out = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=1.0,
                                 pad_token_id=tokenizer.eos_token_id)
        out.append(ids[0, inputs["input_ids"].shape[1]:].tolist())
    return out
