"""`visage privacy seal` converting the plaintext crop array ``data/processed/faces.u8.npy``
while another program writes it (a user's script ``np.save`` over it, which empties it first;
``dvc checkout`` of another version, which puts another file in its place; a second ``seal`` or a
``prepare`` finishing, which overwrites it with zeros before deleting it).

The array was mapped: a truncation made the kernel kill the process with SIGBUS halfway through
(its temporary file left in data/processed); a file overwritten in place was sealed as it was
read (rows of zeros committed over the crops a first run had sealed); a file put in its place was
deleted, unsealed, by the overwrite that follows the sealing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rights_fakes import make_project

from visage_ml.data import crops as crops_mod
from visage_ml.data.processed import load_processed
from visage_ml.io import secure_unlink
from visage_ml.privacy.core import PrivacyCore
from visage_ml.rights import sealing
from visage_ml.rights.sealing import CropsChangedError, seal_project

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def legacy(tmp_path):
    """A project whose crops are still the plaintext array of a version from before sealing."""
    proj = make_project(tmp_path / "proj", n_subjects=3, n_images=2, enrol=False)
    paths = proj.paths
    faces = load_processed(paths).faces
    np.save(paths.processed / "faces.u8.npy", faces)
    (paths.processed / "faces.sealed").unlink()
    return paths, faces


def _cut_after_first_row(monkeypatch, what):
    """Run ``what()`` once the seal has taken the array's first row (another program's write)."""
    add = crops_mod.CropWriter.add
    done = []

    def add_then(self, pid, crop):
        if self.rows == 1 and not done:
            done.append(True)
            what()
        return add(self, pid, crop)

    monkeypatch.setattr(crops_mod.CropWriter, "add", add_then)


def _leftovers(processed: Path) -> list[str]:
    return sorted(f.name for f in processed.glob(".*.tmp"))


def test_the_crop_array_cut_short_while_sealed_does_not_kill_the_seal(legacy):
    """``np.save`` over the array while it is sealed: the seal stops with a message saying to run
    it again (not SIGBUS), leaves nothing half written, and a second run seals the new array."""
    paths, faces = legacy
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import os, sys
                from pathlib import Path
                from visage_ml.config import ProjectPaths
                from visage_ml.data import crops
                from visage_ml.rights import sealing
                paths = ProjectPaths(Path(sys.argv[1]))
                legacy = paths.processed / "faces.u8.npy"
                sealing.LEGACY_CHUNK = 4096  # rows read a few at a time: cut while it is read
                add = crops.CropWriter.add
                def add_then_cut(self, pid, crop):
                    if self.rows == 1:
                        os.truncate(legacy, 4096)  # np.save over it: open("wb") empties it first
                    return add(self, pid, crop)
                crops.CropWriter.add = add_then_cut
                try:
                    sealing.seal_project(paths)
                except sealing.CropsChangedError as exc:
                    print("refused:", exc)
                """
            ),
            str(paths.root),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode != -signal.SIGBUS, "the seal was killed by SIGBUS"
    assert child.returncode == 0, child.stderr[-2000:]
    assert "faces.u8.npy changed while it was sealed" in child.stdout
    assert "visage privacy seal" in child.stdout
    assert not (paths.processed / "faces.sealed").exists()
    assert _leftovers(paths.processed) == []
    # The other program finishes writing; the seal run again seals what it wrote.
    np.save(paths.processed / "faces.u8.npy", faces[::-1])
    report = seal_project(paths)
    assert report.plaintext_crops_removed and report.crops_rows_sealed == len(faces)
    assert np.array_equal(load_processed(paths).faces, faces[::-1])
    assert not (paths.processed / "faces.u8.npy").exists()


def test_a_second_seal_finishing_while_the_array_is_sealed_does_not_zero_the_sealed_crops(
    legacy, monkeypatch
):
    """Two ``visage privacy seal`` at once: the first commits ``faces.sealed`` and overwrites the
    array with zeros, then deletes it, while the second still reads it. The second must not
    replace the crops the first sealed with the zeros it read."""
    paths, faces = legacy
    monkeypatch.setattr(sealing, "LEGACY_CHUNK", 4096)
    first = paths.root.parent / "first.sealed"

    def first_run_finishes():
        crops_mod.write_crops(first, PrivacyCore(paths).data_keys, *_owned(paths, faces))
        os.replace(first, paths.processed / "faces.sealed")
        secure_unlink(paths.processed / "faces.u8.npy")

    _cut_after_first_row(monkeypatch, first_run_finishes)
    refused = _refused(lambda: seal_project(paths))
    assert np.array_equal(load_processed(paths).faces, faces)
    assert _leftovers(paths.processed) == []
    assert "visage privacy seal" in refused


