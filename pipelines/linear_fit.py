"""The linear path fitted in closed form: its start for training (`TrainConfig.linear_init`).

The linear path with `linear_norm="window"` is RLinear's map, and with a daily cycle CycleNet's
(forecast/layers.py, forecast/cycle.py). Alone it is a linear model of the normalised window, so
its training MSE has a closed-form minimum: weighted least squares over every fully observed
training window, in the model's scaled units, the ridge strength chosen by validation MSE. A
model started there forecasts what the fit does (with a zero head), and the backbone then trains
on what the fit leaves. On the benchmarks this start beats SGD from zero (docs/RESULTS.md).

With `per_channel` each channel gets its own map, pulled toward the shared one (a hierarchical
prior: the channels' maps differ, but each has C times fewer windows than the shared one), the
strength chosen by validation among CHANNEL_PULLS, the shared map itself (inf) included.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from forecast.adaptive_norm import VAR_FLOOR
from forecast.cycle import cycle_phase, cycle_table
from forecast.model import Forecaster
from pipelines.calendar import has_time_of_day
from pipelines.data import SeriesData
from pipelines.protocol import ErrorSums, EvalResult, Splits, window_starts

__all__ = [
    "CHANNEL_PULLS",
    "RIDGE_LAMBDAS",
    "LinearFit",
    "apply_beta",
    "fit_linear",
    "load_fit",
    "model_scale",
    "save_fit",
    "score_linear_fit",
    "set_linear_path",
]


# Ridge strengths tried, relative to the mean diagonal of the normal equations.
RIDGE_LAMBDAS = (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
# Strengths of the pull of each channel's map toward the shared one, relative to the mean
# diagonal of the channel's normal equations; inf: the shared map.
CHANNEL_PULLS = (math.inf, 100.0, 10.0, 1.0, 0.1, 0.01)


def apply_beta(xt: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Inputs [N, C, K] under the map beta [K, H] (shared) or [C, K, H] (one per channel)
    -> [N, C, H]."""
    if beta.ndim == 2:
        return xt @ beta
    return (xt.transpose(1, 0, 2) @ beta).transpose(1, 0, 2)  # per channel, by BLAS


