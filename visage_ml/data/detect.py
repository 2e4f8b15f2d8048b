"""Face detection with facenet-pytorch's MTCNN, and 5-point alignment of the detected faces.

MTCNN returns, per face, a box, a probability and 5 landmarks ``(x, y)``: the eye on the
image's left, the eye on the image's right, the nose tip, the mouth corner on the image's left
and the one on the image's right. That is the order of
:data:`visage_ml.preprocess.TEMPLATE_112`, so the landmarks go to
:func:`visage_ml.preprocess.align_face` unchanged (``tests/unit/test_detect.py`` checks the
order against SynthFaces' true landmarks).

MTCNN batches only images of one size, so :meth:`FaceDetector.detect` groups its input by size.
The MTCNN weights ship inside the facenet-pytorch wheel; nothing is downloaded.

MTCNN misses some faces that it finds in the mirror image or after a contrast stretch, and it
misses darker-skinned faces more often (``benchmarks/bench_detect.py --second-look``).
:func:`second_look` looks again, in those two views, at the images where no face passed: the
same label-free rule for everyone, at the cost of detection passes on the misses alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from visage_ml.preprocess import align_face, template

logger = logging.getLogger(__name__)

MSG_NO_FACENET = (
    "facenet-pytorch is not installed; install it with "
    "`pip install --no-deps facenet-pytorch==2.6.0` (see the Makefile's setup target)"
)
MSG_BAD_ARRAY = (
    "image {index}: expected an 8-bit image (H x W, H x W x 1, 3 or 4 channels, dtype uint8), "
    "got shape {shape} and dtype {dtype}; convert it to uint8 RGB first"
)


@dataclass(frozen=True)
class Detection:
    """One detected face: box (x1, y1, x2, y2), probability, and 5x2 landmarks (x, y)."""

    box: tuple[float, float, float, float]
    prob: float
    landmarks: np.ndarray
    view: str = "direct"  # or the second look's view that found it (SECOND_LOOK_VIEWS)

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


def to_rgb_array(image: Image.Image | np.ndarray, *, index: int = 0) -> np.ndarray:
    """``H x W x 3`` uint8 RGB view of a PIL image or array (grey is repeated, alpha dropped)."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ValueError(MSG_BAD_ARRAY.format(index=index, shape=a.shape, dtype=a.dtype))
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def _resolve_device(device: str) -> Any:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _channels_last_pooling(net: Any) -> None:
    """Swap each ``MaxPool2d`` of an MTCNN stage for the same pooling computed on a
    channels-last copy, returned in the layout it came in (so the next convolution runs as
    before). On CPU, PyTorch's pooling of channels-first tensors was 1.2-5 times slower on
    R-Net's and O-Net's shapes than of channels-last ones; a maximum is exact, so the
    detections are the same bit for bit (``tests/unit/test_detect.py``)."""
    import torch

    class ChannelsLastMaxPool(torch.nn.Module):
        def __init__(self, pool: torch.nn.MaxPool2d) -> None:
            super().__init__()
            self.pool = pool

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dim() != 4 or x.is_contiguous(memory_format=torch.channels_last):
                return self.pool(x)  # already fast; P-Net's input arrives channels-last
            return self.pool(x.contiguous(memory_format=torch.channels_last)).contiguous()

    for name, child in list(net.named_children()):
        if isinstance(child, torch.nn.MaxPool2d):
            setattr(net, name, ChannelsLastMaxPool(child))


