"""The evaluation's tables as CSV text: ROC/DET curves (DVC plots) and per-group tables (MLflow).

Nothing here touches files: every function returns ``{file name: CSV text}`` for the caller to
write. Only aggregates appear.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from visage_ml.data.pairs import PairSet
from visage_ml.evaluation.fairness import Breakdown
from visage_ml.evaluation.groups import Partition
from visage_ml.evaluation.verification import RocCurve, curve_points, roc_curve


def thin_curve(curve: RocCurve, max_points: int) -> RocCurve:
    """At most ``max_points`` points of ``curve`` (:func:`curve_points`), for plots."""
    idx = curve_points(curve, max_points)
    return RocCurve(thresholds=curve.thresholds[idx], fmr=curve.fmr[idx], tar=curve.tar[idx])


def group_curves(
    pairs: PairSet, breakdown: Breakdown, *, overall: RocCurve, max_points: int
) -> dict[str, RocCurve | None]:
    """Thinned ROC of all comparisons (``"all"``) and of each group's same-group comparisons.

    A group's curve is ``None`` when it lacks genuine or impostor comparisons.
    """
    la = breakdown.identity_label[pairs.id_a]
    lb = breakdown.identity_label[pairs.id_b]
    same_group = Partition(np.where(la == lb, la, -1), breakdown.labels)
    per_group = same_group.apply(roc_curve, pairs.genuine, pairs.score, missing=None)
    curves: dict[str, RocCurve | None] = {"all": thin_curve(overall, max_points)}
    for lab, curve in zip(breakdown.labels, per_group, strict=True):
        curves[lab] = thin_curve(curve, max_points) if curve is not None else None
    return curves


def _curve_csv(curve: RocCurve, ycol: str) -> str:
    y = curve.tar if ycol == "tar" else curve.fnmr
    thr = np.where(np.isfinite(curve.thresholds), curve.thresholds, 1.0)
    lines = [f"threshold,fmr,{ycol}"]
    lines += [f"{t:.6f},{f:.6g},{v:.6g}" for t, f, v in zip(thr, curve.fmr, y, strict=True)]
    return "\n".join(lines) + "\n"


def plot_tables(curves: Mapping[str, RocCurve | None]) -> dict[str, str]:
    """CSV text per file name: ROC overall and per group, DET per group (``reports/plots``)."""
    out: dict[str, str] = {}
    for name, curve in curves.items():
        if curve is None:
            continue
        if name == "all":
            out["roc_overall.csv"] = _curve_csv(curve, "tar")
        else:
            out[f"roc_{name}.csv"] = _curve_csv(curve, "tar")
            out[f"det_{name}.csv"] = _curve_csv(curve, "fnmr")
    return out


def fairness_tables(fairness: Mapping[str, Any]) -> dict[str, str]:
    """Per-group CSV tables of ``reports/fairness.json`` content, by file name (for MLflow)."""
    out: dict[str, str] = {}
    for name, diff in fairness["breakdowns"].items():
        rows = []
        for lab in diff["labels"]:
            g = diff["groups"][lab]
            rows.append(
                {
                    name: lab,
                    "n_identities": g["n_identities"],
                    "n_genuine_pairs": g["n_genuine_pairs"],
                    "n_impostor_pairs": g["n_impostor_pairs"],
                    **{f"fmr_{k}": v for k, v in g["fmr"].items()},
                    **{f"fnmr_{k}": v for k, v in g["fnmr"].items()},
                }
            )
        out[f"rates_{name}.csv"] = pd.DataFrame(rows).to_csv(index=False)
        cross = pd.DataFrame(diff["cross_fmr"]["value"], index=diff["labels"])
        cross.columns = diff["labels"]
        out[f"cross_fmr_{name}.csv"] = cross.to_csv(index_label=name)
        summ = pd.DataFrame([{"summary": k, **v} for k, v in diff["summaries"].items()])
        out[f"summaries_{name}.csv"] = summ.to_csv(index=False)
    for task, by in (fairness.get("demographic_model") or {}).items():
        for b, s in by.items():
            frame = pd.DataFrame(
                {"value": s["by_group"], "n": {k: s["n"].get(k, 0) for k in s["by_group"]}}
            )
            out[f"demographics_{task}_{b}.csv"] = frame.to_csv(index_label=b)
    return out
