"""Shared fixtures. The Kafka broker is real: started once per session through the project's own
script (deploy/kafka/kafka.sh), on its own port and data directory, and stopped at the end. If it
cannot start, the tests that need it fail (never skip)."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """bootstrap_servers of a real single-node KRaft broker on 127.0.0.1."""
    # Free ports unless pinned: a broker left behind by an aborted run must not fail this one.
    port = os.environ.get("STATECAST_TEST_KAFKA_PORT") or str(free_port())
    env = {
        **os.environ,
        "KAFKA_PORT": port,
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_DIR": str(tmp_path_factory.mktemp("kafka")),
    }
    proc = subprocess.run(
        [str(KAFKA_SH), "start"], env=env, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        pytest.fail(
            f"could not start the Kafka broker:\n{proc.stdout}\n{proc.stderr}", pytrace=False
        )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(KAFKA_SH), "stop"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def reliability(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """`reliability(Trial(...))` records this test's row of docs/RELIABILITY.md."""
    from tests.reliability import Trial, record

    def _record(trial: Trial) -> None:
        record(request.node.nodeid, trial)

    return _record


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests.reliability import write_report

    write_report()
