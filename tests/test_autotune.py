"""The autotuned path as a GPU runs it: every config benchmarked, every autotuner hook run.

Off-GPU the kernels have one config; here each autotuned kernel gets its GPU config list and a
benchmarker that really runs each config (through the interpreter) and times the last one
fastest, so the result is computed with a different tile than the one-config run it is compared
with. Regression test for autotuning bumping a shared weight's autograd version (a placeholder
argument that the autotuner restored) and for keys that miss what changes the best config.
"""
import inspect

import pytest
import torch
from support import DEVICE, ON_GPU, rel_err

from mgiad_kernels import GroupedConv2d, SmoothingStep, grouped_conv2d

pytestmark = pytest.mark.skipif(ON_GPU, reason="the GPU autotunes for real")


@pytest.fixture
def every_config_benchmarked(monkeypatch):
    """{kernel name: [benchmark calls]}; the GPU config lists installed on the autotuned kernels."""
    from mgiad_kernels.conv import kernels as conv, launch as conv_launch, tiles
    from mgiad_kernels.runtime import launch_sites

    monkeypatch.setattr(tiles, "interpreter_enabled", lambda: False)
    monkeypatch.setattr(conv_launch, "autotune_enabled", lambda: True)
    launch_sites.clear()  # sites made before autotuning was switched on launch their one config
    gpu_configs = {conv.conv2d_gather_kernel: tiles.gather_configs(),
                   conv.conv2d_grad_weight_kernel: tiles.grad_weight_configs()}
    calls = {}
    for kernel, configs in gpu_configs.items():
        name = kernel.base_fn.__name__
        calls[name] = []

        def bench(kernel_call, quantiles=None, _log=calls[name]):
            kernel_call()  # runs the config, with the autotuner's pre and post hooks around it
            _log.append(len(_log))
            ms = 1.0 / len(_log)  # the last config benchmarked is the fastest
            return [ms, ms, ms] if quantiles else ms

        monkeypatch.setattr(kernel, "configs", configs)
        monkeypatch.setattr(kernel, "cache", {})
        monkeypatch.setattr(kernel, "_do_bench", bench)
        kernel.__dict__.pop("do_bench", None)  # a cached_property on triton >= 3.7
    yield calls
    launch_sites.clear()
    for kernel in gpu_configs:
        kernel.__dict__.pop("do_bench", None)
        kernel.cache = {}


