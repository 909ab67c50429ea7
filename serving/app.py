"""The Ray Serve application: stream processors plus a FastAPI ingress.

    serve run deploy/serve.yaml               (or `statecast serve ...`)

`build_app(args)` binds two deployments:
- `StreamProcessor` replicas, each running one `StreamWorker` (serving/worker.py) in a thread: a
  member of the Kafka consumer group on the observations topic, so partitions spread over
  replicas. No HTTP goes through them. Each reports its counters to the ingress every second.
- `ForecastApi`, the ingress (OpenAPI at /docs): latest forecasts from the committed forecasts
  topic (serving/view.py), stateless forecasts batched with @serve.batch, health and Prometheus
  metrics.

The REST routes are built by `make_api(service)` over a `ForecastService` (model, view, auth and
limits; no Serve, no HTTP), so they also run in-process; each ingress replica builds the same app
(`__serve_build_asgi_app__`) and adds the request batching. Every refusal is a documented 4xx
with a reason: 401 (token), 404 (no such series), 413 (body too large), 422 (bad input).
"""

# No `from __future__ import annotations`: FastAPI reads these annotations at runtime.
import hashlib
import hmac
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, HTTPException, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.doc_pages import add_doc_pages
from serving.metrics import render_prometheus
from serving.model_source import load_stream_model, resolve
from serving.observation import SERIES_ID, Observation, Rejection, decode_observation
from serving.processor import ProcessorConfig, forecast_message
from serving.update import Forecast, StreamModel, update_batch
from serving.view import ForecastView
from serving.worker import StreamWorker, WorkerConfig

__all__ = [
    "API_NAME",
    "AppArgs",
    "BodyLimit",
    "ForecastRequest",
    "ForecastService",
    "HistoryError",
    "bearer_ok",
    "build_app",
    "make_api",
]

log = logging.getLogger("statecast.serving")
API_NAME = "ForecastApi"


class AppArgs(BaseModel):
    """Arguments of the Serve application (deploy/serve.yaml `args`)."""

    model_uri: str
    bootstrap_servers: str
    in_topic: str = "observations"
    out_topic: str = "forecasts"
    dead_letter_topic: str = ""
    group: str = "statecast"
    processors: Annotated[int, Field(ge=1, description="stream processor replicas")] = 1
    checkpoint_interval_s: Annotated[float, Field(gt=0)] = 5.0
    max_poll_records: Annotated[int, Field(ge=1)] = 5000
    idle_records: Annotated[int, Field(ge=1)] = 1_000_000
    max_series_per_partition: Annotated[int, Field(ge=1)] = 200_000
    model_poll_s: Annotated[float, Field(gt=0)] = 30.0
    max_view_series: Annotated[int, Field(ge=1)] = 1_000_000
    # Bearer token for REST writes (and reads with protect_reads), read from this environment
    # variable of the replicas, never from the config file. Unset: the endpoints are open.
    token_env: str = "STATECAST_API_TOKEN"
    protect_reads: bool = False
    # Passed to every kafka-python client: security_protocol, sasl_mechanism, sasl_plain_username,
    # sasl_plain_password, ssl_cafile, ssl_certfile, ssl_keyfile, ...
    kafka_options: dict[str, str | int | bool] = Field(default_factory=dict)
    # Limits (docs/STREAMING.md, "Limits"); each is refused with a clear 4xx or dead letter.
    max_request_bytes: Annotated[int, Field(ge=1024, description="REST body, else 413")] = 1 << 20
    max_history: Annotated[int, Field(ge=1, description="POST /v1/forecast history")] = 10_000
    max_series_id: Annotated[int, Field(ge=1, le=256, description="REST series id length")] = 256
    max_record_bytes: Annotated[int, Field(ge=256, description="one observation")] = 65536

    def processor_config(self, instance: str) -> ProcessorConfig:
        return ProcessorConfig(
            bootstrap_servers=self.bootstrap_servers,
            in_topic=self.in_topic,
            out_topic=self.out_topic,
            group_id=self.group,
            dead_letter_topic=self.dead_letter_topic,
            instance=instance,
            checkpoint_interval_s=self.checkpoint_interval_s,
            max_poll_records=self.max_poll_records,
            idle_records=self.idle_records,
            max_series_per_partition=self.max_series_per_partition,
            kafka_options=tuple(sorted(self.kafka_options.items())),
        )

    def worker_config(self, instance: str) -> WorkerConfig:
        return WorkerConfig(
            self.model_uri,
            self.processor_config(instance),
            self.model_poll_s,
            max_record_bytes=self.max_record_bytes,
        )


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, health_check_period_s=5)
class StreamProcessor:
    def __init__(self, args: AppArgs):
        ctx = serve.get_replica_context()
        rank = getattr(ctx.rank, "rank", ctx.rank)
        # A stable instance per rank: a replacement replica takes over the transactional id and
        # so fences its dead predecessor at once instead of waiting out its transaction.
        self.replica = f"{rank}"
        self.app_name = ctx.app_name
        self.worker = StreamWorker(args.worker_config(self.replica))
        self.worker.start()
        self._stop = threading.Event()
        threading.Thread(target=self._report, daemon=True, name="statecast-report").start()

    def _report(self) -> None:
        api: DeploymentHandle | None = None
        while not self._stop.wait(1.0):
            try:
                api = api or serve.get_deployment_handle(API_NAME, self.app_name)
                snap = self.worker.metrics.snapshot()
                snap["model"] = self.worker.ref.label
                api.report.remote(self.replica, snap)
            except Exception:  # metrics must never take the stream down
                log.debug("metrics report failed", exc_info=True)

    def healthy(self) -> bool:
        return self.worker.alive()

    def pid(self) -> int:
        """The replica's process id (operations and the fault tests kill it)."""
        return os.getpid()

    def check_health(self) -> None:
        # Serve replaces a replica whose stream thread died; the new one restores its partitions.
        if not self.worker.alive():
            raise RuntimeError(f"stream worker stopped: {self.worker.error!r}")

    def __del__(self) -> None:
        if hasattr(self, "_stop"):  # __init__ may have failed first
            self._stop.set()
            self.worker.stop()


