"""What evaluation hands to serving, and the report's view of it: 1:N at scale, count correction.

One call from the evaluation protocol (:func:`serving_reports`) makes

- ``reports/score_model.json`` (:mod:`visage_ml.evaluation.score_model`): the impostor tail and
  genuine distribution of probe-against-template comparisons, from which serving derives the
  1:N threshold at its gallery's size;
- ``reports/demographic_confusion.json`` (:mod:`visage_ml.evaluation.confusion`): the
  demographic model's confusion per skin-tone group, with which analytics corrects its counts;
- the summary and figure of FNIR at the target FPIR against gallery size (10 to 1,000,000),
  overall and per group, with the served point (the gallery the project serves) marked.

Nothing here reads or writes files.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from visage_ml.config import EvaluateParams, ScoreModelParams
from visage_ml.evaluation.calibration import NO_CALIBRATION, ScoreCalibration
from visage_ml.evaluation.confusion import demographic_confusion
from visage_ml.evaluation.figures import fnir_gallery_size_figure
from visage_ml.evaluation.score_model import (
    Comparisons,
    ScoreModel,
    build_score_model,
    fnir_against_size,
    level_key,
    template_comparisons,
)

logger = logging.getLogger(__name__)

GALLERY_SIZES: tuple[int, ...] = (
    10,
    30,
    100,
    300,
    1_000,
    3_000,
    10_000,
    30_000,
    100_000,
    300_000,
    1_000_000,
)
FIGURE = "fnir_vs_gallery_size.png"


@dataclass(frozen=True)
class ServedContext:
    """The serving settings the report is drawn for (``serving.identify`` and the gallery).

    Attributes
    ----------
    target_fpir, confidence, max_expected_fnir
        ``serving.identify.target_fpir``, ``.confidence`` and ``.max_expected_fnir`` (above
        it serving flags the gallery as too large).
    gallery_size
        Subjects allowed for identification when evaluated (the gallery the ``gallery`` stage
        builds), or None when unknown.
    """

    target_fpir: float = 0.01
    confidence: float = 0.8
    gallery_size: int | None = None
    max_expected_fnir: float = 0.5


@dataclass
class ServingReports:
    """The documents serving loads, the report's summary and its figure."""

    score_model: dict[str, Any]
    confusion: dict[str, Any]
    summary: dict[str, Any]
    headline: dict[str, Any]
    figures: dict[str, bytes] = field(default_factory=dict)


def score_model_document(
    comparisons: Comparisons,
    sm: ScoreModelParams,
    *,
    groups: Sequence[str] | np.ndarray | None = None,
    seed: int = 0,
    model_version: str = "",
) -> dict[str, Any]:
    """:func:`~visage_ml.evaluation.score_model.build_score_model` with the tail, bootstrap and
    bound settings of ``evaluate.score_model`` (``sm``), as the evaluate stage builds it."""
    return build_score_model(
        comparisons,
        groups=groups,
        tail_share=sm.tail_share,
        min_exceedances=sm.min_exceedances,
        bootstrap=sm.bootstrap,
        confidence_levels=sm.confidence_levels,
        max_extrapolation_decades=sm.max_extrapolation_decades,
        seed=seed,
        model_version=model_version,
    )


def _confidence(cfg: EvaluateParams, wanted: float) -> float:
    """``wanted`` if the score model stores that level, else the stored level nearest to it."""
    levels = [float(x) for x in cfg.score_model.confidence_levels]
    if any(level_key(x) == level_key(wanted) for x in levels):
        return wanted
    nearest = min(levels, key=lambda x: abs(x - wanted))
    logger.warning(
        "serving.identify.confidence %s is not among evaluate.score_model.confidence_levels; "
        "the report uses %s",
        wanted,
        nearest,
    )
    return nearest


