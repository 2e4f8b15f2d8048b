"""Stage ``evaluate``: accuracy and demographic differentials of the exported ONNX models.

Reads ``data/processed/{faces.u8.npy, manifest.parquet, detection.parquet}`` and
``models/{embedder,demographics}.onnx`` (plus ``data/protocols/lfw_pairs.parquet`` when present)
and writes ``reports/metrics.json`` (DVC metrics), ``reports/plots/*.csv`` (DVC plots),
``reports/fairness.json``, ``reports/threshold.json`` (the serving threshold) and the
self-contained ``reports/fairness_report.html``; logs one MLflow run with the figures and tables
and registers both ONNX models. Only ``split == "test"`` identities are scored. With
``evaluate.gate.enforce`` the stage exits non-zero when a fairness bound is exceeded, after
writing every report.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from visage_ml.config import GENDERS, GROUPS, Params, ProjectPaths, flatten, load_params
from visage_ml.dvcops import git_revision
from visage_ml.evaluation import demographics as demo
from visage_ml.evaluation.bootstrap import finite_or_none
from visage_ml.evaluation.fairness import (
    Breakdown,
    Differentials,
    GateOutcome,
    demographic_differentials,
    fairness_gate,
    make_breakdown,
)
from visage_ml.evaluation.identification import open_set_metrics, search_scores, split_enrolment
from visage_ml.evaluation.lfw import ten_fold_accuracy
from visage_ml.evaluation.pairs import PairSet, build_pairs, encode_labels, pair_scores
from visage_ml.evaluation.report import make_figures, render_html
from visage_ml.evaluation.verification import (
    RocCurve,
    curve_points,
    rates_at_threshold,
    subset_curve,
    threshold_at_far,
    verification_with_intervals,
)
from visage_ml.io import atomic_write_json, atomic_write_text, md5_file

logger = logging.getLogger(__name__)

STAGE = "evaluate"
EMBEDDER_NAME = "visage-embedder"
DEMOGRAPHICS_NAME = "visage-demographics"
PROCESSED_FILES: tuple[str, ...] = (
    "faces.u8.npy",
    "manifest.parquet",
    "detection.parquet",
    "splits.json",
)
# Rows of faces.u8.npy read and run through both models at a time (bounds memory).
CHUNK_ROWS = 2048

MSG_MISSING = "{path} is missing; run `dvc repro {stage}` first"
MSG_NO_TEST = (
    "manifest.parquet has {n} test identities; evaluation needs at least 2 (raise "
    "prepare.split.test in params.yaml or add identities) and re-run `dvc repro`"
)
MSG_ROWS = (
    "manifest.parquet has {rows} rows but faces.u8.npy holds {faces} crops; re-run "
    "`dvc repro prepare` to rebuild both together"
)
MSG_GATE = (
    "fairness gate failed: {details}. Reports were written to {reports} (open "
    "fairness_report.html); improve the model (e.g. train_embedder.sampling: group_balanced) "
    "or, after review, change evaluate.gate in params.yaml"
)


class Embedder(Protocol):
    """What the stage needs of :class:`visage_ml.inference.OnnxModel` (kind ``embedder``)."""

    model_version: str
    data_md5: str

    def embed(self, crops_u8_nhwc: np.ndarray, *, batch_size: int = ...) -> np.ndarray: ...


class DemographicModel(Protocol):
    """What the stage needs of :class:`visage_ml.inference.OnnxModel` (kind ``demographics``)."""

    model_version: str
    data_md5: str
    labels: Mapping[str, Any]

    def predict(
        self, crops_u8_nhwc: np.ndarray, *, batch_size: int = ...
    ) -> dict[str, np.ndarray]: ...


@dataclass
class Outcome:
    """What one run of the stage produced (for tests and the exit code)."""

    metrics: dict[str, Any]
    fairness: dict[str, Any]
    threshold: dict[str, Any]
    gate: GateOutcome
    enforce: bool
    run_id: str | None
    model_versions: dict[str, str]
    seconds: dict[str, float]


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def _require(path: Path, stage: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(MSG_MISSING.format(path=path, stage=stage))
    return path


def load_models(paths: ProjectPaths) -> tuple[Embedder, DemographicModel]:
    """Both exported ONNX models, each refused unless it is the file export recorded.

    The SHA-256 in ``reports/export.json`` is checked when one is recorded
    (:class:`visage_ml.inference.ModelHashError`, a ``ValueError``, when the file differs).
    """
    from visage_ml.inference import OnnxModel, recorded_sha256

    emb = OnnxModel(
        _require(paths.models / "embedder.onnx", "export"),
        expected_kind="embedder",
        expected_sha256=recorded_sha256(paths.reports, "embedder"),
    )
    dem = OnnxModel(
        _require(paths.models / "demographics.onnx", "export"),
        expected_kind="demographics",
        expected_sha256=recorded_sha256(paths.reports, "demographics"),
    )
    return emb, dem


def _infer(
    faces: np.ndarray,
    rows: np.ndarray,
    embedder: Embedder,
    demographic: DemographicModel,
    batch_size: int,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Embeddings and demographic predictions of ``faces[rows]``, a chunk at a time."""
    embs, preds = [], []
    for start in range(0, rows.size, CHUNK_ROWS):
        crops = np.ascontiguousarray(faces[rows[start : start + CHUNK_ROWS]])
        embs.append(np.asarray(embedder.embed(crops, batch_size=batch_size), dtype=np.float32))
        preds.append(demographic.predict(crops, batch_size=batch_size))
    emb = np.concatenate(embs, axis=0)
    pred = {k: np.concatenate([p[k] for p in preds], axis=0) for k in preds[0]}
    return emb, pred


