"""Hand weights back to the program they came from.

* :func:`export_nnunet`: an nnU-Net v2 trained-model folder (``dataset.json``,
  ``plans.json``, ``fold_<i>/checkpoint_final.pth``) that ``nnUNetPredictor`` /
  ``nnUNetv2_predict`` load, from a network whose card came from nnU-Net (possibly
  fine-tuned here). Each ensemble member becomes one fold.
* :func:`export_monai_bundle`: a MONAI bundle folder (``configs/metadata.json``,
  ``configs/inference.json``, ``models/model.pt``) for a MONAI network or one of
  napari-vnet's own, whose preprocessing is the card's
  (:mod:`napari_vnet.foreign.bundle_export`).

Both write into a temporary sibling folder and rename it into place, so a failed export
leaves nothing half-written; an existing destination is refused unless ``overwrite``, and
even then it is replaced only when it holds nothing but an earlier export's files. Folder
names taken from the weights (configuration, plans, folds) must be single printable path
components and the target must resolve inside OUT (:mod:`napari_vnet.foreign.export_paths`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from napari_vnet.foreign.bundle_export import export_monai_bundle
from napari_vnet.foreign.export_paths import (
    NNUNET_LAYOUT,
    ExportError,
    check_target,
    folder_name,
    inside,
    publish,
    tmp_beside,
)
from napari_vnet.foreign.networks import ensemble_members
from napari_vnet.models.card import ModelCard

__all__ = ["ExportError", "export_monai_bundle", "export_nnunet"]

#: nnU-Net finds a trainer by name; the network of every plain trainer variant is the
#: one the plans describe, which is what ``nnUNetTrainer`` builds
EXPORT_TRAINER = "nnUNetTrainer"


def export_nnunet(
    model: nn.Module, card: ModelCard, out: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write ``model`` as an nnU-Net v2 trained-model folder; returns its path.

    ``out`` is the trained-model folder itself when its name has nnU-Net's form
    ``<Trainer>__<Plans>__<configuration>``, otherwise the folder to create it in.
    """
    pre = card.preprocessing or {}
    if card.arch != "nnunet" or pre.get("kind") != "nnunet":
        raise ExportError(
            f"only weights that came from nnU-Net (arch 'nnunet') can be written as an nnU-Net "
            f"folder; these are {card.arch!r}"
        )
    if not all(isinstance(pre.get(k), dict) for k in ("plans", "dataset_json")):
        raise ExportError("the model card's nnU-Net preprocessing has no plans or dataset.json")
    plans, dataset_json = pre["plans"], pre["dataset_json"]
    config = folder_name(pre.get("configuration"), "nnU-Net configuration")
    out = Path(out)
    if len(out.name.split("__")) != 3:
        plans_name = card.source.get("plans_name") or plans.get("plans_name") or "nnUNetPlans"
        folder_name(plans_name, "nnU-Net plans name")
        out = inside(out / folder_name(f"{EXPORT_TRAINER}__{plans_name}__{config}", "folder"), out)
    members = ensemble_members(model)
    names = _fold_names(card, len(members))
    check_target(out, overwrite, NNUNET_LAYOUT)
    tmp = tmp_beside(out)
    try:
        (tmp / "plans.json").write_text(json.dumps(plans, indent=2))
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
        axes = card.sliding_window.get("mirror_axes", (0, 1, 2))
        mirror = tuple(int(a) for a in axes) or None  # None: never mirrored, as nnU-Net says it
        for name, member in zip(names, members, strict=True):
            fold_dir = tmp / f"fold_{name}"
            fold_dir.mkdir()
            state = {k: v.detach().cpu().clone() for k, v in member.state_dict().items()}
            torch.save(
                {
                    "network_weights": state,
                    "optimizer_state": None,
                    "grad_scaler_state": None,
                    "logging": {},
                    "_best_ema": None,
                    "current_epoch": int(card.history.get("iterations", 0) or 0),
                    "init_args": {
                        "plans": plans,
                        "configuration": config,
                        "fold": int(name) if name.isdigit() else name,
                        "dataset_json": dataset_json,
                    },
                    "trainer_name": EXPORT_TRAINER,
                    "inference_allowed_mirroring_axes": mirror,
                },
                fold_dir / "checkpoint_final.pth",
            )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish(tmp, out, overwrite, NNUNET_LAYOUT)


def _fold_names(card: ModelCard, n: int) -> list[str]:
    """The card's fold names when there is one per member (each checked to make a
    ``fold_<name>`` folder name), else 0..n-1."""
    folds = card.source.get("folds") or []
    source = [str(f) for f in folds] if isinstance(folds, (list, tuple)) else []
    names = source if len(source) == n else [str(i) for i in range(n)]
    for name in names:
        folder_name(f"fold_{name}", "nnU-Net fold")
    return names
