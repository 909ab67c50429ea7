"""The forecaster as an MLflow pyfunc: history in (a DataFrame), quantile forecasts out.

Input: rows in time order with the time column and every channel (NaN or null = missing), and an
optional `series` column (each series forecast separately). Output: one row per series, horizon
step and channel with the point forecast (median) and each quantile. The model carries its state
through the whole history it is given: no window.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

from forecast.artifact import load_forecaster
from forecast.model import Forecaster
from pipelines.calendar import calendar_features

__all__ = ["ForecasterPyfunc", "forecast_frame"]


def forecast_frame(model: Forecaster, extra: dict[str, Any], history: pd.DataFrame) -> pd.DataFrame:
    time_column = str(extra["time_column"])
    channels = list(extra["channels"])
    static_cols = list(extra.get("static_covariates", []))
    missing = [c for c in [time_column, *channels, *static_cols] if c not in history.columns]
    if missing:
        raise ValueError(f"history is missing column(s) {missing}")
    groups = (
        history.groupby("series", sort=False)
        if "series" in history.columns
        else [("series", history)]
    )
    rows = []
    quantiles = model.quantiles
    for series_id, frame in groups:
        stamps = pd.to_datetime(frame[time_column]).to_numpy().astype("datetime64[ns]")
        x = torch.tensor(frame[channels].to_numpy(dtype=np.float32, na_value=np.nan))[None]
        parts = [calendar_features(stamps)] if extra.get("calendar") else []
        static = [str(n) for n in extra.get("static_covariates", [])]
        if static:
            parts.append(frame[static].to_numpy(dtype=np.float32))
        cov = torch.tensor(np.concatenate(parts, axis=-1))[None] if parts else None
        with torch.no_grad():
            y, _ = model(x, covariates=cov, last_only=True)
        y_np = y[0].numpy()  # [H, C, Q]
        for h in range(y_np.shape[0]):
            for c, name in enumerate(channels):
                row = {"series": str(series_id), "step": h + 1, "channel": name}
                row["point"] = float(y_np[h, c, model.config.median_index])
                for qi, q in enumerate(quantiles):
                    row[f"q{q:g}"] = float(y_np[h, c, qi])
                rows.append(row)
    return pd.DataFrame(rows)


class ForecasterPyfunc(PythonModel):
    """Loads the `forecaster` artifact (config.json + weights.safetensors)."""

    def load_context(self, context: Any) -> None:
        self.model, self.extra = load_forecaster(context.artifacts["forecaster"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        return forecast_frame(self.model, self.extra, model_input)
