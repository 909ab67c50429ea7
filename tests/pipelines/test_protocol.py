"""The standard protocol: splits, scaler and windows as ../shared/data/README.md states them, and
an evaluator that gives the hand-computed answer for a known model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from forecast import ModelConfig, build_model
from pipelines.config import DataConfig
from pipelines.data import read_dataset
from pipelines.protocol import evaluate_windows, protocol_splits, window_starts

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def _shared(name: str) -> Path:
    path = SHARED / name
    assert path.exists(), f"benchmark data missing: {path} (shared/ must sit beside the repo)"
    return path


@pytest.mark.parametrize(
    ("name", "rows", "train", "val", "test"),
    [
        ("ETTh1.csv", 17420, 8640, 2880, 2880),
        ("ETTm1.csv", 69680, 34560, 11520, 11520),
        ("weather.csv", 52696, 36887, 5270, 10539),
    ],
)
def test_splits_and_scaler_match_the_protocol(
    name: str, rows: int, train: int, val: int, test: int
) -> None:
    data = read_dataset(_shared(name), DataConfig())
    assert data.n_steps == rows
    s = protocol_splits(data.name, data.n_steps)
    assert s.train == (0, train)
    assert s.val == (train, train + val)
    assert s.test == (train + val, train + val + test)
    # Scaler: per channel, train rows only, population std (as sklearn's StandardScaler).
    model = build_model(ModelConfig(kind="diagonal_ssm", n_channels=len(data.channels), horizon=1))
    model.fit_scaler(torch.from_numpy(data.values[:, :train]))
    raw = data.values[0, :train].astype(np.float64)
    assert np.allclose(model.encoder.loc.numpy(), np.nanmean(raw, axis=0), rtol=1e-5)
    assert np.allclose(model.encoder.scale.numpy(), np.nanstd(raw, axis=0), rtol=1e-5)
    # Test windows: every one scored, the first starting `lookback` rows before the border.
    starts = window_starts(s.test, 96, 96)
    assert starts[0] == train + val - 96
    assert len(starts) == test - 96 + 1


def test_weather_sentinels_become_missing() -> None:
    data = read_dataset(_shared("weather.csv"), DataConfig())
    ot = data.channels.index("OT")
    assert int(np.isnan(data.values[0, :, ot]).sum()) == 50
    kept = read_dataset(_shared("weather.csv"), DataConfig(missing_values=()))
    assert int((kept.values[0, :, ot] == -9999).sum()) == 50


def test_seasonal_naive_known_answer() -> None:
    """Seasonal naive (repeat the value one period earlier) scored by hand, window by window."""
    rng = np.random.default_rng(0)
    n, c, period, lookback, horizon = 300, 2, 24, 48, 30
    t = np.arange(n)
    values = np.stack(
        [np.sin(2 * np.pi * t / period) * 3 + rng.normal(0, 0.5, n) for _ in range(c)], -1
    )
    values = values[None].astype(np.float64)
    scale = np.array([2.0, 0.5])

    def seasonal_naive(x: np.ndarray, cov: np.ndarray) -> np.ndarray:
        steps = np.arange(horizon)
        return x[:, lookback - period + steps % period]

    bounds = (200, 300)
    res = evaluate_windows(
        seasonal_naive, values, np.zeros((1, n, 0)), bounds, lookback, horizon, scale
    )

    total_sq = total_ab = count = 0.0
    windows = 0
    for s in range(bounds[0] - lookback, bounds[1] - lookback - horizon + 1):
        windows += 1
        for h in range(horizon):
            for ch in range(c):
                pred = values[0, s + lookback - period + h % period, ch]
                truth = values[0, s + lookback + h, ch]
                e = (pred - truth) / scale[ch]
                total_sq += e * e
                total_ab += abs(e)
                count += 1
    assert res.windows == windows == 100 - horizon + 1
    assert res.mse == pytest.approx(total_sq / count, rel=1e-12)
    assert res.mae == pytest.approx(total_ab / count, rel=1e-12)
    assert res.mse_by_step.shape == (horizon,)


def test_data_config_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown channel column"):
        read_dataset(ROOT / "data" / "ETTh1.csv", DataConfig(channels=("OT", "nope")))
    with pytest.raises(ValueError, match="time column 'time' not found"):
        read_dataset(ROOT / "data" / "ETTh1.csv", DataConfig(time_column="time"))
    with pytest.raises(ValueError, match="'5min' does not match"):
        read_dataset(ROOT / "data" / "ETTh1.csv", DataConfig(frequency="5min"))
    with pytest.raises(ValueError, match="not a valid frequency"):
        read_dataset(ROOT / "data" / "ETTh1.csv", DataConfig(frequency="every tuesday"))
    with pytest.raises(ValueError, match=r"DataConfig\.split"):
        DataConfig(split="random")
    bad = tmp_path / "bad.csv"
    bad.write_text("date,a\n2020-01-01 00:00:00,1\n2020-01-01 01:00:00,x\n")
    with pytest.raises(ValueError, match="not numeric"):
        read_dataset(bad, DataConfig())
    with pytest.raises(ValueError, match="unsupported format"):
        read_dataset(bad.with_suffix(".csv").rename(tmp_path / "bad.txt"), DataConfig())
