"""The launch check and the determinism check of gpu_check.sh.

Launch check: a grouped conv's forward and backward and a training smoothing step (fp32 and bf16) give
bitwise-equal outputs, gradients and buffers through Triton's own dispatch (the package's launch plans off),
a cold launch site (plans cleared: the first launch through ``JITFunction.run``) and a warm one (its generated
launch, the fast launcher where built; any fall-back to ``LaunchSite.launch`` is counted and fails the check).
Then the warm conv again: on a side stream right after a long matmul that writes its input (the input is NaN
before; a launch on another stream would read it too early), from a fresh thread, and at a shape whose
kernel takes more than 48 KB of shared memory (checked from the compiled kernel).

Determinism: at N=128, a conv's grad weight (split over pixel boxes, merged by the last program to arrive)
and a smoothing step's BatchNorm statistics (running mean and variance, the grads of gamma and beta) are
bitwise equal over repeats.

``--dry-run``: CPU tensors through the stand-in sm_90 driver (``triton_on_cpu``), whose launches compute
nothing: what is compared is what each path launched (kernel, grid, constexprs, options), tiny shapes.
"""
from __future__ import annotations

import contextlib
import copy
import threading

import torch

from stage import module

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Runner:
    """Where the checks run: a GPU (values compared), or the stand-in (launch records compared)."""

    def __init__(self, dry_run: bool, record=None):
        self.dry_run, self.record = dry_run, record
        self.device = torch.device("cpu" if dry_run else "cuda")
        self.plans = module("LAUNCH_SITES")

    def observe(self, run, *args):
        """(the tensors ``run(*args)`` returns, copied, or on the stand-in the launches it made)."""
        start = len(self.record.launches) if self.dry_run else 0
        values = run(*args)
        if self.dry_run:
            return [(x.name, x.grid, sorted(x.constexprs.items()), x.num_warps, x.num_stages)
                    for x in self.record.launches[start:] if not x.bench]
        torch.cuda.synchronize()
        return {k: v.detach().clone() for k, v in values.items() if v is not None}

    def sync(self):
        if not self.dry_run:
            torch.cuda.synchronize()

    def side_stream(self):
        return contextlib.nullcontext() if self.dry_run else torch.cuda.stream(torch.cuda.Stream())


def differences(a, b) -> list[str]:
    """What differs between two observations ([] where bitwise equal, NaNs included)."""
    if isinstance(a, list):
        return [] if a == b else [f"launches differ: {a} != {b}"]
    out = [f"{name}: only one side has it" for name in a.keys() ^ b.keys()]
    for name in a.keys() & b.keys():
        if a[name].shape != b[name].shape or a[name].dtype != b[name].dtype:
            out.append(f"{name}: {tuple(a[name].shape)} {a[name].dtype} != {tuple(b[name].shape)} {b[name].dtype}")
            continue
        x, y = (t.reshape(-1).contiguous().view(torch.uint8) for t in (a[name], b[name]))
        if not torch.equal(x, y):
            out.append(f"{name}: {(a[name] != b[name]).sum().item()} elements differ")
    return sorted(out)