def _identity_values(codes: np.ndarray, values: np.ndarray, n: int, what: str) -> np.ndarray:
    """Each identity's value of a subject attribute (the first of its images)."""
    first = np.full(n, -1, dtype=np.int64)
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, codes[order][1:] != codes[order][:-1]])
    first[codes[order][starts]] = order[starts]
    per_id = np.asarray(values, dtype=object)[first]
    inconsistent = int((np.asarray(values, dtype=object) != per_id[codes]).sum())
    if inconsistent:
        logger.warning(
            "%d test images disagree with their subject's first image on '%s'; the first is used",
            inconsistent,
            what,
        )
    return per_id


def _labels(config_labels: Sequence[str], observed: np.ndarray) -> tuple[str, ...]:
    extra = sorted({str(v) for v in observed} - set(config_labels) - {"None", "nan", ""})
    return tuple(config_labels) + tuple(extra)


def _breakdowns(id_group: np.ndarray, id_gender: np.ndarray) -> list[Breakdown]:
    groups = _labels(GROUPS, id_group)
    genders = _labels(GENDERS, id_gender)
    combo = np.array([f"{g}_{s}" for g, s in zip(id_group, id_gender, strict=True)], dtype=object)
    return [
        make_breakdown("group", id_group, groups),
        make_breakdown("gender", id_gender, genders),
        make_breakdown("group_gender", combo, tuple(f"{g}_{s}" for g in groups for s in genders)),
    ]


def data_md5(processed: Path) -> tuple[str, dict[str, str]]:
    """MD5 of the evaluated crops (``faces.u8.npy``, the project's data md5) and of every file.

    Returns
    -------
    tuple
        ``(md5 of faces.u8.npy, {"data/processed/NAME": md5})``.
    """
    files = {
        f"data/processed/{name}": md5_file(processed / name)
        for name in PROCESSED_FILES
        if (processed / name).is_file()
    }
    return files.get("data/processed/faces.u8.npy", "unknown"), files


# ---------------------------------------------------------------------------------------------
# Analyses
# ---------------------------------------------------------------------------------------------


