"""CUDA graphs for the training step (``mgiad.graphs``, ``mgiad train --cuda-graphs``).

Without a GPU: the MGiaD step that is captured (forward, loss, backward, fused SGD with a tensor lr) runs
through the real Triton launch path on the stand-in sm_90 driver under ``SyncRecorder``, which finds no host
read of device data and no output sized by data (what capture forbids); ``--cuda-graphs`` refuses what it
cannot capture, in one line naming the flag; the eager loop is still the paper's SGD step. On a GPU: the
captured step matches the same step run eagerly, through warm-up, capture, replays, a scheduler step and a
short last batch, and ``mgiad train --cuda-graphs`` trains as the eager run does.
"""
import copy
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from support import ON_GPU, REL_TOL, rel_err
from sync_recorder import DATA_SIZED_OPS, HOST_READ_OPS, INDEX_OPS, SyncRecorder

from mgiad import MGiaD
from tools import model_bench as bench
from mgiad.cli import build_parser, main
from mgiad.data import load_dataset, prepare_batch
from mgiad.graphs import WARMUP_STEPS, CapturedStep, sgd_step, use_fused_sgd
from mgiad.metrics import read_metrics
from mgiad.models.factory import build_model
from mgiad.train import Distributed, _epoch_order, train

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_NVIDIA_BACKEND = importlib.util.find_spec("triton") is None or importlib.util.find_spec(
    "triton.backends.nvidia") is None
NEEDS_GPU = pytest.mark.skipif(not ON_GPU, reason="CUDA graphs capture GPU work")
SMALL_MGIAD = dict(num_classes=10, in_channels=3, widths=(8, 16), smoothing_steps=(1, 1), coarsest_channels=8,
                   group_size=4, backend="triton")

# The step as CapturedStep captures it, on CPU tensors through the Triton launch path compiled for sm_90 (launches
# are no-ops). One warm-up step (compiles, launch plans, momentum buffers), then the recorded one, its lr a tensor.
# fp32: the package's CPU path takes no autocast, and launches compute nothing, so the dtype changes no host code.
_STEP_UNDER_RECORDER = """
    import json

    import torch

    from mgiad import MGiaD
    from tools import model_bench as bench
    from mgiad.graphs import sgd_step, tensor_lrs, use_fused_sgd
    from tools.host_bench import triton_on_cpu
    from sync_recorder import SyncRecorder

    torch.set_num_threads(1)
    with triton_on_cpu() as rec:
        torch.manual_seed(0)
        model = MGiaD(**{config}).to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        use_fused_sgd(optimizer)
        x, y = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last), torch.tensor([1, 7])
        autocast = torch.autocast("cpu", enabled=False)
        sgd_step(model, optimizer, x, y, autocast)
        start = len(rec.launches)
        with tensor_lrs(optimizer, [torch.tensor(0.05)]), SyncRecorder() as recorder:
            sgd_step(model, optimizer, x, y, autocast)
        launches = [launch.name for launch in rec.launches[start:] if not launch.bench]
    print(json.dumps({{"found": recorder.found, "aten": recorder.counts, "triton_launches": launches}}))
"""


def test_every_recorded_op_name_is_an_aten_op():
    """The recorder's lists name real ops (a misspelt name would never be found)."""
    for name in HOST_READ_OPS + DATA_SIZED_OPS + INDEX_OPS:
        assert hasattr(torch.ops.aten, name), name


def test_the_recorder_finds_host_reads_and_data_sized_outputs():
    t = torch.randn(6)
    planted = [("aten._local_scalar_dense.default", lambda: t.sum().item()),
               ("aten._local_scalar_dense.default", lambda: bool(t[0] > 0)),
               ("aten.nonzero.default", lambda: torch.where(t > 0)),
               ("aten.index.Tensor with a boolean mask", lambda: t[t > 0]),
               ("aten._unique2.default", lambda: t.unique()),
               ("aten.masked_select.default", lambda: t.masked_select(t > 0)),
               ("aten.equal.default", lambda: torch.equal(t, t)),
               ("Tensor.tolist", lambda: t.tolist())]
    for name, fn in planted:
        with SyncRecorder() as recorder:
            fn()
        assert recorder.found == {name: 1}, (name, recorder.found)
    with SyncRecorder() as recorder:
        (t + 1).relu().mul_(2)
    assert recorder.found == {} and recorder.total == 3
    assert torch.Tensor.tolist is torch._C.TensorBase.tolist  # the methods are restored


