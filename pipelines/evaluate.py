"""Score a forecaster under the standard protocol, with a lookback window or its full history."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from forecast.model import Forecaster
from pipelines.data import SeriesData
from pipelines.protocol import (
    ErrorSums,
    EvalResult,
    Predictor,
    evaluate_windows,
    protocol_splits,
    window_starts,
)

__all__ = ["evaluate_model", "model_predictor"]

# Rows per forward pass when carrying the state through the whole history.
FULL_HISTORY_CHUNK = 512

# adjust(series, origins [N], forecasts [N, H, C]) -> forecasts: a change made per origin.
Adjust = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


def model_predictor(model: Forecaster) -> Predictor:
    """Point forecast from the last position of each input window, in data units."""
    param = next(model.parameters())

    def predict(x: np.ndarray, cov: np.ndarray) -> np.ndarray:
        xt = torch.as_tensor(x, dtype=param.dtype, device=param.device)
        ct = torch.as_tensor(cov, dtype=param.dtype, device=param.device)
        with torch.no_grad():
            y, _ = model(xt, covariates=ct if model.config.n_covariates else None, last_only=True)
        return model.point(y).float().cpu().numpy()

    return predict


def evaluate_model(
    model: Forecaster,
    data: SeriesData,
    lookback: int,
    horizon: int,
    split: str = "test",
    split_mode: str = "auto",
    full_history: bool = False,
    batch_size: int = 512,
    progress: bool = False,
    score_scale: np.ndarray | None = None,
    online: Adjust | None = None,
) -> EvalResult:
    """MSE/MAE on scaled values (the model's own scaler) over every window of `split`.

    full_history=False: each window sees `lookback` rows from a fresh state (the protocol).
    full_history=True: the model carries its state through all rows before each window's forecast
    origin (no window at all); the windows scored, and their targets, are the same.
    progress: a tqdm bar on stderr over the batches (windows) or chunks (full history).
    score_scale [C]: the per-channel scale errors are divided by (default: the model's scaler).
    online (full history only): adjusts each forecast, adjust(series, origins [N], pred [N, H, C])
    -> pred; pipelines/online_fit.OnlinePath swaps in the linear path refitted online.
    """
    if online is not None and not full_history:
        raise ValueError("the online linear path is a full-history mode: use full_history=True")
    if horizon > model.config.horizon:
        raise ValueError(f"horizon {horizon} exceeds the model's horizon {model.config.horizon}")
    bounds = protocol_splits(data.name, data.n_steps, split_mode).get(split)
    scale = (
        model.encoder.scale.double().cpu().numpy()
        if score_scale is None
        else np.asarray(score_scale, dtype=np.float64)
    )
    was_training = model.training
    model.eval()
    starts = window_starts(bounds, lookback, horizon)
    if full_history:
        last = int(starts[-1]) + lookback - 1
        total = data.n_series * -(-(last + 1) // FULL_HISTORY_CHUNK)
    else:
        total = data.n_series * -(-len(starts) // batch_size)
    bar = tqdm(total=total, desc=f"evaluate {split}", unit="batch", disable=not progress)
    try:
        if not full_history:
            base = model_predictor(model)

            def predict(x: np.ndarray, cov: np.ndarray) -> np.ndarray:
                bar.update()
                return base(x, cov)[:, :horizon]

            return evaluate_windows(
                predict, data.values, data.covariates, bounds, lookback, horizon, scale, batch_size
            )
        return _full_history(
            model, data, bounds, lookback, horizon, scale, tick=bar.update, adjust=online
        )
    finally:
        bar.close()
        model.train(was_training)


@torch.no_grad()
def _full_history(
    model: Forecaster,
    data: SeriesData,
    bounds: tuple[int, int],
    lookback: int,
    horizon: int,
    scale: np.ndarray,
    chunk: int = FULL_HISTORY_CHUNK,
    tick: Callable[[], object] | None = None,
    adjust: Adjust | None = None,
) -> EvalResult:
    starts = window_starts(bounds, lookback, horizon)
    # Forecast origins: the last input row of each window.
    first, last = int(starts[0]) + lookback - 1, int(starts[-1]) + lookback - 1
    param = next(model.parameters())
    sums = ErrorSums(horizon, scale)
    for series in range(data.n_series):
        x = torch.as_tensor(data.values[series, : last + 1], dtype=param.dtype, device=param.device)
        cov = torch.as_tensor(
            data.covariates[series, : last + 1], dtype=param.dtype, device=param.device
        )
        state = None
        for lo in range(0, last + 1, chunk):
            hi = min(lo + chunk, last + 1)
            y, state = model(
                x[None, lo:hi],
                state,
                covariates=cov[None, lo:hi] if model.config.n_covariates else None,
            )
            if tick is not None:
                tick()
            origins = np.arange(max(lo, first), hi)
            if len(origins) == 0:
                continue
            pred = model.point(y[0, origins - lo, :horizon]).float().cpu().numpy()
            if adjust is not None:
                pred = adjust(series, origins, pred)
            truth = data.values[series, origins[:, None] + 1 + np.arange(horizon)]
            sums.add(pred, truth)
    return sums.result()
