"""RWKV-7 state update in chunked (WY) form: matrix products on chunks of BT steps.

Per series and head, S [V, K] (V = K: value row i, key column j):

    S_t = S_{t-1} diag(w_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T,   y_t = S_t r_t,   w_t = exp(log_w_t)

Inside a chunk that starts from S_0, with g_t the cumulative log decay since the chunk start,
u_t = S_{t-1} a_t solves a unit lower-triangular system, so the chunk is

    U   = P (A0 S_0^T + A_ak V),   P = (I - A_ab)^{-1}
    Y   = R0 S_0^T + A_rb U + A_rk V
    S_C = S_0 diag(exp(g_C)) + U^T B_hat + V^T K_hat

(the C x C matrices A_* and the decayed rows A0, R0, B_hat, K_hat are defined in README.md). Only
the chunk-to-chunk pass over S is sequential; everything else is tl.dot on [BT, K] tiles.

Four kernels:
- prep: grid (B*H, chunks), all chunks at once: the S-independent matrices W, Q, Uv, Yv
  (U = W S_0^T + Uv, Y = Q S_0^T + Yv; README.md);
- forward: grid (row blocks, B*H); walks the chunks with only the S-dependent products, saves S
  at every chunk start when a gradient is needed, writes y and S_T;
- backward, state pass: grid (row blocks, B*H); walks the chunks backwards carrying the adjoint
  dS (from W and Q), writes it at every chunk end, and dS0;
- backward, chunk pass: grid (B*H, chunks), all chunks at once; from the saved S at the chunk start
  and dS at its end it recomputes the chunk and writes every input gradient, in sub-chunks of
  CHUNK_BWD steps from the last (S at a sub-chunk's start recomputed from the chunk's, dS at its
  end carried from the sub-chunk after it).

Numerics: the pairwise decays exp(g_t - g_s) are split as exp(g_t - m) * exp(m - g_s) with m half
the chunk's total log decay, so each factor stays within exp(|g_C| / 2). In float32 that is exact
while the log decay summed over one chunk stays above about -170 (log_w > -10 per step at BT = 16;
the model's log_w lies in (-0.61, 0); the bound is -5 at CHUNK = 32); below that the factors
overflow and the result is NaN.
Computed in float32 (the products in the precision `DOT_PRECISION` names); inputs may be float32 or
bfloat16; y comes back in r's dtype, S_T in S0's dtype (r's when S0 is None).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.rwkv7.inputs import check_inputs

__all__ = ["rwkv7_chunk"]

# Every output and scratch buffer comes from here, so tests can swap in a NaN-filling allocator.
_empty = torch.empty

# Steps per chunk. 16 is the smallest tile tl.dot takes; it keeps each decay factor under
# exp(8 |log_w|) and the per-chunk state saved for the backward at B*H*ceil(T/16)*K*K*4 bytes.
CHUNK = 16
# Steps per sub-chunk of the per-chunk backward kernel (divides CHUNK): with CHUNK = 32 and 16 here
# the sequential passes walk half as many chunks while the backward keeps 16-step tiles, walking
# each chunk's two halves from the last (S at the second half's start recomputed from the chunk's).
# Slower on an H200 (2026-11-29, B=64, T=4096, H=4, K=64, bf16): forward+backward 10.9 ms at 32/16
# against 8.14 at 16/16, forward 2.73 against 1.96 (docs/BENCHMARKS.md, session 7).
CHUNK_BWD = 16
# Rows of S per program in the two sequential passes (at least 16, the smallest dot tile). Every
# row block repeats the chunk's S-independent work (A_*, P), which dominates: measured on an H200
# (2026-11-28, B=64, T=4096, H=4, K=64, bf16) the forward took 10.2 ms at 16 rows and 3.66 ms at
# 64 (one block per head); 5.49 ms at 16 rows with "tf32" products; 14.6 ms with CHUNK = 32.
ROWS = 64
# Warps of the sequential passes and of the parallel chunk-preparation kernel.
STATE_WARPS = 4
PREP_WARPS = 2
# Warps of the per-chunk backward kernel, by product precision. With single-TF32 products
# (bfloat16 inputs) 4 warps ran forward+backward in 8.06 ms against 9.76 ms at 8, with the same
# errors against float64 (worst 3.0e-3; H200, 2026-11-29, B=64, T=4096, H=4, K=64; see
# docs/BENCHMARKS.md). With "tf32x3" (float32 inputs) 4 warps took 76 ms: its three-pass
# products want the registers of 8.
CHUNK_BWD_WARPS = {"tf32": 4, "tf32x3": 8}
# Software-pipelining stages of the sequential passes' loops (Triton's num_stages).
STATE_STAGES = 3
# Precision of the float32 matrix products: "ieee" is plain float32 arithmetic; "tf32x3" runs on
# tensor cores with three TF32 products each (float32 inputs at B=64, T=4096 came within 5.7e-7 of
# the float64 reference on the H200); "tf32" is faster but rounds operands to 10 mantissa bits.
DOT_PRECISION = "tf32x3"
# The same for bfloat16 inputs: their 8 mantissa bits are below TF32's 10, so one TF32 product
# suffices. Measured on an H200 (2026-11-29, B=64, T=4096, H=4, K=64): forward 3.37 -> 2.01 ms,
# forward+backward 18.2 -> 9.73 ms; worst relative error against float64 2.0e-3 (y) and 3.0e-3
# (da, db), against 1.7e-3 with "tf32x3" and 2.9e-3 / 4.0e-3 for fla's chunk_rwkv7.
DOT_PRECISION_BF16 = "tf32"


def _precision(r: Tensor) -> str:
    return DOT_PRECISION_BF16 if r.dtype == torch.bfloat16 else DOT_PRECISION


@triton.jit
def _load_tile(ptr, base, t0, T, o_c, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr):
    """[BT, len(o_c)] float32 tile of a [B, T, H, K] tensor: steps t0.., columns o_c; 0 outside."""
    o_t = t0 + tl.arange(0, BT)
    m = (o_t[:, None] < T) & (o_c[None, :] < K)
    p = ptr + base + o_t[:, None] * H * K + o_c[None, :]
    return tl.load(p, mask=m, other=0).to(tl.float32)


@triton.jit
def _store_tile(ptr, base, t0, T, o_c, x, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr):
    o_t = t0 + tl.arange(0, BT)
    m = (o_t[:, None] < T) & (o_c[None, :] < K)
    p = ptr + base + o_t[:, None] * H * K + o_c[None, :]
    tl.store(p, x.to(ptr.dtype.element_ty), mask=m)


@triton.jit
def _decays(lw, BT: tl.constexpr):
    """From log_w [BT, BK]: g (inclusive cumsum), g_ex (exclusive), g_last [BK], m [BK]."""
    o_t = tl.arange(0, BT)
    g = tl.cumsum(lw, axis=0)
    g_ex = g - lw
    # Padded steps carry log_w = 0, so the last row holds the decay of the whole chunk.
    g_last = tl.sum(tl.where((o_t == BT - 1)[:, None], g, 0.0), axis=0)
    return g, g_ex, g_last, 0.5 * g_last


@triton.jit
def _inv_unit_lower(L, BT: tl.constexpr, N_SQ: tl.constexpr, PREC: tl.constexpr):
    """(I - L)^{-1} for strictly lower L [BT, BT]: (I + L)(I + L^2)(I + L^4)... as L^BT = 0."""
    o_t = tl.arange(0, BT)
    P = tl.where(o_t[:, None] == o_t[None, :], 1.0, 0.0) + L
    Lp = L
    for _ in tl.static_range(N_SQ):
        Lp = tl.dot(Lp, Lp, input_precision=PREC)
        P = P + tl.dot(P, Lp, input_precision=PREC)
    return P


@triton.jit
def _chunk_matrices(
    r_c, lw, k_c, a_c, b_c, BT: tl.constexpr, N_SQ: tl.constexpr, PREC: tl.constexpr
):
    """Everything of one chunk that does not depend on S: see README.md for the names."""
    o_t = tl.arange(0, BT)
    strict = o_t[:, None] > o_t[None, :]
    incl = o_t[:, None] >= o_t[None, :]
    g, g_ex, g_last, m = _decays(lw, BT)
    # Rows t carry exp(g_t - m) (or exp(g_{t-1} - m)), columns s carry exp(m - g_s).
    e_in = tl.exp(m[None, :] - g)
    r_m = r_c * tl.exp(g - m[None, :])
    a_m = a_c * tl.exp(g_ex - m[None, :])
    b_m = b_c * e_in
    k_m = k_c * e_in
    A_ab = tl.where(strict, tl.dot(a_m, tl.trans(b_m), input_precision=PREC), 0.0)
    A_ak = tl.where(strict, tl.dot(a_m, tl.trans(k_m), input_precision=PREC), 0.0)
    A_rb = tl.where(incl, tl.dot(r_m, tl.trans(b_m), input_precision=PREC), 0.0)
    A_rk = tl.where(incl, tl.dot(r_m, tl.trans(k_m), input_precision=PREC), 0.0)
    P = _inv_unit_lower(A_ab, BT, N_SQ, PREC)
    # Decays relative to the chunk start (rows of S_0 terms) and to its end (rows of S_C terms).
    e_out = tl.exp(g_last[None, :] - g)
    a_0 = a_c * tl.exp(g_ex)
    r_0 = r_c * tl.exp(g)
    b_h = b_c * e_out
    k_h = k_c * e_out
    gam = tl.exp(g_last)
    return r_m, a_m, b_m, k_m, A_ab, A_ak, A_rb, A_rk, P, a_0, r_0, b_h, k_h, gam


@triton.jit
def _prep_kernel(
    r,
    log_w,
    k,
    v,
    a,
    b,
    mats,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    N_SQ: tl.constexpr,
    PREC: tl.constexpr,
):
    """The S-independent part of one chunk, all chunks in parallel: W, Q, Uv, Yv into mats.

    U = W S_0^T + Uv and Y = Q S_0^T + Yv, with W = P A0, Uv = P A_ak V, Q = R0 + A_rb W and
    Yv = A_rb Uv + A_rk V; mats is [B*H, n_c, 4, BT, K] float32 in the order W, Q, Uv, Yv.
    """
    i_bh = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    n_c = tl.num_programs(1)
    i_b = i_bh // H
    i_h = i_bh % H
    o_j = tl.arange(0, BK)
    o_t = tl.arange(0, BT)
    base = i_b * T * H * K + i_h * K
    t0 = c * BT
    r_c = _load_tile(r, base, t0, T, o_j, H, K, BT)
    lw = _load_tile(log_w, base, t0, T, o_j, H, K, BT)
    k_c = _load_tile(k, base, t0, T, o_j, H, K, BT)
    a_c = _load_tile(a, base, t0, T, o_j, H, K, BT)
    b_c = _load_tile(b, base, t0, T, o_j, H, K, BT)
    v_c = _load_tile(v, base, t0, T, o_j, H, K, BT)
    _, _, _, _, _, A_ak, A_rb, A_rk, P, a_0, r_0, _, _, _ = _chunk_matrices(
        r_c, lw, k_c, a_c, b_c, BT, N_SQ, PREC
    )
    W = tl.dot(P, a_0, input_precision=PREC)
    Uv = tl.dot(P, tl.dot(A_ak, v_c, input_precision=PREC), input_precision=PREC)
    Q = r_0 + tl.dot(A_rb, W, input_precision=PREC)
    Yv = tl.dot(A_rb, Uv, input_precision=PREC) + tl.dot(A_rk, v_c, input_precision=PREC)
    p = mats + ((i_bh * n_c + c) * 4 * BT + o_t[:, None]) * K + o_j[None, :]
    m = (o_t[:, None] < BT) & (o_j[None, :] < K)
    tl.store(p, W, mask=m)
    tl.store(p + BT * K, Q, mask=m)
    tl.store(p + 2 * BT * K, Uv, mask=m)
    tl.store(p + 3 * BT * K, Yv, mask=m)


@triton.jit
def _mat_tile(mats, i_bh, c, n_c, which: tl.constexpr, o_c, K: tl.constexpr, BT: tl.constexpr):
    """[BT, len(o_c)] tile `which` (0 W, 1 Q, 2 Uv, 3 Yv) of chunk c from mats."""
    o_t = tl.arange(0, BT)
    p = mats + ((i_bh * n_c + c) * 4 * BT + which * BT + o_t[:, None]) * K + o_c[None, :]
    return tl.load(p, mask=(o_t[:, None] < BT) & (o_c[None, :] < K), other=0)


@triton.jit
def _end_decays(lw, b_c, k_c, BT: tl.constexpr):
    """B_hat, K_hat (rows decayed to the chunk end) and exp(g_C) from log_w [BT, BK]."""
    g, _, g_last, _ = _decays(lw, BT)
    e_out = tl.exp(g_last[None, :] - g)
    return b_c * e_out, k_c * e_out, tl.exp(g_last)


@triton.jit
def _fwd_kernel(
    log_w,
    k,
    v,
    b,
    mats,
    s0,
    y,
    s_out,
    ckpt,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_S0: tl.constexpr,
    SAVE: tl.constexpr,
    PREC: tl.constexpr,
):
    """The sequential pass over chunks for BV rows of S, from the prepared W, Q, Uv, Yv."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_i = i_v * BV + tl.arange(0, BV)
    o_j = tl.arange(0, BK)
    m_s = (o_i[:, None] < K) & (o_j[None, :] < K)
    p_s = o_i[:, None] * K + o_j[None, :]
    S = tl.zeros([BV, BK], dtype=tl.float32)
    if USE_S0:
        S += tl.load(s0 + i_bh * K * K + p_s, mask=m_s, other=0).to(tl.float32)
    n_c = tl.cdiv(T, BT)
    base = i_b * T * H * K + i_h * K
    for c in range(n_c):
        if SAVE:
            tl.store(ckpt + (i_bh * n_c + c) * K * K + p_s, S, mask=m_s)
        t0 = c * BT
        W = _mat_tile(mats, i_bh, c, n_c, 0, o_j, K, BT)
        Q = _mat_tile(mats, i_bh, c, n_c, 1, o_j, K, BT)
        Uv = _mat_tile(mats, i_bh, c, n_c, 2, o_i, K, BT)
        Yv = _mat_tile(mats, i_bh, c, n_c, 3, o_i, K, BT)
        lw = _load_tile(log_w, base, t0, T, o_j, H, K, BT)
        k_c = _load_tile(k, base, t0, T, o_j, H, K, BT)
        b_c = _load_tile(b, base, t0, T, o_j, H, K, BT)
        v_c = _load_tile(v, base, t0, T, o_i, H, K, BT)
        b_h, k_h, gam = _end_decays(lw, b_c, k_c, BT)
        St = tl.trans(S)
        U = tl.dot(W, St, input_precision=PREC) + Uv
        Y = tl.dot(Q, St, input_precision=PREC) + Yv
        _store_tile(y, base, t0, T, o_i, Y, H, K, BT)
        S = S * gam[None, :] + tl.dot(tl.trans(U), b_h, input_precision=PREC)
        S += tl.dot(tl.trans(v_c), k_h, input_precision=PREC)
    tl.store(s_out + i_bh * K * K + p_s, S.to(s_out.dtype.element_ty), mask=m_s)


