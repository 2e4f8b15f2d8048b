"""The processed face crops at rest: one file of per-subject chunks, each sealed under the
subject's data key; decrypted into memory by the readers.

Layout of ``data/processed/faces.sealed``::

    MAGIC | chunk | chunk | ... | footer JSON | u64 footer length (big-endian) | END

A chunk is ``nonce (12) | AES-256-GCM ciphertext+tag`` of ``count`` consecutive crops
(``count x S x S x 3`` uint8, rows ``start .. start+count-1`` of the crop array), sealed under
the data key of the subject those rows belong to, with associated data
``b"visage-crops-v1|" + pid + b"|start|count|S"``. The footer lists the chunks
(``[start, count, offset, length]``), the side ``S`` and the number of rows; it names nobody:
which subject a chunk belongs to is what ``manifest.parquet`` says of its first row, and the
associated data makes a chunk open only for that subject and those rows.

Readers (:func:`read_crops`) return the ``(rows, S, S, 3)`` array in memory with every chunk of
the requested subjects decrypted and every other row zero, which is how the manifest's ``row``
column addresses crops. :func:`purge_chunks` overwrites a subject's chunks with zeros in place
(their key is destroyed first, so even the freed blocks of a copy hold only ciphertext). The
pipeline never writes a crop in clear: :class:`CropWriter` encrypts each subject's crops as they
are made and renames the finished file into place.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from cryptography.exceptions import InvalidTag

from visage_ml.io import fsync_dir
from visage_ml.privacy.datakeys import DataKeys, NoDataKeyError
from visage_ml.privacy.sealed import open_sealed, seal

MAGIC = b"VISAGE-CROPS-1\n"
END = b"\nVCEND1\n"
FORMAT = "visage-crops"
VERSION = 1

MSG_NOT_CROPS = "{path} is not a sealed crops file (or it is truncated); re-run `dvc repro prepare`"
MSG_TAMPERED = (
    "a chunk of {path} (rows {start}..{end}) does not open for the subject the manifest names: "
    "the file or manifest.parquet was altered or they are from different runs; re-run "
    "`dvc repro prepare`"
)
MSG_NO_KEY = (
    "manifest.parquet lists subject {pid}, whose data key was destroyed (erased): the processed "
    "data is stale. Re-run `dvc repro prepare`"
)
MSG_ORDER = "crops must be added in row order; got row {row} after {rows} rows"
MSG_ROWS = (
    "manifest.parquet ({rows} rows) does not address the {faces} crops of faces.sealed ({why}); "
    "re-run `dvc repro prepare` to rebuild both together"
)


def chunk_aad(pid: str, start: int, count: int, size: int) -> bytes:
    """Associated data of one chunk: the subject, its rows and the crop side."""
    return f"visage-crops-v1|{pid}|{start}|{count}|{size}".encode()


@dataclass(frozen=True)
class CropsInfo:
    """The footer of a sealed crops file."""

    size: int
    rows: int
    chunks: list[tuple[int, int, int, int]]  # (start, count, offset, length)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.rows, self.size, self.size, 3)


def crops_info(path: Path) -> CropsInfo:
    """Read the footer of the sealed crops file at ``path`` (``ValueError`` if not one)."""
    path = Path(path)
    with open(path, "rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            raise ValueError(MSG_NOT_CROPS.format(path=path.name))
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        tail = len(END) + 8
        if end < len(MAGIC) + tail:
            raise ValueError(MSG_NOT_CROPS.format(path=path.name))
        fh.seek(end - tail)
        trailer = fh.read(tail)
        if not trailer.endswith(END):
            raise ValueError(MSG_NOT_CROPS.format(path=path.name))
        n = int.from_bytes(trailer[:8], "big")
        if n <= 0 or n > end - len(MAGIC) - tail:
            raise ValueError(MSG_NOT_CROPS.format(path=path.name))
        fh.seek(end - tail - n)
        try:
            doc = json.loads(fh.read(n))
        except ValueError:
            raise ValueError(MSG_NOT_CROPS.format(path=path.name)) from None
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ValueError(MSG_NOT_CROPS.format(path=path.name))
    chunks = [(int(c[0]), int(c[1]), int(c[2]), int(c[3])) for c in doc["chunks"]]
    return CropsInfo(size=int(doc["size"]), rows=int(doc["rows"]), chunks=chunks)


class CropWriter:
    """Writes a sealed crops file: crops are added in row order and sealed per subject.

    Parameters
    ----------
    path
        The file to create (replaced atomically by :meth:`commit`).
    keys
        The data keys (each subject's key must exist: their raw images were opened with it).
    size
        Crop side ``S``.
    create_keys
        Create a subject's data key when missing (tools and tests that seal crops of subjects
        never imported); the pipeline never does.

    Use as a context manager: leaving the block with an exception removes the temporary file.
    """

    def __init__(self, path: Path, keys: DataKeys, size: int, *, create_keys: bool = False) -> None:
        self.path = Path(path)
        self.keys = keys
        self.size = int(size)
        self.create_keys = create_keys
        self.rows = 0
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._fh = os.fdopen(fd, "wb")
        self._fh.write(MAGIC)
        self._offset = len(MAGIC)
        self._chunks: list[tuple[int, int, int, int]] = []
        self._pid: str | None = None
        self._start = 0
        self._buf: list[np.ndarray] = []

    def __enter__(self) -> CropWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()

    def add(self, pid: str, crop: np.ndarray) -> int:
        """Append one crop of ``pid``; returns its row."""
        if pid != self._pid:
            self._flush()
            self._pid, self._start = pid, self.rows
        self._buf.append(np.ascontiguousarray(crop, dtype=np.uint8))
        self.rows += 1
        return self.rows - 1

    def skip(self, n: int = 1) -> None:
        """Leave ``n`` rows empty (zero when read): rows of nobody, e.g. purged ones."""
        self._flush()
        self._pid = None
        self.rows += int(n)

    def add_many(self, pid: str, start: int, crops: np.ndarray) -> None:
        """Append ``crops`` of ``pid`` as rows ``start ..`` (``start`` must be the next row)."""
        if start != self.rows:
            raise ValueError(MSG_ORDER.format(row=start, rows=self.rows))
        for crop in crops:
            self.add(pid, crop)

    def _flush(self) -> None:
        if self._pid is None or not self._buf:
            return
        count = len(self._buf)
        plain = np.stack(self._buf).tobytes()
        aad = chunk_aad(self._pid, self._start, count, self.size)
        blob = seal(self.keys.key(self._pid, create=self.create_keys), plain, aad=aad)
        self._fh.write(blob)
        self._chunks.append((self._start, count, self._offset, len(blob)))
        self._offset += len(blob)
        self._buf = []

    def commit(self) -> None:
        """Seal the last chunk, write the footer, fsync and rename into place."""
        self._flush()
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "size": self.size,
            "rows": self.rows,
            "chunks": [list(c) for c in self._chunks],
        }
        footer = json.dumps(doc, separators=(",", ":")).encode()
        self._fh.write(footer + len(footer).to_bytes(8, "big") + END)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Remove the temporary file (nothing of it stays)."""
        with contextlib.suppress(OSError):
            self._fh.close()
        self._tmp.unlink(missing_ok=True)


