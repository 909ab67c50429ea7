"""The one place where a scan implementation is chosen.

Models call `selective_scan`, `selective_scan_step`, `rwkv7_scan` and `rwkv7_step` from here and
never import an implementation directly. The choice is explicit: the `backend=` argument, else the
`STATECAST_KERNELS` environment variable, else the tensors' device (the fastest backend registered
for it). A missing backend is an error, never a silent fallback; each choice is logged once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from torch import Tensor

from kernels.rwkv7 import reference as rwkv7_reference
from kernels.rwkv7.chunk import rwkv7_chunk
from kernels.rwkv7.fused_recurrent import rwkv7_step_fused
from kernels.selective_scan import reference as selective_scan_reference
from kernels.selective_scan.chunk import selective_scan_chunk
from kernels.selective_scan.fused_recurrent import selective_scan_step_fused

__all__ = [
    "available_backends",
    "choose",
    "register",
    "resolve",
    "rwkv7_scan",
    "rwkv7_step",
    "selective_scan",
    "selective_scan_step",
]

log = logging.getLogger(__name__)

# op -> backend -> implementation. Faster backends register themselves here (see `register`).
_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {
    "selective_scan": {
        "reference": selective_scan_reference.selective_scan,
        "triton": selective_scan_chunk,
    },
    "selective_scan_step": {
        "reference": selective_scan_reference.selective_scan_step,
        "triton": selective_scan_step_fused,
    },
    # Triton: the chunked scans for windows, the fused single steps for streaming (forward only:
    # pass backend="reference" to differentiate through `step` on CUDA).
    "rwkv7_scan": {"reference": rwkv7_reference.rwkv7_scan, "triton": rwkv7_chunk},
    "rwkv7_step": {"reference": rwkv7_reference.rwkv7_step, "triton": rwkv7_step_fused},
}
# Preference per device type when nothing is asked for explicitly.
_PREFERENCE = {"cuda": ("triton", "reference"), "cpu": ("reference",)}
_logged: set[tuple[str, str, str]] = set()


def register(op: str, backend: str, fn: Callable[..., Any]) -> None:
    """Add an implementation of `op` (same signature as the reference)."""
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; known: {sorted(_REGISTRY)}")
    _REGISTRY[op][backend] = fn


def available_backends(op: str) -> list[str]:
    return sorted(_REGISTRY[op])


def choose(op: str, device_type: str, backend: str | None = None) -> str:
    """The backend name `op` uses on `device_type`: asked for, else the device's preference."""
    impls = _REGISTRY[op]
    asked = backend or os.environ.get("STATECAST_KERNELS") or None
    if asked is not None:
        if asked not in impls:
            raise ValueError(
                f"kernel backend {asked!r} is not available for {op}; available: {sorted(impls)}"
            )
        return asked
    return next(b for b in _PREFERENCE.get(device_type, ("reference",)) if b in impls)


def resolve(op: str, device_type: str, backend: str | None = None) -> Callable[..., Any]:
    """The implementation of `op` for tensors on `device_type`."""
    impls = _REGISTRY[op]
    chosen = choose(op, device_type, backend)
    key = (op, device_type, chosen)
    if key not in _logged:
        _logged.add(key)
        log.info("kernels: %s on %s uses the %s backend", op, device_type, chosen)
    return impls[chosen]


def selective_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor | None = None,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """See kernels/selective_scan/reference.py. x, dt [B, T, D]; A [D, N]; B, C [B, T, N]."""
    fn = resolve("selective_scan", x.device.type, backend)
    return fn(x, dt, A, B, C, h0)


def selective_scan_step(
    h: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *, backend: str | None = None
) -> tuple[Tensor, Tensor]:
    """See kernels/selective_scan/reference.py. h [B, D, N]; x, dt [B, D]; B, C [B, N]."""
    fn = resolve("selective_scan_step", x.device.type, backend)
    return fn(h, x, dt, A, B, C)


def rwkv7_scan(
    r: Tensor,
    log_w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    S0: Tensor | None = None,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """See kernels/rwkv7/reference.py. r, log_w, k, v, a, b [B, T, H, K]; S0 [B, H, K, K]."""
    fn = resolve("rwkv7_scan", r.device.type, backend)
    return fn(r, log_w, k, v, a, b, S0)


def rwkv7_step(
    S: Tensor,
    r: Tensor,
    log_w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """See kernels/rwkv7/reference.py. S [B, H, K, K]; the rest [B, H, K]."""
    fn = resolve("rwkv7_step", r.device.type, backend)
    return fn(S, r, log_w, k, v, a, b)