@triton.jit
def _bwd_state_kernel(
    log_w,
    b,
    dy,
    mats,
    ds_out,
    dS,
    ds0,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
    HAS_DS_OUT: tl.constexpr,
    STORE_DS0: tl.constexpr,
):
    """Adjoint of S at every chunk end (into dS [B*H, n_c, K, K]) and of S0.

    Per chunk G_0 = G (diag(e^{g_C}) + W^T B_hat)^T + dY^T Q (README.md).
    """
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_i = i_v * BV + tl.arange(0, BV)
    o_j = tl.arange(0, BK)
    m_s = (o_i[:, None] < K) & (o_j[None, :] < K)
    p_s = o_i[:, None] * K + o_j[None, :]
    G = tl.zeros([BV, BK], dtype=tl.float32)
    if HAS_DS_OUT:
        G += tl.load(ds_out + i_bh * K * K + p_s, mask=m_s, other=0).to(tl.float32)
    n_c = tl.cdiv(T, BT)
    base = i_b * T * H * K + i_h * K
    for cc in range(n_c):
        c = n_c - 1 - cc
        tl.store(dS + (i_bh * n_c + c) * K * K + p_s, G, mask=m_s)
        t0 = c * BT
        W = _mat_tile(mats, i_bh, c, n_c, 0, o_j, K, BT)
        Q = _mat_tile(mats, i_bh, c, n_c, 1, o_j, K, BT)
        lw = _load_tile(log_w, base, t0, T, o_j, H, K, BT)
        b_c = _load_tile(b, base, t0, T, o_j, H, K, BT)
        dy_c = _load_tile(dy, base, t0, T, o_i, H, K, BT)
        b_h, _, gam = _end_decays(lw, b_c, b_c, BT)
        Gb = tl.dot(G, tl.trans(b_h), input_precision=PREC)
        G = G * gam[None, :] + tl.dot(Gb, W, input_precision=PREC)
        G += tl.dot(tl.trans(dy_c), Q, input_precision=PREC)
    if STORE_DS0:
        tl.store(ds0 + i_bh * K * K + p_s, G.to(ds0.dtype.element_ty), mask=m_s)


