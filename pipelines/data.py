"""Readers: tables through polars, grids through xarray, into one `SeriesData` value.

Missing values (NaN, empty cells, and the sentinels named in DataConfig.missing_values, e.g. the
Jena weather file's -9999) become NaN. The model reads NaN as "missing": it enters as the training
mean with a mask flag (forecast/layers.py), and is left out of the loss and of the scaler's
statistics. Rows are kept as they are in the file (the benchmark protocols count rows), so
duplicate timestamps and gaps are reported, not repaired.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipelines.calendar import CALENDAR_FEATURES, calendar_features
from pipelines.config import DataConfig

__all__ = ["SeriesData", "read_dataset"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesData:
    name: str
    timestamps: np.ndarray  # [T] datetime64[ns]
    values: np.ndarray  # [S, T, C] float32, NaN = missing
    channels: tuple[str, ...]
    series_ids: tuple[str, ...]
    covariates: np.ndarray  # [S, T, K] float32: calendar then static covariates
    covariate_names: tuple[str, ...]
    frequency: str

    @property
    def n_series(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_steps(self) -> int:
        return int(self.values.shape[1])


def read_dataset(path: str | Path, cfg: DataConfig) -> SeriesData:
    """CSV / Parquet (one series) or NetCDF / Zarr (one series per grid point or station)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such dataset: {path}")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet", ".pq"):
        frame = (
            pl.read_csv(path, infer_schema_length=10_000)
            if suffix == ".csv"
            else pl.read_parquet(path)
        )
        stamps, values, channels, ids, static, static_names = _from_table(frame, cfg, path)
    elif suffix in (".nc", ".nc4", ".netcdf", ".zarr"):
        stamps, values, channels, ids, static, static_names = _from_grid(path, cfg)
    else:
        raise ValueError(f"{path}: unsupported format {suffix!r} (csv, parquet, nc, zarr)")
    for sentinel in cfg.missing_values:
        values[values == sentinel] = np.nan
    values[~np.isfinite(values)] = np.nan
    frequency = _check_frequency(stamps, cfg.frequency, path)
    covs: list[np.ndarray] = []
    names: list[str] = []
    if cfg.calendar:
        covs.append(np.broadcast_to(calendar_features(stamps), (len(ids), len(stamps), 6)))
        names += CALENDAR_FEATURES
    if static is not None:
        covs.append(np.broadcast_to(static[:, None, :], (len(ids), len(stamps), static.shape[1])))
        names += static_names
    covariates = (
        np.concatenate(covs, axis=-1).astype(np.float32)
        if covs
        else np.zeros((len(ids), len(stamps), 0), np.float32)
    )
    return SeriesData(
        name=path.stem,
        timestamps=stamps,
        values=values.astype(np.float32),
        channels=tuple(channels),
        series_ids=tuple(ids),
        covariates=covariates,
        covariate_names=tuple(names),
        frequency=frequency,
    )


def _from_table(
    frame: pl.DataFrame, cfg: DataConfig, path: Path
) -> tuple[np.ndarray, np.ndarray, list[str], list[str], None, list[str]]:
    if cfg.time_column not in frame.columns:
        raise ValueError(
            f"{path}: time column {cfg.time_column!r} not found; columns: {frame.columns}"
        )
    channels = (
        list(cfg.channels) if cfg.channels else [c for c in frame.columns if c != cfg.time_column]
    )
    unknown = [c for c in channels if c not in frame.columns]
    if unknown:
        raise ValueError(f"{path}: unknown channel column(s) {unknown}; columns: {frame.columns}")
    if not channels:
        raise ValueError(f"{path}: no channel columns besides {cfg.time_column!r}")
    time = frame[cfg.time_column]
    if time.dtype == pl.Utf8:
        try:
            time = time.str.to_datetime(time_unit="ns")
        except pl.exceptions.PolarsError as e:
            raise ValueError(f"{path}: column {cfg.time_column!r} is not a timestamp: {e}") from e
    elif not time.dtype.is_temporal():
        raise ValueError(f"{path}: column {cfg.time_column!r} is not a timestamp ({time.dtype})")
    bad = [c for c in channels if not frame[c].dtype.is_numeric()]
    if bad:
        raise ValueError(f"{path}: channel column(s) {bad} are not numeric")
    values = frame.select(pl.col(channels).cast(pl.Float64)).to_numpy()
    stamps = time.cast(pl.Datetime("ns")).to_numpy()
    return stamps, values[None].copy(), channels, [path.stem], None, []


