"""PNGs and JPEGs lying as they are in a file (:func:`_pngs`, signature to IEND; :func:`_jpegs`, SOI
to EOI, and a phone's multi-picture file: its JPEGs one right after another, a motion photo's video,
an MP4, or a Galaxy's trailer after them): a pickle's or an array's bytes, an image column of a data
set's container, a PDF's image (a DCTDecode stream is the JPEG's own bytes). Each is walked from
where one may begin, by its chunks' or segments' lengths, a stretch no walk ends in walked once, and
no more starts than a file of its size holds (:class:`~visage_ml.rights.embedded.TooManyStarts`): a
crafted file is read in time linear in its size, a mapped one in memory of a few pages."""

from __future__ import annotations

import re
import struct
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator

from visage_ml.rights import embedded
from visage_ml.rights.embedded_mapping import LET_GO, Buffer, _let_go, _Map

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
# Samsung.pm reads it). Only the directory says where the blocks end: a trailer is found from its
# end (:class:`_Trailers`).
SEF_BLOCK = re.compile(rb"\x00\x00..([\x01-\xff])\x00\x00\x00", re.DOTALL)  # a name under 256
SEF_NAME = re.compile(rb"[\x20-\x7e]+")
SEF_HEAD, SEF_END = b"SEFH", b"SEFT"
SEF_END_AT = re.compile(re.escape(SEF_END))
# A trailer is taken to be at most so long (a motion photo's video of a few seconds), its
# directory to list so many blocks at most; so many photographs' ends at most wait for theirs at
# once, and the stretches given to trailers' ends are so many times the file's size at most
# (trailers do not overlap: crafted ones one within another, each from its own EOI, would give
# the file over and over; more: :class:`~visage_ml.rights.embedded.TooManyStarts`).
SEF_MAX = 64 << 20
SEF_BLOCKS = 256
SEF_WAITING = 4096
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
    puts furthest before it), or -1 where no directory lies before it."""
    n = int.from_bytes(data[at - 4 : at], "little") if at >= 4 else 0
    head = at - 4 - n
    if not 24 <= n < 0x10000 or head < 0 or data[head : head + 4] != SEF_HEAD:
        return -1
    count = int.from_bytes(data[head + 8 : head + 12], "little")
    if not 0 < count <= min(SEF_BLOCKS, (n - 12) // 12):
        return -1
    back = max(struct.unpack_from(f"<{3 * count}I", data, head + 12)[1::3])
    return head - back if back <= head else -1


class _Trailers:
    """The Samsung trailers (SEF) after the JPEGs of ``data`` (:func:`_jpegs`). Each EOI a
    block's head follows waits, with the starts of the run of JPEGs it ends, for the trailer that
    begins there; each ``SEFT`` marker after one that waits is read once, in order, where the
    trailer it ends begins is told by its directory (:func:`_sef_start`), and the stretch from
    each start waiting there to its end is given when ``sizes`` may seek its size. An EOI waits
    until the markers have been looked for :data:`SEF_MAX` past it; no more than
    :data:`SEF_WAITING` wait at once, no more markers are read than image starts a file of its
    size holds, and no more bytes given than :data:`SEF_GIVEN` times its size
    (:class:`~visage_ml.rights.embedded.TooManyStarts`)."""

    def __init__(self, data: Buffer) -> None:
        self.data = data
        self.waiting: OrderedDict[int, tuple[int, ...]] = OrderedDict()  # EOI: its run's starts
        self.read_to = 0  # the markers before this were read
        self.left = _starts_allowed(data)  # markers yet to be read
        self.give = SEF_GIVEN * len(data)  # bytes yet to be given

    def wait(self, end: int, starts: tuple[int, ...]) -> None:
        """The JPEGs beginning at ``starts`` end at ``end``: a trailer may begin there."""
        data = self.data
        m = SEF_BLOCK.match(data, end)
        if m is None or SEF_NAME.fullmatch(data, end + 8, end + 8 + m[1][0]) is None:
            return
        if len(self.waiting) >= SEF_WAITING:
            raise embedded.TooManyStarts
        self.waiting[end] = starts

    def ended(self, before: int, sizes: embedded.SizeFilter | None) -> Iterator[bytes]:
        """The stretches from the starts waiting to the end of each trailer whose ``SEFT`` marker
        lies before ``before`` (where the next JPEG begins: no EOI after it waits yet)."""
        data, waiting = self.data, self.waiting
        while waiting:
            first = next(iter(waiting))
            stop = min(before, first + SEF_MAX)
            at = _search(data, SEF_END_AT, max(self.read_to, first), stop)
            if at < 0:
                self.read_to = max(self.read_to, stop)
                if stop == before:
                    return
                del waiting[first]  # no trailer of its within SEF_MAX
                continue
            self.read_to = at + len(SEF_END)
            self.left -= 1
            if self.left < 0:
                raise embedded.TooManyStarts
            starts = waiting.pop(_sef_start(data, at), ())
            for start in starts:
                if sizes is None or sizes.may_match(self.read_to - start):
                    self.give -= self.read_to - start
                    if self.give < 0:
                        raise embedded.TooManyStarts
                    yield data[start : self.read_to]


def _jpegs(data: Buffer, sizes: embedded.SizeFilter | None = None) -> Iterator[bytes]:
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
    JPEG, the file ending with the last one's EOI) is its JPEGs one right after another: where
    a JPEG begins at the EOI of the one before, it also ends the run begun by each of the
    :data:`MPF_IMAGES` - 1 before it, and such a run is given when ``sizes`` may seek its size
    (every one without ``sizes``). That is a few sizes asked a JPEG, and no bytes but those of a
    run of a size sought: where sizes are not known (every one may match), a JPEG lying in such
    runs is given 10 times in all at most (1 + 2 + 3 + 4: once alone, in two runs of two...),
    not once for each JPEG before it (a data set's image column holds its JPEGs one right after
    another). A camera's file of more than :data:`MPF_IMAGES` (multi-angle, a multi-frame
    panorama) says how many it holds, in its first JPEG's MP index (:func:`_mpf_declared`): where
    that declares more, the run of as many JPEGs from it, up to :data:`MPF_DECLARED`, is given
    too when ``sizes`` may seek its size (one more size asked for such a JPEG, and bytes given in
    such runs :data:`MPF_GIVEN` times the file's size at most:
    :class:`~visage_ml.rights.embedded.TooManyStarts`).

    A motion photo (Google's Motion Photo format, a Pixel's default; the older ``MVIMG_`` files) is
    its JPEG or JPEGs (an Ultra HDR photograph's gain map after it) then its video to the file's
    end, an MP4 (the photograph's XMP names its length; its boxes say where it ends): where the
    bytes right after a JPEG's EOI are an ISO-BMFF ``ftyp`` box, the video's top-level boxes are
    walked by their sizes (:func:`_video_ends`), and the stretch from each start of the run that
    JPEG ends (itself, and the :data:`MPF_IMAGES` - 1 before it) to the end of the last box, and to
    that of the box before it (bytes after the video may read as one more box), is given when
    ``sizes`` may seek its size. No walk begins from an EOI within the boxes the last one went over
    (a JPEG in a video's boxes: tiny JPEGs, each in a box ending at the next one's EOI, reached one
    chain to the end from each, walked over and over): each box is read about once, and each byte
    given in 2 x :data:`MPF_IMAGES` such stretches at most. A last box of size 0 (to the end of the
    file; phones write its size) ends where ``data`` does (an array's last bytes; in a pickle or a
    PDF, the stretch is not the video's).

    A Galaxy's photograph (its motion photo's video in a ``MotionPhoto_Data`` block, the time it was
    taken...) is its JPEG or JPEGs then Samsung's trailer (SEF), which ends with its directory, the
    only part that says where its blocks lie: where a block's head follows a JPEG's EOI, each
    ``SEFT`` after it is read, its directory telling where its trailer begins, and where that is the
    EOI, the stretch from each start of the run to the ``SEFT``'s end is given when ``sizes`` may
    seek its size (:class:`_Trailers`: each ``SEFT`` marker read once, however many EOIs wait). Not
    found: bytes between a JPEG's EOI and its video or trailer, or between its JPEGs, more than
    :data:`MPF_IMAGES` JPEGs that the first does not declare, or more than :data:`MPF_DECLARED`,
    more than :data:`MPF_IMAGES` followed by a video or trailer, a trailer of neither kind
    (Samsung's older ``QDIO`` one), a Samsung trailer over :data:`SEF_MAX` or of more than
    :data:`SEF_BLOCKS` blocks.
    """
    dead = _Marks()  # offsets from which no EOI is reached
    ends: _ScanEnds | None = None
    size = len(data)
    allowed = _starts_allowed(data)
    # Where the last JPEGs found, each beginning at the EOI of the one before, begin (the last
    # :data:`MPF_IMAGES` - 1), and where the last ends.
    run: deque[int] = deque(maxlen=MPF_IMAGES - 1)
    run_end = -1
    count = 0  # how many JPEGs the run holds so far
    # By the count at which it ends, the start of each run a first JPEG declared (MPF_DECLARED).
    due: dict[int, list[int]] = {}
    give = MPF_GIVEN * size  # bytes yet to be given in such runs
    video_end = 0  # where the last video walked after a JPEG's EOI ends
    trailers = _Trailers(data)
    at = _search(data, JPEG_START, 0)
    while at >= 0:
        allowed -= 1
        if allowed < 0:
            raise embedded.TooManyStarts
        _let_go(data, at)
        if ends is not None:
            ends.forget(at)
        end, walked, found, declared = at + 2, [], False, 0
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
            if code == MPF_APP2 and not declared:
                declared = _mpf_declared(data, end, n)
            end += 2 + n
            if code == JPEG_SOS:
                ends = ends if ends is not None else _ScanEnds(data)
                end = ends.end(end)
        if found:
            yield from trailers.ended(at, sizes)
            yield data[at:end]
            if at != run_end:
                run.clear()
                due.clear()
                count = 0
            count += 1
            for start in run:
                if sizes is None or sizes.may_match(end - start):
                    yield data[start:end]
            # The run of as many JPEGs as a first one declared ends here (one of more than
            # MPF_IMAGES: a shorter one was given above); this one's declared run, later.
            for start in due.pop(count, ()):
                if sizes is None or sizes.may_match(end - start):
                    give -= end - start
                    if give < 0:
                        raise embedded.TooManyStarts
                    yield data[start:end]
            if declared > MPF_IMAGES:
                due.setdefault(count + min(declared, MPF_DECLARED) - 1, []).append(at)
            # A video after the run's last EOI (a motion photo's), unless that EOI lies within
            # the last one walked (a JPEG in its boxes: the walk would go over them again).
            if end >= video_end and (stops := _video_ends(data, end)):
                video_end = stops[-1]
                for stop in stops:
                    for start in (*run, at):
                        if sizes is None or sizes.may_match(stop - start):
                            yield data[start:stop]
            trailers.wait(end, (*run, at))
            run.append(at)
            run_end = end
            at = _search(data, JPEG_START, end)
            continue
        dead.update(walked)
        at = _search(data, JPEG_START, at + 1)
    yield from trailers.ended(size, sizes)
