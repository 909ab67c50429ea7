"""deploy/kafka/kafka.sh: start is idempotent, status tells, stop works by pid."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import KAFKA_SH, free_port


def _run(cmd: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KAFKA_SH), cmd], env=env, capture_output=True, text=True, timeout=300
    )


def test_start_status_stop(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_DIR": str(tmp_path / "kafka"),
    }
    assert _run("status", env).returncode != 0
    try:
        started = _run("start", env)
        assert started.returncode == 0, started.stderr
        assert _run("status", env).returncode == 0
        pid = int((tmp_path / "kafka" / "kafka.pid").read_text())
        again = _run("start", env)
        assert again.returncode == 0 and "already running" in again.stderr
        props = (tmp_path / "kafka" / "server.properties").read_text()
        assert "transaction.state.log.replication.factor=1" in props
        assert "offsets.topic.replication.factor=1" in props
    finally:
        stopped = _run("stop", env)
    assert stopped.returncode == 0
    assert _run("status", env).returncode != 0
    assert not Path(f"/proc/{pid}").exists()


def test_port_taken_is_a_clear_error(tmp_path: Path, kafka_bootstrap: str) -> None:
    port = kafka_bootstrap.rsplit(":", 1)[1]
    env = {
        **os.environ,
        "KAFKA_PORT": port,
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_DIR": str(tmp_path / "other"),
    }
    proc = _run("start", env)
    assert proc.returncode != 0
    assert "is taken" in proc.stderr
