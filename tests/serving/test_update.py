"""The pure streaming update: against the model's window forward, batched against one-by-one,
and every per-series rule (order, grid, gaps, restart, warm-up, retention)."""

from __future__ import annotations

import numpy as np
import torch

from serving.checkpoint import decode_series, encode_series
from serving.hot_swap import rewarm
from serving.observation import Observation, Rejection
from serving.update import Forecast, SeriesState, StreamModel, update, update_batch
from tests.serving.conftest import HOUR, T0, small_stream_model


def obs(series: str, k: int, rng: np.random.Generator, missing: float = 0.1) -> Observation:
    x = rng.normal(size=3).astype(np.float32) * 5 + 20
    x[rng.random(3) < missing] = np.nan
    return Observation(series, T0 + k * HOUR, x, np.array([123.0], np.float32))


def run(m: StreamModel, observations: list[Observation]) -> tuple[SeriesState | None, list]:
    state, outs = None, []
    for o in observations:
        state, out = update(m, state, o)
        outs.append(out)
    return state, outs


def test_stream_equals_window_forward_with_gaps(stream_model: StreamModel) -> None:
    rng = np.random.default_rng(0)
    steps = [0, 1, 2, 5, 6, 7, 10, 11, 12, 13, 20]  # gaps of 2, 2 and 6 missing hours
    observations = [obs("s", k, rng) for k in steps]
    _, outs = run(stream_model, observations)
    # The same data as one window: NaN rows where the stream had gaps.
    grid = np.arange(steps[-1] + 1)
    x = np.full((len(grid), 3), np.nan, np.float32)
    for k, o in zip(steps, observations, strict=True):
        x[k] = o.values
    ts = T0 + grid * HOUR
    cov = stream_model.covariates(ts, np.full((len(grid), 1), 123.0, np.float32))
    assert cov is not None
    with torch.no_grad():
        y, _ = stream_model.model(torch.from_numpy(x)[None], covariates=cov[None])
    for k, out in zip(steps, outs, strict=True):
        assert isinstance(out, Forecast)
        np.testing.assert_allclose(out.y, y[0, k].numpy(), rtol=1e-5, atol=1e-5)


def test_batch_equals_one_by_one(stream_model: StreamModel) -> None:
    rng = np.random.default_rng(1)
    series = [f"s{i}" for i in range(7)]
    states: dict[str, SeriesState | None] = {s: None for s in series}
    single: dict[str, SeriesState | None] = {s: None for s in series}
    clock = {s: 0 for s in series}
    for _ in range(6):
        batch = []
        for s in series:
            clock[s] += int(rng.integers(1, 4))  # random gaps of 0-2 steps
            k = clock[s] - (5 if rng.random() < 0.15 else 0)  # some out of order
            batch.append(obs(s, k, rng))
        got = update_batch(stream_model, [states[o.series] for o in batch], batch)
        for o, (new, out) in zip(batch, got, strict=True):
            ref_state, ref = update(stream_model, single[o.series], o)
            assert type(out) is type(ref)
            if isinstance(out, Forecast):
                np.testing.assert_allclose(out.y, ref.y, rtol=1e-5, atol=1e-5)
                assert out.warming == ref.warming
            states[o.series], single[o.series] = new, ref_state
            assert new is not None and ref_state is not None
            torch.testing.assert_close(new.hidden, ref_state.hidden, rtol=1e-5, atol=1e-5)


def test_out_of_order_and_off_grid_leave_state_alone(stream_model: StreamModel) -> None:
    rng = np.random.default_rng(2)
    state, _ = run(stream_model, [obs("s", k, rng) for k in range(4)])
    assert state is not None
    for bad, reason in [
        (obs("s", 3, rng), "out_of_order"),
        (obs("s", 1, rng), "out_of_order"),
        (
            Observation(
                "s", state.last_ts + HOUR // 2, np.zeros(3, np.float32), np.ones(1, np.float32)
            ),
            "off_grid",
        ),
    ]:
        new, out = update(stream_model, state, bad)
        assert isinstance(out, Rejection) and out.reason == reason
        assert new is state


def test_long_gap_restarts_and_warming_flag() -> None:
    m = small_stream_model()
    m = StreamModel(**{**m.__dict__, "max_gap_steps": 5, "warmup": 3})
    rng = np.random.default_rng(3)
    state, outs = run(m, [obs("s", k, rng) for k in range(4)])
    assert [o.warming for o in outs] == [True, True, False, False]
    assert state is not None and state.steps == 4
    state, out = update(m, state, obs("s", 3 + 7, rng))  # 6 missing steps > 5: restart
    assert state is not None and state.steps == 1 and isinstance(out, Forecast) and out.warming
    state, out = update(m, state, obs("s", 3 + 9, rng))  # a short gap: stepped, not restarted
    assert state is not None and state.steps == 3


def test_retained_window_and_checkpoint_round_trip(stream_model: StreamModel) -> None:
    rng = np.random.default_rng(4)
    state, _ = run(stream_model, [obs("s", k, rng) for k in range(12)])
    assert state is not None
    assert len(state.recent_ts) == stream_model.retain == 8
    assert list(state.recent_ts) == [T0 + k * HOUR for k in range(4, 12)]
    blob = encode_series(state, "layout-x", 41)
    back, layout, offset = decode_series(blob)
    assert (layout, offset) == ("layout-x", 41)
    assert torch.equal(back.hidden, state.hidden) and back.last_ts == state.last_ts
    assert np.array_equal(back.recent_values, state.recent_values, equal_nan=True)
    for garbage in [b"", b"{}", blob[:-3], b"\x00" * 64]:
        try:
            decode_series(garbage)
        except ValueError:
            continue
        raise AssertionError(f"{garbage!r} decoded")


def test_rewarm_replays_the_retained_window() -> None:
    old = small_stream_model("selective_ssm", seed=0)
    new = small_stream_model("rwkv7", seed=1, head_size=8)
    rng = np.random.default_rng(5)
    observations = [obs("s", k, rng) for k in range(20)]
    state, _ = run(old, observations)
    assert state is not None
    warmed = rewarm(new, {"s": state})["s"]
    direct, _ = run(new, observations[-8:])  # the new model on the last `retain` observations
    assert direct is not None
    torch.testing.assert_close(warmed.hidden, direct.hidden)
    assert warmed.steps == direct.steps == 8


def test_window_baseline_reencodes_the_last_window() -> None:
    """The benchmark's baseline (serving/window_baseline.py): each forecast is the model's
    parallel forward over the series' last W observations, NaN-padded in front until W arrived."""
    import dataclasses

    w = 5
    m = dataclasses.replace(small_stream_model(), window=w, retain=w)
    rng = np.random.default_rng(3)
    observations = [obs("s", k, rng) for k in range(8)]
    state, outs = run(m, observations)
    assert state is not None and state.recent_values.shape == (w, 3)
    for j in (0, 2, 7):  # a lone observation, a partial window, a full one
        rows = observations[max(0, j - w + 1) : j + 1]
        x = np.full((w, 3), np.nan, np.float32)
        x[w - len(rows) :] = [o.values for o in rows]
        ts = T0 + (j - w + 1 + np.arange(w)) * HOUR
        cov = m.covariates(ts, np.full((w, 1), 123.0, np.float32))
        assert cov is not None
        with torch.no_grad():
            y, _ = m.model(torch.from_numpy(x)[None], covariates=cov[None], last_only=True)
        out = outs[j]
        assert isinstance(out, Forecast) and out.warming == (j + 1 < m.warmup)
        np.testing.assert_allclose(out.y, y[0].numpy(), rtol=1e-5, atol=1e-5)
