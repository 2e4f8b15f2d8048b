"""One operation on a project, run in a child process that ``VISAGE_FAULT`` may kill.

    python crash_child.py enroll   ROOT PID EMBEDDINGS.npy
    python crash_child.py erase    ROOT PID
    python crash_child.py withdraw ROOT PID
    python crash_child.py import   ROOT SOURCE

Exits 0 when the operation completed, 137 when the fault point ended it. Not a test module.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from visage_ml.config import ProjectPaths
from visage_ml.data.importers import ImportBasis, import_dataset
from visage_ml.privacy.core import PrivacyCore
from visage_ml.rights.erasure import Erasure
from visage_ml.serving.gallery import Gallery

VERSION, DIM, THRESHOLD = "emb-test-1", 64, 0.7


def main(argv: list[str]) -> int:
    op, root = argv[0], Path(argv[1])
    paths = ProjectPaths(root)
    core = PrivacyCore(paths)
    if op == "enroll":
        gallery = Gallery.open(
            paths, model_version=VERSION, embedding_dim=DIM, threshold=THRESHOLD, core=core
        )
        gallery.enroll(argv[2], np.load(argv[3]))
    elif op == "erase":
        Erasure(paths, core=core).erase(argv[2])
    elif op == "withdraw":
        core.withdraw_consent(argv[2], ["identification"])
    elif op == "import":
        basis = ImportBasis.from_options(legal_basis="art6(1)(f)+art9(2)(j)")
        import_dataset("imagefolder", argv[2], paths=paths, basis=basis, core=core)
    else:
        raise SystemExit(f"unknown operation {op}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
