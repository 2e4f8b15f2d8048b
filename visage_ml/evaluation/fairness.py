"""Demographic differentials of a verification system, after NIST FRVT Part 3 (NISTIR 8280).

One global threshold (set at a target FMR on all impostor comparisons) is applied to everyone.
Per demographic group: FMR over impostor comparisons whose two subjects are both in the group,
FNMR over the group's genuine comparisons, and the cross-group FMR matrix (impostor comparisons
of a subject of group ``g`` with one of group ``h``). The per-group rates are summarised by:

- ``max/min`` ratio and ``max/geometric mean`` (NISTIR 8429);
- the Gini coefficient (with the ``n/(n-1)`` correction, so 0 = equal and 1 = all error in one
  group);
- the Fairness Discrepancy Rate of de Freitas Pereira & Marcel (2021),
  ``FDR = 1 - (alpha * A + (1 - alpha) * B)`` with ``A = max |FMR_i - FMR_j|`` and
  ``B = max |FNMR_i - FNMR_j|`` (1 = fair);
- the skewed error ratio ``max/min`` of the per-group error, here the half total error rate
  ``(FMR + FNMR) / 2`` at the global threshold.

A group with no observed error would make every ratio infinite; the denominators of the ratios
therefore floor each rate at the measurement's resolution, one error in that group's
comparisons (``1 / n``), which makes them finite lower bounds (never below 1). Groups without
comparisons are left out of the summaries.

Intervals come from the identity bootstrap (:mod:`visage_ml.evaluation.bootstrap`) at the fixed
operational threshold: they answer "how precisely do we know each group's error rates at the
threshold we deploy", not "how would the threshold move". The gated max/min ratios take a
simultaneous band over every pair of groups (:func:`max_min_band`), not the percentiles of the
resampled max/min: those are biased upwards (each resample's noisiest groups supply its max and
its min) and failed ratios that were within their limit.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visage_ml.data.pairs import PairSet
from visage_ml.evaluation.bootstrap import (
    comparison_weights,
    estimate,
    finite_or_none,
    identity_multiplicities,
)
from visage_ml.evaluation.groups import Partition

logger = logging.getLogger(__name__)

SUMMARY_KEYS: tuple[str, ...] = (
    "fmr_max_min_ratio",
    "fmr_max_geomean_ratio",
    "fmr_gini",
    "fmr_max_abs_diff",
    "fnmr_max_min_ratio",
    "fnmr_max_geomean_ratio",
    "fnmr_gini",
    "fnmr_max_abs_diff",
    "fdr",
    "skewed_error_ratio",
)


# ---------------------------------------------------------------------------------------------
# Summaries of a vector of per-group rates (NaN = group without comparisons, ignored)
# ---------------------------------------------------------------------------------------------


def _present(rates: np.ndarray, floors: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Rates of groups with comparisons: ``(raw, floored)``."""
    x = np.asarray(rates, dtype=np.float64)
    keep = np.isfinite(x)
    floored = x
    if floors is not None:
        f = np.broadcast_to(np.asarray(floors, dtype=np.float64), x.shape)
        floored = np.maximum(x, np.where(np.isfinite(f), f, 0.0))
    return x[keep], floored[keep]


def max_min_ratio(rates: np.ndarray, floors: np.ndarray | None = None) -> float:
    """``max(rate) / min(rate)`` over groups.

    With ``floors``, only the denominator is floored (a zero count becomes one error), and the
    ratio is at least 1; without them a zero minimum gives ``inf``. All-zero rates give 1.
    """
    raw, floored = _present(rates, floors)
    if raw.size == 0:
        return float("nan")
    hi, lo = raw.max(), floored.min()
    if hi == 0:
        return 1.0
    if lo <= 0:
        return float("inf")
    return float(max(hi / lo, 1.0))


def max_geomean_ratio(rates: np.ndarray, floors: np.ndarray | None = None) -> float:
    """``max(rate) / geometric_mean(rates)`` (NISTIR 8429), floored like :func:`max_min_ratio`."""
    raw, floored = _present(rates, floors)
    if raw.size == 0:
        return float("nan")
    if raw.max() == 0:
        return 1.0
    if floored.min() <= 0:
        return float("inf")
    return float(max(raw.max() / np.exp(np.mean(np.log(floored))), 1.0))


