"""ModelConfig: bad values are clear errors that name the field."""

from __future__ import annotations

import dataclasses

import pytest

from forecast import ConfigError, ModelConfig, build_model


@pytest.mark.parametrize(
    "field",
    [
        "n_channels",
        "horizon",
        "d_model",
        "n_layers",
        "d_state",
        "expand",
        "head_size",
        "conv_kernel",
    ],
)
@pytest.mark.parametrize("value", [0, -3, 2.5, True, "4"])
def test_non_positive_or_non_integer_sizes_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"ModelConfig\.{field} "):
        ModelConfig(**{"kind": "rwkv7", "n_channels": 2, "horizon": 3, field: value})  # type: ignore[arg-type]


def test_unknown_kind() -> None:
    with pytest.raises(ConfigError, match=r"ModelConfig\.kind .*'transformer'"):
        ModelConfig(kind="transformer", n_channels=2, horizon=3)


def test_unknown_and_missing_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown ModelConfig field\(s\) \['hidden'\]"):
        ModelConfig.from_dict({"kind": "rwkv7", "n_channels": 2, "horizon": 3, "hidden": 64})
    with pytest.raises(ConfigError, match=r"missing required field\(s\) \['horizon'\]"):
        ModelConfig.from_dict({"kind": "rwkv7", "n_channels": 2})


def test_quantiles_and_head_size() -> None:
    with pytest.raises(ConfigError, match=r"must contain 0\.5"):
        ModelConfig(kind="rwkv7", n_channels=2, horizon=3, quantiles=(0.1, 0.9))
    with pytest.raises(ConfigError, match="strictly increasing"):
        ModelConfig(kind="rwkv7", n_channels=2, horizon=3, quantiles=(0.5, 0.1))
    with pytest.raises(ConfigError, match="strictly increasing"):
        ModelConfig(kind="rwkv7", n_channels=2, horizon=3, quantiles=(0.0, 0.5))
    with pytest.raises(ConfigError, match=r"ModelConfig\.quantiles"):
        ModelConfig(kind="rwkv7", n_channels=2, horizon=3, quantiles="0.5")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"ModelConfig\.head_size must divide d_model"):
        ModelConfig(kind="rwkv7", n_channels=2, horizon=3, d_model=30, head_size=16)
    # The SSMs have no heads: their head_size is not checked against d_model.
    ModelConfig(kind="selective_ssm", n_channels=2, horizon=3, d_model=30, head_size=16)
    with pytest.raises(ConfigError, match=r"ModelConfig\.n_covariates"):
        ModelConfig(kind="rwkv7", n_channels=2, horizon=3, n_covariates=-1)


def test_round_trip_and_frozen() -> None:
    cfg = ModelConfig(kind="selective_ssm", n_channels=7, horizon=96, quantiles=(0.05, 0.5, 0.95))
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.horizon = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="ModelConfig"):
        build_model({"kind": "rwkv7"})  # type: ignore[arg-type]
