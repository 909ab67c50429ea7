"""Each configured limit (serving/app.py AppArgs, docs/STREAMING.md "Limits") refuses with a clear
error, and just inside it is accepted: request body size (413), history length, horizon, series
id length and characters, channels, record size, and the number of live series per partition
(the processor's capacity valve)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from kafka.structs import TopicPartition

from serving.app import AppArgs
from serving.metrics import render_prometheus
from serving.processor import ProcessorConfig, StreamProcessor
from serving.update import StreamModel
from tests.reliability import Trial
from tests.serving.conftest import small_stream_model
from tests.serving.rest_client import AUTH, Reply, call, make_app
from tests.serving.test_policies import Sent, record


@pytest.fixture(scope="module")
def model() -> StreamModel:
    return small_stream_model()


def history(n: int, **entry: Any) -> list[dict[str, Any]]:
    t0 = datetime(2024, 1, 1)
    return [
        {
            "ts": (t0 + timedelta(hours=k)).isoformat(),
            "values": {"a": float(k), "b": None},
            "covariates": {"elevation": 2.0},
            **entry,
        }
        for k in range(n)
    ]


def post(app: Any, body: object, **kw: Any) -> Reply:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return call(app, "POST", "/v1/forecast", headers=AUTH, body=raw, **kw)


def msg(r: Reply) -> str:
    detail = r.json()["detail"]
    return detail if isinstance(detail, str) else " | ".join(e["msg"] for e in detail)


def test_rest_limits(model: StreamModel, reliability: Callable[[Trial], None]) -> None:
    app, _ = make_app(
        model, max_request_bytes=4096, max_history=5, max_series_id=16, max_record_bytes=512
    )
    padded = json.dumps({"history": history(1)}).encode()
    padded += b" " * (4096 - len(padded))  # exactly at the limit: JSON whitespace
    # (name, reply, expected status, text the reason must contain)
    checks: list[tuple[str, Reply, int, str]] = [
        ("body at the limit", post(app, padded), 200, ""),
        ("body over, by Content-Length", post(app, padded + b" "), 413, "4096 bytes"),
        (
            "body over, chunked",
            post(app, padded + b" " * 100, chunks=9, content_length=False),
            413,
            "4096 bytes",
        ),
        ("history at the limit", post(app, {"history": history(5)}), 200, ""),
        ("history over", post(app, {"history": history(6)}), 422, "at most 5 items"),
        ("history empty", post(app, {"history": []}), 422, "at least 1 item"),
        ("horizon 1", post(app, {"history": history(2), "horizon": 1}), 200, ""),
        ("horizon = model's", post(app, {"history": history(2), "horizon": 4}), 200, ""),
        (
            "horizon over the model's",
            post(app, {"history": history(2), "horizon": 5}),
            422,
            "less than or equal to 4",
        ),
        (
            "unknown channel",
            post(app, {"history": history(1, values={"zzz": 1.0})}),
            422,
            "known ['a', 'b', 'c']",
        ),
        (
            "30 channels",
            post(app, {"history": history(1, values={f"c{i}": 1.0 for i in range(30)})}),
            422,
            "unknown channel",
        ),
        (
            "entry under max_record_bytes, every channel",
            post(app, {"history": history(1, values={"a": 1.0, "b": 2.0, "c": 3.0})}),
            200,
            "",
        ),
        (
            "entry over max_record_bytes",
            post(app, {"history": history(1, covariates={"elevation": 1.0, "x" * 600: 1.0})}),
            422,
            "the limit is 512",
        ),
        ("series id at 16", call(app, "GET", "/v1/series/" + "x" * 16 + "/forecast"), 404, "x"),
        (
            "series id of 17",
            call(app, "GET", "/v1/series/" + "x" * 17 + "/forecast"),
            422,
            "at most 16 characters",
        ),
        (
            "series id with a space",
            call(app, "GET", "/v1/series/a%20b/forecast"),
            422,
            "should match pattern",
        ),
        ("series id with a slash", call(app, "GET", "/v1/series/a%2Fb/forecast"), 404, "a/b"),
        ("page limit over 10000", call(app, "GET", "/v1/series", b"limit=10001"), 422, "10000"),
    ]
    wrong = [
        f"{name}: {r.status} {r.body[:200]!r}"
        for name, r, status, text in checks
        if r.status != status or (text and text not in msg(r))
    ]
    reliability(
        Trial(
            area="limits",
            what="REST limits in-process: body 413 (by length and chunked), history length, "
            "horizon, channels, entry size, series id length/characters, page size",
            times=len(checks),
            events=len(checks),
            lost=None,
            duplicated=None,
            outcome=f"pass: {len(checks)} limits, each refused with its reason, accepted inside"
            if not wrong
            else f"FAIL: {wrong[0]}",
        )
    )
    assert not wrong, "\n".join(wrong)


def test_limits_reach_the_stream_processors() -> None:
    args = AppArgs(
        model_uri="m",
        bootstrap_servers="k:1",
        max_record_bytes=1000,
        max_series_per_partition=7,
        idle_records=11,
    )
    cfg = args.worker_config("3")
    assert cfg.max_record_bytes == 1000 and cfg.processor.instance == "3"
    assert cfg.processor.max_series_per_partition == 7 and cfg.processor.idle_records == 11
    for bad in [{"max_request_bytes": 10}, {"max_series_id": 300}, {"max_history": 0}]:
        with pytest.raises(ValueError):
            AppArgs(model_uri="m", bootstrap_servers="k:1", **bad)


def test_capacity_valve_bounds_live_series(reliability: Callable[[Trial], None]) -> None:
    """500 series through a partition limited to 50 live series, in polls of 100 records, then
    the first 10 again: the live count never passes 50, every record still gets its forecast
    (eviction forgets a series, it does not refuse its record), evictions are counted in the
    metrics, and a returning evicted series starts afresh (warming, one step)."""
    tp = TopicPartition("obs", 0)
    proc = StreamProcessor(
        ProcessorConfig("unused:9092", "obs", "fc", max_series_per_partition=50),
        small_stream_model(),
    )
    sent = Sent()
    peak = 0
    records = [record(i, f"s{i}", 0) for i in range(500)]
    records += [record(500 + i, f"s{i}", 1) for i in range(10)]
    for start in range(0, len(records), 100):
        proc.process({tp: records[start : start + 100]}, send=sent)
        peak = max(peak, len(proc.stores[tp].series))
    forecasts = [json.loads(v) for t, _, v, _ in sent if t == "fc" and v]
    dead = [v for t, _, v, _ in sent if t != "fc"]
    back = [f for f in forecasts if f["ts"].endswith("01:00:00")]
    steps = [proc.stores[tp].series[f"s{i}"].steps for i in range(10)]
    text = render_prometheus({"0": proc.metrics.snapshot()})
    evictions = proc.metrics.evictions
    ok = (
        peak <= 50
        and len(forecasts) == len(records)
        and not dead
        and evictions == len(records) - 50
        and f'statecast_evictions_total{{replica="0"}} {float(evictions)}' in text
        and all(f["warming"] for f in back)
        and steps == [1] * 10
    )
    reliability(
        Trial(
            area="limits",
            what="capacity valve: 500 series + 10 returning through a partition capped at 50",
            times=1,
            events=len(records),
            lost=len(records) - len(forecasts),
            duplicated=None,
            outcome=(
                f"{'pass' if ok else 'FAIL'}: peak {peak} live, {evictions} evictions counted in "
                f"statecast_evictions_total, {len(dead)} dead letters (eviction is not a "
                f"refusal), returning series restart cold (steps {sorted(set(steps))})"
            ),
        )
    )
    assert peak <= 50
    assert len(forecasts) == len(records) and not dead
    assert evictions == len(records) - 50
    assert f'statecast_evictions_total{{replica="0"}} {float(evictions)}' in text
    assert all(f["warming"] for f in back) and steps == [1] * 10
