"""`napari-vnet info WEIGHTS [--json]`: print the model card of a weights file.

WEIGHTS is a path or the name of shipped weights (``vnet-phantom``...). The weights are
loaded (safely, never running code from the file) and checked against the card, so a
broken file is reported here rather than at prediction time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "print the model card of a weights file (--json for machines)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "weights",
        metavar="WEIGHTS",
        help="a checkpoint file (.pt) or the name of shipped weights, e.g. vnet-phantom",
    )
    parser.add_argument("--json", action="store_true", help="print the card as JSON")


def describe_normalization(norm: dict[str, Any]) -> str:
    """One line saying how raw intensities become network input."""
    kind = norm.get("kind")
    if kind == "window":
        return (
            f"window [{norm.get('low')}, {norm.get('high')}] "
            "(clip, then scale to [0, 1]; CT values in HU)"
        )
    if kind == "zscore":
        return "z-score (subtract the volume's mean, divide by its standard deviation)"
    if kind == "percentile":
        return (
            f"percentiles [{norm.get('low')}, {norm.get('high')}] of the volume "
            "(clip, then scale to [0, 1])"
        )
    if kind == "ct":
        return (
            f"CT: clip to [{norm.get('low'):.6g}, {norm.get('high'):.6g}], subtract "
            f"{norm.get('mean'):.6g}, divide by {norm.get('std'):.6g} (training foreground)"
        )
    return json.dumps(norm)


def _nnunet_channel(scheme: str, props: dict[str, Any]) -> str:
    if scheme == "CTNormalization" and props:
        return (
            f"CTNormalization: clip to [{props.get('percentile_00_5', 0):.6g}, "
            f"{props.get('percentile_99_5', 0):.6g}], subtract {props.get('mean', 0):.6g}, "
            f"divide by {props.get('std', 1):.6g} (training foreground)"
        )
    if scheme == "ZScoreNormalization":
        return "ZScoreNormalization: subtract the case's mean, divide by its standard deviation"
    return scheme


def describe_preprocessing(card: dict[str, Any]) -> str | None:
    """How foreign weights' own preprocessing turns a scan into network input (the
    card's ``normalization`` is then ``none``: nothing is applied before it), or None."""
    pre = card.get("preprocessing") or {}
    kind = pre.get("kind")
    if kind == "nnunet":
        plans = pre.get("plans") or {}
        cfg = (plans.get("configurations") or {}).get(pre.get("configuration"), {})
        props = plans.get("foreground_intensity_properties_per_channel") or {}
        schemes = cfg.get("normalization_schemes") or []
        parts = [
            _nnunet_channel(str(sch), props.get(str(i)) or {}) for i, sch in enumerate(schemes)
        ]
        spacing = cfg.get("spacing")
        where = f" to {' x '.join(f'{v:.4g}' for v in spacing)} mm" if spacing else ""
        return (
            f"nnU-Net's own ({pre.get('configuration')}): crop to non-zero, "
            + "; ".join(parts or ["no normalization scheme listed"])
            + f"; resample{where} ({cfg.get('resampling_fn_data', 'default')})"
        )
    if kind == "monai_bundle":
        names = [str(t.get("name", "?")) for t in pre.get("transforms") or []]
        return "the MONAI bundle's own: " + (", ".join(names) or "no transforms")
    return None


def _summary(value: Any, limit: int = 160) -> str:
    """A history entry in one short line: small values as they are, long lists and
    nested records summarised (``--json`` prints them whole)."""
    text = _value(value)
    if len(text) <= limit:
        return text
    if isinstance(value, list):
        nums = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(nums) == len(value) and nums:
            return (
                f"{len(nums)} values, first {_value(nums[0])}, last {_value(nums[-1])}, "
                f"min {_value(min(nums))}, max {_value(max(nums))}"
            )
        return f"{len(value)} entries"
    if isinstance(value, dict):
        keys = list(value)
        shown = ", ".join(map(str, keys[:6])) + (", ..." if len(keys) > 6 else "")
        return f"{{{len(keys)} entries: {shown}}}"
    return text[: limit - 3] + "..."


def _color(color: Any) -> str:
    if not color:
        return ""
    r, g, b = (round(float(c) * 255) for c in color[:3])
    return f" #{r:02x}{g:02x}{b:02x}"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def _arch_name(card, display_name) -> str:
    foreign = {"nnunet": "nnU-Net v2", "monai": "MONAI bundle"}
    if card.arch not in foreign:
        return display_name(card.arch)
    kw = card.arch_kwargs or {}
    network = str(kw.get("network_class_name") or kw.get("name") or "").rsplit(".", 1)[-1]
    return f"{foreign[card.arch]} {network}".strip()


