import numpy as np
import pytest

from visage_ml.evaluation.identification import (
    open_set_metrics,
    search_scores,
    split_enrolment,
)


def test_enrolment_split_is_deterministic_and_identity_disjoint():
    codes = np.repeat(np.arange(20), np.arange(20) % 4 + 2)  # 2..5 images per identity
    e = split_enrolment(codes, enrolled_share=0.5, gallery_images=1, seed=3)
    again = split_enrolment(codes, enrolled_share=0.5, gallery_images=1, seed=3)
    assert np.array_equal(e.gallery_rows, again.gallery_rows)
    assert e.n_enrolled == 10
    # Every image is used exactly once, as gallery or probe.
    used = np.sort(np.r_[e.gallery_rows, e.probe_rows])
    assert np.array_equal(used, np.arange(codes.size))
    # One gallery image per enrolled identity; non-mated probes are never enrolled.
    gallery_ids = codes[e.gallery_rows]
    assert np.unique(gallery_ids).size == 10 == gallery_ids.size
    nonmated = codes[e.probe_rows[e.probe_mate < 0]]
    assert not set(nonmated) & set(gallery_ids)
    # A mated probe's mate column points at its own identity's gallery entry.
    mated = e.probe_mate >= 0
    col_identity = {m: codes[r] for m, r in zip(e.gallery_ids, e.gallery_rows, strict=True)}
    assert all(
        col_identity[m] == codes[r]
        for m, r in zip(e.probe_mate[mated], e.probe_rows[mated], strict=True)
    )
    other = split_enrolment(codes, enrolled_share=0.5, gallery_images=1, seed=4)
    assert not np.array_equal(np.sort(other.gallery_rows), np.sort(e.gallery_rows))


def test_search_takes_the_best_gallery_image_per_identity():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    ids = np.array([0, 1, 0])
    probes = np.array([[0.0, 1.0], [1.0, 0.0]])
    s = search_scores(probes, gallery, ids, 2)
    np.testing.assert_allclose(s, [[0.8, 1.0], [1.0, 0.0]], atol=1e-6)
    with pytest.raises(ValueError, match="gallery image"):
        search_scores(probes, gallery, np.array([0, 2, 0]), 3)


def test_open_set_metrics_hand_checked():
    mated = np.array(
        [
            [0.9, 0.2, 0.1],  # mate 0 at rank 1
            [0.8, 0.7, 0.1],  # mate 1 at rank 2
            [0.1, 0.2, 0.6],  # mate 2 at rank 1
        ]
    )
    tops = np.array([0.95, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15])
    nonmated = np.column_stack([tops, tops - 0.1, tops - 0.2])
    scores = np.vstack([mated, nonmated])
    mate = np.r_[[0, 1, 2], -np.ones(10, int)]
    m = open_set_metrics(scores, mate, fpirs=(0.01, 0.1), ranks=(1, 2))
    assert m["rank1"] == pytest.approx(2 / 3)
    assert m["rank2"] == 1.0
    # FPIR 0.1 of 10 non-mated searches: one may pass; threshold just above 0.55.
    assert 0.55 < m["threshold_at_fpir_1e-1"] <= 0.5500001
    assert m["fpir_at_fpir_1e-1"] == pytest.approx(0.1)
    # Hits: probe 0 (0.9) and probe 2 (0.6); probe 1 is at rank 2.
    assert m["fnir_at_fpir_1e-1"] == pytest.approx(1 / 3)
    # FPIR 0.01 of 10: no non-mated search may pass, so the threshold clears 0.95 and every
    # mated search misses.
    assert m["fnir_at_fpir_1e-2"] == 1.0
    assert m["n_mated_probes"] == 3 and m["n_nonmated_probes"] == 10
