"""The ``fairface`` format: a label CSV (``file,age,gender,race,...``) and the images it lists.

PATH is the CSV or the folder holding the CSVs; image paths are relative to the CSV's folder
and are resolved component by component (no traversal, no links). One subject per image.
"""

from __future__ import annotations

import csv
import io
import os
import re
import stat
from pathlib import Path, PurePosixPath

from visage_ml.data.importers.common import (
    BAD_FILE_NAME,
    BAD_LABEL,
    MAX_AGE,
    MISSING_FILE,
    NOT_A_REGULAR_FILE,
    PATH_TRAVERSAL,
    SYMLINK,
    UNREADABLE,
    ImportFormat,
    ImportInputError,
    Item,
    Scan,
    ScanOptions,
    Skip,
    name_problem,
    printable,
)

FAIRFACE_COLUMNS = ("file", "age", "gender", "race")
# "more than 70" is open-ended: its "midpoint" is taken half a decade above the bound.
OPEN_BAND_OFFSET = 5
# At most three digits: ages stop at MAX_AGE, and int() of thousands of digits raises.
_BAND = re.compile(r"^(\d{1,3})\s*-\s*(\d{1,3})$")
_OPEN_BAND = re.compile(r"^(?:more than\s*(\d{1,3})|(\d{1,3})\s*\+)$", re.I)


def snake_case(label: str) -> str:
    """``"East Asian"`` / ``"Latino_Hispanic"`` -> ``"east_asian"`` / ``"latino_hispanic"``."""
    return re.sub(r"[^0-9a-z]+", "_", label.strip().lower()).strip("_")


def band_midpoint(band: str) -> int | None:
    """Age in years standing for a band: ``"20-29"`` -> 25, ``"more than 70"`` -> 75.

    A band ``lo-hi`` covers ages ``lo <= a < hi + 1``; its midpoint ``(lo + hi + 1) / 2`` is
    rounded down. None when ``band`` is not a band.
    """
    text = band.strip()
    m = _BAND.match(text)
    if m:
        lo, hi = int(m[1]), int(m[2])
        return (lo + hi + 1) // 2 if lo <= hi <= MAX_AGE else None
    m = _OPEN_BAND.match(text)
    if m:
        lo = int(m[1] or m[2])
        return lo + OPEN_BAND_OFFSET if lo <= MAX_AGE else None
    return None


def _resolve_inside(base: Path, rel: str) -> tuple[Path | None, Skip | None]:
    """``base/rel`` checked component by component: no traversal, no links, a regular file."""
    if not rel:
        return None, Skip(rel, BAD_LABEL, "empty file column")
    problem = name_problem(rel)
    if problem:
        return None, Skip(printable(rel), BAD_FILE_NAME, f"path {problem}")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or "\\" in rel or re.match(r"^[A-Za-z]:", rel) or ".." in pure.parts:
        return None, Skip(rel, PATH_TRAVERSAL, "absolute or '..' path in the CSV")
    current = base
    parts = [p for p in pure.parts if p != "."]
    for i, part in enumerate(parts):
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return None, Skip(rel, MISSING_FILE, "no such file next to the CSV")
        except OSError:
            return None, Skip(rel, UNREADABLE, "cannot be examined")
        if stat.S_ISLNK(st.st_mode):
            return None, Skip(rel, SYMLINK, "a link on the path; links are never followed")
        last = i == len(parts) - 1
        if not last and not stat.S_ISDIR(st.st_mode):
            return None, Skip(rel, MISSING_FILE, "a path component is not a folder")
        if last and not stat.S_ISREG(st.st_mode):
            return None, Skip(rel, NOT_A_REGULAR_FILE, "not a regular file")
    return current, None


def _fairface_csvs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    found = sorted(p for p in path.glob("*.csv") if p.is_file() and not p.is_symlink())
    if not found:
        raise ImportInputError(
            f"no label CSV in {path}; pass the FairFace CSV (e.g. fairface_label_train.csv)"
        )
    return found


def scan_fairface(root: Path, options: ScanOptions) -> Scan:
    """FairFace: one subject per CSV row; image paths are relative to the CSV's folder."""
    scan = Scan()
    for csv_path in _fairface_csvs(root):
        base = csv_path.parent
        try:
            text = csv_path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ImportInputError(
                f"{csv_path.name} cannot be read as UTF-8 CSV ({type(exc).__name__})"
            ) from None
        reader = csv.DictReader(io.StringIO(text))
        try:
            columns, rows = reader.fieldnames or [], list(reader)
        except csv.Error as exc:  # e.g. a field over the csv module's limit: the file, not a row
            raise ImportInputError(
                f"{csv_path.name} line {reader.line_num + 1} is not valid CSV ({exc}); fix the file"
            ) from None
        missing = [c for c in FAIRFACE_COLUMNS if c not in columns]
        if missing:
            raise ImportInputError(
                f"{csv_path.name} lacks the column(s) {', '.join(missing)}; a FairFace label CSV "
                f"has {','.join(FAIRFACE_COLUMNS)},..."
            )
        for row in rows:
            rel = (row.get("file") or "").strip()
            path, refused = _resolve_inside(base, rel)
            if refused is not None:
                scan.skipped.append(refused)
                continue
            band = (row.get("age") or "").strip()
            gender = (row.get("gender") or "").strip().lower()
            race = snake_case(row.get("race") or "")
            age = band_midpoint(band)
            problem = (
                f"age band {band!r} is not 'lo-hi' or 'more than N'"
                if age is None
                else f"gender {gender!r} is not Male or Female"
                if gender not in ("female", "male")
                else "race is empty"
                if not race
                else None
            )
            if problem:
                scan.skipped.append(Skip(rel, BAD_LABEL, problem))
                continue
            attrs = {"age": age, "age_band": band, "gender": gender, "group": race}
            assert path is not None
            scan.items.append(Item(rel, path, f"fairface:{rel}", attrs))
    return scan


FORMAT = ImportFormat(
    name="fairface",
    scan=scan_fairface,
    description="FairFace: label CSV (file,age,gender,race) + the images it lists; one subject "
    "per image",
    file_ok=True,
)
