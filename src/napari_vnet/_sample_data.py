"""npe2 sample data: the synthetic torso CT phantom with its ground-truth labels.

``phantom_ct()`` reads the ready-made phantom installed with the package (module
``napari_vnet.sample_data``, written by its ``make_sample.py``) and returns two
LayerDataTuples, an Image in Hounsfield units and a Labels layer, on the same physical
grid (LPS mm, via :func:`napari_vnet.io.volume_to_layer_kwargs`). If the files are
missing (e.g. a source tree where they were deleted) the same phantom is generated.
No napari import and no side effect here: napari builds the layers from the tuples
(the plugin's activation sets up the viewer: ``napari_vnet._widgets._session``).
"""

from __future__ import annotations

import json
import logging

from napari_vnet.io import Volume, display_range, read_volume, volume_to_layer_kwargs
from napari_vnet.io.label_names import labels_display_kwargs
from napari_vnet.phantoms import CT_WINDOW

log = logging.getLogger(__name__)

IMAGE_NAME = "phantom CT"
LABELS_NAME = "phantom ground truth"


def _load_sample() -> tuple[Volume, Volume, list[dict]]:
    from napari_vnet.sample_data import sample_paths

    paths = sample_paths()
    if all(p.is_file() for p in paths.values()):
        image = read_volume(paths["ct"])
        labels = read_volume(paths["labels"])
        classes = json.loads(paths["classes"].read_text())["classes"]
        # NIfTI keeps no display window; the phantom's soft-tissue window is known
        level, width = CT_WINDOW
        image.metadata.setdefault("modality", "CT")
        image.metadata.setdefault("window_center", level)
        image.metadata.setdefault("window_width", width)
        return image, labels, classes

    from napari_vnet.phantoms import make_phantom

    seed = _sample_seed()
    log.warning("sample files not found at %s; generating phantom seed %s", paths["ct"], seed)
    image, labels, classes = make_phantom(seed)
    return image, labels, [c.to_dict() for c in classes]


def _sample_seed() -> int:
    from napari_vnet.sample_data.make_sample import SAMPLE_SEED

    return SAMPLE_SEED


def phantom_ct() -> list[tuple]:
    """The phantom CT (Image, soft-tissue window) and its ground truth (Labels)."""
    image, labels, classes = _load_sample()
    img_kw = volume_to_layer_kwargs(image, is_label=False)
    img_kw.update(name=IMAGE_NAME, colormap="gray", contrast_limits=display_range(image))
    img_kw.setdefault("metadata", {})["synthetic_phantom"] = True  # its models are the default
    lab_kw = volume_to_layer_kwargs(labels, is_label=True)
    lab_kw["metadata"]["classes"] = classes
    lab_kw.update(name=LABELS_NAME, opacity=0.5, **labels_display_kwargs(classes))
    return [(image.array, img_kw, "image"), (labels.array, lab_kw, "labels")]
