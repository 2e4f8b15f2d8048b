"""Files held in a SQLite database: what :mod:`visage_ml.rights.embedded` reads of one.

A photograph's bytes end up in a database as often as in an archive: ``sqlite3`` or pandas'
``to_sql`` with a BLOB column, a labelling tool's ``project.db`` with each task's image base64
in a TEXT column, a notebook's cache. The file never holds such a value whole once it is
larger than a page (SQLite splits it over overflow pages, a page number before each piece), so
it is read as a database: every table (WITHOUT ROWID ones, and a virtual table's shadow tables,
which hold what it holds), every stored column, whatever its declared type (SQLite keeps any
value in any column). A BLOB is taken as a part is (hashed, and looked inside: a zip in a
BLOB); a TEXT as a part and for its base64 runs, as a Parquet table's strings are.

What is read is never written: a file is opened read-only and immutable (no journal, no
``-wal`` or ``-shm`` made beside it, nothing waited on), bytes in memory (an archive's member,
a git object) are deserialized, and either connection only queries. Tables are read by the
names the database's own schema gives, each quoted (a table named ``x"; DROP TABLE y; --`` is
one table), rows streamed through a cursor. A value that cannot matter (shorter than anything
sought, but a BLOB of a key's 32 bytes while a key is sought, not compressed, no base64 run of a
compressed file in it) is passed over in SQLite, its row never made into Python's (a table of
a log's hex ids). A value larger than :data:`~visage_ml.rights.embedded.EMBED_MAX` is not held
in memory: a BLOB of a rowid table is
hashed as it streams (:meth:`sqlite3.Connection.blobopen`), not looked inside; a TEXT that large
is not read, and the database not shown clean (:class:`NotRead`).

A database in WAL mode keeps its newest pages in the ``-wal`` file beside it until a checkpoint
copies them in: while the program writing it runs (a labelling tool, a notebook's open
connection), or for good once it was killed. An immutable connection ignores that file, so the
two are read together as SQLite reads them (:func:`committed`): the database's bytes and the
WAL's valid committed frames laid over them, in memory (no copy written anywhere, so a crash
leaves no photograph behind), then deserialized. A ``-wal`` file alone (its database deleted or
renamed, or in git) is laid over an empty database: it is read when it holds the schema's page,
and not shown clean when it does not. A database and its ``-wal`` too large to hold together
are not shown clean while the WAL holds a page the database does not (checkpoint it:
``sqlite3 x.db "PRAGMA wal_checkpoint(TRUNCATE)"``).

A database in rollback-journal mode (SQLite's default) keeps, during a transaction, each page
as it was in the ``-journal`` file beside it; a crash leaves that journal hot, and SQLite lays
its pages back over the database at the next open (a row the transaction deleted comes back).
An immutable connection ignores it too, so the journal's records SQLite plays back
(:func:`journaled`: checksums checked, up to the first broken one) are laid over the database
in memory (:func:`rolled_back`), before a WAL's frames, never played back into the file. A
journal alone (its database deleted or renamed) is laid over an empty database: read when it
holds the schema's page, not shown clean when it does not. A database and its journal too large
to hold together are not shown clean while the journal restores a page the database lacks
(``sqlite3 x.db "PRAGMA integrity_check"`` plays it back). A journal naming a super-journal is
played back whether or not that still exists (SQLite would not, once it is gone: more is read
here, never less).

Rows deleted without ``VACUUM`` (SQLite's default: ``auto_vacuum`` and ``secure_delete`` off)
are in no table, yet their bytes stay in the file until overwritten: each value's first part in
its leaf page's freed space (a freeblock, or the gap between the cell pointers and the cells),
the rest in overflow pages put on the freelist, where any forensic tool reads them. So before
the tables the freed space is read (:func:`holds_deleted`: the freelist's pages, each b-tree
page's gap and freeblocks; of the pages as a WAL or a hot journal leaves them), a megabyte at a
time: one holding what may begin a photograph (:data:`FREED_SIGNS`) is not shown clean
(:class:`HoldsDeleted`) until the database is vacuumed. Deleted text or numbers stop nothing.
So do the pages SQLite no longer reads in WAL mode (:func:`superseded`: the file's own version
of a page the WAL replaces, a frame the WAL does not apply), where a row deleted with
``secure_delete`` on is still whole, until a checkpoint.

Not shown clean (:class:`NotRead`): a database that cannot be read to its end (damaged,
encrypted, not one though it begins as one), a value too large to hold that cannot be
streamed (a WITHOUT ROWID table's, a TEXT SQLite reports too large), and one whose freed space
may hold a photograph (above). Not looked inside: freed space that begins as no photograph or
archive does (the rest of one whose start was overwritten), the stale tail of a page reused
(past a value's end on its last overflow page), and the frames of a ``-wal`` file SQLite
would not apply (older than a page's last committed one, not committed, from before the WAL
was reset, after a broken checksum) or the records of a journal SQLite would not play back
(after a broken checksum, a header zeroed): none of them is in a table any more.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import itertools
import mmap
import os
import re
import sqlite3
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from visage_ml.io import CHUNK
from visage_ml.rights import embedded, embedded_photos, embedded_text
from visage_ml.rights.embedded import B64_EXPANDS, SizeFilter, _Budget, _part
from visage_ml.rights.embedded_mapping import Buffer
from visage_ml.rights.embedded_text import _runs

# Bytes 18 and 19 of the header: 2 for a database in WAL mode. SQLite's in-memory files cannot
# hold a WAL, so a copy in memory is read as a rollback-journal database (the same pages).
WAL_FLAGS_AT = 18
ROLLBACK_FLAGS = b"\x01\x01"
# Names a rowid can be selected by (a column of the same name hides it).
ROWID_NAMES = ("_rowid_", "rowid", "oid")
# Columns a SELECT returns that are stored (PRAGMA table_xinfo ``hidden``): 0 an ordinary one,
# 3 a STORED generated one. 1 is a virtual table's hidden column, 2 a VIRTUAL generated one,
# computed by an expression of the file (not read: it holds nothing the others do not).
STORED = (0, 3)
# How the schema says a table is virtual, or has no rowid (taken for one that has none when a
# default's text says so: its large values are then not shown clean, never passed over).
VIRTUAL = re.compile(rb"\s*CREATE\s+VIRTUAL\s", re.IGNORECASE)
WITHOUT_ROWID = re.compile(rb"WITHOUT\s+ROWID", re.IGNORECASE)

# A WAL file (https://sqlite.org/fileformat2.html#walformat): a 32-byte header (magic, format
# version, page size, checkpoint sequence, salt-1, salt-2, checksum-1, checksum-2), then frames
# of a 24-byte header (page number, the database's size in pages after a commit, else 0; salt-1,
# salt-2, checksum-1, checksum-2) and a page. Every integer big-endian; the checksum's words
# are little-endian under the first magic, big-endian under the second.
WAL_MAGIC = embedded.SQLITE_WAL_MAGIC
WAL_VERSION = 3007000
WAL_HEADER = 32
FRAME_HEADER = 24
WAL_SUFFIX = "-wal"
PAGE_SIZES = frozenset(1 << n for n in range(9, 17))
# Where a database's header gives its page size (1: 65536).
PAGE_SIZE_AT = 16
MASK32 = 0xFFFFFFFF

# A rollback journal (https://sqlite.org/fileformat.html, "The Rollback Journal"; SQLite's
# pager.c, pager_playback): a header (magic, record count, checksum nonce, the database's size in
# pages before the transaction, sector size, page size) padded to the sector size, then records
# of a page number, the page as it was before the transaction, and a checksum (the nonce plus
# every 200th byte of the page, from its end). A transaction that spilled pages into the
# database before its commit may add a header, at the next sector boundary, with more records.
# Every integer big-endian.
JOURNAL_MAGIC = embedded.SQLITE_JOURNAL_MAGIC
JOURNAL_SUFFIX = "-journal"
JOURNAL_HEADER = 28
SECTOR_SIZES = frozenset(1 << n for n in range(5, 17))
# A record count of -1: as many records as the file holds (``PRAGMA synchronous = OFF``).
TO_THE_END = 0xFFFFFFFF
# The page holding the byte at 2**30 (SQLite's lock byte) is never journaled: a record naming
# it, or page 0, ends the playback (as a broken checksum, or a record cut short, does).
LOCK_BYTE = 1 << 30
CHECKSUM_STEP = 200


def is_wal(first: bytes) -> bool:
    """Whether a file beginning with ``first`` is a SQLite WAL file."""
    return first[:4] in WAL_MAGIC


def _checksum(data: bytes | memoryview, s0: int, s1: int, order: str) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes) from ``(s0, s1)``: for each
    pair of 32-bit words x0, x1 (of byte order ``order``), s0 += x0 + s1; s1 += x1 + s0."""
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    for x0, x1 in zip(words[::2], words[1::2], strict=True):
        s0 = (s0 + x0 + s1) & MASK32
        s1 = (s1 + x1 + s0) & MASK32
    return s0, s1


