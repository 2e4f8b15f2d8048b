"""Score calibration methods side by side, in one evaluation run, against the fairness goals.

For each method of ``evaluate.calibration.compare`` (``none`` = the embedder's raw cosine
scores, ``fsn``, ``faircal``, ``asnorm``; :mod:`visage_ml.evaluation.calibration`) the same
comparisons of the evaluated population are rescored, the global threshold placed at
``target_fmr`` on them, and the FRVT differentials measured with identity-bootstrap intervals.
Each method is judged on the goals: FMR max/min per breakdown at most the gate's limit, at a
TAR cost (TAR at ``target_fmr`` lost against ``none``) of at most ``max_tar_cost``.

Group-balanced *training* (``train_embedder.sampling: group_balanced``) needs a second embedder
trained from scratch, about as long as the whole demo's training again, so it is not trained
inside one evaluation: the row says which sampling the evaluated embedder was trained with, and
``dvc exp run -S train_embedder.sampling=group_balanced`` gives the other's row in its own run
(the two runs compare in ``dvc exp show`` and MLflow).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from visage_ml.data.pairs import PairSet, threshold_at_far
from visage_ml.evaluation.bootstrap import finite_or_none
from visage_ml.evaluation.calibration import ScoreCalibration
from visage_ml.evaluation.fairness import Breakdown, demographic_differentials
from visage_ml.evaluation.gate import FAIL, INCONCLUSIVE, PASS, decide, limit_of

logger = logging.getLogger(__name__)

SUMMARIES: tuple[str, ...] = ("fmr_max_min_ratio", "fnmr_max_min_ratio")
HOW_GROUP_BALANCED = "dvc exp run -S train_embedder.sampling=group_balanced"


def rescored(pairs: PairSet, calibration: ScoreCalibration, sides: np.ndarray) -> PairSet:
    """``pairs`` with scores calibrated by ``calibration`` (``sides``: its
    :meth:`~visage_ml.evaluation.calibration.ScoreCalibration.sides` of every row)."""
    if calibration.identity:
        return pairs
    score = calibration.apply(pairs.score, sides[pairs.a], sides[pairs.b])
    return dataclasses.replace(pairs, score=score)


def tar_at_threshold(pairs: PairSet, threshold: float) -> float:
    """Share of genuine comparisons at or above ``threshold``."""
    gen = pairs.score[pairs.genuine]
    return float(np.mean(gen >= threshold)) if gen.size else float("nan")


def compare_calibrations(
    pairs: PairSet,
    embeddings: np.ndarray,
    calibrations: Mapping[str, ScoreCalibration],
    breakdowns: Sequence[Breakdown],
    *,
    target_fmr: float,
    fmr_limits: float | Mapping[str, float],
    max_tar_cost: float,
    served: str,
    rounds: int,
    seed: int,
    ci_level: float,
    fdr_alpha: float = 0.5,
    embedder_sampling: str | None = None,
) -> dict[str, Any]:
    """Measure each calibration on the same raw comparisons; judge it on the goals.

    Parameters
    ----------
    pairs
        The evaluation's comparisons with raw cosine scores.
    embeddings
        The evaluated embeddings (rows of ``pairs``), for each method's clusters.
    calibrations
        Fitted calibrations by method name (``none`` is the baseline of the TAR cost).
    breakdowns
        Breakdowns judged (the gate's: ``group``, ``group_gender``).
    target_fmr
        The operating point: the global threshold of each method gives this FMR.
    fmr_limits
        The goals on the FMR max/min ratio (one number or one per breakdown).
    max_tar_cost
        The goal on TAR lost at ``target_fmr`` against ``none``.
    served
        The method serving applies (``evaluate.calibration.method``).
    rounds, seed, ci_level, fdr_alpha
        Identity bootstrap of the differentials.
    embedder_sampling
        ``train_embedder.sampling`` of the evaluated embedder (for the training row).

    Returns
    -------
    dict
        ``methods`` (one entry per method: threshold, TAR, TAR cost, summaries with
        intervals per breakdown, per-group FMR/FNMR, goals and whether they are met),
        ``best`` (the method meeting every goal on the point estimates with the lowest
        worst-case ratio, or None), ``served``, ``training`` and ``goals``.
    """
    rows: dict[str, dict[str, Any]] = {}
    base_tar = None
    for name, cal in calibrations.items():
        p = rescored(pairs, cal, cal.sides(embeddings))
        imp = p.score[~p.genuine]
        threshold = threshold_at_far(imp, target_fmr)
        tar = tar_at_threshold(p, threshold)
        if name == "none":
            base_tar = tar
        diffs = demographic_differentials(
            p, list(breakdowns), threshold=threshold, alpha=fdr_alpha, rounds=rounds, seed=seed
        )
        per_breakdown: dict[str, Any] = {}
        goals: dict[str, Any] = {}
        for b in breakdowns:
            doc = diffs[b.name].to_dict(ci_level)
            per_breakdown[b.name] = {
                **{k: doc["summaries"][k] for k in SUMMARIES},
                "fmr": {g: v["fmr"]["value"] for g, v in doc["groups"].items()},
                "fnmr": {g: v["fnmr"]["value"] for g, v in doc["groups"].items()},
            }
            limit = limit_of(fmr_limits, b.name, "max_fmr_ratio")
            s = doc["summaries"]["fmr_max_min_ratio"]
            outcome, reason = decide(
                ci_low=_num(s.get("ci_low")),
                ci_high=_num(s.get("ci_high")),
                limit=limit,
                upper=True,
            )
            value = _num(s.get("value"))
            goals[f"fmr_max_min_ratio.{b.name}"] = {
                "limit": limit,
                "value": finite_or_none(value),
                "met": bool(np.isfinite(value) and value <= limit),
                "decided": outcome,
                "reason": reason,
            }
        rows[name] = {
            "method": name,
            "served": name == served,
            "clusters": calibrations[name].n_clusters,
            "threshold": threshold,
            "tar_at_target_fmr": tar,
            "breakdowns": per_breakdown,
            "goals": goals,
        }
    for row in rows.values():
        cost = None if base_tar is None else base_tar - row["tar_at_target_fmr"]
        row["tar_cost"] = cost
        row["goals"]["tar_cost"] = {
            "limit": max_tar_cost,
            "value": cost,
            "met": cost is None or cost <= max_tar_cost,
        }
        row["meets_goals"] = all(g["met"] for g in row["goals"].values())
        decided = [g.get("decided", PASS) for g in row["goals"].values()]
        row["goals_decided"] = (
            FAIL if FAIL in decided else INCONCLUSIVE if INCONCLUSIVE in decided else PASS
        )
    best = _best(rows, breakdowns, fmr_limits)
    if best is None:
        logger.info("no score calibration meets the fairness goals on this population")
    return {
        "target_fmr": target_fmr,
        "served": served,
        "best": best,
        "goals": {
            "fmr_max_min_ratio": {
                b.name: limit_of(fmr_limits, b.name, "max_fmr_ratio") for b in breakdowns
            },
            "max_tar_cost": max_tar_cost,
        },
        "methods": rows,
        "training": {
            "evaluated_embedder_sampling": embedder_sampling,
            "group_balanced": "not trained in this run (a second embedder): " + HOW_GROUP_BALANCED,
        },
        "bootstrap_rounds": rounds,
        "ci_level": ci_level,
    }


def _best(
    rows: Mapping[str, Mapping[str, Any]],
    breakdowns: Sequence[Breakdown],
    fmr_limits: float | Mapping[str, float],
) -> str | None:
    """The method meeting every goal with the lowest worst ratio-to-limit (None if none does)."""
    scored = []
    for name, row in rows.items():
        if not row["meets_goals"]:
            continue
        worst = max(
            _num(row["breakdowns"][b.name]["fmr_max_min_ratio"].get("value"))
            / limit_of(fmr_limits, b.name, "max_fmr_ratio")
            for b in breakdowns
        )
        scored.append((worst, name))
    return min(scored)[1] if scored else None


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)
