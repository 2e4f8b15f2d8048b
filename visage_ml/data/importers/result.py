"""What an import did: the counts, the LFW protocol file and the per-file report.

The report under ``privacy/imports/`` (git-ignored, next to the vault) is the only place file
names are written: it lists the files that were *not* imported, with a reason code, and is not
linked to any pid. An erasure rewrites it without the lines naming the erased person
(:mod:`visage_ml.data.importers.reports`). Files refused because they belong to an erased
subject are counted by reason and never listed (:attr:`ImportResult.withheld`): their path
would name the person, in a report anyone who may read ``privacy/`` reads without the
tombstone key.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from visage_ml import dvcops
from visage_ml.config import ProjectPaths
from visage_ml.data.importers.common import (
    IMPORTS_DIR,
    PROTOCOL_FILE,
    REASON_TEXT,
    PairSpec,
    Skip,
    printable,
)
from visage_ml.data.rawstore import frame_parquet_bytes
from visage_ml.io import NONCE_KEY, atomic_write_bytes, atomic_write_text, version_nonce

# Said in the report beside the listed files when some were counted only.
WITHHELD_TEXT = (
    "files refused because they belong to an erased subject are counted in skipped_by_reason, "
    "not listed: their folder or file name is the person"
)


@dataclass
class ImportResult:
    """What an import did. ``skipped`` holds file names (for the report file only);
    ``withheld`` counts, per reason, the files refused whose path is not written anywhere (an
    erased subject's: the folder or file name is the person)."""

    format: str
    source: str
    persons_found: int = 0
    subjects_added: int = 0
    subjects_updated: int = 0
    images_imported: int = 0
    skipped: list[Skip] = field(default_factory=list)
    withheld: Counter[str] = field(default_factory=Counter)
    conversions: Counter[str] = field(default_factory=Counter)
    pairs_written: int | None = None
    pairs_dropped: int | None = None
    pair_files: list[str] = field(default_factory=list)
    dvc_md5: str | None = None
    dvc_error: str | None = None
    report_path: Path | None = None
    basis: dict[str, Any] = field(default_factory=dict)
    role: str = "both"

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        """Number of files not imported, per reason code (the withheld ones included)."""
        return dict(sorted((Counter(s.reason for s in self.skipped) + self.withheld).items()))

    def summary(self) -> dict[str, Any]:
        """Counts only (no file names): safe for logs and ``--json``."""
        return {
            "format": self.format,
            "source": self.source,
            "persons_found": self.persons_found,
            "subjects_added": self.subjects_added,
            "subjects_updated": self.subjects_updated,
            "images_imported": self.images_imported,
            "files_skipped": len(self.skipped) + sum(self.withheld.values()),
            "skipped_by_reason": self.skipped_by_reason,
            "conversions": dict(sorted(self.conversions.items())),
            "lfw_pairs": None
            if self.pairs_written is None
            else {
                "written": self.pairs_written,
                "dropped": self.pairs_dropped,
                "files": self.pair_files,
            },
            "basis": self.basis,
            "role": self.role,
            "dvc_md5": self.dvc_md5,
            "dvc_error": self.dvc_error,
            "report": str(self.report_path) if self.report_path else None,
        }


def write_lfw_protocol(
    paths: ProjectPaths,
    pairs: Sequence[PairSpec],
    *,
    key_to_image: Mapping[str, str],
    valid_ids: set[str],
) -> tuple[int, int]:
    """Write ``data/protocols/lfw_pairs.parquet``; return (pairs written, pairs dropped).

    Pairs whose images were not imported are dropped. Folds present in ``pairs`` replace the
    same folds of an existing protocol file; other folds are kept. Then ``dvc add`` the folder
    (a warning outside a DVC repository).
    """
    rows, dropped = [], 0
    for p in pairs:
        a, b = key_to_image.get(p.key_a), key_to_image.get(p.key_b)
        if a is None or b is None or a not in valid_ids or b not in valid_ids:
            dropped += 1
            continue
        rows.append(
            {"fold": p.fold, "image_id_a": a, "image_id_b": b, "same": p.same, "view": p.view}
        )
    new = pd.DataFrame(rows, columns=["fold", "image_id_a", "image_id_b", "same", "view"])
    target = paths.protocols / PROTOCOL_FILE
    if target.is_file():
        old = pd.read_parquet(target)
        folds = {p.fold for p in pairs}
        new = pd.concat([old[~old["fold"].isin(folds)], new], ignore_index=True)
    _write_pairs_table(target, new)
    dvcops.track(paths.root, paths.protocols)
    return len(rows), dropped


def _write_pairs_table(target: Path, table: pd.DataFrame) -> None:
    """``table`` as the pairs protocol, replaced atomically (temporary file, fsync, rename)."""
    table = table.astype(
        {"fold": "int32", "image_id_a": "string", "image_id_b": "string", "same": "bool"}
    ).astype({"view": "string"})
    atomic_write_bytes(target, frame_parquet_bytes(table))


def lfw_pairs_file(paths: ProjectPaths) -> Path:
    """Where the LFW pairs protocol of the project is (it may not exist)."""
    return paths.protocols / PROTOCOL_FILE


def _naming(table: pd.DataFrame, image_ids: Iterable[str]) -> pd.Series:
    ids = set(image_ids)
    return table["image_id_a"].astype(str).isin(ids) | table["image_id_b"].astype(str).isin(ids)


def lfw_pairs_naming(paths: ProjectPaths, image_ids: Iterable[str]) -> int:
    """How many rows of the LFW pairs protocol name any of ``image_ids`` (0 without one)."""
    target = lfw_pairs_file(paths)
    if not target.is_file():
        return 0
    return int(_naming(pd.read_parquet(target), image_ids).sum())


def drop_lfw_pairs(paths: ProjectPaths, image_ids: Iterable[str]) -> int:
    """Remove the rows of the LFW pairs protocol that name any of ``image_ids``.

    An erased subject's images leave ``data/raw``; a pair naming one of them would keep its
    identifier, and whether two of the subject's images show one person. The table is
    replaced atomically; nothing is written when no row names them. Call it with the
    ``data/raw`` lock held (:meth:`~visage_ml.data.rawstore.RawTransaction.then`): the import
    writes this table under that lock too. The caller runs ``dvc add data/protocols``.

    Returns
    -------
    int
        Rows removed (0 when there is no protocol or no row names the images).
    """
    target = lfw_pairs_file(paths)
    if not target.is_file():
        return 0
    table = pd.read_parquet(target)
    named = _naming(table, image_ids)
    if not named.any():
        return 0
    _write_pairs_table(target, table[~named].reset_index(drop=True))
    return int(named.sum())


def write_report(
    paths: ProjectPaths, result: ImportResult, *, root: Path, started: datetime
) -> Path:
    """The per-file report under ``privacy/imports/`` (mode 0600; names appear only here)."""
    folder = paths.privacy / IMPORTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    target = folder / f"import-{stamp}.json"
    n = 1
    while target.exists():
        n += 1
        target = folder / f"import-{stamp}-{n}.json"
    doc = {
        **result.summary(),
        "report": None,
        "root": printable(str(root)),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reason_text": {k: REASON_TEXT[k] for k in result.skipped_by_reason},
        "files": [s.to_dict() for s in result.skipped],
        **({"files_withheld": WITHHELD_TEXT} if result.withheld else {}),
        NONCE_KEY: version_nonce(),
    }
    atomic_write_text(target, json.dumps(doc, indent=2, ensure_ascii=False) + "\n", mode=0o600)
    return target
