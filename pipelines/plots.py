"""Forecast-vs-actual plot with the quantile band (PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["plot_forecast"]


def plot_forecast(
    path: str | Path,
    history: np.ndarray,
    actual: np.ndarray,
    forecast: np.ndarray,
    quantiles: tuple[float, ...],
    channel: str,
    title: str,
) -> Path:
    """history [L], actual [H], forecast [H, Q] of one channel -> PNG at `path`."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    lookback, horizon = len(history), len(actual)
    t_hist = np.arange(-lookback + 1, 1)
    t_fut = np.arange(1, horizon + 1)
    ax.plot(t_hist, history, color="0.3", lw=1, label="history")
    ax.plot(t_fut, actual, color="black", lw=1.2, label="actual")
    median = quantiles.index(0.5)
    ax.plot(t_fut, forecast[:, median], color="tab:blue", lw=1.5, label="forecast (median)")
    lo, hi = 0, len(quantiles) - 1
    if hi > lo:
        ax.fill_between(
            t_fut,
            forecast[:, lo],
            forecast[:, hi],
            color="tab:blue",
            alpha=0.25,
            label=f"q{quantiles[lo]:g}-q{quantiles[hi]:g}",
        )
    ax.axvline(0.5, color="0.6", ls="--", lw=0.8)
    ax.set_xlabel("steps from forecast origin")
    ax.set_ylabel(channel)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
