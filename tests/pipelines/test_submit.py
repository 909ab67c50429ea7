"""`statecast submit` against a real Ray cluster started with `ray start --head` (job server on)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "STATECAST_HOME": str(tmp_path / "home"),
        "RAY_USAGE_STATS_ENABLED": "0",
        # The job server takes bearer tokens; head and client share this one.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    env.pop("RAY_ADDRESS", None)
    start = [
        str(BIN / "ray"), "start", "--head", "--port=6391", "--num-cpus=2",
        "--dashboard-host=127.0.0.1", "--dashboard-port=8276", "--include-dashboard=true",
    ]  # fmt: skip
    proc = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    try:
        yield "http://127.0.0.1:8276", env
    finally:
        subprocess.run(
            [str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120
        )


def test_submit_runs_training_as_a_ray_job(
    cluster: tuple[str, dict[str, str]], tmp_path: Path
) -> None:

    address, env = cluster
    data = tmp_path / "slice.csv"
    data.write_text("\n".join((ROOT / "data" / "ETTh1.csv").read_text().splitlines()[:801]) + "\n")
    args = [
        "--data", str(data), "--split-mode", "ratio", "--model", "diagonal_ssm",
        "--lookback", "24", "--horizon", "6", "--epochs", "1", "--steps-per-epoch", "2",
        "--d-model", "8", "--n-layers", "1", "--run-name", "submitted",
    ]  # fmt: skip
    bad = subprocess.run(
        [sys.executable, "-m", "statecast", "submit", "--address", address, "--", "--epochs", "x"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "invalid int value" in bad.stderr
    # Submitting training is authenticated: a wrong token is refused with a clear message.
    wrong = subprocess.run(
        [sys.executable, "-m", "statecast", "submit", "--address", address, "--", *args],
        env={**env, "RAY_AUTH_TOKEN": "0" * 64}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert wrong.returncode == 3, wrong.stderr[-2000:]
    assert "refused the token" in wrong.stderr and "Traceback" not in wrong.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "statecast", "submit", "--address", address, "--wait", "--", *args],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SUCCEEDED" in proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("raysubmit_")
    result = json.loads([ln for ln in lines if ln.startswith('{"run_id"')][-1])
    assert result["epochs"] == 1 and result["test_mse"] > 0
