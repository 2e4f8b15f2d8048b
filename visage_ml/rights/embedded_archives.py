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
    """A compressed file (:func:`~visage_ml.rights.embedded.stream_kind`): a compressed tar's
    members, else the one file it holds (a ``.tar.zst``'s tar, read as its member)."""
    start = fh.tell()
    if (t := _open_tar(fh)) is not None:
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
