"""Validate one untrusted image file and re-encode it as a metadata-free 8-bit RGB PNG.

Every image that enters ``data/raw`` from outside (an import) passes :func:`check_image`:

- only formats in :data:`ALLOWED_FORMATS` are decoded (Pillow would otherwise hand some formats,
  e.g. EPS, to external programs);
- the pixel count is checked from the header *before* decoding (decompression bombs), against
  ``serving.max_image_pixels`` and Pillow's own limit, whichever is lower;
- the whole image is decoded (truncated and corrupt files fail here, not later in the pipeline);
- EXIF orientation is applied, then the pixels are converted to 8-bit RGB: grayscale, alpha
  (composited on white), 16-bit, palette, CMYK and colour-managed images are converted and the
  kind of conversion is reported;
- the result is a *new* image object, so nothing of the source's metadata (EXIF with GPS
  position and camera serial, XMP, ICC, text chunks) can reach the PNG (data minimisation).

A refused file raises :class:`ImageRejectedError` with a stable reason code and a detail that never
contains the file's name.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from visage_ml.io import sha256_bytes

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
MIN_SIDE = 32

# Reason codes of a refused image (stable strings: the import report exposes them).
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED_FORMAT = "unsupported_format"
CORRUPT = "corrupt"
TRUNCATED = "truncated"
DECOMPRESSION_BOMB = "decompression_bomb"
TOO_SMALL = "too_small"

# Kinds of accepted-with-conversion images (counted per kind in the import report).
GRAYSCALE = "grayscale"
ALPHA = "rgba"
SIXTEEN_BIT = "16bit"
PALETTE = "palette"
CMYK = "cmyk"
EXIF_ROTATED = "exif_rotated"
ICC_CONVERTED = "icc_to_srgb"
MULTI_FRAME = "multi_frame"
OTHER_MODE = "other_mode"

# Errors Pillow raises from a malformed stream (its plugins are not consistent about which).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError)


class ImageRejectedError(Exception):
    """The file is not accepted; ``reason`` is a stable code, ``detail`` holds no file name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CheckedImage:
    """An accepted image, re-encoded: PNG bytes, their SHA-256, size and conversions applied."""

    png: bytes
    sha256: str
    width: int
    height: int
    conversions: tuple[str, ...]


def _quiet_pil() -> None:
    """Keep Pillow's DEBUG records out of the logs: they print EXIF values (names, places)."""
    pil = logging.getLogger("PIL")
    if pil.level < logging.INFO:
        pil.setLevel(logging.INFO)


def _pixel_limit(max_pixels: int) -> int:
    pil_limit = Image.MAX_IMAGE_PIXELS
    return min(max_pixels, pil_limit) if pil_limit else max_pixels


def _open(data: bytes, max_pixels: int) -> Image.Image:
    # Register every plugin first: ``formats=`` looks names up without loading plugins.
    Image.init()
    with warnings.catch_warnings():
        # Pillow warns above its limit and raises above twice that; both are bombs here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageRejectedError(DECOMPRESSION_BOMB, "more pixels than Pillow allows") from None
        except UnidentifiedImageError:
            raise ImageRejectedError(*_identify_other(data)) from None
        except _DECODE_ERRORS as exc:
            raise ImageRejectedError(_decode_reason(exc), type(exc).__name__) from None
    w, h = im.size
    if w * h > _pixel_limit(max_pixels):
        raise ImageRejectedError(
            DECOMPRESSION_BOMB, f"{w}x{h} pixels exceed the limit {max_pixels}"
        )
    return im


