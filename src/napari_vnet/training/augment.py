"""Data augmentation of training patches: nnU-Net v2's pipeline through batchgeneratorsv2
(no Qt).

The transforms are batchgeneratorsv2's (the library nnU-Net v2 trains with), composed
with nnU-Net's probabilities and ranges (``nnUNetTrainer.get_training_transforms``):

* spatial (p 0.2 each): rotation (+-30 degrees about every axis; in-plane only, up to
  +-180 degrees, when the patch is anisotropic - its largest side > 3x its smallest, as
  nnU-Net's "dummy 2D" augmentation), scaling (0.7-1.4), optional elastic deformation;
* intensity: Gaussian noise (p 0.1), Gaussian blur (p 0.2), brightness (p 0.15),
  contrast (p 0.15), low resolution simulation (p 0.25), gamma on the inverted image
  (p 0.1) and on the image (p 0.3);
* mirroring along each axis (p 0.5 each).

Images are interpolated linearly; label maps by batchgeneratorsv2's per-label
interpolation and argmax, so only existing label values come out. Voxels without a
meaningful label (unannotated, or sampled outside the image) travel as the label
:data:`IGNORE` and come back as the mask.

The spatial transform samples from a crop larger than the patch (:attr:`Augmenter.crop_size`,
the bounding box of the rotated and scaled patch), so that rotated patches hold image
content, not padding, as nnU-Net's data loader does. batchgeneratorsv2 is an optional
dependency (installed with nnunetv2); without it :func:`make_augmenter` returns None and
the sampler keeps its light augmentation (flips, 90-degree rotations, intensity).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["IGNORE", "Augmenter", "crop_around", "crop_slices", "make_augmenter"]

#: label of voxels whose label is not known (unannotated, or outside the image)
IGNORE = 255
ANISOTROPY = 3.0
ROTATION_3D = math.radians(30.0)
ROTATION_2D = math.pi
SCALING = (0.7, 1.4)


def _rotated_extent(patch: Sequence[int], angles: Sequence[float]) -> np.ndarray:
    """Extent of the bounding box of the patch rotated by up to ``angles`` (per axis)."""
    half = np.asarray(patch, dtype=np.float64) / 2.0
    corners = np.array(list(itertools.product(*[(-h, h) for h in half])))
    best = 2 * half
    steps = [np.linspace(-a, a, 7) if a else [0.0] for a in angles]
    for az, ay, ax in itertools.product(*steps):
        cz, sz, cy, sy, cx, sx = (math.cos(az), math.sin(az), math.cos(ay), math.sin(ay),
                                  math.cos(ax), math.sin(ax))  # fmt: skip
        rz = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])  # about z: rotates (y, x)
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rx = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])
        pts = corners @ (rz @ ry @ rx).T
        best = np.maximum(best, pts.max(0) - pts.min(0))
    return best


def crop_slices(
    center: Sequence[int], size: Sequence[int], shape: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(source, destination) slices of a ``size`` crop centred on ``center`` of an array
    of ``shape``: the part inside the array and where it lands in the crop."""
    start = [int(c) - s // 2 for c, s in zip(center, size, strict=True)]
    src = tuple(slice(max(0, b), min(n, b + s)) for b, s, n in zip(start, size, shape, strict=True))
    dst = tuple(slice(sl.start - b, sl.stop - b) for sl, b in zip(src, start, strict=True))
    return src, dst


def crop_around(
    image: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray | None,
    center: Sequence[int],
    size: Sequence[int],
    fill: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` crop centred on ``center``; outside the case the image holds ``fill``
    and the target :data:`IGNORE`. Unannotated voxels (``mask`` False) become IGNORE."""
    src, dst = crop_slices(center, size, image.shape)
    img = np.full(tuple(size), fill, np.float32)
    tgt = np.full(tuple(size), IGNORE, np.uint8)
    img[dst] = image[src]
    t = target[src]
    if mask is not None:
        t = np.where(mask[src], t, IGNORE)
    tgt[dst] = t
    return img, tgt


class Augmenter:
    """nnU-Net's augmentation of one ``patch``-sized sample (see the module text)."""

    def __init__(
        self,
        patch: Sequence[int],
        *,
        spatial: bool = True,
        elastic: bool = False,
        intensity: bool = True,
        mirror: bool = True,
        always: bool = False,
    ):
        """``always``: every enabled transform on every sample (probability 1; to inspect
        or test them), instead of nnU-Net's probabilities."""
        from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
        from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

        def p(x: float) -> float:
            return 1.0 if always and x > 0 else x

        self.patch = tuple(int(p) for p in patch)
        self.settings = dict(spatial=spatial, elastic=elastic, intensity=intensity, mirror=mirror)
        self.pseudo_2d = max(self.patch) / max(min(self.patch), 1) > ANISOTROPY
        ts: list[Any] = []
        self.crop_size = self.patch
        if spatial or elastic:
            self.crop_size = _crop_size(self.patch, self.pseudo_2d, spatial)
            ts += _spatial_transforms(self.patch, self.pseudo_2d, spatial, elastic, p)
        if intensity:
            ts += _intensity_transforms(self.pseudo_2d, p)
        if mirror:
            ts.append(MirrorTransform(allowed_axes=(0, 1, 2)))
        self.transform = ComposeTransforms(ts)

    def __call__(
        self,
        image: np.ndarray,
        target: np.ndarray,
        seed: int | None = None,
        weight: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``crop_size`` image and target (IGNORE = unknown) -> ``patch``-sized image,
        target (IGNORE -> 0) and mask of known labels. ``seed``: batchgeneratorsv2 draws
        from numpy's and torch's global generators; with a seed they are seeded for this
        call and restored after it (runs repeat exactly, other users are not disturbed).
        ``weight``: uint8 loss weights in 1/255 of the crop, transformed with the target
        as a second label map; the mask returned is then float32 weights (0 where the
        label is not known)."""
        import torch

        if tuple(image.shape) != self.crop_size:
            raise ValueError(f"expected a {self.crop_size} crop, got {image.shape}")
        seg = np.ascontiguousarray(target, np.uint8)[None]
        if weight is not None:
            seg = np.ascontiguousarray(np.stack([seg[0], np.asarray(weight, np.uint8)]))
        data = dict(
            image=torch.from_numpy(np.ascontiguousarray(image, np.float32))[None],
            segmentation=torch.from_numpy(seg),
        )
        if seed is None:
            out = self.transform(**data)
        else:
            state = np.random.get_state()
            try:
                np.random.seed(int(seed) % 2**32)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(seed))
                    out = self.transform(**data)
            finally:
                np.random.set_state(state)
        img = out["image"][0]
        segs = out["segmentation"]
        if tuple(img.shape) != self.patch:  # no spatial transform: centre crop
            sl = tuple(
                slice((s - p) // 2, (s - p) // 2 + p)
                for s, p in zip(img.shape, self.patch, strict=True)
            )
            img, segs = img[sl], segs[(slice(None), *sl)]
        img = img.numpy().astype(np.float32, copy=False)
        tgt = segs[0].numpy().astype(np.uint8, copy=False)
        known = tgt != IGNORE
        tgt = np.where(known, tgt, 0).astype(np.uint8)
        if weight is None:
            return img, tgt, known
        w = segs[1].numpy().astype(np.float32) / np.float32(255)
        return img, tgt, np.where(known, w, np.float32(0))


def _crop_size(patch: tuple[int, ...], pseudo_2d: bool, spatial: bool) -> tuple[int, ...]:
    """The crop the spatial transform samples from: the bounding box of the rotated (and,
    with ``spatial``, zoomed-out) patch, at least the patch."""
    if pseudo_2d:
        extent = np.concatenate(
            [[patch[0]], _rotated_extent((1, *patch[1:]), (math.pi / 4, 0, 0))[1:]]
        )
    else:
        extent = _rotated_extent(patch, (ROTATION_3D,) * 3)
    zoom_out = 1.0 / 0.85 if spatial else 1.0  # nnU-Net's get_patch_size
    size = np.ceil(extent * np.where(np.arange(3) == 0, 1.0 if pseudo_2d else zoom_out, zoom_out))
    return tuple(int(max(s, p)) for s, p in zip(size, patch, strict=True))


def _spatial_transforms(patch, pseudo_2d: bool, spatial: bool, elastic: bool, p) -> list[Any]:
    """Rotation, scaling and elastic deformation (in-plane only for an anisotropic patch)."""
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.pseudo2d import (
        Convert2DTo3DTransform,
        Convert3DTo2DTransform,
    )

    angle = ROTATION_2D if pseudo_2d else ROTATION_3D
    transform = SpatialTransform(
        patch[1:] if pseudo_2d else patch,
        patch_center_dist_from_border=0,
        random_crop=False,
        p_elastic_deform=p(0.2) if elastic else 0.0,
        p_rotation=p(0.2) if spatial else 0.0,
        rotation=(-angle, angle),
        p_scaling=p(0.2) if spatial else 0.0,
        scaling=SCALING,
        p_synchronize_scaling_across_axes=1,
        border_mode_seg="constant",
        padding_value_seg=IGNORE,
    )  # fmt: skip
    if pseudo_2d:
        return [Convert3DTo2DTransform(), transform, Convert2DTo3DTransform()]
    return [transform]


def _intensity_transforms(pseudo_2d: bool, p) -> list[Any]:
    """Noise, blur, brightness, contrast, low resolution and gamma (inverted, then not),
    with nnU-Net's probabilities."""
    from batchgeneratorsv2.transforms.intensity.brightness import (
        MultiplicativeBrightnessTransform,
    )
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import (
        SimulateLowResolutionTransform,
    )
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    steps = [
        (GaussianNoiseTransform(
            noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True), 0.1),
        (GaussianBlurTransform(
            blur_sigma=(0.5, 1.0), synchronize_channels=False, synchronize_axes=False,
            p_per_channel=0.5, benchmark=False), 0.2),
        (MultiplicativeBrightnessTransform(
            multiplier_range=BGContrast((0.75, 1.25)), synchronize_channels=False,
            p_per_channel=1), 0.15),
        (ContrastTransform(
            contrast_range=BGContrast((0.75, 1.25)), preserve_range=True,
            synchronize_channels=False, p_per_channel=1), 0.15),
        (SimulateLowResolutionTransform(
            scale=(0.5, 1), synchronize_channels=False, synchronize_axes=True,
            ignore_axes=(0,) if pseudo_2d else None, allowed_channels=None,
            p_per_channel=0.5), 0.25),
    ]  # fmt: skip
    for invert, probability in ((1, 0.1), (0, 0.3)):  # gamma on the inverted image, then not
        gamma = GammaTransform(
            gamma=BGContrast((0.7, 1.5)), p_invert_image=invert, synchronize_channels=False,
            p_per_channel=1, p_retain_stats=1,
        )  # fmt: skip
        steps.append((gamma, probability))
    return [RandomTransform(t, apply_probability=p(prob)) for t, prob in steps]


def make_augmenter(patch: Sequence[int], config) -> Augmenter | None:
    """The augmenter ``config`` asks for, or None (no augmentation, or batchgeneratorsv2
    missing: then the sampler's light augmentation is used, with a warning)."""
    if not config.augment:
        return None
    flags = dict(
        spatial=config.augment_spatial, elastic=config.augment_elastic,
        intensity=config.augment_intensity, mirror=config.augment_mirror,
    )  # fmt: skip
    if not any(flags.values()):
        return None
    try:
        return Augmenter(patch, **flags)
    except ImportError:
        log.warning(
            "batchgeneratorsv2 is not installed: light augmentation only (flips, 90-degree "
            "rotations, intensity); install it (pip install batchgeneratorsv2) for "
            "nnU-Net's spatial and intensity augmentation"
        )
        return None
