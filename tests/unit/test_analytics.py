"""Analytics mode: demographic counts without identities, k-suppression, noise, windows."""

from __future__ import annotations

import numpy as np
import pytest
from serving_fakes import fake_engine, make_world, scene

from visage_ml.serving.analytics import (
    DIMENSIONS,
    SUPPRESSED,
    Analytics,
    CountTable,
    age_band_labels,
    count_predictions,
    release,
)
from visage_ml.serving.disclosure import reconstructable
from visage_ml.serving.engine import Engine

BANDS = [18, 30, 45, 60]


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def world(project):
    return make_world(project, n_subjects=12)


def closed(analytics, clock, *frames):
    """Analyze ``frames`` into one window, close it, return its released counts."""
    for frame in frames:
        assert analytics.analyze(frame)["counts"] is None  # a frame's answer releases nothing
    clock.t += analytics.window_seconds
    return analytics.windows()[-1]["counts"]


def crowd(world, n):
    """A frame with the first ``n`` subjects, and its true counts per gender and group."""
    people = list(world.people.values())[:n]
    image = scene([world.photo(p.pid)[0] for p in people], cols=4)
    gender = {g: sum(p.gender == g for p in people) for g in ("female", "male")}
    group = {g: sum(p.group == g for p in people) for g in ("g1", "g2", "g3", "g4")}
    return image, gender, group


def test_age_bands_are_labelled_by_their_edges():
    assert age_band_labels(BANDS) == ["<18", "18-29", "30-44", "45-59", "60+"]
    assert age_band_labels([]) == ["all"]


def test_counts_follow_the_argmax_of_each_prediction():
    pred = {
        "age": np.array([10.0, 18.0, 29.9, 61.0]),
        "gender_probs": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]),
        "group_probs": np.eye(4)[[0, 0, 2, 3]],
    }
    t = count_predictions(
        pred, age_bands=BANDS, genders=["female", "male"], groups=["g1", "g2", "g3", "g4"]
    )
    assert t.faces == 4 and t.frames == 1
    assert t.age_band == {"<18": 1, "18-29": 2, "30-44": 0, "45-59": 0, "60+": 1}
    assert t.gender == {"female": 2, "male": 2}
    assert t.group == {"g1": 2, "g2": 0, "g3": 1, "g4": 1}


def test_cells_below_k_are_reported_as_suppressed_not_as_numbers():
    t = CountTable(
        age_band={"<18": 0, "18+": 7}, gender={"female": 4, "male": 3}, group={"g1": 7}, faces=7
    )
    out = release(t, k_min=5, epsilon=0.0)
    # "18+" reaches k but goes too: beside the total it would give "<18" away (7 - 7 = 0).
    assert out == {
        "faces": 7,
        "age_band": {"<18": SUPPRESSED, "18+": SUPPRESSED},
        "gender": {"female": SUPPRESSED, "male": SUPPRESSED},
        "group": {"g1": 7},
    }


def test_laplace_noise_is_unbiased_with_the_documented_scale():
    t = CountTable(age_band={}, gender={}, group={"g1": 500}, faces=500)
    rng = np.random.default_rng(0)
    values = np.array(
        [release(t, k_min=1, epsilon=0.5, rng=rng)["group"]["g1"] for _ in range(6000)]
    )
    # OpenDP's discrete Laplace, b = 4 / epsilon = 8 (total, age band, gender, group): mean
    # 500 (standard error 0.15), standard deviation about b * sqrt(2).
    assert abs(values.mean() - 500) < 0.6
    assert 8 * np.sqrt(2) * 0.9 < values.std() < 8 * np.sqrt(2) * 1.1
    assert np.all(values == np.round(values))


