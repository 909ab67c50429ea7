"""Metrics for one MLflow run that survive the tracking server going away for a while.

Rank 0 of a training run logs its per-epoch metrics through a `MetricBuffer`: `log` only queues
(timestamped when it is called, so the history shows when a value was measured, not when it got
through); a background thread sends the queue in order with `log_batch` and, while the server is
unreachable, keeps the values and retries every `retry_s`. Training never waits on the tracking
server, except at the end: `close(timeout_s)` waits for the queue to drain and returns how many
values it could not send, which the driver turns into a clear error (pipelines/train.py).

Each attempt is bounded by MLflow's own HTTP retries and timeouts, which pipelines/settings.py
sets explicitly (MLflow's defaults retry one call for minutes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

__all__ = ["MetricBuffer", "TrackingUnavailableError"]

log = logging.getLogger(__name__)

# MLflow's log_batch accepts at most 1000 metrics per call.
BATCH = 1000


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking server could not be reached within the configured bounds."""


class MetricBuffer:
    def __init__(
        self,
        client: Any,  # mlflow.tracking.MlflowClient
        run_id: str,
        retry_s: float = 2.0,
        max_pending: int = 100_000,
    ):
        self.client, self.run_id, self.retry_s = client, run_id, retry_s
        self.pending: deque[Any] = deque()  # mlflow.entities.Metric, oldest first
        self.max_pending = max_pending
        self.dropped = 0  # values dropped because the buffer was full (oldest first)
        self.sent = 0
        self.failures = 0  # failed send attempts
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._give_up_at = float("inf")  # set by close(): the sender stops retrying then
        self._thread = threading.Thread(target=self._run, name="mlflow-metrics", daemon=True)
        self._thread.start()

    def log(self, step: int, **metrics: float) -> None:
        """Queue `metrics` at `step`; never blocks on the tracking server."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._lock:
            for name, value in metrics.items():
                self.pending.append(Metric(name, float(value), now, int(step)))
            while len(self.pending) > self.max_pending:
                self.pending.popleft()
                self.dropped += 1
        self._wake.set()

    def close(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for every queued value to be sent; -> values not sent."""
        self._give_up_at = time.monotonic() + timeout_s
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout_s + 1.0)
        with self._lock:
            unsent = len(self.pending) + self.dropped
        if unsent:
            log.error(
                "MLflow run %s: %d metric values not logged after %.0f s of retrying (%s)",
                self.run_id,
                unsent,
                timeout_s,
                self.last_error,
            )
        return unsent

    def _run(self) -> None:
        down_since: float | None = None
        while True:
            with self._lock:
                batch = [self.pending[i] for i in range(min(BATCH, len(self.pending)))]
            if not batch or time.monotonic() > self._give_up_at:
                if self._closing.is_set():
                    return
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as e:  # unreachable, timed out, 5xx: keep the values, try again
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {str(e)[:300]}"
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning(
                        "MLflow unreachable (%s); buffering metrics, retrying every %.0f s",
                        self.last_error,
                        self.retry_s,
                    )
                time.sleep(max(min(self.retry_s, self._give_up_at - time.monotonic()), 0.0))
                continue
            with self._lock:
                for metric in batch:  # by identity: log() may have dropped the oldest meanwhile
                    if self.pending and self.pending[0] is metric:
                        self.pending.popleft()
                self.sent += len(batch)
            if down_since is not None:
                log.warning(
                    "MLflow reachable again after %.0f s; buffered metrics sent",
                    time.monotonic() - down_since,
                )
                down_since = None
