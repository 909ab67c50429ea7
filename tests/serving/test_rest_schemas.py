"""Every REST schema under arbitrary and near-valid input, in-process (serving/app.py make_api over
a real model): the answer is a valid response or a documented 4xx with a reason, never a 5xx or
an exception. The same app behind real Ray Serve is fuzzed from its own OpenAPI in
tests/serving/test_app.py (schemathesis)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.observation import SERIES_ID, Observation, decode_observation
from serving.update import Forecast, StreamModel, update
from tests.reliability import Trial
from tests.serving.conftest import CHANNELS, small_stream_model
from tests.serving.rest_client import (
    AUTH,
    TOKEN,
    Reply,
    call,
    documented_error,
    fuzz_openapi,
    make_app,
    run_recorded,
)

MAX_HISTORY = 40
START = datetime(2024, 3, 1)


@pytest.fixture(scope="module")
def model() -> StreamModel:
    return small_stream_model()


# ---- POST /v1/forecast ------------------------------------------------------------------------

finite32 = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A valid history: strictly increasing hours on the grid, channels present or missing."""
    n = draw(st.integers(1, 12))
    steps = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    out, t = [], START + timedelta(hours=draw(st.integers(0, 1000)))
    for s in steps:
        t += timedelta(hours=s)
        values = draw(st.dictionaries(st.sampled_from(CHANNELS), st.none() | finite32))
        out.append(
            {"ts": t.isoformat(), "values": values, "covariates": {"elevation": draw(finite32)}}
        )
    return out


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)

# Each turns a valid body into an invalid one (the name says how).
MUTATIONS: dict[str, Callable[[dict[str, Any]], dict[str, Any] | bytes]] = {
    "no history": lambda b: {k: v for k, v in b.items() if k != "history"},
    "empty history": lambda b: {**b, "history": []},
    "history too long": lambda b: {**b, "history": b["history"] * (MAX_HISTORY + 1)},
    "history not a list": lambda b: {**b, "history": b["history"][0]},
    "extra field": lambda b: {**b, "extra": 1},
    "entry extra field": lambda b: _entry(b, lambda e: {**e, "series": "x"}),
    "no ts": lambda b: _entry(b, lambda e: {k: v for k, v in e.items() if k != "ts"}),
    "no values": lambda b: _entry(b, lambda e: {k: v for k, v in e.items() if k != "values"}),
    "ts garbage": lambda b: _entry(b, lambda e: {**e, "ts": "not a time at all"}),
    "ts number": lambda b: _entry(b, lambda e: {**e, "ts": 1700000000}),
    "ts year 9999": lambda b: _entry(b, lambda e: {**e, "ts": "9999-12-31T00:00:00"}),
    "ts year 1 +01:00": lambda b: _entry(b, lambda e: {**e, "ts": "0001-01-01T00:00:00+01:00"}),
    "off grid": lambda b: _entry(b, lambda e: {**e, "ts": e["ts"][:-5] + "30:00"}, last=True),
    "out of order": lambda b: {**b, "history": b["history"] + [b["history"][0]]},
    "unknown channel": lambda b: _entry(b, lambda e: {**e, "values": {"zzz": 1.0}}),
    "many channels": lambda b: _entry(
        b, lambda e: {**e, "values": {f"c{i}": 1.0 for i in range(500)}}
    ),
    "value string": lambda b: _entry(b, lambda e: {**e, "values": {"a": "1.5"}}),
    "value bool": lambda b: _entry(b, lambda e: {**e, "values": {"a": True}}),
    "value over float32": lambda b: _entry(b, lambda e: {**e, "values": {"a": 1e39}}),
    "value list": lambda b: _entry(b, lambda e: {**e, "values": {"a": [1.0]}}),
    "covariate missing": lambda b: _entry(b, lambda e: {**e, "covariates": {}}),
    "covariate unknown": lambda b: _entry(
        b, lambda e: {**e, "covariates": {"elevation": 1, "x": 2}}
    ),
    "horizon 0": lambda b: {**b, "horizon": 0},
    "horizon over the model's": lambda b: {**b, "horizon": 5},
    "horizon huge": lambda b: {**b, "horizon": 10**30},
    "horizon string": lambda b: {**b, "horizon": "2"},
    "horizon float": lambda b: {**b, "horizon": 2.5},
    "NaN literal": lambda b: (
        json.dumps(_entry(b, lambda e: {**e, "values": {"a": 1.0}})).replace("1.0", "NaN").encode()
    ),
    "Infinity literal": lambda b: (
        json.dumps(_entry(b, lambda e: {**e, "values": {"a": 1.0}}))
        .replace("1.0", "-Infinity")
        .encode()
    ),
    "truncated JSON": lambda b: json.dumps(b).encode()[:-3],
    "not UTF-8": lambda b: json.dumps(b).encode().replace(b'"ts"', b'"t\xff"', 1),
    "array": lambda b: json.dumps([b]).encode(),
    "deeply nested": lambda b: b"[" * 5000 + b"]" * 5000,
}


