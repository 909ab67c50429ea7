"""Accuracy on the standard long-horizon benchmarks (../shared/data/README.md protocol).

For each dataset, horizon and lookback: train (the same epoch loop as `statecast train`, without
Ray or MLflow so it runs anywhere, GPU included), keep the best validation epoch, then score every
test window with a lookback window and in "full history" mode (the state carried through all data
before each window). Prints one table; --out appends JSON lines for docs/RESULTS.md.

    python -m bench.accuracy --datasets ETTh1 --horizons 96 720 --lookbacks 96 --device cpu

--jobs N trains N configurations at once in separate processes (on one GPU, small models are
bound by kernel launches, so several processes share it well). --variant NAME=OPTIONS adds a
method variant (e.g. --variant mixed="--no-channel-independent --lr 1e-3"); without one the
defaults below are the method.

--save-dir DIR keeps each run's best weights and config; --ensemble-from DIR then scores the
mean forecast of the runs there that differ only in their seed (a seed ensemble), under the same
protocol. Weather's `-9999` sentinels are masked for training and for the model's scaler; the
`protocol` columns score with the standard protocol's scaler instead (fitted on the raw train
rows, sentinels in, as the published figures are), the columns beside the published ones.

--scores window scores the test windows only (no full-history pass: the weather H=720 passes are
long). --ridge-linear trains nothing: it fits the linear path alone (RLinear) in closed form on
the CPU, the ridge strength chosen by validation MSE, and scores it under the same protocol
(--ridge-dir DIR keeps the fits). --linear-init ridge starts a trained model's linear path at that
fit (read from --ridge-dir, else fitted in the process) so the backbone learns the residual; with
--linear-lr 1e-9 the linear path stays where it started.

(Run it as a module: as a script, bench/kernels.py would shadow the `kernels` package.)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import dataclasses
import functools
import itertools
import json
import math
import multiprocessing
import shlex
import time
import typing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from forecast import build_model
from forecast.model import Forecaster
from pipelines.config import SHRINK_GROUPS, DataConfig, TrainConfig
from pipelines.data import SeriesData, read_dataset
from pipelines.evaluate import evaluate_model, model_predictor
from pipelines.fit import (
    make_optimizer,
    train_epoch,
    training_windows,
    validate,
    validation_sums,
)
from pipelines.linear_fit import (
    CHANNEL_PULLS,
    RIDGE_LAMBDAS,
    LinearFit,
    fit_linear,
    load_fit,
    model_scale,
    save_fit,
    score_linear_fit,
    set_linear_path,
)
from pipelines.online_fit import (
    ONLINE_RULES,
    BackbonePart,
    online_candidates,
    online_choice,
    pick_hedge,
    score_online_parts,
)
from pipelines.protocol import ErrorSums, EvalResult, protocol_splits, window_starts
from pipelines.shrink import BackboneShrink

ROOT = Path(__file__).resolve().parents[1]
# Best published MSE from ../shared/data/README.md: (at lookback 96, at any lookback).
PUBLISHED = {
    ("ETTh1", 96): (0.375, 0.361),
    ("ETTh1", 720): (0.481, 0.440),
    ("ETTm1", 96): (0.320, 0.290),
    ("ETTm1", 720): (0.454, 0.415),
    ("weather", 96): (0.163, 0.147),
    ("weather", 720): (0.339, 0.310),
}


@functools.lru_cache(maxsize=8)
def protocol_scale(path: Path, train: tuple[int, int]) -> np.ndarray:
    """The standard protocol's per-channel scale [C]: population std of the raw train rows,
    missing-value sentinels left in (as published code fits its StandardScaler). Cached: `score`
    and `shrink` both need it, and it reads the whole file; callers only divide by it."""
    raw = read_dataset(path, DataConfig(missing_values=())).values[:, train[0] : train[1]]
    return np.nanstd(raw.reshape(-1, raw.shape[-1]).astype(np.float64), axis=0)


def score_windows(
    model: Forecaster, data: SeriesData, lookback: int, horizon: int, scales: list[np.ndarray]
) -> list[EvalResult]:
    """Every test window scored under each per-channel scale [C] from one pass of forecasts:
    the forecasts do not depend on the scale, only the divisor does (on weather H=720 a test pass
    is 9,820 windows x 720 steps x 21 channels, so the second scale no longer costs a pass).
    Same windows, forecasts and sums as `evaluate_model(..., "test", score_scale=scale)`."""
    starts = window_starts(protocol_splits(data.name, data.n_steps).test, lookback, horizon)
    sums = [ErrorSums(horizon, s) for s in scales]
    predict = model_predictor(model)
    was_training = model.training
    model.eval()
    for series in range(data.n_series):
        for i in range(0, len(starts), 512):
            batch = starts[i : i + 512]
            idx = batch[:, None] + np.arange(lookback)
            pred = predict(data.values[series, idx], data.covariates[series, idx])[:, :horizon]
            truth = data.values[series, batch[:, None] + lookback + np.arange(horizon)]
            for s in sums:
                s.add(pred, truth)
    model.train(was_training)
    return [s.result() for s in sums]


def score(
    model: Forecaster,
    data: SeriesData,
    path: Path,
    cfg: TrainConfig,
    val: float,
    scores: str = "all",
) -> dict[str, Any]:
    """Test MSE/MAE with a lookback window and (scores="all") with the full history, with the
    model's scaler and with the protocol's; scores="window" skips the full history (None)."""
    start = time.perf_counter()
    splits = protocol_splits(data.name, data.n_steps)
    proto = protocol_scale(path, splits.train)
    own = model.encoder.scale.double().cpu().numpy()
    same = np.allclose(proto, own, rtol=1e-6)
    # Where the scales agree (ETT: no sentinels) the protocol columns are the model-scale ones.
    results = score_windows(model, data, cfg.lookback, cfg.horizon, [own] if same else [own, proto])
    window, window_p = results[0], results[-1]
    full = full_p = None
    if scores == "all":
        full = evaluate_model(model, data, cfg.lookback, cfg.horizon, "test", full_history=True)
        full_p = full
        if not same:
            full_p = evaluate_model(
                model, data, cfg.lookback, cfg.horizon, "test", full_history=True, score_scale=proto
            )
    published = PUBLISHED.get((data.name, cfg.horizon), (math.nan, math.nan))
    return {
        "dataset": data.name,
        "kind": cfg.kind,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "data"},
        "horizon": cfg.horizon,
        "lookback": cfg.lookback,
        "val_mse": val,
        "test_mse": window.mse,
        "test_mae": window.mae,
        "full_history_mse": full.mse if full else None,
        "full_history_mae": full.mae if full else None,
        "test_mse_protocol": window_p.mse,
        "test_mae_protocol": window_p.mae,
        "full_history_mse_protocol": full_p.mse if full_p else None,
        "windows": window.windows,
        "published_best_l96": published[0],
        "published_best_any": published[1],
        "score_seconds": round(time.perf_counter() - start, 1),
    }


def init_linear_ridge(
    model: Forecaster, data: SeriesData, cfg: TrainConfig, ridge_dir: str | None
) -> float:
    """Set the model's linear path (and its daily cycle, with cfg.cycle_length) to the
    closed-form fit (pipelines/linear_fit.py): read from ridge_dir when a fit of this dataset, H,
    linear path length and cycle is there, else fitted here. -> the fit's ridge strength. The
    linear path may be shorter than the lookback (--linear-lookback): the backbone then sees more
    history than the fit."""
    if model.linear is None or cfg.linear_norm != "window":
        raise ValueError("--linear-init ridge needs the linear path with window norm")
    fit, saved = saved_or_fitted(
        data,
        model.linear.length,
        cfg.horizon,
        cfg.cycle_length,
        cfg.linear_per_channel,
        ridge_dir,
    )
    if saved is not None:
        print(f"  linear path from {saved} (ridge {fit.ridge:g})", flush=True)
    else:
        print(f"  linear path fitted here (ridge {fit.ridge:g}; no saved fit)", flush=True)
    set_linear_path(model, fit)
    return fit.ridge


def saved_or_fitted(
    data: SeriesData,
    lookback: int,
    horizon: int,
    cycle: int,
    per_channel: bool,
    ridge_dir: str | None,
    pulls: tuple[float, ...] = CHANNEL_PULLS,
) -> tuple[LinearFit, Path | None]:
    """The closed-form fit of this dataset, linear path length, H, cycle and per-channel choice:
    read from ridge_dir when it holds one (-> the fit and its file), else fitted here (-> the fit
    and None)."""
    if ridge_dir:
        saved = ridge_file(Path(ridge_dir), data.name, lookback, horizon, cycle, per_channel)
        if saved.exists():
            return load_fit(saved), saved
    splits = protocol_splits(data.name, data.n_steps)
    return fit_linear(data, splits, lookback, horizon, cycle, per_channel, pulls), None


def run_one(
    path: Path,
    cfg: TrainConfig,
    device: str,
    label: str = "",
    save_dir: str | None = None,
    scores: str = "all",
    linear_init: str = "zero",
    ridge_dir: str | None = None,
) -> dict[str, object]:
    """Train one configuration, keep its best validation epoch, score it. linear_init "ridge":
    the linear path starts at the closed-form fit and the backbone learns the residual; the start
    itself is validated too (epoch -1), so the backbone is kept only where it improves on it."""
    torch.manual_seed(cfg.seed)
    data = read_dataset(path, DataConfig())
    splits = protocol_splits(data.name, data.n_steps)
    model = build_model(cfg.model_config(len(data.channels), data.covariates.shape[-1]))
    model.fit_scaler(torch.from_numpy(data.values[:, splits.train[0] : splits.train[1]]))
    model.to(device)
    best, best_state, bad, epochs, best_epoch = math.inf, None, 0, 0, -1
    tag = f"{label} {data.name} H={cfg.horizon} L={cfg.lookback}"
    if linear_init == "ridge":
        init_linear_ridge(model, data, cfg, ridge_dir)
        best = validate(model, data.values, data.covariates, splits.val, cfg, device)
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        print(f"  {tag} start (linear path fitted): val {best:.4f}", flush=True)
    opt = make_optimizer(model, cfg)
    windows = training_windows(data.n_series, splits.train, cfg)
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        loss = train_epoch(
            model, model, opt, data.values, data.covariates, windows, cfg, epoch, device=device
        )
        val = validate(model, data.values, data.covariates, splits.val, cfg, device)
        epochs = epoch + 1
        print(f"  {tag} epoch {epoch}: loss {loss:.4f} val {val:.4f}", flush=True)
        if val < best:
            best, bad, best_epoch = val, 0, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    train_s = time.perf_counter() - start
    assert best_state is not None
    model.load_state_dict(best_state)
    best, shrunk = shrink(
        [model],
        model,
        best,
        lambda: validation_sums(model, data.values, data.covariates, splits.val, cfg, device),
        data,
        path,
        cfg,
    )
    unshrunk = shrunk["val_mse_unshrunk"]
    if cfg.backbone_shrink:
        weight = shrunk["backbone_weight"]
        print(f"  {tag} backbone weight {weight}: val {best:.4f} (unshrunk {unshrunk:.4f})")
    if save_dir:
        # Saved before scoring, so a run cut while scoring still joins its seed ensemble.
        name = f"{label}_{data.name}_H{cfg.horizon}_L{cfg.lookback}_s{cfg.seed}"
        folder = Path(save_dir)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.cpu().contiguous() for k, v in best_state.items()}, folder / f"{name}.st")
        # The weights before the shrink: a seed ensemble chooses its own weight.
        meta = {
            "label": label,
            "val_mse": unshrunk,
            "config": dataclasses.asdict(cfg),
            "linear_init": linear_init,
        }
        (folder / f"{name}.json").write_text(json.dumps(meta))
    row = score(model, data, path, cfg, best, scores)
    row.update(shrunk)
    row.update(
        variant=label,
        linear_init=linear_init,
        best_epoch=best_epoch,
        epochs=epochs,
        train_seconds=round(train_s, 1),
        device=torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
    )
    return row


def shrink(
    models: list[Forecaster],
    scored: Forecaster,
    val: float | None,
    val_sums: typing.Callable[[], ErrorSums],
    data: SeriesData,
    path: Path,
    cfg: TrainConfig,
) -> tuple[float, dict[str, Any]]:
    """With cfg.backbone_shrink, the weights (cfg.shrink_groups) of `models`' backbone part best
    on validation (pipelines/shrink.py; `scored` is what they forecast as, a model or their
    ensemble), left in place. -> (the val MSE kept, the row's shrink fields). `val` is the
    unshrunk val MSE where the caller has it; None: taken from the shrink's weight-1 pass (or one
    pass without the shrink). The fields include what the shrink did to test, reported beside the
    chosen model and never used to choose it: the test MSE before the shrink (None where nothing
    moved) and, for every grouping of SHRINK_GROUPS, the val MSE, weights and test MSE it gives
    (protocol scale, windows only; a table two groupings share is scored once)."""
    if val is None and not cfg.backbone_shrink:
        val = val_sums().result().mse
    fields: dict[str, Any] = {
        "val_mse_unshrunk": val,
        "backbone_weight": 1.0,
        "shrink_groups": cfg.shrink_groups,
        "shrink_val_mse": {},
        "test_mse_protocol_unshrunk": None,
        "shrink_by_groups": {},
    }
    if not cfg.backbone_shrink:
        return fields["val_mse_unshrunk"], fields
    proto = protocol_scale(path, protocol_splits(data.name, data.n_steps).train)
    backbone = BackboneShrink(models)
    passes = backbone.passes(val_sums)
    if val is None:
        fields["val_mse_unshrunk"] = passes[1.0].result().mse
    tested: dict[bytes, float] = {}

    def test_mse(rows: np.ndarray) -> float:
        key = np.ascontiguousarray(rows).tobytes()
        if key not in tested:
            backbone.apply(rows)
            tested[key] = score_windows(scored, data, cfg.lookback, cfg.horizon, [proto])[0].mse
        return tested[key]

    choices = {groups: backbone.choose(passes, groups) for groups in SHRINK_GROUPS}
    moved = {groups: bool((c.table != 1.0).any()) for groups, c in choices.items()}
    unshrunk = None
    if any(moved.values()):
        unshrunk = test_mse(np.ones((backbone.horizon, backbone.width)))
    for groups, choice in choices.items():
        test = test_mse(backbone.rows(choice)) if moved[groups] else unshrunk
        fields["shrink_by_groups"][groups] = {
            "val_mse": choice.val_mse,
            "weights": choice.summary(),
            "test_mse_protocol": test,
        }
    chosen = choices[cfg.shrink_groups]
    backbone.apply(backbone.rows(chosen))
    fields.update(
        backbone_weight=chosen.summary(),
        shrink_val_mse={str(w): v for w, v in chosen.tried.items()},
        test_mse_protocol_unshrunk=unshrunk if moved[cfg.shrink_groups] else None,
    )
    return chosen.val_mse, fields


def ridge_file(
    folder: Path, name: str, lookback: int, horizon: int, cycle: int = 0, per_channel: bool = False
) -> Path:
    tail = f"{f'_P{cycle}' if cycle else ''}{'_pc' if per_channel else ''}"
    return folder / f"ridge_{name}_H{horizon}_L{lookback}{tail}.st"


def ridge_linear(
    path: Path,
    lookback: int,
    horizon: int,
    save_dir: str | None = None,
    cycle: int = 0,
    per_channel: bool = False,
    pulls: tuple[float, ...] = CHANNEL_PULLS,
) -> dict[str, Any]:
    """`fit_linear` scored under the protocol: what the linear path can reach on its own, with no
    backbone and no SGD, in seconds on a CPU. With save_dir the fit is kept there for
    `--linear-init ridge --ridge-dir` (a safetensors file per dataset, H, L and cycle)."""
    return ridge_linear_fit(path, lookback, horizon, save_dir, cycle, per_channel, pulls)[0]


def ridge_linear_fit(
    path: Path,
    lookback: int,
    horizon: int,
    save_dir: str | None = None,
    cycle: int = 0,
    per_channel: bool = False,
    pulls: tuple[float, ...] = CHANNEL_PULLS,
) -> tuple[dict[str, Any], LinearFit]:
    """`ridge_linear`'s row and the fit itself (--online starts from it: no second fit)."""
    start = time.perf_counter()
    data = read_dataset(path, DataConfig())
    splits = protocol_splits(data.name, data.n_steps)
    fit = fit_linear(data, splits, lookback, horizon, cycle, per_channel, pulls)
    if save_dir:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        save_fit(fit, ridge_file(Path(save_dir), data.name, lookback, horizon, cycle, per_channel))
    scale, floor = model_scale(data, splits.train)
    proto = protocol_scale(path, splits.train)
    test, test_p = score_linear_fit(data, splits.test, fit, floor, [scale, proto])
    published = PUBLISHED.get((data.name, horizon), (math.nan, math.nan))
    row = {
        "dataset": data.name,
        "kind": "ridge_linear",
        "config": {
            "ridge": fit.ridge,
            "lambdas": list(RIDGE_LAMBDAS),
            "cycle": cycle,
            "channel_pull": fit.channel_pull,
            "pulls": list(pulls) if per_channel else [],
        },
        "horizon": horizon,
        "lookback": lookback,
        "val_mse": fit.val_mse,
        "test_mse": test.mse,
        "test_mae": test.mae,
        "full_history_mse": None,
        "full_history_mae": None,
        "test_mse_protocol": test_p.mse,
        "test_mae_protocol": test_p.mae,
        "full_history_mse_protocol": None,
        "windows": test.windows,
        "published_best_l96": published[0],
        "published_best_any": published[1],
        "variant": f"ridge_linear (ridge {fit.ridge:g}{f', cycle {cycle}' if cycle else ''}"
        f"{f', per channel {fit.channel_pull:g}' if per_channel else ''})",
        "epochs": 0,
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    return row, fit


def ridge_linear_online(
    path: Path,
    lookback: int,
    horizon: int,
    ridge_dir: str | None = None,
    cycle: int = 0,
    per_channel: bool = False,
    pulls: tuple[float, ...] = CHANNEL_PULLS,
    rule: str = "mean",
    fit: LinearFit | None = None,
) -> dict[str, Any]:
    """The closed-form fit refitted online (pipelines/online_fit.py) in full-history mode: started
    from the training windows, carried through val into test, every window's map solved from the
    windows whose targets ended by its origin; the maps hedged over the half-lives (rule "mean")
    or the half-life best on val ("val"). The fit is read from ridge_dir when it holds one, else
    made here, unless `fit` is given (the one `ridge_linear_fit` just made). The row's val is the
    online path's; it has no window score (with a window only, the map is the training fit: the
    --ridge-linear row)."""
    start = time.perf_counter()
    data = read_dataset(path, DataConfig())
    splits = protocol_splits(data.name, data.n_steps)
    if fit is None:
        fit, _ = saved_or_fitted(data, lookback, horizon, cycle, per_channel, ridge_dir, pulls)
    scale, _ = model_scale(data, splits.train)
    proto = protocol_scale(path, splits.train)
    choice = online_choice(data, splits, fit, [scale, proto], rule)
    test, test_p = choice.test
    published = PUBLISHED.get((data.name, horizon), (math.nan, math.nan))
    return {
        "dataset": data.name,
        "kind": "ridge_linear_online",
        "config": {
            "ridge": fit.ridge,
            "cycle": cycle,
            "channel_pull": fit.channel_pull,
            "rule": rule,
            "hedge": choice.hedge.describe(),
            "tried_val_mse": choice.tried,
            # Every candidate's full-history test MSE on the protocol's scale.
            "tried_full_history_mse_protocol": {
                h: test[1].mse for h, test in choice.tried_test.items()
            },
            "solve_every": cycle or 1,
        },
        "horizon": horizon,
        "lookback": lookback,
        "val_mse": choice.val[0].mse,
        "test_mse": None,
        "test_mae": None,
        "full_history_mse": test.mse,
        "full_history_mae": test.mae,
        "test_mse_protocol": None,
        "test_mae_protocol": None,
        "full_history_mse_protocol": test_p.mse,
        "full_history_mae_protocol": test_p.mae,
        "windows": test.windows,
        "published_best_l96": published[0],
        "published_best_any": published[1],
        "variant": f"ridge_linear online (ridge {fit.ridge:g}"
        f"{f', cycle {cycle}' if cycle else ''}"
        f"{f', per channel {fit.channel_pull:g}' if per_channel else ''}"
        f", online {choice.hedge.describe()})",
        "epochs": 0,
        "train_seconds": round(time.perf_counter() - start, 1),
    }


class MeanEnsemble(nn.Module):
    """The mean forecast of members that share a config (but for the seed) and a scaler; it
    reads like a Forecaster to the evaluator (its state: one per member)."""

    def __init__(self, members: list[Forecaster]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.config = members[0].config
        self.encoder = members[0].encoder
        self.point = members[0].point

    def forward(
        self,
        x: Tensor,
        state: tuple[Any, ...] | None = None,
        covariates: Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[Tensor, tuple[Any, ...]]:
        states = state if state is not None else (None,) * len(self.members)
        outs = [
            m(x, s, covariates=covariates, last_only=last_only)
            for m, s in zip(self.members, states, strict=True)
        ]
        return torch.stack([y for y, _ in outs]).mean(0), tuple(s for _, s in outs)


def online_scores(
    members: list[Forecaster],
    scored: Forecaster,
    data: SeriesData,
    path: Path,
    cfg: TrainConfig,
    ridge_dir: str | None,
    rule: str = "mean",
) -> dict[str, Any]:
    """Full history with the linear path refitted online (pipelines/online_fit.py): `scored`'s
    forecast (a model or the members' mean) with the members' own linear path's part replaced by
    the online path's, on every val and test window. The hedge is the one the fit alone gets
    under the rule (the drift it follows is the linear path's); the row's online val is then the
    whole forecast's. The row's fields are `rule`'s; "online_by_rule" holds every rule's, and
    "online_tried" every candidate's (one pass: each half-life solved once, the model forecast
    once). The online fit starts from the closed-form fit in ridge_dir (else fitted here), the
    one --linear-init ridge started the members at."""
    if rule not in ONLINE_RULES:
        raise ValueError(f"unknown online rule {rule!r}")
    start = time.perf_counter()
    splits = protocol_splits(data.name, data.n_steps)
    length = members[0].linear.length if members[0].linear is not None else 0
    fit, _ = saved_or_fitted(
        data, length, cfg.horizon, cfg.cycle_length, cfg.linear_per_channel, ridge_dir
    )
    scale, _ = model_scale(data, splits.train)
    proto = protocol_scale(path, splits.train)
    backbone = BackbonePart(members, data, splits)
    predict = model_predictor(scored)

    def backbone_part(series: int, origins: np.ndarray) -> np.ndarray:
        # The model's window forecast (full history scores as the window to 0.001, RESULTS.md).
        idx = (origins - cfg.lookback + 1)[:, None] + np.arange(cfg.lookback)
        pred = predict(data.values[series, idx], data.covariates[series, idx])[:, : cfg.horizon]
        return backbone(series, origins, pred)

    candidates = online_candidates(splits)
    was_training = scored.training
    scored.eval()
    alone, swapped = score_online_parts(
        data, splits, fit, candidates, [scale, proto], [None, backbone_part]
    )
    scored.train(was_training)
    fit_val = [val[0].mse for val, _ in alone]
    tried = {}
    for hedge, (fval, ftest), (mval, mtest) in zip(candidates, alone, swapped, strict=True):
        tried[hedge.describe()] = {
            "fit_val_mse": fval[0].mse,
            "fit_full_history_mse_protocol": ftest[1].mse,
            "val_mse": mval[0].mse,
            "full_history_mse_protocol": mtest[1].mse,
            "full_history_mae_protocol": mtest[1].mae,
        }
    rules = (rule, *(r for r in ONLINE_RULES if r != rule))
    picks = {r: pick_hedge(r, candidates, fit_val) for r in rules}
    by_rule = {
        r: {"hedge": candidates[i].describe(), **tried[candidates[i].describe()]}
        for r, i in picks.items()
    }
    main, test = by_rule[rule], swapped[picks[rule]][1][0]
    return {
        "online_rule": rule,
        "online_hedge": main["hedge"],
        "online_fit_val_mse": main["fit_val_mse"],
        "online_fit_full_history_mse_protocol": main["fit_full_history_mse_protocol"],
        "online_val_mse": main["val_mse"],
        "full_history_online_mse": test.mse,
        "full_history_online_mae": test.mae,
        "full_history_online_mse_protocol": main["full_history_mse_protocol"],
        "full_history_online_mae_protocol": main["full_history_mae_protocol"],
        "online_by_rule": by_rule,
        "online_tried": tried,
        "online_seconds": round(time.perf_counter() - start, 1),
    }


def ensembles(
    folder: Path,
    device: str,
    scores: str = "all",
    online: bool = False,
    ridge_dir: str | None = None,
    mix_kinds: bool = False,
    online_rule: str = "mean",
) -> list[dict[str, Any]]:
    """Score every group of saved runs that differ only in the seed (two or more) as one mean
    forecast; its validation MSE is the ensemble's own, so groups compare by validation. online
    (with scores "all"): also the full history with the linear path refitted online
    (`online_scores`, its fields under online_rule). mix_kinds: one group of every run with the
    same data, horizon, lookback and linear start, whatever its model kind or other settings (the
    first run's config scores it: its shrink, lookback and cycle)."""
    shared = ("data", "horizon", "lookback")
    groups: dict[str, list[tuple[dict[str, Any], Path]]] = {}
    for meta_path in sorted(folder.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        kept = shared if mix_kinds else meta["config"]
        config = {k: v for k, v in meta["config"].items() if k != "seed" and k in kept}
        # Members share how their linear path started, too (older saves: "zero").
        config["linear_init"] = meta.get("linear_init", "zero")
        key = json.dumps(config, sort_keys=True)
        groups.setdefault(key, []).append((meta, meta_path.with_suffix(".st")))
    rows = []
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda m: (m[0]["config"]["kind"], m[0]["config"]["seed"]))
        cfgs = [TrainConfig(**m["config"]) for m, _ in members]
        cfg, path = cfgs[0], Path(cfgs[0].data)
        data = read_dataset(path, DataConfig())
        models = []
        for c, (_, weights) in zip(cfgs, members, strict=True):
            model = build_model(c.model_config(len(data.channels), data.covariates.shape[-1]))
            model.load_state_dict(load_file(str(weights)))
            models.append(model.to(device).eval())
        ens = typing.cast(Forecaster, MeanEnsemble(models))
        splits = protocol_splits(data.name, data.n_steps)
        val_ens = functools.partial(
            validation_sums, ens, data.values, data.covariates, splits.val, cfg, device
        )
        val, shrunk = shrink(models, ens, None, val_ens, data, path, cfg)
        row = score(ens, data, path, cfg, val, scores)
        row.update(shrunk)
        if online and scores == "all":
            row.update(online_scores(models, ens, data, path, cfg, ridge_dir, online_rule))
        seeds = [c.seed for c in cfgs]
        name = "+".join(sorted({m["label"] for m, _ in members})) if mix_kinds else None
        row.update(
            variant=f"{name or members[0][0]['label']} ens{len(models)}",
            kinds=[c.kind for c in cfgs],
            seeds=seeds,
            member_val_mse=[m["val_mse"] for m, _ in members],
            epochs=0,
            train_seconds=0.0,
        )
        print(
            f"  ensemble {row['variant']} {data.name} H={cfg.horizon} L={cfg.lookback}: "
            f"val {val:.4f} test {row['test_mse']:.4f}",
            flush=True,
        )
        rows.append(row)
    return rows


def method_parser() -> argparse.ArgumentParser:
    """Options of the method (one --variant's settings)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--kind", default="selective_ssm")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--steps-per-epoch", type=int, default=0)
    p.add_argument("--norm-halflife", type=int, default=96, help="0 = global scaler")
    p.add_argument("--channel-independent", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--linear-lookback", type=int, default=None, help="default: the lookback")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--loss-positions", default="origin", choices=["origin", "all"])
    p.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"])
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--linear-lr", type=float, default=None, help="default: --lr")
    p.add_argument("--linear-norm", default="running", choices=["running", "window"])
    p.add_argument("--zero-head", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--mse-weight", type=float, default=1.0)
    p.add_argument("--point-loss", default="pinball", choices=["pinball", "mse"])
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cycle", type=int, default=0, help="steps in the daily cycle (0: none)")
    p.add_argument(
        "--per-channel",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="a linear map per channel, pulled toward the shared fit (--linear-init ridge)",
    )
    p.add_argument(
        "--shrink",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="scale the backbone's part of the forecast by the weight best on val",
    )
    p.add_argument(
        "--shrink-groups",
        default="model",
        choices=list(SHRINK_GROUPS),
        help="with --shrink: one weight, one per channel, or per channel and horizon quarter",
    )
    p.add_argument(
        "--linear-init",
        default="zero",
        choices=["zero", "ridge"],
        help="ridge: the linear path starts at its closed-form fit (needs --linear-norm window; "
        "with --zero-head the start forecasts what the fit does), the start validated too",
    )
    return p


def train_config(args: argparse.Namespace, data: str, lookback: int, horizon: int) -> TrainConfig:
    return TrainConfig(
        data=data,
        kind=args.kind,
        lookback=lookback,
        horizon=horizon,
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        d_model=args.d_model,
        n_layers=args.n_layers,
        steps_per_epoch=args.steps_per_epoch,
        norm_halflife=args.norm_halflife,
        channel_independent=args.channel_independent,
        linear_lookback=args.linear_lookback,
        dropout=args.dropout,
        loss_positions=args.loss_positions,
        lr_schedule=args.lr_schedule,
        warmup_epochs=args.warmup_epochs,
        linear_lr=args.linear_lr,
        linear_norm=args.linear_norm,
        zero_head=args.zero_head,
        mse_weight=args.mse_weight,
        point_loss=args.point_loss,
        d_state=args.d_state,
        seed=args.seed,
        cycle_length=args.cycle,
        linear_per_channel=args.per_channel,
        backbone_shrink=args.shrink,
        shrink_groups=args.shrink_groups,
    )


Job = tuple[str, TrainConfig, str, str | None, str | None, str, str, str | None]


def _job(item: Job) -> dict[str, Any]:
    label, cfg, device, out, save_dir, scores, linear_init, ridge_dir = item
    row = run_one(Path(cfg.data), cfg, device, label, save_dir, scores, linear_init, ridge_dir)
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[method_parser()],
    )
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--datasets", nargs="+", default=["ETTh1", "ETTm1", "weather"])
    p.add_argument("--horizons", nargs="+", type=int, default=[96, 192, 336, 720])
    p.add_argument("--lookbacks", nargs="+", type=int, default=[96])
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OPTIONS",
        help="a method variant: these options on top of the command's (repeatable)",
    )
    p.add_argument("--jobs", type=int, default=1, help="configurations trained at once")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="append one JSON line per result")
    p.add_argument("--save-dir", default=None, help="keep each run's best weights here")
    p.add_argument(
        "--ensemble-from",
        default=None,
        metavar="DIR",
        help="score the seed ensembles of the runs saved in DIR (and train nothing)",
    )
    p.add_argument(
        "--mix-kinds",
        action="store_true",
        help="with --ensemble-from: one mean forecast of every run of the same data, horizon and "
        "lookback, whatever its model kind (not one per config)",
    )
    p.add_argument(
        "--ridge-linear",
        action="store_true",
        help="the linear path alone in closed form (RLinear, ridge by val) on the CPU; no training",
    )
    p.add_argument(
        "--pulls",
        type=float,
        nargs="+",
        default=list(CHANNEL_PULLS),
        help="--ridge-linear --per-channel: the pulls toward the shared map to choose among on "
        "val (inf: the shared map)",
    )
    p.add_argument(
        "--online",
        action="store_true",
        help="full history with the linear path refitted online: with --ridge-linear a row of the "
        "fit alone; with --ensemble-from (--ridge-dir: the fits) fields of each ensemble's row",
    )
    p.add_argument(
        "--online-rule",
        default="mean",
        choices=ONLINE_RULES,
        help="--online: mean, the maps hedged over the frozen fit and every half-life; val, the "
        "half-life best on val (ensemble rows report both)",
    )
    p.add_argument(
        "--ridge-dir",
        default=None,
        metavar="DIR",
        help="--ridge-linear keeps its fits here; --linear-init ridge reads them from here",
    )
    p.add_argument(
        "--scores",
        default="all",
        choices=["all", "window"],
        help="window: test windows only, no full-history pass (the long weather passes)",
    )
    args = p.parse_args()
    if args.ensemble_from:
        rows = ensembles(
            Path(args.ensemble_from),
            args.device,
            args.scores,
            args.online,
            args.ridge_dir,
            args.mix_kinds,
            args.online_rule,
        )
        if args.out:
            with open(args.out, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        print_table(rows)
        return
    if args.ridge_linear:
        rows = []
        for name, horizon, lookback in itertools.product(
            args.datasets, args.horizons, args.lookbacks
        ):
            csv = Path(args.data_dir) / f"{name}.csv"
            row, fit = ridge_linear_fit(
                csv,
                lookback,
                horizon,
                args.ridge_dir,
                args.cycle,
                args.per_channel,
                tuple(args.pulls),
            )
            rows.append(row)
            if args.online:
                # From the fit just made, not a second fit (nor a reload of the saved one).
                rows.append(
                    ridge_linear_online(
                        csv,
                        lookback,
                        horizon,
                        cycle=args.cycle,
                        per_channel=args.per_channel,
                        rule=args.online_rule,
                        fit=fit,
                    )
                )
        if args.out:
            with open(args.out, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        print_table(rows)
        return
    variants = [("default", args)]
    if args.variant:
        variants = []
        for spec in args.variant:
            name, _, opts = spec.partition("=")
            # Defaults come from the command's namespace: a variant changes only what it names.
            ns = method_parser().parse_args(shlex.split(opts), namespace=copy.copy(args))
            variants.append((name, ns))
    items: list[Job] = [
        (
            label,
            train_config(v, str(Path(args.data_dir) / f"{name}.csv"), lookback, horizon),
            args.device,
            args.out,
            args.save_dir,
            args.scores,
            v.linear_init,
            args.ridge_dir,
        )
        for name, horizon, lookback, (label, v) in itertools.product(
            args.datasets, args.horizons, args.lookbacks, variants
        )
    ]
    start = time.perf_counter()
    if args.jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            rows = list(pool.map(_job, items))
    else:
        rows = [_job(item) for item in items]
    print(f"total wall time {time.perf_counter() - start:.0f} s")
    print_table(rows)


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| dataset | H | L | variant | val MSE | test MSE | test MAE | full-history MSE "
        "| test MSE (protocol) | full-history (protocol) "
        "| best published (L=96 / any) | epochs | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['horizon']} | {r['lookback']} | {r['variant']} "
            f"| {r['val_mse']:.3f} | {_fmt(r['test_mse'])} | "
            f"{_fmt(r['test_mae'])} | {_fmt(r['full_history_mse'])} "
            f"| {_fmt(r['test_mse_protocol'])} | {_fmt(r['full_history_mse_protocol'])} "
            f"| {r['published_best_l96']} / "
            f"{r['published_best_any']} | {r['epochs']} | {r['train_seconds']} |"
        )
    for r in rows:
        tests = r.get("config", {}).get("tried_full_history_mse_protocol")
        if tests:  # --ridge-linear --online: every candidate of the online rules
            print(
                f"\n{r['dataset']} H={r['horizon']} L={r['lookback']} online candidates, val MSE"
                f" / full-history MSE (protocol); the row's rule keeps {r['config']['hedge']}:"
            )
            for hedge, test in tests.items():
                print(f"  {hedge}: {r['config']['tried_val_mse'][hedge]:.5f} / {test:.5f}")


if __name__ == "__main__":
    main()
