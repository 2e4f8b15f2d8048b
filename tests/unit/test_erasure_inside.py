"""An erased photograph held inside another file, as a data scientist's ordinary day leaves it:
an HTML export of a notebook (``jupyter nbconvert --to html`` inlines each image as a base64
``data:`` URL), an archive of the data folder made for a colleague, a pickle, an array, a torch
file or a Parquet table holding the photo's bytes, the photo base64-encoded in a JSON or CSV file.

Before, every one of them survived an erasure whose certificate the verifier called VALID: the
copies step and the verifier hashed each file whole (and decoded notebooks only).
"""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import io
import json
import lzma
import pickle
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rights_fakes import make_project, png
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.privacy.certificate_page import page_path
from visage_ml.rights import embedded
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure

# What someone names a file they made: the person's name.
NAME = "Zelda_Testperson"


@pytest.fixture
def proj(project):
    return make_project(project, n_subjects=3)


def _photos(proj) -> tuple[str, bytes, bytes]:
    victim, other = proj.pids[0], proj.pids[1]
    return victim, next(iter(proj.images[victim].values())), next(iter(proj.images[other].values()))


def _shown(png: bytes, other: bytes) -> dict:
    """A notebook that showed ``png`` with ``IPython.display.Image(filename=...)`` (its exact
    bytes) and then ``other``, outputs kept."""

    def cell(n: int, img: bytes) -> dict:
        data = {"image/png": base64.b64encode(img).decode(), "text/plain": "<Image>"}
        out = {"output_type": "execute_result", "execution_count": n, "metadata": {}, "data": data}
        return {
            "cell_type": "code",
            "execution_count": n,
            "id": f"c{n}",
            "metadata": {},
            "source": "Image(filename='face.png')",
            "outputs": [out],
        }

    return {
        "cells": [cell(1, png), cell(2, other)],
        "metadata": {"language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def doctor_listed(kind: str) -> tuple[list[str], str]:
    """The paths `visage privacy doctor --json` lists as ``kind`` (in its order), and its output
    (for an assertion's message)."""
    doctor = CliRunner().invoke(app, ["privacy", "doctor", "--json"])
    findings = json.loads(doctor.output[doctor.output.index("{") :])["findings"]
    return [f["path"] for f in findings if f["kind"] == kind], doctor.output


def stopped_then_certified(proj, victim: str, made, kept) -> tuple[str, object]:
    """The erasure of ``victim`` stops on the files ``made`` (each holds the erased photograph
    among other content), deleting none of them; doctor lists exactly them (``erased_inside``);
    with them taken out (here: deleted) it resumes and certifies, the files ``kept`` (other
    people's) untouched. The stop message (its spaces collapsed) and the finished erasure."""
    with pytest.raises(OSError) as stopped:
        Erasure(proj.paths).erase(victim)
    said = " ".join(str(stopped.value).split())
    assert f"{len(made)} file(s) hold erased content inside" in said, said
    assert [p.name for p in made if not p.exists()] == []  # nothing of anyone else's lost
    paths, output = doctor_listed("erased_inside")
    listed = {Path(p).name for p in paths}
    assert listed == {p.name for p in made}, output
    for path in made:  # the operator takes the photograph out (here: the files go)
        path.unlink()
    (done,) = Erasure(proj.paths).resume()
    assert [p.name for p in kept if not p.exists()] == []
    return said, done


def put_back_fails_the_verifier(proj, done, made) -> None:
    """With the files ``made`` put back, the certificate of the erasure ``done`` fails its
    verification, which names exactly them."""
    for path, data in made.items():
        path.write_bytes(data)
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert {Path(f["path"]).name for f in report.findings} == {p.name for p in made}


def finds_searched(monkeypatch) -> list[int]:
    """The lengths the scan's line and quote searches (``embedded._find``) go over, each
    appended as it is made: the bytes searched, to bound its work."""
    searched: list[int] = []
    real = embedded._find

    def find(data, sub, start):
        at = real(data, sub, start)
        searched.append((at if at >= 0 else len(data)) - start)
        return at

    monkeypatch.setattr(embedded, "_find", find)
    return searched


def pickles_read_alike(tmp_path, makers, photo: bytes, other: bytes) -> None:
    """Each of ``makers``' pickles of ``[other, photo]`` is told a pickle by its first bytes,
    and ``photo`` found in it alike in memory and from its file (mapped)."""
    sha = hashlib.sha256(photo).hexdigest()
    for name, make in makers.items():
        data = make([other, photo])
        assert embedded.kind(data[: embedded.SNIFF]) == embedded.BINARY, name
        found = set(embedded.inside(data, embedded.BINARY))
        (tmp_path / name).write_bytes(data)
        with open(tmp_path / name, "rb") as fh:
            assert set(embedded.inside_large(fh, embedded.BINARY)) == found, name
        assert sha in found, name


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_an_html_export_of_a_notebook_keeps_no_erased_photograph(proj):
    nbformat = pytest.importorskip("nbformat")
    nbconvert = pytest.importorskip("nbconvert")
    victim, png, theirs = _photos(proj)
    nb = nbformat.from_dict(_shown(png, theirs))
    html, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    out = proj.paths.root / "reports" / f"{NAME}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    assert f"data:image/png;base64,{_b64(png)}" in html  # as nbconvert writes it
    saved = out.read_bytes()
    result = Erasure(proj.paths).erase(victim)
    # The report stays, without the erased photograph; the other subject's is still shown.
    text = out.read_text(encoding="utf-8")
    assert _b64(png) not in text
    assert f"data:image/png;base64,{_b64(theirs)}" in text
    assert result.certificate["claims"]["copies_removed"] == {"reports": 1}
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
    # The export as it was (a copy put back): the verifier finds the photograph in it.
    out.write_bytes(saved)
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert [f["path"] for f in report.findings] == [str(out)]


def _containers(png: bytes, victim: str) -> dict[str, bytes]:
    """Files a data scientist makes that hold ``png``'s bytes: archives for a colleague, a
    pickle, NumPy, torch and Parquet files of the photo."""
    made: dict[str, bytes] = {}
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w:gz") as t:
        info = tarfile.TarInfo("data/interim/face.png")
        info.size = len(png)
        t.addfile(info, io.BytesIO(png))
    made["data.tar.gz"] = tar.getvalue()
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("data/interim/face.png", png)
        z.writestr("data/README.txt", "for the colleague")
    made["backup.zip"] = zipped.getvalue()
    made["face.png.gz"] = gzip.compress(png)
    made["photo.pkl"] = pickle.dumps({"img": png, "note": "checked"})
    arr = io.BytesIO()
    np.save(arr, np.frombuffer(png, dtype=np.uint8))
    made["photo.npy"] = arr.getvalue()
    npz = io.BytesIO()
    np.savez_compressed(npz, img=np.frombuffer(png, dtype=np.uint8))
    made["photos.npz"] = npz.getvalue()
    table = io.BytesIO()
    pd.DataFrame({"name": ["face"], "img": [png]}).to_parquet(table)  # snappy, as pandas does
    made["faces.parquet"] = table.getvalue()
    torch = pytest.importorskip("torch")
    pt = io.BytesIO()
    torch.save({"img": torch.frombuffer(bytearray(png), dtype=torch.uint8)}, pt)
    made["crop.pt"] = pt.getvalue()
    return made


def test_an_archive_pickle_array_or_table_holding_the_photograph_stops_the_erasure(proj):
    """Such a file holds other content too (a colleague's backup): the erasure neither rewrites
    it nor deletes it whole, but stops before its certificate and says where to look; the
    operator takes the photograph out, and the resumed erasure certifies."""
    victim, png, theirs = _photos(proj)
    folder = proj.paths.root / "data" / "shared_for_colleague"
    folder.mkdir(parents=True)
    made = {folder / name: data for name, data in _containers(png, victim).items()}
    for path, data in made.items():
        path.write_bytes(data)
    # The same kinds of file holding only another subject's photograph are no concern.
    kept = {folder / f"other-{n}": d for n, d in _containers(theirs, victim).items()}
    for path, data in kept.items():
        path.write_bytes(data)
    said, done = stopped_then_certified(proj, victim, made, kept)
    assert "data: " in said, said
    assert "visage privacy doctor" in said and "visage privacy resume" in said, said
    assert NAME not in said and "backup.zip" not in said
    written = [
        done.certificate_path.read_text(encoding="utf-8"),
        page_path(done.certificate_path).read_text(encoding="utf-8"),
        proj.paths.ledger.read_text(encoding="utf-8"),
    ]
    for needle in ("shared_for_colleague", "backup.zip", "photo.pkl", "crop.pt"):
        assert not [w for w in written if needle in w], needle
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert report.ok
    # What is not looked inside is said beside the verdict, and on the certificate's page.
    (check,) = [c for c in report.checks if c.name == "no erased content remains"]
    assert "not inside other formats" in check.detail
    assert "is not looked for" in " ".join(written[1].split())
    put_back_fails_the_verifier(proj, done, made)


def torch_saved(obj: object) -> bytes:
    """``torch.save(obj, f)``: a zip whose ``data.pkl`` is a pickle of protocol 2."""
    torch = pytest.importorskip("torch")
    out = io.BytesIO()
    torch.save(obj, out)
    return out.getvalue()


# Files that hold photographs' bytes pickled with protocol 2, ``torch.save``'s (a checkpoint's
# ``data.pkl``) or ``pickle.dump(..., protocol=2)``'s: each ``bytes`` value (a ``bytearray``'s,
# a NumPy array's) held as ``_codecs.encode(str, 'latin1')``, the string UTF-8 encoded, so
# that each byte from 0x80 up lies as two and no photograph lies in it as it is.
_PROTOCOL_2 = {
    "debug.pt": lambda photos: torch_saved({"step": 12, "imgs": photos, "note": "crops"}),
    "rows.pkl": lambda photos: pickle.dumps(
        [(f"face-{i}", p, 0.5 + i / 10) for i, p in enumerate(photos)], protocol=2
    ),
    "arrays.pkl": lambda photos: pickle.dumps(
        {"crops": [np.frombuffer(p, np.uint8) for p in photos], "tag": bytearray(b"\xff" * 9)},
        protocol=2,
    ),
}


def test_a_photograph_pickled_with_protocol_2_or_torch_saved_stops_the_erasure(proj):
    """A researcher's ``torch.save({"img": photo_bytes, ...})`` or a list of rows pickled with
    protocol 2 holding the erased photograph beside another subject's: the erasure certified.
    Now it stops on them, and the same files holding only other subjects' photographs are no
    concern."""
    _, photo, theirs = _photos(proj)
    third = next(iter(proj.images[proj.pids[2]].values()))
    folder = proj.paths.root / "models" / "debug"
    made = held_until_taken_out(proj, folder, _PROTOCOL_2, photo, [theirs, third])
    for data in made.values():
        assert photo not in data and theirs not in data  # as it is, it lies in none


def held_until_taken_out(
    proj, folder: Path, makers: dict, photo: bytes, theirs: list[bytes]
) -> dict[Path, bytes]:
    """Each file of ``makers`` (name: how it is made of a list of photographs) made in
    ``folder`` holding the erased subject's ``photo`` beside ``theirs[0]`` (another subject's)
    stops the erasure until taken out (:func:`stopped_then_certified`), the same file holding
    ``theirs`` alone stops nothing, and the verifier fails the certificate on exactly the first
    ones, put back. Those files and their content."""
    folder.mkdir(parents=True)
    made = {folder / name: make([theirs[0], photo]) for name, make in makers.items()}
    kept = {folder / f"other-{name}": make(theirs) for name, make in makers.items()}
    for path, data in {**made, **kept}.items():
        path.write_bytes(data)
    _, done = stopped_then_certified(proj, proj.pids[0], made, kept)
    put_back_fails_the_verifier(proj, done, made)
    return made


# Files that hold photographs' bytes pickled with protocol 0 or 1 (``pickle.dump(..., protocol=0)``,
# Python 2's default, still written where code asks for it): no PROTO opcode first, each ``bytes``
# value held as ``_codecs.encode(str, 'latin1')``, the string after a MARK, then a TUPLE: with
# protocol 1 the string's UTF-8 (BINUNICODE), with protocol 0 its characters as they are, five
# of them escaped (``\\u000a``...) to a line (UNICODE). Told by nothing in their first bytes, they
# were not read at all.
_OLD_PROTOCOLS = {
    "rows-protocol-1.pkl": lambda photos: pickle.dumps(
        [(f"face-{i}", p, 0.5 + i / 10) for i, p in enumerate(photos)], protocol=1
    ),
    "arrays-protocol-1.pkl": lambda photos: pickle.dumps(
        {"crops": [np.frombuffer(p, np.uint8) for p in photos], "tag": bytearray(b"\xff" * 9)},
        protocol=1,
    ),
    "rows-protocol-0.pkl": lambda photos: pickle.dumps(
        [(f"face-{i}", p, 0.5 + i / 10) for i, p in enumerate(photos)], protocol=0
    ),
    # Its first bytes value far past its first 4 KiB: told by its opcodes, not by what it holds.
    "labels-first-protocol-0.pkl": lambda photos: pickle.dumps(
        {"labels": list(range(3000)), "imgs": photos}, protocol=0
    ),
}


def test_a_photograph_pickled_with_protocol_0_or_1_stops_the_erasure(proj):
    """Rows, arrays, a data set's dict pickled with protocol 0 or 1 holding the erased
    photograph beside another subject's: not read, and the erasure certified. Now it stops on
    them; the same files of other subjects' photographs are no concern."""
    _, photo, theirs = _photos(proj)
    third = next(iter(proj.images[proj.pids[2]].values()))
    folder = proj.paths.root / "data" / "legacy"
    made = held_until_taken_out(proj, folder, _OLD_PROTOCOLS, photo, [theirs, third])
    for data in made.values():
        assert not data.startswith(b"\x80") and photo not in data  # no PROTO; not as it is
        assert pickle.loads(data)  # a pickle all the same


def test_a_pickle_of_protocol_0_or_1_is_read_alike_from_its_file_and_in_parts(
    tmp_path, monkeypatch
):
    """Each such pickle: the photograph found in memory and from its file (mapped); with values
    larger than are held (EMBED_MAX), a protocol-0 string decoded and hashed a part at a time,
    an escape cut between two parts, a protocol-1 one decoded to a file. Texts and other bytes
    are not taken for such pickles."""
    rng = np.random.default_rng(5)
    photo = png(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    other = png(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    sha = hashlib.sha256(photo).hexdigest()
    pickles_read_alike(tmp_path, _OLD_PROTOCOLS, photo, other)
    monkeypatch.setattr(embedded, "EMBED_MAX", 1000)
    for name in ("rows-protocol-0.pkl", "rows-protocol-1.pkl"):
        data = _OLD_PROTOCOLS[name]([other, photo])
        assert sha in set(embedded.inside(data, embedded.BINARY)), name
    for text in (
        b"NaN",
        b"Name,age\nAda,36\n" * 300,
        b"(a) a note\n" * 300,
        b"class A:\n    x = 1\n",
    ):
        assert embedded.kind(text) == embedded.TEXT
    # Random bytes after a byte a pickle begins with: a few in ten thousand read on to their end
    # (a string's length past it), and are read whole for nothing.
    heads = [bytes([b]) + rng.bytes(4095) for b in embedded.OLD_PICKLE_FIRST for _ in range(500)]
    assert sum(embedded.kind(h) == embedded.BINARY for h in heads) <= 20


def test_crafted_heads_of_protocol_0_and_1_strings_are_each_tried_once(monkeypatch):
    """Crafted: a protocol-0 pickle's heads (a get, a MARK, an UNICODE) each followed by a long
    line and no arguments, and a protocol-1 one's (a get, a MARK, a BINUNICODE's length past
    the file's end): each MARK found once and its head tried, each line's end searched for over
    the bytes to the next MARK's: linear, and nothing found. More such heads than image starts
    a file of its size may hold, and it is not read to its end (not shown clean)."""
    searched = finds_searched(monkeypatch)
    n = 10_000
    zero = b"(" + (b"g1\n(V" + b"\x89" * 200) * n
    one = b"}" + (b"h\x01(X\xff\xff\xff\x7f" + b"\x89" * 200) * n
    for data, protocol in ((zero, 0), (one, 1)):
        assert embedded.kind(data[: embedded.SNIFF]) == embedded.BINARY
        searched.clear()
        assert list(embedded.inside(data, embedded.BINARY)) == []
        assert len(searched) <= 4 * n, protocol
        assert sum(searched) <= 4 * len(data), protocol
    with pytest.raises(embedded.TooManyStarts):
        list(embedded.inside(b"}" + b"h\x01(X" * 1_000_000, embedded.BINARY))


def test_a_photograph_in_a_file_of_protocol_2_pickles_dumped_one_by_one_is_found(tmp_path):
    """``pickle.dump(row, f, protocol=2)`` row after row: each pickle memoizes
    ``_codecs.encode`` at its own index (past 255 with LONG_BINPUT), more of them than are
    sought one by one (``embedded.ENCODE_GETS_MAX``). The photograph in the last row is found,
    in memory and from the file."""
    photo = png(np.full((16, 16, 3), 7, np.uint8))
    out = io.BytesIO()
    for i in range(0, 600, 23):  # i strings memoized before the row's first bytes
        row = [f"s{j}" for j in range(i)] + [b"\x80" * 40, photo if i > 580 else b"x"]
        pickle.dump(row, out, protocol=2)
    data = out.getvalue()
    assert b"c_codecs\nencode\nr" in data and photo not in data
    path = tmp_path / "rows.pkl"
    path.write_bytes(data)
    in_memory = set(embedded.inside(data, embedded.BINARY))
    with open(path, "rb") as fh:
        assert set(embedded.inside_large(fh, embedded.BINARY)) == in_memory
    assert hashlib.sha256(photo).hexdigest() in in_memory


def _encoded(form: str):
    """How a photograph's pixels become its file, in one of the importers' other formats."""

    def encode(arr: np.ndarray) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=form)
        return buf.getvalue()

    return encode


# Files that hold photographs as whole ``bytes`` values, whatever their format: pickled with
# protocol 3 to 5 as they are (``bytes``, a ``bytearray``, a NumPy array's buffer), with
# protocol 2 and by ``torch.save`` as latin-1 strings.
_WHOLE = {
    "rows.pkl": lambda photos: pickle.dumps(
        [(f"face-{i}", p, 0.5 + i / 10) for i, p in enumerate(photos)], protocol=4
    ),
    "crops-protocol-3.pkl": lambda photos: pickle.dumps({"crops": photos}, protocol=3),
    "crops-protocol-5.pkl": lambda photos: pickle.dumps(
        {"crops": [bytearray(p) for p in photos], "n": len(photos)}, protocol=5
    ),
    "arrays.pkl": lambda photos: pickle.dumps([np.frombuffer(p, np.uint8) for p in photos]),
    "rows-protocol-2.pkl": lambda photos: pickle.dumps(
        [(f"face-{i}", p) for i, p in enumerate(photos)], protocol=2
    ),
    "debug.pt": lambda photos: torch_saved({"step": 3, "imgs": photos}),
}


@pytest.mark.parametrize("form", ["GIF", "WEBP"])
def test_a_gif_or_webp_photograph_pickled_as_bytes_stops_the_erasure(project, form):
    """A subject's photograph stored as a GIF or a WebP (formats the importers accept), pickled
    as ``bytes`` beside another subject's: only PNGs and JPEGs were looked for inside a pickle,
    and the erasure certified. Now each value of a size sought is compared whole; the same files
    holding only other subjects' photographs stop nothing."""
    proj = make_project(project, n_subjects=3, encode=_encoded(form))
    _, photo, theirs = _photos(proj)
    third = next(iter(proj.images[proj.pids[2]].values()))
    assert photo[:4] in (b"GIF8", b"RIFF")
    held_until_taken_out(proj, proj.paths.root / "data" / "interim", _WHOLE, photo, [theirs, third])


def test_a_sealed_photograph_pickled_as_bytes_stops_the_erasure(proj):
    """The subject's sealed file (ciphertext: no signature of any image in it), pickled whole
    with protocol 4 and with protocol 2 (``torch.save``'s), is a copy of a file the erasure
    removes: the erasure certified with it. The other subjects' sealed files stop nothing."""

    def sealed(pid: str) -> bytes:
        return sorted((proj.paths.raw / pid).glob("*.sealed"))[0].read_bytes()

    victim, other, third = (sealed(pid) for pid in proj.pids)
    makers = {name: _WHOLE[name] for name in ("rows.pkl", "rows-protocol-2.pkl", "debug.pt")}
    held_until_taken_out(proj, proj.paths.root / "backups", makers, victim, [other, third])


def _dumped(*parts: tuple[object, int]) -> bytes:
    """``pickle.dump(obj, f, protocol=n)`` one after another into one file: a log of records
    written over the years (Python 3.8 changed the default protocol from 3 to 4; ``torch`` and
    older code write 2)."""
    return b"".join(pickle.dumps(obj, protocol=n) for obj, n in parts)


def _rows(photos: list[bytes]) -> list[tuple[str, bytes]]:
    return [(f"face-{i}", p) for i, p in enumerate(photos)]


# Files of pickles of mixed protocols, the photographs in a later pickle than the first,
# of another protocol: its bytes held after another opcode (protocol 5's BYTEARRAY8), memoized
# otherwise (MEMOIZE from protocol 4, BINPUT in 3), or held at all (protocol 2 has no bytes).
_MIXED = {
    "log-2-then-4.pkl": lambda photos: _dumped(({"run": 1}, 2), (_rows(photos), 4)),
    "log-3-then-4.pkl": lambda photos: _dumped(({"tag": b"v1" * 40}, 3), (_rows(photos), 4)),
    "log-4-then-3.pkl": lambda photos: _dumped(({"tag": b"v1" * 40}, 4), (_rows(photos), 3)),
    "log-4-then-5.pkl": lambda photos: _dumped(
        ({"tag": b"v1" * 40}, 4), ([bytearray(p) for p in photos], 5)
    ),
}


def test_a_sealed_photograph_in_a_file_of_pickles_of_mixed_protocols_stops_the_erasure(
    proj, tmp_path
):
    """A log of records pickled one by one with different protocols, the subject's sealed file
    (no image signature in it) in a record after the first: the first pickle's protocol decided
    which opcodes and which memo were sought, and the erasure certified. The same files holding
    other subjects' sealed files stop nothing; each is read alike in memory and from its file."""

    def sealed(pid: str) -> bytes:
        return sorted((proj.paths.raw / pid).glob("*.sealed"))[0].read_bytes()

    victim, other, third = (sealed(pid) for pid in proj.pids)
    for name, make in _MIXED.items():
        data = make([other, victim])
        (tmp_path / name).write_bytes(data)
        held = set(embedded.inside(data, embedded.BINARY))
        with open(tmp_path / name, "rb") as fh:
            assert set(embedded.inside_large(fh, embedded.BINARY)) == held, name
        assert hashlib.sha256(victim).hexdigest() in held, name
    held_until_taken_out(proj, proj.paths.root / "logs", _MIXED, victim, [other, third])


def _zipped(data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("face.bin", data)
    return out.getvalue()


def _tarred(data: bytes, mode: str = "w") -> bytes:
    """A tar of ``data`` as its one member (``mode`` "w:gz": a tar.gz)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tf:
        info = tarfile.TarInfo("face.bin")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _tar_gzipped(data: bytes) -> bytes:
    return _tarred(data, "w:gz")


# Files that hold photographs inside a value a pickle holds, of no size sought: a zip, a gzip
# or xz stream, a tar.gz or a pickle pickled as ``bytes`` (a cache of archives, a queue of
# serialised records), with protocol 4 or 5, with protocol 2 (``torch.save``'s, whose bytes lie
# as UTF-8), or a pickle of protocol 4 inside one of protocol 3 (memoized otherwise).
_NESTED = {
    "bundles.pkl": lambda photos: pickle.dumps(
        {"bundles": [_zipped(p) for p in photos], "n": len(photos)}, protocol=4
    ),
    "compressed.pkl": lambda photos: pickle.dumps([gzip.compress(p) for p in photos], protocol=4),
    "archives.pkl": lambda photos: pickle.dumps(
        {"tgz": [_tar_gzipped(p) for p in photos], "xz": [lzma.compress(p) for p in photos]},
        protocol=5,
    ),
    "bundles.pt": lambda photos: torch_saved({"bundles": [_zipped(p) for p in photos]}),
    "queue.pt": lambda photos: torch_saved(
        {"records": [pickle.dumps({"img": p, "k": 2}, protocol=4) for p in photos]}
    ),
    "queue-protocol-2.pt": lambda photos: torch_saved(
        {"records": [pickle.dumps({"img": p, "k": 2}, protocol=2) for p in photos]}
    ),
    "queue-protocol-3.pkl": lambda photos: pickle.dumps(
        [pickle.dumps({"img": p, "k": 2}, protocol=4) for p in photos], protocol=3
    ),
}


def sealed_in_each(proj, tmp_path: Path, makers: dict) -> None:
    """Each file of ``makers`` holding the first subject's sealed file beside the second's: the
    first's found, alike in memory and from its file; then :func:`held_until_taken_out`."""

    def sealed(pid: str) -> bytes:
        return sorted((proj.paths.raw / pid).glob("*.sealed"))[0].read_bytes()

    victim, other, third = (sealed(pid) for pid in proj.pids)
    sought = _Sought(len(victim))
    for name, make in makers.items():
        data = make([other, victim])
        (tmp_path / name).write_bytes(data)
        what = embedded.kind(data[: embedded.SNIFF])
        held = set(embedded.inside(data, what, sizes=sought))
        with open(tmp_path / name, "rb") as fh:
            assert set(embedded.inside_large(fh, what, sizes=sought)) == held, name
        assert hashlib.sha256(victim).hexdigest() in held, name
    held_until_taken_out(proj, proj.paths.root / "cache", makers, victim, [other, third])


def test_a_sealed_photograph_in_a_zip_gzip_or_pickle_held_in_a_pickle_stops_the_erasure(
    proj, tmp_path
):
    """The subject's sealed file zipped, gzipped or pickled, and that pickled as ``bytes``: a
    value of no size sought was not looked inside, and the erasure certified. The same files
    holding other subjects' sealed files stop nothing; each is read alike in memory and from
    its file."""
    sealed_in_each(proj, tmp_path, _NESTED)


def _zst(data: bytes, codec: str = "zstd") -> bytes:
    """``data`` as a zstd frame (``zstd``, ``pandas.to_pickle(..., compression="zstd")``), or
    an LZ4 one (``codec`` "lz4": ``lz4``, joblib's ``compress="lz4"``)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, codec) as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


def _joblib(obj: object, compress: object) -> bytes:
    """``joblib.dump(obj, f, compress=compress)``: a pickle in a zlib (``compress=3``, joblib's
    default compression) or LZMA stream, its arrays written after it."""
    joblib = pytest.importorskip("joblib")
    out = io.BytesIO()
    joblib.dump(obj, out, compress=compress)
    return out.getvalue()


# Caches compressed as libraries compress them, with no file format around the stream: joblib's
# (zlib, its default compression, or LZMA's "alone" format), a zstd frame (a ``.tar.zst``, a
# pickle compressed as pandas compresses one), an LZ4 frame, and such streams pickled as values.
_STREAMS = {
    "features.joblib": lambda photos: _joblib(
        {"crops": photos, "emb": np.zeros((2, 8), np.float32)}, 3
    ),
    "features.joblib.lzma": lambda photos: _joblib({"crops": photos}, ("lzma", 3)),
    "faces.tar.zst": lambda photos: _zst(_tarred(b"".join(photos[-1:]))),
    "rows.pkl.zst": lambda photos: _zst(pickle.dumps({"crops": photos}, protocol=4)),
    "faces.tar.lz4": lambda photos: _zst(_tarred(b"".join(photos[-1:])), "lz4"),
    "values.pkl": lambda photos: pickle.dumps(
        {
            "zlib": [zlib.compress(p) for p in photos],
            "zst": [_zst(p) for p in photos],
            "lz4": [_zst(p, "lz4") for p in photos],
            "lzma": [lzma.compress(p, format=lzma.FORMAT_ALONE) for p in photos],
        },
        protocol=5,
    ),
}


def test_a_sealed_photograph_in_a_zlib_zstd_lz4_or_lzma_stream_stops_the_erasure(proj, tmp_path):
    """A joblib cache (``joblib.dump(..., compress=3)``), a ``.tar.zst``, a pickle compressed
    with zstd, and such streams held in a pickle: none was told from other bytes, and the
    erasure certified with the subject's sealed file in each. Each is read alike in memory and
    from its file; the same files holding other subjects' sealed files stop nothing."""
    sealed_in_each(proj, tmp_path, _STREAMS)


def test_a_text_that_begins_as_a_zlib_stream_is_read_as_text():
    # "x^" begins a zlib stream of level 1 (78 5e), and a line of a maths note.
    key_b64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(200)).decode()
    text = f"x^2 + y^2 = r^2\nfigure: {key_b64}\n".encode()
    assert embedded.kind(text) == embedded.TEXT
    assert embedded.stream_kind(zlib.compress(b"abc" * 99, 1)) == embedded.ZLIB
    # Binary files that begin with those headers but hold random bytes are none.
    rng = np.random.default_rng(5)
    for head in (b"]\x00\x00\x40\x00", b"\x78\x9c"):
        assert embedded.stream_kind(head + rng.bytes(embedded.SNIFF)) is None


def test_a_protocol_2_pickle_of_plain_strings_stops_nothing(proj):
    """Strings pickled with protocol 2 (names, captions with accents, ``'latin1'`` itself, a
    pair of a string and ``'latin1'``) hold no bytes: the erasure certifies, the files left as
    they were."""
    victim = proj.pids[0]
    rows = [
        {"caption": f"café n° {i} – ok", "codec": "latin1", "pair": ("ÿØÿà", "latin1")}
        for i in range(50)
    ]
    folder = proj.paths.root / "data" / "interim"
    folder.mkdir(parents=True)
    made = {
        folder / "captions.pkl": pickle.dumps(rows, protocol=2),
        folder / "captions.pt": torch_saved(rows),
    }
    for path, data in made.items():
        path.write_bytes(data)
    result = Erasure(proj.paths).erase(victim)
    assert {p: p.read_bytes() for p in made} == made
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok


def test_the_photograph_base64_encoded_in_json_or_csv_is_cut_out(proj):
    victim, png, theirs = _photos(proj)
    folder = proj.paths.root / "data" / "labels"
    folder.mkdir(parents=True)
    as_json = folder / "faces.json"
    as_json.write_text(
        json.dumps([{"id": 1, "img": _b64(png)}, {"id": 2, "img": _b64(theirs)}]),
        encoding="utf-8",
    )
    as_csv = folder / "faces.csv"
    as_csv.write_text(f"id,img\n1,{_b64(png)}\n2,{_b64(theirs)}\n", encoding="utf-8")
    saved = {p: p.read_bytes() for p in (as_json, as_csv)}
    result = Erasure(proj.paths).erase(victim)
    # Each file stays, readable as before, the erased photograph's field emptied.
    rows = json.loads(as_json.read_text(encoding="utf-8"))
    assert [r["img"] for r in rows] == ["", _b64(theirs)]
    assert pd.read_csv(as_csv, keep_default_na=False)["img"].tolist() == ["", _b64(theirs)]
    assert result.certificate["claims"]["copies_removed"] == {"data": 2}
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
    for path, data in saved.items():
        path.write_bytes(data)
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert {f["path"] for f in report.findings} == {str(as_json), str(as_csv)}


@pytest.mark.parametrize("how", ["lines", "json-escaped", "csv-row"])
def test_base64_wrapped_in_lines_is_found_whatever_its_last_line(how):
    """``base64.encodebytes`` (and MIME, and PEM-like dumps) wrap at 76 characters: the last
    line is as short as the length makes it. A run whose last line was under 16 characters was
    cut before it and no longer decoded: about one photograph in five, wrapped, was missed."""
    missed = []
    for n in range(3000, 3000 + 57):  # every last-line length of a 76-character wrap
        data = bytes((i * 7 + n) % 251 for i in range(n))
        wrapped = base64.encodebytes(data)
        text = {
            "lines": wrapped,
            "json-escaped": b'{"img": "' + wrapped.replace(b"\n", b"\\n") + b'"}',
            # The next row's first field follows the last line's break.
            "csv-row": b"1," + wrapped + b"2,x\n",
        }[how]
        if hashlib.sha256(data).hexdigest() not in set(embedded.inside(text, embedded.TEXT)):
            missed.append(n)
    assert missed == []


class _Sought:
    """What a scan seeks, by size (as :class:`~visage_ml.rights.content_hashes.ContentHashes`)."""

    def __init__(self, *sizes: int) -> None:
        self.sizes = set(sizes)

    def may_match(self, size: int) -> bool:
        return size in self.sizes


def test_a_small_archive_base64_encoded_in_a_log_of_hex_ids_is_found():
    """A log's hex ids decode as base64 to fewer bytes than anything sought, and are passed
    over unread; a zip or gzip of a compressible file encodes shorter than that file, and is
    still opened."""
    sought = b"scan line 0000\n" * 400  # 6,000 bytes that compress to a few dozen
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("scan.txt", sought)
    table = io.BytesIO()
    pd.DataFrame({"scan": [sought]}).to_parquet(table)
    small = {
        "zip": zipped.getvalue(),
        "gzip": gzip.compress(sought, mtime=0),
        "bzip2": bz2.compress(sought),
        "xz": lzma.compress(sought),
        "parquet": table.getvalue(),
    }
    for name, packed in small.items():
        assert len(_b64(packed)) < len(sought), name
        rows = [f"{i},{hashlib.sha256(bytes([i])).hexdigest()},0.5" for i in range(200)]
        rows.insert(100, f"100,{_b64(packed)},0.5")
        text = ("id,sha256,score\n" + "\n".join(rows) + "\n").encode()
        found = set(embedded.inside(text, embedded.TEXT, sizes=_Sought(len(sought))))
        assert hashlib.sha256(sought).hexdigest() in found, name


def _table(column, png: bytes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 3
    other = [b"\x89PNG not this one %d" % i for i in range(n - 1)]
    values = {
        "binary": pa.array([png, *other], pa.binary()),
        "large_binary": pa.array([png, *other], pa.large_binary()),
        "fixed_size_binary": pa.array([png] * n, pa.binary(len(png))),
        "base64 string": pa.array([_b64(png), "a", "b"]),
        "categorical": pa.array([_b64(png), "a", _b64(png)]).dictionary_encode(),
        "list of binary": pa.array([[png], [], other], pa.list_(pa.binary())),
        "struct": pa.array([{"img": png}, {"img": None}, {"img": other[0]}]),
    }[column]
    table = pa.table(
        {
            "pid": [f"p{i:016x}" for i in range(n)],
            "embedding": pa.array([[0.5] * 128] * n, pa.list_(pa.float32())),
            "score": [0.1, 0.2, 0.3],
            "img": values,
        }
    )
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


@pytest.mark.parametrize(
    "column",
    [
        "binary",
        "large_binary",
        "fixed_size_binary",
        "base64 string",
        "categorical",
        "list of binary",
        "struct",
    ],
)
def test_a_parquet_table_holding_the_photograph_in_any_column_of_bytes_or_text(proj, column):
    """Only the columns that can hold bytes or text are read (an embedding column is passed
    over): each of them, whatever its type, top level or nested."""
    victim, png, _ = _photos(proj)
    data = _table(column, png)
    assert hashlib.sha256(png).hexdigest() in set(embedded.inside(data, embedded.PARQUET))
    table = proj.paths.root / "data" / "features" / "faces.parquet"
    table.parent.mkdir(parents=True)
    table.write_bytes(data)
    with pytest.raises(OSError, match="hold erased content inside"):
        Erasure(proj.paths).erase(victim)