@dataclass(frozen=True)
class Committed:
    """What a WAL file adds to its database: its page size, where in it the last committed
    frame of each page lies (page number -> offset of the page), and the database's size in
    pages after its last commit (0: no commit)."""

    page_size: int
    pages: dict[int, int]
    size: int


def committed(wal: bytes | mmap.mmap) -> Committed | None:
    """The frames of ``wal`` SQLite applies (fileformat2 4.1 and 4.5): from the first, each
    whose salts are the header's and whose checksum, chained from the header's through every
    frame before it, holds, up to the last commit frame among them; of each page, the last.
    None when ``wal`` is no WAL SQLite reads (no header, another version, a broken header
    checksum: SQLite ignores it too)."""
    if len(wal) < WAL_HEADER or not is_wal(wal):
        return None
    _, version, page_size, _, salt1, salt2, c1, c2 = struct.unpack_from(">8I", wal)
    order = ">" if wal[3] & 1 else "<"
    if version != WAL_VERSION or page_size not in PAGE_SIZES:
        return None
    with memoryview(wal) as view:
        return _frames(view, page_size, (salt1, salt2), (c1, c2), order)


def _frames(
    view: memoryview, page_size: int, salts: tuple[int, int], check: tuple[int, int], order: str
) -> Committed | None:
    """:func:`committed` past the header's fields."""
    s = _checksum(view[:24], 0, 0, order)
    if s != check:
        return None
    pages: dict[int, int] = {}
    pending: dict[int, int] = {}
    size = 0
    at = WAL_HEADER
    while at + FRAME_HEADER + page_size <= len(view):
        page, after, f1, f2, k1, k2 = struct.unpack_from(">6I", view, at)
        if page == 0 or (f1, f2) != salts:
            break
        s = _checksum(view[at : at + 8], *s, order)
        s = _checksum(view[at + FRAME_HEADER : at + FRAME_HEADER + page_size], *s, order)
        if s != (k1, k2):
            break
        pending[page] = at + FRAME_HEADER
        if after:  # a commit frame: its transaction, and those before, count
            pages.update(pending)
            pending.clear()
            size = after
        at += FRAME_HEADER + page_size
    return Committed(page_size, pages, size)


def _page_size(db: bytes) -> int:
    """The page size a database's header gives (0: no header)."""
    if len(db) < PAGE_SIZE_AT + 2:
        return 0
    (n,) = struct.unpack_from(">H", db, PAGE_SIZE_AT)
    return 65536 if n == 1 else n


def _laid_over(db: bytes, found: Committed | Journaled, pages: bytes) -> bytes:
    """``db`` as ``found`` leaves it (a WAL's committed frames, a hot journal's records: each
    page's place in ``pages``), cut or grown to ``found.size`` pages.

    Raises
    ------
    NotRead
        ``pages`` are of another size than the database's, or ``found.size`` is more than its
        bytes and the database's can fill (damaged, or made to take all memory).
    """
    ps = found.page_size
    if db and _page_size(db) != ps:
        raise NotRead
    if found.size * ps > len(db) + len(pages):
        raise NotRead
    image = bytearray(db[: found.size * ps])
    image.extend(bytes(found.size * ps - len(image)))
    for page, at in found.pages.items():
        if page <= found.size:  # a page the commit cut off (a journal records none)
            image[(page - 1) * ps : page * ps] = pages[at : at + ps]
    return bytes(image)


