"""The RWKV-7 Triton kernels against the reference, under TRITON_INTERPRET=1 on the CPU.

Output, final state and every gradient (S0's included) are compared in float32 with the float64
reference; every buffer the kernels allocate starts as NaN, so an unwritten element fails.
Shapes are small and odd; row blocks, checkpoint spans and chunks are shrunk where a case needs
several of them. bfloat16 and full sizes are checked on the GPU by bench/rwkv7.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from kernels.rwkv7 import chunk, fused_recurrent
from kernels.rwkv7.reference import rwkv7_scan, rwkv7_step
from tests.helpers import assert_close, triton_on_cpu

Inputs = list[torch.Tensor]


@pytest.fixture(autouse=True)
def _interpreter_and_nan_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    triton_on_cpu(monkeypatch, fused_recurrent, chunk)


def _inputs(batch: int, steps: int, heads: int, size: int, seed: int) -> Inputs:
    """r, log_w, k, v, a, b [B, T, H, K] and S0 [B, H, K, K] in float32, in the model's ranges."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, steps, heads, size)
    r, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    log_w = -torch.rand(shape, generator=g) * 1.5
    kk = F.normalize(torch.randn(shape, generator=g), dim=-1)
    iclr = torch.rand(shape, generator=g)
    S0 = torch.randn(batch, heads, size, size, generator=g)
    return [r, log_w, k, v, -kk, kk * iclr, S0]


def _run(
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    xs: Inputs,
    use_s0: bool,
    dy: torch.Tensor | None,
    dS: torch.Tensor | None,
    dtype: torch.dtype,
) -> list[torch.Tensor]:
    """[y, S_T, the gradient of each input passed] for the loss <y, dy> + <S_T, dS>."""
    leaves = [x.to(dtype).requires_grad_() for x in xs]
    y, S_T = fn(*leaves[:6], leaves[6] if use_s0 else None)
    loss = torch.zeros((), dtype=dtype)
    if dy is not None:
        loss = loss + (y * dy.to(dtype)).sum()
    if dS is not None:
        loss = loss + (S_T * dS.to(dtype)).sum()
    loss.backward()
    # An input the loss does not reach (r when only S_T counts) has no gradient in the reference;
    # the kernels return zeros for it.
    grads = [
        torch.zeros_like(x) if x.grad is None else x.grad
        for x in (leaves if use_s0 else leaves[:6])
    ]
    return [y.detach(), S_T.detach(), *grads]


NAMES = ["y", "S_T", "dr", "dlog_w", "dk", "dv", "da", "db", "dS0"]


