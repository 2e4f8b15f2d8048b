"""Counts corrected for the demographic model's known error: adjusted classify-and-count.

Raw analytics counts are *predicted* labels. With ``P[i, j]`` the probability that a face of
true class ``i`` is predicted ``j`` (measured by evaluation, :mod:`visage_ml.evaluation.confusion`)
the expected predicted counts are ``c = P.T @ n`` for true counts ``n``; adjusted
classify-and-count (Forman 2008) solves this for ``n``. The solve is non-negative least squares
(the clipped inverse done right: no count below zero), renormalised to the number of faces
counted.

Because the model errs differently per skin-tone group, gender and age band are corrected with
the crowd's own mix: the group counts are corrected first, and the gender (age band) matrix used
is the mean of the per-group matrices weighted by the corrected group shares,
``P_attr = sum_g w_g * P_attr|g`` (gender and age are taken as independent of group within the
crowd). A window whose crowd is mostly of a group the model serves badly is corrected with that
group's matrix, not with the evaluation set's mix. True classes that evaluation never saw (an
age band absent from its population) are not estimated. Everything is computed from the
released (noisy, if ``epsilon`` > 0) raw counts: correction is post-processing, it spends no
privacy budget.

Intervals: a parametric bootstrap. Each round draws every confusion row from its Dirichlet
posterior (the evaluation's counts plus one half), draws the predicted counts a window of the
estimated true counts would give under the drawn matrices, and solves again; the interval is
the percentile range of the rounds. It covers the uncertainty of the matrices and of the
classification of this window's faces.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visage_ml.evaluation.confusion import FORMAT
from visage_ml.io import sha256_bytes

CONFUSION_FILE = "demographic_confusion.json"
PRIOR = 0.5
MSG_NO_CONFUSION = (
    "{path} is missing: analytics corrects its counts with the demographic model's measured "
    "confusion; run `dvc repro evaluate` (or set serving.analytics.correct: false)"
)
MSG_CONFUSION_VERSION = (
    "{path} was measured for demographic model {found!r} but serving uses {expected!r}; run "
    "`dvc repro evaluate` for this model"
)
MSG_CONFUSION_LABELS = (
    "{path} has labels {found} but the demographic model predicts {expected}; run `dvc repro "
    "evaluate` for this model"
)
MSG_CONFUSION_FORMAT = "{path} is not a confusion report of format {fmt}; run `dvc repro evaluate`"


def acc_solve(observed: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """True counts ``n >= 0`` with ``matrix.T @ n`` closest to ``observed``, summing to it.

    Parameters
    ----------
    observed
        Predicted-class counts ``(K_pred,)``.
    matrix
        ``(K_true, K_pred)`` row-stochastic confusion matrix.
    """
    from scipy.optimize import nnls  # deferred: only correction solves

    c = np.asarray(observed, dtype=np.float64)
    total = float(c.sum())
    if total <= 0:
        return np.zeros(matrix.shape[0])
    n, _ = nnls(np.asarray(matrix, dtype=np.float64).T, c)
    s = float(n.sum())
    return n * (total / s) if s > 0 else np.full(matrix.shape[0], total / matrix.shape[0])


def _rows(counts: np.ndarray, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """Row-stochastic matrix of ``counts`` (a Dirichlet draw with ``rng``) and rows with data."""
    counts = np.asarray(counts, dtype=np.float64)
    seen = counts.sum(axis=1) > 0
    if rng is None:
        m = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    else:
        m = np.vstack([rng.dirichlet(row + PRIOR) for row in counts])
    return m, seen


@dataclass(frozen=True)
class Corrected:
    """One dimension's corrected counts: estimate and interval per label."""

    estimate: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]


