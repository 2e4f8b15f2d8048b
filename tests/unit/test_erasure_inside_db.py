"""An erased photograph held in a SQLite database: ``sqlite3``, pandas ``to_sql``, a labelling
tool's ``project.db``, a notebook's cache. The photo's bytes in a BLOB column, or base64 in a
TEXT one; a BLOB larger than a page is split over overflow pages, a page number between each
piece, so the file never holds it whole.

Before, every one of them survived an erasure whose certificate the verifier called VALID: the
scan did not know the file ("SQLite format 3\\0") and looked at its bytes only as a whole.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sqlite3
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from rights_fakes import make_project
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.rights import content_scan, embedded
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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _db(path: Path, *statements: tuple[str, tuple], page_size: int = 512, wal: bool = False):
    """A database at ``path`` made by ``statements``; small pages, so that a photograph spans
    several overflow pages (as any photo larger than a page does)."""
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA page_size = {page_size}")
    if wal:
        con.execute("PRAGMA journal_mode = WAL")
    for sql, args in statements:
        con.execute(sql, args)
    con.commit()
    con.close()
    return path


def _databases(folder: Path, png: bytes, theirs: bytes) -> dict[Path, bytes]:
    """Databases holding ``png`` beside other people's photos (``theirs``), as they are made."""
    folder.mkdir(parents=True, exist_ok=True)
    blob = _db(
        folder / "faces.db",
        ("CREATE TABLE faces (id INTEGER PRIMARY KEY, name TEXT, img BLOB, score REAL)", ()),
        ("INSERT INTO faces (name, img, score) VALUES (?, ?, ?)", ("a", theirs, 0.5)),
        ("INSERT INTO faces (name, img, score) VALUES (?, ?, ?)", (NAME, png, 0.9)),
        ("INSERT INTO faces (name, img, score) VALUES (?, ?, ?)", ("c", theirs[::-1], 0.1)),
    )
    text = _db(
        folder / "labels.sqlite",
        ("CREATE TABLE tasks (id INTEGER PRIMARY KEY, data TEXT)", ()),
        ("INSERT INTO tasks (data) VALUES (?)", (json.dumps({"image": _b64(theirs)}),)),
        ("INSERT INTO tasks (data) VALUES (?)", (f"data:image/png;base64,{_b64(png)}",)),
    )
    without_rowid = _db(
        folder / "crops.db",
        ("CREATE TABLE crops (k TEXT PRIMARY KEY, img BLOB) WITHOUT ROWID", ()),
        ("INSERT INTO crops VALUES (?, ?)", ("k1", theirs)),
        ("INSERT INTO crops VALUES (?, ?)", ("k2", png)),
    )
    # pandas, into a file named as a cache (WAL, as an application keeps its database).
    cache = folder / "cache.bin"
    with sqlite3.connect(cache) as con:
        con.execute("PRAGMA journal_mode = WAL")
        pd.DataFrame({"k": [1, 2], "v": [theirs, png]}).to_sql("kv", con, index=False)
    con.close()
    made = {p: p.read_bytes() for p in (blob, text, without_rowid, cache)}
    for data in made.values():
        assert data.startswith(b"SQLite format 3\x00")
    # The photograph is split over overflow pages: no window of the file holds it whole.
    assert png not in made[blob] and png not in made[without_rowid]
    return made


def test_a_database_holding_the_photograph_stops_the_erasure_and_fails_the_verifier(proj):
    """The database holds other people's rows too: the erasure neither rewrites it nor deletes
    it, but stops before its certificate and says where to look; doctor lists each; the file is
    left as it was; the verifier fails a certificate while any of them is there."""
    victim, png, theirs = _photos(proj)
    folder = proj.paths.root / "data" / "labelling"
    made = _databases(folder, png, theirs)
    kept = _db(
        folder / "others.db",
        ("CREATE TABLE faces (img BLOB)", ()),
        ("INSERT INTO faces VALUES (?)", (theirs,)),
    )
    before = {p: p.stat().st_mtime_ns for p in made}
    listing = sorted(os.listdir(folder))
    with pytest.raises(OSError) as stopped:
        Erasure(proj.paths).erase(victim)
    said = " ".join(str(stopped.value).split())
    assert f"{len(made)} file(s) hold erased content inside" in said, said
    assert "a database" in said and NAME not in said, said
    # The scan changed nothing: no journal, no -wal or -shm beside them, same bytes and times.
    assert sorted(os.listdir(folder)) == listing
    assert {p: p.read_bytes() for p in made} == made
    assert {p: p.stat().st_mtime_ns for p in made} == before
    doctor = CliRunner().invoke(app, ["privacy", "doctor", "--json"])
    listed = {
        Path(f["path"]).name
        for f in json.loads(doctor.output[doctor.output.index("{") :])["findings"]
        if f["kind"] == "erased_inside"
    }
    assert listed == {p.name for p in made}, doctor.output
    for path in made:  # the operator takes the photograph out (here: the files go)
        path.unlink()
    (done,) = Erasure(proj.paths).resume()
    assert kept.exists()
    assert verify_certificate(done.certificate_path, root=proj.paths.root).ok
    for path, data in made.items():
        path.write_bytes(data)
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert {Path(f["path"]).name for f in report.findings} == {p.name for p in made}


