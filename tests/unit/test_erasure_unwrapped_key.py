"""An erased subject's UNWRAPPED keys, printed by an operator: crypto-shredding against them.

An erasure destroys the subject's wrapped key files (the data key's, the vault's, the
gallery's) and keeps the master key. The key as it is once unwrapped (32 bytes: what
``DataKeys.for_project(paths).key(pid)`` or the vault's ``KeyRing.get(pid)`` hand back), printed
in a notebook's output (``key.hex()``, ``base64.b64encode(key)``) or saved in a text file or a
file of its own, opens every sealed copy of the subject that survived out of reach (a DVC
remote, an off-site backup) without any key file: the certificate's "no one can open them any
more" would be false. These tests play that operator: the erasure must take each printed key
out of the file it is in (as it cuts a key file's base64 out of a notebook), stop on one in git,
and the verifier must fail while one is put back; another subject's key, or 32 random bytes
printed the same way, are no copy and stop nothing.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import logging
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from project_helpers import committed_then_removed
from rights_fakes import HEX_DUMPS, make_project, printed_notebook
from test_erasure_inside import put_back_fails_the_verifier, stopped_then_certified, torch_saved
from test_erasure_inside_pickles import py2_binary_dumps, py2_dumps

from visage_ml.privacy.datakeys import DataKeys
from visage_ml.privacy.keys import load_master_key
from visage_ml.privacy.sealed import KeyRing
from visage_ml.rights import embedded, scan_cache
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.sealing import doctor


@pytest.fixture
def proj(project):
    return make_project(project, n_subjects=3)


def _data_key(proj, pid: str) -> bytes:
    """The subject's data key as an operator gets it: the project's data keys, unwrapped."""
    return DataKeys.for_project(proj.paths).key(pid)


def _vault_key(proj, pid: str) -> bytes:
    """The subject's vault key, unwrapped with the master key as the vault does."""
    master = load_master_key(proj.paths.master_key, create=False)
    return KeyRing(proj.paths.vault / "keys", master, context="vault").get(pid)


def _notebook(lines: list[str]) -> str:
    """A notebook whose one code cell printed ``lines`` (a stream output)."""
    return printed_notebook(lines, "k = DataKeys.for_project(paths).key(pid)\nprint(k.hex())")


