"""Stage ``evaluate``: accuracy and demographic differentials of the exported ONNX models.

Reads the test split joined by the evaluation population and runs both ONNX models on it
(:mod:`visage_ml.evaluation.inputs`), runs :func:`visage_ml.evaluation.protocol.evaluate`,
writes the reports (:mod:`visage_ml.evaluation.outputs`), logs one MLflow run and registers both
ONNX models. The gate says pass, fail or inconclusive (:mod:`visage_ml.evaluation.gate`); where
``evaluate.gate.enforce`` (the differentials) or ``evaluate.gate.demographics.enforce`` (the
demographic model) is set, the stage exits non-zero on ``fail`` (and on ``inconclusive`` with
``evaluate.gate.on_inconclusive: fail``), after writing every report. Otherwise the SHA-256 of
the threshold, score model, confusion and calibration files is recorded in the privacy ledger
(``model.released``): they are the files ``visage serve`` accepts, and a model that fails an
enforced gate is never released.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from visage_ml.app.stages._evaluate_mlflow import log_evaluation
from visage_ml.app.stages._release import release
from visage_ml.config import Params, ProjectPaths, load_params
from visage_ml.evaluation.decision import blocked_message, blocking
from visage_ml.evaluation.fairness import GateOutcome
from visage_ml.evaluation.inputs import evaluation_inputs
from visage_ml.evaluation.outputs import summary, write_reports
from visage_ml.evaluation.protocol import DemographicModel, Embedder, evaluate
from visage_ml.serving.release import EVALUATE_RELEASES

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
    gates: dict[str, GateOutcome] = field(default_factory=dict)
    blocking: list[str] = field(default_factory=list)


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
    inputs = evaluation_inputs(paths, params, embedder=embedder, demographic=demographic)
    seconds = {"inference": time.perf_counter() - t0}
    result = evaluate(inputs, cfg=params.evaluate, seed=params.project.seed)
    seconds.update(result.seconds)
    t = time.perf_counter()
    write_reports(paths.reports, result)
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
    )
    paths = ProjectPaths.discover()
    try:
        outcome = run(paths, load_params(paths.params))
    except (FileNotFoundError, ValueError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    print(f"evaluate: {summary(outcome.metrics, outcome.threshold, outcome.gate)}")
    if outcome.blocking:
        print(blocked_message(outcome.gates, outcome.blocking, paths.reports), file=sys.stderr)
        return 1
    return release(paths, EVALUATE_RELEASES, stage="evaluate", names=EVALUATE_RELEASES)


if __name__ == "__main__":
    sys.exit(main())
