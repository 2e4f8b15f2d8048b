"""Verification metrics from genuine and impostor similarity scores (vectorised).

Scores are similarities (higher = more alike); a comparison is accepted when ``score >= t``.
FMR (false match rate, = FAR) is the share of impostor comparisons accepted, FNMR the share of
genuine ones rejected, TAR = 1 - FNMR. The ROC is built by one sort of all scores and cumulative
sums; optional per-comparison weights make the same code serve the bootstrap (identity
multiplicities), so point estimates and resamples share one definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from visage_ml.data.pairs import (
    MSG_NO_GENUINE,
    MSG_NO_IMPOSTORS,
    PairSet,
)
from visage_ml.evaluation.bootstrap import (
    estimate,
    finite_or_none,
    identity_multiplicities,
)

DEFAULT_FARS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)


def far_key(far: float) -> str:
    """Metric-name form of an operating point: ``1e-3`` -> ``"1e-3"``."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


@dataclass(frozen=True)
class RocCurve:
    """ROC at every distinct score, thresholds descending, starting at ``(0, 0)``.

    ``fmr[k]``/``tar[k]`` are the shares of impostor/genuine comparisons with
    ``score >= thresholds[k]`` (``thresholds[0]`` is ``+inf``).
    """

    thresholds: np.ndarray
    fmr: np.ndarray
    tar: np.ndarray

    @property
    def fnmr(self) -> np.ndarray:
        """False non-match rate, ``1 - tar``."""
        return 1.0 - self.tar


