"""selective_ssm: the conv cache is state, and selection makes the dynamics input-dependent."""

from __future__ import annotations

import torch

from forecast import ModelConfig, build_model
from forecast.selective_ssm import SelectiveSSMLayer, SelectiveSSMState


def test_conv_cache_holds_the_last_inputs() -> None:
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(kind="selective_ssm", n_channels=2, horizon=3, conv_kernel=4)
    ).double()
    layer = model.backbone.layers[0]
    assert isinstance(layer, SelectiveSSMLayer)
    x = torch.randn(2, 9, 64, dtype=torch.float64)
    with torch.no_grad():
        _, state = layer(x, layer.init_state(2, torch.device("cpu"), torch.float64))
        u, _ = layer.in_proj(layer.norm(x)).chunk(2, dim=-1)
    assert isinstance(state, SelectiveSSMState)
    assert state.conv.shape == (2, 128, 3)
    assert torch.equal(state.conv, u[:, -3:].transpose(1, 2))


def test_step_size_depends_on_the_input() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="selective_ssm", n_channels=2, horizon=3))
    layer = model.backbone.layers[0]
    assert isinstance(layer, SelectiveSSMLayer)
    with torch.no_grad():
        dt_a, _, _ = layer._select(torch.randn(128))
        dt_b, _, _ = layer._select(torch.randn(128))
    assert (dt_a > 0).all() and (dt_b > 0).all()
    assert not torch.allclose(dt_a, dt_b)