def _thin(curve: RocCurve, max_points: int) -> RocCurve:
    idx = curve_points(curve, max_points)
    return RocCurve(thresholds=curve.thresholds[idx], fmr=curve.fmr[idx], tar=curve.tar[idx])


def _group_curves(
    pairs: PairSet, breakdown: Breakdown, overall: RocCurve, max_points: int
) -> dict[str, RocCurve | None]:
    la = breakdown.identity_label[pairs.id_a]
    lb = breakdown.identity_label[pairs.id_b]
    curves: dict[str, RocCurve | None] = {"all": _thin(overall, max_points)}
    for i, lab in enumerate(breakdown.labels):
        curve = subset_curve(pairs, (la == i) & (lb == i))
        curves[lab] = _thin(curve, max_points) if curve is not None else None
    return curves


def _lfw(
    paths: ProjectPaths, image_ids: np.ndarray, embeddings: np.ndarray
) -> dict[str, Any] | None:
    protocol = paths.protocols / "lfw_pairs.parquet"
    if not protocol.is_file():
        return None
    import pandas as pd

    table = pd.read_parquet(protocol, columns=["fold", "image_id_a", "image_id_b", "same"])
    # Folds < 0 are LFW View 1 (pairsDevTest/DevTrain, see visage_ml.data.importers).
    table = table[table["fold"] >= 0].reset_index(drop=True)
    position = pd.Series(np.arange(len(image_ids)), index=pd.Index(image_ids.astype(str)))
    a = position.reindex(table["image_id_a"].astype(str)).to_numpy()
    b = position.reindex(table["image_id_b"].astype(str)).to_numpy()
    usable = ~(np.isnan(a.astype(float)) | np.isnan(b.astype(float)))
    out: dict[str, Any] = {
        "pairs_in_protocol": len(table),
        "pairs_used": int(usable.sum()),
    }
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
    ia = a[usable].astype(np.int64)
    ib = b[usable].astype(np.int64)
    scores = pair_scores(embeddings, ia, ib)
    same = table["same"].to_numpy(dtype=bool)[usable]
    out.update(ten_fold_accuracy(scores, same, folds))
    return out


