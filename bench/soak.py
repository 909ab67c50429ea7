"""Soak: the stream processor under a steady load for a long time; does anything creep?

    python -m bench.soak                                  # 30 minutes at half the measured max
    python -m bench.soak --minutes 2 --sample-seconds 10  # a smoke run
    python -m bench.soak --rate 800 --out build/soak/run1

Against a real broker started by deploy/kafka/kafka.sh on free ports (or `--bootstrap`), one
stream processor as its own process (`python -m serving.worker`, exactly-once transactions and
checkpoints on), the same model and stream as bench/stream.py:
1. unless `--rate` is given, the maximum is measured first from a backlog of
   `--calibrate-events` (events / time between the group's first and last commit), and the soak
   runs at half of it;
2. a paced producer sends `--rate` events/s for `--minutes`; a read_committed consumer times
   each forecast against its observation's send time;
3. every `--sample-seconds` (60): the worker's RSS, the consumer lag (events produced but not
   yet committed by the group), p50 and p99 of the end-to-end latencies of that interval, and
   the events sent and forecasts seen in it.
Writes soak.csv and soak.png under `--out`, prints the table, and says for each series whether
it stays flat: the mean of the last third of the samples against the first third, flat when
within 10% or an absolute floor (RSS 10 MiB, lag half a second of input, latency 50 ms), else
RISING (a creep: what a soak looks for) or falling (usually the start-up backlog draining).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from bench.stream import (
    _EXTRA,
    ROOT,
    _committed,
    _messages,
    _model,
    _produce,
    _rss_of,
    _wait_committed,
    local_broker,
    start_worker,
)

__all__ = ["Sample", "flatness", "main"]


@dataclass(frozen=True)
class Sample:
    minute: float  # since the soak started
    rss_mib: float
    lag_events: int
    p50_ms: float
    p99_ms: float
    sent: int  # in this interval
    forecasts: int  # in this interval
    slow_tx: int  # transactions over --slow-transaction in this interval (phases in worker.log)


# Absolute floors under which a change is noise, not a trend.
FLOORS = {"rss_mib": 10.0, "lag_events": None, "p50_ms": 50.0, "p99_ms": 50.0}


def flatness(samples: list[Sample], rate: float, tol: float = 0.10) -> dict[str, str]:
    """Per series: last third's mean against the first third's -> a verdict with the figures."""
    out: dict[str, str] = {}
    third = len(samples) // 3
    for name, floor in FLOORS.items():
        if third == 0:
            out[name] = "n/a (fewer than 3 samples)"
            continue
        first = statistics.fmean(getattr(s, name) for s in samples[:third])
        last = statistics.fmean(getattr(s, name) for s in samples[-third:])
        allowed = max(tol * abs(first), rate * 0.5 if floor is None else floor)
        change = f"{first:,.1f} -> {last:,.1f}"
        if abs(first) > 0:
            change += f" ({100 * (last / first - 1):+.1f}%)"
        verdict = (
            "flat" if abs(last - first) <= allowed else "RISING" if last > first else "falling"
        )
        out[name] = f"{verdict}: {change}"
    return out


class Pacer(threading.Thread):
    """Sends the round-robin stream from event `start` on at `rate` events/s until stopped;
    remembers each observation's send time until its forecast is seen."""

    def __init__(self, boot: str, topic: str, n_series: int, start: int, rate: float):
        super().__init__(daemon=True)
        self.boot, self.topic, self.n_series, self.start_at, self.rate = (
            boot,
            topic,
            n_series,
            start,
            rate,
        )
        self.sent: dict[tuple[str, str], float] = {}
        self.count = 0
        self.lock = threading.Lock()
        self.stop_event = threading.Event()

    def run(self) -> None:
        from kafka import KafkaProducer

        p = KafkaProducer(bootstrap_servers=self.boot, linger_ms=1, acks=1)
        rng = np.random.default_rng(self.start_at)
        t0 = time.monotonic()
        for j, (series, ts, value) in enumerate(
            _messages(self.n_series, self.start_at, 10**12, rng)
        ):
            if self.stop_event.is_set():
                break
            ahead = t0 + j / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            with self.lock:
                self.sent[(series, ts)] = time.monotonic()
                self.count += 1
            p.send(self.topic, key=series.encode(), value=value)
        p.flush()
        p.close()


