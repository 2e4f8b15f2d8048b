"""Compiled (numba) pixel work of SynthFaces: projection, rasterising and the photometric finish.

:func:`draw_all` draws every primitive of a photograph (filled polygons, stroked polylines,
dots) into float32 colour planes in one call, blending each with its colour and opacity.
Coverage is exact across each pixel's width and sampled at ``SUB`` rows per pixel, so every
edge is anti-aliased; the spans of a primitive's pieces (a stroke's segments, a set of dots)
are merged per sample row first, so a primitive covers a pixel at most once however its pieces
overlap. Each row is swept as events (partly covered end pixels, steps in coverage), so a flat
stretch costs one vectorised blend.

Pillow drew these shapes one call each, unsmoothed (the facial features twice as large and
shrunk); a face took about a hundred calls and most of a millisecond. :func:`finish` likewise
fuses lighting, tint, lens blur, contrast, noise and the cast to bytes, :func:`lift_project`
and :func:`shading` replace dozens of small numpy operations each.

Two habits keep numba's loops fast: columns are unsigned where a loop should vectorise (a
signed index costs a negative-index check that blocks it), and hot loops call no function that
takes arrays (each such call costs reference counting).

Kernels are compiled on first use and cached (``cache=True``) in the user's cache directory,
``$XDG_CACHE_HOME/visage-ml/numba`` (``~/.cache/visage-ml/numba``), or in ``$NUMBA_CACHE_DIR``
when set: never inside the installed package. The first process on a machine pays about eight
seconds of compiling (``benchmarks/bench_synth.py``: ``first_photograph_s``), later ones load
the cache. No kernel copies an array into a slice (``a[i, :] = b``): numba would compile its
shape-mismatch error, message and all, 1.8 s more.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# numba chooses where a kernel's cache goes when the kernel is decorated, from NUMBA_CACHE_DIR;
# unset, it writes __pycache__/*.nbi|*.nbc beside this file, inside the installed package.
os.environ.setdefault(
    "NUMBA_CACHE_DIR",
    str(Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "visage-ml" / "numba"),
)

import numba  # after the default above: numba reads its environment when imported
from numba import njit

# A process that imported numba before this module has read its environment without it.
numba.config.reload_config()

SUB = 2  # sample rows per pixel (as the 2x supersampling it replaced)
POLY, LINE, DOTS = 0, 1, 2  # primitive kinds


@njit(cache=True, nogil=True, inline="always")
def _add_span(
    ev_x: np.ndarray, ev_run: np.ndarray, ev_part: np.ndarray, n: int,
    xa: float, xb: float, wt: float, width: int,
) -> int:  # fmt: skip
    """Record ``wt`` times the coverage of ``[xa, xb)``, as events; returns the new count.

    An event at column ``x`` adds ``ev_part`` to pixel ``x`` alone and steps the coverage of
    pixels ``x`` onwards by ``ev_run``: partly covered end pixels are parts, the fully covered
    pixels between them a step up and a step down.
    """
    if xa < 0.0:
        xa = 0.0
    if xb > width:
        xb = float(width)
    if not xb > xa:
        return n
    ja = int(xa)
    jb = int(xb)
    if ja == jb:
        ev_x[n], ev_run[n], ev_part[n] = ja, 0.0, (xb - xa) * wt
        return n + 1
    ev_x[n], ev_run[n], ev_part[n] = ja, 0.0, (ja + 1 - xa) * wt
    ev_x[n + 1], ev_run[n + 1], ev_part[n + 1] = ja + 1, wt, 0.0
    ev_x[n + 2], ev_run[n + 2], ev_part[n + 2] = jb, -wt, (xb - jb) * wt
    return n + 3


@njit(cache=True, nogil=True, inline="always")
def _sort_events(x: np.ndarray, a: np.ndarray, b: np.ndarray, n: int) -> None:
    """Insertion sort of events by column (``a`` and ``b`` moved along)."""
    for i in range(1, n):
        kx, ka, kb = x[i], a[i], b[i]
        j = i - 1
        while j >= 0 and x[j] > kx:
            x[j + 1], a[j + 1], b[j + 1] = x[j], a[j], b[j]
            j -= 1
        x[j + 1], a[j + 1], b[j + 1] = kx, ka, kb


@njit(cache=True, nogil=True, inline="always")
def _sort_pairs(a: np.ndarray, b: np.ndarray, lo: int, hi: int) -> None:
    """Insertion sort of ``a[lo:hi]``, ``b`` moved along (lists here are short)."""
    for i in range(lo + 1, hi):
        ka, kb = a[i], b[i]
        j = i - 1
        while j >= lo and a[j] > ka:
            a[j + 1] = a[j]
            b[j + 1] = b[j]
            j -= 1
        a[j + 1] = ka
        b[j + 1] = kb


@njit(cache=True, nogil=True, inline="always")
def _rows(y_lo: float, y_hi: float, first: int, last: int, sub: int) -> tuple[int, int]:
    """Sample rows ``first <= r < last`` whose centre ``(r + 0.5) / sub`` is in ``[y_lo, y_hi)``."""
    a = int(np.ceil(y_lo * sub - 0.5))
    b = int(np.ceil(y_hi * sub - 0.5))
    return max(a, first), min(b, last)


@njit(cache=True, nogil=True)
def _pieces(kind: int, xy: np.ndarray, s: int, e: int, half: float, quad: np.ndarray) -> int:
    """Number of pieces of a primitive: polygon edges, stroke quads (corners into ``quad``)
    or dots."""
    if kind == POLY:
        return e - s
    if kind == DOTS:
        return e - s
    n = 0
    for i in range(s, e - 1):
        x0, y0, x1, y1 = xy[i, 0], xy[i, 1], xy[i + 1, 0], xy[i + 1, 1]
        dx, dy = x1 - x0, y1 - y0
        length = np.sqrt(dx * dx + dy * dy)
        if length < 1e-9:
            continue
        nx, ny = -dy / length * half, dx / length * half
        quad[n, 0], quad[n, 1] = x0 + nx, y0 + ny
        quad[n, 2], quad[n, 3] = x1 + nx, y1 + ny
        quad[n, 4], quad[n, 5] = x1 - nx, y1 - ny
        quad[n, 6], quad[n, 7] = x0 - nx, y0 - ny
        n += 1
    return n


@njit(cache=True, nogil=True, inline="always")
def _piece_rows(
    kind: int, xy: np.ndarray, s: int, e: int, quad: np.ndarray, k: int, r: float,
    first: int, last: int, sub: int,
) -> tuple[int, int]:  # fmt: skip
    """The sample rows piece ``k`` reaches."""
    if kind == POLY:
        i = s + k
        j = i + 1 if i + 1 < e else s
        return _rows(min(xy[i, 1], xy[j, 1]), max(xy[i, 1], xy[j, 1]), first, last, sub)
    if kind == DOTS:
        return _rows(xy[s + k, 1] - r, xy[s + k, 1] + r, first, last, sub)
    lo = min(min(quad[k, 1], quad[k, 3]), min(quad[k, 5], quad[k, 7]))
    hi = max(max(quad[k, 1], quad[k, 3]), max(quad[k, 5], quad[k, 7]))
    return _rows(lo, hi, first, last, sub)


@njit(cache=True, nogil=True, inline="always")
def _piece_at(
    kind: int, xy: np.ndarray, s: int, e: int, quad: np.ndarray, k: int, r: float, yc: float
) -> tuple[float, float]:
    """Where piece ``k`` meets sample row ``yc``: an edge's crossing (twice), or a span."""
    if kind == POLY:
        i = s + k
        j = i + 1 if i + 1 < e else s
        ya, yb, xa = xy[i, 1], xy[j, 1], xy[i, 0]
        x = xa + (yc - ya) * (xy[j, 0] - xa) / (yb - ya)
        return x, x
    if kind == DOTS:
        dy = yc - xy[s + k, 1]
        d2 = r * r - dy * dy
        if d2 <= 0.0:
            return 0.0, 0.0
        half = np.sqrt(d2)
        return xy[s + k, 0] - half, xy[s + k, 0] + half
    lo = np.inf
    hi = -np.inf
    for c in range(4):
        d = (c + 1) % 4
        ya, yb = quad[k, 2 * c + 1], quad[k, 2 * d + 1]
        if (ya <= yc < yb) or (yb <= yc < ya):
            xa = quad[k, 2 * c]
            x = xa + (yc - ya) * (quad[k, 2 * d] - xa) / (yb - ya)
            lo = min(lo, x)
            hi = max(hi, x)
    if not hi > lo:
        return 0.0, 0.0
    return lo, hi


