"""The fairness part of ``visage demo``'s summary: the gate's three-way outcome and why, the
served score calibration, the demographic model's accuracy and the face detector's miss rate
per skin-tone group.

Reads ``reports/metrics.json`` and ``reports/fairness.json`` (aggregates only).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

TASK_LABELS = {
    "gender_accuracy": "gender accuracy",
    "group_accuracy": "group accuracy",
    "age_band_accuracy": "age band accuracy",
}


def _num(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{float(x):.3g}"


def _ci(entry: dict[str, Any]) -> str:
    return f"{_num(entry.get('value'))} [{_num(entry.get('ci_low'))}, {_num(entry.get('ci_high'))}]"


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def fairness_lines(reports: Path) -> list[str]:
    """Summary lines (indented two spaces, as the demo's headline metrics)."""
    fairness = _read(Path(reports) / "fairness.json")
    gate = fairness.get("gate") or {}
    if not gate:
        return []
    parts = gate.get("parts") or {}
    shown = ", ".join(f"{name}: {p.get('outcome')}" for name, p in parts.items())
    lines = [
        f"  {'fairness gate':<20} {str(gate.get('outcome', 'n/a')).upper()}"
        + (f" ({shown})" if shown else "")
    ]
    for c in gate.get("checked", []):
        measured = {
            "value": c.get("measured"),
            "ci_low": c.get("ci_low"),
            "ci_high": c.get("ci_high"),
        }
        lines.append(
            f"    {c.get('outcome', '?'):<12} {c.get('metric')} by {c.get('breakdown')}: "
            f"{_ci(measured)}, limit {c.get('direction', '')} {_num(c.get('limit'))}"
            + (
                f" ({c['reason']})"
                if c.get("outcome") == "inconclusive" and c.get("reason")
                else ""
            )
        )
    calib = fairness.get("score_calibration") or {}
    if calib:
        best = (calib.get("comparison") or {}).get("best")
        lines.append(
            f"  {'score calibration':<20} {calib.get('served')} served; best meeting the goals: "
            f"{best or 'none'} (report: Fair scores without labels)"
        )
    for task, res in (fairness.get("demographic_intervals") or {}).items():
        groups = res.get("groups") or {}
        if not groups:
            continue
        cells = "  ".join(f"{g} {_ci(v)}" for g, v in groups.items())
        lines.append(f"  {TASK_LABELS.get(task, task):<20} {cells}")
    # The detector's misses: a face it misses is matched to nobody (no gate checks them yet).
    missed = ((fairness.get("detection_intervals") or {}).get("group") or {}).get("groups") or {}
    if missed:
        cells = "  ".join(f"{g} {_ci(v)}" for g, v in missed.items())
        lines.append(f"  {'detector miss rate':<20} {cells}")
    return lines
