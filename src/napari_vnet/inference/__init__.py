"""Sliding-window inference: fast, memory-bounded, cancellable (no Qt).

The package is staged as MONAI's inferer and nnU-Net's predictor are:
:mod:`.preprocess` (the card's preprocessing and the way back to the input grid, chosen
by :func:`~.preprocess.preprocessing_for`), :mod:`.windows` (window grid, padding,
Gaussian weights, the rolling z-slab stitcher), :mod:`.engine` (the network over the
windows, a generator yielding progress) and :mod:`.predict` (the orchestration).


``predict(image, model, card, spacing=...)`` turns a raw volume into a label map on the
input's own grid (``prepare(image, card, spacing=...)`` runs step 1-2's preprocessing
alone, e.g. in a read-ahead thread, and ``predict`` accepts its result in place of the
image):

1. non-finite voxels are replaced by the smallest finite value (with a warning), and the
   intensities are normalised as the model card says (:func:`normalize_intensity`);
2. when the input spacing differs from the card's training spacing, the image is resampled
   to the card spacing (linear) and the result back to the input grid (labels nearest,
   probabilities linear);
3. the volume is covered by overlapping patches (``card.patch_size``; an image smaller
   than a patch is padded); each window's softmax is weighted by a Gaussian importance
   map (sigma = patch / 8, floored at 1e-3: the map of MONAI's ``sliding_window_inference``
   with ``mode="gaussian"``, so both engines blend windows alike) and windows are run in
   batches;
4. memory stays bounded: windows are visited in z order and their weighted scores are
   summed into a *rolling z-slab* of one patch depth (plus what one batch spans); slices
   that no later window can touch are finalised (argmax -> label values) and the slab
   moves on. Nothing of size ``C x D x H x W`` is ever allocated (unless probabilities
   are asked for, and then only in float16; their normaliser, the sum of the window
   weights, is one more channel of the slab);
5. optional flip test-time augmentation (8 flips, softmax averaged) and post-processing
   (:mod:`napari_vnet.inference.postprocess`).

Device ``"auto"`` picks cuda > mps > cpu. Mixed precision ``amp="auto"``: bf16 (or fp16)
autocast on CUDA, fp16 on MPS, bf16 on a CPU only when it has native bf16 instructions
(``avx512_bf16``/``amx_bf16``; emulated bf16 is hundreds of times slower), else fp32.
On an out-of-memory error the batch is halved and retried, then the stitching buffer is
moved to the CPU, and only then :class:`InferenceMemoryError` is raised.

The engine never changes torch's thread count (the caller or the widget decides), runs
under ``torch.inference_mode`` and restores the model's train/eval mode afterwards; the
model is moved to the chosen device (in place, as ``Module.to`` does).
"""

from napari_vnet.inference.engine import (
    EngineResult,
    InferenceMemoryError,
    PredictionCancelled,
    sliding_window,
)
from napari_vnet.inference.predict import Prediction, Prepared, check_memory, predict, prepare
from napari_vnet.inference.preprocess import (
    SPACING_RTOL,
    CardPreprocessing,
    blend_for,
    preprocessing_for,
)
from napari_vnet.inference.windows import (
    GAUSSIAN_MIN,
    GAUSSIAN_SIGMA_SCALE,
    ZStitcher,
    importance_map,
    pad_to_window,
    sliding_window_starts,
    window_grid,
)
from napari_vnet.runtime import available_memory, cpu_has_native_bf16, resolve_amp, resolve_device

__all__ = [
    "GAUSSIAN_MIN",
    "GAUSSIAN_SIGMA_SCALE",
    "SPACING_RTOL",
    "CardPreprocessing",
    "EngineResult",
    "InferenceMemoryError",
    "Prediction",
    "PredictionCancelled",
    "Prepared",
    "ZStitcher",
    "available_memory",
    "blend_for",
    "check_memory",
    "cpu_has_native_bf16",
    "importance_map",
    "pad_to_window",
    "predict",
    "prepare",
    "preprocessing_for",
    "resolve_amp",
    "resolve_device",
    "sliding_window",
    "sliding_window_starts",
    "window_grid",
]