def test_window_counts_match_ground_truth_and_hold_no_identity(world):
    clock = Clock()
    analytics = Analytics(fake_engine(world.paths.root), k_min=1, clock=clock)
    image, gender, group = crowd(world, 12)
    counts = closed(analytics, clock, image)
    out = analytics.windows()
    assert counts["faces"] == 12
    assert counts["gender"] == gender
    assert counts["group"] == group
    # The fake model reads age from the blue channel: women ~41, men ~49 years.
    assert counts["age_band"] == {
        "<18": SUPPRESSED,
        "18-29": SUPPRESSED,
        "30-44": gender["female"],
        "45-59": gender["male"],
        "60+": SUPPRESSED,
    }
    text = repr(out)
    assert not any(pid in text for pid in world.people)


def test_frame_with_no_face_counts_zero(world):
    clock = Clock()
    analytics = Analytics(fake_engine(world.paths.root), k_min=1, clock=clock)
    assert closed(analytics, clock, scene([None, None]))["faces"] == SUPPRESSED  # 0 < k_min
    assert analytics.count(scene([None])).faces == 0


def test_embedder_is_never_loaded_in_analytics(world):
    def no_embedder():
        raise AssertionError("analytics must not load the embedder")

    # A full engine whose embedder would fail loudly if analytics ever asked for it.
    engine = fake_engine(world.paths.root, embedder=no_embedder)
    image, _, _ = crowd(world, 5)
    Analytics(engine, k_min=1).analyze(image)
    assert engine.has("embedder") and "embedder" not in engine.loaded
    analytics_only = fake_engine(world.paths.root, mode="analytics")
    Analytics(analytics_only, k_min=1).analyze(image)
    assert analytics_only.loaded == {"demographics", "detector"}


@pytest.fixture
def crowd_world(project):
    return make_world(project, n_subjects=40)


def test_windows_aggregate_frames_and_are_released_once_with_accounted_noise(crowd_world):
    world = crowd_world
    clock = Clock()
    analytics = Analytics(
        fake_engine(world.paths.root), k_min=5, epsilon=1.0, window_seconds=60, clock=clock
    )
    people = list(world.people.values())
    for i in range(4):  # 40 different faces in the window, 10 per frame
        frame = scene([world.photo(p.pid)[0] for p in people[10 * i : 10 * i + 10]], cols=5)
        assert analytics.analyze(frame)["counts"] is None
        clock.t += 5
    assert analytics.windows() == []  # still open
    clock.t += 60
    (window,) = analytics.windows()
    assert window["frames"] == 4
    # 40 faces under discrete Laplace noise of scale 4: the total falls under k = 5 only when
    # the noise is below -35 (probability about 1e-4), so it is released. With 12 faces it was
    # suppressed in a quarter of the windows, as it should be.
    assert window["counts"]["faces"] != SUPPRESSED
    assert abs(window["counts"]["faces"] - 40) < 40
    # The window's budget, accounted by OpenDP: one release spending epsilon 1.
    privacy = window["privacy"]
    assert privacy["epsilon_budget"] == 1.0 and privacy["epsilon_spent"] == pytest.approx(1.0)
    assert privacy["releases"] == 1 and privacy["sensitivity"] == 4
    assert "OpenDP" in privacy["mechanism"] and privacy["library"].startswith("opendp")
    assert analytics.windows() == [window]  # the same release, not fresh noise


def test_no_per_face_data_outlives_the_window(world):
    clock = Clock()
    analytics = Analytics(fake_engine(world.paths.root), k_min=1, clock=clock)
    image, _, _ = crowd(world, 6)
    analytics.analyze(image)
    kept = [v for v in vars(analytics).values() if isinstance(v, np.ndarray)]
    assert kept == []
    (window,) = [v for v in vars(analytics).values() if hasattr(v, "table")]
    assert set(vars(window.table)) <= {"age_band", "gender", "group", "faces", "frames", "joint"}
    # While the window is open it holds one 256-bit hash per face (to count each face once) ...
    assert len(window.seen) == 6
    clock.t += 60
    analytics.windows()
    # ... and once it is closed, nothing of any face is left.
    assert [v for v in vars(analytics).values() if hasattr(v, "seen")] == []


