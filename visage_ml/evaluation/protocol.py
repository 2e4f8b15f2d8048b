"""The evaluation protocol, without file I/O: from embeddings and predictions to every report.

Verification (ROC, AUC, EER, TAR@FMR with identity-bootstrap intervals) and the serving
threshold at ``target_fmr``; open-set identification; NIST FRVT Part 3 differentials per
demographic breakdown at that one threshold and the fairness gate; the demographic model and the
detector per group; LFW 10-fold accuracy when a protocol is given. :func:`evaluate` returns the
documents (``metrics.json``, ``fairness.json``, ``threshold.json``), the CSV tables, the
figures and the HTML page as values; the ``evaluate`` stage reads the inputs and writes them.
Only ``split == "test"`` identities are scored. Subjects without a demographic label are
evaluated like everyone else and appear in every per-group report as an explicit ``unlabeled``
share, never as a group. In a project with several sources (SynthFaces and imports) the
headline figures pool every test identity and ``sources`` gives each source's own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from visage_ml.config import GENDERS, GROUPS, EvaluateParams, flatten
from visage_ml.data.crops import check_manifest_rows
from visage_ml.data.manifest import UNLABELED
from visage_ml.data.pairs import build_pairs, encode_labels, threshold_at_far
from visage_ml.evaluation import demographics as demo
from visage_ml.evaluation.calibration_report import compare_calibrations, rescored
from visage_ml.evaluation.decision import decide_gates, fairness_headline, fit_calibrations
from visage_ml.evaluation.demographic_intervals import (
    accuracy_intervals,
    correct_predictions,
    miss_rate_intervals,
)
from visage_ml.evaluation.fairness import (
    Breakdown,
    GateOutcome,
    demographic_differentials,
    make_breakdown,
)
from visage_ml.evaluation.figures import make_figures
from visage_ml.evaluation.headline import headline_metrics, json_ready
from visage_ml.evaluation.identification import open_set_metrics, search_scores, split_enrolment
from visage_ml.evaluation.lfw import protocol_accuracy
from visage_ml.evaluation.report import render_html
from visage_ml.evaluation.serving_reports import ServedContext, serving_reports
from visage_ml.evaluation.sources import per_source, source_column
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
        ``eval_data_md5`` (of the test split's crops, and the evaluation population's when
        pooled: ``eval_population_md5``), ``md5 <file>``,
        ``{embedder,demographics}_{model_version,data_md5}`` and ``git_rev``.
    detection
        Detector outcome per source image (``detected``, ``group``, ``gender`` and, from
        current prepare runs, ``image_id``, ``split``, ``source``, ``fallback``), if known.
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
    # Serving's target FPIR and gallery size, for the 1:N report (defaults when None).
    served: ServedContext | None = None
    # The calibration part of the evaluation population (embeddings and their synthetic ids):
    # the label-free score calibrations are fitted on it; it is never measured.
    calibration_embeddings: np.ndarray | None = None
    calibration_ids: np.ndarray | None = None
    # train_embedder.sampling of the evaluated embedder (the calibration comparison's row).
    embedder_sampling: str | None = None


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
    # reports/score_model.json and reports/demographic_confusion.json (serving loads them).
    score_model: dict[str, Any] = field(default_factory=dict)
    confusion: dict[str, Any] = field(default_factory=dict)
    # reports/score_calibration.json (serving applies it) and the gate's two parts.
    score_calibration: dict[str, Any] = field(default_factory=dict)
    gates: dict[str, GateOutcome] = field(default_factory=dict)


def select_test_rows(manifest: pd.DataFrame, n_faces: int) -> pd.DataFrame:
    """The test rows of ``manifest`` in crop order; refused unless it addresses the crops (an
    erasure leaves fewer rows than crops: :func:`visage_ml.data.crops.check_manifest_rows`)."""
    check_manifest_rows(manifest, n_faces)
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


def labelled(values: pd.Series) -> np.ndarray:
    """A demographic attribute as text, ``"unlabeled"`` where it is unknown."""
    return values.astype("string").fillna(UNLABELED).astype(str).to_numpy()


def _labels(config_labels: Sequence[str], observed: np.ndarray) -> tuple[str, ...]:
    unknown = {"None", "nan", "", "<NA>", UNLABELED}
    extra = sorted({str(v) for v in observed} - set(config_labels) - unknown)
    return tuple(config_labels) + tuple(extra)


def demographic_breakdowns(id_group: np.ndarray, id_gender: np.ndarray) -> list[Breakdown]:
    """The ``group``, ``gender`` and ``group_gender`` partitions of the identities.

    Identities whose value is ``"unlabeled"`` belong to no group of the partition (code -1):
    they are counted as the breakdown's unlabeled share and left out of every differential.
    """
    groups = _labels(GROUPS, id_group)
    genders = _labels(GENDERS, id_gender)
    combo = np.array(
        [
            UNLABELED if UNLABELED in (g, s) else f"{g}_{s}"
            for g, s in zip(id_group, id_gender, strict=True)
        ],
        dtype=object,
    )
    return [
        make_breakdown("group", id_group, groups),
        make_breakdown("gender", id_gender, genders),
        make_breakdown("group_gender", combo, tuple(f"{g}_{s}" for g in groups for s in genders)),
    ]


def threshold_document(
    gen_scores: np.ndarray,
    imp_scores: np.ndarray,
    *,
    cfg: EvaluateParams,
    n_ids: int,
    calibration: str = "none",
) -> dict[str, Any]:
    """The serving threshold at ``cfg.target_fmr`` and its measured rates (no lineage yet), on
    the scores of the served ``calibration`` method."""
    threshold = threshold_at_far(imp_scores, cfg.target_fmr)
    fmr_t, fnmr_t = rates_at_threshold(gen_scores, imp_scores, threshold)
    expected_errors = cfg.target_fmr * imp_scores.size
    doc = {
        "threshold": threshold,
        "target_fmr": cfg.target_fmr,
        "measured_fmr": fmr_t,
        "measured_fnmr": fnmr_t,
        "score": (
            "cosine similarity of L2-normalised embeddings"
            if calibration == "none"
            else f"{calibration}-calibrated cosine similarity of L2-normalised embeddings "
            "(as serving scores; reports/score_calibration.json)"
        ),
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
    sensitive = {"group": labelled(test["group"]), "gender": labelled(test["gender"])}
    true_age = test["age"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
    model_report = demo.demographic_model_report(
        true_age=true_age,
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
            {"group": labelled(det["group"]), "gender": labelled(det["gender"])},
        )
    lfw = None
    if inputs.lfw_pairs is not None:
        fallback = test["fallback"].astype(bool) if "fallback" in test else None
        lfw = protocol_accuracy(
            inputs.lfw_pairs,
            test["image_id"].to_numpy(),
            inputs.embeddings,
            detection=inputs.detection,
            fallback_ids=None if fallback is None else test.loc[fallback, "image_id"].to_numpy(),
        )
        sources = sorted(set(source_column(test[test["image_id"].isin(_protocol_ids(inputs))])))
        lfw["source"] = ", ".join(sources) if sources else None
    return model_report, detection, lfw


def _protocol_ids(inputs: EvaluationInputs) -> set[str]:
    pairs = inputs.lfw_pairs
    if pairs is None:
        return set()
    return set(pairs["image_id_a"].astype(str)) | set(pairs["image_id_b"].astype(str))


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
    calibrations = fit_calibrations(
        inputs.calibration_embeddings,
        inputs.calibration_ids,
        cfg.calibration,
        target_fmr=cfg.target_fmr,
        seed=seed,
        model_version=str(lineage.get("embedder_model_version", "")),
    )
    calibration = calibrations.served
    raw_pairs = build_pairs(emb, codes, impostor_limit=cfg.impostor_pairs, seed=seed)
    # Every figure below is of the served scores: calibrated as serving calibrates them.
    pairs = rescored(raw_pairs, calibration, calibration.sides(emb))
    ver = verification_with_intervals(pairs, fars=cfg.fars, rounds=cfg.bootstrap, seed=seed)
    ver_dict = ver.to_dict(cfg.ci_level)
    threshold_doc = threshold_document(
        pairs.score[pairs.genuine],
        pairs.score[~pairs.genuine],
        cfg=cfg,
        n_ids=n_ids,
        calibration=calibration.method,
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
        emb[enrol.probe_rows],
        emb[enrol.gallery_rows],
        enrol.gallery_ids,
        enrol.n_enrolled,
        calibration=calibration,
    )
    ident = open_set_metrics(search, enrol.probe_mate, fpirs=cfg.fpirs)
    timings["identification"] = time.perf_counter() - t

    t = time.perf_counter()
    id_group = identity_values(codes, labelled(test["group"]), n=n_ids, what="group")
    id_gender = identity_values(codes, labelled(test["gender"]), n=n_ids, what="gender")
    id_source = identity_values(codes, source_column(test), n=n_ids, what="source")
    breakdowns = demographic_breakdowns(id_group, id_gender)
    diffs = demographic_differentials(
        pairs, breakdowns, threshold=threshold, alpha=cfg.fdr_alpha, rounds=cfg.bootstrap, seed=seed
    )
    model_intervals = _model_intervals(inputs, codes, cfg=cfg, seed=seed)
    detection_intervals = _detection_intervals(inputs, cfg=cfg, seed=seed)
    gate, gates = decide_gates(diffs, model_intervals, cfg.gate, ci_level=cfg.ci_level)
    comparison = None
    if len(calibrations.fitted) > 1:
        gated = [b for b in breakdowns if b.name in cfg.gate.breakdowns]
        comparison = compare_calibrations(
            raw_pairs,
            emb,
            calibrations.fitted,
            gated,
            target_fmr=cfg.target_fmr,
            fmr_limits=cfg.gate.max_fmr_ratio,
            max_tar_cost=cfg.calibration.max_tar_cost,
            served=cfg.calibration.method,
            rounds=cfg.calibration.bootstrap,
            seed=seed,
            ci_level=cfg.ci_level,
            fdr_alpha=cfg.fdr_alpha,
            embedder_sampling=inputs.embedder_sampling,
        )
    curves = {
        b.name: group_curves(pairs, b, overall=ver.curve, max_points=cfg.max_curve_points)
        for b in breakdowns
        if b.name != "group_gender"
    }
    timings["differentials"] = time.perf_counter() - t

    t = time.perf_counter()
    model_report, detection, lfw = _per_image_reports(inputs)
    sources = per_source(
        pairs, id_source, threshold=threshold, fars=cfg.fars, detection=inputs.detection
    )
    timings["demographics"] = time.perf_counter() - t

    t = time.perf_counter()
    served = serving_reports(
        test=test,
        embeddings=emb,
        codes=codes,
        id_group=id_group,
        predictions=inputs.predictions,
        demographic_labels=inputs.demographic_labels,
        lineage=lineage,
        cfg=cfg,
        seed=seed,
        served=inputs.served,
        calibration=calibration,
        verify_threshold=threshold,
    )
    timings["serving_models"] = time.perf_counter() - t

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
            "population": population(test, id_group, id_gender, id_source),
            "sources": sources,
            "verification": ver_dict,
            "identification": ident,
            "open_set_scale": served.summary,
            "breakdowns": {name: d.to_dict(cfg.ci_level) for name, d in diffs.items()},
            "demographic_model": model_report,
            "detection": detection,
            "detection_intervals": detection_intervals,
            "lfw": lfw,
            "gate": {
                **gate.to_dict(),
                "enforce": cfg.gate.enforce,
                "parts": {name: g.to_dict() for name, g in gates.items()},
                "enforce_demographics": cfg.gate.demographics.enforce,
                "on_inconclusive": cfg.gate.on_inconclusive,
            },
            "demographic_intervals": model_intervals,
            "score_calibration": {
                "served": calibration.method,
                "note": calibrations.note,
                "fitted_on": dict(calibration.info),
                "comparison": comparison,
            },
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
        sources=sources,
        population=fairness["population"],
    )
    metrics["identification_served"] = json_ready(served.headline)
    for section, figures in fairness_headline(
        gate, gates, diffs, comparison, model_intervals, ci_level=cfg.ci_level
    ).items():
        metrics.setdefault(section, {}).update(json_ready(figures))
    threshold_doc = json_ready(
        {
            **threshold_doc,
            "git_rev": lineage["git_rev"],
            "eval_data_md5": lineage["eval_data_md5"],
            **{k: lineage[k] for k in ("eval_population_md5",) if k in lineage},
        }
    )
    params = {f"evaluate.{k}": v for k, v in flatten(cfg).items()}
    params["project.seed"] = seed
    figures = {**make_figures(fairness=fairness, curves=curves), **served.figures}
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
        score_model=json_ready(served.score_model),
        confusion=json_ready(served.confusion),
        score_calibration=json_ready(calibration.to_dict()),
        gates=dict(gates),
    )


def _model_intervals(
    inputs: EvaluationInputs, codes: np.ndarray, *, cfg: EvaluateParams, seed: int
) -> dict[str, Any]:
    """The demographic model's per-group accuracy with identity-bootstrap intervals."""
    test = inputs.test
    correct = correct_predictions(
        true_age=test["age"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan),
        true_gender=labelled(test["gender"]),
        true_group=labelled(test["group"]),
        predictions=inputs.predictions,
        labels=inputs.demographic_labels,
    )
    return json_ready(
        accuracy_intervals(
            correct,
            codes,
            labelled(test["group"]),
            groups=_labels(GROUPS, labelled(test["group"])),
            rounds=cfg.bootstrap,
            seed=seed,
            ci_level=cfg.ci_level,
        )
    )


