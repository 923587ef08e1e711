"""Reference code from the research scripts (shared/seeds), kept verbatim in logic for the tests."""

import numpy as np


# Verbatim from the research scripts: the number every result so far was reported with.
def seeds_matched_vs_scrambled_z(zh, en, n_perms=1000):
    zh_u = zh / np.linalg.norm(zh, axis=1, keepdims=True)
    en_u = en / np.linalg.norm(en, axis=1, keepdims=True)
    matched = np.mean(np.sum(zh_u * en_u, axis=1))
    rng = np.random.RandomState(42)
    scrambled = np.array([np.mean(np.sum(zh_u * en_u[rng.permutation(len(en_u))], axis=1)) for _ in range(n_perms)])
    z = (matched - scrambled.mean()) / scrambled.std()
    return float(z), float(matched), float(scrambled.mean()), float(scrambled.std())
