"""RWKV-7 state update as Triton kernels sequential over time, the state held in registers.

Per series and head, S [V, K] (V = K: value row i, key column j):

    S_t = S_{t-1} diag(w_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T,   y_t = S_t r_t,   w_t = exp(log_w_t)

Each row i of S evolves on its own given the inputs, so a program owns BV rows of one head
(grid: series*heads x row blocks). The forward is one pass over T. The backward runs the adjoint
G_t = dL/dS_t backwards in time; it needs S_{t-1} at every step, so the forward saves S every CH
steps and the backward recomputes the CH states of a span into a per-program scratch before
walking that span in reverse. See README.md for the derivation.

`rwkv7_step_fused` is the T = 1 update for the streaming service: one launch, no host sync, no
data-dependent allocation, so it can be captured in a CUDA graph. It is forward-only.

Everything is computed in float32; inputs may be float32 or bfloat16. y comes back in r's dtype,
S_T in S0's dtype (r's when S0 is None), as the reference does.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.rwkv7.inputs import check_inputs

__all__ = ["rwkv7_fused_recurrent", "rwkv7_step_fused"]

# Every output and scratch buffer comes from here, so tests can swap in a NaN-filling allocator
# and prove that each element is written.
_empty = torch.empty

# States saved by the forward for the backward: one every CH steps, B*H*ceil(T/CH)*K*K*4 bytes
# (0.5 GiB at B=64, T=4096, H=4, K=64). The backward keeps CH states of BV x K floats in scratch per
# program (32 x 64 x 64 x 4 B = 512 KiB at the defaults), written and read back at once.
CHECKPOINT = 32
# Rows of S per program. In the forward, row blocks are independent and more programs hide the
# loop's latency. In the backward each extra row block adds a float32 partial sum per key-side
# gradient (5 x B*T*H*K x 4 bytes). Measured on an H200 (2026-11-28, B=64, T=4096, H=4, K=64, bf16):
# forward 11.9 ms at 16 rows x 2 warps, 12.8 ms at 4 warps, 14.9 ms at 64 rows; forward+backward
# 50.6 ms at 32 backward rows, 39.2 ms at 64.
FWD_ROWS = 16
BWD_ROWS = 64
# The step is a pure stream over the state (read once, written once). One program per head (64
# rows, 16 KiB of state) with 4 warps: measured on an H200 (2026-11-29, 16384 series, H=4, K=64,
# CUDA graph) 549 us, 98% of the copy rate, against 631 us at 16 rows (four programs per head, each
# reloading the head's five key-side vectors), 585 us at 32 rows, 599 us at 64 rows x 8 warps.
STEP_ROWS = 64
STEP_WARPS = 4
FWD_WARPS = 2
BWD_WARPS = 4


@triton.jit
def _fwd_kernel(
    r,
    log_w,
    k,
    v,
    a,
    b,
    s0,
    y,
    s_out,
    ckpt,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    CH: tl.constexpr,
    USE_S0: tl.constexpr,
    SAVE_CKPT: tl.constexpr,
):
    i_bh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    o_i = i_v * BV + tl.arange(0, BV)
    o_j = tl.arange(0, BK)
    m_i = o_i < K
    m_j = o_j < K
    m_s = m_i[:, None] & m_j[None, :]
    p_s = o_i[:, None] * K + o_j[None, :]

    S = tl.zeros([BV, BK], dtype=tl.float32)
    if USE_S0:
        S += tl.load(s0 + i_bh * K * K + p_s, mask=m_s, other=0).to(tl.float32)
    n_ck = tl.cdiv(T, CH)
    # Offset of (b, t=0, h, 0) in a [B, T, H, K] tensor; one step is H*K further.
    base = i_b * T * H * K + i_h * K
    for t in range(T):
        # Nested, not `and`: SAVE_CKPT is a compile-time switch, the inner test a runtime one.
        if SAVE_CKPT:  # noqa: SIM102
            if t % CH == 0:
                tl.store(ckpt + (i_bh * n_ck + t // CH) * K * K + p_s, S, mask=m_s)
        off = base + t * H * K
        r_t = tl.load(r + off + o_j, mask=m_j, other=0).to(tl.float32)
        w_t = tl.exp(tl.load(log_w + off + o_j, mask=m_j, other=0).to(tl.float32))
        k_t = tl.load(k + off + o_j, mask=m_j, other=0).to(tl.float32)
        a_t = tl.load(a + off + o_j, mask=m_j, other=0).to(tl.float32)
        b_t = tl.load(b + off + o_j, mask=m_j, other=0).to(tl.float32)
        v_t = tl.load(v + off + o_i, mask=m_i, other=0).to(tl.float32)
        sa = tl.sum(S * a_t[None, :], axis=1)
        S = S * w_t[None, :] + sa[:, None] * b_t[None, :] + v_t[:, None] * k_t[None, :]
        y_t = tl.sum(S * r_t[None, :], axis=1)
        tl.store(y + off + o_i, y_t.to(y.dtype.element_ty), mask=m_i)
    tl.store(s_out + i_bh * K * K + p_s, S.to(s_out.dtype.element_ty), mask=m_s)


@triton.jit
def _bwd_kernel(
    r,
    log_w,
    k,
    v,
    a,
    b,
    dy,
    ds_out,
    ckpt,
    scratch,
    dr,
    dlog_w,
    dk,
    dv,
    da,
    db,
    ds0,
    T,
    part_stride,
    H: tl.constexpr,
    K: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    CH: tl.constexpr,
    HAS_DS_OUT: tl.constexpr,
    STORE_DS0: tl.constexpr,
):
    i_bh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    n_v = tl.num_programs(1)
    i_b = i_bh // H
    i_h = i_bh % H
    o_i = i_v * BV + tl.arange(0, BV)
    o_j = tl.arange(0, BK)
    m_i = o_i < K
    m_j = o_j < K
    m_s = m_i[:, None] & m_j[None, :]
    p_s = o_i[:, None] * K + o_j[None, :]
    # The scratch of this program: CH tiles of [BV, BK], contiguous.
    p_tile = tl.arange(0, BV)[:, None] * BK + o_j[None, :]
    scr = scratch + (i_bh * n_v + i_v) * CH * BV * BK
    # dr, dlog_w, dk, da, db sum over all rows i; with several row blocks each block writes its
    # own partial sum (part_stride apart) and the launcher adds them.
    part = i_v * part_stride

    G = tl.zeros([BV, BK], dtype=tl.float32)
    if HAS_DS_OUT:
        G += tl.load(ds_out + i_bh * K * K + p_s, mask=m_s, other=0).to(tl.float32)
    n_ck = tl.cdiv(T, CH)
    base = i_b * T * H * K + i_h * K
    for cc in range(n_ck):
        c = n_ck - 1 - cc
        t0 = c * CH
        n_t = tl.minimum(CH, T - t0)
        # Recompute S_{t0}, ..., S_{t0+n_t-1} into scratch; S ends as S_{t0+n_t}.
        S = tl.load(ckpt + (i_bh * n_ck + c) * K * K + p_s, mask=m_s, other=0)
        for s in range(n_t):
            tl.store(scr + s * BV * BK + p_tile, S)
            off = base + (t0 + s) * H * K
            w_t = tl.exp(tl.load(log_w + off + o_j, mask=m_j, other=0).to(tl.float32))
            k_t = tl.load(k + off + o_j, mask=m_j, other=0).to(tl.float32)
            a_t = tl.load(a + off + o_j, mask=m_j, other=0).to(tl.float32)
            b_t = tl.load(b + off + o_j, mask=m_j, other=0).to(tl.float32)
            v_t = tl.load(v + off + o_i, mask=m_i, other=0).to(tl.float32)
            sa = tl.sum(S * a_t[None, :], axis=1)
            S = S * w_t[None, :] + sa[:, None] * b_t[None, :] + v_t[:, None] * k_t[None, :]
        # The scratch is read back below, possibly by other threads of this program.
        tl.debug_barrier()
        for ss in range(n_t):
            s = n_t - 1 - ss
            off = base + (t0 + s) * H * K
            r_t = tl.load(r + off + o_j, mask=m_j, other=0).to(tl.float32)
            w_t = tl.exp(tl.load(log_w + off + o_j, mask=m_j, other=0).to(tl.float32))
            k_t = tl.load(k + off + o_j, mask=m_j, other=0).to(tl.float32)
            a_t = tl.load(a + off + o_j, mask=m_j, other=0).to(tl.float32)
            b_t = tl.load(b + off + o_j, mask=m_j, other=0).to(tl.float32)
            v_t = tl.load(v + off + o_i, mask=m_i, other=0).to(tl.float32)
            dy_t = tl.load(dy + off + o_i, mask=m_i, other=0).to(tl.float32)
            S_prev = tl.load(scr + s * BV * BK + p_tile)
            # G_t = dy_t r_t^T + G_{t+1} M_{t+1}^T (the second term carried in G).
            G += dy_t[:, None] * r_t[None, :]
            dr_t = tl.sum(S * dy_t[:, None], axis=0)
            dv_t = tl.sum(G * k_t[None, :], axis=1)
            dk_t = tl.sum(G * v_t[:, None], axis=0)
            dw_t = tl.sum(S_prev * G, axis=0) * w_t
            gb = tl.sum(G * b_t[None, :], axis=1)
            sa = tl.sum(S_prev * a_t[None, :], axis=1)
            da_t = tl.sum(S_prev * gb[:, None], axis=0)
            db_t = tl.sum(G * sa[:, None], axis=0)
            tl.store(dr + part + off + o_j, dr_t.to(dr.dtype.element_ty), mask=m_j)
            tl.store(dlog_w + part + off + o_j, dw_t.to(dlog_w.dtype.element_ty), mask=m_j)
            tl.store(dk + part + off + o_j, dk_t.to(dk.dtype.element_ty), mask=m_j)
            tl.store(da + part + off + o_j, da_t.to(da.dtype.element_ty), mask=m_j)
            tl.store(db + part + off + o_j, db_t.to(db.dtype.element_ty), mask=m_j)
            tl.store(dv + off + o_i, dv_t.to(dv.dtype.element_ty), mask=m_i)
            # G_{t-1} part from step t: G_t M_t^T = G_t diag(w_t) + (G_t b_t) a_t^T.
            G = G * w_t[None, :] + gb[:, None] * a_t[None, :]
            S = S_prev
        # The next span overwrites the scratch this one has just read.
        tl.debug_barrier()
    if STORE_DS0:
        tl.store(ds0 + i_bh * K * K + p_s, G.to(ds0.dtype.element_ty), mask=m_s)


@triton.jit
def _step_kernel(
    S_in,
    r,
    log_w,
    k,
    v,
    a,
    b,
    y,
    S_out,
    K: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
):
    i_bh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    o_i = i_v * BV + tl.arange(0, BV)
    o_j = tl.arange(0, BK)
    m_i = o_i < K
    m_j = o_j < K
    m_s = m_i[:, None] & m_j[None, :]
    p_s = i_bh * K * K + o_i[:, None] * K + o_j[None, :]
    off = i_bh * K
    S = tl.load(S_in + p_s, mask=m_s, other=0).to(tl.float32)
    r_t = tl.load(r + off + o_j, mask=m_j, other=0).to(tl.float32)
    w_t = tl.exp(tl.load(log_w + off + o_j, mask=m_j, other=0).to(tl.float32))
    k_t = tl.load(k + off + o_j, mask=m_j, other=0).to(tl.float32)
    a_t = tl.load(a + off + o_j, mask=m_j, other=0).to(tl.float32)
    b_t = tl.load(b + off + o_j, mask=m_j, other=0).to(tl.float32)
    v_t = tl.load(v + off + o_i, mask=m_i, other=0).to(tl.float32)
    sa = tl.sum(S * a_t[None, :], axis=1)
    S = S * w_t[None, :] + sa[:, None] * b_t[None, :] + v_t[:, None] * k_t[None, :]
    y_t = tl.sum(S * r_t[None, :], axis=1)
    tl.store(y + off + o_i, y_t.to(y.dtype.element_ty), mask=m_i)
    tl.store(S_out + p_s, S.to(S_out.dtype.element_ty), mask=m_s)


def _blocks(size: int, rows: int) -> tuple[int, int, int]:
    """(BK, BV, number of row blocks) for head size `size` and at most `rows` rows a program."""
    bk = triton.next_power_of_2(size)
    bv = min(bk, rows)
    return bk, bv, triton.cdiv(size, bv)


class _FusedRecurrent(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        r: Tensor,
        log_w: Tensor,
        k: Tensor,
        v: Tensor,
        a: Tensor,
        b: Tensor,
        S0: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        r, log_w, k, v, a, b = (x.contiguous() for x in (r, log_w, k, v, a, b))
        S0c = None if S0 is None else S0.contiguous()
        batch, steps, heads, size = r.shape
        bk, bv, n_v = _blocks(size, FWD_ROWS)
        save = any(ctx.needs_input_grad)
        # An unused output's gradient arrives as None and is skipped, not read as zeros.
        ctx.set_materialize_grads(False)
        n_ck = triton.cdiv(steps, CHECKPOINT)
        y = _empty(r.shape, dtype=r.dtype, device=r.device)
        s_dtype = r.dtype if S0c is None else S0c.dtype
        S_T = _empty((batch, heads, size, size), dtype=s_dtype, device=r.device)
        ckpt = _empty(
            (batch, heads, n_ck if save else 1, size, size), dtype=torch.float32, device=r.device
        )
        _fwd_kernel[(batch * heads, n_v)](
            r,
            log_w,
            k,
            v,
            a,
            b,
            S_T if S0c is None else S0c,
            y,
            S_T,
            ckpt,
            steps,
            H=heads,
            K=size,
            BK=bk,
            BV=bv,
            CH=CHECKPOINT,
            USE_S0=S0c is not None,
            SAVE_CKPT=save,
            num_warps=FWD_WARPS,
        )
        if save:
            ctx.save_for_backward(r, log_w, k, v, a, b, ckpt)
            ctx.has_s0 = S0c is not None
            ctx.s0_dtype = s_dtype
        return y, S_T

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None, dS_T: Tensor | None) -> tuple[Tensor | None, ...]:
        r, log_w, k, v, a, b, ckpt = ctx.saved_tensors
        batch, steps, heads, size = r.shape
        bk, bv, n_v = _blocks(size, BWD_ROWS)
        dev = r.device
        if dy is None:
            dy = torch.zeros_like(r)
        dy = dy.contiguous()
        dS_Tc = None if dS_T is None else dS_T.contiguous()
        # One row block writes the key-side gradients straight into the result; several write
        # float32 partial sums that are added below.
        part_shape = (n_v, *r.shape) if n_v > 1 else r.shape
        parts = [
            _empty(part_shape, dtype=torch.float32 if n_v > 1 else x.dtype, device=dev)
            for x in (r, log_w, k, a, b)
        ]
        dv = _empty(v.shape, dtype=v.dtype, device=dev)
        ds0 = _empty((batch, heads, size, size), dtype=ctx.s0_dtype, device=dev)
        scratch = _empty((batch * heads * n_v, CHECKPOINT, bv, bk), dtype=torch.float32, device=dev)
        _bwd_kernel[(batch * heads, n_v)](
            r,
            log_w,
            k,
            v,
            a,
            b,
            dy,
            ds0 if dS_Tc is None else dS_Tc,
            ckpt,
            scratch,
            *parts[:3],
            dv,
            *parts[3:],
            ds0,
            steps,
            r.numel() if n_v > 1 else 0,
            H=heads,
            K=size,
            BK=bk,
            BV=bv,
            CH=CHECKPOINT,
            HAS_DS_OUT=dS_Tc is not None,
            STORE_DS0=ctx.has_s0,
            num_warps=BWD_WARPS,
        )
        if n_v > 1:
            parts = [p.sum(0).to(x.dtype) for p, x in zip(parts, (r, log_w, k, a, b), strict=True)]
        dr, dlog_w, dk, da, db = parts
        return dr, dlog_w, dk, dv, da, db, (ds0 if ctx.has_s0 else None)


def rwkv7_fused_recurrent(
    r: Tensor,
    log_w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    S0: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """r, log_w, k, v, a, b [B, T, H, K]; S0 [B, H, K, K] or None (zeros); K <= 64.

    Returns y [B, T, H, K] (r's dtype) and S_T [B, H, K, K] (S0's dtype, else r's), with
    gradients for every input including S0.
    """
    check_inputs(r, (log_w, k, v, a, b), S0)
    y, S_T = _FusedRecurrent.apply(r, log_w, k, v, a, b, S0)
    return y, S_T


def rwkv7_step_fused(
    S: Tensor, r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor
) -> tuple[Tensor, Tensor]:
    """One step for B series at once. S [B, H, K, K]; r, log_w, k, v, a, b [B, H, K].

    Returns (y [B, H, K] in r's dtype, S_new [B, H, K, K] in S's dtype). One launch, no host
    synchronisation and a fixed allocation per shape, so it can be captured in a CUDA graph.
    Forward only: raises if a gradient would be needed.
    """
    if torch.is_grad_enabled() and any(x.requires_grad for x in (S, r, log_w, k, v, a, b)):
        raise RuntimeError("rwkv7_step_fused is forward-only; call it under torch.no_grad()")
    batch, heads, size = r.shape
    if S.shape != (batch, heads, size, size) or size > 64:
        raise ValueError(f"S must be [B, H, K, K] with K <= 64, got {tuple(S.shape)}")
    for x in (log_w, k, v, a, b):
        if x.shape != r.shape:
            raise ValueError(f"input shapes differ: {tuple(x.shape)} vs {tuple(r.shape)}")
    S, r, log_w, k, v, a, b = (x.contiguous() for x in (S, r, log_w, k, v, a, b))
    bk, bv, n_v = _blocks(size, STEP_ROWS)
    y = _empty(r.shape, dtype=r.dtype, device=r.device)
    S_new = _empty(S.shape, dtype=S.dtype, device=S.device)
    _step_kernel[(batch * heads, n_v)](
        S, r, log_w, k, v, a, b, y, S_new, K=size, BK=bk, BV=bv, num_warps=STEP_WARPS
    )
    return y, S_new
