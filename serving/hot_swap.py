"""Warming a replacement model whose state is not compatible with the old one.

Compatible (same kind and state layout, e.g. retrained weights): the carried states are kept as
they are; the new weights read them from the next step on. Incompatible (another kind or size):
each series starts from the new model's initial state and replays the observations it retained
(the last `retain` accepted ones, `lookback` by default) through the same pure update, so it is
warm again as soon as the swap is done, without reading the input topic again.
"""

from __future__ import annotations

from collections.abc import Mapping

from serving.observation import Observation
from serving.update import SeriesState, StreamModel, update_batch

__all__ = ["rewarm"]


def rewarm(model: StreamModel, series: Mapping[str, SeriesState]) -> dict[str, SeriesState]:
    """Replay each series' retained observations through `model` from its initial state."""
    names = list(series)
    new: dict[str, SeriesState | None] = {name: None for name in names}
    longest = max((len(s.recent_ts) for s in series.values()), default=0)
    for r in range(longest):
        # Round r: the r-th retained observation of every series that has one (oldest first).
        todo = [n for n in names if len(series[n].recent_ts) > r]
        obs = [
            Observation(
                n,
                int(series[n].recent_ts[r]),
                series[n].recent_values[r],
                series[n].recent_static[r],
            )
            for n in todo
        ]
        for name, (state, _) in zip(
            todo, update_batch(model, [new[n] for n in todo], obs), strict=True
        ):
            new[name] = state
    # A series with nothing retained (retain=0) starts cold.
    return {n: s for n, s in new.items() if s is not None}
