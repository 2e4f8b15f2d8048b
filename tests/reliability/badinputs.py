"""A corpus of bad and unusual image files, generated here (nothing is downloaded).

Each :class:`BadImage` says what the importer (``check_image``, the gatekeeper of ``data/raw``)
and the HTTP API (``Service.decode``) must do with it:

- ``importer``: ``"accept"`` (converted to a clean 8-bit RGB PNG) or the reason code of the
  refusal;
- ``api``: ``"decode"`` (a readable image: the request goes on to detection) or the
  ``(status, code)`` of the refusal.

Not a test module.
"""

from __future__ import annotations

import base64
import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

# The API's limit in the corpus tests (serving.max_image_pixels): small, so bombs stay cheap.
API_MAX_PIXELS = 4_000_000
INVALID = (422, "invalid_image")
TOO_LARGE = (413, "image_too_large")


@dataclass(frozen=True)
class BadImage:
    """One kind of input file and the expected outcome for each consumer."""

    kind: str
    data: bytes
    importer: str
    api: str | tuple[int, str]

    @property
    def b64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")


def noise(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_header_only(width: int, height: int, *, depth: int = 8, color: int = 2) -> bytes:
    """A PNG that announces ``width x height`` pixels but holds almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + png_chunk(b"IEND", b"")
    )


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small JPEG whose SOF header is patched to announce ``width x height``."""
    data = bytearray(encode(noise(3, (16, 16)), "JPEG"))
    i = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, i + 5, height, width)
    return bytes(data)


def bmp_with_size(width: int, height: int) -> bytes:
    data = bytearray(encode(noise(4, (8, 8)), "BMP"))
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def exif_jpeg(orientation: int, *, seed: int = 30) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010E] = "Zelda Testperson at home"  # ImageDescription: personal text
    return encode(noise(seed, (80, 48)), "JPEG", exif=exif.tobytes())


def corrupt_exif_jpeg() -> bytes:
    """A JPEG whose APP1 segment claims EXIF but holds garbage."""
    data = encode(noise(31), "JPEG")
    payload = b"Exif\0\0" + b"MM\0*" + b"\xff" * 40
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + app1 + data[2:]


def frames(n: int, seed: int = 40) -> list[Image.Image]:
    return [noise(seed + k, (48, 48)) for k in range(n)]


def animated(fmt: str) -> bytes:
    f = frames(3)
    return encode(f[0], fmt, save_all=True, append_images=f[1:], duration=100, loop=0)


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("payload.sh", "#!/bin/sh\necho polyglot-payload-marker\n")
    return buf.getvalue()


def png_with_text(text: bytes) -> bytes:
    data = encode(noise(50), "PNG")
    iend = data.rindex(b"IEND") - 4
    return data[:iend] + png_chunk(b"tEXt", b"Comment\0" + text) + data[iend:]


def float_tiff(values: np.ndarray) -> bytes:
    return encode(Image.fromarray(values.astype(np.float32), mode="F"), "TIFF")