def bearer_ok(token: str, authorization: str | None) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time: the SHA-256 digests are
    compared, so neither the content nor the length of the token leaks through timing."""
    scheme, _, given = (authorization or "").partition(" ")
    same = hmac.compare_digest(
        hashlib.sha256(given.strip().encode()).digest(), hashlib.sha256(token.encode()).digest()
    )
    return scheme.lower() == "bearer" and same


# Finite (NaN and Infinity literals are refused) and strict: "1.5" and true are not numbers.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class ObservationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ts: str = Field(
        min_length=10, max_length=40, description="ISO-8601 date-time in the years 1678-2261"
    )
    values: dict[str, Number | None] = Field(
        description="channel -> value; null or absent = missing; only the model's channels"
    )
    covariates: dict[str, Number] = Field(
        default_factory=dict, description="the model's static covariates, each required"
    )


class ForecastRequest(BaseModel):
    """The POST /v1/forecast body; `make_api` narrows it to the service's limits."""

    model_config = ConfigDict(extra="forbid")

    history: list[ObservationIn] = Field(min_length=1)
    horizon: int | None = Field(default=None, ge=1, strict=True)


class ForecastOut(BaseModel):
    series: str
    ts: str
    model: str
    horizon: int
    warming: bool
    channels: list[str]
    point: list[list[float]]
    quantiles: dict[str, list[list[float]]]


class SeriesList(BaseModel):
    total: int
    series: list[str]


class Health(BaseModel):
    status: str
    processor: bool
    view: bool
    model: str
    auth: str


class Unhealthy(BaseModel):
    detail: Health


class Problem(BaseModel):
    detail: str


@dataclass(frozen=True)
class HistoryError:
    """Why history entry `index` of a request was refused."""

    index: int
    rejection: Rejection

    def detail(self) -> list[dict[str, Any]]:
        """In the shape of FastAPI's own 422 details, so every 422 reads the same."""
        loc = ["body", "history", self.index]
        return [{"type": self.rejection.reason, "loc": loc, "msg": self.rejection.detail}]


class LatestForecasts(Protocol):
    """serving/view.py's ForecastView, as the routes use it."""

    def get(self, series: str) -> dict[str, Any] | None: ...
    def series(self, offset: int, limit: int) -> tuple[int, list[str]]: ...
    def alive(self) -> bool: ...


