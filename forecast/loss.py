"""Training loss for quantile forecasts."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["horizon_targets", "quantile_loss"]


def quantile_loss(y: Tensor, target: Tensor, quantiles: tuple[float, ...]) -> Tensor:
    """Mean pinball loss. y [..., Q]; target [...] (NaN = missing, ignored)."""
    q = torch.tensor(quantiles, dtype=y.dtype, device=y.device)
    observed = ~torch.isnan(target)
    diff = torch.where(observed, target, torch.zeros_like(target))[..., None] - y
    loss = torch.maximum(q * diff, (q - 1) * diff)
    weight = observed[..., None].to(y.dtype)
    return (loss * weight).sum() / (weight.sum() * len(quantiles)).clamp_min(1)


def horizon_targets(x: Tensor, horizon: int) -> Tensor:
    """x [B, T + H, C] -> targets [B, T, H, C]: position t gets x[t+1 .. t+H]."""
    steps = x.shape[1] - horizon
    if steps < 1:
        raise ValueError(f"need more than horizon={horizon} steps, got {x.shape[1]}")
    # unfold: [B, T+H-horizon, C, H] windows of length H starting at 1.
    return x[:, 1:].unfold(1, horizon, 1)[:, :steps].permute(0, 1, 3, 2)