def serving_reports(
    *,
    test: pd.DataFrame,
    embeddings: np.ndarray,
    codes: np.ndarray,
    id_group: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    demographic_labels: Mapping[str, Any],
    lineage: Mapping[str, str],
    cfg: EvaluateParams,
    seed: int,
    served: ServedContext | None = None,
    sizes: Sequence[int] = GALLERY_SIZES,
    calibration: ScoreCalibration = NO_CALIBRATION,
    verify_threshold: float | None = None,
) -> ServingReports:
    """The score model, the confusion report, and the report's FNIR-against-size view.

    Parameters
    ----------
    test
        Test manifest rows in embedding order (``age``, ``gender``, ``group``).
    embeddings
        Their embeddings.
    codes
        Identity code per row.
    id_group
        Group label per identity code (``"unlabeled"`` where unknown).
    predictions, demographic_labels
        The demographic model's outputs per row and its label orders.
    lineage
        ``embedder_model_version`` and ``demographics_model_version`` at least.
    cfg
        The ``evaluate`` section (``score_model`` settings).
    seed
        ``project.seed``.
    served
        Target FPIR, confidence and served gallery size (defaults when None).
    sizes
        Gallery sizes of the FNIR curve.
    calibration
        The served score calibration: comparisons are scored as serving scores them.
    verify_threshold
        The 1:1 threshold (``threshold.json``): serving never identifies below it, so neither
        do the curve and the served point (a small gallery is searched at it).
    """
    ctx = served or ServedContext()
    sm = cfg.score_model
    comparisons = template_comparisons(
        embeddings, codes, template_images=sm.template_images, seed=seed, calibration=calibration
    )
    doc = score_model_document(
        comparisons,
        sm,
        groups=id_group,
        seed=seed,
        model_version=str(lineage.get("embedder_model_version", "")),
    )
    model = ScoreModel(doc, confidence=_confidence(cfg, ctx.confidence))
    floor = verify_threshold  # serving never identifies below it
    curves = fnir_against_size(model, sizes, target_fpir=ctx.target_fpir, floor=floor)
    points = [model.operating_point(int(n), ctx.target_fpir, floor=floor) for n in sizes]
    thresholds = [p.threshold for p in points]
    served_point = None
    if ctx.gallery_size:
        op = model.operating_point(int(ctx.gallery_size), ctx.target_fpir, floor=floor)
        served_point = {
            "gallery_size": int(ctx.gallery_size),
            "threshold": op.threshold,
            "required_fmr": op.required_fmr,
            "expected_fnir": op.expected_fnir,
            "expected_fpir": op.expected_fpir,
            "bounded": op.bounded,
            "at_verify_threshold": op.floored,
            # Serving's two flags (visage_ml.serving.operating_point): beyond what the model
            # bounds, or more mates missed than serving.identify.max_expected_fnir.
            "too_large": (not op.bounded) or op.expected_fnir > ctx.max_expected_fnir,
            "max_expected_fnir": ctx.max_expected_fnir,
        }
    summary = {
        "target_fpir": ctx.target_fpir,
        "confidence": model.confidence,
        "bound": model.bound,
        "template_images": doc["template_images"],
        "sizes": [int(n) for n in sizes],
        "thresholds": thresholds,
        "verify_threshold": floor,
        "at_verify_threshold": [int(n) for n, p in zip(sizes, points, strict=True) if p.floored],
        # Galleries smaller than this are searched at the 1:1 threshold (None: no floor).
        "verify_threshold_below": (
            None
            if floor is None
            else model.floored_below(ctx.target_fpir, floor, limit=max(int(n) for n in sizes))
        ),
        "fnir": curves,
        "served": served_point,
        "min_bounded_fmr": model.min_bounded_fmr,
        "n_impostor": doc["n_impostor"],
        "n_genuine": doc["n_genuine"],
        "tail": doc["tail"],
        "method": (
            "threshold t(N): bound on FMR at level confidence (identity bootstrap) at "
            "1 - (1 - target_fpir)^(1/N), never below the 1:1 verify threshold; expected FNIR "
            "= 1 - E_genuine[1{s >= t} (1 - FMR(s))^(N-1)]"
        ),
    }
    headline = {
        "target_fpir": ctx.target_fpir,
        **(
            {
                "served_gallery_size": served_point["gallery_size"],
                "served_threshold": served_point["threshold"],
                "served_expected_fnir": served_point["expected_fnir"],
            }
            if served_point
            else {}
        ),
        "threshold_at_1000": thresholds[list(sizes).index(1000)] if 1000 in sizes else None,
        "expected_fnir_at_1000": curves["all"][list(sizes).index(1000)] if 1000 in sizes else None,
    }
    true_age = test["age"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
    confusion = demographic_confusion(
        true_age=true_age,
        true_gender=test["gender"].astype("string").fillna("unlabeled").astype(str).to_numpy(),
        true_group=test["group"].astype("string").fillna("unlabeled").astype(str).to_numpy(),
        predictions=predictions,
        labels=demographic_labels,
        model_version=str(lineage.get("demographics_model_version", "")),
    )
    unbounded = [n for n, p in zip(sizes, points, strict=True) if not p.bounded]
    summary["unbounded_from"] = int(unbounded[0]) if unbounded else None
    figures = {
        FIGURE: fnir_gallery_size_figure(
            sizes,
            curves,
            served=(served_point["gallery_size"], served_point["expected_fnir"])
            if served_point
            else None,
            target_fpir=ctx.target_fpir,
            unbounded_from=summary["unbounded_from"],
        )
    }
    return ServingReports(
        score_model=doc, confusion=confusion, summary=summary, headline=headline, figures=figures
    )
