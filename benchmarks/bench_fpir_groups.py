"""Stranger FPIR per group at the served 1:N threshold, and with a threshold per cluster; one JSON.

The FPIR goal is on all strangers together, and ``bench_identify_scale.py`` finds it held while
strangers of one group are falsely matched several times as often as those of another. This
benchmark measures that gap offline (the library calls ``/v1/identify`` makes, as in
``bench_fpir_draws.py``, whose populations and embedding cache it shares) over ``--draws``
draws of calibration people and strangers, and asks whether a *label-free* threshold per region
of the embedding space closes it:

- **global**: the served threshold, one score model from all calibration comparisons;
- **cluster**: k-means (``--clusters``) on the calibration embeddings, one score model per
  cluster of the *probe* (the calibration comparisons whose probe's identity falls in it, by
  the mean of its embeddings); a stranger is searched at the threshold of the centroid nearest
  to its photograph, at the gallery's size;
- **cluster_mix**: as ``cluster``, with the calibration templates each probe cluster is compared
  with thinned to the gallery's own mix of clusters (a stranger of a crowded cluster meets more
  look-alikes in a gallery where that cluster is common; the calibration people are balanced);
- **global_balanced_gallery**: the served threshold over a gallery of every group in equal
  numbers (as many as the scarcest group allows, at most the size's): what is left of the gap
  when the gallery's mix is not the cause.

No group label is read to place a threshold; the strangers' and mates' groups only tally the
rates. Mated probes are a second photograph of the first ``--mated`` enrolled identities.

    python benchmarks/bench_fpir_groups.py --project DIR [--draws 2] [--calibration 1200]
        [--strangers 3000] [--mated 1000] [--sizes 1000 10000] [--clusters 4] [--cache DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fpir_draws import BAND, PROBE_CHUNK, served_setup
from bench_identify_scale import (
    CALIBRATION_IMAGES,
    SEED_CALIBRATION,
    SEED_ENROLLED,
    SEED_STRANGERS,
    parse_with_logging,
    population,
    wilson,
)

log = logging.getLogger("bench_fpir_groups")
METHODS = ("global", "cluster", "cluster_mix")


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest unit centroid (cosine) of each row of ``x``."""
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.argmax(u @ centroids.T, axis=1)


def subset(comparisons: Any, probe_ok: np.ndarray, ref_ok: np.ndarray | None) -> Any:
    """``comparisons`` restricted to impostor probes (identity codes) in ``probe_ok`` and, when
    given, templates in ``ref_ok``; genuine comparisons to the probes in ``probe_ok``."""
    imp = probe_ok[comparisons.impostor_probe]
    if ref_ok is not None:
        imp &= ref_ok[comparisons.impostor_ref]
    gen = probe_ok[comparisons.genuine_probe]
    return dataclasses.replace(
        comparisons,
        genuine=comparisons.genuine[gen],
        genuine_probe=comparisons.genuine_probe[gen],
        impostor=comparisons.impostor[imp],
        impostor_probe=comparisons.impostor_probe[imp],
        impostor_ref=comparisons.impostor_ref[imp],
    )


def thinned(ref_cluster: np.ndarray, gallery_share: np.ndarray) -> np.ndarray:
    """Which calibration templates to keep so their clusters come in ``gallery_share``
    proportions (the most of each that the scarcest allows); ``ref_cluster`` is -1 for an
    identity without a template."""
    k = len(gallery_share)
    have = np.bincount(ref_cluster[ref_cluster >= 0], minlength=k).astype(float)
    share = np.maximum(gallery_share, 1e-12)
    scale = np.min(np.where(gallery_share > 0, have / share, np.inf))
    want = np.floor(scale * gallery_share).astype(int)
    keep = np.zeros(ref_cluster.size, dtype=bool)
    for c in range(k):
        keep[np.flatnonzero(ref_cluster == c)[: want[c]]] = True
    return keep


