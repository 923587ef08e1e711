"""``interp-tl``: one subcommand per study, ``all``, and ``head L.H``; every flag generated from a config.

Each study's flags are its config dataclass's fields (``n_pairs`` -> ``--n-pairs``), with the field's
``Attributes:`` docstring as help and the dataclass default as the default, so the CLI and
``run_x(model, Config())`` cannot drift. ``interp-tl all`` takes every study's flags twice: plain
(``--langs es ar`` applies to every study that has ``langs``) and prefixed with the study
(``--surgery.sweep-k 1,2`` for that study alone; prefixed wins).

Every error a user can cause (unknown model or language, bad counts, layers out of range, an
output folder that cannot be written) prints one line ``interp-tl: error: ...`` and exits with
status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from interp_tl import __version__
from interp_tl.errors import BadInputError, InterpTLError

EXIT_USAGE = 2
_ATTRIBUTE = re.compile(r"^(\s+)(\w+):\s*(.*)$")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        self.exit(EXIT_USAGE, f"interp-tl: error: {message}\n")


def parse_layers(text: str) -> tuple[int, ...]:
    """``"0-3,8"`` -> ``(0, 1, 2, 3, 8)``."""
    layers: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            if hi and int(hi) < int(lo):
                raise argparse.ArgumentTypeError(f"reversed range {part.strip()!r} in layers: write it low-high")
            layers += range(int(lo), int(hi) + 1) if hi else [int(lo)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must look like 0-3,8, got {text!r}") from None
    return tuple(layers)


def _number_list(cast):
    def parse(text: str) -> tuple:
        try:
            return tuple(cast(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None

    parse.__name__ = f"{cast.__name__} list"
    return parse


def field_help(cls: type) -> dict[str, str]:
    """``{field: description}`` from the Google-style ``Attributes:`` sections of ``cls`` and its bases."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = klass.__doc__ or ""
        if "Attributes:" in doc:
            out.update(_attributes(doc.split("Attributes:", 1)[1]))
    return out


def _attributes(section: str) -> dict[str, str]:
    out: dict[str, str] = {}
    current, base = None, None
    for line in section.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if base is not None and indent < base:
            break
        match = _ATTRIBUTE.match(line)
        if match and (base is None or indent == base):
            base, current = indent, match.group(2)
            out[current] = match.group(3).strip()
        elif current is not None:
            out[current] += " " + line.strip()
    return out


