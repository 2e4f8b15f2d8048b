"""Files held inside other files: what the erasure and the verifier look for besides whole files.

A photograph's exact bytes outlive it inside files of an ordinary day: an HTML export of a
notebook (``jupyter nbconvert --to html`` inlines each image as a base64 ``data:`` URL), the
photo base64-encoded in a JSON or CSV file, an archive made for a colleague (zip, tar, gzip,
bzip2, xz; NumPy's ``.npz`` and torch's ``.pt`` are zip files), a pickle or a ``.npy`` array of
its bytes, a Parquet table holding them in a column, a SQLite database in a BLOB or base64 in a
TEXT (:mod:`visage_ml.rights.embedded_db`), a PDF report showing it (img2pdf and pdflatex embed
a JPEG's bytes as they are; reportlab ASCII85-encodes them first) or holding it attached
(``pdfattach``, a portfolio: deflated), a data set packed in an Arrow IPC file (Hugging Face
``datasets``' shards and cache; Feather, its buffers LZ4-compressed by default), HDF5, LMDB or
TFRecord, read as an array is (:mod:`visage_ml.rights.embedded_formats`). :func:`inside` gives
the SHA-256 of each file such a file holds, to be matched as a whole file is
(:mod:`visage_ml.rights.content_scan`).

What a file is comes from its first bytes (:func:`kind`), never from its name: a copy renamed
keeps its content. A text file (UTF-8, no NUL) is read for base64 runs (a ``data:`` URL's, a JSON
or CSV field's, one wrapped in lines or two back to back; of the standard or URL-safe alphabet,
padded or not, its slashes escaped as JSON may write them, ``\\/``); the copies step cuts a
matching run out of it and keeps
the file (:func:`cut_encoded`). In a pickle, an array or a PDF, a PNG (signature to IEND) or a
JPEG (SOI to EOI, :func:`_jpegs`) lies as it is, and is found so; a PDF's ASCII85 streams are
decoded, and those deflated first (``/FlateDecode``: an attached file, a JPEG deflated once more)
inflated and read as an archive's member is (:func:`_flates`); an Arrow file's or stream's byte
and text columns are also read with pyarrow, batch by batch, its LZ4 or ZSTD buffers
decompressed (:func:`_arrow`). An archive, a pickle, an array, a table, a database or a PDF is
not rewritten: one of the project stops the erasure for the operator to decide, a DVC object
goes whole (:func:`~visage_ml.rights.erasure.copies.holds_inside`). Archives and compressed
streams are read member by member, nested ones too (to :data:`DEPTH`). What is larger than
:data:`EMBED_MAX` is not held in memory but looked inside from its file, whatever its size
(:func:`inside_large`): an archive member by member, a text file a window at a time
(:func:`inside_text`), a Parquet table (a data set's shard) a few rows at a time, a pickle, an
array, an Arrow file or a PDF copied to an unnamed file of :data:`SPILL_DIR` (:func:`mapped`:
another program truncating a file mapped kills the process) and that mapped read-only and walked
as bytes are (the system pages it in, the walks let go of what lies behind them; an Arrow file's
batches read in place, one at a time), a database table by table from its file. Wherever it
lies: an
archive's member that large is first written to an unnamed file of :data:`SPILL_DIR`, an object
of a DVC remote (S3) or a git blob, which streams by, to one in a folder of the project
(:class:`~visage_ml.rights.content_scan._Reader`); with no room for it, it is not shown clean
(:class:`NotSpilled`); a database there is copied on to a named one, which SQLite can open
(:func:`_database`). A part of a size nothing sought has is not hashed (``sizes``).

Not looked inside: other binary formats (another database than SQLite, an image container, an
encrypted archive), an Arrow file's columns of numbers compressed (a photo's bytes as a list of
uint8) or one pyarrow cannot read (what lies in it as it is is still found), an HDF5 dataset
chunked and compressed (gzip, lzf), a TFRecord compressed with ZLIB (one compressed with GZIP is
a gzip file), a PDF's streams encrypted or compressed otherwise than deflated first (LZW;
ASCII85, then deflated) and an image it re-encoded (a PNG always is: its pixels are deflated, not
its file), a JPEG with bytes after its EOI (a phone's multi-picture file), a compressed stream
past the point it breaks (a zip's damaged member is passed over, the rest read and the zip not
shown clean; a tar's damaged header is skipped to the next, as GNU tar does; a damaged or
encrypted SQLite database is not shown clean; its
``-wal`` file is read with it, as SQLite does), the rows deleted but left in freed pages and a
``-wal``'s frames SQLite would not apply, base64 of another alphabet than those two (base32,
ASCII85 outside a PDF) or split otherwise than by line breaks, and, of two wrapped back to back
in one run of lines, the first's lines all full, one whose bytes begin as no known file does
where the sizes sought are not known (:func:`_splits`; :func:`encoded` and :func:`cut_encoded`
know none, so such a one found by its size is not cut, and stops the erasure as an archive
does). A re-encoded, resized or cropped face has other bytes wherever it is: no scan by hash
finds it.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import contextlib
import gzip
import hashlib
import io
import itertools
import lzma
import mmap
import os
import re
import shutil
import string
import tarfile
import tempfile
import threading
import zipfile
import zlib
from array import array
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from visage_ml.io import CHUNK, atomic_write_bytes, private_dir
from visage_ml.rights import embedded_formats

# Looked inside in memory up to this size; a larger member is hashed as it streams.
EMBED_MAX = 64 << 20
# Archives within archives (a backup of a folder holding a .npz), base64 of a zip: so deep.
DEPTH = 4
# Archive members held in memory to be looked inside, every scan of the process together (each
# level of nesting, in each scan thread, held one): one beyond is copied to an unnamed file of
# SPILL_DIR and looked inside from there, with the same result (a file of nested archives of
# 60 MiB made the scan hold 480 MiB a thread, 3 GB at once).
MEMORY_MAX = 256 << 20
# Where (:func:`spill_into`, by each scan of a project); None: the system's temporary folder.
SPILL_DIR: Path | None = None
SPILL_FOLDER = Path(".visage")
# What a part shows first, to tell what it is.
SNIFF = 4096

TEXT = "text"
ZIP = "zip"
TAR = "tar"
COMPRESSED = "compressed"
PARQUET = "parquet"
# A pickle, a .npy array, or a data set's container (Arrow, HDF5, LMDB, TFRecord:
# :mod:`~visage_ml.rights.embedded_formats`): the bytes it holds lie in it as they are.
BINARY = "binary"
# A SQLite database: read table by table (:mod:`visage_ml.rights.embedded_db`).
SQLITE = "sqlite"
# A PDF: a JPEG it shows lies in it as it is (a DCTDecode stream), ASCII85-encoded, or deflated
# (an attached file's exact bytes too).
PDF = "pdf"
KINDS = frozenset({TEXT, ZIP, TAR, COMPRESSED, PARQUET, BINARY, SQLITE, PDF})
# Kinds read as a stream from their file: looked inside whatever its size.
STREAMED = frozenset({ZIP, TAR, COMPRESSED})
# Kinds looked inside from their file when too large to hold (:func:`inside_large`): all but a
# database, read from its own path (:mod:`visage_ml.rights.embedded_db`).
LARGE = frozenset({*STREAMED, TEXT, BINARY, PDF, PARQUET, SQLITE})
# Rows of a table read from its file at once (:func:`_table`): a data set's photographs, a few
# MB each at most.
TABLE_ROWS = 64
TABLE_BUFFER = 1 << 20

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
TAR_MAGIC, TAR_AT = b"ustar", 257
COMPRESSED_MAGIC = (b"\x1f\x8b", b"\xfd7zXZ\x00")
BZIP2_MAGIC = re.compile(rb"BZh[1-9]1AY&SY")
PARQUET_MAGIC = b"PAR1"
SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_WAL_MAGIC = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")  # its -wal file (embedded_db)
SQLITE_JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")  # its hot -journal (embedded_db)
NPY_MAGIC = b"\x93NUMPY"
PICKLE_MAGIC = re.compile(rb"\x80[\x02-\x05]")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND"
# A PDF's header, where readers accept it: in its first kilobyte (after a mail's or a web
# server's lines), the file not text (its second line, by custom, of bytes above 127).
PDF_MAGIC, PDF_WITHIN = b"%PDF-", 1024
# A JPEG's SOI marker and the marker after it.
JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_SOI, JPEG_EOI, JPEG_SOS = 0xD8, 0xD9, 0xDA
# Markers without a length: TEM and the restarts.
JPEG_ALONE = frozenset({0x01, *range(0xD0, 0xD8)})
# What ends a scan's entropy-coded data: FF then a code, not 00 (an FF of the data, stuffed),
# a restart (D0-D7: the data goes on) nor FF (a fill byte before the marker).
JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Where entropy-coded data ends is searched for a block at a time (:class:`_ScanEnds`).
SCAN_BLOCK = 64
# A PDF stream's start, and what may follow it ASCII85-encoded (reportlab writes a JPEG so by
# default): the alphabet, ``z`` (four zero bytes) and white space, to ``~>``.
PDF_STREAM = re.compile(rb"stream\r?\n")
A85_RUN = re.compile(rb"[!-uz\s]*")
A85_END = b"~>"
# A PDF stream's keyword after its dictionary (its line break a CR alone for some writers), to
# its ``endstream`` (:func:`_flates`); the dictionary from the ``obj`` that opens it, so far back
# at most, names its filters: deflated first, ``/Filter /FlateDecode`` or ``/Filter
# [/FlateDecode /DCTDecode]``.
PDF_STREAM_AT = re.compile(rb">>\s*stream(?:\r\n|\n|\r)")
PDF_END, PDF_OBJ, PDF_FILTER = b"endstream", b"obj", b"/Filter"
PDF_FLATE = re.compile(rb"/Filter\s*(?:\[\s*)?/FlateDecode(?![^\s/\[\]<>()%])")
PDF_DICT_BACK = 64 << 10
# Deflated data is fed to zlib so much at a time (:class:`_Inflated`).
INFLATE_IN = 64 << 10
# ASCII85 is decoded so many groups at a time (:func:`_a85decode`): Python's decoder holds some
# 90 bytes a character it decodes at once.
A85_GROUPS = re.compile(rb"(?:z|[!-u]{5}){1,65536}")
A85_SPACE = re.compile(rb"\s+")
# A base64 run: at least 64 characters (no photograph is shorter), possibly wrapped in lines
# (``base64`` wraps at 76); its last line as short as it is. Of either alphabet (the standard
# one, or the URL-safe one's ``-`` and ``_`` for ``+`` and ``/``: a JWT's, a web API's), and
# with a backslash: JSON's escaped line breaks and escaped slash (PHP's ``json_encode`` writes
# ``/`` as ``\/``), told from other escapes by :func:`_lines`. A backslash is a letter of the
# class rather than ``\\/`` an alternative: an alternation is read several times slower.
B64_RUN = re.compile(rb"[A-Za-z0-9+/_\\-]{16,}(?:\r?\n[A-Za-z0-9+/_\\-]+)*={0,2}")
# What a run must begin with (:data:`B64_RUN`): so many bytes of its class in a row, found in a
# mask of the bytes first (``bytes.find`` over ``bytes.translate``: the expression tried at each
# byte of a pickle or an array took 14 s a gigabyte, where runs are few).
_RUN_LEAD = 16
_RUN_CLASS = bytes(
    1 if chr(b) in string.ascii_letters + string.digits + "+/_\\-" else 0 for b in range(256)
)
# Where a run ends, in that mask with a line feed as 3 and a carriage return as 2: at a byte of
# no run, a carriage return not before a line feed and a letter, or a line feed not before a
# letter (what :data:`B64_RUN` reads, without its repeated group: the expression held a
# dozen bytes a line of a run to go back to, 100 MB for a text of 8 MB of short lines).
_RUN_MASK = bytes({0x0D: 2, 0x0A: 3}.get(b, c) for b, c in enumerate(_RUN_CLASS))
_RUN_STOP = re.compile(rb"\x00|\x02(?!\x03\x01)|\x03(?!\x01)")
# A run found: its span, as a match (as :data:`B64_RUN` gives it).
_RUN_SPAN = re.compile(rb".*", re.DOTALL)
B64_MIN = 64
# The widest line a wrapper gives (``base64``, MIME: 76; PEM: 64).
WRAP_MAX = 76
# Within a run holding a backslash: a line break, "\n" or "\r\n", itself or escaped (group 1),
# or a backslash that is no escape a base64 text holds (``\"``, ``\t``, ``\u00e9``), which
# ends one base64 text; ``\/`` is a slash.
B64_BREAKS = re.compile(rb"(\r?\n|(?:\\r)?\\n)|\\(?!/)")
# The URL-safe alphabet's letters, read as the standard one's.
URLSAFE = bytes.maketrans(b"-_", b"+/")
# How a file begins (a photograph, an archive, an array: :func:`kind` and the image formats), in
# base64's decoded bytes: a wrapped run of full lines is split where one begins (two
# photographs wrapped back to back, the first ending on a full line, are one run of lines).
FILE_START = re.compile(
    rb"\x89PNG\r\n\x1a\n|\xff\xd8\xff|GIF8[79]a|RIFF....WEBP|II\*\x00|MM\x00\*|PK\x03\x04|"
    rb"\x1f\x8b\x08|\xfd7zXZ\x00|BZh[1-9]1AY&SY|\x93NUMPY|%PDF-|PAR1",
    re.DOTALL,
)
# The first bytes those begin with: the lines of a run that may begin a file are found at once.
FILE_FIRST = re.compile(rb"[\x89\xffGRIMP\x1f\xfdB\x93%]")
# At most so many line boundaries of a wrapped run where a size sought would end are split at
# (each split reads the run again; their first ones, from the run's start).
SPLITS_SIZED = 4
# How far a file's content may expand, all it holds inside read together (an archive's members,
# theirs, a table's columns): what a file of its size holds in earnest, however compressible
# (:data:`INSIDE_RATIO` times its size), and at least :data:`INSIDE_FLOOR`. Beyond that it is
# a bomb, or near enough: not read to its end (which its maker may put a day away) and not
# shown clean either (:class:`TooLarge`).
INSIDE_FLOOR = 4 << 30
INSIDE_RATIO = 100


class TooLarge(Exception):  # noqa: N818 - says what the file is, as ValueError does
    """A file whose content, read inside, expands beyond what its size allows (a zip bomb):
    nothing it holds is shown clean. Never one of :data:`ARCHIVE_ERRORS`, which pass over a
    damaged archive's rest."""


