"""Cohort score normalisation (AS-norm) beside the served calibrations, on a project's evaluation
inputs; one JSON object.

The fairness goal of issue 16 (FMR max/min across skin-tone groups <= 2, across group x gender
<= 3, at <= 2 points of TAR@FMR=1e-3) is met by none of the calibrations evaluation compares
(``none``, ``fsn``, ``faircal``). This measures a candidate the project does not serve yet:
adaptive symmetric score normalisation (AS-norm, from speaker verification), label-free like
the others. Each side of a comparison is normalised by the mean and standard deviation of its
``K`` highest scores against a cohort; the cohort is the calibration part of the synthetic
evaluation population (no data subject), ``z = ((s - mu_a) / sd_a + (s - mu_b) / sd_b) / 2``.

Everything is measured on the comparisons the evaluate stage builds (the test split pooled with
the evaluation population, :func:`visage_ml.data.pairs.build_pairs`), the threshold placed at
``evaluate.target_fmr`` on each method's own scores, per-group FMR on point estimates (no
bootstrap: a screening, not the gate).

    python benchmarks/bench_score_norm.py --project DIR [--k 10 20 50 75 100]

``DIR`` is a project after ``make demo`` whose processed data matches its crops (an erasure
since the last ``dvc repro`` leaves them apart: re-run ``dvc repro`` first).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from visage_ml.config import ProjectPaths, load_params
from visage_ml.data.pairs import PairSet, build_pairs, encode_labels, threshold_at_far
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


def as_norm(pairs: PairSet, emb: np.ndarray, cohort: np.ndarray, k: int) -> PairSet:
    """``pairs`` rescored by AS-norm against ``cohort`` with the top ``k`` cohort scores."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    c = cohort / np.linalg.norm(cohort, axis=1, keepdims=True)
    top = -np.sort(-(e @ c.T), axis=1)[:, : min(k, c.shape[0])]
    mu, sd = top.mean(axis=1), top.std(axis=1) + 1e-6
    s, a, b = pairs.score, pairs.a, pairs.b
    z = 0.5 * ((s - mu[a]) / sd[a] + (s - mu[b]) / sd[b])
    return dataclasses.replace(pairs, score=z)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", default=os.environ.get("VISAGE_PROJECT") or ".")
    ap.add_argument("--k", type=int, nargs="+", default=[10, 20, 50, 75, 100])
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
    fitted = fit_calibrations(
        inputs.calibration_embeddings,
        inputs.calibration_ids,
        cfg.calibration,
        target_fmr=cfg.target_fmr,
        seed=seed,
        model_version=str(inputs.lineage.get("embedder_model_version", "")),
    ).fitted
    methods = {
        name: judge(rescored(raw, cal, cal.clusters(emb)), breakdowns, cfg.target_fmr)
        for name, cal in fitted.items()
    }
    cohort = np.asarray(inputs.calibration_embeddings, dtype=np.float32)
    for k in args.k:
        methods[f"as_norm_k{k}"] = judge(as_norm(raw, emb, cohort, k), breakdowns, cfg.target_fmr)
    base = methods.get("none", {}).get("tar")
    for row in methods.values():
        row["tar_cost"] = round(base - row["tar"], 4) if base is not None else None
    print(
        json.dumps(
            {
                "project": str(paths.root),
                "identities": n_ids,
                "images": len(test),
                "impostor_pairs": int((~raw.genuine).sum()),
                "cohort": int(cohort.shape[0]),
                "target_fmr": cfg.target_fmr,
                "methods": methods,
                "seconds": round(time.perf_counter() - t0, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
