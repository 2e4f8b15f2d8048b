"""SynthFaces rendering: one photograph of an :class:`Identity` under per-image nuisance.

A face is a list of polygons and strokes in 3-D *face units* (see :mod:`synth_identity`): the
face outline is the silhouette of an ellipsoid cut to the identity's jaw shape, features sit on
its surface, the nose tip stands out. A :class:`View` (head rotation, scale and shift, light,
expression, glasses, occluder, blur, sensor noise, JPEG quality, background clutter) is drawn
per photograph. All points are lifted to 3-D and projected by a weak-perspective camera in one
compiled step and rasterised, anti-aliased, in one call (:mod:`visage_ml.data.raster`). The
image is then lit (Lambert shading of the head ellipsoid plus a gradient over the frame),
blurred, optionally flattened by the group's contrast knob, noised and JPEG-compressed. The
true 5 landmarks (eye centres, nose tip, mouth corners; the subject's right eye on the image's
left, as in :data:`visage_ml.preprocess.TEMPLATE_112`) go through the same projection.

Speed (SynthFaces must render hundreds of faces per second per core): what no photograph
changes is prepared once per identity (:func:`_kit`), the nuisance is drawn in two random
calls, the pixel work is compiled (numba), and the float canvas is a per-thread scratch array.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import simplejpeg
from PIL import Image

from visage_ml.data import raster
from visage_ml.data.synth_identity import Appearance, Identity

RGB = tuple[float, float, float]
SURF, SIL, FLAT = 0, 1, 2  # how a 2-D face-plane point is lifted to 3-D

CLOTHES: tuple[RGB, ...] = (
    (40.0, 48.0, 70.0),
    (150.0, 30.0, 36.0),
    (30.0, 90.0, 60.0),
    (210.0, 210.0, 205.0),
    (25.0, 25.0, 28.0),
    (90.0, 90.0, 96.0),
    (200.0, 160.0, 60.0),
    (70.0, 110.0, 170.0),
    (120.0, 70.0, 110.0),
    (180.0, 120.0, 90.0),
)
OCCLUDERS: tuple[str, ...] = ("hand", "scarf", "cap", "object", "sunglasses")
_OCCLUDER_P = np.array([0.3, 0.22, 0.2, 0.2, 0.08])
EXPRESSIONS: tuple[str, ...] = ("neutral", "smile", "open", "frown", "surprise")
_EXPRESSION_P = np.array([0.2, 0.38, 0.18, 0.12, 0.12])
_SIDES = (-1.0, 1.0)


def _cdf(p: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(p)
    return cdf / cdf[-1]


_OCCLUDER_CDF = _cdf(_OCCLUDER_P)
_EXPRESSION_CDF = _cdf(_EXPRESSION_P)


@dataclass(frozen=True)
class View:
    """Per-photograph nuisance (angles in radians, strengths 0..1 unless stated)."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    scale: float = 1.0  # face size multiplier
    shift: tuple[float, float] = (0.0, 0.0)  # head centre offset, fraction of the frame
    light_azimuth: float = 0.0
    light_side: float = 0.3  # 0 = frontal light, larger = more from the side
    light_level: float = 1.0  # brightness multiplier
    ambient: float = 0.6
    tint: RGB = (1.0, 1.0, 1.0)
    expression: str = "neutral"
    expression_amount: float = 0.0
    gaze: tuple[float, float] = (0.0, 0.0)
    blink: bool = False
    glasses: bool = False
    makeup: bool = False
    occluder: str = "none"
    occluder_amount: float = 0.0
    occluder_colour: RGB = (128.0, 128.0, 128.0)
    occluder_side: float = 1.0
    occluder_angle: float = 0.0
    clothes: RGB = CLOTHES[0]
    hair_mess: float = 0.0
    blur: float = 0.0  # box-blur radius, output pixels
    noise: float = 0.0  # sensor noise standard deviation, 0..255 scale
    jpeg_quality: int = 95
    clutter: float = 0.0
    contrast: float = 1.0  # the group's contrast multiplier (<1: dim and flat)


@dataclass(frozen=True)
class Rendered:
    """A rendered face: RGB pixels, true landmarks (5x2, x,y), face box, optional alpha mask."""

    image: np.ndarray  # uint8 (h, w, 3)
    landmarks: np.ndarray
    box: tuple[float, float, float, float]
    mask: Image.Image | None


def effective_difficulty(
    difficulty: Mapping[str, object], extra: float
) -> dict[str, float | tuple[int, int]]:
    """Nuisance strengths after adding a group's extra difficulty ``extra`` (clipped to 1).

    JPEG quality bounds are lowered towards 10 in proportion to ``extra``.
    """
    out: dict[str, float | tuple[int, int]] = {}
    for key, value in difficulty.items():
        if key == "jpeg_quality":
            lo, hi = value  # type: ignore[misc]
            out[key] = (round(lo - extra * max(lo - 10, 0)), round(hi - extra * max(hi - 10, 0)))
        else:
            out[key] = min(1.0, float(value) + extra)  # type: ignore[arg-type]
    return out


def _choose(q: float, cdf: np.ndarray) -> int:
    """Index drawn with probabilities ``p`` (``cdf = _cdf(p)``) for a uniform draw ``q``."""
    return int(cdf.searchsorted(q, side="right"))


def sample_view(
    rng: np.random.Generator,
    difficulty: Mapping[str, float | tuple[int, int]],
    *,
    appearance: Appearance,
    contrast: float = 1.0,
) -> View:
    """Draw the nuisance of one photograph.

    Parameters
    ----------
    rng
        The photograph's random stream.
    difficulty
        Strengths from :func:`effective_difficulty` (the keys of ``SynthDifficulty``).
    appearance
        The person's stable look (glasses and make-up habits).
    contrast
        The group's illumination contrast multiplier.

    Returns
    -------
    View
        Pose, light, expression, accessories, occluder and image degradations.
    """
    d = difficulty
    pose = float(d["pose"])
    ss = float(d["scale_shift"])
    illum = float(d["illumination"])
    expr = float(d["expression"])
    occ = float(d["occlusion"])
    lo, hi = d["jpeg_quality"]  # type: ignore[misc]
    lo, hi = min(lo, hi), max(lo, hi)
    # All draws at once, always the same number (one call each instead of thirty).
    q = rng.random(23).tolist()
    z = rng.standard_normal(10).tolist()
    tri = [min(1.0, max(-1.0, 0.5 * v)) for v in z[:7]]  # in [-1, 1], concentrated near 0

    expression, amount = "neutral", 0.0
    if q[0] < 0.25 + 0.75 * expr:
        expression = EXPRESSIONS[_choose(q[1], _EXPRESSION_CDF)]
        amount = (0.3 + 0.7 * q[2]) * min(1.0, 0.4 + expr)
    occluder, occ_amount = "none", 0.0
    if q[3] < occ:
        occluder = OCCLUDERS[_choose(q[4], _OCCLUDER_CDF)]
        occ_amount = (0.3 + 0.7 * q[5]) * min(1.0, 0.5 + occ)
    blur = 0.0
    if q[6] < float(d["blur"]):
        blur = 0.3 + (0.2 + 1.5 * float(d["blur"])) * q[7]
    warm = 0.06 * illum * z[7]
    return View(
        yaw=tri[0] * math.radians(44) * pose,
        pitch=tri[1] * math.radians(28) * pose,
        roll=tri[2] * math.radians(30) * pose,
        scale=math.exp(tri[3] * 0.3 * ss),
        shift=(tri[4] * 0.12 * ss, tri[5] * 0.1 * ss),
        light_azimuth=2 * math.pi * q[8],
        light_side=q[9] * (0.15 + 1.4 * illum),
        light_level=math.exp(tri[6] * 0.8 * illum),
        ambient=0.68 + 0.17 * q[10] - 0.2 * illum,
        tint=(1.0 + warm, 1.0, 1.0 - warm),
        expression=expression,
        expression_amount=amount,
        gaze=(0.25 * z[8], 0.15 * z[9]),
        blink=q[11] < 0.03 * (1.0 + expr),
        glasses=q[12] < appearance.glasses_p,
        makeup=q[13] < appearance.makeup_p,
        occluder=occluder,
        occluder_amount=occ_amount,
        occluder_colour=(20 + 215 * q[14], 20 + 215 * q[15], 20 + 215 * q[16]),
        occluder_side=_SIDES[int(2 * q[17])],
        occluder_angle=-0.6 + 1.2 * q[18],
        clothes=CLOTHES[int(len(CLOTHES) * q[19])],
        hair_mess=-1.0 + 2.0 * q[20],
        blur=blur,
        noise=q[21] * 10.0 * float(d["noise"]),
        jpeg_quality=lo + int((hi - lo + 1) * q[22]),
        clutter=float(d["clutter"]),
        contrast=float(contrast),
    )


# ---------------------------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------------------------


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``R_roll @ R_pitch @ R_yaw`` (yaw about y, pitch about x, roll about z), multiplied out."""
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    return np.array(
        [
            [cr * cy + sr * sp * sy, -sr * cp, cr * sy - sr * sp * cy],
            [sr * cy - cr * sp * sy, cr * cp, sr * sy + cr * sp * cy],
            [-cp * sy, -sp, cp * cy],
        ]
    )


@lru_cache(maxsize=64)
def _unit_circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.cos(t), np.sin(t)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 20) -> np.ndarray:
    c, s = _unit_circle(n)
    return _xy(cx + rx * c, cy + ry * s)


@lru_cache(maxsize=64)
def _arc_trig(a0: float, a1: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(a0, a1, n)
    return np.cos(t), np.sin(t)


def _arc(
    cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 16
) -> np.ndarray:
    c, s = _arc_trig(a0, a1, n)
    return _xy(cx + rx * c, cy + ry * s)


def _xy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(n, 2)`` array of points (a leaner ``np.stack([x, y], axis=1)``)."""
    out = np.empty((len(x), 2))
    out[:, 0] = x
    out[:, 1] = y
    return out