class NotSpilled(TooLarge):
    """A member to look inside that could not be copied to its unnamed file (no room left, a
    private folder this user cannot write): nothing the file holding it holds is shown clean (a
    :class:`TooLarge`, so every caller that stops on one stops on this). Never one of
    :data:`ARCHIVE_ERRORS`: an OSError there ended the archive's read as a damaged archive's
    does, and the member, and every one after it, passed as looked at."""


class _Budget:
    """What is left to read inside one file (:data:`INSIDE_FLOOR`, :data:`INSIDE_RATIO`)."""

    def __init__(self, size: int) -> None:
        self.left = max(INSIDE_FLOOR, INSIDE_RATIO * size)

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise TooLarge


# A part is known to be smaller than anything sought when nothing sought is smaller than this
# (asked size by size, once a scan: :func:`smallest_sought`).
FLOOR_PROBE = 4096
# How base64 of a compressed file begins (the first 12 bits of its magic number): "UE" a zip or
# a Parquet table... what such a file holds may be larger than itself, so it is looked inside
# whatever its size.
B64_EXPANDS = frozenset(
    base64.b64encode(m[:2])[:2] for m in (*(b"PK", b"\x1f\x8b", b"\xfd7", b"BZ"), b"PA")
)


def smallest_sought(sizes: SizeFilter | None) -> int:
    """The size below which nothing is sought (asked of ``sizes`` up to :data:`FLOOR_PROBE`; 0
    when every size is, or ``sizes`` is None). A filter may carry its own (``smallest``)."""
    if sizes is None:
        return 0
    known = getattr(sizes, "smallest", None)
    if isinstance(known, int):
        return known
    return next((n for n in range(FLOOR_PROBE) if sizes.may_match(n)), FLOOR_PROBE)


class Floored:
    """``sizes`` asked once a size, with :func:`smallest_sought` worked out once: one scan's
    filter, shared by every file it reads (threads may each ask a size; the answer is the
    same). What is sought is what it was when the scan began: a table's every value, a text's
    every run, is asked of it, and each asking reads the tombstones' state."""

    def __init__(self, sizes: SizeFilter) -> None:
        self.sizes = sizes
        self._asked: dict[int, bool] = {}
        self._smallest: int | None = None

    def may_match(self, size: int) -> bool:
        known = self._asked.get(size)
        if known is None:
            known = self._asked[size] = self.sizes.may_match(size)
        return known

    @property
    def smallest(self) -> int:
        if self._smallest is None:
            self._smallest = next((n for n in range(FLOOR_PROBE) if self.may_match(n)), FLOOR_PROBE)
        return self._smallest


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
    if first.startswith((SQLITE_MAGIC, *SQLITE_WAL_MAGIC, SQLITE_JOURNAL_MAGIC)):
        return SQLITE
    if first.startswith(PDF_MAGIC) or (PDF_MAGIC in first[:PDF_WITHIN] and not _text(first)):
        return PDF
    if first.startswith(NPY_MAGIC) or PICKLE_MAGIC.match(first):
        return BINARY
    if embedded_formats.holds_as_is(first):  # Arrow, HDF5, LMDB, TFRecord: read as an array is
        return BINARY
    return TEXT if _text(first) else None


