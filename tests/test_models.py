"""Models: weight counts, backend equivalence (Triton under the interpreter vs torch), training, portability."""
import pytest
import torch
from support import DEVICE, REL_TOL, rel_err

from mgiad import MGiaD, MgNet, resnet18_cifar, resnet20
from mgiad.param_table import count_weights, markdown

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
        assert fh.read() == markdown(), "docs/param_counts.md is stale: python -m mgiad.param_table > docs/param_counts.md"


def _tiny_models(backend):
    return {
        "mgiad": MGiaD(10, 3, widths=(8, 16), smoothing_steps=(1, 1), coarsest_channels=4, group_size=4,
                       post_smoothing=1, backend=backend),
        "mgnet": MgNet(10, 3, widths=(8, 16), smoothing_steps=(2, 1), share="AB", group_size=4, backend=backend),
        "mgnet-A-dense": MgNet(10, 3, widths=(4, 8), smoothing_steps=(2, 1), share="A", backend=backend),
        "resnet20": resnet20(10, backend=backend),
    }


@pytest.mark.parametrize("name", ["mgiad", "mgnet", "mgnet-A-dense"])
def test_triton_backend_matches_torch_backend(name):
    """Same parameters, same batch: logits and every parameter's gradient agree (train mode)."""
    torch.manual_seed(0)
    ref = _tiny_models("torch")[name].to(DEVICE)
    tri = _tiny_models("triton")[name].to(DEVICE)
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    out_ref, out_tri = ref(x), tri(x)
    assert rel_err(out_tri, out_ref) < 1e-4
    out_ref.square().sum().backward()
    out_tri.square().sum().backward()
    for (pname, p_ref), p_tri in zip(ref.named_parameters(), tri.parameters()):
        assert p_tri.grad is not None, pname
        assert rel_err(p_tri.grad, p_ref.grad) < 1e-3, pname


@pytest.mark.parametrize("name", ["mgiad", "mgnet", "mgnet-A-dense", "resnet20"])
def test_model_overfits_a_few_batches(name):
    """On the torch backend (the interpreter is too slow for 15 steps); the next test ties Triton to it."""
    torch.manual_seed(1)
    model = _tiny_models("torch")[name].to(DEVICE)
    x = torch.randn(8, 3, 8, 8, device=DEVICE)
    y = torch.randint(0, 10, (8,), device=DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_training_on_triton_follows_torch_step_for_step():
    torch.manual_seed(4)
    ref = MgNet(10, 3, widths=(4, 8), smoothing_steps=(1, 1), backend="torch").to(DEVICE)
    tri = MgNet(10, 3, widths=(4, 8), smoothing_steps=(1, 1), backend="triton").to(DEVICE)
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 6, 6, device=DEVICE)
    y = torch.randint(0, 10, (4,), device=DEVICE)
    losses = {}
    for name, model in (("torch", ref), ("triton", tri)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        losses[name] = []
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    assert losses["triton"] == pytest.approx(losses["torch"], rel=1e-4)
    for (pname, p_ref), p_tri in zip(ref.named_parameters(), tri.parameters()):
        assert rel_err(p_tri, p_ref) < 1e-4, pname


def test_eval_mode_is_deterministic_and_state_dict_ports_across_backends():
    torch.manual_seed(2)
    tri = _tiny_models("triton")["mgiad"].to(DEVICE)
    tri.train()
    tri(torch.randn(4, 3, 8, 8, device=DEVICE))  # move the running statistics off their defaults
    tri.eval()
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    with torch.no_grad():
        a, b = tri(x), tri(x)
        assert torch.equal(a, b)
        ref = _tiny_models("torch")["mgiad"].to(DEVICE)
        ref.load_state_dict(tri.state_dict())
        ref.eval()
        assert rel_err(ref(x), a) < REL_TOL[torch.float32] * 10


def test_same_parameter_names_on_both_backends():
    assert list(_tiny_models("torch")["mgiad"].state_dict()) == list(_tiny_models("triton")["mgiad"].state_dict())


def test_torch_compile_runs_a_model_on_cpu():
    torch.manual_seed(3)
    model = _tiny_models("triton")["mgnet"].to(DEVICE)
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    out = compiled(x)
    out.sum().backward()
    assert rel_err(out, model(x)) < 1e-4


BAD_CONFIGS = [
    pytest.param(lambda: MGiaD(widths=(12, 24), smoothing_steps=(1, 1), coarsest_channels=3, group_size=8),
                 "group_size=8 must divide", id="mgiad-width-not-divisible"),
    pytest.param(lambda: MGiaD(widths=(16, 32), smoothing_steps=(1, 1), coarsest_channels=32, group_size=4),
                 "coarsest_channels=32 is larger than the level width 16", id="mgiad-coarsest-too-large"),
    pytest.param(lambda: MGiaD(widths=(), smoothing_steps=()), "widths must be a non-empty", id="mgiad-empty-widths"),
    pytest.param(lambda: MGiaD(smoothing_steps=(2, 2)), "one entry per level", id="mgiad-steps-length"),
    pytest.param(lambda: MGiaD(channel_scale=0), "channel_scale must be", id="mgiad-scale-zero"),
    pytest.param(lambda: MgNet(share="B"), "share must be one of", id="mgnet-unknown-share"),
    pytest.param(lambda: MgNet(group_size=48), "group_size=48 must divide every width", id="mgnet-group-size"),
    pytest.param(lambda: MgNet(widths=(64, 96), smoothing_steps=(1, 1)), "multiple of the previous", id="mgnet-width-not-multiple"),
    pytest.param(lambda: MgNet(backend="cudnn"), "backend must be one of", id="mgnet-backend"),
    pytest.param(lambda: resnet20(num_classes=0), "num_classes must be", id="resnet-classes"),
]


@pytest.mark.parametrize("build,message", BAD_CONFIGS)
def test_bad_configuration_fails_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()
