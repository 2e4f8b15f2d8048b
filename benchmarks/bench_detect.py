"""MTCNN on SynthFaces: aligned faces per second, detection rate, landmark error, planted bias.

Goal (issue: SynthFaces): >= 50 aligned faces/s on 2 cores; detection rate >= 97 % at
prob >= 0.9 on default-difficulty SynthFaces. A face counts as detected when the face the
pipeline keeps (the largest one with prob >= ``--min-prob``) has landmarks within a quarter of
the inter-ocular distance of the true ones (mean). Reported per skin-tone group, with the mean
landmark error in pixels. ``--group-contrast`` / ``--group-difficulty`` plant a bias (e.g.
``1,1,1,0.4``). ``--separability`` aligns ``--sep-ids`` identities x ``--sep-images``
photographs at 112 px and compares a cheap descriptor (standardised 28x28 grey pixels) between
same- and different-identity pairs. ``--second-look`` is ``on`` (the pipeline's default,
``prepare.second_look``), ``off``, or ``compare``: both, with the misses per group and the
false faces each finds on ``--backdrops`` face-free SynthFaces backdrops. Prints one JSON object.

    python benchmarks/bench_detect.py [--faces 400] [--threads 2] [--group-contrast 1,1,1,0.4]
    python benchmarks/bench_detect.py --faces 2400 --second-look compare
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import numpy as np

from visage_ml.config import GROUPS, SynthParams
from visage_ml.data.detect import FaceDetector, detect_and_align
from visage_ml.data.synth import make_population, render_face
from visage_ml.data.synth_render import backdrop
from visage_ml.preprocess import align_face


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def _detection_quality(
    detector: FaceDetector,
    params: SynthParams,
    *,
    faces: int,
    seed: int,
    min_prob: float,
    look_again: bool,
) -> dict[str, object]:
    people = make_population(dataclasses.replace(params, n_identities=faces), seed)
    images, truth, groups = [], [], []
    for k, person in enumerate(people):
        image, lm = render_face(person, rng=np.random.default_rng([seed, 7, k]), params=params)
        images.append(image)
        truth.append(lm)
        groups.append(person.group)
    t0 = time.perf_counter()
    crops, chosen = detect_and_align(
        detector, images, size=112, min_prob=min_prob, look_again=look_again
    )
    wall = time.perf_counter() - t0
    hit = np.zeros(len(images), dtype=bool)
    errors = []
    probs = []
    for k, (face, lm) in enumerate(zip(chosen, truth, strict=True)):
        probs.append(face.prob if face is not None else 0.0)
        if face is None:
            continue
        iod = float(np.linalg.norm(lm[1] - lm[0]))
        err = np.linalg.norm(face.landmarks - lm, axis=1)
        if err.mean() < 0.25 * iod:
            hit[k] = True
            errors.append(err)
    err = np.array(errors)
    g = np.array(groups)
    p = np.array(probs)
    return {
        "faces": len(images),
        "aligned_faces_per_s": round(len(images) / wall, 1),
        "detection_rate": round(float(hit.mean()), 4),
        "detection_rate_by_group": {
            x: round(float(hit[g == x].mean()), 4) for x in GROUPS if (g == x).any()
        },
        "miss_rate_by_group": {
            x: round(1.0 - float(hit[g == x].mean()), 4) for x in GROUPS if (g == x).any()
        },
        "found_on_second_look": sum(c is not None and c.view != "direct" for c in chosen),
        "faces_by_group": {x: int((g == x).sum()) for x in GROUPS},
        "mean_kept_prob_by_group": {
            x: round(float(p[g == x].mean()), 4) for x in GROUPS if (g == x).any()
        },
        "landmark_error_px": round(float(err.mean()), 3) if len(err) else None,
        "landmark_error_px_by_point": [round(float(v), 3) for v in err.mean(axis=0)]
        if len(err)
        else None,
        "non_zero_crops": int(crops.reshape(len(crops), -1).any(axis=1).sum()),
    }


def _false_faces(detector: FaceDetector, *, n: int, seed: int, min_prob: float) -> dict:
    """Faces kept on ``n`` face-free backdrops, without and with the second look."""
    rng = np.random.default_rng([seed, 11])
    walls = [
        np.ascontiguousarray(
            np.clip(backdrop((160, 160), 1.0, rng), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        )
        for _ in range(n)
    ]
    out = {"backdrops": n}
    for name, again in (("without_second_look", False), ("with_second_look", True)):
        _, chosen = detect_and_align(detector, walls, size=112, min_prob=min_prob, look_again=again)
        out[name] = sum(c is not None for c in chosen)
    return out


def _separability(
    detector: FaceDetector, params: SynthParams, *, ids: int, per_id: int, seed: int
) -> dict[str, object]:
    people = make_population(dataclasses.replace(params, n_identities=ids), seed + 1)
    crops, labels, n_true = [], [], 0
    for i, person in enumerate(people):
        images, truth = [], []
        for j in range(per_id):
            image, lm = render_face(
                person, rng=np.random.default_rng([seed, 9, i, j]), params=params
            )
            images.append(image)
            truth.append(lm)
        aligned, chosen = detect_and_align(detector, images, size=112, min_prob=0.9)
        for j, face in enumerate(chosen):
            if face is None:  # fall back on the true landmarks so every identity counts
                aligned[j] = align_face(images[j], truth[j], 112)
                n_true += 1
            crops.append(aligned[j])
            labels.append(i)
    x = np.stack([c.astype(np.float32).mean(axis=2) for c in crops])
    x = x.reshape(len(x), 28, 4, 28, 4).mean(axis=(2, 4)).reshape(len(x), -1)
    x = (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-6)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    y = np.array(labels)
    iu = np.triu_indices(len(y), k=1)
    same = (y[:, None] == y[None, :])[iu]
    s = sim[iu]
    gen, imp = s[same], s[~same]
    # AUC = P(genuine > impostor), by ranks
    order = np.argsort(np.concatenate([gen, imp]), kind="stable")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    auc = (ranks[: len(gen)].sum() - len(gen) * (len(gen) + 1) / 2) / (len(gen) * len(imp))
    t = np.quantile(imp, 0.99)
    return {
        "identities": ids,
        "images_per_identity": per_id,
        "aligned_with_true_landmarks": n_true,
        "descriptor": "standardised 28x28 grey pixels, cosine",
        "genuine_mean": round(float(gen.mean()), 4),
        "impostor_mean": round(float(imp.mean()), 4),
        "d_prime": round(
            float((gen.mean() - imp.mean()) / np.sqrt(0.5 * (gen.var() + imp.var()))), 3
        ),
        "auc": round(float(auc), 4),
        "tar_at_far_1e-2": round(float((gen > t).mean()), 4),
        "genuine_below_impostor_median": round(float((gen < np.median(imp)).mean()), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--faces", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-face-size", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--min-prob", type=float, default=0.9)
    ap.add_argument("--group-contrast", type=_floats, default=None)
    ap.add_argument("--group-difficulty", type=_floats, default=None)
    ap.add_argument("--separability", action="store_true")
    ap.add_argument("--sep-ids", type=int, default=40)
    ap.add_argument("--sep-images", type=int, default=6)
    ap.add_argument("--seed", type=int, default=20261126)
    ap.add_argument("--second-look", choices=("on", "off", "compare"), default="on")
    ap.add_argument("--backdrops", type=int, default=500)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    params = SynthParams()
    if args.group_contrast is not None:
        params = dataclasses.replace(params, group_contrast=args.group_contrast)
    if args.group_difficulty is not None:
        params = dataclasses.replace(params, group_difficulty=args.group_difficulty)
    detector = FaceDetector(min_face_size=args.min_face_size, batch_size=args.batch)
    out: dict[str, object] = {
        "benchmark": "detect",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": args.threads,
        "load_avg_1m": os.getloadavg()[0],
        "min_face_size": args.min_face_size,
        "min_prob": args.min_prob,
        "group_contrast": list(params.group_contrast),
        "group_difficulty": list(params.group_difficulty),
        "goal_aligned_faces_per_s": 50,
        "goal_detection_rate": 0.97,
        "second_look": args.second_look,
    }

    def quality(look_again: bool) -> dict[str, object]:
        return _detection_quality(
            detector,
            params,
            faces=args.faces,
            seed=args.seed,
            min_prob=args.min_prob,
            look_again=look_again,
        )

    if args.second_look == "compare":
        out["without_second_look"] = quality(False)
        out["with_second_look"] = quality(True)
        out["false_faces"] = _false_faces(
            detector, n=args.backdrops, seed=args.seed, min_prob=args.min_prob
        )
    else:
        out.update(quality(args.second_look == "on"))
    if args.separability:
        out["separability"] = _separability(
            detector, params, ids=args.sep_ids, per_id=args.sep_images, seed=args.seed
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
