"""The training plan: every policy decision of a run, made once, in the core (no Qt).

The Fine-tune dock, the Scans dock's "Fine-tune on corrected scans", ``napari-vnet
train`` and ``export-dataset`` all come here, so the same data, base and settings give
the same run wherever they were entered (nnU-Net's "plans" play this part there):

* **classes** (:func:`resolve_classes`): the classes given (``TrainConfig.classes``,
  e.g. ``"5=liver,1=spleen"``: other values are background), else, fine-tuning, the
  base's classes *plus every label value it lacks as a new class* (named from
  ``TrainConfig.class_names``, else ``class_<value>``), else, from scratch, one class per
  label value present in annotated voxels;
* **patch and window**: the patch given, else the patch the base was trained with (its
  card's run history; a card's ``patch_size`` is its inference window, often a whole
  phantom), else the base's window, else :data:`~.config.DEFAULT_PATCH`. A new model's
  window is its patch (clipped to the data); a fine-tuned model keeps its base's window
  unless the patch holds at least as many voxels (then the patch becomes the window);
* **sparse-slice masks** and **geometry**: labels in another geometry are resampled onto
  the image grid; annotated-slice records become voxel masks (:func:`~.data.load_pairs`);
* **spacing and normalisation**: given, else the base's, else the first image's / z-score;
* **export renumbering** (:func:`export_lut`): label values -> 1..K in class order.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_vnet.models.card import ClassInfo, ModelCard
from napari_vnet.training.config import (
    DEFAULT_PATCH,
    TrainConfig,
    TrainingError,
    TrainingPair,
    parse_classes,
)
from napari_vnet.training.data import LoadedPair, annotated_label_values, load_pairs
from napari_vnet.training.recipe import plan_normalization, plan_patch, plan_spacing

log = logging.getLogger(__name__)

__all__ = [
    "TrainingPlan",
    "base_card_of",
    "export_lut",
    "plan_training",
    "renumber_for_export",
    "resolve_classes",
    "trained_patch",
]


@dataclass
class TrainingPlan:
    """What a run will do: the training loop's single input (with the starting weights).

    Compare two plans with ``==`` (the loaded data and the configuration are not compared).
    :meth:`new_card` gives the card of the model the run trains.
    """

    classes: list[ClassInfo]
    new_classes: list[ClassInfo]
    patch_size: tuple[int, int, int]
    window: tuple[int, int, int]
    spacing: tuple[float, float, float]
    normalization: dict[str, Any]
    from_scratch: bool
    cases: list[str]
    annotated_slices: list[list[int] | None]
    loaded: list[LoadedPair] | None = field(default=None, compare=False, repr=False)
    # a new network's keywords the plan chose (e.g. narrower widths for a context patch)
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    # why spacing, patch and width are what they are (also in the card's run history)
    reasons: list[str] = field(default_factory=list)
    # the settings the run was planned from (iterations, optimiser, augmentation, ...)
    config: TrainConfig = field(default_factory=TrainConfig, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible (``napari-vnet train --dry-run --json`` prints it)."""
        return {
            "classes": {c.value: c.name for c in self.classes},
            "new_classes": {c.value: c.name for c in self.new_classes},
            "patch_size": list(self.patch_size),
            "window": list(self.window),
            "spacing": list(self.spacing),
            "normalization": dict(self.normalization),
            "from_scratch": self.from_scratch,
            "cases": list(self.cases),
            "annotated_slices": self.annotated_slices,
            "arch_kwargs": dict(self.arch_kwargs),
            "reasons": list(self.reasons),
        }

    @classmethod
    def from_card(
        cls, card: ModelCard, config: TrainConfig, pairs: Sequence[TrainingPair | LoadedPair]
    ) -> TrainingPlan:
        """The plan of a run resumed from its own resume file (the card decided it all)."""
        patch = tuple(int(p) for p in (config.patch_size or card.patch_size))
        loaded = load_pairs(pairs)
        return cls(
            classes=list(card.classes), new_classes=[], patch_size=patch,  # type: ignore[arg-type]
            window=tuple(card.patch_size), spacing=tuple(card.spacing),  # type: ignore[arg-type]
            normalization=dict(card.normalization), from_scratch=False,
            cases=[p.name for p in loaded], annotated_slices=[], loaded=loaded, config=config,
        )  # fmt: skip

    def new_card(self, start: ModelCard) -> ModelCard:
        """The card of the model this plan trains: a copy of ``start`` (the base's card, a
        new model's, or a resumed run's) with the plan's classes, spacing, normalisation
        and inference window (and, from scratch, the network keywords it chose)."""
        arch_kwargs = dict(start.arch_kwargs or {})
        if self.from_scratch and self.arch_kwargs:
            arch_kwargs = {**self.arch_kwargs, **arch_kwargs}
        return dataclasses.replace(
            copy.deepcopy(start), classes=list(self.classes), spacing=tuple(self.spacing),
            normalization=dict(self.normalization), patch_size=tuple(self.window),
            arch_kwargs=arch_kwargs,
        )  # fmt: skip


