"""PNGs and JPEGs lying as they are in a file (:func:`_pngs`, signature to IEND; :func:`_jpegs`, SOI
to EOI, and a phone's multi-picture file: its JPEGs one after another, padding between them too, a
motion photo's video, an MP4, or a Galaxy's trailer after them): a pickle's or an array's bytes, an
image column of a data set's container, a PDF's image (a DCTDecode stream is the JPEG's own bytes).
Each is walked from where one may begin, by its chunks' or segments' lengths, a stretch no walk
ends in walked once, and no more starts than a file of its size holds
(:class:`~visage_ml.rights.embedded.TooManyStarts`): a crafted file is read in time linear in its
size, a mapped one in memory of a few pages."""

from __future__ import annotations

import bisect
import hashlib
import re
import struct
from array import array
from collections.abc import Generator, Iterable, Iterator

from visage_ml.io import CHUNK
from visage_ml.rights import embedded
from visage_ml.rights.embedded_mapping import LET_GO, Buffer, _find, _let_go, _Map

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND"

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
# The most JPEGs a multi-picture file is taken to hold, one right after another (:func:`_jpegs`):
# a phone's photograph, then a gain map, a depth map and its confidence, or a matte.
MPF_IMAGES = 4
# A multi-picture file's first JPEG says how many it holds: its MP index (an APP2 segment,
# ``MPF\0``, then a TIFF header and the index's IFD, its tags ascending from B000) holds
# NumberOfImages (B001). A camera's multi-angle, multi-frame panorama or disparity file (MPF's
# types) holds more than :data:`MPF_IMAGES`: the run of as many JPEGs as its first declares, up to
# :data:`MPF_DECLARED`, is given too. Only the index's first :data:`MPF_TAGS` entries are read;
# the stretches so given are :data:`MPF_GIVEN` times the file's size at most (crafted JPEGs each
# declaring many, each run over the next ones: more is
# :class:`~visage_ml.rights.embedded.TooManyStarts`).
MPF_APP2, MPF_ID = 0xE2, b"MPF\x00"
MPF_COUNT_TAG = 0xB001
MPF_TAGS = 8
MPF_DECLARED = 64
MPF_GIVEN = 8
# Bytes a file may hold between its JPEGs, or between its last EOI and its video or trailer (a
# camera placing each image where its MP entry says, Google's ``Item:Padding`` before a motion
# photo's video, a tool's alignment or junk): the JPEGs of a run (:data:`MPF_IMAGES`,
# :data:`MPF_DECLARED`) are taken to lie so far apart at most, and a video or trailer so far
# after the last one's EOI. A run's bytes are given a few times at most however far apart its
# JPEGs lie: the bound keeps what a stretch holds besides them, and the search for a video after
# an EOI, short.
GAP_MAX = 1 << 20
# An ISO-BMFF file (an MP4: a motion photo's video, after its JPEGs) is its top-level boxes one
# after another, each its size (4 bytes, big-endian, its header's included; 1: the 8 bytes after
# its type hold it; 0: it runs to the end of the file), then its type, 4 printable ASCII
# characters; the first is ``ftyp`` (:func:`_video_ends`).
BOX_TYPE = re.compile(rb"[\x20-\x7e]{4}")
BMFF_FIRST = b"ftyp"
# A Samsung trailer (SEF: after a Galaxy's photograph, its motion photo's video, the time it was
# taken...) is its blocks one after another, each ``00 00``, its type (2 bytes), its name's
# length (4 bytes, little-endian as all here) and name, then its value; then its directory:
# ``SEFH``, a version, how many blocks, for each 12 bytes (its type, how far before the
# directory it begins, its length), then the directory's length and ``SEFT`` (as ExifTool's
# Samsung.pm reads it). Only the directory says where the blocks lie: a trailer is found from its
# end, however long (:class:`_Trailers`).
SEF_BLOCK = re.compile(rb"\x00\x00..([\x01-\xff])\x00\x00\x00", re.DOTALL)  # a name under 256
SEF_NAME = re.compile(rb"[\x20-\x7e]+")
SEF_HEAD, SEF_END = b"SEFH", b"SEFT"
# A Galaxy Tab's "Sound & Shot" photograph (Samsung's older trailer, its recording in a block):
# after the directory, a QDIO block (``QDIO``, its version, 1, where the recording begins and
# ends in the file, then the block's length, 20, and its type) and ``BS`` end the file
# (ExifTool's Samsung.pm reads the trailer back from ``QDIOBS``, as from ``SEFT``).
QDIO_AFTER = re.compile(rb"QDIO[\s\S]{16}\x14\x00\x00\x00QDIOBS")
# A directory is taken to list so many blocks at most, and the stretches given to trailers' ends
# are so many times the file's size at most (trailers do not overlap: crafted ones one within
# another, each from its own EOI, would give the file over and over; more:
# :class:`~visage_ml.rights.embedded.TooManyStarts`).
SEF_BLOCKS = 256
SEF_GIVEN = 8


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
# is crafted (valid headers repeated) and not walked to its end
# (:class:`~visage_ml.rights.embedded.TooManyStarts`).
STARTS_FLOOR, STARTS_EVERY = 4096, 256


