"""What a training run is told: the configuration, the data pairs, the errors (no Qt)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from napari_vnet.errors import NapariVnetError
from napari_vnet.models.card import ClassInfo

__all__ = [
    "DEFAULT_PATCH",
    "VOX2VOX_CE_WEIGHT",
    "VOX2VOX_LAMBDA",
    "TrainConfig",
    "TrainingCancelled",
    "TrainingError",
    "TrainingPair",
    "lr_factor",
    "parse_classes",
    "parse_value_names",
    "resume_path",
    "width_kwargs",
]

#: Vox2Vox generator loss weight of the generalized Dice term (Cirillo et al. 2020).
VOX2VOX_LAMBDA = 5.0
#: Vox2Vox generator: weight of a cross-entropy term added to the generalized Dice term
#: (inside lambda). Not in the paper, whose generator loss has generalized Dice only. Without
#: it a class whose softmax probability collapses to ~0 early in training (the adversarial
#: term and the 1 / volume^2 weights of large organs make this easy) never recovers: the
#: Dice gradient reaches the logits through p * (1 - p) and vanishes, while the cross
#: entropy gradient (p - 1 at the class's voxels) does not. The shipped Vox2Vox phantom
#: weights trained without it predicted liver and spleen nowhere (Dice 0.000). 0 gives the
#: paper's loss.
VOX2VOX_CE_WEIGHT = 1.0
#: default training patch (z, y, x) when neither the config nor a base card gives one
DEFAULT_PATCH = (48, 48, 48)


class TrainingError(NapariVnetError, ValueError):
    """The training inputs cannot be used (the message names the input and the problem)."""


class TrainingCancelled(RuntimeError):
    """Raised by :func:`run_training` with ``raise_on_cancel=True`` when ``should_stop``
    ended the run; ``.summary`` holds the summary (the best checkpoint is on disk)."""

    def __init__(self, summary: Any):
        super().__init__(f"training cancelled at iteration {summary.iterations}")
        self.summary = summary


@dataclass
class TrainingPair:
    """One training case.

    ``image``/``labels``: a numpy array (then ``spacing`` is needed unless 1 mm), a
    :class:`~napari_vnet.io.volume.Volume`, or a path readable by
    :func:`napari_vnet.io.read_volume`. ``annotated`` marks the voxels whose labels are
    meaningful: a bool array of the labels' shape, a per-z-slice bool vector, or a list of
    annotated z-slice indices. ``None``: everything (except ``ignore_index``) is annotated.
    """

    image: Any
    labels: Any
    spacing: tuple[float, ...] | None = None  # (z, y, x) mm
    annotated: Any = None
    name: str = ""


@dataclass
class TrainConfig:
    """Everything about a training run except the data and the starting weights."""

    arch: str | None = None  # "vnet" | "unet3d" | "vox2vox" (from scratch; ignored with base)
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    classes: Any = None  # list[ClassInfo] | {value: name} | "5=liver,1=spleen" | None
    class_names: dict[int, str] | None = None  # names of new label values {3: "kidney"}
    iterations: int | None = 200  # None: run for ``minutes``
    minutes: float | None = None  # time budget; the first of iterations/minutes ends the run
    patch_size: tuple[int, int, int] | None = None  # None: base card's, else DEFAULT_PATCH
    batch_size: int = 2
    lr: float | None = None  # None: 1e-3 from scratch, 3e-4 when fine-tuning
    weight_decay: float = 1e-4
    warmup: float = 0.05  # fraction of the run spent warming the learning rate up
    schedule: str = "poly"  # "poly" | "cosine" | "constant"
    grad_clip: float | None = 12.0
    spacing: tuple[float, float, float] | None = None  # None: base card's or the data's
    normalization: dict[str, Any] | None = None  # None: base card's or z-score
    ignore_index: int | None = None
    foreground_fraction: float = 1.0 / 3.0
    augment: bool = True
    val_fraction: float = 0.0
    # a class the run learns with fewer held-out validation voxels than this: validation
    # is too small to choose a checkpoint, the final weights are kept (training/selection)
    min_val_voxels: int = 1000
    # which weights a run keeps: "auto" (an earlier checkpoint only when its smoothed
    # validation Dice beats the final one beyond noise), "final", or "best-raw" (the
    # highest raw validation Dice, as runs did before: for comparisons)
    keep: str = "auto"
    # classes of the model that no annotated voxel shows (e.g. only the liver was
    # corrected) are not learnt as background: a background voxel may be any of them
    # (marginal cross entropy, no Dice term for them; losses.marginal_cross_entropy_loss)
    partial_labels: bool = True
    # an edit record's slices: the voxels the user corrected or reviewed weigh 1 in the
    # loss, the others of those slices (labels left as predicted) this much: the model
    # keeps what it said there but trusts the corrections more (0: the corrections only,
    # and the classes shown nowhere else are forgotten; 1: the edited slices whole, the
    # uncorrected predictions learnt as if corrected). Chosen by
    # benchmarks/finetune_selection.py.
    uncorrected_weight: float = 0.25
    eval_every: int | None = None  # iterations between validation/checkpoint points
    eval_seconds: float = 60.0  # ... or at most this many seconds between them
    seed: int = 0
    device: str = "auto"
    amp: Any = "auto"  # "auto" | True | False
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    gan_lambda: float = VOX2VOX_LAMBDA
    gan_ce_weight: float = VOX2VOX_CE_WEIGHT  # Vox2Vox: cross entropy beside the GDL term
    resume: bool = False
    keep_resume: bool = False  # keep the resume file after a run that finished normally
    # ---- the recipe (nnU-Net v2's defaults, sized for a CPU; see training/recipe.py,
    # training/augment.py, training/deep_supervision.py, training/postprocess_choice.py).
    # Each applies to runs from scratch where marked; a fine-tune keeps its base's choices.
    intensity_from_data: bool = True  # from scratch: CT -> foreground clip/mean/std ("ct")
    plan_spacing: bool = True  # from scratch: the cases' median spacing (nnU-Net's rule)
    patch_memory_mb: float | None = 128.0  # from scratch, no patch: patch planned to fit this
    # from scratch, no spacing and no patch: spacing, patch and width planned so that the
    # patch sees the body's in-plane extent (training/recipe.plan_context); off: the
    # median spacing and a patch of patch_memory_mb (nnU-Net's 3d_fullres rule)
    plan_context: bool = True
    context_voxels: int = 80_000  # voxels of the context-planned patch
    context_fov_mm: float = 380.0  # in-plane field of view it should cover (mm)
    augment_spatial: bool = True  # rotation, scaling (batchgeneratorsv2)
    augment_elastic: bool = False  # elastic deformation (slow on a CPU)
    augment_intensity: bool = True  # gamma, brightness, contrast, noise, blur, low resolution
    augment_mirror: bool = True  # mirroring along every axis
    augment_phase: bool = True  # contrast phase: each labelled structure's HU shifted alone
    deep_supervision: bool = True  # auxiliary decoder heads during training (U-Net, V-Net)
    batch_dice: bool = True  # Dice summed over the batch (False: per patch, then averaged)
    postprocess: str = "auto"  # "auto": largest component per class if validation improves

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible copy (stored in the card history of what it trained)."""
        d = asdict(self)
        if isinstance(d["classes"], dict):
            d["classes"] = {str(k): str(v) for k, v in d["classes"].items()}
        if isinstance(d["class_names"], dict):
            d["class_names"] = {str(k): str(v) for k, v in d["class_names"].items()}
        return d