@njit(cache=True, nogil=True)
def _draw_op(
    canvas: np.ndarray,
    mask: np.ndarray,
    xy: np.ndarray,
    kind: int,
    s: int,
    e: int,
    size: float,
    sil: bool,
    colour: np.ndarray,
    sub: int,
    quad: np.ndarray,
    starts: np.ndarray,
    fill: np.ndarray,
    xa_: np.ndarray,
    xb_: np.ndarray,
    ev_x: np.ndarray,
    ev_run: np.ndarray,
    ev_part: np.ndarray,
) -> int:
    """Draw one primitive (see :func:`draw_all`) with the given work arrays.

    Returns 0, or, having drawn nothing, the number of sample-row entries the primitive needs
    when ``xa_`` is shorter (``ev_*`` must hold three per entry and three more).
    """
    _, h, w = canvas.shape
    n = e - s
    if n <= 0 or (kind == POLY and n < 3) or (kind == LINE and n < 2):
        return 0
    alpha = min(max(colour[3], 0.0), 255.0) / 255.0
    reach = 0.0
    if kind == LINE:
        px = size
        if px < 1.0:  # thinner than a pixel: a pixel wide and as much fainter
            alpha *= px
            px = 1.0
        reach = 0.5 * px
    elif kind == DOTS:
        reach = size
    if alpha <= 0.0:
        return 0
    # Bounding box in whole pixels, inside the frame (a point off any finite place: skip).
    x_lo, y_lo, x_hi, y_hi = np.inf, np.inf, -np.inf, -np.inf
    for i in range(s, e):
        x, y = xy[i, 0], xy[i, 1]
        if not (np.isfinite(x) and np.isfinite(y)):
            return 0
        x_lo = min(x_lo, x)
        x_hi = max(x_hi, x)
        y_lo = min(y_lo, y)
        y_hi = max(y_hi, y)
    c0 = max(0, int(np.floor(x_lo - reach)))
    c1 = min(w, int(np.floor(x_hi + reach)) + 1)
    r0 = max(0, int(np.floor(y_lo - reach)))
    r1 = min(h, int(np.floor(y_hi + reach)) + 1)
    if c1 <= c0 or r1 <= r0:
        return 0
    pieces = _pieces(kind, xy, s, e, reach, quad)
    first, last = r0 * sub, r1 * sub
    # Where each sample row's entries go (counting, then filling).
    starts[: last - first + 1] = 0
    for k in range(pieces):
        a, b = _piece_rows(kind, xy, s, e, quad, k, reach, first, last, sub)
        for r in range(a, b):
            starts[r - first + 1] += 1
    for r in range(1, last - first + 1):
        starts[r] += starts[r - 1]
    total = starts[last - first]
    if total == 0:
        return 0
    if total > len(xa_):
        return total
    for r in range(last - first):
        fill[r] = starts[r]
    wsub = 1.0 / sub
    for k in range(pieces):
        a, b = _piece_rows(kind, xy, s, e, quad, k, reach, first, last, sub)
        for r in range(a, b):
            at = fill[r - first]
            xa_[at], xb_[at] = _piece_at(kind, xy, s, e, quad, k, reach, (r + 0.5) * wsub)
            fill[r - first] += 1
    sil = sil and mask.shape[0] == h and mask.shape[1] == w
    for y in range(r0, r1):
        n_ev = 0
        for r in range(y * sub, y * sub + sub):
            lo, hi = starts[r - first], starts[r - first + 1]
            if hi <= lo:
                continue
            _sort_pairs(xa_, xb_, lo, hi)
            if kind == POLY:  # even-odd: pairs of crossings bound the spans
                for k in range(lo, hi - 1, 2):
                    n_ev = _add_span(ev_x, ev_run, ev_part, n_ev, xa_[k], xa_[k + 1], wsub, w)
                continue
            a, b = xa_[lo], xb_[lo]
            for k in range(lo + 1, hi):  # merge overlapping spans: each pixel counts once
                if xa_[k] <= b:
                    b = max(b, xb_[k])
                else:
                    n_ev = _add_span(ev_x, ev_run, ev_part, n_ev, a, b, wsub, w)
                    a, b = xa_[k], xb_[k]
            n_ev = _add_span(ev_x, ev_run, ev_part, n_ev, a, b, wsub, w)
        if n_ev == 0:
            continue
        _sort_events(ev_x, ev_run, ev_part, n_ev)
        # Sweep: each event column is one pixel; up to the next event the coverage is flat.
        level = 0.0
        i = 0
        while i < n_ev:
            x = ev_x[i]
            part = 0.0
            while i < n_ev and ev_x[i] == x:
                level += ev_run[i]
                part += ev_part[i]
                i += 1
            if x >= w:
                break
            nxt = min(ev_x[i], w) if i < n_ev else w
            # Blend pixel x, then the flat stretch up to the next event. (Written out here, not
            # called: a call that takes arrays costs more in reference counting than a stretch.)
            for stretch in range(2):
                k = level + part if stretch == 0 else level
                if k <= 1e-6:
                    continue
                # Unsigned columns: numba then skips the negative-index wrap and the loops
                # vectorise.
                u0 = np.uint64(x + stretch)
                u1 = np.uint64(x + 1 if stretch == 0 else nxt)
                k = min(k, 1.0)
                t = np.float32(alpha * k)
                for c in range(3):
                    col = np.float32(min(max(colour[c], 0.0), 255.0))
                    for u in range(u0, u1):
                        canvas[c, y, u] += (col - canvas[c, y, u]) * t
                if sil:
                    m = np.float32(k)
                    for u in range(u0, u1):
                        mask[y, u] += (np.float32(1.0) - mask[y, u]) * m
    return 0