def corpus() -> list[BadImage]:
    """Every kind, freshly generated (deterministic)."""
    jpg = encode(noise(1), "JPEG")
    png = encode(noise(2), "PNG")
    webp = encode(noise(5), "WEBP")
    corrupt_mid = jpg[:300] + bytes(400) + jpg[700:]
    png_bad_crc = bytearray(png)
    png_bad_crc[png.index(b"IDAT") + 20] ^= 0xFF
    sixteen = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    nan_inf = np.full((48, 48), np.nan)
    nan_inf[:8] = np.inf
    nan_inf[8:16] = -np.inf
    negative = -np.linspace(0, 1000, 48 * 48).reshape(48, 48)
    items = [
        BadImage("zero_bytes", b"", "empty_file", (422, "invalid_request")),
        BadImage("truncated_jpeg", jpg[: len(jpg) // 2], "truncated", INVALID),
        BadImage("truncated_png", png[: len(png) // 2], "truncated", INVALID),
        BadImage("truncated_webp", webp[: len(webp) // 2], "corrupt", INVALID),
        BadImage("corrupt_jpeg_scan", corrupt_mid, "corrupt", INVALID),
        BadImage("png_bad_crc", bytes(png_bad_crc), "corrupt", INVALID),
        BadImage("header_only_magic", b"\x89PNG\r\n\x1a\n", "not_an_image", INVALID),
        BadImage("text_file", b"these are notes, not a photograph\n", "not_an_image", INVALID),
        BadImage("svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>', "not_an_image", INVALID),
        BadImage(
            "postscript_eps",
            b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n(x) run\nshowpage\n",
            "unsupported_format",
            INVALID,
        ),
        BadImage("ico", encode(noise(6), "ICO"), "unsupported_format", INVALID),
        BadImage(
            "huge_png_header", png_header_only(100_000, 100_000), "decompression_bomb", TOO_LARGE
        ),
        BadImage(
            "huge_jpeg_header", jpeg_with_size(60_000, 60_000), "decompression_bomb", TOO_LARGE
        ),
        BadImage("huge_bmp_header", bmp_with_size(50_000, 50_000), "decompression_bomb", TOO_LARGE),
        BadImage("over_limit_png", png_header_only(3000, 2000), "decompression_bomb", TOO_LARGE),
        BadImage("one_pixel", encode(noise(7, (1, 1)), "PNG"), "too_small", "decode"),
        BadImage("extreme_aspect", encode(noise(8, (4000, 2)), "PNG"), "too_small", "decode"),
        BadImage("cmyk_jpeg", encode(noise(9).convert("CMYK"), "JPEG"), "accept", "decode"),
        BadImage("sixteen_bit_png", encode(Image.fromarray(sixteen), "PNG"), "accept", "decode"),
        BadImage("palette_png", encode(noise(10).convert("P"), "PNG"), "accept", "decode"),
        BadImage(
            "palette_transparency",
            encode(noise(11).convert("P"), "PNG", transparency=0),
            "accept",
            "decode",
        ),
        BadImage("grayscale_jpeg", encode(noise(12).convert("L"), "JPEG"), "accept", "decode"),
        BadImage("one_bit_png", encode(noise(13).convert("1"), "PNG"), "accept", "decode"),
        BadImage("rgba_png", encode(noise(14).convert("RGBA"), "PNG"), "accept", "decode"),
        BadImage("la_png", encode(noise(15).convert("LA"), "PNG"), "accept", "decode"),
        *[
            BadImage(f"exif_orientation_{k}", exif_jpeg(k, seed=30 + k), "accept", "decode")
            for k in range(2, 9)
        ],
        BadImage("exif_orientation_invalid", exif_jpeg(65535), "accept", "decode"),
        BadImage("exif_garbage", corrupt_exif_jpeg(), "accept", "decode"),
        BadImage("animated_gif", animated("GIF"), "accept", INVALID),
        BadImage("animated_png", animated("PNG"), "accept", "decode"),
        BadImage("animated_webp", animated("WEBP"), "accept", "decode"),
        BadImage("jpeg_zip_polyglot", jpg + zip_bytes(), "accept", "decode"),
        BadImage(
            "png_html_polyglot",
            png_with_text(b"<script>alert('polyglot-payload-marker')</script>"),
            "accept",
            "decode",
        ),
        BadImage("pdf_jpeg_polyglot", b"%PDF-1.4\n" + jpg, "not_an_image", INVALID),
        BadImage("tiff_float_nan_inf", float_tiff(nan_inf), "accept", INVALID),
        BadImage("tiff_float_negative", float_tiff(negative), "accept", INVALID),
        BadImage("bmp_top_down", bmp_with_size(8, -8), "too_small", "decode"),
        BadImage("bmp_zero_size", bmp_with_size(0, 0), "not_an_image", INVALID),
    ]
    return items


PAYLOAD_MARKERS: tuple[bytes, ...] = (
    b"polyglot-payload-marker",
    b"Zelda",
    b"payload.sh",
)
