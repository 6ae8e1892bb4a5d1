"""nnU-Net v2 trained-model folders: read, check, build (pre- and post-processing:
:mod:`napari_vnet.foreign.nnunet_preprocessing`).

A trained-model folder is what ``nnUNetv2_train`` writes (and TotalSegmentator ships)::

    <Trainer>__<Plans>__<configuration>/
        dataset.json  plans.json
        fold_0/checkpoint_final.pth   (or checkpoint_best.pth)
        fold_1/...

:func:`load_nnunet_folder` turns it into ``(network, card)``: the network is rebuilt from
the plan's architecture entry (``dynamic_network_architectures``), the selected folds
become one :class:`~napari_vnet.foreign.networks.NnUNetEnsemble` (mean logits, as
nnU-Net's fold ensemble), class names come from ``dataset.json``, and the card carries
the plans and dataset description so that it rebuilds offline.

Pre- and post-processing follow nnU-Net exactly by calling its own functions (the
``[nnunet]`` extra): ``transpose_forward``, crop to the non-zero region, the per-channel
normalisation scheme (CT: clip to the fingerprint's foreground 0.5/99.5 percentiles,
subtract its mean, divide its std; z-score otherwise), resampling to the configuration's
spacing with its orders (data order 3, separate z with order 0 for anisotropic spacing);
back on the input grid the blended logits are resampled with the probabilities' order
(1), arg-maxed, put back into the crop box and transposed back. The sliding window in
between is this project's engine, told by ``card.sliding_window`` to blend logits with
nnU-Net's Gaussian on nnU-Net's window grid (tile step 0.5).

``postprocessing.pkl`` beside the folds (or in ``crossval_results_folds_<folds>``), as
``nnUNetv2_find_best_configuration`` writes it, becomes the card's clean-up, read by an unpickler
that builds plain data only (:mod:`napari_vnet.foreign.nnunet_postprocessing`).

Refused with one line: cascades (a configuration with ``previous_stage``), region-based
training (``regions_class_order``), 2D configurations, and preprocessors other than
nnU-Net's default one.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_vnet.foreign.networks import NnUNetEnsemble
from napari_vnet.foreign.safe_load import read_json_object, safe_torch_load
from napari_vnet.models.card import ClassInfo, ModelCard
from napari_vnet.models.errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = [
    "UnsupportedNnUNetError",
    "is_nnunet_folder",
    "load_nnunet_folder",
    "nnunet_folder_card",
]

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
_FOLD_RE = re.compile(r"^fold_(\d+|all)$")


class UnsupportedNnUNetError(CheckpointError):
    """An nnU-Net variant napari-vnet does not run (cascade, regions, 2D...)."""


def is_nnunet_folder(path: str | os.PathLike) -> bool:
    """True for a trained-model folder (``plans.json`` + ``dataset.json`` + ``fold_*``),
    or a dataset folder holding exactly one such folder."""
    try:
        _model_dir(Path(path))
        return True
    except CheckpointError:
        return False


def _model_dir(path: Path) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a folder")
    if (path / "plans.json").is_file() and (path / "dataset.json").is_file():
        return path
    inner = [p for p in sorted(path.iterdir()) if p.is_dir() and (p / "plans.json").is_file()]
    if len(inner) == 1:
        return inner[0]
    if inner:
        names = ", ".join(p.name for p in inner)
        raise CheckpointError(
            f"{path}: holds several nnU-Net trained models ({names}); pick one of them"
        )
    raise CheckpointError(
        f"{path}: not an nnU-Net v2 trained-model folder (no plans.json and dataset.json)"
    )


def resolve_configuration(plans: dict[str, Any], name: str, where: Path) -> dict[str, Any]:
    """The configuration ``name`` of ``plans`` with ``inherits_from`` resolved."""
    configs = plans.get("configurations") or {}
    seen: list[str] = []
    chain = []
    while True:
        if name not in configs:
            raise CheckpointError(
                f"{where}: plans.json has no configuration {name!r} (has {sorted(configs)})"
            )
        if name in seen:
            raise CheckpointError(f"{where}: plans.json configurations inherit in a circle {seen}")
        seen.append(name)
        chain.append(configs[name])
        parent = configs[name].get("inherits_from")
        if not parent:
            break
        name = parent
    merged: dict[str, Any] = {}
    for cfg in reversed(chain):
        merged.update(copy.deepcopy(cfg))
    merged.pop("inherits_from", None)
    return merged


def _check_supported(where: Path, config_name: str, cfg: dict, dataset_json: dict) -> None:
    if cfg.get("previous_stage"):
        raise UnsupportedNnUNetError(
            f"{where}: configuration {config_name!r} is a cascade stage (needs the "
            f"{cfg['previous_stage']!r} prediction as input); napari-vnet runs single-stage "
            "3D configurations only (use 3d_fullres)"
        )
    labels = dataset_json.get("labels") if isinstance(dataset_json.get("labels"), dict) else {}
    if "regions_class_order" in dataset_json or any(
        isinstance(v, (list, tuple)) for v in labels.values()
    ):
        raise UnsupportedNnUNetError(
            f"{where}: region-based training (overlapping label regions with sigmoid "
            "outputs) is not supported; napari-vnet runs models with one label per voxel"
        )
    patch, spacing = cfg.get("patch_size"), cfg.get("spacing")
    if (
        isinstance(patch, list)
        and isinstance(spacing, list)
        and (len(patch) != 3 or len(spacing) != 3)
    ):
        raise UnsupportedNnUNetError(
            f"{where}: configuration {config_name!r} is {len(cfg.get('patch_size', []))}D; "
            "napari-vnet runs 3D configurations only (3d_fullres, 3d_lowres)"
        )
    pre = cfg.get("preprocessor_name", "DefaultPreprocessor")
    if pre != "DefaultPreprocessor":
        raise UnsupportedNnUNetError(
            f"{where}: preprocessor {pre!r} is not nnU-Net's default one; not supported"
        )


def _check_plans(model_dir: Path, plans: dict, config_name: str, dataset_json: dict) -> None:
    """InvalidCardError (one line per problem, naming plans.json / dataset.json) for
    what nnU-Net's own code would trip over, before anything reads or builds from it."""
    from napari_vnet.models.errors import InvalidCardError
    from napari_vnet.models.nnunet_checks import (
        nnunet_network_problems,
        nnunet_preprocessing_problems,
    )

    pre = {"plans": plans, "configuration": config_name, "dataset_json": dataset_json}
    problems = nnunet_preprocessing_problems(pre)
    cfg = resolve_configuration(plans, config_name, model_dir)
    arch = cfg.get("architecture") if isinstance(cfg.get("architecture"), dict) else {}
    problems += nnunet_network_problems({"network_kwargs": arch.get("arch_kwargs", {})})
    if problems:
        raise InvalidCardError(model_dir, problems)