def _entry(
    body: dict[str, Any], change: Callable[[dict[str, Any]], dict[str, Any]], last: bool = False
) -> dict[str, Any]:
    history = list(body["history"])
    i = len(history) - 1 if last else 0
    history[i] = change(history[i])
    return {**body, "history": history}


def offline(m: StreamModel, history: list[dict[str, Any]]) -> Forecast:
    state = None
    f: Any = None
    for e in history:
        obs = decode_observation(json.dumps({"series": "r", **e}).encode(), None, m.spec)
        assert isinstance(obs, Observation)
        state, f = update(m, state, obs)
    assert isinstance(f, Forecast)
    return f


def test_post_forecast_valid_near_valid_and_arbitrary_bodies(
    model: StreamModel, reliability: Callable[[Trial], None]
) -> None:
    app, _ = make_app(model, max_history=MAX_HISTORY)
    stats: Counter[str] = Counter()

    def post(raw: bytes) -> Reply:
        stats["tried"] += 1
        r = call(app, "POST", "/v1/forecast", headers=AUTH, body=raw)
        stats[str(r.status)] += 1
        assert r.status < 500, (raw[:300], r.status, r.body[:300])
        return r

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(histories(), st.none() | st.integers(1, 4))
    def valid(history: list[dict[str, Any]], horizon: int | None) -> None:
        body: dict[str, Any] = {"history": history}
        if horizon is not None:
            body["horizon"] = horizon
        r = post(json.dumps(body).encode())
        assert r.status == 200, r.body[:300]
        got, want = r.json(), offline(model, history)
        h = horizon or 4
        assert got["horizon"] == h and len(got["point"]) == h
        assert got["ts"] == history[-1]["ts"] and got["warming"] == want.warming
        median = want.y[:h, :, model.model.config.median_index]
        np.testing.assert_allclose(np.asarray(got["point"]), median, rtol=1e-5, atol=1e-5)

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(histories(), st.sampled_from(sorted(MUTATIONS)))
    def near_valid(history: list[dict[str, Any]], how: str) -> None:
        bad = MUTATIONS[how]({"history": history})
        r = post(bad if isinstance(bad, bytes) else json.dumps(bad).encode())
        # A body FastAPI cannot read as JSON at all gets its 400 (documented), before any schema.
        unreadable = how in ("not UTF-8", "deeply nested")
        problem = documented_error(r, 400 if unreadable else 422)
        assert problem is None, (how, problem)

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.binary(max_size=300)
        | json_values.map(lambda v: json.dumps(v).encode())
        | st.fixed_dictionaries({"history": st.lists(json_values, max_size=3)}).map(
            lambda v: json.dumps(v).encode()
        )
    )
    def arbitrary(raw: bytes) -> None:
        r = post(raw)
        if r.status != 200:
            problem = documented_error(r, 400 if r.status == 400 else 422)
            assert problem is None, (raw[:200], problem)

    run_recorded(
        reliability,
        lambda: (valid(), near_valid(), arbitrary()),
        stats,
        "bad input",
        f"POST /v1/forecast in-process: valid histories (checked against the offline update), "
        f"{len(MUTATIONS)} kinds of near-valid body, arbitrary bytes and JSON",
    )


