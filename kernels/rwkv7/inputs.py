"""Input checks shared by the RWKV-7 Triton launchers: a clear error before any kernel runs."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_inputs"]


def check_inputs(r: Tensor, others: tuple[Tensor, ...], S0: Tensor | None) -> None:
    """r and others [B, T, H, K] (K <= 64, the state lives in registers); S0 [B, H, K, K]."""
    if r.dim() != 4:
        raise ValueError(f"r must be [B, T, H, K], got {tuple(r.shape)}")
    size = r.shape[-1]
    if size > 64:
        raise ValueError(f"head size {size} > 64 is not supported (state kept in registers)")
    for x in others:
        if x.shape != r.shape:
            raise ValueError(f"input shapes differ: {tuple(x.shape)} vs {tuple(r.shape)}")
    for x in (r, *others):
        if x.dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"inputs must be float32 or bfloat16, got {x.dtype}")
    if S0 is not None:
        batch, _, heads, _ = r.shape
        if S0.shape != (batch, heads, size, size):
            raise ValueError(f"S0 must be [B, H, K, K], got {tuple(S0.shape)}")
