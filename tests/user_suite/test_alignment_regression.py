"""A user's regression suite: pin the zh/en alignment z-scores of two models with interp_tl's fixture.

Nothing to import or configure once interp_tl is installed (its pytest plugin registers the
``z_regression`` fixture). The first run records ``test_alignment_regression/<test name>.json``
next to this file and fails once, saying so; later runs compare two-sided and print one table
when numbers moved; ``pytest --force-regen`` re-records after an intended change.
"""

from mymodel import build_model


def test_polyglot_toy(z_regression):
    z_regression.check("interp-tl/polyglot-toy")


def test_my_model(z_regression):
    z_regression.check(build_model())
