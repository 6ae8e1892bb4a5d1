"""Random training patches with foreground oversampling and cheap augmentation (no Qt)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_vnet.inference.windows import pad_to_window
from napari_vnet.training.data import _Case, _index_case

__all__ = ["PHASE_HU", "PHASE_P", "PatchSampler"]

#: contrast-phase augmentation: offsets per structure in HU (a non-contrast or late-phase
#: scan reads enhancing organs 30-60 HU lower; a few read higher in an arterial phase)
PHASE_HU = (-70.0, 25.0)
#: ... in units of the normalised image when the normalisation has no fixed statistics
PHASE_STD = 0.3
#: probability that a patch gets the contrast-phase augmentation
PHASE_P = 0.5


def _crop(arr: np.ndarray, center, size) -> np.ndarray:
    """A ``size`` crop of ``arr`` centred on ``center``, zero outside (the region map's
    crop beside :func:`~.augment.crop_around`'s image crop, same geometry)."""
    from napari_vnet.training.augment import crop_slices

    src, dst = crop_slices(center, size, arr.shape)
    out = np.zeros(tuple(size), arr.dtype)
    out[dst] = arr[src]
    return out


class PatchSampler:
    """Random patches with foreground oversampling and cheap augmentation.

    About ``foreground_fraction`` of the patches are centred on a voxel of a labelled
    class (class chosen uniformly among those present); the others are uniform random
    (or, with sparse annotations, centred on a random annotated voxel so that they carry
    some loss). Cases smaller than the patch are padded as inference pads an image
    smaller than its window (:func:`napari_vnet.inference.predict`): at the high end of
    each axis, with the image's minimum; the padding is unannotated.
    """

    def __init__(
        self,
        cases: list[_Case],
        patch_size: Sequence[int],
        *,
        foreground_fraction: float = 1.0 / 3.0,
        augment: bool = True,
        seed: int | Sequence[int] = 0,
        augmenter=None,
        phase: bool = False,
    ):
        self.patch = tuple(int(p) for p in patch_size)
        self.phase = bool(phase)
        # nnU-Net's augmentation (training/augment.py); None: the light one below
        self.augmenter = augmenter
        self._fill: dict[int, float] = {}
        self.rng = np.random.default_rng(seed)
        self.foreground_fraction = float(foreground_fraction)
        self.augment = augment
        # loss weights (TrainConfig.uncorrected_weight): when a case has them, every case
        # gets them and the batch's masks are float32 weights
        self.weighted = any(c.weight is not None for c in cases)
        self.cases = [self._pad(_with_weight(c) if self.weighted else c) for c in cases]
        for c in self.cases:
            _index_case(c, self.rng)

    def _pad(self, case: _Case) -> _Case:
        image = pad_to_window(case.image, self.patch)  # inference's layout and fill
        if image is case.image:
            return case
        pads = [(0, n - s) for n, s in zip(image.shape, case.shape, strict=True)]
        target = np.pad(case.target, pads)
        mask = np.ones(case.shape, bool) if case.mask is None else case.mask
        mask = np.pad(mask, pads)
        regions = None if case.regions is None else np.pad(case.regions, pads)
        weight = None if case.weight is None else np.pad(case.weight, pads)
        return _Case(case.name, image, target, mask, weight=weight, regions=regions,
                     intensity_unit=case.intensity_unit)  # fmt: skip

    def _start(self, case: _Case) -> tuple[int, ...]:
        shape = case.shape
        center = None
        if case.fg_coords and self.rng.random() < self.foreground_fraction:
            ch = list(case.fg_coords)[self.rng.integers(len(case.fg_coords))]
            coords = case.fg_coords[ch]
            center = coords[self.rng.integers(len(coords))]
        elif case.annotated_coords is not None and len(case.annotated_coords):
            center = case.annotated_coords[self.rng.integers(len(case.annotated_coords))]
        if center is None:
            return tuple(
                int(self.rng.integers(0, s - p + 1))
                for s, p in zip(shape, self.patch, strict=False)
            )
        # jitter so the labelled voxel is not always at the patch centre
        return tuple(
            int(np.clip(c - p // 2 + self.rng.integers(-(p // 4), p // 4 + 1), 0, s - p))
            for c, p, s in zip(center, self.patch, shape, strict=False)
        )

    def _augment(self, img, tgt, msk):
        rng = self.rng
        for axis in range(3):
            if rng.random() < 0.5:
                img, tgt = np.flip(img, axis), np.flip(tgt, axis)
                msk = None if msk is None else np.flip(msk, axis)
        k = int(rng.integers(4)) if self.patch[1] == self.patch[2] else 2 * int(rng.integers(2))
        if k:
            img, tgt = np.rot90(img, k, (1, 2)), np.rot90(tgt, k, (1, 2))
            msk = None if msk is None else np.rot90(msk, k, (1, 2))
        img = img * np.float32(rng.uniform(0.9, 1.1)) + np.float32(rng.uniform(-0.1, 0.1))
        if rng.random() < 0.3:
            sigma = rng.uniform(0.0, 0.1)
            img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
        return img, tgt, msk

    def _phase_shift(self, img: np.ndarray, regions: np.ndarray, case: _Case) -> np.ndarray:
        """Contrast-phase augmentation: with probability :data:`PHASE_P`, each labelled
        structure in the patch (every label value of the map, learnt or not) is shifted
        by its own offset drawn from :data:`PHASE_HU` (HU for CT; a normalisation
        without fixed statistics takes :data:`PHASE_STD` of its unit). Organs enhance
        differently from one contrast phase or scanner to the next (liver and spleen read
        30-60 HU lower without contrast); the global intensity augmentation cannot teach
        that, because it moves every tissue alike."""
        if self.rng.random() >= PHASE_P:
            return img
        ids = np.flatnonzero(np.bincount(regions.ravel(), minlength=256)[1:]) + 1
        if not len(ids):
            return img
        lut = np.zeros(256, np.float32)
        if case.intensity_unit:
            lut[ids] = self.rng.uniform(*PHASE_HU, size=len(ids)) / case.intensity_unit
        else:
            lut[ids] = self.rng.uniform(-PHASE_STD, PHASE_STD, size=len(ids))
        return img + lut[regions]

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(B, 1, *patch)`` float32 images, ``(B, *patch)`` int64 targets, bool masks
        (float32 loss weights when the cases have weights)."""
        imgs, tgts, msks = [], [], []
        any_mask = any(c.mask is not None for c in self.cases)
        for _ in range(batch_size):
            index = int(self.rng.integers(len(self.cases)))
            case = self.cases[index]
            start = self._start(case)
            sl = tuple(slice(s, s + p) for s, p in zip(start, self.patch, strict=False))
            if self.augment and self.augmenter is not None:
                from napari_vnet.training.augment import crop_around

                if index not in self._fill:
                    self._fill[index] = float(case.image.min())
                center = [s + p // 2 for s, p in zip(start, self.patch, strict=True)]
                size = self.augmenter.crop_size
                img, tgt = crop_around(
                    case.image, case.target, case.mask, center, size, self._fill[index]
                )
                if self.phase and case.regions is not None:
                    img = self._phase_shift(img, _crop(case.regions, center, size), case)
                weight = None if case.weight is None else _crop(case.weight, center, size)
                img, tgt, msk = self.augmenter(
                    img, tgt, seed=int(self.rng.integers(2**31)), weight=weight
                )
                any_mask = True
                imgs.append(img)
                tgts.append(tgt)
                msks.append(msk)
                continue
            img, tgt = case.image[sl], case.target[sl]
            msk = case.mask[sl] if case.mask is not None else None
            if case.weight is not None:  # the weights, 0 outside the mask
                msk = case.weight[sl]
            if self.augment and self.phase and case.regions is not None:
                img = self._phase_shift(img, case.regions[sl], case)
            if self.augment:
                img, tgt, msk = self._augment(img, tgt, msk)
            if case.weight is not None:
                msk = msk.astype(np.float32) / np.float32(255)
            imgs.append(np.ascontiguousarray(img, np.float32))
            tgts.append(np.ascontiguousarray(tgt))
            if any_mask:
                msks.append(np.ones(self.patch, bool) if msk is None else np.ascontiguousarray(msk))
        masks = np.stack(msks) if any_mask else None
        return np.stack(imgs)[:, None], np.stack(tgts).astype(np.int64), masks


def _with_weight(case: _Case) -> _Case:
    """``case`` with uint8 weights (1/255) that are 0 outside its mask (255 on the mask
    where it had none)."""
    from dataclasses import replace

    weight = np.full(case.shape, 255, np.uint8) if case.weight is None else case.weight
    if case.mask is not None:
        weight = np.where(case.mask, weight, 0).astype(np.uint8)
    return replace(case, weight=weight)