def parse_value_names(
    text: str,
    *,
    what: str = "class",
    default_name: Callable[[int], str] | None = None,
    bare_names: bool = False,
) -> list[tuple[int, str]]:
    """``"5=liver, 1=spleen"`` -> ``[(5, "liver"), (1, "spleen")]``, in the order given.

    Items are separated by commas or semicolons; a value is a non-negative integer. An
    item without a name (``"5"``, ``"5="``) gets ``default_name(value)`` when given (else
    it is refused);
    with ``bare_names`` an item without ``=`` is a name whose value is its position
    (``"background,liver"``). Raises :class:`ValueError` naming the item (``what``).
    """
    out: list[tuple[int, str]] = []
    parts = [p.strip() for p in text.replace(";", ",").split(",")]
    for i, part in enumerate(filter(None, parts)):
        value, sep, name = (p.strip() for p in part.partition("="))
        if bare_names and not sep:
            value, name = str(i), part
        if not name and default_name is not None and value.isdigit():
            name = default_name(int(value))
        if not value.isdigit() or not name:
            raise ValueError(f"{what} entry {part!r} is not of the form VALUE=NAME")
        out.append((int(value), name))
    return out


def parse_classes(spec: Any) -> list[ClassInfo] | None:
    """``"5=liver,1=spleen"`` / ``{5: "liver"}`` / ``[ClassInfo, ...]`` -> card classes.

    The result always starts with ``ClassInfo(0, "background")``; the order of the others
    is the order given (= output channel order).
    """
    if spec is None:
        return None
    items: list[tuple[int, str]] = []
    if isinstance(spec, str):
        try:
            items = parse_value_names(spec, what="class", default_name=lambda v: f"class_{v}")
        except ValueError as exc:
            raise TrainingError(f"cannot parse classes {spec!r}: {exc}, e.g. 5=liver") from None
    elif isinstance(spec, dict):
        items = [(int(v), str(n)) for v, n in spec.items()]
    else:
        out = [c if isinstance(c, ClassInfo) else ClassInfo.from_dict(c) for c in spec]
        items = [(c.value, c.name) for c in out]
        colors = {c.value: c.color for c in out}
        classes = [ClassInfo(0, "background", colors.get(0))]
        classes += [ClassInfo(v, n, colors.get(v)) for v, n in items if v != 0]
        return classes
    values = [v for v, _ in items]
    if len(set(values)) != len(values):
        raise TrainingError(f"duplicate label values in classes {spec!r}")
    if any(v < 0 for v in values):
        raise TrainingError(f"label values must be >= 0 in classes {spec!r}")
    background = next((n for v, n in items if v == 0), "background")
    return [ClassInfo(0, background)] + [ClassInfo(v, n) for v, n in items if v != 0]


def width_kwargs(arch: str, width: int) -> dict[str, Any]:
    """``arch_kwargs`` for a base width ``W``: channels W, 2W, 4W... (5 levels for V-Net)."""
    levels = 5 if arch == "vnet" else 4
    return {"channels": [int(width) * 2**i for i in range(levels)]}


def lr_factor(progress: float, warmup: float, schedule: str) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1] of the run."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 0.02)
    if schedule == "constant":
        return 1.0
    rest = (progress - warmup) / max(1.0 - warmup, 1e-8)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * rest))
    if schedule == "poly":
        return (1.0 - rest) ** 0.9
    raise TrainingError(f"unknown schedule {schedule!r}; expected poly, cosine or constant")


def resume_path(out: str | os.PathLike) -> Path:
    """Where a run writing ``out`` keeps its resume state: ``NEW.pt`` -> ``NEW.resume.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.resume{out.suffix or '.pt'}")