def _search(data: Buffer, start: re.Pattern[bytes], at: int, end: int | None = None) -> int:
    """Where ``start`` (:data:`PNG_START`, :data:`JPEG_START`: 16 bytes at most) first matches
    in ``data`` from ``at`` (ending by ``end``), or -1; over a mapped file :data:`LET_GO` at a
    time, as :func:`~visage_ml.rights.embedded_mapping._find`."""
    size = len(data) if end is None else end
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
    no more of them than a file of its size holds
    (:class:`~visage_ml.rights.embedded.TooManyStarts`)."""
    dead = _Marks()  # chunk offsets from which no IEND is reached
    allowed = _starts_allowed(data)
    at = _search(data, PNG_START, 0)
    while at >= 0:
        allowed -= 1
        if allowed < 0:
            raise embedded.TooManyStarts
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


def _mpf_declared(data: Buffer, at: int, n: int) -> int:
    """How many images the MP index in the APP2 segment at ``at`` (its length ``n``) declares
    (NumberOfImages: :data:`MPF_COUNT_TAG`), 0 where it is none or declares none."""
    tiff, end = at + 4 + len(MPF_ID), at + 2 + n
    if data[at + 4 : tiff] != MPF_ID or end - tiff < 8:
        return 0
    order = {b"MM\x00*": "big", b"II*\x00": "little"}.get(bytes(data[tiff : tiff + 4]))
    if order is None:
        return 0
    ifd = tiff + int.from_bytes(data[tiff + 4 : tiff + 8], order)
    if ifd + 2 > end:
        return 0
    entries = min(int.from_bytes(data[ifd : ifd + 2], order), MPF_TAGS, (end - ifd - 2) // 12)
    for entry in range(ifd + 2, ifd + 2 + 12 * entries, 12):
        if int.from_bytes(data[entry : entry + 2], order) == MPF_COUNT_TAG:
            return int.from_bytes(data[entry + 8 : entry + 12], order)
    return 0


def _box_end(data: Buffer, at: int) -> int:
    """Where the ISO-BMFF box at ``at`` ends, or -1 where none lies there: a type not 4
    printable characters, a size smaller than its header or running past ``data``."""
    size = len(data)
    if at + 8 > size or BOX_TYPE.fullmatch(data, at + 4, at + 8) is None:
        return -1
    n, header = int.from_bytes(data[at : at + 4], "big"), 8
    if n == 0:  # the last box: to the end of the file
        return size
    if n == 1:  # its size in the 8 bytes after its type (an mdat over 4 GiB)
        n, header = (int.from_bytes(data[at + 8 : at + 16], "big") if at + 16 <= size else 0), 16
    return at + n if header <= n <= size - at else -1


def _video_ends(data: Buffer, at: int) -> tuple[int, ...]:
    """Where the ISO-BMFF file beginning at ``at`` (a motion photo's video, after its JPEGs) may
    end: its top-level boxes walked by their sizes (:func:`_box_end`), the end of the last one
    and of the one before it (bytes after the file may read as one more box: a PDF's
    ``\\nendstream`` is a box of 174 MB where so much of the PDF follows); none where no
    ``ftyp`` box begins there. A mapped file's pages behind the walk are let go of (a chain of
    boxes may be gigabytes long)."""
    if data[at + 4 : at + 8] != BMFF_FIRST:
        return ()
    before, end = at, at
    while (after := _box_end(data, end)) >= 0:
        before, end = end, after
        _let_go(data, end)
    if end == at:
        return ()
    return (before, end) if before > at else (end,)


def _sef_start(data: Buffer, at: int) -> int:
    """Where the Samsung trailer whose ``SEFT`` lies at ``at`` begins (the block its directory
    puts furthest before it), or -1 where no directory lies before it or no block's head lies
    where it says."""
    n = int.from_bytes(data[at - 4 : at], "little") if at >= 4 else 0
    head = at - 4 - n
    if not 24 <= n < 0x10000 or head < 0 or data[head : head + 4] != SEF_HEAD:
        return -1
    count = int.from_bytes(data[head + 8 : head + 12], "little")
    if not 0 < count <= min(SEF_BLOCKS, (n - 12) // 12):
        return -1
    back = max(struct.unpack_from(f"<{3 * count}I", data, head + 12)[1::3])
    start = head - back
    block = SEF_BLOCK.match(data, start) if back <= head else None
    if block is None or SEF_NAME.fullmatch(data, start + 8, start + 8 + block[1][0]) is None:
        return -1
    return start


class _Given:
    """Bytes yet to be given in stretches that nothing in a file's structure keeps from lying
    over one another many times (declared runs, trailers): so many times the file's size; more
    is crafted (:class:`~visage_ml.rights.embedded.TooManyStarts`)."""

    def __init__(self, times: int, size: int) -> None:
        self.left = times * size

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise embedded.TooManyStarts


def _given(data: Buffer, start: int, stop: int) -> bytes | str:
    """``data[start:stop]``, or, over :data:`~visage_ml.rights.embedded.EMBED_MAX`, its SHA-256
    (hex), hashed a :data:`~visage_ml.io.CHUNK` at a time: a trailer of a gigabyte is not held."""
    if stop - start <= embedded.EMBED_MAX:
        return data[start:stop]
    h = hashlib.sha256()
    for at in range(start, stop, CHUNK):
        h.update(data[at : min(at + CHUNK, stop)])
        _let_go(data, at)
    return h.hexdigest()


class _Found:
    """The JPEGs :func:`_jpegs` has found, in order: where each begins and ends, the first of its
    chain (the JPEGs each beginning within :data:`GAP_MAX` of the EOI before it, no video or
    trailer between: the JPEG after a motion photo's video begins another file), the first of
    those one right after another up to it (its ``head``), and the starts of the runs their first
    JPEG declared that end with it (:data:`MPF_DECLARED`). A video or a trailer found after a JPEG
    (:func:`_videos`, :class:`_Trailers`) is given from the start of each run that JPEG ends
    (:meth:`runs`), however far back (a trailer of any length). 32 bytes a JPEG, and no more
    JPEGs than image starts a file of its size holds: at most an eighth of a crafted file's size
    (:data:`STARTS_EVERY`), as the offsets its walks mark (:class:`_Marks`)."""

    def __init__(self) -> None:
        self.starts, self.ends = array("q"), array("q")
        self.chain, self.head = array("q"), array("q")
        self.declared: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.starts)

    def add(self, at: int, end: int, *, linked: bool) -> int:
        """The JPEG from ``at`` to ``end`` (after the last one found; ``linked``: no video or
        trailer between them): its index."""
        j = len(self.starts)
        linked = linked and j > 0 and at - self.ends[j - 1] <= GAP_MAX
        self.chain.append(self.chain[j - 1] if linked else j)
        self.head.append(self.head[j - 1] if linked and at == self.ends[j - 1] else j)
        self.starts.append(at)
        self.ends.append(end)
        return j

    def before(self, j: int) -> array[int]:
        """Where the JPEGs of its chain right before the JPEG ``j`` begin (the last
        :data:`MPF_IMAGES` - 1): the runs it ends, besides itself."""
        return self.starts[max(self.chain[j], j - MPF_IMAGES + 1) : j]

    def runs(self, j: int) -> list[int]:
        """Where each run of JPEGs that the JPEG ``j`` ends begins: those :meth:`before` it,
        itself, then those their first declared, and the first of those one right after another
        up to it where more than :data:`MPF_IMAGES` are (:class:`_Run`)."""
        starts = [*self.before(j), self.starts[j], *self.declared.get(j, ())]
        first = self.head[j]
        if j - first >= MPF_IMAGES and self.starts[first] not in starts:
            starts.append(self.starts[first])
        return starts

    def followed(self, at: int) -> int:
        """The JPEG after whose EOI what begins at ``at`` lies (a trailer): the last to end at or
        before it, within :data:`GAP_MAX`, no JPEG beginning between; -1 where none does."""
        j = bisect.bisect_right(self.ends, at) - 1
        if j < 0 or at - self.ends[j] > GAP_MAX:
            return -1
        return j if j + 1 == len(self.starts) or self.starts[j + 1] >= at else -1


def _video_after(data: Buffer, end: int, before: int) -> tuple[int, ...]:
    """Where the video after a JPEG ending at ``end`` may end (:func:`_video_ends`): the first
    ``ftyp`` box that begins at its EOI or after bytes between (within :data:`GAP_MAX`, and
    before ``before``, where the next JPEG begins), and walks. Each box sought is told in a few
    comparisons; the stretch searched is the one between the two JPEGs, once."""
    last = min(before - 1, end + GAP_MAX)  # where the box may begin at the latest
    at = data.find(BMFF_FIRST, end + 4, last + 8)
    while at >= 0:
        if stops := _video_ends(data, at - 4):
            return stops
        at = data.find(BMFF_FIRST, at + 1, last + 8)
    return ()


def _videos(
    data: Buffer,
    found: _Found,
    before: int,
    video_end: int,
    sizes: embedded.SizeFilter | None,
    give: _Given,
) -> Generator[bytes | str, None, int]:
    """The stretches from each start of the runs the last JPEG found ends (:meth:`_Found.runs`)
    to where the video after it may end (:func:`_video_after`; ``before``: where the next JPEG
    begins), given when ``sizes`` may seek their size; it returns where the last video walked
    ends: where it was (``video_end``) when none is after it, or when that JPEG's EOI lies within
    it (a JPEG in its boxes: the walk would go over them again). A declared run's stretches are
    spent from ``give``."""
    j = len(found) - 1
    end = found.ends[j]
    if end < video_end or not (stops := _video_after(data, end, before)):
        return video_end
    runs, ran = found.runs(j), len(found.before(j)) + 1
    for stop in stops:
        for k, start in enumerate(runs):
            if sizes is None or sizes.may_match(stop - start):
                if k >= ran:  # a declared run, or one from the first of many
                    give.spend(stop - start)
                yield _given(data, start, stop)
    return stops[-1]


class _Trailers:
    """The Samsung trailers (SEF) after the JPEGs of ``data`` (:func:`_jpegs`). Each ``SEFT``
    marker after the first JPEG's EOI is found once (the next one looked for ahead, not at each
    JPEG) and read once, in order: where the trailer it ends begins is told by its directory
    (:func:`_sef_start`), the JPEG it follows by where the JPEGs found end
    (:meth:`_Found.followed`: right after its EOI, or after bytes between), and the stretch from
    each start of the runs that JPEG ends (:meth:`_Found.runs`) to the marker's end, and to the
    end of a QDIO block and ``BS`` right after it (:data:`QDIO_AFTER`), is given when ``sizes``
    may seek its size, however long the trailer (one over
    :data:`~visage_ml.rights.embedded.EMBED_MAX` as its SHA-256: :func:`_given`). No more
    markers are read than image starts a file of its size holds, and no more bytes given than
    :data:`SEF_GIVEN` times its size (:class:`~visage_ml.rights.embedded.TooManyStarts`)."""

    def __init__(self, data: Buffer, found: _Found) -> None:
        self.data, self.found = data, found
        self.next = -1  # the next marker (-1: not looked for yet; len(data): none)
        self.last = -1  # where the last trailer found after a JPEG ends
        self.left = _starts_allowed(data)  # markers yet to be read
        self.give = _Given(SEF_GIVEN, len(data))

    def _after(self, at: int) -> int:
        found = _find(self.data, SEF_END, at)
        return found if found >= 0 else len(self.data)

    def ended(self, before: int, sizes: embedded.SizeFilter | None) -> Iterator[bytes | str]:
        """The stretches to the end of each trailer whose ``SEFT`` marker ends by ``before``
        (where the next JPEG begins: the JPEGs found are those before it)."""
        data, found = self.data, self.found
        if self.next < 0:
            if not len(found):
                return
            self.next = self._after(found.ends[0])
        while self.next + len(SEF_END) <= before:
            at = self.next + len(SEF_END)
            self.next = self._after(at)
            self.left -= 1
            if self.left < 0:
                raise embedded.TooManyStarts
            start = _sef_start(data, at - len(SEF_END))
            j = found.followed(start) if start >= 0 else -1
            if j < 0:
                continue
            qdio = QDIO_AFTER.match(data, at)
            ends = (at,) if qdio is None else (at, qdio.end())
            self.last = ends[-1]
            for run in found.runs(j):
                for end in ends:
                    if sizes is None or sizes.may_match(end - run):
                        self.give.spend(end - run)
                        yield _given(data, run, end)


class _Run:
    """JPEGs one right after another from the first of them (:attr:`_Found.head`), hashed as the
    run goes: the SHA-256 of the run to an EOI (:meth:`to`) is its hash so far, its bytes hashed
    once however many EOIs are asked, and only as far as the last one asked."""

    def __init__(self, data: Buffer, start: int) -> None:
        self.data, self.start, self.at = data, start, start
        self.h = hashlib.sha256()

    def to(self, end: int) -> str:
        for at in range(self.at, end, CHUNK):
            self.h.update(self.data[at : min(at + CHUNK, end)])
        self.at = end
        return self.h.copy().hexdigest()


def _jpegs(data: Buffer, sizes: embedded.SizeFilter | None = None) -> Iterator[bytes | str]:
    """Each JPEG lying in ``data`` as it is (a pickle's bytes, an array's, a PDF's image), SOI
    to EOI: marker segments by their lengths (an EXIF thumbnail, a JPEG itself, lies within
    one: its EOI is not the photograph's), each scan's entropy-coded data to the marker after
    it (stuffed FF00 and restarts within), the scans of a progressive one one after the
    other. A segment walked from one SOI that led to no EOI leads to none from the next
    either: it is not walked again (as :func:`_pngs`). Fill bytes before a segment's marker
    (no encoder writes them) end the walk; before the marker after a scan they are passed
    over. Only an SOI a marker that may begin a JPEG follows is walked from
    (:data:`JPEG_START`), and no more of them than a file of its size holds
    (:class:`~visage_ml.rights.embedded.TooManyStarts`).

    A phone's multi-picture file (MPF: a photograph, then a gain map, a depth map... each a
    JPEG, the file ending with the last one's EOI) is its JPEGs one after another, each right
    after the one before or after bytes between (a camera puts each where its MP entry says, and
    may pad them; :data:`GAP_MAX` at most): where a JPEG begins so after the EOI of the one
    before, it also ends the run begun by each of the :data:`MPF_IMAGES` - 1 before it, and such
    a run is given when ``sizes`` may seek its size (every one without ``sizes``). That is a few
    sizes asked a JPEG, and no bytes but those of a run of a size sought: where sizes are not
    known (every one may match), a JPEG lying in such runs is given 10 times in all at most (1 +
    2 + 3 + 4: once alone, in two runs of two...), and the bytes between them 6, not once for each
    JPEG before it (a data set's image column holds its JPEGs one right after another, a PDF its
    images a few hundred bytes apart). A camera's file of more than :data:`MPF_IMAGES`
    (multi-angle, a multi-frame panorama) says how many it holds, in its first JPEG's MP index
    (:func:`_mpf_declared`): where that declares more, the run of as many JPEGs from it, up to
    :data:`MPF_DECLARED`, is given too when ``sizes`` may seek its size (one more size asked for
    such a JPEG, and bytes given in such runs :data:`MPF_GIVEN` times the file's size at most:
    :class:`~visage_ml.rights.embedded.TooManyStarts`). One that declares no count, or more than
    :data:`MPF_DECLARED` (a burst saved as one file), is found where it begins JPEGs one right
    after another (other bytes before it: an array of it alone, a pickled list's value, a PDF's
    stream): the run from the first of those to each EOI after the :data:`MPF_IMAGES`-th is given
    as its SHA-256 when ``sizes`` may seek its size, hashed as the run goes (:class:`_Run`: each
    byte once, one more size asked a JPEG). In the middle of JPEGs one right after another (an
    image column: each might be its first) it is not.

    A motion photo (Google's Motion Photo format, a Pixel's default; the older ``MVIMG_`` files) is
    its JPEG or JPEGs (an Ultra HDR photograph's gain map after it) then its video to the file's
    end, an MP4 (the photograph's XMP names its length, and the bytes of padding before it; its
    boxes say where it ends): where an ISO-BMFF ``ftyp`` box begins after a JPEG's EOI, right
    after it or after bytes between, before the next JPEG (:func:`_video_after`), the video's
    top-level boxes are walked by their sizes (:func:`_video_ends`), and the stretch from each
    start of the runs that JPEG ends to the end of the last box, and to that of the box before it
    (bytes after the video may read as one more box), is given when ``sizes`` may seek its size
    (:func:`_videos`). No walk begins from an EOI within the boxes the last one went over (a JPEG
    in a video's boxes: tiny JPEGs, each in a box ending at the next one's EOI, reached one chain
    to the end from each, walked over and over): each box is read about once, and each byte given
    in 2 x :data:`MPF_IMAGES` such stretches at most, or as a declared run's. A last box of size 0
    (to the end of the file; phones write its size) ends where ``data`` does (an array's last
    bytes; in a pickle or a PDF, the stretch is not the video's).

    A Galaxy's photograph (its motion photo's video in a ``MotionPhoto_Data`` block, the time it was
    taken...) is its JPEG or JPEGs then Samsung's trailer (SEF), which ends with its directory, the
    only part that says where its blocks lie: each ``SEFT`` after a JPEG's EOI is read once, its
    directory telling where its trailer begins, and where that is a JPEG's EOI or within
    :data:`GAP_MAX` after it, the stretch from each start of the runs that JPEG ends to the
    ``SEFT``'s end is given when ``sizes`` may seek its size, however long (:class:`_Trailers`);
    a Galaxy Tab's "Sound & Shot" one has a QDIO block and ``BS`` after its directory, given
    with it too.
    Not found: more than :data:`MPF_IMAGES` JPEGs that the first does not declare, or more than
    :data:`MPF_DECLARED`, where they do not begin JPEGs one right after another, or with bytes
    between them, more than :data:`GAP_MAX` bytes between a file's JPEGs or before its video or
    trailer, a trailer of neither kind, a Samsung trailer of more than :data:`SEF_BLOCKS` blocks
    or with other blocks than one QDIO after its directory.

    A stretch over :data:`~visage_ml.rights.embedded.EMBED_MAX` is given as its SHA-256 (hex):
    :func:`_given`.
    """
    dead = _Marks()  # offsets from which no EOI is reached
    ends: _ScanEnds | None = None
    size = len(data)
    allowed = _starts_allowed(data)
    found = _Found()
    # By the JPEG at which it ends, the start of each run a first JPEG declared (MPF_DECLARED).
    due: dict[int, list[int]] = {}
    give = _Given(MPF_GIVEN, size)  # bytes yet to be given in such runs
    video_end = 0  # where the last video walked after a JPEG's EOI ends
    trailers = _Trailers(data, found)
    run = _Run(data, 0)  # from the first of the last JPEGs found one right after another
    at = _search(data, JPEG_START, 0)
    while at >= 0:
        allowed -= 1
        if allowed < 0:
            raise embedded.TooManyStarts
        _let_go(data, at)
        if ends is not None:
            ends.forget(at)
        end, walked, whole, declared = at + 2, [], False, 0
        while end + 2 <= size and end not in dead:
            walked.append(end)
            code = data[end + 1]
            if data[end] != 0xFF or code in (0x00, 0xFF, JPEG_SOI):
                break
            if code == JPEG_EOI:
                end, whole = end + 2, True
                break
            if code in JPEG_ALONE:
                end += 2
                continue
            n = _segment_length(data, end)
            if n < 2 or end + 2 + n > size:
                break
            if code == MPF_APP2 and not declared:
                declared = _mpf_declared(data, end, n)
            end += 2 + n
            if code == JPEG_SOS:
                ends = ends if ends is not None else _ScanEnds(data)
                end = ends.end(end)
        if whole:
            # The video after the last one found (before this one), and the trailers that end
            # before this one: this one begins another chain after either.
            linked = len(found) > 0
            # (A box's header, 8 bytes, fits between them: else no video lies there.)
            if linked and at - found.ends[-1] >= 8:
                walked_to = yield from _videos(data, found, at, video_end, sizes, give)
                linked, video_end = walked_to == video_end, walked_to
            if trailers.next < 0 or trailers.next + len(SEF_END) <= at:  # (a marker before it)
                yield from trailers.ended(at, sizes)
            linked = linked and trailers.last < found.ends[-1]
            yield data[at:end]
            j = found.add(at, end, linked=linked)
            if found.chain[j] == j:
                due.clear()
            for start in found.before(j):
                if sizes is None or sizes.may_match(end - start):
                    yield data[start:end]
            # The runs of as many JPEGs as a first one declared end here (each of more than
            # MPF_IMAGES: a shorter one was given above); this one's declared run, later.
            if (runs := due.pop(j, None)) is not None:
                found.declared[j] = runs
                for start in runs:
                    if sizes is None or sizes.may_match(end - start):
                        give.spend(end - start)
                        yield _given(data, start, end)
            if declared > MPF_IMAGES:
                due.setdefault(j + min(declared, MPF_DECLARED) - 1, []).append(at)
            # The run from the first of those one right after another, past MPF_IMAGES of them
            # (unless it was declared).
            if found.head[j] == j:
                run = _Run(data, at)
            elif (
                j - found.head[j] >= MPF_IMAGES
                and (runs is None or run.start not in runs)
                and (sizes is None or sizes.may_match(end - run.start))
            ):
                yield run.to(end)
            at = _search(data, JPEG_START, end)
            continue
        dead.update(walked)
        at = _search(data, JPEG_START, at + 1)
    if len(found):
        yield from _videos(data, found, size, video_end, sizes, give)
    yield from trailers.ended(size, sizes)
