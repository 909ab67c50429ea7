"""RWKV-7 state update on the GPU: correctness at full size, then timings (one section of
bench/kernels.py; `python -m bench.rwkv7` prints the table on its own).

Checks: every kernel on the main shape (B=64, T=4096, H=4, K=64, bfloat16, and float32 for ours)
against the float64 reference run on the first two series (series are independent, so this is the
full-length recurrence), output, final state and all gradients. Timings (bench/common.time_ms:
CUDA events, median, inputs rotated among 3 copies): forward and forward+backward of the eager
reference loop, the reference loop over a torch.compile'd step, our chunked and fused-recurrent
kernels and fla's chunk_rwkv7; the single step for S series in microseconds, with and without
CUDA graphs, ours against fla's fused_recurrent_rwkv7 and the eager reference step.

Floor bytes: forward reads r, log_w, k, v, a, b once and writes y and S_T; forward+backward also
reads dy and writes the six input gradients; the step reads and writes the state (float32) and
reads its six inputs. GB/s = floor bytes / time, %copy = that over the measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.common import copy_bandwidth_gbps, fmt, progress, rel_err, time_ms
from kernels.rwkv7 import chunk
from kernels.rwkv7.chunk import rwkv7_chunk
from kernels.rwkv7.fused_recurrent import rwkv7_fused_recurrent, rwkv7_step_fused
from kernels.rwkv7.reference import rwkv7_scan, rwkv7_step

__all__ = ["rows"]

BATCH, HEADS, SIZE = 64, 4, 64
MAIN_T = 4096
STEPS = (96, 512, 4096, 16384)
SERIES = (1, 1024, 16384)
COPIES = 3
# Series checked against the float64 reference (its autograd keeps every step's state).
CHECKED = 2
# Where the benchmark runs (a CPU smoke test of this script swaps it).
DEVICE = "cuda"

Scan = Callable[..., tuple[Tensor, Tensor]]


def _inputs(batch: int, steps: int, dtype: torch.dtype, seed: int) -> list[Tensor]:
    """r, log_w, k, v, a, b [B, T, H, K] in the model's ranges (log_w in (-0.61, 0))."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    shape = (batch, steps, HEADS, SIZE)

    def randn() -> Tensor:
        return torch.randn(shape, generator=g, device=DEVICE)

    r, k, v = randn(), randn(), randn()
    log_w = -math.exp(-0.5) * torch.rand(shape, generator=g, device=DEVICE)
    kk = F.normalize(randn(), dim=-1)
    iclr = torch.rand(shape, generator=g, device=DEVICE)
    return [x.to(dtype) for x in (r, log_w, k, v, -kk, kk * iclr)]


def _fla() -> tuple[Scan, Scan]:
    """fla's chunk_rwkv7 and fused_recurrent_rwkv7 in our layout (state [B, H, V, K])."""
    from fla.ops.rwkv7 import chunk_rwkv7, fused_recurrent_rwkv7

    def fla_chunk(*xs: Tensor) -> tuple[Tensor, Tensor]:
        # fla: w is the log decay, state [B, H, K, V]; scale 1 as in RWKV-7.
        y, S = chunk_rwkv7(*xs, scale=1.0, initial_state=None, output_final_state=True)
        return y, S.transpose(-1, -2)

    def fla_step(S_kv: Tensor, *xs: Tensor) -> tuple[Tensor, Tensor]:
        """S_kv [B, H, K, V] (fla's layout); xs [B, H, K]."""
        y, S = fused_recurrent_rwkv7(
            *(x[:, None] for x in xs), scale=1.0, initial_state=S_kv, output_final_state=True
        )
        return y[:, 0], S

    return fla_chunk, fla_step


def _grads(fn: Scan, xs: list[Tensor], dy: Tensor, dS: Tensor) -> list[Tensor]:
    """[y, S_T, dr, dlog_w, dk, dv, da, db] for the loss <y, dy> + <S_T, dS>."""
    leaves = [x.detach().requires_grad_() for x in xs]
    y, S = fn(*leaves)
    gs = torch.autograd.grad((y, S), leaves, (dy, dS.to(S.dtype)))
    return [y.detach(), S.detach(), *gs]


_REFERENCE: dict[torch.dtype, list[Tensor]] = {}


