"""The accuracy options of ModelConfig keep the streaming contract: channel-independent
processing, the linear path, dropout and the chunked running normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forecast import KINDS, ConfigError, ModelConfig, build_model
from forecast.adaptive_norm import VAR_FLOOR, AdaptiveNorm
from forecast.cycle import cycle_phase
from forecast.layers import LinearPath
from pipelines.calendar import calendar_features
from tests.forecast.test_models import assert_states_close, make_inputs, make_model
from tests.helpers import assert_close

OPTIONS = [
    dict(channel_independent=True, linear_lookback=6, norm_halflife=5),
    dict(channel_independent=True, linear_lookback=0, norm_halflife=0),
    dict(channel_independent=False, linear_lookback=6, norm_halflife=0),
    dict(channel_independent=False, linear_lookback=6, norm_halflife=5, dropout=0.3),
    dict(channel_independent=False, linear_lookback=6, norm_halflife=5, linear_norm="window"),
    dict(channel_independent=True, linear_lookback=5, norm_halflife=0, linear_norm="window"),
    dict(linear_lookback=6, norm_halflife=5, linear_norm="window", cycle_length=7),
    dict(channel_independent=True, linear_lookback=4, norm_halflife=0, cycle_length=3),
    dict(linear_lookback=6, norm_halflife=5, linear_norm="window", linear_per_channel=True),
    dict(channel_independent=True, linear_lookback=4, cycle_length=3, linear_per_channel=True),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("options", OPTIONS)
def test_step_and_split_windows_reproduce_forward(kind: str, options: dict[str, object]) -> None:
    model = make_model(kind, **options).eval()
    x, cov = make_inputs(model, batch=3, steps=23)
    with torch.no_grad():
        y, final = model(x, covariates=cov)
        y_last, _ = model(x, covariates=cov, last_only=True)
        state = model.init_state(3)
        ys = []
        for t in range(23):
            y_t, state = model.step(x[:, t], state, covariates=cov[:, t])
            ys.append(y_t)
        parts, s = [], None
        for lo, hi in [(0, 4), (4, 5), (5, 23)]:
            y_part, s = model(x[:, lo:hi], s, covariates=cov[:, lo:hi])
            parts.append(y_part)
    assert_close("step", y, torch.stack(ys, dim=1))
    assert_states_close(final, state)
    assert s is not None
    assert_close("split", y, torch.cat(parts, dim=1))
    assert_states_close(final, s)
    assert_close("last_only", y[:, -1], y_last)
    blob = final.to_bytes()
    assert len(blob) > 0
    back = model.state_from_bytes(final.select([1]).to_bytes())
    assert back.nbytes == model.state_nbytes()


@pytest.mark.parametrize("kind", KINDS)
def test_channel_independent_state_is_per_channel_and_channels_do_not_mix(kind: str) -> None:
    model = make_model(kind, channel_independent=True, linear_lookback=4, norm_halflife=5)
    model = model.eval()
    mixed = make_model(kind, channel_independent=False, linear_lookback=4, norm_halflife=5)
    # One backbone state per channel: C times the channel-mixing backbone's state.
    backbone = model.init_state(1).layers[2:]
    for layer, other in zip(backbone, mixed.init_state(1).layers[2:], strict=True):
        for t, u in zip(layer, other, strict=True):
            assert t.shape == (1, 3, *u.shape[1:])
    x, cov = make_inputs(model, batch=2, steps=12)
    x = torch.nan_to_num(x)
    with torch.no_grad():
        y, _ = model(x, covariates=cov)
        x2 = x.clone()
        x2[..., 1] += torch.randn_like(x2[..., 1])  # change channel 1 only
        y2, _ = model(x2, covariates=cov)
    # Channels 0 and 2 are unchanged: each channel is its own series.
    assert torch.equal(y[..., [0, 2], :], y2[..., [0, 2], :])
    assert not torch.equal(y[..., 1, :], y2[..., 1, :])


def test_linear_path_is_the_normalised_linear_map() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(kind="diagonal_ssm", n_channels=2, horizon=3, linear_lookback=5)
    path = LinearPath(cfg).double()
    with torch.no_grad():
        path.proj.weight.normal_()
        path.proj.bias.normal_()
    z = torch.randn(1, 9, 2, dtype=torch.float64)
    mean = torch.randn(1, 9, 2, dtype=torch.float64)
    std = torch.rand(1, 9, 2, dtype=torch.float64) + 0.5
    start = path.init_state(1, 2, torch.device("cpu"), torch.float64)
    out, state = path(z, mean, std, start)
    assert out.shape == (1, 9, 3, 2)
    t = 7  # a full window: z[3..7]
    for c in range(2):
        w = (z[0, t - 4 : t + 1, c] - mean[0, t, c]) / std[0, t, c]
        want = path.proj.weight @ w + path.proj.bias
        assert_close("map", want, out[0, t, :, c])
    assert torch.equal(state.window, z[:, -5:].transpose(1, 2))


def test_window_norm_is_revin_on_the_linear_window() -> None:
    """linear_norm="window": each window normalised by its own mean and std (RevIN), mapped,
    denormalised, then expressed in the running-normalised units of the origin."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        kind="diagonal_ssm", n_channels=2, horizon=3, linear_lookback=5, linear_norm="window"
    )
    path = LinearPath(cfg).double()
    with torch.no_grad():
        path.proj.weight.normal_()
        path.proj.bias.normal_()
    z = torch.randn(1, 9, 2, dtype=torch.float64) * 3 + 2
    mean = torch.randn(1, 9, 2, dtype=torch.float64)
    std = torch.rand(1, 9, 2, dtype=torch.float64) + 0.5
    start = path.init_state(1, 2, torch.device("cpu"), torch.float64)
    out, _ = path(z, mean, std, start)
    last, _ = path(z, mean[:, -1], std[:, -1], start, last_only=True)
    assert_close("last_only", out[:, -1], last)
    for t in (4, 8):
        for c in range(2):
            w = z[0, t - 4 : t + 1, c]
            m, s = w.mean(), torch.sqrt(w.var(unbiased=False) + VAR_FLOOR)
            f = s * (path.proj.weight @ ((w - m) / s) + path.proj.bias) + m
            assert_close("revin", (f - mean[0, t, c]) / std[0, t, c], out[0, t, :, c])


