"""RWKV-7 state update: the plain PyTorch loop that reads like the equation.

Per series and head, with a matrix state S [V, K] (value index i, key index j):

    S_t = S_{t-1} diag(w_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T
    y_t = S_t r_t

w_t = exp(log_w_t) in (0, 1] is the data-dependent decay per key channel; with a = -kk and
b = kk * iclr this is the generalised delta rule of RWKV-7 ("Goose"). The scan and the streaming
step share `rwkv7_step`, so they agree to rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rwkv7_scan", "rwkv7_step"]


def rwkv7_step(
    S: Tensor, r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor
) -> tuple[Tensor, Tensor]:
    """One step. S [B, H, V, K]; r, log_w, k, v, a, b [B, H, K] -> (y [B, H, V], S)."""
    sa = torch.einsum("bhij,bhj->bhi", S, a)
    S = S * torch.exp(log_w)[:, :, None, :] + sa[..., None] * b[:, :, None, :]
    S = S + v[..., None] * k[:, :, None, :]
    y = torch.einsum("bhij,bhj->bhi", S, r)
    return y, S


def rwkv7_scan(
    r: Tensor,
    log_w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    S0: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """r, log_w, k, v, a, b [B, T, H, K]; S0 [B, H, K, K] or None (zeros).

    Returns y [B, T, H, K] and the final state S_T [B, H, K, K].
    """
    batch, steps, heads, size = r.shape
    S = r.new_zeros(batch, heads, size, size) if S0 is None else S0
    ys = []
    for t in range(steps):
        y, S = rwkv7_step(S, r[:, t], log_w[:, t], k[:, t], v[:, t], a[:, t], b[:, t])
        ys.append(y)
    y_all = torch.stack(ys, dim=1) if ys else r.new_zeros(batch, 0, heads, size)
    return y_all, S