def conv_case(runner: Runner, dtype, n, c, hw, group_size, memory_format=torch.channels_last, seed=0):
    """(run(x) -> output and gradients of a fresh copy of the conv, x)."""
    GroupedConv2d = module("PACKAGE").GroupedConv2d
    torch.manual_seed(seed)
    conv = GroupedConv2d(c, c, 3, padding=1, groups=c // group_size, bias=True, backend="triton")
    conv = conv.to(runner.device, dtype)
    x = torch.randn(n, c, hw, hw, device=runner.device, dtype=dtype).contiguous(memory_format=memory_format)
    grad = torch.randn_like(x)

    def run(x):
        m = copy.deepcopy(conv)
        xi = x.detach().requires_grad_()
        y = m(xi)
        y.backward(grad)
        return {"output": y, "grad input": xi.grad, "grad weight": m.weight.grad, "grad bias": m.bias.grad}

    return run, x


def smoothing_case(runner: Runner, dtype, n, c, hw, group_size, seed=0):
    """(run(u) -> output, gradients and buffers of a fresh copy of a training smoothing step, u)."""
    package = module("PACKAGE")
    torch.manual_seed(seed)
    convs = [package.GroupedConv2d(c, c, 3, padding=1, groups=c // group_size, bias=False, backend="triton")
             for _ in range(2)]
    step = package.SmoothingStep(*convs, c, backend="triton").to(runner.device, dtype).train()
    u, f, grad = (torch.randn(n, c, hw, hw, device=runner.device, dtype=dtype).contiguous(
        memory_format=torch.channels_last) for _ in range(3))

    def run(u):
        m = copy.deepcopy(step)
        ui, fi = u.detach().requires_grad_(), f.detach().clone().requires_grad_()
        out = m(ui, fi)
        out.backward(grad)
        named = {"output": out, "grad u": ui.grad, "grad f": fi.grad}
        named.update({f"grad {k}": p.grad for k, p in m.named_parameters()})
        named.update(dict(m.named_buffers()))
        return named

    return run, u


@contextlib.contextmanager
def counting_fallbacks(plans):
    """Counts calls of ``LaunchSite.launch``: a warm site's generated launch calls it only to fall back."""
    calls, original = [0], plans.LaunchSite.launch

    def launch(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    plans.LaunchSite.launch = launch
    try:
        yield calls
    finally:
        plans.LaunchSite.launch = original


def three_paths(runner: Runner, run, x) -> tuple[dict, list[str], int]:
    """({path: observation}, differences from Triton's dispatch, warm fall-backs) for triton, cold and warm."""
    plans = runner.plans
    previous = plans.set_enabled(False)
    plans.clear()
    try:
        seen = {"triton": runner.observe(run, x)}
    finally:
        plans.set_enabled(previous)
    plans.clear()
    seen["cold"] = runner.observe(run, x)
    with counting_fallbacks(plans) as fallbacks:
        seen["warm"] = runner.observe(run, x)
    problems = [f"{path}: {d}" for path in ("cold", "warm") for d in differences(seen[path], seen["triton"])]
    return seen, problems, fallbacks[0]


def _side_stream(runner: Runner, dtype, shape) -> list[str]:
    """The warm conv on a side stream right after a long matmul (K = 2^17 on a GPU) writes its input."""
    n, c, hw, gs = shape
    run, x = conv_case(runner, dtype, n, c, hw, gs, memory_format=torch.contiguous_format, seed=1)
    k = 16 if runner.dry_run else 1 << 17
    a = torch.randn(n * c, k, device=runner.device, dtype=dtype) / k ** 0.5
    b = torch.randn(k, hw * hw, device=runner.device, dtype=dtype)
    torch.mm(a, b, out=x.view(n * c, hw * hw))
    runner.observe(run, x)  # cold
    reference = runner.observe(run, x)  # warm, on the default stream
    x.fill_(float("nan"))
    runner.sync()
    with runner.side_stream():
        torch.mm(a, b, out=x.view(n * c, hw * hw))
        got = runner.observe(run, x)
    return differences(got, reference)


def _fresh_thread(runner: Runner, run, x, reference) -> list[str]:
    box = []
    thread = threading.Thread(target=lambda: box.append(runner.observe(run, x)))
    thread.start()
    thread.join()
    return differences(box[0], reference) if box else ["the thread raised (see the log)"]


def _large_shared(runner: Runner) -> dict:
    """fp32 grouped conv, N=128 C=256 8x8 group size 8: the gather tile takes 62 KB of shared memory on sm_90."""
    run, x = conv_case(runner, torch.float32, 128, 256, 8, 8, seed=2)
    seen, problems, fallbacks = three_paths(runner, run, x)
    shared = max((plan[4].metadata.shared for site in runner.plans.SITES.values()
                  for plan in site.plans.values()), default=0)
    if shared <= 48 * 1024:
        problems.append(f"the largest kernel took {shared} bytes of shared memory, not more than 48 KB")
    return {"max_shared_bytes": shared, "differences": problems, "warm_fallbacks": fallbacks}


def _launch_checks(runner: Runner) -> dict:
    results, failures = {}, []
    small = (4, 16, 6, 4) if runner.dry_run else (32, 64, 16, 8)
    for label, dtype in DTYPES.items():
        for case, make in (("conv", conv_case), ("smoothing step", smoothing_case)):
            run, x = make(runner, dtype, *small)
            seen, problems, fallbacks = three_paths(runner, run, x)
            name = f"{case} {label}"
            results[name] = {"differences": problems, "warm_fallbacks": fallbacks,
                             "compared": len(seen["triton"])}
            failures += [f"{name}: {p}" for p in problems]
            failures += [f"{name}: {fallbacks} warm launches fell back"] if fallbacks else []
            if case == "conv":
                reference = seen["warm"]
                for extra, problems in (("side stream after a matmul", _side_stream(runner, dtype, small)),
                                        ("fresh thread", _fresh_thread(runner, run, x, reference))):
                    results[f"{name}, {extra}"] = {"differences": problems}
                    failures += [f"{name}, {extra}: {p}" for p in problems]
    results["conv fp32, more than 48 KB of shared memory"] = large = _large_shared(runner)
    failures += [f"large shared memory: {p}" for p in large["differences"]]
    failures += [f"large shared memory: {large['warm_fallbacks']} warm launches fell back"] \
        if large["warm_fallbacks"] else []
    return {"checks": results, "failures": failures}


@contextlib.contextmanager
def _runner(dry_run: bool):
    if not dry_run:
        yield Runner(False)
        return
    with module("STANDIN").triton_on_cpu() as record:
        yield Runner(True, record)


def launch_stage(out: str, dry_run: bool) -> dict:
    with _runner(dry_run) as runner:
        return _launch_checks(runner)


def determinism_stage(out: str, dry_run: bool, repeats: int = 4) -> dict:
    results, failures = {}, []
    n = 4 if dry_run else 128
    with _runner(dry_run) as runner:
        cases = {"conv grad weight": (conv_case(runner, torch.float32, n, 64, 16, 8, seed=3),
                                      ("grad weight", "grad bias")),
                 "BatchNorm statistics": (smoothing_case(runner, torch.float32, n, 64, 16, 8, seed=4),
                                          ("bn1.running_mean", "bn1.running_var", "bn2.running_mean",
                                           "bn2.running_var", "grad bn1.weight", "grad bn1.bias",
                                           "grad bn2.weight", "grad bn2.bias"))}
        for name, ((run, x), keys) in cases.items():
            runs = [runner.observe(run, x) for _ in range(repeats + 1)][1:]  # the first compiles
            if not dry_run:
                runs = [{k: r[k] for k in keys} for r in runs]
                failures += [f"{name}: {k} is not finite" for k in keys if not torch.isfinite(runs[0][k]).all()]
            problems = [d for r in runs[1:] for d in differences(r, runs[0])]
            results[name] = {"repeats": repeats, "compared": list(keys), "differences": problems}
            failures += [f"{name}: {p}" for p in problems]
    return {"checks": results, "failures": failures}
