"""Analytics counts corrected for the demographic model's known error, on held-out SynthFaces
scenes with ground truth; one JSON object.

1. The **confusion** the correction uses: a balanced, evaluation-only SynthFaces portrait
   population (``--per-group`` identities per skin-tone group, two photographs each, a seed the
   project never trained on), detected and aligned by the project's MTCNN, classified by its
   exported ``models/demographics.onnx``, counted per true group by
   :func:`visage_ml.evaluation.confusion.demographic_confusion` (what the evaluate stage writes
   to ``reports/demographic_confusion.json``); or ``--confusion`` names such a file; or
   ``--confusion-scenes N`` measures it on the detected faces of N scenes of the trained
   population (their own seed), at the sizes and blur a camera sees.
2. **Scenes**: ``--scenes`` frames of passers-by (:func:`visage_ml.data.synth.render_scene`,
   another unseen seed) with their true age, gender and group. Each frame goes through what
   ``/v1/analytics`` runs (the engine's detection, the demographic model, the per-frame count);
   detected faces are matched to true faces (box overlap) for the truth of what was counted.
3. **Windows** of ``--window`` consecutive frames: raw counts (predicted labels) and counts
   corrected by :meth:`visage_ml.serving.correction.ConfusionModel.correct_all`, the site's mix
   estimated from the window and the ``--history`` windows before it (as serving does with the
   windows it keeps), each against the true counts of the detected faces (what a correction of
   the classifier can fix) and of all faces in the frames (misses included).

Reports the mean absolute error per cell (age band, gender, group) of raw and corrected counts,
their ratio, and how often the 95% intervals hold the true count. ``oracle_ratio`` is the same
ratio for an oracle that reassigns each window's predicted counts with what serving cannot know:
the share of each true class among the site's faces of each predicted class (the site's true
mix and the model's errors on its scene faces), measured on the faces of the *other* windows,
never on the window's own. It is about the best any correction of the counts can do; what is
left is each face's own error. (Measured with the window's own faces, it partly knew the answer:
in 300-frame windows of 600 scenes it claimed 0.12x where Q from a second draw of the same
site's scenes gave 0.31x.)

The **site** is who walks past the camera. By default it is the population the model was
trained and its confusion measured on (the project's ``synth`` shares), where a classifier
with balanced errors has little bias for a count correction to remove: what is left is each
face's own error, which no correction of the counts can take away. A real site differs from
that population (a campus is young, a shop's customers are mostly one group): the prior shift
that a count correction exists for. ``--group-shares``, ``--female-share`` and
``--age-range`` render such a site's passers-by; the confusion stays the balanced one.

    python benchmarks/bench_analytics_correction.py --project DIR [--scenes 300]
        [--window 10 30 100] [--per-group 100] [--history 60]
        [--group-shares 0.1 0.1 0.1 0.7] [--female-share 0.8] [--age-range 18 30]
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
import yaml

from visage_ml.config import GROUPS, ProjectPaths, params_from_dict
from visage_ml.data.synth import make_population, photograph, render_scene
from visage_ml.evaluation.confusion import age_band_index, demographic_confusion
from visage_ml.serving.analytics import CountTable, count_predictions
from visage_ml.serving.correction import ConfusionModel

SEED_CONFUSION = 920_001
SEED_SCENES = 920_002
SEED_CONFUSION_SCENES = 920_003
DIMENSIONS = ("age_band", "gender", "group")


# Sections of the project's params.yaml a benchmark reads; the others (privacy, ...) may be of an
# older visage-ml and are not needed here.
NEEDED = (
    "project",
    "synth",
    "prepare",
    "train_embedder",
    "train_demographics",
    "evaluate",
    "gallery",
    "serving",
)


def project_params(project: ProjectPaths) -> Any:
    """The project's parameters, the sections this benchmark needs only."""
    raw = yaml.safe_load(project.params.read_text(encoding="utf-8")) or {}
    return params_from_dict(
        {k: v for k, v in raw.items() if k in NEEDED}, source=str(project.params)
    )


def iou(a: Any, b: Any) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes."""
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def measure_confusion(params: Any, engine: Any, per_group: int) -> dict[str, Any]:
    """The demographic model's confusion on a balanced evaluation-only portrait population."""
    synth = dataclasses.replace(
        params.synth, n_identities=per_group * len(GROUPS), group_shares=(0.25,) * 4
    )
    people = make_population(synth, SEED_CONFUSION)
    crops, ages, genders, groups = [], [], [], []
    for i, person in enumerate(people):
        for shot in range(2):
            pixels, _ = photograph(
                person, rng=np.random.default_rng([SEED_CONFUSION, 5, i, shot]), params=synth
            )
            faces = engine.detect(pixels)
            if faces:
                crops.append(faces[0].crop)
                ages.append(person.age)
                genders.append(person.gender)
                groups.append(person.group)
    pred = engine.predict(np.stack(crops))
    return demographic_confusion(
        true_age=np.asarray(ages, dtype=np.float64),
        true_gender=np.asarray(genders),
        true_group=np.asarray(groups),
        predictions=pred,
        labels=engine.demographics.labels,
        model_version=engine.demographics.model_version,
    )