def _strip_none(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if (typing.get_origin(hint) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def _argument(name: str, hint: Any, default: Any, help_text: str) -> dict[str, Any]:
    """Argparse keyword arguments for one config field."""
    hint, optional = _strip_none(hint)
    shown = "none" if default is None else ",".join(map(str, default)) if isinstance(default, tuple) else default
    text = f"{help_text} (default: {shown})".replace("%", "%%")
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": text}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is Literal:
        kwargs["choices"] = list(args)
    elif origin is tuple and args and args[0] is str:
        kwargs.update(nargs="+", metavar="LANG" if name == "langs" else name.upper())
    elif origin is tuple and name == "layers":
        kwargs.update(type=parse_layers, metavar="LAYERS")
    elif origin is tuple:
        kwargs.update(type=_number_list(args[0]), metavar=f"{args[0].__name__.upper()},...")
    elif hint in (int, float, str):
        kwargs["type"] = hint
    else:  # pragma: no cover - every config field type is covered above
        raise TypeError(f"no flag for {name}: {hint!r}")
    return kwargs


def config_fields(cls: type, skip: Sequence[str] = ()) -> list[tuple[str, Any, Any, str]]:
    """``(name, type, default, help)`` of every field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    return [(f.name, hints[f.name], f.default, helps.get(f.name, "")) for f in dataclasses.fields(cls)
            if f.name not in skip]


def _add_config(parser: argparse.ArgumentParser, cls: type, prefix: str = "", skip: Sequence[str] = ()) -> None:
    group = parser.add_argument_group(f"{prefix.rstrip('.') or 'study'} settings")
    for name, hint, default, text in config_fields(cls, skip):
        flag = f"--{prefix}{name.replace('_', '-')}"
        group.add_argument(flag, dest=f"{prefix}{name}", **_argument(name, hint, default, text))


def _model_args(parser: argparse.ArgumentParser) -> None:
    from interp_tl.presets import DEFAULT_MODEL, DTYPE_NAMES, PROCESSING

    group = parser.add_argument_group("model and output")
    group.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL}, offline)")
    group.add_argument("--processing", default="none", choices=list(PROCESSING),
                       help="weight processing: none = raw weights as the research scripts (default), "
                            "fold_ln, or default = TransformerLens' from_pretrained default")
    group.add_argument("--dtype", default="float32", choices=list(DTYPE_NAMES),
                       help="model dtype; statistics are always computed in float32/float64 (default float32)")
    group.add_argument("--device", default="cpu", help="torch device (default cpu)")
    group.add_argument("--n-devices", type=int, default=1,
                       help="split the model's blocks over this many CUDA GPUs from --device on "
                            "(TransformerLens' n_devices; default 1)")
    group.add_argument("--out", default="results", help="output folder (default ./results)")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def _activation_args(parser: argparse.ArgumentParser, from_file: bool) -> None:
    parser.add_argument("--save-activations", action="store_true",
                        help="also write the caches the study analysed as <study>_activations.safetensors")
    if from_file:
        parser.add_argument("--from-activations", metavar="FILE", default=None,
                            help="analyse the caches in FILE (from --save-activations) instead of running the model")


def _shared_fields(studies) -> dict[str, tuple[Any, Any, str, list[str]]]:
    shared: dict[str, tuple[Any, Any, str, list[str]]] = {}
    for study in studies.values():
        for name, hint, default, text in config_fields(study.config):
            if name in shared:
                if shared[name][0] != hint:  # pragma: no cover - a design error, caught by the tests
                    raise TypeError(f"field {name} has different types across studies")
                shared[name][3].append(study.name)
            else:
                shared[name] = (hint, default, text, [study.name])
    return shared


def _add_all(parser: argparse.ArgumentParser, studies) -> None:
    group = parser.add_argument_group("settings for every study that has them")
    for name, (hint, _, text, owners) in _shared_fields(studies).items():
        kwargs = _argument(name, hint, None, text)
        kwargs["help"] = f"{text} ({', '.join(owners)})".replace("%", "%%")
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, **kwargs)
    for study in studies.values():
        _add_config(parser, study.config, prefix=f"{study.name}.")


def build_parser() -> argparse.ArgumentParser:
    """The ``interp-tl`` argument parser, generated from the registry and the config dataclasses."""
    from interp_tl.studies import STUDIES, HeadsConfig

    parser = _Parser(prog="interp-tl", description="Cross-lingual interpretability studies on HookedTransformers.")
    parser.add_argument("--version", action="version", version=f"interp-tl {__version__}")
    sub = parser.add_subparsers(dest="study", required=True, parser_class=_Parser)
    for study in STUDIES.values():
        one = sub.add_parser(study.name, help=study.summary, description=study.summary)
        _model_args(one)
        if study.extract is not None:
            _activation_args(one, from_file=True)
        _add_config(one, study.config)
    head = sub.add_parser("head", help="one head, e.g. `interp-tl head 1.2`: share, ablation, attention, Jacobian")
    head.add_argument("head", help="the head as L.H")
    _model_args(head)
    _add_config(head, HeadsConfig, skip=("top",))
    every = sub.add_parser("all", help="every study into one folder, with index.md and index.html")
    _model_args(every)
    _add_all(every, STUDIES)
    return parser


def make_config(cls: type, values: dict[str, Any], prefix: str = "", shared: bool = False, **fixed: Any):
    """The config ``cls`` from parsed values: ``prefix``-ed flags, then (for ``all``) shared ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    chosen = {k: v for k, v in fixed.items() if k in names}
    for name in names:
        if shared and name in values:
            chosen[name] = values[name]
        if f"{prefix}{name}" in values:
            chosen[name] = values[f"{prefix}{name}"]
    return cls(**chosen)


def configs(args: argparse.Namespace) -> dict[str, Any]:
    """``{study: config}`` the parsed arguments ask for (validated: a bad value is a BadInputError)."""
    from interp_tl.studies import STUDIES, HeadsConfig

    values = vars(args)
    if args.study == "all":
        return {name: make_config(s.config, values, prefix=f"{name}.", shared=True) for name, s in STUDIES.items()}
    if args.study == "head":
        return {"head": make_config(HeadsConfig, values)}
    return {args.study: make_config(STUDIES[args.study].config, values)}


def _check_activation_flags(args: argparse.Namespace) -> None:
    if getattr(args, "save_activations", False) and getattr(args, "from_activations", None):
        raise BadInputError("--save-activations and --from-activations exclude each other")


def _caches_for(study, model, config, prompts, args: argparse.Namespace) -> tuple[dict, dict[str, bytes]]:
    """The study's caches (extracted, or read from ``--from-activations``) and the file to save, if asked."""
    from dataclasses import asdict

    from interp_tl.cache import cache_bytes, load_caches
    from interp_tl.errors import ProvenanceMismatchError
    from interp_tl.models import model_provenance

    meta = {"study": study.name, "prompts": prompts.identity(), "config": asdict(config)}
    source = getattr(args, "from_activations", None)
    if source:
        caches, recorded = load_caches(source, model)
        for key in ("study", "prompts"):
            if recorded.get(key) != _json_round_trip(meta[key]):
                raise ProvenanceMismatchError(
                    f"{source} holds other {key} ({recorded.get(key)!r}) than this run's ({meta[key]!r})")
        return caches, {}
    caches = study.extract(model, config, prompts, progress=not args.quiet)
    if not getattr(args, "save_activations", False):
        return caches, {}
    return caches, {f"{study.name}_activations.safetensors": cache_bytes(caches, {**meta,
                                                                                   "model": model_provenance(model)})}


def _json_round_trip(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value))


def run_identity(args: argparse.Namespace, chosen: dict[str, Any]) -> dict[str, str]:
    """What identifies this invocation's results: the command and a hash of the model and every setting.

    Deterministic (the same command gives the same id, so results stay byte-identical); the index
    uses it to tell files of one run from files of several.
    """
    import hashlib
    import json

    settings = {"model": args.model, "processing": args.processing, "dtype": args.dtype,
                "head": getattr(args, "head", None),
                "configs": {name: dataclasses.asdict(config) for name, config in chosen.items()}}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"command": args.study, "id": digest}


