"""Model section of the "Segment volume" dock: architecture, weights chooser, model card.

Choosing weights reads the checkpoint's model card (no network is built), shows it and
sets the architecture from it. Choosing an architecture that does not match the chosen
weights is refused: the panel says so and :attr:`WeightsPanel.problem` is set, which the
dock uses to disable Run.
"""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, LineEdit, PushButton
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QFileDialog, QLabel, QVBoxLayout, QWidget

from napari_vnet._widgets import _session
from napari_vnet._widgets._compact import compact_combo, elide_middle, path_label
from napari_vnet._widgets._result_layer import class_colors
from napari_vnet.models.names import DISPLAY_NAMES

if TYPE_CHECKING:
    from napari_vnet.models import ModelCard

log = logging.getLogger(__name__)

#: networks of other programs (napari_vnet.foreign): chosen by their weights only
FOREIGN_NAMES = {"nnunet": "nnU-Net v2", "monai": "MONAI"}
WEIGHTS_FILTER = "PyTorch checkpoints (*.pt *.pth *.ckpt);;All files (*)"
_NO_WEIGHTS = "(no weights chosen)"
#: an nnU-Net folder's checkpoint choice (file name in each fold; None: final, else best)
NNUNET_CHECKPOINTS = [
    ("final (else best)", None),
    ("final", "checkpoint_final.pth"),
    ("best", "checkpoint_best.pth"),
]


def arch_name(arch: str) -> str:
    return DISPLAY_NAMES.get(arch) or FOREIGN_NAMES.get(arch, arch)


def _network_of(card: ModelCard) -> str:
    kw = card.arch_kwargs or {}
    short = str(kw.get("network_class_name") or kw.get("name") or card.arch)
    return short.rsplit(".", 1)[-1]


def shipped() -> dict[str, Path]:
    """Shipped weights by name ({} when they cannot be listed: a broken install)."""
    from napari_vnet.weights import shipped_weights

    try:
        return dict(shipped_weights())
    except Exception as exc:  # a broken install must not break the dock
        log.warning("could not list the shipped weights: %s", exc)
        return {}


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A shipped weights name or a path -> the file or folder (CheckpointError if neither)."""
    from napari_vnet.weights import resolve_weights

    return Path(resolve_weights(name_or_path))


_CARD_CACHE: dict[tuple[str, int, int], ModelCard] = {}


def read_card_cached(path: Path) -> ModelCard:
    """The model card of ``path`` (cached by path, size and modification time)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    card = _CARD_CACHE.get(key)
    if card is None:
        from napari_vnet.weights import read_weights_card

        card = read_weights_card(path)
        if len(_CARD_CACHE) > 32:
            _CARD_CACHE.clear()
        _CARD_CACHE[key] = card
    return card


def _fmt_triplet(values) -> str:
    return " × ".join(f"{float(v):.3g}" for v in values)


def _fmt_normalization(norm: dict) -> str:
    kind = norm.get("kind", "?")
    if kind == "window":
        return f"window {norm.get('low', '?'):g} … {norm.get('high', '?'):g}, scaled to [0, 1]"
    if kind == "percentile":
        return f"percentiles {norm.get('low', '?'):g} … {norm.get('high', '?'):g}, scaled to [0, 1]"
    if kind == "zscore":
        return "z-score (per-volume mean / std)"
    if kind == "ct":
        return (
            f"CT: clip {norm.get('low', 0):.4g} … {norm.get('high', 0):.4g}, "
            f"mean {norm.get('mean', 0):.4g}, std {norm.get('std', 1):.4g} (training foreground)"
        )
    rest = ", ".join(f"{k}={v}" for k, v in norm.items() if k != "kind")
    return f"{kind} ({rest})" if rest else str(kind)


def _swatch(color) -> str:
    if color is None:
        return ""
    r, g, b = (int(round(255 * float(c))) for c in color[:3])
    return f'<span style="color: rgb({r},{g},{b})">■</span> '


