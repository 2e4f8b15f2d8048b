"""Import face data sets that teams already hold into ``data/raw``, pseudonymising every person.

A format is a scanner registered with :func:`register_format`: it walks the data set's tree (or
reads its label file) and returns :class:`Item` s, one per image, each naming the person by an
external reference (``"lfw:<Name>"``, ``"utkface:<file name>"``, ...) and carrying the
attributes the format gives per image. :func:`import_dataset` then, for every item:

1. reads the file without following links (symbolic links are refused, never followed);
2. skips it as a duplicate when its bytes (or its decoded pixels) were imported before;
3. validates and re-encodes it (:func:`visage_ml.data.imagecheck.check_image`) into a staging
   area of a :class:`~visage_ml.data.rawstore.RawStore` transaction;

and once every file is processed registers the persons with at least one accepted image in the
privacy core (the external reference goes to the encrypted identity vault only; a person already
in the vault keeps their pid), records consent or another legal basis for each, moves the files
to ``data/raw/<pid>/<image_id>.png`` and swaps the new ``data/raw`` in atomically. LFW pairs
files become ``data/protocols/lfw_pairs.parquet``.

Names never reach ``data/``, the ledger or a log. The only place file names appear is the
per-file import report under ``privacy/imports/`` (git-ignored, next to the vault): it lists the
files that were *not* imported, with a reason code, and is not linked to any pid.

Formats
-------
``imagefolder``  ``root/<person>/<image>``: one subject per folder.
``lfw``          ``lfw/<Name>/<Name>_0001.jpg`` (PATH is the folder holding ``lfw/`` or the
                 folder holding the names) and, next to it or given with ``--pairs``,
                 ``pairs.txt`` / ``pairsDevTest.txt`` / ``pairsDevTrain.txt``.
``utkface``      a flat folder of ``[age]_[gender]_[race]_[datetime].jpg[.chip.jpg]``; one
                 subject per image (UTKFace has no identities).
``fairface``     a label CSV (``file,age,gender,race,...``; PATH is the CSV or the folder holding
                 the CSVs) and the images it references, relative to the CSV's folder; one
                 subject per image.

LFW protocol folds
------------------
``pairs.txt`` (View 2) gives folds ``0..9``; ``pairsDevTest.txt`` fold ``-1`` and
``pairsDevTrain.txt`` fold ``-2`` (View 1). The ``view`` column says which: ``view2``,
``dev_test``, ``dev_train``. A new import replaces the rows of the folds it brings and keeps the
others. Consumers computing the 10-fold accuracy use ``fold >= 0`` only.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import stat
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from visage_ml import faults
from visage_ml.config import ProjectPaths
from visage_ml.io import atomic_write_text, sha256_bytes
from visage_ml.privacy.consent import CONSENT_BASES, check_purposes, parse_basis, sha256_text
from visage_ml.privacy.registry import ERASED, ERASURE_PENDING, OBJECTED, RESTRICTED, WITHDRAWN

if TYPE_CHECKING:
    from visage_ml.config import Params, ProjectParams
    from visage_ml.data.rawstore import RawTransaction
    from visage_ml.privacy.core import PrivacyCore

log = logging.getLogger(__name__)

DEFAULT_PURPOSES: tuple[str, ...] = ("training", "evaluation")
MAX_FILE_BYTES = 256 * 1024 * 1024  # no face photograph comes near; larger files are refused
IMPORTS_DIR = "imports"  # under privacy/: the per-file reports
PROTOCOL_FILE = "lfw_pairs.parquet"

# -- reason codes of a file that was not imported (stable strings: the report exposes them) ---
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED_FORMAT = "unsupported_format"
CORRUPT = "corrupt"
TRUNCATED = "truncated"
DECOMPRESSION_BOMB = "decompression_bomb"
TOO_SMALL = "too_small"
TOO_LARGE = "too_large"
DUPLICATE = "duplicate"
UNEXPECTED_LAYOUT = "unexpected_layout"
SYMLINK = "symlink"
NOT_A_REGULAR_FILE = "not_a_regular_file"
BAD_FILE_NAME = "bad_file_name"
PATH_TRAVERSAL = "path_traversal"
MALFORMED_NAME = "malformed_name"
BAD_LABEL = "bad_label"
MISSING_FILE = "missing_file"
UNREADABLE = "unreadable"
SUBJECT_RIGHTS = "subject_rights"

REASON_TEXT: dict[str, str] = {
    EMPTY_FILE: "zero-byte file",
    NOT_AN_IMAGE: "not an image",
    UNSUPPORTED_FORMAT: "an image format that is not accepted (JPEG, PNG, BMP, GIF, TIFF, WebP, "
    "PPM are)",
    CORRUPT: "corrupt image data",
    TRUNCATED: "truncated image data",
    DECOMPRESSION_BOMB: "more pixels than serving.max_image_pixels (decompression bomb)",
    TOO_SMALL: "smaller than 32 pixels on a side",
    TOO_LARGE: f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB",
    DUPLICATE: "same bytes or pixels as another file of this import or an earlier one",
    UNEXPECTED_LAYOUT: "not where the format expects images",
    SYMLINK: "a symbolic link (never followed)",
    NOT_A_REGULAR_FILE: "not a regular file (device, pipe or socket)",
    BAD_FILE_NAME: "file name not valid UTF-8 or holding control characters",
    PATH_TRAVERSAL: "a path that leaves the data set's folder",
    MALFORMED_NAME: "file name does not follow the format's naming scheme",
    BAD_LABEL: "a label the format does not define",
    MISSING_FILE: "listed in the labels but not found",
    UNREADABLE: "the file could not be read (permissions or I/O error)",
    SUBJECT_RIGHTS: "the person is a known subject who withdrew consent, objected, or whose "
    "processing is restricted or being erased",
}

# Registry states that forbid adding data of an existing subject (the registry's reason codes).
_BLOCKING_STATES = frozenset({ERASED, ERASURE_PENDING, OBJECTED, RESTRICTED, WITHDRAWN})

BASIS_REQUIRED = (
    "importing faces needs a recorded legal basis, and none was given. Facial images processed "
    "for recognition are biometric data, a special category under GDPR Art. 9: each imported "
    "subject needs an Art. 6 condition and an Art. 9 condition. Pass --consent-evidence FILE "
    "(the subjects' explicit consent, Art. 6(1)(a) + Art. 9(2)(a); a consent receipt holding the "
    "file's SHA-256 is recorded per subject) or --legal-basis CODES (e.g. "
    "art6(1)(f)+art9(2)(j) for research under Art. 89(1); optionally --basis-evidence FILE). "
    "Nothing was written."
)
BOTH_BASES = (
    "pass either --consent-evidence (consent) or --legal-basis (another basis), not both; "
    "nothing was written"
)
CONSENT_NEEDS_EVIDENCE = (
    "--legal-basis {codes} names consent; consent is recorded with --consent-evidence FILE "
    "(the evidence's SHA-256 goes into a consent receipt per subject)"
)
UNKNOWN_FORMAT = "unknown import format '{name}'; formats: {known}"
PAIRS_NOT_LFW = "--pairs applies to the lfw format only"
NO_PATH = "{path} does not exist; pass the data set's folder"
NOT_A_FOLDER = "{path} is not a folder; the {fmt} format reads a folder"
NOTHING_FOUND = (
    "found no files to import under {path} in the {fmt} layout; check the format name and the "
    "folder (see `visage data import --help`)"
)


class ImportInputError(ValueError):
    """The data set as a whole cannot be read (the message names no person)."""


class BasisRequiredError(ValueError):
    """No legal basis (consent evidence or another basis) was given for an import."""


# ---------------------------------------------------------------------------------------------
# What scanners return
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One image file found by a scanner.

    ``rel`` is the path inside the import tree (report only), ``ref`` the person's external
    reference (vault only), ``attrs`` the per-image ``age`` / ``age_band`` / ``gender`` /
    ``group``, ``key`` the image's name in a protocol file (LFW ``"<Name>/<n>"``).
    """

    rel: str
    path: Path
    ref: str
    attrs: Mapping[str, Any] = field(default_factory=dict)
    key: str | None = None