@njit(cache=True, nogil=True)
def draw_all(
    canvas: np.ndarray,
    mask: np.ndarray,
    xy: np.ndarray,
    ops: np.ndarray,
    colours: np.ndarray,
    unit: float,
    sub: int,
) -> None:
    """Draw primitives in order onto ``canvas`` (float32 colour planes ``(3, h, w)``, 0-255).

    Parameters
    ----------
    canvas, mask
        The image, and a float32 ``(h, w)`` coverage mask that silhouette polygons are drawn
        into as well (``(1, 1)`` when unused: silhouettes are then not recorded).
    xy
        ``(n, 2)`` pixel positions of all points (pixel ``(x, y)`` spans ``[x, x + 1)``).
    ops
        One row per primitive: kind (:data:`POLY`, :data:`LINE` or :data:`DOTS`), its first
        and end rows of ``xy``, the stroke width or dot radius in units of ``unit`` pixels, and
        whether it belongs to the silhouette (non-zero).
    colours
        RGBA per primitive (clipped to 0-255).
    sub
        Sample rows per pixel (coverage across a row is exact).
    """
    longest = 4
    for i in range(len(ops)):
        longest = max(longest, int(ops[i, 2]) - int(ops[i, 1]) + 2)
    quad = np.empty((longest, 8))
    h = canvas.shape[1]
    row_starts = np.empty(h * sub + 1, dtype=np.int64)
    row_fill = np.empty(h * sub + 1, dtype=np.int64)
    cap = 4096
    xa_, xb_ = np.empty(cap), np.empty(cap)
    ev_x = np.empty(3 * cap + 3, dtype=np.int64)
    ev_run, ev_part = np.empty(3 * cap + 3, dtype=np.float32), np.empty(3 * cap + 3, np.float32)
    i = 0
    while i < len(ops):
        kind = int(ops[i, 0])
        size = ops[i, 3] * unit
        if kind == DOTS:  # Pillow's ellipse filled the pixels of its inclusive box: a bit more
            size = max(size, 0.6) + 0.25
        need = _draw_op(
            canvas, mask, xy, kind, int(ops[i, 1]), int(ops[i, 2]), size, ops[i, 4] != 0.0,
            colours[i], sub, quad, row_starts, row_fill, xa_, xb_, ev_x, ev_run, ev_part,
        )  # fmt: skip
        if need == 0:
            i += 1
            continue
        cap = 2 * need  # too little room: grow, and draw it again
        xa_, xb_ = np.empty(cap), np.empty(cap)
        ev_x = np.empty(3 * cap + 3, dtype=np.int64)
        ev_run = np.empty(3 * cap + 3, dtype=np.float32)
        ev_part = np.empty(3 * cap + 3, dtype=np.float32)


