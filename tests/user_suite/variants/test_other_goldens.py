"""Checks pointed at goldens they do not belong to: another model, other settings."""

from pathlib import Path

POLYGLOT_GOLDENS = Path(__file__).parent / "test_alignment_regression" / "test_polyglot_toy.json"


def test_random_toy_against_polyglot_goldens(z_regression):
    z_regression.check("interp-tl/toy-random", fullpath=POLYGLOT_GOLDENS)


def test_fewer_pairs_against_polyglot_goldens(z_regression):
    z_regression.check("interp-tl/polyglot-toy", fullpath=POLYGLOT_GOLDENS, n_pairs=25)
