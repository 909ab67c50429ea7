"""Training options: where the loss is taken, the linear path's length, and the progress bars
(which must not change what is computed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import pipelines.progress
from forecast import build_model
from pipelines.config import DataConfig, TrainConfig
from pipelines.data import read_dataset
from pipelines.evaluate import evaluate_model
from pipelines.fit import train_epoch, training_windows
from pipelines.progress import throttled

ROOT = Path(__file__).resolve().parents[2]


def test_train_config_options() -> None:
    cfg = TrainConfig(data="x.csv", lookback=48, horizon=12)
    mcfg = cfg.model_config(7, 6)
    assert mcfg.linear_lookback == 48  # None: the lookback
    assert TrainConfig(data="x", linear_lookback=0).model_config(7, 6).linear_lookback == 0
    assert cfg.loss_positions == "origin"
    with pytest.raises(ValueError, match="loss_positions"):
        TrainConfig(data="x", loss_positions="middle")
    with pytest.raises(ValueError, match="linear_lookback"):
        TrainConfig(data="x", linear_lookback=-2)
    assert TrainConfig(data="x", cycle_length=24).model_config(7, 6).cycle_length == 24
    with pytest.raises(ValueError, match="shrink_groups must be one of"):
        TrainConfig(data="x", shrink_groups="station")


def test_a_daily_cycle_without_the_calendar_is_a_clear_error() -> None:
    """The cycle's phase is the time of day of the calendar covariates: without them, training
    stops before Ray or MLflow start, naming the option."""
    from pipelines.train import train

    cfg = TrainConfig(data=str(ROOT / "data" / "ETTh1.csv"), cycle_length=24)
    with pytest.raises(ValueError, match=r"--cycle-length .* calendar"):
        train(cfg, DataConfig(calendar=False))


@pytest.mark.parametrize("positions", ["origin", "all"])
def test_a_training_step_lowers_the_loss_on_its_batch(positions: str) -> None:
    torch.manual_seed(0)
    data = read_dataset(ROOT / "data" / "ETTh1.csv", DataConfig())
    cfg = TrainConfig(
        data="-",
        lookback=24,
        horizon=6,
        batch_size=8,
        steps_per_epoch=1,
        d_model=8,
        n_layers=1,
        lr=1e-2,
        loss_positions=positions,
    )
    model = build_model(cfg.model_config(7, data.covariates.shape[-1]))
    model.fit_scaler(torch.from_numpy(data.values[:, :2000]))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    windows = training_windows(1, (0, 400), cfg)
    losses = [
        train_epoch(model, model, opt, data.values, data.covariates, windows, cfg, epoch=0)
        for _ in range(5)
    ]
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0]


def test_evaluation_progress_bar_changes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    data = read_dataset(ROOT / "data" / "ETTh1.csv", DataConfig())
    cfg = TrainConfig(data="-", lookback=24, horizon=6, d_model=8, n_layers=1)
    model = build_model(cfg.model_config(7, data.covariates.shape[-1]))
    model.fit_scaler(torch.from_numpy(data.values[:, :8640]))
    quiet = evaluate_model(model, data, 24, 6, "test", batch_size=1024)
    shown = evaluate_model(model, data, 24, 6, "test", batch_size=1024, progress=True)
    assert "evaluate test" in capsys.readouterr().err
    assert (quiet.mse, quiet.mae, quiet.windows) == (shown.mse, shown.mae, shown.windows)


def test_throttled_reports_at_most_once_per_interval_and_always_the_last() -> None:
    seen: list[float] = []
    report = throttled(seen.append, every_s=3600)
    for i in range(10):
        report(i / 10, final=i == 9)
    assert seen == [0.0, 0.9]


def test_throttled_reports_the_first_value_on_a_machine_just_booted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """time.monotonic() counts from boot: 5 s after it, the first value is still reported."""
    monkeypatch.setattr(pipelines.progress.time, "monotonic", lambda: 5.0)
    seen: list[float] = []
    report = throttled(seen.append, every_s=3600)
    report(0.1)
    report(0.2)
    assert seen == [0.1]