@njit(cache=True, nogil=True)
def bands(canvas: np.ndarray, colours: np.ndarray, index: np.ndarray, vertical: bool) -> None:
    """Fill ``canvas`` (``(3, h, w)``) with flat bands: row (``vertical``) or column ``i``
    gets ``colours[index[i]]``."""
    _, h, w = canvas.shape
    line = np.empty(w, dtype=np.float32)
    for c in range(3):
        if not vertical:
            for x in range(w):
                line[x] = colours[index[x], c]
        for y in range(h):
            if vertical:
                canvas[c, y, :] = colours[index[y], c]
            else:
                for x in range(w):
                    canvas[c, y, x] = line[x]


@njit(cache=True, nogil=True)
def _box_blur(lit: np.ndarray, side: np.ndarray, radius: float) -> None:
    """Box blur of ``radius`` pixels (fractional ends) of ``(3, h, w)`` planes, in place.

    As Pillow's ``BoxBlur``: each pixel becomes the mean over ``2 radius + 1`` pixels, the two
    outermost weighted by the fraction of ``radius``, rows then columns; beyond the border the
    edge pixel repeats. Rows go through a padded copy, so every sum is a shifted, vectorised
    pass.
    """
    nc, h, w = lit.shape
    n = int(radius)
    f = np.float32(radius - n)
    norm = np.float32(1.0 / (2.0 * radius + 1.0))
    pad = n + 1
    buf = np.empty(w + 2 * pad, dtype=np.float32)
    for c in range(nc):
        for y in range(h):  # along rows
            first, last = lit[c, y, 0], lit[c, y, w - 1]
            for x in range(pad):
                buf[x] = first
                buf[np.uint64(pad + w + x)] = last
            for x in range(w):
                buf[np.uint64(pad + x)] = lit[c, y, x]
            for x in range(w):
                side[c, y, x] = buf[np.uint64(pad + x)]
            for k in range(1, n + 1):
                for x in range(w):
                    side[c, y, x] += buf[np.uint64(pad + x - k)] + buf[np.uint64(pad + x + k)]
            for x in range(w):
                edge = buf[np.uint64(x)] + buf[np.uint64(x + 2 * pad)]
                side[c, y, x] = (side[c, y, x] + f * edge) * norm
        for y in range(h):  # along columns
            for x in range(w):
                lit[c, y, x] = side[c, y, x]
            for k in range(1, n + 2):
                ya, yb = max(y - k, 0), min(y + k, h - 1)
                wk = np.float32(1.0) if k <= n else f
                for x in range(w):
                    lit[c, y, x] += wk * (side[c, ya, x] + side[c, yb, x])
            for x in range(w):
                lit[c, y, x] *= norm


