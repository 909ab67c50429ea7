"""Publish a dataset as a live stream of observation messages (also how a backtest runs through the
very same streaming path as production).

Rows go out in time order; with `series_column` each row belongs to that series, otherwise the
whole file is one series named after it. `rate` limits messages per second (0 = as fast as the
producer goes). Missing values (empty cells, NaN, the sentinels) are sent as null.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

__all__ = ["ReplayConfig", "observation_messages", "replay"]


@dataclass(frozen=True)
class ReplayConfig:
    data: Path
    topic: str
    bootstrap_servers: str
    rate: float = 0.0
    series_column: str | None = None
    time_column: str = "date"
    start: str | None = None  # only rows at or after this ISO time
    limit: int = 0  # at most this many messages (0 = all)
    missing_values: tuple[float, ...] = (-9999.0,)


def observation_messages(cfg: ReplayConfig) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of every row, in time order."""
    path = Path(cfg.data)
    frame = (
        pl.read_parquet(path)
        if path.suffix == ".parquet"
        else pl.read_csv(path, try_parse_dates=True)
    )
    if cfg.time_column not in frame.columns:
        raise ValueError(
            f"{path}: no time column {cfg.time_column!r} (columns {frame.columns[:8]})"
        )
    if cfg.series_column and cfg.series_column not in frame.columns:
        raise ValueError(f"{path}: no series column {cfg.series_column!r}")
    frame = frame.with_columns(pl.col(cfg.time_column).cast(pl.Datetime("us")))
    if cfg.start:
        frame = frame.filter(pl.col(cfg.time_column) >= pl.lit(cfg.start).str.to_datetime())
    frame = frame.sort(cfg.time_column, maintain_order=True)
    skip = {cfg.time_column, cfg.series_column}
    channels = [c for c in frame.columns if c not in skip]
    sentinels = set(cfg.missing_values)
    if cfg.limit:
        frame = frame.head(cfg.limit)
    for row in frame.iter_rows(named=True):
        series = str(row[cfg.series_column]) if cfg.series_column else path.stem
        values = {}
        for c in channels:
            v = row[c]
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            values[c] = float(v) if ok and v not in sentinels else None
        doc = {"series": series, "ts": row[cfg.time_column].isoformat(), "values": values}
        yield series.encode(), json.dumps(doc, separators=(",", ":")).encode()


def replay(cfg: ReplayConfig, progress: bool = True) -> int:
    """Send every message to Kafka; -> messages sent."""
    from kafka import KafkaProducer
    from tqdm import tqdm

    producer = KafkaProducer(bootstrap_servers=cfg.bootstrap_servers, linger_ms=10, acks="all")
    sent = 0
    t0 = time.monotonic()
    try:
        for key, value in tqdm(observation_messages(cfg), disable=not progress, unit="msg"):
            producer.send(cfg.topic, key=key, value=value)
            sent += 1
            if cfg.rate > 0:
                ahead = sent / cfg.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush()
    finally:
        producer.close()
    return sent