def _put(path: Path, text: str) -> Path:
    """``text`` written to ``path``, its folder made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _put_back_fails(result, path: Path, text: str, *, root: Path) -> None:
    """The certificate verifies; ``text`` written back to ``path``, the verifier names it."""
    assert verify_certificate(result.certificate_path, root=root).ok
    path.write_text(text, encoding="utf-8")
    report = verify_certificate(result.certificate_path, root=root)
    assert not report.ok
    assert path in {Path(f["path"]) for f in report.findings}, report.findings


def test_a_notebook_that_printed_the_unwrapped_data_key_loses_it(proj):
    # The operator looked at the subject's data key in a notebook, as hex and as base64, and
    # saved it with its outputs. The erasure sought only the wrapped key FILE and certified:
    # the printed key alone opened every off-site copy of the sealed photographs.
    root, victim = proj.paths.root, proj.pids[0]
    key = _data_key(proj, victim)
    hexed, b64 = key.hex(), base64.b64encode(key).decode()
    text = _notebook([hexed, b64])
    path = _put(root / "notebooks" / "keys.ipynb", text)

    result = Erasure(proj.paths).erase(victim)

    left = path.read_text(encoding="utf-8")
    assert hexed not in left and b64 not in left
    # The notebook stays, and what else it holds.
    assert json.loads(left)["cells"][1]["source"] == "the rest stays"
    assert result.certificate["claims"]["copies_removed"] == {"notebooks": 1}
    _put_back_fails(result, path, text, root=root)


def test_a_text_file_holding_the_unwrapped_vault_key_loses_it_and_keeps_the_rest(proj):
    root, victim = proj.paths.root, proj.pids[0]
    key = _vault_key(proj, victim)
    text = f"run 12\nvault key: {key.hex()}\nthreshold 0.41\n"
    path = _put(root / "reports" / "debug.txt", text)

    result = Erasure(proj.paths).erase(victim)

    assert path.read_text(encoding="utf-8") == "run 12\nvault key: \nthreshold 0.41\n"
    _put_back_fails(result, path, text, root=root)


def test_the_unwrapped_key_base64_in_a_json_file_and_raw_in_a_file_of_its_own_go(proj):
    root, victim = proj.paths.root, proj.pids[0]
    key = _data_key(proj, victim)
    doc = root / "data" / "interim" / "keys.json"
    doc.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"pid": victim, "key": base64.b64encode(key).decode()})
    doc.write_text(text, encoding="utf-8")
    raw = root / "data" / "interim" / "key.bin"
    raw.write_bytes(key)

    result = Erasure(proj.paths).erase(victim)

    assert not raw.exists()
    assert json.loads(doc.read_text(encoding="utf-8")) == {"pid": victim, "key": ""}
    assert verify_certificate(result.certificate_path, root=root).ok
    raw.write_bytes(key)
    report = verify_certificate(result.certificate_path, root=root)
    assert not report.ok and raw in {Path(f["path"]) for f in report.findings}
    raw.unlink()
    _put_back_fails(result, doc, text, root=root)


def test_another_subjects_key_and_random_bytes_printed_so_stop_nothing(proj):
    # No false alarm: 32 bytes printed as a key is (another subject's key, random bytes, a
    # SHA-256 in a log) is no copy of the erased subject's key.
    root, victim, other = proj.paths.root, proj.pids[0], proj.pids[1]
    theirs = _data_key(proj, other)
    rand = os.urandom(32)
    text = _notebook([theirs.hex(), base64.b64encode(theirs).decode(), rand.hex()])
    path = _put(root / "notebooks" / "other.ipynb", text)
    log_text = f"{rand.hex()}\n{base64.b64encode(rand).decode()}\n"
    log = _put(root / "reports" / "ids.txt", log_text)
    (root / "data" / "interim").mkdir(parents=True, exist_ok=True)
    (root / "data" / "interim" / "other.bin").write_bytes(theirs)

    result = Erasure(proj.paths).erase(victim)

    assert path.read_text(encoding="utf-8") == text
    assert log.read_text(encoding="utf-8") == log_text
    assert (root / "data" / "interim" / "other.bin").read_bytes() == theirs
    assert "copies_removed" not in result.certificate["claims"]
    assert verify_certificate(result.certificate_path, root=root).ok


def test_a_file_read_by_an_earlier_erasure_is_read_again_for_the_next_subjects_key(
    proj, monkeypatch
):
    # The file scan cache keeps what a read learnt of each file; a file read while another
    # subject was erased (their key sought, not this one's) must not pass as clean now. Before,
    # it kept nothing of a 32-byte part, and the next erasure believed its entry.
    monkeypatch.setattr(scan_cache, "RACY_NS", 0)  # written a moment before: trusted
    root, first, second = proj.paths.root, proj.pids[1], proj.pids[0]
    key = _data_key(proj, second)
    path = root / "reports" / "keys.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [hashlib.sha256(bytes([i])).hexdigest() for i in range(20)]
    path.write_text("\n".join([*rows, f"key {key.hex()}", *rows]) + "\n", encoding="utf-8")

    Erasure(proj.paths).erase(first)
    assert key.hex() in path.read_text(encoding="utf-8")
    cache = json.loads((root / scan_cache.FILES).read_text(encoding="utf-8"))
    assert str(path.resolve()) in cache["files"]
    result = Erasure(proj.paths).erase(second)

    assert path.read_text(encoding="utf-8") == "\n".join([*rows, "key ", *rows]) + "\n"
    assert verify_certificate(result.certificate_path, root=root).ok


def test_the_key_reaches_no_log_ledger_certificate_or_tombstone(proj, caplog):
    root, victim = proj.paths.root, proj.pids[0]
    keys = [_data_key(proj, victim), _vault_key(proj, victim)]
    path = root / "notebooks" / "keys.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_notebook([k.hex() for k in keys]), encoding="utf-8")

    with caplog.at_level(logging.DEBUG):
        result = Erasure(proj.paths).erase(victim)

    held = [
        caplog.text.encode(),
        proj.paths.ledger.read_bytes(),
        result.certificate_path.read_bytes(),
        result.certificate_path.with_suffix(".html").read_bytes(),
        proj.paths.tombstones.read_bytes(),
    ]
    cache = root / ".visage" / "file-scan-cache.json"
    held += [cache.read_bytes()] if cache.is_file() else []
    for key in keys:
        for form in (key, key.hex().encode(), base64.b64encode(key)):
            assert not [h for h in held if form in h]


def test_the_unwrapped_key_committed_to_git_stops_the_erasure(tiny_project):
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3)
    victim = proj.pids[0]
    key = _data_key(proj, victim)
    (root / "notes.txt").write_text(f"data key {key.hex()}\n", encoding="utf-8")
    committed_then_removed(root, "notes.txt")
    with pytest.raises(OSError, match="git"):
        Erasure(proj.paths).erase(victim)
    assert not list(proj.paths.certificates.glob("*.json"))


def _gallery_key(proj, pid: str) -> bytes:
    """The subject's gallery key, unwrapped with the master key as the gallery does."""
    master = load_master_key(proj.paths.master_key, create=False)
    return KeyRing(proj.paths.gallery / "keys", master, context="gallery").get(pid)


def test_a_gallery_key_destroyed_at_consent_withdrawal_is_sought_at_the_later_erasure(proj):
    # The operator printed the subject's gallery key; the subject withdrew consent to
    # identification, and the template went with its key file (no erasure: the rest of the
    # subject stays). Months later the subject asks for erasure. The key file was gone, so the
    # erasure sought nothing of that key, and certified: the printed key still opened the
    # template's sealed copy in every off-site backup.
    root, victim = proj.paths.root, proj.pids[0]
    key = _gallery_key(proj, victim)
    text = _notebook([key.hex()])
    path = _put(root / "notebooks" / "gallery.ipynb", text)
    proj.core.withdraw_consent(victim, ["identification"])
    removed = proj.gallery().purge_without_basis()
    assert [r.pid for r in removed] == [victim]
    assert not (proj.paths.gallery / "keys" / f"{victim}.key").exists()

    result = Erasure(proj.paths).erase(victim)

    assert key.hex() not in path.read_text(encoding="utf-8")
    _put_back_fails(result, path, text, root=root)


def test_tombstones_that_cannot_be_written_do_not_keep_a_withdrawn_template(proj, caplog):
    # The template's removal is the subject's right; the key's tag a further safeguard. A
    # damaged tombstone file (restored from the wrong backup) says so in the log, and the
    # template and its key go all the same.
    victim = proj.pids[1]
    Erasure(proj.paths).erase(proj.pids[2])  # tombstones exist
    proj.paths.tombstones.write_text("not a tombstone file\n", encoding="utf-8")
    proj.core.withdraw_consent(victim, ["identification"])

    with caplog.at_level(logging.WARNING):
        removed = proj.gallery().purge_without_basis()

    assert [r.pid for r in removed] == [victim]
    assert not (proj.paths.gallery / "keys" / f"{victim}.key").exists()
    (record,) = [r for r in caplog.records if "without its tag in the tombstones" in r.message]
    assert victim in record.message and "damaged" in record.message


