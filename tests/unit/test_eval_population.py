"""The synthetic evaluation-only population: balanced per group x gender, its own people (never
the training population's), sealed at rest, and never a data subject."""

import dataclasses
import os
import stat

import numpy as np
import pytest

from visage_ml.app.stages import eval_population as stage
from visage_ml.config import GENDERS, GROUPS, EvalPopulationParams, ProjectPaths, load_params
from visage_ml.data import eval_population as evalpop
from visage_ml.data.detect import Detection
from visage_ml.data.synth import make_population
from visage_ml.preprocess import template
from visage_ml.privacy.datakeys import DataKeys, SealedFileError, sniff
from visage_ml.privacy.keys import check_pid

SMALL = EvalPopulationParams(
    seed=11, identities_per_cell=2, calibration_identities_per_cell=1, images_per_identity=2
)


class CentredDetector:
    """A stand-in for MTCNN: a centred face in every image but every fifth."""

    def __init__(self, **kwargs):
        self.seen = 0

    def detect(self, arrays):
        out = []
        for a in arrays:
            self.seen += 1
            if self.seen % 5 == 0:
                out.append([])
                continue
            h, w = a.shape[:2]
            side = 0.6 * min(h, w)
            lm = template(112) * (side / 112) + [(w - side) / 2, (h - side) / 2]
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            out.append([Detection(box=box, prob=0.99, landmarks=lm)])
        return out


def test_every_cell_holds_the_asked_identities_in_both_parts(project):
    params = load_params(project / "params.yaml")
    members = evalpop.design(SMALL, params.synth)
    assert len(members) == 8 * 3
    for g in GROUPS:
        for s in GENDERS:
            cell = [m for m in members if m.identity.group == g and m.identity.gender == s]
            assert sorted(m.part for m in cell) == ["calibration", "measure", "measure"]
    # Deterministic, and another seed gives other people.
    again = evalpop.design(SMALL, params.synth)
    assert [m.pid for m in again] == [m.pid for m in members]
    other = evalpop.design(dataclasses.replace(SMALL, seed=12), params.synth)
    assert not {m.pid for m in other} & {m.pid for m in members}


def test_they_are_not_data_subjects_and_not_the_training_people(project):
    params = load_params(project / "params.yaml")
    members = evalpop.design(SMALL, params.synth)
    for m in members:
        assert m.pid.startswith("e")
        with pytest.raises(ValueError):
            check_pid(m.pid)  # no command that takes a pid accepts one
    training = make_population(params.synth, params.project.seed)
    looks = {p.appearance for p in training}
    assert not any(m.identity.appearance in looks for m in members)


def test_stage_writes_sealed_crops_that_only_open_as_themselves(project):
    paths = ProjectPaths(project)
    params = load_params(
        paths.params,
        overrides={
            "eval_population.identities_per_cell": 2,
            "eval_population.calibration_identities_per_cell": 1,
            "eval_population.images_per_identity": 2,
            "prepare.second_look": False,
        },
    )
    report = stage.run(paths, params, detector_factory=CentredDetector)
    assert report["identities"] == 24 and report["identities_measured"] == 16
    assert report["images_rendered"] == 48
    assert report["images_aligned"] == 48 - 48 // 5  # the detector's misses are counted
    assert report["second_look_found_by_group"] == dict.fromkeys(GROUPS, 0)  # it was off
    assert set(report["miss_rate_by_group"]) == set(GROUPS)

    folder = paths.eval_population
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    for name in evalpop.FILES:
        assert stat.S_IMODE(os.stat(folder / name).st_mode) == 0o600
    # An operator with disk access finds ciphertext, not faces.
    assert sniff(folder / evalpop.FACES_FILE) == "sealed"
    keys = DataKeys.for_project(paths)
    pop = evalpop.read(folder, keys)
    assert pop.faces.shape == (report["images_aligned"], 112, 112, 3)
    raw = (folder / evalpop.FACES_FILE).read_bytes()
    assert pop.faces[0, 40:48, 40:48].tobytes() not in raw
    assert (pop.manifest["source"] == evalpop.SOURCE).all()
    assert len(pop.part("calibration")["pid"].unique()) == 8
    # Nothing reached the privacy ledger or the data keys of subjects.
    assert not paths.ledger.exists()
    assert keys.pids() == []

    # A flipped byte, or the crops of another file, do not open.
    blob = bytearray(raw)
    blob[-20] ^= 1
    (folder / evalpop.FACES_FILE).write_bytes(bytes(blob))
    with pytest.raises(SealedFileError, match="fails authentication"):
        evalpop.read(folder, keys)
    sealed_scene = keys.seal_scene("s000000000000", b"not crops")
    (folder / evalpop.FACES_FILE).write_bytes(sealed_scene)
    with pytest.raises(SealedFileError, match="moved or renamed"):
        evalpop.read(folder, keys)


def test_crops_and_manifest_of_different_runs_are_refused(project):
    paths = ProjectPaths(project)
    params = load_params(paths.params)
    population, _ = evalpop.build(
        SMALL, params.synth, params.prepare, detector_factory=CentredDetector
    )
    keys = DataKeys.for_project(paths)
    shorter = dataclasses.replace(population, faces=population.faces[:-1])
    evalpop.write(paths.eval_population, keys, shorter)
    with pytest.raises(ValueError, match="dvc repro eval_population"):
        evalpop.read(paths.eval_population, keys)
    with pytest.raises(FileNotFoundError, match="dvc repro eval_population"):
        evalpop.read(paths.root / "nowhere", keys)


def test_no_identities_is_refused_with_the_keys_to_set(project):
    params = load_params(project / "params.yaml")
    empty = EvalPopulationParams(identities_per_cell=0, calibration_identities_per_cell=0)
    with pytest.raises(ValueError, match="identities_per_cell"):
        evalpop.design(empty, params.synth)
    assert np.all(np.isin(GROUPS, [m.identity.group for m in evalpop.design(SMALL, params.synth)]))
