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