def scene_frames(
    engine: Any,
    site: Any,
    *,
    seed: int,
    n: int,
    bands: list[int],
    genders: list[str],
    groups: list[str],
) -> list[tuple[CountTable, list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]]:
    """``n`` frames of ``site``'s passers-by through the engine: per frame the predicted
    counts, the true faces matched to detections (box overlap >= 0.3), every true face, and
    the predictions of the matched detections with their truth (for a confusion)."""
    out = []
    kwargs = {"age_bands": bands, "genders": genders, "groups": groups}
    for i in range(n):
        image, faces = render_scene(site, np.random.default_rng([seed, i]))
        detected = engine.detect(image)
        pred: dict[str, Any] = {}
        if detected:
            pred = engine.predict(np.stack([f.crop for f in detected]))
            table = count_predictions(pred, **kwargs)
        else:
            table = count_predictions({"age": np.zeros(0)}, **kwargs)
        matched, rows = [], []
        for k, d in enumerate(detected):
            best = max(faces, key=lambda f: iou(d.box, f["box"]), default=None)
            if best is not None and iou(d.box, best["box"]) >= 0.3:
                matched.append(best)
                rows.append(k)
        picked = {key: np.asarray(v)[rows] for key, v in pred.items()} if rows else {}
        out.append((table, matched, faces, picked))
    return out


def scene_confusion(engine: Any, site: Any, n: int, *, bands: list[int]) -> dict[str, Any]:
    """The demographic model's confusion on the detected faces of ``n`` scenes of ``site``."""
    labels = engine.demographics.labels
    frames = scene_frames(
        engine,
        site,
        seed=SEED_CONFUSION_SCENES,
        n=n,
        bands=bands,
        genders=[str(x) for x in labels["gender"]],
        groups=[str(x) for x in labels["group"]],
    )
    faces = [f for fr in frames for f in fr[1]]
    preds = [fr[3] for fr in frames if fr[3]]
    if not preds:
        raise SystemExit(f"no face was detected in {n} scenes: raise --confusion-scenes")
    return demographic_confusion(
        true_age=np.array([f["age"] for f in faces], dtype=np.float64),
        true_gender=np.array([str(f["gender"]) for f in faces]),
        true_group=np.array([str(f["group"]) for f in faces]),
        predictions={k: np.concatenate([p[k] for p in preds]) for k in preds[0]},
        labels=labels,
        model_version=engine.demographics.model_version,
    )


def oracle_counts(
    matched: list[list[dict[str, Any]]],
    picked: list[dict[str, Any]],
    *,
    bands: list[int],
    names: dict[str, list[str]],
) -> dict[str, np.ndarray]:
    """Per dimension, per frame ``(n_frames, K, K)``: how many of the frame's detected faces of
    true class ``i`` were predicted ``j`` (the model's errors on these very faces)."""
    out = {d: np.zeros((len(matched), len(names[d]), len(names[d]))) for d in DIMENSIONS}
    for n, (faces, p) in enumerate(zip(matched, picked, strict=True)):
        if not faces:
            continue
        pred = {"age_band": age_band_index(np.asarray(p["age"], float).reshape(-1), bands)}
        true = {"age_band": age_band_index(np.array([f["age"] for f in faces], float), bands)}
        for dim, key in (("gender", "gender_probs"), ("group", "group_probs")):
            pred[dim] = np.argmax(np.asarray(p[key]).reshape(len(faces), -1), axis=1)
            true[dim] = np.array([names[dim].index(str(f[dim])) for f in faces])
        for dim in DIMENSIONS:
            np.add.at(out[dim][n], (true[dim], pred[dim]), 1.0)
    return out


def oracle_matrix(joint: np.ndarray) -> np.ndarray:
    """``Q[i, j]``: the share of true class ``i`` among the faces predicted ``j`` (counts
    ``joint[i, j]``; a column without faces is all zero)."""
    col = joint.sum(axis=0, keepdims=True)
    return np.divide(joint, col, out=np.zeros_like(joint), where=col > 0)