@lru_cache(maxsize=1)
def _curls() -> np.ndarray:
    """Angles (top and sides of the head) and radial positions of the curls of curly hair."""
    rng = np.random.default_rng(11)
    return _xy(rng.uniform(math.pi - 0.5, 2 * math.pi + 0.5, 44), rng.uniform(0.15, 0.95, 44))


@lru_cache(maxsize=1)
def _tufts() -> np.ndarray:
    """Fixed positions (x in -1..1, y in 0..1) of beard tufts."""
    rng = np.random.default_rng(13)
    return _xy(rng.uniform(-1.0, 1.0, 70), rng.uniform(0.0, 1.0, 70))


@lru_cache(maxsize=16)
def _ramp(n: int) -> np.ndarray:
    """``n`` points from 0 to 1."""
    return np.linspace(0.0, 1.0, n)


@lru_cache(maxsize=64)
def _bell(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = _ramp(n)
    return t, np.sin(math.pi * t)


def _curve(
    p0: tuple[float, float], p1: tuple[float, float], bulge: float, n: int = 12
) -> np.ndarray:
    """Points from ``p0`` to ``p1`` bent by ``bulge`` (face units, + = downwards mid-way)."""
    t, bell = _bell(n)
    return _xy(p0[0] + (p1[0] - p0[0]) * t, p0[1] + (p1[1] - p0[1]) * t + bulge * bell)


def _shade(c: RGB, k: float) -> RGB:
    return (c[0] * k, c[1] * k, c[2] * k)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t)


@dataclass(frozen=True)
class _Layer:
    """Recorded primitives that no photograph changes, replayed into each photograph."""

    pts: np.ndarray  # (n, 2) face-plane points
    modes: np.ndarray  # (n,) how each point is lifted
    dz: np.ndarray  # (n,) depth offsets
    ops: tuple[tuple[int, int, int, float, bool], ...]  # kind, start, end, size, silhouette
    colours: tuple[tuple[float, float, float, float], ...]


class _Recorder:
    """Face-unit primitives in drawing order: points, how to lift them, and what to draw.

    Sizes (line widths, dot radii) stay in face units until rasterising, so a recording does
    not depend on the photograph's scale and can be replayed (:class:`_Layer`).
    """

    def __init__(self) -> None:
        self._pts: list[np.ndarray] = []
        self._counts: list[int] = []
        self._modes: list[int] = []
        self._dz: list[float] = []
        self._bodies: list[bool] = []
        # Points whose mode or depth is given per point: (start, modes, dz).
        self._patches: list[tuple[int, np.ndarray | None, np.ndarray | None]] = []
        self._ops: list[tuple[int, int, int, float, bool]] = []
        self._colours: list[tuple[float, float, float, float]] = []
        self._n = 0

    def _add(
        self,
        pts: np.ndarray,
        mode: int | np.ndarray,
        dz: float | np.ndarray,
        body: bool = False,
    ) -> tuple[int, int]:
        start = self._n
        self._n += len(pts)
        self._pts.append(pts)
        self._counts.append(len(pts))
        self._bodies.append(body)
        mode_array, dz_array = isinstance(mode, np.ndarray), isinstance(dz, np.ndarray)
        self._modes.append(0 if mode_array else mode)  # type: ignore[arg-type]
        self._dz.append(0.0 if dz_array else dz)  # type: ignore[arg-type]
        if mode_array or dz_array:
            self._patches.append(
                (start, mode if mode_array else None, dz if dz_array else None)  # type: ignore[arg-type]
            )
        return start, self._n

    def block(self, pts: np.ndarray, mode: int | np.ndarray, dz: float | np.ndarray) -> int:
        """Add points for several primitives (see :meth:`op`); returns the first row."""
        return self._add(pts, mode, dz)[0]

    def op(
        self,
        kind: str,
        rows: tuple[int, int],
        colour: RGB,
        alpha: float = 255.0,
        *,
        size: float = 0.0,
        sil: bool = False,
    ) -> None:
        """Draw recorded rows: a ``"poly"``, a ``"line"`` ``size`` wide or ``"dots"`` of
        radius ``size`` (face units)."""
        self._ops.append((_KIND[kind], rows[0], rows[1], size, sil))
        self._colours.append((*colour, alpha))

    def poly(
        self,
        pts: np.ndarray,
        colour: RGB,
        alpha: float = 255.0,
        *,
        mode: int | np.ndarray = SURF,
        dz: float | np.ndarray = 0.0,
        sil: bool = False,
        body: bool = False,
    ) -> None:
        s, e = self._add(pts, mode, dz, body)
        self._ops.append((raster.POLY, s, e, 0.0, sil))
        self._colours.append((*colour, alpha))

    def line(
        self,
        pts: np.ndarray,
        colour: RGB,
        alpha: float,
        width: float,
        *,
        mode: int | np.ndarray = SURF,
        dz: float | np.ndarray = 0.0,
        closed: bool = False,
    ) -> None:
        if closed:
            pts = np.concatenate([pts, pts[:1]])
        s, e = self._add(pts, mode, dz)
        self._ops.append((raster.LINE, s, e, width, False))
        self._colours.append((*colour, alpha))

    def dots(
        self,
        pts: np.ndarray,
        radius: float,
        colour: RGB,
        alpha: float,
        *,
        mode: int = SURF,
        dz: float | np.ndarray = 0.0,
    ) -> None:
        s, e = self._add(pts, mode, dz)
        self._ops.append((raster.DOTS, s, e, radius, False))
        self._colours.append((*colour, alpha))

    def mark(self, pts: np.ndarray, mode: int, dz: float | np.ndarray = 0.0) -> slice:
        """Points to project but not draw (landmarks, the face box); their rows in ``flush``'s
        result."""
        s, e = self._add(pts, mode, dz)
        return slice(s, e)

    def replay(self, layer: _Layer) -> None:
        """Record a layer's primitives again (after what is recorded so far)."""
        s, _ = self._add(layer.pts, layer.modes, layer.dz)
        self._ops.extend((k, a + s, b + s, size, sil) for k, a, b, size, sil in layer.ops)
        self._colours.extend(layer.colours)

    def freeze(self) -> _Layer:
        """What was recorded, as a read-only layer to replay."""
        if any(self._bodies):
            raise ValueError("a layer cannot hold body parts (they turn with the body)")
        pts, modes, dz, _ = self._arrays()
        for a in (pts, modes, dz):
            a.flags.writeable = False
        return _Layer(pts, modes, dz, tuple(self._ops), tuple(self._colours))

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        counts = self._counts
        pts = np.concatenate(self._pts) if self._pts else np.empty((0, 2))
        modes = np.repeat(np.asarray(self._modes, dtype=np.int8), counts)
        dz = np.repeat(np.asarray(self._dz, dtype=np.float64), counts)
        bodies = np.repeat(np.asarray(self._bodies), counts)
        for start, m, d in self._patches:
            if m is not None:
                modes[start : start + len(m)] = m
            if d is not None:
                dz[start : start + len(d)] += d
        return pts, modes, dz, bodies


