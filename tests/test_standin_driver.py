"""The stand-in CUDA driver: the real launch path (autotuner, JIT, launchers) compiles for sm_90 and
"launches" with no GPU. Each test runs in a subprocess without TRITON_INTERPRET (conftest sets it)."""
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tools.c_build import c_compiler

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton.backends.nvidia") is None,
                                reason="triton has no NVIDIA backend here")


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, code: str, autotune: str, cache_dir=None, warm: bool = False) -> str:
    """Run ``code`` from a file (triton.jit reads its kernels' source) without TRITON_INTERPRET;
    ``cache_dir``: Triton's cache (compiled kernels and persisted autotuning), else the user's. ``warm``: the
    code checks the warm launch path, so it runs with MGIAD_KERNELS_CHECK_PROMISES=0 (the switch sends every
    launch through LaunchSite.launch); else the switch is inherited (conftest sets it)."""
    script = tmp_path / "standin_case.py"
    script.write_text(textwrap.dedent(code))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["MGIAD_KERNELS_AUTOTUNE"] = autotune
    if warm:
        env["MGIAD_KERNELS_CHECK_PROMISES"] = "0"
    if cache_dir is not None:
        env["TRITON_CACHE_DIR"] = str(cache_dir)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


_CONV = """
    import torch
    from mgiad_kernels.conv import launch as conv_launch
    from mgiad_kernels.conv.geometry import ConvGeometry
    from tools.standin_driver import standin_cuda_driver
    from triton.runtime import driver

    before = driver._active
    # channels_last, as the mgiad models hold them: one gather, no copy or band before it
    x, w = (t.to(memory_format=torch.channels_last) for t in (torch.randn(2, 4, 8, 8), torch.randn(8, 2, 3, 3)))
    geo = ConvGeometry.of(x.shape, w.shape, (1, 1), (1, 1, 1, 1), (1, 1), 2)
    with standin_cuda_driver(arch=90) as rec:
        y = conv_launch.conv2d_forward(x, w, None, None, 1.0, geo)
    assert driver._active is before  # restored
"""


def test_standin_compiles_one_conv_for_sm90_and_launches_nothing(tmp_path):
    out = _run(tmp_path, _CONV + """
    assert [c.name for c in rec.compiles] == ["conv2d_gather_kernel"], rec.compiles
    c = rec.compiles[0]
    assert c.kernel.metadata.target.arch == 90 and c.n_regs > 0 and c.kernel.n_regs == c.n_regs
    assert c.specialization["src_ptr"] == [["tt.divisibility", 16]]  # CPU tensors: 64-byte aligned
    assert "conv2d_gather_kernel" in c.sass
    assert [(l.name, l.bench) for l in rec.launches] == [("conv2d_gather_kernel", False)]
    assert rec.benchmarks == []
    print("ok", c.n_regs, c.n_spills, c.shared)
    """, autotune="0")
    assert out.startswith("ok")


def test_standin_autotunes_the_conv_over_every_config_once(tmp_path):
    """MGIAD_KERNELS_AUTOTUNE=1 benchmarks every config in a first process; Triton keeps the choice on
    disk, so a second process with the same cache benchmarks nothing and launches the same config."""
    cache = tmp_path / "triton-cache"  # empty: the first process compiles and tunes everything
    out = _run(tmp_path, _CONV + """
    from mgiad_kernels.conv import kernels as conv
    n = len(conv.conv2d_gather_kernel.configs)
    assert n > 1
    assert sorted(b.index for b in rec.benchmarks) == list(range(n)), rec.benchmarks
    assert len(rec.compiles) == n and all(c.n_regs > 0 for c in rec.compiles)
    assert [l.bench for l in rec.launches] == [True] * n + [False]
    assert conv.conv2d_gather_kernel.best_config is conv.conv2d_gather_kernel.configs[0]  # fake ms: index 0 wins
    print("ok", n)
    """, autotune="1", cache_dir=cache)
    assert out.startswith("ok")
    out = _run(tmp_path, _CONV + """
    from mgiad_kernels.conv import kernels as conv
    assert rec.benchmarks == [], rec.benchmarks
    assert [l.bench for l in rec.launches] == [False]
    assert [l.constexprs["BLOCK_P"] for l in rec.launches] == [conv.conv2d_gather_kernel.configs[0].kwargs["BLOCK_P"]]
    print("ok")
    """, autotune="1", cache_dir=cache)
    assert out.startswith("ok")


