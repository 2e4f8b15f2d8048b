"""LFW "unrestricted" 10-fold verification accuracy from a pairs protocol.

For each fold, the threshold that maximises accuracy on the other nine folds is applied to the
held-out fold; the result is the mean fold accuracy with its standard error (``std / sqrt(k)``,
the form the LFW benchmark page asks for), the number facenet-pytorch's LFW notebook reports.
Every pair of the test population is scored: a pair with an image the detector missed counts as
a non-match instead of being skipped, and the misses are reported with the accuracy.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from visage_ml.data.pairs import pair_scores

logger = logging.getLogger(__name__)

MSG_NO_FOLDS = "the LFW protocol needs at least two folds with pairs; re-import the protocol file"


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold maximising the accuracy of ``score >= t`` on ``(scores, same)``.

    Candidates are the midpoints between consecutive distinct scores plus one below and one
    above all of them; ties in accuracy go to the highest threshold.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    if s.size == 0:
        raise ValueError("no pairs to choose a threshold on")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    tp = np.r_[0, np.cumsum(y)[ends]]
    fp = np.r_[0, np.cumsum(~y)[ends]]
    correct = tp + (int((~y).sum()) - fp)
    k = int(np.argmax(correct))  # first maximum = highest threshold
    distinct = s[ends]
    if k == 0:
        return float(np.nextafter(distinct[0], np.inf))
    if k == len(distinct):
        return float(distinct[-1])
    return float((distinct[k - 1] + distinct[k]) / 2.0)


def ten_fold_accuracy(
    scores: np.ndarray,
    same: np.ndarray,
    folds: np.ndarray,
    *,
    rejected: np.ndarray | None = None,
) -> dict[str, float]:
    """Cross-validated accuracy: threshold on the other folds, accuracy on each fold.

    Parameters
    ----------
    scores
        Similarity per protocol pair.
    same
        ``True`` for pairs of the same person.
    folds
        Fold number per pair (10 folds in the standard protocol).
    rejected
        ``True`` for pairs that no threshold accepts (an image without a face crop: the pair
        is a non-match whatever its score). They count in every fold's accuracy, and add the
        same number of correct answers to every threshold candidate, so the threshold is
        chosen on the other pairs.

    Returns
    -------
    dict
        ``accuracy`` (mean over folds), ``std`` (sample std of fold accuracies), ``stderr``,
        ``n_folds``, ``n_pairs`` and ``threshold`` (mean of the per-fold thresholds).
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    f = np.asarray(folds)
    r = np.zeros(s.size, dtype=bool) if rejected is None else np.asarray(rejected, dtype=bool)
    fold_ids = np.unique(f)
    if fold_ids.size < 2:
        raise ValueError(MSG_NO_FOLDS)
    accs, thresholds = [], []
    for fold in fold_ids:
        test = f == fold
        train = ~test & ~r
        t = best_threshold(s[train], y[train]) if train.any() else float("inf")
        accepted = (s[test] >= t) & ~r[test]
        accs.append(float(np.mean(accepted == y[test])))
        thresholds.append(t)
    acc = np.asarray(accs)
    std = float(acc.std(ddof=1))
    return {
        "accuracy": float(acc.mean()),
        "std": std,
        "stderr": std / float(np.sqrt(acc.size)),
        "n_folds": float(acc.size),
        "n_pairs": float(s.size),
        "threshold": float(np.mean(thresholds)),
    }


# Image status in the protocol: a crop was embedded, the detector missed it (no crop), or it
# was not evaluated at all (not in the test split: role, consent, not imported). An erasure
# leaves no pair naming the subject's images: those pairs are gone from the protocol.
EMBEDDED, MISSED, NOT_EVALUATED = 0, 1, 2


def _image_status(
    ids: pd.Series,
    embedded: pd.Index,
    missed: pd.Index,
) -> np.ndarray:
    status = np.full(len(ids), NOT_EVALUATED, dtype=np.int8)
    status[ids.isin(missed).to_numpy()] = MISSED
    status[ids.isin(embedded).to_numpy()] = EMBEDDED
    return status


