"""`napari-vnet demo`: napari with the sample phantom, both docks and the shipped V-Net.

Opens a napari window with the synthetic torso CT phantom and its ground truth (the npe2
sample ``napari-vnet.phantom_ct``), docks "Segment volume" and "Fine-tune model", selects
the shipped ``vnet-phantom`` weights and the CT image: one click on Run segments it.

``--auto`` starts the segmentation at once; ``--screenshot PATH`` saves the whole window
when it is ready (once the prediction is shown with ``--auto``); ``--quit-after S``
closes napari S seconds after the window opened, or as soon as the screenshot is saved.
Exit status 1 when ``--auto`` produced no prediction before quitting.

:func:`launch_demo` does the set-up on an existing viewer (the tests call it with
``make_napari_viewer()``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HELP = "open napari with the sample phantom, both dock widgets and the shipped V-Net"

PLUGIN = "napari-vnet"
DEFAULT_WEIGHTS = "vnet-phantom"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--auto", action="store_true", help="run the segmentation at start (screenshots, tests)"
    )
    parser.add_argument(
        "--screenshot",
        type=Path,
        metavar="PATH",
        help="save a screenshot of the whole window (PNG) when ready (after the prediction "
        "with --auto)",
    )
    parser.add_argument(
        "--quit-after",
        type=float,
        metavar="SECONDS",
        help="close napari this many seconds after it opened, or right after --screenshot",
    )
    parser.add_argument(
        "--weights",
        default=DEFAULT_WEIGHTS,
        metavar="NAME",
        help=f"weights to select: a shipped name or a .pt file (default {DEFAULT_WEIGHTS})",
    )


@dataclass
class Demo:
    """What :func:`launch_demo` set up."""

    viewer: Any
    segment: Any  # SegmentWidget
    finetune: Any  # FinetuneWidget
    image: Any  # the CT Image layer
    labels: Any  # the ground-truth Labels layer
    worker: Any = None  # the inference worker when auto-started
    predictions: list = field(default_factory=list)  # Labels layers added by the demo run


def launch_demo(viewer, *, auto: bool = False, weights: str = DEFAULT_WEIGHTS) -> Demo:
    """Load the phantom into ``viewer``, dock the widgets, select the weights and image;
    with ``auto`` start the segmentation (returns at once; see ``Demo.worker``)."""
    from napari.layers import Image, Labels

    from napari_vnet._sample_data import IMAGE_NAME, LABELS_NAME

    viewer.open_sample(PLUGIN, "phantom_ct")
    image = next(ly for ly in viewer.layers if isinstance(ly, Image) and ly.name == IMAGE_NAME)
    labels = next(ly for ly in viewer.layers if isinstance(ly, Labels) and ly.name == LABELS_NAME)
    # the ground truth starts hidden: the prediction is what the demo shows
    labels.visible = False

    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment volume")
    _, finetune = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune model")
    # the docks come in scroll areas (napari_vnet._widgets._docking): keep the widgets
    segment = getattr(segment, "content", segment)
    finetune = getattr(finetune, "content", finetune)
    viewer.layers.selection.active = image
    segment.set_image_layer(image)
    if not segment.select_weights(weights):
        log.warning("could not select weights %r in the Segment volume dock", weights)
    else:
        try:
            finetune.set_base_weights(segment.current_weights)
        except Exception:  # the fine-tune dock is optional for the demo
            log.debug("could not set the fine-tune base weights", exc_info=True)

    demo = Demo(viewer=viewer, segment=segment, finetune=finetune, image=image, labels=labels)
    segment.prediction_added.connect(demo.predictions.append)
    if auto:
        demo.worker = segment.run()
        if demo.worker is None:
            log.error("the segmentation could not start (see the notification)")
    return demo


def fit_to_screen(viewer) -> None:
    """Keep the window inside the screen's available area (docks scroll, see _docking)."""
    window = viewer.window._qt_window
    screen = window.screen()
    if screen is None:
        return
    avail = screen.availableGeometry()
    width = min(window.width(), avail.width())
    height = min(window.height(), avail.height())
    if (width, height) != (window.width(), window.height()):
        window.resize(width, height)
        window.move(avail.x(), avail.y())


def _screenshot(viewer, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    return path


def gui_problem() -> str | None:
    """Why no napari window can open here (no Qt binding, no display), or None."""
    try:
        import qtpy  # noqa: F401 - raises when no Qt binding (PyQt/PySide) is installed
    except Exception as exc:  # qtpy's QtBindingsNotFoundError and friends
        return (
            f"no Qt binding for napari's window ({exc}). Install one, e.g. "
            '`pip install "napari-vnet[qt]"` (PyQt6) or `pip install "napari[all]"`.'
        )
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY")
        or os.environ.get("WAYLAND_DISPLAY")
        or os.environ.get("QT_QPA_PLATFORM")
    ):
        return (
            "no display to open napari's window on (DISPLAY is not set). Run it in a "
            "desktop session, over `ssh -X`, or headless with `xvfb-run -a napari-vnet demo`."
        )
    return None


def run(args: argparse.Namespace) -> int:
    problem = gui_problem()
    if problem:
        print(f"napari-vnet demo: {problem}", file=sys.stderr)
        return 2
    import napari
    from qtpy.QtCore import QTimer

    from napari_vnet.reader_preferences import register_reader_preferences

    # before the window opens: File > Open reads medical volumes with napari-vnet from now
    # on (the user's own preferences are kept)
    added = register_reader_preferences()
    if added:
        print("napari opens with napari-vnet from now on: " + " ".join(added))
    viewer = napari.Viewer(title="napari-vnet demo")
    state = {"status": 0, "shot": False}

    def quit_napari() -> None:
        viewer.close()

    def take_screenshot() -> None:
        if state["shot"]:
            return
        state["shot"] = True
        try:
            print(_screenshot(viewer, args.screenshot))
        except Exception as exc:  # keep the window usable; report in the exit status
            print(f"napari-vnet demo: screenshot failed: {exc}", file=sys.stderr)
            state["status"] = 1
        if args.quit_after is not None:
            QTimer.singleShot(200, quit_napari)

    def on_prediction(_layer) -> None:
        if args.screenshot:
            QTimer.singleShot(500, take_screenshot)  # let the canvas redraw first

    demo = launch_demo(viewer, auto=args.auto, weights=args.weights)
    if args.screenshot:
        viewer.window.resize(1500, 1000)  # a reproducible layout for the README figure
    fit_to_screen(viewer)
    demo.segment.prediction_added.connect(on_prediction)
    if args.auto and demo.worker is None:
        state["status"] = 1
    if args.screenshot and not args.auto:
        QTimer.singleShot(1500, take_screenshot)

    if args.quit_after is not None:

        def deadline() -> None:
            if args.auto and not demo.predictions:
                print(
                    f"napari-vnet demo: no prediction after {args.quit_after:g} s",
                    file=sys.stderr,
                )
                state["status"] = 1
                demo.segment.cancel()
            if args.screenshot and not state["shot"]:
                take_screenshot()
            quit_napari()

        QTimer.singleShot(int(args.quit_after * 1000), deadline)

    napari.run()
    if args.auto and not demo.predictions:
        state["status"] = 1
    return state["status"]
