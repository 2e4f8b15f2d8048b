"""Analytics mode: demographic counts of a frame, aggregated per time window; no identities.

A frame goes through face detection and the demographic model only: no identity template is
computed (the embedder is never touched). What a frame leaves behind is integer counts per cell
(total, each age band, each gender, each skin-tone group) in the current window, and, for that
window only and in memory, a perceptual hash of each face counted, so that a face seen again in
the window (tiled in one frame, or a replayed frame) counts once
(:class:`~visage_ml.serving.disclosure.FaceDeduper`).

Only closed windows are released; a frame's answer carries no counts. Release rules
(:mod:`visage_ml.serving.disclosure`):

- optional differential privacy through OpenDP: every cell of the window's table gets discrete
  Laplace noise from one measurement over the whole vector, at scale sensitivity / epsilon.
  One face changes one cell per dimension and the total (its L1 sensitivity), and counts once
  per window, so each window's release is epsilon-differentially private with respect to one
  face; OpenDP's privacy map of the measurement is the epsilon spent, reported with the window
  (``privacy``). ``epsilon = 0`` turns noise off;
- k-suppression: a cell whose (noisy) count is below ``k_min`` is released as the string
  ``"suppressed"``, not as a number. Suppression looks at the noisy value, so that whether a cell
  is suppressed does not itself reveal the exact count;
- complementary suppression: further cells of a dimension (the smallest released one, or all)
  are withheld so that, even to someone who knows the rule, no suppressed cell is known to
  hold nobody or to hold someone. The total is shown when it reaches ``k_min``; below it
  nothing is.

A closed window is released once and kept (``keep_windows``); asking again returns the same
numbers, so averaging repeated answers cannot remove the noise.

Corrected counts (``serving.analytics.correct``): each closed window also reports its counts
corrected for the demographic model's measured confusion per skin-tone group
(:mod:`visage_ml.serving.correction`: the site's mix is estimated from the windows kept, then
this window's faces are reassigned with it), each with an interval, beside the raw counts.
They are computed from released figures only (post-processing: no further privacy budget):
a dimension's suppressed cells enter as one cell holding their sum, which the released total
gives away anyway, so nothing tells how the hidden faces split (:func:`corrected_counts`). A
corrected cell under ``k_min`` is suppressed too. A class the evaluation never saw predicted
(``"<18"`` where it held no minor) reads ``"not_estimated"``, and ``not_estimated`` gives how
many released faces were predicted so: no correction can reassign them.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from visage_ml.config import GENDERS, GROUPS
from visage_ml.evaluation.confusion import age_band_labels
from visage_ml.serving.correction import ConfusionModel
from visage_ml.serving.disclosure import (
    Budget,
    FaceDeduper,
    complementary_suppression,
    face_hashes,
    noised_table,
)

logger = logging.getLogger(__name__)

SUPPRESSED = "suppressed"
# A corrected cell of a class the demographic model's evaluation never predicted (e.g. "<18"
# where no evaluation person was a minor): no correction can reassign its faces.
NOT_ESTIMATED = "not_estimated"
# Cells one face contributes to: total, age band, gender, group.
SENSITIVITY = 4.0
DIMENSIONS: tuple[str, ...] = ("age_band", "gender", "group")


@dataclass
class CountTable:
    """Exact counts (never released as they are: see :func:`release`)."""

    age_band: dict[str, int]
    gender: dict[str, int]
    group: dict[str, int]
    faces: int = 0
    frames: int = 0

    @classmethod
    def empty(
        cls, *, age_labels: Sequence[str], genders: Sequence[str], groups: Sequence[str]
    ) -> CountTable:
        return cls(
            age_band=dict.fromkeys(age_labels, 0),
            gender=dict.fromkeys(genders, 0),
            group=dict.fromkeys(groups, 0),
        )

    def add(self, other: CountTable) -> None:
        """Add ``other``'s counts to these."""
        self.faces += other.faces
        self.frames += other.frames
        for dim in DIMENSIONS:
            mine, theirs = getattr(self, dim), getattr(other, dim)
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v


def count_predictions(
    predictions: Mapping[str, np.ndarray],
    *,
    age_bands: Sequence[int],
    genders: Sequence[str],
    groups: Sequence[str],
) -> CountTable:
    """Counts per cell of one frame's demographic predictions.

    Parameters
    ----------
    predictions
        ``age`` (N,), ``gender_probs`` (N, len(genders)), ``group_probs`` (N, len(groups)) as
        returned by :meth:`visage_ml.inference.OnnxModel.predict`.
    age_bands, genders, groups
        Band edges and class orders of the model (its ``labels``).
    """
    labels = age_band_labels(age_bands)
    table = CountTable.empty(age_labels=labels, genders=genders, groups=groups)
    age = np.asarray(predictions.get("age", np.zeros(0)), dtype=np.float64).reshape(-1)
    n = int(age.shape[0])
    table.faces = n
    table.frames = 1
    if n == 0:
        return table
    band = np.searchsorted(np.asarray(age_bands, dtype=np.float64), age, side="right")
    for i in band:
        table.age_band[labels[int(i)]] += 1
    for dim, key, names in (("gender", "gender_probs", genders), ("group", "group_probs", groups)):
        probs = np.asarray(predictions[key]).reshape(n, -1)
        cells = getattr(table, dim)
        for i in np.argmax(probs, axis=1):
            cells[names[int(i)]] += 1
    return table


