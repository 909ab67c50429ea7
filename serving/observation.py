"""Observation messages: decode and validate the bytes of one Kafka record, or say why not.

Value (JSON, UTF-8):
    {"series": str, "ts": ISO-8601, "values": {channel: number | null},
     "covariates": {name: number}}
A channel left out or null is missing (the model steps with its mask). Naive timestamps are taken
as they are, like the training data; aware ones are converted to UTC; both must lie in the years
1678-2261 (int64 nanoseconds). Decoding never raises: a bad
record becomes a `Rejection` with a reason, which the consumer dead-letters.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import orjson

__all__ = [
    "SERIES_ID",
    "TS_MAX",
    "TS_MIN",
    "Observation",
    "ObservationSpec",
    "Rejection",
    "decode_observation",
    "parse_timestamp",
]

_F32_MAX = float(np.finfo(np.float32).max)
# Timestamps are int64 nanoseconds, which span 1677-09-21 .. 2262-04-11; whole years inside that.
TS_MIN, TS_MAX = datetime(1678, 1, 1), datetime(2262, 1, 1)
_EPOCH = datetime(1970, 1, 1)
SERIES_ID = re.compile(r"^[A-Za-z0-9._:/@=+-]{1,256}$")


@dataclass(frozen=True)
class ObservationSpec:
    """What the model accepts: channel names, static covariate names, limits."""

    channels: tuple[str, ...]
    static_covariates: tuple[str, ...] = ()
    max_bytes: int = 65536
    max_series_id: int = 256


@dataclass(frozen=True)
class Observation:
    series: str
    ts: int  # nanoseconds since the epoch (UTC for aware input)
    values: np.ndarray  # [C] float32, NaN = missing
    static: np.ndarray  # [S] float32


@dataclass(frozen=True)
class Rejection:
    reason: str  # a stable code, e.g. "not_json", "unknown_channel", "out_of_order"
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def parse_timestamp(text: object) -> int | None:
    """ISO-8601 -> ns since the epoch, or None when it is not one or lies outside 1678-2261
    (beyond that, int64 nanoseconds would wrap around silently)."""
    if not isinstance(text, str) or not 10 <= len(text) <= 40:
        return None
    try:
        stamp = datetime.fromisoformat(text)
        if stamp.tzinfo is not None:
            stamp = stamp.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):  # year 1 with a positive offset overflows
        return None
    if not TS_MIN <= stamp < TS_MAX:
        return None
    delta = stamp - _EPOCH  # integer arithmetic: numpy's datetime64(datetime) is 3x slower
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _number(value: object) -> float | None:
    """A finite JSON number as float; None for anything else (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    out = float(value)
    # Finite as float32 too: the model reads float32, where 1e39 would be inf.
    return out if math.isfinite(out) and abs(out) <= _F32_MAX else None


def decode_observation(
    raw: bytes | None, key: bytes | None, spec: ObservationSpec
) -> Observation | Rejection:
    if raw is None:
        return Rejection("empty", "the record has no value")
    if len(raw) > spec.max_bytes:
        return Rejection("oversize", f"{len(raw)} bytes; the limit is {spec.max_bytes}")
    try:
        # Strict JSON: NaN, Infinity and numbers beyond double range are errors, not values.
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return Rejection("not_json", str(e)[:200])
    if not isinstance(doc, dict):
        return Rejection("not_object", f"the value is a JSON {type(doc).__name__}, not an object")
    unknown = sorted(set(doc) - {"series", "ts", "values", "covariates"})
    if unknown:
        return Rejection("unknown_field", f"unknown field(s) {unknown[:5]}")
    series = doc.get("series")
    if (
        not isinstance(series, str)
        or len(series) > spec.max_series_id
        or not SERIES_ID.match(series)
    ):
        return Rejection(
            "bad_series",
            f"series must be 1-{spec.max_series_id} characters of [A-Za-z0-9._:/@=+-]",
        )
    if key is not None and key != series.encode():
        return Rejection("key_mismatch", "the record key must equal the series id")
    ts = parse_timestamp(doc.get("ts"))
    if ts is None:
        return Rejection(
            "bad_timestamp", "ts must be an ISO-8601 date-time string in the years 1678-2261"
        )
    values = doc.get("values")
    if not isinstance(values, dict):
        return Rejection("bad_values", "values must be an object {channel: number | null}")
    unknown = sorted(set(values) - set(spec.channels))
    if unknown:
        return Rejection(
            "unknown_channel", f"unknown channel(s) {unknown[:5]}; known {list(spec.channels)}"
        )
    given = [values.get(name) for name in spec.channels]
    x64 = np.array(given) if all(type(v) is float for v in given) else None
    if x64 is not None and (np.abs(x64) <= _F32_MAX).all():
        x = x64.astype(np.float32)  # the usual record, every channel a float: one array op
    else:
        x = np.full(len(spec.channels), np.nan, dtype=np.float32)
        for i, (name, v) in enumerate(zip(spec.channels, given, strict=True)):
            if v is None:
                continue
            number = _number(v)
            if number is None:
                return Rejection("bad_value", f"values.{name} must be a finite number or null")
            x[i] = number
    covariates = doc.get("covariates", {})
    if not isinstance(covariates, dict):
        return Rejection("bad_covariates", "covariates must be an object {name: number}")
    unknown = sorted(set(covariates) - set(spec.static_covariates))
    if unknown:
        return Rejection("unknown_covariate", f"unknown covariate(s) {unknown[:5]}")
    static = np.zeros(len(spec.static_covariates), dtype=np.float32)
    for i, name in enumerate(spec.static_covariates):
        number = _number(covariates.get(name))
        if number is None:
            return Rejection(
                "bad_covariate", f"covariates.{name} must be a finite number (required)"
            )
        static[i] = number
    return Observation(series, ts, x, static)
