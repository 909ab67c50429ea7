"""Training-loop options: the learning-rate schedule, the linear path's own rate, and defaults
that leave training exactly as it was."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from forecast import build_model
from pipelines.config import DataConfig, TrainConfig
from pipelines.data import read_dataset
from pipelines.evaluate import evaluate_model
from pipelines.fit import forecast_loss, lr_factor, make_optimizer, train_epoch, training_windows

ROOT = Path(__file__).resolve().parents[2]


def test_lr_factor_warms_up_then_follows_the_schedule() -> None:
    cfg = TrainConfig(data="x", epochs=4, lr_schedule="cosine", warmup_epochs=1)
    steps = [lr_factor(cfg, s, 10) for s in range(40)]
    assert steps[0] == pytest.approx(0.1 * 0.5 * (1 + math.cos(0.0)))
    assert steps[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 40)))
    assert all(a > b for a, b in itertools.pairwise(steps[9:]))
    assert steps[-1] < 0.01
    flat = TrainConfig(data="x", epochs=4, warmup_epochs=0.5)
    assert [lr_factor(flat, s, 10) for s in (0, 4, 5, 39)] == pytest.approx([0.2, 1, 1, 1])
    assert lr_factor(TrainConfig(data="x"), 7, 10) == 1.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr_schedule", "step"),
        ("warmup_epochs", -1),
        ("linear_lr", 0.0),
        ("linear_norm", "x"),
        ("point_loss", "mae"),
    ],
)
def test_bad_options_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(data="x", **{field: value}).model_config(7, 6)  # type: ignore[arg-type]


def test_linear_lr_puts_the_linear_path_in_its_own_group() -> None:
    cfg = TrainConfig(data="x", lr=1e-3, linear_lr=1e-2)
    model = build_model(cfg.model_config(7, 6))
    opt = make_optimizer(model, cfg)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-2]
    assert model.linear is not None
    assert {id(p) for p in opt.param_groups[1]["params"]} == {
        id(p) for p in model.linear.parameters()
    }
    count = sum(len(g["params"]) for g in opt.param_groups)
    assert count == len(list(model.parameters()))
    assert len(make_optimizer(model, TrainConfig(data="x")).param_groups) == 1


def _train(cfg: TrainConfig, opt_factory: str) -> tuple[list[float], list[float]]:
    torch.manual_seed(0)
    data = read_dataset(ROOT / "data" / "ETTh1.csv", DataConfig())
    model = build_model(cfg.model_config(7, data.covariates.shape[-1]))
    model.fit_scaler(torch.from_numpy(data.values[:, :2000]))
    if opt_factory == "plain":
        opt: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
    else:
        opt = make_optimizer(model, cfg)
    windows = training_windows(1, (0, 400), cfg)
    losses = [
        train_epoch(model, model, opt, data.values, data.covariates, windows, cfg, epoch=e)
        for e in range(cfg.epochs)
    ]
    return losses, [g["lr"] for g in opt.param_groups]


SMALL = dict(data="-", lookback=24, horizon=6, batch_size=8, steps_per_epoch=2, d_model=8)


def test_default_options_train_exactly_as_a_plain_adamw() -> None:
    cfg = TrainConfig(**SMALL, n_layers=1, epochs=3, lr=1e-2)  # type: ignore[arg-type]
    assert _train(cfg, "plain") == _train(cfg, "make_optimizer")


def test_cosine_schedule_and_linear_lr_train_and_decay() -> None:
    cfg = TrainConfig(
        **SMALL,  # type: ignore[arg-type]
        n_layers=1,
        epochs=4,
        lr=1e-2,
        linear_lr=3e-2,
        lr_schedule="cosine",
        warmup_epochs=1,
        linear_norm="window",
        zero_head=True,
    )
    losses, lrs = _train(cfg, "make_optimizer")
    assert np.isfinite(losses).all()
    # The rate of the last step: 1/2 (1 + cos(pi 7/8)) of each group's base.
    assert lrs == pytest.approx([r * 0.5 * (1 + math.cos(math.pi * 7 / 8)) for r in (1e-2, 3e-2)])


def test_point_loss_mse_trains_the_median_by_mse_alone() -> None:
    """point_loss="mse": what moves only the median (the linear path, which shifts every
    quantile alike) gets exactly the gradient of the MSE term; the band's pinball loss still
    trains the head."""
    torch.manual_seed(0)
    cfg = TrainConfig(data="-", horizon=5, point_loss="mse", mse_weight=0.7)
    model = build_model(TrainConfig(data="-", horizon=5, linear_norm="window").model_config(3, 0))
    with torch.no_grad():
        model.encoder.loc.copy_(torch.tensor([0.5, -1.0, 2.0]))
        model.encoder.scale.copy_(torch.tensor([2.0, 0.5, 1.5]))
        assert model.linear is not None
        model.linear.proj.weight.normal_(0, 0.1)
    x, target = torch.randn(4, 12, 3), torch.randn(4, 5, 3)
    target[0, 1, 2] = float("nan")

    def grads(loss_of: str) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        y, _ = model(x, last_only=True)
        if loss_of == "mse":
            z = (model.point(y) - model.encoder.loc) / model.encoder.scale
            zt = (target - model.encoder.loc) / model.encoder.scale
            ok = ~torch.isnan(zt)
            loss = 0.7 * ((z - zt.nan_to_num())[ok] ** 2).mean()
        else:
            loss = forecast_loss(model, y, target, cfg.mse_weight, cfg.point_loss)
        loss.backward()
        assert model.linear is not None
        return model.linear.proj.weight.grad.clone(), model.head.proj.weight.grad.clone()

    linear, head = grads("forecast_loss")
    linear_mse, head_mse = grads("mse")
    torch.testing.assert_close(linear, linear_mse)
    assert not torch.allclose(head, head_mse)
    # The default (pinball on every quantile) does pull the median: the gradients differ.
    model.zero_grad()
    y, _ = model(x, last_only=True)
    forecast_loss(model, y, target, 0.7).backward()
    assert model.linear is not None
    assert not torch.allclose(model.linear.proj.weight.grad, linear_mse)
    with pytest.raises(ValueError, match="mse_weight"):
        TrainConfig(data="x", point_loss="mse", mse_weight=0.0)


def test_score_scale_divides_the_errors() -> None:
    """evaluate_model's score_scale: the same forecasts, errors divided by another scale."""
    torch.manual_seed(0)
    data = read_dataset(ROOT / "data" / "ETTh1.csv", DataConfig())
    model = build_model(TrainConfig(data="-", horizon=4, d_model=8).model_config(7, 6))
    model.fit_scaler(torch.from_numpy(data.values[:, :2000]))
    own = model.encoder.scale.double().numpy()
    a = evaluate_model(model, data, 24, 4, "val")
    b = evaluate_model(model, data, 24, 4, "val", score_scale=own)
    c = evaluate_model(model, data, 24, 4, "val", score_scale=2 * own)
    assert a.mse == b.mse
    assert c.mse == pytest.approx(a.mse / 4)
    assert c.mae == pytest.approx(a.mae / 2)
