"""Pieces shared by every forecaster: input encoding, the quantile head, a feed-forward block."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forecast.adaptive_norm import VAR_FLOOR
from forecast.config import ModelConfig
from forecast.cycle import cycle_table

__all__ = ["FeedForward", "InputEncoder", "LinearPath", "LinearPathState", "QuantileHead"]


class InputEncoder(nn.Module):
    """Raw observations [..., C] (NaN = missing) + covariates [..., K] -> features [..., D].

    Normalisation uses per-channel statistics fitted on training data and stored as buffers, so a
    streaming step applies exactly what training applied; no statistic depends on the window.
    A missing value enters as 0 (the training mean) together with a mask channel saying it is
    missing, so the network can tell "average" from "unknown".

    Channel-independent (cfg.channel_independent): each channel is embedded on its own, from its
    value, its mask and the covariates, with weights shared across channels -> [..., C, D].
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.register_buffer("loc", torch.zeros(cfg.n_channels))
        self.register_buffer("scale", torch.ones(cfg.n_channels))
        self.independent = cfg.channel_independent
        width = 1 if cfg.channel_independent else cfg.n_channels
        self.proj = nn.Linear(2 * width + cfg.n_covariates, cfg.d_model)

    loc: Tensor
    scale: Tensor

    def standardize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [..., C] -> (z: (x - loc) / scale with missing values at 0, observed mask)."""
        observed = ~torch.isnan(x)
        # Fill before scaling so no NaN ever reaches an arithmetic op (or its gradient).
        return (torch.where(observed, x, self.loc) - self.loc) / self.scale, observed

    def embed(self, z: Tensor, observed: Tensor, covariates: Tensor | None) -> Tensor:
        """Normalised values, the missing mask and covariates -> features [..., D], or
        [..., C, D] when channel-independent."""
        parts = [torch.where(observed, z, 0.0), (~observed).to(z.dtype)]
        if self.independent:
            parts = [p[..., None] for p in parts]
            if covariates is not None:
                parts.append(covariates.to(z.dtype)[..., None, :].expand(*z.shape, -1))
        elif covariates is not None:
            parts.append(covariates.to(z.dtype))
        return self.proj(torch.cat(parts, dim=-1))


class QuantileHead(nn.Module):
    """Features [..., D] -> forecasts [..., H, C, Q] in normalised units.

    The median is predicted directly; the other quantiles as cumulative softplus offsets from it,
    so quantiles never cross. Channel-independent: features [..., C, D] of each channel give that
    channel's forecasts (shared weights).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.independent = cfg.channel_independent
        width = 1 if cfg.channel_independent else cfg.n_channels
        self.shape = (cfg.horizon, width, len(cfg.quantiles))
        self.median = cfg.median_index
        self.proj = nn.Linear(cfg.d_model, cfg.horizon * width * len(cfg.quantiles))
        if cfg.zero_head:
            with torch.no_grad():
                self.proj.weight.zero_()
                self.proj.bias.zero_()

    def forward(self, h: Tensor, offset: Tensor | None = None) -> Tensor:
        """h [..., D] (or [..., C, D]) -> [..., H, C, Q]; `offset` [..., H, C] is added to the
        median (and so to every quantile)."""
        raw = self.proj(h).unflatten(-1, self.shape)
        if self.independent:
            # [..., C, H, 1, Q] -> [..., H, C, Q]
            raw = raw.squeeze(-2).transpose(-2, -3)
        m = self.median
        center = raw[..., m : m + 1]
        if offset is not None:
            center = center + offset[..., None]
        above = center + _running_sum(F.softplus(raw[..., m + 1 :]))
        below = center - _running_sum(F.softplus(raw[..., :m].flip(-1))).flip(-1)
        return torch.cat([below, center, above], dim=-1)


