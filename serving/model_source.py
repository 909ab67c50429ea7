"""Where the service's model comes from: the MLflow registry (or a run), read without pickle.

`models:/NAME@ALIAS`, `models:/NAME/VERSION` and `runs:/RUN_ID/model` are resolved through the
tracking server in MLFLOW_TRACKING_URI (or the embedded sqlite store), and only the `forecaster`
artifact (config.json + weights.safetensors) is downloaded and read: the pickled pyfunc wrapper is
never loaded, so a model is data, not code. A local folder written by `save_forecaster` also works
(tests, air-gapped runs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from forecast.artifact import load_forecaster
from serving.update import StreamModel

__all__ = ["ModelRef", "load_stream_model", "resolve"]

_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[\w-]+)$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


@dataclass(frozen=True)
class ModelRef:
    uri: str  # what to download: a pinned models:/NAME/VERSION, a runs:/ URI, or a folder
    label: str  # what forecasts name: NAME/VERSION, the run id, or the folder


def resolve(uri: str) -> ModelRef:
    """Pin an alias to the version it points at now (the swap watcher compares labels)."""
    if Path(uri).is_dir():
        return ModelRef(uri, str(Path(uri).resolve()))
    import mlflow
    from mlflow import MlflowClient

    from pipelines.settings import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    if m := _ALIAS.match(uri):
        version = MlflowClient().get_model_version_by_alias(m["name"], m["alias"]).version
        return ModelRef(f"models:/{m['name']}/{version}", f"{m['name']}/{version}")
    if m := _VERSION.match(uri):
        return ModelRef(uri, f"{m['name']}/{m['version']}")
    if uri.startswith("runs:/"):
        return ModelRef(uri, uri.removeprefix("runs:/"))
    raise ValueError(
        f"model URI {uri!r}: expected models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/model "
        "or a model folder"
    )


def load_stream_model(ref: ModelRef, dest: Path, **stream_options: int) -> StreamModel:
    """Download (if remote) and load the forecaster behind `ref`."""
    folder = Path(ref.uri)
    if not folder.is_dir():
        import mlflow
        import yaml

        dest.mkdir(parents=True, exist_ok=True)
        # The MLmodel file (YAML) names where the forecaster artifact lies; then only that folder
        # (config.json + weights.safetensors) is downloaded, never the pickle.
        base = ref.uri.rstrip("/")
        mlmodel = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{base}/MLmodel", dst_path=str(dest / "meta")
        )
        doc = yaml.safe_load(Path(mlmodel).read_text())
        try:
            rel = doc["flavors"]["python_function"]["artifacts"]["forecaster"]["path"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{ref.uri} is not a statecast model (no forecaster artifact)") from e
        folder = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/{rel}", dst_path=str(dest))
        )
    model, extra = load_forecaster(folder)
    return StreamModel.from_artifact(model, extra, ref.label, **stream_options)