def _check(impls: dict[str, Scan], dtype: torch.dtype) -> dict[str, list[float]]:
    """Relative errors against float64 for each impl: [y, S_T, dr, dlog_w, dk, dv, da, db]."""
    xs = _inputs(BATCH, MAIN_T, dtype, seed=1)
    g = torch.Generator(device=DEVICE).manual_seed(2)
    dy = torch.randn(xs[0].shape, generator=g, device=DEVICE).to(dtype)
    dS = torch.randn(BATCH, HEADS, SIZE, SIZE, generator=g, device=DEVICE)
    # The float64 loop takes seconds; the same inputs give the same reference for every variant.
    if dtype not in _REFERENCE:
        _REFERENCE[dtype] = _grads(
            rwkv7_scan,
            [x[:CHECKED].double() for x in xs],
            dy[:CHECKED].double(),
            dS[:CHECKED].double(),
        )
    ref = _REFERENCE[dtype]
    errs = {}
    for name, fn in impls.items():
        got = _grads(fn, xs, dy, dS)
        errs[name] = [rel_err(want, have[:CHECKED]) for want, have in zip(ref, got, strict=True)]
        del got
    return errs


def _time_scan(fn: Scan, steps: int, dtype: torch.dtype, backward: bool, reps: int) -> float:
    sets = []
    for i in range(COPIES):
        xs = _inputs(BATCH, steps, dtype, seed=10 + i)
        if backward:
            xs = [x.requires_grad_() for x in xs]
        dy = torch.randn_like(xs[0])
        sets.append((xs, dy))

    def run(arg: tuple[list[Tensor], Tensor]) -> None:
        xs, dy = arg
        y, _ = fn(*xs)
        if backward:
            torch.autograd.grad(y, xs, dy)

    ms = time_ms(run, sets, warmup=1 if reps < 5 else 3, reps=reps)
    del sets
    torch.cuda.empty_cache()
    return ms


def _scan_bytes(steps: int, dtype: torch.dtype, backward: bool) -> int:
    n = BATCH * steps * HEADS * SIZE * torch.finfo(dtype).bits // 8
    state = BATCH * HEADS * SIZE * SIZE * torch.finfo(dtype).bits // 8
    return 14 * n + state if backward else 7 * n + state


def _compiled_reference() -> Scan:
    # Each T gives the step's sliced inputs new strides and the first step a state without
    # gradient: a dozen specialisations across the table, over dynamo's default limit of 8.
    torch._dynamo.config.recompile_limit = 64
    step = torch.compile(rwkv7_step, fullgraph=True, dynamic=False)

    def scan(r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor) -> Any:
        batch, steps, heads, size = r.shape
        S = r.new_zeros(batch, heads, size, size)
        ys = []
        for t in range(steps):
            y, S = step(S, r[:, t], log_w[:, t], k[:, t], v[:, t], a[:, t], b[:, t])
            ys.append(y)
        return torch.stack(ys, dim=1), S

    return scan


def _row(
    op: str,
    impl: str,
    steps: int,
    pas: str,
    ms: float | None,
    nbytes: int,
    copy: float,
    err: float | None,
    note: str = "",
    unit: str = "ms",
) -> dict[str, Any]:
    gbps = None if ms is None else nbytes / (ms * 1e-3) / 1e9
    return {
        "op": op,
        "impl": impl,
        "T": steps,
        "pass": pas,
        unit: ms if ms is None or unit == "ms" else ms * 1e3,
        "GB/s": gbps,
        "%copy": None if gbps is None else 100 * gbps / copy,
        "rel_err": err,
        "note": note,
    }


def _step_rows(copy: float, fla_step: Scan) -> list[dict[str, Any]]:
    out = []
    for series in SERIES:
        g = torch.Generator(device=DEVICE).manual_seed(series)
        sets = []
        for _ in range(COPIES):
            S = torch.randn(series, HEADS, SIZE, SIZE, generator=g, device=DEVICE)
            xs = [x[:, 0].float() for x in _inputs(series, 1, torch.float32, seed=series)]
            sets.append([S, *xs])
        nbytes = 2 * sets[0][0].numel() * 4 + 7 * sets[0][1].numel() * 4
        want = rwkv7_step(*(x.double() for x in sets[0]))
        impls: dict[str, Callable[[list[Tensor]], tuple[Tensor, Tensor]]] = {
            "reference": lambda xs: rwkv7_step(*xs),
            "triton": lambda xs: rwkv7_step_fused(*xs),
            "fla fused_recurrent": lambda xs: fla_step(xs[0].transpose(-1, -2), *xs[1:]),
        }

        def fla_kv(xs: list[Tensor]) -> object:
            return fla_step(*xs)

        for name, fn in impls.items():
            with torch.no_grad():
                y, S_new = fn(sets[0])
            if name.startswith("fla"):
                S_new = S_new.transpose(-1, -2)
            err = max(rel_err(want[0], y), rel_err(want[1], S_new))
            # fla reads its state as [B, H, K, V]: give it that layout outside the timed region.
            args = sets
            call: Callable[[list[Tensor]], object] = fn
            if name.startswith("fla"):
                args = [[xs[0].transpose(-1, -2).contiguous(), *xs[1:]] for xs in sets]
                call = fla_kv
            for graph in (False, True):
                note = f"S={series} series, " + ("CUDA graph replay" if graph else "eager launch")
                with torch.no_grad():
                    if not graph:
                        ms: float | None = time_ms(call, args, warmup=3, reps=50)
                    else:
                        # A capture that fails is a result for this table (fla's kernels were not
                        # written for capture), recorded as such rather than ending the run.
                        try:
                            ms = _graph_ms(call, args)
                        except RuntimeError as exc:
                            ms, note = None, f"{note} failed: {exc}"[:160]
                out.append(_row("rwkv7", name, 1, "step", ms, nbytes, copy, err, note, "us"))
                progress(out[-1])
    return out


