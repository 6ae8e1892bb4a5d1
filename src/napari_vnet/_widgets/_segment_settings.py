"""The run settings of the Segment dock: device, overlap, batch size, mixed precision,
test-time augmentation, uncertainty layer and post-processing.

:class:`RunSettings` builds their widgets (the dock shows them in its collapsed "Settings"
group) and turns them into :func:`napari_vnet.inference.predict` keyword arguments.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label

AMP_CHOICES = [
    ("auto (fast where exact enough)", "auto"),
    ("off (float32)", False),
    ("bfloat16", "bf16"),
    ("float16", "fp16"),
]
POSTPROCESS_TIPS = {
    "largest_component": "Removes every piece of a class but the largest: right for single "
    "organs (liver, spleen), wrong for paired or repeated ones (kidneys, vertebrae).",
    "fill_holes": "Fills background cavities fully enclosed by one class with that class.",
}
BATCH_CHOICES = [("auto", None)] + [(str(n), n) for n in (1, 2, 4, 8, 16)]
POSTPROCESS = {
    "largest_component": "Keep the largest component of each class",
    "fill_holes": "Fill holes",
}


def available_devices() -> list[tuple[str, str]]:
    """(label, value) of the devices this machine has; "auto" first."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    auto = "cuda" if "cuda" in found else ("mps" if "mps" in found else "cpu")
    return [(f"auto ({auto})", "auto")] + [(d, d) for d in found]


class RunSettings:
    """The settings widgets, in one magicgui :class:`Container` (``native``)."""

    def __init__(self, devices: list[tuple[str, str]]):
        self.device = ComboBox(label="Device", choices=devices)
        self.overlap = FloatSpinBox(
            label="Overlap",
            value=0.5,
            min=0.0,
            max=0.9,
            step=0.05,
            tooltip="Fraction of a patch shared by neighbouring windows (more = smoother, slower)",
        )
        self.batch_size = ComboBox(
            label="Batch size",
            choices=BATCH_CHOICES,
            tooltip="Windows per forward pass; auto = 1 on CPU, from free memory on a GPU",
        )
        self.amp = ComboBox(
            label="Mixed precision",
            choices=AMP_CHOICES,
            tooltip="auto: bf16/fp16 on CUDA, bf16 on CPUs with native bf16, else float32",
        )
        self.tta = CheckBox(text="Test-time augmentation (8 flips, 8× slower)", value=False)
        self.producer = Label(value="")  # foreign weights: their own tool's defaults
        self.producer.visible = False
        self.uncertainty = CheckBox(
            text="Uncertainty layer",
            value=False,
            tooltip="Also show where the model is unsure (entropy of its class "
            "probabilities, one byte a voxel); the Correct dock jumps to the most "
            "uncertain slices",
        )
        self.post = {
            op: CheckBox(text=text, value=False, tooltip=POSTPROCESS_TIPS[op])
            for op, text in POSTPROCESS.items()
        }
        self.container = Container(
            widgets=[
                self.device,
                self.overlap,
                self.batch_size,
                self.amp,
                self.tta,
                self.producer,
                self.uncertainty,
                *self.post.values(),
            ]
        )

    @property
    def native(self):
        return self.container.native

    @property
    def enabled(self) -> bool:
        return self.container.enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self.container.enabled = value

    def values(self) -> dict[str, Any]:
        """The settings as :func:`napari_vnet.inference.predict` keyword arguments."""
        settings = {
            "device": self.device.value,
            "overlap": float(self.overlap.value),
            "batch_size": self.batch_size.value,
            "amp": self.amp.value,
            "tta": bool(self.tta.value),
            "postprocess": [op for op, box in self.post.items() if box.value] or None,
        }
        if self.uncertainty.value:
            settings["return_uncertainty"] = True
        return settings

    def apply(self, recommended: dict[str, Any]) -> None:
        """Show ``recommended`` settings
        (:func:`napari_vnet.workflows.segment.recommended_settings`)."""
        self.overlap.value = recommended["overlap"]
        self.tta.value = recommended["tta"]
        if "amp" in recommended:
            self.amp.value = recommended["amp"]
        note = recommended.get("producer", "")
        self.producer.value = note  # e.g. "nnU-Net default: mirroring on (8x slower), float32"
        self.producer.tooltip = (
            "What the weights' own tool does by default; turn test-time augmentation off "
            "or choose mixed precision for speed" if note else ""
        )
        self.producer.visible = bool(note)
        for op, box in self.post.items():
            box.value = op in recommended["postprocess"]