class ConfusionModel:
    """The released confusion counts, ready to correct a window's counts.

    Parameters
    ----------
    doc
        ``reports/demographic_confusion.json`` content.
    """

    def __init__(self, doc: Mapping[str, Any]) -> None:
        if doc.get("format") != FORMAT:
            raise ValueError(MSG_CONFUSION_FORMAT.format(path="the confusion report", fmt=FORMAT))
        labels = doc["labels"]
        self.doc = doc
        self.model_version = str(doc.get("demographics_model_version", ""))
        self.groups: list[str] = [str(x) for x in labels["group"]]
        self.genders: list[str] = [str(x) for x in labels["gender"]]
        self.age_labels: list[str] = [str(x) for x in labels["age_band"]]
        self.group_counts = np.asarray(doc["group"]["counts"], dtype=np.float64)
        self.attr_counts = {
            "gender": [np.asarray(doc["gender"][g]["counts"], np.float64) for g in self.groups],
            "age_band": [np.asarray(doc["age_band"][g]["counts"], np.float64) for g in self.groups],
        }

    def attribute_labels(self, dim: str) -> list[str]:
        """Labels of ``gender`` or ``age_band``."""
        return self.genders if dim == "gender" else self.age_labels

    def _solve(
        self, observed: Mapping[str, np.ndarray], rng: np.random.Generator | None
    ) -> dict[str, np.ndarray]:
        """Estimated true counts of every dimension (matrices drawn from ``rng`` if given)."""
        pg, seen_g = _rows(self.group_counts, rng)
        groups = np.zeros(len(self.groups))
        groups[seen_g] = acc_solve(observed["group"], pg[seen_g])
        total = groups.sum()
        weights = groups / total if total > 0 else np.where(seen_g, 1.0, 0.0) / max(seen_g.sum(), 1)
        out = {"group": groups}
        for dim in ("gender", "age_band"):
            drawn = [_rows(c, rng) for c in self.attr_counts[dim]]
            # Groups with weight but no evaluation rows for a label contribute nothing to it.
            mix = sum(w * m for w, (m, _) in zip(weights, drawn, strict=True))
            seen = np.zeros(mix.shape[0], dtype=bool)
            for w, (_, rows_seen) in zip(weights, drawn, strict=True):
                if w > 0:
                    seen |= rows_seen
            rows = np.where(seen[:, None], mix, 0.0)
            sums = rows.sum(axis=1, keepdims=True)
            rows = np.divide(rows, sums, out=np.zeros_like(rows), where=sums > 0)
            est = np.zeros(mix.shape[0])
            if seen.any():
                est[seen] = acc_solve(observed[dim], rows[seen])
            out[dim] = est
        return out

    def correct_all(
        self,
        observed: Mapping[str, np.ndarray],
        *,
        rounds: int = 200,
        level: float = 0.95,
        rng: np.random.Generator | None = None,
    ) -> dict[str, Corrected]:
        """Corrected counts of ``group``, ``gender`` and ``age_band``.

        Parameters
        ----------
        observed
            Raw (predicted) counts per dimension, in the label orders of this model
            (:attr:`groups`, :attr:`genders`, :attr:`age_labels`).
        rounds, level
            Bootstrap rounds and the interval's level (no interval with 0 rounds).
        rng
            Source of the bootstrap draws.
        """
        gen = rng if rng is not None else np.random.default_rng()
        obs = {k: np.maximum(np.asarray(v, dtype=np.float64), 0.0) for k, v in observed.items()}
        est = self._solve(obs, None)
        names = {"group": self.groups, "gender": self.genders, "age_band": self.age_labels}
        lows, highs = dict(est), dict(est)
        total = round(float(obs["group"].sum()))
        if rounds > 0 and total > 0:
            pg, _ = _rows(self.group_counts, None)
            draws: dict[str, list[np.ndarray]] = {k: [] for k in names}
            expected = self._expected(est, pg)
            for _ in range(rounds):
                c_star = {
                    k: obs[k] if p is None else gen.multinomial(round(float(obs[k].sum())), p)
                    for k, p in expected.items()
                }
                for k, v in self._solve(c_star, gen).items():
                    draws[k].append(v)
            tail = (1.0 - level) / 2.0 * 100.0
            for k, v in draws.items():
                lows[k], highs[k] = np.percentile(np.vstack(v), [tail, 100.0 - tail], axis=0)
        return {
            k: Corrected(
                estimate=dict(zip(labels, est[k].tolist(), strict=True)),
                low=dict(zip(labels, np.asarray(lows[k]).tolist(), strict=True)),
                high=dict(zip(labels, np.asarray(highs[k]).tolist(), strict=True)),
            )
            for k, labels in names.items()
        }

    def _expected(
        self, est: Mapping[str, np.ndarray], pg: np.ndarray
    ) -> dict[str, np.ndarray | None]:
        """Predicted-label shares the estimated true counts would give (the bootstrap's model)."""
        groups = est["group"]
        weights = groups / groups.sum() if groups.sum() > 0 else groups
        matrices = {"group": pg}
        for dim in ("gender", "age_band"):
            rows = [_rows(c, None)[0] for c in self.attr_counts[dim]]
            matrices[dim] = sum(w * m for w, m in zip(weights, rows, strict=True))
        out: dict[str, np.ndarray | None] = {}
        for dim, matrix in matrices.items():
            e = np.asarray(matrix).T @ est[dim]
            out[dim] = e / e.sum() if e.sum() > 0 else None
        return out


def load_confusion(
    paths: Any, *, model_version: str | None, labels: Mapping[str, Any] | None = None
) -> tuple[ConfusionModel, str]:
    """``reports/demographic_confusion.json`` for the serving demographic model, and its SHA-256.

    Raises
    ------
    FileNotFoundError
        No confusion report.
    ValueError
        Unreadable, of another format, model or label order.
    """
    path = Path(paths.reports) / CONFUSION_FILE
    if not path.is_file():
        raise FileNotFoundError(MSG_NO_CONFUSION.format(path=path))
    raw = path.read_bytes()
    try:
        model = ConfusionModel(json.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(MSG_CONFUSION_FORMAT.format(path=path, fmt=FORMAT)) from None
    if model_version is not None and model.model_version != model_version:
        raise ValueError(
            MSG_CONFUSION_VERSION.format(
                path=path, found=model.model_version, expected=model_version
            )
        )
    if labels is not None:
        expected = {
            "group": [str(x) for x in labels.get("group") or []],
            "gender": [str(x) for x in labels.get("gender") or []],
        }
        found = {"group": model.groups, "gender": model.genders}
        if expected != found:
            raise ValueError(MSG_CONFUSION_LABELS.format(path=path, found=found, expected=expected))
    return model, sha256_bytes(raw)
