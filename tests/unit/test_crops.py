"""The sealed crop file: per-subject chunks, readers that decrypt into memory, in-place purge."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from visage_ml.config import ProjectPaths
from visage_ml.data.crops import (
    CropWriter,
    crops_info,
    iter_chunks,
    purge_chunks,
    read_crops,
    write_crops,
)
from visage_ml.privacy.datakeys import DataKeys

A, B, C = ("p" + c * 16 for c in "abc")
S = 12


@pytest.fixture
def keys(project) -> DataKeys:
    return DataKeys.for_project(ProjectPaths(project))


def _faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, size=(n, S, S, 3), dtype=np.uint8)


def _manifest(pids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"row": np.arange(len(pids)), "pid": pids})


def test_crops_are_sealed_per_subject_and_read_back_in_memory(keys, tmp_path):
    pids = [A, A, B, B, B, C]
    faces = _faces(len(pids))
    path = tmp_path / "faces.sealed"
    write_crops(path, keys, pids, faces)
    data = path.read_bytes()
    for row in faces:  # no crop, and no row of a crop, in clear
        assert row.tobytes() not in data and row[0].tobytes() not in data
    assert path.stat().st_mode & 0o777 == 0o600
    info = crops_info(path)
    assert info.shape == (6, S, S, 3) and [c[:2] for c in info.chunks] == [(0, 2), (2, 3), (5, 1)]
    manifest = _manifest(pids)
    assert np.array_equal(read_crops(path, keys, manifest), faces)
    # Only the requested subjects are decrypted; the other rows stay zero.
    some = read_crops(path, keys, manifest, pids={B})
    assert np.array_equal(some[2:5], faces[2:5]) and not some[:2].any() and not some[5:].any()


def test_a_chunk_opens_only_for_its_subject_and_rows(keys, tmp_path):
    pids = [A, A, B, B]
    path = tmp_path / "faces.sealed"
    write_crops(path, keys, pids, _faces(4))
    # A manifest that gives A's rows to B (an edited manifest, or another run's): refused.
    with pytest.raises(ValueError, match="does not open for the subject"):
        read_crops(path, keys, _manifest([B, B, B, B]))
    blob = bytearray(path.read_bytes())
    blob[40] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"rows 0\.\.1"):
        read_crops(path, keys, _manifest(pids))
    path.write_bytes(bytes(blob[:-3]))
    with pytest.raises(ValueError, match="not a sealed crops file"):
        crops_info(path)


def test_purge_zeroes_the_subject_in_place_and_keeps_every_address(keys, tmp_path):
    pids = [A, A, B, B, B, C]
    faces = _faces(len(pids))
    path = tmp_path / "faces.sealed"
    write_crops(path, keys, pids, faces)
    manifest = _manifest(pids)
    (chunk,) = list(iter_chunks(path, manifest, pids={B}))
    assert purge_chunks(path, manifest, B) == 1
    with open(path, "rb") as fh:
        fh.seek(chunk[3])
        assert fh.read(chunk[4]) == b"\0" * chunk[4]
    kept = manifest[manifest["pid"] != B]
    out = read_crops(path, keys, kept)
    assert np.array_equal(out[kept["row"]], faces[kept["row"]]) and not out[2:5].any()
    # The key of a subject still listed is gone: the outputs are stale, and say so.
    keys.destroy(A)
    with pytest.raises(ValueError, match="dvc repro prepare"):
        read_crops(path, keys, kept)


def test_skipped_rows_and_an_aborted_writer(keys, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    path = folder / "faces.sealed"
    faces = _faces(3)
    with CropWriter(path, keys, S, create_keys=True) as w:
        w.add(A, faces[0])
        w.skip(1)
        w.add(A, faces[2])
        w.commit()
    out = read_crops(path, keys, pd.DataFrame({"row": [0, 2], "pid": [A, A]}))
    assert np.array_equal(out[[0, 2]], faces[[0, 2]]) and not out[1].any()
    with pytest.raises(RuntimeError), CropWriter(folder / "other.sealed", keys, S) as w:
        w.add(A, faces[0])
        raise RuntimeError("killed")
    assert sorted(p.name for p in folder.iterdir()) == ["faces.sealed"]


def test_a_manifest_an_erasure_shortened_still_addresses_the_crops_and_a_wrong_one_does_not():
    from visage_ml.data.crops import check_manifest_rows

    purged = pd.DataFrame({"row": [0, 1, 4, 5]})  # rows 2-3: an erased subject's, zeroed
    check_manifest_rows(purged, 6)
    for rows, why in (
        ([0, 1, 2, 3, 4, 5, 6], "more rows than crops"),
        ([0, 1, 6], "a row beyond the crops"),
        ([0, 1, 1], "a row listed twice"),
    ):
        with pytest.raises(ValueError, match=f"{why}.*dvc repro prepare"):
            check_manifest_rows(pd.DataFrame({"row": rows}), 6)
