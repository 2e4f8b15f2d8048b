"""The compiled SynthFaces kernels: coverage, blending, projection and the photometric finish."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from visage_ml.data import raster

H = W = 64


def _draw(
    prims: list[tuple[int, np.ndarray, float]],
    *,
    colour: tuple[float, float, float, float] = (255.0, 255.0, 255.0, 255.0),
    sub: int = raster.SUB,
    mask: bool = False,
    sil: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw primitives (kind, points, size) in white on black; returns canvas and mask."""
    canvas = np.zeros((3, H, W), dtype=np.float32)
    m = np.zeros((H, W) if mask else (1, 1), dtype=np.float32)
    xy = np.concatenate([p for _, p, _ in prims]).astype(np.float64)
    ends = np.cumsum([len(p) for _, p, _ in prims])
    starts = np.concatenate([[0], ends[:-1]])
    ops = np.array(
        [(k, a, b, size, sil) for (k, _, size), a, b in zip(prims, starts, ends, strict=True)],
        dtype=np.float64,
    )
    colours = np.tile(np.array(colour, dtype=np.float64), (len(prims), 1))
    raster.draw_all(canvas, m, xy, ops, colours, 1.0, sub)
    return canvas, m


def _coverage(canvas: np.ndarray) -> np.ndarray:
    return canvas[0] / 255.0


def test_rectangle_covers_its_area_and_nothing_else() -> None:
    rect = np.array([[10.3, 12.5], [30.8, 12.5], [30.8, 20.5], [10.3, 20.5]])
    canvas, _ = _draw([(raster.POLY, rect, 0.0)])
    cov = _coverage(canvas)
    assert cov.sum() == pytest.approx(20.5 * 8.0, rel=1e-4)
    assert cov[16, 11:30].min() == pytest.approx(1.0)  # inside: solid
    assert cov[16, 10] == pytest.approx(0.7, abs=1e-5)  # left edge pixel partly covered
    assert cov[:12].sum() == 0 and cov[21:].sum() == 0 and cov[:, 31:].sum() == 0
    assert np.allclose(canvas[0], canvas[1]) and np.allclose(canvas[1], canvas[2])


def test_polygon_area_holds_for_a_rotated_shape_and_a_triangle() -> None:
    t = np.linspace(0, 2 * math.pi, 60, endpoint=False)
    ellipse = np.stack([32 + 20 * np.cos(t) * 0.9, 30 + 12 * np.sin(t)], axis=1)
    x, y = ellipse[:, 0], ellipse[:, 1]
    shoelace = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    canvas, _ = _draw([(raster.POLY, ellipse, 0.0)], sub=8)
    assert _coverage(canvas).sum() == pytest.approx(shoelace, rel=5e-3)
    tri = np.array([[5.0, 5.0], [40.0, 9.0], [12.0, 50.0]])
    area = 0.5 * abs((40 - 5) * (50 - 5) - (12 - 5) * (9 - 5))
    canvas, _ = _draw([(raster.POLY, tri, 0.0)], sub=8)
    assert _coverage(canvas).sum() == pytest.approx(area, rel=5e-3)


def test_polyline_counts_each_pixel_once_where_its_segments_overlap() -> None:
    # A stroke doubling back on itself covers no more than the single stroke would.
    once = np.array([[10.0, 30.0], [50.0, 30.0]])
    back = np.array([[10.0, 30.0], [50.0, 30.0], [20.0, 30.0]])
    a, _ = _draw([(raster.LINE, once, 3.0)], colour=(255.0, 255.0, 255.0, 128.0))
    b, _ = _draw([(raster.LINE, back, 3.0)], colour=(255.0, 255.0, 255.0, 128.0))
    assert np.allclose(a, b, atol=1e-3)
    assert _coverage(a).sum() == pytest.approx(40 * 3 * 128 / 255, rel=1e-3)


def test_thin_lines_keep_their_ink_and_dots_their_area() -> None:
    # A line a third of a pixel wide is drawn a pixel wide at a third of the opacity.
    thin, _ = _draw([(raster.LINE, np.array([[8.0, 20.25], [48.0, 20.25]]), 1 / 3)])
    assert _coverage(thin).sum() == pytest.approx(40 / 3, rel=2e-2)
    dots = np.array([[15.0, 15.0], [40.0, 40.0], [41.0, 40.0]])  # two of them overlap
    canvas, _ = _draw([(raster.DOTS, dots, 3.75)], sub=8)  # drawn a quarter pixel larger
    r = 4.0
    single = math.pi * r * r
    lens = 2 * r * r * math.acos(0.5 / r) - 0.5 * math.sqrt(4 * r * r - 1)  # two discs overlap
    assert _coverage(canvas).sum() == pytest.approx(3 * single - lens, rel=1e-2)


