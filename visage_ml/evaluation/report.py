"""The fairness report: one self-contained HTML page rendered from jinja2 templates.

The markup lives in ``visage_ml/evaluation/templates`` (``report.html.j2`` and its building
blocks); this module formats numbers and hands the templates the report's documents. Nothing
here touches files: :func:`render_html` returns the page, with every figure embedded as a base64
data URI, so the report can be opened from an MLflow artefact or an e-mail without anything
else. Autoescaping is on: every value from the documents is escaped. Only aggregates are shown.
"""

from __future__ import annotations

import base64
import functools
import math
import re
from collections.abc import Mapping
from typing import Any

import jinja2

TEMPLATE = "report.html.j2"

SUMMARY_LABELS: Mapping[str, str] = {
    "fmr_max_min_ratio": "FMR max/min ratio",
    "fmr_max_geomean_ratio": "FMR max/geometric mean",
    "fmr_gini": "FMR Gini",
    "fmr_max_abs_diff": "FMR largest gap (A)",
    "fnmr_max_min_ratio": "FNMR max/min ratio",
    "fnmr_max_geomean_ratio": "FNMR max/geometric mean",
    "fnmr_gini": "FNMR Gini",
    "fnmr_max_abs_diff": "FNMR largest gap (B)",
    "fdr": "Fairness Discrepancy Rate",
    "skewed_error_ratio": "Skewed error ratio (HTER)",
}


_AT = re.compile(r"^(tar|fnir|fpir|threshold)_at_(fmr|fpir)_(\d+(?:\.\d+)?e-?\d+)$")
METRIC_LABELS: Mapping[str, str] = {
    "auc": "AUC",
    "eer": "EER",
    "rank1": "rank-1 hit rate (mated probes)",
    "rank5": "rank-5 hit rate (mated probes)",
    "n_enrolled": "enrolled identities",
    "n_mated_probes": "mated probes",
    "n_nonmated_probes": "non-mated probes (strangers)",
    "n_genuine_pairs": "genuine pairs",
    "n_impostor_pairs": "impostor pairs",
}


def metric_label(key: str) -> str:
    """A metrics key as a reader says it: ``fnir_at_fpir_1e-2`` -> ``FNIR at FPIR 0.01``."""
    if key in METRIC_LABELS:
        return METRIC_LABELS[key]
    m = _AT.match(key)
    if m is None:
        return key.replace("_", " ")
    what, at, value = m.groups()
    target = f"{float(value):g}"
    if what == "fpir" and at == "fpir":
        return f"FPIR reached (target {target})"
    if what == "threshold":
        return f"threshold for {at.upper()} {target}"
    return f"{what.upper()} at {at.upper()} {target}"


def fmt_rate(x: Any) -> str:
    """A rate for tables: ``n/a`` when unknown, else 3 significant digits (text as it is)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, str):
        return x
    x = float(x)
    if x == 0:
        return "0"
    return f"{x:.3g}" if abs(x) >= 1e-3 else f"{x:.2e}"


def fmt_ci(entry: Mapping[str, Any] | None) -> str:
    """``value [low, high]`` of an estimate dict."""
    if not entry:
        return "n/a"
    value = fmt_rate(entry.get("value"))
    lo, hi = entry.get("ci_low"), entry.get("ci_high")
    if lo is None or hi is None:
        return value
    return f"{value} [{fmt_rate(lo)}, {fmt_rate(hi)}]"


@functools.cache
def _environment() -> jinja2.Environment:
    # Built on first use, not on import: the loader looks the template folder up.
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("visage_ml", "evaluation/templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=True),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["rate"] = fmt_rate
    env.filters["ci"] = fmt_ci
    env.filters["label"] = metric_label
    return env


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flat(v, key))
        else:
            out[key] = v
    return out


def render_html(
    *,
    fairness: Mapping[str, Any],
    metrics: Mapping[str, Any],
    figures: Mapping[str, bytes],
    lineage: Mapping[str, Any],
    params: Mapping[str, Any],
) -> str:
    """The self-contained fairness report.

    Parameters
    ----------
    fairness
        ``reports/fairness.json`` content.
    metrics
        ``reports/metrics.json`` content.
    figures
        PNG bytes by name (:func:`visage_ml.evaluation.figures.make_figures`).
    lineage
        Data hashes, model versions, git revision.
    params
        Flattened parameters of the evaluation.

    Returns
    -------
    str
        An HTML5 document.
    """
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            fairness=fairness,
            gate=fairness.get("gate", {}),
            threshold=f"{fairness.get('threshold', float('nan')):.6f}",
            verification=fairness.get("verification", {}),
            identification=fairness.get("identification", {}),
            breakdowns=fairness.get("breakdowns", {}),
            model=fairness.get("demographic_model") or {},
            detection=fairness.get("detection") or {},
            detection_intervals=fairness.get("detection_intervals") or {},
            lfw=fairness.get("lfw"),
            population=fairness.get("population") or {},
            sources=fairness.get("sources") or {},
            lineage=lineage,
            lineage_rows=sorted(lineage.items()),
            param_rows=sorted(params.items()),
            headline_rows=sorted(_flat(metrics).items()),
            images={k: base64.b64encode(v).decode("ascii") for k, v in figures.items() if v},
            summary_labels=SUMMARY_LABELS,
            ci=ci_percent(fairness.get("ci_level", 0.95)),
        )
    )


def ci_percent(level: float) -> str:
    """The interval level as the report writes it: ``0.95`` -> ``"95%"``, ``0.9`` -> ``"90%"``."""
    return f"{float(level) * 100:.3g}%"