def applied(db: bytes, wal: bytes) -> bytes:
    """The database ``db`` (b"": none) as SQLite reads it with the WAL file ``wal`` beside it:
    each page of the WAL's committed frames (:func:`committed`) laid over the database's, its
    size the last commit's. In memory: nothing is written.

    Raises
    ------
    NotRead
        The WAL is of pages of another size than the database's, or gives a size its bytes and
        the database's cannot fill (damaged, or made to take all memory).
    HoldsDeleted
        The pages SQLite no longer reads hold what may begin a photograph the database as read
        does not (:func:`superseded`).
    """
    found = committed(wal)
    image = db if found is None or not found.size else _laid_over(db, found, wal)
    if _superseded(db, wal, image, found):
        raise HoldsDeleted
    return image


def is_journal(first: bytes) -> bool:
    """Whether a file beginning with ``first`` is a SQLite rollback journal SQLite plays back
    (a committed one is deleted, truncated, or its header zeroed: ``PERSIST``)."""
    return first[: len(JOURNAL_MAGIC)] == JOURNAL_MAGIC


def _journal_checksum(page: bytes | memoryview, nonce: int) -> int:
    """pager.c's ``pager_cksum``: ``nonce`` plus every 200th byte of ``page`` from its end (the
    byte at offset 0 never)."""
    return (nonce + sum(page[len(page) - CHECKSUM_STEP : 0 : -CHECKSUM_STEP])) & MASK32


@dataclass(frozen=True)
class Journaled:
    """What a hot rollback journal restores of its database: its page size, where in it the
    page each record restores lies (page number -> offset of the page; of a page twice, the
    last, as SQLite plays them in order), and the database's size in pages before the
    transaction (it is cut to it)."""

    page_size: int
    pages: dict[int, int]
    size: int


def journaled(journal: bytes | mmap.mmap) -> Journaled | None:
    """The records of ``journal`` SQLite plays back at the database's next open (pager.c's
    ``pager_playback``): header by header, each record up to the first of a page number 0 or
    of the lock byte's page, of a broken checksum, or cut short, which ends the playback; a
    record of a page beyond the database's size before the transaction passed over. None when
    ``journal`` is none SQLite plays back (no magic, a header zeroed, a page or sector size
    SQLite refuses)."""
    if len(journal) < JOURNAL_HEADER or not is_journal(journal):
        return None
    size, sector, page_size = struct.unpack_from(">3I", journal, 16)
    if page_size not in PAGE_SIZES or sector not in SECTOR_SIZES:
        return None
    with memoryview(journal) as view:
        return Journaled(page_size, _records(view, page_size, sector, size), size)


