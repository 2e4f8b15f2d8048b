"""The score model: what serving needs to place a 1:N threshold for the gallery it serves.

A 1:1 threshold at a false match rate (FMR) is the wrong cut for a search: a stranger compared
with ``N`` templates is falsely matched with probability (for independent comparisons)
``FPIR(N, t) = 1 - (1 - FMR(t)) ** N``, about ``N * FMR(t)`` when that is small. Keeping the
false positive identification rate at a target ``p`` therefore needs ``FMR(t) = 1 - (1 - p) **
(1 / N)``: 1e-5 for ``p = 0.01`` at 1,000 enrolled, 1e-6 at 10,000; far below what an
evaluation set can count directly. This module turns the evaluation's comparisons into:

- the **impostor tail**: ``FMR(t)`` on a grid of thresholds, empirical where the comparisons
  suffice (at or below the threshold ``u`` exceeded by the top ``tail_share`` of impostor
  scores), and beyond ``u`` a generalised Pareto distribution (GPD) fitted by weighted maximum
  likelihood to the exceedances over ``u`` (peaks over threshold, Pickands-Balkema-de Haan).
  The tail is fitted on the Fisher z scale, ``atanh(score)``, where the cosine's end point at 1
  is at infinity, and its shape is held at ``xi >= XI_FLOOR``: a million comparisons cannot
  tell a tail that ends just beyond the data from a light one that does not, and the one that
  ends was the optimistic guess. On ``benchmarks/bench_identify_scale.py``'s populations (two
  independent draws of calibration people and strangers, 10,000 enrolled, target FPIR 1 %,
  scored offline) strangers were falsely matched 2.2 % and 2.4 % of the time with a free shape
  on the cosine scale (``xi`` about -0.25, ``tail_share`` 0.003) at the point estimate, 1.8 %
  and 2.0 % at the 80 % bound then served; with this model 0.99 % and 1.4 %, and 0.58 % and 1.0 %
  at the bound (through the API, first draw: 1.70 % before, 0.57 % now);
- a **one-sided upper confidence bound** on ``FMR(t)`` at every grid point: the ``confidence``
  quantile over an identity bootstrap (identities resampled with replacement, the tail refitted
  on each resample), so the uncertainty of a tail that rests on few people is in the bound;
- the **genuine score distribution** (``FNMR(t)`` on the same grid), for the expected FNIR:
  ``FNIR(N, t) = 1 - E_genuine[1{s >= t} * (1 - FMR(s)) ** (N - 1)]`` (the mate is found when
  its score passes ``t`` and no impostor of the ``N - 1`` others outscores it);
- the same point estimates per demographic group (probes of the group against every
  template), for the report's FNIR-against-gallery-size curves.

Comparisons are what serving does: one probe image against one template, the normalised mean of
``template_images`` enrolment images of an identity (:func:`template_comparisons`). The model
says how far it may be trusted: ``min_bounded_fmr`` is the smallest FMR it claims to bound
(``max_extrapolation_decades`` below the resolution ``1 / n_impostor`` of the comparisons);
serving flags a gallery whose target needs less.

Only scores, counts and model versions are stored: no pid, no template, no image.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from visage_ml.evaluation.calibration import NO_CALIBRATION, ScoreCalibration

logger = logging.getLogger(__name__)

FORMAT = 1
SCORE = "cosine similarity of a probe embedding and an enrolled template (unit vectors)"
GRID_START = -1.0
GRID_STEP = 0.002
GRID_POINTS = 1001
# Shape parameter range of the fit, on the Fisher z scale (module docstring): a tail may be
# light or heavy, but not end close to the data (xi near -1: the end point at u + sigma / -xi).
XI_FLOOR = -0.1
XI_BOUNDS = (XI_FLOOR, 1.0)
# Scores are clipped this far inside (-1, 1) before atanh (a cosine of exactly 1 is finite).
Z_CLIP = 1e-9
# Fewest distinct exceedances a bootstrap resample's tail is refitted on (rounds with fewer are
# dropped, and counted out of "rounds").
MIN_ROUND_EXCEEDANCES = 10
# Impostor comparisons kept at most (a random subset beyond): memory of the score matrix.
MAX_IMPOSTOR = 30_000_000

MSG_FEW_EXCEEDANCES = (
    "only {n} impostor comparisons exceed the tail threshold (need {need}); the score model's "
    "tail is not fitted, so FMR beyond the empirical range is unknown. Evaluate on more "
    "identities (evaluate.impostor_pairs / the evaluation population)"
)
MSG_NO_SCORES = "the score model needs genuine and impostor scores; found {g} and {i}"
MSG_SMALL_TEMPLATES = (
    "the score model's templates average {n} images, not the {asked} asked "
    "(evaluate.score_model.template_images): each identity keeps one image as its probe; give "
    "the evaluation population {need} images per identity to measure serving's templates"
)
MSG_NO_LEVEL = (
    "the score model holds upper bounds on FMR at levels {stored}, not {level}; set "
    "serving.identify.confidence to one of them, or add it to "
    "evaluate.score_model.confidence_levels and run `dvc repro evaluate`"
)
MSG_MODEL_FORMAT = (
    "{what} has format {found}, this visage-ml reads format {expected}; run `dvc repro evaluate`"
)


# ---------------------------------------------------------------------------------------------
# Comparisons (probe image against enrolled template)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparisons:
    """Probe-against-template scores with the identities on both sides.

    Attributes
    ----------
    genuine, impostor
        Scores of mated and non-mated comparisons.
    genuine_probe, impostor_probe, impostor_ref
        Identity code of the probe (and, for impostors, of the template) of each comparison.
    n_identities
        Number of identity codes.
    template_images
        Enrolment images averaged into the templates (the most common number; fewer than
        asked where an identity has no more than that besides its probe).
    """

    genuine: np.ndarray
    impostor: np.ndarray
    genuine_probe: np.ndarray
    impostor_probe: np.ndarray
    impostor_ref: np.ndarray
    n_identities: int
    template_images: int


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def template_comparisons(
    embeddings: np.ndarray,
    identity_codes: np.ndarray,
    *,
    template_images: int = 1,
    seed: int = 0,
    max_impostor: int = MAX_IMPOSTOR,
    calibration: ScoreCalibration = NO_CALIBRATION,
) -> Comparisons:
    """Score every image against every identity's template, as a serving search would.

    Each identity with at least two images gets a template from ``min(template_images, n - 1)``
    of them (chosen at random, seeded); its other images are its genuine probes. Every image is
    an impostor probe against the templates of all other identities.

    Parameters
    ----------
    embeddings
        ``(N, D)`` embeddings (normalised here).
    identity_codes
        Identity code (``0..K-1``) per row.
    template_images
        Enrolment images per template (``gallery.images_per_subject`` for the gallery stage).
    seed
        Seed of the choice of template images and of any impostor subsample.
    max_impostor
        Impostor comparisons kept at most (a uniform random subset beyond).
    calibration
        The served score calibration, applied to every comparison as serving applies it
        before thresholding (none by default).

    Returns
    -------
    Comparisons
    """
    emb = _unit(embeddings)
    codes = np.asarray(identity_codes, dtype=np.int64)
    k = int(codes.max()) + 1 if codes.size else 0
    rng = np.random.default_rng(seed)
    order = rng.permutation(codes.size)
    order = order[np.argsort(codes[order], kind="stable")]
    starts = np.flatnonzero(np.r_[True, codes[order][1:] != codes[order][:-1]])
    ends = np.r_[starts[1:], order.size]
    templates, template_ids, sizes = [], [], []
    in_template = np.zeros(codes.size, dtype=bool)
    for s, e in zip(starts, ends, strict=True):
        n = e - s
        if n < 2:
            continue
        rows = order[s : s + min(template_images, n - 1)]
        sizes.append(rows.size)
        in_template[rows] = True
        t = emb[rows].mean(axis=0)
        templates.append(t / max(float(np.linalg.norm(t)), 1e-12))
        template_ids.append(int(codes[order[s]]))
    if not templates:
        raise ValueError(MSG_NO_SCORES.format(g=0, i=0))
    # What the templates averaged, not what was asked: the most common size (the smaller on a
    # tie), since each identity keeps one image as its probe.
    counts = np.bincount(sizes)
    measured = int(np.argmax(counts))
    if measured < template_images:
        logger.info(
            MSG_SMALL_TEMPLATES.format(n=measured, asked=template_images, need=template_images + 1)
        )
    tmat = np.stack(templates).astype(np.float32)
    tids = np.asarray(template_ids, dtype=np.int64)
    scores = emb @ tmat.T  # (N images, T templates)
    if not calibration.identity:
        scores = calibration.calibrate(scores, emb, tmat)
    same = codes[:, None] == tids[None, :]
    gen_mask = same & ~in_template[:, None]
    gi, gj = np.nonzero(gen_mask)
    ii, ij = np.nonzero(~same)
    if ii.size > max_impostor:
        keep = np.sort(rng.choice(ii.size, size=max_impostor, replace=False))
        ii, ij = ii[keep], ij[keep]
    return Comparisons(
        genuine=scores[gi, gj].astype(np.float64),
        impostor=scores[ii, ij].astype(np.float64),
        genuine_probe=codes[gi],
        impostor_probe=codes[ii],
        impostor_ref=tids[ij],
        n_identities=k,
        template_images=measured,
    )


# ---------------------------------------------------------------------------------------------
# Tail fit
# ---------------------------------------------------------------------------------------------


def grid() -> np.ndarray:
    """The thresholds the model is tabulated at (cosine, ``GRID_START`` upwards)."""
    return GRID_START + GRID_STEP * np.arange(GRID_POINTS)


def _gpd_nll(params: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    xi, log_sigma = float(params[0]), float(params[1])
    if not XI_BOUNDS[0] <= xi <= XI_BOUNDS[1]:
        return math.inf
    sigma = math.exp(log_sigma)
    total = float(w.sum())
    if abs(xi) < 1e-6:
        return total * log_sigma + float(np.dot(w, y)) / sigma
    z = 1.0 + xi * y / sigma
    if np.any(z <= 0):
        return math.inf
    return total * log_sigma + (1.0 + 1.0 / xi) * float(np.dot(w, np.log(z)))


def fit_gpd(exceedances: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    """Weighted maximum-likelihood fit of a generalised Pareto distribution.

    Parameters
    ----------
    exceedances
        ``y = score - u > 0`` of the comparisons above the tail threshold ``u``.
    weights
        Comparison weights (bootstrap multiplicities); all ones when None.

    Returns
    -------
    xi, sigma
        Shape and scale: ``P(Y > y) = (1 + xi * y / sigma) ** (-1 / xi)``.
    """
    from scipy.optimize import minimize  # deferred: only evaluation fits tails

    y = np.asarray(exceedances, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = w > 0
    y, w = y[keep], w[keep]
    if y.size < 2:
        raise ValueError(MSG_FEW_EXCEEDANCES.format(n=int(y.size), need=2))
    mean = float(np.average(y, weights=w))
    var = float(np.average((y - mean) ** 2, weights=w)) or mean**2
    xi0 = float(np.clip(0.5 * (1.0 - mean**2 / var), -0.5, 0.5))
    sigma0 = max(0.5 * mean * (mean**2 / var + 1.0), 1e-6)
    starts = [np.array([xi0, math.log(sigma0)]), np.array([-0.2, math.log(max(mean, 1e-6))])]
    best = None
    for x0 in starts:
        if not math.isfinite(_gpd_nll(x0, y, w)):
            x0 = np.array([0.0, math.log(max(mean, 1e-6))])
        res = minimize(
            _gpd_nll,
            x0,
            args=(y, w),
            method="Nelder-Mead",
            options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 2000},
        )
        if best is None or res.fun < best.fun:
            best = res
    assert best is not None
    return float(best.x[0]), float(math.exp(best.x[1]))


def gpd_survival(y: np.ndarray, xi: float, sigma: float) -> np.ndarray:
    """``P(Y > y)`` of the fitted GPD (0 beyond its end point when ``xi < 0``)."""
    y = np.maximum(np.asarray(y, dtype=np.float64), 0.0)
    if abs(xi) < 1e-6:
        return np.exp(-y / sigma)
    z = 1.0 + xi * y / sigma
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(z > 0, np.power(np.maximum(z, 1e-300), -1.0 / xi), 0.0)
    return out


def _empirical_sf(scores: np.ndarray, weights: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Weighted share of ``scores >= t`` for each ``t`` of ``ts`` (``scores`` sorted: as is)."""
    s, w = scores, weights
    if s.size > 1 and np.any(s[1:] < s[:-1]):
        order = np.argsort(s, kind="stable")
        s, w = s[order], w[order]
    total = float(w.sum())
    if total <= 0:
        return np.full(ts.shape, np.nan)
    tail = np.r_[np.cumsum(w[::-1])[::-1], 0.0]  # tail[i] = weight of s[i:]
    return tail[np.searchsorted(s, ts, side="left")] / total