def test_standin_runs_every_autotuner_hook_on_cpu_tensors(tmp_path):
    """restore_value, reset_to_zero and config pre_hooks run as on a GPU; on_launch emulates the writes."""
    out = _run(tmp_path, """
    import torch, triton, triton.language as tl
    from tools.standin_driver import standin_cuda_driver

    seen = []
    cfgs = [triton.Config({"BLOCK": b}, num_warps=1, pre_hook=lambda a: seen.append(a["BLOCK"])) for b in (16, 32)]

    @triton.autotune(configs=cfgs, key=["n"], restore_value=["out_ptr"], reset_to_zero=["cnt_ptr"])
    @triton.jit
    def bump(out_ptr, cnt_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, tl.load(out_ptr + offs, mask=offs < n) + 1, mask=offs < n)
        tl.atomic_add(cnt_ptr, 1)

    def emulate(record, args):  # what the kernel would do on a GPU
        args[0].add_(1.0)
        args[1].add_(1)

    out, cnt = torch.zeros(64), torch.full((1,), 7, dtype=torch.int32)
    with standin_cuda_driver(bench_ms=lambda cfg, i: 2.0 - i, on_launch=emulate) as rec:
        bump[lambda m: (triton.cdiv(64, m["BLOCK"]),)](out, cnt, 64)
    assert [b.index for b in rec.benchmarks] == [0, 1]
    assert bump.best_config is cfgs[1] and seen == [16, 32, 32]
    assert [l.grid for l in rec.launches] == [(4, 1, 1), (2, 1, 1), (2, 1, 1)]
    assert torch.equal(out, torch.ones(64)), out  # restored after each benchmark, one real launch
    assert cnt.item() == 1  # zeroed before each benchmark and before the final launch
    print("ok")
    """, autotune="0")
    assert out.startswith("ok")


def test_warm_launch_plans_launch_what_triton_dispatch_launches(tmp_path):
    """A warm launch skips Triton's dispatch (launch_sites): it must reach the same compiled kernel with the
    same grid and arguments as JITFunction.run, and a misaligned pointer must get its own specialization."""
    out = _run(tmp_path, """
    import torch
    from mgiad_kernels.runtime import launch_sites
    from mgiad_kernels.conv import launch as conv_launch
    from mgiad_kernels.conv.geometry import ConvGeometry
    from tools.standin_driver import standin_cuda_driver

    seen = []
    x, w = torch.randn(2, 4, 8, 8), torch.randn(8, 2, 3, 3)
    geo = ConvGeometry.of(x.shape, w.shape, (1, 1), (1, 1, 1, 1), (1, 1), 2)
    def on_launch(record, args):
        seen.append((record.grid, record.constexprs, tuple(a.data_ptr() if torch.is_tensor(a) else a for a in args)))
    with standin_cuda_driver(arch=90, on_launch=on_launch) as rec:
        y = torch.empty(2, 8, 8, 8)
        launch_sites.set_enabled(False)  # Triton's own dispatch: the reference
        conv_launch._gather(x, w, None, y, geo, transposed=False)
        launch_sites.set_enabled(True)
        conv_launch._gather(x, w, None, y, geo, transposed=False)  # cold: through Triton, makes a plan
        conv_launch._gather(x, w, None, y, geo, transposed=False)  # warm: the plan
        plans = lambda: sum(len(site.plans) for site in launch_sites.SITES.values())  # noqa: E731
        assert len(launch_sites.SITES) == 1 and plans() == 1 and len(rec.compiles) == 1
        assert seen[0] == seen[1] == seen[2], seen
        offset = torch.randn(2 * 4 * 8 * 8 + 1)[1:].view(2, 4, 8, 8)  # 4-byte aligned, not 16
        conv_launch._gather(offset, w, None, y, geo, transposed=False)
        assert len(launch_sites.SITES) == 1 and plans() == 2 and len(rec.compiles) == 2  # one site, two plans
        assert rec.compiles[1].specialization["src_ptr"] == [], rec.compiles[1].specialization
        conv_launch._gather(offset, w, None, y, geo, transposed=False)
        assert len(rec.compiles) == 2 and seen[3] == seen[4] and len(rec.launches) == 5
        y_offset = torch.empty(2 * 8 * 8 * 8 + 1)[1:].view(2, 8, 8, 8)  # another pointer misaligned instead
        conv_launch._gather(x, w, None, y_offset, geo, transposed=False)
        assert plans() == 3 and len(rec.compiles) == 3
        assert rec.compiles[2].specialization["dst_ptr"] == [] and rec.compiles[2].specialization["src_ptr"]
    assert not launch_sites.SITES  # the stand-in's plans go with it
    print("ok")
    """, autotune="0", warm=True)
    assert out.startswith("ok")




