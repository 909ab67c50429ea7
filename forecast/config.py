"""ModelConfig: the whole architecture of a forecaster, small and frozen."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["KINDS", "LINEAR_NORMS", "ConfigError", "ModelConfig"]

KINDS = ("diagonal_ssm", "selective_ssm", "rwkv7")
LINEAR_NORMS = ("running", "window")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field."""


@dataclass(frozen=True)
class ModelConfig:
    kind: str
    n_channels: int
    horizon: int
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    d_model: int = 64
    n_layers: int = 2
    # SSM state slots per inner channel (N).
    d_state: int = 16
    # SSM inner width = expand * d_model.
    expand: int = 2
    # Width of the selective SSM's causal convolution; its last inputs are part of the state.
    conv_kernel: int = 4
    # RWKV-7 head size; d_model must be a multiple of it.
    head_size: int = 16
    # Known-ahead covariates per step (e.g. calendar features), appended to the input.
    n_covariates: int = 0
    # Half-life in steps of the per-series running level and scale the inputs are normalised by
    # and the forecasts rescaled with (forecast/adaptive_norm.py); 0 = the global scaler only.
    norm_halflife: int = 96
    # Channel-independent processing (as PatchTST): every channel is its own univariate series
    # through the encoder, backbone and head, with weights shared across channels; the state then
    # holds one backbone state per channel. False (the default: better on the benchmarks with the
    # linear path, docs/RESULTS.md, and C times less state): all channels in one feature vector.
    channel_independent: bool = False
    # Length of the linear path: the median forecast gets a learned linear map (shared across
    # channels, or one per channel: linear_per_channel) of the last `linear_lookback` values,
    # normalised by the running level and scale at the forecast origin (RLinear-style,
    # streaming-exact: the values ride in the state as a ring buffer). 0 = no linear path.
    linear_lookback: int = 96
    # Dropout on the features entering the backbone and the head (training only).
    dropout: float = 0.0
    # What the linear path's window is normalised by: "running" (the running level and scale at
    # the forecast origin) or "window" (the window's own mean and std, RevIN as in RLinear; still
    # streaming-exact, since the window is in the state, so the state layout is the same).
    linear_norm: str = "running"
    # Start the quantile head at zero, so an untrained model forecasts what the linear path does
    # (a random head adds noise of about 0.6 running std to every first forecast).
    zero_head: bool = False
    # Steps in a day for the linear path's learned daily cycle (CycleNet's residual cycle,
    # forecast/cycle.py); 0 = none. The phase is read from the first two covariates, the sine and
    # cosine of the time of day (the calendar covariates, pipelines/calendar.py).
    cycle_length: int = 0
    # One linear map per channel (DLinear's "individual"), held as the shared map plus each
    # channel's departure from it, [C, H, L + 1] more weights; the closed-form fit pulls each
    # channel's map toward the shared one by validation (pipelines/linear_fit.py). False: one map.
    linear_per_channel: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"ModelConfig.kind must be one of {KINDS}, got {self.kind!r}")
        for name in (
            "n_channels",
            "horizon",
            "d_model",
            "n_layers",
            "d_state",
            "expand",
            "head_size",
        ):
            _positive_int(name, getattr(self, name))
        _positive_int("conv_kernel", self.conv_kernel, minimum=2)
        _positive_int("n_covariates", self.n_covariates, minimum=0)
        _positive_int("norm_halflife", self.norm_halflife, minimum=0)
        _positive_int("linear_lookback", self.linear_lookback, minimum=0)
        _positive_int("cycle_length", self.cycle_length, minimum=0)
        if self.cycle_length and (self.linear_lookback == 0 or self.n_covariates < 2):
            raise ConfigError(
                "ModelConfig.cycle_length needs the linear path (linear_lookback > 0) and the "
                f"calendar covariates (n_covariates >= 2), got linear_lookback "
                f"{self.linear_lookback}, n_covariates {self.n_covariates}"
            )
        if not isinstance(self.channel_independent, bool):
            raise ConfigError(
                f"ModelConfig.channel_independent must be a bool, got {self.channel_independent!r}"
            )
        if self.linear_norm not in LINEAR_NORMS:
            raise ConfigError(
                f"ModelConfig.linear_norm must be one of {LINEAR_NORMS}, got {self.linear_norm!r}"
            )
        if not isinstance(self.zero_head, bool):
            raise ConfigError(f"ModelConfig.zero_head must be a bool, got {self.zero_head!r}")
        if not isinstance(self.linear_per_channel, bool):
            raise ConfigError(
                f"ModelConfig.linear_per_channel must be a bool, got {self.linear_per_channel!r}"
            )
        if self.linear_per_channel and self.linear_lookback == 0:
            raise ConfigError("ModelConfig.linear_per_channel needs the linear path (lookback > 0)")
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
            raise ConfigError(f"ModelConfig.dropout must be a number in [0, 1), got {d!r}")
        object.__setattr__(self, "dropout", float(d))
        if self.kind == "rwkv7" and self.d_model % self.head_size:
            raise ConfigError(
                f"ModelConfig.head_size must divide d_model ({self.d_model}), got {self.head_size}"
            )
        qs = self.quantiles
        if isinstance(qs, (str, bytes)) or not isinstance(qs, (tuple, list)) or not qs:
            raise ConfigError(f"ModelConfig.quantiles must be a non-empty sequence, got {qs!r}")
        if any(isinstance(q, bool) or not isinstance(q, (int, float)) for q in qs):
            raise ConfigError(f"ModelConfig.quantiles must be numbers, got {qs!r}")
        qs = tuple(float(q) for q in qs)
        if any(not 0.0 < q < 1.0 for q in qs) or any(a >= b for a, b in itertools.pairwise(qs)):
            raise ConfigError(
                f"ModelConfig.quantiles must be strictly increasing and inside (0, 1), got {qs}"
            )
        if 0.5 not in qs:
            raise ConfigError(
                f"ModelConfig.quantiles must contain 0.5 (the point forecast), got {qs}"
            )
        object.__setattr__(self, "quantiles", qs)

    @property
    def median_index(self) -> int:
        return self.quantiles.index(0.5)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["quantiles"] = list(self.quantiles)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s) {unknown}; known: {sorted(known)}")
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in d and f.default is dataclasses.MISSING
        )
        if missing:
            raise ConfigError(f"ModelConfig is missing required field(s) {missing}")
        kwargs = dict(d)
        if isinstance(kwargs.get("quantiles"), list):
            kwargs["quantiles"] = tuple(kwargs["quantiles"])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ConfigError("ModelConfig JSON must be an object")
        return cls.from_dict(d)


def _positive_int(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"ModelConfig.{name} must be an integer >= {minimum}, got {value!r}")
