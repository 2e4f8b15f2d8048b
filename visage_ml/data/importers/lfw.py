"""The ``lfw`` format: Labeled Faces in the Wild, ``lfw/<Name>/<Name>_0001.jpg``, and its pairs.

PATH is the folder holding ``lfw/`` or the folder holding the names. The pairs files
(``pairs.txt``, ``pairsDevTest.txt``, ``pairsDevTrain.txt``) are found next to the images or
given with ``--pairs``; the import writes them to ``data/protocols/lfw_pairs.parquet``. One found
next to the images that is a symbolic link stops the import (links in a data set are never
followed; ``--pairs`` names a file on purpose).

Protocol folds: ``pairs.txt`` (View 2) gives folds ``0..9``; ``pairsDevTest.txt`` fold ``-1``
and ``pairsDevTrain.txt`` fold ``-2`` (View 1). The ``view`` column says which: ``view2``,
``dev_test``, ``dev_train``.
"""

from __future__ import annotations

import re
from pathlib import Path

from visage_ml.data.importers.common import (
    UNEXPECTED_LAYOUT,
    ImportFormat,
    ImportInputError,
    Item,
    PairSpec,
    Scan,
    ScanOptions,
    Skip,
    person_folders,
)

_LFW_META = re.compile(r"^(pairs.*|people.*|lfw-names|readme.*)\.txt$|^readme.*$", re.I)
_LFW_FILE = re.compile(r"^(?P<name>.+)_(?P<num>\d{4})\.(jpe?g|png)$", re.I)
_PAIRS_NAMES = ("pairs.txt", "pairsDevTest.txt", "pairsDevTrain.txt")
# ASCII digits, few of them: ``str.isdigit`` takes '²' (which int() refuses), int() of thousands
# of digits raises, and a header announcing 10^11 folds had its fold list exhaust memory. LFW's
# counts and image numbers have at most four digits.
_NUMBER = re.compile(r"[0-9]{1,6}")
PAIRS_LINK = (
    "{name} next to the images is a symbolic link; links in a data set are never followed. "
    "Pass the pairs file you mean with --pairs FILE"
)


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None


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
    if not header or len(header) > 2 or not all(_is_number(h) for h in header):
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
            if len(parts) != expected or not (_is_number(parts[1]) and _is_number(parts[-1])):
                kind = "name number number" if same else "name number name number"
                raise ImportInputError(f"{path.name} line {lineno}: expected '{kind}'")
            if same:
                a, b = f"{parts[0]}/{int(parts[1])}", f"{parts[0]}/{int(parts[2])}"
            else:
                a, b = f"{parts[0]}/{int(parts[1])}", f"{parts[2]}/{int(parts[3])}"
            pairs.append(PairSpec(fold, a, b, same, view))
    return pairs


def scan_lfw(root: Path, options: ScanOptions) -> Scan:
    """LFW: person folders of ``<Name>_NNNN.jpg`` files, and its pairs files."""
    images_root = _lfw_images_root(root)
    scan = Scan()
    for person, files in person_folders(
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
            for found in pair_files:
                if found.is_symlink():
                    # Not skipped: without its pairs a benchmark would be imported for training.
                    raise ImportInputError(PAIRS_LINK.format(name=found.name))
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


FORMAT = ImportFormat(
    name="lfw",
    scan=scan_lfw,
    description="Labeled Faces in the Wild: lfw/<Name>/<Name>_0001.jpg (+ pairs*.txt → "
    "data/protocols/lfw_pairs.parquet)",
    takes_pairs=True,
)
