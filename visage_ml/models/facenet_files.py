"""Where facenet-pytorch's published InceptionResnetV1 weights live, without importing torch.

The file names it caches them under in ``$TORCH_HOME/checkpoints`` (see
``facenet_pytorch.models.inception_resnet_v1.load_weights``). Kept apart from
:mod:`visage_ml.models.backbones` so that ``visage models`` and every other command start
without loading torch (about 1.3 s of each command's start).
"""

from __future__ import annotations

import os
from pathlib import Path

FACENET_WEIGHTS: dict[str, str] = {
    "vggface2": "20180402-114759-vggface2.pt",
    "casia-webface": "20180408-102900-casia-webface.pt",
}
FACENET_RELEASE = "https://github.com/timesler/facenet-pytorch/releases/tag/v2.2.9"


def torch_home() -> Path:
    """``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch`` (as torch.hub)."""
    default = os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", default)))


def facenet_weights_path(name: str) -> Path:
    """Where facenet-pytorch's weights ``name`` are expected: ``$TORCH_HOME/checkpoints/<file>``."""
    return torch_home() / "checkpoints" / FACENET_WEIGHTS[name]
