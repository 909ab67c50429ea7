"""The streaming update, as a pure function of (series state, observation).

    update(model, state | None, obs) -> (state, Forecast | Rejection)

`update_batch` is the same function over many series at once: it groups the model work into one
`model.step` per round so the consumer pays one batched step per poll, not one per record. A test
checks that it equals mapping `update` over the records. Nothing here touches Kafka, clocks or
globals: a series' state depends only on its observations, which is what makes replay after a
crash reproduce it.

Per-series rules:
- An observation at or before the series' last timestamp, or off its frequency grid, is rejected
  and leaves the state untouched.
- A gap of k missing steps is stepped k times with every channel masked (NaN), at the series'
  frequency, before the observation; a gap longer than `max_gap_steps` restarts the series from the
  initial state (stepping a year of nothing is neither useful nor bounded).
- A new series starts from the model's initial state. Forecasts are flagged `warming` until the
  series has taken `warmup` steps.
- The last `retain` observations are kept, so a replacement model with an incompatible state can
  be warmed by replaying them (serving/hot_swap.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import torch

from forecast.model import Forecaster
from forecast.state import ModelState
from pipelines.calendar import calendar_features
from serving.observation import Observation, ObservationSpec, Rejection

__all__ = ["Forecast", "SeriesState", "StreamModel", "update", "update_batch"]


@dataclass(frozen=True)
class StreamModel:
    """A loaded forecaster plus what the stream needs to feed it."""

    model: Forecaster
    label: str  # shown in every forecast message: registered name/version or run id
    spec: ObservationSpec
    step_ns: int  # the series' frequency
    calendar: bool
    warmup: int
    retain: int
    max_gap_steps: int = 1000
    # 0: the recurrent step. N > 0: the windowed baseline of serving/window_baseline.py (each
    # event re-encodes the series' last N observations), for bench/stream.py's comparison.
    window: int = 0

    @staticmethod
    def from_artifact(
        model: Forecaster,
        extra: dict[str, object],
        label: str,
        *,
        warmup: int | None = None,
        retain: int | None = None,
        max_gap_steps: int = 1000,
        max_bytes: int = 65536,
        window: int = 0,
    ) -> StreamModel:
        lookback = int(extra.get("lookback", 96))  # type: ignore[call-overload]
        frequency = str(extra.get("frequency", "h"))
        step_ns = int(pd.Timedelta(pd.tseries.frequencies.to_offset(frequency)).value)
        spec = ObservationSpec(
            channels=tuple(str(c) for c in extra["channels"]),  # type: ignore[attr-defined]
            static_covariates=tuple(str(c) for c in extra.get("static_covariates", [])),  # type: ignore[attr-defined]
            max_bytes=max_bytes,
        )
        return StreamModel(
            model=model.eval(),
            label=label,
            spec=spec,
            step_ns=step_ns,
            calendar=bool(extra.get("calendar", False)),
            warmup=lookback if warmup is None else warmup,
            retain=window or (lookback if retain is None else retain),
            max_gap_steps=max_gap_steps,
            window=window,
        )

    # The hidden state of one series is kept as one flat vector: cheap to stack into a
    # batch and to copy out again (a view would keep the whole batch's tensor alive).
    @cached_property
    def template(self) -> ModelState:
        """The initial state of one series (shapes and dtypes of every state tensor)."""
        return self.model.init_state(1, device="cpu")

    def initial_flat(self) -> torch.Tensor:
        return self._initial_flat

    @cached_property
    def _initial_flat(self) -> torch.Tensor:
        return flatten(self.template)[0]

    def covariates(self, ts: np.ndarray, static: np.ndarray) -> torch.Tensor | None:
        """[B] ns timestamps, [B, S] static -> [B, n_covariates] or None."""
        parts = []
        if self.calendar:
            parts.append(calendar_features(ts.astype("datetime64[ns]")))
        if static.shape[-1]:
            parts.append(static.astype(np.float32))
        if not parts:
            return None
        return torch.from_numpy(np.concatenate(parts, axis=-1))


def flatten(state: ModelState) -> torch.Tensor:
    """ModelState with B series -> [B, F] (the state's dtype: float32, or float64 for a model
    saved in double precision)."""
    return torch.cat([t.reshape(t.shape[0], -1) for _, t in state.named_tensors()], 1)


def unflatten(flat: torch.Tensor, template: ModelState) -> ModelState:
    """[B, F] -> ModelState shaped like `template` (one series) but with B series."""
    out, at = [], 0
    for layer in template.layers:
        fields = []
        for t in layer:
            n = t[0].numel()
            fields.append(flat[:, at : at + n].reshape(flat.shape[0], *t.shape[1:]).to(t.dtype))
            at += n
        out.append(layer._make(fields))
    if at != flat.shape[1]:
        raise ValueError(f"state vector has {flat.shape[1]} values; the model's state has {at}")
    return ModelState(template.kind, tuple(out))


@dataclass(frozen=True)
class SeriesState:
    hidden: torch.Tensor  # [F], the model state flattened
    last_ts: int  # ns
    steps: int  # model steps taken (observations and gap steps)
    recent_ts: np.ndarray  # [R] int64 ns of the last R accepted observations (oldest first)
    recent_values: np.ndarray  # [R, C] float32
    recent_static: np.ndarray  # [R, S] float32


@dataclass(frozen=True)
class Forecast:
    series: str
    ts: int
    warming: bool
    y: np.ndarray  # [H, C, Q] in the data's units


def update(
    m: StreamModel, state: SeriesState | None, obs: Observation
) -> tuple[SeriesState | None, Forecast | Rejection]:
    """One observation of one series. Rejections leave the state as it was."""
    [(new, out)] = update_batch(m, [state], [obs])
    return new, out


def _plan(m: StreamModel, state: SeriesState | None, obs: Observation) -> int | Rejection | None:
    """Gap steps to take before `obs`; None = start afresh; a Rejection = leave the state alone."""
    if state is None:
        return None
    delta = obs.ts - state.last_ts
    if delta <= 0:
        return Rejection(
            "out_of_order",
            f"ts {_iso(obs.ts)} is not after the series' last observation {_iso(state.last_ts)}",
        )
    if delta % m.step_ns:
        return Rejection(
            "off_grid",
            f"ts {_iso(obs.ts)} is not a whole number of steps ({pd.Timedelta(m.step_ns)}) "
            f"after {_iso(state.last_ts)}",
        )
    gap = delta // m.step_ns - 1
    return None if gap > m.max_gap_steps else gap


def _iso(ns: int) -> str:
    return str(np.datetime64(ns, "ns").astype("datetime64[s]"))


@torch.no_grad()
def update_batch(
    m: StreamModel, states: Sequence[SeriesState | None], observations: Sequence[Observation]
) -> list[tuple[SeriesState | None, Forecast | Rejection]]:
    """`update` over records of *distinct* series, with the model work batched.

    Each series runs its gap steps then its observation; round r steps every series that still
    has an r-th input, so a batch costs max(gap)+1 batched steps.
    """
    if len(states) != len(observations):
        raise ValueError("update_batch: one state per observation")
    if len({o.series for o in observations}) != len(observations):
        raise ValueError("update_batch: observations must be of distinct series")
    results: list[tuple[SeriesState | None, Forecast | Rejection] | None] = [None] * len(states)
    live: list[int] = []
    gaps: list[int] = []
    starts: list[SeriesState | None] = []
    for i, (state, obs) in enumerate(zip(states, observations, strict=True)):
        plan = _plan(m, state, obs)
        if isinstance(plan, Rejection):
            results[i] = (state, plan)
            continue
        live.append(i)
        gaps.append(0 if plan is None else plan)
        starts.append(None if plan is None else state)
    if live:
        accepted = [observations[i] for i in live]
        if m.window:
            from serving.window_baseline import window_rounds

            outs = window_rounds(m, accepted, starts)
        else:
            outs = _step_rounds(m, accepted, starts, gaps)
        for i, res in zip(live, outs, strict=True):
            results[i] = res
    return [r for r in results if r is not None]


def _step_rounds(
    m: StreamModel,
    obs: list[Observation],
    starts: list[SeriesState | None],
    gaps: list[int],
) -> list[tuple[SeriesState, Forecast]]:
    template = m.template
    init = m.initial_flat()
    hidden = torch.stack([init if s is None else s.hidden for s in starts])
    steps = np.array([0 if s is None else s.steps for s in starts], dtype=np.int64)
    obs_ts = np.array([o.ts for o in obs], dtype=np.int64)
    static = np.stack([o.static for o in obs])
    n_channels = len(m.spec.channels)
    rounds = max(gaps) + 1
    y_last = None
    for r in range(rounds):
        # Aligned so that every series' observation lands in the last round: series i takes part
        # from round rounds-1-gap_i on, and its input in round r is at obs.ts - (rounds-1-r) steps.
        idx = np.flatnonzero(np.asarray(gaps) >= rounds - 1 - r)
        is_obs = r == rounds - 1
        if is_obs:
            x = torch.from_numpy(np.stack([o.values for o in obs]))
        else:
            x = torch.full((len(idx), n_channels), float("nan"))
        ts = obs_ts[idx] - (rounds - 1 - r) * m.step_ns
        cov = m.covariates(ts, static[idx])
        every = len(idx) == len(obs)  # the usual case (no gaps): no gather, no scatter
        sub = unflatten(hidden if every else hidden[idx], template)
        y, sub = m.model.step(x, sub, covariates=cov)
        if every:
            hidden = flatten(sub)
        else:
            hidden[torch.from_numpy(idx)] = flatten(sub)
        steps[idx] += 1
        if is_obs:
            y_last = y.numpy()
    assert y_last is not None
    out = []
    for i, o in enumerate(obs):
        prev = starts[i]
        keep = max(m.retain - 1, 0)
        if prev is None or keep == 0:
            rts, rv, rs = (
                np.empty(0, np.int64),
                np.empty((0, n_channels), np.float32),
                np.empty((0, len(o.static)), np.float32),
            )
        else:
            rts, rv, rs = (
                prev.recent_ts[-keep:],
                prev.recent_values[-keep:],
                prev.recent_static[-keep:],
            )
        new = SeriesState(
            hidden=hidden[i].clone(),
            last_ts=o.ts,
            steps=int(steps[i]),
            recent_ts=np.concatenate([rts, [o.ts]]) if m.retain else rts,
            recent_values=np.concatenate([rv, o.values[None]]) if m.retain else rv,
            recent_static=np.concatenate([rs, o.static[None]]) if m.retain else rs,
        )
        out.append((new, Forecast(o.series, o.ts, int(steps[i]) < m.warmup, y_last[i])))
    return out