class ForecastService:
    """What the REST endpoints do, without Serve or HTTP: bearer auth (failures counted), the
    stateless forecast over many requests at once, health and metrics."""

    def __init__(self, model: StreamModel, view: LatestForecasts, args: AppArgs, token: str = ""):
        self.model = model
        # The stream's record limit applies to each history entry as well.
        self.spec = replace(model.spec, max_bytes=args.max_record_bytes)
        self.view = view
        self.args = args
        self.token = token
        self.auth_failures = 0
        self.reports: dict[str, tuple[float, dict[str, Any]]] = {}

    @property
    def horizon(self) -> int:
        return int(self.model.model.config.horizon)

    def authorize(self, authorization: str | None, write: bool) -> None:
        """Bearer-token check, constant time; 401 (counted) when it fails."""
        if not self.token or not (write or self.args.protect_reads):
            return
        if not bearer_ok(self.token, authorization):
            self.auth_failures += 1
            raise HTTPException(
                401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )

    def report(self, replica: str, snapshot: dict[str, Any]) -> None:
        self.reports[replica] = (time.monotonic(), snapshot)

    async def forecast_one(self, request: ForecastRequest) -> dict[str, Any] | HistoryError:
        return self.forecast_many([request])[0]

    def forecast_many(
        self, requests: Sequence[ForecastRequest]
    ) -> list[dict[str, Any] | HistoryError]:
        """Each request is its own "series": one update_batch per history position steps every
        request that still has one, so concurrent requests share each model step."""
        m = self.model
        histories: list[list[Observation] | HistoryError] = []
        for i, req in enumerate(requests):
            obs: list[Observation] = []
            for k, o in enumerate(req.history):
                doc = {
                    "series": f"request-{i}",
                    "ts": o.ts,
                    "values": o.values,
                    "covariates": o.covariates,
                }
                got = decode_observation(json.dumps(doc).encode(), None, self.spec)
                if isinstance(got, Rejection):
                    histories.append(HistoryError(k, got))
                    break
                obs.append(got)
            else:
                histories.append(obs)
        states: list[Any] = [None] * len(requests)
        last: list[Forecast | None] = [None] * len(requests)
        longest = max((len(h) for h in histories if isinstance(h, list)), default=0)
        for r in range(longest):
            todo = [i for i, h in enumerate(histories) if isinstance(h, list) and len(h) > r]
            step = [histories[i][r] for i in todo]  # type: ignore[index]
            outs = update_batch(m, [states[i] for i in todo], step)
            for i, (state, out) in zip(todo, outs, strict=True):
                states[i] = state
                if isinstance(out, Rejection):
                    histories[i] = HistoryError(r, out)
                else:
                    last[i] = out
        results: list[dict[str, Any] | HistoryError] = []
        for req, h, f in zip(requests, histories, last, strict=True):
            if isinstance(h, HistoryError):
                results.append(h)
                continue
            assert f is not None
            doc = json.loads(forecast_message(m, f))
            doc["series"] = "request"
            if req.horizon is not None:
                doc["horizon"] = req.horizon
                doc["point"] = doc["point"][: req.horizon]
                doc["quantiles"] = {q: v[: req.horizon] for q, v in doc["quantiles"].items()}
            results.append(doc)
        return results

    def health(self, processor_ok: bool) -> dict[str, Any]:
        ok = processor_ok and self.view.alive()
        return {
            "status": "ok" if ok else "unhealthy",
            "processor": processor_ok,
            "view": self.view.alive(),
            "model": self.model.label,
            "auth": "on" if self.token else "off",
        }

    def metrics_text(self) -> str:
        now = time.monotonic()
        live = {r: snap for r, (t, snap) in self.reports.items() if now - t < 30.0}
        return render_prometheus(live) + (
            "# HELP statecast_auth_failures_total REST requests refused for a bad or no token\n"
            "# TYPE statecast_auth_failures_total counter\n"
            f"statecast_auth_failures_total {self.auth_failures}\n"
        )


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413, whether its Content-Length says
    so or, when chunked, once that much has arrived; nothing beyond the limit is buffered.
    (FastAPI's own `max_body_size` answers in plain text without the limit; clients get JSON
    like every other error here.)"""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        held: list[Message] = []
        size = 0
        while True:
            message = await receive()
            held.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return held.pop(0) if held else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"the request body is over the limit of {self.max_bytes} bytes"
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <token>")


def _problem(text: str) -> dict[str, Any]:
    return {"model": Problem, "description": text}


def make_api(
    service: ForecastService,
    forecast: Callable[[ForecastRequest], Awaitable[dict[str, Any] | HistoryError]] | None = None,
    processor_alive: Callable[[], Awaitable[bool]] | None = None,
) -> FastAPI:
    """The REST application over `service`. `forecast` answers one stateless request (default:
    `service.forecast_one`; the ingress passes its @serve.batch method); `processor_alive` says
    whether a stream processor is running (default: none is)."""
    args = service.args
    answer = forecast or service.forecast_one

    class ForecastBody(ForecastRequest):
        history: list[ObservationIn] = Field(
            min_length=1,
            max_length=args.max_history,
            description="observations of one series, oldest first",
        )
        horizon: int | None = Field(
            default=None,
            strict=True,
            ge=1,
            le=service.horizon,
            description=f"steps ahead to return; default and at most {service.horizon}",
        )

    api = FastAPI(
        title="statecast",
        description="Streaming forecasts from recurrent state-space and RWKV-7 models.",
        version="1",
        docs_url=None,  # served from local assets below, not a CDN
        redoc_url=None,
    )
    add_doc_pages(api)
    api.add_middleware(BodyLimit, max_bytes=args.max_request_bytes)

    @api.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default handler echoes each bad `input` back: a NaN literal in the body then
        # cannot be rendered as JSON (a 500), and a large body would come back whole.
        errors = [{k: e[k] for k in ("type", "loc", "msg")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    guard_writes = bool(service.token)
    guard_reads = guard_writes and args.protect_reads
    no_token: dict[int | str, dict[str, Any]] = {401: _problem("no or a wrong bearer token")}
    read_401 = no_token if guard_reads else {}
    write_401 = no_token if guard_writes else {}

    async def read_auth(
        request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
    ) -> None:
        service.authorize(request.headers.get("authorization"), write=False)

    async def write_auth(
        request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
    ) -> None:
        service.authorize(request.headers.get("authorization"), write=True)

    # async: run on the event loop, so the failure count is never raced by threadpool workers.
    read_deps = [Security(read_auth)] if guard_reads else []
    write_deps = [Security(write_auth)] if guard_writes else []

    @api.get(
        "/v1/series/{series_id:path}/forecast",
        response_model=ForecastOut,
        responses={404: _problem("no forecast for this series"), **read_401},
        dependencies=read_deps,
    )
    def series_forecast(
        series_id: Annotated[
            str,
            PathParam(
                min_length=1,
                max_length=args.max_series_id,
                pattern=SERIES_ID.pattern,
                description="characters A-Za-z0-9._:/@=+-",
            ),
        ],
    ) -> dict[str, Any]:
        """The latest committed forecast of one series (from its carried state)."""
        got = service.view.get(series_id)
        if got is None:
            raise HTTPException(404, f"no forecast for series {series_id!r}")
        return got

    @api.get("/v1/series", response_model=SeriesList, responses=read_401, dependencies=read_deps)
    def list_series(
        offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> dict[str, Any]:
        """Series with a forecast, sorted by id, paged."""
        total, names = service.view.series(offset, limit)
        return {"total": total, "series": names}

    @api.post(
        "/v1/forecast",
        response_model=ForecastOut,
        responses={
            400: _problem("the body could not be read: not UTF-8, or nested too deeply"),
            413: _problem("the body is over max_request_bytes"),
            **write_401,
        },
        dependencies=write_deps,
    )
    async def stateless_forecast(body: ForecastBody) -> dict[str, Any]:
        """Stateless: the history in, the forecast after its last observation out. Needs the
        bearer token when one is configured. 422 names the history entry and the reason."""
        out = await answer(body)
        if isinstance(out, HistoryError):
            raise HTTPException(422, out.detail())
        return out

    @api.get(
        "/healthz",
        response_model=Health,
        responses={503: {"model": Unhealthy, "description": "view or processor down"}},
    )
    async def healthz() -> dict[str, Any]:
        """200 when the forecast view and at least one stream processor are alive."""
        try:
            processor_ok = bool(await processor_alive()) if processor_alive else False
        except Exception:  # a processor replica being replaced is "not alive", not an error
            processor_ok = False
        body = service.health(processor_ok)
        if body["status"] != "ok":
            raise HTTPException(503, body)
        return body

    @api.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        """Prometheus text: events, lag, step latency, dead letters, series, state bytes."""
        return service.metrics_text()

    return api


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
@serve.ingress()
class ForecastApi:
    def __init__(self, processor: DeploymentHandle, args: AppArgs):
        self.processor = processor
        ref = resolve(args.model_uri)
        model = load_stream_model(
            ref,
            Path(tempfile.mkdtemp(prefix="statecast-api-")),
            max_bytes=args.max_record_bytes,
        )
        self.view = ForecastView(
            args.bootstrap_servers, args.out_topic, args.max_view_series, **args.kafka_options
        )
        self.view.start()
        token = os.environ.get(args.token_env, "")
        if not token:
            log.warning("%s is not set: REST writes are not authenticated", args.token_env)
        self.service = ForecastService(model, self.view, args, token)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_api(self.service, self._forecast, self._processor_alive)

    async def _processor_alive(self) -> bool:
        return bool(await self.processor.healthy.remote())

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _forecast(
        self, requests: list[ForecastRequest]
    ) -> list[dict[str, Any] | HistoryError]:
        return self.service.forecast_many(requests)

    def report(self, replica: str, snapshot: dict[str, Any]) -> None:
        self.service.report(replica, snapshot)

    def __del__(self) -> None:
        if hasattr(self, "view"):  # __init__ may have failed before the view existed
            self.view.stop()


def build_app(args: AppArgs) -> Application:
    """The statecast Serve application (a typed application builder for `serve run`)."""
    if isinstance(args, dict):  # serve.run(build_app({...})) from Python
        args = AppArgs(**args)
    processor = StreamProcessor.options(num_replicas=args.processors).bind(args)  # type: ignore[attr-defined]
    return ForecastApi.bind(processor, args)  # type: ignore[attr-defined]
