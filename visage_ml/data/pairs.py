"""Comparison pairs of a labelled image set: all genuine pairs, a sample of impostor pairs, and
the operating point (threshold at a false accept rate) their scores give.

Training validates on these pairs and evaluation measures on them: one definition of the
comparison protocol for both.

Everything is index arithmetic on integer arrays (no Python loop over pairs): a pair is the two
row indices ``(i, j)`` with ``i < j`` into the embedding matrix, and its score is the cosine
similarity of the two L2-normalised embeddings, computed in blocks of batched dot products.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

MSG_TOO_FEW_IDENTITIES = (
    "impostor pairs need images of at least two identities, found {n}; evaluate on a test split "
    "with more identities (prepare.split.test in params.yaml)"
)
MSG_NO_IMPOSTORS = "no impostor scores: cannot place a threshold"
MSG_NO_GENUINE = "no genuine scores: cannot compute TAR"


@dataclass(frozen=True)
class PairSet:
    """Comparisons of one evaluation: row indices, identity codes and cosine scores.

    Attributes
    ----------
    a, b
        Row indices (into the embedding matrix) of the two images, ``a < b``.
    id_a, id_b
        Identity codes (``0..n_identities-1``) of the two images.
    genuine
        ``True`` where both images show the same identity.
    score
        Cosine similarity, higher = more alike (float64).
    n_identities
        Number of identity codes.
    """

    a: np.ndarray
    b: np.ndarray
    id_a: np.ndarray
    id_b: np.ndarray
    genuine: np.ndarray
    score: np.ndarray
    n_identities: int

    @property
    def n_genuine(self) -> int:
        """Number of genuine (mated) pairs."""
        return int(self.genuine.sum())

    @property
    def n_impostor(self) -> int:
        """Number of impostor (non-mated) pairs."""
        return int(self.genuine.size - self.genuine.sum())


def encode_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes ``0..K-1`` for arbitrary labels; returns ``(codes, unique_labels)``."""
    uniq, codes = np.unique(np.asarray(labels), return_inverse=True)
    return codes.astype(np.int64), uniq