def _detection_intervals(
    inputs: EvaluationInputs, *, cfg: EvaluateParams, seed: int
) -> dict[str, Any] | None:
    """:func:`detection_intervals` of the inputs' detection table, at the evaluation's level."""
    if inputs.detection is None:
        return None
    return detection_intervals(
        inputs.detection, rounds=cfg.bootstrap, seed=seed, ci_level=cfg.ci_level
    )


def detection_intervals(
    det: pd.DataFrame, *, rounds: int, seed: int, ci_level: float = 0.95
) -> dict[str, Any] | None:
    """The detector's miss rate per group and per gender with identity-bootstrap intervals, and
    (where the table says so) the faces only the second look found.

    None when the detection table does not say whose each image is (a ``pid`` column on every
    row): resampling images as if independent would give intervals too narrow to decide on.
    """
    if "pid" not in det or det["pid"].isna().any() or not len(det):
        return None
    out = {}
    for name, config_labels in (("group", GROUPS), ("gender", GENDERS)):
        values = labelled(det[name])
        out[name] = miss_rate_intervals(
            det["detected"].to_numpy(dtype=bool),
            det["pid"].astype(str).to_numpy(),
            values,
            groups=_labels(config_labels, values),
            rounds=rounds,
            seed=seed,
            ci_level=ci_level,
        )
        if "second_look" in det:
            # Faces the first pass missed and the second look found (counted as detected).
            found = det["second_look"].fillna(False).astype(bool).to_numpy()
            out[name]["second_look"] = {
                str(g): int(found[values == g].sum()) for g in out[name]["groups"]
            }
    return json_ready(out)


def population(
    test: pd.DataFrame, id_group: np.ndarray, id_gender: np.ndarray, id_source: np.ndarray
) -> dict[str, Any]:
    """Who the pooled figures describe: test identities per source, and the unlabeled share."""
    n = len(id_group)
    unlabeled_group = int((np.asarray(id_group) == UNLABELED).sum())
    unlabeled_gender = int((np.asarray(id_gender) == UNLABELED).sum())
    names, counts = np.unique(np.asarray(id_source).astype(str), return_counts=True)
    return {
        "scope": "all test identities of every source (pooled)",
        "sources": [str(s) for s in names],
        "identities_by_source": {str(s): int(c) for s, c in zip(names, counts, strict=True)},
        "images": len(test),
        "unlabeled": {
            "group_identities": unlabeled_group,
            "gender_identities": unlabeled_gender,
            "group_share": unlabeled_group / n if n else 0.0,
            "gender_share": unlabeled_gender / n if n else 0.0,
        },
    }