def _compare(
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    shape: tuple[int, int, int, int],
    use_s0: bool,
    loss_terms: str,
    seed: int,
) -> None:
    xs = _inputs(*shape, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    batch, _, heads, size = shape
    dy = torch.randn(shape, generator=g) if "y" in loss_terms else None
    dS = torch.randn(batch, heads, size, size, generator=g) if "S" in loss_terms else None
    ref = _run(rwkv7_scan, xs, use_s0, dy, dS, torch.float64)
    got = _run(fn, xs, use_s0, dy, dS, torch.float32)
    assert len(ref) == len(got)
    for name, want, have in zip(NAMES, ref, got, strict=False):
        assert have.dtype == torch.float32, name
        assert_close(name, want.float(), have)


# (B, T, H, K), S0 given, loss terms ("y", "S" or both). Cases cover T in 1, 7, 63, 130,
# B in 1 and 3, widths that are not powers of two, and each loss term on its own.
CASES = [
    ((1, 1, 2, 5), True, "yS"),
    ((3, 7, 2, 8), False, "y"),
    ((1, 63, 2, 5), True, "yS"),
    ((3, 7, 1, 16), True, "S"),
    ((1, 130, 1, 8), True, "yS"),
    ((3, 130, 1, 5), False, "yS"),
]
# The interpreter runs the recurrent kernel step by step: its B=3, T=130 case runs once, below.
RECURRENT_CASES = CASES[:-1]


@pytest.mark.parametrize(("shape", "use_s0", "loss_terms"), RECURRENT_CASES)
def test_fused_recurrent(
    shape: tuple[int, int, int, int], use_s0: bool, loss_terms: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Several row blocks (partial sums in the backward) and several checkpoint spans, one short.
    monkeypatch.setattr(fused_recurrent, "FWD_ROWS", 4)
    monkeypatch.setattr(fused_recurrent, "BWD_ROWS", 4)
    monkeypatch.setattr(fused_recurrent, "CHECKPOINT", 16)
    _compare(fused_recurrent.rwkv7_fused_recurrent, shape, use_s0, loss_terms, seed=sum(shape))


def test_fused_recurrent_default_blocks() -> None:
    """The shipped row blocks and checkpoint span (one row block, gradients written directly)."""
    _compare(fused_recurrent.rwkv7_fused_recurrent, (3, 130, 1, 5), False, "yS", seed=3)


@pytest.mark.parametrize(("shape", "use_s0", "loss_terms"), CASES)
def test_chunk(
    shape: tuple[int, int, int, int], use_s0: bool, loss_terms: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _compare(chunk.rwkv7_chunk, shape, use_s0, loss_terms, seed=sum(shape))


@pytest.mark.parametrize(("chunk_size", "sub_chunk"), [(16, 16), (32, 32), (32, 16), (64, 16)])
def test_chunk_row_blocks_and_chunk_sizes(
    chunk_size: int, sub_chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """K = 24 pads to 32 columns in two row blocks of 16; chunk 32 takes one more squaring; a
    backward in sub-chunks of 16 walks two (four) of them per chunk, the last one partly past T."""
    monkeypatch.setattr(chunk, "CHUNK", chunk_size)
    monkeypatch.setattr(chunk, "CHUNK_BWD", sub_chunk)
    monkeypatch.setattr(chunk, "ROWS", 16)
    _compare(chunk.rwkv7_chunk, (1, 70, 1, 24), True, "yS", seed=chunk_size + sub_chunk)


def test_chunk_sub_chunks_default_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 32 steps with a backward in 16-step halves, one row block, B=3, T=63."""
    monkeypatch.setattr(chunk, "CHUNK", 32)
    monkeypatch.setattr(chunk, "CHUNK_BWD", 16)
    _compare(chunk.rwkv7_chunk, (3, 63, 2, 8), False, "yS", seed=5)


@pytest.mark.parametrize(("batch", "heads", "size"), [(3, 2, 5), (1, 1, 16), (2, 1, 24)])
def test_step_fused(batch: int, heads: int, size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused_recurrent, "STEP_ROWS", 8)
    *seq, S = _inputs(batch, 1, heads, size, seed=size)
    r, log_w, k, v, a, b = (x[:, 0] for x in seq)
    want_y, want_S = rwkv7_step(*(x.double() for x in (S, r, log_w, k, v, a, b)))
    y, S_new = fused_recurrent.rwkv7_step_fused(S, r, log_w, k, v, a, b)
    assert_close("y", want_y.float(), y)
    assert_close("S", want_S.float(), S_new)


def test_step_fused_default_blocks() -> None:
    """The shipped layout: one program per series x head, K = 24 padded to 32 rows and columns."""
    *seq, S = _inputs(3, 1, 2, 24, seed=11)
    r, log_w, k, v, a, b = (x[:, 0] for x in seq)
    want_y, want_S = rwkv7_step(*(x.double() for x in (S, r, log_w, k, v, a, b)))
    y, S_new = fused_recurrent.rwkv7_step_fused(S, r, log_w, k, v, a, b)
    assert_close("y", want_y.float(), y)
    assert_close("S", want_S.float(), S_new)


def test_step_fused_is_forward_only() -> None:
    *seq, S = _inputs(1, 1, 1, 4, seed=0)
    r, log_w, k, v, a, b = (x[:, 0] for x in seq)
    with pytest.raises(RuntimeError, match="forward-only"):
        fused_recurrent.rwkv7_step_fused(S.requires_grad_(), r, log_w, k, v, a, b)
