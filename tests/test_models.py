"""Every registered model: shapes, finiteness, gradients, determinism, argument checks.

The ``CASES`` table gives tiny constructor kwargs per registry entry (and a
few extra variants); ``test_cases_cover_registry`` fails when a model is added
to ``MODELS`` without a row here.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from liverlab.config import DiscriminatorConfig, GeneratorConfig, SegmenterConfig, UNetModelConfig
from liverlab.errors import LiverlabError
from liverlab.models import (
    MODELS,
    PatchDiscriminator,
    ResnetGenerator,
    UNet,
    build_model,
    count_parameters,
    discriminator_from_config,
    generator_from_config,
    model_flops,
    segmenter_from_config,
    unet_from_config,
)
from liverlab.models.resnet import UPSAMPLE_MODES, up_block

# (case id, registry name, kwargs, input shape, expected output shape)
CASES: list[tuple[str, str, dict[str, Any], tuple[int, ...], tuple[int, ...]]] = [
    ("generator", "resnet_generator", dict(ngf=4, n_blocks=2), (2, 1, 32, 32), (2, 1, 32, 32)),
    ("generator-d1-rgb", "resnet_generator",
     dict(in_channels=3, out_channels=3, ngf=4, n_blocks=1, n_downsampling=1), (1, 3, 16, 24), (1, 3, 16, 24)),
    ("generator-nearest", "resnet_generator", dict(ngf=4, n_blocks=1, upsample="nearest"), (2, 1, 32, 32), (2, 1, 32, 32)),
    ("generator-bilinear-d3", "resnet_generator",
     dict(ngf=4, n_blocks=1, n_downsampling=3, upsample="bilinear"), (1, 1, 32, 40), (1, 1, 32, 40)),
    ("segmenter", "resnet_segmenter", dict(ngf=4, n_blocks=2), (2, 1, 32, 32), (2, 2, 32, 32)),
    ("segmenter-nearest", "resnet_segmenter", dict(ngf=4, n_blocks=1, upsample="nearest"), (2, 1, 16, 16), (2, 2, 16, 16)),
    # 32 -> 16 -> 8 -> 4 (three stride-2 convs), then two stride-1 4x4 convs: 4 - 1 - 1 = 2.
    ("patchgan", "patchgan", dict(ndf=4, n_layers=3), (2, 1, 32, 32), (2, 1, 2, 2)),
    ("patchgan-l2", "patchgan", dict(ndf=4, n_layers=2), (2, 1, 32, 48), (2, 1, 6, 10)),
    ("unet", "unet", dict(depth=3, base_features=4), (2, 1, 32, 32), (2, 2, 32, 32)),
    ("unet-instance-bilinear", "unet",
     dict(depth=3, base_features=4, norm="instance", upsample="bilinear"), (2, 1, 32, 32), (2, 2, 32, 32)),
    ("unet-none-dropout", "unet",
     dict(depth=2, base_features=4, norm="none", dropout=0.2), (2, 1, 16, 16), (2, 2, 16, 16)),
    ("unet-depth1", "unet", dict(depth=1, base_features=4, out_channels=3), (2, 1, 8, 8), (2, 3, 8, 8)),
    ("unet-3d", "unet", dict(spatial_dims=3, depth=2, base_features=2), (2, 1, 8, 8, 8), (2, 2, 8, 8, 8)),
]
IDS = [c[0] for c in CASES]


def test_cases_cover_registry() -> None:
    assert {c[1] for c in CASES} == set(MODELS)


def _build(name: str, kwargs: dict[str, Any], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, **kwargs)


@pytest.mark.parametrize(("case", "name", "kwargs", "in_shape", "out_shape"), CASES, ids=IDS)
def test_shape_finite_and_gradients(
    case: str, name: str, kwargs: dict[str, Any], in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> None:
    model = _build(name, kwargs)
    model.train()
    x = torch.randn(in_shape)
    out = model(x)
    assert tuple(out.shape) == out_shape
    assert torch.isfinite(out).all()
    # A random projection, so that no parameter's gradient cancels by symmetry.
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{case}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{case}: {pname} has a non-finite gradient"
        assert p.grad.abs().max() > 0, f"{case}: {pname} has an all-zero gradient"


@pytest.mark.parametrize(("case", "name", "kwargs", "in_shape", "out_shape"), CASES, ids=IDS)
def test_deterministic_under_seed(
    case: str, name: str, kwargs: dict[str, Any], in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> None:
    a, b = _build(name, kwargs, seed=7), _build(name, kwargs, seed=7)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), f"{case}: {na} differs between two seeded builds"
    x = torch.randn(in_shape)
    torch.manual_seed(1)  # dropout draws the same masks in both forwards
    ya = a(x)
    torch.manual_seed(1)
    yb = b(x)
    assert torch.equal(ya, yb)
    c = _build(name, kwargs, seed=8)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


BAD_ARGS: list[tuple[str, dict[str, Any], str]] = [
    ("resnet_generator", dict(ngf=0), "ngf"),
    ("resnet_generator", dict(n_blocks=-1), "n_blocks"),
    ("resnet_generator", dict(n_downsampling=-1), "n_downsampling"),
    ("resnet_generator", dict(in_channels=0), "in_channels"),
    ("resnet_generator", dict(out_channels=2.5), "out_channels"),
    ("resnet_generator", dict(output_activation="relu"), "output_activation"),
    ("resnet_generator", dict(dropout=1.0), "dropout"),
    ("resnet_generator", dict(init_gain=-1.0), "init_gain"),
    ("resnet_generator", dict(upsample="bicubic"), "upsample"),
    ("resnet_segmenter", dict(out_channels=0), "out_channels"),
    ("resnet_segmenter", dict(ngf=True), "ngf"),
    ("patchgan", dict(ndf=0), "ndf"),
    ("patchgan", dict(n_layers=0), "n_layers"),
    ("patchgan", dict(in_channels=-2), "in_channels"),
    ("unet", dict(spatial_dims=1), "spatial_dims"),
    ("unet", dict(depth=0), "depth"),
    ("unet", dict(base_features=0), "base_features"),
    ("unet", dict(norm="group"), "norm"),
    ("unet", dict(dropout=1.0), "dropout"),
    ("unet", dict(upsample="nearest"), "upsample"),
    ("unet", dict(out_channels=0), "out_channels"),
]


@pytest.mark.parametrize(("name", "kwargs", "arg"), BAD_ARGS, ids=[f"{n}-{a}" for n, _, a in BAD_ARGS])
def test_bad_constructor_args(name: str, kwargs: dict[str, Any], arg: str) -> None:
    with pytest.raises(ValueError, match=arg):
        build_model(name, **kwargs)


def test_bad_args_table_covers_registry() -> None:
    assert {row[0] for row in BAD_ARGS} == set(MODELS)


def test_unknown_model_and_kwarg() -> None:
    with pytest.raises(ValueError, match="known models: patchgan, resnet_generator, resnet_segmenter, unet"):
        build_model("vit")
    with pytest.raises(ValueError, match="nfg"):
        build_model("resnet_generator", nfg=4)


@pytest.mark.parametrize(
    ("model", "shape", "size"),
    [
        (ResnetGenerator(ngf=2, n_blocks=1), (1, 1, 30, 32), "30x32"),  # 30 not divisible by 4
        (UNet(depth=4, base_features=2), (1, 1, 20, 16), "20x16"),  # 20 not divisible by 8
        (PatchDiscriminator(ndf=2), (1, 1, 16, 32), "16x32"),  # 16 // 8 - 2 = 0 output pixels
        (UNet(spatial_dims=3, depth=2, base_features=2), (1, 1, 8, 8, 7), "8x8x7"),
    ],
    ids=["generator", "unet", "patchgan", "unet-3d"],
)
def test_bad_input_size_names_the_size(model: nn.Module, shape: tuple[int, ...], size: str) -> None:
    with pytest.raises(ValueError, match=size):
        model(torch.zeros(shape))


def test_bad_input_channels() -> None:
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        ResnetGenerator(ngf=2, n_blocks=0)(torch.zeros(1, 3, 8, 8))


def test_reference_parameter_counts() -> None:
    """Same architecture as CycleGAN's resnet_9blocks / basic 70x70 PatchGAN (RGB, 3 channels).

    The reference prints 11.378 M and 2.765 M parameters; ours lacks the
    biases of convolutions followed by InstanceNorm (dead parameters):
    generator 64 + 128 + 256 + 9 * 2 * 256 + 128 + 64 = 5248, PatchGAN 128 + 256 + 512 = 896.
    """
    g = ResnetGenerator(in_channels=3, out_channels=3, init_gain=None)
    assert count_parameters(g) + 5248 == 11_378_179
    d = PatchDiscriminator(in_channels=3, init_gain=None)
    assert count_parameters(d) + 896 == 2_764_737
    assert d.receptive_field == 70
    assert PatchDiscriminator(n_layers=1, ndf=2).receptive_field == 16


def test_model_flops_known_answer() -> None:
    # One 3x3 conv, 1 -> 4 channels, on 8x8: 4 * 9 multiply-adds per pixel = 2 * 4 * 9 * 64 = 4608 FLOPs.
    conv = nn.Sequential(nn.Conv2d(1, 4, kernel_size=3, padding=1))
    assert model_flops(conv, (1, 1, 8, 8)) == 4608.0
    assert model_flops(conv, (3, 1, 8, 8)) == 3 * 4608.0


def test_model_flops_leaves_model_untouched() -> None:
    model = UNet(depth=2, base_features=2)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model_flops(model, (2, 1, 8, 8)) > 0
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed (BatchNorm statistics must not update)"


def test_from_config_builders() -> None:
    g = generator_from_config(GeneratorConfig(ngf=4, n_blocks=1, n_downsampling=1))
    assert isinstance(g, ResnetGenerator) and g.n_downsampling == 1
    d = discriminator_from_config(DiscriminatorConfig(ndf=4, n_layers=2))
    assert isinstance(d, PatchDiscriminator) and d.n_layers == 2
    s = segmenter_from_config(SegmenterConfig(ngf=4, n_blocks=1))
    assert s(torch.zeros(1, 1, 16, 16)).shape == (1, 2, 16, 16)
    s2 = segmenter_from_config(SegmenterConfig(name="unet", depth=2, base_features=4))
    assert isinstance(s2, UNet) and s2(torch.zeros(2, 1, 16, 16)).shape == (2, 2, 16, 16)
    u = unet_from_config(UNetModelConfig(depth=2, base_features=4, norm="instance", dropout=0.1))
    assert isinstance(u, UNet) and u(torch.zeros(2, 1, 16, 16)).shape == (2, 2, 16, 16)


def test_generator_output_in_tanh_range_and_segmenter_unbounded() -> None:
    torch.manual_seed(0)
    g = build_model("resnet_generator", ngf=4, n_blocks=1, init_gain=None)
    s = build_model("resnet_segmenter", ngf=4, n_blocks=1, init_gain=None)
    x = 10 * torch.randn(1, 1, 16, 16)
    assert g(x).abs().max() <= 1.0
    assert isinstance(s.model[-1], nn.Conv2d)  # logits: no tanh at the end


# ----------------------------------------------------------------------------- the generator's upsampling


def test_cases_cover_upsample_modes() -> None:
    modes = {c[2].get("upsample", "transpose") for c in CASES if c[1] == "resnet_generator"}
    assert modes == set(UPSAMPLE_MODES)


def _fixed_up(mode: str, kernel: list[list[float]]) -> nn.Sequential:
    """A 1 -> 1 channel up block of ``mode`` whose (only) convolution has the given 3x3 kernel."""
    block = nn.Sequential(*up_block(1, 1, mode))
    conv = [m for m in block if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(conv) == 1 and conv[0].bias is None
    with torch.no_grad():
        conv[0].weight.copy_(torch.tensor(kernel).view(1, 1, 3, 3))
    return block


X = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
ONES = [[1.0] * 3] * 3
CENTRE = [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]


def test_nearest_resize_conv_known_answer() -> None:
    # Nearest x2: [[1,1,2,2],[1,1,2,2],[3,3,4,4],[3,3,4,4]]; reflection pad 1 repeats the edge pairs,
    # so each 3x3 sum is 9 + 3 * column + 6 * row: a plain ramp, every output pixel from 9 taps.
    expected = torch.tensor([[9.0, 12.0, 15.0, 18.0],
                             [15.0, 18.0, 21.0, 24.0],
                             [21.0, 24.0, 27.0, 30.0],
                             [27.0, 30.0, 33.0, 36.0]])
    assert torch.equal(_fixed_up("nearest", ONES)(X)[0, 0], expected)


def test_bilinear_resize_conv_known_answer() -> None:
    # Bilinear x2 (pixel centres) of [1, 2] is [1, 1.25, 1.75, 2]; the input is 1 + 2 row + column,
    # so the output is 1 + 2 r + c with r, c in (0, 0.25, 0.75, 1); the centre tap passes it through.
    expected = torch.tensor([[1.0, 1.25, 1.75, 2.0],
                             [1.5, 1.75, 2.25, 2.5],
                             [2.5, 2.75, 3.25, 3.5],
                             [3.0, 3.25, 3.75, 4.0]])
    assert torch.allclose(_fixed_up("bilinear", CENTRE)(X)[0, 0], expected)


def test_transposed_conv_known_answer_is_uneven() -> None:
    # The reference's stride-2 transposed conv with the same all-ones kernel: output row/column 1 gets
    # taps from two input rows/columns, the others from one: the checkerboard's origin.
    expected = torch.tensor([[1.0, 3.0, 2.0, 2.0],
                             [4.0, 10.0, 6.0, 6.0],
                             [3.0, 7.0, 4.0, 4.0],
                             [3.0, 7.0, 4.0, 4.0]])
    assert torch.equal(_fixed_up("transpose", ONES)(X)[0, 0], expected)


def test_upsample_is_a_generator_config_value() -> None:
    assert GeneratorConfig().upsample == "transpose"  # the default is the reference's
    kinds = {}
    for mode in UPSAMPLE_MODES:
        g = generator_from_config(GeneratorConfig(ngf=4, n_blocks=1, upsample=mode))
        kinds[mode] = {type(m).__name__ for m in g.modules()}
        assert g(torch.zeros(1, 1, 16, 16)).shape == (1, 1, 16, 16)
    assert "ConvTranspose2d" in kinds["transpose"] and "Upsample" not in kinds["transpose"]
    assert "Upsample" in kinds["nearest"] and "ConvTranspose2d" not in kinds["nearest"]
    up = [m for m in generator_from_config(GeneratorConfig(ngf=4, upsample="bilinear")).modules() if isinstance(m, nn.Upsample)]
    assert [m.mode for m in up] == ["bilinear", "bilinear"]
    with pytest.raises(Exception, match="upsample"):
        GeneratorConfig(upsample="bicubic")


def test_upsample_config_error_names_the_key(tmp_path) -> None:
    from liverlab.config import config_from_dict

    with pytest.raises(LiverlabError, match="essnet.generator.upsample"):
        config_from_dict({"data": {"root": str(tmp_path)}}, {"essnet.generator.upsample": "cubic"})
