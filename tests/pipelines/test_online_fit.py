"""The online fit (pipelines/online_fit.py): its sums are the weighted ridge of exactly the windows
seen, no value after an origin moves that origin's forecast, and it follows a change of regime
that the training fit cannot."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from forecast import build_model
from forecast.model import Forecaster
from pipelines.config import DataConfig, TrainConfig
from pipelines.data import SeriesData, read_dataset
from pipelines.evaluate import evaluate_model
from pipelines.linear_fit import (
    LinearFit,
    fit_linear,
    model_scale,
    score_linear_fit,
    set_linear_path,
)
from pipelines.online_fit import (
    FitWindows,
    Hedge,
    OnlineSums,
    add_windows,
    online_beta,
    online_choice,
    online_choices,
    online_forecasts,
    online_path,
    score_online_fit,
)
from pipelines.protocol import ErrorSums, protocol_splits

LOOKBACK, HORIZON, PERIOD = 12, 6, 24


def _csv(path: Path, columns: dict[str, np.ndarray]) -> Path:
    n = len(next(iter(columns.values())))
    stamps = np.datetime64("2020-01-01T00:00") + np.arange(n).astype("timedelta64[h]")
    rows = ["date," + ",".join(columns)]
    for i, s in enumerate(stamps):
        rows.append(
            f"{s}," + ",".join("" if math.isnan(v[i]) else f"{v[i]:.6f}" for v in columns.values())
        )
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> SeriesData:
    """Two hourly channels with a daily cycle, noise and a missing value: 600 rows."""
    rng = np.random.default_rng(1)
    t = np.arange(600)
    a = np.sin(2 * np.pi * t / PERIOD) + 0.3 * rng.standard_normal(600)
    b = 3.0 + np.cos(2 * np.pi * t / PERIOD) + 0.5 * rng.standard_normal(600)
    a[200] = np.nan
    return read_dataset(
        _csv(tmp_path_factory.mktemp("toy") / "toy.csv", {"a": a, "b": b}), DataConfig()
    )


def _brute_sums(
    data: SeriesData, fit, origin: int, gamma: float
) -> list[tuple[np.ndarray, np.ndarray]]:  # type: ignore[no-untyped-def]
    """Each channel's weighted sums (G_c, R_c) written out window by window: the windows whose
    last target row is at or before `origin`, the cycle out, weighted by gamma^age."""
    scale, floor = model_scale(data, protocol_splits(data.name, data.n_steps).train)
    period = fit.cycle.shape[0]
    phase = FitWindows(data, fit, scale, floor).phases[0]  # type: ignore[index]
    values = data.values[0].astype(np.float64)
    sums = []
    for c in range(values.shape[1]):
        rows, targets, weights = [], [], []
        for s in range(0, origin - LOOKBACK - HORIZON + 2):
            e = s + LOOKBACK + HORIZON - 1
            at = phase[s + LOOKBACK - 1]
            x, y = values[s : s + LOOKBACK, c], values[s + LOOKBACK : e + 1, c]
            if np.isnan(x).any() or np.isnan(y).any():
                continue
            m, sd = x.mean(), math.sqrt(x.var() + floor[c])
            q_in = fit.cycle[(at - LOOKBACK + 1 + np.arange(LOOKBACK)) % period, c]
            q_out = fit.cycle[(at + 1 + np.arange(HORIZON)) % period, c]
            rows.append(np.append((x - m) / sd - q_in, 1.0))
            targets.append((y - m) / sd - q_out)
            weights.append((sd / scale[c]) ** 2 * gamma ** (origin - e))
        a, y, w = np.array(rows), np.array(targets), np.array(weights)
        sums.append(((a * w[:, None]).T @ a, (a * w[:, None]).T @ y))
    return sums


def _brute_beta(data: SeriesData, fit, origin: int, gamma: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The weighted ridge solution of every channel's windows together."""
    sums = _brute_sums(data, fit, origin, gamma)
    gram, cross = sum(g for g, _ in sums), sum(r for _, r in sums)
    k = gram.shape[0]
    reg = fit.ridge * np.trace(gram) / k * np.eye(k)
    reg[-1, -1] = 0.0
    return np.linalg.solve(gram + reg, cross)


