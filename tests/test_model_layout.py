"""Models are fast as constructed: their convolution weights are channels_last from construction, so a model
trained in a user's own loop (no ``.to(memory_format=...)`` call) launches the kernel variants that ``mgiad
train`` launches (it calls ``model.to(memory_format=torch.channels_last)`` on a GPU); values, state_dicts and
the layout through ``.to()`` are those of any nn.Module."""
import copy
import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from test_models import TINY

from mgiad.models.layers import conv1x1, conv3x3
from mgiad_kernels import GroupedConv2d

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _strides(model: torch.nn.Module) -> dict:
    return {name: t.stride() for name, t in model.state_dict().items()}


@pytest.mark.parametrize("name", list(TINY))
def test_every_model_holds_the_layout_mgiad_train_gives_it(name):
    """The launches' keys and constexprs depend on the tensors' shapes, strides and dtypes: a model whose every
    parameter and buffer has the strides ``.to(memory_format=torch.channels_last)`` gives it launches what
    ``mgiad train`` launches."""
    model = TINY[name]("torch")
    converted = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert _strides(model) == _strides(converted)
    assert any(t.dim() == 4 and t.shape[1] > 1 and t.shape[-1] > 1 and t.stride(1) == 1  # a channels_last 3x3
               for t in model.state_dict().values())


def test_the_layout_keeps_initialization_and_state_dict_values():
    torch.manual_seed(3)
    ours = [conv3x3(8, 16, 2, "torch", stride=2), conv1x1(8, 4, 4, "torch"), conv3x3(8, 8, 8, "torch")]
    torch.manual_seed(3)
    plain = [GroupedConv2d(8, 16, 3, stride=2, padding=1, groups=2, bias=False),
             GroupedConv2d(8, 4, 1, groups=4, bias=False), GroupedConv2d(8, 8, 3, padding=1, groups=8, bias=False)]
    for a, b in zip(ours, plain):
        assert a.state_dict().keys() == b.state_dict().keys()
        assert torch.equal(a.weight, b.weight)
        assert a.weight.stride() == b.weight.to(memory_format=torch.channels_last).stride() != b.weight.stride()


def test_the_layout_survives_to_copies_and_state_dict_loads():
    torch.manual_seed(0)
    model = TINY["mgiad"]("torch")
    layout = _strides(model)
    assert _strides(model.to(torch.float64)) == layout  # .to() and .cuda() preserve the memory format
    assert _strides(copy.deepcopy(model)) == layout
    assert _strides(model.to("meta")) == layout
    plain = {k: v.contiguous() for k, v in TINY["mgiad"]("torch").state_dict().items()}  # an OIHW checkpoint
    loaded = TINY["mgiad"]("torch")
    loaded.load_state_dict(plain)
    assert _strides(loaded) == layout
    assert all(torch.equal(v, plain[k]) for k, v in loaded.state_dict().items())
    buffer = io.BytesIO()
    torch.save(loaded.state_dict(), buffer)  # and a checkpoint of ours loads into an OIHW model
    buffer.seek(0)
    reference = TINY["mgiad"]("torch").to(memory_format=torch.contiguous_format)
    reference.load_state_dict(torch.load(buffer))
    assert all(torch.equal(v, plain[k]) for k, v in reference.state_dict().items())


# One training step of a small MGiaD on the stand-in sm_90 driver's real launch path, as constructed and after
# mgiad train's .to(memory_format=torch.channels_last): the kernels launched, each with its constexprs, grid,
# warps and stages. The input is channels_last, as the model's own to_model_layout makes it on a GPU.
_STEP = """
    import json

    import torch
    import torch.nn.functional as F

    from mgiad.models import MGiaD
    from tools.host_bench import triton_on_cpu

    torch.set_num_threads(1)

    def launches(convert):
        torch.manual_seed(0)
        model = MGiaD(num_classes=4, widths=(16, 32), smoothing_steps=(1, 1), coarsest_channels=8, group_size=4,
                      backend="triton")
        if convert:
            model = model.to(memory_format=torch.channels_last)
        x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
        with triton_on_cpu() as rec:
            F.cross_entropy(model(x), torch.tensor([1, 3])).backward()
        return sorted([r.name, repr((sorted(r.constexprs.items()), r.grid, r.num_warps, r.num_stages))]
                      for r in rec.launches if not r.bench)

    print(json.dumps({"constructed": launches(False), "converted": launches(True)}))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton.backends.nvidia") is None,
                    reason="triton has no NVIDIA backend here")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the stand-in driver runs where no GPU is visible")
def test_mgiad_as_constructed_launches_the_variants_of_mgiad_train(tmp_path):
    script = tmp_path / "model_layout_step.py"
    script.write_text(textwrap.dedent(_STEP))
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MGIAD_KERNELS_AUTOTUNE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    constructed, converted = ({tuple(launch) for launch in out[k]} for k in ("constructed", "converted"))
    assert {"conv2d_gather_kernel", "conv2d_grad_weight_kernel"} <= {name for name, _ in constructed}
    assert out["constructed"] == out["converted"], (sorted(constructed - converted)[:2],
                                                    sorted(converted - constructed)[:2])
