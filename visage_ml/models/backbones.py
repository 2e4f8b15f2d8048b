"""Identity-embedding backbones behind one registry (timm's ``create_model`` pattern).

Every network built here is an :class:`Embedder`: a trunk producing ``(N, D)`` features followed
by L2 normalisation, so cosine similarity is a dot product of its outputs. New architectures
join with :func:`register_backbone`; nothing downstream switches on names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visage_ml.models.facenet_files import (  # noqa: F401 (re-exported)
    FACENET_RELEASE,
    FACENET_WEIGHTS,
    facenet_weights_path,
    torch_home,
)

logger = logging.getLogger(__name__)

BackboneFactory = Callable[..., nn.Module]
BACKBONES: dict[str, BackboneFactory] = {}

MISSING_WEIGHTS = (
    "pretrained weights '{name}' not found: expected the file {file} in the folder {folder}. "
    "visage-ml never downloads at run time: run `visage models fetch {name}` (downloads, checks "
    "its SHA-256 and places it), or offline download {file} from the facenet-pytorch release "
    "assets ({release}) on another machine and run `visage models fetch {name} --file PATH` "
    "(or copy it into {folder}; TORCH_HOME moves the folder), or set train_embedder.init to "
    "'scratch' or to the path of a .pt state dict."
)
UNKNOWN_NAME = "unknown {what} '{name}'; choose one of: {choices}"


class Embedder(nn.Module):
    """A trunk producing ``(N, D)`` features, followed by L2 normalisation.

    Attributes ``name``, ``embedding_dim`` and ``input_size`` describe the network so that a
    checkpoint can rebuild it.
    """

    def __init__(self, trunk: nn.Module, *, name: str, embedding_dim: int, input_size: int):
        super().__init__()
        self.trunk = trunk
        self.name = name
        self.embedding_dim = embedding_dim
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map standardised NCHW images to unit-length embeddings ``(N, D)``."""
        return F.normalize(self.trunk(x).float(), p=2.0, dim=1)


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator adding ``fn(*, embedding_dim, input_size, init) -> nn.Module`` under ``name``.

    The factory returns the trunk (un-normalised ``(N, D)`` features); :func:`create_backbone`
    wraps it in an :class:`Embedder`.
    """

    def deco(fn: BackboneFactory) -> BackboneFactory:
        if name in BACKBONES:
            raise ValueError(f"backbone '{name}' is already registered")
        BACKBONES[name] = fn
        return fn

    return deco


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`, sorted."""
    return sorted(BACKBONES)


def create_backbone(
    name: str, *, embedding_dim: int, input_size: int, init: str = "scratch"
) -> Embedder:
    """Build the identity embedder ``name``.

    Parameters
    ----------
    name
        A registered backbone (see :func:`list_backbones`).
    embedding_dim
        Size ``D`` of the L2-normalised embedding.
    input_size
        Side in pixels of the square, aligned input crop.
    init
        ``scratch`` (random), a named published weight set (``vggface2``, ``casia-webface``;
        InceptionResnetV1 only, read from ``$TORCH_HOME/checkpoints``) or the path of a ``.pt``
        state dict (raw, or a visage-ml checkpoint holding ``state_dict``).

    Raises
    ------
    ValueError
        For an unknown name or an ``init`` the backbone does not accept.
    FileNotFoundError
        When named weights or the given path are missing; the message says where to put them.
    """
    if name not in BACKBONES:
        raise ValueError(
            UNKNOWN_NAME.format(what="backbone", name=name, choices=", ".join(list_backbones()))
        )
    trunk = BACKBONES[name](embedding_dim=embedding_dim, input_size=input_size, init=init)
    model = Embedder(trunk, name=name, embedding_dim=embedding_dim, input_size=input_size)
    if init not in ("scratch", *FACENET_WEIGHTS):
        _load_path_into(model, Path(init))
    return model


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"init weights file {path} not found; give the path of an existing .pt state dict "
            "or set train_embedder.init to 'scratch'"
        )
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds no state dict; expected a mapping of parameter tensors")
    return obj


def _load_path_into(model: Embedder, path: Path) -> None:
    """Load a state dict saved from an Embedder (``trunk.*`` keys) or from its bare trunk."""
    raw = _state_dict_from_file(path)
    own = model.state_dict()
    # Saved from an Embedder (``trunk.*``), from a bare trunk, or facenet-pytorch's own module
    # (``trunk.net.*`` here): take the reading that matches the most tensors.
    usable: dict[str, torch.Tensor] = {}
    for prefix in ("", "trunk.", "trunk.net."):
        cand = {f"{prefix}{k}": v for k, v in raw.items()}
        cand = {k: v for k, v in cand.items() if k in own and own[k].shape == v.shape}
        if len(cand) > len(usable):
            usable = cand
    if not usable:
        raise ValueError(
            f"{path} shares no parameter with backbone '{model.name}'; give weights saved from "
            "the same architecture"
        )
    skipped = sorted(set(own) - set(usable))
    model.load_state_dict(usable, strict=False)
    logger.info(
        "initialised %s from %s (%d tensors loaded, %d left as initialised)",
        model.name,
        path.name,
        len(usable),
        len(skipped),
    )