@pytest.mark.skipif(NO_NVIDIA_BACKEND, reason="triton has no NVIDIA backend here")
def test_mgiad_step_on_the_triton_path_has_no_host_sync_or_data_sized_output(tmp_path):
    script = tmp_path / "step_under_recorder.py"
    script.write_text(textwrap.dedent(_STEP_UNDER_RECORDER.format(config=SMALL_MGIAD)))
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MGIAD_KERNELS_AUTOTUNE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, os.path.join(_ROOT, "tests"), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["found"] == {}, result["found"]
    # Not vacuous: the forward and backward ran on the Triton kernels, and SGD read its lr from a tensor.
    assert len(result["triton_launches"]) >= 50, result["triton_launches"]
    aten = result["aten"]
    assert aten.get("aten._fused_sgd_.tensor_lr") == 1, aten
    assert not [op for op in aten if "convolution" in op], aten


def test_graph_providers_are_skipped_off_gpu_with_their_reason():
    assert {"triton_graphs", "torch_graphs"} <= set(bench.PROVIDERS)
    for provider in bench.GRAPH_PROVIDERS:
        assert "timed on GPUs only" in bench.skip_reason(provider, torch.device("cpu"))
        assert bench.skip_reason(provider, torch.device("cuda")) is None
    assert bench.skip_reason("torch", torch.device("cpu")) is None  # the kernel benchmark's reasons otherwise
    assert "need a GPU" in bench.skip_reason("triton", torch.device("cpu"))


def test_images_per_second_beside_the_eager_provider(tmp_path):
    """The train-step results get images/s per row, and the markdown a table of a graph provider against the
    eager provider it captures."""
    stem = str(tmp_path / "gpu-models")
    row = dict(op="train_step_mgiad", dtype="bfloat16", N=128, C=3, H=32, W=32, group_size=8)
    doc = {"results": [dict(row, provider=provider, median_ms=ms)
                       for provider, ms in (("triton", 64.0), ("triton_graphs", 16.0), ("torch", 32.0))]}
    (tmp_path / "gpu-models.json").write_text(json.dumps(doc))
    (tmp_path / "gpu-models.md").write_text("# Benchmarks\n")
    bench.add_images_per_s(stem)
    rows = json.loads((tmp_path / "gpu-models.json").read_text())["results"]
    assert [r["images_per_s"] for r in rows] == [2000.0, 8000.0, 4000.0]
    md = (tmp_path / "gpu-models.md").read_text()
    assert md.startswith("# Benchmarks\n") and "## Images per second" in md
    assert "| train_step_mgiad | bfloat16 | 128 | triton_graphs | 8000.0 | 4.00x |" in md, md
    assert "| train_step_mgiad | bfloat16 | 128 | torch | 4000.0 |  |" in md, md