def _norm_windows(
    values: np.ndarray, starts: np.ndarray, lookback: int, horizon: int, floor: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Windows of one series [T, C] starting at `starts` [N] -> inputs normalised by their own
    mean and std with a 1 appended for the bias [N, C, L + 1], that mean and std [N, C, 1], the
    targets [N, C, H] and whether input and target are fully observed [N, C]. A missing input is
    its window's mean; std = sqrt(var + floor [C]), the linear path's VAR_FLOOR in data units.
    A wholly missing input has no mean of its own: it takes the channel's last value observed
    before the window (0 if none), so its forecast is that level (to the floor) and not NaN."""
    w = values[starts[:, None] + np.arange(lookback + horizon)].astype(np.float64)
    x, y = w[:, :lookback].transpose(0, 2, 1), w[:, lookback:].transpose(0, 2, 1)
    ok = np.asarray(~(np.isnan(x).any(-1) | np.isnan(y).any(-1)))
    # nanmean's own sum / count, without its warning on a wholly missing input.
    seen = ~np.isnan(x)
    count = seen.sum(-1, keepdims=True)
    total = np.where(seen, x, 0.0).sum(-1, keepdims=True)
    m = total / np.maximum(count, 1)
    blind = count[..., 0] == 0  # [N, C]
    if blind.any():
        m = np.where(blind[..., None], _last_seen(values, starts)[..., None], m)
    x = np.where(seen, x, m)
    s = np.sqrt(x.var(-1, keepdims=True) + floor[:, None])
    xt = np.concatenate([(x - m) / s, np.ones((*x.shape[:-1], 1))], axis=-1)
    return xt, m, s, y, ok


def _grouped(a: np.ndarray, per_channel: bool) -> np.ndarray:
    """Window rows [N, C, D] grouped as the sums are: one group per channel [C, N, D], or every
    (window, channel) in one group [1, N C, D]; one matrix product per group sums them."""
    return a.transpose(1, 0, 2) if per_channel else a.reshape(1, -1, a.shape[-1])


def _last_seen(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Each channel's last observed value in the rows before each start [N, C] (0 if none)."""
    rows = np.where(np.isnan(values), -1, np.arange(len(values))[:, None])
    np.maximum.accumulate(rows, axis=0, out=rows)
    at = np.where((starts > 0)[:, None], rows[np.maximum(starts - 1, 0)], -1)
    picked = values[np.maximum(at, 0), np.arange(values.shape[1])]
    return np.where(at >= 0, picked, 0.0).astype(np.float64)


def score_linear_fit(
    data: SeriesData,
    bounds: tuple[int, int],
    fit: LinearFit,
    floor: np.ndarray,
    scales: list[np.ndarray],
) -> list[EvalResult]:
    """The closed-form linear map (and cycle) scored on every window of `bounds`."""
    lookback, horizon = fit.lookback, fit.horizon
    starts = window_starts(bounds, lookback, horizon)
    table = fit.table()
    sums = [ErrorSums(horizon, s) for s in scales]
    for series in range(data.n_series):
        phase = day_phases(data, series, len(table)) if table is not None else None
        for i in range(0, len(starts), 2000):
            batch = starts[i : i + 2000]
            xt, m, s, y, _ = _norm_windows(data.values[series], batch, lookback, horizon, floor)
            norm = apply_beta(xt, fit.beta)  # [N, C, H]
            if table is not None and phase is not None:
                norm = norm + table[phase[batch + lookback - 1]].transpose(0, 2, 1)
            pred = (s * norm + m).transpose(0, 2, 1)
            for e in sums:
                e.add(pred, y.transpose(0, 2, 1))
    return [e.result() for e in sums]


@dataclasses.dataclass(frozen=True)
class LinearFit:
    """The linear path in closed form: beta [L + 1, H] (W transposed, b as its last row; one per
    channel, [C, L + 1, H], with a finite channel pull), the ridge strength, the val MSE, the
    daily cycle Q [P, C] (None without one) and the pull of the channels' maps toward the shared
    one (inf: one shared map)."""

    beta: np.ndarray
    ridge: float
    val_mse: float
    cycle: np.ndarray | None = None
    channel_pull: float = math.inf

    @property
    def lookback(self) -> int:
        return int(self.beta.shape[-2]) - 1

    @property
    def horizon(self) -> int:
        return int(self.beta.shape[-1])

    def table(self) -> np.ndarray | None:
        """The cycle's part of the normalised forecast for each origin phase [P, H, C]."""
        if self.cycle is None:
            return None
        w = torch.from_numpy(np.ascontiguousarray(np.swapaxes(self.beta[..., :-1, :], -1, -2)))
        return cycle_table(torch.from_numpy(self.cycle), w).numpy()


def day_phases(data: SeriesData, series: int, period: int) -> np.ndarray:
    """Each row's phase of the day [T] from the calendar covariates (as the model reads it)."""
    if not has_time_of_day(data.covariate_names):
        raise ValueError("a daily cycle needs the calendar covariates (hour_sin, hour_cos first)")
    return cycle_phase(torch.from_numpy(data.covariates[series]), period).numpy()


def fit_linear(
    data: SeriesData,
    splits: Splits,
    lookback: int,
    horizon: int,
    cycle: int = 0,
    per_channel: bool = False,
    pulls: tuple[float, ...] = CHANNEL_PULLS,
) -> LinearFit:
    """The linear path alone with `--linear-norm window` (RLinear) in closed form: W [H, L] and
    b [H], shared by the channels, minimise the training MSE in the model's scaled units over every
    fully observed training window (a window's error is its std over the channel's scale times
    the normalised one: weighted least squares), the ridge strength chosen by validation MSE.

    cycle P > 0 adds the daily cycle Q [P, C] (forecast/cycle.py; CycleNet's, fitted jointly with
    W): the objective is then bilinear, so it is minimised alternately, W by least squares for a
    given Q and Q by least squares for a given W, each step exact, so the loss never rises. Both
    steps need only sums over the windows grouped by origin phase and channel, gathered in one
    pass over the training windows.

    per_channel: then each channel's own map, pulled toward the shared fit by each strength of
    `pulls` (least squares again, the shared fit's cycle kept); the best on val is kept, the
    shared fit when none beats it."""
    scale, floor = model_scale(data, splits.train)
    k, c = lookback + 1, len(data.channels)
    p = max(cycle, 1)
    gram, cross = np.zeros((k, k)), np.zeros((k, horizon))
    # With per_channel, the same sums per channel as well (their sum is gram and cross).
    per = (c if per_channel else 0, k)
    per_gram, per_cross = np.zeros((*per, k)), np.zeros((*per, horizon))
    # Per origin phase and channel: the weights, weighted inputs and weighted targets.
    nw, x1, y1 = np.zeros((p, c)), np.zeros((p, c, k)), np.zeros((p, c, horizon))
    starts = window_starts(splits.train, lookback, horizon)
    for series in range(data.n_series):
        phase = day_phases(data, series, cycle) if cycle else None
        for i in range(0, len(starts), 2000):
            batch = starts[i : i + 2000]
            xt, m, s, y, ok = _norm_windows(data.values[series], batch, lookback, horizon, floor)
            weight = np.where(ok, (s[..., 0] / scale) ** 2, 0.0)  # [N, C]
            yn = np.where(ok[..., None], (y - m) / s, 0.0)
            xw = xt * weight[..., None]
            gram += xw.reshape(-1, k).T @ xt.reshape(-1, k)
            cross += xw.reshape(-1, k).T @ yn.reshape(-1, horizon)
            if per_channel:
                xwg = _grouped(xw, True).transpose(0, 2, 1)  # [C, K, N]
                per_gram += xwg @ _grouped(xt, True)
                per_cross += xwg @ _grouped(yn, True)
            if phase is not None:
                at = phase[batch + lookback - 1]
                np.add.at(nw, at, weight)
                np.add.at(x1, at, xw)
                np.add.at(y1, at, yn * weight[..., None])
    if not gram[-1, -1] > 0:  # the bias column's entry: the windows' total weight
        raise ValueError(
            f"the closed-form fit needs a fully observed training window ({lookback} + "
            f"{horizon} rows with no missing value in a channel); there is none"
        )
    best: LinearFit | None = None
    for lam in RIDGE_LAMBDAS:
        reg = lam * np.trace(gram) / k * np.eye(k)
        # The bias is not shrunk.
        reg[-1, -1] = 0.0
        q = np.zeros((cycle, c)) if cycle else None
        try:
            for _ in range(CYCLE_ROUNDS if cycle else 1):
                g, r = (
                    (gram, cross) if q is None else _decycled(gram, cross, nw, x1, y1, q, horizon)
                )
                beta = np.linalg.solve(g + reg, r)
                if q is not None:
                    q = _fit_cycle(beta, nw, x1, y1)
        except np.linalg.LinAlgError:
            continue  # singular at this strength (e.g. constant windows); a stronger one follows
        fit = LinearFit(beta, lam, math.nan, q)
        (val,) = score_linear_fit(data, splits.val, fit, floor, [scale])
        if math.isfinite(val.mse) and (best is None or val.mse < best.val_mse):
            best = dataclasses.replace(fit, val_mse=val.mse)
    if best is None:
        raise ValueError(
            "the closed-form fit has no solution with a finite validation error at any ridge "
            f"strength {RIDGE_LAMBDAS}: too few observed windows, or none in the val split"
        )
    if not per_channel:
        return best
    shared = best
    g, r = per_gram, per_cross
    if shared.cycle is not None:
        g, r = _decycled(per_gram, per_cross, nw, x1, y1, shared.cycle, horizon)
    for mu in pulls:
        if math.isinf(mu):
            continue  # the shared fit, already scored
        try:
            beta = _pulled(g, r, shared.beta, mu)
        except np.linalg.LinAlgError:
            continue  # a channel with no observed window: its sums, and so its pull, are 0
        fit = LinearFit(beta, shared.ridge, math.nan, shared.cycle, mu)
        (val,) = score_linear_fit(data, splits.val, fit, floor, [scale])
        if math.isfinite(val.mse) and val.mse < best.val_mse:
            best = dataclasses.replace(fit, val_mse=val.mse)
    return best


def _pulled(gram: np.ndarray, cross: np.ndarray, shared: np.ndarray, mu: float) -> np.ndarray:
    """Each channel's map [C, K, H] from its sums [C, K, K] and [C, K, H], pulled toward the
    shared map [K, H] with strength mu relative to the channel's mean diagonal:
    argmin_b (b^T G b - 2 b^T R) + mu tr(G) / K |b - shared|^2."""
    k = gram.shape[-1]
    pull = mu * np.trace(gram, axis1=1, axis2=2) / k  # [C]
    eye = np.eye(k)
    return np.stack(
        [
            np.linalg.solve(gc + t * eye, rc + t * shared)
            for gc, rc, t in zip(gram, cross, pull, strict=True)
        ]
    )


# Alternating rounds of the cycle fit (W given Q, then Q given W).
CYCLE_ROUNDS = 8


def _cycle_index(period: int, lookback: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Phases of the window's L positions [P, L] and the H forecast steps [P, H] per origin."""
    origin = np.arange(period)[:, None]
    return (origin - lookback + 1 + np.arange(lookback)) % period, (
        origin + 1 + np.arange(horizon)
    ) % period


def _decycled(
    gram: np.ndarray,
    cross: np.ndarray,
    nw: np.ndarray,
    x1: np.ndarray,
    y1: np.ndarray,
    q: np.ndarray,
    horizon: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The normal equations of W on the windows with the cycle taken out (inputs x - Q_in, the
    bias column untouched; targets y - Q_out), from the sums: no second pass over the data.
    gram [K, K] and cross [K, H] summed over the channels, or [C, K, K] and [C, K, H] each."""
    period, lookback = q.shape[0], gram.shape[-1] - 1
    idx_in, idx_out = _cycle_index(period, lookback, horizon)
    q_in = np.concatenate([q[idx_in].transpose(0, 2, 1), np.zeros((*nw.shape, 1))], axis=-1)
    q_out = q[idx_out].transpose(0, 2, 1)  # [P, C, H]
    c = "c" if gram.ndim == 3 else ""
    xq = np.einsum(f"pck,pcj->{c}kj", x1, q_in)
    g = gram - xq - np.swapaxes(xq, -1, -2) + np.einsum(f"pc,pck,pcj->{c}kj", nw, q_in, q_in)
    r = (
        cross
        - np.einsum(f"pck,pch->{c}kh", x1, q_out)
        - np.einsum(f"pck,pch->{c}kh", q_in, y1)
        + np.einsum(f"pc,pck,pch->{c}kh", nw, q_in, q_out)
    )
    return g, r


def _fit_cycle(beta: np.ndarray, nw: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """The cycle Q [P, C] minimising the weighted loss for a given map: a window at origin phase p
    leaves the residual y - W x - b, which the cycle explains as A_p Q = Q_out(p) - W Q_in(p)."""
    period, c = nw.shape
    lookback, horizon = beta.shape[0] - 1, beta.shape[1]
    idx_in, idx_out = _cycle_index(period, lookback, horizon)
    w = beta[:-1].T  # [H, L]
    a = np.zeros((period, horizon, period))
    for p in range(period):
        a[p, np.arange(horizon), idx_out[p]] += 1.0
        np.add.at(a[p].T, idx_in[p], -w.T)
    resid = y1 - np.einsum("pck,kh->pch", x1, beta)  # summed weighted residuals [P, C, H]
    ata = a.transpose(0, 2, 1) @ a  # [P, P, P]
    rhs = np.einsum("phq,pch->cq", a, resid, optimize=True)
    q = np.zeros((period, c))
    for ch in range(c):
        g = np.einsum("p,pqr->qr", nw[:, ch], ata)
        q[:, ch] = np.linalg.solve(g + 1e-9 * np.trace(g) / period * np.eye(period), rhs[ch])
    return q


def model_scale(data: SeriesData, train: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The model's scaler (fit_scaler: population std of the observed train rows) [C] and the
    linear path's variance floor in data units [C]."""
    rows = data.values[:, train[0] : train[1]].astype(np.float64)
    scale = np.nanstd(rows.reshape(-1, rows.shape[-1]), axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    return scale, VAR_FLOOR * scale**2


def save_fit(fit: LinearFit, path: str | os.PathLike[str]) -> None:
    """The fit as a safetensors file: beta, the ridge strength and the cycle (val MSE not kept)."""
    tensors = {
        "beta": torch.from_numpy(fit.beta),
        "ridge": torch.tensor(fit.ridge, dtype=torch.float64),
        "channel_pull": torch.tensor(fit.channel_pull, dtype=torch.float64),
    }
    if fit.cycle is not None:
        tensors["cycle"] = torch.from_numpy(fit.cycle)
    save_file(tensors, str(path))


def load_fit(path: str | os.PathLike[str]) -> LinearFit:
    """A fit saved by `save_fit` (its val MSE is NaN: not kept)."""
    tensors = load_file(str(path))
    cycle = tensors["cycle"].numpy() if "cycle" in tensors else None
    pull = float(tensors["channel_pull"]) if "channel_pull" in tensors else math.inf
    return LinearFit(tensors["beta"].numpy(), float(tensors["ridge"]), math.nan, cycle, pull)


def set_linear_path(model: Forecaster, fit: LinearFit) -> None:
    """Set the model's linear path (and its cycle) to the fit; with a zero head the model then
    forecasts what the fit does. A fit per channel sets the shared map to the channels' mean and
    each channel's departure to the rest (any split gives the same forecast; this one is the
    smallest departure); a shared fit into a model with a map per channel sets the departures
    to 0."""
    linear = model.linear
    if linear is None or not linear.window_norm or linear.length != fit.lookback:
        raise ValueError(
            "the closed-form start needs the linear path with linear_norm 'window' and "
            f"linear_lookback {fit.lookback}"
        )
    if fit.beta.ndim == 3 and linear.delta_weight is None:
        raise ValueError("the fit has a map per channel: the model needs linear_per_channel")
    shape = None if linear.cycle is None else tuple(linear.cycle.shape)
    if shape != (None if fit.cycle is None else fit.cycle.shape):
        raise ValueError("the fit's daily cycle does not match the model's cycle_length")
    weight = linear.proj.weight
    shared = fit.beta if fit.beta.ndim == 2 else fit.beta.mean(0)
    with torch.no_grad():
        weight.copy_(torch.from_numpy(shared[:-1].T).to(weight))
        linear.proj.bias.copy_(torch.from_numpy(shared[-1]).to(weight))
        if linear.delta_weight is not None and linear.delta_bias is not None:
            delta = np.zeros_like(shared) if fit.beta.ndim == 2 else fit.beta - shared
            dw = np.swapaxes(delta[..., :-1, :], -1, -2)  # [H, L] or [C, H, L]
            linear.delta_weight.copy_(torch.from_numpy(np.ascontiguousarray(dw)).to(weight))
            linear.delta_bias.copy_(torch.from_numpy(delta[..., -1, :]).to(weight))
        if linear.cycle is not None and fit.cycle is not None:
            linear.cycle.copy_(torch.from_numpy(fit.cycle).to(weight))