class _Sought:
    """What a scan seeks, by size (as :class:`~visage_ml.rights.content_hashes.ContentHashes`)."""

    def __init__(self, *sizes: int) -> None:
        self.sizes = set(sizes)

    def may_match(self, size: int) -> bool:
        return size in self.sizes


def _found(data: bytes, png: bytes) -> bool:
    what = embedded.kind(data[: embedded.SNIFF])
    return what is not None and _sha(png) in set(embedded.inside(data, what))


def test_every_table_and_column_is_read_whatever_its_name_or_declared_type(tmp_path, proj):
    """SQLite keeps any value in any column: a BLOB in a column declared INTEGER, in a table
    named to break a query built by pasting it (``x"; DROP TABLE y; --``), in a table whose
    column names need quoting too; a zip in a BLOB; the database itself in a zip."""
    _, png, theirs = _photos(proj)
    injected = _db(
        tmp_path / "odd.db",
        ("CREATE TABLE y (v)", ()),
        # The table x"; DROP TABLE y; -- (its quote doubled, as SQL quotes it).
        ('CREATE TABLE "x""; DROP TABLE y; --" ("a""b" INTEGER, [c d] BLOB)', ()),
        ('INSERT INTO "x""; DROP TABLE y; --" VALUES (?, ?)', (png, theirs)),
    ).read_bytes()
    assert _found(injected, png)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("face.png", png)
    in_blob = _db(
        tmp_path / "zips.db",
        ("CREATE TABLE t (z BLOB)", ()),
        ("INSERT INTO t VALUES (?)", (zipped.getvalue(),)),
    ).read_bytes()
    assert _found(in_blob, png)
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("backup/faces.db", injected)
    assert _found(outer.getvalue(), png)
    # With what is sought by size: found all the same; nothing sought of that size, nothing.
    what = embedded.SQLITE
    assert _sha(png) in set(embedded.inside(injected, what, sizes=_Sought(len(png))))
    assert set(embedded.inside(injected, what, sizes=_Sought(len(png) + 1))) == set()


def test_a_large_database_is_read_from_its_file_and_left_as_it_was(tmp_path, proj, monkeypatch):
    """A database too large to hold in memory is opened read-only and immutable from its file:
    no journal, no -wal or -shm beside it, its bytes and times unchanged; a value too large to
    hold is hashed as it streams."""
    _, png, theirs = _photos(proj)
    monkeypatch.setattr(embedded, "EMBED_MAX", 1024)  # the photo's database, and the photo
    folder = tmp_path / "odd ? # % name"
    folder.mkdir()
    db = _db(
        folder / "project.db",
        ("CREATE TABLE faces (img BLOB)", ()),
        ("INSERT INTO faces VALUES (?)", (theirs,)),
        ("INSERT INTO faces VALUES (?)", (png,)),
        wal=True,
    )
    saved, mtime = db.read_bytes(), db.stat().st_mtime_ns
    (h,) = content_scan.hash_files([content_scan.Root(folder)])
    assert h.kind == embedded.SQLITE and not h.unreadable
    assert _sha(png) in h.held
    assert os.listdir(folder) == ["project.db"]
    assert db.read_bytes() == saved and db.stat().st_mtime_ns == mtime


