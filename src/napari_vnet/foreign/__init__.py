"""Weights from other programs: adapters at the edge, then this project's one engine.

Three routes, each ending in ``(network, ModelCard)`` like a napari-vnet checkpoint:

* an **nnU-Net v2 trained-model folder** (:mod:`napari_vnet.foreign.nnunet`);
* a **MONAI bundle** folder (:mod:`napari_vnet.foreign.monai_bundle`);
* a **bare MONAI state dict** plus a card given by the user
  (:func:`napari_vnet.foreign.monai_bundle.wrap_monai_state_dict`).

Checkpoints are read with :func:`napari_vnet.foreign.safe_load.safe_torch_load`
(``weights_only=True`` plus an allowlist of plain types); nothing in a file runs code.
nnunetv2 / dynamic-network-architectures and monai are optional extras
(``pip install 'napari-vnet[nnunet]'`` / ``'napari-vnet[monai]'``) imported only here.
This module itself imports neither torch nor the field libraries.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["foreign_kind", "load_foreign", "preprocessing_for", "read_foreign_card"]


def foreign_kind(path: str | os.PathLike) -> str | None:
    """ "nnunet", "monai_bundle" or None (not a foreign weights folder)."""
    p = Path(path)
    if not p.is_dir():
        return None
    if (p / "configs" / "metadata.json").is_file() or (p / "configs" / "inference.json").is_file():
        return "monai_bundle"
    from napari_vnet.foreign.nnunet import is_nnunet_folder

    return "nnunet" if is_nnunet_folder(p) else None


def load_foreign(path: str | os.PathLike, *, folds: Any = None, checkpoint: str | None = None):
    """``(network, card)`` of a foreign weights folder; CheckpointError when it is none,
    or when it is malformed (one line naming the folder, never a traceback)."""
    kind = foreign_kind(path)
    if kind == "nnunet":
        from napari_vnet.foreign.nnunet import load_nnunet_folder

        return _checked(path, load_nnunet_folder, path, folds=folds, checkpoint=checkpoint)
    from napari_vnet.models.errors import CheckpointError

    if kind == "monai_bundle":
        from napari_vnet.foreign.monai_bundle import load_monai_bundle

        if folds is not None or checkpoint is not None:
            raise CheckpointError(f"{path}: a MONAI bundle has no folds or checkpoint choice")
        return _checked(path, load_monai_bundle, path)

    raise CheckpointError(
        f"{path}: is a folder but neither an nnU-Net v2 trained-model folder (plans.json, "
        "dataset.json, fold_*/checkpoint_final.pth) nor a MONAI bundle (configs/, models/)"
    )


def read_foreign_card(path: str | os.PathLike):
    """The card of a foreign weights folder, reading as little as possible."""
    kind = foreign_kind(path)
    if kind == "nnunet":
        from napari_vnet.foreign.nnunet import nnunet_folder_card

        return _checked(path, lambda p: (None, nnunet_folder_card(p)), path)[1]
    return load_foreign(path)[1]


def _checked(path, load, *args, **kwargs):
    """``load(*args)`` with its card checked (InvalidCardError listing the problems), and
    any other failure on the folder's data said in one line naming the folder: the files
    are untrusted, nothing in them may end in a traceback."""
    from napari_vnet.models.card import card_problems
    from napari_vnet.models.errors import CheckpointError, InvalidCardError

    try:
        net, card = load(*args, **kwargs)
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, AssertionError,
            RecursionError, RuntimeError) as exc:  # fmt: skip
        text = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{path}: malformed weights folder ({type(exc).__name__}: {text})"
        ) from None
    problems = card_problems(card)
    if problems:
        raise InvalidCardError(path, problems)
    return net, card


def preprocessing_for(card):
    """The producer's pre/post-processing object for ``card`` (a
    :class:`napari_vnet.inference.preprocess.Preprocessing`), or None for our own."""
    kind = (card.preprocessing or {}).get("kind")
    if not kind:
        return None
    from napari_vnet.models.card_checks import preprocessing_problems

    problems = preprocessing_problems(card)  # an in-memory card too: nothing unchecked is built
    if problems:
        raise ValueError("the model card cannot be used: " + "; ".join(problems))
    if kind == "nnunet":
        from napari_vnet.foreign.nnunet_preprocessing import NnUNetPreprocessing

        return NnUNetPreprocessing(card)
    if kind == "monai_bundle":
        from napari_vnet.foreign.monai_bundle import MonaiBundlePreprocessing

        return MonaiBundlePreprocessing(card)
    raise ValueError(f"model card names an unknown preprocessing {kind!r}")