def gini(rates: np.ndarray) -> float:
    """Gini coefficient of per-group rates, ``n/(n-1)``-corrected: 0 equal, 1 all in one group.

    ``G = n/(n-1) * sum_ij |x_i - x_j| / (2 n^2 mean(x))``.
    """
    x, _ = _present(rates, None)
    n = x.size
    if n < 2:
        return float("nan") if n == 0 else 0.0
    mean = x.mean()
    if mean == 0:
        return 0.0
    g = np.abs(x[:, None] - x[None, :]).sum() / (2.0 * n * n * mean)
    return float(g * n / (n - 1))


def max_abs_difference(rates: np.ndarray) -> float:
    """Largest pairwise ``|rate_i - rate_j|``, i.e. ``max - min``."""
    x, _ = _present(rates, None)
    return float(x.max() - x.min()) if x.size else float("nan")


def fairness_discrepancy_rate(fmr: np.ndarray, fnmr: np.ndarray, alpha: float = 0.5) -> float:
    """FDR = ``1 - (alpha * max|dFMR| + (1 - alpha) * max|dFNMR|)`` (1 = no differential)."""
    a = max_abs_difference(fmr)
    b = max_abs_difference(fnmr)
    return float(1.0 - (alpha * a + (1.0 - alpha) * b))


def skewed_error_ratio(errors: np.ndarray, floors: np.ndarray | None = None) -> float:
    """Skewed error ratio: ``max(error) / min(error)`` over groups (floored like the ratios)."""
    return max_min_ratio(errors, floors)


def max_min_band(
    rates: np.ndarray,
    floors: np.ndarray,
    samples: np.ndarray | None,
    level: float = 0.95,
) -> tuple[float, float]:
    """Interval of ``max(rate) / min(rate)`` from a simultaneous band on every pair of groups.

    The percentile interval of the resampled max/min is biased upwards: in every resample the
    noisiest groups supply the max and the min, so with many small groups its lower end sits
    above the truth and a gate reading it fails a ratio that is within its limit. Here each
    pair ``(i, j)`` of groups gets its log ratio ``d_ij = log r_i - log r_j`` (rates floored at
    one error), its bootstrap standard error ``se_ij``, and one critical value ``c``: the
    ``level`` quantile over resamples of ``max_ij |d*_ij - d_ij| / se_ij`` (a studentised
    max-t band, simultaneous over the pairs). With probability ``level`` every pair lies in
    ``d_ij +- c * se_ij``, so the largest log ratio lies in ``[max(|d_ij| - c se_ij),
    max(|d_ij| + c se_ij)]``. A lower end above a limit therefore means that some pair of
    groups is, with confidence, further apart than the limit.

    Returns ``(nan, nan)`` without resamples or with fewer than two groups measured.
    """
    r = np.asarray(rates, dtype=np.float64)
    keep = np.isfinite(r)
    if samples is None or len(samples) == 0 or int(keep.sum()) < 2:
        return float("nan"), float("nan")
    f = np.asarray(floors, dtype=np.float64)[keep]
    f = np.where(np.isfinite(f) & (f > 0), f, np.finfo(np.float64).tiny)
    point = np.log(np.maximum(r[keep], f))
    with np.errstate(invalid="ignore", divide="ignore"):
        resampled = np.log(np.maximum(np.asarray(samples, dtype=np.float64)[:, keep], f))
    i, j = np.triu_indices(point.size, 1)
    d = point[i] - point[j]
    deviation = (resampled[:, i] - resampled[:, j]) - d
    with warnings.catch_warnings():
        # A pair missing from every resample, or one that never moves, adds nothing.
        warnings.simplefilter("ignore", RuntimeWarning)
        se = np.nanstd(deviation, axis=0, ddof=1)
        se = np.where(np.isfinite(se), se, 0.0)
        z = np.where(se > 0, np.abs(deviation) / np.where(se > 0, se, 1.0), 0.0)
        z = np.where(np.isfinite(deviation), z, np.nan)
        worst = np.nanmax(z, axis=1)
        worst = worst[np.isfinite(worst)]
    if worst.size == 0:
        return float("nan"), float("nan")
    c = float(np.quantile(worst, level))
    lo = max(float(np.max(np.abs(d) - c * se)), 0.0)
    hi = float(np.max(np.abs(d) + c * se))
    return float(np.exp(lo)), float(np.exp(hi))


