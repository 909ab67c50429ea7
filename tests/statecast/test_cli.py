"""The README's main job, run for real (a few training steps) through the installed CLI."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.parametrize("kind", ["diagonal_ssm", "rwkv7"])
def test_quickstart_trains_and_forecasts(kind: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "statecast",
            "quickstart",
            "--model",
            kind,
            "--steps",
            "3",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"model {kind}: trained 3 steps" in out
    mse = re.search(r"validation MSE \(scaled, H=24\): ([0-9.]+)", out)
    assert mse is not None and 0 < float(mse.group(1)) < 100
    # One forecast line per ETTh1 channel, each with three quantiles at three horizons.
    for channel in ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]:
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(f"{channel}:"))
        assert len(re.findall(r"-?\d+\.\d\d/-?\d+\.\d\d/-?\d+\.\d\d", line)) == 3


def test_quickstart_rejects_unknown_model() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "statecast", "quickstart", "--model", "lstm"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "--model must be one of" in proc.stderr
