"""Import face data sets that teams already hold into ``data/raw``, pseudonymising every person.

A format is a scanner in :data:`FORMATS` (one module per format: :mod:`.imagefolder`,
:mod:`.lfw`, :mod:`.utkface`, :mod:`.fairface`): it walks the data set's tree (or reads its
label file) and returns :class:`Item` s, one per image, each naming the person by an external
reference (``"lfw:<Name>"``, ``"utkface:<photograph>.jpg"``, ...) and carrying the attributes the
format gives per image. :func:`import_dataset` then, for every item:

1. reads the file without following links (symbolic links are refused, never followed);
2. skips it as a duplicate when its bytes (or its decoded pixels) were imported before;
3. validates and re-encodes it (:func:`visage_ml.data.imagecheck.check_image`) into a staging
   area of a :class:`~visage_ml.data.rawstore.RawStore` transaction;

and once every file is processed registers the persons with at least one accepted image in the
privacy core (the external reference goes to the encrypted identity vault only; a person already
in the vault keeps their pid), records consent or another legal basis for each, seals the files
under each subject's data key as ``data/raw/<pid>/<image_id>.sealed`` and swaps the new
``data/raw`` in atomically. LFW pairs files become ``data/protocols/lfw_pairs.parquet``, written
after the swap while the ``data/raw`` lock is still held, so that the pairs name only images that
``data/raw`` holds (an erasure or a second import waits for both); an erasure removes the pairs
that name the subject's images, under the same lock. A
person whose external reference, or any of whose files, matches the keyed tombstone of an
erased subject is skipped (``erased_subject``, counted in the report and never listed by path:
the path names the person). References that differ only by case, spaces or
Unicode form (NFC and NFD, full-width letters, zero-width characters:
:func:`~visage_ml.privacy.tombstones.normalise_ref`) are one person, for the tombstones and
within an import (one pid, registered under the first spelling found).

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
                 subject per photograph (UTKFace has no identities), two images when both
                 copies (in the wild and aligned) are imported.
``fairface``     a label CSV (``file,age,gender,race,...``; PATH is the CSV or the folder holding
                 the CSVs) and the images it references, relative to the CSV's folder; one
                 subject per image.

Roles
-----
Every import carries a role, recorded per subject (``subjects.parquet`` column ``role``):
``training`` (train/val only), ``evaluation`` (test only) or ``both``. A data set that brings a
protocol (LFW pairs) is ``evaluation`` by default, so the benchmark never leaks into training;
other data sets are ``both``. ``prepare`` splits by role
(:func:`visage_ml.data.manifest.assign_splits`).

LFW protocol folds
------------------
``pairs.txt`` (View 2) gives folds ``0..9``; ``pairsDevTest.txt`` fold ``-1`` and
``pairsDevTrain.txt`` fold ``-2`` (View 1). The ``view`` column says which: ``view2``,
``dev_test``, ``dev_train``. A new import replaces the rows of the folds it brings and keeps the
others. Consumers computing the 10-fold accuracy use ``fold >= 0`` only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from visage_ml import faults
from visage_ml.config import Params, ProjectPaths, load_params
from visage_ml.data import imagecheck
from visage_ml.data.imagecheck import ImageRejectedError
from visage_ml.data.importers import fairface, imagefolder, lfw, utkface
from visage_ml.data.importers.basis import ImportBasis, record_basis
from visage_ml.data.importers.common import (
    DEFAULT_PURPOSES,
    DUPLICATE,
    NO_PATH,
    NOT_A_FOLDER,
    NOTHING_FOUND,
    PAIRS_NOT_LFW,
    REASON_TEXT,
    UNKNOWN_FORMAT,
    BasisRequiredError,
    ImportFormat,
    ImportInputError,
    Item,
    PairSpec,
    Scan,
    ScanOptions,
    Skip,
)
from visage_ml.data.importers.fairface import band_midpoint, snake_case
from visage_ml.data.importers.ingest import (
    Accepted,
    ErasedFilter,
    FileRefused,
    read_untrusted,
    register_persons,
)
from visage_ml.data.importers.lfw import parse_lfw_pairs
from visage_ml.data.importers.result import (
    ImportResult,
    drop_lfw_pairs,
    lfw_pairs_file,
    lfw_pairs_naming,
    write_lfw_protocol,
    write_report,
)
from visage_ml.data.manifest import ROLE_BOTH, ROLE_EVALUATION, ROLES, check_role
from visage_ml.data.rawstore import RawStore
from visage_ml.io import sha256_bytes
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.tombstones import normalise_ref

__all__ = [
    "DEFAULT_PURPOSES",
    "FORMATS",
    "REASON_TEXT",
    "ROLES",
    "BasisRequiredError",
    "ImportBasis",
    "ImportFormat",
    "ImportInputError",
    "ImportResult",
    "Item",
    "PairSpec",
    "Scan",
    "ScanOptions",
    "Skip",
    "band_midpoint",
    "default_role",
    "drop_lfw_pairs",
    "get_format",
    "import_dataset",
    "lfw_pairs_file",
    "lfw_pairs_naming",
    "parse_lfw_pairs",
    "register_format",
    "snake_case",
    "write_lfw_protocol",
]

log = logging.getLogger(__name__)

# The registry: format name -> format. A new format is a module holding a scanner and its
# FORMAT, listed here (or added at run time with register_format).
FORMATS: dict[str, ImportFormat] = {
    f.name: f for f in (imagefolder.FORMAT, lfw.FORMAT, utkface.FORMAT, fairface.FORMAT)
}


def register_format(fmt: ImportFormat) -> ImportFormat:
    """Add ``fmt`` to :data:`FORMATS` under its name (``ValueError`` when the name is taken)."""
    if fmt.name in FORMATS:
        raise ValueError(f"import format '{fmt.name}' is registered twice")
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> ImportFormat:
    """The registered format ``name`` (``ValueError`` listing the known ones otherwise)."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(UNKNOWN_FORMAT.format(name=name, known=", ".join(FORMATS))) from None


