"""Timing and bandwidth helpers shared by the GPU benchmarks (bench/kernels.py and its sections).

Method (see docs/BENCHMARKS.md): CUDA events around the region, warm-up excluded, median of many
runs, inputs rotated among several copies so the L2 cache does not flatter, and the measured
device-to-device copy bandwidth as the yardstick for memory-bound kernels.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["copy_bandwidth_gbps", "fmt", "progress", "rel_err", "time_ms"]


def time_ms(
    fn: Callable[[Any], object],
    inputs: Sequence[Any],
    warmup: int = 5,
    reps: int = 50,
) -> float:
    """Median ms of fn(inputs[i % len(inputs)]) over `reps` runs, each timed with CUDA events."""
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        arg = inputs[i % len(inputs)]
        start.record()
        fn(arg)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbps(nbytes: int = 2 << 30) -> float:
    """Measured device-to-device copy bandwidth, counting bytes read plus bytes written."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    ms = time_ms(lambda _: dst.copy_(src), [None], warmup=3, reps=20)
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def rel_err(ref: torch.Tensor, got: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| in float64; NaN anywhere gives NaN."""
    ref64, got64 = ref.detach().double(), got.detach().double()
    return float((got64 - ref64).norm() / ref64.norm().clamp_min(1e-300))


def fmt(x: object) -> str:
    """A table cell: '-' for missing, 3 significant digits for floats."""
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.0f}"
    return str(x)


def progress(row: dict[str, Any]) -> None:
    """One line per finished measurement on stderr, so a run cut short still shows what it did."""
    print("  ".join(f"{k}={fmt(v)}" for k, v in row.items()), file=sys.stderr, flush=True)
