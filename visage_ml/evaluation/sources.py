"""Evaluation per data source: which figure comes from which data set in a mixed project.

A project may hold SynthFaces and one or more imported sets (``source`` ``synthfaces``,
``import:lfw``, ...). The headline figures of ``metrics.json`` pool every test identity; this
module gives the same verification figures for each source alone (comparisons whose two images
come from that source, at the pooled threshold) and the detector's miss rate per source, so a
report can say where each number comes from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from visage_ml.data.manifest import UNKNOWN_SOURCE
from visage_ml.data.pairs import PairSet
from visage_ml.evaluation.bootstrap import finite_or_none
from visage_ml.evaluation.verification import rates_at_threshold, roc_curve, verification_metrics


def source_column(frame: pd.DataFrame | None) -> np.ndarray:
    """The ``source`` of each row as text (``unknown`` where a table predates the column)."""
    if frame is None:
        return np.array([], dtype=object)
    if "source" not in frame:
        return np.full(len(frame), UNKNOWN_SOURCE, dtype=object)
    return frame["source"].astype("string").fillna(UNKNOWN_SOURCE).astype(str).to_numpy()


def per_source(
    pairs: PairSet,
    id_source: np.ndarray,
    *,
    threshold: float,
    fars: Sequence[float],
    detection: pd.DataFrame | None = None,
) -> dict[str, dict[str, Any]]:
    """Verification and detection figures of each source's own comparisons.

    Parameters
    ----------
    pairs
        The pooled comparisons of the evaluation.
    id_source
        Source of each identity code.
    threshold
        The pooled serving threshold: each source's FMR and FNMR are measured at it.
    fars
        FMRs at which each source's TAR is reported.
    detection
        The detector's outcome per image (``detected``, ``source``, ``split``), if known.

    Returns
    -------
    dict
        ``{source: {n_identities, n_genuine_pairs, n_impostor_pairs, auc, eer,
        tar_at_fmr_*, fmr_at_threshold, fnmr_at_threshold, detection_miss_rate}}``; figures
        that cannot be measured (no genuine or no impostor comparison) are ``None``.
    """
    src = np.asarray(id_source).astype(str)
    a, b = src[pairs.id_a], src[pairs.id_b]
    det_src = source_column(detection)
    out: dict[str, dict[str, Any]] = {}
    for source in sorted(set(src.tolist())):
        own = (a == source) & (b == source)
        genuine, score = pairs.genuine[own], pairs.score[own]
        entry: dict[str, Any] = {
            "n_identities": int((src == source).sum()),
            "n_genuine_pairs": int(genuine.sum()),
            "n_impostor_pairs": int((~genuine).sum()),
        }
        curve = roc_curve(genuine, score)
        if curve is not None:
            entry.update(verification_metrics(curve, fars))
        fmr, fnmr = rates_at_threshold(score[genuine], score[~genuine], threshold)
        entry["fmr_at_threshold"], entry["fnmr_at_threshold"] = fmr, fnmr
        if detection is not None and len(detection):
            mine = det_src == source
            entry["detection_miss_rate"] = (
                float((~detection["detected"].to_numpy(dtype=bool)[mine]).mean())
                if mine.any()
                else None
            )
        out[source] = {
            k: finite_or_none(v) if isinstance(v, float) else v for k, v in entry.items()
        }
    return out
