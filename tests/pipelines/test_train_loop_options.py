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
from pipelines.fit import lr_factor, make_optimizer, train_epoch, training_windows

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
    [("lr_schedule", "step"), ("warmup_epochs", -1), ("linear_lr", 0.0), ("linear_norm", "x")],
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
