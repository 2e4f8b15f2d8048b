"""An erased photograph held compressed inside an Arrow file or a PDF.

``pandas.DataFrame.to_feather()`` (``pyarrow.feather.write_feather``) compresses an Arrow file's
buffers with LZ4 by default, and ``pyarrow.ipc`` writes them with ZSTD when asked: a JPEG's bytes
are no longer there as they are. A PDF holds an attached file (``pdfattach``, LibreOffice's
"embed file", a portfolio) deflated (``/FlateDecode``), its exact bytes once inflated, and may
hold a JPEG written ``[/FlateDecode /DCTDecode]``. Before, only the raw bytes of either were
walked: the erasure certified with the photograph in place and the verifier called the
certificate VALID.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
import tracemalloc
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pytest
from PIL import Image
from rights_fakes import make_project
from test_erasure_inside import put_back_fails_the_verifier, stopped_then_certified

from visage_ml.privacy.certificate_page import page_path
from visage_ml.rights import embedded, embedded_pdf
from visage_ml.rights.certify import verify_certificate


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png_stored(arr: np.ndarray) -> bytes:
    """A PNG saved without compression (``compress_level=0``): LZ4 and deflate shrink it."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


ENCODINGS = {"jpeg": _jpeg, "png-stored": _png_stored}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _table(photos: list[bytes]) -> pa.Table:
    n = len(photos)
    return pa.table({"image": pa.array(photos, pa.binary()), "label": pa.array(range(n))})


def _feather(photos: list[bytes]) -> bytes:
    """``df.to_feather(f)``: Feather V2, LZ4 by default."""
    sink = io.BytesIO()
    feather.write_feather(_table(photos), sink)
    return sink.getvalue()


def _ipc(photos: list[bytes], *, stream: bool, compression: str | None = "zstd") -> bytes:
    """``pyarrow.ipc`` with ``IpcWriteOptions(compression=...)``: an Arrow file or a stream, a
    batch of two rows at a time, its image column a struct of the bytes and a path as
    ``datasets``' ``Image`` feature stores it (the stream)."""
    table = _table(photos)
    if stream:
        image = pa.StructArray.from_arrays(
            [table["image"].combine_chunks(), pa.array([f"{i}.jpg" for i in range(len(photos))])],
            names=["bytes", "path"],
        )
        table = pa.table({"image": image, "label": table["label"]})
    sink = io.BytesIO()
    opener = ipc.new_stream if stream else ipc.new_file
    options = ipc.IpcWriteOptions(compression=compression)
    with opener(sink, table.schema, options=options) as writer:
        writer.write_table(table, max_chunksize=2)
    return sink.getvalue()


