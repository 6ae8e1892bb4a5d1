"""nnU-Net's ``postprocessing.pkl``, read without unpickling anything of its own choosing.

``nnUNetv2_find_best_configuration`` writes ``(pp_fns, pp_fn_kwargs)`` with pickle: a list
of functions (only ever ``remove_all_but_largest_component_from_segmentation``) and their
keyword arguments (``labels_or_regions``: one label or a list of labels taken as one
region; ``background_label``). ``nnUNetv2_apply_postprocessing`` applies the steps in order.

A pickle runs whatever callable it names, so :func:`read_postprocessing` reads it with an
unpickler that resolves only that function name (to an inert marker, nnU-Net is not
imported) and numpy's integer scalars; any other global (``os.system``...) is refused
before it is looked up. The steps become the card's ``postprocess`` entry
``{"largest_region": [[labels], ...]}`` (:func:`napari_vnet.inference.postprocess.apply_card_postprocess`).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PostprocessingRefused", "find_postprocessing", "read_postprocessing"]

_LARGEST = (
    "nnunetv2.postprocessing.remove_connected_components",
    "remove_all_but_largest_component_from_segmentation",
)
_MAX_BYTES = 1 << 20


class PostprocessingRefused(ValueError):
    """A ``postprocessing.pkl`` that is not applied; the message says why in one line."""


class _Largest:
    """Stands for nnU-Net's largest-component function; never called."""

    __slots__ = ()


_LARGEST_MARK = _Largest()


def _int_scalar(dtype: Any, data: Any = None) -> int:
    """numpy's scalar reconstructor, for integer scalars only."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "iu" or not isinstance(data, bytes):
        raise pickle.UnpicklingError("a numpy scalar that is not an integer")
    return int(np.frombuffer(data, dtype=dtype, count=1)[0])


_ALLOWED: dict[tuple[str, str], Any] = {
    _LARGEST: _LARGEST_MARK,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _int_scalar,
    ("numpy._core.multiarray", "scalar"): _int_scalar,
}


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"it names {module}.{name}, which is not one of nnU-Net's post-processing steps"
            )
        return found


def find_postprocessing(model_dir: Path, folds: list[str]) -> Path | None:
    """``postprocessing.pkl`` of a trained-model folder: in the folder itself, else in the
    cross-validation results of exactly these folds (``crossval_results_folds_0_1_...``)."""
    for candidate in (
        model_dir / "postprocessing.pkl",
        model_dir / f"crossval_results_folds_{'_'.join(folds)}" / "postprocessing.pkl",
    ):
        if candidate.is_file():
            return candidate
    return None


def read_postprocessing(path: Path, label_values: list[int]) -> list[list[int]]:
    """The steps of ``path`` as label groups (each kept to its largest component, in
    order); :class:`PostprocessingRefused` saying why when it is anything else."""
    try:
        data = path.read_bytes()
        if len(data) > _MAX_BYTES:
            raise PostprocessingRefused(f"larger than {_MAX_BYTES} bytes")
        obj = _Restricted(io.BytesIO(data)).load()
    except PostprocessingRefused:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError,
            IndexError, KeyError, RecursionError, MemoryError, OSError) as exc:  # fmt: skip
        raise PostprocessingRefused(str(exc).splitlines()[0] if str(exc) else repr(exc)) from None
    return _steps(obj, set(label_values))


def _steps(obj: Any, known: set[int]) -> list[list[int]]:
    if not (isinstance(obj, tuple | list) and len(obj) == 2):
        raise PostprocessingRefused("not the (functions, keyword arguments) pair nnU-Net writes")
    fns, kwargs = obj
    if not (isinstance(fns, list) and isinstance(kwargs, list) and len(fns) == len(kwargs)):
        raise PostprocessingRefused("functions and keyword arguments are not two equal lists")
    steps = []
    for fn, kw in zip(fns, kwargs, strict=True):
        if fn is not _LARGEST_MARK or not isinstance(kw, dict):
            raise PostprocessingRefused("a step that is not nnU-Net's largest-component removal")
        if set(kw) - {"labels_or_regions", "background_label"} or kw.get("background_label", 0):
            raise PostprocessingRefused(f"unexpected arguments {sorted(map(str, kw))}")
        group = kw.get("labels_or_regions")
        group = group if isinstance(group, list) else [group]
        if not group or not all(isinstance(v, int) and not isinstance(v, bool) for v in group):
            raise PostprocessingRefused("labels_or_regions holds regions or non-label values")
        if not set(group) <= known - {0}:
            raise PostprocessingRefused(f"labels {group} are not the model's foreground labels")
        steps.append([int(v) for v in group])
    return steps
