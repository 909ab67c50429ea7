"""The Ray Serve application end to end: real broker, real local Ray Serve, real MLflow registry.

A registered champion is served; observations stream in; forecasts come back over Kafka and REST;
the stateless endpoint, errors, health, metrics and OpenAPI answer over real HTTP; then the
champion alias moves to a model of another kind and the service swaps without a restart.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from serving.update import Forecast
from tests.conftest import free_port
from tests.reliability import Trial
from tests.serving.conftest import small_stream_model
from tests.serving.kafka_helpers import (
    assert_exactly_once,
    create_topic,
    make_stream,
    offline_forecasts,
    produce,
    read_committed,
    save_model,
)
from tests.serving.rest_client import fuzz_openapi

pytestmark = pytest.mark.kafka
NAME = "stream-test"
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _register(folder: Path, alias_to_new: bool = True) -> str:
    import mlflow
    from mlflow import MlflowClient

    from pipelines.pyfunc import ForecasterPyfunc

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=ForecasterPyfunc(), artifacts={"forecaster": str(folder)}
        )
    version = mlflow.register_model(info.model_uri, NAME).version
    MlflowClient().set_registered_model_alias(NAME, "champion", str(version))
    return str(version)


@pytest.fixture(scope="module")
def service(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    import mlflow
    import ray
    from ray import serve

    from serving.app import AppArgs, build_app

    home = tmp_path_factory.mktemp("serve_home")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    os.environ["STATECAST_API_TOKEN"] = TOKEN  # the replicas inherit it from this process
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.create_experiment("serve-test", artifact_location=(home / "artifacts").as_uri())
    mlflow.set_experiment("serve-test")
    m = small_stream_model()
    _register(save_model(m, home / "v1"))
    create_topic(kafka_bootstrap, "obs-app", 2)
    port = free_port()
    # address="local": a Ray of our own, even if another is running on this machine. Ray gives
    # a new node 30 s to register, which a busy 2-core machine can miss: try again.
    for attempt in range(3):
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception:  # Ray raises a bare Exception for that timeout
            ray.shutdown()
            if attempt == 2:
                raise
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = AppArgs(
            model_uri=f"models:/{NAME}@champion",
            bootstrap_servers=kafka_bootstrap,
            in_topic="obs-app",
            out_topic="fc-app",
            group="app",
            checkpoint_interval_s=1.0,
            model_poll_s=1.0,
        )
        serve.run(build_app(args), name="statecast", route_prefix="/")
        yield {
            "url": f"http://127.0.0.1:{port}",
            "model": m,
            "home": home,
            "bootstrap": kafka_bootstrap,
        }
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.pop("STATECAST_API_TOKEN", None)
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


def _wait(fn: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def test_stream_rest_and_swap(service: dict[str, Any]) -> None:
    url, m, boot = service["url"], service["model"], service["bootstrap"]
    docs = make_stream(n_series=5, n_steps=30, seed=7)
    produce(boot, "obs-app", ((str(d["series"]).encode(), json.dumps(d).encode()) for d in docs))
    got = read_committed(boot, "fc-app", expect=len(docs), timeout=120)
    assert len(got) == len(docs)
    assert {g["model"] for g in got} == {f"{NAME}/1"}

    # REST: latest forecast from the carried state equals the offline loop's last forecast.
    expected = offline_forecasts(m, docs)
    _wait(lambda: requests.get(f"{url}/v1/series", timeout=10).json()["total"] == 5)
    body = requests.get(f"{url}/v1/series/s003/forecast", timeout=10).json()
    last = expected[("s003", str(docs[-1]["ts"]))]
    q = np.stack([np.asarray(body["quantiles"][f"{x:g}"]) for x in m.model.quantiles], -1)
    np.testing.assert_allclose(q, last.y, rtol=3e-5, atol=3e-5)
    assert body["ts"] == docs[-1]["ts"] and body["horizon"] == 4 and body["warming"] is False
    assert requests.get(f"{url}/v1/series/nope/forecast", timeout=10).status_code == 404
    page = requests.get(f"{url}/v1/series", params={"offset": 1, "limit": 2}, timeout=10).json()
    assert page == {"total": 5, "series": ["s001", "s002"]}

    # Stateless forecast: the same history in, the same forecast out.
    history = [
        {"ts": d["ts"], "values": d["values"], "covariates": d["covariates"]}
        for d in docs
        if d["series"] == "s002"
    ]
    # Writes need the bearer token (reads are open by default); failures are counted.
    for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]:
        r = requests.post(
            f"{url}/v1/forecast", json={"history": history}, headers=headers, timeout=30
        )
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", r.text
    r = requests.post(f"{url}/v1/forecast", json={"history": history}, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    want: Forecast = expected[("s002", str(docs[-1]["ts"]))]
    point = np.asarray(r.json()["point"])
    np.testing.assert_allclose(
        point, want.y[..., m.model.config.median_index], rtol=3e-5, atol=3e-5
    )
    for bad in [
        {},
        {"history": []},
        {"history": [{"ts": "2024-01-01T00:00:00", "values": {"zzz": 1.0}}]},
        {"history": [{"ts": "not a time", "values": {"a": 1.0}, "covariates": {"elevation": 1}}]},
        {"history": [history[1], history[0]]},  # out of order
        {"history": [{"ts": "2024-01-01T00:00:00", "values": {"a": "x"}}]},
    ]:
        r = requests.post(f"{url}/v1/forecast", json=bad, headers=AUTH, timeout=30)
        assert r.status_code == 422, (bad, r.status_code, r.text)

    # Health, metrics, OpenAPI.
    health = requests.get(f"{url}/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["auth"] == "on"
    metrics = _wait(
        lambda: (
            (t := requests.get(f"{url}/metrics", timeout=10).text)
            and f'statecast_forecasts_total{{replica="0"}} {float(len(docs))}' in t
            and t
        )
    )
    for name in [
        "statecast_events_per_second",
        "statecast_consumer_lag",
        "statecast_step_batch_seconds_bucket",
        "statecast_live_series",
        "statecast_state_bytes",
    ]:
        assert name in metrics
    assert 'statecast_live_series{replica="0"} 5.0' in metrics
    assert "statecast_auth_failures_total 3" in metrics
    spec = requests.get(f"{url}/openapi.json", timeout=10).json()
    assert {
        "/v1/series/{series_id}/forecast",
        "/v1/forecast",
        "/v1/series",
        "/healthz",
        "/metrics",
    } <= set(spec["paths"])
    assert requests.get(f"{url}/docs", timeout=10).status_code == 200

    # The champion moves to a model of another kind: the processor swaps, re-warms each series
    # from its retained window, and goes on forecasting with the new model.
    new = small_stream_model("rwkv7", seed=3, head_size=8)
    service["current_model"] = new
    version = _register(save_model(new, service["home"] / "v2"))
    # The processor checks the alias every second, between two polls; wait until it swapped.
    _wait(
        lambda: (
            'statecast_model_swaps_total{replica="0"} 1.0'
            in requests.get(f"{url}/metrics", timeout=10).text
        ),
        timeout=90,
    )
    more = make_stream(n_series=5, n_steps=32, seed=7)[5 * 30 :]  # the next 2 hours of each series
    produce(boot, "obs-app", ((str(d["series"]).encode(), json.dumps(d).encode()) for d in more))
    got = read_committed(boot, "fc-app", expect=len(docs) + len(more), timeout=120)
    new_keys = {(d["series"], d["ts"]) for d in more}
    after = [g for g in got if (g["series"], g["ts"]) in new_keys]
    assert len(after) == len(more)
    assert {g["model"] for g in after} == {f"{NAME}/{version}"}
    assert not any(g["warming"] for g in after), "re-warmed series must not start cold"


def test_killed_processor_replica_is_replaced_and_loses_nothing(
    service: dict[str, Any], reliability: Callable[[Trial], None]
) -> None:
    """SIGKILL the stream processor's replica process between two halves of a stream: Serve
    starts a new replica, which restores the partitions from the changelog and the committed
    offsets; every observation still has exactly one forecast, equal to the offline loop."""
    import signal

    from ray import serve

    url, boot = service["url"], service["bootstrap"]
    handle = serve.get_deployment_handle("StreamProcessor", "statecast")
    m = service.get("current_model") or service["model"]
    docs = [
        dict(d, series="k" + str(d["series"])[1:])
        for d in make_stream(n_series=8, n_steps=60, seed=11)
    ]
    first, second = docs[: len(docs) // 2], docs[len(docs) // 2 :]
    keys = {(d["series"], d["ts"]) for d in docs}

    def ours(n: int, timeout: float) -> list[dict[str, Any]]:
        got = read_committed(boot, "fc-app", expect=10**9, timeout=0.1)
        deadline = time.monotonic() + timeout
        while len(mine := [g for g in got if (g["series"], g["ts"]) in keys]) < n:
            assert time.monotonic() < deadline, f"{len(mine)} of {n} forecasts"
            got = read_committed(boot, "fc-app", expect=10**9, timeout=1.0)
        return mine

    produce(boot, "obs-app", ((str(d["series"]).encode(), json.dumps(d).encode()) for d in first))
    ours(len(first), timeout=120)
    pid = handle.pid.remote().result(timeout_s=30)
    os.kill(pid, signal.SIGKILL)
    # Serve notices the dead actor and starts a replacement (a new process).
    _wait(lambda: _new_pid(handle, pid), timeout=120)
    produce(boot, "obs-app", ((str(d["series"]).encode(), json.dumps(d).encode()) for d in second))
    got = ours(len(docs), timeout=180)
    time.sleep(2.0)
    got = [
        g
        for g in read_committed(boot, "fc-app", expect=10**9, timeout=2.0)
        if (g["series"], g["ts"]) in keys
    ]
    seen = [(g["series"], g["ts"]) for g in got]
    lost, duplicated = len(keys - set(seen)), len(seen) - len(set(seen))
    reliability(
        Trial(
            area="fault",
            what="SIGKILL of the Serve stream-processor replica between two halves of a stream "
            "(8 series x 60 steps); Serve replaces it, partitions restored from the changelog",
            times=1,
            events=len(docs),
            lost=lost,
            duplicated=duplicated,
            outcome=(
                f"pass: replaced (pid {pid} -> new), {len(set(seen))} of {len(docs)} forecasts, "
                "each once"
                if lost == duplicated == 0
                else f"FAIL: {lost} lost, {duplicated} duplicated"
            ),
        )
    )
    assert_exactly_once(m, docs, got, tol=3e-5, label=got[0]["model"])
    assert requests.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"


def _new_pid(handle: Any, old: int) -> bool:
    try:
        return int(handle.pid.remote().result(timeout_s=10)) != old
    except Exception:  # the replica is being replaced
        return False


@pytest.mark.timeout(240)
def test_openapi_fuzz_behind_serve(
    service: dict[str, Any], reliability: Callable[[Trial], None]
) -> None:
    """schemathesis from the running service's own /openapi.json, over real HTTP through the
    Serve proxy: data that fits the schema and data that breaks it, for every operation. No 5xx;
    every answer is documented (status, content type, body), schema-breaking data gets a 4xx.
    40 examples per operation and mode: about 250 requests, under half a minute on 2 cores."""
    import schemathesis

    url = service["url"]
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=10)
    stats: Counter[str] = Counter()
    t0 = time.monotonic()
    failures = fuzz_openapi(schema, 40, stats, base_url=url, headers=AUTH, timeout=30)
    took = time.monotonic() - t0
    health = requests.get(f"{url}/healthz", timeout=10)
    seen = ", ".join(f"{k} {v}" for k, v in sorted(stats.items()) if k != "tried")
    reliability(
        Trial(
            area="bad input",
            what="schemathesis behind real Ray Serve, every operation of /openapi.json "
            "(fitting and schema-breaking data)",
            times=stats["tried"],
            events=stats["tried"],
            lost=None,
            duplicated=None,
            outcome=(
                f"pass: {seen} in {took:.0f} s; healthy after"
                if not failures and health.status_code == 200
                else f"FAIL: {failures[0][0] if failures else health.text[:200]}"
            ),
        )
    )
    assert not failures, "\n\n".join(f"{op}: {msg}" for op, msg in failures)
    assert health.status_code == 200, health.text