def release(
    table: CountTable,
    *,
    k_min: int,
    epsilon: float,
    rng: np.random.Generator | None = None,
    confusion: ConfusionModel | None = None,
    rounds: int = 200,
    budget: Budget | None = None,
    history: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The publishable form of ``table``: noisy (if ``epsilon`` > 0) and k-suppressed.

    Noise is one OpenDP draw over every cell, charged to ``budget``
    (:func:`~visage_ml.serving.disclosure.noised_table`); after k-suppression, complementary
    suppression withholds what would tell whether a suppressed cell holds anyone
    (:func:`~visage_ml.serving.disclosure.complementary_suppression`).

    With ``confusion``, also ``corrected``: per dimension, each cell's count corrected for the
    model's confusion, ``{"count", "low", "high"}`` (the interval from ``rounds`` resamples), or
    ``"suppressed"``; the site's mix is estimated from ``history`` (the released counts of the
    earlier windows, :func:`corrected_counts`) and this window.

    Returns
    -------
    dict
        ``faces`` and, per dimension, each cell as an integer >= ``k_min`` or ``"suppressed"``.
    """
    gen = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    if epsilon > 0:  # the noise goes into the table itself (OpenDP), before anything is shown
        table = noised_table(table, dims=DIMENSIONS, epsilon=epsilon, budget=budget)

    def cell(value: float) -> int | str:
        shown = max(math.floor(value + 0.5), 0)
        return shown if shown >= k_min else SUPPRESSED

    out: dict[str, Any] = {"faces": cell(table.faces)}
    for dim in DIMENSIONS:
        out[dim] = {k: cell(v) for k, v in getattr(table, dim).items()}
    complementary_suppression(out, dims=DIMENSIONS, k_min=k_min)
    if confusion is not None:
        out["corrected"] = corrected_counts(
            confusion,
            {"faces": out["faces"], **{d: out[d] for d in DIMENSIONS}},
            k_min=k_min,
            rounds=rounds,
            rng=gen,
            history=history,
        )
    return out


def corrected_counts(
    confusion: ConfusionModel,
    released: Mapping[str, Any],
    *,
    k_min: int,
    rounds: int,
    rng: np.random.Generator,
    history: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Each dimension's counts corrected for ``confusion``, from released figures only.

    ``released`` is the released raw table (``faces`` and, per dimension, numbers or
    ``"suppressed"``). A suppressed cell's count is never used: the cells suppressed in a
    dimension enter the correction as one pooled cell holding their sum, which the released
    total minus the released cells gives away anyway (complementary suppression protects each
    cell, not their sum). So however the hidden faces split, the corrected figures are the
    same. A dimension is corrected when the total is known (released, or the sum of a
    dimension released whole) and at least two of its cells
    (the pooled one counting as one) are left to tell classes apart; gender and age band also
    need the groups corrected (their matrices are mixed by the site's group shares). A
    corrected cell under ``k_min`` is suppressed too.

    ``history`` holds the released tables of the site's earlier windows (same form): the site's
    mix is estimated from their counts pooled with this window's
    (:meth:`~visage_ml.serving.correction.ConfusionModel.correct_all`). An earlier window adds
    to a dimension when its total was released and it hid no cell that this window shows.
    """
    order = {
        "group": confusion.groups,
        "gender": confusion.genders,
        "age_band": confusion.age_labels,
    }
    out: dict[str, Any] = {d: dict.fromkeys(order[d], SUPPRESSED) for d in DIMENSIONS}
    hidden = {d: _hidden(released, d, names) for d, names in order.items()}
    usable = {d: _cells_left(hidden[d]) >= 2 for d in DIMENSIONS}
    usable = {d: usable[d] and usable["group"] for d in DIMENSIONS}
    if not usable["group"]:
        return out
    masks = {d: m for d, m in hidden.items() if m is not None}
    observed = {
        d: _visible_counts(released, d, names, masks[d]) if usable[d] else np.zeros(len(names))
        for d, names in order.items()
    }
    pooled = {d: v.copy() for d, v in observed.items()}
    for past in history:
        for d, names in order.items():
            mask = _hidden(past, d, names)
            if usable[d] and mask is not None and not (mask & ~masks[d]).any():
                pooled[d] += _visible_counts(past, d, names, masks[d])
    estimates = confusion.correct_all(
        observed,
        history=pooled,
        hidden={d: m for d, m in masks.items() if usable[d]},
        rounds=rounds,
        rng=rng,
    )
    not_estimated: dict[str, int] = {}
    for dim in DIMENSIONS:
        if not usable[dim]:
            continue
        est = estimates[dim]
        # A released cell of a class no evaluation face was predicted in: its faces cannot be
        # reassigned (the correction would drop them), so the class says so and their number
        # (public: the released cells) is given, and the corrected cells plus it make the total.
        for name, seen in zip(order[dim], confusion.evidenced(dim), strict=True):
            cell = released.get(dim, {}).get(name)
            if not seen and isinstance(cell, int | float) and cell > 0:
                out[dim][name] = NOT_ESTIMATED
                not_estimated[dim] = not_estimated.get(dim, 0) + int(cell)
        for name, count in est.estimate.items():
            if out[dim][name] == NOT_ESTIMATED:
                continue
            if count >= k_min:
                # Without resamples there is no interval: none is made up from the estimate.
                out[dim][name] = {
                    "count": round(count, 1),
                    "low": round(max(est.low[name], 0.0), 1) if rounds > 0 else None,
                    "high": round(est.high[name], 1) if rounds > 0 else None,
                }
    if not_estimated:
        out["not_estimated"] = not_estimated
    return out