@njit(cache=True, nogil=True)
def finish(
    canvas: np.ndarray,
    shade: np.ndarray,
    iy: np.ndarray,
    fy: np.ndarray,
    ix: np.ndarray,
    fx: np.ndarray,
    tint: np.ndarray,
    blur: float,
    contrast: float,
    noise: np.ndarray,
    oy: int,
    ox: int,
    sigma: float,
    side: np.ndarray,
    out: np.ndarray,
) -> None:
    """Light, tint, blur, contrast and noise ``canvas`` (in place), then round into ``out``.

    ``canvas`` is float32 colour planes ``(3, h, w)``. ``shade`` is a coarse brightness field,
    upsampled bilinearly by the per-row and per-column left neighbours ``iy``/``ix`` (``h`` and
    ``w`` long) and right weights ``fy``/``fx``. ``noise[:, oy:oy + h, ox:ox + w]`` is unit
    noise, scaled by ``sigma``; ``side`` is scratch like ``canvas``; ``out`` is ``uint8 (h, w, 3)``.
    """
    _, h, w = canvas.shape
    lh, lw = shade.shape
    # The field upsampled along rows first (lh x w), then each output row is a blend of two.
    across = np.empty((lh, w), dtype=np.float32)
    for r in range(lh):
        for x in range(w):
            x0 = ix[x]
            x1 = x0 + 1 if x0 + 1 < lw else lw - 1
            across[r, x] = shade[r, x0] + (shade[r, x1] - shade[r, x0]) * fx[x]
    light = np.empty(w, dtype=np.float32)
    for y in range(h):
        y0 = iy[y]
        y1 = y0 + 1 if y0 + 1 < lh else lh - 1
        ty = fy[y]
        top = across[y0]
        bot = across[y1]
        for x in range(w):
            light[x] = top[x] + (bot[x] - top[x]) * ty
        for c in range(3):
            t = np.float32(tint[c])
            row = canvas[c, y]
            for x in range(w):
                row[x] *= light[x] * t
    if blur > 0.0:
        _box_blur(canvas, side, blur)
    offset = 0.5  # rounds on the cast to bytes
    if contrast != 1.0:
        total = 0.0
        for c in range(3):
            for y in range(h):
                row = canvas[c, y]
                part = np.float32(0.0)
                for x in range(w):
                    part += row[x]
                total += part
        offset += total / (3.0 * h * w) * (min(1.0, contrast) ** 0.6 - contrast)
    k = np.float32(contrast)
    off = np.float32(offset)
    sg = np.float32(sigma)
    lo, hi = np.float32(0.0), np.float32(255.0)
    level = np.empty((3, w), dtype=np.int32)
    flat = out.reshape(h, 3 * w)
    for y in range(h):
        for c in range(3):
            row = canvas[c, y]
            lev = level[c]
            if sigma > 0.0:
                grain = noise[c, oy + y]
                for x in range(w):
                    v = row[x] * k + off + grain[np.uint64(ox + x)] * sg
                    v = v if v > lo else lo
                    lev[x] = np.int32(v if v < hi else hi)
            else:
                for x in range(w):
                    v = row[x] * k + off
                    v = v if v > lo else lo
                    lev[x] = np.int32(v if v < hi else hi)
        dst = flat[y]
        r, g, b = level[0], level[1], level[2]
        for x in range(w):
            dst[3 * x] = r[x]
            dst[3 * x + 1] = g[x]
            dst[3 * x + 2] = b[x]


