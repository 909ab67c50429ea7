"""The latest committed forecast of every series, read back from the forecasts topic.

The REST ingress answers `GET /v1/series/{id}/forecast` from this view rather than asking the
processor replicas: it shows exactly what a read_committed subscriber sees, whichever replica owns
the series' partition, and survives a processor restart. Bounded: the least recently updated series
are dropped beyond `max_series`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from typing import Any

from kafka import KafkaConsumer

__all__ = ["ForecastView"]

log = logging.getLogger("statecast.serving")


class ForecastView:
    def __init__(
        self, bootstrap_servers: str, topic: str, max_series: int = 1_000_000, **kafka: Any
    ):
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.max_series = max_series
        self.kafka = kafka
        self.latest: OrderedDict[str, bytes] = OrderedDict()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="statecast-view", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive() and self.error is None

    def _run(self) -> None:
        try:
            consumer = KafkaConsumer(
                self.topic,
                bootstrap_servers=self.bootstrap_servers,
                group_id=None,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                enable_auto_commit=False,
                **self.kafka,
            )
            try:
                while not self.stop_event.is_set():
                    for records in consumer.poll(timeout_ms=200).values():
                        with self.lock:
                            for r in records:
                                series = r.key.decode() if r.key else ""
                                self.latest[series] = r.value
                                self.latest.move_to_end(series)
                            while len(self.latest) > self.max_series:
                                self.latest.popitem(last=False)
            finally:
                consumer.close()
        except BaseException as e:  # reported by /healthz
            self.error = e
            log.exception("forecast view stopped")

    def get(self, series: str) -> dict[str, Any] | None:
        with self.lock:
            raw = self.latest.get(series)
        return None if raw is None else json.loads(raw)

    def series(self, offset: int, limit: int) -> tuple[int, list[str]]:
        with self.lock:
            names = list(self.latest)
        names.sort()
        return len(names), names[offset : offset + limit]

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)
