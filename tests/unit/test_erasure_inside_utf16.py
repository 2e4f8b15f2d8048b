"""An erased subject's key or photograph printed into a UTF-16 text file.

Windows PowerShell 5.1's ``>`` and ``Out-File`` write UTF-16LE with a byte order mark
(``echo $key > key.txt``), as Notepad's "Unicode" does, and Excel's "Unicode text" export is a
UTF-16LE CSV. Before, such a file was told nothing by its first bytes (no UTF-8, a NUL every
other byte): the erasure certified with the unwrapped key in it, and the verifier said VALID
with it there. These tests play that operator: the key (as hex or base64) or the photograph's
base64 is cut out of the text, which stays UTF-16 with its mark; another subject's stops
nothing; the verifier fails with the file put back; one that does not decode exactly stops the
erasure as a file it cannot edit does.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tracemalloc
from pathlib import Path

import pytest
from rights_fakes import make_project
from test_erasure_inside import put_back_fails_the_verifier, stopped_then_certified
from test_erasure_unwrapped_key import _data_key

from visage_ml.rights import embedded
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure

MIB = 1 << 20
# Each byte order: its mark, and the codec of what follows it.
ORDERS = {"le": (b"\xff\xfe", "utf-16-le"), "be": (b"\xfe\xff", "utf-16-be")}


@pytest.fixture
def proj(project):
    return make_project(project, n_subjects=3)


def _utf16(text: str, order: str) -> bytes:
    """``text`` as PowerShell's ``Out-File`` writes it (``le``), or big-endian, mark first."""
    bom, codec = ORDERS[order]
    return bom + text.encode(codec)


def _put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("order", sorted(ORDERS))
@pytest.mark.parametrize("form", ["hex", "base64"])
def test_the_unwrapped_key_in_a_utf16_text_is_cut_and_the_text_stays_utf16(proj, order, form):
    root, victim = proj.paths.root, proj.pids[0]
    key = _data_key(proj, victim)
    printed = key.hex() if form == "hex" else base64.b64encode(key).decode()
    saved = _utf16(f"run 12\r\n{printed}\r\nthreshold 0.41 \u00e9t\u00e9\r\n", order)
    path = _put(root / "data" / "interim" / "key.txt", saved)

    result = Erasure(proj.paths).erase(victim)

    assert path.read_bytes() == _utf16("run 12\r\n\r\nthreshold 0.41 \u00e9t\u00e9\r\n", order)
    assert result.certificate["claims"]["copies_removed"] == {"data": 1}
    assert verify_certificate(result.certificate_path, root=root).ok
    put_back_fails_the_verifier(proj, result, {path: saved})


def test_the_photograph_in_an_excel_unicode_text_export_is_cut(proj):
    root, victim, other = proj.paths.root, proj.pids[0], proj.pids[1]
    mine = next(iter(proj.images[victim].values()))
    theirs = next(iter(proj.images[other].values()))
    rows = ["id\tphoto", f"1\t{base64.b64encode(mine).decode()}"]
    rows.append(f"2\t{base64.b64encode(theirs).decode()}")
    saved = _utf16("\r\n".join(rows) + "\r\n", "le")
    path = _put(root / "data" / "labels" / "faces.txt", saved)

    result = Erasure(proj.paths).erase(victim)

    kept = ["id\tphoto", "1\t", f"2\t{base64.b64encode(theirs).decode()}"]
    assert path.read_bytes() == _utf16("\r\n".join(kept) + "\r\n", "le")
    assert result.certificate["claims"]["copies_removed"] == {"data": 1}
    put_back_fails_the_verifier(proj, result, {path: saved})


def test_another_subjects_key_in_a_utf16_text_stops_nothing(proj):
    root, victim, other = proj.paths.root, proj.pids[0], proj.pids[1]
    theirs = _data_key(proj, other)
    saved = _utf16(f"{theirs.hex()}\r\n{base64.b64encode(theirs).decode()}\r\n", "le")
    path = _put(root / "data" / "interim" / "key.txt", saved)

    result = Erasure(proj.paths).erase(victim)

    assert path.read_bytes() == saved
    assert "copies_removed" not in result.certificate["claims"]
    assert verify_certificate(result.certificate_path, root=root).ok


def test_a_utf16_text_that_does_not_decode_exactly_stops_the_erasure(proj):
    # A lone surrogate, an odd byte at its end: the key is found, but the text cannot be
    # written back byte for byte, so the operator decides, as for an archive.
    root, victim = proj.paths.root, proj.pids[0]
    key = _data_key(proj, victim)
    saved = _utf16(f"key {key.hex()}\r\n", "le") + b"\x00\xd8" + b"x"
    path = _put(root / "data" / "interim" / "key.txt", saved)

    said, done = stopped_then_certified(proj, victim, [path], [])

    assert "UTF-16" in said
    put_back_fails_the_verifier(proj, done, {path: saved})


