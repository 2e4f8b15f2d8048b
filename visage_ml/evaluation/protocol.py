"""The evaluation protocol, without file I/O: from embeddings and predictions to every report.

Verification (ROC, AUC, EER, TAR@FMR with identity-bootstrap intervals) and the serving
threshold at ``target_fmr``; open-set identification; NIST FRVT Part 3 differentials per
demographic breakdown at that one threshold and the fairness gate; the demographic model and the
detector per group; LFW 10-fold accuracy when a protocol is given. :func:`evaluate` returns the
documents (``metrics.json``, ``fairness.json``, ``threshold.json``), the CSV tables, the
figures and the HTML page as values; the ``evaluate`` stage reads the inputs and writes them.
Only ``split == "test"`` identities are scored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from visage_ml.config import GENDERS, GROUPS, EvaluateParams, flatten
from visage_ml.data.pairs import build_pairs, encode_labels, threshold_at_far
from visage_ml.evaluation import demographics as demo
from visage_ml.evaluation.fairness import (
    Breakdown,
    GateOutcome,
    demographic_differentials,
    fairness_gate,
    make_breakdown,
)
from visage_ml.evaluation.figures import make_figures
from visage_ml.evaluation.headline import headline_metrics, json_ready
from visage_ml.evaluation.identification import open_set_metrics, search_scores, split_enrolment
from visage_ml.evaluation.lfw import protocol_accuracy
from visage_ml.evaluation.report import render_html
from visage_ml.evaluation.tables import fairness_tables, group_curves, plot_tables
from visage_ml.evaluation.verification import (
    RocCurve,
    rates_at_threshold,
    verification_with_intervals,
)

logger = logging.getLogger(__name__)

# Rows of the crops run through both models at a time (bounds memory).
CHUNK_ROWS = 2048

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
    """What evaluation needs of :class:`visage_ml.inference.OnnxModel` (kind ``embedder``)."""

    model_version: str
    data_md5: str

    def embed(self, crops_u8_nhwc: np.ndarray, *, batch_size: int = ...) -> np.ndarray: ...


class DemographicModel(Protocol):
    """What evaluation needs of :class:`visage_ml.inference.OnnxModel` (kind ``demographics``)."""

    model_version: str
    data_md5: str
    labels: Mapping[str, Any]

    def predict(
        self, crops_u8_nhwc: np.ndarray, *, batch_size: int = ...
    ) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class EvaluationInputs:
    """Everything one evaluation reads, in memory.

    Attributes
    ----------
    test
        Manifest rows of the test split, in crop order (:func:`select_test_rows`).
    embeddings, predictions
        Per test row: embedding and demographic-model outputs (:func:`infer`).
    demographic_labels
        The demographic model's label orders (``gender``, ``group``, optional ``age_bands``).
    lineage
        ``eval_data_md5``, ``md5 <file>``, ``{embedder,demographics}_{model_version,data_md5}``
        and ``git_rev``.
    detection
        Detector outcome per source image (``detected``, ``group``, ``gender``), if known.
    lfw_pairs
        The LFW pairs protocol, if imported.
    """

    test: pd.DataFrame
    embeddings: np.ndarray
    predictions: Mapping[str, np.ndarray]
    demographic_labels: Mapping[str, Any]
    lineage: Mapping[str, str]
    detection: pd.DataFrame | None = None
    lfw_pairs: pd.DataFrame | None = None


@dataclass
class EvaluationResult:
    """What one evaluation produced: documents, tables, figures, page and timings."""

    metrics: dict[str, Any]
    fairness: dict[str, Any]
    threshold: dict[str, Any]
    gate: GateOutcome
    curves: dict[str, dict[str, RocCurve | None]]
    plots: dict[str, str]
    tables: dict[str, str]
    figures: dict[str, bytes]
    html: str
    params: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def select_test_rows(manifest: pd.DataFrame, n_faces: int) -> pd.DataFrame:
    """The test rows of ``manifest`` in crop order; refused unless it matches the crops."""
    if len(manifest) != n_faces:
        raise ValueError(MSG_ROWS.format(rows=len(manifest), faces=n_faces))
    test = manifest[manifest["split"] == "test"].sort_values("row", kind="stable")
    n_ids = test["pid"].nunique()
    if n_ids < 2:
        raise ValueError(MSG_NO_TEST.format(n=n_ids))
    return test


def infer(
    faces: np.ndarray,
    rows: np.ndarray,
    *,
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


def identity_values(codes: np.ndarray, values: np.ndarray, *, n: int, what: str) -> np.ndarray:
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


def demographic_breakdowns(id_group: np.ndarray, id_gender: np.ndarray) -> list[Breakdown]:
    """The ``group``, ``gender`` and ``group_gender`` partitions of the identities."""
    groups = _labels(GROUPS, id_group)
    genders = _labels(GENDERS, id_gender)
    combo = np.array([f"{g}_{s}" for g, s in zip(id_group, id_gender, strict=True)], dtype=object)
    return [
        make_breakdown("group", id_group, groups),
        make_breakdown("gender", id_gender, genders),
        make_breakdown("group_gender", combo, tuple(f"{g}_{s}" for g in groups for s in genders)),
    ]


def threshold_document(
    gen_scores: np.ndarray, imp_scores: np.ndarray, *, cfg: EvaluateParams, n_ids: int
) -> dict[str, Any]:
    """The serving threshold at ``cfg.target_fmr`` and its measured rates (no lineage yet)."""
    threshold = threshold_at_far(imp_scores, cfg.target_fmr)
    fmr_t, fnmr_t = rates_at_threshold(gen_scores, imp_scores, threshold)
    expected_errors = cfg.target_fmr * imp_scores.size
    doc = {
        "threshold": threshold,
        "target_fmr": cfg.target_fmr,
        "measured_fmr": fmr_t,
        "measured_fnmr": fnmr_t,
        "score": "cosine similarity of L2-normalised embeddings",
        "accept": "score >= threshold",
        "n_impostor_pairs": int(imp_scores.size),
        "n_genuine_pairs": int(gen_scores.size),
        "n_test_identities": n_ids,
        "impostor_errors_at_target": expected_errors,
    }
    if expected_errors < 10:
        doc["warning"] = (
            f"only {expected_errors:.1f} impostor comparisons exceed this threshold; raise "
            "evaluate.impostor_pairs or evaluate on more identities for a stable threshold"
        )
        logger.warning(doc["warning"])
    return doc


def _per_image_reports(
    inputs: EvaluationInputs,
) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """The demographic model and detector per group, and LFW accuracy."""
    test = inputs.test
    sensitive = {
        "group": test["group"].astype(str).to_numpy(),
        "gender": test["gender"].astype(str).to_numpy(),
    }
    model_report = demo.demographic_model_report(
        true_age=test["age"].to_numpy(dtype=np.float64),
        true_gender=sensitive["gender"],
        true_group=sensitive["group"],
        predictions=inputs.predictions,
        labels=inputs.demographic_labels,
        breakdowns=sensitive,
    )
    detection = None
    if inputs.detection is not None:
        det = inputs.detection
        detection = demo.detection_report(
            det["detected"].to_numpy(dtype=bool),
            {
                "group": det["group"].astype(str).to_numpy(),
                "gender": det["gender"].astype(str).to_numpy(),
            },
        )
    lfw = None
    if inputs.lfw_pairs is not None:
        lfw = protocol_accuracy(inputs.lfw_pairs, test["image_id"].to_numpy(), inputs.embeddings)
    return model_report, detection, lfw


def evaluate(inputs: EvaluationInputs, *, cfg: EvaluateParams, seed: int) -> EvaluationResult:
    """Run the whole evaluation protocol on in-memory inputs.

    Parameters
    ----------
    inputs
        Test rows, their embeddings and predictions, lineage and optional tables.
    cfg
        The ``evaluate`` section of ``params.yaml``.
    seed
        ``project.seed``: pairs, bootstrap resamples and the open-set split.

    Returns
    -------
    EvaluationResult
        Every document, table, figure and the HTML page; ``seconds`` per part.
    """
    timings: dict[str, float] = {}
    t = time.perf_counter()
    test, emb, lineage = inputs.test, inputs.embeddings, inputs.lineage
    codes, _ = encode_labels(test["pid"].astype(str).to_numpy())
    n_ids = int(codes.max()) + 1
    pairs = build_pairs(emb, codes, impostor_limit=cfg.impostor_pairs, seed=seed)
    ver = verification_with_intervals(pairs, fars=cfg.fars, rounds=cfg.bootstrap, seed=seed)
    ver_dict = ver.to_dict(cfg.ci_level)
    threshold_doc = threshold_document(
        pairs.score[pairs.genuine], pairs.score[~pairs.genuine], cfg=cfg, n_ids=n_ids
    )
    threshold_doc["embedder_model_version"] = lineage["embedder_model_version"]
    threshold_doc["embedder_data_md5"] = lineage["embedder_data_md5"]
    threshold = threshold_doc["threshold"]
    timings["verification"] = time.perf_counter() - t

    t = time.perf_counter()
    enrol = split_enrolment(
        codes, enrolled_share=cfg.enrolled_share, gallery_images=cfg.gallery_images, seed=seed
    )
    search = search_scores(
        emb[enrol.probe_rows], emb[enrol.gallery_rows], enrol.gallery_ids, enrol.n_enrolled
    )
    ident = open_set_metrics(search, enrol.probe_mate, fpirs=cfg.fpirs)
    timings["identification"] = time.perf_counter() - t

    t = time.perf_counter()
    id_group = identity_values(codes, test["group"].astype(str).to_numpy(), n=n_ids, what="group")
    id_gender = identity_values(
        codes, test["gender"].astype(str).to_numpy(), n=n_ids, what="gender"
    )
    breakdowns = demographic_breakdowns(id_group, id_gender)
    diffs = demographic_differentials(
        pairs, breakdowns, threshold=threshold, alpha=cfg.fdr_alpha, rounds=cfg.bootstrap, seed=seed
    )
    gate = fairness_gate(
        diffs,
        max_fmr_ratio=cfg.gate.max_fmr_ratio,
        max_fnmr_ratio=cfg.gate.max_fnmr_ratio,
        breakdowns=cfg.gate.breakdowns,
    )
    curves = {
        b.name: group_curves(pairs, b, overall=ver.curve, max_points=cfg.max_curve_points)
        for b in breakdowns
        if b.name != "group_gender"
    }
    timings["differentials"] = time.perf_counter() - t

    t = time.perf_counter()
    model_report, detection, lfw = _per_image_reports(inputs)
    timings["demographics"] = time.perf_counter() - t

    t = time.perf_counter()
    fairness: dict[str, Any] = json_ready(
        {
            "method": "NISTIR 8280 style: one global threshold at target_fmr; identity bootstrap",
            "threshold": threshold,
            "target_fmr": cfg.target_fmr,
            "ci_level": cfg.ci_level,
            "bootstrap_rounds": cfg.bootstrap,
            "fdr_alpha": cfg.fdr_alpha,
            "n_identities": n_ids,
            "n_images": len(test),
            "verification": ver_dict,
            "identification": ident,
            "breakdowns": {name: d.to_dict(cfg.ci_level) for name, d in diffs.items()},
            "demographic_model": model_report,
            "detection": detection,
            "lfw": lfw,
            "gate": {**gate.to_dict(), "enforce": cfg.gate.enforce},
            "lineage": dict(lineage),
        }
    )
    metrics = headline_metrics(
        verification=ver_dict,
        threshold=threshold_doc,
        identification=ident,
        differentials=diffs,
        gate=gate,
        model_report=model_report,
        detection=detection,
        lfw=lfw,
    )
    threshold_doc = json_ready(
        {**threshold_doc, "git_rev": lineage["git_rev"], "eval_data_md5": lineage["eval_data_md5"]}
    )
    params = {f"evaluate.{k}": v for k, v in flatten(cfg).items()}
    params["project.seed"] = seed
    figures = make_figures(fairness=fairness, curves=curves)
    html = render_html(
        fairness=fairness, metrics=metrics, figures=figures, lineage=lineage, params=params
    )
    timings["reports"] = time.perf_counter() - t
    return EvaluationResult(
        metrics=metrics,
        fairness=fairness,
        threshold=threshold_doc,
        gate=gate,
        curves=curves,
        plots=plot_tables(curves["group"]),
        tables=fairness_tables(fairness),
        figures=figures,
        html=html,
        params=params,
        seconds=timings,
    )


def gate_message(gate: GateOutcome, reports: Path) -> str:
    """The error a failed, enforced gate ends the stage with: every exceeded bound."""
    details = "; ".join(
        f"{f['metric']} across {f['breakdown']} is {f['measured']:.3g}, above "
        f"evaluate.gate.{f['bound']} = {f['limit']:g}"
        for f in gate.failures
    )
    return MSG_GATE.format(details=details, reports=reports)
