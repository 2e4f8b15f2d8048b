"""DVC's record of a tracked folder told against the workspace without the DVC cache."""

from __future__ import annotations

import os
import shutil

import pytest

from visage_ml.dvcops import FolderState, folder_state, track, tracked_objects


@pytest.mark.pipeline
def test_a_folder_is_told_as_dvc_add_recorded_it_without_the_dvc_cache(tiny_project):
    """`dvc add` of a folder (nested, a name not in ASCII, an empty file, one of several
    read blocks, a file .dvcignore leaves out), then its cache gone: the workspace is what the
    record holds. A file gone, one more, or other bytes of the same size, and it is not; nor
    where the record is of DVC 2's hash, which is not reproduced."""
    root = tiny_project(dvc=True)
    folder = root / "data" / "things"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (root / ".dvcignore").write_text("*.tmp\n", encoding="utf-8")
    (folder / "big.bin").write_bytes(os.urandom((3 << 20) + 7))
    (folder / "sub" / "café.txt").write_bytes(b"line\r\n")
    (folder / "sub" / "deeper" / "empty").write_bytes(b"")
    (folder / "Z.txt").write_bytes(b"z")
    (folder / "scratch.tmp").write_bytes(b"ignored by DVC")
    assert track(root, folder) is not None
    record = root / "data" / "things.dvc"
    shutil.rmtree(root / ".dvc" / "cache")
    assert tracked_objects(folder) is None

    assert folder_state(folder) == FolderState(4, 4, True)

    (folder / "Z.txt").write_bytes(b"y")
    assert folder_state(folder) == FolderState(4, 4, False)
    (folder / "Z.txt").unlink()
    assert folder_state(folder) == FolderState(3, 4, False)
    (folder / "Z.txt").write_bytes(b"z")
    (folder / "sub" / "more").write_bytes(b"")
    assert folder_state(folder) == FolderState(5, 4, False)
    (folder / "sub" / "more").unlink()
    assert folder_state(folder).same

    text = record.read_text(encoding="utf-8")
    assert "  hash: md5\n" in text, text
    record.write_text(text.replace("  hash: md5\n", ""), encoding="utf-8")
    assert not folder_state(folder).same
