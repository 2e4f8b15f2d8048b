"""SynthFaces rendering: one photograph of an :class:`Identity` under per-image nuisance.

A face is a list of polygons and strokes in 3-D *face units* (see :mod:`synth_identity`): the
face outline is the silhouette of an ellipsoid cut to the identity's jaw shape, features sit on
its surface, the nose tip stands out. A :class:`View` (head rotation, scale and shift, light,
expression, glasses, occluder, blur, sensor noise, JPEG quality, background clutter) is drawn
per photograph. All points are lifted to 3-D and projected by a weak-perspective camera in one
vectorised step, rasterised by Pillow at twice the output size and box-filtered down, then lit
(Lambert shading of the head ellipsoid plus a gradient over the frame), optionally flattened by
the group's contrast knob, blurred, noised and JPEG-compressed. The true 5 landmarks (eye
centres, nose tip, mouth corners; the subject's right eye on the image's left, as in
:data:`visage_ml.preprocess.TEMPLATE_112`) go through the same projection.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from visage_ml.data.synth_identity import Appearance, Identity

SS = 2  # supersampling factor of the rasteriser
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
    """A rendered face: RGB image, true landmarks (5x2, x,y), face box, optional alpha mask."""

    image: Image.Image
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


def _tri(rng: np.random.Generator) -> float:
    """A draw in [-1, 1] concentrated near 0 (clipped normal, sd 0.5)."""
    return float(np.clip(rng.normal(0.0, 0.5), -1.0, 1.0))


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
    u = rng.uniform

    expression, amount = "neutral", 0.0
    if rng.random() < 0.25 + 0.75 * expr:
        expression = EXPRESSIONS[int(rng.choice(len(EXPRESSIONS), p=_EXPRESSION_P))]
        amount = float(u(0.3, 1.0)) * min(1.0, 0.4 + expr)
    occluder, occ_amount = "none", 0.0
    if rng.random() < occ:
        occluder = OCCLUDERS[int(rng.choice(len(OCCLUDERS), p=_OCCLUDER_P))]
        occ_amount = float(u(0.3, 1.0)) * min(1.0, 0.5 + occ)
    lo, hi = d["jpeg_quality"]  # type: ignore[misc]
    blur = 0.0
    if rng.random() < float(d["blur"]):
        blur = float(u(0.3, 0.5 + 1.5 * float(d["blur"])))
    warm = float(rng.normal(0.0, 0.06 * illum))
    return View(
        yaw=_tri(rng) * math.radians(44) * pose,
        pitch=_tri(rng) * math.radians(28) * pose,
        roll=_tri(rng) * math.radians(30) * pose,
        scale=math.exp(_tri(rng) * 0.3 * ss),
        shift=(_tri(rng) * 0.12 * ss, _tri(rng) * 0.1 * ss),
        light_azimuth=float(u(0.0, 2 * math.pi)),
        light_side=float(u(0.0, 1.0)) * (0.15 + 1.4 * illum),
        light_level=math.exp(_tri(rng) * 0.8 * illum),
        ambient=float(u(0.68, 0.85)) - 0.2 * illum,
        tint=(1.0 + warm, 1.0, 1.0 - warm),
        expression=expression,
        expression_amount=amount,
        gaze=(float(rng.normal(0.0, 0.25)), float(rng.normal(0.0, 0.15))),
        blink=bool(rng.random() < 0.03 * (1.0 + expr)),
        glasses=bool(rng.random() < appearance.glasses_p),
        makeup=bool(rng.random() < appearance.makeup_p),
        occluder=occluder,
        occluder_amount=occ_amount,
        occluder_colour=(float(u(20, 235)), float(u(20, 235)), float(u(20, 235))),
        occluder_side=float(rng.choice([-1.0, 1.0])),
        occluder_angle=float(u(-0.6, 0.6)),
        clothes=CLOTHES[int(rng.integers(len(CLOTHES)))],
        hair_mess=float(u(-1.0, 1.0)),
        blur=blur,
        noise=float(u(0.0, 1.0)) * 10.0 * float(d["noise"]),
        jpeg_quality=int(rng.integers(min(lo, hi), max(lo, hi) + 1)),
        clutter=float(d["clutter"]),
        contrast=float(contrast),
    )


# ---------------------------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------------------------


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    r_yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    r_pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]])
    r_roll = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return r_roll @ r_pitch @ r_yaw


@lru_cache(maxsize=64)
def _unit_circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.cos(t), np.sin(t)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 20) -> np.ndarray:
    c, s = _unit_circle(n)
    return _xy(cx + rx * c, cy + ry * s)


def _arc(
    cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 16
) -> np.ndarray:
    t = np.linspace(a0, a1, n)
    return _xy(cx + rx * np.cos(t), cy + ry * np.sin(t))


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


@lru_cache(maxsize=64)
def _bell(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 1.0, n)
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


class _Painter:
    """Collects face-unit primitives, then lifts, projects and rasterises them in one pass."""

    def __init__(
        self,
        *,
        app: Appearance,
        view: View,
        centre: tuple[float, float],
        unit: float,
    ) -> None:
        self.app = app
        self.cx, self.cy = centre
        self.unit = unit
        self.rot = _rotation(view.yaw, view.pitch, view.roll)
        self.body_rot = _rotation(0.3 * view.yaw, 0.0, 0.35 * view.roll)
        # Direction towards the camera in head coordinates, for the silhouette.
        self.view_dir = self.rot.T @ np.array([0.0, 0.0, 1.0])
        self.focal = 9.0
        self._pts: list[np.ndarray] = []
        self._counts: list[int] = []
        self._modes: list[int] = []
        self._bodies: list[bool] = []
        self._dz_scalar: list[float] = []
        self._dz_arrays: list[tuple[int, np.ndarray]] = []
        self._ops: list[tuple] = []
        self._colours: list[tuple[float, float, float, float]] = []
        self._n = 0

    # -- recording -------------------------------------------------------------------------
    def _add(
        self, pts: np.ndarray, mode: int, dz: float | np.ndarray, body: bool
    ) -> tuple[int, int]:
        k = len(pts)
        self._pts.append(pts)
        self._counts.append(k)
        self._modes.append(mode)
        self._bodies.append(body)
        if isinstance(dz, np.ndarray):
            self._dz_scalar.append(0.0)
            self._dz_arrays.append((self._n, dz))
        else:
            self._dz_scalar.append(dz)
        start = self._n
        self._n += k
        return start, self._n

    def poly(
        self,
        pts: np.ndarray,
        colour: RGB,
        alpha: float = 255.0,
        *,
        mode: int = SURF,
        dz: float | np.ndarray = 0.0,
        sil: bool = False,
        body: bool = False,
    ) -> None:
        s, e = self._add(pts, mode, dz, body)
        self._ops.append(("poly", s, e, sil))
        self._colours.append((*colour, alpha))

    def line(
        self,
        pts: np.ndarray,
        colour: RGB,
        alpha: float,
        width: float,
        *,
        mode: int = SURF,
        dz: float | np.ndarray = 0.0,
        closed: bool = False,
    ) -> None:
        if closed:
            pts = np.vstack([pts, pts[:1]])
        s, e = self._add(pts, mode, dz, False)
        w = max(1, round(width * self.unit))
        self._ops.append(("line", s, e, w))
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
        s, e = self._add(pts, mode, dz, False)
        self._ops.append(("dots", s, e, max(0.6, radius * self.unit)))
        self._colours.append((*colour, alpha))

    # -- geometry ----------------------------------------------------------------------------
    def lift(self, pts: np.ndarray, mode: np.ndarray | int, dz: np.ndarray | float) -> np.ndarray:
        """3-D points for face-plane points: on the surface, on the silhouette, or at z=dz."""
        a = self.app
        x, y = pts[:, 0], pts[:, 1]
        b = np.where(y < 0.0, a.face_top, a.chin)
        r2 = (x / a.face_w) ** 2 + (y / b) ** 2
        z_surf = a.depth * np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
        v = self.view_dir
        d2 = a.depth**2
        z_sil = -(x * v[0] / a.face_w**2 + y * v[1] / b**2) * d2 / max(v[2], 1e-3)
        k = np.sqrt(r2 / np.maximum(r2 + z_sil**2 / d2, 1e-12))
        is_sil = mode == SIL
        xs = np.where(is_sil, x * k, x)
        ys = np.where(is_sil, y * k, y)
        zs = np.where(mode == SURF, z_surf, np.where(is_sil, z_sil * k, 0.0)) + dz
        return np.stack([xs, ys, zs], axis=1)

    def project(self, p3: np.ndarray, body: np.ndarray | bool = False) -> np.ndarray:
        q = p3 @ self.rot.T
        if np.any(body):
            qb = p3 @ self.body_rot.T
            q = np.where(np.asarray(body)[:, None], qb, q) if not isinstance(body, bool) else qb
        k = self.focal / (self.focal - q[:, 2])
        return _xy(self.cx + self.unit * q[:, 0] * k, self.cy + self.unit * q[:, 1] * k)

    def to_pixels(
        self, pts: np.ndarray, mode: int = SURF, dz: float | np.ndarray = 0.0
    ) -> np.ndarray:
        """Canvas pixel positions of face-plane points (not recorded for drawing)."""
        pts = np.asarray(pts, dtype=np.float64)
        return self.project(self.lift(pts, np.full(len(pts), mode), dz))

    # -- rasterising -------------------------------------------------------------------------
    def flush(self, canvas: Image.Image, mask: Image.Image | None) -> None:
        if not self._ops:
            return
        pts = np.concatenate(self._pts)
        counts = np.asarray(self._counts)
        dz = np.repeat(np.asarray(self._dz_scalar), counts)
        for start, arr in self._dz_arrays:
            dz[start : start + len(arr)] += arr
        modes = np.repeat(np.asarray(self._modes, dtype=np.int8), counts)
        p3 = self.lift(pts, modes, dz)
        xy = self.project(p3, np.repeat(np.asarray(self._bodies), counts))
        flat = xy.ravel().tolist()
        # Opaque fills skip alpha blending, which halves Pillow's fill time.
        blend = ImageDraw.Draw(canvas, "RGBA")
        opaque = ImageDraw.Draw(canvas)
        mdraw = ImageDraw.Draw(mask) if mask is not None else None
        fills = np.clip(np.asarray(self._colours), 0.0, 255.0).astype(np.int64).tolist()
        for (kind, s, e, extra), fill in zip(self._ops, fills, strict=True):
            seg = flat[2 * s : 2 * e]
            draw = opaque if fill[3] == 255 else blend
            colour = tuple(fill[:3]) if fill[3] == 255 else tuple(fill)
            if kind == "poly":
                draw.polygon(seg, fill=colour)
                if extra and mdraw is not None:
                    mdraw.polygon(seg, fill=255)
            elif kind == "line":
                draw.line(seg, fill=colour, width=extra)
            else:
                r = extra
                for i in range(0, len(seg), 2):
                    x, y = seg[i], seg[i + 1]
                    draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        for store in (self._ops, self._colours, self._pts, self._counts, self._modes, self._bodies):
            store.clear()
        self._dz_scalar.clear()
        self._dz_arrays.clear()
        self._n = 0


# ---------------------------------------------------------------------------------------------
# Face parts
# ---------------------------------------------------------------------------------------------


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


def _draw_hair_back(p: _Painter, app: Appearance, view: View) -> None:
    style = app.hair_style
    hair = _shade(app.hair_colour, 0.8)
    vside, vtop = _hair_volume(app, view)
    if style == "curly":
        pts = _ellipse(0.0, 0.1, app.face_w + vside + 0.06, app.face_top + vtop + 0.25, 40)
        pts = pts * (1.0 + 0.03 * np.sin(np.arange(40) * 2.9))[:, None]
        pts[:, 1] = np.minimum(pts[:, 1], 0.9)
        p.poly(pts, hair, mode=FLAT, dz=-0.5, sil=True)
    elif style == "bun":
        bun = _ellipse(0.0, -app.face_top - 0.16, 0.34, 0.28, 24)
        p.poly(bun, hair, mode=FLAT, dz=-0.35, sil=True)
    elif style in ("bob", "long"):
        length = 0.8 if style == "bob" else app.hair_length
        w_top = app.face_w + vside + 0.04
        w_bot = w_top + (0.1 if style == "bob" else 0.28)
        top = _arc(0.0, 0.0, w_top, app.face_top + vtop + 0.04, math.pi, 2 * math.pi, 18)
        right = np.array([[w_top + 0.02, 0.4], [w_bot, length - 0.12], [w_bot - 0.12, length]])
        bottom = np.array([[0.6, length + 0.05], [-0.6, length + 0.05]])
        left = right[::-1] * np.array([-1.0, 1.0])
        p.poly(np.vstack([top, right, bottom, left]), hair, mode=FLAT, dz=-0.4, sil=True)


def _draw_body(p: _Painter, app: Appearance, view: View) -> None:
    nw = app.neck_w
    skin_dark = _shade(app.skin, 0.8)
    neck = np.array([[-nw, 0.6], [nw, 0.6], [nw * 1.08, 2.3], [-nw * 1.08, 2.3]])
    p.poly(neck, skin_dark, mode=FLAT, dz=-0.25, sil=True)
    sh = np.array(
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
    p.poly(sh, view.clothes, mode=FLAT, dz=-0.3, sil=True, body=True)
    collar = np.array([[-nw * 0.95, 1.86], [nw * 0.95, 1.86], [0.0, 2.3]])
    p.poly(collar, _shade(skin_dark, 0.95), mode=FLAT, dz=-0.28, body=True)
    fold = np.array([[-1.6, 2.5], [-1.2, 3.3]])
    p.line(fold, _shade(view.clothes, 0.6), 120, 0.03, mode=FLAT, dz=-0.28)
    p.line(fold * np.array([-1.0, 1.0]), _shade(view.clothes, 0.6), 120, 0.03, mode=FLAT, dz=-0.28)


def _draw_ears(p: _Painter, app: Appearance) -> None:
    es = app.ear_size
    for s in (-1.0, 1.0):
        cx = s * app.face_w * 0.97
        cy = app.eye_y + 0.27
        ear = _ellipse(cx + s * 0.05 * es, cy, 0.11 * es, 0.24 * es, 18)
        p.poly(ear, _shade(app.skin, 0.9), mode=FLAT, dz=-0.05, sil=True)
        inner = _ellipse(cx + s * 0.06 * es, cy, 0.05 * es, 0.14 * es, 12)
        p.poly(inner, _shade(app.skin, 0.68), 150, mode=FLAT, dz=-0.04)


def _face_shading(p: _Painter, app: Appearance) -> None:
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


def _draw_beard(p: _Painter, app: Appearance, outline: np.ndarray) -> None:
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
    pts = np.vstack([lower, inner])
    modes = np.concatenate([np.full(len(lower), SIL), np.full(len(inner), SURF)])
    p3 = p.lift(pts, modes, 0.01)
    hair = app.hair_colour
    if app.beard == "stubble":
        colour, alpha = _mix(_shade(app.skin, 0.45), hair, 0.3), 30 + 40 * app.beard_density
    else:
        colour, alpha = hair, 100 + 90 * app.beard_density
    # The lifted polygon is recorded as flat points that carry their own depth.
    p.poly(p3[:, :2], colour, alpha, mode=FLAT, dz=p3[:, 2])
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


def _draw_moustache(p: _Painter, app: Appearance, view: View, outline: np.ndarray) -> None:
    if app.beard not in ("moustache", "goatee", "full"):
        return
    hair = _shade(app.hair_colour, 0.9)
    alpha = 110 + 90 * app.beard_density
    top, _, _, bottom = _mouth_shape(app, view)
    w = float(top[-1, 0])
    xs = top[:, 0] * 1.08
    thick = 0.03 + 0.055 * (1.0 - (top[:, 0] / w) ** 2)
    lower = _xy(xs, top[:, 1] - 0.004 + 0.02 * (top[:, 0] / w) ** 4)
    upper = _xy(xs, lower[:, 1] - thick)
    p.poly(np.vstack([upper, lower[::-1]]), hair, alpha, dz=0.035)
    if app.beard == "goatee":
        chin = outline[(outline[:, 1] > 0.5) & (np.abs(outline[:, 0]) < 0.5 * w)]
        chin = chin[np.argsort(-chin[:, 0])]  # right -> left along the chin
        y0 = float(bottom[6, 1]) + 0.05
        cap = np.array([[-0.42 * w, y0 + 0.04], [0.0, y0], [0.42 * w, y0 + 0.04]])
        pts = np.vstack([chin, cap])
        modes = np.concatenate([np.full(len(chin), SIL), np.full(len(cap), SURF)])
        p3 = p.lift(pts, modes, 0.02)
        p.poly(p3[:, :2], hair, alpha, mode=FLAT, dz=p3[:, 2])


def _draw_age(p: _Painter, app: Appearance, view: View) -> None:
    w = app.wrinkles
    smile = view.expression_amount if view.expression == "smile" else 0.0
    dark = _shade(app.skin, 0.55)
    ny = app.eye_y + app.nose_y
    my = app.eye_y + app.mouth_y
    # Nasolabial folds deepen with age and with a smile.
    a_fold = 35 + 90 * w + 60 * smile
    for s in (-1.0, 1.0):
        fold = _curve(
            (s * (app.nose_w + 0.07), ny - 0.03),
            (s * (app.mouth_w + 0.08), my + 0.1),
            0.0,
            7,
        )
        fold[:, 0] += s * 0.04 * _bell(7)[1]
        p.line(fold, dark, a_fold, 0.018, dz=0.01)
    if w <= 0.05:
        return
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


def _draw_eyes(p: _Painter, app: Appearance, view: View, light: np.ndarray) -> None:
    amt = view.expression_amount
    open_k = {
        "smile": 1.0 - 0.35 * amt,
        "surprise": 1.0 + 0.45 * amt,
        "frown": 1.0 - 0.2 * amt,
    }.get(view.expression, 1.0)
    if view.blink:
        open_k = 0.08
    eh = app.eye_h * open_k
    skin = app.skin
    lid = _shade(skin, 0.84)
    lash = (18.0, 14.0, 13.0)
    t, bell = _bell(11)
    hump = bell**0.9
    for s in (-1.0, 1.0):
        cx, cy = s * app.eye_sep, app.eye_y
        inner = (cx - s * app.eye_w, cy + 0.2 * app.eye_tilt * app.eye_w)
        outer = (cx + s * app.eye_w, cy - app.eye_tilt * app.eye_w)
        xs = inner[0] + (outer[0] - inner[0]) * t
        base = inner[1] + (outer[1] - inner[1]) * t + 0.35 * eh
        upper = _xy(xs, base - eh * hump * (1.15 - 0.15 * t) * 1.35)
        lower = _xy(xs, base + 0.5 * eh * bell)
        p.poly(np.vstack([upper, lower[::-1]]), (226.0, 222.0, 216.0), dz=-0.02)
        if open_k > 0.2:
            ix = cx + view.gaze[0] * app.eye_w * 0.3
            iy = cy + view.gaze[1] * eh * 0.3
            r = app.iris_r
            p.poly(_ellipse(ix, iy, r, r, 16), app.iris, dz=-0.015)
            p.poly(_ellipse(ix, iy, r * 0.7, r * 0.7, 12), _shade(app.iris, 0.6), 150, dz=-0.014)
            p.poly(_ellipse(ix, iy, r * 0.4, r * 0.4, 10), (8.0, 8.0, 10.0), dz=-0.012)
            hx = ix + 0.35 * r * float(light[0])
            p.dots(np.array([[hx, iy - 0.35 * r]]), 0.012, (255.0, 255.0, 255.0), 210)
        # Lids cover the parts of the iris outside the opening.
        lid_top = _xy(xs, upper[:, 1] - 0.1)
        p.poly(np.vstack([lid_top, upper[::-1]]), lid)
        lid_bot = _xy(xs, lower[:, 1] + 0.07)
        p.poly(np.vstack([lower, lid_bot[::-1]]), skin)
        p.line(upper, lash, 245, 0.03 if view.makeup else 0.022, dz=0.005)
        p.line(lower[1:-1], _shade(skin, 0.55), 110, 0.01, dz=0.005)
        crease = _xy(xs[2:-1], (upper[:, 1] - 0.045 * (1 + 0.3 * app.wrinkles))[2:-1])
        p.line(crease, _shade(skin, 0.6), 100, 0.01, dz=0.005)


def _draw_brows(p: _Painter, app: Appearance, view: View) -> None:
    amt = view.expression_amount
    lift = 0.07 * amt if view.expression == "surprise" else 0.0
    inner_drop = 0.06 * amt if view.expression == "frown" else 0.0
    t = np.linspace(0.0, 1.0, 10)
    arch = (
        app.brow_arch
        * np.sin(math.pi * np.minimum(t / 0.65, 1.0) * 0.5)
        * np.where(t < 0.65, 1.0, 1.0 - (t - 0.65) * 2.2)
    )
    thick = app.brow_thick * (1.1 - 0.65 * t)
    for s in (-1.0, 1.0):
        y0 = app.eye_y - app.brow_gap - lift
        x_in = s * (app.eye_sep - app.eye_w * 1.15)
        x_out = s * (app.eye_sep + app.eye_w * 1.25 * app.brow_len)
        xs = x_in + (x_out - x_in) * t
        ys = y0 - arch - app.brow_tilt * (t - 0.5) * 0.3 + inner_drop * (1 - t) + 0.04 * t**2
        top = _xy(xs, ys - thick / 2)
        bot = _xy(xs, ys + thick / 2)
        p.poly(np.vstack([top, bot[::-1]]), app.brow_colour, 235, dz=0.02)


def _draw_nose(p: _Painter, app: Appearance, light: np.ndarray) -> None:
    ny = app.eye_y + app.nose_y
    nw = app.nose_w
    skin = app.skin
    dark = _shade(skin, 0.5)
    tip = app.nose_proj
    for s in (-1.0, 1.0):
        away = 0.5 + 0.5 * float(-s * light[0])  # the bridge's shadow falls away from the light
        bridge = np.array(
            [[s * 0.07, app.eye_y + 0.06], [s * 0.08, ny - 0.16], [s * nw * 0.75, ny - 0.04]]
        )
        p.line(bridge, dark, 35 + 95 * away, 0.022, dz=np.array([0.05, 0.6, 0.8]) * tip)
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
    p.dots(np.array([[0.02 * float(light[0]), ny - 0.05]]), 0.02, (255.0, 250.0, 245.0), 55, dz=tip)
    p.line(
        _curve((-nw * 0.5, ny + 0.075), (nw * 0.5, ny + 0.075), 0.01, 7),
        dark,
        80,
        0.018,
        dz=tip * 0.5,
    )


def _mouth_shape(
    app: Appearance, view: View
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Upper lip top edge, upper and lower inner edges and lower lip edge (left to right)."""
    amt = view.expression_amount
    my = app.eye_y + app.mouth_y
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
    w = app.mouth_w * widen
    t, bell = _bell(13)
    xs = -w + 2 * w * t
    line_y = my + corner_dy * (1 - bell) + curve * bell
    bow = 0.35 * np.exp(-(((t - 0.5) / 0.08) ** 2))  # cupid's bow
    top = _xy(xs, line_y - app.lip_upper * bell**0.6 * (1.4 - bow) / 1.4 - 0.004)
    mid_up = _xy(xs, line_y - opening * 0.35 * bell)
    mid_lo = _xy(xs, line_y + opening * 0.65 * bell)
    bottom = _xy(xs, mid_lo[:, 1] + app.lip_lower * bell**0.7 + 0.004)
    return top, mid_up, mid_lo, bottom


