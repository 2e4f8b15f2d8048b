"""What the evaluation decides about fairness: the served score calibration and the gate.

Glue between the evaluation protocol (:mod:`visage_ml.evaluation.protocol`) and the modules
that do the work: the label-free score calibrations fitted on the calibration part of the
evaluation population (:mod:`visage_ml.evaluation.calibration`), their side-by-side comparison
(:mod:`visage_ml.evaluation.calibration_report`), the demographic model's per-group accuracy
with intervals (:mod:`visage_ml.evaluation.demographic_intervals`) and the three-way gate
(:mod:`visage_ml.evaluation.gate`). No file I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from visage_ml.config import CalibrationParams, GateParams
from visage_ml.data.pairs import encode_labels
from visage_ml.evaluation.calibration import (
    NO_CALIBRATION,
    ScoreCalibration,
    calibration_set,
    fit_all,
)
from visage_ml.evaluation.fairness import Differentials
from visage_ml.evaluation.gate import (
    FAIL,
    INCONCLUSIVE,
    ThreeWayGate,
    combine,
    demographic_checks,
    differential_checks,
)

logger = logging.getLogger(__name__)

GATES: tuple[str, ...] = ("differentials", "demographics")
MSG_NO_POPULATION = (
    "evaluate.calibration.method is {method!r} but there is no calibration part of the "
    "evaluation population; scores are served uncalibrated. Run `dvc repro eval_population` "
    "(eval_population.calibration_identities_per_cell > 0)"
)
MSG_BLOCKED = (
    "fairness gate {outcome} ({which}): {details}. Reports were written to {reports} (open "
    "fairness_report.html); improve the model (README: Fairness) or, after review, change "
    "evaluate.gate in params.yaml"
)
SETTING = {"differentials": "evaluate.gate", "demographics": "evaluate.gate.demographics"}


@dataclass(frozen=True)
class Calibrations:
    """The fitted calibrations (by method) and the one served."""

    fitted: Mapping[str, ScoreCalibration]
    served: ScoreCalibration
    note: str | None = None


def fit_calibrations(
    embeddings: np.ndarray | None,
    pids: np.ndarray | None,
    cfg: CalibrationParams,
    *,
    target_fmr: float,
    seed: int,
    model_version: str,
) -> Calibrations:
    """Fit every method of ``cfg.compare`` (and ``cfg.method``) on the calibration images.

    Without calibration images only ``none`` is fitted and served, with a note saying why.
    """
    methods = list(dict.fromkeys(["none", *cfg.compare, cfg.method]))
    if embeddings is None or pids is None or len(embeddings) == 0:
        note = None
        if cfg.method != "none":
            note = MSG_NO_POPULATION.format(method=cfg.method)
            logger.warning(note)
        return Calibrations(fitted={"none": NO_CALIBRATION}, served=NO_CALIBRATION, note=note)
    codes, _ = encode_labels(np.asarray(pids).astype(str))
    cal = calibration_set(
        embeddings,
        codes,
        n_clusters=cfg.n_clusters,
        impostor_pairs_max=cfg.impostor_pairs,
        seed=seed,
    )
    fitted = fit_all(
        cal,
        methods,
        target_fmr=target_fmr,
        min_cluster_impostors=cfg.min_cluster_impostors,
        info={"embedder_model_version": model_version, "seed": seed},
        cohort_top_k=cfg.cohort_top_k,
        cohort_mean_weight=cfg.cohort_mean_weight,
        cohort_sd_power=cfg.cohort_sd_power,
    )
    return Calibrations(fitted=fitted, served=fitted[cfg.method])


def decide_gates(
    differentials: Mapping[str, Differentials],
    demographic_intervals: Mapping[str, Any],
    cfg: GateParams,
    *,
    ci_level: float,
) -> tuple[ThreeWayGate, dict[str, ThreeWayGate]]:
    """The gate over every check, and its two parts (``differentials``, ``demographics``)."""
    diff_checks = differential_checks(
        differentials,
        max_fmr_ratio=cfg.max_fmr_ratio,
        max_fnmr_ratio=cfg.max_fnmr_ratio,
        breakdowns=cfg.breakdowns,
        min_identities=cfg.min_identities,
        ci_level=ci_level,
    )
    d = cfg.demographics
    demo_checks = demographic_checks(
        demographic_intervals,
        min_accuracy=d.min_accuracy,
        min_ratio=d.min_ratio,
        min_identities=d.min_identities,
    )
    parts = {"differentials": combine(diff_checks), "demographics": combine(demo_checks)}
    return combine([*diff_checks, *demo_checks]), parts


def enforced(cfg: GateParams) -> dict[str, bool]:
    """Which parts of the gate stop the stage (``evaluate.gate.enforce`` and
    ``evaluate.gate.demographics.enforce``)."""
    return {"differentials": cfg.enforce, "demographics": cfg.demographics.enforce}


def blocking(gates: Mapping[str, ThreeWayGate], cfg: GateParams) -> list[str]:
    """The enforced parts of the gate whose outcome stops the stage."""
    on = enforced(cfg)
    return [
        name
        for name, gate in gates.items()
        if on.get(name) and gate.blocks(on_inconclusive=cfg.on_inconclusive)
    ]


def blocked_message(gates: Mapping[str, ThreeWayGate], names: list[str], reports: Any) -> str:
    """The error an enforced gate ends the stage with: every failed or undecided check."""
    details = []
    for name in names:
        gate = gates[name]
        for c in [*gate.failures, *gate.inconclusive]:
            setting = f"{SETTING.get(name, 'evaluate.gate')}.{c.get('bound', '')}"
            details.append(
                f"{c['metric']} across {c['breakdown']}: {c['reason']} ({setting} = "
                f"{c.get('limit', float('nan')):g})"
            )
    outcome = "failed" if any(gates[n].outcome == FAIL for n in names) else INCONCLUSIVE
    return MSG_BLOCKED.format(
        outcome=outcome, which=", ".join(names), details="; ".join(details), reports=reports
    )


def fairness_headline(
    gate: ThreeWayGate,
    parts: Mapping[str, ThreeWayGate],
    differentials: Mapping[str, Differentials],
    comparison: Mapping[str, Any] | None,
    demographic_intervals: Mapping[str, Any],
    *,
    ci_level: float,
) -> dict[str, dict[str, Any]]:
    """Additions to ``metrics.json``: the gate's outcome, intervals of the gated ratios, the
    calibration comparison's key figures and per-group demographic accuracy with intervals."""
    fair: dict[str, Any] = {
        "gate_outcome": gate.outcome,
        "gate_passed": int(gate.passed),
        **{f"gate_{name}": g.outcome for name, g in parts.items()},
    }
    for name, diff in differentials.items():
        prefix = "" if name == "group" else f"{name}."
        for key in ("fmr_max_min_ratio", "fnmr_max_min_ratio"):
            est = diff.interval(key, ci_level)
            if np.isfinite(est["ci_low"]) and np.isfinite(est["ci_high"]):
                fair[f"{prefix}{key}_ci_low"] = float(est["ci_low"])
                fair[f"{prefix}{key}_ci_high"] = float(est["ci_high"])
        fair[f"{prefix}min_identities_per_group"] = int(np.min(diff.n_identities))
        # Whom the gate counts against min_identities: people with comparisons of each kind.
        fair[f"{prefix}min_identities_fmr_per_group"] = int(np.min(diff.n_identities_impostor))
        fair[f"{prefix}min_identities_fnmr_per_group"] = int(np.min(diff.n_identities_genuine))
    out: dict[str, dict[str, Any]] = {"fairness": fair}
    if comparison:
        calib: dict[str, Any] = {"served": comparison["served"], "best": comparison["best"]}
        for name, row in comparison["methods"].items():
            calib[f"{name}.tar_at_target_fmr"] = row["tar_at_target_fmr"]
            calib[f"{name}.tar_cost"] = row["tar_cost"]
            calib[f"{name}.meets_goals"] = int(row["meets_goals"])
            for b, figures in row["breakdowns"].items():
                for key in ("fmr_max_min_ratio", "fnmr_max_min_ratio"):
                    est = figures[key]
                    calib[f"{name}.{b}.{key}"] = est.get("value")
                    calib[f"{name}.{b}.{key}_ci_high"] = est.get("ci_high")
        out["score_calibration"] = calib
    demo: dict[str, Any] = {}
    for task, res in demographic_intervals.items():
        for g, est in res.get("groups", {}).items():
            demo[f"{task}.{g}"] = est["value"]
            demo[f"{task}.{g}_ci_low"] = est["ci_low"]
            demo[f"{task}.{g}_ci_high"] = est["ci_high"]
        if res.get("groups"):
            demo[f"{task}_min"] = res["min"]["value"]
            demo[f"{task}_min_ci_low"] = res["min"]["ci_low"]
            demo[f"{task}_min_max_ratio"] = res["ratio"]["value"]
            demo[f"{task}_min_max_ratio_ci_low"] = res["ratio"]["ci_low"]
    out["demographics"] = demo
    return out
