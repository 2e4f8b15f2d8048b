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
import struct
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from rights_fakes import make_project
from test_erasure_inside import doctor_listed, put_back_fails_the_verifier
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
    paths, output = doctor_listed("erased_inside")
    listed = {Path(p).name for p in paths}
    assert listed == {p.name for p in made}, output
    for path in made:  # the operator takes the photograph out (here: the files go)
        path.unlink()
    (done,) = Erasure(proj.paths).resume()
    assert kept.exists()
    assert verify_certificate(done.certificate_path, root=proj.paths.root).ok
    put_back_fails_the_verifier(proj, done, made)


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
    paths, output = doctor_listed("expands_inside")
    listed = {Path(p).name for p in paths}
    assert listed == set(bad), output
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


# A database in WAL mode keeps its newest pages in the -wal file beside it until a checkpoint:
# while the program writing it has it open, or for good once it was killed. Before, the scan
# opened the database immutable (which ignores the WAL) and hashed the -wal file only whole,
# the photograph split across its frames: it survived a VALID certificate.


def _live(path: Path, png: bytes, theirs: bytes) -> sqlite3.Connection:
    """A labelling tool's database with its connection still open: the table and another
    person's photo checkpointed into the file, the photograph inserted since, in the -wal only."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA page_size = 512")
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA wal_autocheckpoint = 0")
    con.execute("CREATE TABLE faces (id INTEGER PRIMARY KEY, name TEXT, img BLOB)")
    con.execute("INSERT INTO faces (name, img) VALUES (?, ?)", ("a", theirs))
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("INSERT INTO faces (name, img) VALUES (?, ?)", (NAME, png))
    return con


def _crashed(live: Path, folder: Path) -> Path:
    """The database and its -wal as a killed process leaves them (no -shm: it is rebuilt)."""
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):
        (folder / f"{live.name}{suffix}").write_bytes(Path(f"{live}{suffix}").read_bytes())
    return folder / live.name


def test_a_photograph_in_a_wal_not_checkpointed_stops_the_erasure_and_fails_the_verifier(proj):
    victim, png, theirs = _photos(proj)
    folder = proj.paths.root / "data" / "labelling"
    folder.mkdir(parents=True)
    live = folder / "project.db"
    con = _live(live, png, theirs)
    wal = Path(f"{live}-wal")
    assert png not in live.read_bytes() and png not in wal.read_bytes()  # split over frames
    crashed = _crashed(live, proj.paths.root / "data" / "backup")
    saved = {p: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(OSError) as stopped:
        Erasure(proj.paths).erase(victim)
    said = " ".join(str(stopped.value).split())
    # Each database, and each -wal (which holds it, read with its database).
    assert "4 file(s) hold erased content inside" in said and NAME not in said, said
    assert {p: p.read_bytes() for p in folder.iterdir()} == saved  # nothing written beside
    paths, output = doctor_listed("erased_inside")
    listed = set(paths)
    assert listed == {
        "data/labelling/project.db",
        "data/labelling/project.db-wal",
        "data/backup/project.db",
        "data/backup/project.db-wal",
    }, output
    # The tool takes the photograph out (its row, then VACUUM); the copy left by the crash goes.
    con.execute("DELETE FROM faces WHERE name = ?", (NAME,))
    con.execute("VACUUM")
    left = {p: p.read_bytes() for p in crashed.parent.iterdir()}
    for p in left:
        p.unlink()
    # The -wal's frames of the INSERT, which the VACUUM's supersede, still hold the photograph
    # until a checkpoint (as the message says).
    with pytest.raises(OSError, match="deleted rows still in their freed space"):
        Erasure(proj.paths).resume()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (done,) = Erasure(proj.paths).resume()
    assert verify_certificate(done.certificate_path, root=proj.paths.root).ok
    con.close()
    for p, data in left.items():  # the crashed copy comes back
        p.write_bytes(data)
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert {Path(f["path"]).name for f in report.findings} == {"project.db", "project.db-wal"}
    assert all(str(crashed.parent) in f["path"] for f in report.findings)


def _scanned(folder: Path) -> dict[str, content_scan.Hashed]:
    return {h.path.name: h for h in content_scan.hash_files([content_scan.Root(folder)])}


def test_a_wal_file_alone_is_read_as_its_frames_or_not_shown_clean(tmp_path, proj):
    """Its database deleted, or renamed (SQLite pairs them by name): the -wal alone is laid over
    an empty database. One that holds the schema's page (a database made in WAL mode and never
    checkpointed) is read; one that does not (the photograph written into a row made before, as
    a tool filling a zeroblob does) cannot be: not shown clean."""
    _, png, _ = _photos(proj)
    made = tmp_path / "made"
    made.mkdir()
    con = sqlite3.connect(made / "new.db", isolation_level=None)
    con.execute("PRAGMA page_size = 512")
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA wal_autocheckpoint = 0")
    con.execute("CREATE TABLE faces (img BLOB)")
    con.execute("INSERT INTO faces VALUES (?)", (png,))
    filled = sqlite3.connect(made / "filled.db", isolation_level=None)
    filled.execute("PRAGMA page_size = 512")
    filled.execute("PRAGMA journal_mode = WAL")
    filled.execute("PRAGMA wal_autocheckpoint = 0")
    filled.execute("CREATE TABLE faces (img BLOB)")
    filled.execute("INSERT INTO faces VALUES (zeroblob(?))", (len(png),))
    filled.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with filled.blobopen("faces", "img", 1) as blob:
        blob.write(png)
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("new.db-wal", "filled.db-wal"):
        (alone / name).write_bytes((made / name).read_bytes())
    # Renamed: the database no longer pairs with its -wal, which is then alone too.
    (alone / "renamed.db").write_bytes((made / "filled.db").read_bytes())
    (alone / "filled.db-wal").rename(alone / "renamed-before.db-wal")
    con.close()
    filled.close()
    h = _scanned(alone)
    assert h["new.db-wal"].kind == embedded.SQLITE and _sha(png) in h["new.db-wal"].held
    assert h["renamed-before.db-wal"].unreadable
    assert not h["renamed.db"].unreadable and _sha(png) not in h["renamed.db"].held
    # In memory (a -wal committed to git, in an archive): the same.
    assert _found((alone / "new.db-wal").read_bytes(), png)
    with pytest.raises(embedded.TooLarge):
        _found((alone / "renamed-before.db-wal").read_bytes(), png)
    # Nothing of another person's is shown by a -wal of no commit (a header only): clean.
    header = (alone / "new.db-wal").read_bytes()[:32]
    assert set(embedded.inside(header, embedded.SQLITE)) == set()


def _rows(db: Path) -> list[bytes]:
    """What SQLite itself reads of a copy of ``db`` and its -wal (recovering the WAL)."""
    with sqlite3.connect(db) as con:
        rows = [r[0] for r in con.execute("SELECT img FROM faces ORDER BY rowid")]
    con.close()
    return rows


def _wal_checksum(data: bytes, s0: int, s1: int, order: str) -> tuple[int, int]:
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) % 2**32
        s1 = (s1 + words[i + 1] + s0) % 2**32
    return s0, s1


def _big_endian(wal: bytes, page_size: int) -> bytes:
    """``wal`` as a big-endian machine writes it: magic 0x377f0683, checksums of big-endian
    words (re-chained from the header through every frame)."""
    out = bytearray(wal)
    out[3] = 0x83
    s = _wal_checksum(bytes(out[:24]), 0, 0, ">")
    out[24:32] = struct.pack(">2I", *s)
    for at in range(32, len(out) - 24 - page_size + 1, 24 + page_size):
        s = _wal_checksum(bytes(out[at : at + 8] + out[at + 24 : at + 24 + page_size]), *s, ">")
        out[at + 16 : at + 24] = struct.pack(">2I", *s)
    return bytes(out)


def test_the_wal_frames_read_are_those_sqlite_applies(tmp_path, proj):
    """Against SQLite itself, on copies: the committed frames, checksum and salts checked, in
    either byte order; a frame torn by a crash, one of a transaction not committed, one
    damaged, one from before the WAL was reset are not applied, by SQLite nor here."""
    from visage_ml.rights import embedded_db

    _, png, theirs = _photos(proj)
    folder = tmp_path / "live"
    folder.mkdir()
    con = _live(folder / "project.db", png, theirs)
    con.execute("PRAGMA cache_size = 1")  # spill: frames of a transaction not yet committed
    con.execute("BEGIN")
    con.execute("INSERT INTO faces (name, img) VALUES (?, ?)", ("c", theirs[::-1] * 3))
    db = (folder / "project.db").read_bytes()
    wal = (folder / "project.db-wal").read_bytes()
    con.execute("ROLLBACK")
    con.close()
    found = embedded_db.committed(wal)
    assert found is not None and found.page_size == 512
    frame = 24 + 512
    n = (len(wal) - 32) // frame
    (after,) = struct.unpack_from(">I", wal, 32 + frame * (n - 1) + 4)
    assert after == 0  # the last frame is of the transaction not committed, spilled
    commit_end = 32 + frame * max((at - 24 - 32) // frame + 1 for at in found.pages.values())
    damaged = bytearray(wal)
    damaged[commit_end - 100] ^= 0xFF  # inside the last committed frame's page
    reset = bytearray(wal)
    reset[16] ^= 0x01  # salt-1 of the header: every frame is of an earlier WAL
    cases = {
        "intact": wal,
        "big-endian": _big_endian(wal, 512),
        "torn": wal[: commit_end - 7],
        "uncommitted tail": wal[: commit_end + frame],
        "damaged": bytes(damaged),
        "reset": bytes(reset),
    }
    expected_png = {"intact": True, "big-endian": True, "uncommitted tail": True}
    for name, frames in cases.items():
        copy = tmp_path / name / "project.db"
        copy.parent.mkdir()
        copy.write_bytes(db)
        Path(f"{copy}-wal").write_bytes(frames)
        scanned = _scanned(copy.parent)
        held = {d for h in scanned.values() for d in h.held}
        rows = _rows(copy)  # SQLite's own reading (it checkpoints the copy as it closes)
        assert (png in rows) == expected_png.get(name, False), name
        if png not in rows:
            # Its frames, which SQLite does not apply, are still in the -wal file, where a
            # carving tool reads the photograph: not shown clean (until a checkpoint).
            assert scanned["project.db"].unreadable, name
            continue
        assert (_sha(png) in held) == (png in rows), name
        assert _sha(theirs) in held and theirs in rows, name


def test_a_database_too_large_to_read_with_its_wal_is_not_shown_clean_until_checkpointed(
    proj, monkeypatch
):
    """The two too large to hold together: while the -wal adds pages the database lacks, not
    shown clean, and the verifier says to checkpoint it; once checkpointed (the -wal still
    there, its frames copied in, none of them older ones holding the photograph), the database
    is read from its file."""
    victim, png, theirs = _photos(proj)
    folder = proj.paths.root / "data" / "labelling"
    folder.mkdir(parents=True)
    live = folder / "project.db"
    con = _live(live, png, theirs)
    con.execute("DELETE FROM faces WHERE name = ?", (NAME,))  # not the photograph: another's
    con.execute("INSERT INTO faces (name, img) VALUES (?, ?)", ("b", theirs[::-1]))
    monkeypatch.setattr(embedded, "EMBED_MAX", 1024)
    h = _scanned(folder)
    assert h["project.db"].unreadable and h["project.db-wal"].unreadable
    with pytest.raises(OSError) as stopped:
        Erasure(proj.paths).erase(victim)
    said = " ".join(str(stopped.value).split())
    assert "2 file(s) could not be read" in said and "wal_checkpoint(TRUNCATE)" in said, said
    doctor = CliRunner().invoke(app, ["privacy", "doctor"])
    assert "expands_inside" in doctor.output and "wal_checkpoint(TRUNCATE)" in doctor.output
    con.execute("PRAGMA wal_checkpoint(PASSIVE)")  # copied in; the -wal stays, as it was
    assert Path(f"{live}-wal").stat().st_size > 0
    # Its frames of the photograph's INSERT, which SQLite no longer applies, still hold it.
    assert _scanned(folder)["project.db"].unreadable
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("INSERT INTO faces (name, img) VALUES (?, ?)", ("c", theirs[::-1]))
    con.execute("PRAGMA wal_checkpoint(PASSIVE)")  # copied in; the -wal stays, as it was
    assert Path(f"{live}-wal").stat().st_size > 0
    h = _scanned(folder)
    assert not h["project.db"].unreadable and _sha(theirs[::-1]) in h["project.db"].held
    (done,) = Erasure(proj.paths).resume()
    con.execute("INSERT INTO faces (name, img) VALUES (?, ?)", (NAME, png))  # back, in the -wal
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert not report.ok
    whys = {Path(f["path"]).name: f["why"] for f in report.findings}
    assert set(whys) == {"project.db", "project.db-wal"}, whys
    assert all("wal_checkpoint(TRUNCATE)" in w for w in whys.values()), whys
    con.close()


def test_a_large_database_whose_wal_is_checkpointed_but_holds_older_frames_stops_it(
    tmp_path, proj, monkeypatch
):
    """Too large to hold with its -wal, a database whose -wal's committed pages are all copied
    in (a passive checkpoint, as SQLite's automatic ones are: the -wal is not emptied) was read
    from its file alone. The -wal's frames SQLite no longer applies (the INSERT's, before the
    DELETE's) still hold the photograph, which a carving tool reads there: shown clean, where
    the same files held together are not."""
    _, png, theirs = _photos(proj)
    live = tmp_path / "live" / "project.db"
    live.parent.mkdir()
    con = _live(live, png, theirs)  # the photograph in the -wal's frames
    con.execute("PRAGMA secure_delete = ON")
    con.execute("DELETE FROM faces WHERE name = ?", (NAME,))
    con.execute("PRAGMA wal_checkpoint(PASSIVE)")  # copied in; the -wal stays, as it was
    wal = Path(f"{live}-wal").read_bytes()
    pieces = [png[i : i + 64] for i in range(64, len(png) - 64, 64)]  # its data, not header
    assert sum(p in wal for p in pieces) > len(pieces) // 2  # carved from the -wal
    assert not any(p in live.read_bytes() for p in pieces)
    assert _scanned(live.parent)["project.db"].unreadable  # held together: not shown clean
    monkeypatch.setattr(embedded, "EMBED_MAX", 1024)
    assert _scanned(live.parent)["project.db"].unreadable
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert not _scanned(live.parent)["project.db"].unreadable
    con.close()


# A database in rollback-journal mode (SQLite's default) with a hot -journal beside it, as a
# crash in the middle of a transaction leaves them: SQLite lays the journal's pages back over
# the database at its next open. Before, the scan read the database alone (immutable, which
# ignores the journal): the photograph's row, deleted by the transaction the crash interrupted,
# was not looked for where SQLite brings it back from.


def _interrupted(folder: Path, png: bytes, theirs: bytes) -> dict[str, bytes]:
    """A database and its -journal copied while a transaction deleting the photograph's row is
    open (its pages spilled into the database), as a crash leaves them."""
    folder.mkdir(parents=True, exist_ok=True)
    live = folder / "live.db"
    con = sqlite3.connect(live, isolation_level=None)
    con.execute("PRAGMA page_size = 512")
    con.execute("PRAGMA secure_delete = ON")  # freed pages zeroed: no photo left in them
    con.execute("CREATE TABLE faces (id INTEGER PRIMARY KEY, name TEXT, img BLOB)")
    con.execute("INSERT INTO faces (name, img) VALUES (?, ?)", ("a", theirs))
    con.execute("INSERT INTO faces (name, img) VALUES (?, ?)", (NAME, png))
    con.execute("PRAGMA cache_size = 1")  # spill: pages written before the commit
    con.execute("BEGIN")
    con.execute("DELETE FROM faces WHERE name = ?", (NAME,))
    con.execute("INSERT INTO faces (name, img) VALUES (?, ?)", ("c", theirs[::-1] * 3))
    made = {"": live.read_bytes(), "-journal": Path(f"{live}-journal").read_bytes()}
    con.execute("ROLLBACK")
    con.close()
    live.unlink()
    return made


def _at_commit(png: bytes, theirs: bytes, tmp: Path) -> dict[str, bytes]:
    """A database whose transaction deleting the photograph's row wrote every page, and its
    -journal, as a crash before the journal is deleted leaves them (made as SQLite writes one:
    a record of each page as it was, checked against SQLite itself by the caller)."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = _db(
        tmp / "made.db",
        ("PRAGMA secure_delete = ON", ()),
        ("CREATE TABLE faces (id INTEGER PRIMARY KEY, name TEXT, img BLOB)", ()),
        ("INSERT INTO faces (name, img) VALUES (?, ?)", ("a", theirs)),
        ("INSERT INTO faces (name, img) VALUES (?, ?)", (NAME, png)),
    )
    before = path.read_bytes()
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA secure_delete = ON")
        con.execute("DELETE FROM faces WHERE name = ?", (NAME,))
    con.close()
    after = path.read_bytes()
    ps, nonce = 512, 0x1234ABCD
    changed = [
        n
        for n in range(len(before) // ps)
        if before[n * ps : (n + 1) * ps] != after[n * ps : (n + 1) * ps]
    ]
    header = b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7" + struct.pack(
        ">5I", len(changed), nonce, len(before) // ps, 512, ps
    )
    journal = bytearray(header.ljust(512, b"\0"))
    for n in changed:
        page = before[n * ps : (n + 1) * ps]
        check = (nonce + sum(page[ps - 200 : 0 : -200])) % 2**32
        journal += struct.pack(">I", n + 1) + page + struct.pack(">I", check)
    assert png not in after and png not in journal  # split over pages
    return {"": after, "-journal": bytes(journal)}