def _stops_until_taken_out(proj, folder: Path, suffix: str, make) -> None:
    """``make(key)`` of the victim's key in ``folder`` stops the erasure, another subject's
    does not; once taken out the erasure certifies, and put back the verifier names it."""
    victim, other = proj.pids[0], proj.pids[1]
    folder.mkdir(parents=True, exist_ok=True)
    made = {folder / f"state{suffix}": make(_data_key(proj, victim))}
    kept = {folder / f"other{suffix}": make(_data_key(proj, other))}
    for path, data in {**made, **kept}.items():
        path.write_bytes(data)

    _, done = stopped_then_certified(proj, victim, made, kept)

    ((path, data),) = made.items()
    path.write_bytes(data)
    report = verify_certificate(done.certificate_path, root=proj.paths.root)
    assert not report.ok and path in {Path(f["path"]) for f in report.findings}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_the_unwrapped_key_pickled_among_other_values_stops_the_erasure(proj, protocol):
    # ``pickle.dump({"key": key, ...})``: the 32 bytes lie as they are among the pickle's
    # opcodes (protocol 2, torch.save's, writes them as the latin-1 string they decode to,
    # UTF-8 encoded), neither a file of their own nor printed, and the erasure certified. Such a
    # file holds other things too: the erasure stops and says where to look, as it does for a
    # pickle holding an erased photograph; another subject's key pickled so is no concern.
    def pickled(key: bytes) -> bytes:
        return pickle.dumps({"run": 12, "key": key, "rows": list(range(50))}, protocol=protocol)

    _stops_until_taken_out(proj, proj.paths.root / "data" / "interim", ".pkl", pickled)


def test_a_key_the_doctors_purge_destroys_is_sought_at_the_subjects_later_erasure(proj):
    # A subject's data came into the project before the subject was registered (migrated in
    # from another project, the registration to follow), their gallery key with it, and the
    # operator printed that key. `visage privacy doctor --purge`, run meanwhile, destroyed the
    # key of a subject the registry did not know. The subject is registered, then asks for
    # erasure: the key file was gone, so the erasure sought nothing of that key and certified
    # while the notebook still printed it.
    root, newcomer = proj.paths.root, "p" + "e" * 16
    master = load_master_key(proj.paths.master_key, create=False)
    ring = KeyRing(proj.paths.gallery / "keys", master, context="gallery")
    key = ring.get(newcomer, create=True)
    text = _notebook([key.hex()])
    path = _put(root / "notebooks" / "migrated.ipynb", text)
    assert doctor(proj.paths, purge=True).purged
    assert not ring.exists(newcomer)
    proj.core.add_subject(pid=newcomer, source="test")

    result = Erasure(proj.paths).erase(newcomer)

    assert key.hex() not in path.read_text(encoding="utf-8")
    _put_back_fails(result, path, text, root=root)


def test_tombstones_that_cannot_be_written_do_not_keep_a_key_from_the_doctors_purge(proj, caplog):
    # As for a withdrawal's purge: the key's tag is a further safeguard, and a damaged
    # tombstone file says so in the log (the pid, never the key) while the key goes all the same.
    newcomer = "p" + "d" * 16
    Erasure(proj.paths).erase(proj.pids[2])  # tombstones exist
    master = load_master_key(proj.paths.master_key, create=False)
    ring = KeyRing(proj.paths.gallery / "keys", master, context="gallery")
    key = ring.get(newcomer, create=True)
    proj.paths.tombstones.write_text("not a tombstone file\n", encoding="utf-8")

    with caplog.at_level(logging.WARNING):
        doctor(proj.paths, purge=True)

    assert not ring.exists(newcomer)
    (record,) = [r for r in caplog.records if "without its tag in the tombstones" in r.message]
    assert newcomer in record.message and "damaged" in record.message
    assert key.hex() not in caplog.text


# The key pickled with protocol 2 among other values, as a checkpoint or a debug dump holds it:
# ``torch.save`` of a state (the key after another 32 bytes: its ``'latin1'`` a memo's), a
# ``bytearray``, a NumPy array of its bytes.
_PROTOCOL_2 = {
    "torch.save": lambda key: torch_saved({"step": 12, "seed": bytes(32), "key": key}),
    "bytearray": lambda key: pickle.dumps([1, bytearray(key)], protocol=2),
    "numpy": lambda key: pickle.dumps({"k": np.frombuffer(key, np.uint8)}, protocol=2),
}


@pytest.mark.parametrize("form", sorted(_PROTOCOL_2))
def test_the_unwrapped_key_in_a_protocol_2_pickle_or_a_torch_checkpoint_stops_the_erasure(
    proj, form
):
    # torch.save pickles with protocol 2, which holds bytes as ``_codecs.encode(str,
    # 'latin1')``: the key's bytes from 0x80 up lie as two bytes each, and the erasure certified
    # with a checkpoint holding the key in place.
    _stops_until_taken_out(proj, proj.paths.root / "models" / "debug", ".pt", _PROTOCOL_2[form])


