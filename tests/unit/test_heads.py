import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from visage_ml.models.heads import (
    CombinedMarginLoss,
    NormLinear,
    create_head,
    list_heads,
)


def test_zero_margins_are_plain_scaled_cross_entropy():
    torch.manual_seed(0)
    cos = torch.rand(6, 5) * 2 - 1
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    loss = CombinedMarginLoss(s=30.0, m1=1.0, m2=0.0, m3=0.0)(cos, y)
    assert torch.allclose(loss, F.cross_entropy(30.0 * cos, y))


@pytest.mark.parametrize(
    ("m1", "m2", "m3", "target"),
    [
        (1.0, 0.5, 0.0, math.cos(1.0 + 0.5)),  # ArcFace
        (1.0, 0.0, 0.35, math.cos(1.0) - 0.35),  # CosFace
        (2.0, 0.0, 0.0, math.cos(2.0)),  # SphereFace-style multiplicative margin
        (1.2, 0.1, 0.05, math.cos(1.2 + 0.1) - 0.05),
    ],
)
def test_margin_matches_hand_computation_for_a_known_angle(m1, m2, m3, target):
    s = 10.0
    cos = torch.tensor([[math.cos(1.0), 0.3]])
    y = torch.tensor([0])
    loss = CombinedMarginLoss(s, m1, m2, m3)(cos, y)
    expected = -math.log(math.exp(s * target) / (math.exp(s * target) + math.exp(s * 0.3)))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_margin_keeps_the_loss_monotonic_past_pi():
    loss = CombinedMarginLoss(16.0, 1.0, 0.5, 0.0)
    angles = torch.linspace(2.4, 3.1, 8)
    cos = torch.stack([torch.cos(angles), torch.zeros(8)], dim=1)
    values = [loss(c[None], torch.tensor([0])).item() for c in cos]
    assert all(b >= a for a, b in itertools.pairwise(values))


def test_normlinear_gives_cosines():
    torch.manual_seed(0)
    fc = NormLinear(8, 3)
    x = torch.randn(4, 8)
    out = fc(x)
    assert out.shape == (4, 3)
    assert out.abs().max() <= 1.0 + 1e-6
    assert torch.allclose(fc(5 * x), out, atol=1e-6)  # scale-free


def test_head_registry_and_presets():
    assert list_heads() == ["arcface", "combined", "cosface", "softmax"]
    arc = create_head("arcface", embedding_dim=8, num_classes=3, s=20, m1=2.0, m2=0.4, m3=0.3)
    assert (arc.loss.s, arc.loss.m1, arc.loss.m2, arc.loss.m3) == (20, 1.0, 0.4, 0.0)
    cos = create_head("cosface", embedding_dim=8, num_classes=3, m3=0.35)
    assert (cos.loss.m1, cos.loss.m2, cos.loss.m3) == (1.0, 0.0, 0.35)
    comb = create_head("combined", embedding_dim=8, num_classes=3, m1=1.0, m2=0.3, m3=0.2)
    assert (comb.loss.m1, comb.loss.m2, comb.loss.m3) == (1.0, 0.3, 0.2)


def test_unknown_head_lists_the_choices():
    with pytest.raises(ValueError) as err:
        create_head("magface", embedding_dim=8, num_classes=3)
    assert "magface" in str(err.value)
    assert "arcface, combined, cosface, softmax" in str(err.value)


def test_softmax_head_is_linear_cross_entropy():
    torch.manual_seed(0)
    head = create_head("softmax", embedding_dim=8, num_classes=3, s=4.0)
    emb = F.normalize(torch.randn(5, 8), dim=1)
    y = torch.tensor([0, 1, 2, 0, 1])
    expected = F.cross_entropy(head.fc(emb * 4.0), y)
    assert torch.allclose(head(emb, y), expected)
    assert create_head("arcface", embedding_dim=8, num_classes=3)(emb, y).item() > 0
