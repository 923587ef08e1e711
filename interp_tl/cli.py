"""``interp-tl``: one subcommand per study, plus ``all``.

Every error a user can cause (unknown model or language, bad counts, layers out of range, an
output folder that cannot be written) prints one line ``interp-tl: error: ...`` and exits with
status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any, Sequence

from interp_tl import __version__
from interp_tl.errors import BadInputError, InterpTLError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        self.exit(EXIT_USAGE, f"interp-tl: error: {message}\n")


def parse_layers(text: str) -> tuple[int, ...]:
    """``"0-3,8"`` -> ``(0, 1, 2, 3, 8)``."""
    layers: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            layers += range(int(lo), int(hi) + 1) if hi else [int(lo)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must look like 0-3,8, got {text!r}") from None
    return tuple(layers)


def _model_args(parser: argparse.ArgumentParser) -> None:
    from interp_tl.models import DEFAULT_MODEL, PROCESSING

    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL}, offline)")
    parser.add_argument("--processing", default="none", choices=list(PROCESSING),
                        help="weight processing: none = raw weights as the research scripts (default), "
                             "fold_ln, or default = TransformerLens' from_pretrained default")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-devices", type=int, default=1,
                        help="split the model's blocks over this many CUDA GPUs from --device on "
                             "(TransformerLens' n_devices; default 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=None,
                        help="put BOS before each prompt (default: the model's default)")
    parser.add_argument("--out", default="results", help="output folder (default ./results)")
    parser.add_argument("--save-activations", action="store_true",
                        help="also write <study>_activations.npz (surgery: the fitted axes)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _common(parser: argparse.ArgumentParser) -> None:
    _model_args(parser)
    parser.add_argument("--n-pairs", type=int, default=200, help="problems per language (multiple of 5)")
    parser.add_argument("--langs", nargs=2, default=["zh", "en"], metavar=("A", "B"),
                        help="the two languages compared (zh en es ar ja ko sw)")
    parser.add_argument("--seed", type=int, default=42, help="problem-set seed (42: the evaluation set)")
    parser.add_argument("--n-perms", type=int, default=None, help="permutations of the null (default: the seed's)")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for CIs (0: none)")


def _number_list(cast):
    def parse(text: str) -> tuple:
        try:
            return tuple(cast(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None

    return parse


def _surgery_args(parser: argparse.ArgumentParser) -> None:
    _model_args(parser)
    parser.add_argument("--layers", type=parse_layers, default=None,
                        help="edited layers, e.g. 1-2 (default: the seed's L9-L26 of 36 as a fraction of depth)")
    parser.add_argument("--k", type=int, default=10, help="language axes removed per layer (default 10)")
    parser.add_argument("--min-variance", type=float, default=None,
                        help="choose k by rule: smallest k explaining this fraction at every edited layer")
    parser.add_argument("--alpha", type=float, default=1.0, help="projection strength in [0, 1] (default 1)")
    parser.add_argument("--fit-hook", default="hook_resid_post", help="hook whose last token defines the subspace")
    parser.add_argument("--fit-n", type=int, default=200, help="problems per language for the fit")
    parser.add_argument("--fit-seed", type=int, default=42, help="problem-set seed of the fit")
    parser.add_argument("--fit-langs", nargs="+", default=None, help="fit languages (default all seven)")
    parser.add_argument("--eval-langs", nargs="+", default=None, help="generation languages (default all seven)")
    parser.add_argument("--eval-per-category", type=int, default=4, help="test problems per category (seed: 4)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--sweep-k", type=_number_list(int), default=None, help="k values of the sweep, e.g. 1,2,5,10")
    parser.add_argument("--sweep-alpha", type=_number_list(float), default=None, help="alphas, e.g. 0.25,0.5,1")
    parser.add_argument("--loss-n", type=int, default=50, help="held-out problems for the loss before/after")
    parser.add_argument("--control-seed", type=int, default=0, help="seed of the random control subspaces")


def build_parser() -> argparse.ArgumentParser:
    """The ``interp-tl`` argument parser."""
    parser = _Parser(prog="interp-tl", description="Cross-lingual interpretability studies on HookedTransformers.")
    parser.add_argument("--version", action="version", version=f"interp-tl {__version__}")
    sub = parser.add_subparsers(dest="study", required=True, parser_class=_Parser)
    align = sub.add_parser("alignment", help="per-layer zh/en alignment z, attention vs MLP")
    _common(align)
    align.add_argument("--layers", type=parse_layers, default=None, help="layers, e.g. 0-3,8 (default all)")
    align.add_argument("--no-head-shares", dest="head_shares", action="store_false",
                       help="skip the additive per-head split of the gap at the last layer (and its heatmap)")
    emb = sub.add_parser("embedding", help="alignment in the embeddings vs after layer 0")
    _common(emb)
    emb.add_argument("--n-token-problems", type=int, default=50, help="problems for the per-token diagnostics")
    surgery = sub.add_parser("surgery", help="language subspace projected out of MLP writes: generation before/after")
    _surgery_args(surgery)
    layers = sub.add_parser("layers", help="gauge-aligned weight distances between consecutive layers")
    _model_args(layers)
    layers.add_argument("--layers", type=parse_layers, default=None,
                        help="the block, e.g. 1-3 (default: the seed's 10..25 of 36 as a fraction of depth)")
    layers.add_argument("--null-random-seed", type=int, default=0, help="seed of the random same-spectrum null")
    layers.add_argument("--no-invariants", dest="invariants", action="store_false",
                        help="skip the per-head W_QK / W_OV comparison")
    layers.add_argument("--no-rotation-approx", dest="rotation_approx", action="store_false",
                        help="skip the seed's d_mlp rotation alignment (slow for large d_mlp)")
    jac = sub.add_parser("jacobian", help="softmax backward per head: diagonal vs lateral vs straight-through")
    _model_args(jac)
    jac.add_argument("--text", dest="text_file", default=None,
                     help="a UTF-8 file; each non-empty line is a sequence (default: the parallel problem set)")
    jac.add_argument("--n-problems", type=int, default=20, help="problems of the parallel set (each in every language)")
    jac.add_argument("--seed", type=int, default=42, help="problem-set seed")
    jac.add_argument("--langs", dest="jacobian_langs", nargs="+", default=None, help="languages (default all seven)")
    jac.add_argument("--no-weight-gradients", dest="weight_gradients", action="store_false",
                     help="skip the W_Q/W_K gradient comparison under the surrogates")
    heads = sub.add_parser("heads", help="additive per-head shares of the alignment, with ablations of the top heads")
    _common(heads)
    heads.add_argument("--layer", type=int, default=None, help="residual layer whose alignment is split (default last)")
    heads.add_argument("--top", type=int, default=3, help="heads checked by ablation")
    heads.add_argument("--ablation", choices=["mean", "zero"], default="mean")
    head = sub.add_parser("head", help="one head, e.g. `interp-tl head 1.2`: share, ablation, attention, Jacobian")
    head.add_argument("head", help="the head as L.H")
    _common(head)
    head.add_argument("--layer", type=int, default=None, help="residual layer of the share (default last)")
    head.add_argument("--ablation", choices=["mean", "zero"], default="mean")
    every = sub.add_parser("all", help="every study into one folder, with index.md")
    _common(every)
    return parser


def _config(config_cls, args: argparse.Namespace):
    names = {f.name for f in fields(config_cls)}
    values: dict[str, Any] = {"batch_size": args.batch_size, "prepend_bos": args.prepend_bos}
    if hasattr(args, "n_pairs"):
        values.update({"n_pairs": args.n_pairs, "langs": tuple(args.langs), "seed": args.seed, "n_boot": args.n_boot})
        if args.n_boot < 0 or (args.n_perms is not None and args.n_perms < 1):
            raise BadInputError("--n-perms must be at least 1 and --n-boot at least 0")
        if args.n_perms is not None:
            values["n_perms"] = args.n_perms
        values.update({"fit_n": args.n_pairs, "fit_seed": args.seed})  # `all`: the surgery fit uses the same set
    for name in names - set(values):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = tuple(value) if isinstance(value, list) else value
    return config_cls(**{k: v for k, v in values.items() if k in names})


def run(args: argparse.Namespace) -> list[str]:
    """Run the study (or all of them) the parsed arguments ask for; return the lines to print."""
    from interp_tl.models import load_model
    from interp_tl.prompts import check_languages
    from interp_tl.report import headline, prepare_out_dir, write_index, write_result
    from interp_tl.studies import STUDIES

    for langs in (getattr(args, "langs", None), getattr(args, "fit_langs", None), getattr(args, "eval_langs", None),
                  getattr(args, "jacobian_langs", None)):
        check_languages(langs or [])
    out = prepare_out_dir(args.out)
    model = load_model(args.model, args.processing, args.dtype, args.device)
    if args.study == "head":
        return _run_head(args, model, out)
    names = list(STUDIES) if args.study == "all" else [args.study]
    results, files, lines = [], {}, []
    for name in names:
        config_cls, run_study = STUDIES[name]
        result = run_study(model, _config(config_cls, args), progress=not args.quiet,
                           keep_activations=args.save_activations)
        files[name] = write_result(result, out, args.save_activations)
        results.append(result)
        lines.append(f"{name}: {headline(result)}")
        lines += [f"  wrote {p}" for p in files[name]]
    if args.study == "all":
        write_index(out, results, files)
        lines.append(f"  wrote {out / 'index.md'}")
    return lines


def _run_head(args: argparse.Namespace, model, out) -> list[str]:
    import json

    from interp_tl.report import atomic_write
    from interp_tl.studies.heads import HeadsConfig, head_report

    report = head_report(model, args.head, _config(HeadsConfig, args))
    name = report["head"]
    path = out / f"head_{name}.json"
    atomic_write(path, (json.dumps(report, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    share = report["share"]
    abl = report["ablation"]
    lines = [f"head {name}:"]
    if share:
        lines.append(f"  share of the alignment gap at layer {share['layer_of_residual']}: {share['share']:.5f} "
                     f"of {share['total']:.5f} (permutation band {share['band'][0]:.5f}..{share['band'][1]:.5f}, "
                     f"z {share['z']:.1f})")
    lines.append(f"  {abl['ablation']} ablation, delta z at layers {abl['layers']}: "
                 + ", ".join(f"{d:+.2f}" for d in abl["delta_z"]))
    for lang, att in report["attention"].items():
        classes = ", ".join(f"{k} {v:.2f}" for k, v in att["mass_by_token_class"].items())
        lines.append(f"  {lang}: last-token attention entropy {att['entropy']:.2f}, first position "
                     f"{att['first_position_mass']:.2f}; by token class: {classes}")
    jac = report["jacobian"]
    lines.append(f"  Jacobian: cos_diag {jac['cos_diag']:.3f}, cos_ste {jac['cos_ste']:.3f}, "
                 f"r_diag {jac['r_diag']:.3f}")
    for other, inv in report["neighbours"].items():
        lines.append(f"  closest in {other}: W_QK H{inv['W_QK']['closest_head']} ({inv['W_QK']['distance']:.3f}), "
                     f"W_OV H{inv['W_OV']['closest_head']} ({inv['W_OV']['distance']:.3f})")
    lines.append(f"  wrote {path}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``interp-tl`` console script."""
    args = build_parser().parse_args(argv)
    try:
        lines = run(args)
    except InterpTLError as exc:
        print(f"interp-tl: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interp-tl: interrupted", file=sys.stderr)
        return 130
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
