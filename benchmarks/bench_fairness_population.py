"""Fairness of a project's trained models decided on many more people; one JSON object.

The evaluate stage decides the fairness gate on one evaluation population (``eval_population``:
60 people per skin-tone group x gender by default). Its intervals are wide: on the demo the FMR
max/min by group reads 2.60 with a 95 % interval of [1.58, 5.26], so the gate says
"inconclusive", and another seed of the same population size read 1.36. This benchmark asks the
same question of the same trained models on ``--seeds`` further evaluation-only populations
(each rendered, detected and aligned exactly as the ``eval_population`` stage does, from a seed
the project never used; synthetic people, no data subject), pooled into one measured set:

- the score calibrations of ``evaluate.calibration.compare`` (and the served method), each
  fitted, as the evaluate stage fits them, on the project's own calibration people
  (``data/eval_population``, part ``calibration``) and applied unchanged to the new people;
- per calibration: the threshold at ``evaluate.target_fmr`` on its own pooled impostor scores,
  TAR there, FMR and FNMR max/min by group and by group x gender with identity-bootstrap
  intervals, and the gate's verdict on them (pass: the interval's upper end is within the
  limit; fail: its lower end is beyond; inconclusive otherwise);
- the demographic model's gender accuracy per group, the lowest group and the min/max ratio,
  with intervals (the demographic gate's goals);
- the face detector's miss rate per group and gender with identity-bootstrap intervals, and the
  faces found only on its second look (``prepare.second_look``; ``-S prepare.second_look=false``
  measures the first pass alone, with everything else downstream of it).

Each seed's figures are reported too, so the spread between populations of the evaluate stage's
size is visible next to the pooled answer.

    python benchmarks/bench_fairness_population.py --project DIR [--seeds 4] [--rounds 100]
        [-S prepare.second_look=false]

``DIR`` is a project after ``make demo`` (its ``models/*.onnx``, ``data/eval_population`` and
``params.yaml``). Rendering and detection dominate: about 30 s per population on 2 cores.
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
import pandas as pd
import yaml

from visage_ml.config import ProjectPaths, load_params
from visage_ml.data import eval_population as evalpop
from visage_ml.data.pairs import PairSet, build_pairs, encode_labels, threshold_at_far
from visage_ml.evaluation.calibration_report import rescored, tar_at_threshold
from visage_ml.evaluation.decision import fit_calibrations
from visage_ml.evaluation.demographic_intervals import accuracy_intervals, correct_predictions
from visage_ml.evaluation.fairness import demographic_differentials
from visage_ml.evaluation.gate import decide
from visage_ml.evaluation.headline import json_ready
from visage_ml.evaluation.inputs import load_models
from visage_ml.evaluation.protocol import (
    demographic_breakdowns,
    detection_intervals,
    identity_values,
    infer,
)
from visage_ml.privacy.datakeys import DataKeys

BREAKDOWNS = ("group", "group_gender")
# Seeds of the extra populations: far from eval_population.seed and project.seed.
SEED_BASE = 7_300_000


def population(paths: ProjectPaths, params: Any, seed: int) -> evalpop.Population:
    """An evaluation population of the project's size from ``seed``, measured part only."""
    cfg = dataclasses.replace(params.eval_population, seed=seed, calibration_identities_per_cell=0)
    pop, _ = evalpop.build(cfg, params.synth, params.prepare)
    return pop


def judge(
    pairs: PairSet,
    breakdowns: list[Any],
    *,
    target_fmr: float,
    limits: dict[str, float],
    rounds: int,
    seed: int,
) -> dict[str, Any]:
    """TAR at the method's own threshold and FMR / FNMR max/min with intervals per breakdown."""
    thr = threshold_at_far(pairs.score[~pairs.genuine], target_fmr)
    out: dict[str, Any] = {"tar": round(tar_at_threshold(pairs, thr), 4)}
    diffs = demographic_differentials(pairs, breakdowns, threshold=thr, rounds=rounds, seed=seed)
    for name, d in diffs.items():
        for metric in ("fmr_max_min_ratio", "fnmr_max_min_ratio"):
            est = d.interval(metric)
            row: dict[str, Any] = {
                k: round(v, 3) if np.isfinite(v) else None for k, v in est.items()
            }
            if metric == "fmr_max_min_ratio" and name in limits:
                row["limit"] = limits[name]
                row["verdict"] = decide(
                    **{k: est[k] for k in ("ci_low", "ci_high")}, limit=limits[name], upper=True
                )[0]
            out[f"{metric.split('_')[0]}_max_min_{name}"] = row
    return out


