"""Label-free score normalisations side by side on a project's evaluation inputs; one JSON object.

The fairness goal of issue 16: FMR max/min across skin-tone groups <= 2, across group x gender
<= 3, at <= 2 points of TAR@FMR=1e-3. This screens every label-free candidate against it: the
calibrations evaluation fits (``evaluate.calibration``: ``none``, ``fsn``, ``faircal``,
``asnorm``) and variants of AS-norm (adaptive symmetric cohort normalisation,
:mod:`visage_ml.evaluation.calibration`): its ``top_k``, the weights of its symmetric term
(``w`` on the cohort mean, power ``p`` on the cohort deviation), a cohort of identity means
instead of images, a cohort balanced per k-means cluster, and AS-norm followed by FSN or FairCal
fitted on AS-normed calibration scores. Everything is fitted on the calibration part of the
evaluation population (synthetic people, no data subject) and measured on the comparisons the
evaluate stage builds (the test split pooled with the measured evaluation population,
:func:`visage_ml.data.pairs.build_pairs`); no candidate reads a group label to score. The
threshold is placed at ``evaluate.target_fmr`` on each candidate's own scores; per-group FMR on
point estimates (no bootstrap: a screening, not the gate) plus, with ``--halves N``, the median
over ``N`` random two-thirds subsets of the identities (how stable the ranking is).

    python benchmarks/bench_score_norm.py --project DIR [--k 10 20 30 50 75] [--halves 8]

``DIR`` is a project after ``make demo`` whose processed data matches its crops (an erasure
since the last ``dvc repro`` leaves them apart: re-run ``dvc repro`` first).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from visage_ml.config import ProjectPaths, load_params
from visage_ml.data.pairs import PairSet, build_pairs, encode_labels, threshold_at_far
from visage_ml.evaluation.calibration import (
    CalibrationSet,
    ScoreCalibration,
    calibration_set,
    fit_calibration,
)
from visage_ml.evaluation.calibration_report import rescored
from visage_ml.evaluation.fairness import demographic_differentials
from visage_ml.evaluation.inputs import read_inputs
from visage_ml.evaluation.protocol import (
    demographic_breakdowns,
    fit_calibrations,
    identity_values,
    labelled,
)

BREAKDOWNS = ("group", "group_gender")


def judge(pairs: PairSet, breakdowns: list[Any], target_fmr: float) -> dict[str, Any]:
    """TAR at the global threshold and FMR / FNMR max/min per breakdown (point estimates)."""
    thr = threshold_at_far(pairs.score[~pairs.genuine], target_fmr)
    tar = float(np.mean(pairs.score[pairs.genuine] >= thr))
    diffs = demographic_differentials(pairs, breakdowns, threshold=thr, rounds=0)
    return {
        "tar": round(tar, 4),
        **{
            f"fmr_max_min_{name}": round(float(d.summaries["fmr_max_min_ratio"]), 2)
            for name, d in diffs.items()
        },
        **{
            f"fnmr_max_min_{name}": round(float(d.summaries["fnmr_max_min_ratio"]), 2)
            for name, d in diffs.items()
        },
    }


def _subset(pairs: PairSet, keep_ids: np.ndarray) -> PairSet:
    keep = keep_ids[pairs.id_a] & keep_ids[pairs.id_b]
    return dataclasses.replace(
        pairs,
        a=pairs.a[keep],
        b=pairs.b[keep],
        id_a=pairs.id_a[keep],
        id_b=pairs.id_b[keep],
        genuine=pairs.genuine[keep],
        score=pairs.score[keep],
    )


def candidates(
    calset: CalibrationSet,
    fitted: dict[str, ScoreCalibration],
    cfg: Any,
    *,
    ks: list[int],
    seed: int,
) -> dict[str, Callable[[np.ndarray], Callable[[PairSet], PairSet]]]:
    """Each candidate as ``embeddings -> (pairs -> rescored pairs)``, fitted on ``calset``."""
    out: dict[str, Callable[[np.ndarray], Callable[[PairSet], PairSet]]] = {}

    def plain(cal: ScoreCalibration) -> Callable[[np.ndarray], Callable[[PairSet], PairSet]]:
        return lambda emb: lambda p: rescored(p, cal, cal.sides(emb))

    for name, cal in fitted.items():
        out[name] = plain(cal)
    fit = {
        "target_fmr": cfg.target_fmr,
        "min_cluster_impostors": cfg.calibration.min_cluster_impostors,
    }
    weights = [(1.0, 1.0), (0.9, 0.75), (0.8, 0.5)]
    asn: dict[str, ScoreCalibration] = {}
    for k in ks:
        for w, p in weights:
            name = f"asnorm_k{k}" + ("" if (w, p) == (1.0, 1.0) else f"_w{w}_p{p}")
            asn[name] = fit_calibration(
                "asnorm", calset, **fit, cohort_top_k=k, cohort_mean_weight=w, cohort_sd_power=p
            )
            out[name] = plain(asn[name])
    assert calset.embeddings is not None and calset.codes is not None
    emb_c, codes_c = calset.embeddings, calset.codes
    # Cohort of identity means (one unit template per calibration person).
    means = np.stack([emb_c[codes_c == c].mean(axis=0) for c in np.unique(codes_c)])
    # Cohort balanced per k-means cluster (as many images from each cluster as the smallest has).
    cl = np.argmax(emb_c @ calset.centroids.T, axis=1)
    n_min = int(np.bincount(cl).min())
    rng = np.random.default_rng(seed)
    balanced = np.concatenate(
        [rng.choice(np.flatnonzero(cl == c), n_min, replace=False) for c in np.unique(cl)]
    )
    for k in ks:
        base = asn[f"asnorm_k{k}"]
        # The map back to the cosine scale is monotone: it changes no TAR and no FMR ratio.
        km = min(k, means.shape[0] - 1)
        out[f"asnorm_k{k}_identity_cohort"] = plain(
            dataclasses.replace(
                base, cohort=means / np.linalg.norm(means, axis=1)[:, None], top_k=km
            )
        )
        kb = min(k, balanced.size - 1)
        out[f"asnorm_k{k}_balanced_cohort"] = plain(
            dataclasses.replace(base, cohort=emb_c[balanced], top_k=kb)
        )
        # AS-norm, then FSN / FairCal fitted on AS-normed calibration comparisons.
        side = base.sides(emb_c, exclude=(codes_c, codes_c))
        normed = dataclasses.replace(
            calset, score=base.apply(calset.score, side[calset.a], side[calset.b])
        )
        for second in ("fsn", "faircal"):
            then = fit_calibration(second, normed, **fit)

            def composed(
                emb: np.ndarray, first: ScoreCalibration = base, then: ScoreCalibration = then
            ) -> Callable[[PairSet], PairSet]:
                s1, s2 = first.sides(emb), then.sides(emb)
                return lambda p: rescored(rescored(p, first, s1), then, s2)

            out[f"asnorm_k{k}+{second}"] = composed
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", default=os.environ.get("VISAGE_PROJECT") or ".")
    ap.add_argument("--k", type=int, nargs="+", default=[10, 20, 30, 50, 75])
    ap.add_argument("--halves", type=int, default=8, help="random 2/3 identity subsets (0: none)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    paths = ProjectPaths(Path(args.project).resolve())
    params = load_params(paths.params)
    cfg = params.evaluate
    inputs = read_inputs(paths, cfg)
    test, emb = inputs.test, inputs.embeddings
    codes, _ = encode_labels(test["pid"].astype(str).to_numpy())
    n_ids = int(codes.max()) + 1
    seed = params.project.seed
    raw = build_pairs(emb, codes, impostor_limit=cfg.impostor_pairs, seed=seed)
    id_group = identity_values(codes, labelled(test["group"]), n=n_ids, what="group")
    id_gender = identity_values(codes, labelled(test["gender"]), n=n_ids, what="gender")
    breakdowns = [b for b in demographic_breakdowns(id_group, id_gender) if b.name in BREAKDOWNS]
    ccfg = cfg.calibration
    cal_codes, _ = encode_labels(np.asarray(inputs.calibration_ids).astype(str))
    calset = calibration_set(
        inputs.calibration_embeddings,
        cal_codes,
        n_clusters=ccfg.n_clusters,
        impostor_pairs_max=ccfg.impostor_pairs,
        seed=seed,
    )
    fitted = fit_calibrations(
        inputs.calibration_embeddings,
        inputs.calibration_ids,
        ccfg,
        target_fmr=cfg.target_fmr,
        seed=seed,
        model_version=str(inputs.lineage.get("embedder_model_version", "")),
    ).fitted
    cands = candidates(calset, dict(fitted), cfg, ks=args.k, seed=seed)
    rng = np.random.default_rng(seed)
    subsets = []
    for _ in range(args.halves):
        keep = np.zeros(n_ids, dtype=bool)
        keep[rng.permutation(n_ids)[: (2 * n_ids) // 3]] = True
        subsets.append(keep)
    methods: dict[str, dict[str, Any]] = {}
    per_subset: dict[str, list[dict[str, Any]]] = {}
    for name, make in cands.items():
        scored = make(emb)(raw)
        methods[name] = judge(scored, breakdowns, cfg.target_fmr)
        per_subset[name] = [
            judge(_subset(scored, keep), breakdowns, cfg.target_fmr) for keep in subsets
        ]
    base = methods["none"]
    for row in methods.values():
        row["tar_cost"] = round(base["tar"] - row["tar"], 4)
        row["worst_to_goal"] = round(
            max(row["fmr_max_min_group"] / 2.0, row["fmr_max_min_group_gender"] / 3.0), 3
        )
    for name, row in methods.items():
        if subsets:
            subs = per_subset[name]
            costs = [b["tar"] - r["tar"] for b, r in zip(per_subset["none"], subs, strict=True)]
            row["subsets_median"] = {
                "tar_cost": round(float(np.median(costs)), 4),
                "tar_cost_max": round(float(np.max(costs)), 4),
                "worst_to_goal": round(
                    float(
                        np.median(
                            [
                                max(
                                    r["fmr_max_min_group"] / 2.0,
                                    r["fmr_max_min_group_gender"] / 3.0,
                                )
                                for r in subs
                            ]
                        )
                    ),
                    3,
                ),
            }
        row["meets_goals"] = bool(
            row["worst_to_goal"] <= 1.0 and row["tar_cost"] <= ccfg.max_tar_cost
        )
    print(
        json.dumps(
            {
                "project": str(paths.root),
                "identities": n_ids,
                "images": len(test),
                "impostor_pairs": int((~raw.genuine).sum()),
                "cohort": int(calset.n_images),
                "target_fmr": cfg.target_fmr,
                "served": ccfg.method,
                "subsets": args.halves,
                "methods": methods,
                "seconds": round(time.perf_counter() - t0, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