# ---- GET /v1/series/{id}/forecast and GET /v1/series ------------------------------------------


def test_series_path_and_paging_query(
    model: StreamModel, reliability: Callable[[Trial], None]
) -> None:
    app, service = make_app(model, max_series_id=64)
    known = sorted(service.view.series(0, 10)[1])
    stats: Counter[str] = Counter()

    def get(path: str, query: bytes = b"") -> Reply:
        stats["tried"] += 1
        r = call(app, "GET", path, query=query)
        stats[str(r.status)] += 1
        assert r.status < 500, (path, query, r.status, r.body[:300])
        return r

    ids = (
        st.text(max_size=80)
        | st.from_regex(SERIES_ID, fullmatch=True)
        | st.sampled_from(known)
        | st.sampled_from(["x" * 64, "x" * 65, "../s001", "s001/forecast", "%2F", " s001"])
    )

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(ids)
    def by_id(series: str) -> None:
        r = get(f"/v1/series/{quote(series, safe='')}/forecast")
        if series in known:
            assert r.status == 200 and r.json()["series"] == series
        elif "\n" in series:
            # No route matches: Starlette's path pattern (`.*`) stops at a line break.
            assert documented_error(r, 404) is None, r.body
        elif SERIES_ID.fullmatch(series) and len(series) <= 64:
            assert documented_error(r, 404) is None, r.body
        else:
            assert documented_error(r, 422) is None, (series, r.status, r.body[:300])

    ints = st.integers(-(2**40), 2**40) | st.integers(-3, 20)
    raw = st.text(max_size=12) | st.sampled_from(["1.0", "1e3", "", " 1", "0x10", "２", "NaN"])

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.none() | ints | raw, st.none() | ints | raw)
    def paging(offset: int | str | None, limit: int | str | None) -> None:
        params = {k: v for k, v in (("offset", offset), ("limit", limit)) if v is not None}
        r = get("/v1/series", urlencode(params).encode())
        o = 0 if offset is None else offset
        n = 100 if limit is None else limit
        if isinstance(o, int) and isinstance(n, int):
            if 0 <= o <= 2**31 and 1 <= n <= 10_000:
                assert r.status == 200 and r.json() == {"total": 3, "series": known[o : o + n]}
            else:
                assert documented_error(r, 422) is None, r.body
        elif r.status != 200:
            assert documented_error(r, 422) is None, r.body

    run_recorded(
        reliability,
        lambda: (by_id(), paging()),
        stats,
        "bad input",
        "GET /v1/series/{id}/forecast (any text as id, percent-encoded) and GET /v1/series "
        "(any offset/limit) in-process",
    )


def test_openapi_fuzz_in_process(model: StreamModel, reliability: Callable[[Trial], None]) -> None:
    """schemathesis from the app's own OpenAPI, in-process (/healthz is left out: the view here
    has no consumer, so it is rightly 503; tests/serving/test_app.py fuzzes it behind Serve)."""
    import schemathesis

    app, _ = make_app(model)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path="/healthz")
    stats: Counter[str] = Counter()
    failures = fuzz_openapi(schema, 30, stats, headers={"Authorization": f"Bearer {TOKEN}"})
    seen = ", ".join(f"{k} {v}" for k, v in sorted(stats.items()) if k != "tried")
    reliability(
        Trial(
            area="bad input",
            what="schemathesis, in-process, every operation of /openapi.json (fitting and "
            "schema-breaking data)",
            times=stats["tried"],
            events=stats["tried"],
            lost=None,
            duplicated=None,
            outcome=f"pass: {seen}" if not failures else f"FAIL: {failures[0][0]}",
        )
    )
    assert not failures, "\n\n".join(f"{op}: {msg}" for op, msg in failures)
