"""One stream processor with its model watcher, in a thread or as a process of its own.

The Ray Serve deployment (serving/app.py) runs one of these per replica; `statecast process`
(or `python -m serving.worker`) runs one without Ray, e.g. as a plain container.
Between transactions the worker checks the model URI every `model_poll_s`; when an alias has moved
it loads the new version and swaps (serving/hot_swap.py says what happens to the states).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from kafka.errors import KafkaError

from serving.metrics import ProcessorMetrics
from serving.model_source import ModelRef, load_stream_model, resolve
from serving.processor import ProcessorConfig, StreamProcessor
from serving.update import StreamModel

__all__ = ["StreamWorker", "WorkerConfig", "main"]

log = logging.getLogger("statecast.serving")


@dataclass(frozen=True)
class WorkerConfig:
    model_uri: str
    processor: ProcessorConfig
    model_poll_s: float = 30.0
    max_gap_steps: int = 1000
    max_record_bytes: int = 65536
    baseline_window: int = 0  # > 0: serving/window_baseline.py instead of the step (benchmarks)


class StreamWorker:
    def __init__(self, cfg: WorkerConfig):
        # One intra-op thread: a step is many small ops, and threads spinning against the broker
        # and the other replicas on the same cores cost far more than they give (10x measured).
        torch.set_num_threads(1)
        self.cfg = cfg
        self.metrics = ProcessorMetrics()
        self._tmp = Path(tempfile.mkdtemp(prefix="statecast-model-"))
        self.ref = resolve(cfg.model_uri)
        self.processor = StreamProcessor(cfg.processor, self._load(self.ref), self.metrics)
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _load(self, ref: ModelRef) -> StreamModel:
        return load_stream_model(
            ref,
            self._tmp / ref.label.replace("/", "_"),
            max_gap_steps=self.cfg.max_gap_steps,
            max_bytes=self.cfg.max_record_bytes,
            window=self.cfg.baseline_window,
        )

    def run(self) -> None:
        """Consume until `stop_event` is set. When Kafka goes away the worker waits and
        reconnects (backing off up to 30 s); on reassignment the partitions are restored from
        the changelog and the committed offsets, so the outage loses and repeats nothing. Any
        other error stops it (kept in `error`, which the Serve health check reports)."""
        proc = self.processor
        backoff = 1.0
        try:
            while not self.stop_event.is_set():
                try:
                    proc.ensure_topics()
                    proc._open()
                    self._consume()
                    backoff = 1.0
                except KafkaError as e:
                    self.metrics.reconnects += 1
                    log.warning("Kafka is unavailable (%s); reconnecting in %.0f s", e, backoff)
                    proc.close()
                    # Whatever was in memory may be ahead of the last commit: rebuild on assignment.
                    proc.stores.clear()
                    proc.pending.clear()
                    self.stop_event.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
        except BaseException as e:
            self.error = e
            log.exception("stream worker stopped")
            raise
        finally:
            proc.close()

    def _consume(self) -> None:
        checked = time.monotonic()
        while not self.stop_event.is_set():
            self.processor.poll_once()
            if time.monotonic() - checked >= self.cfg.model_poll_s:
                checked = time.monotonic()
                self._maybe_swap()

    def _maybe_swap(self) -> None:
        try:
            ref = resolve(self.cfg.model_uri)
        except Exception:  # the registry being down must not stop the stream
            log.warning("could not resolve %s; keeping %s", self.cfg.model_uri, self.ref.label)
            return
        if ref.label != self.ref.label:
            self.processor.swap_model(self._load(ref))
            self.ref = ref

    def start(self) -> None:
        self.thread = threading.Thread(
            target=self._run_quietly, name="statecast-stream", daemon=True
        )
        self.thread.start()

    def _run_quietly(self) -> None:
        with contextlib.suppress(BaseException):  # kept in self.error for health checks
            self.run()

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive() and self.error is None

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout)


def add_processor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-uri", required=True, help="models:/NAME@champion, runs:/ID/model or a folder"
    )
    p.add_argument("--bootstrap-servers", required=True)
    p.add_argument("--in-topic", required=True)
    p.add_argument("--out-topic", required=True)
    p.add_argument("--group", default="statecast")
    p.add_argument("--dead-letter-topic", default="")
    p.add_argument("--checkpoint-interval", type=float, default=5.0, help="seconds")
    p.add_argument("--max-poll-records", type=int, default=5000)
    p.add_argument("--idle-records", type=int, default=1_000_000)
    p.add_argument("--max-series-per-partition", type=int, default=200_000)
    p.add_argument("--model-poll", type=float, default=30.0, help="seconds between alias checks")
    p.add_argument(
        "--slow-transaction",
        type=float,
        default=1.0,
        help="seconds; a longer transaction is logged with the time of each phase",
    )
    p.add_argument(
        "--static-membership",
        action="store_true",
        help="group.instance.id = GROUP-INSTANCE: a restart in place takes its partitions back "
        "at once (not after the 45 s session timeout)",
    )
    p.add_argument(
        "--kafka-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a kafka-python client option, e.g. security_protocol=SASL_SSL (repeatable)",
    )


def kafka_options(pairs: list[str]) -> dict[str, str | int | bool]:
    """KEY=VALUE strings -> kafka-python options (integers and true/false converted)."""
    out: dict[str, str | int | bool] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--kafka-option {pair!r}: expected KEY=VALUE")
        if value.lower() in ("true", "false"):
            out[key] = value.lower() == "true"
        elif value.lstrip("-").isdigit():
            out[key] = int(value)
        else:
            out[key] = value
    return out


def processor_config(args: argparse.Namespace, instance: str) -> ProcessorConfig:
    return ProcessorConfig(
        bootstrap_servers=args.bootstrap_servers,
        in_topic=args.in_topic,
        out_topic=args.out_topic,
        group_id=args.group,
        dead_letter_topic=args.dead_letter_topic,
        instance=instance,
        checkpoint_interval_s=args.checkpoint_interval,
        max_poll_records=args.max_poll_records,
        idle_records=args.idle_records,
        max_series_per_partition=args.max_series_per_partition,
        static_membership=bool(getattr(args, "static_membership", False)),
        slow_transaction_s=float(getattr(args, "slow_transaction", 1.0)),
        kafka_options=tuple(sorted(kafka_options(args.kafka_option).items())),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="statecast process", description="run one stream processor")
    add_processor_arguments(p)
    p.add_argument("--instance", default="0", help="stable id: transactional.id = GROUP-INSTANCE")
    p.add_argument(
        "--baseline-window",
        type=int,
        default=0,
        help="benchmarks only: re-encode each series' last N observations per event instead of "
        "stepping its state (serving/window_baseline.py)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    worker = StreamWorker(
        WorkerConfig(
            args.model_uri,
            processor_config(args, args.instance),
            model_poll_s=args.model_poll,
            baseline_window=args.baseline_window,
        )
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stop_event.set())
    worker.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
