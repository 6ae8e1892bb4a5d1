"""Shared fixtures. ``shared_data`` points at ../shared/data beside the project."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# napari settings written by tests (e.g. reader preferences) go to a throwaway file,
# never into the user's own napari configuration
os.environ.setdefault(
    "NAPARI_CONFIG", str(Path(tempfile.mkdtemp(prefix="napari-vnet-tests-")) / "settings.yaml")
)
SHARED_DATA = Path(os.environ.get("NAPARI_VNET_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real CT/MR volumes in ../shared/data; tests using them skip when absent."""
    if not (SHARED_DATA / "ct-dicom-patient-a" / "dicom").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (../shared/data beside the project)")
    return SHARED_DATA


@pytest.fixture
def make_napari_viewer(make_napari_viewer):
    """napari's own fixture (settings reset), with napari-vnet not yet activated: each test
    is a new napari session in which npe2 runs napari-vnet's ``on_activate`` hook again on
    the first use of one of its contributions (reader preferences, the viewer's session),
    as it does once per napari process."""
    from npe2 import PluginManager

    try:
        PluginManager.instance().deactivate("napari-vnet")
    except KeyError:  # not discovered yet: napari discovers it with the first viewer
        pass
    return make_napari_viewer


@pytest.fixture(autouse=True)
def _few_torch_threads():
    """Keep tests polite on 2-core machines (and deterministic)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def one_torch_thread():
    """One intra-op thread: on an oversubscribed 2-core machine OpenMP barriers with two
    threads make these tiny networks ~20x slower (measured). Opt in per module with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def config_dir(tmp_path, monkeypatch) -> Path:
    """NAPARI_VNET_CONFIG_DIR in tmp_path (recent-weights list, fine-tuned weights, the
    Scans dock's settings): tests never read or write the user's own. A module whose every
    test needs it: ``pytestmark = pytest.mark.usefixtures("config_dir")``."""
    d = tmp_path / "config"
    d.mkdir()
    monkeypatch.setenv("NAPARI_VNET_CONFIG_DIR", str(d))
    return d


@pytest.fixture
def drain():
    """``drain(generator) -> (items it yielded, the value it returned)``."""

    def run(gen):
        items = []
        while True:
            try:
                items.append(next(gen))
            except StopIteration as stop:
                return items, stop.value

    return run


@pytest.fixture
def notes():
    """Notifications napari dispatches during the test: a list of (severity, message);
    the severity as its text ("error", "warning", ...), equal to NotificationSeverity."""
    from napari.utils.notifications import notification_manager

    got: list[tuple[str, str]] = []

    def grab(n):
        got.append((str(n.severity), str(n.message)))

    notification_manager.notification_ready.connect(grab)
    yield got
    notification_manager.notification_ready.disconnect(grab)


@pytest.fixture
def tiny_checkpoint():
    """``tiny_checkpoint(path, history=None) -> path``: a real two-class V-Net checkpoint
    (background, organ; 16^3 patch at 2 x 1 x 1 mm, z-score), built from seed 0."""

    def save(path, history=None):
        import torch

        from napari_vnet.models import ClassInfo, ModelCard, build_model, save_checkpoint

        card = ModelCard(
            arch="vnet",
            arch_kwargs={"channels": [4, 8], "kernel_size": 3},
            classes=[ClassInfo(0, "background"), ClassInfo(1, "organ", (0.8, 0.3, 0.2, 1.0))],
            normalization={"kind": "zscore"},
            spacing=(2.0, 1.0, 1.0),
            patch_size=(16, 16, 16),
            history=history or {},
            description="tiny test network",
        )
        torch.manual_seed(0)
        return save_checkpoint(build_model(card), card, path)

    return save
