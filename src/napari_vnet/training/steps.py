"""One optimisation step: segmentation networks (Dice + CE) and Vox2Vox (GAN) (no Qt)."""

from __future__ import annotations

import torch

from napari_vnet.training.losses import (
    cross_entropy_loss,
    generalized_dice_loss,
    least_squares_gan_loss,
    one_hot,
)

__all__ = ["segmentation_step", "vox2vox_step"]


def segmentation_step(
    model, criterion, x, y, m, optimizer, scaler, amp_dtype, device, params, grad_clip
):
    """Forward under autocast, Dice + CE, backward, clipping, optimiser step."""
    with torch.autocast(
        device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
    ):
        logits = model(x)
    loss, parts = criterion(logits, y, m)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss, parts


def vox2vox_step(
    G,
    D,
    D_plain,
    x,
    y,
    m,
    opt_g,
    opt_d,
    scaler,
    d_scaler,
    amp_dtype,
    device,
    config,
    params,
    n_classes,
):
    """One Vox2Vox update: discriminator (LSGAN), then generator (LSGAN + lambda * (GDL +
    ``gan_ce_weight`` * cross entropy); see :data:`VOX2VOX_CE_WEIGHT`).

    The discriminator sees (image, segmentation) with the segmentation zeroed at
    unannotated voxels, for real (one-hot) and generated (softmax) pairs alike, so the
    labels of unannotated voxels never reach any loss.
    """
    ac = dict(
        device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
    )
    # the discriminator sees what counts (weight > 0); the weights act in the GDL and CE
    w = torch.ones_like(y, dtype=torch.float32)[:, None] if m is None else (m > 0).float()[:, None]
    with torch.autocast(**ac):
        logits = G(x)
    probs = torch.softmax(logits.float(), 1) * w
    real = one_hot(y, n_classes) * w
    # discriminator
    with torch.autocast(**ac):
        d_real = D(x, real)
        d_fake = D(x, probs.detach())
    d_loss = 0.5 * (least_squares_gan_loss(d_real, True) + least_squares_gan_loss(d_fake, False))
    opt_d.zero_grad(set_to_none=True)
    d_scaler.scale(d_loss).backward()
    d_scaler.unscale_(opt_d)
    if config.grad_clip:
        torch.nn.utils.clip_grad_norm_(D_plain.parameters(), config.grad_clip)
    d_scaler.step(opt_d)
    d_scaler.update()
    # generator: the plain (un-wrapped) discriminator, frozen
    for p in D_plain.parameters():
        p.requires_grad_(False)
    try:
        with torch.autocast(**ac):
            g_fake = D_plain(x, probs)
        adv = least_squares_gan_loss(g_fake, True)
        gdl = generalized_dice_loss(logits, y, m)
        seg = gdl
        ce = None
        if config.gan_ce_weight:
            ce = cross_entropy_loss(logits, y, m)
            seg = gdl + config.gan_ce_weight * ce
        g_loss = adv + config.gan_lambda * seg
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(g_loss).backward()
    finally:
        for p in D_plain.parameters():
            p.requires_grad_(True)
    scaler.unscale_(opt_g)
    if config.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    scaler.step(opt_g)
    scaler.update()
    parts = {"gdl": float(gdl.detach())}
    if ce is not None:
        parts["ce"] = float(ce.detach())
    parts["adversarial"] = float(adv.detach())
    parts["discriminator"] = float(d_loss.detach())
    return g_loss, parts