class _Painter(_Recorder):
    """Records face-unit primitives, then lifts, projects and rasterises them in one pass.

    Positions are output pixels; :func:`visage_ml.data.raster.draw_all` draws the whole list
    anti-aliased in one call.
    """

    def __init__(
        self,
        *,
        app: Appearance,
        view: View,
        centre: tuple[float, float],
        unit: float,
    ) -> None:
        super().__init__()
        self.app = app
        self.cx, self.cy = centre
        self.unit = unit
        self.rot = _rotation(view.yaw, view.pitch, view.roll)
        self.body_rot = _rotation(0.3 * view.yaw, 0.0, 0.35 * view.roll)
        # Direction towards the camera in head coordinates, for the silhouette.
        self.view_dir = self.rot[2]
        self.focal = 9.0

    # -- rasterising -------------------------------------------------------------------------
    def flush(self, canvas: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Draw everything recorded onto ``canvas`` (float32 planes ``(3, h, w)``) and the
        silhouette onto ``mask`` (float32 ``(h, w)``, or None); returns the canvas positions of
        all points."""
        pts, modes, dz, bodies = self._arrays()
        a = self.app
        xy = raster.lift_project(
            pts,
            modes,
            dz,
            bodies,
            np.array([a.face_w, a.face_top, a.chin, a.depth]),
            self.view_dir,
            self.rot,
            self.body_rot,
            np.array([self.focal, self.cx, self.cy, self.unit]),
        )
        if self._ops:
            raster.draw_all(
                canvas,
                mask if mask is not None else _NO_MASK,
                xy,
                np.array(self._ops, dtype=np.float64),
                np.array(self._colours, dtype=np.float64),  # one compiled variant, not two
                self.unit,
                raster.SUB,
            )
        return xy


_KIND = {"poly": raster.POLY, "line": raster.LINE, "dots": raster.DOTS}
_NO_MASK = np.zeros((1, 1), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Face parts
# ---------------------------------------------------------------------------------------------
#
# Whatever no photograph changes is prepared once per identity (:func:`_kit`): fixed parts are
# recorded as layers, and parts that move with the expression, the gaze, the light or the hair
# volume are kept as shapes, points linear in a few numbers. A photograph then costs one small
# matrix product per part instead of dozens of tiny numpy operations.

_Part = tuple[str, np.ndarray, int, float | np.ndarray]  # name, points, lift mode, depth


class _Shape(NamedTuple):
    """Face-plane points that depend linearly on a few per-photograph numbers."""

    basis: np.ndarray  # (1 + k, 2 n): the points for zeros, then the change per unit number
    modes: np.ndarray  # (n,) how each point is lifted
    dz: np.ndarray  # (n,) depth offsets
    parts: dict[str, tuple[int, int]]  # name -> its rows

    def points(self, *numbers: float) -> np.ndarray:
        return (np.array((1.0, *numbers)) @ self.basis).reshape(-1, 2)

    def record(self, p: _Recorder, pts: np.ndarray) -> _Rows:
        """Add ``pts`` (from :meth:`points`) to ``p``; returns where each part went."""
        return _Rows(self.parts, p.block(pts, self.modes, self.dz))


class _Rows:
    """Rows of a shape's parts in a recording."""

    __slots__ = ("offset", "parts")

    def __init__(self, parts: dict[str, tuple[int, int]], offset: int) -> None:
        self.parts, self.offset = parts, offset

    def __getitem__(self, name: str) -> tuple[int, int]:
        a, b = self.parts[name]
        return a + self.offset, b + self.offset


def _shape(geometry: Callable[..., list[_Part]], k: int) -> _Shape:
    """Tabulate ``geometry`` (points linear in its ``k`` arguments) as a :class:`_Shape`."""
    evaluations = [geometry(*row) for row in np.concatenate([np.zeros((1, k)), np.eye(k)]).tolist()]
    parts: dict[str, tuple[int, int]] = {}
    counts, modes, depths = [], [], []
    n = 0
    for name, pts, mode, depth in evaluations[0]:
        parts[name] = (n, n + len(pts))
        n += len(pts)
        counts.append(len(pts))
        modes.append(mode)
        depths.append(depth)
    no_points = [np.empty((0, 2))]
    basis = np.array([np.concatenate([q[1] for q in e] or no_points).ravel() for e in evaluations])
    basis[1:] -= basis[0]
    # A part's depth is a number or one per point.
    dz = [np.broadcast_to(d, (c,)) for d, c in zip(depths, counts, strict=True)]
    modes_ = np.repeat(np.array(modes, dtype=np.int8), counts)
    shape = _Shape(basis, modes_, np.concatenate(dz or [np.empty(0)]).astype(float), parts)
    for a in shape[:3]:
        a.flags.writeable = False
    return shape


def _outline(app: Appearance, n: int = 64) -> np.ndarray:
    """2-D face outline: rounded skull above the origin, the identity's jaw below."""
    c, s = _unit_circle(n)
    up = s < 0
    e = 2.0 / app.jaw_n
    x = np.where(
        up,
        app.face_w * c * (1.0 - 0.07 * s**2),
        app.face_w * np.sign(c) * np.abs(c) ** e * (1.0 - app.chin_taper * s**4),
    )
    y = np.where(up, app.face_top * s, app.chin * np.abs(s) ** e * np.sign(s))
    return _xy(x, y)


def _hairline(app: Appearance, n: int = 17) -> np.ndarray:
    """Hairline across the forehead, right temple to left temple (a fringe stops at the brows)."""
    temple_y = app.eye_y - 0.12
    xs = np.linspace(0.86 * app.face_w, -0.86 * app.face_w, n)
    q = np.abs(xs) / (0.86 * app.face_w)
    hairline = max(app.hairline, 0.15 - app.face_top)
    y = hairline + (temple_y - hairline) * q**3
    if app.fringe > 0:
        brow_top = app.eye_y - app.brow_gap - 0.08
        off = xs - 0.35 * app.hair_part
        drop = app.fringe * (brow_top - hairline) * np.clip(1.0 - (off / 0.95) ** 2, 0.0, 1.0)
        fringe = hairline + drop + 0.025 * app.fringe * np.cos(np.arange(n) * 2.6)
        y = np.where(fringe > y, np.minimum(fringe, brow_top), y)
    return _xy(xs, y)


def _hair_volume(app: Appearance, view: View) -> tuple[float, float]:
    vol = app.hair_volume * (1.0 + 0.2 * view.hair_mess)
    return {
        "buzz": (0.02, 0.03),
        "short": (0.05, vol),
        "side_part": (0.07, vol + 0.08),
        "bob": (vol + 0.08, vol + 0.06),
        "long": (vol + 0.04, vol + 0.04),
        "curly": (vol + 0.26, vol + 0.34),
        "bun": (0.04, 0.06),
        "bald": (0.0, 0.0),
    }[app.hair_style]


def _hair_back(app: Appearance, vside: float, vtop: float) -> list[_Part]:
    """Hair behind the head (curly, bun, bob, long), in the hair volume (vside, vtop)."""
    style = app.hair_style
    if style == "curly":
        pts = _ellipse(0.0, 0.1, app.face_w + vside + 0.06, app.face_top + vtop + 0.25, 40)
        # The bottom is cut at y = 0.9 after the volume is applied (see _draw_hair_back).
        return [("back", pts * (1.0 + 0.03 * np.sin(np.arange(40) * 2.9))[:, None], FLAT, -0.5)]
    if style == "bun":
        return [("back", _ellipse(0.0, -app.face_top - 0.16, 0.34, 0.28, 24), FLAT, -0.35)]
    if style in ("bob", "long"):
        length = 0.8 if style == "bob" else app.hair_length
        w_top = app.face_w + vside + 0.04
        w_bot = w_top + (0.1 if style == "bob" else 0.28)
        top = _arc(0.0, 0.0, w_top, app.face_top + vtop + 0.04, math.pi, 2 * math.pi, 18)
        right = np.array([[w_top + 0.02, 0.4], [w_bot, length - 0.12], [w_bot - 0.12, length]])
        bottom = np.array([[0.6, length + 0.05], [-0.6, length + 0.05]])
        left = right[::-1] * np.array([-1.0, 1.0])
        return [("back", np.concatenate([top, right, bottom, left]), FLAT, -0.4)]
    return []


def _draw_hair_back(p: _Recorder, kit: _Kit, vside: float, vtop: float) -> None:
    if kit.hair_back is None:
        return
    pts = kit.hair_back.points(vside, vtop)
    if kit.app.hair_style == "curly":
        np.minimum(pts[:, 1], 0.9, out=pts[:, 1])
    rows = kit.hair_back.record(p, pts)
    p.op("poly", rows["back"], _shade(kit.app.hair_colour, 0.8), sil=True)


def _body_parts(app: Appearance) -> tuple[np.ndarray, ...]:
    """Neck, shoulders, collar and the two folds of the clothes."""
    nw = app.neck_w
    neck = np.array([[-nw, 0.6], [nw, 0.6], [nw * 1.08, 2.3], [-nw * 1.08, 2.3]])
    shoulders = np.array(
        [
            [-nw * 1.15, 1.85],
            [nw * 1.15, 1.85],
            [2.1, 2.2],
            [2.8, 2.9],
            [3.0, 30.0],
            [-3.0, 30.0],
            [-2.8, 2.9],
            [-2.1, 2.2],
        ]
    )
    # The collar starts just above the shoulders' edge: a sliver of clothes between the two
    # would show as a hard line at the output size.
    collar = np.array([[-nw * 0.95, 1.84], [nw * 0.95, 1.84], [0.0, 2.3]])
    fold = np.array([[-1.6, 2.5], [-1.2, 3.3]])
    return neck, shoulders, collar, fold, fold * np.array([-1.0, 1.0])


def _draw_body(p: _Recorder, kit: _Kit, view: View) -> None:
    neck, shoulders, collar, fold_l, fold_r = kit.body
    skin_dark = _shade(kit.app.skin, 0.8)
    p.poly(neck, skin_dark, mode=FLAT, dz=-0.25, sil=True)
    p.poly(shoulders, view.clothes, mode=FLAT, dz=-0.3, sil=True, body=True)
    p.poly(collar, _shade(skin_dark, 0.95), mode=FLAT, dz=-0.28, body=True)
    crease = _shade(view.clothes, 0.6)
    p.line(fold_l, crease, 120, 0.03, mode=FLAT, dz=-0.28)
    p.line(fold_r, crease, 120, 0.03, mode=FLAT, dz=-0.28)


def _draw_ears(p: _Recorder, app: Appearance) -> None:
    es = app.ear_size
    for s in (-1.0, 1.0):
        cx = s * app.face_w * 0.97
        cy = app.eye_y + 0.27
        ear = _ellipse(cx + s * 0.05 * es, cy, 0.11 * es, 0.24 * es, 18)
        p.poly(ear, _shade(app.skin, 0.9), mode=FLAT, dz=-0.05, sil=True)
        inner = _ellipse(cx + s * 0.06 * es, cy, 0.05 * es, 0.14 * es, 12)
        p.poly(inner, _shade(app.skin, 0.68), 150, mode=FLAT, dz=-0.04)


def _face_shading(p: _Recorder, app: Appearance) -> None:
    """Soft shadows that make a face read as a face: eye sockets, under the nose and lip."""
    dark = _shade(app.skin, 0.45)
    for s in (-1.0, 1.0):
        socket = _ellipse(s * app.eye_sep, app.eye_y - 0.02, app.eye_w * 1.55, 0.13, 18)
        p.poly(socket, dark, 34)
        socket = _ellipse(s * app.eye_sep, app.eye_y - 0.01, app.eye_w * 1.25, 0.09, 16)
        p.poly(socket, dark, 30)
    ny = app.eye_y + app.nose_y
    my = app.eye_y + app.mouth_y
    p.poly(_ellipse(0.0, (ny + my) / 2 - 0.01, app.nose_w * 0.9, (my - ny) * 0.45, 14), dark, 26)
    p.poly(_ellipse(0.0, my + app.lip_lower + 0.07, app.mouth_w * 0.65, 0.06, 14), dark, 34)


def _cheeks(app: Appearance) -> tuple[np.ndarray, ...]:
    y = app.eye_y + app.nose_y * 0.75
    return tuple(_ellipse(s * (app.eye_sep + 0.05), y, 0.2, 0.13, 14) for s in (-1.0, 1.0))


def _draw_beard(p: _Recorder, app: Appearance, outline: np.ndarray) -> None:
    """Stubble or a full beard along the jaw (lips and moustache are drawn over it)."""
    if app.beard not in ("stubble", "full"):
        return
    my = app.eye_y + app.mouth_y
    ny = app.eye_y + app.nose_y
    top_y = app.eye_y + 0.4
    lower = outline[outline[:, 1] > top_y]  # right -> chin -> left
    if app.beard == "full":  # a full beard stands out below the jaw line
        lower = lower + np.array([0.0, 0.07]) * (lower[:, 1:2] > 0.8)
    inner = np.array(
        [
            [-app.face_w * 0.92, top_y],
            [-(app.mouth_w + 0.15), my - 0.1],
            [-(app.nose_w + 0.02), ny + 0.11],
            [app.nose_w + 0.02, ny + 0.11],
            [app.mouth_w + 0.15, my - 0.1],
            [app.face_w * 0.92, top_y],
        ]
    )
    pts = np.concatenate([lower, inner])
    modes = np.concatenate([np.full(len(lower), SIL), np.full(len(inner), SURF)])
    hair = app.hair_colour
    if app.beard == "stubble":
        colour, alpha = _mix(_shade(app.skin, 0.45), hair, 0.3), 30 + 40 * app.beard_density
    else:
        colour, alpha = hair, 100 + 90 * app.beard_density
    p.poly(pts, colour, alpha, mode=modes, dz=0.01)
    # Texture: a fixed scatter of hair tufts over the jaw, clear of the mouth.
    u, v = _tufts()[:, 0], _tufts()[:, 1]
    ys = top_y + 0.15 + v * (app.chin - top_y - 0.1)
    half = app.face_w * np.sqrt(np.clip(1.0 - (ys / app.chin) ** 2, 0.0, 1.0)) * 0.85
    xs = u * half
    keep = (np.abs(xs) > app.mouth_w + 0.06) | (np.abs(ys - my) > 0.12)
    keep &= (ys > my - 0.02) | (np.abs(xs) > app.mouth_w + 0.12)
    if app.beard == "stubble":
        tuft = _shade(colour, 0.8)
    else:
        tuft = _shade(hair, 0.6) if sum(hair) > 150 else _shade(hair, 1.8)
    p.dots(_xy(xs[keep], ys[keep]), 0.02, tuft, 0.6 * alpha)


def _folds(app: Appearance) -> tuple[np.ndarray, ...]:
    """Nasolabial folds, from beside the nose to beyond the mouth corners."""
    ny = app.eye_y + app.nose_y
    my = app.eye_y + app.mouth_y
    folds = []
    for s in (-1.0, 1.0):
        fold = _curve(
            (s * (app.nose_w + 0.07), ny - 0.03),
            (s * (app.mouth_w + 0.08), my + 0.1),
            0.0,
            7,
        )
        fold[:, 0] += s * 0.04 * _bell(7)[1]
        folds.append(fold)
    return tuple(folds)


def _draw_age(p: _Recorder, app: Appearance) -> None:
    """Age lines: forehead, crow's feet, eye bags, marionette lines (same colour as the folds,
    so the order of the two does not matter)."""
    w = app.wrinkles
    if w <= 0.05:
        return
    dark = _shade(app.skin, 0.55)
    my = app.eye_y + app.mouth_y
    brow_y = app.eye_y - app.brow_gap
    for k in range(1 + int(2.5 * w)):
        y = brow_y - 0.17 - 0.1 * k
        if y < app.hairline + 0.06:
            break
        p.line(_curve((-0.4, y + 0.02), (0.4, y + 0.02), -0.03, 9), dark, 75 * w, 0.011, dz=0.01)
    for s in (-1.0, 1.0):
        ox = s * (app.eye_sep + app.eye_w + 0.03)
        for k in (-1, 0, 1):
            cf = np.array([[ox, app.eye_y + 0.02 * k], [ox + s * 0.08, app.eye_y + 0.045 * k]])
            p.line(cf, dark, 90 * w, 0.009, dz=0.01)
        bag = _curve(
            (s * (app.eye_sep - app.eye_w * 0.6), app.eye_y + app.eye_h + 0.05),
            (s * (app.eye_sep + app.eye_w * 0.7), app.eye_y + app.eye_h + 0.03),
            0.03,
            8,
        )
        p.line(bag, dark, 90 * w, 0.012, dz=0.01)
        if w > 0.5:
            mar = np.array(
                [[s * (app.mouth_w + 0.02), my + 0.05], [s * (app.mouth_w + 0.05), my + 0.28]]
            )
            p.line(mar, dark, 130 * (w - 0.5), 0.014, dz=0.01)


def _eyes(app: Appearance, eh: float) -> list[_Part]:
    """Both eyes for an opening ``eh``; irises and glints centred (the gaze moves them)."""
    t, bell = _bell(11)
    hump = bell**0.9
    r = app.iris_r
    lids: list[_Part] = []
    irises: list[_Part] = []
    for i, s in enumerate((-1.0, 1.0)):
        cx, cy = s * app.eye_sep, app.eye_y
        inner = (cx - s * app.eye_w, cy + 0.2 * app.eye_tilt * app.eye_w)
        outer = (cx + s * app.eye_w, cy - app.eye_tilt * app.eye_w)
        xs = inner[0] + (outer[0] - inner[0]) * t
        base = inner[1] + (outer[1] - inner[1]) * t + 0.35 * eh
        upper = _xy(xs, base - eh * hump * (1.15 - 0.15 * t) * 1.35)
        lower = _xy(xs, base + 0.5 * eh * bell)
        crease = upper[2:-1, 1] - 0.045 * (1 + 0.3 * app.wrinkles)
        lids += [
            (f"white{i}", np.concatenate([upper, lower[::-1]]), SURF, -0.02),
            # Lids cover the parts of the iris outside the opening.
            (f"lid{i}", np.concatenate([_xy(xs, upper[:, 1] - 0.1), upper[::-1]]), SURF, 0.0),
            (f"under{i}", np.concatenate([lower, _xy(xs, lower[:, 1] + 0.07)[::-1]]), SURF, 0.0),
            (f"lash{i}", upper, SURF, 0.005),
            (f"low{i}", lower[1:-1], SURF, 0.005),
            (f"crease{i}", _xy(xs[2:-1], crease), SURF, 0.005),
        ]
        irises += [
            (f"iris{i}", _ellipse(cx, cy, r, r, 16), SURF, -0.015),
            (f"ring{i}", _ellipse(cx, cy, r * 0.7, r * 0.7, 12), SURF, -0.014),
            (f"pupil{i}", _ellipse(cx, cy, r * 0.4, r * 0.4, 10), SURF, -0.012),
            (f"glint{i}", np.array([[cx, cy - 0.35 * r]]), SURF, 0.0),
        ]
    return lids + irises  # the irises last: one block that the gaze moves


def _draw_eyes(p: _Recorder, kit: _Kit, view: View, light: np.ndarray) -> None:
    app = kit.app
    amt = view.expression_amount
    open_k = {
        "smile": 1.0 - 0.35 * amt,
        "surprise": 1.0 + 0.45 * amt,
        "frown": 1.0 - 0.2 * amt,
    }.get(view.expression, 1.0)
    if view.blink:
        open_k = 0.08
    eh = app.eye_h * open_k
    pts = kit.eyes.points(eh)
    # The gaze moves the irises, the light the glints on them.
    pts[kit.eyes.parts["iris0"][0] :] += (view.gaze[0] * app.eye_w * 0.3, view.gaze[1] * eh * 0.3)
    for g in ("glint0", "glint1"):
        pts[kit.eyes.parts[g][0], 0] += 0.35 * app.iris_r * float(light[0])
    rows = kit.eyes.record(p, pts)
    skin = app.skin
    lid, dark, crease = _shade(skin, 0.84), _shade(skin, 0.55), _shade(skin, 0.6)
    lash = 0.03 if view.makeup else 0.022
    for i in (0, 1):
        p.op("poly", rows[f"white{i}"], (226.0, 222.0, 216.0))
        if open_k > 0.2:
            p.op("poly", rows[f"iris{i}"], app.iris)
            p.op("poly", rows[f"ring{i}"], _shade(app.iris, 0.6), 150)
            p.op("poly", rows[f"pupil{i}"], (8.0, 8.0, 10.0))
            p.op("dots", rows[f"glint{i}"], (255.0, 255.0, 255.0), 210, size=0.012)
        p.op("poly", rows[f"lid{i}"], lid)
        p.op("poly", rows[f"under{i}"], skin)
        p.op("line", rows[f"lash{i}"], (18.0, 14.0, 13.0), 245, size=lash)
        p.op("line", rows[f"low{i}"], dark, 110, size=0.01)
        p.op("line", rows[f"crease{i}"], crease, 100, size=0.01)


def _brows(app: Appearance, lift: float, drop: float) -> list[_Part]:
    """Both brows, raised by ``lift`` and with their inner ends lowered by ``drop``."""
    t = np.linspace(0.0, 1.0, 10)
    arch = (
        app.brow_arch
        * np.sin(math.pi * np.minimum(t / 0.65, 1.0) * 0.5)
        * np.where(t < 0.65, 1.0, 1.0 - (t - 0.65) * 2.2)
    )
    thick = app.brow_thick * (1.1 - 0.65 * t)
    parts: list[_Part] = []
    for i, s in enumerate((-1.0, 1.0)):
        y0 = app.eye_y - app.brow_gap - lift
        x_in = s * (app.eye_sep - app.eye_w * 1.15)
        x_out = s * (app.eye_sep + app.eye_w * 1.25 * app.brow_len)
        xs = x_in + (x_out - x_in) * t
        ys = y0 - arch - app.brow_tilt * (t - 0.5) * 0.3 + drop * (1 - t) + 0.04 * t**2
        top = _xy(xs, ys - thick / 2)
        bot = _xy(xs, ys + thick / 2)
        parts.append((f"brow{i}", np.concatenate([top, bot[::-1]]), SURF, 0.02))
    return parts


def _draw_brows(p: _Recorder, kit: _Kit, view: View) -> None:
    amt = view.expression_amount
    lift = 0.07 * amt if view.expression == "surprise" else 0.0
    drop = 0.06 * amt if view.expression == "frown" else 0.0
    rows = kit.brows.record(p, kit.brows.points(lift, drop))
    for i in (0, 1):
        p.op("poly", rows[f"brow{i}"], kit.app.brow_colour, 235)


def _bridges(app: Appearance) -> tuple[np.ndarray, ...]:
    ny = app.eye_y + app.nose_y
    return tuple(
        np.array(
            [
                [s * 0.07, app.eye_y + 0.06],
                [s * 0.08, ny - 0.16],
                [s * app.nose_w * 0.75, ny - 0.04],
            ]
        )
        for s in (-1.0, 1.0)
    )


def _draw_nose_tip(p: _Recorder, app: Appearance) -> None:
    """Nostril wings, their rims, the nostrils, the tip and the shadow line below it."""
    ny = app.eye_y + app.nose_y
    nw = app.nose_w
    skin = app.skin
    dark = _shade(skin, 0.5)
    tip = app.nose_proj
    for s in (-1.0, 1.0):
        p.poly(
            _ellipse(s * nw * 0.78, ny - 0.005, nw * 0.36, 0.06, 14),
            _shade(skin, 0.9),
            dz=tip * 0.45,
        )
        rim = _arc(nw * 0.78, ny - 0.005, nw * 0.36, 0.06, -1.2, 1.9, 8) * np.array([s, 1.0])
        p.line(rim, dark, 120, 0.012, dz=tip * 0.46)
        p.poly(
            _ellipse(s * nw * 0.42, ny + 0.035, 0.05, 0.024, 10),
            (30.0, 18.0, 16.0),
            225,
            dz=tip * 0.6,
        )
    p.poly(_ellipse(0.0, ny - 0.03, nw * 0.48, 0.065, 16), _shade(skin, 1.04), dz=tip * 0.9)
    p.line(
        _curve((-nw * 0.5, ny + 0.075), (nw * 0.5, ny + 0.075), 0.01, 7),
        dark,
        80,
        0.018,
        dz=tip * 0.5,
    )


def _draw_nose(p: _Recorder, kit: _Kit, light: np.ndarray) -> None:
    app = kit.app
    tip = app.nose_proj
    dark = _shade(app.skin, 0.5)
    for s, bridge in zip((-1.0, 1.0), kit.bridges, strict=True):
        away = 0.5 + 0.5 * float(-s * light[0])  # the bridge's shadow falls away from the light
        p.line(bridge, dark, 35 + 95 * away, 0.022, dz=np.array([0.05, 0.6, 0.8]) * tip)
    p.replay(kit.nose)
    ny = app.eye_y + app.nose_y
    p.dots(np.array([[0.02 * float(light[0]), ny - 0.05]]), 0.02, (255.0, 250.0, 245.0), 55, dz=tip)


def _mouth(
    app: Appearance, w: float, corner_dy: float, curve: float, opening: float
) -> list[_Part]:
    """Lips, mouth opening, teeth, moustache and the 5 landmarks, for a mouth ``w`` half-wide
    with its corners raised by ``-corner_dy``, its line bent by ``curve``, open by ``opening``."""
    my = app.eye_y + app.mouth_y
    t, bell = _bell(13)
    u = 2.0 * t - 1.0  # -1 .. 1 across the mouth
    xs = w * u
    line_y = my + corner_dy * (1 - bell) + curve * bell
    bow = 0.35 * np.exp(-(((t - 0.5) / 0.08) ** 2))  # cupid's bow
    top = _xy(xs, line_y - app.lip_upper * bell**0.6 * (1.4 - bow) / 1.4 - 0.004)
    mid_up = _xy(xs, line_y - opening * 0.35 * bell)
    mid_lo = _xy(xs, line_y + opening * 0.65 * bell)
    bottom = _xy(xs, mid_lo[:, 1] + app.lip_lower * bell**0.7 + 0.004)
    teeth = _xy(mid_up[:, 0] * 0.85, mid_up[:, 1] + 0.002)
    teeth_lo = _xy(teeth[:, 0], teeth[:, 1] + 0.035 * bell)
    shine = _curve(
        (bottom[4, 0], bottom[4, 1] - 0.025), (bottom[-5, 0], bottom[-5, 1] - 0.025), 0.005, 5
    )
    # The moustache follows the upper lip, thickest in the middle.
    m_lower = _xy(xs * 1.08, top[:, 1] - 0.004 + 0.02 * u**4)
    m_upper = _xy(xs * 1.08, m_lower[:, 1] - (0.03 + 0.055 * (1.0 - u**2)))
    y0 = bottom[6, 1] + 0.05
    cap = np.array([[-0.42 * w, y0 + 0.04], [0.0, y0], [0.42 * w, y0 + 0.04]])
    ny = app.eye_y + app.nose_y
    landmarks = np.array(
        [
            [-app.eye_sep, app.eye_y],
            [app.eye_sep, app.eye_y],
            [0.0, ny - 0.02],
            [mid_up[0, 0], mid_up[0, 1]],
            [mid_up[-1, 0], mid_up[-1, 1]],
        ]
    )
    return [
        ("inside", np.concatenate([mid_up, mid_lo[::-1]]), SURF, -0.02),
        ("teeth", np.concatenate([teeth, teeth_lo[::-1]]), SURF, -0.01),
        ("upper", np.concatenate([top, mid_up[::-1]]), SURF, 0.03),
        ("lower", np.concatenate([mid_lo, bottom[::-1]]), SURF, 0.03),
        ("line", mid_up, SURF, 0.035),
        ("shine", shine, SURF, 0.036),
        ("moustache", np.concatenate([m_upper, m_lower[::-1]]), SURF, 0.035),
        ("cap", cap, SURF, 0.02),
        ("landmarks", landmarks, SURF, np.array([0.0, 0.0, 0.95 * app.nose_proj, 0.03, 0.03])),
    ]


def _mouth_numbers(app: Appearance, view: View) -> tuple[float, float, float, float]:
    """Half-width, corner lift, line curve and opening of the mouth for the expression."""
    amt = view.expression_amount
    corner_dy, widen, opening, curve = 0.0, 1.0, 0.0, 0.012
    if view.expression == "smile":
        corner_dy, widen, curve = -0.09 * amt, 1.0 + 0.2 * amt, 0.05 * amt
        opening = 0.045 * amt if amt > 0.55 else 0.0
    elif view.expression == "open":
        opening, widen = 0.09 * amt + 0.03, 1.0 - 0.12 * amt
    elif view.expression == "surprise":
        opening, widen = 0.12 * amt + 0.03, 1.0 - 0.28 * amt
    elif view.expression == "frown":
        corner_dy, curve = 0.05 * amt, -0.03 * amt
    return app.mouth_w * widen, corner_dy, curve, opening


def _draw_mouth(p: _Recorder, kit: _Kit, view: View) -> slice:
    """Mouth and moustache; returns the rows of the 5 landmarks."""
    app = kit.app
    w, corner_dy, curve, opening = _mouth_numbers(app, view)
    pts = kit.mouth.points(w, corner_dy, curve, opening)
    rows = kit.mouth.record(p, pts)
    lip = app.lip_colour
    if view.makeup:
        lip = _mix(lip, (170.0, 40.0, 60.0), 0.35)
    if opening > 0.005:  # the widest gap between the inner lip edges
        p.op("poly", rows["inside"], (45.0, 18.0, 20.0))
        if view.expression in ("smile", "open"):
            p.op("poly", rows["teeth"], (232.0, 228.0, 214.0))
    p.op("poly", rows["upper"], _shade(lip, 0.9))
    p.op("poly", rows["lower"], lip)
    p.op("line", rows["line"], _shade(lip, 0.4), 210, size=0.014)
    p.op("line", rows["shine"], (255.0, 235.0, 230.0), 45, size=0.014)
    if app.beard in ("moustache", "goatee", "full"):
        hair = _shade(app.hair_colour, 0.9)
        alpha = 110 + 90 * app.beard_density
        p.op("poly", rows["moustache"], hair, alpha)
        if app.beard == "goatee":
            outline = kit.outline
            chin = outline[(outline[:, 1] > 0.5) & (np.abs(outline[:, 0]) < 0.5 * w)]
            chin = chin[np.argsort(-chin[:, 0])]  # right -> left along the chin
            a, b = kit.mouth.parts["cap"]
            goatee = np.concatenate([chin, pts[a:b]])
            modes = np.concatenate([np.full(len(chin), SIL), np.full(b - a, SURF)])
            p.poly(goatee, hair, alpha, mode=modes, dz=0.02)
    return slice(*rows["landmarks"])


def _hair_front(app: Appearance, vside: float, vtop: float) -> list[_Part]:
    """Curtains and strands (bob, long), curls, sheen and top strands, the parting; for the
    hair volume (vside, vtop). The outline of the front hair is not linear in the volume and
    is made per photograph (:func:`_draw_front_hair`)."""
    style = app.hair_style
    rx, ry = app.face_w + vside, app.face_top + vtop
    parts: list[_Part] = []
    if style in ("bob", "long"):
        length = 0.8 if style == "bob" else min(app.hair_length, 1.6)
        for i, s in enumerate((-1.0, 1.0)):
            curtain = np.array(
                [
                    [s * app.face_w * 0.84, app.eye_y - 0.18],
                    [s * app.face_w * 0.95, 0.35],
                    [s * app.face_w * 1.0, length],
                    [s * (app.face_w + vside + 0.15), length + 0.05],
                    [s * (app.face_w + vside + 0.02), 0.2],
                    [s * (app.face_w + vside), app.eye_y - 0.3],
                ]
            )
            parts.append((f"curtain{i}", curtain, SIL, 0.0))
            # Strands run down each curtain, between its inner and outer edge.
            ys = np.linspace(app.eye_y - 0.2, length, 7)
            x_in = np.interp(ys, curtain[[0, 1, 2], 1], curtain[[0, 1, 2], 0] * s)
            x_out = np.interp(ys, curtain[[5, 4, 3], 1], curtain[[5, 4, 3], 0] * s)
            for j, f in enumerate((0.15, 0.4, 0.65, 0.88)):
                xs = s * (x_in + (x_out - x_in) * f) + 0.02 * np.sin(ys * 7 + j)
                parts.append((f"strand{i}{j}", _xy(xs, ys), SIL, 0.0))
            parts.append((f"edge{i}", _xy(s * x_in, ys), SIL, 0.0))
    if style == "curly":  # ringlets: a fixed scatter of darker and lighter curls
        t, r = _curls()[:, 0], _curls()[:, 1]
        # The tops are cut at y = 0.6 after the volume is applied (see _draw_front_hair).
        pts = _xy((app.face_w + vside * r) * np.cos(t), (app.face_top + vtop * r) * np.sin(t))
        parts += [("curls_dark", pts[::2], SIL, 0.0), ("curls_light", pts[1::2], SIL, 0.0)]
    if style not in ("buzz", "bald"):
        sheen = _arc(
            0.1 * app.hair_part, 0.0, rx * 0.7, ry * 0.93, math.pi + 0.8, 2 * math.pi - 0.8, 9
        )
        parts.append(("sheen", sheen, SIL, 0.0))
        for j in range(6):
            f = 0.5 + 0.08 * j
            arc = _arc(
                0.15 * app.hair_part,
                0.0,
                rx * f,
                ry * (0.84 + 0.03 * j),
                math.pi + 0.45,
                2 * math.pi - 0.45,
                9,
            )
            parts.append((f"arc{j}", arc, SURF, 0.05))
    return parts


class _HairKit(NamedTuple):
    """The parts of the front hair that do not change: hairline, its modes and depths, the
    wave along the outer edge, the shadow under the hairline, and the parting."""

    inner: np.ndarray
    modes: np.ndarray
    dz: np.ndarray
    wave: np.ndarray
    shadow: np.ndarray
    part: np.ndarray | None
    shape: _Shape


_OUTER = 26  # points along the outer edge of the front hair


def _hair_kit(app: Appearance) -> _HairKit:
    hl = _hairline(app)
    right_burn = np.array(
        [[app.face_w * 0.99, app.eye_y + 0.17], [app.face_w * 0.87, app.eye_y + 0.14]]
    )
    left_burn = right_burn[::-1] * np.array([-1.0, 1.0])
    inner = np.concatenate([right_burn, hl, left_burn])
    # The outer edge on the silhouette, the hairline on the skin (standing out a little).
    modes = np.concatenate([np.full(_OUTER, SIL), np.full(len(inner), SURF)]).astype(np.int8)
    dz = np.concatenate([np.zeros(_OUTER), np.full(len(inner), 0.03)])
    wave = 0.035 if app.hair_style == "curly" else 0.012
    wave_k = 1.0 + wave * np.sin(np.arange(_OUTER) * 2.4 + 3.0 * app.hair_part)
    part = None
    if app.hair_style == "side_part":
        part = np.array(
            [
                [0.45 * app.hair_part, app.hairline - 0.02],
                [0.4 * app.hair_part, -app.face_top - 0.02],
            ]
        )
    return _HairKit(
        inner,
        modes,
        dz,
        wave_k,
        _xy(hl[:, 0] * 0.97, hl[:, 1] + 0.045),
        part,
        _shape(lambda vside, vtop: _hair_front(app, vside, vtop), 2),
    )


def _draw_front_hair(p: _Recorder, kit: _Kit, vside: float, vtop: float) -> None:
    app = kit.app
    style = app.hair_style
    hair = app.hair_colour
    if style == "bald":
        if app.grey < 0.95:
            for patch in kit.bald:
                p.poly(patch, hair, 150, mode=SIL)
        return
    hk = kit.hair
    temple_y = app.eye_y - 0.05
    rx, ry = app.face_w + vside, app.face_top + vtop
    a_r = math.asin(max(-0.99, temple_y / ry))
    angles = (math.pi - a_r) + (math.pi + 2.0 * a_r) * _ramp(_OUTER)  # left temple -> right
    outer = np.empty((_OUTER, 2))
    np.multiply(np.cos(angles), rx * hk.wave, out=outer[:, 0])
    np.multiply(np.sin(angles), ry * hk.wave, out=outer[:, 1])
    s = p.block(np.concatenate([outer, hk.inner]), hk.modes, hk.dz)
    p.op("poly", (s, s + len(hk.modes)), hair, 150.0 if style == "buzz" else 255.0, sil=True)
    # A soft shadow under the hairline and a sheen on top give the hair volume.
    p.line(hk.shadow, (0.0, 0.0, 0.0), 45, 0.05, dz=0.02)
    pts = hk.shape.points(vside, vtop)
    if style == "curly":
        a, b = hk.shape.parts["curls_dark"][0], hk.shape.parts["curls_light"][1]
        np.minimum(pts[a:b, 1], 0.6, out=pts[a:b, 1])
    rows = hk.shape.record(p, pts)
    if style in ("bob", "long"):
        for i in (0, 1):
            p.op("poly", rows[f"curtain{i}"], _shade(hair, 0.94), sil=True)
            for j in range(4):
                shade = _shade(hair, 1.25 if j % 2 else 0.7)
                p.op("line", rows[f"strand{i}{j}"], shade, 60, size=0.014)
            p.op("line", rows[f"edge{i}"], (0.0, 0.0, 0.0), 40, size=0.03)
    if style == "curly":
        p.op("dots", rows["curls_dark"], _shade(hair, 0.6), 90, size=0.045)
        light = _shade(hair, 1.4) if sum(hair) < 330 else hair
        p.op("dots", rows["curls_light"], light, 70, size=0.035)
    if style != "buzz":
        light = _shade(hair, 1.3) if sum(hair) < 330 else _shade(hair, 1.1)
        dark = _shade(hair, 0.7)
        p.op("line", rows["sheen"], (255.0, 255.0, 255.0), 20, size=0.1)
        # Top strands, only above the hairline (a middle stretch of each arc).
        a = rows["arc0"][0]
        above = pts[a - rows.offset : a - rows.offset + 54, 1].reshape(6, 9) < app.hairline - 0.04
        first = above.argmax(axis=1).tolist()
        end = (9 - above[:, ::-1].argmax(axis=1)).tolist()
        some = above.any(axis=1).tolist()
        for j, (lo, hi, kept) in enumerate(zip(first, end, some, strict=True)):
            if kept and hi - lo >= 2:
                shade = light if j % 2 else dark
                p.op("line", (a + 9 * j + lo, a + 9 * j + hi), shade, 70, size=0.014)
    if hk.part is not None:
        p.line(hk.part, _shade(hair, 0.55), 130, 0.016, dz=0.05)


def _draw_glasses(p: _Recorder, app: Appearance) -> None:
    """Frames, lenses, arms and bridge (the glints on the lenses depend on the light)."""
    size = app.glasses_size
    col = app.glasses_colour
    width = 0.025
    for s in (-1.0, 1.0):
        cx, cy = s * app.eye_sep, app.eye_y + 0.01
        if app.glasses_style == "round":
            rim = _ellipse(cx, cy, 0.2 * size, 0.17 * size, 22)
        else:
            r = np.array(
                [[-1.0, -0.8], [1.0, -0.8], [1.0, 0.55], [0.75, 0.85], [-0.75, 0.85], [-1.0, 0.55]]
            )
            rim = _xy(cx + r[:, 0] * 0.21 * size, cy + r[:, 1] * 0.15 * size)
        p.poly(rim, (200.0, 220.0, 235.0), 26, dz=0.12)
        p.line(rim, col, 235, width, dz=0.12, closed=True)
        arm = np.array(
            [[s * (app.eye_sep + 0.2 * size), cy - 0.05], [s * app.face_w * 0.97, cy + 0.02]]
        )
        p.line(arm, col, 235, width * 0.8, dz=0.08)
    bridge = _curve(
        (-app.eye_sep + 0.2 * size, app.eye_y - 0.02),
        (app.eye_sep - 0.2 * size, app.eye_y - 0.02),
        -0.04,
        6,
    )
    p.line(bridge, col, 235, width, dz=0.16)


@lru_cache(maxsize=256)
def _glasses(app: Appearance) -> _Layer:
    """The glasses of an identity (made on first wear; the docs grid puts them on anyone)."""
    recorder = _Recorder()
    _draw_glasses(recorder, app)
    return recorder.freeze()


def _glints(app: Appearance) -> tuple[np.ndarray, ...]:
    size = app.glasses_size
    cy = app.eye_y + 0.01
    return tuple(
        _curve((cx - 0.1 * size, cy - 0.05), (cx - 0.02 * size, cy - 0.12), 0.0, 3)
        for cx in (-app.eye_sep, app.eye_sep)
    )


def _bald_patches(app: Appearance) -> tuple[np.ndarray, ...]:
    """The fringe of hair left at the temples of a bald head."""
    fw = app.face_w
    return tuple(
        np.array(
            [
                [s * fw * 1.03, app.eye_y - 0.3],
                [s * fw * 1.03, app.eye_y + 0.15],
                [s * fw * 0.9, app.eye_y + 0.1],
                [s * fw * 0.9, app.eye_y - 0.25],
            ]
        )
        for s in (-1.0, 1.0)
    )


def _draw_occluder(p: _Recorder, app: Appearance, view: View) -> None:
    k = view.occluder_amount
    s = view.occluder_side
    col = view.occluder_colour
    my = app.eye_y + app.mouth_y
    if view.occluder == "hand":
        skin = _mix(app.skin, col, 0.15)
        cx = s * (0.95 - 0.5 * k)
        cy = my + 0.15
        p.poly(_ellipse(cx + s * 0.38, cy + 0.38, 0.42, 0.5, 20), skin, mode=FLAT, dz=0.9, sil=True)
        for j in range(4):
            fx = cx + s * (0.05 + 0.05 * j)
            finger = np.array(
                [
                    [fx, cy - 0.25 + 0.07 * j],
                    [fx + s * 0.14, cy - 0.3 + 0.07 * j],
                    [fx + s * 0.5, cy + 0.1 + 0.06 * j],
                    [fx + s * 0.35, cy + 0.2 + 0.06 * j],
                ]
            )
            p.poly(finger, _shade(skin, 0.95 + 0.03 * j), mode=FLAT, dz=0.95, sil=True)
            p.line(finger[[1, 2]], _shade(skin, 0.7), 120, 0.01, mode=FLAT, dz=0.96)
    elif view.occluder == "scarf":
        top_y = app.chin - 0.15 - (app.chin - my + 0.05) * k
        scarf = np.array(
            [[-1.4, top_y + 0.1], [0.0, top_y], [1.4, top_y + 0.1], [1.6, 2.4], [-1.6, 2.4]]
        )
        p.poly(scarf, col, mode=FLAT, dz=0.9, sil=True)
        for j in range(3):
            fold = _curve((-1.2, top_y + 0.2 + 0.2 * j), (1.2, top_y + 0.2 + 0.2 * j), 0.08, 8)
            p.line(fold, _shade(col, 0.65), 150, 0.02, mode=FLAT, dz=0.91)
    elif view.occluder == "cap":
        brim_y = app.hairline + (app.eye_y - app.brow_gap - 0.08 - app.hairline) * k
        crown = _arc(
            0.0, brim_y, app.face_w + 0.12, app.face_top + brim_y + 0.25, math.pi, 2 * math.pi, 16
        )
        p.poly(crown, col, mode=SIL, sil=True)
        p.poly(
            _ellipse(0.0, brim_y + 0.04, app.face_w * 1.05, 0.1, 18),
            _shade(col, 0.75),
            mode=FLAT,
            dz=1.0,
            sil=True,
        )
    elif view.occluder == "sunglasses":
        for sgn in (-1.0, 1.0):
            lens = _ellipse(sgn * app.eye_sep, app.eye_y + 0.01, 0.2, 0.15 * (0.6 + 0.4 * k), 18)
            p.poly(lens, (18.0, 20.0, 24.0), 150 + 80 * k, dz=0.12)
        bridge = np.array(
            [[-app.eye_sep + 0.2, app.eye_y - 0.02], [app.eye_sep - 0.2, app.eye_y - 0.02]]
        )
        p.line(bridge, (30.0, 30.0, 30.0), 240, 0.025, dz=0.14)
    elif view.occluder == "object":
        w = 0.12 + 0.25 * k
        cx = s * (1.25 - 0.75 * k)
        dx, dy = math.sin(view.occluder_angle), math.cos(view.occluder_angle)
        bar = np.array(
            [
                [cx - w - 3 * dx, -3 * dy],
                [cx + w - 3 * dx, -3 * dy],
                [cx + w + 3 * dx, 3 * dy],
                [cx - w + 3 * dx, 3 * dy],
            ]
        )
        p.poly(bar, col, mode=FLAT, dz=1.0, sil=True)


def backdrop(size: tuple[int, int], clutter: float, rng: np.random.Generator) -> np.ndarray:
    """A gradient wall plus ``clutter``-many rectangles, blobs, shards and stripes.

    Returns the thread's float32 canvas, colour planes ``(3, h, w)`` (0-255), valid until the
    next call.
    """
    canvas = _wall(size, rng)
    _draw_clutter(canvas, clutter, rng)
    return canvas


_BANDS = 24  # flat bands of the wall's gradient


@lru_cache(maxsize=16)
def _band_index(n: int) -> np.ndarray:
    """Band of each of ``n`` pixels across the wall."""
    edges = np.linspace(0, n, _BANDS + 1).round().astype(int)
    return np.repeat(np.arange(_BANDS), np.diff(edges))


def _wall(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A gradient wall in flat bands: invisible steps once blurred, noised and compressed."""
    w, h = size
    c1 = rng.uniform(35, 235, 3)
    c2 = np.clip(c1 + rng.normal(0, 40, 3), 0, 255)
    vertical = bool(rng.random() < 0.7)
    t = (np.arange(_BANDS) + 0.5)[:, None] / _BANDS
    ramp = np.floor(c1 + (c2 - c1) * t).astype(np.float32)
    canvas = _SCRATCH.get("canvas", (3, h, w))
    raster.bands(canvas, ramp, _band_index(h if vertical else w), vertical)
    return canvas


def _draw_clutter(canvas: np.ndarray, clutter: float, rng: np.random.Generator) -> None:
    """``clutter``-many translucent rectangles, blobs, shards and stripes."""
    _, h, w = canvas.shape
    n = int(rng.poisson(1.0 + 12.0 * clutter))
    if n == 0:
        return
    # Everything random about the shapes in one draw (one call is far cheaper than twenty).
    u = rng.random((n, 22))
    scale = np.array([w, h], dtype=float)
    kinds = (u[:, 0] * 4).astype(np.intp).tolist()
    colours = (u[:, 1:5] * 256).astype(np.intp)
    colours[:, 3] = 90 + colours[:, 3] * 165 // 255
    corner = (u[:, 5:7] * 1.2 - 0.2) * scale
    boxes = np.concatenate([corner, corner + (u[:, 7:9] * 0.46 + 0.04) * scale], axis=1)
    corners = (3 + (u[:, 9] * 3).astype(np.intp)).tolist()  # shards: 3 to 5 corners
    shards = (u[:, 10:20] * 1.2 - 0.1).reshape(n, 5, 2) * scale
    widths = (1 + (u[:, 20] * (max(2, w // 40) - 1)).astype(np.intp)).tolist()
    stripes = (2 + (u[:, 21] * 4).astype(np.intp)).tolist()  # 2 to 5
    # Pixel-space shapes, straight into the draw call's tables (no recorder: no lifting).
    pts: list[np.ndarray] = []
    ops: list[tuple[int, int, int, float, bool]] = []
    fills: list[list[int]] = []
    n_pts = 0
    c, s_ = _unit_circle(28)
    for i, (kind, col, (x0, y0, x1, y1)) in enumerate(
        zip(kinds, colours.tolist(), boxes.tolist(), strict=True)
    ):
        if kind == 0:
            shape = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
        elif kind == 1:
            shape = _xy((x0 + x1) / 2 + (x1 - x0) / 2 * c, (y0 + y1) / 2 + (y1 - y0) / 2 * s_)
        elif kind == 2:
            shape = shards[i, : corners[i]]
        else:
            width, slant = float(widths[i]), (x1 - x0) * 0.3
            for j in range(stripes[i]):
                off = x0 + j * width * 3
                pts.append(np.array([[off, 0.0], [off + slant, float(h)]]))
                ops.append((raster.LINE, n_pts, n_pts + 2, width, False))
                fills.append(col)
                n_pts += 2
            continue
        shape = np.asarray(shape, dtype=float)
        pts.append(shape)
        ops.append((raster.POLY, n_pts, n_pts + len(shape), 0.0, False))
        fills.append(col)
        n_pts += len(shape)
    # One sample row per pixel: the background is blurred and out of focus anyway.
    raster.draw_all(
        canvas,
        _NO_MASK,
        np.concatenate(pts),
        np.array(ops, dtype=np.float64),
        np.array(fills, dtype=np.float64),
        1.0,
        1,
    )


# ---------------------------------------------------------------------------------------------
# Photometric pipeline
# ---------------------------------------------------------------------------------------------


class _Scratch(threading.local):
    """Per-thread float arrays reused from one photograph to the next.

    The photometric pipeline works on a few arrays of a few hundred kilobytes. Fresh ones
    would cost page faults on every photograph (the allocator maps such blocks anew and hands
    them back when freed), about as much as the arithmetic itself.
    """

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        """The array called ``name``, with undefined contents; reallocated on a new shape."""
        a = self.arrays.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = self.arrays[name] = np.empty(shape, dtype)
        return a


_SCRATCH = _Scratch()
_LIGHT_DOWN = 4  # the shading field is smooth: compute it at 1/4 resolution
_GAMMA = 0.6  # shading exponent: about a linear-light multiply seen in sRGB


@lru_cache(maxsize=16)
def _lerp_index(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """A linear upscale from ``n_in`` to ``n_out`` pixels, as Pillow's bilinear resize.

    Returns, per output pixel, its left neighbour ``i0`` and the weight of the right one
    (zero where the edge pixel is held).
    """
    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    x0 = np.floor(x)
    i0 = np.clip(x0.astype(np.intp), 0, n_in - 1)
    i1 = np.clip(x0.astype(np.intp) + 1, 0, n_in - 1)
    return i0, np.where(i1 > i0, x - x0, 0.0).astype(np.float32)


@lru_cache(maxsize=4)
def _noise_bank() -> np.ndarray:
    """Fixed unit-variance noise (channel, y, x), cropped at random offsets (cheaper than
    fresh noise)."""
    return np.random.default_rng(0x5EED).standard_normal((3, 768, 768), dtype=np.float32)


def light_vector(view: View) -> np.ndarray:
    """Unit vector towards the light in camera space (x right, y down, z to the camera)."""
    side = view.light_side
    v = np.array(
        [side * math.cos(view.light_azimuth), side * math.sin(view.light_azimuth) - 0.25, 1.0]
    )
    return v / np.linalg.norm(v)


def _lighting(
    size: tuple[int, int],
    *,
    app: Appearance,
    view: View,
    centre: tuple[float, float],
    unit: float,
    light: np.ndarray,
    level: float,
) -> np.ndarray:
    """Brightness multiplier on a grid ``_LIGHT_DOWN`` times coarser than ``size`` (smooth).

    Lambert shading (plus ambient) of the head ellipsoid and a gentle gradient elsewhere,
    raised to ``_GAMMA`` because light adds up in linear intensity, not in sRGB values (a
    multiply in sRGB would crush the shadow side of dark skin to black).
    """
    w, h = size
    lw, lh = max(2, -(-w // _LIGHT_DOWN)), max(2, -(-h // _LIGHT_DOWN))
    cr, sr = math.cos(view.roll), math.sin(view.roll)
    # Lambert: the ellipsoid normal (u, v, nz), turned by yaw then pitch, dotted with the
    # light (turned by the roll); the same as the normal dotted with the light turned back.
    cy_, sy_ = math.cos(view.yaw), math.sin(view.yaw)
    cp, sp = math.cos(view.pitch), math.sin(view.pitch)
    lx = cr * light[0] + sr * light[1]
    ly = -sr * light[0] + cr * light[1]
    lz = light[2]
    back = sp * ly + cp * lz
    amb = view.ambient
    norm = amb + (1.0 - amb) * lz
    k = 0.3 * view.light_side
    geometry = (w / lw, h / lh, centre[0], centre[1], unit, cr, sr)
    return raster.shading(
        lh,
        lw,
        np.array([*geometry, app.face_w, app.face_top, app.chin]),
        np.array(
            [
                cy_ * lx - sy_ * back,
                cp * ly - sp * lz,
                sy_ * lx + cy_ * back,
                amb / norm,
                (1.0 - amb) / norm,
            ]
        ),
        np.array(
            [k * math.cos(view.light_azimuth), k * math.sin(view.light_azimuth), _GAMMA, level]
        ),
    )


def finish(
    img: Image.Image | np.ndarray,
    shade: np.ndarray | None,
    view: View,
    rng: np.random.Generator,
) -> np.ndarray:
    """Light and tint, lens blur, group contrast and sensor noise, then JPEG.

    ``img`` is an image or float32 colour planes ``(3, h, w)`` (changed in place);
    ``shade`` is the coarse brightness field from :func:`_lighting` (None: tint only). The
    blur is one pass of a box of ``view.blur`` pixels' radius, as Pillow's ``BoxBlur`` (a
    third of the cost of a Gaussian). One compiled pass does all but the JPEG
    (:func:`visage_ml.data.raster.finish`). Returns the pixels, ``uint8 (h, w, 3)``.
    """
    if isinstance(img, np.ndarray):
        canvas = img
    else:
        canvas = np.ascontiguousarray(np.asarray(img, dtype=np.float32).transpose(2, 0, 1))
    _, h, w = canvas.shape
    if shade is None:
        shade = _FLAT_SHADE
    iy, fy = _lerp_index(shade.shape[0], h)
    ix, fx = _lerp_index(shade.shape[1], w)
    noise, oy, ox, sigma = _NO_NOISE, 0, 0, 0.0
    if view.noise > 0.0:
        sigma = float(view.noise)
        noise = _noise_bank()
        if h <= noise.shape[1] and w <= noise.shape[2]:
            oy = int(rng.integers(0, noise.shape[1] - h + 1))
            ox = int(rng.integers(0, noise.shape[2] - w + 1))
        else:
            noise = rng.standard_normal((3, h, w), dtype=np.float32)
    out = np.empty((h, w, 3), dtype=np.uint8)
    raster.finish(
        canvas,
        shade,
        iy,
        fy,
        ix,
        fx,
        np.asarray(view.tint, dtype=np.float64),
        float(view.blur),
        float(view.contrast),
        noise,
        oy,
        ox,
        sigma,
        _SCRATCH.get("side", canvas.shape, canvas.dtype),
        out,
    )
    if view.jpeg_quality < 100:
        # libjpeg-turbo, as Pillow's encoder (4:2:0 chroma) but straight from and to arrays:
        # half the time of a Pillow round trip at this size.
        data = simplejpeg.encode_jpeg(
            out, quality=int(view.jpeg_quality), colorspace="RGB", colorsubsampling="420"
        )
        out = simplejpeg.decode_jpeg(data, colorspace="RGB")
    return out


_FLAT_SHADE = np.ones((1, 1), dtype=np.float32)
_NO_NOISE = np.zeros((3, 1, 1), dtype=np.float32)


class _Kit(NamedTuple):
    """Everything about drawing one identity that no photograph changes."""

    app: Appearance
    outline: np.ndarray  # the face outline (face units)
    box_outline: np.ndarray  # its part from the forehead down, for the face box
    face: _Layer  # ears, face and its soft shadows
    cheeks: tuple[np.ndarray, ...]
    skin: _Layer  # moles, freckles, beard, age lines
    folds: tuple[np.ndarray, ...]
    body: tuple[np.ndarray, ...]
    eyes: _Shape
    brows: _Shape
    bridges: tuple[np.ndarray, ...]
    nose: _Layer  # nostrils and tip
    mouth: _Shape  # also the moustache and the 5 landmarks
    hair_back: _Shape | None
    hair: _HairKit | None  # None when bald
    bald: tuple[np.ndarray, ...]
    glints: tuple[np.ndarray, ...]


@lru_cache(maxsize=256)
def _kit(app: Appearance) -> _Kit:
    """Prepare the drawing of an identity (cached: each is photographed several times)."""
    outline = _outline(app)
    outline.flags.writeable = False
    face = _Recorder()
    _draw_ears(face, app)
    face.poly(outline, app.skin, mode=SIL, sil=True)
    _face_shading(face, app)
    skin = _Recorder()
    for x, y, r in app.moles:
        skin.dots(np.array([[x, y]]), r, _shade(app.skin, 0.45), 200)
    if app.freckles:
        skin.dots(np.asarray(app.freckles), 0.012, _shade(app.skin, 0.7), 110)
    _draw_beard(skin, app, outline)
    _draw_age(skin, app)
    nose = _Recorder()
    _draw_nose_tip(nose, app)
    has_back = app.hair_style in ("curly", "bun", "bob", "long")
    return _Kit(
        app=app,
        outline=outline,
        box_outline=outline[outline[:, 1] >= app.eye_y - 0.7],
        face=face.freeze(),
        cheeks=_cheeks(app),
        skin=skin.freeze(),
        folds=_folds(app),
        body=_body_parts(app),
        eyes=_shape(lambda eh: _eyes(app, eh), 1),
        brows=_shape(lambda lift, drop: _brows(app, lift, drop), 2),
        bridges=_bridges(app),
        nose=nose.freeze(),
        mouth=_shape(lambda w, dy, curve, opening: _mouth(app, w, dy, curve, opening), 4),
        hair_back=_shape(lambda vs, vt: _hair_back(app, vs, vt), 2) if has_back else None,
        hair=_hair_kit(app) if app.hair_style != "bald" else None,
        bald=_bald_patches(app),
        glints=_glints(app),
    )


def render(
    identity: Identity,
    view: View,
    rng: np.random.Generator,
    *,
    size: int,
    with_mask: bool = False,
    background: bool = True,
    tall: float = 1.0,
) -> Rendered:
    """Rasterise one photograph of ``identity`` under ``view`` as a ``size`` x ``size`` image.

    Parameters
    ----------
    identity
        The person.
    view
        The photograph's nuisance.
    rng
        Random stream for the background clutter and sensor noise.
    size
        Output side in pixels.
    with_mask
        Also return the silhouette (head, hair, body, occluders) as an ``L`` mask, for pasting
        the face into a scene.
    background
        Draw a cluttered background (otherwise plain grey, for use with ``with_mask``).
    tall
        Height of the image as a multiple of ``size`` (the head stays where it is; more of
        the body shows), for pasting people into scenes.

    Returns
    -------
    Rendered
        Image, true landmarks (5x2 pixel x, y), face box (x1, y1, x2, y2) from the forehead
        (0.7 face units above the eyes) to the chin and cheek to cheek, and the optional mask.
    """
    app = identity.appearance
    height = round(size * tall)
    if background:
        canvas = backdrop((size, height), view.clutter, rng)
    else:
        canvas = np.full((3, height, size), 128.0, dtype=np.float32)
    mask = np.zeros((height, size), dtype=np.float32) if with_mask else None
    unit = 0.235 * size * view.scale
    centre = (size * (0.5 + view.shift[0]), size * (0.52 + view.shift[1]))
    p = _Painter(app=app, view=view, centre=centre, unit=unit)
    light = light_vector(view)
    kit = _kit(app)
    vside, vtop = _hair_volume(app, view)

    _draw_hair_back(p, kit, vside, vtop)
    _draw_body(p, kit, view)
    p.replay(kit.face)
    if app.blush > 0.0:
        blush = 170 * app.blush * (1.6 if view.makeup else 1.0)
        for cheek in kit.cheeks:
            p.poly(cheek, (205.0, 95.0, 95.0), blush)
    p.replay(kit.skin)
    # Nasolabial folds deepen with age and with a smile.
    smile = view.expression_amount if view.expression == "smile" else 0.0
    for fold in kit.folds:
        p.line(fold, _shade(app.skin, 0.55), 35 + 90 * app.wrinkles + 60 * smile, 0.018, dz=0.01)
    _draw_eyes(p, kit, view, light)
    _draw_brows(p, kit, view)
    _draw_nose(p, kit, light)
    lm_rows = _draw_mouth(p, kit, view)
    _draw_front_hair(p, kit, vside, vtop)
    if view.glasses and view.occluder != "sunglasses":
        p.replay(_glasses(app))
        for glint in kit.glints:
            p.line(glint, (255.0, 255.0, 255.0), 60 + 60 * abs(float(light[0])), 0.012, dz=0.13)
    if view.occluder != "none":
        _draw_occluder(p, app, view)
    box_rows = p.mark(kit.box_outline, SIL)
    xy = p.flush(canvas, mask)

    lm = xy[lm_rows]
    sil = xy[box_rows]
    box = (
        float(sil[:, 0].min()),
        float(sil[:, 1].min()),
        float(sil[:, 0].max()),
        float(sil[:, 1].max()),
    )

    # Cameras meter the scene: part of the skin's lightness is exposed away, so neither dark
    # nor light skin ends up far from mid-grey unless the light (or a planted knob) says so.
    lum = 0.3 * app.skin[0] + 0.59 * app.skin[1] + 0.11 * app.skin[2]
    exposure = min(1.7, max(0.9, (135.0 / max(lum, 1.0)) ** 0.7))
    shade = _lighting(
        (size, height),
        app=app,
        view=view,
        centre=centre,
        unit=unit,
        light=light,
        level=view.light_level * exposure,
    )
    out = finish(canvas, shade, view, rng)
    return Rendered(
        image=out,
        landmarks=lm.astype(np.float64),
        box=box,
        mask=None if mask is None else Image.fromarray((mask * 255.0 + 0.5).astype(np.uint8)),
    )
