"""Real-broker helpers for the serving tests: topics, a keyed producer, a read_committed reader."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from forecast.artifact import save_forecaster
from serving.observation import Observation
from serving.update import Forecast, StreamModel, update
from tests.serving.conftest import CHANNELS, HOUR, T0


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


def save_model(m: StreamModel, folder: Path) -> Path:
    extra = {
        "channels": list(CHANNELS),
        "frequency": "h",
        "calendar": True,
        "static_covariates": ["elevation"],
        "lookback": m.warmup,
    }
    return save_forecaster(m.model, folder, extra=extra)


def make_stream(n_series: int, n_steps: int, seed: int = 0) -> list[dict[str, object]]:
    """Observations interleaved across series in time order, ~5% missing values."""
    rng = np.random.default_rng(seed)
    docs = []
    for k in range(n_steps):
        for s in range(n_series):
            values = {}
            for c in CHANNELS:
                v = float(rng.normal() * 3 + 10 + s)
                values[c] = None if rng.random() < 0.05 else round(v, 4)
            ts = np.datetime64(T0 + k * HOUR, "ns").astype("datetime64[s]")
            docs.append(
                {
                    "series": f"s{s:03d}",
                    "ts": str(ts),
                    "values": values,
                    "covariates": {"elevation": float(s)},
                }
            )
    return docs


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]]) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    n = 0
    for key, value in records:
        producer.send(topic, key=key, value=value)
        n += 1
    producer.flush()
    producer.close()
    return n


class Tail:
    """A read_committed reader that keeps its place between calls."""

    def __init__(self, bootstrap: str, topic: str):
        self.consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        self.records: list[dict[str, object]] = []

    def read(self, at_least: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while len(self.records) < at_least and time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=200).values():
                self.records.extend(json.loads(r.value) for r in records)
        return len(self.records)

    def close(self) -> None:
        self.consumer.close()


def read_committed(
    bootstrap: str, topic: str, expect: int, timeout: float
) -> list[dict[str, object]]:
    """Every committed record of `topic` (JSON values) once `expect` are there, or at timeout."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    out: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expect and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(json.loads(r.value) for r in records)
        # A little longer: anything beyond `expect` would be a duplicate and must be seen.
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(json.loads(r.value) for r in records)
    finally:
        consumer.close()
    return out


def offline_forecasts(
    m: StreamModel, docs: list[dict[str, object]]
) -> dict[tuple[str, str], Forecast]:
    """The same observations through `update` one series and one step at a time."""
    from serving.observation import ObservationSpec, decode_observation

    spec: ObservationSpec = m.spec
    states: dict[str, object] = {}
    out = {}
    for doc in docs:
        obs = decode_observation(json.dumps(doc).encode(), None, spec)
        assert isinstance(obs, Observation)
        state, f = update(m, states.get(obs.series), obs)  # type: ignore[arg-type]
        states[obs.series] = state
        assert isinstance(f, Forecast)
        out[(obs.series, str(doc["ts"]))] = f
    return out


def assert_exactly_once(
    m: StreamModel,
    docs: list[dict[str, object]],
    got: list[dict[str, object]],
    tol: float,
    label: str | None = None,
) -> float:
    """Every observation has exactly one forecast, equal to the offline loop; -> worst rel err."""
    expected = offline_forecasts(m, docs)
    keys = [(str(g["series"]), str(g["ts"])) for g in got]
    dupes = len(keys) - len(set(keys))
    missing = set(expected) - set(keys)
    assert dupes == 0 and not missing and len(keys) == len(expected), (
        f"{len(keys)} forecasts for {len(expected)} observations: "
        f"{dupes} duplicated, {len(missing)} missing"
    )
    worst = 0.0
    for g in got:
        f = expected[(str(g["series"]), str(g["ts"]))]
        q = np.stack([np.asarray(g["quantiles"][f"{q:g}"]) for q in m.model.quantiles], -1)  # type: ignore[index]
        err = np.abs(q - f.y) / (np.abs(f.y) + 1.0)
        worst = max(worst, float(err.max()))
        assert g["model"] == (label or m.label) and g["warming"] == f.warming
    assert worst <= tol, f"worst relative error {worst:.2e} > {tol:.0e}"
    return worst