def test_a_32_character_string_pickled_with_protocol_2_is_no_key(proj):
    # No false stop: a pickle of protocol 2 holding 32-character strings (ids, the key's hex
    # halves) and another subject's key is left alone.
    root, victim, other = proj.paths.root, proj.pids[0], proj.pids[1]
    key, theirs = _data_key(proj, victim), _data_key(proj, other)
    rows = {"ids": ["a" * 32, key.hex()[:32], key.hex()[32:]], "theirs": theirs}
    path = root / "data" / "interim" / "rows.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = pickle.dumps(rows, protocol=2)
    path.write_bytes(data)

    result = Erasure(proj.paths).erase(victim)

    assert path.read_bytes() == data
    assert verify_certificate(result.certificate_path, root=root).ok


# The key printed (``base64.b64encode(key)``, 44 characters; URL-safe without its padding, 43;
# ``key.hex()``, 64) and pickled as a string among other values: Python 3's ``str`` (protocol 0,
# Python 2's default: an UNICODE line, ``V...``; 1 to 3: a BINUNICODE; 4 and up: a
# SHORT_BINUNICODE) or ``bytes`` (0 to 2: the string of ``_codecs.encode``; 3 and up: a
# SHORT_BINBYTES; a ``bytearray`` of 5: BYTEARRAY8), Python 2's ``str`` (0: a STRING,
# ``S'...'``; 1 and 2: a SHORT_BINSTRING) or ``unicode``. The opcode before the text (``V``),
# its length (43 is ``+``) or the memo's BINPUT after it (``q``) are letters of base64, read by
# the text reader as the key's own: a run one too long, no key, and the erasure certified.
_PRINTED_KEY = {
    "base64": lambda k: base64.b64encode(k).decode(),
    "urlsafe": lambda k: base64.urlsafe_b64encode(k).decode().rstrip("="),
    "hex": lambda k: k.hex(),
}
_PICKLED_TEXT = {
    **{f"str-{p}": lambda s, p=p: pickle.dumps({"run": 1, "key": s}, protocol=p) for p in range(6)},
    **{f"bytes-{p}": lambda s, p=p: pickle.dumps([1, s.encode()], protocol=p) for p in range(5)},
    "bytearray-5": lambda s: pickle.dumps([1, bytearray(s.encode())], protocol=5),
    "py2-str-0": lambda s: py2_dumps({b"run": 1, b"key": s.encode()}),
    "py2-unicode-0": lambda s: py2_dumps({b"run": 1, b"key": s}),
    **{
        f"py2-{kind}-{p}": lambda s, p=p, b=b: py2_binary_dumps([1, b(s)], p)
        for p in (1, 2)
        for kind, b in (("str", str.encode), ("unicode", str))
    },
}


@pytest.mark.parametrize("pickler", list(_PICKLED_TEXT))
def test_the_unwrapped_key_printed_then_pickled_as_a_string_stops_the_erasure(proj, pickler):
    # Each printed form in a pickle of its own: each stops the erasure (the message counts
    # them, doctor lists them), another subject's key pickled so stops nothing, and put back
    # after the erasure certified, the verifier names each.
    victim, other = proj.pids[0], proj.pids[1]
    key, theirs = _data_key(proj, victim), _data_key(proj, other)
    folder = proj.paths.root / "data" / "interim"
    folder.mkdir(parents=True, exist_ok=True)
    dump = _PICKLED_TEXT[pickler]
    made = {folder / f"{form}.pkl": dump(shown(key)) for form, shown in _PRINTED_KEY.items()}
    kept = {
        folder / f"theirs-{form}.pkl": dump(shown(theirs)) for form, shown in _PRINTED_KEY.items()
    }
    for path, data in {**made, **kept}.items():
        path.write_bytes(data)

    _, done = stopped_then_certified(proj, victim, made, kept)

    put_back_fails_the_verifier(proj, done, made)


@pytest.mark.parametrize("pickler", list(_PICKLED_TEXT))
def test_a_key_printed_then_pickled_is_found_mapped_and_in_a_pickle_held_in_another(
    tmp_path, pickler
):
    # The same pickles read from their file (mapped, as one over 64 MiB is) and held as a
    # ``bytes`` value of another pickle (a queue of pickled records), whose text is not read:
    # each printed form found alike; 64 hex digits or base64 of another length are no key.
    key = os.urandom(32)
    sha = hashlib.sha256(key).hexdigest()
    dump = _PICKLED_TEXT[pickler]
    for form, shown in _PRINTED_KEY.items():
        data = dump(shown(key))
        assert embedded.kind(data[: embedded.SNIFF]) == embedded.BINARY
        assert sha in set(embedded.inside(data, embedded.BINARY)), form
        (tmp_path / form).write_bytes(data)
        with open(tmp_path / form, "rb") as fh:
            assert sha in set(embedded.inside_large(fh, embedded.BINARY)), form
        queue = pickle.dumps({"records": [data, bytes(64)]}, protocol=4)
        assert sha in set(embedded.inside(queue, embedded.BINARY)), form
    for near in (hashlib.sha512(key).hexdigest()[:63], base64.b64encode(key + b"!").decode()):
        assert sha not in set(embedded.inside(dump(near), embedded.BINARY))


def _odd(key: bytes) -> bytes:
    """Printable bytes, a quote and a backslash among the escapes, as some key will have: the
    literal of 32 bytes that is no key sought."""
    return bytes(range(0x20, 0x30)) + b"'\\\"" + key[: 32 - 19]


