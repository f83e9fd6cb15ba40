"""Split reductions finished inside the kernel that produced the partials: no second launch, no host sum.

A kernel whose output is a sum over many programs (the pixels of a weight gradient, the
BatchNorm statistics of a whole batch) writes one fp32 partial per program. The last program to
finish (an arrival counter per output tile) then reduces the partials in a fixed order, so the
result is deterministic and bitwise independent of the order the programs ran in. Counters
are the package's own int32 buffer (``launchers.arrival_counters``): zero before a launch, and
the last program of each tile sets its counter back to zero.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def last_to_arrive(counter_ptr, arrivals):
    """True in the last of ``arrivals`` programs that reach this call for ``counter_ptr``; that program
    then sees every store the others made before the call, and leaves the counter at zero."""
    tl.debug_barrier()  # every thread of this program has issued its partial stores
    ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")  # release ours, acquire theirs
    last = ticket == arrivals - 1
    if last:
        tl.atomic_xchg(counter_ptr, 0, sem="relaxed", scope="gpu")
    return last


@triton.jit
def sum_rows(partial_ptr, rows, row_stride, offs_c, c_mask, BLOCK_ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    """sum over r < rows of partial[r, offs_c] (fp32, row_stride elements apart), in row order."""
    total = tl.zeros([BLOCK_C], dtype=tl.float32)
    for r0 in range(0, rows, BLOCK_ROWS):
        offs_r = r0 + tl.arange(0, BLOCK_ROWS)
        mask = (offs_r < rows)[:, None] & c_mask[None, :]
        block = tl.load(partial_ptr + offs_r[:, None] * row_stride + offs_c[None, :], mask=mask, other=0.0,
                        cache_modifier=".cg")
        total += tl.sum(block, axis=0)
    return total


@triton.jit
def merge_moments(partial_ptr, rows, plane, offs_c, c_mask, mean_ptr, var_ptr, C,
                  BLOCK_ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    """Batch mean and biased variance (stored and returned) from per-tile (count, mean, centred sum of squares) rows
    (Chan et al.'s parallel variance, merged in row order): the BatchNorm statistics of MGiaD eq. 3.

    partial_ptr: (3, ., C) fp32 planes ``plane`` elements apart, a row of C per tile."""
    total = tl.zeros([BLOCK_C], dtype=tl.float32)
    weighted = tl.zeros([BLOCK_C], dtype=tl.float32)
    for r0 in range(0, rows, BLOCK_ROWS):
        offs_r = r0 + tl.arange(0, BLOCK_ROWS)
        offs = offs_r[:, None] * C + offs_c[None, :]
        mask = (offs_r < rows)[:, None] & c_mask[None, :]
        count = tl.load(partial_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg")
        tile_mean = tl.load(partial_ptr + plane + offs, mask=mask, other=0.0, cache_modifier=".cg")
        total += tl.sum(count, axis=0)
        weighted += tl.sum(count * tile_mean, axis=0)
    mean = weighted / tl.maximum(total, 1.0)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for r0 in range(0, rows, BLOCK_ROWS):
        offs_r = r0 + tl.arange(0, BLOCK_ROWS)
        offs = offs_r[:, None] * C + offs_c[None, :]
        mask = (offs_r < rows)[:, None] & c_mask[None, :]
        count = tl.load(partial_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg")
        delta = tl.load(partial_ptr + plane + offs, mask=mask, other=0.0, cache_modifier=".cg") - mean[None, :]
        tile_m2 = tl.load(partial_ptr + 2 * plane + offs, mask=mask, other=0.0, cache_modifier=".cg")
        m2 += tl.sum(tile_m2 + count * delta * delta, axis=0)
    var = m2 / tl.maximum(total, 1.0)
    tl.store(mean_ptr + offs_c, mean, mask=c_mask)
    tl.store(var_ptr + offs_c, var, mask=c_mask)
    return mean, var


@triton.jit
def exponential_average(ptr, offs, mask, value, factor):
    """ptr[offs] = (1 - factor) * ptr[offs] + factor * value: nn.BatchNorm2d's running-statistics update."""
    old = tl.load(ptr + offs, mask=mask).to(tl.float32)
    tl.store(ptr + offs, ((1.0 - factor) * old + factor * value).to(ptr.dtype.element_ty), mask=mask)