def test_a_warm_forward_call_allocates_its_output_as_the_cold_call_does(tmp_path):
    """conv2d_forward's warm call is generated with its allocation: ``torch.empty_like(x)`` where y has x's
    shape and strides, else y's shape and strides. Each input layout (dense NCHW, channels_last, a
    same-shape input that is not dense, a channel-changing and a strided conv) must get, warm, an output of
    the cold call's shape, strides and dtype, launched with the same arguments, and the warm call must
    allocate as said."""
    out = _run(tmp_path, """
    import torch
    from mgiad_kernels.conv import launch as conv_launch
    from mgiad_kernels.conv.geometry import ConvGeometry
    from tools.standin_driver import standin_cuda_driver

    seen = []
    def on_launch(record, args):  # the gather's launches (before them, the copies and bands some layouts take)
        if record.name != "conv2d_gather_kernel":
            return
        address = conv_launch.scratch(torch.device("cpu")).data_ptr()  # warm: the placeholder as its address
        seen.append((record.grid, tuple("placeholder" if type(a) is int and a == address or torch.is_tensor(a)
                                        and a.data_ptr() == address else (a.shape, a.stride(), a.dtype)
                                        if torch.is_tensor(a) else a for a in args)))
    base = torch.randn(2, 4, 8, 8)
    cases = {  # name: (x, weight, stride, the warm call's allocation)
        "nchw": (base, torch.randn(4, 2, 3, 3), 1, "empty_like"),
        "channels_last": (base.to(memory_format=torch.channels_last), torch.randn(4, 2, 3, 3), 1, "empty_like"),
        "not_dense": (torch.randn(2, 4, 8, 12)[..., :8], torch.randn(4, 2, 3, 3), 1, "new_empty_strided"),
        "channel_multiplier": (base, torch.randn(8, 2, 3, 3), 1, "new_empty_strided"),
        "stride_2": (base.to(memory_format=torch.channels_last), torch.randn(4, 2, 3, 3), 2, "new_empty_strided"),
    }
    with standin_cuda_driver(arch=90, on_launch=on_launch):
        for name, (x, w, stride, allocation) in cases.items():
            geo = ConvGeometry.of(x.shape, w.shape, (stride, stride), (1, 1, 1, 1), (1, 1), 2)
            start = len(seen)
            outputs = [conv_launch.conv2d_forward(x, w, None, None, 1.0, geo) for _ in range(3)]  # cold, then warm
            call = conv_launch._FORWARD_SITES[next(reversed(conv_launch._FORWARD_SITES))]
            assert call.__name__ == "conv2d_forward_call" and allocation in call.__code__.co_names, (name, call)
            first = outputs[0]
            for y in outputs[1:]:
                assert (y.shape, y.stride(), y.dtype) == (first.shape, first.stride(), first.dtype), name
            assert seen[start] == seen[start + 1] == seen[start + 2], name
            reference = torch.nn.functional.conv2d(x, w, stride=stride, padding=1, groups=2)
            assert first.shape == reference.shape and first.is_contiguous(
                memory_format=torch.channels_last if name in ("channels_last", "stride_2") else
                torch.contiguous_format), name
    print("ok")
    """, autotune="0", warm=True)
    assert out.startswith("ok")
_NEEDS_NOOP_LIBCUDA = pytest.mark.skipif(
    not c_compiler() or torch.cuda.is_available(),
    reason="the no-op libcuda needs a C compiler, and no GPU visible (it would stand in for its driver)")


