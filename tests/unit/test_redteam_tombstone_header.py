"""Red team on the version 2 tombstone header (``{"v":2,"n":COUNT,"mac":HMAC(set)}``): someone
who may write ``privacy/`` but holds no tombstone key edits the set together with its header.

Without the key they cannot tell whose MAC is whose, but they can drop every MAC (or a random
part) and write a header that needs no key: the set MAC left out, the header of the first
version 2 files (``{"v":2}``), a version 1 file, an empty file. Each must fail every question
once the file has carried a set MAC, never answer "not erased" (and never be rewritten with a
fresh set MAC, which would launder the edit). An honest migration without the key, the key
restored afterwards, still works.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_tombstones import _v1_line

from visage_ml.privacy.tombstones import TombstoneFileError, TombstoneKeyError, Tombstones

PID_A = "p" + "a" * 16
PID_B = "p" + "b" * 16


def _fresh(tmp_path: Path) -> Tombstones:
    return Tombstones(tmp_path / "privacy" / "tombstones.jsonl", tmp_path / "secrets" / "t.key")


def _answers_not_erased(t: Tombstones) -> bool:
    """Whether a reader (as a fresh process) lets the erased PID_A back."""
    reader = Tombstones(t.path, t.key_path)
    try:
        return not reader.has_subject(PID_A)
    except TombstoneKeyError:
        return False


def _forge(t: Tombstones, how: str) -> None:
    """The file as an intruder without the key leaves it: every MAC dropped but PID_B's
    neighbours (they cannot tell which is which), under a header that needs no key."""
    lines = t.path.read_text().splitlines()
    macs = sorted(json.loads(ln) for ln in lines[1:])
    kept = macs[: len(macs) // 2]  # any part: the intruder cannot choose whom
    if t.mac("pid", PID_A) in kept:
        kept = macs[len(macs) // 2 :]
    body = [json.dumps(m) for m in kept]
    if how == "header_without_mac":
        text = "\n".join([json.dumps({"v": 2, "n": len(kept)}), *body]) + "\n"
    elif how == "first_v2_header":
        text = "\n".join(['{"v":2}', *body]) + "\n"
    elif how == "version_1_file":
        text = '{"v":1,"subject":"' + "0" * 64 + '","macs":[],"day":"2025-01-31"}\n'
    elif how == "empty_file":
        text = ""
    else:  # the file deleted
        t.path.unlink()
        return
    t.path.write_text(text)


@pytest.mark.parametrize(
    "how",
    ["header_without_mac", "first_v2_header", "version_1_file", "empty_file", "deleted"],
)
def test_a_set_edited_with_a_header_that_needs_no_key_does_not_let_an_erased_person_back(
    tmp_path, how
):
    t = _fresh(tmp_path)
    t.add(PID_A, refs=["HR-1 Zelda"], sha256s=["1" * 64], plains=["2" * 64])
    t.add(PID_B, refs=["HR-2 Yorick"], sha256s=["3" * 64])
    assert json.loads(t.path.read_text().splitlines()[0]).get("mac")

    _forge(t, how)
    before = t.path.read_bytes() if t.path.exists() else None
    assert not _answers_not_erased(t), f"{how}: the erased subject reads as never erased"
    # Not laundered: no reader gave the edited set a fresh set MAC.
    after = t.path.read_bytes() if t.path.exists() else None
    assert after == before
    with pytest.raises(TombstoneFileError):
        Tombstones(t.path, t.key_path).has_ref("HR-2 Yorick")


def test_an_edited_set_keeps_failing_after_an_erasure_tries_to_add_to_it(tmp_path):
    t = _fresh(tmp_path)
    t.add(PID_A, refs=["HR-1 Zelda"])
    _forge(t, "header_without_mac")
    with pytest.raises(TombstoneFileError):
        Tombstones(t.path, t.key_path).add("p" + "c" * 16, refs=["HR-3"])
    assert not _answers_not_erased(t)


def test_a_version_1_file_migrated_without_the_key_answers_once_the_key_is_restored(tmp_path):
    # The honest path: an older file, the key not restored yet, something reads the file
    # (a count); then the key comes back from its backup.
    t = _fresh(tmp_path)
    key = os.urandom(32)
    t.path.parent.mkdir(parents=True)
    t.path.write_bytes(_v1_line(key, PID_A, ["HR-1"], []) + _v1_line(key, PID_B, ["HR-2"], []))
    assert len(Tombstones(t.path, t.key_path)) == 4
    t.key_path.parent.mkdir(parents=True)
    t.key_path.write_bytes(key)
    reader = Tombstones(t.path, t.key_path)
    assert reader.has_subject(PID_A) and reader.has_ref("HR-2")
    assert json.loads(t.path.read_text().splitlines()[0]).get("mac")
    # ... and from then on, a header without its set MAC is an edit.
    _forge(t, "header_without_mac")
    assert not _answers_not_erased(t)


def test_a_first_version_2_file_is_still_read_and_sealed_by_the_key_holder(tmp_path):
    # Files written before the header counted and MACed the set: read, then rewritten with both.
    t = _fresh(tmp_path)
    key = os.urandom(32)
    t.key_path.parent.mkdir(parents=True)
    t.key_path.write_bytes(key)
    macs = sorted([Tombstones.mac_with(key, "pid", PID_A), Tombstones.mac_with(key, "ref", "x")])
    t.path.parent.mkdir(parents=True)
    t.path.write_text("\n".join(['{"v":2}', *(json.dumps(m) for m in macs)]) + "\n")
    assert Tombstones(t.path, t.key_path).has_subject(PID_A)
    assert json.loads(t.path.read_text().splitlines()[0]).get("mac")
