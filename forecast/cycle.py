"""The daily cycle of the linear path (CycleNet's residual cycle, Lin et al. 2024).

A learned profile Q [P, C] over the P phases of a day (P steps a day) is taken out of the
linear path's normalised window and put back into its forecast:
    f_t = s_t (W ((w_t - m_t) / s_t - Q_in(p_t)) + b + Q_out(p_t)) + m_t,
where p_t is the phase of the forecast origin, Q_in(p) = Q at the window's L phases up to p and
Q_out(p) = Q at the next H phases. The cycle's part, Q_out(p) - W Q_in(p) [H, C], depends only
on p, so it is a table `cycle_table` [P, H, C] added to the map's bias: the window in the state
stays the raw values, and `step` and `forward` read the same table.

The phase comes from the time of day the calendar covariates carry (their first two columns are
its sine and cosine, pipelines/calendar.py), so it follows the timestamps, not a step counter.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["cycle_phase", "cycle_table"]


def cycle_phase(covariates: Tensor, length: int) -> Tensor:
    """Calendar covariates [..., K] (sin, cos of the time of day first) -> phase [...] in
    0..length-1 (int64): the step of the day, rounded to the nearest of `length` a day."""
    angle = torch.atan2(covariates[..., 0].double(), covariates[..., 1].double())
    return torch.round(angle / (2 * math.pi) * length).long() % length


def cycle_table(cycle: Tensor, weight: Tensor) -> Tensor:
    """cycle Q [P, C] and the linear map W [H, L] (or one per channel, [C, H, L]) ->
    Q_out(p) - W Q_in(p) for every origin phase p: [P, H, C]. Window position l of L is at phase
    p - L + 1 + l; forecast step h at p + 1 + h."""
    period = cycle.shape[0]
    horizon, length = weight.shape[-2:]
    origin = torch.arange(period, device=cycle.device)[:, None]
    q_in = cycle[(origin - length + 1 + torch.arange(length, device=cycle.device)) % period]
    q_out = cycle[(origin + 1 + torch.arange(horizon, device=cycle.device)) % period]
    mapped = "hl,plc->phc" if weight.dim() == 2 else "chl,plc->phc"
    return q_out - torch.einsum(mapped, weight, q_in)
