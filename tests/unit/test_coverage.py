"""Coverage of the gap interval by simulation where the truth is known (bench/coverage.py's design).

The full grid (n in {15, 50, 200} x s in {0.3, 1.0} x isotropic / anisotropic) is the slow tier;
the fast tests check the harness itself: the truth, and that the old interval fails where it should.
Everything runs on fixed seeds, so the counts are the same on every run.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

BENCH = Path(__file__).resolve().parents[2] / "bench" / "coverage.py"


@pytest.fixture(scope="module")
def coverage():
    spec = importlib.util.spec_from_file_location("bench_coverage", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_coverage"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_coverage"]


def test_truth_is_deterministic_and_right_where_known(coverage):
    one = coverage.truth(0.3, "anisotropic", n_draws=200_000)
    assert one == coverage.truth(0.3, "anisotropic", n_draws=200_000)
    # The shared direction makes unrelated rows alike; matched rows are closer still.
    assert 0.6 < one["E_cos_other"] < one["E_cos_matched"] < 1.0
    assert coverage.truth(0.0, "isotropic", n_draws=100_000)["E_cos_matched"] == pytest.approx(1.0, abs=1e-12)
    iso = coverage.truth(1.0, "isotropic", n_draws=200_000)
    assert iso["E_cos_other"] == 0.0 and 0.4 < iso["E_cos_matched"] < 0.6


def test_old_interval_misses_and_new_one_covers_on_one_cell(coverage):
    # The worst case: strong alignment (s = 0.3), n = 50. 200 samples: the before interval held
    # the truth in 74% in the issue; a harness that cannot tell the two apart would be a broken test.
    row = coverage.run_cell("isotropic", 0.3, 50, reps=200, n_boot=200,
                            truth_row=coverage.truth(0.3, "isotropic", n_draws=200_000))
    assert row["coverage_pct"]["before"] < 85.0
    assert row["before_z_interval_holds_own_z_exact_pct"] < 5.0
    assert 92.0 <= row["coverage_pct"]["after"] <= 99.0


def test_offset_check_is_stable(coverage):
    rows = coverage.offset_check(n_boot=300)
    z = [r["z_exact"] for r in rows]
    after = np.array([r["after_gap_interval_over_sd"] for r in rows])
    assert max(z) - min(z) < 1e-4 * z[0]
    # Not an exact offset of S: the interval moves by O(e / |c|) (~7e-3 at e = 0.1, ~7e-5 at e = 0.001).
    np.testing.assert_allclose(after[1], after[0], rtol=2e-3)
    np.testing.assert_allclose(after[2], after[1], rtol=2e-4)
    before_z = [r["before_z_interval"][1] for r in rows]
    assert before_z[-1] < 0.5 * before_z[0]  # the old raw-moment z interval collapsed at e = 0.001


@pytest.mark.slow
def test_gap_interval_covers_on_the_whole_grid(coverage):
    failures = []
    with threadpool_limits(1):
        for kind in coverage.KINDS:
            for s in coverage.GRID_S:
                truth_row = coverage.truth(s, kind)
                for n in coverage.GRID_N:
                    row = coverage.run_cell(kind, s, n, reps=1000, n_boot=200, truth_row=truth_row, before=False)
                    got = row["coverage_pct"]["after"]
                    if not coverage.TARGET[0] <= got <= coverage.TARGET[1]:
                        failures.append((kind, s, n, got))
    assert not failures, f"coverage outside {coverage.TARGET}: {failures}"