def run_one(study, model, config, args: argparse.Namespace, identity: dict[str, str] | None = None,
            prompts=None) -> tuple[Any, dict[str, bytes]]:
    """Run one study as the arguments ask (extract or load caches, analyse); its result and rendered files.

    ``prompts``: the study's ``prepare(model, config)`` where the caller has made it already.
    """
    from interp_tl.report import render
    from interp_tl.results import StudyResult

    extra: dict[str, bytes] = {}
    if study.extract is None:
        result = study.run(model, config, progress=not args.quiet)
    else:
        prompts = study.prepare(model, config) if prompts is None else prompts
        caches, extra = _caches_for(study, model, config, prompts, args)
        result = study.analyse(model, config, prompts, caches, progress=not args.quiet)
    if identity is not None:
        result = StudyResult(result.study, result.data, {**result.provenance, "run": identity})
    return result, {**render(result), **extra}


def _run_head(args: argparse.Namespace, model, config) -> tuple[list[str], dict[str, bytes]]:
    from interp_tl.models import model_provenance, versions
    from interp_tl.report import render_head
    from interp_tl.results import StudyResult, provenance
    from interp_tl.studies.heads import head_lines, head_report

    report = head_report(model, args.head, config)
    name = report["head"]
    prov = provenance("head", model_provenance(model), dataclasses.asdict(config), versions(),
                      {"name": "parallel-math-7", "n": config.n_pairs, "seed": config.seed,
                       "languages": list(config.langs)}, head=name)
    result = StudyResult("head", report, {**prov, "run": run_identity(args, {"head": config})})
    return head_lines(report), render_head(result)


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(chosen: dict[str, Any], cfg) -> None:
    """Refuse, in one line, a run whose prompts and caches would not fit in the memory available.

    The estimate per study: every prompt it tokenizes (about 4 kB of Python objects) plus its
    one-position cache (about ``4 n_layers + 8`` vectors of ``d_model`` float32 per prompt), times
    three for the analyses' float64 copies.
    """
    from interp_tl.studies import STUDIES

    available = _available_memory()
    if available is None:
        return
    for name, config in chosen.items():
        rows = STUDIES[name].rows(config) if name in STUDIES else config.n_pairs * len(config.langs)
        need = 3 * rows * (4096 + (4 * cfg.n_layers + 8) * cfg.d_model * 4)
        if need > available:
            raise BadInputError(
                f"{name} would need about {need / 2**30:.1f} GiB for {rows} prompts on this model, "
                f"more than the {available / 2**30:.1f} GiB available: use fewer pairs")


def check_against_model(chosen: dict[str, Any], cfg, head: str | None = None) -> None:
    """Every setting that depends on the model (layers, heads, sizes), checked on its config alone."""
    from types import SimpleNamespace

    from interp_tl.studies import STUDIES
    from interp_tl.studies.heads import head_in_model

    shape = SimpleNamespace(cfg=cfg)
    if head is not None:
        head_in_model(shape, head)
    for name, config in chosen.items():
        study = STUDIES["heads"] if name == "head" else STUDIES[name]
        if study.check is not None:
            study.check(shape, config)
    check_memory(chosen, cfg)


def run(args: argparse.Namespace, emit=print) -> None:
    """Run the study (or all of them) the parsed arguments ask for, emitting lines as each finishes.

    Order: the settings (no torch), the output folder (nothing created), the device, the model's
    config against the settings and the memory, then the model; each study's files are written
    into a staging folder and moved into ``--out`` as a set when the study completes, and the
    index is rebuilt from the files present after each.
    """
    chosen = configs(args)
    _check_activation_flags(args)
    from interp_tl.report import check_out_dir

    check_out_dir(args.out)
    from interp_tl import distributed

    ctx, args.device = distributed.setup(args.device, args.n_devices)
    try:
        _run_checked(args, chosen, ctx, emit)
    finally:
        distributed.teardown()


