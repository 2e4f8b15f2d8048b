"""Glue of the ``export`` and ``evaluate`` stages: their ``model.released`` ledger event."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

from visage_ml.config import ProjectPaths
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.ledger import LedgerError
from visage_ml.serving.release import record_release


def release(paths: ProjectPaths, files: Iterable[str], *, stage: str, names: Sequence[str]) -> int:
    """Record ``files`` as released by ``stage`` in the privacy ledger and say so on stdout.

    Returns the stage's exit status: 0, or 2 (said on stderr) when the ledger refused.
    """
    try:
        entry = record_release(PrivacyCore(paths).ledger, paths.root, list(files), stage=stage)
    except (LedgerError, ValueError, OSError) as exc:
        print(
            f"{stage}: could not record the release in the privacy ledger: {exc}", file=sys.stderr
        )
        return 2
    print(f"{stage}: released {', '.join(names)} in ledger entry {entry.seq}")
    return 0
