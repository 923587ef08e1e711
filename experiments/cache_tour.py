"""From TransformerLens' run_with_cache to the alignment table, the head shares and one head, in a few lines.

    python experiments/cache_tour.py [MODEL] [--out DIR]     (MODEL: interp-tl/polyglot-toy by default, or gpt2, ...)
"""

import argparse

import interp_tl as itl

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("model", nargs="?", default="interp-tl/polyglot-toy")
parser.add_argument("--out", default=".")
args = parser.parse_args()

model = itl.load_model(args.model)  # or any HookedTransformer you already have
problems = itl.generate_problems(200, seed=42)  # the parallel problem set, the same problems in 7 languages
tokens = {lang: model.to_tokens([p.prompts[lang] for p in problems]) for lang in ("zh", "en")}
caches = {lang: model.run_with_cache(t, names_filter=itl.names_filter)[1] for lang, t in tokens.items()}
last = {lang: itl.last_token(caches[lang], tokens=tokens[lang]) for lang in caches}  # each prompt's last real token
print(itl.layer_alignment(last["zh"], last["en"]))  # per layer: exact-null z before/after attn/MLP, Δz, Monte Carlo z
print(itl.writer_shares(last["zh"], last["en"], layer=model.cfg.n_layers - 1))  # additive split over heads, MLPs
masks = {lang: itl.token_mask(model, t) for lang, t in tokens.items()}
itl.plot_head(caches, layer=1, head=3, masks=masks).savefig(f"{args.out}/head_L1H3.png")  # one head, first prompts