def _from_grid(
    path: Path, cfg: DataConfig
) -> tuple[np.ndarray, np.ndarray, list[str], list[str], np.ndarray | None, list[str]]:
    import xarray as xr

    ds = (
        # Unconsolidated reads work for every store (Zarr v2 or v3, consolidated or not).
        xr.open_zarr(path, consolidated=False)
        if path.suffix.lower() == ".zarr"
        else xr.open_dataset(path)
    )
    try:
        tdim = cfg.time_column
        if tdim not in ds.dims:
            raise ValueError(f"{path}: time dimension {tdim!r} not found; dims: {list(ds.dims)}")
        # Sorted: an unconsolidated Zarr store lists its arrays in directory order, which varies.
        with_time = sorted(str(v) for v in ds.data_vars if tdim in ds[v].dims)
        names = list(cfg.channels) if cfg.channels else with_time
        unknown = [v for v in names if v not in ds.data_vars]
        if unknown:
            raise ValueError(
                f"{path}: unknown variable(s) {unknown}; variables: {list(ds.data_vars)}"
            )
        if not names:
            raise ValueError(f"{path}: no variable has the time dimension {tdim!r}")
        space = [str(d) for d in ds[names[0]].dims if d != tdim]
        for v in names:
            if (
                sorted(str(d) for d in ds[v].dims if d != tdim) != sorted(space)
                or tdim not in ds[v].dims
            ):
                raise ValueError(
                    f"{path}: variable {v!r} has dims {ds[v].dims}, expected {tdim} x {space}"
                )
        stacked = ds[names].transpose(*space, tdim) if space else ds[names].transpose(tdim)
        if space:
            stacked = stacked.stack(series=space)
            values = np.stack([stacked[v].transpose("series", tdim).values for v in names], -1)
            index = stacked.indexes["series"]
            ids = [",".join(f"{d}={x}" for d, x in zip(space, key, strict=True)) for key in index]
            coords = np.array([list(key) for key in index], dtype=np.float64)
            # Location as static covariates, standardised across series so no coordinate dominates.
            std = coords.std(axis=0)
            static = (coords - coords.mean(axis=0)) / np.where(std > 0, std, 1.0)
        else:
            values = np.stack([stacked[v].values for v in names], -1)[None]
            ids, static = [path.stem], None
        stamps = np.asarray(ds[tdim].values).astype("datetime64[ns]")
        return stamps, values.astype(np.float64), names, ids, static, list(space) if space else []
    finally:
        ds.close()


def _check_frequency(stamps: np.ndarray, declared: str | None, path: Path) -> str:
    import pandas as pd

    if len(stamps) < 2:
        raise ValueError(f"{path}: needs at least two time steps")
    steps = np.diff(stamps).astype("timedelta64[ns]").astype(np.int64)
    if (steps < 0).any():
        raise ValueError(
            f"{path}: timestamps are not sorted (first at row {int(np.argmax(steps < 0)) + 1})"
        )
    values, counts = np.unique(steps, return_counts=True)
    common = int(values[np.argmax(counts)])
    if common <= 0:
        raise ValueError(f"{path}: most timestamps repeat; cannot infer a frequency")
    irregular = int((steps != common).sum())
    if irregular:
        log.info(
            "%s: %d of %d steps differ from the usual %s",
            path.name,
            irregular,
            len(steps),
            pd.Timedelta(common),
        )
    if declared is None:
        return str(pd.tseries.frequencies.to_offset(pd.Timedelta(common)).freqstr)
    try:
        offset = pd.tseries.frequencies.to_offset(declared)
        declared_ns = int(pd.Timedelta(offset).value)
    except (ValueError, TypeError) as e:
        raise ValueError(f"DataConfig.frequency {declared!r} is not a valid frequency") from e
    if declared_ns != common:
        raise ValueError(
            f"DataConfig.frequency {declared!r} does not match {path.name}, whose usual step is "
            f"{pd.Timedelta(common)}"
        )
    return declared