def _conv_step(seed=0):
    torch.manual_seed(seed)
    x = torch.randn(2, 16, 6, 5, device=DEVICE, requires_grad=True)
    w = torch.randn(16, 4, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(16, device=DEVICE, requires_grad=True)
    y = grouped_conv2d(x, w, b, padding=1, groups=4, backend="triton")
    y.backward(torch.randn_like(y))
    return [y.detach(), x.grad, w.grad, b.grad]


def _two_shared_steps():
    torch.manual_seed(1)
    A = GroupedConv2d(16, 16, 3, padding=1, groups=4, bias=False, backend="triton")
    B = GroupedConv2d(16, 16, 3, padding=1, groups=4, bias=False, backend="triton")
    first, second = SmoothingStep(A, B, 16, backend="triton"), SmoothingStep(A, B, 16, backend="triton")
    u = torch.randn(2, 16, 5, 5, device=DEVICE, requires_grad=True)
    f = torch.randn(2, 16, 5, 5, device=DEVICE)
    out = second(first(u, f), f)
    out.backward(torch.randn_like(out))
    return [out.detach(), u.grad, A.weight.grad, B.weight.grad, first.bn1.weight.grad, second.bn2.bias.grad,
            first.bn1.running_var]


def _mgiad_training_step():
    from mgiad import MGiaD

    torch.manual_seed(2)
    model = MGiaD(num_classes=3, in_channels=1, widths=(8, 16), smoothing_steps=(1, 1), coarsest_channels=4,
                  group_size=4, backend="triton")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(2, 1, 4, 4), torch.tensor([0, 2])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return [p.detach().clone() for p in model.parameters()] + [b.clone() for b in model.buffers()]


@pytest.mark.parametrize("run,all_configs", [(_conv_step, True), (_two_shared_steps, True),
                                              (_mgiad_training_step, False)],
                         ids=["conv-fwd-bwd", "two-steps-sharing-A-B", "mgiad-training-step-two-configs"])
def test_every_config_benchmarked_matches_one_config(run, all_configs, every_config_benchmarked):
    """The MGiaD step has ~40 keys: it benchmarks the first two GPU configs of each kernel (every
    config of all keys takes minutes under the interpreter); the others benchmark every config."""
    from mgiad_kernels.conv import kernels as conv

    if not all_configs:
        for kernel in (conv.conv2d_gather_kernel, conv.conv2d_grad_weight_kernel):
            kernel.configs = kernel.configs[:2]
    tuned = run()
    gather_configs = len(conv.conv2d_gather_kernel.configs)
    assert gather_configs > 1
    calls = every_config_benchmarked
    assert calls["conv2d_gather_kernel"] and len(calls["conv2d_gather_kernel"]) % gather_configs == 0
    assert len(calls["conv2d_grad_weight_kernel"]) % len(conv.conv2d_grad_weight_kernel.configs) == 0
    chosen = {cfg.kwargs["BLOCK_P"] for cfg in conv.conv2d_gather_kernel.cache.values()}
    assert chosen == {conv.conv2d_gather_kernel.configs[-1].kwargs["BLOCK_P"]}
    for key in list(conv.conv2d_gather_kernel.cache):  # the same run with the one interpreter config
        del conv.conv2d_gather_kernel.cache[key]
    conv.conv2d_gather_kernel.configs = conv.conv2d_gather_kernel.configs[:1]
    conv.conv2d_grad_weight_kernel.configs = conv.conv2d_grad_weight_kernel.configs[:1]
    conv.conv2d_grad_weight_kernel.cache = {}
    reference = run()
    for i, (got, expect) in enumerate(zip(tuned, reference)):
        assert rel_err(got, expect) <= 1e-5 or torch.equal(got, expect), f"output {i} differs"


def test_autotune_keys_hold_everything_that_changes_the_best_config():
    """Every constexpr except the tile sizes, and the padding and dilation (which barely change the work),
    is in the key; H and W never are (a key per resolution would retune on every new image size)."""
    from mgiad_kernels.conv import kernels as conv

    for kernel, sizes in ((conv.conv2d_gather_kernel, {"C_DST", "C_RED", "DST_PER_GROUP", "RED_PER_GROUP"}),
                          (conv.conv2d_grad_weight_kernel, {"C_OUT", "C_IN", "OUT_PER_GROUP", "IN_PER_GROUP"})):
        params = inspect.signature(kernel.base_fn).parameters.values()
        constexprs = {p.name for p in params if str(p.annotation).endswith("constexpr")}
        tiles = {name for name in constexprs if name.startswith("BLOCK_")}
        ignored = {"PAD_H", "PAD_W", "DIL_H", "DIL_W", "EPILOGUE_NEEDS_BN"}
        assert set(kernel.keys) == (constexprs - tiles - ignored) | sizes, kernel.base_fn.__name__
        assert not {"H_src", "W_src", "H_dst", "W_dst", "H", "W", "N"} & set(kernel.keys)
    assert "TRANSPOSED" in conv.conv2d_gather_kernel.keys


def test_no_launch_hands_a_user_tensor_as_a_placeholder(monkeypatch):
    """Unused pointer arguments are the package's scratch buffer, never the weight or another input."""
    from mgiad_kernels.runtime import launch_sites
    from mgiad_kernels.conv import launch as conv_launch
    from mgiad_kernels.conv import kernels as conv

    seen = []
    original = launch_sites.LaunchSite.launch

    def record(site, pointers, placeholder=None):
        if site.jit_fn in (conv.conv2d_gather_kernel, conv.conv2d_gather_kernel.fn):
            seen.append(dict(zip(conv.conv2d_gather_kernel.arg_names, pointers)))
        return original(site, pointers, placeholder)

    monkeypatch.setattr(launch_sites.LaunchSite, "launch", record)
    x = torch.randn(1, 8, 4, 4, device=DEVICE)
    w = torch.randn(8, 2, 3, 3, device=DEVICE)
    grouped_conv2d(x, w, padding=1, groups=4, backend="triton")
    scratch = conv_launch.scratch(x.device)
    args = seen[-1]
    for name in ("bias_ptr", "other_ptr", "bn_mean_ptr", "bn_var_ptr", "bn_gamma_ptr", "bn_beta_ptr", "stats_ptr",
                 "reduced_ptr", "counter_ptr"):
        assert args[name] is scratch, name
