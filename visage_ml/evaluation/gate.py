"""The fairness gate with three outcomes, decided on bootstrap intervals: pass, fail, inconclusive.

A point estimate under a limit is not evidence of fairness when it rests on a handful of people:
the old gate passed an FMR ratio of 9.2 whose 95 % interval was [2, 335]. Each check here
compares an identity-bootstrap interval with its limit:

- **pass**: the whole interval is on the right side of the limit (a ratio's upper bound at or
  below its maximum, an accuracy's lower bound at or above its minimum);
- **fail**: the whole interval is on the wrong side (a ratio's lower bound above the maximum);
- **inconclusive**: the interval straddles the limit, or a group has fewer identities than
  ``min_identities`` asks for (an empty group has 0; for a differential, identities with
  comparisons of the kind its rate is measured on: impostor for FMR, genuine for FNMR, so a
  person with one image does not count towards FNMR), or fewer than two groups were measured;
  the check says which. An interval within the limit is not a pass either when a group of the
  breakdown was not measured (no comparisons, no labelled images) or, for a ratio, when a
  group had no error: its rate is floored at one error, so the interval is then a lower
  bound of the ratio, which can fail a check but not pass it.

The interval of a max/min ratio is the simultaneous band of
:func:`visage_ml.evaluation.fairness.max_min_band`: its lower end is above a limit only when
some pair of groups is, with confidence, further apart than the limit.

The gate's outcome is ``fail`` when any check fails, else ``inconclusive`` when any check is,
else ``pass``. It covers the FRVT differentials (max/min FMR and FNMR ratios per breakdown) and
the demographic model (per-group accuracy and its min/max ratio per task).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visage_ml.evaluation.bootstrap import finite_or_none
from visage_ml.evaluation.fairness import GATE_BOUNDS, Differentials, GateOutcome

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
OUTCOMES: tuple[str, ...] = (PASS, INCONCLUSIVE, FAIL)

MSG_NO_LIMIT = "evaluate.gate.{bound} has no limit for breakdown '{breakdown}'; add one"
MSG_UNMEASURED = "{groups}: no {kind} comparisons, not measured; {reason}"
MSG_UNLABELLED = "{groups}: no labelled images, not measured; {reason}"
MSG_ERRORLESS = (
    "{groups}: no error in the {kind} comparisons, so the ratio has no upper bound (more "
    "people or comparisons needed); {reason}"
)


def decide(*, ci_low: float, ci_high: float, limit: float, upper: bool) -> tuple[str, str]:
    """Outcome and reason of one interval against one limit.

    ``upper`` True: the statistic must be at most ``limit`` (a ratio); False: at least (an
    accuracy).
    """
    lo, hi = float(ci_low), float(ci_high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE, "no interval (too few comparisons or resamples)"
    if upper:
        if hi <= limit:
            return PASS, f"interval [{lo:.3g}, {hi:.3g}] is within the limit {limit:g}"
        if lo > limit:
            return FAIL, f"interval [{lo:.3g}, {hi:.3g}] is above the limit {limit:g}"
    else:
        if lo >= limit:
            return PASS, f"interval [{lo:.3g}, {hi:.3g}] is within the limit {limit:g}"
        if hi < limit:
            return FAIL, f"interval [{lo:.3g}, {hi:.3g}] is below the limit {limit:g}"
    return INCONCLUSIVE, f"interval [{lo:.3g}, {hi:.3g}] straddles the limit {limit:g}"


def _few(counts: Mapping[str, int], minimum: int, *, kind: str | None = None) -> str | None:
    small = {g: n for g, n in counts.items() if n < minimum}
    if not small:
        return None
    shown = ", ".join(f"{g} has {n}" for g, n in sorted(small.items(), key=lambda kv: kv[1]))
    counted = f" with {kind} comparisons" if kind else ""
    return f"too few identities: {shown}{counted} (at least {minimum} per group needed)"


@dataclass(frozen=True)
class ThreeWayGate(GateOutcome):
    """:class:`GateOutcome` with its three-way outcome.

    ``passed`` is True only for ``pass``; ``failures`` lists the checks that failed;
    ``inconclusive`` those that could not be decided; ``checked`` every check.
    """

    outcome: str = PASS
    inconclusive: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def describe(self) -> str:
        """One line for logs, tags and the demo (aggregates only)."""
        if self.outcome == PASS:
            return PASS
        shown = self.failures if self.outcome == FAIL else self.inconclusive
        parts = [
            f"{c['metric']} ({c['breakdown']}): {c['reason']}" for c in shown if c.get("reason")
        ]
        return f"{self.outcome}: " + "; ".join(parts)

    def blocks(self, *, on_inconclusive: str = "warn") -> bool:
        """Whether an enforced gate stops the stage: on ``fail``, and on ``inconclusive``
        when ``on_inconclusive`` is ``fail``."""
        return self.outcome == FAIL or (self.outcome == INCONCLUSIVE and on_inconclusive == FAIL)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``passed``, ``outcome``, ``failures``, ``inconclusive``,
        ``checked``)."""
        base = super().to_dict()
        base["outcome"] = self.outcome
        base["summary"] = self.describe()
        base["inconclusive"] = [_clean(c) for c in self.inconclusive]
        return base


