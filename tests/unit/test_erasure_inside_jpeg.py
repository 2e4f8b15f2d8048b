"""An erased photograph that is a JPEG, held inside a pickle, a NumPy array or a PDF report.

A project begun before sealing kept its photographs as the JPEG files a dataset brought, and
``visage privacy seal`` sealed those bytes as they are: the erased content is then a JPEG. A
data scientist's ordinary day leaves its exact bytes in ``pickle.dump(open(photo, "rb").read(),
f)``, ``np.save(f, np.frombuffer(jpeg, np.uint8))``, a pickled list of a dataset's JPEGs, a
PDF report (img2pdf and pdflatex embed a JPEG's bytes as they are, a DCTDecode stream;
reportlab ASCII85-encodes them first, by default).

Before, only PNGs were looked for inside pickles and arrays, and a PDF was not looked inside:
each kept the erased photograph through a certificate the verifier called VALID.
"""

from __future__ import annotations

import base64
import hashlib
import io
import pickle
import tracemalloc
import types
import zlib

import numpy as np
import pytest
from PIL import Image
from rights_fakes import make_project
from test_erasure_inside import put_back_fails_the_verifier, stopped_then_certified

from visage_ml.rights import embedded, embedded_photos
from visage_ml.rights.certify import verify_certificate


def _jpeg(arr: np.ndarray, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90, **save)
    return buf.getvalue()


def _ifd_entry(tag: int, value: int) -> bytes:
    """A TIFF directory entry of one LONG (type 4), big-endian."""
    return b"".join(x.to_bytes(k, "big") for x, k in ((tag, 2), (4, 2), (1, 4), (value, 4)))


def _with_thumbnail(arr: np.ndarray) -> bytes:
    """A camera's JPEG: an EXIF segment (APP1) holding a thumbnail, itself a JPEG with its own
    SOI and EOI, before the photograph's scan."""
    thumb = _jpeg(np.ascontiguousarray(arr[::4, ::4]))
    # TIFF: IFD0 with no entry, then IFD1 naming where the thumbnail lies and its length.
    ifd1_at = 8 + 6
    thumb_at = ifd1_at + 2 + 2 * 12 + 4
    tiff = b"MM\x00*" + (8).to_bytes(4, "big") + b"\x00\x00" + ifd1_at.to_bytes(4, "big")
    tiff += b"\x00\x02" + _ifd_entry(0x0201, thumb_at) + _ifd_entry(0x0202, len(thumb))
    tiff += b"\x00" * 4 + thumb
    app1 = b"Exif\x00\x00" + tiff
    body = _jpeg(arr)
    return body[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + body[2:]


def _multi_picture(arr: np.ndarray) -> bytes:
    """A phone's multi-picture file (MPF, as Pillow writes an MPO): the photograph, then a
    depth map and its confidence after its EOI, each a JPEG of its own; the file ends with the
    last one's EOI."""
    depth = Image.fromarray(np.ascontiguousarray(arr[::2, ::2, 0]))
    buf = io.BytesIO()
    Image.fromarray(arr).save(
        buf, format="MPO", save_all=True, append_images=[depth, depth], quality=90
    )
    return buf.getvalue()


def _multi_angle(arr: np.ndarray, *, views: int = 7) -> bytes:
    """A camera's multi-picture file of more than four JPEGs (MPF's multi-angle, multi-frame
    panorama or disparity images, as Pillow writes an MPO): ``views`` of the scene, each a JPEG
    right after the one before, the first's MP index declaring how many (NumberOfImages)."""
    shifted = [Image.fromarray(np.roll(arr, k, axis=1)) for k in range(1, views)]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="MPO", save_all=True, append_images=shifted, quality=90)
    return buf.getvalue()


def _spaced(mpo: bytes, gaps: list[bytes]) -> bytes:
    """A multi-picture file with ``gaps[i]`` between its JPEG ``i`` and the next (MPF puts each
    image where its MP entry says, its offset from the MP header: a camera may pad them), its MP
    entries' offsets and sizes written to match (Pillow's are wrong past the second image)."""
    images = mpo.replace(b"\xff\xd9\xff\xd8\xff", b"\xff\xd9\n\xff\xd8\xff").split(b"\xff\xd9\n")
    images = [image + b"\xff\xd9" for image in images[:-1]] + images[-1:]
    base = mpo.index(b"MPF\x00") + 4  # the MP header (a TIFF header): offsets count from it
    order = "big" if mpo[base : base + 2] == b"MM" else "little"

    def u(at: int, n: int = 4) -> int:
        return int.from_bytes(mpo[at : at + n], order)

    ifd = base + u(base + 4)
    tags = {u(e, 2): e for e in range(ifd + 2, ifd + 2 + 12 * u(ifd, 2), 12)}
    table = base + u(tags[0xB002] + 8)  # each entry: attribute, size, offset, dependents
    assert u(tags[0xB001] + 8) == len(images) == len(gaps) + 1
    first, at = bytearray(images[0]), 0
    for i, image in enumerate(images):
        entry = table + 16 * i
        first[entry + 4 : entry + 12] = b"".join(
            n.to_bytes(4, order) for n in (len(image), at - base if i else 0)
        )
        at += len(image) + (len(gaps[i]) if i < len(gaps) else 0)
    return bytes(first) + b"".join(g + image for g, image in zip(gaps, images[1:], strict=True))


# Bytes a camera or a tool may leave between a file's JPEGs, or before its trailer: zeros that
# align the next one, and a few others.
PADDING = [bytes(4096), b"\x5a\x17\xc3\x00\x9e"]


def _burst(arr: np.ndarray, *, frames: int = 6) -> bytes:
    """More than four JPEGs one right after another whose first declares no count (no MP index):
    a burst's frames saved as one file (``cat``), as a viewer shows the first."""
    return b"".join(_jpeg(np.roll(arr, k, axis=1)) for k in range(frames))


