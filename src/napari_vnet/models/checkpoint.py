"""Self-describing checkpoints: weights + model card in one file, loaded without pickle code.

File layout (``torch.save`` of a dict holding only tensors and plain data)::

    {
      "napari_vnet_checkpoint": 1,          # format marker / version
      "card": {...},                        # ModelCard.to_dict(), JSON-compatible
      "state_dict": {name: tensor},         # the network (generator for Vox2Vox)
      "discriminator": None | {"kwargs": {...}, "state_dict": {...}},
      "extra": None | {...},                # e.g. optimizer state, iteration (for resume)
      "saved_with": {"napari_vnet": "0.1.0", "torch": "2.x"},
    }

Loading uses ``torch.load(weights_only=True)``: PyTorch's restricted unpickler that
refuses every Python object other than tensors and plain containers, so a weights file
never runs code. Every problem is raised as :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_vnet.models.card import ModelCard, card_problems
from napari_vnet.models.errors import CheckpointError, InvalidCardError
from napari_vnet.models.registry import (
    UnknownArchitectureError,
    architecture_class,
    build_discriminator,
    build_model,
)

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
MARKER = "napari_vnet_checkpoint"

_WRAP_HINT = (
    "a MONAI network's weights: `napari-vnet import-weights FILE --arch monai.VNet "
    "--classes ... --out NEW.pt`; an nnU-Net v2 model: pass its trained-model folder; "
    "one of napari-vnet's networks: `model = build_model(ModelCard(arch=..., classes=...)); "
    "model.load_state_dict(torch.load(old, weights_only=True)); "
    "save_checkpoint(model, card, new)`"
)


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside DistributedDataParallel / DataParallel / torch.compile."""
    for _ in range(4):
        compiled = getattr(model, "_orig_mod", None)  # torch.compile's wrapper
        if isinstance(compiled, nn.Module):
            model = compiled
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            break
    return model


def _plain_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _json_card(card: ModelCard) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(card.to_dict()))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model card is not JSON-compatible: {exc}") from None


_PLAIN_SCALARS = (str, int, float, bool, type(None), torch.dtype, torch.Size, torch.device)


def _check_plain(obj: Any, where: str) -> None:
    """Raise ValueError when ``obj`` holds anything ``torch.load(weights_only=True)``
    would refuse (so a checkpoint is never written that cannot be read back)."""
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise ValueError(f"{where} has a key of type {type(key).__name__}: {key!r}")
            _check_plain(value, f"{where}[{key!r}]")
    elif type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    elif type(obj) not in _PLAIN_SCALARS and not isinstance(obj, torch.Tensor):
        raise ValueError(
            f"{where} is a {type(obj).__module__}.{type(obj).__name__}; checkpoints hold "
            "only tensors and plain Python data (dict, list, tuple, str, int, float, bool, "
            "None) - convert it (e.g. float(x), x.tolist())"
        )


def _complete_card(card: ModelCard, net: nn.Module) -> ModelCard:
    """The card with every constructor keyword of ``net`` written out, so the checkpoint
    rebuilds the same network even if a default changes in a later version."""
    built = getattr(net, "arch_kwargs", None)
    if not isinstance(built, dict):
        return card
    given = json.loads(json.dumps(card.arch_kwargs, default=list))
    built = json.loads(json.dumps(built))
    for key, value in given.items():
        if key in built and built[key] != value:
            raise ValueError(
                f"model card arch_kwargs {key}={value!r} but the model was built with "
                f"{key}={built[key]!r}"
            )
    return dataclasses.replace(card, arch_kwargs={**given, **built})


