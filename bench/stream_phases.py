"""Where a stream processor's time goes, per event: timers around each call, in process.

    python -m bench.stream_phases                 # 60,000 events, 1,000 series (about 2 minutes)

Against a real broker started by deploy/kafka/kafka.sh on free ports: a backlog of the stream of
bench/stream.py, then one StreamProcessor (as `python -m serving.worker` builds it, in this
process) polls until it has processed the backlog, with wall-clock timers around the consumer's
`poll`, `process` and, inside it, decoding, the batched update, the forecast JSON and the
producer's `send`, the checkpoint, and the transaction calls. Then the producer's `send` alone:
records of a forecast's size and of 100 bytes, 5,000 per transaction, explicit partition or not.
Timers are inclusive and nest (process contains the rest of its phase); their overhead is a few
percent. Prints one table.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.stream import _EXTRA, _forecast_bytes, _model, _produce, local_broker

Timers = tuple[collections.defaultdict[str, float], collections.defaultdict[str, int]]


def _wrap(owner: Any, name: str, timers: Timers, label: str | None = None) -> None:
    total, calls = timers
    inner: Callable[..., Any] = getattr(owner, name)
    key = label or name

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            total[key] += time.perf_counter() - t
            calls[key] += 1

    setattr(owner, name, timed)


def phases(boot: str, args: argparse.Namespace, tmp: Path) -> list[list[str]]:
    from kafka.admin import KafkaAdminClient, NewTopic

    import serving.processor as sp
    from forecast.artifact import save_forecaster
    from serving.processor import ProcessorConfig
    from serving.worker import StreamWorker, WorkerConfig

    m = _model(args.kind, args.d_model, args.lookback)
    folder = save_forecaster(m.model, tmp / "model", extra=_EXTRA | {"lookback": args.lookback})
    admin = KafkaAdminClient(bootstrap_servers=boot)
    admin.create_topics([NewTopic("phases-in", args.partitions, 1)])
    admin.close()
    _produce(boot, "phases-in", args.series, 0, args.events)
    worker = StreamWorker(
        WorkerConfig(str(folder), ProcessorConfig(boot, "phases-in", "phases-out", "phases"))
    )
    proc = worker.processor
    proc.ensure_topics()
    proc._open()
    assert proc._consumer is not None and proc._producer is not None
    timers: Timers = (collections.defaultdict(float), collections.defaultdict(int))
    _wrap(proc._consumer, "poll", timers, "consumer poll")
    for name in ("send", "send_offsets_to_transaction", "commit_transaction", "flush"):
        _wrap(proc._producer, name, timers, f"producer {name}")
    _wrap(proc, "process", timers, "process (all below)")
    _wrap(proc, "restore", timers, "restore (start)")
    _wrap(proc, "_checkpoint", timers, "checkpoint encode + send")
    _wrap(sp, "decode_observation", timers, "  decode")
    _wrap(sp, "update_batch", timers, "  update_batch (step + states)")
    _wrap(sp, "forecast_messages", timers, "  forecast JSON")
    done = 0
    t0 = time.perf_counter()
    while done < args.events:
        done += proc.poll_once()
    wall = time.perf_counter() - t0
    proc.close()
    total, calls = timers
    rows = [["all", f"{wall:.1f} s", f"{wall / done * 1e6:.0f}", f"{done:,} events"]]
    for key, sec in sorted(total.items(), key=lambda kv: -kv[1]):
        note = f"{calls[key]:,} calls"
        if key == "producer send":
            note += " (forecasts + checkpoint records)"
        rows.append([key, f"{sec:.2f} s", f"{sec / done * 1e6:.1f}", note])
    rows.extend(_send_alone(boot, _forecast_bytes(m)))
    return rows


def _send_alone(boot: str, forecast_bytes: int) -> list[list[str]]:
    """kafka-python's transactional `send`, nothing else in the process."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=boot)
    admin.create_topics([NewTopic("phases-send", 4, 1)])
    admin.close()
    producer = KafkaProducer(
        bootstrap_servers=boot,
        transactional_id="phases-send",
        linger_ms=20,
        batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    producer.init_transactions()
    keys = [f"s{i}".encode() for i in range(1000)]
    rows = []
    for size in (forecast_bytes, 100):
        value = os.urandom(size)
        for explicit in (True, False):
            per_record = []
            for _ in range(4):  # the first is a warm-up
                producer.begin_transaction()
                t = time.perf_counter()
                for i in range(5000):
                    part = i % 4 if explicit else None
                    producer.send("phases-send", key=keys[i % 1000], value=value, partition=part)
                per_record.append((time.perf_counter() - t) / 5000)
                producer.commit_transaction()
            how = "explicit partition" if explicit else "default partitioner"
            rows.append(
                [
                    f"send alone, {size:,} B, {how}",
                    "-",
                    f"{statistics.median(per_record[1:]) * 1e6:.1f}",
                    "5,000 records a transaction; median of 3",
                ]
            )
    producer.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--series", type=int, default=1000)
    p.add_argument("--events", type=int, default=60_000)
    p.add_argument("--kind", default="selective_ssm")
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--lookback", type=int, default=96)
    p.add_argument("--partitions", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(1)  # as the worker does
    with local_broker() as (boot, tmp):
        rows = phases(boot, args, tmp)
    print(
        f"model: {args.kind}, d_model {args.d_model}, {args.series:,} series, "
        f"{args.partitions} partitions, one processor in this process, {os.cpu_count()} cores"
    )
    print("| phase | time | us per event | note |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
