"""The headline metrics (``reports/metrics.json``, DVC metrics) from the full evaluation results."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from visage_ml.evaluation.bootstrap import finite_or_none
from visage_ml.evaluation.fairness import Differentials, GateOutcome

# Differential summaries reported per breakdown (``group`` unprefixed, others as ``name.key``).
HEADLINE_SUMMARIES: tuple[str, ...] = (
    "fmr_max_min_ratio",
    "fnmr_max_min_ratio",
    "fmr_max_geomean_ratio",
    "fnmr_max_geomean_ratio",
    "fmr_gini",
    "fnmr_gini",
    "fdr",
    "skewed_error_ratio",
)


# The LFW figures of metrics.json: the 10-fold accuracy and how many pairs and images it rests on.
LFW_KEYS: tuple[str, ...] = (
    "accuracy",
    "std",
    "stderr",
    "n_pairs",
    "pairs_in_protocol",
    "pairs_used",
    "pairs_with_undetected_image",
    "pairs_with_fallback_crop",
    "pairs_not_evaluated",
    "images",
    "images_missed",
    "images_fallback",
    "miss_rate",
    "accuracy_detected_pairs",
    "source",
    "skipped",
)


def json_ready(obj: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python, non-finite floats to ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return finite_or_none(float(obj))
    return obj


def _fairness_headline(
    differentials: Mapping[str, Differentials], gate: GateOutcome
) -> dict[str, Any]:
    fair: dict[str, Any] = {"gate_passed": int(gate.passed)}
    for name, diff in differentials.items():
        prefix = "" if name == "group" else f"{name}."
        for k in HEADLINE_SUMMARIES:
            fair[prefix + k] = diff.summaries[k]
        if name == "group":
            for i, lab in enumerate(diff.labels):
                fair[f"fmr.{lab}"] = diff.fmr[i]
                fair[f"fnmr.{lab}"] = diff.fnmr[i]
    return fair


def headline_metrics(
    *,
    verification: Mapping[str, Any],
    threshold: Mapping[str, Any],
    identification: Mapping[str, float],
    differentials: Mapping[str, Differentials],
    gate: GateOutcome,
    model_report: Mapping[str, Any],
    detection: Mapping[str, Any] | None,
    lfw: Mapping[str, Any] | None,
    sources: Mapping[str, Any] | None = None,
    population: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``reports/metrics.json`` document: one flat-ish, JSON-ready view of the results.

    Parameters
    ----------
    verification
        :meth:`VerificationResult.to_dict` output.
    threshold
        The threshold document (``threshold``, ``measured_fmr``, ``measured_fnmr``).
    identification
        Open-set metrics.
    differentials
        FRVT differentials per breakdown.
    gate
        Fairness gate outcome.
    model_report
        Demographic model summaries per task and breakdown.
    detection, lfw
        Detector miss rates and LFW accuracy, when measured.
    sources
        Per-source verification figures (:func:`visage_ml.evaluation.sources.per_source`).
    population
        Who the pooled figures describe (sources, unlabeled shares).

    Returns
    -------
    dict
        Sections ``verification``, ``identification``, ``fairness``, ``demographics`` and,
        when measured, ``detection``, ``lfw`` (with its pairs and misses), ``sources`` and
        ``population``.
    """
    ver = {k: v["value"] for k, v in verification.items() if isinstance(v, dict)}
    ver["threshold"] = threshold["threshold"]
    ver["fmr_at_threshold"] = threshold["measured_fmr"]
    ver["fnmr_at_threshold"] = threshold["measured_fnmr"]
    ver["n_genuine_pairs"] = verification["n_genuine_pairs"]
    ver["n_impostor_pairs"] = verification["n_impostor_pairs"]
    ident = {
        k: v
        for k, v in identification.items()
        if k.startswith(("rank", "fnir_")) or k.startswith("n_")
    }
    demo_head: dict[str, Any] = {}
    for task, by in model_report.items():
        summary = by.get("group")
        if summary:
            demo_head[task] = summary["overall"]
            demo_head[f"{task}_group_difference"] = summary["difference"]
            demo_head[f"{task}_group_ratio"] = summary["ratio"]
    out: dict[str, Any] = {
        "verification": ver,
        "identification": ident,
        "fairness": _fairness_headline(differentials, gate),
        "demographics": demo_head,
    }
    if detection and "group" in detection:
        out["detection"] = {
            "miss_rate": detection["group"]["overall"],
            "miss_rate_group_difference": detection["group"]["difference"],
            "miss_rate_group_ratio": detection["group"]["ratio"],
        }
    if lfw:
        out["lfw"] = {k: v for k, v in lfw.items() if k in LFW_KEYS}
    if sources:
        out["sources"] = {name: dict(figures) for name, figures in sources.items()}
    if population:
        out["population"] = {
            "sources": ", ".join(population["sources"]),
            "identities_by_source": dict(population["identities_by_source"]),
            "unlabeled_group_share": population["unlabeled"]["group_share"],
            "unlabeled_gender_share": population["unlabeled"]["gender_share"],
        }
    return json_ready(out)