def _box(kind: bytes, payload: bytes, *, size: int | None = None) -> bytes:
    """An ISO-BMFF box (an MP4's): its size (4 bytes, big-endian; ``size=1``: 8 more bytes hold
    it; ``size=0``: it runs to the end of the file), its type, then ``payload``."""
    if size == 1:
        return b"\x00\x00\x00\x01" + kind + (16 + len(payload)).to_bytes(8, "big") + payload
    return (8 + len(payload) if size is None else size).to_bytes(4, "big") + kind + payload


def _video(arr: np.ndarray, *, mdat_size: int | None = None) -> bytes:
    """A phone's short video as an MP4 lays out its top-level boxes: ``ftyp``, ``mdat`` (its
    frames: here the photograph's pixels, twice), ``moov``; laid out as one is, not one that
    plays. ``mdat_size``: how its size is written (1: in 64 bits; 0: to the end, ``mdat``
    last)."""
    ftyp = _box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2avc1mp41")
    mdat = _box(b"mdat", arr.tobytes() * 2, size=mdat_size)
    moov = _box(b"moov", _box(b"mvhd", bytes(100)) + _box(b"trak", _box(b"tkhd", bytes(84))))
    return ftyp + (moov + mdat if mdat_size == 0 else mdat + moov)


def _motion_photo(
    arr: np.ndarray,
    *,
    gain_map: bool = False,
    mdat_size: int | None = None,
    padding: int = 0,
    views: int = 0,
) -> bytes:
    """A phone's motion photo as a Pixel writes it (Google's Motion Photo format): the
    photograph, with ``gain_map`` an Ultra HDR one (its gain map a JPEG right after its EOI,
    MPF), then the video (:func:`_video`) to the file's end; the photograph's XMP names the
    video's length (``Container:Directory``). ``padding``: so many bytes between the photograph
    and the video, as its item says (``Item:Padding``). ``views``: a multi-picture file of so
    many JPEGs (:func:`_multi_angle`) before the video."""
    video = _video(arr, mdat_size=mdat_size)
    if views:
        pictures = _multi_angle(arr, views=views)
        primary = pictures[: pictures.index(b"\xff\xd9\xff\xd8") + 2]
        rest = pictures[len(primary) :]
    elif gain_map:
        buf = io.BytesIO()
        small = Image.fromarray(np.ascontiguousarray(arr[::2, ::2, 0]))
        Image.fromarray(arr).save(
            buf, format="MPO", save_all=True, append_images=[small], quality=90
        )
        pictures = buf.getvalue()
        primary = pictures[: pictures.index(b"\xff\xd9") + 2]
        rest = pictures[len(primary) :]
    else:
        primary, rest = _jpeg(arr), b""
    items = [(b"image/jpeg", b"Primary", 0, padding)]
    items += [(b"image/jpeg", b"GainMap", len(rest), 0)] if rest else []
    items += [(b"video/mp4", b"MotionPhoto", len(video), 0)]
    xmp = (
        b'http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        b'xmlns:GCamera="http://ns.google.com/photos/1.0/camera/" '
        b'xmlns:Container="http://ns.google.com/photos/1.0/container/" '
        b'xmlns:Item="http://ns.google.com/photos/1.0/container/item/" '
        b'GCamera:MotionPhoto="1" GCamera:MotionPhotoVersion="1" '
        b'GCamera:MotionPhotoPresentationTimestampUs="0"><Container:Directory><rdf:Seq>'
        + b"".join(
            b'<rdf:li rdf:parseType="Resource"><Container:Item Item:Mime="%s" '
            b'Item:Semantic="%s" Item:Length="%d" Item:Padding="%d"/></rdf:li>' % item
            for item in items
        )
        + b"</rdf:Seq></Container:Directory></rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    # After APP0 (JFIF) and before the MPF segment, whose offsets are from its own header.
    app0_end = 4 + int.from_bytes(primary[4:6], "big")
    app1 = b"\xff\xe1" + (len(xmp) + 2).to_bytes(2, "big") + xmp
    return primary[:app0_end] + app1 + primary[app0_end:] + rest + bytes(padding) + video


def _sef_block(kind: int, name: bytes, value: bytes) -> bytes:
    """A block of a Samsung trailer: ``00 00``, its type and its name's length (little-endian),
    its name, its value."""
    return b"\x00\x00" + kind.to_bytes(2, "little") + len(name).to_bytes(4, "little") + name + value


def _samsung(
    arr: np.ndarray,
    *,
    video: bool | bytes = True,
    pictures: bytes | None = None,
    padding: bytes = b"",
    sound: bytes = b"",
) -> bytes:
    """A photograph as a Galaxy writes it (as ExifTool's Samsung.pm reads it): the JPEG (or the
    JPEGs of ``pictures``), then its trailer (SEF): its blocks one after another (with ``video``,
    a motion photo's, an MP4 in a ``MotionPhoto_Data`` block, or those bytes; every photograph's:
    the time it was taken, the network's country code, the camera's mode), then their directory
    (``SEFH``, a version, how many blocks, for each its type, how far before the directory it
    begins and its length), the directory's length and ``SEFT``. ``padding``: bytes between the
    photograph and its trailer (the directory says where each block lies). With ``sound``, a
    Galaxy Tab's "Sound & Shot" (the older trailer, as ExifTool reads it): the recording in a
    block of its own, and after the directory a ``QDIO`` block (its version, where the recording
    lies in the file, then its length and type) and ``BS``, which end the file."""
    blocks = [
        _sef_block(0x0A01, b"Image_UTC_Data", b"1700513181420"),
        _sef_block(0x0AA1, b"MCC_Data", b"310"),
        _sef_block(0x0C61, b"Camera_Capture_Mode_Info", b"1"),
    ]
    if video:
        clip = video if isinstance(video, bytes) else _video(arr)
        blocks.insert(0, _sef_block(0x0A30, b"MotionPhoto_Data", clip))
    if sound:
        blocks.insert(0, _sef_block(0x0100, b"SoundShot_000", sound))
    body = b"".join(blocks)
    at = [sum(len(b) for b in blocks[:i]) for i in range(len(blocks))]
    entries = b"".join(  # each: its type, how far before the directory it begins, its length
        b[:4] + (len(body) - a).to_bytes(4, "little") + len(b).to_bytes(4, "little")
        for b, a in zip(blocks, at, strict=True)
    )
    head = b"SEFH" + (106).to_bytes(4, "little") + len(blocks).to_bytes(4, "little") + entries
    photo = (_jpeg(arr) if pictures is None else pictures) + padding
    trailer = body + head + len(head).to_bytes(4, "little") + b"SEFT"
    if sound:
        at = len(photo) + 8 + len(b"SoundShot_000")
        where = b"".join(n.to_bytes(4, "little") for n in (101, 1, at, at + len(sound)))
        trailer += b"QDIO" + where + (20).to_bytes(4, "little") + b"QDIO" + b"BS"
    return photo + trailer


ENCODINGS = {
    "baseline": _jpeg,
    "progressive": lambda arr: _jpeg(arr, progressive=True),
    "exif-thumbnail": _with_thumbnail,
    "multi-picture": _multi_picture,
    "multi-angle": _multi_angle,
    "motion-photo": _motion_photo,
    "motion-photo-gain-map": lambda arr: _motion_photo(arr, gain_map=True, mdat_size=1),
    "samsung": lambda arr: _samsung(arr, video=False),
    "samsung-motion-photo": _samsung,
    # Bytes between its JPEGs, or before its video or trailer.
    "multi-picture-padded": lambda arr: _spaced(_multi_picture(arr), PADDING),
    "multi-angle-padded": lambda arr: _spaced(_multi_angle(arr), [PADDING[1]] * 6),
    "motion-photo-padded": lambda arr: _motion_photo(arr, padding=len(PADDING[0])),
    "samsung-padded": lambda arr: _samsung(arr, video=False, padding=PADDING[1] + PADDING[0]),
    # More than four JPEGs: their first declares no count, or a video or trailer follows them.
    "burst": _burst,
    "multi-angle-motion-photo": lambda arr: _motion_photo(arr, views=6),
    "multi-angle-samsung": lambda arr: _samsung(arr, pictures=_multi_angle(arr)),
    "burst-samsung": lambda arr: _samsung(arr, video=False, pictures=_burst(arr)),
    # Samsung's older trailer ("Sound & Shot"): QDIO and BS after the directory.
    "samsung-sound-and-shot": lambda arr: _samsung(arr, video=False, sound=_video(arr)),
}


def _pdf(photos: list[bytes], *, a85: bool = False) -> bytes:
    """A report of ``photos``, one a page, as img2pdf or pdflatex writes it: each JPEG's bytes
    as they are in an image's stream (``/DCTDecode``); with ``a85``, ASCII85-encoded first, as
    reportlab does by default. Offsets in its cross-reference table are right."""
    objs: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    for photo in photos:
        page = len(objs) + 1
        kids.append(b"%d 0 R" % page)
        data = base64.a85encode(photo, wrapcol=72) + b"~>" if a85 else photo
        filters = b"[/ASCII85Decode /DCTDecode]" if a85 else b"/DCTDecode"
        content = b"q 32 0 0 32 0 0 cm /Im0 Do Q"
        objs += [
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 32 32] "
            b"/Resources << /XObject << /Im0 %d 0 R >> >> /Contents %d 0 R >>"
            % (page + 1, page + 2),
            b"<< /Type /XObject /Subtype /Image /Width 32 /Height 32 /ColorSpace /DeviceRGB "
            b"/BitsPerComponent 8 /Filter %s /Length %d >>\nstream\n%s\nendstream"
            % (filters, len(data), data),
            b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        ]
    objs[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def _npy(data: bytes) -> bytes:
    out = io.BytesIO()
    np.save(out, np.frombuffer(data, dtype=np.uint8))
    return out.getvalue()


def _holders(photo: bytes, others: list[bytes]) -> dict[str, bytes]:
    """Files holding ``photo``'s bytes as they are: a pickle of them, an array, a pickled list
    of a dataset's photographs (``photo`` in the middle), PDF reports."""
    return {
        "photo.pkl": pickle.dumps(photo),
        "photo.npy": _npy(photo),
        "dataset.pkl": pickle.dumps([others[0], photo, others[1]]),
        "report.pdf": _pdf([others[0], photo]),
        "report-reportlab.pdf": _pdf([photo, others[1]], a85=True),
    }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_a_jpeg_held_in_a_pickle_an_array_or_a_pdf_stops_the_erasure(project, encoding):
    """The files stay (they hold a colleague's work too): the erasure stops before its
    certificate and says where to look, ``doctor`` lists them; once the operator has taken
    the photograph out the resumed erasure certifies, and the verifier fails the certificate
    while any of them is back."""
    proj = make_project(project, n_subjects=3, encode=ENCODINGS[encoding])
    victim = proj.pids[0]
    photo = next(iter(proj.images[victim].values()))
    theirs = [p for pid in proj.pids[1:] for p in proj.images[pid].values()]
    assert photo.startswith(b"\xff\xd8\xff")  # stored as the JPEG it is
    if encoding == "progressive":
        assert photo.count(b"\xff\xda") > 1  # scan after scan
    if encoding == "exif-thumbnail":
        assert photo.index(b"\xff\xd9") < len(photo) - 2  # the thumbnail's EOI comes first
        assert "exif" in Image.open(io.BytesIO(photo)).info
    if encoding == "multi-picture":
        assert Image.open(io.BytesIO(photo)).n_frames == 3  # bytes after the first EOI
    if encoding == "multi-angle":
        shown = Image.open(io.BytesIO(photo))
        assert shown.n_frames == 7 and shown.mpinfo[0xB001] == 7  # as its MP index says
    if encoding.startswith("motion-photo"):  # a photograph, then a video to the file's end
        shown = Image.open(io.BytesIO(photo))
        assert b"MotionPhoto" in shown.info["xmp"]
        assert getattr(shown, "n_frames", 1) == (2 if encoding.endswith("gain-map") else 1)
        assert not photo.endswith(b"\xff\xd9")
    if encoding.startswith("samsung"):  # its trailer after the EOI, ending the file
        assert Image.open(io.BytesIO(photo)).format == "JPEG"
        assert photo.endswith(b"QDIOBS" if encoding.endswith("sound-and-shot") else b"SEFT")
        assert (b"MotionPhoto_Data" in photo) == encoding.endswith("motion-photo")
    if encoding.endswith("-padded"):  # bytes right after an EOI, before what follows it
        assert any(b"\xff\xd9" + pad[:16] in photo for pad in PADDING)
    if encoding in ("multi-picture-padded", "multi-angle-padded"):
        shown = Image.open(io.BytesIO(photo))  # each JPEG where its MP entry says
        for frame in range(shown.n_frames):
            shown.seek(frame)
            shown.load()
    if "burst" in encoding:  # six JPEGs, the first without an MP index
        assert photo.count(b"\xff\xd8\xff") == 6 and b"MPF\x00" not in photo
    if encoding.startswith("multi-angle-"):  # more than four JPEGs, then a video or trailer
        assert Image.open(io.BytesIO(photo)).mpinfo[0xB001] in (6, 7)
    folder = proj.paths.root / "data" / "shared_for_colleague"
    folder.mkdir(parents=True)
    made = {folder / n: d for n, d in _holders(photo, theirs[:2]).items()}
    # The same files of the other subjects' photographs are no concern.
    kept = {folder / f"other-{n}": d for n, d in _holders(theirs[2], theirs[3:5]).items()}
    for path, data in {**made, **kept}.items():
        path.write_bytes(data)
    said, done = stopped_then_certified(proj, victim, made, kept)
    assert "data: " in said, said
    assert verify_certificate(done.certificate_path, root=proj.paths.root).ok
    put_back_fails_the_verifier(proj, done, made)


def test_a_pdf_is_told_by_its_header_not_its_name():
    pdf = _pdf([b"\xff\xd8\xff\xd9"])
    assert embedded.kind(pdf[: embedded.SNIFF]) == embedded.PDF
    # Saved from a mail or a web server: lines before the header, which readers accept.
    assert embedded.kind(b"Content-Type: application/pdf\r\n\r\n" + pdf) == embedded.PDF
    # A text that names the header is still a text (its base64 runs cut out, the file kept).
    assert embedded.kind(b'HEADER = b"%PDF-1.4"\n' + b"x = 1\n" * 10) == embedded.TEXT


def _scan_of(*parts: bytes) -> bytes:
    """A JPEG's shape by hand: a table segment, then a scan of ``parts``."""
    return b"\xff\xd8\xff\xdb\x00\x04\x01\x02\xff\xda\x00\x04\x03\x04" + b"".join(parts)


def test_a_scan_is_read_past_stuffed_bytes_restarts_and_fill_to_its_eoi():
    """Entropy-coded data holds FF00 (an FF of the data) and restart markers, and may put
    fill bytes before its EOI; the JPEG may end the buffer (an array's last bytes)."""
    jpeg = _scan_of(
        b"\x12\xff\x00\xd9\x34", b"\xff\xd0", b"\x56\xff\x00\xff\xd7\x78", b"\xff\xff\xd9"
    )
    for holder in (b"\x80\x04" + jpeg + b"\x94.", _npy(jpeg), b"\x80\x04" + jpeg):
        assert list(embedded_photos._jpegs(holder)) == [jpeg]
    # Cut short, or a marker that cannot be there: no JPEG.
    assert list(embedded_photos._jpegs(b"\x80\x04" + jpeg[:-1])) == []
    assert list(embedded_photos._jpegs(b"\x80\x04" + _scan_of(b"\x12\xff\xd8\x34\xff\xd9"))) == []


def test_crafted_jpeg_markers_are_read_in_linear_time(monkeypatch):
    """SOIs each within the segment before it, and SOIs each followed by a scan ending in one
    long stretch without a marker: walking each from its SOI went over every segment after it,
    and searching each scan's data to its end went over the stretch once a SOI. Each segment
    is now read a few times at most, and the stretch searched about once (below the image
    starts a file may hold: here, all)."""
    monkeypatch.setattr(embedded_photos, "STARTS_FLOOR", 1 << 20)
    segments, searched = [], []
    real_length, real_marker = embedded_photos._segment_length, embedded_photos._marker

    def length(data, at):
        segments.append(at)
        return real_length(data, at)

    def marker(data, start, end):
        found = real_marker(data, start, end)
        searched.append((found if found >= 0 else end) - start)
        return found

    monkeypatch.setattr(embedded_photos, "_segment_length", length)
    monkeypatch.setattr(embedded_photos, "_marker", marker)
    n = 15_000
    nested = b"\x80\x04\xff\xd8" + b"\xff\xe0\x00\x04\xff\xd8" * n
    list(embedded.inside(nested, embedded.BINARY))
    assert len(segments) <= 4 * n
    n, stretch = 2_000, 1 << 20
    units = bytearray(b"\x80\x04")
    for i in range(n):
        # SOI, an empty DQT, then SOS whose scan begins in the stretch, each at its own offset.
        at = len(units) + 8
        units += b"\xff\xd8\xff\xdb\x00\x02\xff\xda" + (12 * n + 7 * i - at).to_bytes(2, "big")
    scans = bytes(units) + bytes(stretch)
    list(embedded.inside(scans, embedded.BINARY))
    assert sum(searched) <= 2 * len(scans)


def test_an_ascii85_image_after_an_uncompressed_content_stream_is_found():
    """A content stream left uncompressed and a dictionary without ``/Type`` are of ASCII85's
    alphabet: one run from the first ``stream`` to the image's ``~>``. The image's stream is
    the last to begin in it."""
    photo = _jpeg(np.full((32, 32, 3), 128, dtype=np.uint8))
    encoded = base64.a85encode(photo, wrapcol=72) + b"~>"
    pdf = (
        b"%%PDF-1.4\n%%\xe2\xe3\xcf\xd3\n"
        b"5 0 obj\n<< /Length 28 >>\nstream\nq 32 0 0 32 0 0 cm /Im0 Do Q\nendstream\nendobj\n"
        b"6 0 obj\n<< /Filter [/ASCII85Decode /DCTDecode] /Length %d >>\nstream\n%s\nendstream\n"
        % (len(encoded), encoded)
    )
    assert _sha(photo) in set(embedded.inside(pdf, embedded.PDF))


def test_an_ascii85_stream_is_decoded_in_memory_near_its_size():
    """A PDF of one ASCII85 stream of ``z`` (four zero bytes a character; a 64 MiB one zips to
    64 kB): Python's decoder held some 90 bytes a character (6 GB for such a PDF, in each scan
    thread), so a file mailed to the team took down every erasure and verification. What it
    holds is still found, in memory of a few times what it decodes to."""
    photo = _jpeg(np.full((32, 32, 3), 128, dtype=np.uint8))
    n = 4 << 20
    encoded = b"z" * n + base64.a85encode(photo)
    pdf = b"%%PDF-1.4\n1 0 obj\n<< >>\nstream\n%s~>\nendstream\n" % encoded
    decoded = base64.a85decode(encoded)
    tracemalloc.start()
    try:
        found = set(embedded.inside(pdf, embedded.PDF))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert _sha(decoded) in found
    assert peak < 3 * len(decoded), peak >> 20


class _Sought:
    """A size filter seeking ``sizes``, counting what it is asked."""

    def __init__(self, sizes: set[int]) -> None:
        self.sizes, self.asked = sizes, 0

    def may_match(self, size: int) -> bool:
        self.asked += 1
        return size in self.sizes


def test_a_multi_picture_file_among_jpegs_one_after_another_is_found_by_its_size():
    """A data set's image column (an Arrow buffer, an array of their bytes) holds its JPEGs one
    right after another: a phone's multi-picture file among them is found where its size is
    sought, and no other run of them is given."""
    rng = np.random.default_rng(0)
    photos = [_jpeg(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]
    phone = _multi_picture(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    column = _npy(b"".join([*photos[:2], phone, *photos[2:]]))
    sizes = _Sought({len(phone)})
    assert _sha(phone) in set(embedded.inside(column, embedded.BINARY, sizes=sizes))
    found = list(embedded_photos._jpegs(column, sizes))
    assert found[:3] == [*photos[:2], phone[: phone.index(b"\xff\xd9") + 2]]  # its photograph
    assert phone in found
    assert len(found) == len(photos) + 3 + 1  # each JPEG, and the one run of the size sought


def test_jpegs_one_after_another_are_joined_in_bounded_work(monkeypatch):
    """A crafted file of tiny JPEGs one right after another, every size of their runs sought: a
    few sizes asked a JPEG, and each JPEG's bytes given in the runs of up to
    :data:`MPF_IMAGES` JPEGs that hold it (10 times), not once for each JPEG before it (the run
    from the first of them is given as its SHA-256, hashed as it goes)."""
    monkeypatch.setattr(embedded_photos, "STARTS_FLOOR", 1 << 20)
    tiny = b"\xff\xd8\xff\xe0\x00\x02\xff\xd9"
    n = 50_000
    data = b"\x80\x04" + tiny * n
    sizes = _Sought(set(range(0, len(data) + 1, len(tiny))))
    given = 0
    for found in embedded_photos._jpegs(data, sizes):
        given += len(found) if isinstance(found, bytes) else 0
    k = embedded_photos.MPF_IMAGES
    assert sizes.asked <= k * n
    assert len(data) * k < given <= len(data) * k * (k + 1) // 2  # runs of 1 to k JPEGs each


def _found_alike(tmp_path, column: bytes, sizes) -> set[str]:
    """What the scan finds in the array ``column`` held in memory, checked to be what it finds
    reading the same array from its file."""
    found = set(embedded.inside(column, embedded.BINARY, sizes=sizes))
    path = tmp_path / "column.npy"
    path.write_bytes(column)
    with open(path, "rb") as fh:
        assert set(embedded.inside_large(fh, embedded.BINARY, sizes=sizes)) == found
    return found


def test_a_multi_angle_file_among_jpegs_one_after_another_is_found_by_its_size(tmp_path):
    """A camera's multi-picture files of more than four JPEGs (seven, and the most taken as
    declared, MPF_DECLARED) among a data set's JPEGs one right after another: each is found
    where its size is sought, from the file (mapped) as in memory, the run its first JPEG
    declares and no other stretch given. One that declares more JPEGs than follow it gives
    nothing more; one with bytes between its JPEGs (a camera may pad them) is found."""
    rng = np.random.default_rng(3)
    pixels = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(5)]
    photos = [_jpeg(p) for p in pixels[:3]]
    most = embedded_photos.MPF_DECLARED
    cameras = [_multi_angle(pixels[3]), _multi_angle(pixels[4], views=most)]
    column = _npy(b"".join([photos[0], cameras[0], photos[1], cameras[1], photos[2]]))
    sizes = _Sought({len(c) for c in cameras})
    found = _found_alike(tmp_path, column, sizes)
    assert {_sha(c) for c in cameras} <= found
    jpegs = [g for g in embedded_photos._jpegs(column, sizes) if g.count(b"\xff\xd8\xff") == 1]
    assert len(jpegs) == 3 + 7 + most  # each JPEG alone, and no run but the two sought
    assert [g for g in embedded_photos._jpegs(column, sizes) if g not in jpegs] == cameras
    # Cut short (its last JPEG gone): not that size. A byte between two of its JPEGs: found.
    cut = cameras[0][: cameras[0].rindex(b"\xff\xd8\xff")]
    sizes = _Sought(set(range(len(cut) + 1)))
    assert cut not in list(embedded_photos._jpegs(_npy(cut), sizes))
    second = cameras[0].index(b"\xff\xd8\xff", 1)
    gap = cameras[0][:second] + b"\x00" + cameras[0][second:]
    assert gap in list(embedded_photos._jpegs(_npy(gap), _Sought({len(gap)})))


def _declaring(n: int) -> bytes:
    """A tiny JPEG whose MP index declares ``n`` images (NumberOfImages, big-endian)."""
    ifd = b"\x00\x01" + b"\xb0\x01\x00\x04\x00\x00\x00\x01" + n.to_bytes(4, "big") + bytes(4)
    mpf = b"MPF\x00MM\x00*\x00\x00\x00\x08" + ifd
    return b"\xff\xd8\xff\xe2" + (2 + len(mpf)).to_bytes(2, "big") + mpf + b"\xff\xd9"


def test_declared_runs_of_jpegs_are_given_in_bounded_work(monkeypatch):
    """Crafted: tiny JPEGs one right after another, each declaring the most images taken
    (MPF_DECLARED), every size sought: each declared run overlaps the next ones, and past
    MPF_GIVEN times the file's size given in them the file is not read to its end (not shown
    clean). Declared runs one after another (a column of multi-angle files) are each given
    once: one more size asked for each, no more than the file given once more."""
    monkeypatch.setattr(embedded_photos, "STARTS_FLOOR", 1 << 20)
    k, most = embedded_photos.MPF_IMAGES, embedded_photos.MPF_DECLARED
    n = 20_000
    every = b"\x80\x04" + _declaring(most) * n
    sizes = _Sought(set(range(len(every) + 1)))
    given = 0
    with pytest.raises(embedded.TooManyStarts):
        for found in embedded_photos._jpegs(every, sizes):
            given += len(found) if isinstance(found, bytes) else 0
    assert given <= len(every) * (k * (k + 1) // 2 + embedded_photos.MPF_GIVEN)
    files = b"\x80\x04" + (_declaring(16) + _declaring(0) * 15) * (n // 16)
    sizes = _Sought(set(range(len(files) + 1)))
    given = sum(len(g) for g in embedded_photos._jpegs(files, sizes) if isinstance(g, bytes))
    assert sizes.asked <= k * n + n // 16  # and the run from the first of them all
    assert given <= len(files) * (k * (k + 1) // 2 + 1)


def test_a_motion_photo_among_jpegs_one_after_another_is_found_by_its_size(tmp_path):
    """Motion photos (a photograph, a gain map, a video to the end) among a data set's JPEGs one
    right after another, the video's last box running to the end of the file for the last one:
    each is found where its size is sought, from the file (mapped) as in memory, and no other
    stretch is given. A video cut short (a copy broken off) gives its boxes before the cut."""
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(7)]
    photos = [_jpeg(p) for p in pixels[:4]]
    phones = [
        _motion_photo(pixels[4]),
        _motion_photo(pixels[5], gain_map=True, mdat_size=1),
        _motion_photo(pixels[6], mdat_size=0),
    ]
    column = _npy(b"".join([photos[0], phones[0], photos[1], phones[1], *photos[2:], phones[2]]))
    sizes = _Sought({len(p) for p in phones})
    found = _found_alike(tmp_path, column, sizes)
    assert {_sha(p) for p in phones} <= found
    given = [g for g in embedded_photos._jpegs(column, sizes) if not g.endswith(b"\xff\xd9")]
    assert given == phones  # each of its size, from its photograph to its video's end
    # Bytes after it that read as one more box (a PDF's "\nendstream" does where 174 MB of the
    # PDF follow: a box of that size, of type "stre").
    after = _npy(phones[0] + b"\x00\x00\x01\x00stre" + bytes(400))
    assert _sha(phones[0]) in set(embedded.inside(after, embedded.BINARY, sizes=sizes))
    # Cut off in its video's moov: the boxes before the cut (ftyp, mdat) end it.
    cut = phones[0][:-50]
    assert list(embedded_photos._jpegs(_npy(cut)))[-1] == cut[: cut.rindex(b"moov") - 4]


def test_jpegs_with_bytes_between_them_are_found_by_their_size(tmp_path, monkeypatch):
    """A phone's multi-picture file with bytes between its JPEGs (each where its MP entry says),
    a motion photo with padding before its video (``Item:Padding``), a Galaxy's photograph with
    bytes before its trailer, among a data set's JPEGs one right after another: each is found
    where its size is sought, from the file (mapped) as in memory, and no other stretch given.
    More than GAP_MAX bytes between (here made small) and they are not."""
    rng = np.random.default_rng(4)
    pixels = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(7)]
    photos = [_jpeg(p) for p in pixels[:4]]
    padded = [
        _spaced(_multi_picture(pixels[4]), PADDING),
        _motion_photo(pixels[5], padding=len(PADDING[0])),
        _samsung(pixels[6], padding=PADDING[1] + PADDING[0]),
    ]
    column = _npy(b"".join(x for pair in zip(photos, [*padded, b""], strict=True) for x in pair))
    sizes = _Sought({len(p) for p in padded})
    assert {_sha(p) for p in padded} <= _found_alike(tmp_path, column, sizes)
    given = list(embedded_photos._jpegs(column, sizes))
    assert [g for g in given if len(g) in sizes.sizes] == padded
    assert len(given) == 4 + 3 + 1 + 1 + len(padded)  # each JPEG alone, and the three sought
    monkeypatch.setattr(embedded_photos, "GAP_MAX", len(PADDING[0]) - 1)
    assert not {_sha(p) for p in padded} & _found_alike(tmp_path, column, sizes)


def test_a_samsung_trailer_of_any_length_is_found(tmp_path):
    """A Galaxy's photograph whose trailer is over 64 MiB (its motion photo's video), among other
    JPEGs: found where its size is sought, from the file (mapped) as in memory; the stretch,
    too large to hold, hashed a MiB at a time."""
    rng = np.random.default_rng(5)
    pixels = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    clip = _video(pixels[2]) + bytes(embedded.EMBED_MAX)
    galaxy = _samsung(pixels[2], video=clip)
    column = _npy(_jpeg(pixels[0]) + galaxy + _jpeg(pixels[1]))
    sizes = _Sought({len(galaxy)})
    assert _sha(galaxy) in _found_alike(tmp_path, column, sizes)
    assert _sha(galaxy) in list(embedded_photos._jpegs(column, sizes))  # as its SHA-256


def test_jpegs_with_bytes_between_them_are_joined_in_bounded_work(monkeypatch):
    """Crafted: tiny JPEGs, a byte between each two, every size sought: a few sizes asked a
    JPEG, each byte given in a few runs (as for JPEGs one right after another). And with many
    ``ftyp`` between them (a video's first box, none that walks): each is tried once."""
    read = _counted(monkeypatch, "_video_ends")
    tiny = b"\xff\xd8\xff\xe0\x00\x02\xff\xd9"
    k, n = embedded_photos.MPF_IMAGES, 20_000
    data = b"\x80\x04" + (tiny + b"\x00") * n
    sizes = _Sought(set(range(len(data) + 1)))
    given = sum(len(found) for found in embedded_photos._jpegs(data, sizes))
    assert sizes.asked <= (k - 1) * n
    assert given <= len(data) * k * (k + 1) // 2
    boxes = b"\x80\x04" + (tiny + b"\xff\xff\xff\xffftyp" * 100) * (n // 100)
    sizes = _Sought(set(range(len(boxes) + 1)))
    list(embedded_photos._jpegs(boxes, sizes))
    assert len(read) == 100 * (n // 100)


def test_more_than_four_jpegs_that_declare_no_count_are_found_where_they_begin(tmp_path):
    """Files of more JPEGs than MPF_IMAGES, one right after another, whose first declares no count
    (bursts saved as one file, of six and of 70), and a camera's that declares more than
    MPF_DECLARED: each found where its size is sought and it begins its JPEGs one right after
    another (bytes other than a JPEG's before it: an array of it alone, a pickled list's values, a
    PDF's stream), from the file (mapped) as in memory. One in the middle of JPEGs one right after
    another (an image column) is not: every JPEG there might be its first."""
    rng = np.random.default_rng(6)
    pixels = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(5)]
    photos = [_jpeg(p) for p in pixels[:2]]
    most = embedded_photos.MPF_DECLARED
    files = [
        _burst(pixels[2]),
        _burst(pixels[3], frames=70),
        _multi_angle(pixels[4], views=most + 6),
    ]
    sizes = _Sought({len(f) for f in files})
    apart = _npy(b"\x94B\x00\x00".join([photos[0], *files, photos[1]]))  # a few bytes between
    assert {_sha(f) for f in files} <= _found_alike(tmp_path, apart, sizes)
    given = [g for g in embedded_photos._jpegs(apart, sizes) if isinstance(g, str)]
    assert given == [_sha(f) for f in files]  # each hashed as its run went, given as its SHA-256
    column = _npy(b"".join([photos[0], files[0], photos[1]]))  # one right after another
    assert _sha(files[0]) not in _found_alike(tmp_path, column, sizes)
    assert _sha(files[0]) in _found_alike(tmp_path, _npy(files[0]), sizes)


def test_runs_of_jpegs_from_where_they_begin_are_hashed_once(monkeypatch):
    """Crafted: tiny JPEGs one right after another, every size sought: one more size asked a
    JPEG, each run from the first given as its SHA-256, the bytes hashed once as the runs go, not
    once a run."""
    monkeypatch.setattr(embedded_photos, "STARTS_FLOOR", 1 << 20)
    hashed = []

    class Counted:
        def __init__(self) -> None:
            self.h = hashlib.sha256()

        def update(self, data: bytes) -> None:
            hashed.append(len(data))
            self.h.update(data)

        def copy(self):
            return self.h.copy()

        def hexdigest(self) -> str:
            return self.h.hexdigest()

    monkeypatch.setattr(embedded_photos, "hashlib", types.SimpleNamespace(sha256=Counted))
    tiny = b"\xff\xd8\xff\xe0\x00\x02\xff\xd9"
    k, n = embedded_photos.MPF_IMAGES, 50_000
    data = b"\x80\x04" + tiny * n
    sizes = _Sought(set(range(len(data) + 1)))
    digests = [g for g in embedded_photos._jpegs(data, sizes) if isinstance(g, str)]
    assert digests[-1] == _sha(data[2:]) and len(digests) == n - k
    assert sizes.asked <= k * n
    assert sum(hashed) == len(data) - 2


def _counted(monkeypatch, name: str) -> list[int]:
    """Where ``embedded_photos.<name>(data, at)`` is called from, each call appended to the list
    returned; the limit on image starts raised (a crafted file's work is what is measured)."""
    monkeypatch.setattr(embedded_photos, "STARTS_FLOOR", 1 << 20)
    read: list[int] = []
    real = getattr(embedded_photos, name)

    def counted(data, at):
        read.append(at)
        return real(data, at)

    monkeypatch.setattr(embedded_photos, name, counted)
    return read


def test_a_video_after_jpegs_is_walked_once_however_many_jpegs_reach_it(monkeypatch):
    """Crafted: tiny JPEGs, each lying in a box whose end is the next one's EOI (one chain of
    boxes from the first JPEG's EOI to the end, reached from every JPEG's EOI); and tiny JPEGs
    each followed by a long chain of its own. Each box is read about once, and each byte given
    a few times (every size sought: in runs of up to MPF_IMAGES JPEGs, a box's header between
    two, and to the last box's end and to the one's before), not once for each JPEG before it;
    no run goes over a video (the JPEG after it is another file's)."""
    read = _counted(monkeypatch, "_box_end")
    tiny = b"\xff\xd8\xff\xe0\x00\x02\xff\xd9"
    n = 20_000
    nested = b"\x80\x04" + tiny + (b"\x00\x00\x00\x10ftyp" + tiny) * n
    chained = b"\x80\x04" + (tiny + b"\x00\x00\x00\x08ftyp" + b"\x00\x00\x00\x08free" * 500) * 80
    for data in (nested, chained):
        read.clear()
        sizes = _Sought(set(range(len(data) + 1)))
        given = sum(len(found) for found in embedded_photos._jpegs(data, sizes))
        assert len(read) <= 2 * len(data) // 8
        assert sizes.asked <= 2 * embedded_photos.MPF_IMAGES * (n + 1)
        k = embedded_photos.MPF_IMAGES
        # The runs (a box's header between two JPEGs), then each JPEG with its chain.
        assert len(data) < given <= (k * (k + 1) // 2 + 2) * len(data)
    assert given <= 3 * len(chained)  # each JPEG, then with its own chain: no run over one


def test_a_samsung_photograph_among_jpegs_one_after_another_is_found_by_its_size(tmp_path):
    """Galaxy photographs with their trailer (SEF: a motion photo's video, or only the time it
    was taken; a Galaxy Tab's "Sound & Shot", its recording in the trailer and QDIO and BS after
    it) among a data set's JPEGs one right after another: each is found where its size is
    sought, from the file (mapped) as in memory, and no other stretch is given. A trailer cut
    short (its directory gone) is not found, nor does it keep the next one from being found."""
    rng = np.random.default_rng(2)
    pixels = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(7)]
    photos = [_jpeg(p) for p in pixels[:3]]
    galaxy = [_samsung(pixels[3]), _samsung(pixels[4], video=False), _samsung(pixels[5])]
    galaxy.append(_samsung(pixels[6], video=False, sound=_video(pixels[6])))  # QDIOBS after
    broken = galaxy[0][: galaxy[0].rindex(b"SEFH")]
    parts = [photos[0], galaxy[0], photos[1], broken, galaxy[1], photos[2], galaxy[2], galaxy[3]]
    column = _npy(b"".join(parts))
    sizes = _Sought({len(p) for p in [*galaxy, broken]})
    found = _found_alike(tmp_path, column, sizes)
    assert {_sha(p) for p in galaxy} <= found
    assert _sha(broken) not in found
    given = [g for g in embedded_photos._jpegs(column, sizes) if not g.endswith(b"\xff\xd9")]
    assert given == galaxy


def test_samsung_trailers_are_read_once_however_many_photographs_precede_them(monkeypatch):
    """Crafted: tiny JPEGs each followed by a trailer's first block, then many ``SEFT`` markers
    after them, each with a directory naming where a trailer begins: each marker is read once,
    not once for each JPEG before it, and each byte given a few times (every size sought). More
    markers than image starts the file may hold, or trailers one within another giving the file
    over and over, and it is not read to its end (not shown clean)."""
    read = _counted(monkeypatch, "_sef_start")
    tiny = b"\xff\xd8\xff\xe0\x00\x02\xff\xd9"
    block = _sef_block(0x0A01, b"Image_UTC_Data", b"")
    n = 2_000
    waiting = b"\x80\x04" + (tiny + block) * n
    # Each directory names the bytes right before it: no block's head, after no JPEG's EOI.
    head = b"SEFH" + bytes(4) + (1).to_bytes(4, "little") + block[:4] + (8).to_bytes(4, "little")
    head += (8).to_bytes(4, "little")
    data = waiting + (head + len(head).to_bytes(4, "little") + b"SEFT") * (20 * n)
    sizes = _Sought(set(range(len(data) + 1)))
    given = sum(len(found) for found in embedded_photos._jpegs(data, sizes))
    assert len(read) == 20 * n
    assert given <= 2 * len(data)
    # Their own trailers: each JPEG's, then the next JPEG (another file: no run of JPEGs goes
    # over a trailer).
    photos = [_samsung(np.full((8, 8, 3), i, np.uint8)) for i in range(50)]
    own = b"\x80\x04" + b"".join(photos)
    read.clear()
    given = [g for g in embedded_photos._jpegs(own, sizes) if g.endswith(b"SEFT")]
    assert len(read) == 50 and given == photos
    with monkeypatch.context() as m:
        m.setattr(embedded_photos, "STARTS_FLOOR", 10 * n)
        with pytest.raises(embedded.TooManyStarts):
            list(embedded_photos._jpegs(data, sizes))
    # Trailers one within another, each from its own EOI (the last directory names the first
    # EOI): each would give most of the file.
    ends = [2 + (i + 1) * len(tiny + block) - len(block) for i in range(n)]
    nested = bytearray(waiting)
    for end in reversed(ends):
        back = len(nested) - end
        head = b"SEFH" + bytes(4) + (1).to_bytes(4, "little") + block[:4]
        head += back.to_bytes(4, "little") + len(block).to_bytes(4, "little")
        nested += head + len(head).to_bytes(4, "little") + b"SEFT"
    with pytest.raises(embedded.TooManyStarts):
        list(embedded_photos._jpegs(bytes(nested), sizes))
    # (Each from the runs its EOI ends: the JPEG, and up to three before it, a block between.)
    monkeypatch.setattr(embedded_photos, "SEF_GIVEN", embedded_photos.MPF_IMAGES * n)
    given = sum(len(g) for g in embedded_photos._jpegs(bytes(nested), sizes))
    assert given > len(nested) * n // 4  # what the bound keeps from being given


def test_stretches_of_jpegs_alike_are_told_once_and_found_as_before(monkeypatch):
    """Crafted: tiny JPEGs 248 zero bytes apart, every size sought. Each is given alone and in
    the runs of up to MPF_IMAGES JPEGs ending with it, four stretches a JPEG, and kind() of each
    took two thirds of the reading (5.3-8.9 s for 35 MiB): stretches alike are told once now.
    What is found is what telling each stretch afresh finds: a photograph among them, and a
    sealed file deflated in a PDF lying between two of them (the run over both is told a PDF,
    its stream inflated)."""
    monkeypatch.setattr(embedded_photos, "STARTS_FLOOR", 1 << 20)
    tiny = b"\xff\xd8\xff\xfe\x00\x02\xff\xd9"
    photo = _jpeg(np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    sealed = np.random.default_rng(8).bytes(5000)
    pdf = b"%%PDF-1.4\n1 0 obj\n<< /Filter /FlateDecode /Length %d >>\nstream\n%s\nendstream\n"
    pdf = pdf % (len(zlib.compress(sealed)), zlib.compress(sealed)) + b"endobj\n%%EOF\n"
    n = 20_000
    gaps = [bytes(248)] * n
    gaps[n // 3], gaps[n // 2] = bytes(100) + photo + bytes(100), pdf
    data = b"\x80\x04" + b"".join(tiny + gap for gap in gaps)
    told = []
    real = embedded.kind

    def kind(first):
        told.append(len(first))
        return real(first)

    monkeypatch.setattr(embedded, "kind", kind)
    found = list(embedded.inside(data, embedded.BINARY))
    assert {_sha(photo), _sha(sealed)} <= set(found)
    assert len(told) < 1_000  # each distinct first bytes once, of 4 * n stretches
    monkeypatch.setattr(embedded, "_told", lambda first, _: real(first))
    assert list(embedded.inside(data, embedded.BINARY)) == found
