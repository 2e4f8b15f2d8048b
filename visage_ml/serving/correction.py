"""Counts corrected for the demographic model's known error, with the site's own mix as prior.

Raw analytics counts are *predicted* labels. With ``P[i, j]`` the probability that a face of
true class ``i`` is predicted ``j`` (measured by evaluation, :mod:`visage_ml.evaluation.confusion`)
a crowd of true class shares ``pi`` gives predicted labels in the shares ``pi @ P``. Correction
has two steps:

1. **The site's mix.** The class shares ``pi`` of the crowd this camera sees are the most
   probable shares given its *history*, the predicted counts of its recent windows pooled:
   maximum likelihood (Saerens, Latinne and Decaestecker 2002; what adjusted classify-and-count
   estimates, but on the simplex and on hundreds of faces, not one window's dozens) with a
   Dirichlet prior worth one face per class (:func:`site_shares`). With no history, the window
   alone.
2. **This window's faces.** Each face predicted ``j`` is a face of true class ``i`` with
   probability ``pi_i P[i, j] / (pi @ P)_j`` (Bayes, with the site's mix as prior); the window's
   corrected counts are the expected true counts of its faces, ``sum_j c_j * post[:, j]``.

Why not invert one window's counts (adjusted classify-and-count): two of the age bands' rows are
nearly alike (a model that cannot tell 25 from 35 well), and the inverse multiplies each
window's classification noise by their small difference; on SynthFaces scenes the inverse was
worse than the raw counts at a site like the trained population (1.1-1.5x their error). The
site's mix, estimated on the pooled windows, carries the prior shift that biases the raw counts;
the window's own faces are then reassigned with it, which adds no noise of the inverse
(``benchmarks/bench_analytics_correction.py``; README "Operator: serving").

Because the model errs differently per skin-tone group, gender and age band are corrected with
the site's group mix: the gender (age band) matrix used is the mean of the per-group matrices
weighted by the site's estimated group shares, ``P_attr = sum_g w_g * P_attr|g`` (gender and
age are taken as independent of group within the crowd). True classes that evaluation never
saw (an age band absent from its population) are not estimated. Everything is computed from
released (noisy, if ``epsilon`` > 0) raw counts: correction is post-processing, it spends no
privacy budget. Cells suppressed at release enter as one cell of their sum (``hidden``).

Intervals: a parametric bootstrap. Each round draws every confusion row from its Dirichlet
posterior (the evaluation's counts plus one half), draws the history's predicted counts from the
estimated mix, estimates the mix again, and draws the window's true counts (each predicted
column's faces spread over the true classes by the drawn posterior); the interval is the
percentile range of the rounds. It covers the uncertainty of the matrices, of the site's mix and
of which of this window's faces are which.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visage_ml.evaluation.confusion import FORMAT, age_band_labels
from visage_ml.io import sha256_bytes

CONFUSION_FILE = "demographic_confusion.json"
# Dirichlet prior (per cell) of a confusion row drawn for the intervals.
PRIOR = 0.5
# EM steps after SLSQP in :func:`site_shares` (each raises the objective; the optimum is their
# fixed point).
EM_STEPS = 50
# Pseudo-faces per class of the prior on the site's mix (:func:`site_shares`): negligible
# beside a site's hundreds of faces, except where the counts cannot tell two classes apart.
PRIOR_FACES = 1.0
DIMENSIONS = ("group", "gender", "age_band")
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


def site_shares(
    observed: np.ndarray,
    matrix: np.ndarray,
    *,
    prior: float = PRIOR_FACES,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """Class shares ``pi`` (on the simplex) most probable given the predicted counts.

    Maximises ``sum_j c_j log (pi @ matrix)_j + prior * sum_i log pi_i``: the likelihood of the
    counts, with a Dirichlet prior worth ``prior`` faces per class. The prior matters only
    where the counts cannot tell classes apart (two nearly equal rows of ``matrix``): there it
    keeps the shares even instead of letting noise push one class to zero. SLSQP, then EM steps
    (each raises the objective and stays on the simplex) to settle it.

    Parameters
    ----------
    observed
        Predicted-class counts ``(K_pred,)``.
    matrix
        ``(K_true, K_pred)`` row-stochastic confusion matrix.
    prior
        Pseudo-faces per class (0: maximum likelihood).
    start
        Shares to start from (a previous estimate); uniform by default.
    """
    from scipy.optimize import minimize  # deferred: only correction solves

    c = np.asarray(observed, dtype=np.float64)
    p = np.asarray(matrix, dtype=np.float64)
    k = p.shape[0]
    # A predicted class that no true class gives carries no information on the shares.
    live = p.sum(axis=0) > 0
    c, p = c[live], p[:, live]
    total = float(c.sum()) + prior * k
    if float(c.sum()) <= 0 or k == 1:
        return np.full(k, 1.0 / k)
    w, a = c / total, prior / total
    floor = 1e-12

    def loss(pi: np.ndarray) -> tuple[float, np.ndarray]:
        mix = np.maximum(pi @ p, 1e-300)
        q = np.maximum(pi, floor)
        value = -float(w @ np.log(mix)) - a * float(np.log(q).sum())
        return value, -(p @ (w / mix)) - a / q

    x0 = np.full(k, 1.0 / k) if start is None else np.asarray(start, dtype=np.float64)
    res = minimize(
        loss,
        np.clip(x0, floor, 1.0),
        jac=True,
        method="SLSQP",
        bounds=[(floor, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1.0, "jac": lambda x: np.ones(k)}],
        options={"ftol": 1e-12, "maxiter": 200},
    )
    pi = np.clip(res.x, floor, None)
    pi = pi / pi.sum()
    # EM steps from there: the optimum is their fixed point.
    for _ in range(EM_STEPS):
        mix = np.maximum(pi @ p, 1e-300)
        pi = pi * (p @ (w / mix)) + a
        pi = np.maximum(pi, floor)
        pi = pi / pi.sum()
    return pi


def posterior_matrix(matrix: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """``(K_true, K_pred)``: the probability that a face predicted ``j`` is of true class ``i``,
    for a crowd of true class ``shares`` (Bayes' rule; a column no class gives is all zero)."""
    joint = np.asarray(shares, dtype=np.float64)[:, None] * np.asarray(matrix, dtype=np.float64)
    col = joint.sum(axis=0, keepdims=True)
    return np.divide(joint, col, out=np.zeros_like(joint), where=col > 0)


def posterior_counts(observed: np.ndarray, matrix: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Expected true counts of the faces behind the predicted counts ``observed``, in a crowd
    of true class ``shares``. Their sum is the faces counted (of predicted classes that some
    true class gives)."""
    return posterior_matrix(matrix, shares) @ np.asarray(observed, dtype=np.float64)


def _draw_counts(observed: np.ndarray, post: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """True counts of the faces behind ``observed``: each predicted column's faces spread over
    the true classes by the posterior ``post`` (one multinomial per column)."""
    out = np.zeros(post.shape[0])
    for j, n in enumerate(np.rint(np.asarray(observed)).astype(np.int64)):
        col = post[:, j]
        if n > 0 and col.sum() > 0:
            out += rng.multinomial(n, col / col.sum())
    return out


def _rows(counts: np.ndarray, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """Row-stochastic matrix of ``counts`` (a Dirichlet draw with ``rng``) and rows with data.

    A draw puts its prior on the predicted columns some row gives only: a class nobody was
    predicted in stays without faces, as in the point estimate (a prior there made the draws
    reassign faces the estimate leaves out, and intervals miss their own estimate)."""
    counts = np.asarray(counts, dtype=np.float64)
    seen = counts.sum(axis=1) > 0
    if rng is None:
        m = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    else:
        live = counts.sum(axis=0) > 0
        m = np.zeros_like(counts)
        if live.any():
            m[:, live] = np.vstack([rng.dirichlet(row[live] + PRIOR) for row in counts])
    return m, seen


def _resample(
    counts: Mapping[str, np.ndarray],
    shares: Mapping[str, np.ndarray | None],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Counts of the same totals drawn from the predicted-class ``shares`` (kept as they are
    where a dimension has none)."""
    out = {}
    for k, c in counts.items():
        p = shares.get(k)
        if p is None or p.sum() <= 0:
            out[k] = c
        else:
            out[k] = rng.multinomial(round(float(c.sum())), p / p.sum()).astype(np.float64)
    return out


def _pool_columns(a: np.ndarray, hidden: np.ndarray | None) -> np.ndarray:
    """``a`` (counts ``(K,)`` or a matrix ``(..., K)``) with the ``hidden`` predicted columns
    summed into one last column: what is known of counts released only as their sum."""
    if hidden is None or not hidden.any():
        return a
    return np.concatenate([a[..., ~hidden], a[..., hidden].sum(axis=-1, keepdims=True)], axis=-1)


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

    def evidenced(self, dim: str) -> np.ndarray:
        """Per predicted label of ``dim``: whether any evaluation face was predicted so. Faces
        predicted in a class without evidence cannot be reassigned (the report says nothing of
        who is predicted so): they are "not estimated", never spread nor dropped silently."""
        if dim == "group":
            return self.group_counts.sum(axis=0) > 0
        return sum(c.sum(axis=0) for c in self.attr_counts[dim]) > 0

    def attribute_labels(self, dim: str) -> list[str]:
        """Labels of ``gender`` or ``age_band``."""
        return self.genders if dim == "gender" else self.age_labels

    def _matrices(
        self, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, list[tuple[np.ndarray, np.ndarray]]]]:
        """Group matrix and its rows with data, and the per-group attribute matrices (drawn
        from their Dirichlet posteriors with ``rng``)."""
        pg, seen_g = _rows(self.group_counts, rng)
        attrs = {dim: [_rows(c, rng) for c in self.attr_counts[dim]] for dim in self.attr_counts}
        return pg, seen_g, attrs

    @staticmethod
    def _attribute_matrix(
        parts: list[tuple[np.ndarray, np.ndarray]], weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The per-group matrices mixed by the group ``weights``: rows, and rows with data."""
        mix = sum(w * m for w, (m, _) in zip(weights, parts, strict=True))
        seen = np.zeros(parts[0][0].shape[0], dtype=bool)
        for w, (_, rows_seen) in zip(weights, parts, strict=True):
            if w > 0:
                seen |= rows_seen
        rows = np.where(seen[:, None], mix, 0.0)
        sums = rows.sum(axis=1, keepdims=True)
        rows = np.divide(rows, sums, out=np.zeros_like(rows), where=sums > 0)
        return rows, seen

    def _fit(
        self,
        history: Mapping[str, np.ndarray],
        matrices: tuple[np.ndarray, np.ndarray, dict[str, list[tuple[np.ndarray, np.ndarray]]]],
        hidden: Mapping[str, np.ndarray | None],
        start: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per dimension: the site's estimated class shares, the matrix they go with (its
        ``hidden`` columns pooled, as ``history`` is) and its rows with data."""
        pg, seen_g, attrs = matrices
        pg = _pool_columns(pg, hidden["group"])
        out = {}
        shares = np.zeros(len(self.groups))
        if seen_g.any():
            s0 = None if start is None else start["group"][seen_g]
            shares[seen_g] = site_shares(history["group"], pg[seen_g], start=s0)
        out["group"] = (shares, pg, seen_g)
        for dim, parts in attrs.items():
            rows, seen = self._attribute_matrix(parts, shares)
            rows = _pool_columns(rows, hidden[dim])
            est = np.zeros(rows.shape[0])
            if seen.any():
                s0 = None if start is None else start[dim][seen]
                if s0 is not None and s0.sum() <= 0:
                    s0 = None
                est[seen] = site_shares(history[dim], rows[seen], start=s0)
            out[dim] = (est, rows, seen)
        return out

    def correct_all(
        self,
        observed: Mapping[str, np.ndarray],
        *,
        history: Mapping[str, np.ndarray] | None = None,
        hidden: Mapping[str, np.ndarray] | None = None,
        rounds: int = 200,
        level: float = 0.95,
        rng: np.random.Generator | None = None,
    ) -> dict[str, Corrected]:
        """Corrected counts of ``group``, ``gender`` and ``age_band``.

        Parameters
        ----------
        observed
            Raw (predicted) counts per dimension of this window, in the label orders of this
            model (:attr:`groups`, :attr:`genders`, :attr:`age_labels`).
        history
            The site's predicted counts per dimension, pooled over its recent windows (this one
            included), in the same orders: what the site's mix is estimated from. None: this
            window alone.
        hidden
            Per dimension, a mask of predicted cells known only as their sum (suppressed at
            release): ``observed`` and ``history`` may spread that sum over them in any way,
            only the sum is used.
        rounds, level
            Bootstrap rounds and the interval's level (no interval with 0 rounds).
        rng
            Source of the bootstrap draws.
        """
        gen = rng if rng is not None else np.random.default_rng()
        masks = {k: None if hidden is None else hidden.get(k) for k in DIMENSIONS}
        masks = {k: None if m is None else np.asarray(m, dtype=bool) for k, m in masks.items()}

        def pooled(counts: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {
                k: _pool_columns(np.maximum(np.asarray(counts[k], dtype=np.float64), 0.0), masks[k])
                for k in DIMENSIONS
            }

        obs = pooled(observed)
        hist = obs if history is None else pooled(history)
        fit = self._fit(hist, self._matrices(None), masks)
        est = {}
        for dim, (shares, matrix, seen) in fit.items():
            e = np.zeros(matrix.shape[0])
            if seen.any():
                e[seen] = posterior_counts(obs[dim], matrix[seen], shares[seen])
            est[dim] = e
        names = {"group": self.groups, "gender": self.genders, "age_band": self.age_labels}
        lows, highs = dict(est), dict(est)
        if rounds > 0 and float(obs["group"].sum()) > 0:
            point = {k: v[0] for k, v in fit.items()}
            expected = {
                dim: (shares @ matrix if seen.any() else None)
                for dim, (shares, matrix, seen) in fit.items()
            }
            draws: dict[str, list[np.ndarray]] = {k: [] for k in names}
            for _ in range(rounds):
                hist_star = _resample(hist, expected, gen)
                refit = self._fit(hist_star, self._matrices(gen), masks, start=point)
                for dim, (shares, matrix, seen) in refit.items():
                    d = np.zeros(matrix.shape[0])
                    if seen.any():
                        d[seen] = _draw_counts(
                            obs[dim], posterior_matrix(matrix[seen], shares[seen]), gen
                        )
                    draws[dim].append(d)
            tail = (1.0 - level) / 2.0 * 100.0
            for k, v in draws.items():
                lo, hi = np.percentile(np.vstack(v), [tail, 100.0 - tail], axis=0)
                # The draws are whole faces, the estimate a share of them, and a small window's
                # draws lean away from it: an interval always holds its own estimate.
                lows[k], highs[k] = np.minimum(lo, est[k]), np.maximum(hi, est[k])
        return {
            k: Corrected(
                estimate=dict(zip(labels, est[k].tolist(), strict=True)),
                low=dict(zip(labels, np.asarray(lows[k]).tolist(), strict=True)),
                high=dict(zip(labels, np.asarray(highs[k]).tolist(), strict=True)),
            )
            for k, labels in names.items()
        }


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
        if labels.get("age_bands"):
            # The bands the model's ages are cut into (what the windows count) must be the
            # report's rows and columns.
            expected["age_band"] = age_band_labels([float(b) for b in labels["age_bands"]])
            found["age_band"] = model.age_labels
        if expected != found:
            raise ValueError(MSG_CONFUSION_LABELS.format(path=path, found=found, expected=expected))
    return model, sha256_bytes(raw)