@pytest.mark.parametrize(("gamma", "ridge"), [(1.0, 0.0), (0.99, 0.1)])
def test_the_online_map_is_the_weighted_ridge_of_the_windows_seen(
    toy: SeriesData, gamma: float, ridge: float
) -> None:
    """Moved in uneven steps (decays compose), the state gives the ridge solution of exactly the
    windows whose last target row is at or before the origin, weighted by gamma^age."""
    splits = protocol_splits(toy.name, toy.n_steps)
    fit = dataclasses.replace(fit_linear(toy, splits, LOOKBACK, HORIZON, PERIOD), ridge=ridge)
    scale, floor = model_scale(toy, splits.train)
    windows = FitWindows(toy, fit, scale, floor)
    k = LOOKBACK + 1
    state = OnlineSums(np.zeros((k, k)), np.zeros((k, HORIZON)), -1)
    for origin in (150, 151, 190, 233, 470):
        state = add_windows(state, windows, origin, gamma, toy.n_steps - LOOKBACK - HORIZON + 1)
        np.testing.assert_allclose(
            online_beta(state, ridge), _brute_beta(toy, fit, origin, gamma), rtol=1e-8, atol=1e-10
        )


@pytest.mark.parametrize("mu", [0.1, 10.0])
def test_the_online_maps_per_channel_are_each_channels_ridge_pulled_to_the_shared(
    toy: SeriesData, mu: float
) -> None:
    """A fit with a map per channel keeps the sums per channel: each channel's map solves
    (G_c + t_c I) b_c = R_c + t_c b, t_c = mu tr(G_c) / K, b the shared map of their total."""
    splits = protocol_splits(toy.name, toy.n_steps)
    shared = fit_linear(toy, splits, LOOKBACK, HORIZON, PERIOD)
    fit = dataclasses.replace(shared, beta=np.stack([shared.beta] * 2), channel_pull=mu)
    scale, floor = model_scale(toy, splits.train)
    windows = FitWindows(toy, fit, scale, floor)
    k = LOOKBACK + 1
    state = OnlineSums(np.zeros((2, k, k)), np.zeros((2, k, HORIZON)), -1)
    for origin in (151, 233, 470):
        state = add_windows(state, windows, origin, 0.99, toy.n_steps - LOOKBACK - HORIZON + 1)
        got = online_beta(state, fit.ridge, mu)
        b = _brute_beta(toy, fit, origin, 0.99)
        for c, (gram, cross) in enumerate(_brute_sums(toy, fit, origin, 0.99)):
            t = mu * np.trace(gram) / k
            want = np.linalg.solve(gram + t * np.eye(k), cross + t * b)
            np.testing.assert_allclose(got[c], want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    ("hedge", "every"), [(Hedge((math.inf,)), 10_000), (Hedge((), frozen=True), 7)]
)
def test_without_a_solve_it_is_the_training_fit(toy: SeriesData, hedge: Hedge, every: int) -> None:
    """Solved once at the first val origin, before any val window is seen, the online fit is the
    closed-form fit (no cycle: one exact solve) on val and test alike; so is the frozen member
    of a hedge, however often the others solve."""
    splits = protocol_splits(toy.name, toy.n_steps)
    fit = fit_linear(toy, splits, LOOKBACK, HORIZON)
    scale, _ = model_scale(toy, splits.train)
    val, test = score_online_fit(toy, splits, fit, hedge, [scale], every=every)
    (val_fit,) = score_linear_fit(toy, splits.val, fit, model_scale(toy, splits.train)[1], [scale])
    (test_fit,) = score_linear_fit(
        toy, splits.test, fit, model_scale(toy, splits.train)[1], [scale]
    )
    assert val[0].mse == pytest.approx(val_fit.mse, rel=1e-9)
    assert test[0].mse == pytest.approx(test_fit.mse, rel=1e-9)
    assert (val[0].windows, test[0].windows) == (val_fit.windows, test_fit.windows)


