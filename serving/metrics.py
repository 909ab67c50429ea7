"""Processor counters and the Prometheus text the REST ingress serves at /metrics.

Each processor replica keeps a `ProcessorMetrics` and reports `snapshot()` to the ingress; the
ingress renders every live replica's snapshot with a `replica` label, so counters stay monotonic
per replica and Prometheus' rate() gives events/s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["LATENCY_BUCKETS", "ProcessorMetrics", "render_prometheus"]

# Seconds per event in a batch (batch step time / events), and per batch.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class ProcessorMetrics:
    events: int = 0
    forecasts: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    idle_restarts: int = 0
    evictions: int = 0
    checkpoints: int = 0
    checkpoint_seconds: float = 0.0
    checkpoint_failures: int = 0
    corrupt_checkpoint_records: int = 0
    restores: int = 0
    transaction_failures: int = 0
    model_swaps: int = 0
    reconnects: int = 0
    live_series: int = 0
    state_bytes: int = 0
    lag: int = 0
    batch_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    batch_seconds_sum: float = 0.0
    batches: int = 0
    _rate_window: list[tuple[float, int]] = field(default_factory=list)

    def count_rejection(self, reason: str) -> None:
        self.dead_letters[reason] = self.dead_letters.get(reason, 0) + 1

    def observe_batch(self, seconds: float, events: int) -> None:
        i = next((k for k, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))
        self.batch_buckets[i] += 1
        self.batch_seconds_sum += seconds
        self.batches += 1

    def events_per_second(self) -> float:
        now = time.monotonic()
        self._rate_window.append((now, self.events))
        self._rate_window = [(t, e) for t, e in self._rate_window if now - t <= 10.0]
        t0, e0 = self._rate_window[0]
        return (self.events - e0) / (now - t0) if now > t0 else 0.0

    def snapshot(self) -> dict[str, object]:
        return {
            "events": self.events,
            "forecasts": self.forecasts,
            "dead_letters": dict(self.dead_letters),
            "idle_restarts": self.idle_restarts,
            "evictions": self.evictions,
            "checkpoints": self.checkpoints,
            "checkpoint_seconds": self.checkpoint_seconds,
            "checkpoint_failures": self.checkpoint_failures,
            "corrupt_checkpoint_records": self.corrupt_checkpoint_records,
            "restores": self.restores,
            "transaction_failures": self.transaction_failures,
            "model_swaps": self.model_swaps,
            "reconnects": self.reconnects,
            "live_series": self.live_series,
            "state_bytes": self.state_bytes,
            "lag": self.lag,
            "events_per_second": self.events_per_second(),
            "batch_buckets": list(self.batch_buckets),
            "batch_seconds_sum": self.batch_seconds_sum,
            "batches": self.batches,
        }


def render_prometheus(snapshots: dict[str, dict[str, object]]) -> str:
    """Prometheus text exposition (version 0.0.4) of every replica's snapshot."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    simple = [
        ("statecast_events_total", "counter", "events", "Observations consumed"),
        ("statecast_forecasts_total", "counter", "forecasts", "Forecasts produced"),
        ("statecast_evictions_total", "counter", "evictions", "Series evicted (idle or capacity)"),
        ("statecast_checkpoints_total", "counter", "checkpoints", "State checkpoints committed"),
        (
            "statecast_checkpoint_failures_total",
            "counter",
            "checkpoint_failures",
            "Checkpoints the changelog topic refused (retried with backoff)",
        ),
        (
            "statecast_corrupt_checkpoint_records_total",
            "counter",
            "corrupt_checkpoint_records",
            "Changelog records a restore could not use (logged, skipped)",
        ),
        ("statecast_restores_total", "counter", "restores", "Partitions restored"),
        (
            "statecast_transaction_failures_total",
            "counter",
            "transaction_failures",
            "Aborted transactions (rewound to the last commit)",
        ),
        ("statecast_model_swaps_total", "counter", "model_swaps", "Model swaps"),
        ("statecast_reconnects_total", "counter", "reconnects", "Reconnections after Kafka errors"),
        ("statecast_live_series", "gauge", "live_series", "Series whose state is in memory"),
        ("statecast_state_bytes", "gauge", "state_bytes", "Bytes of hidden state in memory"),
        ("statecast_consumer_lag", "gauge", "lag", "Records behind the end of the input"),
        (
            "statecast_events_per_second",
            "gauge",
            "events_per_second",
            "Events per second over the last 10 s",
        ),
    ]
    for name, kind, key, help_text in simple:
        family(name, kind, help_text)
        for replica, snap in sorted(snapshots.items()):
            lines.append(f'{name}{{replica="{replica}"}} {float(snap[key])}')  # type: ignore[arg-type]
    family("statecast_dead_letters_total", "counter", "Records sent to the dead-letter topic")
    for replica, snap in sorted(snapshots.items()):
        for reason, count in sorted(snap["dead_letters"].items()):  # type: ignore[attr-defined]
            lines.append(
                f'statecast_dead_letters_total{{replica="{replica}",reason="{reason}"}} {count}'
            )
    name = "statecast_step_batch_seconds"
    family(name, "histogram", "Time to decode, step and encode one polled batch")
    for replica, snap in sorted(snapshots.items()):
        cumulative = 0
        buckets = list(snap["batch_buckets"])  # type: ignore[call-overload]
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'{name}_bucket{{replica="{replica}",le="{le}"}} {cumulative}')
        lines.append(f'{name}_sum{{replica="{replica}"}} {snap["batch_seconds_sum"]}')
        lines.append(f'{name}_count{{replica="{replica}"}} {snap["batches"]}')
    return "\n".join(lines) + "\n"