def _clean(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: finite_or_none(v) if isinstance(v, float) else v for k, v in entry.items()}


def combine(checks: Sequence[dict[str, Any]]) -> ThreeWayGate:
    """The gate of ``checks`` (each with an ``outcome``)."""
    failures = tuple(c for c in checks if c["outcome"] == FAIL)
    inconclusive = tuple(c for c in checks if c["outcome"] == INCONCLUSIVE)
    outcome = FAIL if failures else INCONCLUSIVE if inconclusive else PASS
    return ThreeWayGate(
        passed=outcome == PASS,
        failures=failures,
        checked=tuple(checks),
        outcome=outcome,
        inconclusive=inconclusive,
    )


def limit_of(limits: float | Mapping[str, float], breakdown: str, bound: str) -> float:
    """The limit of ``bound`` for ``breakdown`` (one number for all, or one per breakdown)."""
    if isinstance(limits, Mapping):
        if breakdown not in limits:
            raise ValueError(MSG_NO_LIMIT.format(bound=bound, breakdown=breakdown))
        return float(limits[breakdown])
    return float(limits)


def differential_checks(
    differentials: Mapping[str, Differentials],
    *,
    max_fmr_ratio: float | Mapping[str, float],
    max_fnmr_ratio: float | Mapping[str, float],
    breakdowns: Sequence[str],
    min_identities: Mapping[str, int],
    ci_level: float,
) -> list[dict[str, Any]]:
    """One check per breakdown and bound: the max/min FMR and FNMR ratios against their limits.

    Parameters
    ----------
    differentials
        :func:`visage_ml.evaluation.fairness.demographic_differentials` output (with bootstrap
        samples: without them every check is inconclusive).
    max_fmr_ratio, max_fnmr_ratio
        Limits, one number or one per breakdown.
    breakdowns
        Breakdowns checked.
    min_identities
        Identities each group of a breakdown needs (per breakdown; missing = 0), counted per
        check among those with comparisons of its kind: an impostor comparison within the group
        for the FMR ratio, a genuine one (two or more images) for the FNMR ratio.
    ci_level
        Level of the bootstrap intervals.
    """
    limits = {"max_fmr_ratio": max_fmr_ratio, "max_fnmr_ratio": max_fnmr_ratio}
    checks: list[dict[str, Any]] = []
    for name in breakdowns:
        diff = differentials.get(name)
        for bound, key in GATE_BOUNDS.items():
            limit = limit_of(limits[bound], name, bound)
            entry: dict[str, Any] = {
                "gate": "differentials",
                "bound": bound,
                "breakdown": name,
                "metric": key,
                "limit": limit,
                "direction": "at most",
            }
            if diff is None:
                checks.append(
                    {
                        **entry,
                        "measured": float("nan"),
                        "outcome": INCONCLUSIVE,
                        "reason": "breakdown not measured",
                        "groups_measured": 0,
                    }
                )
                continue
            fmr = key.startswith("fmr")
            rates = diff.fmr if fmr else diff.fnmr
            measured = np.isfinite(rates)
            est = diff.interval(key, ci_level)
            # A rate rests on the people with comparisons of its kind: a group of 60 of whom 5
            # have two images measures its FNMR on 5. Every group of the breakdown counts, an
            # empty one with 0 identities.
            people = diff.n_identities_impostor if fmr else diff.n_identities_genuine
            counts = {lab: int(n) for lab, n in zip(diff.labels, people, strict=True)}
            entry.update(
                measured=float(est["value"]),
                ci_low=est["ci_low"],
                ci_high=est["ci_high"],
                groups_measured=int(measured.sum()),
                smallest_group=min(counts.values()) if counts else 0,
            )
            kind = "impostor" if fmr else "genuine"
            few = _few(counts, int(min_identities.get(name, 0)), kind=kind)
            unmeasured = _listed(
                lab for lab, ok in zip(diff.labels, measured, strict=True) if not ok
            )
            errorless = _listed(lab for lab, r in zip(diff.labels, rates, strict=True) if r == 0)
            if int(measured.sum()) < 2:
                outcome, reason = INCONCLUSIVE, "fewer than two groups measured"
            else:
                outcome, reason = decide(
                    ci_low=est["ci_low"], ci_high=est["ci_high"], limit=limit, upper=True
                )
                # Both leave the measured groups' interval a lower bound of the breakdown's
                # ratio: evidence enough to fail it, not to pass it. An error-free group's rate
                # is floored at one error (fairness.py), and its true rate may be far below.
                if outcome == PASS and unmeasured:
                    outcome = INCONCLUSIVE
                    reason = MSG_UNMEASURED.format(groups=unmeasured, kind=kind, reason=reason)
                elif outcome == PASS and errorless:
                    outcome = INCONCLUSIVE
                    reason = MSG_ERRORLESS.format(groups=errorless, kind=kind, reason=reason)
                if few:
                    outcome, reason = INCONCLUSIVE, f"{few}; {reason}"
            checks.append({**entry, "outcome": outcome, "reason": reason})
    return checks