@njit(cache=True, nogil=True)
def lift_project(
    pts: np.ndarray,
    modes: np.ndarray,
    dz: np.ndarray,
    bodies: np.ndarray,
    head: np.ndarray,
    view_dir: np.ndarray,
    rot: np.ndarray,
    body_rot: np.ndarray,
    camera: np.ndarray,
) -> np.ndarray:
    """Pixel positions of face-plane points: lifted to 3-D, turned and projected.

    ``modes`` says how each point is lifted: 0 onto the head ellipsoid's surface, 1 onto its
    silhouette as seen along ``view_dir``, 2 flat at ``z = 0``; ``dz`` is added to the depth.
    ``head`` is (face width, top, chin, depth); ``bodies`` marks points turned by ``body_rot``
    instead of ``rot``; ``camera`` is (focal length, centre x, centre y, pixels per unit).
    """
    fw, top, chin, depth = head[0], head[1], head[2], head[3]
    focal, cx, cy, unit = camera[0], camera[1], camera[2], camera[3]
    d2 = depth * depth
    v0, v1 = view_dir[0], view_dir[1]
    v2 = max(view_dir[2], 1e-3)
    out = np.empty((len(pts), 2))
    for i in range(len(pts)):
        x, y = pts[i, 0], pts[i, 1]
        mode = modes[i]
        z = 0.0
        if mode == 0 or mode == 1:
            b = top if y < 0.0 else chin
            r2 = (x / fw) ** 2 + (y / b) ** 2
            if mode == 0:
                z = depth * np.sqrt(max(1.0 - r2, 0.0))
            else:
                z_sil = -(x * v0 / (fw * fw) + y * v1 / (b * b)) * d2 / v2
                k = np.sqrt(r2 / max(r2 + z_sil * z_sil / d2, 1e-12))
                x *= k
                y *= k
                z = z_sil * k
        z += dz[i]
        m = body_rot if bodies[i] else rot
        q0 = m[0, 0] * x + m[0, 1] * y + m[0, 2] * z
        q1 = m[1, 0] * x + m[1, 1] * y + m[1, 2] * z
        q2 = m[2, 0] * x + m[2, 1] * y + m[2, 2] * z
        k = focal / (focal - q2)
        out[i, 0] = cx + unit * q0 * k
        out[i, 1] = cy + unit * q1 * k
    return out


