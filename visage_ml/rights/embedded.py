"""Files held inside other files: what the erasure and the verifier look for besides whole files.

A photograph's exact bytes outlive it inside files of an ordinary day: an HTML export of a
notebook (``jupyter nbconvert --to html`` inlines each image as a base64 ``data:`` URL), the
photo base64-encoded in a JSON or CSV file, an archive made for a colleague (zip, tar, gzip,
bzip2, xz; NumPy's ``.npz`` and torch's ``.pt`` are zip files), a pickle or a ``.npy`` array of
its bytes, a Parquet table holding them in a column. :func:`inside` gives the SHA-256 of each
file such a file holds, to be matched as a whole file is (:mod:`visage_ml.rights.content_scan`).

What a file is comes from its first bytes (:func:`kind`), never from its name: a copy renamed
keeps its content. A text file (UTF-8, no NUL) is read for base64 runs (a ``data:`` URL's, a JSON
or CSV field's, one wrapped in lines); the copies step cuts a matching run out of it and keeps
the file (:func:`cut_encoded`). An archive, a pickle, an array or a table is not rewritten: one
of the project stops the erasure for the operator to decide, a DVC object goes whole
(:func:`~visage_ml.rights.erasure.copies.holds_inside`). Archives and compressed streams are
read member by member, nested ones too (to :data:`DEPTH`); a member larger than
:data:`EMBED_MAX` is hashed, not looked inside, and a pickle, an array, a table or a text
file that large is only hashed whole. A part of a size nothing sought has is not hashed
(``sizes``).

Not looked inside: other binary formats (a database, a PDF, an image container, an encrypted
archive), a damaged archive past the point it breaks, base64 of another alphabet
(``urlsafe_b64encode``) or split otherwise than by line breaks. A re-encoded, resized or
cropped face has other bytes wherever it is: no scan by hash finds it.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import contextlib
import gzip
import hashlib
import io
import lzma
import re
import tarfile
import zipfile
import zlib
from collections.abc import Container, Iterator
from pathlib import Path
from typing import IO, Protocol

from visage_ml.io import CHUNK, atomic_write_bytes

# Looked inside in memory up to this size; a larger member is hashed as it streams.
EMBED_MAX = 64 << 20
# Archives within archives (a backup of a folder holding a .npz), base64 of a zip: so deep.
DEPTH = 4
# What a part shows first, to tell what it is.
SNIFF = 4096

TEXT = "text"
ZIP = "zip"
TAR = "tar"
COMPRESSED = "compressed"
PARQUET = "parquet"
# A pickle or a .npy array: the bytes it holds lie in it as they are.
BINARY = "binary"
KINDS = frozenset({TEXT, ZIP, TAR, COMPRESSED, PARQUET, BINARY})
# Kinds read as a stream from their file: looked inside whatever its size.
STREAMED = frozenset({ZIP, TAR, COMPRESSED})

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
TAR_MAGIC, TAR_AT = b"ustar", 257
COMPRESSED_MAGIC = (b"\x1f\x8b", b"\xfd7zXZ\x00")
BZIP2_MAGIC = re.compile(rb"BZh[1-9]1AY&SY")
PARQUET_MAGIC = b"PAR1"
NPY_MAGIC = b"\x93NUMPY"
PICKLE_MAGIC = re.compile(rb"\x80[\x02-\x05]")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND"
# A base64 run: at least 64 characters (no photograph is shorter), possibly wrapped in lines
# (``base64`` wraps at 76) or in JSON's escaped line breaks; its last line as short as it is.
B64_RUN = re.compile(rb"[A-Za-z0-9+/]{16,}(?:(?:\r?\n|\\n)[A-Za-z0-9+/]+)*={0,2}")
B64_MIN = 64
B64_BREAKS = re.compile(rb"\r?\n|\\n")


class SizeFilter(Protocol):
    """What is sought, by size (:class:`~visage_ml.rights.content_hashes.ContentHashes`)."""

    def may_match(self, size: int) -> bool: ...


def _text(first: bytes) -> bool:
    """UTF-8 without a NUL (its last character may be cut off where ``first`` ends)."""
    if not first or b"\x00" in first:
        return False
    try:
        first.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.reason == "unexpected end of data" and exc.start >= len(first) - 3
    return True


def kind(first: bytes) -> str | None:
    """What a file beginning with ``first`` is, as far as what it may hold goes; None: nothing
    looked inside (an image, a sealed file, a binary format not listed)."""
    if first.startswith(ZIP_MAGIC):
        return ZIP
    if first[TAR_AT : TAR_AT + len(TAR_MAGIC)] == TAR_MAGIC:
        return TAR
    if first.startswith(COMPRESSED_MAGIC) or BZIP2_MAGIC.match(first):
        return COMPRESSED
    if first.startswith(PARQUET_MAGIC):
        return PARQUET
    if first.startswith(NPY_MAGIC) or PICKLE_MAGIC.match(first):
        return BINARY
    return TEXT if _text(first) else None


def _digest(data: bytes, sizes: SizeFilter | None) -> list[str]:
    return [hashlib.sha256(data).hexdigest()] if sizes is None or sizes.may_match(len(data)) else []


def _part(data: bytes, sizes: SizeFilter | None, depth: int) -> Iterator[str]:
    """A file held inside another: its SHA-256, and what it holds itself."""
    yield from _digest(data, sizes)
    if depth < DEPTH and (what := kind(data[:SNIFF])) is not None:
        yield from inside(data, what, sizes=sizes, depth=depth + 1)


def _stream(stream: IO[bytes], size: int | None, sizes: SizeFilter | None, depth: int):
    """A member as it streams: looked inside when small enough, else only hashed (and not
    even read when its size and first bytes show it can be nothing sought)."""
    head = stream.read(SNIFF)
    unsought = size is not None and sizes is not None and not sizes.may_match(size)
    if unsought and kind(head) is None:
        return
    rest = stream.read(EMBED_MAX + 1 - len(head))
    data = head + rest
    if len(data) <= EMBED_MAX:
        yield from _part(data, sizes, depth)
        return
    h, n = hashlib.sha256(data), len(data)
    for chunk in iter(lambda: stream.read(CHUNK), b""):
        h.update(chunk)
        n += len(chunk)
    if sizes is None or sizes.may_match(n):
        yield h.hexdigest()


# What a damaged or unsupported archive raises: what was read before it stays looked at.
ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,  # an encrypted zip member
)


def _zip(fh: IO[bytes], sizes: SizeFilter | None, depth: int) -> Iterator[str]:
    try:
        with zipfile.ZipFile(fh) as z:
            for info in z.infolist():
                if not info.is_dir():
                    with z.open(info) as member:
                        yield from _stream(member, info.file_size, sizes, depth)
    except ARCHIVE_ERRORS:
        return


def _open_tar(fh: IO[bytes]) -> tarfile.TarFile | None:
    """``fh`` as a tar file (compressed or not), or None when it is none."""
    try:
        return tarfile.open(fileobj=fh, mode="r:*")
    except ARCHIVE_ERRORS:
        return None


def _tar(t: tarfile.TarFile, sizes: SizeFilter | None, depth: int) -> Iterator[str]:
    try:
        with t:
            for member in t:
                if member.isfile() and (stream := t.extractfile(member)) is not None:
                    yield from _stream(stream, member.size, sizes, depth)
    except ARCHIVE_ERRORS:
        return


def _decompressed(fh: IO[bytes], sizes: SizeFilter | None, depth: int) -> Iterator[str]:
    """A gzip, bzip2 or xz file: a compressed tar's members, else the one file it holds."""
    start = fh.tell()
    if (t := _open_tar(fh)) is not None:
        yield from _tar(t, sizes, depth)
        return
    fh.seek(start)
    first = fh.read(len(COMPRESSED_MAGIC[1]))
    fh.seek(start)
    opener = (
        gzip.open
        if first.startswith(COMPRESSED_MAGIC[0])
        else lzma.open
        if first.startswith(COMPRESSED_MAGIC[1])
        else bz2.open
    )
    try:
        with opener(fh, "rb") as stream:
            yield from _stream(stream, None, sizes, depth)
    except ARCHIVE_ERRORS:
        return


