"""Stage ``demographic_population``: synthetic training people of the demographic model.

Glue around :mod:`visage_ml.data.eval_population` with its :data:`TRAINING` purpose: renders
``demographic_population.identities_per_cell`` identities in each skin-tone group x gender cell
from ``demographic_population.seed`` (its own seed and id namespace: never the evaluation
population's people, never the acquisition population's) with the ``synth`` nuisance, detects
and aligns them as ``prepare`` does and writes ``data/demographic_population/{faces.sealed,
manifest.parquet, detection.parquet}`` and ``reports/demographic_population.json`` (counts
only). SynthFaces' acquisition shares leave few people in some groups; ``train_demographics``
trains on these beside the processed training split. The embedder never sees them. These are
synthetic people, not data subjects: the stage writes nothing to the privacy ledger or registry.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from visage_ml.config import Params, ProjectPaths, load_params
from visage_ml.data.detect import FaceDetector
from visage_ml.data.eval_population import TRAINING, build, write
from visage_ml.io import atomic_write_json
from visage_ml.privacy.datakeys import DataKeys

REPORT_FILE = "demographic_population.json"


def run(paths: ProjectPaths, params: Params, *, detector_factory: Any = FaceDetector) -> dict:
    """Build and write the population; return the report written to the stage's report file.

    With ``identities_per_cell: 0`` the folder holds an empty population (the demographic model
    then trains on the processed data alone).
    """
    population, report = build(
        params.demographic_population,
        params.synth,
        params.prepare,
        detector_factory=detector_factory,
        progress=sys.stderr.isatty(),
        purpose=TRAINING,
    )
    write(paths.demographic_population, DataKeys.for_project(paths), population, purpose=TRAINING)
    atomic_write_json(paths.reports / REPORT_FILE, report)
    return report


def main() -> int:
    """Entry point of ``python -m visage_ml.app.stages.demographic_population``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = ProjectPaths.discover()
    try:
        report = run(paths, load_params(paths.params))
    except (FileNotFoundError, ValueError) as exc:
        print(f"demographic_population: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: report[k] for k in ("identities", "images_aligned", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