def base_card_of(base: Any) -> ModelCard | None:
    """The card of ``base`` (a path, a shipped name, a ``(model, card)`` tuple) or None."""
    if base is None:
        return None
    if isinstance(base, tuple):
        return base[1]
    from pathlib import Path

    from napari_vnet.weights import read_weights_card, resolve_weights

    path = Path(base)
    if not path.exists():
        path = resolve_weights(str(base))
    return read_weights_card(path)


def trained_patch(card: ModelCard | None) -> tuple[int, int, int] | None:
    """The patch ``card``'s weights were trained with (its run history), if recorded."""
    if card is None:
        return None
    run = (card.history or {}).get("run") or {}
    patch = (run.get("config") or {}).get("patch_size")
    if isinstance(patch, list | tuple) and len(patch) == 3:
        return tuple(int(p) for p in patch)  # type: ignore[return-value]
    return None


def resolve_classes(
    spec: Any,
    names: dict[int, str] | None,
    base_card: ModelCard | None,
    values: set[int],
) -> tuple[list[ClassInfo], list[ClassInfo]]:
    """-> (classes in output-channel order, the new ones among them). See the module text."""
    names = {int(k): str(v) for k, v in (names or {}).items()}
    given = parse_classes(spec)
    if given is not None:
        classes = [ClassInfo(c.value, names.get(c.value, c.name), c.color) for c in given]
        known = set() if base_card is None else {c.value for c in base_card.classes}
        return classes, [c for c in classes if c.value and c.value not in known]
    if base_card is None:
        found = sorted((values | set(names)) - {0})
        if not found:
            raise TrainingError("the label maps hold no foreground value; nothing to learn")
        if len(found) > 32:
            raise TrainingError(
                f"the label maps hold {len(found)} label values; select some with classes, "
                "e.g. '5=liver,1=spleen'"
            )
        classes = [ClassInfo(0, "background")]
        classes += [ClassInfo(v, names.get(v, f"class_{v}")) for v in found]
        return classes, classes[1:]
    classes = [ClassInfo(c.value, names.get(c.value, c.name), c.color) for c in base_card.classes]
    known = {c.value for c in classes}
    new = [ClassInfo(v, names.get(v, f"class_{v}")) for v in sorted(values - known)]
    if new:
        log.info("new label values become new classes: %s", [f"{c.value}={c.name}" for c in new])
    return classes + new, new


