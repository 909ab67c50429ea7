"""bench.accuracy's closed-form linear path: a model started at the fit forecasts what the fit
does, and a run started there never scores worse on validation than its start."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bench.accuracy import (
    ensembles,
    init_linear_ridge,
    online_scores,
    protocol_scale,
    ridge_linear,
    ridge_linear_fit,
    ridge_linear_online,
    run_one,
)
from forecast import build_model
from pipelines.config import DataConfig, TrainConfig
from pipelines.data import SeriesData, read_dataset
from pipelines.evaluate import model_predictor
from pipelines.fit import validate
from pipelines.linear_fit import LinearFit, fit_linear
from pipelines.protocol import evaluate_windows, protocol_splits

LOOKBACK, HORIZON = 16, 8


@pytest.fixture(scope="module")
def toy_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two hourly channels, a daily cycle and noise: 700 rows, 70 / 10 / 20 % splits."""
    rng = np.random.default_rng(0)
    t = np.arange(700)
    a = np.sin(2 * np.pi * t / 24) + 0.3 * rng.standard_normal(700)
    b = 5.0 + 2.0 * np.cos(2 * np.pi * t / 24) + 0.5 * rng.standard_normal(700)
    stamps = np.datetime64("2020-01-01T00:00") + t.astype("timedelta64[h]")
    path = tmp_path_factory.mktemp("toy") / "toy.csv"
    lines = ["date,a,b"] + [f"{s},{x:.6f},{y:.6f}" for s, x, y in zip(stamps, a, b, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _fit(data: SeriesData, cycle: int = 0) -> LinearFit:
    return fit_linear(data, protocol_splits(data.name, data.n_steps), LOOKBACK, HORIZON, cycle)


def config(path: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        data=str(path),
        kind="diagonal_ssm",
        lookback=LOOKBACK,
        horizon=HORIZON,
        epochs=2,
        batch_size=16,
        d_model=8,
        n_layers=1,
        linear_norm="window",
        zero_head=True,
        steps_per_epoch=5,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("cycle", "lookback"), [(0, LOOKBACK), (24, LOOKBACK), (24, 2 * LOOKBACK)])
def test_a_model_started_at_the_fit_forecasts_what_the_fit_does(
    toy_csv: Path, cycle: int, lookback: int
) -> None:
    """Also with a lookback longer than the linear path: the backbone's window, not the fit's
    (the val windows' targets are the same rows either way)."""
    data = read_dataset(toy_csv, DataConfig())
    splits = protocol_splits(data.name, data.n_steps)
    fit = fit_linear(data, splits, LOOKBACK, HORIZON, cycle)
    cfg = config(toy_csv, cycle_length=cycle, lookback=lookback, linear_lookback=LOOKBACK)
    torch.manual_seed(0)
    model = build_model(cfg.model_config(len(data.channels), data.covariates.shape[-1]))
    model.fit_scaler(torch.from_numpy(data.values[:, splits.train[0] : splits.train[1]]))
    before = validate(model, data.values, data.covariates, splits.val, cfg)
    init_linear_ridge(model, data, cfg, None)
    got = validate(model, data.values, data.covariates, splits.val, cfg)
    # Float32 model against the float64 fit: measured relative difference about 1e-7.
    assert got == pytest.approx(fit.val_mse, rel=1e-5)
    assert got < before
    assert model.linear is not None
    torch.testing.assert_close(
        model.linear.proj.weight.detach(), torch.from_numpy(fit.beta[:-1].T).float()
    )
    if cycle:
        assert model.linear.cycle is not None and fit.cycle is not None
        torch.testing.assert_close(model.linear.cycle.detach(), torch.from_numpy(fit.cycle).float())


@pytest.mark.parametrize("cycle", [0, 24])
def test_a_saved_fit_is_the_fit(toy_csv: Path, tmp_path: Path, cycle: int) -> None:
    row = ridge_linear(toy_csv, LOOKBACK, HORIZON, save_dir=str(tmp_path), cycle=cycle)
    data = read_dataset(toy_csv, DataConfig())
    cfg = config(toy_csv, cycle_length=cycle)
    model = build_model(cfg.model_config(len(data.channels), data.covariates.shape[-1]))
    lam = init_linear_ridge(model, data, cfg, str(tmp_path))
    assert lam == row["config"]["ridge"]
    splits = protocol_splits(data.name, data.n_steps)
    model.fit_scaler(torch.from_numpy(data.values[:, splits.train[0] : splits.train[1]]))
    val = validate(model, data.values, data.covariates, splits.val, cfg)
    assert val == pytest.approx(row["val_mse"], rel=1e-5)


def test_the_online_row_is_the_online_fit_under_its_rule(toy_csv: Path, tmp_path: Path) -> None:
    """--ridge-linear --online: the hedge over the frozen fit and every half-life (--online-rule
    mean), or the half-life with the lowest val (val), scored in full-history mode; from a saved
    fit the same figures as from a fresh one."""
    fresh = ridge_linear_online(toy_csv, LOOKBACK, HORIZON, cycle=24)
    tried = fresh["config"]["tried_val_mse"]
    hedge = fresh["config"]["hedge"]
    assert hedge.startswith("mean of frozen, inf, ") and fresh["val_mse"] == tried[hedge]
    by_val = ridge_linear_online(toy_csv, LOOKBACK, HORIZON, cycle=24, rule="val")
    singles = {h: v for h, v in tried.items() if h != "frozen" and not h.startswith("mean")}
    assert len(singles) == 6 and by_val["config"]["tried_val_mse"] == tried
    assert by_val["val_mse"] == min(singles.values()) == singles[by_val["config"]["hedge"]]
    tests = fresh["config"]["tried_full_history_mse_protocol"]
    assert list(tests) == list(tried)
    assert tests == by_val["config"]["tried_full_history_mse_protocol"]
    assert tests[hedge] == fresh["full_history_mse_protocol"]
    assert tests[by_val["config"]["hedge"]] == by_val["full_history_mse_protocol"]
    assert fresh["test_mse"] is None and fresh["full_history_mse_protocol"] > 0
    ridge_linear(toy_csv, LOOKBACK, HORIZON, save_dir=str(tmp_path), cycle=24)
    saved = ridge_linear_online(toy_csv, LOOKBACK, HORIZON, str(tmp_path), cycle=24)
    # --ridge-linear --online hands its own fit over instead of fitting (or reading) it again.
    row, fit = ridge_linear_fit(toy_csv, LOOKBACK, HORIZON, cycle=24)
    plain = ridge_linear(toy_csv, LOOKBACK, HORIZON, cycle=24)
    for key in ("val_mse", "test_mse_protocol", "config"):
        assert row[key] == plain[key]
    given = ridge_linear_online(toy_csv, LOOKBACK, HORIZON, cycle=24, fit=fit)
    for key in ("val_mse", "full_history_mse", "full_history_mse_protocol", "config"):
        assert saved[key] == fresh[key] == given[key]


@pytest.mark.parametrize("per_channel", [False, True])
def test_a_model_at_the_fit_with_the_online_path_is_the_online_fit(
    toy_csv: Path, tmp_path: Path, per_channel: bool
) -> None:
    """A model whose forecast is its linear path (started at the fit, zero head): swapping that
    path's part for the online fit's gives the online fit alone, on val and test; with a map per
    channel too (the fit's, the online fit's and the model's)."""
    alone = ridge_linear_online(toy_csv, LOOKBACK, HORIZON, cycle=24, per_channel=per_channel)
    saved = ridge_linear(toy_csv, LOOKBACK, HORIZON, str(tmp_path), 24, per_channel)
    assert math.isfinite(saved["config"]["channel_pull"]) == per_channel
    assert alone["config"]["channel_pull"] == saved["config"]["channel_pull"]
    data = read_dataset(toy_csv, DataConfig())
    cfg = config(
        toy_csv,
        cycle_length=24,
        lookback=2 * LOOKBACK,
        linear_lookback=LOOKBACK,
        linear_per_channel=per_channel,
    )
    model = build_model(cfg.model_config(len(data.channels), data.covariates.shape[-1]))
    splits = protocol_splits(data.name, data.n_steps)
    model.fit_scaler(torch.from_numpy(data.values[:, splits.train[0] : splits.train[1]]))
    init_linear_ridge(model, data, cfg, str(tmp_path))
    got = online_scores([model], model, data, toy_csv, cfg, str(tmp_path))
    assert got["online_hedge"] == alone["config"]["hedge"]
    assert got["online_fit_val_mse"] == alone["val_mse"]
    # Float32 model against the float64 fit.
    assert got["online_val_mse"] == pytest.approx(alone["val_mse"], rel=1e-5)
    assert got["full_history_online_mse_protocol"] == pytest.approx(
        alone["full_history_mse_protocol"], rel=1e-5
    )
    # The other rule's swap, from the same pass.
    by_val = ridge_linear_online(toy_csv, LOOKBACK, HORIZON, cycle=24, per_channel=per_channel,
                                 rule="val")  # fmt: skip
    other = got["online_by_rule"]["val"]
    assert other["hedge"] == by_val["config"]["hedge"]
    assert other["val_mse"] == pytest.approx(by_val["val_mse"], rel=1e-5)
    assert other["full_history_mse_protocol"] == pytest.approx(
        by_val["full_history_mse_protocol"], rel=1e-5
    )
    # The test can fail: a backbone part that is not zero moves the figures.
    assert model.head is not None
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.05)
    moved = online_scores([model], model, data, toy_csv, cfg, str(tmp_path))
    assert moved["online_val_mse"] != pytest.approx(alone["val_mse"], rel=1e-3)


def test_the_start_is_a_candidate_so_bad_training_cannot_lose_it(toy_csv: Path) -> None:
    data = read_dataset(toy_csv, DataConfig())
    fit_val = _fit(data).val_mse
    # A learning rate far too high: every trained epoch is worse than the fitted start.
    cfg = config(toy_csv, lr=3.0, linear_lr=3.0, epochs=2, patience=5)
    row = run_one(toy_csv, cfg, "cpu", "bad", scores="window", linear_init="ridge")
    assert row["best_epoch"] == -1
    assert row["val_mse"] == pytest.approx(fit_val, rel=1e-5)
    assert row["epochs"] == 2


@pytest.mark.parametrize("groups", ["model", "channel_horizon"])
def test_shrink_keeps_the_weight_best_on_val_for_runs_and_ensembles(
    toy_csv: Path, tmp_path: Path, groups: str
) -> None:
    """--shrink: the row reports the weights with the lowest val MSE, never above the unshrunk
    val; finer groupings never validate worse than coarser ones; the test MSE reported for the
    chosen grouping is the row's own test MSE; a seed ensemble of the saved (unshrunk) members
    chooses its own."""
    for seed in (0, 1):
        cfg = config(
            toy_csv, lr=3e-3, epochs=2, backbone_shrink=True, shrink_groups=groups, seed=seed
        )
        row = run_one(
            toy_csv, cfg, "cpu", "sh", str(tmp_path), scores="window", linear_init="ridge"
        )
        tried, by = row["shrink_val_mse"], row["shrink_by_groups"]
        assert isinstance(tried, dict) and len(tried) == 5
        assert isinstance(by, dict) and list(by) == ["model", "channel", "channel_horizon"]
        assert tried["1.0"] == row["val_mse_unshrunk"]
        assert by["model"]["val_mse"] == min(tried.values())
        assert by["model"]["weights"] == float(min(tried, key=lambda w: tried[w]))
        vals = [by[g]["val_mse"] for g in by]
        # Coarse to fine never worse (to summation order: group sums vs one sum).
        assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(vals))
        assert vals[0] <= row["val_mse_unshrunk"]
        assert row["val_mse"] == by[groups]["val_mse"]
        assert row["backbone_weight"] == by[groups]["weights"]
        moved = row["backbone_weight"] != 1.0
        unshrunk_test = row["test_mse_protocol_unshrunk"]
        assert (unshrunk_test is None) == (not moved)
        if moved:
            # Same forecasts; the row's own figure divides by the model's float32 scale.
            test = by[groups]["test_mse_protocol"]
            assert test == pytest.approx(row["test_mse_protocol"], rel=1e-6)
            assert test != unshrunk_test
    (ens,) = ensembles(tmp_path, "cpu", scores="window")
    assert ens["val_mse"] == ens["shrink_by_groups"][groups]["val_mse"] <= ens["val_mse_unshrunk"]