@pytest.mark.parametrize("launcher", ["noop", pytest.param("triton", marks=_NEEDS_NOOP_LIBCUDA)])
def test_a_warm_site_launches_through_its_generated_function_and_falls_back_when_it_must(tmp_path, launcher):
    """Once warm, a site's launch is its generated function, which calls the compiled launcher itself (on
    Triton's launcher: the fast launcher); a misaligned pointer, plans disabled, a launch hook (a HookChain's
    or a plain function) and another driver each go to LaunchSite.launch (counted by patching the class), and
    the hook is called with metadata. Launches are counted by the stand-in's recorder ('noop') or by the
    no-op libcuda ('triton')."""
    out = _run(tmp_path, f"    LAUNCHER = {launcher!r}\n" + """
    import torch
    from triton import knobs
    from triton.runtime.driver import driver
    from mgiad_kernels.runtime import launch_sites
    from mgiad_kernels.conv import launch as conv_launch
    from mgiad_kernels.conv.geometry import ConvGeometry
    from tools.standin_driver import StandinCudaDriver, standin_cuda_driver

    fallbacks = []
    generic = launch_sites.LaunchSite.launch
    def counting(site, pointers, placeholder=None):
        fallbacks.append(site)
        return generic(site, pointers, placeholder)
    launch_sites.LaunchSite.launch = counting

    x, w = torch.randn(2, 4, 8, 8), torch.randn(8, 2, 3, 3)
    geo = ConvGeometry.of(x.shape, w.shape, (1, 1), (1, 1, 1, 1), (1, 1), 2)
    y = torch.empty(2, 8, 8, 8)
    offset = torch.randn(2 * 4 * 8 * 8 + 1)[1:].view(2, 4, 8, 8)  # 4-byte aligned, not 16
    seen = []

    def launched():
        if LAUNCHER == "noop":
            return len(rec.launches)
        from tools.standin_driver import noop_libcuda
        return noop_libcuda().noop_launches()

    def launch(src=x):
        before = len(fallbacks), launched()
        conv_launch._gather(src, w, None, y, geo, transposed=False)
        return len(fallbacks) - before[0], launched() - before[1]  # (fallbacks, launches)

    with standin_cuda_driver(arch=90, launcher=LAUNCHER) as rec:
        assert launch() == (1, 1)  # cold: the class's method, which generates the warm launch
        site, = launch_sites.SITES.values()
        assert "launch" in vars(site) and fallbacks == [site]
        assert (site.fast_plan is not None) == (LAUNCHER == "triton"), site.fast_plan
        assert launch() == (0, 1) and launch() == (0, 1)  # warm: the generated function alone
        assert launch(offset) == (1, 1) and launch(offset) == (1, 1)  # misaligned: the plan of its own
        assert launch() == (0, 1)
        launch_sites.set_enabled(False)
        assert launch() == (1, 1)  # through Triton's dispatch
        launch_sites.set_enabled(True)
        assert launch() == (0, 1)
        for chain in (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook):
            hook = seen.append
            chain.add(hook)
            assert launch() == (1, 1) and seen[-1] is not None and seen[-1].get()["name"] == "conv2d_gather_kernel"
            chain.remove(hook)
            assert launch() == (0, 1)
        saved, calls = knobs.runtime.launch_enter_hook, len(seen)
        knobs.runtime.launch_enter_hook = seen.append  # a plain function, as before triton 3.5
        try:
            assert launch() == (1, 1) and len(seen) == calls + 1
        finally:
            knobs.runtime.launch_enter_hook = saved
        assert launch() == (0, 1)
        first = driver.active
        driver.set_active(StandinCudaDriver(90, rec, launcher=LAUNCHER))  # another driver: the site makes a plan for it
        try:
            assert launch() == (1, 1) and launch() == (0, 1)
        finally:
            driver.set_active(first)
        assert launch() == (1, 1) and launch() == (0, 1)
        assert len(site.plans) == 2  # aligned and misaligned, the second driver's aligned plan replaced
    print("ok")
    """, autotune="0", warm=True)
    assert out.startswith("ok")


