"""Every model family: weight counts, backend equivalence (Triton under the interpreter vs torch) with
one SGD step, training, portability of state_dicts, eval determinism, torch.compile.

Algorithm properties of single families are in test_seed_models.py, configuration rules in
test_model_rules.py.
"""
import pytest
import torch
import torch.nn.functional as F
from support import DEVICE, REL_TOL, rel_err

from mgiad import MGICResNet, MGiaD, MgNet, MultigridNet, PolyMgNet, resnet18_cifar, resnet20
from tools.param_table import count_weights, markdown

EXACT_BASELINES = [
    pytest.param(lambda: resnet18_cifar(10), 11_173_962, id="resnet18-cifar"),
    pytest.param(lambda: resnet20(10), 269_722, id="resnet20"),
    # REFERENCE.md's MgNet counts include one unused level-1 R/I pair that ours does not build
    pytest.param(lambda: MgNet(), 2_750_666 - 1_152, id="mgnet-AB-4-levels"),
    pytest.param(lambda: MgNet(widths=(16, 32, 64), smoothing_steps=(2, 2, 2)), 100_794 - 288, id="mgnet-AB-3-levels"),
]


@pytest.mark.parametrize("build,expected", EXACT_BASELINES)
def test_baseline_weight_counts_are_exact(build, expected):
    with torch.device("meta"):
        assert count_weights(build()) == expected


# Table II rows our literal Alg. 2 construction matches within 1% (docs/param_counts.md explains the rest)
@pytest.mark.parametrize("c_k,g_s,lam,paper", [(32, 4, 1, 193_000), (64, 4, 1, 393_000), (64, 4, 3, 1_020_000)])
def test_mgiad_table2_rows_within_one_percent(c_k, g_s, lam, paper):
    with torch.device("meta"):
        ours = count_weights(MGiaD(coarsest_channels=c_k, group_size=g_s, channel_scale=lam))
    assert abs(ours / paper - 1) < 0.01, ours


def test_param_table_is_committed_and_current():
    with open("docs/param_counts.md") as fh:
        assert fh.read() == markdown(), \
            "docs/param_counts.md is stale: python -m tools.param_table > docs/param_counts.md"


TINY = {
    "mgiad": lambda b: MGiaD(10, 3, widths=(8, 16), smoothing_steps=(1, 1), coarsest_channels=4, group_size=4,
                             post_smoothing=1, backend=b),
    "mgnet": lambda b: MgNet(10, 3, widths=(8, 16), smoothing_steps=(2, 1), share="AB", group_size=4, backend=b),
    "mgnet-A-dense": lambda b: MgNet(10, 3, widths=(4, 8), smoothing_steps=(2, 1), share="A", backend=b),
    "resnet20": lambda b: resnet20(10, backend=b),
    "mgic": lambda b: MGICResNet((8, 16), (1, 1), 10, 3, group_size=4, coarsest_channels=4, backend=b),
    "poly-complex": lambda b: PolyMgNet(10, 3, widths=(4, 8), smoothing_steps=(2, 2), degree=2, roots="complex",
                                        backend=b),
    "poly-linear": lambda b: PolyMgNet(10, 3, widths=(4, 8), smoothing_steps=(1, 2), degree=1, backend=b),
    "R-MG": lambda b: MultigridNet("R-MG", 12, 10, 3, stage_widths=(4, 4, 8, 8, 8), backend=b),
    "PMG": lambda b: MultigridNet("PMG", 9, 10, 3, stage_widths=(4, 4, 8, 8, 8), backend=b),
    "MG": lambda b: MultigridNet("MG", 6, 10, 3, stage_widths=(4, 4, 8, 8, 8), backend=b),
}
ON_TRITON = [name for name in TINY if name != "resnet20"]  # resnet20's convs are plain dense ones
# the interpreter's time grows with the batch: 2 where BatchNorm allows, 4 where a coarse grid is 1x1
BATCH = {"mgiad": 2, "mgnet": 2, "mgnet-A-dense": 2}


def _tiny(name: str, backend: str) -> torch.nn.Module:
    torch.manual_seed(5)
    return TINY[name](backend)


@pytest.mark.parametrize("name", ON_TRITON)
def test_triton_backend_matches_torch_backend(name):
    """Same parameters, same batch (train mode): logits, every parameter's gradient, no aten convolution
    on the Triton backend, and the loss after one SGD step on each backend agree."""
    ref, tri = _tiny(name, "torch").to(DEVICE), _tiny(name, "triton").to(DEVICE)
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(BATCH.get(name, 4), 3, 8, 8, device=DEVICE)
    with torch.profiler.profile() as prof:
        out_tri = tri(x)
        out_tri.square().sum().backward()
    out_ref = ref(x)
    out_ref.square().sum().backward()
    assert rel_err(out_tri, out_ref) < 1e-4
    scale = max(p.grad.abs().max().item() for p in ref.parameters())
    for (pname, p_ref), p_tri in zip(ref.named_parameters(), tri.parameters()):
        assert p_tri.grad is not None, pname
        # relative to the parameter's own gradient, or to the model's largest one where that is ~0
        # (a BatchNorm bias feeding another BatchNorm)
        torch.testing.assert_close(p_tri.grad, p_ref.grad, rtol=1e-3, atol=1e-5 * scale, msg=pname)
    convs = {e.name for e in prof.events() if e.name.startswith("aten::") and "conv" in e.name}
    assert not convs, convs
    losses = []
    for model in (ref, tri):
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        with torch.no_grad():
            losses.append(model(x).square().sum().item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-4), losses


@pytest.mark.parametrize("name", list(TINY))
def test_model_overfits_a_few_batches(name):
    """On the torch backend (the interpreter is too slow for 20 steps); the test above ties Triton to it."""
    model = _tiny(name, "torch").to(DEVICE)
    x, y = torch.randn(8, 3, 8, 8, device=DEVICE), torch.randint(0, 10, (8,), device=DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("name", ON_TRITON)
def test_state_dict_ports_across_backends_and_eval_is_deterministic(name):
    tri, ref = _tiny(name, "triton").to(DEVICE), _tiny(name, "torch").to(DEVICE)
    assert list(tri.state_dict()) == list(ref.state_dict())  # parameter names do not depend on the backend
    with torch.no_grad():
        ref(torch.randn(4, 3, 8, 8, device=DEVICE))  # train mode: move the running statistics off their defaults
    tri.load_state_dict(ref.state_dict())
    tri.eval(), ref.eval()
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    with torch.no_grad():
        a, b = tri(x), tri(x)
        assert torch.equal(a, b)
        assert rel_err(ref(x), a) < REL_TOL[torch.float32] * 10


def test_torch_compile_runs_a_model_on_cpu():
    torch.manual_seed(3)
    model = _tiny("mgnet", "triton").to(DEVICE)
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    out = compiled(x)
    out.sum().backward()
    assert rel_err(out, model(x)) < 1e-4