def write_crops(
    path: Path, keys: DataKeys, pids: list[str], faces: np.ndarray, *, create_keys: bool = True
) -> None:
    """Seal an in-memory crop array whose row ``i`` belongs to ``pids[i]`` (tests, tools)."""
    faces = np.asarray(faces, dtype=np.uint8)
    with CropWriter(path, keys, faces.shape[1], create_keys=create_keys) as writer:
        for pid, crop in zip(pids, faces, strict=True):
            writer.add(str(pid), crop)
        writer.commit()


def _owners(manifest: pd.DataFrame) -> dict[int, str]:
    rows = manifest["row"].to_numpy(dtype=np.int64)
    return dict(zip(rows.tolist(), manifest["pid"].astype(str).tolist(), strict=True))


def iter_chunks(
    path: Path, manifest: pd.DataFrame, *, pids: Collection[str] | None = None
) -> Iterator[tuple[str, int, int, int, int]]:
    """``(pid, start, count, offset, length)`` of each chunk whose first row the manifest lists
    (of ``pids`` only, when given)."""
    info = crops_info(path)
    owners = _owners(manifest)
    wanted = set(pids) if pids is not None else None
    for start, count, offset, length in info.chunks:
        pid = owners.get(start)
        if pid is None or (wanted is not None and pid not in wanted):
            continue
        yield pid, start, count, offset, length


