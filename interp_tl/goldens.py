"""Regression goldens: a model's per-layer alignment z and embedding z, recorded once, compared two-sided.

A goldens file (JSON, ``"format": FORMAT``) holds the statistics of one model (:data:`ALIGNMENT_STATISTICS`
per layer, :data:`EMBEDDING_STATISTICS`), the :class:`GoldenSettings` that produced them, the model's
identity (name, weight processing, exact weights fingerprint and a few sampled values of every
parameter) and the library versions. :func:`check_compatible` refuses a file recorded

* on another architecture (parameter names or shapes differ),
* on other weights: the sampled parameter values moved by more than :data:`OTHER_WEIGHTS` of their
  size (median over parameters), e.g. GPT-2-shaped random weights against GPT-2 goldens, or
* with other settings;

weights that moved less (one edited weight, a fine-tune, a change in how weights are loaded or
converted) are compared, not refused: catching such changes is what the goldens are for.
:func:`compare` then checks every recorded number two-sided, ``|now - golden| <= atol + rtol·|golden|``,
and :func:`failure_table` prints the misses as one table. :func:`record` refuses to record a model
whose weights look untrained (:func:`refuse_untrained`; the embedded models are exempt).

The pytest fixture built on this is ``z_regression`` (:mod:`interp_tl.testing`); the project's own
files are recorded with ``python experiments/record_goldens.py --model NAME``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from interp_tl.errors import BadInputError, ProvenanceMismatchError

#: Format tag of the goldens files this module writes and reads.
FORMAT = "interp_tl z-regression goldens 1"
#: Per-layer statistics: key -> (stage of :mod:`interp_tl.analyses.alignment`, field of its statistics).
#: ``z`` is the research scripts' Monte Carlo z, ``z_exact`` the exact-null z (no sampling).
ALIGNMENT_STATISTICS = {
    "z_pre": ("pre", "z"),
    "z_post_attn": ("post_attn", "z"),
    "z_post_mlp": ("post_mlp", "z"),
    "z_exact_pre": ("pre", "z_exact"),
    "z_exact_post_attn": ("post_attn", "z_exact"),
    "z_exact_post_mlp": ("post_mlp", "z_exact"),
}
#: Embedding statistics: key -> (variant, reduction, field) of
#: :func:`interp_tl.analyses.embedding.embedding_alignment`; ``embed_pos`` only where the model adds
#: a position embedding (GPT-2).
EMBEDDING_STATISTICS = {
    "z_raw_embed_last_token": ("embed", "last_token", "z"),
    "z_raw_embed_mean_no_bos": ("embed", "mean_no_bos", "z"),
    "z_embed_pos_last_token": ("embed_pos", "last_token", "z"),
    "z_embed_pos_mean_no_bos": ("embed_pos", "mean_no_bos", "z"),
    "z_exact_raw_embed_last_token": ("embed", "last_token", "z_exact"),
    "z_exact_raw_embed_mean_no_bos": ("embed", "mean_no_bos", "z_exact"),
    "z_exact_embed_pos_last_token": ("embed_pos", "last_token", "z_exact"),
    "z_exact_embed_pos_mean_no_bos": ("embed_pos", "mean_no_bos", "z_exact"),
}
#: Default tolerance, ``atol + rtol·|golden|`` either side (see docs/regression.md for what it is set against).
DEFAULT_ATOL = 2e-3
DEFAULT_RTOL = 1e-4
#: Prompts per forward pass.
BATCH_SIZE = 32
#: Values sampled from every parameter (evenly spaced over its flattened entries) for the identity check.
SAMPLE_SIZE = 8
#: Median relative change of the sampled parameters above which the weights are another model's.
OTHER_WEIGHTS = 0.5
#: Recording refuses hub models whose next-token loss on :data:`TEXT` is above this (nats/token), or above
#: :data:`UNIFORM_FRACTION` of a uniform guess, ln(vocabulary size): GPT-2 small gets ~3-4, GPT-2-shaped
#: random weights 11.0 (ln 50257 = 10.8).
MAX_TRAINED_LOSS = 6.0
#: See :data:`MAX_TRAINED_LOSS`; the bound that matters for vocabularies under e^8 ~ 3000 tokens.
UNIFORM_FRACTION = 0.75
#: English text of the untrained-weights check.
TEXT = ("The quick brown fox jumps over the lazy dog. In the beginning of the year, the city council "
        "met to discuss the budget for schools, roads and public parks.")
#: Models recorded without the untrained-weights check (the embedded ones; toy-random is random on purpose).
EMBEDDED_PREFIX = "interp-tl/"


@dataclass(frozen=True, kw_only=True)
class GoldenSettings:
    """What the goldens are computed with; recorded in the file, and a file with other settings is refused.

    The defaults keep a check on GPT-2 small within seconds on a CPU (docs/regression.md has the
    timings and what fewer pairs cost in resolution).

    Attributes:
        n_pairs: problems per language (a multiple of 5; the studies use 200).
        langs: the two languages compared.
        seed: problem-set seed (42 is the evaluation set).
        n_perms: permutations of the Monte Carlo z (the exact-null z needs none).
        perm_seed: their seed.
        prepend_bos: BOS before each prompt (None: the model's default; the file records the choice made).
    """

    n_pairs: int = 50
    langs: tuple[str, ...] = ("zh", "en")
    seed: int = 42
    n_perms: int = 500
    perm_seed: int = 42
    prepend_bos: bool | None = None

    def __post_init__(self) -> None:
        from interp_tl.studies.base import check_int, check_langs

        object.__setattr__(self, "langs", tuple(self.langs))
        if check_int(self.n_pairs, "n_pairs", 5) % 5:
            raise BadInputError(f"n_pairs must be a positive multiple of 5, got {self.n_pairs}")
        check_langs(self.langs, 2)
        check_int(self.seed, "seed", 0)
        check_int(self.n_perms, "n_perms", 2)
        check_int(self.perm_seed, "perm_seed", 0)
        if self.prepend_bos is not None and not isinstance(self.prepend_bos, bool):
            raise BadInputError(f"prepend_bos must be True, False or None, got {self.prepend_bos!r}")

    def resolved(self, model) -> GoldenSettings:
        """These settings with ``prepend_bos`` decided (the model's default when None)."""
        if self.prepend_bos is not None:
            return self
        return replace(self, prepend_bos=bool(model.cfg.default_prepend_bos))

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON values (``langs`` a list)."""
        out = asdict(self)
        out["langs"] = list(self.langs)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> GoldenSettings:
        """Settings from :meth:`as_dict` (or a goldens file's ``settings``)."""
        return cls(**{**values, "langs": tuple(values["langs"])})


class Difference(NamedTuple):
    """One compared statistic: ``layer`` is None for the embedding statistics; None values are undefined z."""

    statistic: str
    layer: int | None
    golden: float | None
    now: float | None
    difference: float | None
    tolerance: float
    ok: bool


def _field(stats: Mapping[str, Any], name: str) -> float | None:
    value = stats.get(name)
    return None if value is None else float(value)


def compute(model, settings: GoldenSettings = GoldenSettings()) -> dict[str, Any]:
    """The pinned statistics of ``model``: one last-token and one embedding-mean pass over the prompts.

    Returns:
        ``{"layers": [...], "alignment": {key: [value per layer]}, "embedding": {key: value}}``
        (None where a z is undefined); the same numbers as ``run_alignment`` / ``run_embedding``
        with these settings and ``n_boot=0``.
    """
    from interp_tl.analyses import alignment as align
    from interp_tl.analyses import embedding as emb
    from interp_tl.cache import extract, split_languages
    from interp_tl.studies.embedding import embed_hooks
    from interp_tl.tokens import parallel_prompts

    prompts = parallel_prompts(model, settings.n_pairs, settings.seed, settings.langs, settings.prepend_bos)
    layers = list(range(model.cfg.n_layers))
    both, embeds = prompts.stacked(), embed_hooks(model)
    last = split_languages(extract(model, both, embeds + align.hook_names(layers), BATCH_SIZE, "last"), prompts.langs)
    mean = split_languages(extract(model, both, embeds, BATCH_SIZE, "mean"), prompts.langs)
    a, b = prompts.langs
    rows = align.layer_alignment(last[a], last[b], layers=layers, n_perms=settings.n_perms,
                                 perm_seed=settings.perm_seed, n_boot=0).layer_results
    embedding = emb.embedding_alignment(last[a], last[b], mean[a], mean[b], n_perms=settings.n_perms,
                                        perm_seed=settings.perm_seed, n_boot=0)["variants"]
    return {
        "layers": layers,
        "alignment": {key: [_field(row["stats"][stage], name) for row in rows]
                      for key, (stage, name) in ALIGNMENT_STATISTICS.items()},
        "embedding": {key: _field(embedding[variant][reduction], name)
                      for key, (variant, reduction, name) in EMBEDDING_STATISTICS.items() if variant in embedding},
    }


def sample_positions(numel: int, size: int = SAMPLE_SIZE) -> list[int]:
    """``min(size, numel)`` distinct positions evenly spaced over ``[0, numel)``, first and last included.

    Integer arithmetic: float32 positions would round past the end of tensors above 2^24 entries.
    """
    count = min(size, numel)
    return [i * (numel - 1) // max(count - 1, 1) for i in range(count)]


def weights_sample(model, size: int = SAMPLE_SIZE) -> dict[str, dict[str, Any]]:
    """``{parameter: {"shape": [...], "values": [...]}}``: ``size`` evenly spaced values of each parameter."""
    import torch

    out = {}
    for name, param in sorted(model.named_parameters()):
        flat = param.detach().reshape(-1)
        index = torch.tensor(sample_positions(flat.numel(), size), dtype=torch.long, device=flat.device)
        out[name] = {"shape": list(param.shape), "values": flat[index].to(torch.float64).cpu().tolist()}
    return out


def header(model, name: str, processing: str, settings: GoldenSettings = GoldenSettings()) -> dict[str, Any]:
    """A goldens file without its statistics (what :func:`check_compatible` reads).

    Format, model (name, processing, weights fingerprint), resolved settings, versions and the
    weights sample (:func:`weights_sample`).
    """
    from interp_tl.models import versions, weights_fingerprint

    return {"format": FORMAT,
            "model": {"name": name, "processing": processing, "weights_fingerprint": weights_fingerprint(model)},
            "settings": settings.resolved(model).as_dict(), "versions": versions(),
            "weights_sample": weights_sample(model)}


def architecture_difference(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """How two parameter samples differ in names or shapes (None: same architecture)."""
    missing = sorted(set(recorded) - set(now))
    extra = sorted(set(now) - set(recorded))
    if missing or extra:
        return (f"{len(missing)} recorded parameters missing (e.g. {missing[:1]}), "
                f"{len(extra)} new (e.g. {extra[:1]})")
    for key in sorted(recorded):
        if list(recorded[key]["shape"]) != list(now[key]["shape"]):
            return f"{key} has shape {list(now[key]['shape'])}, recorded {list(recorded[key]['shape'])}"
    return None


def weights_change(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> tuple[float, int]:
    """Median over parameters of ``|now - golden| / max(|now|, |golden|)`` on the samples, and how many moved.

    0 for the same weights, about 1.4 for two independent random draws of the same scale, 1 against zeros.
    """
    changes = []
    for key in recorded:
        old, new = np.asarray(recorded[key]["values"], float), np.asarray(now[key]["values"], float)
        scale = max(float(np.linalg.norm(old)), float(np.linalg.norm(new)))
        changes.append(float(np.linalg.norm(new - old)) / scale if scale > 0 else 0.0)
    return float(np.median(changes)), int(np.count_nonzero(changes))


def settings_difference(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """The settings that differ, as ``key recorded X, here Y`` (None: the same)."""
    keys = sorted(set(recorded) | set(now))
    diff = [f"{key} recorded {recorded.get(key)!r}, here {now.get(key)!r}" for key in keys
            if recorded.get(key) != now.get(key)]
    return "; ".join(diff) or None


def check_compatible(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """Refuse goldens of another architecture, other weights or other settings.

    Args:
        recorded: a goldens file (:func:`load`).
        now: :func:`header` (or :func:`document`) of the model compared, with its settings.

    Returns:
        None when the weights are those recorded, else one line on how they changed (compared anyway).

    Raises:
        ProvenanceMismatchError: another architecture, other weights or other settings.
    """
    who = f"goldens of {recorded['model']['name']!r}"
    arch = architecture_difference(recorded["weights_sample"], now["weights_sample"])
    if arch is not None:
        raise ProvenanceMismatchError(f"{who} were recorded on another architecture ({arch}): refusing to compare")
    old, new = recorded["model"]["weights_fingerprint"], now["model"]["weights_fingerprint"]
    if old == new:
        note = None
    else:
        median, moved = weights_change(recorded["weights_sample"], now["weights_sample"])
        change = (f"fingerprint {old}, this model's {new}; the sampled values of {moved} of "
                  f"{len(now['weights_sample'])} parameters moved, median {median:.1%} of their size")
        if median > OTHER_WEIGHTS:
            raise ProvenanceMismatchError(f"{who} were recorded on other weights ({change}): not the same model, "
                                          "refusing to compare")
        note = f"the weights changed since recording ({change})"
    diff = settings_difference(recorded["settings"], now["settings"])
    if diff is not None:
        raise ProvenanceMismatchError(f"{who} were recorded with other settings ({diff}): refusing to compare")
    return note


def lm_loss(model, text: str = TEXT) -> float:
    """Mean next-token loss (nats/token) of ``model`` on ``text``."""
    import torch

    with torch.inference_mode():
        return float(model(text, return_type="loss"))


def refuse_untrained(model, name: str) -> None:
    """Refuse to record goldens of a model that looks untrained.

    The embedded models as :func:`interp_tl.models.load_model` made them (and edits of them) are
    exempt: toy-random is random on purpose, polyglot-toy is trained on the problem set, not on
    English prose. A model built by the caller is judged whatever its ``cfg.model_name``.

    Raises:
        BadInputError: the loss on :data:`TEXT` is above :func:`max_trained_loss` (a model trained on
            other text than English prose may need ``allow_untrained``).
    """
    from interp_tl.models import PROCESSING, model_provenance

    if name.startswith(EMBEDDED_PREFIX) and model_provenance(model)["processing"] in PROCESSING:
        return
    loss, bound = lm_loss(model), max_trained_loss(model.cfg.d_vocab)
    if not loss <= bound:
        raise BadInputError(f"refusing to record goldens of {name!r}: loss {loss:.2f} nats/token on English text, "
                            f"above {bound:.2f} (untrained weights?)")


def max_trained_loss(d_vocab: int) -> float:
    """The loss above which weights look untrained: ``min(MAX_TRAINED_LOSS, UNIFORM_FRACTION·ln d_vocab)``."""
    return min(MAX_TRAINED_LOSS, UNIFORM_FRACTION * math.log(d_vocab))


def document(model, name: str, processing: str, settings: GoldenSettings = GoldenSettings(),
             head: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A whole goldens file for ``model``: :func:`header` (``head`` when already made) and the statistics.

    Keys in file order: format, model, settings, layers, alignment, embedding, versions, weights_sample.
    """
    head = header(model, name, processing, settings) if head is None else head
    statistics = compute(model, GoldenSettings.from_dict(head["settings"]))
    return {"format": head["format"], "model": head["model"], "settings": head["settings"], **statistics,
            "versions": head["versions"], "weights_sample": head["weights_sample"]}


def write(goldens: Mapping[str, Any], path: str | Path) -> None:
    """Write a goldens file (strict JSON, atomically)."""
    from interp_tl.files import atomic_write
    from interp_tl.results import json_bytes

    atomic_write(path, json_bytes(goldens))


def record(model, name: str, path: str | Path, settings: GoldenSettings = GoldenSettings(),
           processing: str = "none", allow_untrained: bool = False) -> dict[str, Any]:
    """Compute goldens of ``model`` and write them to ``path``.

    Raises:
        BadInputError: the weights look untrained (:func:`refuse_untrained`) and ``allow_untrained`` is False.
    """
    if not allow_untrained:
        refuse_untrained(model, name)
    goldens = document(model, name, processing, settings)
    write(goldens, path)
    return goldens


def file_name(model_name: str) -> str:
    """The goldens file of a model: ``gpt2`` -> ``gpt2.json``, ``a/b`` -> ``a__b.json``."""
    return f"{model_name.replace('/', '__')}.json"


def load(path: str | Path) -> dict[str, Any]:
    """Read a goldens file.

    Raises:
        ProvenanceMismatchError: not JSON, or not a goldens file of :data:`FORMAT`.
    """
    try:
        goldens = json.loads(Path(path).read_text("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProvenanceMismatchError(f"{str(path)!r} is not a goldens file (not JSON: {exc})") from None
    if not isinstance(goldens, dict) or goldens.get("format") != FORMAT:
        found = goldens.get("format") if isinstance(goldens, dict) else None
        raise ProvenanceMismatchError(f"{str(path)!r} is not a goldens file of format {FORMAT!r} (found {found!r}): "
                                      "record it again")
    return goldens


def _tolerance(statistic: str, atol: float, rtol: float,
               tolerances: Mapping[str, Mapping[str, float]]) -> tuple[float, float]:
    own = tolerances.get(statistic, {})
    return float(own.get("atol", atol)), float(own.get("rtol", rtol))


def _row(statistic: str, layer: int | None, want: float | None, got: float | None, atol: float,
         rtol: float) -> Difference:
    tol = atol + rtol * abs(want) if want is not None else atol
    if want is None or got is None:
        return Difference(statistic, layer, want, got, None, tol, want is None and got is None)
    diff = got - want
    return Difference(statistic, layer, want, got, diff, tol, math.isfinite(diff) and abs(diff) <= tol)


def check_tolerances(atol: float, rtol: float, tolerances: Mapping[str, Mapping[str, float]],
                     known: set[str] | None = None) -> None:
    """Refuse tolerances that are negative, not numbers, or for statistics that are not pinned.

    Args:
        atol: absolute tolerance.
        rtol: relative tolerance.
        tolerances: per statistic, ``{"z_post_mlp": {"atol": 0.01, "rtol": 0}}``.
        known: the statistics they may name (default: every pinned statistic).

    Raises:
        BadInputError: what is wrong, in one line.
    """
    known = set(ALIGNMENT_STATISTICS) | set(EMBEDDING_STATISTICS) if known is None else known
    unknown = sorted(set(tolerances) - known)
    if unknown:
        raise BadInputError(f"tolerances for unknown statistics {unknown}; the statistics are {sorted(known)}")
    keys = sorted({key for own in tolerances.values() for key in own} - {"atol", "rtol"})
    if keys:
        raise BadInputError(f"a statistic's tolerance takes only atol and rtol, got {keys}")
    values = [atol, rtol] + [v for own in tolerances.values() for v in own.values()]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in values):
        raise BadInputError(f"tolerances must be non-negative numbers, got atol={atol!r}, rtol={rtol!r}, "
                            f"tolerances={dict(tolerances)!r}")


def compare(recorded: Mapping[str, Any], current: Mapping[str, Any], atol: float = DEFAULT_ATOL,
            rtol: float = DEFAULT_RTOL, tolerances: Mapping[str, Mapping[str, float]] | None = None
            ) -> list[Difference]:
    """Every recorded statistic against ``current``, two-sided: ok when ``|now - golden| <= atol + rtol·|golden|``.

    Args:
        recorded: a goldens file (:func:`load`).
        current: :func:`compute` (or :func:`document`) of the model now.
        atol: absolute tolerance.
        rtol: tolerance relative to ``|golden|``.
        tolerances: per statistic, ``{"z_post_mlp": {"atol": 0.01, "rtol": 0}}``, overriding the two above.

    Returns:
        One :class:`Difference` per recorded number; a statistic missing now counts as ``None``
        (undefined), and None matches only None.

    Raises:
        BadInputError: a tolerance for a statistic the file does not have, a key other than atol and
            rtol, or a negative tolerance.
    """
    tolerances = dict(tolerances or {})
    check_tolerances(atol, rtol, tolerances, set(recorded["alignment"]) | set(recorded["embedding"]))
    out = []
    for statistic, wants in recorded["alignment"].items():
        tol = _tolerance(statistic, atol, rtol, tolerances)
        gots = list(current["alignment"].get(statistic, []))
        gots += [None] * (len(wants) - len(gots))
        out += [_row(statistic, layer, w, g, *tol) for layer, w, g in zip(recorded["layers"], wants, gots)]
    for statistic, want in recorded["embedding"].items():
        out.append(_row(statistic, None, want, current["embedding"].get(statistic), *_tolerance(
            statistic, atol, rtol, tolerances)))
    return out


def _cell(value: float | None) -> str:
    return "null" if value is None else f"{value:.6g}"


def failure_table(rows: list[Difference]) -> str:
    """The rows as one text table: statistic, layer, golden, now, difference, tolerance."""
    header = ("statistic", "layer", "golden", "now", "difference", "tolerance")
    cells = [header] + [(r.statistic, "-" if r.layer is None else str(r.layer), _cell(r.golden), _cell(r.now),
                         "n/a" if r.difference is None else f"{r.difference:+.3g}", f"{r.tolerance:.3g}")
                        for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     .rstrip() for row in cells)