def _hidden(table: Mapping[str, Any], dim: str, names: Sequence[str]) -> np.ndarray | None:
    """Mask of the suppressed cells of ``dim`` in a released table; None when their sum is not
    known (the total withheld while a cell is)."""
    cells = table.get(dim)
    if not isinstance(cells, Mapping):
        return None
    mask = np.array([cells.get(k, 0) == SUPPRESSED for k in names], dtype=bool)
    if mask.any() and _total(table) is None:
        return None
    return mask


def _total(table: Mapping[str, Any]) -> float | None:
    """The faces of a released table as anyone can tell them: the total, or, withheld, the sum
    of a dimension released whole; None when neither is there."""
    if isinstance(table.get("faces"), int | float):
        return float(table["faces"])
    for d in DIMENSIONS:
        cells = table.get(d)
        if isinstance(cells, Mapping) and SUPPRESSED not in cells.values():
            return float(sum(cells.values()))
    return None


def _cells_left(hidden: np.ndarray | None) -> int:
    """Cells a dimension keeps for the correction: the released ones, and the pooled one."""
    if hidden is None:
        return 0
    return int((~hidden).sum()) + int(hidden.any())


def _visible_counts(
    table: Mapping[str, Any], dim: str, names: Sequence[str], hidden: np.ndarray
) -> np.ndarray:
    """The cells of ``dim`` in ``names`` order, with the sum of the cells in ``hidden`` (the
    released total less the released cells) put in the first of them."""
    cells = table[dim]
    shown = np.array(
        [
            0.0 if h or cells.get(k, 0) == SUPPRESSED else float(cells.get(k, 0))
            for k, h in zip(names, hidden, strict=True)
        ]
    )
    if hidden.any():
        shown[int(np.argmax(hidden))] = max((_total(table) or 0.0) - float(shown.sum()), 0.0)
    return shown


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class _Window:
    start: float
    table: CountTable
    # Hashes of the faces counted in this window (memory only; dropped with the window).
    seen: FaceDeduper = field(default_factory=FaceDeduper)


