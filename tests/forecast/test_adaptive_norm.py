"""The running level and scale: a plain running mean at first, then exponential; missing values
leave it unchanged; the forecast follows a series' level shift without any retraining."""

from __future__ import annotations

import math

import torch

from forecast import ModelConfig, build_model
from forecast.adaptive_norm import AdaptiveNorm


def test_running_mean_then_exponential() -> None:
    norm = AdaptiveNorm(n_channels=1, halflife=10)
    z = torch.randn(1, 200, 1, dtype=torch.float64)
    observed = torch.ones_like(z, dtype=torch.bool)
    observed[0, 50] = False
    start = norm.init_state(1, torch.device("cpu"), torch.float64)
    mean, std, state = norm.scan(z, observed, start)
    # The prior (mean 0) counts as one observation: after 3 observations the mean is sum / 4.
    assert torch.allclose(mean[0, 2, 0], z[0, :3, 0].sum() / 4)
    # A missing value changes nothing.
    assert torch.equal(mean[0, 50], mean[0, 49]) and torch.equal(std[0, 50], std[0, 49])
    # Late on, each step moves the mean by the constant rate 1 - 0.5 ** (1 / 10).
    rate = 1 - 0.5**0.1
    expected = mean[0, 150, 0] + rate * (z[0, 151, 0] - mean[0, 150, 0])
    assert torch.allclose(mean[0, 151, 0], expected)
    assert float(state.seen.max()) == math.ceil(1 / rate)


def test_forecast_follows_a_level_shift() -> None:
    """Shift a series by +50 (in global std units): the running-normalised model's forecast moves
    with it once the level has adapted; the model itself is unchanged."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="selective_ssm", n_channels=2, horizon=3, norm_halflife=4))
    model = model.double().eval()
    x = torch.randn(1, 300, 2, dtype=torch.float64)
    with torch.no_grad():
        y, _ = model(x, last_only=True)
        y_shift, _ = model(x + 50.0, last_only=True)
    # Same shape of forecast, shifted by the level (the scale statistics are shift-invariant).
    assert torch.allclose(y_shift, y + 50.0, atol=1e-6)