def _reduced(size: int, times: int) -> int:
    """Side after ``times`` stride-2, padding-1, kernel-3 convolutions (``ceil(n / 2)`` each)."""
    for _ in range(times):
        size = (size + 1) // 2
    return size


def _scratch_only(name: str, init: str) -> None:
    if init in FACENET_WEIGHTS:
        raise ValueError(
            f"backbone '{name}' has no published weights '{init}'; use init 'scratch', the path "
            "of a .pt state dict, or backbone 'inception_resnet_v1' for vggface2/casia-webface"
        )


class _EmbeddingHead(nn.Sequential):
    """ArcFace's 'E' output: BN - dropout - flatten - FC - BN over the final spatial map."""

    def __init__(self, channels: int, side: int, embedding_dim: int, dropout: float = 0.0):
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(channels * side * side, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
        )


# ---------------------------------------------------------------------------------------------
# MobileFaceNet (Chen et al., 2018)
# ---------------------------------------------------------------------------------------------


class _ConvBN(nn.Sequential):
    def __init__(
        self,
        cin: int,
        cout: int,
        k: int = 1,
        s: int = 1,
        groups: int = 1,
        *,
        act: str | None = "prelu",
    ):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act == "prelu":
            layers.append(nn.PReLU(cout))
        elif act == "relu":
            layers.append(nn.ReLU(inplace=True))
        elif act == "leaky":
            layers.append(nn.LeakyReLU(0.1, inplace=True))
        super().__init__(*layers)


class _Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 linear project."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, act: str):
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            _ConvBN(cin, hidden, 1, act=act),
            _ConvBN(hidden, hidden, 3, stride, groups=hidden, act=act),
            _ConvBN(hidden, cout, 1, act=None),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileFaceNet(nn.Module):
    """MobileFaceNet: inverted residuals and a global depthwise (GDC) embedding layer.

    ``width`` scales every channel count; ``setting`` rows are ``(expansion, channels, repeats,
    stride)``. The defaults are the paper's; :func:`_mobilefacenet` uses a lighter setting that
    trains in minutes on two CPU cores.
    """

    PAPER_SETTING: tuple[tuple[int, int, int, int], ...] = (
        (2, 64, 5, 2),
        (4, 128, 1, 2),
        (2, 128, 6, 1),
        (4, 128, 1, 2),
        (2, 128, 2, 1),
    )

    def __init__(
        self,
        *,
        embedding_dim: int,
        input_size: int,
        width: float = 1.0,
        setting: tuple[tuple[int, int, int, int], ...] = PAPER_SETTING,
        final_channels: int = 512,
        act: str = "prelu",
    ):
        super().__init__()

        def ch(c: int) -> int:
            return max(8, round(c * width / 8) * 8)

        stem = ch(64)
        layers: list[nn.Module] = [
            _ConvBN(3, stem, 3, 2, act=act),
            _ConvBN(stem, stem, 3, 1, groups=stem, act=act),
        ]
        cin = stem
        downsamples = 1
        for expansion, c, repeats, stride in setting:
            for i in range(repeats):
                s = stride if i == 0 else 1
                layers.append(_Bottleneck(cin, ch(c), s, expansion, act))
                cin = ch(c)
                downsamples += int(s == 2)
        final = ch(final_channels)
        layers.append(_ConvBN(cin, final, 1, act=act))
        self.features = nn.Sequential(*layers)
        side = _reduced(input_size, downsamples)
        # Global depthwise conv: one learned spatial weighting per channel (keeps face layout).
        self.gdc = _ConvBN(final, final, side, 1, groups=final, act=None)
        self.gdc[0].padding = (0, 0)
        self.project = nn.Sequential(
            nn.Flatten(),
            nn.Linear(final, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.gdc(self.features(x)))


# Half the paper's width and fewer repeats: about 1/6 of its multiply-adds, so the default
# configuration trains on SynthFaces in a few minutes on two CPU cores. PReLU stays: on
# SynthFaces it reached a higher val TAR@FAR=1e-2 in 6 epochs (0.89) than ReLU or LeakyReLU in 8
# (0.87), which pays for its slower backward pass.
MOBILEFACENET_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 2, 2),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
    (4, 128, 1, 2),
    (2, 128, 1, 1),
)