# A grouped conv fwd+bwd with bias and a run of two training smoothing steps sharing A and B: ``work()``.
_CONV_AND_STEPS = """
    import torch
    from torch import nn
    from tools.host_bench import triton_on_cpu
    from mgiad_kernels import SmoothingStep, grouped_conv2d, smoothing_steps
    from mgiad_kernels.conv import launch as conv_launch
    from mgiad_kernels.runtime import launch_sites

    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 5).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(8, 2, 3, 3, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    first = SmoothingStep(nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.Conv2d(8, 8, 3, padding=1, groups=4), 8,
                          backend="triton")
    steps = [first, SmoothingStep(first.A, first.B, 8, backend="triton")]
    u, f = torch.randn(2, 8, 6, 6, requires_grad=True), torch.randn(2, 8, 6, 6, requires_grad=True)

    def work():
        grouped_conv2d(x, w, b, padding=1, groups=4, backend="triton").square().sum().backward()
        smoothing_steps(u, f, steps)[0].square().sum().backward()
"""


def test_every_warm_launch_site_passes_what_triton_dispatch_passes(tmp_path):
    """Each launcher's site (gather and conv2d_forward, grad weight with carries, the BatchNorm kernels) must
    hand the compiled launcher the same grid, constexprs and arguments as JITFunction.run does: a grouped conv
    fwd+bwd with bias and a run of two training smoothing steps sharing A and B, launched through Triton's
    dispatch (plans off), then cold and warm through the sites."""
    out = _run(tmp_path, _CONV_AND_STEPS + """

    def normalized(args):
        scratch = conv_launch.scratch(x.device)
        # a warm launch passes the placeholder as its address
        address = scratch.data_ptr()
        return tuple("placeholder" if a is scratch or type(a) is int and a == address else (tuple(a.shape),
                     a.stride(), a.dtype, a.data_ptr() % 16) if torch.is_tensor(a) else a for a in args)

    runs = []
    def on_launch(record, args):
        runs[-1].append((record.name, record.grid, sorted(record.constexprs.items()), record.num_warps,
                         normalized(args)))

    with triton_on_cpu() as rec:
        rec.on_launch = on_launch
        for plans in (False, True, True):
            launch_sites.set_enabled(plans)
            runs.append([])
            work()
        launch_sites.set_enabled(True)
    names = {r[0] for r in runs[0]}
    assert {"conv2d_gather_kernel", "conv2d_grad_weight_kernel", "bn_backward_kernel", "bn_relu_grad_sums_kernel",
            "bn_relu_residual_kernel"} <= names, names
    assert any(dict(r[2])["CARRIES"] for r in runs[0] if r[0] == "conv2d_grad_weight_kernel")
    for i, (reference, cold, warm) in enumerate(zip(*runs)):
        assert reference == cold == warm, (i, reference, cold, warm)
    assert len(runs[0]) == len(runs[1]) == len(runs[2])
    print("ok", len(runs[0]))
    """, autotune="0", warm=True)
    assert out.startswith("ok")