class _Memory:
    """What is left of :data:`MEMORY_MAX`, taken by a member before it is read into memory."""

    def __init__(self) -> None:
        self.used = 0
        self.lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self.lock:
            if self.used + n > MEMORY_MAX:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self.lock:
            self.used -= n


_MEMORY = _Memory()


def spill_into(project: Path) -> None:
    """Members spilled out of memory go to the private folder of the project at ``project``
    (:data:`SPILL_FOLDER`, 0700) from now on, in this process: they are its content,
    decompressed (each file has no name, and goes when closed, or with the process)."""
    global SPILL_DIR
    SPILL_DIR = private_dir(Path(project) / SPILL_FOLDER)


def passed_over(sizes: SizeFilter | None, size: int) -> None:
    """Tell ``sizes`` that a part of ``size`` bytes was passed over as smaller than anything
    sought, when it keeps count (``passed_over``: a read whose findings are kept for a later
    scan, which may seek something that small, :class:`~visage_ml.rights.scan_cache.Noted`)."""
    note = getattr(sizes, "passed_over", None)
    if note is not None:
        note(size)


def _digest(data: bytes, sizes: SizeFilter | None) -> list[str]:
    return [hashlib.sha256(data).hexdigest()] if sizes is None or sizes.may_match(len(data)) else []


def _part(data: bytes, sizes: SizeFilter | None, depth: int, budget: _Budget) -> Iterator[str]:
    """A file held inside another: its SHA-256, and what it holds itself; nothing when smaller
    than anything sought and not compressed (a text, a pickle, a tar holds only what is smaller
    than itself: a table's short strings)."""
    if len(data) < smallest_sought(sizes) and base64.b64encode(data[:2])[:2] not in B64_EXPANDS:
        passed_over(sizes, len(data))
        return
    yield from _digest(data, sizes)
    if depth < DEPTH and (what := kind(data[:SNIFF])) is not None:
        yield from inside(data, what, sizes=sizes, depth=depth + 1, budget=budget)


def _stream(
    stream: IO[bytes], size: int | None, sizes: SizeFilter | None, depth: int, budget: _Budget
):
    """A member as it streams: looked inside when small enough, else only hashed (and not
    even read when its size and first bytes show it can be nothing sought). What is read
    (decompressed) is spent from ``budget``."""
    head = stream.read(SNIFF)
    budget.spend(len(head))
    what = kind(head)
    unsought = size is not None and sizes is not None and not sizes.may_match(size)
    if unsought and what is None:
        return
    # Nothing looked inside (a photograph, the last level): hashed as it streams.
    looked = what if depth < DEPTH else None
    held = EMBED_MAX + 1 if size is None else min(size, EMBED_MAX) + 1
    large = size is not None and size > EMBED_MAX
    if looked is None or large or (looked in STREAMED and not _MEMORY.take(held)):
        yield from _streamed(stream, head, looked, sizes, depth, budget)
        return
    try:
        data = head + stream.read(EMBED_MAX + 1 - len(head))
        budget.spend(len(data) - len(head))
        if len(data) <= EMBED_MAX:
            yield from _part(data, sizes, depth, budget)
            return
        # Larger than it said (a compressed stream says nothing): from a file, as one is.
        yield from _streamed(stream, data, looked, sizes, depth, budget)
    finally:
        if looked in STREAMED:
            _MEMORY.give(held)


def _spilling(do: Callable[[], Any]) -> Any:
    """``do()``, an OSError of the spilled file (made, written, flushed) as :class:`NotSpilled`."""
    try:
        return do()
    except OSError as exc:
        raise NotSpilled from exc


def _close(spill: IO[bytes]) -> None:
    with contextlib.suppress(OSError):
        spill.close()


def _streamed(
    stream: IO[bytes],
    head: bytes,
    what: str | None,
    sizes: SizeFilter | None,
    depth: int,
    budget: _Budget,
) -> Iterator[str]:
    """A member, ``head`` read already, hashed as it streams (as :func:`_part` would); one of a
    kind looked inside (``what``: an archive, a table, a pickle... too large to hold, or with
    no memory left to hold it) is copied to an unnamed file of :data:`SPILL_DIR` as it streams,
    and looked inside from there (:func:`inside_large`), whatever its size.

    Raises
    ------
    NotSpilled
        When that file cannot be written.
    """
    h, n = hashlib.sha256(head), len(head)
    with contextlib.ExitStack() as stack:
        spill = None
        if what is not None:
            spill = _spilling(lambda: tempfile.TemporaryFile(dir=SPILL_DIR))  # noqa: SIM115
            # Closed by the stack; its close flushes what was not read back (passed over as too
            # small): lost with it.
            stack.callback(_close, spill)
            _spilling(lambda: spill.write(head))
        for chunk in iter(lambda: stream.read(CHUNK), b""):
            budget.spend(len(chunk))
            h.update(chunk)
            n += len(chunk)
            if spill is not None:
                _spilling(lambda c=chunk: spill.write(c))
        if n < smallest_sought(sizes) and base64.b64encode(head[:2])[:2] not in B64_EXPANDS:
            passed_over(sizes, n)
            return
        if sizes is None or sizes.may_match(n):
            yield h.hexdigest()
        if spill is not None and what is not None:
            _spilling(spill.flush)  # a full disk says so here
            spill.seek(0)
            yield from inside_large(spill, what, sizes=sizes, depth=depth + 1, budget=budget)


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


class DamagedMember(TooLarge):
    """A zip member that could not be read to its end (a broken deflate stream, a local header
    overwritten, a method not supported here), the members after it read: what ``unzip`` still
    extracts of it is not looked at, so nothing the archive holds is shown clean."""


# A zip member's encryption flag: not looked inside (no password), as before.
ZIP_ENCRYPTED = 0x1


def _zip(fh: IO[bytes], sizes: SizeFilter | None, depth: int, budget: _Budget) -> Iterator[str]:
    """Each member read on its own, as ``unzip`` extracts it: one damaged does not hide those
    after it (:class:`DamagedMember` once they are read). A member whose CRC-32 alone is wrong
    is read as ``unzip`` writes it, its bytes as they are (a stored photograph, whole)."""
    try:
        z = zipfile.ZipFile(fh)
    except ARCHIVE_ERRORS:  # no central directory: nothing ``unzip`` extracts either
        return
    damaged = False
    with z:
        for info in z.infolist():
            if info.is_dir() or info.flag_bits & ZIP_ENCRYPTED:
                continue
            try:
                with z.open(info) as member:
                    # zipfile checks the CRC-32 only at the member's end, raising there;
                    # unzip warns, and writes what it read: the same bytes, read here.
                    member._expected_crc = None
                    yield from _stream(member, info.file_size, sizes, depth, budget)
            except ARCHIVE_ERRORS:
                damaged = True
    if damaged:
        raise DamagedMember


def _open_tar(fh: IO[bytes]) -> tarfile.TarFile | None:
    """``fh`` as a tar file (compressed or not), or None when it is none."""
    try:
        t = tarfile.open(fileobj=fh, mode="r:*")  # noqa: SIM115 - closed by _tar
    except ARCHIVE_ERRORS:
        return None
    # A tar (its first header is one): a damaged header after it is skipped to the next one, as
    # GNU tar does when it extracts, not taken for the archive's end (which hid every member
    # after it). Not set for the opening, which would take any compressed file for a tar.
    t.ignore_zeros = True
    return t


def _tar(
    t: tarfile.TarFile, sizes: SizeFilter | None, depth: int, budget: _Budget
) -> Iterator[str]:
    try:
        with t:
            at = t.offset
            while (member := t.next()) is not None:
                # tarfile keeps each header it read (for names looked up later, never here):
                # a tar.xz of a million empty members, 1.2 MB, held 900 MB of them.
                t.members.clear()
                # Passing over a member of a compressed tar decompresses it, read or not; its
                # headers too (and blocks skipped past a damaged one), so that one of billions
                # of empty members stops as a bomb does.
                budget.spend(max(t.offset - at, member.size))
                at = t.offset
                if member.isfile() and (stream := t.extractfile(member)) is not None:
                    yield from _stream(stream, member.size, sizes, depth, budget)
    except ARCHIVE_ERRORS:
        return


def _decompressed(
    fh: IO[bytes], sizes: SizeFilter | None, depth: int, budget: _Budget
) -> Iterator[str]:
    """A gzip, bzip2 or xz file: a compressed tar's members, else the one file it holds."""
    start = fh.tell()
    if (t := _open_tar(fh)) is not None:
        yield from _tar(t, sizes, depth, budget)
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
            yield from _stream(stream, None, sizes, depth, budget)
    except ARCHIVE_ERRORS:
        return