@triton.jit
def _sub_forward(
    S,
    log_w,
    k,
    v,
    a,
    b,
    base,
    t0,
    T,
    o_j,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    N_SQ: tl.constexpr,
    PREC: tl.constexpr,
):
    """S [BK, BK] after the BT steps from t0, given S at t0 (value rows, key columns)."""
    lw = _load_tile(log_w, base, t0, T, o_j, H, K, BT)
    k_c = _load_tile(k, base, t0, T, o_j, H, K, BT)
    a_c = _load_tile(a, base, t0, T, o_j, H, K, BT)
    b_c = _load_tile(b, base, t0, T, o_j, H, K, BT)
    v_c = _load_tile(v, base, t0, T, o_j, H, K, BT)
    # The r terms are not needed here: a_c stands in for r and what it feeds is dead code.
    _, _, _, _, _, A_ak, _, _, P, a_0, _, b_h, k_h, gam = _chunk_matrices(
        a_c, lw, k_c, a_c, b_c, BT, N_SQ, PREC
    )
    Z = tl.dot(a_0, tl.trans(S), input_precision=PREC) + tl.dot(A_ak, v_c, input_precision=PREC)
    U = tl.dot(P, Z, input_precision=PREC)
    S = S * gam[None, :] + tl.dot(tl.trans(U), b_h, input_precision=PREC)
    return S + tl.dot(tl.trans(v_c), k_h, input_precision=PREC)