@dataclass(frozen=True)
class Skip:
    """A file that is not imported: its path inside the tree, a reason code, a detail."""

    rel: str
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"file": self.rel, "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class PairSpec:
    """A protocol pair by image keys."""

    fold: int
    key_a: str
    key_b: str
    same: bool
    view: str


@dataclass
class Scan:
    """A scanner's findings: images to try, files refused up front, protocol pairs."""

    items: list[Item] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    pairs: list[PairSpec] = field(default_factory=list)
    pair_files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ScanOptions:
    """Format options from the command line (``--pairs`` for LFW)."""

    pairs: tuple[Path, ...] = ()


Scanner = Callable[[Path, ScanOptions], Scan]


@dataclass(frozen=True)
class ImportFormat:
    """A registered format: its scanner and how it is described."""

    name: str
    scan: Scanner
    description: str
    takes_pairs: bool = False
    file_ok: bool = False  # PATH may be a file (a label CSV)

    @property
    def source(self) -> str:
        """The ``source`` recorded for its subjects: ``import:<name>``."""
        return f"import:{self.name}"


FORMATS: dict[str, ImportFormat] = {}


def register_format(
    name: str, *, description: str, takes_pairs: bool = False, file_ok: bool = False
) -> Callable[[Scanner], Scanner]:
    """Decorator registering a scanner under ``name`` in :data:`FORMATS`."""

    def deco(fn: Scanner) -> Scanner:
        if name in FORMATS:
            raise ValueError(f"import format '{name}' is registered twice")
        FORMATS[name] = ImportFormat(name, fn, description, takes_pairs, file_ok)
        return fn

    return deco


