"""Fine-tuning engine: learn from (image, labels) pairs, even sparsely annotated ones (no Qt).

The public API is :func:`finetune`, a generator. It yields one
:class:`~.events.TrainingStep` per iteration (a dataclass that also reads like the dict it
replaced)::

    TrainingStep(iteration=17, total=200, loss=0.61, losses={"dice": .., "ce": ..},
                 lr=1e-3, seconds=4.2, val_dice=0.71, checkpoint="/path/new.pt")

and returns (``StopIteration.value``) a :class:`~.events.TrainingSummary` whose ``out``
is the path of the best checkpoint written. ``should_stop()`` ends the run early; the best checkpoint written
so far stays on disk (if none was written yet, the current weights are), together with a
``<out stem>.resume<suffix>`` file from which ``TrainConfig(resume=True)`` continues.

The package follows the seams of nnU-Net's trainer: :mod:`.config` (what a run is
told), :mod:`.plan` (every policy decision: classes, patch/window, masks, spacing),
:mod:`.data` (pairs -> cases), :mod:`.sampler`, :mod:`.transfer` (starting weights),
:mod:`.steps` (one segmentation / Vox2Vox update), :mod:`.validation` (the inference
engine + :mod:`napari_vnet.metrics`), :mod:`.distributed`, :mod:`.loop` and
:mod:`.events`.

Pipeline:

1. pairs -> arrays on the image grid (labels in another geometry, e.g. flipped rows, are
   resampled onto the image with nearest neighbour), resampled to the card spacing and
   normalised as the card says (:func:`prepare_cases`);
2. label values -> output channels via the card's classes (values not listed become
   background); voxels equal to ``ignore_index`` or outside the ``annotated`` mask are
   unannotated and contribute nothing to any loss (the 3D U-Net paper's sparse training);
3. random patches, about a third centred on a labelled class (:class:`PatchSampler`),
   cheap augmentation (flips, in-plane 90 degree rotations, intensity scale/shift,
   Gaussian noise);
4. V-Net / 3D U-Net: soft Dice (Milletari) + cross entropy; Vox2Vox: least-squares
   adversarial loss with the PatchGAN discriminator + lambda * (generalized Dice +
   ``gan_ce_weight`` * cross entropy) (Cirillo et al. 2020: lambda = 5 and no cross
   entropy; the cross entropy term is ours, see :data:`VOX2VOX_CE_WEIGHT`);
5. AdamW, linear warm-up then poly or cosine decay, gradient clipping, AMP as
   :func:`napari_vnet.runtime.resolve_amp` decides (CPU bf16 only with native bf16
   support; convolutions whose bf16 weight gradient oneDNN gets wrong run in fp32, see
   :func:`napari_vnet.runtime.bf16_conv_guard`), optional validation Dice, best
   checkpoint written atomically.

Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel
(NCCL on GPUs, gloo on CPU); each rank samples its own patches and only rank 0 writes.
"""

from napari_vnet.runtime import cpu_has_native_bf16, resolve_amp, resolve_device
from napari_vnet.training.config import (
    DEFAULT_PATCH,
    VOX2VOX_CE_WEIGHT,
    VOX2VOX_LAMBDA,
    TrainConfig,
    TrainingCancelled,
    TrainingError,
    TrainingPair,
    lr_factor,
    parse_classes,
    resume_path,
    width_kwargs,
)
from napari_vnet.training.data import (
    LoadedPair,
    labels_on_image_grid,
    load_pairs,
    prepare_cases,
    same_grid,
)
from napari_vnet.training.events import TrainingStep, TrainingSummary
from napari_vnet.training.loop import finetune, run_training
from napari_vnet.training.plan import (
    TrainingPlan,
    export_lut,
    plan_training,
    renumber_for_export,
    resolve_classes,
    trained_patch,
)
from napari_vnet.training.sampler import PatchSampler

# private names that tests and scripts of the single-module engine use
from napari_vnet.training.transfer import _matching_channels as _matching_channels
from napari_vnet.training.transfer import _transfer_weights as _transfer_weights
from napari_vnet.training.validation import predict_channels as _predict_case  # noqa: F401
from napari_vnet.training.validation import validation_dice


def _resolve_device(name, local_rank: int = 0):
    """(kept for scripts written against the single-module engine)"""
    return resolve_device(name, local_rank)


def _amp_dtype(device, amp):
    """(kept for scripts written against the single-module engine)"""
    return resolve_amp(amp, device)


__all__ = [
    "DEFAULT_PATCH",
    "VOX2VOX_CE_WEIGHT",
    "VOX2VOX_LAMBDA",
    "LoadedPair",
    "PatchSampler",
    "TrainConfig",
    "TrainingCancelled",
    "TrainingError",
    "TrainingPair",
    "TrainingPlan",
    "TrainingStep",
    "TrainingSummary",
    "cpu_has_native_bf16",
    "export_lut",
    "finetune",
    "labels_on_image_grid",
    "load_pairs",
    "lr_factor",
    "parse_classes",
    "plan_training",
    "prepare_cases",
    "renumber_for_export",
    "resolve_classes",
    "resume_path",
    "run_training",
    "same_grid",
    "trained_patch",
    "validation_dice",
    "width_kwargs",
]
