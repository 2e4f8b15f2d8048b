"""Whether ``data/raw``'s tables are there before a right reads a subject's rows in them.

:func:`~visage_ml.data.rawstore.read_subjects` and :func:`~visage_ml.data.rawstore.read_images`
read a table that is not there as empty: where ``dvc checkout data/raw`` was not run (or was cut
short), an action would take the subject to have no photographs and answer wrongly (an export
without them, a rectification's "not one of their images", a lift's "no single face was
found"). :func:`check_raw` refuses that first, for every action that reads the tables.

So too where both tables are there but photographs they list are not, though DVC's record of
``data/raw`` holds them (a checkout cut short, or run for some files: ``dvc checkout
data/raw`` brings them back): an export would hand over fewer photographs than the subject
has and complete the request, a rectification would call their own photograph not theirs, a
lift would make the template from what is there, and an erasure or a rectification, which
write ``data/raw`` again, would make every photograph not there gone from the version ``dvc
add`` makes of it (:func:`~visage_ml.data.rawstore.check_images`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from visage_ml.config import ProjectPaths
from visage_ml.data.rawstore import (
    EFFECT_READ,
    EFFECT_WRITTEN,
    MSG_RAW_NOT_CACHED,
    MSG_RAW_NOT_CHECKED_OUT,
    RawDataMissingError,
    absent_shown,
    absent_tables,
    check_images,
    check_recorded,
    tables_expected,
    uncached_shown,
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


def check_raw(
    paths: ProjectPaths,
    pid: str,
    *,
    source: str,
    crops: int | None = None,
    everyone: bool = False,
) -> None:
    """Refuse to read ``data/raw`` as empty where ``pid``'s rows are expected in it, or
    without photographs its tables list that DVC can bring back.

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
    everyone
        Check every subject's photographs, not only ``pid``'s: the action writes ``data/raw``
        again (an erasure, a rectification), and the version ``dvc add`` then makes would
        lack any photograph not there; and, where DVC's listing of ``data/raw`` is not in the
        cache, that ``data/raw`` is what DVC records
        (:func:`~visage_ml.data.rawstore.check_recorded`): a file the record holds that no
        table lists would be lacking too.

    Raises
    ------
    visage_ml.data.rawstore.RawDataMissingError
        A table is not there though the subject's rows are expected in it, or photographs the
        tables list (the subject's; with ``everyone``, anyone's) are not there though DVC's
        record of ``data/raw`` holds them, or (``everyone``) ``data/raw`` is not shown to be
        what that record holds where its listing is not in the cache: the message says which,
        why and what to run
        (``dvc checkout data/raw``; ``dvc fetch data/raw`` first where the DVC cache lacks
        what the checkout needs, :func:`~visage_ml.data.rawstore.uncached_shown`, which would
        otherwise take the whole of ``data/raw`` out of the workspace).
    """
    missing = absent_tables(paths.raw)
    if not missing:
        check_images(
            paths.raw,
            pids=None if everyone else [pid],
            effect=EFFECT_WRITTEN if everyone else EFFECT_READ,
        )
        if everyone:
            check_recorded(paths.raw)
        return
    why = tables_expected(paths.raw, missing) or _theirs_expected(paths, pid, source, crops)
    if why is None:
        return
    shown = absent_shown(missing)
    uncached = uncached_shown(paths.raw)
    if uncached is not None:
        raise RawDataMissingError(
            MSG_RAW_NOT_CACHED.format(missing=shown, why=why, pid=pid, uncached=uncached)
        )
    raise RawDataMissingError(MSG_RAW_NOT_CHECKED_OUT.format(missing=shown, why=why, pid=pid))


def _theirs_expected(paths: ProjectPaths, pid: str, source: str, crops: int | None) -> str | None:
    """Why ``pid`` has rows in ``data/raw`` though the project says nothing of its tables."""
    if processed_rows(paths, pid).get("crops", 0) if crops is None else crops:
        return f"data/processed holds crops of subject {pid}'s photographs"
    if source.startswith("import:") or source == SYNTHFACES_SOURCE:
        return f"the registry says subject {pid} came from {source}, with photographs"
    return None