def get_format(name: str) -> ImportFormat:
    """The registered format ``name`` (``ValueError`` listing the known ones otherwise)."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(UNKNOWN_FORMAT.format(name=name, known=", ".join(FORMATS))) from None


# ---------------------------------------------------------------------------------------------
# Walking an untrusted tree
# ---------------------------------------------------------------------------------------------


def printable(text: str) -> str:
    """``text`` with undecodable bytes (surrogate escapes) shown as ``\\xNN``."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def name_problem(name: str) -> str | None:
    """Why a file name is refused (not UTF-8, control characters), or None."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "holds control characters"
    return None


@dataclass(frozen=True)
class _Entry:
    name: str
    path: Path
    rel: str
    kind: Literal["dir", "file", "symlink", "other"]


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _list(folder: Path, rel: str) -> list[_Entry]:
    """Entries of ``folder`` (never following links), in a stable order."""
    out = []
    with os.scandir(folder) as it:
        for e in it:
            if e.is_symlink():
                kind: Literal["dir", "file", "symlink", "other"] = "symlink"
            elif e.is_dir(follow_symlinks=False):
                kind = "dir"
            elif e.is_file(follow_symlinks=False):
                kind = "file"
            else:
                kind = "other"
            out.append(_Entry(e.name, Path(e.path), _join(rel, printable(e.name)), kind))
    return sorted(out, key=lambda e: os.fsencode(e.name))


def _refusal(entry: _Entry) -> Skip | None:
    """Links and special files are refused wherever they are."""
    if entry.kind == "symlink":
        return Skip(entry.rel, SYMLINK, "symbolic links are never followed")
    if entry.kind == "other":
        return Skip(entry.rel, NOT_A_REGULAR_FILE, "device, pipe or socket")
    return None


def _skip_tree(entry: _Entry, reason: str, detail: str) -> Iterator[Skip]:
    """A Skip for ``entry`` or, for a folder, for every file below it (iterative: any depth)."""
    stack = [entry]
    while stack:
        current = stack.pop()
        refused = _refusal(current)
        if refused is not None:
            yield refused
        elif current.kind == "file":
            yield Skip(current.rel, reason, detail)
        else:
            try:
                children = _list(current.path, current.rel)
            except OSError:
                yield Skip(current.rel + "/", UNREADABLE, "folder cannot be listed")
                continue
            stack.extend(reversed(children))


def _person_folders(
    root: Path, scan: Scan, *, ignore_file: Callable[[str], bool] = lambda name: False
) -> Iterator[tuple[_Entry, list[_Entry]]]:
    """``root/<person>/<file>`` walk shared by ``imagefolder`` and ``lfw``.

    Yields each person folder with its files; refuses top-level files, nested folders, hidden
    folders, links and bad names into ``scan.skipped``.
    """
    for top in _list(root, ""):
        refused = _refusal(top)
        if refused is not None:
            scan.skipped.append(refused)
        elif top.kind == "file":
            if not ignore_file(top.name):
                scan.skipped.append(
                    Skip(
                        top.rel,
                        UNEXPECTED_LAYOUT,
                        "a file at the top level; images go in <person>/ folders",
                    )
                )
        elif name_problem(top.name):
            scan.skipped.extend(
                _skip_tree(top, BAD_FILE_NAME, f"folder name {name_problem(top.name)}")
            )
        elif top.name.startswith("."):
            scan.skipped.extend(_skip_tree(top, UNEXPECTED_LAYOUT, "inside a hidden folder"))
        else:
            files: list[_Entry] = []
            try:
                children = _list(top.path, top.rel)
            except OSError:
                scan.skipped.append(Skip(top.rel + "/", UNREADABLE, "folder cannot be listed"))
                continue
            for child in children:
                refused = _refusal(child)
                if refused is not None:
                    scan.skipped.append(refused)
                elif child.kind == "dir":
                    scan.skipped.extend(
                        _skip_tree(child, UNEXPECTED_LAYOUT, "deeper than <person>/<image>")
                    )
                elif name_problem(child.name):
                    scan.skipped.append(
                        Skip(child.rel, BAD_FILE_NAME, f"file name {name_problem(child.name)}")
                    )
                else:
                    files.append(child)
            yield top, files


# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------


@register_format(
    "imagefolder",
    description="root/<person>/<image>: one subject per folder (vault: imagefolder:<folder>)",
)
def scan_imagefolder(root: Path, options: ScanOptions) -> Scan:
    """``root/<person>/<image>``: the folder name is the person."""
    scan = Scan()
    for person, files in _person_folders(root, scan):
        ref = f"imagefolder:{person.name}"
        scan.items.extend(Item(f.rel, f.path, ref) for f in files)
    return scan


_LFW_META = re.compile(r"^(pairs.*|people.*|lfw-names|readme.*)\.txt$|^readme.*$", re.I)
_LFW_FILE = re.compile(r"^(?P<name>.+)_(?P<num>\d{4})\.(jpe?g|png)$", re.I)
_PAIRS_NAMES = ("pairs.txt", "pairsDevTest.txt", "pairsDevTrain.txt")


def _lfw_images_root(root: Path) -> Path:
    """The folder holding the ``<Name>/`` folders: ``root/lfw``, a single ``root/lfw*``, or root."""
    direct = root / "lfw"
    if direct.is_dir() and not direct.is_symlink():
        return direct
    candidates = [
        p
        for p in root.iterdir()
        if p.name.lower().startswith("lfw") and p.is_dir() and not p.is_symlink()
    ]
    return candidates[0] if len(candidates) == 1 else root


def _pairs_view(path: Path, header: list[str]) -> tuple[str, list[int], int]:
    """(view, folds, pairs per kind per fold) from a pairs file's name and first line."""
    lower = path.name.lower()
    bad_header = ImportInputError(
        f"{path.name}: the first line must be '<folds> <pairs per fold>' (pairs.txt: '10 300') "
        "or '<pairs>' (pairsDevTrain/DevTest); fix or replace the file"
    )
    if not header or len(header) > 2 or not all(h.isdigit() for h in header):
        raise bad_header
    numbers = [int(h) for h in header]
    if len(numbers) == 2:
        return "view2", list(range(numbers[0])), numbers[1]
    if "devtest" in lower:
        return "dev_test", [-1], numbers[0]
    if "devtrain" in lower:
        return "dev_train", [-2], numbers[0]
    raise ImportInputError(
        f"{path.name} has a one-number header, so it is a View 1 file, but its name says neither "
        "DevTrain nor DevTest; rename it pairsDevTrain.txt or pairsDevTest.txt"
    )