@pytest.mark.parametrize("per_channel", [False, True])
def test_daily_cycle_is_taken_out_of_the_window_and_put_back_into_the_forecast(
    per_channel: bool,
) -> None:
    """cycle_length P: f = s (W ((w - m) / s - Q_in) + b + Q_out) + m, Q_in the cycle at the
    window's phases (up to the origin's, read from the covariates), Q_out at the next H. With
    linear_per_channel channel c's map is W + D_c and its bias b + d_c."""
    torch.manual_seed(0)
    period, length, horizon = 7, 5, 3
    cfg = ModelConfig(
        kind="diagonal_ssm",
        n_channels=2,
        horizon=horizon,
        linear_lookback=length,
        linear_norm="window",
        n_covariates=2,
        cycle_length=period,
        linear_per_channel=per_channel,
    )
    path = LinearPath(cfg).double()
    assert path.cycle is not None
    assert (path.delta_weight is not None) == per_channel
    with torch.no_grad():
        for p in path.parameters():
            p.normal_()
    z = torch.randn(1, 9, 2, dtype=torch.float64) * 3 + 2
    mean = torch.randn(1, 9, 2, dtype=torch.float64)
    std = torch.rand(1, 9, 2, dtype=torch.float64) + 0.5
    first = 4  # the phase of step 0; step t is at (first + t) mod P
    angle = 2 * torch.pi * (first + torch.arange(9, dtype=torch.float64)) / period
    cov = torch.stack([angle.sin(), angle.cos()], dim=-1)[None]
    phase = cycle_phase(cov, period)
    assert phase.tolist() == [[(first + t) % period for t in range(9)]]
    start = path.init_state(1, 2, torch.device("cpu"), torch.float64)
    out, _ = path(z, mean, std, start, phase=phase)
    q = path.cycle
    for t in (4, 8):
        for c in range(2):
            w = z[0, t - length + 1 : t + 1, c]
            q_in = q[[(first + u) % period for u in range(t - length + 1, t + 1)], c]
            q_out = q[[(first + t + 1 + h) % period for h in range(horizon)], c]
            m, s = w.mean(), torch.sqrt(w.var(unbiased=False) + VAR_FLOOR)
            wc, bc = path.proj.weight, path.proj.bias
            if path.delta_weight is not None and path.delta_bias is not None:
                wc, bc = wc + path.delta_weight[c], bc + path.delta_bias[c]
            f = s * (wc @ ((w - m) / s - q_in) + bc + q_out) + m
            assert_close("cycle", (f - mean[0, t, c]) / std[0, t, c], out[0, t, :, c])
    with pytest.raises(ValueError, match="phase"):
        path(z, mean, std, start)


