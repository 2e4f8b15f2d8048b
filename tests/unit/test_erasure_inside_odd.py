"""Files that would stall or crash the scan for erased content held inside other files, and
base64 laid out otherwise than one wrapped run: what anyone able to write into the project (or
an ordinary tool) leaves there.

Before: a text file of short base64-looking lines was read in time quadratic in its size (a
1 MB one took minutes, a larger one never ended), as was a pickle of repeated PNG signatures; a
zip bomb was decompressed to the end, however far; a Parquet table whose string column held
bytes that are not UTF-8 made the scan raise, stopping every erasure and every verification of
the project; and photographs base64-encoded one a line were read as one run (two photographs'
bytes together, matching neither), so both the copies step and the verifier missed them.
"""

# ruff: noqa: F811 - fixtures imported from the modules that define them

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import io
import json
import lzma
import pickle
import random
import tarfile
import zipfile
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rights_fakes import make_project
from test_erasure_inside import (  # noqa: F401 - a fixture
    _photos,
    doctor_listed,
    proj,
    put_back_fails_the_verifier,
    sealed_in_each,
    stopped_then_certified,
)
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.rights import embedded, embedded_photos, embedded_text
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure


def _headers_tried(monkeypatch) -> list[int]:
    """The blocks tarfile tries as a header from now on (the size of each), spied on."""
    tried: list[int] = []
    real = tarfile.TarInfo.frombuf.__func__

    def frombuf(cls, buf, encoding, errors):
        tried.append(len(buf))
        return real(cls, buf, encoding, errors)

    monkeypatch.setattr(tarfile.TarInfo, "frombuf", classmethod(frombuf))
    return tried


class _Counted(io.BytesIO):
    """A file whose reads append their lengths to ``read``: the bytes a reader took."""

    def __init__(self, data: bytes, *, read: list[int]) -> None:
        super().__init__(data)
        self._read = read

    def read(self, n: int | None = -1) -> bytes:
        out = super().read(n)
        self._read.append(len(out))
        return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _data(n: int, salt: int = 0) -> bytes:
    return bytes((i * 7 + n + salt) % 251 for i in range(n))


@pytest.mark.parametrize("breaks", [b"\n", b"\r\n", b"\\n"], ids=["lf", "crlf", "json-lf"])
def test_a_text_file_of_short_base64_like_lines_is_read_in_linear_time(breaks, monkeypatch):
    """Lines of 16 letters after one of 17 never add up to a multiple of four characters: the
    scan dropped them one at a time from the end, each time rejoining all before it (a file of
    136 kB took 11 s, one of 10 MB never ended). Each line is now in a few tries at most."""
    lines = 12_000
    text = b"A" * 17 + b"".join(breaks + b"B" * 16 for _ in range(lines))
    tried = []
    real = embedded_text._wraps

    def counted(widths):
        for first, last in real(widths):
            tried.append(last - first)
            yield first, last

    monkeypatch.setattr(embedded_text, "_wraps", counted)
    list(embedded.inside(text, embedded.TEXT))
    assert tried and sum(tried) <= 3 * (lines + 1)  # lines put together to be tried, in all


def test_a_pickle_of_repeated_png_signatures_is_read_in_linear_time(monkeypatch):
    """Each signature followed by an IHDR and a chunk holding the next signature: the walk from
    each signature went over every chunk after it (240 kB took 67 s). Each chunk is now walked
    a few times at most (below the image starts a file may hold: here, all)."""
    monkeypatch.setattr(embedded_photos, "STARTS_FLOOR", 1 << 20)
    ihdr = b"\0\0\0\x0dIHDR" + b"\0" * 17
    data = b"\x80\x04" + (embedded_photos.PNG_MAGIC + ihdr + b"\0\0\0\x04abcd") * 15_000
    walked = []
    real = embedded_photos._chunk_length

    def counted(buf, at):
        walked.append(at)
        return real(buf, at)

    monkeypatch.setattr(embedded_photos, "_chunk_length", counted)
    list(embedded.inside(data, embedded.BINARY))
    assert len(walked) <= 4 * 15_000


def _lines(*items: bytes, sep: bytes = b"\n") -> bytes:
    return b"".join(base64.b64encode(i) + sep for i in items)


@pytest.mark.parametrize(
    "layout",
    [
        "one-a-line",
        "one-a-line-crlf",
        "shorter-after",
        "title-line",
        "two-wrapped",
        "json-escaped",
        "json-escaped-crlf",
        "csv-four-digit-ids",
    ],
)
def test_photographs_base64_encoded_one_a_line_are_each_found(layout):
    """``base64 -w0 a.png >> faces.txt`` for each photograph, a title line above a wrapped one,
    two wrapped one after the other: each photograph is found, whatever its neighbours. A
    photograph whose base64 needs no padding (one in three) was read together with the next
    line, and neither was found."""
    missed = []
    for n in range(3000, 3012):
        a, b = _data(n), _data(n + 40, salt=1)
        text = {
            "one-a-line": _lines(a, b),
            "one-a-line-crlf": _lines(a, b, sep=b"\r\n"),
            # The next photograph's line shorter than the erased one's.
            "shorter-after": _lines(_data(n + 40, salt=2), a, _data(n - 40, salt=3)),
            "title-line": b"Photographofthesubject\n" + base64.encodebytes(a),
            "two-wrapped": base64.encodebytes(a) + base64.encodebytes(b),
            "json-escaped": _lines(a, b, sep=b"\\n"),
            # The next row's id, four digits, made the run with it decode (to neither).
            "csv-four-digit-ids": b"1000," + base64.b64encode(a) + b"\n1001,x\n",
            # A wrap made on Windows, then put in a JSON string.
            "json-escaped-crlf": b'{"img": "'
            + base64.encodebytes(a).replace(b"\n", b"\\r\\n")
            + b'"}',
        }[layout]
        if _sha(a) not in set(embedded.inside(text, embedded.TEXT)):
            missed.append(n)
    assert missed == []