def test_opacity_blends_over_what_is_drawn_and_silhouettes_fill_the_mask() -> None:
    rect = np.array([[4.0, 4.0], [20.0, 4.0], [20.0, 20.0], [4.0, 20.0]])
    canvas, mask = _draw(
        [(raster.POLY, rect, 0.0)], colour=(200.0, 100.0, 50.0, 51.0), mask=True, sil=True
    )
    assert canvas[:, 10, 10] == pytest.approx([40.0, 20.0, 10.0])  # 20 % of the colour
    assert mask[10, 10] == pytest.approx(1.0)  # the mask takes coverage, not opacity
    assert mask.sum() == pytest.approx(256.0)
    _, none = _draw([(raster.POLY, rect, 0.0)], mask=True, sil=False)
    assert none.sum() == 0.0


def test_points_off_the_frame_or_not_finite_draw_nothing_and_do_not_crash() -> None:
    far = np.array([[-500.0, -500.0], [-400.0, -500.0], [-400.0, -400.0]])
    nan = np.array([[10.0, 10.0], [np.nan, 20.0], [30.0, 30.0]])
    huge = np.array([[-1e6, -1e6], [1e6, -1e6], [1e6, 1e6], [-1e6, 1e6]])
    canvas, _ = _draw([(raster.POLY, far, 0.0), (raster.POLY, nan, 0.0)])
    assert canvas.sum() == 0.0
    canvas, _ = _draw([(raster.POLY, huge, 0.0)])
    assert _coverage(canvas).min() == pytest.approx(1.0)  # covers the frame exactly


def test_many_pieces_grow_the_work_arrays() -> None:
    # Thousands of dots on one row need more room than the first work arrays hold.
    xs = np.linspace(1.0, 63.0, 5000)
    dots = np.stack([xs, np.full_like(xs, 32.0)], axis=1)
    canvas, _ = _draw([(raster.DOTS, dots, 3.0)])
    assert _coverage(canvas)[29:35, 5:59].min() == pytest.approx(1.0)
    assert _coverage(canvas)[35:].sum() == 0.0 and _coverage(canvas)[:29].sum() == 0.0


def _reference_lift_project(pts, modes, dz, bodies, head, view_dir, rot, body_rot, camera):
    fw, top, chin, depth = head
    x, y = pts[:, 0].copy(), pts[:, 1].copy()
    b = np.where(y < 0, top, chin)
    r2 = (x / fw) ** 2 + (y / b) ** 2
    z = np.where(modes == 0, depth * np.sqrt(np.maximum(1 - r2, 0)), 0.0)
    zs = -(x * view_dir[0] / fw**2 + y * view_dir[1] / b**2) * depth**2 / max(view_dir[2], 1e-3)
    k = np.sqrt(r2 / np.maximum(r2 + zs**2 / depth**2, 1e-12))
    sil = modes == 1
    x, y, z = np.where(sil, x * k, x), np.where(sil, y * k, y), np.where(sil, zs * k, z) + dz
    p = np.stack([x, y, z], axis=1)
    q = np.where(bodies[:, None], p @ body_rot.T, p @ rot.T)
    f, cx, cy, unit = camera
    s = f / (f - q[:, 2])
    return np.stack([cx + unit * q[:, 0] * s, cy + unit * q[:, 1] * s], axis=1)


def test_lift_project_matches_the_closed_form() -> None:
    rng = np.random.default_rng(3)
    n = 400
    pts = rng.uniform(-1.2, 1.2, (n, 2))
    modes = rng.integers(0, 3, n).astype(np.int8)
    dz = rng.uniform(-0.1, 0.1, n)
    bodies = rng.random(n) < 0.3
    a, b = 0.4, -0.2
    rot = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    body_rot = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    args = (
        pts,
        modes,
        dz,
        bodies,
        np.array([0.8, 1.1, 1.25, 0.7]),
        rot[2],
        rot,
        body_rot,
        np.array([9.0, 80.0, 83.0, 37.6]),
    )
    assert np.allclose(raster.lift_project(*args), _reference_lift_project(*args), atol=1e-9)


