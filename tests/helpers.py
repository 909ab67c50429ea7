"""One comparison helper and one tolerance table, used by every numeric test."""

from __future__ import annotations

import torch
from torch import Tensor

# Relative error allowed per dtype (||got - ref|| / ||ref||). float64 paths that compute the same
# math in a different order land near 1e-15; 1e-10 leaves room for long recurrences.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def rel_err(ref: Tensor, got: Tensor) -> float:
    ref64, got64 = ref.detach().double(), got.detach().double()
    return float((got64 - ref64).norm() / ref64.norm().clamp_min(1e-300))


def assert_close(name: str, ref: Tensor, got: Tensor, ratio: float | None = None) -> None:
    assert ref.shape == got.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert not torch.isnan(got).any(), f"{name}: NaN in result"
    tol = ratio if ratio is not None else RTOL[ref.dtype]
    err = rel_err(ref, got)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"
