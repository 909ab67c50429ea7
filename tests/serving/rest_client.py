"""The REST app in-process: a service over a real (small, random-weight) model and a forecast view
filled from real updates, and a minimal ASGI client that sends exactly the bytes it is given."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from serving.app import AppArgs, ForecastService, make_api
from serving.observation import Observation, decode_observation
from serving.processor import forecast_message
from serving.update import Forecast, StreamModel, update
from serving.view import ForecastView
from tests.reliability import Trial
from tests.serving.kafka_helpers import make_stream

TOKEN = "in-process-token"
AUTH = [(b"authorization", f"Bearer {TOKEN}".encode())]


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    app: FastAPI,
    method: str,
    path: str,
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    chunks: int = 1,
    content_length: bool = True,
) -> Reply:
    """One HTTP request through the ASGI app; `path` as raw (percent-encoded) bytes go on the
    wire, decoded as uvicorn would. The body arrives in `chunks` messages."""
    from urllib.parse import unquote

    hdrs = list(headers or [])
    if body and content_length:
        hdrs.append((b"content-length", str(len(body)).encode()))
    if body:
        hdrs.append((b"content-type", b"application/json"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": hdrs,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    size = max(1, -(-len(body) // chunks))
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [
        {"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
        for i, p in enumerate(pieces)
    ]
    out: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # the client never disconnects first
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    async def run() -> None:
        await asyncio.wait_for(app(scope, receive, send), timeout=60)

    asyncio.run(run())
    return Reply(out["status"], out["headers"], out["body"])


def filled_view(m: StreamModel, n_series: int = 3, n_steps: int = 4) -> ForecastView:
    """A view (not connected: nothing starts it) holding the last forecast of a few series,
    computed by the real update."""
    view = ForecastView("unused:9092", "fc")
    states: dict[str, Any] = {}
    for doc in make_stream(n_series, n_steps, seed=1):
        obs = decode_observation(json.dumps(doc).encode(), None, m.spec)
        assert isinstance(obs, Observation)
        states[obs.series], f = update(m, states.get(obs.series), obs)
        assert isinstance(f, Forecast)
        view.latest[obs.series] = forecast_message(m, f)
    return view


def make_app(m: StreamModel, token: str = TOKEN, **limits: Any) -> tuple[FastAPI, ForecastService]:
    args = AppArgs(model_uri="unused", bootstrap_servers="unused:9092", **limits)
    service = ForecastService(m, filled_view(m), args, token)

    async def alive() -> bool:
        return True

    return make_api(service, processor_alive=alive), service


def documented_error(r: Reply, status: int) -> str | None:
    """None if `r` is a `status` error with a readable reason in the documented shape."""
    if r.status != status:
        return f"status {r.status}, expected {status}: {r.body[:300]!r}"
    try:
        detail = r.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return f"{status} without a JSON detail: {r.body[:300]!r}"
    if status == 422:
        ok = isinstance(detail, list) and detail
        ok = ok and all(e.get("msg") and e.get("type") and "loc" in e for e in detail)
    else:
        ok = isinstance(detail, str) and bool(detail)
    return None if ok else f"{status} detail is not a reason: {detail!r}"


def run_recorded(
    reliability: Callable[[Trial], None],
    body: Callable[[], None],
    stats: Counter[str],
    area: str,
    what: str,
) -> None:
    """Run a hypothesis test body, record its row from what it counted, then re-raise."""
    failure: BaseException | None = None
    try:
        body()
    except BaseException as e:  # recorded below, then raised again
        failure = e
    tried = stats["tried"]
    seen = ", ".join(f"{k} {v}" for k, v in sorted(stats.items()) if k != "tried")
    reliability(
        Trial(
            area=area,
            what=what,
            times=tried,
            events=tried,
            lost=None,
            duplicated=None,
            outcome=f"pass: {seen}; no 5xx, no exception" if failure is None else fail(failure),
        )
    )
    if failure is not None:
        raise failure


def fail(e: BaseException) -> str:
    """A ledger outcome for a failure: its first line."""
    text = str(e).strip()
    return f"FAIL: {type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"


def fuzz_openapi(
    schema: Any, examples: int, stats: Counter[str], **call: Any
) -> list[tuple[str, str]]:
    """schemathesis over every operation of `schema`, data that fits it and data that does not
    (`examples` each): every answer must be documented (status, content type, body schema), a
    4xx for data that breaks the schema, never a 5xx. -> failures as (operation, message)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        negative_data_rejection,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ]
    # 413 (a body over max_request_bytes: a history beyond maxItems is one) is a rejection too;
    # schemathesis' list of rejecting statuses lacks it, and then flags the 413 as acceptance.
    rejecting = schema.config.checks.negative_data_rejection.expected_statuses
    if "413" not in rejecting:
        rejecting.append("413")
    failures: list[tuple[str, str]] = []
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(generation_mode=mode))
            def one(case: Any) -> None:
                response = case.call(**call)
                stats["tried"] += 1
                stats[str(response.status_code)] += 1
                case.validate_response(response, checks=checks)

            try:
                one()
            except Unsatisfiable:  # no parameters and no body: nothing can break the schema
                stats["operations without negative data"] += 1
            except BaseException as e:  # collected per operation and mode, asserted by the caller
                failures.append((f"{op.label} {mode.value}", str(e)[:2000]))
    return failures
