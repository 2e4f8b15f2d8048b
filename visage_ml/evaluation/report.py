"""The fairness report: PNG figures (matplotlib, Agg) and one self-contained HTML page.

Nothing here touches files: :func:`make_figures` returns PNG bytes and :func:`render_html`
returns the page, with every figure embedded as a base64 data URI, so the report can be opened
from an MLflow artefact or an e-mail without anything else. Only aggregates are shown.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from visage_ml.evaluation.verification import RocCurve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Cut-off of the DET axes: error rates below this are drawn at the edge.
DET_FLOOR = 1e-5
DET_TICKS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5)
COLORS: tuple[str, ...] = ("#1b6ca8", "#e07b00", "#2a9d3a", "#c0392b", "#7d3c98", "#8c564b")

READING_GUIDE = """
<p>This report compares how the face recogniser errs for different demographic groups, in the
manner of NIST FRVT Part 3 (NISTIR 8280). Every number comes from the exported ONNX models run
on <em>test</em> identities that training never saw.</p>
<ul>
<li><b>One threshold for everyone.</b> The decision threshold was set so that, over all impostor
comparisons, the false match rate (FMR) equals the target. Deployments use this single
threshold, so differences between groups at this threshold are what people will experience.</li>
<li><b>FMR</b> (false match rate) is the share of comparisons of two <em>different</em> people
of the same group that are wrongly accepted: the risk of being mistaken for someone else.
<b>FNMR</b> (false non-match rate) is the share of comparisons of the <em>same</em> person that
are wrongly rejected: the risk of not being recognised.</li>
<li><b>Intervals</b> are 95% bootstrap intervals that resample <em>people</em>, not
comparisons. Wide intervals mean few people in that group: treat the point value as uncertain,
and do not read a difference between two groups as real when their intervals overlap widely.</li>
<li><b>Summaries.</b> <em>max/min ratio</em>: how many times more often the worst group suffers
the error than the best (1 = equal; a group with no observed error counts as one error, so the
ratio is then a lower bound). <em>max/geometric mean</em>: the worst group against a typical
one. <em>Gini</em>: 0 = errors spread evenly, 1 = all in one group. <em>FDR</em> (Fairness
Discrepancy Rate): 1 = no gap; it falls with the largest FMR and FNMR gaps, weighted by
alpha. <em>Skewed error ratio</em>: max/min of each group's half total error rate,
(FMR + FNMR)/2.</li>
<li><b>Cross-group FMR</b>: the heat map shows how often people of the row's group are
mistaken for people of the column's group. A bright diagonal is usual (similar-looking people
share a group); a single bright row or cell points at a group the model separates poorly.</li>
<li><b>Deciding.</b> Check the gate outcome, then the groups with the highest FMR and FNMR and
whether their intervals clear the others. If a group is clearly worse, ask for a change
(more or balanced training data, group-balanced sampling, a different threshold policy)
before approving the model; record the decision with the model version in MLflow.</li>
</ul>
"""


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _figure(width: float = 6.4, height: float = 4.4) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _probit(p: np.ndarray) -> np.ndarray:
    from scipy.special import ndtri  # the normal quantile; much lighter to import than stats

    return ndtri(np.clip(np.asarray(p, dtype=np.float64), DET_FLOOR, 1 - DET_FLOOR))


def roc_figure(
    curves: Mapping[str, RocCurve | None],
    *,
    points: Mapping[str, tuple[float, float]] | None = None,
    title: str = "ROC",
) -> bytes:
    """ROC (TAR against FMR, log FMR axis) per group; ``points`` marks ``(fmr, tar)`` each."""
    fig = _figure()
    ax = fig.add_subplot()
    for i, (name, curve) in enumerate(curves.items()):
        if curve is None:
            continue
        color = COLORS[i % len(COLORS)]
        fmr = np.maximum(curve.fmr, DET_FLOOR)
        ax.plot(fmr, curve.tar, color=color, label=name, lw=1.5)
        if points and name in points:
            x, y = points[name]
            ax.plot([max(x, DET_FLOOR)], [y], "o", color=color, ms=5)
    ax.set_xscale("log")
    ax.set_xlim(DET_FLOOR, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false match rate (FMR)")
    ax.set_ylabel("true accept rate (1 - FNMR)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def det_figure(
    curves: Mapping[str, RocCurve | None],
    *,
    points: Mapping[str, tuple[float, float]] | None = None,
    title: str = "DET",
) -> bytes:
    """DET (FNMR against FMR on normal-deviate axes) per group; ``points`` marks ``(fmr, fnmr)``."""
    fig = _figure()
    ax = fig.add_subplot()
    for i, (name, curve) in enumerate(curves.items()):
        if curve is None:
            continue
        color = COLORS[i % len(COLORS)]
        ax.plot(_probit(curve.fmr), _probit(curve.fnmr), color=color, label=name, lw=1.5)
        if points and name in points:
            x, y = points[name]
            ax.plot(_probit(np.array([x])), _probit(np.array([y])), "o", color=color, ms=5)
    ticks = _probit(np.array(DET_TICKS))
    labels = [f"{t:g}" for t in DET_TICKS]
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    lim = (_probit(np.array([DET_FLOOR]))[0], _probit(np.array([0.5]))[0])
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xlabel("false match rate (FMR)")
    ax.set_ylabel("false non-match rate (FNMR)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig)


def heatmap_figure(
    matrix: np.ndarray, labels: Sequence[str], *, title: str = "Cross-group FMR"
) -> bytes:
    """log10 heat map of the cross-group FMR matrix, each cell annotated with its value."""
    m = np.asarray(matrix, dtype=np.float64)
    fig = _figure(5.2, 4.4)
    ax = fig.add_subplot()
    positive = m[np.isfinite(m) & (m > 0)]
    floor = positive.min() / 10 if positive.size else 1e-6
    shown = np.log10(np.where(np.isfinite(m), np.maximum(m, floor), np.nan))
    im = ax.imshow(shown, cmap="viridis")
    n = len(labels)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    finite = shown[np.isfinite(shown)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for r in range(n):
        for c in range(n):
            v = m[r, c]
            text = "n/a" if not np.isfinite(v) else ("0" if v == 0 else f"{v:.1e}")
            # Dark text on the bright end of viridis, light text on the dark end.
            dark = np.isfinite(shown[r, c]) and shown[r, c] > middle
            ax.text(
                c,
                r,
                text,
                ha="center",
                va="center",
                color="black" if dark else "white",
                fontsize=7,
            )
    fig.colorbar(im, ax=ax, label="log10 FMR")
    ax.set_title(title)
    return _png(fig)


def _errs(entries: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    vals = np.array([_num(e.get("value")) for e in entries])
    lo = np.array([_num(e.get("ci_low"), v) for e, v in zip(entries, vals, strict=True)])
    hi = np.array([_num(e.get("ci_high"), v) for e, v in zip(entries, vals, strict=True)])
    return vals, np.vstack([np.maximum(vals - lo, 0), np.maximum(hi - vals, 0)])


def _num(x: Any, default: float = float("nan")) -> float:
    return float(x) if x is not None and math.isfinite(float(x)) else default


def rates_figure(
    differential: Mapping[str, Any], *, target_fmr: float | None = None, title: str = ""
) -> bytes:
    """Per-group FMR and FNMR bars with their bootstrap intervals (from ``to_dict`` form)."""
    labels = list(differential["labels"])
    groups = differential["groups"]
    fig = _figure(8.0, 3.6)
    for k, (metric, name) in enumerate((("fmr", "FMR"), ("fnmr", "FNMR"))):
        ax = fig.add_subplot(1, 2, k + 1)
        vals, err = _errs([groups[g][metric] for g in labels])
        x = np.arange(len(labels))
        ax.bar(x, np.nan_to_num(vals), yerr=err, capsize=4, color=COLORS[k])
        if metric == "fmr" and target_fmr is not None:
            ax.axhline(target_fmr, color="black", ls="--", lw=1, label="target FMR")
            ax.legend(fontsize=8)
        ax.set_xticks(x, labels, rotation=30, ha="right")
        ax.set_ylabel(name)
        ax.set_title(f"{name} at the global threshold")
        ax.grid(True, axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return _png(fig)


def group_metric_figure(summary: Mapping[str, Any], *, title: str, ylabel: str) -> bytes:
    """Bars of one metric per group (a :func:`frame_summary` result), overall as a line."""
    by_group = summary["by_group"]
    labels = list(by_group)
    vals = np.array([_num(by_group[g]) for g in labels])
    fig = _figure(5.2, 3.4)
    ax = fig.add_subplot()
    ax.bar(np.arange(len(labels)), np.nan_to_num(vals), color=COLORS[2])
    overall = _num(summary.get("overall"))
    if math.isfinite(overall):
        ax.axhline(overall, color="black", ls="--", lw=1, label="overall")
        ax.legend(fontsize=8)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)


def make_figures(
    *,
    fairness: Mapping[str, Any],
    curves: Mapping[str, Mapping[str, RocCurve | None]],
) -> dict[str, bytes]:
    """Every figure of the report, by file name.

    Parameters
    ----------
    fairness
        The ``reports/fairness.json`` content (see the ``evaluate`` stage).
    curves
        ROC curves per breakdown name and group (plus ``"all"`` under each breakdown).

    Returns
    -------
    dict
        ``{"roc_group.png": bytes, ...}``.
    """
    out: dict[str, bytes] = {}
    target = fairness.get("target_fmr")
    for name, diff in fairness["breakdowns"].items():
        groups = diff["groups"]
        roc_points = {
            g: (_num(groups[g]["fmr"]["value"]), 1 - _num(groups[g]["fnmr"]["value"]))
            for g in diff["labels"]
        }
        det_points = {
            g: (_num(groups[g]["fmr"]["value"]), _num(groups[g]["fnmr"]["value"]))
            for g in diff["labels"]
        }
        by = curves.get(name, {})
        if by:
            out[f"roc_{name}.png"] = roc_figure(by, points=roc_points, title=f"ROC by {name}")
            out[f"det_{name}.png"] = det_figure(by, points=det_points, title=f"DET by {name}")
        out[f"cross_fmr_{name}.png"] = heatmap_figure(
            np.array([[_num(v) for v in row] for row in diff["cross_fmr"]["value"]]),
            diff["labels"],
            title=f"Cross-{name} FMR at the global threshold",
        )
        out[f"rates_{name}.png"] = rates_figure(diff, target_fmr=target, title=f"By {name}")
    model = fairness.get("demographic_model") or {}
    for task, by in model.items():
        if "group" in by:
            ylabel = "years" if task == "age_mae" else "accuracy"
            out[f"demographics_{task}.png"] = group_metric_figure(
                by["group"], title=f"{task} by group", ylabel=ylabel
            )
    detection = fairness.get("detection") or {}
    if "group" in detection:
        out["detection_miss_rate.png"] = group_metric_figure(
            detection["group"], title="MTCNN miss rate by group", ylabel="miss rate"
        )
    return out


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.badge{display:inline-block;padding:.2em .7em;border-radius:1em;color:#fff;font-weight:600}
.pass{background:#2a9d3a}.fail{background:#c0392b}
.guide{background:#f7f9fc;border-left:4px solid #1b6ca8;padding:.4em 1.2em}
img{max-width:100%;margin:.4em 0}.small{color:#666;font-size:.85em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt_rate(x: Any) -> str:
    """A rate for tables: ``n/a`` when unknown, else 3 significant digits."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
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


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(figures: Mapping[str, bytes], name: str, alt: str) -> str:
    data = figures.get(name)
    if not data:
        return ""
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{b64}" alt="{_e(alt)}">'


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


