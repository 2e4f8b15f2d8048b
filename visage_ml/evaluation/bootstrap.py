"""Bootstrap over identities: resample subjects, not comparisons.

Comparisons that share a subject are not independent, so intervals resample identities with
replacement (Bolle et al.'s "subsets bootstrap"). A resample is a vector of multiplicities
``m[k]`` (how often identity ``k`` was drawn); a genuine comparison of identity ``a`` then counts
``m[a]`` times and an impostor comparison of ``a`` and ``b`` counts ``m[a] * m[b]`` times. Every
statistic is recomputed from these weights on the precomputed scores: nothing is re-embedded or
re-scored.
"""

from __future__ import annotations

import math

import numpy as np

from visage_ml.data.pairs import PairSet


def identity_multiplicities(n_identities: int, rounds: int, *, seed: int) -> np.ndarray:
    """``(rounds, n_identities)`` counts of each identity in each resample (rows sum to K)."""
    rng = np.random.default_rng(seed)
    if rounds <= 0 or n_identities <= 0:
        return np.zeros((max(rounds, 0), max(n_identities, 0)), dtype=np.float64)
    p = np.full(n_identities, 1.0 / n_identities)
    return rng.multinomial(n_identities, p, size=rounds).astype(np.float64)


def comparison_weights(
    multiplicity: np.ndarray, id_a: np.ndarray, id_b: np.ndarray, genuine: np.ndarray
) -> np.ndarray:
    """Weight of comparisons ``(id_a, id_b, genuine)`` under one identity resample: a genuine
    one weighs its identity's multiplicity, an impostor one the product of both (see the module
    docstring)."""
    m = np.asarray(multiplicity, dtype=np.float64)
    wa = m[id_a]
    return np.where(genuine, wa, wa * m[id_b])


def pair_weights(pairs: PairSet, multiplicity: np.ndarray) -> np.ndarray:
    """Weight of each comparison of ``pairs`` under one identity resample."""
    return comparison_weights(multiplicity, pairs.id_a, pairs.id_b, pairs.genuine)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the finite ``samples`` (NaN, NaN when none)."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(x, [tail, 100.0 - tail])
    return float(lo), float(hi)


def estimate(value: float, samples: np.ndarray | None, level: float = 0.95) -> dict[str, float]:
    """``{"value", "ci_low", "ci_high"}`` (intervals NaN without samples); JSON-ready."""
    v = float(value)
    if samples is None or len(samples) == 0:
        lo = hi = float("nan")
    else:
        lo, hi = percentile_interval(samples, level)
    return {"value": v, "ci_low": lo, "ci_high": hi}


def finite_or_none(x: float) -> float | None:
    """``x`` or ``None`` when it is NaN or infinite (JSON has no NaN)."""
    return float(x) if x is not None and math.isfinite(x) else None