def summarize(
    fmr: np.ndarray,
    fnmr: np.ndarray,
    *,
    fmr_floor: np.ndarray | None = None,
    fnmr_floor: np.ndarray | None = None,
    alpha: float = 0.5,
) -> dict[str, float]:
    """Every differential summary of per-group FMR and FNMR (keys: :data:`SUMMARY_KEYS`)."""
    fmr = np.asarray(fmr, dtype=np.float64)
    fnmr = np.asarray(fnmr, dtype=np.float64)
    hter = (fmr + fnmr) / 2.0
    hter_floor = None
    if fmr_floor is not None and fnmr_floor is not None:
        hter_floor = (np.asarray(fmr_floor) + np.asarray(fnmr_floor)) / 2.0
    return {
        "fmr_max_min_ratio": max_min_ratio(fmr, fmr_floor),
        "fmr_max_geomean_ratio": max_geomean_ratio(fmr, fmr_floor),
        "fmr_gini": gini(fmr),
        "fmr_max_abs_diff": max_abs_difference(fmr),
        "fnmr_max_min_ratio": max_min_ratio(fnmr, fnmr_floor),
        "fnmr_max_geomean_ratio": max_geomean_ratio(fnmr, fnmr_floor),
        "fnmr_gini": gini(fnmr),
        "fnmr_max_abs_diff": max_abs_difference(fnmr),
        "fdr": fairness_discrepancy_rate(fmr, fnmr, alpha),
        "skewed_error_ratio": skewed_error_ratio(hter, hter_floor),
    }


# ---------------------------------------------------------------------------------------------
# Per-group error counts at a threshold
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Breakdown:
    """A demographic partition of identities.

    Attributes
    ----------
    name
        ``"group"``, ``"gender"``, ``"group_gender"``...
    labels
        Group names, in display order.
    identity_label
        Index into ``labels`` per identity code (``-1`` = unknown, left out).
    """

    name: str
    labels: tuple[str, ...]
    identity_label: np.ndarray


def make_breakdown(name: str, identity_values: Sequence[Any], labels: Sequence[str]) -> Breakdown:
    """Build a :class:`Breakdown` from each identity's value (values not in ``labels`` -> -1)."""
    codes = Partition.from_values(identity_values, labels).codes
    return Breakdown(name=name, labels=tuple(labels), identity_label=codes)