def test_a_value_too_large_to_hold_without_a_rowid_is_not_shown_clean(tmp_path, proj, monkeypatch):
    _, png, _ = _photos(proj)
    monkeypatch.setattr(embedded, "EMBED_MAX", 1024)
    db = _db(
        tmp_path / "crops.db",
        ("CREATE TABLE crops (k TEXT PRIMARY KEY, img BLOB) WITHOUT ROWID", ()),
        ("INSERT INTO crops VALUES (?, ?)", ("k", png)),
    )
    (h,) = content_scan.hash_files([content_scan.Root(db)])
    assert h.unreadable


def _damaged(png: bytes, folder: Path) -> dict[str, bytes]:
    """Files that begin as a database does and cannot be read as one."""
    good = _db(
        folder / "good.db",
        ("CREATE TABLE faces (img BLOB)", ()),
        ("INSERT INTO faces VALUES (?)", (png,)),
    ).read_bytes()
    (folder / "good.db").unlink()
    header = b"SQLite format 3\x00"
    return {
        "header only.db": header,
        "encrypted.db": header + hashlib.sha512(b"k").digest() * 64,
        "truncated.db": good[: len(good) // 2 + 100],
        "overwritten.db": good[:1024] + bytes(len(good) - 1024),
    }


def test_a_damaged_database_is_not_shown_clean_and_the_rest_is_still_scanned(proj):
    victim, png, _ = _photos(proj)
    folder = proj.paths.root / "data" / "labelling"
    folder.mkdir(parents=True)
    bad = _damaged(png, folder)
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    copy = proj.paths.root / "data" / "interim" / "face.png"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(png)
    with pytest.raises(OSError) as stopped:
        Erasure(proj.paths).erase(victim)
    said = " ".join(str(stopped.value).split())
    assert f"{len(bad)} file(s) could not be read" in said and "database" in said, said
    assert not copy.exists()  # the rest of the project was scanned, its copy removed
    doctor = CliRunner().invoke(app, ["privacy", "doctor", "--json"])
    listed = {
        Path(f["path"]).name
        for f in json.loads(doctor.output[doctor.output.index("{") :])["findings"]
        if f["kind"] == "expands_inside"
    }
    assert listed == set(bad), doctor.output
    for name in bad:
        (folder / name).unlink()
    (done,) = Erasure(proj.paths).resume()
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert not report.ok
    whys = {Path(f["path"]).name: f["why"] for f in report.findings}
    assert set(whys) == set(bad)
    assert all(
        "database" in w and "not shown to hold no erased content" in w for w in whys.values()
    )


def test_a_virtual_table_is_read_through_the_tables_that_hold_its_rows(tmp_path, proj):
    """A full-text index (FTS5) keeps its rows in shadow tables; the virtual table itself needs
    its module, which a reader may not have."""
    _, png, _ = _photos(proj)
    try:
        db = _db(
            tmp_path / "notes.db",
            ("CREATE VIRTUAL TABLE notes USING fts5(body)", ()),
            ("INSERT INTO notes VALUES (?)", (f"face: data:image/png;base64,{_b64(png)}",)),
        )
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no FTS5")
    assert _found(db.read_bytes(), png)


def test_a_small_archive_among_short_values_is_found_by_size_sought():
    """Values shorter than anything sought are passed over in SQLite (a table of a log's hex
    ids), but not a compressed file, which may hold more than itself: a gzip in a BLOB, an xz
    or a zip base64-encoded in a TEXT, each shorter than what it holds."""
    import gzip
    import lzma

    sought = b"scan line 0000\n" * 400  # 6,000 bytes that compress to a few dozen
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("scan.txt", sought)
    small = {
        "gzip blob": gzip.compress(sought, mtime=0),
        "xz text": f"xz,{_b64(lzma.compress(sought))},end",
        "zip text": f"note: {_b64(zipped.getvalue())}",
    }
    for name, value in small.items():
        assert len(value) < len(sought), name
        con = sqlite3.connect(":memory:")
        con.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, sha TEXT, v)")
        rows = [(hashlib.sha256(bytes([i])).hexdigest(), None) for i in range(200)]
        rows.insert(100, ("x", value))
        con.executemany("INSERT INTO log (sha, v) VALUES (?, ?)", rows)
        data = con.serialize()
        found = set(embedded.inside(data, embedded.SQLITE, sizes=_Sought(len(sought))))
        assert _sha(sought) in found, name