def _draw_mouth(p: _Painter, app: Appearance, view: View) -> None:
    top, mid_up, mid_lo, bottom = _mouth_shape(app, view)
    lip = app.lip_colour
    if view.makeup:
        lip = _mix(lip, (170.0, 40.0, 60.0), 0.35)
    if np.any(mid_lo[:, 1] - mid_up[:, 1] > 0.005):
        p.poly(np.vstack([mid_up, mid_lo[::-1]]), (45.0, 18.0, 20.0), dz=-0.02)
        if view.expression in ("smile", "open"):
            teeth = _xy(mid_up[:, 0] * 0.85, mid_up[:, 1] + 0.002)
            teeth_lo = teeth + _xy(np.zeros(len(teeth)), 0.035 * _bell(len(teeth))[1])
            p.poly(np.vstack([teeth, teeth_lo[::-1]]), (232.0, 228.0, 214.0), dz=-0.01)
    p.poly(np.vstack([top, mid_up[::-1]]), _shade(lip, 0.9), dz=0.03)
    p.poly(np.vstack([mid_lo, bottom[::-1]]), lip, dz=0.03)
    p.line(mid_up, _shade(lip, 0.4), 210, 0.014, dz=0.035)
    hl = _curve(
        (bottom[4, 0], bottom[4, 1] - 0.025), (bottom[-5, 0], bottom[-5, 1] - 0.025), 0.005, 5
    )
    p.line(hl, (255.0, 235.0, 230.0), 45, 0.014, dz=0.036)


