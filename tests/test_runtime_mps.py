"""Apple GPUs: mixed precision "auto" means fp32 there (torch's MPS ConvTranspose3d, which
every shipped network's decoder uses, exists in fp32 only), and the package asks Apple
Silicon for a torch that has it. No Apple GPU is needed: the choice is a pure function of the
setting and the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_vnet.runtime import resolve_amp

ROOT = Path(__file__).resolve().parents[1]

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

MPS = torch.device("mps")  # a device object needs no Apple GPU


@pytest.mark.parametrize("setting", ["auto", "AUTO"])
def test_auto_is_fp32_on_mps(setting):
    assert resolve_amp(setting, MPS) is None


def test_mps_half_precision_only_when_asked():
    assert resolve_amp("fp16", MPS) is torch.float16
    assert resolve_amp(True, MPS) is torch.float16 and resolve_amp("on", MPS) is torch.float16
    assert resolve_amp("off", MPS) is None and resolve_amp(False, MPS) is None


def test_other_devices_keep_their_auto_choice(monkeypatch):
    import napari_vnet.runtime as rt

    monkeypatch.setattr(rt, "cpu_has_native_bf16", lambda: True)
    assert resolve_amp("auto", torch.device("cpu")) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_amp("auto", torch.device("cuda")) is torch.bfloat16


def test_apple_silicon_asks_for_a_torch_with_mps_conv_transpose_3d():
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    deps = [Requirement(d) for d in pyproject["project"]["dependencies"]]
    torch_reqs = [r for r in deps if r.name == "torch"]
    mac = {"sys_platform": "darwin", "platform_machine": "arm64"}
    linux = {"sys_platform": "linux", "platform_machine": "x86_64"}

    def allows(version: str, env: dict) -> bool:
        return all(
            r.specifier.contains(version)
            for r in torch_reqs
            if not r.marker or r.marker.evaluate(env)
        )

    assert allows("2.1.0", linux)  # the global minimum stays
    assert not allows("2.7.1", mac) and allows("2.8.0", mac)
