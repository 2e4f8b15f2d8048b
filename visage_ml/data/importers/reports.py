"""The per-file import reports (``privacy/imports/import-*.json``) after an erasure.

A report lists the files an import did not take by their path in the source tree, and there a
folder (LFW, image folders) or a file name (UTKFace, FairFace) is the person's reference: the
report of an import that took some of a person's files and refused others names that person,
in clear, for as long as it is kept. An erasure therefore rewrites every report without the
lines that name the erased person (:func:`redact_reports`): each keeps its reason code, so the
report's counts still add up, and loses its path and detail.

Which person a line names is asked of its paths, not recorded at import time: a line's
*references* (:func:`line_refs`) are the import format's reference of the whole path and of each
of its components (``imagefolder:Zelda`` for ``Zelda/a.jpg``), compared as the tombstones
compare them (:func:`~visage_ml.privacy.tombstones.normalise_ref`). A path whose bytes were not
UTF-8 is written with ``\\xNN`` escapes and matches no reference.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from visage_ml.config import ProjectPaths
from visage_ml.data.importers import utkface
from visage_ml.data.importers.common import IMPORTS_DIR
from visage_ml.io import NONCE_KEY, atomic_write_text, version_nonce

# What a redacted line says instead of its path.
REDACTED = "erasure"
# Formats whose file names stand for a person's reference other than as ``<format>:<name>``.
PATH_REFS: dict[str, Callable[[str], Iterable[str]]] = {"utkface": utkface.file_refs}

Names = Callable[[Iterable[str]], bool]


def report_files(paths: ProjectPaths) -> list[Path]:
    """The project's import reports, oldest first."""
    folder = paths.privacy / IMPORTS_DIR
    return sorted(folder.glob("import-*.json")) if folder.is_dir() else []


def line_refs(fmt: str, rel: str) -> set[str]:
    """The references a report line of format ``fmt`` about path ``rel`` may name: the format's
    reference of the path and of each component, and where a format names a person otherwise
    (a UTKFace photograph's two copies, ``X.jpg`` and ``X.jpg.chip.jpg``, are one person,
    ``utkface:X.jpg``), that reference too."""
    parts = [p for p in str(rel).split("/") if p]
    refs = {f"{fmt}:{x}" for x in (str(rel).rstrip("/"), *parts) if x}
    named = PATH_REFS.get(fmt)
    if named is not None:
        refs.update(r for part in parts for r in named(part))
    return refs


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("files"), list) else None


def _naming(doc: dict[str, Any], names: Names) -> list[int]:
    """Indices of the lines of report ``doc`` that name someone ``names`` accepts."""
    fmt = str(doc.get("format") or "")
    hits = []
    for i, line in enumerate(doc["files"]):
        if not isinstance(line, dict) or not isinstance(line.get("file"), str):
            continue
        if names(line_refs(fmt, line["file"])):
            hits.append(i)
    return hits


def reports_naming(paths: ProjectPaths, names: Names) -> list[Path]:
    """The reports with a line that names someone ``names`` accepts (an import refusing an
    erased subject's files counts them without a line, but an older version listed them)."""
    out = []
    for path in report_files(paths):
        doc = _read(path)
        if doc is not None and _naming(doc, names):
            out.append(path)
    return out


def redact_reports(paths: ProjectPaths, names: Names) -> list[Path]:
    """Rewrite each report without the paths and details of its lines naming someone ``names``
    accepts (atomically, mode 0600); returns the reports rewritten."""
    done = []
    for path in report_files(paths):
        doc = _read(path)
        if doc is None:
            continue
        hits = _naming(doc, names)
        if not hits:
            continue
        for i in hits:
            doc["files"][i] = {
                "file": None,
                "reason": doc["files"][i].get("reason"),
                "detail": "",
                "redacted": REDACTED,
            }
        doc[NONCE_KEY] = version_nonce()  # the version replaced is rebuilt by no one
        text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
        atomic_write_text(path, text, mode=0o600)
        done.append(path)
    return done