@_NEEDS_NOOP_LIBCUDA
def test_warm_launches_hand_the_driver_what_tritons_own_launcher_hands_it(tmp_path):
    """Under launcher='triton' every launch goes through Triton's own CUDA launcher, linked against the no-op
    libcuda, which keeps each launch's grid, block, shared memory, attributes, stream, function and kernel
    parameters. A grouped conv fwd+bwd with bias and two training smoothing steps, launched through Triton's
    dispatch (plans off), then cold and warm through the sites (warm: the fast launcher on each site's packed
    plan), then cold and warm again with no fast launcher (the placeholder as an address, Triton's C launch
    function called directly), must reach the driver with the same launches: grids, blocks, functions,
    scalars and pointers (the placeholder's address at the same positions, the inputs' own addresses, the
    others' alignment)."""
    out = _run(tmp_path, _CONV_AND_STEPS + """
    from tools.standin_driver import _KERNELS, describe_to_driver, driver_launches, noop_libcuda

    def launches(plans=True):
        launch_sites.set_enabled(plans)
        start = noop_libcuda().noop_launches()
        work()
        return driver_launches(start)

    with triton_on_cpu(launcher="triton") as rec:
        launches(plans=False)  # compiles and loads every kernel
        for kernel in list(_KERNELS):
            describe_to_driver(kernel)
        runs = [launches(plans=False), launches(), launches()]
        fast = [site for site in launch_sites.SITES.values() if site.fast_plan is not None]
        assert fast and all("fast_launch" in site.launch.__code__.co_names for site in fast), \
            "no warm site calls the fast launcher"
        forward, = conv_launch._FORWARD_SITES.values()  # conv2d_forward's: allocation and launch generated
        assert forward.__name__ == "conv2d_forward_call" and "fast_launch" in forward.__code__.co_names
        launch_sites.clear()
        launch_sites.fast_launcher, saved = (lambda: None), launch_sites.fast_launcher
        try:
            runs += [launches(), launches()]
            direct = [site for site in launch_sites.SITES.values() if "launch_c" in site.launch.__code__.co_names]
            assert direct and not any(site.fast_plan for site in launch_sites.SITES.values()), \
                "no warm site calls Triton's C launch function"
            forward, = conv_launch._FORWARD_SITES.values()
            assert forward.__name__ == "conv2d_forward_call" and "launch_c" in forward.__code__.co_names
        finally:
            launch_sites.fast_launcher = saved
        launch_sites.set_enabled(True)
        assert not rec.launches  # Triton's launcher records nothing

    kinds = {k.function: [t for t in k.src.signature.values() if t != "constexpr"] + ["*", "*"] for k in _KERNELS}
    placeholder = conv_launch.scratch(x.device).data_ptr()
    inputs = {t.data_ptr(): name for name, t in dict(x=x, w=w, b=b, u=u, f=f).items()}

    def normalized(launch):
        assert launch.params is not None
        return launch._replace(params=tuple(
            ("placeholder" if p == placeholder else "null" if p == 0 else inputs.get(p, p % 16)) if t[0] == "*"
            else p for t, p in zip(kinds[launch.function], launch.params)))

    reference, *others = ([normalized(launch) for launch in run] for run in runs)
    assert len(reference) >= 15 and all(len(other) == len(reference) for other in others)
    for i, launch in enumerate(reference):
        assert all(other[i] == launch for other in others), (i, launch, [other[i] for other in others])
    assert any("placeholder" in launch.params for launch in reference)
    print("ok", len(reference))
    """, autotune="0", warm=True)
    assert out.startswith("ok")


@_NEEDS_NOOP_LIBCUDA
def test_the_fast_launcher_refuses_bad_calls_and_declines_what_triton_must_launch(tmp_path):
    """The fast launcher's C function, bound to the no-op libcuda: a plan launches with the given tensors'
    addresses written in (kept by the driver); a wrong tensor count or a plan that is not bytes is a
    TypeError naming what it takes; a tensor not 16-byte aligned is declined (False), an empty grid
    launches nothing (True), both with no driver call."""
    out = _run(tmp_path, """
    import types
    import pytest
    import torch
    from mgiad_kernels.runtime import fast_launch
    from tools.standin_driver import driver_launches, noop_libcuda

    lib = noop_libcuda()
    launch = fast_launch.launcher()
    assert launch is not None
    kernel = types.SimpleNamespace(function=4096, src=types.SimpleNamespace(signature={"a": "*fp32", "n": "i32"}),
                                   metadata=types.SimpleNamespace(num_warps=2, num_ctas=1, shared=64,
                                                                  launch_cooperative_grid=False, launch_pdl=False))
    lib.noop_describe(4096, bytes([8, 4, 8, 8]), 4)
    a = torch.zeros(8)
    plan = fast_launch.make_plan(kernel, (5, 1, 1), (None, 77), (0,))
    start = lib.noop_launches()
    assert launch(plan, 9, a) is True
    (grid, block, shared, attributes, stream, function, params), = driver_launches(start)
    assert (grid, block, shared, attributes, stream, function) == ((5, 1, 1), (64, 1, 1), 64, 0, 9, 4096)
    assert params == (a.data_ptr(), 77, 0, 0)
    with pytest.raises(TypeError, match="the plan launches on 1 tensors, got 2"):
        launch(plan, 0, a, a)
    with pytest.raises(TypeError, match="plan: bytes"):
        launch(bytearray(plan), 0, a)
    misaligned = torch.zeros(9)[1:]
    assert launch(plan, 0, misaligned) is False
    assert launch(fast_launch.make_plan(kernel, (0, 1, 1), (None, 77), (0,)), 0, a) is True
    assert lib.noop_launches() == start + 1  # neither reached the driver
    print("ok")
    """, autotune="0")
    assert out.startswith("ok")
