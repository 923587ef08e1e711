"""pytest plugin: z-score regression checks of a model in your own test suite (fixture ``z_regression``).

Installed with the package (``pytest11`` entry point ``interp_tl.testing``; without the entry point,
``pytest_plugins = ["interp_tl.testing"]`` in your top-level ``conftest.py`` or ``-p interp_tl.testing``).
A whole test::

    def test_gpt2_alignment(z_regression):
        z_regression.check("gpt2")          # or a HookedTransformer you built

computes the pinned statistics (:mod:`interp_tl.goldens`: per-layer alignment z before / after
attention / after the MLP, Monte Carlo and exact-null, and the embedding z) and compares them with
the goldens file next to the test, ``<test module folder>/<module name>/<test name>.json`` (or
``basename=`` / ``fullpath=``). File handling is pytest-regressions' (``perform_regression_check``):
the first run records the file and fails ("File not found in data directory, created"), later runs
compare; ``--force-regen`` re-records a file that no longer matches (failing once), ``--regen-all``
re-records every file and passes. Written here: refusing a file of another architecture, other
weights or other settings; refusing to record untrained-looking weights; and the failure message,
one table of statistic, layer, golden, now, difference, tolerance.

The module imports neither torch nor pytest-regressions until a test uses the fixture, so the
plugin costs nothing in other test sessions of the same environment.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from interp_tl import goldens
from interp_tl.errors import BadInputError, InterpTLError, ProvenanceMismatchError

REGEN_HINT = "re-record with `pytest --force-regen` if the change is intended"


class ZRegression:
    """The ``z_regression`` fixture: ``check(model)`` against the goldens file of the test.

    Attributes:
        request: the test's fixture request.
        original_datadir: pytest-datadir's folder for the test module (where files are recorded).
        tmp_path: where the ``.obtained.json`` file of a failed comparison is written.
    """

    def __init__(self, request: pytest.FixtureRequest, original_datadir: Path, tmp_path: Path) -> None:
        self.request = request
        self.original_datadir = Path(original_datadir)
        self.tmp_path = Path(tmp_path)

    def _regen(self) -> bool:
        config = self.request.config
        return bool(config.getoption("force_regen") or config.getoption("regen_all"))

    def path(self, basename: str | None = None, fullpath: str | Path | None = None) -> Path:
        """The goldens file: ``fullpath``, else ``<module folder>/<module>/<basename or test name>.json``."""
        if basename is not None and fullpath is not None:
            raise BadInputError("pass basename or fullpath, not both")
        if fullpath is not None:
            return Path(fullpath)
        return self.original_datadir / f"{basename or re.sub(r'[^A-Za-z0-9_]', '_', self.request.node.name)}.json"

    def check(
        self,
        model: Any,
        *,
        basename: str | None = None,
        fullpath: str | Path | None = None,
        atol: float = goldens.DEFAULT_ATOL,
        rtol: float = goldens.DEFAULT_RTOL,
        tolerances: Mapping[str, Mapping[str, float]] | None = None,
        processing: str = "none",
        allow_untrained: bool = False,
        **settings: Any,
    ) -> dict[str, Any]:
        """Compare ``model``'s pinned statistics with its goldens file (recording it on the first run).

        Args:
            model: a model name for :func:`interp_tl.models.load_model` (``"gpt2"``) or a HookedTransformer.
            basename: file name (without ``.json``) in the test module's data folder; default the test's name.
            fullpath: the goldens file's path instead.
            atol: absolute tolerance (default :data:`interp_tl.goldens.DEFAULT_ATOL`).
            rtol: tolerance relative to ``|golden|`` (default :data:`interp_tl.goldens.DEFAULT_RTOL`).
            tolerances: per statistic, e.g. ``{"z_post_mlp": {"atol": 0.01}}``.
            processing: weight processing when ``model`` is a name (``none``, ``fold_ln``, ``default``).
            allow_untrained: record even when the weights look untrained.
            **settings: :class:`interp_tl.goldens.GoldenSettings` fields (``n_pairs``, ``langs``,
                ``seed``, ``n_perms``, ``perm_seed``, ``prepend_bos``).

        Returns:
            The goldens document of the model now (what was compared or recorded).
        """
        __tracebackhide__ = True
        try:
            return self._check(model, self.path(basename, fullpath), atol, rtol, tolerances, processing,
                               allow_untrained, goldens.GoldenSettings(**settings))
        except InterpTLError as exc:
            refusal = f"z_regression: {exc}"
        pytest.fail(refusal, pytrace=False)

    def _check(self, model: Any, path: Path, atol: float, rtol: float,
               tolerances: Mapping[str, Mapping[str, float]] | None, processing: str, allow_untrained: bool,
               settings: goldens.GoldenSettings) -> dict[str, Any]:
        __tracebackhide__ = True
        from pytest_regressions.common import perform_regression_check

        goldens.check_tolerances(atol, rtol, tolerances or {})
        model, name, processing = resolve_model(model, processing)
        head = goldens.header(model, name, processing, settings)
        recorded, refusal, note = None, None, None
        if path.is_file():
            try:
                recorded = goldens.load(path)
                note = goldens.check_compatible(recorded, head)
            except ProvenanceMismatchError as exc:
                if not self._regen():
                    raise
                refusal = str(exc)
        if (recorded is None or self._regen()) and not allow_untrained:
            goldens.refuse_untrained(model, name)
        now = goldens.document(model, name, processing, settings, head)

        def check_fn(obtained: Path, expected: Path) -> None:
            __tracebackhide__ = True
            if refusal is not None:
                raise AssertionError(refusal)
            rows = goldens.compare(goldens.load(expected), now, atol, rtol, tolerances)
            failed = [row for row in rows if not row.ok]
            if failed:
                raise AssertionError(failure_message(name, expected, failed, len(rows), note))
            if note:
                warnings.warn(f"z_regression of {name!r}: all {len(rows)} statistics within tolerance, but {note}",
                              UserWarning, stacklevel=2)

        perform_regression_check(datadir=self.tmp_path, original_datadir=self.original_datadir,
                                 request=self.request, check_fn=check_fn, dump_fn=lambda p: goldens.write(now, p),
                                 extension=".json", fullpath=path,
                                 obtained_filename=self.tmp_path / f"{path.stem}.obtained.json")
        return now


def resolve_model(model: Any, processing: str) -> tuple[Any, str, str]:
    """``(HookedTransformer, name, processing)``: loaded by name, or the caller's model with its provenance."""
    from interp_tl.models import load_model, model_provenance

    if isinstance(model, str):
        return load_model(model, processing=processing), model, processing
    known = model_provenance(model)
    return model, str(known["name"]), str(known["processing"])


def failure_message(name: str, path: Path, failed: list[goldens.Difference], total: int, note: str | None) -> str:
    """The one-table failure: which file, how many statistics moved, the table, why the weights differ."""
    lines = [f"z-regression of {name!r}: {len(failed)} of {total} statistics outside tolerance "
             f"(|now - golden| > atol + rtol*|golden|; goldens {path})",
             goldens.failure_table(failed)]
    if note:
        lines.append(f"note: {note}")
    lines.append(REGEN_HINT)
    return "\n".join(lines)


@pytest.fixture
def z_regression(request: pytest.FixtureRequest, tmp_path: Path) -> ZRegression:
    """Z-score regression checks against goldens files recorded next to the test (:class:`ZRegression`)."""
    try:
        import pytest_regressions  # noqa: F401
    except ImportError:
        pytest.fail("z_regression needs pytest-regressions: pip install 'interp_tl[testing]'", pytrace=False)
    return ZRegression(request, request.getfixturevalue("original_datadir"), tmp_path)
