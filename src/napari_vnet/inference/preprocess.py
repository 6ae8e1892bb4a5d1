"""Before and after the engine: the card's preprocessing and the way back to the input grid.

:func:`preprocessing_for` picks, from the model card alone, the object that turns a raw
``(C, z, y, x)`` volume into the network input and the network-grid result back into a
label map on the input grid. napari-vnet's own cards get :class:`CardPreprocessing`:

1. non-finite voxels are replaced by the smallest finite value (with a warning) and the
   intensities normalised as ``card.normalization`` says;
2. when the input spacing differs from ``card.spacing``, the image is resampled (linear)
   to the card spacing, and :meth:`~CardPreprocessing.restore` resamples the labels
   (nearest) and probabilities (linear) back.

A card with ``preprocessing = {"kind": "array_order", "axes": [2, 1, 0]}`` (a MONAI
network, trained on ``(x, y, z)`` arrays) gets :class:`ArrayOrderPreprocessing`: the same,
then the axes put in the network's order (and back first on the way back).

A card whose ``preprocessing`` names a producer (``{"kind": "nnunet", ...}``) gets that
producer's object from :func:`napari_vnet.foreign.preprocessing_for` (axis order,
clipping normalisation, resampling orders...). Every such object is a
:class:`Preprocessing` (the protocol below); the context its ``preprocess`` returns is a
:class:`PreparedContext`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from napari_vnet.models.card import ModelCard
from napari_vnet.transforms import normalize_intensity, resample_to_spacing

log = logging.getLogger(__name__)

SPACING_RTOL = 1e-3  # spacings closer than this (relative) count as equal

__all__ = [
    "SPACING_RTOL",
    "CardPreprocessing",
    "PreparedContext",
    "PreparedInput",
    "Preprocessing",
    "preprocessing_for",
]


class PreparedContext(Protocol):
    """What every preprocessing's context tells the caller (it holds more for the way back)."""

    @property
    def nonfinite_replaced(self) -> int:
        """Voxels that were NaN or infinite and were replaced before the network."""
        ...

    @property
    def resampled(self) -> bool | None:
        """Whether the volume was resampled to the network's spacing (None: not said)."""
        ...

    @property
    def input_spacing(self) -> tuple[float, float, float] | None:
        """The input's spacing as the preprocessing read it (None: the caller's)."""
        ...


class Preprocessing(Protocol):
    """Turns a raw ``(C, z, y, x)`` volume into the network input and the network-grid
    result back into a label map on the input grid."""

    #: :meth:`prepare_training` gives a training pair as the network sees it; False: the
    #: training data pipeline prepares pairs from the card's normalisation and spacing
    prepares_training: bool
    #: :meth:`restore` returns probabilities when given them; False: it never does (the
    #: engine is then not asked for them)
    restores_probabilities: bool

    def preprocess(
        self, channels: np.ndarray, spacing: Any, geometry: Any = None
    ) -> tuple[np.ndarray, Any]:
        """``(C, z, y, x)`` raw intensities (``spacing`` in mm, ``geometry`` the input's
        :class:`~napari_vnet.io.Volume` or None) -> ``(network input, context)``."""
        ...

    def needs_scores(self, ctx: Any) -> bool:
        """Whether :meth:`restore` needs the blended network-grid scores, not only labels."""
        ...

    def restore(
        self,
        ctx: Any,
        *,
        labels: np.ndarray,
        probabilities: np.ndarray | None = None,
        scores: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Network-grid labels (and probabilities, or the scores when
        :meth:`needs_scores`) -> ``(labels, probabilities or None)`` on the input grid."""
        ...

    def restore_uncertainty(self, ctx: Any, uncertainty: np.ndarray) -> np.ndarray | None:
        """A network-grid uint8 map on the input grid; None when there is no way back
        for it (the way back needs scores)."""
        ...

    def prepare_training(
        self, image: np.ndarray, labels: np.ndarray, mask: np.ndarray | None, spacing: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(image, labels, mask)`` as the network sees them (only when
        :attr:`prepares_training`)."""
        ...


def spacing_tuple(spacing: Any, name: str) -> tuple[float, float, float]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"{name} must be three positive numbers (z, y, x) in mm, got {spacing!r}")
    return sp