def test_a_seed_ensemble_reports_its_full_history_with_the_online_path(
    toy_csv: Path, tmp_path: Path
) -> None:
    """--ensemble-from DIR --online: the hedge is the fit alone's, under the rule asked for, and
    the fields come only when asked for (what the swap computes: the test above)."""
    for seed in (0, 1):
        cfg = config(toy_csv, lr=3e-3, epochs=1, seed=seed, cycle_length=24)
        run_one(toy_csv, cfg, "cpu", "on", str(tmp_path), scores="window", linear_init="ridge")
    alone = ridge_linear_online(toy_csv, LOOKBACK, HORIZON, cycle=24, rule="val")
    (ens,) = ensembles(tmp_path, "cpu", scores="all", online=True, online_rule="val")
    assert ens["online_rule"] == "val" and list(ens["online_by_rule"]) == ["val", "mean"]
    assert ens["online_hedge"] == alone["config"]["hedge"]
    assert ens["online_fit_full_history_mse_protocol"] == alone["full_history_mse_protocol"]
    assert math.isfinite(ens["full_history_online_mse_protocol"])
    assert math.isfinite(ens["online_val_mse"])
    (plain,) = ensembles(tmp_path, "cpu", scores="all")
    assert "online_val_mse" not in plain


def test_mixed_kinds_make_one_mean_forecast(toy_csv: Path, tmp_path: Path) -> None:
    """--ensemble-from DIR --mix-kinds: every run of the data, horizon and lookback in one mean
    forecast, whatever its kind; without it, only the runs that differ in the seed alone."""
    runs = [("diagonal_ssm", 0), ("diagonal_ssm", 1), ("rwkv7", 0)]
    for kind, seed in runs:
        cfg = config(toy_csv, kind=kind, lr=3e-3, epochs=1, seed=seed, head_size=4)
        run_one(toy_csv, cfg, "cpu", kind[:2], str(tmp_path), scores="window", linear_init="ridge")
    (seeds,) = ensembles(tmp_path, "cpu", scores="window")
    assert seeds["kinds"] == ["diagonal_ssm", "diagonal_ssm"] and seeds["seeds"] == [0, 1]
    (mixed,) = ensembles(tmp_path, "cpu", scores="window", mix_kinds=True)
    assert mixed["kinds"] == ["diagonal_ssm", "diagonal_ssm", "rwkv7"]
    assert mixed["variant"] == "di+rw ens3"
    # The same figure from the members' own forecasts, averaged here.
    data = read_dataset(toy_csv, DataConfig())
    members = []
    for meta in sorted(tmp_path.glob("*.json")):
        c = TrainConfig(**json.loads(meta.read_text())["config"])
        model = build_model(c.model_config(len(data.channels), data.covariates.shape[-1]))
        model.load_state_dict(load_file(str(meta.with_suffix(".st"))))
        members.append(model_predictor(model.eval()))
    splits = protocol_splits(data.name, data.n_steps)
    proto = protocol_scale(toy_csv, splits.train)
    want = evaluate_windows(
        lambda x, cov: np.mean([p(x, cov) for p in members], axis=0)[:, :HORIZON],
        data.values, data.covariates, splits.test, LOOKBACK, HORIZON, proto,
    )  # fmt: skip
    assert mixed["test_mse_protocol"] == pytest.approx(want.mse, rel=1e-6)
    assert mixed["test_mse_protocol"] != pytest.approx(seeds["test_mse_protocol"], rel=1e-6)


