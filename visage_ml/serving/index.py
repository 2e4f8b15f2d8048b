"""The in-memory template index: unit templates in one float32 matrix, exact cosine search.

The gallery (:mod:`visage_ml.serving.gallery`) decides who may be in it; this module only
holds rows and scores them. With a score calibration set (:meth:`TemplateIndex.set_calibration`,
the released ``reports/score_calibration.json``) every score is calibrated before it is compared
with a threshold or ranked, as evaluation measured the thresholds. What the calibration needs to
know of each template (its "side": the cluster for FSN / FairCal, the mean and deviation of its
top cohort scores for AS-norm) is computed once, when the template is loaded or enrolled, and
kept beside its row; a query's side is computed once per search, so a search costs one extra
pass over the scores (plus, for AS-norm, one product of the queries with the cohort).
"""

from __future__ import annotations

import numpy as np

from visage_ml.evaluation.calibration import ScoreCalibration

MSG_DIM = "embeddings have {found} values but the gallery's embedder makes {expected}"
MSG_BAD_EMBEDDINGS = "embeddings must be finite, non-zero float vectors of shape (N, {dim})"


def template_of(embeddings: np.ndarray, dim: int) -> np.ndarray:
    """One template from enrolment embeddings: normalised mean of normalised rows.

    Raises
    ------
    ValueError
        Wrong size, non-finite or zero vectors.
    """
    e = np.asarray(embeddings, dtype=np.float32)
    if e.ndim == 1:
        e = e[None]
    if e.ndim != 2 or e.shape[0] == 0:
        raise ValueError(MSG_BAD_EMBEDDINGS.format(dim=dim))
    if e.shape[1] != dim:
        raise ValueError(MSG_DIM.format(found=e.shape[1], expected=dim))
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    if not np.all(np.isfinite(e)) or np.any(norms <= 1e-12):
        raise ValueError(MSG_BAD_EMBEDDINGS.format(dim=dim))
    mean = (e / norms).mean(axis=0)
    n = float(np.linalg.norm(mean))
    if not np.isfinite(n) or n <= 1e-6:
        raise ValueError(MSG_BAD_EMBEDDINGS.format(dim=dim))
    return (mean / n).astype(np.float32)


def normalize_queries(embeddings: np.ndarray, dim: int) -> np.ndarray:
    """Query embeddings as a C-contiguous float32 ``(Q, dim)`` array of unit rows."""
    q = np.asarray(embeddings, dtype=np.float32)
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(MSG_DIM.format(found=q.shape[-1] if q.ndim else 0, expected=dim))
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if not np.all(np.isfinite(q)) or np.any(norms <= 1e-12):
        raise ValueError(MSG_BAD_EMBEDDINGS.format(dim=dim))
    return np.ascontiguousarray(q / norms, dtype=np.float32)


def score_against(
    queries: np.ndarray, template: np.ndarray, calibration: ScoreCalibration | None
) -> np.ndarray:
    """Scores of unit query rows against one unit template that need not be a row of an index,
    as :meth:`TemplateIndex.score` scores a row: the cosine, calibrated (with a calibration)
    from the query's side and the template's.

    Returns
    -------
    numpy.ndarray
        ``(Q,)`` float64 scores, to compare with the threshold as a verification's.
    """
    raw = (queries @ template).astype(np.float64)
    if calibration is None:
        return raw
    return calibration.apply(raw, calibration.sides(queries), calibration.sides(template[None]))