def _choose_patch(config: TrainConfig, base_card: ModelCard | None, loaded) -> tuple:
    """-> (training patch, inference window of the trained model)."""
    if config.patch_size:
        patch = tuple(int(p) for p in config.patch_size)
    elif base_card is not None:
        patch = trained_patch(base_card) or tuple(int(p) for p in base_card.patch_size)
    else:
        patch = DEFAULT_PATCH
    if len(patch) != 3 or min(patch) < 1:
        raise TrainingError(f"patch_size must be 3 positive sizes (z, y, x), got {patch}")
    if base_card is None:
        # A new model's inference window will be this patch: no need to train on more
        # than the data holds (a smaller volume would be padded at inference anyway).
        max_shape = np.max([p.image.shape for p in loaded], axis=0)
        patch = tuple(int(min(p, s)) for p, s in zip(patch, max_shape, strict=False))
        return patch, patch
    # A fine-tuned model segments in its card's window, and inference pads an image
    # smaller than the window up to it. Training sees the same windows: the patch is
    # not clipped to a thin volume (the sampler pads as inference does) and becomes the
    # window - unless it holds fewer voxels than the base's window, which is then kept
    # so that re-segmentation does not get slower (with a warning).
    window = tuple(int(p) for p in base_card.patch_size) if base_card.patch_size else None
    if window is None or np.prod(patch) >= np.prod(window):
        return patch, patch
    if window != patch:
        log.warning(
            "training patch %s is smaller than the inference window %s, which the fine-tuned "
            "model keeps; it will segment in windows it was not trained on", patch, window,
        )  # fmt: skip
    return patch, window


def _default_widths(arch: str) -> list[int] | None:
    """The ``channels`` default of ``arch``'s network class (None if it has none)."""
    import inspect

    from napari_vnet.models.registry import architecture_class

    try:
        default = inspect.signature(architecture_class(arch)).parameters.get("channels")
    except Exception:  # noqa: BLE001 - an unknown arch is reported when it is built
        return None
    return None if default is None or default.default is None else list(default.default)


def _with_planned_patch(config: TrainConfig, loaded, spacing, n_classes: int) -> TrainConfig:
    """A copy of ``config`` whose patch is planned from the median case shape at
    ``spacing`` and ``config.patch_memory_mb`` (:func:`~.recipe.plan_patch`)."""
    import dataclasses

    arch = config.arch or "unet3d"
    widths = (config.arch_kwargs or {}).get("channels") or _default_widths(arch)
    if not widths:
        return config
    shapes = [
        [n * s / t for n, s, t in zip(p.image.shape, p.spacing, spacing, strict=True)]
        for p in loaded
    ]
    median = np.median(np.asarray(shapes), axis=0)
    patch = plan_patch(
        median, spacing, arch=arch, widths=list(widths), n_classes=n_classes,
        batch_size=config.batch_size, memory_mb=float(config.patch_memory_mb),
    )  # fmt: skip
    log.info("patch %s planned for median shape %s at spacing %s", patch, median, spacing)
    return dataclasses.replace(config, patch_size=patch)


def plan_training(
    pairs: Sequence[TrainingPair | LoadedPair],
    config: TrainConfig,
    *,
    base: Any = None,
    base_card: ModelCard | None = None,
) -> TrainingPlan:
    """Read the pairs and decide classes, patch, window, spacing, normalisation."""
    given = config  # the run's settings; the planned patch below is the plan's
    if config.batch_size < 1:
        raise TrainingError(f"batch_size must be >= 1, got {config.batch_size}")
    if config.iterations is None and not config.minutes:
        raise TrainingError("give iterations, minutes, or both")
    if base_card is None:
        base_card = base_card_of(base)
    if not 0.0 <= float(config.uncorrected_weight) <= 1.0:
        raise TrainingError(
            f"uncorrected_weight must be in [0, 1], got {config.uncorrected_weight}"
        )
    loaded = load_pairs(pairs)
    values = annotated_label_values(loaded, config.ignore_index, config.uncorrected_weight)
    classes, new = resolve_classes(config.classes, config.class_names, base_card, values)
    if len(classes) < 2:
        raise TrainingError("need at least one foreground class besides background")
    spacing = config.spacing or (base_card.spacing if base_card is not None else None)
    arch_kwargs: dict[str, Any] = {}
    reasons: list[str] = []
    if spacing is None and config.patch_size is None and base_card is None and config.plan_context:
        config, spacing, arch_kwargs, reasons = _with_context_plan(config, loaded)
    if spacing is None and config.plan_spacing:
        spacing = plan_spacing([p.spacing for p in loaded])
    spacing = tuple(float(s) for s in (spacing or loaded[0].spacing))
    if config.patch_size is None and base_card is None and config.patch_memory_mb:
        config = _with_planned_patch(config, loaded, spacing, len(classes))
    patch, window = _choose_patch(config, base_card, loaded)
    normalization = config.normalization or (
        base_card.normalization if base_card is not None else None
    )
    if normalization is None:
        normalization = {"kind": "zscore"}
        if config.intensity_from_data:
            normalization = plan_normalization(loaded, classes, seed=config.seed)
    annotated = [
        None
        if p.mask is None
        else np.flatnonzero(p.mask.reshape(p.mask.shape[0], -1).any(1)).tolist()
        for p in loaded
    ]
    return TrainingPlan(
        classes=classes, new_classes=new, patch_size=patch, window=window,  # type: ignore[arg-type]
        spacing=spacing, normalization=dict(normalization),  # type: ignore[arg-type]
        from_scratch=base_card is None, cases=[p.name for p in loaded],
        annotated_slices=annotated, loaded=loaded, arch_kwargs=arch_kwargs, reasons=reasons,
        config=given,
    )  # fmt: skip


