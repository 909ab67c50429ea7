"""One comparison helper and one tolerance table, used by every numeric test."""

from __future__ import annotations

import os
from types import ModuleType

import pytest
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


def triton_on_cpu(monkeypatch: pytest.MonkeyPatch, *modules: ModuleType) -> None:
    """Interpreter check plus NaN-filled buffers for every allocation of the kernel `modules`.

    Triton reads TRITON_INTERPRET when the kernels are defined, so it must be in the environment of
    the test command; without it these kernels cannot run on the CPU. Each module allocates its
    outputs through `_empty`; filling them with NaN makes an unwritten element fail the comparison.
    """
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.fail("run with TRITON_INTERPRET=1 (see the README's test command)", pytrace=False)

    def nan_empty(*shape: object, **kw: object) -> Tensor:
        out = torch.empty(*shape, **kw)  # type: ignore[call-overload]
        return out.fill_(float("nan"))

    for module in modules:
        monkeypatch.setattr(module, "_empty", nan_empty)