@pytest.mark.parametrize("per_channel", [False, True])
def test_a_hedge_forecasts_the_mean_of_its_members(toy: SeriesData, per_channel: bool) -> None:
    """The hedge's map is the mean of its members' maps, so its forecast is the mean of their
    forecasts: each half-life's online fit and the frozen training fit, origin by origin."""
    splits = protocol_splits(toy.name, toy.n_steps)
    fit = fit_linear(toy, splits, LOOKBACK, HORIZON, PERIOD, per_channel)
    span = (splits.val[0] - 1, splits.test[1] - HORIZON - 1)
    members = [Hedge((math.inf,)), Hedge((60.0,)), Hedge((), frozen=True)]
    hedge = Hedge((math.inf, 60.0), frozen=True)
    assert hedge.describe() == "mean of frozen, inf, 60"

    def forecasts(h: Hedge) -> np.ndarray:
        return np.concatenate([p for _, _, p in online_forecasts(toy, splits, fit, h, span)])

    each = [forecasts(m) for m in members]
    np.testing.assert_allclose(forecasts(hedge), sum(each) / 3, rtol=1e-10, atol=1e-12)
    # The test can fail: the members do differ (a short half-life follows the val rows).
    assert not np.allclose(each[0], each[1], rtol=1e-3)


@pytest.mark.parametrize("every", [1, 7])
def test_no_value_after_an_origin_moves_its_forecast(toy: SeriesData, every: int) -> None:
    splits = protocol_splits(toy.name, toy.n_steps)
    fit = fit_linear(toy, splits, LOOKBACK, HORIZON, PERIOD)
    span = (splits.val[0] - 1, splits.test[1] - HORIZON - 1)
    cut = 500  # every row after it is replaced
    changed = dataclasses.replace(toy, values=toy.values.copy())
    changed.values[:, cut + 1 :] = 10.0 + 5.0 * changed.values[:, cut + 1 :]

    def upto(data: SeriesData) -> dict[int, np.ndarray]:
        out = {}
        hedge = Hedge((200.0, math.inf), frozen=True)
        for _, starts, pred in online_forecasts(data, splits, fit, hedge, span, every):
            for s, p in zip(starts, pred, strict=True):
                out[int(s) + LOOKBACK - 1] = p
        return out

    before, after = upto(toy), upto(changed)
    assert sorted(before) == list(range(span[0], span[1] + 1))
    for origin in range(span[0], cut + 1):
        np.testing.assert_array_equal(before[origin], after[origin])
    # The test can fail: past the cut the forecasts do move.
    assert not np.allclose(before[cut + 1], after[cut + 1])


def test_a_change_of_regime_is_followed_online(tmp_path: Path) -> None:
    """A channel whose dynamics flip after the training rows (a slow oscillation, then a fast
    one): the training fit keeps forecasting the old one; the online fit, with the half-life
    chosen on val, learns the new one from the val rows and scores far better on test. So does
    the hedge, though its frozen member keeps forecasting the old regime."""
    rng = np.random.default_rng(2)
    n = 1000
    t = np.arange(n)
    flip = int(0.7 * n)
    x = np.where(t < flip, np.sin(2 * np.pi * t / 48), np.sin(2 * np.pi * t / 9))
    x = x + 0.1 * rng.standard_normal(n)
    data = read_dataset(_csv(tmp_path / "flip.csv", {"x": x}), DataConfig())
    splits = protocol_splits(data.name, data.n_steps)
    fit = fit_linear(data, splits, LOOKBACK, HORIZON)
    scale, floor = model_scale(data, splits.train)
    (static,) = score_linear_fit(data, splits.test, fit, floor, [scale])
    choices = online_choices(data, splits, fit, [scale])
    singles = [f"{f * 700:g}" for f in (math.inf, 1.0, 0.5, 0.25, 0.125, 0.0625)]
    mean = "mean of frozen, " + ", ".join(singles)
    by_val, hedged = choices["val"], choices["mean"]
    assert list(by_val.tried) == ["frozen", *singles, mean] and hedged.tried == by_val.tried
    assert by_val.val[0].mse == min(by_val.tried[h] for h in singles)
    (frozen,) = score_linear_fit(data, splits.val, fit, model_scale(data, splits.train)[1], [scale])
    assert by_val.tried["frozen"] == pytest.approx(frozen.mse, rel=1e-9)
    assert hedged.hedge.describe() == mean and hedged.val[0].mse == hedged.tried[mean]
    assert by_val.test[0].mse < 0.5 * static.mse
    assert hedged.test[0].mse < 0.5 * static.mse


