"""Open-set (1:N) identification: rank-1 and FNIR at FPIR, in the manner of NIST FRVT 1:N.

The test identities are split into *enrolled* ones (a few images each form the gallery, the rest
are mated probes) and *non-mated* ones (never enrolled, all their images are non-mated probes).
A search returns the best score per enrolled identity (max over its gallery images).

- rank-k: share of mated searches whose mate is among the top ``k`` identities;
- FPIR(T): share of non-mated searches whose top score is ``>= T``;
- FNIR(T): share of mated searches whose mate is not at rank 1 with a score ``>= T``
  (NIST's FNIR(N, R=1, T)); reported at the ``T`` that gives each target FPIR.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from visage_ml.data.pairs import threshold_at_far
from visage_ml.evaluation.calibration import NO_CALIBRATION, ScoreCalibration
from visage_ml.evaluation.verification import far_key

DEFAULT_FPIRS: tuple[float, ...] = (1e-2, 1e-1)


@dataclass(frozen=True)
class Enrolment:
    """Rows of one open-set experiment.

    Attributes
    ----------
    gallery_rows, gallery_ids
        Gallery images and their enrolled-identity index (``0..n_enrolled-1``).
    probe_rows, probe_mate
        Probe images and their mate's enrolled-identity index (``-1`` = non-mated).
    n_enrolled
        Number of enrolled identities.
    """

    gallery_rows: np.ndarray
    gallery_ids: np.ndarray
    probe_rows: np.ndarray
    probe_mate: np.ndarray
    n_enrolled: int


def split_enrolment(
    identity_codes: np.ndarray,
    *,
    enrolled_share: float = 0.5,
    gallery_images: int = 1,
    seed: int = 0,
) -> Enrolment:
    """Split identities into enrolled and non-mated ones, and enrolled images into gallery/probes.

    Parameters
    ----------
    identity_codes
        Identity code per image.
    enrolled_share
        Share of identities enrolled (at least one identity stays on each side when there are
        two or more).
    gallery_images
        Images per enrolled identity placed in the gallery (chosen at random, seeded).
    seed
        Seed of both choices.

    Returns
    -------
    Enrolment
        Deterministic for given inputs.
    """
    codes = np.asarray(identity_codes, dtype=np.int64)
    ids = np.unique(codes)
    rng = np.random.default_rng(seed)
    k = len(ids)
    n_enrolled = round(enrolled_share * k)
    if k >= 2:
        n_enrolled = min(max(n_enrolled, 1), k - 1)
    enrolled = rng.permutation(ids)[:n_enrolled]
    enrolled = np.sort(enrolled)
    enrolled_index = np.full(int(codes.max()) + 1 if codes.size else 0, -1, dtype=np.int64)
    enrolled_index[enrolled] = np.arange(enrolled.size)
    # Random order within each identity: shuffle rows, then stable-sort by identity.
    shuffled = rng.permutation(codes.size)
    by_id = shuffled[np.argsort(codes[shuffled], kind="stable")]
    sorted_codes = codes[by_id]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    sizes = np.diff(np.r_[starts, codes.size])
    rank_in_id = np.arange(codes.size) - np.repeat(starts, sizes)
    mate = enrolled_index[sorted_codes]
    in_gallery = (mate >= 0) & (rank_in_id < gallery_images)
    gallery_rows = by_id[in_gallery]
    probe_rows = by_id[~in_gallery]
    return Enrolment(
        gallery_rows=gallery_rows,
        gallery_ids=mate[in_gallery],
        probe_rows=probe_rows,
        probe_mate=mate[~in_gallery],
        n_enrolled=int(enrolled.size),
    )


def search_scores(
    probes: np.ndarray,
    gallery: np.ndarray,
    gallery_ids: np.ndarray,
    n_enrolled: int,
    *,
    block: int = 4096,
    calibration: ScoreCalibration = NO_CALIBRATION,
) -> np.ndarray:
    """Best cosine score of each probe against each enrolled identity.

    Parameters
    ----------
    probes, gallery
        Unit-norm embeddings ``(P, D)`` and ``(G, D)``.
    gallery_ids
        Enrolled-identity index of each gallery row (every index ``0..n_enrolled-1`` present).
    n_enrolled
        Number of enrolled identities.
    block
        Probes per matrix product.
    calibration
        Score calibration applied to every comparison before the best is taken (as serving
        applies it); none by default.

    Returns
    -------
    numpy.ndarray
        ``(P, n_enrolled)`` float64 scores.
    """
    order = np.argsort(gallery_ids, kind="stable")
    gal = np.asarray(gallery, dtype=np.float32)[order]
    sorted_ids = np.asarray(gallery_ids)[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    if sorted_ids.size and (len(starts) != n_enrolled or sorted_ids[-1] != n_enrolled - 1):
        raise ValueError("every enrolled identity needs at least one gallery image")
    out = np.empty((len(probes), n_enrolled), dtype=np.float64)
    gal_sides = calibration.sides(gal) if not calibration.identity else None
    for s in range(0, len(probes), block):
        chunk = np.asarray(probes[s : s + block], dtype=np.float32)
        sims = chunk @ gal.T
        if gal_sides is not None:
            sims = calibration.apply(sims, calibration.sides(chunk)[:, None], gal_sides[None, :])
        out[s : s + block] = np.maximum.reduceat(sims, starts, axis=1)
    return out


def open_set_metrics(
    scores: np.ndarray,
    mate: np.ndarray,
    *,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    ranks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Rank-k identification rates and FNIR at each FPIR.

    Parameters
    ----------
    scores
        ``(P, E)`` score of each probe against each enrolled identity.
    mate
        Mate's column per probe, ``-1`` for non-mated probes.
    fpirs
        Target false positive identification rates.
    ranks
        Ranks at which to report the (closed-set) identification rate.

    Returns
    -------
    dict
        ``rank1``, ``rank5``, ``fnir_at_fpir_1e-2``, ``threshold_at_fpir_1e-2``,
        ``fpir_at_fpir_1e-2`` (the FPIR actually reached), and probe counts.
    """
    scores = np.asarray(scores, dtype=np.float64)
    mate = np.asarray(mate, dtype=np.int64)
    mated = mate >= 0
    out: dict[str, float] = {
        "n_enrolled": float(scores.shape[1]),
        "n_mated_probes": float(mated.sum()),
        "n_nonmated_probes": float((~mated).sum()),
    }
    ms = scores[mated]
    mate_score = ms[np.arange(ms.shape[0]), mate[mated]]
    rank = 1 + (ms > mate_score[:, None]).sum(axis=1)
    for r in ranks:
        out[f"rank{r}"] = float(np.mean(rank <= r)) if rank.size else float("nan")
    nonmated_top = scores[~mated].max(axis=1) if scores.shape[1] else np.zeros(0)
    for fpir in fpirs:
        key = far_key(fpir)
        if nonmated_top.size == 0 or rank.size == 0:
            out[f"fnir_at_fpir_{key}"] = float("nan")
            out[f"threshold_at_fpir_{key}"] = float("nan")
            out[f"fpir_at_fpir_{key}"] = float("nan")
            continue
        t = threshold_at_far(nonmated_top, fpir)
        hit = (rank == 1) & (mate_score >= t)
        out[f"fnir_at_fpir_{key}"] = float(1.0 - hit.mean())
        out[f"threshold_at_fpir_{key}"] = float(t)
        out[f"fpir_at_fpir_{key}"] = float(np.mean(nonmated_top >= t))
    return out