def _running_sum(x: Tensor) -> Tensor:
    """torch.cumsum over the last dim, which holds a few quantiles, as that many adds: the same
    values for up to 2 (the CPU's cumsum accumulates in float64, so 1 ulp apart beyond). On CUDA,
    PyTorch's scan over a last dim of 1-3 and millions of rows took 97% of a model step for 16,384
    series (H200: 15.9 ms a call; docs/BENCHMARKS.md, session 7)."""
    if x.shape[-1] == 0:
        return x
    sums = [x[..., 0]]
    for i in range(1, x.shape[-1]):
        sums.append(sums[-1] + x[..., i])
    return torch.stack(sums, dim=-1)


class FeedForward(nn.Module):
    """Pre-norm position-wise MLP with a residual connection."""

    def __init__(self, d_model: int, mult: int = 2):
        super().__init__()
        self.norm = nn.RMSNorm(d_model)
        self.up = nn.Linear(d_model, mult * d_model)
        self.down = nn.Linear(mult * d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class LinearPathState(NamedTuple):
    window: Tensor  # [B, C, L]: the last L globally scaled values, oldest first


class LinearPath(nn.Module):
    """A linear map of the last L values to the next H, in the running-normalised units of the
    forecast origin (RLinear's map, with the streaming normalisation): for each channel,
        offset_t = W ((w_t - mean_t) / std_t) + b,   w_t = (z_{t-L+1}, ..., z_t),
    W [H, L] shared across channels (with cfg.linear_per_channel, W + D_c and b + d_c for channel
    c: the shared map plus the channel's departure, both zero at the start). A missing value
    enters the window as the running mean of its time; before L values have been seen, the
    window's head holds the prior mean (0).

    With cfg.linear_norm "window" the window is normalised by its own mean m_t and std s_t
    (RevIN, as RLinear) and the map's output denormalised by them:
        f_t = s_t (W ((w_t - m_t) / s_t) + b) + m_t,   offset_t = (f_t - mean_t) / std_t.
    With cfg.cycle_length P, a learned daily cycle Q [P, C] is taken out of the normalised window
    and put back into the forecast (forecast/cycle.py): b becomes b + cycle_table(Q, W)[p_t] for
    the origin's phase p_t.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.length = cfg.linear_lookback
        self.window_norm = cfg.linear_norm == "window"
        self.proj = nn.Linear(cfg.linear_lookback, cfg.horizon)
        # Each channel's departure from the shared map (D [C, H, L], d [C, H]), or None.
        self.delta_weight = self.delta_bias = None
        if cfg.linear_per_channel:
            c, h, n = cfg.n_channels, cfg.horizon, cfg.linear_lookback
            self.delta_weight = nn.Parameter(torch.zeros(c, h, n))
            self.delta_bias = nn.Parameter(torch.zeros(c, h))
        # The daily cycle Q [P, C], or None; zero = no cycle until trained or fitted.
        self.cycle = (
            nn.Parameter(torch.zeros(cfg.cycle_length, cfg.n_channels))
            if cfg.cycle_length
            else None
        )
        with torch.no_grad():
            # Start as "repeat the level": the forecast is the running mean, as RLinear's init
            # of the normalised series predicts 0.
            self.proj.weight.zero_()
            self.proj.bias.zero_()

    def weight(self) -> Tensor:
        """The map W [H, L], or each channel's W + D_c [C, H, L]."""
        w: Tensor = self.proj.weight
        return w if self.delta_weight is None else w + self.delta_weight

    def bias(self) -> Tensor:
        """b [H], or each channel's b + d_c [C, H]."""
        b: Tensor = self.proj.bias
        return b if self.delta_bias is None else b + self.delta_bias

    def _raw(self, window: Tensor) -> Tensor:
        """W w for windows [..., C, L] -> [..., C, H]."""
        w = self.weight()
        if w.dim() == 2:
            return window @ w.T
        return torch.einsum("...cl,chl->...ch", window, w)

    def init_state(
        self, batch: int, n_channels: int, device: torch.device, dtype: torch.dtype
    ) -> LinearPathState:
        return LinearPathState(
            torch.zeros(batch, n_channels, self.length, device=device, dtype=dtype)
        )

    def _map(
        self,
        raw: Tensor,
        mean: Tensor,
        std: Tensor,
        sums: tuple[Tensor, Tensor] | None,
        phase: Tensor | None,
    ) -> Tensor:
        """raw = W w_t [..., C, H]; mean, std [..., C]; sums: the window's mean and mean square
        [..., C] (with linear_norm "window"); phase [...] of the origin (with a cycle)
        -> offsets [..., H, C]."""
        weight = self.weight()
        w1 = weight.sum(-1)  # W 1 [H] (or [C, H])
        bias = self.bias()
        if self.cycle is not None:
            if phase is None:
                raise ValueError("a linear path with a daily cycle needs the origin's phase")
            # [..., H, C] -> [..., C, H], beside raw.
            bias = bias + cycle_table(self.cycle, weight)[phase].transpose(-1, -2)
        if sums is None:
            out = (raw - mean[..., None] * w1) / std[..., None] + bias
        else:
            wm, wsq = sums
            # The same E[w^2] - m^2 in `forward` and `step`, so both compute the same std.
            ws = torch.sqrt((wsq - wm * wm).clamp_min(0.0) + VAR_FLOOR)
            f = raw - wm[..., None] * (w1 - 1.0) + ws[..., None] * bias
            out = (f - mean[..., None]) / std[..., None]
        return out.transpose(-1, -2)

    def _sums(self, window: Tensor) -> tuple[Tensor, Tensor] | None:
        """window [..., L] -> its mean and mean square [...] (None without window norm)."""
        if not self.window_norm:
            return None
        return window.mean(-1), (window * window).mean(-1)

    def forward(
        self,
        z: Tensor,
        mean: Tensor,
        std: Tensor,
        s: LinearPathState,
        last_only: bool = False,
        phase: Tensor | None = None,
    ) -> tuple[Tensor, LinearPathState]:
        """z (missing filled) [B, T, C]; mean, std [B, T, C] (or [B, C] with last_only); phase
        [B, T] (or [B]) with a cycle -> (offsets [B, T, H, C] or [B, H, C], state)."""
        seq = torch.cat([s.window, z.transpose(1, 2)], dim=-1)  # [B, C, L + T]
        steps = z.shape[1]
        nxt = LinearPathState(seq[..., seq.shape[-1] - self.length :])
        if last_only:
            raw = self._raw(nxt.window)  # [B, C, H]
            return self._map(raw, mean, std, self._sums(nxt.window), phase), nxt
        b, c, n = seq.shape
        flat = seq.reshape(b * c, 1, n)[..., 1:]
        # Every window of L ending at each of the T new steps: a convolution with W (one group
        # per channel with a map per channel).
        weight = self.weight()
        if weight.dim() == 2:
            raw = F.conv1d(flat, weight[:, None])
        else:
            raw = F.conv1d(flat.reshape(b, c, n - 1), weight.flatten(0, 1)[:, None], groups=c)
        raw = raw.reshape(b, c, -1, steps).permute(0, 3, 1, 2)  # [B, T, C, H]
        sums = None
        if self.window_norm:
            # Each window's mean and mean square: a moving average over L, [B, T, C].
            pooled = [F.avg_pool1d(v, self.length, stride=1) for v in (flat, flat * flat)]
            wm, wsq = (p.reshape(b, c, steps).transpose(1, 2) for p in pooled)
            sums = (wm, wsq)
        return self._map(raw, mean, std, sums, phase), nxt

    def step(
        self, z: Tensor, mean: Tensor, std: Tensor, s: LinearPathState, phase: Tensor | None = None
    ) -> tuple[Tensor, LinearPathState]:
        """z, mean, std [B, C]; phase [B] with a cycle -> (offsets [B, H, C], state)."""
        window = torch.cat([s.window[..., 1:], z[..., None]], dim=-1)
        raw = self._raw(window)
        return self._map(raw, mean, std, self._sums(window), phase), LinearPathState(window)
