"""RWKV-7 matrix-state update (used by `rwkv7`)."""

from kernels.rwkv7.reference import rwkv7_scan, rwkv7_step

__all__ = ["rwkv7_scan", "rwkv7_step"]