def _finish(canvas: np.ndarray, **kw: object) -> np.ndarray:
    _, h, w = canvas.shape
    out = np.empty((h, w, 3), dtype=np.uint8)
    noise = kw.get("noise", np.zeros((3, 1, 1), dtype=np.float32))
    raster.finish(
        canvas,
        kw.get("shade", np.ones((1, 1), dtype=np.float32)),
        np.zeros(h, dtype=np.intp),
        np.zeros(h, dtype=np.float32),
        np.zeros(w, dtype=np.intp),
        np.zeros(w, dtype=np.float32),
        np.asarray(kw.get("tint", (1.0, 1.0, 1.0)), dtype=np.float64),
        float(kw.get("blur", 0.0)),
        float(kw.get("contrast", 1.0)),
        noise,
        0,
        0,
        float(kw.get("sigma", 0.0)),
        np.empty_like(canvas),
        out,
    )
    return out


def test_finish_tints_rounds_and_clips_into_interleaved_bytes() -> None:
    canvas = np.full((3, 8, 8), 100.4, dtype=np.float32)
    canvas[:, 0, 0] = 300.0
    out = _finish(canvas, tint=(1.0, 0.5, 2.0), shade=np.full((1, 1), 1.2, dtype=np.float32))
    assert out[4, 4].tolist() == [120, 60, 241]  # 100.4 * 1.2 * tint, rounded
    assert out[0, 0].tolist() == [255, 180, 255]  # clipped


def test_box_blur_keeps_flat_areas_and_spreads_an_edge() -> None:
    canvas = np.full((3, 16, 16), 50.0, dtype=np.float32)
    canvas[:, :, 8:] = 150.0
    out = _finish(canvas.copy(), blur=1.5).astype(float)
    assert out[8, 0, 0] == 50 and out[8, 15, 0] == 150  # far from the edge: unchanged
    assert 50 < out[8, 7, 0] < 100 < out[8, 8, 0] < 150  # the edge is softened
    assert out[:, :, 0].mean() == pytest.approx(100.0, abs=0.5)  # brightness is kept


def test_noise_and_contrast() -> None:
    canvas = np.full((3, 32, 32), 128.0, dtype=np.float32)
    noise = np.random.default_rng(0).standard_normal((3, 32, 32)).astype(np.float32)
    out = _finish(canvas.copy(), noise=noise, sigma=10.0).astype(float)
    assert out.std() == pytest.approx(10.0, rel=0.1)
    assert out.mean() == pytest.approx(128.0, abs=1.0)
    ramp = np.tile(np.linspace(50, 200, 32, dtype=np.float32), (3, 32, 1))
    flat = _finish(ramp.copy(), contrast=0.5).astype(float)
    assert np.ptp(flat) == pytest.approx(0.5 * 150, abs=2)  # the spread halves


# Where numba caches, as a process that imports the kernels sees it.
_WHERE = "import numba\nfrom visage_ml.data import raster\nprint(numba.config.CACHE_DIR)\n"
# The same after compiling one small kernel (which writes its cache).
_COMPILE = _WHERE + (
    "import numpy as np\n"
    "canvas = np.zeros((3, 4, 5), dtype=np.float32)\n"
    "colours = np.array([[10, 20, 30], [40, 50, 60]], dtype=np.float32)\n"
    "raster.bands(canvas, colours, np.array([0, 1, 0, 1]), True)\n"
    "assert canvas[0, 1, 0] == 40.0\n"
)


def _numba_cache_files(root: Path) -> set[Path]:
    return {p for pattern in ("*.nbi", "*.nbc") for p in root.rglob(pattern)}


def _python(code: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_compiled_kernels_are_cached_in_the_user_cache_not_in_the_package(tmp_path) -> None:
    package = Path(raster.__file__).resolve().parents[1]
    in_package_before = _numba_cache_files(package)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")

    used = Path(_python(_COMPILE, env))

    assert used == tmp_path / "xdg" / "visage-ml" / "numba"
    cached = _numba_cache_files(used)
    assert {p.suffix for p in cached} == {".nbi", ".nbc"}
    assert all(p.name.startswith("raster.") for p in cached)
    assert _numba_cache_files(package) - in_package_before == set()


def test_an_explicit_numba_cache_dir_is_kept(tmp_path) -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "mine")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    assert Path(_python(_WHERE, env)) == tmp_path / "mine"