def parse_lfw_pairs(path: Path) -> list[PairSpec]:
    """Read an LFW pairs file into :class:`PairSpec` s keyed ``"<Name>/<n>"``.

    ``pairs.txt`` starts with ``"<folds>\\t<n>"`` and holds, per fold, ``n`` matched lines
    (``name i j``) then ``n`` mismatched lines (``name1 i name2 j``); the View 1 files start
    with ``"<n>"`` and hold ``n`` matched then ``n`` mismatched lines.

    Raises
    ------
    ImportInputError
        The file does not follow that structure (the message gives line numbers, not names).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportInputError(
            f"{path.name} cannot be read as UTF-8 text ({type(exc).__name__})"
        ) from None
    lines = [(i + 1, ln.split()) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    if not lines:
        raise ImportInputError(f"{path.name} is empty; pass the LFW pairs file")
    view, folds, n = _pairs_view(path, lines[0][1])
    body = lines[1:]
    if len(body) != len(folds) * 2 * n:
        raise ImportInputError(
            f"{path.name}: the header announces {len(folds)} fold(s) of {n} matched and {n} "
            f"mismatched pairs ({len(folds) * 2 * n} lines), the file has {len(body)}"
        )
    pairs: list[PairSpec] = []
    for k, fold in enumerate(folds):
        block = body[k * 2 * n : (k + 1) * 2 * n]
        for j, (lineno, parts) in enumerate(block):
            same = j < n
            expected = 3 if same else 4
            if len(parts) != expected or not (parts[1].isdigit() and parts[-1].isdigit()):
                kind = "name number number" if same else "name number name number"
                raise ImportInputError(f"{path.name} line {lineno}: expected '{kind}'")
            if same:
                a, b = f"{parts[0]}/{int(parts[1])}", f"{parts[0]}/{int(parts[2])}"
            else:
                a, b = f"{parts[0]}/{int(parts[1])}", f"{parts[2]}/{int(parts[3])}"
            pairs.append(PairSpec(fold, a, b, same, view))
    return pairs


@register_format(
    "lfw",
    description="Labeled Faces in the Wild: lfw/<Name>/<Name>_0001.jpg (+ pairs*.txt → "
    "data/protocols/lfw_pairs.parquet)",
    takes_pairs=True,
)
def scan_lfw(root: Path, options: ScanOptions) -> Scan:
    """LFW: person folders of ``<Name>_NNNN.jpg`` files, and its pairs files."""
    images_root = _lfw_images_root(root)
    scan = Scan()
    for person, files in _person_folders(
        images_root, scan, ignore_file=lambda name: bool(_LFW_META.match(name))
    ):
        ref = f"lfw:{person.name}"
        for f in files:
            m = _LFW_FILE.match(f.name)
            if m is None or m.group("name") != person.name:
                scan.skipped.append(
                    Skip(f.rel, UNEXPECTED_LAYOUT, "LFW files are named <Name>/<Name>_NNNN.jpg")
                )
                continue
            scan.items.append(Item(f.rel, f.path, ref, key=f"{person.name}/{int(m['num'])}"))
    pair_files = list(options.pairs)
    if not pair_files:
        # The first folder holding any pairs file, nearest to the images first.
        for folder in (images_root, root, images_root.parent):
            pair_files = [folder / n for n in _PAIRS_NAMES if (folder / n).is_file()]
            if pair_files:
                break
    seen_folds: dict[int, Path] = {}
    for pf in dict.fromkeys(p.resolve() for p in pair_files):
        if not pf.is_file():
            raise ImportInputError(f"pairs file {pf} not found; pass an existing --pairs FILE")
        for pair in (parsed := parse_lfw_pairs(pf)):
            if seen_folds.setdefault(pair.fold, pf) != pf:
                raise ImportInputError(
                    f"{pf.name} and {seen_folds[pair.fold].name} both define fold {pair.fold}; "
                    "pass each pairs file once"
                )
        scan.pairs.extend(parsed)
        scan.pair_files.append(pf.name)
    return scan


UTK_RACES: dict[int, str] = {0: "white", 1: "black", 2: "asian", 3: "indian", 4: "others"}
UTK_GENDERS: dict[int, str] = {0: "male", 1: "female"}
_UTK_FILE = re.compile(
    r"^(?P<age>\d+)_(?P<gender>\d+)_(?P<race>\d+)_(?P<when>\d+)\.(jpe?g|png)(\.chip\.jpe?g)?$",
    re.I,
)
MAX_AGE = 120


@register_format(
    "utkface",
    description="UTKFace: flat folder of <age>_<gender>_<race>_<datetime>.jpg(.chip.jpg); "
    "one subject per image",
)
def scan_utkface(root: Path, options: ScanOptions) -> Scan:
    """UTKFace: labels from each file name; no identities, so one subject per image."""
    scan = Scan()
    for entry in _list(root, ""):
        refused = _refusal(entry)
        if refused is not None:
            scan.skipped.append(refused)
        elif entry.kind == "dir":
            scan.skipped.extend(
                _skip_tree(
                    entry,
                    UNEXPECTED_LAYOUT,
                    "UTKFace is a flat folder; import each part folder on its own",
                )
            )
        elif name_problem(entry.name):
            scan.skipped.append(
                Skip(entry.rel, BAD_FILE_NAME, f"file name {name_problem(entry.name)}")
            )
        else:
            m = _UTK_FILE.match(entry.name)
            if m is None:
                scan.skipped.append(
                    Skip(entry.rel, MALFORMED_NAME, "expected [age]_[gender]_[race]_[date].jpg")
                )
                continue
            age, gender, race = int(m["age"]), int(m["gender"]), int(m["race"])
            problem = (
                f"age {age} above {MAX_AGE}"
                if age > MAX_AGE
                else f"gender {gender} is not 0 (male) or 1 (female)"
                if gender not in UTK_GENDERS
                else f"race {race} is not 0..4"
                if race not in UTK_RACES
                else None
            )
            if problem:
                scan.skipped.append(Skip(entry.rel, MALFORMED_NAME, problem))
                continue
            attrs = {"age": age, "gender": UTK_GENDERS[gender], "group": UTK_RACES[race]}
            scan.items.append(Item(entry.rel, entry.path, f"utkface:{entry.name}", attrs))
    return scan


FAIRFACE_COLUMNS = ("file", "age", "gender", "race")
# "more than 70" is open-ended: its "midpoint" is taken half a decade above the bound.
OPEN_BAND_OFFSET = 5
_BAND = re.compile(r"^(\d+)\s*-\s*(\d+)$")
_OPEN_BAND = re.compile(r"^(?:more than\s*(\d+)|(\d+)\s*\+)$", re.I)


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


@register_format(
    "fairface",
    description="FairFace: label CSV (file,age,gender,race) + the images it lists; one subject "
    "per image",
    file_ok=True,
)
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
        missing = [c for c in FAIRFACE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ImportInputError(
                f"{csv_path.name} lacks the column(s) {', '.join(missing)}; a FairFace label CSV "
                f"has {','.join(FAIRFACE_COLUMNS)},..."
            )
        for row in reader:
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


# ---------------------------------------------------------------------------------------------
# Legal basis
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportBasis:
    """The legal basis recorded for every imported subject.

    ``kind == "consent"``: a consent receipt per subject (Art. 6(1)(a) + 9(2)(a)) holding the
    evidence's SHA-256. ``kind == "legal_basis"``: a ``basis.recorded`` event with the codes.
    """

    kind: Literal["consent", "legal_basis"]
    purposes: tuple[str, ...]
    legal_basis: tuple[str, ...]
    evidence_hash: str | None = None
    notice_version: str = "v1"
    notice_hash: str | None = None

    @classmethod
    def from_options(
        cls,
        *,
        consent_evidence: Path | None = None,
        legal_basis: str | None = None,
        purposes: Sequence[str] | None = None,
        basis_evidence: Path | None = None,
        notice_file: Path | None = None,
        notice_version: str = "v1",
    ) -> ImportBasis:
        """Build the basis from command-line options, refusing when none (or both) is given.

        Raises
        ------
        BasisRequiredError
            Neither or both of ``consent_evidence`` and ``legal_basis``.
        ValueError
            Unknown purposes or basis codes; consent codes given as ``legal_basis``.
        """
        if consent_evidence is None and not legal_basis:
            raise BasisRequiredError(BASIS_REQUIRED)
        if consent_evidence is not None and legal_basis:
            raise BasisRequiredError(BOTH_BASES)
        chosen = check_purposes(purposes or DEFAULT_PURPOSES)
        notice_hash = sha256_text(notice_file.read_bytes()) if notice_file else None
        if consent_evidence is not None:
            return cls(
                kind="consent",
                purposes=chosen,
                legal_basis=CONSENT_BASES,
                evidence_hash=sha256_text(Path(consent_evidence).read_bytes()),
                notice_version=notice_version,
                notice_hash=notice_hash,
            )
        assert legal_basis is not None
        codes = parse_basis(legal_basis)
        if set(codes) & set(CONSENT_BASES):
            raise ValueError(CONSENT_NEEDS_EVIDENCE.format(codes="+".join(codes)))
        return cls(
            kind="legal_basis",
            purposes=chosen,
            legal_basis=codes,
            evidence_hash=sha256_text(basis_evidence.read_bytes()) if basis_evidence else None,
            notice_version=notice_version,
            notice_hash=notice_hash,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "purposes": list(self.purposes),
            "legal_basis": list(self.legal_basis),
            "evidence_hash": self.evidence_hash,
        }


def _record_basis(
    core: PrivacyCore,
    pids: Sequence[str],
    basis: ImportBasis,
    *,
    fmt: str,
    controller: ProjectParams,
) -> None:
    from visage_ml.privacy.consent import ConsentReceipt
    from visage_ml.privacy.ledger import utc_now

    if basis.kind == "consent":
        receipt = ConsentReceipt(
            controller=controller.controller,
            controller_contact=controller.controller_contact,
            purposes=basis.purposes,
            notice_version=basis.notice_version,
            notice_hash=basis.notice_hash or sha256_text(f"notice {basis.notice_version}"),
            collection_method=f"dataset-import:{fmt}",
            given_at=utc_now(),
            evidence_hash=basis.evidence_hash,
        )
        core.give_consents(pids, receipt, snapshot=False)
    else:
        core.record_bases(
            pids,
            purposes=basis.purposes,
            legal_basis=basis.legal_basis,
            evidence_hash=basis.evidence_hash,
            snapshot=False,
        )


# ---------------------------------------------------------------------------------------------
# The import
# ---------------------------------------------------------------------------------------------


@dataclass
class ImportResult:
    """What an import did. ``skipped`` holds file names (for the report file only)."""

    format: str
    source: str
    persons_found: int = 0
    subjects_added: int = 0
    subjects_updated: int = 0
    images_imported: int = 0
    skipped: list[Skip] = field(default_factory=list)
    conversions: Counter[str] = field(default_factory=Counter)
    pairs_written: int | None = None
    pairs_dropped: int | None = None
    pair_files: list[str] = field(default_factory=list)
    dvc_md5: str | None = None
    dvc_error: str | None = None
    report_path: Path | None = None
    basis: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        """Number of files not imported, per reason code."""
        return dict(sorted(Counter(s.reason for s in self.skipped).items()))

    def summary(self) -> dict[str, Any]:
        """Counts only (no file names): safe for logs and ``--json``."""
        return {
            "format": self.format,
            "source": self.source,
            "persons_found": self.persons_found,
            "subjects_added": self.subjects_added,
            "subjects_updated": self.subjects_updated,
            "images_imported": self.images_imported,
            "files_skipped": len(self.skipped),
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
            "dvc_md5": self.dvc_md5,
            "dvc_error": self.dvc_error,
            "report": str(self.report_path) if self.report_path else None,
        }


def _read_untrusted(path: Path) -> bytes:
    """Read a regular file without following a link (raises :class:`_FileRefused`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if os.path.islink(path):
            raise _FileRefused(SYMLINK, "symbolic links are never followed") from None
        raise _FileRefused(UNREADABLE, type(exc).__name__) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _FileRefused(NOT_A_REGULAR_FILE, "not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise _FileRefused(TOO_LARGE, f"{st.st_size} bytes")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            if sum(map(len, chunks)) > MAX_FILE_BYTES:
                raise _FileRefused(TOO_LARGE, "grew while read")
        return b"".join(chunks)
    except OSError as exc:
        raise _FileRefused(UNREADABLE, type(exc).__name__) from None
    finally:
        os.close(fd)


class _FileRefused(Exception):  # noqa: N818 - internal control flow, never escapes
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass
class _Accepted:
    image_id: str
    item: Item
    sha256: str
    source_sha256: str
    width: int
    height: int


def _common(values: list[Any]) -> Any:
    """The value all images agree on, else None (a subject's attribute from its images)."""
    present = {v for v in values if v is not None}
    return present.pop() if len(present) == 1 and None not in values else None


def _duplicate(
    result: ImportResult, item: Item, earlier: str, key_to_image: dict[str, str], what: str
) -> None:
    """Skip a duplicate; a protocol key still resolves to the image stored first."""
    result.skipped.append(Skip(item.rel, DUPLICATE, f"{what} as a file imported before"))
    if item.key:
        key_to_image.setdefault(item.key, earlier)


def _register(
    core: PrivacyCore,
    txn: RawTransaction,
    accepted: Mapping[str, list[_Accepted]],
    *,
    basis: ImportBasis,
    spec: ImportFormat,
    result: ImportResult,
) -> dict[str, str]:
    """Register the persons of ``accepted``, place their images, add the table rows.

    A person who is a known subject and has withdrawn consent, objected, or is restricted or
    being erased gets no new images (``subject_rights``). Returns image id -> pid of what was
    placed.
    """
    from visage_ml.privacy.core import NewSubject

    if not accepted:
        return {}
    refs = list(accepted)
    before = set(core.registry.states())
    pids = core.add_subjects(
        [NewSubject(external_ref=ref) for ref in refs], source=spec.source, snapshot=False
    )
    states = core.registry.states()
    placed: dict[str, str] = {}
    subject_rows, image_rows = [], []
    for ref, pid in zip(refs, pids, strict=True):
        accs = accepted[ref]
        if pid in before:
            reasons = {states[pid].decision(p).reason for p in basis.purposes}
            blocked = sorted(reasons & _BLOCKING_STATES)
            if blocked:
                for acc in accs:
                    txn.drop(acc.image_id)
                    result.skipped.append(Skip(acc.item.rel, SUBJECT_RIGHTS, blocked[0]))
                continue
            result.subjects_updated += 1
        else:
            result.subjects_added += 1
        for acc in accs:
            txn.place(acc.image_id, pid)
            placed[acc.image_id] = pid
            attrs = {k: acc.item.attrs.get(k) for k in ("age", "age_band", "gender", "group")}
            image_rows.append(
                {
                    "pid": pid,
                    "image_id": acc.image_id,
                    "sha256": acc.sha256,
                    "source_sha256": acc.source_sha256,
                    "width": acc.width,
                    "height": acc.height,
                    **attrs,
                }
            )
        common = {
            k: _common([a.item.attrs.get(k) for a in accs]) for k in ("age", "gender", "group")
        }
        subject_rows.append({"pid": pid, "source": spec.source, **common})
    txn.add_subjects(subject_rows)
    txn.add_images(image_rows)
    result.images_imported = len(image_rows)
    return placed


def import_dataset(
    fmt: str,
    root: str | os.PathLike[str],
    *,
    paths: ProjectPaths,
    basis: ImportBasis,
    pairs: Sequence[Path] = (),
    params: Params | None = None,
    core: PrivacyCore | None = None,
    progress: bool = False,
) -> ImportResult:
    """Import the data set at ``root`` in format ``fmt`` into ``data/raw``.

    Parameters
    ----------
    fmt
        A name in :data:`FORMATS`.
    root
        The data set's folder (for ``fairface`` also a label CSV).
    paths
        The project.
    basis
        The legal basis recorded for every subject (:meth:`ImportBasis.from_options`).
    pairs
        LFW pairs files (default: ``pairs*.txt`` found next to the images).
    params
        The project's params (read from ``params.yaml`` when None); ``serving.max_image_pixels``
        bounds the pixels of an image, ``project`` names the controller in consent receipts.
    core
        The privacy core to register subjects with (opened when None).
    progress
        Show a progress bar on stderr.

    Returns
    -------
    ImportResult
        Counts, skipped files with reasons, the DVC md5 and the path of the per-file report.

    Raises
    ------
    ImportInputError
        The data set as a whole cannot be read (missing folder, bad CSV header, bad pairs file).
    """
    from tqdm import tqdm

    from visage_ml.config import load_params
    from visage_ml.data.imagecheck import ImageRejectedError, check_image
    from visage_ml.data.rawstore import RawStore
    from visage_ml.privacy.core import PrivacyCore

    spec = get_format(fmt)
    root = Path(root)
    if pairs and not spec.takes_pairs:
        raise ImportInputError(PAIRS_NOT_LFW)
    if not root.exists():
        raise ImportInputError(NO_PATH.format(path=root))
    if not root.is_dir() and not spec.file_ok:
        raise ImportInputError(NOT_A_FOLDER.format(path=root, fmt=fmt))
    params = params or load_params(paths.params)
    core = core or PrivacyCore(paths)
    core.vault  # noqa: B018 - opens the master key now: a key problem stops before any work
    started = datetime.now(UTC)
    scan = spec.scan(root, ScanOptions(pairs=tuple(Path(p) for p in pairs)))
    if not scan.items and not scan.skipped:
        raise ImportInputError(NOTHING_FOUND.format(path=root, fmt=fmt))
    result = ImportResult(format=fmt, source=spec.source, basis=basis.to_dict())
    result.skipped.extend(scan.skipped)
    result.persons_found = len({it.ref for it in scan.items})
    max_pixels = params.serving.max_image_pixels
    log.info("import %s: %d candidate files", fmt, len(scan.items))

    store = RawStore(paths, core=core)
    key_to_image: dict[str, str] = {}
    with store.transaction() as txn:
        existing = txn.images
        valid_ids = set(existing["image_id"].astype(str))
        known = existing.dropna(subset=["source_sha256"])
        by_source = dict(
            zip(known["source_sha256"].astype(str), known["image_id"].astype(str), strict=True)
        )
        by_pixels = dict(
            zip(existing["sha256"].astype(str), existing["image_id"].astype(str), strict=True)
        )
        accepted: dict[str, list[_Accepted]] = {}
        bar = tqdm(scan.items, desc=f"import {fmt}", unit="file", disable=not progress)
        for item in bar:
            try:
                data = _read_untrusted(item.path)
            except _FileRefused as refused:
                result.skipped.append(Skip(item.rel, refused.reason, refused.detail))
                continue
            source_sha = sha256_bytes(data)
            earlier = by_source.get(source_sha)
            if earlier is not None:
                _duplicate(result, item, earlier, key_to_image, "same bytes")
                continue
            try:
                checked = check_image(data, max_pixels=max_pixels)
            except ImageRejectedError as exc:
                result.skipped.append(Skip(item.rel, exc.reason, exc.detail))
                continue
            earlier = by_pixels.get(checked.sha256)
            if earlier is not None:
                _duplicate(result, item, earlier, key_to_image, "same pixels")
                continue
            image_id = txn.stage(checked.png)
            by_source[source_sha] = by_pixels[checked.sha256] = image_id
            result.conversions.update(checked.conversions)
            accepted.setdefault(item.ref, []).append(
                _Accepted(image_id, item, checked.sha256, source_sha, checked.width, checked.height)
            )
            if item.key:
                key_to_image[item.key] = image_id

        registered = _register(core, txn, accepted, basis=basis, spec=spec, result=result)
        faults.crash_point("import:registered")
        valid_ids.update(registered)
        if registered:
            # Before the swap: a crash after it never leaves data without a recorded basis.
            _record_basis(
                core,
                list(dict.fromkeys(registered.values())),
                basis,
                fmt=fmt,
                controller=params.project,
            )
            faults.crash_point("import:basis-recorded")
        else:
            txn.discard()
    result.dvc_md5, result.dvc_error = txn.dvc_md5, txn.dvc_error
    if scan.pairs:
        result.pair_files = scan.pair_files
        result.pairs_written, result.pairs_dropped = write_lfw_protocol(
            paths, scan.pairs, key_to_image, valid_ids
        )
    result.report_path = _write_report(paths, result, root=root, started=started)
    log.info(
        "import %s: %d images of %d subjects (%d added, %d updated); %d files skipped",
        fmt,
        result.images_imported,
        result.subjects_added + result.subjects_updated,
        result.subjects_added,
        result.subjects_updated,
        len(result.skipped),
    )
    return result


def write_lfw_protocol(
    paths: ProjectPaths,
    pairs: Sequence[PairSpec],
    key_to_image: Mapping[str, str],
    valid_ids: set[str],
) -> tuple[int, int]:
    """Write ``data/protocols/lfw_pairs.parquet``; return (pairs written, pairs dropped).

    Pairs whose images were not imported are dropped. Folds present in ``pairs`` replace the
    same folds of an existing protocol file; other folds are kept. Then ``dvc add`` the folder
    (a warning outside a DVC repository).
    """
    import pandas as pd

    from visage_ml import dvcops
    from visage_ml.io import atomic_write_bytes

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
    new = new.astype(
        {"fold": "int32", "image_id_a": "string", "image_id_b": "string", "same": "bool"}
    ).astype({"view": "string"})
    buf = io.BytesIO()
    new.to_parquet(buf, index=False)
    atomic_write_bytes(target, buf.getvalue())
    dvcops.track(paths.root, paths.protocols)
    return len(rows), dropped


def _write_report(
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
    }
    atomic_write_text(target, json.dumps(doc, indent=2, ensure_ascii=False) + "\n", mode=0o600)
    return target