def _refused(argv, capsys, monkeypatch) -> str:
    monkeypatch.setattr("mgiad.train.train", lambda args: pytest.fail("reached training"))
    with pytest.raises(SystemExit) as info:
        main(["train", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert err.startswith("mgiad train: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_cuda_graphs_on_the_cpu_is_refused(capsys, monkeypatch):
    err = _refused(["--cuda-graphs", "--device", "cpu"], capsys, monkeypatch)
    assert "--cuda-graphs needs a CUDA device (--device cuda or cuda:N), got --device cpu" in err, err
    if not ON_GPU:
        err = _refused(["--cuda-graphs"], capsys, monkeypatch)
        assert "--cuda-graphs needs a CUDA device (--device cuda or cuda:N), no CUDA GPU is available here" in err


def test_cuda_graphs_with_compile_is_refused(capsys, monkeypatch):
    assert "--cuda-graphs and --compile are exclusive" in _refused(["--cuda-graphs", "--compile"], capsys, monkeypatch)


def test_cuda_graphs_with_several_processes_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "--cuda-graphs runs in one process, got WORLD_SIZE=2" in _refused(["--cuda-graphs"], capsys, monkeypatch)


def test_the_eager_loop_is_the_papers_sgd_step(monkeypatch):
    """Without --cuda-graphs nothing is captured and the optimizer keeps torch's default implementation: two
    steps of `mgiad train` give bitwise the weights of a hand-written loop."""
    monkeypatch.setattr("mgiad.train.CapturedStep", lambda *a, **k: pytest.fail("captured without --cuda-graphs"))
    argv = ["--model", "mgnet", "--widths", "4,8", "--smoothing-steps", "1,1", "--batch-size", "32", "--backend",
            "torch", "--device", "cpu", "--epochs", "1", "--max-steps-per-epoch", "2", "--no-augment"]
    args = build_parser().parse_args(argv)
    trained = train(args)["model"]

    ds = load_dataset("digits", None)
    torch.manual_seed(args.seed)
    model = build_model(args, ds.name, ds.num_classes, ds.in_channels)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    model.train()
    for idx in _epoch_order(len(ds.train.labels), args.seed, 0, Distributed(torch.device("cpu")), args.batch_size)[:2]:
        x = prepare_batch(ds.train.images[idx], ds, False, None, torch.device("cpu"))
        loss = F.cross_entropy(model(x).float(), ds.train.labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for (name, a), b in zip(trained.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


@NEEDS_GPU
@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16], ids=["fp32", "bf16_autocast"])
def test_captured_step_matches_the_eager_step(amp_dtype):
    """Two epochs of 6 full batches and a short one: warm-up, capture, replays, a short batch run eagerly, the
    cosine schedule's lr read by the graph after capture; losses, weights, buffers and momentum as eager."""
    torch.manual_seed(0)
    model = MGiaD(**SMALL_MGIAD).cuda().to(memory_format=torch.channels_last)
    twin = copy.deepcopy(model)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4) for m in (model, twin)]
    schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=2) for o in optimizers]
    step = CapturedStep(model, optimizers[0], amp_dtype=amp_dtype)
    use_fused_sgd(optimizers[1])  # the same SGD implementation, run eagerly
    autocast = torch.autocast("cuda", dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None,
                              cache_enabled=False)
    sizes = [8] * 6 + [3]
    batches = [(torch.randn(n, 3, 16, 16, device="cuda"), torch.randint(0, 10, (n,), device="cuda")) for n in sizes]
    tol = REL_TOL[amp_dtype or torch.float32] * 5
    for epoch in range(2):
        for x, y in batches:
            loss, logits = step(x, y)
            loss_eager, logits_eager = sgd_step(twin, optimizers[1], x, y, autocast)
            assert rel_err(loss, loss_eager) <= tol and rel_err(logits, logits_eager) <= tol, epoch
        for scheduler in schedulers:
            scheduler.step()
    assert step.graph is not None and step.replays == 2 * 6 - WARMUP_STEPS
    assert optimizers[0].param_groups[0]["lr"] == optimizers[1].param_groups[0]["lr"] < 0.05
    for (name, p), p_eager in zip(model.named_parameters(), twin.parameters()):
        assert rel_err(p, p_eager) <= tol, name
        momentum, momentum_eager = optimizers[0].state[p]["momentum_buffer"], optimizers[1].state[p_eager][
            "momentum_buffer"]
        assert rel_err(momentum, momentum_eager) <= tol, name
    for (name, b), b_eager in zip(model.named_buffers(), twin.buffers()):
        assert torch.equal(b, b_eager) or rel_err(b.float(), b_eager.float()) <= tol, name


@NEEDS_GPU
def test_train_with_cuda_graphs_trains_as_the_eager_run(tmp_path):
    """Digits' 1437 training images in batches of 200: 7 full batches (3 warm-up, capture, replays) and 37 eagerly."""
    common = ["--epochs", "2", "--batch-size", "200", "--device", "cuda", "--seed", "1"]
    main(["train", "--out", str(tmp_path / "eager"), *common])
    main(["train", "--out", str(tmp_path / "graphs"), *common, "--cuda-graphs"])
    eager, graphs = (read_metrics(str(tmp_path / run / "metrics.jsonl")) for run in ("eager", "graphs"))
    assert len(graphs) == 2 and graphs[-1]["lr"] == eager[-1]["lr"]
    for a, b in zip(eager, graphs):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=5e-2), (a, b)
        assert b["test_acc"] == pytest.approx(a["test_acc"], abs=0.05), (a, b)
