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
    def scan(self, z: Tensor, observed: Tensor, s: LevelState) -> tuple[Tensor, Tensor, LevelState]:
        """z, observed [B, T, C] -> (mean, std [B, T, C], state after the last step)."""
        means, stds = [], []
        for t in range(z.shape[1]):
            mean, std, s = self.step(z[:, t], observed[:, t], s)
            means.append(mean)
            stds.append(std)
        return torch.stack(means, 1), torch.stack(stds, 1), s