def _duplicate(
    result: ImportResult, item: Item, earlier: str, key_to_image: dict[str, str], what: str
) -> None:
    """Skip a duplicate; a protocol key still resolves to the image stored first."""
    result.skipped.append(Skip(item.rel, DUPLICATE, f"{what} as a file imported before"))
    if item.key:
        key_to_image.setdefault(item.key, earlier)


def _write_pairs(
    paths: ProjectPaths,
    scan: Scan,
    result: ImportResult,
    key_to_image: dict[str, str],
    valid_ids: set[str],
) -> None:
    """The LFW pairs table; called with the ``data/raw`` lock held (see :func:`import_dataset`)."""
    result.pair_files = scan.pair_files
    # Looked up at call time: a test replaces it to act between the commit and the write.
    result.pairs_written, result.pairs_dropped = write_lfw_protocol(
        paths, scan.pairs, key_to_image=key_to_image, valid_ids=valid_ids
    )


def default_role(scan: Scan) -> str:
    """``evaluation`` for a data set that brings protocol pairs (a benchmark), else ``both``."""
    return ROLE_EVALUATION if scan.pairs else ROLE_BOTH


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
    role: str | None = None,
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
    role
        What the subjects may be used for: ``training``, ``evaluation`` or ``both``
        (:data:`ROLES`); None: :func:`default_role` (``evaluation`` when the data set brings
        protocol pairs). Recorded per new subject.

    Returns
    -------
    ImportResult
        Counts, skipped files with reasons, the DVC md5 and the path of the per-file report.

    Raises
    ------
    ImportInputError
        The data set as a whole cannot be read (missing folder, bad CSV header, bad pairs file).
    """

    spec = get_format(fmt)
    if role is not None:
        check_role(role)
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
    role = role or default_role(scan)
    result = ImportResult(format=fmt, source=spec.source, basis=basis.to_dict(), role=role)
    result.skipped.extend(scan.skipped)
    # One person, one pid: spellings that compare equal are the first one found.
    persons: dict[str, str] = {}
    for it in scan.items:
        persons.setdefault(normalise_ref(it.ref), it.ref)
    result.persons_found = len(persons)
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
        accepted: dict[str, list[Accepted]] = {}
        # Keyed tombstones of erased subjects: they never come back under a new pid.
        erased = ErasedFilter(core.tombstones)
        bar = tqdm(scan.items, desc=f"import {fmt}", unit="file", disable=not progress)
        for item in bar:
            ref = persons[normalise_ref(item.ref)]
            if erased.person(ref, item.aliases):
                erased.skip(result)
                continue
            try:
                data = read_untrusted(item.path)
            except FileRefused as refused:
                result.skipped.append(Skip(item.rel, refused.reason, refused.detail))
                continue
            source_sha = sha256_bytes(data)
            if erased.file(ref, source_sha):
                erased.skip(result)
                continue
            earlier = by_source.get(source_sha)
            if earlier is not None:
                _duplicate(result, item, earlier, key_to_image, "same bytes")
                continue
            try:
                # Through the module: tests replace imagecheck.check_image to inject a failure.
                checked = imagecheck.check_image(data, max_pixels=max_pixels)
            except ImageRejectedError as exc:
                result.skipped.append(Skip(item.rel, exc.reason, exc.detail))
                continue
            if erased.file(ref, checked.sha256):
                erased.skip(result)
                continue
            earlier = by_pixels.get(checked.sha256)
            if earlier is not None:
                _duplicate(result, item, earlier, key_to_image, "same pixels")
                continue
            image_id = txn.stage(checked.png)
            by_source[source_sha] = by_pixels[checked.sha256] = image_id
            result.conversions.update(checked.conversions)
            accepted.setdefault(ref, []).append(
                Accepted(
                    image_id,
                    item,
                    checked.sha256,
                    source_sha,
                    checked.width,
                    checked.height,
                    source_size=len(data),
                )
            )
            if item.key:
                key_to_image[item.key] = image_id

        erased.drop_accepted(txn, accepted, result, key_to_image)
        registered = register_persons(
            core, txn, accepted, basis=basis, spec=spec, result=result, role=role
        )
        faults.crash_point("import:registered")
        valid_ids.update(registered)
        if scan.pairs:
            # After the swap, under the data/raw lock: no erasure or other import can change
            # data/raw between the commit and the pairs naming its images.
            txn.then(lambda: _write_pairs(paths, scan, result, key_to_image, valid_ids))
        if registered:
            # Before the swap: a crash after it never leaves data without a recorded basis.
            record_basis(
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
    result.report_path = write_report(paths, result, root=root, started=started)
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