@register_backbone("mobilefacenet")
def _mobilefacenet(*, embedding_dim: int, input_size: int, init: str) -> nn.Module:
    _scratch_only("mobilefacenet", init)
    return MobileFaceNet(
        embedding_dim=embedding_dim,
        input_size=input_size,
        width=0.5,
        setting=MOBILEFACENET_SETTING,
        final_channels=512,
    )


@register_backbone("mobilefacenet_full")
def _mobilefacenet_full(*, embedding_dim: int, input_size: int, init: str) -> nn.Module:
    _scratch_only("mobilefacenet_full", init)
    return MobileFaceNet(embedding_dim=embedding_dim, input_size=input_size)


# ---------------------------------------------------------------------------------------------
# torchvision ResNets adapted to aligned face crops
# ---------------------------------------------------------------------------------------------


class _FaceResNet(nn.Module):
    """A torchvision ResNet with a 3x3 stride-2 stem (no max-pool) and the 'E' output layer.

    At 112 px the last stage sees a 7x7 map, as in ArcFace's IResNets; flattening it (rather
    than average pooling) keeps where on the aligned face each feature was found.
    """

    def __init__(self, arch: str, *, embedding_dim: int, input_size: int):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.body = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.layer1, net.layer2, net.layer3, net.layer4
        )
        channels = net.fc.in_features
        if channels > 512:
            # Bottleneck ResNets end with 2048 channels: reduce before the flattening FC.
            self.reduce: nn.Module = nn.Sequential(
                nn.Conv2d(channels, 512, 1, bias=False), nn.BatchNorm2d(512), nn.ReLU(inplace=True)
            )
            channels = 512
        else:
            self.reduce = nn.Identity()
        self.head = _EmbeddingHead(channels, _reduced(input_size, 4), embedding_dim, dropout=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.reduce(self.body(x)))


def _resnet_factory(arch: str) -> BackboneFactory:
    def factory(*, embedding_dim: int, input_size: int, init: str) -> nn.Module:
        _scratch_only(arch, init)
        return _FaceResNet(arch, embedding_dim=embedding_dim, input_size=input_size)

    factory.__name__ = f"_{arch}"
    return factory


for _arch in ("resnet18", "resnet34", "resnet50"):
    register_backbone(_arch)(_resnet_factory(_arch))


# ---------------------------------------------------------------------------------------------
# InceptionResnetV1 (facenet-pytorch)
# ---------------------------------------------------------------------------------------------

INCEPTION_MIN_SIZE = 75


class _FacenetTrunk(nn.Module):
    """facenet-pytorch's InceptionResnetV1 up to its (pre-normalisation) embedding."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        for layer in (
            n.conv2d_1a,
            n.conv2d_2a,
            n.conv2d_2b,
            n.maxpool_3a,
            n.conv2d_3b,
            n.conv2d_4a,
            n.conv2d_4b,
            n.repeat_1,
            n.mixed_6a,
            n.repeat_2,
            n.mixed_7a,
            n.repeat_3,
            n.block8,
            n.avgpool_1a,
            n.dropout,
        ):
            x = layer(x)
        return n.last_bn(n.last_linear(torch.flatten(x, 1)))


def load_facenet_weights(net: nn.Module, name: str) -> None:
    """Load facenet-pytorch's published weights ``name`` from ``$TORCH_HOME/checkpoints``.

    Never downloads: a missing file raises :class:`FileNotFoundError` naming the file, the folder
    and how to obtain it.
    """
    path = facenet_weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            MISSING_WEIGHTS.format(
                name=name, file=path.name, folder=path.parent, release=FACENET_RELEASE
            )
        )
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    # The published files include the classifier of the training identities; we do not use it.
    state = {k: v for k, v in state.items() if not k.startswith("logits.")}
    net.load_state_dict(state)
    logger.info("loaded InceptionResnetV1 weights '%s'", name)


@register_backbone("inception_resnet_v1")
def _inception_resnet_v1(*, embedding_dim: int, input_size: int, init: str) -> nn.Module:
    if input_size < INCEPTION_MIN_SIZE:
        raise ValueError(
            f"inception_resnet_v1 needs input_size >= {INCEPTION_MIN_SIZE} (its published "
            f"weights use 160), got {input_size}; raise train_embedder.input_size"
        )
    from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1

    # pretrained=None: facenet-pytorch would otherwise download; weights are loaded below.
    net = InceptionResnetV1(pretrained=None, classify=False)
    if init in FACENET_WEIGHTS:
        load_facenet_weights(net, init)
    if embedding_dim != net.last_linear.out_features:
        net.last_linear = nn.Linear(net.last_linear.in_features, embedding_dim, bias=False)
        net.last_bn = nn.BatchNorm1d(embedding_dim, eps=0.001, momentum=0.1, affine=True)
    return _FacenetTrunk(net)
