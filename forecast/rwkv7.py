"""RWKV-7 ("Goose") forecaster.

Each layer: x += TimeMix(ln1(x)); x += ChannelMix(ln2(x)).

TimeMix keeps a matrix state S [K, K] per head and updates it with the generalised delta rule
    S_t = S_{t-1} diag(w_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T,   y_t = S_t r_t
where the decay w_t, the in-context learning rate and the keys are functions of the input
(a = -kk, b = kk * iclr, kk the normalised key). Token shift mixes each input with the previous one,
so the previous (normalised) input of each sub-block is state too. Layer 0's values ("v_first")
feed every later layer's values (value residual), within the same time step.
State per layer: the shift of each sub-block [B, D] and S [B, H, K, K].
"""

from __future__ import annotations

import math
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import kernels
from forecast.config import ModelConfig
from forecast.model import Backbone, LayerStates

__all__ = ["RWKV7", "RWKV7Layer", "RWKV7State", "rwkv7"]


class RWKV7State(NamedTuple):
    att_shift: Tensor  # [B, D]: last input of the time mix
    wkv: Tensor  # [B, H, K, K]
    ffn_shift: Tensor  # [B, D]: last input of the channel mix


def _lora(d: int, rank: int, scale: float = 0.1) -> tuple[nn.Parameter, nn.Parameter]:
    return (
        nn.Parameter(torch.randn(d, rank) * scale / math.sqrt(d)),
        nn.Parameter(torch.randn(rank, d) * scale / math.sqrt(rank)),
    )


