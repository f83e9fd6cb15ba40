"""The case grid of the kernel benchmark: ops, shapes, group sizes, dtypes and the providers timed for each."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

MODEL_SHAPES = [(64, 32), (128, 16), (256, 8), (192, 32), (384, 16), (768, 8), (768, 4)]  # (C, H = W)
QUICK_SHAPES = [(16, 8), (32, 4)]
GROUP_SIZES = (4, 8, 16)
CONV_PROVIDERS = ("triton", "cudnn_nchw", "cudnn_channels_last", "torch_compile")  # on a GPU
CPU_NAMES = {"cudnn_nchw": "torch_cpu_nchw", "cudnn_channels_last": "torch_cpu_channels_last"}  # what runs off-GPU
OPS = ("grouped_conv3x3", "transfer1x1", "depthwise_pool", "smoothing_step", "model_layers")
TRITON_PROVIDERS = ("triton", "triton_nchw", "triton_channels_last")
# the model layers' providers: the Triton kernels and cuDNN, each in both activation layouts
MODEL_LAYER_PROVIDERS = ("triton_nchw", "triton_channels_last", "cudnn_nchw", "cudnn_channels_last")
# (model, layer, C, H = W, channels per group, kernel): one stride-1 grouped conv of each distinct shape in
# torchvision's models at 224x224 (padding kernel // 2; tests/test_benchmark_summary.py checks them against torchvision)
MODEL_LAYERS = [
    ("resnext50_32x4d", "layer1.0.conv2", 128, 56, 4, 3), ("resnext50_32x4d", "layer2.1.conv2", 256, 28, 8, 3),
    ("resnext50_32x4d", "layer3.1.conv2", 512, 14, 16, 3), ("resnext50_32x4d", "layer4.1.conv2", 1024, 7, 32, 3),
    ("regnet_x_400mf", "trunk_output.block2.block2-1.f.b.0", 64, 28, 16, 3),
    ("regnet_x_400mf", "trunk_output.block3.block3-1.f.b.0", 160, 14, 16, 3),
    ("regnet_x_400mf", "trunk_output.block4.block4-1.f.b.0", 400, 7, 16, 3),
    ("mobilenet_v2", "features.1.conv.0.0", 32, 112, 1, 3), ("mobilenet_v2", "features.3.conv.1.0", 144, 56, 1, 3),
    ("mobilenet_v2", "features.5.conv.1.0", 192, 28, 1, 3), ("mobilenet_v2", "features.8.conv.1.0", 384, 14, 1, 3),
    ("mobilenet_v2", "features.12.conv.1.0", 576, 14, 1, 3), ("mobilenet_v2", "features.15.conv.1.0", 960, 7, 1, 3),
    ("convnext_tiny", "features.1.0.block.0", 96, 56, 1, 7), ("convnext_tiny", "features.3.0.block.0", 192, 28, 1, 7),
    ("convnext_tiny", "features.5.0.block.0", 384, 14, 1, 7), ("convnext_tiny", "features.7.0.block.0", 768, 7, 1, 7),
]


@dataclass
class Case:
    op: str
    pass_: str
    dtype: torch.dtype
    N: int
    C: int
    H: int
    W: int
    group_size: int
    extra: dict = field(default_factory=dict)

    @property
    def op_name(self) -> str:
        """The op, with the 1x1 transfer's direction where it has one; a model layer's model and layer."""
        if "model" in self.extra:
            return f"{self.extra['model']}.{self.extra['layer']}"
        return f"{self.op}_{self.extra['direction']}" if "direction" in self.extra else self.op

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    @property
    def label(self) -> str:
        return f"{self.op_name}-{self.pass_}-{self.dtype_name}-N{self.N}-C{self.C}-H{self.H}-g{self.group_size}"


def cases(quick: bool, ops, dtypes) -> list[Case]:
    """Every (op, pass, dtype, shape, group size) of ``ops``: the model shapes, or tiny ones when ``quick``."""
    shapes = QUICK_SHAPES if quick else MODEL_SHAPES
    batch = 2 if quick else 128
    out = []
    for dtype in dtypes:
        for c, h in shapes:
            for g in GROUP_SIZES:
                if c % g:
                    continue
                if "grouped_conv3x3" in ops:
                    out += [Case("grouped_conv3x3", p, dtype, batch, c, h, h, g) for p in ("fwd", "fwd+bwd")]
                if "transfer1x1" in ops:
                    out += [Case("transfer1x1", "fwd+bwd", dtype, batch, c, h, h, g, {"direction": d})
                            for d in ("halving", "doubling")]
                if "smoothing_step" in ops:
                    out.append(Case("smoothing_step", "train", dtype, batch, c, h, h, g))
            if "depthwise_pool" in ops:
                out.append(Case("depthwise_pool", "fwd+bwd", dtype, batch, c, h, h, 1))
        if "model_layers" in ops:
            out += model_layer_cases(quick, dtype)
    return out


def model_layer_cases(quick: bool, dtype: torch.dtype) -> list[Case]:
    """The forward and forward+backward of each of ``MODEL_LAYERS`` at batch 128; when ``quick`` at batch 2, at
    most 8x8 and 4 groups, the kernel and the channels per group kept, one case per distinct tiny shape."""
    out, seen = [], set()
    for model, layer, c, h, g, k in MODEL_LAYERS:
        n, c, h = (2, g * min(c // g, 4), min(h, 8)) if quick else (128, c, h)
        if (model, c, h, g, k) in seen:
            continue
        seen.add((model, c, h, g, k))
        out += [Case("model_layers", p, dtype, n, c, h, h, g, {"model": model, "layer": layer, "kernel": k})
                for p in ("fwd", "fwd+bwd")]
    return out


def providers_for(case: Case, device: torch.device) -> tuple[str, ...]:
    """The providers of a case on ``device``: on a CPU the two layouts of F.conv2d are PyTorch's CPU
    convolutions, named ``torch_cpu_nchw`` and ``torch_cpu_channels_last`` (no cuDNN runs there)."""
    providers = MODEL_LAYER_PROVIDERS if case.op == "model_layers" else CONV_PROVIDERS
    return providers if device.type == "cuda" else tuple(CPU_NAMES.get(p, p) for p in providers)


def channels_last(provider: str) -> bool:
    """Whether a provider's inputs are channels_last (every one but the ``*_nchw`` layouts)."""
    return not provider.endswith("_nchw")


def skip_reason(provider: str, device: torch.device) -> str | None:
    """Why ``provider`` is not timed on ``device`` (None: it is)."""
    if provider in TRITON_PROVIDERS and device.type != "cuda":
        return "Triton providers need a GPU (the CPU interpreter is for correctness, not timing)"
    if provider == "torch_compile" and device.type != "cuda":
        return "torch.compile max-autotune is timed on GPUs only"
    return None


def conv_geometry(case: Case) -> tuple[int, int, int, int, int]:
    """(C_in, C_out, kernel, stride, groups) of an op's convolution."""
    c, g = case.C, case.group_size
    if case.op == "grouped_conv3x3":
        return c, c, 3, 1, c // g
    if case.op == "model_layers":
        return c, c, case.extra["kernel"], 1, c // g
    if case.op == "transfer1x1":
        return (c, c // 2, 1, 1, c // g) if case.extra["direction"] == "halving" else (c // 2, c, 1, 1, c // g)
    if case.op == "depthwise_pool":
        return c, 2 * c, 3, 2, c
    raise ValueError(f"{case.op} is not a single convolution")
