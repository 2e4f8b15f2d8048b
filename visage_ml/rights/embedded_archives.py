"""What an archive or a compressed file holds (zip, tar, gzip, bzip2, xz, zstd, zlib, LZMA; NumPy's
``.npz`` and torch's ``.pt`` are zip files): member by member, as ``unzip`` and GNU tar extract
them, each read as it streams (:func:`~visage_ml.rights.embedded_spill._stream`), whatever the
archive's size. A damaged member does not hide those after it; what a damaged archive held before
its damage stays looked at."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from visage_ml.io import CHUNK
from visage_ml.rights import embedded
from visage_ml.rights.embedded import SizeFilter, _Budget
from visage_ml.rights.embedded_spill import _stream

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


# A zip member's encryption flag: not looked inside (no password), as before.
ZIP_ENCRYPTED = 0x1


def _zip(fh: IO[bytes], sizes: SizeFilter | None, depth: int, budget: _Budget) -> Iterator[str]:
    """Each member read on its own, as ``unzip`` extracts it: one damaged does not hide those
    after it (:class:`~visage_ml.rights.embedded.DamagedMember` once they are read). A member
    whose CRC-32 alone is wrong is read as ``unzip`` writes it, its bytes as they are (a stored
    photograph, whole)."""
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
        raise embedded.DamagedMember


# A header's magic (:data:`~visage_ml.rights.embedded.TAR_MAGICS`) where it lies in a block.
_MAGICS = np.array([np.frombuffer(m, np.uint8) for m in embedded.TAR_MAGICS])
_MAGIC_AT = slice(embedded.TAR_AT, embedded.TAR_AT + _MAGICS.shape[1])
# The bytes of a checksum's field as tar writes it: octal digits, white space, NULs
# (:func:`~visage_ml.rights.embedded._tar_checksummed`).
_OCTAL_BYTES = np.zeros(256, bool)
_OCTAL_BYTES[list(embedded.TAR_OCTAL)] = True


def _tar_start(fh: IO[bytes]) -> int:
    """Where the first block of ``fh`` from where it stands (a tar's: its kind told,
    :func:`~visage_ml.rights.embedded.kind`; or a file told nothing, :class:`HeaderSearch`) that
    begins a header with its whole magic, or is one by its checksum (:func:`_checksummed`), lies,
    -1 where none does: a :data:`~visage_ml.io.CHUNK` read at a time and its blocks compared at
    once with NumPy (0.02 s for 64 MiB of zeros or random bytes, 0.07 s of blocks each a header
    but for its checksum; tarfile's walk over blocks that are no header, as GNU tar skips them,
    took 2 us a block of zeros and 4 us one of other bytes: 0.2 to 0.5 s)."""
    search = HeaderSearch(fh.tell())
    while chunk := fh.read(CHUNK):
        if (found := search.feed(chunk)) >= 0:
            return found
    return -1


class HeaderSearch:
    """The search for a tar's first header (:func:`_tar_start`) in bytes as they stream by, the
    first fed at ``at``: GNU tar reads any file as a tar, a block at a time from its start, and
    ``tar -xif`` skips zero blocks and every block that is no header to the next header, however
    far; so a tar whose start was overwritten (its first 8 KiB zeros or random bytes: its first
    4 KiB tell it nothing, :func:`~visage_ml.rights.embedded.kind`) still gives what follows.
    Each block is told once, a :data:`~visage_ml.io.CHUNK` of them at a time with NumPy (a
    block's bytes kept between feeds at most), so a file's read costs little more (random bytes:
    see benchmarks/bench_crafted_scan.py, ``random_64``)."""

    def __init__(self, at: int = 0) -> None:
        self.at, self.found, self._carry = at, -1, b""

    @property
    def begun(self) -> bytes:
        """The bytes of the block the last feed began and did not end (fewer than a block)."""
        return self._carry

    def feed(self, chunk: bytes) -> int:
        """Where the first header lies in what was fed so far (``chunk`` the next bytes), -1
        where none does yet."""
        size = embedded.TAR_BLOCK
        view = memoryview(chunk)
        if self.found >= 0 or not view:
            return self.found
        if self._carry:  # the block begun by the last feed, made whole
            cut = size - len(self._carry)
            head, view = self._carry + bytes(view[:cut]), view[cut:]
            self._carry = head if len(head) < size else b""
            if self._carry or self._blocks(head) >= 0:
                return self.found
        while len(view) >= size:
            n = min(len(view), CHUNK) // size
            if self._blocks(view[: n * size]) >= 0:
                return self.found
            view = view[n * size :]
        self._carry = bytes(view)
        return -1

    def _blocks(self, whole: bytes | memoryview) -> int:
        """The search over ``whole``, whole blocks lying at :attr:`at`."""
        n = len(whole) // embedded.TAR_BLOCK
        blocks = np.frombuffer(whole, np.uint8).reshape(n, embedded.TAR_BLOCK)
        magic = blocks[:, _MAGIC_AT]
        found = np.flatnonzero((magic[:, None, :] == _MAGICS).all(axis=2).any(axis=1))
        first = min(found[0] if found.size else n, _checksummed(blocks, n))
        if first < n:
            self.found = self.at + int(first) * embedded.TAR_BLOCK
        self.at += n * embedded.TAR_BLOCK
        return self.found


def _checksummed(blocks: np.ndarray, n: int) -> int:
    """The index of the first of ``blocks`` (a row each) that is a header by its checksum
    (:func:`~visage_ml.rights.embedded._tar_checksummed`), ``n`` where none is. Told at once for
    all with NumPy: those whose checksum's field is one as tar writes it (of random bytes, one in
    10^10), then, of those, the number its digits before a NUL give (as tarfile reads it)
    against the sum of their bytes; the few left told by tarfile's own reading. So a crafted file
    whose every block bears such a field is still read at NumPy's pace."""
    field = np.ascontiguousarray(blocks[:, embedded.TAR_CHECKSUM])
    # Those with a digit (a row's eight flags read as one number: zeros pass in 12 ms a 512
    # MiB), then those all of whose bytes are octal's.
    digits = field - np.uint8(ord("0")) < 8
    rows = np.flatnonzero(digits.view(np.uint64).ravel())
    rows = rows[_OCTAL_BYTES[field[rows]].all(axis=1)]
    if not rows.size:
        return n
    candidates, field = blocks[rows], field[rows].astype(np.int64)
    digits = digits[rows] & ~np.logical_or.accumulate(field == 0, axis=1)  # before a NUL
    number = np.zeros(rows.size, np.int64)
    for column in range(field.shape[1]):
        number = np.where(digits[:, column], number * 8 + field[:, column] - ord("0"), number)
    # How far the number lies below the sum of the block's bytes, its checksum's field taken for
    # spaces; the signed sum (bytes from 0x80 up taken for negative, as old tars summed them:
    # tarfile and GNU tar take either) is 256 less for each such byte (none in the field).
    off = candidates.sum(axis=1, dtype=np.int64) - field.sum(axis=1) + 8 * ord(" ") - number
    signed = np.flatnonzero((off > 0) & (off % 256 == 0))
    high = (candidates[signed] >= 0x80).sum(axis=1, dtype=np.int64)
    off[signed[off[signed] == 256 * high]] = 0
    for row in rows[off == 0]:
        if embedded._tar_checksummed(blocks[row].tobytes()):
            return int(row)
    return n