def protocol_accuracy(
    protocol: pd.DataFrame,
    image_ids: np.ndarray,
    embeddings: np.ndarray,
    *,
    detection: pd.DataFrame | None = None,
    fallback_ids: np.ndarray | None = None,
) -> dict[str, Any]:
    """10-fold accuracy on every protocol pair of the test population, misses counted.

    A pair is scored when each of its images was evaluated: embedded (a test crop, detected or
    a counted fallback crop) or missed by the detector (a test image without a face crop). A
    pair with a missed image is a non-match at any threshold (a genuine pair with a miss is an
    error, as in NIST FRVT's failure-to-enrol accounting); it is never dropped. Pairs with an
    image outside the test split (a training-role or unconsented subject, an image not
    imported) cannot be scored and are counted as ``pairs_not_evaluated``. An erased subject's
    pairs are not among them: the erasure removed them from the protocol
    (``pairs_in_protocol`` counts what is left).

    Parameters
    ----------
    protocol
        ``data/protocols/lfw_pairs.parquet`` content: ``fold``, ``image_id_a``, ``image_id_b``,
        ``same``. Folds below 0 are LFW View 1 (pairsDevTest/DevTrain, see
        :mod:`visage_ml.data.importers`) and are left out.
    image_ids
        Image id of each row of ``embeddings``.
    embeddings
        Unit-norm embeddings.
    detection
        The detector's outcome per image (``image_id``, ``detected``, ``split``); without it a
        missed image cannot be told from one not evaluated.
    fallback_ids
        Image ids among ``image_ids`` whose crop is a fallback crop (the detector missed them).

    Returns
    -------
    dict
        ``pairs_in_protocol``, ``pairs_used`` (scored), ``pairs_with_undetected_image`` (scored
        as non-matches), ``pairs_with_fallback_crop``, ``pairs_not_evaluated``, ``images``
        (distinct images of the scored pairs), ``images_missed`` (by the detector),
        ``images_fallback``, ``miss_rate`` (missed / images), the :func:`ten_fold_accuracy`
        keys and ``accuracy_detected_pairs`` (the same protocol on the pairs whose two images
        have a crop, as tools that skip misses report it); or ``skipped`` (the reason) when
        fewer than two folds have scored pairs.
    """
    table = protocol[protocol["fold"] >= 0].reset_index(drop=True)
    ids = pd.Index(np.asarray(image_ids).astype(str))
    fallback = pd.Index(
        [] if fallback_ids is None else np.asarray(fallback_ids).astype(str), dtype=object
    )
    missed = pd.Index([], dtype=object)
    if detection is not None and len(detection):
        det = detection
        in_test = det["split"].astype(str) == "test" if "split" in det else True
        missed_rows = det[~det["detected"].astype(bool) & in_test]
        missed = pd.Index(missed_rows["image_id"].astype(str)).difference(ids)
    col_a, col_b = table["image_id_a"].astype(str), table["image_id_b"].astype(str)
    st_a, st_b = _image_status(col_a, ids, missed), _image_status(col_b, ids, missed)
    used = (st_a != NOT_EVALUATED) & (st_b != NOT_EVALUATED)
    rejected = used & ((st_a == MISSED) | (st_b == MISSED))
    both_crops = used & ~rejected
    with_fallback = used & (col_a.isin(fallback).to_numpy() | col_b.isin(fallback).to_numpy())
    images = pd.Index(pd.concat([col_a[used], col_b[used]]).unique())
    n_missed = int(images.isin(missed).sum() + images.isin(fallback).sum())
    out: dict[str, Any] = {
        "pairs_in_protocol": len(table),
        "pairs_used": int(used.sum()),
        "pairs_with_undetected_image": int(rejected.sum()),
        "pairs_with_fallback_crop": int(with_fallback.sum()),
        "pairs_not_evaluated": int((~used).sum()),
        "images": len(images),
        "images_missed": n_missed,
        "images_fallback": int(images.isin(fallback).sum()),
        "miss_rate": n_missed / len(images) if len(images) else None,
    }
    if out["pairs_not_evaluated"]:
        logger.warning(
            "LFW protocol: %d of %d pairs have an image outside the test split (training role, "
            "no evaluation basis, or not imported); they are not scored",
            out["pairs_not_evaluated"],
            len(table),
        )
    folds = table["fold"].to_numpy()
    if np.unique(folds[used]).size < 2:
        out["skipped"] = "fewer than two folds have pairs whose images are in the test split"
        logger.warning("LFW protocol: %s", out["skipped"])
        return out
    position = pd.Series(np.arange(len(ids)), index=ids)
    scores = np.full(len(table), -1.0)
    a = position.reindex(col_a[both_crops]).to_numpy(dtype=np.int64)
    b = position.reindex(col_b[both_crops]).to_numpy(dtype=np.int64)
    scores[both_crops] = pair_scores(embeddings, a, b)
    same = table["same"].to_numpy(dtype=bool)
    out.update(ten_fold_accuracy(scores[used], same[used], folds[used], rejected=rejected[used]))
    if np.unique(folds[both_crops]).size >= 2:
        detected_only = ten_fold_accuracy(scores[both_crops], same[both_crops], folds[both_crops])
        out["accuracy_detected_pairs"] = detected_only["accuracy"]
    return out
