"""The z_regression fixture as a user meets it: tests/user_suite/ run by pytest (pytester) as their own suite.

The suite is copied into a fresh folder and run in-process several times, the way a user's CI
would across commits: record, pass, a changed weight (one table), a checkpoint that was never
loaded (other weights: refused), goldens of another model or other settings (refused), and
--force-regen. ``-p interp_tl.testing`` is what the package's pytest11 entry point does when the
package is installed.
"""

import json
import shutil
from fnmatch import fnmatch
from pathlib import Path

import pytest

# pytester's in-process runs drop the modules first imported inside them, while `interp_tl` keeps the
# names it exported: the package's modules are imported here first, so that the user's code and the
# plugin share one interp_tl.models (one record of how each model was loaded), as in a real run.
import interp_tl.analyses.alignment  # noqa: F401
import interp_tl.analyses.embedding  # noqa: F401
import interp_tl.studies.embedding  # noqa: F401
from interp_tl import load_model  # noqa: F401

SUITE = Path(__file__).parents[1] / "user_suite"
PLUGIN = ("-p", "interp_tl.testing", "-p", "no:cacheprovider")
TABLE_HEADER = "*statistic*layer*golden*now*difference*tolerance*"

pytestmark = pytest.mark.slow


@pytest.fixture
def suite(pytester):
    for name in ("mymodel.py", "test_alignment_regression.py"):
        shutil.copy(SUITE / name, pytester.path / name)
    return pytester


def use_variant(pytester, variant, as_name="mymodel.py"):
    shutil.copy(SUITE / "variants" / variant, pytester.path / as_name)


def run(pytester, *args):
    return pytester.runpytest(*PLUGIN, "-q", *args)


def table_rows(lines):
    """(statistic, layer) of every row of the one failure table in pytest's report of the failure.

    The short test summary after it is left out: on CI (the CI variable set) pytest repeats the
    whole message there instead of its first line.
    """
    end = next((i for i, line in enumerate(lines) if "short test summary info" in line), len(lines))
    lines = lines[:end]
    start = next(i for i, line in enumerate(lines) if fnmatch(line, TABLE_HEADER))
    rows = []
    for line in lines[start + 1:]:
        cells = line.removeprefix("E").split()
        if len(cells) != 6:
            break
        rows.append((cells[0], cells[1]))
    assert rows and not any(fnmatch(line, TABLE_HEADER) for line in lines[start + 1:])  # one table
    return rows


def test_record_pass_perturb_refuse(suite):
    goldens = suite.path / "test_alignment_regression"
    first = run(suite)
    first.assert_outcomes(failed=2)
    first.stdout.fnmatch_lines(["*File not found in data directory, created:*"])
    recorded = json.loads((goldens / "test_polyglot_toy.json").read_text("utf-8"))
    assert recorded["model"]["name"] == "interp-tl/polyglot-toy" and recorded["settings"]["n_pairs"] == 50
    assert len(recorded["alignment"]["z_post_mlp"]) == 4 and recorded["embedding"]["z_raw_embed_last_token"] > 3

    run(suite).assert_outcomes(passed=2)

    use_variant(suite, "mymodel_nudged.py")
    nudged = run(suite)
    nudged.assert_outcomes(passed=2, warnings=1)
    nudged.stdout.fnmatch_lines(["*UserWarning: z_regression of 'interp-tl/polyglot-toy': all 32 statistics within "
                                 "tolerance, but the weights changed since recording (fingerprint *"])

    use_variant(suite, "mymodel_perturbed.py")
    moved = run(suite)
    moved.assert_outcomes(passed=1, failed=1)
    moved.stdout.fnmatch_lines([
        "*z-regression of 'interp-tl/polyglot-toy': * of 32 statistics outside tolerance*",
        TABLE_HEADER,
        "*note: the weights changed since recording (fingerprint *; the sampled values of 1 of * parameters moved*",
    ])
    rows = table_rows(moved.outlines)
    assert ("z_post_mlp", "2") in rows and ("z_exact_post_mlp", "3") in rows
    # only what layer 2's MLP output feeds moved: its output and every later layer, never the embeddings
    assert {layer for _, layer in rows} <= {"2", "3"} and len(rows) == len(set(rows))

    use_variant(suite, "mymodel_unloaded.py")
    unloaded = run(suite)
    unloaded.assert_outcomes(passed=1, failed=1)
    unloaded.stdout.fnmatch_lines(["*z_regression: goldens of 'interp-tl/polyglot-toy' were recorded on other "
                                   "weights (*): not the same model, refusing to compare*"])
    assert not any("statistic  layer" in line for line in unloaded.outlines)

    use_variant(suite, "test_other_goldens.py", "test_other_goldens.py")
    other = run(suite, "test_other_goldens.py")
    other.assert_outcomes(failed=2)
    other.stdout.fnmatch_lines_random([
        "*goldens of 'interp-tl/polyglot-toy' were recorded on another architecture (*): refusing to compare*",
        "*goldens of 'interp-tl/polyglot-toy' were recorded with other settings (n_pairs recorded 50, here 25): "
        "refusing to compare*",
    ])


def test_force_regen_and_the_untrained_refusal(suite):
    run(suite).assert_outcomes(failed=2)
    use_variant(suite, "mymodel_perturbed.py")
    regen = run(suite, "--force-regen")
    regen.assert_outcomes(passed=1, failed=1)
    regen.stdout.fnmatch_lines(["*Files differ and --force-regen set, regenerating file at:*"])
    run(suite).assert_outcomes(passed=2)

    use_variant(suite, "mymodel_unloaded.py")
    refused = run(suite, "--force-regen", "-k", "my_model")
    refused.assert_outcomes(failed=1)
    refused.stdout.fnmatch_lines(["*refusing to record goldens of *: loss * nats/token on English text, "
                                  "above * (untrained weights?)*"])
    run(suite, "-k", "my_model").assert_outcomes(failed=1)  # the perturbed model's goldens were kept


def test_bad_tolerances_are_refused_before_anything_is_recorded(pytester):
    pytester.makepyfile(test_tol="""
def test_typo(z_regression):
    z_regression.check("interp-tl/toy-random", tolerances={"z_post_mpl": {"atol": 0.1}})

def test_negative(z_regression):
    z_regression.check("interp-tl/toy-random", atol=-1e-3)
""")
    result = run(pytester)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines_random(["*z_regression: tolerances for unknown statistics ?'z_post_mpl'?; *",
                                        "*z_regression: tolerances must be non-negative numbers, got atol=-0.001*"])
    assert not (pytester.path / "test_tol").exists()