@dataclass(frozen=True)
class TailFit:
    """The tail of one impostor sample: threshold ``u``, its exceedance share and GPD."""

    u: float
    p_u: float
    xi: float
    sigma: float
    n_exceedances: int


def _fmr_curve(
    scores: np.ndarray, weights: np.ndarray, ts: np.ndarray, *, u: float, fit: bool, min_exc: int
) -> tuple[np.ndarray, TailFit | None]:
    """FMR at ``ts``: empirical up to ``u``, the GPD fitted over ``u`` beyond it (unknown, NaN,
    beyond ``u`` without a fit: no comparison above a score is no evidence that FMR is 0)."""
    fmr = _empirical_sf(scores, weights, ts)
    if not fit:
        fmr[ts > u] = np.nan
        return fmr, None
    above = scores > u
    n_exc = int(np.count_nonzero(above & (weights > 0)))
    if n_exc < min_exc:
        fmr[ts > u] = np.nan
        return fmr, None
    total = float(weights.sum())
    p_u = float(weights[above].sum()) / total
    xi, sigma = fit_gpd(fisher_z(scores[above]) - fisher_z(u), weights[above])
    beyond = ts > u
    fmr[beyond] = p_u * gpd_survival(fisher_z(ts[beyond]) - fisher_z(u), xi, sigma)
    return fmr, TailFit(u=u, p_u=p_u, xi=xi, sigma=sigma, n_exceedances=n_exc)