def test_a_training_gap_longer_than_a_window_is_left_out(tmp_path: Path) -> None:
    """A channel missing for longer than a window in the training rows: those windows have no
    input mean, and 0 * NaN used to poison the sums (the fit then failed at every ridge
    strength). The closed-form fit and the online fit skip them."""
    rng = np.random.default_rng(3)
    t = np.arange(600)
    a = np.sin(2 * np.pi * t / PERIOD) + 0.3 * rng.standard_normal(600)
    b = 3.0 + np.cos(2 * np.pi * t / PERIOD) + 0.5 * rng.standard_normal(600)
    a[100:140] = np.nan
    data = read_dataset(_csv(tmp_path / "gap.csv", {"a": a, "b": b}), DataConfig())
    splits = protocol_splits(data.name, data.n_steps)
    fit = fit_linear(data, splits, LOOKBACK, HORIZON, PERIOD)
    assert np.isfinite(fit.beta).all() and math.isfinite(fit.val_mse)
    scale, _ = model_scale(data, splits.train)
    val, test = score_online_fit(data, splits, fit, Hedge((math.inf, 50.0), frozen=True), [scale])
    assert math.isfinite(val[0].mse) and math.isfinite(test[0].mse)


def test_a_wholly_missing_input_window_forecasts_the_last_value_seen(tmp_path: Path) -> None:
    """A channel missing for longer than a window in the val and test rows: the fit cannot
    normalise those windows by their own mean and std, so it forecasts the channel's last value
    observed before the window. Before, the forecast was NaN: the closed-form fit found no finite
    val error at any ridge strength, and the online scores were NaN."""
    rng = np.random.default_rng(4)
    t = np.arange(600)
    a = np.sin(2 * np.pi * t / PERIOD) + 0.3 * rng.standard_normal(600)
    b = 3.0 + np.cos(2 * np.pi * t / PERIOD) + 0.5 * rng.standard_normal(600)
    a[440:460] = np.nan  # val (420-480): windows 440-447 see no value of a
    a[520:540] = np.nan  # test (480-600)
    data = read_dataset(_csv(tmp_path / "holes.csv", {"a": a, "b": b}), DataConfig())
    splits = protocol_splits(data.name, data.n_steps)
    fit = fit_linear(data, splits, LOOKBACK, HORIZON, PERIOD)
    scale, floor = model_scale(data, splits.train)
    for bounds in (splits.val, splits.test):
        assert math.isfinite(score_linear_fit(data, bounds, fit, floor, [scale])[0].mse)
    windows = FitWindows(data, fit, scale, floor)
    blind = np.arange(520, 540 - LOOKBACK + 1)  # starts of the windows with no input of a
    pred = windows.forecast(0, blind, fit.beta)[:, :, 0]
    # m + s (the map's bias and cycle), s = sqrt(floor): the last value seen, give or take the
    # daily profile scaled down to the floor's std (0.08 here, against the channel's 0.79).
    spread = np.abs(pred - a[519])
    assert spread.max() < 6 * math.sqrt(floor[0]) and spread.max() > 0
    choice = online_choice(data, splits, fit, [scale])
    assert all(math.isfinite(v) for v in choice.tried.values())
    assert math.isfinite(choice.test[0].mse)
    model, _ = _model_at_the_fit(data, PERIOD)
    swap, _ = online_path(model, data, splits, "test", LOOKBACK, HORIZON)
    got = evaluate_model(model, data, LOOKBACK, HORIZON, "test", full_history=True, online=swap)
    assert math.isfinite(got.mse)


def at_the_fit_config(cycle: int, per_channel: bool = False) -> TrainConfig:
    """A small model whose forecast is its linear path (window norm, zero head)."""
    return TrainConfig(
        data="toy.csv",
        kind="diagonal_ssm",
        lookback=LOOKBACK,
        horizon=HORIZON,
        d_model=8,
        n_layers=1,
        linear_norm="window",
        zero_head=True,
        cycle_length=cycle,
        linear_per_channel=per_channel,
    )


