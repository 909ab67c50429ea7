"""The standard long-horizon evaluation protocol (../shared/data/README.md), exactly.

- Splits by row: ETTh1 8640/2880/2880, ETTm1 four times that, others 70% / rest / 20%.
- Scaler per channel, fitted on the train split only (carried inside the model).
- A window's input is `lookback` rows, its target the next `horizon` rows. Validation and test
  windows start `lookback` rows before their border, so the first target starts at the border;
  stride 1, and every window is scored (no dropped last batch).
- MSE and MAE on scaled values, averaged over windows, horizon steps and channels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ErrorSums",
    "EvalResult",
    "Splits",
    "evaluate_windows",
    "protocol_splits",
    "window_starts",
]

# ETT: 12 months train, 4 validation, 4 test, of 30-day months.
ETT_HOURLY = (12 * 30 * 24, 4 * 30 * 24, 4 * 30 * 24)


@dataclass(frozen=True)
class Splits:
    """Row ranges [lo, hi) of each split."""

    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]
    mode: str

    def get(self, name: str) -> tuple[int, int]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {name!r}")
        return getattr(self, name)


def protocol_splits(name: str, n_rows: int, mode: str = "auto") -> Splits:
    if mode == "auto":
        stem = name.lower()
        mode = (
            "ett-hourly"
            if stem.startswith("etth")
            else "ett-15min"
            if stem.startswith("ettm")
            else "ratio"
        )
    if mode in ("ett-hourly", "ett-15min"):
        k = 1 if mode == "ett-hourly" else 4
        n_train, n_val, n_test = (k * n for n in ETT_HOURLY)
        if n_rows < n_train + n_val + n_test:
            raise ValueError(
                f"{name}: {mode} splits need {n_train + n_val + n_test} rows, have {n_rows}"
            )
        return Splits(
            (0, n_train),
            (n_train, n_train + n_val),
            (n_train + n_val, n_train + n_val + n_test),
            mode,
        )
    if mode != "ratio":
        raise ValueError(f"unknown split mode {mode!r}")
    n_train, n_test = int(n_rows * 0.7), int(n_rows * 0.2)
    return Splits((0, n_train), (n_train, n_rows - n_test), (n_rows - n_test, n_rows), mode)


def window_starts(bounds: tuple[int, int], lookback: int, horizon: int) -> np.ndarray:
    """Start rows of every window whose target lies inside `bounds`; inputs may reach back before
    the border by `lookback` rows (never before row 0)."""
    lo, hi = bounds
    first, last = max(lo - lookback, 0), hi - lookback - horizon
    if last < first:
        raise ValueError(
            f"split rows {lo}..{hi} are too short for lookback {lookback} + horizon {horizon}"
        )
    return np.arange(first, last + 1)


@dataclass(frozen=True)
class EvalResult:
    mse: float
    mae: float
    windows: int
    horizon: int
    mse_by_step: np.ndarray  # [H]
    mae_by_step: np.ndarray  # [H]

    def summary(self) -> dict[str, float | int]:
        return {"mse": self.mse, "mae": self.mae, "windows": self.windows, "horizon": self.horizon}


class ErrorSums:
    """Running sums of scaled squared and absolute errors per horizon step and channel.

    Errors are on scaled values: (pred - loc) / scale - (truth - loc) / scale, i.e.
    (pred - truth) / scale.
    Missing targets (NaN) are left out. The sums are kept per channel too ([H, C], `sq`,
    `count`): pipelines/shrink.py chooses a weight per channel from them.
    """

    def __init__(self, horizon: int, scale: np.ndarray):
        """scale [C]: one per channel."""
        self.scale = np.asarray(scale, dtype=np.float64)
        self.sq = np.zeros((horizon, self.scale.size))
        self.ab = np.zeros((horizon, self.scale.size))
        self.count = np.zeros((horizon, self.scale.size))
        self.windows = 0

    def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
        """pred, truth [B, H, C] in data units."""
        pred = np.asarray(pred, dtype=np.float64)
        if pred.shape != truth.shape:
            raise ValueError(f"forecast has shape {pred.shape}, expected {truth.shape}")
        ok = ~np.isnan(truth)
        err = np.where(ok, (pred - np.where(ok, truth, 0.0)) / self.scale, 0.0)
        self.sq += (err**2).sum(axis=0)
        self.ab += np.abs(err).sum(axis=0)
        self.count += ok.sum(axis=0)
        self.windows += pred.shape[0]

    def result(self) -> EvalResult:
        total = self.count.sum()
        if total == 0:
            raise ValueError("no observed target values to score")
        count = np.maximum(self.count.sum(axis=1), 1)
        return EvalResult(
            mse=float(self.sq.sum() / total),
            mae=float(self.ab.sum() / total),
            windows=self.windows,
            horizon=len(self.sq),
            mse_by_step=self.sq.sum(axis=1) / count,
            mae_by_step=self.ab.sum(axis=1) / count,
        )


# predict(x [B, L, C], covariates [B, L, K]) -> point forecasts [B, H, C] in data units.
Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def evaluate_windows(
    predict: Predictor,
    values: np.ndarray,
    covariates: np.ndarray,
    bounds: tuple[int, int],
    lookback: int,
    horizon: int,
    scale: np.ndarray,
    batch_size: int = 512,
) -> EvalResult:
    """Score every window of every series. values [S, T, C]; covariates [S, T, K]; scale [C]."""
    starts = window_starts(bounds, lookback, horizon)
    sums = ErrorSums(horizon, scale)
    for series in range(values.shape[0]):
        for i in range(0, len(starts), batch_size):
            batch = starts[i : i + batch_size]
            idx = batch[:, None] + np.arange(lookback)
            truth = values[series, batch[:, None] + lookback + np.arange(horizon)]
            sums.add(predict(values[series, idx], covariates[series, idx]), truth)
    return sums.result()
