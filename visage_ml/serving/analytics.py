"""Analytics mode: demographic counts of a frame, aggregated per time window; no identities.

A frame goes through face detection and the demographic model only: no identity template is
computed (the embedder is never touched), and nothing per face outlives the call, only integer
counts per cell (total, each age band, each gender, each skin-tone group) in the current
window.

Release rules (applied to every table that leaves this module, the per-frame answer as well as
each closed window):

- optional Laplace noise: each cell gets ``Laplace(0, 4 / epsilon)``. One face changes four
  cells by one (the total, its age band, gender and group), so the L1 sensitivity of a table is
  4 and each released table is epsilon-differentially private with respect to one face
  (event-level: a person seen in several frames or windows is protected per release, and
  budgets add up over releases). ``epsilon = 0`` turns noise off;
- k-suppression: a cell whose (noisy) count is below ``k_min`` is released as the string
  ``"suppressed"``, not as a number. Suppression looks at the noisy value, so that whether a cell
  is suppressed does not itself reveal the exact count.

A closed window is released once and kept (``keep_windows``); asking again returns the same
numbers, so averaging repeated answers cannot remove the noise.
"""

from __future__ import annotations

import itertools
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

SUPPRESSED = "suppressed"
# Cells one face contributes to: total, age band, gender, group.
SENSITIVITY = 4.0
DIMENSIONS: tuple[str, ...] = ("age_band", "gender", "group")


def age_band_labels(bands: Sequence[int]) -> list[str]:
    """Labels of the bands cut at ``bands`` (``[18, 30]`` -> ``<18``, ``18-29``, ``30+``)."""
    edges = [int(b) for b in bands]
    if not edges:
        return ["all"]
    labels = [f"<{edges[0]}"]
    labels += [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)]
    labels.append(f"{edges[-1]}+")
    return labels


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
    table: CountTable, *, k_min: int, epsilon: float, rng: np.random.Generator | None = None
) -> dict[str, Any]:
    """The publishable form of ``table``: noisy (if ``epsilon`` > 0) and k-suppressed.

    Returns
    -------
    dict
        ``faces`` and, per dimension, each cell as an integer >= ``k_min`` or ``"suppressed"``.
    """
    gen = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    scale = SENSITIVITY / epsilon if epsilon > 0 else 0.0

    def cell(count: int) -> int | str:
        value = float(count)
        if scale > 0:
            value += float(gen.laplace(0.0, scale))
        shown = max(math.floor(value + 0.5), 0)
        return shown if shown >= k_min else SUPPRESSED

    out: dict[str, Any] = {"faces": cell(table.faces)}
    for dim in DIMENSIONS:
        out[dim] = {k: cell(v) for k, v in getattr(table, dim).items()}
    return out


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class _Window:
    start: float
    table: CountTable


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
        """Close the current window when its time is up (called under the lock)."""
        cur = self._current
        if cur is not None and now >= cur.start + self.window_seconds:
            self._closed.append(
                {
                    "start": _iso(cur.start),
                    "end": _iso(cur.start + self.window_seconds),
                    "frames": cur.table.frames,
                    "counts": release(
                        cur.table, k_min=self.k_min, epsilon=self.epsilon, rng=self.rng
                    ),
                }
            )
            self._current = None

    def analyze(self, image: Any) -> dict[str, Any]:
        """Count one frame, add it to the current window, release the frame's counts.

        Returns
        -------
        dict
            ``counts`` (the frame's released table), ``window_start`` and ``window_seconds``
            of the window it was added to, ``k_min`` and ``epsilon``.
        """
        table = self.count(image)
        now = self.clock()
        with self._lock:
            self._roll(now)
            if self._current is None:
                start = math.floor(now / self.window_seconds) * self.window_seconds
                self._current = _Window(start=start, table=self._empty())
            self._current.table.add(table)
            start = self._current.start
            self.frames_total += 1
            counts = release(table, k_min=self.k_min, epsilon=self.epsilon, rng=self.rng)
        return {
            "counts": counts,
            "window_start": _iso(start),
            "window_seconds": self.window_seconds,
            "k_min": self.k_min,
            "epsilon": self.epsilon,
        }

    def windows(self) -> list[dict[str, Any]]:
        """Closed windows, oldest first, each released once (noisy, k-suppressed)."""
        with self._lock:
            self._roll(self.clock())
            return list(self._closed)