def test_an_array_put_in_place_of_the_one_sealed_is_not_deleted_unsealed(legacy, monkeypatch):
    """``dvc checkout`` (or a script writing a temporary file and renaming it) puts another array
    in place of the one being sealed: the seal must not delete it, its crops never sealed."""
    paths, faces = legacy
    legacy_path = paths.processed / "faces.u8.npy"
    other = paths.root.parent / "other.npy"
    np.save(other, faces[::-1])

    _cut_after_first_row(monkeypatch, lambda: os.replace(other, legacy_path))
    refused = _refused(lambda: seal_project(paths))
    assert np.array_equal(np.load(legacy_path), faces[::-1])
    assert "faces.u8.npy changed while it was sealed" in refused
    seal_project(paths)
    assert np.array_equal(load_processed(paths).faces, faces[::-1])
    assert not legacy_path.exists()


def _refused(run) -> str:
    """The message of the :class:`CropsChangedError` ``run()`` raises ("" when none)."""
    try:
        run()
    except CropsChangedError as exc:
        return str(exc)
    return ""


def _owned(paths, faces):
    """``write_crops``' pids and crops: every row of the manifest, in order."""
    manifest = pd.read_parquet(paths.processed / "manifest.parquet", columns=["row", "pid"])
    return manifest.sort_values("row")["pid"].astype(str).tolist(), faces


def _forged(path: Path, faces: np.ndarray, *, shape: tuple[int, ...], descr: str) -> None:
    """An array file whose header declares ``shape`` and ``descr`` over the rows of ``faces``
    (cast to ``descr``): what a user's script or a hand edit may leave in data/processed."""
    with open(path, "wb") as fh:
        header = {"descr": descr, "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(faces.astype(np.dtype(descr)).tobytes())


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("shape", "descr"),
    [
        # A row of 3 TiB declared over a file of a few KiB (read whole: MemoryError).
        pytest.param(lambda s: (s[0], 1 << 20, 1 << 20, 3), "|u1", id="row-far-larger-than-file"),
        pytest.param(lambda s: (s[0], -s[1], *s[2:]), "|u1", id="negative-side"),
        # Rows of nothing, a trillion of them: the seal looped for good.
        pytest.param(lambda s: (10**12, 0, *s[2:]), "|u1", id="zero-width-rows"),
        # No rows declared over the crops: the seal wrote none, then deleted the array.
        pytest.param(lambda s: (0, *s[1:]), "|u1", id="no-rows-over-crops"),
        # Floats in [0, 1] (or 16-bit values) were cast to uint8 row by row: the crops sealed
        # were zeros, and the array deleted.
        pytest.param(lambda s: s, "<f4", id="float-crops"),
        pytest.param(lambda s: s, "<u2", id="16-bit-crops"),
    ],
)
def test_an_array_whose_header_does_not_describe_the_crops_is_refused_and_kept(
    legacy, shape, descr
):
    """A crop array whose header lies (a shape far larger than the file, a negative or empty
    side, no rows over the crops, another dtype): the seal refuses it with its message, at once
    and without reading it whole, and neither replaces faces.sealed nor deletes the array."""
    paths, faces = legacy
    legacy_path = paths.processed / "faces.u8.npy"
    _forged(
        legacy_path, faces if descr != "<f4" else faces / 255, shape=shape(faces.shape), descr=descr
    )
    kept = legacy_path.read_bytes()
    try:
        seal_project(paths)
    except (ValueError, CropsChangedError) as exc:
        refused = str(exc)
    else:
        refused = ""
    assert "is not a crop array visage-ml wrote" in refused, refused
    # What to do names the command that makes the crops again (there is no `visage prepare`).
    assert "`dvc repro prepare`" in refused, refused
    assert legacy_path.read_bytes() == kept
    assert not (paths.processed / "faces.sealed").exists()
    assert _leftovers(paths.processed) == []
