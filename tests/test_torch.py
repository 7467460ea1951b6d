"""PyTorch modules through converters.from_torch, checked against PyTorch itself.

Expected values come from PyTorch: its own eval forward (parity), its own autograd in
float64 on a constant-weight copy (RF ground truth), and the closed form read from the
module configurations (chains without side branches).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
import timm
import torch
import torchvision

import converters
import rfjax
from rfjax.errors import RFError

# --------------------------------------------------------------------------- helpers


def _build(source: str, name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # googlenet / inception_v3 warn about their default init
        if source == "timm":
            return timm.create_model(name, pretrained=False).eval()
        kwargs = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
        return getattr(torchvision.models, name)(weights=None, **kwargs).eval()


def _torch_outputs(module: torch.nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, np.ndarray]:
    """PyTorch's own eval forward at ``names`` (top-level children and ``"output"``),
    copied as they are produced (later in-place ReLUs must not change them)."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str, output: torch.Tensor) -> None:  # a hook that returns a value replaces the output
        seen.setdefault(name, output.clone())

    children = dict(module.named_children())
    hooks = [
        children[n].register_forward_hook(lambda m, i, o, n=n: keep(n, o)) for n in names if n != "output"
    ]
    with torch.no_grad():
        seen["output"] = module(x)
    for h in hooks:
        h.remove()
    return {k: v.numpy() for k, v in seen.items()}


def _nchw(a: jax.Array) -> np.ndarray:
    a = np.asarray(a)
    return np.transpose(a, (0, 3, 1, 2)) if a.ndim == 4 else a


def _rf_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy with constant positive kernels (1 / fan-in), zero biases, identity
    norms, activations and dropout, and average pooling over max pooling's windows."""
    model = copy.deepcopy(module).double().eval()
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, (torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.ReLU6, torch.nn.Dropout)):
                setattr(parent, name, torch.nn.Identity())
            elif isinstance(child, torch.nn.MaxPool2d):
                setattr(
                    parent,
                    name,
                    torch.nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode),
                )
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.fill_(1.0 / mod.weight[0].numel())
                if mod.bias is not None:
                    mod.bias.zero_()
    return model