def truth_table(
    faces: list[dict[str, Any]], *, bands: list[int], template: CountTable
) -> CountTable:
    """True counts of ``faces`` (scene dicts) in the cells of ``template``."""
    out = CountTable.empty(
        age_labels=list(template.age_band),
        genders=list(template.gender),
        groups=list(template.group),
    )
    labels = list(template.age_band)
    for f in faces:
        out.faces += 1
        out.age_band[labels[int(age_band_index(np.array([f["age"]]), bands)[0])]] += 1
        out.gender[str(f["gender"])] += 1
        out.group[str(f["group"])] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", default=os.environ.get("VISAGE_PROJECT") or ".")
    ap.add_argument("--scenes", type=int, default=300)
    ap.add_argument("--window", type=int, nargs="+", default=[10, 30, 100])
    ap.add_argument("--per-group", type=int, default=100)
    ap.add_argument("--confusion", default=None, help="a reports/demographic_confusion.json")
    ap.add_argument(
        "--confusion-scenes",
        type=int,
        default=0,
        help="measure the confusion on the faces of this many scenes of the trained population",
    )
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument(
        "--history",
        type=int,
        default=None,
        help="earlier windows the site's mix is estimated from (default: the project's "
        "serving.analytics.keep_windows, what serving keeps; 0: each window alone)",
    )
    ap.add_argument(
        "--group-shares",
        type=float,
        nargs=len(GROUPS),
        default=None,
        help="the site's skin-tone group shares (default: the project's synth.group_shares)",
    )
    ap.add_argument("--female-share", type=float, default=None)
    ap.add_argument("--age-range", type=int, nargs=2, default=None)
    args = ap.parse_args()
    from visage_ml.serving.engine import Engine

    t0 = time.perf_counter()
    project = ProjectPaths(Path(args.project).resolve())
    params = project_params(project)
    engine = Engine.from_project(project, params, mode="analytics")
    bands = [int(b) for b in engine.demographics.labels.get("age_bands") or []]
    genders = [str(x) for x in engine.demographics.labels["gender"]]
    groups = [str(x) for x in engine.demographics.labels["group"]]
    # The site is checked before the (minutes-long) confusion is measured.
    site = dataclasses.replace(
        params.synth,
        group_shares=tuple(args.group_shares or params.synth.group_shares),
        female_share=(
            params.synth.female_share if args.female_share is None else args.female_share
        ),
        age_range=tuple(args.age_range or params.synth.age_range),
    )
    problem = site.check()
    if problem is not None:
        ap.error(f"the site's {problem[0]} = {problem[1]}: expected {problem[2]}")
    if args.confusion:
        doc = json.loads(Path(args.confusion).read_text())
        source = args.confusion
    elif args.confusion_scenes:
        doc = scene_confusion(engine, params.synth, args.confusion_scenes, bands=bands)
        source = (
            f"detected faces of {args.confusion_scenes} scenes of the trained population "
            f"(seed {SEED_CONFUSION_SCENES})"
        )
    else:
        doc = measure_confusion(params, engine, args.per_group)
        source = (
            f"balanced evaluation-only portraits: {args.per_group} identities per group x 2 "
            f"photographs (seed {SEED_CONFUSION})"
        )
    confusion = ConfusionModel(doc)
    t_conf = time.perf_counter() - t0

    # Scenes: what the engine counts per frame, and the truth of what it detected.
    t = time.perf_counter()
    seen = scene_frames(
        engine, site, seed=SEED_SCENES, n=args.scenes, bands=bands, genders=genders, groups=groups
    )
    frames = [(table, matched, faces) for table, matched, faces, _ in seen]
    t_scenes = time.perf_counter() - t
    # The oracle: each window's predicted counts reassigned by how the model erred on the faces
    # of the *other* windows of this site (the site's true mix and its scene faces' own
    # confusion, both unknowable to serving): about the best a correction of the counts can
    # do. The window's own faces are left out: with them the oracle would partly know the
    # answer (in 300-frame windows it "halved" the error where a second draw of the same site's
    # scenes did not).
    oracle_n = oracle_counts(
        [m for _, m, _, _ in seen],
        [p for _, _, _, p in seen],
        bands=bands,
        names={
            "age_band": list(frames[0][0].age_band) if frames else [],
            "gender": genders,
            "group": groups,
        },
    )

    n_faces = sum(len(f[2]) for f in frames)
    n_detected = sum(f[0].faces for f in frames)
    n_matched = sum(len(f[1]) for f in frames)
    rng = np.random.default_rng(0)
    history_windows = (
        params.serving.analytics.keep_windows if args.history is None else args.history
    )
    results: dict[str, Any] = {}
    for w in args.window:
        errors: dict[str, dict[str, list[float]]] = {
            dim: {"raw": [], "corrected": [], "oracle": [], "raw_all": [], "corrected_all": []}
            for dim in DIMENSIONS
        }
        covered = cells = 0
        past: list[dict[str, np.ndarray]] = []  # the windows serving keeps, oldest first
        for start in range(0, len(frames) - w + 1, w):
            part = frames[start : start + w]
            oracle_q = {
                d: oracle_matrix(n.sum(axis=0) - n[start : start + w].sum(axis=0))
                for d, n in oracle_n.items()
            }
            raw = CountTable.empty(
                age_labels=list(part[0][0].age_band), genders=genders, groups=groups
            )
            for table, _, _ in part:
                raw.add(table)
            truth = truth_table([f for p in part for f in p[1]], bands=bands, template=raw)
            truth_all = truth_table([f for p in part for f in p[2]], bands=bands, template=raw)
            observed = {
                "group": np.array([raw.group[g] for g in confusion.groups], dtype=float),
                "gender": np.array([raw.gender[g] for g in confusion.genders], dtype=float),
                "age_band": np.array([raw.age_band[a] for a in confusion.age_labels], dtype=float),
            }
            history = {
                d: observed[d] + sum((p[d] for p in past), np.zeros_like(observed[d]))
                for d in observed
            }
            est = confusion.correct_all(observed, history=history, rounds=args.rounds, rng=rng)
            past = ([*past, observed])[-history_windows:] if history_windows else []
            for dim in DIMENSIONS:
                names = list(getattr(raw, dim))
                r = np.array([getattr(raw, dim)[k] for k in names], dtype=float)
                c = np.array([est[dim].estimate[k] for k in names])
                tr = np.array([getattr(truth, dim)[k] for k in names], dtype=float)
                ta = np.array([getattr(truth_all, dim)[k] for k in names], dtype=float)
                lo = np.array([est[dim].low[k] for k in names])
                hi = np.array([est[dim].high[k] for k in names])
                errors[dim]["raw"].append(float(np.abs(r - tr).mean()))
                errors[dim]["corrected"].append(float(np.abs(c - tr).mean()))
                errors[dim]["oracle"].append(float(np.abs(oracle_q[dim] @ r - tr).mean()))
                errors[dim]["raw_all"].append(float(np.abs(r - ta).mean()))
                errors[dim]["corrected_all"].append(float(np.abs(c - ta).mean()))
                covered += int(((tr >= lo - 0.5) & (tr <= hi + 0.5)).sum())
                cells += len(names)
        summary: dict[str, Any] = {"windows": len(errors["gender"]["raw"])}
        raw_all_dims, cor_all_dims, oracle_dims = [], [], []
        for dim, e in errors.items():
            raw_mae, cor_mae = float(np.mean(e["raw"])), float(np.mean(e["corrected"]))
            oracle_mae = float(np.mean(e["oracle"]))
            raw_all_dims.append(raw_mae)
            cor_all_dims.append(cor_mae)
            oracle_dims.append(oracle_mae)
            summary[dim] = {
                "mae_raw": round(raw_mae, 3),
                "mae_corrected": round(cor_mae, 3),
                "ratio": round(cor_mae / raw_mae, 3) if raw_mae else None,
                "oracle_ratio": round(oracle_mae / raw_mae, 3) if raw_mae else None,
                "mae_raw_vs_all_faces": round(float(np.mean(e["raw_all"])), 3),
                "mae_corrected_vs_all_faces": round(float(np.mean(e["corrected_all"])), 3),
            }
        summary["mae_raw"] = round(float(np.mean(raw_all_dims)), 3)
        summary["mae_corrected"] = round(float(np.mean(cor_all_dims)), 3)
        summary["ratio"] = round(summary["mae_corrected"] / summary["mae_raw"], 3)
        summary["oracle_ratio"] = round(float(np.mean(oracle_dims)) / summary["mae_raw"], 3)
        summary["interval_coverage"] = round(covered / cells, 3) if cells else None
        summary["faces_per_window"] = round(n_detected / max(1, len(frames)) * w, 1)
        results[str(w)] = summary
    out = {
        "project": str(project.root),
        "demographics_model_version": engine.demographics.model_version,
        "confusion": {
            "source": source,
            "images": doc.get("n_images"),
            "gender_accuracy_by_group": {g: doc["gender"][g]["accuracy"] for g in confusion.groups},
            "group_accuracy": doc["group"]["accuracy"],
        },
        "scenes": {
            "site": {
                "group_shares": dict(zip(GROUPS, site.group_shares, strict=True)),
                "female_share": site.female_share,
                "age_range": list(site.age_range),
                "as_trained": (site.group_shares, site.female_share, site.age_range)
                == (params.synth.group_shares, params.synth.female_share, params.synth.age_range),
            },
            "frames": len(frames),
            "seed": SEED_SCENES,
            "faces": n_faces,
            "detected": n_detected,
            "detected_matched_to_truth": n_matched,
        },
        "truth": "true labels of the detected faces (matched by box overlap >= 0.3); "
        "*_vs_all_faces: of every face in the frames, misses included",
        "history_windows": history_windows,
        "windows": results,
        "timings_s": {
            "confusion": round(t_conf, 1),
            "scenes": round(t_scenes, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