def _records(view: memoryview, page_size: int, sector: int, size: int) -> dict[int, int]:
    """:func:`journaled` past the first header's fields."""
    pages: dict[int, int] = {}
    record = page_size + 8
    lock_page = LOCK_BYTE // page_size + 1
    header = 0
    while header + sector <= len(view) and is_journal(view[header : header + 8]):
        n, nonce = struct.unpack_from(">2I", view, header + 8)
        at = header + sector
        if n == TO_THE_END:
            n = (len(view) - at) // record
        for _ in range(n):
            if at + record > len(view):
                return pages
            (page,) = struct.unpack_from(">I", view, at)
            if page in (0, lock_page):
                return pages
            if page <= size:  # else a page the transaction added: cut off, not restored
                (check,) = struct.unpack_from(">I", view, at + 4 + page_size)
                if _journal_checksum(view[at + 4 : at + 4 + page_size], nonce) != check:
                    return pages
                pages[page] = at + 4
            at += record
        header = -(-at // sector) * sector  # the next header: at the next sector boundary
    return pages


def rolled_back(db: bytes, journal: bytes) -> bytes:
    """The database ``db`` (b"": none) as SQLite reads it once it played back the hot
    journal ``journal`` beside it: each page a record restores laid over the database's, cut
    to its size before the transaction. In memory: nothing is written (SQLite itself would
    write the pages back and delete the journal).

    Raises
    ------
    NotRead
        The journal is of pages of another size than the database's, or gives a size its
        bytes and the database's cannot fill (damaged, or made to take all memory).
    """
    found = journaled(journal)
    if found is None:
        return db
    return _laid_over(db, found, journal)


class NotRead(embedded.TooLarge):
    """A database not read to its end (damaged, encrypted, or a value too large to hold that
    cannot be streamed): nothing it holds is shown clean, as a bomb's is
    (:class:`~visage_ml.rights.embedded.TooLarge`, so every caller that stops on one stops on
    this)."""


# A database's freed space (https://sqlite.org/fileformat2.html, 1.5 and 1.6): the pages of its
# freelist, whose first trunk's number and count the header gives, and in each b-tree page the
# gap between its cell pointers and its cells and the chain of its freeblocks. A page's header
# (at 100 on page 1, after the file's): its kind, the first freeblock, the count of cells, where
# the cells begin (0: 65536); 8 bytes on a leaf, 12 on an interior page. A freeblock: the next
# one's offset and its own size, then what its cell held.
FILE_HEADER = 100
FREELIST_AT = 32
RESERVED_AT = 20
LEAVES, INTERIORS = frozenset({0x0A, 0x0D}), frozenset({0x02, 0x05})
TRUNK_HEADER = 8
FREEBLOCK_HEADER = 4
# How many bytes of a database file are read at a time for its freed space.
FREED_CHUNK = 1 << 20


def _b64_starts(start: re.Pattern[bytes], first: bytes) -> bytes:
    """A pattern of how base64 of a file begins whose start ``start`` matches: its first 3
    bytes ``first``, then a byte of those ``start`` allows (its 5th character: that byte's
    high 6 bits)."""
    chars = {
        base64.b64encode(bytes((x, 0, 0)))[:1]
        for x in range(256)
        if start.match(first + bytes((x,)))
    }
    return re.escape(base64.b64encode(first)) + b"[" + b"".join(sorted(chars)) + b"]"


# What in freed space may begin a photograph, or a file that holds one: a PNG's or a JPEG's start
# (as :mod:`~visage_ml.rights.embedded_photos` walks from), either's base64 (a labelling tool's
# TEXT), and an archive's or a compressed stream's magic (a gzip's, of two bytes, with the fields
# that follow it, lest freed random bytes match it every 64 kB). Deleted text, numbers and short
# values hold none of them.
FREED_SIGNS = re.compile(
    b"|".join(
        (
            embedded_photos.PNG_START.pattern,
            embedded_photos.JPEG_START.pattern,
            *(
                re.escape(base64.b64encode(embedded_photos.PNG_MAGIC + b"\x00\x00\x00" + n))
                for n in (b"\r", b"\x04")  # IHDR's length, CgBI's
            ),
            _b64_starts(embedded_photos.JPEG_START, embedded_photos.JPEG_MAGIC),
            *(re.escape(m) for m in embedded.ZIP_MAGIC),
            rb"\x1f\x8b\x08[\x00-\x1f][\x00-\xff]{4}[\x00\x02\x04][\x00-\x0d\xff]",
            re.escape(embedded.COMPRESSED_MAGIC[1]),
            embedded.BZIP2_MAGIC.pattern,
            re.escape(embedded.ZSTD_MAGIC),
            re.escape(embedded.LZ4_MAGIC),
            re.escape(embedded.TAR_MAGIC) + rb"(?:\x0000|  \x00)",
        )
    )
)


class HoldsDeleted(NotRead):
    """A database whose freed space (rows deleted, not yet overwritten: until ``VACUUM``) holds
    what may begin a photograph (:data:`FREED_SIGNS`): any forensic tool reads it back, so the
    database is not shown clean (a :class:`NotRead`, so every caller that stops on one stops on
    this) until it is vacuumed."""


def _freelist(
    read: Callable[[int, int], bytes | memoryview], ps: int, usable: int, n: int
) -> tuple[bytearray, dict[int, int]]:
    """The freelist of a database of ``n`` pages of ``ps`` bytes: a bitmap of its leaf pages
    (by page number), and its trunk pages (page number -> how many leaves each lists). A chain
    that loops, or names a page past the file's end, is followed no further."""
    leaves = bytearray(n // 8 + 1)
    trunks: dict[int, int] = {}
    (trunk,) = struct.unpack_from(">I", read(FREELIST_AT, 4))
    while 0 < trunk <= n and trunk not in trunks:
        page = read((trunk - 1) * ps, ps)
        if len(page) < ps:
            break
        after, count = struct.unpack_from(">II", page)
        count = min(count, (usable - TRUNK_HEADER) // 4)
        trunks[trunk] = count
        for leaf in struct.unpack_from(f">{count}I", page, TRUNK_HEADER):
            if 0 < leaf <= n:
                leaves[leaf >> 3] |= 1 << (leaf & 7)
        trunk = after
    return leaves, trunks


def _freed_in(
    buf: bytes | memoryview, at: int, page: int, usable: int
) -> Iterator[tuple[int, int]]:
    """Where in ``buf`` the b-tree page ``page``, at ``at``, has freed space (its gap, its
    freeblocks); nothing when it is no b-tree page (an overflow page of a row, or damaged)."""
    h = at + (FILE_HEADER if page == 1 else 0)
    kind = buf[h]
    if kind not in LEAVES and kind not in INTERIORS:
        return
    block, cells, content = struct.unpack_from(">HHH", buf, h + 1)
    gap = h - at + (8 if kind in LEAVES else 12) + 2 * cells
    content = content or 65536
    if gap <= content <= usable:
        yield at + gap, at + content
    # In order of offset, each after the last (SQLite's rule): a loop ends at once. Each ends
    # where the next begins (SQLite's rule too), or a page of freeblocks each claiming the rest
    # of it would be searched once a freeblock: 16,000 times for a 64 kB page.
    while gap <= block <= usable - FREEBLOCK_HEADER:
        after, size = struct.unpack_from(">HH", buf, at + block)
        end = min(block + size, usable, after if after > block else usable)
        yield at + block + FREEBLOCK_HEADER, at + end
        if after <= block:
            break
        block = after


def holds_deleted(read: Callable[[int, int], bytes | memoryview], size: int) -> bool:
    """Whether the freed space of the database of ``size`` bytes that ``read(offset, n)``
    reads holds what may begin a photograph (:data:`FREED_SIGNS`): its freelist's pages (each
    trunk's past the leaves it lists) and each b-tree page's gap and freeblocks. Read a
    megabyte at a time, the freelist kept as a bitmap (a bit a page); a file that is not one
    SQLite reads holds nothing here (SQLite's own reading says so)."""
    header = read(0, FILE_HEADER)
    if (
        len(header) < FILE_HEADER
        or bytes(header[: len(embedded.SQLITE_MAGIC)]) != embedded.SQLITE_MAGIC
    ):
        return False
    ps = _page_size(header)
    if ps not in PAGE_SIZES:
        return False
    usable = ps - header[RESERVED_AT]
    n = size // ps
    leaves, trunks = _freelist(read, ps, usable, n)
    step = max(1, FREED_CHUNK // ps)
    for first in range(1, n + 1, step):
        buf = read((first - 1) * ps, step * ps)
        for page in range(first, min(first + step, n + 1)):
            at = (page - first) * ps
            if at + ps > len(buf):  # the file cut short since its size was taken
                return False
            if leaves[page >> 3] & (1 << (page & 7)):
                regions: Iterator[tuple[int, int]] = iter(((at, at + usable),))
            elif page in trunks:
                regions = iter(((at + TRUNK_HEADER + 4 * trunks[page], at + usable),))
            else:
                regions = _freed_in(buf, at, page, usable)
            if any(FREED_SIGNS.search(buf, lo, hi) for lo, hi in regions):
                return True
    return False


# How much of what follows a sign (:data:`FREED_SIGNS`) in a page SQLite no longer reads is
# sought in the database as it reads it, cut at the end of the cell's payload on the page: a
# photograph's start and its first bytes of data (PNGs of one size share their first 33 bytes;
# JPEG headers of one encoder hundreds, so a JPEG is told apart from another of its size and
# quality only by bytes past these), the same bytes wherever the row's cell lies.
SUPERSEDED_WINDOW = 256


def _varint(buf: bytes | memoryview, at: int) -> tuple[int, int]:
    """SQLite's variable-length integer at ``at``: its value and where it ends."""
    value = 0
    for i in range(8):
        byte = buf[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    return (value << 8) | buf[at + 8], at + 9


class _Cells:
    """The cells of the b-tree page at ``at`` of ``buf`` (none for a page that is not a b-tree
    page with payloads: an overflow page, a table's interior page), asked where the payload a
    cell keeps on the page ends: each cell parsed once, when asked (a crafted page of 32,000
    cells is sorted once, not walked once a sign)."""

    def __init__(self, buf: bytes | memoryview, at: int, page: int, ps: int, usable: int) -> None:
        self.buf, self.at, self.ps, self.usable = buf, at, ps, usable
        h = at + (FILE_HEADER if page == 1 else 0)
        self.kind = buf[h]
        self.starts: list[int] = []
        if self.kind in (0x0D, 0x0A, 0x02):
            first = h + (8 if self.kind in LEAVES else 12)
            (cells,) = struct.unpack_from(">H", buf, h + 3)
            n = max(0, min(cells, (at + ps - first) // 2))
            self.starts = sorted(at + c for c in struct.unpack_from(f">{n}H", buf, first))

    def end(self, offset: int) -> int | None:
        """Where the payload on the page of the cell holding ``offset`` ends (None: in none)."""
        i = bisect.bisect_right(self.starts, offset) - 1
        if i < 0:
            return None
        kind, usable = self.kind, self.usable
        most = usable - 35 if kind == 0x0D else (usable - 12) * 64 // 255 - 23
        least = (usable - 12) * 32 // 255 - 23
        try:
            c = self.starts[i] + (4 if kind == 0x02 else 0)
            size, c = _varint(self.buf, c)
            if kind == 0x0D:
                _, c = _varint(self.buf, c)  # the rowid
        except IndexError:  # a damaged page
            return None
        local = size if size <= most else least + (size - least) % (usable - 4)
        if size > most and local > most:
            local = least
        end = min(c + local, self.at + self.ps)
        return end if offset < end else None


def _windows(
    buf: bytes | memoryview, bodies: Iterable[tuple[int, int]], ps: int, usable: int
) -> Iterator[bytes]:
    """What follows each sign in the pages of ``buf`` at ``bodies`` (offset, page number),
    each of ``ps`` bytes, up to :data:`SUPERSEDED_WINDOW` bytes or the end of the cell's
    payload on the page (the same bytes wherever the cell of a row unchanged lies), else the
    page's end."""
    for lo, page in bodies:
        hi = min(lo + ps, len(buf))
        cells: _Cells | None = None
        for m in FREED_SIGNS.finditer(buf, lo, hi):
            if cells is None and hi - lo == ps:
                cells = _Cells(buf, lo, page, ps, usable)
            end = (cells.end(m.start()) if cells is not None else None) or hi
            yield bytes(buf[m.start() : min(m.start() + SUPERSEDED_WINDOW, end)])


def superseded(db: bytes, wal: bytes, image: bytes) -> bool:
    """Whether a page SQLite no longer reads holds what may begin a photograph
    (:data:`FREED_SIGNS`) that ``image``, the database as SQLite reads it (:func:`applied`),
    does not hold: the database file's own version of a page the WAL's committed frames replace,
    or that lies past the size its last commit gives (a VACUUM shrank it), or a frame of the WAL
    that SQLite does not apply (an older version of a page, a frame not committed, one from
    before the WAL was reset, one of a page past that size). A row deleted with
    ``secure_delete`` on is zeroed in the page's new version only; the old one is in the file
    until a checkpoint writes the new one over it, where a carving tool reads it. A row
    unchanged in a page rewritten (another row of it changed, or the row moved) is in ``image``
    too: no alarm."""
    return _superseded(db, wal, image, committed(wal))


def _superseded(db: Buffer, wal: Buffer, image: Buffer, found: Committed | None) -> bool:
    """:func:`superseded`, ``found`` the WAL's :func:`committed` frames (read once by the
    caller: its checksums are a pass over the whole WAL)."""
    if found is not None:
        ps = found.page_size
    elif len(wal) >= WAL_HEADER and is_wal(wal):
        ps = struct.unpack_from(">I", wal, 8)[0]
    else:
        return False
    if ps not in PAGE_SIZES:
        ps = _page_size(db) if _page_size(db) in PAGE_SIZES else 1 << 16
    # SQLite applies a page's last committed frame only within the last commit's size; of the
    # database's own pages it no longer reads those a frame replaces, and those past that size
    # (a VACUUM's, or an auto-vacuum's, shrinking: cut off only at a checkpoint).
    applied_at = set()
    replaced: list[int] = []
    if found is not None:
        applied_at = {at for p, at in found.pages.items() if p <= found.size}
        if _page_size(db) == ps:
            past = range(found.size + 1, len(db) // ps + 1) if found.size else range(0)
            replaced = sorted(set(found.pages).union(past))
    header = image if _page_size(image) == ps else db if _page_size(db) == ps else b""
    usable = ps - (header[RESERVED_AT] if len(header) > RESERVED_AT else 0)
    frames = (
        (at + FRAME_HEADER, struct.unpack_from(">I", wal, at)[0])
        for at in range(WAL_HEADER, len(wal) - FRAME_HEADER - ps + 1, FRAME_HEADER + ps)
    )
    old = list(
        itertools.islice(
            itertools.chain(
                _windows(
                    db, (((p - 1) * ps, p) for p in replaced if p * ps <= len(db)), ps, usable
                ),
                _windows(wal, ((at, p) for at, p in frames if at not in applied_at), ps, usable),
            ),
            SUPERSEDED_MAX + 1,
        )
    )
    if not old:
        return False
    if len(old) > SUPERSEDED_MAX:  # more than a database of photographs this size holds
        return True
    pages = ((at, at // ps + 1) for at in range(0, len(image), ps))
    live = list(itertools.islice(_windows(image, pages, ps, usable), SUPERSEDED_MAX + 1))
    if len(live) > SUPERSEDED_MAX:
        return True
    return not all(_held(old, live))


# Signs :func:`superseded` compares at most, on either side (what a database of 64 MiB of
# thumbnails holds; a crafted file with a sign every few bytes would take gigabytes).
SUPERSEDED_MAX = 100_000


# The fewest bytes from a sign on that tell one photograph from another of its kind and size.
SUPERSEDED_TOLD = 64


def _held(old: list[bytes], live: list[bytes]) -> Iterator[bool]:
    """For each window of ``old``, whether a window of ``live`` begins with it (found in
    ``live`` sorted: those beginning with a window follow it there), or is its beginning (a
    cell that ends sooner on its page now: the rest of the photograph lies on overflow pages;
    found by its prefixes at the lengths live windows have). Memory as the windows' own,
    whatever their lengths. A window shorter than :data:`SUPERSEDED_TOLD` (a cell that keeps
    few bytes of its photograph on its page), old or live, is held by none and holds none:
    another photograph of its size begins with it."""
    ordered = sorted(live)
    # Fewer bytes than a photograph is told apart by vouch for none (PNGs of one size share
    # their first 33): such a page is not shown clean until a checkpoint.
    told = {v for v in ordered if len(v) >= SUPERSEDED_TOLD}
    lengths = sorted({len(v) for v in told})
    for w in old:
        if len(w) < SUPERSEDED_TOLD:
            yield False
            continue
        i = bisect.bisect_left(ordered, w)
        if i < len(ordered) and ordered[i].startswith(w):
            yield True
            continue
        # A live window that is its beginning: one of its prefixes, at a length one has (at
        # most 193 lookups of a window: bounded whatever the windows were made to share).
        yield any(w[:n] in told for n in lengths if n < len(w))


def _quoted(name: str) -> str:
    """``name`` as an SQL identifier: in double quotes, each one in it doubled."""
    return '"' + name.replace('"', '""') + '"'


def _guarded(con: sqlite3.Connection) -> sqlite3.Connection:
    """``con`` as the reader uses it: queries only, no function the file's schema names run,
    no value larger than :data:`~visage_ml.rights.embedded.EMBED_MAX` loaded, text as the
    bytes stored (a TEXT that is not UTF-8 is read, not refused)."""
    con.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, embedded.EMBED_MAX)
    con.execute("PRAGMA query_only = ON")
    con.execute("PRAGMA trusted_schema = OFF")
    con.execute("PRAGMA cell_size_check = ON")
    con.text_factory = bytes
    return con


def _tables(con: sqlite3.Connection) -> list[tuple[str, bool]]:
    """The tables of the database, by name, and whether each is WITHOUT ROWID: ordinary ones
    and a virtual table's shadow tables (the virtual table itself, whose module may not be
    here, is read through them). From the schema table, which every SQLite version has."""
    rows = con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall()
    return [
        (name.decode(), bool(WITHOUT_ROWID.search(sql or b"")))
        for name, sql in rows
        if not VIRTUAL.match(sql or b"")
    ]


def _columns(con: sqlite3.Connection, table: str) -> list[str]:
    """The stored columns of ``table`` (its name bound, never pasted into the query)."""
    rows = con.execute(
        "SELECT name, hidden FROM pragma_table_xinfo(?) ORDER BY cid", (table,)
    ).fetchall()
    return [name.decode() for name, hidden in rows if hidden in STORED]


def _streamed(
    con: sqlite3.Connection,
    table: str,
    column: str,
    rowid: int,
    sizes: SizeFilter | None,
    budget: _Budget,
) -> Iterator[str]:
    """The SHA-256 of a value too large to hold, read as it streams (as an archive's member of
    that size is: hashed, not looked inside)."""
    with con.blobopen(table, column, rowid, readonly=True) as blob:
        n = len(blob)
        budget.spend(n)
        if sizes is not None and not sizes.may_match(n):
            return
        h = hashlib.sha256()
        for chunk in iter(lambda: blob.read(CHUNK), b""):
            h.update(chunk)
    yield h.hexdigest()


def _worth(q: str) -> str:
    """When the value of the column ``q`` (quoted) may hold something sought, as SQL: a BLOB or
    TEXT (its bytes) no shorter than anything sought (``:below``), or that begins as a
    compressed file does (it may hold more than itself), or that may hold a base64 run
    beginning as one does (:data:`~visage_ml.rights.embedded.B64_EXPANDS`). The rules of
    :func:`~visage_ml.rights.embedded._part` and of a short text's runs, loosened, so that a
    table of short values (a log's hex ids, names, labels) is passed over in SQLite, its rows
    never made into Python's; but, while a key is sought, a text as long as a key printed
    (:func:`~visage_ml.rights.embedded.key_texts`) and a BLOB or TEXT of a key's bytes
    (:data:`~visage_ml.rights.embedded.KEY_SIZE`, tested as a part of that size is; a TEXT's
    may be cast, ``CAST(? AS TEXT)``), or a TEXT of as many characters (:func:`_latin1_key`)."""
    b = f"CAST({q} AS BLOB)"
    first = ", ".join(f"X'{base64.b64decode(p + b'==').hex()}'" for p in sorted(B64_EXPANDS))
    runs = " OR ".join(f"instr({b}, X'{p.hex()}') > 0" for p in sorted(B64_EXPANDS))
    return (
        f"typeof({q}) IN ('blob', 'text') AND (length({b}) >= :below "
        f"OR substr({b}, 1, 1) IN ({first}) "
        f"OR (length({b}) >= {embedded_text.B64_MIN} AND ({runs})) "
        # A key printed in it (embedded.key_texts), where a key is sought (``:keys``).
        f"OR (:keys AND length({b}) >= {embedded.KEY_TEXT_MIN}) "
        # A key's own bytes, where one is sought: a BLOB or TEXT of exactly that many, or a
        # TEXT of that many characters (its bytes decoded as latin-1: _latin1_key).
        f"OR (:keys AND (length({b}) = {embedded.KEY_SIZE} OR length({q}) = {embedded.KEY_SIZE})))"
    )


def _latin1_key(value: bytes) -> bytes | None:
    """The :data:`~visage_ml.rights.embedded.KEY_SIZE` bytes a TEXT of as many characters holds
    (``INSERT ... VALUES (?)`` with ``key.decode("latin-1")``: SQLite keeps its UTF-8, each
    byte from 0x80 up two), each character's code a byte; None for another value (of its own
    bytes, tested as they are; longer; a character past latin-1)."""
    if not embedded.KEY_SIZE < len(value) <= 2 * embedded.KEY_SIZE:
        return None
    try:
        chars = value.decode("utf-8")
        return chars.encode("latin-1") if len(chars) == embedded.KEY_SIZE else None
    except (UnicodeDecodeError, UnicodeEncodeError):
        return None


def _values(
    con: sqlite3.Connection,
    table: str,
    without_rowid: bool,
    sizes: SizeFilter | None,
    depth: int,
    budget: _Budget,
) -> Iterator[str]:
    """What each BLOB and TEXT of ``table`` holds, its rows streamed."""
    columns = _columns(con, table)
    if not columns:
        return
    named = {c.lower() for c in columns}
    rowid = None if without_rowid else next((r for r in ROWID_NAMES if r not in named), None)
    picked, wanted = [], []
    for c in columns:
        q = _quoted(c)
        too_large = f"typeof({q}) = 'blob' AND length({q}) > {embedded.EMBED_MAX}"
        worth = _worth(q)
        # Each value that may matter (:func:`_worth`), but a BLOB too large to hold: NULL, its
        # length beside it. Numbers are never loaded, and a row of nothing else never returned.
        picked.append(f"CASE WHEN {too_large} THEN NULL WHEN {worth} THEN {q} END")
        picked.append(f"CASE WHEN {too_large} THEN length({q}) END")
        wanted.append(f"({too_large}) OR ({worth})")
    head = f"{rowid}, " if rowid is not None else ""
    sql = (
        f"SELECT {head}{', '.join(picked)} FROM {_quoted(table)} "  # noqa: S608
        f"WHERE {' OR '.join(wanted)}"
    )
    below = embedded.smallest_sought(sizes)
    # Values shorter than anything sought are passed over in SQLite, unseen here: the longest
    # such may be one byte short of it (a later scan seeking smaller reads this file again).
    embedded.passed_over(sizes, below - 1)
    keys = int(embedded.key_test(sizes) is not None)
    for row in con.execute(sql, {"below": below, "keys": keys}):
        key, cells = (row[0], row[1:]) if rowid is not None else (None, row)
        for i, column in enumerate(columns):
            value, large = cells[2 * i], cells[2 * i + 1]
            if large is not None:
                if key is None:  # no rowid to stream it by: not looked at, not shown clean
                    raise NotRead
                yield from _streamed(con, table, column, key, sizes, budget)
                continue
            if not value:
                continue
            budget.spend(len(value))
            yield from _part(value, sizes, depth, budget)
            if keys and (raw := _latin1_key(value)) is not None:
                yield from _part(raw, sizes, depth, budget)
            if (
                embedded_text.B64_MIN <= len(value) < below
                and embedded.kind(value[: embedded.SNIFF]) == embedded.TEXT
            ):
                # Too short to be sought itself (so not looked inside by _part): its base64.
                for _, raw in _runs(value, sizes):
                    yield from _part(raw, sizes, depth, budget)


def _read(
    con: sqlite3.Connection, sizes: SizeFilter | None, depth: int, budget: _Budget
) -> Iterator[str]:
    """What every table of the open database holds (:func:`_values`), ``depth`` deep."""
    try:
        _guarded(con)
        for table, without_rowid in _tables(con):
            yield from _values(con, table, without_rowid, sizes, depth, budget)
    # Damaged, encrypted, a value too large, a name that is not UTF-8: not shown clean.
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise NotRead from exc
    finally:
        con.close()


def inside_db(
    data: bytes, *, sizes: SizeFilter | None = None, depth: int = 0, budget: _Budget
) -> Iterator[str]:
    """The SHA-256 of each file the database ``data`` (bytes in memory) holds in a BLOB, or
    base64 in a TEXT (:func:`embedded.inside` for :data:`~visage_ml.rights.embedded.SQLITE`).
    A WAL file alone is read as its frames laid over an empty database (:func:`applied`).

    Raises
    ------
    TooLarge
        What it holds expands beyond what its size allows (``budget``); :class:`NotRead`
        when it could not be read to its end.
    """
    if is_wal(data):
        data = applied(b"", data)
    elif is_journal(data):
        data = rolled_back(b"", data)
    if not data:  # a WAL of no commit: nothing in a table
        return
    with memoryview(data) as view:
        if holds_deleted(lambda at, n: view[at : at + n], len(data)):
            raise HoldsDeleted
    if data[WAL_FLAGS_AT : WAL_FLAGS_AT + 2] == b"\x02\x02":
        data = data[:WAL_FLAGS_AT] + ROLLBACK_FLAGS + data[WAL_FLAGS_AT + 2 :]
    con = sqlite3.connect(":memory:")
    try:
        con.deserialize(data)
    except sqlite3.Error as exc:
        con.close()
        raise NotRead from exc
    yield from _read(con, sizes, depth, budget)


def _read_at(fh: BinaryIO, at: int, n: int) -> bytes:
    fh.seek(at)
    return fh.read(n)


def _first(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(len(embedded.SQLITE_MAGIC))


def _hot(journal: Path) -> bool:
    """Whether the file at ``journal`` is a rollback journal SQLite plays back (none there, or
    none this user may see: SQLite could not read it either)."""
    try:
        return is_journal(_first(journal))
    except OSError:
        return False


def _beside(db: Path) -> tuple[Path | None, Path | None]:
    """The ``-wal`` file (None when there is none, or it is empty) and the hot rollback journal
    (:func:`is_journal`; None when there is none) beside the database at ``db``."""
    wal = db.with_name(db.name + WAL_SUFFIX)
    try:
        has_wal = wal.stat().st_size > 0
    except OSError:  # none (or none this user may see: then SQLite could not read it either)
        has_wal = False
    journal = db.with_name(db.name + JOURNAL_SUFFIX)
    return (wal if has_wal else None), (journal if _hot(journal) else None)


def pair(path: Path) -> tuple[Path | None, Path | None]:
    """The database and the file SQLite reads with it, of which the file at ``path`` (a
    database, a WAL file or a rollback journal) is one: a database's ``-wal`` beside it, else
    its hot ``-journal`` (None when there is neither); a WAL's or a journal's database (its
    name without ``-wal`` or ``-journal``; None when there is none, or it is no database).

    Raises
    ------
    OSError
        When ``path`` cannot be read.
    """
    first = _first(path)
    if not is_wal(first) and not is_journal(first):
        wal, journal = _beside(path)
        return path, wal if wal is not None else journal
    suffix = WAL_SUFFIX if is_wal(first) else JOURNAL_SUFFIX
    if path.name.endswith(suffix):
        db = path.with_name(path.name.removesuffix(suffix))
        try:
            if _first(db) == embedded.SQLITE_MAGIC:
                return db, path
        except OSError:
            pass
    return None, path


def _unchanged(db: Path, journal: Path) -> bool:
    """Whether every page the hot journal ``journal`` restores of the database file ``db``
    (too large to hold together) is in it as it is (the transaction had written none of its
    pages yet), or it restores none: then ``db`` alone is what SQLite reads (cut to its size
    before the transaction: less than is read here). Both read from their files (the journal
    copied and mapped, :func:`~visage_ml.rights.embedded.mapped`), a page at a time."""
    with (
        open(journal, "rb") as jh,
        embedded.mapped(jh) as records,
        open(db, "rb") as fh,
    ):
        found = journaled(records)
        if found is None or not found.pages:
            return True
        ps = found.page_size
        if _page_size(fh.read(PAGE_SIZE_AT + 2)) != ps:
            return False
        for page, at in found.pages.items():
            fh.seek((page - 1) * ps)
            if fh.read(ps) != records[at : at + ps]:
                return False
    return True


def _read_beside(db: Path, wal: Path) -> None:
    """Check the database file ``db`` and the WAL file ``wal`` beside it, too large to hold
    together, before ``db`` alone is read as what SQLite reads: every page the WAL adds must be
    in it already as it is (a checkpoint copied them, the WAL not yet reset), or the WAL adds
    none; and the pages SQLite no longer reads (:func:`superseded`: the WAL's frames, which a
    passive checkpoint, as SQLite's automatic ones are, leaves all in it, and the database's
    pages past the last commit's size) hold nothing the database's own pages up to that size
    do not. Both copied and mapped once (:func:`~visage_ml.rights.embedded.mapped`), never
    held in memory; the WAL's checksums read once.

    Raises
    ------
    NotRead
        The WAL adds pages the file does not hold as they are.
    HoldsDeleted
        Its superseded pages hold what may begin a photograph the database does not.
    """
    with (
        open(wal, "rb") as wh,
        embedded.mapped(wh) as frames,
        open(db, "rb") as fh,
        embedded.mapped(fh) as pages,
        memoryview(pages) as view,
    ):
        found = committed(frames)
        size = len(view)
        if found is not None and found.size:
            ps = found.page_size
            size = found.size * ps
            if _page_size(view[: PAGE_SIZE_AT + 2]) != ps or size > len(view):
                raise NotRead
            for page, at in found.pages.items():
                if view[(page - 1) * ps : page * ps] != frames[at : at + ps]:
                    raise NotRead
        with view[:size] as image:
            if _superseded(pages, frames, image, found):
                raise HoldsDeleted


def inside_path(path: Path, *, sizes: SizeFilter | None = None) -> Iterator[str]:
    """:func:`inside_db` for the database file at ``path``, whatever its size, or for a WAL
    file or a rollback journal: read with the files SQLite reads with it (:func:`pair`), in
    memory: its hot journal's pages laid over it (:func:`rolled_back`), then its WAL's
    (:func:`applied`). A database alone too large to hold is opened read-only and immutable,
    so nothing is written beside it or in it; one whose journal restores pages it lacks, or
    whose WAL adds pages it lacks, too large to hold with them, is not shown clean.

    Raises
    ------
    TooLarge
        As :func:`inside_db`; :class:`NotRead` too for a database too large to read with its
        journal or WAL.
    OSError
        When the file cannot be opened.
    """
    db, other = pair(path)
    if db is not None:
        wal, journal = _beside(db)
    elif other is not None and is_wal(_first(other)):
        wal, journal = other, None
    else:
        wal, journal = None, other
    if wal is not None or journal is not None:
        beside = [f for f in (db, journal, wal) if f is not None]
        total = sum(f.stat().st_size for f in beside)
        if total <= embedded.EMBED_MAX:
            # The WAL first: a checkpoint between the reads leaves the same pages.
            frames = wal.read_bytes() if wal is not None else b""
            records = journal.read_bytes() if journal is not None else b""
            data = db.read_bytes() if db is not None else b""
            if journal is not None:
                data = rolled_back(data, records)
            if wal is not None:
                data = applied(data, frames)
            yield from inside_db(data, sizes=sizes, budget=_Budget(total))
            return
        if db is None:
            raise NotRead
        if journal is not None and not _unchanged(db, journal):
            raise NotRead
        if wal is not None:
            _read_beside(db, wal)
    if db is None:  # never so: pair gives a WAL or a journal whenever it gives no database
        raise NotRead
    with open(db, "rb") as fh:
        if holds_deleted(lambda at, n: _read_at(fh, at, n), os.fstat(fh.fileno()).st_size):
            raise HoldsDeleted
    budget = _Budget(db.stat().st_size)
    uri = f"{db.resolve().as_uri()}?mode=ro&immutable=1"
    try:
        con = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise NotRead from exc
    yield from _read(con, sizes, 0, budget)
