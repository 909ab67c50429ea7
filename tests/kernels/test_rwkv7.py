"""The RWKV-7 reference against the update written as a matrix product."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.rwkv7.reference import rwkv7_scan, rwkv7_step
from tests.helpers import assert_close


def _inputs(batch: int, steps: int, heads: int, k: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    shape = (batch, steps, heads, k)
    r, k_, v = (torch.randn(shape, generator=g, dtype=f64) for _ in range(3))
    log_w = -torch.rand(shape, generator=g, dtype=f64) * 0.5
    kk = F.normalize(torch.randn(shape, generator=g, dtype=f64), dim=-1)
    iclr = torch.rand(shape, generator=g, dtype=f64)
    S0 = torch.randn(batch, heads, k, k, generator=g, dtype=f64)
    return r, log_w, k_, v, -kk, kk * iclr, S0


def test_matches_transition_matrix_form() -> None:
    """S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T, y_t = S_t r_t, with explicit matrices."""
    r, log_w, k, v, a, b, S0 = _inputs(2, 11, 3, 5)
    y, ST = rwkv7_scan(r, log_w, k, v, a, b, S0)
    S = S0.clone()
    for t in range(11):
        transition = torch.diag_embed(log_w[:, t].exp()) + a[:, t, :, :, None] * b[:, t, :, None, :]
        S = S @ transition + v[:, t, :, :, None] * k[:, t, :, None, :]
        assert_close(f"y[{t}]", (S @ r[:, t, :, :, None])[..., 0], y[:, t])
    assert_close("S_T", S, ST)


def test_step_is_one_scan_step_and_zero_default() -> None:
    r, log_w, k, v, a, b, S0 = _inputs(2, 1, 2, 4)
    y, S = rwkv7_scan(r, log_w, k, v, a, b, S0)
    y1, S1 = rwkv7_step(S0, r[:, 0], log_w[:, 0], k[:, 0], v[:, 0], a[:, 0], b[:, 0])
    assert torch.equal(y[:, 0], y1) and torch.equal(S, S1)
    y0, _ = rwkv7_scan(r, log_w, k, v, a, b, None)
    yz, _ = rwkv7_scan(r, log_w, k, v, a, b, torch.zeros_like(S0))
    assert torch.equal(y0, yz)
