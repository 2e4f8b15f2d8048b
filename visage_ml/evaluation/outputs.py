"""The files an evaluation writes under ``reports/`` (what the ``evaluate`` stage outputs).

``metrics.json`` (DVC metrics), ``plots/*.csv`` (DVC plots), ``fairness.json``,
``threshold.json`` (the 1:1 serving threshold), ``score_model.json`` (what serving derives its
1:N threshold from), ``demographic_confusion.json`` (analytics' count correction),
``score_calibration.json`` (the label-free score calibration serving applies before
thresholding) and ``fairness_report.html``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visage_ml.evaluation.fairness import GateOutcome
from visage_ml.evaluation.protocol import EvaluationResult
from visage_ml.io import atomic_write_json, atomic_write_text

PLOTS_DIR = "plots"
# Every report file but the plots, in the order written (each is logged to MLflow too).
REPORT_FILES: tuple[str, ...] = (
    "metrics.json",
    "fairness.json",
    "threshold.json",
    "score_model.json",
    "demographic_confusion.json",
    "score_calibration.json",
    "fairness_report.html",
)


def write_reports(folder: Path, result: EvaluationResult) -> None:
    """Write ``result``'s reports into ``folder`` (atomically, file by file).

    The plot tables replace every ``*.csv`` in ``folder/plots`` (a plot that is gone from the
    result leaves no stale table behind).
    """
    plots = folder / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    for old in plots.glob("*.csv"):
        old.unlink()
    for name, text in result.plots.items():
        atomic_write_text(plots / name, text)
    atomic_write_json(folder / "metrics.json", result.metrics)
    atomic_write_json(folder / "fairness.json", result.fairness)
    atomic_write_json(folder / "threshold.json", result.threshold)
    atomic_write_json(folder / "score_model.json", result.score_model)
    atomic_write_json(folder / "demographic_confusion.json", result.confusion)
    atomic_write_json(folder / "score_calibration.json", result.score_calibration)
    atomic_write_text(folder / "fairness_report.html", result.html)


def summary(metrics: Mapping[str, Any], threshold: Mapping[str, Any], gate: GateOutcome) -> str:
    """One line of an evaluation's headline: AUC, EER, the 1:1 threshold, the gate outcome."""
    v = metrics["verification"]
    return (
        f"AUC {v.get('auc')}, EER {v.get('eer')}, "
        f"threshold {threshold['threshold']:.4f} at FMR {threshold['target_fmr']}"
        f"; fairness gate {gate.describe()}"
    )
