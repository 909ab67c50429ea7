"""Gridded data (xarray: NetCDF and Zarr): every grid point becomes a series with its location as
static covariates, and it trains and evaluates through the same path as a table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pipelines.config import DataConfig, TrainConfig
from pipelines.data import read_dataset
from pipelines.train import train


def _grid(steps: int = 400) -> xr.Dataset:
    rng = np.random.default_rng(0)
    time = pd.date_range("2024-01-01", periods=steps, freq="1h")
    lat, lon = np.array([50.0, 52.5]), np.array([5.0, 7.5, 10.0])
    hours = np.arange(steps)[:, None, None]
    base = np.sin(2 * np.pi * hours / 24) * (1 + lat[None, :, None] / 100) + lon[None, None, :] / 10
    t2m = base + rng.normal(0, 0.1, (steps, 2, 3))
    wind = np.cos(2 * np.pi * hours / 24) + rng.normal(0, 0.2, (steps, 2, 3))
    wind[5, 1, 2] = np.nan  # one missing value
    return xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t2m), "wind": (("time", "lat", "lon"), wind)},
        coords={"time": time, "lat": lat, "lon": lon},
    )


@pytest.fixture(scope="module")
def grid_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("grid")
    ds = _grid()
    paths = {"nc": folder / "grid.nc", "zarr": folder / "grid.zarr"}
    ds.to_netcdf(paths["nc"])
    ds.to_zarr(paths["zarr"], mode="w", consolidated=False)
    return paths


def test_grid_points_become_series(grid_files: dict[str, Path]) -> None:
    nc = read_dataset(grid_files["nc"], DataConfig(time_column="time"))
    zarr = read_dataset(grid_files["zarr"], DataConfig(time_column="time"))
    ds = _grid()
    for data in (nc, zarr):
        assert data.values.shape == (6, 400, 2)
        assert data.channels == ("t2m", "wind")
        assert data.series_ids[0] == "lat=50.0,lon=5.0"
        assert data.covariate_names[-2:] == ("lat", "lon")
        assert data.frequency == "h"
        # Series order is lat-major: series 5 is lat=52.5, lon=10.
        np.testing.assert_allclose(data.values[5, :, 0], ds["t2m"].values[:, 1, 2], rtol=1e-6)
        assert np.isnan(data.values[5, 5, 1])
    np.testing.assert_array_equal(nc.values, zarr.values)
    with pytest.raises(ValueError, match="unknown variable"):
        read_dataset(grid_files["nc"], DataConfig(time_column="time", channels=("t2m", "rain")))
    with pytest.raises(ValueError, match="time dimension 'date' not found"):
        read_dataset(grid_files["nc"], DataConfig())


def test_grid_trains_and_evaluates(store: Path, grid_files: dict[str, Path]) -> None:
    cfg = TrainConfig(
        data=str(grid_files["nc"]),
        kind="rwkv7",
        lookback=24,
        horizon=6,
        epochs=1,
        batch_size=16,
        steps_per_epoch=3,
        d_model=16,
        head_size=8,
        n_layers=1,
        experiment="test-grid",
        run_name="grid-run",
    )
    res = train(cfg, DataConfig(time_column="time", split="ratio"))
    assert np.isfinite(res.test_mse) and res.test_mse > 0
    # The CLI evaluates the logged model under the same protocol and gets the same score.
    proc = subprocess.run(
        [
            sys.executable, "-m", "statecast", "evaluate",
            "--model-uri", res.model_uri, "--data", str(grid_files["zarr"]),
            "--horizon", "6", "--split-mode", "ratio",
        ],
        capture_output=True, text=True, timeout=300, env={**os.environ},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["horizon"] == 6
    assert out["windows"] == 6 * (80 - 6 + 1)  # 6 series, every test window of 80 rows
    assert out["mse"] == pytest.approx(res.test_mse, rel=1e-9)