class _Resampled:
    """:func:`_fmr_curve` of one sorted impostor sample under identity reweightings, fast.

    A comparison of two identities counts ``m[a] * m[b]`` times in a resample with identity
    multiplicities ``m``; one without a template identity (ref -1: independent scores, as in
    tests) counts ``m[a]`` times. The weights are whole numbers, so their sums are computed in
    integers, exactly as the float sums of :func:`_fmr_curve` are (every partial sum is a whole
    number well below 2**53): the same curves and fits, bit for bit, in about a third of the
    time (the grid's positions in the sorted scores and the exceedances' z are found once, not
    per round).
    """

    def __init__(
        self, imp: np.ndarray, probe: np.ndarray, ref: np.ndarray, ts: np.ndarray, *, u: float
    ) -> None:
        if imp.size > 1 and np.any(imp[1:] < imp[:-1]):
            raise ValueError("impostor scores must be sorted")
        self.probe = np.asarray(probe, dtype=np.intp)
        # ref -1 reads the multiplicity 1 appended after the identities' (fmr_curve).
        self.ref = np.asarray(ref, dtype=np.intp)
        n = imp.size
        positions = np.searchsorted(imp, ts, side="left")
        self.first_above = int(np.searchsorted(imp, u, side="right"))
        # The weight of scores[p:] is needed at the grid's positions p and at the first
        # exceedance only: sums over the segments between them, then a cumsum over the segments.
        # A position past the last score finds no cut, so its index is the cumsum's final 0.
        wanted = np.r_[positions, self.first_above]
        self.cuts = np.unique(np.r_[0, wanted[wanted < n]])
        self.segment_of = np.searchsorted(self.cuts, wanted)
        self.z_exc = fisher_z(imp[self.first_above :]) - fisher_z(u)
        self.beyond = ts > u
        self.z_beyond = fisher_z(ts[self.beyond]) - fisher_z(u)

    def fmr_curve(self, m: np.ndarray, *, min_exc: int) -> np.ndarray | None:
        """FMR at the grid under multiplicities ``m`` (None: too few exceedances or no fit)."""
        mi = np.append(np.asarray(np.rint(m), dtype=np.int32), np.int32(1))
        # Fancy indexing with intp indices into int32: the fastest gather measured here.
        w = mi[self.probe]
        w *= mi[self.ref]
        w_exc = w[self.first_above :]
        if int(np.count_nonzero(w_exc)) < min_exc:
            return None
        # weight[j] = weight of scores[p:] at the j-th grid position p (then the first exceedance).
        segments = np.add.reduceat(w, self.cuts, dtype=np.int64)
        from_cut = np.r_[np.cumsum(segments[::-1])[::-1], 0]
        weight = from_cut[self.segment_of]
        total = int(from_cut[0])
        if total <= 0:
            return None
        fmr = weight[:-1] / float(total)
        p_u = float(weight[-1]) / float(total)
        try:
            xi, sigma = fit_gpd(self.z_exc, w_exc.astype(np.float64))
        except ValueError:
            return None
        fmr[self.beyond] = p_u * gpd_survival(self.z_beyond, xi, sigma)
        return fmr


