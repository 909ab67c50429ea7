"""The MLflow tracking server going away during training, for real: a `mlflow server` subprocess
(sqlite backend + artifact folder, free port) is killed mid-run and started again on the same
port; and a run against a server that is down throughout.

Outcome chosen (pipelines/tracking.py): rank 0 buffers its per-epoch metrics while the server is
unreachable and sends them when it is back, so training finishes with a complete history; a server
that never answers fails the run with a clear error within MLflow's HTTP bounds
(pipelines/settings.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import DataConfig, TrainConfig
from pipelines.settings import MLFLOW_HTTP_DEFAULTS
from pipelines.tracking import TrackingUnavailableError
from pipelines.train import train
from tests.conftest import free_port
from tests.reliability import Trial

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 8


class MlflowServer:
    """`mlflow server` on 127.0.0.1:`port`, stopped with SIGKILL (no clean shutdown)."""

    def __init__(self, folder: Path, port: int):
        self.folder, self.port = folder, port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "server.log"

    def start(self, timeout: float = 180.0) -> float:
        """Start and wait until /health answers; -> seconds it took."""
        t0 = time.monotonic()
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
            "--artifacts-destination", (self.folder / "artifacts").as_uri(),
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            # Its own session, so the kill reaches the uvicorn worker too.
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Without its job runner (seven huey processes): tracking needs none of it, and
                # on two busy cores it doubles the start time.
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )
        while time.monotonic() - t0 < timeout:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"mlflow server not up in {timeout} s: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(30)
        self.proc = None


@pytest.fixture
def etth1_slice(tmp_path: Path) -> Path:
    path = tmp_path / "etth1_slice.csv"
    lines = (ROOT / "data" / "ETTh1.csv").read_text().splitlines()[:1201]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def bounded_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """statecast's bounds on MLflow's HTTP retries, set here so monkeypatch undoes them (train()
    would otherwise leave them in this process' environment for the tests after)."""
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path / "mlflow-server", free_port())
    try:
        yield server
    finally:
        server.kill()


def _config(data: Path, experiment: str) -> TrainConfig:
    return TrainConfig(
        data=str(data),
        kind="selective_ssm",
        lookback=32,
        horizon=8,
        epochs=EPOCHS,
        batch_size=16,
        steps_per_epoch=4,
        patience=EPOCHS,
        d_model=16,
        n_layers=1,
        experiment=experiment,
        run_name="mlflow-down",
    )


@pytest.mark.timeout(900)  # server starts take 60-120 s each on the 2 busy cores
def test_tracking_server_killed_mid_run_metrics_are_buffered_and_arrive(
    store: Path,
    etth1_slice: Path,
    mlflow_server: MlflowServer,
    monkeypatch: pytest.MonkeyPatch,
    reliability: Callable[[Trial], None],
) -> None:
    """Kill the server once the first epoch's metrics are in, keep it down for 15 s, start it
    again on the same port: training finishes, and every epoch's train_loss and val_mse is in
    the run exactly once, including those measured while the server was down."""
    t_start = time.monotonic()
    mlflow_server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("STATECAST_MLFLOW_FLUSH_TIMEOUT_S", "180")
    client = MlflowClient(mlflow_server.uri)
    outage: dict[str, float] = {}
    chaos_error: list[BaseException] = []

    def chaos() -> None:
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                runs = client.search_runs(
                    [e.experiment_id for e in client.search_experiments()], max_results=5
                )
                if runs and "val_mse" in runs[0].data.metrics:
                    break
                time.sleep(0.2)
            outage["down"] = time.time()
            mlflow_server.kill()
            time.sleep(15.0)
            outage["restarting"] = time.time()
            outage["start_s"] = mlflow_server.start()
            outage["up"] = time.time()
        except BaseException as e:  # reported by the test below, not lost in the thread
            chaos_error.append(e)

    thread = threading.Thread(target=chaos, daemon=True)
    thread.start()
    result = error = None
    try:
        result = train(_config(etth1_slice, "mlflow-down"), DataConfig(split="ratio"))
    except Exception as e:
        error = e
    thread.join(120)
    duration = time.monotonic() - t_start
    histories = {}
    if result is not None:
        histories = {
            name: client.get_metric_history(result.run_id, name)
            for name in ("train_loss", "val_mse")
        }
    steps = {name: [m.step for m in h] for name, h in histories.items()}
    want = list(range(EPOCHS))
    logged = sum(len(v) for v in steps.values())
    lost = sum(len(set(want) - set(v)) for v in steps.values())
    duplicated = sum(len(v) - len(set(v)) for v in steps.values())
    down_ms = (outage.get("down", 0) * 1000, outage.get("up", 0) * 1000)
    measured_while_down = sum(
        down_ms[0] <= m.timestamp <= down_ms[1] for h in histories.values() for m in h
    )
    print(
        f"outage {outage}; steps {steps}; {measured_while_down} values measured while down; "
        f"{duration:.0f} s; error {error!r}"
    )
    ok = error is None and not chaos_error and lost == duplicated == 0 and measured_while_down > 0
    reliability(
        Trial(
            area="fault",
            what="MLflow tracking server SIGKILLed mid-training, restarted on the same port 15 s "
            "later",
            times=1,
            events=2 * EPOCHS,
            lost=lost if result is not None else None,
            duplicated=duplicated if result is not None else None,
            outcome=("pass: " if ok else "FAIL: ")
            + f"training finished {'with ' + repr(error) if error else 'cleanly'}; "
            f"{logged} per-epoch values in the run, {measured_while_down} of them measured while "
            f"the server was down and sent when it was back; {duration:.0f} s",
        )
    )
    assert not chaos_error, chaos_error
    assert error is None, error
    assert result is not None and "up" in outage, outage
    assert steps == {"train_loss": want, "val_mse": want}, steps
    # The outage really was mid-run: some epochs were measured while the server was down.
    assert measured_while_down > 0, (outage, histories)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and "test_mse" in run.data.metrics


def test_tracking_server_down_for_the_whole_run_fails_clearly_and_quickly(
    store: Path,
    etth1_slice: Path,
    monkeypatch: pytest.MonkeyPatch,
    reliability: Callable[[Trial], None],
) -> None:
    """Nothing listens at the tracking URI: the run fails at its start with an error that names
    the server, within MLflow's bounded retries (about 10 s), not after minutes."""
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    t0 = time.monotonic()
    error: BaseException | None = None
    try:
        train(_config(etth1_slice, "mlflow-never"), DataConfig(split="ratio"))
    except TrackingUnavailableError as e:
        error = e
    seconds = time.monotonic() - t0
    clear = error is not None and uri in str(error) and "not reachable" in str(error)
    reliability(
        Trial(
            area="fault",
            what="MLflow tracking server down for the whole training run",
            times=1,
            events=1,
            lost=None,
            duplicated=None,
            outcome=("pass: " if clear and seconds < 60 else "FAIL: ")
            + f"{type(error).__name__ if error else 'no error'} after {seconds:.0f} s: "
            + str(error)[:230],
        )
    )
    assert error is not None, "training ran without a tracking server"
    assert clear, error
    assert seconds < 60, seconds
