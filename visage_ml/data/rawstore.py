"""The one writer of ``data/raw``: a transaction that stages a new tree and swaps it in atomically.

Layout of ``data/raw`` (the contract shared by acquisition, ``prepare`` and erasure)::

    data/raw/<pid>/<image_id>.sealed  an 8-bit RGB PNG without metadata, sealed (AES-256-GCM)
                                      under the subject's data key, pid and image id bound as
                                      associated data (:meth:`DataKeys.seal_raw`); image_id =
                                      "i" + 12 hex. Folders 0700, files 0600.
    data/raw/subjects.parquet         one row per subject
    data/raw/images.parquet           one row per image

``subjects.parquet`` (:data:`SUBJECTS_SCHEMA`)

=========  ===========  ============================================================
column     arrow type   meaning
=========  ===========  ============================================================
pid        string       pseudonymous subject id (``p`` + 16 hex), the only subject key
age        int16, null  age in years (a band's midpoint where only a band is known)
gender     string, null ``"female"`` or ``"male"``
group      string, null the data set's demographic group label (SynthFaces ``g1``..``g4``;
                        UTKFace / FairFace race labels in snake_case)
n_images   int64        images of the subject in ``data/raw``
source     string       where the subject came from: ``synthfaces``, ``import:<format>``
=========  ===========  ============================================================

``images.parquet`` (:data:`IMAGES_SCHEMA`)

=============  ===========  ========================================================
column         arrow type   meaning
=============  ===========  ========================================================
pid            string       the subject (a row of ``subjects.parquet``)
image_id       string       file ``<pid>/<image_id>.sealed``; unique in the table
sha256         string       SHA-256 of the image's PNG bytes (the sealed file's plaintext)
source_sha256  string, null SHA-256 of the original file's bytes (duplicate detection
                            across imports); null for images made here (SynthFaces)
source_size    int64, null  the original file's size in bytes, so that an erasure's scans
                            read only files of a size its source has; null for images made
                            here, and for those an earlier version imported
width          int32        pixels
height         int32        pixels
age            int16, null  per-image age where the source gives one
age_band       string, null per-image age band as the source states it (FairFace
                            ``20-29``, ``more than 70``)
gender         string, null per-image gender where the source gives one
group          string, null per-image group label where the source gives one
=============  ===========  ========================================================

Writers may add columns of their own; a merge keeps them (null for rows that lack them).
Neither table holds image bytes: they stay in clear, and DVC tracks and pushes only ciphertext.

Sealing: every image enters ``data/raw`` sealed under its subject's data key
(:class:`~visage_ml.privacy.datakeys.DataKeys`, ``privacy/keys/<pid>.key``). An image staged
before its subject's pid is known (an import registers persons last) is sealed under a key
that lives only in the transaction's memory and re-sealed under the subject's key when placed,
so even a crashed transaction's staging folder holds nothing readable. Readers decrypt in
memory (:meth:`RawStore.read_image`); a plaintext image found in ``data/raw`` is refused
(:data:`MSG_PLAINTEXT`, converted by ``visage privacy seal``).

Transactions (:meth:`RawStore.transaction`) take the exclusive lock
``.visage/locks/raw.lock``; anything else that changes ``data/raw`` (erasure) must take it too.
A file outside ``data/raw`` that names its images is written by a callback of the transaction
(:meth:`RawTransaction.then`), which runs after the swap, still under the lock.
A transaction builds ``data/raw.staging-<token>/`` holding hard links (copies where the file
system refuses links) of every existing file plus the new files and the merged tables, fsyncs it,
then swaps with two renames: ``data/raw`` -> ``data/raw.old-<token>``, staging -> ``data/raw``,
and removes the old tree. Existing files are never written through their links (tables are
replaced by rename), so until the first rename ``data/raw`` is byte-for-byte untouched: any
exception before the swap only removes the staging folder. After the swap the store runs
``dvc add data/raw`` (a warning outside a DVC repository) and refreshes the consent snapshot.

A transaction does not begin where a table is not there though rows are expected in it
(:func:`check_tables`: the other table is there, DVC tracks ``data/raw``, or ``data/raw`` holds
subjects' folders; ``dvc checkout data/raw`` not run, or cut short): it would read the table as
empty and write both back with its own rows alone, and the next ``dvc add`` would make every
other subject's rows gone from the current version. :class:`RawDataMissingError` says to run
``dvc checkout data/raw``, or ``dvc fetch data/raw`` first where the DVC cache lacks an object
the checkout needs (:func:`uncached_shown`: the checkout would take the whole folder out of the
workspace); nothing is staged. A new project (no ``data/raw``, or an empty one
DVC does not track) has nothing to lose: its first transaction writes both tables.
Nor does it begin where both tables are there but photographs they list are not, though DVC's
record of ``data/raw`` holds them (:func:`check_images`: a checkout cut short, or run for some
files): the next ``dvc add`` would record a version without them, and ``dvc checkout`` would
bring them back no more. Photographs that nothing can bring back (DVC does not track
``data/raw``, or its record lacks them) stop nothing; a warning counts them. Nor, where the
record's listing is not in the DVC cache, where ``data/raw`` is not shown to be what the record
holds (:func:`check_recorded`): a file it holds that no table lists, not here, would be gone
from the next version too.

Recovery rule, applied under the lock when a transaction starts (:meth:`RawStore.recover`):

- ``data/raw`` is missing and ``data/raw.old-<t>`` exists: a crash fell between the two renames.
  The first rename happens only after ``raw.staging-<t>`` is complete and fsynced, so when that
  staging folder exists it is renamed to ``data/raw`` (roll forward: the ledger events of the
  transaction were already written); otherwise ``raw.old-<t>`` is renamed back (roll back).
- Then every remaining ``data/raw.staging-*`` (a transaction that never swapped) and
  ``data/raw.old-*`` (a swap whose clean-up did not finish) is deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from visage_ml import dvcops, faults
from visage_ml.config import GENDERS, ProjectPaths
from visage_ml.data.manifest import parquet_names
from visage_ml.io import atomic_write_bytes, file_lock, fsync_dir, version_nonce
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.datakeys import SUFFIX as SEALED_SUFFIX
from visage_ml.privacy.datakeys import DataKeys
from visage_ml.privacy.keys import PID_RE, check_pid
from visage_ml.privacy.sealed import open_sealed, seal

log = logging.getLogger(__name__)

# The schema metadata key of a table version's randomness (:func:`parquet_bytes`).
NONCE_META = b"visage.nonce"

SUBJECTS_FILE = "subjects.parquet"
IMAGES_FILE = "images.parquet"
IMAGE_EXT = SEALED_SUFFIX
# Plaintext images of a project from before sealing (``visage privacy seal`` converts them).
PLAIN_EXTS = (".png", ".jpg", ".jpeg")
STAGED_EXT = ".staged"
IMAGE_ID_RE = re.compile(r"^i[0-9a-f]{12}$")
LOCK_FILE = Path(".visage") / "locks" / "raw.lock"
STAGING_PREFIX = "raw.staging-"
OLD_PREFIX = "raw.old-"
PENDING_DIR = ".pending"

SUBJECTS_SCHEMA = pa.schema(
    [
        ("pid", pa.string()),
        ("age", pa.int16()),
        ("gender", pa.string()),
        ("group", pa.string()),
        ("n_images", pa.int64()),
        ("source", pa.string()),
    ]
)
IMAGES_SCHEMA = pa.schema(
    [
        ("pid", pa.string()),
        ("image_id", pa.string()),
        ("sha256", pa.string()),
        ("source_sha256", pa.string()),
        ("source_size", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("age", pa.int16()),
        ("age_band", pa.string()),
        ("gender", pa.string()),
        ("group", pa.string()),
    ]
)
_PANDAS_DTYPE = {
    pa.string(): "string",
    pa.int16(): "Int16",
    pa.int32(): "int32",
    pa.int64(): "int64",
}
_NULLABLE = {"age", "gender", "group", "age_band", "source_sha256", "source_size"}

BAD_GENDER = "gender must be one of {allowed} or null, found {found!r}"
BAD_IMAGE_ID = "image id {image_id!r} is not 'i' + 12 lowercase hex characters"
MISSING_IMAGE_FILE = "images row {image_id} has no file {pid}/{image_id}.sealed in the transaction"
MSG_PLAINTEXT = (
    "{path} is a plaintext image: this project seals every face under its subject's key. "
    "Run `visage privacy seal` to convert it (and any other plaintext file), then run again"
)
MSG_NO_IMAGE = "image {image_id} of subject {pid} is not in data/raw"
MSG_UNREADABLE_IMAGE = (
    "{path} in data/raw cannot be read ({why}): check that it is a file the user running this "
    "may read (its permissions and owner) on a storage that answers, or restore it with `dvc "
    "checkout data/raw` if something else took its place, then run again"
)
# Where the DVC cache lacks an object `dvc checkout data/raw` needs (a file of DVC's record of
# data/raw not in the workspace, or the record's listing), the checkout fails and takes the
# whole folder out of the workspace, checking nothing out (DVC 3.67); `dvc fetch` moves no file.
CHECKOUT_TAKES_ALL = (
    "`dvc checkout data/raw` would now take the whole of data/raw out of the workspace, its "
    "tables and every photograph (DVC checks a folder out whole or not at all): run `dvc fetch "
    "data/raw` first, from a remote that holds them (it changes no file of the workspace); once "
    "fetched, run `dvc checkout data/raw`"
)
# What of DVC's record of data/raw the cache lacks, for the messages' {uncached}.
NOT_CACHED_LISTING = "DVC's listing of data/raw (the .dir object data/raw.dvc records) is"
NOT_CACHED_FILES = (
    "{m} file(s) of data/raw that DVC's record of it (data/raw.dvc) holds, not in the "
    "workspace, are"
)
MSG_RAW_NOT_CHECKED_OUT = (
    "{missing} not there, though {why}: the raw data is not checked out here, and what "
    "would be read without it says that subject {pid} has no photographs; run `dvc checkout "
    "data/raw` (where DVC does not track data/raw, restore its tables from a backup), then run "
    "again"
)
MSG_RAW_NOT_CACHED = (
    "{missing} not there, though {why}: the raw data is not checked out here, and what "
    "would be read without it says that subject {pid} has no photographs; {uncached} not in "
    "the DVC cache, and " + CHECKOUT_TAKES_ALL + ", then run again; where no remote holds "
    "them, restore data/raw's tables from a backup"
)
MSG_RAW_TABLES_NOT_CHECKED_OUT = (
    "{missing} not there, though {why}: the raw data is not checked out here, and data/raw "
    "written without it would hold only this change's rows, every other subject's gone from "
    "it (and from the version `dvc add` makes of it), so nothing was changed: run `dvc checkout "
    "data/raw` (where DVC does not track data/raw, restore its tables from a backup), then run "
    "again"
)
MSG_RAW_TABLES_NOT_CACHED = (
    "{missing} not there, though {why}: the raw data is not checked out here, and data/raw "
    "written without it would hold only this change's rows, every other subject's gone from "
    "it (and from the version `dvc add` makes of it), so nothing was changed; {uncached} not "
    "in the DVC cache, and " + CHECKOUT_TAKES_ALL + ", then run again; where no remote holds "
    "them, restore data/raw's tables from a backup"
)
MSG_RAW_IMAGES_NOT_CHECKED_OUT = (
    "{n} photograph(s) that data/raw/images.parquet lists, of {k} subject(s), are not there, "
    "though {why}: the raw data is checked out only in part, and {effect}; run `dvc checkout "
    "data/raw` (`dvc pull data/raw` where the DVC cache lacks it), then run again; where "
    "neither brings them back, they are lost: `dvc add data/raw` records data/raw without them, "
    "after which this goes on (a warning counts them)"
)
MSG_RAW_IMAGES_NOT_CACHED = (
    "{n} photograph(s) that data/raw/images.parquet lists, of {k} subject(s), are not there, "
    "though {why}: the raw data is checked out only in part, and {effect}; {m} of them are not "
    "in the DVC cache either, and " + CHECKOUT_TAKES_ALL + ", then run again; where "
    "no remote holds them, they are lost: `dvc add data/raw` records data/raw without them, "
    "after which this goes on (a warning counts them)"
)
# data/raw.dvc's listing not in the DVC cache, and data/raw not shown to be what that record
# holds (dvcops.folder_state): a file it holds that no table lists, not here, cannot be told,
# and the `dvc add` that ends a write would make it gone from the current version.
MSG_RAW_NOT_RECORDED = (
    "data/raw here ({here} file(s)) is not shown to be what DVC's record of it (data/raw.dvc, "
    "{recorded} file(s)) holds, and " + NOT_CACHED_LISTING + " not in the DVC cache: a file of "
    "that record may be neither here nor listed by a table, and data/raw written without it "
    "would make it gone from the version `dvc add` makes of it, so nothing was changed; "
    + CHECKOUT_TAKES_ALL
    + ", then run again; where no remote holds it, or data/raw here is what is to be kept (a "
    "file taken out on purpose), `dvc add data/raw` records it as it is, after which this goes on"
)
# What going on without the photographs would do, for MSG_RAW_IMAGES_NOT_CHECKED_OUT.
EFFECT_WRITTEN = (
    "data/raw written without them would make them gone from the version `dvc add` makes of "
    "it, so nothing was changed"
)
EFFECT_READ = "what would be read without them leaves them out"
UNKNOWN_IMAGE_SUBJECT = "images row {image_id} names subject {pid}, which has no subjects row"
DUPLICATE_IMAGE_ID = "image id {image_id} appears twice; use RawTransaction.new_image_id()"
NOT_PENDING = "image {image_id} is not staged in this transaction"


class RawStoreError(RuntimeError):
    """``data/raw`` is in a state the store cannot repair on its own."""


class RawDataMissingError(RawStoreError):
    """``data/raw``'s tables are not there, though a subject's rows in them are expected
    (``dvc checkout data/raw`` not run, or cut short): read as empty, they would say the
    subject has no photographs. The message says why they are expected and what to run."""


class ImageMissingError(KeyError):
    """An image the raw table lists has no file in ``data/raw`` (deleted, or not checked out:
    `dvc checkout` restores it). A KeyError, as the store raised before, so that a caller can
    tell the read of a stored image from any other missing key."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ImageUnreadableError(OSError):
    """An image file in ``data/raw`` is there but cannot be read: its permissions, a folder in
    its place, the storage failing (any OSError but a missing file, which `dvc checkout`
    restores: :class:`ImageMissingError`). The message names it (``<pid>/<image_id>.sealed``)
    and says what to check; an OSError, as the read raised before."""


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def empty_table(schema: pa.Schema) -> pd.DataFrame:
    """An empty frame with the columns and pandas dtypes of ``schema``."""
    return pd.DataFrame({f.name: pd.Series(dtype=_dtype(f)) for f in schema})


