"""Stage ``eval_population``: the synthetic evaluation-only population (never trained on).

Glue around :mod:`visage_ml.data.eval_population`: renders the population from
``eval_population.seed`` with the ``synth`` nuisance, detects and aligns it as ``prepare`` does
and writes ``data/eval_population/{faces.sealed, manifest.parquet, detection.parquet}`` and
``reports/eval_population.json`` (counts only). It reads no data of any subject and needs no
trained model, so DVC reruns it only when its own params or code change. These are synthetic
people, not data subjects: the stage writes nothing to the privacy ledger or registry.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from visage_ml.config import Params, ProjectPaths, load_params
from visage_ml.data.detect import FaceDetector
from visage_ml.data.eval_population import build, write
from visage_ml.io import atomic_write_json
from visage_ml.privacy.datakeys import DataKeys

REPORT_FILE = "eval_population.json"


def run(paths: ProjectPaths, params: Params, *, detector_factory: Any = FaceDetector) -> dict:
    """Build and write the population; return the report written to eval_population.json."""
    population, report = build(
        params.eval_population,
        params.synth,
        params.prepare,
        detector_factory=detector_factory,
        progress=sys.stderr.isatty(),
    )
    write(paths.eval_population, DataKeys.for_project(paths), population)
    atomic_write_json(paths.reports / REPORT_FILE, report)
    return report


def main() -> int:
    """Entry point of ``python -m visage_ml.app.stages.eval_population``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = ProjectPaths.discover()
    try:
        report = run(paths, load_params(paths.params))
    except (FileNotFoundError, ValueError) as exc:
        print(f"eval_population: {exc}", file=sys.stderr)
        return 2
    keys = ("identities_measured", "identities_calibration", "images_aligned", "seconds")
    print(json.dumps({k: report[k] for k in keys}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