@pytest.fixture
def pipeline_paths(tiny_pipeline):
    """The trained tiny SynthFaces project (``tiny_pipeline`` in tests/conftest.py).

    Requested by name: were the fixture renamed or removed, these tests error, never skip.
    """
    return tiny_pipeline


@pytest.mark.pipeline
def test_synthfaces_scene_counts_match_its_ground_truth(pipeline_paths):
    import io

    import pandas as pd
    from PIL import Image

    from visage_ml.config import load_params
    from visage_ml.rights.sealing import open_sealed_file

    table = pipeline_paths.scenes / "scenes.parquet"
    assert table.is_file(), f"the tiny pipeline wrote no SynthFaces scenes ({table} is missing)"
    truth = pd.read_parquet(table)
    per_scene = truth.groupby("scene_id")["n_faces"].first().sort_values(ascending=False)
    engine = Engine.from_project(
        pipeline_paths, load_params(pipeline_paths.params), mode="analytics"
    )
    clock = Clock()
    analytics = Analytics(engine, k_min=1, clock=clock)
    for scene_id in per_scene.index[:3]:
        n_true = int(per_scene[scene_id])
        # Scene frames are sealed at rest (the `scenes` key): decrypted in memory.
        frame = open_sealed_file(pipeline_paths, pipeline_paths.scenes / f"{scene_id}.sealed")
        with Image.open(io.BytesIO(frame)) as im:
            counts = closed(analytics, clock, im.convert("RGB"))
        out = analytics.windows()
        faces = 0 if counts["faces"] == SUPPRESSED else counts["faces"]
        assert abs(faces - n_true) <= max(1, round(0.3 * n_true))
        for dim in ("age_band", "gender", "group"):
            assert sum(v for v in counts[dim].values() if v != SUPPRESSED) == faces
        assert not any(str(p) in repr(out) for p in truth.get("pid", []) if p)
    assert "embedder" not in engine.loaded


# -- attacks on the release ------------------------------------------------------------------


def test_the_total_never_gives_away_a_suppressed_cell():
    # One person under 18 among 12: k-suppression alone would leave "<18" = 12 - 11.
    t = CountTable(
        age_band={"<18": 1, "18+": 11},
        gender={"female": 6, "male": 6},
        group={"g1": 12},
        faces=12,
    )
    plain = {"faces": 12, "age_band": {"<18": SUPPRESSED, "18+": 11}}
    assert reconstructable(plain, dims=("age_band",)) == ["age_band.<18=1"]
    out = release(t, k_min=5, epsilon=0.0)
    assert out["age_band"] == {"<18": SUPPRESSED, "18+": SUPPRESSED}
    assert out["faces"] == 12 and out["gender"] == {"female": 6, "male": 6}
    assert reconstructable(out, dims=DIMENSIONS) == []


def test_no_random_table_releases_a_cell_that_can_be_worked_out():
    rng = np.random.default_rng(7)
    for _ in range(300):
        n = int(rng.integers(0, 40))
        t = CountTable(
            age_band=dict(
                zip("abcde", rng.multinomial(n, [0.05, 0.3, 0.3, 0.3, 0.05]), strict=True)
            ),
            gender=dict(zip(("f", "m"), rng.multinomial(n, [0.5, 0.5]), strict=True)),
            group=dict(
                zip(
                    ("g1", "g2", "g3", "g4"),
                    rng.multinomial(n, [0.6, 0.2, 0.15, 0.05]),
                    strict=True,
                )
            ),
            faces=n,
        )
        out = release(t, k_min=5, epsilon=0.0)
        assert reconstructable(out, dims=DIMENSIONS) == [], (t, out)
        for dim in DIMENSIONS:
            for v in out[dim].values():
                assert v == SUPPRESSED or v >= 5