def soak(boot: str, args: argparse.Namespace, tmp: Path) -> tuple[list[Sample], float, int]:
    from kafka import KafkaConsumer
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.structs import TopicPartition

    from forecast.artifact import save_forecaster

    m = _model(args.kind, args.d_model, args.lookback)
    folder = save_forecaster(m.model, tmp / "model", extra=_EXTRA | {"lookback": args.lookback})
    topic, out, group = "soak-in", "soak-out", "soak"
    admin = KafkaAdminClient(bootstrap_servers=boot)
    admin.create_topics([NewTopic(topic, args.partitions, 1)])
    rate = args.rate
    backlog = 0 if rate else args.calibrate_events
    if backlog:
        _produce(boot, topic, args.series, 0, backlog)
    log = open(args.out / "worker.log", "w")  # noqa: SIM115 (the worker keeps it)
    worker = start_worker(
        boot, folder, topic, out, group, log, ["--slow-transaction", str(args.slow_transaction)]
    )
    consumer = None
    pacer = None
    try:
        if backlog:
            e0 = _wait_committed(admin, group, topic, 1, 300, [worker])
            t0 = time.perf_counter()
            _wait_committed(admin, group, topic, backlog, 3600, [worker])
            peak = (backlog - e0) / (time.perf_counter() - t0)
            rate = peak / 2
            print(f"measured maximum {peak:,.0f} events/s; soaking at half: {rate:,.0f}/s")
        consumer = KafkaConsumer(
            bootstrap_servers=boot,
            group_id=None,
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        # The worker creates the forecasts topic when it starts; with --rate (no calibration
        # backlog first) it may not exist yet.
        deadline = time.monotonic() + 120
        while not (found := consumer.partitions_for_topic(out)):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not create {out} (see worker.log)")
            time.sleep(0.5)
            consumer.topics()  # refreshes the metadata
        parts = [TopicPartition(out, p) for p in found]
        consumer.assign(parts)
        consumer.seek_to_end()
        pacer = Pacer(boot, topic, args.series, backlog, rate)
        pacer.start()
        samples: list[Sample] = []
        start = time.monotonic()
        end = start + args.minutes * 60
        next_sample = start + args.sample_seconds
        lat: list[float] = []
        sent_before = seen = seen_before = slow_before = 0
        while time.monotonic() < end:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}")
            for records in consumer.poll(timeout_ms=100).values():
                now = time.monotonic()
                for r in records:
                    doc = orjson.loads(r.value)
                    with pacer.lock:
                        t = pacer.sent.pop((doc["series"], doc["ts"]), None)
                    if t is not None:
                        lat.append((now - t) * 1e3)
                        seen += 1
            if time.monotonic() >= next_sample:
                with pacer.lock:
                    sent_total = pacer.count
                q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
                slow = (args.out / "worker.log").read_text().count("slow transaction:")
                samples.append(
                    Sample(
                        minute=round((time.monotonic() - start) / 60, 2),
                        rss_mib=round(_rss_of(worker.pid), 1),
                        lag_events=max(backlog + sent_total - _committed(admin, group, topic), 0),
                        p50_ms=round(statistics.median(lat), 1) if lat else float("nan"),
                        p99_ms=round(q[98], 1),
                        sent=sent_total - sent_before,
                        forecasts=seen - seen_before,
                        slow_tx=slow - slow_before,
                    )
                )
                print(" ".join(f"{k}={v}" for k, v in asdict(samples[-1]).items()), flush=True)
                lat, sent_before, seen_before, slow_before = [], sent_total, seen, slow
                next_sample += args.sample_seconds
    finally:
        if pacer is not None:
            pacer.stop_event.set()
            pacer.join(30)
        if consumer is not None:
            consumer.close()
        worker.terminate()
        worker.wait(30)
        admin.close()
    return samples, rate, backlog


def write(samples: list[Sample], verdicts: dict[str, str], rate: float, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    with open(folder / "soak.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(samples[0])))
        w.writeheader()
        w.writerows(asdict(s) for s in samples)
    x = [s.minute for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    panels: list[tuple[Any, list[str], str]] = [
        (axes[0], ["rss_mib"], "worker RSS (MiB)"),
        (axes[1], ["lag_events"], "consumer lag (events)"),
        (axes[2], ["p50_ms", "p99_ms"], "end-to-end latency (ms)"),
    ]
    for ax, names, label in panels:
        for name in names:
            ax.plot(x, [getattr(s, name) for s in samples], marker=".", label=name)
        ax.set_ylabel(label)
        ax.set_title("; ".join(f"{n}: {verdicts[n]}" for n in names), fontsize=8)
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend()
    axes[-1].set_xlabel("minutes")
    fig.suptitle(f"bench/soak.py at {rate:,.0f} events/s")
    fig.tight_layout()
    fig.savefig(folder / "soak.png", dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=None, help="events/s; default half the max")
    p.add_argument("--sample-seconds", type=float, default=60.0)
    p.add_argument(
        "--slow-transaction",
        type=float,
        default=0.25,
        help="seconds; the worker logs longer transactions with their phases (counted per sample)",
    )
    p.add_argument("--calibrate-events", type=int, default=100_000)
    p.add_argument("--series", type=int, default=1000)
    p.add_argument("--out", type=Path, default=None, help="default build/soak/<UTC time>")
    p.add_argument("--kind", default="selective_ssm")
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--lookback", type=int, default=96)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--bootstrap", default=None, help="use this broker instead of starting one")
    args = p.parse_args()
    args.out = args.out or ROOT / "build" / "soak" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # as the worker does
    with local_broker(args.bootstrap) as (boot, tmp):
        samples, rate, backlog = soak(boot, args, tmp)
    if not samples:
        raise SystemExit("no samples: --minutes shorter than --sample-seconds")
    verdicts = flatness(samples, rate)
    write(samples, verdicts, rate, args.out)
    print(
        f"model: {args.kind}, d_model {args.d_model}, {args.series:,} series, "
        f"{args.partitions} partitions, one processor; {rate:,.0f} events/s for "
        f"{args.minutes:g} min after a {backlog:,}-event calibration; {os.cpu_count()} cores"
    )
    print(
        "| minute | worker RSS (MiB) | lag (events) | p50 (ms) | p99 (ms) | sent | forecasts | "
        f"transactions > {args.slow_transaction:g} s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for s in samples:
        print(
            f"| {s.minute:g} | {s.rss_mib:,.1f} | {s.lag_events:,} | {s.p50_ms:,.0f} | "
            f"{s.p99_ms:,.0f} | {s.sent:,} | {s.forecasts:,} | {s.slow_tx:,} |"
        )
    print("\nlast third against the first third:")
    for name, verdict in verdicts.items():
        print(f"  {name}: {verdict}")
    print(f"\nwrote {args.out / 'soak.csv'} and {args.out / 'soak.png'}")


if __name__ == "__main__":
    main()