def _names(db: Path) -> list[str]:
    """What SQLite itself reads of a copy of ``db`` (playing its hot journal back)."""
    with sqlite3.connect(db) as con:
        names = [r[0] for r in con.execute("SELECT name FROM faces ORDER BY rowid")]
    con.close()
    return names


def test_a_hot_journal_is_read_with_its_database_as_sqlite_plays_it_back(tmp_path, proj):
    _, png, theirs = _photos(proj)
    spilled = _interrupted(tmp_path / "live", png, theirs)
    committed = _at_commit(png, theirs, tmp_path / "made")
    j = committed["-journal"]
    damaged = bytearray(j)
    damaged[512 + 4 + 312] ^= 0xFF  # a sampled byte of the first record: its checksum fails
    cases = {
        "spilled": (spilled, True),
        "at commit": (committed, True),
        # PERSIST's committed journal: its header zeroed, not played back.
        "header zeroed": ({**committed, "-journal": bytes(28) + j[28:]}, False),
        "damaged": ({**committed, "-journal": bytes(damaged)}, False),
    }
    for name, (files, back) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        for suffix, data in files.items():
            (folder / f"crashed.db{suffix}").write_bytes(data)
        h = _scanned(folder)
        listing = sorted(os.listdir(folder))
        assert listing == ["crashed.db", "crashed.db-journal"]  # nothing written beside
        assert not h["crashed.db"].unreadable, name
        assert (_sha(png) in h["crashed.db"].held) is back, name
        assert _sha(theirs) in h["crashed.db"].held, name
        # In memory too (a database and its journal read together as bytes).
        from visage_ml.rights import embedded_db

        data = embedded_db.rolled_back(files[""], files["-journal"])
        assert (_sha(png) in set(embedded.inside(data, embedded.SQLITE))) is back, name
        assert (NAME in _names(folder / "crashed.db")) is back, name  # SQLite's own reading


