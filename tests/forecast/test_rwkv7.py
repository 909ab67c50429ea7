"""rwkv7: decays stay in RWKV-7's range, and the state really is a matrix per head."""

from __future__ import annotations

import math

import torch

from forecast import ModelConfig, build_model
from forecast.rwkv7 import RWKV7Layer, RWKV7State


def test_decay_range_and_state_shape() -> None:
    torch.manual_seed(0)
    # The backbone's state alone: no running normalisation or linear path layers before it, and
    # all channels in one series.
    cfg = ModelConfig(
        kind="rwkv7",
        n_channels=3,
        horizon=2,
        d_model=32,
        head_size=8,
        norm_halflife=0,
        linear_lookback=0,
        channel_independent=False,
    )
    model = build_model(cfg)
    layer = model.backbone.layers[0]
    assert isinstance(layer, RWKV7Layer)
    x = torch.randn(4, 32) * 10
    with torch.no_grad():
        (r, log_w, _k, _v, a, b), _, _ = layer.att._inputs(x, torch.randn(4, 32) * 10, None)
    w = log_w.exp()
    # w = exp(-exp(-softplus(.) - 0.5)) lies in (exp(-exp(-0.5)), 1) = (0.545, 1).
    assert (w > math.exp(-math.exp(-0.5)) - 1e-6).all() and (w < 1).all()
    assert r.shape == (4, 4, 8)
    state = model.init_state(5)
    assert isinstance(state.layers[0], RWKV7State)
    assert state.layers[0].wkv.shape == (5, 4, 8, 8)
    # The removal direction a = -kk is a unit vector per head, and b = kk * iclr.
    assert torch.allclose(a.norm(dim=-1), torch.ones(4, 4))
    assert ((b / -a) >= 0).all() and ((b / -a) <= 1).all()