def _open_tar(fh: IO[bytes]) -> tarfile.TarFile | None:
    """``fh``, a tar (:data:`~visage_ml.rights.embedded.TAR`), opened at its first header
    (:func:`_tar_start`), or None when it has none. Zero blocks and damaged headers are skipped to
    the next header (``ignore_zeros``), as GNU tar does (``tar -x`` a damaged header, the
    first too; ``tar -i`` zero blocks), not taken for the archive's end (which hid every member
    after it)."""
    start = _tar_start(fh)
    if start < 0:
        return None
    fh.seek(start)
    try:
        return tarfile.open(fileobj=fh, mode="r:", ignore_zeros=True)
    except ARCHIVE_ERRORS:
        return None


def _compressed_tar(fh: IO[bytes]) -> tarfile.TarFile | None:
    """``fh``, a compressed stream, as the tar it decompresses to (tarfile tries each compression
    it knows) where that begins with a good header; None otherwise, and it is read as the one
    file the stream holds (:func:`_decompressed`), a tar by its kind (:func:`_open_tar`): one
    whose first header is damaged, or one that begins with zero blocks, which tarfile opened as
    an empty tar, hiding its members (``cat empty.tar photos.tar | gzip``)."""
    try:
        t = tarfile.open(fileobj=fh, mode="r:*")  # noqa: SIM115 - closed by _tar
    except ARCHIVE_ERRORS:
        return None
    if t.firstmember is None:  # a zero block first
        t.close()
        return None
    # A damaged header after the first is skipped to the next one, as GNU tar does. Not set for
    # the opening, which would take any compressed file for a tar.
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
    """A compressed file (:func:`~visage_ml.rights.embedded.stream_kind`): a compressed tar's
    members, else the one file it holds (a ``.tar.zst``'s tar, read as its member)."""
    start = fh.tell()
    if (t := _compressed_tar(fh)) is not None:
        yield from _tar(t, sizes, depth, budget)
        return
    fh.seek(start)
    how = embedded.stream_kind(fh.read(embedded.SNIFF))
    fh.seek(start)
    try:
        with _opened(fh, how) as stream:
            yield from _stream(stream, None, sizes, depth, budget)
    except ARCHIVE_ERRORS:
        return


def _opened(fh: IO[bytes], how: str | None) -> IO[bytes]:
    """``fh``, a compressed stream of kind ``how`` (:func:`~visage_ml.rights.embedded.
    stream_kind`), as the stream of what it decompresses to."""
    if how in embedded.ARROW_CODECS:
        import pyarrow as pa

        return pa.CompressedInputStream(pa.PythonFile(fh, mode="r"), how)  # type: ignore[return-value]
    if how == embedded.ZLIB:
        return io.BufferedReader(_Inflating(fh))
    if how == embedded.LZMA_ALONE:
        return lzma.open(fh, "rb", format=lzma.FORMAT_ALONE)
    opener = {embedded.GZIP: gzip.open, embedded.XZ: lzma.open}.get(how or "", bz2.open)
    return opener(fh, "rb")


class _Inflating(io.RawIOBase):
    """A zlib stream read from ``fh`` as it inflates (the standard library opens gzip files as
    streams, not zlib's: joblib's compressed pickles)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh, self._z = fh, zlib.decompressobj()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._z.eof:
            data = self._z.unconsumed_tail or self._fh.read(CHUNK)
            if not data:
                raise EOFError("the zlib stream is cut short")
            if out := self._z.decompress(data, len(b)):
                b[: len(out)] = out
                return len(out)
        return 0