@dataclass
class Analytics:
    """Counts faces per demographic cell, frame by frame and per aggregation window.

    Parameters
    ----------
    engine
        A :class:`visage_ml.serving.engine.Engine`; only its detector and demographic model
        are used.
    k_min, epsilon, window_seconds, keep_windows
        ``serving.analytics`` parameters.
    confusion, correction_rounds
        The demographic model's measured confusion (closed windows then also report corrected
        counts with intervals from ``correction_rounds`` resamples, the site's mix estimated
        from the windows kept, ``keep_windows``); None: raw counts only.
    clock
        Wall-clock seconds (injected by tests).
    rng
        Noise source (a fresh OS-seeded generator when None).
    """

    engine: Any
    k_min: int = 5
    epsilon: float = 0.0
    window_seconds: float = 60.0
    keep_windows: int = 60
    clock: Callable[[], float] = time.time
    rng: np.random.Generator | None = None
    confusion: ConfusionModel | None = None
    correction_rounds: int = 200
    # A face within this share of differing hash bits of one counted in the window is the same
    # face (serving.analytics.dedupe_distance; :class:`~visage_ml.serving.disclosure.FaceDeduper`).
    dedupe_distance: float = 0.1
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _current: _Window | None = field(default=None, init=False, repr=False)
    _closed: deque[dict[str, Any]] = field(default_factory=deque, init=False, repr=False)
    frames_total: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.rng is None:
            self.rng = np.random.default_rng(secrets.randbits(128))
        self._closed = deque(maxlen=self.keep_windows)

    def _labels(self) -> tuple[list[int], list[str], list[str]]:
        labels = self.engine.demographics.labels
        bands = list(labels.get("age_bands") or [])
        genders = list(labels.get("gender") or GENDERS)
        groups = list(labels.get("group") or GROUPS)
        return bands, genders, groups

    def _empty(self) -> CountTable:
        bands, genders, groups = self._labels()
        return CountTable.empty(age_labels=age_band_labels(bands), genders=genders, groups=groups)

    def count(self, image: Any) -> CountTable:
        """Exact counts of one frame (detect + demographic model; nothing else is computed)."""
        faces = self.engine.detect(image)
        bands, genders, groups = self._labels()
        if not faces:
            return count_predictions(
                {"age": np.zeros(0)}, age_bands=bands, genders=genders, groups=groups
            )
        pred = self.engine.predict(np.stack([f.crop for f in faces]))
        del faces
        return count_predictions(pred, age_bands=bands, genders=genders, groups=groups)

    def _roll(self, now: float) -> None:
        """Close the current window when its time is up (called under the lock): release it
        once, with its privacy budget's accounting; its face hashes go with it."""
        cur = self._current
        if cur is not None and now >= cur.start + self.window_seconds:
            budget = Budget(self.epsilon)
            self._closed.append(
                {
                    "start": _iso(cur.start),
                    "end": _iso(cur.start + self.window_seconds),
                    "frames": cur.table.frames,
                    "counts": release(
                        cur.table,
                        k_min=self.k_min,
                        epsilon=self.epsilon,
                        rng=self.rng,
                        confusion=self.confusion,
                        rounds=self.correction_rounds,
                        budget=budget,
                        history=[w["counts"] for w in self._closed],
                    ),
                    "privacy": budget.to_dict(),
                }
            )
            self._current = None

    def analyze(self, image: Any) -> dict[str, Any]:
        """Count one frame into the current window. Nothing about the frame is released: only
        closed windows are (:meth:`windows`), so a frame's answer cannot single anyone out and
        repeated frames cannot average noise away.

        A face already counted in the window (tiled in the frame, or in a replayed frame)
        counts once.

        Returns
        -------
        dict
            ``window_start`` and ``window_seconds`` of the window the frame was added to,
            ``k_min`` and ``epsilon``; ``counts`` is None.
        """
        faces = self.engine.detect(image)
        crops = [f.crop for f in faces]
        del faces
        hashes = [face_hashes(c) for c in crops]
        pred = self.engine.predict(np.stack(crops)) if crops else None
        del crops
        bands, genders, groups = self._labels()
        now = self.clock()
        with self._lock:
            self._roll(now)
            if self._current is None:
                start = math.floor(now / self.window_seconds) * self.window_seconds
                seen = FaceDeduper(self.dedupe_distance)
                self._current = _Window(start=start, table=self._empty(), seen=seen)
            keep = self._current.seen.fresh_hashes(hashes)
            fresh = {"age": np.zeros(0)}
            if pred is not None and keep:
                fresh = {k: np.asarray(v)[keep] for k, v in pred.items()}
            table = count_predictions(fresh, age_bands=bands, genders=genders, groups=groups)
            self._current.table.add(table)
            start = self._current.start
            self.frames_total += 1
        return {
            "counts": None,
            "window_start": _iso(start),
            "window_seconds": self.window_seconds,
            "k_min": self.k_min,
            "epsilon": self.epsilon,
        }

    def close_due(self) -> None:
        """Close the current window if its time is up, although no frame or reader came (the
        server's background thread): its face hashes and exact counts are dropped on time, not
        kept in memory until the next request."""
        with self._lock:
            self._roll(self.clock())

    def windows(self) -> list[dict[str, Any]]:
        """Closed windows, oldest first, each released once (noisy, k-suppressed)."""
        with self._lock:
            self._roll(self.clock())
            return list(self._closed)


def close_windows_periodically(
    analytics: Analytics, *, stop: threading.Event, every: float | None = None
) -> None:
    """Until ``stop`` is set, close ``analytics``'s window when its time is up (``visage
    serve``'s background thread); looks ``every`` seconds (default four times per window, at
    most once a second)."""
    period = every if every is not None else max(1.0, analytics.window_seconds / 4)
    while not stop.wait(period):
        try:
            analytics.close_due()
        except Exception:  # a background loop must not die of one bad pass
            logger.exception("closing the analytics window failed")
