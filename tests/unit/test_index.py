"""The in-memory template index: rows and pids stay consistent, search is exact."""

from __future__ import annotations

import numpy as np

from visage_ml.serving.index import TemplateIndex


def test_index_removal_keeps_rows_and_pids_consistent():
    rng = np.random.default_rng(1)
    index = TemplateIndex(8)
    reference: dict[str, np.ndarray] = {}
    for _step in range(400):
        pid = f"p{rng.integers(0, 40):016x}"
        if rng.random() < 0.6:
            v = rng.normal(size=8).astype(np.float32)
            index.put(pid, v)
            reference[pid] = v
        else:
            assert index.remove(pid) == (pid in reference)
            reference.pop(pid, None)
        assert len(index) == len(reference)
    for pid, row in zip(index.pids(), index.matrix, strict=True):
        np.testing.assert_array_equal(row, reference[pid])
    pids = list(reference)
    m = np.stack([reference[p] for p in pids])
    for n_queries in (1, 3, 6):  # one-thread loop and BLAS paths
        q = rng.normal(size=(n_queries, 8)).astype(np.float32)
        got = index.search(q, top_k=4, threshold=-10.0)
        for qi, row in zip(q, got, strict=True):
            want = [pids[i] for i in np.argsort(-(m @ qi))[:4]]
            assert [p for p, _ in row] == want
            np.testing.assert_allclose([v for _, v in row], np.sort(m @ qi)[::-1][:4], rtol=1e-5)
