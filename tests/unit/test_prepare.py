"""prepare with imported data: roles in the splits, label coverage, counted fallback crops."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lfw_fakes import make_lfw_set

from visage_ml.config import ProjectPaths, load_params
from visage_ml.data.acquire import acquire_synthfaces
from visage_ml.data.detect import Detection, center_crop
from visage_ml.data.importers import ImportBasis, import_dataset
from visage_ml.data.manifest import inventory
from visage_ml.data.prepare import open_raw_image, prepare
from visage_ml.data.processed import ConsentChangedError, load_processed
from visage_ml.preprocess import template
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.datakeys import DataKeys


class HalfBlindDetector:
    """A stand-in for MTCNN: a centred face in every image, except every third image it sees."""

    def __init__(self, **kwargs):
        self.seen = 0

    def detect(self, arrays):
        out = []
        for a in arrays:
            self.seen += 1
            if self.seen % 3 == 0:
                out.append([])
                continue
            h, w = a.shape[:2]
            side = 0.7 * min(h, w)
            lm = template(112) * (side / 112) + [(w - side) / 2, (h - side) / 2]
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            out.append([Detection(box=box, prob=0.99, landmarks=lm)])
        return out


class FirstLookHalfBlind(HalfBlindDetector):
    """Misses every other image of a batch at the first look; finds all on any later look."""

    def __init__(self, **kwargs):
        super().__init__()
        self.calls = 0
        self.missed_first = 0

    def detect(self, arrays):
        self.calls += 1
        found = [self._centred(a) for a in arrays]
        if self.calls % 2 == 0:  # prepare's next batch comes after the second look
            return found
        self.missed_first += len(arrays[::2])
        return [[] if k % 2 == 0 else f for k, f in enumerate(found)]

    @staticmethod
    def _centred(a):
        h, w = a.shape[:2]
        side = 0.7 * min(h, w)
        lm = template(112) * (side / 112) + [(w - side) / 2, (h - side) / 2]
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        return [Detection(box=box, prob=0.99, landmarks=lm)]


def _project(tiny_project, tmp_path, **overrides):
    root = tiny_project(overrides)
    paths = ProjectPaths(root)
    acquire_synthfaces(paths, load_params(paths.params), progress=False)
    return paths


def _import_lfw(paths, tmp_path, **kw):
    base, _ = make_lfw_set(tmp_path / "lfw-download", n_people=6, per_person=3, pairs_per_fold=1)
    basis = ImportBasis.from_options(legal_basis="art6(1)(f)+art9(2)(j)")
    return import_dataset("lfw", base, paths=paths, basis=basis, **kw)


def test_benchmark_subjects_only_reach_test_and_synthfaces_splits_do_not_move(
    tiny_project, tmp_path
):
    paths = _project(tiny_project, tmp_path)
    params = load_params(paths.params)
    prepare(paths, params, detector_factory=HalfBlindDetector)
    before = json.loads((paths.processed / "splits.json").read_text())
    _import_lfw(paths, tmp_path)  # role: evaluation (it brings pairs), consent for training too
    report = prepare(paths, params, detector_factory=HalfBlindDetector)

    after = json.loads((paths.processed / "splits.json").read_text())
    manifest = pd.read_parquet(paths.processed / "manifest.parquet")
    lfw_pids = set(manifest.loc[manifest["source"] == "import:lfw", "pid"])
    assert len(lfw_pids) == 6
    assert not lfw_pids & (set(after["train"]) | set(after["val"]))
    assert set(manifest.loc[manifest["source"] == "import:lfw", "split"]) == {"test"}
    for split in ("train", "val", "test"):
        assert set(after[split]) - lfw_pids == set(before[split])
    # Label coverage: LFW subjects carry no labels; the report counts them, per source too.
    assert report["labels"]["unlabeled"] == 6
    assert report["labels"]["complete"] == report["labels"]["subjects"] - 6
    lfw = report["by_source"]["import:lfw"]
    assert lfw["roles"] == ["evaluation"] and lfw["splits"]["train"]["subjects"] == 0
    assert lfw["labels"]["unlabeled_share"] == 1.0
    assert report["by_source"]["synthfaces"]["labels"]["unlabeled"] == 0
    assert "unlabeled" in report["miss_rate_by_group"]


@pytest.mark.parametrize("fallback", ["none", "center"])
def test_detector_misses_are_counted_and_the_fallback_crop_is_marked(
    tiny_project, tmp_path, fallback
):
    paths = _project(
        tiny_project, tmp_path, **{"prepare.fallback_crop": fallback, "prepare.second_look": False}
    )
    params = load_params(paths.params)
    report = prepare(paths, params, detector_factory=HalfBlindDetector)
    detection = pd.read_parquet(paths.processed / "detection.parquet")
    data = load_processed(paths)
    manifest, faces = data.manifest, data.faces
    missed = detection[~detection["detected"]]
    assert len(missed) == len(detection) // 3
    assert report["miss_rate"] == round(len(missed) / len(detection), 4)
    if fallback == "none":
        assert report["fallback_crops"] == 0 and not detection["fallback"].any()
        assert len(manifest) == len(detection) - len(missed)
        assert not set(missed["image_id"]) & set(manifest["image_id"])
        return
    assert report["fallback_crops"] == len(missed) and detection["fallback"].sum() == len(missed)
    assert len(manifest) == len(detection)
    fb = manifest[manifest["fallback"]]
    assert set(fb["image_id"]) == set(missed["image_id"]) and (fb["det_prob"] == 0).all()
    # The stored crop is the centre square of the raw image, through the one align function.
    row = fb.iloc[0]
    files = inventory(paths.raw, {row["pid"]}).set_index("image_id")
    raw, _ = open_raw_image(
        Path(files.loc[row["image_id"], "path"]), paths.root, DataKeys.for_project(paths)
    )
    expected, _ = center_crop(raw, size=params.prepare.image_size, share=0.55)
    assert np.array_equal(faces[int(row["row"])], expected)


def test_faces_found_on_the_second_look_are_kept_and_counted(tiny_project, tmp_path):
    paths = _project(tiny_project, tmp_path)
    params = load_params(paths.params)
    assert params.prepare.second_look  # the default
    detector = FirstLookHalfBlind()
    report = prepare(paths, params, detector_factory=lambda **_: detector)
    detection = pd.read_parquet(paths.processed / "detection.parquet")
    manifest = load_processed(paths).manifest
    assert detector.missed_first > 0
    assert detection["detected"].all() and report["miss_rate"] == 0.0
    assert report["second_look_found"] == int(detection["second_look"].sum())
    assert report["second_look_found"] == detector.missed_first
    assert len(manifest) == len(detection)


def test_mixed_project_consent_filter_is_reported_per_source(tiny_project, tmp_path):
    paths = _project(tiny_project, tmp_path)
    base, _ = make_lfw_set(tmp_path / "set", n_people=12, per_person=2, pairs_per_fold=1)
    # Imported for both roles, but the basis covers evaluation only: whoever the split puts in
    # train or val is left out (no training basis), never moved into test.
    basis = ImportBasis.from_options(legal_basis="art6(1)(f)+art9(2)(j)", purposes=["evaluation"])
    import_dataset("lfw", base, paths=paths, basis=basis, role="both")
    report = prepare(paths, load_params(paths.params), detector_factory=HalfBlindDetector)
    lfw = report["by_source"]["import:lfw"]
    assert lfw["roles"] == ["both"]
    left_out = lfw["subjects_excluded"].get("no_training_basis", 0)
    assert left_out > 0 and lfw["subjects_used"] + left_out == 12
    assert lfw["splits"]["train"]["subjects"] == lfw["splits"]["val"]["subjects"] == 0
    assert lfw["splits"]["test"]["subjects"] == 12 - left_out
    assert report["by_source"]["synthfaces"]["subjects_excluded"] == {}
    # `visage data synth` (and `visage demo`) again on the mixed project: SynthFaces is reused.
    again = acquire_synthfaces(paths, load_params(paths.params), progress=False)
    assert not again.generated and again.registered == 0


def test_an_edited_consent_snapshot_does_not_bring_a_withdrawn_subject_into_training(
    tiny_project, tmp_path, caplog
):
    # Attack: an operator who can write data/ (not secrets/) edits consents.parquet so that a
    # subject who withdrew consent for training reads as allowed again.
    paths = _project(tiny_project, tmp_path)
    params = load_params(paths.params)
    first = prepare(paths, params, detector_factory=HalfBlindDetector)
    assert first["subjects_excluded"] == {}
    victim = json.loads((paths.processed / "splits.json").read_text())["train"][0]
    PrivacyCore(paths).withdraw_consent(victim, ["training"])
    snap = pd.read_parquet(paths.consents)
    rows = snap["pid"] == victim
    snap.loc[rows, "allowed"] = True
    snap.loc[rows, "reason"] = "allowed"
    snap.to_parquet(paths.consents, index=False)

    report = prepare(paths, params, detector_factory=HalfBlindDetector)
    # Left out as after an honest withdrawal (not even opened), and the edit is reported.
    assert victim not in set(pd.read_parquet(paths.processed / "detection.parquet").pid)
    assert report["subjects_excluded"] == {"no_training_basis": 1}
    assert "visage privacy snapshot" in caplog.text


def test_data_prepared_before_a_withdrawal_is_not_trained_or_evaluated_on(tiny_project, tmp_path):
    # Attack: data/processed from before a withdrawal (a stage run by hand without prepare, or
    # an older version restored with `dvc checkout`) is read by training and evaluation.
    paths = _project(tiny_project, tmp_path)
    prepare(paths, load_params(paths.params), detector_factory=HalfBlindDetector)
    splits = json.loads((paths.processed / "splits.json").read_text())
    trained, tested = splits["train"][0], splits["test"][0]
    assert len(load_processed(paths, splits=("train", "val")).manifest)
    PrivacyCore(paths).withdraw_consent(trained, ["training"])
    with pytest.raises(ConsentChangedError, match=r"train/val split.*for training.*dvc repro"):
        load_processed(paths, splits=("train", "val"))
    load_processed(paths, splits=("test",))  # evaluation consent stands
    PrivacyCore(paths).withdraw_consent(tested, ["evaluation"])
    with pytest.raises(ConsentChangedError, match="for evaluation"):
        load_processed(paths, splits=("test",))
    prepare(paths, load_params(paths.params), detector_factory=HalfBlindDetector)
    assert trained not in set(load_processed(paths, splits=("train", "val")).manifest.pid)


def test_the_processed_files_replaced_by_an_erasure_are_not_rebuilt_from_a_guess(
    tiny_project, tmp_path
):
    """An erasure records the SHA-256 of splits.json and manifest.parquet as they were. Written
    deterministically, the current file plus the erased subject's guessed entries rebuilt them
    byte for byte, confirming the split (and the manifest row) of the subject. Each version
    carries randomness of its own: even the true entries, written with the current version's
    metadata or none, do not give the recorded hash."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from visage_ml.data.prepare import purge_subject

    paths = _project(tiny_project, tmp_path)
    prepare(paths, load_params(paths.params), detector_factory=HalfBlindDetector)
    splits_path, manifest_path = (
        paths.processed / "splits.json",
        paths.processed / "manifest.parquet",
    )
    recorded = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (splits_path, manifest_path)}
    truth_splits = json.loads(splits_path.read_text())
    truth_manifest = pd.read_parquet(manifest_path)
    victim = truth_splits["train"][0]
    purge_subject(paths.processed, victim)

    current = json.loads(splits_path.read_text())
    guesses = set()
    for nonce in (current.get("version_nonce"), None):
        doc = {k: v for k, v in truth_splits.items() if k != "version_nonce"}
        if nonce is not None:
            doc["version_nonce"] = nonce
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        guesses.add(hashlib.sha256(text.encode()).hexdigest())
    meta = pq.read_schema(manifest_path).metadata or {}
    for kept in (meta, {k: v for k, v in meta.items() if not k.startswith(b"visage.")}):
        table = pa.Table.from_pandas(truth_manifest, preserve_index=False)
        sink = pa.BufferOutputStream()
        pq.write_table(table.replace_schema_metadata(kept), sink)
        guesses.add(hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest())
    assert not guesses & recorded


def test_training_records_the_data_it_read_not_a_stale_dvc_lock(tiny_project, tmp_path):
    """The data md5 a model records (and an erasure's lineage matches it by) came from
    dvc.lock's prepare entry: after prepare ran again by hand (or the file was restored from
    an older version), a model trained on the new file named the old one."""
    from visage_ml.data.processed import data_md5
    from visage_ml.io import md5_file

    paths = _project(tiny_project, tmp_path)
    prepare(paths, load_params(paths.params), detector_factory=HalfBlindDetector)
    faces = paths.processed / "faces.sealed"
    (paths.root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    cmd: python -m visage_ml.app.stages.prepare\n"
        "    outs:\n    - path: data/processed/faces.sealed\n"
        f"      md5: {'ab' * 16}\n      size: 1\n"
    )
    assert data_md5(paths) == md5_file(faces) != "ab" * 16
    assert load_processed(paths, splits=("train",)).data_md5 == md5_file(faces)
