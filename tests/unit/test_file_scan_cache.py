"""What the scan of the project's files learnt of each file, kept by the file's identity and state
(``.visage/file-scan-cache.json``), so that an erasure or ``visage privacy doctor`` reads an
unchanged file once, not on every request; the verifier reads every file whatever the cache says.

Before, every erasure's copies step read every text file, archive, pickle, array and table of the
project whole (3 GB of ordinary logs, archives and tables: 32 s, on every request).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest
from rights_fakes import make_project

from visage_ml.rights import content_scan, scan_cache
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure

NAME = "Zelda_Testperson"


@pytest.fixture
def proj(project, monkeypatch):
    # The files are written a moment before each scan here: trusted as a file left alone for
    # seconds is (the margin itself is tested on its own).
    monkeypatch.setattr(scan_cache, "RACY_NS", 0)
    return make_project(project, n_subjects=3)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _photo(proj, pid: str) -> bytes:
    return next(iter(proj.images[pid].values()))


def _cache(proj) -> Path:
    return proj.paths.root / scan_cache.FILES


def _entries(proj) -> dict:
    return json.loads(_cache(proj).read_text(encoding="utf-8"))["files"]


def _log(proj, *pngs: bytes, pad: int = 0) -> Path:
    """A CSV of photographs in base64 among lines of hex ids (``pad`` lines of filler)."""
    path = proj.paths.root / "data" / "labels" / f"{NAME}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{i},{hashlib.sha256(bytes([i])).hexdigest()}," for i in range(20)]
    rows += [f"{i + 20},,{_b64(p)}" for i, p in enumerate(pngs)]
    rows += ["-" * 76] * pad
    path.write_text("id,sha,img\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def _zip(proj, png: bytes) -> Path:
    path = proj.paths.root / "data" / "shared" / f"{NAME}.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("face.png", png)
        z.writestr("README.txt", "for a colleague")
    return path


def _read_clean(proj, path: Path) -> None:
    """Edit the cache so that ``path`` reads as holding nothing whatever is sought."""
    doc = json.loads(_cache(proj).read_text(encoding="utf-8"))
    entry = doc["files"][str(path.resolve())]
    entry.update(inner=[], held=[], small=-1, refused=[])
    _cache(proj).write_text(json.dumps(doc), encoding="utf-8")


class Sought(set):
    """What a scan seeks: digests, and the sizes they have (as ContentHashes)."""

    def __init__(self, sizes: set[int], digests: set[str]) -> None:
        super().__init__(digests)
        self.sizes = sizes

    def may_match(self, size: int) -> bool:
        return size in self.sizes


def test_an_unchanged_file_is_read_once_across_erasures(proj, monkeypatch):
    first, second, third = proj.pids
    log = _log(proj, _photo(proj, third), pad=50)
    Erasure(proj.paths).erase(first)
    assert str(log.resolve()) in _entries(proj)
    read: list[Path] = []
    real = content_scan._read_open

    def counted(fh, path, sizes):
        read.append(path)
        return real(fh, path, sizes)

    monkeypatch.setattr(content_scan, "_read_open", counted)
    result = Erasure(proj.paths).erase(second)
    assert log not in read, "the log was read again though nothing of it changed"
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
    assert log in read, "the verifier reads every file, the cache never"


@pytest.mark.parametrize("holder", ["text", "zip"])
def test_the_next_subjects_photograph_in_a_file_the_last_erasure_cached_is_found(proj, holder):
    """The first erasure read the file looking for its own subject's sizes: what it passed over
    (the second subject's photograph, of another size) is not taken as clean for the next."""
    first, second, _ = proj.pids
    png = _photo(proj, second)
    path = _log(proj, png) if holder == "text" else _zip(proj, png)
    Erasure(proj.paths).erase(first)
    assert str(path.resolve()) in _entries(proj), "the first erasure kept what it read"
    if holder == "text":
        result = Erasure(proj.paths).erase(second)
        assert result.certificate["claims"]["copies_removed"] == {"data": 1}
        assert _b64(png) not in path.read_text(encoding="utf-8")
        assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
    else:
        with pytest.raises(OSError, match="hold erased content inside"):
            Erasure(proj.paths).erase(second)
    # What the cache keeps never names the erased photograph.
    assert hashlib.sha256(png).hexdigest() not in _cache(proj).read_text(encoding="utf-8")


def test_a_cache_edited_to_hide_a_photograph_does_not_fool_the_verifier(proj):
    """Whoever can write the project's state edits the cache so that a file holding the
    photograph reads clean: the erasure may trust it, the verifier reads the file and fails."""
    first, second, _ = proj.pids
    png = _photo(proj, second)
    log = _log(proj, png)
    Erasure(proj.paths).erase(first)
    _read_clean(proj, log)
    result = Erasure(proj.paths).erase(second)
    assert "copies_removed" not in result.certificate["claims"], "the erasure used the cache"
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert [f["path"] for f in report.findings] == [str(log)]


def test_a_file_rewritten_in_place_with_its_time_put_back_is_read_again(proj):
    """Same path, inode and size, its modification time set back as it was (``touch -d``,
    ``os.utime``): its change time moved, so the cache says nothing of it."""
    first, second, _ = proj.pids
    png = _photo(proj, second)
    log = _log(proj, pad=0)
    filler = "-" * len(_b64(png))
    log.write_text(log.read_text(encoding="utf-8") + f"99,,{filler}\n", encoding="utf-8")
    Erasure(proj.paths).erase(first)
    before = os.stat(log)
    assert str(log.resolve()) in _entries(proj)
    with open(log, "r+b") as fh:
        data = fh.read()
        fh.seek(data.index(filler.encode()))
        fh.write(_b64(png).encode())
    os.utime(log, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(log)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    result = Erasure(proj.paths).erase(second)
    assert result.certificate["claims"]["copies_removed"] == {"data": 1}
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok


@pytest.mark.parametrize(
    "damage",
    ["garbage", "format", "scanner", "entry", "racy"],
)
def test_a_damaged_foreign_or_racy_cache_is_not_trusted(proj, damage):
    """The file's entry edited to read clean, and the cache then damaged, of another version of
    the scanner, the entry of the wrong shape, or written when the file had just changed (a
    change after it in the same tick of the clock would not show): the file is read."""
    first, second, _ = proj.pids
    png = _photo(proj, second)
    log = _log(proj, png)
    Erasure(proj.paths).erase(first)
    _read_clean(proj, log)
    cache = _cache(proj)
    doc = json.loads(cache.read_text(encoding="utf-8"))
    if damage == "garbage":
        cache.write_bytes(cache.read_bytes()[:100])
    else:
        if damage == "format":
            doc["format"] = 99
        elif damage == "scanner":
            doc["scanner"] = "0" * 64
        elif damage == "entry":
            doc["files"][str(log.resolve())]["held"] = "none"
        else:
            doc["since"] = os.stat(log).st_ctime_ns  # in the tick of its last change
        cache.write_text(json.dumps(doc), encoding="utf-8")
    result = Erasure(proj.paths).erase(second)
    assert result.certificate["claims"]["copies_removed"] == {"data": 1}
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
    # And the cache is this scanner's again, the file cut (and no longer holding it) left out.
    doc = json.loads(cache.read_text(encoding="utf-8"))
    assert doc["format"] == scan_cache.FORMAT and doc["scanner"] != "0" * 64
    assert str(log.resolve()) not in doc["files"]


def test_a_file_changed_a_moment_before_the_scan_is_not_kept(project, monkeypatch):
    """With the margin as it is: a file whose last change is not a second or two older than
    the scan is read, and no entry is made of it; seconds later it is kept."""
    proj = make_project(project, n_subjects=3)
    log = _log(proj, pad=5)
    # Only its modification time can be set back: its change time says when it was written.
    os.utime(log, ns=(0, 0))
    Erasure(proj.paths).erase(proj.pids[0])
    assert str(log.resolve()) not in (_entries(proj) if _cache(proj).exists() else {})
    later = scan_cache._now() + 3_000_000_000
    monkeypatch.setattr(scan_cache, "_now", lambda: later)
    Erasure(proj.paths).erase(proj.pids[1])
    assert str(log.resolve()) in _entries(proj)


def test_what_a_scan_passed_over_as_too_small_is_looked_at_when_smaller_is_sought(tmp_path):
    """A scan seeking only large content passes over a small base64 run undecoded; one seeking
    content that small does not take the cached read as clean."""
    small = os.urandom(300)
    path = tmp_path / "data" / "notes.txt"
    path.parent.mkdir()
    path.write_text(f"note {_b64(small)} end\n", encoding="utf-8")
    _read_again_when_smaller_is_sought(tmp_path, path, small)


def _read_again_when_smaller_is_sought(tmp_path: Path, path: Path, small: bytes) -> None:
    """A scan seeking only content of 50,000 bytes finds nothing in the file at ``path`` (in
    ``tmp_path``'s ``data`` folder) and keeps what it learnt of it; a later one seeking
    ``small``, which the file holds, finds it: it does not take the cached read as clean."""
    os.utime(path, ns=(0, 0))
    cache = tmp_path / scan_cache.FILES
    walked = [content_scan.Root(tmp_path / "data")]
    sha = hashlib.sha256(small).hexdigest()
    scan_cache.RACY_NS, saved = 0, scan_cache.RACY_NS
    try:
        (h,) = content_scan.hash_files(walked, sizes=Sought({50_000}, {"0" * 64}), cache=cache)
        assert not h.held
        assert str(path.resolve()) in json.loads(cache.read_text(encoding="utf-8"))["files"]
        (h,) = content_scan.hash_files(walked, sizes=Sought({len(small)}, {sha}), cache=cache)
    finally:
        scan_cache.RACY_NS = saved
    assert sha in h.held


def test_a_photograph_stored_as_the_cache_is_found_by_the_verifier(proj):
    first, second, _ = proj.pids
    Erasure(proj.paths).erase(first)
    png = _photo(proj, second)
    result = Erasure(proj.paths).erase(second)
    _cache(proj).write_bytes(png)
    report = verify_certificate(result.certificate_path, root=proj.paths.root)
    assert not report.ok
    assert [f["path"] for f in report.findings] == [str(_cache(proj))]


def test_the_cache_forgets_files_gone(proj):
    first, second, _ = proj.pids
    log = _log(proj, pad=3)
    archive = _zip(proj, b"not a photograph" * 100)
    Erasure(proj.paths).erase(first)
    assert {str(log.resolve()), str(archive.resolve())} <= set(_entries(proj))
    archive.unlink()
    Erasure(proj.paths).erase(second)
    assert str(archive.resolve()) not in _entries(proj)
    assert str(log.resolve()) in _entries(proj)


def test_a_database_value_passed_over_in_sqlite_is_looked_at_when_smaller_is_sought(tmp_path):
    """A database's values shorter than anything sought are passed over inside SQLite, never
    seen by the scan: a later scan seeking content that small reads the database again rather
    than take the cached read as clean."""
    import sqlite3

    small = os.urandom(300)
    path = tmp_path / "data" / "labels.db"
    path.parent.mkdir()
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    con.executemany("INSERT INTO t (v) VALUES (?)", [(os.urandom(200),), (small,)])
    con.commit()
    con.close()
    _read_again_when_smaller_is_sought(tmp_path, path, small)


@pytest.mark.parametrize(
    "module",
    ["embedded", "embedded_db", "embedded_formats", "embedded_pickled_keys", "embedded_utf16"],
)
def test_a_change_to_what_a_file_holds_inside_reads_every_file_again(tmp_path, monkeypatch, module):
    """The caches are this scanner's code's: one written before a change to what a file holds
    inside (a new container read, Arrow or TFRecord) is not used, or a file it learnt holds
    nothing would pass as it did then (changed alone, the container module was not counted; a
    reader added later, of keys pickled as strings, was not either: every ``embedded*`` module
    counts)."""
    import importlib

    mod = importlib.import_module(f"visage_ml.rights.{module}")
    before = content_scan._scanner_id.__wrapped__()
    changed = tmp_path / Path(mod.__file__).name
    changed.write_bytes(Path(mod.__file__).read_bytes() + b"\n# changed\n")
    monkeypatch.setattr(mod, "__file__", str(changed))
    assert content_scan._scanner_id.__wrapped__() != before


@pytest.mark.parametrize(("n", "protocol"), [(300, 4), (200, 4), (300, 2)])
def test_a_pickled_value_passed_over_is_looked_at_when_smaller_is_sought(tmp_path, n, protocol):
    """A pickle's ``bytes`` value smaller than anything sought is passed over (one of 200
    bytes, SHORT_BINBYTES, not even looked for): a later scan seeking content that small does
    not take the cached read as clean."""
    import pickle

    small = os.urandom(n)
    path = tmp_path / "data" / "rows.pkl"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps([("a", os.urandom(150)), ("b", small)], protocol=protocol))
    _read_again_when_smaller_is_sought(tmp_path, path, small)
