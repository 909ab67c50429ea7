"""Diagonal selective scan on the GPU: correctness at full size, then timings (bench/kernels.py).

    python -m bench.selective_scan            # this section alone, printed as a table
    python -m bench.selective_scan --quick    # main shape only, no eager/compile baselines

Checks first: our kernels against the float64 reference loop at the main shape (B=64, T=4096,
D=256, N=16) on bfloat16 inputs (outputs and every gradient; the float32 kernels on the same
values too), at a small odd shape with strided and stride-0 inputs, and the step kernel at
S=16384. Then forward and forward+backward times (CUDA events, median, 3 input copies rotated)
for the eager reference loop, torch.compile of the reference, our Triton kernels and fla's
chunk_hgrn (x, log-gate g [B, T, D]: the same recurrence with N = 1, no B or C), for T in 96,
512, 4096, 16384; and the single-step kernel in microseconds for S in 1, 1024, 16384 series,
launched plainly and replayed from a CUDA graph. GB/s counts the floor bytes: every input read
once and every output written once.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from bench.common import copy_bandwidth_gbps, fmt, rel_err, time_ms
from kernels.selective_scan import chunk
from kernels.selective_scan.chunk import selective_scan_chunk
from kernels.selective_scan.fused_recurrent import selective_scan_step_fused
from kernels.selective_scan.reference import selective_scan, selective_scan_step

__all__ = ["iter_rows", "rows"]

OP = "selective_scan"
BATCH, WIDTH, STATE, MAIN_T = 64, 256, 16, 4096
ALL_T = (96, 512, 4096, 16384)
SERIES = (1, 1024, 16384)
COPIES = 3
# The eager loop's forward+backward keeps T steps of [B, D, N] activations: too slow past this.
EAGER_BWD_MAX_T = 4096
# torch.compile of the whole reference unrolls the T-step loop (minutes to compile at T=4096), so
# the compiled baseline is the reference's step compiled once, driven by the same Python loop.
COMPILE_NOTE = "torch.compile(reference step), Python loop over T"

Row = dict[str, Any]


def _inputs(batch: int, steps: int, dtype: torch.dtype, seed: int) -> list[Tensor]:
    """x, dt [B, T, D]; A [D, N] (float32); B, C [B, T, N]; h0 [B, D, N] (float32), model ranges."""
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, device="cuda")

    def uni(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g, device="cuda")

    x = rnd(batch, steps, WIDTH).to(dtype)
    # Mamba's dt range [0.001, 0.1] and A in [-3.1, -0.1]: memories of 3 to 10^4 steps.
    dt = (uni(batch, steps, WIDTH) * 0.099 + 0.001).to(dtype)
    A = -(uni(WIDTH, STATE) * 3 + 0.1)
    B = rnd(batch, steps, STATE).to(dtype)
    C = rnd(batch, steps, STATE).to(dtype)
    h0 = rnd(batch, WIDTH, STATE)
    return [x, dt, A, B, C, h0]


def _grads(
    fn: Callable[..., tuple[Tensor, Tensor]], xs: Sequence[Tensor], dy: Tensor, dh: Tensor
) -> list[Tensor]:
    """[y, h_T, dx, ddt, dA, dB, dC, dh0] for the loss <y, dy> + <h_T, dh>."""
    leaves = [x.detach().requires_grad_() for x in xs]
    y, hT = fn(*leaves)
    grads = torch.autograd.grad((y, hT), leaves, (dy.to(y.dtype), dh.to(hT.dtype)))
    return [y.detach(), hT.detach(), *grads]


NAMES = ["y", "h_T", "dx", "ddt", "dA", "dB", "dC", "dh0"]


def _errs(ref: Sequence[Tensor], got: Sequence[Tensor]) -> dict[str, float]:
    return {name: rel_err(r, k) for name, r, k in zip(NAMES, ref, got, strict=False)}


def _fmt_errs(errs: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.1e}" for k, v in errs.items())


def _checks() -> tuple[list[Row], dict[tuple[str, str], float]]:
    """Correctness rows and the relative errors to put on the main-shape timing rows."""
    out: list[Row] = []
    main_err: dict[tuple[str, str], float] = {}
    xs = _inputs(BATCH, MAIN_T, torch.bfloat16, seed=0)
    g = torch.Generator(device="cuda").manual_seed(1)
    dy = torch.randn(BATCH, MAIN_T, WIDTH, generator=g, device="cuda")
    dh = torch.randn(BATCH, WIDTH, STATE, generator=g, device="cuda")
    t0 = time.perf_counter()
    ref = _grads(selective_scan, [x.double() for x in xs], dy.double(), dh.double())
    ref_s = time.perf_counter() - t0
    for dtype in (torch.bfloat16, torch.float32):
        # x, dt, B, C in the tested dtype; A and h0 stay float32 (parameters and state).
        cast = [x.to(dtype) if i in (0, 1, 3, 4) else x for i, x in enumerate(xs)]
        got = _grads(selective_scan_chunk, cast, dy, dh)
        errs = _errs(ref, got)
        name = "bf16" if dtype == torch.bfloat16 else "fp32"
        fwd = max(errs["y"], errs["h_T"])
        bwd = max(v for k, v in errs.items() if k.startswith("d"))
        main_err[(name, "fwd")], main_err[(name, "fwd+bwd")] = fwd, bwd
        out.append(
            {
                "op": OP,
                "impl": f"check triton {name}",
                "T": MAIN_T,
                "pass": "fwd+bwd",
                "rel_err": max(fwd, bwd),
                "note": f"vs float64 loop ({ref_s:.0f} s): {_fmt_errs(errs)}",
            }
        )
    del ref, got, xs

    # Odd shape: masked tails of D, N and the last chunk; strided x and stride-0 dt, B, C.
    batch, steps, width, n = 3, 130, 24, 3
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(batch, width, steps, generator=g, device="cuda").transpose(1, 2)
    dt1 = torch.rand(width, generator=g, device="cuda") * 0.5 + 0.01
    A = -(torch.rand(width, n, generator=g, device="cuda") * 3 + 0.1)
    B1, C1 = torch.randn(2, n, generator=g, device="cuda")
    h0 = torch.randn(batch, width, n, generator=g, device="cuda")
    small = [x, dt1, A, B1, C1, h0]

    def lti(fn: Callable[..., tuple[Tensor, Tensor]]) -> Callable[..., tuple[Tensor, Tensor]]:
        def run(x: Tensor, dt1: Tensor, A: Tensor, B1: Tensor, C1: Tensor, h0: Tensor) -> Any:
            expand = (batch, steps)
            return fn(
                x,
                dt1.expand(*expand, width),
                A,
                B1.expand(*expand, n),
                C1.expand(*expand, n),
                h0,
            )

        return run

    dy = torch.randn(batch, steps, width, generator=g, device="cuda")
    dh = torch.randn(batch, width, n, generator=g, device="cuda")
    ref = _grads(lti(selective_scan), [t.double() for t in small], dy.double(), dh.double())
    got = _grads(lti(selective_scan_chunk), small, dy, dh)
    errs = _errs(ref, got)
    out.append(
        {
            "op": OP,
            "impl": "check triton fp32",
            "T": steps,
            "pass": "fwd+bwd",
            "rel_err": max(errs.values()),
            "note": f"B=3 D=24 N=3, strided x, stride-0 dt/B/C: {_fmt_errs(errs)}",
        }
    )

    series = SERIES[-1]
    step_in = _step_inputs(series, seed=3)
    y_ref, h_ref = selective_scan_step(*(t.double() for t in step_in))
    y, h_new = selective_scan_step_fused(*step_in)
    out.append(
        {
            "op": OP,
            "impl": "check triton step",
            "T": 1,
            "pass": "step",
            "rel_err": max(rel_err(y_ref, y), rel_err(h_ref, h_new)),
            "note": f"S={series}, bf16 inputs, float32 state",
        }
    )
    return out, main_err


def _step_inputs(series: int, seed: int) -> list[Tensor]:
    """h [S, D, N] (float32); x, dt [S, D]; A [D, N] (float32); B, C [S, N] (bfloat16)."""
    x, dt, A, B, C, h0 = _inputs(series, 1, torch.bfloat16, seed)
    return [h0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0]]


def _nbytes(ts: Sequence[Tensor | None]) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def _scan_bytes(xs: Sequence[Tensor], backward: bool) -> int:
    """Floor bytes of one forward (+ backward): inputs read once, outputs written once."""
    x, dt, A, B, C, h0 = xs
    fwd = _nbytes([x, dt, A, B, C, h0]) + _nbytes([x, h0])  # + y, h_T
    if not backward:
        return fwd
    # + dy, dh_T read; dx, ddt, dA, dB, dC, dh0 written.
    return fwd + 2 * _nbytes([x, h0]) + _nbytes([x, dt, A, B, C, h0])


def _loop(step: Callable[..., tuple[Tensor, Tensor]]) -> Callable[..., tuple[Tensor, Tensor]]:
    """reference.selective_scan with its step function swapped (for the compiled baseline)."""

    def scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor) -> Any:
        h, ys = h0, []
        for t in range(x.shape[1]):
            y, h = step(h, x[:, t], dt[:, t], A, B[:, t], C[:, t])
            ys.append(y)
        return torch.stack(ys, dim=1), h

    return scan


def _fwd(fn: Callable[..., Any]) -> Callable[[Any], object]:
    def run(inp: Any) -> object:
        with torch.no_grad():
            return fn(*inp[0])

    return run


def _fwd_bwd(fn: Callable[..., Any]) -> Callable[[Any], object]:
    def run(inp: Any) -> object:
        leaves, dy, dh = inp
        y, hT = fn(*leaves)
        return torch.autograd.grad((y, hT), leaves, (dy.to(y.dtype), dh.to(hT.dtype)))

    return run


def _copies(steps: int, grad: bool) -> list[Any]:
    out = []
    for i in range(COPIES):
        xs = _inputs(BATCH, steps, torch.bfloat16, seed=10 + i)
        leaves = [x.requires_grad_(grad) for x in xs]
        dy = torch.randn_like(xs[0])
        dh = torch.randn_like(xs[5])
        out.append((leaves, dy, dh))
    return out


def _row(
    impl: str,
    steps: int,
    pas: str,
    ms: float,
    nbytes: int,
    copy: float,
    err: float | None,
    note: str,
) -> Row:
    gbps = nbytes / (ms * 1e-3) / 1e9
    return {
        "op": OP,
        "impl": impl,
        "T": steps,
        "pass": pas,
        "ms": ms,
        "GB/s": gbps,
        "%copy": 100 * gbps / copy,
        "rel_err": err,
        "note": note,
    }


def _fla_rows(steps: int, copy: float) -> list[Row]:
    from fla.ops.hgrn import chunk_hgrn

    out = []
    ins = []
    for i in range(COPIES):
        g = torch.Generator(device="cuda").manual_seed(20 + i)
        x = torch.randn(BATCH, steps, WIDTH, generator=g, device="cuda").to(torch.bfloat16)
        # log-gate in the same decay range as ours: exp(dt A) with dt A in [-0.31, -1e-4].
        lg = -(torch.rand(BATCH, steps, WIDTH, generator=g, device="cuda") * 0.31 + 1e-4)
        ins.append(
            ([x.requires_grad_(), lg.to(torch.bfloat16).requires_grad_()], torch.randn_like(x))
        )

    def fwd(inp: Any) -> object:
        with torch.no_grad():
            return chunk_hgrn(*inp[0])

    def fwd_bwd(inp: Any) -> object:
        (x, lg), dy = inp
        y, _ = chunk_hgrn(x, lg)
        return torch.autograd.grad(y, (x, lg), dy)

    x0 = ins[0][0][0]
    for pas, fn, nbytes in (
        ("fwd", fwd, 3 * _nbytes([x0])),
        ("fwd+bwd", fwd_bwd, 6 * _nbytes([x0])),
    ):
        ms = time_ms(fn, ins)
        out.append(_row("fla chunk_hgrn", steps, pas, ms, nbytes, copy, None, "N=1, no B/C"))
    return out


def _variant_rows(copy: float) -> list[Row]:
    """Other tile configurations of our kernels at the main shape, for choosing the defaults."""
    out = []
    # Per copy: x, dt, A, B, C, h0, the saved states, dy, dh_T.
    copies: list[list[Tensor]] = []
    for i in range(COPIES):
        x, dt, A, B, C, h0 = _inputs(BATCH, MAIN_T, torch.bfloat16, seed=30 + i)
        hs = chunk._forward(x, dt, A, B, C, h0, True)[2]
        assert hs is not None
        copies.append([x, dt, A, B, C, h0, hs, torch.randn_like(x), torch.randn_like(h0)])
    x, dt, A, B, C, h0, hs, dy, dh = copies[0]
    y_def = chunk._forward(x, dt, A, B, C, h0, False)[0]
    g_def = chunk._backward(x, dt, A, B, C, hs, dy, dh)
    fwd_bytes = _scan_bytes(copies[0][:6], False)
    bwd_bytes = _scan_bytes(copies[0][:6], True) - fwd_bytes
    # (steps per chunk, chunks of B, C prefetched into L1 ahead, steps per segment; None: the
    # default).
    for steps, pf, seg in (
        (8, 0, MAIN_T),
        (16, 2, MAIN_T),
        (16, 0, None),
        (8, 2, None),
        (16, 2, 256),
        (32, 2, None),
    ):
        cfg = chunk._Config(steps, 32, chunk._np(STATE), 1, 1)

        def fwd(
            inp: list[Tensor], cfg: chunk._Config = cfg, seg: int | None = seg, pf: int = pf
        ) -> object:
            x, dt, A, B, C, h0 = inp[:6]
            return chunk._forward(x, dt, A, B, C, h0, False, cfg, seg, pf=pf)

        ms = time_ms(fwd, copies)
        err = rel_err(y_def, chunk._forward(x, dt, A, B, C, h0, False, cfg, seg, pf=pf)[0])
        note = f"{steps}-step chunks, B/C prefetch {pf} chunks ahead, segment {seg or 'default'}"
        out.append(_row("triton fwd cfg", MAIN_T, "fwd", ms, fwd_bytes, copy, err, note))
    # (lanes over N, chunks of B, C prefetched ahead, register cap; None: the compiler's choice).
    for lanes_n, pf, maxnreg in (
        (2, 0, None),
        (2, 1, None),
        (2, 3, None),
        (2, 2, 168),
    ):
        cfg = chunk._config(WIDTH, STATE, chunk.CHUNK, lanes_n, 1, 1)

        def bwd(
            inp: list[Tensor], cfg: chunk._Config = cfg, cap: int | None = maxnreg, pf: int = pf
        ) -> object:
            x, dt, A, B, C, _, hs, dy, dh = inp
            return chunk._backward(x, dt, A, B, C, hs, dy, dh, cfg, maxnreg=cap, pf=pf)

        ms = time_ms(bwd, copies, reps=20)
        got = chunk._backward(x, dt, A, B, C, hs, dy, dh, cfg, maxnreg=maxnreg, pf=pf)
        err = max(rel_err(r, k) for r, k in zip(g_def, got, strict=True))
        note = f"{cfg}, B/C prefetch {pf} chunks ahead, maxnreg {maxnreg}"
        out.append(_row("triton bwd cfg", MAIN_T, "bwd", ms, bwd_bytes, copy, err, note))
    return out


def _step_rows(copy: float) -> list[Row]:
    out = []
    for series in SERIES:
        ins = [_step_inputs(series, seed=40 + i) for i in range(COPIES)]
        nbytes = _nbytes(ins[0]) + _nbytes([ins[0][1], ins[0][0]])  # + y, h_new
        plain = time_ms(lambda inp: selective_scan_step_fused(*inp), ins, reps=200)
        # One graph per input copy, each capturing one step on its own static buffers.
        graphs = []
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for inp in ins:
                selective_scan_step_fused(*inp)
        torch.cuda.current_stream().wait_stream(stream)
        for inp in ins:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                selective_scan_step_fused(*inp)
            graphs.append(graph)
        replay = time_ms(lambda gr: gr.replay(), graphs, reps=200)
        note = f"S={series}, D={WIDTH}, N={STATE}, float32 state"
        for impl, ms in (("triton step", plain), ("triton step, CUDA graph", replay)):
            row = _row(impl, 1, "step", ms, nbytes, copy, None, note)
            row["us"] = row.pop("ms") * 1e3
            out.append(row)
    return out


def _scan_rows(
    steps: int, copy: float, baselines: bool, main_err: dict[tuple[str, str], float]
) -> Iterator[Row]:
    """Forward and forward+backward at one T: ours, then (if `baselines`) eager and compiled."""
    copies = _copies(steps, grad=True)
    xs = copies[0][0]
    # One compiled step serves every T, with and without grad; dynamo's default of 8 recompiles
    # ran out on the first H200 run and silently fell back to eager for the later T.
    torch._dynamo.config.recompile_limit = 64
    compiled_step = torch.compile(selective_scan_step, dynamic=False)
    for pas, wrap, backward in (("fwd", _fwd, False), ("fwd+bwd", _fwd_bwd, True)):
        nbytes = _scan_bytes(xs, backward)
        impls: list[tuple[str, Callable[..., Any], int, str]] = []
        if not baselines:
            impls.append(("triton", selective_scan_chunk, 50, ""))
        elif not backward or steps <= EAGER_BWD_MAX_T:
            impls.append(("eager reference", selective_scan, 3, ""))
            impls.append(("torch.compile", _loop(compiled_step), 3, COMPILE_NOTE))
        else:
            yield {
                "op": OP,
                "impl": "eager reference, torch.compile",
                "T": steps,
                "pass": pas,
                "note": f"not timed: the loop's autograd graph past T={EAGER_BWD_MAX_T}",
            }
        for impl, fn, reps, note in impls:
            t0 = time.perf_counter()
            ms = time_ms(wrap(fn), copies, warmup=1 if reps < 10 else 5, reps=reps)
            wall = time.perf_counter() - t0
            err = main_err.get(("bf16", pas)) if impl == "triton" and steps == MAIN_T else None
            extra = f"{note}; {wall:.0f} s with warm-up" if reps < 10 else note
            yield _row(impl, steps, pas, ms, nbytes, copy, err, extra.lstrip("; "))


def iter_rows(quick: bool = False, baselines: bool = True, variants: bool = True) -> Iterator[Row]:
    """The rows of `rows`, as they are measured (most important first); `variants`: the rows of
    other tile configurations at the main shape."""
    torch.manual_seed(0)
    copy = copy_bandwidth_gbps()
    yield {"op": "copy", "impl": "torch copy_", "GB/s": copy, "note": "read + write"}
    checks, main_err = _checks()
    yield from checks
    yield from _scan_rows(MAIN_T, copy, False, main_err)
    yield from _fla_rows(MAIN_T, copy)
    yield from _step_rows(copy)
    if quick:
        return
    if variants:
        yield from _variant_rows(copy)
    if baselines:
        yield from _scan_rows(MAIN_T, copy, True, main_err)
    for steps in ALL_T:
        if steps != MAIN_T:
            yield from _scan_rows(steps, copy, False, main_err)
            yield from _fla_rows(steps, copy)
            if baselines:
                yield from _scan_rows(steps, copy, True, main_err)


def rows(quick: bool = False) -> list[Row]:
    """Checks, then timings; `quick`: main shape only, no eager/compile baselines or variants."""
    return list(iter_rows(quick))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="main shape only, no baselines")
    parser.add_argument("--no-baselines", action="store_true", help="no eager/compile timings")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/selective_scan.py needs a CUDA GPU")
    cols = ["op", "impl", "T", "pass", "ms", "us", "GB/s", "%copy", "rel_err", "note"]
    table = []
    # Each row as it is measured, then the whole table.
    for row in iter_rows(quick=args.quick, baselines=not args.no_baselines):
        table.append(row)
        print(" ".join(f"{c}={fmt(row.get(c))}" for c in cols if c in row), flush=True)
    print(f"# {time.strftime('%Y-%m-%d')} {torch.cuda.get_device_name()} torch {torch.__version__}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in table:
        print("| " + " | ".join(fmt(row.get(c)) for c in cols) + " |")


if __name__ == "__main__":
    main()
