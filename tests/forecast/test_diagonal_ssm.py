"""diagonal_ssm: the initial decay spectrum covers the time scales its comment promises."""

from __future__ import annotations

import torch

import kernels
from forecast import ModelConfig, build_model
from forecast.diagonal_ssm import DiagonalSSMLayer


def test_initial_time_constants_span_steps_to_months() -> None:
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(kind="diagonal_ssm", n_channels=2, horizon=4, d_model=64, d_state=16)
    )
    layer = model.backbone.layers[0]
    assert isinstance(layer, DiagonalSSMLayer)
    dt, A = layer._coefficients()
    tau = 1.0 / (dt[:, None] * A.abs())
    # Every mode decays (stable), the fastest within a couple of steps, the slowest over ~1000s.
    assert (A < 0).all()
    assert tau.min() < 2.0
    assert tau.max() > 1000.0


def test_time_invariant_impulse_response_is_a_fixed_kernel() -> None:
    """LTI: the SSM's response to an impulse does not depend on when the impulse arrives."""
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(kind="diagonal_ssm", n_channels=1, horizon=2, n_layers=1)
    ).double()
    layer = model.backbone.layers[0]
    assert isinstance(layer, DiagonalSSMLayer)
    dt, A = layer._coefficients()
    e, n = A.shape
    early = torch.zeros(1, 30, e, dtype=torch.float64)
    late = early.clone()
    early[0, 3] = torch.randn(e, dtype=torch.float64)
    late[0, 13] = early[0, 3]

    def ssm(u: torch.Tensor) -> torch.Tensor:
        y, _ = kernels.selective_scan(
            u, dt.expand(1, 30, e), A, layer.B.expand(1, 30, n), layer.C.expand(1, 30, n)
        )
        return y

    with torch.no_grad():
        y_early, y_late = ssm(early), ssm(late)
    assert y_early[0, 3:20].abs().sum() > 0
    assert torch.allclose(y_early[0, 3:20], y_late[0, 13:30])
    assert torch.equal(y_late[0, :13], torch.zeros(13, e, dtype=torch.float64))
