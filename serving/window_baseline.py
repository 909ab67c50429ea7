"""The windowed baseline that bench/stream.py runs through the same Kafka path as the stream.

What a forecaster without a carried state must do per event: re-encode the series' last `window`
observations. Here that is the same model's parallel `forward` over the window from the initial
state, keeping only the last position's forecast (a model of the same size, so the comparison is
about the state, not the network). The processor runs it when the worker is started with
`--baseline-window N`; for measurement, not for production: its forecasts are the model's over a
window that ignores gaps (rows are the series' accepted observations, in order, NaN-padded at
the front until N have arrived).
"""

from __future__ import annotations

import numpy as np
import torch

from serving.observation import Observation
from serving.update import Forecast, SeriesState, StreamModel

__all__ = ["window_rounds"]


def window_rounds(
    m: StreamModel, obs: list[Observation], starts: list[SeriesState | None]
) -> list[tuple[SeriesState, Forecast]]:
    """One forecast per observation from the last `m.window` observations of its series."""
    w, batch = m.window, len(obs)
    n_channels, n_static = len(m.spec.channels), len(obs[0].static)
    x = np.full((batch, w, n_channels), np.nan, np.float32)
    ts = np.empty((batch, w), np.int64)
    static = np.repeat(np.stack([o.static for o in obs])[:, None], w, axis=1)
    out: list[tuple[SeriesState, Forecast]] = []
    for i, (o, prev) in enumerate(zip(obs, starts, strict=True)):
        keep = w - 1
        rts = prev.recent_ts[-keep:] if prev is not None else np.empty(0, np.int64)
        rv = prev.recent_values[-keep:] if prev is not None else np.empty((0, n_channels))
        rs = prev.recent_static[-keep:] if prev is not None else np.empty((0, n_static))
        n = len(rts)
        x[i, w - 1 - n : w - 1] = rv
        x[i, -1] = o.values
        # Padding rows get the grid's timestamps before the oldest kept one (calendar features).
        first = rts[0] if n else o.ts
        ts[i, : w - 1 - n] = first - m.step_ns * np.arange(w - 1 - n, 0, -1)
        ts[i, w - 1 - n : w - 1] = rts
        ts[i, -1] = o.ts
        new = SeriesState(
            hidden=m.initial_flat(),  # nothing carried: the window is the state
            last_ts=o.ts,
            steps=(0 if prev is None else prev.steps) + 1,
            recent_ts=np.concatenate([rts, [o.ts]]),
            recent_values=np.concatenate([rv, o.values[None]]).astype(np.float32),
            recent_static=np.concatenate([rs, o.static[None]]).astype(np.float32),
        )
        out.append((new, Forecast(o.series, o.ts, new.steps < m.warmup, np.empty(0))))
    cov = m.covariates(ts.reshape(-1), static.reshape(batch * w, n_static))
    if cov is not None:
        cov = cov.reshape(batch, w, -1)
    y, _ = m.model(torch.from_numpy(x), covariates=cov, last_only=True)
    y_np = y.numpy()
    return [(s, Forecast(f.series, f.ts, f.warming, y_np[i])) for i, (s, f) in enumerate(out)]
