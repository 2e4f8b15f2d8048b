import pytest
import torch

from visage_ml.models.demographic import (
    create_demographic_net,
    demographic_loss,
    list_demographic_nets,
)


def test_outputs_age_in_years_and_two_logit_sets():
    torch.manual_seed(0)
    net = create_demographic_net("demographic_cnn", input_size=64, age_mean=40.0, age_std=12.0)
    with torch.no_grad():
        age, gender, group = net.eval()(torch.randn(5, 3, 64, 64))
    assert age.shape == (5,)
    assert gender.shape == (5, 2)
    assert group.shape == (5, 4)
    # Untrained, predictions sit near the training mean, in years.
    assert 10 < float(age.mean()) < 70


def test_never_uses_an_identity_embedder():
    from visage_ml.models.backbones import Embedder

    net = create_demographic_net("demographic_cnn", input_size=48)
    assert not any(isinstance(m, Embedder) for m in net.modules())


def test_unknown_net_lists_the_choices():
    assert "demographic_cnn" in list_demographic_nets()
    with pytest.raises(ValueError, match="demographic_cnn"):
        create_demographic_net("resnet_age", input_size=64)


def test_group_weights_change_the_loss():
    torch.manual_seed(0)
    outputs = (torch.full((4,), 40.0), torch.randn(4, 2), torch.randn(4, 4))
    kw = dict(
        age=torch.tensor([20.0, 40.0, 60.0, 40.0]),
        gender=torch.tensor([0, 1, 0, 1]),
        group=torch.tensor([0, 0, 0, 3]),
        age_std=10.0,
    )
    plain = demographic_loss(outputs, **kw)
    same = demographic_loss(outputs, weights=torch.ones(4), **kw)
    assert torch.allclose(plain, same)
    rare_heavy = demographic_loss(outputs, weights=torch.tensor([1.0, 1.0, 1.0, 3.0]), **kw)
    assert not torch.allclose(plain, rare_heavy)


def test_unknown_labels_never_reach_the_loss():
    torch.manual_seed(0)
    outputs = (torch.randn(4) * 10 + 40, torch.randn(4, 2), torch.randn(4, 4))
    known = (
        torch.tensor([True, True, False, True]),
        torch.tensor([True, False, True, True]),
        torch.tensor([False, False, False, False]),  # no group label in this batch
    )
    kw = dict(age_std=10.0, known=known)
    a = demographic_loss(
        outputs,
        age=torch.tensor([20.0, 40.0, float("nan"), 40.0]),
        gender=torch.tensor([0, -1, 0, 1]),
        group=torch.tensor([-1, -1, -1, -1]),
        **kw,
    )
    # Whatever stands where a label is unknown, the loss is the same (and finite).
    b = demographic_loss(
        outputs,
        age=torch.tensor([20.0, 40.0, 99.0, 40.0]),
        gender=torch.tensor([0, 1, 0, 1]),
        group=torch.tensor([3, 2, 1, 0]),
        **kw,
    )
    assert torch.isfinite(a) and torch.allclose(a, b)
    # With every label known, the masked loss is the plain one.
    full = dict(
        age=torch.tensor([20.0, 40.0, 60.0, 40.0]),
        gender=torch.tensor([0, 1, 0, 1]),
        group=torch.tensor([0, 1, 2, 3]),
        age_std=10.0,
    )
    all_known = tuple(torch.ones(4, dtype=torch.bool) for _ in range(3))
    assert torch.allclose(
        demographic_loss(outputs, **full), demographic_loss(outputs, known=all_known, **full)
    )
    # A masked-out label gets no gradient: the group head is untouched by this batch.
    logits = outputs[2].clone().requires_grad_(True)
    demographic_loss((outputs[0], outputs[1], logits), **{**full, "known": known}).backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0
