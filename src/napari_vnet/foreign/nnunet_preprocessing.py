"""nnU-Net v2's own pre- and post-processing of one case, calling nnU-Net's functions.

:class:`NnUNetPreprocessing` (a :class:`napari_vnet.inference.preprocess.Preprocessing`)
follows nnU-Net exactly (the ``[nnunet]`` extra): ``transpose_forward``, crop to the
non-zero region, the per-channel normalisation scheme, resampling to the configuration's
spacing with its orders; back on the input grid the blended logits are resampled,
arg-maxed, put back into the crop box and transposed back (see
:mod:`napari_vnet.foreign.nnunet`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_vnet.foreign.networks import require
from napari_vnet.foreign.sizing import check_nnunet_grid
from napari_vnet.models.card import ModelCard

log = logging.getLogger(__name__)

__all__ = ["NnUNetContext", "NnUNetPreprocessing"]


@dataclass
class NnUNetContext:
    """What :meth:`NnUNetPreprocessing.restore` needs to go back to the input grid."""

    properties: dict[str, Any]
    network_shape: tuple[int, int, int]
    needs_resampling: bool
    pad_before: tuple[int, int, int] = (0, 0, 0)
    nonfinite_replaced: int = 0
    resampled: bool = False
    input_spacing: tuple[float, float, float] | None = None  # post-processing: the caller's


def _finite(channels: np.ndarray) -> tuple[np.ndarray, int]:
    """NaN/-inf -> the smallest finite value, +inf -> the largest (per channel)."""
    channels = np.asarray(channels)
    if channels.dtype.kind not in "fc":
        return channels, 0
    ok = np.isfinite(channels)
    bad = int(ok.size - np.count_nonzero(ok))
    if not bad:
        return channels, 0
    out = np.array(channels, dtype=np.float32)
    for c in range(out.shape[0]):
        good = ok[c]
        lo, hi = (float(out[c][good].min()), float(out[c][good].max())) if good.any() else (0, 0)
        out[c] = np.where(np.isposinf(out[c]), hi, np.where(good, out[c], lo))
    log.warning("replaced %d non-finite voxels before nnU-Net's preprocessing", bad)
    return out, bad


class NnUNetPreprocessing:
    """nnU-Net's own preprocessing of one case and the way back (see module docstring);
    a :class:`napari_vnet.inference.preprocess.Preprocessing`."""

    prepares_training = True
    restores_probabilities = False  # the way back gives labels only

    def __init__(self, card: ModelCard) -> None:
        pre = card.preprocessing
        if pre.get("kind") != "nnunet":
            raise ValueError(f"not an nnU-Net card (preprocessing {pre.get('kind')!r})")
        require("nnunetv2", "nnunet", "nnU-Net weights")
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.plans_manager = PlansManager(copy.deepcopy(pre["plans"]))
        self.config = self.plans_manager.get_configuration(pre["configuration"])
        self.dataset_json = pre["dataset_json"]
        self.patch_size = tuple(int(p) for p in self.config.patch_size)

    def preprocess(
        self, channels: np.ndarray, spacing: tuple[float, float, float] | None, geometry=None
    ) -> tuple[np.ndarray, NnUNetContext]:
        """``(C, z, y, x)`` raw intensities -> ``(C, d, h, w)`` float32 network input."""
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import (
            DefaultPreprocessor,
        )

        if spacing is None:  # no geometry: take the image as already at the target spacing
            back = self.plans_manager.transpose_backward
            spacing = tuple(float(self.config.spacing[i]) for i in back)
        check_nnunet_grid(self, channels.shape, spacing)
        channels, n_bad = _finite(channels)
        props: dict[str, Any] = {"spacing": [float(s) for s in spacing]}
        data, _, props = DefaultPreprocessor(verbose=False).run_case_npy(
            channels, None, props, self.plans_manager, self.config, self.dataset_json
        )
        data = np.ascontiguousarray(data, dtype=np.float32)
        net_shape = tuple(int(s) for s in data.shape[1:])
        cropped = tuple(int(s) for s in props["shape_after_cropping_and_before_resampling"])
        # an image smaller than a window: zeros split evenly on both sides (nnU-Net's
        # pad_nd_image), so that the engine never pads it its own way
        short = [max(0, p - s) for p, s in zip(self.patch_size, net_shape, strict=True)]
        before = tuple(q // 2 for q in short)
        if any(short):
            data = np.pad(data, [(0, 0)] + [(b, q - b) for b, q in zip(before, short, strict=True)])
        ctx = NnUNetContext(
            props,
            net_shape,
            needs_resampling=net_shape != cropped,
            pad_before=before,  # type: ignore[arg-type]
            nonfinite_replaced=n_bad,
            resampled=net_shape != cropped,
        )
        return data, ctx

    def prepare_training(self, image: np.ndarray, labels: np.ndarray, mask, spacing):
        """One training pair as nnU-Net preprocesses it (image, labels with its
        segmentation resampling, the annotated ``mask`` carried along as one more label
        value); voxels outside the non-zero crop are background, as nnU-Net trains.

        A case thinner than the window along an axis is padded as :meth:`preprocess`
        pads it for prediction (zeros split evenly on both sides, unannotated), so that
        training sees it in the same layout as prediction: with instance normalisation
        the padding's values change every feature, and a network trained on another
        padding (e.g. the image minimum at the high end) does not carry over to
        prediction (measured on a 20-slice CT, 5 slices at the plan's spacing: liver
        Dice 0 after fine-tuning instead of about 0.4)."""
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import (
            DefaultPreprocessor,
        )

        channels, _ = _finite(image[None] if image.ndim == 3 else image)
        check_nnunet_grid(self, channels.shape, spacing, extra_channels=1)  # + labels
        seg = np.asarray(labels).astype(np.int32)
        marker = None
        if mask is not None:
            marker = int(seg.max()) + 1
            seg = np.where(mask, seg, marker)
        props: dict[str, Any] = {"spacing": [float(s) for s in spacing]}
        data, seg, _ = DefaultPreprocessor(verbose=False).run_case_npy(
            np.asarray(channels, np.float32), seg[None], props, self.plans_manager,
            self.config, self.dataset_json,
        )  # fmt: skip
        seg = np.asarray(seg[0], np.int32)
        seg[seg < 0] = 0
        out_mask = None
        if marker is not None:
            out_mask = seg != marker
            seg[~out_mask] = 0
        data = np.ascontiguousarray(data[0] if data.shape[0] == 1 else data, np.float32)
        short = [max(0, p - s) for p, s in zip(self.patch_size, seg.shape, strict=True)]
        if any(short):  # the layout of preprocess(): centred zeros, not annotated
            pads = [(q // 2, q - q // 2) for q in short]
            if out_mask is None:
                out_mask = np.ones(seg.shape, bool)
            out_mask = np.pad(out_mask, pads)
            seg = np.pad(seg, pads)
            data = np.pad(data, ([(0, 0)] if data.ndim == 4 else []) + pads)
        return data, seg.astype(np.uint16 if seg.max() > 255 else np.uint8), out_mask

    def needs_scores(self, ctx: NnUNetContext) -> bool:
        """Whether :meth:`restore` needs the blended logits (resampling back), not only
        the network-grid labels."""
        return ctx.needs_resampling

    def restore(
        self,
        ctx: NnUNetContext,
        *,
        labels: np.ndarray | None = None,
        probabilities: np.ndarray | None = None,
        scores: np.ndarray | None = None,
    ) -> tuple[np.ndarray, None]:
        """``(labels, None)``: labels on the input grid, from network-grid ``labels`` (when
        no resampling was needed) or network-grid blended logits ``scores`` (C, d, h, w);
        probabilities have no way back."""
        from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

        props = ctx.properties
        keep = tuple(
            slice(b, b + s) for b, s in zip(ctx.pad_before, ctx.network_shape, strict=True)
        )
        labels = None if labels is None else labels[keep]
        scores = None if scores is None else scores[(slice(None), *keep)]
        if ctx.needs_resampling:
            if scores is None:
                raise ValueError("resampling back to the input grid needs the blended logits")
            labels = self._resample_argmax(scores, props)
        elif labels is None:
            assert scores is not None
            labels = np.argmax(scores, axis=0)
        dtype = np.uint8 if len(self.dataset_json.get("labels", {})) < 256 else np.uint16
        full = np.zeros(props["shape_before_cropping"], dtype=dtype)
        full = insert_crop_into_image(
            full, labels.astype(dtype, copy=False), props["bbox_used_for_cropping"]
        )
        return np.ascontiguousarray(full.transpose(self.plans_manager.transpose_backward)), None

    def restore_uncertainty(self, ctx: NnUNetContext, uncertainty: np.ndarray) -> np.ndarray | None:
        """The way back for labels (transpose, crop) carries a uint8 map too; None when
        going back resamples (it needs logits)."""
        if self.needs_scores(ctx):
            return None
        return self.restore(ctx, labels=uncertainty)[0].astype(np.uint8, copy=False)

    def _resample_argmax(self, scores: np.ndarray, props: dict[str, Any]) -> np.ndarray:
        """nnU-Net's way back: resample the blended logits ``scores`` (C, d, h, w) once,
        with the probabilities' resampling, then arg-max (nnU-Net's softmax before its
        arg-max changes no arg-max). The plan's usual resampling (linear, no separate z)
        is done here in torch, plane by plane then along z - the same interpolation as
        nnU-Net's (skimage's ``resize``, order 1, edge mode: separable), without a
        float64 ``C x D x H x W`` copy; any other resampling calls nnU-Net's function
        one class at a time with a running arg-max."""
        forward = self.plans_manager.transpose_forward
        target = [props["spacing"][i] for i in forward]
        shape = tuple(int(s) for s in props["shape_after_cropping_and_before_resampling"])
        if self._linear_way_back(target):
            return linear_resample_argmax(scores, shape)
        fn = self.config.resampling_fn_probabilities
        best = None
        labels = np.zeros(shape, dtype=np.uint16)
        for c in range(scores.shape[0]):
            ch = fn(np.asarray(scores[c : c + 1], np.float32), shape, self.config.spacing, target)
            ch = np.asarray(ch[0], dtype=np.float32)
            if best is None:
                best = ch
            else:
                better = ch > best
                labels[better] = c
                best = np.where(better, ch, best)
        return labels

    def _linear_way_back(self, target: list[float]) -> bool:
        """Is the plan's probability resampling nnU-Net's default one, linear, without
        separate z for these spacings (what :func:`linear_resample_argmax` reproduces)?"""
        from nnunetv2.preprocessing.resampling.default_resampling import (
            determine_do_sep_z_and_axis,
        )

        cfg = self.config.configuration
        kwargs = dict(cfg.get("resampling_fn_probabilities_kwargs") or {})
        if cfg.get("resampling_fn_probabilities") != "resample_data_or_seg_to_shape":
            return False
        if kwargs.get("is_seg") or int(kwargs.get("order", 3)) != 1:
            return False
        separate, _ = determine_do_sep_z_and_axis(
            kwargs.get("force_separate_z"), self.config.spacing, target
        )
        return not separate


def linear_resample_argmax(scores: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Arg-max over classes of ``scores`` (C, d, h, w) resampled linearly to ``shape``
    (D, H, W) with half-voxel alignment and edge values outside (scipy's ``zoom``,
    ``grid_mode=True``, ``mode="nearest"``, order 1, as nnU-Net calls it): each plane
    bilinear, then linear along z, a few output slices at a time - only the source
    planes those slices read are resampled in-plane for them, so no ``C x D x H x W``
    array and no ``C x d x H x W`` one either. uint16 channel indices."""
    import torch
    import torch.nn.functional as F

    from napari_vnet.runtime import class_argmax

    d, (depth, height, width) = int(scores.shape[1]), shape
    x = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32)).transpose(0, 1)
    src = ((np.arange(depth) + 0.5) * (d / depth) - 0.5).clip(0, d - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, d - 1)
    frac = torch.from_numpy((src - lo).astype(np.float32))
    labels = np.zeros(shape, dtype=np.uint16)
    for z0 in range(0, depth, 8):
        z = slice(z0, min(z0 + 8, depth))
        first, last = int(lo[z].min()), int(hi[z].max())  # the source planes read here
        planes = x[first : last + 1]
        if tuple(planes.shape[2:]) != (height, width):  # each plane alone: same values
            planes = F.interpolate(planes, size=(height, width), mode="bilinear",
                                   align_corners=False)  # fmt: skip
        w = frac[z].view(-1, 1, 1, 1)
        below, above = torch.from_numpy(lo[z] - first), torch.from_numpy(hi[z] - first)
        out = planes[below] * (1 - w) + planes[above] * w
        labels[z] = class_argmax(out, 1).numpy()
    return labels
