"""What every study is made of: its registry record, the settings studies share, and provenance.

A study is one module that owns its whole surface and ends with one :class:`Study` record: name,
config dataclass, ``run``, ``plot``, ``headline`` and the hook points it reads. Studies that run
on the parallel prompts split ``run`` into ``prepare`` (the tokenized prompts), ``extract`` (the
caches it analyses, what ``--save-activations`` writes) and ``analyse`` (caches -> result), so a
saved cache can be analysed again without running the model (``--from-activations``).

Configs are frozen dataclasses whose Google-style ``Attributes:`` docstrings are the CLI's help
(see :mod:`interp_tl.cli`); shared settings (:class:`PromptSettings`, :class:`NullSettings`) are
inherited, so each is defined, documented and validated once. Invalid settings raise
:class:`~interp_tl.errors.BadInputError` when the config is built, before any model is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from interp_tl.errors import BadInputError
from interp_tl.prompts import check_languages, languages
from interp_tl.results import StudyResult, provenance


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int, or :class:`BadInputError` when it is not an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_langs(langs: tuple[str, ...], count: int | None, name: str = "langs") -> None:
    """Known, distinct languages; exactly ``count`` of them (None: at least two)."""
    check_languages(langs)
    if count is not None and len(langs) != count:
        raise BadInputError(f"{name} needs exactly {count} languages, got {len(langs)}: {' '.join(langs)}")
    if len(langs) < 2:
        raise BadInputError(f"{name} needs at least two languages to compare, got {' '.join(langs) or 'none'}")


@dataclass(frozen=True, kw_only=True)
class PromptSettings:
    """The parallel prompts a study runs on.

    Attributes:
        n_pairs: problems per language (a multiple of 5; 200 as the research scripts).
        langs: the languages compared (zh en as the research scripts).
        seed: problem-set seed (42 is the evaluation set).
        batch_size: prompts per forward pass.
        prepend_bos: put BOS before each prompt (None: the model's default, recorded).
    """

    n_pairs: int = 200
    langs: tuple[str, ...] = ("zh", "en")
    seed: int = 42
    batch_size: int = 32
    prepend_bos: bool | None = None

    #: How many languages the study compares (None: two or more).
    n_langs: ClassVar[int | None] = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "langs", tuple(self.langs))
        if check_int(self.n_pairs, "n_pairs", 5) % 5:
            raise BadInputError(f"n_pairs must be a positive multiple of 5 (n // 5 problems per category), "
                                f"got {self.n_pairs}")
        check_langs(self.langs, self.n_langs)
        check_int(self.seed, "seed", 0)
        check_int(self.batch_size, "batch_size", 1)
        _chain_post_init(self, PromptSettings)


@dataclass(frozen=True, kw_only=True)
class NullSettings:
    """The permutation null and the bootstrap of the matched-vs-scrambled statistics.

    Attributes:
        n_perms: permutations of the Monte Carlo null (the research scripts' z; headlines use the exact null).
        perm_seed: RandomState seed of the permutations (42 as the research scripts).
        n_boot: bootstrap resamples over pairs for the intervals (0: none).
    """

    n_perms: int = 500
    perm_seed: int = 42
    n_boot: int = 200

    def __post_init__(self) -> None:
        check_int(self.n_perms, "n_perms", 2)  # one permutation has no spread: its z is undefined
        check_int(self.perm_seed, "perm_seed", 0)
        check_int(self.n_boot, "n_boot", 0)
        _chain_post_init(self, NullSettings)


def _chain_post_init(obj: Any, cls: type) -> None:
    """Call the next ``__post_init__`` after ``cls`` in ``obj``'s MRO (shared settings are mixed in)."""
    parent = getattr(super(cls, obj), "__post_init__", None)
    if parent is not None:
        parent()


def all_languages() -> tuple[str, ...]:
    """Every language of the problem set (the default of studies that run in all of them)."""
    return tuple(languages())


def study_provenance(model, study: str, config: Any, prompts: Mapping[str, Any] | None = None,
                     **settings: Any) -> dict[str, Any]:
    """:func:`interp_tl.results.provenance` with the model's provenance, the config and the versions filled in."""
    from interp_tl.models import model_provenance, versions

    return provenance(study, model_provenance(model), asdict(config), versions(), prompts, **settings)


@dataclass(frozen=True)
class Study:
    """One study's registry record: everything the CLI, the report and ``all`` need to know.

    Attributes:
        name: the subcommand and the stem of its files.
        summary: one line for ``--help`` and the index.
        config: the config dataclass (its docstring's ``Attributes:`` are the flags' help).
        run: ``run(model, config, progress=False) -> StudyResult``.
        plot: ``plot(result) -> matplotlib Figure``.
        headline: ``headline(result) -> str``, the main finding in words.
        hooks: ``hooks(model, config) -> [hook names]`` it reads; None for weight-only studies.
        prepare: ``prepare(model, config) -> ParallelPrompts`` (studies that extract caches).
        extract: ``extract(model, config, prompts, progress) -> {label: ActivationCache}``.
        analyse: ``analyse(model, config, prompts, caches, progress) -> StudyResult``.
        check: ``check(model, config)``: every setting that depends on the model, checked on
            ``model.cfg`` alone (the CLI runs it on the config before loading any weights).
        count: ``count(config) -> int``, the prompts the study runs (default ``n_pairs`` per language).
        docs: the docs page that explains the study.
        table: ``table(result) -> (columns, rows)``, the study's key table for the HTML report.
    """

    name: str
    summary: str
    config: type
    run: Callable[..., StudyResult]
    plot: Callable[[StudyResult], Any]
    headline: Callable[[StudyResult], str]
    hooks: Callable[..., list[str]] | None = None
    prepare: Callable[..., Any] | None = None
    extract: Callable[..., dict[str, Any]] | None = None
    analyse: Callable[..., StudyResult] | None = None
    check: Callable[..., Any] | None = None
    count: Callable[[Any], int] | None = None
    docs: str = ""
    table: Callable[[StudyResult], tuple[list[str], list[list[Any]]]] | None = None

    def rows(self, config: Any) -> int:
        """How many prompts the study tokenizes and runs with ``config``."""
        if self.count is not None:
            return self.count(config)
        return getattr(config, "n_pairs", 0) * len(getattr(config, "langs", ()))

    @property
    def saves_activations(self) -> bool:
        """Whether the study reads caches that ``--save-activations`` can write."""
        return self.extract is not None