def test_the_photograph_on_its_own_line_is_cut_and_its_neighbours_kept(tmp_path):
    kept_before, erased, kept_after = _data(3003, 1), _data(3000), _data(2997, 2)
    path = tmp_path / "faces.txt"
    path.write_bytes(_lines(kept_before, erased, kept_after))
    assert embedded.cut_encoded(path, {_sha(erased)}) == 1
    left = path.read_bytes().split(b"\n")
    assert left == [base64.b64encode(kept_before), b"", base64.b64encode(kept_after), b""]


def _bad_utf8_table(png: bytes) -> bytes:
    """A table whose string column holds bytes that are not UTF-8 (as a writer that does not
    check leaves them), before the column holding the photograph."""
    notes = pa.array([b"\xff\xfe caption", b"ok"], type=pa.binary()).view(pa.string())
    table = pa.table({"note": notes, "img": pa.array([png, b"x" * 20], type=pa.binary())})
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def test_a_table_with_a_string_that_is_not_utf8_does_not_stop_the_scan(proj):
    """It made the scan raise (UnicodeDecodeError) in the erasure and in the verifier; its
    other columns are still read, the photograph there found."""
    victim, png, _ = _photos(proj)
    folder = proj.paths.root / "data" / "tables"
    folder.mkdir(parents=True)
    (folder / "faces.parquet").write_bytes(_bad_utf8_table(png))
    with pytest.raises(OSError) as stopped:
        Erasure(proj.paths).erase(victim)
    assert "1 file(s) hold erased content inside" in " ".join(str(stopped.value).split())


def test_a_pickle_of_repeated_image_headers_is_not_walked_to_its_end_and_not_shown_clean(proj):
    """A JPEG's JFIF header repeated (each a valid start, none leading to an EOI) was walked
    from each in Python: minutes a gigabyte in every scan. The scan stops at more image starts
    than any file of images holds, and the file is not shown clean (the erasure stops and says
    why; doctor lists it; the verifier reports it)."""
    victim, _, _ = _photos(proj)
    header = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    crafted = proj.paths.root / "data" / "cache" / "frames.pkl"
    crafted.parent.mkdir(parents=True)
    made = b"\x80\x04" + header * 50_000
    crafted.write_bytes(made)
    with pytest.raises(embedded.TooManyStarts):
        list(embedded.inside(made, embedded.BINARY))
    with pytest.raises(OSError) as stopped:
        Erasure(proj.paths).erase(victim)
    said = " ".join(str(stopped.value).split())
    assert "more image starts than any image file has" in said and "data: 1" in said, said
    doctor = CliRunner().invoke(app, ["privacy", "doctor", "--json"])
    found = json.loads(doctor.output[doctor.output.index("{") :])
    listed = [(Path(f["path"]).name, f["kind"]) for f in found["findings"]]
    assert ("frames.pkl", "expands_inside") in listed, doctor.output
    assert "more image starts than any image file has" in found["what_to_do"]["expands_inside"]
    crafted.unlink()
    (done,) = Erasure(proj.paths).resume()
    crafted.write_bytes(made)
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert [(f["path"], "more image starts" in f["why"]) for f in report.findings] == [
        (str(crafted), True)
    ]