def _listed(labels: Any) -> str:
    return ", ".join(str(lab) for lab in labels)


def demographic_checks(
    report: Mapping[str, Any],
    *,
    min_accuracy: Mapping[str, float],
    min_ratio: Mapping[str, float],
    min_identities: int,
) -> list[dict[str, Any]]:
    """Checks of the demographic model: each task's lowest group accuracy and min/max ratio.

    Parameters
    ----------
    report
        :func:`visage_ml.evaluation.demographic_intervals.accuracy_intervals` output
        (``{task: {"groups": {g: {value, ci_low, ci_high, n_identities}}, "min": ...,
        "ratio": ...}}``).
    min_accuracy, min_ratio
        Limits per task (tasks without a limit are not checked).
    min_identities
        Identities each group needs.
    """
    checks: list[dict[str, Any]] = []
    for task in sorted(set(min_accuracy) | set(min_ratio)):
        res = report.get(task)
        for bound, limits, stat in (
            ("min_accuracy", min_accuracy, "min"),
            ("min_ratio", min_ratio, "ratio"),
        ):
            if task not in limits:
                continue
            limit = float(limits[task])
            entry: dict[str, Any] = {
                "gate": "demographics",
                "bound": bound,
                "breakdown": "group",
                "task": task,
                "metric": f"{task} ({'lowest group' if stat == 'min' else 'min/max'})",
                "limit": limit,
                "direction": "at least",
            }
            if not res or not res.get("groups"):
                checks.append(
                    {
                        **entry,
                        "measured": float("nan"),
                        "outcome": INCONCLUSIVE,
                        "reason": "not measured (no labelled images)",
                    }
                )
                continue
            est = res[stat]
            counts = {g: int(v["n_identities"]) for g, v in res["groups"].items()}
            unmeasured = list(res.get("unmeasured_groups") or ())
            outcome, reason = decide(
                ci_low=_num(est.get("ci_low")),
                ci_high=_num(est.get("ci_high")),
                limit=limit,
                upper=False,
            )
            # A group without a labelled image is in neither the lowest accuracy nor the
            # ratio: the measured ones may fail the check, not pass it for everyone.
            if outcome == PASS and unmeasured:
                outcome = INCONCLUSIVE
                reason = MSG_UNLABELLED.format(groups=_listed(unmeasured), reason=reason)
            few = _few({**counts, **dict.fromkeys(unmeasured, 0)}, min_identities)
            if len(counts) < 2 and stat == "ratio":
                outcome, reason = INCONCLUSIVE, "fewer than two groups measured"
            elif few:
                outcome, reason = INCONCLUSIVE, f"{few}; {reason}"
            checks.append(
                {
                    **entry,
                    "measured": _num(est.get("value")),
                    "ci_low": _num(est.get("ci_low")),
                    "ci_high": _num(est.get("ci_high")),
                    "groups_measured": len(counts),
                    # A group with no labelled image is the smallest: it has nobody.
                    "smallest_group": min(counts.values()) if counts and not unmeasured else 0,
                    "outcome": outcome,
                    "reason": reason,
                }
            )
    return checks


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)