def _dtype(f: pa.Field) -> str:
    """The pandas dtype of column ``f``: a nullable integer where the column may be null."""
    dtype = _PANDAS_DTYPE[f.type]
    return dtype.capitalize() if f.name in _NULLABLE and dtype.startswith("int") else dtype


def normalise_table(df: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """``df`` with every column of ``schema`` present and in its pandas dtype.

    Missing nullable columns become null; extra columns are kept as they are.
    """
    out = df.copy()
    for f in schema:
        dtype = _dtype(f)
        if f.name not in out.columns:
            if f.name not in _NULLABLE:
                raise ValueError(f"table lacks the required column '{f.name}'")
            out[f.name] = pd.Series([pd.NA] * len(out), index=out.index, dtype=dtype)
        elif dtype == "string":
            out[f.name] = out[f.name].astype("string")
        else:
            out[f.name] = pd.array(out[f.name], dtype=dtype)
    extras = [c for c in out.columns if c not in schema.names]
    return out[[*schema.names, *extras]].reset_index(drop=True)


def parquet_bytes(table: pa.Table) -> bytes:
    """Parquet bytes of ``table``, stamped with a fresh :func:`~visage_ml.io.version_nonce`
    (schema metadata ``visage.nonce``): no two versions of a shared table are byte-identical,
    so the hash an erasure records of the version it replaced confirms no guessed row."""
    meta = {**(table.schema.metadata or {}), NONCE_META: version_nonce().encode()}
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(meta), sink)
    return sink.getvalue().to_pybytes()


