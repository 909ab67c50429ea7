"""Scan kernels. Models import the dispatched functions from here; see `kernels.dispatch`."""

from kernels.dispatch import (
    available_backends,
    register,
    resolve,
    rwkv7_scan,
    rwkv7_step,
    selective_scan,
    selective_scan_step,
)

__all__ = [
    "available_backends",
    "register",
    "resolve",
    "rwkv7_scan",
    "rwkv7_step",
    "selective_scan",
    "selective_scan_step",
]