def check_manifest_rows(manifest: pd.DataFrame, n_crops: int) -> None:
    """Refuse a manifest that does not address the crops of a file of ``n_crops`` rows.

    Each manifest row names its crop by ``row``: every one must be within the file, and once.
    A manifest may hold fewer rows than the file: an erasure (:func:`purge_chunks`, through
    ``purge_subject``) removes its subject's rows and zeroes their crops, and every other row
    keeps its address.

    Raises
    ------
    ValueError
        :data:`MSG_ROWS`, saying what does not match.
    """
    rows = manifest["row"].to_numpy() if "row" in manifest else np.arange(len(manifest))
    why = ""
    if len(rows) > n_crops:
        why = "more rows than crops"
    elif len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= n_crops):
        why = "a row beyond the crops"
    elif len(np.unique(rows)) != len(rows):
        why = "a row listed twice"
    if why:
        raise ValueError(MSG_ROWS.format(rows=len(manifest), faces=n_crops, why=why))


def read_crops(
    path: Path,
    keys: DataKeys,
    manifest: pd.DataFrame,
    *,
    pids: Collection[str] | None = None,
) -> np.ndarray:
    """The crop array ``(rows, S, S, 3)`` in memory: the chunks of the manifest's subjects (of
    ``pids`` when given) decrypted, every other row zero.

    Raises
    ------
    ValueError
        Not a crops file, or a chunk does not open for its subject and rows (altered, or a
        manifest of another run); a listed subject's key was destroyed (stale outputs).
    """
    path = Path(path)
    info = crops_info(path)
    out = np.zeros(info.shape, dtype=np.uint8)
    row_bytes = info.size * info.size * 3
    with open(path, "rb") as fh:
        for pid, start, count, offset, length in iter_chunks(path, manifest, pids=pids):
            fh.seek(offset)
            blob = fh.read(length)
            try:
                key = keys.key(pid)
            except NoDataKeyError:
                raise ValueError(MSG_NO_KEY.format(pid=pid)) from None
            try:
                plain = open_sealed(key, blob, aad=chunk_aad(pid, start, count, info.size))
            except (InvalidTag, ValueError):
                raise ValueError(
                    MSG_TAMPERED.format(path=path.name, start=start, end=start + count - 1)
                ) from None
            if len(plain) != count * row_bytes:
                raise ValueError(
                    MSG_TAMPERED.format(path=path.name, start=start, end=start + count - 1)
                )
            out[start : start + count] = np.frombuffer(plain, dtype=np.uint8).reshape(
                count, info.size, info.size, 3
            )
    return out


def purge_chunks(path: Path, manifest: pd.DataFrame, pid: str) -> int:
    """Overwrite ``pid``'s chunks with zeros in place (fsync'd); returns the chunks zeroed.

    Call with the manifest that still lists the subject; the file's footer and every other
    chunk are left as they are, so the other rows keep their addresses.
    """
    chunks = [c for c in iter_chunks(path, manifest, pids={pid})]
    if not chunks:
        return 0
    with open(path, "r+b") as fh:
        for _, _, _, offset, length in chunks:
            fh.seek(offset)
            fh.write(b"\0" * length)
        fh.flush()
        os.fsync(fh.fileno())
    return len(chunks)