def fisher_z(x: Any) -> Any:
    """``atanh`` of cosine scores, clipped inside (-1, 1): the scale the tail is fitted on."""
    return np.arctanh(np.clip(x, -1.0 + Z_CLIP, 1.0 - Z_CLIP))


def _fnmr_curve(scores: np.ndarray, weights: np.ndarray, ts: np.ndarray) -> np.ndarray:
    return 1.0 - _empirical_sf(scores, weights, ts)


def _multiplicities(n: int, rounds: int, rng: np.random.Generator) -> np.ndarray:
    if n <= 0 or rounds <= 0:
        return np.zeros((max(rounds, 0), max(n, 0)))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=rounds).astype(np.float64)


def _compact(a: np.ndarray) -> list[float | None]:
    """Grid values for JSON: 5 significant digits, None for unknown."""
    return [float(f"{v:.5g}") if np.isfinite(v) else None for v in np.asarray(a, np.float64)]


def level_key(level: float) -> str:
    """The key of an upper bound's confidence level in the document (``0.8`` -> ``"0.8"``)."""
    return f"{float(level):g}"


def build_score_model(
    comparisons: Comparisons,
    *,
    groups: Sequence[str] | np.ndarray | None = None,
    tail_share: float = 0.003,
    min_exceedances: int = 100,
    bootstrap: int = 200,
    confidence_levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95),
    max_extrapolation_decades: float = 1.0,
    seed: int = 0,
    model_version: str = "",
) -> dict[str, Any]:
    """The score model document (``reports/score_model.json``) of one evaluation.

    Parameters
    ----------
    comparisons
        Probe-against-template scores (:func:`template_comparisons`).
    groups
        Demographic group per identity code (``"unlabeled"`` or None: in no group); per-group
        curves are added for groups with genuine and impostor comparisons.
    tail_share
        Share of impostor comparisons above the tail threshold ``u`` (at least
        ``min_exceedances`` of them).
    min_exceedances
        Fewest exceedances a GPD is fitted on.
    bootstrap
        Identity resamples of the upper bounds (0: every bound is the point estimate).
    confidence_levels
        One-sided levels of the upper bounds on FMR stored (serving picks one).
    max_extrapolation_decades
        How far below the comparisons' resolution ``1 / n_impostor`` the model claims a bound.
    seed
        Seed of the resamples.
    model_version
        The embedder's ``model_version`` (serving refuses a model of another embedder).

    Returns
    -------
    dict
        JSON-ready: the grid, ``fmr``, ``fmr_upper``, ``fnmr``, per-group curves, the tail fit,
        counts and versions. No identifiers.
    """
    c = comparisons
    if c.genuine.size == 0 or c.impostor.size == 0:
        raise ValueError(MSG_NO_SCORES.format(g=c.genuine.size, i=c.impostor.size))
    ts = grid()
    # Sorted once: every bootstrap round reweights the same order.
    order = np.argsort(c.impostor, kind="stable")
    imp, probe, ref = c.impostor[order], c.impostor_probe[order], c.impostor_ref[order]
    gen = c.genuine
    n_imp = imp.size
    n_exc = max(math.ceil(tail_share * n_imp), min_exceedances)
    fit_tail = n_imp > n_exc
    u = float(imp[n_imp - n_exc - 1]) if fit_tail else float(imp[-1])
    if not fit_tail:
        logger.warning(MSG_FEW_EXCEEDANCES.format(n=n_imp, need=min_exceedances))
    ones_i, ones_g = np.ones(n_imp), np.ones(gen.size)
    fmr, tail = _fmr_curve(imp, ones_i, ts, u=u, fit=fit_tail, min_exc=min_exceedances)
    fnmr = _fnmr_curve(gen, ones_g, ts)
    rng = np.random.default_rng(seed)
    levels = sorted({float(x) for x in confidence_levels})
    uppers = {lvl: fmr.copy() for lvl in levels}
    rounds_used = 0
    if bootstrap > 0 and tail is not None:
        curves = []
        # A resample repeats some identities and drops others: its exceedances are fewer
        # distinct scores with weights, enough for a weighted fit well below min_exceedances.
        min_round = max(MIN_ROUND_EXCEEDANCES, min_exceedances // 10)
        resampled = _Resampled(imp, probe, ref, ts, u=u)
        for m in _multiplicities(c.n_identities, bootstrap, rng):
            curve = resampled.fmr_curve(m, min_exc=min_round)
            if curve is not None:
                curves.append(curve)
        if curves:
            rounds_used = len(curves)
            stack = np.vstack(curves)
            for lvl in levels:
                uppers[lvl] = np.nanquantile(stack, lvl, axis=0)
    for lvl in levels:
        # Never below the point estimate; and FMR never rises with the threshold, so a bound
        # that does (resampling noise) is levelled from the right, over the scores where FMR
        # is known: beyond the highest impostor score without a tail it stays unknown (NaN,
        # never a threshold), and must not raise every bound below it to 1.
        up = np.fmax(uppers[lvl], fmr)
        known = np.isfinite(up)
        levelled = np.maximum.accumulate(np.where(known, up, -np.inf)[::-1])[::-1]
        uppers[lvl] = np.where(known, levelled, np.nan)
    # Without a tail nothing is extrapolated: the model bounds no FMR below 1 / n_impostor.
    decades = max_extrapolation_decades if tail is not None else 0.0
    min_bounded = (1.0 / n_imp) * 10.0 ** (-decades)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "score": SCORE,
        "embedder_model_version": model_version,
        "template_images": c.template_images,
        "grid": {"start": GRID_START, "step": GRID_STEP, "points": GRID_POINTS},
        "fmr": _compact(fmr),
        "fmr_upper": {level_key(lvl): _compact(up) for lvl, up in uppers.items()},
        "fnmr": _compact(fnmr),
        "tail": None
        if tail is None
        else {
            "u": tail.u,
            "p_u": tail.p_u,
            "xi": tail.xi,
            "sigma": tail.sigma,
            "n_exceedances": tail.n_exceedances,
            "method": "generalised Pareto, weighted maximum likelihood, peaks over u, "
            f"on atanh(score), xi >= {XI_FLOOR}",
        },
        "bound": {
            "method": "identity bootstrap (identities resampled, tail refitted), one-sided",
            "levels": levels,
            "rounds": rounds_used,
        },
        "n_genuine": int(gen.size),
        "n_impostor": int(n_imp),
        "n_identities": int(c.n_identities),
        "min_bounded_fmr": min_bounded,
        "max_extrapolation_decades": decades,
        "groups": _group_curves(c, groups, ts, u=u, min_exc=min_exceedances),
    }
    return doc