# The key as an operator prints it: shown in a notebook's output, written to a debug log, and
# what the log keeps once it is cut out. As Python prints bytes (``print(key)``, ``key`` as a
# cell's last line: b'\x8f\x1a...', JSON-escaped in the saved notebook, each backslash doubled);
# 32 hex pairs joined (``key.hex(":")``, ``key.hex(" ").upper()``, ``key.hex("-")``); its 32
# numbers (``list(key)``, ``tuple(key)``, a NumPy array of its bytes).
_PRINTED = {
    "literal": (
        repr,
        lambda k: f"key={k!r} odd={_odd(k)!r}\n",
        lambda k: f"key= odd={_odd(k)!r}\n",
    ),
    "pairs": (
        lambda k: k.hex(":"),
        lambda k: f"key {k.hex(' ').upper()}\nalso={k.hex('-')};\n",
        lambda k: "key \nalso=;\n",
    ),
    "numbers": (
        lambda k: str(list(k)),
        lambda k: f"key={tuple(k)}\n{np.frombuffer(k, np.uint8)!r}\n",
        lambda k: "key=\narray(, dtype=uint8)\n",
    ),
}


@pytest.mark.parametrize("form", sorted(_PRINTED))
def test_the_key_printed_as_bytes_hex_pairs_or_its_numbers_is_found_and_cut(proj, form):
    # Neither 64 hex digits in a row nor base64: the erasure certified with the notebook and
    # the log holding the key so.
    shown, logged, left_in_log = _PRINTED[form]
    root, victim, other = proj.paths.root, proj.pids[0], proj.pids[1]
    key, theirs = _data_key(proj, victim), _data_key(proj, other)
    nb = _notebook([shown(key), shown(theirs)])
    path = _put(root / "notebooks" / "keys.ipynb", nb)
    text = f"{logged(key)}theirs {shown(theirs)}\n"
    log = _put(root / "reports" / "debug.txt", text)

    result = Erasure(proj.paths).erase(victim)

    left = json.loads(path.read_text(encoding="utf-8"))["cells"][0]["outputs"][0]["text"]
    assert left == ["\n", f"{shown(theirs)}\n"]
    kept = f"{left_in_log(key)}theirs {shown(theirs)}\n"
    assert log.read_text(encoding="utf-8") == kept
    _put_back_fails(result, log, text, root=root)
    log.write_text(kept, encoding="utf-8")
    _put_back_fails(result, path, nb, root=root)


# Near a key printed so, and none: one short, one too many, inside a longer run or list, beside
# MAC addresses, UUIDs, timestamps, lists of small numbers, floats.
_NEAR = {
    "pairs": lambda k: [
        f"12:34:56 short {k[:31].hex(':')}",
        f"12:34:57 long {(k + bytes(1)).hex(':')}",
        f"12:34:58 inside ab:cd:{k.hex(':')}:ef",
        "12:34:59 mac ee:e7:61:5e:f3:5f uuid 89e7d15f-1736-2f25-244c-af9c4dabb481",
    ],
    "numbers": lambda k: [
        f"short {list(k[:31])}",
        f"long {[*k, 7]}",
        f"inside {[1, 2, *k]}",
        f"floats {[float(b) for b in k]}",
        f"batch {list(range(12))} shape (32, 3)",
    ],
}


@pytest.mark.parametrize("form", sorted(_NEAR))
def test_hex_pairs_or_numbers_near_a_printed_key_stop_nothing(proj, form):
    root, victim = proj.paths.root, proj.pids[0]
    text = "\n".join(_NEAR[form](_data_key(proj, victim))) + "\n"
    log = _put(root / "reports" / "near.txt", text)

    result = Erasure(proj.paths).erase(victim)

    assert log.read_text(encoding="utf-8") == text
    assert "copies_removed" not in result.certificate["claims"]
    assert verify_certificate(result.certificate_path, root=root).ok


@pytest.mark.parametrize("tool", sorted(HEX_DUMPS))
def test_the_key_file_shown_by_a_hex_viewer_is_found_and_cut(proj, tool):
    # The operator wrote the unwrapped key to a file, looked at it with a hex viewer in a shell
    # cell and deleted the file; the notebook kept the viewer's output, and so did a terminal's
    # log. Neither 64 hex digits in a row nor 32 pairs joined by one separator: the erasure
    # certified with both holding the key.
    dump = HEX_DUMPS[tool]
    root, victim, other = proj.paths.root, proj.pids[0], proj.pids[1]
    key, theirs = _data_key(proj, victim), _data_key(proj, other)
    nb = printed_notebook(
        [*dump(key).splitlines(), "--", *dump(theirs).splitlines()], f"!{tool} k.bin"
    )
    path = _put(root / "notebooks" / "dumped.ipynb", nb)
    text = f"$ {tool} k.bin\n{dump(key)}$ {tool} theirs.bin\n{dump(theirs)}$ rm k.bin\n"
    log = _put(root / "reports" / "terminal.log", text)

    result = Erasure(proj.paths).erase(victim)

    kept = log.read_text(encoding="utf-8")
    assert key.hex() not in kept.replace(" ", "").replace("\n", "")
    assert kept.endswith(f"$ {tool} theirs.bin\n{dump(theirs)}$ rm k.bin\n")
    left = json.loads(path.read_text(encoding="utf-8"))["cells"][0]["outputs"][0]["text"]
    assert "".join(left).endswith(f"--\n{dump(theirs)}")
    assert json.loads(path.read_text(encoding="utf-8"))["cells"][1]["source"] == "the rest stays"
    _put_back_fails(result, log, text, root=root)
    log.write_text(kept, encoding="utf-8")
    _put_back_fails(result, path, nb, root=root)


