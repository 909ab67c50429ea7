"""Pieces shared by every forecaster: input encoding, the quantile head, a feed-forward block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forecast.config import ModelConfig

__all__ = ["FeedForward", "InputEncoder", "QuantileHead"]


class InputEncoder(nn.Module):
    """Raw observations [..., C] (NaN = missing) + covariates [..., K] -> features [..., D].

    Normalisation uses per-channel statistics fitted on training data and stored as buffers, so a
    streaming step applies exactly what training applied; no statistic depends on the window.
    A missing value enters as 0 (the training mean) together with a mask channel saying it is
    missing, so the network can tell "average" from "unknown".
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.register_buffer("loc", torch.zeros(cfg.n_channels))
        self.register_buffer("scale", torch.ones(cfg.n_channels))
        self.proj = nn.Linear(2 * cfg.n_channels + cfg.n_covariates, cfg.d_model)

    loc: Tensor
    scale: Tensor

    def standardize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [..., C] -> (z: (x - loc) / scale with missing values at 0, observed mask)."""
        observed = ~torch.isnan(x)
        # Fill before scaling so no NaN ever reaches an arithmetic op (or its gradient).
        return (torch.where(observed, x, self.loc) - self.loc) / self.scale, observed

    def embed(self, z: Tensor, observed: Tensor, covariates: Tensor | None) -> Tensor:
        """Normalised values, the missing mask and covariates -> features [..., D]."""
        parts = [torch.where(observed, z, 0.0), (~observed).to(z.dtype)]
        if covariates is not None:
            parts.append(covariates.to(z.dtype))
        return self.proj(torch.cat(parts, dim=-1))


class QuantileHead(nn.Module):
    """Features [..., D] -> forecasts [..., H, C, Q] in normalised units.

    The median is predicted directly; the other quantiles as cumulative softplus offsets from it,
    so quantiles never cross.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.shape = (cfg.horizon, cfg.n_channels, len(cfg.quantiles))
        self.median = cfg.median_index
        self.proj = nn.Linear(cfg.d_model, cfg.horizon * cfg.n_channels * len(cfg.quantiles))

    def forward(self, h: Tensor) -> Tensor:
        """h [..., D] -> [..., H, C, Q]."""
        raw = self.proj(h).unflatten(-1, self.shape)
        m = self.median
        center = raw[..., m : m + 1]
        above = center + torch.cumsum(F.softplus(raw[..., m + 1 :]), dim=-1)
        below = center - torch.cumsum(F.softplus(raw[..., :m].flip(-1)), dim=-1).flip(-1)
        return torch.cat([below, center, above], dim=-1)


class FeedForward(nn.Module):
    """Pre-norm position-wise MLP with a residual connection."""

    def __init__(self, d_model: int, mult: int = 2):
        super().__init__()
        self.norm = nn.RMSNorm(d_model)
        self.up = nn.Linear(d_model, mult * d_model)
        self.down = nn.Linear(mult * d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))