class FaceDetector:
    """All faces in a batch of images, by facenet-pytorch's MTCNN.

    Parameters
    ----------
    device
        ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``) or ``"auto"``.
    min_face_size
        Smallest face (pixels) the image pyramid looks for; larger is faster.
    thresholds
        Acceptance thresholds of MTCNN's three stages (P-Net, R-Net, O-Net).
    batch_size
        Images per forward pass (within one image size).
    """

    def __init__(
        self,
        *,
        device: str = "cpu",
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        batch_size: int = 64,
    ) -> None:
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(MSG_NO_FACENET) from exc
        if min_face_size < 1:
            raise ValueError(f"min_face_size must be >= 1, got {min_face_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = _resolve_device(device)
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.batch_size = int(batch_size)
        self._mtcnn = MTCNN(
            keep_all=True,
            select_largest=False,
            min_face_size=self.min_face_size,
            thresholds=list(self.thresholds),
            post_process=False,
            device=self.device,
        )
        if self.device.type == "cpu":
            for net in (self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet):
                _channels_last_pooling(net)
        self._mtcnn.eval()

    def detect(self, images: Sequence[Image.Image | np.ndarray]) -> list[list[Detection]]:
        """Detect every face in each image.

        Parameters
        ----------
        images
            PIL images or uint8 arrays; grey and RGBA inputs are converted to RGB.

        Returns
        -------
        list of list of Detection
            Per input image, all faces sorted by probability (highest first); empty if none.
        """
        arrays = [to_rgb_array(im, index=i) for i, im in enumerate(images)]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, a in enumerate(arrays):
            by_size.setdefault(a.shape[:2], []).append(i)
        results: list[list[Detection]] = [[] for _ in arrays]
        for (h, w), indices in by_size.items():
            if min(h, w) < self.min_face_size:
                continue  # no face can be this small; MTCNN's image pyramid would be empty
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = np.stack([arrays[i] for i in chunk])
                boxes, probs, points = self._mtcnn.detect(batch, landmarks=True)
                for k, i in enumerate(chunk):
                    results[i] = _detections(boxes[k], probs[k], points[k])
        return results


def _detections(boxes: Any, probs: Any, points: Any) -> list[Detection]:
    if boxes is None:
        return []
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    lm = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2)
    order = np.argsort(-p, kind="stable")
    return [
        Detection(
            box=(float(b[j, 0]), float(b[j, 1]), float(b[j, 2]), float(b[j, 3])),
            prob=float(p[j]),
            landmarks=lm[j].copy(),
        )
        for j in order
    ]


def pick_face(detections: Sequence[Detection], *, min_prob: float) -> Detection | None:
    """The largest face with probability >= ``min_prob``, or ``None``."""
    confident = [d for d in detections if d.prob >= min_prob]
    if not confident:
        return None
    return max(confident, key=lambda d: d.area)


# The mirror image's landmarks, in template order: the eyes and the mouth corners change sides.
_MIRRORED_ORDER = [1, 0, 2, 4, 3]


def _mirror(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a[:, ::-1])