def test_ridge_init_needs_the_window_normalised_linear_path(toy_csv: Path) -> None:
    data = read_dataset(toy_csv, DataConfig())
    cfg = config(toy_csv, linear_norm="running")
    model = build_model(cfg.model_config(len(data.channels), data.covariates.shape[-1]))
    with pytest.raises(ValueError, match="window norm"):
        init_linear_ridge(model, data, cfg, None)


def test_the_daily_cycle_fit_explains_a_daily_cycle(toy_csv: Path) -> None:
    """The toy's channels are daily cycles plus noise. With the cycle the fit reaches a lower
    validation MSE than without, and the fitted cycle has the toy's shape: channel a's profile
    is sin(2 pi hour / 24) up to a factor (the map W passes part of a cycle through, so only the
    cycle's part Q_out - W Q_in is pinned down, not Q's scale)."""
    data = read_dataset(toy_csv, DataConfig())
    plain, cyc = _fit(data), _fit(data, 24)
    assert cyc.val_mse < plain.val_mse
    assert cyc.cycle is not None and cyc.cycle.shape == (24, 2)
    hours = np.arange(24)
    profile = cyc.cycle[:, 0] - cyc.cycle[:, 0].mean()
    assert abs(np.corrcoef(profile, np.sin(2 * np.pi * hours / 24))[0, 1]) > 0.9


def test_no_fully_observed_window_is_a_clear_error(toy_csv: Path, tmp_path: Path) -> None:
    """Every 10th row missing: no window of 16 + 8 rows is fully observed, so there is nothing
    to fit; a clear error, not a singular solve."""
    lines = toy_csv.read_text().splitlines()
    holed = [line if i % 10 else line.split(",")[0] + ",," for i, line in enumerate(lines[1:])]
    path = tmp_path / "toy.csv"
    path.write_text("\n".join([lines[0], *holed]) + "\n")
    data = read_dataset(path, DataConfig())
    with pytest.raises(ValueError, match="fully observed training window"):
        _fit(data, 24)
