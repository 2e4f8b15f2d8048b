"""THE face preprocessing: 5-point alignment to a fixed template, resizing and standardisation.

Training, export, evaluation and serving all import this module; nothing else in visage-ml
normalises pixels. Standardisation is facenet-pytorch's ``fixed_image_standardization``
(``(x - 127.5) / 128``), expressed as a :class:`PreprocessSpec` that checkpoints and ONNX files
carry, so a model always travels with the preprocessing it was trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

MEAN = 127.5
STD = 128.0

# ArcFace's 5-point template for a 112x112 crop: left eye, right eye, nose tip, left and right
# mouth corners (image coordinates, the subject's left eye on the image's left).
TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


@dataclass(frozen=True)
class PreprocessSpec:
    """How pixels become model input: square ``input_size`` RGB crop, ``(x - mean) / std``, NCHW."""

    input_size: int
    mean: float = MEAN
    std: float = STD
    layout: str = "NCHW"
    color: str = "RGB"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        return cls(
            input_size=int(d["input_size"]),
            mean=float(d.get("mean", MEAN)),
            std=float(d.get("std", STD)),
            layout=str(d.get("layout", "NCHW")),
            color=str(d.get("color", "RGB")),
        )


def template(size: int) -> np.ndarray:
    """The 5-point template scaled to a ``size`` x ``size`` crop."""
    return TEMPLATE_112 * (size / 112.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` to ``dst``.

    Umeyama's method; returns a 2x3 matrix ``M`` with ``dst ~= M @ [x, y, 1]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / n
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    r = u @ np.diag(d) @ vt
    var_s = (sc**2).sum() / n
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    t = mu_d - scale * r @ mu_s
    m = np.empty((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = t
    return m


def align_face(image: Image.Image | np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """Warp ``image`` so its 5 ``landmarks`` land on the template; return ``size``² x 3 uint8.

    Parameters
    ----------
    image
        RGB PIL image or HxWx3 uint8 array.
    landmarks
        5x2 array (x, y) in the order of :data:`TEMPLATE_112`.
    size
        Side of the square output crop in pixels.
    """
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    m = similarity_transform(np.asarray(landmarks, dtype=np.float64), template(size))
    # PIL wants the inverse map (output pixel -> input pixel).
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2].ravel()
    warped = pil.transform(
        (size, size), Image.Transform.AFFINE, tuple(inv), resample=Image.Resampling.BILINEAR
    )
    return np.asarray(warped, dtype=np.uint8)


def resize_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """Resize an NHWC uint8 batch of square crops to ``size`` (no-op when already that size)."""
    batch = np.asarray(batch)
    if batch.shape[1] == size and batch.shape[2] == size:
        return batch
    out = np.empty((batch.shape[0], size, size, 3), dtype=np.uint8)
    for i, img in enumerate(batch):
        out[i] = np.asarray(
            Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8
        )
    return out


def standardize(x: Any, mean: float = MEAN, std: float = STD) -> Any:
    """``(x - mean) / std`` for numpy arrays and torch tensors alike (already float or not)."""
    return (x - mean) / std


def to_model_input(batch: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """NHWC uint8 crops -> NCHW float32 model input, as ``spec`` says."""
    batch = np.asarray(batch)
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(
            f"expected aligned RGB crops of shape (N, H, W, 3), got {tuple(batch.shape)}; "
            "align faces with visage_ml.preprocess.align_face first"
        )
    batch = resize_batch(batch, spec.input_size)
    x = standardize(batch.astype(np.float32), spec.mean, spec.std)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
