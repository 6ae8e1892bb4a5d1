"""Losses: numerical checks against independent numpy formulas, masking, no NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_vnet.training.losses import (
    DiceCELoss,
    cross_entropy_loss,
    generalized_dice_loss,
    least_squares_gan_loss,
    soft_dice_loss,
)


def _softmax_np(logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _random(shape=(2, 3, 5, 6, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    mask = torch.rand((shape[0], *shape[2:]), generator=g) > 0.4
    return logits, target, mask


def test_soft_dice_matches_milletari_formula():
    logits, target, mask = _random()
    p = _softmax_np(logits.numpy())
    g = np.eye(3)[target.numpy()].transpose(0, 4, 1, 2, 3)
    w = mask.numpy()[:, None].astype(float)
    p, g = p * w, g * w
    eps = 1e-5
    dice = [
        (2 * (p[:, c] * g[:, c]).sum() + eps) / ((p[:, c] ** 2).sum() + (g[:, c] ** 2).sum() + eps)
        for c in range(3)
    ]
    got = soft_dice_loss(logits, target, mask, include_background=True, eps=eps)
    assert got.item() == pytest.approx(1 - np.mean(dice), rel=1e-9)
    got_fg = soft_dice_loss(logits, target, mask, include_background=False, eps=eps)
    assert got_fg.item() == pytest.approx(1 - np.mean(dice[1:]), rel=1e-9)


def test_soft_dice_perfect_and_wrong():
    target = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    target[0, 1:3, 1:3, 1:3] = 1
    perfect = F.one_hot(target, 2).movedim(-1, 1).float() * 40 - 20
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(-perfect, target).item() == pytest.approx(1.0, abs=1e-3)


def test_generalized_dice_matches_sudre_formula():
    logits, target, mask = _random(seed=1)
    p = _softmax_np(logits.numpy())
    g = np.eye(3)[target.numpy()].transpose(0, 4, 1, 2, 3)
    w = mask.numpy()[:, None].astype(float)
    p, g = p * w, g * w
    eps = 1e-5
    wc = 1 / np.maximum(g.sum((0, 2, 3, 4)) ** 2, eps)
    num = 2 * (wc * (p * g).sum((0, 2, 3, 4))).sum() + eps
    den = (wc * (p + g).sum((0, 2, 3, 4))).sum() + eps
    assert generalized_dice_loss(logits, target, mask).item() == pytest.approx(
        1 - num / den, rel=1e-9
    )


def test_generalized_dice_absent_class_is_finite():
    logits, _, _ = _random(seed=2)
    target = torch.zeros(2, 5, 6, 7, dtype=torch.long)  # classes 1, 2 absent
    logits.requires_grad_(True)
    loss = generalized_dice_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_cross_entropy_is_mean_over_annotated_voxels():
    logits, target, mask = _random(seed=3)
    ref = F.cross_entropy(logits.movedim(1, -1)[mask], target[mask])
    assert cross_entropy_loss(logits, target, mask).item() == pytest.approx(ref.item(), rel=1e-9)


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda lo, t, m: soft_dice_loss(lo, t, m),
        lambda lo, t, m: cross_entropy_loss(lo, t, m),
        lambda lo, t, m: generalized_dice_loss(lo, t, m),
        lambda lo, t, m: DiceCELoss()(lo, t, m)[0],
    ],
    ids=["dice", "ce", "gdl", "dice+ce"],
)
def test_unannotated_labels_change_neither_loss_nor_gradient(loss_fn):
    logits, target, mask = _random(seed=4)
    other = target.clone()
    other[~mask] = (target[~mask] + 1) % 3  # every unannotated label changes
    assert (other != target).any()
    grads = []
    values = []
    for t in (target, other):
        x = logits.clone().requires_grad_(True)
        value = loss_fn(x, t, mask)
        value.backward()
        values.append(value.item())
        grads.append(x.grad.clone())
    assert values[0] == values[1]
    assert torch.equal(grads[0], grads[1])
    # and the gradient at unannotated voxels is exactly zero
    assert (grads[0].movedim(1, -1)[~mask] == 0).all()
    # while changing an annotated label does change the loss
    third = target.clone()
    third[mask] = (target[mask] + 1) % 3
    assert loss_fn(logits, third, mask).item() != pytest.approx(values[0])


def test_nothing_annotated_gives_zero_loss_and_no_nan():
    logits, target, _ = _random(seed=5)
    mask = torch.zeros_like(target, dtype=torch.bool)
    x = logits.clone().requires_grad_(True)
    total, parts = DiceCELoss()(x, target, mask)
    total.backward()
    assert total.item() == pytest.approx(0.0, abs=1e-9)
    assert torch.isfinite(x.grad).all() and (x.grad == 0).all()
    assert parts["ce"] == 0.0


def test_lsgan_loss():
    pred = torch.tensor([0.0, 1.0, 2.0])
    assert least_squares_gan_loss(pred, True).item() == pytest.approx((1 + 0 + 1) / 3)
    assert least_squares_gan_loss(pred, False).item() == pytest.approx((0 + 1 + 4) / 3)


def test_shape_errors_are_explicit():
    logits, target, mask = _random()
    with pytest.raises(ValueError, match="disagree"):
        soft_dice_loss(logits, target[:, :-1])
    with pytest.raises(ValueError, match="mask"):
        cross_entropy_loss(logits, target, mask[:, :-1])
