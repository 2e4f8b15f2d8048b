"""SynthFaces: determinism, attribute shares, atomic writing, tables consistent with files."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from visage_ml.config import GROUPS, SynthConsentShares, SynthParams, params_from_dict
from visage_ml.data import synth
from visage_ml.data.synth import (
    SCENE_COLUMNS,
    SUBJECT_COLUMNS,
    consent_plan,
    encode_png,
    make_population,
    render_face,
    render_grid,
    write_synthfaces,
)

TINY = SynthParams(
    n_identities=4,
    images_per_identity=(1, 3),
    image_size=64,
    n_scenes=3,
    scene_size=(192, 144),
    faces_per_scene=(0, 2),
)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, synth.SynthSummary]:
    root = tmp_path_factory.mktemp("synth")
    summary = write_synthfaces(root / "raw", root / "scenes", TINY, seed=11, progress=False)
    return root / "raw", root / "scenes", summary


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tiny_set, tmp_path):
    raw, scenes, _ = tiny_set
    write_synthfaces(tmp_path / "raw", tmp_path / "scenes", TINY, seed=11, progress=False)
    assert _digest(tmp_path / "raw") == _digest(raw)
    assert _digest(tmp_path / "scenes") == _digest(scenes)

    write_synthfaces(tmp_path / "raw2", tmp_path / "scenes2", TINY, seed=12, progress=False)
    other = _digest(tmp_path / "raw2")
    assert set(other) != set(_digest(raw))  # different pids and image ids
    assert set(other.values()).isdisjoint(v for k, v in _digest(raw).items() if k.endswith(".png"))


def test_ids_have_the_documented_form_and_subjects_match_the_files(tiny_set):
    raw, _, summary = tiny_set
    subjects = pd.read_parquet(raw / "subjects.parquet")
    assert tuple(subjects.columns) == SUBJECT_COLUMNS
    assert len(subjects) == summary.n_identities == TINY.n_identities
    assert subjects["pid"].is_unique
    image_ids = []
    for row in subjects.itertuples():
        assert re.fullmatch(r"p[0-9a-f]{16}", row.pid)
        files = sorted((raw / row.pid).glob("*.png"))
        assert len(files) == row.n_images
        assert TINY.images_per_identity[0] <= row.n_images <= TINY.images_per_identity[1]
        image_ids += [f.stem for f in files]
        assert row.group in GROUPS and row.gender in ("female", "male")
        assert TINY.age_range[0] <= row.age <= TINY.age_range[1]
    assert all(re.fullmatch(r"i[0-9a-f]{12}", i) for i in image_ids)
    assert len(set(image_ids)) == len(image_ids) == summary.n_images
    with Image.open(raw / subjects["pid"][0] / f"{image_ids[0]}.png") as im:
        assert im.size == (TINY.image_size, TINY.image_size) and im.mode == "RGB"
    assert set(summary.consent_plan) == set(subjects["pid"])


def test_scenes_table_is_consistent_with_the_frames(tiny_set):
    _, scenes, summary = tiny_set
    table = pd.read_parquet(scenes / "scenes.parquet")
    assert tuple(table.columns) == SCENE_COLUMNS
    frames = {p.stem for p in scenes.glob("*.png")}
    assert set(table["scene_id"]) == frames
    assert len(frames) == summary.n_scenes == TINY.n_scenes
    for scene_id, rows in table.groupby("scene_id"):
        assert re.fullmatch(r"s[0-9a-f]{12}", scene_id)
        with Image.open(scenes / f"{scene_id}.png") as im:
            assert im.size == TINY.scene_size
        n = int(rows["n_faces"].iloc[0])
        if n == 0:
            assert len(rows) == 1 and rows["face"].iloc[0] == -1
            assert rows[["x1", "age", "group"]].isna().all(axis=None)
        else:
            assert sorted(rows["face"]) == list(range(n))
            assert (rows["x1"] < rows["x2"]).all() and (rows["y1"] < rows["y2"]).all()
            assert rows["group"].isin(GROUPS).all()
            # the eyes lie inside the face box
            assert (rows["left_eye_x"] > rows["x1"]).all()
            assert (rows["right_eye_x"] < rows["x2"]).all()
    assert "pid" not in table.columns  # passers-by are not population members


def test_a_scene_without_faces_is_still_listed(tmp_path):
    params = dataclasses.replace(TINY, n_identities=2, n_scenes=1, faces_per_scene=(0, 0))
    write_synthfaces(tmp_path / "raw", tmp_path / "scenes", params, seed=3, progress=False)
    table = pd.read_parquet(tmp_path / "scenes" / "scenes.parquet")
    assert len(table) == 1
    assert table["n_faces"].iloc[0] == 0 and table["face"].iloc[0] == -1


def test_refuses_a_non_empty_destination_and_leaves_it_untouched(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="Remove it"):
        write_synthfaces(raw, tmp_path / "scenes", TINY, seed=1, progress=False)
    assert [p.name for p in raw.iterdir()] == ["keep.txt"]
    assert not (tmp_path / "scenes").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_an_existing_empty_destination_is_used(tmp_path):
    (tmp_path / "raw").mkdir()
    params = dataclasses.replace(TINY, n_identities=2, n_scenes=0)
    summary = write_synthfaces(
        tmp_path / "raw", tmp_path / "scenes", params, seed=1, progress=False
    )
    assert (tmp_path / "raw" / "subjects.parquet").exists()
    assert summary.n_scenes == 0
    assert list(pd.read_parquet(tmp_path / "scenes" / "scenes.parquet").columns) == list(
        SCENE_COLUMNS
    )


def test_a_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synth.photograph

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "photograph", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_synthfaces(tmp_path / "raw", tmp_path / "scenes", TINY, seed=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_population_follows_the_configured_shares():
    params = SynthParams(n_identities=800, group_shares=(0.1, 0.2, 0.3, 0.4), female_share=0.3)
    people = make_population(params, seed=5)
    n = len(people)
    for g, share in zip(GROUPS, params.group_shares, strict=True):
        observed = sum(p.group == g for p in people) / n
        assert abs(observed - share) < 4 * np.sqrt(share * (1 - share) / n)
    females = sum(p.gender == "female" for p in people) / n
    assert abs(females - 0.3) < 4 * np.sqrt(0.21 / n)
    ages = np.array([p.age for p in people])
    assert ages.min() >= 18 and ages.max() <= 80
    assert abs(ages.mean() - 49) < 3
    # default shares are the imbalanced 50/25/15/10
    default = make_population(SynthParams(n_identities=400), seed=5)
    assert sum(p.group == "g1" for p in default) > 3 * sum(p.group == "g4" for p in default)


def test_population_is_deterministic_and_a_larger_one_extends_a_smaller_one():
    small = make_population(SynthParams(n_identities=5), seed=9)
    large = make_population(SynthParams(n_identities=12), seed=9)
    assert small == large[:5]
    assert make_population(SynthParams(n_identities=5), seed=10) != small
    assert len({p.pid for p in large}) == 12


def test_appearance_carries_age_and_gender_cues():
    people = make_population(SynthParams(n_identities=600), seed=2)
    old = [p for p in people if p.age >= 65]
    young = [p for p in people if p.age <= 30]
    assert (
        np.mean([p.appearance.grey for p in old])
        > np.mean([p.appearance.grey for p in young]) + 0.5
    )
    assert np.mean([p.appearance.wrinkles for p in old]) > np.mean(
        [p.appearance.wrinkles for p in young]
    )
    men = [p for p in people if p.gender == "male"]
    women = [p for p in people if p.gender == "female"]
    assert all(p.appearance.beard == "none" for p in women)
    assert 0.3 < np.mean([p.appearance.beard != "none" for p in men]) < 0.7
    # overlapping, not decisive: some women have thicker brows than the average man
    men_brow = np.mean([p.appearance.brow_thick for p in men])
    assert np.mean([p.appearance.brow_thick for p in women]) < men_brow
    assert any(p.appearance.brow_thick > men_brow for p in women)
    # skin gets darker from g1 to g4
    lum = [np.mean([sum(p.appearance.skin) for p in people if p.group == g]) for g in GROUPS]
    assert lum == sorted(lum, reverse=True)


def test_consent_plan_is_deterministic_and_follows_the_shares():
    params = SynthParams(n_identities=1000)
    people = make_population(params, seed=4)
    plan = consent_plan(people, params, seed=4)
    assert plan == consent_plan(people, params, seed=4)
    share = np.mean([c.identification for c in plan.values()])
    assert abs(share - params.consent.identification) < 0.06
    assert 0 < np.mean([c.objected for c in plan.values()]) < 0.08
    everyone = dataclasses.replace(params, consent=SynthConsentShares(1.0, 1.0, 1.0, 0.0, 0.0))
    assert all(
        c.training and c.evaluation and c.identification and not c.restricted and not c.objected
        for c in consent_plan(people, everyone, seed=4).values()
    )


def test_render_face_returns_template_ordered_landmarks_inside_the_image():
    params = SynthParams()
    person = make_population(params, seed=1)[0]
    image, lm = render_face(person, rng=np.random.default_rng(0), params=params)
    assert image.size == (160, 160) and image.mode == "RGB"
    assert lm.shape == (5, 2)
    assert (lm > 0).all() and (lm < 160).all()
    left_eye, right_eye, nose, mouth_left, mouth_right = lm
    assert left_eye[0] < nose[0] < right_eye[0]
    assert mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    small, lm_small = render_face(person, rng=np.random.default_rng(0), params=params, size=96)
    assert small.size == (96, 96)
    np.testing.assert_allclose(lm_small, lm * 96 / 160, atol=1.0)


def test_planted_group_contrast_makes_that_group_dim_and_flat():
    base = SynthParams(n_identities=200)
    planted = dataclasses.replace(base, group_contrast=(1.0, 1.0, 1.0, 0.4))
    people = [p for p in make_population(base, seed=3) if p.group in ("g1", "g4")][:30]

    def face_stats(params: SynthParams, group: str) -> tuple[float, float]:
        means, spreads = [], []
        for k, person in enumerate(p for p in people if p.group == group):
            image, lm = render_face(person, rng=np.random.default_rng(k), params=params, size=96)
            a = np.asarray(image, dtype=float).mean(axis=2)
            x0, y0 = lm.min(axis=0).astype(int)
            x1, y1 = lm.max(axis=0).astype(int)
            patch = a[y0 : y1 + 1, x0 : x1 + 1]
            means.append(patch.mean())
            spreads.append(patch.std())
        return float(np.mean(means)), float(np.mean(spreads))

    g4_mean, g4_std = face_stats(base, "g4")
    g4p_mean, g4p_std = face_stats(planted, "g4")
    assert g4p_std < 0.6 * g4_std
    assert g4p_mean < g4_mean
    assert face_stats(planted, "g1") == face_stats(base, "g1")  # other groups untouched


def test_group_difficulty_is_validated_and_adds_nuisance():
    with pytest.raises(Exception, match="group_difficulty"):
        params_from_dict({"synth": {"group_difficulty": [0.1, 0.2]}})
    from visage_ml.data.synth_render import effective_difficulty

    d = dataclasses.asdict(SynthParams().difficulty)
    harder = effective_difficulty(d, 0.5)
    assert harder["blur"] == pytest.approx(min(1.0, d["blur"] + 0.5))
    assert harder["jpeg_quality"][1] < d["jpeg_quality"][1]


def test_encode_png_round_trips(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    data = encode_png(a)
    (tmp_path / "x.png").write_bytes(data)
    with Image.open(tmp_path / "x.png") as im:
        np.testing.assert_array_equal(np.asarray(im), a)
    assert encode_png(Image.fromarray(a)) == data
    with pytest.raises(ValueError, match="RGB"):
        encode_png(a[:, :, 0])


def test_render_grid_writes_one_row_per_group(tmp_path):
    params = SynthParams(image_size=64)
    render_grid(params, seed=1, path=tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size == (8 * 64, len(GROUPS) * 64)
