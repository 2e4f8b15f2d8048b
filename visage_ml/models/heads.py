"""Classification heads and margin losses for training identity embedders.

As in insightface's arcface_torch, the head that produces cosine logits (:class:`NormLinear`)
is separate from the loss that adds the angular margins (:class:`CombinedMarginLoss`); one loss
covers ArcFace ``(m1, m2, m3) = (1, 0.5, 0)``, CosFace ``(1, 0, 0.35)`` and their combinations.
A head exists only during training: the exported embedder is the backbone alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from visage_ml.models.backbones import UNKNOWN_NAME


class NormLinear(nn.Module):
    """Cosine logits: normalised class weights times normalised features, in ``[-1, 1]``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(N, C)`` cosines between each feature and each class centre."""
        return F.linear(F.normalize(x.float(), dim=1), F.normalize(self.weight.float(), dim=1))


class CombinedMarginLoss(nn.Module):
    """Cross-entropy over ``s * logits`` where the target cosine becomes ``cos(m1*θ + m2) - m3``.

    Parameters
    ----------
    s
        Scale of all logits.
    m1, m2, m3
        Multiplicative angular (SphereFace), additive angular (ArcFace) and additive cosine
        (CosFace) margins. ``(1, 0, 0)`` is plain normalised-softmax cross-entropy.

    Notes
    -----
    Where ``m1*θ + m2`` would pass π the margined cosine stops decreasing with θ; there, as in
    ArcFace, the target becomes ``cos θ - m3 - sin(π - m2)*m2`` so the loss stays monotonic.
    """

    def __init__(self, s: float, m1: float = 1.0, m2: float = 0.0, m3: float = 0.0):
        super().__init__()
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)

    def margin_logits(self, cosines: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``s`` times ``cosines`` with the margins applied to each row's target class."""
        cosines = cosines.float()
        rows = torch.arange(cosines.shape[0], device=cosines.device)
        target = cosines[rows, labels]
        if self.m1 != 1.0 or self.m2 != 0.0:
            theta = torch.acos(target.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
            angle = self.m1 * theta + self.m2
            fallback = target - math.sin(math.pi - self.m2) * self.m2
            margined = torch.where(angle <= math.pi, torch.cos(angle), fallback)
        else:
            margined = target
        margined = margined - self.m3
        out = cosines.clone()
        out[rows, labels] = margined
        return out * self.s

    def forward(self, cosines: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the margined, scaled logits."""
        return F.cross_entropy(self.margin_logits(cosines, labels), labels)


class MarginHead(nn.Module):
    """:class:`NormLinear` class centres with a :class:`CombinedMarginLoss`."""

    def __init__(self, embedding_dim: int, num_classes: int, loss: CombinedMarginLoss):
        super().__init__()
        self.fc = NormLinear(embedding_dim, num_classes)
        self.loss = loss

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine logits ``(N, C)`` without margins (for accuracy)."""
        return self.fc(embeddings)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training loss of ``embeddings`` whose identities are ``labels``."""
        return self.loss(self.fc(embeddings), labels)


class SoftmaxHead(nn.Module):
    """Baseline: an ordinary linear classifier and cross-entropy over the embeddings."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float):
        super().__init__()
        # Embeddings are unit vectors: scale them so the logits can grow past [-|w|, |w|].
        self.scale = float(scale)
        self.fc = nn.Linear(embedding_dim, num_classes)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, C)``."""
        return self.fc(embeddings.float() * self.scale)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the class logits."""
        return F.cross_entropy(self.logits(embeddings), labels)


HeadFactory = Callable[..., nn.Module]
HEADS: dict[str, HeadFactory] = {}


def register_head(name: str) -> Callable[[HeadFactory], HeadFactory]:
    """Decorator adding ``fn(*, embedding_dim, num_classes, s, m1, m2, m3) -> nn.Module``."""

    def deco(fn: HeadFactory) -> HeadFactory:
        if name in HEADS:
            raise ValueError(f"head '{name}' is already registered")
        HEADS[name] = fn
        return fn

    return deco


def list_heads() -> list[str]:
    """Names accepted by :func:`create_head`, sorted."""
    return sorted(HEADS)


def create_head(
    name: str,
    *,
    embedding_dim: int,
    num_classes: int,
    s: float = 32.0,
    m1: float = 1.0,
    m2: float = 0.5,
    m3: float = 0.35,
) -> nn.Module:
    """Build the training head ``name``; calling it as ``head(embeddings, labels)`` gives the loss.

    ``arcface`` uses ``(1, m2, 0)``, ``cosface`` uses ``(1, 0, m3)``, ``combined`` uses all three
    margins as given and ``softmax`` none (a plain linear classifier on ``s``-scaled embeddings).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the choices).
    """
    if name not in HEADS:
        raise ValueError(
            UNKNOWN_NAME.format(what="head", name=name, choices=", ".join(list_heads()))
        )
    return HEADS[name](
        embedding_dim=embedding_dim, num_classes=num_classes, s=s, m1=m1, m2=m2, m3=m3
    )


@register_head("arcface")
def _arcface(
    *, embedding_dim: int, num_classes: int, s: float, m1: float, m2: float, m3: float
) -> nn.Module:
    return MarginHead(embedding_dim, num_classes, CombinedMarginLoss(s, 1.0, m2, 0.0))


@register_head("cosface")
def _cosface(
    *, embedding_dim: int, num_classes: int, s: float, m1: float, m2: float, m3: float
) -> nn.Module:
    return MarginHead(embedding_dim, num_classes, CombinedMarginLoss(s, 1.0, 0.0, m3))


@register_head("combined")
def _combined(
    *, embedding_dim: int, num_classes: int, s: float, m1: float, m2: float, m3: float
) -> nn.Module:
    return MarginHead(embedding_dim, num_classes, CombinedMarginLoss(s, m1, m2, m3))


@register_head("softmax")
def _softmax(
    *, embedding_dim: int, num_classes: int, s: float, m1: float, m2: float, m3: float
) -> nn.Module:
    return SoftmaxHead(embedding_dim, num_classes, scale=s)
