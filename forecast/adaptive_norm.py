"""Streaming-exact per-series normalisation: a running level and scale carried in the state.

Window-normalised forecasters (RevIN and kin) subtract each input window's own mean and divide by
its own std, which a stream of one event at a time cannot reproduce. Here the level and scale are
an exponential moving mean and variance per series and channel, updated at every observed step
(a plain running mean until `halflife` steps of history exist), so `step` and `forward` compute
the same statistics. They depend on the data only: no gradient flows through them.

Units: the statistics live in the globally scaled space (after the train-split scaler); the prior
before any observation is the global one (mean 0, variance 1), counted as one observation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["AdaptiveNorm", "LevelState"]

# Floor of the variance (scaled units): a flat stretch must not blow inputs up.
VAR_FLOOR = 1e-2


class LevelState(NamedTuple):
    mean: Tensor  # [B, C]
    var: Tensor  # [B, C]
    seen: Tensor  # [B, C] observations seen (prior included), capped where the rate stops changing


class AdaptiveNorm(nn.Module):
    def __init__(self, n_channels: int, halflife: int):
        super().__init__()
        self.n_channels = n_channels
        self.rate = 1.0 - 0.5 ** (1.0 / halflife)
        # Past this count the update rate is the constant `rate`; counting further changes nothing.
        self.cap = float(math.ceil(1.0 / self.rate))

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> LevelState:
        shape = (batch, self.n_channels)
        return LevelState(
            torch.zeros(shape, device=device, dtype=dtype),
            torch.ones(shape, device=device, dtype=dtype),
            torch.ones(shape, device=device, dtype=dtype),
        )

    @torch.no_grad()
    def step(self, z: Tensor, observed: Tensor, s: LevelState) -> tuple[Tensor, Tensor, LevelState]:
        """z, observed [B, C] -> (mean, std [B, C] including this step, next state)."""
        seen = s.seen + observed.to(z.dtype)
        a = torch.where(observed, torch.clamp(1.0 / seen, min=self.rate), 0.0)
        d = torch.where(observed, z - s.mean, 0.0)
        mean = s.mean + a * d
        var = (1.0 - a) * (s.var + a * d * d)
        std = torch.sqrt(var + VAR_FLOOR)
        return mean, std, LevelState(mean, var, seen.clamp(max=self.cap))

    @torch.no_grad()
    def scan(
        self, z: Tensor, observed: Tensor, s: LevelState, chunk: int = 32
    ) -> tuple[Tensor, Tensor, LevelState]:
        """z, observed [B, T, C] -> (mean, std [B, T, C], state after the last step).

        The same recurrence as `step`, computed a chunk of steps at a time: both the mean and the
        variance follow x_t = g_t x_{t-1} + b_t with g_t = 1 - a_t in [1/2, 1] (the prior counts
        as one observation, so a_t <= 1/2), whose solution within a chunk is
        x_t = P_t (x_0 + sum_{s<=t} b_s / P_s) with P_t = prod_{s<=t} g_s >= 2 ** -chunk.
        """
        obs = observed.to(z.dtype)
        # The update rate of every step: it depends only on how many observations came before.
        seen = s.seen[:, None] + torch.cumsum(obs, dim=1)
        rate = torch.where(observed, torch.clamp(1.0 / seen, min=self.rate), 0.0)
        means, variances = [], []
        mean, var = s.mean, s.var
        for lo in range(0, z.shape[1], chunk):
            a = rate[:, lo : lo + chunk]
            zc = z[:, lo : lo + chunk]
            g = 1.0 - a
            p = torch.cumprod(g, dim=1)
            m = p * (
                mean[:, None]
                + torch.cumsum(a * torch.where(observed[:, lo : lo + chunk], zc, 0.0) / p, dim=1)
            )
            prev = torch.cat([mean[:, None], m[:, :-1]], dim=1)
            d = torch.where(observed[:, lo : lo + chunk], zc - prev, 0.0)
            v = p * (var[:, None] + torch.cumsum(g * a * d * d / p, dim=1))
            means.append(m)
            variances.append(v)
            mean, var = m[:, -1], v[:, -1]
        mean_all, var_all = torch.cat(means, 1), torch.cat(variances, 1)
        last = LevelState(mean, var, seen[:, -1].clamp(max=self.cap))
        return mean_all, torch.sqrt(var_all + VAR_FLOOR), last
