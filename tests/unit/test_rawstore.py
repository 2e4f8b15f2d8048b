"""RawStore: atomic swap of data/raw, untouched tree on failure, crash recovery, table merge."""

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from project_helpers import cached_object, follow_first_advice

from visage_ml import dvcops
from visage_ml.config import ProjectPaths
from visage_ml.data import rawstore
from visage_ml.data.rawstore import RawStore, read_images, read_subjects

PID_A = "p" + "a" * 16
PID_B = "p" + "b" * 16


def tree(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of content (folders as '<dir>'): a byte-level fingerprint."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def leftovers(paths: ProjectPaths) -> list[str]:
    return sorted(p.name for p in paths.data.iterdir() if p.name.startswith("raw."))


def image_row(pid: str, image_id: str, png: bytes, **attrs) -> dict:
    return {
        "pid": pid,
        "image_id": image_id,
        "sha256": hashlib.sha256(png).hexdigest(),
        "source_sha256": None,
        "width": 40,
        "height": 40,
        **attrs,
    }


def commit_one(store: RawStore, pid: str, png: bytes, **subject) -> str:
    with store.transaction() as txn:
        image_id = txn.write_image(pid, png)
        txn.add_subjects([{"pid": pid, "source": "test", **subject}])
        txn.add_images([image_row(pid, image_id, png)])
    assert txn.committed
    return image_id


@pytest.fixture
def store(project: Path) -> RawStore:
    return RawStore(ProjectPaths(project))


def test_commit_writes_files_and_tables_and_leaves_no_staging(store, caplog):
    caplog.set_level(logging.WARNING)
    paths = store.paths
    a1 = commit_one(store, PID_A, b"png-a1", age=31, gender="female", group="g2")
    b1 = commit_one(store, PID_B, b"png-b1")
    assert store.read_image(PID_A, a1) == b"png-a1"
    assert store.read_image(PID_B, b1) == b"png-b1"
    assert rawstore.IMAGE_ID_RE.fullmatch(a1) and a1 != b1
    subjects = read_subjects(paths.raw)
    assert list(subjects["pid"]) == [PID_A, PID_B]
    a = subjects.set_index("pid").loc[PID_A]
    assert (int(a["age"]), a["gender"], a["group"], int(a["n_images"])) == (31, "female", "g2", 1)
    assert list(read_images(paths.raw)["image_id"]) == [a1, b1]
    assert leftovers(paths) == []
    # Outside a DVC repository: a warning, not a failure; the consent snapshot is refreshed.
    assert "not a DVC repository" in caplog.text
    assert paths.consents.exists()


def test_tables_have_the_documented_arrow_schema(store):
    commit_one(store, PID_A, b"x", age=40)
    assert pq.read_schema(store.paths.subjects).remove_metadata().equals(rawstore.SUBJECTS_SCHEMA)
    images_schema = pq.read_schema(store.paths.raw / "images.parquet").remove_metadata()
    assert images_schema.equals(rawstore.IMAGES_SCHEMA)
    assert images_schema.field("age").type == pa.int16()


def test_existing_files_are_hard_linked_not_rewritten(store):
    a1 = commit_one(store, PID_A, b"first")
    inode = store.image_path(PID_A, a1).stat().st_ino
    commit_one(store, PID_B, b"second")
    assert store.image_path(PID_A, a1).stat().st_ino == inode


def test_links_folders_and_modes_survive_a_transaction(store, tmp_path):
    """What else sits in data/raw (a DVC cache link, a linked folder, a private folder) is
    mirrored as it is."""
    commit_one(store, PID_A, b"first")
    raw = store.paths.raw
    (tmp_path / "notes.txt").write_text("n")
    (tmp_path / "extra").mkdir()
    os.symlink(tmp_path / "notes.txt", raw / "notes.txt")
    os.symlink(tmp_path / "extra", raw / "extra")
    (raw / "private" / "deep").mkdir(parents=True)
    (raw / "private" / "deep" / "f.bin").write_bytes(b"x")
    os.chmod(raw / "private", 0o700)
    commit_one(store, PID_B, b"second")
    assert os.readlink(raw / "notes.txt") == str(tmp_path / "notes.txt")
    assert os.readlink(raw / "extra") == str(tmp_path / "extra")
    assert (raw / "private" / "deep" / "f.bin").read_bytes() == b"x"
    assert (raw / "private").stat().st_mode & 0o777 == 0o700
    assert int(read_subjects(raw)["n_images"].sum()) == 2


def test_copies_when_the_file_system_refuses_hard_links(store, monkeypatch):
    a1 = commit_one(store, PID_A, b"first")

    def no_links(*args, **kwargs):
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(rawstore.os, "link", no_links)
    commit_one(store, PID_B, b"second")
    assert store.read_image(PID_A, a1) == b"first"
    assert int(read_subjects(store.paths.raw)["n_images"].sum()) == 2


def test_exception_inside_the_block_leaves_raw_byte_identical(store):
    commit_one(store, PID_A, b"keep me")
    before = tree(store.paths.raw)
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as txn:
        image_id = txn.write_image(PID_B, b"new")
        txn.add_subjects([{"pid": PID_B, "source": "test"}])
        txn.add_images([image_row(PID_B, image_id, b"new")])
        raise RuntimeError("boom")
    assert tree(store.paths.raw) == before
    assert leftovers(store.paths) == []


def test_failure_while_writing_tables_leaves_raw_byte_identical(store, monkeypatch):
    commit_one(store, PID_A, b"keep me")
    before = tree(store.paths.raw)
    calls = {"n": 0}
    real = rawstore.table_bytes

    def second_table_fails(df, schema):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(df, schema)

    monkeypatch.setattr(rawstore, "table_bytes", second_table_fails)
    with pytest.raises(OSError, match="No space"):
        commit_one(store, PID_B, b"new")
    assert tree(store.paths.raw) == before
    assert leftovers(store.paths) == []


def test_failed_second_rename_puts_the_old_tree_back(store, monkeypatch):
    commit_one(store, PID_A, b"keep me")
    before = tree(store.paths.raw)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(rawstore.STAGING_PREFIX):
            raise OSError(errno.EIO, "I/O error")
        real_rename(src, dst)

    monkeypatch.setattr(rawstore.os, "rename", rename)
    with pytest.raises(OSError, match="I/O error"):
        commit_one(store, PID_B, b"new")
    assert tree(store.paths.raw) == before
    assert leftovers(store.paths) == []


def lock_is_free(store: RawStore) -> bool:
    fd = os.open(store.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def test_then_runs_after_the_swap_with_the_lock_held(store):
    # What names data/raw's images (the LFW pairs) is written where no erasure can interleave.
    seen = []

    def check() -> None:
        seen.append((read_images(store.paths.raw)["image_id"].tolist(), lock_is_free(store)))

    with store.transaction() as txn:
        image_id = txn.write_image(PID_A, b"\x89PNG one")
        txn.add_subjects([{"pid": PID_A, "source": "test"}])
        txn.add_images([image_row(PID_A, image_id, b"\x89PNG one")])
        txn.then(check)
    assert seen == [([image_id], False)]
    assert lock_is_free(store)

    with store.transaction() as txn:
        txn.then(check)
        txn.discard()
    assert seen[-1] == ([image_id], False)

    with pytest.raises(RuntimeError), store.transaction() as txn:
        txn.then(check)
        raise RuntimeError("no commit, no callback")
    assert len(seen) == 2


def test_rows_without_files_are_refused_before_the_swap(store):
    commit_one(store, PID_A, b"keep me")
    before = tree(store.paths.raw)
    with pytest.raises(ValueError, match="has no file"), store.transaction() as txn:
        txn.add_subjects([{"pid": PID_B, "source": "test"}])
        txn.add_images([image_row(PID_B, txn.new_image_id(), b"ghost")])
    with pytest.raises(ValueError, match="no subjects row"), store.transaction() as txn:
        image_id = txn.write_image(PID_B, b"orphan")
        txn.add_images([image_row(PID_B, image_id, b"orphan")])
    assert tree(store.paths.raw) == before


def test_recovery_rolls_forward_a_swap_interrupted_between_the_renames(store):
    paths = store.paths
    commit_one(store, PID_A, b"old")
    # A crash after `raw -> raw.old-T` and before `staging-T -> raw`: staging is complete.
    complete = paths.data / "raw.staging-t1"
    os.rename(paths.raw, paths.data / "raw.old-t1")
    (complete / PID_B).mkdir(parents=True)
    (complete / PID_B / "i000000000001.sealed").write_bytes(b"new")
    actions = store.recover()
    assert actions[0].startswith("rolled forward")
    assert (paths.raw / PID_B / "i000000000001.sealed").read_bytes() == b"new"
    assert leftovers(paths) == []


def test_recovery_rolls_back_when_no_staging_survived(store):
    paths = store.paths
    commit_one(store, PID_A, b"old")
    before = tree(paths.raw)
    os.rename(paths.raw, paths.data / "raw.old-t2")
    assert store.recover()[0].startswith("rolled back")
    assert tree(paths.raw) == before


def test_next_transaction_removes_stale_staging_and_old_folders(store):
    paths = store.paths
    commit_one(store, PID_A, b"old")
    before = tree(paths.raw)
    (paths.data / "raw.staging-dead" / PID_B).mkdir(parents=True)
    (paths.data / "raw.old-done").mkdir()
    with store.transaction() as txn:
        txn.discard()
    assert leftovers(paths) == []
    assert tree(paths.raw) == before


def test_merge_adds_images_to_a_known_pid_and_fills_unknown_attributes(store):
    commit_one(store, PID_A, b"one", age=30)
    with store.transaction() as txn:
        image_id = txn.write_image(PID_A, b"two")
        txn.add_subjects([{"pid": PID_A, "age": 99, "gender": "male", "source": "other"}])
        txn.add_images([image_row(PID_A, image_id, b"two", gender="male")])
    row = read_subjects(store.paths.raw).set_index("pid").loc[PID_A]
    # Recorded values are kept, unknown ones filled, the image count adds up.
    assert (int(row["age"]), row["gender"], row["source"], int(row["n_images"])) == (
        30,
        "male",
        "test",
        2,
    )
    assert len(read_images(store.paths.raw)) == 2


def test_merge_keeps_columns_written_by_another_writer(store):
    commit_one(store, PID_A, b"one")
    images = read_images(store.paths.raw).assign(landmarks_ok=True)
    (store.paths.raw / "images.parquet").unlink()
    images.to_parquet(store.paths.raw / "images.parquet", index=False)
    commit_one(store, PID_B, b"two")
    merged = read_images(store.paths.raw)
    assert "landmarks_ok" in merged.columns
    assert bool(merged["landmarks_ok"].iloc[0])
    assert pd.isna(merged["landmarks_ok"].iloc[1])


def test_staged_images_are_placed_or_dropped(store):
    with store.transaction() as txn:
        kept, dropped = txn.stage(b"kept"), txn.stage(b"dropped")
        txn.place(kept, PID_A)
        txn.add_subjects([{"pid": PID_A, "source": "test"}])
        txn.add_images([image_row(PID_A, kept, b"kept")])
        assert dropped != kept
    files = sorted(
        p.relative_to(store.paths.raw).as_posix()
        for p in store.paths.raw.rglob("*")
        if p.is_file() and not p.name.endswith(".parquet")
    )
    assert files == [f"{PID_A}/{kept}.sealed"]
    assert store.read_image(PID_A, kept) == b"kept"
    assert not (store.paths.raw / rawstore.PENDING_DIR).exists()


def test_replace_starts_from_an_empty_tree(store):
    commit_one(store, PID_A, b"old")
    with store.transaction(replace=True) as txn:
        image_id = txn.write_image(PID_B, b"new")
        txn.add_subjects([{"pid": PID_B, "source": "test"}])
        txn.add_images([image_row(PID_B, image_id, b"new")])
    assert list(read_subjects(store.paths.raw)["pid"]) == [PID_B]
    assert not (store.paths.raw / PID_A).exists()


def test_bad_gender_and_pid_are_refused(store):
    with pytest.raises(ValueError, match="gender"), store.transaction() as txn:
        image_id = txn.write_image(PID_A, b"x")
        txn.add_subjects([{"pid": PID_A, "gender": "f", "source": "test"}])
        txn.add_images([image_row(PID_A, image_id, b"x")])
    with pytest.raises(ValueError, match="not a visage pid"), store.transaction() as txn:
        txn.write_image("Alice", b"x")
    assert not store.paths.raw.exists()


# -- sealing ----------------------------------------------------------------------------------


def test_images_are_sealed_private_and_bound_to_their_subject(store):
    png = b"\x89PNG\r\n\x1a\n" + b"face pixels " * 50
    a1 = commit_one(store, PID_A, png)
    path = store.image_path(PID_A, a1)
    blob = path.read_bytes()
    # Ciphertext on disk: not the PNG, not a byte run of it; 0600 in a 0700 folder.
    assert png[:8] not in blob and b"face pixels" not in blob
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert store.paths.raw.stat().st_mode & 0o777 == 0o700
    # The key lives in privacy/keys, never under data/ (which DVC pushes).
    assert store.keys.path(PID_A).is_file()
    assert not any(p.suffix == ".key" for p in store.paths.data.rglob("*"))
    # An operator moving the file into another subject's folder gets a refusal, not the image.
    commit_one(store, PID_B, b"other")
    moved = store.paths.raw / PID_B / path.name
    moved.write_bytes(blob)
    with pytest.raises(ValueError, match="sealed as"):
        store.read_image(PID_B, a1)
    # One flipped byte: refused.
    tampered = bytearray(blob)
    tampered[-5] ^= 1
    path.write_bytes(bytes(tampered))
    with pytest.raises(ValueError, match="fails authentication"):
        store.read_image(PID_A, a1)


def test_staged_images_are_sealed_before_the_pid_is_known(store, monkeypatch):
    """A crash during an import leaves no readable face in the staging folder."""
    seen = {}
    with store.transaction() as txn:
        image_id = txn.stage(b"\x89PNG staged face")
        staged = txn.staging / rawstore.PENDING_DIR / f"{image_id}{rawstore.STAGED_EXT}"
        seen["blob"] = staged.read_bytes()
        txn.discard()
    assert b"staged face" not in seen["blob"] and b"PNG" not in seen["blob"]


def test_a_plaintext_image_in_raw_is_refused_with_the_fix(store):
    a1 = commit_one(store, PID_A, b"x")
    store.image_path(PID_A, a1).unlink()
    store.image_path(PID_A, a1).with_suffix(".png").write_bytes(b"\x89PNG plaintext")
    with pytest.raises(ValueError, match="visage privacy seal"):
        store.read_image(PID_A, a1)


def test_a_destroyed_key_makes_the_image_unreadable(store):
    from visage_ml.privacy.datakeys import NoDataKeyError

    a1 = commit_one(store, PID_A, b"\x89PNG face")
    store.keys.destroy(PID_A)
    with pytest.raises(NoDataKeyError, match="was erased"):
        store.read_image(PID_A, a1)


def _not_checked_out(paths: ProjectPaths, how: str) -> Callable[[], None]:
    """``data/raw``'s tables not in the workspace, as ``how`` says (`dvc checkout` not run, or
    cut short); returns what `dvc checkout data/raw` would do: put them back."""
    raw = paths.raw
    away = paths.root / "checked-in"
    dvcfile = paths.data / "raw.dvc"
    if how.startswith("tracked"):
        dvcfile.write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  path: raw\n")
    if how in ("tracked", "tracked_empty"):  # a fresh clone: nothing of data/raw checked out
        raw.rename(away)
        if how == "tracked_empty":
            raw.mkdir()

        def restore() -> None:
            if raw.exists():
                raw.rmdir()
            away.rename(raw)

        return restore
    # "no_images_table", "no_subjects_table": cut short; "folders_only": the photographs'
    # folders checked out, no table (a project DVC does not track, restored from a backup).
    names = {
        "no_images_table": ["images.parquet"],
        "no_subjects_table": ["subjects.parquet"],
        "folders_only": ["subjects.parquet", "images.parquet"],
    }[how]
    away.mkdir()
    for name in names:
        (raw / name).rename(away / name)

    def restore() -> None:
        for name in names:
            (away / name).rename(raw / name)

    return restore


@pytest.mark.parametrize(
    "how",
    ["no_images_table", "no_subjects_table", "folders_only", "tracked", "tracked_empty"],
)
def test_a_transaction_whose_tables_are_not_checked_out_refuses_to_begin(store, how):
    """data/raw's tables not in the workspace (`dvc checkout` not run, or cut short): a
    transaction read the absent table as empty and wrote both back, holding only its own rows,
    and `dvc add data/raw` made that the current version: every earlier subject's rows gone
    from it (an import, SynthFaces, a purge). Refused now before anything is staged, nothing
    written, saying what to run; once checked out, the same change keeps everyone's rows."""
    paths = store.paths
    a1 = commit_one(store, PID_A, b"earlier subject")
    restore = _not_checked_out(paths, how)
    before = tree(paths.root)

    with pytest.raises(rawstore.RawDataMissingError, match=r"run `dvc checkout data/raw`") as err:
        commit_one(store, PID_B, b"new subject")

    said = str(err.value)
    assert "nothing was changed" in said, said
    # The record's listing is not in the cache where it is tracked here: fetch it first.
    fetch_first = "run `dvc fetch data/raw` first" in said
    assert fetch_first == how.startswith("tracked"), said
    assert PID_A not in said and PID_B not in said  # no subject named: the cause is the checkout
    assert tree(paths.root) == before  # no staging folder left either

    restore()
    b1 = commit_one(store, PID_B, b"new subject")
    assert list(read_subjects(paths.raw)["pid"]) == [PID_A, PID_B]
    assert list(read_images(paths.raw)["image_id"]) == [a1, b1]


@pytest.mark.parametrize("how", ["no_raw", "empty_raw"])
def test_the_first_transaction_of_a_new_project_creates_both_tables(store, how):
    """A new project (no data/raw, or an empty one DVC does not track): nothing is expected in
    the tables, so the first import writes them."""
    if how == "empty_raw":
        store.paths.raw.mkdir(parents=True)
    a1 = commit_one(store, PID_A, b"first subject")
    assert list(read_subjects(store.paths.raw)["pid"]) == [PID_A]
    assert list(read_images(store.paths.raw)["image_id"]) == [a1]


def _track_as_dvc_did(paths: ProjectPaths, listing: list[str] | None) -> None:
    """``data/raw.dvc`` as ``dvc add data/raw`` writes it, and its ``.dir`` object in the
    project's DVC cache listing ``listing`` (the object left out where None: not pulled, a
    record of three files)."""
    body = json.dumps([{"md5": "0" * 32, "relpath": rel} for rel in listing or []])
    md5 = hashlib.md5(body.encode(), usedforsecurity=False).hexdigest()  # as DVC names it
    nfiles = 3 if listing is None else len(listing)
    (paths.data / "raw.dvc").write_text(
        f"outs:\n- md5: {md5}.dir\n  size: 0\n  nfiles: {nfiles}\n  hash: md5\n  path: raw\n"
    )
    if listing is not None:
        obj = paths.root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / f"{md5[2:]}.dir"
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_text(body)


@pytest.mark.parametrize("listing", [[], ["README.md"]], ids=["empty", "no_table"])
def test_a_data_raw_dvc_tracked_without_tables_takes_its_first_transaction(store, listing):
    """`dvc add data/raw` run on a folder that held no table yet (a project set up before its
    first import): DVC's record says no table was ever there, so nothing is expected of one.
    The transaction refused, saying to run `dvc checkout data/raw`, which brings no table:
    no import could ever begin."""
    paths = store.paths
    paths.raw.mkdir(parents=True)
    (paths.root / ".dvc").mkdir(exist_ok=True)
    _track_as_dvc_did(paths, listing)
    a1 = commit_one(store, PID_A, b"first subject")
    assert list(read_images(paths.raw)["image_id"]) == [a1]


def test_a_data_raw_dvc_listing_the_tables_refuses_the_transaction_while_they_are_away(store):
    """The same record listing the tables (the object in the cache), or not in the cache at all
    (not pulled: nothing says they were not there): rows are expected, the transaction
    refused."""
    paths = store.paths
    commit_one(store, PID_A, b"earlier subject")
    (paths.root / ".dvc").mkdir(exist_ok=True)
    for listing in (["images.parquet", "subjects.parquet", f"{PID_A}/x.sealed"], None):
        _track_as_dvc_did(paths, listing)
        for name in ("images.parquet", "subjects.parquet"):
            (paths.raw / name).rename(paths.root / name)
        with pytest.raises(rawstore.RawDataMissingError, match="DVC tracks data/raw"):
            commit_one(store, PID_B, b"new subject")
        for name in ("images.parquet", "subjects.parquet"):
            (paths.root / name).rename(paths.raw / name)


@pytest.mark.pipeline
def test_the_files_dvc_records_in_a_folder_are_read_from_its_cache_wherever_it_is(tmp_path):
    """What `dvc add` recorded, read as DVC wrote it: an empty folder's record (no cache
    needed), a folder's, from a cache set with `dvc config cache.dir` (relative to .dvc/);
    None where its object is not in the cache."""
    root = tmp_path / "repo"
    (root / "data" / "raw").mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc = [*dvcops.dvc_executable()]
    run = partial(subprocess.run, cwd=root, env=dvcops.dvc_env(), check=True, capture_output=True)
    run([*dvc, "init", "-q"])
    run([*dvc, "config", "cache.dir", str(tmp_path / "elsewhere")])
    raw = root / "data" / "raw"
    run([*dvc, "add", "-q", "data/raw"])
    assert dvcops.tracked_listing(raw) == []
    (raw / "subjects.parquet").write_bytes(b"a")
    (raw / "p").mkdir()
    (raw / "p" / "x.sealed").write_bytes(b"b")
    run([*dvc, "add", "-q", "data/raw"])
    assert sorted(dvcops.tracked_listing(raw)) == ["p/x.sealed", "subjects.parquet"]
    shutil.rmtree(tmp_path / "elsewhere")
    assert dvcops.tracked_listing(raw) is None


def _dvc_repo(root: Path) -> Callable[..., subprocess.CompletedProcess]:
    """``root`` made a git + DVC repository; returns how to run ``dvc`` there."""
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    run = partial(subprocess.run, cwd=root, env=dvcops.dvc_env(), capture_output=True, text=True)
    dvc = partial(lambda *args: run([*dvcops.dvc_executable(), *args]))
    assert dvc("init", "-q").returncode == 0
    return dvc


def _dvc_in(root: Path, *args: str) -> subprocess.CompletedProcess:
    """``dvc args`` run in the repository ``root``."""
    cmd = [*dvcops.dvc_executable(), *args]
    return subprocess.run(cmd, cwd=root, env=dvcops.dvc_env(), capture_output=True, text=True)


def _links_and_files(root: Path) -> dict[str, str]:
    """:func:`tree`, a link told by its target (one whose target is gone too)."""
    return {
        p.relative_to(root).as_posix(): f"-> {os.readlink(p)}"
        if p.is_symlink()
        else ("<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.pipeline
@pytest.mark.parametrize("how", ["a_photograph", "a_folder", "a_broken_link"])
def test_a_transaction_where_data_raw_is_checked_out_in_part_refuses_to_begin(store, how):
    """Both tables there, but photographs they list not (`dvc checkout` cut short, or run for
    some files; files deleted): the transaction linked what was there, and `dvc add data/raw`
    made a version without the others, so `dvc checkout data/raw` then brought them back no
    more. Refused now before anything is staged, saying what to run; once checked out, the
    same change keeps every photograph."""
    paths = store.paths
    dvc = _dvc_repo(paths.root)
    if how == "a_broken_link":  # DVC's symlink cache type, the object not pulled
        assert dvc("config", "cache.type", "symlink").returncode == 0
    ids = _two_photographs_tracked(store)
    record = (paths.data / "raw.dvc").read_text()
    photo = paths.raw / PID_A / f"{ids[1]}.sealed"
    if how == "a_photograph":
        photo.unlink()
    elif how == "a_folder":
        shutil.rmtree(paths.raw / PID_A)
    else:
        cached = photo.resolve()
        cached.chmod(0o600)
        cached.unlink()
    before = _links_and_files(paths.data)

    with pytest.raises(rawstore.RawDataMissingError, match=r"run `dvc checkout data/raw`") as err:
        commit_one(store, PID_B, b"new subject")

    said = " ".join(str(err.value).split())
    assert "checked out only in part" in said and "nothing was changed" in said, said
    assert PID_A not in said and PID_B not in said and ids[1] not in said
    assert _links_and_files(paths.data) == before  # no staging folder left either
    assert (paths.data / "raw.dvc").read_text() == record

    if how == "a_broken_link":
        return  # the object is gone from the cache here: `dvc pull` from a remote brings it
    assert dvc("checkout", "data/raw").returncode == 0
    commit_one(store, PID_B, b"new subject")
    assert dvc("checkout", "data/raw").returncode == 0
    assert sorted(p.stem for p in (paths.raw / PID_A).iterdir()) == sorted(ids)


@pytest.mark.pipeline
def test_a_photograph_not_in_the_dvc_cache_either_is_refused_without_advice_that_empties_data_raw(
    store,
):
    """A photograph gone from the workspace and from the DVC cache: `dvc checkout data/raw`,
    which the refusal advised, takes the whole folder out of the workspace (DVC checks a folder
    out whole or not at all), tables and every photograph, and checks nothing out again. The
    refusal now says so, and to fetch first; `dvc fetch` touches no workspace file, and once the
    object is back in the cache the advised checkout restores the photograph."""
    paths = store.paths
    dvc = _dvc_repo(paths.root)
    ids = _two_photographs_tracked(store)
    photo = paths.raw / PID_A / f"{ids[1]}.sealed"
    md5 = hashlib.md5(photo.read_bytes(), usedforsecurity=False).hexdigest()
    cached = paths.root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    kept = cached.read_bytes()
    photo.unlink()
    cached.chmod(0o600)
    cached.unlink()

    with pytest.raises(rawstore.RawDataMissingError) as err:
        commit_one(store, PID_B, b"new subject")

    said = " ".join(str(err.value).split())
    assert "not in the DVC cache" in said and "run `dvc fetch data/raw`" in said, said
    assert "whole" in said and "lost" in said, said
    followed = paths.root.parent / "followed"  # the advice before: in a copy, it empties it
    shutil.copytree(paths.root, followed, symlinks=True)
    assert _dvc_in(followed, "checkout", "data/raw").returncode != 0
    assert not (followed / "data" / "raw").exists()
    before = _links_and_files(paths.data)
    dvc("fetch", "data/raw")  # no remote here: nothing fetched, no workspace file moved
    assert _links_and_files(paths.data) == before
    cached.write_bytes(kept)  # the object back, as `dvc fetch` from a remote holding it brings it
    with pytest.raises(rawstore.RawDataMissingError, match=r"run `dvc checkout data/raw`") as err:
        commit_one(store, PID_B, b"new subject")
    assert "not in the DVC cache" not in str(err.value)
    assert dvc("checkout", "data/raw").returncode == 0 and photo.is_file()
    commit_one(store, PID_B, b"new subject")


def _two_photographs_tracked(store: RawStore) -> list[str]:
    """Two photographs of one subject written in a transaction, which `dvc add`s data/raw where
    DVC is there; their image ids."""
    photos = (b"first", b"second")
    with store.transaction() as txn:
        ids = [txn.write_image(PID_A, png) for png in photos]
        txn.add_subjects([{"pid": PID_A, "source": "test"}])
        txn.add_images([image_row(PID_A, i, png) for i, png in zip(ids, photos, strict=True)])
    assert txn.dvc_md5 or not (store.paths.root / ".dvc").is_dir()
    return ids


def _tracked_then_images_table_away(store: RawStore) -> tuple[list[str], Path]:
    """Two photographs of one subject written and tracked by DVC (`dvc add data/raw`), then
    ``images.parquet`` not in the workspace (a checkout cut short); returns the photographs'
    ids and the table's path."""
    ids = _two_photographs_tracked(store)
    table = store.paths.raw / "images.parquet"
    table.unlink()
    return ids, table


def _off_the_cache(store: RawStore, what: str, ids: list[str]) -> Callable[[], None]:
    """``what`` of data/raw's record taken out of the DVC cache (and out of the workspace,
    where it is a photograph: ``a_photograph``; ``a_photograph_there`` leaves the file);
    returns what `dvc fetch` from a remote holding it would do: put the object back."""
    paths = store.paths
    if what == "the_listing":
        md5 = str(dvcops.tracked_md5(paths.root, paths.raw))
    elif what == "the_table":
        md5 = dict(dvcops.tracked_objects(paths.raw) or {})["images.parquet"]
    else:
        photo = paths.raw / PID_A / f"{ids[1]}.sealed"
        md5 = hashlib.md5(photo.read_bytes(), usedforsecurity=False).hexdigest()
        if what == "a_photograph":
            photo.unlink()
    cached = cached_object(paths.root, md5)
    kept = cached.read_bytes()
    cached.chmod(0o600)
    cached.unlink()
    return lambda: cached.write_bytes(kept)


@pytest.mark.pipeline
@pytest.mark.parametrize("what", ["a_photograph", "the_table", "the_listing"])
def test_a_table_not_checked_out_whose_record_the_cache_lacks_is_refused_with_fetch_first(
    store, tmp_path, what
):
    """images.parquet not in the workspace, and an object of data/raw's record not in the DVC
    cache either (a photograph not in the workspace, the table's own, the record's listing):
    the refusal said to run `dvc checkout data/raw`, which then fails and takes the whole
    folder out of the workspace, its other table and every photograph (DVC checks a folder out
    whole or not at all). It says now to fetch first (`dvc fetch` moves no workspace file);
    once the object is back in the cache, to check out, which restores everything."""
    paths = store.paths
    _dvc_repo(paths.root)
    ids, table = _tracked_then_images_table_away(store)
    fetched = _off_the_cache(store, what, ids)
    before = _links_and_files(paths.data)

    with pytest.raises(rawstore.RawDataMissingError) as err:
        commit_one(store, PID_B, b"new subject")

    said = " ".join(str(err.value).split())
    assert _links_and_files(paths.data) == before
    follow_first_advice(said, paths.root, tmp_path / "followed")
    assert _links_and_files(tmp_path / "followed" / "data") == before, said  # nothing taken out
    assert "not in the DVC cache" in said and "whole of data/raw" in said, said
    assert PID_A not in said and PID_B not in said and ids[1] not in said

    fetched()
    with pytest.raises(rawstore.RawDataMissingError, match=r"run `dvc checkout data/raw`") as err:
        commit_one(store, PID_B, b"new subject")
    assert "not in the DVC cache" not in str(err.value)
    assert _dvc_in(paths.root, "checkout", "data/raw").returncode == 0 and table.is_file()
    commit_one(store, PID_B, b"new subject")
    assert sorted(p.stem for p in (paths.raw / PID_A).iterdir()) == sorted(ids)


@pytest.mark.pipeline
@pytest.mark.parametrize("what", ["all_cached", "a_photograph_there"])
def test_a_table_not_checked_out_whose_record_checkout_can_restore_keeps_the_checkout_advice(
    store, tmp_path, what
):
    """images.parquet not in the workspace, and the DVC cache holds every object `dvc checkout
    data/raw` needs (a photograph whose object is gone but whose file is there, unchanged,
    needs none): the refusal says to check out, and following it brings the table back and
    takes nothing away."""
    paths = store.paths
    _dvc_repo(paths.root)
    ids, _table = _tracked_then_images_table_away(store)
    if what == "a_photograph_there":
        _off_the_cache(store, what, ids)
    before = _links_and_files(paths.data)

    with pytest.raises(rawstore.RawDataMissingError) as err:
        commit_one(store, PID_B, b"new subject")

    said = " ".join(str(err.value).split())
    assert "not in the DVC cache" not in said and "run `dvc checkout data/raw`" in said, said
    assert follow_first_advice(said, paths.root, tmp_path / "followed").returncode == 0
    restored = _links_and_files(tmp_path / "followed" / "data")
    assert restored.pop("raw/images.parquet", None) is not None and restored == before


def test_photographs_deleted_where_dvc_does_not_track_data_raw_do_not_stop_a_transaction(
    store, caplog
):
    """Where nothing can bring them back (DVC does not track data/raw), a photograph deleted
    stops no change: every import and erasure would be refused for good. A warning counts
    them."""
    paths = store.paths
    a1 = commit_one(store, PID_A, b"earlier subject")
    (paths.raw / PID_A / f"{a1}.sealed").unlink()
    caplog.set_level(logging.WARNING)
    b1 = commit_one(store, PID_B, b"new subject")
    assert list(read_images(paths.raw)["image_id"]) == [a1, b1]
    assert "1 photograph(s) that data/raw/images.parquet lists are not in data/raw" in caplog.text
    assert PID_A not in caplog.text


PID_C = "p" + "c" * 16


def _a_recorded_copy_the_tables_do_not_list(store: RawStore) -> Path:
    """Two photographs of one subject and one of another tracked by DVC, then a copy of the
    first subject's photograph filed under the other with a name of its own (no table lists
    it) and `dvc add`ed; returns the copy's path."""
    ids = _two_photographs_tracked(store)
    commit_one(store, PID_B, b"other subject")
    copy = store.paths.raw / PID_B / "kept.sealed"
    copy.write_bytes((store.paths.raw / PID_A / f"{ids[0]}.sealed").read_bytes())
    assert _dvc_in(store.paths.root, "add", "data/raw").returncode == 0
    return copy


def _without_the_listing(root: Path, what: str) -> Callable[[], None]:
    """``what`` of the DVC cache gone (``the_listing``: data/raw.dvc's .dir object;
    ``the_whole_cache``); returns what `dvc fetch data/raw` from a remote holding them would
    do: put them back."""
    cache = root / ".dvc" / "cache"
    kept = root.parent / "fetchable"
    shutil.copytree(cache, kept)
    if what == "the_listing":
        cached = cached_object(root, str(dvcops.tracked_md5(root, root / "data" / "raw")))
        cached.chmod(0o600)
        cached.unlink()
    else:
        shutil.rmtree(cache)
    return partial(shutil.copytree, kept, cache, dirs_exist_ok=True)


@pytest.mark.pipeline
@pytest.mark.parametrize("what", ["the_listing", "the_whole_cache"])
def test_a_recorded_file_no_table_lists_gone_with_the_listing_stops_a_transaction(
    store, tmp_path, what
):
    """A file DVC records in data/raw that images.parquet does not list (a copy of a photograph
    filed under another subject), gone from the workspace, and data/raw.dvc's listing not in the
    DVC cache: every photograph the table lists is there, so the transaction went on and its
    `dvc add data/raw` made a version without the file, which `dvc checkout data/raw` then
    brought back no more. Refused now before anything is staged, counting files and naming
    none, saying to fetch first (the advice followed takes nothing out of the workspace); once
    fetched and checked out, the same change keeps the file in the version it records."""
    paths = store.paths
    _dvc_repo(paths.root)
    copy = _a_recorded_copy_the_tables_do_not_list(store)
    copy.unlink()
    fetched = _without_the_listing(paths.root, what)
    before = _links_and_files(paths.data)

    with pytest.raises(rawstore.RawDataMissingError) as err:
        commit_one(store, PID_C, b"new subject")

    said = " ".join(str(err.value).split())
    assert _links_and_files(paths.data) == before  # nothing staged, data/raw.dvc untouched
    assert "5 file(s)" in said and "6 file(s)" in said and "nothing was changed" in said, said
    assert "not in the DVC cache" in said and "run `dvc fetch data/raw` first" in said, said
    assert "`dvc add data/raw`" in said, said  # where no remote holds it: record it as it is
    assert not {PID_A, PID_B, PID_C, copy.name} & set(said.replace("/", " ").split()), said
    follow_first_advice(said, paths.root, tmp_path / "followed")
    assert _links_and_files(tmp_path / "followed" / "data") == before, said

    fetched()
    assert _dvc_in(paths.root, "checkout", "data/raw").returncode == 0 and copy.is_file()
    commit_one(store, PID_C, b"new subject")
    assert f"{PID_B}/{copy.name}" in (dvcops.tracked_objects(paths.raw) or {})


@pytest.mark.pipeline
@pytest.mark.parametrize("change", ["none", "recorded_by_hand"])
def test_data_raw_shown_to_be_its_record_without_the_listing_takes_a_transaction(store, change):
    """data/raw.dvc's listing not in the DVC cache (a checkout whose cache is gone), and data/raw
    what it records, told from its files: the transaction goes on. So too once a change made by
    hand (the copy deleted on purpose) is recorded with `dvc add data/raw`, as the refusal
    says where no remote holds the listing."""
    paths = store.paths
    _dvc_repo(paths.root)
    copy = _a_recorded_copy_the_tables_do_not_list(store)
    if change == "recorded_by_hand":
        copy.unlink()
    _without_the_listing(paths.root, "the_whole_cache")
    if change == "recorded_by_hand":
        assert _dvc_in(paths.root, "add", "data/raw").returncode == 0

    commit_one(store, PID_C, b"new subject")

    assert PID_C in set(read_subjects(paths.raw)["pid"])
    recorded = dvcops.tracked_objects(paths.raw) or {}
    assert (f"{PID_B}/{copy.name}" in recorded) == (change == "none")
