"""Label-free score calibration: even out error rates across groups without knowing anyone's group.

A face embedder's cosine scores do not mean the same in every region of its embedding space:
on the SynthFaces evaluation population the share of impostor comparisons above the global
threshold is several times higher among dark-skinned women than among light-skinned men. Two
published post-hoc fixes learn, from unlabelled embeddings, clusters of the embedding space
(k-means) and adjust each comparison's score by the clusters of its two sides:

- **FSN**, Fair Score Normalisation (Terhörst et al., 2020): per cluster ``k``, the threshold
  ``t_k`` at the target FMR over the calibration impostor comparisons that touch ``k``; a
  comparison of clusters ``(i, j)`` gets ``s - ((t_i - t) + (t_j - t)) / 2`` with ``t`` the
  global threshold at that FMR.
- **FairCal**, Fairness Calibration (Salvador et al., ICLR 2022): per cluster ``k``, a beta
  calibration map ``mu_k`` (Kull et al., 2017: a logistic regression on ``ln s'`` and
  ``-ln(1 - s')``, ``s' = (s + 1) / 2``) fitted to the calibration comparisons that touch
  ``k``; a comparison of clusters ``(i, j)`` gets the match probability
  ``(n_i mu_i(s) + n_j mu_j(s)) / (n_i + n_j)`` (``n_k``: comparisons the map was fitted on).
  Here the probability is mapped back to the cosine scale through the inverse of the global map
  fitted on all calibration comparisons, so a threshold, the score model and every report keep
  reading "a cosine score" (the score the uncalibrated model would have needed to give the same
  match probability).
- **AS-norm**, adaptive symmetric score normalisation (Matejka et al., 2017; Sturim and
  Reynolds, 2005, from speaker verification): no clusters but a *cohort*, the calibration
  images themselves. Each side ``x`` of a comparison is described by the mean ``mu_x`` and the
  standard deviation ``sd_x`` of its ``top_k`` highest cosine scores against the cohort (how
  crowded its neighbourhood is), and the comparison gets
  ``z = ((s - w mu_a) / d_a + (s - w mu_b) / d_b) / 2`` with ``d_x = sd_x ** p * r ** (1 - p)``
  (``w = p = 1``: classic AS-norm; ``r``: the median cohort ``sd``). ``z`` is mapped back to the
  cosine scale by ``tanh(alpha z + beta)`` (strictly increasing, inside ``(-1, 1)``), fitted so
  that the calibration impostors' median and their threshold at the target FMR land on the raw
  cosine values they had: thresholds, the score model (tabulated on ``[-1, 1]``) and reports
  keep reading a cosine-like score. A side's statistics are computed once per template (serving
  caches them) and once per probe.

None needs a demographic label: the clusters and the cohort are taken at evaluation from the
calibration part of the synthetic evaluation population (people the embedder never saw, who are
not data subjects), so the released model (``reports/score_calibration.json``: centroids and a
few numbers per cluster, or AS-norm's cohort embeddings as base64 float32) holds no data
subject's biometric data. Serving applies the same
:func:`calibrate` to its scores before thresholding.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visage_ml.data.pairs import genuine_pairs, impostor_pairs, pair_scores, threshold_at_far

logger = logging.getLogger(__name__)

FORMAT = 1
METHODS: tuple[str, ...] = ("none", "fsn", "faircal", "asnorm")
# Methods that describe a comparison's side by cohort statistics instead of a cluster.
COHORT_METHODS: tuple[str, ...] = ("asnorm",)
# A cohort side: the scale-adjusted mean and deviation of its top-k cohort scores.
SIDE = np.dtype([("mu", "<f8"), ("sd", "<f8")])
# Rows whose cohort scores are computed at once (memory: rows x cohort float32).
_COHORT_BLOCK = 8192
SCORE = "cosine scale: the calibrated score of a comparison (accept score >= threshold)"
# Clip of s' = (s + 1) / 2 away from 0 and 1 (the logs of the beta map).
_EPS = 1e-6
# Grid of the inverse of the global beta map (cosine scale).
_GRID = np.linspace(-1.0, 1.0, 20001)

MSG_METHOD = "score calibration method {method!r} is unknown; use one of {choices}"
MSG_FORMAT = (
    "{what} has format {found}, this visage-ml reads format {expected}; run `dvc repro evaluate`"
)
MSG_DIM = (
    "score calibration was fitted on {expected}-value embeddings, got {found}: it belongs to "
    "another embedder; run `dvc repro evaluate`"
)
MSG_MODEL = (
    "reports/score_calibration.json was fitted for embedder {expected}, but serving loaded "
    "embedder {found}; run `dvc repro evaluate` to calibrate the current embedder"
)
MSG_FEW = (
    "score calibration needs at least {need} calibration identities with two or more images; "
    "found {found}. Raise eval_population.calibration_identities_per_cell in params.yaml"
)
MSG_COHORT = (
    "the AS-norm calibration's {what} is missing or invalid; the file was not written by "
    "`dvc repro evaluate` (or was altered): run `dvc repro evaluate`"
)
MSG_MAP = (
    "AS-norm cannot map its scores back to the cosine scale: the calibration impostors' median "
    "and their threshold at the target FMR coincide. Raise "
    "eval_population.calibration_identities_per_cell in params.yaml"
)
MSG_FLAT = (
    "the embedder scores different people alike: the calibration impostors' median cosine "
    "{m:.4f} and their threshold at the target FMR {t:.4f} coincide, so no calibration can be "
    "fitted. It does not tell people apart yet, as after a run stopped after a few steps "
    "(train_embedder.max_steps, epochs): train it longer"
)
MSG_SHAPES = (
    "calibrate(scores, query_emb, gallery_emb): scores must be (Q, G) with query_emb (Q, D) and "
    "gallery_emb (G, D), or (N,) with both (N, D); got {s}, {q}, {g}"
)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _features(scores: np.ndarray) -> np.ndarray:
    """``[ln s', -ln(1 - s')]`` of cosine scores (``s' = (s + 1) / 2``, clipped)."""
    s = np.clip((np.asarray(scores, dtype=np.float64) + 1.0) / 2.0, _EPS, 1.0 - _EPS)
    return np.stack([np.log(s), -np.log1p(-s)], axis=-1)


def beta_logit(scores: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Logit of the beta calibration map ``(a, b, c)`` at cosine ``scores`` (any shape)."""
    f = _features(scores)
    a, b, c = (float(v) for v in params)
    return a * f[..., 0] + b * f[..., 1] + c


def fit_beta(scores: np.ndarray, genuine: np.ndarray) -> np.ndarray:
    """Beta calibration ``(a, b, c)`` of cosine scores (Kull et al., 2017), monotone.

    A logistic regression on ``ln s'`` and ``-ln(1 - s')``; a negative coefficient (a map that
    would not be monotone) is dropped and the other refitted, as the ``betacal`` package does.
    """
    # Deferred: scikit-learn is only needed to fit, never by serving, which imports this module.
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(genuine, dtype=bool)
    if y.all() or not y.any():
        raise ValueError("beta calibration needs genuine and impostor comparisons")
    x = _features(scores)
    cols = [0, 1]
    while True:
        lr = LogisticRegression(C=1e6, max_iter=1000)
        lr.fit(x[:, cols], y)
        coef = lr.coef_[0]
        if np.all(coef >= 0) or len(cols) == 1:
            break
        cols = [cols[int(np.argmax(coef))]]
    out = np.zeros(3, dtype=np.float64)
    for col, value in zip(cols, coef, strict=True):
        out[col] = max(float(value), 0.0)
    out[2] = float(lr.intercept_[0])
    return out


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def cohort_statistics(
    embeddings: np.ndarray,
    cohort: np.ndarray,
    top_k: int,
    *,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each row's ``top_k`` highest cosines against ``cohort``.

    Parameters
    ----------
    embeddings, cohort
        ``(N, D)`` and ``(C, D)``; both are normalised here.
    top_k
        Cohort scores kept per row (at most the cohort's size).
    exclude
        ``(row_codes, cohort_codes)``: a row's scores against cohort members of its own code
        are left out (fitting, where the rows are the cohort: nobody is their own neighbour).

    Returns
    -------
    tuple of numpy.ndarray
        ``(N,)`` float64 means and standard deviations.
    """
    e, c = _unit(embeddings), _unit(cohort)
    # With exclusion a row loses all its own code's cohort members: keep k within what is left.
    own_max = 0 if exclude is None else int(np.bincount(np.asarray(exclude[1])).max(initial=0))
    k = max(1, min(int(top_k), c.shape[0] - own_max))
    mu = np.empty(e.shape[0], dtype=np.float64)
    sd = np.empty(e.shape[0], dtype=np.float64)
    for s in range(0, e.shape[0], _COHORT_BLOCK):
        sims = e[s : s + _COHORT_BLOCK] @ c.T
        if exclude is not None:
            own = exclude[0][s : s + _COHORT_BLOCK, None] == exclude[1][None, :]
            sims = np.where(own, -np.inf, sims)
        top = -np.partition(-sims, k - 1, axis=1)[:, :k].astype(np.float64)
        mu[s : s + _COHORT_BLOCK] = top.mean(axis=1)
        sd[s : s + _COHORT_BLOCK] = top.std(axis=1)
    return mu, sd


def _encode_array(x: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(x, dtype="<f4")
    return {
        "dtype": "<f4",
        "shape": list(a.shape),
        "base64": base64.b64encode(a.tobytes()).decode("ascii"),
    }


def _decode_cohort(doc: Any) -> np.ndarray:
    try:
        if not isinstance(doc, Mapping) or doc.get("dtype") != "<f4":
            raise ValueError("dtype")
        shape = tuple(int(v) for v in doc["shape"])
        raw = base64.b64decode(str(doc["base64"]), validate=True)
        a = np.frombuffer(raw, dtype="<f4").reshape(shape)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise ValueError(MSG_COHORT.format(what="cohort")) from None
    if a.ndim != 2 or a.shape[0] < 2 or not np.all(np.isfinite(a)):
        raise ValueError(MSG_COHORT.format(what="cohort"))
    # Kept bit for bit (evaluation scored with these very values): unit rows or refused.
    if np.any(np.abs(np.linalg.norm(a.astype(np.float64), axis=1) - 1.0) > 1e-4):
        raise ValueError(MSG_COHORT.format(what="cohort"))
    return a.astype(np.float32)


def _finite_number(doc: Mapping[str, Any], key: str, *, low: float, high: float) -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(MSG_COHORT.format(what=key))
    value = float(value)
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(MSG_COHORT.format(what=key))
    return value


@dataclass(frozen=True)
class ScoreCalibration:
    """A fitted label-free score calibration (or the identity, ``method == "none"``).

    Attributes
    ----------
    method
        ``none``, ``fsn`` or ``faircal``.
    centroids
        ``(K, D)`` unit centroids of the embedding clusters (empty for ``none``).
    shift
        FSN: per cluster, its threshold at the target FMR minus the global one.
    beta
        FairCal: ``(K, 3)`` beta maps ``(a, b, c)`` per cluster.
    weight
        FairCal: calibration comparisons each cluster's map was fitted on.
    global_beta
        FairCal: the beta map of all calibration comparisons (its inverse gives the cosine
        scale back).
    cohort
        AS-norm: ``(C, D)`` unit embeddings of the calibration images (synthetic people).
    top_k, mean_weight, sd_power, sd_ref
        AS-norm: cohort scores per side, the weight ``w`` of the cohort mean, the power ``p`` of
        the cohort deviation and the reference deviation ``r`` it is blended with.
    to_cosine
        AS-norm: ``(alpha, beta)`` of the map ``tanh(alpha z + beta)`` back to the cosine scale.
    info
        What it was fitted on (counts, target FMR, seed, embedder version).
    """

    method: str = "none"
    centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    shift: np.ndarray = field(default_factory=lambda: np.zeros(0))
    beta: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    weight: np.ndarray = field(default_factory=lambda: np.zeros(0))
    global_beta: np.ndarray = field(default_factory=lambda: np.zeros(3))
    cohort: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    top_k: int = 0
    mean_weight: float = 1.0
    sd_power: float = 1.0
    sd_ref: float = 1.0
    to_cosine: tuple[float, float] = (1.0, 0.0)
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> bool:
        """Whether scores pass through unchanged."""
        return self.method == "none"

    @property
    def n_clusters(self) -> int:
        """k-means clusters (0 for ``none`` and the cohort methods)."""
        return int(self.centroids.shape[0]) if self.method not in COHORT_METHODS else 0

    @property
    def uses_cohort(self) -> bool:
        """Whether a side is described by cohort statistics (AS-norm), not by a cluster."""
        return self.method in COHORT_METHODS

    @property
    def side_dtype(self) -> np.dtype:
        """dtype of :meth:`sides`: ``int64`` clusters, or :data:`SIDE` records for AS-norm."""
        return SIDE if self.uses_cohort else np.dtype(np.int64)

    @property
    def dim(self) -> int:
        """Embedding size the calibration was fitted on (0 for ``none``)."""
        ref = self.cohort if self.uses_cohort else self.centroids
        return int(ref.shape[1]) if ref.ndim == 2 and ref.shape[0] else 0

    @property
    def model_version(self) -> str:
        """The embedder version the calibration was fitted for (``""`` when unknown)."""
        return str(self.info.get("embedder_model_version", ""))

    def clusters(self, embeddings: np.ndarray) -> np.ndarray:
        """Cluster of each embedding row: the centroid of highest cosine similarity (0 for
        ``none`` and the cohort methods)."""
        if self.identity or self.uses_cohort:
            return np.zeros(len(np.atleast_2d(embeddings)), dtype=np.int64)
        e = _unit(embeddings)
        if e.shape[1] != self.centroids.shape[1]:
            raise ValueError(MSG_DIM.format(expected=self.centroids.shape[1], found=e.shape[1]))
        return np.argmax(e @ self.centroids.T, axis=1).astype(np.int64)

    def sides(
        self, embeddings: np.ndarray, *, exclude: tuple[np.ndarray, np.ndarray] | None = None
    ) -> np.ndarray:
        """What a comparison needs to know of each embedding row, computed once per row.

        The cluster (``int64``) for ``none``, FSN and FairCal; for AS-norm a :data:`SIDE` record
        (``mu``: ``w`` times the mean of the row's top-``k`` cohort scores, ``sd``: the blended
        deviation ``d``). Serving keeps a template's sides beside it; :meth:`apply` takes them.
        ``exclude`` (AS-norm, fitting only): see :func:`cohort_statistics`.
        """
        if not self.uses_cohort:
            return self.clusters(embeddings)
        e = _unit(embeddings)
        if e.shape[1] != self.cohort.shape[1]:
            raise ValueError(MSG_DIM.format(expected=self.cohort.shape[1], found=e.shape[1]))
        mu, sd = cohort_statistics(e, self.cohort, self.top_k, exclude=exclude)
        return self._side_records(mu, sd)

    def _side_records(self, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
        out = np.empty(mu.shape, dtype=SIDE)
        out["mu"] = self.mean_weight * mu
        # The 1e-6 keeps a degenerate neighbourhood (identical cohort scores) from dividing by 0.
        d = np.maximum(sd, 1e-6) ** self.sd_power * self.sd_ref ** (1.0 - self.sd_power)
        out["sd"] = d
        return out

    def apply(self, scores: np.ndarray, side_a: np.ndarray, side_b: np.ndarray) -> np.ndarray:
        """Calibrated scores of comparisons whose sides are ``side_a``, ``side_b`` (the
        :meth:`sides` of each side's embedding: clusters, or AS-norm records; arrays broadcast
        against ``scores``)."""
        s = np.asarray(scores, dtype=np.float64)
        if self.identity:
            return s
        if self.uses_cohort:
            sa, sb = np.asarray(side_a, dtype=SIDE), np.asarray(side_b, dtype=SIDE)
            z = 0.5 * ((s - sa["mu"]) / sa["sd"] + (s - sb["mu"]) / sb["sd"])
            alpha, beta = self.to_cosine
            return np.tanh(alpha * z + beta)
        ca, cb = np.asarray(side_a), np.asarray(side_b)
        if self.method == "fsn":
            return s - 0.5 * (self.shift[ca] + self.shift[cb])
        f = _features(s)
        beta = self.beta

        def logit(c: np.ndarray) -> np.ndarray:
            return beta[c, 0] * f[..., 0] + beta[c, 1] * f[..., 1] + beta[c, 2]

        la, lb = logit(ca), logit(cb)
        wa, wb = self.weight[ca], self.weight[cb]
        # log p = log(wa * sigma(la) + wb * sigma(lb)) - log(wa + wb), without underflow.
        log_p = np.logaddexp(np.log(wa) + _log_sigmoid(la), np.log(wb) + _log_sigmoid(lb))
        log_p = np.minimum(log_p - np.log(wa + wb), -1e-12)
        target = log_p - np.log(-np.expm1(log_p))  # logit(p)
        return self._inverse_global(target)

    def _inverse_global(self, logit_p: np.ndarray) -> np.ndarray:
        grid_logit = beta_logit(_GRID, self.global_beta)
        # The global map is non-decreasing; ties (flat ends) keep their first cosine value.
        keep = np.r_[True, np.diff(grid_logit) > 0]
        return np.interp(logit_p, grid_logit[keep], _GRID[keep])

    def calibrate(
        self, scores: np.ndarray, query_emb: np.ndarray, gallery_emb: np.ndarray
    ) -> np.ndarray:
        """Calibrated scores: see :func:`calibrate`."""
        s = np.asarray(scores, dtype=np.float64)
        if self.identity:
            return s
        q, g = np.atleast_2d(query_emb), np.atleast_2d(gallery_emb)
        if s.ndim == 2 and s.shape == (q.shape[0], g.shape[0]):
            return self.apply(s, self.sides(q)[:, None], self.sides(g)[None, :])
        if s.ndim == 1 and q.shape[0] == g.shape[0] == s.shape[0]:
            return self.apply(s, self.sides(q), self.sides(g))
        raise ValueError(MSG_SHAPES.format(s=s.shape, q=q.shape, g=g.shape))

    def check_embedder(self, model_version: str) -> None:
        """Refuse an embedder other than the one the calibration was fitted for."""
        if not self.identity and self.model_version and self.model_version != model_version:
            raise ValueError(MSG_MODEL.format(expected=self.model_version, found=model_version))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready document (``reports/score_calibration.json``): no pid, image or template
        (AS-norm's cohort is the synthetic calibration people's embeddings, base64 float32)."""
        doc = {
            "format": FORMAT,
            "method": self.method,
            "score": SCORE,
            "n_clusters": self.n_clusters,
            "centroids": np.round(self.centroids.astype(np.float64), 7).tolist(),
            "shift": self.shift.tolist(),
            "beta": self.beta.tolist(),
            "weight": self.weight.tolist(),
            "global_beta": self.global_beta.tolist(),
            "info": dict(self.info),
        }
        if self.uses_cohort:
            doc |= {
                "cohort": _encode_array(self.cohort),
                "top_k": int(self.top_k),
                "mean_weight": float(self.mean_weight),
                "sd_power": float(self.sd_power),
                "sd_ref": float(self.sd_ref),
                "to_cosine": [float(v) for v in self.to_cosine],
            }
        return doc

    @classmethod
    def from_dict(
        cls, doc: Mapping[str, Any], *, what: str = "score calibration"
    ) -> ScoreCalibration:
        """Read :meth:`to_dict` output (refusing another format or method)."""
        if doc.get("format") != FORMAT:
            raise ValueError(MSG_FORMAT.format(what=what, found=doc.get("format"), expected=FORMAT))
        method = str(doc.get("method"))
        if method not in METHODS:
            raise ValueError(MSG_METHOD.format(method=method, choices=", ".join(METHODS)))
        if method in COHORT_METHODS:
            return cls._cohort_from_dict(method, doc)
        centroids = np.asarray(doc.get("centroids") or [], dtype=np.float32)
        k = centroids.shape[0] if centroids.ndim == 2 else 0
        return cls(
            method=method,
            centroids=_unit(centroids) if k else np.zeros((0, 0), np.float32),
            shift=np.asarray(doc.get("shift") or np.zeros(k), dtype=np.float64),
            beta=np.asarray(doc.get("beta") or np.zeros((k, 3)), dtype=np.float64).reshape(-1, 3),
            weight=np.asarray(doc.get("weight") or np.zeros(k), dtype=np.float64),
            global_beta=np.asarray(doc.get("global_beta") or np.zeros(3), dtype=np.float64),
            info=dict(doc.get("info") or {}),
        )

    @classmethod
    def _cohort_from_dict(cls, method: str, doc: Mapping[str, Any]) -> ScoreCalibration:
        """AS-norm's fields, each checked: a file that would score nonsense is refused."""
        cohort = _decode_cohort(doc.get("cohort"))
        top_k = _finite_number(doc, "top_k", low=1, high=cohort.shape[0])
        if top_k != int(top_k):
            raise ValueError(MSG_COHORT.format(what="top_k"))
        mapping = doc.get("to_cosine")
        if not isinstance(mapping, list) or len(mapping) != 2:
            raise ValueError(MSG_COHORT.format(what="to_cosine"))
        alpha = _finite_number({"a": mapping[0]}, "a", low=1e-9, high=1e9)
        beta = _finite_number({"b": mapping[1]}, "b", low=-1e9, high=1e9)
        return cls(
            method=method,
            cohort=cohort,
            top_k=int(top_k),
            mean_weight=_finite_number(doc, "mean_weight", low=0.0, high=2.0),
            sd_power=_finite_number(doc, "sd_power", low=0.0, high=1.0),
            sd_ref=_finite_number(doc, "sd_ref", low=1e-9, high=10.0),
            to_cosine=(alpha, beta),
            info=dict(doc.get("info") or {}),
        )


NO_CALIBRATION = ScoreCalibration()


def calibrate(
    scores: np.ndarray,
    query_emb: np.ndarray,
    gallery_emb: np.ndarray,
    *,
    calibration: ScoreCalibration = NO_CALIBRATION,
) -> np.ndarray:
    """Calibrated comparison scores, on the cosine scale, to threshold as raw scores are.

    Parameters
    ----------
    scores
        Cosine scores: ``(Q, G)`` of every query against every gallery row, or ``(N,)`` of
        paired rows.
    query_emb, gallery_emb
        The embeddings (or templates) behind the scores: ``(Q, D)`` and ``(G, D)``, or both
        ``(N, D)``.
    calibration
        The released calibration (:func:`load_calibration` of
        ``reports/score_calibration.json``); the identity by default.

    Returns
    -------
    numpy.ndarray
        float64 scores of the same shape (``scores`` unchanged for method ``none``).
    """
    return calibration.calibrate(scores, query_emb, gallery_emb)


def load_calibration(doc: Mapping[str, Any] | None) -> ScoreCalibration:
    """The calibration of a ``score_calibration.json`` document (the identity for None)."""
    return NO_CALIBRATION if doc is None else ScoreCalibration.from_dict(doc)


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationSet:
    """The calibration comparisons: scores, truth, the clusters of both sides and (AS-norm's
    cohort) the calibration images with their rows in each comparison."""

    score: np.ndarray
    genuine: np.ndarray
    cluster_a: np.ndarray
    cluster_b: np.ndarray
    centroids: np.ndarray
    n_identities: int
    n_images: int
    embeddings: np.ndarray | None = None
    codes: np.ndarray | None = None
    a: np.ndarray | None = None
    b: np.ndarray | None = None


def kmeans_centroids(embeddings: np.ndarray, n_clusters: int, *, seed: int) -> np.ndarray:
    """``(K, D)`` unit centroids of k-means on the unit embeddings (scikit-learn)."""
    # Deferred: scikit-learn is only needed to fit, never by serving.
    from sklearn.cluster import KMeans

    e = _unit(embeddings).astype(np.float64)
    k = max(1, min(int(n_clusters), e.shape[0]))
    km = KMeans(n_clusters=k, n_init=3, random_state=int(seed) % (2**31))
    km.fit(e)
    return _unit(km.cluster_centers_)


def calibration_set(
    embeddings: np.ndarray,
    identity_codes: np.ndarray,
    *,
    n_clusters: int,
    impostor_pairs_max: int,
    seed: int,
    min_identities: int = 4,
) -> CalibrationSet:
    """Clusters of the calibration embeddings and every comparison among them (scored).

    All genuine comparisons and up to ``impostor_pairs_max`` impostor comparisons (a seeded
    sample) of the calibration images.
    """
    codes = np.asarray(identity_codes, dtype=np.int64)
    counts = np.bincount(codes) if codes.size else np.zeros(0, np.int64)
    usable = int((counts >= 2).sum())
    if usable < min_identities:
        raise ValueError(MSG_FEW.format(need=min_identities, found=usable))
    emb = _unit(embeddings)
    centroids = kmeans_centroids(emb, n_clusters, seed=seed)
    cl = np.argmax(emb @ centroids.T, axis=1)
    ga, gb = genuine_pairs(codes)
    ia, ib = impostor_pairs(codes, impostor_pairs_max, seed=seed)
    a, b = np.concatenate([ga, ia]), np.concatenate([gb, ib])
    genuine = np.zeros(a.size, dtype=bool)
    genuine[: ga.size] = True
    return CalibrationSet(
        score=pair_scores(emb, a, b),
        genuine=genuine,
        cluster_a=cl[a],
        cluster_b=cl[b],
        centroids=centroids,
        n_identities=int(np.unique(codes).size),
        n_images=int(codes.size),
        embeddings=emb,
        codes=codes,
        a=a,
        b=b,
    )


def fit_calibration(
    method: str,
    cal: CalibrationSet,
    *,
    target_fmr: float,
    min_cluster_impostors: int = 2000,
    info: Mapping[str, Any] | None = None,
    cohort_top_k: int = 50,
    cohort_mean_weight: float = 1.0,
    cohort_sd_power: float = 1.0,
) -> ScoreCalibration:
    """Fit ``method`` (``none``, ``fsn``, ``faircal``, ``asnorm``) on the calibration comparisons.

    A cluster touched by fewer than ``min_cluster_impostors`` impostor comparisons keeps the
    global behaviour (no FSN shift; FairCal: the global map), so a thin cluster cannot move
    anyone's scores on a handful of comparisons. AS-norm (``cohort_*``: ``k``, ``w``, ``p`` of
    the module docstring) takes the calibration images as its cohort; the calibration images'
    own statistics leave their identity out.
    """
    if method not in METHODS:
        raise ValueError(MSG_METHOD.format(method=method, choices=", ".join(METHODS)))
    k = cal.centroids.shape[0]
    base = {
        "method": method,
        "n_clusters": k,
        "target_fmr": float(target_fmr),
        "calibration_identities": cal.n_identities,
        "calibration_images": cal.n_images,
        "calibration_genuine": int(cal.genuine.sum()),
        "calibration_impostor": int((~cal.genuine).sum()),
        "min_cluster_impostors": int(min_cluster_impostors),
        **dict(info or {}),
    }
    if method == "none":
        return ScoreCalibration(info=base)
    if method in COHORT_METHODS:
        return _fit_asnorm(
            cal,
            target_fmr=target_fmr,
            top_k=cohort_top_k,
            mean_weight=cohort_mean_weight,
            sd_power=cohort_sd_power,
            info=base,
        )
    imp = ~cal.genuine
    touch = [(cal.cluster_a == c) | (cal.cluster_b == c) for c in range(k)]
    n_imp = np.array([int((t & imp).sum()) for t in touch])
    thin = n_imp < min_cluster_impostors
    base["thin_clusters"] = int(thin.sum())
    if method == "fsn":
        global_t = threshold_at_far(cal.score[imp], target_fmr)
        shift = np.zeros(k)
        for c in range(k):
            if not thin[c]:
                shift[c] = threshold_at_far(cal.score[touch[c] & imp], target_fmr) - global_t
        return ScoreCalibration(
            method=method,
            centroids=cal.centroids,
            shift=shift,
            info={**base, "global_threshold": float(global_t)},
        )
    global_beta = fit_beta(cal.score, cal.genuine)
    beta = np.tile(global_beta, (k, 1))
    weight = np.array([float(t.sum()) for t in touch])
    for c in range(k):
        if not thin[c] and cal.genuine[touch[c]].any():
            beta[c] = fit_beta(cal.score[touch[c]], cal.genuine[touch[c]])
    return ScoreCalibration(
        method=method,
        centroids=cal.centroids,
        beta=beta,
        weight=np.maximum(weight, 1.0),
        global_beta=global_beta,
        info=base,
    )


def _fit_asnorm(
    cal: CalibrationSet,
    *,
    target_fmr: float,
    top_k: int,
    mean_weight: float,
    sd_power: float,
    info: Mapping[str, Any],
) -> ScoreCalibration:
    """AS-norm with the calibration images as cohort, and its map back to the cosine scale."""
    if cal.embeddings is None or cal.codes is None or cal.a is None or cal.b is None:
        raise ValueError("AS-norm needs the calibration images: build the set with calibration_set")
    cohort = _unit(cal.embeddings)
    # Fitting leaves each image's own identity out of its cohort: k fits what remains.
    k = max(1, min(int(top_k), cohort.shape[0] - int(np.bincount(cal.codes).max())))
    _, sd = cohort_statistics(cohort, cohort, k, exclude=(cal.codes, cal.codes))
    sd_ref = float(np.median(np.maximum(sd, 1e-6)))
    draft = ScoreCalibration(
        method="asnorm",
        cohort=cohort,
        top_k=k,
        mean_weight=float(mean_weight),
        sd_power=float(sd_power),
        sd_ref=sd_ref,
        to_cosine=(1.0, 0.0),
    )
    side = draft.sides(cohort, exclude=(cal.codes, cal.codes))
    sa, sb = side[cal.a], side[cal.b]
    z = 0.5 * ((cal.score - sa["mu"]) / sa["sd"] + (cal.score - sb["mu"]) / sb["sd"])
    imp = ~cal.genuine
    # Two anchors in Fisher's z (atanh) of the cosine: the impostors' median and their
    # threshold at the target FMR keep the raw cosine values they had on these comparisons.
    raw_t = threshold_at_far(cal.score[imp], target_fmr)
    z_t = threshold_at_far(z[imp], target_fmr)
    raw_m, z_m = float(np.median(cal.score[imp])), float(np.median(z[imp]))
    lim = 1.0 - 1e-6
    f_t, f_m = np.arctanh(np.clip([raw_t, raw_m], -lim, lim))
    if not f_t > f_m:  # the raw scores themselves: the model, not the calibration set
        raise ValueError(MSG_FLAT.format(m=raw_m, t=raw_t))
    if not z_t > z_m:
        raise ValueError(MSG_MAP)
    alpha = float((f_t - f_m) / (z_t - z_m))
    beta = float(f_t - alpha * z_t)
    return dataclasses.replace(
        draft,
        to_cosine=(alpha, beta),
        info={
            **info,
            "cohort_images": int(cohort.shape[0]),
            "top_k": k,
            "mean_weight": float(mean_weight),
            "sd_power": float(sd_power),
            "global_threshold": float(raw_t),
        },
    )


def fit_all(
    cal: CalibrationSet,
    methods: Sequence[str],
    *,
    target_fmr: float,
    min_cluster_impostors: int,
    info: Mapping[str, Any] | None = None,
    cohort_top_k: int = 50,
    cohort_mean_weight: float = 1.0,
    cohort_sd_power: float = 1.0,
) -> dict[str, ScoreCalibration]:
    """:func:`fit_calibration` of each of ``methods`` on the same calibration comparisons."""
    return {
        m: fit_calibration(
            m,
            cal,
            target_fmr=target_fmr,
            min_cluster_impostors=min_cluster_impostors,
            info=info,
            cohort_top_k=cohort_top_k,
            cohort_mean_weight=cohort_mean_weight,
            cohort_sd_power=cohort_sd_power,
        )
        for m in methods
    }


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None