def _clean(obj: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python, non-finite floats to ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return finite_or_none(float(obj))
    return obj


def _headline(
    verification: Mapping[str, Any],
    threshold: Mapping[str, Any],
    identification: Mapping[str, float],
    differentials: Mapping[str, Differentials],
    gate: GateOutcome,
    model_report: Mapping[str, Any],
    detection: Mapping[str, Any] | None,
    lfw: Mapping[str, Any] | None,
) -> dict[str, Any]:
    ver = {k: v["value"] for k, v in verification.items() if isinstance(v, dict)}
    ver["threshold"] = threshold["threshold"]
    ver["fmr_at_threshold"] = threshold["measured_fmr"]
    ver["fnmr_at_threshold"] = threshold["measured_fnmr"]
    ver["n_genuine_pairs"] = verification["n_genuine_pairs"]
    ver["n_impostor_pairs"] = verification["n_impostor_pairs"]
    ident = {
        k: v
        for k, v in identification.items()
        if k.startswith(("rank", "fnir_")) or k.startswith("n_")
    }
    fair: dict[str, Any] = {"gate_passed": int(gate.passed)}
    for name, diff in differentials.items():
        prefix = "" if name == "group" else f"{name}."
        for k in (
            "fmr_max_min_ratio",
            "fnmr_max_min_ratio",
            "fmr_max_geomean_ratio",
            "fnmr_max_geomean_ratio",
            "fmr_gini",
            "fnmr_gini",
            "fdr",
            "skewed_error_ratio",
        ):
            fair[prefix + k] = diff.summaries[k]
        if name == "group":
            for i, lab in enumerate(diff.labels):
                fair[f"fmr.{lab}"] = diff.fmr[i]
                fair[f"fnmr.{lab}"] = diff.fnmr[i]
    demo_head: dict[str, Any] = {}
    for task, by in model_report.items():
        summary = by.get("group")
        if summary:
            demo_head[task] = summary["overall"]
            demo_head[f"{task}_group_difference"] = summary["difference"]
            demo_head[f"{task}_group_ratio"] = summary["ratio"]
    out: dict[str, Any] = {
        "verification": ver,
        "identification": ident,
        "fairness": fair,
        "demographics": demo_head,
    }
    if detection and "group" in detection:
        out["detection"] = {
            "miss_rate": detection["group"]["overall"],
            "miss_rate_group_difference": detection["group"]["difference"],
            "miss_rate_group_ratio": detection["group"]["ratio"],
        }
    if lfw and "accuracy" in lfw:
        out["lfw"] = {k: lfw[k] for k in ("accuracy", "std", "stderr", "n_pairs")}
    return _clean(out)


def _plots(curves: Mapping[str, RocCurve | None]) -> dict[str, str]:
    """CSV text per file name: ROC overall and per group, DET per group."""
    out: dict[str, str] = {}

    def csv(curve: RocCurve, ycol: str) -> str:
        y = curve.tar if ycol == "tar" else curve.fnmr
        thr = np.where(np.isfinite(curve.thresholds), curve.thresholds, 1.0)
        lines = [f"threshold,fmr,{ycol}"]
        lines += [f"{t:.6f},{f:.6g},{v:.6g}" for t, f, v in zip(thr, curve.fmr, y, strict=True)]
        return "\n".join(lines) + "\n"

    for name, curve in curves.items():
        if curve is None:
            continue
        if name == "all":
            out["roc_overall.csv"] = csv(curve, "tar")
        else:
            out[f"roc_{name}.csv"] = csv(curve, "tar")
            out[f"det_{name}.csv"] = csv(curve, "fnmr")
    return out


def _tables(fairness: Mapping[str, Any]) -> dict[str, str]:
    """Per-group CSV tables for MLflow (aggregates only)."""
    import pandas as pd

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


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def run(
    paths: ProjectPaths,
    params: Params,
    *,
    embedder: Embedder | None = None,
    demographic: DemographicModel | None = None,
    log_to_mlflow: bool = True,
) -> Outcome:
    """Evaluate the exported models and write every report.

    Parameters
    ----------
    paths
        The project.
    params
        Validated ``params.yaml``.
    embedder, demographic
        Models to evaluate; by default ``models/{embedder,demographics}.onnx`` via
        :class:`visage_ml.inference.OnnxModel`.
    log_to_mlflow
        Log the run and register the models (the stage always does; notebooks may not).
        Registration logs the files ``models/{embedder,demographics}.onnx``, so models given
        as objects must be those files' models.

    Returns
    -------
    Outcome
        The metrics, fairness results, threshold, gate outcome and MLflow ids.
    """
    import pandas as pd

    cfg = params.evaluate
    seed = params.project.seed
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    processed = paths.processed
    manifest = pd.read_parquet(_require(processed / "manifest.parquet", "prepare"))
    faces = np.load(_require(processed / "faces.u8.npy", "prepare"), mmap_mode="r")
    if len(manifest) != faces.shape[0]:
        raise ValueError(MSG_ROWS.format(rows=len(manifest), faces=faces.shape[0]))
    test = manifest[manifest["split"] == "test"].sort_values("row", kind="stable")
    codes, _ = encode_labels(test["pid"].astype(str).to_numpy())
    n_ids = int(codes.max()) + 1 if codes.size else 0
    if n_ids < 2:
        raise ValueError(MSG_NO_TEST.format(n=n_ids))
    if embedder is None or demographic is None:
        loaded_emb, loaded_dem = load_models(paths)
        embedder = embedder or loaded_emb
        demographic = demographic or loaded_dem
    rows = test["row"].to_numpy(dtype=np.int64)
    emb, pred = _infer(faces, rows, embedder, demographic, cfg.batch_size)
    timings["inference"] = time.perf_counter() - t0
    logger.info("embedded %d test crops of %d identities", rows.size, n_ids)

    # -- verification ------------------------------------------------------------------------
    t = time.perf_counter()
    pairs = build_pairs(emb, codes, impostor_limit=cfg.impostor_pairs, seed=seed)
    ver = verification_with_intervals(pairs, fars=cfg.fars, rounds=cfg.bootstrap, seed=seed)
    ver_dict = ver.to_dict(cfg.ci_level)
    imp_scores = pairs.score[~pairs.genuine]
    gen_scores = pairs.score[pairs.genuine]
    threshold = threshold_at_far(imp_scores, cfg.target_fmr)
    fmr_t, fnmr_t = rates_at_threshold(gen_scores, imp_scores, threshold)
    expected_errors = cfg.target_fmr * imp_scores.size
    threshold_doc = {
        "threshold": threshold,
        "target_fmr": cfg.target_fmr,
        "measured_fmr": fmr_t,
        "measured_fnmr": fnmr_t,
        "score": "cosine similarity of L2-normalised embeddings",
        "accept": "score >= threshold",
        "embedder_model_version": embedder.model_version,
        "embedder_data_md5": embedder.data_md5,
        "n_impostor_pairs": int(imp_scores.size),
        "n_genuine_pairs": int(gen_scores.size),
        "n_test_identities": n_ids,
        "impostor_errors_at_target": expected_errors,
    }
    if expected_errors < 10:
        threshold_doc["warning"] = (
            f"only {expected_errors:.1f} impostor comparisons exceed this threshold; raise "
            "evaluate.impostor_pairs or evaluate on more identities for a stable threshold"
        )
        logger.warning(threshold_doc["warning"])
    timings["verification"] = time.perf_counter() - t

    # -- identification ----------------------------------------------------------------------
    t = time.perf_counter()
    enrol = split_enrolment(
        codes, enrolled_share=cfg.enrolled_share, gallery_images=cfg.gallery_images, seed=seed
    )
    search = search_scores(
        emb[enrol.probe_rows], emb[enrol.gallery_rows], enrol.gallery_ids, enrol.n_enrolled
    )
    ident = open_set_metrics(search, enrol.probe_mate, fpirs=cfg.fpirs)
    timings["identification"] = time.perf_counter() - t

    # -- demographic differentials -----------------------------------------------------------
    t = time.perf_counter()
    id_group = _identity_values(codes, test["group"].astype(str).to_numpy(), n_ids, "group")
    id_gender = _identity_values(codes, test["gender"].astype(str).to_numpy(), n_ids, "gender")
    breakdowns = _breakdowns(id_group, id_gender)
    diffs = demographic_differentials(
        pairs,
        breakdowns,
        threshold=threshold,
        alpha=cfg.fdr_alpha,
        rounds=cfg.bootstrap,
        seed=seed,
    )
    gate = fairness_gate(
        diffs,
        max_fmr_ratio=cfg.gate.max_fmr_ratio,
        max_fnmr_ratio=cfg.gate.max_fnmr_ratio,
        breakdowns=cfg.gate.breakdowns,
    )
    curves = {
        b.name: _group_curves(pairs, b, ver.curve, cfg.max_curve_points)
        for b in breakdowns
        if b.name != "group_gender"
    }
    timings["differentials"] = time.perf_counter() - t

    # -- demographic model and detection ---------------------------------------------------------
    t = time.perf_counter()
    sensitive = {
        "group": test["group"].astype(str).to_numpy(),
        "gender": test["gender"].astype(str).to_numpy(),
    }
    model_report = demo.demographic_model_report(
        true_age=test["age"].to_numpy(dtype=np.float64),
        true_gender=sensitive["gender"],
        true_group=sensitive["group"],
        predictions=pred,
        labels=demographic.labels,
        breakdowns=sensitive,
    )
    detection = None
    detection_path = processed / "detection.parquet"
    if detection_path.is_file():
        det = pd.read_parquet(detection_path, columns=["detected", "group", "gender"])
        detection = demo.detection_report(
            det["detected"].to_numpy(dtype=bool),
            {
                "group": det["group"].astype(str).to_numpy(),
                "gender": det["gender"].astype(str).to_numpy(),
            },
        )
    else:
        logger.warning("%s is missing: no detector miss rates", detection_path)
    lfw = _lfw(paths, test["image_id"].to_numpy(), emb)
    timings["demographics"] = time.perf_counter() - t

    # -- documents ---------------------------------------------------------------------------
    t = time.perf_counter()
    eval_md5, eval_files = data_md5(processed)
    rev = git_revision(paths.root, mark_dirty=True)
    lineage = {
        "eval_data_md5": eval_md5,
        **{f"md5 {k}": v for k, v in eval_files.items()},
        "embedder_model_version": embedder.model_version,
        "embedder_data_md5": embedder.data_md5,
        "demographics_model_version": demographic.model_version,
        "demographics_data_md5": demographic.data_md5,
        "git_rev": rev,
    }
    fairness: dict[str, Any] = _clean(
        {
            "method": "NISTIR 8280 style: one global threshold at target_fmr; identity bootstrap",
            "threshold": threshold,
            "target_fmr": cfg.target_fmr,
            "ci_level": cfg.ci_level,
            "bootstrap_rounds": cfg.bootstrap,
            "fdr_alpha": cfg.fdr_alpha,
            "n_identities": n_ids,
            "n_images": int(rows.size),
            "verification": ver_dict,
            "identification": ident,
            "breakdowns": {name: d.to_dict(cfg.ci_level) for name, d in diffs.items()},
            "demographic_model": model_report,
            "detection": detection,
            "lfw": lfw,
            "gate": {**gate.to_dict(), "enforce": cfg.gate.enforce},
            "lineage": lineage,
        }
    )
    metrics = _headline(ver_dict, threshold_doc, ident, diffs, gate, model_report, detection, lfw)
    threshold_doc = _clean({**threshold_doc, "git_rev": rev, "eval_data_md5": eval_md5})
    flat_params = {f"evaluate.{k}": v for k, v in flatten(cfg).items()}
    flat_params["project.seed"] = seed
    figures = make_figures(fairness=fairness, curves=curves)
    page = render_html(
        fairness=fairness, metrics=metrics, figures=figures, lineage=lineage, params=flat_params
    )
    reports = paths.reports
    plots_dir = reports / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    for old in plots_dir.glob("*.csv"):
        old.unlink()
    for name, text in _plots(curves["group"]).items():
        atomic_write_text(plots_dir / name, text)
    atomic_write_json(reports / "metrics.json", metrics)
    atomic_write_json(reports / "fairness.json", fairness)
    atomic_write_json(reports / "threshold.json", threshold_doc)
    atomic_write_text(reports / "fairness_report.html", page)
    timings["reports"] = time.perf_counter() - t

    run_id = None
    versions: dict[str, str] = {}
    if log_to_mlflow:
        t = time.perf_counter()
        run_id, versions = _log_mlflow(
            paths,
            params=flat_params,
            metrics=metrics,
            gate=gate,
            lineage=lineage,
            figures=figures,
            tables=_tables(fairness),
        )
        timings["mlflow"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    logger.info("evaluate timings (s): %s", {k: round(v, 2) for k, v in timings.items()})
    return Outcome(
        metrics=metrics,
        fairness=fairness,
        threshold=threshold_doc,
        gate=gate,
        enforce=cfg.gate.enforce,
        run_id=run_id,
        model_versions=versions,
        seconds=timings,
    )


def _flat_metrics(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flat_metrics(v, key))
        elif isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


def _log_mlflow(
    paths: ProjectPaths,
    *,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    gate: GateOutcome,
    lineage: Mapping[str, Any],
    figures: Mapping[str, bytes],
    tables: Mapping[str, str],
) -> tuple[str, dict[str, str]]:
    """One MLflow run: params, metrics, tags, artefacts; both ONNX models registered."""
    import mlflow
    import onnx
    from mlflow import MlflowClient

    from visage_ml.tracking import log_metrics, sanitize_key, stage_run

    tags = {
        "visage.fairness_gate": gate.describe(),
        "visage.fairness_gate_passed": str(gate.passed).lower(),
        "visage.git_rev": str(lineage["git_rev"]),
        "visage.data_md5": str(lineage["embedder_data_md5"]),
        "visage.eval_data_md5": str(lineage["eval_data_md5"]),
        "visage.embedder_version": str(lineage["embedder_model_version"]),
        "visage.demographics_version": str(lineage["demographics_model_version"]),
    }
    versions: dict[str, str] = {}
    with stage_run(paths, STAGE, params=params, tags=tags) as active:
        log_metrics(_flat_metrics(metrics))
        reports = paths.reports
        for name in ("metrics.json", "fairness.json", "threshold.json", "fairness_report.html"):
            mlflow.log_artifact(str(reports / name), artifact_path="reports")
        mlflow.log_artifacts(str(reports / "plots"), artifact_path="reports/plots")
        with tempfile.TemporaryDirectory() as tmp:
            fig_dir, table_dir = Path(tmp) / "figures", Path(tmp) / "tables"
            fig_dir.mkdir()
            table_dir.mkdir()
            for name, png in figures.items():
                (fig_dir / sanitize_key(name)).write_bytes(png)
            for name, text in tables.items():
                (table_dir / sanitize_key(name)).write_text(text, encoding="utf-8")
            mlflow.log_artifacts(str(fig_dir), artifact_path="figures")
            mlflow.log_artifacts(str(table_dir), artifact_path="tables")
        client = MlflowClient()
        requirements = _onnx_requirements()
        for kind, registered in (("embedder", EMBEDDER_NAME), ("demographics", DEMOGRAPHICS_NAME)):
            info = mlflow.onnx.log_model(
                onnx.load(str(paths.models / f"{kind}.onnx")),
                name=kind,
                registered_model_name=registered,
                pip_requirements=requirements,
            )
            version = str(info.registered_model_version)
            versions[registered] = version
            version_tags = {
                "visage.data_md5": lineage[f"{kind}_data_md5"],
                "visage.eval_data_md5": lineage["eval_data_md5"],
                "visage.git_rev": lineage["git_rev"],
                "visage.model_version": lineage[f"{kind}_model_version"],
                "visage.fairness_gate": gate.describe(),
                "visage.fairness_gate_passed": str(gate.passed).lower(),
            }
            for key, value in version_tags.items():
                client.set_model_version_tag(registered, version, key, str(value))
        run_id = active.info.run_id
    logger.info("MLflow run %s; registered %s", run_id, versions)
    return run_id, versions


def _onnx_requirements() -> list[str]:
    """Pinned requirements of the ONNX flavour, given so MLflow does not infer them (slow)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("onnx", "onnxruntime", "numpy"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            out.append(pkg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m visage_ml.stages.evaluate``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m visage_ml.stages.evaluate")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    paths = ProjectPaths.discover()
    try:
        params = load_params(paths.params)
        outcome = run(paths, params)
    except (FileNotFoundError, ValueError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    m = outcome.metrics
    print(
        f"evaluate: AUC {m['verification'].get('auc')}, EER {m['verification'].get('eer')}, "
        f"threshold {outcome.threshold['threshold']:.4f} at FMR {outcome.threshold['target_fmr']}"
        f"; fairness gate {outcome.gate.describe()}"
    )
    if outcome.enforce and not outcome.gate.passed:
        details = "; ".join(
            f"{f['metric']} across {f['breakdown']} is {f['measured']:.3g}, above "
            f"evaluate.gate.{f['bound']} = {f['limit']:g}"
            for f in outcome.gate.failures
        )
        print(MSG_GATE.format(details=details, reports=paths.reports), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
