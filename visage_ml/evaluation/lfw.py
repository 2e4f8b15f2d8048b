"""LFW "unrestricted" 10-fold verification accuracy from a pairs protocol.

For each fold, the threshold that maximises accuracy on the other nine folds is applied to the
held-out fold; the result is the mean fold accuracy with its standard error (``std / sqrt(k)``,
the form the LFW benchmark page asks for).
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


def ten_fold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict[str, float]:
    """Cross-validated accuracy: threshold on the other folds, accuracy on each fold.

    Parameters
    ----------
    scores
        Similarity per protocol pair.
    same
        ``True`` for pairs of the same person.
    folds
        Fold number per pair (10 folds in the standard protocol).

    Returns
    -------
    dict
        ``accuracy`` (mean over folds), ``std`` (sample std of fold accuracies), ``stderr``,
        ``n_folds``, ``n_pairs`` and ``threshold`` (mean of the per-fold thresholds).
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    f = np.asarray(folds)
    fold_ids = np.unique(f)
    if fold_ids.size < 2:
        raise ValueError(MSG_NO_FOLDS)
    accs, thresholds = [], []
    for fold in fold_ids:
        test = f == fold
        t = best_threshold(s[~test], y[~test])
        accs.append(float(np.mean((s[test] >= t) == y[test])))
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


def protocol_accuracy(
    protocol: pd.DataFrame, image_ids: np.ndarray, embeddings: np.ndarray
) -> dict[str, Any]:
    """10-fold accuracy of the protocol pairs whose two images are among the embedded ones.

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

    Returns
    -------
    dict
        ``pairs_in_protocol``, ``pairs_used`` and the :func:`ten_fold_accuracy` keys, or
        ``skipped`` (the reason) when fewer than two folds have usable pairs.
    """
    table = protocol[protocol["fold"] >= 0].reset_index(drop=True)
    position = pd.Series(np.arange(len(image_ids)), index=pd.Index(image_ids.astype(str)))
    a = position.reindex(table["image_id_a"].astype(str)).to_numpy()
    b = position.reindex(table["image_id_b"].astype(str)).to_numpy()
    usable = ~(np.isnan(a.astype(float)) | np.isnan(b.astype(float)))
    out: dict[str, Any] = {"pairs_in_protocol": len(table), "pairs_used": int(usable.sum())}
    folds = table["fold"].to_numpy()[usable]
    if usable.sum() == 0 or np.unique(folds).size < 2:
        logger.warning(
            "LFW protocol: %d of %d pairs have both images among the test crops; too few to "
            "report 10-fold accuracy",
            int(usable.sum()),
            len(table),
        )
        out["skipped"] = "fewer than two folds have both images among the test crops"
        return out
    scores = pair_scores(embeddings, a[usable].astype(np.int64), b[usable].astype(np.int64))
    same = table["same"].to_numpy(dtype=bool)[usable]
    out.update(ten_fold_accuracy(scores, same, folds))
    return out
