"""``use_kernels``: a model's convolutions swapped for GroupedConv2d in place, with the same Parameter objects and
state_dict, a report of what it swapped and what it left and why, an undo, and the converted model under
torch.compile and DistributedDataParallel."""
import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from launch_counter import counting_launches
from support import DEVICE, assert_close_rel
from torch import nn

from mgiad_kernels import ConversionReport, GroupedConv2d, restore_convs, use_kernels

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _net() -> nn.Sequential:
    """A dense stem, grouped and depthwise convs (one shared by two parents), a BatchNorm, a head."""
    shared = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)
    return nn.Sequential(nn.Conv2d(3, 8, 1), shared, nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect"), shared),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_default_swaps_grouped_convs_keeping_parameters_state_dict_and_optimizer():
    torch.manual_seed(0)
    model = _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    params, state = dict(model.named_parameters()), model.state_dict()
    report = use_kernels(model, backend="torch")
    assert isinstance(report, ConversionReport) and report.backend == "torch"
    assert report.swapped == ["1", "4.0"] and list(report.left) == ["0"] and "groups=1" in report.left["0"]
    assert type(model[0]) is nn.Conv2d and isinstance(model[1], GroupedConv2d) and model[4][1] is model[1]
    assert model[1].backend == "torch" and model[4][0].padding_mode == "reflect"
    assert dict(model.named_parameters()) == params  # the same objects, under the same names
    now = model.state_dict()
    assert now.keys() == state.keys() and all(now[k].data_ptr() == v.data_ptr() for k, v in state.items())
    before = {k: v.detach().clone() for k, v in params.items()}
    F.cross_entropy(model(torch.randn(2, 3, 6, 6)), torch.tensor([0, 3])).backward()
    optimizer.step()  # built before the call, it steps the swapped modules' parameters
    assert not torch.equal(model[1].weight, before["1.weight"]) and not torch.equal(model[4][0].bias,
                                                                                     before["4.0.bias"])
    assert "2 convolutions on the kernels" in str(report) and "left    0: groups=1" in str(report)


def test_all_and_a_predicate_choose_the_convs():
    assert use_kernels(_net(), select="all").swapped == ["0", "1", "4.0"]
    report = use_kernels(_net(), select=lambda name, conv: conv.kernel_size == (3, 3) and name != "1")
    assert report.swapped == ["4.0"] and report.left == {"0": "not chosen by select", "1": "not chosen by select"}


class _OwnForward(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2


class _Tagged(nn.Conv2d):
    tag = "kept"


def test_what_it_leaves_and_why():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2).double(), _OwnForward(4, 4, 3, groups=2),
                          _Tagged(4, 4, 3, groups=2), GroupedConv2d(4, 4, 3, groups=2),
                          nn.utils.parametrizations.weight_norm(nn.Conv2d(4, 4, 3, groups=2)),
                          nn.LazyConv2d(4, 3, groups=2), nn.Conv2d(4, 4, 3, groups=2).half())
    report = use_kernels(model)
    assert report.swapped == ["6"]  # fp16 is served
    left = report.left
    assert "torch.float64" in left["0"] and "float32" in left["0"]
    assert "_OwnForward" in left["1"] and "its own forward" in left["1"]
    assert "_Tagged" in left["2"] and "what its class adds" in left["2"]
    assert left["3"] == "already a GroupedConv2d (backend='auto')"
    assert "parametrize" in left["4"] and "not initialized" in left["5"]
    conv = nn.Conv2d(4, 4, 3, groups=2)
    assert "the model itself" in use_kernels(conv).left[""] and type(conv) is nn.Conv2d


def test_undo_and_restore_convs_put_the_original_modules_back():
    model = _net()
    originals = list(model.modules())
    report = use_kernels(model)
    model.eval()
    assert report.undo() == 3 and list(model.modules()) == originals and report.undo() == 0
    assert not model[1].training  # what changed on the twin since the call
    use_kernels(model)
    use_kernels(model, select="all")  # two calls, one restore
    copied = copy.deepcopy(model)
    assert restore_convs(model) == 4 and list(model.modules()) == originals
    assert restore_convs(copied) == 4 and not any(isinstance(m, GroupedConv2d) for m in copied.modules())


def test_hooks_on_a_swapped_conv_keep_running():
    model = _net()
    seen = []
    model[1].register_forward_hook(lambda module, args, out: seen.append(type(module).__name__))
    use_kernels(model, backend="torch")
    model(torch.randn(1, 3, 4, 4))
    assert seen == ["GroupedConv2d", "GroupedConv2d"]


@pytest.mark.parametrize("call,error,match", [
    (lambda: use_kernels("resnet"), TypeError, "model must be a torch.nn.Module, got str"),
    (lambda: use_kernels(_net(), select="grouped"), ValueError, "select must be None .* got 'grouped'"),
    (lambda: use_kernels(_net(), select=3), TypeError, "select must be None, 'all' or a callable"),
    (lambda: use_kernels(_net(), select=lambda name, conv: 1), TypeError, r"select\('0', module\) must return a bool"),
    (lambda: use_kernels(_net(), backend="cuda"), ValueError, "backend must be one of"),
    (lambda: use_kernels(_net(), "all"), TypeError, "positional"),
    (lambda: restore_convs(None), TypeError, "model must be a torch.nn.Module, got NoneType"),
])
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def _reference_and_converted(seed: int):
    torch.manual_seed(seed)
    model = _net().to(DEVICE).eval()
    reference = copy.deepcopy(model).double()
    use_kernels(model, backend="triton")
    return reference, model


def _grads(model) -> dict:
    return {name: p.grad for name, p in model.named_parameters()}


def test_a_converted_model_compiles_without_graph_breaks_and_matches():
    reference, model = _reference_and_converted(1)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager" if DEVICE.type == "cpu" else "inductor")
    x = torch.randn(2, 3, 6, 6, device=DEVICE)
    with counting_launches() as launches:
        y = compiled(x)
        y.square().sum().backward()
    y_ref = reference(x.double())
    y_ref.square().sum().backward()
    assert launches, "the swapped convolutions did not run on the kernels"
    assert_close_rel(y, y_ref, torch.float32, "compiled output")
    for name, grad in _grads(reference).items():
        assert_close_rel(_grads(model)[name], grad, torch.float32, f"compiled grad of {name}")


# One process of a gloo group: the converted model under DistributedDataParallel, an SGD built before the call
# stepping it, against the unconverted model stepped alone (a process group is left in a subprocess: gloo's
# threads can abort at interpreter exit, pytorch/pytorch#179291).
_DDP = """
    import copy, os, sys

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from launch_counter import counting_launches
    from test_use_kernels import _net

    from mgiad_kernels import use_kernels

    dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
    torch.manual_seed(2)
    model = _net().eval()
    reference = copy.deepcopy(model)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (model, reference)]
    report = use_kernels(model, backend="triton")
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    x, y = torch.randn(2, 3, 6, 6), torch.tensor([1, 2])
    with counting_launches() as launches:
        for net, optimizer in zip((ddp, reference), optimizers):
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
    assert launches, "the swapped convolutions did not run on the kernels"
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    dist.destroy_process_group()
    print("ddp ok", len(report.swapped))
    sys.stdout.flush()
    os._exit(0)
"""


def test_a_converted_model_trains_under_ddp(tmp_path):
    script = tmp_path / "ddp_step.py"
    script.write_text(textwrap.dedent(_DDP))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, os.path.join(_ROOT, "tests"), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "store")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "ddp ok 2" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