@pytest.mark.parametrize("tool", sorted(HEX_DUMPS))
def test_a_longer_file_shown_by_a_hex_viewer_or_a_part_of_the_key_stops_nothing(proj, tool):
    # A dump of 48 bytes beginning with the key is no key printed alone (as 33 hex pairs joined
    # are none); neither is a dump of 31 of its bytes, nor of 32 random bytes.
    root, victim = proj.paths.root, proj.pids[0]
    key = _data_key(proj, victim)
    dump = HEX_DUMPS[tool]
    text = f"{dump(key + bytes(16))}--\n{dump(key[:31])}--\n{dump(os.urandom(32))}"
    log = _put(root / "reports" / "near.log", text)

    result = Erasure(proj.paths).erase(victim)

    assert log.read_text(encoding="utf-8") == text
    assert "copies_removed" not in result.certificate["claims"]
    assert verify_certificate(result.certificate_path, root=root).ok


@pytest.mark.parametrize("form", ["hex", "base64", "hex_in_json", "base64_in_json"])
@pytest.mark.parametrize("store", ["parquet", "parquet_zstd", "sqlite"])
def test_the_unwrapped_key_as_a_tables_value_stops_the_erasure(proj, store, form):
    """An operator keeps the keys they unwrapped in a table (a column of hex or base64 keys,
    or a JSON value holding one): the table is no text, so no printed key is cut out of it; the
    erasure stops on it, certifies once it is gone, and the verifier fails while it is back.
    Another subject's key kept the same way stops nothing."""
    import sqlite3

    import pandas as pd

    root, victim, other = proj.paths.root, proj.pids[0], proj.pids[1]

    def shown(key: bytes) -> str:
        text = key.hex() if form.startswith("hex") else base64.b64encode(key).decode()
        return json.dumps({"kind": "data", "key": text}) if form.endswith("json") else text

    folder = root / "data" / "interim"
    folder.mkdir(parents=True, exist_ok=True)

    def table(name: str, key: bytes) -> Path:
        rows = {"run": [1, 2, 3], "value": ["a" * 40, shown(key), "threshold 0.41"]}
        if store.startswith("parquet"):
            path = folder / f"{name}.parquet"
            # zstd: the values do not lie in the file as they are (snappy leaves short ones)
            pd.DataFrame(rows).to_parquet(path, compression=store.partition("_")[2] or "snappy")
        else:
            path = folder / f"{name}.db"
            with sqlite3.connect(path) as db:
                db.execute("CREATE TABLE k (run INTEGER, value TEXT)")
                db.executemany("INSERT INTO k VALUES (?, ?)", zip(*rows.values(), strict=True))
            db.close()
        return path

    made = {(p := table("keys", _data_key(proj, victim))): p.read_bytes()}
    kept = {table("theirs", _data_key(proj, other)): None}
    _, done = stopped_then_certified(proj, victim, made, kept)
    assert verify_certificate(done.certificate_path, root=root).ok
    put_back_fails_the_verifier(proj, done, made)


