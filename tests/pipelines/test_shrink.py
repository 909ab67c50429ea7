"""The backbone's part of the median forecast shrunk toward the linear path (pipelines/shrink)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from forecast.model import Forecaster
from pipelines.protocol import ErrorSums
from pipelines.shrink import (
    HORIZON_BLOCKS,
    SHRINK_WEIGHTS,
    BackboneShrink,
    ShrinkChoice,
    choose_backbone_weights,
)
from pipelines.train import log_shrink
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


def _sums(pred: torch.Tensor, target: torch.Tensor) -> ErrorSums:
    sums = ErrorSums(pred.shape[1], np.ones(pred.shape[2]))
    sums.add(pred.numpy(), target.numpy())
    return sums


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

    def val() -> ErrorSums:
        got = _median(model, x, cov)
        seen.append(got)
        return _sums(got, target)

    choice = choose_backbone_weights([model], val)
    assert list(choice.tried) == list(SHRINK_WEIGHTS)
    for i, a in enumerate(SHRINK_WEIGHTS):
        assert_close(f"weight {a}", linear + a * (full - linear), seen[i])
    assert choice.summary() == 0.25 and choice.val_mse == choice.tried[0.25] < 1e-20
    assert_close("left at the winner", target, _median(model, x, cov))
    # The band keeps its width: every quantile moves with the median.
    after = model(x, covariates=cov, last_only=True)[0].detach()
    m = model.config.median_index
    shift = (after - quantiles_before)[..., m : m + 1]
    assert_close("band", quantiles_before + shift, after)


@pytest.mark.parametrize("groups", ["channel", "channel_horizon"])
def test_each_group_takes_its_own_weight(groups: str) -> None:
    """A target that mixes fit and model with a different weight per channel (and per quarter of
    the horizon) is found exactly from the one pass per weight; the val MSE the choice reports is
    the model's own once the weights are in place; the coarser "model" grouping cannot reach it."""
    model = make_model("diagonal_ssm", linear_lookback=6, linear_norm="window")
    x, cov = make_inputs(model, batch=4, steps=20)
    full, linear = _median(model, x, cov), _linear_only(model, x, cov)
    horizon, channels = full.shape[1:]
    blocks = HORIZON_BLOCKS if groups == "channel_horizon" else 1
    rng = np.random.default_rng(0)
    table = rng.choice(SHRINK_WEIGHTS, size=(blocks, channels))
    table[0, 0], table[-1, -1] = 0.25, 1.0  # every table differs from one weight for all
    per_row = torch.from_numpy(table[np.arange(horizon) * blocks // horizon])  # [H, C]
    target = linear + per_row * (full - linear)
    noisy = target + 0.01 * torch.randn(target.shape, generator=torch.Generator().manual_seed(2))

    def val() -> ErrorSums:
        return _sums(_median(model, x, cov), noisy)

    shrink = BackboneShrink([model])
    passes = shrink.passes(val)
    choice, one = shrink.choose(passes, groups), shrink.choose(passes, "model")
    assert choice.table.shape == (blocks, channels) and one.table.shape == (1, 1)
    np.testing.assert_array_equal(choice.table, table)
    shrink.apply(shrink.rows(choice))
    assert_close("in place", target, _median(model, x, cov))
    assert choice.val_mse == pytest.approx(val().result().mse, rel=1e-12)
    assert choice.val_mse < one.val_mse == min(one.tried.values())


@pytest.mark.parametrize(
    ("groups", "shape"), [("channel", (1, 1)), ("channel_horizon", (HORIZON_BLOCKS, 1))]
)
def test_a_channel_independent_head_has_no_per_channel_weight(
    groups: str, shape: tuple[int, int]
) -> None:
    """Its rows serve every channel: "channel" is one weight, "channel_horizon" one per quarter."""
    model = make_model("diagonal_ssm", channel_independent=True, linear_lookback=6)
    x, cov = make_inputs(model, batch=3, steps=20)
    full, linear = _median(model, x, cov), _linear_only(model, x, cov)
    target = linear + 0.5 * (full - linear)
    choice = choose_backbone_weights([model], lambda: _sums(_median(model, x, cov), target), groups)
    assert choice.table.shape == shape and (choice.table == 0.5).all()
    assert choice.val_mse < 1e-20


def test_ties_keep_the_trained_model_and_members_share_the_weight() -> None:
    a, b = make_model("diagonal_ssm", linear_lookback=6), make_model("rwkv7", seed=1)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (a, b)]
    constant = torch.zeros(1, a.config.horizon, a.config.n_channels, dtype=torch.float64)
    for groups in ("model", "channel_horizon"):
        choice = choose_backbone_weights([a, b], lambda: _sums(constant, constant), groups)
        assert (choice.table == 1.0).all() and set(choice.tried.values()) == {0.0}
        for m, saved in zip((a, b), before, strict=True):
            for k, v in m.state_dict().items():
                assert torch.equal(v, saved[k]), k

    # A val that prefers the fit sends both members to weight 0 together.
    def prefers_zero() -> ErrorSums:
        bias = a.head.proj.bias.detach().abs().sum().reshape(1, 1, 1).expand(1, *constant.shape[1:])
        return _sums(bias.clone(), torch.zeros_like(bias))

    assert choose_backbone_weights([a, b], prefers_zero).summary() == 0.0
    for m in (a, b):
        h, w, q = m.head.shape
        assert not m.head.proj.bias.view(h, w, q)[:, :, m.head.median].any()


def test_the_weights_are_tracked_in_a_real_mlflow_store(tmp_path: Path) -> None:
    """One weight is the param `backbone_weight`; a weight per group is the whole table in the
    run's shrink_weights.json (a param would be cut short for many channels)."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("shrink", artifact_location=str(tmp_path / "artifacts"))
    table = np.array([[1.0, 0.5], [0.25, 0.0]])
    runs = {}
    for name, choice in (
        ("one", ShrinkChoice(np.full((1, 1), 0.75), 0.5, {1.0: 0.6})),
        ("groups", ShrinkChoice(table, 0.4, {1.0: 0.6})),
    ):
        with mlflow.start_run(experiment_id=experiment, run_name=name) as run:
            log_shrink(choice, "channel_horizon")
        runs[name] = mlflow.get_run(run.info.run_id)
    assert runs["one"].data.params["backbone_weight"] == "0.75"
    assert runs["groups"].data.params["backbone_weight"] == "per group: shrink_weights.json"
    for run in runs.values():
        assert run.data.metrics["val_mse_unshrunk"] == 0.6
    saved = mlflow.artifacts.load_dict(f"{runs['groups'].info.artifact_uri}/shrink_weights.json")
    assert saved == {"groups": "channel_horizon", "weights": table.tolist()}
