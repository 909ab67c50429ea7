"""Recurrent forecasters: diagonal SSM, selective (Mamba-style) SSM and RWKV-7.

model = build_model(ModelConfig(kind="rwkv7", n_channels=7, horizon=24))
y, state = model(x)                  # x [B, T, C] -> y [B, T, H, C, Q]
y_t, state = model.step(x_t, state)  # x_t [B, C] -> y_t [B, H, C, Q]
"""

from collections.abc import Callable

from forecast.config import KINDS, ConfigError, ModelConfig
from forecast.diagonal_ssm import diagonal_ssm
from forecast.model import Backbone, Forecaster
from forecast.rwkv7 import rwkv7
from forecast.selective_ssm import selective_ssm
from forecast.state import ModelState, StateFormatError

__all__ = [
    "KINDS",
    "ConfigError",
    "Forecaster",
    "ModelConfig",
    "ModelState",
    "StateFormatError",
    "build_model",
]

_BACKBONES: dict[str, Callable[[ModelConfig], Backbone]] = {
    "diagonal_ssm": diagonal_ssm,
    "selective_ssm": selective_ssm,
    "rwkv7": rwkv7,
}


def build_model(config: ModelConfig) -> Forecaster:
    """A freshly initialised forecaster for `config`."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"build_model takes a ModelConfig, got {type(config).__name__}")
    return Forecaster(config, _BACKBONES[config.kind](config))
