"""Whether ``data/raw``'s tables are there before a right reads a subject's rows in them.

:func:`~visage_ml.data.rawstore.read_subjects` and :func:`~visage_ml.data.rawstore.read_images`
read a table that is not there as empty: where ``dvc checkout data/raw`` was not run (or was cut
short), an action would take the subject to have no photographs and answer wrongly (an export
without them, a rectification's "not one of their images", a lift's "no single face was
found"). :func:`check_raw` refuses that first, for every action that reads the tables.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from visage_ml.config import ProjectPaths
from visage_ml.data.rawstore import (
    MSG_RAW_NOT_CHECKED_OUT,
    RawDataMissingError,
    absent_shown,
    absent_tables,
    tables_expected,
)
from visage_ml.privacy.registry import SYNTHFACES_SOURCE


def processed_rows(paths: ProjectPaths, pid: str) -> dict[str, Any]:
    """``pid``'s rows in ``data/processed/manifest.parquet``: whether they are there, how many
    crops and their split."""
    manifest = paths.processed / "manifest.parquet"
    if not manifest.is_file():
        return {"in_processed_data": False}
    df = pd.read_parquet(manifest, columns=["pid", "split"])
    rows = df[df["pid"].astype(str) == pid]
    return {
        "in_processed_data": bool(len(rows)),
        "crops": len(rows),
        "split": str(rows["split"].iloc[0]) if len(rows) else None,
    }


def check_raw(paths: ProjectPaths, pid: str, *, source: str, crops: int | None = None) -> None:
    """Refuse to read ``data/raw`` as empty where ``pid``'s rows are expected in it.

    They are expected, when a table is not there, where the project says rows are
    (:func:`~visage_ml.data.rawstore.tables_expected`: the other table is there, DVC tracks
    ``data/raw``, or ``data/raw`` holds subjects' folders: a raw-store transaction refuses to
    begin then too), ``data/processed`` holds crops of theirs, or the registry says they came
    from an import or SynthFaces; nothing says so for a subject added by hand, who has no
    photograph.

    Parameters
    ----------
    paths
        The project.
    pid
        The subject.
    source
        Where the registry says the subject came from (``SubjectState.source``).
    crops
        Their crops in ``data/processed`` (counted from its manifest when None and needed).

    Raises
    ------
    visage_ml.data.rawstore.RawDataMissingError
        A table is not there though the subject's rows are expected in it: the message says
        which, why and what to run (``dvc checkout data/raw``).
    """
    missing = absent_tables(paths.raw)
    if not missing:
        return
    why = tables_expected(paths.raw, missing) or _theirs_expected(paths, pid, source, crops)
    if why is None:
        return
    raise RawDataMissingError(
        MSG_RAW_NOT_CHECKED_OUT.format(missing=absent_shown(missing), why=why, pid=pid)
    )


def _theirs_expected(paths: ProjectPaths, pid: str, source: str, crops: int | None) -> str | None:
    """Why ``pid`` has rows in ``data/raw`` though the project says nothing of its tables."""
    if processed_rows(paths, pid).get("crops", 0) if crops is None else crops:
        return f"data/processed holds crops of subject {pid}'s photographs"
    if source.startswith("import:") or source == SYNTHFACES_SOURCE:
        return f"the registry says subject {pid} came from {source}, with photographs"
    return None
