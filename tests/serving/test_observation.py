"""The observation decoder: good records decode, every bad one is a Rejection with a reason, and
no input makes it raise."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.observation import (
    TS_MAX,
    TS_MIN,
    Observation,
    ObservationSpec,
    Rejection,
    decode_observation,
)

SPEC = ObservationSpec(channels=("a", "b"), static_covariates=("elev",), max_bytes=512)


def good(**change: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "series": "station-1",
        "ts": "2024-01-01T05:00:00",
        "values": {"a": 1.5, "b": None},
        "covariates": {"elev": 10},
    }
    doc.update(change)
    return doc


def test_good_record() -> None:
    out = decode_observation(json.dumps(good()).encode(), b"station-1", SPEC)
    assert isinstance(out, Observation)
    assert out.series == "station-1"
    assert out.ts == np.datetime64("2024-01-01T05:00:00", "ns").astype(np.int64)
    assert out.values[0] == 1.5 and np.isnan(out.values[1])
    aware = decode_observation(
        json.dumps(good(ts="2024-01-01T07:00:00+02:00")).encode(), None, SPEC
    )
    assert isinstance(aware, Observation) and aware.ts == out.ts


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b"[1, 2]", "not_object"),
        (json.dumps(good(extra=1)).encode(), "unknown_field"),
        (json.dumps(good(series="")).encode(), "bad_series"),
        (json.dumps(good(series="has space")).encode(), "bad_series"),
        (json.dumps(good(series="x" * 300)).encode(), "bad_series"),
        (b" " * 600, "oversize"),
        (json.dumps(good(series=5)).encode(), "bad_series"),
        (json.dumps(good(ts="yesterday")).encode(), "bad_timestamp"),
        (json.dumps(good(ts=1700000000)).encode(), "bad_timestamp"),
        # Beyond int64 nanoseconds: once wrapped around silently (9999 -> 1816), or raised.
        (json.dumps(good(ts="9999-12-31T00:00:00")).encode(), "bad_timestamp"),
        (json.dumps(good(ts="0001-01-01T00:00:00")).encode(), "bad_timestamp"),
        (json.dumps(good(ts="0001-01-01T00:00:00+01:00")).encode(), "bad_timestamp"),
        (json.dumps(good(ts="9999-12-31T23:00:00-05:00")).encode(), "bad_timestamp"),
        (json.dumps(good(values=[1, 2])).encode(), "bad_values"),
        (json.dumps(good(values={"zzz": 1})).encode(), "unknown_channel"),
        (json.dumps(good(values={"a": "1.5"})).encode(), "bad_value"),
        (json.dumps(good(values={"a": True})).encode(), "bad_value"),
        (b'{"series":"s","ts":"2024-01-01T00:00:00","values":{"a":NaN}}', "not_json"),
        (b'{"series":"s","ts":"2024-01-01T00:00:00","values":{"a":Infinity}}', "not_json"),
        (b'{"series":"s","ts":"2024-01-01T00:00:00","values":{"a":1e999}}', "not_json"),
        (b'{"series":"s","ts":"2024-01-01T00:00:00","values":{"a":1e300}}', "bad_value"),
        (json.dumps(good(covariates={})).encode(), "bad_covariate"),
        (json.dumps(good(covariates={"elev": 1, "x": 2})).encode(), "unknown_covariate"),
        (json.dumps(good(covariates=3)).encode(), "bad_covariates"),
        (None, "empty"),
    ],
)
def test_bad_records_are_rejected_with_a_reason(raw: bytes | None, reason: str) -> None:
    out = decode_observation(raw, None, SPEC)
    assert isinstance(out, Rejection), out
    assert out.reason == reason, out
    assert out.detail


def test_key_must_match_series() -> None:
    out = decode_observation(json.dumps(good()).encode(), b"other", SPEC)
    assert isinstance(out, Rejection) and out.reason == "key_mismatch"


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600) | json_values.map(lambda v: json.dumps(v).encode()))
def test_decoder_never_raises(raw: bytes) -> None:
    out = decode_observation(raw, None, SPEC)
    assert isinstance(out, (Observation, Rejection))
    if isinstance(out, Observation):
        assert np.isfinite(out.static).all()
        assert not np.isinf(out.values).any()


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["a", "b"]),
        st.none() | st.floats(allow_nan=False, allow_infinity=False, width=32),
    ),
    st.datetimes(min_value=datetime(1678, 1, 1), max_value=datetime(2261, 12, 31)),
)
def test_decoder_accepts_every_well_formed_record(
    values: dict[str, float | None], when: object
) -> None:
    doc = {"series": "s", "ts": when.isoformat(), "values": values, "covariates": {"elev": 1}}  # type: ignore[attr-defined]
    out = decode_observation(json.dumps(doc).encode(), None, SPEC)
    assert isinstance(out, Observation), out


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(),
    st.none() | st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m))),
)
def test_every_timestamp_is_exact_or_rejected(when: datetime, tz: timezone | None) -> None:
    """Any date-time, naive or with any offset: the exact instant in ns, or `bad_timestamp` when
    it lies outside the years 1678-2261; never a wrapped-around value, never an exception."""
    stamp = when.replace(tzinfo=tz)
    out = decode_observation(json.dumps(good(ts=stamp.isoformat())).encode(), None, SPEC)
    try:
        naive = stamp if tz is None else stamp.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        naive = None
    if naive is None or not TS_MIN <= naive < TS_MAX:
        assert isinstance(out, Rejection) and out.reason == "bad_timestamp", out
        return
    assert isinstance(out, Observation), out
    epoch = datetime(1970, 1, 1)
    delta = naive - epoch
    want = (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000
    assert out.ts == want
