"""The ``utkface`` format: a flat folder of ``[age]_[gender]_[race]_[datetime].jpg[.chip.jpg]``.

UTKFace has no identities, so every photograph is a subject of its own: one subject per
photograph, two images when both copies are imported. UTKFace publishes each photograph twice,
in the wild (``X.jpg``, its own folder) and aligned and cropped (``X.jpg.chip.jpg``, the
``UTKFace`` folder): different bytes and pixels of one person. Both copies carry the
photograph's reference ``utkface:X.jpg``, whether imported one folder each or together, so
splits made per pid never put one face in training and in test.

The per-file names (``utkface:X.jpg.chip.jpg``, a ``.png`` copy's own name) are aliases, asked
of the vault and of the tombstones: a subject recorded under one of them by an import that made
one subject per file keeps their pid, and an erased subject comes back through neither copy.
"""

from __future__ import annotations

import re
from pathlib import Path

from visage_ml.data.importers.common import (
    BAD_FILE_NAME,
    MALFORMED_NAME,
    MAX_AGE,
    UNEXPECTED_LAYOUT,
    ImportFormat,
    Item,
    Scan,
    ScanOptions,
    Skip,
    list_folder,
    name_problem,
    refusal,
    skip_tree,
)
from visage_ml.privacy.tombstones import normalise_ref

UTK_RACES: dict[int, str] = {0: "white", 1: "black", 2: "asian", 3: "indian", 4: "others"}
UTK_GENDERS: dict[int, str] = {0: "male", 1: "female"}
_UTK_FILE = re.compile(
    r"^(?P<stem>(?P<age>\d+)_(?P<gender>\d+)_(?P<race>\d+)_(?P<when>\d+))\.(jpe?g|png)"
    r"(\.chip\.jpe?g)?$",
    re.I,
)


def photograph_ref(stem: str) -> str:
    """The reference of the person in photograph ``stem`` (``[age]_[gender]_[race]_[datetime]``):
    its published in-the-wild file name, the same for both copies."""
    return f"utkface:{stem}.jpg"


def file_refs(name: str) -> tuple[str, ...]:
    """The reference of the person a UTKFace file name shows (either copy's name), if it is one:
    what a report line about the file names."""
    m = _UTK_FILE.match(name)
    return (photograph_ref(m["stem"]),) if m else ()


def _aliases(m: re.Match[str]) -> tuple[str, ...]:
    """The per-file references earlier imports recorded this person under: both published file
    names and this file's own (a ``.jpeg`` or ``.png`` copy), without the photograph's."""
    names = (f"{m['stem']}.jpg", f"{m['stem']}.jpg.chip.jpg", m.string)
    canonical = normalise_ref(photograph_ref(m["stem"]))
    out: dict[str, str] = {}
    for ref in (f"utkface:{n}" for n in names):
        if normalise_ref(ref) != canonical:
            out.setdefault(normalise_ref(ref), ref)
    return tuple(out.values())


def scan_utkface(root: Path, options: ScanOptions) -> Scan:
    """UTKFace: labels from each file name; no identities, so one subject per photograph (both
    copies of ``X`` have the reference ``utkface:X.jpg``, the per-file names as aliases)."""
    scan = Scan()
    for entry in list_folder(root, ""):
        refused = refusal(entry)
        if refused is not None:
            scan.skipped.append(refused)
        elif entry.kind == "dir":
            scan.skipped.extend(
                skip_tree(
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
            scan.items.append(
                Item(entry.rel, entry.path, photograph_ref(m["stem"]), attrs, aliases=_aliases(m))
            )
    return scan


FORMAT = ImportFormat(
    name="utkface",
    scan=scan_utkface,
    description="UTKFace: flat folder of <age>_<gender>_<race>_<datetime>.jpg(.chip.jpg); "
    "one subject per photograph, two images when both copies are imported",
)
