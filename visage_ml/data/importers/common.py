"""What every import format shares: reason codes, messages, scan results, the untrusted tree walk.

A scanner (one module per format) walks a data set's tree with :func:`list_folder`,
:func:`person_folders` and :func:`skip_tree`, which never follow a link and refuse special
files and bad names, and returns a :class:`Scan`: the :class:`Item` s to try and the
:class:`Skip` s refused up front.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DEFAULT_PURPOSES: tuple[str, ...] = ("training", "evaluation")
MAX_FILE_BYTES = 256 * 1024 * 1024  # no face photograph comes near; larger files are refused
IMPORTS_DIR = "imports"  # under privacy/: the per-file reports
PROTOCOL_FILE = "lfw_pairs.parquet"
MAX_AGE = 120

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
ERASED_SUBJECT = "erased_subject"

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
    ERASED_SUBJECT: "the person, or this file, belonged to a subject who was erased (a keyed "
    "tombstone matched their reference or the file's SHA-256)",
    SUBJECT_RIGHTS: "the person is a known subject who withdrew consent, objected, or whose "
    "processing is restricted or being erased",
}

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
    ``group``, ``key`` the image's name in a protocol file (LFW ``"<Name>/<n>"``),
    ``aliases`` other references the same person may have been recorded under (UTKFace's
    per-file names from before one subject per photograph), asked of the tombstones and the
    vault, never recorded.
    """

    rel: str
    path: Path
    ref: str
    attrs: Mapping[str, Any] = field(default_factory=dict)
    key: str | None = None
    aliases: tuple[str, ...] = ()


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
    """A format: its scanner and how it is described (registered in ``importers.FORMATS``)."""

    name: str
    scan: Scanner
    description: str
    takes_pairs: bool = False
    file_ok: bool = False  # PATH may be a file (a label CSV)

    @property
    def source(self) -> str:
        """The ``source`` recorded for its subjects: ``import:<name>``."""
        return f"import:{self.name}"


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
class Entry:
    """A folder entry as listed, never followed: its name, path, path in the tree and kind."""

    name: str
    path: Path
    rel: str
    kind: Literal["dir", "file", "symlink", "other"]


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def list_folder(folder: Path, rel: str) -> list[Entry]:
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
            out.append(Entry(e.name, Path(e.path), _join(rel, printable(e.name)), kind))
    return sorted(out, key=lambda e: os.fsencode(e.name))


def refusal(entry: Entry) -> Skip | None:
    """Links and special files are refused wherever they are."""
    if entry.kind == "symlink":
        return Skip(entry.rel, SYMLINK, "symbolic links are never followed")
    if entry.kind == "other":
        return Skip(entry.rel, NOT_A_REGULAR_FILE, "device, pipe or socket")
    return None


def skip_tree(entry: Entry, reason: str, detail: str) -> Iterator[Skip]:
    """A Skip for ``entry`` or, for a folder, for every file below it (iterative: any depth)."""
    stack = [entry]
    while stack:
        current = stack.pop()
        refused = refusal(current)
        if refused is not None:
            yield refused
        elif current.kind == "file":
            yield Skip(current.rel, reason, detail)
        else:
            try:
                children = list_folder(current.path, current.rel)
            except OSError:
                yield Skip(current.rel + "/", UNREADABLE, "folder cannot be listed")
                continue
            stack.extend(reversed(children))


def person_folders(
    root: Path, scan: Scan, *, ignore_file: Callable[[str], bool] = lambda name: False
) -> Iterator[tuple[Entry, list[Entry]]]:
    """``root/<person>/<file>`` walk shared by ``imagefolder`` and ``lfw``.

    Yields each person folder with its files; refuses top-level files, nested folders, hidden
    folders, links and bad names into ``scan.skipped``.
    """
    for top in list_folder(root, ""):
        refused = refusal(top)
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
                skip_tree(top, BAD_FILE_NAME, f"folder name {name_problem(top.name)}")
            )
        elif top.name.startswith("."):
            scan.skipped.extend(skip_tree(top, UNEXPECTED_LAYOUT, "inside a hidden folder"))
        else:
            files: list[Entry] = []
            try:
                children = list_folder(top.path, top.rel)
            except OSError:
                scan.skipped.append(Skip(top.rel + "/", UNREADABLE, "folder cannot be listed"))
                continue
            for child in children:
                refused = refusal(child)
                if refused is not None:
                    scan.skipped.append(refused)
                elif child.kind == "dir":
                    scan.skipped.extend(
                        skip_tree(child, UNEXPECTED_LAYOUT, "deeper than <person>/<image>")
                    )
                elif name_problem(child.name):
                    scan.skipped.append(
                        Skip(child.rel, BAD_FILE_NAME, f"file name {name_problem(child.name)}")
                    )
                else:
                    files.append(child)
            yield top, files
