"""Selective (Mamba-style) SSM forecaster.

Each layer (Mamba-1 block): u, z = W_in norm(x); u = silu(causal_conv(u)); the step dt, and the
input and output maps B and C, are functions of u (selection), so the SSM decides per step what to
keep and what to forget:
    h_t[d, n] = exp(dt_t[d] A[d, n]) h_{t-1}[d, n] + dt_t[d] B_t[n] u_t[d],   y_t[d] = C_t . h_t[d]
then (y + D u) * silu(z) -> W_out, residual. State per layer: the SSM h [B, E, N] and the last
conv_kernel - 1 conv inputs [B, E, K-1], both constant in size.
"""

from __future__ import annotations

import math
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import kernels
from forecast.config import ModelConfig
from forecast.model import LayerStack

__all__ = ["SelectiveSSMLayer", "SelectiveSSMState", "selective_ssm"]

# Mamba's initial range for softplus(dt): log-uniform in [1e-3, 1e-1].
DT_MIN, DT_MAX = 1e-3, 1e-1


class SelectiveSSMState(NamedTuple):
    conv: Tensor  # [B, E, K-1]: the last K-1 conv inputs, oldest first
    h: Tensor  # [B, E, N]


class SelectiveSSMLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, e, n = cfg.d_model, cfg.expand * cfg.d_model, cfg.d_state
        self.dt_rank = math.ceil(d / 16)
        self.norm = nn.RMSNorm(d)
        self.in_proj = nn.Linear(d, 2 * e, bias=False)
        self.conv = nn.Conv1d(e, e, cfg.conv_kernel, groups=e)
        self.x_proj = nn.Linear(e, self.dt_rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, e)
        # softplus(dt_bias) starts log-uniform in [1e-3, 1e-1] (as Mamba): with A_n = -(n + 1)
        # the modes' time constants span ~1 to ~1000 steps before selection rescales them.
        dt = torch.exp(torch.empty(e).uniform_(math.log(DT_MIN), math.log(DT_MAX)))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(e, 1)
        )
        self.D = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, d, bias=False)

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> SelectiveSSMState:
        e, n = self.A_log.shape
        k = self.conv.kernel_size[0]
        return SelectiveSSMState(
            torch.zeros(batch, e, k - 1, device=device, dtype=dtype),
            torch.zeros(batch, e, n, device=device, dtype=dtype),
        )

    def _select(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """u [..., E] -> dt [..., E], B [..., N], C [..., N]."""
        n = self.A_log.shape[-1]
        dt_low, B, C = self.x_proj(u).split([self.dt_rank, n, n], dim=-1)
        return F.softplus(self.dt_proj(dt_low)), B, C

    def forward(self, x: Tensor, state: SelectiveSSMState) -> tuple[Tensor, SelectiveSSMState]:
        """x [B, T, D] -> y [B, T, D]."""
        u, z = self.in_proj(self.norm(x)).chunk(2, dim=-1)
        # Causal conv over [carried inputs, this window]; its tail is the next conv state.
        padded = torch.cat([state.conv, u.transpose(1, 2)], dim=-1)
        k = self.conv.kernel_size[0]
        u = F.silu(self.conv(padded).transpose(1, 2))
        conv_state = padded[..., padded.shape[-1] - (k - 1) :]
        dt, B, C = self._select(u)
        y, h = kernels.selective_scan(u, dt, -torch.exp(self.A_log), B, C, state.h)
        y = (y + self.D * u) * F.silu(z)
        return x + self.out_proj(y), SelectiveSSMState(conv_state, h)

    def step(self, x: Tensor, state: SelectiveSSMState) -> tuple[Tensor, SelectiveSSMState]:
        """x [B, D] -> y [B, D]."""
        u, z = self.in_proj(self.norm(x)).chunk(2, dim=-1)
        window = torch.cat([state.conv, u[..., None]], dim=-1)
        bias = cast(Tensor, self.conv.bias)
        u = F.silu((window * self.conv.weight[:, 0]).sum(-1) + bias)
        dt, B, C = self._select(u)
        y, h = kernels.selective_scan_step(state.h, u, dt, -torch.exp(self.A_log), B, C)
        y = (y + self.D * u) * F.silu(z)
        return x + self.out_proj(y), SelectiveSSMState(window[..., 1:], h)


def selective_ssm(cfg: ModelConfig) -> LayerStack:
    return LayerStack([SelectiveSSMLayer(cfg) for _ in range(cfg.n_layers)])