def _first_sentence(text: str, limit: int = 140) -> str:
    """The description's first sentence (the full text is in the tooltip)."""
    text = " ".join(text.split())
    cut = text.find(". ")
    if 0 < cut < limit:
        return text[: cut + 1] + " …"
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:(") + " …"


def card_html(card: ModelCard, path: Path | None) -> str:
    """The model card as short rich text for the dock."""
    esc = html.escape
    lines = []
    title = esc(path.name) if path is not None else "model"
    lines.append(f"<b>{title}</b> — {esc(arch_name(card.arch))}")
    origin = card.origin() if hasattr(card, "origin") else ""
    if origin:
        lines.append(f"<b>From:</b> {esc(origin)}")
    if card.description:
        lines.append(f"<i>{esc(_first_sentence(card.description))}</i>")
    colors = class_colors(card)  # the colours the result layer will use
    classes = ", ".join(
        f"{_swatch(colors.get(c.value) if c.value else None)}{esc(c.name)} ({c.value})"
        for c in card.classes
    )
    lines.append(f"<b>Classes:</b> {classes}")
    spacing = f"{_fmt_triplet(card.spacing)} mm (z × y × x)" if card.spacing else "image's own"
    lines.append(f"<b>Spacing:</b> {spacing}; <b>patch:</b> {_fmt_triplet(card.patch_size)}")
    producer = (getattr(card, "preprocessing", None) or {}).get("kind")
    if producer:
        who = {"nnunet": "nnU-Net", "monai_bundle": "the bundle"}.get(producer, producer)
        lines.append(f"<b>Preprocessing:</b> {esc(who)}'s own (exactly as it was trained)")
    else:
        lines.append(f"<b>Normalisation:</b> {esc(_fmt_normalization(card.normalization))}")
    hist = card.history or {}
    trained = []
    for key in ("iterations", "epochs"):
        if key in hist:
            trained.append(f"{hist[key]} {key}")
    dice = hist.get("val_dice", hist.get("dice"))
    if isinstance(dice, int | float):
        trained.append(f"val. Dice {dice:.3f}")
    evaluation = hist.get("evaluation")
    if isinstance(evaluation, dict) and isinstance(
        evaluation.get("mean_foreground_dice"), int | float
    ):
        cases = evaluation.get("cases")
        on = f" on {cases} unseen cases" if cases else " on unseen data"
        trained.append(f"mean Dice {evaluation['mean_foreground_dice']:.3f}{on}")
    if trained:
        lines.append(f"<b>Training:</b> {esc(', '.join(trained))}")
    return "<br>".join(lines)


class WeightsPanel(QWidget):
    """Architecture combo, weights combo (shipped + recent) with a file dialog, card view.

    Signal ``changed`` fires whenever the chosen weights, their card, or the architecture
    change (also when the combination becomes invalid).
    """

    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.card: ModelCard | None = None
        self.problem: str | None = "Choose model weights."
        self._weights: Path | None = None
        self._updating = False
        self._nnunet_folder = False  # an nnU-Net folder is chosen (folds, checkpoint shown)
        self.auto_chosen = False  # True while the choice is the dock's own default

        self.arch = ComboBox(
            label="Architecture",
            choices=[(v, k) for k, v in {**DISPLAY_NAMES, **FOREIGN_NAMES}.items()],
            tooltip="Network type. Choosing weights sets it from their model card.",
        )
        self.weights = ComboBox(
            label="Weights",
            choices=self._choices,
            tooltip="Shipped models first, then recently used files.",
        )
        compact_combo(self.weights.native)
        self.weights.native.currentIndexChanged.connect(self._combo_tip)
        self.browse = PushButton(text="Browse…", tooltip="Open a checkpoint file (.pt)")
        self.browse_folder = PushButton(
            text="Folder…",
            tooltip="Open an nnU-Net v2 trained-model folder or a MONAI bundle folder",
        )
        row = Container(
            widgets=[self.weights, self.browse, self.browse_folder],
            layout="horizontal",
            labels=False,
            label="Weights",
        )
        row.margins = (0, 0, 0, 0)
        self.folds = LineEdit(
            label="Folds",
            value="",
            tooltip="nnU-Net folds to ensemble, e.g. 0 1 2 (empty: every fold present)",
        )
        self.checkpoint = ComboBox(
            label="Checkpoint",
            choices=NNUNET_CHECKPOINTS,
            tooltip="The checkpoint of each fold nnU-Net saved: final or best (on validation)",
        )
        self._form = Container(widgets=[self.arch, row, self.folds, self.checkpoint])
        self._form.margins = (0, 0, 0, 0)
        self.info = QLabel()
        self.info.setWordWrap(True)
        self.info.setTextFormat(Qt.TextFormat.RichText)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.info.setObjectName("napari_vnet_card")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._form.native)
        layout.addWidget(self.info)

        self.weights.changed.connect(self._on_weights_combo)
        self.arch.changed.connect(self._on_arch)
        self.browse.changed.connect(self._on_browse)
        self.browse_folder.changed.connect(self._on_browse_folder)
        self._set(None, None)
        self.select_default()

    #: the shipped weights chosen by default for a CT in Hounsfield units (trained on a
    #: real CT) and for anything else (the synthetic phantoms: the demo and the sample)
    CT_DEFAULT = "unet3d-ct-starter"

    def prefer_for_image(self, ct_in_hu: bool, phantom: bool = False) -> bool:
        """While the weights are the dock's own default choice (not picked by the user,
        not a recently used file), follow the image: the real-CT starter for a CT in HU,
        the phantom default for the synthetic phantom and other images. True if the
        choice changed."""
        if not self.auto_chosen:
            return False
        ships = shipped()
        current = None if self._weights is None else self._weights.resolve()
        if current is not None and current not in {Path(p).resolve() for p in ships.values()}:
            return False  # a recently used file of the user's: keep it
        want = ships.get(self.CT_DEFAULT) if ct_in_hu and not phantom else None
        want = want or ships.get("vnet-phantom")
        if want is None or (current is not None and Path(want).resolve() == current):
            return False
        try:
            card = read_card_cached(Path(want))
        except Exception as exc:  # noqa: BLE001 - a broken shipped file is just not chosen
            log.info("not choosing %s: %s", want, exc)
            return False
        self._set(Path(want), card)
        self.auto_chosen = True
        return True

    def select_default(self) -> bool:
        """Choose the most recently used weights, else the shipped V-Net (quietly: a
        file that cannot be read is just not chosen). True if something was chosen."""
        ships = shipped()
        recent = _session.recent_weights()[:1]
        candidates = [*recent]
        if "vnet-phantom" in ships:
            candidates.append(ships["vnet-phantom"])
        candidates.extend(ships.values())
        for path in candidates:
            try:
                card = read_card_cached(Path(path))
            except Exception as exc:
                log.info("not choosing %s by default: %s", path, exc)
                continue
            self._set(Path(path), card)
            self.auto_chosen = path not in recent
            return True
        return False

    # ------------------------------------------------------------------ choices
    def _choices(self, _widget=None) -> list[tuple[str, object]]:
        items: list[tuple[str, object]] = [(_NO_WEIGHTS, None)]
        seen: set[str] = set()
        for name, path in shipped().items():
            items.append((f"{name} (shipped)", str(Path(path))))
            seen.add(str(Path(path).resolve()))
        for path in _session.recent_weights():
            key = str(path.resolve())
            if key in seen:
                continue
            seen.add(key)
            items.append((path_label(path), str(path)))  # full path: the item's tool-tip
        current = self._weights
        if current is not None and str(current.resolve()) not in seen:
            items.append((elide_middle(current.name), str(current)))
        return items

    def _reset_choices(self) -> None:
        """Re-list the items, each with its full path as tool-tip."""
        self.weights.reset_choices()
        combo = self.weights.native
        for i in range(combo.count()):
            data = combo.itemData(i)
            if data:
                combo.setItemData(i, str(data), Qt.ItemDataRole.ToolTipRole)
        self._combo_tip()

    def _combo_tip(self, *_) -> None:
        current = self.weights.native.currentData()
        self.weights.native.setToolTip(
            str(current) if current else "Shipped models first, then recently used files."
        )

    def refresh(self) -> None:
        """Re-list shipped and recent weights, keeping the current choice."""
        self._updating = True
        try:
            self._reset_choices()
            self.weights.value = None if self._weights is None else str(self._weights)
        finally:
            self._updating = False

    # ------------------------------------------------------------------ selection
    @property
    def current_weights(self) -> Path | None:
        return self._weights

    @property
    def current_arch(self) -> str:
        if self.card is not None and self.card.arch in FOREIGN_NAMES:
            return self.card.arch  # foreign weights: the architecture is theirs
        return self.arch.value

    def select(self, name_or_path: str | os.PathLike | None) -> ModelCard | None:
        """Choose weights (a shipped name or a file). Raises CheckpointError when the
        file is not usable; the previous choice then stays."""
        if name_or_path is None or name_or_path == "":
            self._set(None, None)
            return None
        path = resolve(name_or_path)
        card = read_card_cached(path)
        if str(path.resolve()) not in {str(Path(p).resolve()) for p in shipped().values()}:
            _session.add_recent_weights(path)
        self._set(path, card)
        self.auto_chosen = False  # the user's (or a dock's) choice: images no longer move it
        return card

    def _set(self, path: Path | None, card: ModelCard | None) -> None:
        self._weights = path
        self.card = card
        self._updating = True
        try:
            self._reset_choices()
            self.weights.value = None if path is None else str(path)
            if card is not None and card.arch in {**DISPLAY_NAMES, **FOREIGN_NAMES}:
                self.arch.value = card.arch  # what will run, nnU-Net/MONAI included
            # foreign weights bring their own network: nothing to choose then
            foreign = card is not None and card.arch in FOREIGN_NAMES
            nnunet = path is not None and path.is_dir() and card is not None and (
                card.source or {}
            ).get("format") == "nnunet"
            self._nnunet_folder = nnunet
            self.folds.visible = self.checkpoint.visible = nnunet
            self.arch.enabled = not foreign
            self.arch.tooltip = (
                f"{arch_name(card.arch)} weights bring their own network: "
                + str(_network_of(card))
                if foreign
                else "Network type. Choosing weights sets it from their model card."
            )
        finally:
            self._updating = False
        self._validate()

    def fold_choice(self) -> dict[str, object]:
        """``folds`` and ``checkpoint`` for :class:`~napari_vnet.workflows.segment.RunRequest`
        (empty unless an nnU-Net folder is chosen)."""
        if not self._nnunet_folder:
            return {}
        folds = self.folds.value.replace(",", " ").split()
        return {"folds": folds or None, "checkpoint": self.checkpoint.value}

    def _on_weights_combo(self, value) -> None:
        if self._updating:
            return
        if value is None:
            self._set(None, None)
            return
        self.try_select(value)

    def _browse_start(self) -> str:
        """Where the file dialogs open: the current weights' folder, else the home folder."""
        return str(self._weights.parent) if self._weights is not None else str(Path.home())

    def _on_browse(self, _=None) -> None:
        filename, _ = QFileDialog.getOpenFileName(
            self, "Open model weights", self._browse_start(), WEIGHTS_FILTER
        )
        if filename:
            self.try_select(filename)

    def _on_browse_folder(self, _=None) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Open a model folder", self._browse_start()
        )
        if folder:
            self.try_select(folder)

    def try_select(self, value) -> bool:
        """:meth:`select` ``value`` (a path or a shipped name); False when it cannot be used
        (an error notification says why)."""
        try:
            self.select(value)
        except Exception as exc:
            self._refuse_file(Path(str(value)), exc)
            return False
        return True

    def _refuse_file(self, path: Path, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        log.info("refused weights %s: %s", path, exc)
        _session.forget_recent_weights(path)
        show_error(
            f"Cannot use weights {path.name}: {exc}\n"
            "Choose a napari-vnet checkpoint (the shipped models are listed first, "
            "or one saved by 'Fine-tune model' / 'napari-vnet train'), an nnU-Net v2 "
            "model folder or a MONAI bundle (Folder…)."
        )
        self.refresh()  # back to the previous, valid choice
        self._validate()

    def _on_arch(self, _=None) -> None:
        if not self._updating:
            self._validate()

    # ------------------------------------------------------------------ state
    def _validate(self) -> None:
        card = self.card
        if self._weights is None or card is None:
            self.problem = "Choose model weights (a shipped model or a checkpoint file)."
            self.info.setText(f"<i>{html.escape(self.problem)}</i>")
        elif card.arch != self.arch.value and card.arch not in FOREIGN_NAMES:
            self.problem = (
                f"{self._weights.name} holds a {arch_name(card.arch)} model, not a "
                f"{arch_name(self.arch.value)}: choose {arch_name(card.arch)} or other weights."
            )
            self.info.setText(
                f'<span style="color: #e0533d"><b>Refused:</b> {html.escape(self.problem)}'
                f"</span><br>{card_html(card, self._weights)}"
            )
        else:
            self.problem = None
            self.info.setText(card_html(card, self._weights))
        self.info.setToolTip(
            f"{self._weights}\n\n{card.description}" if card is not None and self._weights else ""
        )
        self.changed.emit()