def _group_curves(
    c: Comparisons, groups: Any, ts: np.ndarray, *, u: float, min_exc: int
) -> dict[str, dict[str, Any]]:
    if groups is None:
        return {}
    labels = np.asarray(groups).astype(str)
    out: dict[str, dict[str, Any]] = {}
    for g in sorted(set(labels.tolist()) - {"unlabeled", "None", "nan", ""}):
        ids = np.flatnonzero(labels == g)
        gm = np.isin(c.genuine_probe, ids)
        im = np.isin(c.impostor_probe, ids)
        if not gm.any() or not im.any():
            continue
        imp = c.impostor[im]
        fit = int(np.count_nonzero(imp > u)) >= min_exc
        fmr, tail = _fmr_curve(imp, np.ones(imp.size), ts, u=u, fit=fit, min_exc=min_exc)
        out[g] = {
            "fmr": _compact(fmr),
            "fnmr": _compact(_fnmr_curve(c.genuine[gm], np.ones(int(gm.sum())), ts)),
            "n_identities": int(ids.size),
            "n_genuine": int(gm.sum()),
            "n_impostor": int(im.sum()),
            "tail_fitted": tail is not None,
        }
    return out


# ---------------------------------------------------------------------------------------------
# Using the model: thresholds, FPIR and FNIR at a gallery size
# ---------------------------------------------------------------------------------------------