def gather(weights: str) -> dict[str, Any]:
    """Everything `info` reports, as JSON-compatible data (raises CheckpointError)."""
    from napari_vnet.models import (
        count_parameters,
        display_name,
        load_checkpoint_state,
        load_discriminator,
    )
    from napari_vnet.weights import load_weights, resolve_weights

    path = resolve_weights(weights)
    folder = Path(path).is_dir()  # foreign weights (nnU-Net / MONAI bundle folder)
    state = {} if folder else load_checkpoint_state(path, map_location="cpu")
    model, card = load_weights(path, map_location="cpu")
    disc = load_discriminator(path) if state.get("discriminator") else None
    extra = state.get("extra")
    files = [p for p in Path(path).rglob("*") if p.is_file()] if folder else [Path(path)]
    return {
        "path": str(Path(path).resolve()),
        "file_bytes": sum(p.stat().st_size for p in files),
        "origin": card.origin(),
        "architecture": _arch_name(card, display_name),
        "parameters": count_parameters(model),
        "discriminator_parameters": None if disc is None else count_parameters(disc),
        "extra_keys": sorted(map(str, extra)) if isinstance(extra, dict) else [],
        "saved_with": state.get("saved_with", {}),
        "card": card.to_dict(),
    }


def format_text(info: dict[str, Any]) -> str:
    card = info["card"]
    kwargs = ", ".join(f"{k}={_value(v)}" for k, v in card["arch_kwargs"].items())
    if len(kwargs) > 300:  # a foreign plan's architecture: the card (--json) has it all
        kwargs = kwargs[:297] + "..."
    lines = [
        f"weights:       {info['path']} ({info['file_bytes'] / 1e6:.1f} MB)",
        f"architecture:  {info['architecture']} ({card['arch']}){f'  {kwargs}' if kwargs else ''}",
        f"parameters:    {info['parameters']:,}",
    ]
    if info["discriminator_parameters"] is not None:
        lines.append(
            f"discriminator: {info['discriminator_parameters']:,} parameters (for training)"
        )
    lines.append(f"input:         {card['in_channels']} channel(s)")
    own = describe_preprocessing(card) if card["normalization"].get("kind") == "none" else None
    lines.append(f"normalization: {own or describe_normalization(card['normalization'])}")
    spacing = card["spacing"]
    lines.append(
        "spacing:       "
        + (
            "not recorded"
            if spacing is None
            else " x ".join(f"{s:g}" for s in spacing) + " mm (z, y, x)"
        )
    )
    lines.append("patch size:    " + " x ".join(str(p) for p in card["patch_size"]) + " (z, y, x)")
    lines.append(f"classes:       {len(card['classes'])} (output channel: label value name)")
    for i, c in enumerate(card["classes"]):
        lines.append(f"  {i}: {c['value']:>3} {c['name']}{_color(c['color'])}")
    history = card["history"]
    lines.append("history:       " + ("none recorded" if not history else ""))
    for key, value in history.items():
        lines.append(f"  {key}: {_summary(value)}")
    if any(_summary(v) != _value(v) for v in history.values()):
        lines.append("  (summarised; the whole history: --json)")
    if card["description"]:
        lines.append(f"description:   {card['description']}")
    if info.get("origin"):
        lines.append(f"origin:        {info['origin']}")
    if info["extra_keys"]:
        lines.append(f"resume state:  {', '.join(info['extra_keys'])}")
    saved = info["saved_with"]
    if saved:
        lines.append("saved with:    " + ", ".join(f"{k} {v}" for k, v in saved.items()))
    lines.append(f"card format:   {card['format_version']}")
    return "\n".join(line.rstrip() for line in lines)


def run(args: argparse.Namespace) -> int:
    from napari_vnet.models import CheckpointError
    from napari_vnet.models.errors import InvalidCardError

    try:
        info = gather(args.weights)
    except InvalidCardError as exc:  # what predict would refuse: one line per problem
        for line in exc.lines():
            print(f"napari-vnet info: error: {line}", file=sys.stderr)
        return 1
    except CheckpointError as exc:
        print(f"napari-vnet info: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_text(info))
    from napari_vnet.models.card import ModelCard, card_problems

    problems = card_problems(ModelCard.from_dict(info["card"]))
    for problem in problems:  # the same refusal predict would give, said before anyone runs it
        print(f"napari-vnet info: error: {args.weights}: {problem}", file=sys.stderr)
    return 1 if problems else 0
