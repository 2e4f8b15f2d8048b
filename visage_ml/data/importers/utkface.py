"""The ``utkface`` format: a flat folder of ``[age]_[gender]_[race]_[datetime].jpg[.chip.jpg]``.

UTKFace has no identities, so every image is a subject of its own. It publishes each photograph
twice, in the wild (``X.jpg``) and aligned and cropped (``X.jpg.chip.jpg``): different bytes
and pixels of one person, so each names the other as an alias and an erased subject does not
come back through the other copy.
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

UTK_RACES: dict[int, str] = {0: "white", 1: "black", 2: "asian", 3: "indian", 4: "others"}
UTK_GENDERS: dict[int, str] = {0: "male", 1: "female"}
_UTK_FILE = re.compile(
    r"^(?P<stem>(?P<age>\d+)_(?P<gender>\d+)_(?P<race>\d+)_(?P<when>\d+))\.(jpe?g|png)"
    r"(\.chip\.jpe?g)?$",
    re.I,
)


def scan_utkface(root: Path, options: ScanOptions) -> Scan:
    """UTKFace: labels from each file name; no identities, so one subject per image."""
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
            copies = (f"{m['stem']}.jpg", f"{m['stem']}.jpg.chip.jpg")
            aliases = tuple(f"utkface:{c}" for c in copies if c != entry.name)
            scan.items.append(
                Item(entry.rel, entry.path, f"utkface:{entry.name}", attrs, aliases=aliases)
            )
    return scan


FORMAT = ImportFormat(
    name="utkface",
    scan=scan_utkface,
    description="UTKFace: flat folder of <age>_<gender>_<race>_<datetime>.jpg(.chip.jpg); "
    "one subject per image",
)