def frame_parquet_bytes(df: pd.DataFrame) -> bytes:
    """:func:`parquet_bytes` of a frame (its index left out), as ``to_parquet`` writes it."""
    return parquet_bytes(pa.Table.from_pandas(df, preserve_index=False))


def table_bytes(df: pd.DataFrame, schema: pa.Schema) -> bytes:
    """Parquet bytes of ``df`` with the canonical arrow types of ``schema`` (extras inferred)."""
    df = normalise_table(df, schema)
    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    for name in df.columns[len(schema.names) :]:
        table = table.append_column(name, pa.array(df[name], from_pandas=True))
    return parquet_bytes(table)


def _read(path: Path, schema: pa.Schema) -> pd.DataFrame:
    if not path.is_file():
        return empty_table(schema)
    return normalise_table(pq.read_table(path).to_pandas(), schema)


def read_subjects(raw_dir: Path) -> pd.DataFrame:
    """``<raw_dir>/subjects.parquet`` as a typed frame (empty with the schema when absent)."""
    return _read(Path(raw_dir) / SUBJECTS_FILE, SUBJECTS_SCHEMA)


def read_images(raw_dir: Path) -> pd.DataFrame:
    """``<raw_dir>/images.parquet`` as a typed frame (empty with the schema when absent)."""
    return _read(Path(raw_dir) / IMAGES_FILE, IMAGES_SCHEMA)


def absent_tables(raw_dir: Path) -> list[str]:
    """The tables of ``raw_dir`` (:data:`SUBJECTS_FILE`, :data:`IMAGES_FILE`) not there: read
    as empty by :func:`read_subjects` and :func:`read_images`. A transaction writes both."""
    return [name for name in (SUBJECTS_FILE, IMAGES_FILE) if not (Path(raw_dir) / name).is_file()]


def dvc_file(raw_dir: Path) -> Path:
    """The DVC file that tracks ``raw_dir`` (``data/raw.dvc``), there or not."""
    return Path(f"{raw_dir}.dvc")