@triton.jit
def _sub_backward(
    S,
    G,
    r,
    log_w,
    k,
    v,
    a,
    b,
    dy,
    dr,
    dlog_w,
    dk,
    dv,
    da,
    db,
    base,
    t0,
    T,
    o_j,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    N_SQ: tl.constexpr,
    PREC: tl.constexpr,
):
    """Every input gradient of the BT steps from t0, given S at t0 and dS (G) after them; returns
    dS at t0."""
    o_t = tl.arange(0, BT)
    strict = o_t[:, None] > o_t[None, :]
    incl = o_t[:, None] >= o_t[None, :]
    r_c = _load_tile(r, base, t0, T, o_j, H, K, BT)
    lw = _load_tile(log_w, base, t0, T, o_j, H, K, BT)
    k_c = _load_tile(k, base, t0, T, o_j, H, K, BT)
    a_c = _load_tile(a, base, t0, T, o_j, H, K, BT)
    b_c = _load_tile(b, base, t0, T, o_j, H, K, BT)
    v_c = _load_tile(v, base, t0, T, o_j, H, K, BT)
    dy_c = _load_tile(dy, base, t0, T, o_j, H, K, BT)
    r_m, a_m, b_m, k_m, _, A_ak, A_rb, A_rk, P, a_0, r_0, b_h, k_h, gam = _chunk_matrices(
        r_c, lw, k_c, a_c, b_c, BT, N_SQ, PREC
    )
    # Forward of the chunk again, then its adjoint (names as in README.md).
    Z = tl.dot(a_0, tl.trans(S), input_precision=PREC) + tl.dot(A_ak, v_c, input_precision=PREC)
    U = tl.dot(P, Z, input_precision=PREC)
    dU = tl.dot(tl.trans(A_rb), dy_c, input_precision=PREC)
    dU += tl.dot(b_h, tl.trans(G), input_precision=PREC)
    Pt = tl.trans(P)
    dZ = tl.dot(Pt, dU, input_precision=PREC)
    dP = tl.dot(dU, tl.trans(Z), input_precision=PREC)
    dA_ab = tl.dot(tl.dot(Pt, dP, input_precision=PREC), Pt, input_precision=PREC)
    dA_ab = tl.where(strict, dA_ab, 0.0)
    dA_ak = tl.where(strict, tl.dot(dZ, tl.trans(v_c), input_precision=PREC), 0.0)
    dA_rb = tl.where(incl, tl.dot(dy_c, tl.trans(U), input_precision=PREC), 0.0)
    dA_rk = tl.where(incl, tl.dot(dy_c, tl.trans(v_c), input_precision=PREC), 0.0)
    dv_c = tl.dot(tl.trans(A_ak), dZ, input_precision=PREC)
    dv_c += tl.dot(tl.trans(A_rk), dy_c, input_precision=PREC)
    dv_c += tl.dot(k_h, tl.trans(G), input_precision=PREC)
    da_0 = tl.dot(dZ, S, input_precision=PREC)
    dr_0 = tl.dot(dy_c, S, input_precision=PREC)
    db_h = tl.dot(U, G, input_precision=PREC)
    dk_h = tl.dot(v_c, G, input_precision=PREC)
    dgam = tl.sum(S * G, axis=0)
    da_m = tl.dot(dA_ab, b_m, input_precision=PREC) + tl.dot(dA_ak, k_m, input_precision=PREC)
    dr_m = tl.dot(dA_rb, b_m, input_precision=PREC) + tl.dot(dA_rk, k_m, input_precision=PREC)
    db_m = tl.dot(tl.trans(dA_ab), a_m, input_precision=PREC)
    db_m += tl.dot(tl.trans(dA_rb), r_m, input_precision=PREC)
    dk_m = tl.dot(tl.trans(dA_ak), a_m, input_precision=PREC)
    dk_m += tl.dot(tl.trans(dA_rk), r_m, input_precision=PREC)
    # Each decayed row x * exp(e) gives dx = d(row) * exp(e) and de = d(row) * row. The midpoint m
    # cancels in every product of a row and a column factor, so it carries no gradient.
    g, g_ex, g_last, m = _decays(lw, BT)
    e_in = tl.exp(m[None, :] - g)
    e_out = tl.exp(g_last[None, :] - g)
    dr_c = dr_m * tl.exp(g - m[None, :]) + dr_0 * tl.exp(g)
    da_c = da_m * tl.exp(g_ex - m[None, :]) + da_0 * tl.exp(g_ex)
    db_c = db_m * e_in + db_h * e_out
    dk_c = dk_m * e_in + dk_h * e_out
    dg = dr_m * r_m + dr_0 * r_0 - db_m * b_m - dk_m * k_m - db_h * b_h - dk_h * k_h
    dg_ex = da_m * a_m + da_0 * a_0
    dg_last = tl.sum(db_h * b_h + dk_h * k_h, axis=0) + dgam * gam
    dg += tl.where((o_t == BT - 1)[:, None], dg_last[None, :], 0.0)
    # g_t sums log_w up to t, g_ex_t up to t - 1: reverse cumulative sums give dlog_w.
    dlw = tl.cumsum(dg, axis=0, reverse=True) + tl.cumsum(dg_ex, axis=0, reverse=True) - dg_ex
    _store_tile(dr, base, t0, T, o_j, dr_c, H, K, BT)
    _store_tile(dlog_w, base, t0, T, o_j, dlw, H, K, BT)
    _store_tile(dk, base, t0, T, o_j, dk_c, H, K, BT)
    _store_tile(dv, base, t0, T, o_j, dv_c, H, K, BT)
    _store_tile(da, base, t0, T, o_j, da_c, H, K, BT)
    _store_tile(db, base, t0, T, o_j, db_c, H, K, BT)
    # dS_0 = dY^T R0 + dZ^T A0 + G diag(e^{g_C}) (README.md); dead code when nothing uses it.
    dS0 = tl.dot(tl.trans(dy_c), r_0, input_precision=PREC)
    dS0 += tl.dot(tl.trans(dZ), a_0, input_precision=PREC)
    return dS0 + G * gam[None, :]