def _identify_other(data: bytes) -> tuple[str, str]:
    """Why Pillow refused: a format outside the allow-list, or no image at all.

    Only the header is parsed (``Image.open`` is lazy); nothing outside the allow-list is
    ever decoded.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            other = Image.open(io.BytesIO(data))
        except Exception:  # any failure to parse a header means "not an image we know"
            return NOT_AN_IMAGE, "no known image signature"
    fmt = other.format or "unknown"
    other.close()
    return UNSUPPORTED_FORMAT, f"{fmt} is not one of {', '.join(ALLOWED_FORMATS)}"


def _decode_reason(exc: BaseException) -> str:
    text = str(exc).lower()
    if "truncated" in text or isinstance(exc, EOFError):
        return TRUNCATED
    if "decompressed data too large" in text:
        return DECOMPRESSION_BOMB
    return CORRUPT


def _load(im: Image.Image) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageRejectedError(DECOMPRESSION_BOMB, "more pixels than Pillow allows") from None
        except _DECODE_ERRORS as exc:
            raise ImageRejectedError(_decode_reason(exc), type(exc).__name__) from None


def _orient(im: Image.Image, conversions: list[str]) -> Image.Image:
    try:
        orientation = im.getexif().get(0x0112, 1)
    except _DECODE_ERRORS:
        # Unreadable EXIF: nothing to orient by; it is dropped with the rest of the metadata.
        return im
    if orientation in (None, 1):
        return im
    try:
        rotated = ImageOps.exif_transpose(im)
    except _DECODE_ERRORS:
        return im
    if rotated is None:
        return im
    conversions.append(EXIF_ROTATED)
    return rotated


def _on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _sixteen_bit_to_rgb(im: Image.Image) -> Image.Image:
    arr = np.asarray(im)
    if im.mode == "F":
        # Float images have no fixed range: [0, 1] when they fit in it, else [0, 255].
        scale = 255.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 1.0
        out = np.clip(np.nan_to_num(arr.astype(np.float64)) * scale, 0, 255)
    else:
        # 16-bit samples (I;16 and PNG/TIFF 16-bit read as I): 0..65535 -> 0..255.
        out = np.clip(arr.astype(np.float64), 0, 65535) / 257.0
    return Image.fromarray(np.rint(out).astype(np.uint8), mode="L").convert("RGB")


def _icc_to_srgb(im: Image.Image, conversions: list[str]) -> Image.Image:
    profile = im.info.get("icc_profile")
    if not profile or im.mode not in ("RGB", "CMYK"):
        return im
    try:
        from PIL import ImageCms
    except ImportError:  # Pillow built without LittleCMS: plain conversion
        return im
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        srgb = ImageCms.createProfile("sRGB")
        out = ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError):
        # A broken or unsupported profile: keep the numbers as they are (plain conversion).
        return im
    if out is None:
        return im
    conversions.append(ICC_CONVERTED)
    return out


def _to_rgb(im: Image.Image, conversions: list[str]) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return _icc_to_srgb(im, conversions)
    if mode == "CMYK":
        conversions.append(CMYK)
        converted = _icc_to_srgb(im, conversions)
        return converted if converted.mode == "RGB" else converted.convert("RGB")
    if mode in ("1", "L"):
        conversions.append(GRAYSCALE)
        return im.convert("RGB")
    if mode in ("LA", "La"):
        conversions.extend((GRAYSCALE, ALPHA))
        return _on_white(im)
    if mode in ("RGBA", "RGBa"):
        conversions.append(ALPHA)
        return _on_white(im)
    if mode in ("P", "PA"):
        conversions.append(PALETTE)
        if mode == "PA" or "transparency" in im.info:
            conversions.append(ALPHA)
            return _on_white(im)
        return im.convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        conversions.extend((SIXTEEN_BIT, GRAYSCALE))
        return _sixteen_bit_to_rgb(im)
    conversions.append(OTHER_MODE)
    return im.convert("RGB")


def check_image(data: bytes, *, max_pixels: int, min_side: int = MIN_SIDE) -> CheckedImage:
    """Decode ``data``, refuse it with a reason, or return it as a clean 8-bit RGB PNG.

    Parameters
    ----------
    data
        The original file's bytes.
    max_pixels
        Largest accepted ``width * height`` (``serving.max_image_pixels``); larger images are
        refused as decompression bombs before their pixels are decoded.
    min_side
        Smallest accepted width and height, after EXIF orientation.

    Returns
    -------
    CheckedImage
        PNG bytes without any metadata, their SHA-256, width, height and the conversions made.

    Raises
    ------
    ImageRejectedError
        With ``reason`` one of ``empty_file``, ``not_an_image``, ``unsupported_format``,
        ``corrupt``, ``truncated``, ``decompression_bomb``, ``too_small``.
    """
    _quiet_pil()
    if not data:
        raise ImageRejectedError(EMPTY_FILE, "zero bytes")
    im = _open(data, max_pixels)
    conversions: list[str] = []
    if getattr(im, "n_frames", 1) > 1:
        conversions.append(MULTI_FRAME)  # the first frame is kept
    _load(im)
    try:
        im = _orient(im, conversions)
        rgb = _to_rgb(im, conversions)
    except _DECODE_ERRORS as exc:
        raise ImageRejectedError(_decode_reason(exc), type(exc).__name__) from None
    w, h = rgb.size
    if min(w, h) < min_side:
        raise ImageRejectedError(
            TOO_SMALL, f"{w}x{h} pixels; at least {min_side} on each side needed"
        )
    # A fresh image carries no info dict: no EXIF, XMP, ICC, text or dpi reaches the PNG.
    clean = Image.frombytes("RGB", (w, h), rgb.tobytes())
    buf = io.BytesIO()
    clean.save(buf, format="PNG", compress_level=6)
    png = buf.getvalue()
    return CheckedImage(
        png=png,
        sha256=sha256_bytes(png),
        width=w,
        height=h,
        conversions=tuple(dict.fromkeys(conversions)),
    )
