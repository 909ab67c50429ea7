"""The selective-scan reference against the equation computed a second, independent way."""

from __future__ import annotations

import torch

from kernels.selective_scan.reference import selective_scan, selective_scan_step
from tests.helpers import assert_close


def _inputs(batch: int, steps: int, d: int, n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    x = torch.randn(batch, steps, d, generator=g, dtype=f64)
    dt = torch.rand(batch, steps, d, generator=g, dtype=f64) * 0.5 + 0.01
    A = -torch.rand(d, n, generator=g, dtype=f64) * 3 - 0.1
    B = torch.randn(batch, steps, n, generator=g, dtype=f64)
    C = torch.randn(batch, steps, n, generator=g, dtype=f64)
    h0 = torch.randn(batch, d, n, generator=g, dtype=f64)
    return x, dt, A, B, C, h0


def test_matches_closed_form_sum() -> None:
    """h_t = sum_s (prod_{s<u<=t} exp(dt_u A)) dt_s B_s x_s + (prod_{u<=t} exp(dt_u A)) h0."""
    x, dt, A, B, C, h0 = _inputs(2, 9, 5, 3)
    y, hT = selective_scan(x, dt, A, B, C, h0)
    # Log of the decay accumulated up to and including step t: [B, T, D, N].
    cum = torch.cumsum(dt[..., None] * A, dim=1)
    for t in range(9):
        h = torch.exp(cum[:, t]) * h0
        for s in range(t + 1):
            h = (
                h
                + torch.exp(cum[:, t] - cum[:, s])
                * (dt[:, s] * x[:, s])[..., None]
                * B[:, s, None, :]
            )
        assert_close(f"y[{t}]", (h * C[:, t, None, :]).sum(-1), y[:, t])
    assert_close("h_T", h, hT)


def test_zero_initial_state_and_empty_sequence() -> None:
    x, dt, A, B, C, _ = _inputs(1, 4, 3, 2)
    y0, h0 = selective_scan(x, dt, A, B, C, None)
    y1, h1 = selective_scan(x, dt, A, B, C, torch.zeros(1, 3, 2, dtype=torch.float64))
    assert torch.equal(y0, y1) and torch.equal(h0, h1)
    y_empty, h_empty = selective_scan(x[:, :0], dt[:, :0], A, B[:, :0], C[:, :0], h1)
    assert y_empty.shape == (1, 0, 3) and torch.equal(h_empty, h1)


def test_step_is_one_scan_step() -> None:
    x, dt, A, B, C, h0 = _inputs(3, 1, 4, 2)
    y, h = selective_scan(x, dt, A, B, C, h0)
    y1, h1 = selective_scan_step(h0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    assert torch.equal(y[:, 0], y1) and torch.equal(h, h1)
