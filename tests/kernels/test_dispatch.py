"""One dispatch point: explicit choices, no silent fallback, the choice logged once."""

from __future__ import annotations

import logging

import pytest
import torch

import kernels
from kernels import dispatch
from kernels.selective_scan import reference


def test_cpu_uses_reference_and_logs_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STATECAST_KERNELS", raising=False)
    monkeypatch.setattr(dispatch, "_logged", set())
    with caplog.at_level(logging.INFO, logger="kernels.dispatch"):
        assert dispatch.resolve("selective_scan", "cpu") is reference.selective_scan
        dispatch.resolve("selective_scan", "cpu")
    assert [r.getMessage() for r in caplog.records] == [
        "kernels: selective_scan on cpu uses the reference backend"
    ]


def test_unknown_backend_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="'nope' is not available for rwkv7_scan"):
        dispatch.resolve("rwkv7_scan", "cpu", "nope")
    monkeypatch.setenv("STATECAST_KERNELS", "nope")
    x = torch.zeros(1, 1, 2)
    with pytest.raises(ValueError, match="not available"):
        kernels.selective_scan(x, x, torch.zeros(2, 1), torch.zeros(1, 1, 1), torch.zeros(1, 1, 1))


def test_registered_backend_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake(*args: object) -> object:
        calls.append(args)
        return reference.selective_scan_step(*args)  # type: ignore[arg-type]

    monkeypatch.setitem(
        dispatch._REGISTRY, "selective_scan_step", dict(dispatch._REGISTRY["selective_scan_step"])
    )
    dispatch.register("selective_scan_step", "fake", fake)
    assert "fake" in dispatch.available_backends("selective_scan_step")
    h = torch.zeros(1, 2, 3)
    kernels.selective_scan_step(
        h,
        torch.ones(1, 2),
        torch.ones(1, 2),
        -torch.ones(2, 3),
        torch.ones(1, 3),
        torch.ones(1, 3),
        backend="fake",
    )
    assert len(calls) == 1
    with pytest.raises(ValueError, match="unknown op"):
        dispatch.register("conv", "fake", fake)
