"""CUDA graphs for the training step: a whole SGD step captured once, then replayed.

An MGiaD step launches ~600 Triton kernels at tens of microseconds of host time each
(``python -m tools.host_bench``), so on a GPU the host is the bottleneck; a replayed graph is one
launch. This is PyTorch's whole-network capture (the "CUDA Graphs" notes of ``torch.cuda``,
``torch.cuda.graph``): forward under autocast, the loss, backward and ``optimizer.step()`` are
captured together on static input buffers, and each later step copies its batch into them and replays.

What capture needs, and how it is met here:

- Warm-up on a side stream before capture: the first ``WARMUP_STEPS`` batches are ordinary training
  steps run on the stream that later captures; they compile every Triton kernel (and autotune, under
  ``MGIAD_KERNELS_AUTOTUNE=1``), make the launch plans, the stream's split-reduction counters and SGD's
  momentum buffers, so that capture records launches only.
- Gradients are None before capture: backward allocates them in the graph's memory pool, and every
  replay overwrites them.
- No host syncs and no data-dependent allocation inside the step: ``tests/test_cuda_graphs.py`` checks
  the MGiaD step on the Triton path on a CPU; on a GPU, capture itself refuses both.
- The learning rate is read on the device, so the scheduler keeps working after capture. SGD's fused
  implementation takes a tensor lr and reads it in the kernel (``aten._fused_sgd_.tensor_lr``); the
  foreach and for-loop implementations pass it as ``alpha=-lr``, a host scalar (a sync, refused under
  capture), and a float lr would be frozen into the graph. The step therefore sets every param group to
  ``fused=True`` and captures the optimizer too, rather than forward and backward alone with
  ``torch.cuda.make_graphed_callables`` and the optimizer's launches left on the host. The groups'
  lr stays a float, so checkpoints, ``load_state_dict`` and the logs are unchanged: the graph's own lr
  tensors are swapped into the groups for capture only, then refilled from them before a replay
  whenever the scheduler has changed them.
- Autocast runs with ``cache_enabled=False``, as PyTorch's graph API asks of autocast
  (``make_graphed_callables`` refuses its cache of cast weights).

Batches of another shape than the captured one (the first batch's), such as an epoch's last, shorter
batch, run the same step eagerly rather than being dropped: a graphed run trains on exactly the
batches an eager run does.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WARMUP_STEPS", "CapturedStep", "sgd_step", "tensor_lrs", "use_fused_sgd"]

WARMUP_STEPS = 3  # as torch.cuda.make_graphed_callables' default num_warmup_iters


def sgd_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
             autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step: forward under ``autocast``, cross-entropy of the fp32 logits, gradients set to
    None, backward, ``optimizer.step()``; returns (loss, logits). The eager loop and the graph run it."""
    with autocast:
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


def use_fused_sgd(optimizer: torch.optim.Optimizer) -> None:
    """Set every param group of a ``torch.optim.SGD`` to the fused implementation, the one that reads a
    tensor lr on the device; the groups' lr must be floats (the graph keeps its own tensors)."""
    if not isinstance(optimizer, torch.optim.SGD):
        raise TypeError(f"CUDA graphs capture torch.optim.SGD steps here, got {type(optimizer).__name__}")
    for i, group in enumerate(optimizer.param_groups):
        if isinstance(group["lr"], torch.Tensor):
            raise TypeError(f"param group {i}: lr must be a float, got a tensor (the captured step keeps its "
                            "own device copy)")
        group["fused"], group["foreach"] = True, False


@contextlib.contextmanager
def tensor_lrs(optimizer: torch.optim.Optimizer, lrs: list[torch.Tensor]):
    """Inside the context, each param group's lr is the tensor of ``lrs``; the floats are restored on exit."""
    values = [group["lr"] for group in optimizer.param_groups]
    try:
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        yield
    finally:
        for group, value in zip(optimizer.param_groups, values):
            group["lr"] = value


class CapturedStep:
    """``sgd_step`` of ``model`` and a ``torch.optim.SGD`` on CUDA batches, captured in a CUDA graph.

    ``loss, logits = step(x, y)`` trains on one batch: the first ``warmup_steps`` calls eagerly on the
    side stream, the next one captures and replays, later ones copy (x, y) into the static inputs and
    replay; a batch of another shape than the first runs eagerly. Once captured, loss and logits are the
    graph's static outputs, overwritten by the next replay. ``amp_dtype``: the autocast dtype (None: none).
    The optimizer's param groups are set to SGD's fused implementation (see the module docstring).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, amp_dtype: torch.dtype | None = None,
                 warmup_steps: int = WARMUP_STEPS):
        self.device = next(model.parameters()).device
        if self.device.type != "cuda":
            raise ValueError(f"CUDA graphs capture GPU work: the model must be on a CUDA device, not {self.device}")
        use_fused_sgd(optimizer)
        self.model, self.optimizer = model, optimizer
        self.autocast = torch.autocast("cuda", dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None,
                                       cache_enabled=False)
        self.warmups_left = warmup_steps
        self.stream = torch.cuda.Stream(self.device)
        self.shapes = None  # (x.shape, y.shape) of the first batch: the captured shape
        self.graph = None
        self.lrs: list[torch.Tensor] = []  # what the graph reads as each param group's lr
        self.lr_values: list[float] = []  # the groups' lr when self.lrs were last filled
        self.replays = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.shapes is None:
            self.shapes = (x.shape, y.shape)
        if (x.shape, y.shape) != self.shapes:
            return sgd_step(self.model, self.optimizer, x, y, self.autocast)
        if self.warmups_left:
            self.warmups_left -= 1
            return self._warm_up(x, y)
        if self.graph is None:
            self._capture(x, y)
        for group, lr, value in zip(self.optimizer.param_groups, self.lrs, self.lr_values):
            if group["lr"] != value:  # the scheduler stepped since the last replay
                lr.fill_(group["lr"])
        self.lr_values = [group["lr"] for group in self.optimizer.param_groups]
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        self.replays += 1
        return self.static_loss, self.static_logits

    def _warm_up(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A training step on the side stream, ordered after and before the current stream's work."""
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            out = sgd_step(self.model, self.optimizer, x, y, self.autocast)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return out

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Record the step on static copies of (x, y) with the lr read from device tensors (nothing runs)."""
        self.static_x, self.static_y = x.clone(), y.clone()
        self.lr_values = [group["lr"] for group in self.optimizer.param_groups]
        self.lrs = [torch.tensor(float(value), device=self.device) for value in self.lr_values]
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with tensor_lrs(self.optimizer, self.lrs), torch.cuda.graph(graph, stream=self.stream):
            self.static_loss, self.static_logits = sgd_step(self.model, self.optimizer, self.static_x,
                                                            self.static_y, self.autocast)
        self.graph = graph
