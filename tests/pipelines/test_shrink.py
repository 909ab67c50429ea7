"""The backbone's part of the median forecast shrunk toward the linear path (pipelines/shrink)."""

from __future__ import annotations

import pytest
import torch

from forecast.model import Forecaster
from pipelines.shrink import SHRINK_WEIGHTS, choose_backbone_weight
from tests.forecast.test_models import make_inputs, make_model
from tests.helpers import assert_close


def _median(model: Forecaster, x: torch.Tensor, cov: torch.Tensor | None) -> torch.Tensor:
    with torch.no_grad():
        y, _ = model(x, covariates=cov, last_only=True)
    return model.point(y)


def _linear_only(model: Forecaster, x: torch.Tensor, cov: torch.Tensor | None) -> torch.Tensor:
    """The forecast with the head's median rows at zero: the linear path alone."""
    head = model.head
    h, w, q = head.shape
    saved = head.proj.weight.clone(), head.proj.bias.clone()
    with torch.no_grad():
        head.proj.weight.view(h, w, q, -1)[:, :, head.median] = 0
        head.proj.bias.view(h, w, q)[:, :, head.median] = 0
    out = _median(model, x, cov)
    with torch.no_grad():
        head.proj.weight.copy_(saved[0])
        head.proj.bias.copy_(saved[1])
    return out


@pytest.mark.parametrize("independent", [False, True])
def test_each_weight_mixes_the_linear_path_and_the_model(independent: bool) -> None:
    """At weight a the median is fit + a (model - fit), for every candidate, in a channel-mixing
    and a channel-independent head (the latter with the daily cycle); the winner is left in
    place and its val returned."""
    overrides: dict[str, object] = dict(linear_lookback=6, linear_norm="window")
    if independent:
        overrides.update(channel_independent=True, cycle_length=4)
    model = make_model("diagonal_ssm", **overrides)
    x, cov = make_inputs(model, batch=3, steps=20)
    full, linear = _median(model, x, cov), _linear_only(model, x, cov)
    quantiles_before = model(x, covariates=cov, last_only=True)[0].detach()
    target = linear + 0.25 * (full - linear)
    seen: list[torch.Tensor] = []

    def val() -> float:
        got = _median(model, x, cov)
        seen.append(got)
        return float(((got - target) ** 2).mean())

    weight, best, tried = choose_backbone_weight([model], val)
    assert list(tried) == list(SHRINK_WEIGHTS)
    for i, a in enumerate(SHRINK_WEIGHTS):
        assert_close(f"weight {a}", linear + a * (full - linear), seen[i])
    assert weight == 0.25 and best == tried[0.25] < 1e-20
    assert_close("left at the winner", target, _median(model, x, cov))
    # The band keeps its width: every quantile moves with the median.
    after = model(x, covariates=cov, last_only=True)[0].detach()
    m = model.config.median_index
    shift = (after - quantiles_before)[..., m : m + 1]
    assert_close("band", quantiles_before + shift, after)


def test_ties_keep_the_trained_model_and_members_share_the_weight() -> None:
    a, b = make_model("diagonal_ssm", linear_lookback=6), make_model("rwkv7", seed=1)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (a, b)]
    weight, _, tried = choose_backbone_weight([a, b], lambda: 1.0)
    assert weight == 1.0 and set(tried.values()) == {1.0}
    for m, saved in zip((a, b), before, strict=True):
        for k, v in m.state_dict().items():
            assert torch.equal(v, saved[k]), k
    # A val that prefers the fit sends both members to weight 0 together.
    weight, _, _ = choose_backbone_weight([a, b], lambda: float(a.head.proj.bias.abs().sum()))
    assert weight == 0.0
    for m in (a, b):
        h, w, q = m.head.shape
        assert not m.head.proj.bias.view(h, w, q)[:, :, m.head.median].any()
