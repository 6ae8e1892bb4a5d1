"""The three networks: shapes for any size (odd, thin), dtype, gradients, errors, registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_vnet.models import (
    ARCHITECTURES,
    ClassInfo,
    ModelCard,
    UNet3D,
    VNet,
    Vox2VoxDiscriminator,
    Vox2VoxGenerator,
    arch_from_display_name,
    build_discriminator,
    build_model,
    count_parameters,
    display_name,
)
from napari_vnet.models._padding import crop, pad_to_multiple, padded_shape

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """Two OpenMP threads on a loaded, shared 2-core machine run several times slower."""
    torch.set_num_threads(1)


TINY = {
    "vnet": {"channels": [4, 8, 8, 16], "convs": [1, 2, 2, 2]},
    "unet3d": {"channels": [4, 8, 8, 16]},
    "vox2vox": {"channels": [4, 8, 8, 16], "bottleneck_blocks": 2},
}
SIZES = [(32, 32, 32), (37, 50, 41), (1, 1, 1), (1, 19, 9), (3, 64, 1), (2, 2, 17)]

#: parameter counts with the default (paper) widths, 1 input channel and 2 classes;
#: also stated in docs/readme/models.md
DEFAULT_PARAMETERS = {"vnet": 65_175_314, "unet3d": 5_601_154, "vox2vox": 82_602_754}


def _card(arch: str, cin: int = 1, cout: int = 2, **kwargs) -> ModelCard:
    classes = [ClassInfo(i, f"c{i}") for i in range(cout)]
    return ModelCard(
        arch=arch, arch_kwargs={**TINY[arch], **kwargs}, classes=classes, in_channels=cin
    )


@pytest.mark.parametrize("channels", [(1, 2), (2, 4)], ids=["1in2out", "2in4out"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_output_shape_and_dtype_for_any_size(arch, size, channels):
    cin, cout = channels
    model = build_model(_card(arch, cin, cout)).eval()
    x = torch.randn(2, cin, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, cout, *size)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_float64_in_float64_out(arch):
    model = build_model(_card(arch)).double().eval()
    with torch.no_grad():
        y = model(torch.randn(1, 1, 9, 10, 11, dtype=torch.float64))
    assert y.dtype == torch.float64 and y.shape == (1, 2, 9, 10, 11)


@pytest.mark.parametrize("size", [(37, 50, 41), (1, 1, 1), (1, 12, 20)], ids=str)
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_gradients_reach_every_parameter(arch, size):
    """Training mode, batch of one, odd and one-voxel sizes (norm layers included)."""
    norm = {"vnet": "batch", "unet3d": "batch", "vox2vox": "instance"}[arch]
    model = build_model(_card(arch, 1, 3, norm=norm)).train()
    x = torch.randn(1, 1, *size, requires_grad=True)
    target = torch.randint(0, 3, (1, *size))
    torch.nn.functional.cross_entropy(model(x), target).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{arch}: no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), f"{arch}: non-finite gradient in {name}"
        assert p.grad.abs().sum() > 0, f"{arch}: zero gradient in {name}"


def test_default_widths_follow_the_papers_and_parameter_counts():
    docs = (ROOT / "docs" / "readme" / "models.md").read_text()
    for arch, expected in DEFAULT_PARAMETERS.items():
        model = build_model(ModelCard(arch=arch))
        n = count_parameters(model)
        print(f"{display_name(arch)} ({arch}) default widths: {n:,} parameters")
        assert n == expected
        assert f"{n:,}" in docs, f"docs/readme/models.md does not state {arch}'s {n:,}"
    assert VNet().arch_kwargs["channels"] == [16, 32, 64, 128, 256]
    assert VNet().arch_kwargs["convs"] == [1, 2, 3, 3, 3]
    assert UNet3D().arch_kwargs["channels"] == [32, 64, 128, 256]
    assert Vox2VoxGenerator().arch_kwargs["channels"] == [64, 128, 256, 512]


def test_vnet_paper_structure():
    """5x5x5 convolutions, PReLU, 2x2x2 stride-2 down/up, 1x1x1 head, residual stages."""
    model = VNet()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert {m.kernel_size for m in convs} == {(5, 5, 5), (2, 2, 2), (1, 1, 1)}
    assert all(m.stride == (2, 2, 2) for m in convs if m.kernel_size == (2, 2, 2))
    ups = [m for m in model.modules() if isinstance(m, torch.nn.ConvTranspose3d)]
    assert len(ups) == 4 and all(m.kernel_size == (2, 2, 2) for m in ups)
    assert any(isinstance(m, torch.nn.PReLU) for m in model.modules())
    assert [len(s.convs) for s in model.decoder] == [3, 3, 2, 1]
    assert model.size_multiple == 16


def test_default_models_run_on_a_small_volume():
    with torch.no_grad():
        for arch in ARCHITECTURES:
            model = build_model(ModelCard(arch=arch)).eval()
            assert model(torch.randn(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)


@pytest.mark.parametrize("size", [(32, 32, 32), (37, 50, 41), (1, 1, 1)], ids=str)
def test_discriminator_scores_patches(size):
    card = _card("vox2vox", 1, 3)
    disc = build_discriminator(card, channels=[4, 8, 16])
    assert isinstance(disc, Vox2VoxDiscriminator)
    image, seg = torch.randn(2, 1, *size), torch.rand(2, 3, *size).softmax(1)
    scores = disc(image, seg)
    padded = padded_shape(size, 8)
    assert scores.shape == (2, 1, *(p // 8 for p in padded))
    scores.mean().backward()
    assert all(p.grad is not None for p in disc.parameters())
    with pytest.raises(ValueError, match=r"differ in batch or spatial size"):
        disc(image, seg[..., :-1] if size[-1] > 1 else seg[:1])


def test_vox2vox_bottleneck_keeps_constant_width():
    model = Vox2VoxGenerator(channels=[4, 8, 16], bottleneck_blocks=3)
    widths = [b.conv.out_channels for b in model.bottleneck]
    assert widths == [16, 16, 16]
    assert [b.conv.in_channels for b in model.bottleneck] == [16, 32, 32]
    encoders = [b.conv for b in model.encoder]
    assert all(c.kernel_size == (4, 4, 4) and c.stride == (2, 2, 2) for c in encoders)
    assert all(isinstance(b.norm, torch.nn.InstanceNorm3d) for b in model.encoder)


def test_pad_then_crop_is_identity_and_sizes_are_multiples():
    x = torch.randn(1, 2, 37, 50, 41)
    for mode in ("replicate", "constant", "reflect"):
        xp, slices = pad_to_multiple(x, 16, mode)
        assert xp.shape[2:] == (48, 64, 48)
        assert torch.equal(crop(xp, slices), x)
    assert padded_shape((1, 1, 1), 16) == (16, 16, 32)  # deepest level keeps 2 voxels
    assert padded_shape((1, 1, 17), 16) == (16, 16, 32)
    assert padded_shape((32, 32, 32), 16) == (32, 32, 32)
    thin = torch.randn(1, 1, 1, 1, 1)
    assert torch.equal(crop(*pad_to_multiple(thin, 8, "reflect")), thin)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": [8]}, r"channels must hold at least 2 positive widths, got \(8,\)"),
        ({"channels": [8, 0]}, r"got \(8, 0\)"),
        ({"norm": "layer"}, r"norm must be one of .* got 'layer'"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\), got 1.5"),
        ({"kernel_size": 4}, r"kernel_size must be odd, got 4"),
        ({"convs": [1, 2]}, r"one entry per level \(4\), got \(1, 2\)"),
        ({"pad_mode": "circular"}, r"pad_mode must be one of .* got 'circular'"),
    ],
)
def test_bad_keywords_are_refused_quoting_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VNet(**{**TINY["vnet"], **kwargs})


def test_bad_inputs_are_refused_quoting_the_shape():
    model = build_model(_card("unet3d", 2, 2))
    with pytest.raises(
        ValueError, match=r"2 input channel\(s\), got a tensor of shape \(1, 1, 8, 8, 8\)"
    ):
        model(torch.randn(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"5-D tensor \(B, C, D, H, W\), got shape \(2, 8, 8, 8\)"):
        model(torch.randn(2, 8, 8, 8))
    with pytest.raises(ValueError, match=r"empty tensor"):
        model(torch.randn(1, 2, 0, 8, 8))
    with pytest.raises(TypeError, match=r"floating-point tensor, got dtype torch.int64"):
        model(torch.zeros(1, 2, 8, 8, 8, dtype=torch.long))


def test_build_model_from_card():
    card = ModelCard(
        arch="unet3d",
        arch_kwargs={"channels": [4, 8], "norm": "instance"},
        classes=[ClassInfo(0, "bg"), ClassInfo(5, "liver"), ClassInfo(7, "spleen")],
        in_channels=2,
    )
    model = build_model(card)
    assert isinstance(model, UNet3D)
    assert (model.in_channels, model.out_channels) == (2, 3)
    assert model.arch_kwargs == {
        "channels": [4, 8],
        "norm": "instance",
        "dropout": 0.0,
        "pad_mode": "replicate",
    }
    # a model's own arch_kwargs rebuild the same network
    again = build_model(
        ModelCard(arch="unet3d", arch_kwargs=model.arch_kwargs, classes=card.classes, in_channels=2)
    )
    assert count_parameters(again) == count_parameters(model)
    with pytest.raises(
        ValueError, match=r"unknown architecture 'segformer'; known: vnet, unet3d, vox2vox"
    ):
        build_model(ModelCard(arch="segformer"))
    with pytest.raises(ValueError, match=r"do not fit UNet3D: .*'widths'"):
        build_model(ModelCard(arch="unet3d", arch_kwargs={"widths": [4, 8]}))
    with pytest.raises(
        ValueError, match=r"arch_kwargs\['out_channels'\] = 4 contradicts the card \(2"
    ):
        build_model(ModelCard(arch="unet3d", arch_kwargs={"out_channels": 4}))


def test_registry_names():
    assert list(ARCHITECTURES) == ["vnet", "unet3d", "vox2vox"]
    assert [display_name(a) for a in ARCHITECTURES] == ["V-Net", "3D U-Net", "Vox2Vox"]
    assert arch_from_display_name("3D U-Net") == "unet3d"
    assert arch_from_display_name("vox2vox") == "vox2vox"
    with pytest.raises(ValueError, match="unknown architecture 'UNETR'"):
        arch_from_display_name("UNETR")


def test_card_types_import_without_torch():
    """ModelCard/CheckpointError/weights stay light (napari-vnet --help, the reader)."""
    code = (
        "import sys\n"
        "from napari_vnet.models import ModelCard, ClassInfo, CheckpointError, display_name\n"
        "assert display_name('unet3d') == '3D U-Net'\n"
        "from napari_vnet.weights import shipped_weights, resolve_weights\n"
        "import napari_vnet.commands.info\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "from napari_vnet.models import build_model\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=200, deadline=None)
@given(
    shape=st.tuples(*[st.integers(1, 200)] * 3),
    multiple=st.sampled_from([1, 2, 4, 8, 16, 32]),
)
def test_padded_shape_properties(shape, multiple):
    padded = padded_shape(shape, multiple)
    for s, p in zip(shape, padded, strict=True):
        assert p >= s and p % multiple == 0
    # minimal: one multiple of padding at most, except the one-voxel-bottleneck rule
    small = all(s <= multiple for s in shape) and multiple > 1
    for i, (s, p) in enumerate(zip(shape, padded, strict=True)):
        assert p - s < (2 * multiple if small and i == 2 else multiple)
    assert multiple == 1 or any(p > multiple for p in padded)


def test_vnet_input_residual_replicates_or_projects_channels():
    """The paper replicates its one input channel to the first stage's width; when the
    input channels do not divide the width, a 1x1x1 convolution projects them."""
    replicate = VNet(in_channels=2, channels=[4, 8])
    assert replicate.input_stage.repeat == 2 and replicate.input_stage.project is None
    project = VNet(in_channels=3, channels=[4, 8])
    assert project.input_stage.repeat == 0 and project.input_stage.project is not None
    assert project(torch.randn(1, 3, 5, 6, 7)).shape == (1, 2, 5, 6, 7)