def _stretch(a: np.ndarray) -> np.ndarray:
    """Levels stretched so the 1st and 99th percentiles of all channels become 0 and 255."""
    lo, hi = np.percentile(a, (1.0, 99.0))
    if hi - lo < 1.0:
        return a
    out = (a.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(out, 0.0, 255.0).astype(np.uint8)


def from_mirror(d: Any, width: int) -> Detection:
    """A detection made on the mirror image (``a[:, ::-1]``), in the original's coordinates.

    Coordinates are continuous (pixel ``i`` spans ``[i, i + 1)``, as PIL crops boxes), so a
    point at ``x`` in the mirror is at ``width - x`` in the original.
    """
    x1, y1, x2, y2 = (float(v) for v in np.asarray(d.box, dtype=np.float64).reshape(4))
    lm = np.asarray(d.landmarks, dtype=np.float64).reshape(5, 2)[_MIRRORED_ORDER].copy()
    lm[:, 0] = width - lm[:, 0]
    return Detection(
        box=(width - x2, y1, width - x1, y2), prob=float(d.prob), landmarks=lm, view="mirror"
    )


def _from_stretch(d: Any, width: int) -> Detection:
    """A detection made on the contrast-stretched image: the same coordinates."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(d.box, dtype=np.float64).reshape(4))
    lm = np.asarray(d.landmarks, dtype=np.float64).reshape(5, 2).copy()
    return Detection(box=(x1, y1, x2, y2), prob=float(d.prob), landmarks=lm, view="contrast")


# The second look's views, in the order they are tried: (name, view of the pixels, detection
# on that view back in the original's coordinates).
SECOND_LOOK_VIEWS: tuple[
    tuple[str, Callable[[np.ndarray], np.ndarray], Callable[..., Detection]], ...
] = (
    ("mirror", _mirror, from_mirror),
    ("contrast", _stretch, _from_stretch),
)


def _passes(dets: Sequence[Any], min_prob: float) -> bool:
    return any(
        d is not None and d.landmarks is not None and float(d.prob) >= min_prob for d in dets
    )


def second_look(
    detector: Any,
    arrays: Sequence[np.ndarray],
    found: Sequence[Sequence[Any]],
    *,
    min_prob: float,
) -> list[list[Any]]:
    """Look again at the images where no face reached ``min_prob``: mirrored, then stretched.

    Parameters
    ----------
    detector
        Anything with ``detect(list of H x W x 3 uint8 arrays) -> list of detections``.
    arrays
        The images, ``H x W x 3`` uint8, as detected the first time.
    found
        The first pass's detections per image.
    min_prob
        A face at or above this probability needs no second look.

    Returns
    -------
    list of list
        ``found`` where it had a face; else the first view's detections that have one, in the
        original image's coordinates (``view`` names it); else ``found`` unchanged. The pixels
        to align stay the original ones: a view only says where the face is.
    """
    out = [list(dets) for dets in found]
    pending = [i for i, dets in enumerate(found) if not _passes(dets, min_prob)]
    for _, view, back in SECOND_LOOK_VIEWS:
        if not pending:
            break
        again = detector.detect([view(arrays[i]) for i in pending])
        still = []
        for i, dets in zip(pending, again, strict=True):
            width = int(arrays[i].shape[1])
            mapped = [back(d, width) for d in dets if d is not None and d.landmarks is not None]
            if _passes(mapped, min_prob):
                out[i] = sorted(mapped, key=lambda d: -d.prob)
            else:
                still.append(i)
        pending = still
    return out


def detect_and_align(
    detector: FaceDetector,
    images: Sequence[Image.Image | np.ndarray],
    *,
    size: int,
    min_prob: float,
    look_again: bool = False,
) -> tuple[np.ndarray, list[Detection | None]]:
    """Detect, keep the largest confident face per image and align it to the 5-point template.

    Parameters
    ----------
    detector
        The MTCNN wrapper.
    images
        PIL images or uint8 arrays (grey and RGBA are converted to RGB).
    size
        Side of the aligned square crops.
    min_prob
        Faces below this probability are ignored.
    look_again
        Give the images without a face a :func:`second_look`.

    Returns
    -------
    crops, faces
        ``(N, size, size, 3)`` uint8 crops (all zeros where no face was found) and the chosen
        detection per image (``None`` for a miss).
    """
    arrays = [to_rgb_array(im, index=i) for i, im in enumerate(images)]
    crops = np.zeros((len(arrays), size, size, 3), dtype=np.uint8)
    chosen: list[Detection | None] = []
    found = detector.detect(arrays)
    if look_again:
        found = second_look(detector, arrays, found, min_prob=min_prob)
    for i, dets in enumerate(found):
        face = pick_face(dets, min_prob=min_prob)
        chosen.append(face)
        if face is not None:
            crops[i] = align_face(arrays[i], face.landmarks, size)
    misses = sum(f is None for f in chosen)
    if misses:
        logger.debug("no face with prob >= %.2f in %d of %d images", min_prob, misses, len(chosen))
    return crops, chosen


def center_crop(
    image: Image.Image | np.ndarray, *, size: int, share: float
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The fallback crop of an aligned, centred data set where the detector found no face.

    The face is assumed to fill the square of side ``share * min(height, width)`` at the
    image's centre, with its landmarks where the template puts them; the crop goes through
    :func:`visage_ml.preprocess.align_face` like every detected face (a pure scale and shift).

    Parameters
    ----------
    image
        PIL image or uint8 array (grey and RGBA are converted to RGB).
    size
        Side of the square crop.
    share
        Side of the assumed face square as a share of the image's shorter side.

    Returns
    -------
    crop, box
        ``(size, size, 3)`` uint8 crop and the square ``(x1, y1, x2, y2)`` it was cut from.
    """
    array = to_rgb_array(image)
    h, w = array.shape[:2]
    side = share * min(h, w)
    x1, y1 = (w - side) / 2.0, (h - side) / 2.0
    landmarks = template(size) * (side / size) + np.array([x1, y1])
    return align_face(array, landmarks, size), (x1, y1, x1 + side, y1 + side)