def _breakdown_section(name: str, diff: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    groups = diff["groups"]
    rows = [
        [
            g,
            groups[g]["n_identities"],
            groups[g]["n_genuine_pairs"],
            groups[g]["n_impostor_pairs"],
            fmt_ci(groups[g]["fmr"]),
            fmt_ci(groups[g]["fnmr"]),
        ]
        for g in diff["labels"]
    ]
    per_group = _table(
        [
            name,
            "people",
            "genuine pairs",
            "same-group impostor pairs",
            "FMR [95% CI]",
            "FNMR [95% CI]",
        ],
        rows,
    )
    summaries = _table(
        ["summary", "value [95% CI]"],
        [[SUMMARY_LABELS.get(k, k), fmt_ci(v)] for k, v in diff["summaries"].items()],
    )
    zero = diff.get("zero_error_groups", {})
    notes = []
    for metric in ("fmr", "fnmr"):
        if zero.get(metric):
            notes.append(
                f"No {metric.upper()} error observed for: {', '.join(zero[metric])} "
                "(ratios use one error as the floor, so they are lower bounds)."
            )
    note = "".join(f'<p class="small">{_e(n)}</p>' for n in notes)
    return (
        f"<h3>By {_e(name)}</h3>{per_group}{note}{summaries}"
        f"{_img(figures, f'rates_{name}.png', f'FMR and FNMR by {name}')}"
        f"{_img(figures, f'roc_{name}.png', f'ROC by {name}')}"
        f"{_img(figures, f'det_{name}.png', f'DET by {name}')}"
        f"{_img(figures, f'cross_fmr_{name}.png', f'cross-{name} FMR')}"
    )


def _frame_table(title: str, by_breakdown: Mapping[str, Any]) -> str:
    parts = []
    for b, s in by_breakdown.items():
        rows = [[g, fmt_rate(v), s["n"].get(g, 0)] for g, v in s["by_group"].items()]
        rows.append(["overall", fmt_rate(s["overall"]), sum(s["n"].values())])
        rows.append(["difference (max - min)", fmt_rate(s["difference"]), ""])
        rows.append(["ratio (min / max)", fmt_rate(s["ratio"]), ""])
        parts.append(f"<h4>{_e(title)} by {_e(b)}</h4>" + _table([b, title, "images"], rows))
    return "".join(parts)


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
        PNG bytes by name (:func:`make_figures`).
    lineage
        Data hashes, model versions, git revision.
    params
        Flattened parameters of the evaluation.

    Returns
    -------
    str
        An HTML5 document.
    """
    gate = fairness.get("gate", {})
    passed = bool(gate.get("passed"))
    badge = (
        f'<span class="badge {"pass" if passed else "fail"}">fairness gate: '
        f"{_e(gate.get('outcome', 'n/a'))}</span>"
    )
    enforce = "enforced" if gate.get("enforce") else "advisory (not enforced)"
    ver = fairness.get("verification", {})
    ver_rows = [[k, fmt_ci(v)] for k, v in ver.items() if isinstance(v, dict) and "value" in v]
    ver_rows += [
        ["genuine pairs", ver.get("n_genuine_pairs", "n/a")],
        ["impostor pairs", ver.get("n_impostor_pairs", "n/a")],
    ]
    ident = fairness.get("identification", {})
    ident_rows = [[k, fmt_rate(v) if not k.startswith("n_") else int(v)] for k, v in ident.items()]
    sections = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>visage-ml fairness report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>visage-ml fairness report</h1>",
        f"<p>{badge} <span class='small'>gate {enforce}</span></p>",
        _table(
            ["", ""],
            [
                ["embedder", lineage.get("embedder_model_version", "unknown")],
                ["demographic model", lineage.get("demographics_model_version", "unknown")],
                ["global threshold (cosine)", f"{fairness.get('threshold', float('nan')):.6f}"],
                ["target FMR", fmt_rate(fairness.get("target_fmr"))],
                ["test identities", fairness.get("n_identities", "n/a")],
                ["test images", fairness.get("n_images", "n/a")],
            ],
        ),
        f"<h2>How to read this report</h2><div class='guide'>{READING_GUIDE}</div>",
        "<h2>Gate</h2>",
        _table(
            ["bound", "breakdown", "limit", "measured", "groups"],
            [
                [
                    c["bound"],
                    c["breakdown"],
                    fmt_rate(c["limit"]),
                    fmt_rate(c["measured"]),
                    c.get("groups_measured", ""),
                ]
                for c in gate.get("checked", [])
            ],
        ),
        "<h2>Verification (1:1)</h2>",
        _table(["metric", "value [95% CI]"], ver_rows),
        _img(figures, "roc_group.png", "ROC by group"),
        "<h2>Open-set identification (1:N)</h2>",
        _table(["metric", "value"], ident_rows),
        "<h2>Demographic differentials at the global threshold</h2>",
    ]
    for name, diff in fairness.get("breakdowns", {}).items():
        sections.append(_breakdown_section(name, diff, figures))
    model = fairness.get("demographic_model") or {}
    if model:
        sections.append("<h2>Demographic model (age, gender, group estimates)</h2>")
        for task, by in model.items():
            sections.append(_frame_table(task, by))
            sections.append(_img(figures, f"demographics_{task}.png", f"{task} by group"))
    detection = fairness.get("detection") or {}
    if detection:
        sections.append("<h2>Face detection (MTCNN) miss rate</h2>")
        sections.append(_frame_table("miss rate", detection))
        sections.append(_img(figures, "detection_miss_rate.png", "MTCNN miss rate by group"))
    lfw = fairness.get("lfw")
    if lfw:
        sections.append("<h2>LFW 10-fold accuracy</h2>")
        sections.append(_table(["metric", "value"], [[k, fmt_rate(v)] for k, v in lfw.items()]))
    sections.append("<h2>Lineage</h2>")
    sections.append(_table(["item", "value"], [[k, v] for k, v in sorted(lineage.items())]))
    sections.append("<h3>Parameters</h3>")
    sections.append(_table(["parameter", "value"], [[k, v] for k, v in sorted(params.items())]))
    headline = {k: v for k, v in _flat(metrics).items()}
    sections.append("<h3>Headline metrics (reports/metrics.json)</h3>")
    sections.append(
        _table(["metric", "value"], [[k, fmt_rate(v)] for k, v in sorted(headline.items())])
    )
    sections.append(
        "<p class='small'>Aggregates only: no subject identifier, image or template appears in "
        "this report.</p></body></html>"
    )
    return "\n".join(s for s in sections if s)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flat(v, key))
        else:
            out[key] = v
    return out
