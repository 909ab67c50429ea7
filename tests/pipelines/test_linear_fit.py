"""The closed-form linear path with a map per channel (pipelines/linear_fit.py `per_channel`):
each channel's map is its own least squares pulled toward the shared fit, the pull chosen on
validation, and a model started there forecasts what the fit does."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from forecast import build_model
from pipelines.config import DataConfig
from pipelines.data import SeriesData, read_dataset
from pipelines.fit import validate
from pipelines.linear_fit import (
    CHANNEL_PULLS,
    _decycled,
    fit_linear,
    load_fit,
    model_scale,
    save_fit,
    score_linear_fit,
    set_linear_path,
)
from pipelines.protocol import protocol_splits
from tests.pipelines.test_online_fit import (
    HORIZON,
    LOOKBACK,
    PERIOD,
    _brute_sums,
    _csv,
    at_the_fit_config,
)


@pytest.fixture(scope="module")
def unlike(tmp_path_factory: pytest.TempPathFactory) -> SeriesData:
    """Two hourly channels with a daily cycle and unlike dynamics: a slow AR(1) and a fast one
    of the opposite sign, 900 rows."""
    rng = np.random.default_rng(3)
    n = 900
    t = np.arange(n)
    a, b = np.zeros(n), np.zeros(n)
    for i in range(1, n):
        a[i] = 0.95 * a[i - 1] + 0.3 * rng.standard_normal()
        b[i] = -0.6 * b[i - 1] + 0.5 * rng.standard_normal()
    day = np.sin(2 * np.pi * t / PERIOD)
    return read_dataset(
        _csv(tmp_path_factory.mktemp("unlike") / "unlike.csv", {"a": a + day, "b": b + 2 * day}),
        DataConfig(),
    )


def test_unlike_channels_get_their_own_maps(unlike: SeriesData) -> None:
    splits = protocol_splits(unlike.name, unlike.n_steps)
    shared = fit_linear(unlike, splits, LOOKBACK, HORIZON, PERIOD)
    own = fit_linear(unlike, splits, LOOKBACK, HORIZON, PERIOD, per_channel=True)
    assert shared.beta.shape == (LOOKBACK + 1, HORIZON) and math.isinf(shared.channel_pull)
    assert own.beta.shape == (2, LOOKBACK + 1, HORIZON)
    assert own.channel_pull in CHANNEL_PULLS and math.isfinite(own.channel_pull)
    assert own.val_mse < shared.val_mse
    assert own.cycle is not None and shared.cycle is not None
    np.testing.assert_array_equal(own.cycle, shared.cycle)  # the shared fit's cycle is kept
    # The val MSE kept is the fit's own, scored again.
    scale, floor = model_scale(unlike, splits.train)
    (val,) = score_linear_fit(unlike, splits.val, own, floor, [scale])
    assert val.mse == pytest.approx(own.val_mse, rel=1e-12)


def test_each_channels_map_is_its_least_squares_pulled_toward_the_shared(
    unlike: SeriesData,
) -> None:
    """(G_c + t_c I) b_c = R_c + t_c b_shared, t_c = mu tr(G_c) / K, G_c and R_c the channel's
    sums over the training windows written out one by one (the cycle out)."""
    splits = protocol_splits(unlike.name, unlike.n_steps)
    shared = fit_linear(unlike, splits, LOOKBACK, HORIZON, PERIOD)
    own = fit_linear(unlike, splits, LOOKBACK, HORIZON, PERIOD, per_channel=True)
    last = splits.train[1] - 1  # the origin whose windows are exactly the training windows
    sums = _brute_sums(unlike, own, last, 1.0)
    k = LOOKBACK + 1
    for c, (gram, cross) in enumerate(sums):
        t = own.channel_pull * np.trace(gram) / k
        np.testing.assert_allclose(
            (gram + t * np.eye(k)) @ own.beta[c], cross + t * shared.beta, rtol=1e-7, atol=1e-9
        )


def test_the_decycled_sums_per_channel_add_up_to_the_shared(unlike: SeriesData) -> None:
    rng = np.random.default_rng(0)
    c, k, p = 2, LOOKBACK + 1, PERIOD
    gram, cross = rng.standard_normal((c, k, k)), rng.standard_normal((c, k, HORIZON))
    nw, x1, y1 = rng.random((p, c)), rng.standard_normal((p, c, k)), rng.standard_normal((p, c, 6))
    q = rng.standard_normal((p, c))
    g, r = _decycled(gram, cross, nw, x1, y1, q, HORIZON)
    g1, r1 = _decycled(gram.sum(0), cross.sum(0), nw, x1, y1, q, HORIZON)
    np.testing.assert_allclose(g.sum(0), g1, rtol=1e-12)
    np.testing.assert_allclose(r.sum(0), r1, rtol=1e-12)


def test_a_model_started_at_the_fit_per_channel_forecasts_what_the_fit_does(
    unlike: SeriesData, tmp_path: Path
) -> None:
    """Through a saved fit: the model's maps (shared plus departures) are the fit's, and its val
    MSE the fit's. A fit per channel cannot start a model with one shared map."""
    splits = protocol_splits(unlike.name, unlike.n_steps)
    fit = fit_linear(unlike, splits, LOOKBACK, HORIZON, PERIOD, per_channel=True)
    save_fit(fit, tmp_path / "fit.st")
    back = load_fit(tmp_path / "fit.st")
    assert back.channel_pull == fit.channel_pull
    np.testing.assert_array_equal(back.beta, fit.beta)
    cfg = at_the_fit_config(PERIOD, per_channel=True)
    torch.manual_seed(0)
    model = build_model(cfg.model_config(len(unlike.channels), unlike.covariates.shape[-1]))
    model.fit_scaler(torch.from_numpy(unlike.values[:, splits.train[0] : splits.train[1]]))
    set_linear_path(model, back)
    assert model.linear is not None
    got = model.linear.weight().detach().double().numpy()
    np.testing.assert_allclose(got, np.swapaxes(fit.beta[:, :-1], 1, 2), rtol=1e-5, atol=1e-6)
    val = validate(model, unlike.values, unlike.covariates, splits.val, cfg)
    # Float32 model against the float64 fit.
    assert val == pytest.approx(fit.val_mse, rel=1e-5)
    one = build_model(at_the_fit_config(PERIOD).model_config(2, unlike.covariates.shape[-1]))
    with pytest.raises(ValueError, match="linear_per_channel"):
        set_linear_path(one, fit)


def test_the_pulls_tried_are_a_choice(unlike: SeriesData) -> None:
    """`pulls`: (inf,) alone is the shared fit; the grid's choice with only it to beat is the
    same fit."""
    splits = protocol_splits(unlike.name, unlike.n_steps)
    shared = fit_linear(unlike, splits, LOOKBACK, HORIZON, PERIOD)
    only = fit_linear(unlike, splits, LOOKBACK, HORIZON, PERIOD, True, (math.inf,))
    np.testing.assert_array_equal(only.beta, shared.beta)
    assert only.val_mse == shared.val_mse and math.isinf(only.channel_pull)
    own = fit_linear(unlike, splits, LOOKBACK, HORIZON, PERIOD, per_channel=True)
    again = fit_linear(unlike, splits, LOOKBACK, HORIZON, PERIOD, True, (own.channel_pull,))
    np.testing.assert_array_equal(again.beta, own.beta)
    assert again.val_mse == own.val_mse
