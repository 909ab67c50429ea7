"""Progress bars for long work: training (followed from the driver) and evaluation.

Training runs in Ray workers, possibly on other machines, so the driver cannot watch the loop.
Rank 0 logs its position as the MLflow metric `train_progress` (epochs done, fractional; at most
every PROGRESS_EVERY_S seconds) next to the per-epoch losses; the driver polls the run and draws
one tqdm bar on stderr. Evaluation runs in the calling process and ticks a bar per batch.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from types import TracebackType

from tqdm import tqdm

__all__ = ["PROGRESS_EVERY_S", "TrainProgress", "throttled"]

PROGRESS_EVERY_S = 2.0


def throttled(
    fn: Callable[[float], None], every_s: float = PROGRESS_EVERY_S
) -> Callable[..., None]:
    """fn(value), called at most once per `every_s` seconds (and always for a final value)."""
    # Not 0: time.monotonic() counts from boot, so on a machine up for less than every_s the
    # first value would be held back.
    last = [-math.inf]

    def call(value: float, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - last[0] >= every_s:
            last[0] = now
            fn(value)

    return call


class TrainProgress:
    """A tqdm bar over epochs (fractional) for the MLflow run `run_id`, while the block runs."""

    def __init__(
        self, run_id: str, uri: str, epochs: int, enabled: bool = True, poll_s: float = 1.0
    ):
        self.run_id, self.uri, self.epochs = run_id, uri, epochs
        self.enabled, self.poll_s = enabled, poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: tqdm | None = None

    def __enter__(self) -> TrainProgress:
        if self.enabled:
            self._bar = tqdm(
                total=self.epochs,
                desc="train",
                unit="epoch",
                bar_format=(
                    "{l_bar}{bar}| {n:.2f}/{total} epochs [{elapsed}<{remaining}{postfix}]"
                ),
            )
            self._thread = threading.Thread(target=self._follow, daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._update()
            self._bar.close()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._update()

    def _update(self) -> None:
        from mlflow.tracking import MlflowClient

        assert self._bar is not None
        try:
            metrics = MlflowClient(self.uri).get_run(self.run_id).data.metrics
        except Exception:  # the tracking store may be busy; the bar just waits
            return
        if "train_progress" in metrics:
            self._bar.n = min(float(metrics["train_progress"]), float(self.epochs))
        post = {k: f"{metrics[k]:.4f}" for k in ("train_loss", "val_mse") if k in metrics}
        if post:
            self._bar.set_postfix(post, refresh=False)
        self._bar.refresh()
