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

The names below are imported on first use, so that ``napari_vnet.training.config`` (what
the command line and the docks build a run from) loads without torch.
"""

from __future__ import annotations

from napari_vnet._lazy import lazy_getattr

_LAZY = {
    "DEFAULT_PATCH": "config",
    "VOX2VOX_CE_WEIGHT": "config",
    "VOX2VOX_LAMBDA": "config",
    "TrainConfig": "config",
    "TrainingCancelled": "config",
    "TrainingError": "config",
    "TrainingPair": "config",
    "lr_factor": "config",
    "parse_classes": "config",
    "parse_value_names": "config",
    "resume_path": "config",
    "width_kwargs": "config",
    "LoadedPair": "data",
    "labels_on_image_grid": "data",
    "load_pairs": "data",
    "prepare_cases": "data",
    "TrainingStep": "events",
    "TrainingSummary": "events",
    "finetune": "loop",
    "run_training": "loop",
    "TrainingPlan": "plan",
    "export_lut": "plan",
    "plan_training": "plan",
    "renumber_for_export": "plan",
    "resolve_classes": "plan",
    "trained_patch": "plan",
    "PatchSampler": "sampler",
    "validation_dice": "validation",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