def test_a_hot_journal_stops_the_erasure_and_fails_the_verifier(proj):
    victim, png, theirs = _photos(proj)
    folder = proj.paths.root / "data" / "backup"
    made = _at_commit(png, theirs, proj.paths.root.parent / "made")
    folder.mkdir(parents=True)
    for suffix, data in made.items():
        (folder / f"project.db{suffix}").write_bytes(data)
    with pytest.raises(OSError) as stopped:
        Erasure(proj.paths).erase(victim)
    said = " ".join(str(stopped.value).split())
    assert "file(s) hold erased content inside" in said and NAME not in said, said
    assert sorted(os.listdir(folder)) == ["project.db", "project.db-journal"]  # not played back
    assert {s: (folder / f"project.db{s}").read_bytes() for s in made} == made
    paths, output = doctor_listed("erased_inside")
    listed = set(paths)
    assert "data/backup/project.db" in listed, output
    (folder / "project.db-journal").unlink()  # the database alone holds no photograph
    (done,) = Erasure(proj.paths).resume()
    assert verify_certificate(done.certificate_path, root=proj.paths.root).ok
    (folder / "project.db-journal").write_bytes(made["-journal"])
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert "project.db" in {Path(f["path"]).name for f in report.findings}


def test_a_journal_alone_or_too_large_to_read_with_its_database_is_not_shown_clean(
    tmp_path, proj, monkeypatch
):
    from visage_ml.rights import embedded_db

    _, png, theirs = _photos(proj)
    made = _at_commit(png, theirs, tmp_path / "made")
    folder = tmp_path / "pair"
    folder.mkdir()
    for suffix, data in made.items():
        (folder / f"project.db{suffix}").write_bytes(data)
    # Its database gone: the journal's pages laid over an empty database, read or not shown clean.
    alone = tmp_path / "alone" / "gone.db-journal"
    alone.parent.mkdir()
    alone.write_bytes(made["-journal"])
    try:
        shown = _sha(png) in set(embedded_db.inside_path(alone))
    except embedded.TooLarge:
        shown = True  # not shown clean
    assert shown
    # Too large to hold with its database: not shown clean while it restores pages the
    # database lacks.
    monkeypatch.setattr(embedded, "EMBED_MAX", 1024)
    with pytest.raises(embedded.TooLarge):
        set(embedded_db.inside_path(folder / "project.db"))
    assert _scanned(folder)["project.db"].unreadable
    # Its pages all in the database as they are (no page written yet): the database is read.
    (folder / "project.db").write_bytes(embedded_db.rolled_back(made[""], made["-journal"]))
    assert _sha(png) in set(embedded_db.inside_path(folder / "project.db"))


