"""Diagonal selective scan in Triton, forward and backward, chunked over time.

For series b, channel d and state slot n (see reference.py):

    h_t[d, n] = a_t[d, n] h_{t-1}[d, n] + u_t[d, n],   a_t = exp(dt_t[d] A[d, n]),
    u_t = dt_t[d] B_t[n] x_t[d],                         y_t[d] = sum_n C_t[n] h_t[d, n]

Every program owns one series and BD channels and keeps their [D, N] state in registers; only
y (and, for training, the state at every CHUNK-th step) goes to memory.

- forward, three launches: the sequence is cut into segments of whole chunks that run in
  parallel. A local pass gives each segment's end state from a zero start and its summed dt, a
  carry pass chains them into true segment start states, and the full pass steps through each
  segment from its start state (the state tile [NT, BD, NL] in registers, loads two steps
  ahead), writing y, h_T and, when a gradient is needed, the state at every chunk start
  ([B, ceil(T / CHUNK), D, N], float32);
- backward, grid (D blocks, B): walks the chunks in reverse; a chunk is one [L, NT, BD, NL]
  register tile with the time axis in each thread's registers. It recomputes the chunk's states
  from the saved start state with `tl.associative_scan` over affine maps, runs the adjoint
  recurrence as a second scan (on the time-flipped tile), and writes dx, ddt and dh0 directly,
  dA as one partial per series and dB, dC as one partial per D block (sums over channels other
  programs own); torch adds the partials in a fixed order, so results are deterministic.

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

# Steps per backward chunk: the backward's register tile and the spacing of the saved states,
# which cost ceil(T / 8) * D * N * 4 bytes per series (four times x's bytes in bfloat16 at N = 16).
# Longer chunks spill registers in the backward (a thread holds L x NT x (BD per thread) values
# of five tiles at once).
CHUNK = 8


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


def _config(D: int, N: int, steps: int, lanes_n: int, warps: int, d_per_thread: int) -> _Config:
    np2 = triton.next_power_of_2(N)
    nl = min(np2, lanes_n)
    if _interpreting():
        # The interpreter runs one Python call per scanned element: keep its tiles small.
        warps, d_per_thread = 1, 1
    bd = min((32 // nl) * warps * d_per_thread, triton.next_power_of_2(D))
    return _Config(steps, bd, np2 // nl, nl, max(1, min(warps, bd * nl // 32)))


def _fwd_config(D: int, N: int) -> _Config:
    # All state slots of a channel in one thread: y needs no shuffles (fastest of the layouts
    # timed by bench/selective_scan.py on the H200).
    return _config(D, N, 1, 1, 2, 1)


def _bwd_config(D: int, N: int) -> _Config:
    # Eight lanes over N, four over D: the fastest of the layouts timed on the H200.
    return _config(D, N, CHUNK, 8, 2, 2)


@triton.jit
def _affine(a1, b1, a2, b2):
    # Map (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _affine_excl(a1, b1, ea1, eb1, a2, b2, ea2, eb2):
    # _affine plus (ea, eb), the composite without the last element applied:
    # excl(left then right) = left then excl(right), and excl of one element is the identity.
    return a1 * a2, a2 * b1 + b2, a1 * ea2, ea2 * b1 + eb2


# Strides that are never specialised. Triton turns an int argument equal to 1 into a constant,
# and a load or store whose addresses it then knows to be contiguous gets a register layout of its
# own; converting between that layout and the compute tile's costs more than the access saves.
# Only the channel strides of the forward's [BD] loads stay specialisable: their layout is the
# compute tile's anyway.
_STRIDES = ["s_xb", "s_xt", "s_xd", "s_db", "s_dt", "s_dd", "s_Bb", "s_Bt", "s_Bn", "s_Cb"]
_STRIDES += ["s_Ct", "s_Cn", "s_hb", "s_hd", "s_hn", "s_yb", "s_yt", "s_yd"]
_STRIDES_FWD = [s for s in _STRIDES if s not in ("s_xd", "s_dd", "s_yd")]


@triton.jit
def _tile_index(pid_d, L: tl.constexpr, BD: tl.constexpr, NT: tl.constexpr, NL: tl.constexpr):
    """Step r [L,1,1,1], channel d [1,1,BD,1], slot n [1,NT,1,NL] and zeros of the full tile."""
    r = tl.arange(0, L)[:, None, None, None]
    d = pid_d * BD + tl.arange(0, BD)[None, None, :, None]
    n = tl.arange(0, NL)[None, None, None, :] * NT + tl.arange(0, NT)[None, :, None, None]
    zero = tl.zeros([1, NT, BD, NL], dtype=tl.int32)
    return r, d, n, zero


@triton.jit(do_not_specialize=[*_STRIDES_FWD, "seg_steps", "n_seg"])
def _fwd_kernel(
    x_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
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
    s_Bb,
    s_Bt,
    s_Bn,
    s_Cb,
    s_Ct,
    s_Cn,
    s_hb,
    s_hd,
    s_hn,
    s_yb,
    s_yt,
    s_yd,
    LOCAL: tl.constexpr,
    SAVE: tl.constexpr,
    CHUNK_STEPS: tl.constexpr,
    BD: tl.constexpr,
    NT: tl.constexpr,
    NL: tl.constexpr,
):
    """One segment [seg * seg_steps, +seg_steps) of one series and BD channels, step by step.

    LOCAL: from a zero state; writes the segment's end state to hseg[b, seg] and its summed dt
    to sdt[b, seg] (y is not written). Otherwise: from hseg[b, seg] (the true start state); writes
    y, h_T (last segment) and, if SAVE, the state at every chunk start to hs.
    """
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    seg = tl.program_id(2)
    # The [NT, BD, NL] state tile; slot n = nl * NT + nt.
    d = pid_d * BD + tl.arange(0, BD)[None, :, None]
    n = tl.arange(0, NL)[None, None, :] * NT + tl.arange(0, NT)[:, None, None]
    d_ok = d < D
    n_ok = n < N
    dn_ok = d_ok & n_ok
    st = d * s_hd + n * s_hn
    A2 = tl.load(A_ptr + st, mask=dn_ok, other=0.0).to(tl.float32) * 1.4426950408889634
    hseg_p = hseg_ptr + (b * n_seg + seg) * s_hb + st
    if LOCAL:
        h = tl.zeros([NT, BD, NL], dtype=tl.float32)
        sdt = tl.zeros([1, BD, 1], dtype=tl.float32)
    else:
        h = tl.load(hseg_p, mask=dn_ok, other=0.0)
    t0 = seg * seg_steps
    t1 = tl.minimum(T, t0 + seg_steps)
    x_p = x_ptr + b * s_xb + d * s_xd
    dt_p = dt_ptr + b * s_db + d * s_dd
    B_p = B_ptr + b * s_Bb + n * s_Bn
    C_p = C_ptr + b * s_Cb + n * s_Cn
    y_p = y_ptr + b * s_yb + d * s_yd
    n_chunks = tl.cdiv(T, CHUNK_STEPS)
    # Loads run two steps ahead of the arithmetic, to hide their latency.
    zd = d * 0
    zn = n * 0
    x_1 = tl.load(x_p + t0 * s_xt, mask=d_ok & (zd + t0 < t1), other=0.0)
    dt_1 = tl.load(dt_p + t0 * s_dt, mask=d_ok & (zd + t0 < t1), other=0.0)
    B_1 = tl.load(B_p + t0 * s_Bt, mask=n_ok & (zn + t0 < t1), other=0.0)
    x_2 = tl.load(x_p + (t0 + 1) * s_xt, mask=d_ok & (zd + t0 + 1 < t1), other=0.0)
    dt_2 = tl.load(dt_p + (t0 + 1) * s_dt, mask=d_ok & (zd + t0 + 1 < t1), other=0.0)
    B_2 = tl.load(B_p + (t0 + 1) * s_Bt, mask=n_ok & (zn + t0 + 1 < t1), other=0.0)
    if not LOCAL:
        C_1 = tl.load(C_p + t0 * s_Ct, mask=n_ok & (zn + t0 < t1), other=0.0)
        C_2 = tl.load(C_p + (t0 + 1) * s_Ct, mask=n_ok & (zn + t0 + 1 < t1), other=0.0)
    for t in range(t0, t1):
        x_c = x_1.to(tl.float32)
        dt_c = dt_1.to(tl.float32)
        B_c = B_1.to(tl.float32)
        x_1, dt_1, B_1 = x_2, dt_2, B_2
        x_2 = tl.load(x_p + (t + 2) * s_xt, mask=d_ok & (zd + t + 2 < t1), other=0.0)
        dt_2 = tl.load(dt_p + (t + 2) * s_dt, mask=d_ok & (zd + t + 2 < t1), other=0.0)
        B_2 = tl.load(B_p + (t + 2) * s_Bt, mask=n_ok & (zn + t + 2 < t1), other=0.0)
        if LOCAL:
            sdt += dt_c
            h = tl.exp2(dt_c * A2) * h + (dt_c * x_c) * B_c
        else:
            C_c = C_1.to(tl.float32)
            C_1 = C_2
            C_2 = tl.load(C_p + (t + 2) * s_Ct, mask=n_ok & (zn + t + 2 < t1), other=0.0)
            # SAVE is compile-time, the step test runtime: two ifs keep them apart.
            if SAVE:  # noqa: SIM102
                if t % CHUNK_STEPS == 0:
                    hs_p = hs_ptr + (b * n_chunks + t // CHUNK_STEPS) * s_hb + st
                    tl.store(hs_p, h, mask=dn_ok)
            h = tl.exp2(dt_c * A2) * h + (dt_c * x_c) * B_c
            y = tl.sum(tl.sum(h * C_c, axis=0, keep_dims=True), axis=2, keep_dims=True)
            tl.store(y_p + t * s_yt, y.to(y_ptr.dtype.element_ty), mask=d_ok)
    if LOCAL:
        tl.store(hseg_p, h, mask=dn_ok)
        tl.store(sdt_ptr + (b * n_seg + seg) * D + d, sdt, mask=d_ok)
    elif seg == n_seg - 1:
        tl.store(hT_ptr + b * s_hb + st, h.to(hT_ptr.dtype.element_ty), mask=dn_ok)


@triton.jit(do_not_specialize=["n_seg", "s_hb", "s_hd", "s_hn"])
def _carry_kernel(
    A_ptr,
    h0_ptr,
    hloc_ptr,
    sdt_ptr,
    hseg_ptr,
    D,
    N,
    n_seg,
    s_hb,
    s_hd,
    s_hn,
    HAS_H0: tl.constexpr,
    BD: tl.constexpr,
    NT: tl.constexpr,
    NL: tl.constexpr,
):
    """hseg[b, s] = state at segment s's start: h0, then exp(A sdt[s-1]) hseg[s-1] + hloc[s-1]."""
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    d = pid_d * BD + tl.arange(0, BD)[None, :, None]
    n = tl.arange(0, NL)[None, None, :] * NT + tl.arange(0, NT)[:, None, None]
    d_ok = d < D
    dn_ok = d_ok & (n < N)
    st = d * s_hd + n * s_hn
    A2 = tl.load(A_ptr + st, mask=dn_ok, other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_H0:
        h = tl.load(h0_ptr + b * s_hb + st, mask=dn_ok, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([NT, BD, NL], dtype=tl.float32)
    tl.store(hseg_ptr + b * n_seg * s_hb + st, h, mask=dn_ok)
    for s in range(1, n_seg):
        sdt = tl.load(sdt_ptr + (b * n_seg + s - 1) * D + d, mask=d_ok, other=0.0)
        h_loc = tl.load(hloc_ptr + (b * n_seg + s - 1) * s_hb + st, mask=dn_ok, other=0.0)
        h = tl.exp2(sdt * A2) * h + h_loc
        tl.store(hseg_ptr + (b * n_seg + s) * s_hb + st, h, mask=dn_ok)


_STRIDES_BWD = [*_STRIDES, "n_series"]


@triton.jit(do_not_specialize=_STRIDES_BWD)
def _bwd_kernel(
    x_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    hs_ptr,
    dy_ptr,
    dhT_ptr,
    dx_ptr,
    ddt_ptr,
    dA_ptr,
    dB_ptr,
    dC_ptr,
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
    s_Bb,
    s_Bt,
    s_Bn,
    s_Cb,
    s_Ct,
    s_Cn,
    s_hb,
    s_hd,
    s_hn,
    s_yb,
    s_yt,
    s_yd,
    HAS_DHT: tl.constexpr,
    FLIP: tl.constexpr,
    L: tl.constexpr,
    BD: tl.constexpr,
    NT: tl.constexpr,
    NL: tl.constexpr,
):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    r, d, n, zero = _tile_index(pid_d, L, BD, NT, NL)
    dn_ok = (d < D) & (n < N)
    st = d * s_hd + n * s_hn
    A = tl.load(A_ptr + st, mask=dn_ok, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    # q: dL/dh at the end of the chunk being processed (from the later steps).
    if HAS_DHT:
        q = tl.load(dhT_ptr + b * s_hb + st, mask=dn_ok, other=0.0).to(tl.float32)
    else:
        q = tl.zeros([1, NT, BD, NL], dtype=tl.float32)
    dA_acc = tl.zeros([1, NT, BD, NL], dtype=tl.float32)
    ones = tl.full([L, NT, BD, NL], 1.0, tl.float32)
    zeros = tl.zeros([L, NT, BD, NL], dtype=tl.float32)

    x_p = x_ptr + b * s_xb + d * s_xd
    dt_p = dt_ptr + b * s_db + d * s_dd
    dy_p = dy_ptr + b * s_yb + d * s_yd
    B_p = B_ptr + b * s_Bb + n * s_Bn + zero
    C_p = C_ptr + b * s_Cb + n * s_Cn + zero
    # dx, ddt: [B, T, D] contiguous; dB, dC partials: [D blocks, B, T, N] contiguous.
    out_p = b * T * D + d
    part_p = (pid_d * n_series + b) * T * N + n
    d_ok = d < D
    n_ok = (n < N) & (zero == 0)
    n_chunks = tl.cdiv(T, L)
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        t = c * L + r
        x_c = tl.load(x_p + t * s_xt, mask=(t < T) & d_ok, other=0.0).to(tl.float32)
        dt_c = tl.load(dt_p + t * s_dt, mask=(t < T) & d_ok, other=0.0).to(tl.float32)
        dy_c = tl.load(dy_p + t * s_yt, mask=(t < T) & d_ok, other=0.0).to(tl.float32)
        B_c = tl.load(B_p + t * s_Bt, mask=(t < T) & n_ok, other=0.0).to(tl.float32)
        C_c = tl.load(C_p + t * s_Ct, mask=(t < T) & n_ok, other=0.0).to(tl.float32)
        h_start = tl.load(hs_ptr + (b * n_chunks + c) * s_hb + st, mask=dn_ok, other=0.0)

        # Recompute the chunk's states from its saved start state.
        a = tl.exp2(dt_c * A2)
        dtx = dt_c * x_c
        u = dtx * B_c
        _, h = tl.associative_scan((a, tl.where(r == 0, u + a * h_start, u)), 0, _affine)
        # a_t h_{t-1}, the part of h_t that came through the decay.
        hm = h - u
        dC_part = tl.sum(dy_c * h, axis=2, keep_dims=True)

        # Adjoint, backwards: q_t = dL/dh_{t-1} = a_t (C_t dy_t + q_{t+1}), q at the chunk end
        # folded into the last row. The exclusive part eb_t = q_{t+1} gives g_t = dL/dh_t.
        cdy = C_c * dy_c
        e_b = a * tl.where(r == L - 1, cdy + q, cdy)
        if FLIP:
            # The reverse scan as a forward scan of the time-flipped tile: on the GPU the flips
            # only rename registers, while associative_scan(reverse=True) costs shuffles.
            _, qs, _, eb = tl.associative_scan(
                (tl.flip(a, 0), tl.flip(e_b, 0), ones, zeros), 0, _affine_excl
            )
            qs = tl.flip(qs, 0)
            eb = tl.flip(eb, 0)
        else:
            # The same scan; the interpreter runs tl.flip as slow xor reductions.
            _, qs, _, eb = tl.associative_scan((a, e_b, ones, zeros), 0, _affine_excl, reverse=True)
        g = cdy + tl.where(r == L - 1, q, eb)
        q = tl.sum(tl.where(r == 0, qs, -0.0), axis=0, keep_dims=True)

        # dL/d(dt A) = g_t a_t h_{t-1}.
        gh = g * hm
        dA_acc += tl.sum(gh * dt_c, axis=0, keep_dims=True)
        # dx_t = dt_t sum_n B_t g_t; ddt_t = sum_n (x_t B_t g_t + A gh_t).
        gB = g * B_c
        dx_c = tl.sum(tl.sum(gB * dt_c, axis=1, keep_dims=True), axis=3, keep_dims=True)
        ddt_c = tl.sum(tl.sum(gB * x_c + gh * A, axis=1, keep_dims=True), axis=3, keep_dims=True)
        m_td = (t < T) & (d < D)
        tl.store(dx_ptr + out_p + t * D, dx_c.to(dx_ptr.dtype.element_ty), mask=m_td)
        tl.store(ddt_ptr + out_p + t * D, ddt_c.to(ddt_ptr.dtype.element_ty), mask=m_td)
        dB_part = tl.sum(dtx * g, axis=2, keep_dims=True)
        m_tn = (t < T) & (n < N)
        tl.store(dB_ptr + part_p + t * N, dB_part, mask=m_tn)
        tl.store(dC_ptr + part_p + t * N, dC_part, mask=m_tn)
    tl.store(dh0_ptr + b * s_hb + st, q, mask=dn_ok)
    tl.store(dA_ptr + b * s_hb + st, dA_acc, mask=dn_ok)


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


def _segments(steps: int, programs: int, device: torch.device) -> int:
    """Steps per segment of the forward: enough segments to fill the GPU, whole chunks each."""
    if _interpreting():
        # Two chunks, so the tests cover the segment carry.
        return 2 * CHUNK
    # About 16 programs (32 warps) per multiprocessor.
    target = 16 * torch.cuda.get_device_properties(device).multi_processor_count
    n_seg = max(1, min(triton.cdiv(steps, CHUNK), target // max(1, programs)))
    return triton.cdiv(triton.cdiv(max(steps, 1), n_seg), CHUNK) * CHUNK


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
) -> tuple[Tensor, Tensor, Tensor | None]:
    """y [B, T, D], h_T [B, D, N] and, if `save`, the chunk-start states [B, T/CHUNK, D, N].

    Segments of the sequence run in parallel: a local pass (zero start) gives each segment's end
    state, a carry pass chains them into true start states, and the full pass writes y.
    """
    batch, steps, width = x.shape
    n = A.shape[1]
    cfg = cfg or _fwd_config(width, n)
    A = A.contiguous()
    dev = x.device
    n_dblocks = triton.cdiv(width, cfg.BD)
    seg = seg_steps or _segments(steps, n_dblocks * batch, dev)
    n_seg = max(1, triton.cdiv(steps, seg))
    y = _empty(batch, steps, width, device=dev, dtype=x.dtype)
    hT = _empty(batch, width, n, device=dev, dtype=x.dtype if h0 is None else h0.dtype)
    n_chunks = triton.cdiv(steps, CHUNK)
    hs = _empty(batch, n_chunks, width, n, device=dev, dtype=torch.float32) if save else None
    # Segment start states, and the local end states and summed dt of all segments but the last.
    hseg = _empty(batch, n_seg, width, n, device=dev, dtype=torch.float32)
    hloc = _empty(batch, n_seg, width, n, device=dev, dtype=torch.float32)
    sdt = _empty(batch, n_seg, width, device=dev, dtype=torch.float32)
    strides = [*x.stride(), *dt.stride(), *B.stride(), *C.stride(), width * n, n, 1, *y.stride()]
    meta = {"CHUNK_STEPS": CHUNK, "BD": cfg.BD, "NT": cfg.NT, "NL": cfg.NL}
    ptrs = [x, dt, A, B, C]
    if n_seg > 1:
        grid = (n_dblocks, batch, n_seg - 1)
        _fwd_kernel[grid](
            *ptrs, hloc, y, hT, hT, sdt, steps, width, n, seg, n_seg, *strides,
            LOCAL=True, SAVE=False, num_warps=cfg.warps, **meta,
        )  # fmt: skip
    _carry_kernel[(n_dblocks, batch)](
        A, h0.contiguous() if h0 is not None else hT, hloc, sdt, hseg, width, n, n_seg,
        width * n, n, 1, HAS_H0=h0 is not None, BD=cfg.BD, NT=cfg.NT, NL=cfg.NL,
        num_warps=cfg.warps,
    )  # fmt: skip
    _fwd_kernel[(n_dblocks, batch, n_seg)](
        *ptrs, hseg, y, hT, hs if hs is not None else hT, sdt, steps, width, n, seg, n_seg,
        *strides, LOCAL=False, SAVE=save, num_warps=cfg.warps, **meta,
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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """dx, ddt [B, T, D]; dA [D, N]; dB, dC [B, T, N]; dh0 [B, D, N] (float32)."""
    batch, steps, width = x.shape
    n = A.shape[1]
    cfg = cfg or _bwd_config(width, n)
    if cfg.L != CHUNK or hs.shape[1] != triton.cdiv(steps, CHUNK):
        raise ValueError(f"saved states {tuple(hs.shape)} do not match chunks of {CHUNK} steps")
    A = A.contiguous()
    n_dblocks = triton.cdiv(width, cfg.BD)
    dev = x.device
    dx = _empty(batch, steps, width, device=dev, dtype=x.dtype)
    ddt = _empty(batch, steps, width, device=dev, dtype=dt.dtype)
    dA_part = _empty(batch, width, n, device=dev, dtype=torch.float32)
    dB_part = _empty(n_dblocks, batch, steps, n, device=dev, dtype=torch.float32)
    dC_part = _empty(n_dblocks, batch, steps, n, device=dev, dtype=torch.float32)
    dh0 = _empty(batch, width, n, device=dev, dtype=torch.float32)
    _bwd_kernel[(n_dblocks, batch)](
        x,
        dt,
        A,
        B,
        C,
        hs,
        dy,
        dhT.contiguous() if dhT is not None else dh0,
        dx,
        ddt,
        dA_part,
        dB_part,
        dC_part,
        dh0,
        steps,
        width,
        n,
        batch,
        *x.stride(),
        *dt.stride(),
        *B.stride(),
        *C.stride(),
        width * n,
        n,
        1,
        *dy.stride(),
        HAS_DHT=dhT is not None,
        FLIP=not _interpreting(),
        L=cfg.L,
        BD=cfg.BD,
        NT=cfg.NT,
        NL=cfg.NL,
        num_warps=cfg.warps,
    )
    # Fixed-order sums over series (dA) and D blocks (dB, dC): deterministic.
    return dx, ddt, dA_part.sum(0), dB_part.sum(0), dC_part.sum(0), dh0


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
        y, hT, hs = _forward(x, dt, A, B, C, h0, save)
        if save:
            ctx.save_for_backward(x, dt, A, B, C, hs)
            ctx.h0_dtype = None if h0 is None else h0.dtype
        return y, hT

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None, dhT: Tensor | None) -> tuple[Tensor | None, ...]:
        x, dt, A, B, C, hs = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(x)
        dx, ddt, dA, dB, dC, dh0 = _backward(x, dt, A, B, C, hs, dy, dhT)
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
