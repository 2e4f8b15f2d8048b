"""The demographic network: age (years), gender and skin-tone group from a small face crop.

It is its own compact multi-task CNN, trained from pixels, and never touches the identity
embedder: analytics mode must be able to run without computing a biometric template.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from visage_ml.config import GENDERS, GROUPS
from visage_ml.models.backbones import UNKNOWN_NAME


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DemographicNet(nn.Module):
    """Multi-task CNN: ``forward(x) -> (age (N,), gender_logits (N, 2), group_logits (N, 4))``.

    A tuple (not a dict) so that ONNX export names the outputs ``age``, ``gender_logits`` and
    ``group_logits`` in that order. Age is regressed in years: the network predicts a
    standardised value that ``age_mean`` and ``age_std`` map back.

    Parameters
    ----------
    input_size
        Side of the square input crop in pixels.
    width
        Channels of the first stage; each later stage doubles them.
    age_mean, age_std
        Centre and spread of the training ages (stored, so the checkpoint rebuilds exactly).
    """

    def __init__(
        self, *, input_size: int, width: int = 16, age_mean: float = 45.0, age_std: float = 18.0
    ):
        super().__init__()
        self.input_size = input_size
        self.width = width
        w = width
        self.features = nn.Sequential(
            _block(3, w, 2),
            _block(w, w, 1),
            _block(w, 2 * w, 2),
            _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2),
            _block(4 * w, 4 * w, 1),
            _block(4 * w, 8 * w, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.shared = nn.Sequential(nn.Linear(8 * w, 128), nn.ReLU(inplace=True), nn.Dropout(0.2))
        self.age = nn.Linear(128, 1)
        self.gender = nn.Linear(128, len(GENDERS))
        self.group = nn.Linear(128, len(GROUPS))
        self.register_buffer("age_mean", torch.tensor(float(age_mean)))
        self.register_buffer("age_std", torch.tensor(float(age_std)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Standardised NCHW crops -> age in years, gender logits, group logits (float32)."""
        h = self.shared(self.features(x)).float()
        age = self.age(h).squeeze(1) * self.age_std + self.age_mean
        return age, self.gender(h), self.group(h)


def demographic_loss(
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    age: torch.Tensor,
    gender: torch.Tensor,
    group: torch.Tensor,
    age_std: float,
    weights: torch.Tensor | None = None,
    known: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Sum of the three task losses, each a (optionally weighted) mean over the batch.

    Age uses the smooth-L1 loss of the error in units of ``age_std``; gender and group use
    cross-entropy. ``weights`` (N,) re-weights samples, e.g. inversely to their group's share.
    ``known`` (three boolean (N,) masks: age, gender, group) marks where each label is known
    for partly labeled data: each task is then the mean over its known samples only (0 when a
    batch holds none), and the unknown targets (``NaN`` age, ``-1`` classes) are never read.
    """
    pred_age, gender_logits, group_logits = outputs
    if known is not None:
        return _masked_loss(
            outputs,
            age=age,
            gender=gender,
            group=group,
            age_std=age_std,
            weights=weights,
            known=known,
        )
    per = (
        F.smooth_l1_loss(
            (pred_age - age.float()) / age_std, torch.zeros_like(pred_age), reduction="none"
        )
        + F.cross_entropy(gender_logits, gender, reduction="none")
        + F.cross_entropy(group_logits, group, reduction="none")
    )
    if weights is None:
        return per.mean()
    return (per * weights).sum() / weights.sum()


def _masked_loss(
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    age: torch.Tensor,
    gender: torch.Tensor,
    group: torch.Tensor,
    age_std: float,
    weights: torch.Tensor | None,
    known: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    pred_age, gender_logits, group_logits = outputs
    k_age, k_gender, k_group = (k.to(pred_age.device, torch.bool) for k in known)
    # Unknown targets are replaced by a valid placeholder, then masked out of the mean.
    safe_age = torch.where(k_age, age.float(), pred_age.detach())
    terms = (
        (
            F.smooth_l1_loss(
                (pred_age - safe_age) / age_std, torch.zeros_like(pred_age), reduction="none"
            ),
            k_age,
        ),
        (F.cross_entropy(gender_logits, gender.clamp(min=0), reduction="none"), k_gender),
        (F.cross_entropy(group_logits, group.clamp(min=0), reduction="none"), k_group),
    )
    w = torch.ones_like(pred_age) if weights is None else weights.float()
    total = pred_age.new_zeros(())
    for loss, mask in terms:
        mw = w * mask.float()
        total = total + (loss * mw).sum() / mw.sum().clamp(min=1e-12)
    return total


DemographicFactory = Callable[..., nn.Module]
DEMOGRAPHIC_NETS: dict[str, DemographicFactory] = {}


def register_demographic_net(name: str) -> Callable[[DemographicFactory], DemographicFactory]:
    """Decorator adding ``fn(*, input_size, age_mean, age_std) -> nn.Module`` under ``name``."""

    def deco(fn: DemographicFactory) -> DemographicFactory:
        if name in DEMOGRAPHIC_NETS:
            raise ValueError(f"demographic net '{name}' is already registered")
        DEMOGRAPHIC_NETS[name] = fn
        return fn

    return deco


def list_demographic_nets() -> list[str]:
    """Names accepted by :func:`create_demographic_net`, sorted."""
    return sorted(DEMOGRAPHIC_NETS)


def create_demographic_net(
    name: str, *, input_size: int, age_mean: float = 45.0, age_std: float = 18.0
) -> nn.Module:
    """Build the demographic network ``name`` (see :func:`list_demographic_nets`).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the choices).
    """
    if name not in DEMOGRAPHIC_NETS:
        raise ValueError(
            UNKNOWN_NAME.format(
                what="demographic net", name=name, choices=", ".join(list_demographic_nets())
            )
        )
    return DEMOGRAPHIC_NETS[name](input_size=input_size, age_mean=age_mean, age_std=age_std)


@register_demographic_net("demographic_cnn")
def _demographic_cnn(*, input_size: int, age_mean: float, age_std: float) -> nn.Module:
    return DemographicNet(input_size=input_size, width=16, age_mean=age_mean, age_std=age_std)


@register_demographic_net("demographic_cnn_wide")
def _demographic_cnn_wide(*, input_size: int, age_mean: float, age_std: float) -> nn.Module:
    return DemographicNet(input_size=input_size, width=32, age_mean=age_mean, age_std=age_std)
