"""Diagonal selective scan: the plain PyTorch loop that reads like the equation.

For every series b, channel d and state slot n:

    h_t[d, n] = exp(dt_t[d] * A[d, n]) * h_{t-1}[d, n] + dt_t[d] * B_t[n] * x_t[d]
    y_t[d]    = sum_n C_t[n] * h_t[d, n]

`diagonal_ssm` passes dt, B and C constant in time (linear time-invariant); `selective_ssm` makes
them functions of the input (Mamba's selection). Both run this one scan, and `step` is the same
update applied once, so a streaming step and a training window agree to rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["selective_scan", "selective_scan_step"]


def selective_scan_step(
    h: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor
) -> tuple[Tensor, Tensor]:
    """One step. h [B, D, N]; x, dt [B, D]; A [D, N]; B, C [B, N] -> (y [B, D], h [B, D, N])."""
    decay = torch.exp(dt[..., None] * A)
    h = decay * h + (dt * x)[..., None] * B[:, None, :]
    y = (h * C[:, None, :]).sum(-1)
    return y, h


def selective_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """x, dt [B, T, D]; A [D, N]; B, C [B, T, N]; h0 [B, D, N] or None (zeros).

    Returns y [B, T, D] and the final state h_T [B, D, N].
    """
    batch, steps, width = x.shape
    h = x.new_zeros(batch, width, A.shape[-1]) if h0 is None else h0
    ys = []
    for t in range(steps):
        y, h = selective_scan_step(h, x[:, t], dt[:, t], A, B[:, t], C[:, t])
        ys.append(y)
    y_all = torch.stack(ys, dim=1) if ys else x.new_zeros(batch, 0, width)
    return y_all, h