class _Cells:
    """Comparisons partitioned into cells: an impostor pair of groups, or a genuine group.

    Impostor cells are unordered (``lo * G + hi``), genuine cells follow them (``G * G + g``);
    comparisons with a subject of unknown group are left out. A comparison errs when a genuine
    one is rejected or an impostor one accepted at the threshold.
    """

    def __init__(self, pairs: PairSet, breakdown: Breakdown, threshold: float) -> None:
        g = len(breakdown.labels)
        la = breakdown.identity_label[pairs.id_a]
        lb = breakdown.identity_label[pairs.id_b]
        lo, hi = np.minimum(la, lb), np.maximum(la, lb)
        cell = np.where(pairs.genuine, g * g + la, lo * g + hi)
        accepted = pairs.score >= threshold
        self.g = g
        codes = np.where(lo >= 0, cell, -1)
        self.partition = Partition(codes, range(g * g + g))
        self.error = np.where(pairs.genuine, ~accepted, accepted).astype(np.float64)
        # A resample weighs a comparison by its identities' multiplicities alone, so a cell's
        # weight is summed over the identity pairs in it (each with its number of
        # comparisons): hundreds of thousands, not the millions of comparisons.
        kept = codes >= 0
        k = max(int(pairs.n_identities), 1)
        key = (pairs.id_a[kept].astype(np.int64) * k + pairs.id_b[kept]) * 2 + pairs.genuine[kept]
        key, first, count = np.unique(key, return_index=True, return_counts=True)
        self._ids_a, self._ids_b = (key // 2) // k, (key // 2) % k
        self._ids_genuine = (key % 2).astype(bool)
        self._ids_count = count.astype(np.float64)
        self._ids_partition = Partition(codes[kept][first], range(g * g + g))
        self.identities_genuine, self.identities_impostor = _contributors(
            breakdown.identity_label,
            self._ids_a,
            self._ids_b,
            self._ids_genuine,
            np.asarray(lo)[kept][first],
            np.asarray(hi)[kept][first],
            g,
        )
        # Errors are rare (an FMR of 1e-3): a resample's error sums run over them alone.
        self._errors = np.flatnonzero(self.error)
        self._error_partition = Partition(codes[self._errors], range(g * g + g))
        self._err_a, self._err_b = pairs.id_a[self._errors], pairs.id_b[self._errors]
        self._err_genuine = pairs.genuine[self._errors]

    def rates(self, multiplicity: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """``(cross_fmr (G,G), fnmr (G,), cross_n (G,G), genuine_n (G,))``, weighted by an
        identity resample's ``multiplicity`` per identity (None: each comparison once)."""
        # Counts and bootstrap multiplicities are integers: the vectorised sums are exact.
        if multiplicity is None:
            n = self.partition.n.astype(np.float64)
            e = self.partition.sums(self.error)
        else:
            w_ids = comparison_weights(multiplicity, self._ids_a, self._ids_b, self._ids_genuine)
            n = self._ids_partition.sums(w_ids * self._ids_count)
            e = self._error_partition.sums(
                comparison_weights(multiplicity, self._err_a, self._err_b, self._err_genuine)
            )
        g = self.g
        n_imp = n[: g * g].reshape(g, g)
        e_imp = e[: g * g].reshape(g, g)
        # Unordered pairs were counted in the upper triangle; mirror them.
        n_imp = n_imp + np.triu(n_imp, 1).T
        e_imp = e_imp + np.triu(e_imp, 1).T
        n_gen, e_gen = n[g * g :], e[g * g :]
        with np.errstate(invalid="ignore", divide="ignore"):
            cross = np.where(n_imp > 0, e_imp / np.where(n_imp > 0, n_imp, 1), np.nan)
            fnmr = np.where(n_gen > 0, e_gen / np.where(n_gen > 0, n_gen, 1), np.nan)
        return cross, fnmr, n_imp, n_gen


def _contributors(
    identity_label: np.ndarray,
    ids_a: np.ndarray,
    ids_b: np.ndarray,
    genuine: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    g: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Identities per group with a genuine comparison, and with an impostor comparison inside
    the group: the people a group's FNMR and FMR rest on (one image gives no genuine one)."""
    labels = np.asarray(identity_label)
    gen = np.unique(ids_a[genuine])
    same = ~genuine & (lo == hi)
    imp = np.unique(np.r_[ids_a[same], ids_b[same]])
    return (
        np.bincount(labels[gen], minlength=g).astype(np.int64),
        np.bincount(labels[imp], minlength=g).astype(np.int64),
    )


def _floor(n: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(n > 0, 1.0 / np.where(n > 0, n, 1), np.nan)


@dataclass
class Differentials:
    """Per-group error rates at one threshold, their summaries and bootstrap samples."""

    breakdown: str
    labels: tuple[str, ...]
    threshold: float
    n_identities: np.ndarray
    n_genuine: np.ndarray
    n_impostor: np.ndarray
    # Identities with a genuine comparison / an impostor comparison within the group: what a
    # group's FNMR / FMR rests on (``n_identities`` counts everyone, with one image or many).
    n_identities_genuine: np.ndarray
    n_identities_impostor: np.ndarray
    fmr: np.ndarray
    fnmr: np.ndarray
    cross_fmr: np.ndarray
    cross_n: np.ndarray
    summaries: dict[str, float]
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    n_unlabeled: int = 0  # identities without a value for this breakdown (in no group)

    def to_dict(self, level: float = 0.95) -> dict[str, Any]:
        """JSON-ready view: per-group rates, cross-group FMR and summaries with intervals."""
        s = self.samples
        groups = {}
        for i, lab in enumerate(self.labels):
            groups[lab] = {
                "n_identities": int(self.n_identities[i]),
                "n_genuine_pairs": int(self.n_genuine[i]),
                "n_impostor_pairs": int(self.n_impostor[i]),
                "n_identities_genuine": int(self.n_identities_genuine[i]),
                "n_identities_impostor": int(self.n_identities_impostor[i]),
                "fmr": _clean(estimate(self.fmr[i], _col(s.get("fmr"), i), level)),
                "fnmr": _clean(estimate(self.fnmr[i], _col(s.get("fnmr"), i), level)),
                "fmr_errors": _count(self.fmr[i], self.n_impostor[i]),
                "fnmr_errors": _count(self.fnmr[i], self.n_genuine[i]),
            }
        cross = s.get("cross_fmr")
        cross_ci = None
        if cross is not None and len(cross):
            tail = (1.0 - level) / 2.0 * 100.0
            with warnings.catch_warnings():
                # An all-NaN cell (no comparisons in any resample) stays NaN, silently.
                warnings.simplefilter("ignore", RuntimeWarning)
                lo = np.nanpercentile(cross, tail, axis=0)
                hi = np.nanpercentile(cross, 100 - tail, axis=0)
            cross_ci = {"ci_low": _matrix(lo), "ci_high": _matrix(hi)}
        n_all = int(self.n_identities.sum()) + self.n_unlabeled
        return {
            "breakdown": self.breakdown,
            "labels": list(self.labels),
            "threshold": self.threshold,
            "groups": groups,
            "unlabeled": {
                "n_identities": self.n_unlabeled,
                "share": self.n_unlabeled / n_all if n_all else 0.0,
                "note": "identities without this attribute: in no group, left out of every "
                "differential",
            },
            "cross_fmr": {
                "labels": list(self.labels),
                "value": _matrix(self.cross_fmr),
                "n_pairs": [[int(v) for v in row] for row in self.cross_n],
                **(cross_ci or {}),
            },
            "summaries": {k: _clean(self.interval(k, level)) for k in self.summaries},
            "zero_error_groups": {
                "fmr": [
                    lab
                    for i, lab in enumerate(self.labels)
                    if self.n_impostor[i] > 0 and self.fmr[i] == 0
                ],
                "fnmr": [
                    lab
                    for i, lab in enumerate(self.labels)
                    if self.n_genuine[i] > 0 and self.fnmr[i] == 0
                ],
            },
        }

    def interval(self, key: str, level: float = 0.95) -> dict[str, float]:
        """``{"value", "ci_low", "ci_high"}`` of one summary.

        The max/min ratios (the gated ones) take :func:`max_min_band`; the other summaries the
        percentile interval of their resamples.
        """
        value = float(self.summaries[key])
        rates = MAX_MIN_RATES.get(key)
        if rates is None:
            return estimate(value, self.samples.get(key), level)
        n = self.n_impostor if rates == "fmr" else self.n_genuine
        lo, hi = max_min_band(getattr(self, rates), _floor(n), self.samples.get(rates), level)
        if np.isfinite(lo) and np.isfinite(value):
            lo, hi = min(max(lo, 1.0), value), max(hi, value)
        return {"value": value, "ci_low": lo, "ci_high": hi}


# The gated max/min ratios and the per-group rates their intervals are built from.
MAX_MIN_RATES: Mapping[str, str] = {"fmr_max_min_ratio": "fmr", "fnmr_max_min_ratio": "fnmr"}


def _count(rate: float, n: int) -> int:
    return int(np.rint(rate * n)) if np.isfinite(rate) else 0


def _col(samples: np.ndarray | None, i: int) -> np.ndarray | None:
    return None if samples is None or len(samples) == 0 else samples[:, i]


def _matrix(m: np.ndarray) -> list[list[float | None]]:
    return [[finite_or_none(float(v)) for v in row] for row in np.asarray(m)]


def _clean(d: Mapping[str, float]) -> dict[str, float | None]:
    return {k: finite_or_none(v) for k, v in d.items()}


def _point(cells: _Cells, multiplicity: np.ndarray | None, alpha: float) -> dict[str, Any]:
    cross, fnmr, n_imp, n_gen = cells.rates(multiplicity)
    fmr = np.diag(cross).copy()
    n_same = np.diag(n_imp).copy()
    summaries = summarize(
        fmr, fnmr, fmr_floor=_floor(n_same), fnmr_floor=_floor(n_gen), alpha=alpha
    )
    return {
        "cross_fmr": cross,
        "cross_n": n_imp,
        "fmr": fmr,
        "fnmr": fnmr,
        "n_same": n_same,
        "n_gen": n_gen,
        "summaries": summaries,
    }


def demographic_differentials(
    pairs: PairSet,
    breakdowns: Sequence[Breakdown],
    *,
    threshold: float,
    alpha: float = 0.5,
    rounds: int = 0,
    seed: int = 0,
) -> dict[str, Differentials]:
    """FMR, FNMR, cross-group FMR and their summaries per breakdown, with identity bootstrap.

    Parameters
    ----------
    pairs
        Scored comparisons.
    breakdowns
        Demographic partitions of the identities.
    threshold
        The single global decision threshold (accept ``score >= threshold``).
    alpha
        FDR weight of the FMR term.
    rounds
        Bootstrap resamples of identities (0 = no intervals).
    seed
        Seed of the resampling (the same seed gives the same resamples as the verification
        intervals).

    Returns
    -------
    dict
        :class:`Differentials` per breakdown name.
    """
    cells = {b.name: _Cells(pairs, b, threshold) for b in breakdowns}
    out: dict[str, Differentials] = {}
    for b in breakdowns:
        p = _point(cells[b.name], None, alpha)
        out[b.name] = Differentials(
            breakdown=b.name,
            labels=b.labels,
            threshold=float(threshold),
            n_identities=Partition(b.identity_label, b.labels).n,
            n_genuine=np.rint(p["n_gen"]).astype(np.int64),
            n_impostor=np.rint(p["n_same"]).astype(np.int64),
            n_identities_genuine=cells[b.name].identities_genuine,
            n_identities_impostor=cells[b.name].identities_impostor,
            fmr=p["fmr"],
            fnmr=p["fnmr"],
            cross_fmr=p["cross_fmr"],
            cross_n=np.rint(p["cross_n"]).astype(np.int64),
            summaries=p["summaries"],
            n_unlabeled=int((np.asarray(b.identity_label) < 0).sum()),
        )
    if rounds <= 0:
        return out
    multiplicities = identity_multiplicities(pairs.n_identities, rounds, seed=seed)
    acc: dict[str, dict[str, list[Any]]] = {
        b.name: {k: [] for k in ("fmr", "fnmr", "cross_fmr", *SUMMARY_KEYS)} for b in breakdowns
    }
    for m in multiplicities:
        for b in breakdowns:
            p = _point(cells[b.name], m, alpha)
            store = acc[b.name]
            for k in ("fmr", "fnmr", "cross_fmr"):
                store[k].append(p[k])
            for k in SUMMARY_KEYS:
                store[k].append(p["summaries"][k])
    for b in breakdowns:
        out[b.name].samples = {k: np.asarray(v) for k, v in acc[b.name].items()}
    return out


# ---------------------------------------------------------------------------------------------
# Gate
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateOutcome:
    """Result of the fairness gate: pass/fail and every bound that was exceeded."""

    passed: bool
    failures: tuple[dict[str, Any], ...]
    checked: tuple[dict[str, Any], ...]

    def describe(self) -> str:
        """One line for logs, tags and the exit message (aggregates only)."""
        if self.passed:
            return "pass"
        parts = [
            f"{f['bound']} ({f['breakdown']}): measured {f['measured']:.3g} > {f['limit']:.3g}"
            for f in self.failures
        ]
        return "fail: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""

        def clean(entry: Mapping[str, Any]) -> dict[str, Any]:
            return {k: finite_or_none(v) if isinstance(v, float) else v for k, v in entry.items()}

        return {
            "passed": self.passed,
            "outcome": self.describe(),
            "failures": [clean(f) for f in self.failures],
            "checked": [clean(c) for c in self.checked],
        }


GATE_BOUNDS: Mapping[str, str] = {
    "max_fmr_ratio": "fmr_max_min_ratio",
    "max_fnmr_ratio": "fnmr_max_min_ratio",
}


def fairness_gate(
    differentials: Mapping[str, Differentials],
    *,
    max_fmr_ratio: float,
    max_fnmr_ratio: float,
    breakdowns: Sequence[str] = ("group",),
) -> GateOutcome:
    """Compare the max/min FMR and FNMR ratios of ``breakdowns`` with their bounds.

    A ratio that cannot be measured (fewer than two groups with comparisons) fails the gate:
    an unmeasured differential is not evidence of fairness.
    """
    limits = {"max_fmr_ratio": max_fmr_ratio, "max_fnmr_ratio": max_fnmr_ratio}
    failures, checked = [], []
    for name in breakdowns:
        diff = differentials.get(name)
        for bound, key in GATE_BOUNDS.items():
            measured = diff.summaries[key] if diff is not None else float("nan")
            n_groups = (
                int(np.isfinite(diff.fmr if "fmr_" in key else diff.fnmr).sum()) if diff else 0
            )
            entry = {
                "bound": bound,
                "breakdown": name,
                "metric": key,
                "limit": float(limits[bound]),
                "measured": float(measured),
                "groups_measured": n_groups,
            }
            checked.append(entry)
            if not np.isfinite(measured) or n_groups < 2 or measured > limits[bound]:
                failures.append(entry)
    return GateOutcome(passed=not failures, failures=tuple(failures), checked=tuple(checked))
