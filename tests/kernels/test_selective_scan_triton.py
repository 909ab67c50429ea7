"""The selective-scan Triton kernels against the reference, under TRITON_INTERPRET=1 on the CPU.

Output, final state and every gradient (h0's included) are compared in float32 with the float64
reference; every buffer the kernels allocate starts as NaN, so an unwritten element fails. Shapes
are small and odd (T in 1, 7, 63, 130 crosses zero, one and many chunks; D and N not powers of
two). The interpreter runs one Python call per scanned element, so the larger shapes go with the
smaller widths to keep the module near 60 s. bfloat16 and full sizes are checked on the GPU by
bench/selective_scan.py.
"""

from __future__ import annotations

import pytest
import torch

from kernels.selective_scan import chunk, fused_recurrent
from kernels.selective_scan.reference import selective_scan, selective_scan_step
from tests.helpers import assert_close, triton_on_cpu

Inputs = list[torch.Tensor]


@pytest.fixture(autouse=True)
def _interpreter_and_nan_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    triton_on_cpu(monkeypatch, chunk, fused_recurrent)


def _inputs(batch: int, steps: int, width: int, n: int, seed: int) -> Inputs:
    """x, dt [B, T, D]; A [D, N]; B, C [B, T, N]; h0 [B, D, N] in float64, in the model's ranges."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    x = torch.randn(batch, steps, width, generator=g, dtype=f64)
    dt = torch.rand(batch, steps, width, generator=g, dtype=f64) * 0.5 + 0.01
    A = -torch.rand(width, n, generator=g, dtype=f64) * 3 - 0.1
    B = torch.randn(batch, steps, n, generator=g, dtype=f64)
    C = torch.randn(batch, steps, n, generator=g, dtype=f64)
    h0 = torch.randn(batch, width, n, generator=g, dtype=f64)
    return [x, dt, A, B, C, h0]


def _run(fn, xs: Inputs, use_h0: bool, dy: torch.Tensor, dh: torch.Tensor, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    """[y, h_T, the gradient of each input] for the loss <y, dy> + <h_T, dh>."""
    leaves = [x.detach().to(dtype).clone().requires_grad_() for x in xs]
    y, hT = fn(*leaves[:5], leaves[5] if use_h0 else None)
    ((y * dy.to(dtype)).sum() + (hT * dh.to(dtype)).sum()).backward()
    used = leaves if use_h0 else leaves[:5]
    return [y.detach(), hT.detach(), *(x.grad for x in used)]


NAMES = ["y", "h_T", "dx", "ddt", "dA", "dB", "dC", "dh0"]

# (B, T, D, N, h0 given).
CASES = [
    (1, 1, 5, 16, True),
    (3, 7, 24, 16, True),
    (1, 63, 5, 16, False),
    (3, 63, 24, 3, True),
    (3, 130, 5, 3, False),
    (1, 130, 5, 16, True),
]


@pytest.mark.parametrize(("batch", "steps", "width", "n", "use_h0"), CASES)
def test_chunk_matches_reference(batch: int, steps: int, width: int, n: int, use_h0: bool) -> None:
    xs = _inputs(batch, steps, width, n, seed=steps + width + n)
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(batch, steps, width, generator=g, dtype=torch.float64)
    dh = torch.randn(batch, width, n, generator=g, dtype=torch.float64)
    ref = _run(selective_scan, xs, use_h0, dy, dh, torch.float64)
    got = _run(chunk.selective_scan_chunk, xs, use_h0, dy, dh, torch.float32)
    for name, r, k in zip(NAMES, ref, got, strict=False):
        assert_close(name, r.float(), k)


def test_chunk_forward_only_and_expanded_inputs() -> None:
    """No saved states without grad; stride-0 dt, B, C (the LTI model's .expand()) as inputs."""
    batch, steps, width, n = 2, 20, 5, 3
    x, _, A, _, _, h0 = _inputs(batch, steps, width, n, seed=3)
    g = torch.Generator().manual_seed(4)
    dt1 = torch.rand(width, generator=g, dtype=torch.float64) * 0.5 + 0.01
    B1, C1 = torch.randn(2, n, generator=g, dtype=torch.float64)

    def lti(fn, x, dt1, A, B1, C1, h0):  # type: ignore[no-untyped-def]
        return fn(
            x,
            dt1.expand(batch, steps, width),
            A,
            B1.expand(batch, steps, n),
            C1.expand(batch, steps, n),
            h0,
        )

    with torch.no_grad():
        y_ref, h_ref = selective_scan(
            x,
            dt1.expand(batch, steps, width),
            A,
            B1.expand(batch, steps, n),
            C1.expand(batch, steps, n),
            h0,
        )
        y, hT = lti(chunk.selective_scan_chunk, *(t.float() for t in (x, dt1, A, B1, C1, h0)))
    assert_close("y (no grad)", y_ref.float(), y)
    assert_close("h_T (no grad)", h_ref.float(), hT)

    dy = torch.randn(batch, steps, width, generator=g, dtype=torch.float64)
    ref = [t.clone().requires_grad_() for t in (x, dt1, A, B1, C1, h0)]
    got = [t.float().requires_grad_() for t in (x, dt1, A, B1, C1, h0)]
    for fn, leaves in ((selective_scan, ref), (chunk.selective_scan_chunk, got)):
        y, hT = lti(fn, *leaves)
        ((y * dy.to(y.dtype)).sum() + hT.sum()).backward()
    for name, r, k in zip(["dx", "ddt", "dA", "dB", "dC", "dh0"], ref, got, strict=True):
        assert_close(name, r.grad.float(), k.grad)  # type: ignore[union-attr]


def _step_inputs(series: int, width: int, n: int, seed: int) -> Inputs:
    """x, dt [S, D]; A [D, N]; B, C [S, N]; h [S, D, N] in float64."""
    x, dt, A, B, C, h = _inputs(series, 1, width, n, seed)
    return [x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], h]


@pytest.mark.parametrize(("series", "width", "n"), [(1, 5, 3), (5, 24, 16), (3, 24, 3)])
def test_step_matches_reference(series: int, width: int, n: int) -> None:
    x, dt, A, B, C, h = _step_inputs(series, width, n, seed=series + n)
    y_ref, h_ref = selective_scan_step(h, x, dt, A, B, C)
    with torch.no_grad():
        y, h_new = fused_recurrent.selective_scan_step_fused(
            *(t.float() for t in (h, x, dt, A, B, C))
        )
    assert_close("y", y_ref.float(), y)
    assert_close("h_new", h_ref.float(), h_new)


def test_step_refuses_gradients() -> None:
    x, dt, A, B, C, h = _step_inputs(2, 5, 3, seed=0)
    with pytest.raises(RuntimeError, match="forward only"):
        fused_recurrent.selective_scan_step_fused(
            h.float(), x.float(), dt.float(), A.float().requires_grad_(), B.float(), C.float()
        )


def test_no_states_saved_without_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torch.no_grad() the forward writes no chunk-start states (inference pays no bytes)."""
    saves = []
    forward = chunk._forward

    def spy(*args: object, **kw: object) -> object:
        saves.append(args[6])
        return forward(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(chunk, "_forward", spy)
    x, dt, A, B, C, h0 = (t.float().requires_grad_() for t in _inputs(1, 9, 5, 3, seed=5))
    with torch.no_grad():
        chunk.selective_scan_chunk(x, dt, A, B, C, h0)
    chunk.selective_scan_chunk(x, dt, A, B, C, h0)
    assert saves == [False, True]