def _draw_front_hair(p: _Painter, app: Appearance, view: View) -> None:
    style = app.hair_style
    hair = app.hair_colour
    if style == "bald":
        if app.grey < 0.95:
            for s in (-1.0, 1.0):
                fw = app.face_w
                patch = np.array(
                    [
                        [s * fw * 1.03, app.eye_y - 0.3],
                        [s * fw * 1.03, app.eye_y + 0.15],
                        [s * fw * 0.9, app.eye_y + 0.1],
                        [s * fw * 0.9, app.eye_y - 0.25],
                    ]
                )
                p.poly(patch, hair, 150, mode=SIL)
        return
    vside, vtop = _hair_volume(app, view)
    temple_y = app.eye_y - 0.05
    rx, ry = app.face_w + vside, app.face_top + vtop
    a_r = math.asin(max(-0.99, temple_y / ry))
    outer = _arc(0.0, 0.0, rx, ry, math.pi - a_r, 2 * math.pi + a_r, 26)  # left temple -> right
    k = np.arange(len(outer))
    wave = 0.035 if style == "curly" else 0.012
    outer = outer * (1.0 + wave * np.sin(k * 2.4 + 3.0 * app.hair_part))[:, None]
    hl = _hairline(app)
    right_burn = np.array(
        [[app.face_w * 0.99, app.eye_y + 0.17], [app.face_w * 0.87, app.eye_y + 0.14]]
    )
    left_burn = right_burn[::-1] * np.array([-1.0, 1.0])
    inner = np.vstack([right_burn, hl, left_burn])
    pts = np.vstack([outer, inner])
    modes = np.concatenate([np.full(len(outer), SIL), np.full(len(inner), SURF)])
    p3 = p.lift(pts, modes, 0.0)
    p3[len(outer) :, 2] += 0.03
    alpha = 150.0 if style == "buzz" else 255.0
    p.poly(p3[:, :2], hair, alpha, mode=FLAT, dz=p3[:, 2], sil=True)
    # A soft shadow under the hairline and a sheen on top give the hair volume.
    shadow = _xy(hl[:, 0] * 0.97, hl[:, 1] + 0.045)
    p.line(shadow, (0.0, 0.0, 0.0), 45, 0.05, dz=0.02)
    if style in ("bob", "long"):
        length = 0.8 if style == "bob" else min(app.hair_length, 1.6)
        for s in (-1.0, 1.0):
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
            p.poly(curtain, _shade(hair, 0.94), mode=SIL, sil=True)
            # Strands run down each curtain, between its inner and outer edge.
            ys = np.linspace(app.eye_y - 0.2, length, 7)
            x_in = np.interp(ys, curtain[[0, 1, 2], 1], curtain[[0, 1, 2], 0] * s)
            x_out = np.interp(ys, curtain[[5, 4, 3], 1], curtain[[5, 4, 3], 0] * s)
            for j, f in enumerate((0.15, 0.4, 0.65, 0.88)):
                xs = s * (x_in + (x_out - x_in) * f) + 0.02 * np.sin(ys * 7 + j)
                shade = _shade(hair, 1.25 if j % 2 else 0.7)
                p.line(_xy(xs, ys), shade, 60, 0.014, mode=SIL)
            edge = _xy(s * x_in, ys)
            p.line(edge, (0.0, 0.0, 0.0), 40, 0.03, mode=SIL)
    if style == "curly":  # ringlets: a fixed scatter of darker and lighter curls
        t, r = _curls()[:, 0], _curls()[:, 1]
        cx = (app.face_w + vside * r) * np.cos(t)
        cy = np.minimum((app.face_top + vtop * r) * np.sin(t), 0.6)
        pts = _xy(cx, cy)
        p.dots(pts[::2], 0.045, _shade(hair, 0.6), 90, mode=SIL)
        p.dots(pts[1::2], 0.035, _shade(hair, 1.4) if sum(hair) < 330 else hair, 70, mode=SIL)
    if style != "buzz":
        light = _shade(hair, 1.3) if sum(hair) < 330 else _shade(hair, 1.1)
        dark = _shade(hair, 0.7)
        sheen = _arc(
            0.1 * app.hair_part, 0.0, rx * 0.7, ry * 0.93, math.pi + 0.8, 2 * math.pi - 0.8, 9
        )
        p.line(sheen, (255.0, 255.0, 255.0), 20, 0.1, mode=SIL)
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
            arc = arc[arc[:, 1] < app.hairline - 0.04]
            if len(arc) >= 2:
                p.line(arc, light if j % 2 else dark, 70, 0.014, dz=0.05)
    if style == "side_part":
        part = np.array(
            [
                [0.45 * app.hair_part, app.hairline - 0.02],
                [0.4 * app.hair_part, -app.face_top - 0.02],
            ]
        )
        p.line(part, _shade(hair, 0.55), 130, 0.016, dz=0.05)


