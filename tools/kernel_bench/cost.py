"""The cost model: the minimum bytes (each tensor read once, each written once) and the FLOPs of each op."""
from __future__ import annotations

# An exact training smoothing step moves at least this many passes over an activation (N*C*H*W
# elements). Without BatchNorm it would be 8 (forward reads u, f, writes u_next; backward reads
# grad, u, f, writes grad_u, grad_f). Batch statistics are global barriers, and each barrier costs
# another pass over what the next stage recomputes from: forward 7 (bn1 moments: u, f; bn2
# moments: u, f; update: u, f, write u_next), backward 11 (bn2 sums: grad, u, f; bn1 sums: grad,
# u, f; gradients: grad, u, f, write grad_u, grad_f), 18 in all. The fused kernels move 26
# (forward 8: r and s are stored; backward 18).
SMOOTHING_STEP_MIN_PASSES = 18


def conv_cost(n, c_in, c_out, h, w, k, stride, groups, elem, with_backward) -> tuple[float, float]:
    """Minimum bytes (each tensor read once, each written once) and FLOPs of a convolution."""
    ho, wo = (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1
    x, y, wt = n * c_in * h * w, n * c_out * ho * wo, c_out * (c_in // groups) * k * k
    flops = 2.0 * n * c_out * ho * wo * (c_in // groups) * k * k
    if not with_backward:
        return (x + y + wt) * elem, flops
    # forward + grad input (read grad_y and w, write grad_x) + grad weight (read x and grad_y, write grad_w)
    return (x + y + wt + (y + wt + x) + (x + y + wt)) * elem, 3 * flops


def smoothing_step_cost(n, c, h, w, groups, elem) -> tuple[float, float]:
    """Minimum bytes of an exact training step (the 18-pass floor above) and the FLOPs of its two
    convolutions, forward and backward."""
    nbytes = SMOOTHING_STEP_MIN_PASSES * n * c * h * w * elem
    flops = 2 * conv_cost(n, c, c, h, w, 3, 1, groups, elem, True)[1]
    return nbytes, flops