def required_fmr(n: int, target_fpir: float) -> float:
    """The FMR at which ``n`` independent comparisons give FPIR ``target_fpir``."""
    if n <= 0:
        return 1.0
    return float(-math.expm1(math.log1p(-target_fpir) / n))


def fpir(n: int, fmr: float) -> float:
    """``1 - (1 - fmr) ** n``: a stranger's chance of a false match against ``n`` templates."""
    if fmr >= 1.0:
        return 1.0
    return float(-math.expm1(n * math.log1p(-fmr)))


@dataclass(frozen=True)
class OperatingPoint:
    """The identification threshold for one gallery size, and what it costs.

    Attributes
    ----------
    gallery_size
        Searchable templates ``N``.
    target_fpir
        The false positive identification rate asked for.
    required_fmr
        ``1 - (1 - target_fpir) ** (1 / N)``.
    threshold
        Smallest cosine at which the upper bound on FMR is at most ``required_fmr``.
    expected_fpir
        FPIR the point estimate of FMR predicts at ``threshold``.
    expected_fnir
        Expected FNIR (mate below ``threshold`` or outscored) at ``threshold``.
    bounded
        Whether ``required_fmr`` is within what the model claims to bound.
    floored
        Whether ``threshold`` was raised to the floor asked for (the 1:1 threshold: the
        target would allow a lower one at this size); ``expected_fpir`` is then below it.
    """

    gallery_size: int
    target_fpir: float
    required_fmr: float
    threshold: float
    expected_fpir: float
    expected_fnir: float
    bounded: bool
    floored: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def bound_description(confidence: float, rounds: int) -> str:
    """The FMR curve thresholds are placed on, in words (see :attr:`ScoreModel.bound`)."""
    if rounds <= 0:
        return "the point estimate of FMR (no identity resamples)"
    if confidence == 0.5:
        return f"the median of FMR over {rounds} identity resamples"
    if confidence > 0.5:
        return f"an upper {confidence:g} confidence bound on FMR ({rounds} identity resamples)"
    return f"the {confidence:g} quantile of FMR over {rounds} identity resamples"