def _model_at_the_fit(data: SeriesData, cycle: int) -> tuple[Forecaster, LinearFit]:
    """A model whose forecast is its linear path, set to the closed-form fit (zero head)."""
    splits = protocol_splits(data.name, data.n_steps)
    cfg = at_the_fit_config(cycle)
    model = build_model(cfg.model_config(len(data.channels), data.covariates.shape[-1]))
    model.fit_scaler(torch.from_numpy(data.values[:, splits.train[0] : splits.train[1]]))
    fit = fit_linear(data, splits, LOOKBACK, HORIZON, cycle)
    set_linear_path(model, fit)
    return model, fit


@pytest.mark.parametrize(("split", "rule"), [("val", "mean"), ("test", "mean"), ("test", "val")])
def test_full_history_with_the_online_path_is_the_online_fit_on_a_model_at_the_fit(
    toy: SeriesData, split: str, rule: str
) -> None:
    """statecast evaluate --full-history --online on a model whose forecast is its linear path:
    the online fit alone, on the same origins, with the hedge its rule gives."""
    model, fit = _model_at_the_fit(toy, PERIOD)
    splits = protocol_splits(toy.name, toy.n_steps)
    swap, hedge = online_path(model, toy, splits, split, LOOKBACK, HORIZON, rule=rule)
    scale, _ = model_scale(toy, splits.train)
    assert hedge == online_choice(toy, splits, fit, [scale], rule).hedge
    assert hedge.frozen == (rule == "mean")
    got = evaluate_model(model, toy, LOOKBACK, HORIZON, split, full_history=True, online=swap)
    bounds = splits.get(split)
    origins = (bounds[0] - 1, bounds[1] - HORIZON - 1)
    want = ErrorSums(HORIZON, scale)
    for series, starts, pred in online_forecasts(toy, splits, fit, hedge, origins):
        want.add(pred, toy.values[series, starts[:, None] + LOOKBACK + np.arange(HORIZON)])
    assert got.windows == want.result().windows
    # Float32 model against the float64 fit.
    assert got.mse == pytest.approx(want.result().mse, rel=1e-5)
    frozen = evaluate_model(model, toy, LOOKBACK, HORIZON, split, full_history=True)
    # The swap changes the forecasts (on this stationary toy, by about 0.5% per step).
    assert not np.allclose(got.mse_by_step, frozen.mse_by_step, rtol=1e-3)


def test_the_online_path_needs_full_history_and_a_window_normalised_linear_path(
    toy: SeriesData,
) -> None:
    model, _ = _model_at_the_fit(toy, 0)
    splits = protocol_splits(toy.name, toy.n_steps)
    swap, _ = online_path(model, toy, splits, "test", LOOKBACK, HORIZON)
    with pytest.raises(ValueError, match="full-history mode"):
        evaluate_model(model, toy, LOOKBACK, HORIZON, "test", online=swap)
    with pytest.raises(ValueError, match="score val or test"):
        online_path(model, toy, splits, "train", LOOKBACK, HORIZON)
    with pytest.raises(ValueError, match="exceeds the model's horizon"):
        online_path(model, toy, splits, "test", LOOKBACK, HORIZON + 1)
    model.linear.window_norm = False  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="linear_norm 'window'"):
        online_path(model, toy, splits, "test", LOOKBACK, HORIZON)
    cli = subprocess.run(
        [sys.executable, "-m", "statecast", "evaluate", "--model-uri", "runs:/x/model",
         "--data", "toy.csv", "--horizon", "6", "--online"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode != 0 and "add --full-history" in cli.stderr


def test_bad_settings_are_clear_errors(toy: SeriesData) -> None:
    splits = protocol_splits(toy.name, toy.n_steps)
    fit = fit_linear(toy, splits, LOOKBACK, HORIZON)
    scale, _ = model_scale(toy, splits.train)
    with pytest.raises(ValueError, match="half_life"):
        score_online_fit(toy, splits, fit, Hedge((0.0,)), [scale])
    with pytest.raises(ValueError, match="at least one half-life or the frozen fit"):
        Hedge(())
    with pytest.raises(ValueError, match="at least one half-life"):
        online_choice(toy, splits, fit, [scale], fractions=())
    with pytest.raises(ValueError, match="unknown online rule 'best'"):
        online_choice(toy, splits, fit, [scale], "best")
