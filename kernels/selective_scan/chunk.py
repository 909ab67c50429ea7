"""Diagonal selective scan in Triton, forward and backward, chunked over time.

For series b, channel d and state slot n (see reference.py):

    h_t[d, n] = a_t[d, n] h_{t-1}[d, n] + u_t[d, n],   a_t = exp(dt_t[d] A[d, n]),
    u_t = dt_t[d] B_t[n] x_t[d],                         y_t[d] = sum_n C_t[n] h_t[d, n]

Every program owns one series and BD channels and keeps their [D, N] state in registers; only
y (and, for training, the state at every CHUNK-th step) goes to memory. B and C are read from one
zero-padded float32 copy [B, T, 2, NP] (NP = N rounded up to a power of two, at least 4), A
as A log2(e).

- forward, up to three launches: the sequence is cut into segments of whole chunks that run in
  parallel (as many as fill the GPU). A local pass gives each segment's end state from a zero
  start and its summed dt, a carry pass chains them into true segment start states, and the
  full pass steps through each segment from its start state, chunk by chunk (x and dt of the
  next chunk loaded while this one runs, B_t and C_t one step ahead with 16-byte loads, their
  rows of a later chunk prefetched into L1; the state in registers), writing y,
  h_T and, when a gradient is needed, the state at every chunk start ([B, ceil(T / CHUNK), D,
  NP], float32);
- backward, grid (D blocks, B): walks the chunks in reverse. Per chunk a forward pass from the
  saved start state keeps h_t of its CHUNK steps in an [L, NT, BD, NL] register tile, then the
  adjoint runs step by step back through the chunk, writing dx, ddt and dh0 directly, dA as one
  partial per series and dB, dC as one partial per D block (sums over channels other programs
  own); torch adds the partials in a fixed order, so results are deterministic.

README.md has the derivation. Numerics: float32 in the kernels. x, dt, B, C may be float32 or
bfloat16 and strided (stride-0 expanded too); y comes back in x's dtype, h_T in h0's dtype (x's
when h0 is None), as the reference does; every gradient in its input's dtype.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["selective_scan_chunk"]

# Every output and scratch buffer comes from here, so tests can swap in a NaN-filling allocator.
_empty = torch.empty

# Steps per chunk: the spacing of the saved states, which cost ceil(T / 8) * D * NP * 4 bytes
# per series (four times x's bytes in bfloat16 at N = 16), and the backward's register tile of
# h_t (L x NT x channels-per-thread values); the forward loads x, dt a chunk at a time.
CHUNK = 8

# Backward tile: lanes over N (the rest of the warp over D), channels per thread, and whether
# the forward-over-the-chunk keeps a_t (registers) or the adjoint evaluates it again (exp2).
BWD_LANES_N = 2
BWD_D_PER_THREAD = 1
KEEP_A = False
# Register cap of the backward (None: the compiler's choice). A cap buys warps per multiprocessor
# for spills; bench/selective_scan.py times a few.
BWD_MAXNREG: int | None = None

# Warps per multiprocessor below which the forward cuts the sequence into segments: without and
# with saving the chunk-start states (the saving pass gains more from extra warps). On the H200
# at the main shape (one-off script, 2026-11-29 session 5), without saving 4 segments ran
# 0.89 ms against 0.93 for one and 0.98 for 32; with saving 16 segments 1.18 ms against 1.33
# for 4.
FWD_WARPS_PER_SM = 16
FWD_WARPS_PER_SM_SAVE = 64
# Steps per chunk of the forward when it saves no states (the saving pass must use CHUNK): the
# x, dt tiles of the next chunk are loaded this far ahead. 16 ran 0.89 ms against 1.00 for 8.
FWD_CHUNK = 16
# Chunks ahead of the running one whose B_t, C_t rows are prefetched into L1 (0: none), in the
# forward without and with saving states and in the backward. Measured at the main shape:
# forward 0.89 (2) / 0.89 (1) / 0.98 ms (0) at 16-step chunks; saving 1.18 (1) / 1.22 (2) /
# 1.20 ms (0); backward 4.79 (2) / 4.98 (1) / 5.45 ms (0).
FWD_PREFETCH = 2
FWD_PREFETCH_SAVE = 1
BWD_PREFETCH = 2


class _Config(NamedTuple):
    """Tile of one program: L steps x BD channels x NT * NL state slots, on `warps` warps.

    Triton lays the [(L,) NT, BD, NL] tile out with the NL slots across lanes, then BD channels
    across the remaining lanes and the warps (repeating when BD is larger), and L x NT in each
    thread's registers: a sum over n costs log2(NL) shuffles, a sum over d log2(32 / NL)
    shuffles plus a cross-warp step.
    """

    L: int
    BD: int
    NT: int
    NL: int
    warps: int


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _np(N: int) -> int:
    """State slots of the kernels' buffers: N padded to a power of two, at least 4 (the
    forward reads 4 slots per 16-byte load)."""
    return max(4, triton.next_power_of_2(N))


def _config(D: int, N: int, steps: int, lanes_n: int, warps: int, d_per_thread: int) -> _Config:
    np2 = _np(N)
    nl = min(np2, lanes_n)
    if _interpreting():
        # The interpreter runs one Python call per scanned element: keep its tiles small.
        warps, d_per_thread = 1, 1
    bd = min((32 // nl) * warps * d_per_thread, triton.next_power_of_2(D))
    return _Config(steps, bd, np2 // nl, nl, max(1, min(warps, bd * nl // 32)))


def _fwd_config(D: int, N: int, save: bool) -> _Config:
    # All state slots of a channel in one thread (y needs no shuffles), one warp per program:
    # the fastest of the layouts timed by bench/selective_scan.py on the H200. The forward
    # kernel takes L, BD and the warps from the config; its slot layout is fixed (NP/4 x 4).
    return _config(D, N, CHUNK if save else FWD_CHUNK, 1, 1, 1)


def _bwd_config(D: int, N: int) -> _Config:
    return _config(D, N, CHUNK, BWD_LANES_N, 1, BWD_D_PER_THREAD)


@triton.jit
def _tile_index(pid_d, L: tl.constexpr, BD: tl.constexpr, NT: tl.constexpr, NL: tl.constexpr):
    """Step r [L,1,1,1], channel d [1,1,BD,1], slot n [1,NT,1,NL] and zeros of the full tile."""
    r = tl.arange(0, L)[:, None, None, None]
    d = pid_d * BD + tl.arange(0, BD)[None, None, :, None]
    n = tl.arange(0, NL)[None, None, None, :] * NT + tl.arange(0, NT)[None, :, None, None]
    zero = tl.zeros([1, NT, BD, NL], dtype=tl.int32)
    return r, d, n, zero


_NO_SPEC_FWD = ["T", "seg_steps", "n_seg", "s_xb", "s_xt", "s_db", "s_dt", "s_yb", "s_yt"]


@triton.jit
def _ld4(p, ASM: tl.constexpr):
    """p[0..3] for every pointer of the tile p, as four float32 tiles of p's shape.

    ASM: one 16-byte vector load per element of p (the tiles' layout keeps all of a channel's
    slots in one thread, which Triton's own loads read with one scalar load per float).
    Otherwise (the interpreter): four plain loads.
    """
    if ASM:
        v0, v1, v2, v3 = tl.inline_asm_elementwise(
            "ld.global.nc.v4.b32 {$0, $1, $2, $3}, [$4];",
            "=r,=r,=r,=r,l",
            [p.to(tl.int64)],
            dtype=(tl.int32, tl.int32, tl.int32, tl.int32),
            is_pure=True,
            pack=1,
        )
        f0 = v0.to(tl.float32, bitcast=True)
        f1 = v1.to(tl.float32, bitcast=True)
        f2 = v2.to(tl.float32, bitcast=True)
        f3 = v3.to(tl.float32, bitcast=True)
    else:
        f0 = tl.load(p)
        f1 = tl.load(p + 1)
        f2 = tl.load(p + 2)
        f3 = tl.load(p + 3)
    return f0, f1, f2, f3


@triton.jit
def _prefetch_l1(p, ASM: tl.constexpr):
    """Bring the lines at the pointers p into this multiprocessor's L1 (nothing waits on it)."""
    if ASM:
        tl.inline_asm_elementwise(
            "prefetch.global.L1 [$1]; mov.u32 $0, 0;",
            "=r,l",
            [p.to(tl.int64)],
            dtype=tl.int32,
            is_pure=False,
            pack=1,
        )


@triton.jit
def _row(tile, r, j: tl.constexpr):
    """Row j of an [L, BD, 1] tile as [1, BD, 1] (the step index is a register index)."""
    return tl.sum(tl.where(r == j, tile, -0.0), axis=0, keep_dims=True)


@triton.jit(do_not_specialize=_NO_SPEC_FWD)
def _fwd_kernel(
    x_ptr,
    dt_ptr,
    A2_ptr,
    bc_ptr,
    hseg_ptr,
    y_ptr,
    hT_ptr,
    hs_ptr,
    sdt_ptr,
    T,
    D,
    N,
    seg_steps,
    n_seg,
    s_xb,
    s_xt,
    s_xd,
    s_db,
    s_dt,
    s_dd,
    s_yb,
    s_yt,
    s_yd,
    LOCAL: tl.constexpr,
    SAVE: tl.constexpr,
    ASM: tl.constexpr,
    PF: tl.constexpr,
    L: tl.constexpr,
    NP: tl.constexpr,
    BD: tl.constexpr,
):
    """One segment [seg * seg_steps, +seg_steps) of one series and BD channels, chunk by chunk.

    LOCAL: from a zero state; writes the segment's end state to hseg[b, seg] and its summed dt
    to sdt[b, seg] (y is not written). Otherwise: from hseg[b, seg] (the true start state); writes
    y, h_T (last segment) and, if SAVE, the state at every chunk start to hs. State buffers are
    [B, *, D, NP] float32 (NP = N padded to a power of two, at least 4); bc is [B, T, 2, NP]
    float32 (B_t then C_t, zero padding), so the padded slots stay zero.

    The state is four [NP / 4, BD, 1] tiles h0..h3, tile i holding slots n = 4 k + i: one
    16-byte load gives slots 4k..4k+3 of B_t (or C_t), one for each tile. Every thread owns one
    channel and all of its slots. B_t, C_t of the next step are loaded one step ahead.
    """
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    seg = tl.program_id(2)
    K: tl.constexpr = NP // 4
    r = tl.arange(0, L)[:, None, None]
    d = pid_d * BD + tl.arange(0, BD)[None, :, None]
    # Slot 4k of the [K, BD, 1] tiles (d * 0: full-shape pointers keep the tiles' layout).
    n4 = 4 * tl.arange(0, K)[:, None, None] + d * 0
    d_ok = d < D
    st = d * NP + n4
    A0 = tl.load(A2_ptr + st, mask=d_ok, other=0.0)
    A1 = tl.load(A2_ptr + st + 1, mask=d_ok, other=0.0)
    A2 = tl.load(A2_ptr + st + 2, mask=d_ok, other=0.0)
    A3 = tl.load(A2_ptr + st + 3, mask=d_ok, other=0.0)
    hseg_p = hseg_ptr + (b * n_seg + seg) * D * NP + st
    if LOCAL:
        h0 = tl.zeros([K, BD, 1], dtype=tl.float32)
        h1 = tl.zeros([K, BD, 1], dtype=tl.float32)
        h2 = tl.zeros([K, BD, 1], dtype=tl.float32)
        h3 = tl.zeros([K, BD, 1], dtype=tl.float32)
        sdt = tl.zeros([1, BD, 1], dtype=tl.float32)
    else:
        h0 = tl.load(hseg_p, mask=d_ok, other=0.0)
        h1 = tl.load(hseg_p + 1, mask=d_ok, other=0.0)
        h2 = tl.load(hseg_p + 2, mask=d_ok, other=0.0)
        h3 = tl.load(hseg_p + 3, mask=d_ok, other=0.0)
    t0 = seg * seg_steps
    t1 = tl.minimum(T, t0 + seg_steps)
    x_p = x_ptr + b * s_xb + d * s_xd
    dt_p = dt_ptr + b * s_db + d * s_dd
    bc_p = bc_ptr + b * T * (2 * NP) + n4
    y_p = y_ptr + b * s_yb + d * s_yd
    # The next chunk's x and dt are loaded a whole chunk ahead (their latency is DRAM's); past
    # the segment's end they are zero, which makes a step the identity (a_t = 1, u_t = 0).
    m = d_ok & (t0 + r < t1)
    x_n = tl.load(x_p + (t0 + r) * s_xt, mask=m, other=0.0)
    dt_n = tl.load(dt_p + (t0 + r) * s_dt, mask=m, other=0.0)
    # B_t, C_t of the next step. Rows past T (re-read as row T - 1, in bounds) meet dt = 0.
    t_b = tl.minimum(t0, T - 1) * (2 * NP)
    Bn0, Bn1, Bn2, Bn3 = _ld4(bc_p + t_b, ASM)
    if LOCAL:
        Cn0, Cn1, Cn2, Cn3 = Bn0, Bn1, Bn2, Bn3
    else:
        Cn0, Cn1, Cn2, Cn3 = _ld4(bc_p + t_b + NP, ASM)
    # Lane l prefetches row l mod L of the chunk PF chunks ahead: the B_t, C_t rows (one
    # 128-byte line each at NP = 16) into L1, so that the per-step loads wait on L1, not L2.
    lane = tl.arange(0, BD)[None, :, None] % L
    for c in range(t0 // L, tl.cdiv(t1, L)):
        tc = c * L
        if PF > 0:
            t_pf = tl.minimum(tc + PF * L + lane, T - 1)
            _prefetch_l1(bc_ptr + b * T * (2 * NP) + t_pf * (2 * NP), ASM)
        x_c = x_n.to(tl.float32)
        dt_c = dt_n.to(tl.float32)
        m = d_ok & (tc + L + r < t1)
        x_n = tl.load(x_p + (tc + L + r) * s_xt, mask=m, other=0.0)
        dt_n = tl.load(dt_p + (tc + L + r) * s_dt, mask=m, other=0.0)
        if SAVE:
            hs_p = hs_ptr + (b * tl.cdiv(T, L) + c) * D * NP + st
            tl.store(hs_p, h0, mask=d_ok)
            tl.store(hs_p + 1, h1, mask=d_ok)
            tl.store(hs_p + 2, h2, mask=d_ok)
            tl.store(hs_p + 3, h3, mask=d_ok)
        if LOCAL:
            sdt += tl.sum(dt_c, axis=0, keep_dims=True)
        for j in tl.static_range(L):
            x_j = _row(x_c, r, j)
            dt_j = _row(dt_c, r, j)
            B0, B1, B2, B3 = Bn0, Bn1, Bn2, Bn3
            C0, C1, C2, C3 = Cn0, Cn1, Cn2, Cn3
            t_b = tl.minimum(tc + j + 1, T - 1) * (2 * NP)
            Bn0, Bn1, Bn2, Bn3 = _ld4(bc_p + t_b, ASM)
            if not LOCAL:
                Cn0, Cn1, Cn2, Cn3 = _ld4(bc_p + t_b + NP, ASM)
            u = dt_j * x_j
            h0 = tl.exp2(dt_j * A0) * h0 + u * B0
            h1 = tl.exp2(dt_j * A1) * h1 + u * B1
            h2 = tl.exp2(dt_j * A2) * h2 + u * B2
            h3 = tl.exp2(dt_j * A3) * h3 + u * B3
            if not LOCAL:
                hc = h0 * C0 + h1 * C1 + h2 * C2 + h3 * C3
                y = tl.sum(hc, axis=0, keep_dims=True)
                y_m = d_ok & (d * 0 + (tc + j) < t1)
                tl.store(y_p + (tc + j) * s_yt, y.to(y_ptr.dtype.element_ty), mask=y_m)
    if LOCAL:
        tl.store(hseg_p, h0, mask=d_ok)
        tl.store(hseg_p + 1, h1, mask=d_ok)
        tl.store(hseg_p + 2, h2, mask=d_ok)
        tl.store(hseg_p + 3, h3, mask=d_ok)
        tl.store(sdt_ptr + (b * n_seg + seg) * D + d, sdt, mask=d_ok)
    elif seg == n_seg - 1:
        hT_p = hT_ptr + b * D * N + d * N + n4
        tl.store(hT_p, h0.to(hT_ptr.dtype.element_ty), mask=d_ok & (n4 < N))
        tl.store(hT_p + 1, h1.to(hT_ptr.dtype.element_ty), mask=d_ok & (n4 + 1 < N))
        tl.store(hT_p + 2, h2.to(hT_ptr.dtype.element_ty), mask=d_ok & (n4 + 2 < N))
        tl.store(hT_p + 3, h3.to(hT_ptr.dtype.element_ty), mask=d_ok & (n4 + 3 < N))


@triton.jit(do_not_specialize=["n_seg"])
def _carry_kernel(
    A2_ptr,
    h0_ptr,
    hloc_ptr,
    sdt_ptr,
    hseg_ptr,
    D,
    N,
    n_seg,
    HAS_H0: tl.constexpr,
    NP: tl.constexpr,
    BD: tl.constexpr,
):
    """hseg[b, s] = state at segment s's start: h0, then exp(A sdt[s-1]) hseg[s-1] + hloc[s-1]."""
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    d = pid_d * BD + tl.arange(0, BD)[None, :, None]
    n = tl.arange(0, NP)[:, None, None]
    d_ok = d < D
    st = d * NP + n
    A2 = tl.load(A2_ptr + st, mask=d_ok, other=0.0)
    if HAS_H0:
        h0_p = h0_ptr + b * D * N + d * N + n
        h = tl.load(h0_p, mask=d_ok & (n < N), other=0.0).to(tl.float32)
    else:
        h = tl.zeros([NP, BD, 1], dtype=tl.float32)
    tl.store(hseg_ptr + b * n_seg * D * NP + st, h, mask=d_ok)
    for s in range(1, n_seg):
        sdt = tl.load(sdt_ptr + (b * n_seg + s - 1) * D + d, mask=d_ok, other=0.0)
        h_loc = tl.load(hloc_ptr + (b * n_seg + s - 1) * D * NP + st, mask=d_ok, other=0.0)
        h = tl.exp2(sdt * A2) * h + h_loc
        tl.store(hseg_ptr + (b * n_seg + s) * D * NP + st, h, mask=d_ok)


# Nothing of the backward's address arithmetic is specialised: a stride Triton knows to be 1
# gives a load or store a coalesced layout of its own, and converting between that and the
# compute tile's layout (through shared memory, with a barrier) at every step costs more than
# the access saves.
_NO_SPEC_BWD = ["T", "n_series", "s_xb", "s_xt", "s_xd", "s_db", "s_dt", "s_dd", "s_yb"]
_NO_SPEC_BWD += ["s_yt", "s_yd", "s_n", "s_od"]


@triton.jit(do_not_specialize=_NO_SPEC_BWD)
def _bwd_kernel(
    x_ptr,
    dt_ptr,
    A2_ptr,
    bc_ptr,
    hs_ptr,
    dy_ptr,
    dhT_ptr,
    dx_ptr,
    ddt_ptr,
    dA_ptr,
    dbc_ptr,
    dh0_ptr,
    T,
    D,
    N,
    n_series,
    s_xb,
    s_xt,
    s_xd,
    s_db,
    s_dt,
    s_dd,
    s_yb,
    s_yt,
    s_yd,
    s_n,
    s_od,
    HAS_DHT: tl.constexpr,
    KEEP_A: tl.constexpr,
    ASM: tl.constexpr,
    PF: tl.constexpr,
    L: tl.constexpr,
    NP: tl.constexpr,
    BD: tl.constexpr,
    NT: tl.constexpr,
    NL: tl.constexpr,
):
    """One series and BD channels, chunks of L steps in reverse; a step's tile is [1, NT, BD, NL].

    Per chunk: a forward pass from the saved start state keeps h_t of every step in an
    [L, NT, BD, NL] register tile (the step index is a register index, so writing and reading a
    row costs nothing), then a backward pass runs the adjoint step by step and forms every
    gradient. Every value has the full tile's shape (per-channel and per-slot values are loaded
    through broadcast pointers), so no value changes layout. dB, dC go out as one partial per D
    block ([D blocks, B, T, 2, NP]).
    """
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    r, d, n, zero = _tile_index(pid_d, L, BD, NT, NL)
    d_ok = (d < D) & (zero == 0)
    dn_ok = d_ok & (n < N)
    # s_n = 1 and s_od = 1 arrive as unspecialised ints (see _NO_SPEC_BWD).
    st = d * (NP * s_n) + n * s_n
    A2 = tl.load(A2_ptr + st, mask=d_ok, other=0.0)
    A2h = A2 * 0.5
    # q: dL/dh at the end of the chunk being processed (from the later steps).
    if HAS_DHT:
        q = tl.load(dhT_ptr + b * D * N + d * N + n, mask=dn_ok, other=0.0).to(tl.float32)
    else:
        q = tl.zeros([1, NT, BD, NL], dtype=tl.float32)
    dA_acc = tl.zeros([1, NT, BD, NL], dtype=tl.float32)
    x_p = x_ptr + b * s_xb + d * s_xd
    dt_p = dt_ptr + b * s_db + d * s_dd
    dy_p = dy_ptr + b * s_yb + d * s_yd
    bc_p = bc_ptr + b * T * (2 * NP) + n * s_n + d * 0
    # dx, ddt: [B, T, D] contiguous; the dB, dC partials: [D blocks, B, T, 2, NP] contiguous.
    out_p = b * T * D + d * s_od
    part_p = dbc_ptr + (pid_d * n_series + b) * T * (2 * NP) + n * s_n
    n_chunks = tl.cdiv(T, L)
    # [L, 1, BD, 1] tiles of a chunk's x, dt, dy and its saved start state, loaded one chunk
    # ahead (DRAM latency). Zero past T, where dt = 0 and x = 0 make a step the identity
    # (a_t = 1, u_t = 0); before t = 0 (the load after the last chunk) masked off.
    t0 = (n_chunks - 1) * L
    t_ok = (t0 + r < T) & (d < D)
    x_n = tl.load(x_p + (t0 + r) * s_xt, mask=t_ok, other=0.0)
    dt_n = tl.load(dt_p + (t0 + r) * s_dt, mask=t_ok, other=0.0)
    dy_n = tl.load(dy_p + (t0 + r) * s_yt, mask=t_ok, other=0.0)
    hs_n = tl.load(hs_ptr + (b * n_chunks + n_chunks - 1) * D * NP + st, mask=d_ok, other=0.0)
    # Lane l prefetches row l mod L of the chunk PF chunks before this one (the B_t, C_t rows,
    # one 128-byte line each at NP = 16) into L1: the per-step loads then wait on L1, not L2.
    lane = tl.arange(0, BD)[None, None, :, None] % L
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        t0 = c * L
        if PF > 0:
            t_pf = tl.maximum(t0 - PF * L + lane, 0)
            _prefetch_l1(bc_ptr + b * T * (2 * NP) + t_pf * (2 * NP), ASM)
        x_c = x_n.to(tl.float32)
        dt_c = dt_n.to(tl.float32)
        dy_c = dy_n.to(tl.float32)
        h_start = hs_n
        t_ok = (t0 - L + r >= 0) & (d < D)
        x_n = tl.load(x_p + (t0 - L + r) * s_xt, mask=t_ok, other=0.0)
        dt_n = tl.load(dt_p + (t0 - L + r) * s_dt, mask=t_ok, other=0.0)
        dy_n = tl.load(dy_p + (t0 - L + r) * s_yt, mask=t_ok, other=0.0)
        c_n = tl.maximum(c - 1, 0)
        hs_n = tl.load(hs_ptr + (b * n_chunks + c_n) * D * NP + st, mask=d_ok, other=0.0)

        # Forward over the chunk: h_t of every step, kept in registers. Past T, dt = 0 and
        # x = 0 make the step the identity (a_t = 1, u_t = 0).
        h = h_start
        H = tl.zeros([L, NT, BD, NL], dtype=tl.float32)
        if KEEP_A:
            Ka = tl.zeros([L, NT, BD, NL], dtype=tl.float32)
        for j in tl.static_range(L):
            # (A tensor comparison: the interpreter turns bool & python-bool into int32.)
            ok = zero + (t0 + j) < T
            dt_j = tl.sum(tl.where(r == j, dt_c, -0.0), axis=0, keep_dims=True)
            x_j = tl.sum(tl.where(r == j, x_c, -0.0), axis=0, keep_dims=True)
            B_j = tl.load(bc_p + (t0 + j) * (2 * NP), mask=d_ok & ok, other=0.0)
            a = tl.exp2(dt_j * A2)
            h = a * h + (dt_j * x_j) * B_j
            H = tl.where(r == j, h, H)
            if KEEP_A:
                Ka = tl.where(r == j, a, Ka)

        # Backward over the chunk: q_t = dL/dh_{t-1} = a_t (C_t dy_t + q_{t+1}); g_t = dL/dh_t.
        for jj in tl.static_range(L):
            jr = L - 1 - jj
            ok = zero + (t0 + jr) < T
            dt_j = tl.sum(tl.where(r == jr, dt_c, -0.0), axis=0, keep_dims=True)
            x_j = tl.sum(tl.where(r == jr, x_c, -0.0), axis=0, keep_dims=True)
            dy_j = tl.sum(tl.where(r == jr, dy_c, -0.0), axis=0, keep_dims=True)
            B_j = tl.load(bc_p + (t0 + jr) * (2 * NP), mask=d_ok & ok, other=0.0)
            C_j = tl.load(bc_p + (t0 + jr) * (2 * NP) + NP, mask=d_ok & ok, other=0.0)
            h_j = tl.sum(tl.where(r == jr, H, -0.0), axis=0, keep_dims=True)
            if jr == 0:
                h_prev = h_start
            else:
                h_prev = tl.sum(tl.where(r == jr - 1, H, -0.0), axis=0, keep_dims=True)
            if KEEP_A:
                a = tl.sum(tl.where(r == jr, Ka, -0.0), axis=0, keep_dims=True)
            else:
                # exp2((2 dt) (A2 / 2)) is exp2(dt A2) exactly, but not an expression the compiler
                # can merge with the forward pass's (which would keep all L rows of a alive).
                a = tl.exp2((dt_j + dt_j) * A2h)
            g = C_j * dy_j + q
            q = a * g
            # dL/d(dt A) = g_t a_t h_{t-1}.
            gh = g * (a * h_prev)
            dA_acc += dt_j * gh
            # dx_t = dt_t sum_n B_t g_t; ddt_t = sum_n (x_t B_t g_t + A gh_t).
            # (A gh = ln 2 A2 gh: the factor goes on the sum.)
            sBg = tl.sum(tl.sum(B_j * g, axis=1, keep_dims=True), axis=3, keep_dims=True)
            sAgh = tl.sum(tl.sum(A2 * gh, axis=1, keep_dims=True), axis=3, keep_dims=True)
            ddt_j = x_j * sBg + 0.6931471805599453 * sAgh
            m_td = (d < D) & (d * 0 + (t0 + jr) < T)
            o_p = out_p + (t0 + jr) * D
            tl.store(dx_ptr + o_p, (dt_j * sBg).to(dx_ptr.dtype.element_ty), mask=m_td)
            tl.store(ddt_ptr + o_p, ddt_j.to(ddt_ptr.dtype.element_ty), mask=m_td)
            # dB_t = sum_d dt_t x_t g_t; dC_t = sum_d dy_t h_t (this block's channels).
            dB_j = tl.sum((dt_j * x_j) * g, axis=2, keep_dims=True)
            dC_j = tl.sum(dy_j * h_j, axis=2, keep_dims=True)
            m_tn = n * 0 + (t0 + jr) < T
            tl.store(part_p + (t0 + jr) * (2 * NP), dB_j, mask=m_tn)
            tl.store(part_p + (t0 + jr) * (2 * NP) + NP, dC_j, mask=m_tn)
    tl.store(dh0_ptr + b * D * N + d * N + n, q, mask=dn_ok)
    tl.store(dA_ptr + b * D * N + d * N + n, dA_acc, mask=dn_ok)


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None) -> None:
    if x.dim() != 3 or dt.shape != x.shape:
        raise ValueError(f"x and dt must be [B, T, D]; got {tuple(x.shape)}, {tuple(dt.shape)}")
    batch, steps, width = x.shape
    if A.dim() != 2 or A.shape[0] != width:
        raise ValueError(f"A must be [D, N] with D = {width}; got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (batch, steps, n):
            raise ValueError(
                f"{name} must be [B, T, N] = {(batch, steps, n)}; got {tuple(t.shape)}"
            )
    if h0 is not None and tuple(h0.shape) != (batch, width, n):
        raise ValueError(f"h0 must be [B, D, N] = {(batch, width, n)}; got {tuple(h0.shape)}")
    if not x.is_cuda and not _interpreting():
        raise ValueError("selective_scan_chunk needs CUDA tensors (or TRITON_INTERPRET=1)")


def _segments(steps: int, warps: int, device: torch.device, save: bool) -> int:
    """Steps per segment of the forward: whole chunks, as few segments as fill the GPU.

    `warps`: the warps of one segment's launch. A second segment costs a second evaluation of
    every a_t (the local pass), so segments are added only while the GPU has fewer than
    FWD_WARPS_PER_SM (FWD_WARPS_PER_SM_SAVE when saving states) warps per multiprocessor.
    """
    if _interpreting():
        # Two chunks, so the tests cover the segment carry.
        return 2 * CHUNK
    per_sm = FWD_WARPS_PER_SM_SAVE if save else FWD_WARPS_PER_SM
    target = per_sm * torch.cuda.get_device_properties(device).multi_processor_count
    n_seg = max(1, min(triton.cdiv(steps, CHUNK), target // max(1, warps)))
    return triton.cdiv(triton.cdiv(max(steps, 1), n_seg), CHUNK) * CHUNK


def _pack(A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """A log2(e) as [D, NP] and B, C as one [B, T, 2, NP] buffer, float32, zero-padded to NP.

    One contiguous float32 row per step: the kernels read B_t and C_t at constant offsets from
    one address, with no masks and no bf16 unpacking in the loop (the B, C bytes are 1/16 of x's
    at N = 16, so the copy is cheap). The autograd function packs once and keeps the result for
    the backward.
    """
    width, n = A.shape
    batch, steps, _ = B.shape
    np2 = _np(n)
    dev = B.device
    if np2 == n:
        # Every element is written below (tests fill _empty's buffers with NaN to check that).
        A2 = (A.float() * 1.4426950408889634).contiguous()
        bc = _empty(batch, steps, 2, n, device=dev, dtype=torch.float32)
    else:
        A2 = torch.zeros(width, np2, device=dev, dtype=torch.float32)
        A2[:, :n] = A.float() * 1.4426950408889634
        bc = torch.zeros(batch, steps, 2, np2, device=dev, dtype=torch.float32)
    bc[:, :, 0, :n] = B
    bc[:, :, 1, :n] = C
    return A2, bc


def _forward(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor | None,
    save: bool,
    cfg: _Config | None = None,
    seg_steps: int | None = None,
    packed: tuple[Tensor, Tensor] | None = None,
    pf: int | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """y [B, T, D], h_T [B, D, N] and, if `save`, the chunk-start states [B, T/CHUNK, D, NP].

    One launch walks the whole sequence when series x channels fill the GPU; otherwise segments
    run in parallel: a local pass (zero start) gives each segment's end state, a carry pass chains
    them into true start states, and the full pass writes y.
    """
    batch, steps, width = x.shape
    n = A.shape[1]
    cfg = cfg or _fwd_config(width, n, save)
    if pf is None:
        pf = FWD_PREFETCH_SAVE if save else FWD_PREFETCH
    np2 = _np(n)
    A2, bc = packed or _pack(A, B, C)
    dev = x.device
    n_dblocks = triton.cdiv(width, cfg.BD)
    seg = seg_steps or _segments(steps, n_dblocks * batch * cfg.warps, dev, save)
    # Segments start on chunk boundaries.
    seg = triton.cdiv(seg, cfg.L) * cfg.L
    n_seg = max(1, triton.cdiv(steps, seg))
    y = _empty(batch, steps, width, device=dev, dtype=x.dtype)
    hT = _empty(batch, width, n, device=dev, dtype=x.dtype if h0 is None else h0.dtype)
    n_chunks = triton.cdiv(steps, CHUNK)
    hs = _empty(batch, n_chunks, width, np2, device=dev, dtype=torch.float32) if save else None
    # Segment start states, and the local end states and summed dt of all segments but the last.
    hseg = _empty(batch, n_seg, width, np2, device=dev, dtype=torch.float32)
    hloc = _empty(batch, n_seg, width, np2, device=dev, dtype=torch.float32)
    sdt = _empty(batch, n_seg, width, device=dev, dtype=torch.float32)
    strides = [*x.stride(), *dt.stride(), *y.stride()]
    if save and cfg.L != CHUNK:
        raise ValueError(f"the saved states are {CHUNK} steps apart; got a tile of {cfg.L} steps")
    meta = {"L": cfg.L, "NP": np2, "BD": cfg.BD, "ASM": not _interpreting(), "PF": pf}
    if n_seg > 1:
        _fwd_kernel[(n_dblocks, batch, n_seg - 1)](
            x, dt, A2, bc, hloc, y, hT, hT, sdt, steps, width, n, seg, n_seg, *strides,
            LOCAL=True, SAVE=False, num_warps=cfg.warps, **meta,
        )  # fmt: skip
    _carry_kernel[(n_dblocks, batch)](
        A2, h0.contiguous() if h0 is not None else hT, hloc, sdt, hseg, width, n, n_seg,
        HAS_H0=h0 is not None, NP=np2, BD=cfg.BD, num_warps=cfg.warps,
    )  # fmt: skip
    _fwd_kernel[(n_dblocks, batch, n_seg)](
        x, dt, A2, bc, hseg, y, hT, hs if hs is not None else hT, sdt, steps, width, n, seg,
        n_seg, *strides, LOCAL=False, SAVE=save, num_warps=cfg.warps, **meta,
    )  # fmt: skip
    return y, hT, hs


def _backward(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    hs: Tensor,
    dy: Tensor,
    dhT: Tensor | None,
    cfg: _Config | None = None,
    keep_a: bool = KEEP_A,
    maxnreg: int | None = BWD_MAXNREG,
    packed: tuple[Tensor, Tensor] | None = None,
    pf: int = BWD_PREFETCH,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """dx, ddt [B, T, D]; dA [D, N]; dB, dC [B, T, N]; dh0 [B, D, N] (float32)."""
    batch, steps, width = x.shape
    n = A.shape[1]
    cfg = cfg or _bwd_config(width, n)
    np2 = _np(n)
    if cfg.L != CHUNK or tuple(hs.shape) != (batch, triton.cdiv(steps, CHUNK), width, np2):
        raise ValueError(f"saved states {tuple(hs.shape)} do not match chunks of {CHUNK} steps")
    A2, bc = packed or _pack(A, B, C)
    n_dblocks = triton.cdiv(width, cfg.BD)
    dev = x.device
    dx = _empty(batch, steps, width, device=dev, dtype=x.dtype)
    ddt = _empty(batch, steps, width, device=dev, dtype=dt.dtype)
    dA_part = _empty(batch, width, n, device=dev, dtype=torch.float32)
    dbc_part = _empty(n_dblocks, batch, steps, 2, np2, device=dev, dtype=torch.float32)
    dh0 = _empty(batch, width, n, device=dev, dtype=torch.float32)
    _bwd_kernel[(n_dblocks, batch)](
        x, dt, A2, bc, hs, dy, dhT.contiguous() if dhT is not None else dh0, dx, ddt, dA_part,
        dbc_part, dh0, steps, width, n, batch, *x.stride(), *dt.stride(), *dy.stride(), 1, 1,
        HAS_DHT=dhT is not None, KEEP_A=keep_a, ASM=not _interpreting(), PF=pf, L=cfg.L,
        NP=np2, BD=cfg.BD, NT=cfg.NT, NL=cfg.NL, num_warps=cfg.warps,
        **({} if maxnreg is None else {"maxnreg": maxnreg}),
    )  # fmt: skip
    # Fixed-order sums over series (dA) and D blocks (dB, dC): deterministic.
    dbc = dbc_part.sum(0)
    return dx, ddt, dA_part.sum(0), dbc[:, :, 0, :n], dbc[:, :, 1, :n], dh0


class _SelectiveScanChunk(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        save: bool,
        x: Tensor,
        dt: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        h0: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        packed = _pack(A, B, C)
        y, hT, hs = _forward(x, dt, A, B, C, h0, save, packed=packed)
        if save:
            ctx.save_for_backward(x, dt, A, B, C, hs, *packed)
            ctx.h0_dtype = None if h0 is None else h0.dtype
        return y, hT

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None, dhT: Tensor | None) -> tuple[Tensor | None, ...]:
        x, dt, A, B, C, hs, A2, bc = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(x)
        dx, ddt, dA, dB, dC, dh0 = _backward(x, dt, A, B, C, hs, dy, dhT, packed=(A2, bc))
        return (
            None,
            dx,
            ddt,
            dA.to(A.dtype),
            dB.to(B.dtype),
            dC.to(C.dtype),
            None if ctx.h0_dtype is None else dh0.to(ctx.h0_dtype),
        )


def selective_scan_chunk(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """x, dt [B, T, D]; A [D, N]; B, C [B, T, N]; h0 [B, D, N] or None (zeros).

    Returns y [B, T, D] (x's dtype) and the final state h_T [B, D, N] (h0's dtype, else x's).
    Same signature and semantics as reference.selective_scan; differentiable in every input.
    """
    _check(x, dt, A, B, C, h0)
    # ctx.needs_input_grad stays True under torch.no_grad(): decide here whether to save states.
    inputs = (x, dt, A, B, C) if h0 is None else (x, dt, A, B, C, h0)
    save = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    y, hT = _SelectiveScanChunk.apply(save, x, dt, A, B, C, h0)
    return y, hT