def _count_nonfinite(array: np.ndarray) -> int:
    if array.dtype.kind not in "fc":
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


@dataclass
class PreparedInput:
    """What :meth:`CardPreprocessing.restore` needs to go back to the input grid."""

    input_shape: tuple[int, int, int]
    input_spacing: tuple[float, float, float] | None
    model_spacing: tuple[float, float, float] | None
    resampled: bool
    nonfinite_replaced: int

    @property
    def resampling(self) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
        """``(input spacing, model spacing)`` when the input was resampled, else None."""
        if not self.resampled or self.input_spacing is None or self.model_spacing is None:
            return None
        return self.input_spacing, self.model_spacing


class CardPreprocessing:
    """napari-vnet's own pre/post-processing: ``card.normalization`` and ``card.spacing``."""

    prepares_training = False  # the training data pipeline does the same from the card
    restores_probabilities = True

    def __init__(self, card: ModelCard) -> None:
        self.card = card

    def preprocess(
        self, channels: np.ndarray, spacing, geometry=None
    ) -> tuple[np.ndarray, PreparedInput]:
        """``(C, z, y, x)`` raw intensities -> ``(C, d, h, w)`` float32 network input."""
        card = self.card
        prepared = []
        n_bad = 0
        for ch in channels:
            # normalize_intensity replaces NaN/-inf by the smallest finite value, +inf by
            # the largest, and logs a warning; a constant image gives zeros.
            n_bad += _count_nonfinite(ch)
            norm = np.asarray(normalize_intensity(ch, card.normalization), dtype=np.float32)
            if not np.isfinite(norm).all():  # belt and braces: never feed NaN to the network
                norm = np.nan_to_num(norm, nan=0.0, posinf=0.0, neginf=0.0)
            prepared.append(norm)
        in_shape = tuple(int(s) for s in channels.shape[1:])
        in_spacing = None if spacing is None else spacing_tuple(spacing, "spacing")
        model_spacing = (
            None if card.spacing is None else spacing_tuple(card.spacing, "card.spacing")
        )
        resample = False
        if in_spacing is not None and model_spacing is not None:
            resample = not np.allclose(in_spacing, model_spacing, rtol=SPACING_RTOL, atol=0)
            if resample:
                prepared = [
                    np.asarray(
                        resample_to_spacing(p, in_spacing, model_spacing, is_label=False),
                        np.float32,
                    )
                    for p in prepared
                ]
                log.info(
                    "resampled %s @ %s mm -> %s @ %s mm",
                    in_shape, in_spacing, prepared[0].shape, model_spacing,
                )  # fmt: skip
        vol = prepared[0][None] if len(prepared) == 1 else np.stack(prepared)
        ctx = PreparedInput(in_shape, in_spacing, model_spacing, bool(resample), n_bad)  # type: ignore[arg-type]
        return vol, ctx

    def needs_scores(self, ctx: PreparedInput) -> bool:
        """Whether :meth:`restore` needs the blended scores (no: labels resample alone)."""
        return False

    def restore(
        self,
        ctx: PreparedInput,
        *,
        labels: np.ndarray,
        probabilities: np.ndarray | None = None,
        scores: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Network-grid labels (and probabilities) -> the input grid."""
        if ctx.resampling is None:
            return labels, probabilities
        in_spacing, model_spacing = ctx.resampling
        out = np.asarray(
            resample_to_spacing(
                labels, model_spacing, in_spacing, is_label=True, shape=ctx.input_shape
            )
        ).astype(labels.dtype, copy=False)
        if probabilities is not None:
            probabilities = np.stack(
                [
                    np.asarray(
                        resample_to_spacing(
                            p.astype(np.float32),
                            model_spacing,
                            in_spacing,
                            is_label=False,
                            shape=ctx.input_shape,
                        ),
                        dtype=np.float16,
                    )
                    for p in probabilities
                ]
            )
        return out, probabilities

    def restore_uncertainty(self, ctx: PreparedInput, uncertainty: np.ndarray) -> np.ndarray:
        """The uint8 map on the input grid (resampled linearly when the volume was)."""
        if ctx.resampling is None:
            return uncertainty
        in_spacing, model_spacing = ctx.resampling
        back = resample_to_spacing(
            uncertainty.astype(np.float32), model_spacing, in_spacing,
            is_label=False, shape=ctx.input_shape,
        )  # fmt: skip
        return np.clip(np.rint(np.asarray(back)), 0, 255).astype(np.uint8)

    def prepare_training(self, image, labels, mask, spacing):
        raise NotImplementedError("the training data pipeline prepares pairs from the card")


class ArrayOrderPreprocessing(CardPreprocessing):
    """:class:`CardPreprocessing`, then the axes in the network's order (``axes``)."""

    prepares_training = True

    def __init__(self, card: ModelCard) -> None:
        super().__init__(card)
        self.axes = [int(a) for a in card.preprocessing.get("axes", (0, 1, 2))]
        if sorted(self.axes) != [0, 1, 2]:
            raise ValueError(f"array_order axes must be a permutation of 0, 1, 2: {self.axes}")
        self.back = [int(a) for a in np.argsort(self.axes)]

    def preprocess(
        self, channels: np.ndarray, spacing, geometry=None
    ) -> tuple[np.ndarray, PreparedInput]:
        vol, ctx = super().preprocess(channels, spacing)
        return np.ascontiguousarray(vol.transpose(0, *[a + 1 for a in self.axes])), ctx

    def restore(self, ctx, *, labels, probabilities=None, scores=None):
        labels = labels.transpose(self.back)
        if probabilities is not None:
            probabilities = probabilities.transpose(0, *[a + 1 for a in self.back])
        return super().restore(ctx, labels=labels, probabilities=probabilities)

    def restore_uncertainty(self, ctx, uncertainty):
        return super().restore_uncertainty(ctx, uncertainty.transpose(self.back))

    def prepare_training(self, image, labels, mask, spacing):
        """A training pair as the network sees it (as :meth:`preprocess`, labels and
        mask resampled nearest), in the network's axis order."""
        vol, ctx = self.preprocess(image[None], spacing)
        if ctx.resampling is not None:
            shape = tuple(vol.shape[1:][a] for a in self.back)
            sp, target = ctx.resampling
            labels = resample_to_spacing(labels, sp, target, is_label=True, shape=shape)
            if mask is not None:
                mask = resample_to_spacing(mask, sp, target, is_label=True, shape=shape)
        labels = np.ascontiguousarray(np.asarray(labels).transpose(self.axes))
        if mask is not None:
            mask = np.ascontiguousarray(np.asarray(mask).transpose(self.axes))
        return vol[0], labels, mask


def preprocessing_for(card: ModelCard) -> Preprocessing:
    """The pre/post-processing object for ``card`` (see the module text)."""
    kind = (card.preprocessing or {}).get("kind")
    if kind == "array_order":
        return ArrayOrderPreprocessing(card)
    if kind:
        from napari_vnet.foreign import preprocessing_for as producers

        return producers(card)
    return CardPreprocessing(card)


def blend_for(card: ModelCard) -> str:
    """How the card's producer blends windows: ``"softmax"`` (ours, MONAI) or ``"logits"``."""
    blend = str((card.sliding_window or {}).get("blend") or "softmax")
    return "logits" if blend == "logits" else "softmax"
