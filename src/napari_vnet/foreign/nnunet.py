"""nnU-Net v2 trained-model folders: read, check, build, preprocess, restore.

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

from napari_vnet.foreign.networks import NnUNetEnsemble, require
from napari_vnet.foreign.safe_load import read_json_object, safe_torch_load
from napari_vnet.foreign.sizing import check_nnunet_grid
from napari_vnet.models.card import ClassInfo, ModelCard
from napari_vnet.models.errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = [
    "NnUNetPreprocessing",
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


def _read_fold(model_dir: Path, fold: str, checkpoint: str | None) -> _Fold:
    folder = model_dir / f"fold_{fold}"
    names = (checkpoint,) if checkpoint else CHECKPOINT_NAMES
    path = next((folder / n for n in names if (folder / n).is_file()), None)
    if path is None:
        raise CheckpointError(f"{folder}: no {' or '.join(names)}")
    obj = safe_torch_load(path)
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
    classes = _classes(dataset_json, model_dir)
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {"0": "?"}
    arch = cfg.get("architecture") or {}
    if "network_class_name" not in arch:
        raise UnsupportedNnUNetError(
            f"{model_dir}: plans.json has no architecture entry (plans of nnU-Net < 2.3?)"
        )
    mirror = next((f.mirror_axes for f in loaded if f.mirror_axes is not None), (0, 1, 2))
    card = ModelCard(
        arch="nnunet",
        arch_kwargs={
            "network_class_name": arch["network_class_name"],
            "network_kwargs": arch.get("arch_kwargs", {}),
            "requires_import": list(arch.get("_kw_requires_import", [])),
            "members": max(1, len(chosen)),
        },
        classes=classes,
        in_channels=len(channels),
        normalization={"kind": "none"},
        spacing=tuple(float(s) for s in cfg["spacing"]),
        patch_size=tuple(int(p) for p in cfg["patch_size"]),
        description=str(dataset_json.get("description") or dataset_json.get("name") or ""),
        source={
            "format": "nnunet",
            "path": str(model_dir),
            "dataset": plans.get("dataset_name") or model_dir.parent.name,
            "configuration": config_name,
            "trainer": trainer or (loaded[0].trainer if loaded else ""),
            "plans_name": plans_name or plans.get("plans_name", ""),
            "folds": chosen,
            "checkpoint": checkpoint or (loaded[0].checkpoint.name if loaded else ""),
            "channel_names": {str(k): str(v) for k, v in channels.items()},
        },
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
    from napari_vnet.models.card import card_problems
    from napari_vnet.models.errors import InvalidCardError

    problems = card_problems(card)  # before anything is built from it
    if problems:
        raise InvalidCardError(model_dir, problems)
    if not read_weights:
        return None, card
    net = _build(card, model_dir)
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
    log.info("loaded %s", card.origin())
    return net, card


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


# --------------------------------------------------------------------------- pre/post


@dataclass
class NnUNetContext:
    """What :meth:`NnUNetPreprocessing.restore` needs to go back to the input grid."""

    properties: dict[str, Any]
    network_shape: tuple[int, int, int]
    needs_resampling: bool
    pad_before: tuple[int, int, int] = (0, 0, 0)
    nonfinite_replaced: int = 0
    resampled: bool = False
    input_spacing: tuple[float, float, float] | None = None  # post-processing: the caller's


def _finite(channels: np.ndarray) -> tuple[np.ndarray, int]:
    """NaN/-inf -> the smallest finite value, +inf -> the largest (per channel)."""
    channels = np.asarray(channels)
    if channels.dtype.kind not in "fc":
        return channels, 0
    ok = np.isfinite(channels)
    bad = int(ok.size - np.count_nonzero(ok))
    if not bad:
        return channels, 0
    out = np.array(channels, dtype=np.float32)
    for c in range(out.shape[0]):
        good = ok[c]
        lo, hi = (float(out[c][good].min()), float(out[c][good].max())) if good.any() else (0, 0)
        out[c] = np.where(np.isposinf(out[c]), hi, np.where(good, out[c], lo))
    log.warning("replaced %d non-finite voxels before nnU-Net's preprocessing", bad)
    return out, bad


class NnUNetPreprocessing:
    """nnU-Net's own preprocessing of one case and the way back (see module docstring);
    a :class:`napari_vnet.inference.preprocess.Preprocessing`."""

    prepares_training = True

    def __init__(self, card: ModelCard) -> None:
        pre = card.preprocessing
        if pre.get("kind") != "nnunet":
            raise ValueError(f"not an nnU-Net card (preprocessing {pre.get('kind')!r})")
        require("nnunetv2", "nnunet", "nnU-Net weights")
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.plans_manager = PlansManager(copy.deepcopy(pre["plans"]))
        self.config = self.plans_manager.get_configuration(pre["configuration"])
        self.dataset_json = pre["dataset_json"]
        self.patch_size = tuple(int(p) for p in self.config.patch_size)

    def preprocess(
        self, channels: np.ndarray, spacing: tuple[float, float, float] | None, geometry=None
    ) -> tuple[np.ndarray, NnUNetContext]:
        """``(C, z, y, x)`` raw intensities -> ``(C, d, h, w)`` float32 network input."""
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import (
            DefaultPreprocessor,
        )

        if spacing is None:  # no geometry: take the image as already at the target spacing
            back = self.plans_manager.transpose_backward
            spacing = tuple(float(self.config.spacing[i]) for i in back)
        check_nnunet_grid(self, channels.shape, spacing)
        channels, n_bad = _finite(channels)
        props: dict[str, Any] = {"spacing": [float(s) for s in spacing]}
        data, _, props = DefaultPreprocessor(verbose=False).run_case_npy(
            channels, None, props, self.plans_manager, self.config, self.dataset_json
        )
        data = np.ascontiguousarray(data, dtype=np.float32)
        net_shape = tuple(int(s) for s in data.shape[1:])
        cropped = tuple(int(s) for s in props["shape_after_cropping_and_before_resampling"])
        # an image smaller than a window: zeros split evenly on both sides (nnU-Net's
        # pad_nd_image), so that the engine never pads it its own way
        short = [max(0, p - s) for p, s in zip(self.patch_size, net_shape, strict=True)]
        before = tuple(q // 2 for q in short)
        if any(short):
            data = np.pad(data, [(0, 0)] + [(b, q - b) for b, q in zip(before, short, strict=True)])
        ctx = NnUNetContext(
            props,
            net_shape,
            needs_resampling=net_shape != cropped,
            pad_before=before,  # type: ignore[arg-type]
            nonfinite_replaced=n_bad,
            resampled=net_shape != cropped,
        )
        return data, ctx

    def prepare_training(self, image: np.ndarray, labels: np.ndarray, mask, spacing):
        """One training pair as nnU-Net preprocesses it (image, labels with its
        segmentation resampling, the annotated ``mask`` carried along as one more label
        value); voxels outside the non-zero crop are background, as nnU-Net trains.

        A case thinner than the window along an axis is padded as :meth:`preprocess`
        pads it for prediction (zeros split evenly on both sides, unannotated), so that
        training sees it in the same layout as prediction: with instance normalisation
        the padding's values change every feature, and a network trained on another
        padding (e.g. the image minimum at the high end) does not carry over to
        prediction (measured on a 20-slice CT, 5 slices at the plan's spacing: liver
        Dice 0 after fine-tuning instead of about 0.4)."""
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import (
            DefaultPreprocessor,
        )

        channels, _ = _finite(image[None] if image.ndim == 3 else image)
        check_nnunet_grid(self, channels.shape, spacing, extra_channels=1)  # + labels
        seg = np.asarray(labels).astype(np.int32)
        marker = None
        if mask is not None:
            marker = int(seg.max()) + 1
            seg = np.where(mask, seg, marker)
        props: dict[str, Any] = {"spacing": [float(s) for s in spacing]}
        data, seg, _ = DefaultPreprocessor(verbose=False).run_case_npy(
            np.asarray(channels, np.float32), seg[None], props, self.plans_manager,
            self.config, self.dataset_json,
        )  # fmt: skip
        seg = np.asarray(seg[0], np.int32)
        seg[seg < 0] = 0
        out_mask = None
        if marker is not None:
            out_mask = seg != marker
            seg[~out_mask] = 0
        data = np.ascontiguousarray(data[0] if data.shape[0] == 1 else data, np.float32)
        short = [max(0, p - s) for p, s in zip(self.patch_size, seg.shape, strict=True)]
        if any(short):  # the layout of preprocess(): centred zeros, not annotated
            pads = [(q // 2, q - q // 2) for q in short]
            if out_mask is None:
                out_mask = np.ones(seg.shape, bool)
            out_mask = np.pad(out_mask, pads)
            seg = np.pad(seg, pads)
            data = np.pad(data, ([(0, 0)] if data.ndim == 4 else []) + pads)
        return data, seg.astype(np.uint16 if seg.max() > 255 else np.uint8), out_mask

    def needs_scores(self, ctx: NnUNetContext) -> bool:
        """Whether :meth:`restore` needs the blended logits (resampling back), not only
        the network-grid labels."""
        return ctx.needs_resampling

    def restore(
        self,
        ctx: NnUNetContext,
        *,
        labels: np.ndarray | None = None,
        probabilities: np.ndarray | None = None,
        scores: np.ndarray | None = None,
    ) -> tuple[np.ndarray, None]:
        """``(labels, None)``: labels on the input grid, from network-grid ``labels`` (when
        no resampling was needed) or network-grid blended logits ``scores`` (C, d, h, w);
        probabilities have no way back."""
        from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

        props = ctx.properties
        keep = tuple(
            slice(b, b + s) for b, s in zip(ctx.pad_before, ctx.network_shape, strict=True)
        )
        labels = None if labels is None else labels[keep]
        scores = None if scores is None else scores[(slice(None), *keep)]
        if ctx.needs_resampling:
            if scores is None:
                raise ValueError("resampling back to the input grid needs the blended logits")
            labels = self._resample_argmax(scores, props)
        elif labels is None:
            assert scores is not None
            labels = np.argmax(scores, axis=0)
        dtype = np.uint8 if len(self.dataset_json.get("labels", {})) < 256 else np.uint16
        full = np.zeros(props["shape_before_cropping"], dtype=dtype)
        full = insert_crop_into_image(
            full, labels.astype(dtype, copy=False), props["bbox_used_for_cropping"]
        )
        return np.ascontiguousarray(full.transpose(self.plans_manager.transpose_backward)), None

    def restore_uncertainty(self, ctx: NnUNetContext, uncertainty: np.ndarray) -> np.ndarray | None:
        """The way back for labels (transpose, crop) carries a uint8 map too; None when
        going back resamples (it needs logits)."""
        if self.needs_scores(ctx):
            return None
        return self.restore(ctx, labels=uncertainty)[0].astype(np.uint8, copy=False)

    def _resample_argmax(self, scores: np.ndarray, props: dict[str, Any]) -> np.ndarray:
        """nnU-Net's way back: resample the blended logits with the probabilities'
        resampling, then arg-max. Done one class at a time (nnU-Net's resampling treats
        channels independently) with a running arg-max, so no float32 ``C x D x H x W``
        array is held. ``scores`` are the engine's probabilities, the softmax of the
        blended logits; their logarithm differs from the logits by one value per voxel,
        the same for every class, and the resampling is linear with the same weights for
        every class, so the arg-max after resampling is that of the logits."""
        forward = self.plans_manager.transpose_forward
        target = [props["spacing"][i] for i in forward]
        shape = props["shape_after_cropping_and_before_resampling"]
        fn = self.config.resampling_fn_probabilities
        best = None
        labels = np.zeros(shape, dtype=np.uint16)
        for c in range(scores.shape[0]):
            log_p = np.log(np.maximum(np.asarray(scores[c : c + 1], np.float32), 1e-7))
            ch = fn(log_p, shape, self.config.spacing, target)[0]
            ch = np.asarray(ch, dtype=np.float32)
            if best is None:
                best = ch
            else:
                better = ch > best
                labels[better] = c
                best = np.where(better, ch, best)
        return labels