def _draw_glasses(p: _Painter, app: Appearance, light: np.ndarray) -> None:
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
        glint = _curve((cx - 0.1 * size, cy - 0.05), (cx - 0.02 * size, cy - 0.12), 0.0, 3)
        p.line(glint, (255.0, 255.0, 255.0), 60 + 60 * abs(float(light[0])), 0.012, dz=0.13)
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


def _draw_occluder(p: _Painter, app: Appearance, view: View) -> None:
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


def draw_background(canvas: Image.Image, clutter: float, rng: np.random.Generator) -> None:
    """Paint a gradient wall plus ``clutter``-many rectangles, blobs, shards and stripes."""
    w, h = canvas.size
    c1 = rng.uniform(35, 235, 3)
    c2 = np.clip(c1 + rng.normal(0, 40, 3), 0, 255)
    vertical = bool(rng.random() < 0.7)
    # A gradient in 24 flat bands: invisible steps once blurred, noised and compressed.
    n_bands = 24
    ramp = np.clip(c1 + (c2 - c1) * (np.arange(n_bands) + 0.5)[:, None] / n_bands, 0, 255)
    edges = np.linspace(0, h if vertical else w, n_bands + 1).round().astype(int)
    for k, colour in enumerate(ramp.astype(int).tolist()):
        a, b = int(edges[k]), int(edges[k + 1])
        canvas.paste(tuple(colour), (0, a, w, b) if vertical else (a, 0, b, h))
    draw = ImageDraw.Draw(canvas, "RGBA")
    scale = np.array([w, h], dtype=float)
    for _ in range(int(rng.poisson(1.0 + 12.0 * clutter))):
        kind = int(rng.integers(4))
        c = rng.integers(0, 256, 4)
        col = (int(c[0]), int(c[1]), int(c[2]), 90 + int(c[3]) * 165 // 255)
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * scale
        sx, sy = rng.uniform(0.04, 0.5, 2) * scale
        if kind == 0:
            draw.rectangle((float(x0), float(y0), float(x0 + sx), float(y0 + sy)), fill=col)
        elif kind == 1:
            draw.ellipse((float(x0), float(y0), float(x0 + sx), float(y0 + sy)), fill=col)
        elif kind == 2:
            pts = rng.uniform(-0.1, 1.1, (int(rng.integers(3, 6)), 2)) * scale
            draw.polygon(pts.ravel().tolist(), fill=col)
        else:
            width = int(rng.integers(1, max(2, w // 40)))
            for j in range(int(rng.integers(2, 6))):
                off = float(x0 + j * width * 3)
                draw.line((off, 0.0, off + float(sx) * 0.3, float(h)), fill=col, width=width)


# ---------------------------------------------------------------------------------------------
# Photometric pipeline
# ---------------------------------------------------------------------------------------------

_LIGHT_DOWN = 4  # the shading field is smooth: compute it at 1/4 resolution
_GAMMA = 0.6  # shading exponent: about a linear-light multiply seen in sRGB


@lru_cache(maxsize=8)
def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    return xs + 0.5, ys + 0.5


@lru_cache(maxsize=4)
def _noise_bank() -> np.ndarray:
    """Fixed unit-variance noise, cropped at random offsets (cheaper than fresh noise)."""
    return np.random.default_rng(0x5EED).standard_normal((768, 768, 3), dtype=np.float32)


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
    """Per-pixel brightness multiplier.

    Lambert shading (plus ambient) of the head ellipsoid and a gentle gradient elsewhere,
    raised to ``_GAMMA`` because light adds up in linear intensity, not in sRGB values (a
    multiply in sRGB would crush the shadow side of dark skin to black).
    """
    w, h = size
    lw, lh = max(2, -(-w // _LIGHT_DOWN)), max(2, -(-h // _LIGHT_DOWN))
    xs, ys = _grid(lw, lh)
    fx, fy = w / lw, h / lh
    cr, sr = math.cos(view.roll), math.sin(view.roll)
    dx = (xs * fx - centre[0]) / unit
    dy = (ys * fy - centre[1]) / unit
    u = (cr * dx + sr * dy) / app.face_w
    v = -sr * dx + cr * dy
    v = v / np.where(v < 0, app.face_top + 0.1, app.chin)
    r2 = u * u + v * v
    nz = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    cy_, sy_ = math.cos(view.yaw), math.sin(view.yaw)
    cp, sp = math.cos(view.pitch), math.sin(view.pitch)
    nx = u * cy_ + nz * sy_
    nz2 = -u * sy_ + nz * cy_
    ny = v * cp + nz2 * sp
    nz3 = -v * sp + nz2 * cp
    lx = cr * light[0] + sr * light[1]
    ly = -sr * light[0] + cr * light[1]
    lam = np.clip(nx * lx + ny * ly + nz3 * light[2], 0.0, 1.0)
    amb = view.ambient
    face = (amb + (1.0 - amb) * lam) / (amb + (1.0 - amb) * light[2])
    inside = np.clip((1.1 - np.sqrt(r2)) / 0.2, 0.0, 1.0)
    ca, sa = math.cos(view.light_azimuth), math.sin(view.light_azimuth)
    grad = 1.0 + 0.3 * view.light_side * ((xs / lw - 0.5) * ca + (ys / lh - 0.5) * sa)
    small = (level * (inside * face + (1.0 - inside) * grad) ** _GAMMA).astype(np.float32)
    return np.asarray(Image.fromarray(small, "F").resize((w, h), Image.Resampling.BILINEAR))


def finish(
    img: Image.Image,
    shade: np.ndarray | None,
    view: View,
    rng: np.random.Generator,
) -> Image.Image:
    """Blur, then light (``shade``), tint, group contrast and sensor noise, then JPEG."""
    if view.blur > 0.0:
        # One box pass: about a third of the cost of Pillow's Gaussian (three box passes).
        img = img.filter(ImageFilter.BoxBlur(view.blur))
    a = np.array(img, dtype=np.float32)
    if shade is not None:
        a *= shade[:, :, None]
    if view.tint != (1.0, 1.0, 1.0):
        a *= np.asarray(view.tint, dtype=np.float32)
    if view.contrast != 1.0:
        m = float(a.mean())
        a -= np.float32(m)
        a *= np.float32(view.contrast)
        a += np.float32(m * min(1.0, view.contrast) ** 0.6)
    if view.noise > 0.0:
        bank = _noise_bank()
        h, w = a.shape[:2]
        if h <= bank.shape[0] and w <= bank.shape[1]:
            oy = int(rng.integers(0, bank.shape[0] - h + 1))
            ox = int(rng.integers(0, bank.shape[1] - w + 1))
            noise = bank[oy : oy + h, ox : ox + w]
        else:
            noise = rng.standard_normal(a.shape, dtype=np.float32)
        a += noise * np.float32(view.noise)
    a += np.float32(0.5)
    np.clip(a, 0.0, 255.0, out=a)
    out = Image.fromarray(a.astype(np.uint8))
    if view.jpeg_quality < 100:
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=int(view.jpeg_quality))
        buf.seek(0)
        with Image.open(buf) as dec:
            out = dec.convert("RGB")
    return out


def _landmarks_2d(app: Appearance, view: View) -> np.ndarray:
    """The 5 landmarks on the face plane: eye centres, nose tip, mouth corners."""
    _, mid_up, _, _ = _mouth_shape(app, view)
    ny = app.eye_y + app.nose_y
    return np.array(
        [
            [-app.eye_sep, app.eye_y],
            [app.eye_sep, app.eye_y],
            [0.0, ny - 0.02],
            [mid_up[0, 0], mid_up[0, 1]],
            [mid_up[-1, 0], mid_up[-1, 1]],
        ]
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
    c = size * SS
    height = round(size * tall)
    canvas = Image.new("RGB", (c, height * SS), (128, 128, 128))
    if background:
        draw_background(canvas, view.clutter, rng)
    mask = Image.new("L", canvas.size, 0) if with_mask else None
    unit = 0.235 * c * view.scale
    centre = (c * (0.5 + view.shift[0]), c * (0.52 + view.shift[1]))
    p = _Painter(app=app, view=view, centre=centre, unit=unit)
    light = light_vector(view)
    outline = _outline(app)

    _draw_hair_back(p, app, view)
    _draw_body(p, app, view)
    _draw_ears(p, app)
    p.poly(outline, app.skin, mode=SIL, sil=True)
    _face_shading(p, app)
    if app.blush > 0.0:
        k = 1.6 if view.makeup else 1.0
        for s in (-1.0, 1.0):
            cheek = _ellipse(s * (app.eye_sep + 0.05), app.eye_y + app.nose_y * 0.75, 0.2, 0.13, 14)
            p.poly(cheek, (205.0, 95.0, 95.0), 170 * app.blush * k)
    for x, y, r in app.moles:
        p.dots(np.array([[x, y]]), r, _shade(app.skin, 0.45), 200)
    if app.freckles:
        p.dots(np.asarray(app.freckles), 0.012, _shade(app.skin, 0.7), 110)
    _draw_beard(p, app, outline)
    _draw_age(p, app, view)
    _draw_eyes(p, app, view, light)
    _draw_brows(p, app, view)
    _draw_nose(p, app, light)
    _draw_mouth(p, app, view)
    _draw_moustache(p, app, view, outline)
    _draw_front_hair(p, app, view)
    if view.glasses and view.occluder != "sunglasses":
        _draw_glasses(p, app, light)
    if view.occluder != "none":
        _draw_occluder(p, app, view)
    p.flush(canvas, mask)

    lm_dz = np.array([0.0, 0.0, 0.95 * app.nose_proj, 0.03, 0.03])
    lm = p.to_pixels(_landmarks_2d(app, view), SURF, lm_dz) / SS
    face_part = outline[outline[:, 1] >= app.eye_y - 0.7]
    sil = p.to_pixels(face_part, SIL) / SS
    box = (
        float(sil[:, 0].min()),
        float(sil[:, 1].min()),
        float(sil[:, 0].max()),
        float(sil[:, 1].max()),
    )

    small = canvas.reduce(SS)
    # Cameras meter the scene: part of the skin's lightness is exposed away, so neither dark
    # nor light skin ends up far from mid-grey unless the light (or a planted knob) says so.
    lum = 0.3 * app.skin[0] + 0.59 * app.skin[1] + 0.11 * app.skin[2]
    exposure = min(1.7, max(0.9, (135.0 / max(lum, 1.0)) ** 0.7))
    shade = _lighting(
        (size, height),
        app=app,
        view=view,
        centre=(centre[0] / SS, centre[1] / SS),
        unit=unit / SS,
        light=light,
        level=view.light_level * exposure,
    )
    out = finish(small, shade, view, rng)
    return Rendered(
        image=out,
        landmarks=lm.astype(np.float64),
        box=box,
        mask=mask.reduce(SS) if mask is not None else None,
    )
