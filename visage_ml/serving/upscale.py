"""Upscale detection: was this face enlarged by resampling, and by how much?

A face of 8 x 8 pixels enlarged 4 times holds the same 64 pixel values, no more identity, in a
box of 32 x 32. :func:`upscale_factor` estimates that factor from the pixels of the face's box
in the image as sent (never from the aligned crop, which is itself resampled), so that the
quality gate can judge the face by its effective size (:mod:`visage_ml.serving.quality`).

The test: an image enlarged ``k`` times with a fixed interpolation kernel lies, along each axis,
in a subspace: every row is a linear combination of the kernel placed at every ``k``-th pixel.
For ``k`` from 2 to :data:`MAX_FACTOR`, every grid phase ``0..k-1`` and the kernels of
:data:`KERNELS` (nearest-neighbour, bilinear, bicubic with a = -0.5, half-pixel centres: Pillow's;
only Pillow's enlargements were measured), the region is projected on that subspace by least
squares. What the projection leaves, per pixel, is detail finer than a ``k`` times smaller face
could hold. The region counts as enlarged ``k`` times along the axis when that residual is at
most ``tolerance`` times its own detail (the mean square of its second differences along the
axis) plus ``floor`` (grey levels squared: the rounding of the enlarged pixels to 8 bits). The
factor is the largest ``k`` that passes, on both axes. A region almost without detail
(:data:`MIN_DETAIL`) is not judged: it tells nothing, and fails the sharpness bound anyway.

Measured on SynthFaces (README, "quality_too_low"): no genuine face, native or JPEG (quality
55-95), was found enlarged; nearest-neighbour, bilinear and bicubic enlargements by 2, 3 and 4
were, and nearest-neighbour ones mostly still after JPEG at quality 90. A genuine face that is
blurred (Gaussian radius 1.5 or more) or compressed hard (JPEG quality 20 or less) can read as
enlarged 2-8 times: of about 1,500 synthetic faces (blur radius 0-3, JPEG quality 30-70), the
sharpness bound refused those anyway, or their judged size stayed above ``min_face_px``: none
the gate accepted before was refused. Not found: bilinear
and bicubic enlargements compressed afterwards, fractional factors, Lanczos (in part), noise
added afterwards, and a learned upscaler, which invents the detail it adds.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

MAX_FACTOR = 8
# The central part of the box that is measured, at most this many pixels a side (the cost).
REGION_PX = 64
# A factor k is tried along an axis only when the region holds at least this many k-blocks.
MIN_BLOCKS = 4
# Mean square second difference (grey levels squared) under which a region is too flat to tell.
MIN_DETAIL = 0.25
# The defaults of serving.quality.upscale_tolerance and upscale_floor.
TOLERANCE = 0.01
FLOOR = 0.05
GREY = np.array([0.299, 0.587, 0.114])


def _nearest(t: np.ndarray) -> np.ndarray:
    return ((t > -0.5) & (t <= 0.5)).astype(np.float64)


def _bilinear(t: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - np.abs(t))


def _bicubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    t = np.abs(t)
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    far = ((t - 5.0) * t + 8.0) * t * a - 4.0 * a
    return np.where(t < 1.0, near, np.where(t < 2.0, far, 0.0))


# name -> (kernel on the input grid, its half-width in input pixels)
KERNELS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], int]] = {
    "nearest": (_nearest, 1),
    "bilinear": (_bilinear, 1),
    "bicubic": (_bicubic, 2),
}


def face_region(image: Any, box: Any, *, side: int = REGION_PX) -> np.ndarray:
    """The central ``side`` x ``side`` pixels of ``box`` (x1, y1, x2, y2) in ``image`` (a copy).

    The box is clipped to the image; a box smaller than ``side`` is taken whole.
    """
    a = np.asarray(image)
    h, w = a.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    x1, x2 = max(0, round(x1)), min(w, round(x2))
    y1, y2 = max(0, round(y1)), min(h, round(y2))
    if x2 <= x1 or y2 <= y1:
        return np.zeros((0, 0, *a.shape[2:]), dtype=a.dtype)
    cx, cy = max(0, (x2 - x1 - side) // 2), max(0, (y2 - y1 - side) // 2)
    return np.array(a[y1 + cy : min(y2, y1 + cy + side), x1 + cx : min(x2, x1 + cx + side)])


def _weights(n: int, k: int, phase: int, kernel: str) -> np.ndarray:
    """The ``n x m`` matrix of a ``k``-fold enlargement seen from output pixel ``phase`` on."""
    f, support = KERNELS[kernel]
    # Output pixel j of the enlarged signal is centred at (j + 0.5) / k in input pixels.
    centre = (np.arange(n) + phase + 0.5) / k
    m = np.arange(int(centre[0]) - support - 1, int(centre[-1]) + support + 2)
    w = f(m[None, :] + 0.5 - centre[:, None])
    w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    return w[:, np.abs(w).sum(axis=0) > 1e-12]


@lru_cache(maxsize=128)
def _bases(n: int, max_factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthonormal bases of every enlargement subspace of length-``n`` signals, side by side.

    Returns the ``n x C`` matrix, the first column of each subspace and its factor ``k``.
    """
    columns, starts, factors, at = [], [], [], 0
    for k in range(2, min(max_factor, n // MIN_BLOCKS) + 1):
        for kernel in KERNELS:
            for phase in range(k):
                u, s, _ = np.linalg.svd(_weights(n, k, phase, kernel), full_matrices=False)
                u = u[:, s > 1e-9 * s[0]]
                columns.append(u)
                starts.append(at)
                factors.append(k)
                at += u.shape[1]
    basis = np.concatenate(columns, axis=1) if columns else np.zeros((n, 0))
    out = (np.ascontiguousarray(basis), np.array(starts, np.intp), np.array(factors, np.intp))
    for a in out:
        a.setflags(write=False)
    return out


def _axis_factor(rows: np.ndarray, *, tolerance: float, floor: float, max_factor: int) -> int:
    """The largest factor the rows (signals along the axis) were enlarged by, 1 if none."""
    g = rows - rows.mean(axis=1, keepdims=True)  # constants lie in every subspace
    detail = float(np.mean((g[:, :-2] - 2.0 * g[:, 1:-1] + g[:, 2:]) ** 2))
    basis, starts, factors = _bases(g.shape[1], max_factor)
    if not len(factors) or detail < MIN_DETAIL:
        return 1
    captured = np.add.reduceat(np.sum((g @ basis) ** 2, axis=0), starts)
    residual = (float(np.sum(g * g)) - captured) / g.size  # per pixel, grey levels squared
    found = factors[residual <= tolerance * detail + floor + 1e-9]
    return int(found.max()) if len(found) else 1


def upscale_factor(
    region: Any,
    *,
    tolerance: float = TOLERANCE,
    floor: float = FLOOR,
    max_factor: int = MAX_FACTOR,
) -> int:
    """How many times the face region was enlarged by resampling (1: not found enlarged).

    Parameters
    ----------
    region
        Pixels of the face's box in the image as sent (:func:`face_region`), grey or RGB.
    tolerance
        Residual allowed, as a share of the region's own detail along the axis.
    floor
        Residual always allowed, in grey levels squared (the 8-bit rounding of the enlarged
        pixels).
    max_factor
        The largest factor tried.

    Returns
    -------
    int
        The largest factor found on both axes; 1 when none is, or when the region is too small
        or too flat to tell (under :data:`MIN_DETAIL`: left to the sharpness bound).
    """
    a = np.asarray(region, dtype=np.float64)
    g = a @ GREY if a.ndim == 3 else a
    if g.ndim != 2 or min(g.shape) < 2 * MIN_BLOCKS:
        return 1
    kw = {"tolerance": tolerance, "floor": floor, "max_factor": max_factor}
    across = _axis_factor(g, **kw)
    if across == 1:
        return 1
    return min(across, _axis_factor(g.T, **kw))