def _runs(data: bytes) -> Iterator[tuple[tuple[int, int], bytes]]:
    """Each base64 run of ``data`` (its span) and the bytes it decodes to. A wrapped run's last
    line may be none of it (a CSV row's next field after the line break, ``1,<run>\\n2,...``):
    without it, the run is tried again."""
    for m in B64_RUN.finditer(data):
        start, run = m.start(), m.group(0)
        while True:
            wrapped = b"\n" in run or b"\\" in run  # a line break, or JSON's escaped one
            flat = B64_BREAKS.sub(b"", run) if wrapped else run
            if len(flat) >= B64_MIN and not len(flat) % 4:
                with contextlib.suppress(binascii.Error, ValueError):
                    yield (start, start + len(run)), base64.b64decode(flat, validate=True)
                    break
            if not wrapped:
                break
            # Each line break is "\n", "\r\n" or JSON's "\\n": what comes before it, less a "\r".
            run = run[: max(run.rfind(b"\n"), run.rfind(b"\\n"))].rstrip(b"\r\\")


def _pngs(data: bytes) -> Iterator[bytes]:
    """Each PNG lying in ``data`` as it is (a pickle's bytes, an array's), signature to IEND."""
    at = data.find(PNG_MAGIC)
    while at >= 0:
        end = at + len(PNG_MAGIC)
        while end + 12 <= len(data):
            n = int.from_bytes(data[end : end + 4], "big")
            chunk = data[end + 4 : end + 8]
            end += 12 + n
            if chunk == PNG_END:
                if end <= len(data):
                    yield data[at:end]
                break
        at = data.find(PNG_MAGIC, at + 1)


