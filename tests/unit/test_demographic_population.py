"""The demographic model's synthetic training people: balanced per group x gender, sealed at
rest, never data subjects, and never the evaluation population (seed, ids, faces, files)."""

import os
import shutil
import stat

import pandas as pd
import pytest

from visage_ml.app.stages import demographic_population as stage
from visage_ml.app.stages import eval_population as eval_stage
from visage_ml.config import (
    GENDERS,
    GROUPS,
    ConfigError,
    DemographicPopulationParams,
    EvalPopulationParams,
    ProjectPaths,
    load_params,
)
from visage_ml.data import eval_population as populations
from visage_ml.data.detect import Detection
from visage_ml.preprocess import template
from visage_ml.privacy.datakeys import DataKeys, SealedFileError, sniff
from visage_ml.privacy.keys import check_pid
from visage_ml.training.demographics import training_population

SMALL = {
    "demographic_population.identities_per_cell": 2,
    "demographic_population.images_per_identity": 2,
    "eval_population.identities_per_cell": 2,
    "eval_population.calibration_identities_per_cell": 1,
    "eval_population.images_per_identity": 2,
}


class CentredDetector:
    """A stand-in for MTCNN: a centred face in every image."""

    def __init__(self, **kwargs):
        pass

    def detect(self, arrays):
        out = []
        for a in arrays:
            h, w = a.shape[:2]
            side = 0.6 * min(h, w)
            lm = template(112) * (side / 112) + [(w - side) / 2, (h - side) / 2]
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            out.append([Detection(box=box, prob=0.99, landmarks=lm)])
        return out


def test_every_cell_holds_its_training_people_and_none_is_an_evaluation_person(project):
    params = load_params(project / "params.yaml")
    # Even given the evaluation population's very seed, the training namespace draws others.
    seed = params.eval_population.seed
    train = populations.design(
        DemographicPopulationParams(seed=seed, identities_per_cell=3, images_per_identity=2),
        params.synth,
        purpose=populations.TRAINING,
    )
    assert len(train) == 8 * 3
    for g in GROUPS:
        for s in GENDERS:
            cell = [m for m in train if m.identity.group == g and m.identity.gender == s]
            assert len(cell) == 3 and {m.part for m in cell} == {populations.TRAIN}
    evaluation = populations.design(
        EvalPopulationParams(seed=seed, identities_per_cell=3, calibration_identities_per_cell=1),
        params.synth,
    )
    assert not {m.pid for m in train} & {m.pid for m in evaluation}
    assert not {m.cell_seed for m in train} & {m.cell_seed for m in evaluation}
    assert not {m.identity.appearance for m in train} & {m.identity.appearance for m in evaluation}
    for m in train:
        assert m.pid.startswith("d")
        with pytest.raises(ValueError):
            check_pid(m.pid)  # not data subjects: no command that takes a pid accepts one
    no_one = DemographicPopulationParams(identities_per_cell=0)
    assert populations.design(no_one, params.synth, purpose=populations.TRAINING) == []


@pytest.mark.parametrize("other", ["eval_population.seed", "project.seed"])
def test_a_seed_shared_with_the_evaluation_or_acquisition_population_is_refused(project, other):
    params = load_params(project / "params.yaml")
    taken = params.eval_population.seed if other.startswith("eval") else params.project.seed
    with pytest.raises(ConfigError, match=r"demographic_population\.seed.*a seed of its own"):
        load_params(project / "params.yaml", overrides={"demographic_population.seed": taken})


def test_stage_writes_sealed_training_people_that_open_only_as_themselves(project):
    paths = ProjectPaths(project)
    params = load_params(paths.params, overrides=SMALL)
    report = stage.run(paths, params, detector_factory=CentredDetector)
    assert report["identities"] == 16 and report["images_aligned"] == 32
    assert report["identities_by_group"] == {g: 4 for g in GROUPS}
    assert report["seed"] == params.demographic_population.seed
    folder = paths.demographic_population
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    for name in populations.FILES:
        assert stat.S_IMODE(os.stat(folder / name).st_mode) == 0o600
    assert sniff(folder / populations.FACES_FILE) == "sealed"
    keys = DataKeys.for_project(paths)
    pop = populations.read(folder, keys, purpose=populations.TRAINING)
    assert (pop.manifest["source"] == populations.TRAINING.source).all()
    assert (pop.manifest["part"] == populations.TRAIN).all()
    assert not paths.ledger.exists() and keys.pids() == []
    # The training people's crops do not open as the evaluation population.
    with pytest.raises(SealedFileError, match="moved or renamed"):
        populations.read(folder, keys)
    assert training_population(paths).faces.shape == (32, 112, 112, 3)


def test_the_evaluation_population_never_enters_demographic_training(project):
    """An operator copies the evaluation population into the training folder, whole or as rows:
    training refuses both rather than learn from the people that measure it."""
    paths = ProjectPaths(project)
    params = load_params(paths.params, overrides=SMALL)
    eval_stage.run(paths, params, detector_factory=CentredDetector)
    stage.run(paths, params, detector_factory=CentredDetector)
    keys = DataKeys.for_project(paths)
    folder = paths.demographic_population
    saved = {n: (folder / n).read_bytes() for n in populations.FILES}

    # The files, copied over: the sealed crops do not open as training people.
    for name in populations.FILES:
        shutil.copy(paths.eval_population / name, folder / name)
    with pytest.raises(SealedFileError, match="moved or renamed"):
        training_population(paths)

    # Their rows, re-sealed as training crops (an operator with the master key): refused too.
    evaluation = populations.read(paths.eval_population, keys)
    populations.write(folder, keys, evaluation, purpose=populations.TRAINING)
    with pytest.raises(ValueError, match="not the demographic training population"):
        training_population(paths)
    relabelled = evaluation.manifest.assign(source=populations.TRAINING.source)
    populations.write(
        folder,
        keys,
        populations.Population(evaluation.faces, relabelled, evaluation.detection),
        purpose=populations.TRAINING,
    )
    with pytest.raises(ValueError, match="not the demographic training population"):
        training_population(paths)

    # The genuine files train; missing files leave the data alone, with a warning.
    for name, blob in saved.items():
        (folder / name).write_bytes(blob)
    pop = training_population(paths)
    assert not set(pop.manifest["pid"]) & set(evaluation.manifest["pid"])
    for name in populations.FILES:
        (folder / name).unlink()
    assert training_population(paths) is None


def test_no_training_people_writes_an_empty_population(project):
    paths = ProjectPaths(project)
    params = load_params(
        paths.params, overrides={**SMALL, "demographic_population.identities_per_cell": 0}
    )
    report = stage.run(paths, params, detector_factory=CentredDetector)
    assert report["identities"] == 0 and report["images_aligned"] == 0
    pop = training_population(paths)
    assert len(pop.faces) == 0 and isinstance(pop.manifest, pd.DataFrame)