def _torch_rf(module: torch.nn.Module, layer: str, size: int) -> tuple[int, int, float]:
    """RF size, stride and offset along h of ``layer``, from PyTorch autograd on the
    float64 RF copy: the input-gradient support of two neighbouring central cells."""
    model = _rf_copy(module)
    out: dict[str, torch.Tensor] = {}
    dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: out.update(y=o))
    x = torch.ones(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    model(x)
    y = out["y"]
    i = y.shape[2] // 2
    rows = []
    for cell in (i, i + 1):
        (g,) = torch.autograd.grad(y[0, :, cell, y.shape[3] // 2].sum(), x, retain_graph=True)
        nz = np.nonzero(g[0].abs().sum(0).sum(1).numpy())[0]
        rows.append((nz.min(), nz.max()))
    (lo, hi), (lo2, _) = rows
    stride = int(lo2 - lo)
    return int(hi - lo + 1), stride, (lo + hi + 1) / 2 - i * stride


def _chain_rf(module: torch.nn.Module) -> tuple[int, int]:
    """Closed-form RF size and stride of a chain of convolutions and poolings, read from
    the module configurations in registration order (Araujo et al.; exact for networks
    whose only side paths are identities and 1x1 squeeze-excitation convolutions)."""
    size, jump = 1, 1
    for mod in module.modules():
        if isinstance(mod, torch.nn.Conv2d):
            k, s, d = mod.kernel_size[0], mod.stride[0], mod.dilation[0]
        elif isinstance(mod, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
            k, s, d = (
                torch.nn.modules.utils._pair(mod.kernel_size)[0],
                torch.nn.modules.utils._pair(mod.stride)[0],
                1,
            )
        else:
            continue
        size, jump = size + d * (k - 1) * jump, jump * s
    return size, jump


# --------------------------------------------------------------------------- parity

# a few models of each family by default; the rest are marked slow (they still run in CI)
_LIGHT_TV = ["resnet18", "squeezenet1_1", "mobilenet_v2", "mobilenet_v3_small"]
_HEAVY_TV = ["resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg16_bn", "alexnet", "densenet121", "inception_v3",
             "googlenet", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_v2_s", "mnasnet1_0",
             "shufflenet_v2_x1_0", "regnet_x_400mf", "regnet_y_400mf", "convnext_tiny"]  # fmt: skip
_LIGHT_TIMM = ["efficientnet_b0"]
_HEAVY_TIMM = ["resnet50d", "cspdarknet53", "ghostnet_100", "hrnet_w18_small", "res2net50_26w_4s",
               "mobilenetv3_large_100", "convnext_nano", "rexnet_100", "dla34"]  # fmt: skip


def _parity(source: str, name: str) -> None:
    module = _build(source, name)
    size = {"inception_v3": 75, "hrnet_w18_small": 64, "alexnet": 64}.get(name, 32)
    converted = converters.from_torch(module, input_shape=(size, size, 3))
    names = [n for n, _ in module.named_children() if n in converted.layer_names] + ["output"]
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    expected = _torch_outputs(module, x, names)
    names = [n for n in names if n in expected]
    view = converted.with_outputs(names)
    got = jax.jit(view.apply)(view.params, np.transpose(x.numpy(), (0, 2, 3, 1)))
    for n in names:
        ref = expected[n]
        err = np.abs(_nchw(got[n]) - ref).max() / np.abs(ref).max()
        assert err < 1e-4, f"{name} {n}: relative error {err:.2e}"


@pytest.mark.parametrize("name", _LIGHT_TV)
def test_torchvision_forward_equals_pytorch_eval_at_every_top_level_module(name):
    _parity("torchvision", name)


@pytest.mark.slow
@pytest.mark.parametrize("name", _HEAVY_TV)
def test_torchvision_forward_equals_pytorch_eval_heavy(name):
    _parity("torchvision", name)


@pytest.mark.parametrize("name", _LIGHT_TIMM)
def test_timm_forward_equals_pytorch_eval_at_every_top_level_module(name):
    _parity("timm", name)


@pytest.mark.slow
@pytest.mark.parametrize("name", _HEAVY_TIMM)
def test_timm_forward_equals_pytorch_eval_heavy(name):
    _parity("timm", name)


def test_requested_module_paths_match_pytorch_hooks_including_repeated_calls():
    module = _build("torchvision", "resnet18")
    converted = converters.from_torch(
        module, ["layer3.1.relu", "layer3.1.relu:1", "layer2.0.bn2"], input_shape=(32, 32, 3)
    )
    seen: dict[str, list] = {}
    mods = dict(module.named_modules())
    for path in ("layer3.1.relu", "layer2.0.bn2"):
        mods[path].register_forward_hook(
            lambda m, i, o, p=path: seen.setdefault(p, []).append(o.clone()) and None
        )
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        module(x)
    got = converted(np.transpose(x.numpy(), (0, 2, 3, 1)))
    for name, ref in (("layer3.1.relu", seen["layer3.1.relu"][0]), ("layer3.1.relu:1", seen["layer3.1.relu"][1]),
                      ("layer2.0.bn2", seen["layer2.0.bn2"][0])):  # fmt: skip
        np.testing.assert_allclose(_nchw(got[name]), ref.numpy(), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- RF


@pytest.mark.parametrize(
    ("name", "layer", "size"),
    [("resnet18", "layer3", 320), ("squeezenet1_1", "features", 320), ("alexnet", "features", 448)],
)  # fmt: skip
def test_rf_equals_pytorch_float64_autograd_ground_truth(name, layer, size):
    module = _build("torchvision", name)
    rf = rfjax.receptive_field(module, input_shape=(size, size, 3), layer=layer)
    want_size, want_stride, want_offset = _torch_rf(module, layer, size)
    assert (rf.size.h, rf.size.w) == (want_size, want_size)
    assert (rf.stride.h, rf.stride.w) == (want_stride, want_stride)
    assert (rf.offset.h, rf.offset.w) == (want_offset, want_offset)
    assert not rf.global_


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "layer", "size"),
    [("resnet50", "layer4", 640), ("mobilenet_v2", "features", 736), ("vgg16_bn", "features", 448)],
)
def test_deep_rf_equals_pytorch_float64_autograd_ground_truth(name, layer, size):
    module = _build("torchvision", name)
    rf = rfjax.receptive_field(module, input_shape=(size, size, 3), layer=layer)
    want_size, want_stride, want_offset = _torch_rf(module, layer, size)
    assert (rf.size.h, rf.stride.h, rf.offset.h) == (want_size, want_stride, want_offset)


def test_closed_form_of_chain_configs_agrees_with_the_autograd_ground_truth():
    module = _build("torchvision", "squeezenet1_1")
    assert _chain_rf(module.features) == _torch_rf(module, "features", 320)[:2] == (207, 16)


def test_squeeze_excitation_model_is_flagged_global_with_its_local_rf():
    module = _build("torchvision", "mobilenet_v3_small")
    rf = rfjax.receptive_field(module, input_shape=(224, 224, 3), layer="features", grow=True)
    assert rf.global_
    assert (rf.size.h, rf.size.w, rf.stride.h) == (
        *[_chain_rf(module.features)[0]] * 2,
        _chain_rf(module.features)[1],
    )


def test_closed_form_bounds_from_the_traced_program():
    chain = _build("torchvision", "mobilenet_v3_small")
    bound = converters.from_torch(chain, input_shape=(64, 64, 3)).rf_bound("features")
    assert (bound.size.h, bound.stride.h) == _chain_rf(chain.features)
    inception = converters.from_torch(_build("torchvision", "inception_v3"), input_shape=(299, 299, 3))
    bound = inception.rf_bound("Mixed_7c")
    assert (bound.size, bound.stride) == ((1311, 1311), (32, 32))  # Araujo et al.'s published table
    assert inception.rf_bound("fc") is None  # global


def test_one_channel_copy_gives_the_full_channel_rf_and_falls_back_where_channels_are_selected():
    module = _build("torchvision", "shufflenet_v2_x1_0")  # channel shuffle and chunk: no one-channel copy
    converted = converters.from_torch(module, input_shape=(32, 32, 3))
    one = converted.prepared(one_channel=True).with_outputs("stage2")
    full = converted.prepared().with_outputs("stage2")
    x = np.ones((1, 32, 32, 3), np.float32)
    assert one(x)["stage2"].shape == full(x)["stage2"].shape  # the full-channel copy was traced
    assert converted.one_channel_fallbacks
    resnet = converters.from_torch(_build("torchvision", "resnet18"), input_shape=(32, 32, 3))
    assert resnet.prepared(one_channel=True).with_outputs("layer2")(x)["layer2"].shape[-1] == 1
    assert not resnet.one_channel_fallbacks


def _support_rf(module: torch.nn.Module, layer: str, size: int) -> tuple[int, int]:
    """RF size and stride along h of ``layer`` from PyTorch float64 autograd on the module
    as it is (random weights, random input: no cancellation to exact zeros), the input-
    gradient support of two neighbouring central cells."""
    model = copy.deepcopy(module).double().eval()
    out: dict[str, torch.Tensor] = {}
    dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: out.update(y=o))
    x = torch.randn(1, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    model(x)
    y, rows = out["y"], []
    i = y.shape[2] // 2
    for cell in (i, i + 1):
        (g,) = torch.autograd.grad(y[0, :, cell, y.shape[3] // 2].sum(), x, retain_graph=True)
        nz = np.nonzero(g[0].abs().sum(0).sum(1).numpy())[0]
        rows.append((nz.min(), nz.max()))
    return int(rows[0][1] - rows[0][0] + 1), int(rows[1][0] - rows[0][0])


@pytest.mark.parametrize(
    ("layer", "n"), [("features.1", 160), pytest.param("features.3", 320, marks=pytest.mark.slow)]
)
def test_convnext_gets_the_one_channel_copy_and_its_rf_is_exact(layer, n):
    """ConvNeXt: layer norms over channels, linear layers on channels-last tensors and
    layer scales select no channels, so the one-channel copy applies (no fallback). Its
    RFs equal the closed form of its configuration and PyTorch's own float64 autograd."""
    module = _build("torchvision", "convnext_tiny")
    converted = converters.from_torch(module, input_shape=(32, 32, 3))
    x = np.ones((1, 32, 32, 3), np.float32)
    assert converted.prepared(one_channel=True).with_outputs(layer)(x)[layer].shape[-1] == 1
    assert not converted.one_channel_fallbacks
    # stem conv 4x4/4; stages of 3 and 3 blocks with a 7x7 depthwise conv each, between
    # them a 2x2/2 downsampling conv: features.1 ends stage 1, features.3 stage 2
    size, jump = 4, 4
    closed = {}
    for name, blocks in (("features.1", 3), ("features.3", 3)):
        size += blocks * 6 * jump
        closed[name] = (size, jump)
        size, jump = size + jump, jump * 2  # the downsampling conv after it
    rf = rfjax.receptive_field(module, input_shape=(n, n, 3), layer=layer)
    assert (rf.size.h, rf.size.w) == (closed[layer][0],) * 2 and rf.stride.h == closed[layer][1]
    assert (rf.size.h, rf.stride.h) == _support_rf(module, layer, n)
    assert not rf.global_


def test_prepared_copy_makes_batch_norm_exactly_the_identity():
    module = torch.nn.Sequential(torch.nn.BatchNorm2d(3, eps=0.1).eval())
    with torch.no_grad():
        module[0].running_var.fill_(4.0)
        module[0].running_mean.fill_(2.0)
    x = np.random.default_rng(0).normal(size=(1, 5, 5, 3)).astype(np.float32)
    converted = converters.from_torch(module, input_shape=(5, 5, 3))
    np.testing.assert_array_equal(converted.prepared()(x)["output"], x)


def _mixed_ops_module() -> torch.nn.Module:
    """Every convolution and pooling form the converter rewrites channels-last: a
    strided 7x7 stem, max pooling with padding and ceil mode, a depthwise 3x3, a 1x1,
    a grouped dilated 3x3, a residual sum, ReLU6 and average pooling."""
    torch.manual_seed(3)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 7, stride=2, padding=3)
            self.pool = torch.nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
            self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.pw = torch.nn.Conv2d(8, 16, 1)
            self.grouped = torch.nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4)
            self.avg = torch.nn.AvgPool2d(2, ceil_mode=True)

        def forward(self, x):
            y = self.pool(torch.relu(self.stem(x)))
            y = self.pw(torch.nn.functional.relu6(self.dw(y)) + y)
            return self.avg(self.grouped(y) + y)

    return Net().eval()


@pytest.mark.parametrize("constant", [True, False], ids=["ties", "random"])
def test_input_gradients_equal_pytorch_autograd(constant):
    """Every output cell's input gradient (plain mode, max-pool ties included: PyTorch
    and rfjax both route a window's gradient to its first maximum) equals PyTorch's own
    autograd, so the channels-last rewrite of convolutions and pooling changes nothing."""
    module = _mixed_ops_module()
    n = 29
    x = (
        torch.ones(1, 3, n, n)
        if constant
        else torch.randn(1, 3, n, n, generator=torch.Generator().manual_seed(4))
    )
    with torch.no_grad():
        if constant:  # equal weights: ties in every pooling window
            for p in module.parameters():
                p.fill_(0.1)
    xr = x.clone().requires_grad_(True)
    y = module(xr)
    _, _, ho, wo = y.shape
    expected = np.stack(
        [
            torch.autograd.grad(y[0, :, i, j].sum(), xr, retain_graph=True)[0][0].sum(0).numpy()
            for i in range(ho)
            for j in range(wo)
        ]
    )
    converted = converters.from_torch(module, input_shape=(n, n, 3))
    (maps,) = rfjax.gradient_maps(
        converted.apply, np.transpose(x.numpy(), (0, 2, 3, 1)), params=converted.params, input_channels="sum"
    ).values()
    got = np.asarray(maps.maps).reshape(ho * wo, n, n)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_array_equal(got != 0, expected != 0)


@pytest.mark.slow
def test_feature_pyramid_levels_in_one_call():
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    fpn = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5).eval()
    converted = converters.from_torch(fpn, input_shape=(64, 64, 3))
    assert set(converted.output_names) == {"0", "1", "2", "3", "pool"}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = fpn(x)
    got = converted(np.transpose(x.numpy(), (0, 2, 3, 1)))
    for k, v in ref.items():
        np.testing.assert_allclose(_nchw(got[k]), v.numpy(), rtol=1e-4, atol=1e-4 * float(v.abs().max()))


# --------------------------------------------------------------------------- bad input


def test_unknown_module_path_suggests_the_nearest_names():
    with pytest.raises(RFError, match="layer4"):
        converters.from_torch(_build("torchvision", "resnet18"), "layer4.2", input_shape=(32, 32, 3))


def test_wrong_input_channel_count_names_the_first_convolution():
    with pytest.raises(RFError, match="'conv1'"):
        converters.from_torch(_build("torchvision", "resnet18"), input_shape=(32, 32, 1))


def test_training_mode_module_warns_once_and_is_left_untouched():
    module = _build("torchvision", "resnet18").train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = converters.from_torch(module, input_shape=(32, 32, 3))
    assert len([w for w in caught if issubclass(w.category, UserWarning)]) == 1
    assert module.training and all(m.training for m in module.modules())
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = copy.deepcopy(module).eval()(x).numpy()
    got = converted(np.transpose(x.numpy(), (0, 2, 3, 1)))["output"]
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-5)


class _Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y if y.sum() > 0 else -y


class _Pooled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.pool = torch.nn.FractionalMaxPool2d(2, output_size=(4, 4))

    def forward(self, x):
        return self.pool(self.conv(x))


class _Texty(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return "done"


def test_control_flow_on_tensor_values_is_refused_with_its_cause():
    with pytest.raises(RFError) as info:
        converters.from_torch(_Branchy(), input_shape=(16, 16, 3))
    assert isinstance(info.value.__cause__, jax.errors.ConcretizationTypeError)


def test_op_without_jax_lowering_names_the_module():
    with pytest.raises(RFError, match="'pool'"):
        converters.from_torch(_Pooled(), input_shape=(16, 16, 3))


def test_non_tensor_result_is_refused():
    with pytest.raises(RFError, match="str"):
        converters.from_torch(_Texty(), input_shape=(16, 16, 3))


def test_missing_torch_says_how_to_install():
    code = (
        "import sys; sys.modules['torch'] = None; import converters\n"
        "try:\n    converters.from_torch(object())\n"
        "except converters.RFError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert 'pip install "rfjax[torch]"' in out


def test_a_module_resolves_to_one_cached_converted_model():
    module = _build("torchvision", "squeezenet1_1")
    first = rfjax.resolve_model(module, (64, 64, 3))
    assert isinstance(first, rfjax.ConvertedModel)
    assert rfjax.resolve_model(module, (64, 64, 3)) is first


def test_torchvision_and_timm_names_in_a_sweep_measure_final_features(tmp_path):
    from rfjax.arch_sweep import Arch, sweep

    rows = sweep(
        [Arch("torchvision:squeezenet1_1", input_sizes=((320, 320, 3),)), Arch("timm:nope_net")],
        tmp_path / "rows.jsonl",
        progress=False,
    )
    by_arch = {r["arch"]: r for r in rows}
    row = by_arch["torchvision:squeezenet1_1"]
    assert (row["layer"], row["status"], row["size_h"], row["stride_h"]) == ("features", "ok", 207.0, 16.0)
    assert "error" in by_arch["timm:nope_net"]


def test_final_features_are_the_last_spatial_top_level_module():
    from converters._torch._zoo import final_features

    for name, layer in (
        ("resnet18", "layer4"),
        ("mobilenet_v3_small", "features"),
        ("alexnet", "features"),  # adaptive pooling to 6x6 is global, not a feature map
    ):
        assert (
            final_features(converters.from_torch(_build("torchvision", name), input_shape=(64, 64, 3)))
            == layer
        )