def tally(flags: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """Rate of ``flags`` overall and per group, with 95 % Wilson intervals."""

    def one(mask: np.ndarray) -> dict[str, Any]:
        k, n = int(flags[mask].sum()), int(mask.sum())
        return {"rate": round(k / n, 5) if n else None, "ci95": wilson(k, n), "n": n}

    out = one(np.ones(flags.size, dtype=bool))
    out["per_group"] = {g: one(groups == g) for g in sorted(set(groups))}
    rates = [v["rate"] for v in out["per_group"].values() if v["rate"] is not None]
    lo = min(rates) if rates else 0.0
    out["max_min"] = round(max(rates) / lo, 2) if rates and lo > 0 else None
    out["max_minus_min"] = round(max(rates) - lo, 5) if rates else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", default=os.environ.get("VISAGE_PROJECT") or ".")
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--first-draw", type=int, default=0)
    ap.add_argument("--calibration", type=int, default=1200)
    ap.add_argument("--strangers", type=int, default=3000)
    ap.add_argument("--mated", type=int, default=1000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--clusters", type=int, default=4)
    ap.add_argument("--target-fpir", type=float, default=None)
    args = parse_with_logging(ap, log)
    from visage_ml.evaluation.calibration import kmeans_centroids
    from visage_ml.evaluation.score_model import ScoreModel, template_comparisons
    from visage_ml.evaluation.serving_reports import score_model_document
    from visage_ml.serving.index import normalize_queries

    t_start = time.perf_counter()
    served = served_setup(args)
    project, params, embedder = served.project, served.params, served.embedder
    calibration, target, embedded = served.calibration, served.target, served.embedded
    synth, sm = params.synth, params.evaluate.score_model
    level = params.serving.identify.confidence

    sizes = sorted(args.sizes)
    enrolled, enrol_f, templates, n_templates = served.gallery(sizes)
    dim = templates.shape[1]
    # Mates: shot 1 of the first --mated enrolled who have a template.
    n_mated = min(args.mated, max(sizes))
    mate_e, mate_f = embedded("enrolled", SEED_ENROLLED, enrolled[:n_mated], 0, [1])
    template_row = np.cumsum(enrol_f) - 1  # enrolled person -> row of templates
    mated = np.flatnonzero(mate_f & enrol_f[:n_mated])
    mate_probes = normalize_queries(mate_e[mated], dim)
    own = templates[template_row[mated]]
    mate_scores = np.diag(calibration.calibrate(mate_probes @ own.T, mate_probes, own))
    mate_groups = np.array([enrolled[i].group for i in mated])

    # A gallery of every group in equal numbers (as many as the scarcest allows, at most the
    # size's): is the gap the score model's, or the gallery's mix of look-alikes?
    t_groups = np.array([p.group for p, f in zip(enrolled, enrol_f, strict=True) if f])
    names = sorted(set(t_groups))
    balanced = {}
    for n in sizes:
        each = min(n_templates[n] // len(names), min(int(np.sum(t_groups == g)) for g in names))
        balanced[n] = np.sort(np.concatenate([np.flatnonzero(t_groups == g)[:each] for g in names]))
    results: dict[str, Any] = {m: {str(n_templates[n]): [] for n in sizes} for m in METHODS}
    results["global_balanced_gallery"] = {str(n_templates[n]): [] for n in sizes}
    draws = []
    for draw in range(args.first_draw, args.first_draw + args.draws):
        t_draw = time.perf_counter()
        seed_cal, seed_str = SEED_CALIBRATION + 10 * draw, SEED_STRANGERS + 10 * draw
        if params.project.seed in (seed_cal, seed_str):
            raise SystemExit("the project was trained on a seed this benchmark uses; change it")
        strangers = population(synth, args.strangers, seed_str)
        s_emb, s_found = embedded("strangers", seed_str, strangers, 0, [0])
        probes = normalize_queries(s_emb[s_found], dim)
        s_groups = np.array([p.group for p, f in zip(strangers, s_found, strict=True) if f])
        best = {n: np.empty(len(probes)) for n in sizes}
        best_bal = {n: np.empty(len(probes)) for n in sizes}
        for a in range(0, len(probes), PROBE_CHUNK):
            part = probes[a : a + PROBE_CHUNK]
            scores = calibration.calibrate(part @ templates.T, part, templates)
            for n in sizes:
                best[n][a : a + len(part)] = scores[:, : n_templates[n]].max(axis=1)
                best_bal[n][a : a + len(part)] = scores[:, balanced[n]].max(axis=1)

        cal = population(synth, args.calibration, seed_cal)
        c_emb, c_found = embedded("calibration", seed_cal, cal, 0, list(range(CALIBRATION_IMAGES)))
        codes = np.repeat(np.arange(len(cal)), CALIBRATION_IMAGES)[c_found]
        c_emb = c_emb[c_found]
        comparisons = template_comparisons(
            c_emb, codes, template_images=1, seed=0, calibration=calibration
        )
        centroids = kmeans_centroids(c_emb, args.clusters, seed=draw)
        k = len(centroids)
        # An identity's cluster: its mean embedding's (probe images follow their own below).
        means = np.zeros((len(cal), dim))
        np.add.at(means, codes, c_emb / np.linalg.norm(c_emb, axis=1, keepdims=True))
        id_cluster = nearest(means, centroids)
        has_template = np.bincount(codes, minlength=len(cal)) >= 2
        s_cluster = nearest(probes, centroids)
        m_cluster = nearest(mate_probes, centroids)
        t_cluster = nearest(templates, centroids)

        def model(comp: Any) -> ScoreModel:
            doc = score_model_document(comp, sm, seed=0, model_version=embedder.model_version)
            return ScoreModel(doc, confidence=level)

        glob = model(comparisons)
        per_cluster = [model(subset(comparisons, id_cluster == c, None)) for c in range(k)]
        one_draw: dict[str, Any] = {"draw": draw, "clusters": {}}
        for n in sizes:
            n_t = n_templates[n]
            share = np.bincount(t_cluster[:n_t], minlength=k) / n_t
            keep = thinned(np.where(has_template, id_cluster, -1), share)
            mix = [model(subset(comparisons, id_cluster == c, keep)) for c in range(k)]

            def at(models: list[ScoreModel], n_t: int = n_t) -> np.ndarray:
                return np.array([m.operating_point(n_t, target).threshold for m in models])

            thresholds = {
                "global": at([glob] * k),
                "cluster": at(per_cluster),
                "cluster_mix": at(mix),
            }
            mates_in = mated < n  # every mate's own template is in the first n here
            for method, th in thresholds.items():
                fp = best[n] >= th[s_cluster]
                miss = mate_scores < th[m_cluster]
                cell = {
                    "thresholds": [round(float(x), 5) for x in th],
                    "fpir": tally(fp, s_groups),
                    "ratio": round(float(fp.mean()) / target, 3),
                    "fnir_own_template": tally(miss[mates_in], mate_groups[mates_in]),
                }
                results[method][str(n_t)].append(cell)
            n_b = len(balanced[n])
            fp = best_bal[n] >= glob.operating_point(n_b, target).threshold
            results["global_balanced_gallery"][str(n_t)].append(
                {
                    "gallery_size": n_b,
                    "fpir": tally(fp, s_groups),
                    "ratio": round(float(fp.mean()) / target, 3),
                }
            )
            one_draw["clusters"][str(n_t)] = {
                "gallery_share": [round(float(x), 4) for x in share],
                "stranger_groups_by_cluster": {
                    str(c): {
                        g: int(np.sum((s_cluster == c) & (s_groups == g)))
                        for g in sorted(set(s_groups))
                    }
                    for c in range(k)
                },
            }
        one_draw["seconds"] = round(time.perf_counter() - t_draw, 1)
        draws.append(one_draw)
        log.info("draw %d done in %.0f s", draw, one_draw["seconds"])

    summary = {}
    for method, per_size in results.items():
        summary[method] = {}
        for size, cells in per_size.items():
            ratios = [c["ratio"] for c in cells]
            summary[method][size] = {
                "fpir_over_target": ratios,
                "inside_band": sum(BAND[0] <= r <= BAND[1] for r in ratios),
                "group_fpir_max_min": [c["fpir"]["max_min"] for c in cells],
                "group_fpir": [
                    {g: v["rate"] for g, v in c["fpir"]["per_group"].items()} for c in cells
                ],
                "fnir": [c["fnir_own_template"]["rate"] for c in cells if "fnir_own_template" in c],
                "group_fnir": [
                    {g: v["rate"] for g, v in c["fnir_own_template"]["per_group"].items()}
                    for c in cells
                    if "fnir_own_template" in c
                ],
            }
    print(
        json.dumps(
            {
                "project": str(project.root),
                "embedder_model_version": embedder.model_version,
                "score_calibration": calibration.method,
                "confidence": level,
                "target_fpir": target,
                "clusters": args.clusters,
                "calibration_people": args.calibration,
                "gallery_sizes": [n_templates[n] for n in sizes],
                "summary": summary,
                "results": results,
                "draws": draws,
                "seconds": round(time.perf_counter() - t_start, 1),
                "note": "offline; FNIR: a mate's score against its own template below the "
                "threshold (its probe's cluster's), one photograph per template",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
