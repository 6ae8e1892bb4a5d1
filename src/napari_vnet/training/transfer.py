"""Starting weights: from scratch, a base network with its output layer mapped onto the
new classes (classes known to both keep their channel's weights), or an interrupted run's
resume file (:func:`starting_point`, with the run's plan) (no Qt)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_vnet.models.card import ModelCard
from napari_vnet.training.config import TrainConfig, TrainingError
from napari_vnet.training.plan import TrainingPlan, plan_training

log = logging.getLogger(__name__)

__all__ = ["Start", "build_networks", "load_base", "starting_point"]


def _default_discriminator_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    widths = getattr(model, "arch_kwargs", {}).get("channels")
    return {"channels": list(widths)[:4]} if widths else {}


def _matching_channels(old_classes, new_classes) -> list[tuple[int, int]]:
    """(new channel, old channel) pairs for classes known to both cards: background to
    background, then by name (case-insensitive; liver stays liver even when the new labels
    number it 5 instead of 1), then by label value for classes whose names do not match."""
    old_by_name = {c.name.strip().lower(): i for i, c in enumerate(old_classes) if i}
    old_by_value = {c.value: i for i, c in enumerate(old_classes) if i}
    pairs, used = [(0, 0)], {0}
    for j, c in enumerate(new_classes):
        i = old_by_name.get(c.name.strip().lower()) if j else None
        if i is not None and i not in used:
            pairs.append((j, i))
            used.add(i)
    done = {j for j, _ in pairs}
    for j, c in enumerate(new_classes):
        i = old_by_value.get(c.value)
        if j and j not in done and i is not None and i not in used:
            pairs.append((j, i))
            used.add(i)
    return pairs


def _transfer_weights(new: torch.nn.Module, old_state: dict, old_classes, new_classes) -> list[str]:
    """Copy the base network's weights into ``new`` (built for ``new_classes``).

    The output layer (``head.*``, or any tensor whose first dimension is the class count
    and changed with it) is re-initialised, except the rows of classes both cards know
    (see :func:`_matching_channels`), which are copied into their new channel. Every
    other tensor is copied. Returns the names of the re-initialised tensors.
    """
    pairs = _matching_channels(old_classes, new_classes)
    n_old, n_new = len(old_classes), len(new_classes)
    state = new.state_dict()
    reinit = []
    for key, value in state.items():
        old = old_state.get(key)
        if old is None:
            reinit.append(key)
            continue
        is_output = (
            old.ndim == value.ndim
            and old.shape[1:] == value.shape[1:]
            and old.shape[0] == n_old
            and value.shape[0] == n_new
            and (key.startswith("head.") or old.shape != value.shape)
        )
        if is_output:
            reinit.append(key)
            fresh = value.clone()
            for j, i in pairs:
                fresh[j] = old[i]
            state[key] = fresh
        elif old.shape == value.shape:
            state[key] = old.to(value.dtype)
        else:
            reinit.append(key)
    new.load_state_dict(state)
    return reinit


def load_base(config: TrainConfig, base: Any):
    """-> (card, base_info, notes). ``base``: None (from scratch, ``config.arch``), a
    checkpoint path or shipped-weights name, or a ``(model, card)`` tuple."""
    notes: dict[str, Any] = {}
    if base is None:
        if not config.arch:
            raise TrainingError(
                "give an architecture (arch) to train from scratch, or base weights"
            )
        card = ModelCard(arch=config.arch, arch_kwargs=dict(config.arch_kwargs))
        notes["started_from"] = "scratch"
        return card, None, notes
    disc_state = disc_kwargs = None
    if isinstance(base, tuple):
        base_model, base_card = base
        notes["started_from"] = "in-memory model"
    else:
        from napari_vnet.models import load_checkpoint_state
        from napari_vnet.weights import load_weights, resolve_weights

        path = Path(base)
        if not path.exists():
            path = resolve_weights(str(base))
        base_model, base_card = load_weights(path, map_location="cpu")
        notes["started_from"] = path.name
        if base_card.arch == "vox2vox":
            disc_entry = load_checkpoint_state(path).get("discriminator") or {}
            disc_state = disc_entry.get("state_dict")
            disc_kwargs = disc_entry.get("kwargs")
    card = copy.deepcopy(base_card)
    card.history = {"base": dict(base_card.history)} if base_card.history else {}
    # the card describes the fine-tune; the base's own text and metrics move under "base"
    if base_card.description:
        card.history.setdefault("base", {})["description"] = base_card.description
    card.history.setdefault("base", {})["weights"] = notes["started_from"]
    card.description = (
        f"Fine-tuned with napari-vnet from {notes['started_from']} ({base_card.arch}); "
        "the base model's description and evaluation are under history.base."
    )
    return card, (base_model, base_card, disc_state, disc_kwargs), notes


def build_networks(card: ModelCard, base_info, classes, notes, config: TrainConfig):
    from napari_vnet.models import build_model

    disc = None
    if base_info is None:
        model = build_model(card)
    else:
        base_model, base_card, disc_state, disc_kwargs = base_info
        if classes is not None and [c.value for c in classes] != base_card.label_values:
            card.classes = classes
            model = build_model(card)
            reinit = _transfer_weights(model, base_model.state_dict(), base_card.classes, classes)
            notes["reinitialised_output_layer"] = True
            notes["reinitialised_tensors"] = reinit
            notes["previous_classes"] = [c.to_dict() for c in base_card.classes]
            notes["kept_classes"] = [
                f"{base_card.classes[i].name} (channel {i}) -> {classes[j].name} (channel {j})"
                for j, i in _matching_channels(base_card.classes, classes)
            ]
            disc_state = None  # its segmentation channels changed
        else:
            if classes is not None:  # same values, maybe new names
                card.classes = classes
            model = base_model
    if card.arch == "vox2vox":
        from napari_vnet.models import build_discriminator

        kwargs = dict(disc_kwargs) if base_info is not None and disc_kwargs else {}
        kwargs = kwargs or _default_discriminator_kwargs(model)
        disc = build_discriminator(card, **kwargs)
        if base_info is not None and disc_state is not None:
            try:
                disc.load_state_dict(disc_state)
            except (RuntimeError, KeyError) as exc:
                log.warning("base discriminator weights do not fit (%s); starting it fresh", exc)
    return model, disc


def _load_resume(path: Path) -> tuple[torch.nn.Module, ModelCard, dict, dict | None]:
    """(network, card, resume state, discriminator weights) of a resume file."""
    from napari_vnet.models import load_checkpoint_state
    from napari_vnet.weights import load_weights

    model, card = load_weights(path, map_location="cpu")
    state = load_checkpoint_state(path)
    extra = state.get("extra") or {}
    if "resume" not in extra:
        raise TrainingError(f"{path}: not a napari-vnet resume file (no resume state)")
    return model, card, extra["resume"], (state.get("discriminator") or {}).get("state_dict")


@dataclass
class Start:
    """The weights a run starts from: the card (a new model's, the base's or a resumed
    run's), the base network (None: from scratch; see :func:`load_base`), notes
    for the card's run history, and a resume file's network and state."""

    card: ModelCard
    base_info: tuple | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    model: torch.nn.Module | None = None
    resume_state: dict | None = None
    disc_state: dict | None = None


def starting_point(pairs, config: TrainConfig, base, rpath: Path) -> tuple[TrainingPlan, Start]:
    """The plan and the starting weights: a resume file's (``config.resume``), else the
    base's or a new model's, planned by :func:`~.plan.plan_training`."""
    if config.resume and rpath.exists():
        model, card, resume_state, disc_state = _load_resume(rpath)
        log.info("resuming %s at iteration %d", rpath, resume_state["iteration"])
        notes = dict(card.history.get("run", {}))
        start = Start(card, None, notes, model, resume_state, disc_state)
        return TrainingPlan.from_card(card, config, pairs), start
    if config.resume:
        log.warning("--resume: no resume file %s; starting a new run", rpath)
    card, base_info, notes = load_base(config, base)
    plan = plan_training(pairs, config, base_card=None if base_info is None else base_info[1])
    return plan, Start(card, base_info, notes)
