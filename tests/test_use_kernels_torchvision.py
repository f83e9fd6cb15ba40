"""torchvision's models on the kernels in one ``use_kernels`` call: ResNeXt and RegNet (group widths 4 to 32),
MobileNetV2 and ShuffleNetV2 (depthwise 3x3), ConvNeXt (depthwise 7x7), built with weights=None.

Every stock model converts: it swaps exactly the grouped convs, and keeps the Parameters and state_dict. Under
the interpreter a whole stock model is slow (ResNeXt-50 100 s, ConvNeXt-T 200 s, MobileNetV2 45 s, RegNetY-400MF
35 s on a CPU core), so the comparisons run ShuffleNetV2 x0.5 whole, blocks of the stock ResNeXt-50 (group widths
4 and 8) and ConvNeXt-T (stem and first stage) at their real widths, and whole width- and depth-reduced models
built from torchvision's own classes (a ResNeXt of group widths 4 to 32, MobileNetV2, ConvNeXt). Each compares
the eval output and every parameter's gradient of the converted model in fp32 with the unconverted one in float64,
within the fp32 tolerance or, where torch's own fp32 loses more (a gradient that cancels, such as that of a bias
before a LayerNorm), within 4x the unconverted fp32 model's own error.
"""
import copy

import pytest
import torch
from launch_counter import counting_launches
from support import DEVICE, REL_TOL, rel_err
from torch import nn

from mgiad_kernels import GroupedConv2d, use_kernels

models = pytest.importorskip("torchvision.models")
from torchvision.models.convnext import CNBlockConfig, ConvNeXt  # noqa: E402
from torchvision.models.mobilenetv2 import MobileNetV2  # noqa: E402
from torchvision.models.resnet import Bottleneck, ResNet  # noqa: E402

# the (channels per group, kernel size) of each stock model's grouped convs
STOCK = {"resnext50_32x4d": {(4, 3), (8, 3), (16, 3), (32, 3)}, "regnet_y_400mf": {(8, 3)},
         "mobilenet_v2": {(1, 3)}, "shufflenet_v2_x0_5": {(1, 3)}, "convnext_tiny": {(1, 7)}}


@pytest.mark.parametrize("name", list(STOCK))
def test_a_stock_model_converts_in_one_call(name):
    model = getattr(models, name)(weights=None)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    grouped = [n for n, m in convs.items() if m.groups > 1]
    params, state = dict(model.named_parameters()), model.state_dict()
    report = use_kernels(model, backend="triton")
    assert report.swapped == grouped
    assert report.left.keys() == convs.keys() - set(grouped)
    assert all(reason.startswith("groups=1") for reason in report.left.values())
    assert {(m.in_channels // m.groups, m.kernel_size[0]) for m in model.modules()
            if isinstance(m, GroupedConv2d)} == STOCK[name]
    assert dict(model.named_parameters()) == params
    now = model.state_dict()
    assert now.keys() == state.keys() and all(now[k].data_ptr() == v.data_ptr() for k, v in state.items())
    assert report.undo() == len(grouped) and all(model.get_submodule(n) is m for n, m in convs.items())


def _whole(model):
    return model


# name: (the model, the part compared, its input's shape)
CASES = {
    "resnext50_32x4d-layer1.0-layer2.0": (lambda: models.resnext50_32x4d(weights=None),
                                          lambda m: nn.Sequential(m.layer1[0], m.layer2[0]), (1, 64, 8, 8)),
    "resnext-g8-widths4to32": (lambda: ResNet(Bottleneck, [1, 1, 1, 1], groups=8, width_per_group=4, num_classes=10),
                               _whole, (1, 3, 32, 32)),
    "shufflenet_v2_x0_5": (lambda: models.shufflenet_v2_x0_5(weights=None), _whole, (1, 3, 32, 32)),
    "mobilenet_v2-reduced": (lambda: MobileNetV2(10, width_mult=0.25, inverted_residual_setting=[
        [1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 1, 2]]), _whole, (1, 3, 32, 32)),
    "convnext_tiny-features0-1": (lambda: models.convnext_tiny(weights=None), lambda m: m.features[:2],
                                  (1, 3, 32, 32)),
    "convnext-reduced": (lambda: ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10),
                         _whole, (1, 3, 32, 32)),
}


def _output_and_grads(part: nn.Module, x: torch.Tensor):
    y = part(x)
    y.square().sum().backward()
    return y, {name: p.grad for name, p in part.named_parameters()}


@pytest.mark.parametrize("name", list(CASES))
def test_a_converted_model_matches_the_unconverted_one(name):
    build, part_of, shape = CASES[name]
    torch.manual_seed(0)
    model = build().to(DEVICE).eval()
    reference = copy.deepcopy(part_of(model))
    exact = copy.deepcopy(reference).double()
    report = use_kernels(model, backend="triton")
    x = torch.randn(shape, device=DEVICE)
    with counting_launches() as launches:
        out, grads = _output_and_grads(part_of(model), x)
    assert report.swapped and {"conv2d_gather_kernel", "conv2d_grad_weight_kernel"} <= set(launches)
    fp32_out, fp32_grads = _output_and_grads(reference, x)  # torch's own fp32 error: the floor of ours
    exact_out, exact_grads = _output_and_grads(exact, x.double())
    assert grads.keys() == exact_grads.keys()
    results = {"output": (out, fp32_out, exact_out), **{n: (grads[n], fp32_grads[n], exact_grads[n]) for n in grads}}
    for what, (ours, torch_fp32, want) in results.items():
        tolerance = max(REL_TOL[torch.float32], 4 * rel_err(torch_fp32, want))
        assert rel_err(ours, want) <= tolerance, f"{what}: {rel_err(ours, want):.2e} > {tolerance:.2e}"