def _classes(dataset_json: dict, where: Path) -> list[ClassInfo]:
    labels = dataset_json.get("labels") or {}
    pairs = sorted((int(v), str(k)) for k, v in labels.items() if str(k).lower() != "ignore")
    values = [v for v, _ in pairs]
    if values != list(range(len(values))) or len(values) < 2:
        raise CheckpointError(
            f"{where}: dataset.json labels must be 0..N-1 with background 0, got {labels}"
        )
    return [ClassInfo(v, n) for v, n in pairs]


def _folds_present(model_dir: Path) -> list[str]:
    found = []
    for p in model_dir.iterdir():
        m = _FOLD_RE.match(p.name)
        if p.is_dir() and m and any((p / c).is_file() for c in CHECKPOINT_NAMES):
            found.append(m.group(1))
    return sorted(found, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0))


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for prefix in ("_orig_mod.", "module."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


@dataclass
class _Fold:
    name: str
    checkpoint: Path
    weights: dict[str, torch.Tensor]
    trainer: str
    configuration: str | None
    mirror_axes: tuple[int, ...] | None


def _read_fold(model_dir: Path, fold: str, checkpoint: str | None, mmap: bool = False) -> _Fold:
    folder = model_dir / f"fold_{fold}"
    names = (checkpoint,) if checkpoint else CHECKPOINT_NAMES
    path = next((folder / n for n in names if (folder / n).is_file()), None)
    if path is None:
        raise CheckpointError(f"{folder}: no {' or '.join(names)}")
    obj = safe_torch_load(path, mmap=mmap)
    if not isinstance(obj, dict) or not isinstance(obj.get("network_weights"), dict):
        raise CheckpointError(f"{path}: not an nnU-Net v2 checkpoint (no 'network_weights')")
    init = obj.get("init_args") if isinstance(obj.get("init_args"), dict) else {}
    axes = obj.get("inference_allowed_mirroring_axes")
    if axes is not None and not (
        isinstance(axes, (list, tuple))
        and all(isinstance(a, (int, np.integer)) and 0 <= a <= 2 for a in axes)
    ):
        raise CheckpointError(
            f"{path}: inference_allowed_mirroring_axes must list axes 0-2, got {axes!r:.60}"
        )
    bad = next(
        (k for k, v in obj["network_weights"].items() if not isinstance(v, torch.Tensor)), None
    )
    if bad is not None:
        raise CheckpointError(f"{path}: network_weights entry {bad!r:.80} is not a tensor")
    return _Fold(
        name=fold,
        checkpoint=path,
        weights=_strip_prefixes(obj["network_weights"]),
        trainer=str(obj.get("trainer_name", "")),
        configuration=init.get("configuration"),
        mirror_axes=None if axes is None else tuple(int(a) for a in axes),
    )


def _parse_name(model_dir: Path) -> tuple[str | None, str | None, str | None]:
    parts = model_dir.name.split("__")
    return tuple(parts) if len(parts) == 3 else (None, None, None)  # type: ignore[return-value]


def nnunet_folder_card(
    path: str | os.PathLike, folds: list[str] | None = None, checkpoint: str | None = None
) -> ModelCard:
    """The card of an nnU-Net folder without reading any fold's weights."""
    return _open(Path(path), folds, checkpoint, read_weights=False)[1]


def load_nnunet_folder(
    path: str | os.PathLike,
    folds: list[str] | tuple[str, ...] | None = None,
    checkpoint: str | None = None,
) -> tuple[NnUNetEnsemble, ModelCard]:
    """``(network, card)`` of an nnU-Net v2 trained-model folder (eval mode, CPU).

    ``folds``: fold names to ensemble (default: every ``fold_*`` with a checkpoint);
    ``checkpoint``: file name inside each fold (default ``checkpoint_final.pth``, else
    ``checkpoint_best.pth``). Raises CheckpointError / UnsupportedNnUNetError naming the
    folder and the problem; MissingExtraError when nnU-Net's packages are not installed.
    """
    net, card = _open(Path(path), folds, checkpoint, read_weights=True)
    assert net is not None
    return net, card


def _open(path: Path, folds, checkpoint, read_weights: bool):
    model_dir = _model_dir(path)
    plans = read_json_object(model_dir / "plans.json")
    dataset_json = read_json_object(model_dir / "dataset.json")
    trainer, plans_name, config_name = _parse_name(model_dir)
    chosen = _chosen_folds(model_dir, folds)
    loaded = [_read_fold(model_dir, f, checkpoint) for f in chosen] if read_weights else []
    if config_name is None:
        config_name = next((f.configuration for f in loaded if f.configuration), None)
    if config_name is None:
        raise CheckpointError(
            f"{model_dir}: cannot tell the configuration (folder name is not "
            "<Trainer>__<Plans>__<configuration>)"
        )
    cfg = resolve_configuration(plans, config_name, model_dir)
    _check_supported(model_dir, config_name, cfg, dataset_json)
    _check_plans(model_dir, plans, config_name, dataset_json)
    source = {
        "format": "nnunet",
        "path": str(model_dir),
        "dataset": plans.get("dataset_name") or model_dir.parent.name,
        "configuration": config_name,
        "trainer": trainer or (loaded[0].trainer if loaded else ""),
        "plans_name": plans_name or plans.get("plans_name", ""),
        "folds": chosen,
        "checkpoint": checkpoint or (loaded[0].checkpoint.name if loaded else ""),
    }
    # nnUNetPredictor mirrors over the first fold's axes; none when it names none
    # (TotalSegmentator's nnUNetTrainerNoMirroring): read, weights mapped, when only the
    # card is asked for
    first = loaded[0] if loaded else _read_fold(model_dir, chosen[0], checkpoint, mmap=True)
    card = _card(model_dir, plans, dataset_json, cfg, source, first.mirror_axes or ())
    _attach_postprocessing(card, model_dir, chosen)
    from napari_vnet.models.card import card_problems
    from napari_vnet.models.errors import InvalidCardError

    problems = card_problems(card)  # before anything is built from it
    if problems:
        raise InvalidCardError(model_dir, problems)
    if not read_weights:
        return None, card
    net = _build(card, model_dir)
    _load_folds(net, loaded, model_dir, card)
    log.info("loaded %s", card.origin())
    return net, card


def _attach_postprocessing(card: ModelCard, model_dir: Path, folds: list[str]) -> None:
    """nnU-Net's ``postprocessing.pkl`` (when present) as the card's ``largest_region``
    clean-up, read safely (:mod:`napari_vnet.foreign.nnunet_postprocessing`); what was
    done with it, applied or refused with the reason, is ``card.source["postprocessing"]``."""
    from napari_vnet.foreign.nnunet_postprocessing import (
        PostprocessingRefused,
        find_postprocessing,
        read_postprocessing,
    )

    path = find_postprocessing(model_dir, folds)
    if path is None:
        return
    try:
        steps = read_postprocessing(path, card.label_values)
    except PostprocessingRefused as exc:
        card.source["postprocessing"] = f"{path}: not applied, refused: {exc}"
        log.warning("%s", card.source["postprocessing"])
        return
    card.postprocess = {"largest_region": steps} if steps else {}
    what = "; ".join("largest component of " + "+".join(map(str, g)) for g in steps)
    card.source["postprocessing"] = f"{path}: applied ({what or 'no steps'})"


def _chosen_folds(model_dir: Path, folds) -> list[str]:
    """The folds asked for (all those present when None); CheckpointError naming any
    missing, or when there are none."""
    present = _folds_present(model_dir)
    if folds is None:
        chosen = present
    else:
        chosen = [str(f) for f in folds]
        missing = [f for f in chosen if f not in present]
        if missing:
            raise CheckpointError(
                f"{model_dir}: fold(s) {', '.join(missing)} not found (present: "
                f"{', '.join(present) or 'none'})"
            )
    if not chosen:
        raise CheckpointError(
            f"{model_dir}: no fold_*/{' or '.join(CHECKPOINT_NAMES)} in this nnU-Net folder"
        )
    return chosen


def _card(model_dir: Path, plans, dataset_json, cfg, source: dict[str, Any], mirror) -> ModelCard:
    """The card of the configuration ``cfg`` (``source``: where it came from, completed
    with the channel names); ``mirror``: the test-time mirroring axes (may be none)."""
    config_name = source["configuration"]
    classes = _classes(dataset_json, model_dir)
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {"0": "?"}
    arch = cfg.get("architecture") or {}
    if "network_class_name" not in arch:
        raise UnsupportedNnUNetError(
            f"{model_dir}: plans.json has no architecture entry (plans of nnU-Net < 2.3?)"
        )
    return ModelCard(
        arch="nnunet",
        arch_kwargs={
            "network_class_name": arch["network_class_name"],
            "network_kwargs": arch.get("arch_kwargs", {}),
            "requires_import": list(arch.get("_kw_requires_import", [])),
            "members": max(1, len(source["folds"])),
        },
        classes=classes,
        in_channels=len(channels),
        normalization={"kind": "none"},
        spacing=tuple(float(s) for s in cfg["spacing"]),
        patch_size=tuple(int(p) for p in cfg["patch_size"]),
        description=str(dataset_json.get("description") or dataset_json.get("name") or ""),
        source={**source, "channel_names": {str(k): str(v) for k, v in channels.items()}},
        preprocessing={
            "kind": "nnunet",
            "configuration": config_name,
            "plans": plans,
            "dataset_json": dataset_json,
        },
        sliding_window={
            "blend": "logits",
            "steps": "even",
            "center": "floor",
            "pad": "center",
            "mirror_axes": list(mirror),
        },
    )


def _load_folds(net: NnUNetEnsemble, loaded, model_dir: Path, card: ModelCard) -> None:
    """The folds' weights into the ensemble's members (eval mode); CheckpointError when
    they do not fit the network the plans describe."""
    state = {}
    for i, fold in enumerate(loaded):
        state.update({f"members.{i}.{k}": v for k, v in fold.weights.items()})
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        first = (missing or unexpected or bad)[0]
        raise CheckpointError(
            f"{model_dir}: the checkpoints' weights do not fit the network the plans describe "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(bad)} of another "
            f"shape; first {first!r}); does trainer {card.source['trainer']!r} build a "
            "custom network?"
        )
    net.load_state_dict(state)
    net.eval()


def _build(card: ModelCard, where: Path) -> NnUNetEnsemble:
    from napari_vnet.models.registry import build_model

    try:
        return build_model(card)  # type: ignore[return-value]
    except ValueError as exc:
        raise CheckpointError(f"{where}: cannot build the nnU-Net network: {exc}") from None


def mirror_flip_sets(axes: list[int] | tuple[int, ...]) -> list[tuple[int, ...]]:
    """All flip combinations of nnU-Net's mirroring axes, identity first."""
    axes = tuple(int(a) for a in axes)
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