def genuine_pairs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of distinct images of the same identity.

    Parameters
    ----------
    codes
        Identity code per image, shape ``(N,)``.

    Returns
    -------
    tuple of numpy.ndarray
        Row indices ``(a, b)`` with ``a < b``, sorted by ``(a, b)``.
    """
    codes = np.asarray(codes)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    sizes = np.diff(np.r_[starts, codes.size])
    parts_a, parts_b = [], []
    # One triangle per distinct identity size (a handful of sizes), broadcast over identities.
    for size in np.unique(sizes[sizes >= 2]):
        first = starts[sizes == size]
        iu, ju = np.triu_indices(int(size), k=1)
        parts_a.append((first[:, None] + iu[None, :]).ravel())
        parts_b.append((first[:, None] + ju[None, :]).ravel())
    if not parts_a:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    pa, pb = order[np.concatenate(parts_a)], order[np.concatenate(parts_b)]
    a, b = np.minimum(pa, pb), np.maximum(pa, pb)
    key = np.lexsort((b, a))
    return a[key].astype(np.int64), b[key].astype(np.int64)


# Largest number of ordered image pairs (n * n) whose drawn-or-not bitmap :func:`impostor_pairs`
# keeps (64 MB); beyond, it finds repeats by sorting.
SEEN_BITMAP_MAX = 64 * 1024 * 1024


def impostor_pairs(codes: np.ndarray, n_pairs: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic sample of distinct impostor pairs (all of them when there are fewer).

    Unordered pairs of images of different identities are drawn uniformly without replacement
    by rejection sampling in blocks, so the sample depends only on ``codes``, ``n_pairs`` and
    ``seed``.

    Parameters
    ----------
    codes
        Identity code per image, shape ``(N,)``.
    n_pairs
        How many pairs to return at most.
    seed
        Seed of the sampler.

    Returns
    -------
    tuple of numpy.ndarray
        Row indices ``(a, b)`` with ``a < b``, sorted by ``(a, b)``.

    Raises
    ------
    ValueError
        When fewer than two identities are present.
    """
    codes = np.asarray(codes)
    n = codes.size
    n_ids = np.unique(codes).size
    if n_ids < 2:
        raise ValueError(MSG_TOO_FEW_IDENTITIES.format(n=n_ids))
    counts = np.bincount(np.unique(codes, return_inverse=True)[1])
    total = n * (n - 1) // 2 - int((counts * (counts - 1) // 2).sum())
    if total <= n_pairs:
        iu, ju = np.triu_indices(n, k=1)
        keep = codes[iu] != codes[ju]
        return iu[keep].astype(np.int64), ju[keep].astype(np.int64)
    rng = np.random.default_rng(seed)
    # Pairs already drawn, as a bitmap of pair keys where it fits in memory (near the total the
    # draws are mostly repeats, and re-sorting all that was chosen in each round took seconds).
    seen = np.zeros(n * n, dtype=bool) if n * n <= SEEN_BITMAP_MAX else None
    chosen = np.zeros(0, dtype=np.int64)
    parts: list[np.ndarray] = []
    size = 0
    while size < n_pairs:
        need = n_pairs - size
        draw = int(need * 1.3) + 1024
        i = rng.integers(0, n, size=draw)
        j = rng.integers(0, n, size=draw)
        ok = codes[i] != codes[j]
        lo, hi = np.minimum(i[ok], j[ok]), np.maximum(i[ok], j[ok])
        keys = lo * n + hi
        # Keep first occurrences in draw order, so the sample is a prefix-stable sequence.
        if seen is None:
            merged = np.concatenate([chosen, keys])
            _, first = np.unique(merged, return_index=True)
            chosen = merged[np.sort(first)]
            size = chosen.size
        else:
            _, first = np.unique(keys, return_index=True)
            keys = keys[np.sort(first)]
            keys = keys[~seen[keys]]
            seen[keys] = True
            parts.append(keys)
            size += keys.size
    if seen is not None:
        chosen = np.concatenate(parts)
    chosen = np.sort(chosen[:n_pairs])
    return (chosen // n).astype(np.int64), (chosen % n).astype(np.int64)


def pair_scores(
    embeddings: np.ndarray, a: np.ndarray, b: np.ndarray, *, block: int = 65536
) -> np.ndarray:
    """Cosine similarity of rows ``a`` and ``b`` of L2-normalised ``embeddings`` (float64).

    Parameters
    ----------
    embeddings
        ``(N, D)`` unit-norm rows.
    a, b
        Row indices of the pairs.
    block
        Pairs per batched dot product (bounds the temporary memory).

    Returns
    -------
    numpy.ndarray
        ``(len(a),)`` scores.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    out = np.empty(len(a), dtype=np.float64)
    for start in range(0, len(a), block):
        sl = slice(start, start + block)
        out[sl] = np.einsum("ij,ij->i", emb[a[sl]], emb[b[sl]], dtype=np.float64)
    return out


def build_pairs(
    embeddings: np.ndarray, identity_codes: np.ndarray, *, impostor_limit: int, seed: int
) -> PairSet:
    """All genuine pairs plus a deterministic impostor sample, scored.

    Parameters
    ----------
    embeddings
        ``(N, D)`` unit-norm embeddings.
    identity_codes
        Identity code per row, ``0..K-1``.
    impostor_limit
        Most impostor pairs to sample.
    seed
        Seed of the impostor sampler.

    Returns
    -------
    PairSet
        Genuine pairs first, then impostor pairs.
    """
    codes = np.asarray(identity_codes, dtype=np.int64)
    ga, gb = genuine_pairs(codes)
    ia, ib = impostor_pairs(codes, impostor_limit, seed=seed)
    a, b = np.concatenate([ga, ia]), np.concatenate([gb, ib])
    genuine = np.zeros(a.size, dtype=bool)
    genuine[: ga.size] = True
    logger.info("scoring %d genuine and %d impostor pairs", ga.size, ia.size)
    return PairSet(
        a=a,
        b=b,
        id_a=codes[a],
        id_b=codes[b],
        genuine=genuine,
        score=pair_scores(embeddings, a, b),
        n_identities=int(codes.max()) + 1 if codes.size else 0,
    )


def threshold_at_far(impostor_scores: np.ndarray, far: float) -> float:
    """Smallest threshold ``t`` with ``mean(impostor >= t) <= far`` (scores: higher = closer)."""
    imp = np.sort(np.asarray(impostor_scores, dtype=np.float64))[::-1]
    if imp.size == 0:
        raise ValueError(MSG_NO_IMPOSTORS)
    k = int(np.floor(far * imp.size))
    if k >= imp.size:
        return float(imp[-1])
    # Accept strictly above the (k+1)-th highest impostor score.
    return float(np.nextafter(imp[k], np.inf))


def tar_at_far(genuine_scores: np.ndarray, impostor_scores: np.ndarray, far: float) -> float:
    """True accept rate of genuine pairs at the threshold that gives false accept rate ``far``."""
    gen = np.asarray(genuine_scores, dtype=np.float64)
    if gen.size == 0:
        raise ValueError(MSG_NO_GENUINE)
    t = threshold_at_far(impostor_scores, far)
    return float(np.mean(gen >= t))
