"""The contract every forecaster keeps: `step` is `forward`, one event at a time, in O(1) state."""

from __future__ import annotations

import pickle

import pytest
import torch

from forecast import KINDS, ModelConfig, ModelState, StateFormatError, build_model
from forecast.layers import _running_sum
from forecast.model import Forecaster
from tests.helpers import assert_close

# Small but not trivial: two layers, widths that are not powers of two, covariates.
SMALL = dict(
    n_channels=3, horizon=5, d_model=24, n_layers=2, d_state=5, head_size=8, n_covariates=2
)


def make_model(kind: str, seed: int = 0, **overrides: object) -> Forecaster:
    """A float64 model with random weights (every parameter perturbed) and a random scaler."""
    torch.manual_seed(seed)
    cfg = ModelConfig(kind=kind, **{**SMALL, **overrides})  # type: ignore[arg-type]
    model = build_model(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        model.encoder.loc.copy_(torch.randn(cfg.n_channels) * 3)
        model.encoder.scale.copy_(torch.rand(cfg.n_channels) * 2 + 0.5)
    return model


def make_inputs(
    model: Forecaster, batch: int, steps: int, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    loc, scale = model.encoder.loc, model.encoder.scale
    x = torch.randn(batch, steps, cfg.n_channels, generator=g, dtype=torch.float64) * scale + loc
    # About 10% missing values.
    x[torch.rand(x.shape, generator=g) < 0.1] = float("nan")
    cov = torch.randn(batch, steps, cfg.n_covariates, generator=g, dtype=torch.float64)
    return x, cov


def assert_states_close(ref: ModelState, got: ModelState) -> None:
    for (name, a), (_, b) in zip(ref.named_tensors(), got.named_tensors(), strict=True):
        assert_close(name, a, b)


# Global scaler only, and with the per-series running level/scale (its state rides along).
NORMS = [0, 5]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("steps", [1, 7, 257])
@pytest.mark.parametrize("halflife", NORMS)
def test_step_reproduces_forward(kind: str, steps: int, halflife: int) -> None:
    model = make_model(kind, norm_halflife=halflife)
    x, cov = make_inputs(model, batch=3, steps=steps)
    with torch.no_grad():
        y, final = model(x, covariates=cov)
        state = model.init_state(3)
        ys = []
        for t in range(steps):
            y_t, state = model.step(x[:, t], state, covariates=cov[:, t])
            ys.append(y_t)
    assert y.shape == (3, steps, 5, 3, 3)
    assert_close("outputs", y, torch.stack(ys, dim=1))
    assert_states_close(final, state)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("halflife", NORMS)
def test_split_window_equals_one_pass(kind: str, halflife: int) -> None:
    model = make_model(kind, norm_halflife=halflife)
    x, cov = make_inputs(model, batch=2, steps=40)
    with torch.no_grad():
        y, final = model(x, covariates=cov)
        state = None
        pieces = []
        for lo, hi in [(0, 13), (13, 14), (14, 40)]:
            y_part, state = model(x[:, lo:hi], state, covariates=cov[:, lo:hi])
            pieces.append(y_part)
    assert state is not None
    assert_close("outputs", y, torch.cat(pieces, dim=1))
    assert_states_close(final, state)


@pytest.mark.parametrize("kind", KINDS)
def test_last_only_is_the_last_position(kind: str) -> None:
    model = make_model(kind)
    x, cov = make_inputs(model, batch=2, steps=9)
    with torch.no_grad():
        y, _ = model(x, covariates=cov)
        y_last, _ = model(x, covariates=cov, last_only=True)
    assert_close("last", y[:, -1], y_last)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("halflife", NORMS)
def test_state_bytes_round_trip(kind: str, halflife: int) -> None:
    model = make_model(kind, norm_halflife=halflife)
    x, cov = make_inputs(model, batch=4, steps=11)
    with torch.no_grad():
        _, state = model(x, covariates=cov)
    blob = state.to_bytes()
    back = model.state_from_bytes(blob)
    assert back.batch_size == 4
    for (name, a), (_, b) in zip(state.named_tensors(), back.named_tensors(), strict=True):
        assert torch.equal(a, b), name
    # One series at a time, as the streaming service stores them.
    one = model.state_from_bytes(state.select([2]).to_bytes())
    for (name, a), (_, b) in zip(
        state.select([2]).named_tensors(), one.named_tensors(), strict=True
    ):
        assert torch.equal(a, b), name
    # A restored state continues exactly like the original.
    x2, cov2 = make_inputs(model, batch=4, steps=3, seed=7)
    with torch.no_grad():
        y_a, _ = model(x2, state, covariates=cov2)
        y_b, _ = model(x2, back, covariates=cov2)
    assert torch.equal(y_a, y_b)


@pytest.mark.parametrize("kind", KINDS)
def test_state_bytes_rejects_truncated_and_foreign(kind: str) -> None:
    model = make_model(kind)
    blob = model.init_state(2).to_bytes()
    bad = {
        "empty": b"",
        "truncated header": blob[:20],
        "truncated data": blob[:-1],
        "trailing bytes": blob + b"\x00",
        "pickle": pickle.dumps({"layers.0.h": [1.0, 2.0]}),
        "random": bytes(range(256)) * 4,
        "json": b'{"kind": "rwkv7"}',
    }
    for what, data in bad.items():
        try:
            model.state_from_bytes(data)
        except StateFormatError:
            continue
        pytest.fail(f"{what}: accepted as a state")
    with pytest.raises(StateFormatError, match="must be bytes"):
        model.state_from_bytes("not bytes")  # type: ignore[arg-type]
    other_kind = next(k for k in KINDS if k != kind)
    with pytest.raises(StateFormatError, match="model, not"):
        model.state_from_bytes(make_model(other_kind).init_state(1).to_bytes())
    with pytest.raises(StateFormatError, match="layout"):
        model.state_from_bytes(make_model(kind, d_model=32).init_state(1).to_bytes())
    with pytest.raises(StateFormatError, match="layout"):
        model.state_from_bytes(model.init_state(1).to(torch.float32).to_bytes())
    # A forged blob: valid safetensors, right metadata, wrong tensor shape.
    from safetensors.torch import save

    good = model.init_state(1)
    name, tensor = good.named_tensors()[0]
    forged_tensors = {n: t.contiguous() for n, t in good.named_tensors()}
    forged_tensors[name] = torch.zeros(1, *[s + 1 for s in tensor.shape[1:]], dtype=tensor.dtype)
    meta = {"format": "statecast.state", "version": "1", "kind": kind, "layout": good.layout_id()}
    with pytest.raises(StateFormatError, match="shape"):
        model.state_from_bytes(bytes(save(forged_tensors, metadata=meta)))
    with pytest.raises(StateFormatError, match="version"):
        model.state_from_bytes(bytes(save(forged_tensors, metadata={**meta, "version": "99"})))


@pytest.mark.parametrize("kind", KINDS)
def test_state_size_is_constant_over_100k_steps(kind: str) -> None:
    model = make_model(
        kind, d_model=8, n_layers=1, d_state=4, head_size=4, n_covariates=0, norm_halflife=24
    )
    x, _ = make_inputs(model, batch=1, steps=100_000)
    with torch.no_grad():
        _, s10 = model(x[:, :10])
        _, s100k = model(x)
    assert s10.nbytes == s100k.nbytes == model.state_nbytes()
    assert len(s10.to_bytes()) == len(s100k.to_bytes())
    # A long stream must not blow the state up either.
    for name, t in s100k.named_tensors():
        assert torch.isfinite(t).all(), name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("halflife", NORMS)
def test_every_parameter_gets_a_finite_gradient_with_missing_values(
    kind: str, halflife: int
) -> None:
    model = make_model(kind, norm_halflife=halflife)
    x, cov = make_inputs(model, batch=2, steps=12)
    x[0, :, 1] = float("nan")  # a channel missing for a whole window
    x[1, 5] = float("nan")  # a whole time step missing
    y, _ = model(x, covariates=cov)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("kind", KINDS)
def test_quantiles_never_cross(kind: str) -> None:
    model = make_model(kind, n_covariates=0, quantiles=(0.05, 0.25, 0.5, 0.75, 0.95))
    x, _ = make_inputs(model, batch=3, steps=20)
    with torch.no_grad():
        y, _ = model(x)
    assert y.shape[-1] == 5
    assert (y.diff(dim=-1) >= 0).all()
    assert torch.equal(model.point(y), y[..., 2])


@pytest.mark.parametrize("width", [0, 1, 2, 4])
def test_quantile_offsets_sum_as_cumsum(width: int) -> None:
    # The head's running sum replaces torch.cumsum (slow on CUDA for a last dim of a few).
    x = torch.rand(5, 24, 7, width, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(_running_sum(x), torch.cumsum(x, dim=-1), rtol=1e-15, atol=0.0)
    if width:
        assert torch.autograd.gradcheck(_running_sum, (x[:1, :2, :2].detach().requires_grad_(),))


@pytest.mark.parametrize("kind", KINDS)
def test_bad_inputs_are_clear_errors(kind: str) -> None:
    model = make_model(kind)
    x, cov = make_inputs(model, batch=2, steps=4)
    with pytest.raises(ValueError, match="C=3"):
        model(x[..., :2], covariates=cov)
    with pytest.raises(ValueError, match="needs covariates"):
        model(x)
    with pytest.raises(ValueError, match="covariates must have shape"):
        model(x, covariates=cov[..., :1])
    with pytest.raises(ValueError, match="finite"):
        model(x, covariates=cov * float("inf"))
    with pytest.raises(ValueError, match="state holds 1 series"):
        model(x, model.init_state(1), covariates=cov)
    with pytest.raises(ValueError, match="architecture"):
        model(x, make_model(kind, d_model=32).init_state(2), covariates=cov)
    with pytest.raises(TypeError, match="floating-point"):
        model.step(torch.ones(2, 3, dtype=torch.long), covariates=cov[:, 0])
    with pytest.raises(ValueError, match="batch_size"):
        model.init_state(0)


@pytest.mark.parametrize("kind", KINDS)
def test_forecasts_are_in_data_units(kind: str) -> None:
    """fit_scaler ignores NaN, and a shift of the data shifts the forecast with it."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, n_channels=2, horizon=3)).double()
    data = torch.randn(500, 2, dtype=torch.float64) * torch.tensor([2.0, 50.0]) + torch.tensor(
        [10.0, -300.0]
    )
    data[::7, 0] = float("nan")
    model.fit_scaler(data)
    observed = data[~torch.isnan(data[:, 0]), 0]
    assert torch.allclose(model.encoder.loc[0], observed.mean())
    assert torch.allclose(model.encoder.scale[1], data[:, 1].std(unbiased=False))
    with torch.no_grad():
        y, _ = model(data[None, :50])
        model.encoder.loc.add_(1000.0)
        y_shifted, _ = model(data[None, :50] + 1000.0)
    assert_close("shifted", y + 1000.0, y_shifted)


@pytest.mark.parametrize("kind", KINDS)
def test_api_snippet(kind: str) -> None:
    """The public API exactly as documented in the README."""
    model = build_model(ModelConfig(kind=kind, n_channels=7, horizon=24))
    x = torch.randn(4, 30, 7)
    y, state = model(x)
    assert y.shape == (4, 30, 24, 7, 3)
    y, state = model(x, state)
    state = model.init_state(4)
    y_t, state = model.step(x[:, 0], state)
    assert y_t.shape == (4, 24, 7, 3)
    blob = state.to_bytes()
    state = model.state_from_bytes(blob)
    assert model.state_nbytes() == state.nbytes // 4
    assert model.quantiles == (0.1, 0.5, 0.9)


def test_concat_and_select_batch_series() -> None:
    model = make_model("selective_ssm")
    x, cov = make_inputs(model, batch=3, steps=6)
    with torch.no_grad():
        _, state = model(x, covariates=cov)
    parts = [state.select([i]) for i in range(3)]
    joined = ModelState.concat([parts[2], parts[0], parts[1]])
    for (name, a), (_, b) in zip(
        state.select([2, 0, 1]).named_tensors(), joined.named_tensors(), strict=True
    ):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="different models"):
        ModelState.concat([parts[0], make_model("rwkv7").init_state(1)])
