"""Stage ``prepare``: glue around :func:`visage_ml.data.prepare.prepare`.

Reads ``data/raw`` and ``data/registry/consents.parquet``; writes ``data/processed/`` and
``reports/prepare.json``. Paths are those of ``dvc.yaml``; knobs come from ``params.yaml``
(``project``, ``prepare``).
"""

from __future__ import annotations

import json
import logging
import sys

from visage_ml.config import ProjectPaths, load_params
from visage_ml.data.detect import FaceDetector
from visage_ml.data.prepare import prepare
from visage_ml.data.rawstore import RawDataMissingError
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.ledger import LedgerError


def run(paths: ProjectPaths) -> dict:
    """Run the stage for the project at ``paths``; return the report written to prepare.json."""
    # Fail closed: a ledger rolled back behind its witnessed checkpoint (the consent snapshot
    # may no longer say what the ledger said) stops the stage before any face is read.
    PrivacyCore(paths)
    return prepare(paths, load_params(paths.params), progress=True, detector_factory=FaceDetector)


def main() -> int:
    """Entry point of ``python -m visage_ml.app.stages.prepare``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = ProjectPaths.discover()
    try:
        report = run(paths)
    except (FileNotFoundError, ValueError, LedgerError, RawDataMissingError) as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {k: report[k] for k in ("subjects_used", "faces_aligned", "miss_rate", "seconds")}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