def _with_context_plan(config: TrainConfig, loaded):
    """-> (config with the planned patch, spacing, new network keywords, reasons): a new
    model's spacing, patch and widths chosen for context (:func:`~.recipe.plan_context`)."""
    import dataclasses

    from napari_vnet.training.recipe import (
        CONTEXT_WIDTHS,
        _divisor,
        body_extent_mm,
        plan_context,
    )

    arch = config.arch or "unet3d"
    arch_kwargs: dict[str, Any] = {}
    widths = (config.arch_kwargs or {}).get("channels")
    if widths is None and arch in CONTEXT_WIDTHS:
        widths = list(CONTEXT_WIDTHS[arch])
        arch_kwargs["channels"] = widths
    network_widths = widths or _default_widths(arch)
    divisor = _divisor(arch, network_widths) if network_widths else 16
    spacings = [p.spacing for p in loaded]
    extent = body_extent_mm([p.image for p in loaded], spacings)
    data_spacing = plan_spacing(spacings)
    ctx = plan_context(
        extent, data_spacing, divisor=divisor, voxels=int(config.context_voxels),
        fov_mm=float(config.context_fov_mm),
    )  # fmt: skip
    reasons = list(ctx.reasons)
    if arch_kwargs:
        reasons.append(
            f"{arch} features {widths} (narrower than its default, so the large patch "
            "trains fast enough on a CPU; --width or arch_kwargs to change)"
        )
    log.info("context plan: %s", "; ".join(reasons))
    return dataclasses.replace(config, patch_size=ctx.patch), ctx.spacing, arch_kwargs, reasons


def export_lut(classes: Sequence[ClassInfo]) -> dict[int, int]:
    """Label value -> consecutive index (0 background, 1..K in class order): nnU-Net needs
    consecutive values; the original values are recorded beside the data."""
    return {c.value: k for k, c in enumerate(classes)}


def renumber_for_export(
    labels: np.ndarray,
    classes: Sequence[ClassInfo],
    *,
    mask: np.ndarray | None = None,
    ignore_index: int | None = None,
    ignore_label: int | None = None,
) -> np.ndarray:
    """``labels`` with values renumbered by :func:`export_lut` (values not listed become
    background); voxels outside ``mask`` or equal to ``ignore_index`` get ``ignore_label``."""
    out = np.zeros(labels.shape, np.uint8 if len(classes) < 255 else np.uint16)
    for value, k in export_lut(classes).items():
        if k:
            out[labels == value] = k
    if ignore_label is not None:
        if mask is not None:
            out[~mask] = ignore_label
        if ignore_index is not None:
            out[labels == ignore_index] = ignore_label
    return out