def _parquet(data: bytes, sizes: SizeFilter | None, depth: int) -> Iterator[str]:
    """Every binary value of a Parquet table (compressed in its pages, so not as it is in the
    file), and the base64 runs of its strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError):
        return
    for column in table.columns:
        t = column.type
        binary = pa.types.is_binary(t) or pa.types.is_large_binary(t)
        if not (binary or pa.types.is_string(t) or pa.types.is_large_string(t)):
            continue
        for value in column.to_pylist():
            if isinstance(value, bytes):
                yield from _part(value, sizes, depth)
            elif isinstance(value, str) and len(value) >= B64_MIN:
                for _, raw in _runs(value.encode("utf-8")):
                    yield from _part(raw, sizes, depth)


def inside(
    data: bytes, what: str, *, sizes: SizeFilter | None = None, depth: int = 0
) -> Iterator[str]:
    """The SHA-256 of each file ``data`` (a file of kind ``what``, :func:`kind`) holds inside,
    to :data:`DEPTH`; with ``sizes``, only those of a size it may match."""
    if what in STREAMED:
        yield from inside_file(io.BytesIO(data), what, sizes=sizes, depth=depth)
    elif what == PARQUET:
        yield from _parquet(data, sizes, depth)
    else:
        for _, raw in _runs(data):
            yield from _part(raw, sizes, depth)
        if what == BINARY:
            for png in _pngs(data):
                yield from _part(png, sizes, depth)


def inside_file(
    fh: IO[bytes], what: str, *, sizes: SizeFilter | None = None, depth: int = 0
) -> Iterator[str]:
    """:func:`inside` for an archive or a compressed file read from ``fh`` (seekable), whatever
    its size: member by member."""
    if what == ZIP:
        yield from _zip(fh, sizes, depth)
    elif what == TAR:
        if (t := _open_tar(fh)) is not None:
            yield from _tar(t, sizes, depth)
    elif what == COMPRESSED:
        yield from _decompressed(fh, sizes, depth)


def cut_encoded(path: Path, digests: Container[str]) -> int:
    """Rewrite the text file at ``path`` (atomically, mode kept) without each base64 run that
    decodes to, or to a file holding, content in ``digests``; returns how many went. A
    ``data:`` URL keeps its header, a JSON or CSV field is left empty."""
    data = path.read_bytes()
    cut: list[tuple[int, int]] = []
    for span, raw in _runs(data):
        if any(d in digests for d in _part(raw, None, 0)):
            cut.append(span)
    if not cut:
        return 0
    out, at = [], 0
    for start, end in cut:
        out.append(data[at:start])
        at = end
    out.append(data[at:])
    atomic_write_bytes(path, b"".join(out), mode=path.stat().st_mode & 0o777)
    return len(cut)