class TimeMix(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        d, k = cfg.d_model, cfg.head_size
        self.n_heads, self.head_size = d // k, k
        self.first = layer == 0
        depth = layer / max(cfg.n_layers - 1, 1)
        ramp = torch.arange(d, dtype=torch.float32) / d
        # Token-shift mixes start between "mostly this step" and "half the previous step".
        mix = 1.0 - ramp ** (1.0 - 0.5 * depth)
        self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g = (
            nn.Parameter(mix.clone() * s) for s in (0.8, 0.9, 0.7, 0.6, 0.9, 0.2)
        )
        # Decay: log w = -exp(-softplus(-w0) - 0.5) per key channel. w0 from -6.5 to -1.5 across
        # channels gives per-step decays ~0.999 to ~0.9, i.e. memories of ~1000 to ~10 steps.
        self.w0 = nn.Parameter(
            -6.5 + 5.0 * (torch.arange(d) / max(d - 1, 1)) ** (0.85 + depth**0.5)
        )
        rank = max(4, d // 16)
        self.w1, self.w2 = _lora(d, rank)
        self.a0 = nn.Parameter(torch.zeros(d))
        self.a1, self.a2 = _lora(d, rank)
        if not self.first:
            self.v0 = nn.Parameter(torch.ones(d))
            self.v1, self.v2 = _lora(d, rank)
        self.g1, self.g2 = _lora(d, rank, scale=1.0)
        self.k_k = nn.Parameter(torch.full((d,), 0.85))
        self.k_a = nn.Parameter(torch.ones(d))
        self.r_k = nn.Parameter(torch.full((self.n_heads, k), -0.04))
        self.receptance = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.output = nn.Linear(d, d, bias=False)
        self.ln_x = nn.GroupNorm(self.n_heads, d, eps=64e-5)

    def _inputs(
        self, x: Tensor, prev: Tensor, v_first: Tensor | None
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """x, prev [..., D] -> (r, log_w, k, v, a, b per head [..., H, K]), gate g, v_first."""
        xx = prev - x
        xr, xw, xk, xv, xa, xg = (
            x + xx * m for m in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g)
        )
        r = self.receptance(xr)
        log_w = -torch.exp(-F.softplus(-(self.w0 + torch.tanh(xw @ self.w1) @ self.w2)) - 0.5)
        k = self.key(xk)
        v = self.value(xv)
        if v_first is None:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        iclr = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        heads = (self.n_heads, self.head_size)
        kk = F.normalize((k * self.k_k).unflatten(-1, heads), dim=-1)
        k = k * (1 + (iclr - 1) * self.k_a)
        split = [t.unflatten(-1, heads) for t in (r, log_w, k, v)]
        return [*split, -kk, kk * iclr.unflatten(-1, heads)], g, v_first

    def _output(self, y: Tensor, r: Tensor, k: Tensor, v: Tensor, g: Tensor) -> Tensor:
        """y, r, k, v [N, H, K] (N any flattened batch) -> [N, D]."""
        out = self.ln_x(y.flatten(1))
        bonus = (r * k * self.r_k).sum(-1, keepdim=True) * v
        return self.output((out + bonus.flatten(1)) * g)

    def forward(
        self, x: Tensor, shift: Tensor, S: Tensor, v_first: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, D] -> (out [B, T, D], S_T, v_first [B, T, D])."""
        batch, steps, _ = x.shape
        prev = torch.cat([shift[:, None], x[:, :-1]], dim=1)
        (r, log_w, k, v, a, b), g, v_first = self._inputs(x, prev, v_first)
        y, S = kernels.rwkv7_scan(r, log_w, k, v, a, b, S)
        flat = [t.flatten(0, 1) for t in (y, r, k, v)]
        out = self._output(flat[0], flat[1], flat[2], flat[3], g.flatten(0, 1))
        out = out.unflatten(0, (batch, steps))
        return out, S, v_first

    def step(
        self, x: Tensor, shift: Tensor, S: Tensor, v_first: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, D] -> (out [B, D], S, v_first [B, D])."""
        (r, log_w, k, v, a, b), g, v_first = self._inputs(x, shift, v_first)
        y, S = kernels.rwkv7_step(S, r, log_w, k, v, a, b)
        return self._output(y, r, k, v, g), S, v_first


class ChannelMix(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        d = cfg.d_model
        depth = layer / max(cfg.n_layers - 1, 1)
        self.x_k = nn.Parameter(
            1.0 - (torch.arange(d, dtype=torch.float32) / d) ** (1.0 - 0.5 * depth)
        )
        self.key = nn.Linear(d, 4 * d, bias=False)
        self.value = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: Tensor, prev: Tensor) -> Tensor:
        k = x + (prev - x) * self.x_k
        return self.value(torch.relu(self.key(k)) ** 2)


class RWKV7Layer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.att = TimeMix(cfg, layer)
        self.ffn = ChannelMix(cfg, layer)

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> RWKV7State:
        d, h, k = self.ln1.normalized_shape[0], self.att.n_heads, self.att.head_size
        return RWKV7State(
            torch.zeros(batch, d, device=device, dtype=dtype),
            torch.zeros(batch, h, k, k, device=device, dtype=dtype),
            torch.zeros(batch, d, device=device, dtype=dtype),
        )

    def forward(
        self, x: Tensor, state: RWKV7State, v_first: Tensor | None
    ) -> tuple[Tensor, RWKV7State, Tensor]:
        xa = self.ln1(x)
        out, S, v_first = self.att(xa, state.att_shift, state.wkv, v_first)
        x = x + out
        xf = self.ln2(x)
        x = x + self.ffn(xf, torch.cat([state.ffn_shift[:, None], xf[:, :-1]], dim=1))
        return x, RWKV7State(xa[:, -1], S, xf[:, -1]), v_first

    def step(
        self, x: Tensor, state: RWKV7State, v_first: Tensor | None
    ) -> tuple[Tensor, RWKV7State, Tensor]:
        xa = self.ln1(x)
        out, S, v_first = self.att.step(xa, state.att_shift, state.wkv, v_first)
        x = x + out
        xf = self.ln2(x)
        x = x + self.ffn(xf, state.ffn_shift)
        return x, RWKV7State(xa, S, xf), v_first


class RWKV7(Backbone):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(RWKV7Layer(cfg, i) for i in range(cfg.n_layers))

    def _stack(self) -> list[RWKV7Layer]:
        return [cast(RWKV7Layer, layer) for layer in self.layers]

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LayerStates:
        return tuple(layer.init_state(batch_size, device, dtype) for layer in self._stack())

    def forward(self, x: Tensor, state: LayerStates) -> tuple[Tensor, LayerStates]:
        v_first = None
        out = []
        for layer, s in zip(self._stack(), state, strict=True):
            x, s, v_first = layer(x, cast(RWKV7State, s), v_first)
            out.append(s)
        return x, tuple(out)

    def step(self, x: Tensor, state: LayerStates) -> tuple[Tensor, LayerStates]:
        v_first = None
        out = []
        for layer, s in zip(self._stack(), state, strict=True):
            x, s, v_first = layer.step(x, cast(RWKV7State, s), v_first)
            out.append(s)
        return x, tuple(out)


def rwkv7(cfg: ModelConfig) -> RWKV7:
    return RWKV7(cfg)
