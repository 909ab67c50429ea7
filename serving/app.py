"""The Ray Serve application: stream processors plus a FastAPI ingress.

    serve run deploy/serve.yaml               (or `statecast serve ...`)

`build_app(args)` binds two deployments:
- `StreamProcessor` replicas, each running one `StreamWorker` (serving/worker.py) in a thread: a
  member of the Kafka consumer group on the observations topic, so partitions spread over
  replicas. No HTTP goes through them. Each reports its counters to the ingress every second.
- `ForecastApi`, the FastAPI ingress (OpenAPI at /docs): latest forecasts from the committed
  forecasts topic (serving/view.py), stateless forecasts batched with @serve.batch, health and
  Prometheus metrics.
"""

# No `from __future__ import annotations`: FastAPI reads these annotations at runtime.
import hmac
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from serving.metrics import render_prometheus
from serving.model_source import load_stream_model, resolve
from serving.observation import Observation, Rejection, decode_observation
from serving.processor import ProcessorConfig, forecast_message
from serving.update import Forecast, update_batch
from serving.view import ForecastView
from serving.worker import StreamWorker, WorkerConfig

__all__ = ["API_NAME", "AppArgs", "bearer_ok", "build_app"]

log = logging.getLogger("statecast.serving")
API_NAME = "ForecastApi"
MAX_HISTORY = 10_000


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


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, health_check_period_s=5)
class StreamProcessor:
    def __init__(self, args: AppArgs):
        ctx = serve.get_replica_context()
        rank = getattr(ctx.rank, "rank", ctx.rank)
        # A stable instance per rank: a replacement replica takes over the transactional id and
        # so fences its dead predecessor at once instead of waiting out its transaction.
        self.replica = f"{rank}"
        self.app_name = ctx.app_name
        self.worker = StreamWorker(
            WorkerConfig(args.model_uri, args.processor_config(self.replica), args.model_poll_s)
        )
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
    """`Authorization: Bearer <token>`, compared in constant time."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


class ObservationIn(BaseModel):
    ts: str = Field(description="ISO-8601 date-time")
    values: dict[str, float | None] = Field(
        description="channel -> value; null or absent = missing"
    )
    covariates: dict[str, float] = Field(default_factory=dict, description="static covariates")


class ForecastRequest(BaseModel):
    history: list[ObservationIn] = Field(min_length=1, max_length=MAX_HISTORY)


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


app = FastAPI(
    title="statecast",
    description="Streaming forecasts from recurrent state-space and RWKV-7 models.",
    version="1",
)


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
@serve.ingress(app)
class ForecastApi:
    def __init__(self, processor: DeploymentHandle, args: AppArgs):
        self.processor = processor
        self.args = args
        ref = resolve(args.model_uri)
        self.model = load_stream_model(ref, Path(tempfile.mkdtemp(prefix="statecast-api-")))
        self.view = ForecastView(
            args.bootstrap_servers, args.out_topic, args.max_view_series, **args.kafka_options
        )
        self.view.start()
        self.reports: dict[str, tuple[float, dict[str, Any]]] = {}
        self.token = os.environ.get(args.token_env, "")
        self.auth_failures = 0
        if not self.token:
            log.warning("%s is not set: REST writes are not authenticated", args.token_env)

    def _authorize(self, authorization: str | None, write: bool) -> None:
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

    @app.get("/v1/series/{series_id}/forecast", response_model=ForecastOut)
    def series_forecast(
        self, series_id: str, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """The latest committed forecast of one series (from its carried state)."""
        self._authorize(authorization, write=False)
        got = self.view.get(series_id)
        if got is None:
            raise HTTPException(404, f"no forecast for series {series_id!r}")
        return got

    @app.get("/v1/series", response_model=SeriesList)
    def list_series(
        self,
        offset: int = Query(0, ge=0),
        limit: int = Query(100, ge=1, le=10_000),
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Series with a forecast, sorted by id, paged."""
        self._authorize(authorization, write=False)
        total, names = self.view.series(offset, limit)
        return {"total": total, "series": names}

    @app.post("/v1/forecast", response_model=ForecastOut)
    async def forecast(
        self, body: ForecastRequest, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Stateless: the history in, the forecast after its last observation out. Needs the
        bearer token when one is configured."""
        self._authorize(authorization, write=True)
        result = await self._forecast_batch(body)
        if isinstance(result, Rejection):
            raise HTTPException(422, str(result))
        return result

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _forecast_batch(self, requests: list[ForecastRequest]) -> list[Any]:
        # Each request is its own "series": one update_batch per history position steps every
        # request that still has one, so concurrent requests share each model step.
        m = self.model
        histories: list[list[Observation] | Rejection] = []
        for i, req in enumerate(requests):
            obs: list[Observation] = []
            for k, o in enumerate(req.history):
                doc = {
                    "series": f"request-{i}",
                    "ts": o.ts,
                    "values": o.values,
                    "covariates": o.covariates,
                }
                got = decode_observation(json.dumps(doc).encode(), None, m.spec)
                if isinstance(got, Rejection):
                    obs = []
                    histories.append(Rejection(got.reason, f"history[{k}]: {got.detail}"))
                    break
                obs.append(got)
            else:
                histories.append(obs)
        states: list[Any] = [None] * len(requests)
        last: list[Any] = [None] * len(requests)
        longest = max((len(h) for h in histories if not isinstance(h, Rejection)), default=0)
        for r in range(longest):
            todo = [
                i for i, h in enumerate(histories) if not isinstance(h, Rejection) and len(h) > r
            ]
            outs = update_batch(m, [states[i] for i in todo], [histories[i][r] for i in todo])  # type: ignore[index]
            for i, (state, out) in zip(todo, outs, strict=True):
                states[i] = state
                if isinstance(out, Rejection):
                    histories[i] = Rejection(out.reason, f"history[{r}]: {out.detail}")
                else:
                    last[i] = out
        results: list[Any] = []
        for h, f in zip(histories, last, strict=True):
            if isinstance(h, Rejection):
                results.append(h)
            else:
                assert isinstance(f, Forecast)
                doc = json.loads(forecast_message(m, f))
                doc["series"] = "request"
                results.append(doc)
        return results

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """200 when the forecast view and at least one stream processor are alive."""
        try:
            processor_ok = bool(await self.processor.healthy.remote())
        except Exception:
            processor_ok = False
        ok = processor_ok and self.view.alive()
        body = {
            "status": "ok" if ok else "unhealthy",
            "processor": processor_ok,
            "view": self.view.alive(),
            "model": self.model.label,
            "auth": "on" if self.token else "off",
        }
        if not ok:
            raise HTTPException(503, body)
        return body

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics(self) -> str:
        """Prometheus text: events, lag, step latency, dead letters, series, state bytes."""
        now = time.monotonic()
        live = {r: snap for r, (t, snap) in self.reports.items() if now - t < 30.0}
        return render_prometheus(live) + (
            "# HELP statecast_auth_failures_total REST requests refused for a bad or no token\n"
            "# TYPE statecast_auth_failures_total counter\n"
            f"statecast_auth_failures_total {self.auth_failures}\n"
        )

    def __del__(self) -> None:
        if hasattr(self, "view"):  # __init__ may have failed before the view existed
            self.view.stop()


def build_app(args: AppArgs) -> Application:
    """The statecast Serve application (a typed application builder for `serve run`)."""
    if isinstance(args, dict):  # serve.run(build_app({...})) from Python
        args = AppArgs(**args)
    processor = StreamProcessor.options(num_replicas=args.processors).bind(args)  # type: ignore[attr-defined]
    return ForecastApi.bind(processor, args)  # type: ignore[attr-defined]