class ScoreModel:
    """A loaded ``reports/score_model.json``: FMR, its bound and FNMR at any threshold.

    Parameters
    ----------
    doc
        The document :func:`build_score_model` made.
    confidence
        Which stored upper bound on FMR thresholds are placed with.

    Raises
    ------
    ValueError
        Another format, or no bound at ``confidence``.
    """

    def __init__(self, doc: Mapping[str, Any], *, confidence: float = 0.95) -> None:
        if doc.get("format") != FORMAT:
            raise ValueError(
                MSG_MODEL_FORMAT.format(
                    what="the score model", found=doc.get("format"), expected=FORMAT
                )
            )
        g = doc["grid"]
        self.doc = doc
        self.ts = float(g["start"]) + float(g["step"]) * np.arange(int(g["points"]))
        self.fmr_point = self._array(doc["fmr"])
        bounds = doc["fmr_upper"]
        key = level_key(confidence)
        if key not in bounds:
            raise ValueError(
                MSG_NO_LEVEL.format(level=key, stored=", ".join(sorted(bounds)) or "none")
            )
        self.confidence = float(confidence)
        self.fmr_upper = self._array(bounds[key])
        self.fnmr_curve = self._array(doc["fnmr"])
        self.model_version = str(doc.get("embedder_model_version", ""))
        self.min_bounded_fmr = float(doc.get("min_bounded_fmr", 0.0))
        self.groups = {
            name: (self._array(v["fmr"]), self._array(v["fnmr"]))
            for name, v in (doc.get("groups") or {}).items()
        }

    @property
    def bound(self) -> str:
        """What the served FMR curve is, in words: a median, an upper confidence bound, or the
        point estimate where no identity resample was made (``bootstrap: 0``, or every
        resample's tail too thin to refit)."""
        return bound_description(
            self.confidence, int((self.doc.get("bound") or {}).get("rounds", 0))
        )

    @staticmethod
    def _array(values: Sequence[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)

    def _interp_log(self, curve: np.ndarray, t: float) -> float:
        """``curve`` (a decreasing rate) at ``t``, interpolated in log space."""
        if t <= self.ts[0]:
            return float(curve[0])
        if t >= self.ts[-1]:
            return float(curve[-1])
        i = int((t - self.ts[0]) // (self.ts[1] - self.ts[0]))
        i = min(i, self.ts.size - 2)
        a, b = curve[i], curve[i + 1]
        frac = (t - self.ts[i]) / (self.ts[i + 1] - self.ts[i])
        if not (np.isfinite(a) and np.isfinite(b)):
            return float("nan")
        if a > 0 and b > 0:
            return float(math.exp(math.log(a) + frac * (math.log(b) - math.log(a))))
        return float(a + frac * (b - a))

    def fmr(self, t: float, *, upper: bool = False, group: str | None = None) -> float:
        """FMR at threshold ``t`` (the upper confidence bound with ``upper``)."""
        if group is not None:
            return self._interp_log(self.groups[group][0], t)
        return self._interp_log(self.fmr_upper if upper else self.fmr_point, t)

    def fnmr(self, t: float, *, group: str | None = None) -> float:
        """Share of genuine comparisons below ``t``."""
        curve = self.groups[group][1] if group is not None else self.fnmr_curve
        return float(np.interp(t, self.ts, np.nan_to_num(curve, nan=1.0)))

    def threshold_for_fmr(self, target: float, *, upper: bool = True) -> float:
        """Smallest threshold whose FMR (upper bound by default) is at most ``target``."""
        curve = np.nan_to_num(self.fmr_upper if upper else self.fmr_point, nan=1.0)
        ok = np.flatnonzero(curve <= target)
        if ok.size == 0:
            return float(self.ts[-1])
        i = int(ok[0])
        if i == 0:
            return float(self.ts[0])
        a, b = curve[i - 1], curve[i]
        if a > 0 and b > 0 and target > 0:
            frac = (math.log(a) - math.log(target)) / (math.log(a) - math.log(b))
        else:
            frac = (a - target) / (a - b) if a != b else 1.0
        frac = min(max(frac, 0.0), 1.0)
        return float(self.ts[i - 1] + frac * (self.ts[i] - self.ts[i - 1]))

    def expected_fnir(self, n: int, t: float, *, group: str | None = None) -> float:
        """``1 - E_genuine[1{s >= t} (1 - FMR(s)) ** (n - 1)]`` on the grid."""
        fnmr = self.groups[group][1] if group is not None else self.fnmr_curve
        fmr = self.groups[group][0] if group is not None else self.fmr_point
        cdf = np.nan_to_num(fnmr, nan=1.0)
        mass = np.diff(np.r_[cdf, 1.0])  # genuine mass in [ts[i], ts[i+1])
        rate = np.nan_to_num(fmr, nan=0.0)
        # The share of each cell [ts[i], ts[i+1]) at or above t (the mate passes t) ...
        step = self.ts[1] - self.ts[0]
        above = np.clip((self.ts + step - t) / step, 0.0, 1.0)
        # ... times the chance that none of the n - 1 impostors scores higher.
        p_found = np.exp((n - 1) * np.log1p(-np.clip(rate, 0.0, 1.0 - 1e-15)))
        found = float(np.sum(mass * above * p_found))
        return float(min(max(1.0 - found, 0.0), 1.0))

    def _target_threshold(self, n: int, target_fpir: float) -> float:
        """The threshold ``target_fpir`` alone gives ``n`` templates (before any floor)."""
        return self.threshold_for_fmr(required_fmr(n, target_fpir), upper=True)

    def operating_point(
        self, n: int, target_fpir: float, *, floor: float | None = None
    ) -> OperatingPoint:
        """The 1:N threshold for ``n`` searchable templates at ``target_fpir``, and never below
        ``floor`` (serving's: the 1:1 threshold, so that identify never names a subject whom
        verify refuses for the same face)."""
        need = required_fmr(n, target_fpir)
        t = self._target_threshold(n, target_fpir)
        floored = floor is not None and t < floor
        if floored:
            t = float(floor)
        point = self.fmr(t)
        return OperatingPoint(
            gallery_size=int(n),
            target_fpir=float(target_fpir),
            required_fmr=need,
            threshold=t,
            expected_fpir=fpir(n, point) if np.isfinite(point) else float("nan"),
            expected_fnir=self.expected_fnir(n, t),
            bounded=need >= self.min_bounded_fmr,
            floored=floored,
        )

    def floored_below(self, target_fpir: float, floor: float, *, limit: int = 10**9) -> int:
        """The smallest gallery size whose threshold for ``target_fpir`` is not raised to
        ``floor``: every smaller gallery is searched at the floor (1 when none is; ``limit + 1``
        when every gallery up to ``limit`` is).

        The threshold grows with the gallery, so the sizes searched at the floor are those
        below one size, found by bisection.
        """

        def floored(n: int) -> bool:  # as operating_point floors it
            return self._target_threshold(n, target_fpir) < floor

        if not floored(1):
            return 1
        lo, hi = 1, int(limit)  # floored(lo); the answer is in (lo, hi]
        if floored(hi):
            return hi + 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if floored(mid):
                lo = mid
            else:
                hi = mid
        return hi


def fnir_against_size(
    model: ScoreModel, sizes: Sequence[int], *, target_fpir: float, floor: float | None = None
) -> dict[str, list[float]]:
    """Expected FNIR at the served threshold for each gallery size, overall and per group.

    The threshold at each size is the one serving would use (the overall model's upper bound,
    never below ``floor``, the 1:1 threshold); each group's FNIR uses its own genuine scores
    and impostor tail.
    """
    out: dict[str, list[float]] = {"all": []}
    for g in model.groups:
        out[g] = []
    for n in sizes:
        t = model.operating_point(int(n), target_fpir, floor=floor).threshold
        out["all"].append(model.expected_fnir(int(n), t))
        for g in model.groups:
            out[g].append(model.expected_fnir(int(n), t, group=g))
    return out