class SortedScores:
    """Scores sorted once (descending) for fast, optionally weighted, ROC computations.

    Parameters
    ----------
    scores
        Similarity per comparison.
    genuine
        ``True`` for genuine comparisons.
    id_a, id_b
        Identity codes of each comparison's two subjects, for identity resamples
        (:meth:`roc` with ``multiplicity``).
    """

    def __init__(
        self,
        scores: np.ndarray,
        genuine: np.ndarray,
        *,
        id_a: np.ndarray | None = None,
        id_b: np.ndarray | None = None,
    ) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        genuine = np.asarray(genuine, dtype=bool)
        if scores.shape != genuine.shape:
            raise ValueError("scores and genuine flags must have the same length")
        self.order = np.argsort(-scores, kind="stable")
        self.scores = scores[self.order]
        self.genuine = genuine[self.order]
        # Last position of each run of equal scores: the ROC has one point per distinct score.
        n = self.scores.size
        self.ends = np.flatnonzero(np.r_[self.scores[1:] != self.scores[:-1], n > 0])
        self.thresholds = np.r_[np.inf, self.scores[self.ends]]
        # For identity resamples: each side's identities in score order, and how many
        # comparisons of that side lie at or above each distinct score. A resample then sums
        # each side's weights alone; the sums are of integers, so exactly those of one sum
        # over all comparisons with the other side's weights set to zero.
        self._sides: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...] | None = None
        if id_a is not None and id_b is not None:
            a, b = np.asarray(id_a)[self.order], np.asarray(id_b)[self.order]
            gen = np.flatnonzero(self.genuine)
            imp = np.flatnonzero(~self.genuine)
            self._sides = tuple(
                (a[rows], b[rows], np.r_[0, np.searchsorted(rows, self.ends, side="right")])
                for rows in (gen, imp)
            )

    def counts(
        self, weights: np.ndarray | None = None, *, multiplicity: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cumulative (weighted) genuine and impostor counts accepted at each threshold.

        ``weights`` is in the original (unsorted) order of the comparisons. ``multiplicity``
        (per identity, of an identity resample) weighs a genuine comparison by its identity's
        multiplicity and an impostor one by the product of both
        (:func:`bootstrap.comparison_weights`); it needs the identities given at construction.
        """
        if multiplicity is not None:
            if self._sides is None:
                raise ValueError("identity resamples need id_a and id_b at construction")
            m = np.asarray(multiplicity, dtype=np.float64)
            (ga, _, gat), (ia, ib, iat) = self._sides
            # A genuine comparison weighs its identity's multiplicity, an impostor one the
            # product of both (bootstrap.comparison_weights).
            tp = np.r_[0.0, np.cumsum(m[ga])][gat]
            fp = np.r_[0.0, np.cumsum(m[ia] * m[ib])][iat]
            return tp, fp
        if weights is None:
            g = self.genuine.astype(np.float64)
            i = 1.0 - g
        else:
            w = np.asarray(weights, dtype=np.float64)[self.order]
            g = np.where(self.genuine, w, 0.0)
            i = w - g
        tp = np.r_[0.0, np.cumsum(g)[self.ends]]
        fp = np.r_[0.0, np.cumsum(i)[self.ends]]
        return tp, fp

    def roc(
        self, weights: np.ndarray | None = None, *, multiplicity: np.ndarray | None = None
    ) -> RocCurve:
        """The ROC (optionally with per-comparison weights, or an identity resample's
        ``multiplicity``: see :meth:`counts`)."""
        tp, fp = self.counts(weights, multiplicity=multiplicity)
        if tp[-1] <= 0:
            raise ValueError(MSG_NO_GENUINE)
        if fp[-1] <= 0:
            raise ValueError(MSG_NO_IMPOSTORS)
        return RocCurve(thresholds=self.thresholds, fmr=fp / fp[-1], tar=tp / tp[-1])


def tar_at_fmr(curve: RocCurve, far: float) -> float:
    """TAR at the most accepting threshold whose FMR does not exceed ``far``."""
    k = int(np.searchsorted(curve.fmr, far * (1 + 1e-12), side="right")) - 1
    return float(curve.tar[max(k, 0)])


def equal_error_rate(curve: RocCurve) -> float:
    """EER: where FMR = FNMR, linearly interpolated between the two ROC points around it."""
    fnmr = curve.fnmr
    diff = fnmr - curve.fmr  # decreasing from 1 to -1 along the curve
    k = int(np.argmax(diff <= 0))
    if k == 0:
        return float(curve.fmr[0])
    d0, d1 = diff[k - 1], diff[k]
    s = d0 / (d0 - d1)
    return float(curve.fmr[k - 1] + s * (curve.fmr[k] - curve.fmr[k - 1]))


def area_under_curve(curve: RocCurve) -> float:
    """Area under the ROC (trapezoids; ties count half, as in scikit-learn)."""
    return float(np.trapezoid(curve.tar, curve.fmr))


def verification_metrics(curve: RocCurve, fars: Sequence[float] = DEFAULT_FARS) -> dict[str, float]:
    """AUC, EER and TAR at each FMR in ``fars`` from one ROC.

    Returns
    -------
    dict
        ``{"auc", "eer", "tar_at_fmr_1e-2", ...}``.
    """
    out = {"auc": area_under_curve(curve), "eer": equal_error_rate(curve)}
    for far in fars:
        out[f"tar_at_fmr_{far_key(far)}"] = tar_at_fmr(curve, far)
    return out


def rates_at_threshold(
    genuine_scores: np.ndarray, impostor_scores: np.ndarray, threshold: float
) -> tuple[float, float]:
    """``(fmr, fnmr)`` of accepting ``score >= threshold`` (NaN for an empty side)."""
    gen = np.asarray(genuine_scores, dtype=np.float64)
    imp = np.asarray(impostor_scores, dtype=np.float64)
    fmr = float(np.mean(imp >= threshold)) if imp.size else float("nan")
    fnmr = float(np.mean(gen < threshold)) if gen.size else float("nan")
    return fmr, fnmr


def curve_points(curve: RocCurve, max_points: int = 500) -> np.ndarray:
    """Indices of at most ``max_points`` ROC points spread evenly in log(FMR), for plots.

    The first and last points are always kept; the rest are the first points at or past
    log-spaced FMR targets and linearly spaced TAR targets, so both the low-FMR tail and the
    body of the curve stay visible.
    """
    n = curve.fmr.size
    if n <= max_points:
        return np.arange(n)
    positive = curve.fmr[curve.fmr > 0]
    lo = positive[0] if positive.size else 1.0
    half = max(max_points // 2 - 1, 1)
    fmr_targets = np.geomspace(lo, 1.0, half)
    tar_targets = np.linspace(0.0, 1.0, max_points - half - 2)
    idx = np.r_[
        0,
        np.searchsorted(curve.fmr, fmr_targets, side="left"),
        np.searchsorted(curve.tar, tar_targets, side="left"),
        n - 1,
    ]
    return np.unique(np.clip(idx, 0, n - 1))[:max_points]


@dataclass
class VerificationResult:
    """ROC, headline metrics and their identity-bootstrap samples."""

    curve: RocCurve
    metrics: dict[str, float]
    samples: dict[str, np.ndarray]
    n_genuine: int
    n_impostor: int

    def to_dict(self, level: float = 0.95) -> dict[str, Any]:
        """JSON-ready ``{metric: {"value", "ci_low", "ci_high"}}`` plus pair counts."""
        out: dict[str, Any] = {
            k: {
                key: finite_or_none(val)
                for key, val in estimate(v, self.samples.get(k), level).items()
            }
            for k, v in self.metrics.items()
        }
        out["n_genuine_pairs"] = self.n_genuine
        out["n_impostor_pairs"] = self.n_impostor
        return out


def verification_with_intervals(
    pairs: PairSet,
    *,
    fars: Sequence[float] = DEFAULT_FARS,
    rounds: int = 0,
    seed: int = 0,
) -> VerificationResult:
    """AUC, EER and TAR@FMR of ``pairs`` with identity-bootstrap samples of each.

    Parameters
    ----------
    pairs
        Scored comparisons.
    fars
        FMR operating points for TAR.
    rounds
        Bootstrap resamples of identities (0 = point estimates only).
    seed
        Seed of the resampling.

    Returns
    -------
    VerificationResult
        The full ROC, the metrics and ``(rounds,)`` samples per metric (NaN where a resample
        lost every genuine or every impostor comparison).
    """
    ss = SortedScores(pairs.score, pairs.genuine, id_a=pairs.id_a, id_b=pairs.id_b)
    curve = ss.roc()
    point = verification_metrics(curve, fars)
    samples: dict[str, list[float]] = {k: [] for k in point}
    for m in identity_multiplicities(pairs.n_identities, rounds, seed=seed):
        try:
            resampled = verification_metrics(ss.roc(multiplicity=m), fars)
        except ValueError:
            resampled = dict.fromkeys(point, float("nan"))
        for k, v in resampled.items():
            samples[k].append(v)
    return VerificationResult(
        curve=curve,
        metrics=point,
        samples={k: np.asarray(v) for k, v in samples.items()},
        n_genuine=pairs.n_genuine,
        n_impostor=pairs.n_impostor,
    )


def roc_curve(y_true: np.ndarray, y_score: np.ndarray) -> RocCurve | None:
    """ROC of comparisons (``y_true``: genuine); ``None`` when either side is empty."""
    genuine = np.asarray(y_true, dtype=bool)
    if not genuine.any() or genuine.all():
        return None
    return SortedScores(y_score, genuine).roc()
