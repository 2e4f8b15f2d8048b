"""Files that would stop every erasure and every verification rather than hide a photograph:
a large file another program cuts short while the scan reads it, a text whose lines make the
scan hold many times the file's size.

A file mapped to be walked (a pickle, an array, a PDF over ``embedded.EMBED_MAX``; a database's
``-wal`` or ``-journal`` too large to read with it) that another program truncates meanwhile
(``np.save`` or ``pickle.dump`` over it: ``open("wb")`` empties it first; SQLite's checkpoint
truncating its ``-wal``) made the kernel send SIGBUS at the first page past its new end: the
whole process died, the erasure half done, the verifier with no report.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import tarfile
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest

from visage_ml.rights import embedded

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``code`` in a process of its own (a SIGBUS kills the process it is sent to)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_large_pickle_cut_short_while_it_is_walked_does_not_kill_the_scan(tmp_path):
    """``pickle.dump`` over a large pickle while the scan walks it: the scan goes on (what it
    reads is what the file held when the walk began), and finds the photographs it held."""
    done = _run(
        """
        import hashlib, os, pickle, random, sys
        from visage_ml.rights import embedded
        embedded.EMBED_MAX = 256 << 10
        png = (b"\\x89PNG\\r\\n\\x1a\\n" + (13).to_bytes(4, "big") + b"IHDR" + bytes(17)
               + bytes(4) + b"IEND" + bytes(4))
        other = png[:-4] + b"\\x01\\x02\\x03\\x04"
        path = os.path.join(sys.argv[1], "photos.pkl")
        with open(path, "wb") as fh:
            pickle.dump([png, random.Random(1).randbytes(4 << 20), other], fh)
        with open(path, "rb") as fh:
            walk = embedded.inside_large(fh, embedded.BINARY)
            found = {next(walk)}
            os.truncate(path, 4096)  # another program writes it anew
            found |= set(walk)
        assert hashlib.sha256(other).hexdigest() in found, found
        print("scanned", len(found))
        """,
        tmp_path,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "scanned" in done.stdout


def test_a_large_databases_wal_truncated_by_a_checkpoint_while_read_does_not_kill_the_scan(
    tmp_path,
):
    """A labelling tool checkpoints its database (``wal_checkpoint(TRUNCATE)``) while the scan
    reads the database and its ``-wal``, too large to read together: the scan goes on."""
    done = _run(
        """
        import os, sqlite3, sys
        from pathlib import Path
        from visage_ml.rights import embedded, embedded_db
        embedded.EMBED_MAX = 1024
        db = Path(sys.argv[1]) / "project.db"
        con = sqlite3.connect(db)
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA wal_autocheckpoint = 0")
        con.execute("CREATE TABLE faces (img BLOB)")
        con.execute("INSERT INTO faces VALUES (?)", (os.urandom(300_000),))
        con.commit()
        wal = Path(f"{db}-wal")
        assert wal.stat().st_size > 300_000
        real = embedded_db.committed

        def checkpointed_meanwhile(frames):
            os.truncate(wal, 0)  # what wal_checkpoint(TRUNCATE) does to it
            return real(frames)

        embedded_db.committed = checkpointed_meanwhile
        try:
            list(embedded_db.inside_path(db))
        except embedded.TooLarge:
            pass  # not shown clean: said, not died
        print("scanned")
        """,
        tmp_path,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "scanned" in done.stdout


def _many_empty_members(n: int) -> bytes:
    """A tar.xz of ``n`` empty members: a few bytes each, compressed."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:xz") as tf:
        for i in range(n):
            tf.addfile(tarfile.TarInfo(f"m{i}"), io.BytesIO(b""))
    return out.getvalue()


def test_a_tar_of_many_empty_members_is_read_in_memory_that_does_not_grow_with_them():
    """A tar.xz of two kilobytes a thousand members: read, each member's header let go of once
    read (tarfile keeps every header it read: a 1.2 MB file of a million members made the scan
    hold 900 MB, one of 12 MB would take 9 GB); its headers are spent from what it may expand
    to, so that one of billions stops as a bomb does."""
    n = 40_000
    data = _many_empty_members(n)
    assert len(data) < 2 * n
    tracemalloc.start()
    try:
        found = sum(1 for _ in embedded.inside(data, embedded.COMPRESSED))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found == n  # every member read (an empty file, sought when sizes say nothing)
    assert peak < 16 << 20, peak  # the decompressor's buffers; 27 MB more before
    budget = embedded._Budget(len(data))
    budget.left = n // 2 * tarfile.BLOCKSIZE  # room for half their headers
    with pytest.raises(embedded.TooLarge):
        list(embedded.inside(data, embedded.COMPRESSED, budget=budget))


def test_a_text_of_short_lines_is_looked_inside_in_memory_of_a_few_times_its_size():
    """A text of 16-character lines (ids, tokens: each a base64 line, the whole file one run of
    lines): what is held to read it is a few times its size, not 20 (a window of 64 MiB held
    1.3 GB, in each scan thread)."""
    data = b"AAAAAAAAAAAAAAAA\n" * ((8 << 20) // 17)
    tracemalloc.start()
    try:
        list(embedded.inside(data, embedded.TEXT))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(data), peak


def test_a_pickle_of_repeated_jpeg_markers_is_walked_about_as_fast_as_any_other():
    """``FF D8`` repeated (an SOI every two bytes, none leading to a JPEG): walked about as fast
    as a pickle of other bytes of its size (each SOI was walked from in Python: 0.45 s a MiB,
    a 2 GB file, or a zip of a few kilobytes holding it, stalled every scan 15 minutes)."""
    n = 2 << 20
    other = b"\x80\x04" + random.Random(0).randbytes(2 * n)
    markers = b"\x80\x04" + b"\xff\xd8" * n
    began = time.perf_counter()
    list(embedded.inside(other, embedded.BINARY))
    plain = time.perf_counter() - began
    began = time.perf_counter()
    list(embedded.inside(markers, embedded.BINARY))
    crafted = time.perf_counter() - began
    assert crafted < 20 * plain + 0.1, (crafted, plain)