def _zipped(key: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("key.bin", key)
        z.writestr("notes.txt", "run 12, threshold 0.41\n" * 8)
    return out.getvalue()


def _tarred(key: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        member = tarfile.TarInfo("key.bin")
        member.size = len(key)
        t.addfile(member, io.BytesIO(key))
    return out.getvalue()


def _torch_tensor(key: bytes) -> bytes:
    torch = pytest.importorskip("torch")
    return torch_saved({"step": 12, "key": torch.tensor(list(key), dtype=torch.uint8)})


# The key's 32 bytes as an archive's member of their own: a file of a zip or a tar, a gzip
# stream's one file, a tensor's storage in torch.save's zip (``archive/data/0``).
_ARCHIVED = {"zip": _zipped, "tar": _tarred, "gzip": gzip.compress, "torch.save": _torch_tensor}


@pytest.mark.parametrize("form", sorted(_ARCHIVED))
def test_the_unwrapped_key_as_an_archives_member_stops_the_erasure(proj, form):
    # A member of 32 bytes that begins as no known file does was hashed as it streamed and
    # passed over as smaller than anything sought, never tested against the keys: the erasure
    # certified with the key in a zip, a tar, a gzip stream, or a tensor of a checkpoint.
    _stops_until_taken_out(proj, proj.paths.root / "data" / "interim", ".bin", _ARCHIVED[form])


def _npy(key: bytes, dtype: type = np.uint8) -> bytes:
    out = io.BytesIO()
    np.save(out, np.frombuffer(key, dtype))
    return out.getvalue()


def _npz(key: bytes, save=np.savez_compressed) -> bytes:
    out = io.BytesIO()
    save(out, key=np.frombuffer(key, np.uint8), x=np.arange(100))
    return out.getvalue()


# The key's 32 bytes as a NumPy array's buffer: a ``.npy`` of its bytes (or of the same bytes
# seen as four floats), and such an array in an ``.npz`` beside another, compressed or stored.
_ARRAYS = {
    "npy": _npy,
    "npy_float64": lambda key: _npy(key, np.float64),
    "npz": _npz,
    "npz_stored": lambda key: _npz(key, np.savez),
}


@pytest.mark.parametrize("form", sorted(_ARRAYS))
def test_the_unwrapped_key_as_an_arrays_buffer_stops_the_erasure(proj, form):
    # ``np.save(f, np.frombuffer(key, np.uint8))``: the 32 bytes lie after the .npy header,
    # which made the file (and an .npz's member) 160 bytes, smaller than anything sought, and
    # the erasure certified with the key in it.
    _stops_until_taken_out(proj, proj.paths.root / "data" / "interim", ".npy", _ARRAYS[form])


def _database(key: bytes) -> bytes:
    """A SQLite database holding ``key`` in a BLOB column, beside 32 other bytes and a note."""
    import sqlite3

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE keys (run INTEGER, key BLOB, note TEXT)")
    db.executemany(
        "INSERT INTO keys VALUES (?, ?, ?)", [(1, bytes(range(32)), "seed"), (2, key, "data")]
    )
    db.commit()
    data = db.serialize()
    db.close()
    return data


def test_the_unwrapped_key_as_a_databases_blob_stops_the_erasure(proj):
    # ``INSERT INTO keys VALUES (?, ?)`` with the key's bytes: a BLOB of 32 bytes, shorter than
    # anything sought, was passed over in SQLite unread (a printed key was asked of the table,
    # its raw bytes not), and the erasure certified with the key in the database.
    _stops_until_taken_out(proj, proj.paths.root / "data" / "interim", ".db", _database)


def _legacy_checkpoint(key: bytes, dtype: str) -> bytes:
    """``torch.save(..., _use_new_zipfile_serialization=False)`` of a state holding ``key`` as a
    tensor (its bytes as ``dtype``) between two others: no zip, the pickles then each storage's
    bytes after its element count."""
    torch = pytest.importorskip("torch")
    tensor = torch.frombuffer(bytearray(key), dtype=getattr(torch, dtype))
    state = {"w": torch.arange(40, dtype=torch.float32), "key": tensor, "b": torch.ones(3)}
    out = io.BytesIO()
    torch.save(state, out, _use_new_zipfile_serialization=False)
    return out.getvalue()


@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64"])
def test_the_unwrapped_key_in_a_legacy_torch_checkpoint_stops_the_erasure(proj, dtype):
    # torch's format before 1.6 (still written on request): the tensors' bytes lie as they are
    # after the pickles, each storage after its element count; the key's 32 bytes were read
    # as nothing and the erasure certified.
    def saved(key: bytes) -> bytes:
        return _legacy_checkpoint(key, dtype)

    _stops_until_taken_out(proj, proj.paths.root / "models" / "debug", ".pt", saved)


# The key printed within a longer string, pickled: a letter of the string's opcode, length or
# memo's put lies against its run, so the text reader reads a run one too long. ``key.hex() +
# ".bin"`` with protocol 4 (its length 68 is ``D``, a hex digit), ``"key=" + `` its unpadded
# base64 with protocol 1 to 3 (the BINPUT ``q`` after it).
_IN_LONGER = {
    "hex_bin_4": lambda key: pickle.dumps({"f": key.hex() + ".bin"}, protocol=4),
    **{
        f"b64_after_key_{p}": lambda key, p=p: pickle.dumps(
            {"k": "key=" + base64.b64encode(key).decode().rstrip("=")}, protocol=p
        )
        for p in (1, 2, 3)
    },
}


@pytest.mark.parametrize("form", sorted(_IN_LONGER))
def test_the_key_printed_within_a_longer_pickled_string_stops_the_erasure(proj, form):
    # Only strings of a printed key's length were read by their opcode: a longer one holding it
    # was left to the text reader, whose run took the opcode's letter in, and the erasure
    # certified.
    _stops_until_taken_out(proj, proj.paths.root / "data" / "interim", ".pkl", _IN_LONGER[form])


@pytest.mark.parametrize("form", sorted(_IN_LONGER))
def test_a_key_within_a_longer_pickled_string_is_found_mapped_and_held_in_another(tmp_path, form):
    # Read from its file mapped, and held as a value of another pickle (whose text is not
    # read): found alike; a longer run of the string's own (65 hex digits, base64 of 33
    # bytes) is no key.
    key = os.urandom(32)
    sha = hashlib.sha256(key).hexdigest()
    data = _IN_LONGER[form](key)
    assert sha in set(embedded.inside(data, embedded.BINARY))
    (tmp_path / form).write_bytes(data)
    with open(tmp_path / form, "rb") as fh:
        assert sha in set(embedded.inside_large(fh, embedded.BINARY))
    queue = pickle.dumps({"records": [data, bytes(64)]}, protocol=4)
    assert sha in set(embedded.inside(queue, embedded.BINARY))
    for near in (
        pickle.dumps({"f": key.hex() + "0.bin"}, protocol=4),
        pickle.dumps({"f": "0" + key.hex() + ".bin"}, protocol=4),
        pickle.dumps({"k": "key=" + base64.b64encode(key + b"!").decode()}, protocol=2),
    ):
        assert sha not in set(embedded.inside(near, embedded.BINARY))


def _der_b64(key: bytes) -> str:
    """The key as an ASN.1 OCTET STRING of 32 bytes (``04 20``, then its bytes), in base64."""
    return base64.b64encode(b"\x04\x20" + key).decode()


# The key DER-wrapped as PKCS#8 and raw-key tools print it: between PEM lines, or alone in a log.
_DER_TEXTS = {
    "pem": lambda k: f"-----BEGIN PRIVATE KEY-----\n{_der_b64(k)}\n-----END PRIVATE KEY-----\n",
    "alone": lambda k: f"run 12\nkey (der): {_der_b64(k)}\nthreshold 0.41\n",
}


@pytest.mark.parametrize("form", sorted(_DER_TEXTS))
def test_the_key_der_wrapped_in_base64_is_found_and_cut(proj, form):
    # Base64 of 34 bytes (04 20, then the key's 32) is no run of a key's length, and the
    # erasure certified with it in the text: the key opens every sealed copy off-site.
    root, victim, other = proj.paths.root, proj.pids[0], proj.pids[1]
    key, theirs = _data_key(proj, victim), _data_key(proj, other)
    text, kept = _DER_TEXTS[form](key), _DER_TEXTS[form](theirs)
    path = _put(root / "reports" / "key.pem", text)
    other_path = _put(root / "reports" / "theirs.pem", kept)

    result = Erasure(proj.paths).erase(victim)

    assert _der_b64(key) not in path.read_text(encoding="utf-8")
    assert other_path.read_text(encoding="utf-8") == kept
    _put_back_fails(result, path, text, root=root)


def _database_text(key: bytes, how: str) -> bytes:
    """A SQLite database holding ``key``'s 32 bytes as a TEXT: decoded as latin-1 (its
    characters, stored as UTF-8) or a BLOB cast (its bytes as they are), beside a note."""
    import sqlite3

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE keys (run INTEGER, key TEXT, note TEXT)")
    value = "CAST(? AS TEXT)" if how == "cast" else "?"
    held = key if how == "cast" else key.decode("latin-1")
    db.execute(f"INSERT INTO keys VALUES (1, {value}, 'data')", (held,))  # noqa: S608
    db.commit()
    assert db.execute("SELECT typeof(key) FROM keys").fetchone() == ("text",)
    data = db.serialize()
    db.close()
    return data


@pytest.mark.parametrize("how", ["latin1", "cast"])
def test_the_unwrapped_key_as_a_databases_text_stops_the_erasure(proj, how):
    # The key's 32 bytes kept as a TEXT (``key.decode("latin-1")``, or cast): shorter than
    # anything sought and no printed key, it was passed over in SQLite unread, and the erasure
    # certified with the key in the database.
    def made(key: bytes) -> bytes:
        return _database_text(key, how)

    _stops_until_taken_out(proj, proj.paths.root / "data" / "interim", ".db", made)


def _table(value: str, store: str) -> bytes:
    """A table holding ``value`` as a row's string among others: a Parquet string column, or a
    SQLite TEXT."""
    import sqlite3

    import pandas as pd

    rows = {"run": [1, 2, 3], "value": ["a" * 40, value, "threshold 0.41"]}
    if store == "parquet":
        out = io.BytesIO()
        pd.DataFrame(rows).to_parquet(out)
        return out.getvalue()
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE k (run INTEGER, value TEXT)")
    db.executemany("INSERT INTO k VALUES (?, ?)", zip(*rows.values(), strict=True))
    db.commit()
    data = db.serialize()
    db.close()
    return data


@pytest.mark.parametrize("store", ["parquet", "sqlite"])
def test_the_key_der_wrapped_in_base64_as_a_tables_value_stops_the_erasure(proj, store):
    # The DER-wrapped key's base64 (46 letters and ``==``) as a value of its own: a table's
    # values were picked for a key's run of 43 letters, and the erasure certified.
    suffix = ".parquet" if store == "parquet" else ".db"

    def made(key: bytes) -> bytes:
        return _table(_der_b64(key), store)

    _stops_until_taken_out(proj, proj.paths.root / "data" / "interim", suffix, made)


def _b32(key: bytes) -> str:
    """The key in base32 (RFC 4648) as TOTP tools and some secret managers print one: 52
    letters and ``====``."""
    return base64.b32encode(key).decode()


# The key's base32 in a text: a log, a .env line (unpadded), a JSON value; each the base32 as
# it lies, and the text around it.
_B32_TEXTS = {
    "log": (_b32, lambda b: f"run 12\ntotp secret: {b}\nthreshold 0.41\n"),
    "env": (lambda k: _b32(k).rstrip("="), lambda b: f"DB_HOST=localhost\nDATA_KEY={b}\nDEBUG=0\n"),
    "json": (_b32, lambda b: json.dumps({"kind": "data", "key": b})),
}


@pytest.mark.parametrize("form", sorted(_B32_TEXTS))
def test_the_key_in_base32_is_found_and_cut(proj, form):
    # Base32 of the key (56 characters, or 52 unpadded) is no run of a key's length in base64
    # or hex, and the erasure certified with it in the text: the key opens every sealed copy.
    root, victim, other = proj.paths.root, proj.pids[0], proj.pids[1]
    encode, around = _B32_TEXTS[form]
    key, theirs = _data_key(proj, victim), _data_key(proj, other)
    text, kept = around(encode(key)), around(encode(theirs))
    path = _put(root / "reports" / "secrets.txt", text)
    other_path = _put(root / "reports" / "theirs.txt", kept)

    result = Erasure(proj.paths).erase(victim)

    assert path.read_text(encoding="utf-8") == around("")
    assert other_path.read_text(encoding="utf-8") == kept
    _put_back_fails(result, path, text, root=root)


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("store", ["parquet", "sqlite"])
def test_the_key_in_base32_as_a_tables_value_stops_the_erasure(proj, store, padded):
    suffix = ".parquet" if store == "parquet" else ".db"

    def made(key: bytes) -> bytes:
        return _table(_b32(key) if padded else _b32(key).rstrip("="), store)

    _stops_until_taken_out(proj, proj.paths.root / "data" / "interim", suffix, made)


def test_base32_near_a_key_is_no_key(tmp_path):
    # 52 letters within a longer run of base32, or of 33 bytes, decode to no key: looked at and
    # let go, nothing hashed as a key's.
    key = os.urandom(32)
    sha = hashlib.sha256(key).hexdigest()
    assert sha in set(embedded.inside(f"k: {_b32(key)}\n".encode(), embedded.TEXT))
    for near in (
        f"k: A{_b32(key).rstrip('=')}\n",
        f"k: {_b32(key).rstrip('=')}Q\n",
        f"k: {_b32(key + b'!')}\n",
    ):
        assert sha not in set(embedded.inside(near.encode(), embedded.TEXT))