def save_checkpoint(
    model: nn.Module,
    card: ModelCard,
    path: str | os.PathLike,
    discriminator: nn.Module | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (+ optional Vox2Vox discriminator and ``extra`` plain data, e.g.
    optimizer state) with its ``card`` to ``path`` atomically (temp file in the same
    folder, then rename). Creates the folder. Returns the path.

    Raises ValueError when the card does not describe the model (architecture, channels).
    ``extra`` must hold only tensors and plain Python data (dict/list/str/number/None).
    """
    path = Path(path)
    net = _unwrap(model)
    try:
        expected = architecture_class(card.arch)
    except UnknownArchitectureError as exc:
        raise ValueError(f"model card {exc}") from None
    if type(net) is not expected:
        raise ValueError(
            f"model card says {card.arch!r} ({expected.__name__}) but the model is a "
            f"{type(net).__name__}"
        )
    for attr, want in (("in_channels", card.in_channels), ("out_channels", card.out_channels)):
        got = getattr(net, attr, want)
        if got != want:
            raise ValueError(
                f"model has {attr}={got} but the card says {want}"
                + (" (one class per output channel)" if attr == "out_channels" else "")
            )
    card = _complete_card(card, net)
    problems = card_problems(card)
    if problems:  # a card nothing may be built from is never passed on in a new file
        raise ValueError(f"{path}: the model card cannot be saved: " + "; ".join(problems))
    if extra is not None:
        if not isinstance(extra, dict):
            raise ValueError(f"extra must be a dict, got {type(extra).__name__}")
        _check_plain(extra, "extra")
    state: dict[str, Any] = {
        MARKER: CHECKPOINT_FORMAT,
        "card": _json_card(card),
        "state_dict": _plain_state(net),
        "discriminator": None,
        "extra": extra,
        "saved_with": {"napari_vnet": _version(), "torch": str(torch.__version__)},
    }
    if discriminator is not None:
        disc = _unwrap(discriminator)
        state["discriminator"] = {
            "kwargs": dict(getattr(disc, "arch_kwargs", {})),
            "state_dict": _plain_state(disc),
        }
    from napari_vnet._atomic import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)

    try:
        atomic_write(path, write)
    except BaseException as exc:
        # disk full, read-only...: say which file (torch's zip writer may have replaced
        # the OSError by a RuntimeError about stream positions; the OSError is its context)
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, OSError):
            raise _save_error(cause, path) from exc
        raise
    logger.info("saved %s checkpoint to %s", card.arch, path)
    return path


def _save_error(exc: OSError, path: Path) -> OSError:
    """The same kind of OSError (errno kept), naming the checkpoint that was not saved;
    any previous file at ``path`` is untouched."""
    reason = exc.strerror or str(exc)
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        reason = f"{parent} is a file, not a folder"
    return OSError(
        exc.errno, f"cannot save the checkpoint ({reason}); nothing was changed", str(path)
    )


def _version() -> str:
    from napari_vnet import __version__

    return __version__


def _check_archive_memory(path: Path, mmap: bool) -> None:
    """Refuse a checkpoint whose tensors (their sizes read from the zip directory, before
    torch.load) do not fit in the available memory: a small deflated archive can unpack
    to gigabytes. With ``mmap`` stored (uncompressed) tensors are mapped, not allocated."""
    import zipfile

    from napari_vnet.io.memory import human_bytes, memory_problem

    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load words the damage
    total = sum(
        i.file_size for i in infos if not (mmap and i.compress_type == zipfile.ZIP_STORED)
    )
    problem = memory_problem(total, f"unpacking its {len(infos)} records")
    if problem:
        packed = sum(i.compress_size for i in infos)
        raise CheckpointError(
            f"{path}: {problem} (the file holds {human_bytes(packed)} that unpack to "
            f"{human_bytes(sum(i.file_size for i in infos))})"
        )


def _read(path: Path, map_location: Any, mmap: bool = False) -> Any:
    """torch.load(weights_only=True) with every failure turned into a CheckpointError."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a weights file")
    if not path.is_file():  # a FIFO, socket or device: opening it may block forever
        raise CheckpointError(f"{path}: not a regular file, not a weights file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise CheckpointError(f"{path}: the file is empty")
    if head == b"PK\x03\x04":
        _check_archive_memory(path, mmap)
    try:
        zipped = head == b"PK\x03\x04"  # mmap needs torch's zip format
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and zipped)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        culprit = _unsupported_global(text)
        if culprit:
            raise CheckpointError(
                f"{path}: refused to load: the file contains pickled Python objects "
                f"({culprit}) rather than plain tensors, and loading them could run code. "
                "napari-vnet only loads weights saved with save_checkpoint (or `napari-vnet "
                "train`); if you trust the file, load it yourself and re-save the network's "
                "state_dict with save_checkpoint"
            ) from None
        if head == b"PK\x03\x04":
            raise CheckpointError(
                f"{path}: corrupted PyTorch checkpoint (its pickled data cannot be read)"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (unreadable data)") from None
    except Exception as exc:  # untrusted bytes can fail anywhere inside the unpickler
        if head == b"PK\x03\x04":
            raise CheckpointError(
                f"{path}: truncated or corrupted PyTorch checkpoint ({_short(str(exc))}); "
                "was it copied or downloaded completely?"
            ) from None
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint ({type(exc).__name__}: {_short(str(exc))})"
        ) from None


def _short(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "unreadable"
    return line if len(line) <= 160 else line[:157] + "..."


def _unsupported_global(text: str) -> str:
    """'GLOBAL builtins.exec' from PyTorch's message, or ''."""
    # torch < 2.9: "Unsupported global: GLOBAL x.y"; later: "unsupported GLOBAL x.y whose module"
    match = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
    return f"GLOBAL {match.group(1)}" if match else ""


def _looks_like_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def load_checkpoint_state(
    path: str | os.PathLike, map_location: Any = None, *, mmap: bool = False
) -> dict[str, Any]:
    """The raw checkpoint dict (card as a plain dict, state dicts, discriminator, extra),
    checked to be a napari-vnet checkpoint. Never runs code from the file. ``mmap``
    maps tensor data instead of reading it (fast when only the card is needed)."""
    path = Path(path)
    obj = _read(path, map_location, mmap)
    if isinstance(obj, dict) and MARKER in obj and "card" in obj:
        version = obj[MARKER]
        if not isinstance(version, int) or version > CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{path}: checkpoint format {version!r} is newer than this napari-vnet "
                f"understands ({CHECKPOINT_FORMAT}); upgrade napari-vnet"
            )
        if not _looks_like_state_dict(obj.get("state_dict")):
            raise CheckpointError(f"{path}: napari-vnet checkpoint without network weights")
        return obj
    if _looks_like_state_dict(obj):
        raise CheckpointError(
            f"{path}: a bare state_dict ({len(obj)} tensors) without a model card, so "
            f"napari-vnet cannot tell which network it belongs to; {_WRAP_HINT}"
        )
    if isinstance(obj, dict):
        inner = next(
            (k for k in ("state_dict", "model_state_dict", "model", "net") if k in obj), None
        )
        if inner is not None and _looks_like_state_dict(obj[inner]):
            raise CheckpointError(
                f"{path}: a checkpoint of another program (weights under {inner!r}, keys "
                f"{sorted(map(str, obj))[:6]}) without a napari-vnet model card; {_WRAP_HINT}"
            )
        raise CheckpointError(
            f"{path}: not a napari-vnet checkpoint (a dict with keys {sorted(map(str, obj))[:8]})"
        )
    raise CheckpointError(
        f"{path}: not a napari-vnet checkpoint (holds a {type(obj).__name__}, expected a dict)"
    )