def test_a_file_of_many_photographs_is_not_taken_for_repeated_headers():
    """A pickle of hundreds of small photographs, each with its JFIF header: every one found,
    none taken for a crafted start (one or two starts a photograph is what such a file holds)."""
    from PIL import Image

    photos = []
    for i in range(600):
        out = io.BytesIO()
        Image.new("RGB", (8, 8), (i % 256, i // 3 % 256, 7)).save(out, "JPEG", quality=90)
        photos.append(out.getvalue())
    data = b"\x80\x04" + b"".join(photos)
    held = set(embedded.inside(data, embedded.BINARY))
    assert {hashlib.sha256(p).hexdigest() for p in photos} <= held


def _bomb(inner_mb: int, copies: int) -> bytes:
    """A zip of ``copies`` zips, each of ``inner_mb`` MB of one letter: a few kB on disk."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.txt", b"A" * (inner_mb << 20))
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(copies):
            z.writestr(f"part{i}.zip", inner.getvalue())
    return outer.getvalue()


def test_a_zip_bomb_is_not_read_to_its_end_and_not_shown_clean(proj, monkeypatch):
    """Decompressing a zip bomb to its end stalls the erasure for as long as its maker likes:
    the scan stops at what so small a file can hold in earnest, and the file is not shown clean
    (the erasure stops and says where; the verifier reports it)."""
    monkeypatch.setattr(embedded, "INSIDE_FLOOR", 32 << 20)  # here, rather than gigabytes
    victim, _, _ = _photos(proj)
    bomb = proj.paths.root / "data" / "attachments" / "invoice.zip"
    bomb.parent.mkdir(parents=True)
    made = _bomb(16, 8)
    bomb.write_bytes(made)
    with pytest.raises(OSError) as stopped:
        Erasure(proj.paths).erase(victim)
    said = " ".join(str(stopped.value).split())
    assert "archives that expand too far to look inside" in said and "data: 1" in said, said
    assert "invoice" not in said
    paths, output = doctor_listed("expands_inside")
    listed = [(Path(p).name, "expands_inside") for p in paths]
    assert listed == [("invoice.zip", "expands_inside")], output
    bomb.unlink()
    (done,) = Erasure(proj.paths).resume()
    bomb.write_bytes(made)
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert [(f["path"], "expands too far to look inside" in f["why"]) for f in report.findings] == [
        (str(bomb), True)
    ]


def test_a_text_file_too_large_to_hold_whole_is_read_for_base64_too(proj, monkeypatch):
    """A CSV of a dataset's photographs runs past what is held in memory at once (64 MiB; here
    made small): it is read a window at a time, a run never split between two. Before, a text
    file that large was only hashed whole, and both the erasure and the verifier passed over
    the photograph in it."""
    monkeypatch.setattr(embedded, "EMBED_MAX", 64 << 10)
    victim, png, theirs = _photos(proj)
    folder = proj.paths.root / "data" / "labels"
    folder.mkdir(parents=True)
    csv = folder / "faces.csv"
    filler = [f"{i},{base64.b64encode(_data(900 + i)).decode()}" for i in range(150)]
    rows = ["id,img", *filler[:75], f"75,{base64.b64encode(png).decode()}", *filler[75:]]
    rows.append(f"999,{base64.b64encode(theirs).decode()}")
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    saved = csv.read_bytes()
    assert len(saved) > 3 * embedded.EMBED_MAX
    result = Erasure(proj.paths).erase(victim)
    left = csv.read_text(encoding="utf-8").splitlines()
    assert left == [*rows[:76], "75,", *rows[77:]]
    assert result.certificate["claims"]["copies_removed"] == {"data": 1}
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
    csv.write_bytes(saved)
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert [f["path"] for f in report.findings] == [str(csv)]


def test_an_archive_base64_encoded_in_a_text_file_is_not_cut_out_whole(proj):
    """A JSON file whose field holds a zip, base64-encoded, of the photograph and a colleague's
    notes: cutting the field would take the notes with it, as deleting the zip would. The
    erasure stops and says where, as for the zip itself, and the file is left as it was; a
    field that is the photograph itself is still cut out."""
    victim, png, _ = _photos(proj)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("face.png", png)
        z.writestr("notes.txt", "the colleague's notes, nowhere else")
    folder = proj.paths.root / "data" / "exchange"
    folder.mkdir(parents=True)
    bundle = folder / "bundle.json"
    bundle.write_text(json.dumps({"zip": base64.b64encode(zipped.getvalue()).decode()}))
    saved = bundle.read_bytes()
    with pytest.raises(OSError) as stopped:
        Erasure(proj.paths).erase(victim)
    assert "1 file(s) hold erased content inside" in " ".join(str(stopped.value).split())
    assert bundle.read_bytes() == saved


def test_a_compressed_file_committed_to_git_that_expands_too_far_is_not_shown_clean(
    tiny_project, monkeypatch
):
    """Read only so far in the git history too: a bomb committed there stops the erasure and
    fails the verifier (its object was taken as holding nothing)."""
    import bz2

    from project_helpers import git

    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    result = Erasure(proj.paths).erase(proj.pids[0])
    monkeypatch.setattr(embedded, "INSIDE_FLOOR", 1 << 20)
    bomb = root / "notebooks" / "dump.bz2"
    bomb.parent.mkdir(parents=True, exist_ok=True)
    bomb.write_bytes(bz2.compress(b"bomb" * (8 << 20)))
    git(root, "add", "-f", "notebooks/dump.bz2")
    git(root, "commit", "-qm", "dump")
    git(root, "rm", "-q", "notebooks/dump.bz2")
    git(root, "commit", "-qm", "tidy")
    report = verify_certificate(result.certificate_path, root=root)
    assert not report.ok
    (found,) = report.findings
    assert "git" in found["path"] and "expanding too far" in found["why"], found
    with pytest.raises(OSError, match="expand too far"):
        Erasure(proj.paths).erase(proj.pids[1])


# A zip whose first member was damaged (a bad CRC, a broken deflate stream, a local header
# overwritten) hid every member after it: the scan stopped at the first error and showed the
# archive clean, while `unzip` (and zipfile member by member) still extracts the later ones, the
# photograph among them, and a stored member whose CRC alone is wrong as it is.


def _zip_of(*members: tuple[str, bytes, int]) -> bytearray:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data, how in members:
            z.writestr(name, data, compress_type=how)
    return bytearray(out.getvalue())


def _member_at(data: bytearray, name: str) -> tuple[int, int]:
    """Where the local header and the central directory entry of ``name`` begin."""
    central = data.index(b"PK\x01\x02")
    local = data.index(name.encode()) - 30
    entry = data.index(name.encode(), central) - 46
    return local, entry


def _bad_crc(data: bytearray, name: str) -> bytearray:
    """``name``'s CRC-32 wrong, in its local header and in the central directory (as a bit
    flipped in its data, or the field itself, leaves it: unzip extracts it, and warns)."""
    local, entry = _member_at(data, name)
    data[local + 14] ^= 0xFF
    data[entry + 16] ^= 0xFF
    return data


def _read_until_stopped(data: bytes) -> tuple[set[str], bool]:
    """What the scan of ``data`` (a zip) found inside, and whether it was stopped as not shown
    clean."""
    found: set[str] = set()
    try:
        for digest in embedded.inside(data, embedded.ZIP):
            found.add(digest)
    except embedded.TooLarge:
        return found, True
    return found, False


def test_a_damaged_zip_member_hides_none_after_it(proj):
    _, png, theirs = _photos(proj)
    notes = b"minutes of the meeting " * 400
    deflated, stored = zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED
    # The first member's CRC wrong: it is read as unzip extracts it, and so is the photograph.
    crc = _bad_crc(_zip_of(("notes.txt", notes, deflated), ("photo.png", png, stored)), "notes.txt")
    with zipfile.ZipFile(io.BytesIO(crc)) as z:
        assert z.read("photo.png") == png  # extractable
    assert _read_until_stopped(bytes(crc)) == ({_sha(notes), _sha(png)}, False)
    # The photograph's own CRC wrong (stored: unzip writes its bytes as they are).
    own = _bad_crc(_zip_of(("theirs.png", theirs, stored), ("photo.png", png, stored)), "photo.png")
    assert _read_until_stopped(bytes(own)) == ({_sha(theirs), _sha(png)}, False)
    # The first member's deflate stream broken, or its local header overwritten: it cannot be
    # read, the photograph after it still is, and the archive is not shown clean.
    broken = _zip_of(("notes.txt", notes, deflated), ("photo.png", png, stored))
    local, _ = _member_at(broken, "notes.txt")
    broken[local + 30 + len("notes.txt") : local + 30 + len("notes.txt") + 8] = b"\xff" * 8
    overwritten = _zip_of(("notes.txt", notes, deflated), ("photo.png", png, stored))
    overwritten[local : local + 4] = b"\0\0\0\0"
    for damaged in (broken, overwritten):
        with zipfile.ZipFile(io.BytesIO(damaged)) as z:
            assert z.read("photo.png") == png  # extractable
        found, stopped = _read_until_stopped(bytes(damaged))
        assert _sha(png) in found and stopped
    # An undamaged zip, and an encrypted member (not looked inside, as before): read, clean.
    fine = _zip_of(("notes.txt", notes, deflated), ("theirs.png", theirs, stored))
    assert _read_until_stopped(bytes(fine)) == ({_sha(notes), _sha(theirs)}, False)


def test_a_zip_with_a_damaged_member_stops_the_erasure_and_fails_the_verifier(proj):
    victim, png, _ = _photos(proj)
    folder = proj.paths.root / "data" / "shared_for_colleague"
    folder.mkdir(parents=True)
    notes = b"minutes of the meeting " * 400
    made = {
        folder / "backup.zip": bytes(
            _bad_crc(
                _zip_of(
                    ("notes.txt", notes, zipfile.ZIP_DEFLATED),
                    ("photo.png", png, zipfile.ZIP_STORED),
                ),
                "notes.txt",
            )
        )
    }
    for path, data in made.items():
        path.write_bytes(data)
    with pytest.raises(OSError) as stopped:
        Erasure(proj.paths).erase(victim)
    said = " ".join(str(stopped.value).split())
    assert "1 file(s) hold erased content inside" in said, said
    for path in made:
        path.unlink()
    (done,) = Erasure(proj.paths).resume()
    assert verify_certificate(done.certificate_path, root=proj.paths.root).ok
    for path, data in made.items():
        path.write_bytes(data)
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert {Path(f["path"]).name for f in report.findings} == {"backup.zip"}


def test_a_damaged_tar_header_hides_none_after_it(proj):
    """A tar whose middle member's header is damaged: GNU tar skips to the next header and still
    extracts the photograph after it, so the scan reads on past it too (tarfile took the bad
    header for the archive's end)."""
    import tarfile

    _, png, _theirs = _photos(proj)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in (("a.txt", b"a" * 700), ("b.txt", b"b" * 700), ("photo.png", png)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = bytearray(out.getvalue())
    second = data.find(b"b.txt")
    assert second % 512 == 0
    data[second + 148 : second + 156] = b"9999999\0"  # its header checksum wrong
    assert _sha(png) in set(embedded.inside(bytes(data), embedded.TAR))


# A tar that does not begin with a good header: tarfile, and the scan's test of what a file is
# (``ustar`` at byte 257), gave up at once, while GNU tar reads on. An empty tar before it (``cat
# empty.tar photos.tar``, or a tar written into a zeroed file at an offset): ``tar -i`` skips the
# zero blocks and extracts what follows. Its first header damaged (its checksum wrong, or the
# block overwritten): plain ``tar -x`` says "This does not look like a tar archive", skips to the
# next header and extracts the members after it.


def _tar_of(*members: tuple[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _tars_not_begun_by_a_header(photo: bytes) -> dict[str, bytes]:
    """Tars of a note then ``photo`` that begin otherwise than with a good header."""
    tar = _tar_of(("notes.txt", b"minutes of the meeting " * 30), ("photo.png", photo))
    empty = _tar_of()  # its two zero blocks, padded to a record: 10 KiB of zeros
    assert empty == bytes(10240)
    checksum, overwritten, zeroed = bytearray(tar), bytearray(tar), bytearray(tar)
    checksum[148:156] = b"9999999\0"  # the first header's checksum wrong, its magic kept
    overwritten[:512] = bytes(range(256)) * 2
    zeroed[:512] = bytes(512)
    return {
        "concatenated.tar": empty + tar,
        "concatenated.tar.gz": gzip.compress(empty + tar),
        "bad-checksum.tar": bytes(checksum),
        "bad-checksum.tar.xz": lzma.compress(bytes(checksum)),
        "overwritten.tar": bytes(overwritten),
        "zeroed.tar": bytes(zeroed),
    }


def _extracted(data: bytes) -> dict[str, bytes]:
    """What ``tar -xif`` extracts of ``data`` (GNU tar reads as tarfile does with ``ignore_zeros``:
    zero blocks and blocks that are no header skipped)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*", ignore_zeros=True) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_a_tar_not_begun_by_a_good_header_stops_the_erasure_and_fails_the_verifier(proj):
    """Each such tar holding the erased photograph (extracted as it is by ``tar -i``, the
    damaged ones by plain ``tar`` too) stops the erasure and is listed by doctor; with them taken
    out it certifies, and the verifier fails while one is back. The same tars of another
    subject's photograph stop nothing."""
    victim, png, theirs = _photos(proj)
    folder = proj.paths.root / "data" / "shared_for_colleague"
    folder.mkdir(parents=True)
    made = {folder / n: d for n, d in _tars_not_begun_by_a_header(png).items()}
    kept = {folder / f"other-{n}": d for n, d in _tars_not_begun_by_a_header(theirs).items()}
    for path, data in {**made, **kept}.items():
        assert _extracted(data)["photo.png"] in (png, theirs), path.name
        path.write_bytes(data)
    _, done = stopped_then_certified(proj, victim, made, kept)
    assert verify_certificate(done.certificate_path, root=proj.paths.root).ok
    put_back_fails_the_verifier(proj, done, made)


def test_zeros_and_blocks_that_are_no_header_are_read_once_for_a_tar(monkeypatch):
    """Crafted, or a preallocated file: zeros with no header after them, each read once in the
    search for one (not walked by tarfile, 2 to 4 us a block); blocks each bearing a header's
    magic with its checksum wrong, each tried as a header once; V7 headers each with its
    checksum wrong (one as tar writes it, in octal), each read once, none tried (their sums
    compared at once). None holds anything."""
    from visage_ml.io import CHUNK
    from visage_ml.rights import embedded_archives

    tried = _headers_tried(monkeypatch)
    checked: list[bytes] = []
    real_checksummed = embedded._tar_checksummed

    def checksummed(block):
        checked.append(block)
        return real_checksummed(block)

    monkeypatch.setattr(embedded, "_tar_checksummed", checksummed)
    read: list[int] = []
    Counted = partial(_Counted, read=read)

    zeros = bytes(8 << 20)
    bad = bytearray(4 << 20)
    for at in range(0, len(bad), 512):
        bad[at + 257 : at + 265] = b"ustar\x0000"  # a header's magic, its checksum not right
    v7 = bytearray(_v7_tar((b"photo.png", b"")))[:512]
    v7[148:156] = b"%06o\x00 " % (int(v7[148:154], 8) + 1)
    for data, blocks_tried in ((zeros, 0), (bytes(bad), len(bad) // 512), (bytes(v7) * 8192, 0)):
        assert embedded.kind(data[: embedded.SNIFF]) == embedded.TAR
        tried.clear()
        read.clear()
        checked.clear()
        assert list(embedded.inside_file(Counted(data), embedded.TAR)) == []
        assert sum(read) <= len(data) + CHUNK
        assert len(tried) <= blocks_tried + 2  # and the end, tried twice
        assert checked == []
        assert embedded_archives._tar_start(io.BytesIO(data)) == (-1 if blocks_tried == 0 else 0)


# Past the first 4 KiB: GNU tar reads a file block by block, each block whose checksum is right
# taken for a header. A first header that lost its magic (its checksum then wrong: ``tar -x``
# says "This does not look like a tar archive" and skips on) hides nothing after it, however far
# the next header lies.


def _tars_whose_first_header_lost_its_magic(photo: bytes) -> dict[str, bytes]:
    """Tars of a first member of 10 KiB (binary data, a text), its header's magic lost, then
    ``photo``: their first good header lies past their first 4 KiB."""
    scan, minutes = _data(10 << 10), (b"minutes of the meeting " * 500)[: 10 << 10]
    lost = bytearray(_tar_of(("scan.bin", scan), ("photo.png", photo)))
    lost_text = bytearray(_tar_of(("minutes.txt", minutes), ("photo.png", photo)))
    for tar in (lost, lost_text):
        tar[257:265] = bytes(8)  # the first header's magic lost (its checksum wrong then)
    return {
        "magic-lost.tar": bytes(lost),
        "magic-lost-text.tar": bytes(lost_text),
        "magic-lost.tar.gz": gzip.compress(bytes(lost)),
    }


def _stop_the_erasure_and_fail_the_verifier(proj, tars_of, photo_in) -> None:
    """Each of the tars ``tars_of`` makes of the erased photograph (``photo_in`` what ``tar
    -xif`` extracts of one) stops the erasure and is listed by doctor; with them taken out it
    certifies, and the verifier fails while they are back. The same tars of another subject's
    photograph stop nothing."""
    victim, png, theirs = _photos(proj)
    folder = proj.paths.root / "data" / "shared_for_colleague"
    folder.mkdir(parents=True)
    made = {folder / n: d for n, d in tars_of(png).items()}
    kept = {folder / f"other-{n}": d for n, d in tars_of(theirs).items()}
    for path, data in {**made, **kept}.items():
        assert photo_in(path.name, data) in (png, theirs), path.name
        path.write_bytes(data)
    _, done = stopped_then_certified(proj, victim, made, kept)
    assert verify_certificate(done.certificate_path, root=proj.paths.root).ok
    put_back_fails_the_verifier(proj, done, made)


def test_a_tar_whose_first_header_lost_its_magic_stops_the_erasure(proj):
    """Each extracted by GNU tar 1.34 (``tar -x``: "This does not look like a tar archive",
    "Skipping to next header", then photo.png); each certified clean before (no magic in the
    first 4 KiB: not read)."""
    _stop_the_erasure_and_fail_the_verifier(
        proj,
        _tars_whose_first_header_lost_its_magic,
        lambda name, data: _extracted(data)["photo.png"],
    )


# A backup damaged at its start (``tar -cf backup.tar photos/``, then its first 8 or 64 KiB
# overwritten with zeros or random bytes: a disk's bad sectors, a header written over it): GNU tar
# reads any file as a tar, ``tar -xif`` skipping zero blocks and every block that is no header to
# the next one, however far, and extracts the photograph after it. Random bytes first told the
# file nothing, so it was not read.


def _backups_overwritten_at_their_start(photo: bytes) -> dict[str, bytes]:
    """Tars of a folder's first file of 72 KiB (past what is overwritten) then ``photo``, their
    first 8 KiB and 64 KiB overwritten with zeros and with random bytes."""
    tar = _tar_of(("photos/scan.bin", _data(72 << 10)), ("photos/photo.png", photo))
    made = {}
    for how, fill in {"zeros": bytes, "random": random.Random(7).randbytes}.items():
        for kib in (8, 64):
            made[f"backup-{kib}k-{how}.tar"] = fill(kib << 10) + tar[kib << 10 :]
    return made


def test_a_tar_whose_start_was_overwritten_is_found_where_it_is_read(proj):
    """Each extracted by GNU tar 1.34 (``tar -xif``: "Skipping to next header", then
    photos/photo.png). Those overwritten with random bytes tell nothing by their first 4 KiB:
    found where such a file is read anyway, as it streams by (a git blob, a remote's object, a
    file where every size is sought), before not; a file of no size sought is not read (the
    size filter: reading every file of a project's other data at every scan is what it
    spares). Those overwritten with zeros, told a tar by their first block, stop the erasure."""
    from visage_ml.rights import content_scan

    for name, data in _backups_overwritten_at_their_start(b"x" * 3000).items():
        told = embedded.kind(data[: embedded.SNIFF])
        assert told == (None if "random" in name else embedded.TAR), name
        for n in (300, 1 << 20):  # as it streams (a git blob, a remote's object): short reads
            reader = content_scan._Reader()
            for at in range(0, len(data), n):
                reader.update(data[at : at + n])
            assert _sha(b"x" * 3000) in reader.done().held, name

    def zeroed(photo: bytes) -> dict[str, bytes]:
        return {n: d for n, d in _backups_overwritten_at_their_start(photo).items() if "zeros" in n}

    _stop_the_erasure_and_fail_the_verifier(
        proj, zeroed, lambda name, data: _extracted(data)["photos/photo.png"]
    )


def test_random_binary_files_are_told_clean_and_none_taken_for_a_tar(tmp_path, monkeypatch):
    """50 files of random bytes (a few hundred KiB each, as a project's other data is), read
    where every size is sought and searched for a tar's header in every block as they stream
    by: none is taken for a tar or tried as one by tarfile; of no size sought, none is read.
    Nor is one whose block in the middle passes the checksum by chance (read as a tar from
    there where it is read: its fields no header's, skipped), which holds nothing either."""
    from visage_ml.rights import content_scan

    rng = random.Random(11)
    folder = tmp_path / "sealed"
    folder.mkdir()
    for i in range(50):
        (folder / f"{i:02d}.bin").write_bytes(rng.randbytes(rng.randrange(200, 400) << 10))
    tried = _headers_tried(monkeypatch)

    class Sought:  # a photograph's size, which none has
        def may_match(self, size: int) -> bool:
            return size == 23_456

    walked = [content_scan.Root(folder)]
    for sizes in (None, Sought()):
        found = content_scan.hash_files(walked, sizes=sizes)
        assert len(found) == 50
        assert all(h.held == () and h.kind is None for h in found)
        assert all(h.read == (sizes is None) for h in found)
        assert tried == []
    block = bytearray(rng.randbytes(512))
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    chance = folder / "chance.bin"
    chance.write_bytes(rng.randbytes(100 << 10) + bytes(block) + rng.randbytes(200 << 10))
    assert embedded._tar_checksummed(bytes(block))
    for sizes in (None, Sought()):
        tried.clear()
        (h,) = content_scan.hash_files([content_scan.Root(chance)], sizes=sizes)
        assert h.held == () and h.read == (sizes is None)  # of no size sought: not read
        if h.read:
            assert 0 < len(tried) <= 1 + (200 << 10) // 512 + 2  # it, each after it once, the end


def test_sealed_files_are_not_searched_for_a_tar(tmp_path):
    """The project's own sealed files (photographs, a crops file: their magic, then ciphertext),
    the bulk of a project and its DVC cache: one of no size sought is not read; one read (every
    size sought) is not searched for a tar's header further on, nor taken for a tar where a
    block of it is one."""
    from visage_ml.data import crops
    from visage_ml.privacy import datakeys
    from visage_ml.rights import content_scan

    rng = random.Random(12)
    tar = _tar_of(("photos/photo.png", b"x" * 3000))
    for i, magic in enumerate((datakeys.MAGIC, crops.MAGIC)):
        body = magic + rng.randbytes(8192 - len(magic)) + tar
        (tmp_path / f"{i}.sealed").write_bytes(body)

    class Sought:  # a photograph's size, which none has
        def may_match(self, size: int) -> bool:
            return size == 23_456

    walked = [content_scan.Root(tmp_path)]
    found = content_scan.hash_files(walked, sizes=Sought())
    assert len(found) == 2 and not any(h.read for h in found)
    found = content_scan.hash_files(walked, sizes=None)
    assert len(found) == 2 and all(h.read and h.kind is None for h in found)


def _binary_files_installed(per_suffix: int) -> list[Path]:
    """Files of the Python installation that are no text, up to ``per_suffix`` of each suffix:
    the standard library's and some packages' shared libraries, compiled modules, images, fonts,
    sounds, archives, arrays, ONNX models, MATLAB and IDL files."""
    import importlib.util
    import os
    import sysconfig

    packages = ("numpy", "scipy", "PIL", "pyarrow", "onnx", "matplotlib", "sklearn")
    folders = [Path(sysconfig.get_paths()["stdlib"]) / "lib-dynload"] + [
        Path(spec.origin).parent for name in packages if (spec := importlib.util.find_spec(name))
    ]
    found: dict[str, list[Path]] = {}
    for folder in folders:
        for parent, _, names in sorted(os.walk(folder)):
            for name in sorted(names):
                path = Path(parent) / name
                kept = found.setdefault(path.suffix, [])
                if len(kept) < per_suffix and path.is_file() and not path.is_symlink():
                    with open(path, "rb") as fh:
                        if b"\x00" in fh.read(embedded.SNIFF):
                            kept.append(path)
    return [path for kept in found.values() for path in kept]


def test_random_bytes_common_files_and_texts_of_octal_numbers_are_not_taken_for_a_tar():
    """A header is told by its numeric fields (56 bytes of octal digits, white space and
    NULs): none in 2,000 random first 4 KiB (16,000 blocks), in the binary files of the Python
    installation (none a tar; up to 100 of each suffix, 800), nor in a text of octal numbers
    (``od``'s dump), read as text."""
    import random

    rng = random.Random(0)
    for _ in range(2000):
        assert embedded.kind(rng.randbytes(embedded.SNIFF)) != embedded.TAR
    files = _binary_files_installed(100)
    assert len(files) > 500
    for path in files:
        with open(path, "rb") as fh:
            first = fh.read(embedded.SNIFF)
        assert not embedded._tar_blocks(first) or first[:512] == bytes(512), path
    od = "".join(
        f"{i * 16:07o} {' '.join(f'{rng.randrange(8**6):06o}' for _ in range(8))}\n"
        for i in range(300)
    )
    assert embedded.kind(od.encode()) == embedded.TEXT
    assert embedded.kind(od.encode()[: embedded.SNIFF]) == embedded.TEXT


# A tar of the old V7 format (GNU tar's ``--format=v7``): no magic, each header told by its
# checksum, as GNU tar and tarfile tell every header.


def _v7_tar(*members: tuple[bytes, bytes]) -> bytes:
    """What ``tar --format=v7 -cf`` writes of ``members`` (owned by root, mode 644; compared
    byte for byte with GNU tar 1.34's): headers with no magic."""
    out = bytearray()
    for name, data in members:
        header = bytearray(512)
        header[: len(name)] = name
        header[100:124] = b"0000644\x00" + b"0000000\x00" * 2  # mode, uid, gid
        header[124:148] = b"%011o\x00" % len(data) + b"%011o\x00" % 0o15305555733  # size, mtime
        header[329:345] = b"0000000\x00" * 2  # devmajor, devminor: GNU tar writes them
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\x00 " % sum(header)
        out += header + data + bytes(-len(data) % 512)
    out += bytes(1024)
    return bytes(out + bytes(-len(out) % 10240))


def _v7_tars(photo: bytes) -> dict[str, bytes]:
    """V7 tars holding ``photo``: as tar writes one, after an empty tar, its first header
    damaged (its checksum wrong) and its next past its first 4 KiB, compressed; pickled (a
    ``bytes`` value, and a protocol-2 string: ``torch.save``'s), the photograph bzip2-compressed
    in it (a PNG lying as it is in a pickle is found anyway, in a gzip or xz stream too: a
    photograph does not compress, and is stored)."""
    minutes = b"minutes of the meeting " * 30
    v7 = _v7_tar((b"notes.txt", minutes), (b"photo.png", photo))
    damaged = bytearray(_v7_tar((b"scan.bin", _data(10 << 10)), (b"photo.png", photo)))
    damaged[148:156] = b"9999999\x00"
    compressed = _v7_tar((b"notes.txt", minutes), (b"photo.png.bz2", bz2.compress(photo)))
    return {
        "v7.tar": v7,
        "v7-after-empty.tar": bytes(10240) + v7,
        "v7-damaged-first.tar": bytes(damaged),
        "v7.tar.xz": lzma.compress(v7),
        "v7.pkl": pickle.dumps({"backup": compressed}, protocol=4),
        "v7-protocol-2.pkl": pickle.dumps({"backup": compressed}, protocol=2),
    }


def _v7_photo(name: str, data: bytes) -> bytes:
    """The photograph ``tar -xif`` extracts of ``data`` (of its pickled tar, decompressed)."""
    if name.endswith(".pkl"):
        return bz2.decompress(_extracted(pickle.loads(data)["backup"])["photo.png.bz2"])
    return _extracted(data)["photo.png"]


def test_a_v7_tar_stops_the_erasure_and_fails_the_verifier(proj):
    """Each extracted by GNU tar 1.34 (the one after an empty tar with ``-i``; the damaged one
    after "Skipping to next header"); each certified clean before but the xz-compressed one
    (tarfile opened the stream as a tar, by its first header's checksum)."""
    _stop_the_erasure_and_fail_the_verifier(proj, _v7_tars, _v7_photo)


# How a checksum's field is written: GNU tar's and tarfile's ``%06o\0 ``; seven digits, leading
# spaces, a tab (other writers', old tars'); then any bytes a field is made of, and others.
_CHECKSUM_FORMATS = (b"%06o\x00 ", b"%07o\x00", b"%06o  ", b"  %05o\x00", b"\t%o \x00", b"%o")
_FIELD_BYTES = st.binary(min_size=8, max_size=8).map(
    lambda b: bytes(b"01234567 \t\x00\n9x"[c % 13] for c in b)
)


@settings(max_examples=400, deadline=None, database=None)
@given(
    st.binary(min_size=512, max_size=512),
    st.sampled_from(range(len(_CHECKSUM_FORMATS))),
    st.sampled_from([0, 0, 1, -1, 8, 64]),
    st.booleans(),
    _FIELD_BYTES,
    st.booleans(),
)
def test_a_block_is_a_header_by_its_checksum_exactly_as_tarfile_reads_it(
    block, fmt, off, signed, field, any_field
):
    """The scan takes a block for a header by its checksum (in the first 4 KiB of a file, and
    where it looks for a tar's first header, a MiB at a time) exactly where tarfile reads one:
    the octal number in its checksum field the sum of its bytes, that field taken for spaces
    (unsigned or signed, as tarfile and GNU tar take it)."""
    from visage_ml.rights import embedded_archives

    block = bytearray(block)
    if any_field:
        block[148:156] = field
    else:
        block[148:156] = b" " * 8
        unsigned, signed_sum = tarfile.calc_chksums(bytes(block))
        number = (signed_sum if signed else unsigned) + off
        written = _CHECKSUM_FORMATS[fmt] % abs(number) if number >= 0 else b"-%o" % -number
        block[148:156] = written[:8].ljust(8, b"\x00")
    block = bytes(block)
    try:
        expected = tarfile.nti(block[148:156]) in tarfile.calc_chksums(block)
    except tarfile.HeaderError:
        expected = False
    if block[148:156].strip(b" \t\n\x00").startswith(b"-"):
        expected = False  # no tar writes a negative checksum (GNU tar reads none; tarfile does)
    assert embedded._tar_checksummed(block) == expected
    data = bytes(range(256)) * 4 + block + bytes(512)
    assert embedded_archives._tar_start(io.BytesIO(data)) == (1024 if expected else -1)


# A tar whose first header is damaged (its magic lost, or its checksum wrong) and whose first
# member's name reads as a pickle's first opcodes (``(lp0\nS'...``: a MARK, a list, a memo's put,
# a STRING whose line runs on through the header's fields and a first member of no newline; or
# protocol 2's ``\x80\x02``): told a pickle by its first 4 KiB, it was read as one only, and the
# members after the first, which ``tar -x`` extracts ("Skipping to next header"), not at all.


def _tar_named_as_a_pickle(name: bytes, values: list[bytes], *, v7: bool = False) -> bytes:
    """A tar of a first member named ``name`` (10 KiB of minutes, no newline in them), its
    header damaged, then ``values``."""
    minutes = (b"minutes of the meeting " * 500)[: 10 << 10]
    members = [(b"face-%d.sealed" % i, v) for i, v in enumerate(values)]
    if v7:
        tar = bytearray(_v7_tar((name, minutes), *members))
        tar[148:156] = b"9999999\x00"  # its checksum wrong
    else:
        tar = bytearray(_tar_of(*((n.decode(), d) for n, d in [(name, minutes), *members])))
        tar[257:265] = bytes(8)  # its magic lost (its checksum wrong then)
    return bytes(tar)


_TARS_NAMED_AS_PICKLES = {
    "string-name.tar": lambda values: _tar_named_as_a_pickle(b"(lp0\nS'notes.txt", values),
    "unicode-name.tar": lambda values: _tar_named_as_a_pickle(b"(lp0\nVnotes.txt", values),
    "string-name-v7.tar": lambda values: _tar_named_as_a_pickle(
        b"(lp0\nS'notes.txt", values, v7=True
    ),
    "protocol-2-name-v7.tar": lambda values: _tar_named_as_a_pickle(
        b"\x80\x02]q\x00U\x05notes", values, v7=True
    ),
}


def test_a_damaged_tar_whose_first_name_reads_as_a_pickle_stops_the_erasure(proj, tmp_path):
    """Each such tar holding the subject's sealed file as its second member (extracted by
    ``tar -x``, as tarfile reads on past a damaged header): told a pickle, its members were not
    read, and the erasure was certified with it."""
    for name, make in _TARS_NAMED_AS_PICKLES.items():
        data = make([b"ab", b"cd"])
        assert embedded.kind(data[: embedded.SNIFF]) == embedded.BINARY, name
        assert _extracted(data)["face-1.sealed"] == b"cd", name
    sealed_in_each(proj, tmp_path, _TARS_NAMED_AS_PICKLES)


def test_only_pickles_bearing_a_tar_header_are_read_as_a_tar_too(monkeypatch):
    """Random bytes after a pickle's first byte or PROTO, and pickles of every protocol, are
    not read as a tar too; a pickle whose first value reads as a header's numbers is, its bytes
    read once more in the search for a header (none found: nothing more given)."""
    import random

    from visage_ml.io import CHUNK

    rng = random.Random(3)
    heads = [*(bytes([b]) for b in embedded.OLD_PICKLE_FIRST), b"\x80\x02", b"\x80\x04"]
    for head in heads:
        for _ in range(500):
            assert not embedded._also_tar(head + rng.randbytes(embedded.SNIFF - len(head)))
    rows = [{"name": f"face-{i}", "crop": rng.randbytes(300), "n": i} for i in range(200)]
    for protocol in range(6):
        assert not embedded._also_tar(pickle.dumps(rows, protocol=protocol)[: embedded.SNIFF])
    data = pickle.dumps(["1" * 5000, b"x" * 9000], protocol=1)
    assert embedded._also_tar(data[: embedded.SNIFF])
    read: list[int] = []
    Counted = partial(_Counted, read=read)

    assert list(embedded.inside_file(Counted(data), embedded.TAR)) == []
    assert sum(read) <= len(data) + CHUNK
    found = set(embedded.inside(data, embedded.BINARY))
    assert hashlib.sha256(b"x" * 9000).hexdigest() in found
    monkeypatch.setattr(embedded, "_also_tar", lambda first: False)
    assert set(embedded.inside(data, embedded.BINARY)) == found


def test_short_parts_are_told_as_before_and_what_a_pickle_of_them_holds_is_found():
    """kind() of a part too short for a tar header's numeric fields (148 bytes) tells it no tar
    at once, and of one no longer than 512 bytes looks for an HDF5 superblock at its start alone
    (a pickle of millions of 4-byte values: kind() of each took two thirds of the reading, 5.5
    us, 4.3 now): each prefix of a tar header and of an HDF5 file, its superblock at 0 or 512,
    is told as before, and a sealed file and a tar of another among 20,000 random 4-byte values
    of a pickle (protocol 3) are found."""
    import random

    info = tarfile.TarInfo("1.jpg")
    info.size = 3000
    for form in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT):
        header = info.tobuf(format=form)[: tarfile.BLOCKSIZE]
        tar = [embedded.kind(header[:n]) == embedded.TAR for n in range(1, len(header) + 1)]
        assert tar == [False] * 147 + [True] * (len(header) - 147), form
    hdf5 = b"\x89HDF\r\n\x1a\n\x00" + bytes(100)
    for at in (0, 512):
        data = b"\x01" * at + hdf5 + b"\x01" * 600
        binary = [embedded.kind(data[:n]) == embedded.BINARY for n in range(1, len(data) + 1)]
        assert binary == [False] * (at + 8) + [True] * (len(data) - at - 8), at
    rng = random.Random(67)
    sealed, archived = rng.randbytes(5000), rng.randbytes(4000)
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        info = tarfile.TarInfo("face.jpg")
        info.size = len(archived)
        t.addfile(info, io.BytesIO(archived))
    values = [rng.randbytes(4) for _ in range(20_000)]
    values[7_000], values[14_000] = sealed, tar.getvalue()
    found = set(embedded.inside(pickle.dumps(values, protocol=3), embedded.BINARY))
    assert {_sha(sealed), _sha(archived), _sha(values[1])} <= found