def _graph_ms(fn: Callable[[list[Tensor]], object], sets: list[list[Tensor]]) -> float:
    """Median ms of replaying a CUDA graph of fn, one graph per input copy."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for xs in sets:
            fn(xs)
    torch.cuda.current_stream().wait_stream(stream)
    graphs = []
    for xs in sets:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(xs)
        graphs.append(graph)
    return time_ms(lambda gr: gr.replay(), graphs, warmup=3, reps=100)


def rows(
    quick: bool = False,
    sections: tuple[str, ...] = ("check", "scan", "step"),
    steps_list: tuple[int, ...] = STEPS,
    impl_names: tuple[str, ...] | None = None,
) -> list[dict[str, Any]]:
    """Checks at full size, then the timing table (quick: main shape only, no eager/compile)."""
    copy = copy_bandwidth_gbps()
    fla_chunk, fla_step = _fla()
    ours: dict[str, Scan] = {
        "triton chunk": rwkv7_chunk,
        "triton fused_recurrent": rwkv7_fused_recurrent,
    }
    run_checks = "check" in sections
    errs = _check({**ours, "fla chunk_rwkv7": fla_chunk}, torch.bfloat16) if run_checks else {}
    errs32 = _check(ours, torch.float32) if run_checks else {}
    out: list[dict[str, Any]] = []
    names = ["y", "S_T", "dr", "dlog_w", "dk", "dv", "da", "db"]
    for label, table in (("bf16", errs), ("fp32", errs32)):
        for name, e in table.items():
            worst = max(range(len(e)), key=lambda i: e[i])
            detail = " ".join(f"{n}={x:.1e}" for n, x in zip(names, e, strict=True))
            out.append(
                {
                    "op": "rwkv7 check",
                    "impl": f"{name} {label}",
                    "T": MAIN_T,
                    "pass": "fwd+bwd",
                    "ms": None,
                    "GB/s": None,
                    "%copy": None,
                    "rel_err": e[worst],
                    "note": detail,
                }
            )
            progress(out[-1])
    dtype = torch.bfloat16
    impls: dict[str, Scan] = {**ours, "fla chunk_rwkv7": fla_chunk}
    if not quick:
        impls["eager reference"] = rwkv7_scan
        impls["compiled step (reference loop)"] = _compiled_reference()
    if impl_names is not None:
        impls = {n: f for n, f in impls.items() if n in impl_names}
    timed_steps = ((MAIN_T,) if quick else steps_list) if "scan" in sections else ()
    for steps in timed_steps:
        for name, fn in impls.items():
            slow = name in ("eager reference", "compiled step (reference loop)")
            if slow and steps > MAIN_T:
                # ~4x the T=4096 time and, with backward, every step's state kept: not worth it.
                continue
            note = ""
            if name == "compiled step (reference loop)":
                note = (
                    "torch.compile(rwkv7_step) in the Python loop (a whole-loop compile unrolls T)"
                )
            for backward in (False, True):
                reps = (2 if steps >= MAIN_T else 3) if slow else 20
                ms = _time_scan(fn, steps, dtype, backward, reps)
                # Error from the check above: y and S_T for fwd, everything for fwd+bwd.
                found = errs.get(name)
                err = None
                if found is not None and steps == MAIN_T:
                    err = max(found if backward else found[:2])
                pas = "fwd+bwd" if backward else "fwd"
                nbytes = _scan_bytes(steps, dtype, backward)
                out.append(_row("rwkv7", name, steps, pas, ms, nbytes, copy, err, note))
                progress(out[-1])
    if "step" in sections:
        out.extend(_step_rows(copy, fla_step))
    out.append({"op": "copy", "impl": "torch copy_", "GB/s": copy, "note": "read + write"})
    return out


# Settings of kernels/rwkv7/chunk.py set together, one variant each, for --tune and --resources.
# Chunks of 32 or 64 steps halve or quarter the chunks the two sequential passes walk; the
# per-chunk backward keeps 16-step sub-chunks (CHUNK_BWD) or takes whole 32-step chunks. Warps
# and pipelining stages are those that keep each kernel's local memory (spills) and shared memory
# lowest in the compile report (--resources). The last row is the shipped setting; it was the
# fastest on the H200 (docs/BENCHMARKS.md, 2026-11-29 session 7).
VARIANTS: list[dict[str, Any]] = [
    {"CHUNK": 32, "CHUNK_BWD": 16, "PREP_WARPS": 4, "STATE_WARPS": 8},
    {
        "CHUNK": 32,
        "CHUNK_BWD": 32,
        "PREP_WARPS": 4,
        "STATE_WARPS": 8,
        "CHUNK_BWD_WARPS": {"tf32": 8},
    },
    {"CHUNK": 64, "CHUNK_BWD": 16, "PREP_WARPS": 8, "STATE_WARPS": 8, "STATE_STAGES": 2},
    {"CHUNK": 16, "CHUNK_BWD": 16, "PREP_WARPS": 2, "STATE_WARPS": 4},
]
# --resources also reports the setting of the earlier chunk-32 timing (forward 9.5 ms on
# 2026-11-29: the shipped warps with CHUNK = 32).
EARLIER = [{"CHUNK": 32, "CHUNK_BWD": 32, "PREP_WARPS": 2, "STATE_WARPS": 4}]


def _label(settings: dict[str, Any]) -> str:
    return " ".join(f"{a}={v}" for a, v in settings.items())


def _with_settings(settings: dict[str, Any], fn: Callable[[], Any]) -> Any:
    old = {attr: getattr(chunk, attr) for attr in settings}
    for attr, value in settings.items():
        setattr(chunk, attr, value)
    try:
        return fn()
    finally:
        for attr, value in old.items():
            setattr(chunk, attr, value)


def _kernel_ms(steps: int) -> dict[str, float]:
    """Mean ms per launch of each chunked kernel in a bfloat16 forward+backward (torch.profiler)."""
    xs = [x.requires_grad_() for x in _inputs(BATCH, steps, torch.bfloat16, seed=20)]
    dy = torch.randn_like(xs[0])
    for _ in range(2):
        torch.autograd.grad(rwkv7_chunk(*xs)[0], xs, dy)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            torch.autograd.grad(rwkv7_chunk(*xs)[0], xs, dy)
        torch.cuda.synchronize()
    names = {
        "_prep_kernel": "prep",
        "_fwd_kernel": "fwd state",
        "_bwd_state_kernel": "bwd state",
        "_bwd_chunk_kernel": "chunk bwd",
    }
    return {
        names[e.key]: e.device_time_total / e.count / 1e3
        for e in prof.key_averages()
        if e.key in names
    }


def _tune() -> list[str]:
    """Forward and forward+backward of the chunked kernels at the main shape for each of
    VARIANTS, the time of each kernel (profiler), and a check against float64 (bfloat16 inputs),
    since chunk sizes and warps change the generated code. Every variant is timed twice, in two
    rounds over all of them, so the spread between rounds sits beside the differences."""
    lines = []
    first: list[tuple[float, float]] = []

    def times() -> tuple[float, float]:
        fwd = _time_scan(rwkv7_chunk, MAIN_T, torch.bfloat16, False, 20)
        both = _time_scan(rwkv7_chunk, MAIN_T, torch.bfloat16, True, 20)
        return fwd, both

    for settings in VARIANTS:

        def measure() -> tuple[float, float, dict[str, float], list[float]]:
            fwd, both = times()
            kernels = _kernel_ms(MAIN_T)
            errs = _check({"chunk": rwkv7_chunk}, torch.bfloat16)["chunk"]
            return fwd, both, kernels, errs

        fwd, both, kernels, errs = _with_settings(settings, measure)
        first.append((fwd, both))
        split = ", ".join(f"{name} {ms:.3f}" for name, ms in kernels.items())
        lines.append(
            f"chunk {_label(settings)}: fwd {fwd:.3f} ms, fwd+bwd {both:.3f} ms at T={MAIN_T} "
            f"(kernels, ms: {split}), worst rel err {max(errs):.2e} (y {errs[0]:.1e})"
        )
        print(lines[-1], file=sys.stderr, flush=True)
    for settings, (fwd, both) in zip(VARIANTS, first, strict=True):
        fwd2, both2 = _with_settings(settings, times)
        lines.append(
            f"chunk {_label(settings)}: fwd {fwd:.3f} / {fwd2:.3f} ms, "
            f"fwd+bwd {both:.3f} / {both2:.3f} ms (rounds 1 / 2)"
        )
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def _resources() -> list[str]:
    """Registers, local-memory (spill) bytes and shared memory per thread block of the chunked
    kernels for bfloat16 inputs at the main shape, compiled for sm_90 without a GPU (Triton's
    compiler and its cuobjdump), for each of VARIANTS and EARLIER."""
    import os
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    # Buffers the kernels keep in float32; every other pointer is a bfloat16 input or output.
    fp32 = {"mats", "ckpt", "dS"}
    kernels = {
        "prep": (chunk._prep_kernel, "PREP_WARPS"),
        "fwd state pass": (chunk._fwd_kernel, "STATE_WARPS"),
        "bwd state pass": (chunk._bwd_state_kernel, "STATE_WARPS"),
        "chunk bwd": (chunk._bwd_chunk_kernel, "CHUNK_BWD_WARPS"),
    }
    lines = [f"triton {triton.__version__}, sm_90, B={BATCH} H={HEADS} K={SIZE} bf16"]
    for settings in VARIANTS + EARLIER:
        for name, (fn, warps_attr) in kernels.items():

            def report(fn: Any = fn, warps_attr: str = warps_attr) -> str:
                bk, bv, _, _ = chunk._sizes(SIZE)
                warps = getattr(chunk, warps_attr)
                warps = warps["tf32"] if isinstance(warps, dict) else warps
                values = {
                    "H": HEADS,
                    "K": SIZE,
                    "BC": chunk.CHUNK,
                    "BT": chunk.CHUNK if fn is not chunk._bwd_chunk_kernel else chunk.CHUNK_BWD,
                    "BK": bk,
                    "BV": bv,
                    "N_SQ": (
                        chunk.CHUNK if fn is not chunk._bwd_chunk_kernel else chunk.CHUNK_BWD
                    ).bit_length()
                    - 2,
                    "PREC": chunk.DOT_PRECISION_BF16,
                    "USE_S0": False,
                    "SAVE": True,
                    "HAS_DS_OUT": True,
                    "STORE_DS0": False,
                }
                sig, consts = {}, {}
                for p in fn.params:
                    if p.is_constexpr:
                        sig[p.name], consts[p.name] = "constexpr", values[p.name]
                    else:
                        sig[p.name] = (
                            "i32" if p.name == "T" else ("*fp32" if p.name in fp32 else "*bf16")
                        )
                src = ASTSource(fn=fn, signature=sig, constexprs=consts)
                options = {"num_warps": warps, "num_stages": chunk.STATE_STAGES}
                compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
                with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                    f.write(compiled.asm["cubin"])
                    f.flush()
                    usage = subprocess.run(
                        [cuobjdump, "-res-usage", f.name], capture_output=True, text=True
                    ).stdout
                res = dict(
                    item.split(":")
                    for line in usage.splitlines()
                    if "REG:" in line
                    for item in line.split()
                )
                return (
                    f"{warps} warps: {res['REG']} registers, {res['STACK']} B stack (spills), "
                    f"{compiled.metadata.shared} B shared"
                )

            lines.append(f"{_label(settings)} {name}: {_with_settings(settings, report)}")
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="main shape only, no eager/compile")
    parser.add_argument("--tune", action="store_true", help="first time the chunked VARIANTS")
    parser.add_argument(
        "--resources",
        action="store_true",
        help="only compile the chunked VARIANTS for sm_90 (no GPU needed) and print registers",
    )
    parser.add_argument("--sections", default="check,scan,step", help="of check, scan, step")
    parser.add_argument("--steps", default=",".join(map(str, STEPS)), help="T values to time")
    parser.add_argument("--impls", default=None, help="comma-separated impl names to time")
    args = parser.parse_args()
    if args.resources:
        for line in _resources():
            print(line)
        return
    tuned = _tune() if args.tune else []
    table = rows(
        quick=args.quick,
        sections=tuple(args.sections.split(",")),
        steps_list=tuple(int(t) for t in args.steps.split(",")),
        impl_names=None if args.impls is None else tuple(args.impls.split(",")),
    )
    for line in tuned:
        print(line)
    cols = ["op", "impl", "T", "pass", "ms", "us", "GB/s", "%copy", "rel_err", "note"]
    print(" | ".join(cols))
    for row in table:
        print(" | ".join(fmt(row.get(c)) for c in cols))


if __name__ == "__main__":
    main()