def test_a_journal_alone_is_read_by_the_walk_not_passed_over_as_an_unknown_file(tmp_path, proj):
    """A hot -journal whose database was deleted or renamed, found by the walk (no database beside
    it to pair with): told by its first bytes, so read as its pages over an empty database, never
    passed over as a file of unknown kind."""
    _, png, theirs = _photos(proj)
    made = _at_commit(png, theirs, tmp_path / "made")
    folder = tmp_path / "alone"
    folder.mkdir()
    (folder / "gone.db-journal").write_bytes(made["-journal"])
    (folder / "renamed.bin").write_bytes(made["-journal"])  # a name that says nothing
    scanned = _scanned(folder)
    for name in ("gone.db-journal", "renamed.bin"):
        h = scanned[name]
        assert _sha(png) in h.held or h.unreadable or h.expands, name


def test_a_database_too_large_to_hold_inside_an_archive_or_spilled_is_read(
    tmp_path, proj, monkeypatch
):
    """A database over EMBED_MAX inside a zip (or a git blob, a remote's object: spilled to an
    unnamed file, as an archive's member is) is read from that file, not passed over: it has no
    name to open, and was only hashed, the photograph in it shown clean."""
    import tempfile

    _, png, theirs = _photos(proj)
    db = tmp_path / "labels.db"
    _db(
        db,
        ("CREATE TABLE faces (id INTEGER PRIMARY KEY, img BLOB)", ()),
        ("INSERT INTO faces (img) VALUES (?)", (theirs,)),
        ("INSERT INTO faces (img) VALUES (?)", (png,)),
        ("INSERT INTO faces (img) VALUES (?)", (os.urandom(40_000),)),
    )
    data = db.read_bytes()
    monkeypatch.setattr(embedded, "EMBED_MAX", 16 << 10)
    assert len(data) > embedded.EMBED_MAX
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("export/labels.db", data)
    assert _sha(png) in set(embedded.inside(out.getvalue(), embedded.ZIP))
    with tempfile.TemporaryFile() as spilled:  # as content_scan spills a blob or an object
        spilled.write(data)
        spilled.seek(0)
        assert _sha(png) in set(embedded.inside_large(spilled, embedded.SQLITE))