@triton.jit
def _bwd_chunk_kernel(
    r,
    log_w,
    k,
    v,
    a,
    b,
    dy,
    ckpt,
    dS,
    dr,
    dlog_w,
    dk,
    dv,
    da,
    db,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    BC: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    N_SQ: tl.constexpr,
    PREC: tl.constexpr,
):
    """All input gradients of one chunk of BC steps, from S at its start and dS at its end, in
    sub-chunks of BT steps from the last to the first: S at each sub-chunk's start is recomputed
    from the chunk's, dS at its end is the previous sub-chunk's result."""
    i_bh = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    n_c = tl.num_programs(1)
    i_b = i_bh // H
    i_h = i_bh % H
    o_j = tl.arange(0, BK)
    m_s = (o_j[:, None] < K) & (o_j[None, :] < K)
    p_s = (i_bh * n_c + c) * K * K + o_j[:, None] * K + o_j[None, :]
    G = tl.load(dS + p_s, mask=m_s, other=0)
    base = i_b * T * H * K + i_h * K
    t0 = c * BC
    for i in range(BC // BT):
        sub = BC // BT - 1 - i
        S = tl.load(ckpt + p_s, mask=m_s, other=0)
        for q in range(sub):
            S = _sub_forward(S, log_w, k, v, a, b, base, t0 + q * BT, T, o_j, H, K, BT, N_SQ, PREC)
        G = _sub_backward(
            S,
            G,
            r,
            log_w,
            k,
            v,
            a,
            b,
            dy,
            dr,
            dlog_w,
            dk,
            dv,
            da,
            db,
            base,
            t0 + sub * BT,
            T,
            o_j,
            H,
            K,
            BT,
            N_SQ,
            PREC,
        )


def _sizes(size: int) -> tuple[int, int, int, int]:
    """(BK, BV, number of row blocks, squarings in the triangular inverse) for head size K."""
    bk = max(16, triton.next_power_of_2(size))
    bv = min(bk, ROWS)
    return bk, bv, triton.cdiv(size, bv), CHUNK.bit_length() - 2


def _prepare(
    r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, n_sq: int
) -> Tensor:
    """W, Q, Uv, Yv of every chunk, [B*H, n_c, 4, CHUNK, K] float32 (the prep kernel)."""
    batch, steps, heads, size = r.shape
    n_c = triton.cdiv(steps, CHUNK)
    bk = max(16, triton.next_power_of_2(size))
    mats = _empty((batch * heads, n_c, 4, CHUNK, size), dtype=torch.float32, device=r.device)
    _prep_kernel[(batch * heads, n_c)](
        r,
        log_w,
        k,
        v,
        a,
        b,
        mats,
        steps,
        H=heads,
        K=size,
        BT=CHUNK,
        BK=bk,
        N_SQ=n_sq,
        PREC=_precision(r),
        num_warps=PREP_WARPS,
    )
    return mats


class _Chunk(torch.autograd.Function):
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
        bk, bv, n_v, n_sq = _sizes(size)
        save = any(ctx.needs_input_grad)
        # An unused output's gradient arrives as None and is skipped, not read as zeros.
        ctx.set_materialize_grads(False)
        n_c = triton.cdiv(steps, CHUNK)
        dev = r.device
        y = _empty(r.shape, dtype=r.dtype, device=dev)
        s_dtype = r.dtype if S0c is None else S0c.dtype
        S_T = _empty((batch, heads, size, size), dtype=s_dtype, device=dev)
        ckpt = _empty(
            (batch, heads, n_c if save else 1, size, size), dtype=torch.float32, device=dev
        )
        mats = _prepare(r, log_w, k, v, a, b, n_sq)
        _fwd_kernel[(n_v, batch * heads)](
            log_w,
            k,
            v,
            b,
            mats,
            S_T if S0c is None else S0c,
            y,
            S_T,
            ckpt,
            steps,
            H=heads,
            K=size,
            BT=CHUNK,
            BK=bk,
            BV=bv,
            USE_S0=S0c is not None,
            SAVE=save,
            PREC=_precision(r),
            num_warps=STATE_WARPS,
            num_stages=STATE_STAGES,
        )
        if save:
            ctx.save_for_backward(r, log_w, k, v, a, b, ckpt, mats)
            # The backward walks the chunks this forward saved, whatever CHUNK is by then.
            ctx.chunk = CHUNK
            ctx.sub_chunk = min(CHUNK_BWD, CHUNK)
            ctx.has_s0 = S0c is not None
            ctx.s0_dtype = s_dtype
        return y, S_T

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None, dS_T: Tensor | None) -> tuple[Tensor | None, ...]:
        r, log_w, k, v, a, b, ckpt, mats = ctx.saved_tensors
        batch, steps, heads, size = r.shape
        bk, bv, n_v, _ = _sizes(size)
        chunk, sub_chunk = ctx.chunk, ctx.sub_chunk
        if chunk % sub_chunk:
            raise ValueError(f"CHUNK_BWD={sub_chunk} must divide CHUNK={chunk}")
        n_c = triton.cdiv(steps, chunk)
        dev = r.device
        dy = torch.zeros_like(r) if dy is None else dy.contiguous()
        dS_Tc = None if dS_T is None else dS_T.contiguous()
        dS = _empty((batch, heads, n_c, size, size), dtype=torch.float32, device=dev)
        ds0 = _empty((batch, heads, size, size), dtype=ctx.s0_dtype, device=dev)
        _bwd_state_kernel[(n_v, batch * heads)](
            log_w,
            b,
            dy,
            mats,
            ds0 if dS_Tc is None else dS_Tc,
            dS,
            ds0,
            steps,
            H=heads,
            K=size,
            BT=chunk,
            BK=bk,
            BV=bv,
            PREC=_precision(r),
            HAS_DS_OUT=dS_Tc is not None,
            STORE_DS0=ctx.has_s0,
            num_warps=STATE_WARPS,
            num_stages=STATE_STAGES,
        )
        grads = [_empty(x.shape, dtype=x.dtype, device=dev) for x in (r, log_w, k, v, a, b)]
        _bwd_chunk_kernel[(batch * heads, n_c)](
            r,
            log_w,
            k,
            v,
            a,
            b,
            dy,
            ckpt,
            dS,
            *grads,
            steps,
            H=heads,
            K=size,
            BC=chunk,
            BT=sub_chunk,
            BK=bk,
            N_SQ=sub_chunk.bit_length() - 2,
            PREC=_precision(r),
            num_warps=CHUNK_BWD_WARPS.get(_precision(r), 8),
        )
        return (*grads, ds0 if ctx.has_s0 else None)


def rwkv7_chunk(
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
    gradients for every input including S0. Requires log_w > -10 per step (module docstring).
    """
    check_inputs(r, (log_w, k, v, a, b), S0)
    y, S_T = _Chunk.apply(r, log_w, k, v, a, b, S0)
    return y, S_T
