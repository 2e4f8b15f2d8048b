"""Memory the scan for content held inside archives takes: a member looked inside was held in
memory (up to 64 MiB) at each level of nesting, in each scan thread, so a file of a few kB made
of nested archives had the scan hold hundreds of MB a thread, gigabytes at once."""

from __future__ import annotations

import errno
import hashlib
import io
import tempfile
import tracemalloc
import zipfile

from visage_ml.rights import embedded, embedded_spill

MIB = 1 << 20


def _nested(levels: int, member: bytes) -> bytes:
    """A deflated zip of ``levels`` stored zips nested, the innermost holding ``member``."""
    data = member
    for _ in range(levels):
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
            z.writestr("inner.zip", data)
        data = out.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("outer.zip", data)
    return out.getvalue()


def _peak(data: bytes) -> tuple[list[str], int]:
    tracemalloc.start()
    try:
        found = list(embedded.inside(data, embedded.ZIP))
        return found, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_nested_archives_beyond_the_memory_budget_are_looked_inside_from_a_file(
    tmp_path, monkeypatch
):
    """With no memory left to hold them, the archives within archives are copied to unnamed
    files of the project's private folder and looked inside from there: the same content is
    found (the photograph's SHA-256 at the bottom too), with memory of one chunk or so."""
    photo = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * (32 * 1024)  # 8 MiB, looked for
    made = _nested(3, photo)
    in_memory, held = _peak(made)
    assert hashlib.sha256(photo).hexdigest() in in_memory
    assert len(in_memory) == 4  # three zips and the photograph
    assert held > 3 * 8 * MIB  # each level held at once

    embedded.spill_into(tmp_path)
    monkeypatch.setattr(embedded_spill, "MEMORY_MAX", 0)
    spilled_to = []
    real = tempfile.TemporaryFile

    def recorded(*args, **kwargs):
        spilled_to.append(kwargs.get("dir"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", recorded)
    spilled, peak = _peak(made)
    assert spilled == in_memory
    assert peak < 8 * MIB, peak  # a chunk read, its decompression
    assert spilled_to == [tmp_path / ".visage"] * 3
    assert (tmp_path / ".visage").stat().st_mode & 0o777 == 0o700
    assert list((tmp_path / ".visage").iterdir()) == []  # no file left, none named
    assert embedded_spill._MEMORY.used == 0


def test_memory_taken_for_a_member_is_given_back(monkeypatch):
    """What a member held took from the process's budget is given back once it is looked at,
    also when the scan stops on a bomb: else every scan after would spill everything."""
    made = _nested(2, bytes(2 * MIB))
    list(embedded.inside(made, embedded.ZIP))
    assert embedded_spill._MEMORY.used == 0
    monkeypatch.setattr(embedded, "INSIDE_FLOOR", 2 * MIB)
    monkeypatch.setattr(embedded, "INSIDE_RATIO", 1)
    try:
        list(embedded.inside(made, embedded.ZIP))
    except embedded.TooLarge:
        pass
    else:
        raise AssertionError("not stopped")
    assert embedded_spill._MEMORY.used == 0


def test_an_archive_that_cannot_be_spilled_is_not_shown_clean(tmp_path, monkeypatch):
    """With no memory left and no room in the project's private folder (a full disk, a folder
    the scan cannot write), a nested archive cannot be looked inside: the file holding it is not
    shown clean (before, the error ended the archive's read as a damaged archive's does, and
    the photograph inside, and every member after, passed as looked at)."""
    photo = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64
    made = _nested(2, photo)
    assert hashlib.sha256(photo).hexdigest() in list(embedded.inside(made, embedded.ZIP))

    embedded.spill_into(tmp_path)
    monkeypatch.setattr(embedded_spill, "MEMORY_MAX", 0)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    try:
        found = list(embedded.inside(made, embedded.ZIP))
    except embedded.TooLarge:
        pass
    else:
        raise AssertionError(f"shown clean: {len(found)} digests, the photograph's not among them")
    assert embedded_spill._MEMORY.used == 0