def test_cycle_phase_is_the_step_of_the_day_from_the_calendar() -> None:
    stamps = np.datetime64("2021-03-27T22:00") + np.arange(200) * np.timedelta64(10, "m")
    cov = torch.from_numpy(calendar_features(stamps))
    step = (stamps - stamps.astype("datetime64[D]")).astype("timedelta64[m]").astype(int) // 10
    assert cycle_phase(cov, 144).tolist() == step.tolist()


def test_zero_head_starts_as_the_linear_path() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(kind="diagonal_ssm", n_channels=2, horizon=4, zero_head=True)
    model = build_model(cfg).double()
    assert not model.head.proj.weight.any() and not model.head.proj.bias.any()
    x = torch.randn(1, 50, 2, dtype=torch.float64) + 3.0
    with torch.no_grad():
        y, state = model(x, last_only=True)
    # The linear path starts at zero too: the forecast is the running mean.
    assert_close("level", state.layers[0].mean[:, None, :].expand(1, 4, 2), model.point(y))


def test_new_options_keep_the_state_layout() -> None:
    base = make_model("diagonal_ssm", linear_lookback=6, norm_halflife=5)
    other = make_model(
        "diagonal_ssm", linear_lookback=6, norm_halflife=5, linear_norm="window", zero_head=True
    )
    assert base.init_state(2).layout() == other.init_state(2).layout()


def test_linear_path_starts_as_the_running_level() -> None:
    """Before training, with the head silenced, the forecast is the running mean."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="selective_ssm", n_channels=2, horizon=4)).double()
    with torch.no_grad():
        model.head.proj.weight.zero_()
        model.head.proj.bias.zero_()
        x = torch.randn(1, 50, 2, dtype=torch.float64) + 3.0
        y, state = model(x, last_only=True)
    level = state.layers[0].mean  # the running mean (scaled units; the scaler is the identity)
    assert_close("level", level[:, None, :].expand(1, 4, 2), model.point(y))


def test_chunked_running_norm_equals_the_step_recurrence() -> None:
    norm = AdaptiveNorm(n_channels=3, halflife=2)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 150, 3, generator=g, dtype=torch.float64) * 4 + 1
    observed = torch.rand(2, 150, 3, generator=g) > 0.2
    start = norm.init_state(2, torch.device("cpu"), torch.float64)
    mean, std, final = norm.scan(z, observed, start, chunk=7)
    s = start
    for t in range(150):
        m, sd, s = norm.step(z[:, t], observed[:, t], s)
        assert_close(f"mean {t}", m, mean[:, t])
        assert_close(f"std {t}", sd, std[:, t])
    for name, a, b in zip(s._fields, s, final, strict=True):
        assert_close(name, a, b)


def test_dropout_only_while_training() -> None:
    model = make_model("selective_ssm", dropout=0.5)
    x, cov = make_inputs(model, batch=2, steps=6)
    with torch.no_grad():
        model.train()
        a, _ = model(x, covariates=cov)
        b, _ = model(x, covariates=cov)
        model.eval()
        c, _ = model(x, covariates=cov)
        d, _ = model(x, covariates=cov)
    assert not torch.equal(a, b)
    assert torch.equal(c, d)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("linear_lookback", -1),
        ("linear_lookback", 2.5),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("dropout", True),
        ("channel_independent", 1),
        ("linear_norm", "revin"),
        ("zero_head", 0),
        ("cycle_length", -1),
        ("cycle_length", 24),
        ("linear_per_channel", 1),
    ],
)
def test_bad_options_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"ModelConfig\.{field} "):
        ModelConfig(**{"kind": "selective_ssm", "n_channels": 2, "horizon": 3, field: value})  # type: ignore[arg-type]


def test_defaults_are_the_benchmarked_method() -> None:
    cfg = ModelConfig(kind="selective_ssm", n_channels=7, horizon=96)
    assert (cfg.norm_halflife, cfg.linear_lookback, cfg.channel_independent) == (96, 96, False)
    assert (cfg.linear_norm, cfg.zero_head) == ("running", False)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
