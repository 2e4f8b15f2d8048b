"""Stage ``evaluate``: accuracy and demographic differentials of the exported ONNX models.

Reads ``data/processed/{faces.sealed, manifest.parquet, detection.parquet}``, the synthetic
evaluation population ``data/eval_population/`` (its measured part joins the test split, its
calibration part fits the score calibration),
``models/{embedder,demographics}.onnx`` (and ``data/protocols/lfw_pairs.parquet`` when present),
runs :func:`visage_ml.evaluation.protocol.evaluate` and writes ``reports/metrics.json`` (DVC
metrics), ``reports/plots/*.csv`` (DVC plots), ``reports/fairness.json``,
``reports/threshold.json`` (the 1:1 serving threshold), ``reports/score_model.json`` (what
serving derives its 1:N threshold from), ``reports/demographic_confusion.json`` (analytics'
count correction), ``reports/score_calibration.json`` (the label-free score calibration serving
applies before thresholding) and ``reports/fairness_report.html``; logs one MLflow run and
registers both ONNX models. The gate says pass, fail or inconclusive
(:mod:`visage_ml.evaluation.gate`); where ``evaluate.gate.enforce`` (the differentials) or
``evaluate.gate.demographics.enforce`` (the demographic model) is set, the stage exits non-zero
on ``fail`` (and on ``inconclusive`` with ``evaluate.gate.on_inconclusive: fail``), after
writing every report. Otherwise the SHA-256 of the threshold, score model, confusion and
calibration files is recorded in the privacy ledger (``model.released``): they are the files
``visage serve`` accepts, and a model that fails an enforced gate is never released.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from visage_ml.app.stages._evaluate_inputs import load_models, read_inputs, served_context
from visage_ml.app.stages._evaluate_mlflow import log_evaluation
from visage_ml.config import Params, ProjectPaths, load_params
from visage_ml.evaluation.decision import blocked_message, blocking
from visage_ml.evaluation.fairness import GateOutcome
from visage_ml.evaluation.protocol import (
    DemographicModel,
    Embedder,
    EvaluationResult,
    evaluate,
)
from visage_ml.io import atomic_write_json, atomic_write_text
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.ledger import LedgerError
from visage_ml.serving.release import EVALUATE_RELEASES, record_release

__all__ = ["Outcome", "load_models", "main", "run"]

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What one run of the stage produced (for tests and the exit code)."""

    metrics: dict[str, Any]
    fairness: dict[str, Any]
    threshold: dict[str, Any]
    gate: GateOutcome
    enforce: bool
    run_id: str | None
    model_versions: dict[str, str]
    seconds: dict[str, float]
    # The gate's parts (differentials, demographics) and those that stop the stage.
    gates: dict[str, GateOutcome] = dataclasses.field(default_factory=dict)
    blocking: list[str] = dataclasses.field(default_factory=list)


def _write_reports(paths: ProjectPaths, result: EvaluationResult) -> None:
    plots = paths.reports / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for old in plots.glob("*.csv"):
        old.unlink()
    for name, text in result.plots.items():
        atomic_write_text(plots / name, text)
    atomic_write_json(paths.reports / "metrics.json", result.metrics)
    atomic_write_json(paths.reports / "fairness.json", result.fairness)
    atomic_write_json(paths.reports / "threshold.json", result.threshold)
    atomic_write_json(paths.reports / "score_model.json", result.score_model)
    atomic_write_json(paths.reports / "demographic_confusion.json", result.confusion)
    atomic_write_json(paths.reports / "score_calibration.json", result.score_calibration)
    atomic_write_text(paths.reports / "fairness_report.html", result.html)


def run(
    paths: ProjectPaths,
    params: Params,
    *,
    embedder: Embedder | None = None,
    demographic: DemographicModel | None = None,
    log_to_mlflow: bool = True,
) -> Outcome:
    """Evaluate the exported models (or those given), write every report, log to MLflow.

    Registration logs the files ``models/{embedder,demographics}.onnx``, so models given as
    objects must be those files' models.
    """
    t0 = time.perf_counter()
    inputs = read_inputs(paths, params.evaluate, embedder=embedder, demographic=demographic)
    inputs = dataclasses.replace(
        inputs,
        served=served_context(paths, params),
        embedder_sampling=params.train_embedder.sampling,
    )
    seconds = {"inference": time.perf_counter() - t0}
    result = evaluate(inputs, cfg=params.evaluate, seed=params.project.seed)
    seconds.update(result.seconds)
    t = time.perf_counter()
    _write_reports(paths, result)
    seconds["reports"] += time.perf_counter() - t
    run_id, versions = None, {}
    if log_to_mlflow:
        t = time.perf_counter()
        run_id, versions = log_evaluation(paths, result, lineage=inputs.lineage)
        seconds["mlflow"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    logger.info("evaluate timings (s): %s", {k: round(v, 2) for k, v in seconds.items()})
    return Outcome(
        metrics=result.metrics,
        fairness=result.fairness,
        threshold=result.threshold,
        gate=result.gate,
        enforce=params.evaluate.gate.enforce,
        gates=result.gates,
        blocking=blocking(result.gates, params.evaluate.gate),
        run_id=run_id,
        model_versions=versions,
        seconds=seconds,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m visage_ml.app.stages.evaluate``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m visage_ml.app.stages.evaluate")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    paths = ProjectPaths.discover()
    try:
        outcome = run(paths, load_params(paths.params))
    except (FileNotFoundError, ValueError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    m = outcome.metrics
    print(
        f"evaluate: AUC {m['verification'].get('auc')}, EER {m['verification'].get('eer')}, "
        f"threshold {outcome.threshold['threshold']:.4f} at FMR {outcome.threshold['target_fmr']}"
        f"; fairness gate {outcome.gate.describe()}"
    )
    if outcome.blocking:
        print(blocked_message(outcome.gates, outcome.blocking, paths.reports), file=sys.stderr)
        return 1
    try:
        entry = record_release(
            PrivacyCore(paths).ledger, paths.root, list(EVALUATE_RELEASES), stage="evaluate"
        )
    except (LedgerError, ValueError, OSError) as exc:
        print(
            f"evaluate: could not record the release in the privacy ledger: {exc}",
            file=sys.stderr,
        )
        return 2
    print(f"evaluate: released {', '.join(EVALUATE_RELEASES)} in ledger entry {entry.seq}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
