"""Per-group aggregation of metrics: the one mechanism behind every per-group number.

A metric is a plain callable ``fn(y_true, y_score, **kw)``. A :class:`Partition` splits samples
into labelled groups once. A scalar metric per group is fairlearn's ``MetricFrame``
(:meth:`Partition.frame`, a :class:`GroupFrame` with ``overall``, ``by_group``,
``difference()``, ``ratio()``): the demographic model and the detector. Metrics that are not
scalars (per-group ROC curves) go through :meth:`Partition.apply`, which hands each group's
samples to the callable in their original order, as ``MetricFrame`` does.

The FRVT differentials re-aggregate the same comparisons under every identity-bootstrap
resample (a new weight per comparison, hundreds of times per breakdown). ``MetricFrame``
regroups its input with pandas on every call, about two seconds for 200k weighted comparisons;
:meth:`Partition.sums` counts per group in one ``np.bincount`` on the partition built once,
about a millisecond per resample. The unit tests check ``apply`` and ``sums`` against
``MetricFrame``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fairlearn.metrics import MetricFrame

from visage_ml.evaluation.bootstrap import finite_or_none

Metric = Callable[..., Any]


class Partition:
    """Samples split into labelled groups, computed once and reused for any metric.

    Parameters
    ----------
    codes
        Index into ``labels`` per sample; ``-1`` (or any negative code) leaves the sample out.
    labels
        Group names, in display order.
    """

    def __init__(self, codes: np.ndarray, labels: Sequence[Hashable]) -> None:
        codes = np.asarray(codes, dtype=np.int64)
        self.labels = tuple(labels)
        self.codes = codes
        kept = codes >= 0
        self._kept = None if kept.all() else kept
        self._kept_codes = codes if self._kept is None else codes[kept]
        self.n = np.bincount(self._kept_codes, minlength=len(self.labels)).astype(np.int64)

    @functools.cached_property
    def _order(self) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Sample indices grouped by label (stable: original order within a group), bounds."""
        order = np.argsort(self.codes, kind="stable")
        order = order[int(np.count_nonzero(self.codes < 0)) :]
        ends = np.cumsum(self.n)
        return order, [(int(e - c), int(e)) for c, e in zip(self.n, ends, strict=True)]

    @classmethod
    def from_values(cls, values: Sequence[Any], labels: Sequence[str] | None = None) -> Partition:
        """Partition by each sample's value (as text); values not in ``labels`` are left out.

        Without ``labels`` the groups are the distinct values, sorted (as ``MetricFrame`` and
        pandas ``groupby`` order them).
        """
        text = np.asarray(values).astype(str)
        if labels is None:
            labels = [str(v) for v in np.unique(text)]
        index = {lab: i for i, lab in enumerate(labels)}
        codes = np.array([index.get(v, -1) for v in text.tolist()], dtype=np.int64)
        return cls(codes, labels)

    def split(self, array: np.ndarray) -> list[np.ndarray]:
        """Each group's samples of ``array`` (views of one reordered copy)."""
        order, bounds = self._order
        taken = np.take(np.asarray(array), order, axis=0)
        return [taken[a:b] for a, b in bounds]

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Per-group sum of ``values`` in one vectorised pass (``np.bincount``; 0 when empty).

        The additions run in another order than ``np.sum`` on each group, so use it where the
        sums are exact whatever the order: counts and integer-valued weights (identity
        bootstrap multiplicities), as in the FRVT differentials. :meth:`apply` is exact for any
        metric.
        """
        v = np.asarray(values, dtype=np.float64)
        if self._kept is not None:
            v = v[self._kept]
        return np.bincount(self._kept_codes, weights=v, minlength=len(self.labels))

    def apply(
        self,
        metric: Metric,
        *arrays: np.ndarray,
        missing: Any = float("nan"),
        **sample_params: Any,
    ) -> list[Any]:
        """``metric`` of each group's samples, in label order (``missing`` for empty groups).

        ``arrays`` (passed positionally) and ``sample_params`` (by keyword, e.g.
        ``sample_weight``, as ``MetricFrame``'s ``sample_params``) are per-sample arrays; a
        ``sample_param`` that is ``None`` is passed as ``None``. Scalar arguments go through
        ``functools.partial``.
        """
        parts = [self.split(a) for a in arrays]
        kw_parts = {k: self.split(v) for k, v in sample_params.items() if v is not None}
        fixed = {k: v for k, v in sample_params.items() if v is None}
        out: list[Any] = []
        for i, size in enumerate(self.n):
            if size == 0:
                out.append(missing)
                continue
            kw = {**fixed, **{k: v[i] for k, v in kw_parts.items()}}
            out.append(metric(*(p[i] for p in parts), **kw))
        return out

    def frame(
        self, metric: Metric, y_true: np.ndarray, y_score: np.ndarray, *, name: str
    ) -> GroupFrame:
        """A :class:`GroupFrame` of one scalar metric over the partition's samples and per group.

        Computed by fairlearn's ``MetricFrame`` (the tool reviewers know); samples left out of
        the partition (negative codes) are left out of ``overall`` too.
        """
        kept = self.codes >= 0
        names = np.array([str(lab) for lab in self.labels], dtype=object)
        mf = MetricFrame(
            metrics={name: metric},
            y_true=np.asarray(y_true)[kept],
            y_pred=np.asarray(y_score)[kept],
            sensitive_features=names[self.codes[kept]],
        )
        by_group = mf.by_group[name]
        present = self.n > 0
        labels = tuple(str(lab) for lab, p in zip(self.labels, present, strict=True) if p)
        return GroupFrame(
            name=name,
            labels=labels,
            values=np.array([float(by_group[lab]) for lab in labels]),
            n=self.n[present],
            overall=float(mf.overall[name]),
        )


@dataclass(frozen=True)
class GroupFrame:
    """One metric overall and per group (the groups that have samples), with comparisons.

    Attributes
    ----------
    name
        Metric name.
    labels
        Groups, in the partition's order.
    values
        Metric value per group.
    n
        Samples per group.
    overall
        Metric value over every sample.
    """

    name: str
    labels: tuple[str, ...]
    values: np.ndarray
    n: np.ndarray
    overall: float

    @property
    def by_group(self) -> dict[str, float]:
        """``{group: value}``."""
        return {lab: float(v) for lab, v in zip(self.labels, self.values, strict=True)}

    def _extremes(self) -> tuple[float, float]:
        finite = self.values[~np.isnan(self.values)]
        if finite.size == 0:
            return float("nan"), float("nan")
        return float(finite.min()), float(finite.max())

    def difference(self) -> float:
        """Largest gap between two groups, ``max - min`` (groups without a value ignored)."""
        lo, hi = self._extremes()
        return hi - lo

    def ratio(self) -> float:
        """Smallest ratio between two groups, ``min / max`` (NaN for 0/0, inf for x/0)."""
        lo, hi = self._extremes()
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.float64(lo) / np.float64(hi))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``overall``, ``by_group``, ``n``, ``difference``, ``ratio`` (NaN -> None)."""
        return {
            "overall": finite_or_none(self.overall),
            "by_group": {k: finite_or_none(v) for k, v in self.by_group.items()},
            "n": {lab: int(c) for lab, c in zip(self.labels, self.n, strict=True)},
            "difference": finite_or_none(self.difference()),
            "ratio": finite_or_none(self.ratio()),
        }


def frame_summary(
    metric: Metric,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    sensitive: np.ndarray,
    *,
    name: str,
    unlabeled: str | None = None,
) -> dict[str, Any]:
    """One metric per group, JSON-ready (:meth:`GroupFrame.to_dict`).

    Parameters
    ----------
    metric
        ``fn(y_true, y_pred) -> float``.
    y_true, y_pred
        Per-sample truth and prediction.
    sensitive
        Per-sample group label (groups: its distinct values, sorted).
    name
        Metric name.
    unlabeled
        The label of samples whose group is unknown (e.g. ``"unlabeled"``): they count in
        ``overall`` but form no group, so they never enter ``difference`` or ``ratio``; their
        number, share and metric are reported under ``unlabeled``.

    Returns
    -------
    dict
        ``overall``, ``by_group`` (group -> value), ``n`` (group -> samples), ``difference``
        (max - min between groups) and ``ratio`` (min / max); non-finite values are ``None``.
        With ``unlabeled``: also ``unlabeled`` (``n``, ``share``, ``value``).
    """
    text = np.asarray(sensitive).astype(str)
    if unlabeled is None:
        partition = Partition.from_values(text)
        return partition.frame(metric, np.asarray(y_true), np.asarray(y_pred), name=name).to_dict()
    missing = text == unlabeled
    labels = [str(v) for v in np.unique(text[~missing])]
    partition = Partition.from_values(text, labels)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if labels:
        out = partition.frame(metric, y_true, y_pred, name=name).to_dict()
    else:
        out = {"overall": None, "by_group": {}, "n": {}, "difference": None, "ratio": None}
    n_missing = int(missing.sum())
    if n_missing:
        # The unlabeled samples are part of the population the metric describes.
        out["overall"] = finite_or_none(float(metric(y_true, y_pred)))
    out["unlabeled"] = {
        "n": n_missing,
        "share": n_missing / text.size if text.size else 0.0,
        "value": finite_or_none(float(metric(y_true[missing], y_pred[missing])))
        if n_missing
        else None,
    }
    return out