def subject_folders(raw_dir: Path) -> int:
    """How many subject folders (``<pid>/``, where their photographs are) ``raw_dir`` holds."""
    try:
        with os.scandir(raw_dir) as it:
            return sum(1 for e in it if PID_RE.fullmatch(e.name) and e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return 0


def tables_expected(raw_dir: Path, missing: Sequence[str]) -> str | None:
    """Why rows are expected in the tables of ``raw_dir`` that are ``missing``
    (:func:`absent_tables`), or None where nothing of the project says so: none is missing, or
    it is a new project (no ``data/raw``, or one without a subject's folder, DVC tracking
    neither).

    They are expected where the other table is there (a transaction writes both), DVC tracks
    ``data/raw`` (``data/raw.dvc``: it was written) unless its record says no such table was
    in it (:func:`~visage_ml.dvcops.tracked_listing`: ``dvc add`` of a folder before its first
    import; a record whose object is not in the cache says nothing), or ``data/raw`` holds
    subjects' folders.
    Read as empty, such a table says that nobody has a photograph; written back (a
    transaction), it would hold only the transaction's rows.

    Only ``data/raw.dvc`` is read, the file the store's own ``dvc add data/raw`` writes. A
    ``data/raw`` tracked through a parent's ``.dvc`` file or as a stage's output is not
    supported, and DVC refuses both in this project: ``dvc add data`` overlaps the
    ``prepare`` stage's outputs (``data/processed``), and ``dvc add data/raw`` fails where
    ``data/raw`` is a stage's output. Such a layout is taken as not tracked here.
    """
    if not missing:
        return None
    if len(missing) == 1:
        there = SUBJECTS_FILE if list(missing) == [IMAGES_FILE] else IMAGES_FILE
        return f"data/raw/{there} is there (the two are written together)"
    if dvc_file(raw_dir).is_file():
        listing = dvcops.tracked_listing(Path(raw_dir))
        if listing is None or set(missing) & set(listing):
            return "DVC tracks data/raw (data/raw.dvc)"
    n = subject_folders(raw_dir)
    if n:
        return f"data/raw holds {n} subject folder(s) of photographs (<pid>/)"
    return None


def absent_shown(missing: Sequence[str]) -> str:
    """``missing`` tables as a message's subject: "data/raw/images.parquet is", "... are"."""
    shown = " and ".join(f"data/raw/{name}" for name in missing)
    return f"{shown} {'is' if len(missing) == 1 else 'are'}"


def uncached_shown(raw_dir: Path) -> str | None:
    """What ``dvc checkout data/raw`` needs of the DVC cache that it lacks, as a message's
    subject (:data:`NOT_CACHED_LISTING`, :data:`NOT_CACHED_FILES`), or None where it lacks
    nothing: DVC does not track ``raw_dir``, or each file DVC's record of it holds is in the
    workspace or has its object in the cache. Where it lacks one, the checkout fails and takes
    the whole of ``data/raw`` out of the workspace (DVC 3.67): ``dvc fetch data/raw`` first.

    A file in the workspace needs no object: DVC checks out only what differs there (one
    changed there is refused, not taken away). Where the record's listing is not in the cache
    (not pulled), or cannot be read, nothing says what the rest needs: the listing is shown.
    Counted only, a path would name its subject; read where a refusal is made, one look at the
    workspace and the cache a recorded file.
    """
    raw_dir = Path(raw_dir)
    if not dvc_file(raw_dir).is_file():
        return None
    objects = dvcops.tracked_objects(raw_dir)
    if objects is None:
        return NOT_CACHED_LISTING
    m = sum(
        1
        for rel, md5 in objects.items()
        if not (raw_dir / rel).is_file() and not dvcops.in_cache(raw_dir, md5)
    )
    return NOT_CACHED_FILES.format(m=m) if m else None


def check_tables(raw_dir: Path) -> None:
    """Refuse to go on where a table of ``raw_dir`` is not there though rows are expected in it
    (:func:`tables_expected`): ``dvc checkout data/raw`` not run, or cut short.

    Raises
    ------
    RawDataMissingError
        The message says which table, why its rows are expected and what to run
        (:data:`MSG_RAW_TABLES_NOT_CHECKED_OUT`; :data:`MSG_RAW_TABLES_NOT_CACHED`, fetch
        first, where the DVC cache lacks what the checkout needs: :func:`uncached_shown`); it
        names no subject.
    """
    missing = absent_tables(raw_dir)
    why = tables_expected(raw_dir, missing)
    if why is None:
        return
    shown = absent_shown(missing)
    uncached = uncached_shown(raw_dir)
    if uncached is not None:
        raise RawDataMissingError(
            MSG_RAW_TABLES_NOT_CACHED.format(missing=shown, why=why, uncached=uncached)
        )
    raise RawDataMissingError(MSG_RAW_TABLES_NOT_CHECKED_OUT.format(missing=shown, why=why))


def absent_images(raw_dir: Path, pids: Iterable[str] | None = None) -> list[str]:
    """``<pid>/<image_id>`` of each photograph ``images.parquet`` lists (of ``pids``; every
    subject's when None) that has no file in ``raw_dir``, sealed or in clear (before ``visage
    privacy seal``): a checkout cut short, ``dvc checkout`` of some files, files deleted.
    Empty where the table is not there (:func:`check_tables` says so).

    Counted from the table's two id columns and one listing of each subject's folder: no file
    is opened or hashed.
    """
    table = Path(raw_dir) / IMAGES_FILE
    if not table.is_file():
        return []
    listed = pq.read_table(table, columns=["pid", "image_id"]).to_pandas()
    pid_of = listed["pid"].astype(str)
    if pids is not None:
        listed = listed[pid_of.isin(set(pids))]
        pid_of = pid_of[listed.index]
    absent: list[str] = []
    for pid, ids in listed["image_id"].astype(str).groupby(pid_of, sort=True):
        there = _image_stems(Path(raw_dir) / str(pid))
        absent.extend(f"{pid}/{image_id}" for image_id in sorted(set(ids) - there))
    return absent


def _image_stems(folder: Path) -> set[str]:
    """The image ids of the photograph files in a subject's folder: sealed, in clear (before
    ``visage privacy seal``), or in clear of another format (a file named ``<image_id>.webp``
    by hand or by an earlier version); any file of the id is there, not one to check out. A
    staged file (:data:`STAGED_EXT`) is not: a transaction's, that :meth:`RawStore.recover`
    finishes or undoes."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except (FileNotFoundError, NotADirectoryError):
        return set()
    out = set()
    for e in entries:
        stem, dot, _ = e.name.partition(".")
        # A link whose target is gone (DVC's symlink cache type, the object not pulled) is
        # not a file: not there.
        if dot and not e.name.lower().endswith(STAGED_EXT) and e.is_file():
            out.add(stem)
    return out


def _image_key(rel: str) -> str:
    """``<pid>/<image_id>`` of a photograph's path relative to ``data/raw``, whatever its
    extension (as :func:`_image_stems` reads a folder's files)."""
    return rel.partition(".")[0]


def _images_expected(
    absent: Sequence[str], tracked: bool, md5_of: Mapping[str, str] | None
) -> str | None:
    """Why the photographs ``absent`` (:func:`absent_images`) are expected in ``data/raw``, or
    None where nothing here can bring them back.

    They are expected where DVC's record of ``data/raw`` (``data/raw.dvc``: ``tracked``) lists
    them (``md5_of``: each recorded photograph's object, :func:`_image_key`; ``dvc checkout
    data/raw`` restores them), or where its object is not in the cache (``md5_of`` None: ``dvc
    pull`` brings it, nothing says they were not there). Where DVC does not track ``data/raw``,
    or its record lacks them (deleted before a ``dvc add``), they are gone from this project
    whatever is run: nothing is refused for them.
    """
    if not tracked:
        return None
    if md5_of is None:
        return "DVC tracks data/raw (data/raw.dvc)"
    n = sum(1 for a in absent if a in md5_of)
    return f"DVC's record of data/raw (data/raw.dvc) holds {n} of them" if n else None


def _not_cached(raw_dir: Path, absent: Sequence[str], md5_of: Mapping[str, str] | None) -> int:
    """How many of the photographs ``absent`` that DVC's record of ``data/raw`` holds have no
    object in the DVC cache: all of them where the record's own object is not there (``md5_of``
    None). ``dvc checkout data/raw`` then fails and, checking the folder out whole or not at
    all, takes every file of ``data/raw`` out of the workspace (DVC 3.67)."""
    if md5_of is None:
        return len(absent)
    return sum(1 for a in absent if a in md5_of and not dvcops.in_cache(raw_dir, md5_of[a]))


def check_images(
    raw_dir: Path, *, pids: Iterable[str] | None = None, effect: str = EFFECT_WRITTEN
) -> None:
    """Refuse to go on where photographs ``images.parquet`` lists (of ``pids``; everyone's
    when None) are not in ``raw_dir`` though DVC can bring them back (:func:`_images_expected`):
    ``data/raw`` checked out only in part. DVC's record of ``data/raw`` is read only where one
    is not there.

    Raises
    ------
    RawDataMissingError
        The message (:data:`MSG_RAW_IMAGES_NOT_CHECKED_OUT`; :data:`MSG_RAW_IMAGES_NOT_CACHED`
        where the DVC cache lacks one) counts the photographs and their subjects, says why they
        are expected, ``effect`` and what to run; it names no subject.
    """
    absent = absent_images(raw_dir, pids)
    if not absent:
        return
    tracked = dvc_file(raw_dir).is_file()
    objects = dvcops.tracked_objects(Path(raw_dir)) if tracked else {}
    md5_of = None if objects is None else {_image_key(r): md5 for r, md5 in objects.items()}
    why = _images_expected(absent, tracked, md5_of)
    if why is None:
        log.warning(
            "%d photograph(s) that data/raw/images.parquet lists are not in data/raw, and "
            "DVC's record of it does not hold them",
            len(absent),
        )
        return
    k = len({a.partition("/")[0] for a in absent})
    m = _not_cached(Path(raw_dir), absent, md5_of)
    if m:
        raise RawDataMissingError(
            MSG_RAW_IMAGES_NOT_CACHED.format(n=len(absent), k=k, why=why, effect=effect, m=m)
        )
    raise RawDataMissingError(
        MSG_RAW_IMAGES_NOT_CHECKED_OUT.format(n=len(absent), k=k, why=why, effect=effect)
    )


def check_recorded(raw_dir: Path) -> None:
    """Refuse to go on where DVC's listing of ``raw_dir`` (``data/raw.dvc``'s ``.dir`` object)
    is not in the DVC cache and ``raw_dir`` is not shown to be what that record holds
    (:func:`~visage_ml.dvcops.folder_state`: its file count and byte total, then its md5 as
    ``dvc add`` computes it): a file the record holds that no table lists (a copy filed under
    another subject, any file), not here, is not seen by :func:`check_images`, which reads the
    tables, and the ``dvc add data/raw`` that ends a write would make it gone from the current
    version. What a writer of ``data/raw`` checks (:func:`check_checked_out`); a reader needs
    none of it.

    Nothing is hashed where DVC does not track ``raw_dir`` in a DVC repository (no ``dvc add``
    follows a write), or its listing is in the cache (one read of it; a recorded file no table
    lists is not looked for there), or records no file; each file of ``raw_dir`` is read only
    where the record's file count and byte total are the workspace's.

    Raises
    ------
    RawDataMissingError
        :data:`MSG_RAW_NOT_RECORDED`: the files here and recorded counted, none named; fetch
        the listing first (a checkout without it takes the whole folder out of the workspace),
        or ``dvc add data/raw`` where ``data/raw`` here is what is to be kept.
    """
    raw_dir = Path(raw_dir)
    if not dvc_file(raw_dir).is_file() or dvcops.tracked_objects(raw_dir) is not None:
        return
    if not any(dvcops.is_dvc_repo(d) for d in raw_dir.absolute().parents):
        return
    state = dvcops.folder_state(raw_dir)
    if state.same:
        return
    recorded = "an unknown number of" if state.recorded is None else state.recorded
    raise RawDataMissingError(MSG_RAW_NOT_RECORDED.format(here=state.files, recorded=recorded))


def check_checked_out(raw_dir: Path, *, effect: str = EFFECT_WRITTEN, written: bool = True) -> None:
    """Refuse to go on where ``data/raw`` is not checked out (:func:`check_tables`) or only in
    part (:func:`check_images`, every subject's photographs; ``effect``: what going on without
    them would do), or, ``written`` (a ``dvc add data/raw`` records what the caller writes),
    where it is not shown to be what DVC records without the record's listing
    (:func:`check_recorded`): what every writer of ``data/raw`` and the ``prepare`` stage
    (not ``written``) check first."""
    check_tables(raw_dir)
    check_images(raw_dir, effect=effect)
    if written:
        check_recorded(raw_dir)


def _check_gender(values: pd.Series) -> None:
    bad = values.dropna()
    bad = bad[~bad.isin(GENDERS)]
    if len(bad):
        raise ValueError(BAD_GENDER.format(allowed=", ".join(GENDERS), found=bad.iloc[0]))


def merge_subjects(
    existing: pd.DataFrame, new: pd.DataFrame, added: Mapping[str, int]
) -> pd.DataFrame:
    """Merge subject rows: a new pid is appended, a known pid gains images and missing values.

    Parameters
    ----------
    existing
        The current ``subjects.parquet``.
    new
        Rows of the subjects touched by the transaction (``n_images`` is ignored).
    added
        Images added per pid in the transaction.

    Returns
    -------
    pandas.DataFrame
        Existing rows in their order, then new pids in the order given; ``n_images`` is the
        old count plus the images added.
    """
    existing = normalise_table(existing, SUBJECTS_SCHEMA)
    new = normalise_table(
        new.assign(n_images=0) if "n_images" not in new else new, SUBJECTS_SCHEMA
    ).drop_duplicates("pid", keep="last")
    _check_gender(new["gender"])
    for pid in new["pid"]:
        check_pid(pid)
    out = existing.set_index("pid", drop=False)
    incoming = new.set_index("pid", drop=False)
    known = incoming.index.intersection(out.index)
    for col in ("age", "gender", "group", "source"):
        # Keep what is recorded; fill only what was unknown.
        current = out.loc[known, col]
        out.loc[known, col] = current.where(current.notna(), incoming.loc[known, col])
    fresh = incoming.loc[~incoming.index.isin(out.index)].assign(n_images=0)
    out = pd.concat([out, fresh]) if len(fresh) else out
    counts = pd.Series(added, dtype="int64").reindex(out.index, fill_value=0)
    out["n_images"] = out["n_images"].astype("int64") + counts.to_numpy()
    return normalise_table(out.reset_index(drop=True), SUBJECTS_SCHEMA)


def new_image_id(taken: Iterable[str] | set[str] = ()) -> str:
    """A fresh random image id (``i`` + 12 lowercase hex) not in ``taken``."""
    taken_set = taken if isinstance(taken, set) else set(taken)
    while True:
        image_id = "i" + secrets.token_hex(6)
        if image_id not in taken_set:
            return image_id


# ---------------------------------------------------------------------------------------------
# File-tree helpers
# ---------------------------------------------------------------------------------------------


def image_path(raw_dir: Path, pid: str, image_id: str) -> Path:
    """Where ``pid``'s image ``image_id`` is stored under ``raw_dir`` (sealed)."""
    check_pid(pid)
    if not IMAGE_ID_RE.fullmatch(image_id):
        raise ValueError(BAD_IMAGE_ID.format(image_id=image_id))
    return Path(raw_dir) / pid / f"{image_id}{IMAGE_EXT}"


def read_raw_image(keys: DataKeys, path: Path) -> bytes:
    """The PNG bytes of a sealed raw image file ``<pid>/<image_id>.sealed``, decrypted in memory.

    Raises
    ------
    FileNotFoundError
        No such file.
    ImageUnreadableError
        The file is there but cannot be read (an OSError: permissions, a folder, the storage).
    ValueError
        The file is a plaintext image (:data:`MSG_PLAINTEXT`), or it is not the sealed image
        its path names (:class:`~visage_ml.privacy.datakeys.SealedFileError`).
    visage_ml.privacy.datakeys.NoDataKeyError
        The subject's key was destroyed.
    """
    path = Path(path)
    shown = f"{path.parent.name}/{path.name}"
    if path.suffix.lower() in PLAIN_EXTS:
        raise ValueError(MSG_PLAINTEXT.format(path=shown))
    try:
        sealed = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        # The system's message names the full path: ours names the file under data/raw.
        why = exc.strerror or type(exc).__name__
        raise ImageUnreadableError(MSG_UNREADABLE_IMAGE.format(path=shown, why=why)) from exc
    return keys.open_raw(sealed, path.parent.name, path.stem, what=shown)


def _write_durable(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_tree(src: Path, dst: Path) -> tuple[int, int]:
    """Mirror ``src`` into the new folder ``dst`` by hard links; returns (linked, copied).

    Walks with ``os.scandir`` and plain strings: the entries' types come with the listing, so
    the thousands of files of a data set cost one ``link`` each and no ``stat``.
    """
    linked = copied = 0
    dst.mkdir(0o700)
    todo = [(str(src), str(dst))]
    while todo:
        src_dir, dst_dir = todo.pop()
        with os.scandir(src_dir) as it:
            entries = list(it)
        for entry in entries:
            s, d = entry.path, os.path.join(dst_dir, entry.name)
            if entry.is_symlink():
                # A link (to a folder, or e.g. a DVC cache link to a file) stays a link.
                os.symlink(os.readlink(s), d)
            elif entry.is_dir(follow_symlinks=False):
                os.mkdir(d, 0o700)
                todo.append((s, d))
            else:
                try:
                    os.link(s, d, follow_symlinks=False)
                    linked += 1
                except OSError:
                    # Cross-device, no hard-link support, or too many links: copy instead.
                    shutil.copy2(s, d, follow_symlinks=False)
                    with open(d, "rb+") as fh:
                        os.fsync(fh.fileno())
                    copied += 1
    return linked, copied


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, _filenames in os.walk(root, topdown=False, followlinks=False):
        fsync_dir(Path(dirpath))


def _rmtree(path: Path) -> None:
    if path.is_symlink() or not path.exists():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    shutil.rmtree(path)


# ---------------------------------------------------------------------------------------------
# Transaction
# ---------------------------------------------------------------------------------------------


class RawTransaction:
    """Changes to ``data/raw`` staged in ``staging``; applied by :meth:`RawStore.transaction`.

    Two ways to add an image: :meth:`write_image` when the subject's pid is known, or
    :meth:`stage` first and :meth:`place` once the pid is known (an import registers subjects
    only after their images were accepted). Staged images never placed are dropped at commit.
    """

    def __init__(
        self,
        staging: Path,
        subjects: pd.DataFrame,
        images: pd.DataFrame,
        token: str,
        *,
        keys: DataKeys,
    ) -> None:
        self.staging = staging
        self.token = token
        self.keys = keys
        # Seals images staged before their pid is known; never written anywhere.
        self._staging_key = AESGCM.generate_key(bit_length=256)
        self._subjects = subjects
        self._images = images
        self._taken: set[str] = set(images["image_id"].astype(str))
        self._pending: dict[str, Path] = {}
        self._new_subjects: list[dict[str, Any]] = []
        self._new_images: list[dict[str, Any]] = []
        self._then: list[Callable[[], None]] = []
        # Image ids of the subjects removed (remove_subject): what a file outside data/raw that
        # names images (the LFW pairs) must forget too.
        self.removed_image_ids: set[str] = set()
        self.discarded = False
        self.committed = False
        self.dvc_md5: str | None = None
        self.dvc_error: str | None = None

    @property
    def subjects(self) -> pd.DataFrame:
        """``subjects.parquet`` as it was when the transaction started (a copy)."""
        return self._subjects.copy()

    @property
    def images(self) -> pd.DataFrame:
        """``images.parquet`` as it was when the transaction started (a copy)."""
        return self._images.copy()

    @property
    def n_new_images(self) -> int:
        """Image rows added so far."""
        return len(self._new_images)

    def new_image_id(self) -> str:
        """A fresh image id, unique among existing and staged images."""
        image_id = new_image_id(self._taken)
        self._taken.add(image_id)
        return image_id

    def _image_path(self, pid: str, image_id: str) -> Path:
        check_pid(pid)
        if not IMAGE_ID_RE.fullmatch(image_id):
            raise ValueError(BAD_IMAGE_ID.format(image_id=image_id))
        return self.staging / pid / f"{image_id}{IMAGE_EXT}"

    def write_image(self, pid: str, png: bytes, *, image_id: str | None = None) -> str:
        """Seal PNG bytes under ``pid``'s key as ``<pid>/<image_id>.sealed`` (fsynced, 0600);
        return the image id. The subject's data key is created when missing."""
        if image_id is None:
            image_id = self.new_image_id()
        else:
            self._taken.add(image_id)
        path = self._image_path(pid, image_id)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        _write_durable(path, self.keys.seal_raw(pid, image_id, png))
        return image_id

    def stage(self, png: bytes) -> str:
        """Keep PNG bytes for a subject not registered yet (sealed under the transaction's own
        in-memory key); return the image id."""
        image_id = self.new_image_id()
        folder = self.staging / PENDING_DIR
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / f"{image_id}{STAGED_EXT}"
        _write_durable(path, seal(self._staging_key, png, aad=image_id.encode()))
        self._pending[image_id] = path
        return image_id

    def place(self, image_id: str, pid: str) -> None:
        """Seal a staged image under ``pid``'s key into the subject's folder."""
        src = self._pending.pop(image_id, None)
        if src is None:
            raise KeyError(NOT_PENDING.format(image_id=image_id))
        try:
            png = open_sealed(self._staging_key, src.read_bytes(), aad=image_id.encode())
        except InvalidTag:
            raise RawStoreError(f"staged image {image_id} was altered during the import") from None
        dst = self._image_path(pid, image_id)
        dst.parent.mkdir(mode=0o700, exist_ok=True)
        _write_durable(dst, self.keys.seal_raw(pid, image_id, png))
        src.unlink()

    def drop(self, image_id: str) -> None:
        """Forget a staged image (it will not enter ``data/raw``)."""
        src = self._pending.pop(image_id, None)
        if src is not None:
            src.unlink()

    def add_subjects(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Subject rows to merge (``pid``, ``age``, ``gender``, ``group``, ``source``)."""
        self._new_subjects.extend(dict(r) for r in rows)

    def add_images(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Image rows (columns of :data:`IMAGES_SCHEMA`) for files written in this transaction."""
        self._new_images.extend(dict(r) for r in rows)

    def discard(self) -> None:
        """End without changing ``data/raw`` (nothing worth committing)."""
        self.discarded = True

    def then(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when the block ends, committed or discarded, before the lock is
        released (not after an exception).

        For a file outside ``data/raw`` that names its images (the LFW pairs table): written
        there, no other writer (an erasure, a second import) can change ``data/raw`` between the
        commit and that file. An erasure rewrites that file here too, without the pairs naming
        :attr:`removed_image_ids`.
        """
        self._then.append(callback)

    # -- data-subject rights (erasure, rectification) ---------------------------------------------
    def remove_subject(self, pid: str) -> list[str]:
        """Leave ``pid`` out of the new tree: their folder and their table rows (Art. 17).

        Only the staging links are removed; ``data/raw`` is untouched until the swap. Returns
        the removed files' paths relative to ``data/raw``; the ids of the subject's images
        (rows and files) are added to :attr:`removed_image_ids`.
        """
        check_pid(pid)
        folder = self.staging / pid
        removed = []
        if folder.is_dir():
            removed = sorted(
                p.relative_to(self.staging).as_posix() for p in folder.rglob("*") if p.is_file()
            )
            _rmtree(folder)
        stems = (Path(f).name.split(".")[0] for f in removed)
        self.removed_image_ids.update(s for s in stems if IMAGE_ID_RE.fullmatch(s))
        self.removed_image_ids.update(
            self._images.loc[self._images["pid"].astype(str) == pid, "image_id"].astype(str)
        )
        self.removed_image_ids.update(
            str(r["image_id"]) for r in self._new_images if r.get("pid") == pid
        )
        self._subjects = self._subjects[self._subjects["pid"].astype(str) != pid]
        self._images = self._images[self._images["pid"].astype(str) != pid]
        self._subjects = self._subjects.reset_index(drop=True)
        self._images = self._images.reset_index(drop=True)
        self._new_subjects = [r for r in self._new_subjects if r.get("pid") != pid]
        self._new_images = [r for r in self._new_images if r.get("pid") != pid]
        return removed

    def update_subject(self, pid: str, values: Mapping[str, Any]) -> None:
        """Overwrite ``age``, ``gender``, ``group`` of an existing subject (Art. 16).

        The per-image labels the source gave (``images.parquet``) are the values the subject
        corrected: each corrected field takes the new value on every image of theirs, and a
        corrected age clears the source's ``age_band``, so no table still states the old one.
        """
        check_pid(pid)
        unknown = set(values) - {"age", "gender", "group"}
        if unknown:
            raise ValueError(f"only age, gender and group can be corrected, not {sorted(unknown)}")
        if "gender" in values:
            _check_gender(pd.Series([values["gender"]], dtype="object"))
        mask = self._subjects["pid"].astype(str) == pid
        if not mask.any():
            raise KeyError(f"subject {pid} has no row in subjects.parquet")
        subjects = self._subjects.copy()
        for col, value in values.items():
            subjects.loc[mask, col] = pd.NA if value is None else value
        self._subjects = normalise_table(subjects, SUBJECTS_SCHEMA)
        rows = self._images["pid"].astype(str) == pid
        if rows.any():
            images = self._images.copy()
            for col, value in values.items():
                images.loc[rows, col] = pd.NA if value is None else value
            if "age" in values:
                images.loc[rows, "age_band"] = pd.NA
            self._images = normalise_table(images, IMAGES_SCHEMA)

    def replace_image(self, pid: str, image_id: str, png: bytes, row: Mapping[str, Any]) -> None:
        """Replace an existing image's file and its ``images.parquet`` values (Art. 16).

        The staging link is removed before the new file is written, so the file in ``data/raw``
        (and every other link to it) is never written through.
        """
        path = self._image_path(pid, image_id)
        mask = (self._images["pid"].astype(str) == pid) & (
            self._images["image_id"].astype(str) == image_id
        )
        if not mask.any() or not path.is_file():
            raise KeyError(f"image {image_id} of subject {pid} is not in data/raw")
        path.unlink()
        _write_durable(path, self.keys.seal_raw(pid, image_id, png))
        images = self._images.copy()
        for col, value in row.items():
            if col in ("pid", "image_id"):
                continue
            images.loc[mask, col] = pd.NA if value is None else value
        self._images = normalise_table(images, IMAGES_SCHEMA)

    # -- commit (called by RawStore) -------------------------------------------------------------
    def _finalise(self) -> None:
        """Write the merged tables into staging and check that rows and files agree."""
        for image_id in list(self._pending):
            self.drop(image_id)
        pending = self.staging / PENDING_DIR
        if pending.exists():
            pending.rmdir()
        new_images = (
            normalise_table(pd.DataFrame(self._new_images), IMAGES_SCHEMA)
            if self._new_images
            else empty_table(IMAGES_SCHEMA)
        )
        _check_gender(new_images["gender"])
        subjects_new = (
            pd.DataFrame(self._new_subjects) if self._new_subjects else empty_table(SUBJECTS_SCHEMA)
        )
        known_pids = set(self._subjects["pid"].astype(str)) | set(subjects_new["pid"].astype(str))
        seen: set[str] = set(self._images["image_id"].astype(str))
        for pid, image_id in zip(new_images["pid"], new_images["image_id"], strict=True):
            if image_id in seen:
                raise ValueError(DUPLICATE_IMAGE_ID.format(image_id=image_id))
            seen.add(image_id)
            if pid not in known_pids:
                raise ValueError(UNKNOWN_IMAGE_SUBJECT.format(image_id=image_id, pid=pid))
            if not self._image_path(pid, image_id).is_file():
                raise ValueError(MISSING_IMAGE_FILE.format(image_id=image_id, pid=pid))
        added = new_images["pid"].astype(str).value_counts().to_dict()
        subjects = merge_subjects(self._subjects, subjects_new, added)
        images = (
            pd.concat([self._images, new_images], ignore_index=True)
            if len(self._images)
            else new_images
        )
        atomic_write_bytes(
            self.staging / SUBJECTS_FILE, table_bytes(subjects, SUBJECTS_SCHEMA), mode=0o600
        )
        atomic_write_bytes(
            self.staging / IMAGES_FILE, table_bytes(images, IMAGES_SCHEMA), mode=0o600
        )
        _fsync_tree(self.staging)


class RawStore:
    """Transactional writer of the project's ``data/raw``.

    Parameters
    ----------
    paths
        The project.
    core
        The privacy core whose consent snapshot is refreshed after a commit (one is opened when
        needed).
    track
        Run ``dvc add data/raw`` after a commit.
    """

    def __init__(
        self, paths: ProjectPaths, *, core: PrivacyCore | None = None, track: bool = True
    ) -> None:
        self.paths = paths
        self._core = core
        self.track = track

    @property
    def core(self) -> PrivacyCore:
        """The privacy core (opened on first use)."""
        if self._core is None:
            self._core = PrivacyCore(self.paths)
        return self._core

    @property
    def keys(self) -> DataKeys:
        """The data keys that seal the images (needs the master key)."""
        return self.core.data_keys

    def image_path(self, pid: str, image_id: str) -> Path:
        """Where ``pid``'s image ``image_id`` is stored (sealed)."""
        return image_path(self.paths.raw, pid, image_id)

    def read_image(self, pid: str, image_id: str) -> bytes:
        """The PNG bytes of one stored image, decrypted in memory (never written in clear).

        Raises
        ------
        ImageMissingError
            No such image file (a KeyError).
        ImageUnreadableError
            The file is there but cannot be read (an OSError; the message says what to check).
        ValueError
            A plaintext or altered file (the message says what to do).
        visage_ml.privacy.datakeys.NoDataKeyError
            The subject's key was destroyed (erased).
        """
        path = self.image_path(pid, image_id)
        # Read, not first tested with is_file(): a folder in the file's place, or a file the
        # read is refused, is not missing (`dvc checkout` would not bring it back).
        try:
            return read_raw_image(self.keys, path)
        except FileNotFoundError:
            pass
        for ext in PLAIN_EXTS:
            legacy = path.with_suffix(ext)
            if legacy.is_file():
                return read_raw_image(self.keys, legacy)  # raises MSG_PLAINTEXT
        raise ImageMissingError(MSG_NO_IMAGE.format(pid=pid, image_id=image_id))

    @property
    def lock_path(self) -> Path:
        """The lock every writer of ``data/raw`` takes."""
        return self.paths.root / LOCK_FILE

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the ``data/raw`` lock (for other writers, e.g. erasure)."""
        with file_lock(self.lock_path):
            yield

    def files_of(self, pid: str) -> list[Path]:
        """The subject's files in ``data/raw`` (sorted) and the tables whose rows name them.

        What :meth:`RawTransaction.remove_subject` removes or rewrites, for an erasure to hash
        first; only files that exist.
        """
        raw = self.paths.raw
        folder = raw / pid
        files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
        for name in (SUBJECTS_FILE, IMAGES_FILE):
            table = raw / name
            if table.is_file() and parquet_names(table.read_bytes(), pid):
                files.append(table)
        return files

    def recover(self) -> list[str]:
        """Repair what a crashed transaction left (see the module docstring); return actions.

        Call with the lock held (:meth:`transaction` does).
        """
        data, raw = self.paths.data, self.paths.raw
        if not data.is_dir():
            return []
        actions: list[str] = []
        olds = sorted(p for p in data.iterdir() if p.name.startswith(OLD_PREFIX))
        if not raw.exists() and not raw.is_symlink() and olds:
            old = max(olds, key=lambda p: p.lstat().st_mtime)
            token = old.name[len(OLD_PREFIX) :]
            staging = data / f"{STAGING_PREFIX}{token}"
            if staging.is_dir():
                os.rename(staging, raw)
                actions.append(f"rolled forward: {staging.name} -> raw")
            else:
                os.rename(old, raw)
                actions.append(f"rolled back: {old.name} -> raw")
            fsync_dir(data)
        for p in sorted(data.iterdir()):
            if p.name.startswith((STAGING_PREFIX, OLD_PREFIX)):
                _rmtree(p)
                actions.append(f"removed {p.name}")
        for action in actions:
            log.warning("data/raw recovery after an interrupted transaction: %s", action)
        return actions

    @contextlib.contextmanager
    def transaction(self, *, replace: bool = False) -> Iterator[RawTransaction]:
        """Stage changes to ``data/raw`` and swap them in atomically when the block ends.

        Parameters
        ----------
        replace
            Start from an empty tree (the new ``data/raw`` holds only what the transaction
            adds) instead of the current one.

        Yields
        ------
        RawTransaction
            Where to write images and rows. After the block, ``committed``, ``dvc_md5`` and
            ``dvc_error`` say what happened.

        Raises
        ------
        RawDataMissingError
            Before anything is staged, where a table of ``data/raw`` is not there though rows
            are expected in it (:func:`check_tables`; not with ``replace``): read as empty and
            written back, it would hold only this transaction's rows, and the next ``dvc add``
            would make every other subject's rows gone from the current version. So too where
            photographs the tables list are not there though DVC can bring them back
            (:func:`check_images`): ``dvc add`` would make a version without them; or where
            ``data/raw`` is not shown to be what DVC records, the record's listing not in the
            cache (:func:`check_recorded`) (:func:`check_checked_out`).

        Notes
        -----
        An exception inside the block, or while the tables are written, removes the staging
        folder and leaves ``data/raw`` as it was, byte for byte.
        """
        paths = self.paths
        with self.lock():
            self.recover()
            if not replace:
                check_checked_out(paths.raw)
            paths.data.mkdir(parents=True, exist_ok=True)
            token = secrets.token_hex(6)
            staging = paths.data / f"{STAGING_PREFIX}{token}"
            try:
                if paths.raw.is_dir() and not replace:
                    linked, copied = _link_tree(paths.raw, staging)
                    log.debug("staged data/raw: %d hard links, %d copies", linked, copied)
                    subjects, images = read_subjects(staging), read_images(staging)
                else:
                    staging.mkdir(0o700)
                    subjects = empty_table(SUBJECTS_SCHEMA)
                    images = empty_table(IMAGES_SCHEMA)
                txn = RawTransaction(staging, subjects, images, token, keys=self.keys)
                yield txn
                if txn.discarded:
                    _rmtree(staging)
                else:
                    txn._finalise()
                    faults.crash_point("rawstore:staged")
                    self._swap(staging, token)
            except BaseException:
                _rmtree(staging)
                raise
            if not txn.discarded:
                faults.crash_point("rawstore:committed")
                txn.committed = True
                log.info(
                    "data/raw committed: %d images added, %d in total",
                    txn.n_new_images,
                    len(txn._images) + txn.n_new_images,  # after the transaction's removals
                )
                self._after_commit(txn)
            for callback in txn._then:
                callback()

    def _swap(self, staging: Path, token: str) -> None:
        data, raw = self.paths.data, self.paths.raw
        old = data / f"{OLD_PREFIX}{token}"
        fsync_dir(data)
        had_raw = raw.exists() or raw.is_symlink()
        if had_raw:
            os.rename(raw, old)
        faults.crash_point("rawstore:swap:between")
        try:
            os.rename(staging, raw)
        except BaseException:
            if had_raw:
                os.rename(old, raw)  # put the untouched tree back before anything else
            raise
        fsync_dir(data)
        faults.crash_point("rawstore:swap:done")
        if had_raw:
            _rmtree(old)

    def _after_commit(self, txn: RawTransaction) -> None:
        if self.track:
            try:
                txn.dvc_md5 = dvcops.track(self.paths.root, self.paths.raw)
            except dvcops.DvcError as exc:
                txn.dvc_error = str(exc)
                log.warning(
                    "data/raw was written but `dvc add data/raw` failed; run it by hand: %s", exc
                )
        self.core.snapshot()
