"""Would counting posteriors instead of labels halve the analytics counts' error? One JSON object.

Issue 16's last goal asks corrected analytics counts to have at most half the raw counts' mean
absolute error. ``bench_analytics_correction.py`` shows that at a site like the trained
population no correction of the released *label* counts gets there at windows of 10-30 frames:
its oracle (each window's counts reassigned with the site's true confusion) is bounded by what
labels carry. This benchmark asks the question a label-count oracle cannot answer: does the
demographic model's per-face *probability* carry enough more to get there?

Estimators, on the same held-out SynthFaces scenes (``SEED_SCENES`` of the correction benchmark,
the trained population's mix), each face the engine detected and matched to a true face:

- ``raw``: predicted labels counted (what ``/v1/analytics`` releases);
- ``soft``: probabilistic classify-and-count, each face adding its class probabilities (gender,
  group: the model's softmax; age band: a normal of the evaluation's age residuals around the
  predicted age, integrated over each band);
- ``soft_calibrated``: the same after temperature scaling fitted on a balanced evaluation-only
  portrait population (``SEED_CONFUSION``, what the confusion is measured on).

Printed per window size: the raw MAE per dimension and each estimator's MAE over the raw one,
per dimension and over all three (the goal's figure). Soft counts would have to be computed
inside the window before release (they are not post-processing of released counts), so they are
only worth building if they reach the goal.

    python benchmarks/bench_soft_counts.py --project DIR [--scenes 300] [--window 10 30 100]

``DIR`` is a project after ``make demo``; about 1 minute on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_analytics_correction as correction

from visage_ml.config import GROUPS, ProjectPaths
from visage_ml.data.synth import make_population, photograph
from visage_ml.evaluation.confusion import age_band_index


def onehot(index: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` rows with a one at each ``index``."""
    out = np.zeros((len(index), k))
    out[np.arange(len(index)), np.asarray(index, dtype=np.int64)] = 1.0
    return out