def _jpeg(png: bytes, side: int = 200) -> bytes:
    """The photograph as a JPEG larger than a page (a camera's, a crop's upscaled)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").resize((side, side)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _deleted(
    path: Path, tables: dict[str, list[tuple[str, bytes | str]]], *, secure_delete: bool = False
) -> Path:
    """A database whose rows of ``NAME`` were deleted as a data scientist deletes them: a
    DELETE, no VACUUM. SQLite's default is ``secure_delete`` off (some distributions build it
    on: set here, so that the file is as most users' SQLite leaves it)."""
    statements: list[tuple[str, tuple]] = [
        (f"PRAGMA secure_delete = {'ON' if secure_delete else 'OFF'}", ())
    ]
    for table, rows in tables.items():  # the test's own table names
        statements.append((f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT, v BLOB)", ()))
        insert = f"INSERT INTO {table} (name, v) VALUES (?, ?)"  # noqa: S608
        statements += [(insert, row) for row in rows]
        statements.append((f"DELETE FROM {table} WHERE name = ?", (NAME,)))  # noqa: S608
    return _db(path, *statements, page_size=8192)


def _doctor(kind: str) -> tuple[set[str], str]:
    doctor = CliRunner().invoke(app, ["privacy", "doctor", "--json"])
    report = json.loads(doctor.output[doctor.output.index("{") :])
    listed = {Path(f["path"]).name for f in report["findings"] if f["kind"] == kind}
    return listed, report.get("what_to_do", {}).get(kind, "")


def test_a_photograph_deleted_from_a_table_but_left_in_freed_space_stops_the_erasure(proj):
    """``DELETE FROM images WHERE ...`` without ``VACUUM`` leaves the rows' bytes in the file
    (a freed cell of the leaf page, overflow pages on the freelist), where any forensic tool
    reads them. No table holds them: the erasure certified and the verifier agreed."""
    victim, png, theirs = _photos(proj)
    jpeg = _jpeg(png)
    assert len(png) < 8192 < len(jpeg)  # one under a page, one over
    folder = proj.paths.root / "data" / "labelling"
    folder.mkdir(parents=True)
    # Other people's rows share each photograph's leaf page, which stays as it is (a page left
    # less than a third full is rebuilt with its neighbours, its freed space with it).
    db = _deleted(
        folder / "project.db",
        {
            "images": [("a", theirs), ("b", theirs[::-1]), (NAME, png)],
            "crops": [("c", theirs), (NAME, jpeg)],
        },
    )
    saved = db.read_bytes()
    # Carved without SQLite: the PNG whole, the JPEG's overflow pages on the freelist.
    assert png in saved and jpeg[-2000:-1000] in saved
    with sqlite3.connect(db) as con:  # SQLite's own reading: the rows are gone
        for table in ("images", "crops"):
            left = f"SELECT count(*) FROM {table} WHERE name = ?"  # noqa: S608
            assert con.execute(left, (NAME,)).fetchone() == (0,)
    con.close()
    with pytest.raises(OSError) as stopped:
        Erasure(proj.paths).erase(victim)
    said = " ".join(str(stopped.value).split())
    assert "1 file(s) could not be read" in said, said
    assert "deleted rows still in their freed space" in said and "VACUUM" in said, said
    assert db.read_bytes() == saved  # looked at, not written
    listed, todo = _doctor("expands_inside")
    assert listed == {"project.db"}
    assert "VACUUM" in todo and "secure_delete" in todo, todo
    with sqlite3.connect(db) as con:  # the data scientist runs VACUUM
        con.execute("VACUUM")
    con.close()
    assert png not in db.read_bytes()
    (done,) = Erasure(proj.paths).resume()
    assert verify_certificate(done.certificate_path, root=proj.paths.root).ok
    db.write_bytes(saved)  # the file as it was (a copy put back)
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert not report.ok
    (finding,) = report.findings
    assert Path(finding["path"]).name == "project.db" and "VACUUM" in finding["why"], finding


def test_freed_space_zeroed_or_holding_no_image_start_is_no_alarm(proj):
    """``PRAGMA secure_delete`` before the DELETE zeroes what it frees; deleted rows of text
    leave nothing that begins a photograph: neither database stops the erasure."""
    victim, png, theirs = _photos(proj)
    folder = proj.paths.root / "data" / "labelling"
    folder.mkdir(parents=True)
    secure = _deleted(
        folder / "secure.db",
        {
            "images": [("a", theirs), ("b", theirs[::-1]), (NAME, png)],
            "crops": [("c", theirs), (NAME, _jpeg(png))],
        },
        secure_delete=True,
    )
    text = _deleted(
        folder / "notes.db",
        {"notes": [("a", "a note " * 600), (NAME, f"{NAME} asked to be forgotten " * 100)]},
    )
    assert png not in secure.read_bytes()
    assert f"{NAME} asked".encode() in text.read_bytes()  # deleted, still in the file
    result = Erasure(proj.paths).erase(victim)
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
    assert secure.exists() and text.exists()


def test_freed_space_is_read_in_a_large_database_and_in_a_wal_not_checkpointed(
    tmp_path, proj, monkeypatch
):
    """The freed space of each page as SQLite reads it: a database too large to hold, read
    from its file; a DELETE committed in the -wal only (the page's newest version)."""
    _, png, theirs = _photos(proj)
    (tmp_path / "jpeg").mkdir()
    over_a_page = _deleted(
        tmp_path / "jpeg" / "project.db", {"crops": [("c", theirs), (NAME, _jpeg(png))]}
    )
    (h,) = content_scan.hash_files([content_scan.Root(over_a_page)])
    assert h.unreadable
    (tmp_path / "large").mkdir()
    large = _deleted(
        tmp_path / "large" / "project.db", {"images": [("a", theirs), ("b", theirs), (NAME, png)]}
    )
    live = tmp_path / "live" / "project.db"
    live.parent.mkdir()
    con = _live(live, png, theirs)
    con.execute("PRAGMA secure_delete = OFF")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the photograph's row in the file
    con.execute("DELETE FROM faces WHERE name = ?", (NAME,))  # its deletion in the -wal only
    assert Path(f"{live}-wal").stat().st_size > 0
    scanned = _scanned(live.parent)
    assert scanned["project.db"].unreadable and scanned["project.db-wal"].unreadable
    con.execute("VACUUM")
    con.close()
    assert not any(h.unreadable for h in _scanned(live.parent).values())
    monkeypatch.setattr(embedded, "EMBED_MAX", 1024)
    (h,) = content_scan.hash_files([content_scan.Root(large)])
    assert h.unreadable


def test_a_photograph_deleted_securely_in_a_wal_still_in_the_page_it_supersedes_stops_it(
    tmp_path, proj
):
    """With ``secure_delete`` on, a DELETE zeroes the row in the page's new version, in the
    -wal; until a checkpoint, the database file's own version of that page (and an earlier frame
    of it in the -wal) still holds the photograph, which a carving tool reads there. SQLite's
    reading, and the freed space of the pages it reads, showed nothing: it was shown clean."""
    _, png, theirs = _photos(proj)
    checkpointed = tmp_path / "file" / "project.db"
    checkpointed.parent.mkdir()
    con = _live(checkpointed, png, theirs)
    con.execute("PRAGMA secure_delete = ON")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the photograph's row in the file
    con.execute("DELETE FROM faces WHERE name = ?", (NAME,))  # zeroed, in the -wal only
    assert png[-400:] in checkpointed.read_bytes()  # carved from the file
    scanned = _scanned(checkpointed.parent)
    assert scanned["project.db"].unreadable
    con.close()  # the last connection checkpoints the -wal over the file
    assert png[-400:] not in checkpointed.read_bytes()
    assert not any(h.unreadable for h in _scanned(checkpointed.parent).values())
    in_wal = tmp_path / "wal" / "project.db"
    in_wal.parent.mkdir()
    con = _live(in_wal, png, theirs)  # the photograph in the -wal's frames only
    con.execute("PRAGMA secure_delete = ON")
    con.execute("DELETE FROM faces WHERE name = ?", (NAME,))  # newer frames, zeroed
    scanned = _scanned(in_wal.parent)
    assert scanned["project.db"].unreadable
    con.close()


def test_a_page_the_wal_supersedes_whose_photograph_is_still_live_is_no_alarm(tmp_path, proj):
    """The -wal's newer version of a page where the photograph's row is unchanged (another row
    of the page changed, or the row moved): the photograph is in the database as SQLite reads
    it, found there, and nothing stops on the older version."""
    _, png, theirs = _photos(proj)
    live = tmp_path / "live" / "project.db"
    live.parent.mkdir()
    con = _live(live, png, theirs)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # both rows in the file
    con.execute("UPDATE faces SET name = ? WHERE name = ?", ("b", "a"))  # the page, again
    con.execute("INSERT INTO faces (name, img) VALUES (?, ?)", ("c", theirs[::-1]))
    assert Path(f"{live}-wal").stat().st_size > 0
    scanned = _scanned(live.parent)["project.db"]
    assert not scanned.unreadable
    assert _sha(png) in scanned.held
    con.close()
    # A column after the photograph's written longer: the row's payload kept on the page ends
    # elsewhere, the photograph's bytes the same.
    page_size = 512
    labelled = tmp_path / "labelled" / "project.db"
    labelled.parent.mkdir()
    con = sqlite3.connect(labelled, isolation_level=None)
    con.execute(f"PRAGMA page_size = {page_size}")
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA wal_autocheckpoint = 0")
    con.execute("CREATE TABLE crops (id INTEGER PRIMARY KEY, img BLOB, label TEXT)")
    for i, blob in enumerate((png, theirs)):
        con.execute("INSERT INTO crops (img, label) VALUES (?, ?)", (blob, f"l{i}"))
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    # The part of the payload kept on a page is sized from the whole row's: it ends at another
    # place after each (39 to 477 bytes in, on pages of 512).
    for width in (250, 120, 60, 10):
        con.execute("UPDATE crops SET label = ?", ("x" * width,))
        scanned = _scanned(labelled.parent)["project.db"]
        assert not scanned.unreadable, width
        assert _sha(png) in scanned.held
    # Here the page keeps 33 bytes of the photograph, what every PNG of its size begins with:
    # too few to tell it from a deleted one, so not shown clean until a checkpoint.
    con.execute("UPDATE crops SET label = ?", ("x" * 400,))
    assert _scanned(labelled.parent)["project.db"].unreadable
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert not _scanned(labelled.parent)["project.db"].unreadable
    con.close()


def test_a_photograph_deleted_securely_whose_cell_kept_few_of_its_bytes_still_stops_it(
    tmp_path, proj
):
    """A row whose other column is long keeps only the first 33 bytes of its photograph on its
    page (the rest on overflow pages), what every PNG of its size begins with. Deleted with
    ``secure_delete`` on, the database file's own pages still hold it whole until a checkpoint;
    another person's live PNG of the same size began with those 33 bytes, and vouched for the
    deleted one: shown clean while the file held the photograph."""
    _, png, theirs = _photos(proj)
    assert png[:33] == theirs[:33]  # of one size: the same first 33 bytes
    db = tmp_path / "labelled" / "project.db"
    db.parent.mkdir()
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA page_size = 512")
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA wal_autocheckpoint = 0")
    con.execute("CREATE TABLE crops (id INTEGER PRIMARY KEY, name TEXT, img BLOB, label TEXT)")
    con.execute("INSERT INTO crops (name, img, label) VALUES (?, ?, ?)", (NAME, png, "x" * 400))
    con.execute("INSERT INTO crops (name, img, label) VALUES (?, ?, ?)", ("a", theirs, "l"))
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # both rows in the file
    con.execute("PRAGMA secure_delete = ON")
    con.execute("DELETE FROM crops WHERE name = ?", (NAME,))  # zeroed, in the -wal only
    # Its first overflow page, in the file (a page SQLite no longer reads): carved from it.
    assert png[40:500] in db.read_bytes()
    scanned = _scanned(db.parent)["project.db"]
    assert scanned.unreadable
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert png[40:500] not in db.read_bytes()
    scanned = _scanned(db.parent)["project.db"]
    assert not scanned.unreadable
    assert _sha(theirs) in scanned.held
    con.close()


def test_a_photograph_deleted_then_vacuumed_on_pages_past_the_wal_commit_stops_it(tmp_path, proj):
    """``secure_delete`` off (SQLite's default), a long note before the photograph (its start on
    an overflow page, put on the freelist by the DELETE as it is, not written), then a VACUUM:
    the database shrinks, and the pages past its new end, the INSERT's frames in the -wal or the
    database file's own pages, are in no table and written by no later frame. SQLite reads
    none of them; the -wal, or the file, holds the photograph whole until a checkpoint, which
    a carving tool reads there. Neither was read: shown clean."""
    _, png, theirs = _photos(proj)
    for checkpointed in (False, True):
        db = tmp_path / str(checkpointed) / "project.db"
        db.parent.mkdir()
        con = sqlite3.connect(db, isolation_level=None)
        con.execute("PRAGMA page_size = 512")
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA wal_autocheckpoint = 0")
        con.execute("PRAGMA secure_delete = OFF")
        con.execute("CREATE TABLE faces (id INTEGER PRIMARY KEY, name TEXT, note TEXT, img BLOB)")
        con.execute("INSERT INTO faces (name, note, img) VALUES (?, ?, ?)", ("a", "", theirs))
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("INSERT INTO faces (name, note, img) VALUES (?, ?, ?)", (NAME, "x" * 1200, png))
        if checkpointed:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the photograph in the file
        con.execute("DELETE FROM faces WHERE name = ?", (NAME,))
        con.execute("VACUUM")
        left = (db if checkpointed else Path(f"{db}-wal")).read_bytes()
        assert png[:64] in left, checkpointed  # carved from it
        assert png not in _rows(_crashed(db, tmp_path / f"copy{checkpointed}"))
        assert _scanned(db.parent)["project.db"].unreadable, checkpointed
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert png[:64] not in db.read_bytes()
        assert not _scanned(db.parent)["project.db"].unreadable
        con.close()


def test_a_wal_crafted_with_a_photograph_start_every_few_bytes_is_not_shown_clean(monkeypatch):
    """Pages SQLite no longer reads, each byte range a PNG's start, the database as read holding
    every one too: past a bound, not compared window by window (gigabytes of them for a 64 MiB
    file) but not shown clean."""
    from visage_ml.rights import embedded_db

    ps, start = 512, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    page = bytearray(ps)
    for at in range(0, ps - 32, 32):
        page[at : at + len(start) + 1] = start + bytes((at // 32,))  # of ps bytes still
    header = struct.pack(">8I", 0x377F0682, 3007000, ps, 0, 1, 2, 0, 0)
    # Frames of pages 2 to 4 that SQLite does not apply (no commit, no checksum); not page 1,
    # whose page header at 100 would make it a b-tree page whose cells cut some windows short.
    wal = header + b"".join(struct.pack(">I", n) + bytes(20) + page for n in (2, 3, 4))
    assert len(page) == ps
    image = bytes(ps) + bytes(page) * 3
    assert not embedded_db.superseded(b"", wal, image)  # each in the database as read
    monkeypatch.setattr(embedded_db, "SUPERSEDED_MAX", 10)
    assert embedded_db.superseded(b"", wal, image)


def test_a_wal_crafted_with_windows_of_every_length_takes_memory_its_size_warrants():
    """Frames SQLite does not apply whose zip magics' windows are of every length from 64 to
    256 (each cut at its page's end), beside a database of distinct magics, each under the
    bound of 100,000: each live window was digested at every one of those lengths and the
    digests kept, 193 to a window. A 35 kB pair held 75 MB; one of the bound's size (under
    1 MB) about 2 GB, with a minute of CPU."""
    import tracemalloc

    from visage_ml.rights import embedded_db

    ps, magic, n = 512, b"PK\x03\x04", 4000
    signs = b"".join(magic + struct.pack(">I", i) for i in range(n))
    image = bytes(ps) + signs + bytes(-len(signs) % ps)  # page 1 none, then pages of magics
    frames = []
    for k in range(4):  # magics at 256 + k, 260 + k, ... 448 + k: windows 256 - k down to 64 - k
        page = bytearray(ps)
        for at in range(256 + k, ps - 60, 4):
            page[at : at + 4] = magic
        frames.append(struct.pack(">I", 2 + k) + bytes(20) + bytes(page))
    header = struct.pack(">8I", 0x377F0682, 3007000, ps, 0, 1, 2, 0, 0)
    wal = header + b"".join(frames)  # no commit: none applied
    tracemalloc.start()
    try:
        assert embedded_db.superseded(b"", wal, image)  # magics the database does not hold
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak


def test_freeblocks_crafted_to_overlap_are_read_once_not_once_each(tmp_path, monkeypatch):
    """A page's freeblocks (ascending, as SQLite's rule wants) each claiming the rest of the
    page: each read to the page's end made a 64 kB page 16,000 reads of up to 64 kB (six
    seconds a page; a 10 MB file, a quarter of an hour), before SQLite ever opened it. What is
    searched stays within the file's size, twice (a page's gap and its freeblocks)."""
    from visage_ml.rights import embedded_db

    path = tmp_path / "crafted.db"
    _db(path, ("CREATE TABLE t (v)", ()), page_size=65536)
    ps = 65536
    page = bytearray(ps)
    page[0] = 0x0D  # a table's leaf
    first = 16
    struct.pack_into(">HHH", page, 1, first, 0, 0)
    for block in range(first, ps - 8, 4):
        after = block + 4 if block + 4 < ps - 8 else 0
        struct.pack_into(">HH", page, block, after, 0xFFFF)
    data = path.read_bytes()[:ps] + bytes(page) * 8
    searched = []
    signs = embedded_db.FREED_SIGNS

    class Counted:
        def search(self, buf, lo, hi):
            searched.append(max(0, hi - lo))
            return signs.search(buf, lo, hi)

    monkeypatch.setattr(embedded_db, "FREED_SIGNS", Counted())
    assert not embedded_db.holds_deleted(lambda at, n: data[at : at + n], len(data))
    assert sum(searched) <= 2 * len(data), sum(searched)