def _pdf(objects: list[bytes], root: bytes) -> bytes:
    """A PDF of ``objects`` (numbered from 1), ``root`` its catalog's number; offsets right."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root %s 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        root,
        xref,
    )
    return bytes(out)


def _stream(head: bytes, data: bytes) -> bytes:
    return b"<< %s /Length %d >>\nstream\n%s\nendstream" % (head, len(data), data)


def _attached(photos: list[bytes]) -> bytes:
    """``pdfattach report.pdf photo.jpg``: each photograph an embedded file, deflated, named in
    the catalog's ``/EmbeddedFiles``; a page whose content stream is deflated too."""
    content = zlib.compress(b"BT /F1 12 Tf 72 712 Td (Attached) Tj ET")
    objects = [b"", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"]
    objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>")
    objects.append(_stream(b"/Filter /FlateDecode", content))
    names = []
    for i, photo in enumerate(photos):
        spec = len(objects) + 1
        names.append(b"(photo%d.jpg) %d 0 R" % (i, spec))
        objects.append(
            b"<< /Type /Filespec /F (photo%d.jpg) /UF (photo%d.jpg) /EF << /F %d 0 R >> >>"
            % (i, i, spec + 1)
        )
        head = (
            b"/Type /EmbeddedFile /Subtype /image#2Fjpeg /Params << /Size %d >> "
            b"/Filter /FlateDecode"
        )
        objects.append(_stream(head % len(photo), zlib.compress(photo)))
    objects[0] = (
        b"<< /Type /Catalog /Pages 2 0 R /Names << /EmbeddedFiles << /Names [%s] >> >> >>"
        % (b" ".join(names))
    )
    return _pdf(objects, b"1")


def _deflated_images(photos: list[bytes]) -> bytes:
    """A JPEG a page, written ``/Filter [/FlateDecode /DCTDecode]`` (deflated once more)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    for photo in photos:
        page = len(objects) + 1
        kids.append(b"%d 0 R" % page)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 32 32] "
            b"/Resources << /XObject << /Im0 %d 0 R >> >> /Contents %d 0 R >>"
            % (page + 1, page + 2)
        )
        head = (
            b"/Type /XObject /Subtype /Image /Width 32 /Height 32 /ColorSpace /DeviceRGB "
            b"/BitsPerComponent 8 /Filter [/FlateDecode /DCTDecode]"
        )
        objects.append(_stream(head, zlib.compress(photo, 9)))
        objects.append(
            _stream(b"/Filter /FlateDecode", zlib.compress(b"q 32 0 0 32 0 0 cm /Im0 Do Q"))
        )
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    return _pdf(objects, b"1")


def _holders(photo: bytes, others: list[bytes]) -> dict[str, bytes]:
    """Files holding ``photo`` compressed, among ``others``."""
    shelf = [others[0], photo, others[1]]
    made = {
        "faces.feather": _feather(shelf),
        "faces-zstd.arrow": _ipc(shelf, stream=False),
        "data-00000-of-00001.arrow": _ipc(shelf, stream=True),
        "report-attached.pdf": _attached(shelf),
    }
    if photo.startswith(b"\xff\xd8\xff"):
        made["report-deflated.pdf"] = _deflated_images(shelf)
    return made


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_a_photo_compressed_in_an_arrow_file_or_a_pdf_stops_the_erasure(project, encoding):
    """The files stay (they hold a colleague's work too): the erasure stops before its
    certificate, ``doctor`` lists them; once the photograph is out the resumed erasure
    certifies, the same files of other subjects' photographs untouched, and the verifier fails
    the certificate while any of them is back."""
    proj = make_project(project, n_subjects=3, encode=ENCODINGS[encoding])
    victim = proj.pids[0]
    photo = next(iter(proj.images[victim].values()))
    theirs = [p for pid in proj.pids[1:] for p in proj.images[pid].values()]
    folder = proj.paths.root / "data" / "shared"
    folder.mkdir(parents=True)
    made = {folder / n: d for n, d in _holders(photo, theirs[:2]).items()}
    for path, data in made.items():
        assert photo not in data, path.name  # compressed: not there as it is
    kept = {folder / f"other-{n}": d for n, d in _holders(theirs[2], theirs[3:5]).items()}
    for path, data in {**made, **kept}.items():
        path.write_bytes(data)
    said, done = stopped_then_certified(proj, victim, made, kept)
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert report.ok
    # Beside the verdict and on the certificate's page: these are looked inside now.
    (check,) = [c for c in report.checks if c.name == "no erased content remains"]
    page = " ".join(page_path(done.certificate_path).read_text(encoding="utf-8").split())
    for said in (" ".join(check.detail.split()), page):
        for name in ("Feather", "LZ4 or ZSTD", "deflated"):
            assert name in said, (name, said)
        assert "compressed buffers" not in said and "an image a PDF compressed" not in said
    put_back_fails_the_verifier(proj, done, made)


def _kind(data: bytes) -> str | None:
    return embedded.kind(data[: embedded.SNIFF])


# What is held in memory at once, here: the files below are several times larger.
SMALL_MAX = 256 << 10


def _dataset(photo: bytes, n: int = 32) -> list[bytes]:
    """A data set's photographs, ``photo`` among them, several times :data:`SMALL_MAX`."""
    rng = np.random.default_rng(1)
    photos = [_jpeg(rng.integers(0, 256, (192, 192, 3), dtype=np.uint8)) for _ in range(n)]
    photos.insert(n // 2 + 1, photo)
    return photos


@pytest.mark.parametrize("name", ["feather", "zstd-file", "zstd-stream", "attached", "deflated"])
def test_a_large_arrow_file_or_pdf_is_looked_inside_from_its_file(tmp_path, monkeypatch, name):
    """Over :data:`~visage_ml.rights.embedded.EMBED_MAX` (a data set's shard, a report of
    hundreds of photographs), read from the file, batch by batch or stream by stream: what is
    found is what is found in memory, the photograph's SHA-256 among it."""
    monkeypatch.setattr(embedded, "EMBED_MAX", SMALL_MAX)
    photo = _jpeg(np.full((32, 32, 3), 90, np.uint8))
    photos = _dataset(photo)
    data = {
        "feather": lambda: _feather(photos),
        "zstd-file": lambda: _ipc(photos, stream=False),
        "zstd-stream": lambda: _ipc(photos, stream=True),
        "attached": lambda: _attached(photos),
        "deflated": lambda: _deflated_images(photos),
    }[name]()
    assert len(data) > 3 * SMALL_MAX and photo not in data
    what = _kind(data)
    path = tmp_path / "f"
    path.write_bytes(data)
    in_memory = set(embedded.inside(data, what))
    with open(path, "rb") as fh:
        from_file = set(embedded.inside_large(fh, what))
    assert from_file == in_memory
    assert {_sha(p) for p in photos} <= from_file


def test_an_arrow_file_pyarrow_cannot_read_is_walked_as_bytes():
    """A shard cut short (a copy interrupted) or damaged: what lies in it as it is is still
    found, nothing raised."""
    photo = _jpeg(np.full((32, 32, 3), 90, np.uint8))
    others = [_jpeg(np.full((32, 32, 3), v, np.uint8)) for v in (10, 200)]
    plain = _ipc([others[0], photo, others[1]], stream=False, compression=None)
    for broken in (plain[: len(plain) - 40], plain[:-10] + b"\x00" * 10):
        assert _sha(photo) in set(embedded.inside(broken, _kind(broken)))
    packed = _feather([others[0], photo, others[1]])
    list(embedded.inside(packed[: len(packed) // 2], _kind(packed)))  # nothing to find; no crash


def _bomb_budget(monkeypatch) -> None:
    monkeypatch.setattr(embedded, "INSIDE_FLOOR", 8 << 20)
    monkeypatch.setattr(embedded, "INSIDE_RATIO", 1)


def test_an_arrow_bomb_is_not_shown_clean(monkeypatch):
    """A ZSTD column of 64 MiB of zeros is a few kB: what its batches decompress to is counted
    before they are, and beyond what the file's size allows it is not shown clean."""
    _bomb_budget(monkeypatch)
    for stream in (False, True):
        bomb = _ipc([bytes(64 << 20)], stream=stream)
        assert len(bomb) < 1 << 20
        with pytest.raises(embedded.TooLarge):
            list(embedded.inside(bomb, _kind(bomb)))


@pytest.mark.parametrize("fill", [b"\x00", b"A"])
def test_a_deflate_bomb_in_a_pdf_is_not_shown_clean_in_bounded_memory(monkeypatch, fill):
    """A stream of 64 MiB of one byte deflates to 64 kB: it is inflated a part at a time, what
    comes out counted, and beyond what the file's size allows the PDF is not shown clean; what
    is held stays about what is looked inside at once."""
    _bomb_budget(monkeypatch)
    monkeypatch.setattr(embedded, "EMBED_MAX", SMALL_MAX)
    bomb = _pdf(
        [_stream(b"/Type /EmbeddedFile /Filter /FlateDecode", zlib.compress(fill * (64 << 20), 9))],
        b"1",
    )
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(embedded.TooLarge):
            list(embedded.inside(bomb, embedded.PDF))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * SMALL_MAX + (2 << 20), peak


def test_crafted_pdf_streams_are_inflated_in_linear_time(monkeypatch):
    """``stream`` keywords each inside the deflated data of the one before (stored blocks that
    reach the file's end): each inflated from its own start read the rest of the file again.
    Each byte is now inflated about once."""
    n, unit = 3000, b"<< /Filter /FlateDecode >>\nstream\n"
    # A zlib header, then a stored block (not final) running over every unit after it.
    out = bytearray(b"%PDF-1.7\n")
    for i in range(n):
        rest = (n - i - 1) * (len(unit) + 7)
        out += unit + b"\x78\x01\x00" + (min(rest, 0xFFFF)).to_bytes(2, "little")
        out += (0xFFFF ^ min(rest, 0xFFFF)).to_bytes(2, "little")
    out += bytes(1 << 20)
    real = zlib.decompressobj
    fed = []

    class Counted:
        def __init__(self, *args):
            self.d = real(*args)

        def decompress(self, data, max_length=0):
            fed.append(len(data))
            return self.d.decompress(data, max_length)

        def __getattr__(self, name):
            return getattr(self.d, name)

    monkeypatch.setattr(embedded_pdf.zlib, "decompressobj", Counted)
    started = time.monotonic()
    list(embedded.inside(bytes(out), embedded.PDF))
    assert sum(fed) <= 4 * len(out), sum(fed)
    assert time.monotonic() - started < 30


def test_a_category_column_compressed_is_read_too():
    """``df["image"].astype("category")`` writes a dictionary: its values, compressed as the
    batches are, are read with them."""
    photo = _jpeg(np.full((32, 32, 3), 90, np.uint8))
    other = _jpeg(np.full((32, 32, 3), 10, np.uint8))
    table = pa.table({"image": pa.array([photo, other, photo]).dictionary_encode()})
    for stream in (False, True):
        sink = io.BytesIO()
        opener = ipc.new_stream if stream else ipc.new_file
        options = ipc.IpcWriteOptions(compression="zstd")
        with opener(sink, table.schema, options=options) as writer:
            writer.write_table(table, max_chunksize=1)
        data = sink.getvalue()
        assert photo not in data
        assert {_sha(photo), _sha(other)} <= set(embedded.inside(data, _kind(data)))


def test_a_damaged_arrow_file_ends_its_read_not_the_scan():
    """Bytes of a shard changed at random (a disk's, a copy's fault): pyarrow reads what a
    damaged batch's offsets and lengths say (an offset past its buffer raised SystemError, a
    length of -2^60 aborted the whole process, a field's name not UTF-8 raised as it was
    read). Each batch is checked before a value of it is read: at worst the file is not shown
    clean (a length that says it expands beyond its size)."""
    photo = _jpeg(np.full((32, 32, 3), 90, np.uint8))
    others = [_jpeg(np.full((32, 32, 3), v, np.uint8)) for v in (10, 200)]
    shelf = [others[0], photo, others[1]]
    rng = np.random.default_rng(0)
    for base in (_ipc(shelf, stream=True, compression=None), _feather(shelf)):
        for _ in range(400):
            damaged = bytearray(base)
            for at in rng.integers(0, len(base), 4):
                damaged[at] = rng.integers(0, 256)
            with contextlib.suppress(embedded.TooLarge):
                list(embedded.inside(bytes(damaged), embedded.BINARY))


@pytest.mark.parametrize("codec", ["zstd", "lz4", "zlib", "lzma"])
def test_a_bomb_in_a_bare_compressed_stream_is_not_shown_clean(monkeypatch, codec):
    """64 MiB of one letter in a zstd, LZ4, zlib (joblib's) or LZMA stream is a few kB: read as it
    decompresses, what comes out counted, and beyond what the file's size allows not shown
    clean, as a file and as a value a pickle holds."""
    import lzma
    import pickle

    _bomb_budget(monkeypatch)
    zeros = b"A" * (64 << 20)
    if codec in ("zstd", "lz4"):
        sink = pa.BufferOutputStream()
        with pa.CompressedOutputStream(sink, codec) as out:
            out.write(zeros)
        bomb = sink.getvalue().to_pybytes()
    elif codec == "zlib":
        bomb = zlib.compress(zeros, 9)
    else:
        bomb = lzma.compress(zeros, format=lzma.FORMAT_ALONE)
    assert len(bomb) < 1 << 20
    assert embedded.kind(bomb[: embedded.SNIFF]) == embedded.COMPRESSED
    with pytest.raises(embedded.TooLarge):
        list(embedded.inside(bomb, embedded.COMPRESSED))
    held = pickle.dumps({"cache": [bomb]}, protocol=4)
    with pytest.raises(embedded.TooLarge):
        list(embedded.inside(held, embedded.BINARY))