def _wraps(widths: Sequence[int]) -> Iterator[tuple[int, int]]:
    """The lines (``first``, ``last`` + 1) of a run of lines of these ``widths`` that may each
    be one base64 text. A wrapped one is lines of one width, then one no longer (``base64``
    wraps at 76, PEM at 64): each run of lines of one width is tried whole, and with the line
    after it when that is shorter (its last line; else the CSV row's next field,
    ``1,<run>\\n2,...``, or the next photograph's line). A line longer than any wrap is tried
    alone too (a photograph a line, ``base64 -w0``, beside others of its length). Each line is
    in a few tries at most, so a file of short lines is read in linear time (trying every
    shorter prefix of a run was quadratic)."""
    i, n = 0, len(widths)
    while i < n:
        j = i + 1
        while j < n and widths[j] == widths[i]:
            j += 1
        yield i, j
        if widths[i] > WRAP_MAX and j - i > 1:
            yield from ((k, k + 1) for k in range(i, j))
        if j < n and widths[j] < widths[i]:
            yield i, j + 1
        i = j


def _decoded(text: bytes) -> bytes | None:
    """What ``text`` (escapes taken out) decodes to, as base64 of the standard alphabet or of
    the URL-safe one (which of ``+/`` or ``-_`` it holds: a text holding both is base64 of
    neither), its padding there or not (a JWT's is not); None when it is not base64."""
    urlsafe = b"-" in text or b"_" in text
    if urlsafe and (b"+" in text or b"/" in text):
        return None
    missing = -len(text) % 4
    if missing == 3:
        return None
    try:
        return base64.b64decode(
            (text.translate(URLSAFE) if urlsafe else text) + b"=" * missing, validate=True
        )
    except (binascii.Error, ValueError):
        return None


# A run without a backslash is measured so many bytes at a time (each piece split into its
# lines, their lengths kept, the lines let go of at once).
LINES_PIECE = 1 << 20
_PLUS_ONE = (1).__add__
# A line's width while every line is this narrow: a byte (a text of short lines, the one that
# has many); wider ones widen the array.
_NARROW = 255


class _Lines:
    """Lines of a run (:func:`_lines`) that may make up one base64 text: where each begins in
    the bytes read (``starts``), how many characters of the text it holds (``widths``: escapes
    taken out), and where it ends (``ends``; None where each ends ``widths`` after it begins).
    No line is held as bytes of its own: a text of 16-character lines (a log of ids) is a line
    in every 17 bytes, and a bytes object and a few ints a line held 20 times its size; a text
    is taken out only when it is decoded (:meth:`text`)."""

    __slots__ = ("data", "ends", "starts", "widths")

    def __init__(self, data: bytes, starts: array, widths: array, ends: array | None) -> None:
        self.data, self.starts, self.widths, self.ends = data, starts, widths, ends

    def end(self, i: int) -> int:
        """Where line ``i`` ends (its line break, or an escape, after it)."""
        return self.ends[i] if self.ends is not None else self.starts[i] + self.widths[i]

    def text(self, first: int, last: int) -> bytes:
        """The text lines ``first`` to ``last`` - 1 make up: their span, its line breaks (a
        group holds no other escape: a backslash that is none ends it) and escaped slashes
        taken out."""
        span = self.data[self.starts[first] : self.end(last - 1)]
        if self.ends is None:  # no escape: a carriage return is only ever before a line feed
            return span.translate(None, b"\r\n")
        return B64_BREAKS.sub(b"", span).replace(b"\\/", b"/")

    def chars(self, first: int, last: int) -> int:
        """How many characters of the text lines ``first`` to ``last`` - 1 hold (counted over
        their span: each line is in a few tries at most, :func:`_wraps`)."""
        if self.ends is not None:
            return sum(self.widths[first:last])
        s, e = self.starts[first], self.end(last - 1)
        return e - s - self.data.count(b"\n", s, e) - self.data.count(b"\r", s, e)

    def head(self, i: int) -> bytes:
        """The first two characters of line ``i``'s text."""
        s = self.starts[i]
        first = self.data[s : min(s + 4, self.end(i))]
        return (first.replace(b"\\/", b"/") if self.ends is not None else first)[:2]


def _offsets(size: int) -> str:
    """The array type that holds an offset into ``size`` bytes (4 bytes one, not 8, where they
    are under 2 GiB)."""
    return "i" if size < 1 << 31 else "q"


def _lines(data: bytes, start: int, end: int) -> Iterator[_Lines]:
    """The lines of the run (:data:`B64_RUN`) from ``start`` to ``end`` of ``data``, by base64
    text they may make up: a backslash that is no escape base64 holds (a JSON string's ``\\"``)
    ends one. Without a backslash the run is split at once, a piece at a time (the regex is
    slow over a large run); what is kept is a few ints a line in arrays (:class:`_Lines`), the
    run itself not copied."""
    code = _offsets(len(data) + 2)
    if data.find(b"\\", start, end) < 0:
        crlf = data.find(b"\r", start, end) >= 0
        starts, widths, at = array(code, [start]), array("B"), start
        while at <= end:
            stop = data.find(b"\n", min(at + LINES_PIECE, end), end)
            stop = end if stop < 0 else stop  # the piece ends on a line's end
            piece = data[at:stop]
            # Where each next line begins: this one's bytes and its line feed on.
            after = itertools.accumulate(map(_PLUS_ONE, map(len, piece.split(b"\n"))), initial=at)
            starts.extend(itertools.islice(after, 1, None))
            wide = array(
                code, map(len, (piece.replace(b"\r\n", b"\n") if crlf else piece).split(b"\n"))
            )
            if widths.typecode != code and max(wide) > _NARROW:
                widths = array(code, widths)
            widths.extend(wide if widths.typecode == code else iter(wide))
            at = stop + 1
        starts.pop()  # where a line after the last would begin
        yield _Lines(data, starts, widths, None)
        return
    starts, ends, widths, at = array(code), array(code), array(code), start
    for m in itertools.chain(B64_BREAKS.finditer(data, start, end), [None]):
        stop = m.start() if m is not None else end
        starts.append(at)
        ends.append(stop)
        widths.append(stop - at - data.count(b"\\/", at, stop))  # "\\/" is one "/"
        if m is None or m.group(1) is None:
            yield _Lines(data, starts, widths, ends)
            starts, ends, widths = array(code), array(code), array(code)
        if m is not None:
            at = m.end()


def _splits(
    widths: Sequence[int], first: int, last: int, raw: bytes, sizes: SizeFilter | None
) -> Iterator[tuple[int, int, bytes]]:
    """The parts (``first``, ``last`` + 1, bytes) of the base64 text that lines ``first`` to
    ``last`` make up, decoded to ``raw``, that may each be a file: two photographs wrapped one
    after the other, the first ending on a full line, are one run of lines (:func:`_wraps`
    cannot tell them apart). It is split at each full line where a file begins
    (:data:`FILE_START`), and, when ``sizes`` knows what is sought, where a size sought would
    end, from its start or from its end (:data:`SPLITS_SIZED` of them): the splits read the
    run a few times at most, whatever its lines (trying every line was quadratic)."""
    width, lines = widths[first], last - first
    if lines < 2 or width > WRAP_MAX or width % 4:
        return
    per = width // 4 * 3
    # A part begins after full lines only: the last line is one when the run decodes to whole
    # lines of bytes.
    full = lines if widths[last - 1] == width and len(raw) % per == 0 else lines - 1
    cuts = {
        m.start()
        for m in FILE_FIRST.finditer(raw[: full * per : per], 1)  # each full line's first byte
        if FILE_START.match(raw, m.start() * per)
    }
    parts = list(itertools.pairwise(sorted({0, *cuts, lines})))
    if sizes is not None and smallest_sought(sizes) > 0:  # else every size may be sought
        sized = (
            k
            for k in range(1, min(full + 1, lines))
            if sizes.may_match(k * per) or sizes.may_match(len(raw) - k * per)
        )
        for k in itertools.islice(sized, SPLITS_SIZED):
            parts += [(0, k), (k, lines)]
    for a, b in dict.fromkeys(parts):
        if (a, b) != (0, lines):
            yield first + a, first + b, raw[a * per : b * per if b < lines else len(raw)]