def test_a_face_tiled_five_times_reveals_no_cell(world):
    person = next(iter(world.people.values()))
    tile = world.photo(person.pid)[0]
    frame = scene([tile] * 5, cols=5)
    clock = Clock()
    analytics = Analytics(fake_engine(world.paths.root), k_min=5, clock=clock)
    # The attack worked while every detection counted: five copies make cells of k = 5, which
    # the per-frame answer used to release.
    exact = analytics.count(frame)
    assert exact.faces == 5 and 5 in exact.group.values() and 5 in exact.gender.values()
    counts = closed(analytics, clock, frame)
    assert counts["faces"] == SUPPRESSED
    for dim in DIMENSIONS:
        assert set(counts[dim].values()) == {SUPPRESSED}, counts
    assert reconstructable(counts, dims=DIMENSIONS) == []


def test_a_face_tiled_mirrored_and_retouched_still_counts_once(world):
    # The attacker varies the copies so that no two tiles are the same pixels: a mirror image,
    # more contrast, light noise, a darker mirror image. Each would count as another person
    # to a byte-for-byte deduplication; a hash blind to mirror images counts two, a cell of
    # k at k = 2.
    person = next(iter(world.people.values()))
    tile = world.photo(person.pid)[0]
    noise = np.random.default_rng(1).integers(-8, 9, tile.shape)

    def grade(t, gain, offset):
        return np.clip((t.astype(float) - 128) * gain + 128 + offset, 0, 255).astype(np.uint8)

    tiles = [
        tile,
        tile[:, ::-1],
        grade(tile, 1.3, 10),
        np.clip(tile.astype(int) + noise, 0, 255).astype(np.uint8),
        grade(tile[:, ::-1], 0.8, -10),
    ]
    assert len({t.tobytes() for t in tiles}) == 5
    frame = scene(tiles, cols=5)
    clock = Clock()
    analytics = Analytics(fake_engine(world.paths.root), k_min=2, clock=clock)
    exact = analytics.count(frame)
    assert exact.faces == 5 and 5 in exact.gender.values()  # the model sees five faces alike
    counts = closed(analytics, clock, frame)
    assert counts["faces"] == SUPPRESSED
    for dim in DIMENSIONS:
        assert set(counts[dim].values()) == {SUPPRESSED}, counts


@pytest.mark.parametrize("epsilon", [0.0, 1.0])
def test_300_repeated_frames_reveal_no_cell(world, epsilon):
    people = list(world.people.values())[:2]
    frame = scene([world.photo(p.pid)[0] for p in people])
    clock = Clock()
    analytics = Analytics(
        fake_engine(world.paths.root), k_min=5, epsilon=epsilon, clock=clock, window_seconds=60
    )
    for _ in range(300):  # 300 frames, 0.5 s apart: five windows
        assert analytics.analyze(frame)["counts"] is None
        clock.t += 0.5
    clock.t += 60
    windows = analytics.windows()
    assert len(windows) >= 3
    for w in windows:
        counts = w["counts"]
        # Each window counted the two faces once, whatever the repeats: nothing reaches k.
        for dim in DIMENSIONS:
            for v in counts[dim].values():
                assert v == SUPPRESSED or (epsilon and v >= 5), counts
        assert reconstructable(counts, dims=DIMENSIONS) == []
    # Asking again returns the same releases: repeats cannot average the noise away.
    assert all(analytics.windows() == windows for _ in range(300))


def test_a_window_is_closed_on_time_without_a_request_and_its_face_hashes_dropped(world):
    """The face hashes and exact counts of the last window stayed in memory until the next
    frame or reader came, days later perhaps; the module says they go when it closes."""
    import threading
    import time

    from visage_ml.serving.analytics import close_windows_periodically

    clock = Clock()
    analytics = Analytics(fake_engine(world.paths.root), k_min=1, window_seconds=60, clock=clock)
    image, _, _ = crowd(world, 3)
    analytics.analyze(image)
    assert analytics._current is not None and analytics._current.seen is not None
    clock.t += 61
    stop = threading.Event()
    thread = threading.Thread(
        target=close_windows_periodically,
        args=(analytics,),
        kwargs={"stop": stop, "every": 0.05},
        daemon=True,
    )
    thread.start()
    try:
        for _ in range(50):
            if analytics._current is None:
                break
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert analytics._current is None
    assert len(analytics._closed) == 1
