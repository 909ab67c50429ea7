"""Quickstart: train a small forecaster on the bundled ETTh1 CSV and forecast, all on the CPU.

A short, real run of the whole model path (data -> scaler fitted on train -> windows -> pinball
loss -> validation MSE against the naive last value -> streaming steps -> forecast). The full
training pipeline (Ray, MLflow, the standard benchmark protocol) builds on the same pieces.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from tqdm import tqdm

from forecast import ModelConfig, build_model
from forecast.loss import horizon_targets, quantile_loss

__all__ = ["BUNDLED_CSV", "QuickstartConfig", "QuickstartResult", "run_quickstart"]

BUNDLED_CSV = Path(__file__).resolve().parent.parent / "data" / "ETTh1.csv"
# ETTh1's standard split: 12 months train, 4 validation (rows).
TRAIN_ROWS, VAL_ROWS = 8640, 2880


@dataclass(frozen=True)
class QuickstartConfig:
    data: Path = BUNDLED_CSV
    kind: str = "selective_ssm"
    lookback: int = 96
    horizon: int = 24
    steps: int = 150
    batch_size: int = 32
    lr: float = 3e-3
    d_model: int = 32
    n_layers: int = 2
    val_windows: int = 256
    seed: int = 0
    progress: bool = True


@dataclass(frozen=True)
class QuickstartResult:
    channels: list[str]
    val_mse: float
    naive_mse: float
    train_seconds: float
    last_timestamp: str
    forecast: np.ndarray  # [H, C, Q] after streaming through the validation period
    quantiles: tuple[float, ...]
    state_nbytes: int


def load_csv(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """A benchmark CSV (first column `date`, the rest numeric channels).

    Returns (timestamps, channel names, values [T, C]).
    """
    frame = pl.read_csv(path)
    if frame.width < 2 or frame.columns[0] != "date":
        raise ValueError(f"{path}: expected a first column 'date' and numeric channels")
    channels = frame.columns[1:]
    values = frame.select(pl.col(channels).cast(pl.Float64)).to_numpy()
    return frame["date"].cast(pl.Utf8).to_list(), channels, values


def run_quickstart(cfg: QuickstartConfig) -> QuickstartResult:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    stamps, channels, values = load_csv(cfg.data)
    if len(values) < TRAIN_ROWS + VAL_ROWS:
        raise ValueError(
            f"{cfg.data}: needs at least {TRAIN_ROWS + VAL_ROWS} rows, has {len(values)}"
        )
    data = torch.tensor(values, dtype=torch.float32)
    model = build_model(
        ModelConfig(
            kind=cfg.kind,
            n_channels=len(channels),
            horizon=cfg.horizon,
            d_model=cfg.d_model,
            n_layers=cfg.n_layers,
        )
    )
    model.fit_scaler(data[:TRAIN_ROWS])
    loc, scale = model.encoder.loc, model.encoder.scale
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    span = cfg.lookback + cfg.horizon

    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"train {cfg.kind}", disable=not cfg.progress, unit="step")
    for _ in bar:
        starts = rng.integers(0, TRAIN_ROWS - span, size=cfg.batch_size)
        windows = torch.stack([data[s : s + span] for s in starts])
        y, _ = model(windows[:, : cfg.lookback])
        target = (horizon_targets(windows, cfg.horizon) - loc) / scale
        loss = quantile_loss((y - loc[:, None]) / scale[:, None], target, model.quantiles)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    train_seconds = time.perf_counter() - start

    model.eval()
    with torch.no_grad():
        # Validation windows start `lookback` rows before the border, as in the standard protocol.
        last = TRAIN_ROWS + VAL_ROWS - cfg.horizon
        first = TRAIN_ROWS - cfg.lookback
        idx = np.linspace(first, last - cfg.lookback, cfg.val_windows).astype(int)
        windows = torch.stack([data[s : s + span] for s in idx])
        y, _ = model(windows[:, : cfg.lookback], last_only=True)
        truth = (windows[:, cfg.lookback :] - loc) / scale
        point = (model.point(y) - loc) / scale
        naive = ((windows[:, cfg.lookback - 1 : cfg.lookback] - loc) / scale).expand_as(truth)
        val_mse = float(((point - truth) ** 2).mean())
        naive_mse = float(((naive - truth) ** 2).mean())

        # Streaming: carry the state through the whole validation period one row at a time.
        state = model.init_state(1)
        y_t = None
        for row in data[TRAIN_ROWS : TRAIN_ROWS + VAL_ROWS]:
            y_t, state = model.step(row[None], state)
    assert y_t is not None
    return QuickstartResult(
        channels=channels,
        val_mse=val_mse,
        naive_mse=naive_mse,
        train_seconds=train_seconds,
        last_timestamp=stamps[TRAIN_ROWS + VAL_ROWS - 1],
        forecast=y_t[0].numpy(),
        quantiles=model.quantiles,
        state_nbytes=model.state_nbytes(),
    )