@njit(cache=True, nogil=True)
def shading(
    lh: int, lw: int, geometry: np.ndarray, lambert: np.ndarray, gradient: np.ndarray
) -> np.ndarray:
    """Brightness on an ``lh`` x ``lw`` grid: Lambert shading of the head ellipsoid inside
    it, a gentle gradient outside (see ``synth_render._lighting``).

    ``geometry``: cell width and height in pixels, head centre x and y, pixels per face unit,
    cosine and sine of the roll, face width, top and chin. ``lambert``: weights of the normal's
    u, v and z components, then ambient offset and scale. ``gradient``: slope across and down,
    gamma and level.
    """
    cw, ch, cx, cy, unit, cr, sr, fw, top, chin = geometry[:10]
    wu, wv, wz, base, scale = lambert[:5]
    gx, gy, gamma, level = gradient[:4]
    out = np.empty((lh, lw), dtype=np.float32)
    for r in range(lh):
        dy = ((r + 0.5) * ch - cy) / unit
        for c in range(lw):
            dx = ((c + 0.5) * cw - cx) / unit
            u = (cr * dx + sr * dy) / fw
            v = -sr * dx + cr * dy
            v /= top + 0.1 if v < 0.0 else chin
            r2 = u * u + v * v
            nz = np.sqrt(min(max(1.0 - r2, 0.0), 1.0))
            lam = min(max(u * wu + v * wv + nz * wz, 0.0), 1.0)
            face = base + scale * lam
            inside = min(max((1.1 - np.sqrt(r2)) / 0.2, 0.0), 1.0)
            grad = 1.0 + gx * ((c + 0.5) / lw - 0.5) + gy * ((r + 0.5) / lh - 0.5)
            out[r, c] = level * (grad + inside * (face - grad)) ** gamma
    return out
