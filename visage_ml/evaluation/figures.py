"""The report's figures: PNG bytes drawn with matplotlib (Agg, no display), only aggregates.

Nothing here touches files: :func:`make_figures` returns ``{file name: PNG bytes}``; the HTML
report embeds them and the ``evaluate`` stage logs them to MLflow.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from visage_ml.evaluation.verification import RocCurve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Cut-off of the DET axes: error rates below this are drawn at the edge.
DET_FLOOR = 1e-5
DET_TICKS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95)
DET_CEILING = 0.95  # DET axes end here: a weak group's operating point (FNMR 0.6) stays in view
DPI = 150  # legible cell labels and ticks when a reviewer zooms in
COLORS: tuple[str, ...] = ("#1b6ca8", "#e07b00", "#2a9d3a", "#c0392b", "#7d3c98", "#8c564b")
# Where the evaluate stage logs the figures in an MLflow run, and the names :func:`make_figures`
# and the serving report (``fnir_vs_gallery_size.png``) give them: plots, never a face
# (``visage privacy doctor`` does not list them among the images to review).
MLFLOW_FOLDER = "figures"
FIGURE_NAME = re.compile(
    r"(?:(?:roc|det|cross_fmr|rates|demographics)_\w+|detection_miss_rate|fnir_vs_gallery_size)"
    r"\.png"
)


# ---------------------------------------------------------------------------------------------


def _figure(width: float = 6.4, height: float = 4.4) -> Figure:
    from matplotlib.figure import Figure  # deferred: slow to import, only drawing needs it

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _probit(p: np.ndarray) -> np.ndarray:
    from scipy.special import ndtri  # the normal quantile; much lighter to import than stats

    return ndtri(np.clip(np.asarray(p, dtype=np.float64), DET_FLOOR, 1 - DET_FLOOR))


def _curve_label(name: str) -> str:
    """A curve's legend: a group's curve counts same-group impostors, ``all`` every one."""
    return "all (cross-group impostors too)" if name == "all" else name


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
        ax.plot(fmr, curve.tar, color=color, label=_curve_label(name), lw=1.5)
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
        # A rate of 0 (or 1) has no place on normal-deviate axes: left out, not drawn at the
        # floor (a curve then fell straight down to the axis where FNMR reached 0).
        fmr, fnmr = np.asarray(curve.fmr), np.asarray(curve.fnmr)
        inside = (fmr > 0) & (fmr < 1) & (fnmr > 0) & (fnmr < 1)
        label = _curve_label(name)
        ax.plot(_probit(fmr[inside]), _probit(fnmr[inside]), color=color, label=label, lw=1.5)
        if points and name in points:
            x, y = points[name]
            ax.plot(_probit(np.array([x])), _probit(np.array([y])), "o", color=color, ms=5)
    ticks = _probit(np.array(DET_TICKS))
    labels = [f"{t:g}" for t in DET_TICKS]
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    lim = (_probit(np.array([DET_FLOOR]))[0], _probit(np.array([DET_CEILING]))[0])
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xlabel("false match rate (FMR)")
    ax.set_ylabel("false non-match rate (FNMR)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig)


def heatmap_figure(
    matrix: np.ndarray,
    labels: Sequence[str],
    *,
    title: str = "Cross-group FMR",
    floor: float | None = None,
    ceiling: float | None = None,
) -> bytes:
    """log10 heat map of the cross-group FMR matrix, each cell annotated with its value.

    ``floor`` and ``ceiling`` fix the colour scale (the report gives every breakdown's map the
    same, so that one colour is one FMR); a cell below the floor (0: no false match seen)
    takes the floor's colour and reads "0 seen"."""
    m = np.asarray(matrix, dtype=np.float64)
    n = len(labels)
    side = max(4.4, 0.75 * n + 1.6)  # 8 x 8 (group x gender) cells get room for their labels
    fig = _figure(side + 0.8, side)
    ax = fig.add_subplot()
    positive = m[np.isfinite(m) & (m > 0)]
    if floor is None:
        floor = positive.min() / 10 if positive.size else 1e-6
    shown = np.log10(np.where(np.isfinite(m), np.maximum(m, floor), np.nan))
    top = np.log10(ceiling) if ceiling is not None else None
    im = ax.imshow(shown, cmap="viridis", vmin=np.log10(floor), vmax=top)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    finite = shown[np.isfinite(shown)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for r in range(n):
        for c in range(n):
            v = m[r, c]
            text = "n/a" if not np.isfinite(v) else ("0 seen" if v == 0 else f"{v:.1e}")
            # Dark text on the bright end of viridis, light text on the dark end.
            dark = np.isfinite(shown[r, c]) and shown[r, c] > middle
            ax.text(
                c,
                r,
                text,
                ha="center",
                va="center",
                color="black" if dark else "white",
                fontsize=8,
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


def group_metric_figure(
    summary: Mapping[str, Any],
    *,
    title: str,
    ylabel: str,
    intervals: Mapping[str, Mapping[str, Any]] | None = None,
    limit: float | None = None,
    ci: str = "95%",
) -> bytes:
    """Bars of one metric per group (a :func:`frame_summary` result), overall as a line;
    ``intervals`` (group -> ``value``, ``ci_low``, ``ci_high``) as error bars labelled with
    their level ``ci``, the gate's ``limit`` as a red line."""
    by_group = summary["by_group"]
    labels = list(by_group)
    vals = np.array([_num(by_group[g]) for g in labels])
    fig = _figure(5.2, 3.4)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    ax.bar(x, np.nan_to_num(vals), color=COLORS[2])
    if intervals and all(g in intervals for g in labels):
        _, err = _errs([{**intervals[g], "value": vals[i]} for i, g in enumerate(labels)])
        ax.errorbar(x, vals, yerr=err, fmt="none", ecolor="black", capsize=4, label=f"{ci} CI")
    overall = _num(summary.get("overall"))
    if math.isfinite(overall):
        ax.axhline(overall, color="black", ls="--", lw=1, label="overall")
    if limit is not None:
        ax.axhline(limit, color=COLORS[3], lw=1.2, label=f"gate limit {limit:g}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)


def fnir_gallery_size_figure(
    sizes: Sequence[int],
    curves: Mapping[str, Sequence[float]],
    *,
    served: tuple[int, float] | None = None,
    target_fpir: float = 0.01,
    unbounded_from: float | None = None,
) -> bytes:
    """Expected FNIR at the target FPIR against gallery size (log axis), overall and per group.

    ``curves`` maps ``"all"`` and each group to one FNIR per size; ``served`` marks the
    ``(gallery size, FNIR)`` of the gallery the project serves; sizes from ``unbounded_from``
    on need an FMR beyond what the score model can bound (shaded).
    """
    fig = _figure()
    ax = fig.add_subplot()
    x = np.asarray(sizes, dtype=np.float64)
    if unbounded_from is not None:
        ax.axvspan(unbounded_from, x.max() * 1.5, color="#dddddd", alpha=0.6, lw=0)
        ax.text(unbounded_from * 1.1, 0.04, "beyond what the\nevaluation can bound", fontsize=7)
    for i, (name, values) in enumerate(curves.items()):
        overall = name == "all"
        ax.plot(
            x,
            np.asarray(values, dtype=np.float64),
            color="black" if overall else COLORS[i % len(COLORS)],
            lw=2.2 if overall else 1.3,
            ls="-" if overall else "--",
            marker="o",
            ms=3,
            label="all groups" if overall else name,
        )
    if served is not None:
        n, fnir = served
        ax.plot([n], [fnir], "*", color="#c0392b", ms=14, label=f"served: N = {n:,}", zorder=5)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("gallery size N (enrolled subjects)")
    ax.set_ylabel(f"expected FNIR at FPIR {target_fpir:g}")
    ax.set_title("1:N: misses at the threshold derived for the target FPIR")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
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
    # One colour scale for every cross-FMR map: a tenth of the smallest FMR seen to the largest.
    cells = np.array(
        [
            _num(v)
            for diff in fairness["breakdowns"].values()
            for row in diff["cross_fmr"]["value"]
            for v in row
        ]
    )
    seen = cells[np.isfinite(cells) & (cells > 0)]
    scale = (seen.min() / 10, seen.max()) if seen.size else (None, None)
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
            floor=scale[0],
            ceiling=scale[1],
        )
        out[f"rates_{name}.png"] = rates_figure(diff, target_fmr=target, title=f"By {name}")
    model = fairness.get("demographic_model") or {}
    intervals = fairness.get("demographic_intervals") or {}
    ci = f"{float(fairness.get('ci_level', 0.95)) * 100:.3g}%"
    limits = {  # the lowest group's accuracy limit of each task the gate checks
        c["task"]: c.get("limit")
        for c in (fairness.get("gate") or {}).get("checked", [])
        if c.get("bound") == "min_accuracy" and "task" in c
    }
    for task, by in model.items():
        if "group" in by:
            ylabel = "years" if task == "age_mae" else "accuracy"
            out[f"demographics_{task}.png"] = group_metric_figure(
                by["group"],
                title=f"{task} by group",
                ylabel=ylabel,
                intervals=(intervals.get(task) or {}).get("groups"),
                limit=limits.get(task),
                ci=ci,
            )
    detection = fairness.get("detection") or {}
    if "group" in detection:
        spread = (fairness.get("detection_intervals") or {}).get("group") or {}
        out["detection_miss_rate.png"] = group_metric_figure(
            detection["group"],
            title="MTCNN miss rate by group",
            ylabel="miss rate",
            intervals=spread.get("groups"),
            ci=ci,
        )
    return out