def test_the_key_in_a_utf16le_text_without_a_mark_is_cut(proj):
    # Python's ``encode("utf-16-le")``, .NET's ``Encoding.Unicode.GetBytes``: no mark, told by
    # its first 4 KiB of printable ASCII, each character's high byte NUL.
    root, victim = proj.paths.root, proj.pids[0]
    key = _data_key(proj, victim)
    saved = f"run 12\r\nkey={key.hex()}\r\n".encode("utf-16-le")
    path = _put(root / "data" / "interim" / "state.txt", saved)

    result = Erasure(proj.paths).erase(victim)

    assert path.read_bytes() == "run 12\r\nkey=\r\n".encode("utf-16-le")
    put_back_fails_the_verifier(proj, result, {path: saved})


def test_a_bom_before_what_is_no_utf16_text_is_none():
    # UTF-32LE's mark begins as UTF-16LE's; a NUL then, and binary bytes, are no text.
    assert embedded.kind("key".encode("utf-32")) != embedded.UTF16
    assert embedded.kind(b"\xff\xfe" + bytes(range(256))) is None
    assert embedded.kind(_utf16("key", "le")) == embedded.UTF16
    assert embedded.kind(_utf16("key", "be")) == embedded.UTF16
    # Without a mark: printable ASCII only, every other byte NUL, eight characters at least.
    assert embedded.kind("key=0a1b2c".encode("utf-16-le")) == embedded.UTF16
    assert embedded.kind("key".encode("utf-16-le")) is None
    assert embedded.kind("cl\u00e9 0a1b2c".encode("utf-16-le")) is None
    assert embedded.kind(bytes(range(1, 100)) + b"\x00") is None


def test_a_large_utf16_text_is_read_a_window_at_a_time(monkeypatch):
    # Over EMBED_MAX (made small here): decoded as it is read, the key found across windows,
    # in memory of a few windows, not of the file.
    monkeypatch.setattr(embedded, "EMBED_MAX", MIB)
    key = bytes(range(32))
    lines = "".join(f"{i:07d} run ok, loss 0.41\r\n" for i in range(150_000))  # 8 MiB as UTF-16
    data = _utf16(lines + f"key {key.hex()}\r\n" + lines, "le")
    assert len(data) > 8 * MIB
    tracemalloc.start()
    try:
        found = set(embedded.inside_large(io.BytesIO(data), embedded.UTF16))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert hashlib.sha256(key).hexdigest() in found
    assert peak < 8 * MIB, peak


def test_the_key_in_a_utf16_text_too_large_to_hold_is_cut(proj, monkeypatch):
    # Over EMBED_MAX (made small here) the scan reads the file a window at a time from itself.
    monkeypatch.setattr(embedded, "EMBED_MAX", 64 << 10)
    root, victim = proj.paths.root, proj.pids[0]
    key = _data_key(proj, victim)
    lines = "".join(f"{i:07d} run ok, loss 0.41\r\n" for i in range(5000))
    saved = _utf16(f"{lines}key {key.hex()}\r\n{lines}", "be")
    assert len(saved) > 3 * embedded.EMBED_MAX
    path = _put(root / "reports" / "train.log", saved)

    result = Erasure(proj.paths).erase(victim)

    assert path.read_bytes() == _utf16(f"{lines}key \r\n{lines}", "be")
    put_back_fails_the_verifier(proj, result, {path: saved})


def test_a_lone_surrogate_is_read_past_and_written_back_as_it_was(tmp_path):
    # Windows lets a file name hold one, and a listing of names printed it so (past the first
    # 4 KiB, which tell a text: random bytes after a mark are characters but for surrogates).
    key = bytes(range(32))
    names = "".join(f"C:\\data\\{i:05d}.png\r\n" for i in range(200))
    text = f"{names}C:\\data\\x\ud800y.txt\r\nkey {key.hex()}\r\n"
    path = tmp_path / "dir.txt"
    path.write_bytes(b"\xff\xfe" + text.encode("utf-16-le", "surrogatepass"))
    assert embedded.kind(path.read_bytes()[: embedded.SNIFF]) == embedded.UTF16
    digest = hashlib.sha256(key).hexdigest()
    assert digest in set(embedded.inside(path.read_bytes(), embedded.UTF16))

    assert embedded.cut_encoded(path, {digest}) == 1

    kept = f"{names}C:\\data\\x\ud800y.txt\r\nkey \r\n"
    assert path.read_bytes() == b"\xff\xfe" + kept.encode("utf-16-le", "surrogatepass")
