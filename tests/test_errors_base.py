"""Every error type the package raises on purpose derives from NapariVnetError and keeps
its built-in base (so ``except ValueError`` / ``except OSError`` still catch it)."""

from __future__ import annotations

import importlib

import pytest

from napari_vnet.errors import NapariVnetError

ERRORS = [
    ("napari_vnet.io.errors", "VolumeReadError", Exception),
    ("napari_vnet.io.errors", "VolumeWriteError", Exception),
    ("napari_vnet.models.errors", "CheckpointError", Exception),
    ("napari_vnet.models.errors", "WeightsNotFoundError", FileNotFoundError),
    ("napari_vnet.models.errors", "InvalidCardError", Exception),
    ("napari_vnet.models.names", "UnknownArchitectureError", ValueError),
    ("napari_vnet.foreign.networks", "MissingExtraError", ImportError),
    ("napari_vnet.foreign.safe_load", "UnsafeCheckpointError", Exception),
    ("napari_vnet.foreign.nnunet", "UnsupportedNnUNetError", Exception),
    ("napari_vnet.foreign.monai_bundle", "UnsupportedBundleError", Exception),
    ("napari_vnet.foreign.export_paths", "ExportError", ValueError),
    ("napari_vnet.transforms", "ResampleMemoryError", MemoryError),
    ("napari_vnet.transforms", "ResampleMemoryError", ValueError),
    ("napari_vnet.inference.engine", "InferenceMemoryError", MemoryError),
    ("napari_vnet.training.config", "TrainingError", ValueError),
    ("napari_vnet.io.label_names", "LabelSidecarError", ValueError),
]


@pytest.mark.parametrize(("module", "name", "builtin"), ERRORS)
def test_error_derives_from_the_package_base(module, name, builtin):
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, NapariVnetError)
    assert issubclass(cls, builtin)


def test_the_base_is_caught_as_an_exception_and_imports_nothing_of_the_package():
    import napari_vnet.errors as errors

    assert issubclass(NapariVnetError, Exception)
    assert not [n for n in vars(errors) if n.startswith("napari_vnet")]