def tempered(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax probabilities with their logits divided by ``temperature``."""
    z = np.log(np.clip(probs, 1e-9, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, truth: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``truth``."""

    def nll(t: float) -> float:
        p = tempered(probs, t)
        return float(-np.log(np.clip(p[np.arange(len(p)), truth], 1e-12, 1.0)).mean())

    return float(minimize_scalar(nll, bounds=(0.2, 10.0), method="bounded").x)


def soft_bands(age: np.ndarray, bands: list[int], *, bias: float, sd: float) -> np.ndarray:
    """Each predicted age as probabilities of the bands (a normal of the residuals)."""
    mu = np.asarray(age, dtype=np.float64) - bias
    cdf = norm.cdf((np.asarray(bands, dtype=np.float64)[None, :] - mu[:, None]) / sd)
    n = len(mu)
    return np.diff(np.concatenate([np.zeros((n, 1)), cdf, np.ones((n, 1))], axis=1), axis=1)


def portraits(engine: Any, params: Any, per_group: int) -> tuple[dict[str, Any], dict]:
    """The model's outputs on a balanced evaluation-only portrait population, with truth."""
    synth = dataclasses.replace(
        params.synth, n_identities=per_group * len(GROUPS), group_shares=(0.25,) * 4
    )
    crops, truth = [], {"age": [], "gender": [], "group": []}
    for i, person in enumerate(make_population(synth, correction.SEED_CONFUSION)):
        for shot in range(2):
            rng = np.random.default_rng([correction.SEED_CONFUSION, 5, i, shot])
            pixels, _ = photograph(person, rng=rng, params=synth)
            faces = engine.detect(pixels)
            if faces:
                crops.append(faces[0].crop)
                truth["age"].append(person.age)
                truth["gender"].append(str(person.gender))
                truth["group"].append(str(person.group))
    return engine.predict(np.stack(crops)), {k: np.asarray(v) for k, v in truth.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", default=os.environ.get("VISAGE_PROJECT") or ".")
    ap.add_argument("--scenes", type=int, default=300)
    ap.add_argument("--window", type=int, nargs="+", default=[10, 30, 100])
    ap.add_argument("--per-group", type=int, default=60)
    args = ap.parse_args()
    from visage_ml.serving.engine import Engine

    t0 = time.perf_counter()
    project = ProjectPaths(Path(args.project).resolve())
    params = correction.project_params(project)
    engine = Engine.from_project(project, params, mode="analytics")
    labels = engine.demographics.labels
    bands = [int(b) for b in labels.get("age_bands") or []]
    genders = [str(x) for x in labels["gender"]]
    groups = [str(x) for x in labels["group"]]
    n_bands = len(bands) + 1  # under the first edge, then one per edge (age_band_index)

    pred, truth = portraits(engine, params, args.per_group)
    t_gender = fit_temperature(
        np.asarray(pred["gender_probs"]), np.array([genders.index(g) for g in truth["gender"]])
    )
    t_group = fit_temperature(
        np.asarray(pred["group_probs"]), np.array([groups.index(g) for g in truth["group"]])
    )
    residual = np.asarray(pred["age"], dtype=np.float64) - truth["age"].astype(np.float64)
    bias, sd = float(residual.mean()), float(residual.std())

    seen = correction.scene_frames(
        engine,
        params.synth,
        seed=correction.SEED_SCENES,
        n=args.scenes,
        bands=bands,
        genders=genders,
        groups=groups,
    )
    frames: list[tuple[list[np.ndarray], dict[str, list[np.ndarray]]] | None] = []
    for _, matched, _, picked in seen:
        if not matched:
            frames.append(None)
            continue
        true = [
            onehot(np.array([genders.index(str(f["gender"])) for f in matched]), len(genders)),
            onehot(np.array([groups.index(str(f["group"])) for f in matched]), len(groups)),
            onehot(age_band_index(np.array([f["age"] for f in matched], float), bands), n_bands),
        ]
        gp, rp = np.asarray(picked["gender_probs"]), np.asarray(picked["group_probs"])
        age = np.asarray(picked["age"], dtype=np.float64)
        ages = soft_bands(age, bands, bias=bias, sd=sd)
        estimates = {
            "raw": [
                onehot(gp.argmax(axis=1), len(genders)),
                onehot(rp.argmax(axis=1), len(groups)),
                onehot(age_band_index(age, bands), n_bands),
            ],
            "soft": [gp, rp, ages],
            "soft_calibrated": [tempered(gp, t_gender), tempered(rp, t_group), ages],
        }
        frames.append((true, estimates))

    dims = ("gender", "group", "age_band")
    windows: dict[str, Any] = {}
    for w in args.window:
        errors: dict[str, list[list[float]]] = {}
        for start in range(0, len(frames) - w + 1, w):
            part = [f for f in frames[start : start + w] if f is not None]
            if not part:
                continue
            true = [sum(p[0][d].sum(axis=0) for p in part) for d in range(3)]
            for name in part[0][1]:
                est = [sum(p[1][name][d].sum(axis=0) for p in part) for d in range(3)]
                errors.setdefault(name, []).append(
                    [float(np.abs(est[d] - true[d]).mean()) for d in range(3)]
                )
        if not errors:
            continue
        raw = np.mean(errors["raw"], axis=0)
        windows[str(w)] = {
            "windows": len(errors["raw"]),
            "mae_raw": dict(zip(dims, np.round(raw, 3).tolist(), strict=True)),
            **{
                f"ratio_{name}": {
                    **dict(zip(dims, np.round(np.mean(e, axis=0) / raw, 3).tolist(), strict=True)),
                    "all": round(float(np.mean(e) / np.mean(errors["raw"])), 3),
                }
                for name, e in errors.items()
                if name != "raw"
            },
        }
    out = {
        "project": str(project.root),
        "demographics_model_version": engine.demographics.model_version,
        "scenes": args.scenes,
        "faces_matched": int(sum(len(f[0][0]) for f in frames if f is not None)),
        "calibration": {
            "portraits": len(truth["age"]),
            "temperature_gender": round(t_gender, 3),
            "temperature_group": round(t_group, 3),
            "age_residual_mean": round(bias, 2),
            "age_residual_sd": round(sd, 2),
        },
        "goal": "ratio all <= 0.5",
        "windows": windows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