def gender_accuracy(
    manifest: pd.DataFrame, predictions: dict[str, np.ndarray], labels: Any, *, rounds: int
) -> dict[str, Any]:
    codes, _ = encode_labels(manifest["pid"].astype(str).to_numpy())
    groups = manifest["group"].astype(str).to_numpy()
    correct = correct_predictions(
        true_age=manifest["age"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan),
        true_gender=manifest["gender"].astype(str).to_numpy(),
        true_group=groups,
        predictions=predictions,
        labels=labels,
    )
    acc = accuracy_intervals(
        {"gender_accuracy": correct["gender_accuracy"]},
        codes,
        groups,
        groups=sorted(set(groups)),
        rounds=rounds,
        seed=0,
    )["gender_accuracy"]
    return json_ready(acc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", default=os.environ.get("VISAGE_PROJECT") or ".")
    ap.add_argument("--seeds", type=int, default=4, help="extra evaluation populations pooled")
    ap.add_argument("--rounds", type=int, default=100, help="identity bootstrap resamples")
    ap.add_argument("--impostor-pairs", type=int, default=8_000_000)
    ap.add_argument(
        "-S", dest="overrides", action="append", default=[], help="KEY=VALUE over params.yaml"
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    paths = ProjectPaths(Path(args.project).resolve())
    if bad := [o for o in args.overrides if "=" not in o]:
        ap.error(f"-S takes KEY=VALUE (e.g. -S prepare.second_look=false), not {bad[0]!r}")
    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    params = load_params(paths.params, overrides=overrides)
    cfg = params.evaluate
    embedder, demographic = load_models(paths)
    # The calibrations, fitted as the evaluate stage fits them, on the project's calibration part.
    own = evalpop.read(paths.eval_population, DataKeys.for_project(paths))
    cal_rows = np.flatnonzero(own.manifest["part"].astype(str).to_numpy() == evalpop.CALIBRATION)
    cal_emb, _ = infer(
        own.faces, cal_rows, embedder=embedder, demographic=demographic, batch_size=cfg.batch_size
    )
    fitted = fit_calibrations(
        cal_emb,
        own.manifest["pid"].astype(str).to_numpy()[cal_rows],
        cfg.calibration,
        target_fmr=cfg.target_fmr,
        seed=params.project.seed,
        model_version="",
    ).fitted
    limits = {k: float(v) for k, v in cfg.gate.max_fmr_ratio.items()}
    manifests, embs, preds, seconds, detections = [], [], [], [], []
    for i in range(args.seeds):
        t = time.perf_counter()
        pop = population(paths, params, SEED_BASE + i)
        rows = np.arange(len(pop.faces), dtype=np.int64)
        emb, pred = infer(
            pop.faces, rows, embedder=embedder, demographic=demographic, batch_size=cfg.batch_size
        )
        manifests.append(pop.manifest.assign(seed=i))
        detections.append(pop.detection)
        embs.append(emb)
        preds.append(pred)
        seconds.append(round(time.perf_counter() - t, 1))

    def measure(manifest: pd.DataFrame, emb: np.ndarray, rounds: int) -> dict[str, Any]:
        codes, _ = encode_labels(manifest["pid"].astype(str).to_numpy())
        n_ids = int(codes.max()) + 1
        raw = build_pairs(emb, codes, impostor_limit=args.impostor_pairs, seed=params.project.seed)
        id_group = identity_values(
            codes, manifest["group"].astype(str).to_numpy(), n=n_ids, what="group"
        )
        id_gender = identity_values(
            codes, manifest["gender"].astype(str).to_numpy(), n=n_ids, what="gender"
        )
        bds = [b for b in demographic_breakdowns(id_group, id_gender) if b.name in BREAKDOWNS]
        out: dict[str, Any] = {"identities": n_ids, "impostor_pairs": int((~raw.genuine).sum())}
        for name, cal in fitted.items():
            out[name] = judge(
                rescored(raw, cal, cal.sides(emb)),
                bds,
                target_fmr=cfg.target_fmr,
                limits=limits,
                rounds=rounds,
                seed=params.project.seed,
            )
        base = out["none"]["tar"]
        for name in fitted:
            out[name]["tar_cost"] = round(base - out[name]["tar"], 4)
        return out

    per_seed = [measure(m, e, 0) for m, e in zip(manifests, embs, strict=True)]
    manifest = pd.concat(manifests, ignore_index=True)
    emb = np.concatenate(embs, axis=0)
    pooled = measure(manifest, emb, args.rounds)
    pred = {k: np.concatenate([p[k] for p in preds], axis=0) for k in preds[0]}
    result = {
        "benchmark": "fairness_population",
        "populations": args.seeds,
        "identities_per_cell": params.eval_population.identities_per_cell,
        "images_per_identity": params.eval_population.images_per_identity,
        "served_method": cfg.calibration.method,
        "target_fmr": cfg.target_fmr,
        "bootstrap_rounds": args.rounds,
        "pooled": pooled,
        "per_population": [
            {
                name: {
                    "fmr_max_min_group": row[name]["fmr_max_min_group"]["value"],
                    "fmr_max_min_group_gender": row[name]["fmr_max_min_group_gender"]["value"],
                    "tar": row[name]["tar"],
                }
                for name in fitted
            }
            for row in per_seed
        ],
        "demographics_gender_accuracy": gender_accuracy(
            manifest, pred, demographic.labels, rounds=args.rounds
        ),
        "second_look": params.prepare.second_look,
        "detector_miss_rate": detection_intervals(
            pd.concat(detections, ignore_index=True),
            rounds=args.rounds,
            seed=params.project.seed,
            ci_level=cfg.ci_level,
        ),
        "seconds_per_population": seconds,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
