"""DataConfig and TrainConfig: small frozen dataclasses; unknown keys and bad values are errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from forecast import KINDS, ModelConfig

__all__ = ["CYCLE_DAY", "RECIPES", "DataConfig", "TrainConfig", "config_from_dict"]

SPLITS = ("auto", "ett-hourly", "ett-15min", "ratio")
LOSS_POSITIONS = ("origin", "all")
LR_SCHEDULES = ("constant", "cosine")
POINT_LOSSES = ("pinball", "mse")
LINEAR_INITS = ("zero", "fit")
# pipelines/shrink.py: one weight for the model, per output channel, per channel and quarter of
# the horizon.
SHRINK_GROUPS = ("model", "channel", "channel_horizon")
# TrainConfig.cycle_length: a day at the data's frequency, resolved when the data is read.
CYCLE_DAY = -1
# Named starting points for TrainConfig (`statecast train --recipe NAME`; options given override
# them). "benchmark" is the fixed recipe of docs/RESULTS.md's eighth section with the eleventh's
# map per channel, the one bench/device/acc_grid.sh runs (`rc3shg`; tests/statecast/test_cli.py
# holds the two equal): the linear path (a map per channel, each pulled toward the shared one by
# validation) and daily cycle started at their closed-form fit and kept there (rate 1e-9),
# the backbone trained on what the fit leaves (lr 3e-4, MSE point loss, cosine schedule), then
# its part of the forecast shrunk toward the fit per channel and quarter of the horizon, by
# validation. 8 epochs, as the grid ran ETTm1 and weather (ETTh1 ran 12: `--epochs 12`); the
# cosine schedule ends at the last of them, and early stopping (patience 2) often comes first.
RECIPES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "benchmark": MappingProxyType(
            {
                "kind": "diagonal_ssm",
                "epochs": 8,
                "patience": 2,
                "batch_size": 128,
                "steps_per_epoch": 100,
                "lr": 3e-4,
                "lr_schedule": "cosine",
                "warmup_epochs": 0.5,
                "linear_lr": 1e-9,
                "linear_norm": "window",
                "zero_head": True,
                "dropout": 0.1,
                "point_loss": "mse",
                "linear_init": "fit",
                "cycle_length": CYCLE_DAY,
                "linear_per_channel": True,
                "backbone_shrink": True,
                "shrink_groups": "channel_horizon",
            }
        )
    }
)
C = TypeVar("C")


@dataclass(frozen=True)
class DataConfig:
    """How to read a dataset.

    Tables (CSV/Parquet): one row per time step, `time_column` plus numeric channels; one series.
    Grids (NetCDF/Zarr): variables are channels over `time_dim` and the other dims; every point of
    the other dims (lat x lon, or station) is its own series, its coordinates static covariates.
    """

    time_column: str = "date"
    # None: every numeric column in file order (tables), or every variable with the time dim
    # in name order (grids).
    channels: tuple[str, ...] | None = None
    # Pandas-style offset ("1h", "15min", "10min"); None infers it from the most common step.
    frequency: str | None = None
    # Values that mean "missing" (the Jena weather file uses -9999); they become NaN (masked).
    missing_values: tuple[float, ...] = (-9999.0,)
    # Add hour/day-of-week/day-of-year covariates computed from the timestamps.
    calendar: bool = True
    # Split protocol: "auto" picks ETT's fixed month splits for ETTh*/ETTm* files, else "ratio"
    # (70% train / 10% val / 20% test, as the benchmark literature does for weather).
    split: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.time_column, str) or not self.time_column:
            raise ValueError("DataConfig.time_column must be a non-empty string")
        if self.channels is not None:
            if isinstance(self.channels, str) or not all(isinstance(c, str) for c in self.channels):
                raise ValueError(
                    f"DataConfig.channels must be a list of names, got {self.channels!r}"
                )
            if not self.channels:
                raise ValueError("DataConfig.channels must not be empty")
            object.__setattr__(self, "channels", tuple(self.channels))
        if self.split not in SPLITS:
            raise ValueError(f"DataConfig.split must be one of {SPLITS}, got {self.split!r}")
        object.__setattr__(self, "missing_values", tuple(float(v) for v in self.missing_values))


@dataclass(frozen=True)
class TrainConfig:
    data: str
    kind: str = "selective_ssm"
    lookback: int = 96
    horizon: int = 96
    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    # Learning rate over training: "constant", or "cosine" (decay to 0 at the last step of
    # `epochs`); either after a linear warm-up of `warmup_epochs` (fractions allowed).
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    # Learning rate of the linear path's weights (None: `lr`): a linear map of L values to H
    # learns slowly at the rate that suits the recurrent backbone.
    linear_lr: float | None = None
    # Stop after this many epochs without a better validation loss.
    patience: int = 3
    # Cap on optimiser steps per epoch (0 = one pass over all training windows).
    steps_per_epoch: int = 0
    # Weight of an MSE term on the median next to the pinball loss: the benchmarks score MSE.
    mse_weight: float = 1.0
    # What trains the point forecast (the median, which is scored): "pinball" (its pinball loss
    # plus the MSE term, and the other quantiles' pinball pulls it too) or "mse" (the MSE term
    # alone: the benchmarks score MSE; the band's pinball loss then trains the offsets from the
    # median, not the median).
    point_loss: str = "pinball"
    d_model: int = 64
    n_layers: int = 2
    d_state: int = 16
    expand: int = 2
    conv_kernel: int = 4
    head_size: int = 16
    # Per-series running normalisation half-life in steps (0: the global scaler only).
    norm_halflife: int = 96
    # Every channel its own series through shared weights (PatchTST's channel independence).
    channel_independent: bool = False
    # Length of the linear path (forecast/layers.py LinearPath); None: the lookback; 0: none.
    linear_lookback: int | None = None
    dropout: float = 0.0
    # ModelConfig.linear_norm and ModelConfig.zero_head (forecast/config.py).
    linear_norm: str = "running"
    zero_head: bool = False
    # ModelConfig.cycle_length: steps in a day for the linear path's daily cycle (0: none;
    # CYCLE_DAY: a day at the data's frequency, which pipelines.train.train resolves).
    cycle_length: int = 0
    # ModelConfig.linear_per_channel: a linear map per channel (with linear_init "fit", each
    # pulled toward the shared fit by the strength best on validation, pipelines/linear_fit.py).
    linear_per_channel: bool = False
    # Where the linear path starts: "zero", or "fit": its closed-form least-squares fit on the
    # training windows (pipelines/linear_fit.py; needs linear_norm "window"), the backbone then
    # learning what the fit leaves; the start is validated too, so training keeps it unless an
    # epoch beats it on validation.
    linear_init: str = "zero"
    # After training, scale the backbone's part of the median forecast by the weight in
    # pipelines/shrink.py SHRINK_WEIGHTS (1 .. 0) with the best validation MSE: a mix of the
    # trained model and its linear path (with linear_init "fit": of the model and the fit).
    backbone_shrink: bool = False
    # One weight for the model, or one per group of the head's rows: "channel" (per output
    # channel) or "channel_horizon" (per channel and quarter of the horizon); pipelines/shrink.py.
    shrink_groups: str = "model"
    # Where the loss is taken: "origin" (the last position of each window: what is scored) or
    # "all" (every position of the lookback forecasts its next `horizon` rows).
    loss_positions: str = "origin"
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    workers: int = 1
    use_gpu: bool = False
    seed: int = 0
    experiment: str = "statecast"
    register: str | None = None
    run_name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"TrainConfig.kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("lookback", "horizon", "epochs", "batch_size", "patience", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 1, got {value!r}")
        if self.steps_per_epoch < 0:
            raise ValueError("TrainConfig.steps_per_epoch must be >= 0")
        if not self.lr > 0 or self.weight_decay < 0 or self.mse_weight < 0:
            raise ValueError("TrainConfig: lr must be > 0, weight_decay and mse_weight >= 0")
        if self.point_loss not in POINT_LOSSES:
            raise ValueError(
                f"TrainConfig.point_loss must be one of {POINT_LOSSES}, got {self.point_loss!r}"
            )
        if self.point_loss == "mse" and not self.mse_weight > 0:
            raise ValueError("TrainConfig.point_loss 'mse' needs mse_weight > 0")
        if self.shrink_groups not in SHRINK_GROUPS:
            raise ValueError(
                f"TrainConfig.shrink_groups must be one of {SHRINK_GROUPS}, "
                f"got {self.shrink_groups!r}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"TrainConfig.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"
            )
        if isinstance(self.warmup_epochs, bool) or not self.warmup_epochs >= 0:
            raise ValueError(
                f"TrainConfig.warmup_epochs must be a number >= 0, got {self.warmup_epochs!r}"
            )
        if self.linear_lr is not None and not self.linear_lr > 0:
            raise ValueError(f"TrainConfig.linear_lr must be None or > 0, got {self.linear_lr!r}")
        if self.linear_init not in LINEAR_INITS:
            raise ValueError(
                f"TrainConfig.linear_init must be one of {LINEAR_INITS}, got {self.linear_init!r}"
            )
        if self.linear_init == "fit" and (
            self.linear_norm != "window" or self.linear_lookback == 0
        ):
            raise ValueError(
                "TrainConfig.linear_init 'fit' needs the linear path with linear_norm 'window'"
            )
        if self.loss_positions not in LOSS_POSITIONS:
            raise ValueError(
                f"TrainConfig.loss_positions must be one of {LOSS_POSITIONS}, "
                f"got {self.loss_positions!r}"
            )
        if (
            isinstance(self.cycle_length, bool)
            or not isinstance(self.cycle_length, int)
            or self.cycle_length < CYCLE_DAY
        ):
            raise ValueError(
                f"TrainConfig.cycle_length must be an integer >= 0, or CYCLE_DAY ({CYCLE_DAY}), "
                f"got {self.cycle_length!r}"
            )
        if self.linear_lookback is not None and (
            isinstance(self.linear_lookback, bool)
            or not isinstance(self.linear_lookback, int)
            or self.linear_lookback < 0
        ):
            raise ValueError(
                f"TrainConfig.linear_lookback must be None or an integer >= 0, "
                f"got {self.linear_lookback!r}"
            )
        object.__setattr__(self, "quantiles", tuple(float(q) for q in self.quantiles))

    def model_config(self, n_channels: int, n_covariates: int) -> ModelConfig:
        if self.cycle_length == CYCLE_DAY:
            raise ValueError(
                "TrainConfig.cycle_length CYCLE_DAY is a day at the data's frequency: resolve it "
                "with pipelines.calendar.steps_per_day(data.frequency) first"
            )
        return ModelConfig(
            kind=self.kind,
            n_channels=n_channels,
            horizon=self.horizon,
            quantiles=self.quantiles,
            d_model=self.d_model,
            n_layers=self.n_layers,
            d_state=self.d_state,
            expand=self.expand,
            conv_kernel=self.conv_kernel,
            head_size=self.head_size,
            n_covariates=n_covariates,
            norm_halflife=self.norm_halflife,
            channel_independent=self.channel_independent,
            linear_lookback=self.lookback if self.linear_lookback is None else self.linear_lookback,
            dropout=self.dropout,
            linear_norm=self.linear_norm,
            zero_head=self.zero_head,
            cycle_length=self.cycle_length,
            linear_per_channel=self.linear_per_channel,
        )


def config_from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
    """Build a config dataclass from a mapping, naming unknown keys."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(known)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**kwargs)
