"""One step of the diagonal selective scan for S series at once, as one Triton kernel.

    h_new[s, d, n] = exp(dt[s, d] A[d, n]) h[s, d, n] + dt[s, d] B[s, n] x[s, d]
    y[s, d]        = sum_n C[s, n] h_new[s, d, n]

This is the streaming service's update (T = 1), so it is forward only: no autograd.Function, and
calling it on tensors that require grad is an error rather than a silent detach. It is written so
that a whole model step can be captured in a CUDA graph: one launch whose grid depends only on the
shapes, outputs allocated by shape alone, no host synchronisation and no data-dependent branch on
the host. Each program updates ROWS (series, channel) rows of the [S * D, N] state; the step moves
the state twice (read and write), so it is bound by memory bandwidth at large S.

Numerics: float32 arithmetic; h_new comes back in h's dtype (keep the state in float32 for long
streams), y in x's dtype.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["selective_scan_step_fused"]

# Every output buffer comes from here, so tests can swap in a NaN-filling allocator.
_empty = torch.empty

# (series, channel) rows per program: 64 rows x 16 slots of float32 is 4 KiB of state per program.
ROWS = 64


@triton.jit
def _step_kernel(
    h_ptr,
    x_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    y_ptr,
    hn_ptr,
    n_rows,
    D,
    N,
    s_xs,
    s_xd,
    s_ds,
    s_dd,
    s_Bs,
    s_Bn,
    s_Cs,
    s_Cn,
    R: tl.constexpr,
    NP: tl.constexpr,
):
    # The [R, NP] tile of rows = s * D + d of the contiguous [S * D, N] state.
    row = tl.program_id(0).to(tl.int64) * R + tl.arange(0, R)[:, None]
    n = tl.arange(0, NP)[None, :]
    s = row // D
    d = row % D
    r_ok = row < n_rows
    rn_ok = r_ok & (n < N)
    h = tl.load(h_ptr + row * N + n, mask=rn_ok, other=0.0).to(tl.float32)
    A = tl.load(A_ptr + d * N + n, mask=rn_ok, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + s * s_xs + d * s_xd, mask=r_ok, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + s * s_ds + d * s_dd, mask=r_ok, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + s * s_Bs + n * s_Bn, mask=rn_ok, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + s * s_Cs + n * s_Cn, mask=rn_ok, other=0.0).to(tl.float32)
    h = tl.exp2(dt * A * 1.4426950408889634) * h + (dt * x) * Bv
    tl.store(hn_ptr + row * N + n, h.to(hn_ptr.dtype.element_ty), mask=rn_ok)
    y = tl.sum(h * Cv, axis=1, keep_dims=True)
    tl.store(y_ptr + row, y.to(y_ptr.dtype.element_ty), mask=r_ok)


def selective_scan_step_fused(
    h: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor
) -> tuple[Tensor, Tensor]:
    """h [S, D, N]; x, dt [S, D]; A [D, N]; B, C [S, N] -> (y [S, D], h_new [S, D, N]).

    Same signature and semantics as reference.selective_scan_step; forward only.
    """
    series, width = x.shape
    n = A.shape[-1]
    if tuple(h.shape) != (series, width, n) or dt.shape != x.shape:
        raise ValueError(
            f"h must be [S, D, N] = {(series, width, n)} and dt [S, D]; "
            f"got {tuple(h.shape)}, {tuple(dt.shape)}"
        )
    if tuple(A.shape) != (width, n) or B.shape != (series, n) or C.shape != (series, n):
        raise ValueError(f"A must be [D, N], B and C [S, N]; got {A.shape}, {B.shape}, {C.shape}")
    if any(t.requires_grad for t in (h, x, dt, A, B, C)) and torch.is_grad_enabled():
        raise RuntimeError(
            "selective_scan_step_fused is forward only; use the chunked scan to train"
        )
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("selective_scan_step_fused needs CUDA tensors (or TRITON_INTERPRET=1)")
    # No-ops (no copy, no sync) for the contiguous tensors a captured step passes.
    h = h.contiguous()
    A = A.contiguous()
    y = _empty(series, width, device=x.device, dtype=x.dtype)
    h_new = _empty(series, width, n, device=h.device, dtype=h.dtype)
    n_rows = series * width
    _step_kernel[(triton.cdiv(n_rows, ROWS),)](
        h,
        x,
        dt,
        A,
        B,
        C,
        y,
        h_new,
        n_rows,
        width,
        n,
        *x.stride(),
        *dt.stride(),
        *B.stride(),
        *C.stride(),
        R=ROWS,
        NP=triton.next_power_of_2(n),
        num_warps=4,
    )
    return y, h_new