def _run_matches(data: bytes) -> Iterator[re.Match[bytes]]:
    """``B64_RUN.finditer(data)``, the same matches, each found only where :data:`_RUN_LEAD`
    bytes of its class begin (the first such place from where the last ended is where the
    expression would match next), and ended where :data:`_RUN_STOP` finds (in memory of the
    mask, however many lines the run has)."""
    if not isinstance(data, bytes):  # a mapped file: as it is
        yield from B64_RUN.finditer(data)
        return
    mask, lead, at = data.translate(_RUN_MASK), b"\x01" * _RUN_LEAD, 0
    while (at := mask.find(lead, at)) >= 0:
        stop = _RUN_STOP.search(mask, at)
        end = len(data) if stop is None else stop.start()
        end += data.startswith(b"=", end) + data.startswith(b"==", end)  # its padding
        m = _RUN_SPAN.match(data, at, end)
        assert m is not None  # ".*" matches any span
        yield m
        at = end


def _runs(data: bytes, sizes: SizeFilter | None = None) -> Iterator[tuple[tuple[int, int], bytes]]:
    """Each base64 text of ``data`` (its span) and the bytes it decodes to: a run of the
    alphabet (either, :func:`_decoded`), or of lines of it (:func:`_wraps`: a wrapped one, one a
    line, the next row's field after it; :func:`_splits`: two wrapped back to back). One that
    decodes to fewer bytes than anything ``sizes`` seeks is passed over undecoded, unless it
    begins as a compressed file does (:data:`B64_EXPANDS`): nothing of that size is sought,
    and a text, a pickle or a tar holds only what is smaller than itself (a log's hex ids,
    each a valid base64 run)."""
    below = smallest_sought(sizes)

    def small(n: int, text: bytes) -> bool:
        if n * 3 // 4 < below and text[:2].translate(URLSAFE) not in B64_EXPANDS:
            passed_over(sizes, n * 3 // 4)
            return True
        return False

    for m in _run_matches(data):
        start, end = m.span()
        if data.find(b"\n", start, end) < 0 and data.find(b"\\", start, end) < 0:  # one line
            run = m.group(0)
            if (
                len(run) >= B64_MIN
                and not small(len(run), run)
                and (raw := _decoded(run)) is not None
            ):
                yield m.span(), raw
            continue
        # Read where it lies (bytes: not copied), or a mapped file's run copied.
        held, at = (data, 0) if isinstance(data, bytes) else (m.group(0), start)
        for lines in _lines(held, start - at, end - at):
            widths = lines.widths
            done: set[tuple[int, int]] = set()
            for first, last in _wraps(widths):
                n = lines.chars(first, last)
                if n < B64_MIN or small(n, lines.head(first)):
                    continue
                raw = _decoded(lines.text(first, last))
                if raw is None:
                    continue
                for a, b, part in [(first, last, raw), *_splits(widths, first, last, raw, sizes)]:
                    if (a, b) in done:
                        continue
                    done.add((a, b))
                    n = lines.chars(a, b)
                    if n < B64_MIN or small(n, lines.head(a)):
                        continue
                    yield (at + lines.starts[a], at + lines.end(b - 1)), part


class _Map(mmap.mmap):
    """A file too large to hold, mapped read-only (:func:`inside_large`): the walks below read
    it as they read bytes (find, slices, regular expressions), the system pages it in as they
    go, and what lies behind them is let go of (:func:`_let_go`)."""

    behind = 0  # what is let go of: up to here (page-aligned)


# What the walks read: bytes held, or a file mapped.
Buffer = bytes | _Map
# A mapped file's pages behind a walk are let go of this much at a time (each a system call),
# and a search for a signature goes this far at a time, so that it lets go of them too.
LET_GO = 16 << 20


def _let_go(data: Buffer, before: int) -> None:
    """A mapped file's pages before ``before`` are read no more: out of the process's memory
    (they are the file's, unchanged: read again, if ever, from it). Nothing for bytes."""
    if not isinstance(data, _Map) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    if before < data.behind:  # a walk from the start again: it reads them anew
        data.behind = 0
    if before - data.behind >= LET_GO:
        upto = before - before % mmap.PAGESIZE
        data.madvise(mmap.MADV_DONTNEED, data.behind, upto - data.behind)
        data.behind = upto


def _find(data: Buffer, magic: bytes, start: int) -> int:
    """``data.find(magic, start)``; over a mapped file :data:`LET_GO` at a time, letting go of
    what it passed (a signature may be a gigabyte on, or nowhere)."""
    if not isinstance(data, _Map):
        return data.find(magic, start)
    size = len(data)
    while start < size:
        stop = min(start + LET_GO, size)
        at = data.find(magic, start, min(stop + len(magic) - 1, size))
        if at >= 0:
            return at
        start = stop
        _let_go(data, start)
    return -1


class _Marks:
    """Offsets marked, a bit each (:func:`_pngs`, :func:`_jpegs`: where no walk leads on), kept
    in pages made as one is first marked: a file's walks keep what they mark, not a bit for each
    byte of it (an eighth of a mapped file of gigabytes)."""

    PAGE = 1 << 15  # offsets a page holds (4 KiB of bits)

    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}

    def __contains__(self, at: int) -> bool:
        page = self.pages.get(at // self.PAGE)
        return page is not None and bool(page[(at % self.PAGE) >> 3] & (1 << (at & 7)))

    def update(self, offsets: Iterable[int]) -> None:
        for at in offsets:
            page = self.pages.get(at // self.PAGE)
            if page is None:
                page = self.pages[at // self.PAGE] = bytearray(self.PAGE >> 3)
            page[(at % self.PAGE) >> 3] |= 1 << (at & 7)


# Where a PNG or a JPEG may begin, found in C over the whole buffer: a PNG's signature and the
# chunk every PNG begins with (IHDR; CgBI before it in an iPhone's), a JPEG's SOI and a marker
# one may begin with (T.81 B.2: tables or miscellaneous DQT, DHT, DAC, DRI, COM, APPn; a frame's
# SOFn, or DHP; JPEG-LS's SOF55 and LSE). A signature repeated (``FF D8`` a gigabyte long) is
# none: each was walked from in Python, 7 s for 16 MiB.
PNG_START = re.compile(rb"\x89PNG\r\n\x1a\n\x00\x00\x00(?:\rIHDR|\x04CgBI)")
JPEG_START = re.compile(rb"\xff\xd8\xff[\xc0-\xc7\xc9-\xcf\xdb\xdd\xde\xe0-\xef\xf7\xf8\xfe]")
# A file holds at most so many image starts walked from, and one more for each so many bytes of
# it (a file of photographs: one or two a photograph, an EXIF thumbnail in each); beyond that it
# is crafted (valid headers repeated) and not walked to its end (:class:`TooManyStarts`).
STARTS_FLOOR, STARTS_EVERY = 4096, 256


class TooManyStarts(TooLarge):
    """A file holding more image starts than any file of images has (a PNG's or a JPEG's
    header, valid, repeated every few bytes: :data:`STARTS_EVERY`): not walked from each to its
    end, which took minutes a gigabyte in every scan, and not shown clean either: a
    :class:`TooLarge`, so the erasure stops on it, doctor lists it as expands_inside and the
    verifier fails it."""


def _search(data: Buffer, start: re.Pattern[bytes], at: int) -> int:
    """Where ``start`` (:data:`PNG_START`, :data:`JPEG_START`: 16 bytes at most) first matches
    in ``data`` from ``at``, or -1; over a mapped file :data:`LET_GO` at a time, as
    :func:`_find`."""
    size = len(data)
    while at < size:
        stop = min(at + LET_GO, size) if isinstance(data, _Map) else size
        m = start.search(data, at, min(stop + 15, size))
        if m is not None:
            return m.start()
        at = stop
        _let_go(data, at)
    return -1


def _starts_allowed(data: Buffer) -> int:
    """How many image starts a walk of ``data`` goes from (:data:`STARTS_FLOOR`)."""
    return STARTS_FLOOR + len(data) // STARTS_EVERY


def _chunk_length(data: bytes, at: int) -> int:
    """The length a PNG chunk at ``at`` declares (its first 4 bytes, big-endian)."""
    return int.from_bytes(data[at : at + 4], "big")


def _pngs(data: bytes) -> Iterator[bytes]:
    """Each PNG lying in ``data`` as it is (a pickle's bytes, an array's), signature to IEND.
    A chunk walked from one signature that led to no IEND leads to none from the next either:
    it is not walked again (crafted signatures, each followed by many tiny chunks, made the
    walk quadratic). Only a signature an IHDR follows is walked from (:data:`PNG_START`), and
    no more of them than a file of its size holds (:class:`TooManyStarts`)."""
    dead = _Marks()  # chunk offsets from which no IEND is reached
    allowed = _starts_allowed(data)
    at = _search(data, PNG_START, 0)
    while at >= 0:
        allowed -= 1
        if allowed < 0:
            raise TooManyStarts
        _let_go(data, at)
        end, walked, found = at + len(PNG_MAGIC), [], False
        while end + 12 <= len(data) and end not in dead:
            walked.append(end)
            n = _chunk_length(data, end)
            chunk = data[end + 4 : end + 8]
            end += 12 + n
            if chunk == PNG_END:
                found = end <= len(data)
                break
        if found:
            yield data[at:end]
            at = _search(data, PNG_START, end)
            continue
        dead.update(walked)
        at = _search(data, PNG_START, at + 1)


def _marker(data: bytes, start: int, end: int) -> int:
    """Where the first marker ending entropy-coded data lies in ``data[start:end]``
    (:data:`JPEG_MARKER`), or -1."""
    m = JPEG_MARKER.search(data, start, end)
    return m.start() if m is not None else -1


class _ScanEnds:
    """Where a JPEG scan's entropy-coded data that begins at an offset of ``data`` ends: the
    first marker at or after it (``len(data)``: none). Each block of :data:`SCAN_BLOCK` bytes
    keeps the first marker at or after its start, found once; an offset is then answered by
    the rest of its block at most. A search from each scan's start to its end went over the
    same bytes once a walk (crafted scans, each from its own SOI and all ending in one long
    stretch without a marker, made it quadratic)."""

    def __init__(self, data: Buffer) -> None:
        self.data = data
        self.base = 0  # the first block kept (those before it are asked no more)
        self.first = array("q")  # by block, from ``base``: the blocks known so far

    def _know(self, block: int) -> None:
        data, first = self.data, self.first
        while self.base + len(first) <= block:
            at = _marker(data, (self.base + len(first)) * SCAN_BLOCK, len(data))
            at = at if at >= 0 else len(data)
            # Every block up to the marker's has it as its first.
            first.extend(array("q", [at]) * (at // SCAN_BLOCK + 1 - self.base - len(first)))

    def forget(self, before: int) -> None:
        """No offset before ``before`` is asked again (a walk goes on from a later SOI): the
        blocks wholly before it go once they are half of those kept, so that what is kept of a
        large file is what lies ahead of the walk (each block goes once: linear still)."""
        drop = min(before // SCAN_BLOCK - self.base, len(self.first))
        if drop > 0 and 2 * drop >= len(self.first):
            del self.first[:drop]
            self.base += drop

    def _first(self, block: int) -> int:
        return self.first[block - self.base]

    def end(self, at: int) -> int:
        block = at // SCAN_BLOCK
        self._know(block)
        if (found := self._first(block)) >= at:
            return found
        # A marker before ``at`` in its block: the rest of it (a marker on its last byte too).
        after = (block + 1) * SCAN_BLOCK
        if (found := _marker(self.data, at, after + 1)) >= 0:
            return found
        if after >= len(self.data):
            return len(self.data)
        self._know(block + 1)
        return self._first(block + 1)


def _segment_length(data: bytes, at: int) -> int:
    """The length a JPEG marker segment at ``at`` declares (after its marker, big-endian)."""
    return int.from_bytes(data[at + 2 : at + 4], "big")


def _jpegs(data: bytes) -> Iterator[bytes]:
    """Each JPEG lying in ``data`` as it is (a pickle's bytes, an array's, a PDF's image), SOI
    to EOI: marker segments by their lengths (an EXIF thumbnail, a JPEG itself, lies within
    one: its EOI is not the photograph's), each scan's entropy-coded data to the marker after
    it (stuffed FF00 and restarts within), the scans of a progressive one one after the
    other. A segment walked from one SOI that led to no EOI leads to none from the next
    either: it is not walked again (as :func:`_pngs`). Fill bytes before a segment's marker
    (no encoder writes them) end the walk; before the marker after a scan they are passed
    over. A JPEG with bytes after its EOI (a phone's multi-picture file) is not found. Only an
    SOI a marker that may begin a JPEG follows is walked from (:data:`JPEG_START`), and no more
    of them than a file of its size holds (:class:`TooManyStarts`)."""
    dead = _Marks()  # offsets from which no EOI is reached
    ends: _ScanEnds | None = None
    size = len(data)
    allowed = _starts_allowed(data)
    at = _search(data, JPEG_START, 0)
    while at >= 0:
        allowed -= 1
        if allowed < 0:
            raise TooManyStarts
        _let_go(data, at)
        if ends is not None:
            ends.forget(at)
        end, walked, found = at + 2, [], False
        while end + 2 <= size and end not in dead:
            walked.append(end)
            code = data[end + 1]
            if data[end] != 0xFF or code in (0x00, 0xFF, JPEG_SOI):
                break
            if code == JPEG_EOI:
                end, found = end + 2, True
                break
            if code in JPEG_ALONE:
                end += 2
                continue
            n = _segment_length(data, end)
            if n < 2 or end + 2 + n > size:
                break
            end += 2 + n
            if code == JPEG_SOS:
                ends = ends if ends is not None else _ScanEnds(data)
                end = ends.end(end)
        if found:
            yield data[at:end]
            at = _search(data, JPEG_START, end)
            continue
        dead.update(walked)
        at = _search(data, JPEG_START, at + 1)


def _a85(data: bytes) -> Iterator[bytes]:
    """What each ASCII85-encoded stream of a PDF decodes to (a JPEG, as reportlab writes it by
    default). A run of the alphabet is read once, whatever ``stream`` words lie within it
    (reading from each to the run's end was quadratic); it is the last of them that the
    encoded stream begins after (an uncompressed content stream and the dictionary that
    follows it are of the alphabet too)."""
    at = 0
    while (m := PDF_STREAM.search(data, at)) is not None:
        run = A85_RUN.match(data, m.end())
        end = run.end() if run is not None else m.end()
        at = max(end, m.end())
        _let_go(data, m.start())
        if data[end : end + len(A85_END)] != A85_END:  # a mapped file has no startswith
            continue
        *_, last = PDF_STREAM.finditer(data, m.start(), end)
        start = last.end() + 2 if data[last.end() : last.end() + 2] == b"<~" else last.end()
        if end - start >= B64_MIN:
            with contextlib.suppress(ValueError):
                yield _a85decode(data[start:end])


class _Inflated:
    """A deflated PDF stream's content (``data[start:end]``), inflated as it is read
    (:func:`_stream` reads it as an archive's member): ``read(n)`` gives ``n`` bytes, fewer
    where the deflate data ends or breaks (what it gave until then is what a reader shows). Fed
    :data:`INFLATE_IN` bytes at a time and never asked more than ``n`` out: a deflate bomb is
    spent from the budget a part at a time, not held."""

    def __init__(self, data: Buffer, start: int, end: int) -> None:
        self.data, self.at, self.end = data, start, end
        self.z = zlib.decompressobj()
        self.tail = b""
        self.done = False

    def read(self, n: int) -> bytes:
        out: list[bytes] = []
        got = 0
        while got < n and not self.done:
            if not self.tail:
                if self.at >= self.end:
                    break
                stop = min(self.at + INFLATE_IN, self.end)
                self.tail = bytes(self.data[self.at : stop])
                _let_go(self.data, self.at)
                self.at = stop
            try:
                part = self.z.decompress(self.tail, n - got)
            except zlib.error:
                self.done = True
                break
            self.tail = self.z.unconsumed_tail
            self.done = self.z.eof
            out.append(part)
            got += len(part)
        return b"".join(out)


def _flates(data: Buffer) -> Iterator[_Inflated]:
    """Each stream of a PDF whose dictionary names ``/FlateDecode`` as its first filter (an
    attached file, ``/EmbeddedFile``: its exact bytes; a JPEG ``[/FlateDecode /DCTDecode]``),
    to be inflated as it is read. A stream runs from its ``stream`` keyword to the
    ``endstream`` after it, and the walk goes on from there: each byte is inflated once at
    most (``stream`` keywords within deflated data, each inflated to the file's end, made it
    quadratic). Its dictionary is what lies before the keyword, from the ``obj`` that opens it
    (:data:`PDF_DICT_BACK` at most)."""
    at = 0
    while (m := PDF_STREAM_AT.search(data, at)) is not None:
        _let_go(data, m.start())
        end = _find(data, PDF_END, m.end())
        end = end if end >= 0 else len(data)
        back = max(at, m.start() - PDF_DICT_BACK)
        opened = data.rfind(PDF_OBJ, back, m.start())
        head = bytes(data[max(back, opened) : m.start()])
        at = max(end + len(PDF_END), m.end())
        named = head.rfind(PDF_FILTER)
        if named >= 0 and PDF_FLATE.match(head, named):
            yield _Inflated(data, m.end(), end)


def _a85decode(encoded: bytes) -> bytes:
    """:func:`base64.a85decode` of ``encoded`` (white space in it ignored), a part of
    :data:`A85_GROUPS` at a time: in memory of about twice what it decodes to (a stream of
    ``z``, four zero bytes a character, held 6 GB for a PDF of 64 MiB decoded at once).

    Raises
    ------
    ValueError
        When ``encoded`` is no ASCII85.
    """
    text = A85_SPACE.sub(b"", encoded)
    parts, at = [], 0
    while (m := A85_GROUPS.match(text, at)) is not None:
        parts.append(base64.a85decode(m[0]))
        at = m.end()
    parts.append(base64.a85decode(text[at:]))
    return b"".join(parts)


def _holds_bytes(t: Any) -> bool:  # a pyarrow DataType (pyarrow is imported late)
    """Whether a Parquet column of arrow type ``t`` can hold bytes or text: binary or string of
    any width, or a dictionary, list, struct or map with such values."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return _holds_bytes(t.value_type)
    if isinstance(t, pa.ExtensionType):
        return _holds_bytes(t.storage_type)
    checks = (
        "is_binary",
        "is_large_binary",
        "is_fixed_size_binary",
        "is_binary_view",
        "is_string",
        "is_large_string",
        "is_string_view",
    )
    if any(getattr(pa.types, c, lambda _: False)(t) for c in checks):
        return True
    return any(_holds_bytes(t.field(i).type) for i in range(t.num_fields))


def _values(value: object) -> Iterator[bytes | str]:
    """The bytes and strings in a value of a Parquet column, nested ones too."""
    if isinstance(value, bytes | str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _values(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _values(v)


def _column_values(column: Any) -> list[bytes]:
    """The bytes and strings (as UTF-8 bytes, or as stored when they are not UTF-8) a Parquet
    column holds, nested ones too, each once (a category, a repeated value)."""
    import pyarrow as pa

    t = column.type
    flat = t.value_type if pa.types.is_dictionary(t) else t
    if not pa.types.is_nested(flat.storage_type if isinstance(flat, pa.ExtensionType) else flat):
        # Cast to bytes: a string column a writer left without checking may hold any bytes.
        values: Iterator[object] = iter(column.cast(pa.large_binary()).to_pylist())
    else:
        values = _values(column.to_pylist())
    return list(dict.fromkeys(v.encode("utf-8") if isinstance(v, str) else v for v in values if v))


def _parquet(data: bytes, sizes: SizeFilter | None, depth: int, budget: _Budget) -> Iterator[str]:
    """:func:`_table` of a table held in memory: read at once."""
    yield from _table(io.BytesIO(data), sizes, depth, budget, rows=None)


def _table(
    source: IO[bytes], sizes: SizeFilter | None, depth: int, budget: _Budget, *, rows: int | None
) -> Iterator[str]:
    """Every binary value of a Parquet table (compressed in its pages, so not as it is in the
    file), and the base64 runs of its strings; only the columns that can hold them are read
    (numbers, an embedding, are not). What it expands to is spent from ``budget`` before it is
    read (a table of one value repeated is a bomb too); a column that cannot be read (a
    string that is not UTF-8, as a writer that does not check leaves it) is passed over, the
    others read. ``rows``: read that many rows at a time, row group by row group (a table too
    large to hold, read from its file: a data set's shard of gigabytes); None: at once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    errors = (pa.ArrowException, OSError, ValueError)
    try:
        # From a file: read as it is asked for, a buffer at a time (pre-buffering held about
        # one and a half times the table's size at its peak, 450 MB for 300 MB).
        reading = {} if rows is None else {"pre_buffer": False, "buffer_size": TABLE_BUFFER}
        table = pq.ParquetFile(source, **reading)
        meta = table.metadata
        budget.spend(sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)))
        schema = table.schema_arrow
        wanted = [f.name for f in schema if _holds_bytes(f.type)]
        if not wanted:
            return
        # Columns by name: a table whose names repeat is read whole.
        unique = len(set(schema.names)) == len(schema.names)
        columns = wanted if unique else None
        parts: Iterator[Any] = (
            iter([table.read(columns=columns)])
            if rows is None
            else table.iter_batches(batch_size=rows, columns=columns)
        )
    except errors:
        return
    while True:
        try:
            read = next(parts, None)
        except errors:  # damaged past here: what was read stays looked at
            return
        if read is None:
            return
        yield from _table_values(read, sizes, depth, budget)


def _table_values(
    read: Any, sizes: SizeFilter | None, depth: int, budget: _Budget
) -> Iterator[str]:
    """What the columns of ``read`` (a pyarrow table, or a batch of its rows) hold."""
    import pyarrow as pa

    below = smallest_sought(sizes)
    for column in read.columns:
        if not _holds_bytes(column.type):
            continue
        try:
            values = _column_values(column)
        except (pa.ArrowException, ValueError):
            continue
        for value in values:
            yield from _part(value, sizes, depth, budget)
            if len(value) >= B64_MIN and len(value) < below and kind(value[:SNIFF]) == TEXT:
                # Too short to be sought itself (so not looked inside by _part): its base64.
                for _, raw in _runs(value, sizes):
                    yield from _part(raw, sizes, depth, budget)


def _arrow(
    data: Buffer, form: str, sizes: SizeFilter | None, depth: int, budget: _Budget
) -> Iterator[str]:
    """What the byte and text columns of an Arrow file or stream (``form``:
    :func:`~visage_ml.rights.embedded_formats.arrow`) hold, read with pyarrow record batch by
    record batch (decompressed: Feather's LZ4, ZSTD), :data:`TABLE_ROWS` rows at a time, as a
    Parquet table's are. What its batches decompress to is spent from ``budget`` before any is
    read (:func:`~visage_ml.rights.embedded_formats.arrow_expands`). ``data`` held, or a file
    mapped (read in place: a batch uncompressed is not copied). One pyarrow cannot read (cut
    short, damaged) is read as far as it can be; what lies in it as it is, the raw walk finds
    (:func:`inside`)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    try:
        expands, batches = embedded_formats.arrow_expands(data, form)
    except ValueError:
        return
    budget.spend(expands)
    errors = (pa.ArrowException, OSError, ValueError)
    opener = ipc.open_file if form == embedded_formats.ARROW_FILE else ipc.open_stream
    try:
        source = pa.py_buffer(data)
        schema = opener(pa.BufferReader(source)).schema
        _ = schema.names  # a name that is no UTF-8 (damaged) raises here, not at each batch
        # Only the columns that can hold bytes are decompressed (numbers, an embedding, are not).
        wanted = [i for i, f in enumerate(schema) if _holds_bytes(f.type)]
        if not wanted:
            return
        options = ipc.IpcReadOptions(included_fields=wanted)
        reader = opener(pa.BufferReader(source), options=options)
        read: Iterator[Any] = (
            (reader.get_batch(i) for i in range(batches))
            if form == embedded_formats.ARROW_FILE
            else itertools.islice(reader, batches)
        )
    except errors:
        return
    while True:
        try:
            batch = next(read, None)
            if batch is not None:
                # A batch is checked whole before a value of it is read: pyarrow reads what a
                # damaged one's offsets say (a length of -2^60 aborted the process, an offset
                # past its buffer raised SystemError).
                batch.validate(full=True)
        except errors:  # damaged past here: what was read stays looked at
            return
        if batch is None:
            return
        for at in range(0, batch.num_rows, TABLE_ROWS):
            yield from _table_values(batch.slice(at, TABLE_ROWS), sizes, depth, budget)


def inside(
    data: bytes,
    what: str,
    *,
    sizes: SizeFilter | None = None,
    depth: int = 0,
    budget: _Budget | None = None,
) -> Iterator[str]:
    """The SHA-256 of each file ``data`` (a file of kind ``what``, :func:`kind`) holds inside,
    to :data:`DEPTH`; with ``sizes``, only those of a size it may match.

    Raises
    ------
    TooLarge
        When what it holds expands beyond what its size allows (``budget``: that of the file
        it lies in, else its own).
    """
    budget = budget if budget is not None else _Budget(len(data))
    if what in STREAMED:
        yield from inside_file(io.BytesIO(data), what, sizes=sizes, depth=depth, budget=budget)
    elif what == PARQUET:
        yield from _parquet(data, sizes, depth, budget)
    elif what == SQLITE:
        from visage_ml.rights import embedded_db  # it reads a table's values as _part does

        yield from embedded_db.inside_db(data, sizes=sizes, depth=depth, budget=budget)
    else:
        for _, raw in _runs(data, sizes):
            yield from _part(raw, sizes, depth, budget)
        if what in (BINARY, PDF):
            for found in itertools.chain(_pngs(data), _jpegs(data)):
                yield from _part(found, sizes, depth, budget)
        yield from _compressed(data, what, sizes, depth, budget)


def _compressed(
    data: Buffer, what: str, sizes: SizeFilter | None, depth: int, budget: _Budget
) -> Iterator[str]:
    """What a PDF's ASCII85 and deflated streams and an Arrow file's batches hold, decoded
    (:func:`inside`, :func:`_mapped`); what is decoded is spent from ``budget``."""
    if what == PDF:
        for decoded in _a85(data):
            budget.spend(len(decoded))
            yield from _part(decoded, sizes, depth, budget)
        for stream in _flates(data):
            yield from _stream(stream, None, sizes, depth, budget)
    elif what == BINARY and (form := embedded_formats.arrow(bytes(data[:SNIFF]))) is not None:
        yield from _arrow(data, form, sizes, depth, budget)


# The bytes a base64 run holds (:data:`B64_RUN`: either alphabet, padding, line breaks, JSON's
# escapes): a large file is read in windows split at the last byte of a window not among them
# (found from its end: a regular expression tried at each byte of the window took a second for
# 20 MB of a pickle).
_RUN_BYTES = (string.ascii_letters + string.digits + "+/_-=\r\n\\").encode()


def _file_budget(fh: IO[bytes]) -> _Budget:
    """The budget of what the file ``fh`` holds from where it stands (its size from there)."""
    at = fh.tell()
    size = fh.seek(0, io.SEEK_END) - at
    fh.seek(at)
    return _Budget(size)


def inside_text(
    fh: IO[bytes],
    *,
    sizes: SizeFilter | None = None,
    depth: int = 0,
    budget: _Budget | None = None,
) -> Iterator[str]:
    """:func:`inside` for a text file too large to hold whole (over :data:`EMBED_MAX`), read
    from ``fh`` a window at a time: each window ends at its last byte no base64 run holds, what
    follows read with the next (a run is never split, unless one run is longer than a
    window)."""
    budget = _file_budget(fh) if budget is None else budget
    carry = b""
    while block := fh.read(EMBED_MAX):
        buf = carry + block
        last = len(buf.rstrip(_RUN_BYTES)) - 1  # -1: none
        cut = last + 1 if last >= 0 and len(buf) - last <= EMBED_MAX else 0
        cut = cut or len(buf)
        yield from inside(buf[:cut], TEXT, sizes=sizes, depth=depth, budget=budget)
        carry = buf[cut:]
    if carry:
        yield from inside(carry, TEXT, sizes=sizes, depth=depth, budget=budget)


def inside_file(
    fh: IO[bytes],
    what: str,
    *,
    sizes: SizeFilter | None = None,
    depth: int = 0,
    budget: _Budget | None = None,
) -> Iterator[str]:
    """:func:`inside` for an archive or a compressed file read from ``fh`` (seekable), whatever
    its size: member by member.

    Raises
    ------
    TooLarge
        As :func:`inside`.
    """
    budget = _file_budget(fh) if budget is None else budget
    if what == ZIP:
        yield from _zip(fh, sizes, depth, budget)
    elif what == TAR:
        if (t := _open_tar(fh)) is not None:
            yield from _tar(t, sizes, depth, budget)
    elif what == COMPRESSED:
        yield from _decompressed(fh, sizes, depth, budget)


def inside_large(
    fh: IO[bytes],
    what: str,
    *,
    sizes: SizeFilter | None = None,
    depth: int = 0,
    budget: _Budget | None = None,
) -> Iterator[str]:
    """:func:`inside` for a file too large to hold (over :data:`EMBED_MAX`; one of
    :data:`LARGE`), read from ``fh``, whatever its size: an archive member by member
    (:func:`inside_file`), a text file a window at a time (:func:`inside_text`), a table a few
    rows at a time (:func:`_table`); a pickle, an array, an Arrow file or a PDF (``fh`` a file
    of the system, read from its start) is mapped, read-only (a copy of it: :func:`mapped`),
    and walked as bytes held are, the system paging it in and the walks letting go of what lies
    behind them; its base64 runs a window at a time, an Arrow file's batches one at a time, a
    PDF's deflated streams inflated a part at a time.

    Raises
    ------
    TooLarge
        As :func:`inside`; :class:`NotSpilled` when a pickle's, an array's or a PDF's copy cannot
        be written.
    """
    budget = _file_budget(fh) if budget is None else budget
    if what in STREAMED:
        yield from inside_file(fh, what, sizes=sizes, depth=depth, budget=budget)
    elif what == TEXT:
        yield from inside_text(fh, sizes=sizes, depth=depth, budget=budget)
    elif what == PARQUET:
        yield from _table(fh, sizes, depth, budget, rows=TABLE_ROWS)
    elif what in (BINARY, PDF):
        yield from _mapped(fh, what, sizes, depth, budget)
    elif what == SQLITE:
        yield from _database(fh, sizes)


def _database(fh: IO[bytes], sizes: SizeFilter | None) -> Iterator[str]:
    """A database too large to hold, open as ``fh`` at its start (an archive's member, a git
    blob or a remote's object, spilled to an unnamed file): SQLite opens only a file by its
    name, so it is copied to a named one of :data:`SPILL_DIR`, read table by table
    (read-only, immutable) and removed. Were the process killed, the copy left is in the
    project, where the next scan finds it (it was only hashed, what it held passed as looked
    at).

    Raises
    ------
    NotSpilled
        When the copy cannot be written.
    """
    from visage_ml.rights import embedded_db

    with contextlib.ExitStack() as stack:
        named = _spilling(
            lambda: stack.enter_context(
                tempfile.NamedTemporaryFile(dir=SPILL_DIR, prefix="scan-", suffix=".db")
            )
        )
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            _spilling(lambda c=chunk: named.write(c))
        _spilling(named.flush)
        yield from embedded_db.inside_path(Path(named.name), sizes=sizes)


def _mapped(
    fh: IO[bytes], what: str, sizes: SizeFilter | None, depth: int, budget: _Budget
) -> Iterator[str]:
    """:func:`inside` of a pickle, an array, an Arrow file or a PDF read from its file
    (:func:`inside_large`): the same base64 runs, PNGs, JPEGs, PDF streams decoded and Arrow
    batches, in the same order."""
    fh.seek(0)
    yield from inside_text(fh, sizes=sizes, depth=depth, budget=budget)  # its base64 runs
    with mapped(fh) as data:
        for found in itertools.chain(_pngs(data), _jpegs(data)):
            yield from _part(found, sizes, depth, budget)
        yield from _compressed(data, what, sizes, depth, budget)


@contextlib.contextmanager
def mapped(fh: IO[bytes]) -> Iterator[Buffer]:
    """The bytes of ``fh`` (a file of the system, read from its start) mapped read-only; b""
    when it is empty. A file with a name is copied first, to an unnamed file of
    :data:`SPILL_DIR`, and the copy mapped: another program that truncates a file mapped while
    it is read (``np.save`` or ``pickle.dump`` over it, whose ``open("wb")`` empties it first;
    SQLite's checkpoint truncating its ``-wal``) has the system send SIGBUS at the first page
    past its new end, which kills the whole process (an erasure half done, a verifier with no
    report). An unnamed file (one spilled already) no other program can open is mapped itself.

    Raises
    ------
    NotSpilled
        When the copy cannot be written (no room left).
    """
    with contextlib.ExitStack() as stack:
        if os.fstat(fh.fileno()).st_nlink:
            copy = _spilling(lambda: tempfile.TemporaryFile(dir=SPILL_DIR))  # noqa: SIM115
            stack.callback(_close, copy)
            fh.seek(0)
            _spilling(lambda: shutil.copyfileobj(fh, copy, CHUNK))
            _spilling(copy.flush)
            fh = copy
        try:
            data = _Map(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty: nothing in it
            yield b""
            return
        try:
            yield data
        finally:
            # A walk stopped early may still hold a view of it: then it goes with the walk.
            with contextlib.suppress(BufferError):
                data.close()


def encoded(path: Path) -> set[str]:
    """The SHA-256s of what each base64 run of the text file at ``path`` decodes to, itself
    (not what that holds: an archive's members)."""
    return {hashlib.sha256(raw).hexdigest() for _, raw in _runs(path.read_bytes())}


def cut_encoded(path: Path, digests: Container[str]) -> int:
    """Rewrite the text file at ``path`` (atomically, mode kept) without each base64 run that
    decodes to content in ``digests``; returns how many went. A ``data:`` URL keeps its header,
    a JSON or CSV field is left empty, a line of its own is left empty (the lines about it
    kept). A run that decodes to a file holding such content (an archive) is not cut: the rest
    of what it holds would go with it (:func:`encoded` tells the one from the other)."""
    data = path.read_bytes()
    cut = [span for span, raw in _runs(data) if hashlib.sha256(raw).hexdigest() in digests]
    if not cut:
        return 0
    merged: list[tuple[int, int]] = []
    for start, end in sorted(cut):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    out, at = [], 0
    for start, end in merged:
        out.append(data[at:start])
        at = end
    out.append(data[at:])
    atomic_write_bytes(path, b"".join(out), mode=path.stat().st_mode & 0o777)
    return len(merged)