class _NoFiles:
    """Where a rank other than 0 of a ``torchrun`` run writes: nowhere."""

    def __init__(self, out):
        self.out = Path(out)

    def __enter__(self) -> _NoFiles:
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def commit(self, files) -> list:
        return []


def _run_checked(args: argparse.Namespace, chosen: dict[str, Any], ctx, emit) -> None:
    from interp_tl.models import check_devices, load_model, model_config
    from interp_tl.report import Staging

    main_rank = ctx is None or ctx.is_main
    if not main_rank:
        emit, args.quiet = (lambda line: None), True
    if args.study == "head":
        from interp_tl.studies.heads import parse_head

        parse_head(args.head)
    check_devices(args.device, args.n_devices)
    check_against_model(chosen, model_config(args.model), getattr(args, "head", None))
    if not args.quiet:
        print(f"interp-tl: loading {args.model} (processing {args.processing}, {args.dtype}, {args.device})",
              file=sys.stderr)
    model = load_model(args.model, args.processing, args.dtype, args.device, n_devices=args.n_devices)
    identity = run_identity(args, chosen)
    if ctx is not None:
        identity = {**identity, "distributed": ctx.record()}
    with (Staging(args.out) if main_rank else _NoFiles(args.out)) as staging:
        if args.study == "head":
            lines, files = _run_head(args, model, chosen["head"])
            for line in [*lines, *[f"  wrote {p}" for p in staging.commit(files)]]:
                emit(line)
            if main_rank:
                from interp_tl.report import write_index

                _emit_index(write_index(staging.out), emit)
        else:
            _run_studies(args, chosen, model, identity, staging, emit, main_rank)


def _extraction_requests(chosen: dict[str, Any], model, args: argparse.Namespace) -> tuple[list[tuple], dict]:
    """The last-token extractions the chosen studies will ask for, and the prompts prepared for them.

    Requests are ``(tokens, hooks, batch size)``; studies on the same prompts (same problems,
    languages, BOS and batch size) then share one forward pass over them
    (:func:`interp_tl.cache.shared_extractions`). The prompts (``{name: prompts}``) are handed on
    to the studies so none is tokenized twice. Nothing when caches are read from a file.
    """
    from interp_tl.studies import STUDIES

    if getattr(args, "from_activations", None):
        return [], {}
    requests, prepared = [], {}
    for name, config in chosen.items():
        study = STUDIES[name]
        if study.extract is not None and study.prepare is not None and study.hooks is not None:
            prepared[name] = study.prepare(model, config)
            requests.append((prepared[name].stacked(), study.hooks(model, config), config.batch_size))
    return requests, prepared


def _run_studies(args, chosen: dict[str, Any], model, identity, staging, emit, main_rank: bool) -> None:
    from interp_tl.cache import shared_extractions
    from interp_tl.report import write_index
    from interp_tl.studies import STUDIES

    index: list[Path] = []
    requests, prepared = _extraction_requests(chosen, model, args)
    with shared_extractions(model, requests):
        for name, config in chosen.items():
            study = STUDIES[name]
            result, files = run_one(study, model, config, args, identity, prepared.get(name))
            paths = staging.commit(files)
            emit(f"{name}: {study.headline(result)}")
            for path in paths:
                emit(f"  wrote {path}")
            if main_rank:
                index = write_index(staging.out)  # never describes files that are not there, even if interrupted
    _emit_index(index, emit)


def _emit_index(paths: list[Path], emit) -> None:
    for path in paths:
        if path.suffix != ".json":
            emit(f"  wrote {path}")


class _Terminated(KeyboardInterrupt):
    """SIGTERM (e.g. torchrun stopping the other processes of a failed run), raised to unwind."""


def _terminated(signum, frame) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``interp-tl`` console script.

    Under ``torchrun`` only rank 0 prints; a rank that fails says why in one line (no traceback),
    torchrun stops the others (they unwind quietly, so staging folders are removed), and nothing
    partial is written.
    """
    import os
    import signal

    args = build_parser().parse_args(argv)
    rank = os.environ.get("RANK", "0")
    distributed = os.environ.get("WORLD_SIZE", "1") not in ("", "1")
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        run(args)
    except InterpTLError as exc:
        if rank == "0":
            print(f"interp-tl: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _Terminated:
        if not distributed:
            print("interp-tl: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        if rank == "0":
            print("interp-tl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `interp-tl ... | head`: the reader left; files are complete
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - a distributed run reports a failed rank in one line
        if not distributed:
            raise
        print(f"interp-tl: error: rank {rank} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}",
              file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