def read_card(path: str | os.PathLike) -> ModelCard:
    """Only the model card of a checkpoint (no network is built; the tensor data is
    memory-mapped, not read, so this is fast even for large files). A folder of foreign
    weights is read by :func:`napari_vnet.weights.read_weights_card`."""
    state = load_checkpoint_state(path, map_location="cpu", mmap=True)
    return card_from_dict(Path(path), state.get("card"))


def card_from_dict(path: Path, data: Any) -> ModelCard:
    """The card stored as ``data`` in the file ``path``, refused (InvalidCardError naming
    the file) when :func:`~napari_vnet.models.card.card_problems` finds anything: nothing
    is built from a card that is unusable or names code to run."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: invalid model card: not an object")
    try:
        card = ModelCard.from_dict(data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{path}: invalid model card: {exc}") from None
    problems = card_problems(card)
    if problems:
        raise InvalidCardError(path, problems)
    return card


def fit_weights(path: Path, what: str, module: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load ``weights`` into ``module``; one-line CheckpointError when they do not fit."""
    parts = misfit(module.state_dict(), weights, "card")
    if parts:
        raise CheckpointError(
            f"{path}: the weights do not fit the {what} described by the model card: "
            + "; ".join(parts)
        )
    module.load_state_dict(weights)


def misfit(own: dict[str, torch.Tensor], weights: dict[str, Any], against: str) -> list[str]:
    """Why ``weights`` (a file's state dict) do not fit a network whose state dict is
    ``own``: missing, unexpected and reshaped entries, the first of each named (shapes
    said as "file ... vs ``against`` ..."); empty when they fit."""
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [
        (k, tuple(weights[k].shape), tuple(own[k].shape))
        for k in own
        if k in weights and weights[k].shape != own[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (first {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]!r})")
    if shapes:
        k, got, want = shapes[0]
        parts.append(f"{len(shapes)} of another shape (first {k!r}: file {got} vs {against} {want})")
    return parts


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = None
) -> tuple[nn.Module, ModelCard]:
    """Rebuild the network from the card in ``path`` and load its weights.

    Returns ``(model, card)`` with the model in eval mode on ``map_location`` (CPU by
    default). Raises CheckpointError naming the file and the problem. Weights that may be
    a file or a folder (nnU-Net v2 trained model, MONAI bundle) are loaded by
    :func:`napari_vnet.weights.load_weights`.
    """
    path = Path(path)
    state = load_checkpoint_state(path, map_location="cpu")
    card = card_from_dict(path, state.get("card"))
    weights = state["state_dict"]
    head = weights.get("head.bias")
    if head is not None and head.ndim == 1 and head.shape[0] != card.out_channels:
        raise CheckpointError(
            f"{path}: the model card lists {card.out_channels} classes "
            f"({', '.join(c.name for c in card.classes)}) but the network's output layer has "
            f"{head.shape[0]} channels"
        )
    try:
        model = build_model(card)
    except UnknownArchitectureError as exc:
        raise CheckpointError(f"{path}: {exc}; is napari-vnet up to date?") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: the model card cannot be built: {exc}") from None
    fit_weights(path, f"{card.arch} network", model, weights)
    if map_location is not None:
        model = model.to(map_location)
    model.eval()
    return model, card


def load_discriminator(path: str | os.PathLike, map_location: Any = None) -> nn.Module | None:
    """The Vox2Vox discriminator saved in ``path`` (train mode), or None if there is none."""
    path = Path(path)
    state = load_checkpoint_state(path, map_location="cpu")
    disc = state.get("discriminator")
    if not disc:
        return None
    card = card_from_dict(path, state.get("card"))
    try:
        net = build_discriminator(card, **dict(disc.get("kwargs", {})))
    except ValueError as exc:
        raise CheckpointError(f"{path}: the discriminator cannot be built: {exc}") from None
    fit_weights(path, "discriminator", net, disc.get("state_dict", {}))
    return net if map_location is None else net.to(map_location)