class TemplateIndex:
    """Rows ``[0, n)`` of a float32 matrix of unit templates, with pid <-> row maps.

    Removal moves the last row into the freed slot (O(D), whatever the size) and zeroes the old
    last row, so the matrix only ever holds searchable subjects. Not thread-safe by itself: the
    gallery serialises access.
    """

    def __init__(self, dim: int, capacity: int = 0) -> None:
        self.dim = int(dim)
        self._m = np.zeros((max(int(capacity), 16), self.dim), dtype=np.float32)
        self._pids: list[str] = []
        self._row: dict[str, int] = {}
        self.calibration: ScoreCalibration | None = None
        # Each row's side of a comparison under the calibration (cached: computed on put).
        self._side = np.zeros(self._m.shape[0], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._pids)

    def __contains__(self, pid: object) -> bool:
        return pid in self._row

    @property
    def matrix(self) -> np.ndarray:
        """The searchable rows (a view; do not keep it across changes)."""
        return self._m[: len(self._pids)]

    def pids(self) -> list[str]:
        """Pids in row order."""
        return list(self._pids)

    def reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` rows without further copies."""
        if capacity > self._m.shape[0]:
            grown = np.zeros((capacity, self.dim), dtype=np.float32)
            grown[: len(self._pids)] = self._m[: len(self._pids)]
            self._m = grown
            sides = np.zeros(capacity, dtype=self._side.dtype)
            sides[: len(self._pids)] = self._side[: len(self._pids)]
            self._side = sides

    def set_calibration(self, calibration: ScoreCalibration | None) -> None:
        """Calibrate every score from now on (None or method ``none``: raw cosine scores)."""
        if calibration is None or calibration.identity:
            self.calibration = None
            self._side = np.zeros(self._m.shape[0], dtype=np.int64)
            return
        n = len(self._pids)
        sides = np.zeros(self._m.shape[0], dtype=calibration.side_dtype)
        if n:
            sides[:n] = calibration.sides(self._m[:n])
        self._side = sides
        self.calibration = calibration

    def put(self, pid: str, vector: np.ndarray) -> None:
        """Add ``pid``'s template or replace it."""
        row = self._row.get(pid)
        if row is None:
            n = len(self._pids)
            if n == self._m.shape[0]:
                self.reserve(max(16, n * 2))
            row = n
            self._pids.append(pid)
            self._row[pid] = row
        self._m[row] = vector
        if self.calibration is not None:
            self._side[row] = self.calibration.sides(self._m[row])[0]

    def extend(self, pids: list[str], vectors: np.ndarray) -> None:
        """Append many new subjects at once (one block copy); ``pids`` must not be present."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(pids), self.dim):
            raise ValueError(f"expected vectors of shape ({len(pids)}, {self.dim})")
        if any(p in self._row for p in pids) or len(set(pids)) != len(pids):
            raise ValueError("extend() takes new, distinct pids; use put() to replace")
        n = len(self._pids)
        self.reserve(n + len(pids))
        self._m[n : n + len(pids)] = vectors
        if self.calibration is not None and len(pids):
            self._side[n : n + len(pids)] = self.calibration.sides(vectors)
        self._row.update((p, n + i) for i, p in enumerate(pids))
        self._pids.extend(pids)

    def remove(self, pid: str) -> bool:
        """Drop ``pid``'s row; returns whether it was there."""
        row = self._row.pop(pid, None)
        if row is None:
            return False
        last = len(self._pids) - 1
        if row != last:
            moved = self._pids[last]
            self._m[row] = self._m[last]
            self._side[row] = self._side[last]
            self._pids[row] = moved
            self._row[moved] = row
        self._m[last] = 0.0
        self._pids.pop()
        return True

    def score(self, pid: str, query: np.ndarray) -> float:
        """Cosine of ``pid``'s template with one unit query (calibrated, with a calibration)."""
        row = self._row[pid]
        raw = float(self._m[row] @ query)
        if self.calibration is None:
            return raw
        cal = self.calibration
        calibrated = cal.apply(np.array([raw]), cal.sides(query), self._side[row : row + 1])
        return float(calibrated[0])

    def search(
        self, queries: np.ndarray, *, top_k: int, threshold: float
    ) -> list[list[tuple[str, float]]]:
        """Exact cosine top-``top_k`` at or above ``threshold`` for each unit query row.

        One BLAS pass streams the matrix once per call (matrix-vector product for a single
        query, matrix-matrix for several); only scores at or above the threshold are ranked.
        """
        n = len(self._pids)
        if n == 0 or top_k < 1:
            return [[] for _ in range(queries.shape[0])]
        m = self._m[:n]
        # BLAS at every size: measured here (benchmarks/bench_gallery.py) its matrix-vector
        # product beats numpy's own loop from 145 to 1M templates, idle or with the cores
        # shared, by 2-2.5x on cache-resident galleries.
        # One query: gemv, one pass over the matrix; several: gemm, still one pass for all.
        scores = (m @ queries[0])[None] if queries.shape[0] == 1 else queries @ m.T
        if self.calibration is not None:
            scores = self.calibration.apply(
                scores, self.calibration.sides(queries)[:, None], self._side[None, :n]
            )
        out: list[list[tuple[str, float]]] = []
        for s in scores:
            cand = np.flatnonzero(s >= threshold)
            if cand.size > top_k:
                cand = cand[np.argpartition(s[cand], -top_k)[-top_k:]]
            order = cand[np.argsort(-s[cand], kind="stable")]
            out.append([(self._pids[i], float(s[i])) for i in order])
        return out
