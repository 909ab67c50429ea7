"""The linear path refitted online: recursive least squares over every window seen so far.

The closed-form fit (pipelines/linear_fit.py) depends on the training windows only through two
sums, G = sum w x x^T [K, K] and R = sum w x y^T [K, H] (K = L + 1, the cycle taken out). They are
a constant-size state that one more window updates, so a forecaster that carries its state
through all data before an origin (full-history mode) can keep fitting as targets arrive:

    at origin o the map is the ridge solution of every window whose last target row e <= o,
    each weighted by gamma^(o - e), gamma = 2^(-1 / half_life).

No value after the origin enters: a window joins the sums only once its whole target is observed.
How fast to forget is not known ahead: the data may not drift at all, or faster than any one
half-life assumes. So the online path is a hedge (`Hedge`, rule "mean"): the mean of the maps of
the frozen training fit and of the online fit under every half-life in HALF_LIVES (rows; inf = no
forgetting). A forecast is linear in its map, so that is the mean of their forecasts: forecast
combination with equal weights, which weights chosen on one validation split often fail to beat
(the "forecast combination puzzle"). Rule "val" keeps the single half-life that validates best
instead (docs/RESULTS.md, ninth to twelfth sections, compares the two).

The daily cycle Q stays at the training fit: with Q fixed the objective in W is least squares
again, and Q's own sums would double the state for a profile the training year already pins
down. The map is solved again every `every` rows (a day, with a cycle), and the origins in
between use the last solution, which only saw windows ending by its own origin.

A fit with a map per channel (`fit_linear(per_channel=True)`) keeps the sums per channel: at each
solve the shared map is solved from their total and each channel's map pulled toward it with the
fit's channel pull, as the training fit was.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import numpy as np
from tqdm import tqdm

from forecast.model import Forecaster
from pipelines.data import SeriesData
from pipelines.linear_fit import (
    LinearFit,
    _cycle_index,
    _grouped,
    _norm_windows,
    _pulled,
    apply_beta,
    day_phases,
    fit_linear,
    model_scale,
)
from pipelines.protocol import ErrorSums, EvalResult, Splits, window_starts

__all__ = [
    "HALF_LIVES",
    "ONLINE_RULES",
    "BackbonePart",
    "FitWindows",
    "Hedge",
    "OnlineChoice",
    "OnlineMaps",
    "OnlinePath",
    "OnlineSums",
    "add_windows",
    "add_windows_many",
    "linear_part",
    "online_beta",
    "online_candidates",
    "online_choice",
    "online_choices",
    "online_forecasts",
    "online_maps",
    "online_path",
    "online_span",
    "pick_hedge",
    "score_online_fit",
    "score_online_fits",
    "score_online_parts",
    "split_origins",
]

# Half-lives hedged over (or tried), as fractions of the training split's rows (inf: every window
# counts alike).
HALF_LIVES = (math.inf, 1.0, 0.5, 0.25, 0.125, 0.0625)
# "mean": the hedge over the frozen fit and every half-life; "val": the half-life best on val.
ONLINE_RULES = ("mean", "val")


@dataclasses.dataclass(frozen=True)
class Hedge:
    """The maps the online path averages: the online fit under each half-life (rows; inf: no
    forgetting) and, with `frozen`, the training fit itself. One half-life, not frozen: that
    online fit alone."""

    half_lives: tuple[float, ...]
    frozen: bool = False

    def __post_init__(self) -> None:
        if not self.half_lives and not self.frozen:
            raise ValueError("a hedge needs at least one half-life or the frozen fit")
        for h in self.half_lives:
            _gamma(h)  # a clear error for a bad half-life

    def describe(self) -> str:
        """E.g. "mean of frozen, inf, 8640" or "8640" (rows)."""
        parts = (["frozen"] if self.frozen else []) + [f"{h:g}" for h in self.half_lives]
        return parts[0] if len(parts) == 1 else "mean of " + ", ".join(parts)

    def mean(self, fit: LinearFit, betas: dict[float, np.ndarray]) -> np.ndarray:
        """The hedge's map from each half-life's map (and the fit's)."""
        maps = [betas[h] for h in self.half_lives] + ([fit.beta] if self.frozen else [])
        return maps[0] if len(maps) == 1 else np.mean(np.stack(maps), axis=0)


@dataclasses.dataclass(frozen=True)
class OnlineSums:
    """The online fit's state: G [K, K] and R [K, H] weighted as of row `origin` (per channel,
    [C, K, K] and [C, K, H], for a fit with a map per channel)."""

    gram: np.ndarray
    cross: np.ndarray
    origin: int


class FitWindows:
    """Reads the decycled, normalised windows of a series set for one fit (the cycle fixed)."""

    def __init__(self, data: SeriesData, fit: LinearFit, scale: np.ndarray, floor: np.ndarray):
        self.data, self.fit, self.scale, self.floor = data, fit, scale, floor
        self.lookback, self.horizon = fit.lookback, fit.horizon
        self.phases: list[np.ndarray] | None = None
        if fit.cycle is not None:
            period, c = fit.cycle.shape
            idx_in, idx_out = _cycle_index(period, self.lookback, self.horizon)
            q_in = fit.cycle[idx_in].transpose(0, 2, 1)
            self.q_in = np.concatenate([q_in, np.zeros((period, c, 1))], axis=-1)  # [P, C, K]
            self.q_out = fit.cycle[idx_out].transpose(0, 2, 1)  # [P, C, H]
            self.phases = [day_phases(data, s, period) for s in range(data.n_series)]

    def read(
        self, series: int, starts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """-> inputs [N, C, K], normalised targets [N, C, H] (0 where not observed), both with
        the cycle out, the windows' mean and std [N, C, 1], raw targets [N, C, H], weight [N, C]."""
        values = self.data.values[series]
        xt, m, s, y, ok = _norm_windows(values, starts, self.lookback, self.horizon, self.floor)
        yn = (y - m) / s
        if self.phases is not None:
            at = self.phases[series][starts + self.lookback - 1]
            xt, yn = xt - self.q_in[at], yn - self.q_out[at]
        weight = np.where(ok, (s[..., 0] / self.scale) ** 2, 0.0)
        return xt, np.where(ok[..., None], yn, 0.0), m, s, y, weight

    def forecast(self, series: int, starts: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """Forecasts [N, H, C] in data units of the windows at `starts` under the map beta."""
        return self.forecast_many(series, starts, [beta])[0]

    def forecast_many(
        self, series: int, starts: np.ndarray, betas: list[np.ndarray]
    ) -> list[np.ndarray]:
        """The same under each map, the windows read once (reading is most of the cost)."""
        xt, _, m, s, _, _ = self.read(series, starts)
        cycle = 0.0
        if self.phases is not None:
            cycle = self.q_out[self.phases[series][starts + self.lookback - 1]]
        return [(s * (apply_beta(xt, beta) + cycle) + m).transpose(0, 2, 1) for beta in betas]


def add_windows(
    state: OnlineSums, windows: FitWindows, origin: int, gamma: float, limit: int
) -> OnlineSums:
    """The state moved to row `origin`: old sums decayed by gamma^(origin - state.origin), plus
    every window whose last target row e is in (state.origin, origin] (starts below `limit`)."""
    return add_windows_many([state], windows, origin, [gamma], limit)[0]


def add_windows_many(
    states: list[OnlineSums],
    windows: FitWindows,
    origin: int,
    gammas: list[float],
    limit: int,
) -> list[OnlineSums]:
    """`add_windows` for states of one origin under several forgetting factors, the new windows
    read once."""
    lookback, horizon = windows.lookback, windows.horizon
    before = states[0].origin
    if any(st.origin != before for st in states):
        raise ValueError("add_windows_many moves states of one origin")
    per_channel = states[0].gram.ndim == 3
    grams = [st.gram * g ** (origin - before) for st, g in zip(states, gammas, strict=True)]
    crosses = [st.cross * g ** (origin - before) for st, g in zip(states, gammas, strict=True)]
    first = max(before - lookback - horizon + 2, 0)
    starts = np.arange(first, min(origin - lookback - horizon + 2, limit))
    for i in range(0, len(starts), 2000):
        batch = starts[i : i + 2000]
        age = origin - (batch + lookback + horizon - 1)
        for series in range(windows.data.n_series):
            xt, yn, _, _, _, weight = windows.read(series, batch)  # weight 0: left out
            xg, yg = _grouped(xt, per_channel), _grouped(yn, per_channel)
            for j, g in enumerate(gammas):
                wg = _grouped((weight * g ** age[:, None])[..., None], per_channel)
                xw = (xg * wg).transpose(0, 2, 1)
                grams[j] = grams[j] + (xw @ xg).reshape(grams[j].shape)
                crosses[j] = crosses[j] + (xw @ yg).reshape(crosses[j].shape)
    return [OnlineSums(g, c, origin) for g, c in zip(grams, crosses, strict=True)]


def online_beta(state: OnlineSums, ridge: float, channel_pull: float = math.inf) -> np.ndarray:
    """The map [K, H] of the state, ridge relative to G's mean diagonal, the bias not shrunk.
    lstsq where the sums are singular (a constant stretch): the least-norm solution. Sums per
    channel give a map per channel [C, K, H], pulled toward the shared one by channel_pull."""
    per_channel = state.gram.ndim == 3
    gram = state.gram.sum(0) if per_channel else state.gram
    cross = state.cross.sum(0) if per_channel else state.cross
    k = gram.shape[0]
    reg = ridge * np.trace(gram) / k * np.eye(k)
    reg[-1, -1] = 0.0
    try:
        shared = np.linalg.solve(gram + reg, cross)
    except np.linalg.LinAlgError:
        shared = np.linalg.lstsq(gram + reg, cross, rcond=None)[0]
    if not per_channel:
        return shared
    try:
        return _pulled(state.gram, state.cross, shared, channel_pull)
    except np.linalg.LinAlgError:
        # A channel not yet seen: its map is the shared one.
        return np.broadcast_to(shared, state.cross.shape).copy()


@dataclasses.dataclass(frozen=True)
class OnlineMaps:
    """The online fit's maps: betas[i] [K, H] serves the origins first + i * every onward (up to
    the next), solved from the windows whose targets ended by first + i * every."""

    first: int
    every: int
    betas: list[np.ndarray]

    def blocks(self, last: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(origins [N], beta) for every origin from `first` to `last`."""
        for i, beta in enumerate(self.betas):
            lo = self.first + i * self.every
            if lo > last:
                return
            yield np.arange(lo, min(lo + self.every, last + 1)), beta

    def beta_of(self, origins: np.ndarray) -> np.ndarray:
        """Each origin's block index [N] (origins inside the maps' span)."""
        index = (origins - self.first) // self.every
        if len(origins) and (index.min() < 0 or index.max() >= len(self.betas)):
            raise ValueError("origins outside the online maps' span")
        return index


def _gamma(half_life: float) -> float:
    if not half_life > 0:
        raise ValueError(f"half_life must be > 0 (rows; inf: no forgetting), got {half_life}")
    return 2.0 ** (-1.0 / half_life) if math.isfinite(half_life) else 1.0


def _every(fit: LinearFit, every: int) -> int:
    """Rows between solves: given, else the cycle's length (one day), else 1."""
    every = every or (1 if fit.cycle is None else fit.cycle.shape[0])
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    return every


def _online_blocks(
    data: SeriesData,
    splits: Splits,
    fit: LinearFit,
    half_lives: list[float],
    origins: tuple[int, int],
    every: int,
) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """The online fit under each half-life in lockstep: (the block's origins [N], each
    half-life's map [K, H]) per block of `every` origins from origins[0] to origins[1]."""
    scale, floor = model_scale(data, splits.train)
    windows = FitWindows(data, fit, scale, floor)
    gammas = [_gamma(h) for h in half_lives]
    every = _every(fit, every)
    k, horizon = windows.lookback + 1, windows.horizon
    limit = data.n_steps - windows.lookback - horizon + 1  # one past the last window's start
    first, last = origins
    per = (fit.beta.shape[0],) if fit.beta.ndim == 3 else ()
    empty = OnlineSums(np.zeros((*per, k, k)), np.zeros((*per, k, horizon)), -1)
    states = add_windows_many([empty] * len(gammas), windows, first, gammas, limit)
    for origin in range(first, last + 1, every):
        if origin > first:
            states = add_windows_many(states, windows, origin, gammas, limit)
        at = np.arange(origin, min(origin + every, last + 1))
        yield at, [online_beta(st, fit.ridge, fit.channel_pull) for st in states]


def _hedged_blocks(
    data: SeriesData,
    splits: Splits,
    fit: LinearFit,
    hedges: list[Hedge],
    origins: tuple[int, int],
    every: int,
) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """`_online_blocks` for every half-life the hedges name (each solved once), yielding each
    hedge's map per block."""
    half_lives = list(dict.fromkeys(h for hedge in hedges for h in hedge.half_lives))
    if not half_lives:  # frozen only: the training fit at every origin
        every = _every(fit, every)
        for origin in range(origins[0], origins[1] + 1, every):
            at = np.arange(origin, min(origin + every, origins[1] + 1))
            yield at, [fit.beta for _ in hedges]
        return
    for at, betas in _online_blocks(data, splits, fit, half_lives, origins, every):
        by = dict(zip(half_lives, betas, strict=True))
        yield at, [hedge.mean(fit, by) for hedge in hedges]


def online_maps(
    data: SeriesData,
    splits: Splits,
    fit: LinearFit,
    hedge: Hedge,
    origins: tuple[int, int],
    every: int = 0,
) -> OnlineMaps:
    """The online path's maps from the windows ending by origins[0] to origins[1], solved every
    `every` rows (0: the cycle's length, one day, or 1 without a cycle): the hedge's mean of the
    online fit under each of its half-lives (and the frozen fit)."""
    blocks = _hedged_blocks(data, splits, fit, [hedge], origins, every)
    return OnlineMaps(origins[0], _every(fit, every), [betas[0] for _, betas in blocks])


def online_forecasts(
    data: SeriesData,
    splits: Splits,
    fit: LinearFit,
    hedge: Hedge,
    origins: tuple[int, int],
    every: int = 0,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The online path's forecasts at every origin in [origins[0], origins[1]] (`online_maps`):
    (series, window starts [N], forecasts [N, H, C]) per block of origins and series."""
    maps = online_maps(data, splits, fit, hedge, origins, every)
    scale, floor = model_scale(data, splits.train)
    windows = FitWindows(data, fit, scale, floor)
    for at, beta in maps.blocks(origins[1]):
        starts = at - windows.lookback + 1
        for series in range(data.n_series):
            yield series, starts, windows.forecast(series, starts, beta)


def linear_part(model: Forecaster, ridge: float = 0.0) -> LinearFit:
    """A model's own linear path (and cycle) as a fit: beta [L + 1, H] in float64 ([C, L + 1, H]
    with a map per channel; its channel pull 0: the model's maps are what they are)."""
    linear = model.linear
    if linear is None or not linear.window_norm:
        raise ValueError("the online linear path needs a model with linear_norm 'window'")
    weight = linear.weight().detach().double().cpu().numpy()
    bias = linear.bias().detach().double().cpu().numpy()
    cycle = None if linear.cycle is None else linear.cycle.detach().double().cpu().numpy()
    beta = np.concatenate([np.swapaxes(weight, -1, -2), bias[..., None, :]], axis=-2)
    return LinearFit(beta, ridge, math.nan, cycle, 0.0 if beta.ndim == 3 else math.inf)


class BackbonePart:
    """A model's forecast less its own linear path's part (the members' averaged): what the
    online path's swap keeps. members: the model, or the members of a mean ensemble."""

    def __init__(self, members: list[Forecaster], data: SeriesData, splits: Splits):
        scale, floor = model_scale(data, splits.train)
        self.own = [FitWindows(data, linear_part(m), scale, floor) for m in members]
        self.lookback = self.own[0].lookback
        if any(w.lookback != self.lookback for w in self.own):
            raise ValueError("the members' linear paths differ in length")

    def __call__(self, series: int, origins: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """pred [N, h, C] at `origins` [N] (h <= the linear path's horizon) -> its part left."""
        h = pred.shape[1]
        starts = origins - self.lookback + 1
        out = np.array(pred, dtype=np.float64)
        for own in self.own:
            out -= own.forecast(series, starts, own.fit.beta)[:, :h] / len(self.own)
        return out


class OnlinePath:
    """A model's forecast with its linear path's part swapped for the online fit's:
    pred - (the members' own linear path, averaged) + (the online fit), per origin. The
    backbone's part is untouched. members: the model, or the members of a mean ensemble."""

    def __init__(
        self,
        members: list[Forecaster],
        fit: LinearFit,
        maps: OnlineMaps,
        data: SeriesData,
        splits: Splits,
    ):
        scale, floor = model_scale(data, splits.train)
        self.online = FitWindows(data, fit, scale, floor)
        self.backbone = BackbonePart(members, data, splits)
        if self.backbone.lookback != self.online.lookback:
            raise ValueError("the online fit and the model's linear path differ in length")
        self.maps = maps

    def __call__(self, series: int, origins: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """pred [N, h, C] at `origins` [N] (h <= the fit's horizon) -> the swapped forecast."""
        h = pred.shape[1]
        starts = origins - self.online.lookback + 1
        index = self.maps.beta_of(origins)
        out = self.backbone(series, origins, pred)
        for block in np.unique(index):
            rows = index == block
            beta = self.maps.betas[block]
            out[rows] += self.online.forecast(series, starts[rows], beta)[:, :h]
        return out


def score_online_fit(
    data: SeriesData,
    splits: Splits,
    fit: LinearFit,
    hedge: Hedge,
    scales: list[np.ndarray],
    every: int = 0,
) -> tuple[list[EvalResult], list[EvalResult]]:
    """Every val and test window forecast by the online path (the hedge's maps) started from the
    training windows and carried through val into test: (val results, test results), one per
    scale [C]."""
    return score_online_fits(data, splits, fit, [hedge], scales, every)[0]


def split_origins(splits: Splits, horizon: int) -> dict[str, tuple[int, int]]:
    """The first and last origin (the row before the first target) of the val and test
    windows."""
    return {
        name: (bounds[0] - 1, bounds[1] - horizon - 1)
        for name, bounds in (("val", splits.val), ("test", splits.test))
    }


def online_span(splits: Splits, fit: LinearFit, every: int = 0) -> range:
    """The solve origins of `score_online_fits`: from the first val window's origin to the last
    test window's, every `every` rows."""
    origins = split_origins(splits, fit.horizon)
    return range(origins["val"][0], origins["test"][1] + 1, _every(fit, every))


def score_online_fits(
    data: SeriesData,
    splits: Splits,
    fit: LinearFit,
    hedges: list[Hedge],
    scales: list[np.ndarray],
    every: int = 0,
    tick: Callable[[], object] | None = None,
) -> list[tuple[list[EvalResult], list[EvalResult]]]:
    """`score_online_fit` of each hedge, in one pass over the data (each half-life solved once,
    the windows read once for all): one (val results, test results) per hedge. tick: called
    after each block."""
    return score_online_parts(data, splits, fit, hedges, scales, [None], every, tick)[0]


# (series, origins [N]) -> [N, H, C]: a forecast part the online path's is added to.
Part = Callable[[int, np.ndarray], np.ndarray]


def score_online_parts(
    data: SeriesData,
    splits: Splits,
    fit: LinearFit,
    hedges: list[Hedge],
    scales: list[np.ndarray],
    parts: list[Part | None],
    every: int = 0,
    tick: Callable[[], object] | None = None,
) -> list[list[tuple[list[EvalResult], list[EvalResult]]]]:
    """`score_online_fits` with each hedge's forecast added to each part: None, the fit alone;
    a model's backbone part (`BackbonePart` of its forecast), the model with its linear path
    swapped for each hedge's. One pass for all: [part][hedge] -> (val results, test results)."""
    horizon, lookback = fit.horizon, fit.lookback
    ranges = split_origins(splits, horizon)
    sums = [
        [{name: [ErrorSums(horizon, s) for s in scales] for name in ranges} for _ in hedges]
        for _ in parts
    ]
    scale, floor = model_scale(data, splits.train)
    windows = FitWindows(data, fit, scale, floor)
    span = (ranges["val"][0], ranges["test"][1])
    for origin, betas in _hedged_blocks(data, splits, fit, hedges, span, every):
        starts = origin - lookback + 1
        for series in range(data.n_series):
            preds = windows.forecast_many(series, starts, betas)
            for part, by_hedge in zip(parts, sums, strict=True):
                base = 0.0 if part is None else part(series, origin)
                for name, (lo, hi) in ranges.items():
                    keep = (origin >= lo) & (origin <= hi)
                    if keep.any():
                        truth = data.values[series, origin[keep][:, None] + 1 + np.arange(horizon)]
                        for pred, by in zip(preds, by_hedge, strict=True):
                            for e in by[name]:
                                e.add((base + pred)[keep], truth)
        if tick is not None:
            tick()
    return [
        [([e.result() for e in by["val"]], [e.result() for e in by["test"]]) for by in by_hedge]
        for by_hedge in sums
    ]


@dataclasses.dataclass(frozen=True)
class OnlineChoice:
    """The hedge the rule gave, its val and test results (one per scale), and of every hedge
    scored (the frozen fit, each half-life alone, and their mean) the val MSE (model scale) and
    the test results (one per scale)."""

    hedge: Hedge
    val: list[EvalResult]
    test: list[EvalResult]
    tried: dict[str, float]
    tried_test: dict[str, list[EvalResult]]


def online_choice(
    data: SeriesData,
    splits: Splits,
    fit: LinearFit,
    scales: list[np.ndarray],
    rule: str = "mean",
    every: int = 0,
    fractions: tuple[float, ...] = HALF_LIVES,
    tick: Callable[[], object] | None = None,
) -> OnlineChoice:
    """The online path under `rule` (ONLINE_RULES), half-lives as fractions of the training rows.
    "mean": the hedge over the frozen fit and every half-life; "val": the half-life alone with
    the lowest val MSE under the first scale (ties keep the earlier: no forgetting first). tick:
    called after each block of `online_span` (a progress bar)."""
    return online_choices(data, splits, fit, scales, (rule,), every, fractions, tick)[rule]


def online_choices(
    data: SeriesData,
    splits: Splits,
    fit: LinearFit,
    scales: list[np.ndarray],
    rules: tuple[str, ...] = ONLINE_RULES,
    every: int = 0,
    fractions: tuple[float, ...] = HALF_LIVES,
    tick: Callable[[], object] | None = None,
) -> dict[str, OnlineChoice]:
    """`online_choice` under each rule, every candidate scored in one pass, so each choice's
    `tried` holds them all: the frozen fit, each half-life alone, and the mean."""
    for rule in rules:
        _check_rule(rule)  # before the pass, not after it
    hedges = online_candidates(splits, fractions)
    scored = score_online_fits(data, splits, fit, hedges, scales, every, tick)
    val_mse = [val[0].mse for val, _ in scored]
    tried = {h.describe(): v for h, v in zip(hedges, val_mse, strict=True)}
    tests = {h.describe(): test for h, (_, test) in zip(hedges, scored, strict=True)}
    at = {rule: pick_hedge(rule, hedges, val_mse) for rule in rules}
    return {rule: OnlineChoice(hedges[at[rule]], *scored[at[rule]], tried, tests) for rule in rules}


def online_candidates(splits: Splits, fractions: tuple[float, ...] = HALF_LIVES) -> list[Hedge]:
    """What the rules choose among: the frozen fit, each half-life alone (fractions of the
    training rows), and the mean of them all."""
    if not fractions:
        raise ValueError("the online fit needs at least one half-life")
    n_train = splits.train[1] - splits.train[0]
    half_lives = tuple(frac * n_train for frac in fractions)
    return [Hedge((), frozen=True), *(Hedge((h,)) for h in half_lives), Hedge(half_lives, True)]


def pick_hedge(rule: str, candidates: list[Hedge], val_mse: list[float]) -> int:
    """The index of the candidate (`online_candidates`) the rule keeps: "mean", the mean of them
    all; "val", the half-life alone with the lowest val MSE (ties keep the earlier)."""
    if _check_rule(rule) == "mean":
        return len(candidates) - 1
    return min(range(1, len(candidates) - 1), key=lambda i: val_mse[i])


def _check_rule(rule: str) -> str:
    if rule not in ONLINE_RULES:
        raise ValueError(f"unknown online rule {rule!r}; known: {', '.join(ONLINE_RULES)}")
    return rule


def online_path(
    model: Forecaster,
    data: SeriesData,
    splits: Splits,
    split: str,
    lookback: int,
    horizon: int,
    progress: bool = False,
    rule: str = "mean",
) -> tuple[OnlinePath, Hedge]:
    """The online linear path for scoring `model` on `split` in full history (`statecast
    evaluate --full-history --online`): the closed-form fit of the model's linear path (its
    length, horizon and cycle) on the training rows, the hedge `rule` gives (`online_choice`),
    and its maps over the split's origins. -> (the swap, the hedge).
    progress: a tqdm bar on stderr over the fit and the half-lives (minutes on long data)."""
    linear = model.linear
    if linear is None or not linear.window_norm:
        raise ValueError("--online needs a model with the linear path and linear_norm 'window'")
    if split == "train":
        raise ValueError("--online starts from the training windows: score val or test")
    if horizon > model.config.horizon:
        raise ValueError(f"horizon {horizon} exceeds the model's horizon {model.config.horizon}")
    with tqdm(desc="online fit", unit="step", disable=not progress) as bar:
        cfg = model.config
        fit = fit_linear(
            data, splits, linear.length, cfg.horizon, cfg.cycle_length, cfg.linear_per_channel
        )
        bar.total = 1 + len(online_span(splits, fit))
        bar.update()
        scale, _ = model_scale(data, splits.train)
        choice = online_choice(data, splits, fit, [scale], rule, tick=bar.update)
    starts = window_starts(splits.get(split), lookback, horizon)
    origins = (int(starts[0]) + lookback - 1, int(starts[-1]) + lookback - 1)
    maps = online_maps(data, splits, fit, choice.hedge, origins)
    return OnlinePath([model], fit, maps, data, splits), choice.hedge
