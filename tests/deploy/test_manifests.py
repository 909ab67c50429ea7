"""deploy/ agrees with the code: import paths, application args, ports, topics, environment
variables and the image name, read from the manifests themselves (no container engine here, so
the images are not built; what can be checked without one is)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import yaml

from pipelines.config import TrainConfig
from serving.app import AppArgs
from statecast.cli import build_parser
from statecast.demo import DemoConfig
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _image() -> str:
    m = re.search(r"^IMAGE \?= (\S+)$", (ROOT / "Makefile").read_text(), flags=re.M)
    assert m, "the Makefile names the image"
    return m.group(1)


def _version() -> str:
    m = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), flags=re.M)
    assert m
    return m.group(1)


def _serve_app() -> dict[str, Any]:
    (app,) = _yaml(DEPLOY / "serve.yaml")["applications"]
    return dict(app)


def _kuberay(name: str) -> dict[str, Any]:
    return dict(_yaml(DEPLOY / "kuberay" / name))


def _containers(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_image_name_is_one_everywhere() -> None:
    image = _image()
    assert image == f"statecast:{_version()}", "the image tag follows pyproject's version"
    compose = _yaml(DEPLOY / "compose.yaml")
    ours = [s for s in compose["services"].values() if "statecast" in str(s.get("image", ""))]
    assert len(ours) >= 4 and {s["image"] for s in ours} == {image}
    service = _kuberay("rayservice.yaml")["spec"]["rayClusterConfig"]
    job = _kuberay("rayjob.yaml")["spec"]["rayClusterSpec"]
    assert {c["image"] for c in _containers(service) + _containers(job)} == {image}


def test_serve_config_builds_the_app_with_valid_args() -> None:
    app = _serve_app()
    module, attr = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    args = AppArgs(**app["args"])  # unknown or invalid args fail here
    assert args.in_topic == DemoConfig.in_topic and args.out_topic == DemoConfig.out_topic


def test_rayservice_runs_exactly_serve_yaml() -> None:
    spec = _kuberay("rayservice.yaml")["spec"]
    (app,) = yaml.safe_load(spec["serveConfigV2"])["applications"]
    assert app == _serve_app()


def test_ports_and_hosts_agree() -> None:
    serve = _yaml(DEPLOY / "serve.yaml")
    compose = _yaml(DEPLOY / "compose.yaml")["services"]
    port = serve["http_options"]["port"]
    assert f"{port}:{port}" in compose["ray-head"]["ports"]
    head = _containers(_kuberay("rayservice.yaml")["spec"]["rayClusterConfig"])[0]
    assert {"containerPort": port, "name": "serve"} in head["ports"]
    # The broker the app is given is the compose broker's internal listener.
    host, kport = _serve_app()["args"]["bootstrap_servers"].split(":")
    assert (
        host == "kafka"
        and f"PLAINTEXT://{host}:{kport}"
        in (compose["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"])
    )
    # Every MLflow URI given to our containers is the compose MLflow server's address.
    mlflow_cmd = compose["mlflow"]["command"]
    assert "--port=5000" in mlflow_cmd and any("mlflow:5000" in a for a in mlflow_cmd)
    env = compose["ray-head"]["environment"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", dockerfile, flags=re.M)[1].split()}  # type: ignore[index]
    assert {port, 8265, 5000} <= exposed


def test_topics_agree() -> None:
    app = _serve_app()["args"]
    compose = _yaml(DEPLOY / "compose.yaml")["services"]
    assert f"--topic={app['in_topic']}" in compose["topics"]["command"]
    assert f"--topic={app['in_topic']}" in compose["replay"]["command"]
    partitions = int(
        next(a for a in compose["topics"]["command"] if "partitions" in a).split("=")[1]
    )
    assert app["processors"] <= partitions, "a replica without a partition would idle"


def test_environment_variables_are_ones_the_code_reads() -> None:
    documented = set(
        re.findall(r"`([A-Z][A-Z0-9_]+)`", (ROOT / "docs" / "ENVIRONMENT.md").read_text())
    )
    compose = _yaml(DEPLOY / "compose.yaml")
    names: set[str] = set()
    for s in compose["services"].values():
        if "statecast" in str(s.get("image", "")):
            names |= set(s.get("environment", {}))
    for f in ("rayservice.yaml", "rayjob.yaml"):
        spec = _kuberay(f)["spec"]
        cluster = spec.get("rayClusterConfig") or spec["rayClusterSpec"]
        names |= {e["name"] for c in _containers(cluster) for e in c.get("env", [])}
    assert names >= {"MLFLOW_TRACKING_URI", "STATECAST_API_TOKEN", "RAY_ADDRESS"}
    assert names <= documented, f"undocumented: {names - documented}"
    assert AppArgs.model_fields["token_env"].default == "STATECAST_API_TOKEN"


def test_training_commands_parse() -> None:
    parser = build_parser()
    job = _kuberay("rayjob.yaml")["spec"]["entrypoint"].split()
    assert job[:3] == ["python", "-m", "statecast"]
    args = parser.parse_args(job[3:])
    assert (
        args.command == "train"
        and args.register == _serve_app()["args"]["model_uri"].split("/")[1].split("@")[0]
    )
    assert Path(args.data).name in {p.name for p in (ROOT / "data").iterdir()}
    compose = _yaml(DEPLOY / "compose.yaml")["services"]
    cmd = compose["train"]["command"]
    assert cmd[:3] == ["statecast", "submit", "--wait"]
    sub = parser.parse_args(["train", *cmd[4:]])  # after "--"
    assert sub.register == args.register
    TrainConfig(data=sub.data, kind=sub.model, lookback=sub.lookback, horizon=sub.horizon)
    replay = compose["replay"]["command"]
    assert parser.parse_args(replay[1:]).command == "replay"


def test_dockerfile_installs_the_lock_and_every_package() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "-r requirements.lock" in text
    packages = _yaml_packages()
    top = {p.split(".")[0] for p in packages}
    for pkg in top:
        assert re.search(rf"^COPY {pkg} {pkg}$", text, flags=re.M), f"{pkg} is not copied"
    assert "COPY deploy/serve.yaml deploy/serve.yaml" in text and "COPY data data" in text


def _yaml_packages() -> list[str]:
    import tomllib

    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(doc["tool"]["setuptools"]["packages"])
